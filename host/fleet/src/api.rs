//! The fleet server's HTTP API as JSON types, shared by the server, the admin command line and
//! (later) the appliance's agent, with the bounds every field from a device must keep.
//!
//! Only serde here, so the types can move to a `common/` crate when the device side takes them.
//!
//! | method and path | who | body → answer |
//! |---|---|---|
//! | `POST /v1/enroll` | a device with a one-time token | [`EnrollRequest`] → [`EnrollResponse`] |
//! | `POST /v1/devices/{id}/report` | that device (mutual TLS) | [`Report`] → 204 |
//! | `GET /v1/devices` | viewer | → `[`[`DeviceInfo`]`]` |
//! | `GET /v1/devices/{id}` | viewer | → [`DeviceDetail`] |
//! | `POST /v1/devices/{id}/revoke` | operator | → [`DeviceInfo`] |
//! | `PUT /v1/devices/{id}/tags` | operator | [`TagsRequest`] → [`DeviceInfo`] |
//! | `PUT /v1/devices/{id}/channel` | release-manager | [`ChannelRequest`] → [`DeviceInfo`] |
//! | `POST /v1/enrollment-tokens` | operator | [`EnrollmentTokensRequest`] → [`EnrollmentTokens`] |
//! | `GET /v1/tokens` | admin | → `[`[`TokenInfo`]`]` |
//! | `POST /v1/tokens` | admin | [`CreateTokenRequest`] → [`CreatedToken`] |
//! | `POST /v1/tokens/{id}/revoke` | admin | → [`TokenInfo`] |
//! | `GET /v1/audit?limit=N` | admin | → `[`[`AuditEntry`]`]`, newest first |
//! | `GET /v1/health` | anyone | → `ok` |
//!
//! Errors are [`ErrorBody`] with the status: 400 malformed (naming the field), 401 no or bad
//! credentials, 403 credentials that may not do this, 404, 413 too large, 429 too many.

use serde::{Deserialize, Serialize};

use crate::token::Role;

/// Largest report body the server reads (bytes); more is refused with 413.
pub const MAX_REPORT_BYTES: usize = 16 * 1024;
/// Largest enrollment request body (bytes): a token and a CSR.
pub const MAX_ENROLL_BYTES: usize = 16 * 1024;
/// Longest name (serial, tag, channel, token name).
pub const MAX_NAME: usize = 64;
/// Most tags on a device.
pub const MAX_TAGS: usize = 16;
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

/// The result of the last update attempt.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpdateResult {
    /// `installed`, `committed`, `failed`, `rolled-back`, ...
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
        Ok(())
    }
}

/// A device as administrators see it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeviceInfo {
    /// The server's name for it.
    pub id: String,
    /// Its hardware serial, as it said at enrollment.
    pub serial: String,
    /// SHA-256 of its certificate (hex).
    pub cert_sha256: String,
    /// Its tags.
    pub tags: Vec<String>,
    /// Its release channel.
    pub channel: String,
    /// When it enrolled (Unix seconds).
    pub enrolled_at: i64,
    /// When it was revoked, if it was.
    pub revoked_at: Option<i64>,
    /// Its last report's time.
    pub last_seen_at: Option<i64>,
    /// Its last report.
    pub last_report: Option<Report>,
}

/// A device with its recent reports, newest first.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeviceDetail {
    /// The device.
    pub device: DeviceInfo,
    /// Its recent reports (bounded), newest first.
    pub history: Vec<ReportRecord>,
}

/// One stored report.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReportRecord {
    /// When the server received it (Unix seconds).
    pub received_at: i64,
    /// The report.
    pub report: Report,
}

/// New tags for a device (replacing its tags).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TagsRequest {
    /// The tags, at most [`MAX_TAGS`].
    pub tags: Vec<String>,
}

/// A new release channel for a device.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChannelRequest {
    /// The channel.
    pub channel: String,
}

/// A request for enrollment tokens.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EnrollmentTokensRequest {
    /// How many (1 to 1000).
    pub count: u32,
    /// Their lifetime in seconds (at most a year).
    pub expires_in: u64,
}

/// New enrollment tokens, shown once.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EnrollmentTokens {
    /// The tokens.
    pub tokens: Vec<String>,
    /// When they expire (Unix seconds).
    pub expires_at: i64,
}

/// An admin API token, without its secret.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TokenInfo {
    /// Its id (`tok-...`).
    pub id: String,
    /// Its name (whose it is).
    pub name: String,
    /// Its role.
    pub role: Role,
    /// When it was made.
    pub created_at: i64,
    /// Who made it (an actor as the audit log names it).
    pub created_by: String,
    /// When it was revoked, if it was.
    pub revoked_at: Option<i64>,
}

/// A request for a new API token.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateTokenRequest {
    /// Its name.
    pub name: String,
    /// Its role.
    pub role: Role,
}

/// A new API token: its secret is shown this once.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CreatedToken {
    /// The token's record.
    pub info: TokenInfo,
    /// The secret.
    pub token: String,
}

/// One line of the audit log.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AuditEntry {
    /// Its sequence number.
    pub id: i64,
    /// When (Unix seconds).
    pub at: i64,
    /// Who: `token:ID (NAME)`, `enrollment`, or `init`.
    pub actor: String,
    /// What (`device.revoke`, `token.create`, ...).
    pub action: String,
    /// On what (a device or token id).
    pub target: String,
    /// The details (JSON).
    pub detail: serde_json::Value,
}

/// An error's body.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ErrorBody {
    /// What went wrong.
    pub error: String,
}

#[cfg(test)]
mod tests {
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
    fn names_are_checked() {
        check_name("tag", "site-7.north_2").unwrap();
        assert!(check_name("tag", "").is_err());
        assert!(check_name("tag", "a b").is_err());
        assert!(check_name("tag", &"a".repeat(MAX_NAME + 1)).is_err());
    }
}
