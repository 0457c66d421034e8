//! `bench reset`: how long the level 3 wipe of a data partition takes, for a 1 GiB and a
//! 4 GiB partition, scrubbed by discard and by overwrite, `runs` times each, with one table of
//! median seconds and GB/s.
//!
//! Each run is one `wipe_timer` (an example program of the device crate aperture-reset, so
//! this host crate does not link the device programs): a fresh sparse backing file and loop
//! device, filled with a non-zero pattern and formatted as LUKS2 outside the timing, then
//! exactly what aperture-reset runs for one volume. Needs root (losetup) and cryptsetup.

use std::fs;
use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use aperture_sys::Cmd;

use crate::table::{print_table, Row};

const GIB: u64 = 1 << 30;

/// The median of `v` (the upper one of an even count).
pub(crate) fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Build the timer (release, like the programs in an image) and return its path.
fn timer() -> Result<PathBuf> {
    let ws = crate::workspace();
    Cmd::cargo()
        .current_dir(&ws)
        .args([
            "build",
            "--release",
            "--package",
            "aperture-reset",
            "--example",
            "wipe_timer",
        ])
        .run_inherited()
        .context("building aperture-reset's wipe_timer")?;
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| ws.join("target"));
    Ok(target.join("release/examples/wipe_timer"))
}

/// Run `bench reset`.
pub fn run(runs: u32) -> Result<()> {
    let uid = Cmd::new("id").arg("-u").run()?.stdout_text();
    if uid.trim() != "0" {
        bail!("bench reset needs root (loop devices): run `sudo cargo xtask bench reset`");
    }
    let missing: Vec<&str> = ["losetup", "blkdiscard", "cryptsetup"]
        .into_iter()
        .filter(|t| aperture_sys::tool::find(t).is_none())
        .collect();
    if !missing.is_empty() {
        bail!(
            "bench reset needs {}: apt-get install util-linux cryptsetup-bin",
            missing.join(", ")
        );
    }
    let timer = timer()?;
    let runs = runs.max(1);
    let dir = crate::workspace().join("target/bench-reset");
    fs::create_dir_all(&dir)?;
    let mut rows = Vec::new();
    for size in [GIB, 4 * GIB] {
        for mode in ["discard", "overwrite"] {
            let mut times = Vec::new();
            for i in 0..runs {
                eprintln!(
                    "bench reset: {} GiB by {mode}, run {}/{runs}",
                    size / GIB,
                    i + 1
                );
                let out = Cmd::new(&timer)
                    .arg(&dir)
                    .arg(size.to_string())
                    .arg(mode)
                    .run()?;
                let v: serde_json::Value = serde_json::from_slice(&out.stdout)
                    .with_context(|| format!("the output of {}", timer.display()))?;
                if v["method"] != mode {
                    bail!("{mode}: the wipe fell back to {}", v["method"]);
                }
                times.push(v["seconds"].as_f64().context("seconds")?);
            }
            let best = times.iter().copied().fold(f64::INFINITY, f64::min);
            let med = median(times);
            rows.push(Row {
                name: format!("{} GiB, {mode}", size / GIB),
                cells: vec![
                    format!("{med:.2}"),
                    format!("{best:.2}"),
                    format!("{:.2}", size as f64 / 1e9 / med.max(1e-9)),
                ],
            });
        }
    }
    print_table(
        &format!(
            "reset level 3 wipe of one data partition (loop device on a sparse file; cryptsetup \
             erase + LUKS header area zeroed + scrub; median of {runs})"
        ),
        &["partition, scrub", "median s", "best s", "GB/s"],
        &rows,
    );
    Ok(())
}
