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

/// Issue 18, must-show 3 (`--full`: five boots). Under Secure Boot with only our keys, the
/// firmware refuses slot B's UKI with one byte changed, and an entry that boots the kernel
/// inside our UKI (signed by Debian, not by our db) on its own; each time the next power-on
/// boots slot A, whose data is intact.
#[test]
#[ignore = "VM tier: needs root, QEMU and a built image (run by `cargo xtask test` as root)"]
fn full_secure_boot_refuses_a_changed_uki_and_a_kernel_we_did_not_sign() {
    use aperture_tests::stop_unless_full;
    require_root("full_secure_boot_refuses_a_changed_uki_and_a_kernel_we_did_not_sign");
    if stop_unless_full(
        "Secure Boot refuses a UKI with one byte changed and a kernel our db did not sign",
    ) {
        return;
    }
    // The VM tier's image: the product's, plus the test hook that runs each boot's script.
    let image = vm_v1().unwrap();
    let out = &image.paths.out;
    let mut sc = Scenario::new("secure-boot-refusals", &out.join("disk.img"), Arch::Amd64).unwrap();

    // On the host, before the first boot: slot B's UKI with one byte of its kernel flipped, and
    // a loader entry for the kernel inside slot A's UKI, as Debian signed it.
    let esp = {
        let mut f = std::fs::File::open(&sc.disk).unwrap();
        let size = aperture_gpt::disk_size_of(&mut f).unwrap();
        let gpt = aperture_gpt::read_gpt(&mut f, size).unwrap();
        gpt.find("esp").unwrap().offset()
    };
    let mut uki_b = aperture_image::esp::read(&sc.disk, esp, "aperture/b/uki.efi").unwrap();
    let linux = aperture_uefi::sections(&uki_b)
        .unwrap()
        .into_iter()
        .find(|s| s.name == ".linux")
        .unwrap();
    let at = (linux.pointer_to_raw_data + linux.virtual_size / 2) as usize;
    uki_b[at] ^= 0x01;
    aperture_image::esp::write(&sc.disk, esp, "aperture/b/uki.efi", &uki_b).unwrap();
    let uki_a = aperture_image::esp::read(&sc.disk, esp, "aperture/a/uki.efi").unwrap();
    let kernel = aperture_uefi::section_data(&uki_a, ".linux")
        .unwrap()
        .unwrap()
        .to_vec();
    aperture_image::esp::write(&sc.disk, esp, "aperture/other/vmlinuz", &kernel).unwrap();
    aperture_image::esp::write(
        &sc.disk,
        esp,
        "loader/entries/other.conf",
        b"title a kernel our db did not sign\nlinux /aperture/other/vmlinuz\noptions init=/bin/sh\n",
    )
    .unwrap();

    let canary = format!("secure-boot-{}", std::process::id());
    let mut refusals = Vec::new();
    for (n, entry) in ["slot-b.conf", "other.conf"].into_iter().enumerate() {
        // Slot A boots; it picks the refused entry for the next boot only.
        let mut script = Script::new();
        if n == 0 {
            script = script
                .piece("canary-write", &[("CANARY", &canary)])
                .unwrap();
        } else {
            script = script
                .piece("canary-check", &[("CANARY", &canary)])
                .unwrap();
        }
        let script = script
            .line(&format!(
                "bootctl set-oneshot {entry} && echo APERTURE-ONESHOT"
            ))
            .piece("reboot", &[])
            .unwrap();
        let mut vm = sc.boot(&format!("a-then-{entry}"), Some(&script)).unwrap();
        let line = vm
            .wait_for("aperture-agent: product=", BOOT_TIMEOUT)
            .unwrap();
        assert!(
            line.contains("slot=a") && line.contains("secureboot=on"),
            "{line}"
        );
        if n > 0 {
            vm.wait_for("APERTURE-CANARY-KEPT", BOOT_TIMEOUT).unwrap();
        }
        vm.wait_for("APERTURE-ONESHOT", BOOT_TIMEOUT).unwrap();
        vm.wait_exit(BOOT_TIMEOUT).unwrap();

        // The firmware refuses what the entry names.
        let mut vm = sc.boot(&format!("{entry}-refused"), None).unwrap();
        let refused = vm
            .wait_for("Access Denied", BOOT_TIMEOUT)
            .unwrap_or_else(|e| panic!("{entry} was not refused: {e:#}\n{}", vm.console()));
        assert!(
            !vm.console().contains("aperture-agent: product="),
            "something booted: {}",
            vm.console()
        );
        eprintln!("{entry}: {refused}");
        refusals.push(refused);
        vm.kill();
    }

    // Slot A again, its data intact.
    let script = Script::new()
        .piece("canary-check", &[("CANARY", &canary)])
        .unwrap()
        .piece("status", &[])
        .unwrap()
        .piece("poweroff", &[])
        .unwrap();
    let mut vm = sc.boot("a-again", Some(&script)).unwrap();
    let line = vm
        .wait_for("aperture-agent: product=", BOOT_TIMEOUT)
        .unwrap();
    assert!(
        line.contains("slot=a") && line.contains("secureboot=on"),
        "{line}"
    );
    vm.wait_for("APERTURE-CANARY-KEPT", BOOT_TIMEOUT).unwrap();
    let st = json_on_line(&vm.wait_for("APERTURE-STATUS", BOOT_TIMEOUT).unwrap()).unwrap();
    assert_eq!(st["secure_boot"], "on", "{st}");
    assert_eq!(st["booted"], "a", "{st}");
    vm.wait_exit(BOOT_TIMEOUT).unwrap();
    assert_eq!(refusals.len(), 2);
}
