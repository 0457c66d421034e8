//! bmap XML (formats 1.0-2.0): what parses is written back by `to_xml` (format 2.0), which
//! parses to the same map (a file without checksums gains the sha256 type) and is a fixed
//! point of the writer.
#![no_main]

use aperture_flash::bmap::{Bmap, ChecksumType};

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(bmap) = Bmap::parse(text) else {
        return;
    };
    assert!(bmap.mapped_bytes() <= bmap.image_size);
    let xml = bmap.to_xml();
    let back = Bmap::parse(&xml).expect("to_xml's output parses");
    let mut expected = bmap.clone();
    expected.checksum_type.get_or_insert(ChecksumType::Sha256);
    assert_eq!(back, expected);
    assert_eq!(back.to_xml(), xml);
});
