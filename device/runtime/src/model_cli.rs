//! `aperture-runtime model ...`: install a signed model bundle into the model store, show the
//! store, switch back by hand. Run as root on the appliance; the store and the root key come
//! from the runtime's config (`models_dir`, `root_key`).

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use aperture_sys::cmd::Cmd;
use aperture_trust::keys::PublicKey;
use clap::{Parser, Subcommand};

use crate::config::Config;
use crate::store::{InstallOptions, Installed, Store};

/// The runtime's config on the appliance.
pub const DEFAULT_CONFIG: &str = "/etc/aperture/runtime.toml";
/// The runtime's unit, restarted after a change so it loads the new model.
pub const UNIT: &str = "aperture-runtime.service";

/// `aperture-runtime model`.
#[derive(Debug, Parser)]
#[command(name = "aperture-runtime model", about = "The runtime's model store")]
pub struct ModelArgs {
    /// What to do.
    #[command(subcommand)]
    pub command: ModelCommand,
}

/// The verbs.
#[derive(Debug, Subcommand)]
pub enum ModelCommand {
    /// Verify a model bundle against the device's root key, unpack it into the store and make
    /// it current, then restart the runtime (which switches back if its self-test fails).
    Install {
        /// The bundle (`aperture model bundle` makes one).
        bundle: PathBuf,
        /// The runtime's config (for `models_dir` and `root_key`).
        #[arg(long, default_value = DEFAULT_CONFIG)]
        config: PathBuf,
        /// Do not restart aperture-runtime.service afterwards.
        #[arg(long)]
        no_restart: bool,
        /// Install even a version older than or equal to the current model's.
        #[arg(long)]
        insecure_allow_downgrade: bool,
    },
    /// Show the current and previous models and the rejected ones.
    Status {
        /// The runtime's config.
        #[arg(long, default_value = DEFAULT_CONFIG)]
        config: PathBuf,
        /// Print JSON on stdout.
        #[arg(long)]
        json: bool,
    },
    /// Switch back to the previous model (or to the built-in one), then restart the runtime.
    Rollback {
        /// The runtime's config.
        #[arg(long, default_value = DEFAULT_CONFIG)]
        config: PathBuf,
        /// Do not restart aperture-runtime.service afterwards.
        #[arg(long)]
        no_restart: bool,
    },
}

/// `aperture-runtime model ARGS...` (`args` starts with `model`): the exit code.
pub fn main(args: Vec<OsString>) -> i32 {
    let parsed = match ModelArgs::try_parse_from(args) {
        Ok(p) => p,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() { 2 } else { 0 };
        }
    };
    match run(&parsed, &mut |line| println!("{line}")) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("aperture-runtime model: {e}");
            1
        }
    }
}

fn store_of(config: &Path) -> Result<(Config, Store), String> {
    let c = Config::load(config)?;
    let dir = c.models_dir.clone().ok_or_else(|| {
        format!(
            "the runtime config {} has no models_dir: add models_dir = \
             \"/var/lib/aperture-runtime/models\" to use model bundles",
            config.display()
        )
    })?;
    Ok((c, Store::new(dir)))
}

fn describe(m: &Option<Installed>) -> String {
    match m {
        Some(m) => format!("{} {} ({})", m.name, m.version, m.digest),
        None => "the built-in model".into(),
    }
}

/// Run a parsed command; `out` takes the lines for stdout.
pub fn run(args: &ModelArgs, out: &mut dyn FnMut(&str)) -> Result<(), String> {
    match &args.command {
        ModelCommand::Install {
            bundle,
            config,
            no_restart,
            insecure_allow_downgrade,
        } => {
            let (c, store) = store_of(config)?;
            let key = c.root_key();
            let root = PublicKey::load(&key).map_err(|e| {
                format!(
                    "the root key {} that model bundles are verified against: {e}",
                    key.display()
                )
            })?;
            if *insecure_allow_downgrade {
                eprintln!(
                    "aperture-runtime model: WARNING: --insecure-allow-downgrade: an older \
                     model may be installed"
                );
            }
            let opts = InstallOptions {
                now: aperture_trust::now_unix(),
                insecure_allow_downgrade: *insecure_allow_downgrade,
                stop_after: None,
            };
            let (m, already) = store
                .install(bundle, &root, &opts)
                .map_err(|e| e.to_string())?;
            if already {
                eprintln!(
                    "{}: model {} {} ({}) is current already; nothing changed",
                    bundle.display(),
                    m.name,
                    m.version,
                    m.digest
                );
                return Ok(());
            }
            eprintln!(
                "{}: installed model {} {} as {}",
                bundle.display(),
                m.name,
                m.version,
                m.dir.display()
            );
            out(&m.digest);
            restart(*no_restart)
        }
        ModelCommand::Status { config, json } => {
            let (_, store) = store_of(config)?;
            let s = store.status().map_err(|e| e.to_string())?;
            if *json {
                out(&serde_json::to_string_pretty(&s).map_err(|e| e.to_string())?);
                return Ok(());
            }
            out(&format!("store:    {}", s.store.display()));
            out(&format!("current:  {}", describe(&s.current)));
            let previous = match &s.previous {
                Some(_) => describe(&s.previous),
                None => "none".into(),
            };
            out(&format!("previous: {previous}"));
            for r in &s.rejected {
                out(&format!(
                    "rejected: {} {} ({}): {}",
                    r.name, r.version, r.digest, r.reason
                ));
            }
            Ok(())
        }
        ModelCommand::Rollback { config, no_restart } => {
            let (_, store) = store_of(config)?;
            let now = store.rollback().map_err(|e| e.to_string())?;
            let now = now
                .map(|d| store.installed(&d).map(Some))
                .transpose()
                .map_err(|e| e.to_string())?
                .flatten();
            eprintln!("switched to {}", describe(&now));
            restart(*no_restart)
        }
    }
}

fn restart(no_restart: bool) -> Result<(), String> {
    if no_restart {
        eprintln!(
            "not restarting {UNIT} (--no-restart): the runtime loads the model when it next starts"
        );
        return Ok(());
    }
    Cmd::new("systemctl")
        .args(["try-restart", UNIT])
        .run()
        .map(drop)
        .map_err(|e| format!("restarting the runtime: {e}"))?;
    eprintln!("restarted {UNIT}: see `aperture-runtime model status` and its journal");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn the_arguments_are_consistent() {
        ModelArgs::command().debug_assert();
        let a =
            ModelArgs::try_parse_from(["model", "install", "/tmp/b.tar", "--no-restart"]).unwrap();
        match a.command {
            ModelCommand::Install {
                bundle,
                config,
                no_restart,
                insecure_allow_downgrade,
            } => {
                assert_eq!(bundle, Path::new("/tmp/b.tar"));
                assert_eq!(config, Path::new(DEFAULT_CONFIG));
                assert!(no_restart && !insecure_allow_downgrade);
            }
            other => panic!("{other:?}"),
        }
    }
}
