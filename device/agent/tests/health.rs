//! The health gate and the rollback report, on a folder laid out like the appliance
//! ([`Files`] rooted in a temporary folder): the image's build.json and kernel command line, a
//! fake service manager, and either a temp ESP with systemd-boot entries (the qemu board) or
//! NVIDIA's variables in an efivars folder with the firmware simulated (a Jetson), slot B armed
//! by the same slot manager the updater uses.

use std::collections::VecDeque;
use std::fs;
use std::path::Path;
use std::time::Duration;

use aperture_agent::health::{run_gate, GateOptions, GateReport, HealthError, UnitProbe};
use aperture_agent::status::{gather, BuildFacts};
use aperture_appliance::store::PARTITION_BYTES;
use aperture_appliance::{Area, Board, Files};
use aperture_slots::{BootControl, Slot, SlotManager, SlotStatus, SystemdBoot};
use aperture_trust::manifest::Sha256Hex;
use aperture_trust::record::{FileRecord, InstalledSlot, SlotRecord};
use aperture_trust::verity::VerityInfo;
use aperture_updater::disk::PartlabelDisk;
use aperture_updater::io::RealIo;
use aperture_updater::state::DeviceState;
use aperture_updater::store::Store;
use aperture_updater::{Paths, Updater};

const UNITS: [&str; 2] = ["aperture-runtime.service", "ssh.service"];

/// A fake `systemctl is-active`: answers from a script per poll, then repeats the last.
struct Script(VecDeque<&'static str>);

impl UnitProbe for Script {
    fn active_state(&mut self, _unit: &str) -> Result<String, HealthError> {
        let s = if self.0.len() > 1 {
            self.0.pop_front()
        } else {
            self.0.front().copied()
        };
        Ok(s.unwrap_or("unknown").to_string())
    }
}

fn facts(version: &str, security_version: u64) -> BuildFacts {
    BuildFacts {
        product: "aperture-edge".into(),
        version: version.into(),
        security_version,
        board: aperture_appliance::Board::QemuX86_64,
        recipe_sha256: "ab".into(),
        source_date_epoch: 1,
        required_services: UNITS.iter().map(|u| u.to_string()).collect(),
        tpm: true,
        reset_button: None,
    }
}

fn record(version: &str, security_version: u64) -> SlotRecord {
    let h = Sha256Hex::digest(version.as_bytes());
    SlotRecord {
        format: 1,
        product: "aperture-edge".into(),
        board: "qemu-x86_64".into(),
        version: version.parse().unwrap(),
        security_version,
        rootfs: FileRecord {
            name: "rootfs.img".into(),
            size: 8192,
            sha256: h.clone(),
        },
        verity: VerityInfo {
            root_hash: h,
            salt: String::new(),
            hash_offset: 4096,
            data_blocks: 1,
            data_block_size: 4096,
            hash_block_size: 4096,
            algorithm: "sha256".into(),
            uuid: "12345678-1234-1234-1234-123456789abc".into(),
        },
        boot_files: Vec::new(),
    }
}

/// The device state store: a file standing in for the `aperture_state` partition.
fn store(paths: &Paths) -> Store {
    let part = paths.partlabel_dir.join("aperture_state");
    if !part.exists() {
        fs::create_dir_all(&paths.partlabel_dir).unwrap();
        fs::File::create(&part)
            .unwrap()
            .set_len(PARTITION_BYTES)
            .unwrap();
    }
    let disk = PartlabelDisk::new(&paths.partlabel_dir);
    aperture_updater::store::open(&disk, Board::QemuX86_64, std::sync::Arc::new(RealIo)).unwrap()
}

/// Record what `slot` holds (its signed manifest does not matter to the agent).
fn put_record(paths: &Paths, slot: Slot, record: SlotRecord) {
    let installed = InstalledSlot {
        record,
        manifest: "{}".into(),
        signature: "{}".into(),
    };
    aperture_updater::store::write_slot(&mut store(paths), slot, &installed).unwrap();
}

/// The updater's record, if one was written.
fn update_record(paths: &Paths) -> Option<DeviceState> {
    store(paths).read_json(Area::Update).unwrap()
}

/// A device flashed with 1.0.0 (security version 1), running slot A, with 2.0.0 (security
/// version 3) installed into slot B and armed with `tries`.
fn device(tries: u32) -> (tempfile::TempDir, Paths) {
    let d = tempfile::tempdir().unwrap();
    let paths = Paths::rooted(d.path());
    for slot in Slot::ALL {
        let dir = paths.slot_dir(slot);
        fs::create_dir_all(&dir).unwrap();
        fs::write(dir.join("vmlinuz"), b"kernel").unwrap();
        fs::write(dir.join("initrd.img"), b"initrd").unwrap();
    }
    let boot = |slot, version: &str| {
        aperture_slots::cmdline::slot_boot(
            "aperture-edge",
            version,
            "",
            aperture_slots::SlotLayout::Esp,
            slot,
            "00",
            4096,
        )
    };
    aperture_slots::write_initial_esp(&paths.esp, &boot(Slot::A, "1.0.0"), &boot(Slot::B, "1.0.0"))
        .unwrap();
    put_record(&paths, Slot::A, record("1.0.0", 1));
    let mut m = SlotManager::new(SystemdBoot::new(paths.esp.clone()), Slot::A);
    m.begin_install(Slot::B).unwrap();
    put_record(&paths, Slot::B, record("2.0.0", 3));
    m.arm(Slot::B, tries, &boot(Slot::B, "2.0.0")).unwrap();
    fs::create_dir_all(d.path().join("etc/aperture")).unwrap();
    fs::create_dir_all(d.path().join("proc/self")).unwrap();
    fs::write(d.path().join("proc/self/mountinfo"), "").unwrap();
    run_on(&paths, Slot::A, &facts("1.0.0", 1));
    (d, paths)
}

/// The loader booted `slot`, which holds the image with `facts`.
fn run_on(paths: &Paths, slot: Slot, facts: &BuildFacts) {
    fs::write(&paths.cmdline, format!("quiet aperture.slot={slot}\n")).unwrap();
    fs::write(&paths.build_facts, serde_json::to_vec(facts).unwrap()).unwrap();
}

fn power_on(paths: &Paths) -> Slot {
    SystemdBoot::new(paths.esp.clone()).loader_boot().unwrap()
}

fn gate(root: &Path, script: &[&'static str]) -> (Result<GateReport, HealthError>, usize) {
    let files = Files::at(root);
    let mut updater = Updater::on_device(Paths::from_files(&files)).unwrap();
    let opts = GateOptions {
        timeout: Duration::from_secs(5),
        interval: Duration::from_secs(1),
        ..GateOptions::default()
    };
    let mut sleeps = 0;
    let mut probe = Script(script.iter().copied().collect());
    let r = run_gate(&files, &mut updater, &mut probe, &opts, &mut |_| {
        sleeps += 1
    });
    (r, sleeps)
}

#[test]
fn gate_passes_commits_and_raises_the_floor() {
    let (d, paths) = device(3);
    assert_eq!(power_on(&paths), Slot::B);
    run_on(&paths, Slot::B, &facts("2.0.0", 3));
    // The runtime needs two polls to report READY (activating, then active).
    let (r, sleeps) = gate(
        d.path(),
        &["activating", "activating", "activating", "active"],
    );
    let report = r.unwrap();
    assert_eq!(sleeps, 2);
    let GateReport::Passed { commit, units } = &report else {
        panic!("{report}")
    };
    assert_eq!(units.len(), 2);
    assert_eq!(
        (commit.slot, commit.security_floor, commit.floor_raised),
        (Slot::B, 3, true)
    );
    assert!(
        report.to_string().contains("slot b (2.0.0) marked good"),
        "{report}"
    );
    let state = SystemdBoot::new(paths.esp.clone()).read().unwrap();
    assert_eq!(state.status(Slot::B), SlotStatus::Good);
    assert_eq!(update_record(&paths).unwrap().security_floor, 3);
    assert_eq!(power_on(&paths), Slot::B, "committed: B keeps booting");
}

#[test]
fn gate_fails_on_a_slot_on_trial_and_tries_run_out_into_a_rollback() {
    let (d, paths) = device(2);
    for _ in 0..2 {
        assert_eq!(power_on(&paths), Slot::B);
        run_on(&paths, Slot::B, &facts("2.0.0", 3));
        let (r, sleeps) = gate(d.path(), &["activating", "failed"]);
        let err = r.unwrap_err();
        // A unit that reached `failed` ends the wait at the first poll: no point waiting
        // out the timeout before the reboot that moves the loader to its next try.
        assert_eq!(sleeps, 0, "a failed unit ends the wait");
        let text = err.to_string();
        assert!(
            text.contains("aperture-runtime.service (activating)")
                && text.contains("ssh.service (failed)"),
            "{text}"
        );
        assert!(
            update_record(&paths).is_none(),
            "nothing committed, floor not raised"
        );
    }
    // Tries used up: the loader falls back to A, and the agent says so.
    assert_eq!(power_on(&paths), Slot::A);
    run_on(&paths, Slot::A, &facts("1.0.0", 1));
    let s = gather(&Files::at(d.path())).unwrap();
    let rb = s.rollback.clone().expect("rollback reported");
    assert_eq!((rb.failed_slot, rb.running_slot), (Slot::B, Slot::A));
    assert_eq!(rb.failed_version.as_deref(), Some("2.0.0"));
    let text = s.to_string();
    assert!(
        text.contains("\nrollback: slot b (version 2.0.0) failed its health check; running slot a"),
        "{text}"
    );
    let json = serde_json::to_value(&s).unwrap();
    assert_eq!(json["rollback"]["failed_slot"], "b");
    assert_eq!(json["rollback"]["failed_version"], "2.0.0");
    assert_eq!(json["update"]["slots"][1]["status"]["state"], "bad");
    assert_eq!(json["update"]["booted"], "a");
    // A's gate then commits A; the floor follows A's image, never the failed one.
    let (r, _) = gate(d.path(), &["active"]);
    let GateReport::Passed { commit, .. } = r.unwrap() else {
        panic!()
    };
    assert_eq!(commit.security_floor, 1);
    assert_eq!(commit.was, SlotStatus::Good);
}

#[test]
fn unhealthy_committed_slot_does_not_reboot() {
    let (d, paths) = device(3);
    // Roll back by hand so A keeps booting, good.
    run_on(&paths, Slot::A, &facts("1.0.0", 1));
    let (r, _) = gate(d.path(), &["failed"]);
    let report = r.unwrap();
    assert!(
        matches!(report, GateReport::UnhealthyCommitted { .. }),
        "{report}"
    );
    assert!(report.to_string().contains("not rebooting"), "{report}");
}

#[test]
fn status_without_an_esp_still_reports_the_image() {
    let d = tempfile::tempdir().unwrap();
    fs::create_dir_all(d.path().join("etc/aperture")).unwrap();
    fs::write(
        d.path().join("etc/aperture/build.json"),
        serde_json::to_vec(&facts("1.0.0", 1)).unwrap(),
    )
    .unwrap();
    let s = gather(&Files::at(d.path())).unwrap();
    assert!(s.update.is_none() && s.rollback.is_none());
    assert!(s.update_unavailable.is_some());
    assert_eq!(s.version, "1.0.0");
}
