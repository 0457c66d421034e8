//! Delta installs: the new slot is rebuilt from the running slot plus the delta and verified
//! against the signed manifest exactly as a full install; a device that does not run the
//! delta's base refuses it before writing anything, and a corrupted running slot yields a hash
//! mismatch and a target left unbootable, never a different slot.

mod common;

use aperture_slots::Slot;
use aperture_trust::TrustError;
use aperture_updater::{InstallOptions, UpdateError};
use common::*;

/// An error with its causes, as `aperture-update` prints it.
fn chain(err: &dyn std::error::Error) -> String {
    let mut out = err.to_string();
    let mut next = err.source();
    while let Some(e) = next {
        out = format!("{out}: {e}");
        next = e.source();
    }
    out
}

/// v1, and v2: the same data with three blocks changed, as a full image and as a delta.
fn releases() -> (Image, Image, Image) {
    let v1 = image("1.0.0", 1, 1);
    let mut data = v1.rootfs[..v1.verity.data_size() as usize].to_vec();
    for block in [3usize, 200, 600] {
        data[block * 4096..block * 4096 + 100].fill(0xa5);
    }
    // The kernel is the same; the initrd has one byte changed (in both slots' UKIs, with
    // v2's command lines).
    let mut initrd = v1.initrd.clone();
    initrd[1000] ^= 1;
    let v2 = image_of_data(BOARD, "2.0.0", 2, 2, &keys(), data, &[], |_| {}).with_boot(
        v1.kernel.clone(),
        initrd,
        &keys(),
    );
    let delta = v2.as_delta_from(&v1, &keys());
    (v1, v2, delta)
}

#[test]
fn a_delta_rebuilds_the_slot_from_the_running_one_and_it_verifies() {
    let (v1, v2, delta) = releases();
    let sizes: Vec<usize> = delta.payloads.iter().map(|(_, d)| d.len()).collect();
    assert!(sizes[0] < 2_000, "the rootfs delta is {} bytes", sizes[0]);
    // Each UKI differs from the running one in its command line (slot and verity root), its
    // initrd byte and its "signature".
    assert!(sizes[1] < 400 && sizes[2] < 400, "uki-a, uki-b: {sizes:?}");
    assert!(
        delta.bundle.len() < 16 * 1024 && delta.bundle.len() * 100 < v2.bundle.len(),
        "{} bytes, the full bundle {}",
        delta.bundle.len(),
        v2.bundle.len()
    );
    let dev = Device::new(&v1);
    dev.set_running_verity(Slot::A, &v1);
    let mut u = dev.updater(Slot::A);
    let done = u
        .install(&mut &delta.bundle[..], &InstallOptions::default())
        .unwrap();
    assert_eq!(done.target, Slot::B);
    assert_eq!(dev.slot_bytes(Slot::B, v2.rootfs.len()), v2.rootfs);
    assert_eq!(dev.slot_bytes(Slot::A, v1.rootfs.len()), v1.rootfs);
    // Slot B's UKI was rebuilt from slot A's on the ESP; uki-a.efi was only checked.
    let record = dev.assert_slot_verifies(Slot::B);
    let uki = std::fs::read(dev.paths.slot_dir(Slot::B).join("uki.efi")).unwrap();
    assert_eq!(uki, v2.uki[1]);
    let uki_a = std::fs::read(dev.paths.slot_dir(Slot::A).join("uki.efi")).unwrap();
    assert_eq!(uki_a, v1.uki[0], "the running slot's UKI is untouched");
    assert_eq!(record.version.to_string(), "2.0.0");
    assert_eq!(dev.boot(), Slot::B);
}

#[test]
fn a_device_not_running_the_base_refuses_the_delta_and_writes_nothing() {
    let (v1, _, delta) = releases();
    let other = image("1.5.0", 1, 9);
    let dev = Device::new(&v1);
    for running in [None, Some(&other)] {
        match running {
            None => dev.set_running(Slot::A, &v1),
            Some(img) => dev.set_running_verity(Slot::A, img),
        }
        let before = dev.snapshot();
        let err = dev
            .updater(Slot::A)
            .install(&mut &delta.bundle[..], &InstallOptions::default())
            .unwrap_err();
        assert!(err.is_refusal(), "{err}");
        assert!(
            matches!(err, UpdateError::Trust(TrustError::DeltaBase { .. })),
            "{err:?}"
        );
        let msg = chain(&err);
        assert!(msg.contains("install the full bundle"), "{msg}");
        assert!(msg.contains("1.0.0"), "{msg}");
        assert_eq!(dev.snapshot(), before, "nothing was written");
    }
}

/// A device running `v1` (booted with its verity root) whose slot A partition rotted in a
/// block the delta copies: reads through dm-verity would fail on it; the raw partition the
/// delta reads does not.
fn rotted_device(v1: &Image) -> Device {
    let dev = Device::new(v1);
    dev.set_running_verity(Slot::A, v1);
    let mut part = aperture_updater::disk::Disk::open(&dev.disk(), "rootfs_a").unwrap();
    part.write_all_at(&[0xff; 16], 100 * 4096).unwrap();
    part.sync().unwrap();
    dev
}

#[test]
fn a_corrupted_running_slot_fails_the_hash_and_the_target_stays_unbootable() {
    let (v1, _, delta) = releases();
    let dev = rotted_device(&v1);
    let err = dev
        .updater(Slot::A)
        .install(&mut &delta.bundle[..], &InstallOptions::default())
        .unwrap_err();
    let msg = chain(&err);
    assert!(
        msg.contains("rootfs_a") && msg.contains("verity root") && msg.contains("full bundle"),
        "{msg}"
    );
    eprintln!("{msg}");
    assert!(dev.record(Slot::B).is_none(), "no record of a failed slot");
    assert_eq!(dev.boot(), Slot::A, "the running slot still boots");
}

/// `aperture-update --root ... --disk-image ... ARGS` on `dev`, as the program runs it.
fn cli(dev: &Device, args: &[&str]) -> anyhow::Result<i32> {
    use clap::Parser;
    let root = dev.dir.path().to_str().unwrap();
    let disk = dev.disk_path.to_str().unwrap();
    let mut argv = vec!["aperture-update", "--root", root, "--disk-image", disk];
    argv.extend_from_slice(args);
    aperture_updater::cli::run(aperture_updater::cli::Cli::parse_from(argv))
}

#[test]
fn an_interactive_delta_that_fails_installs_the_full_bundle_beside_it() {
    let (v1, v2, delta) = releases();
    let dev = Device::new(&v1);
    // Booted without a verity root: the delta's base cannot be proven.
    dev.set_running(Slot::A, &v1);
    let repo = tempfile::tempdir().unwrap();
    let delta_path = repo.path().join("edge-qemu-2.0.0.stable.from-1.0.0.bundle");
    std::fs::write(&delta_path, &delta.bundle).unwrap();

    // No full bundle beside it: the error says so, names the fix, and nothing is written.
    let before = dev.snapshot();
    let err = cli(&dev, &["install", delta_path.to_str().unwrap()]).unwrap_err();
    let msg = format!("{err:#}");
    assert!(
        msg.contains("edge-qemu-2.0.0.stable.bundle") && msg.contains("--fallback"),
        "{msg}"
    );
    assert!(
        msg.contains("1.0.0"),
        "the delta's own reason is kept: {msg}"
    );
    assert_eq!(dev.snapshot(), before, "nothing was written");

    // With the release's full bundle beside it, that is installed.
    std::fs::write(
        repo.path().join("edge-qemu-2.0.0.stable.bundle"),
        &v2.bundle,
    )
    .unwrap();
    assert_eq!(
        cli(&dev, &["install", delta_path.to_str().unwrap()]).unwrap(),
        0
    );
    assert_eq!(dev.slot_bytes(Slot::B, v2.rootfs.len()), v2.rootfs);
    assert_eq!(dev.record(Slot::B).unwrap().version.to_string(), "2.0.0");
    assert_eq!(dev.boot(), Slot::B);
}

#[test]
fn a_delta_whose_rebuilt_slot_fails_is_followed_by_the_named_full_bundle() {
    let (v1, v2, delta) = releases();
    // The rebuilt slot B does not verify after writing.
    let dev = rotted_device(&v1);
    let dir = tempfile::tempdir().unwrap();
    let (d, f) = (dir.path().join("d.bundle"), dir.path().join("f.bundle"));
    std::fs::write(&d, &delta.bundle).unwrap();
    std::fs::write(&f, &v2.bundle).unwrap();
    // A name that is no delta's: without --fallback, the delta's error alone.
    let err = cli(&dev, &["install", d.to_str().unwrap()]).unwrap_err();
    assert!(format!("{err:#}").contains("full bundle"), "{err:#}");
    assert!(dev.record(Slot::B).is_none());
    assert_eq!(dev.boot(), Slot::A);
    let args = [
        "install",
        d.to_str().unwrap(),
        "--fallback",
        f.to_str().unwrap(),
    ];
    assert_eq!(cli(&dev, &args).unwrap(), 0);
    assert_eq!(dev.slot_bytes(Slot::B, v2.rootfs.len()), v2.rootfs);
    dev.assert_slot_verifies(Slot::B);
    assert_eq!(dev.boot(), Slot::B);
}

#[test]
fn a_refusal_the_full_bundle_cannot_mend_is_not_followed_by_it() {
    let (v1, _, delta) = releases();
    let dev = Device::new(&v1);
    dev.set_running_verity(Slot::A, &v1);
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().join("update-from-1.0.0.bundle");
    std::fs::write(&d, &delta.bundle).unwrap();
    // An http URL without --insecure-http is refused before anything is fetched; the full
    // bundle beside it would be refused the same way, so it is not tried.
    let url = "http://127.0.0.1:9/rel/update-from-1.0.0.bundle";
    let err = cli(&dev, &["install", url]).unwrap_err();
    let msg = format!("{err:#}");
    assert!(msg.contains("--insecure-http"), "{msg}");
    assert!(!msg.contains("update.bundle"), "{msg}");
}
