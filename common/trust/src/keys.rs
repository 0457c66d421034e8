//! Ed25519 keys, their ids, and their JSON key files.
//!
//! A key id is the hex of the first 8 bytes of sha256(public key bytes). Key files are small
//! JSON documents with a `type` tag so that a public key can never be loaded where a secret key
//! is expected, or the other way round:
//!
//! ```json
//! {"type":"aperture-ed25519-secret","key_id":"1a2b3c4d5e6f7081","secret":"<64 hex>"}
//! {"type":"aperture-ed25519-public","key_id":"1a2b3c4d5e6f7081","public":"<64 hex>"}
//! ```
//!
//! Secret key files are created with mode 0600 and never overwritten; loading one that other
//! users can read is refused, as ssh does.

use ed25519_dalek::{Signer, SigningKey, VerifyingKey};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::Path;
use std::str::FromStr;

pub use crate::keyring::{Keyring, KeyringEntry, SignedKeyring, KEYRING_FORMAT};
use crate::TrustError;

const SECRET_TYPE: &str = "aperture-ed25519-secret";
const PUBLIC_TYPE: &str = "aperture-ed25519-public";

/// The id of a public key: 16 lowercase hex characters, the first 8 bytes of sha256(key).
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct KeyId(String);

impl KeyId {
    /// The id of `public`.
    pub fn of(public: &VerifyingKey) -> Self {
        let digest = Sha256::digest(public.as_bytes());
        KeyId(hex::encode(&digest[..8]))
    }

    /// The hex text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for KeyId {
    type Err = TrustError;

    fn from_str(s: &str) -> Result<Self, TrustError> {
        if s.len() == 16 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
            Ok(KeyId(s.to_owned()))
        } else {
            Err(TrustError::malformed(
                format!("key id {s:?}"),
                "expected 16 lowercase hex characters",
            ))
        }
    }
}

impl TryFrom<String> for KeyId {
    type Error = TrustError;

    fn try_from(s: String) -> Result<Self, TrustError> {
        s.parse()
    }
}

impl From<KeyId> for String {
    fn from(k: KeyId) -> String {
        k.0
    }
}

impl fmt::Display for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "KeyId({})", self.0)
    }
}

/// An ed25519 public key. Serializes as 64 lowercase hex characters.
#[derive(Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct PublicKey(VerifyingKey);

impl PublicKey {
    /// Parses 32 raw key bytes; refuses bytes that are not a valid curve point.
    pub fn from_bytes(bytes: &[u8; 32]) -> Result<Self, TrustError> {
        VerifyingKey::from_bytes(bytes)
            .map(PublicKey)
            .map_err(|e| TrustError::malformed("ed25519 public key", e))
    }

    /// Parses 64 hex characters.
    pub fn from_hex(text: &str) -> Result<Self, TrustError> {
        let mut bytes = [0u8; 32];
        hex::decode_to_slice(text, &mut bytes).map_err(|e| {
            TrustError::malformed(
                "ed25519 public key",
                format!("{e}: expected 64 hex characters"),
            )
        })?;
        Self::from_bytes(&bytes)
    }

    /// The raw key bytes.
    pub fn to_bytes(&self) -> [u8; 32] {
        self.0.to_bytes()
    }

    /// The key bytes as lowercase hex.
    pub fn to_hex(&self) -> String {
        hex::encode(self.0.as_bytes())
    }

    /// This key's id.
    pub fn key_id(&self) -> KeyId {
        KeyId::of(&self.0)
    }

    /// Checks `signature` over `message`, strictly (no malleable or small-order forms).
    /// `what` names the signed object in the error.
    pub fn verify(
        &self,
        message: &[u8],
        signature: &[u8; 64],
        what: &str,
    ) -> Result<(), TrustError> {
        let sig = ed25519_dalek::Signature::from_bytes(signature);
        self.0
            .verify_strict(message, &sig)
            .map_err(|_| TrustError::BadSignature { what: what.into() })
    }

    /// Checks a signature given as 128 hex characters; malformed hex is a bad signature.
    pub(crate) fn verify_hex(
        &self,
        message: &[u8],
        signature: &str,
        what: &str,
    ) -> Result<(), TrustError> {
        let sig = decode_signature(signature, what)?;
        self.verify(message, &sig, what)
    }

    /// Loads a public key file, checking its type and key id. Errors name the path.
    pub fn load(path: &Path) -> Result<Self, TrustError> {
        let file: PublicKeyFile = read_json(path)?;
        if file.kind != PUBLIC_TYPE {
            return Err(wrong_type(path, &file.kind, PUBLIC_TYPE));
        }
        let key = PublicKey::from_hex(&file.public).map_err(|e| in_file(path, e))?;
        check_key_id(path, &file.key_id, &key.key_id())?;
        Ok(key)
    }

    /// Writes a public key file (temporary file and rename, so readers never see half a file).
    pub fn save(&self, path: &Path) -> Result<(), TrustError> {
        let file = PublicKeyFile {
            kind: PUBLIC_TYPE.into(),
            key_id: self.key_id(),
            public: self.to_hex(),
        };
        let tmp = path.with_extension("tmp");
        let mut out = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(&tmp)
            .map_err(|e| TrustError::io(format!("creating {}", tmp.display()), e))?;
        write_json(&mut out, &file, &tmp)?;
        fs::rename(&tmp, path).map_err(|e| {
            TrustError::io(
                format!("renaming {} to {}", tmp.display(), path.display()),
                e,
            )
        })
    }
}

impl TryFrom<String> for PublicKey {
    type Error = TrustError;

    fn try_from(s: String) -> Result<Self, TrustError> {
        PublicKey::from_hex(&s)
    }
}

impl From<PublicKey> for String {
    fn from(k: PublicKey) -> String {
        k.to_hex()
    }
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey({})", self.key_id())
    }
}

/// An ed25519 signing key (secret and public half). Its `Debug` output shows only the key id;
/// the secret bytes are wiped from memory on drop (ed25519-dalek's `zeroize`).
#[derive(Clone)]
pub struct SigningKeyPair(SigningKey);

/// Another name for [`SigningKeyPair`].
pub type SecretKey = SigningKeyPair;

impl SigningKeyPair {
    /// Generates a new key from the operating system's random source.
    pub fn generate() -> Result<Self, TrustError> {
        let mut secret = [0u8; 32];
        getrandom::getrandom(&mut secret).map_err(|e| {
            TrustError::io(
                "reading the system random source to generate a key",
                std::io::Error::other(e.to_string()),
            )
        })?;
        let key = SigningKey::from_bytes(&secret);
        secret.fill(0);
        Ok(SigningKeyPair(key))
    }

    /// A key from 32 secret bytes. For tests and for keys held elsewhere.
    pub fn from_secret_bytes(secret: &[u8; 32]) -> Self {
        SigningKeyPair(SigningKey::from_bytes(secret))
    }

    /// The public half.
    pub fn public(&self) -> PublicKey {
        PublicKey(self.0.verifying_key())
    }

    /// The id of the public half.
    pub fn key_id(&self) -> KeyId {
        self.public().key_id()
    }

    /// Signs `message`.
    pub fn sign(&self, message: &[u8]) -> [u8; 64] {
        self.0.sign(message).to_bytes()
    }

    /// Loads a secret key file: refuses files readable by group or others, checks type and key
    /// id. Errors name the path.
    pub fn load(path: &Path) -> Result<Self, TrustError> {
        check_private_mode(path)?;
        let file: SecretKeyFile = read_json(path)?;
        if file.kind != SECRET_TYPE {
            return Err(wrong_type(path, &file.kind, SECRET_TYPE));
        }
        let mut secret = [0u8; 32];
        hex::decode_to_slice(&file.secret, &mut secret).map_err(|e| {
            TrustError::malformed(
                format!("secret key {}", path.display()),
                format!("{e}: expected 64 hex characters"),
            )
        })?;
        let key = Self::from_secret_bytes(&secret);
        secret.fill(0);
        check_key_id(path, &file.key_id, &key.key_id())?;
        Ok(key)
    }

    /// Writes a secret key file with mode 0600. Refuses to overwrite an existing file: losing a
    /// release key is worse than a failed command.
    pub fn save(&self, path: &Path) -> Result<(), TrustError> {
        let file = SecretKeyFile {
            kind: SECRET_TYPE.into(),
            key_id: self.key_id(),
            secret: hex::encode(self.0.to_bytes()),
        };
        let mut options = OpenOptions::new();
        // create_new: never follow a planted symlink, never clobber a key.
        options.write(true).create_new(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            options.mode(0o600);
        }
        let mut out = options.open(path).map_err(|e| {
            TrustError::io(
                format!(
                    "creating secret key {} (remove it first to replace it)",
                    path.display()
                ),
                e,
            )
        })?;
        if let Err(e) = write_json(&mut out, &file, path) {
            let _ = fs::remove_file(path);
            return Err(e);
        }
        Ok(())
    }
}

impl fmt::Debug for SigningKeyPair {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SigningKeyPair({})", self.key_id())
    }
}

/// Decodes a 128-hex-character signature; anything else is a bad signature on `what`.
pub(crate) fn decode_signature(text: &str, what: &str) -> Result<[u8; 64], TrustError> {
    let mut sig = [0u8; 64];
    hex::decode_to_slice(text, &mut sig)
        .map_err(|_| TrustError::BadSignature { what: what.into() })?;
    Ok(sig)
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct SecretKeyFile {
    #[serde(rename = "type")]
    kind: String,
    key_id: KeyId,
    secret: String,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct PublicKeyFile {
    #[serde(rename = "type")]
    kind: String,
    key_id: KeyId,
    public: String,
}

fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T, TrustError> {
    let bytes =
        fs::read(path).map_err(|e| TrustError::io(format!("reading key {}", path.display()), e))?;
    serde_json::from_slice(&bytes)
        .map_err(|e| TrustError::malformed(format!("key file {}", path.display()), e))
}

fn write_json<T: Serialize>(out: &mut File, value: &T, path: &Path) -> Result<(), TrustError> {
    let mut bytes = serde_json::to_vec_pretty(value)
        .map_err(|e| TrustError::malformed(format!("key file {}", path.display()), e))?;
    bytes.push(b'\n');
    out.write_all(&bytes)
        .and_then(|()| out.sync_all())
        .map_err(|e| TrustError::io(format!("writing {}", path.display()), e))
}

fn wrong_type(path: &Path, found: &str, expected: &str) -> TrustError {
    TrustError::malformed(
        format!("key file {}", path.display()),
        format!(
            "type is {found:?} but {expected:?} is needed here; pass the other file of the pair"
        ),
    )
}

fn in_file(path: &Path, err: TrustError) -> TrustError {
    TrustError::malformed(format!("key file {}", path.display()), err)
}

fn check_key_id(path: &Path, stated: &KeyId, actual: &KeyId) -> Result<(), TrustError> {
    if stated == actual {
        return Ok(());
    }
    Err(TrustError::malformed(
        format!("key file {}", path.display()),
        format!("it says key_id {stated} but the key's id is {actual}; the file was edited, regenerate it"),
    ))
}

#[cfg(unix)]
fn check_private_mode(path: &Path) -> Result<(), TrustError> {
    use std::os::unix::fs::PermissionsExt;
    let meta = fs::metadata(path)
        .map_err(|e| TrustError::io(format!("reading key {}", path.display()), e))?;
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(TrustError::InsecurePermissions {
            path: path.display().to_string(),
            mode,
        });
    }
    Ok(())
}

#[cfg(not(unix))]
fn check_private_mode(_path: &Path) -> Result<(), TrustError> {
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The snakeoil key: a fixed secret so ids and signatures are stable across runs.
    fn snakeoil() -> SigningKeyPair {
        SigningKeyPair::from_secret_bytes(&[7u8; 32])
    }

    #[test]
    fn key_id_is_first_8_bytes_of_sha256() {
        let key = snakeoil();
        let expected = hex::encode(&Sha256::digest(key.public().to_bytes())[..8]);
        assert_eq!(key.key_id().as_str(), expected);
        assert_eq!(key.key_id(), key.public().key_id());
    }

    #[test]
    fn key_id_parse_validates() {
        assert!("0123456789abcdef".parse::<KeyId>().is_ok());
        for bad in [
            "0123456789ABCDEF",
            "0123456789abcde",
            "0123456789abcdef0",
            "0123456789abcdeg",
            "",
        ] {
            assert!(bad.parse::<KeyId>().is_err(), "{bad}");
            assert!(
                serde_json::from_str::<KeyId>(&format!("\"{bad}\"")).is_err(),
                "{bad}"
            );
        }
    }

    #[test]
    fn sign_and_verify() {
        let key = snakeoil();
        let sig = key.sign(b"hello");
        key.public().verify(b"hello", &sig, "test").unwrap();
        let err = key.public().verify(b"hellO", &sig, "test").unwrap_err();
        assert!(matches!(err, TrustError::BadSignature { ref what } if what == "test"));
        let other = SigningKeyPair::generate().unwrap();
        assert!(other.public().verify(b"hello", &sig, "test").is_err());
        assert!(key.public().verify_hex(b"hello", "zz", "test").is_err());
        key.public()
            .verify_hex(b"hello", &hex::encode(sig), "test")
            .unwrap();
    }

    #[test]
    fn generate_gives_distinct_keys() {
        let a = SigningKeyPair::generate().unwrap();
        let b = SigningKeyPair::generate().unwrap();
        assert_ne!(a.key_id(), b.key_id());
    }

    #[test]
    fn public_key_serde_is_hex() {
        let key = snakeoil().public();
        let json = serde_json::to_string(&key).unwrap();
        assert_eq!(json, format!("\"{}\"", key.to_hex()));
        let back: PublicKey = serde_json::from_str(&json).unwrap();
        assert_eq!(back, key);
        assert!(serde_json::from_str::<PublicKey>("\"abcd\"").is_err());
    }

    #[test]
    fn debug_does_not_leak_secret() {
        let key = snakeoil();
        let text = format!("{key:?}");
        assert!(!text.contains(&hex::encode([7u8; 32])));
        assert!(text.contains(key.key_id().as_str()));
    }

    #[test]
    fn key_files_round_trip_with_private_mode() {
        let dir = tempfile::tempdir().unwrap();
        let key = snakeoil();
        let secret_path = dir.path().join("snakeoil.key");
        let public_path = dir.path().join("snakeoil.pub");
        key.save(&secret_path).unwrap();
        key.public().save(&public_path).unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = fs::metadata(&secret_path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        let loaded = SigningKeyPair::load(&secret_path).unwrap();
        assert_eq!(loaded.key_id(), key.key_id());
        assert_eq!(PublicKey::load(&public_path).unwrap(), key.public());
        let text = fs::read_to_string(&secret_path).unwrap();
        assert!(text.contains(SECRET_TYPE) && text.contains(key.key_id().as_str()));
        // Public files may be replaced; secret files may not.
        key.public().save(&public_path).unwrap();
        let err = key.save(&secret_path).unwrap_err();
        assert!(err.to_string().contains("snakeoil.key"), "{err}");
    }

    #[test]
    fn loading_checks_type_and_key_id() {
        let dir = tempfile::tempdir().unwrap();
        let key = snakeoil();
        let public_path = dir.path().join("k.pub");
        key.public().save(&public_path).unwrap();
        // A public key file is not a secret key.
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            fs::set_permissions(&public_path, fs::Permissions::from_mode(0o600)).unwrap();
        }
        let err = SigningKeyPair::load(&public_path).unwrap_err();
        assert!(err.to_string().contains("k.pub"), "{err}");
        // An edited key id is caught.
        let text = fs::read_to_string(&public_path).unwrap();
        let edited = text.replace(key.key_id().as_str(), "0000000000000000");
        fs::write(&public_path, edited).unwrap();
        let err = PublicKey::load(&public_path).unwrap_err();
        assert!(err.to_string().contains("key_id 0000000000000000"), "{err}");
        // Missing file names the path.
        let err = PublicKey::load(&dir.path().join("nope.pub")).unwrap_err();
        assert!(err.to_string().contains("nope.pub"), "{err}");
    }

    #[cfg(unix)]
    #[test]
    fn world_readable_secret_is_refused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("open.key");
        snakeoil().save(&path).unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
        let err = SigningKeyPair::load(&path).unwrap_err();
        assert!(
            matches!(err, TrustError::InsecurePermissions { mode: 0o644, .. }),
            "{err}"
        );
        assert!(err.to_string().contains("chmod 600"), "{err}");
    }
}
