//! `bench reset`: how long the level 3 wipe of a data partition takes, for a 1 GiB and a
//! 4 GiB partition, scrubbed by discard and by overwrite, `runs` times each, with one table of
//! median seconds and GB/s.
//!
//! Each run gets a fresh sparse backing file and loop device, filled with a non-zero pattern
//! and formatted as LUKS2 (both outside the timing), so that the wipe has a real header and
//! real blocks to destroy. The timed part is exactly what aperture-reset runs for one volume:
//! `cryptsetup erase`, zeros over the LUKS metadata area, then the scrub: `blkdiscard` and a
//! sampled read-back (a loop device punches holes, which read back as zeros), or, as on a
//! device without discard, zeros written over the whole partition and synced. Needs root
//! (losetup) and cryptsetup.

use std::fs;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use aperture_reset::seams::{BlkDiscard, Discard, FakeDiscard, FakeDiscardMode};
use aperture_reset::wipe::{self, ScrubMethod};
use aperture_storage::{Access, Crypt, CryptSetup, FilePartition, Key};
use aperture_sys::Cmd;

use crate::table::{print_table, Row};

const GIB: u64 = 1 << 30;

/// A loop device over a file, detached on drop.
struct Loop(PathBuf);

impl Loop {
    fn attach(file: &Path) -> Result<Loop> {
        let out = Cmd::new("losetup")
            .args(["--find", "--show"])
            .arg(file)
            .run()?;
        Ok(Loop(PathBuf::from(out.stdout_text().trim())))
    }
}

impl Drop for Loop {
    fn drop(&mut self) {
        let _ = Cmd::new("losetup").arg("-d").arg(&self.0).run();
    }
}

/// Writes a non-zero pattern over the whole device, then syncs.
fn fill(dev: &Path, size: u64) -> Result<()> {
    let f = fs::OpenOptions::new()
        .write(true)
        .open(dev)
        .with_context(|| format!("opening {}", dev.display()))?;
    let chunk: Vec<u8> = (0..8u32 << 20)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8 | 1)
        .collect();
    let mut at = 0;
    while at < size {
        let n = (size - at).min(chunk.len() as u64) as usize;
        f.write_all_at(&chunk[..n], at)?;
        at += n as u64;
    }
    f.sync_all()?;
    Ok(())
}

/// One timed wipe of a fresh `size`-byte partition; returns the time and the method used.
fn wipe_once(dir: &Path, size: u64, discard: &dyn Discard) -> Result<(Duration, ScrubMethod)> {
    let file = dir.join("data.img");
    let _ = fs::remove_file(&file);
    fs::File::create(&file)?.set_len(size)?;
    let dev = Loop::attach(&file)?;
    fill(&dev.0, size)?;
    let crypt = CryptSetup::new("/dev/mapper".into());
    let part = FilePartition::whole(&dev.0, "data", Access::Shared)?;
    crypt.format(&part, &Key::random()?, "data")?;
    // Start from the same cache state every time: written back, nothing cached.
    Cmd::new("sync").run()?;
    let _ = fs::write("/proc/sys/vm/drop_caches", b"3\n");

    let start = Instant::now();
    wipe::erase_keyslots(&crypt, &part)?;
    let area = wipe::header_area(&part)?;
    wipe::zero_header(&part, area)?;
    let method = wipe::scrub(&part, discard)?;
    let took = start.elapsed();

    let check = wipe::check(&part)?;
    if check.luks_magic.any() || check.zero_fraction < 1.0 {
        bail!(
            "the wipe left {:.4}% non-zero bytes or a LUKS header on {}",
            (1.0 - check.zero_fraction) * 100.0,
            dev.0.display()
        );
    }
    drop(part);
    drop(dev);
    fs::remove_file(&file)?;
    Ok((took, method))
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

/// Run `bench reset`.
pub fn run(runs: u32) -> Result<()> {
    let uid = Cmd::new("id").arg("-u").run()?.stdout_text();
    if uid.trim() != "0" {
        bail!("bench reset needs root (loop devices): run `sudo cargo xtask bench reset`");
    }
    let mut missing = Vec::new();
    for tool in ["losetup", "blkdiscard", "cryptsetup"] {
        let found = Cmd::new("sh")
            .args(["-c", &format!("command -v {tool}")])
            .output()
            .map(|o| o.code == Some(0))
            .unwrap_or(false);
        if !found {
            missing.push(tool);
        }
    }
    if !missing.is_empty() {
        bail!(
            "bench reset needs {}: apt-get install util-linux cryptsetup-bin",
            missing.join(", ")
        );
    }
    let runs = runs.max(1);
    let dir = crate::workspace().join("target/bench-reset");
    fs::create_dir_all(&dir)?;
    let blkdiscard = BlkDiscard;
    let no_discard = FakeDiscard::new(FakeDiscardMode::Unsupported);
    let mut rows = Vec::new();
    for size in [GIB, 4 * GIB] {
        for (name, discard, expect) in [
            ("discard", &blkdiscard as &dyn Discard, ScrubMethod::Discard),
            (
                "overwrite",
                &no_discard as &dyn Discard,
                ScrubMethod::Overwrite,
            ),
        ] {
            let mut times = Vec::new();
            for i in 0..runs {
                eprintln!(
                    "bench reset: {} GiB by {name}, run {}/{runs}",
                    size / GIB,
                    i + 1
                );
                let (took, method) = wipe_once(&dir, size, discard)?;
                if method != expect {
                    bail!("{name}: the wipe fell back to {method:?}");
                }
                times.push(took);
            }
            let best = *times.iter().min().unwrap_or(&Duration::ZERO);
            let med = median(times);
            rows.push(Row {
                name: format!("{} GiB, {name}", size / GIB),
                cells: vec![
                    format!("{:.2}", med.as_secs_f64()),
                    format!("{:.2}", best.as_secs_f64()),
                    format!("{:.2}", size as f64 / 1e9 / med.as_secs_f64().max(1e-9)),
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
