//! A blocking client of the fleet server's API (ureq over rustls, TLS 1.3, trusting only the
//! fleet CA): what the admin command line calls, and what tests and the appliance side use to
//! enroll and report (with a device certificate).

use std::io::Read;
use std::sync::Arc;
use std::time::Duration;

pub use aperture_fleet_api::tls::DeviceIdentity;
use aperture_fleet_api::tls::{client_config, TlsError};
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::api::{
    AuditEntry, ChannelRequest, CreateTokenRequest, CreatedToken, DeviceDetail, DeviceInfo,
    EnrollRequest, EnrollResponse, EnrollmentTokens, EnrollmentTokensRequest, PinRequest, Report,
    RolloutAction, RolloutDetail, RolloutInfo, RolloutSeries, StartRollout, TagsRequest, TokenInfo,
};
use crate::token::Role;

/// Largest answer the client reads.
const MAX_ANSWER: u64 = 64 * 1024 * 1024;

/// What can go wrong talking to the server.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The server answered with an error status.
    #[error("the server answered {status}: {message}")]
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
    /// The answer could not be read or parsed.
    #[error("reading the answer of {url}")]
    Answer {
        /// The URL.
        url: String,
        /// Why.
        #[source]
        err: std::io::Error,
    },
    /// The TLS settings could not be made (the CA, the device certificate or key).
    #[error(transparent)]
    Tls(#[from] TlsError),
}

impl Error {
    /// The HTTP status, when the server answered with an error.
    pub fn status(&self) -> Option<u16> {
        match self {
            Error::Status { status, .. } => Some(*status),
            _ => None,
        }
    }
}

/// TLS settings of a client: TLS 1.3, ring, trusting the CA in `ca_pem` only; with a device
/// identity, a client certificate (`aperture_fleet_api::tls`, which the appliance uses too).
pub fn tls_config(
    ca_pem: &str,
    device: Option<&DeviceIdentity>,
) -> Result<rustls::ClientConfig, Error> {
    Ok(client_config(ca_pem, device)?)
}

/// A client of one fleet server.
#[derive(Clone)]
pub struct Client {
    agent: ureq::Agent,
    base: String,
    token: Option<String>,
}

impl Client {
    /// A client of `server` (`https://HOST:PORT`) trusting `ca_pem`, with an API token for the
    /// admin routes and/or a device identity for the device routes.
    pub fn new(
        server: &str,
        ca_pem: &str,
        token: Option<String>,
        device: Option<&DeviceIdentity>,
    ) -> Result<Self, Error> {
        let agent = ureq::AgentBuilder::new()
            .tls_config(Arc::new(tls_config(ca_pem, device)?))
            .timeout(Duration::from_secs(30))
            .build();
        Ok(Client {
            agent,
            base: server.trim_end_matches('/').to_string(),
            token,
        })
    }

    /// The full URL of an API path.
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// Send `body` (raw bytes, as JSON) with `method` to `path`; the answer's status and body.
    /// Errors only when the server cannot be reached: tests use it to send what the typed
    /// calls never would.
    pub fn raw(&self, method: &str, path: &str, body: &[u8]) -> Result<(u16, String), Error> {
        let url = self.url(path);
        let response = match self.request(method, &url).send_bytes(body) {
            Ok(r) | Err(ureq::Error::Status(_, r)) => r,
            Err(ureq::Error::Transport(t)) => {
                return Err(Error::Transport {
                    url,
                    err: Box::new(t),
                })
            }
        };
        let status = response.status();
        let text = response
            .into_string()
            .map_err(|err| Error::Answer { url, err })?;
        Ok((status, text))
    }

    fn request(&self, method: &str, url: &str) -> ureq::Request {
        let mut req = self
            .agent
            .request(method, url)
            .set("Content-Type", "application/json");
        if let Some(t) = &self.token {
            req = req.set("Authorization", &format!("Bearer {t}"));
        }
        req
    }

    fn call<T: DeserializeOwned>(
        &self,
        method: &str,
        path: &str,
        body: Option<&impl Serialize>,
    ) -> Result<T, Error> {
        let url = self.url(path);
        let req = self.request(method, &url);
        let sent = match body {
            Some(b) => req.send_bytes(&serde_json::to_vec(b).expect("API types serialize")),
            None => req.call(),
        };
        let response = match sent {
            Ok(r) => r,
            Err(ureq::Error::Status(status, r)) => {
                let message =
                    aperture_fleet_api::error_message(r.into_string().unwrap_or_default());
                return Err(Error::Status { status, message });
            }
            Err(ureq::Error::Transport(t)) => {
                return Err(Error::Transport {
                    url,
                    err: Box::new(t),
                })
            }
        };
        let mut bytes = Vec::new();
        response
            .into_reader()
            .take(MAX_ANSWER)
            .read_to_end(&mut bytes)
            .map_err(|err| Error::Answer {
                url: url.clone(),
                err,
            })?;
        // A 204 has no body; `()` parses from `null`.
        let bytes = if bytes.is_empty() {
            b"null".to_vec()
        } else {
            bytes
        };
        serde_json::from_slice(&bytes).map_err(|err| Error::Answer {
            url,
            err: err.into(),
        })
    }

    /// Enroll a device (no credentials but the token in the request).
    pub fn enroll(&self, req: &EnrollRequest) -> Result<EnrollResponse, Error> {
        self.call("POST", "/v1/enroll", Some(req))
    }

    /// Send a device's report (needs the device identity).
    pub fn report(&self, device_id: &str, report: &Report) -> Result<(), Error> {
        self.call(
            "POST",
            &format!("/v1/devices/{device_id}/report"),
            Some(report),
        )
    }

    /// Every device.
    pub fn devices(&self) -> Result<Vec<DeviceInfo>, Error> {
        self.call("GET", "/v1/devices", None::<&()>)
    }

    /// One device with its report history.
    pub fn device(&self, id: &str) -> Result<DeviceDetail, Error> {
        self.call("GET", &format!("/v1/devices/{id}"), None::<&()>)
    }

    /// Revoke a device.
    pub fn revoke_device(&self, id: &str) -> Result<DeviceInfo, Error> {
        self.call("POST", &format!("/v1/devices/{id}/revoke"), None::<&()>)
    }

    /// Replace a device's tags.
    pub fn set_tags(&self, id: &str, tags: Vec<String>) -> Result<DeviceInfo, Error> {
        self.call(
            "PUT",
            &format!("/v1/devices/{id}/tags"),
            Some(&TagsRequest { tags }),
        )
    }

    /// Set a device's channel.
    pub fn set_channel(&self, id: &str, channel: &str) -> Result<DeviceInfo, Error> {
        self.call(
            "PUT",
            &format!("/v1/devices/{id}/channel"),
            Some(&ChannelRequest {
                channel: channel.to_string(),
            }),
        )
    }

    /// Make enrollment tokens.
    pub fn enrollment_tokens(
        &self,
        count: u32,
        expires_in: u64,
    ) -> Result<EnrollmentTokens, Error> {
        self.call(
            "POST",
            "/v1/enrollment-tokens",
            Some(&EnrollmentTokensRequest { count, expires_in }),
        )
    }

    /// Every API token.
    pub fn tokens(&self) -> Result<Vec<TokenInfo>, Error> {
        self.call("GET", "/v1/tokens", None::<&()>)
    }

    /// Make an API token.
    pub fn create_token(&self, name: &str, role: Role) -> Result<CreatedToken, Error> {
        self.call(
            "POST",
            "/v1/tokens",
            Some(&CreateTokenRequest {
                name: name.to_string(),
                role,
            }),
        )
    }

    /// Revoke an API token.
    pub fn revoke_token(&self, id: &str) -> Result<TokenInfo, Error> {
        self.call("POST", &format!("/v1/tokens/{id}/revoke"), None::<&()>)
    }

    /// The newest `limit` lines of the audit log.
    pub fn audit(&self, limit: u32) -> Result<Vec<AuditEntry>, Error> {
        self.call("GET", &format!("/v1/audit?limit={limit}"), None::<&()>)
    }

    /// Start a rollout.
    pub fn start_rollout(&self, req: &StartRollout) -> Result<RolloutInfo, Error> {
        self.call("POST", "/v1/rollouts", Some(req))
    }

    /// Every rollout, newest first.
    pub fn rollouts(&self) -> Result<Vec<RolloutInfo>, Error> {
        self.call("GET", "/v1/rollouts", None::<&()>)
    }

    /// One rollout with its devices' outcomes.
    pub fn rollout(&self, id: u64) -> Result<RolloutDetail, Error> {
        self.call("GET", &format!("/v1/rollouts/{id}"), None::<&()>)
    }

    /// A rollout's counts over time.
    pub fn rollout_series(&self, id: u64) -> Result<RolloutSeries, Error> {
        self.call("GET", &format!("/v1/rollouts/{id}/series"), None::<&()>)
    }

    /// Change a rollout's state: `verb` is pause, halt, resume or cancel.
    pub fn rollout_state(
        &self,
        id: u64,
        verb: &str,
        reason: Option<String>,
    ) -> Result<RolloutInfo, Error> {
        self.call(
            "POST",
            &format!("/v1/rollouts/{id}/{verb}"),
            Some(&RolloutAction { reason }),
        )
    }

    /// Pin a device where it is (`pin`), or unpin it.
    pub fn pin(&self, id: u64, device: &str, pin: bool) -> Result<RolloutInfo, Error> {
        let verb = if pin { "pin" } else { "unpin" };
        self.call(
            "POST",
            &format!("/v1/rollouts/{id}/{verb}"),
            Some(&PinRequest {
                device: device.to_string(),
            }),
        )
    }
}
