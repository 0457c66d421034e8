//! Reading and checking a GUID partition table from a file or block device, falling back to
//! the backup copy when the primary one is damaged.

use std::io::{Read, Seek, SeekFrom};

use crate::disk::{decode_entry, Header, SIGNATURE};
use crate::error::{GptError, HeaderCopy, Result};
use crate::guid::Guid;

/// A partition table as read from a disk.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Gpt {
    /// The disk GUID.
    pub disk_guid: Guid,
    /// The logical sector size the table was found with (512 or 4096).
    pub sector_size: u64,
    /// First sector partitions may use.
    pub first_usable_lba: u64,
    /// Last sector partitions may use.
    pub last_usable_lba: u64,
    /// Which copy the table was read from: [`HeaderCopy::Backup`] means the primary copy is
    /// damaged and should be rewritten.
    pub header: HeaderCopy,
    /// Why the primary copy was refused, when the backup was used.
    pub primary_problem: Option<String>,
    /// The used entries, in table order.
    pub partitions: Vec<Partition>,
}

/// One used entry of a partition table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Partition {
    /// 1-based entry number: the `3` of `/dev/vda3`.
    pub index: u32,
    /// The partition label (`PARTLABEL`).
    pub name: String,
    /// The partition type GUID.
    pub type_guid: Guid,
    /// The partition's own GUID (`PARTUUID`).
    pub unique_guid: Guid,
    /// First sector, inclusive.
    pub first_lba: u64,
    /// Last sector, inclusive.
    pub last_lba: u64,
    /// Attribute bits (see [`crate::attr`]).
    pub attributes: u64,
    /// The sector size the LBAs count in.
    pub sector_size: u64,
}

impl Partition {
    /// Byte offset of the partition from the start of the disk.
    pub fn offset(&self) -> u64 {
        self.first_lba * self.sector_size
    }

    /// Size of the partition in bytes.
    pub fn size(&self) -> u64 {
        (self.last_lba - self.first_lba + 1) * self.sector_size
    }
}

impl Gpt {
    /// The partition labelled `name`, if there is one (the first, should there be several).
    pub fn find(&self, name: &str) -> Option<&Partition> {
        self.partitions.iter().find(|p| p.name == name)
    }
}

/// Reads the partition table of a disk of `disk_size` bytes.
///
/// The sector size is found by looking for the header signature at 512 and then 4096 bytes
/// (and at the matching places at the end). The primary copy is checked first: signature,
/// header CRC, its own position, field ranges, entry-array CRC and every used entry (inside
/// the usable area, not overlapping another). If any check fails the backup copy in the last
/// sector is read the same way, and [`Gpt::header`] and [`Gpt::primary_problem`] say so. If
/// both fail, [`GptError::NoValidGpt`] carries both reasons.
pub fn read_gpt<R: Read + Seek + ?Sized>(file: &mut R, disk_size: u64) -> Result<Gpt> {
    let sector_size = probe_sector_size(file, disk_size);
    let total = disk_size / sector_size;
    if total < 3 {
        return Err(GptError::DiskTooSmall {
            disk_size,
            sector_size,
            needed: 3 * sector_size,
        });
    }
    match read_copy(file, sector_size, total, HeaderCopy::Primary, 1) {
        Ok(gpt) => Ok(gpt),
        Err(primary) => match read_copy(file, sector_size, total, HeaderCopy::Backup, total - 1) {
            Ok(mut gpt) => {
                gpt.primary_problem = Some(primary.to_string());
                Ok(gpt)
            }
            Err(backup) => Err(GptError::NoValidGpt {
                primary: Box::new(primary),
                backup: Box::new(backup),
            }),
        },
    }
}

/// 512 unless a header signature shows up only where a 4096-byte-sector disk keeps it. A read
/// that fails here is not reported: the real read of the same sector follows and reports it.
fn probe_sector_size<R: Read + Seek + ?Sized>(file: &mut R, disk_size: u64) -> u64 {
    let mut signature_at = |offset: u64| {
        let mut magic = [0u8; 8];
        offset + 8 <= disk_size
            && file.seek(SeekFrom::Start(offset)).is_ok()
            && file.read_exact(&mut magic).is_ok()
            && &magic == SIGNATURE
    };
    let end = |size: u64| disk_size.saturating_sub(size);
    if signature_at(512) {
        512
    } else if signature_at(4096) {
        4096
    } else if disk_size >= 512 && signature_at(end(512)) {
        512
    } else if disk_size >= 4096 && signature_at(end(4096)) {
        4096
    } else {
        512
    }
}

fn read_copy<R: Read + Seek + ?Sized>(
    file: &mut R,
    sector_size: u64,
    total: u64,
    copy: HeaderCopy,
    lba: u64,
) -> Result<Gpt> {
    let mut sector = vec![0u8; sector_size as usize];
    read_at(
        file,
        lba * sector_size,
        &mut sector,
        &format!("{copy} GPT header"),
    )?;
    let header = Header::decode(&sector, copy, lba, total)?;

    let mut array = vec![0u8; header.entries_bytes() as usize];
    let what = format!("{copy} GPT entries");
    read_at(file, header.entries_lba * sector_size, &mut array, &what)?;
    let computed = crc32fast::hash(&array);
    if computed != header.entries_crc {
        return Err(GptError::EntriesCrc {
            copy,
            lba: header.entries_lba,
            stored: header.entries_crc,
            computed,
        });
    }

    let mut partitions = Vec::new();
    for (i, raw) in array.chunks_exact(header.entry_size as usize).enumerate() {
        let entry = decode_entry(raw);
        if entry.type_guid.is_nil() {
            continue;
        }
        // At most 1 MiB / 128 entries, so the index fits.
        let index = u32::try_from(i + 1).unwrap_or(u32::MAX);
        let bad = |reason: String| GptError::BadEntry {
            copy,
            index,
            reason,
        };
        if entry.first_lba > entry.last_lba {
            return Err(bad(format!(
                "{:?} ends (LBA {}) before it starts (LBA {})",
                entry.name, entry.last_lba, entry.first_lba
            )));
        }
        if entry.first_lba < header.first_usable_lba || entry.last_lba > header.last_usable_lba {
            return Err(bad(format!(
                "{:?} (LBA {}..={}) is outside the usable area LBA {}..={}",
                entry.name,
                entry.first_lba,
                entry.last_lba,
                header.first_usable_lba,
                header.last_usable_lba
            )));
        }
        partitions.push(Partition {
            index,
            name: entry.name,
            type_guid: entry.type_guid,
            unique_guid: entry.unique_guid,
            first_lba: entry.first_lba,
            last_lba: entry.last_lba,
            attributes: entry.attributes,
            sector_size,
        });
    }
    check_overlaps(&partitions, copy)?;

    Ok(Gpt {
        disk_guid: header.disk_guid,
        sector_size,
        first_usable_lba: header.first_usable_lba,
        last_usable_lba: header.last_usable_lba,
        header: copy,
        primary_problem: None,
        partitions,
    })
}

fn check_overlaps(partitions: &[Partition], copy: HeaderCopy) -> Result<()> {
    let mut by_start: Vec<&Partition> = partitions.iter().collect();
    by_start.sort_by_key(|p| p.first_lba);
    for pair in by_start.windows(2) {
        if pair[1].first_lba <= pair[0].last_lba {
            return Err(GptError::BadEntry {
                copy,
                index: pair[1].index,
                reason: format!(
                    "{:?} (from LBA {}) overlaps entry {} {:?} (to LBA {})",
                    pair[1].name, pair[1].first_lba, pair[0].index, pair[0].name, pair[0].last_lba
                ),
            });
        }
    }
    Ok(())
}

fn read_at<R: Read + Seek + ?Sized>(
    file: &mut R,
    offset: u64,
    buf: &mut [u8],
    what: &str,
) -> Result<()> {
    file.seek(SeekFrom::Start(offset))
        .and_then(|_| file.read_exact(buf))
        .map_err(|e| GptError::io(format!("reading {what} at byte {offset}"), e))
}
