//! Shared fixtures of the privileged (tier 2) and VM (tier 3) suites.
//!
//! Both suites are `#[ignore]`d with the reason in the attribute, so `cargo test --workspace`
//! lists them as ignored; `cargo xtask test` runs them as root with `--ignored`. Builds go to
//! `target/aperture-tests/`, shared by both suites so the VM tier boots what tier 2 built.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Result;
use aperture_image::pipeline::{self, BuildOptions, BuildReport};
use aperture_image::progress::Reporter;

/// The workspace root.
pub fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("tests/ is one level down").to_path_buf()
}

/// Where the suites put their builds.
pub fn test_root() -> PathBuf {
    workspace().join("target").join("aperture-tests")
}

/// True when running as root; otherwise print why the test is skipped.
pub fn require_root(test: &str) -> bool {
    let root = std::process::Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false);
    if !root {
        eprintln!("SKIPPED {test}: needs root (loop devices, mmdebstrap in root mode); run `sudo cargo xtask test`");
    }
    root
}

/// A recipe path in the workspace.
pub fn recipe(name: &str) -> PathBuf {
    workspace().join("recipes").join(name)
}

/// Build `recipe` into `out` (whose parent holds the store and caches); returns the report and
/// the wall time.
pub fn build(recipe: &Path, out: &Path, rootfs_only: bool) -> Result<(BuildReport, Duration)> {
    let opts = BuildOptions {
        workspace: workspace(),
        recipe: recipe.to_path_buf(),
        out: Some(out.to_path_buf()),
        cache: None,
        rootfs_only,
    };
    let rep = Reporter::new(None)?;
    let t = Instant::now();
    let report = pipeline::build(&opts, &rep)?;
    Ok((report, t.elapsed()))
}

/// Write a recipe that includes `base` (a workspace recipe) with extra TOML lines, into `dir`.
pub fn derived_recipe(dir: &Path, name: &str, base: &str, extra: &str) -> Result<PathBuf> {
    std::fs::create_dir_all(dir)?;
    let path = dir.join(name);
    std::fs::write(&path, format!("include = \"{}\"\n{extra}", recipe(base).display()))?;
    Ok(path)
}
