//! The GPT reader on the input as a whole disk (512- or 4096-byte sectors, primary or backup
//! copy): never panics; every partition it returns lies inside the disk and the usable area,
//! and none overlap; reading is deterministic.
#![no_main]

use std::io::Cursor;

use aperture_gpt::read_gpt;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
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
    }
    assert!(
        spans.windows(2).all(|w| w[0].0 + w[0].1 <= w[1].0),
        "partitions overlap"
    );
    assert_eq!(read_gpt(&mut Cursor::new(data), size).ok(), Some(gpt));
});
