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
        /// The release's full bundle, installed if SOURCE (a delta) fails [default: for a
        /// delta named NAME.from-V.bundle or update-from-V.bundle, NAME.bundle or update.bundle
        /// beside it].
        #[arg(long, value_name = "FILE|URL")]
        fallback: Option<String>,
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

/// Install the bundle at `spec`. When it fails and a full bundle may do better (a delta whose
/// base this device does not run, a rebuilt slot that does not verify, a delta that cannot be
/// fetched), the full bundle is installed instead: `fallback`, or the one a delta's name puts
/// beside it ([`full_bundle_beside`]).
fn install(
    u: &mut Updater,
    spec: &str,
    fallback: Option<&str>,
    fetch: &FetchArgs,
    tries: u32,
    json: bool,
    lock_wait: Duration,
) -> Result<i32> {
    let derived = fallback.is_none();
    let fallback = fallback
        .map(str::to_string)
        .or_else(|| full_bundle_beside(spec));
    let (done, how) = match install_one(u, spec, fetch, tries, lock_wait) {
        Ok(done) => (done, String::new()),
        Err(e @ UpdateError::AlreadyInstalled { .. }) => {
            eprintln!("aperture-update: {e}");
            return Ok(EXIT_NOTHING_TO_DO);
        }
        Err(e) => {
            let first = anyhow::Error::from(e).context(format!("installing {spec}"));
            let full = match fallback {
                Some(full) if may_fall_back(&first) => full,
                _ => return Err(first),
            };
            if derived && !source::is_url(&full) && !std::path::Path::new(&full).exists() {
                return Err(first.context(format!(
                    "its full bundle is not beside it as {full}: install the full bundle of \
                     this release, or name it with --fallback FILE|URL"
                )));
            }
            tracing::warn!("{first:#}; installing the full bundle {full} instead");
            match install_one(u, &full, fetch, tries, lock_wait) {
                Ok(done) => (
                    done,
                    format!(" from the full bundle {full} ({spec} failed)"),
                ),
                Err(e) => {
                    return Err(anyhow::Error::from(e).context(format!(
                        "installing the full bundle {full} after {spec} failed ({first:#})"
                    )))
                }
            }
        }
    };
    if json {
        println!("{}", serde_json::to_string_pretty(&done)?);
    } else {
        println!(
            "installed {} into slot {}{how}: it boots next, on trial ({tries} tries); the \
             health gate commits it",
            done.version, done.target
        );
    }
    Ok(0)
}

/// Whether a failed install may succeed with the release's full bundle: not when this device
/// or this command is the problem (the lock is held, the device's files or board are not
/// what an install needs, plain HTTP without `--insecure-http`, no CA bundle).
fn may_fall_back(e: &anyhow::Error) -> bool {
    !matches!(
        e.downcast_ref::<UpdateError>(),
        Some(
            UpdateError::AlreadyInstalled { .. }
                | UpdateError::Lock(_)
                | UpdateError::Facts(_)
                | UpdateError::Store(_)
                | UpdateError::UnknownBootedSlot { .. }
                | UpdateError::UnsupportedBoard { .. }
                | UpdateError::InsecureSource { .. }
                | UpdateError::Tls { .. }
        )
    )
}

/// The full bundle a delta bundle's name puts beside it: `update-from-V.bundle` (made by
/// `aperture bundle --from`) beside `update.bundle`, and `NAME.from-V.bundle` (a release
/// repository's target) beside `NAME.bundle`. `None` for any other name.
pub fn full_bundle_beside(spec: &str) -> Option<String> {
    let cut = spec.rfind('/').map_or(0, |i| i + 1);
    let (dir, name) = spec.split_at(cut);
    if name.contains(['?', '#']) {
        return None;
    }
    let stem = name.strip_suffix(".bundle")?;
    let full = if let Some(version) = stem.strip_prefix("update-from-") {
        semver::Version::parse(version).ok()?;
        "update".to_string()
    } else {
        let (release, version) = stem.rsplit_once(".from-")?;
        semver::Version::parse(version).ok()?;
        if release.is_empty() {
            return None;
        }
        release.to_string()
    };
    Some(format!("{dir}{full}.bundle"))
}

fn install_one(
    u: &mut Updater,
    spec: &str,
    fetch: &FetchArgs,
    tries: u32,
    lock_wait: Duration,
) -> Result<crate::Installed, UpdateError> {
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
    u.install(&mut input, &install_opts)
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
            fallback,
            fetch,
            tries,
            json,
        } => install(
            &mut u,
            source,
            fallback.as_deref(),
            fetch,
            *tries,
            *json,
            Duration::ZERO,
        ),
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
            install(
                &mut u,
                &source,
                None,
                &fetch,
                j.tries,
                false,
                RESUME_LOCK_WAIT,
            )
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

    #[test]
    fn a_deltas_full_bundle_is_named_by_the_deltas_name() {
        let beside = super::full_bundle_beside;
        assert_eq!(
            beside("out/v2/update-from-1.0.0.bundle").as_deref(),
            Some("out/v2/update.bundle")
        );
        assert_eq!(
            beside("https://repo:8443/targets/edge-1.1.0.stable.from-1.0.0-rc.1.bundle").as_deref(),
            Some("https://repo:8443/targets/edge-1.1.0.stable.bundle")
        );
        assert_eq!(beside("a.from-1.0.0.bundle").as_deref(), Some("a.bundle"));
        for no in [
            "update.bundle",
            "edge-1.1.0.stable.bundle",
            "x.from-latest.bundle",
            ".from-1.0.0.bundle",
            "update-from-1.0.bundle",
            "https://h/t/a.from-1.0.0.bundle?sig=1",
            "a.from-1.0.0.bundle.zst",
        ] {
            assert_eq!(beside(no), None, "{no}");
        }
    }
}
