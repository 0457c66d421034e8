//! Tier 3, booting: the product image as flashed boots slot A with a verity root. (QEMU under
//! TCG.) The firewall of a running guest is checked in `vm_update`'s third boot, on the slot an
//! update installed (`aperture_tests::firewall`).

use aperture_image::recipe::Arch;
use aperture_tests::scenario::Scenario;
use aperture_tests::{default_image, require_root, BOOT_TIMEOUT};

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
