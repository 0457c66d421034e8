//! The outputs of `bench runtime`, checked: the peer's detections on the golden frames through
//! the runtime's own self-test, and each camera's detections on the two sides against each
//! other and against the golden reference.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{bail, Context, Result};
use aperture_runtime::{service, Detector, Error};
use aperture_vision::decode::BBox;
use aperture_vision::{Detection, Frame};
use serde_json::Value;

use super::side::{Line, Measured};
use super::{Setup, CAMERAS};

/// Every frame of a stream is the same bytes (the server encodes losslessly), so each side
/// must give every frame the same detections, within this much (pixels, score) ...
const SAME_FRAME: (f64, f64) = (0.01, 1e-4);
/// ... and the two sides the same as each other, within this much. The two sides' pictures
/// are the same YUV (both decode with OpenH264), but each converts it to RGB with its own code
/// (the runtime's `source::yuv`, GStreamer's videoconvert), a level or two apart on some
/// pixels, which moves boxes by a fraction of a pixel and scores in the second decimal; the
/// labels, their order and the golden object's place (IoU 0.5) are checked as before.
const BOTH_SIDES: (f64, f64) = (1.0, 0.02);

/// The peer's recorded detections, handed out in the golden reference's order.
struct Recorded {
    frames: std::vec::IntoIter<Vec<Detection>>,
}

impl Detector for Recorded {
    fn detect(&mut self, _frame: &Frame) -> Result<Vec<Detection>, Error> {
        Ok(self.frames.next().unwrap_or_default())
    }
}

/// The peer's detections on the golden frames (`python-golden.json`, written by its last run)
/// through `service::self_test`, the check the runtime passes before it starts.
pub fn golden_python(setup: &Setup) -> Result<()> {
    let path = setup.work.join("python-golden.json");
    let peer: Value = serde_json::from_slice(
        &std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?,
    )
    .with_context(|| format!("parsing {}", path.display()))?;
    let reference = reference(&setup.manifest_path)?;
    let names = &setup.manifest.classes.names;
    let mut frames = Vec::new();
    let peer_frames = peer["frames"].as_array().cloned().unwrap_or_default();
    for (i, want) in reference["frames"]
        .as_array()
        .into_iter()
        .flatten()
        .enumerate()
    {
        let got = peer_frames.get(i).filter(|f| f["file"] == want["file"]);
        let Some(got) = got else {
            bail!(
                "{}: the peer wrote no detections for golden frame {}",
                path.display(),
                want["file"]
            );
        };
        let mut dets = Vec::new();
        for d in got["detections"].as_array().into_iter().flatten() {
            let label = d["label"].as_str().unwrap_or_default();
            let b: Vec<f32> = d["box"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(|v| v.as_f64())
                        .map(|v| v as f32)
                        .collect()
                })
                .unwrap_or_default();
            let (Some(class), &[x1, y1, x2, y2]) = (names.iter().position(|n| n == label), &b[..])
            else {
                bail!("{}: not a detection: {d}", path.display());
            };
            dets.push(Detection {
                class,
                label: label.to_string(),
                score: d["score"].as_f64().unwrap_or(f64::NAN) as f32,
                bbox: BBox { x1, y1, x2, y2 },
            });
        }
        frames.push(dets);
    }
    let mut recorded = Recorded {
        frames: frames.into_iter(),
    };
    let n = service::self_test(&mut recorded, &setup.manifest_path).map_err(|e| {
        anyhow::anyhow!(
            "the Python peer's detections on the golden frames are not the reference's, so \
             the two sides do not compute the same thing: {e}"
        )
    })?;
    eprintln!("bench runtime: the Python peer passes the runtime's self-test on {n} golden frames");
    Ok(())
}

fn reference(manifest: &Path) -> Result<Value> {
    let path = manifest
        .parent()
        .unwrap_or(Path::new("."))
        .join("golden/reference.json");
    serde_json::from_slice(
        &std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?,
    )
    .with_context(|| format!("parsing {}", path.display()))
}

fn iou(a: [f64; 4], b: [f64; 4]) -> f64 {
    let w = (a[2].min(b[2]) - a[0].max(b[0])).max(0.0);
    let h = (a[3].min(b[3]) - a[1].max(b[1])).max(0.0);
    let area = |r: [f64; 4]| (r[2] - r[0]) * (r[3] - r[1]);
    w * h / (area(a) + area(b) - w * h)
}

/// One frame's detections: (label, score, box).
type Found = Vec<(String, f64, [f64; 4])>;

/// The detections of each frame of `lines`, in frame order, without the last frame (its lines
/// may have been cut short by the stop).
fn by_frame(lines: &[Line]) -> Vec<Found> {
    let mut frames: BTreeMap<u64, Found> = BTreeMap::new();
    for l in lines {
        frames
            .entry(l.frame)
            .or_default()
            .push((l.label.clone(), l.score, l.bbox));
    }
    let mut v: Vec<Found> = frames.into_values().collect();
    v.pop();
    v
}

/// Whether two frames' detections are the same within (`px`, `score`): the largest corner
/// difference, or None when the labels differ or a score is off.
fn differ(a: &Found, b: &Found, (px, score): (f64, f64)) -> Option<f64> {
    if a.len() != b.len() {
        return None;
    }
    let mut worst: f64 = 0.0;
    for (x, y) in a.iter().zip(b) {
        if x.0 != y.0 || (x.1 - y.1).abs() > score {
            return None;
        }
        for k in 0..4 {
            worst = worst.max((x.2[k] - y.2[k]).abs());
        }
    }
    (worst <= px).then_some(worst)
}

fn show(f: &Found) -> String {
    f.iter()
        .map(|(l, s, b)| {
            format!(
                "{l} {s:.4} [{:.2}, {:.2}, {:.2}, {:.2}]",
                b[0], b[1], b[2], b[3]
            )
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// Each camera, on each side, gives every frame the same detections; the two sides give the
/// same as each other; and they hold the golden object where the reference puts it.
pub fn streams_agree(setup: &Setup, ours: &Measured, theirs: &Measured) -> Result<()> {
    let reference = reference(&setup.manifest_path)?;
    let (w, h) = setup.manifest.input.size();
    for i in 0..ours.streams {
        let camera = format!("cam{i}");
        let (file, label) = CAMERAS[i % CAMERAS.len()];
        let frame = reference["frames"]
            .as_array()
            .and_then(|f| f.iter().find(|f| f["file"] == file))
            .with_context(|| format!("the golden reference has no frame {file}"))?;
        let want = frame["detections"]
            .as_array()
            .and_then(|d| d.iter().find(|d| d["label"] == label))
            .and_then(|d| d["box"].as_array())
            .with_context(|| format!("the golden reference has no {label} in {file}"))?;
        let (sx, sy) = (
            w as f64 / frame["width"].as_f64().unwrap_or(1.0),
            h as f64 / frame["height"].as_f64().unwrap_or(1.0),
        );
        let want: [f64; 4] = std::array::from_fn(|k| {
            want.get(k).and_then(Value::as_f64).unwrap_or(0.0) * if k % 2 == 0 { sx } else { sy }
        });
        let mut seen = Vec::new();
        for m in [ours, theirs] {
            let frames = by_frame(m.lines.get(&camera).map_or(&[][..], Vec::as_slice));
            let whose = format!(
                "{} on {} streams, camera {camera} ({file})",
                m.side.name(),
                m.streams
            );
            let Some(first) = frames.first() else {
                bail!("{whose}: no detections at all");
            };
            if let Some(other) = frames
                .iter()
                .find(|f| differ(first, f, SAME_FRAME).is_none())
            {
                bail!(
                    "{whose}: the stream's frames are all the same bytes, but their detections \
                     differ: {} and {}",
                    show(first),
                    show(other)
                );
            }
            let hit = first
                .iter()
                .find(|(l, _, b)| l == label && iou(*b, want) > 0.5);
            if hit.is_none() {
                bail!(
                    "{whose}: no {label} within IoU 0.5 of the reference's {want:.1?}: {}",
                    show(first)
                );
            }
            seen.push((first.clone(), frames.len()));
        }
        let ((a, na), (b, nb)) = (&seen[0], &seen[1]);
        let Some(worst) = differ(a, b, BOTH_SIDES) else {
            bail!(
                "on {} streams, camera {camera} ({file}), the two sides disagree on the same \
                 frame: aperture-runtime {}; python {} (tolerance {} px, score {})",
                ours.streams,
                show(a),
                show(b),
                BOTH_SIDES.0,
                BOTH_SIDES.1
            );
        };
        eprintln!(
            "bench runtime: {} streams, {camera}: the same detections on both sides ({}; \
             corners within {worst:.3} px; {na} and {nb} frames)",
            ours.streams,
            show(a)
        );
    }
    Ok(())
}
