//! `aperture-agent`: parse arguments, set up logging, run the library, print errors once.

use std::time::Duration;

use clap::{Parser, Subcommand};

use crate::health::{self, GateOptions, Systemctl};
use crate::{status, update};
use aperture_appliance::Files;
use aperture_updater::{Paths, Updater};

/// The Aperture device agent.
#[derive(Debug, Parser)]
#[command(name = "aperture-agent", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Print product, version, board, the booted slot and the root mount.
    Status {
        /// Print JSON instead of a line of text.
        #[arg(long)]
        json: bool,
    },
    /// Health gate: wait for the required services, then commit the running slot (mark it
    /// good, raise the anti-rollback floor); exit non-zero if they fail on a slot on trial.
    Health {
        /// Seconds to wait for the required services (longer for a unit still in its start
        /// phase: as long as its own TimeoutStartSec, up to an hour).
        #[arg(long, default_value_t = 120)]
        timeout: u64,
        /// Seconds between checks.
        #[arg(long, default_value_t = 1)]
        interval: u64,
    },
    /// Poll the release repository for ever (the image's `[update]` settings): install what
    /// this appliance's wave allows, reboot in the maintenance window.
    UpdateLoop,
    /// Enroll with the fleet server from a provisioning archive (the ESP's aperture/provision,
    /// or a USB stick mounted at /run/aperture/provision-usb), unless already enrolled.
    Enroll {
        /// What aperture-enroll.service runs: no archive is nothing to do; apply the archive's
        /// network settings first; try an unreachable server again with a growing delay;
        /// remount a USB stick read-write to erase the archive, then unmount it.
        #[arg(long)]
        first_boot: bool,
    },
    /// Apply the network settings a provisioning archive gave this appliance (kept in
    /// /var/lib/aperture/agent/network.toml), if any: aperture-network.service at every boot.
    Network,
    /// Check the release repository once now, installing what is found (no reboot unless
    /// `--reboot`).
    CheckUpdate {
        /// Print the loop's status as JSON.
        #[arg(long)]
        json: bool,
        /// Reboot into an installed release (inside the maintenance window, if any).
        #[arg(long)]
        reboot: bool,
    },
}

fn health(timeout: u64, interval: u64) -> anyhow::Result<()> {
    let files = Files::default();
    let mut updater = Updater::on_device(Paths::from_files(&files))?;
    let opts = GateOptions {
        timeout: Duration::from_secs(timeout),
        interval: Duration::from_secs(interval),
        ..GateOptions::default()
    };
    let report = health::run_gate(
        &files,
        &mut updater,
        &mut Systemctl,
        &opts,
        &mut std::thread::sleep,
    )?;
    println!("{report}");
    Ok(())
}

/// `aperture-agent`'s entry point: `args` as the process got them (the program's name
/// first); returns the exit code.
pub fn main(args: Vec<std::ffi::OsString>) -> i32 {
    aperture_sys::log::init("info");
    let cli = Cli::parse_from(args);
    let result = match cli.command {
        Command::Status { json } => status::gather(&Files::default())
            .map_err(anyhow::Error::from)
            .and_then(|s| {
                if json {
                    println!("{}", serde_json::to_string_pretty(&s)?);
                } else {
                    println!("{s}");
                }
                Ok(())
            }),
        Command::Health { timeout, interval } => health(timeout, interval),
        Command::UpdateLoop => update::run_loop(&Files::default()),
        Command::Enroll { first_boot: false } => crate::fleet::enroll_now(&Files::default()),
        Command::Enroll { first_boot: true } => {
            crate::firstboot::run(&Files::default(), &mut std::thread::sleep)
        }
        Command::Network => crate::network::apply_kept(&Files::default()),
        Command::CheckUpdate { json, reboot } => {
            update::check_once(&Files::default(), json, reboot)
        }
    };
    match result {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("aperture-agent: error: {e:#}");
            1
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    #[test]
    fn cli_definition_is_consistent() {
        super::Cli::command().debug_assert();
    }
}
