//! Tier 3, the Jetson twin's long scenarios (`cargo xtask test --full`): on an AGX Orin build
//! booted as the twin (`aperture_image::twin`), v1 installs v2 over HTTP into `APP_b`, the
//! firmware rules boot chain B and the health gate commits it; a v3 whose health gate fails is
//! tried as many times as `RootfsRetryCountMax` allows and then rolled back by the retry rules
//! alone; the committed slot then survives ten warm reboots. And: reset level 2 puts the factory
//! image back into the slot that is not running and boots it; level 3 leaves no canary on UDA
//! or config (a raw scan of the disk file).

use std::os::unix::fs::FileExt;
use std::time::{Duration, Instant};

use aperture_image::twin::disk::TwinDisk;
use aperture_slots::Slot;
use aperture_tests::http::FileServer;
use aperture_tests::scenario::{file_contains, line_of, random_hex, Script};
use aperture_tests::twin::{
    broken_runtime, canary_write, range_contains, storage_show, twin_image, TwinScenario,
    FIRST_BUILD, TWIN_TIMEOUT,
};
use aperture_tests::{json_on_line, require_root};

fn u32_var(sc: &TwinScenario, name: &str) -> Option<u32> {
    sc.twin.nvidia_variable(name).unwrap().map(|v| {
        let mut b = [0u8; 4];
        b[..v.len().min(4)].copy_from_slice(&v[..v.len().min(4)]);
        u32::from_le_bytes(b)
    })
}

fn install(server: &FileServer, bundle: &str) -> Script {
    Script::new()
        .piece("status", &[])
        .and_then(|s| s.piece("install", &[("URL", &server.guest_url(bundle))]))
        .and_then(|s| s.piece("reboot", &[]))
        .unwrap()
}

#[test]
#[ignore = "VM tier (long): needs root, QEMU (arm64), swtpm and twin builds (run by `cargo xtask test --full` as root)"]
fn twin_update_commits_b_then_a_failing_v3_is_rolled_back_by_the_retry_rules() {
    require_root("twin_update_commits_b_then_a_failing_v3_is_rolled_back_by_the_retry_rules");
    let v1 = twin_image(FIRST_BUILD.0, FIRST_BUILD.1, "").unwrap();
    let v2 = twin_image("twin-v2", "1.1.0", "").unwrap();
    let v3 = twin_image("twin-v3", "1.2.0", &broken_runtime().unwrap()).unwrap();
    let mut sc = TwinScenario::new("twin-update", &v1.paths.out).unwrap();
    let www = sc.dir().join("www");
    std::fs::create_dir_all(&www).unwrap();
    std::fs::copy(v2.paths.out.join("update.bundle"), www.join("v2.bundle")).unwrap();
    std::fs::copy(v3.paths.out.join("update.bundle"), www.join("v3.bundle")).unwrap();
    let server = FileServer::start_for_guests(&www).unwrap();

    // Boot 1: v1 on chain A installs v2 into APP_b / B_kernel and reboots.
    let boot = sc
        .boot("v1-installs-v2", Some(&install(&server, "v2.bundle")))
        .unwrap();
    assert_eq!(boot.power_on.slot, Slot::A);
    let (status, took) = boot.status().unwrap();
    sc.record(&boot, Some(took));
    assert!(
        status.contains("slot=a") && status.contains("version=1.0.0"),
        "{status}"
    );
    let t = Instant::now();
    boot.vm
        .wait_for("APERTURE-INSTALLED", TWIN_TIMEOUT)
        .unwrap();
    eprintln!("v1 installed v2 in {:.0?}", t.elapsed());
    let mut vm = boot.vm;
    vm.wait_exit(TWIN_TIMEOUT).unwrap();
    assert_eq!(
        u32_var(&sc, "RootfsStatusSlotB"),
        Some(0),
        "the install must leave slot B armed (status normal) in the store"
    );

    // Boot 2: the rules boot chain B (the capsule or BootChainFwNext); the health gate
    // commits it; v2 installs v3 into chain A.
    let boot = sc
        .boot("v2-installs-v3", Some(&install(&server, "v3.bundle")))
        .unwrap();
    assert_eq!(boot.power_on.slot, Slot::B, "{}", boot.power_on);
    let (status, took) = boot.status().unwrap();
    sc.record(&boot, Some(took));
    assert!(
        status.contains("slot=b") && status.contains("version=1.1.0"),
        "v2 must boot from slot B: {status}"
    );
    let st = json_on_line(&boot.vm.wait_for("APERTURE-STATUS", TWIN_TIMEOUT).unwrap()).unwrap();
    assert_eq!(st["booted"], "b", "{st}");
    assert_eq!(
        st["committed"], "b",
        "the health gate must commit slot B: {st}"
    );
    boot.vm
        .wait_for("APERTURE-INSTALLED", TWIN_TIMEOUT)
        .unwrap();
    let mut vm = boot.vm;
    vm.wait_exit(TWIN_TIMEOUT).unwrap();
    let tries = u32_var(&sc, "RootfsRetryCountMax").unwrap_or(3);

    // Boots 3..: v3 on chain A fails its health gate and reboots; when its retries are used
    // up the rules mark it unbootable and chain B boots again. Nothing in the guest rolls back.
    let mut failing = 0;
    loop {
        let boot = sc.boot("after-v3", None).unwrap();
        let (status, took) = boot.status().unwrap();
        sc.record(&boot, Some(took));
        if boot.power_on.slot == Slot::A {
            assert!(status.contains("version=1.2.0"), "{status}");
            failing += 1;
            assert!(
                failing <= tries,
                "v3 booted more times than RootfsRetryCountMax ({tries})"
            );
            let mut vm = boot.vm;
            vm.wait_exit(TWIN_TIMEOUT)
                .expect("a failed health gate must reboot");
            continue;
        }
        assert!(
            status.contains("slot=b") && status.contains("version=1.1.0"),
            "after v3's retries, v2 must boot again: {status}"
        );
        let rollback = boot.vm.wait_for("rollback:", TWIN_TIMEOUT).unwrap();
        assert!(
            rollback.contains("slot a") && rollback.contains("1.2.0"),
            "{rollback}"
        );
        assert!(
            boot.power_on
                .changed
                .iter()
                .any(|c| c == "RootfsStatusSlotA=0xff"),
            "the rules must have marked slot A unbootable: {}",
            boot.power_on
        );
        let mut vm = boot.vm;
        vm.kill();
        sc.twin.power_cut().unwrap();
        break;
    }
    assert_eq!(
        failing, tries,
        "v3 must be tried exactly RootfsRetryCountMax times"
    );
    assert_eq!(u32_var(&sc, "RootfsStatusSlotA"), Some(0xff));

    // Ten warm reboots of the committed slot B: it boots every time.
    for n in 1..=10 {
        let s = Script::new()
            .piece("status", &[])
            .and_then(|s| s.piece("reboot", &[]))
            .unwrap();
        let boot = sc.boot(&format!("warm{n}"), Some(&s)).unwrap();
        assert_eq!(
            boot.power_on.slot,
            Slot::B,
            "warm reboot {n}: {}",
            boot.power_on
        );
        let (status, took) = boot.status().unwrap();
        sc.record(&boot, Some(took));
        assert!(
            status.contains("slot=b") && status.contains("version=1.1.0"),
            "{status}"
        );
        let mut vm = boot.vm;
        vm.wait_exit(TWIN_TIMEOUT).unwrap();
    }
    assert!(server.requests() >= 2);
    eprintln!("twin boot times:\n{}", sc.time_table());
}

/// Whether partition `name` of `disk` starts with exactly the bytes of `image`.
fn partition_holds(disk: &std::path::Path, name: &str, image: &std::path::Path) -> bool {
    let p = TwinDisk::open(disk).unwrap().partition(name).unwrap();
    let d = std::fs::File::open(disk).unwrap();
    let i = std::fs::read(image).unwrap();
    let mut buf = vec![0u8; i.len()];
    d.read_exact_at(&mut buf, p.offset).unwrap();
    buf == i
}

#[test]
#[ignore = "VM tier (long): needs root, QEMU (arm64), swtpm and twin builds (run by `cargo xtask test --full` as root)"]
fn twin_reset_level_2_restores_the_other_slot_and_level_3_leaves_no_canary() {
    require_root("twin_reset_level_2_restores_the_other_slot_and_level_3_leaves_no_canary");
    let v1 = twin_image(FIRST_BUILD.0, FIRST_BUILD.1, "").unwrap();
    let v2 = twin_image("twin-v2", "1.1.0", "").unwrap();
    let factory_rootfs = v1.paths.out.join("rootfs.img");
    let mut sc = TwinScenario::new("twin-reset", &v1.paths.out).unwrap();
    let www = sc.dir().join("www");
    std::fs::create_dir_all(&www).unwrap();
    std::fs::copy(v2.paths.out.join("update.bundle"), www.join("v2.bundle")).unwrap();
    let server = FileServer::start_for_guests(&www).unwrap();
    let canary = format!("aperture-canary-{}", random_hex(24));

    // Boot 1: the first boot; canaries onto both encrypted volumes; v2 into chain B.
    let s = canary_write(storage_show(), &canary)
        .piece("install", &[("URL", &server.guest_url("v2.bundle"))])
        .and_then(|s| s.piece("reboot", &[]))
        .unwrap();
    let boot = sc.boot("first-installs-v2", Some(&s)).unwrap();
    let (_, took) = boot.status().unwrap();
    sc.record(&boot, Some(took));
    boot.vm.wait_for("APERTURE-WROTE", TWIN_TIMEOUT).unwrap();
    boot.vm
        .wait_for("APERTURE-INSTALLED", TWIN_TIMEOUT)
        .unwrap();
    let mut vm = boot.vm;
    vm.wait_exit(TWIN_TIMEOUT).unwrap();
    let disk = sc.disk();
    assert!(
        !file_contains(&disk, &canary).unwrap(),
        "the canary is in the clear on the disk: the volumes are not encrypted"
    );

    // Boot 2: v2 on chain B (committed by its health gate) starts reset level 2, which puts
    // the factory image into chain A, the one not running, and reboots into it.
    let s = Script::new().piece("reset", &[("LEVEL", "2")]).unwrap();
    let boot = sc.boot("v2-reset2", Some(&s)).unwrap();
    assert_eq!(boot.power_on.slot, Slot::B, "{}", boot.power_on);
    let (status, took) = boot.status().unwrap();
    sc.record(&boot, Some(took));
    assert!(
        status.contains("slot=b") && status.contains("version=1.1.0"),
        "{status}"
    );
    let t = Instant::now();
    // Level 2 says which slot now holds the factory image (installed and verified there),
    // then reboots into it. (`rebooting into slot` is level 1's line.)
    let chose = boot
        .vm
        .wait_for("holds the factory image", Duration::from_secs(1800))
        .unwrap();
    eprintln!(
        "level 2 wrote the factory image in {:.0?}: {chose}",
        t.elapsed()
    );
    assert!(chose.contains("slot a holds the factory image"), "{chose}");
    let mut vm = boot.vm;
    vm.wait_exit(TWIN_TIMEOUT).unwrap();
    assert!(
        partition_holds(&disk, "APP", &factory_rootfs),
        "APP must hold the factory rootfs after level 2"
    );

    // Boots 3..: the factory image boots from chain A; the reset finishes after its health
    // gate; the data stays.
    let s = Script::new()
        .piece("reset-wait", &[])
        .and_then(|s| s.piece("canary-check", &[("CANARY", &canary)]))
        .and_then(|s| s.line("echo APERTURE-L2-DONE").piece("poweroff", &[]))
        .unwrap();
    let mut done = None;
    for n in 1..=3 {
        let boot = sc.boot(&format!("level2-{n}"), Some(&s)).unwrap();
        let (status, took) = boot.status().unwrap();
        sc.record(&boot, Some(took));
        match boot.vm.wait_for("APERTURE-L2-DONE", TWIN_TIMEOUT) {
            Ok(_) => {
                done = Some((boot.power_on.slot, status, boot.vm.console()));
                let mut vm = boot.vm;
                let _ = vm.wait_exit(TWIN_TIMEOUT);
                break;
            }
            Err(e) => eprintln!("level 2 boot {n} ended without finishing: {e:#}"),
        }
    }
    let (slot, status, console) = done.expect("level 2 never finished in 3 boots");
    assert_eq!(slot, Slot::A, "the factory image boots from chain A");
    assert!(
        status.contains("slot=a") && status.contains("version=1.0.0"),
        "{status}"
    );
    assert!(
        line_of(&console, "APERTURE-CANARY-")
            .unwrap()
            .contains("KEPT"),
        "level 2 keeps the data"
    );

    // Level 3: crypto-erase and wipe config and UDA, then the factory image; afterwards not one
    // byte of the canary is left in either partition (nor anywhere on the disk).
    let s = Script::new().piece("reset", &[("LEVEL", "3")]).unwrap();
    let boot = sc.boot("reset3", Some(&s)).unwrap();
    let (_, took) = boot.status().unwrap();
    sc.record(&boot, Some(took));
    let mut vm = boot.vm;
    vm.wait_exit(Duration::from_secs(1800)).unwrap();
    let s = Script::new()
        .piece("reset-wait", &[])
        .and_then(|s| s.piece("canary-gone", &[]))
        .map(|s| s.line(storage_show().text()))
        .and_then(|s| s.piece("final", &[]))
        .unwrap();
    let mut finished = None;
    for n in 1..=5 {
        let boot = sc.boot(&format!("level3-{n}"), Some(&s)).unwrap();
        let reached = boot
            .vm
            .wait_for("APERTURE-FINAL", Duration::from_secs(1800));
        let took = boot.started.elapsed();
        sc.record(&boot, None);
        let console = boot.vm.console();
        let mut vm = boot.vm;
        let _ = vm.wait_exit(TWIN_TIMEOUT);
        if reached.is_ok() {
            eprintln!("level 3 finished at boot {n} ({took:.0?})");
            finished = Some(console);
            break;
        }
    }
    let console = finished.expect("level 3 never finished in 5 boots");
    assert!(line_of(&console, "APERTURE-CANARY-")
        .unwrap()
        .contains("GONE"));
    let twin_disk = TwinDisk::open(&disk).unwrap();
    for part in ["UDA", "config"] {
        let e = twin_disk.partition(part).unwrap();
        assert!(
            !range_contains(&disk, e.offset, e.size, canary.as_bytes()).unwrap(),
            "the canary survived level 3 in {part}"
        );
    }
    assert!(
        !file_contains(&disk, &canary).unwrap(),
        "the canary survived level 3 somewhere on the disk"
    );
    assert!(server.requests() >= 1);
    eprintln!("twin boot times:\n{}", sc.time_table());
}
