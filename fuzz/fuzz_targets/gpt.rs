//! The GPT reader on a disk made of the input after its first byte (512- or 4096-byte sectors,
//! primary or backup copy): never panics; every partition it returns lies inside the disk and
//! the usable area, covers neither header, and none overlap; reading is deterministic. An odd first byte makes the
//! CRCs of every header found (and of its entry array) right first (UEFI 2.10 table 5.5), so
//! mutations reach the header fields and the entries.
#![no_main]

use std::io::Cursor;

use aperture_gpt::read_gpt;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let [flag, data @ ..] = data else { return };
    let mut disk = data.to_vec();
    if flag & 1 == 1 {
        fix_crcs(&mut disk);
    }
    let data = disk.as_slice();
    let size = data.len() as u64;
    let Ok(gpt) = read_gpt(&mut Cursor::new(data), size) else {
        return;
    };
    let mut spans: Vec<_> = gpt
        .partitions
        .iter()
        .map(|p| (p.offset(), p.size()))
        .collect();
    spans.sort();
    for p in &gpt.partitions {
        assert!(gpt.first_usable_lba <= p.first_lba && p.last_lba <= gpt.last_usable_lba);
        assert!(
            p.offset() + p.size() <= size,
            "partition {} ends past the disk",
            p.index
        );
        let last_lba = size / gpt.sector_size - 1;
        assert!(
            p.first_lba >= 2 && p.last_lba < last_lba,
            "a partition covers a GPT header"
        );
    }
    assert!(
        spans.windows(2).all(|w| w[0].0 + w[0].1 <= w[1].0),
        "partitions overlap"
    );
    assert_eq!(read_gpt(&mut Cursor::new(data), size).ok(), Some(gpt));
});

/// Fills in the entry-array CRC and then the header CRC of each header at LBA 1 or the last
/// LBA, for 512- and 4096-byte sectors.
fn fix_crcs(disk: &mut [u8]) {
    let le32 = |b: &[u8], at: usize| u32::from_le_bytes(b[at..at + 4].try_into().unwrap());
    for sector in [512usize, 4096] {
        let last = (disk.len() / sector).saturating_sub(1) * sector;
        for at in [sector, last] {
            let Some(h) = disk.get(at..at + sector) else {
                continue;
            };
            if &h[..8] != b"EFI PART" {
                continue;
            }
            let header_size = (le32(h, 12) as usize).clamp(92, sector);
            let lba = u64::from_le_bytes(h[72..80].try_into().unwrap());
            let bytes = u64::from(le32(h, 80)) * u64::from(le32(h, 84));
            let start = lba.saturating_mul(sector as u64);
            let end = start.saturating_add(bytes.min(1 << 20));
            if let Some(array) = disk.get(start as usize..end as usize) {
                let crc = crc32fast::hash(array);
                disk[at + 88..at + 92].copy_from_slice(&crc.to_le_bytes());
            }
            disk[at + 16..at + 20].fill(0);
            let crc = crc32fast::hash(&disk[at..at + header_size]);
            disk[at + 16..at + 20].copy_from_slice(&crc.to_le_bytes());
        }
    }
}
