//! Tier 1, issue 17 "must show" 1: the committed NanoDet-m model, run through `ort` on the
//! pinned ONNX Runtime library, on three golden frames (scikit-image's bundled photographs,
//! halved), against an independent reference: `models/nanodet-m/golden/reference.json`, made by
//! `reference.py` with the onnxruntime Python package (another version, 1.32.0) and preprocessing
//! and decoding written separately in numpy.
//!
//! Compared, frame by frame: the input tensor (our preprocessing against numpy's), every raw
//! output tensor (shape, sum, sum of magnitudes, extremes and 33 sampled values each), and the
//! final detections (labels in order, scores, boxes in frame pixels). Tolerances are below.

mod common;

use std::time::{Duration, Instant};

use aperture_runtime::{Detector, OnnxRuntime, Options, OrtDetector};
use aperture_vision::preprocess::preprocess;
use aperture_vision::{Frame, Manifest};
use serde::Deserialize;

/// Input tensor values (normalised, about -2 to 2.7): the two resizes differ only in float
/// rounding (f32 here, f64 in numpy). Seen: 7.3e-6.
const INPUT_TOL: f64 = 5e-5;
/// Raw output values (class scores 0 to 1, distance logits about -10 to 10), after those input
/// differences went through the network. Seen: 2.3e-5.
const OUTPUT_TOL: f64 = 1e-4;
/// Sums over a whole output, relative to its sum of magnitudes.
const SUM_REL_TOL: f64 = 1e-5;
/// Detection scores. Seen: 1.0e-6.
const SCORE_TOL: f64 = 2e-5;
/// Box corners, in frame pixels. Seen: 2.5e-4.
const BOX_TOL: f64 = 0.01;

#[derive(Deserialize)]
struct Reference {
    versions: serde_json::Value,
    model_sha256: String,
    frames: Vec<RefFrame>,
}

#[derive(Deserialize)]
struct RefFrame {
    file: String,
    width: u32,
    height: u32,
    input: Summary,
    outputs: Vec<Summary>,
    detections: Vec<RefDetection>,
    score_margin: f64,
    iou_margin: f64,
}

#[derive(Deserialize)]
struct Summary {
    name: String,
    shape: Vec<usize>,
    sum: f64,
    sum_abs: f64,
    min: f64,
    max: f64,
    samples: Vec<(usize, f64)>,
}

#[derive(Deserialize)]
struct RefDetection {
    label: String,
    score: f64,
    #[serde(rename = "box")]
    bbox: [f64; 4],
}

/// The largest difference between `data` and the summary `s` of the same tensor; panics past
/// the tolerances, naming the frame and the tensor.
fn compare(what: &str, shape: &[usize], data: &[f32], s: &Summary, tol: f64) -> f64 {
    assert_eq!(shape, s.shape.as_slice(), "{what}: shape");
    let mut worst: f64 = 0.0;
    for &(i, want) in &s.samples {
        let d = (f64::from(data[i]) - want).abs();
        assert!(
            d <= tol,
            "{what}[{i}]: {} against {want} (tolerance {tol})",
            data[i]
        );
        worst = worst.max(d);
    }
    let sum: f64 = data.iter().map(|&v| f64::from(v)).sum();
    let sum_abs: f64 = data.iter().map(|&v| f64::from(v).abs()).sum();
    let min = data.iter().copied().fold(f32::INFINITY, f32::min) as f64;
    let max = data.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
    let scale = s.sum_abs.max(1.0);
    assert!(
        (sum - s.sum).abs() / scale <= SUM_REL_TOL,
        "{what}: sum {sum} against {}",
        s.sum
    );
    assert!(
        (sum_abs - s.sum_abs).abs() / scale <= SUM_REL_TOL,
        "{what}: sum of magnitudes {sum_abs} against {}",
        s.sum_abs
    );
    assert!(
        (min - s.min).abs() <= tol && (max - s.max).abs() <= tol,
        "{what}: range {min}..{max} against {}..{}",
        s.min,
        s.max
    );
    worst
}

#[test]
fn nanodet_m_matches_the_python_onnxruntime_reference() {
    let Some(lib) = common::library("nanodet_m_matches_the_python_onnxruntime_reference") else {
        return;
    };
    let started = Instant::now();
    let manifest = Manifest::load(&common::manifest_path()).unwrap();
    let golden = manifest.path().parent().unwrap().join("golden");
    let reference: Reference =
        serde_json::from_slice(&std::fs::read(golden.join("reference.json")).unwrap()).unwrap();
    assert_eq!(
        reference.model_sha256, manifest.model.sha256,
        "reference.json was made for another model: rerun golden/reference.py"
    );
    let runtime = OnnxRuntime::load(&lib).unwrap();
    let load = Instant::now();
    let mut detector = OrtDetector::new(runtime, &manifest, &Options::default()).unwrap();
    let load = load.elapsed();
    eprintln!("reference made with {}", reference.versions);

    let mut inference = Duration::ZERO;
    let mut whole = Duration::ZERO;
    let mut worst_input: f64 = 0.0;
    let mut worst_output: f64 = 0.0;
    let (mut worst_score, mut worst_box): (f64, f64) = (0.0, 0.0);
    for r in &reference.frames {
        // The tolerances must stay below the reference's own margins, or a rounding difference
        // could move a candidate across the score threshold or an overlap across the NMS limit.
        assert!(
            SCORE_TOL.max(OUTPUT_TOL) < r.score_margin,
            "{}: score margin {}",
            r.file,
            r.score_margin
        );
        assert!(
            r.iou_margin > 1e-3,
            "{}: IoU margin {}",
            r.file,
            r.iou_margin
        );

        let frame = Frame::from_ppm(&std::fs::read(golden.join(&r.file)).unwrap()).unwrap();
        assert_eq!(
            (frame.width(), frame.height()),
            (r.width, r.height),
            "{}",
            r.file
        );

        // (a) Our preprocessing against numpy's, then the raw outputs.
        let input = preprocess(&frame, &manifest.input);
        let what = format!("{} input", r.file);
        worst_input = worst_input.max(compare(
            &what,
            &manifest.input.shape,
            &input,
            &r.input,
            INPUT_TOL,
        ));
        let t = Instant::now();
        let outputs = detector.infer(input).unwrap();
        inference += t.elapsed();
        assert_eq!(
            outputs.keys().collect::<Vec<_>>(),
            r.outputs.iter().map(|o| &o.name).collect::<Vec<_>>(),
            "{}: output names",
            r.file
        );
        for s in &r.outputs {
            let o = &outputs[&s.name];
            let what = format!("{} output {}", r.file, s.name);
            worst_output = worst_output.max(compare(&what, &o.shape, &o.data, s, OUTPUT_TOL));
        }

        // (b) The whole path, frame to detections.
        let t = Instant::now();
        let dets = detector.detect(&frame).unwrap();
        whole += t.elapsed();
        let labels: Vec<&str> = dets.iter().map(|d| d.label.as_str()).collect();
        let want: Vec<&str> = r.detections.iter().map(|d| d.label.as_str()).collect();
        assert_eq!(labels, want, "{}: detections", r.file);
        assert!(
            !dets.is_empty(),
            "{}: the golden frames all hold an object",
            r.file
        );
        for (d, w) in dets.iter().zip(&r.detections) {
            let ds = (f64::from(d.score) - w.score).abs();
            assert!(
                ds <= SCORE_TOL,
                "{}: {} score {} against {}",
                r.file,
                d.label,
                d.score,
                w.score
            );
            worst_score = worst_score.max(ds);
            let got = [d.bbox.x1, d.bbox.y1, d.bbox.x2, d.bbox.y2];
            for (g, w) in got.iter().zip(w.bbox) {
                let db = (f64::from(*g) - w).abs();
                assert!(
                    db <= BOX_TOL,
                    "{}: {} box {got:?} against {:?}",
                    r.file,
                    d.label,
                    w
                );
                worst_box = worst_box.max(db);
            }
        }
        eprintln!(
            "{}: {}",
            r.file,
            dets.iter()
                .map(|d| format!(
                    "{} {:.3} [{:.0} {:.0} {:.0} {:.0}]",
                    d.label, d.score, d.bbox.x1, d.bbox.y1, d.bbox.x2, d.bbox.y2
                ))
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    eprintln!(
        "largest differences: input {worst_input:.1e}, raw outputs {worst_output:.1e}, scores \
         {worst_score:.1e}, box corners {worst_box:.1e} px"
    );
    eprintln!(
        "model load {load:.0?}; per frame ({} frames, 1 thread): inference {:.0?}, frame to \
         detections {:.0?}; test {:.1?}",
        reference.frames.len(),
        inference / reference.frames.len() as u32,
        whole / reference.frames.len() as u32,
        started.elapsed()
    );
}
