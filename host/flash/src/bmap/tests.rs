//! Unit tests of the bmap model, writer and parser, on fixtures and in-memory images.

use std::io::Cursor;

use super::*;

const BMAPTOOL_FIXTURE: &str = include_str!("../../fixtures/bmaptool-3.6-create.bmap");

fn sample() -> Bmap {
    Bmap {
        image_size: 10 * 4096 + 100,
        block_size: 4096,
        blocks_count: 11,
        mapped_blocks_count: 5,
        checksum_type: Some(ChecksumType::Sha256),
        ranges: vec![
            BmapRange {
                first: 0,
                last: 2,
                checksum: Some("ab".repeat(32)),
            },
            BmapRange {
                first: 7,
                last: 7,
                checksum: Some("cd".repeat(32)),
            },
            BmapRange {
                first: 10,
                last: 10,
                checksum: Some("ef".repeat(32)),
            },
        ],
    }
}

#[test]
fn human_size_matches_bmap_tools() {
    // Values from Python: BmapHelpers.human_size(n) in bmap-tools 3.6.
    for (size, text) in [
        (1, "1 byte"),
        (0, "0 bytes"),
        (511, "511 bytes"),
        (512, "0.5 KiB"),
        (1_000_000, "976.6 KiB"),
        (1 << 30, "1.0 GiB"),
        (3 << 39, "1.5 TiB"),
        (1 << 50, "1024.0 EiB"),
    ] {
        assert_eq!(human_size(size), text, "{size}");
    }
}

#[test]
fn round_trip_through_xml() {
    let bmap = sample();
    let xml = bmap.to_xml();
    assert!(xml.starts_with("<?xml version=\"1.0\" ?>\n<!-- This file contains"));
    assert!(xml.contains("<bmap version=\"2.0\">"));
    assert!(xml.contains(&format!(
        "<Range chksum=\"{}\"> 0-2 </Range>",
        "ab".repeat(32)
    )));
    assert!(xml.contains(&format!(
        "<Range chksum=\"{}\"> 7 </Range>",
        "cd".repeat(32)
    )));
    assert!(xml.contains("<MappedBlocksCount> 5  </MappedBlocksCount>"));
    assert_eq!(Bmap::parse(&xml).unwrap(), bmap);
    assert_eq!(bmap.to_xml(), xml, "deterministic");
}

#[test]
fn bmaptool_fixture_parses_and_rewrites_byte_for_byte() {
    let bmap = Bmap::parse(BMAPTOOL_FIXTURE).unwrap();
    assert_eq!(bmap.image_size, 1_000_000);
    assert_eq!((bmap.block_size, bmap.blocks_count), (4096, 245));
    assert_eq!(bmap.mapped_blocks_count, 21);
    assert_eq!(bmap.checksum_type, Some(ChecksumType::Sha256));
    let spans: Vec<(u64, u64)> = bmap.ranges.iter().map(|r| (r.first, r.last)).collect();
    assert_eq!(spans, [(0, 2), (5, 5), (9, 20), (100, 103), (244, 244)]);
    assert_eq!(bmap.mapped_bytes(), 20 * 4096 + (1_000_000 - 244 * 4096));
    assert_eq!(bmap.to_xml(), BMAPTOOL_FIXTURE);
}

#[test]
fn mapped_count_comment_may_overrun_its_blanks_like_bmaptool() {
    // Image "1.0 MiB" (7 blanks) but "512.0 KiB or 50.0%" is 18 characters: bmaptool's
    // overwrite eats one of the three spaces before "-->".
    let bmap = Bmap {
        image_size: 1 << 20,
        block_size: 4096,
        blocks_count: 256,
        mapped_blocks_count: 128,
        checksum_type: Some(ChecksumType::Sha256),
        ranges: vec![BmapRange {
            first: 0,
            last: 127,
            checksum: Some("0".repeat(64)),
        }],
    };
    let xml = bmap.to_xml();
    assert!(
        xml.contains("<!-- Count of mapped blocks: 512.0 KiB or 50.0%  -->\n"),
        "{xml}"
    );
    assert!(xml.contains("<MappedBlocksCount> 128 </MappedBlocksCount>"));
    Bmap::parse(&xml).unwrap();
}

#[test]
fn format_1_files_parse() {
    let v10 = Bmap::parse(include_str!("../../fixtures/v1.0-no-checksums.bmap")).unwrap();
    assert_eq!(v10.checksum_type, None);
    assert!(v10.ranges.iter().all(|r| r.checksum.is_none()));
    let v12 = Bmap::parse(include_str!("../../fixtures/v1.2-sha1-ranges.bmap")).unwrap();
    let v13 = Bmap::parse(include_str!("../../fixtures/v1.3-sha1.bmap")).unwrap();
    for bmap in [&v12, &v13] {
        assert_eq!(bmap.checksum_type, Some(ChecksumType::Sha1));
        assert_eq!(bmap.ranges[1].checksum.as_deref().map(str::len), Some(40));
    }
    let v20 = Bmap::parse(BMAPTOOL_FIXTURE).unwrap();
    for bmap in [&v10, &v12, &v13] {
        assert_eq!(bmap.image_size, v20.image_size);
        assert_eq!(bmap.mapped_blocks_count, v20.mapped_blocks_count);
        let spans = |b: &Bmap| {
            b.ranges
                .iter()
                .map(|r| (r.first, r.last))
                .collect::<Vec<_>>()
        };
        assert_eq!(spans(bmap), spans(&v20));
    }
    // A 1.3 file whose SHA-1 does not match is refused.
    let tampered = include_str!("../../fixtures/v1.3-sha1.bmap").replace("> 5 <", "> 6 <");
    assert!(matches!(
        Bmap::parse(&tampered),
        Err(FlashError::BmapFileChecksum { .. })
    ));
}

#[test]
fn tampered_file_checksum_is_an_error() {
    let xml = sample().to_xml();
    // Change one mapped block number: the stored checksum no longer matches.
    let edited = xml.replace("> 7 </Range>", "> 8 </Range>");
    match Bmap::parse(&edited).unwrap_err() {
        FlashError::BmapFileChecksum { expected, actual } => assert_ne!(expected, actual),
        other => panic!("{other}"),
    }
    // Change the stored checksum itself.
    let stored = Bmap::parse(&xml).map(|_| xml.clone()).unwrap();
    let at = stored.find("<BmapFileChecksum> ").unwrap() + "<BmapFileChecksum> ".len();
    let mut edited = stored.clone();
    let flipped = if &stored[at..at + 1] == "0" { "1" } else { "0" };
    edited.replace_range(at..at + 1, flipped);
    assert!(matches!(
        Bmap::parse(&edited),
        Err(FlashError::BmapFileChecksum { .. })
    ));
}

#[test]
fn verify_ranges_reports_the_bad_range() {
    let mut image = vec![0u8; 10 * 4096 + 100];
    image[..3 * 4096].fill(1);
    image[7 * 4096..8 * 4096].fill(7);
    image[10 * 4096..].fill(10);
    let sum = |bytes: &[u8]| ChecksumType::Sha256.hex_of(bytes);
    let mut bmap = sample();
    bmap.ranges[0].checksum = Some(sum(&image[..3 * 4096]));
    bmap.ranges[1].checksum = Some(sum(&image[7 * 4096..8 * 4096]));
    bmap.ranges[2].checksum = Some(sum(&image[10 * 4096..]));
    assert_eq!(bmap.verify_ranges(&mut Cursor::new(&image)).unwrap(), []);

    image[7 * 4096 + 5] = 0xFF;
    let bad = bmap.verify_ranges(&mut Cursor::new(&image)).unwrap();
    assert_eq!(bad.len(), 1);
    assert_eq!((bad[0].first, bad[0].last), (7, 7));
    assert_eq!(bad[0].expected, bmap.ranges[1].checksum.clone().unwrap());

    // An image cut short fails the ranges past its end.
    image.truncate(10 * 4096);
    image[7 * 4096 + 5] = 7;
    let bad = bmap.verify_ranges(&mut Cursor::new(&image)).unwrap();
    assert_eq!(bad.iter().map(|m| m.first).collect::<Vec<_>>(), [10]);
}

#[test]
fn invalid_files_say_what_is_wrong() {
    let good = sample().to_xml();
    let cases: Vec<(String, &str)> = vec![
        (
            good.replace("version=\"2.0\"", "version=\"3.0\""),
            "version",
        ),
        (
            good.replace("version=\"2.0\"", "version=\"two\""),
            "version",
        ),
        (
            good.replace("<BlocksCount> 11 </BlocksCount>", ""),
            "<BlocksCount> is missing",
        ),
        (
            good.replace("<BlocksCount> 11 <", "<BlocksCount> 12 <"),
            "does not match",
        ),
        (good.replace("> sha256 <", "> md5 <"), "md5"),
        (
            good.replace("> 10 </Range>", "> 11 </Range>"),
            "past the last block",
        ),
        (
            good.replace("> 10 </Range>", "> 1 </Range>"),
            "not after the previous range",
        ),
        (
            good.replace("> 0-2 </Range>", "> 2-0 </Range>"),
            "ends before it starts",
        ),
        (
            good.replace("> 0-2 </Range>", "> 0-1 </Range>"),
            "ranges hold 4 blocks",
        ),
        (good.replace("</BlockMap>", ""), "line"),
        ("<notbmap/>".to_string(), "<notbmap>"),
    ];
    for (xml, needle) in cases {
        let err = Bmap::parse(&xml).unwrap_err();
        assert!(
            err.to_string().contains(needle),
            "wanted {needle:?} in: {err}"
        );
    }
}

#[test]
fn file_checksum_is_optional_but_range_checksums_must_be_hex() {
    let xml = sample().to_xml();
    let start = xml.find("    <BmapFileChecksum>").unwrap();
    let end = xml.find("</BmapFileChecksum>\n").unwrap() + "</BmapFileChecksum>\n".len();
    let mut without = xml.clone();
    without.replace_range(start..end, "");
    assert_eq!(Bmap::parse(&without).unwrap(), sample());

    let bad_range = without.replace(&"ab".repeat(32), &"zz".repeat(32));
    let err = Bmap::parse(&bad_range).unwrap_err();
    assert!(err.to_string().contains("not a sha256 in hex"), "{err}");
}

#[test]
fn a_bmap_declaring_entities_is_refused_before_any_is_expanded() {
    // An entity standing in for the image size: a reader that expanded it would accept the file.
    let good = sample().to_xml();
    let with_dtd = good
        .replacen(
            "<bmap version",
            "<!DOCTYPE bmap [<!ENTITY size \"41060\">]>\n<bmap version",
            1,
        )
        .replace(
            "<ImageSize> 41060 </ImageSize>",
            "<ImageSize> &size; </ImageSize>",
        );
    assert_ne!(with_dtd, good);
    let dtd_line = 1 + good[..good.find("<bmap version").unwrap()]
        .matches('\n')
        .count();
    match Bmap::parse(&with_dtd) {
        Err(FlashError::BmapXml { line, reason }) => {
            assert_eq!(line, dtd_line, "{reason}");
            assert!(reason.contains("DTDs"), "{reason}");
        }
        other => panic!("{other:?}"),
    }
}
