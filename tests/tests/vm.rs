//! Tier 3: QEMU boots of built images (TCG on this kind of machine; one QEMU process per boot).

use aperture_image::recipe::Arch;
use aperture_tests::http::FileServer;
use aperture_tests::{
    boot, build, copy_disk, default_image, derived_recipe, hook_script, json_on_line, main_out,
    recipe, require_root, scenario_dir, test_root, BOOT_TIMEOUT,
};

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
fn qemu_arm64_image_boots_the_arm64_userland() {
    if !require_root("qemu_arm64_image_boots_the_arm64_userland") {
        return;
    }
    // The arm64 store is shared with the Jetson rootfs test of the privileged tier.
    let (image, _) = build(
        &recipe("qemu-arm64.toml"),
        &test_root().join("arm64/out/qemu-arm64"),
        false,
    )
    .unwrap();
    let dir = scenario_dir("boot-arm64").unwrap();
    let disk = dir.join("disk.img");
    copy_disk(&image.paths.out.join("disk.img"), &disk).unwrap();
    let vm = boot(Arch::Arm64, &disk, &dir, "boot", |_| {}).unwrap();
    // arm64 under TCG is several times slower than x86-64.
    let line = vm
        .wait_for("aperture-agent: product=", 3 * BOOT_TIMEOUT)
        .unwrap();
    eprintln!("status line: {line}");
    assert!(
        line.contains("board=qemu-arm64") && line.contains("slot=a"),
        "{line}"
    );
    assert!(line.contains("fstype=erofs ro verity=yes"), "{line}");
}

/// A test image: the default recipe plus the VM test hook, at a version, with extra TOML.
fn hooked_image(name: &str, version: &str, extra: &str) -> aperture_image::pipeline::BuildReport {
    let dir = test_root().join("main/recipes-vm");
    let r = derived_recipe(
        &dir,
        &format!("{name}.toml"),
        "../tests/recipes/vm-hooks.toml",
        &format!("version = \"{version}\"\n{extra}"),
    )
    .unwrap();
    build(&r, &main_out().join(name), false).unwrap().0
}

#[test]
#[ignore = "VM tier: needs root, QEMU and a built image (run by `cargo xtask test` as root)"]
fn update_over_http_commits_v2_then_a_failing_v3_rolls_back() {
    if !require_root("update_over_http_commits_v2_then_a_failing_v3_rolls_back") {
        return;
    }
    let v1 = hooked_image("vm-v1", "1.0.0", "");
    let v2 = hooked_image("vm-v2", "1.1.0", "");
    // v3's runtime cannot start, so its health check fails.
    let broken = test_root()
        .join("main/recipes-vm/broken-runtime/usr/lib/systemd/system/aperture-runtime.service.d");
    std::fs::create_dir_all(&broken).unwrap();
    std::fs::write(
        broken.join("broken.conf"),
        "[Service]\nExecStart=\nExecStart=/bin/false\nRestart=no\n",
    )
    .unwrap();
    let v3 = hooked_image("vm-v3", "1.2.0", "overlays = [\"broken-runtime\"]\n");

    let dir = scenario_dir("update").unwrap();
    let served = dir.join("www");
    std::fs::create_dir_all(&served).unwrap();
    std::fs::copy(v2.paths.out.join("update.bundle"), served.join("v2.bundle")).unwrap();
    std::fs::copy(v3.paths.out.join("update.bundle"), served.join("v3.bundle")).unwrap();
    let server = FileServer::start(&served).unwrap();
    let disk = dir.join("disk.img");
    copy_disk(&v1.paths.out.join("disk.img"), &disk).unwrap();
    let status = "echo \"APERTURE-STATUS $(aperture-update status --json | tr -d '\\n')\"";

    // Boot 1: v1 on slot A installs v2 over HTTP into slot B and reboots.
    let s = hook_script(&dir, "boot1", &format!(
        "{status}\naperture-update install --insecure-http {} && echo APERTURE-INSTALLED\nsystemctl reboot",
        server.guest_url("v2.bundle")
    ))
    .unwrap();
    let mut vm = boot(Arch::Amd64, &disk, &dir, "boot1", |c| {
        c.fw_cfg.push(("script".into(), s))
    })
    .unwrap();
    let line = vm
        .wait_for("aperture-agent: product=", BOOT_TIMEOUT)
        .unwrap();
    assert!(
        line.contains("slot=a") && line.contains("version=1.0.0"),
        "{line}"
    );
    vm.wait_for("APERTURE-INSTALLED", BOOT_TIMEOUT).unwrap();
    vm.wait_exit(BOOT_TIMEOUT).unwrap();

    // Boot 2: the loader picks slot B (armed, on trial); the health gate passes and commits it.
    let s = hook_script(&dir, "boot2", &format!(
        "{status}\naperture-update install --insecure-http {} && echo APERTURE-INSTALLED\nsystemctl reboot",
        server.guest_url("v3.bundle")
    ))
    .unwrap();
    let mut vm = boot(Arch::Amd64, &disk, &dir, "boot2", |c| {
        c.fw_cfg.push(("script".into(), s))
    })
    .unwrap();
    let line = vm
        .wait_for("aperture-agent: product=", BOOT_TIMEOUT)
        .unwrap();
    assert!(
        line.contains("slot=b") && line.contains("version=1.1.0"),
        "v2 must boot from slot B: {line}"
    );
    let st = json_on_line(&vm.wait_for("APERTURE-STATUS", BOOT_TIMEOUT).unwrap()).unwrap();
    assert_eq!(st["booted"], "b", "{st}");
    assert_eq!(
        st["committed"], "b",
        "the health gate must have committed slot B: {st}"
    );
    vm.wait_for("APERTURE-INSTALLED", BOOT_TIMEOUT).unwrap();
    vm.wait_exit(BOOT_TIMEOUT).unwrap();

    // Boots 3..: v3 on slot A fails its health check; each failure reboots; when its tries are
    // spent the loader boots slot B again.
    let mut failing = 0;
    loop {
        let mut vm = boot(
            Arch::Amd64,
            &disk,
            &dir,
            &format!("boot{}", 3 + failing),
            |_| {},
        )
        .unwrap();
        let line = vm
            .wait_for("aperture-agent: product=", BOOT_TIMEOUT)
            .unwrap();
        if line.contains("version=1.2.0") {
            assert!(line.contains("slot=a"), "{line}");
            failing += 1;
            assert!(failing <= 3, "v3 booted more times than it had tries");
            vm.wait_exit(BOOT_TIMEOUT)
                .expect("a failed health check must reboot");
            continue;
        }
        assert!(
            line.contains("slot=b") && line.contains("version=1.1.0"),
            "after v3's tries, v2 must boot again: {line}"
        );
        let rollback = vm.wait_for("rollback:", BOOT_TIMEOUT).unwrap();
        assert!(
            rollback.contains("slot a") && rollback.contains("1.2.0"),
            "{rollback}"
        );
        vm.kill();
        break;
    }
    assert_eq!(failing, 3, "v3 should have been tried exactly 3 times");
    assert!(server.requests() >= 2);
    let _ = v1;
}
