//! The inference runtime's metrics, summarised for `aperture-agent status` and the fleet
//! report (issue 17).
//!
//! `aperture-runtime` rewrites its metrics file ([`Files::runtime_metrics`],
//! `/run/aperture-runtime/runtime.json`) every half second: the model, frame totals, latency
//! percentiles, each camera's state, the outputs. This module reads it tolerantly (fields it
//! does not use are ignored, so the runtime may grow new ones; optional ones may be absent)
//! but boundedly (at most [`MAX_METRICS_BYTES`] read, at most
//! [`aperture_fleet_api::runtime::MAX_CAMERAS`] cameras), and always answers with a
//! [`RuntimeSummary`]: a missing, stale (not rewritten for [`STALE_AFTER_S`]) or malformed
//! file is reported as such, never an error.

use std::io::Read;
use std::path::Path;

use serde::Deserialize;

use aperture_appliance::Files;
use aperture_fleet_api::runtime::{MAX_CAMERAS, MAX_PROVIDER, MAX_STALLED_NAMES};
use aperture_fleet_api::{MetricsState, RuntimeModel, RuntimeSummary, MAX_LINE, MAX_NAME};

/// A metrics file not rewritten for this long (seconds) is stale: the runtime writes it every
/// half second, so this is a runtime stuck or stopped, not a slow one.
pub const STALE_AFTER_S: u64 = 30;
/// The most of the metrics file read (bytes). The runtime's file is a few KiB even with many
/// cameras; more is not its file.
pub const MAX_METRICS_BYTES: u64 = 1024 * 1024;

/// The part of the runtime's metrics this summary uses.
#[derive(Debug, Deserialize)]
struct Metrics {
    updated_unix_ms: u64,
    #[serde(default)]
    model: Option<Model>,
    #[serde(default)]
    frames: Frames,
    #[serde(default)]
    latency_ms: Latency,
    #[serde(default)]
    cameras: Vec<Camera>,
}

#[derive(Debug, Deserialize)]
struct Model {
    name: String,
    sha256: String,
    execution_provider: String,
    #[serde(default)]
    fallback: bool,
}

#[derive(Debug, Default, Deserialize)]
struct Frames {
    #[serde(default)]
    inferred: u64,
    #[serde(default)]
    dropped: u64,
}

#[derive(Debug, Default, Deserialize)]
struct Latency {
    #[serde(default)]
    p50: Option<f64>,
    #[serde(default)]
    p95: Option<f64>,
}

#[derive(Debug, Deserialize)]
struct Camera {
    name: String,
    /// `connecting`, `streaming` or `stalled`.
    state: String,
}

/// `text` without control characters, cut to at most `max` bytes on a character boundary.
pub(crate) fn cut(text: &str, max: usize) -> String {
    let mut clean: String = text.chars().filter(|c| !c.is_control()).collect();
    if clean.len() > max {
        let mut end = max;
        while !clean.is_char_boundary(end) {
            end -= 1;
        }
        clean.truncate(end);
    }
    clean
}

/// Now, in Unix milliseconds.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// The summary of this appliance's runtime metrics now.
pub fn summary(files: &Files) -> RuntimeSummary {
    summarize(&files.runtime_metrics(), now_ms())
}

fn malformed(path: &Path, why: impl std::fmt::Display) -> RuntimeSummary {
    RuntimeSummary::unreadable(
        MetricsState::Malformed,
        cut(&format!("{}: {why}", path.display()), MAX_LINE),
    )
}

/// The summary of the metrics file at `path` at time `now_ms` (Unix milliseconds).
pub fn summarize(path: &Path, now_ms: u64) -> RuntimeSummary {
    let file = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return RuntimeSummary::unreadable(
                MetricsState::Missing,
                cut(
                    &format!(
                        "no {}: the runtime has not written its metrics (not started, or \
                         not in this image)",
                        path.display()
                    ),
                    MAX_LINE,
                ),
            );
        }
        Err(e) => return malformed(path, format_args!("opening: {e}")),
    };
    let mut bytes = Vec::new();
    if let Err(e) = file.take(MAX_METRICS_BYTES + 1).read_to_end(&mut bytes) {
        return malformed(path, format_args!("reading: {e}"));
    }
    if bytes.len() as u64 > MAX_METRICS_BYTES {
        return malformed(
            path,
            format_args!("more than {MAX_METRICS_BYTES} bytes; not the runtime's metrics"),
        );
    }
    let m: Metrics = match serde_json::from_slice(&bytes) {
        Ok(m) => m,
        Err(e) => return malformed(path, format_args!("not the runtime's metrics: {e}")),
    };
    if m.cameras.len() > MAX_CAMERAS as usize {
        return malformed(
            path,
            format_args!("{} cameras, at most {MAX_CAMERAS}", m.cameras.len()),
        );
    }
    // A file from the future (the clock was set back) is as fresh as can be told.
    let age_s = now_ms.saturating_sub(m.updated_unix_ms) / 1000;
    let count = |state: &str| m.cameras.iter().filter(|c| c.state == state).count() as u32;
    let summary = RuntimeSummary {
        metrics: if age_s > STALE_AFTER_S {
            MetricsState::Stale
        } else {
            MetricsState::Fresh
        },
        problem: (age_s > STALE_AFTER_S).then(|| {
            format!(
                "not rewritten for {age_s} s (more than {STALE_AFTER_S} s): the runtime is \
                 stuck or stopped"
            )
        }),
        age_s: Some(age_s),
        model: m.model.map(|model| RuntimeModel {
            name: cut(&model.name, MAX_NAME),
            // Checked, not cut: a wrong digest must show as one.
            sha256: model.sha256,
            execution_provider: cut(&model.execution_provider, MAX_PROVIDER),
            fallback: model.fallback,
        }),
        frames_inferred: m.frames.inferred,
        frames_dropped: m.frames.dropped,
        latency_p50_ms: m.latency_ms.p50,
        latency_p95_ms: m.latency_ms.p95,
        cameras: m.cameras.len() as u32,
        streaming: count("streaming"),
        stalled: count("stalled"),
        stalled_names: m
            .cameras
            .iter()
            .filter(|c| c.state == "stalled")
            .take(MAX_STALLED_NAMES)
            .map(|c| cut(&c.name, MAX_NAME))
            .collect(),
    };
    // What is left to check (the digest's form, the latencies' range) is the API's rule: a
    // summary the server would refuse is reported as malformed instead.
    match summary.validate() {
        Ok(()) => summary,
        Err(e) => malformed(path, e),
    }
}

/// The summary as `aperture-agent status` prints it: the one-line form, then the model, the
/// frames and the latencies, or what is wrong with the file.
pub fn describe(s: &RuntimeSummary) -> String {
    let mut out = format!("runtime: {s}");
    if let Some(m) = &s.model {
        out += &format!(
            "; model {} sha256 {}",
            m.name,
            m.sha256.get(..12).unwrap_or(&m.sha256)
        );
    }
    if matches!(s.metrics, MetricsState::Fresh | MetricsState::Stale) {
        out += &format!(
            "; frames inferred {} dropped {}",
            s.frames_inferred, s.frames_dropped
        );
        if let Some(p95) = s.latency_p95_ms {
            out += &format!("; p95 {p95:.1} ms");
        }
    }
    if let Some(p) = &s.problem {
        out += &format!(" ({p})");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: u64 = 1_800_000_000_000;

    /// A metrics file as `aperture-runtime` writes it, with a field this module does not know
    /// (the model bundle another change adds) to show it is ignored.
    fn metrics(updated: u64) -> serde_json::Value {
        serde_json::json!({
            "updated_unix_ms": updated,
            "model": {"name": "nanodet-m", "sha256": "0f".repeat(32),
                      "execution_provider": "cpu", "fallback": false,
                      "bundle": {"version": "2", "from_store": true}},
            "frames": {"decoded": 200, "inferred": 180, "dropped": 20},
            "latency_ms": {"p50": 41.5, "p95": 70.3, "samples": 180},
            "cameras": [
                {"name": "door", "state": "streaming", "phase": "streaming", "failures": 0,
                 "stalls": 0, "last_error": null, "decoded": 100, "inferred": 90,
                 "dropped": 10, "failed": 0},
                {"name": "yard", "state": "stalled", "phase": "backoff", "failures": 3,
                 "stalls": 3, "last_error": "connection refused", "decoded": 100,
                 "inferred": 90, "dropped": 10, "failed": 0},
                {"name": "gate", "state": "connecting", "phase": "connecting"}
            ],
            "output": {"lines": 5, "lines_dropped": 0, "clients": 1, "clients_dropped": 0,
                       "error": null},
            "installed_model": {"name": "nanodet-m", "rejected": null}
        })
    }

    fn write(text: &str) -> (tempfile::TempDir, Files) {
        let d = tempfile::tempdir().unwrap();
        let files = Files::at(d.path());
        std::fs::create_dir_all(files.runtime_metrics().parent().unwrap()).unwrap();
        std::fs::write(files.runtime_metrics(), text).unwrap();
        (d, files)
    }

    #[test]
    fn a_fresh_file_is_summarised() {
        let (_d, files) = write(&metrics(NOW - 400).to_string());
        let s = summarize(&files.runtime_metrics(), NOW);
        assert_eq!(s.metrics, MetricsState::Fresh);
        assert_eq!((s.age_s, s.problem.as_deref()), (Some(0), None));
        let m = s.model.as_ref().unwrap();
        assert_eq!(
            (m.name.as_str(), m.execution_provider.as_str(), m.fallback),
            ("nanodet-m", "cpu", false)
        );
        assert_eq!((s.frames_inferred, s.frames_dropped), (180, 20));
        assert_eq!(
            (s.latency_p50_ms, s.latency_p95_ms),
            (Some(41.5), Some(70.3))
        );
        assert_eq!((s.cameras, s.streaming, s.stalled), (3, 1, 1));
        assert_eq!(s.stalled_names, ["yard"]);
        assert_eq!(
            s.to_string(),
            "1/3 streaming (yard stalled), p50 41.5 ms, cpu"
        );
        let text = describe(&s);
        assert!(
            text.contains("model nanodet-m sha256 0f0f0f0f0f0f;")
                && text.contains("frames inferred 180 dropped 20; p95 70.3 ms"),
            "{text}"
        );
        // What the fleet server takes.
        s.validate().unwrap();
    }

    #[test]
    fn a_missing_file_is_reported_missing() {
        let d = tempfile::tempdir().unwrap();
        let s = summary(&Files::at(d.path()));
        assert_eq!(s.metrics, MetricsState::Missing);
        let p = s.problem.as_deref().unwrap();
        assert!(p.contains("run/aperture-runtime/runtime.json"), "{p}");
        assert_eq!((s.cameras, s.model.is_none()), (0, true));
        assert!(describe(&s).starts_with("runtime: missing (no "));
        s.validate().unwrap();
    }

    #[test]
    fn an_old_file_is_stale_with_its_last_numbers() {
        let (_d, files) = write(&metrics(NOW - 45_000).to_string());
        let s = summarize(&files.runtime_metrics(), NOW);
        assert_eq!((s.metrics, s.age_s), (MetricsState::Stale, Some(45)));
        assert!(s.problem.as_deref().unwrap().contains("45 s"));
        assert_eq!(s.frames_inferred, 180);
        assert!(s.to_string().starts_with("STALE 45s: 1/3 streaming"));
        // At the limit it is still fresh.
        let s = summarize(
            &files.runtime_metrics(),
            NOW - 45_000 + STALE_AFTER_S * 1000,
        );
        assert_eq!(s.metrics, MetricsState::Fresh);
        s.validate().unwrap();
    }

    #[test]
    fn malformed_files_are_reported_malformed_with_why() {
        let mut bad_digest = metrics(NOW);
        bad_digest["model"]["sha256"] = "not-a-digest".into();
        let mut bad_latency = metrics(NOW);
        bad_latency["latency_ms"]["p95"] = (-3.0).into();
        let mut no_time = metrics(NOW);
        no_time.as_object_mut().unwrap().remove("updated_unix_ms");
        let cases = [
            (
                "{\"updated_unix_ms\": ".to_string(),
                "not the runtime's metrics",
            ),
            ("[1, 2]".to_string(), "not the runtime's metrics"),
            (no_time.to_string(), "updated_unix_ms"),
            (bad_digest.to_string(), "runtime.model.sha256"),
            (bad_latency.to_string(), "runtime.latency_p95_ms"),
        ];
        for (text, why) in cases {
            let (_d, files) = write(&text);
            let s = summarize(&files.runtime_metrics(), NOW);
            assert_eq!(s.metrics, MetricsState::Malformed, "{text}");
            let p = s.problem.as_deref().unwrap();
            assert!(p.contains(why) && p.contains("runtime.json"), "{p}");
            assert!(p.len() <= MAX_LINE);
            s.validate().unwrap();
        }
    }

    #[test]
    fn oversized_files_and_fields_are_bounded() {
        // More than the agent reads.
        let mut huge = metrics(NOW);
        huge["padding"] = "x".repeat(MAX_METRICS_BYTES as usize).into();
        let (_d, files) = write(&huge.to_string());
        let s = summarize(&files.runtime_metrics(), NOW);
        assert_eq!(s.metrics, MetricsState::Malformed);
        assert!(s
            .problem
            .as_deref()
            .unwrap()
            .contains("more than 1048576 bytes"));

        // More cameras than a summary counts.
        let mut many = metrics(NOW);
        many["cameras"] = (0..=MAX_CAMERAS)
            .map(|i| serde_json::json!({"name": format!("c{i}"), "state": "stalled"}))
            .collect::<Vec<_>>()
            .into();
        let (_d, files) = write(&many.to_string());
        let s = summarize(&files.runtime_metrics(), NOW);
        assert_eq!(s.metrics, MetricsState::Malformed);
        assert!(s.problem.as_deref().unwrap().contains("1025 cameras"));

        // Many stalled cameras with long names: counted, a few named, names cut.
        let mut long = metrics(NOW);
        long["model"]["name"] = "m".repeat(300).into();
        long["cameras"] = (0..20)
            .map(|i| serde_json::json!({"name": format!("{i}-{}\n", "é".repeat(100)), "state": "stalled"}))
            .collect::<Vec<_>>()
            .into();
        let (_d, files) = write(&long.to_string());
        let s = summarize(&files.runtime_metrics(), NOW);
        assert_eq!(s.metrics, MetricsState::Fresh, "{:?}", s.problem);
        assert_eq!((s.cameras, s.stalled), (20, 20));
        assert_eq!(s.stalled_names.len(), MAX_STALLED_NAMES);
        assert!(s
            .stalled_names
            .iter()
            .all(|n| n.len() <= MAX_NAME && !n.contains('\n')));
        assert_eq!(s.model.as_ref().unwrap().name.len(), MAX_NAME);
        s.validate().unwrap();
        assert!(serde_json::to_vec(&s).unwrap().len() < 2048);
    }
}
