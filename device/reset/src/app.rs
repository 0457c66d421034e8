//! The command line of `aperture-reset` and the real parts it runs on. `main.rs` only parses
//! and prints the error chain.

use std::io::{BufRead, IsTerminal, Write};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use aperture_appliance::{Board, BuildFacts, Files, SlotsLock};
use aperture_slots::{BootControl, Slot, SlotManager};
use aperture_storage::{Access, DeviceDisk, Disk, SystemParts, Volume};
use aperture_trust::keys::PublicKey;
use aperture_updater::disk::PartlabelDisk;
use aperture_updater::io::RealIo;
use aperture_updater::{Paths, Updater};
use clap::{Args, Parser, Subcommand};

use crate::engine::{Outcome, Reset};
use crate::input::{read_press, Press, SysEvdev, DEFAULT_KEY};
use crate::io::open_store;
use crate::journal::{Journal, Level};
use crate::seams::{BlkDiscard, Faults, SystemClock, SystemReboot};
use crate::wipe::{self, VerifyReport};
use crate::ResetError;

/// How long a reset started at boot (`resume`, `button`) waits for the slots lock: nothing
/// else should hold it that early, but an install being resumed may.
pub const BOOT_LOCK_WAIT: Duration = Duration::from_secs(60);
/// How long a reset started by hand waits for the slots lock before saying who holds it.
pub const MANUAL_LOCK_WAIT: Duration = Duration::from_secs(10);

/// Reset an Aperture appliance: 1 boots the known-good slot again, 2 reinstalls the factory
/// image, 3 also wipes all customer data.
#[derive(Debug, Parser)]
#[command(
    name = "aperture-reset",
    version,
    about,
    args_conflicts_with_subcommands = true
)]
pub struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    run: RunArgs,
    /// Treat DIR as the root of the appliance (tests only).
    #[arg(long, global = true, hide = true, value_name = "DIR")]
    root: Option<PathBuf>,
}

#[derive(Debug, Args)]
struct RunArgs {
    /// Reset level: 1 = boot the known-good slot again, 2 = reinstall the factory image,
    /// 3 = level 2 and a secure wipe of config and data.
    #[arg(long, value_parser = clap::value_parser!(u8).range(1..=3))]
    level: Option<u8>,
    /// Do not ask for confirmation (for scripts).
    #[arg(long)]
    yes: bool,
    /// Read the wiped partitions back and report LUKS magic and zero bytes; exits non-zero
    /// if a LUKS header survived.
    #[arg(long)]
    verify: bool,
    /// Print the --verify report as JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Finish an interrupted reset (run at every boot before aperture-storage).
    Resume,
    /// Read the board's reset button (named in build.json) held during boot and run the
    /// level it asks for.
    Button {
        /// The evdev key the button reports (KEY_... name or code).
        #[arg(long, env = "APERTURE_RESET_KEY", default_value = DEFAULT_KEY)]
        key: String,
    },
    /// Show the reset journal, if a reset is in progress.
    Status {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

/// `aperture-reset`'s entry point: `args` as the process got them (the program's name
/// first); returns the exit code.
pub fn main(args: Vec<std::ffi::OsString>) -> i32 {
    aperture_sys::log::init("info");
    match run(<Cli as clap::Parser>::parse_from(args)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            1
        }
    }
}

/// Runs the command line; the exit code on success (non-zero when `--verify` failed).
pub fn run(cli: Cli) -> Result<i32> {
    let files = match &cli.root {
        Some(r) => Files::at(r),
        None => Files::default(),
    };
    match cli.command {
        Some(Command::Resume) => {
            let outcome = with_reset(&files, "aperture-reset resume", BOOT_LOCK_WAIT, |r| {
                Ok(r.resume()?)
            })?;
            report(&outcome);
            Ok(0)
        }
        Some(Command::Button { key }) => {
            let facts = BuildFacts::load(&files.build_facts())?;
            let Some(button) = facts.reset_button else {
                tracing::info!("this board has no reset button (reset_button in build.json)");
                return Ok(0);
            };
            let boot_id = std::fs::read_to_string(files.path("proc/sys/kernel/random/boot_id"))
                .map(|b| b.trim().to_string())
                .unwrap_or_else(|_| "unknown".into());
            let outcome = with_reset(&files, "aperture-reset button", BOOT_LOCK_WAIT, |r| {
                let mut evdev = SysEvdev::new(files.clone());
                let press = read_press(
                    &mut evdev,
                    Some(&button),
                    &key,
                    r.clock,
                    &mut r.store,
                    &boot_id,
                    &mut |l| eprintln!("aperture-reset: reset key held: level {l} if released now"),
                )?;
                let Press::Level(level) = press else {
                    return Ok(None);
                };
                eprintln!("aperture-reset: reset level {level} requested by the reset key");
                Ok(Some(r.start(level)?))
            })?;
            if let Some(outcome) = outcome {
                report(&outcome);
            }
            Ok(0)
        }
        Some(Command::Status { json }) => {
            let facts = BuildFacts::load(&files.build_facts())?;
            let disk = DeviceDisk::on(&files);
            let journal = Journal::load(&open_store(&disk, facts.board)?)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&journal)?);
            } else {
                match journal {
                    None => println!("no reset in progress"),
                    Some(j) => println!(
                        "reset level {} started on slot {}: step {} of {}{}{}",
                        j.level,
                        j.started_from,
                        j.next + 1,
                        j.steps().len(),
                        j.current().map(|s| format!(" ({s})")).unwrap_or_default(),
                        j.failed
                            .map(|f| format!("; FAILED: {f}"))
                            .unwrap_or_default()
                    ),
                }
            }
            Ok(0)
        }
        None => {
            let args = cli.run;
            if args.level.is_none() && !args.verify {
                bail!("nothing to do: pass --level 1|2|3, --verify, or a subcommand (see --help)");
            }
            if let Some(n) = args.level {
                let level = Level::try_from(n).map_err(anyhow::Error::msg)?;
                confirm(level, args.yes)?;
                let holder = format!("aperture-reset --level {level}");
                let outcome =
                    with_reset(&files, &holder, MANUAL_LOCK_WAIT, |r| Ok(r.start(level)?))?;
                report(&outcome);
            }
            if args.verify {
                let facts = BuildFacts::load(&files.build_facts())?;
                let disk = DeviceDisk::on(&files);
                let report = verify(&disk, facts.board)?;
                if args.json {
                    println!("{}", serde_json::to_string_pretty(&report)?);
                } else {
                    println!("{report}");
                }
                return Ok(if report.ok { 0 } else { 2 });
            }
            Ok(0)
        }
    }
}

/// `--verify`: read config and data back (`UDA` on Jetson: the board names the partitions).
pub fn verify(disk: &dyn Disk, board: Board) -> Result<VerifyReport> {
    let mut volumes = Vec::new();
    for v in Volume::ALL {
        let part = disk
            .open(v.partition(board), Access::Shared)
            .with_context(|| format!("opening {v} ({})", v.partition(board)))?;
        volumes.push(wipe::check(part.as_ref()).with_context(|| format!("reading {v} back"))?);
    }
    Ok(VerifyReport::new(volumes))
}

fn describe(level: Level) -> &'static str {
    match level {
        Level::One => "reboot into the known-good slot after re-verifying it",
        Level::Two => "reinstall the factory image into both slots (installed updates are lost)",
        Level::Three => {
            "reinstall the factory image AND DESTROY ALL DATA on config and data (identity, \
             network settings, applications, models, video, logs); this cannot be undone"
        }
    }
}

fn confirm(level: Level, yes: bool) -> Result<()> {
    if yes {
        return Ok(());
    }
    let stdin = std::io::stdin();
    if !stdin.is_terminal() {
        bail!("reset level {level} needs confirmation: run it on a terminal or pass --yes");
    }
    eprint!(
        "Reset level {level}: {}.\nType 'yes' to continue: ",
        describe(level)
    );
    std::io::stderr().flush()?;
    let mut answer = String::new();
    stdin.lock().read_line(&mut answer)?;
    if answer.trim() != "yes" {
        return Err(crate::ResetError::NotConfirmed.into());
    }
    Ok(())
}

fn report(outcome: &Outcome) {
    match outcome {
        Outcome::Nothing => tracing::debug!("no reset in progress"),
        Outcome::Rebooting { step } => eprintln!("aperture-reset: rebooting ({step})"),
        Outcome::AwaitingHealthGate { slot } => eprintln!(
            "aperture-reset: the factory image runs on trial in slot {slot}; the reset goes on \
             once the health gate committed it"
        ),
        Outcome::Done { level } => eprintln!("aperture-reset: reset level {level} complete"),
        Outcome::Level1(r) => eprintln!("aperture-reset: rebooting into slot {}", r.chosen),
        Outcome::Failed { reason } => {
            eprintln!("aperture-reset: an earlier reset failed: {reason}")
        }
    }
}

/// The running slot, from `aperture.slot=` on the kernel command line.
pub fn booted_slot(files: &Files) -> Result<Slot, ResetError> {
    let path = files.cmdline();
    let text = std::fs::read_to_string(&path).map_err(ResetError::io("reading", &path))?;
    Slot::from_cmdline(&text).ok_or(ResetError::UnknownSlot { path })
}

/// The board's boot control on the appliance laid out as `files`: systemd-boot entries on the
/// ESP, or NVIDIA's UEFI variables (Jetson), as the updater drives them
/// ([`aperture_updater::boot_control_for`]).
pub fn boot_control(files: &Files, board: Board) -> Result<Box<dyn BootControl>, ResetError> {
    let paths = Paths::from_files(files);
    let disk = PartlabelDisk::new(files.partlabel_dir());
    Ok(aperture_updater::boot_control_for(
        board,
        &paths,
        &disk,
        Arc::new(RealIo),
    )?)
}

/// Builds the real parts, takes the slots lock as `holder` (waiting at most `wait`) and runs
/// `f` on them.
fn with_reset<T>(
    files: &Files,
    holder: &str,
    wait: Duration,
    f: impl FnOnce(&mut Reset<'_>) -> Result<T>,
) -> Result<T> {
    let parts = SystemParts::open(files.clone())?;
    let (disk, crypt, keys) = (&parts.disk, &parts.crypt, &parts.state);
    let facts = &parts.facts;
    let root = PublicKey::load(&files.root_key())
        .with_context(|| format!("loading the root key {}", files.root_key().display()))?;
    let booted = booted_slot(files)?;
    let backend = boot_control(files, facts.board)?;
    let lock = SlotsLock::acquire(&files.slots_lock(), holder, wait)?;
    let store = open_store(disk, facts.board)?;
    let mut installer = Updater::on_device(Paths::from_files(files))?;
    let clock = SystemClock::default();
    let faults = Faults::none();
    let mut reset = Reset {
        files,
        disk,
        crypt,
        keys,
        discard: &BlkDiscard,
        installer: &mut installer,
        lock: &lock,
        clock: &clock,
        reboot: &SystemReboot,
        slots: SlotManager::new(backend, booted),
        store,
        root,
        board: facts.board,
        faults: &faults,
    };
    f(&mut reset)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_is_well_formed() {
        Cli::command().debug_assert();
        let c =
            Cli::try_parse_from(["aperture-reset", "--level", "3", "--yes", "--verify"]).unwrap();
        assert_eq!(c.run.level, Some(3));
        assert!(Cli::try_parse_from(["aperture-reset", "--level", "4"]).is_err());
        assert!(Cli::try_parse_from(["aperture-reset", "resume"]).is_ok());
        assert!(Cli::try_parse_from(["aperture-reset", "button", "--key", "KEY_F12"]).is_ok());
        assert!(
            Cli::try_parse_from(["aperture-reset", "button", "--device", "/dev/input/event0"])
                .is_err(),
            "the button is named by build.json, not on the command line"
        );
    }

    /// Round 2 refused to reset a board that is not on systemd-boot; now every board's own
    /// boot control drives the reset, as it drives the updater.
    #[test]
    fn every_board_resets_with_its_own_boot_control() {
        let d = tempfile::tempdir().unwrap();
        let files = Files::at(d.path());
        std::fs::create_dir_all(files.partlabel_dir()).unwrap();
        let state =
            files.partition(Board::JetsonOrinAgx.partition(aperture_appliance::Role::State));
        std::fs::File::create(&state)
            .unwrap()
            .set_len(aperture_appliance::store::PARTITION_BYTES)
            .unwrap();
        for board in Board::ALL {
            let backend = boot_control(&files, board).unwrap();
            let want = match board.boot_control() {
                aperture_appliance::BootControlKind::SystemdBoot => "systemd-boot",
                aperture_appliance::BootControlKind::Tegra => "tegra",
            };
            assert_eq!(backend.name(), want, "{board}");
        }
    }
}
