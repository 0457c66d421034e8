//! bmap files against real sparse images and against bmaptool itself: what `bmaptool create`
//! writes we write byte for byte, what we write `bmaptool copy` accepts and copies exactly,
//! and tampering is caught on both sides. Tests needing bmaptool skip without it (or fail
//! under `cargo xtask test`); the recorded fixture keeps the format checked anyway.

use std::fs::{self, File, OpenOptions};
use std::io::{Seek, SeekFrom, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use aperture_flash::bmap::{Bmap, DEFAULT_BLOCK_SIZE};
use aperture_flash::FlashError;

/// Same image as `fixtures/make-bmap-fixtures.py`.
const IMAGE_SIZE: u64 = 1_000_000;
const BLOCK: u64 = 4096;
const RANGES: &[(u64, u64)] = &[(0, 2), (5, 5), (9, 20), (100, 103), (244, 244)];
/// Inclusive first and last block of a mapped run.
type Span = (u64, u64);

const FIXTURE: &str = include_str!("../fixtures/bmaptool-3.6-create.bmap");

fn block_bytes(b: u64, image_size: u64) -> Vec<u8> {
    let n = BLOCK.min(image_size - b * BLOCK);
    (0..n).map(|j| ((b * 31 + j) % 251 + 1) as u8).collect()
}

/// A sparse image with data in `ranges` and zeros explicitly written in `zero_blocks`.
fn sparse_image(path: &Path, size: u64, ranges: &[(u64, u64)], zero_blocks: &[u64]) {
    let file = File::create(path).unwrap();
    file.set_len(size).unwrap();
    for &(first, last) in ranges {
        for b in first..=last {
            file.write_all_at(&block_bytes(b, size), b * BLOCK).unwrap();
        }
    }
    for &b in zero_blocks {
        file.write_all_at(&vec![0u8; BLOCK as usize], b * BLOCK)
            .unwrap();
    }
    file.sync_all().unwrap();
}

fn bmaptool(test: &str) -> Option<PathBuf> {
    aperture_sys::tool::for_test("bmaptool", "bmap-tools", test)
}

fn run(tool: &Path, args: &[&Path]) -> Output {
    Command::new(tool)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

fn run_ok(tool: &Path, args: &[&Path]) -> Output {
    let output = run(tool, args);
    assert!(
        output.status.success(),
        "{} {args:?}: {}\n{}",
        tool.display(),
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

fn spans(bmap: &Bmap) -> Vec<(u64, u64)> {
    bmap.ranges.iter().map(|r| (r.first, r.last)).collect()
}

#[test]
fn sparse_file_maps_like_the_recorded_bmaptool_output() {
    let dir = tempfile::tempdir().unwrap();
    let image = dir.path().join("image.img");
    sparse_image(&image, IMAGE_SIZE, RANGES, &[]);
    let ours = Bmap::from_sparse_file(&image, DEFAULT_BLOCK_SIZE).unwrap();
    assert_eq!(ours, Bmap::parse(FIXTURE).unwrap());
    assert_eq!(ours.to_xml(), FIXTURE);
    assert_eq!(Bmap::parse(&ours.to_xml()).unwrap(), ours, "round trip");
    let mut file = File::open(&image).unwrap();
    assert_eq!(ours.verify_ranges(&mut file).unwrap(), []);
}

#[test]
fn explicit_zero_blocks_are_not_mapped() {
    let dir = tempfile::tempdir().unwrap();
    let image = dir.path().join("zeros.img");
    // Zeros written out between blocks 2 and 5 (would merge 0-5), in a run of their own,
    // and as the tail of the 9-20 range.
    let zeros: Vec<u64> = [3, 4, 21, 22].into_iter().chain(30..40).collect();
    sparse_image(&image, IMAGE_SIZE, RANGES, &zeros);
    let ours = Bmap::from_sparse_file(&image, DEFAULT_BLOCK_SIZE).unwrap();
    assert_eq!(spans(&ours), RANGES);
    assert_eq!(ours.mapped_blocks_count, 21);
    // Same contents, so the same map as the image without written zeros.
    assert_eq!(ours, Bmap::parse(FIXTURE).unwrap());

    // bmaptool maps what is allocated, zeros included: every range of ours is inside one of
    // its ranges, and it never maps less.
    let Some(tool) = bmaptool(module_path!()) else {
        return;
    };
    let theirs_path = dir.path().join("zeros.bmap");
    run_ok(
        &tool,
        &["create".as_ref(), "-o".as_ref(), &theirs_path, &image],
    );
    let theirs = Bmap::parse(&fs::read_to_string(&theirs_path).unwrap()).unwrap();
    assert!(theirs.mapped_blocks_count >= ours.mapped_blocks_count);
    for r in &ours.ranges {
        assert!(
            theirs
                .ranges
                .iter()
                .any(|t| t.first <= r.first && r.last <= t.last),
            "our range {}-{} is not inside bmaptool's map {:?}",
            r.first,
            r.last,
            spans(&theirs)
        );
    }
    eprintln!(
        "bmaptool maps {} blocks of the explicitly zeroed image, we map {}",
        theirs.mapped_blocks_count, ours.mapped_blocks_count
    );
}

#[test]
fn bmaptool_create_writes_the_same_bytes_as_we_do() {
    let Some(tool) = bmaptool(module_path!()) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    // The fixture image, and one whose mapped-size comment overruns bmaptool's blanks.
    let cases: [(&str, u64, &[Span]); 2] = [
        ("fixture.img", IMAGE_SIZE, RANGES),
        ("half.img", 1 << 20, &[(0, 127)]),
    ];
    for (name, size, ranges) in cases {
        let image = dir.path().join(name);
        sparse_image(&image, size, ranges, &[]);
        let theirs_path = dir.path().join(format!("{name}.bmap"));
        run_ok(
            &tool,
            &["create".as_ref(), "-o".as_ref(), &theirs_path, &image],
        );
        let theirs = fs::read_to_string(&theirs_path).unwrap();
        let ours = Bmap::from_sparse_file(&image, DEFAULT_BLOCK_SIZE).unwrap();
        assert_eq!(ours.to_xml(), theirs, "{name}");
        assert_eq!(Bmap::parse(&theirs).unwrap(), ours, "{name}");
    }
}

#[test]
fn bmaptool_copy_with_our_bmap_reproduces_the_image() {
    let Some(tool) = bmaptool(module_path!()) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    for (name, zeros) in [("plain.img", vec![]), ("zeros.img", vec![3, 4, 30, 31])] {
        let image = dir.path().join(name);
        sparse_image(&image, IMAGE_SIZE, RANGES, &zeros);
        let bmap_path = dir.path().join(format!("{name}.bmap"));
        let bmap = Bmap::from_sparse_file(&image, DEFAULT_BLOCK_SIZE).unwrap();
        fs::write(&bmap_path, bmap.to_xml()).unwrap();
        let target = dir.path().join(format!("{name}.target"));
        run_ok(
            &tool,
            &[
                "copy".as_ref(),
                "--bmap".as_ref(),
                &bmap_path,
                &image,
                &target,
            ],
        );
        assert_eq!(
            fs::read(&target).unwrap(),
            fs::read(&image).unwrap(),
            "{name}"
        );
    }
}

#[test]
fn tampered_range_checksum_parses_but_is_reported() {
    let dir = tempfile::tempdir().unwrap();
    let image = dir.path().join("image.img");
    sparse_image(&image, IMAGE_SIZE, RANGES, &[]);
    let mut bmap = Bmap::from_sparse_file(&image, DEFAULT_BLOCK_SIZE).unwrap();
    bmap.ranges[2].checksum = Some("0".repeat(64));
    // Written with a correct file checksum: only the range is wrong.
    let xml = bmap.to_xml();
    let parsed = Bmap::parse(&xml).unwrap();
    let bad = parsed
        .verify_ranges(&mut File::open(&image).unwrap())
        .unwrap();
    assert_eq!(bad.len(), 1);
    assert_eq!((bad[0].first, bad[0].last), (9, 20));
    assert_eq!(bad[0].expected, "0".repeat(64));

    // A change to the image is reported the same way.
    let good = Bmap::from_sparse_file(&image, DEFAULT_BLOCK_SIZE).unwrap();
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .open(&image)
        .unwrap();
    file.seek(SeekFrom::Start(100 * BLOCK + 17)).unwrap();
    file.write_all(b"x").unwrap();
    let bad = good.verify_ranges(&mut file).unwrap();
    assert_eq!(
        bad.iter().map(|m| (m.first, m.last)).collect::<Vec<_>>(),
        [(100, 103)]
    );

    // bmaptool checks our range checksums too.
    let Some(tool) = bmaptool(module_path!()) else {
        return;
    };
    let bmap_path = dir.path().join("tampered-range.bmap");
    fs::write(&bmap_path, xml).unwrap();
    let target = dir.path().join("target");
    let output = run(
        &tool,
        &[
            "copy".as_ref(),
            "--bmap".as_ref(),
            &bmap_path,
            &image,
            &target,
        ],
    );
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("checksum mismatch for blocks range 9-20"),
        "{stderr}"
    );
}

#[test]
fn tampered_bmap_file_checksum_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let image = dir.path().join("image.img");
    sparse_image(&image, IMAGE_SIZE, RANGES, &[]);
    let xml = Bmap::from_sparse_file(&image, DEFAULT_BLOCK_SIZE)
        .unwrap()
        .to_xml();
    // Drop block 5 from the map without fixing the file checksum.
    let tampered = xml
        .replace("<MappedBlocksCount> 21 ", "<MappedBlocksCount> 20 ")
        .lines()
        .filter(|line| !line.ends_with("> 5 </Range>"))
        .map(|line| format!("{line}\n"))
        .collect::<String>();
    assert_ne!(tampered, xml);
    let err = Bmap::parse(&tampered).unwrap_err();
    assert!(matches!(err, FlashError::BmapFileChecksum { .. }), "{err}");
    assert!(err.to_string().contains("checksum mismatch"), "{err}");

    let Some(tool) = bmaptool(module_path!()) else {
        return;
    };
    let bmap_path = dir.path().join("tampered.bmap");
    fs::write(&bmap_path, tampered).unwrap();
    let output = run(
        &tool,
        &[
            "copy".as_ref(),
            "--bmap".as_ref(),
            &bmap_path,
            &image,
            &dir.path().join("t"),
        ],
    );
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("checksum mismatch for bmap file"));
}

#[test]
fn other_block_sizes_and_bad_inputs() {
    let dir = tempfile::tempdir().unwrap();
    let image = dir.path().join("image.img");
    sparse_image(&image, IMAGE_SIZE, RANGES, &[]);
    // 64 KiB blocks: blocks 0-2 and 5 share block 0, 9-20 spans blocks 0-1.
    let big = Bmap::from_sparse_file(&image, 65536).unwrap();
    assert_eq!(spans(&big), [(0, 1), (6, 6), (15, 15)]);
    assert_eq!(big.blocks_count, IMAGE_SIZE.div_ceil(65536));
    assert_eq!(
        big.verify_ranges(&mut File::open(&image).unwrap()).unwrap(),
        []
    );
    let small = Bmap::from_sparse_file(&image, 512).unwrap();
    assert_eq!(
        small.mapped_bytes(),
        Bmap::parse(FIXTURE).unwrap().mapped_bytes()
    );

    for size in [0, 1000, 256] {
        let err = Bmap::from_sparse_file(&image, size).unwrap_err();
        assert!(matches!(err, FlashError::BmapImage { .. }), "{err}");
    }
    let empty = dir.path().join("empty.img");
    File::create(&empty).unwrap();
    let err = Bmap::from_sparse_file(&empty, DEFAULT_BLOCK_SIZE).unwrap_err();
    assert!(err.to_string().contains("empty"), "{err}");
    let err = Bmap::from_sparse_file(dir.path(), DEFAULT_BLOCK_SIZE).unwrap_err();
    assert!(
        matches!(err, FlashError::BmapImage { .. } | FlashError::Io { .. }),
        "{err}"
    );
    let err = Bmap::from_sparse_file(dir.path().join("missing"), DEFAULT_BLOCK_SIZE).unwrap_err();
    assert!(err.to_string().contains("missing"), "{err}");
}
