//! Tier 3, updates from the fleet's repository: v2 is published as release 1.1.0 to a TUF
//! repository that nginx serves over HTTPS on the host (a test CA the images trust), gated on
//! a rollout. v1 boots with a provisioning archive on a virtual USB stick and enrolls with a
//! real `aperture-fleet serve` on the host (issue 16, must-show 1): the stick is mounted,
//! the device enrolls, reports, and the archive is erased from the stick. The test then starts
//! the rollout of 1.1.0 to that device (`aperture-fleet rollout start`; the server signs it into
//! the repository); v1 finds it by itself (its update loop, no command from the test), streams
//! it into slot B, and the power is cut in the middle; the next boot finishes the install, slot B boots
//! and the health gate commits it (the floor in the TPM's NV counters too), and `aperture-fleet
//! devices --json` shows the device on 1.1.0, committed. Then release 1.2.0
//! is published and halted: v2's loop sees it and does not install it. With `--full`: v2 then
//! installs a v3 whose runtime fails, which the loader tries N times and then rolls back from;
//! and the same update on the arm64 userland (qemu-arm64).

use aperture_image::recipe::Arch;
use aperture_release::rollout::Gate;
use aperture_release::{ReleaseMeta, Waves};
use aperture_tests::firewall::Firewall;
use aperture_tests::fleet::{self, Nginx, Request};
use aperture_tests::fleet_server::{self, FleetServer};
use aperture_tests::http::FileServer;
use std::time::Duration;

use aperture_tests::powercut::markers;
use aperture_tests::scenario::{after, cut_after, Scenario, Script};
use aperture_tests::{
    build, derived_recipe, json_on_line, require_root, stop_unless_full, test_root, vm_image,
    vm_recipe, vm_v1, vm_v2, BOOT_TIMEOUT,
};

#[test]
#[ignore = "VM tier: needs root, QEMU and a built image (run by `cargo xtask test` as root)"]
fn the_update_loop_installs_v2_from_the_fleet_repository_and_a_halted_release_is_left_alone() {
    require_root(
        "the_update_loop_installs_v2_from_the_fleet_repository_and_a_halted_release_is_left_alone",
    );
    let v1 = vm_v1().unwrap();
    let v2 = vm_v2().unwrap();
    // v3's runtime cannot start, so its health check fails (the second half, --full only).
    let v3 = aperture_tests::full().then(|| {
        let broken =
            aperture_tests::broken_runtime_overlay(&test_root().join("main/recipes-vm")).unwrap();
        vm_image("vm-v3", "1.2.0", &broken).unwrap()
    });

    let mut sc = Scenario::new("update", &v1.paths.out.join("disk.img"), Arch::Amd64).unwrap();
    let www = sc.dir.join("www");
    std::fs::create_dir_all(&www).unwrap();
    if let Some(v3) = &v3 {
        std::fs::copy(v3.paths.out.join("update.bundle"), www.join("v3.bundle")).unwrap();
    }
    let server = FileServer::start_for_guests(&www).unwrap();

    // The fleet's repository: its rollouts role delegated to the fleet server's online key;
    // v2's verified build published as 1.1.0 on `stable`, gated on a rollout (nobody installs
    // it until one names them), synced to the folder nginx serves on the port the images'
    // update loop polls.
    let repo_dir = sc.dir.join("repo");
    let mut repo = fleet::fresh_repo(&repo_dir).unwrap();
    let unix = |t: jiff::Timestamp| t.as_second() as u64;
    let now = jiff::Timestamp::now();
    repo.delegate_rollouts(now, false).unwrap();
    let meta = ReleaseMeta {
        gate: Gate::Rollout,
        ..aperture_image::verify::verified_release(
            &v2.paths.out,
            "stable",
            Waves::default(),
            unix(now),
        )
        .unwrap()
    };
    assert_eq!(meta.version.to_string(), "1.1.0");
    repo.publish(&v2.paths.out.join("update.bundle"), meta, now, false)
        .unwrap();
    drop(repo);
    let served = sc.dir.join("served");
    aperture_repo::sync::to_dir(&repo_dir, &served).unwrap();
    let nginx = Nginx::start(&served, fleet::GUEST_PORT, &sc.dir.join("nginx")).unwrap();

    // The fleet server beside nginx, signing rollouts into the same repository; one
    // provisioning archive for the appliance, on a USB stick.
    let fleet = FleetServer::start(&sc.dir.join("fleet"), &repo_dir).unwrap();
    let archive = fleet.provision(&sc.dir.join("provision")).unwrap();
    let stick = sc.dir.join("usb-stick.img");
    fleet_server::usb_stick(&archive, &stick).unwrap();
    assert!(fleet_server::stick_files(&stick)
        .unwrap()
        .contains(&"token".to_string()));

    // Boot 1: v1 on slot A; its update loop finds 1.1.0 and streams it into slot B, and the
    // power is cut five seconds into writing it. The script only reports and waits.
    let wait = Script::new()
        .piece("status", &[])
        .unwrap()
        .piece("tpm-counters", &[])
        .unwrap()
        .line("sleep 3600");
    let usb = fleet_server::usb_stick_args(&stick);
    let mut vm = sc
        .boot_with("v1-finds-v2", Some(&wait), |c| c.extra.extend(usb))
        .unwrap();
    let line = vm
        .wait_for("aperture-agent: product=", BOOT_TIMEOUT)
        .unwrap();
    assert!(
        line.contains("slot=a") && line.contains("version=1.0.0"),
        "{line}"
    );
    // First boot: aperture-provision-usb.service mounts the stick, aperture-enroll.service
    // enrolls from it and erases it; the update loop's poll reports.
    let enrolled = vm
        .wait_for(&format!("enrolled with {}", fleet.guest_url), BOOT_TIMEOUT)
        .unwrap_or_else(|e| panic!("{e:#}\nfleet server log:\n{}", fleet.log()));
    eprintln!("{enrolled}");
    let id = after(&enrolled, " as ")
        .split_whitespace()
        .next()
        .unwrap()
        .to_string();
    vm.wait_for(
        "the provisioning archive was erased from the USB stick",
        BOOT_TIMEOUT,
    )
    .unwrap();
    let device = fleet
        .wait_device(
            "reporting 1.0.0",
            |d| d["id"] == id.as_str() && d["last_report"]["version"] == "1.0.0",
            BOOT_TIMEOUT,
        )
        .unwrap();
    eprintln!("the fleet sees {id}: {device}");
    // The gated release reaches nobody before its rollout.
    assert!(
        !vm.console().contains("installing 1.1.0"),
        "1.1.0 was installed before its rollout started"
    );
    let started = fleet
        .admin(&[
            "rollout",
            "start",
            "--channel",
            "stable",
            "--version",
            "1.1.0",
            "--devices",
            &id,
            "--max-failures",
            "0",
        ])
        .unwrap();
    eprintln!("rollout start: {}", started.trim());
    aperture_repo::sync::to_dir(&repo_dir, &served).unwrap();
    let found = vm
        .wait_for("update check: installing 1.1.0", BOOT_TIMEOUT)
        .unwrap();
    eprintln!("{found}");
    cut_after(
        &mut vm,
        markers::INSTALLING,
        Duration::from_secs(5),
        BOOT_TIMEOUT,
    )
    .unwrap();
    eprintln!("POWER CUT 5 s into the update loop's install of v2");
    let bundle =
        |r: &Request| r.path.starts_with("/targets/") && r.path.ends_with(".stable.bundle");
    let fetched = nginx.requests_once(bundle, Duration::from_secs(60));
    assert!(
        fetched.iter().any(bundle),
        "the bundle was fetched from nginx (its cut request logged within 60 s): {fetched:?}"
    );

    // The archive is gone from the stick (its token is used: worthless, but not left behind).
    let left = fleet_server::stick_files(&stick).unwrap();
    assert!(
        !left.iter().any(|f| f == "token" || f == "fleet.toml"),
        "the archive is still on the stick: {left:?}"
    );

    // Boot 2: slot A boots (B was never armed); aperture-update-resume.service installs v2
    // again from the journal's source, and arms B.
    let s = Script::new()
        .piece("resume", &[])
        .and_then(|s| s.piece("status", &[]))
        .and_then(|s| s.piece("reboot", &[]))
        .unwrap();
    let mut vm = sc.boot("after-cut", Some(&s)).unwrap();
    let line = vm
        .wait_for("aperture-agent: product=", BOOT_TIMEOUT)
        .unwrap();
    assert!(
        line.contains("slot=a") && line.contains("version=1.0.0") && line.contains("verity=yes"),
        "after the cut, v1 must boot from slot A: {line}"
    );
    let resumed = vm
        .wait_for("APERTURE-RESUMED", Duration::from_secs(900))
        .unwrap();
    assert!(resumed.ends_with(" 0"), "{resumed}");
    let st = json_on_line(&vm.wait_for("APERTURE-STATUS", BOOT_TIMEOUT).unwrap()).unwrap();
    assert_eq!(
        st["next"], "b",
        "the finished install must arm slot B: {st}"
    );
    vm.wait_exit(BOOT_TIMEOUT).unwrap();

    // Boot 3: the loader picks slot B (armed, on trial); the health gate passes and commits it;
    // the firewall of the updated system is checked; then (with --full) v2 installs v3 into
    // slot A.
    // Before it, release 1.2.0 is published and halted at once (in CI a stand-in bundle: the
    // appliance must not fetch it at all; with --full, v3's build).
    let now = jiff::Timestamp::now();
    let v12 = ReleaseMeta {
        version: "1.2.0".parse().unwrap(),
        published_at: 0,
        ..aperture_image::verify::verified_release(
            &v1.paths.out,
            "stable",
            Waves::default(),
            unix(now),
        )
        .unwrap()
    };
    let v12_bundle = match &v3 {
        Some(v3) => v3.paths.out.join("update.bundle"),
        None => v1.paths.out.join("update.bundle"),
    };
    // The fleet server signed the rollout into the repository since: open it as it is on disk,
    // under the lock the server's signer takes.
    let mut repo = aperture_repo::Repo::open_to_change(&repo_dir).unwrap();
    repo.publish(&v12_bundle, v12.clone(), now, false).unwrap();
    repo.set_halted(&v12.version, "stable", true, now, false)
        .unwrap();
    drop(repo);
    aperture_repo::sync::to_dir(&repo_dir, &served).unwrap();
    let firewall = Firewall::prepare(&www).unwrap();
    let script = Script::new()
        .piece("status", &[])
        .and_then(|s| s.piece("tpm-counters", &[]))
        .and_then(|s| firewall.script(s))
        .and_then(|s| match v3 {
            Some(_) => s
                .piece("install", &[("URL", &server.guest_url("v3.bundle"))])
                .and_then(|s| s.piece("reboot", &[])),
            // Kept running until the fleet has its report (then killed).
            None => Ok(s.line("sleep 3600")),
        })
        .unwrap();
    let mut vm = sc
        .boot_with("v2-commits", Some(&script), |c| firewall.forward(c))
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
    // Issue 12.9: the floor and the keyring sequence are in the (sw)TPM's NV counters too,
    // as high as the store says, so a lower floor written into the store changes nothing.
    for (index, field) in [
        ("0x01500A70", "security_floor"),
        ("0x01500A71", "keyring_sequence"),
    ] {
        let line = vm
            .wait_for(&format!("APERTURE-NV {index} "), BOOT_TIMEOUT)
            .unwrap();
        let hex = after(&line, &format!("APERTURE-NV {index} "));
        let counter = match hex.trim() {
            "none" => 0,
            h => u64::from_str_radix(h, 16).unwrap_or_else(|_| panic!("{line}")),
        };
        let store = st[field].as_u64().unwrap_or(0);
        assert!(
            counter >= store && (field != "security_floor" || counter >= 1),
            "NV counter {index} = {counter}, the store's {field} = {store}: {st}"
        );
    }
    // The firewall as the guest's kernel holds it, every probed port closed, outbound flows
    // as the policy says (what `vm_boot` checked in a boot of its own until this boot took it).
    firewall.check(&vm, &vm_recipe("vm-v2"));
    // v2's update loop sees 1.2.0, halted, and leaves it alone.
    let halted = vm
        .wait_for("update check: nothing to install over 1.1.0", BOOT_TIMEOUT)
        .unwrap();
    assert!(
        halted.contains("1.2.0.stable.bundle: rollout halted"),
        "{halted}"
    );
    eprintln!("{halted}");
    assert!(
        !nginx
            .requests()
            .iter()
            .any(|r| r.path.contains("1.2.0.stable.bundle")),
        "the halted release was fetched"
    );
    // Must-show 1's end: the fleet's device list shows the appliance on 1.1.0, committed.
    let device = fleet
        .wait_device(
            "on 1.1.0 committed",
            |d| {
                let r = &d["last_report"];
                d["id"] == id.as_str()
                    && r["version"] == "1.1.0"
                    && r["last_update"]["result"] == "committed"
            },
            BOOT_TIMEOUT,
        )
        .unwrap();
    eprintln!("aperture-fleet devices --json: {device}");
    let table = fleet.admin(&["devices"]).unwrap();
    assert!(
        table
            .lines()
            .any(|l| l.contains(&id) && l.contains("1.1.0")),
        "aperture-fleet devices does not show {id} on 1.1.0:\n{table}"
    );
    eprintln!("aperture-fleet devices:\n{}", table.trim_end());
    let status = fleet.admin(&["rollout", "list", "--json"]).unwrap();
    eprintln!("aperture-fleet rollout list --json: {}", status.trim());
    if stop_unless_full(
        "v2 installs v3, whose runtime fails its health check three times; the retry rules \
         then boot v2 again and report the rollback",
    ) {
        vm.kill();
        return;
    }
    vm.wait_for("APERTURE-INSTALLED", BOOT_TIMEOUT).unwrap();
    vm.wait_exit(BOOT_TIMEOUT).unwrap();

    // Boots 4..: v3 on slot A fails its health check; each failure reboots; when its tries are
    // spent the loader boots slot B again.
    let mut failing = 0;
    loop {
        let mut vm = sc.boot("after-v3", None).unwrap();
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
}

#[test]
#[ignore = "VM tier: needs root, QEMU and a built image (run by `cargo xtask test` as root)"]
fn full_qemu_arm64_boots_the_arm64_userland_then_updates_v1_to_v2_into_slot_b() {
    require_root("full_qemu_arm64_boots_the_arm64_userland_then_updates_v1_to_v2_into_slot_b");
    // Both versions share the arm64 Debian base with the Jetson builds of the privileged tier.
    let arm64 = |name: &str, version: &str| {
        let r = derived_recipe(
            &test_root().join("arm64/recipes-vm"),
            &format!("{name}.toml"),
            "../tests/recipes/vm-hooks-arm64.toml",
            &format!("version = \"{version}\"\n"),
        )
        .unwrap();
        build(&r, &test_root().join("arm64/out").join(name), false)
            .unwrap()
            .0
    };
    let v1 = arm64("vm-arm64-v1", "1.0.0");
    let v2 = arm64("vm-arm64-v2", "1.1.0");

    let mut sc =
        Scenario::new("update-arm64", &v1.paths.out.join("disk.img"), Arch::Arm64).unwrap();
    let www = sc.dir.join("www");
    std::fs::create_dir_all(&www).unwrap();
    std::fs::copy(v2.paths.out.join("update.bundle"), www.join("v2.bundle")).unwrap();
    let server = FileServer::start_for_guests(&www).unwrap();
    // arm64 under TCG is several times slower than x86-64.
    let timeout = 3 * BOOT_TIMEOUT;

    // Boot 1: v1 on slot A, the aarch64 userland; it installs v2 over HTTP and reboots.
    let s = Script::new()
        .piece("arch", &[])
        .and_then(|s| s.piece("status", &[]))
        .and_then(|s| s.piece("install", &[("URL", &server.guest_url("v2.bundle"))]))
        .and_then(|s| s.piece("reboot", &[]))
        .unwrap();
    let mut vm = sc.boot("v1", Some(&s)).unwrap();
    let line = vm.wait_for("aperture-agent: product=", timeout).unwrap();
    eprintln!("status line: {line}");
    assert!(
        line.contains("board=qemu-arm64") && line.contains("slot=a"),
        "{line}"
    );
    assert!(line.contains("version=1.0.0"), "{line}");
    assert!(line.contains("fstype=erofs ro verity=yes"), "{line}");
    let arch = vm.wait_for("APERTURE-ARCH", timeout).unwrap();
    // e_machine 0xb7 (EM_AARCH64), little-endian: the updater itself is an arm64 program.
    assert!(
        arch.contains("aarch64") && arch.contains("e_machine=b700"),
        "the guest and its updater must be aarch64: {arch}"
    );
    let st = json_on_line(&vm.wait_for("APERTURE-STATUS", timeout).unwrap()).unwrap();
    assert_eq!(st["booted"], "a", "{st}");
    vm.wait_for("APERTURE-INSTALLED", timeout).unwrap();
    vm.wait_exit(timeout).unwrap();

    // Boot 2: the loader picks slot B (armed, on trial); the health gate commits it.
    let s = Script::new().piece("status", &[]).unwrap();
    let mut vm = sc.boot("v2", Some(&s)).unwrap();
    let line = vm.wait_for("aperture-agent: product=", timeout).unwrap();
    eprintln!("status line: {line}");
    assert!(
        line.contains("board=qemu-arm64")
            && line.contains("slot=b")
            && line.contains("version=1.1.0"),
        "v2 must boot from slot B: {line}"
    );
    let st = json_on_line(&vm.wait_for("APERTURE-STATUS", timeout).unwrap()).unwrap();
    assert_eq!(st["booted"], "b", "{st}");
    assert_eq!(
        st["committed"], "b",
        "the health gate must have committed slot B: {st}"
    );
    vm.kill();
    assert!(server.requests() >= 1);
}
