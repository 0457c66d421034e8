//! Decoded pictures to the model's frames: a 4:2:0 YUV picture (I420, what an H.264 decoder
//! puts out) scaled to the frame size and converted to RGB8, in one pass per plane.
//!
//! **Scaling** stretches to the frame size, as the GStreamer pipeline before it did (its caps
//! fixed width and height, not the aspect ratio). Each plane is resampled on its own with a
//! separable triangle (linear) filter whose support widens with the shrink factor, so a
//! 1920 x 1080 camera shrunk to 416 x 416 averages every source pixel instead of sampling one
//! in five (aliasing that would show as shimmering edges from frame to frame); a picture of
//! the frame's size passes through unchanged. Chroma samples are taken as centre-sited, which
//! moves chroma by a quarter of a luma pixel against the usual left siting: below what the
//! model sees.
//!
//! **Colour**: limited range (16-235 luma), with the matrix the stream's size implies when the
//! stream does not say otherwise (GStreamer's rule too): BT.709 above 576 lines, BT.601 up to
//! standard definition.

use std::fmt;

/// A YUV-to-RGB matrix.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Matrix {
    /// ITU-R BT.601 (standard definition).
    Bt601,
    /// ITU-R BT.709 (high definition).
    Bt709,
}

impl Matrix {
    /// The matrix of a picture `height` lines high that does not name its own.
    pub fn for_height(height: usize) -> Matrix {
        if height > 576 {
            Matrix::Bt709
        } else {
            Matrix::Bt601
        }
    }

    /// (Kr, Kb) of the matrix.
    fn weights(self) -> (f32, f32) {
        match self {
            Matrix::Bt601 => (0.299, 0.114),
            Matrix::Bt709 => (0.2126, 0.0722),
        }
    }
}

/// One decoded picture's planes, borrowed from the decoder: luma `width` x `height`, each chroma
/// plane half that, rounded up; rows `strides` bytes apart.
#[derive(Clone, Copy)]
pub struct Picture<'a> {
    /// Luma width in pixels.
    pub width: usize,
    /// Luma height in pixels.
    pub height: usize,
    /// The planes: Y, U (Cb), V (Cr).
    pub planes: [&'a [u8]; 3],
    /// Bytes from one row to the next, per plane.
    pub strides: [usize; 3],
}

impl fmt::Debug for Picture<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Picture")
            .field("width", &self.width)
            .field("height", &self.height)
            .field("strides", &self.strides)
            .finish_non_exhaustive()
    }
}

impl Picture<'_> {
    /// Each plane's (width, height).
    /// Each plane's (width, height) in samples: luma, then the two chroma planes.
    pub fn plane_sizes(&self) -> [(usize, usize); 3] {
        let chroma = (self.width.div_ceil(2), self.height.div_ceil(2));
        [(self.width, self.height), chroma, chroma]
    }

    /// Whether every plane holds its rows at its stride.
    pub fn check(&self) -> Result<(), String> {
        if self.width == 0 || self.height == 0 {
            return Err(format!(
                "a decoded picture of {}x{}",
                self.width, self.height
            ));
        }
        for (i, ((w, h), (plane, stride))) in self
            .plane_sizes()
            .into_iter()
            .zip(self.planes.iter().zip(self.strides))
            .enumerate()
        {
            if stride < w || plane.len() < stride * (h - 1) + w {
                return Err(format!(
                    "a decoded {}x{} picture whose plane {i} has {} bytes at a stride of {stride}",
                    self.width,
                    self.height,
                    plane.len()
                ));
            }
        }
        Ok(())
    }
}

/// For each output position along one axis: the first source position it reads and the
/// weights of the source positions from there on (summing to 1).
#[derive(Debug, Clone, PartialEq)]
struct Axis {
    taps: Vec<(usize, Vec<f32>)>,
}

impl Axis {
    /// `src` positions resampled to `dst` with a triangle filter, positions past either edge
    /// taking the edge's value.
    fn new(src: usize, dst: usize) -> Axis {
        // An empty picture is refused before it is read; its axis only must not panic.
        let src = src.max(1);
        let scale = src as f32 / dst as f32;
        let support = scale.max(1.0);
        let taps = (0..dst)
            .map(|i| {
                let centre = (i as f32 + 0.5) * scale - 0.5;
                let first = (centre - support).floor() as isize + 1;
                let last = (centre + support).ceil() as isize - 1;
                let lo = first.clamp(0, src as isize - 1) as usize;
                let hi = last.clamp(0, src as isize - 1) as usize;
                let mut weights = vec![0f32; hi - lo + 1];
                for j in first..=last {
                    let w = 1.0 - ((j as f32 - centre) / support).abs();
                    if w > 0.0 {
                        let at = j.clamp(lo as isize, hi as isize) as usize - lo;
                        weights[at] += w;
                    }
                }
                let sum: f32 = weights.iter().sum();
                weights.iter_mut().for_each(|w| *w /= sum);
                // Trailing zero weights (a centre exactly on a source position) are dropped.
                while weights.len() > 1 && weights.last() == Some(&0.0) {
                    weights.pop();
                }
                let lead = weights.iter().take_while(|w| **w == 0.0).count();
                (lo + lead, weights.split_off(lead))
            })
            .collect();
        Axis { taps }
    }
}

/// Resamples pictures of one size to frames of another; made again when the stream's size
/// changes.
#[derive(Debug, Clone)]
pub struct Scaler {
    source: (usize, usize),
    target: (usize, usize),
    matrix: Matrix,
    /// (x, y) axes of the luma plane, then of the chroma planes.
    axes: [(Axis, Axis); 2],
}

impl Scaler {
    /// A scaler from `source` (luma width, height) to `target` RGB frames.
    pub fn new(source: (usize, usize), target: (usize, usize), matrix: Matrix) -> Scaler {
        let chroma = (source.0.div_ceil(2), source.1.div_ceil(2));
        Scaler {
            source,
            target,
            matrix,
            axes: [
                (Axis::new(source.0, target.0), Axis::new(source.1, target.1)),
                (Axis::new(chroma.0, target.0), Axis::new(chroma.1, target.1)),
            ],
        }
    }

    /// The (luma) size of the pictures this scaler takes.
    pub fn source(&self) -> (usize, usize) {
        self.source
    }

    /// `picture` as RGB8, `target` wide and high, rows packed.
    pub fn rgb(&self, picture: &Picture<'_>) -> Result<Vec<u8>, String> {
        picture.check()?;
        if (picture.width, picture.height) != self.source {
            return Err(format!(
                "a {}x{} picture given to a scaler made for {}x{}",
                picture.width, picture.height, self.source.0, self.source.1
            ));
        }
        let sizes = picture.plane_sizes();
        let [y, u, v]: [Vec<f32>; 3] = std::array::from_fn(|p| {
            let (x_axis, y_axis) = &self.axes[usize::from(p > 0)];
            resample(
                picture.planes[p],
                picture.strides[p],
                sizes[p],
                x_axis,
                y_axis,
            )
        });
        let (kr, kb) = self.matrix.weights();
        let kg = 1.0 - kr - kb;
        let (luma, chroma) = (255.0 / 219.0, 255.0 / 224.0);
        let mut rgb = Vec::with_capacity(self.target.0 * self.target.1 * 3);
        for ((y, u), v) in y.iter().zip(&u).zip(&v) {
            let y = (y - 16.0) * luma;
            let cb = (u - 128.0) * chroma;
            let cr = (v - 128.0) * chroma;
            let r = y + 2.0 * (1.0 - kr) * cr;
            let b = y + 2.0 * (1.0 - kb) * cb;
            let g = y - (2.0 * kb * (1.0 - kb) * cb + 2.0 * kr * (1.0 - kr) * cr) / kg;
            rgb.extend([r, g, b].map(|c| c.round().clamp(0.0, 255.0) as u8));
        }
        Ok(rgb)
    }
}

/// One plane (`size`, rows `stride` apart) resampled along x then y.
fn resample(plane: &[u8], stride: usize, size: (usize, usize), x: &Axis, y: &Axis) -> Vec<f32> {
    let (w, h) = (x.taps.len(), y.taps.len());
    let mut rows = vec![0f32; size.1 * w];
    for r in 0..size.1 {
        let src = &plane[r * stride..r * stride + size.0];
        let out = &mut rows[r * w..(r + 1) * w];
        for (o, (first, weights)) in out.iter_mut().zip(&x.taps) {
            *o = weights
                .iter()
                .zip(&src[*first..])
                .map(|(w, v)| w * f32::from(*v))
                .sum();
        }
    }
    let mut out = vec![0f32; w * h];
    for (r, (first, weights)) in y.taps.iter().enumerate() {
        let dst = &mut out[r * w..(r + 1) * w];
        for (k, weight) in weights.iter().enumerate() {
            let src = &rows[(first + k) * w..(first + k + 1) * w];
            for (d, s) in dst.iter_mut().zip(src) {
                *d += weight * s;
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A picture whose planes are `y`, `u` and `v` everywhere.
    fn flat(w: usize, h: usize, [y, u, v]: [u8; 3]) -> (Vec<u8>, Vec<u8>, Vec<u8>) {
        let c = w.div_ceil(2) * h.div_ceil(2);
        (vec![y; w * h], vec![u; c], vec![v; c])
    }

    fn picture<'a>(w: usize, h: usize, p: &'a (Vec<u8>, Vec<u8>, Vec<u8>)) -> Picture<'a> {
        Picture {
            width: w,
            height: h,
            planes: [&p.0, &p.1, &p.2],
            strides: [w, w.div_ceil(2), w.div_ceil(2)],
        }
    }

    #[test]
    fn limited_range_black_white_and_primaries_convert_to_their_rgb() {
        // (Y, Cb, Cr) of BT.601 limited range and the RGB each stands for.
        let cases = [
            ([16, 128, 128], [0, 0, 0]),
            ([235, 128, 128], [255, 255, 255]),
            ([81, 90, 240], [255, 0, 0]),
            ([145, 54, 34], [0, 255, 0]),
            ([41, 240, 110], [0, 0, 255]),
        ];
        for (yuv, want) in cases {
            let planes = flat(4, 4, yuv);
            let rgb = Scaler::new((4, 4), (2, 2), Matrix::Bt601)
                .rgb(&picture(4, 4, &planes))
                .unwrap();
            for px in rgb.chunks(3) {
                for (got, want) in px.iter().zip(want) {
                    assert!(got.abs_diff(want) <= 2, "{yuv:?}: {px:?}, want {want:?}");
                }
            }
        }
        // BT.709 red is another YCbCr.
        let planes = flat(2, 2, [63, 102, 240]);
        let rgb = Scaler::new((2, 2), (2, 2), Matrix::Bt709)
            .rgb(&picture(2, 2, &planes))
            .unwrap();
        assert!(
            rgb[0] >= 253 && rgb[1] <= 2 && rgb[2] <= 2,
            "{:?}",
            &rgb[..3]
        );
        assert_eq!(Matrix::for_height(480), Matrix::Bt601);
        assert_eq!(Matrix::for_height(576), Matrix::Bt601);
        assert_eq!(Matrix::for_height(720), Matrix::Bt709);
    }

    #[test]
    fn the_same_size_passes_pixels_through_and_shrinking_averages_every_source_pixel() {
        assert_eq!(
            Axis::new(4, 4).taps,
            (0..4).map(|i| (i, vec![1.0])).collect::<Vec<_>>()
        );
        // A 4:1 shrink: every output reads the four source positions under it (and the
        // ones at its edges at lower weight), weights summing to 1.
        let axis = Axis::new(16, 4);
        for (first, w) in &axis.taps {
            assert!(w.len() >= 4 && *first + w.len() <= 16, "{axis:?}");
            assert!((w.iter().sum::<f32>() - 1.0).abs() < 1e-5);
        }
        // Every source position is read by some output.
        let mut read = [false; 16];
        for (first, w) in &axis.taps {
            for (k, weight) in w.iter().enumerate() {
                read[first + k] |= *weight > 0.0;
            }
        }
        assert!(read.iter().all(|r| *r), "{axis:?}");
        // Growing interpolates between neighbours.
        let axis = Axis::new(2, 4);
        assert_eq!(axis.taps[0], (0, vec![1.0]));
        assert_eq!(axis.taps[3], (1, vec![1.0]));

        // A luma ramp at the same size converts pixel for pixel (grey, so R = G = B).
        let (w, h) = (6, 3);
        let y: Vec<u8> = (0..w * h).map(|i| 16 + (i as u8) * 10).collect();
        let planes = (y, vec![128; 9], vec![128; 9]);
        let rgb = Scaler::new((w, h), (w, h), Matrix::Bt601)
            .rgb(&picture(w, h, &planes))
            .unwrap();
        for (i, px) in rgb.chunks(3).enumerate() {
            let want = ((f32::from(planes.0[i]) - 16.0) * 255.0 / 219.0).round() as u8;
            assert_eq!(px, [want; 3], "pixel {i}");
        }
        // A checkerboard shrunk 4:1 is an even grey, not a sample of one square.
        let (w, h) = (64, 64);
        let y: Vec<u8> = (0..w * h)
            .map(|i| if (i % w + i / w) % 2 == 0 { 16 } else { 235 })
            .collect();
        let planes = (y, vec![128; 32 * 32], vec![128; 32 * 32]);
        let rgb = Scaler::new((w, h), (16, 16), Matrix::Bt601)
            .rgb(&picture(w, h, &planes))
            .unwrap();
        // (At the corners the edge's pixels count twice: a slight bias, not a square.)
        assert!(rgb.iter().all(|c| c.abs_diff(128) <= 6), "{rgb:?}");
        let interior = |i: usize| (1..15).contains(&(i / 3 % 16)) && (1..15).contains(&(i / 48));
        assert!(
            (0..rgb.len())
                .filter(|i| interior(*i))
                .all(|i| rgb[i].abs_diff(128) <= 1),
            "{rgb:?}"
        );
    }

    #[test]
    fn planes_at_a_stride_wider_than_the_picture_and_odd_sizes_convert() {
        let (w, h, stride) = (5, 3, 8);
        let y = vec![235; stride * h];
        let c = vec![128; stride * 2];
        let p = Picture {
            width: w,
            height: h,
            planes: [&y, &c, &c],
            strides: [stride, stride, stride],
        };
        let rgb = Scaler::new((w, h), (3, 3), Matrix::Bt601).rgb(&p).unwrap();
        assert_eq!(rgb, vec![255; 27]);
    }

    #[test]
    fn short_planes_and_a_picture_of_another_size_are_refused() {
        let planes = flat(4, 4, [16, 128, 128]);
        let mut p = picture(4, 4, &planes);
        p.planes[1] = &planes.1[..3];
        let e = Scaler::new((4, 4), (2, 2), Matrix::Bt601)
            .rgb(&p)
            .unwrap_err();
        assert!(e.contains("plane 1 has 3 bytes"), "{e}");
        let p = picture(4, 4, &planes);
        let e = Scaler::new((8, 8), (2, 2), Matrix::Bt601)
            .rgb(&p)
            .unwrap_err();
        assert!(e.contains("made for 8x8"), "{e}");
        let empty = picture(0, 4, &planes);
        assert!(Scaler::new((0, 4), (2, 2), Matrix::Bt601)
            .rgb(&empty)
            .is_err());
    }
}
