//! `cargo xtask`: parse arguments, run the preflight, then run the host CLI or the test tiers.

mod cmd;
mod preflight;
mod test;

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result};
use clap::Parser;
use xtask::args::{Cli, Command as Verb, DEFAULT_RECIPE};

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
    let needs = match &cli.command {
        Verb::Test(args) => return test::run(&root, args),
        Verb::Build(b) => preflight::Needs::build(recipe_is_arm64(&root, &b.recipe)?),
        Verb::Vm(_) => {
            let mut n = preflight::Needs::vm(false);
            n.packages.extend(preflight::Needs::host_cli().packages);
            n
        }
        Verb::Bench(_) => preflight::Needs::bench(),
        Verb::Flash(_)
        | Verb::Keys(_)
        | Verb::Verify(_)
        | Verb::Diff(_)
        | Verb::Bundle(_)
        | Verb::Audit(_) => preflight::Needs::host_cli(),
    };
    preflight::ensure(&needs)?;
    let status = host_cli(&root)?
        .args(std::env::args_os().skip(1))
        .status()
        .context("starting the host CLI")?;
    std::process::exit(status.code().unwrap_or(1));
}

/// Compile the host CLI (it links libostree, now present) and return a command that runs it.
pub(crate) fn host_cli(root: &Path) -> Result<Command> {
    cmd::run(Command::new(env!("CARGO")).current_dir(root).args([
        "build",
        "--quiet",
        "--package",
        "aperture-cli",
        "--bin",
        "aperture",
    ]))
    .context("building the host CLI")?;
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target"));
    let mut c = Command::new(target.join("debug").join("aperture"));
    c.env("APERTURE_WORKSPACE", root);
    Ok(c)
}

/// Whether a recipe (following `include`) names an arm64 board, so the preflight adds cross
/// tools. The full validation happens later, in the host CLI.
fn recipe_is_arm64(root: &Path, recipe: &Path) -> Result<bool> {
    let mut path = if recipe.exists() || recipe != Path::new(DEFAULT_RECIPE) {
        recipe.to_path_buf()
    } else {
        root.join(DEFAULT_RECIPE)
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
            return Ok(board.contains("arm64") || board.starts_with("jetson"));
        }
        match table.get("include").and_then(|i| i.as_str()) {
            Some(inc) => path = path.parent().unwrap_or(Path::new(".")).join(inc),
            None => return Ok(false),
        }
    }
    Ok(false)
}
