//! Our device programs, cross-built from this workspace for the board's target and installed
//! into the image.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use aperture_sys::Cmd;

use super::layer::Layer;
use crate::progress::Step;
use crate::recipe::{DeviceProgram, Recipe};

/// The cargo target folder for device builds. It is separate from the workspace's own so a
/// build started from inside `cargo test` (which holds that folder's lock) does not deadlock.
pub fn target_dir(workspace: &Path) -> PathBuf {
    workspace.join("target").join("device")
}

/// Build the recipe's programs in release mode for the board; returns (program, binary path).
pub fn build(
    recipe: &Recipe,
    workspace: &Path,
    step: &Step<'_>,
) -> Result<Vec<(DeviceProgram, PathBuf)>> {
    if recipe.components.device.is_empty() {
        return Ok(Vec::new());
    }
    let triple = recipe.base.architecture.rust_target();
    let target = target_dir(workspace);
    let mut c = Cmd::cargo()
        .current_dir(workspace)
        .env("CARGO_TARGET_DIR", &target)
        // Paths in panic messages name the workspace, not the build host's home.
        .env(
            "RUSTFLAGS",
            format!("--remap-path-prefix={}=/aperture", workspace.display()),
        )
        .args(["build", "--release", "--target", triple]);
    for p in &recipe.components.device {
        c = c.args(["--package", p.package(), "--bin", p.binary()]);
    }
    c.stream(|l| step.line(l))
        .with_context(|| format!("building device programs for {triple}"))?;
    let mut out = Vec::new();
    for p in &recipe.components.device {
        let bin = target.join(triple).join("release").join(p.binary());
        if !bin.is_file() {
            bail!("cargo reported success but {} is missing", bin.display());
        }
        out.push((*p, bin));
    }
    step.note(format!(
        "{} for {triple}",
        recipe
            .components
            .device
            .iter()
            .map(|p| p.binary())
            .collect::<Vec<_>>()
            .join(", ")
    ));
    Ok(out)
}

/// Install built programs into `/usr/bin`.
pub fn install(layer: &Layer<'_>, programs: &[(DeviceProgram, PathBuf)]) -> Result<()> {
    for (p, bin) in programs {
        layer.copy_file(&Path::new("usr/bin").join(p.binary()), bin, 0o755, 0, 0)?;
    }
    Ok(())
}
