//! `cargo xtask`: parse the verb, run the preflight, then run the test tiers or the host
//! program that does the verb (`aperture`; `aperture-bench` for `bench`; `aperture-fleet` for
//! `provision`).

mod fuzz;
mod lanes;
mod preflight;
mod programs;
mod test;

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{Context, Result};
use aperture_sys::Cmd;
use clap::Parser;
use xtask::args::{recipe_arg, Cli, Command as Verb, DEFAULT_RECIPE};

fn main() {
    let cli = Cli::parse();
    if let Err(e) = run(cli) {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

/// The workspace root, from where cargo built this program.
fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives one level below the workspace root")
        .to_path_buf()
}

fn run(cli: Cli) -> Result<()> {
    let root = workspace_root();
    let args = match cli.command {
        Verb::Test(args) => return test::run(&root, &args),
        Verb::Fuzz(args) => return fuzz::run(&root, &args),
        Verb::Other(args) => args,
    };
    let verb = args
        .first()
        .map(|v| v.to_string_lossy().into_owned())
        .unwrap_or_default();
    let rest = &args[1..];
    let help = rest.iter().any(|a| a == "--help" || a == "-h");
    let (needs, program) = match verb.as_str() {
        "build" if !help => {
            let recipe = recipe_arg(rest).unwrap_or_else(|| PathBuf::from(DEFAULT_RECIPE));
            (
                preflight::Needs::build(recipe_is_arm64(&root, &recipe)?),
                Program::Aperture,
            )
        }
        "vm" if !help => {
            let mut n = preflight::Needs::vm(false);
            n.packages.extend(preflight::Needs::host_cli().packages);
            (n, Program::Aperture)
        }
        "bench" => (preflight::Needs::bench(), Program::Bench),
        // The fleet server's admin command line: no libostree, nothing to install.
        "provision" => (preflight::Needs::default(), Program::Fleet),
        // Flashing Jetsons in recovery mode runs NVIDIA's QSPI writer over ssh in its initrd.
        "flash" if rest.iter().any(|a| a.to_string_lossy().contains("jetson:")) => {
            let mut n = preflight::Needs::host_cli();
            n.packages.insert("sshpass");
            (n, Program::Aperture)
        }
        _ => (preflight::Needs::host_cli(), Program::Aperture),
    };
    preflight::ensure(&needs)?;
    let mut c = host_program(&root, program)?;
    // `bench` is the benchmark program's name, not one of its arguments.
    let pass: &[OsString] = if program == Program::Bench {
        rest
    } else {
        &args
    };
    let status = c.args(pass).status().context("starting the host program")?;
    std::process::exit(status.code().unwrap_or(1));
}

/// A program of the host crates that `cargo xtask` runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Program {
    /// `aperture` (host/cli).
    Aperture,
    /// `aperture-bench` (host/bench).
    Bench,
    /// `aperture-fleet` (host/fleet), for `provision`.
    Fleet,
}

/// Compile a host program (it links libostree, present after the preflight) and return a
/// command that runs it. The first compile on a new machine takes minutes, so say so.
pub(crate) fn host_program(root: &Path, program: Program) -> Result<Command> {
    let (package, bin) = match program {
        Program::Aperture => ("aperture-cli", "aperture"),
        Program::Bench => ("aperture-bench", "aperture-bench"),
        Program::Fleet => ("aperture-fleet", "aperture-fleet"),
    };
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target"));
    let exe = target.join("debug").join(bin);
    if !exe.exists() {
        eprintln!(
            "xtask: compiling `{bin}` and its dependencies (libostree bindings, zstd, TLS, ...): \
             about 5-10 minutes on a 2-core machine the first time, seconds afterwards"
        );
    }
    let t = Instant::now();
    let mut build =
        Cmd::cargo()
            .current_dir(root)
            .args(["build", "--package", package, "--bin", bin]);
    if program == Program::Bench {
        // `bench fleet` runs the fleet server as processes of its own, found beside the bench.
        build = build.args(["--package", "aperture-fleet", "--bin", "aperture-fleet"]);
    }
    build
        .run_inherited()
        .with_context(|| format!("building {bin}"))?;
    if t.elapsed().as_secs() > 20 {
        eprintln!("xtask: {bin} compiled in {:.0?}", t.elapsed());
    }
    let mut c = Command::new(exe);
    c.env("APERTURE_WORKSPACE", root);
    c.env("APERTURE_PYTHON_TOOLS", preflight::PYTHON_TOOLS);
    // The ONNX Runtime libraries images with the inference runtime ship, one per architecture
    // (fetched and checked by the preflight), unless the caller names one.
    for (var, lib) in preflight::onnxruntime_env() {
        if std::env::var_os(&var).is_none() {
            c.env(var, lib);
        }
    }
    Ok(c)
}

/// Whether a recipe (following `include`) names an arm64 board, so the preflight adds cross
/// tools. The full validation happens later, in the host CLI.
fn recipe_is_arm64(root: &Path, recipe: &Path) -> Result<bool> {
    let mut path = if recipe.is_absolute() || recipe.exists() {
        recipe.to_path_buf()
    } else {
        root.join(recipe)
    };
    for _ in 0..8 {
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("reading recipe {}", path.display()))?;
        // A syntax error is reported properly by the host CLI; here it only means "no cross tools".
        let Ok(table) = text.parse::<toml::Table>() else {
            return Ok(false);
        };
        let arch = table
            .get("base")
            .and_then(|b| b.get("architecture"))
            .and_then(|a| a.as_str());
        if let Some(arch) = arch {
            return Ok(arch == "arm64");
        }
        if let Some(board) = table.get("board").and_then(|b| b.as_str()) {
            // An unknown board is reported by the host CLI with the list of known ones.
            return Ok(board
                .parse::<aperture_appliance::Board>()
                .is_ok_and(|b| b.arch() == aperture_appliance::Arch::Arm64));
        }
        match table.get("include").and_then(|i| i.as_str()) {
            Some(inc) => path = path.parent().unwrap_or(Path::new(".")).join(inc),
            None => return Ok(false),
        }
    }
    Ok(false)
}
