//! `bench build`: cold and warm builds of the default recipe against mkosi building the same
//! Debian packages.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use crate::table::{print_table, Row};
use crate::DEFAULT_RECIPE;
use anyhow::{bail, Context, Result};
use aperture_image::pipeline::{self, BuildOptions};
use aperture_image::progress::Reporter;
use aperture_image::recipe::Recipe;

/// Run `bench build`.
pub fn run(runs: u32) -> Result<()> {
    build(runs)
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn mib(bytes: u64) -> String {
    format!("{:.1}", bytes as f64 / (1 << 20) as f64)
}

fn size_of(p: &Path) -> u64 {
    std::fs::metadata(p).map(|m| m.len()).unwrap_or(0)
}

fn aperture_build(ws: &Path, out: &Path, rootfs_only: bool) -> Result<Duration> {
    let opts = BuildOptions {
        workspace: ws.to_path_buf(),
        recipe: ws.join(DEFAULT_RECIPE),
        out: Some(out.to_path_buf()),
        cache: None,
        rootfs_only,
        release: false,
        insecure_dev_keys: false,
        insecure_skip_audit: false,
        bsp: None,
    };
    let rep = Reporter::new(None)?;
    let t = Instant::now();
    pipeline::build(&opts, &rep)?;
    Ok(t.elapsed())
}

/// A mkosi 14 configuration for the same packages as the recipe. mkosi's disk formats mount a
/// vfat ESP from a partitioned loop device, which hosts without partition scanning cannot do,
/// so it builds the rootfs as a tar archive: the comparable stage of our pipeline is the rootfs
/// commit, and the table says so.
fn mkosi_conf(recipe: &Recipe) -> String {
    format!(
        "[Distribution]\nDistribution=debian\nRelease={}\nMirror={}\n\n[Output]\nFormat=tar\nBootable=no\nOutput=image.tar\nIncremental=yes\nCache=mkosi.cache\n\n[Content]\nWithDocs=yes\nPackages={}\n",
        recipe.base.suite,
        recipe.base.mirror,
        recipe.all_packages().join(",")
    )
}

fn mkosi_build(dir: &Path) -> Result<Duration> {
    let t = Instant::now();
    let out = Command::new("mkosi")
        .current_dir(dir)
        .args(["--force", "build"])
        .output()
        .context("running mkosi")?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        let tail: Vec<&str> = err.lines().rev().take(8).collect();
        bail!(
            "mkosi failed: {}",
            tail.into_iter().rev().collect::<Vec<_>>().join("\n")
        );
    }
    Ok(t.elapsed())
}

fn build(runs: u32) -> Result<()> {
    let ws = crate::workspace();
    let recipe = Recipe::load(&ws.join(DEFAULT_RECIPE))?;
    let root = ws.join("target/bench/build");
    let _ = std::fs::remove_dir_all(&root);
    std::fs::create_dir_all(&root)?;
    let runs = runs.max(1);

    eprintln!("bench build: Aperture cold (empty store and caches)");
    let out = root.join("aperture/out/default");
    let cold = aperture_build(&ws, &out, false)?;
    let mut warm = Vec::new();
    for i in 0..runs {
        eprintln!("bench build: Aperture warm, run {}/{runs}", i + 1);
        warm.push(aperture_build(&ws, &out, false)?);
    }
    let rootfs_out = root.join("aperture-rootfs/out/default");
    eprintln!("bench build: Aperture rootfs stage only, cold");
    let rcold = aperture_build(&ws, &rootfs_out, true)?;
    let mut rwarm = Vec::new();
    for i in 0..runs {
        eprintln!(
            "bench build: Aperture rootfs stage only, warm, run {}/{runs}",
            i + 1
        );
        rwarm.push(aperture_build(&ws, &rootfs_out, true)?);
    }

    let mut rows = vec![
        Row {
            name: "aperture (signed disk image, bundle)".into(),
            cells: vec![
                format!("{:.1}", cold.as_secs_f64()),
                format!("{:.1}", median(warm.clone()).as_secs_f64()),
                "1.00".into(),
            ],
        },
        Row {
            name: "aperture (rootfs commit only)".into(),
            cells: vec![
                format!("{:.1}", rcold.as_secs_f64()),
                format!("{:.1}", median(rwarm.clone()).as_secs_f64()),
                "-".into(),
            ],
        },
    ];

    let mkosi_dir = root.join("mkosi");
    std::fs::create_dir_all(&mkosi_dir)?;
    std::fs::write(mkosi_dir.join("mkosi.conf"), mkosi_conf(&recipe))?;
    let have_mkosi = Command::new("mkosi")
        .arg("--version")
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    let mut mkosi_sizes: Vec<(String, u64)> = Vec::new();
    if have_mkosi {
        eprintln!("bench build: mkosi cold (empty cache)");
        match mkosi_build(&mkosi_dir) {
            Ok(mcold) => {
                let mut mwarm = Vec::new();
                for i in 0..runs {
                    eprintln!(
                        "bench build: mkosi warm (incremental cache), run {}/{runs}",
                        i + 1
                    );
                    mwarm.push(mkosi_build(&mkosi_dir)?);
                }
                let mw = median(mwarm);
                rows.push(Row {
                    name: "mkosi 14 (rootfs tar)".into(),
                    cells: vec![
                        format!("{:.1}", mcold.as_secs_f64()),
                        format!("{:.1}", mw.as_secs_f64()),
                        format!(
                            "{:.2}",
                            mw.as_secs_f64() / median(warm.clone()).as_secs_f64()
                        ),
                    ],
                });
                mkosi_sizes.push(("image.tar".into(), size_of(&mkosi_dir.join("image.tar"))));
            }
            Err(e) => eprintln!("mkosi does not run here: {e:#}"),
        }
    } else {
        eprintln!(
            "mkosi is not installed (cargo xtask bench installs it as root); its row is left out"
        );
    }
    print_table(
        "Build times (seconds; warm = median of runs; ratio = peer warm / aperture warm)",
        &["tool", "cold s", "warm s", "warm ratio"],
        &rows,
    );

    let mut size_rows: Vec<Row> = Vec::new();
    for f in [
        "disk.img",
        "disk.img.zst",
        "disk.img.bmap",
        "rootfs.img",
        "update.bundle",
        "manifest.json",
        "manifest.sig",
        "sbom.spdx.json",
    ] {
        let p: PathBuf = out.join(f);
        let allocated = {
            use std::os::unix::fs::MetadataExt;
            std::fs::metadata(&p).map(|m| m.blocks() * 512).unwrap_or(0)
        };
        size_rows.push(Row {
            name: format!("aperture {f}"),
            cells: vec![mib(size_of(&p)), mib(allocated)],
        });
    }
    for (n, s) in mkosi_sizes {
        size_rows.push(Row {
            name: format!("mkosi {n}"),
            cells: vec![mib(s), mib(s)],
        });
    }
    print_table(
        "Output sizes (MiB)",
        &["output", "size", "allocated"],
        &size_rows,
    );
    Ok(())
}
