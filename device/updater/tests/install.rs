//! Installs that succeed, on a file-backed disk with systemd-boot on a temp ESP (and once with
//! the fake boot control): the new slot boots next, the health-gate commit raises the floor
//! (install never does), a slot that never commits rolls back by itself and status says so,
//! and status --json has the shape the agent and scripts read.

mod common;

use std::fs;
use std::sync::Arc;

use aperture_slots::{FakeBootControl, Slot, SlotStatus};
use aperture_trust::manifest::Sha256Hex;
use aperture_updater::disk::{Disk, PartitionHandle};
use aperture_updater::io::FaultIo;
use aperture_updater::{InstallOptions, UpdateError, Updater};
use common::*;

#[test]
fn install_boot_commit_then_install_back_into_a() {
    let v1 = image("1.0.0", 1, 1);
    let v2 = image("2.0.0", 2, 2);
    let v3 = image("3.0.0", 3, 3);
    let dev = Device::new(&v1);
    let mut u = dev.updater(Slot::A);

    let done = u
        .install(&mut &v2.bundle[..], &InstallOptions::default())
        .unwrap();
    assert_eq!(done.target, Slot::B);
    assert_eq!(done.version, "2.0.0");
    assert_eq!(
        done.manifest_sha256,
        Sha256Hex::digest(&v2.manifest_json).to_string()
    );
    assert!(done.restarted.is_none());
    // Slot B holds exactly v2, and the store records it with the exact signed manifest.
    assert_eq!(dev.slot_bytes(Slot::B, v2.rootfs.len()), v2.rootfs);
    assert_eq!(
        dev.slot_bytes(Slot::A, v1.rootfs.len()),
        v1.rootfs,
        "the active slot is never written"
    );
    let rec = dev.assert_slot_verifies(Slot::B);
    assert_eq!(rec.version.to_string(), "2.0.0");
    let installed = dev.installed(Slot::B).unwrap();
    assert_eq!(installed.manifest.as_bytes(), v2.manifest_json);
    assert_eq!(installed.signature.as_bytes(), v2.sig_json);
    assert_eq!(
        dev.installed(Slot::A).unwrap(),
        v1.installed(),
        "A's record is untouched"
    );
    let slot_dir = dev.paths.slot_dir(Slot::B);
    let mut esp_files: Vec<String> = fs::read_dir(&slot_dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    esp_files.sort();
    assert_eq!(esp_files, ["uki.efi"], "only boot files on the ESP");
    assert_eq!(fs::read(slot_dir.join("uki.efi")).unwrap(), v2.uki[1]);
    let state = dev.state().unwrap();
    assert!(state.journal.is_none());
    assert_eq!(state.security_floor, 0, "install must not raise the floor");
    // The entry is the one slot_boot makes, armed with 3 tries.
    let entry = fs::read_to_string(dev.paths.esp.join("loader/entries/slot-b+3.conf")).unwrap();
    assert!(
        entry.contains(&format!("title {}", slot_boot(&v2, Slot::B).title)),
        "{entry}"
    );
    // A UKI's entry: its file, and no initrd or options (the command line is signed inside).
    assert!(entry.contains("linux /aperture/b/uki.efi\n"), "{entry}");
    assert!(
        !entry.contains("options") && !entry.contains("initrd"),
        "{entry}"
    );

    // Reboot into B, the health gate commits it.
    assert_eq!(dev.boot(), Slot::B);
    dev.set_running(Slot::B, &v2);
    let mut u = dev.updater(Slot::B);
    assert_eq!(
        u.boot_state().unwrap().status(Slot::B),
        SlotStatus::Trying {
            tries_left: 2,
            tries_done: 1
        }
    );
    let c = u.commit().unwrap();
    assert!(c.floor_raised && c.security_floor == 2, "{c}");
    assert_eq!(u.boot_state().unwrap().status(Slot::B), SlotStatus::Good);
    assert!(!u.commit().unwrap().floor_raised, "commit is idempotent");

    // And the next install goes into A.
    let done = u
        .install(
            &mut &v3.bundle[..],
            &InstallOptions {
                source: None,
                ..InstallOptions::update(1)
            },
        )
        .unwrap();
    assert_eq!(done.target, Slot::A);
    assert_eq!(dev.boot(), Slot::A);
    assert_eq!(
        dev.assert_slot_verifies(Slot::A).version.to_string(),
        "3.0.0"
    );
}

#[test]
fn floor_rises_only_at_commit() {
    let v1 = image("1.0.0", 1, 1);
    let v2 = image("2.0.0", 5, 2);
    let dev = Device::new(&v1);
    dev.updater(Slot::A).commit().unwrap();
    assert_eq!(dev.state().unwrap().security_floor, 1);
    dev.updater(Slot::A)
        .install(&mut &v2.bundle[..], &InstallOptions::default())
        .unwrap();
    assert_eq!(dev.state().unwrap().security_floor, 1);
    // B never passes its health gate: after its tries the loader returns to A, floor unchanged,
    // so v1-era security versions (and a fixed v2) remain installable.
    for _ in 0..3 {
        assert_eq!(dev.boot(), Slot::B);
    }
    assert_eq!(dev.boot(), Slot::A);
    let st = dev.updater(Slot::A).status().unwrap();
    assert_eq!(st.security_floor, 1);
    let rb = st.rollback.clone().expect("a rollback is reported");
    assert_eq!(
        rb.to_string(),
        "rollback: slot b (version 2.0.0) failed its health check; running slot a"
    );
    assert!(
        st.to_string().contains("rollback: slot b (version 2.0.0)"),
        "{st}"
    );
    // Committing B later (after a successful boot) is what raises the floor.
    let v2b = image("2.0.1", 5, 4);
    dev.updater(Slot::A)
        .install(&mut &v2b.bundle[..], &InstallOptions::default())
        .unwrap();
    assert_eq!(dev.boot(), Slot::B);
    dev.set_running(Slot::B, &v2b);
    dev.updater(Slot::B).commit().unwrap();
    assert_eq!(dev.state().unwrap().security_floor, 5);
}

#[test]
fn rollback_command_boots_the_other_good_slot() {
    let v1 = image("1.0.0", 1, 1);
    let v2 = image("2.0.0", 2, 2);
    let dev = Device::new(&v1);
    dev.updater(Slot::A)
        .install(&mut &v2.bundle[..], &InstallOptions::default())
        .unwrap();
    assert_eq!(dev.boot(), Slot::B);
    dev.set_running(Slot::B, &v2);
    let mut u = dev.updater(Slot::B);
    u.commit().unwrap();
    let state = u.rollback().unwrap();
    assert_eq!(state.next, Slot::A);
    assert_eq!(dev.boot(), Slot::A);
    // Rolling back from A to B works too (B is good), but not to an unbootable slot.
    dev.set_running(Slot::A, &v1);
    let err = {
        let v3 = image("3.0.0", 3, 3);
        let mut u = dev.updater(Slot::A);
        // An install cut off after the target was invalidated: B is unbootable.
        let mut cut = &v3.bundle[..v3.bundle.len() / 2];
        assert!(u.install(&mut cut, &InstallOptions::default()).is_err());
        u.rollback().unwrap_err()
    };
    assert!(matches!(err, UpdateError::Slots(_)), "{err}");
    let text = aperture_updater::error_chain(&err);
    assert!(text.contains("slot b"), "{text}");
}

#[test]
fn works_with_the_fake_boot_control_too() {
    let v1 = image("1.0.0", 1, 1);
    let v2 = image("2.0.0", 2, 2);
    let dev = Device::new(&v1);
    let fake_path = dev.dir.path().join("fake-boot.json");
    let fake = FakeBootControl::open(&fake_path).unwrap();
    let mut u = Updater::new(
        dev.paths.clone(),
        Box::new(dev.disk()),
        Box::new(fake),
        Slot::A,
    )
    .with_clock(|| NOW);
    u.install(&mut &v2.bundle[..], &InstallOptions::default())
        .unwrap();
    let mut fake = FakeBootControl::open(&fake_path).unwrap();
    assert_eq!(
        aperture_slots::BootControl::loader_boot(&mut fake).unwrap(),
        Slot::B
    );
    assert_eq!(
        fake.persisted().len(),
        0,
        "a reopened fake starts a fresh log"
    );
    dev.assert_slot_verifies(Slot::B);
}

#[test]
fn status_json_shape() {
    let v1 = image("1.0.0", 1, 1);
    let v2 = image("2.0.0", 2, 2);
    let dev = Device::new(&v1);
    let mut u = dev.updater(Slot::A);
    u.install(&mut &v2.bundle[..], &InstallOptions::default())
        .unwrap();
    let v = serde_json::to_value(u.status().unwrap()).unwrap();
    assert_eq!(v["backend"], "systemd-boot");
    assert_eq!(v["booted"], "a");
    assert_eq!(v["next"], "b");
    assert_eq!(v["running"]["version"], "1.0.0");
    assert_eq!(v["running"]["board"], BOARD);
    assert_eq!(v["security_floor"], 0);
    assert_eq!(v["committed"], serde_json::Value::Null);
    assert_eq!(v["interrupted"], serde_json::Value::Null);
    assert_eq!(v["rollback"], serde_json::Value::Null);
    // No efivars under the test root: the firmware's state is unknown, and says so.
    assert_eq!(v["secure_boot"], "unknown");
    let efivars = &dev.paths.efivars;
    fs::create_dir_all(efivars).unwrap();
    let global = "8be4df61-93ca-11d2-aa0d-00e098032b8c";
    for (secure, setup, want) in [(1u8, 0u8, "on"), (0, 0, "off"), (0, 1, "setup")] {
        fs::write(
            efivars.join(format!("SecureBoot-{global}")),
            [6, 0, 0, 0, secure],
        )
        .unwrap();
        fs::write(
            efivars.join(format!("SetupMode-{global}")),
            [6, 0, 0, 0, setup],
        )
        .unwrap();
        let st = u.status().unwrap();
        assert_eq!(serde_json::to_value(&st).unwrap()["secure_boot"], want);
        assert!(
            st.to_string().contains(&format!("secureboot={want}")),
            "{st}"
        );
    }
    let slots = v["slots"].as_array().unwrap();
    assert_eq!(slots.len(), 2);
    assert_eq!(slots[0]["slot"], "a");
    assert_eq!(slots[0]["status"]["state"], "good");
    assert_eq!(slots[0]["booted"], true);
    assert_eq!(slots[1]["status"]["state"], "trying");
    assert_eq!(slots[1]["status"]["tries_left"], 3);
    assert_eq!(slots[1]["next"], true);
    assert_eq!(slots[1]["record"]["version"], "2.0.0");
    assert_eq!(
        slots[1]["record"]["root_hash"],
        v2.verity.root_hash.to_string()
    );
    assert_eq!(slots[1]["record"]["security_version"], 2);
    let text = u.status().unwrap().to_string();
    assert!(
        text.contains("slot b: on trial (3 tries left, 0 done), holds 2.0.0"),
        "{text}"
    );
}

#[test]
fn interrupted_install_is_reported_and_restarted() {
    let v1 = image("1.0.0", 1, 1);
    let v2 = image("2.0.0", 2, 2);
    let dev = Device::new(&v1);
    let mut u = dev.updater(Slot::A);
    // The stream ends in the middle of the rootfs payload (a download cut short).
    let mut cut = &v2.bundle[..data_offset(&v2.bundle, "rootfs.img.zst") + 5000];
    let opts = InstallOptions {
        source: Some("/data/v2.bundle".into()),
        ..InstallOptions::update(2)
    };
    u.install(&mut cut, &opts).unwrap_err();
    let j = u.interrupted().unwrap().expect("the journal remains");
    assert_eq!((j.target, j.from, j.tries), (Slot::B, Slot::A, 2));
    assert_eq!(j.source.as_deref(), Some("/data/v2.bundle"));
    assert_eq!(
        j.manifest_sha256,
        Sha256Hex::digest(&v2.manifest_json).to_string()
    );
    let st = u.status().unwrap();
    assert_eq!(st.interrupted.as_ref(), Some(&j));
    let text = st.to_string();
    assert!(
        text.contains("an install was interrupted: installing target b, bundle 2.0.0/"),
        "{text}"
    );
    assert!(text.contains("slot b is now unbootable"), "{text}");
    assert_eq!(dev.boot(), Slot::A, "the running slot boots meanwhile");
    // Given the bundle again, the install starts over and completes.
    let done = u
        .install(&mut &v2.bundle[..], &InstallOptions::default())
        .unwrap();
    assert_eq!(
        done.restarted.as_ref().map(|j| j.version.as_str()),
        Some("2.0.0")
    );
    assert!(u.interrupted().unwrap().is_none());
    assert_eq!(dev.boot(), Slot::B);
    dev.assert_slot_verifies(Slot::B);
}

#[test]
fn a_partition_too_small_is_refused_before_writing() {
    let v1 = image("1.0.0", 1, 1);
    let dev = Device::new(&v1);
    // A release whose rootfs claims more than the partition holds.
    let big = image_with("2.0.0", 2, 2, &keys(), |m| {
        m.artifacts[0].size = 2 * SLOT_SIZE;
    });
    let before = dev.snapshot();
    let err = dev
        .updater(Slot::A)
        .install(&mut &big.bundle[..], &InstallOptions::default())
        .unwrap_err();
    assert!(
        matches!(err, UpdateError::TooLarge { slot: Slot::B, .. }),
        "{err}"
    );
    assert_eq!(dev.snapshot(), before);
}

/// Rough throughput of an install (stream, write, fsync, read back, verify) of a 256 MiB
/// rootfs from a bundle in memory. Ignored by default; run with
/// `cargo test -p aperture-updater --test install -- --ignored throughput --nocapture`.
#[test]
#[ignore]
fn throughput() {
    let size = 256 << 20;
    let keys = keys();
    let v1 = image_sized("1.0.0", 1, 1, &keys, 4 << 20, |_| {});
    let v2 = image_sized("2.0.0", 2, 2, &keys, size, |_| {});
    let dev = Device::sized(&v1, size as u64 + (8 << 20));
    let start = std::time::Instant::now();
    dev.updater(Slot::A)
        .install(&mut &v2.bundle[..], &InstallOptions::default())
        .unwrap();
    let secs = start.elapsed().as_secs_f64();
    eprintln!(
        "installed {} MiB (bundle {} MiB) in {secs:.2} s: {:.0} MiB/s",
        v2.rootfs.len() >> 20,
        v2.bundle.len() >> 20,
        v2.rootfs.len() as f64 / secs / (1 << 20) as f64
    );
    let part = aperture_updater::disk::Disk::open(&dev.disk(), "rootfs_b").unwrap();
    let start = std::time::Instant::now();
    aperture_updater::install::verify_rootfs(&*part, &v2.manifest.artifacts[0], Slot::B).unwrap();
    eprintln!(
        "of which reading back and verifying: {:.2} s",
        start.elapsed().as_secs_f64()
    );
}

/// Issue 12: device state is off the ESP. What a power cut left of the old `state.json` (0
/// bytes) does not matter any more; install, commit and status keep floor, journal and slot
/// records in the state store, and the ESP holds only boot files.
#[test]
fn device_state_lives_in_the_store_and_the_esp_holds_only_boot_files() {
    let v1 = image("1.0.0", 1, 1);
    let v2 = image("2.0.0", 2, 2);
    let dev = Device::new(&v1);
    let old_state = dev.paths.esp.join("aperture/state.json");
    fs::write(&old_state, b"").unwrap();
    assert_eq!(dev.updater(Slot::A).status().unwrap().security_floor, 0);
    dev.updater(Slot::A)
        .install(&mut &v2.bundle[..], &InstallOptions::default())
        .unwrap();
    assert_eq!(dev.boot(), Slot::B);
    dev.set_running(Slot::B, &v2);
    dev.updater(Slot::B).commit().unwrap();
    let state = dev.state().expect("the floor is in the store");
    assert_eq!((state.security_floor, state.committed), (2, Some(Slot::B)));
    assert_eq!(dev.record(Slot::B).unwrap().version.to_string(), "2.0.0");
    fs::remove_file(&old_state).unwrap();
    let mut files: Vec<String> = dev
        .snapshot()
        .files
        .into_iter()
        .map(|(p, _)| {
            p.strip_prefix(&dev.paths.esp)
                .unwrap()
                .display()
                .to_string()
        })
        .collect();
    files.sort();
    assert_eq!(
        files,
        [
            "aperture/a/uki.efi",
            "aperture/b/uki.efi",
            "loader/entries/slot-a.conf",
            "loader/entries/slot-b.conf",
            "loader/entries/slot-b.conf.off",
            "loader/loader.conf",
        ]
    );
}

/// Slot B's UKI in 512-byte blocks: what an install of `v2` needs on the ESP.
fn boot_files_on_the_esp(v2: &Image) -> u64 {
    (v2.uki[1].len() as u64).next_multiple_of(512)
}

#[test]
fn a_full_esp_is_refused_before_anything_is_written() {
    let v1 = image("1.0.0", 1, 1);
    let v2 = image("2.0.0", 2, 2);
    let dev = Device::new(&v1);
    let before = dev.snapshot();
    let needed = boot_files_on_the_esp(&v2);
    let io = FaultIo::counting().with_free_space(needed - 1);
    let err = dev
        .updater_with_io(Slot::A, Arc::new(io.clone()))
        .install(&mut &v2.bundle[..], &InstallOptions::default())
        .unwrap_err();
    assert!(
        matches!(
            err,
            UpdateError::EspFull {
                slot: Slot::B,
                needed: n,
                ..
            } if n == needed
        ),
        "{err}"
    );
    let text = err.to_string();
    assert!(
        text.contains(&dev.paths.esp.display().to_string())
            && text.contains(&format!("{} bytes free", needed - 1))
            && text.contains(&format!("need {needed}")),
        "{text}"
    );
    assert!(err.is_refusal());
    assert_eq!(io.ops(), 0, "nothing was written: {:?}", io.log());
    assert_eq!(dev.snapshot(), before);
}

#[test]
fn leftover_temporary_files_are_removed_and_count_as_free_space() {
    let v1 = image("1.0.0", 1, 1);
    let v2 = image("2.0.0", 2, 2);
    let dev = Device::new(&v1);
    let dir = dev.paths.slot_dir(Slot::B);
    // What an install cut off while streaming left, and a stray file of the same kind.
    fs::write(dir.join("uki.efi.tmp"), vec![7u8; 1000]).unwrap();
    fs::write(dir.join("other.tmp"), b"x").unwrap();
    let io = FaultIo::counting().with_free_space(boot_files_on_the_esp(&v2) - 1);
    dev.updater_with_io(Slot::A, Arc::new(io))
        .install(&mut &v2.bundle[..], &InstallOptions::default())
        .unwrap();
    let mut left: Vec<String> = fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    left.sort();
    assert_eq!(left, ["uki.efi"]);
    assert_eq!(dev.boot(), Slot::B);
    dev.assert_slot_verifies(Slot::B);
}

/// Issue 12.10: what the device records for an installed slot is the manifest the trust crate
/// verified, read once. The bundle's first header (`manifest.json`) gets the size field
/// `"<size> 7"`: tar readers, ours included, read the number up to the first space. The updater
/// once read the header a second time with a laxer parser of its own (`split_header`, removed),
/// which kept every octal digit of the field: it read `<size>7`, eight times too long, so it
/// recorded bytes nobody had verified (or refused a bundle that verified). Now there is one
/// parser, and the record holds exactly the signed bytes.
#[test]
fn the_manifest_recorded_is_the_one_verified_whatever_else_its_tar_header_holds() {
    let v1 = image("1.0.0", 1, 1);
    let v2 = image("2.0.0", 2, 2);
    let mut bundle = v2.bundle.clone();
    assert_eq!(
        &bundle[..14],
        b"manifest.json\0",
        "manifest.json comes first"
    );
    let field = format!("{:o} 7", v2.manifest_json.len());
    assert!(field.len() < 12);
    bundle[124..136].fill(0);
    bundle[124..124 + field.len()].copy_from_slice(field.as_bytes());
    // The header checksum: every byte summed with the checksum field read as spaces.
    bundle[148..156].fill(b' ');
    let sum: u32 = bundle[..512].iter().map(|b| u32::from(*b)).sum();
    bundle[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());

    let dev = Device::new(&v1);
    let mut u = dev.updater(Slot::A);
    let done = u
        .install(&mut &bundle[..], &InstallOptions::default())
        .unwrap();
    assert_eq!(done.version, "2.0.0");
    let installed = dev.installed(Slot::B).unwrap();
    assert_eq!(installed.manifest.as_bytes(), v2.manifest_json);
    assert_eq!(installed.signature.as_bytes(), v2.sig_json);
    assert_eq!(
        done.manifest_sha256,
        Sha256Hex::digest(&v2.manifest_json).to_string()
    );
    dev.assert_slot_verifies(Slot::B);
}

/// With the running image's Secure Boot db certificate in place (every built image has one),
/// a release whose UKIs another key signed is refused after streaming and before arming, and
/// the same release signed with our db key installs. Real stub, real `sbsign` and `sbverify`.
#[test]
fn a_uki_signed_with_other_keys_is_refused_and_ours_is_installed() {
    let test = "a_uki_signed_with_other_keys_is_refused_and_ours_is_installed";
    for (tool, package) in [
        ("sbsign", "sbsigntool"),
        ("sbverify", "sbsigntool"),
        ("openssl", "openssl"),
    ] {
        if aperture_sys::tool::for_test(tool, package, test).is_none() {
            return;
        }
    }
    let stub = std::path::Path::new("/").join(aperture_uefi::STUB_X86_64);
    let Some(stub) = std::fs::read(&stub).ok() else {
        let why = format!("{test}: {} (systemd-boot-efi) is missing", stub.display());
        assert!(!aperture_sys::tool::required(), "{why}");
        eprintln!("SKIPPED: {why}");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let cert = |name: &str| {
        let (key, crt) = (
            dir.path().join(format!("{name}.key")),
            dir.path().join(format!("{name}.crt")),
        );
        let ok = std::process::Command::new("openssl")
            .args([
                "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
            ])
            .arg("-subj")
            .arg(format!("/CN=snakeoil {name}"))
            .arg("-keyout")
            .arg(&key)
            .arg("-out")
            .arg(&crt)
            .stdin(std::process::Stdio::null())
            .output()
            .unwrap();
        assert!(
            ok.status.success(),
            "{}",
            String::from_utf8_lossy(&ok.stderr)
        );
        (key, crt)
    };
    let ours = cert("ours");
    let theirs = cert("theirs");
    let v1 = image("1.0.0", 1, 1);
    let v2 = image("2.0.0", 2, 2);
    // A UKI's disk-key policy, signed by `policy_key` as the builder signs it.
    let policy_for = |unsigned: &[u8], policy_key: &std::path::Path| -> Vec<u8> {
        let pcr11 = aperture_uefi::predict_pcr11(unsigned).unwrap();
        let mut p = aperture_uefi::SignedPolicy::unsigned(pcr11, v2.manifest.security_version);
        let msg = dir.path().join("policy.msg");
        fs::write(&msg, p.message()).unwrap();
        let out = std::process::Command::new("openssl")
            .args(["dgst", "-sha256", "-sign"])
            .arg(policy_key)
            .arg(&msg)
            .output()
            .unwrap();
        assert!(out.status.success());
        p.signature = out.stdout;
        p.encode()
    };
    let signed_by = |(key, crt): &(std::path::PathBuf, std::path::PathBuf),
                     policy_key: Option<&std::path::Path>|
     -> Image {
        let mut img = v2.clone();
        for i in 0..2 {
            let cmdline = aperture_uefi::section_data(&v2.uki[i], ".cmdline")
                .unwrap()
                .unwrap()
                .to_vec();
            let assemble = |policy: Option<&[u8]>| {
                let mut sections: Vec<(&str, &[u8])> =
                    vec![(".osrel", b"ID=aperture-test\n"), (".cmdline", &cmdline)];
                sections.extend(policy.map(|p| (aperture_uefi::apolicy::SECTION, p)));
                sections.extend([(".initrd", &v2.initrd[..]), (".linux", &v2.kernel[..])]);
                aperture_uefi::assemble_uki(&stub, &sections).unwrap()
            };
            let unsigned = match policy_key {
                Some(k) => assemble(Some(&policy_for(&assemble(None), k))),
                None => assemble(None),
            };
            let (u, s) = (dir.path().join("u.efi"), dir.path().join("s.efi"));
            fs::write(&u, unsigned).unwrap();
            let out = std::process::Command::new("sbsign")
                .arg("--key")
                .arg(key)
                .arg("--cert")
                .arg(crt)
                .arg("--output")
                .arg(&s)
                .arg(&u)
                .stdin(std::process::Stdio::null())
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
            img.uki[i] = fs::read(&s).unwrap();
            let z = zstd::encode_all(&img.uki[i][..], 1).unwrap();
            let a = &mut img.manifest.artifacts[1 + i];
            a.size = img.uki[i].len() as u64;
            a.sha256 = Sha256Hex::digest(&img.uki[i]);
            let p = a.payload.as_mut().unwrap();
            p.size = z.len() as u64;
            p.sha256 = Sha256Hex::digest(&z);
            img.payloads[1 + i].1 = z;
        }
        img.resign(&keys())
    };
    let dev = Device::new(&v1);
    let db = dev.paths.files().secure_boot_db();
    fs::create_dir_all(db.parent().unwrap()).unwrap();
    fs::copy(&ours.1, &db).unwrap();
    // The running image's TPM policy key: `ours.0`'s public half.
    let policy_pub = dev.paths.files().tpm_policy_key();
    let out = std::process::Command::new("openssl")
        .args(["pkey", "-pubout", "-in"])
        .arg(&ours.0)
        .arg("-out")
        .arg(&policy_pub)
        .output()
        .unwrap();
    assert!(out.status.success());

    let err = dev
        .updater(Slot::A)
        .install(
            &mut &signed_by(&theirs, Some(&ours.0)).bundle[..],
            &InstallOptions::default(),
        )
        .unwrap_err();
    assert!(
        matches!(err, UpdateError::Verify { slot: Slot::B, .. }),
        "{err}"
    );
    let text = aperture_updater::error_chain(&err);
    assert!(
        text.contains("does not verify against the Secure Boot db"),
        "{text}"
    );
    let state = dev.updater(Slot::A).boot_state().unwrap();
    assert_eq!(state.status(Slot::B), SlotStatus::Unbootable);
    assert_eq!(dev.boot(), Slot::A, "the refused slot must not boot");

    // Signed by our db, but its disk-key policy missing, or signed by another policy key:
    // the disk keys would not unseal in it, so it is refused before it can boot.
    for (policy, want) in [
        (None, "carries no signed disk-key policy"),
        (Some(&theirs.0), "is not signed by the TPM policy key"),
    ] {
        let err = dev
            .updater(Slot::A)
            .install(
                &mut &signed_by(&ours, policy.map(|p| p.as_path())).bundle[..],
                &InstallOptions::default(),
            )
            .unwrap_err();
        let text = aperture_updater::error_chain(&err);
        assert!(text.contains(want), "{want}: {text}");
        assert_eq!(dev.boot(), Slot::A, "the refused slot must not boot");
    }

    let good = signed_by(&ours, Some(&ours.0));
    dev.updater(Slot::A)
        .install(&mut &good.bundle[..], &InstallOptions::default())
        .unwrap();
    assert_eq!(
        fs::read(dev.paths.files().uki(Slot::B)).unwrap(),
        good.uki[1]
    );
    assert_eq!(dev.boot(), Slot::B);
    dev.assert_slot_verifies(Slot::B);
}

/// A disk whose slot B's handles change one byte: in what the writes put on the medium
/// (`writes`), or only in what direct reads return (`direct_reads`: the read-back that
/// follows the stream sees it, the one after the sync does not).
struct Flipping {
    inner: aperture_updater::disk::FileDisk,
    writes: bool,
    direct_reads: bool,
    at: u64,
}

struct Flip {
    inner: Box<dyn PartitionHandle>,
    writes: bool,
    direct_reads: bool,
    at: u64,
}

impl Flipping {
    fn wrap(&self, label: &str, part: Box<dyn PartitionHandle>) -> Box<dyn PartitionHandle> {
        if label != "rootfs_b" {
            return part;
        }
        Box::new(Flip {
            inner: part,
            writes: self.writes,
            direct_reads: self.direct_reads,
            at: self.at,
        })
    }
}

impl Disk for Flipping {
    fn describe(&self) -> String {
        self.inner.describe()
    }
    fn open(&self, label: &str) -> Result<Box<dyn PartitionHandle>, UpdateError> {
        Ok(self.wrap(label, self.inner.open(label)?))
    }
    fn open_shared(&self, label: &str) -> Result<Box<dyn PartitionHandle>, UpdateError> {
        Ok(self.wrap(label, self.inner.open_shared(label)?))
    }
    fn open_unclaimed(&self, label: &str) -> Result<Box<dyn PartitionHandle>, UpdateError> {
        self.inner.open_unclaimed(label)
    }
}

impl Flip {
    /// Flip the byte at `self.at` if `buf` (at `offset`) holds it.
    fn flip(&self, buf: &mut [u8], offset: u64) {
        if let Some(i) = self.at.checked_sub(offset) {
            if let Some(b) = buf.get_mut(i as usize) {
                *b ^= 0x20;
            }
        }
    }
}

impl PartitionHandle for Flip {
    fn label(&self) -> &str {
        self.inner.label()
    }
    fn describe(&self) -> String {
        self.inner.describe()
    }
    fn size(&self) -> u64 {
        self.inner.size()
    }
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
        self.inner.read_exact_at(buf, offset)
    }
    fn write_all_at(&mut self, buf: &[u8], offset: u64) -> std::io::Result<()> {
        if !self.writes {
            return self.inner.write_all_at(buf, offset);
        }
        // A copy at a 4096-aligned address, as the original, so the write stays direct.
        let mut room = vec![0u8; buf.len() + 4096];
        let start = room.as_ptr().align_offset(4096);
        let copy = &mut room[start..start + buf.len()];
        copy.copy_from_slice(buf);
        self.flip(copy, offset);
        self.inner.write_all_at(copy, offset)
    }
    fn sync(&mut self) -> std::io::Result<()> {
        self.inner.sync()
    }
    fn drop_cache(&self) -> std::io::Result<()> {
        self.inner.drop_cache()
    }
    fn start_writeback(&self, offset: u64, len: u64) -> std::io::Result<()> {
        self.inner.start_writeback(offset, len)
    }
    fn reads_direct(&self) -> bool {
        self.inner.reads_direct()
    }
    fn read_direct_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
        self.inner.read_direct_at(buf, offset)?;
        if self.direct_reads {
            self.flip(buf, offset);
        }
        Ok(())
    }
}

/// Whether the device's disk image takes `O_DIRECT` (a disk file system does; a tmpfs before
/// Linux 6.6 does not, and then the read-back runs after the sync only).
fn takes_direct_io(dev: &Device) -> bool {
    use std::os::unix::fs::OpenOptionsExt;
    fs::File::options()
        .read(true)
        .custom_flags(rustix::fs::OFlags::DIRECT.bits() as i32)
        .open(&dev.disk_path)
        .is_ok()
}

fn flipping_updater(dev: &Device, writes: bool, direct_reads: bool, at: u64) -> Updater {
    let disk = Flipping {
        inner: dev.disk(),
        writes,
        direct_reads,
        at,
    };
    Updater::new(
        dev.paths.clone(),
        Box::new(disk),
        Box::new(dev.backend()),
        Slot::A,
    )
    .with_clock(|| NOW)
}

/// Where the slot takes direct reads, the rootfs is read back from the medium during the
/// stream; a read-back then that sees other bytes than the image's is not the verdict: the
/// slot is read again after the sync, and an intact slot is installed.
#[test]
fn the_rootfs_is_read_back_during_the_stream_and_again_after_the_sync_if_that_failed() {
    let v1 = image("1.0.0", 1, 1);
    let v2 = image("2.0.0", 2, 2);
    let dev = Device::new(&v1);
    if !takes_direct_io(&dev) {
        eprintln!(
            "SKIPPED: {} does not take O_DIRECT here",
            dev.disk_path.display()
        );
        return;
    }
    let done = dev
        .updater(Slot::A)
        .install(&mut &v2.bundle[..], &InstallOptions::default())
        .unwrap();
    assert!(done.rootfs_read_during_stream);
    assert_eq!(dev.slot_bytes(Slot::B, v2.rootfs.len()), v2.rootfs);

    let dev = Device::new(&v1);
    let at = v2.rootfs.len() as u64 / 2;
    let done = flipping_updater(&dev, false, true, at)
        .install(&mut &v2.bundle[..], &InstallOptions::default())
        .unwrap();
    assert!(!done.rootfs_read_during_stream);
    assert_eq!(dev.slot_bytes(Slot::B, v2.rootfs.len()), v2.rootfs);
    assert_eq!(dev.boot(), Slot::B);
}

/// A medium that keeps other bytes than those written fails the install at the read-back,
/// during the stream and again after the sync, before the slot is armed: slot A boots.
#[test]
fn a_slot_whose_medium_changed_a_byte_fails_the_read_back_and_is_not_armed() {
    let v1 = image("1.0.0", 1, 1);
    let v2 = image("2.0.0", 2, 2);
    for at in [4096 * 3 + 17, v2.rootfs.len() as u64 - 1] {
        let dev = Device::new(&v1);
        let err = flipping_updater(&dev, true, false, at)
            .install(&mut &v2.bundle[..], &InstallOptions::default())
            .unwrap_err();
        assert!(
            matches!(err, UpdateError::Verify { slot: Slot::B, .. }),
            "{err}"
        );
        let text = aperture_updater::error_chain(&err);
        assert!(text.contains("rootfs"), "{text}");
        let state = dev.updater(Slot::A).boot_state().unwrap();
        assert_eq!(state.status(Slot::B), SlotStatus::Unbootable, "{err}");
        assert_eq!(dev.boot(), Slot::A, "{err}");
    }
}
