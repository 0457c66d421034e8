//! The device's mutable state, kept off the FAT ESP: a raw partition (`aperture_state`) of
//! fixed areas, each area holding its record twice, the way boot loaders keep a redundant
//! environment (U-Boot's `CONFIG_ENV_OFFSET_REDUND`, Android's `bootloader_control`).
//!
//! Why not files on the ESP: FAT has no journal. Linux's vfat writes a renamed file's start
//! cluster and size into the new directory entry only at inode writeback, so a power cut after
//! write-fsync-rename-fsync(dir) can leave an empty file, or an entry pointing at clusters the
//! FAT already freed, and the next write then corrupts other files. One cut could so take the
//! anti-rollback floor, the install journal and the sealed disk keys at once (found by cutting a
//! QEMU appliance's power). Here no write can touch more than one copy of one area.
//!
//! ## Format
//! Each copy starts at a fixed offset ([`Area::offset`]) with a 32-byte header, then the payload:
//!
//! | bytes | field |
//! |---|---|
//! | 0..8 | magic `APSTATE1` |
//! | 8..12 | area id, u32 LE |
//! | 12..16 | format, u32 LE (1) |
//! | 16..24 | sequence number, u64 LE |
//! | 24..28 | payload length, u32 LE |
//! | 28..32 | CRC-32 of bytes 0..28 and the payload |
//!
//! Reading takes the valid copy with the newest sequence number (compared as serial numbers,
//! which may wrap); a copy whose magic, area,
//! length or CRC is wrong (never written, torn by a power cut, or zeroed) is ignored. Writing
//! puts sequence + 1 into the OTHER copy, syncs, and reads it back, so at every instant one
//! copy holds either the old or the new record. An empty payload means "no record"
//! ([`StateStore::clear`]); an area with no valid copy reads as no record.
//!
//! Nothing here is secret or signed: the records hold the anti-rollback floor (also kept in a
//! TPM NV counter where the board has one), journals, slot records with their signed
//! manifests (checked again when read), and TPM-sealed key blobs (useless without the TPM).

use std::fs::File;
use std::io::{self, Seek, SeekFrom};
use std::os::unix::fs::FileExt;

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::slot::Slot;

/// Size of the `aperture_state` partition the image builder lays out.
pub const PARTITION_BYTES: u64 = 4 << 20;

const MAGIC: &[u8; 8] = b"APSTATE1";
const FORMAT: u32 = 1;
/// Bytes of a copy's header.
pub const HEADER_BYTES: usize = 32;

/// One record area of the store.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Area {
    /// `aperture-update`: anti-rollback floor, committed slot, install journal, trust state.
    Update,
    /// `aperture-reset`: the reset journal.
    Reset,
    /// Boot control that needs a ledger beside its variables (Tegra).
    Boot,
    /// `aperture-storage`: the key source chosen at first boot and the sealed key blobs.
    Storage,
    /// `aperture-agent`: the device's own state (fleet identity, update loop).
    Agent,
    /// What slot A holds: its record, signed manifest and signature.
    SlotA,
    /// What slot B holds.
    SlotB,
}

impl Area {
    /// Every area, in on-disk order.
    pub const ALL: [Area; 7] = [
        Area::Update,
        Area::Reset,
        Area::Boot,
        Area::Storage,
        Area::Agent,
        Area::SlotA,
        Area::SlotB,
    ];

    /// The area holding what `slot` holds.
    pub fn slot(slot: Slot) -> Area {
        match slot {
            Slot::A => Area::SlotA,
            Slot::B => Area::SlotB,
        }
    }

    /// Name for messages.
    pub fn name(self) -> &'static str {
        match self {
            Area::Update => "update",
            Area::Reset => "reset",
            Area::Boot => "boot",
            Area::Storage => "storage",
            Area::Agent => "agent",
            Area::SlotA => "slot-a",
            Area::SlotB => "slot-b",
        }
    }

    fn id(self) -> u32 {
        Area::ALL.iter().position(|a| *a == self).unwrap_or(0) as u32 + 1
    }

    /// Bytes of one copy (header included).
    pub fn copy_bytes(self) -> u64 {
        match self {
            Area::SlotA | Area::SlotB => 512 << 10,
            _ => 64 << 10,
        }
    }

    /// The largest payload the area holds.
    pub fn max_payload(self) -> usize {
        self.copy_bytes() as usize - HEADER_BYTES
    }

    /// Offset of copy `copy` (0 or 1) from the start of the partition.
    pub fn offset(self, copy: usize) -> u64 {
        let before: u64 = Area::ALL
            .iter()
            .take_while(|a| **a != self)
            .map(|a| 2 * a.copy_bytes())
            .sum();
        before + copy as u64 * self.copy_bytes()
    }
}

/// Bytes the areas take from the start of the partition.
pub fn used_bytes() -> u64 {
    Area::ALL.iter().map(|a| 2 * a.copy_bytes()).sum()
}

/// Where the store lives: a partition, or a file in tests and in the image builder.
pub trait Medium {
    /// Its size in bytes.
    fn size(&self) -> io::Result<u64>;
    /// Fill `buf` from `offset`.
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()>;
    /// Write all of `buf` at `offset`.
    fn write_at(&mut self, buf: &[u8], offset: u64) -> io::Result<()>;
    /// Make the writes so far durable.
    fn sync(&mut self) -> io::Result<()>;
}

impl Medium for File {
    fn size(&self) -> io::Result<u64> {
        // A block device's metadata says 0 bytes; its end says how big it is.
        let mut f: &File = self;
        let end = f.seek(SeekFrom::End(0))?;
        Ok(end.max(self.metadata()?.len()))
    }
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        FileExt::read_exact_at(self, buf, offset)
    }
    fn write_at(&mut self, buf: &[u8], offset: u64) -> io::Result<()> {
        FileExt::write_all_at(self, buf, offset)
    }
    fn sync(&mut self) -> io::Result<()> {
        self.sync_data()
    }
}

impl<M: Medium + ?Sized> Medium for Box<M> {
    fn size(&self) -> io::Result<u64> {
        (**self).size()
    }
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        (**self).read_at(buf, offset)
    }
    fn write_at(&mut self, buf: &[u8], offset: u64) -> io::Result<()> {
        (**self).write_at(buf, offset)
    }
    fn sync(&mut self) -> io::Result<()> {
        (**self).sync()
    }
}

/// What went wrong with the store.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// Reading or writing the medium failed.
    #[error("{what} area {area} of the device state ({medium})")]
    Io {
        /// What was being done.
        what: &'static str,
        /// The area.
        area: &'static str,
        /// The partition or file.
        medium: String,
        /// Cause.
        #[source]
        err: io::Error,
    },
    /// The partition is smaller than the areas need.
    #[error("the device state partition {medium} has {size} bytes, fewer than the {need} its areas need; the disk was not laid out by this Aperture: reflash it")]
    TooSmall {
        /// The partition or file.
        medium: String,
        /// Its size.
        size: u64,
        /// What is needed.
        need: u64,
    },
    /// A record does not fit its area.
    #[error(
        "a record of {len} bytes does not fit area {area} of the device state (at most {max})"
    )]
    TooLarge {
        /// The area.
        area: &'static str,
        /// Record size.
        len: usize,
        /// Largest payload.
        max: usize,
    },
    /// A written copy did not read back as written.
    #[error("area {area} of the device state ({medium}) did not read back as written: the medium is failing")]
    ReadBack {
        /// The area.
        area: &'static str,
        /// The partition or file.
        medium: String,
    },
    /// A record's JSON does not parse.
    #[error(
        "the {area} record of the device state ({medium}) does not parse as this program's format"
    )]
    Json {
        /// The area.
        area: &'static str,
        /// The partition or file.
        medium: String,
        /// Cause.
        #[source]
        err: serde_json::Error,
    },
}

/// One valid copy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Copy {
    /// Which copy (0 or 1).
    pub index: usize,
    /// Its sequence number.
    pub seq: u64,
    /// Its payload.
    pub payload: Vec<u8>,
}

/// The store on a medium.
#[derive(Debug)]
pub struct StateStore<M: Medium> {
    medium: M,
    name: String,
}

impl StateStore<File> {
    /// Open the store on the partition or file at `path` for reading and writing.
    pub fn open(path: &std::path::Path) -> Result<StateStore<File>, StoreError> {
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .map_err(|err| StoreError::Io {
                what: "opening",
                area: "(all)",
                medium: path.display().to_string(),
                err,
            })?;
        StateStore::new(file, path.display().to_string())
    }
}

impl<M: Medium> StateStore<M> {
    /// The store on `medium`, called `name` in messages (its path).
    pub fn new(medium: M, name: impl Into<String>) -> Result<StateStore<M>, StoreError> {
        let name = name.into();
        let size = medium.size().map_err(|err| StoreError::Io {
            what: "sizing",
            area: "(all)",
            medium: name.clone(),
            err,
        })?;
        if size < used_bytes() {
            return Err(StoreError::TooSmall {
                medium: name,
                size,
                need: used_bytes(),
            });
        }
        Ok(StateStore { medium, name })
    }

    /// The medium's name (its path).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The medium.
    pub fn medium(&self) -> &M {
        &self.medium
    }

    /// The medium, mutably (tests cut the power through it).
    pub fn medium_mut(&mut self) -> &mut M {
        &mut self.medium
    }

    /// Give the medium back.
    pub fn into_medium(self) -> M {
        self.medium
    }

    fn io(&self, what: &'static str, area: Area) -> impl FnOnce(io::Error) -> StoreError + '_ {
        move |err| StoreError::Io {
            what,
            area: area.name(),
            medium: self.name.clone(),
            err,
        }
    }

    /// Copy `index` of `area` if it is valid.
    pub fn copy(&self, area: Area, index: usize) -> Result<Option<Copy>, StoreError> {
        let mut header = [0u8; HEADER_BYTES];
        self.medium
            .read_at(&mut header, area.offset(index))
            .map_err(self.io("reading", area))?;
        if &header[0..8] != MAGIC
            || u32_at(&header, 8) != area.id()
            || u32_at(&header, 12) != FORMAT
        {
            return Ok(None);
        }
        let len = u32_at(&header, 24) as usize;
        if len > area.max_payload() {
            return Ok(None);
        }
        let mut payload = vec![0u8; len];
        self.medium
            .read_at(&mut payload, area.offset(index) + HEADER_BYTES as u64)
            .map_err(self.io("reading", area))?;
        if crc(&header[..28], &payload) != u32_at(&header, 28) {
            return Ok(None);
        }
        Ok(Some(Copy {
            index,
            seq: u64::from_le_bytes(header[16..24].try_into().unwrap_or_default()),
            payload,
        }))
    }

    /// The newest valid copy of `area`, if any.
    pub fn newest(&self, area: Area) -> Result<Option<Copy>, StoreError> {
        let a = self.copy(area, 0)?;
        let b = self.copy(area, 1)?;
        Ok(match (a, b) {
            (Some(a), Some(b)) => Some(if newer(b.seq, a.seq) { b } else { a }),
            (a, b) => a.or(b),
        })
    }

    /// The record in `area`: `None` when there is none (never written, cleared, or no copy
    /// survived intact).
    pub fn read(&self, area: Area) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self
            .newest(area)?
            .map(|c| c.payload)
            .filter(|p| !p.is_empty()))
    }

    /// Replace the record in `area` with `payload`, atomically with respect to a power cut;
    /// returns the new sequence number.
    pub fn write(&mut self, area: Area, payload: &[u8]) -> Result<u64, StoreError> {
        if payload.len() > area.max_payload() {
            return Err(StoreError::TooLarge {
                area: area.name(),
                len: payload.len(),
                max: area.max_payload(),
            });
        }
        let (index, seq) = match self.newest(area)? {
            Some(c) => (1 - c.index, c.seq.wrapping_add(1)),
            None => (0, 1),
        };
        let mut buf = Vec::with_capacity(HEADER_BYTES + payload.len());
        buf.extend_from_slice(MAGIC);
        buf.extend_from_slice(&area.id().to_le_bytes());
        buf.extend_from_slice(&FORMAT.to_le_bytes());
        buf.extend_from_slice(&seq.to_le_bytes());
        buf.extend_from_slice(&(payload.len() as u32).to_le_bytes());
        let sum = crc(&buf, payload);
        buf.extend_from_slice(&sum.to_le_bytes());
        buf.extend_from_slice(payload);
        self.medium
            .write_at(&buf, area.offset(index))
            .map_err(self.io("writing", area))?;
        self.medium.sync().map_err(self.io("syncing", area))?;
        match self.copy(area, index)? {
            Some(c) if c.seq == seq && c.payload == payload => Ok(seq),
            _ => Err(StoreError::ReadBack {
                area: area.name(),
                medium: self.name.clone(),
            }),
        }
    }

    /// Remove the record in `area` (an empty record, written like any other).
    pub fn clear(&mut self, area: Area) -> Result<(), StoreError> {
        if self.read(area)?.is_some() {
            self.write(area, &[])?;
        }
        Ok(())
    }

    /// The record in `area` as JSON.
    pub fn read_json<T: DeserializeOwned>(&self, area: Area) -> Result<Option<T>, StoreError> {
        match self.read(area)? {
            None => Ok(None),
            Some(bytes) => {
                serde_json::from_slice(&bytes)
                    .map(Some)
                    .map_err(|err| StoreError::Json {
                        area: area.name(),
                        medium: self.name.clone(),
                        err,
                    })
            }
        }
    }

    /// Replace the record in `area` with `value` as JSON.
    pub fn write_json<T: Serialize>(&mut self, area: Area, value: &T) -> Result<u64, StoreError> {
        let bytes = serde_json::to_vec(value).map_err(|err| StoreError::Json {
            area: area.name(),
            medium: self.name.clone(),
            err,
        })?;
        self.write(area, &bytes)
    }
}

/// Whether sequence number `a` follows `b`, in serial-number arithmetic (RFC 1982, as U-Boot's
/// redundant environment compares its flags): the numbers may wrap. A copy holding `u64::MAX`
/// (never reached by writes, but a corrupt or planted copy can say so) made the next write
/// overflow, or, wrapped to 0, lose to the copy it replaced (found by fuzz target
/// `state_store`).
fn newer(a: u64, b: u64) -> bool {
    (a.wrapping_sub(b) as i64) > 0
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().unwrap_or_default())
}

fn crc(header: &[u8], payload: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(header);
    h.update(payload);
    h.finalize()
}

pub mod mem;

#[cfg(test)]
mod tests;
