//! Flashing Jetsons in recovery mode end to end (`flash --to jetson:all`,
//! `--to jetson:usb:<bus-port>`): for every module, in parallel, NVIDIA's tools boot it into
//! its flashing initrd, our verified writer writes `disk.img` to the eMMC that initrd exposes,
//! and NVIDIA's tools write the boot firmware the build prepared to QSPI. The NVIDIA commands
//! and their sources are in [`crate::l4t`].
//!
//! The order, per run:
//!
//! 1. **Preflight** (`preflight.rs`), before any tool runs: the build's `flash_layout.xml`
//!    and every firmware file its QSPI device names match the signed manifest (the build
//!    folder itself was verified by [`crate::VerifiedImage::open`]); the BSP tree is the one
//!    the build used (same firmware bytes); NVIDIA's scripts, the board configuration and
//!    `sshpass` are there; we run as root (unless the tree is the synthetic one, whose tools
//!    are fakes); each named module is in recovery mode and is the image's board; the board
//!    is given for NVIDIA's offline mode (`BOARDID`, `FAB`, `BOARDSKU`, `BOARDREV`), so that
//!    preparing never talks to a module. Every problem is reported at once, each with its fix.
//! 2. **Prepare**, once: NVIDIA's flash package and one flashing initrd per module.
//! 3. **Per module, on its own thread**: boot into the initrd (device instance `i`), wait
//!    (bounded) for its eMMC LUN and network link to appear, write and read back `disk.img`
//!    (bmap, partition table last; the same safety checks as any block device), write QSPI
//!    from inside the initrd, reboot. A failure stops that module only and names the step,
//!    the cause, the fix and the module's log.

mod module;
mod preflight;

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::error::{chain, FlashError, Result};
use crate::image::VerifiedImage;
use crate::jetson::{JetsonModule, RecoveryJetson};
use crate::l4t::Nvidia;
use crate::writer::{FlashReport, Progress};

/// A `--to` value naming Jetsons in recovery mode.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum JetsonTarget {
    /// `jetson:all`: every Jetson in recovery mode.
    All,
    /// `jetson:usb:<bus-port>`: the Jetson in recovery mode at that USB port (`1-2.3`).
    Usb(String),
}

impl JetsonTarget {
    /// What every Jetson target starts with.
    pub const PREFIX: &'static str = "jetson:";

    /// `jetson:all` or `jetson:usb:<bus-port>`; `None` when `text` is not a Jetson target.
    pub fn parse(text: &str) -> Option<Result<JetsonTarget>> {
        let rest = text.strip_prefix(Self::PREFIX)?;
        if rest == "all" {
            return Some(Ok(JetsonTarget::All));
        }
        Some(match rest.strip_prefix("usb:") {
            Some(port) if is_port(port) => Ok(JetsonTarget::Usb(port.to_string())),
            _ => Err(FlashError::refused(
                text,
                "expected jetson:all or jetson:usb:<bus-port> such as jetson:usb:1-2.3; \
                 `cargo xtask flash --list` shows the ports of the Jetsons in recovery mode",
            )),
        })
    }
}

impl fmt::Display for JetsonTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            JetsonTarget::All => write!(f, "jetson:all"),
            JetsonTarget::Usb(port) => write!(f, "jetson:usb:{port}"),
        }
    }
}

/// A USB bus-port path as sysfs names devices: `1-2`, `3-1.4.2`.
fn is_port(text: &str) -> bool {
    let Some((bus, ports)) = text.split_once('-') else {
        return false;
    };
    let number = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    number(bus) && ports.split('.').all(number)
}

/// Where the flasher meets the machine: `/sys`, `/dev` and `sshpass` on `PATH` for real;
/// a fixture tree and the synthetic BSP's fakes in tests.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JetsonHost {
    /// The sysfs root.
    pub sysfs: PathBuf,
    /// Where device nodes are: an exposed disk `sdb` is `<dev>/sdb`. Outside `/dev` (a test
    /// fixture) a regular file stands in for the disk.
    pub dev: PathBuf,
    /// The `sshpass` NVIDIA's tools use to reach a flashing initrd (`tools/
    /// l4t_flash_prerequisites.sh` installs it): a name looked up on `PATH`, or a path.
    pub sshpass: PathBuf,
}

impl Default for JetsonHost {
    fn default() -> Self {
        JetsonHost {
            sysfs: PathBuf::from("/sys"),
            dev: PathBuf::from("/dev"),
            sshpass: PathBuf::from("sshpass"),
        }
    }
}

/// What to flash, and how.
#[derive(Clone, Debug)]
pub struct Plan {
    /// The modules.
    pub targets: Vec<JetsonTarget>,
    /// The BSP (`--bsp`): a `Linux_for_Tegra` folder or the `.tbz2` the build took; `None`:
    /// the tree `build-report.json` records.
    pub bsp: Option<PathBuf>,
    /// NVIDIA's board configuration instead of the board's default (a custom carrier's).
    pub board_config: Option<String>,
    /// `BOARDID`, `FAB`, `BOARDSKU`, `BOARDREV` for NVIDIA's offline mode.
    pub board_env: Vec<(String, String)>,
    /// How long a booted initrd may take to expose its eMMC and network link.
    pub initrd_timeout: Duration,
    /// Folder for the logs of NVIDIA's tools (one per module, one for the shared step) and
    /// the boot-device layout handed to them.
    pub work: PathBuf,
    /// Allow an exposed disk the safety checks do not count as removable.
    pub force: bool,
}

/// A step of one module's flash, for reports.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    /// The checks before anything runs (module family, recovery mode).
    Check,
    /// NVIDIA's flash package and flashing initrds, shared by every module.
    Prepare,
    /// Booting the module into its flashing initrd.
    BootInitrd,
    /// Waiting for the initrd to expose the eMMC and its network link.
    WaitDisk,
    /// Writing `disk.img` and reading it back.
    WriteDisk,
    /// Writing the boot firmware to QSPI.
    BootFirmware,
}

impl Step {
    /// The step in a few words.
    pub fn name(self) -> &'static str {
        match self {
            Step::Check => "check",
            Step::Prepare => "prepare NVIDIA's flash package",
            Step::BootInitrd => "boot the flashing initrd",
            Step::WaitDisk => "wait for the eMMC",
            Step::WriteDisk => "write disk.img",
            Step::BootFirmware => "write the boot firmware (QSPI)",
        }
    }
}

/// A module written, read back and given its boot firmware.
#[derive(Clone, Debug)]
pub struct ModuleReport {
    /// The eMMC its initrd exposed (`/dev/sdc`).
    pub disk: String,
    /// The USB serial of its initrd (the module's serial number).
    pub initrd_serial: Option<String>,
    /// The write of `disk.img`, every range read back.
    pub write: FlashReport,
    /// The firmware files written to QSPI, in layout order.
    pub firmware: Vec<String>,
    /// Why the module could not be told to reboot, if it could not (it is flashed; power
    /// cycle it).
    pub reboot_error: Option<String>,
}

/// Why one module was not flashed.
#[derive(Debug)]
pub struct ModuleFailure {
    /// The step that failed.
    pub step: Step,
    /// Why.
    pub error: Box<FlashError>,
    /// What to do about it.
    pub fix: String,
    /// The module's log of NVIDIA's tools, when it has one.
    pub log: Option<PathBuf>,
}

impl fmt::Display for ModuleFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} failed: {}; fix: {}",
            self.step.name(),
            chain(&self.error),
            self.fix
        )?;
        if let Some(log) = &self.log {
            write!(f, " (log: {})", log.display())?;
        }
        Ok(())
    }
}

/// How one module ended.
#[derive(Debug)]
pub struct ModuleOutcome {
    /// The module family.
    pub module: JetsonModule,
    /// Its USB port in recovery mode.
    pub port: String,
    /// Its USB serial in recovery mode.
    pub serial: Option<String>,
    /// The device instance of its flashing initrd, once given one.
    pub instance: Option<u32>,
    /// Its report, or why it failed.
    pub result: std::result::Result<ModuleReport, ModuleFailure>,
    /// Wall time for this module (the shared prepare step included).
    pub elapsed: Duration,
}

impl ModuleOutcome {
    /// Whether the module was flashed.
    pub fn ok(&self) -> bool {
        self.result.is_ok()
    }

    /// `Jetson AGX Orin at USB 1-2`.
    pub fn label(&self) -> String {
        format!("{} at USB {}", self.module.name(), self.port)
    }
}

/// Progress for one module: made once per module before anything runs.
pub type ProgressFor<'a> = dyn Fn(&RecoveryJetson) -> Box<dyn Progress> + Sync + 'a;

/// Flashes `image` to the Jetsons `plan` names (see the module documentation). An `Err` is a
/// preflight refusal: nothing was run. Otherwise one outcome per module, in USB port order,
/// each flashed or failed on its own.
pub fn flash_jetsons(
    image: &VerifiedImage,
    plan: &Plan,
    host: &JetsonHost,
    progress: &ProgressFor<'_>,
) -> Result<Vec<ModuleOutcome>> {
    let started = Instant::now();
    let ready = preflight::check(image, plan, host)?;
    let mut outcomes = ready.refused;
    if ready.modules.is_empty() {
        return Ok(outcomes);
    }
    let nvidia = Nvidia {
        l4t: &ready.l4t,
        config: &ready.config,
        rootdev: ready.rootdev,
        board_env: &plan.board_env,
    };
    let bars: Vec<Box<dyn Progress>> = ready
        .modules
        .iter()
        .map(|m| {
            let bar = progress(&m.jetson);
            bar.note("waiting: preparing NVIDIA's flash package");
            bar
        })
        .collect();

    let instances = ready
        .modules
        .iter()
        .map(|m| m.instance + 1)
        .max()
        .unwrap_or(1);
    let prepare_log = ready.work.join("prepare.log");
    let prepared = module::run_logged(nvidia.prepare(instances, &ready.layout_path), &prepare_log)
        .and_then(|()| ready.l4t.flash_params());
    let params =
        match prepared {
            Ok(params) => params,
            Err(e) => {
                let why = chain(&e);
                for m in &ready.modules {
                    outcomes.push(m.outcome(
                    Err(ModuleFailure {
                        step: Step::Prepare,
                        error: Box::new(FlashError::Stopped(why.clone())),
                        fix: "NVIDIA's l4t_initrd_flash.sh could not make the flash package for \
                              any module: read its log, check the BSP tree (an unpacked \
                              Jetson Linux with apply_binaries.sh run) and, with several \
                              Jetsons attached, BOARDID/FAB/BOARDSKU/BOARDREV; then run again"
                            .into(),
                        log: Some(prepare_log.clone()),
                    }),
                    started.elapsed(),
                ));
                }
                outcomes.sort_by(|a, b| a.port.cmp(&b.port));
                return Ok(outcomes);
            }
        };

    let ctx = module::Ctx {
        image,
        plan,
        work: &ready.work,
        host,
        nvidia: &nvidia,
        params: &params,
        firmware: &ready.firmware,
    };
    let results: Vec<ModuleOutcome> = std::thread::scope(|scope| {
        let handles: Vec<_> = ready
            .modules
            .iter()
            .zip(&bars)
            .map(|(m, bar)| {
                let ctx = &ctx;
                let handle = scope.spawn(move || module::run(ctx, m, bar.as_ref()));
                (m, handle)
            })
            .collect();
        handles
            .into_iter()
            .map(|(m, handle)| {
                let result = handle.join().unwrap_or_else(|_| {
                    Err(ModuleFailure {
                        step: Step::WriteDisk,
                        error: Box::new(FlashError::Stopped("the module's thread panicked".into())),
                        fix: "do not boot this module; flash it again".into(),
                        log: None,
                    })
                });
                m.outcome(result, started.elapsed())
            })
            .collect()
    });
    outcomes.extend(results);
    outcomes.sort_by(|a, b| a.port.cmp(&b.port));
    Ok(outcomes)
}

/// The work folder a run uses by default: `flash-logs/<unix seconds>` in `base`.
pub fn default_work(base: &Path, now: u64) -> PathBuf {
    base.join("flash-logs").join(now.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_parse_or_say_what_is_expected() {
        let p = |s: &str| JetsonTarget::parse(s).map(|r| r.map_err(|e| e.to_string()));
        assert_eq!(p("jetson:all"), Some(Ok(JetsonTarget::All)));
        assert_eq!(
            p("jetson:usb:1-2.3"),
            Some(Ok(JetsonTarget::Usb("1-2.3".into())))
        );
        assert_eq!(p("/dev/sdb"), None);
        assert_eq!(p("serial:123"), None);
        for bad in [
            "jetson:",
            "jetson:usb:",
            "jetson:usb:1",
            "jetson:usb:1-",
            "jetson:usb:1-2..3",
            "jetson:usb:../x",
            "jetson:one",
        ] {
            let e = p(bad).unwrap().unwrap_err();
            assert!(
                e.contains("expected jetson:all or jetson:usb:<bus-port>"),
                "{bad}: {e}"
            );
        }
        assert_eq!(
            JetsonTarget::Usb("3-1".into()).to_string(),
            "jetson:usb:3-1"
        );
    }
}
