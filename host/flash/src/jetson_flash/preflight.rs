//! The checks before any NVIDIA tool runs: the build folder's Jetson files against the signed
//! manifest, the BSP tree against the build, the tools, the user, the modules. Every problem
//! is gathered and reported once ([`FlashError::Preflight`]), each with its fix; a module that
//! is the wrong board is refused on its own and the others go on.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use aperture_trust::manifest::Sha256Hex;

use super::{JetsonHost, JetsonTarget, ModuleFailure, ModuleOutcome, Plan, Step};
use crate::error::{FlashError, Result};
use crate::image::VerifiedImage;
use crate::jetson::{self, Discovery, RecoveryJetson};
use crate::l4t::{self, BootLayout, L4t, OFFLINE_BOARD_VARS};

/// The layout file for NVIDIA's tools in a Jetson build folder.
pub const FLASH_LAYOUT: &str = "flash_layout.xml";

/// A module to flash and the device instance its flashing initrd gets.
pub(super) struct Selected {
    pub jetson: RecoveryJetson,
    pub instance: u32,
}

impl Selected {
    pub fn outcome(
        &self,
        result: std::result::Result<super::ModuleReport, ModuleFailure>,
        elapsed: Duration,
    ) -> ModuleOutcome {
        ModuleOutcome {
            module: self.jetson.module,
            port: self.jetson.usb.port.clone(),
            serial: self.jetson.usb.serial.clone(),
            instance: Some(self.instance),
            result,
            elapsed,
        }
    }
}

/// Everything checked, ready to run.
pub(super) struct Ready {
    pub l4t: L4t,
    /// The work folder, absolute.
    pub work: PathBuf,
    pub config: String,
    pub rootdev: &'static str,
    /// The boot-device layout, written into the work folder for NVIDIA's tools.
    pub layout_path: PathBuf,
    /// The firmware files it names, in order.
    pub firmware: Vec<String>,
    pub modules: Vec<Selected>,
    /// Modules refused on their own (wrong board), as outcomes.
    pub refused: Vec<ModuleOutcome>,
}

/// Runs every check; `Err` holds every problem found.
pub(super) fn check(image: &VerifiedImage, plan: &Plan, host: &JetsonHost) -> Result<Ready> {
    let mut problems: Vec<String> = Vec::new();
    let manifest = image.manifest();
    let board = l4t::board_config(&manifest.board);
    if board.is_none() {
        problems.push(format!(
            "{} is a build for {}; `--to jetson:` flashes builds for {} (build the Jetson \
             recipe, or flash this one to a block device or file)",
            image.dir().display(),
            manifest.board,
            l4t::BOARD_CONFIGS
                .iter()
                .map(|b| b.board)
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }
    let boot = match boot_layout(image) {
        Ok(b) => Some(b),
        Err(e) => {
            problems.push(e.to_string());
            None
        }
    };
    if let Some(b) = &boot {
        problems.extend(signed_copies(image, &b.files));
    }
    let tree = match L4t::resolve(plan.bsp.as_deref(), image.dir()) {
        Ok(t) => Some(t),
        Err(e) => {
            problems.push(e.to_string());
            None
        }
    };
    let config = plan
        .board_config
        .clone()
        .or_else(|| board.map(|b| b.config.to_string()))
        .unwrap_or_default();
    if let Some(t) = &tree {
        for tool in [
            "tools/kernel_flash/l4t_initrd_flash.sh",
            "tools/kernel_flash/l4t_initrd_flash_internal.sh",
        ] {
            if !t.path(tool).is_file() {
                problems.push(format!(
                    "{} is missing: the BSP tree is incomplete; unpack Jetson Linux again",
                    t.path(tool).display()
                ));
            }
        }
        if !config.is_empty() && !t.path(&format!("{config}.conf")).is_file() {
            problems.push(format!(
                "the BSP has no board configuration {config}.conf; pass --board-config with \
                 the name of your carrier's .conf in {}",
                t.root().display()
            ));
        }
        if let Some(b) = &boot {
            problems.extend(l4t::check_firmware(t, manifest, &b.files));
        }
        if !t.is_synthetic() && !rustix::process::geteuid().is_root() {
            problems.push(
                "NVIDIA's flashing tools need root (they load udev rules, set up the USB \
                 link and write to the module): run as root, e.g. `sudo -E cargo xtask flash ...`"
                    .into(),
            );
        }
    }
    if !sshpass_found(&host.sshpass) {
        problems.push(format!(
            "`{}` is not installed; NVIDIA's tools reach the flashing initrd with it: \
             `sudo apt-get install sshpass` (or run the BSP's tools/l4t_flash_prerequisites.sh)",
            host.sshpass.display()
        ));
    }

    let found = jetson::scan(&host.sysfs)?;
    let (chosen, missing) = select(&found, &plan.targets);
    problems.extend(missing);
    let absent: Vec<&str> = OFFLINE_BOARD_VARS
        .iter()
        .copied()
        .filter(|v| {
            !plan
                .board_env
                .iter()
                .any(|(k, val)| k == v && !val.is_empty())
        })
        .collect();
    if !absent.is_empty() {
        problems.push(format!(
            "the board must be given for NVIDIA's offline mode ({} missing; environment or \
             --board-id/--fab/--board-sku/--board-rev; the values are in the table at the end \
             of the BSP's tools/kernel_flash/README_initrd_flash.txt): read from a module \
             instead, NVIDIA's preparation leaves it needing recovery mode again \
             (README_initrd_flash.txt, Workflow 2), and with several modules attached it is \
             ambiguous; all modules flashed together must be the same hardware revision",
            absent.join(", ")
        ));
    }
    // NVIDIA's tools run in the BSP folder: every path handed to them is absolute.
    let work = std::path::absolute(&plan.work).unwrap_or_else(|_| plan.work.clone());
    if problems.is_empty() {
        if let Err(e) = fs::create_dir_all(&work) {
            problems.push(format!(
                "cannot create the log folder {}: {e}; pass --logs with a writable folder",
                work.display()
            ));
        }
    }
    let (Some(board), Some(boot), Some(tree), true) = (board, boot, tree, problems.is_empty())
    else {
        return Err(FlashError::Preflight { problems });
    };

    let mut refused = Vec::new();
    let mut modules = Vec::new();
    let in_use = found.instances_in_use();
    let mut free = (0u32..).filter(|i| !in_use.contains(i));
    for jetson in chosen {
        if jetson.module != board.module {
            refused.push(ModuleOutcome {
                module: jetson.module,
                port: jetson.usb.port.clone(),
                serial: jetson.usb.serial.clone(),
                instance: None,
                result: Err(ModuleFailure {
                    step: Step::Check,
                    error: Box::new(FlashError::refused(
                        format!("{} at USB {}", jetson.module.name(), jetson.usb.port),
                        format!("the image is for {} ({})", board.board, board.module.name()),
                    )),
                    fix: format!(
                        "flash it with a build for its board, or leave it out (name the others \
                         with --to jetson:usb:<port>); this one is at {}",
                        jetson.usb.port
                    ),
                    log: None,
                }),
                elapsed: Duration::ZERO,
            });
            continue;
        }
        let instance = free.next().unwrap_or(u32::MAX);
        modules.push(Selected { jetson, instance });
    }
    let layout_path = work.join("boot-device-layout.xml");
    fs::write(&layout_path, &boot.xml)
        .map_err(|e| FlashError::io(format!("writing {}", layout_path.display()), e))?;
    Ok(Ready {
        l4t: tree,
        work,
        config,
        rootdev: board.rootdev,
        layout_path,
        firmware: boot.files,
        modules,
        refused,
    })
}

/// The QSPI device of the build's `flash_layout.xml`, after checking the file is the one the
/// manifest signed.
fn boot_layout(image: &VerifiedImage) -> Result<BootLayout> {
    let dir = image.dir();
    let signed = image
        .manifest()
        .artifacts
        .iter()
        .find(|a| a.name.as_str() == FLASH_LAYOUT)
        .ok_or_else(|| FlashError::Image {
            dir: dir.to_path_buf(),
            reason: format!(
                "the signed manifest lists no {FLASH_LAYOUT}: this is not a Jetson build \
                 (build a Jetson recipe with --bsp)"
            ),
        })?;
    let path = dir.join(FLASH_LAYOUT);
    let bytes =
        fs::read(&path).map_err(|e| FlashError::io(format!("reading {}", path.display()), e))?;
    if Sha256Hex::digest(&bytes) != signed.sha256 || bytes.len() as u64 != signed.size {
        return Err(FlashError::Image {
            dir: dir.to_path_buf(),
            reason: format!(
                "{FLASH_LAYOUT} does not match the signed manifest: it was changed after \
                 signing; copy the build folder again or rebuild"
            ),
        });
    }
    let text = String::from_utf8(bytes).map_err(|_| FlashError::Image {
        dir: dir.to_path_buf(),
        reason: format!("{FLASH_LAYOUT} is not UTF-8 text"),
    })?;
    l4t::boot_layout(&path.display().to_string(), &text)
}

/// The build folder's copies of the firmware files: each must be the signed one (a tampered
/// folder is refused here, before any tool runs).
fn signed_copies(image: &VerifiedImage, files: &[String]) -> Vec<String> {
    let mut problems = Vec::new();
    for name in files {
        let signed = image
            .manifest()
            .artifacts
            .iter()
            .find(|a| a.name.as_str() == name);
        let path = image.dir().join(name);
        match (signed, aperture_trust::digest::sha256_file(&path)) {
            (Some(a), Ok((sha, size))) if a.sha256 == sha && a.size == size => {}
            (None, _) => problems.push(format!(
                "{FLASH_LAYOUT} names {name}, which the signed manifest does not list; rebuild"
            )),
            (Some(_), Ok(_)) => problems.push(format!(
                "{} does not match the signed manifest: the build folder was changed after \
                 signing; copy it again or rebuild",
                path.display()
            )),
            (Some(_), Err(e)) => problems.push(format!(
                "{}: {e}; copy the build folder again",
                path.display()
            )),
        }
    }
    problems
}

/// The recovery-mode Jetsons the targets name, each once, and a problem for each target that
/// names none.
fn select(found: &Discovery, targets: &[JetsonTarget]) -> (Vec<RecoveryJetson>, Vec<String>) {
    let mut chosen: Vec<RecoveryJetson> = Vec::new();
    let mut problems = Vec::new();
    let mut add = |j: &RecoveryJetson| {
        if !chosen.iter().any(|c| c.usb.port == j.usb.port) {
            chosen.push(j.clone());
        }
    };
    for t in targets {
        match t {
            JetsonTarget::All if found.recovery.is_empty() => problems.push(
                "jetson:all: no Jetson is in recovery mode on USB; connect each to this host \
                 with a data cable and hold RECOVERY while powering it on (`cargo xtask flash \
                 --list` shows what is attached)"
                    .into(),
            ),
            JetsonTarget::All => found.recovery.iter().for_each(&mut add),
            JetsonTarget::Usb(port) => match found.recovery_at(port) {
                Some(j) => add(j),
                None => {
                    let initrd = found.links.iter().any(|l| l.usb.port == *port)
                        || found.disks.iter().any(|d| d.usb.port == *port);
                    problems.push(format!(
                        "{t}: {}; put it in recovery mode (hold RECOVERY while powering on) or \
                         name another port (`cargo xtask flash --list`)",
                        if initrd {
                            "the Jetson there is running a flashing initrd already, not \
                             waiting in recovery mode"
                        } else {
                            "no Jetson in recovery mode at that USB port"
                        }
                    ));
                }
            },
        }
    }
    chosen.sort_by(|a, b| a.usb.port.cmp(&b.usb.port));
    (chosen, problems)
}

/// Whether `sshpass` (a name on `PATH`, or a path) is there.
fn sshpass_found(program: &Path) -> bool {
    if program.components().count() == 1 {
        aperture_sys::tool::find(&program.to_string_lossy()).is_some()
    } else {
        program.is_file()
    }
}
