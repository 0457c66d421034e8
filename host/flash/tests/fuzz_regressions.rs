//! Inputs the fuzz targets (`cargo xtask fuzz`, `fuzz/fuzz_targets/`) found breaking a parser of
//! this crate, each kept as a fixture in `fixtures/fuzz/` named after what it exercises, with
//! the invariant it broke.

use aperture_flash::bmap::Bmap;

fn fixture(name: &str) -> String {
    let path = format!("{}/fixtures/fuzz/{name}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read_to_string(path).unwrap()
}

/// Target `bmap`: an image of 2^64 - 1 bytes parsed (its counts are consistent), and then the
/// byte span of its last block, which ends at 2^64, overflowed (a panic in debug builds, a
/// wrapped offset in release). Such a map is now refused when parsed.
#[test]
fn an_image_ending_past_the_largest_offset_is_refused() {
    let text = fixture("image-size-u64-max.bmap");
    let err = Bmap::parse(&text).unwrap_err().to_string();
    assert!(err.contains("ends past the largest byte offset"), "{err}");
    // One block less still parses, and its last range spans to the end of the image.
    let smaller = text
        .replace("18446744073709551615", "18446744073709547520")
        .replace("4503599627370496", "4503599627370495")
        .replace("4503599627370495 </Range>", "4503599627370494 </Range>");
    let bmap = Bmap::parse(&smaller).unwrap();
    let last = bmap.ranges.last().unwrap();
    assert_eq!(bmap.byte_span(last), (u64::MAX - 8191, 4096));
    assert_eq!(bmap.mapped_bytes(), 4096);
}
