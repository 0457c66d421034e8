//! The command line of `aperture-update` (clap derive) and the dispatch to the library.
//!
//! Exit codes: 0 done, 1 failed, 3 nothing to do (the bundle's version is already running).
//!
//! `install`, `commit`, `rollback` and `resume --restart` hold the slots lock
//! (`/run/aperture/slots.lock`): `install` and `rollback` fail at once naming its holder,
//! `commit` and `resume` wait up to 60 s.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};

use crate::disk::FileDisk;
use crate::lifecycle::describe_interrupted;
use crate::source::{self, FetchOptions};
use crate::{InstallOptions, Paths, UpdateError, Updater};

/// Exit code for "the bundle's version is already installed".
pub const EXIT_NOTHING_TO_DO: i32 = 3;

/// How long `resume --restart` waits for the slots lock: it runs unattended at boot, beside
/// the health gate's commit.
const RESUME_LOCK_WAIT: Duration = Duration::from_secs(60);

/// Verified A/B updates of an Aperture appliance.
#[derive(Debug, Parser)]
#[command(name = "aperture-update", version, about)]
pub struct Cli {
    /// Root of the system to work on (tests, image staging); the appliance uses /.
    #[arg(long, global = true, default_value = "/", value_name = "DIR")]
    root: PathBuf,
    /// Use the GPT partitions of this disk image file instead of /dev/disk/by-partlabel
    /// (benchmarks and tests with file-backed slots).
    #[arg(long, global = true, value_name = "FILE")]
    disk_image: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Verify a bundle and install it into the slot that is not running; it boots next.
    Install {
        /// The bundle: a file path or an https:// URL.
        #[arg(value_name = "FILE|URL")]
        source: String,
        #[command(flatten)]
        fetch: FetchArgs,
        /// Boot tries the new slot gets before the loader falls back (1 to 7; 1 to 3 on Jetson,
        /// whose firmware keeps 2 bits).
        #[arg(long, default_value_t = crate::install::DEFAULT_TRIES)]
        tries: u32,
        /// Print the result as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Show both slots, the anti-rollback floor, an interrupted install or a rollback.
    Status {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Mark the running slot good and raise the anti-rollback floor (the health gate does this;
    /// waits up to 60 s for the slots lock).
    #[command(visible_alias = "mark-good")]
    Commit,
    /// Boot the other slot next (it must be good).
    Rollback,
    /// Report an install that a power cut interrupted; with --restart, install it again.
    Resume {
        /// Install again from the source the interrupted install recorded (with the CA and
        /// --insecure-http it was given).
        #[arg(long)]
        restart: bool,
        /// Say nothing and succeed when no install was interrupted (for a unit run at boot).
        #[arg(long)]
        if_interrupted: bool,
        #[command(flatten)]
        fetch: FetchArgs,
    },
}

#[derive(Debug, clap::Args)]
struct FetchArgs {
    /// Also trust this CA certificate (PEM) for HTTPS, besides the system store.
    #[arg(long, value_name = "FILE")]
    ca: Option<PathBuf>,
    /// Allow plain http:// (anyone on the network can read, withhold or replay updates).
    #[arg(long)]
    insecure_http: bool,
}

impl FetchArgs {
    fn options(&self, paths: &Paths) -> FetchOptions {
        let mut o = FetchOptions::new(&paths.ca_bundle);
        o.extra_ca = self.ca.clone();
        o.insecure_http = self.insecure_http;
        o
    }
}

fn updater(cli: &Cli) -> Result<Updater> {
    let paths = Paths::rooted(&cli.root);
    let u = match &cli.disk_image {
        None => Updater::on_device(paths)?,
        Some(image) => Updater::on_disk(paths, Box::new(FileDisk::new(image)))?,
    };
    Ok(u)
}

fn install(
    u: &mut Updater,
    spec: &str,
    fetch: &FetchArgs,
    tries: u32,
    json: bool,
    lock_wait: Duration,
) -> Result<i32> {
    let opts = fetch.options(u.paths());
    let mut input = source::open(spec, &opts)?;
    let source = if source::is_url(spec) {
        source::redact(spec)
    } else {
        std::fs::canonicalize(spec).map_or(spec.to_string(), |p| p.display().to_string())
    };
    let install_opts = InstallOptions {
        source: Some(source),
        ca: fetch.ca.clone(),
        insecure_http: fetch.insecure_http,
        lock_wait,
        ..InstallOptions::update(tries)
    };
    match u.install(&mut input, &install_opts) {
        Ok(done) => {
            if json {
                println!("{}", serde_json::to_string_pretty(&done)?);
            } else {
                println!(
                    "installed {} into slot {}: it boots next, on trial ({tries} tries); the \
                     health gate commits it",
                    done.version, done.target
                );
            }
            Ok(0)
        }
        Err(e @ UpdateError::AlreadyInstalled { .. }) => {
            eprintln!("aperture-update: {e}");
            Ok(EXIT_NOTHING_TO_DO)
        }
        Err(e) => Err(anyhow::Error::from(e).context(format!("installing {spec}"))),
    }
}

/// Run one command; the process exit code on success.
/// `aperture-update`'s entry point: `args` as the process got them (the program's name
/// first); returns the exit code.
pub fn main(args: Vec<std::ffi::OsString>) -> i32 {
    tracing_subscriber::fmt()
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr)
        .with_target(false)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    match run(Cli::parse_from(args)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("aperture-update: error: {e:#}");
            1
        }
    }
}

/// Run a parsed command line; returns the exit code.
pub fn run(cli: Cli) -> Result<i32> {
    let mut u = updater(&cli)?;
    match &cli.command {
        Command::Install {
            source,
            fetch,
            tries,
            json,
        } => install(&mut u, source, fetch, *tries, *json, Duration::ZERO),
        Command::Status { json } => {
            let s = u.status()?;
            if *json {
                println!("{}", serde_json::to_string_pretty(&s)?);
            } else {
                print!("{s}");
            }
            Ok(0)
        }
        Command::Commit => {
            let c = u.commit().context("marking the running slot good")?;
            println!("{c}");
            Ok(0)
        }
        Command::Rollback => {
            let state = u.rollback().context("rolling back")?;
            println!("slot {} boots next; reboot to switch", state.next);
            Ok(0)
        }
        Command::Resume {
            restart,
            if_interrupted,
            fetch,
        } => {
            let Some(j) = u.interrupted()? else {
                if !if_interrupted {
                    println!("no interrupted install");
                }
                return Ok(0);
            };
            let status = u.boot_state()?.status(j.target);
            eprintln!("aperture-update: {}", describe_interrupted(&j, status));
            if !restart {
                return Ok(0);
            }
            let Some(source) = j.source.clone() else {
                let e = UpdateError::NothingToResume {
                    reason: "the journal does not record where the bundle came from (it was \
                             streamed by a program that did not say); the running slot is \
                             unaffected and the next install starts over"
                        .into(),
                };
                if *if_interrupted {
                    eprintln!("aperture-update: {e}");
                    return Ok(0);
                }
                return Err(e.into());
            };
            let fetch = FetchArgs {
                ca: fetch.ca.clone().or_else(|| j.ca.clone()),
                insecure_http: fetch.insecure_http || j.insecure_http,
            };
            install(&mut u, &source, &fetch, j.tries, false, RESUME_LOCK_WAIT)
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
