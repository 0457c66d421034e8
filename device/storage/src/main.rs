//! `aperture-storage`: unlock (and on first boot create) the encrypted config and data
//! partitions, or show their state. Thin: arguments, logging, one library call.

use anyhow::Context;
use aperture_storage::{system_parts, Paths, Storage};
use clap::{Parser, Subcommand};

/// Encrypted config and data partitions of an Aperture appliance.
#[derive(Debug, Parser)]
#[command(name = "aperture-storage", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Format (first boot) or unlock, then mount /config and /data. Run at every boot by
    /// aperture-storage.service, before local-fs.target.
    Setup,
    /// Show which volumes are formatted, unlocked and mounted, and what protects their keys.
    Status {
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
}

fn main() {
    tracing_subscriber::fmt()
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .with_target(false)
        .without_time()
        .init();
    if let Err(e) = run(Cli::parse()) {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    let paths = Paths::default();
    let (disk, crypt, keys, mounts) = system_parts(&paths);
    let storage = Storage {
        paths: &paths,
        disk: &disk,
        crypt: &crypt,
        keys: keys.as_ref(),
        mounts: &mounts,
    };
    match cli.command {
        Command::Setup => {
            for v in storage
                .setup()
                .context("setting up the encrypted partitions")?
            {
                tracing::info!(
                    "{}: {} mounted at {}{}",
                    v.volume,
                    v.mapped.display(),
                    v.mounted.display(),
                    if v.formatted {
                        " (formatted on this boot)"
                    } else {
                        ""
                    }
                );
            }
        }
        Command::Status { json } => {
            let report = storage.status().context("reading the storage status")?;
            if json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                print!("{report}");
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
    }
}
