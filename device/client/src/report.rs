//! Reports to the fleet server after each poll of the update loop (issue 16): a bounded
//! [`Report`] over mutual TLS 1.3 with the device certificate, trusting only the fleet CA
//! ([`crate::enroll::FleetIdentity`]).
//!
//! A report that cannot be sent is logged by the caller and never stops the loop; a 429 (the
//! server's per-device limit) holds reports back for its `Retry-After` (at least a minute, at
//! most an hour); a report the server would refuse for its size or a field is not sent.
//!
//! A server older than the report's optional `runtime` field (issue 17) refuses it as an
//! unknown field (400): the report is sent again without it, and so are the reporter's later
//! ones (until the agent restarts, after the server may have been upgraded).

use std::io::Read;
use std::sync::Arc;
use std::time::Duration;

use aperture_fleet_api::tls::{self, TlsError};
use aperture_fleet_api::{report_path, FieldError, Report, MAX_REPORT_BYTES};

use crate::enroll::FleetIdentity;

/// Shortest hold after a 429 without a usable `Retry-After` (seconds).
const MIN_BACKOFF: u64 = 60;
/// Longest hold after a 429 (seconds).
const MAX_BACKOFF: u64 = 3600;

/// Why a report was not delivered.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ReportError {
    /// A field breaks the API's bounds (the server would answer 400).
    #[error("the report")]
    Invalid(#[from] FieldError),
    /// The report is larger than the server takes.
    #[error("the report is {0} bytes, more than the server's {MAX_REPORT_BYTES}")]
    TooLarge(usize),
    /// Held back after a 429 until this time (Unix seconds).
    #[error("held back until {0} (the fleet server asked to slow down)")]
    HeldBack(u64),
    /// The server answered 429: held back until this time (Unix seconds).
    #[error("the fleet server answered 429 (too many reports); next report after {0}")]
    RateLimited(u64),
    /// The server refused it.
    #[error("the fleet server answered {status}: {message}")]
    Status {
        /// The HTTP status.
        status: u16,
        /// The server's message.
        message: String,
    },
    /// The server could not be reached, or TLS failed.
    #[error("reaching {url}")]
    Transport {
        /// The URL.
        url: String,
        /// Why.
        #[source]
        err: Box<ureq::Transport>,
    },
}

/// Sends one device's reports.
pub struct Reporter {
    agent: ureq::Agent,
    url: String,
    held_until: u64,
    /// The server refused the `runtime` field: leave it out.
    omit_runtime: bool,
}

/// Whether a 400's message is a server's refusal of the `runtime` field it does not know.
fn refuses_runtime_field(status: u16, message: &str) -> bool {
    status == 400 && message.contains("unknown field `runtime`")
}

impl Reporter {
    /// A reporter for `identity`: mutual TLS 1.3, the fleet CA only.
    pub fn new(identity: &FleetIdentity) -> Result<Reporter, TlsError> {
        let config = tls::client_config(&identity.ca_pem, Some(&identity.device))?;
        let agent = ureq::AgentBuilder::new()
            .tls_config(Arc::new(config))
            .timeout(Duration::from_secs(20))
            .redirects(0)
            .build();
        Ok(Reporter {
            agent,
            url: identity.api_url(&report_path(&identity.device_id)),
            held_until: 0,
            omit_runtime: false,
        })
    }

    /// Send `report` at time `now` (Unix seconds).
    pub fn send(&mut self, report: &Report, now: u64) -> Result<(), ReportError> {
        if self.omit_runtime && report.runtime.is_some() {
            let mut older = report.clone();
            older.runtime = None;
            return self.send_once(&older, now);
        }
        match self.send_once(report, now) {
            Err(ReportError::Status { status, message })
                if report.runtime.is_some() && refuses_runtime_field(status, &message) =>
            {
                tracing::info!(
                    "the fleet server does not know the report's runtime field; sending \
                     reports without it"
                );
                self.omit_runtime = true;
                self.send(report, now)
            }
            other => other,
        }
    }

    fn send_once(&mut self, report: &Report, now: u64) -> Result<(), ReportError> {
        if now < self.held_until {
            return Err(ReportError::HeldBack(self.held_until));
        }
        report.validate()?;
        let body = serde_json::to_vec(report).expect("a report serialises");
        if body.len() > MAX_REPORT_BYTES {
            return Err(ReportError::TooLarge(body.len()));
        }
        match self
            .agent
            .post(&self.url)
            .set("Content-Type", "application/json")
            .send_bytes(&body)
        {
            Ok(r) => {
                // Read the (empty) answer so the connection can be reused.
                let _ = r.into_reader().take(4096).read_to_end(&mut Vec::new());
                Ok(())
            }
            Err(ureq::Error::Status(429, r)) => {
                let wait = r
                    .header("Retry-After")
                    .and_then(|v| v.trim().parse::<u64>().ok())
                    .unwrap_or(MIN_BACKOFF)
                    .clamp(MIN_BACKOFF, MAX_BACKOFF);
                self.held_until = now + wait;
                Err(ReportError::RateLimited(self.held_until))
            }
            Err(ureq::Error::Status(status, r)) => {
                let message =
                    aperture_fleet_api::error_message(r.into_string().unwrap_or_default());
                Err(ReportError::Status { status, message })
            }
            Err(ureq::Error::Transport(t)) => Err(ReportError::Transport {
                url: self.url.clone(),
                err: Box::new(t),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn only_an_unknown_runtime_field_is_taken_for_an_older_server() {
        // serde's words, as an older server's 400 carries them (`deny_unknown_fields`).
        let old = "field `runtime`: unknown field `runtime`, expected one of `version`, `slot`";
        assert!(super::refuses_runtime_field(400, old));
        assert!(!super::refuses_runtime_field(429, old));
        assert!(!super::refuses_runtime_field(
            400,
            "field `runtime.cameras`: 5000, at most 1024"
        ));
    }
}
