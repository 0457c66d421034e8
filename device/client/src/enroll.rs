//! Enrollment at first boot (issue 16): find a provisioning archive
//! ([`aperture_fleet_api::provision`]), make the device's ECDSA P-256 key and a CSR, enroll
//! over HTTPS trusting only the archive's CA, keep the identity, write the fleet id, erase the
//! archive.
//!
//! The identity lives in [`StateDir::fleet`] (`/var/lib/aperture/agent/fleet/`, on the
//! encrypted data partition): `cert.pem`, `ca.pem`, and `fleet.toml` (the server's URL and the
//! device id), written last, so a folder without it is no identity. The private key is kept
//! by a [`KeyStore`] ([`crate::devkey`]): sealed with the TPM where the board has one, else a
//! 0600 file, both on the encrypted config partition. An identity whose key no longer loads
//! (a sealed key moved to another TPM, a damaged file) is replaced by enrolling again from a
//! new archive; until then every use names the file and says to re-provision.
//!
//! The order: the server consumes the token before the device stores what it got back, so a
//! power cut between the two leaves an archive whose token is used; the device then reports
//! "refused" and needs a new archive (the token is worthless to anyone else as well).

use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use aperture_fleet_api::provision::{self, Archive, ArchiveError};
use aperture_fleet_api::tls::{self, DeviceIdentity, TlsError};
use aperture_fleet_api::{check_name, EnrollRequest, EnrollResponse, ENROLL_PATH};
use serde::{Deserialize, Serialize};
use url::Url;

use crate::check::StateDir;
use crate::devkey::{KeyError, KeyStore};

/// The identity's settings file (written last).
const IDENTITY_TOML: &str = "fleet.toml";
/// The device certificate.
const CERT_PEM: &str = "cert.pem";
/// The fleet CA.
const CA_PEM: &str = "ca.pem";
/// Largest enrollment answer read (a certificate and a CA).
const MAX_ANSWER: u64 = 64 * 1024;

/// Why enrollment failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EnrollError {
    /// The archive is malformed.
    #[error("the provisioning archive")]
    Archive(#[from] ArchiveError),
    /// The device's key or CSR could not be made.
    #[error("making the device key and CSR: {0}")]
    Key(String),
    /// TLS settings from the archive's CA.
    #[error("the archive's CA {}", ca.display())]
    Tls {
        /// The archive's CA file.
        ca: PathBuf,
        /// Why.
        #[source]
        err: TlsError,
    },
    /// The server could not be reached or its certificate is not the archive's CA's.
    #[error(
        "reaching {url} trusting only the archive's CA {} (a server certificate of another CA \
         fails here)",
        ca.display()
    )]
    Transport {
        /// The URL.
        url: String,
        /// The archive's CA file.
        ca: PathBuf,
        /// Why.
        #[source]
        err: Box<ureq::Transport>,
    },
    /// The server refused the enrollment.
    #[error("the fleet server refused the enrollment ({status}): {message}{}", hint(*status))]
    Refused {
        /// The HTTP status.
        status: u16,
        /// The server's message.
        message: String,
    },
    /// The server's answer is malformed.
    #[error("the fleet server's answer: {0}")]
    Answer(String),
    /// The identity could not be stored.
    #[error("storing the fleet identity")]
    Store(#[from] aperture_sys::fs::FsError),
    /// The device key could not be stored.
    #[error("storing the device key")]
    KeyStore(#[from] KeyError),
}

fn hint(status: u16) -> &'static str {
    if status == 401 || status == 403 || status == 409 {
        " (the token is single-use and expires: make a new archive with `aperture-fleet \
         provision`)"
    } else {
        ""
    }
}

/// `fleet.toml` of the identity.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct IdentityFile {
    url: String,
    device_id: String,
}

/// The device's enrolled identity.
#[derive(Debug, Clone)]
pub struct FleetIdentity {
    /// The fleet server.
    pub url: Url,
    /// The device's id (its certificate's CN).
    pub device_id: String,
    /// The fleet CA, PEM: the only CA trusted for the fleet.
    pub ca_pem: String,
    /// The device certificate and key.
    pub device: DeviceIdentity,
}

impl FleetIdentity {
    /// The identity in `dir`, `Ok(None)` before enrollment.
    pub fn load(dir: &Path, keys: &dyn KeyStore) -> Result<Option<FleetIdentity>, String> {
        let path = dir.join(IDENTITY_TOML);
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(format!("reading {}: {e}", path.display())),
        };
        let file: IdentityFile =
            toml::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
        let url = provision::check_url(&file.url)
            .map_err(|why| format!("{}: the URL {why}", path.display()))?;
        let read = |name: &str| {
            let p = dir.join(name);
            std::fs::read_to_string(&p).map_err(|e| format!("reading {}: {e}", p.display()))
        };
        Ok(Some(FleetIdentity {
            url,
            device_id: file.device_id,
            ca_pem: read(CA_PEM)?,
            device: DeviceIdentity {
                cert_pem: read(CERT_PEM)?,
                key_pem: keys.load().map_err(|e| error_chain(&e))?,
            },
        }))
    }

    /// A URL of the fleet server's API.
    pub fn api_url(&self, path: &str) -> String {
        format!("{}{path}", self.url.as_str().trim_end_matches('/'))
    }
}

/// `err` and its causes, `: `-separated.
fn error_chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(s) = source {
        text.push_str(&format!(": {s}"));
        source = s.source();
    }
    text
}

/// What enrollment did.
#[derive(Debug)]
pub struct Enrolled {
    /// The device's id.
    pub device_id: String,
    /// The archive it came from.
    pub archive: PathBuf,
    /// Whether the archive was erased: `Err` says why not (a read-only stick); its token is
    /// used and worthless now, but the stick should be wiped.
    pub erased: Result<(), String>,
}

/// The first place in `places` that holds an archive (a `fleet.toml`).
pub fn find_archive(places: &[PathBuf]) -> Option<PathBuf> {
    places
        .iter()
        .find(|p| p.join(provision::FLEET_TOML).is_file())
        .cloned()
}

/// Enroll from the first archive in `places` unless the device already has a working identity:
/// `Ok(None)` when it has one or no archive is there. An identity whose key no longer loads
/// (see the module documentation) is replaced when an archive is there.
pub fn enroll_if_provisioned(
    places: &[PathBuf],
    state: &StateDir,
    serial: &str,
    keys: &dyn KeyStore,
) -> Result<Option<Enrolled>, EnrollError> {
    let enrolled = state.fleet().join(IDENTITY_TOML).exists();
    let broken = if enrolled {
        match keys.load() {
            Ok(_) => return Ok(None),
            Err(e) => Some(error_chain(&e)),
        }
    } else {
        None
    };
    let Some(archive) = find_archive(places) else {
        return Ok(None);
    };
    if let Some(why) = broken {
        tracing::warn!(
            "enrolling again from {}: the enrolled identity's key does not load ({why})",
            archive.display()
        );
    }
    enroll(&archive, state, serial, keys).map(Some)
}

/// Enroll from the archive in folder `archive_dir`; see the module documentation.
pub fn enroll(
    archive_dir: &Path,
    state: &StateDir,
    serial: &str,
    keys: &dyn KeyStore,
) -> Result<Enrolled, EnrollError> {
    let archive = Archive::read(archive_dir)?;
    let ca_path = archive_dir.join(provision::CA_PEM);
    // The serial is what the server checks it against; an odd one is named here first.
    check_name("serial", serial).map_err(|e| EnrollError::Key(e.to_string()))?;

    let key = enrollment_key(state, keys)?;
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new())
        .map_err(|e| EnrollError::Key(e.to_string()))?;
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, serial);
    let csr = params
        .serialize_request(&key)
        .and_then(|r| r.pem())
        .map_err(|e| EnrollError::Key(e.to_string()))?;

    let config = tls::client_config(&archive.ca_pem, None).map_err(|err| EnrollError::Tls {
        ca: ca_path.clone(),
        err,
    })?;
    let agent = ureq::AgentBuilder::new()
        .tls_config(Arc::new(config))
        .timeout(Duration::from_secs(30))
        .redirects(0)
        .build();
    let url = format!(
        "{}{ENROLL_PATH}",
        archive.url.as_str().trim_end_matches('/')
    );
    let body = serde_json::to_vec(&EnrollRequest {
        token: archive.token.expose().to_string(),
        serial: serial.to_string(),
        csr,
    })
    .expect("the request serialises");
    let answer: EnrollResponse = match agent
        .post(&url)
        .set("Content-Type", "application/json")
        .send_bytes(&body)
    {
        Ok(r) => {
            let mut bytes = Vec::new();
            r.into_reader()
                .take(MAX_ANSWER)
                .read_to_end(&mut bytes)
                .map_err(|e| EnrollError::Answer(e.to_string()))?;
            serde_json::from_slice(&bytes).map_err(|e| EnrollError::Answer(e.to_string()))?
        }
        Err(ureq::Error::Status(status, r)) => {
            let message = aperture_fleet_api::error_message(r.into_string().unwrap_or_default());
            return Err(EnrollError::Refused { status, message });
        }
        Err(ureq::Error::Transport(t)) => {
            return Err(EnrollError::Transport {
                url,
                ca: ca_path,
                err: Box::new(t),
            })
        }
    };
    check_name("device_id", &answer.device_id).map_err(|e| EnrollError::Answer(e.to_string()))?;
    // The certificate must work with our key and the archive's CA before it is kept.
    let identity = DeviceIdentity {
        cert_pem: answer.certificate.clone(),
        key_pem: key.serialize_pem(),
    };
    tls::client_config(&archive.ca_pem, Some(&identity))
        .map_err(|e| EnrollError::Answer(format!("the device certificate: {e}")))?;

    store(state, &archive, &answer, &identity)?;
    tracing::info!("enrolled with {} as {}", archive.url, answer.device_id);
    // Reported by the caller, which may still erase it another way (a read-only stick is
    // remounted read-write for the erase alone).
    let erased = erase(archive_dir);
    Ok(Enrolled {
        device_id: answer.device_id,
        archive: archive_dir.to_path_buf(),
        erased,
    })
}

/// The key to enroll with, kept before the server is asked. A key kept without an identity
/// beside it is one whose enrollment was cut short (power lost between the server's answer and
/// the identity being written): it is used again, so the server, which has consumed the token,
/// recognises the key and issues the same device its certificate again. Otherwise a new ECDSA
/// P-256 key, stored at once (any old identity stops being one first).
fn enrollment_key(state: &StateDir, keys: &dyn KeyStore) -> Result<rcgen::KeyPair, EnrollError> {
    let identity = state.fleet().join(IDENTITY_TOML);
    if !identity.exists() && keys.holds_key() {
        match keys
            .load()
            .map_err(|e| e.to_string())
            .and_then(|pem| rcgen::KeyPair::from_pem(&pem).map_err(|e| e.to_string()))
        {
            Ok(key) => {
                tracing::info!(
                    "enrolling with the key kept in {} (an enrollment that did not finish)",
                    keys.path().display()
                );
                return Ok(key);
            }
            Err(why) => tracing::warn!(
                "the key kept in {} does not load ({why}); enrolling with a new one",
                keys.path().display()
            ),
        }
    }
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
        .map_err(|e| EnrollError::Key(e.to_string()))?;
    make_private_dir(&state.fleet())?;
    // A re-enrollment replaces an identity: it is no identity once its key is replaced.
    aperture_sys::fs::remove_durable(&identity)?;
    keys.store(&key.serialize_pem())?;
    Ok(key)
}

fn make_private_dir(dir: &Path) -> Result<(), EnrollError> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(aperture_sys::fs::FsError::on("creating", dir))?;
    Ok(())
}

fn store(
    state: &StateDir,
    archive: &Archive,
    answer: &EnrollResponse,
    identity: &DeviceIdentity,
) -> Result<(), EnrollError> {
    let dir = state.fleet();
    make_private_dir(&dir)?;
    // The key was stored before the server was asked ([`enrollment_key`]); fleet.toml, written
    // last, makes the identity whole.
    aperture_sys::fs::write_atomic(&dir.join(CERT_PEM), identity.cert_pem.as_bytes(), 0o644)?;
    aperture_sys::fs::write_atomic(&dir.join(CA_PEM), archive.ca_pem.as_bytes(), 0o644)?;
    let file = IdentityFile {
        url: archive.url.as_str().trim_end_matches('/').to_string(),
        device_id: answer.device_id.clone(),
    };
    let text = toml::to_string(&file).expect("the identity serialises");
    aperture_sys::fs::write_atomic(&dir.join(IDENTITY_TOML), text.as_bytes(), 0o644)?;
    aperture_sys::fs::write_atomic(
        &state.fleet_id(),
        format!("{}\n", answer.device_id).as_bytes(),
        0o644,
    )?;
    Ok(())
}

/// Overwrite and remove every file of the archive, then its folder if empty. The first error
/// is returned (on a read-only medium: the overwrite's EROFS), after trying every file.
pub fn erase(dir: &Path) -> Result<(), String> {
    let mut first = None;
    for name in provision::FILES {
        if let Err(e) = aperture_sys::fs::shred_and_remove(&dir.join(name)) {
            let read_only = e.err.kind() == io::ErrorKind::ReadOnlyFilesystem;
            let why = if read_only {
                format!("{e}: {}: the medium is read-only", e.err)
            } else {
                format!("{e}: {}", e.err)
            };
            first.get_or_insert(why);
        }
    }
    // The folder goes too when it is ours (the ESP's aperture/provision/); a stick's root stays.
    let _ = std::fs::remove_dir(dir);
    first.map_or(Ok(()), Err)
}
