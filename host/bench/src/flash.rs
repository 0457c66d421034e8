//! `bench flash`: the default image written to a loop device by Aperture (signature check and
//! read-back included; from the `.zst` and from the raw image), `bmaptool copy` (from the same
//! two inputs),
//! `dd conv=sparse` and plain `dd`, in one run, `runs` times each, with a table of median
//! seconds, MB/s of mapped image data, and each tool's time over Aperture's.
//!
//! Fair by construction: every run gets a fresh sparse backing file and a fresh loop device,
//! every tool ends with its data synced to the backing file (Aperture and bmaptool fsync, dd
//! runs with `conv=fsync`), every tool starts after a `sync(2)` so that none pays for the
//! write-back of the one before it, the inputs are read once beforehand so all start from a
//! warm page cache, and every result is checked against the bmap afterwards, outside the
//! timing. Each tool's times are printed under the table.
//! Needs root (losetup).

use std::fs::{self, File};
use std::io;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use aperture_flash::{flash, BlockTarget, LoopDevice, NoProgress, VerifiedImage};

use crate::table::{print_table, Row};

/// One way of writing the image.
struct Tool {
    name: &'static str,
    input: &'static str,
    /// Whether the tool reads back what it wrote.
    reads_back: bool,
    /// The command, or `None` for Aperture itself.
    command: Option<fn(&Paths, &Path) -> Command>,
}

/// The files a run works on.
struct Paths {
    dir: PathBuf,
    disk: PathBuf,
    zst: PathBuf,
    bmap: PathBuf,
}

/// Run `bench flash` with `runs` runs per tool.
pub fn run(runs: u32) -> Result<()> {
    if !is_root() {
        bail!("`bench flash` writes to loop devices and needs root: run `sudo cargo xtask bench flash`");
    }
    let ws = crate::workspace();
    let dir = crate::default_build()?;
    let paths = Paths {
        disk: dir.join("disk.img"),
        zst: dir.join("disk.img.zst"),
        bmap: dir.join("disk.img.bmap"),
        dir,
    };
    for p in [&paths.disk, &paths.zst, &paths.bmap] {
        if !p.exists() {
            bail!(
                "{} does not exist: build the default image first with `cargo xtask build`",
                p.display()
            );
        }
    }
    let image = VerifiedImage::open(&paths.dir, None, aperture_trust::now_unix())
        .with_context(|| format!("verifying {}", paths.dir.display()))?;
    let image_size = image.image_size();
    let mapped = image.mapped_bytes();
    drop(image);

    let work = ws.join("target/bench/flash");
    fs::create_dir_all(&work)?;
    let backing = work.join("loop-backing.img");
    eprintln!("bench flash: warming the page cache with the inputs");
    for p in [&paths.zst, &paths.disk, &paths.bmap] {
        io::copy(&mut File::open(p)?, &mut io::sink())?;
    }

    let have_bmaptool = tool_exists("bmaptool");
    let tools = [
        Tool {
            name: "aperture flash",
            input: "disk.img.zst",
            reads_back: true,
            command: None,
        },
        Tool {
            name: "aperture flash",
            input: "disk.img",
            reads_back: true,
            command: None,
        },
        Tool {
            name: "bmaptool copy",
            input: "disk.img.zst",
            reads_back: false,
            command: Some(|p, dev| {
                let mut c = Command::new("bmaptool");
                c.args(["--quiet", "copy", "--bmap"])
                    .arg(&p.bmap)
                    .arg(&p.zst)
                    .arg(dev);
                c
            }),
        },
        Tool {
            name: "bmaptool copy",
            input: "disk.img",
            reads_back: false,
            command: Some(|p, dev| {
                let mut c = Command::new("bmaptool");
                c.args(["--quiet", "copy", "--bmap"])
                    .arg(&p.bmap)
                    .arg(&p.disk)
                    .arg(dev);
                c
            }),
        },
        Tool {
            name: "dd conv=sparse",
            input: "disk.img",
            reads_back: false,
            command: Some(|p, dev| dd(&p.disk, dev, "sparse,fsync")),
        },
        Tool {
            name: "dd",
            input: "disk.img",
            reads_back: false,
            command: Some(|p, dev| dd(&p.disk, dev, "fsync")),
        },
    ];

    let runs = runs.max(1);
    let mut times: Vec<Vec<Duration>> = vec![Vec::new(); tools.len()];
    for run in 1..=runs {
        for (i, tool) in tools.iter().enumerate() {
            if tool.command.is_some() && tool.name.starts_with("bmaptool") && !have_bmaptool {
                continue;
            }
            eprintln!(
                "bench flash: run {run}/{runs}: {} from {}",
                tool.name, tool.input
            );
            let _ = fs::remove_file(&backing);
            File::create(&backing)?.set_len(image_size)?;
            let dev = LoopDevice::attach(&backing)?;
            // The last tool's data (and the removed backing file) are written back first.
            rustix::fs::sync();
            let elapsed = time_tool(tool, &paths, dev.path())?;
            check_written(&paths, dev.path())
                .with_context(|| format!("{} wrote a wrong image", tool.name))?;
            dev.close()?;
            times[i].push(elapsed);
        }
    }
    let _ = fs::remove_file(&backing);

    // Each tool is compared with Aperture writing from the same input.
    let (Some(aperture_zst), Some(aperture_raw)) = (median(&times[0]), median(&times[1])) else {
        bail!("Aperture did not run");
    };
    let mut rows = Vec::new();
    for (tool, t) in tools.iter().zip(&times) {
        let Some(m) = median(t) else {
            rows.push(Row {
                name: format!("{} ({})", tool.name, tool.input),
                cells: vec!["-".into(), "-".into(), "-".into(), "not installed".into()],
            });
            continue;
        };
        let aperture = if tool.input == "disk.img" {
            aperture_raw
        } else {
            aperture_zst
        };
        rows.push(Row {
            name: format!("{} ({})", tool.name, tool.input),
            cells: vec![
                format!("{:.2}", m.as_secs_f64()),
                format!("{:.0}", mapped as f64 / 1e6 / m.as_secs_f64()),
                format!("{:.2}", m.as_secs_f64() / aperture.as_secs_f64()),
                if tool.reads_back { "yes" } else { "no" }.into(),
            ],
        });
    }
    print_table(
        &format!(
            "Flashing the default image ({:.0} MiB mapped of {:.0} MiB) to a loop device, median \
             of {runs} runs; MB/s of mapped data; ratio = tool time / aperture's time from the same \
             input (above 1: aperture is faster)",
            mapped as f64 / f64::from(1u32 << 20),
            image_size as f64 / f64::from(1u32 << 20),
        ),
        &["tool (input)", "seconds", "MB/s", "ratio", "read-back"],
        &rows,
    );
    for (tool, t) in tools.iter().zip(&times) {
        if !t.is_empty() {
            let each: Vec<String> = t
                .iter()
                .map(|d| format!("{:.2}s", d.as_secs_f64()))
                .collect();
            println!(
                "Per run, {} ({}): {}",
                tool.name,
                tool.input,
                each.join(" ")
            );
        }
    }
    Ok(())
}

/// Times one tool writing to `dev`; Aperture's time includes verifying the build folder.
fn time_tool(tool: &Tool, paths: &Paths, dev: &Path) -> Result<Duration> {
    let started = Instant::now();
    match tool.command {
        None => {
            let now = aperture_trust::now_unix();
            let image = if tool.input == "disk.img" {
                VerifiedImage::open_raw(&paths.dir, None, now)?
            } else {
                VerifiedImage::open(&paths.dir, None, now)?
            };
            let target = BlockTarget::open(dev)?;
            flash(&image, &target, &NoProgress)?;
        }
        Some(make) => {
            let mut cmd = make(paths, dev);
            let out = cmd
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .output()
                .with_context(|| format!("starting {}", tool.name))?;
            if !out.status.success() {
                bail!(
                    "{} failed ({}): {}",
                    tool.name,
                    out.status,
                    String::from_utf8_lossy(&out.stderr).trim()
                );
            }
        }
    }
    Ok(started.elapsed())
}

fn dd(input: &Path, dev: &Path, conv: &str) -> Command {
    let mut c = Command::new("dd");
    c.arg(format!("if={}", input.display()))
        .arg(format!("of={}", dev.display()))
        .arg("bs=4M")
        .arg(format!("conv={conv}"))
        .arg("status=none");
    c
}

/// Every mapped range on the device matches the bmap (read through the page cache: this
/// checks the tool's result, not the medium).
fn check_written(paths: &Paths, dev: &Path) -> Result<()> {
    let bmap = aperture_flash::bmap::Bmap::parse(&fs::read_to_string(&paths.bmap)?)?;
    let bad = bmap.verify_ranges(&mut File::open(dev)?)?;
    if !bad.is_empty() {
        bail!(
            "{} ranges differ from the image, first at block {}",
            bad.len(),
            bad[0].first
        );
    }
    Ok(())
}

fn median(times: &[Duration]) -> Option<Duration> {
    let mut sorted = times.to_vec();
    sorted.sort();
    sorted.get(sorted.len() / 2).copied()
}

fn tool_exists(name: &str) -> bool {
    Command::new(name)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok()
}

fn is_root() -> bool {
    effective_uid() == Some(0)
}

/// The effective uid from `id -u` (the CLI has no libc binding of its own).
fn effective_uid() -> Option<u32> {
    let out = Command::new("id").arg("-u").output().ok()?;
    String::from_utf8_lossy(&out.stdout).trim().parse().ok()
}
