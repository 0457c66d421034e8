//! LUKS2 volumes behind the [`Crypt`] trait: format, tokens, repair, open, close, label and
//! erase.
//!
//! * [`CryptSetup`]: the real thing, `cryptsetup` 2.x through [`aperture_sys::Cmd`], keys and
//!   tokens (which may hold a plain key) always on standard input.
//! * [`crate::fake::FakeCrypt`]: a test double writing checksummed LUKS2 header copies, with
//!   power cuts injected between (and inside) its writes.
//!
//! Whether a partition holds LUKS at all, and whether each header copy is intact, is read from
//! the partition ([`crate::luks::probe`]), not asked of a tool, so both implementations agree.

use std::path::{Path, PathBuf};

use aperture_sys::Cmd;

use crate::disk::Partition;
use crate::keys::{random_bytes, Key};
use crate::luks;
use crate::StorageError;

/// LUKS2 label of a volume whose file system is not made yet: set by the first-boot format,
/// replaced by the volume's name once `mkfs` finished.
pub const LABEL_FORMATTING: &str = "aperture-formatting";

/// A random (version 4) UUID for a new LUKS2 header.
pub fn random_uuid() -> Result<String, StorageError> {
    let mut b = [0u8; 16];
    random_bytes(&mut b)?;
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let hex: String = b.iter().map(|x| format!("{x:02x}")).collect();
    Ok(format!(
        "{}-{}-{}-{}-{}",
        &hex[0..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..32]
    ))
}

/// Operations on LUKS2 volumes.
pub trait Crypt {
    /// Make `part` a LUKS2 volume with header UUID `uuid`, whose only keyslot holds `key`,
    /// labelled `label`.
    fn format_as(
        &self,
        part: &dyn Partition,
        key: &Key,
        label: &str,
        uuid: &str,
    ) -> Result<(), StorageError>;
    /// [`Crypt::format_as`] with a random UUID.
    fn format(&self, part: &dyn Partition, key: &Key, label: &str) -> Result<(), StorageError> {
        self.format_as(part, key, label, &random_uuid()?)
    }
    /// Set the LUKS2 label of `part`.
    fn set_label(&self, part: &dyn Partition, label: &str) -> Result<(), StorageError>;
    /// The LUKS2 label of `part`'s intact header (`None` without one, or without a label).
    fn label(&self, part: &dyn Partition) -> Result<Option<String>, StorageError> {
        luks::read_label(part)
    }
    /// Add the token `json` to `part`'s header, replacing token `replace` if given. The JSON
    /// may hold a key: it never reaches a command line or a file.
    fn import_token(
        &self,
        part: &dyn Partition,
        json: &[u8],
        replace: Option<&str>,
    ) -> Result<(), StorageError>;
    /// Make both header copies whole again from the intact one (`cryptsetup repair`).
    fn repair(&self, part: &dyn Partition) -> Result<(), StorageError>;
    /// Whether `key` opens a keyslot of `part` (without activating anything).
    fn check_key(&self, part: &dyn Partition, key: &Key) -> Result<bool, StorageError>;
    /// Unlock `part` as mapping `name`; the path of the plaintext device.
    fn open(&self, part: &dyn Partition, name: &str, key: &Key) -> Result<PathBuf, StorageError>;
    /// Lock mapping `name`.
    fn close(&self, name: &str) -> Result<(), StorageError>;
    /// The plaintext device of mapping `name`, if it is open.
    fn mapped(&self, name: &str) -> Result<Option<PathBuf>, StorageError>;
    /// Destroy every keyslot of `part` (`cryptsetup erase`); nothing to do without a header.
    fn erase(&self, part: &dyn Partition) -> Result<(), StorageError>;
}

/// The real implementation: `cryptsetup`.
#[derive(Debug, Clone)]
pub struct CryptSetup {
    mapper_dir: PathBuf,
}

impl CryptSetup {
    /// Mappings appear in `mapper_dir` (`/dev/mapper`).
    pub fn new(mapper_dir: PathBuf) -> CryptSetup {
        CryptSetup { mapper_dir }
    }
}

fn device(part: &dyn Partition) -> Result<&Path, StorageError> {
    part.device().ok_or_else(|| {
        StorageError::malformed(
            part.describe(),
            "cryptsetup needs a block device or file path, not a range of an image",
        )
    })
}

impl Crypt for CryptSetup {
    fn format_as(
        &self,
        part: &dyn Partition,
        key: &Key,
        label: &str,
        uuid: &str,
    ) -> Result<(), StorageError> {
        // The key is 512 random bits, not a password: key stretching adds nothing. pbkdf2 with
        // 1000 iterations makes unlocking instant, even under QEMU's TCG where the default
        // argon2id (up to 1 GiB of memory, 2 s on real hardware) takes minutes or runs the
        // guest out of memory.
        Cmd::new("cryptsetup")
            .args([
                "luksFormat",
                "--type",
                "luks2",
                "--batch-mode",
                "--cipher",
                "aes-xts-plain64",
                "--key-size",
                "512",
                "--pbkdf",
                "pbkdf2",
                "--pbkdf-force-iterations",
                "1000",
                "--label",
                label,
                "--uuid",
                uuid,
                "--key-file=-",
            ])
            .arg(device(part)?)
            .stdin_secret(key.as_bytes())
            .run()?;
        Ok(())
    }

    fn set_label(&self, part: &dyn Partition, label: &str) -> Result<(), StorageError> {
        Cmd::new("cryptsetup")
            .args(["config", "--label", label])
            .arg(device(part)?)
            .run()?;
        Ok(())
    }

    fn import_token(
        &self,
        part: &dyn Partition,
        json: &[u8],
        replace: Option<&str>,
    ) -> Result<(), StorageError> {
        let mut cmd = Cmd::new("cryptsetup").args(["token", "import", "--json-file", "-"]);
        if let Some(id) = replace {
            cmd = cmd.args(["--token-id", id, "--token-replace"]);
        }
        cmd.arg(device(part)?).stdin_secret(json).run()?;
        Ok(())
    }

    fn repair(&self, part: &dyn Partition) -> Result<(), StorageError> {
        Cmd::new("cryptsetup")
            .args(["repair", "--batch-mode"])
            .arg(device(part)?)
            .run()?;
        Ok(())
    }

    fn check_key(&self, part: &dyn Partition, key: &Key) -> Result<bool, StorageError> {
        // A header without a keyslot (a luksFormat cut before it added one) opens with no
        // key; cryptsetup says so with the generic exit status 1 ("No usable keyslot").
        if crate::luks::probe(part)?
            .current()
            .is_some_and(|c| c.keyslots.is_empty())
        {
            return Ok(false);
        }
        let cmd = Cmd::new("cryptsetup")
            .args([
                "open",
                "--test-passphrase",
                "--disable-external-tokens",
                "--key-file=-",
            ])
            .arg(device(part)?)
            .stdin_secret(key.as_bytes());
        let display = cmd.display();
        let out = cmd.output()?;
        match out.code {
            Some(0) => Ok(true),
            // cryptsetup(8) EXIT STATUS: 2 means "no permission (bad passphrase)".
            Some(2) => Ok(false),
            _ => Err(aperture_sys::cmd::failure(display, &out).into()),
        }
    }

    fn open(&self, part: &dyn Partition, name: &str, key: &Key) -> Result<PathBuf, StorageError> {
        Cmd::new("cryptsetup")
            .args([
                "open",
                "--type",
                "luks2",
                "--disable-external-tokens",
                "--key-file=-",
            ])
            .arg(device(part)?)
            .arg(name)
            .stdin_secret(key.as_bytes())
            .run()?;
        Ok(self.mapper_dir.join(name))
    }

    fn close(&self, name: &str) -> Result<(), StorageError> {
        Cmd::new("cryptsetup").args(["close", name]).run()?;
        Ok(())
    }

    fn mapped(&self, name: &str) -> Result<Option<PathBuf>, StorageError> {
        let path = self.mapper_dir.join(name);
        Ok(path.exists().then_some(path))
    }

    fn erase(&self, part: &dyn Partition) -> Result<(), StorageError> {
        if !luks::is_luks(part)? {
            return Ok(());
        }
        Cmd::new("cryptsetup")
            .args(["erase", "--batch-mode"])
            .arg(device(part)?)
            .run()?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn random_uuids_are_version_4() {
        let a = random_uuid().unwrap();
        assert_eq!(a.len(), 36);
        assert_eq!(&a[14..15], "4");
        assert!("89ab".contains(&a[19..20]), "{a}");
        assert_ne!(a, random_uuid().unwrap());
    }
}
