//! Test doubles for the LUKS seam and power cuts, used by tier-1 tests here and in
//! aperture-reset.
//!
//! * [`PowerCut`]: counts the mutating operations of every fake it is given to; the chosen one
//!   fails (or is torn: half done, then fails), and so does everything after it, until the
//!   test "reboots" with fresh fakes over the same disk.
//! * [`FakeCrypt`]: a stand-in for `cryptsetup` on any [`Partition`]. It writes real LUKS2
//!   header copies (checksummed, [`FakeHeader`]), so [`crate::luks::probe`] reads them as it
//!   reads cryptsetup's; the keyslot holds the key XOR 0x5c, and data byte `i` is stored as
//!   `plain[i] ^ key[i % 64]`, so ciphertext differs from plaintext and a new key loses the
//!   data. Like cryptsetup it writes the primary header copy before the secondary.
//! * [`CutMedium`]: a device-state medium whose writes and syncs count as operations.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::io;
use std::path::PathBuf;
use std::rc::Rc;

use aperture_appliance::store::Medium;
use aperture_sys::CmdError;

use crate::crypt::Crypt;
use crate::disk::Partition;
use crate::keys::{Key, KEY_LEN};
use crate::luks::{self, FakeHeader};
use crate::StorageError;

#[derive(Debug, Default)]
struct CutState {
    at: Option<usize>,
    torn: bool,
    ops: usize,
    dead: bool,
    log: Vec<String>,
}

/// What an operation does when [`PowerCut::tick`] lets it run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tick {
    /// All of it.
    Go,
    /// Part of it, then fail with [`PowerCut::error`].
    Torn,
}

/// A power cut at a chosen mutating operation, shared by the fakes of one boot.
#[derive(Debug, Clone, Default)]
pub struct PowerCut(Rc<RefCell<CutState>>);

impl PowerCut {
    /// No cut: operations are only counted.
    pub fn never() -> PowerCut {
        PowerCut::default()
    }

    /// Cut the power at mutating operation `op` (1-based); `torn`: that operation is half
    /// done first.
    pub fn at(op: usize, torn: bool) -> PowerCut {
        PowerCut(Rc::new(RefCell::new(CutState {
            at: Some(op),
            torn,
            ..CutState::default()
        })))
    }

    /// The error every operation fails with once the power is off.
    pub fn error(what: &str) -> StorageError {
        StorageError::InjectedFault {
            what: format!("power cut at {what}"),
        }
    }

    /// Count operation `what`; whether (and how much of) it may run.
    pub fn tick(&self, what: &str) -> Result<Tick, StorageError> {
        let mut s = self.0.borrow_mut();
        if s.dead {
            return Err(PowerCut::error(what));
        }
        s.ops += 1;
        s.log.push(what.to_string());
        if s.at == Some(s.ops) {
            s.dead = true;
            return if s.torn {
                Ok(Tick::Torn)
            } else {
                Err(PowerCut::error(what))
            };
        }
        Ok(Tick::Go)
    }

    /// Count operation `what`, which cannot be half done: a torn cut is a cut.
    pub fn tick_whole(&self, what: &str) -> Result<(), StorageError> {
        match self.tick(what)? {
            Tick::Go => Ok(()),
            Tick::Torn => Err(PowerCut::error(what)),
        }
    }

    /// Whether the cut happened.
    pub fn fired(&self) -> bool {
        self.0.borrow().dead
    }

    /// Operations counted.
    pub fn ops(&self) -> usize {
        self.0.borrow().ops
    }

    /// The operations counted, in order.
    pub fn log(&self) -> Vec<String> {
        self.0.borrow().log.clone()
    }
}

/// A device-state medium whose writes and syncs are operations of a [`PowerCut`]; a torn
/// write leaves the first half of its bytes.
#[derive(Debug)]
pub struct CutMedium<M> {
    inner: M,
    cut: PowerCut,
}

impl<M: Medium> CutMedium<M> {
    /// `inner` behind `cut`.
    pub fn new(inner: M, cut: PowerCut) -> CutMedium<M> {
        CutMedium { inner, cut }
    }
}

fn cut_io(e: StorageError) -> io::Error {
    io::Error::other(e.to_string())
}

impl<M: Medium> Medium for CutMedium<M> {
    fn size(&self) -> io::Result<u64> {
        self.inner.size()
    }
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.inner.read_at(buf, offset)
    }
    fn write_at(&mut self, buf: &[u8], offset: u64) -> io::Result<()> {
        match self.cut.tick("device state write").map_err(cut_io)? {
            Tick::Go => self.inner.write_at(buf, offset),
            Tick::Torn => {
                self.inner.write_at(&buf[..buf.len() / 2], offset)?;
                Err(cut_io(PowerCut::error("device state write")))
            }
        }
    }
    fn sync(&mut self) -> io::Result<()> {
        match self.cut.tick("device state sync").map_err(cut_io)? {
            Tick::Go => self.inner.sync(),
            Tick::Torn => Err(cut_io(PowerCut::error("device state sync"))),
        }
    }
}

/// Bytes of a header copy that reach the disk when a write of it is torn: the binary header
/// and the start of the JSON, so that the copy's checksum fails.
const TORN: usize = luks::LUKS2_BINARY_HEADER as usize + 64;

/// Test double of [`Crypt`] (see the module documentation).
#[derive(Debug)]
pub struct FakeCrypt {
    mapper_dir: PathBuf,
    open: RefCell<BTreeMap<String, PathBuf>>,
    cut: PowerCut,
}

impl FakeCrypt {
    /// Size of one header copy.
    pub const HDR_SIZE: u64 = 16 << 10;
    /// Where the data segment starts.
    pub const DATA_OFFSET: u64 = 64 << 10;
    /// Bytes of the keyslot area.
    pub const KEYSLOT_LEN: u64 = 4096;
    /// XOR mask of the stored key.
    pub const WRAP: u8 = 0x5c;

    /// Mappings are reported under `mapper_dir` (nothing is created there).
    pub fn new(mapper_dir: PathBuf) -> FakeCrypt {
        FakeCrypt::with_power_cut(mapper_dir, PowerCut::never())
    }

    /// Operations count towards `cut`.
    pub fn with_power_cut(mapper_dir: PathBuf, cut: PowerCut) -> FakeCrypt {
        FakeCrypt {
            mapper_dir,
            open: RefCell::new(BTreeMap::new()),
            cut,
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
    ) -> io::Result<()> {
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
    ) -> io::Result<Vec<u8>> {
        let mut buf = vec![0u8; len];
        part.read_exact_at(&mut buf, Self::DATA_OFFSET + offset)?;
        let k = key.as_bytes();
        for (i, b) in buf.iter_mut().enumerate() {
            *b ^= k[((offset + i as u64) % KEY_LEN as u64) as usize];
        }
        Ok(buf)
    }

    fn io(part: &dyn Partition, op: &'static str, err: io::Error) -> StorageError {
        StorageError::Io {
            op,
            path: part.describe().into(),
            err,
        }
    }

    fn failed(what: &str, part: &dyn Partition, stderr: &str) -> StorageError {
        StorageError::Command(CmdError {
            command: format!("fake cryptsetup {what} {}", part.describe()),
            status: "exit code 1".into(),
            stderr: stderr.into(),
        })
    }

    fn write(part: &dyn Partition, bytes: &[u8], at: u64) -> Result<(), StorageError> {
        part.write_all_at(bytes, at)
            .map_err(|e| Self::io(part, "writing the LUKS2 header of", e))
    }

    /// Rewrite both copies from the current one changed by `change`, primary first.
    fn update(
        &self,
        what: &str,
        part: &dyn Partition,
        change: impl FnOnce(&mut FakeHeader),
    ) -> Result<(), StorageError> {
        let tick = self.cut.tick(what)?;
        let probe = luks::probe(part)?;
        let Some(current) = probe.current() else {
            return Err(Self::failed(
                what,
                part,
                "Device is not a valid LUKS device.",
            ));
        };
        let mut header = FakeHeader {
            hdr_size: current.header.hdr_size,
            data_offset: current.header.data_offset.unwrap_or(Self::DATA_OFFSET),
            keyslot_len: Self::keyslot_len_of(current),
            seqid: current.seqid + 1,
            uuid: current.uuid.clone(),
            label: current.label.clone().unwrap_or_default(),
            tokens: current.tokens.clone(),
        };
        change(&mut header);
        Self::write(part, &header.copy(false), 0)?;
        if tick == Tick::Torn {
            return Err(PowerCut::error(what));
        }
        Self::write(part, &header.copy(true), header.hdr_size)?;
        part.sync().map_err(|e| Self::io(part, "syncing", e))
    }

    /// The keyslot area size a rewrite of `current` keeps (0: it has no keyslot).
    fn keyslot_len_of(current: &luks::HeaderCopy) -> u64 {
        if current.keyslots.is_empty() {
            0
        } else {
            Self::KEYSLOT_LEN
        }
    }

    fn keyslot_matches(part: &dyn Partition, key: &Key) -> Result<bool, StorageError> {
        let probe = luks::probe(part)?;
        let Some(current) = probe.current() else {
            return Err(Self::failed(
                "open",
                part,
                "Device is not a valid LUKS device.",
            ));
        };
        // A header without a keyslot opens with no key (cryptsetup: "No key available").
        let Some(area) = current.header.keyslot_areas.first().copied() else {
            return Ok(false);
        };
        let mut stored = vec![0u8; KEY_LEN];
        part.read_exact_at(&mut stored, area.0)
            .map_err(|e| Self::io(part, "reading keyslot of", e))?;
        Ok(stored == Self::wrapped(key.as_bytes()))
    }
}

impl Crypt for FakeCrypt {
    fn format_as(
        &self,
        part: &dyn Partition,
        key: &Key,
        label: &str,
        uuid: &str,
    ) -> Result<(), StorageError> {
        // As cryptsetup's luksFormat: `crypt_format` wipes the header area and writes both
        // copies with no keyslot; then `crypt_keyslot_add_by_volume_key` runs the PBKDF
        // (seconds), writes the keyslot area and both copies again, now naming the keyslot.
        // A power cut in those seconds leaves a valid header that no key opens.
        let tick = self.cut.tick("luksFormat")?;
        let mut header = FakeHeader {
            hdr_size: Self::HDR_SIZE,
            data_offset: Self::DATA_OFFSET,
            keyslot_len: 0,
            seqid: 1,
            uuid: uuid.into(),
            label: label.into(),
            tokens: BTreeMap::new(),
        };
        let h = Self::HDR_SIZE as usize;
        Self::write(part, &vec![0u8; 2 * h], 0)?;
        let primary = header.copy(false);
        if tick == Tick::Torn {
            Self::write(part, &primary[..TORN], 0)?;
            return Err(PowerCut::error("luksFormat"));
        }
        Self::write(part, &primary, 0)?;
        Self::write(part, &header.copy(true), Self::HDR_SIZE)?;
        part.sync().map_err(|e| Self::io(part, "syncing", e))?;

        let tick = self.cut.tick("luksFormat: adding the keyslot")?;
        let mut keyslot = Self::wrapped(key.as_bytes());
        keyslot.resize(Self::KEYSLOT_LEN as usize, 0xa5);
        Self::write(part, &keyslot, 2 * Self::HDR_SIZE)?;
        header.keyslot_len = Self::KEYSLOT_LEN;
        header.seqid += 1;
        Self::write(part, &header.copy(false), 0)?;
        if tick == Tick::Torn {
            return Err(PowerCut::error("luksFormat: adding the keyslot"));
        }
        Self::write(part, &header.copy(true), Self::HDR_SIZE)?;
        part.sync().map_err(|e| Self::io(part, "syncing", e))
    }

    fn set_label(&self, part: &dyn Partition, label: &str) -> Result<(), StorageError> {
        self.update("config --label", part, |h| h.label = label.into())
    }

    fn import_token(
        &self,
        part: &dyn Partition,
        json: &[u8],
        replace: Option<&str>,
    ) -> Result<(), StorageError> {
        let value: serde_json::Value = serde_json::from_slice(json)
            .map_err(|e| Self::failed("token import", part, &e.to_string()))?;
        let probe = luks::probe(part)?;
        let taken = probe
            .current()
            .map(|c| c.tokens.keys().cloned().collect::<Vec<_>>())
            .unwrap_or_default();
        let id = match replace {
            Some(id) => id.to_string(),
            None => (0..32)
                .map(|i| i.to_string())
                .find(|i| !taken.contains(i))
                .unwrap_or_default(),
        };
        if replace.is_none() && taken.contains(&id) {
            return Err(Self::failed("token import", part, "Token 0 in use."));
        }
        self.update("token import", part, |h| {
            h.tokens.insert(id, value);
        })
    }

    fn repair(&self, part: &dyn Partition) -> Result<(), StorageError> {
        let tick = self.cut.tick("repair")?;
        let probe = luks::probe(part)?;
        let Some(current) = probe.current() else {
            return Err(Self::failed(
                "repair",
                part,
                "Device is not a valid LUKS device.",
            ));
        };
        let header = FakeHeader {
            hdr_size: current.header.hdr_size,
            data_offset: current.header.data_offset.unwrap_or(Self::DATA_OFFSET),
            keyslot_len: Self::keyslot_len_of(current),
            seqid: current.seqid,
            uuid: current.uuid.clone(),
            label: current.label.clone().unwrap_or_default(),
            tokens: current.tokens.clone(),
        };
        // Write the copy that is not the intact one.
        let secondary = current.offset == 0;
        let copy = header.copy(secondary);
        let at = if secondary { header.hdr_size } else { 0 };
        if tick == Tick::Torn {
            Self::write(part, &copy[..TORN], at)?;
            return Err(PowerCut::error("repair"));
        }
        Self::write(part, &copy, at)?;
        part.sync().map_err(|e| Self::io(part, "syncing", e))
    }

    fn check_key(&self, part: &dyn Partition, key: &Key) -> Result<bool, StorageError> {
        Self::keyslot_matches(part, key)
    }

    fn open(&self, part: &dyn Partition, name: &str, key: &Key) -> Result<PathBuf, StorageError> {
        self.cut.tick_whole("open")?;
        if !Self::keyslot_matches(part, key)? {
            return Err(Self::failed(
                "open",
                part,
                "No key available with this passphrase.",
            ));
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
        self.cut.tick_whole("erase")?;
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
mod tests;
