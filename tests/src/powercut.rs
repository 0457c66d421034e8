//! Power cuts in a real (QEMU) appliance: the plug is pulled (QEMU killed) at a chosen instant
//! of the first boot, of an install, or of a factory reset, and the next boots must show a
//! verified slot running, the encrypted data opening with its canary intact (unless a level 3
//! reset was under way, which must then finish its wipe), and the interrupted work completed.
//!
//! An [`Appliance`] is one disk living through a chain of cuts: the boot after a cut both checks
//! the recovery and starts the next operation, so a cut costs about two boots. The instants are
//! a console line (the program's own log of where it is) plus a delay.

use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use aperture_image::recipe::Arch;

use crate::http::FileServer;
use crate::scenario::{cut_after, line_of, random_hex, Scenario, Script};
use crate::BOOT_TIMEOUT;

/// What was under way when the power went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// The first boot: formatting and sealing config and data.
    FirstBoot,
    /// `aperture-update install` of the next version.
    Install,
    /// `aperture-reset --level 2`.
    Reset2,
    /// `aperture-reset --level 3`.
    Reset3,
}

/// One power cut: during `op`, `after` the console showed `marker`.
#[derive(Debug, Clone)]
pub struct Cut {
    /// What was under way.
    pub op: Op,
    /// The console line the delay counts from.
    pub marker: &'static str,
    /// How long after it the power goes.
    pub after: Duration,
}

impl Cut {
    /// A cut during `op`, `after_ms` milliseconds after `marker`.
    pub fn new(op: Op, marker: &'static str, after_ms: u64) -> Cut {
        Cut {
            op,
            marker,
            after: Duration::from_millis(after_ms),
        }
    }
}

/// What happened after one cut, for the table in the test's output.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// The cut.
    pub cut: Cut,
    /// Boots it took to recover and finish the interrupted work.
    pub boots: usize,
    /// What the recovery showed.
    pub result: String,
}

/// Markers the device programs print (their log lines on the console).
pub mod markers {
    /// aperture-storage starts formatting config on the first boot.
    pub const FORMAT_CONFIG: &str = "first boot of config: formatting";
    /// aperture-storage starts formatting data on the first boot.
    pub const FORMAT_DATA: &str = "first boot of data: formatting";
    /// aperture-update has journaled the install and starts writing the target slot.
    pub const INSTALLING: &str = "installing target";
    /// The rootfs is streamed; the read-back starts.
    pub const STREAMED: &str = "streamed ";
    /// The read-back passed; records and arming follow.
    pub const READ_BACK: &str = "back: dm-verity and";
    /// A level 2 reset is journaled and starts.
    pub const RESET2: &str = "reset level 2:";
    /// A level 3 reset is journaled and starts.
    pub const RESET3: &str = "reset level 3:";
    /// A journaled reset resumes at boot.
    pub const RESUMING: &str = "resuming reset level";
}

/// One appliance (a disk, its UEFI variables and TPM) living through power cuts, with a test
/// server offering the next version's bundle.
pub struct Appliance {
    /// Its scenario (folder, disk, boots).
    pub sc: Scenario,
    server: FileServer,
    canary: String,
    /// Versions: what the factory image is, and what the bundle on the server installs.
    base_version: String,
    next_version: String,
    /// Whether the first boot's formatting is done (canary written).
    provisioned: bool,
    /// Every cut so far.
    pub outcomes: Vec<Outcome>,
}

impl Appliance {
    /// A fresh appliance `name` flashed with `disk_img` (version `base_version`, whose factory
    /// image is that version too), offering `bundle` (version `next_version`) on the server.
    pub fn new(
        name: &str,
        disk_img: &std::path::Path,
        base_version: &str,
        bundle: &std::path::Path,
        next_version: &str,
    ) -> Result<Appliance> {
        let sc = Scenario::new(name, disk_img, Arch::Amd64)?;
        let www = sc.dir.join("www");
        std::fs::create_dir_all(&www)?;
        std::fs::copy(bundle, www.join("next.bundle")).context("copying the bundle")?;
        let server = FileServer::start_for_guests(&www)?;
        Ok(Appliance {
            sc,
            server,
            canary: format!("aperture-canary-{}", random_hex(16)),
            base_version: base_version.into(),
            next_version: next_version.into(),
            provisioned: false,
            outcomes: Vec::new(),
        })
    }

    fn check_script(&self) -> Result<Script> {
        Script::new()
            .piece("storage-show", &[])?
            .piece("canary-check", &[("CANARY", &self.canary)])
    }

    /// The power goes during `cut`; the boots after it recover and finish what was cut off.
    pub fn cut(&mut self, cut: Cut) -> Result<&Outcome> {
        let t = Instant::now();
        let boots_before = self.sc.boots();
        let script = match cut.op {
            Op::FirstBoot => {
                ensure!(!self.provisioned, "a first-boot cut needs a fresh disk");
                None
            }
            Op::Install => Some(
                self.check_script()?
                    .piece("install", &[("URL", &self.server.guest_url("next.bundle"))])?
                    .piece("reboot", &[])?,
            ),
            Op::Reset2 | Op::Reset3 => Some(self.check_script()?.piece(
                "reset",
                &[("LEVEL", if cut.op == Op::Reset2 { "2" } else { "3" })],
            )?),
        };
        let what = format!("cut-{:?}", cut.op).to_lowercase();
        let mut vm = self.sc.boot(&what, script.as_ref())?;
        if cut.op != Op::FirstBoot {
            let status = vm.wait_for("aperture-agent: product=", BOOT_TIMEOUT)?;
            ensure!(status.contains("verity=yes"), "before the cut: {status}");
            let kept = vm.wait_for("APERTURE-CANARY-", BOOT_TIMEOUT)?;
            ensure!(
                kept.contains("KEPT"),
                "the data was lost before this cut: {kept}"
            );
        }
        // A reset writes slots for minutes under emulation: its markers may come late.
        let console = cut_after(&mut vm, cut.marker, cut.after, Duration::from_secs(900))?;
        eprintln!(
            "POWER CUT during {:?}, {:.1} s after `{}` (boot {})",
            cut.op,
            cut.after.as_secs_f64(),
            cut.marker,
            self.sc.boots()
        );
        let _ = console;
        let result = match cut.op {
            Op::FirstBoot => self.recover_first_boot()?,
            Op::Install => self.recover_install()?,
            Op::Reset2 => self.recover_reset(false)?,
            Op::Reset3 => self.recover_reset(true)?,
        };
        let outcome = Outcome {
            cut,
            boots: self.sc.boots() - boots_before,
            result: format!("{result} ({:.0?})", t.elapsed()),
        };
        eprintln!("RECOVERED: {}", outcome.result);
        self.outcomes.push(outcome);
        Ok(self.outcomes.last().expect("just pushed"))
    }

    /// The boot after a cut in the first boot finishes formatting; the canary goes onto /data.
    fn recover_first_boot(&mut self) -> Result<String> {
        let s = Script::new()
            .piece("storage-show", &[])?
            .piece("canary-write", &[("CANARY", &self.canary)])?
            .piece("poweroff", &[])?;
        let mut vm = self.sc.boot("after-first-boot-cut", Some(&s))?;
        let status = vm.wait_for("aperture-agent: product=", BOOT_TIMEOUT)?;
        ensure!(status.contains("verity=yes"), "{status}");
        for v in ["config", "data"] {
            let l = vm.wait_for(&format!("APERTURE-CRYPT-{v} "), BOOT_TIMEOUT)?;
            ensure!(l.contains("is active") && l.contains("type: LUKS2"), "{l}");
        }
        let keys = vm.wait_for("APERTURE-KEYS ", BOOT_TIMEOUT)?;
        ensure!(keys.contains("tpm2"), "{keys}");
        vm.wait_for("APERTURE-WROTE", BOOT_TIMEOUT)?;
        vm.wait_exit(BOOT_TIMEOUT)?;
        self.provisioned = true;
        Ok(format!(
            "{}; config and data LUKS2, sealed to the TPM; canary written",
            slot_of(&status)
        ))
    }

    /// The boots after a cut in an install: a verified slot runs with the data intact, the
    /// install is finished (by `aperture-update-resume.service`, or it was already armed), and
    /// the new version boots and is committed.
    fn recover_install(&mut self) -> Result<String> {
        let s = self
            .check_script()?
            .piece("resume", &[])?
            .piece("status", &[])?
            .line(&format!(
                "if grep -q '\"version\": *\"{}\"' /etc/aperture/build.json; then echo APERTURE-ON-NEW; systemctl poweroff; else systemctl reboot; fi",
                self.next_version
            ));
        let mut first = None;
        for _ in 0..3 {
            let mut vm = self.sc.boot("after-install-cut", Some(&s))?;
            let status = vm.wait_for("aperture-agent: product=", BOOT_TIMEOUT)?;
            ensure!(status.contains("verity=yes"), "{status}");
            first.get_or_insert_with(|| slot_of(&status));
            let kept = vm.wait_for("APERTURE-CANARY-", BOOT_TIMEOUT)?;
            ensure!(kept.contains("KEPT"), "the data did not survive: {kept}");
            let resumed = vm.wait_for("APERTURE-RESUMED", Duration::from_secs(1200))?;
            ensure!(
                resumed.ends_with(" 0"),
                "finishing the install failed: {resumed}"
            );
            let st = crate::json_on_line(&vm.wait_for("APERTURE-STATUS", BOOT_TIMEOUT)?)?;
            vm.wait_exit(Duration::from_secs(300))?;
            if vm.console().contains("APERTURE-ON-NEW") {
                ensure!(
                    st["committed"] == st["booted"],
                    "the new version runs but is not committed: {st}"
                );
                // Back to the factory version for the next install: a level 2 reset does it
                // (and is itself cut in most chains); otherwise the next install is refused as
                // not newer, which the chain avoids.
                return Ok(format!(
                    "first boot after the cut: {}; data kept; install finished, {} committed on slot {}",
                    first.unwrap_or_default(),
                    self.next_version,
                    st["booted"]
                ));
            }
        }
        bail!("{} never booted after three boots", self.next_version)
    }

    /// The boots after a cut in a reset: the reset resumes and completes; level 2 keeps the
    /// data, level 3 leaves a new empty data volume (and a new canary is written on it).
    fn recover_reset(&mut self, level3: bool) -> Result<String> {
        let mut s = Script::new()
            .piece("reset-wait", &[])?
            .piece("storage-show", &[])?;
        s = if level3 {
            s.piece("canary-gone", &[])?
        } else {
            s.piece("canary-check", &[("CANARY", &self.canary)])?
        };
        let s = s.piece("final", &[])?;
        let (console, boots) = self.sc.boot_until(
            "after-reset-cut",
            &s,
            "APERTURE-FINAL",
            6,
            Duration::from_secs(1500),
        )?;
        let status = line_of(&console, "aperture-agent: product=")?;
        ensure!(status.contains("verity=yes"), "{status}");
        ensure!(
            status.contains(&format!("version={}", self.base_version)),
            "the factory version must run after the reset: {status}"
        );
        let canary = line_of(&console, "APERTURE-CANARY-")?;
        if level3 {
            ensure!(canary.contains("GONE"), "level 3 kept the data: {canary}");
            ensure!(
                !crate::scenario::file_contains(&self.sc.disk, &self.canary)?,
                "the canary survived level 3 somewhere on the disk"
            );
            // The next cuts need data to keep: a new canary on the new volume.
            self.canary = format!("aperture-canary-{}", random_hex(16));
            let w = Script::new()
                .piece("canary-write", &[("CANARY", &self.canary)])?
                .piece("poweroff", &[])?;
            let mut vm = self.sc.boot("new-canary", Some(&w))?;
            vm.wait_for("APERTURE-WROTE", BOOT_TIMEOUT)?;
            vm.wait_exit(BOOT_TIMEOUT)?;
        } else {
            ensure!(canary.contains("KEPT"), "level 2 lost the data: {canary}");
        }
        Ok(format!(
            "reset level {} finished {} boots later; {}; {}",
            if level3 { 3 } else { 2 },
            boots,
            slot_of(&status),
            if level3 {
                "no canary anywhere on the disk"
            } else {
                "data kept"
            }
        ))
    }
}

/// `slot a, 1.0.0, verity` from a status line.
fn slot_of(status: &str) -> String {
    let field = |k: &str| {
        status
            .split_whitespace()
            .find_map(|w| w.strip_prefix(k))
            .unwrap_or("?")
            .to_string()
    };
    format!("slot {} {} verified", field("slot="), field("version="))
}

/// Print the table of cuts and outcomes (for the closing note).
pub fn print_table(outcomes: &[Outcome]) {
    eprintln!("\n| # | during | instant | boots to recover | outcome |");
    eprintln!("|---|---|---|---|---|");
    for (i, o) in outcomes.iter().enumerate() {
        eprintln!(
            "| {} | {:?} | {:.1} s after `{}` | {} | {} |",
            i + 1,
            o.cut.op,
            o.cut.after.as_secs_f64(),
            o.cut.marker,
            o.boots,
            o.result
        );
    }
}
