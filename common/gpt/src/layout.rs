//! Partition layouts: what a board wants on its disk ([`Layout`], [`PartitionSpec`]) and where
//! it lands on a disk of a given size ([`Layout::plan`], [`Placed`]).
//!
//! Placement rules: partitions go in layout order; each starts on an `alignment` boundary
//! (1 MiB by default, what `sgdisk`, `parted` and `systemd-repart` use, and a multiple of every
//! erase block and RAID stripe that matters here); a size is rounded up to whole sectors; the
//! last partition may have size 0, meaning "the rest of the disk", and then ends on an
//! alignment boundary too (so LUKS and `sgdisk -v` see an aligned end).

use std::collections::HashSet;

use crate::disk::Geometry;
use crate::error::{GptError, Result};
use crate::guid::Guid;

/// The logical sector size almost every disk and every file-backed image uses.
pub const SECTOR_SIZE: u64 = 512;
/// Default start alignment of partitions: 1 MiB.
pub const DEFAULT_ALIGNMENT: u64 = 1 << 20;
/// How many partition entries the tables written here hold (the UEFI minimum, 16 KiB).
pub const MAX_PARTITIONS: usize = 128;
/// Longest partition name: 72 bytes of UTF-16LE.
pub const MAX_NAME_UNITS: usize = 36;

/// The partition attribute bits layouts set (UEFI 2.10 table 5.8; bit 60 from the
/// Discoverable Partitions Specification). Add others here when a layout needs them.
pub mod attr {
    /// Required for the platform to function; partitioning tools must not delete it.
    pub const REQUIRED: u64 = 1 << 0;
    /// Legacy BIOS bootable.
    pub const LEGACY_BIOS_BOOTABLE: u64 = 1 << 2;
    /// Mount read-only (systemd-gpt-auto-generator).
    pub const READ_ONLY: u64 = 1 << 60;
}

/// One partition as a layout asks for it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PartitionSpec {
    /// The partition label (`PARTLABEL`), at most 36 UTF-16 code units, no NUL.
    pub name: String,
    /// The partition type GUID, for example [`Guid::LINUX_ROOT_X86_64`].
    pub type_guid: Guid,
    /// The partition's own GUID (`PARTUUID`); derive it from the recipe for reproducible
    /// images ([`Guid::derive`]).
    pub unique_guid: Guid,
    /// Size in bytes, rounded up to whole sectors; 0 fills the rest of the disk (last only).
    pub size_bytes: u64,
    /// Attribute bits, see [`attr`].
    pub attributes: u64,
}

impl PartitionSpec {
    /// A partition with no attribute bits set.
    pub fn new(name: &str, type_guid: Guid, unique_guid: Guid, size_bytes: u64) -> PartitionSpec {
        PartitionSpec {
            name: name.to_string(),
            type_guid,
            unique_guid,
            size_bytes,
            attributes: 0,
        }
    }
}

/// A whole-disk layout: the disk GUID and the partitions in on-disk order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Layout {
    /// The disk GUID written to both headers.
    pub disk_guid: Guid,
    /// The partitions; entry `i` of the table is `partitions[i]` (so `sda1` is the first).
    pub partitions: Vec<PartitionSpec>,
    /// Logical sector size: 512 (default) or 4096.
    pub sector_size: u64,
    /// Start alignment in bytes, a multiple of the sector size: 1 MiB by default.
    pub alignment: u64,
}

/// Where a [`PartitionSpec`] landed on a disk.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Placed {
    /// The partition as asked for.
    pub spec: PartitionSpec,
    /// First sector, inclusive.
    pub first_lba: u64,
    /// Last sector, inclusive.
    pub last_lba: u64,
    /// The sector size the LBAs count in.
    pub sector_size: u64,
}

impl Placed {
    /// Byte offset of the partition from the start of the disk.
    pub fn offset(&self) -> u64 {
        self.first_lba * self.sector_size
    }

    /// Size of the partition in bytes.
    pub fn size(&self) -> u64 {
        (self.last_lba - self.first_lba + 1) * self.sector_size
    }
}

impl Layout {
    /// A layout with 512-byte sectors and 1 MiB alignment.
    pub fn new(disk_guid: Guid, partitions: Vec<PartitionSpec>) -> Layout {
        Layout {
            disk_guid,
            partitions,
            sector_size: SECTOR_SIZE,
            alignment: DEFAULT_ALIGNMENT,
        }
    }

    /// Checks the layout and places every partition on a disk of `disk_size` bytes.
    ///
    /// Fails with [`GptError::DoesNotFit`] naming the first partition that crosses the end of
    /// the usable area and how many bytes the whole layout is short by.
    pub fn plan(&self, disk_size: u64) -> Result<Vec<Placed>> {
        self.validate()?;
        let geometry = Geometry::new(disk_size, self.sector_size)?;
        let ss = self.sector_size;
        let align = self.alignment / ss;
        let end_usable = geometry.last_usable_lba() + 1; // exclusive
        let mut cursor = geometry.first_usable_lba();
        let mut placed = Vec::with_capacity(self.partitions.len());
        let mut first_overflow: Option<&str> = None;
        for spec in &self.partitions {
            let start = align_up(cursor, align);
            let sectors = if spec.size_bytes == 0 {
                // Fill: end on an alignment boundary; at least one alignment unit.
                let available = end_usable.saturating_sub(start);
                (available / align * align).max(align)
            } else {
                spec.size_bytes.div_ceil(ss)
            };
            let last = start.saturating_add(sectors - 1);
            if last >= end_usable && first_overflow.is_none() {
                first_overflow = Some(&spec.name);
            }
            placed.push(Placed {
                spec: spec.clone(),
                first_lba: start,
                last_lba: last,
                sector_size: ss,
            });
            cursor = last.saturating_add(1);
        }
        if let Some(name) = first_overflow {
            return Err(GptError::DoesNotFit {
                name: name.to_string(),
                missing_bytes: (cursor - end_usable).saturating_mul(ss),
                disk_size,
            });
        }
        Ok(placed)
    }

    /// Checks everything about the layout that does not depend on the disk size.
    pub fn validate(&self) -> Result<()> {
        if self.sector_size != 512 && self.sector_size != 4096 {
            return Err(GptError::BadGeometry {
                reason: format!("sector size {} (use 512 or 4096)", self.sector_size),
            });
        }
        if self.alignment == 0 || !self.alignment.is_multiple_of(self.sector_size) {
            return Err(GptError::BadGeometry {
                reason: format!(
                    "alignment {} is not a positive multiple of the sector size {}",
                    self.alignment, self.sector_size
                ),
            });
        }
        if self.partitions.len() > MAX_PARTITIONS {
            return Err(GptError::TooManyPartitions {
                count: self.partitions.len(),
            });
        }
        let mut names = HashSet::new();
        let mut guids = HashSet::from([self.disk_guid]);
        let last = self.partitions.len().saturating_sub(1);
        for (i, spec) in self.partitions.iter().enumerate() {
            check_name(&spec.name)?;
            if !names.insert(spec.name.as_str()) {
                return Err(GptError::DuplicateName {
                    name: spec.name.clone(),
                });
            }
            if spec.type_guid.is_nil() {
                return Err(GptError::NilTypeGuid {
                    name: spec.name.clone(),
                });
            }
            if spec.unique_guid.is_nil() {
                return Err(GptError::InvalidPartition {
                    name: spec.name.clone(),
                    reason: "its unique GUID is nil; derive one (Guid::derive)".to_string(),
                });
            }
            if !guids.insert(spec.unique_guid) {
                return Err(GptError::DuplicateGuid {
                    name: spec.name.clone(),
                    guid: spec.unique_guid.to_string(),
                });
            }
            if spec.size_bytes == 0 && i != last {
                return Err(GptError::FillNotLast {
                    name: spec.name.clone(),
                });
            }
        }
        Ok(())
    }
}

/// Checks a partition name against what a GPT entry can hold.
pub(crate) fn check_name(name: &str) -> Result<()> {
    let units = name.encode_utf16().count();
    if units > MAX_NAME_UNITS {
        return Err(GptError::NameTooLong {
            name: name.to_string(),
            units,
        });
    }
    if name.contains('\0') {
        return Err(GptError::InvalidPartition {
            name: name.to_string(),
            reason: "its name contains a NUL character, which ends a GPT name early".to_string(),
        });
    }
    Ok(())
}

fn align_up(lba: u64, align: u64) -> u64 {
    lba.div_ceil(align).saturating_mul(align)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;

    fn spec(name: &str, size: u64) -> PartitionSpec {
        PartitionSpec::new(
            name,
            Guid::LINUX_FILESYSTEM,
            Guid::derive("test", name),
            size,
        )
    }

    #[test]
    fn places_on_mib_boundaries_and_fills_aligned() {
        let layout = Layout::new(
            Guid::derive("test", "disk"),
            vec![spec("esp", 8 * MIB), spec("odd", 1000), spec("data", 0)],
        );
        let placed = layout.plan(64 * MIB).unwrap();
        assert_eq!(
            (placed[0].first_lba, placed[0].last_lba),
            (2048, 2048 + 16384 - 1)
        );
        assert_eq!(placed[1].first_lba, 9 * 2048);
        assert_eq!(placed[1].size(), 1024, "1000 bytes round up to two sectors");
        assert_eq!(placed[2].first_lba, 10 * 2048);
        // 64 MiB disk: the last MiB holds the backup table, so data ends at 63 MiB.
        assert_eq!(placed[2].last_lba, 63 * 2048 - 1);
        assert_eq!(placed[2].offset(), 10 * MIB);
        assert_eq!(placed[2].size(), 53 * MIB);
    }

    #[test]
    fn exact_fit_and_one_sector_short() {
        // Usable: LBA 34 ..= 131038 on 64 MiB; from 2048 that is 128991 sectors.
        let fits = Layout::new(Guid::derive("t", "d"), vec![spec("a", 128_991 * 512)]);
        assert_eq!(fits.plan(64 * MIB).unwrap()[0].last_lba, 131_038);
        let short = Layout::new(Guid::derive("t", "d"), vec![spec("a", 128_992 * 512)]);
        match short.plan(64 * MIB).unwrap_err() {
            GptError::DoesNotFit {
                name,
                missing_bytes,
                ..
            } => assert_eq!((name.as_str(), missing_bytes), ("a", 512)),
            other => panic!("{other}"),
        }
    }

    #[test]
    fn does_not_fit_names_first_partition_and_total_shortfall() {
        let layout = Layout::new(
            Guid::derive("t", "d"),
            vec![
                spec("esp", 8 * MIB),
                spec("rootfs_a", 40 * MIB),
                spec("rootfs_b", 40 * MIB),
            ],
        );
        let err = layout.plan(64 * MIB).unwrap_err();
        let text = err.to_string();
        match err {
            GptError::DoesNotFit {
                name,
                missing_bytes,
                ..
            } => {
                assert_eq!(name, "rootfs_b");
                // Needed up to 1+8+40+40 = 89 MiB, usable ends at 64 MiB - 17 KiB.
                assert_eq!(missing_bytes, 89 * MIB - (64 * MIB - 33 * 512));
            }
            other => panic!("{other}"),
        }
        assert!(
            text.contains("rootfs_b") && text.contains("bytes too small"),
            "{text}"
        );
    }

    #[test]
    fn fill_needs_room_and_must_be_last() {
        let layout = Layout::new(
            Guid::derive("t", "d"),
            vec![spec("big", 63 * MIB - 33 * 512), spec("data", 0)],
        );
        assert!(
            matches!(layout.plan(64 * MIB), Err(GptError::DoesNotFit { name, .. }) if name == "data")
        );
        let layout = Layout::new(
            Guid::derive("t", "d"),
            vec![spec("data", 0), spec("x", MIB)],
        );
        assert!(matches!(
            layout.plan(64 * MIB),
            Err(GptError::FillNotLast { .. })
        ));
    }

    #[test]
    fn names_guids_and_geometry_are_checked() {
        let long = "n".repeat(37);
        let layout = Layout::new(Guid::derive("t", "d"), vec![spec(&long, MIB)]);
        assert!(matches!(
            layout.plan(64 * MIB),
            Err(GptError::NameTooLong { units: 37, .. })
        ));
        let ok = "\u{e9}".repeat(36); // 36 code units, 72 UTF-8 bytes
        assert!(Layout::new(Guid::derive("t", "d"), vec![spec(&ok, MIB)])
            .plan(64 * MIB)
            .is_ok());
        let emoji = "\u{1F600}".repeat(19); // 38 code units: surrogate pairs count twice
        let layout = Layout::new(Guid::derive("t", "d"), vec![spec(&emoji, MIB)]);
        assert!(matches!(
            layout.plan(64 * MIB),
            Err(GptError::NameTooLong { units: 38, .. })
        ));

        let layout = Layout::new(Guid::derive("t", "d"), vec![spec("a", MIB), spec("a", MIB)]);
        assert!(matches!(
            layout.plan(64 * MIB),
            Err(GptError::DuplicateName { .. })
        ));
        let mut b = spec("b", MIB);
        b.unique_guid = Guid::derive("test", "a");
        let layout = Layout::new(Guid::derive("t", "d"), vec![spec("a", MIB), b]);
        assert!(matches!(
            layout.plan(64 * MIB),
            Err(GptError::DuplicateGuid { .. })
        ));
        let mut nil = spec("a", MIB);
        nil.type_guid = Guid::NIL;
        let layout = Layout::new(Guid::derive("t", "d"), vec![nil]);
        assert!(matches!(
            layout.plan(64 * MIB),
            Err(GptError::NilTypeGuid { .. })
        ));

        let mut layout = Layout::new(Guid::derive("t", "d"), vec![spec("a", MIB)]);
        layout.sector_size = 1024;
        assert!(matches!(
            layout.plan(64 * MIB),
            Err(GptError::BadGeometry { .. })
        ));
        layout.sector_size = 512;
        assert!(matches!(
            layout.plan(64 * MIB + 1),
            Err(GptError::BadGeometry { .. })
        ));
        assert!(matches!(
            layout.plan(4096),
            Err(GptError::DiskTooSmall { .. })
        ));
        let too_many = (0..129).map(|i| spec(&format!("p{i}"), MIB)).collect();
        let layout = Layout::new(Guid::derive("t", "d"), too_many);
        assert!(matches!(
            layout.plan(1 << 40),
            Err(GptError::TooManyPartitions { count: 129 })
        ));
    }

    #[test]
    fn four_k_sectors() {
        let mut layout = Layout::new(Guid::derive("t", "d"), vec![spec("a", MIB), spec("b", 0)]);
        layout.sector_size = 4096;
        let placed = layout.plan(64 * MIB).unwrap();
        assert_eq!(placed[0].first_lba, 256);
        assert_eq!(placed[0].offset(), MIB);
        assert_eq!(placed[1].offset() + placed[1].size(), 63 * MIB);
    }
}
