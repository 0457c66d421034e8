//! The command line of `aperture-reset` and the real parts it runs on. `main.rs` only parses
//! and prints the error chain.

use std::io::{BufRead, IsTerminal, Write};
use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use aperture_slots::{BootControl, SlotManager, SystemdBoot};
use aperture_storage::{Access, DeviceDisk, Disk, SystemParts, Volume};
use aperture_trust::keys::PublicKey;
use clap::{Args, Parser, Subcommand};

use crate::engine::{Outcome, Reset};
use crate::input::{level_for_hold, measure_hold, Evtest, DEFAULT_KEY};
use crate::journal::{Journal, Level};
use crate::paths::{DeviceFacts, Paths};
use crate::seams::{BlkDiscard, Clock, Faults, SystemClock, SystemReboot};
use crate::slot_writer::BundleSlotWriter;
use crate::wipe::{self, VerifyReport};

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
    /// Read the reset key held during boot and run the level it asks for.
    Button {
        /// The evdev key (KEY_... name or code).
        #[arg(long, env = "APERTURE_RESET_KEY", default_value = DEFAULT_KEY)]
        key: String,
        /// Input devices to ask (default: every /dev/input/event*).
        #[arg(long = "device")]
        devices: Vec<PathBuf>,
    },
    /// Show the reset journal, if a reset is in progress.
    Status {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

/// Runs the command line; the exit code on success (non-zero when `--verify` failed).
pub fn run(cli: Cli) -> Result<i32> {
    let paths = match &cli.root {
        Some(r) => Paths::rooted(r),
        None => Paths::default(),
    };
    match cli.command {
        Some(Command::Resume) => {
            let outcome = with_reset(&paths, |r| Ok(r.resume()?))?;
            report(&outcome);
            Ok(0)
        }
        Some(Command::Button { key, devices }) => {
            let devices = if devices.is_empty() {
                Evtest::devices_in(&paths.input_dir)
            } else {
                devices
            };
            let mut input = Evtest::new(devices, &key)?;
            let clock = SystemClock::default();
            let held = measure_hold(&mut input, &clock, &mut |l| {
                eprintln!("aperture-reset: reset key held: level {l} if released now");
            })?;
            let Some(level) = level_for_hold(held) else {
                return Ok(0);
            };
            eprintln!("aperture-reset: reset level {level} requested by the reset key");
            let outcome = with_reset(&paths, |r| Ok(r.start(level)?))?;
            report(&outcome);
            Ok(0)
        }
        Some(Command::Status { json }) => {
            let journal = Journal::load(paths.journal())?;
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
                        j.steps.len(),
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
                let outcome = with_reset(&paths, |r| Ok(r.start(level)?))?;
                report(&outcome);
            }
            if args.verify {
                let disk = DeviceDisk::on(&paths.files);
                let report = verify(&disk)?;
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

/// `--verify`: read config and data back.
pub fn verify(disk: &dyn Disk) -> Result<VerifyReport> {
    let mut volumes = Vec::new();
    for v in Volume::ALL {
        let part = disk
            .open(v.label(), Access::Shared)
            .with_context(|| format!("opening {v}"))?;
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
        Outcome::Done { level } => eprintln!("aperture-reset: reset level {level} complete"),
        Outcome::Level1(r) => eprintln!("aperture-reset: rebooting into slot {}", r.chosen),
        Outcome::Failed { reason } => {
            eprintln!("aperture-reset: an earlier reset failed: {reason}")
        }
    }
}

/// Builds the real parts and runs `f` on them.
fn with_reset<T>(paths: &Paths, f: impl FnOnce(&mut Reset<'_>) -> Result<T>) -> Result<T> {
    let parts = SystemParts::open(paths.files.clone())?;
    let (disk, crypt, keys) = (&parts.disk, &parts.crypt, &parts.state);
    let facts = DeviceFacts::load(&paths.build_facts)?;
    let root = PublicKey::load(&paths.root_key)
        .with_context(|| format!("loading the root key {}", paths.root_key.display()))?;
    let booted = paths.booted_slot()?;
    let clock = SystemClock::default();
    let backend: Box<dyn BootControl> = Box::new(SystemdBoot::new(paths.files.esp()));
    let writer = BundleSlotWriter {
        disk,
        paths,
        root,
        now: clock.now_unix(),
    };
    let faults = Faults::none();
    let mut reset = Reset {
        paths,
        disk,
        crypt,
        keys,
        discard: &BlkDiscard,
        writer: &writer,
        clock: &clock,
        reboot: &SystemReboot,
        slots: SlotManager::new(backend, booted),
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
    }
}
