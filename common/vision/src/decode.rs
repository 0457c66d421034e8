//! A detector's raw output tensors to [`Detection`]s in frame pixels.
//!
//! [`NanoDet`] decodes NanoDet's GFL head (Li et al., "Generalized Focal Loss", NeurIPS 2020;
//! RangiLyu/nanodet `nanodet/model/head/gfl_head.py`): for each level of stride `s`, a grid of
//! cells over the input whose centres are at `((col + 0.5) s, (row + 0.5) s)`; per cell, a sigmoid
//! score for each class (the sigmoid is inside the exported graph) and, per box side (left, top,
//! right, bottom), a distribution over `reg_max + 1` distance bins whose expectation, after a
//! softmax, times `s` is the side's distance from the centre. Every (cell, class) above the
//! score threshold is a candidate; [`nms`] then keeps, class by class, the strongest of boxes that
//! overlap more than the IoU limit.

use std::collections::BTreeMap;

use serde::Serialize;
use thiserror::Error;

use crate::manifest::{DecoderKind, Manifest};

/// One output tensor, copied out of the inference library.
#[derive(Debug, Clone, PartialEq)]
pub struct OutputTensor {
    /// Its dimensions.
    pub shape: Vec<usize>,
    /// Its values, row-major.
    pub data: Vec<f32>,
}

/// A model's outputs by name.
pub type Outputs = BTreeMap<String, OutputTensor>;

/// A box, corners in pixels: (`x1`, `y1`) top left, (`x2`, `y2`) bottom right.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct BBox {
    /// Left.
    pub x1: f32,
    /// Top.
    pub y1: f32,
    /// Right.
    pub x2: f32,
    /// Bottom.
    pub y2: f32,
}

impl BBox {
    fn area(&self) -> f32 {
        (self.x2 - self.x1).max(0.0) * (self.y2 - self.y1).max(0.0)
    }

    /// Intersection over union with `other` (0 when either is empty).
    pub fn iou(&self, other: &BBox) -> f32 {
        let w = (self.x2.min(other.x2) - self.x1.max(other.x1)).max(0.0);
        let h = (self.y2.min(other.y2) - self.y1.max(other.y1)).max(0.0);
        let inter = w * h;
        let union = self.area() + other.area() - inter;
        if union > 0.0 {
            inter / union
        } else {
            0.0
        }
    }
}

/// One detected object.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Detection {
    /// The class's index in the manifest's `[classes] names`.
    pub class: usize,
    /// Its name.
    pub label: String,
    /// The class score, 0 to 1.
    pub score: f32,
    /// Where, in the frame's pixels.
    #[serde(rename = "box")]
    pub bbox: BBox,
}

/// Outputs that do not match the manifest's decoder.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum DecodeError {
    /// An output the decoder needs is absent.
    #[error("the model has no output {name:?}, which the manifest's [decoder] names")]
    Missing {
        /// The output's name.
        name: String,
    },
    /// An output has another shape than the manifest implies.
    #[error("output {name:?} has shape {got:?}, the manifest implies {expected:?}")]
    Shape {
        /// The output's name.
        name: String,
        /// What the manifest implies.
        expected: Vec<usize>,
        /// What the model gave.
        got: Vec<usize>,
    },
}

/// A candidate before NMS: a box in input pixels.
#[derive(Debug, Clone, Copy)]
struct Candidate {
    class: usize,
    score: f32,
    bbox: BBox,
}

/// The NanoDet decoder for one manifest.
#[derive(Debug, Clone)]
pub struct NanoDet {
    manifest: Manifest,
}

impl NanoDet {
    /// The decoder for `manifest` (its `[decoder] kind` is `nanodet`).
    pub fn new(manifest: &Manifest) -> NanoDet {
        let DecoderKind::Nanodet = manifest.decoder.kind;
        NanoDet {
            manifest: manifest.clone(),
        }
    }

    /// The shapes of the outputs each level needs: (name, shape).
    pub fn expected_outputs(&self) -> Vec<(String, Vec<usize>)> {
        let (w, h) = self.manifest.input.size();
        let d = &self.manifest.decoder;
        let classes = self.manifest.classes.names.len();
        let mut v = Vec::new();
        for l in &d.levels {
            let cells = w.div_ceil(l.stride) * h.div_ceil(l.stride);
            v.push((l.scores.clone(), vec![1, cells, classes]));
            v.push((l.boxes.clone(), vec![1, cells, 4 * (d.reg_max + 1)]));
        }
        v
    }

    /// Check that `outputs` hold every tensor the levels need, in the right shapes.
    pub fn check(&self, outputs: &Outputs) -> Result<(), DecodeError> {
        for (name, expected) in self.expected_outputs() {
            let t = outputs
                .get(&name)
                .ok_or_else(|| DecodeError::Missing { name: name.clone() })?;
            if t.shape != expected || t.data.len() != expected.iter().product::<usize>() {
                return Err(DecodeError::Shape {
                    name,
                    expected,
                    got: t.shape.clone(),
                });
            }
        }
        Ok(())
    }

    /// The detections in `outputs`, for a frame of `frame_w` x `frame_h` pixels (the input was
    /// that frame stretched to the input size), strongest first.
    pub fn decode(
        &self,
        outputs: &Outputs,
        frame_w: u32,
        frame_h: u32,
    ) -> Result<Vec<Detection>, DecodeError> {
        self.check(outputs)?;
        let (w, h) = self.manifest.input.size();
        let d = &self.manifest.decoder;
        let classes = self.manifest.classes.names.len();
        let bins = d.reg_max + 1;
        let mut candidates = Vec::new();
        let mut probs = vec![0f32; bins];
        for level in &d.levels {
            let s = level.stride as f32;
            let cols = w.div_ceil(level.stride);
            let scores = &outputs[&level.scores].data;
            let dists = &outputs[&level.boxes].data;
            for (cell, cell_scores) in scores.chunks_exact(classes).enumerate() {
                if !cell_scores.iter().any(|&v| v > d.score_threshold) {
                    continue;
                }
                let cx = ((cell % cols) as f32 + 0.5) * s;
                let cy = ((cell / cols) as f32 + 0.5) * s;
                let mut side = [0f32; 4];
                for (k, logits) in dists[cell * 4 * bins..][..4 * bins]
                    .chunks_exact(bins)
                    .enumerate()
                {
                    side[k] = expected_bin(logits, &mut probs) * s;
                }
                let bbox = BBox {
                    x1: (cx - side[0]).clamp(0.0, w as f32),
                    y1: (cy - side[1]).clamp(0.0, h as f32),
                    x2: (cx + side[2]).clamp(0.0, w as f32),
                    y2: (cy + side[3]).clamp(0.0, h as f32),
                };
                for (class, &score) in cell_scores.iter().enumerate() {
                    if score > d.score_threshold {
                        candidates.push(Candidate { class, score, bbox });
                    }
                }
            }
        }
        let kept = nms(candidates, d.nms_iou, d.max_detections);
        let (sx, sy) = (frame_w as f32 / w as f32, frame_h as f32 / h as f32);
        Ok(kept
            .into_iter()
            .map(|c| Detection {
                class: c.class,
                label: self.manifest.classes.names[c.class].clone(),
                score: c.score,
                bbox: BBox {
                    x1: c.bbox.x1 * sx,
                    y1: c.bbox.y1 * sy,
                    x2: c.bbox.x2 * sx,
                    y2: c.bbox.y2 * sy,
                },
            })
            .collect())
    }
}

/// The expectation of the bin index under softmax(`logits`) (`probs`: scratch space).
fn expected_bin(logits: &[f32], probs: &mut [f32]) -> f32 {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let mut sum = 0.0;
    for (p, &l) in probs.iter_mut().zip(logits) {
        *p = (l - max).exp();
        sum += *p;
    }
    probs
        .iter()
        .enumerate()
        .map(|(i, p)| i as f32 * p)
        .sum::<f32>()
        / sum
}

/// Per-class greedy non-maximum suppression: within each class, strongest first, a box is kept
/// unless it overlaps a kept one by more than `iou`; then the `max` strongest over all classes.
/// Equal scores keep their input order.
fn nms(mut candidates: Vec<Candidate>, iou: f32, max: usize) -> Vec<Candidate> {
    // Stable: by class, then strongest first, ties in input order.
    candidates.sort_by(|a, b| a.class.cmp(&b.class).then(b.score.total_cmp(&a.score)));
    let mut kept: Vec<Candidate> = Vec::new();
    let mut class_start = 0;
    for c in candidates {
        if kept.get(class_start).is_some_and(|k| k.class != c.class) {
            class_start = kept.len();
        }
        if kept[class_start..]
            .iter()
            .all(|k| k.bbox.iou(&c.bbox) <= iou)
        {
            kept.push(c);
        }
    }
    kept.sort_by(|a, b| b.score.total_cmp(&a.score));
    kept.truncate(max);
    kept
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    /// A one-level, two-class, 16x16-input manifest with reg_max 3: stride 8 gives 2x2 cells.
    fn tiny() -> Manifest {
        let text = r#"
            [model]
            name = "tiny"
            file = "tiny.onnx"
            sha256 = "0000000000000000000000000000000000000000000000000000000000000000"
            licence = "test"
            [source]
            registry = "npm"
            package = "none"
            version = "0"
            tarball_sha256 = "0000000000000000000000000000000000000000000000000000000000000000"
            path = "none"
            converter = "none"
            [input]
            name = "in"
            shape = [1, 3, 16, 16]
            layout = "nchw"
            colour_order = "rgb"
            resize = "bilinear"
            mean = [0.0, 0.0, 0.0]
            std = [1.0, 1.0, 1.0]
            [decoder]
            kind = "nanodet"
            reg_max = 3
            score_threshold = 0.3
            nms_iou = 0.5
            max_detections = 10
            levels = [{ stride = 8, scores = "s", boxes = "b" }]
            [classes]
            names = ["cat", "dog"]
        "#;
        Manifest::parse(text, Path::new("tiny/manifest.toml")).unwrap()
    }

    /// Logits that put nearly all the mass on bin `k` (of 4).
    fn peak(k: usize) -> [f32; 4] {
        let mut l = [-30.0; 4];
        l[k] = 30.0;
        l
    }

    fn outputs(scores: [[f32; 2]; 4], sides: [[usize; 4]; 4]) -> Outputs {
        let mut o = Outputs::new();
        o.insert(
            "s".into(),
            OutputTensor {
                shape: vec![1, 4, 2],
                data: scores.concat(),
            },
        );
        let data = sides
            .iter()
            .flat_map(|s| s.iter().flat_map(|&k| peak(k)))
            .collect();
        o.insert(
            "b".into(),
            OutputTensor {
                shape: vec![1, 4, 16],
                data,
            },
        );
        o
    }

    #[test]
    fn softmax_expectation_of_the_bins() {
        let mut p = [0.0; 4];
        assert!((expected_bin(&peak(2), &mut p) - 2.0).abs() < 1e-6);
        // Uniform logits: the mean of 0..=3.
        assert!((expected_bin(&[5.0; 4], &mut p) - 1.5).abs() < 1e-6);
        // Two equal peaks at 1 and 3: 2.
        assert!((expected_bin(&[9.0, 20.0, 9.0, 20.0], &mut p) - 2.0).abs() < 1e-3);
    }

    #[test]
    fn boxes_come_from_cell_centres_and_scale_to_the_frame() {
        let d = NanoDet::new(&tiny());
        // Cell 3 (col 1, row 1: centre (12, 12)) is a dog; sides 1, 1, 0, 0 strides.
        let o = outputs(
            [[0.1, 0.0], [0.0, 0.2], [0.0, 0.0], [0.0, 0.9]],
            [[0; 4], [0; 4], [0; 4], [1, 1, 0, 0]],
        );
        let dets = d.decode(&o, 32, 16).unwrap();
        assert_eq!(dets.len(), 1);
        assert_eq!(dets[0].label, "dog");
        assert_eq!(dets[0].class, 1);
        assert_eq!(dets[0].score, 0.9);
        let b = dets[0].bbox;
        // Input box (4, 4)-(12, 12); the frame is twice as wide as the input.
        let near = |a: f32, b: f32| (a - b).abs() < 1e-4;
        assert!(
            near(b.x1, 8.0) && near(b.y1, 4.0) && near(b.x2, 24.0) && near(b.y2, 12.0),
            "{b:?}"
        );
    }

    #[test]
    fn boxes_are_clipped_to_the_input() {
        let d = NanoDet::new(&tiny());
        // Cell 0, centre (4, 4), sides 3 strides: would reach -20 and 28.
        let o = outputs(
            [[0.8, 0.0], [0.0; 2], [0.0; 2], [0.0; 2]],
            [[3; 4], [0; 4], [0; 4], [0; 4]],
        );
        let b = d.decode(&o, 16, 16).unwrap()[0].bbox;
        assert_eq!((b.x1, b.y1, b.x2, b.y2), (0.0, 0.0, 16.0, 16.0));
    }

    #[test]
    fn nms_is_per_class_and_keeps_the_strongest() {
        let d = NanoDet::new(&tiny());
        // Cells 0 and 1 predict nearly the same box (centres 8 apart, sides 2-3 strides): both
        // cats, so the weaker goes; cell 1 is also a dog, kept though it overlaps the cat.
        let o = outputs(
            [[0.7, 0.0], [0.6, 0.5], [0.0; 2], [0.0; 2]],
            [[2, 2, 3, 2], [3, 2, 2, 2], [0; 4], [0; 4]],
        );
        let dets = d.decode(&o, 16, 16).unwrap();
        let got: Vec<(&str, f32)> = dets.iter().map(|d| (d.label.as_str(), d.score)).collect();
        assert_eq!(got, [("cat", 0.7), ("dog", 0.5)]);
    }

    #[test]
    fn nms_keeps_boxes_that_overlap_less_than_the_limit_and_caps_the_count() {
        let b = |x1: f32, x2: f32| BBox {
            x1,
            y1: 0.0,
            x2,
            y2: 10.0,
        };
        let c = |score, bbox| Candidate {
            class: 0,
            score,
            bbox,
        };
        // IoU of [0,10] and [5,15] is 1/3: both stay at a limit of 0.5; the third is a copy.
        let kept = nms(
            vec![
                c(0.5, b(5.0, 15.0)),
                c(0.9, b(0.0, 10.0)),
                c(0.4, b(0.0, 10.0)),
            ],
            0.5,
            10,
        );
        assert_eq!(kept.iter().map(|k| k.score).collect::<Vec<_>>(), [0.9, 0.5]);
        let kept = nms(vec![c(0.5, b(5.0, 15.0)), c(0.9, b(0.0, 10.0))], 0.5, 1);
        assert_eq!(kept.len(), 1);
        assert_eq!(kept[0].score, 0.9);
    }

    #[test]
    fn outputs_that_do_not_match_the_manifest_are_named() {
        let d = NanoDet::new(&tiny());
        let mut o = outputs([[0.0; 2]; 4], [[0; 4]; 4]);
        o.get_mut("b").unwrap().shape = vec![1, 4, 20];
        let e = d.decode(&o, 16, 16).unwrap_err().to_string();
        assert!(e.contains("\"b\"") && e.contains("[1, 4, 16]"), "{e}");
        o.remove("s");
        let e = d.decode(&o, 16, 16).unwrap_err().to_string();
        assert!(e.contains("no output \"s\""), "{e}");
    }
}
