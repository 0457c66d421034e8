//! Writing and wiping partition tables on anything seekable: image files, block devices,
//! in-memory cursors in tests.
//!
//! Writes are whole sectors at fixed offsets and nothing else is touched, so the same layout
//! and disk size give the same bytes every time (the image build pins a hash on it).

use std::io::{Seek, SeekFrom, Write};

use crate::disk::{encode_entries, protective_mbr, Geometry, Header};
use crate::error::{GptError, HeaderCopy, Result};
use crate::layout::{Layout, Placed};

/// Bytes zeroed at each end of the disk by [`wipe_gpt`]: the 512-byte-sector structures
/// (MBR + primary header + 32 sectors of entries at the start, 32 + 1 at the end). These
/// ranges also cover the headers of a 4096-byte-sector GPT (at 4096 and at the last 4096
/// bytes), so one wipe works for both.
const WIPE_HEAD: u64 = 34 * 512;
const WIPE_TAIL: u64 = 33 * 512;

/// Writes a protective MBR and both GPT copies for `layout` on a disk of `disk_size` bytes,
/// and returns where each partition landed.
///
/// The order is backup entries, backup header, primary entries, primary header, protective
/// MBR: each header only after the entries its CRC covers, and the MBR, which tells firmware
/// "this is a GPT disk", last. Nothing is written if the layout does not fit. The file is
/// flushed, not synced: the caller owns durability (`File::sync_all`).
pub fn write_gpt<W: Write + Seek + ?Sized>(
    file: &mut W,
    disk_size: u64,
    layout: &Layout,
) -> Result<Vec<Placed>> {
    let placed = layout.plan(disk_size)?;
    let geometry = Geometry::new(disk_size, layout.sector_size)?;
    let ss = geometry.sector_size;
    let entries = encode_entries(&placed);
    let crc = crc32fast::hash(&entries);
    let backup = Header::for_copy(&geometry, HeaderCopy::Backup, layout.disk_guid, crc);
    let primary = Header::for_copy(&geometry, HeaderCopy::Primary, layout.disk_guid, crc);

    write_at(
        file,
        backup.entries_lba * ss,
        &entries,
        "backup GPT entries",
    )?;
    write_at(
        file,
        backup.my_lba * ss,
        &backup.encode(ss),
        "backup GPT header",
    )?;
    write_at(
        file,
        primary.entries_lba * ss,
        &entries,
        "primary GPT entries",
    )?;
    write_at(
        file,
        primary.my_lba * ss,
        &primary.encode(ss),
        "primary GPT header",
    )?;
    write_at(file, 0, &protective_mbr(&geometry), "protective MBR")?;
    file.flush()
        .map_err(|e| GptError::io("flushing the partition table", e))?;
    Ok(placed)
}

/// Zeroes the protective MBR and both GPT copies (headers and entry arrays) on a disk of
/// `disk_size` bytes, for 512- and 4096-byte sectors alike.
///
/// A flasher calls this when a write fails or does not verify, so a half-written disk has no
/// partition table and no firmware tries to boot it. Partition contents are left alone (with
/// the 1 MiB alignment used here no partition starts inside the wiped ranges).
pub fn wipe_gpt<W: Write + Seek + ?Sized>(file: &mut W, disk_size: u64) -> Result<()> {
    let head = WIPE_HEAD.min(disk_size);
    write_at(
        file,
        0,
        &vec![0u8; head as usize],
        "wiping the start of the disk",
    )?;
    let tail_start = disk_size.saturating_sub(WIPE_TAIL).max(head);
    let tail = disk_size - tail_start;
    if tail > 0 {
        write_at(
            file,
            tail_start,
            &vec![0u8; tail as usize],
            "wiping the end of the disk",
        )?;
    }
    file.flush()
        .map_err(|e| GptError::io("flushing the wiped partition table", e))
}

/// The size in bytes of a file or block device, found by seeking to its end (which works for
/// both, unlike `metadata().len()`, which is 0 for a block device). The position is restored.
pub fn disk_size_of<F: Seek + ?Sized>(file: &mut F) -> Result<u64> {
    let position = file
        .stream_position()
        .map_err(|e| GptError::io("finding the current position of the disk", e))?;
    let size = file
        .seek(SeekFrom::End(0))
        .map_err(|e| GptError::io("seeking to the end of the disk to find its size", e))?;
    file.seek(SeekFrom::Start(position))
        .map_err(|e| GptError::io("seeking back after finding the disk size", e))?;
    Ok(size)
}

fn write_at<W: Write + Seek + ?Sized>(
    file: &mut W,
    offset: u64,
    bytes: &[u8],
    what: &str,
) -> Result<()> {
    file.seek(SeekFrom::Start(offset))
        .and_then(|_| file.write_all(bytes))
        .map_err(|e| GptError::io(format!("writing {what} at byte {offset}"), e))
}

#[cfg(test)]
mod tests {
    use std::io::Cursor;

    use super::*;
    use crate::guid::Guid;
    use crate::layout::PartitionSpec;

    const MIB: u64 = 1 << 20;

    fn layout() -> Layout {
        Layout::new(
            Guid::derive("t", "disk"),
            vec![
                PartitionSpec::new("esp", Guid::EFI_SYSTEM, Guid::derive("t", "esp"), 4 * MIB),
                PartitionSpec::new("data", Guid::LINUX_FILESYSTEM, Guid::derive("t", "data"), 0),
            ],
        )
    }

    #[test]
    fn same_input_same_bytes_and_nothing_outside_the_tables() {
        let mut a = Cursor::new(vec![0u8; (16 * MIB) as usize]);
        let mut b = Cursor::new(vec![0u8; (16 * MIB) as usize]);
        write_gpt(&mut a, 16 * MIB, &layout()).unwrap();
        write_gpt(&mut b, 16 * MIB, &layout()).unwrap();
        assert_eq!(a.get_ref(), b.get_ref());
        let bytes = a.into_inner();
        assert!(bytes[(34 * 512) as usize..(16 * MIB - 33 * 512) as usize]
            .iter()
            .all(|&b| b == 0));
        assert_eq!(&bytes[512..520], b"EFI PART");
        assert_eq!(&bytes[(16 * MIB - 512) as usize..][..8], b"EFI PART");
    }

    #[test]
    fn a_layout_that_does_not_fit_writes_nothing() {
        let mut disk = Cursor::new(Vec::new());
        let mut big = layout();
        big.partitions[0].size_bytes = 64 * MIB;
        assert!(write_gpt(&mut disk, 16 * MIB, &big).is_err());
        assert!(disk.get_ref().is_empty());
    }

    #[test]
    fn wipe_clears_mbr_and_both_headers() {
        let mut disk = Cursor::new(vec![0xA5u8; (16 * MIB) as usize]);
        write_gpt(&mut disk, 16 * MIB, &layout()).unwrap();
        wipe_gpt(&mut disk, 16 * MIB).unwrap();
        let bytes = disk.into_inner();
        assert!(bytes[..(34 * 512) as usize].iter().all(|&b| b == 0));
        assert!(bytes[(16 * MIB - 33 * 512) as usize..]
            .iter()
            .all(|&b| b == 0));
        // Partition contents are untouched.
        assert_eq!(bytes[MIB as usize], 0xA5);
        assert_eq!(bytes[(16 * MIB - 33 * 512 - 1) as usize], 0xA5);
        // A disk smaller than both ranges is zeroed entirely.
        let mut tiny = Cursor::new(vec![0xA5u8; 4096]);
        wipe_gpt(&mut tiny, 4096).unwrap();
        assert!(tiny.into_inner().iter().all(|&b| b == 0));
    }

    #[test]
    fn disk_size_restores_position() {
        let mut disk = Cursor::new(vec![0u8; 5000]);
        disk.set_position(17);
        assert_eq!(disk_size_of(&mut disk).unwrap(), 5000);
        assert_eq!(disk.position(), 17);
    }
}
