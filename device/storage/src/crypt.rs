//! LUKS2 volumes: format, open, close, label and erase, behind the [`Crypt`] trait.
//!
//! * [`CryptSetup`]: the real thing, `cryptsetup` 2.x through [`crate::cmd::Cmd`], the key
//!   always on standard input.
//! * [`FakeCrypt`]: a test double that writes a plausible LUKS2 header ([`fake_luks2_image`])
//!   and "encrypts" by XOR with the key, so that ciphertext on the disk differs from the
//!   plaintext written through the mapping, and wiping the header really loses the key.
//!
//! Whether a partition holds LUKS at all is read from the header ([`crate::luks::is_luks`]),
//! not asked of a tool, so both implementations agree on it.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::cmd::Cmd;
use crate::disk::Partition;
use crate::keys::{Key, KEY_LEN};
use crate::luks::{self, fake_luks2_image};
use crate::StorageError;

/// LUKS2 label of a volume whose file system is not made yet: set by the first-boot format,
/// replaced by the volume's name once `mkfs` finished, so a power cut in between is finished
/// at the next boot instead of leaving a volume without a file system.
pub const LABEL_FORMATTING: &str = "aperture-formatting";

/// Operations on LUKS2 volumes.
pub trait Crypt {
    /// Make `part` a LUKS2 volume whose only keyslot holds `key`, labelled `label`.
    fn format(&self, part: &dyn Partition, key: &Key, label: &str) -> Result<(), StorageError>;
    /// Set the LUKS2 label of `part`.
    fn set_label(&self, part: &dyn Partition, label: &str) -> Result<(), StorageError>;
    /// The LUKS2 label of `part` (`None` without a header or label).
    fn label(&self, part: &dyn Partition) -> Result<Option<String>, StorageError>;
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
    fn format(&self, part: &dyn Partition, key: &Key, label: &str) -> Result<(), StorageError> {
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
                "--key-file=-",
            ])
            .arg(device(part)?)
            .stdin_secret(key.as_bytes())
            .run()
            .map(drop)
    }

    fn set_label(&self, part: &dyn Partition, label: &str) -> Result<(), StorageError> {
        Cmd::new("cryptsetup")
            .args(["config", "--label", label])
            .arg(device(part)?)
            .run()
            .map(drop)
    }

    fn label(&self, part: &dyn Partition) -> Result<Option<String>, StorageError> {
        luks::read_label(part)
    }

    fn open(&self, part: &dyn Partition, name: &str, key: &Key) -> Result<PathBuf, StorageError> {
        Cmd::new("cryptsetup")
            .args(["open", "--type", "luks2", "--key-file=-"])
            .arg(device(part)?)
            .arg(name)
            .stdin_secret(key.as_bytes())
            .run()?;
        Ok(self.mapper_dir.join(name))
    }

    fn close(&self, name: &str) -> Result<(), StorageError> {
        Cmd::new("cryptsetup").args(["close", name]).run().map(drop)
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
            .run()
            .map(drop)
    }
}

/// Test double of [`Crypt`], on any [`Partition`] (a range of a disk image file).
///
/// Layout of a "formatted" partition: [`fake_luks2_image`] with `hdr_size` 16 KiB, the
/// keyslot area at 32 KiB holding the key XOR 0x5c (so it is on the disk until erased), data
/// from [`FakeCrypt::DATA_OFFSET`]. Data byte `i` of the plaintext is stored as
/// `plain[i] ^ key[i % 64]`.
#[derive(Debug)]
pub struct FakeCrypt {
    mapper_dir: PathBuf,
    open: RefCell<BTreeMap<String, PathBuf>>,
}

impl FakeCrypt {
    /// Size of one fake header copy.
    pub const HDR_SIZE: u64 = 16 << 10;
    /// Where the fake data segment starts.
    pub const DATA_OFFSET: u64 = 64 << 10;
    /// XOR mask of the stored key.
    pub const WRAP: u8 = 0x5c;

    /// Mappings are reported under `mapper_dir` (nothing is created there).
    pub fn new(mapper_dir: PathBuf) -> FakeCrypt {
        FakeCrypt {
            mapper_dir,
            open: RefCell::new(BTreeMap::new()),
        }
    }

    /// The key as the fake keyslot stores it.
    pub fn wrapped(key: &[u8]) -> Vec<u8> {
        key.iter().map(|b| b ^ Self::WRAP).collect()
    }

    /// Write `plain` at `offset` of the volume's data as the mapping would: XOR-encrypted,
    /// after the header. For tests that plant canaries "through the file system".
    pub fn write_plain(
        part: &dyn Partition,
        key: &Key,
        offset: u64,
        plain: &[u8],
    ) -> std::io::Result<()> {
        let k = key.as_bytes();
        let cipher: Vec<u8> = plain
            .iter()
            .enumerate()
            .map(|(i, b)| b ^ k[((offset + i as u64) % KEY_LEN as u64) as usize])
            .collect();
        part.write_all_at(&cipher, Self::DATA_OFFSET + offset)
    }

    /// Read `len` plaintext bytes at `offset` of the volume's data.
    pub fn read_plain(
        part: &dyn Partition,
        key: &Key,
        offset: u64,
        len: usize,
    ) -> std::io::Result<Vec<u8>> {
        let mut buf = vec![0u8; len];
        part.read_exact_at(&mut buf, Self::DATA_OFFSET + offset)?;
        let k = key.as_bytes();
        for (i, b) in buf.iter_mut().enumerate() {
            *b ^= k[((offset + i as u64) % KEY_LEN as u64) as usize];
        }
        Ok(buf)
    }

    fn io(part: &dyn Partition, op: &'static str, e: std::io::Error) -> StorageError {
        StorageError::Io {
            op,
            path: part.describe().into(),
            source: e,
        }
    }
}

impl Crypt for FakeCrypt {
    fn format(&self, part: &dyn Partition, key: &Key, label: &str) -> Result<(), StorageError> {
        let mut keyslot = Self::wrapped(key.as_bytes());
        keyslot.resize(4096, 0xa5);
        let image = fake_luks2_image(Self::HDR_SIZE, Self::DATA_OFFSET, &keyslot);
        part.write_all_at(&image, 0)
            .map_err(|e| Self::io(part, "formatting", e))?;
        self.set_label(part, label)?;
        part.sync().map_err(|e| Self::io(part, "syncing", e))
    }

    fn set_label(&self, part: &dyn Partition, label: &str) -> Result<(), StorageError> {
        let mut field = [0u8; 48];
        let n = label.len().min(47);
        field[..n].copy_from_slice(&label.as_bytes()[..n]);
        for copy in [0, Self::HDR_SIZE] {
            part.write_all_at(&field, copy + 24)
                .map_err(|e| Self::io(part, "labelling", e))?;
        }
        Ok(())
    }

    fn label(&self, part: &dyn Partition) -> Result<Option<String>, StorageError> {
        luks::read_label(part)
    }

    fn open(&self, part: &dyn Partition, name: &str, key: &Key) -> Result<PathBuf, StorageError> {
        let header = luks::read_header(part)?;
        let area = header
            .as_ref()
            .and_then(|h| h.keyslot_areas.first().copied())
            .filter(|_| luks::is_luks(part).unwrap_or(false));
        let Some((offset, _)) = area else {
            return Err(StorageError::malformed(
                part.describe(),
                "no LUKS2 header to open",
            ));
        };
        let mut stored = vec![0u8; KEY_LEN];
        part.read_exact_at(&mut stored, offset)
            .map_err(|e| Self::io(part, "reading keyslot of", e))?;
        if stored != Self::wrapped(key.as_bytes()) {
            return Err(StorageError::Command {
                command: format!("fake cryptsetup open {} {name}", part.describe()),
                status: "exit code 2".into(),
                stderr: "No key available with this passphrase.".into(),
            });
        }
        let path = self.mapper_dir.join(name);
        self.open.borrow_mut().insert(name.into(), path.clone());
        Ok(path)
    }

    fn close(&self, name: &str) -> Result<(), StorageError> {
        self.open.borrow_mut().remove(name);
        Ok(())
    }

    fn mapped(&self, name: &str) -> Result<Option<PathBuf>, StorageError> {
        Ok(self.open.borrow().get(name).cloned())
    }

    fn erase(&self, part: &dyn Partition) -> Result<(), StorageError> {
        if !luks::is_luks(part)? {
            return Ok(());
        }
        if let Some(h) = luks::read_header(part)? {
            for (offset, size) in h.keyslot_areas {
                let size = size.min(part.size().saturating_sub(offset));
                part.write_all_at(&vec![0u8; size as usize], offset)
                    .map_err(|e| Self::io(part, "erasing keyslot of", e))?;
            }
        }
        part.sync().map_err(|e| Self::io(part, "syncing", e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::disk::MemPartition;

    #[test]
    fn fake_round_trip_and_erase() {
        let part = MemPartition::new("data", vec![0u8; 1 << 20]);
        let crypt = FakeCrypt::new("/dev/mapper".into());
        let key = Key::random().unwrap();
        crypt.format(&part, &key, LABEL_FORMATTING).unwrap();
        assert!(luks::is_luks(&part).unwrap());
        assert_eq!(
            crypt.label(&part).unwrap().as_deref(),
            Some(LABEL_FORMATTING)
        );
        crypt.set_label(&part, "data").unwrap();
        assert_eq!(crypt.label(&part).unwrap().as_deref(), Some("data"));
        let mapped = crypt.open(&part, "aperture-data", &key).unwrap();
        assert_eq!(mapped, Path::new("/dev/mapper/aperture-data"));
        assert_eq!(crypt.mapped("aperture-data").unwrap(), Some(mapped));
        FakeCrypt::write_plain(&part, &key, 10, b"canary").unwrap();
        assert_eq!(
            FakeCrypt::read_plain(&part, &key, 10, 6).unwrap(),
            b"canary"
        );
        let raw = part.bytes();
        let at = (FakeCrypt::DATA_OFFSET + 10) as usize;
        assert_ne!(&raw[at..at + 6], b"canary", "ciphertext must differ");
        crypt.close("aperture-data").unwrap();
        let wrong = Key::random().unwrap();
        assert!(crypt.open(&part, "aperture-data", &wrong).is_err());
        crypt.erase(&part).unwrap();
        let err = crypt.open(&part, "aperture-data", &key).unwrap_err();
        assert!(err.to_string().contains("No key available"), "{err}");
        assert!(
            luks::is_luks(&part).unwrap(),
            "erase keeps the header, as cryptsetup does"
        );
    }
}
