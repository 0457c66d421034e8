//! `aperture-storage`: unlock (and on first boot create) the encrypted config and data
//! partitions, or show their state. Thin: arguments, logging, one library call.

use std::io::ErrorKind;
use std::path::PathBuf;
use std::time::Duration;

use crate::SystemParts;
use anyhow::Context;
use aperture_appliance::Files;
use clap::{Parser, Subcommand};

/// Encrypted config and data partitions of an Aperture appliance.
#[derive(Debug, Parser)]
#[command(name = "aperture-storage", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// Treat DIR as the root of the appliance (tests only).
    #[arg(long, global = true, hide = true, value_name = "DIR")]
    root: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Format (first boot) or unlock, then mount /config and /data. Run at every boot by
    /// aperture-storage.service, before local-fs.target.
    Setup {
        /// Seconds to wait for the TPM device when the keys are (to be) sealed to it.
        #[arg(long, value_name = "SECONDS", default_value_t = crate::policy::DEFAULT_TPM_WAIT.as_secs())]
        tpm_timeout: u64,
    },
    /// Show which volumes are formatted, unlocked and mounted, and what protects their keys.
    Status {
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
}

/// `aperture-storage`'s entry point: `args` as the process got them (the program's name
/// first); returns the exit code.
pub fn main(args: Vec<std::ffi::OsString>) -> i32 {
    aperture_sys::log::init("info");
    match run(Cli::parse_from(args)) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("error: {e:#}");
            1
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    let files = cli.root.map_or_else(Files::default, Files::at);
    let parts = SystemParts::open(files).context("finding the appliance's parts")?;
    match cli.command {
        Command::Setup { tpm_timeout } => {
            let storage = parts.storage(Duration::from_secs(tpm_timeout));
            let setup = storage.setup();
            if parts.tpm.boot_chain().is_some() {
                // Whatever happened: no policy approved for this UKI matches for the rest of
                // this boot, so nothing started later can unseal a disk key.
                match parts.tpm.barrier() {
                    Ok(()) => tracing::info!(
                        "PCR 11 extended: disk keys cannot be unsealed again in this boot"
                    ),
                    Err(e) => tracing::error!("extending PCR 11 after storage setup: {e}"),
                }
            }
            for v in setup.context("setting up the encrypted partitions")? {
                tracing::info!(
                    "{}: {} mounted at {}, key: {}{}{}",
                    v.volume,
                    v.mapped.display(),
                    v.mounted.display(),
                    v.key_source,
                    if v.formatted {
                        " (formatted on this boot)"
                    } else {
                        ""
                    },
                    if v.repaired.is_empty() {
                        String::new()
                    } else {
                        format!(" (repaired: {:?})", v.repaired)
                    }
                );
            }
        }
        Command::Status { json } => {
            let report = parts
                .storage(Duration::ZERO)
                .status()
                .context("reading the storage status")?;
            match report.write_to(&mut std::io::stdout().lock(), json) {
                // The reader stopped reading (`status | head -1`): not our failure.
                Err(e) if e.kind() == ErrorKind::BrokenPipe => {}
                r => r.context("writing the status")?,
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_is_well_formed() {
        Cli::command().debug_assert();
        let c = Cli::try_parse_from(["aperture-storage", "setup", "--tpm-timeout", "5"]).unwrap();
        assert!(matches!(c.command, Command::Setup { tpm_timeout: 5 }));
        let c = Cli::try_parse_from(["aperture-storage", "setup"]).unwrap();
        assert!(matches!(c.command, Command::Setup { tpm_timeout: 90 }));
    }
}
