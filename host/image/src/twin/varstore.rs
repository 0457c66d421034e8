//! EDK2's authenticated variable store inside a firmware volume: the non-volatile UEFI
//! variables of an AAVMF (ArmVirtQemu) `VARS.fd` flash image, read and changed offline while
//! no firmware runs on it. The Jetson twin keeps NVIDIA's boot-chain variables there, so the
//! guest's efivarfs writes (real `SetVariable` calls into this flash) and the twin's power-on
//! rules meet in one store.
//!
//! Layout (EDK2 `MdePkg/Include/Pi/PiFirmwareVolume.h`,
//! `MdeModulePkg/Include/Guid/VariableFormat.h`, `AuthenticatedVariableFormat.h`):
//!
//! | at | what |
//! |---|---|
//! | 0 | `EFI_FIRMWARE_VOLUME_HEADER`: FileSystemGuid `gEfiSystemNvDataFvGuid` (16..32), FvLength u64 (32), `_FVH` (40), Attributes u32 (44), HeaderLength u16 (48), Checksum u16 (50: the header's u16 words sum to 0), Revision u8 (55), then the block map |
//! | HeaderLength | `VARIABLE_STORE_HEADER` (28 bytes): Signature GUID `gEfiAuthenticatedVariableGuid`, Size u32 (store header and variables, without the FV header), Format 0x5A, State 0xFE |
//! | then | `AUTHENTICATED_VARIABLE_HEADER` records (60 bytes: StartId 0x55AA u16, State u8, reserved u8, Attributes u32, MonotonicCount u64, TimeStamp 16 bytes, PubKeyIndex u32, NameSize u32, DataSize u32, VendorGuid), each followed by its UTF-16LE NUL-terminated name and its data, unpadded (`ALIGNMENT` 1); the next record starts on a 4-byte boundary (`HEADER_ALIGNMENT`) |
//! | after the last record | free space, all 0xFF (erased flash) up to the store's end |
//!
//! A record's State only ever loses bits, as flash programming does: `VAR_HEADER_VALID_ONLY`
//! 0x7F (header written, data not), `VAR_ADDED` 0x3F (complete), then `& VAR_IN_DELETED_TRANSITION`
//! 0xFE (being replaced) and `& VAR_DELETED` 0xFD (obsolete). The live copy of a name is the one
//! whose State is `VAR_ADDED`; a copy in deleted transition counts only when no `VAR_ADDED`
//! copy exists (the firmware was cut while replacing it; EDK2
//! `MdeModulePkg/Universal/Variable/RuntimeDxe/VariableParsing.c`, `FindVariableEx`).
//!
//! Changes are made the way the firmware makes them, so that it reads the result as its own:
//! a new value is appended as a `VAR_ADDED` record and the old record's State becomes
//! `VAR_ADDED & VAR_IN_DELETED_TRANSITION & VAR_DELETED` (0x3C); a deleted variable's State
//! becomes `& VAR_DELETED`. When the free space runs out, or is not clean 0xFF (which EDK2's
//! `VariableWriteServiceInitialize` also answers with a reclaim), the store is compacted to its
//! live records first. The fault-tolerant-write areas after the store are left alone: the harness
//! only writes between boots, never while the firmware could hold a pending write there.
//!
//! A blank flash image (Debian's `AAVMF_VARS.fd` ships all zeros; the firmware formats it at its
//! first boot) is formatted as ArmVirtQemu's NOR flash driver does
//! (`ArmVirtPkg/.../NorFlashFvb.c` `InitializeFvAndVariableStoreHeaders`, sizes from
//! `ArmVirtQemu.fdf`: 256 KiB of variables, then 256 KiB each of FTW working and spare space,
//! erased), which a test checks byte for byte against Debian's pre-enrolled `AAVMF_VARS.ms.fd`.

use std::path::{Path, PathBuf};

use aperture_gpt::Guid;

/// `gEfiSystemNvDataFvGuid`: the FileSystemGuid of a variable firmware volume.
pub const NV_DATA_FV_GUID: Guid = Guid::from_u128(0xfff12b8d_7696_4c8b_a985_2747075b4f50);
/// `gEfiAuthenticatedVariableGuid`: the signature of an authenticated variable store.
pub const AUTH_STORE_GUID: Guid = Guid::from_u128(0xaaf32c78_947b_439a_a180_2e144ec37792);
/// `gEfiVariableGuid`: the signature of a plain (non-authenticated) variable store.
pub const PLAIN_STORE_GUID: Guid = Guid::from_u128(0xddcf3616_3275_4164_98b6_fe85707ffe7d);

/// Record states (`VariableFormat.h`).
pub mod state {
    /// Header written, data not yet.
    pub const HEADER_VALID_ONLY: u8 = 0x7f;
    /// Complete.
    pub const ADDED: u8 = 0x3f;
    /// Mask: being replaced.
    pub const IN_DELETED_TRANSITION: u8 = 0xfe;
    /// Mask: obsolete.
    pub const DELETED: u8 = 0xfd;
}

/// `EFI_VARIABLE_AUTHENTICATED_WRITE_ACCESS | EFI_VARIABLE_TIME_BASED_AUTHENTICATED_WRITE_ACCESS`:
/// variables only a signed update may change (Secure Boot keys), which this module never writes.
pub const AUTHENTICATED_ATTRIBUTES: u32 = 0x10 | 0x20;

const START_ID: u16 = 0x55aa;
const STORE_HEADER_LEN: usize = 28;
const RECORD_HEADER_LEN: usize = 60;
const FORMATTED: u8 = 0x5a;
const HEALTHY: u8 = 0xfe;

/// ArmVirtQemu's flash geometry (`ArmVirtQemu.fdf`): block size, variable store, FTW areas.
const BLOCK: u64 = 0x40000;
const FV_LENGTH: u64 = 3 * BLOCK;
const FV_HEADER_LEN: usize = 0x48;
/// `EFI_FVB2_READ_ENABLED_CAP | READ_STATUS | WRITE_ENABLED_CAP | WRITE_STATUS | STICKY_WRITE
/// | MEMORY_MAPPED | ERASE_POLARITY`, as the NOR flash driver writes them.
const FV_ATTRIBUTES: u32 = 0xe36;

/// What is wrong with a variable store.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum VarStoreError {
    /// The file could not be read or written.
    #[error("{op} {}", path.display())]
    Io {
        /// What was being done.
        op: &'static str,
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        err: std::io::Error,
    },
    /// Writing the store back failed.
    #[error(transparent)]
    Write(#[from] aperture_sys::fs::FsError),
    /// Not a variable firmware volume, or a damaged one.
    #[error(
        "not an EDK2 variable store: {reason} (copy a fresh one from \
         /usr/share/AAVMF/AAVMF_VARS.fd, package qemu-efi-aarch64)"
    )]
    NotAStore {
        /// What did not match.
        reason: String,
    },
    /// A record runs past the store or has an impossible size.
    #[error(
        "the variable record at byte {offset:#x} is damaged: {reason} (the firmware would \
         reclaim the store; start from a fresh copy of the VARS file)"
    )]
    Corrupt {
        /// The record's offset in the file.
        offset: usize,
        /// What is wrong.
        reason: String,
    },
    /// A plain store, which AAVMF does not make.
    #[error(
        "the variable store is a plain (non-authenticated) one; only AAVMF's authenticated \
         store is supported (use /usr/share/AAVMF/AAVMF_VARS.fd)"
    )]
    PlainStore,
    /// An authenticated variable: only a signed update may change it.
    #[error(
        "{name} ({guid}) is an authenticated variable (attributes {attributes:#x}); it needs a \
         signed update, which this store writer does not make"
    )]
    Authenticated {
        /// The name.
        name: String,
        /// The vendor GUID.
        guid: Guid,
        /// Its attributes.
        attributes: u32,
    },
    /// No room, even after compacting.
    #[error(
        "the variable store has no room for {name} ({needed} bytes; {free} free after \
         compacting): delete variables or start from a fresh VARS file"
    )]
    Full {
        /// The variable.
        name: String,
        /// Bytes its record needs.
        needed: usize,
        /// Bytes free.
        free: usize,
    },
}

/// A live variable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Variable {
    /// Its name.
    pub name: String,
    /// Its vendor GUID.
    pub guid: Guid,
    /// Its attributes (`EFI_VARIABLE_NON_VOLATILE` 1, `BOOTSERVICE_ACCESS` 2, `RUNTIME_ACCESS` 4, ...).
    pub attributes: u32,
    /// Its value.
    pub data: Vec<u8>,
}

/// One record as stored, live or not.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// Offset in the file.
    pub offset: usize,
    /// State byte.
    pub state: u8,
    /// Bytes up to the next record (header, name, data, alignment).
    pub len: usize,
    /// The variable it holds.
    pub var: Variable,
}

impl Record {
    /// Whether the firmware may read this record as the variable's value.
    pub fn is_candidate(&self) -> bool {
        self.state == state::ADDED || self.state == state::ADDED & state::IN_DELETED_TRANSITION
    }
}

/// A variable store in memory: the whole flash image, parsed.
#[derive(Debug, Clone)]
pub struct VarStore {
    bytes: Vec<u8>,
    /// Offset of the first record.
    first: usize,
    /// End of the store (FV header length + store size).
    end: usize,
    records: Vec<Record>,
    /// Offset of the first byte after the last record.
    free: usize,
}

fn u16_at(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn guid_at(b: &[u8], at: usize) -> Guid {
    let mut g = [0u8; 16];
    g.copy_from_slice(&b[at..at + 16]);
    Guid::from_gpt_bytes(g)
}

fn align4(n: usize) -> usize {
    (n + 3) & !3
}

fn utf16z(name: &str) -> Vec<u8> {
    name.encode_utf16()
        .chain(std::iter::once(0))
        .flat_map(u16::to_le_bytes)
        .collect()
}

fn not_a_store(reason: impl Into<String>) -> VarStoreError {
    VarStoreError::NotAStore {
        reason: reason.into(),
    }
}

impl VarStore {
    /// Whether `bytes` is a flash image no firmware has formatted yet (all 0x00 or all 0xFF
    /// where the firmware volume would be).
    pub fn is_blank(bytes: &[u8]) -> bool {
        let head = &bytes[..bytes.len().min(FV_LENGTH as usize)];
        head.iter().all(|&b| b == 0) || head.iter().all(|&b| b == 0xff)
    }

    /// Format a blank flash image the way ArmVirtQemu's NOR flash driver does at its first
    /// boot: the volume erased (0xFF), its header and an empty authenticated store; the rest of
    /// the image untouched.
    pub fn format(mut bytes: Vec<u8>) -> Result<VarStore, VarStoreError> {
        if (bytes.len() as u64) < FV_LENGTH || !(bytes.len() as u64).is_multiple_of(BLOCK) {
            return Err(not_a_store(format!(
                "{} bytes cannot hold AAVMF's {FV_LENGTH:#x}-byte variable volume",
                bytes.len()
            )));
        }
        bytes[..FV_LENGTH as usize].fill(0xff);
        let mut h = vec![0u8; FV_HEADER_LEN];
        h[16..32].copy_from_slice(&NV_DATA_FV_GUID.to_gpt_bytes());
        h[32..40].copy_from_slice(&FV_LENGTH.to_le_bytes());
        h[40..44].copy_from_slice(b"_FVH");
        h[44..48].copy_from_slice(&FV_ATTRIBUTES.to_le_bytes());
        h[48..50].copy_from_slice(&(FV_HEADER_LEN as u16).to_le_bytes());
        h[55] = 2; // revision
        let blocks = (bytes.len() as u64 / BLOCK) as u32;
        h[56..60].copy_from_slice(&blocks.to_le_bytes());
        h[60..64].copy_from_slice(&(BLOCK as u32).to_le_bytes());
        // The block map ends with a zero entry (64..72). The checksum makes the words sum to 0.
        let sum = (0..FV_HEADER_LEN)
            .step_by(2)
            .fold(0u16, |s, i| s.wrapping_add(u16_at(&h, i)));
        h[50..52].copy_from_slice(&0u16.wrapping_sub(sum).to_le_bytes());
        bytes[..FV_HEADER_LEN].copy_from_slice(&h);
        let s = FV_HEADER_LEN;
        bytes[s..s + 16].copy_from_slice(&AUTH_STORE_GUID.to_gpt_bytes());
        let size = (BLOCK as usize - FV_HEADER_LEN) as u32;
        bytes[s + 16..s + 20].copy_from_slice(&size.to_le_bytes());
        bytes[s + 20] = FORMATTED;
        bytes[s + 21] = HEALTHY;
        bytes[s + 22..s + STORE_HEADER_LEN].fill(0);
        VarStore::parse(bytes)
    }

    /// Parse a formatted flash image.
    pub fn parse(bytes: Vec<u8>) -> Result<VarStore, VarStoreError> {
        if bytes.len() < FV_HEADER_LEN + STORE_HEADER_LEN {
            return Err(not_a_store(format!("only {} bytes", bytes.len())));
        }
        if &bytes[40..44] != b"_FVH" {
            return Err(not_a_store(if VarStore::is_blank(&bytes) {
                "the image is blank (never booted); format it first".to_string()
            } else {
                "no firmware volume signature `_FVH` at byte 40".to_string()
            }));
        }
        if guid_at(&bytes, 16) != NV_DATA_FV_GUID {
            return Err(not_a_store(format!(
                "the firmware volume's file system is {}, not the variable store's {NV_DATA_FV_GUID}",
                guid_at(&bytes, 16)
            )));
        }
        let header_len = usize::from(u16_at(&bytes, 48));
        let fv_len = u64::from_le_bytes(bytes[32..40].try_into().unwrap_or([0; 8]));
        if header_len < 56
            || !header_len.is_multiple_of(2)
            || header_len + STORE_HEADER_LEN > bytes.len()
        {
            return Err(not_a_store(format!("header length {header_len}")));
        }
        if fv_len > bytes.len() as u64 {
            return Err(not_a_store(format!(
                "the volume claims {fv_len} bytes, the file has {}",
                bytes.len()
            )));
        }
        let sum = (0..header_len)
            .step_by(2)
            .fold(0u16, |s, i| s.wrapping_add(u16_at(&bytes, i)));
        if sum != 0 {
            return Err(not_a_store(format!(
                "the volume header's checksum is wrong (words sum to {sum:#06x})"
            )));
        }
        match guid_at(&bytes, header_len) {
            g if g == AUTH_STORE_GUID => {}
            g if g == PLAIN_STORE_GUID => return Err(VarStoreError::PlainStore),
            g => {
                return Err(not_a_store(format!(
                    "the store's signature is {g}, not {AUTH_STORE_GUID}"
                )))
            }
        }
        let size = u32_at(&bytes, header_len + 16) as usize;
        let (format, health) = (bytes[header_len + 20], bytes[header_len + 21]);
        if format != FORMATTED || health != HEALTHY {
            return Err(not_a_store(format!(
                "the store is not formatted and healthy (format {format:#x}, state {health:#x})"
            )));
        }
        let end = header_len + size;
        if size < STORE_HEADER_LEN || end as u64 > fv_len {
            return Err(not_a_store(format!(
                "the store's size {size:#x} does not fit the volume"
            )));
        }
        let first = align4(header_len + STORE_HEADER_LEN);
        let mut store = VarStore {
            bytes,
            first,
            end,
            records: Vec::new(),
            free: first,
        };
        store.scan()?;
        Ok(store)
    }

    /// Walk the records from the first to the first byte that starts none.
    fn scan(&mut self) -> Result<(), VarStoreError> {
        let b = &self.bytes;
        let mut at = self.first;
        let mut records = Vec::new();
        while at + RECORD_HEADER_LEN <= self.end && u16_at(b, at) == START_ID {
            let corrupt = |reason: String| VarStoreError::Corrupt { offset: at, reason };
            let name_size = u32_at(b, at + 36) as usize;
            let data_size = u32_at(b, at + 40) as usize;
            let name_at = at + RECORD_HEADER_LEN;
            let data_at = name_at.saturating_add(name_size);
            let stop = data_at.saturating_add(data_size);
            if stop > self.end {
                return Err(corrupt(format!(
                    "name {name_size} and data {data_size} bytes run past the store's end {:#x}",
                    self.end
                )));
            }
            if name_size < 2 || !name_size.is_multiple_of(2) {
                return Err(corrupt(format!("name size {name_size}")));
            }
            let units: Vec<u16> = b[name_at..data_at]
                .chunks_exact(2)
                .map(|c| u16::from_le_bytes([c[0], c[1]]))
                .take_while(|&u| u != 0)
                .collect();
            let next = align4(stop);
            records.push(Record {
                offset: at,
                state: b[at + 2],
                len: next - at,
                var: Variable {
                    name: String::from_utf16_lossy(&units),
                    guid: guid_at(b, at + 44),
                    attributes: u32_at(b, at + 4),
                    data: b[data_at..stop].to_vec(),
                },
            });
            at = next;
        }
        self.free = at.min(self.end);
        self.records = records;
        Ok(())
    }

    /// Read and parse the flash image `path`, formatting it in memory first if it is blank.
    pub fn open(path: &Path) -> Result<VarStore, VarStoreError> {
        let bytes = std::fs::read(path).map_err(|err| VarStoreError::Io {
            op: "reading the UEFI variable store",
            path: path.to_path_buf(),
            err,
        })?;
        if VarStore::is_blank(&bytes) {
            VarStore::format(bytes)
        } else {
            VarStore::parse(bytes)
        }
    }

    /// Write the image back to `path` (the firmware must not be running on it).
    pub fn save(&self, path: &Path) -> Result<(), VarStoreError> {
        Ok(aperture_sys::fs::write_atomic(path, &self.bytes, 0o644)?)
    }

    /// The whole flash image.
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// Every record, in store order, live or not.
    pub fn records(&self) -> &[Record] {
        &self.records
    }

    /// Free bytes after the last record.
    pub fn free_bytes(&self) -> usize {
        self.end - self.free
    }

    /// Whether the free space is all 0xFF, as the firmware expects it.
    pub fn free_is_clean(&self) -> bool {
        self.bytes[self.free..self.end].iter().all(|&b| b == 0xff)
    }

    /// Index of the live record of `name`/`guid`.
    fn live(&self, name: &str, guid: Guid) -> Option<usize> {
        let mut transition = None;
        for (i, r) in self.records.iter().enumerate() {
            if r.var.name == name && r.var.guid == guid {
                if r.state == state::ADDED {
                    return Some(i);
                }
                if r.is_candidate() && transition.is_none() {
                    transition = Some(i);
                }
            }
        }
        transition
    }

    /// The live value of `name`/`guid`.
    pub fn get(&self, name: &str, guid: Guid) -> Option<&Variable> {
        self.live(name, guid).map(|i| &self.records[i].var)
    }

    /// Every live variable, in store order.
    pub fn variables(&self) -> Vec<&Variable> {
        self.records
            .iter()
            .enumerate()
            .filter(|(i, r)| self.live(&r.var.name, r.var.guid) == Some(*i))
            .map(|(_, r)| &r.var)
            .collect()
    }

    /// Set `name`/`guid` to `data` with `attributes`; returns whether anything changed (the
    /// same value and attributes write nothing, as in EDK2's `UpdateVariable`).
    pub fn set(
        &mut self,
        name: &str,
        guid: Guid,
        attributes: u32,
        data: &[u8],
    ) -> Result<bool, VarStoreError> {
        let old = self.live(name, guid);
        if let Some(i) = old {
            let v = &self.records[i].var;
            if v.attributes == attributes && v.data == data {
                return Ok(false);
            }
            if v.attributes & AUTHENTICATED_ATTRIBUTES != 0 {
                return Err(VarStoreError::Authenticated {
                    name: name.into(),
                    guid,
                    attributes: v.attributes,
                });
            }
        }
        if attributes & AUTHENTICATED_ATTRIBUTES != 0 {
            return Err(VarStoreError::Authenticated {
                name: name.into(),
                guid,
                attributes,
            });
        }
        let name16 = utf16z(name);
        let mut rec = vec![0u8; RECORD_HEADER_LEN];
        rec[0..2].copy_from_slice(&START_ID.to_le_bytes());
        rec[2] = state::ADDED;
        rec[4..8].copy_from_slice(&attributes.to_le_bytes());
        rec[36..40].copy_from_slice(&(name16.len() as u32).to_le_bytes());
        rec[40..44].copy_from_slice(&(data.len() as u32).to_le_bytes());
        rec[44..60].copy_from_slice(&guid.to_gpt_bytes());
        rec.extend_from_slice(&name16);
        rec.extend_from_slice(data);
        self.make_room(name, align4(rec.len()))?;
        let at = self.free;
        self.bytes[at..at + rec.len()].copy_from_slice(&rec);
        // After compacting, the old record moved; find it again by name.
        if old.is_some() {
            if let Some(i) = self.live(name, guid) {
                let off = self.records[i].offset;
                self.bytes[off + 2] &= state::IN_DELETED_TRANSITION & state::DELETED;
            }
        }
        self.scan()?;
        Ok(true)
    }

    /// Delete `name`/`guid`; returns whether it existed.
    pub fn delete(&mut self, name: &str, guid: Guid) -> Result<bool, VarStoreError> {
        let Some(i) = self.live(name, guid) else {
            return Ok(false);
        };
        let r = &self.records[i];
        if r.var.attributes & AUTHENTICATED_ATTRIBUTES != 0 {
            return Err(VarStoreError::Authenticated {
                name: name.into(),
                guid,
                attributes: r.var.attributes,
            });
        }
        // Every candidate copy goes: one in deleted transition would otherwise come back.
        let offsets: Vec<usize> = self
            .records
            .iter()
            .filter(|r| r.var.name == name && r.var.guid == guid && r.is_candidate())
            .map(|r| r.offset)
            .collect();
        for off in offsets {
            self.bytes[off + 2] &= state::DELETED;
        }
        self.scan()?;
        Ok(true)
    }

    /// Ensure `needed` clean bytes after the last record, compacting when the free space is
    /// too small or not erased.
    fn make_room(&mut self, name: &str, needed: usize) -> Result<(), VarStoreError> {
        if self.free_bytes() >= needed && self.free_is_clean() {
            return Ok(());
        }
        self.compact()?;
        if self.free_bytes() < needed {
            return Err(VarStoreError::Full {
                name: name.into(),
                needed,
                free: self.free_bytes(),
            });
        }
        Ok(())
    }

    /// Rewrite the store with only its live records, each `VAR_ADDED`, and erase the rest (what
    /// EDK2's `Reclaim` leaves).
    pub fn compact(&mut self) -> Result<(), VarStoreError> {
        let live: Vec<usize> = (0..self.records.len())
            .filter(|&i| {
                let v = &self.records[i].var;
                self.live(&v.name, v.guid) == Some(i)
            })
            .collect();
        let mut out = Vec::new();
        for i in live {
            let r = &self.records[i];
            let mut rec = self.bytes[r.offset..r.offset + r.len].to_vec();
            rec[2] = state::ADDED;
            let used = RECORD_HEADER_LEN + u32_at(&rec, 36) as usize + u32_at(&rec, 40) as usize;
            rec[used..].fill(0xff);
            out.extend_from_slice(&rec);
        }
        let region = &mut self.bytes[self.first..self.end];
        region.fill(0xff);
        region[..out.len()].copy_from_slice(&out);
        self.scan()
    }
}

#[cfg(test)]
#[path = "varstore_tests.rs"]
mod tests;
