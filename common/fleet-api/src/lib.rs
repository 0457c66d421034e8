//! What the fleet server (`host/fleet`) and the appliance (`device/client`) both speak (issue
//! 16), in a crate with no host dependency:
//!
//! * the device-facing wire types of the HTTP API and their bounds: [`EnrollRequest`],
//!   [`EnrollResponse`], [`Report`] and its parts, and the result words a rollout classifies
//!   ([`RESULT_FAILED`], [`RESULT_ROLLED_BACK`], [`RESULT_COMMITTED`]): the device must send the
//!   same words the server counts;
//! * [`runtime`]: the inference runtime's summary a report carries ([`RuntimeSummary`]);
//! * [`provision`]: the provisioning archive an appliance takes its first configuration from;
//! * [`tls`]: the client's TLS settings (TLS 1.3, the fleet CA only, optionally a device
//!   certificate), the same for the admin command line and the appliance.

pub mod provision;
pub mod runtime;
pub mod tls;

pub use runtime::{MetricsState, RuntimeModel, RuntimeSummary};

use serde::{Deserialize, Serialize};

/// Largest report body the server reads (bytes); more is refused with 413.
pub const MAX_REPORT_BYTES: usize = 16 * 1024;
/// Largest enrollment request body (bytes): a token and a CSR.
pub const MAX_ENROLL_BYTES: usize = 16 * 1024;
/// Longest name (serial, tag, channel, token name).
pub const MAX_NAME: usize = 64;
/// Longest journal line or health detail in a report.
pub const MAX_LINE: usize = 512;
/// Most slot states in a report.
pub const MAX_SLOTS: usize = 4;

/// A device's first request: its one-time token, what it says its serial is, and a CSR (PEM)
/// for the key it made. Only the CSR's public key is used: the server names the device.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EnrollRequest {
    /// The one-time enrollment token.
    pub token: String,
    /// The device's hardware serial, as it reports it.
    pub serial: String,
    /// A PKCS#10 certificate signing request, PEM.
    pub csr: String,
}

/// The answer to an enrollment: the device's name and certificate, and the fleet CA.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EnrollResponse {
    /// The device's id (the CN of its certificate, the `{id}` of its report URL).
    pub device_id: String,
    /// Its certificate, PEM, signed by the fleet CA, for client authentication.
    pub certificate: String,
    /// The fleet CA certificate, PEM (it also signs the server's certificate).
    pub ca: String,
}

/// What an appliance reports at each poll. Every field is bounded; unknown fields are refused.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Report {
    /// The running image's version.
    pub version: String,
    /// The running slot (`a` or `b`).
    pub slot: String,
    /// Each slot's state as the updater sees it (at most [`MAX_SLOTS`]).
    pub slots: Vec<SlotState>,
    /// The anti-rollback floor (security version).
    pub floor: u64,
    /// The last update attempt, if any.
    #[serde(default)]
    pub last_update: Option<UpdateResult>,
    /// The health gate's last verdict, if it ran.
    #[serde(default)]
    pub health: Option<HealthResult>,
    /// Whether the vision runtime is alive.
    pub runtime_alive: bool,
    /// The inference runtime's metrics, summarised (issue 17). Optional both ways: a device
    /// older than the field sends none, and a device leaves it out when it has none to say,
    /// so a server older than the field still takes its reports.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub runtime: Option<RuntimeSummary>,
}

/// One slot's state.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SlotState {
    /// The slot (`a` or `b`).
    pub slot: String,
    /// Its state (`good`, `trial`, `bad`, `empty`, ...).
    pub state: String,
    /// The version it holds, if known.
    #[serde(default)]
    pub version: Option<String>,
}

/// [`UpdateResult::result`] of an install that failed before the new version ran (download,
/// signature, write, read-back): a rollout counts it as `failed-install`.
pub const RESULT_FAILED: &str = "failed";
/// [`UpdateResult::result`] of a new version that booted and gave up (its health gate failed
/// or its tries ran out; the old slot runs again): a rollout counts it as `failed-health`.
pub const RESULT_ROLLED_BACK: &str = "rolled-back";
/// [`UpdateResult::result`] of a new version that passed its health gate and was committed.
pub const RESULT_COMMITTED: &str = "committed";

/// The result of the last update attempt.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpdateResult {
    /// `installed`, `committed` ([`RESULT_COMMITTED`]), `failed` ([`RESULT_FAILED`]),
    /// `rolled-back` ([`RESULT_ROLLED_BACK`]), ...
    pub result: String,
    /// The version it tried.
    #[serde(default)]
    pub version: Option<String>,
    /// Its journal line.
    pub journal: String,
}

/// The health gate's verdict.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HealthResult {
    /// Whether it passed.
    pub passed: bool,
    /// What it found (the first failing check).
    #[serde(default)]
    pub detail: String,
}

/// A field of a request that breaks its bounds.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("field `{field}`: {why}")]
pub struct FieldError {
    /// The field's path (`slots[1].state`).
    pub field: String,
    /// What is wrong with it.
    pub why: String,
}

fn bounded(field: &str, value: &str, max: usize) -> Result<(), FieldError> {
    if value.len() > max {
        return Err(FieldError {
            field: field.to_string(),
            why: format!("{} bytes, at most {max}", value.len()),
        });
    }
    if value.chars().any(char::is_control) {
        return Err(FieldError {
            field: field.to_string(),
            why: "control characters".into(),
        });
    }
    Ok(())
}

/// Check a name (serial, tag, channel, token name): 1 to [`MAX_NAME`] of `A-Za-z0-9._-`.
pub fn check_name(field: &str, value: &str) -> Result<(), FieldError> {
    let ok = !value.is_empty()
        && value.len() <= MAX_NAME
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(FieldError {
            field: field.to_string(),
            why: format!("must be 1 to {MAX_NAME} of A-Z a-z 0-9 . _ -"),
        })
    }
}

impl Report {
    /// Check every field's bounds; the error names the first field that breaks them.
    pub fn validate(&self) -> Result<(), FieldError> {
        check_name("version", &self.version)?;
        bounded("slot", &self.slot, 8)?;
        if self.slots.len() > MAX_SLOTS {
            return Err(FieldError {
                field: "slots".into(),
                why: format!("{} entries, at most {MAX_SLOTS}", self.slots.len()),
            });
        }
        for (i, s) in self.slots.iter().enumerate() {
            bounded(&format!("slots[{i}].slot"), &s.slot, 8)?;
            bounded(&format!("slots[{i}].state"), &s.state, 32)?;
            if let Some(v) = &s.version {
                check_name(&format!("slots[{i}].version"), v)?;
            }
        }
        if let Some(u) = &self.last_update {
            bounded("last_update.result", &u.result, 32)?;
            if let Some(v) = &u.version {
                check_name("last_update.version", v)?;
            }
            bounded("last_update.journal", &u.journal, MAX_LINE)?;
        }
        if let Some(h) = &self.health {
            bounded("health.detail", &h.detail, MAX_LINE)?;
        }
        if let Some(r) = &self.runtime {
            r.validate()?;
        }
        Ok(())
    }
}

/// The message of an error answer: the server's `{"error": "..."}`, or the body as it came
/// (from something other than the fleet server, such as a proxy).
pub fn error_message(body: String) -> String {
    serde_json::from_str::<serde_json::Value>(&body)
        .ok()
        .and_then(|v| v.get("error")?.as_str().map(str::to_string))
        .unwrap_or(body)
}

/// The path of a device's report.
pub fn report_path(device_id: &str) -> String {
    format!("/v1/devices/{device_id}/report")
}

/// The path of enrollment.
pub const ENROLL_PATH: &str = "/v1/enroll";

#[cfg(test)]
mod tests {
    #[test]
    fn an_error_answer_gives_its_message_or_its_body() {
        assert_eq!(
            super::error_message(r#"{"error":"token used"}"#.into()),
            "token used"
        );
        assert_eq!(
            super::error_message("502 Bad Gateway".into()),
            "502 Bad Gateway"
        );
        assert_eq!(
            super::error_message(r#"{"other":1}"#.into()),
            r#"{"other":1}"#
        );
    }

    use super::*;

    fn report() -> Report {
        Report {
            version: "1.2.0".into(),
            slot: "a".into(),
            slots: vec![SlotState {
                slot: "a".into(),
                state: "good".into(),
                version: Some("1.2.0".into()),
            }],
            floor: 3,
            last_update: Some(UpdateResult {
                result: "committed".into(),
                version: Some("1.2.0".into()),
                journal: "installed 1.2.0 into b".into(),
            }),
            health: None,
            runtime_alive: true,
            runtime: Some(crate::runtime::tests::summary()),
        }
    }

    #[test]
    fn a_good_report_passes_and_bad_fields_are_named() {
        report().validate().unwrap();
        let mut r = report();
        r.last_update.as_mut().unwrap().journal = "x".repeat(MAX_LINE + 1);
        assert_eq!(r.validate().unwrap_err().field, "last_update.journal");
        let mut r = report();
        r.slots[0].state = "bad\nline".into();
        assert_eq!(r.validate().unwrap_err().field, "slots[0].state");
        let mut r = report();
        r.version = "1.0 ; rm".into();
        assert_eq!(r.validate().unwrap_err().field, "version");
    }

    #[test]
    fn a_report_with_its_runtime_round_trips_and_its_bounds_are_checked() {
        let r = report();
        let text = serde_json::to_string(&r).unwrap();
        let back: Report = serde_json::from_str(&text).unwrap();
        assert_eq!(back, r);
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v["runtime"]["metrics"], "fresh");
        assert_eq!(v["runtime"]["model"]["execution_provider"], "cpu");
        let mut bad = report();
        bad.runtime.as_mut().unwrap().stalled_names = vec!["c".into(); 100];
        assert_eq!(bad.validate().unwrap_err().field, "runtime.stalled_names");
        // Unknown fields inside the summary are refused like the report's own.
        let mut v = v;
        v["runtime"]["surprise"] = 1.into();
        let e = serde_json::from_value::<Report>(v).unwrap_err().to_string();
        assert!(e.contains("surprise"), "{e}");
    }

    #[test]
    fn a_report_without_a_runtime_reads_and_is_written_as_before() {
        // What a device older than the field sends.
        let old = r#"{"version":"1.0.0","slot":"a","slots":[],"floor":1,"runtime_alive":false}"#;
        let r: Report = serde_json::from_str(old).unwrap();
        assert_eq!(r.runtime, None);
        r.validate().unwrap();
        // Written without it, a server older than the field (which refuses unknown fields)
        // takes it.
        let text = serde_json::to_string(&r).unwrap();
        assert!(!text.contains("runtime\""), "{text}");
    }

    #[test]
    fn names_are_checked() {
        check_name("tag", "site-7.north_2").unwrap();
        assert!(check_name("tag", "").is_err());
        assert!(check_name("tag", "a b").is_err());
        assert!(check_name("tag", &"a".repeat(MAX_NAME + 1)).is_err());
    }
}
