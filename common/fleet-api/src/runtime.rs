//! The inference runtime's summary in a report (issue 17): what the appliance's agent makes of
//! the runtime's metrics file (`/run/aperture-runtime/runtime.json`, rewritten every half second) for
//! the fleet: the model (name, sha256, execution provider, CPU fallback), frames inferred and
//! dropped, latency p50/p95, cameras total / streaming / stalled, and how old the file was.
//!
//! The summary is small and bounded (at most [`MAX_STALLED_NAMES`] camera names, each
//! string short), so a forged report cannot grow the server's rows; [`RuntimeSummary::validate`]
//! is what the server checks, with [`crate::Report::validate`].

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::{bounded, FieldError, MAX_LINE, MAX_NAME};

/// Most cameras a summary counts (a runtime with more is reported as malformed by the agent).
pub const MAX_CAMERAS: u32 = 1024;
/// Most stalled cameras named in a summary (the count says how many there are).
pub const MAX_STALLED_NAMES: usize = 8;
/// Longest execution provider's name (`cpu`, `cuda`, `tensorrt`).
pub const MAX_PROVIDER: usize = 32;
/// The largest latency a summary may state (ms): ten minutes is not a latency but a bug.
pub const MAX_LATENCY_MS: f64 = 600_000.0;

/// What the agent found of the runtime's metrics file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
#[non_exhaustive]
pub enum MetricsState {
    /// Fresh: written within the agent's staleness limit.
    Fresh,
    /// Readable but not rewritten for too long: the runtime is stuck or stopped. The numbers
    /// are the last it wrote.
    Stale,
    /// No file: the runtime has not started (or the image has none).
    Missing,
    /// Unreadable, too large, not the metrics' JSON, or outside the summary's bounds.
    Malformed,
}

impl MetricsState {
    /// The word on the wire and in tables.
    pub fn as_str(self) -> &'static str {
        match self {
            MetricsState::Fresh => "fresh",
            MetricsState::Stale => "stale",
            MetricsState::Missing => "missing",
            MetricsState::Malformed => "malformed",
        }
    }
}

/// The model the runtime runs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuntimeModel {
    /// Its short name (at most [`MAX_NAME`] bytes).
    pub name: String,
    /// The model file's sha256 (64 lowercase hex digits).
    pub sha256: String,
    /// ONNX Runtime's execution provider (`cpu`, `cuda`, `tensorrt`).
    pub execution_provider: String,
    /// Whether a wanted accelerator was missing and the CPU runs the model instead.
    #[serde(default)]
    pub fallback: bool,
}

/// The runtime's state as one report carries it. Only `metrics` is required; the rest is
/// absent (or zero) when the file was missing or malformed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuntimeSummary {
    /// What the agent found of the metrics file.
    pub metrics: MetricsState,
    /// Why it is missing or malformed (at most [`MAX_LINE`] bytes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub problem: Option<String>,
    /// Seconds since the runtime last wrote the file, when it could be read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub age_s: Option<u64>,
    /// The model.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<RuntimeModel>,
    /// Frames run through the model since the runtime started.
    #[serde(default)]
    pub frames_inferred: u64,
    /// Frames dropped because inference was busy, since the runtime started.
    #[serde(default)]
    pub frames_dropped: u64,
    /// Median latency from decoding to detections (ms), over the runtime's recent frames.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latency_p50_ms: Option<f64>,
    /// 95th percentile of the same (ms).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latency_p95_ms: Option<f64>,
    /// Cameras configured (at most [`MAX_CAMERAS`]).
    #[serde(default)]
    pub cameras: u32,
    /// Cameras whose frames arrive.
    #[serde(default)]
    pub streaming: u32,
    /// Cameras stalled (lost, failed to open, or waiting to try again).
    #[serde(default)]
    pub stalled: u32,
    /// The first stalled cameras' names (at most [`MAX_STALLED_NAMES`], each at most
    /// [`MAX_NAME`] bytes).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub stalled_names: Vec<String>,
}

impl RuntimeSummary {
    /// A summary that says only what is wrong with the file (`Missing` or `Malformed`).
    pub fn unreadable(metrics: MetricsState, problem: impl Into<String>) -> Self {
        RuntimeSummary {
            metrics,
            problem: Some(problem.into()),
            age_s: None,
            model: None,
            frames_inferred: 0,
            frames_dropped: 0,
            latency_p50_ms: None,
            latency_p95_ms: None,
            cameras: 0,
            streaming: 0,
            stalled: 0,
            stalled_names: Vec::new(),
        }
    }

    /// Check every field's bounds; the error names the first field (under `runtime.`) that
    /// breaks them.
    pub fn validate(&self) -> Result<(), FieldError> {
        let err = |field: &str, why: String| FieldError {
            field: format!("runtime.{field}"),
            why,
        };
        if let Some(p) = &self.problem {
            bounded("runtime.problem", p, MAX_LINE)?;
        }
        if let Some(m) = &self.model {
            bounded("runtime.model.name", &m.name, MAX_NAME)?;
            let hex = m.sha256.len() == 64
                && m.sha256
                    .bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
            if !hex {
                return Err(err(
                    "model.sha256",
                    "must be 64 lowercase hex digits".into(),
                ));
            }
            bounded(
                "runtime.model.execution_provider",
                &m.execution_provider,
                MAX_PROVIDER,
            )?;
        }
        for (field, v) in [
            ("latency_p50_ms", self.latency_p50_ms),
            ("latency_p95_ms", self.latency_p95_ms),
        ] {
            if let Some(v) = v {
                if !(0.0..=MAX_LATENCY_MS).contains(&v) {
                    return Err(err(field, format!("{v}, must be 0 to {MAX_LATENCY_MS}")));
                }
            }
        }
        if self.cameras > MAX_CAMERAS {
            return Err(err(
                "cameras",
                format!("{}, at most {MAX_CAMERAS}", self.cameras),
            ));
        }
        if u64::from(self.streaming) + u64::from(self.stalled) > u64::from(self.cameras) {
            return Err(err(
                "streaming",
                format!(
                    "{} streaming and {} stalled of {} cameras",
                    self.streaming, self.stalled, self.cameras
                ),
            ));
        }
        if self.stalled_names.len() > MAX_STALLED_NAMES {
            return Err(err(
                "stalled_names",
                format!(
                    "{} entries, at most {MAX_STALLED_NAMES}",
                    self.stalled_names.len()
                ),
            ));
        }
        for (i, n) in self.stalled_names.iter().enumerate() {
            bounded(&format!("runtime.stalled_names[{i}]"), n, MAX_NAME)?;
        }
        Ok(())
    }
}

/// One short line for a table cell or a status line: `2/2 streaming, p50 41.3 ms, cpu`;
/// `1/2 streaming (door stalled), ...`; `stale 45s: ...`; `missing` or `malformed`.
impl fmt::Display for RuntimeSummary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.metrics {
            MetricsState::Missing | MetricsState::Malformed => {
                return f.write_str(self.metrics.as_str());
            }
            MetricsState::Stale => match self.age_s {
                Some(age) => write!(f, "STALE {age}s: ")?,
                None => f.write_str("STALE: ")?,
            },
            MetricsState::Fresh => {}
        }
        write!(f, "{}/{} streaming", self.streaming, self.cameras)?;
        if !self.stalled_names.is_empty() {
            write!(f, " ({} stalled)", self.stalled_names.join(","))?;
        }
        if let Some(p50) = self.latency_p50_ms {
            write!(f, ", p50 {p50:.1} ms")?;
        }
        if let Some(m) = &self.model {
            write!(f, ", {}", m.execution_provider)?;
            if m.fallback {
                f.write_str(" (FALLBACK)")?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A fresh summary of two cameras, one stalled.
    pub(crate) fn summary() -> RuntimeSummary {
        RuntimeSummary {
            metrics: MetricsState::Fresh,
            problem: None,
            age_s: Some(0),
            model: Some(RuntimeModel {
                name: "nanodet-m".into(),
                sha256: "ab".repeat(32),
                execution_provider: "cpu".into(),
                fallback: false,
            }),
            frames_inferred: 1520,
            frames_dropped: 3,
            latency_p50_ms: Some(41.3),
            latency_p95_ms: Some(60.0),
            cameras: 2,
            streaming: 1,
            stalled: 1,
            stalled_names: vec!["door".into()],
        }
    }

    #[test]
    fn a_summary_reads_as_one_line() {
        assert_eq!(
            summary().to_string(),
            "1/2 streaming (door stalled), p50 41.3 ms, cpu"
        );
        let mut s = summary();
        s.metrics = MetricsState::Stale;
        s.age_s = Some(45);
        s.model.as_mut().unwrap().fallback = true;
        assert!(s.to_string().starts_with("STALE 45s: 1/2 streaming"));
        assert!(s.to_string().ends_with("cpu (FALLBACK)"));
        let missing = RuntimeSummary::unreadable(MetricsState::Missing, "no file");
        assert_eq!(missing.to_string(), "missing");
        missing.validate().unwrap();
    }

    #[test]
    fn bounds_are_checked_and_named() {
        summary().validate().unwrap();
        let field = |s: RuntimeSummary| s.validate().unwrap_err().field;
        let mut s = summary();
        s.stalled_names = vec!["cam".into(); MAX_STALLED_NAMES + 1];
        assert_eq!(field(s), "runtime.stalled_names");
        let mut s = summary();
        s.stalled_names[0] = "x".repeat(MAX_NAME + 1);
        assert_eq!(field(s), "runtime.stalled_names[0]");
        let mut s = summary();
        s.cameras = MAX_CAMERAS + 1;
        assert_eq!(field(s), "runtime.cameras");
        let mut s = summary();
        s.streaming = 2;
        assert_eq!(field(s), "runtime.streaming");
        let mut s = summary();
        s.model.as_mut().unwrap().sha256 = "AB".repeat(32);
        assert_eq!(field(s), "runtime.model.sha256");
        let mut s = summary();
        s.model.as_mut().unwrap().name = "a\nb".into();
        assert_eq!(field(s), "runtime.model.name");
        let mut s = summary();
        s.latency_p95_ms = Some(-1.0);
        assert_eq!(field(s), "runtime.latency_p95_ms");
        let mut s = summary();
        s.problem = Some("p".repeat(MAX_LINE + 1));
        assert_eq!(field(s), "runtime.problem");
    }
}
