//! TLS settings of a fleet client: TLS 1.3 only, ring (the workspace's provider), trusting the
//! fleet CA alone (never the system's CAs: a device must not accept any other CA's server, and
//! the server accepts only its own CA's client certificates), optionally presenting a device
//! certificate for the device routes (mutual TLS).

use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// Why TLS settings could not be made.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TlsError {
    /// A PEM text (CA, certificate, key) does not parse.
    #[error("reading the {what} (PEM)")]
    Pem {
        /// Which.
        what: &'static str,
        /// Why.
        #[source]
        err: rustls::pki_types::pem::Error,
    },
    /// The CA text holds no certificate.
    #[error("the fleet CA holds no certificate")]
    NoCa,
    /// rustls refused a certificate or the configuration.
    #[error("setting up TLS")]
    Tls(#[from] rustls::Error),
}

/// A device's certificate and key (PEM), for mutual TLS.
#[derive(Clone)]
pub struct DeviceIdentity {
    /// The certificate.
    pub cert_pem: String,
    /// The private key.
    pub key_pem: String,
}

impl std::fmt::Debug for DeviceIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the key.
        f.debug_struct("DeviceIdentity").finish_non_exhaustive()
    }
}

/// The fleet CA's certificates in `ca_pem` as trust anchors; each is parsed (webpki), so text
/// that is no certificate fails here.
pub fn roots(ca_pem: &str) -> Result<rustls::RootCertStore, TlsError> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(cert.map_err(|err| TlsError::Pem { what: "CA", err })?)?;
    }
    if roots.is_empty() {
        return Err(TlsError::NoCa);
    }
    Ok(roots)
}

/// TLS settings of a client: TLS 1.3, ring, trusting the CA in `ca_pem` only; with a device
/// identity, a client certificate.
pub fn client_config(
    ca_pem: &str,
    device: Option<&DeviceIdentity>,
) -> Result<rustls::ClientConfig, TlsError> {
    let builder = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_protocol_versions(&[&rustls::version::TLS13])?
    .with_root_certificates(roots(ca_pem)?);
    Ok(match device {
        None => builder.with_no_client_auth(),
        Some(d) => {
            let chain = CertificateDer::pem_slice_iter(d.cert_pem.as_bytes())
                .collect::<Result<Vec<_>, _>>()
                .map_err(|err| TlsError::Pem {
                    what: "device certificate",
                    err,
                })?;
            let key = PrivateKeyDer::from_pem_slice(d.key_pem.as_bytes()).map_err(|err| {
                TlsError::Pem {
                    what: "device key",
                    err,
                }
            })?;
            builder.with_client_auth_cert(chain, key)?
        }
    })
}
