//! The fleet's identity: a fleet CA (rcgen, ECDSA P-256), the server's TLS certificate it
//! signs, and device certificates issued from enrollment CSRs.
//!
//! The identity folder (`aperture-fleet init --dir DIR`):
//!
//! | file | what |
//! |---|---|
//! | `ca.pem`, `ca.key` | the fleet CA (10 years); the key is mode 0600 |
//! | `server.pem`, `server.key` | the server's certificate (825 days) for its names |
//!
//! A device certificate takes nothing from the CSR but its public key (whose proof of
//! possession rcgen checks: the CSR's signature): the server chooses the subject (`CN=` the
//! device id), the usage (client authentication only) and the validity (10 years: appliances can
//! be offline for a long time, and a device is revoked in the database, which the server checks
//! on every request, not by expiry).

use std::fs;
use std::io::Write;
use std::net::IpAddr;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, Certificate, CertificateParams, CertificateSigningRequestParams,
    DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose, SanType,
    SerialNumber,
};
use sha2::{Digest, Sha256};
use time::{Duration, OffsetDateTime};

/// The default names of the server's certificate.
pub const DEFAULT_SERVER_NAMES: &[&str] = &["127.0.0.1", "localhost"];

/// What can go wrong with the fleet's certificates.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The CSR does not parse, uses an extension we do not accept, or its signature is wrong.
    #[error("the certificate signing request is not valid")]
    BadCsr(#[source] rcgen::Error),
    /// rcgen could not make or sign a certificate.
    #[error("making a certificate")]
    Rcgen(#[from] rcgen::Error),
    /// A file of the identity folder could not be read or written.
    #[error("{path}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        err: std::io::Error,
    },
    /// A server name is neither an IP address nor a DNS name.
    #[error("server name {0:?} is not an IP address or DNS name")]
    BadName(String),
}

/// The SHA-256 of a certificate's DER, hex: how the server recognises a device.
pub fn fingerprint(der: &[u8]) -> String {
    hex::encode(Sha256::digest(der))
}

fn random_serial() -> SerialNumber {
    let mut bytes = [0u8; 16];
    getrandom::getrandom(&mut bytes).expect("the operating system's random source failed");
    // A positive INTEGER (RFC 5280 4.1.2.2).
    bytes[0] &= 0x7f;
    SerialNumber::from_slice(&bytes)
}

fn validity(params: &mut CertificateParams, days: i64) {
    let now = OffsetDateTime::now_utc();
    // An hour back: devices whose clocks lag a little still accept what we issue.
    params.not_before = now - Duration::hours(1);
    params.not_after = now + Duration::days(days);
}

/// The fleet CA: its certificate and key.
pub struct FleetCa {
    cert: Certificate,
    key: KeyPair,
    pem: String,
}

impl std::fmt::Debug for FleetCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FleetCa").finish_non_exhaustive()
    }
}

impl FleetCa {
    /// A new CA with a new key.
    pub fn generate() -> Result<Self, Error> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::OrganizationName, "Aperture");
        dn.push(DnType::CommonName, "Aperture fleet CA");
        params.distinguished_name = dn;
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        params.serial_number = Some(random_serial());
        validity(&mut params, 3650);
        let cert = params.self_signed(&key)?;
        let pem = cert.pem();
        Ok(FleetCa { cert, key, pem })
    }

    /// The CA from its certificate and key (PEM). rcgen signs with an issuer *object*, so the
    /// certificate's parameters are read back (subject and key identifier exactly as issued)
    /// and signed again in memory; what clients trust stays the original `cert_pem`.
    pub fn load(cert_pem: &str, key_pem: &str) -> Result<Self, Error> {
        let key = KeyPair::from_pem(key_pem)?;
        let params = CertificateParams::from_ca_cert_pem(cert_pem)?;
        let cert = params.self_signed(&key)?;
        Ok(FleetCa {
            cert,
            key,
            pem: cert_pem.to_string(),
        })
    }

    /// The CA certificate, PEM.
    pub fn pem(&self) -> &str {
        &self.pem
    }

    /// The CA key, PEM (PKCS#8).
    pub fn key_pem(&self) -> String {
        self.key.serialize_pem()
    }

    /// A new key and a certificate for the server, valid for `names` (IP addresses or DNS
    /// names); returns (certificate PEM, key PEM).
    pub fn server_cert(&self, names: &[String]) -> Result<(String, String), Error> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::default();
        for name in names {
            let san = match name.parse::<IpAddr>() {
                Ok(ip) => SanType::IpAddress(ip),
                Err(_) => SanType::DnsName(
                    name.clone()
                        .try_into()
                        .map_err(|_| Error::BadName(name.clone()))?,
                ),
            };
            params.subject_alt_names.push(san);
        }
        let mut dn = DistinguishedName::new();
        dn.push(
            DnType::CommonName,
            names.first().map_or("aperture-fleet", |n| n.as_str()),
        );
        params.distinguished_name = dn;
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.use_authority_key_identifier_extension = true;
        params.serial_number = Some(random_serial());
        // 825 days: the longest lifetime clients commonly accept for a server certificate.
        validity(&mut params, 825);
        let cert = params.signed_by(&key, &self.cert, &self.key)?;
        Ok((cert.pem(), key.serialize_pem()))
    }

    /// Check a device's CSR and issue its certificate for `device_id`; returns (PEM, DER).
    pub fn sign_device(&self, csr_pem: &str, device_id: &str) -> Result<(String, Vec<u8>), Error> {
        let csr = CertificateSigningRequestParams::from_pem(csr_pem).map_err(Error::BadCsr)?;
        // Only the public key comes from the device; everything else is ours.
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::OrganizationName, "Aperture fleet");
        dn.push(DnType::CommonName, device_id);
        params.distinguished_name = dn;
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.use_authority_key_identifier_extension = true;
        params.serial_number = Some(random_serial());
        validity(&mut params, 3650);
        let csr = CertificateSigningRequestParams {
            params,
            public_key: csr.public_key,
        };
        let cert = csr.signed_by(&self.cert, &self.key)?;
        Ok((cert.pem(), cert.der().to_vec()))
    }
}

/// The SHA-256 (hex) of the public key a CSR carries: how the server recognises the key that
/// used an enrollment token when the same appliance asks again (an enrollment cut short).
pub fn csr_public_key_sha256(csr_pem: &str) -> Result<String, Error> {
    use rcgen::PublicKeyData;
    let csr = CertificateSigningRequestParams::from_pem(csr_pem).map_err(Error::BadCsr)?;
    Ok(hex::encode(Sha256::digest(csr.public_key.der_bytes())))
}

/// The server's identity as loaded from its folder (PEM texts).
#[derive(Clone)]
pub struct Identity {
    /// The fleet CA certificate.
    pub ca_pem: String,
    /// The fleet CA key.
    pub ca_key_pem: String,
    /// The server's certificate.
    pub server_pem: String,
    /// The server's key.
    pub server_key_pem: String,
}

impl std::fmt::Debug for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Identity").finish_non_exhaustive()
    }
}

fn read(path: PathBuf) -> Result<String, Error> {
    fs::read_to_string(&path).map_err(|err| Error::Io { path, err })
}

/// Write a new file (never over an existing one), `mode` from the start.
fn write_new(path: PathBuf, text: &str, mode: u32) -> Result<(), Error> {
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&path)
        .map_err(|err| Error::Io {
            path: path.clone(),
            err,
        })?;
    f.write_all(text.as_bytes())
        .and_then(|()| f.sync_all())
        .map_err(|err| Error::Io { path, err })
}

impl Identity {
    /// The CA certificate's path in an identity folder.
    pub fn ca_path(dir: &Path) -> PathBuf {
        dir.join("ca.pem")
    }

    /// Load an identity folder.
    pub fn load(dir: &Path) -> Result<Self, Error> {
        Ok(Identity {
            ca_pem: read(dir.join("ca.pem"))?,
            ca_key_pem: read(dir.join("ca.key"))?,
            server_pem: read(dir.join("server.pem"))?,
            server_key_pem: read(dir.join("server.key"))?,
        })
    }

    /// Make what is missing of an identity folder: the CA (unless `ca.pem` is there) and the
    /// server's certificate for `names` (unless `server.pem` is there). Returns the identity and
    /// whether anything was made.
    pub fn init(dir: &Path, names: &[String]) -> Result<(Self, bool), Error> {
        fs::create_dir_all(dir).map_err(|err| Error::Io {
            path: dir.to_path_buf(),
            err,
        })?;
        let mut made = false;
        let ca = if dir.join("ca.pem").exists() {
            FleetCa::load(&read(dir.join("ca.pem"))?, &read(dir.join("ca.key"))?)?
        } else {
            let ca = FleetCa::generate()?;
            write_new(dir.join("ca.key"), &ca.key_pem(), 0o600)?;
            write_new(dir.join("ca.pem"), ca.pem(), 0o644)?;
            made = true;
            ca
        };
        if !dir.join("server.pem").exists() {
            let (cert, key) = ca.server_cert(names)?;
            write_new(dir.join("server.key"), &key, 0o600)?;
            write_new(dir.join("server.pem"), &cert, 0o644)?;
            made = true;
        }
        Ok((Self::load(dir)?, made))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_loaded_ca_issues_what_the_original_would() {
        let ca = FleetCa::generate().unwrap();
        let loaded = FleetCa::load(ca.pem(), &ca.key_pem()).unwrap();
        let device_key = KeyPair::generate().unwrap();
        let csr = CertificateParams::new(vec![])
            .unwrap()
            .serialize_request(&device_key)
            .unwrap()
            .pem()
            .unwrap();
        let (pem, der) = loaded.sign_device(&csr, "dev-0123").unwrap();
        assert!(pem.contains("BEGIN CERTIFICATE"));
        assert_eq!(fingerprint(&der).len(), 64);
        // That devices' certificates chain to the CA on disk is what the server tests prove:
        // the server loads its CA this way and devices then pass mutual TLS.
    }

    #[test]
    fn a_garbled_csr_is_refused() {
        let ca = FleetCa::generate().unwrap();
        assert!(matches!(
            ca.sign_device("not a csr", "dev-1"),
            Err(Error::BadCsr(_))
        ));
    }

    #[test]
    fn init_makes_the_folder_once() {
        let dir = tempfile::tempdir().unwrap();
        let names = vec!["127.0.0.1".to_string(), "fleet.example".to_string()];
        let (first, made) = Identity::init(dir.path(), &names).unwrap();
        assert!(made);
        let (second, made) = Identity::init(dir.path(), &names).unwrap();
        assert!(!made);
        assert_eq!(first.ca_pem, second.ca_pem);
        use std::os::unix::fs::PermissionsExt;
        let mode = fs::metadata(dir.path().join("ca.key"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }
}
