//! Where the device's fleet key (its ECDSA P-256 private key, PEM) is kept (issue 16: "sealed in
//! the TPM when the board has one, else on the encrypted config partition"). Both stores keep
//! their file in [`aperture_appliance::Files::fleet_key_dir`], `/config/aperture/fleet/`, on
//! the encrypted `config` volume, which a level 3 reset crypto-erases.
//!
//! * [`TpmSealedKey`] (boards with a TPM): a TPM sealed data object holds at most 128 bytes,
//!   so the TPM seals a random 32-byte wrapping key (storage's [`Tpm2`], the same templates
//!   and `noda` as the disk keys), and the PEM is kept encrypted with it, AES-256-GCM (ring),
//!   in the same file, `key.tpm.json`:
//!   `{"format":1,"sealed":{"type":"aperture-tpm2",...},"aead":"AES-256-GCM","nonce":HEX,"ciphertext":HEX}`.
//!   Each store seals a new wrapping key, so a (random) nonce is never used twice under one
//!   key. Without this TPM the file is useless: a disk moved to another board, or a TPM
//!   cleared, loses the key ([`KeyError::Unseal`]), and a changed byte fails the tag
//!   ([`KeyError::Decrypt`]); both say to re-provision the device.
//! * [`PlainKeyFile`] (boards without one): `key.pem`, 0600, folder 0700. The volume's own
//!   encryption is all that protects it.
//!
//! [`choose`] picks one as storage picks a volume's key source: what is already stored
//! decides, and only a device without a key follows the image's word (`BuildFacts::tpm`), so
//! a key sealed to the TPM is never read as a plain file.

use std::io::Read;
use std::path::{Path, PathBuf};

use aperture_storage::{StorageError, Tpm2};
use aperture_sys::fs::FsError;
use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM, NONCE_LEN};
use serde::{Deserialize, Serialize};

/// The plain key file.
pub const KEY_PEM: &str = "key.pem";
/// The TPM-sealed key file.
pub const KEY_TPM: &str = "key.tpm.json";
/// Bytes of the wrapping key sealed in the TPM.
const WRAP_LEN: usize = 32;
/// The AEAD named in the file.
const AEAD_NAME: &str = "AES-256-GCM";
/// Associated data of the ciphertext: what it is and the file format.
const AAD: &[u8] = b"aperture device key, key.tpm.json format 1";
/// Largest key file read (a P-256 PEM is about 240 bytes; the sealed blob under 1 KiB).
const MAX_FILE: u64 = 16 * 1024;

/// What fixes a lost or damaged device key.
pub const REPROVISION: &str = "re-provision the device: revoke its old id on the fleet server \
    (`aperture-fleet devices revoke`) and give it a new provisioning archive (`aperture-fleet \
    provision`); its next enrollment makes a new key";

/// Why a device key could not be kept or read back. Every message names the file.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KeyError {
    /// A file operation failed.
    #[error(transparent)]
    Fs(#[from] FsError),
    /// The store holds no key.
    #[error("no device key at {}: the device is not enrolled, or the key was removed; {REPROVISION}", path.display())]
    Missing {
        /// The file looked for.
        path: PathBuf,
    },
    /// The key file is not what this program writes.
    #[error("the device key file {} is malformed ({reason}); {REPROVISION}", path.display())]
    Malformed {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// The TPM did not seal the wrapping key.
    #[error("sealing the wrapping key of {} to the TPM", path.display())]
    Seal {
        /// The file it was for.
        path: PathBuf,
        /// The TPM's error (boxed: it is large).
        #[source]
        err: Box<StorageError>,
    },
    /// The TPM does not unseal the wrapping key: another TPM's blob, a cleared TPM, damage.
    #[error(
        "the TPM does not unseal the wrapping key in {} (sealed by another TPM, the TPM was \
         cleared, or the file is damaged), so the device key is lost; {REPROVISION}",
        path.display()
    )]
    Unseal {
        /// The file.
        path: PathBuf,
        /// The TPM's error (boxed: it is large).
        #[source]
        err: Box<StorageError>,
    },
    /// The ciphertext fails its tag under the unsealed wrapping key.
    #[error(
        "the device key in {} does not decrypt ({AEAD_NAME} tag mismatch): the file was changed \
         or damaged; {REPROVISION}",
        path.display()
    )]
    Decrypt {
        /// The file.
        path: PathBuf,
    },
    /// The system random number generator or the cipher failed.
    #[error("encrypting the device key for {}: {reason}", path.display())]
    Crypto {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
}

/// Where a device key is kept.
pub trait KeyStore {
    /// The file it keeps the key in, for messages.
    fn path(&self) -> PathBuf;
    /// Whether it holds a key (its file exists).
    fn holds_key(&self) -> bool {
        self.path().exists()
    }
    /// Keep `key_pem`, replacing what was kept.
    fn store(&self, key_pem: &str) -> Result<(), KeyError>;
    /// The key, in memory.
    fn load(&self) -> Result<String, KeyError>;
}

/// Read `path` whole, at most [`MAX_FILE`] bytes; [`KeyError::Missing`] when absent.
fn read_bounded(path: &Path) -> Result<Vec<u8>, KeyError> {
    let file = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(KeyError::Missing {
                path: path.to_path_buf(),
            })
        }
        Err(e) => return Err(FsError::on("opening", path)(e).into()),
    };
    let mut bytes = Vec::new();
    file.take(MAX_FILE + 1)
        .read_to_end(&mut bytes)
        .map_err(FsError::on("reading", path))?;
    if bytes.len() as u64 > MAX_FILE {
        return Err(KeyError::Malformed {
            path: path.to_path_buf(),
            reason: format!("larger than {MAX_FILE} bytes"),
        });
    }
    Ok(bytes)
}

fn utf8(path: &Path, bytes: Vec<u8>) -> Result<String, KeyError> {
    String::from_utf8(bytes).map_err(|e| {
        let mut bytes = e.into_bytes();
        bytes.fill(0);
        KeyError::Malformed {
            path: path.to_path_buf(),
            reason: "the key is not UTF-8 text".into(),
        }
    })
}

/// The key as `key.pem` (0600, folder 0700) in `dir`: boards without a TPM. Only the config
/// volume's encryption protects it.
#[derive(Debug, Clone)]
pub struct PlainKeyFile {
    dir: PathBuf,
}

impl PlainKeyFile {
    /// The store in folder `dir` (`/config/aperture/fleet`).
    pub fn at(dir: impl Into<PathBuf>) -> PlainKeyFile {
        PlainKeyFile { dir: dir.into() }
    }
}

impl KeyStore for PlainKeyFile {
    fn path(&self) -> PathBuf {
        self.dir.join(KEY_PEM)
    }

    fn store(&self, key_pem: &str) -> Result<(), KeyError> {
        aperture_sys::fs::create_dir_all(&self.dir, 0o700)?;
        Ok(aperture_sys::fs::write_atomic(
            &self.path(),
            key_pem.as_bytes(),
            0o600,
        )?)
    }

    fn load(&self) -> Result<String, KeyError> {
        let path = self.path();
        utf8(&path, read_bounded(&path)?)
    }
}

/// `key.tpm.json`.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct SealedFile {
    format: u32,
    /// The wrapping key, sealed by the TPM (storage's token format).
    sealed: aperture_storage::SealedKey,
    aead: String,
    nonce: String,
    ciphertext: String,
}

/// The key encrypted with a wrapping key the TPM seals, in `key.tpm.json` in its folder (see
/// the module documentation).
#[derive(Debug, Clone)]
pub struct TpmSealedKey {
    dir: PathBuf,
    tpm: Tpm2,
}

impl TpmSealedKey {
    /// The store in folder `dir`, sealing with `tpm`.
    pub fn new(dir: impl Into<PathBuf>, tpm: Tpm2) -> TpmSealedKey {
        TpmSealedKey {
            dir: dir.into(),
            tpm,
        }
    }

    fn cipher(&self, wrap: &[u8]) -> Result<LessSafeKey, KeyError> {
        let key = UnboundKey::new(&AES_256_GCM, wrap).map_err(|_| KeyError::Crypto {
            path: self.path(),
            reason: format!("a wrapping key of {} bytes", wrap.len()),
        })?;
        Ok(LessSafeKey::new(key))
    }
}

impl KeyStore for TpmSealedKey {
    fn path(&self) -> PathBuf {
        self.dir.join(KEY_TPM)
    }

    fn store(&self, key_pem: &str) -> Result<(), KeyError> {
        let path = self.path();
        let crypto = |reason: String| KeyError::Crypto {
            path: path.clone(),
            reason,
        };
        let mut wrap = [0u8; WRAP_LEN];
        let mut nonce = [0u8; NONCE_LEN];
        getrandom::getrandom(&mut wrap)
            .and_then(|()| getrandom::getrandom(&mut nonce))
            .map_err(|e| crypto(format!("the system random number generator: {e}")))?;
        let sealed = self.tpm.seal_secret(&wrap).map_err(|err| KeyError::Seal {
            path: path.clone(),
            err: Box::new(err),
        });
        let cipher = self.cipher(&wrap);
        wrap.fill(0);
        let (sealed, cipher) = (sealed?, cipher?);
        let mut buf = key_pem.as_bytes().to_vec();
        cipher
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(AAD),
                &mut buf,
            )
            .map_err(|_| crypto("AES-256-GCM refused to seal".into()))?;
        let file = SealedFile {
            format: 1,
            sealed,
            aead: AEAD_NAME.into(),
            nonce: hex::encode(nonce),
            ciphertext: hex::encode(&buf),
        };
        let json = serde_json::to_vec_pretty(&file).expect("the key file serialises");
        aperture_sys::fs::create_dir_all(&self.dir, 0o700)?;
        Ok(aperture_sys::fs::write_atomic(&path, &json, 0o600)?)
    }

    fn load(&self) -> Result<String, KeyError> {
        let path = self.path();
        let malformed = |reason: String| KeyError::Malformed {
            path: path.clone(),
            reason,
        };
        let bytes = read_bounded(&path)?;
        let file: SealedFile =
            serde_json::from_slice(&bytes).map_err(|e| malformed(e.to_string()))?;
        if file.format != 1 || file.aead != AEAD_NAME {
            return Err(malformed(format!(
                "format {} with {}, not format 1 with {AEAD_NAME}",
                file.format, file.aead
            )));
        }
        let nonce: [u8; NONCE_LEN] = hex::decode(&file.nonce)
            .ok()
            .and_then(|n| n.try_into().ok())
            .ok_or_else(|| malformed(format!("the nonce is not {NONCE_LEN} hex bytes")))?;
        let mut buf =
            hex::decode(&file.ciphertext).map_err(|e| malformed(format!("the ciphertext: {e}")))?;
        let wrap = self
            .tpm
            .unseal_secret("the device key's wrapping key", &file.sealed)
            .map_err(|err| KeyError::Unseal {
                path: path.clone(),
                err: Box::new(err),
            })?;
        if wrap.as_bytes().len() != WRAP_LEN {
            return Err(malformed(format!(
                "the sealed wrapping key is {} bytes, not {WRAP_LEN}",
                wrap.as_bytes().len()
            )));
        }
        let cipher = self.cipher(wrap.as_bytes())?;
        drop(wrap);
        let plain_len = cipher
            .open_in_place(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(AAD),
                &mut buf,
            )
            .map_err(|_| KeyError::Decrypt { path: path.clone() })?
            .len();
        buf.truncate(plain_len);
        utf8(&path, buf)
    }
}

/// The store of the device key in `dir`: the one that already holds a key (a key sealed to the
/// TPM is never read as a plain file, nor a plain key suddenly expected sealed), else, for a
/// device that has none yet, [`TpmSealedKey`] when the image says the board has a TPM
/// (`board_has_tpm`, `BuildFacts::tpm`) and [`PlainKeyFile`] when it says it has none.
pub fn choose(dir: &Path, board_has_tpm: bool, tpm: Tpm2) -> Box<dyn KeyStore> {
    let sealed = TpmSealedKey::new(dir, tpm);
    let plain = PlainKeyFile::at(dir);
    if sealed.holds_key() {
        return Box::new(sealed);
    }
    if plain.holds_key() {
        if board_has_tpm {
            tracing::warn!(
                "the device key {} is not sealed to the TPM (it was stored when the image said \
                 the board had none); it stays as it is until the device is re-provisioned",
                plain.path().display()
            );
        }
        return Box::new(plain);
    }
    if board_has_tpm {
        Box::new(sealed)
    } else {
        Box::new(plain)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_plain_key_is_private_and_round_trips() {
        let dir = tempfile::tempdir().unwrap();
        let at = dir.path().join("fleet");
        let store = PlainKeyFile::at(&at);
        assert!(matches!(store.load(), Err(KeyError::Missing { .. })));
        store.store("-----BEGIN PRIVATE KEY-----\nx\n").unwrap();
        assert_eq!(store.load().unwrap(), "-----BEGIN PRIVATE KEY-----\nx\n");
        use std::os::unix::fs::PermissionsExt;
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!((mode(&at), mode(&store.path())), (0o700, 0o600));
    }

    #[test]
    fn the_stored_key_decides_and_only_a_new_device_follows_the_image() {
        let dir = tempfile::tempdir().unwrap();
        let tpm = || Tpm2::new(dir.path().join("run"));
        let path = |tpm_word| choose(dir.path(), tpm_word, tpm()).path();
        assert_eq!(path(true), dir.path().join(KEY_TPM));
        assert_eq!(path(false), dir.path().join(KEY_PEM));
        std::fs::write(dir.path().join(KEY_PEM), "k").unwrap();
        assert_eq!(path(true), dir.path().join(KEY_PEM), "a plain key stays");
        std::fs::write(dir.path().join(KEY_TPM), "{}").unwrap();
        assert_eq!(path(false), dir.path().join(KEY_TPM), "a sealed key stays");
    }

    #[test]
    fn a_malformed_sealed_file_names_itself_and_the_fix() {
        let dir = tempfile::tempdir().unwrap();
        let store = TpmSealedKey::new(dir.path(), Tpm2::new(dir.path().join("run")));
        std::fs::write(store.path(), b"{\"format\":1}").unwrap();
        let err = store.load().unwrap_err().to_string();
        assert!(
            err.contains("key.tpm.json") && err.contains("re-provision the device"),
            "{err}"
        );
    }
}
