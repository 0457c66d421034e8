//! The agent on Jetson boards (AGX Orin and AGX Xavier), on a folder laid out like the
//! appliance: NVIDIA's UEFI variables in an efivars folder with the firmware simulated
//! (`Tegra::loader_boot`, which counts every boot in a simulated scratch register as
//! L4TLauncher does), the device state store as a partition file, and `nvbootctrl` as a
//! stand-in script that does to the simulated register what NVIDIA's `nvbootctrl verify` does
//! to the real one. The health gate commits through the updater, whose commit resets the
//! firmware's boot tries on every good boot; the status shows the board's partitions and boot
//! control.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use aperture_agent::health::{run_gate, GateOptions, GateReport, HealthError, UnitProbe};
use aperture_agent::status::{gather, BuildFacts};
use aperture_appliance::store::PARTITION_BYTES;
use aperture_appliance::{Board, Files, Role};
use aperture_slots::tegra::retry::NVBOOTCTRL;
use aperture_slots::{BootControl, Slot, SlotManager, SlotStatus, Tegra};
use aperture_trust::manifest::Sha256Hex;
use aperture_trust::record::{FileRecord, InstalledSlot, SlotRecord};
use aperture_trust::verity::VerityInfo;
use aperture_updater::disk::PartlabelDisk;
use aperture_updater::io::RealIo;
use aperture_updater::store::Store;
use aperture_updater::{Paths, Updater};

const UNITS: [&str; 1] = ["aperture-runtime.service"];

/// A fake `systemctl is-active`: the same answer every time.
struct Always(&'static str);

impl UnitProbe for Always {
    fn active_state(&mut self, _unit: &str) -> Result<String, HealthError> {
        Ok(self.0.into())
    }
}

fn facts(board: Board, version: &str, security_version: u64) -> BuildFacts {
    BuildFacts {
        product: "aperture-edge".into(),
        version: version.into(),
        security_version,
        board,
        recipe_sha256: "ab".into(),
        source_date_epoch: 1,
        required_services: UNITS.iter().map(|u| u.to_string()).collect(),
        tpm: false,
        reset_button: None,
    }
}

fn record(board: Board, version: &str, security_version: u64) -> SlotRecord {
    let h = Sha256Hex::digest(version.as_bytes());
    SlotRecord {
        format: 1,
        product: "aperture-edge".into(),
        board: board.name().into(),
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

/// A Jetson appliance in a temporary folder.
struct Jetson {
    _dir: tempfile::TempDir,
    files: Files,
    board: Board,
}

impl Jetson {
    /// Flashed with 1.0.0 (security version 1), running slot A, with 2.0.0 (security version
    /// 3) installed into slot B and armed with 3 tries.
    fn new(board: Board) -> Jetson {
        let dir = tempfile::tempdir().unwrap();
        let files = Files::at(dir.path());
        fs::create_dir_all(files.partlabel_dir()).unwrap();
        fs::File::create(files.partition(board.partition(Role::State)))
            .unwrap()
            .set_len(PARTITION_BYTES)
            .unwrap();
        for d in [
            files.efivars(),
            files.esp(),
            files.build_facts().parent().unwrap().to_path_buf(),
            files.mountinfo().parent().unwrap().to_path_buf(),
        ] {
            fs::create_dir_all(d).unwrap();
        }
        fs::write(files.mountinfo(), "").unwrap();
        let dev = Jetson {
            _dir: dir,
            files,
            board,
        };
        dev.install_nvbootctrl();
        dev.put_record(Slot::A, record(board, "1.0.0", 1));
        let mut on_a = SlotManager::new(dev.firmware(), Slot::A);
        on_a.begin_install(Slot::B).unwrap();
        dev.put_record(Slot::B, record(board, "2.0.0", 3));
        let boot = aperture_slots::cmdline::slot_boot(
            "aperture-edge",
            "2.0.0",
            "",
            board.slot_layout(),
            Slot::B,
            "00",
            4096,
        );
        on_a.arm(Slot::B, 3, &boot).unwrap();
        dev.run_on(Slot::A, "1.0.0", 1);
        dev
    }

    fn store(&self) -> Store {
        let disk = PartlabelDisk::new(self.files.partlabel_dir());
        aperture_updater::store::open(&disk, self.board, std::sync::Arc::new(RealIo)).unwrap()
    }

    fn put_record(&self, slot: Slot, record: SlotRecord) {
        let installed = InstalledSlot {
            record,
            manifest: "{}".into(),
            signature: "{}".into(),
        };
        aperture_updater::store::write_slot(&mut self.store(), slot, &installed).unwrap();
    }

    /// The simulated firmware on the appliance's variables and ledger.
    fn firmware(&self) -> Tegra {
        Tegra::new(self.files.efivars(), Box::new(self.store()))
    }

    /// NVIDIA's `nvbootctrl` in the image, as a stand-in: `verify` clears the simulated
    /// scratch register, as the real one clears SR_RF; every call is logged.
    fn install_nvbootctrl(&self) {
        let tool = self.files.path(NVBOOTCTRL);
        fs::create_dir_all(tool.parent().unwrap()).unwrap();
        let register = self.firmware().simulated_register();
        fs::write(
            &tool,
            format!(
                "#!/bin/sh\necho \"$@\" >> {log}\n[ \"$1\" = verify ] && rm -f {reg}\nexit 0\n",
                log = self.files.path("nvbootctrl.log").display(),
                reg = register.path().display()
            ),
        )
        .unwrap();
        fs::set_permissions(&tool, fs::Permissions::from_mode(0o755)).unwrap();
    }

    fn nvbootctrl_calls(&self) -> usize {
        fs::read_to_string(self.files.path("nvbootctrl.log"))
            .map(|l| l.lines().filter(|l| *l == "verify").count())
            .unwrap_or(0)
    }

    /// The loader booted `slot`, which holds `version`.
    fn run_on(&self, slot: Slot, version: &str, security_version: u64) {
        fs::write(
            self.files.cmdline(),
            format!("quiet aperture.slot={slot}\n"),
        )
        .unwrap();
        let json = serde_json::to_vec(&facts(self.board, version, security_version)).unwrap();
        fs::write(self.files.build_facts(), json).unwrap();
    }

    /// A warm reboot: the simulated firmware picks a slot.
    fn reboot(&self) -> Slot {
        let slot = self.firmware().loader_boot().unwrap();
        let (version, sv) = match slot {
            Slot::A => ("1.0.0", 1),
            Slot::B => ("2.0.0", 3),
        };
        self.run_on(slot, version, sv);
        slot
    }

    /// The health gate as `aperture-health.service` runs it, the units answering `state`.
    fn gate(&self, state: &'static str) -> Result<GateReport, HealthError> {
        let mut updater = Updater::on_device(Paths::from_files(&self.files)).unwrap();
        let opts = GateOptions {
            timeout: Duration::from_secs(1),
            interval: Duration::from_secs(1),
            ..GateOptions::default()
        };
        run_gate(
            &self.files,
            &mut updater,
            &mut Always(state),
            &opts,
            &mut |_| {},
        )
    }
}

/// The gate on a Jetson commits the new slot through the updater, and its commit resets the
/// firmware's boot tries (`nvbootctrl verify`) on every good boot: ten more warm reboots keep
/// booting the committed slot. The status names NVIDIA's partitions and the Tegra boot control.
#[test]
fn on_jetson_the_gate_commits_and_resets_the_firmware_tries_on_every_good_boot() {
    for board in [Board::JetsonOrinAgx, Board::JetsonXavierAgx] {
        let dev = Jetson::new(board);
        assert_eq!(dev.reboot(), Slot::B, "{board}");
        let GateReport::Passed { commit, .. } = dev.gate("active").unwrap() else {
            panic!("{board}: the gate did not pass")
        };
        assert_eq!((commit.slot, commit.security_floor), (Slot::B, 3));
        assert_eq!(commit.tries_not_reset, None, "{commit}");
        for reboot in 1..=10 {
            assert_eq!(dev.reboot(), Slot::B, "{board}: reboot {reboot}");
            assert!(matches!(
                dev.gate("active").unwrap(),
                GateReport::Passed { .. }
            ));
        }
        assert_eq!(dev.nvbootctrl_calls(), 11, "{board}: once per good boot");

        let s = gather(&dev.files).unwrap();
        assert_eq!(
            (s.boot_control.as_str(), s.board.as_str()),
            ("tegra", board.name())
        );
        let layout = board.slot_layout();
        for (i, slot) in Slot::ALL.into_iter().enumerate() {
            assert_eq!(s.slots[i].rootfs, layout.rootfs(slot));
            assert_eq!(s.slots[i].kernel, layout.kernel(slot));
            assert_eq!(s.slots[i].kernel_dtb, layout.kernel_dtb(slot));
        }
        let update = s.update.clone().expect("the updater's view");
        assert_eq!(update.backend, "tegra");
        assert_eq!(update.slots[1].status, SlotStatus::Good);
        let line = s.to_string();
        assert!(line.contains("boot_control=tegra slots=a:APP,"), "{line}");
    }
}

/// A gate that never passes on the trial slot commits nothing; the firmware gives up on the
/// slot after its tries and boots the old one, where the gate passes (resetting its tries) and
/// the agent reports the rollback.
#[test]
fn on_jetson_a_slot_whose_gate_fails_is_given_up_by_the_firmware_and_reported() {
    let board = Board::JetsonOrinAgx;
    let dev = Jetson::new(board);
    for _ in 0..3 {
        assert_eq!(dev.reboot(), Slot::B);
        let err = dev.gate("failed").unwrap_err();
        assert!(matches!(err, HealthError::Unhealthy { .. }), "{err}");
    }
    assert_eq!(dev.nvbootctrl_calls(), 0, "nothing passed, nothing reset");
    for _ in 0..5 {
        assert_eq!(dev.reboot(), Slot::A);
        dev.gate("active").unwrap();
    }
    let s = gather(&dev.files).unwrap();
    let rb = s.rollback.expect("rollback reported");
    assert_eq!((rb.failed_slot, rb.running_slot), (Slot::B, Slot::A));
    assert_eq!(s.update.unwrap().security_floor, 1, "the floor follows A");
}
