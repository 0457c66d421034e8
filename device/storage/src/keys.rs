//! Volume keys and where they are sealed.
//!
//! A [`Key`] is 64 random bytes (aes-xts-plain64 with a 512-bit key), made once per volume on
//! first boot. A [`KeySource`] seals it to the device, unseals it at every boot and forgets it
//! for a factory reset:
//!
//! * [`Tpm2`]: tpm2-tools, a sealed data object under the owner hierarchy's primary key, its
//!   public and private blobs under `/efi/aperture/keys/`. The blobs are useless without this
//!   TPM (the primary key is derived from the TPM's owner seed), so a stolen disk reveals
//!   nothing. Chosen when `/dev/tpmrm0` exists.
//! * [`UnsafeEspKeyFile`]: the key itself in a root-only file on the ESP. This protects nothing
//!   against disk theft and says so in the log at every boot; it exists so that boards without
//!   a TPM work until they provide their own source (Jetson: the OP-TEE key service).
//!
//! Keys are not bound to PCRs: a measured-boot policy would have to be re-sealed on every
//! update and needs a recovery path (systemd-cryptenroll's signed PCR policies are the model);
//! that is future work.

use std::fmt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::cmd::Cmd;
use crate::fsutil::{create_dir_all, read_optional, shred_and_remove, sync_dir, write_atomic};
use crate::StorageError;

/// Bytes in a volume key.
pub const KEY_LEN: usize = 64;

/// A volume key. Its bytes are zeroed when it is dropped (best effort: copies made by the
/// kernel or by cryptsetup are out of reach) and never printed.
pub struct Key(Box<[u8; KEY_LEN]>);

impl Key {
    /// A fresh key from the system random number generator.
    pub fn random() -> Result<Key, StorageError> {
        let mut bytes = Box::new([0u8; KEY_LEN]);
        getrandom::getrandom(&mut bytes[..]).map_err(|e| StorageError::Random {
            reason: e.to_string(),
        })?;
        Ok(Key(bytes))
    }

    /// A key from bytes read back for `volume`; they must be exactly [`KEY_LEN`] long.
    pub fn from_bytes(volume: &str, bytes: &[u8]) -> Result<Key, StorageError> {
        if bytes.len() != KEY_LEN {
            return Err(StorageError::KeySize {
                volume: volume.into(),
                len: bytes.len(),
                expected: KEY_LEN,
            });
        }
        let mut key = Box::new([0u8; KEY_LEN]);
        key.copy_from_slice(bytes);
        Ok(Key(key))
    }

    /// The key bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0[..]
    }
}

impl Drop for Key {
    fn drop(&mut self) {
        self.0.fill(0);
    }
}

impl fmt::Debug for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Key(<secret>)")
    }
}

/// Which kind of key source protects the volumes (for status output).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
#[non_exhaustive]
pub enum KeySourceKind {
    /// Sealed by the TPM 2.0.
    Tpm2,
    /// Stored in the clear on the ESP: no protection against disk theft.
    UnsafeEspFile,
    /// A board's own key service.
    Board,
}

impl fmt::Display for KeySourceKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            KeySourceKind::Tpm2 => "tpm2",
            KeySourceKind::UnsafeEspFile => "unsafe-esp-file (NOT protected against disk theft)",
            KeySourceKind::Board => "board key service",
        })
    }
}

/// Seals volume keys to the device.
pub trait KeySource {
    /// What kind of protection this is.
    fn kind(&self) -> KeySourceKind;
    /// Seal `key` for `volume`, replacing any earlier one, durably.
    fn seal(&self, volume: &str, key: &Key) -> Result<(), StorageError>;
    /// The key sealed for `volume`; [`StorageError::KeyMissing`] if there is none.
    fn unseal(&self, volume: &str) -> Result<Key, StorageError>;
    /// Destroy the sealed key of `volume` (nothing to do if there is none). After this the
    /// volume's data cannot be decrypted by anyone.
    fn forget(&self, volume: &str) -> Result<(), StorageError>;
    /// The files this source keeps for `volume` (for reports and for reset's checks).
    fn files(&self, volume: &str) -> Vec<PathBuf>;
}

impl<T: KeySource + ?Sized> KeySource for Box<T> {
    fn kind(&self) -> KeySourceKind {
        (**self).kind()
    }
    fn seal(&self, volume: &str, key: &Key) -> Result<(), StorageError> {
        (**self).seal(volume, key)
    }
    fn unseal(&self, volume: &str) -> Result<Key, StorageError> {
        (**self).unseal(volume)
    }
    fn forget(&self, volume: &str) -> Result<(), StorageError> {
        (**self).forget(volume)
    }
    fn files(&self, volume: &str) -> Vec<PathBuf> {
        (**self).files(volume)
    }
}

/// The key source for this device: [`Tpm2`] when `tpm_device` exists, otherwise the loud
/// [`UnsafeEspKeyFile`] fallback.
pub fn detect(tpm_device: &Path, key_dir: &Path, run_dir: &Path) -> Box<dyn KeySource> {
    if tpm_device.exists() {
        Box::new(Tpm2::new(key_dir.to_path_buf(), run_dir.to_path_buf()))
    } else {
        Box::new(UnsafeEspKeyFile::new(key_dir.to_path_buf()))
    }
}

/// THE INSECURE FALLBACK: keys in the clear in root-only files on the ESP
/// (`/efi/aperture/keys/<volume>.key`). Anyone holding the disk can read them.
#[derive(Debug, Clone)]
pub struct UnsafeEspKeyFile {
    dir: PathBuf,
}

impl UnsafeEspKeyFile {
    /// Keys kept in `dir`.
    pub fn new(dir: PathBuf) -> UnsafeEspKeyFile {
        UnsafeEspKeyFile { dir }
    }

    /// The file holding `volume`'s key.
    pub fn path(&self, volume: &str) -> PathBuf {
        self.dir.join(format!("{volume}.key"))
    }
}

impl KeySource for UnsafeEspKeyFile {
    fn kind(&self) -> KeySourceKind {
        KeySourceKind::UnsafeEspFile
    }

    fn seal(&self, volume: &str, key: &Key) -> Result<(), StorageError> {
        create_dir_all(&self.dir, 0o700)?;
        write_atomic(&self.path(volume), key.as_bytes(), 0o400)
    }

    fn unseal(&self, volume: &str) -> Result<Key, StorageError> {
        match read_optional(&self.path(volume))? {
            Some(mut bytes) => {
                let key = Key::from_bytes(volume, &bytes);
                bytes.fill(0);
                key
            }
            None => Err(StorageError::KeyMissing {
                volume: volume.into(),
                dir: self.dir.clone(),
            }),
        }
    }

    fn forget(&self, volume: &str) -> Result<(), StorageError> {
        shred_and_remove(&self.path(volume)).map(drop)
    }

    fn files(&self, volume: &str) -> Vec<PathBuf> {
        vec![self.path(volume)]
    }
}

/// Keys sealed by a TPM 2.0 through tpm2-tools. Each volume has `<volume>.tpm2.pub` and
/// `<volume>.tpm2.priv` in the key folder: a sealed data object under the primary storage key
/// that `tpm2_createprimary -C o` derives again at every boot from the owner seed.
#[derive(Debug, Clone)]
pub struct Tpm2 {
    dir: PathBuf,
    run_dir: PathBuf,
    tcti: Option<String>,
}

impl Tpm2 {
    /// Blobs kept in `dir`; transient context files in a private folder under `run_dir`
    /// (a tmpfs, `/run`).
    pub fn new(dir: PathBuf, run_dir: PathBuf) -> Tpm2 {
        Tpm2 {
            dir,
            run_dir,
            tcti: None,
        }
    }

    /// Talk to the TPM through `tcti` (`swtpm:port=2321` in tests) instead of the default
    /// resource manager `/dev/tpmrm0`.
    pub fn with_tcti(mut self, tcti: impl Into<String>) -> Tpm2 {
        self.tcti = Some(tcti.into());
        self
    }

    fn blob(&self, volume: &str, ext: &str) -> PathBuf {
        self.dir.join(format!("{volume}.tpm2.{ext}"))
    }

    fn tool(&self, program: &str) -> Cmd {
        let cmd = Cmd::new(program);
        match &self.tcti {
            Some(t) => cmd.env("TPM2TOOLS_TCTI", t),
            None => cmd,
        }
    }

    /// Flush transient objects. The kernel resource manager does this by itself; a raw TPM
    /// (swtpm over a socket) runs out of object slots without it.
    fn flush(&self) -> Result<(), StorageError> {
        self.tool("tpm2_flushcontext").arg("-t").run().map(drop)
    }

    /// A private scratch folder for context files, removed when dropped.
    fn scratch(&self) -> Result<Scratch, StorageError> {
        let dir = self
            .run_dir
            .join(format!("aperture-storage-tpm2.{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        create_dir_all(&dir, 0o700)?;
        Ok(Scratch(dir))
    }

    /// Create the primary key into `scratch/primary.ctx`.
    fn primary(&self, scratch: &Scratch) -> Result<PathBuf, StorageError> {
        let ctx = scratch.0.join("primary.ctx");
        self.tool("tpm2_createprimary")
            .args(["-Q", "-C", "o", "-c"])
            .arg(&ctx)
            .run()?;
        self.flush()?;
        Ok(ctx)
    }
}

impl KeySource for Tpm2 {
    fn kind(&self) -> KeySourceKind {
        KeySourceKind::Tpm2
    }

    fn seal(&self, volume: &str, key: &Key) -> Result<(), StorageError> {
        create_dir_all(&self.dir, 0o700)?;
        let scratch = self.scratch()?;
        let primary = self.primary(&scratch)?;
        let (public, private) = (self.blob(volume, "pub"), self.blob(volume, "priv"));
        let (public_tmp, private_tmp) = (
            crate::fsutil::tmp_path(&public),
            crate::fsutil::tmp_path(&private),
        );
        self.tool("tpm2_create")
            .args(["-Q", "-C"])
            .arg(&primary)
            .args(["-i", "-", "-u"])
            .arg(&public_tmp)
            .arg("-r")
            .arg(&private_tmp)
            .stdin_secret(key.as_bytes())
            .run()?;
        self.flush()?;
        for (tmp, path) in [(&public_tmp, &public), (&private_tmp, &private)] {
            std::fs::File::open(tmp)
                .and_then(|f| f.sync_all())
                .map_err(StorageError::io("syncing", tmp))?;
            std::fs::rename(tmp, path).map_err(StorageError::io("renaming into place", path))?;
        }
        sync_dir(&self.dir)
    }

    fn unseal(&self, volume: &str) -> Result<Key, StorageError> {
        let (public, private) = (self.blob(volume, "pub"), self.blob(volume, "priv"));
        if !public.exists() || !private.exists() {
            return Err(StorageError::KeyMissing {
                volume: volume.into(),
                dir: self.dir.clone(),
            });
        }
        let scratch = self.scratch()?;
        let primary = self.primary(&scratch)?;
        let object = scratch.0.join("key.ctx");
        self.tool("tpm2_load")
            .args(["-Q", "-C"])
            .arg(&primary)
            .arg("-u")
            .arg(&public)
            .arg("-r")
            .arg(&private)
            .arg("-c")
            .arg(&object)
            .run()?;
        self.flush()?;
        let mut out = self.tool("tpm2_unseal").arg("-c").arg(&object).run()?;
        let flushed = self.flush();
        let key = Key::from_bytes(volume, &out.stdout);
        out.stdout.fill(0);
        flushed?;
        key
    }

    fn forget(&self, volume: &str) -> Result<(), StorageError> {
        shred_and_remove(&self.blob(volume, "priv"))?;
        shred_and_remove(&self.blob(volume, "pub"))?;
        Ok(())
    }

    fn files(&self, volume: &str) -> Vec<PathBuf> {
        vec![self.blob(volume, "pub"), self.blob(volume, "priv")]
    }
}

/// A scratch folder removed on drop.
struct Scratch(PathBuf);

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn random_keys_differ_and_are_not_printed() {
        let a = Key::random().unwrap();
        let b = Key::random().unwrap();
        assert_ne!(a.as_bytes(), b.as_bytes());
        assert_eq!(a.as_bytes().len(), KEY_LEN);
        assert_eq!(format!("{a:?}"), "Key(<secret>)");
    }

    #[test]
    fn wrong_length_is_refused() {
        let err = Key::from_bytes("data", &[1; 10]).unwrap_err();
        assert!(err.to_string().contains("10 bytes, not 64"), "{err}");
    }

    #[test]
    fn esp_file_seal_unseal_forget() {
        let dir = tempfile::tempdir().unwrap();
        let src = UnsafeEspKeyFile::new(dir.path().join("keys"));
        let err = src.unseal("data").unwrap_err();
        assert!(matches!(err, StorageError::KeyMissing { .. }), "{err}");
        let key = Key::random().unwrap();
        src.seal("data", &key).unwrap();
        assert_eq!(src.unseal("data").unwrap().as_bytes(), key.as_bytes());
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(src.path("data"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o400);
        src.forget("data").unwrap();
        assert!(!src.path("data").exists());
        src.forget("data").unwrap();
        assert_eq!(src.kind(), KeySourceKind::UnsafeEspFile);
        assert!(src.kind().to_string().contains("NOT protected"));
    }

    #[test]
    fn detect_falls_back_without_a_tpm() {
        let dir = tempfile::tempdir().unwrap();
        let src = detect(&dir.path().join("tpmrm0"), dir.path(), dir.path());
        assert_eq!(src.kind(), KeySourceKind::UnsafeEspFile);
        std::fs::write(dir.path().join("tpmrm0"), b"").unwrap();
        let src = detect(&dir.path().join("tpmrm0"), dir.path(), dir.path());
        assert_eq!(src.kind(), KeySourceKind::Tpm2);
        assert_eq!(src.files("config").len(), 2);
    }
}
