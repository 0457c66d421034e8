//! The on-disk GPT format: geometry, header and entry encoding, the protective MBR.
//!
//! References are to UEFI 2.10 section 5 ("GUID Partition Table (GPT) Disk Layout"): table
//! 5.1 (legacy MBR), 5.4 (protective MBR partition record), 5.5 (GPT header), 5.6 (partition
//! entry). All integers are little-endian.

use crate::error::{GptError, HeaderCopy, Result};
use crate::guid::Guid;
use crate::layout::Placed;

/// Entries in the arrays written here (the UEFI minimum array is 16 KiB).
pub(crate) const ENTRY_COUNT: u32 = 128;
/// Bytes per entry written here.
pub(crate) const ENTRY_SIZE: u32 = 128;
/// "EFI PART", the header signature.
pub(crate) const SIGNATURE: &[u8; 8] = b"EFI PART";
/// Bytes of header covered by the header CRC (revision 1.0).
const HEADER_SIZE: u32 = 92;
/// Revision 1.0.
const REVISION: u32 = 0x0001_0000;
/// Largest entry array accepted when reading; the format allows more, no real disk uses it,
/// and this bounds what a corrupt header can make us allocate.
const MAX_ENTRY_ARRAY_BYTES: u64 = 1 << 20;

/// Where the GPT structures sit on a disk of a given size.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Geometry {
    /// Logical sector size in bytes.
    pub sector_size: u64,
    /// Whole sectors on the disk.
    pub total_sectors: u64,
}

impl Geometry {
    /// Geometry for writing: the disk must be whole sectors and big enough for both tables.
    pub fn new(disk_size: u64, sector_size: u64) -> Result<Geometry> {
        if !disk_size.is_multiple_of(sector_size) {
            return Err(GptError::BadGeometry {
                reason: format!(
                    "disk size {disk_size} is not a multiple of the sector size {sector_size}"
                ),
            });
        }
        let geometry = Geometry {
            sector_size,
            total_sectors: disk_size / sector_size,
        };
        // MBR, two headers, two entry arrays and at least one usable sector.
        let needed = 4 + 2 * geometry.entry_sectors();
        if geometry.total_sectors < needed {
            return Err(GptError::DiskTooSmall {
                disk_size,
                sector_size,
                needed: needed * sector_size,
            });
        }
        Ok(geometry)
    }

    /// Sectors taken by one entry array.
    pub fn entry_sectors(&self) -> u64 {
        u64::from(ENTRY_COUNT * ENTRY_SIZE).div_ceil(self.sector_size)
    }

    /// First sector a partition may use.
    pub fn first_usable_lba(&self) -> u64 {
        2 + self.entry_sectors()
    }

    /// Last sector a partition may use.
    pub fn last_usable_lba(&self) -> u64 {
        self.backup_entries_lba() - 1
    }

    /// The backup header: the last sector.
    pub fn backup_header_lba(&self) -> u64 {
        self.total_sectors - 1
    }

    /// The backup entry array, just before the backup header.
    pub fn backup_entries_lba(&self) -> u64 {
        self.backup_header_lba() - self.entry_sectors()
    }
}

/// The fields of a GPT header (UEFI table 5.5) that mean something.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Header {
    pub my_lba: u64,
    pub alternate_lba: u64,
    pub first_usable_lba: u64,
    pub last_usable_lba: u64,
    pub disk_guid: Guid,
    pub entries_lba: u64,
    pub entry_count: u32,
    pub entry_size: u32,
    pub entries_crc: u32,
}

impl Header {
    /// The header for `copy` of a table written on `geometry`.
    pub fn for_copy(geometry: &Geometry, copy: HeaderCopy, disk_guid: Guid, crc: u32) -> Header {
        let (my_lba, alternate_lba, entries_lba) = match copy {
            HeaderCopy::Primary => (1, geometry.backup_header_lba(), 2),
            HeaderCopy::Backup => (
                geometry.backup_header_lba(),
                1,
                geometry.backup_entries_lba(),
            ),
        };
        Header {
            my_lba,
            alternate_lba,
            first_usable_lba: geometry.first_usable_lba(),
            last_usable_lba: geometry.last_usable_lba(),
            disk_guid,
            entries_lba,
            entry_count: ENTRY_COUNT,
            entry_size: ENTRY_SIZE,
            entries_crc: crc,
        }
    }

    /// One whole sector holding this header, its CRC filled in, the rest zero.
    pub fn encode(&self, sector_size: u64) -> Vec<u8> {
        let mut sector = vec![0u8; sector_size as usize];
        sector[0..8].copy_from_slice(SIGNATURE);
        put_u32(&mut sector, 8, REVISION);
        put_u32(&mut sector, 12, HEADER_SIZE);
        // 16: header CRC, computed below over the header with this field zero. 20: reserved.
        put_u64(&mut sector, 24, self.my_lba);
        put_u64(&mut sector, 32, self.alternate_lba);
        put_u64(&mut sector, 40, self.first_usable_lba);
        put_u64(&mut sector, 48, self.last_usable_lba);
        sector[56..72].copy_from_slice(&self.disk_guid.to_gpt_bytes());
        put_u64(&mut sector, 72, self.entries_lba);
        put_u32(&mut sector, 80, self.entry_count);
        put_u32(&mut sector, 84, self.entry_size);
        put_u32(&mut sector, 88, self.entries_crc);
        let crc = crc32fast::hash(&sector[..HEADER_SIZE as usize]);
        put_u32(&mut sector, 16, crc);
        sector
    }

    /// Decodes and checks the header `copy` read from sector `lba` of a disk of
    /// `total_sectors` sectors.
    pub fn decode(sector: &[u8], copy: HeaderCopy, lba: u64, total_sectors: u64) -> Result<Header> {
        let bad = |reason: String| GptError::BadHeader { copy, lba, reason };
        if &sector[0..8] != SIGNATURE {
            return Err(GptError::NoSignature { copy, lba });
        }
        let revision = get_u32(sector, 8);
        if revision >> 16 != 1 {
            return Err(bad(format!("revision {revision:#010x} is not 1.x")));
        }
        let header_size = get_u32(sector, 12);
        if header_size < HEADER_SIZE || header_size as usize > sector.len() {
            return Err(bad(format!(
                "header size {header_size} is outside {HEADER_SIZE}..={}",
                sector.len()
            )));
        }
        let stored = get_u32(sector, 16);
        let mut copy_bytes = sector[..header_size as usize].to_vec();
        copy_bytes[16..20].fill(0);
        let computed = crc32fast::hash(&copy_bytes);
        if stored != computed {
            return Err(GptError::HeaderCrc {
                copy,
                lba,
                stored,
                computed,
            });
        }
        let mut disk_guid = [0u8; 16];
        disk_guid.copy_from_slice(&sector[56..72]);
        let header = Header {
            my_lba: get_u64(sector, 24),
            alternate_lba: get_u64(sector, 32),
            first_usable_lba: get_u64(sector, 40),
            last_usable_lba: get_u64(sector, 48),
            disk_guid: Guid::from_gpt_bytes(disk_guid),
            entries_lba: get_u64(sector, 72),
            entry_count: get_u32(sector, 80),
            entry_size: get_u32(sector, 84),
            entries_crc: get_u32(sector, 88),
        };
        if header.my_lba != lba {
            return Err(bad(format!(
                "it says it is at LBA {} (the disk was resized or copied without fixing the backup table)",
                header.my_lba
            )));
        }
        if header.first_usable_lba > header.last_usable_lba.saturating_add(1)
            || header.last_usable_lba >= total_sectors
        {
            return Err(bad(format!(
                "usable area LBA {}..={} does not fit a disk of {total_sectors} sectors",
                header.first_usable_lba, header.last_usable_lba
            )));
        }
        // The MBR and primary header come first and the backup header is the last sector
        // (UEFI 2.10 5.3.2): a usable area that takes any of them is a table for a bigger disk
        // (an image cut short, or written to a smaller disk), whose partitions would overwrite
        // a header (found by fuzz target `gpt`).
        if header.first_usable_lba < 2 || header.last_usable_lba >= total_sectors - 1 {
            return Err(bad(format!(
                "usable area LBA {}..={} takes the MBR or a GPT header of a disk of \
                 {total_sectors} sectors (was the disk image cut short?)",
                header.first_usable_lba, header.last_usable_lba
            )));
        }
        if header.entry_size < 128 || !header.entry_size.is_multiple_of(8) {
            return Err(bad(format!(
                "entry size {} is not a multiple of 8 of at least 128",
                header.entry_size
            )));
        }
        let array = header.entries_bytes();
        if array > MAX_ENTRY_ARRAY_BYTES {
            return Err(bad(format!(
                "{} entries of {} bytes exceed the {MAX_ENTRY_ARRAY_BYTES}-byte limit",
                header.entry_count, header.entry_size
            )));
        }
        let array_sectors = array.div_ceil(sector.len() as u64);
        let array_end = header.entries_lba.saturating_add(array_sectors);
        let inside_usable =
            header.entries_lba <= header.last_usable_lba && array_end > header.first_usable_lba;
        if header.entries_lba < 2 || array_end > total_sectors || inside_usable {
            return Err(bad(format!(
                "entry array at LBA {} ({array_sectors} sectors) is outside the disk or overlaps \
                 the usable area",
                header.entries_lba
            )));
        }
        Ok(header)
    }

    /// Bytes in the entry array this header describes.
    pub fn entries_bytes(&self) -> u64 {
        u64::from(self.entry_count) * u64::from(self.entry_size)
    }
}

/// The entry array (`ENTRY_COUNT` entries of `ENTRY_SIZE` bytes) for placed partitions.
pub(crate) fn encode_entries(placed: &[Placed]) -> Vec<u8> {
    let mut array = vec![0u8; (ENTRY_COUNT * ENTRY_SIZE) as usize];
    for (entry, p) in array.chunks_exact_mut(ENTRY_SIZE as usize).zip(placed) {
        entry[0..16].copy_from_slice(&p.spec.type_guid.to_gpt_bytes());
        entry[16..32].copy_from_slice(&p.spec.unique_guid.to_gpt_bytes());
        put_u64(entry, 32, p.first_lba);
        put_u64(entry, 40, p.last_lba);
        put_u64(entry, 48, p.spec.attributes);
        for (i, unit) in p.spec.name.encode_utf16().take(36).enumerate() {
            entry[56 + 2 * i..58 + 2 * i].copy_from_slice(&unit.to_le_bytes());
        }
    }
    array
}

/// One decoded partition entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct RawEntry {
    pub type_guid: Guid,
    pub unique_guid: Guid,
    pub first_lba: u64,
    pub last_lba: u64,
    pub attributes: u64,
    pub name: String,
}

/// Decodes one entry (at least 128 bytes). Invalid UTF-16 in the name becomes U+FFFD: names
/// written by other tools are shown, not refused.
pub(crate) fn decode_entry(entry: &[u8]) -> RawEntry {
    let guid_at = |offset: usize| {
        let mut bytes = [0u8; 16];
        bytes.copy_from_slice(&entry[offset..offset + 16]);
        Guid::from_gpt_bytes(bytes)
    };
    let units: Vec<u16> = entry[56..128]
        .chunks_exact(2)
        .map(|pair| u16::from_le_bytes([pair[0], pair[1]]))
        .take_while(|&unit| unit != 0)
        .collect();
    RawEntry {
        type_guid: guid_at(0),
        unique_guid: guid_at(16),
        first_lba: get_u64(entry, 32),
        last_lba: get_u64(entry, 40),
        attributes: get_u64(entry, 48),
        name: String::from_utf16_lossy(&units),
    }
}

/// Sector 0: a protective MBR with one partition of type 0xEE covering the disk from LBA 1
/// (UEFI table 5.4), or all of the first 2^32 - 1 sectors of a larger disk.
pub(crate) fn protective_mbr(geometry: &Geometry) -> Vec<u8> {
    let mut sector = vec![0u8; geometry.sector_size as usize];
    let record = &mut sector[446..462];
    record[0] = 0x00; // not bootable
    record[1..4].copy_from_slice(&[0x00, 0x02, 0x00]); // CHS of LBA 1
    record[4] = 0xEE; // GPT protective
    record[5..8].copy_from_slice(&[0xFF, 0xFF, 0xFF]); // CHS "too large"
    put_u32(record, 8, 1);
    let size = u32::try_from(geometry.total_sectors - 1).unwrap_or(u32::MAX);
    put_u32(record, 12, size);
    sector[510] = 0x55;
    sector[511] = 0xAA;
    sector
}

fn put_u32(buf: &mut [u8], offset: usize, value: u32) {
    buf[offset..offset + 4].copy_from_slice(&value.to_le_bytes());
}

fn put_u64(buf: &mut [u8], offset: usize, value: u64) {
    buf[offset..offset + 8].copy_from_slice(&value.to_le_bytes());
}

fn get_u32(buf: &[u8], offset: usize) -> u32 {
    let mut bytes = [0u8; 4];
    bytes.copy_from_slice(&buf[offset..offset + 4]);
    u32::from_le_bytes(bytes)
}

fn get_u64(buf: &[u8], offset: usize) -> u64 {
    let mut bytes = [0u8; 8];
    bytes.copy_from_slice(&buf[offset..offset + 8]);
    u64::from_le_bytes(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn geometry() -> Geometry {
        Geometry::new(64 << 20, 512).unwrap()
    }

    #[test]
    fn geometry_of_a_64_mib_disk() {
        let g = geometry();
        assert_eq!(g.total_sectors, 131_072);
        assert_eq!(g.entry_sectors(), 32);
        assert_eq!(g.first_usable_lba(), 34);
        assert_eq!(g.last_usable_lba(), 131_038);
        assert_eq!(g.backup_entries_lba(), 131_039);
        assert_eq!(g.backup_header_lba(), 131_071);
    }

    #[test]
    fn header_round_trips_and_crc_catches_a_flip() {
        let g = geometry();
        for copy in [HeaderCopy::Primary, HeaderCopy::Backup] {
            let header = Header::for_copy(&g, copy, Guid::derive("t", "disk"), 0x1234_5678);
            let mut sector = header.encode(512);
            let decoded = Header::decode(&sector, copy, header.my_lba, g.total_sectors).unwrap();
            assert_eq!(decoded, header);
            sector[40] ^= 1;
            let err = Header::decode(&sector, copy, header.my_lba, g.total_sectors).unwrap_err();
            assert!(matches!(err, GptError::HeaderCrc { .. }), "{err}");
        }
    }

    #[test]
    fn header_at_the_wrong_place_is_refused() {
        let g = geometry();
        let header = Header::for_copy(&g, HeaderCopy::Primary, Guid::derive("t", "disk"), 0);
        let sector = header.encode(512);
        let err =
            Header::decode(&sector, HeaderCopy::Backup, 131_071, g.total_sectors).unwrap_err();
        assert!(matches!(err, GptError::BadHeader { .. }), "{err}");
        let err = Header::decode(&[0u8; 512], HeaderCopy::Primary, 1, g.total_sectors).unwrap_err();
        assert!(matches!(err, GptError::NoSignature { .. }), "{err}");
    }

    #[test]
    fn protective_mbr_caps_at_32_bits() {
        let small = protective_mbr(&geometry());
        assert_eq!(
            &small[446 + 8..446 + 16],
            &[1, 0, 0, 0, 0xFF, 0xFF, 0x01, 0x00]
        );
        assert_eq!(small[446 + 4], 0xEE);
        assert_eq!(&small[510..], &[0x55, 0xAA]);
        let huge = Geometry::new(4 << 40, 512).unwrap();
        assert_eq!(&protective_mbr(&huge)[446 + 12..446 + 16], &[0xFF; 4]);
    }
}
