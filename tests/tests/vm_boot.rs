//! Tier 3, booting: the product image as flashed boots slot A with a verity root; and an
//! appliance running v1 installs v2 as a delta bundle, rebuilt from its running slot, and boots
//! it. (QEMU under TCG.) The firewall of a running guest is checked in `vm_update`'s third
//! boot, on the slot an update installed (`aperture_tests::firewall`).

use aperture_image::recipe::Arch;
use aperture_tests::http::FileServer;
use aperture_tests::scenario::{Scenario, Script};
use aperture_tests::{
    default_image, json_on_line, require_root, test_root, vm_v1, vm_v2, workspace, BOOT_TIMEOUT,
};

#[test]
#[ignore = "VM tier: needs root, QEMU and a built image (run by `cargo xtask test` as root)"]
fn default_image_flashed_to_a_file_boots_slot_a_with_a_verity_root() {
    use aperture_flash::{flash, FileTarget, NoProgress, VerifiedImage};
    require_root("default_image_flashed_to_a_file_boots_slot_a_with_a_verity_root");
    let image = default_image().unwrap();
    let out = &image.paths.out;
    // The flash tool writes from disk.img.zst and the bmap, verified and read back; the
    // scenario boots what it wrote.
    let mut sc = Scenario::new("boot-flashed", &out.join("disk.img"), Arch::Amd64).unwrap();
    let verified = VerifiedImage::open(out, None, aperture_trust::now_unix()).unwrap();
    std::fs::remove_file(&sc.disk).unwrap();
    let target = FileTarget::open(&sc.disk, verified.image_size()).unwrap();
    let report = flash(&verified, &target, &NoProgress).unwrap();
    assert_eq!(report.bytes_written, verified.mapped_bytes());
    drop(target);

    let vm = sc.boot("flashed", None).unwrap();
    let line = vm
        .wait_for("aperture-agent: product=", BOOT_TIMEOUT)
        .unwrap();
    eprintln!("status line: {line}");
    assert!(line.contains("slot=a"), "{line}");
    assert!(line.contains("version=1.0.0"), "{line}");
    assert!(line.contains("root=/dev/mapper/aperture-root"), "{line}");
    assert!(line.contains("fstype=erofs ro verity=yes"), "{line}");
    // OVMF with Secure Boot on and only the build's keys enrolled started it: the signed
    // systemd-boot, then slot A's signed UKI.
    assert!(line.contains("secureboot=on"), "{line}");
    // The board's kernel arguments reached the kernel with the slot's.
    let cmdline = vm.wait_for("Kernel command line:", BOOT_TIMEOUT).unwrap();
    assert!(
        cmdline.contains("console=ttyS0") && cmdline.contains("panic=10"),
        "{cmdline}"
    );
    assert!(
        cmdline.contains("aperture.verity.data=PARTLABEL=rootfs_a"),
        "{cmdline}"
    );
}

#[test]
#[ignore = "VM tier: needs root, QEMU and a built image (run by `cargo xtask test` as root)"]
fn a_delta_bundle_rebuilds_v2_from_the_running_v1_and_it_boots() {
    require_root("a_delta_bundle_rebuilds_v2_from_the_running_v1_and_it_boots");
    let (v1, v2) = (vm_v1().unwrap(), vm_v2().unwrap());
    let keys = aperture_image::keys::load(&workspace().join("keys/dev")).unwrap();
    let dir = test_root().join("delta-bundle");
    std::fs::create_dir_all(&dir).unwrap();
    let delta = dir.join("v1-to-v2.bundle");
    let made = aperture_image::bundle::make_delta_bundle(
        &v2.paths.out,
        &v1.paths.out,
        Some(&delta),
        &keys,
    )
    .unwrap();
    eprintln!(
        "delta bundle {} to {}: {} bytes (the full bundle: {})",
        made.from, made.to, made.size, made.full_size
    );
    assert!(made.size * 100 < made.full_size, "{made:?}");

    let mut sc = Scenario::new("delta", &v1.paths.out.join("disk.img"), Arch::Amd64).unwrap();
    let www = sc.dir.join("www");
    std::fs::create_dir_all(&www).unwrap();
    std::fs::copy(&delta, www.join("delta.bundle")).unwrap();
    let server = FileServer::start_for_guests(&www).unwrap();

    // Boot 1: v1 on slot A installs the delta over HTTP: slot B is rebuilt from slot A's
    // partition (held by dm-verity) and the delta, read back (sha256 and the whole verity
    // tree, from the disk) and armed.
    let s = Script::new()
        .piece("install", &[("URL", &server.guest_url("delta.bundle"))])
        .and_then(|s| s.piece("status", &[]))
        .and_then(|s| s.piece("reboot", &[]))
        .unwrap();
    let mut vm = sc.boot("v1-installs-delta", Some(&s)).unwrap();
    let line = vm
        .wait_for("aperture-agent: product=", BOOT_TIMEOUT)
        .unwrap();
    assert!(
        line.contains("slot=a") && line.contains("version=1.0.0"),
        "{line}"
    );
    // The updater's line once the slot is written: what it was rebuilt from, and its memory.
    let rebuilt = vm.wait_for("peak memory", BOOT_TIMEOUT).unwrap();
    eprintln!("{rebuilt}");
    assert!(
        rebuilt.contains("rebuilt from aperture-vision 1.0.0 in slot a"),
        "{rebuilt}"
    );
    vm.wait_for("APERTURE-INSTALLED", BOOT_TIMEOUT).unwrap();
    let st = json_on_line(&vm.wait_for("APERTURE-STATUS", BOOT_TIMEOUT).unwrap()).unwrap();
    assert_eq!(st["next"], "b", "the delta install must arm slot B: {st}");
    vm.wait_exit(BOOT_TIMEOUT).unwrap();
    assert!(server.requests() >= 1);
    // The read-back proved slot B holds v2 byte for byte, and v2 booting from slot B is
    // `vm_update`'s; booting this one too costs CI a minute and a half.
    if aperture_tests::stop_unless_full("booting the slot the delta wrote") {
        return;
    }

    // Boot 2: slot B runs v2, and the health gate commits it.
    let s = Script::new().piece("status", &[]).unwrap();
    let mut vm = sc.boot("v2-from-delta", Some(&s)).unwrap();
    let line = vm
        .wait_for("aperture-agent: product=", BOOT_TIMEOUT)
        .unwrap();
    assert!(
        line.contains("slot=b") && line.contains("version=1.1.0") && line.contains("verity=yes"),
        "v2 must boot from slot B: {line}"
    );
    let st = json_on_line(&vm.wait_for("APERTURE-STATUS", BOOT_TIMEOUT).unwrap()).unwrap();
    assert_eq!(
        st["committed"], "b",
        "the health gate must commit slot B: {st}"
    );
    vm.kill();
    assert!(server.requests() >= 1);
}
