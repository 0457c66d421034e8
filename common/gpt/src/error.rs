//! `GptError`: the one typed error of this crate.
//!
//! Messages name the partition, header copy or field that is wrong and, where there is one,
//! the fix: the reader is a build engineer with a recipe open, or a flasher log.

use std::fmt;
use std::io;

/// Which of the two copies of the GPT header (and its entry array) is meant.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum HeaderCopy {
    /// The primary header at LBA 1, entries from LBA 2.
    Primary,
    /// The backup header in the last sector, entries just before it.
    Backup,
}

impl fmt::Display for HeaderCopy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            HeaderCopy::Primary => "primary",
            HeaderCopy::Backup => "backup",
        })
    }
}

/// Everything that can go wrong planning, writing or reading a GUID partition table. New
/// variants may be added, so match with a wildcard arm.
#[non_exhaustive]
#[derive(Debug, thiserror::Error)]
pub enum GptError {
    /// Reading, writing or seeking the disk failed.
    #[error("{action}")]
    Io {
        /// What was being done, with the byte offset: "writing primary GPT header at 512".
        action: String,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// A GUID in text form did not parse.
    #[error("{text:?} is not a GUID: expected 8-4-4-4-12 hex digits, like c12a7328-f81f-11d2-ba4b-00a0c93ec93b")]
    InvalidGuid {
        /// The text that was given.
        text: String,
    },
    /// A partition name does not fit the 36 UTF-16 code units of a GPT entry.
    #[error("partition name {name:?} is {units} UTF-16 code units long; GPT allows at most 36, shorten it in the layout")]
    NameTooLong {
        /// The name.
        name: String,
        /// Its length in UTF-16 code units.
        units: usize,
    },
    /// Two partitions share a name, so lookups by name (`PARTLABEL=`) would be ambiguous.
    #[error("partition name {name:?} is used twice; names must be unique (root=PARTLABEL= depends on it)")]
    DuplicateName {
        /// The repeated name.
        name: String,
    },
    /// Two partitions share a unique GUID (or one equals the disk GUID).
    #[error(
        "partition {name:?} reuses GUID {guid}; derive a distinct one per partition (Guid::derive)"
    )]
    DuplicateGuid {
        /// The partition with the repeated GUID.
        name: String,
        /// The GUID.
        guid: String,
    },
    /// A partition spec is unusable for another reason (NUL in its name, nil unique GUID).
    #[error("partition {name:?} is invalid: {reason}")]
    InvalidPartition {
        /// The partition.
        name: String,
        /// What is wrong and how to fix it.
        reason: String,
    },
    /// A partition has the nil type GUID, which GPT uses to mark an unused entry.
    #[error("partition {name:?} has the nil type GUID, which marks an unused entry; give it a type (Guid::LINUX_FILESYSTEM, ...)")]
    NilTypeGuid {
        /// The partition.
        name: String,
    },
    /// A partition with `size_bytes == 0` (fill the rest) is not the last one.
    #[error("partition {name:?} has size 0 (fill the rest of the disk) but is not the last partition; only the last one may fill")]
    FillNotLast {
        /// The partition.
        name: String,
    },
    /// More partitions than the 128 entries the table holds.
    #[error("the layout has {count} partitions; a GPT written here holds at most 128")]
    TooManyPartitions {
        /// How many the layout has.
        count: usize,
    },
    /// The sector size or alignment of a layout is not usable.
    #[error("unsupported geometry: {reason}")]
    BadGeometry {
        /// What is wrong: "sector size 1024 (use 512 or 4096)".
        reason: String,
    },
    /// The disk cannot hold even an empty GPT.
    #[error("a disk of {disk_size} bytes is too small for a GPT with {sector_size}-byte sectors; it needs at least {needed} bytes")]
    DiskTooSmall {
        /// The disk size given.
        disk_size: u64,
        /// The sector size used.
        sector_size: u64,
        /// The least size that holds both tables and one aligned sector.
        needed: u64,
    },
    /// A partition does not fit on the disk.
    #[error("partition {name:?} does not fit: the disk ({disk_size} bytes) is {missing_bytes} bytes too small; grow the disk or shrink the partitions")]
    DoesNotFit {
        /// The first partition that does not fit.
        name: String,
        /// How many more bytes the disk would need.
        missing_bytes: u64,
        /// The disk size given.
        disk_size: u64,
    },
    /// No GPT header signature ("EFI PART") where one should be.
    #[error("no GPT {copy} header at LBA {lba}: the signature \"EFI PART\" is missing (not a GPT disk, or the table was wiped)")]
    NoSignature {
        /// Which copy.
        copy: HeaderCopy,
        /// Where it was looked for.
        lba: u64,
    },
    /// The header CRC32 does not match its bytes.
    #[error("GPT {copy} header at LBA {lba} is corrupt: CRC32 is {stored:#010x} but the bytes give {computed:#010x}")]
    HeaderCrc {
        /// Which copy.
        copy: HeaderCopy,
        /// Where it was read.
        lba: u64,
        /// The CRC stored in the header.
        stored: u32,
        /// The CRC of the header as read.
        computed: u32,
    },
    /// A header field is out of range or inconsistent.
    #[error("GPT {copy} header at LBA {lba} is invalid: {reason}")]
    BadHeader {
        /// Which copy.
        copy: HeaderCopy,
        /// Where it was read.
        lba: u64,
        /// What is wrong.
        reason: String,
    },
    /// The partition entry array CRC32 does not match.
    #[error("GPT {copy} partition entries at LBA {lba} are corrupt: CRC32 is {stored:#010x} but the bytes give {computed:#010x}")]
    EntriesCrc {
        /// Which copy.
        copy: HeaderCopy,
        /// First LBA of the entry array.
        lba: u64,
        /// The CRC stored in the header.
        stored: u32,
        /// The CRC of the entries as read.
        computed: u32,
    },
    /// A partition entry is inconsistent (outside the usable area, end before start).
    #[error("GPT {copy} partition entry {index} is invalid: {reason}")]
    BadEntry {
        /// Which copy.
        copy: HeaderCopy,
        /// The 1-based entry number, as `sda<index>` would show it.
        index: u32,
        /// What is wrong.
        reason: String,
    },
    /// Neither header (with its entries) is valid.
    #[error("no valid GPT on this disk: primary: {primary}; backup: {backup}")]
    NoValidGpt {
        /// Why the primary copy was refused.
        primary: Box<GptError>,
        /// Why the backup copy was refused.
        backup: Box<GptError>,
    },
}

impl GptError {
    /// An [`GptError::Io`] naming what was being done.
    pub(crate) fn io(action: impl Into<String>, source: io::Error) -> GptError {
        GptError::Io {
            action: action.into(),
            source,
        }
    }
}

/// `Result` with [`GptError`].
pub type Result<T, E = GptError> = std::result::Result<T, E>;
