//! The default image's device programs, compiled beside tier 1.
//!
//! The first image build of a CI run (the privileged suite's) spends most of its time in one
//! step: the release build of `aperture-device` (LTO, OpenH264's C++, aws-lc), about four and a
//! half minutes on two cores, while its other long step (the Debian base) runs beside it.
//! Tier 1 leaves cycles idle (a link at a time at the end of its build, one test binary at a
//! time in its run), so `cargo xtask test` starts the same cargo command then, at the lowest
//! priority, in the folder the image pipeline builds in (`target/device`). The pipeline's own
//! build then finds it done, or waits on cargo's lock for the rest.
//!
//! The command must be the pipeline's (`aperture_image::rootfs::programs::build`) exactly:
//! the same features, target, `RUSTFLAGS` and environment, or cargo compiles again (which
//! costs time, never correctness). The features are read from the default recipe here.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use aperture_sys::Cmd;

use crate::test::{Background, Row};

/// The package and binary that hold every device program (`device/multicall`).
const MULTICALL: &str = "aperture-device";

/// The recipe's `[components] device` programs and its `[base] architecture`, read over its
/// include chain as the pipeline reads them (lists concatenated, the base's first; a scalar
/// from the last file that sets it).
fn read_chain(recipe: &Path, depth: usize) -> Result<(Vec<String>, Option<String>)> {
    if depth > 8 {
        bail!("{}: includes nest more than 8 deep", recipe.display());
    }
    let text =
        std::fs::read_to_string(recipe).with_context(|| format!("reading {}", recipe.display()))?;
    let table: toml::Table = text
        .parse()
        .with_context(|| format!("parsing {}", recipe.display()))?;
    let (mut device, mut arch) = match table.get("include").and_then(|v| v.as_str()) {
        Some(inc) => {
            let dir = recipe.parent().unwrap_or(Path::new("."));
            read_chain(&dir.join(inc), depth + 1)?
        }
        None => (Vec::new(), None),
    };
    if let Some(list) = table
        .get("components")
        .and_then(|c| c.get("device"))
        .and_then(|d| d.as_array())
    {
        device.extend(list.iter().filter_map(|v| v.as_str().map(str::to_string)));
    }
    if let Some(a) = table
        .get("base")
        .and_then(|b| b.get("architecture"))
        .and_then(|a| a.as_str())
    {
        arch = Some(a.to_string());
    }
    Ok((device, arch))
}

/// The default recipe's programs as `aperture-device` features (program `aperture-X` is
/// feature `X`, as `aperture_image::recipe::Program::feature` maps them) and its Rust target.
pub(crate) fn default_build(root: &Path) -> Result<(String, &'static str)> {
    let recipe = root.join(xtask::args::DEFAULT_RECIPE);
    let (device, arch) = read_chain(&recipe, 0)?;
    let mut features = Vec::new();
    for p in &device {
        let Some(f) = p.strip_prefix("aperture-") else {
            bail!(
                "{}: device program `{p}` is not named aperture-*",
                recipe.display()
            );
        };
        features.push(f);
    }
    if features.is_empty() {
        bail!("{}: no device programs", recipe.display());
    }
    let triple = match arch.as_deref() {
        Some("amd64") => "x86_64-unknown-linux-gnu",
        Some("arm64") => "aarch64-unknown-linux-gnu",
        other => bail!(
            "{}: architecture {other:?} is not amd64 or arm64",
            recipe.display()
        ),
    };
    Ok((features.join(","), triple))
}

/// The programs' build running in the background.
pub(crate) struct ProgramsPrebuild {
    child: Background,
    log: PathBuf,
    started: Instant,
}

/// Start the default image's programs build with `cargo` (the suites' cargo command, whose
/// environment the pipeline's nested cargo inherits) at the lowest priority; its output goes
/// to `target/aperture-tests/main/programs-prebuild.log`.
pub(crate) fn start(root: &Path, cargo: Cmd) -> Result<ProgramsPrebuild> {
    let (features, triple) = default_build(root)?;
    let dir = root.join("target/aperture-tests/main");
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let log = dir.join("programs-prebuild.log");
    let file =
        std::fs::File::create(&log).with_context(|| format!("creating {}", log.display()))?;
    let cmd = cargo
        .env("CARGO_TARGET_DIR", root.join("target/device"))
        .env(
            "RUSTFLAGS",
            format!("--remap-path-prefix={}=/aperture", root.display()),
        )
        .args(["build", "--release", "--target", triple])
        .args(["--package", MULTICALL, "--bin", MULTICALL])
        .args(["--no-default-features", "--features", &features])
        .wrapped("nice", ["-n", "19"]);
    let mut c = cmd.command();
    c.stdin(Stdio::null())
        .stdout(file.try_clone().context("log file")?)
        .stderr(file);
    let child = c.spawn().context("starting the device programs' build")?;
    eprintln!(
        "xtask test: building the default image's device programs ({features} for {triple}) in \
         the background, output in {}",
        log.display()
    );
    Ok(ProgramsPrebuild {
        child: Background(child),
        log,
        started: Instant::now(),
    })
}

impl ProgramsPrebuild {
    /// Wait for it; its row in the time table. A failure is reported and left to the image
    /// pipeline, which builds again and fails on the build's own error.
    pub(crate) fn wait(mut self) -> Row {
        let status = self.child.0.wait();
        let outcome = match status {
            Ok(s) if s.success() => "built beside tier 1".to_string(),
            other => {
                eprintln!(
                    "xtask test: the device programs' build in the background failed ({other:?}); \
                     its log is {}",
                    self.log.display()
                );
                format!(
                    "FAILED ({}); the image build compiles again",
                    self.log.display()
                )
            }
        };
        // Beside tier 1 and the privileged suite, whose rows count that time: shown, not summed.
        let took = self.started.elapsed().as_secs();
        Row {
            tier: 2,
            suite: "device programs, in the background".into(),
            outcome: format!("{outcome} ({}:{:02} from its start)", took / 60, took % 60),
            took: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_recipes_programs_are_read_over_its_includes() {
        let d = tempfile::tempdir().unwrap();
        let recipes = d.path().join("recipes");
        std::fs::create_dir_all(&recipes).unwrap();
        std::fs::write(
            recipes.join("common.toml"),
            "[base]\narchitecture = \"arm64\"\n[components]\ndevice = [\"aperture-agent\", \"aperture-update\"]\n",
        )
        .unwrap();
        std::fs::write(
            d.path().join(xtask::args::DEFAULT_RECIPE),
            "include = \"common.toml\"\n[base]\narchitecture = \"amd64\"\n[components]\ndevice = [\"aperture-runtime\"]\n",
        )
        .unwrap();
        assert_eq!(
            default_build(d.path()).unwrap(),
            (
                "agent,update,runtime".to_string(),
                "x86_64-unknown-linux-gnu"
            )
        );
        std::fs::write(
            recipes.join("common.toml"),
            "[components]\ndevice = [\"other\"]\n",
        )
        .unwrap();
        let e = default_build(d.path()).unwrap_err().to_string();
        assert!(e.contains("`other` is not named aperture-*"), "{e}");
    }

    #[test]
    fn the_real_default_recipe_builds_every_program_for_x86_64() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
        let (features, triple) = default_build(root).unwrap();
        assert_eq!(triple, "x86_64-unknown-linux-gnu");
        let mut f: Vec<&str> = features.split(',').collect();
        f.sort_unstable();
        assert_eq!(f, ["agent", "reset", "runtime", "storage", "update"]);
    }
}
