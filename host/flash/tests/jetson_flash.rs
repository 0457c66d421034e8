//! `flash --to jetson:` end to end against the synthetic BSP's fake NVIDIA tools
//! (host/image/fixtures/make-synthetic-bsp.sh, "FAKE NVIDIA FLASHING TOOLS"): Jetsons in
//! recovery mode are sysfs entries in a fixture tree; the fakes record every call and
//! simulate its effect there (the initrd's eMMC is a sparse file, QSPI a file), so the
//! discovery, waiting, writing and read-back run for real against files.
//!
//! What this proves and what it does not: that the flasher calls NVIDIA's tools with the
//! documented options per module (board configuration, USB instance, device instance), in the
//! right order, in parallel; that it finds each module's eMMC the way NVIDIA's scripts do and
//! writes exactly `disk.img` there; that QSPI gets the firmware the build signed; that a
//! module that never exposes its disk fails on its own with a clear error; and that nothing
//! runs from a tampered folder. It does not prove that real Jetsons and NVIDIA's real scripts
//! behave as the fakes do: nothing here has run on hardware.

mod common;

use std::collections::BTreeSet;
use std::fs;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aperture_flash::jetson::scan;
use aperture_flash::jetson_flash::{
    flash_jetsons, JetsonHost, JetsonTarget, ModuleOutcome, Plan, Step,
};
use aperture_flash::{FlashError, Progress, Stage, Unmapped, VerifiedImage};
use aperture_sys::Cmd;
use common::{copy_synthetic_bsp, flip_byte, make_jetson_folder, NOW, QSPI_PARTITIONS};

const ORIN: &str = "7023";
const XAVIER: &str = "7019";
const OFFLINE: [(&str, &str); 4] = [
    ("BOARDID", "3701"),
    ("FAB", "TS4"),
    ("BOARDSKU", "0000"),
    ("BOARDREV", "A.0"),
];

/// A rack of fake Jetsons: a BSP copy with fake tools, a signed build folder made with it,
/// a fixture sysfs and /dev, the fakes' state (calls.log, the targets' QSPI).
struct Rack {
    _tmp: tempfile::TempDir,
    l4t: PathBuf,
    image: PathBuf,
    sysfs: PathBuf,
    dev: PathBuf,
    state: PathBuf,
    work: PathBuf,
}

impl Rack {
    /// `None` (after printing SKIPPED) when bash is missing; the fakes are bash scripts.
    fn new(test: &str, never_expose: &[&str]) -> Option<Rack> {
        aperture_sys::tool::for_test("bash", "bash", test)?;
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path();
        let l4t = copy_synthetic_bsp(&root.join("bsp"));
        let image = make_jetson_folder(&root.join("out"), &l4t);
        let (sysfs, dev, state) = (root.join("sys"), root.join("dev"), root.join("state"));
        for d in [&sysfs, &dev] {
            fs::create_dir_all(d).unwrap();
        }
        fs::write(
            l4t.join("aperture-fake/hardware.conf"),
            format!(
                "SYSFS={}\nDEV={}\nSTATE={}\nEMMC_SECTORS=131072\nNEVER_EXPOSE=\"{}\"\n",
                sysfs.display(),
                dev.display(),
                state.display(),
                never_expose.join(" ")
            ),
        )
        .unwrap();
        Some(Rack {
            work: root.join("logs"),
            _tmp: tmp,
            l4t,
            image,
            sysfs,
            dev,
            state,
        })
    }

    /// Puts a module in recovery mode at `port`, with the fixture helper the fakes share.
    fn recovery(&self, port: &str, product: &str, serial: &str) {
        Cmd::new(self.l4t.join("aperture-fake/sysfs.sh"))
            .args(["recovery", port, product, serial])
            .run()
            .unwrap();
    }

    fn host(&self) -> JetsonHost {
        JetsonHost {
            sysfs: self.sysfs.clone(),
            dev: self.dev.clone(),
            sshpass: self.l4t.join("aperture-fake/bin/sshpass"),
        }
    }

    fn plan(&self, targets: &[&str]) -> Plan {
        Plan {
            targets: targets
                .iter()
                .map(|t| JetsonTarget::parse(t).unwrap().unwrap())
                .collect(),
            bsp: None,
            board_config: None,
            board_env: OFFLINE
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            initrd_timeout: Duration::from_secs(30),
            work: self.work.clone(),
            force: false,
        }
    }

    fn open(&self) -> VerifiedImage {
        VerifiedImage::open(&self.image, None, NOW).unwrap()
    }

    fn flash(&self, plan: &Plan) -> (aperture_flash::Result<Vec<ModuleOutcome>>, Notes) {
        let notes: Notes = Arc::new(Mutex::new(Vec::new()));
        let n = notes.clone();
        let factory = move |j: &aperture_flash::jetson::RecoveryJetson| -> Box<dyn Progress> {
            Box::new(Recorder {
                port: j.usb.port.clone(),
                notes: n.clone(),
            })
        };
        (
            flash_jetsons(&self.open(), plan, &self.host(), &factory),
            notes,
        )
    }

    /// Every recorded call of a fake tool, in order.
    fn calls(&self) -> Vec<Call> {
        let Ok(text) = fs::read_to_string(self.state.join("calls.log")) else {
            return Vec::new();
        };
        text.lines().map(Call::parse).collect()
    }

    /// The fake eMMC of the module at `port`.
    fn emmc(&self, port: &str) -> PathBuf {
        let name = fs::read_to_string(self.state.join("targets").join(port).join("emmc")).unwrap();
        self.dev.join(name.trim())
    }
}

type Notes = Arc<Mutex<Vec<(String, String)>>>;

/// Records each module's notes and stages.
struct Recorder {
    port: String,
    notes: Notes,
}

impl Progress for Recorder {
    fn stage(&self, stage: Stage, _: u64) {
        self.notes
            .lock()
            .unwrap()
            .push((self.port.clone(), format!("stage {}", stage.name())));
    }
    fn advance(&self, _: u64) {}
    fn note(&self, what: &str) {
        self.notes
            .lock()
            .unwrap()
            .push((self.port.clone(), what.to_string()));
    }
}

/// One line of calls.log.
#[derive(Debug)]
struct Call {
    tool: String,
    cwd: String,
    env: Vec<String>,
    args: Vec<String>,
}

impl Call {
    fn parse(line: &str) -> Call {
        let mut fields = line.split('\t');
        let tool = fields.next().unwrap().to_string();
        let mut call = Call {
            tool,
            cwd: String::new(),
            env: Vec::new(),
            args: Vec::new(),
        };
        for f in fields {
            if let Some(v) = f.strip_prefix("cwd=") {
                call.cwd = v.to_string();
            } else if let Some(v) = f.strip_prefix("env:") {
                call.env.push(v.to_string());
            } else if let Some(v) = f.strip_prefix("arg=") {
                call.args.push(v.to_string());
            }
        }
        call
    }

    fn arg_after(&self, flag: &str) -> Option<&str> {
        let i = self.args.iter().position(|a| a == flag)?;
        self.args.get(i + 1).map(String::as_str)
    }
}

/// The target holds `disk.img` on every range the bmap maps, and zeros elsewhere in the
/// image's span.
fn assert_holds_image(target: &Path, image_dir: &Path) {
    let image = fs::read(image_dir.join("disk.img")).unwrap();
    let file = fs::File::open(target).unwrap();
    let bmap = VerifiedImage::open(image_dir, None, NOW)
        .unwrap()
        .bmap()
        .clone();
    for r in &bmap.ranges {
        let (start, len) = bmap.byte_span(r);
        let mut got = vec![0u8; len as usize];
        file.read_exact_at(&mut got, start).unwrap();
        assert!(
            got == image[start as usize..(start + len) as usize],
            "{} differs from disk.img in mapped range {}-{}",
            target.display(),
            r.first,
            r.last
        );
    }
    let mut all = vec![0u8; image.len()];
    file.read_exact_at(&mut all, 0).unwrap();
    assert!(all == image, "{} differs from disk.img", target.display());
}

/// What QSPI must hold: the build folder's (signed) firmware, one copy per QSPI partition
/// that names a file, in layout order (the fake writes partitions back to back).
fn expected_qspi(image_dir: &Path) -> Vec<u8> {
    QSPI_PARTITIONS
        .iter()
        .filter_map(|(_, f)| *f)
        .flat_map(|f| fs::read(image_dir.join(f)).unwrap())
        .collect()
}

#[test]
fn two_modules_flashed_in_parallel_end_to_end_against_the_fakes() {
    let Some(rack) = Rack::new("two_modules_flashed_in_parallel", &[]) else {
        return;
    };
    rack.recovery("1-2", ORIN, "1424321000001");
    rack.recovery("1-4", ORIN, "1424321000002");
    let (outcomes, notes) = rack.flash(&rack.plan(&["jetson:all"]));
    let outcomes = outcomes.unwrap();

    let seen: Vec<(&str, Option<u32>, bool)> = outcomes
        .iter()
        .map(|o| (o.port.as_str(), o.instance, o.ok()))
        .collect();
    assert_eq!(
        seen,
        [("1-2", Some(0), true), ("1-4", Some(1), true)],
        "{outcomes:#?}"
    );

    let l4t = fs::canonicalize(&rack.l4t).unwrap().display().to_string();
    let calls = rack.calls();
    // Prepare once, first, from the tree, with the build's QSPI device and offline board.
    let prepare = &calls[0];
    assert_eq!(prepare.tool, "l4t_initrd_flash.sh");
    assert_eq!(prepare.cwd, l4t);
    let layout = rack.work.join("boot-device-layout.xml");
    assert_eq!(
        prepare.args,
        [
            "--no-flash",
            "--massflash",
            "2",
            "-p",
            &format!("-c {} --no-systemimg", layout.display()),
            "jetson-agx-orin-devkit",
            "mmcblk0p1"
        ]
    );
    assert_eq!(
        prepare.env,
        ["BOARDID=3701", "FAB=TS4", "BOARDSKU=0000", "BOARDREV=A.0"]
    );
    assert_eq!(
        calls
            .iter()
            .filter(|c| c.tool == "l4t_initrd_flash.sh")
            .count(),
        1
    );
    // The package NVIDIA's tool made holds the build's QSPI device and nothing for the eMMC.
    let package = fs::read_to_string(
        rack.l4t
            .join("tools/kernel_flash/images/internal/flash.xml"),
    )
    .unwrap();
    assert!(package.contains("<device type=\"spi\""), "{package}");
    assert!(!package.contains("sdmmc_user"), "{package}");

    // One boot per module: its own USB instance and device instance, stopping in the initrd.
    let mut boots: Vec<&Call> = calls
        .iter()
        .filter(|c| c.tool == "l4t_initrd_flash_internal.sh")
        .collect();
    boots.sort_by_key(|c| c.arg_after("--usb-instance").map(str::to_string));
    assert_eq!(boots.len(), 2);
    for (boot, (port, instance)) in boots.iter().zip([("1-2", "0"), ("1-4", "1")]) {
        assert_eq!(boot.cwd, l4t);
        assert_eq!(
            boot.args,
            [
                "--initrd",
                "--usb-instance",
                port,
                "--device-instance",
                instance,
                "--flash-only",
                "jetson-agx-orin-devkit",
                "mmcblk0p1"
            ]
        );
    }

    // On each initrd, over its own link: QSPI, then reboot.
    for link in ["usb0", "usb1"] {
        let to: Vec<&str> = calls
            .iter()
            .filter(|c| c.tool == "sshpass")
            .filter(|c| c.args.iter().any(|a| a == &format!("root@fe80::1%{link}")))
            .map(|c| c.args.last().unwrap().as_str())
            .collect();
        assert_eq!(
            to,
            [
                "USER=root /qspi/l4t_flash_from_kernel.sh --no-reboot --qspi-only",
                "sync; nohup reboot &>/dev/null & exit"
            ],
            "{link}"
        );
    }

    for o in &outcomes {
        let report = o.result.as_ref().unwrap();
        assert_holds_image(&rack.emmc(&o.port), &rack.image);
        assert_eq!(report.write.unmapped, Unmapped::Zeroed);
        assert_eq!(report.disk, rack.emmc(&o.port).display().to_string());
        assert_eq!(
            report.initrd_serial, o.serial,
            "the fake gadget reuses the APX serial"
        );
        assert_eq!(report.firmware, common::FIRMWARE);
        assert_eq!(report.reboot_error, None);
        let target = rack.state.join("targets").join(&o.port);
        assert_eq!(
            fs::read(target.join("mtd0")).unwrap(),
            expected_qspi(&rack.image)
        );
        assert!(target.join("rebooted").exists());
    }
    // Each module went through its steps in order, on its own progress.
    for port in ["1-2", "1-4"] {
        let steps: Vec<String> = notes
            .lock()
            .unwrap()
            .iter()
            .filter(|(p, _)| p == port)
            .map(|(_, n)| n.clone())
            .collect();
        let at = |s: &str| {
            steps
                .iter()
                .position(|n| n == s)
                .unwrap_or_else(|| panic!("{s}: {steps:?}"))
        };
        assert!(at("booting NVIDIA's flashing initrd") < at("waiting for its eMMC"));
        assert!(at("waiting for its eMMC") < at("stage writing"));
        assert!(at("stage done") < at("writing the boot firmware (QSPI)"));
        assert!(at("writing the boot firmware (QSPI)") < at("rebooting"));
    }
    // Every tool's output is in the module's log.
    let log = fs::read_to_string(rack.work.join("1-4.log")).unwrap();
    assert!(log.contains("Device has booted into initrd"), "{log}");
    assert!(log.contains("Successfully flash the qspi"), "{log}");
}

#[test]
fn a_module_whose_initrd_never_exposes_its_disk_times_out_while_the_other_is_flashed() {
    let Some(rack) = Rack::new("never_exposes", &["1-4"]) else {
        return;
    };
    rack.recovery("1-2", ORIN, "1424321000001");
    rack.recovery("1-4", ORIN, "1424321000002");
    let mut plan = rack.plan(&["jetson:usb:1-2", "jetson:usb:1-4"]);
    plan.initrd_timeout = Duration::from_secs(2);
    let (outcomes, _) = rack.flash(&plan);
    let outcomes = outcomes.unwrap();
    assert_eq!(outcomes.len(), 2);

    let good = &outcomes[0];
    assert_eq!(good.port, "1-2");
    assert!(good.ok(), "{good:#?}");
    assert_holds_image(&rack.emmc("1-2"), &rack.image);

    let bad = &outcomes[1];
    assert_eq!(bad.port, "1-4");
    let failure = bad.result.as_ref().unwrap_err();
    assert_eq!(failure.step, Step::WaitDisk);
    assert!(matches!(*failure.error, FlashError::Discovery(_)));
    let text = failure.to_string();
    for part in [
        "wait for the eMMC failed",
        "device instance 1",
        "did not expose its eMMC within 2 s",
        "SCSI vendor `mmc0` and model `1`",
        "fix: ",
        "run with --to jetson:usb:1-4",
        "1-4.log",
    ] {
        assert!(text.contains(part), "{part:?} missing from: {text}");
    }
    assert!(bad.elapsed >= Duration::from_secs(2));
    // Nothing was sent to the module that never came up.
    let links: BTreeSet<String> = rack
        .calls()
        .iter()
        .filter(|c| c.tool == "sshpass")
        .filter_map(|c| c.args.iter().find(|a| a.starts_with("root@")).cloned())
        .collect();
    assert_eq!(links, BTreeSet::from(["root@fe80::1%usb0".to_string()]));
}

#[test]
fn tampered_folders_and_other_trees_are_refused_before_any_tool_runs() {
    type Tamper = fn(&Rack);
    let cases: [(&str, Tamper); 4] = [
        ("disk.img.zst", |r| {
            flip_byte(&r.image.join("disk.img.zst"), 4096)
        }),
        ("mb2_t234.bin does not match the signed manifest", |r| {
            flip_byte(&r.image.join("mb2_t234.bin"), 10)
        }),
        ("flash_layout.xml does not match the signed manifest", |r| {
            let p = r.image.join("flash_layout.xml");
            let text = fs::read_to_string(&p).unwrap();
            fs::write(p, text.replace("uefi_jetson.bin", "tos-optee_t234.img")).unwrap();
        }),
        ("is not the mb1_t234_prod.bin this build signed", |r| {
            flip_byte(&r.l4t.join("bootloader/mb1_t234_prod.bin"), 100)
        }),
    ];
    for (expected, tamper) in cases {
        let Some(rack) = Rack::new("tampered_folders", &[]) else {
            return;
        };
        rack.recovery("1-2", ORIN, "1424321000001");
        tamper(&rack);
        let text = match VerifiedImage::open(&rack.image, None, NOW) {
            Err(e) => aperture_flash::error::chain(&e),
            Ok(_) => {
                let (result, _) = rack.flash(&rack.plan(&["jetson:all"]));
                let e = result.unwrap_err();
                assert!(e.is_refusal(), "{e}");
                e.to_string()
            }
        };
        assert!(text.contains(expected), "{expected:?} missing from: {text}");
        assert!(
            rack.calls().is_empty(),
            "{expected}: a tool ran: {:?}",
            rack.calls()
        );
        assert_eq!(fs::read_dir(&rack.dev).unwrap().count(), 0, "{expected}");
    }
}

#[test]
fn preflight_names_every_problem_at_once_and_runs_nothing() {
    let Some(rack) = Rack::new("preflight_names_every_problem", &[]) else {
        return;
    };
    rack.recovery("1-2", ORIN, "1424321000001");
    rack.recovery("1-4", ORIN, "1424321000002");
    let mut plan = rack.plan(&["jetson:usb:1-2", "jetson:usb:9-9"]);
    plan.board_env.clear();
    plan.bsp = Some(rack.l4t.join("no-such-tree"));
    let host = JetsonHost {
        sshpass: rack.l4t.join("no-such-sshpass"),
        ..rack.host()
    };
    let result = flash_jetsons(&rack.open(), &plan, &host, &|_: &_| -> Box<dyn Progress> {
        Box::new(aperture_flash::NoProgress)
    });
    let Err(FlashError::Preflight { problems }) = result else {
        panic!("{result:?}");
    };
    let all = problems.join("\n");
    for part in [
        "--bsp",
        "no-such-sshpass",
        "jetson:usb:9-9: no Jetson in recovery mode at that USB port",
        "BOARDID, FAB, BOARDSKU, BOARDREV missing; environment or --board-id",
    ] {
        assert!(all.contains(part), "{part:?} missing from:\n{all}");
    }
    assert_eq!(problems.len(), 4, "{all}");
    assert!(rack.calls().is_empty());
    assert!(!rack.work.exists(), "a refused run leaves nothing behind");
}

#[test]
fn a_module_of_another_board_is_refused_alone() {
    let Some(rack) = Rack::new("another_board", &[]) else {
        return;
    };
    rack.recovery("1-2", ORIN, "1424321000001");
    rack.recovery("2-1", XAVIER, "1421000000009");
    let (outcomes, _) = rack.flash(&rack.plan(&["jetson:all"]));
    let outcomes = outcomes.unwrap();
    let seen: Vec<(&str, bool)> = outcomes.iter().map(|o| (o.port.as_str(), o.ok())).collect();
    assert_eq!(seen, [("1-2", true), ("2-1", false)]);
    let failure = outcomes[1].result.as_ref().unwrap_err();
    assert_eq!(failure.step, Step::Check);
    assert!(
        failure
            .to_string()
            .contains("the image is for jetson-orin-agx"),
        "{failure}"
    );
    // The Xavier was never booted.
    assert!(rack
        .calls()
        .iter()
        .all(|c| c.arg_after("--usb-instance") != Some("2-1")));
}

#[test]
fn a_running_initrd_is_found_by_instance_and_its_emmc_by_serial() {
    let Some(rack) = Rack::new("running_initrd", &[]) else {
        return;
    };
    rack.recovery("3-1", ORIN, "1424321000007");
    let layout = rack.work.join("layout.xml");
    fs::create_dir_all(&rack.work).unwrap();
    let whole = fs::read_to_string(rack.image.join("flash_layout.xml")).unwrap();
    let boot = aperture_flash::l4t::boot_layout("flash_layout.xml", &whole).unwrap();
    fs::write(&layout, boot.xml).unwrap();
    let kf = rack.l4t.join("tools/kernel_flash");
    Cmd::new(kf.join("l4t_initrd_flash.sh"))
        .args(["--no-flash", "--massflash", "3", "-p"])
        .arg(format!("-c {} --no-systemimg", layout.display()))
        .args(["jetson-agx-orin-devkit", "mmcblk0p1"])
        .run()
        .unwrap();
    Cmd::new(kf.join("l4t_initrd_flash_internal.sh"))
        .args([
            "--initrd",
            "--usb-instance",
            "3-1",
            "--device-instance",
            "2",
        ])
        .args(["--flash-only", "jetson-agx-orin-devkit", "mmcblk0p1"])
        .run()
        .unwrap();
    let found = scan(&rack.sysfs).unwrap();
    assert!(found.recovery.is_empty());
    // NVIDIA's initrd exposes the eMMC and its two boot partitions under one serial.
    let luns: Vec<(Option<&str>, Option<u32>)> = found
        .disks
        .iter()
        .map(|d| (d.vendor.as_deref(), d.instance()))
        .collect();
    assert_eq!(luns.len(), 3, "{luns:?}");
    let emmc = found.flashing_disk(2).unwrap();
    assert_eq!(
        (emmc.vendor.as_deref(), emmc.size),
        (Some("mmc0"), 131_072 * 512)
    );
    assert_eq!(found.flashing_disk(0), None);
    // `--to serial:` picks the eMMC user area, not a boot partition.
    assert_eq!(found.disk_by_serial("1424321000007").unwrap(), emmc);
    assert_eq!(found.link_on("3-1").unwrap().name, "usb2");
    assert_eq!(found.instances_in_use(), [2]);
}
