//! A frame to the model's input tensor, as the manifest's `[input]` says: stretched to the input
//! size (bilinear, half-pixel centres, clamped edges, no antialiasing: the sampling of OpenCV's
//! `INTER_LINEAR` and of ONNX `Resize` with `half_pixel`), channels reordered, normalised as
//! `(v - mean) / std`, and laid out NCHW or NHWC. The result stays in `f32`: nothing is rounded
//! back to 8 bits between the resize and the normalisation.

use crate::frame::Frame;
use crate::manifest::{ColourOrder, Input, Layout, Resize};

/// For each output coordinate along one axis: the two input coordinates it lies between and the
/// weight of the second.
fn axis(n_out: usize, n_in: usize) -> Vec<(usize, usize, f32)> {
    let scale = n_in as f32 / n_out as f32;
    (0..n_out)
        .map(|o| {
            let s = ((o as f32 + 0.5) * scale - 0.5).clamp(0.0, (n_in - 1) as f32);
            let i0 = s.floor() as usize;
            let i1 = (i0 + 1).min(n_in - 1);
            (i0, i1, s - i0 as f32)
        })
        .collect()
}

/// The input tensor for `frame`, its length the product of `input.shape`.
pub fn preprocess(frame: &Frame, input: &Input) -> Vec<f32> {
    let (w, h) = input.size();
    let Resize::Bilinear = input.resize;
    let xs = axis(w, frame.width() as usize);
    let ys = axis(h, frame.height() as usize);
    let row = frame.width() as usize * 3;
    let rgb = frame.rgb();
    // Tensor channel c takes frame channel order[c].
    let order = match input.colour_order {
        ColourOrder::Rgb => [0, 1, 2],
        ColourOrder::Bgr => [2, 1, 0],
    };
    let scale = input.std.map(|s| 1.0 / s);
    let mut out = vec![0f32; w * h * 3];
    if (frame.width() as usize, frame.height() as usize) == (w, h) {
        // The frame is already the input's size (the camera pipeline scales it): every weight
        // above would be 0, so this gives the same values without the interpolation.
        for (i, px) in rgb.chunks_exact(3).enumerate() {
            for (c, &src) in order.iter().enumerate() {
                let at = match input.layout {
                    Layout::Nchw => c * w * h + i,
                    Layout::Nhwc => i * 3 + c,
                };
                out[at] = (f32::from(px[src]) - input.mean[c]) * scale[c];
            }
        }
        return out;
    }
    for (y, &(y0, y1, fy)) in ys.iter().enumerate() {
        let (r0, r1) = (&rgb[y0 * row..][..row], &rgb[y1 * row..][..row]);
        for (x, &(x0, x1, fx)) in xs.iter().enumerate() {
            for (c, &src) in order.iter().enumerate() {
                let p = |r: &[u8], xi: usize| f32::from(r[xi * 3 + src]);
                let top = p(r0, x0) + (p(r0, x1) - p(r0, x0)) * fx;
                let bottom = p(r1, x0) + (p(r1, x1) - p(r1, x0)) * fx;
                let v = top + (bottom - top) * fy;
                let v = (v - input.mean[c]) * scale[c];
                let at = match input.layout {
                    Layout::Nchw => (c * h + y) * w + x,
                    Layout::Nhwc => (y * w + x) * 3 + c,
                };
                out[at] = v;
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn input(w: usize, h: usize, layout: Layout, colour_order: ColourOrder) -> Input {
        Input {
            name: "x".into(),
            shape: match layout {
                Layout::Nchw => [1, 3, h, w],
                Layout::Nhwc => [1, h, w, 3],
            },
            layout,
            colour_order,
            resize: Resize::Bilinear,
            mean: [0.0; 3],
            std: [1.0; 3],
        }
    }

    #[test]
    fn same_size_is_a_copy_and_layouts_and_orders_place_channels() {
        // 2x1 frame: red-ish then blue-ish pixel.
        let f = Frame::new(2, 1, vec![10, 20, 30, 40, 50, 60]).unwrap();
        let nchw = preprocess(&f, &input(2, 1, Layout::Nchw, ColourOrder::Rgb));
        assert_eq!(nchw, [10.0, 40.0, 20.0, 50.0, 30.0, 60.0]);
        let nhwc = preprocess(&f, &input(2, 1, Layout::Nhwc, ColourOrder::Bgr));
        assert_eq!(nhwc, [30.0, 20.0, 10.0, 60.0, 50.0, 40.0]);
    }

    #[test]
    fn a_frame_of_the_input_size_gives_what_the_interpolation_gives() {
        // A 3x2 frame to a 3x2 input: each value is the picked channel, normalised, in both
        // layouts (the interpolating loop's result, whose weights are all 0 here).
        let rgb: Vec<u8> = (0..18).map(|i| (i * 13 % 256) as u8).collect();
        let f = Frame::new(3, 2, rgb.clone()).unwrap();
        for layout in [Layout::Nchw, Layout::Nhwc] {
            let mut i = input(3, 2, layout, ColourOrder::Bgr);
            i.mean = [1.0, 2.0, 3.0];
            i.std = [2.0, 4.0, 8.0];
            let t = preprocess(&f, &i);
            for p in 0..6 {
                for c in 0..3 {
                    let v = (f32::from(rgb[p * 3 + (2 - c)]) - i.mean[c]) * (1.0 / i.std[c]);
                    let at = match layout {
                        Layout::Nchw => c * 6 + p,
                        Layout::Nhwc => p * 3 + c,
                    };
                    assert_eq!(t[at], v, "{layout:?} pixel {p} channel {c}");
                }
            }
        }
    }

    #[test]
    fn upscaling_interpolates_with_half_pixel_centres_and_clamps_the_edges() {
        // One row 0, 100 scaled to 4 wide: sample points -0.25 (clamped to 0), 0.25, 0.75, 1.25
        // (clamped to 1).
        let f = Frame::new(2, 1, vec![0, 0, 0, 100, 100, 100]).unwrap();
        let t = preprocess(&f, &input(4, 1, Layout::Nchw, ColourOrder::Rgb));
        assert_eq!(&t[..4], &[0.0, 25.0, 75.0, 100.0]);
    }

    #[test]
    fn downscaling_by_two_averages_pairs_and_normalises() {
        let f = Frame::new(4, 2, (0..24).map(|i| i as u8 * 10).collect()).unwrap();
        let mut i = input(2, 1, Layout::Nchw, ColourOrder::Rgb);
        i.mean = [10.0, 20.0, 30.0];
        i.std = [2.0, 4.0, 5.0];
        let t = preprocess(&f, &i);
        // Output (0, 0) samples input (0.5, 0.5): the mean of pixels (0,0), (1,0), (0,1),
        // (1,1); red there is (0 + 30 + 120 + 150) / 4 = 75.
        assert_eq!(t[0], (75.0 - 10.0) / 2.0);
        // Green of output (1, 0): pixels (2..4, 0..2), green 70, 100, 190, 220: mean 145.
        assert_eq!(t[3], (145.0 - 20.0) / 4.0);
    }
}
