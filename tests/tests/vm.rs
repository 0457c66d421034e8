//! Tier 3: QEMU boots of built images (TCG on this kind of machine; one QEMU process per boot).

use aperture_image::recipe::Arch;
use aperture_tests::{boot, copy_disk, default_image, require_root, scenario_dir, BOOT_TIMEOUT};

#[test]
#[ignore = "VM tier: needs root, QEMU and a built image (run by `cargo xtask test` as root)"]
fn default_image_boots_slot_a_with_a_verity_root() {
    if !require_root("default_image_boots_slot_a_with_a_verity_root") {
        return;
    }
    let image = default_image().unwrap();
    let dir = scenario_dir("boot-default").unwrap();
    let disk = dir.join("disk.img");
    copy_disk(&image.paths.out.join("disk.img"), &disk).unwrap();
    let vm = boot(Arch::Amd64, &disk, &dir, "boot", |_| {}).unwrap();
    let line = vm
        .wait_for("aperture-agent: product=", BOOT_TIMEOUT)
        .unwrap();
    eprintln!("status line: {line}");
    assert!(line.contains("slot=a"), "{line}");
    assert!(line.contains("version=1.0.0"), "{line}");
    assert!(line.contains("root=/dev/mapper/aperture-root"), "{line}");
    assert!(line.contains("fstype=erofs ro verity=yes"), "{line}");
}
