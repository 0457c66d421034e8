//! Our device programs, cross-built from this workspace for the board's target and installed
//! into the image.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use aperture_sys::Cmd;

use super::layer::Layer;
use crate::progress::Step;
use crate::recipe::Recipe;

/// The cargo target folder for device builds. It is separate from the workspace's own so a
/// build started from inside `cargo test` (which holds that folder's lock) does not deadlock.
pub fn target_dir(workspace: &Path) -> PathBuf {
    workspace.join("target").join("device")
}

/// The package and binary that holds every device program (`device/multicall`).
pub const MULTICALL: &str = "aperture-device";

/// The cargo features of [`MULTICALL`] that select the recipe's programs, comma-separated: what
/// [`build`] compiles and what the SBOM lists the crates of.
pub fn features(recipe: &Recipe) -> String {
    let names: Vec<&str> = recipe
        .components
        .device
        .iter()
        .map(|p| p.feature())
        .collect();
    names.join(",")
}

/// Build the recipe's programs in release mode for the board, as one binary holding exactly
/// them (`aperture-device` with one cargo feature per program); returns its path. Another
/// architecture's build goes through Debian's cross compilers (`.cargo/config.toml`): the
/// programs link no system library beyond libc and libstdc++ (OpenH264's C++).
///
/// `cargo xtask test` runs this same command for the default recipe beside tier 1
/// (`xtask/src/programs.rs`): a change to it here belongs there too, or CI compiles twice.
pub fn build(recipe: &Recipe, workspace: &Path, step: &Step<'_>) -> Result<Option<PathBuf>> {
    if recipe.components.device.is_empty() {
        return Ok(None);
    }
    let triple = recipe.base.architecture.rust_target();
    let target = target_dir(workspace);
    // Paths in panic messages name the workspace, not the build host's home.
    let rustflags = format!("--remap-path-prefix={}=/aperture", workspace.display());
    Cmd::cargo()
        .current_dir(workspace)
        .env("CARGO_TARGET_DIR", &target)
        .env("RUSTFLAGS", &rustflags)
        .args(["build", "--release", "--target", triple])
        .args(["--package", MULTICALL, "--bin", MULTICALL])
        .args(["--no-default-features", "--features", &features(recipe)])
        .stream(|l| step.line(l))
        .with_context(|| format!("building device programs for {triple}"))?;
    let bin = target.join(triple).join("release").join(MULTICALL);
    if !bin.is_file() {
        bail!("cargo reported success but {} is missing", bin.display());
    }
    step.note(format!(
        "{} for {triple}, in one binary ({MULTICALL}, {:.1} MiB)",
        recipe
            .components
            .device
            .iter()
            .map(|p| p.binary())
            .collect::<Vec<_>>()
            .join(", "),
        std::fs::metadata(&bin).map_or(0, |m| m.len()) as f64 / (1024.0 * 1024.0)
    ));
    Ok(Some(bin))
}

/// Install the built binary as `/usr/bin/aperture-device` with a link named after each of
/// the recipe's programs.
pub fn install(layer: &Layer<'_>, recipe: &Recipe, bin: Option<&Path>) -> Result<()> {
    let Some(bin) = bin else {
        return Ok(());
    };
    let usr_bin = Path::new("usr/bin");
    layer.copy_file(&usr_bin.join(MULTICALL), bin, 0o755, 0, 0)?;
    for p in &recipe.components.device {
        layer.symlink(&usr_bin.join(p.binary()), MULTICALL)?;
    }
    Ok(())
}
