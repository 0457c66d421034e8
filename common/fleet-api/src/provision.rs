//! The provisioning archive: what an appliance takes its first fleet configuration from (a USB
//! stick, or the ESP's `aperture/provision/`), as `aperture-fleet provision` writes it.
//!
//! An archive is a folder of small files:
//!
//! | file | what |
//! |---|---|
//! | `fleet.toml` | `url = "https://fleet.example:8443"`: the fleet server (https only) |
//! | `ca.pem` | the fleet CA certificate(s), PEM: the only CA the device trusts for the fleet |
//! | `token` | the one-time enrollment token (`apf-enroll-` and 43 base64url characters) |
//! | `network.toml` | optional network settings ([`Network`]) |
//!
//! Every file is bounded ([`MAX_FILE`], the CA [`MAX_CA`]) and read whole before it is parsed;
//! unknown keys are errors; the error names the file. The token is a secret: archives are
//! written 0700/0600, [`Token`]'s `Debug` hides it, and the device erases the archive once it
//! enrolled.

use std::fs;
use std::io::{self, Read, Write};
use std::net::IpAddr;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use url::Url;

/// The archive's fleet settings file.
pub const FLEET_TOML: &str = "fleet.toml";
/// The archive's CA file.
pub const CA_PEM: &str = "ca.pem";
/// The archive's token file.
pub const TOKEN: &str = "token";
/// The archive's optional network settings.
pub const NETWORK_TOML: &str = "network.toml";
/// Every file an archive may hold (what the device erases).
pub const FILES: [&str; 4] = [FLEET_TOML, CA_PEM, TOKEN, NETWORK_TOML];

/// Largest `fleet.toml`, `token` or `network.toml` (bytes).
pub const MAX_FILE: u64 = 4 * 1024;
/// Largest `ca.pem` (bytes): a CA and an intermediate or two.
pub const MAX_CA: u64 = 64 * 1024;

/// The prefix of enrollment tokens (the server makes them: `aperture_fleet::token`).
pub const ENROLL_TOKEN_PREFIX: &str = "apf-enroll-";
/// Characters after the prefix: 32 random bytes in base64url without padding.
pub const ENROLL_TOKEN_CHARS: usize = 43;

/// What is wrong with an archive; each names the file.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ArchiveError {
    /// A required file is missing.
    #[error("{}: missing (a provisioning archive holds fleet.toml, ca.pem and token)", path.display())]
    Missing {
        /// The file.
        path: PathBuf,
    },
    /// A file could not be read or written.
    #[error("{op} {}", path.display())]
    Io {
        /// What was done.
        op: &'static str,
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        err: io::Error,
    },
    /// A file is larger than its bound.
    #[error("{}: larger than {max} bytes", path.display())]
    TooLarge {
        /// The file.
        path: PathBuf,
        /// Its bound.
        max: u64,
    },
    /// A TOML file does not parse, or has unknown keys.
    #[error("{}", path.display())]
    Toml {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        err: toml::de::Error,
    },
    /// The fleet URL is not an https URL with a host.
    #[error("{}: the fleet URL {url:?} {why}", path.display())]
    Url {
        /// The file.
        path: PathBuf,
        /// The URL as written.
        url: String,
        /// What is wrong.
        why: String,
    },
    /// `ca.pem` holds no certificate, or one that does not parse.
    #[error("{}: not a CA certificate (PEM)", path.display())]
    Ca {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        err: crate::tls::TlsError,
    },
    /// The token is malformed.
    #[error("{}: not an enrollment token: {why}", path.display())]
    Token {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        why: String,
    },
    /// A network setting is malformed.
    #[error("{}: {why}", path.display())]
    Network {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        why: String,
    },
}

/// `fleet.toml`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FleetFile {
    /// The fleet server's URL (`https://HOST[:PORT]`).
    pub url: String,
}

/// `network.toml`: settings the appliance applies before it enrolls. All optional.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Network {
    /// The appliance's host name.
    #[serde(default)]
    pub hostname: Option<String>,
    /// A static address with its prefix (`192.0.2.10/24`); none: DHCP.
    #[serde(default)]
    pub address: Option<String>,
    /// The default gateway.
    #[serde(default)]
    pub gateway: Option<IpAddr>,
    /// DNS servers (at most 4).
    #[serde(default)]
    pub dns: Vec<IpAddr>,
}

impl Network {
    /// Check the settings (what [`Archive::read`] does with `network.toml`): a host name of
    /// RFC 1123 characters, an ADDRESS/PREFIX, at most 4 DNS servers.
    pub fn check(&self) -> Result<(), String> {
        if let Some(h) = &self.hostname {
            let ok = !h.is_empty()
                && h.len() <= 63
                && h.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                && !h.starts_with('-');
            if !ok {
                return Err(format!("hostname {h:?}: 1 to 63 of a-z 0-9 - (RFC 1123)"));
            }
        }
        if let Some(a) = &self.address {
            let bad = || format!("address {a:?}: expected ADDRESS/PREFIX, as 192.0.2.10/24");
            let (ip, prefix) = a.split_once('/').ok_or_else(bad)?;
            let ip: IpAddr = ip.parse().map_err(|_| bad())?;
            let prefix: u8 = prefix.parse().map_err(|_| bad())?;
            if prefix > if ip.is_ipv4() { 32 } else { 128 } {
                return Err(bad());
            }
        }
        if self.dns.len() > 4 {
            return Err(format!("dns: {} servers, at most 4", self.dns.len()));
        }
        Ok(())
    }
}

/// A well-formed enrollment token. Its `Debug` does not show it.
#[derive(Clone, PartialEq, Eq)]
pub struct Token(String);

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Token(<hidden>)")
    }
}

impl Token {
    /// Check a token's form: the prefix and 43 base64url characters (surrounding white space,
    /// such as a file's final newline, is ignored).
    pub fn parse(text: &str) -> Result<Token, String> {
        let t = text.trim();
        let Some(rest) = t.strip_prefix(ENROLL_TOKEN_PREFIX) else {
            return Err(format!("it does not start with {ENROLL_TOKEN_PREFIX}"));
        };
        if rest.len() != ENROLL_TOKEN_CHARS
            || !rest
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return Err(format!(
                "expected {ENROLL_TOKEN_PREFIX} and {ENROLL_TOKEN_CHARS} base64url characters"
            ));
        }
        Ok(Token(t.to_string()))
    }

    /// The secret itself.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

/// A provisioning archive, checked.
#[derive(Debug, Clone)]
pub struct Archive {
    /// The fleet server (https).
    pub url: Url,
    /// The fleet CA, PEM (checked to hold certificates).
    pub ca_pem: String,
    /// The one-time enrollment token.
    pub token: Token,
    /// Network settings, if the archive has them.
    pub network: Option<Network>,
}

/// Read `path` whole, at most `max` bytes; `Ok(None)` when it does not exist.
fn read_bounded(path: &Path, max: u64) -> Result<Option<String>, ArchiveError> {
    let fail = |op| {
        move |err| ArchiveError::Io {
            op,
            path: path.to_path_buf(),
            err,
        }
    };
    let file = match fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(fail("opening")(e)),
    };
    let mut bytes = Vec::new();
    file.take(max + 1)
        .read_to_end(&mut bytes)
        .map_err(fail("reading"))?;
    if bytes.len() as u64 > max {
        return Err(ArchiveError::TooLarge {
            path: path.to_path_buf(),
            max,
        });
    }
    String::from_utf8(bytes)
        .map(Some)
        .map_err(|e| fail("reading")(io::Error::new(io::ErrorKind::InvalidData, e.utf8_error())))
}

fn required(path: &Path, max: u64) -> Result<String, ArchiveError> {
    read_bounded(path, max)?.ok_or_else(|| ArchiveError::Missing {
        path: path.to_path_buf(),
    })
}

/// Check a fleet URL: https, with a host, nothing after the origin but an optional `/`.
pub fn check_url(text: &str) -> Result<Url, String> {
    let url = Url::parse(text.trim()).map_err(|e| format!("does not parse: {e}"))?;
    if url.scheme() != "https" {
        return Err("is not https://".into());
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err("has no host".into());
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err("holds credentials".into());
    }
    if url.path() != "/" || url.query().is_some() || url.fragment().is_some() {
        return Err("must be https://HOST[:PORT] only".into());
    }
    Ok(url)
}

impl Archive {
    /// Read and check the archive in folder `dir`.
    pub fn read(dir: &Path) -> Result<Archive, ArchiveError> {
        let path = dir.join(FLEET_TOML);
        let text = required(&path, MAX_FILE)?;
        let fleet: FleetFile = toml::from_str(&text).map_err(|err| ArchiveError::Toml {
            path: path.clone(),
            err,
        })?;
        let url = check_url(&fleet.url).map_err(|why| ArchiveError::Url {
            path,
            url: fleet.url.clone(),
            why,
        })?;

        let path = dir.join(CA_PEM);
        let ca_pem = required(&path, MAX_CA)?;
        crate::tls::roots(&ca_pem).map_err(|err| ArchiveError::Ca { path, err })?;

        let path = dir.join(TOKEN);
        let token = Token::parse(&required(&path, MAX_FILE)?)
            .map_err(|why| ArchiveError::Token { path, why })?;

        let path = dir.join(NETWORK_TOML);
        let network = match read_bounded(&path, MAX_FILE)? {
            None => None,
            Some(text) => {
                let n: Network = toml::from_str(&text).map_err(|err| ArchiveError::Toml {
                    path: path.clone(),
                    err,
                })?;
                n.check()
                    .map_err(|why| ArchiveError::Network { path, why })?;
                Some(n)
            }
        };
        Ok(Archive {
            url,
            ca_pem,
            token,
            network,
        })
    }

    /// Write the archive into `dir`, which must not exist yet (made 0700; files 0600, never
    /// over an existing file).
    pub fn write(&self, dir: &Path) -> Result<(), ArchiveError> {
        fs::DirBuilder::new()
            .mode(0o700)
            .create(dir)
            .map_err(|err| ArchiveError::Io {
                op: "creating",
                path: dir.to_path_buf(),
                err,
            })?;
        let fleet = FleetFile {
            url: self.url.as_str().trim_end_matches('/').to_string(),
        };
        let mut files = vec![
            (
                FLEET_TOML,
                toml::to_string(&fleet).expect("fleet.toml serialises"),
            ),
            (CA_PEM, self.ca_pem.clone()),
            (TOKEN, format!("{}\n", self.token.expose())),
        ];
        if let Some(n) = &self.network {
            files.push((
                NETWORK_TOML,
                toml::to_string(n).expect("network.toml serialises"),
            ));
        }
        for (name, text) in files {
            let path = dir.join(name);
            fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&path)
                .and_then(|mut f| {
                    f.write_all(text.as_bytes())?;
                    f.sync_all()
                })
                .map_err(|err| ArchiveError::Io {
                    op: "writing",
                    path,
                    err,
                })?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ca_pem() -> String {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let key = rcgen::KeyPair::generate().unwrap();
        params.self_signed(&key).unwrap().pem()
    }

    fn token() -> Token {
        Token::parse(&format!("{ENROLL_TOKEN_PREFIX}{}", "A".repeat(43))).unwrap()
    }

    fn archive() -> Archive {
        Archive {
            url: Url::parse("https://fleet.example:8443").unwrap(),
            ca_pem: ca_pem(),
            token: token(),
            network: Some(Network {
                hostname: Some("cam-7".into()),
                address: Some("192.0.2.10/24".into()),
                gateway: Some("192.0.2.1".parse().unwrap()),
                dns: vec!["192.0.2.53".parse().unwrap()],
            }),
        }
    }

    fn written() -> (tempfile::TempDir, PathBuf) {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("1");
        archive().write(&dir).unwrap();
        (tmp, dir)
    }

    fn error_of(dir: &Path) -> String {
        format!("{}", Archive::read(dir).unwrap_err())
    }

    #[test]
    fn an_archive_round_trips_with_private_modes() {
        use std::os::unix::fs::PermissionsExt;
        let (_tmp, dir) = written();
        let a = Archive::read(&dir).unwrap();
        assert_eq!(a.url.as_str(), "https://fleet.example:8443/");
        assert_eq!(a.token, token());
        assert_eq!(a.network, archive().network);
        let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&dir), 0o700);
        for f in [FLEET_TOML, CA_PEM, TOKEN, NETWORK_TOML] {
            assert_eq!(mode(&dir.join(f)), 0o600, "{f}");
        }
        assert!(!format!("{a:?}").contains("AAAA"), "Debug shows the token");
        // Never over an existing archive.
        assert!(archive().write(&dir).is_err());
    }

    #[test]
    fn a_missing_file_is_named() {
        for f in [FLEET_TOML, CA_PEM, TOKEN] {
            let (_tmp, dir) = written();
            fs::remove_file(dir.join(f)).unwrap();
            let e = error_of(&dir);
            assert!(e.contains(f) && e.contains("missing"), "{e}");
        }
        let (_tmp, dir) = written();
        fs::remove_file(dir.join(NETWORK_TOML)).unwrap();
        assert_eq!(Archive::read(&dir).unwrap().network, None);
    }

    #[test]
    fn a_url_that_is_not_https_is_refused() {
        for url in [
            "http://fleet.example",
            "file:///etc",
            "https://u:p@fleet.example",
            "https://fleet.example/v1?x=1",
            "fleet.example",
        ] {
            let (_tmp, dir) = written();
            fs::write(dir.join(FLEET_TOML), format!("url = {url:?}\n")).unwrap();
            let e = error_of(&dir);
            assert!(
                e.contains("fleet.toml") && e.contains("the fleet URL"),
                "{e}"
            );
        }
        let (_tmp, dir) = written();
        fs::write(dir.join(FLEET_TOML), "url = \"https://a\"\nextra = 1\n").unwrap();
        assert!(error_of(&dir).contains("fleet.toml"));
    }

    #[test]
    fn a_ca_that_is_not_a_certificate_is_refused() {
        for text in [
            "",
            "not pem",
            "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
        ] {
            let (_tmp, dir) = written();
            fs::write(dir.join(CA_PEM), text).unwrap();
            let e = error_of(&dir);
            assert!(e.contains("ca.pem: not a CA certificate"), "{e}");
        }
    }

    #[test]
    fn malformed_tokens_are_refused() {
        for text in [
            "",
            "apf-admin-AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
            "apf-enroll-short",
            &format!("{ENROLL_TOKEN_PREFIX}{}", "A/".repeat(21) + "A"),
        ] {
            let (_tmp, dir) = written();
            fs::write(dir.join(TOKEN), text).unwrap();
            let e = error_of(&dir);
            assert!(e.contains("token: not an enrollment token"), "{e}");
        }
    }

    #[test]
    fn oversized_files_are_refused() {
        let (_tmp, dir) = written();
        fs::write(dir.join(TOKEN), "A".repeat(MAX_FILE as usize + 1)).unwrap();
        assert!(error_of(&dir).contains("larger than 4096 bytes"));
        let (_tmp, dir) = written();
        fs::write(dir.join(CA_PEM), "A".repeat(MAX_CA as usize + 1)).unwrap();
        assert!(error_of(&dir).contains("ca.pem: larger than"));
    }

    #[test]
    fn bad_network_settings_are_named() {
        for text in [
            "address = \"192.0.2.10\"\n",
            "address = \"192.0.2.10/33\"\n",
            "hostname = \"a b\"\n",
            "gateway = \"not-an-ip\"\n",
            "mtu = 9000\n",
        ] {
            let (_tmp, dir) = written();
            fs::write(dir.join(NETWORK_TOML), text).unwrap();
            let e = error_of(&dir);
            assert!(e.contains("network.toml"), "{text}: {e}");
        }
    }
}
