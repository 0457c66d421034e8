//! Tier 1: flashing synthetic signed build folders to files. Single and parallel targets equal
//! the image; a tampered folder is refused before any write; a write corrupted in flight is
//! caught by the read-back and leaves no partition table; bmaptool's bmaps work too.

mod common;

use std::fs::{self, File};
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

use aperture_flash::bmap::Bmap;
use aperture_flash::{
    flash, flash_all, FileTarget, FlashError, Job, NoProgress, Progress, Stage, Target, Unmapped,
    VerifiedImage,
};
use common::{flip_byte, head, make_build_folder, sign_folder, BmapKind, IMAGE_SIZE, MIB, NOW};

fn open(dir: &Path) -> VerifiedImage {
    VerifiedImage::open(dir, None, NOW).unwrap()
}

/// The target equals the image on every mapped range (bmap checksums), its GPT reads back,
/// and, when zeroed, it equals the image byte for byte.
fn assert_flashed(target: &Path, image_dir: &Path, unmapped: Unmapped) {
    let bmap = Bmap::parse(&fs::read_to_string(image_dir.join("disk.img.bmap")).unwrap()).unwrap();
    let mut file = File::open(target).unwrap();
    assert_eq!(bmap.verify_ranges(&mut file).unwrap(), vec![]);
    let size = file.metadata().unwrap().len();
    let gpt = aperture_gpt::read_gpt(&mut file, IMAGE_SIZE.min(size)).unwrap();
    assert!(gpt.find("rootfs_b").is_some());
    if unmapped == Unmapped::Zeroed {
        assert_eq!(
            head(target, IMAGE_SIZE),
            fs::read(image_dir.join("disk.img")).unwrap(),
            "{} differs from disk.img",
            target.display()
        );
    }
}

/// A target that flips one bit of the first non-zero byte written at `at` (wipes write
/// zeros, so they pass untouched), or fails every write after `fail_after` writes.
struct Faulty {
    inner: FileTarget,
    flip_at: Mutex<Option<u64>>,
    fail_after: Option<usize>,
    writes: AtomicUsize,
}

impl Faulty {
    fn new(path: &Path) -> Faulty {
        Faulty {
            inner: FileTarget::open(path, IMAGE_SIZE).unwrap(),
            flip_at: Mutex::new(None),
            fail_after: None,
            writes: AtomicUsize::new(0),
        }
    }

    fn flipping(path: &Path, at: u64) -> Faulty {
        let f = Faulty::new(path);
        *f.flip_at.lock().unwrap() = Some(at);
        f
    }

    fn flipped(&self) -> bool {
        self.flip_at.lock().unwrap().is_none()
    }
}

impl Target for Faulty {
    fn name(&self) -> &str {
        self.inner.name()
    }
    fn size(&self) -> u64 {
        self.inner.size()
    }
    fn write_at(&self, offset: u64, data: &[u8]) -> aperture_flash::Result<()> {
        let writes = self.writes.fetch_add(1, Ordering::SeqCst) + 1;
        if self.fail_after.is_some_and(|n| writes > n) {
            return Err(FlashError::Io {
                action: format!("writing {} at byte {offset}", self.name()),
                source: std::io::Error::other("device unplugged"),
            });
        }
        let mut flip_at = self.flip_at.lock().unwrap();
        if let Some(at) = *flip_at {
            if (offset..offset + data.len() as u64).contains(&at) {
                let i = (at - offset) as usize;
                if data[i] != 0 {
                    let mut bad = data.to_vec();
                    bad[i] ^= 0x10;
                    *flip_at = None;
                    return self.inner.write_at(offset, &bad);
                }
            }
        }
        self.inner.write_at(offset, data)
    }
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> aperture_flash::Result<()> {
        self.inner.read_at(offset, buf)
    }
    fn sync(&self) -> aperture_flash::Result<()> {
        self.inner.sync()
    }
    fn zero_cheaply(&self, offset: u64, len: u64) -> aperture_flash::Result<bool> {
        self.inner.zero_cheaply(offset, len)
    }
}

/// Records stages and the bytes advanced in each.
#[derive(Default)]
struct Recorder(Mutex<Vec<(Stage, u64, u64)>>);

impl Progress for Recorder {
    fn stage(&self, stage: Stage, total: u64) {
        self.0.lock().unwrap().push((stage, total, 0));
    }
    fn advance(&self, bytes: u64) {
        if let Some(last) = self.0.lock().unwrap().last_mut() {
            last.2 += bytes;
        }
    }
}

#[test]
fn flash_to_a_new_file_equals_the_image() {
    let dir = tempfile::tempdir().unwrap();
    let image_dir = make_build_folder(&dir.path().join("build"), BmapKind::Ours);
    let image = open(&image_dir);
    assert!(image.mapped_bytes() < IMAGE_SIZE / 2);
    let out = dir.path().join("target.img");
    let target = FileTarget::open(&out, image.image_size()).unwrap();
    let progress = Recorder::default();
    let report = flash(&image, &target, &progress).unwrap();
    assert_eq!(report.bytes_written, image.mapped_bytes());
    assert_eq!(report.ranges_verified, image.bmap().ranges.len());
    assert_eq!(report.unmapped, Unmapped::Zeroed);
    assert_flashed(&out, &image_dir, Unmapped::Zeroed);

    let stages = progress.0.lock().unwrap().clone();
    let names: Vec<Stage> = stages.iter().map(|s| s.0).collect();
    assert_eq!(
        names,
        [
            Stage::Preparing,
            Stage::Writing,
            Stage::PartitionTable,
            Stage::Done
        ]
    );
    for (stage, total, done) in &stages[1..3] {
        assert_eq!(total, done, "{stage:?} reported {done} of {total} bytes");
    }
}

#[test]
fn flash_over_old_contents_zeroes_what_the_bmap_does_not_map() {
    let dir = tempfile::tempdir().unwrap();
    let image_dir = make_build_folder(&dir.path().join("build"), BmapKind::Ours);
    let image = open(&image_dir);
    let out = dir.path().join("used.img");
    let old = vec![0xA5u8; (IMAGE_SIZE + 4 * MIB) as usize];
    fs::write(&out, &old).unwrap();
    let target = FileTarget::open(&out, image.image_size()).unwrap();
    assert_eq!(target.size(), IMAGE_SIZE + 4 * MIB);
    flash(&image, &target, &NoProgress).unwrap();
    assert_flashed(&out, &image_dir, Unmapped::Zeroed);
    let after = fs::read(&out).unwrap();
    // Past the image only the old backup GPT at the end of the target was wiped.
    let end = after.len();
    assert!(after[end - 33 * 512..].iter().all(|&b| b == 0));
    assert!(after[IMAGE_SIZE as usize..end - 33 * 512]
        .iter()
        .all(|&b| b == 0xA5));
}

#[test]
fn four_files_in_parallel_each_verified() {
    let dir = tempfile::tempdir().unwrap();
    let image_dir = make_build_folder(&dir.path().join("build"), BmapKind::Ours);
    let image = open(&image_dir);
    let paths: Vec<_> = (0..4)
        .map(|i| dir.path().join(format!("t{i}.img")))
        .collect();
    let jobs = paths
        .iter()
        .map(|p| Job {
            target: Box::new(FileTarget::open(p, image.image_size()).unwrap()),
            progress: Box::new(NoProgress),
        })
        .collect();
    let outcomes = flash_all(&image, jobs);
    assert_eq!(outcomes.len(), 4);
    for (outcome, path) in outcomes.iter().zip(&paths) {
        assert!(outcome.ok(), "{}: {:?}", outcome.target, outcome.result);
        assert_eq!(outcome.target, path.display().to_string());
        assert_flashed(path, &image_dir, Unmapped::Zeroed);
    }
}

#[test]
fn one_failing_target_does_not_fail_the_others() {
    let dir = tempfile::tempdir().unwrap();
    let image_dir = make_build_folder(&dir.path().join("build"), BmapKind::Ours);
    let image = open(&image_dir);
    let good = dir.path().join("good.img");
    let bad = dir.path().join("bad.img");
    let mut faulty = Faulty::new(&bad);
    faulty.fail_after = Some(6);
    let jobs = vec![
        Job {
            target: Box::new(FileTarget::open(&good, IMAGE_SIZE).unwrap()),
            progress: Box::new(NoProgress),
        },
        Job {
            target: Box::new(faulty),
            progress: Box::new(NoProgress),
        },
    ];
    let outcomes = flash_all(&image, jobs);
    assert!(outcomes[0].ok(), "{:?}", outcomes[0].result);
    let err = chain(outcomes[1].result.as_ref().unwrap_err());
    assert!(err.contains("device unplugged"), "{err}");
    assert_flashed(&good, &image_dir, Unmapped::Zeroed);
}

#[test]
fn tampered_folders_are_refused_before_any_write() {
    let dir = tempfile::tempdir().unwrap();
    let pristine = make_build_folder(&dir.path().join("build"), BmapKind::Ours);
    let copy = |name: &str| {
        let d = dir.path().join(name);
        fs::create_dir_all(&d).unwrap();
        for f in fs::read_dir(&pristine).unwrap() {
            let f = f.unwrap();
            fs::copy(f.path(), d.join(f.file_name())).unwrap();
        }
        d
    };
    type Tamper = Box<dyn Fn(&Path)>;
    let cases: Vec<(&str, Tamper, &str)> = vec![
        (
            "flipped-zst-byte",
            Box::new(|d| flip_byte(&d.join("disk.img.zst"), 1000)),
            "disk.img.zst does not match the signed manifest",
        ),
        (
            "edited-manifest",
            Box::new(|d| {
                let m = fs::read_to_string(d.join("manifest.json")).unwrap();
                fs::write(d.join("manifest.json"), m.replace("\"1.0.0\"", "\"1.0.1\"")).unwrap();
            }),
            "does not verify against root key",
        ),
        (
            "edited-bmap",
            Box::new(|d| {
                let b = fs::read_to_string(d.join("disk.img.bmap")).unwrap();
                fs::write(d.join("disk.img.bmap"), b.replace("<Range", "<Range ")).unwrap();
            }),
            "disk.img.bmap does not match the signed manifest",
        ),
        (
            "other-root-key",
            Box::new(|d| {
                aperture_trust::keys::SigningKeyPair::from_secret_bytes(&[9; 32])
                    .public()
                    .save(&d.join("root.pub"))
                    .unwrap()
            }),
            "does not verify against root key",
        ),
        (
            "missing-signature",
            Box::new(|d| fs::remove_file(d.join("manifest.sig")).unwrap()),
            "manifest.sig",
        ),
    ];
    for (name, tamper, expected) in cases {
        let d = copy(name);
        tamper(&d);
        let target = dir.path().join(format!("{name}.img"));
        fs::write(&target, vec![0x5Au8; IMAGE_SIZE as usize]).unwrap();
        let err = chain(&VerifiedImage::open(&d, None, NOW).unwrap_err());
        assert!(err.contains(expected), "{name}: {err}");
        // The flow stops here: no VerifiedImage, no flash. The target is as it was.
        assert!(
            fs::read(&target).unwrap().iter().all(|&b| b == 0x5A),
            "{name}"
        );
    }
    // An expired release key is refused too.
    let err = VerifiedImage::open(&pristine, None, NOW + 2_000_000).unwrap_err();
    assert!(matches!(err, FlashError::Untrusted { .. }), "{err}");
    assert!(chain(&err).contains("expired"), "{err}");
}

#[test]
fn zst_changed_after_verification_is_caught_and_the_table_wiped() {
    let dir = tempfile::tempdir().unwrap();
    // With range checksums in the signed bmap, a different image swapped in after the check
    // fails the read-back of the range it changes.
    let image_dir = make_build_folder(&dir.path().join("build"), BmapKind::Ours);
    let image = open(&image_dir);
    let disk = image_dir.join("disk.img");
    flip_byte(&disk, 2000 * 4096 + 9);
    let zst = File::create(image_dir.join("disk.img.zst")).unwrap();
    zstd::stream::copy_encode(File::open(&disk).unwrap(), zst, 3).unwrap();
    let out = dir.path().join("t.img");
    let target = FileTarget::open(&out, IMAGE_SIZE).unwrap();
    let err = flash(&image, &target, &NoProgress).unwrap_err();
    let text = chain(&err);
    assert!(text.contains("read-back of"), "{text}");
    assert!(text.contains("partition table was wiped"), "{text}");
    let mut file = File::open(&out).unwrap();
    assert!(aperture_gpt::read_gpt(&mut file, IMAGE_SIZE).is_err());

    // Without range checksums the stream itself is hashed again: even the same image
    // compressed differently is refused.
    let image_dir = make_build_folder(&dir.path().join("plain"), BmapKind::NoChecksums);
    let image = open(&image_dir);
    let zst = File::create(image_dir.join("disk.img.zst")).unwrap();
    zstd::stream::copy_encode(File::open(image_dir.join("disk.img")).unwrap(), zst, 1).unwrap();
    let out = dir.path().join("t2.img");
    let target = FileTarget::open(&out, IMAGE_SIZE).unwrap();
    let err = flash(&image, &target, &NoProgress).unwrap_err();
    let text = chain(&err);
    assert!(
        text.contains("changed while it was being written"),
        "{text}"
    );
    assert!(text.contains("partition table was wiped"), "{text}");
    let mut file = File::open(&out).unwrap();
    assert!(aperture_gpt::read_gpt(&mut file, IMAGE_SIZE).is_err());
}

#[test]
fn corrupted_write_is_caught_by_read_back_and_the_table_wiped() {
    let dir = tempfile::tempdir().unwrap();
    let image_dir = make_build_folder(&dir.path().join("build"), BmapKind::Ours);
    let image = open(&image_dir);
    // A byte in rootfs_a's data, then a byte of the primary GPT header (written last).
    for (at, what) in [
        (1600 * 4096 + 77, "sha256"),
        (512 + 1, "partition table region"),
    ] {
        let out = dir.path().join(format!("t{at}.img"));
        let target = Faulty::flipping(&out, at);
        let err = flash(&image, &target, &NoProgress).unwrap_err();
        assert!(target.flipped(), "the fault at {at} was never injected");
        let FlashError::Failed {
            error, wipe_error, ..
        } = &err
        else {
            panic!("{err}")
        };
        assert!(wipe_error.is_none(), "{err}");
        assert!(matches!(**error, FlashError::ReadBack { .. }), "{err}");
        let text = chain(&err);
        assert!(text.contains("read-back of"), "{text}");
        assert!(text.contains(what), "{text}");
        let mut file = File::open(&out).unwrap();
        let gpt = aperture_gpt::read_gpt(&mut file, IMAGE_SIZE);
        assert!(gpt.is_err(), "a partition table survived: {gpt:?}");
    }
}

#[test]
fn failing_device_is_reported_and_wiped() {
    let dir = tempfile::tempdir().unwrap();
    let image_dir = make_build_folder(&dir.path().join("build"), BmapKind::Ours);
    let image = open(&image_dir);
    let out = dir.path().join("t.img");
    let mut target = Faulty::new(&out);
    target.fail_after = Some(5);
    let err = flash(&image, &target, &NoProgress).unwrap_err();
    let text = err.to_string();
    assert!(
        text.starts_with(&format!("flashing {} failed", out.display())),
        "{text}"
    );
    // The device is gone, so the wipe fails too, and the message says so loudly.
    assert!(text.contains("ALSO failed"), "{text}");
    assert!(!err.is_refusal());
}

#[test]
fn too_small_target_is_refused_untouched() {
    let dir = tempfile::tempdir().unwrap();
    let image_dir = make_build_folder(&dir.path().join("build"), BmapKind::Ours);
    let image = open(&image_dir);
    struct Small(FileTarget);
    impl Target for Small {
        fn name(&self) -> &str {
            "/dev/sdsmall"
        }
        fn size(&self) -> u64 {
            IMAGE_SIZE - 4096
        }
        fn write_at(&self, _: u64, _: &[u8]) -> aperture_flash::Result<()> {
            panic!("written")
        }
        fn read_at(&self, o: u64, b: &mut [u8]) -> aperture_flash::Result<()> {
            self.0.read_at(o, b)
        }
        fn sync(&self) -> aperture_flash::Result<()> {
            panic!("synced")
        }
        fn zero_cheaply(&self, _: u64, _: u64) -> aperture_flash::Result<bool> {
            panic!("zeroed")
        }
    }
    let target = Small(FileTarget::open(&dir.path().join("s"), 4096).unwrap());
    let err = flash(&image, &target, &NoProgress).unwrap_err();
    assert!(err.is_refusal(), "{err}");
    assert!(
        err.to_string()
            .starts_with("refusing to flash /dev/sdsmall: it is too small"),
        "{err}"
    );
}

#[test]
fn bmap_without_checksums_is_verified_with_our_own_hashes() {
    let dir = tempfile::tempdir().unwrap();
    let image_dir = make_build_folder(&dir.path().join("build"), BmapKind::NoChecksums);
    let image = open(&image_dir);
    assert_eq!(image.bmap().checksum_type, None);
    let out = dir.path().join("ok.img");
    let target = FileTarget::open(&out, IMAGE_SIZE).unwrap();
    flash(&image, &target, &NoProgress).unwrap();
    assert_eq!(
        head(&out, IMAGE_SIZE),
        fs::read(image_dir.join("disk.img")).unwrap()
    );

    let bad = dir.path().join("bad.img");
    let target = Faulty::flipping(&bad, 2000 * 4096 + 5);
    let err = flash(&image, &target, &NoProgress).unwrap_err();
    assert!(chain(&err).contains("read-back of"), "{err}");
}

#[test]
fn bmap_written_by_bmaptool_is_accepted() {
    if aperture_sys::tool::for_test(
        "bmaptool",
        "bmap-tools",
        "bmap_written_by_bmaptool_is_accepted",
    )
    .is_none()
    {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let image_dir = make_build_folder(&dir.path().join("build"), BmapKind::Bmaptool);
    let text = fs::read_to_string(image_dir.join("disk.img.bmap")).unwrap();
    assert!(text.contains("<bmap version=\"2.0\">"), "{text}");
    let image = open(&image_dir);
    let out = dir.path().join("t.img");
    let target = FileTarget::open(&out, IMAGE_SIZE).unwrap();
    flash(&image, &target, &NoProgress).unwrap();
    assert_flashed(&out, &image_dir, Unmapped::Zeroed);
}

#[test]
fn resigned_folder_verifies_again() {
    // The test helper itself: editing a file and re-signing gives a folder that verifies,
    // so the refusals above are about the tampering and nothing else.
    let dir = tempfile::tempdir().unwrap();
    let image_dir = make_build_folder(&dir.path().join("build"), BmapKind::Ours);
    flip_byte(&image_dir.join("disk.img.zst"), 1000);
    sign_folder(&image_dir);
    VerifiedImage::open(&image_dir, None, NOW).unwrap();
}

use aperture_flash::error::chain;

#[test]
fn flash_from_the_raw_image_equals_the_image_and_checks_every_range() {
    let dir = tempfile::tempdir().unwrap();
    let image_dir = make_build_folder(&dir.path().join("build"), BmapKind::Ours);
    let image = VerifiedImage::open_raw(&image_dir, None, NOW).unwrap();
    assert_eq!(image.raw_path(), Some(image_dir.join("disk.img").as_path()));

    // Onto a file target and through a wrapper that sees every write.
    let out = dir.path().join("sent.img");
    let target = FileTarget::open(&out, image.image_size()).unwrap();
    let progress = Recorder::default();
    let report = flash(&image, &target, &progress).unwrap();
    assert_eq!(report.bytes_written, image.mapped_bytes());
    assert_eq!(report.ranges_verified, image.bmap().ranges.len());
    assert_flashed(&out, &image_dir, Unmapped::Zeroed);
    for (stage, total, done) in &progress.0.lock().unwrap()[1..3] {
        assert_eq!(total, done, "{stage:?} reported {done} of {total} bytes");
    }
    let out = dir.path().join("written.img");
    flash(&image, &Faulty::new(&out), &NoProgress).unwrap();
    assert_flashed(&out, &image_dir, Unmapped::Zeroed);

    // A write corrupted in flight is caught by the read-back.
    let bad = dir.path().join("bad.img");
    let target = Faulty::flipping(&bad, 1600 * 4096 + 77);
    let err = flash(&image, &target, &NoProgress).unwrap_err();
    assert!(target.flipped());
    let text = chain(&err);
    assert!(text.contains("read-back of"), "{text}");
    assert!(text.contains("partition table was wiped"), "{text}");

    // disk.img changed after the check (same size): the range it changes fails the
    // read-back against the signed bmap and no partition table is left.
    flip_byte(&image_dir.join("disk.img"), 2000 * 4096 + 9);
    let out = dir.path().join("tampered.img");
    let target = FileTarget::open(&out, IMAGE_SIZE).unwrap();
    let err = flash(&image, &target, &NoProgress).unwrap_err();
    let text = chain(&err);
    assert!(text.contains("read-back of"), "{text}");
    assert!(text.contains("partition table was wiped"), "{text}");
    let mut file = File::open(&out).unwrap();
    assert!(aperture_gpt::read_gpt(&mut file, IMAGE_SIZE).is_err());
}

#[test]
fn raw_image_is_refused_without_range_checksums_or_with_another_size() {
    let dir = tempfile::tempdir().unwrap();
    let image_dir = make_build_folder(&dir.path().join("plain"), BmapKind::NoChecksums);
    let err = VerifiedImage::open_raw(&image_dir, None, NOW).unwrap_err();
    let text = chain(&err);
    assert!(text.contains("has no checksum for blocks"), "{text}");
    assert!(text.contains("disk.img.zst instead"), "{text}");

    let image_dir = make_build_folder(&dir.path().join("grown"), BmapKind::Ours);
    File::options()
        .write(true)
        .open(image_dir.join("disk.img"))
        .unwrap()
        .set_len(IMAGE_SIZE + 4096)
        .unwrap();
    let err = VerifiedImage::open_raw(&image_dir, None, NOW).unwrap_err();
    let text = chain(&err);
    assert!(text.contains("but the signed manifest says"), "{text}");
}

#[test]
fn a_build_without_a_compressed_image_flashes_raw_and_says_so_otherwise() {
    // A recipe with `[outputs] compressed_disk = false` signs no disk.img.zst.
    let dir = tempfile::tempdir().unwrap();
    let image_dir = make_build_folder(&dir.path().join("build"), BmapKind::Ours);
    std::fs::remove_file(image_dir.join("disk.img.zst")).unwrap();
    sign_folder(&image_dir);

    let err = VerifiedImage::open(&image_dir, None, NOW).unwrap_err();
    let text = chain(&err);
    assert!(text.contains("has no compressed disk image"), "{text}");
    assert!(text.contains("--input raw"), "{text}");

    let image = VerifiedImage::open_raw(&image_dir, None, NOW).unwrap();
    let out = dir.path().join("sent.img");
    let target = FileTarget::open(&out, image.image_size()).unwrap();
    flash(&image, &target, &NoProgress).unwrap();
    assert_flashed(&out, &image_dir, Unmapped::Zeroed);
}
