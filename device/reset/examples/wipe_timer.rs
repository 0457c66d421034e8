//! One timed level 3 wipe of a fresh data partition, for `cargo xtask bench reset` (the
//! benchmark crate runs this program, so host crates do not link the device programs): a
//! sparse backing file and a loop device, filled with a non-zero pattern and formatted as LUKS2
//! outside the timing; then exactly what aperture-reset runs for one volume: `cryptsetup
//! erase`, zeros over the LUKS metadata area, the scrub (`blkdiscard`, or zeros over the whole
//! partition as on a device without discard), and a check that nothing is left. Prints one line
//! of JSON: `{"seconds": S, "method": "discard"|"overwrite"}`. Needs root.
//!
//! Usage: `wipe_timer DIR SIZE_BYTES discard|overwrite`

use std::fs;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use aperture_reset::seams::{BlkDiscard, Discard, FakeDiscard, FakeDiscardMode};
use aperture_reset::wipe::{self, ScrubMethod};
use aperture_storage::{Access, Crypt, CryptSetup, FilePartition, Key};
use aperture_sys::Cmd;

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

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [dir, size, mode] = args.as_slice() else {
        bail!("usage: wipe_timer DIR SIZE_BYTES discard|overwrite");
    };
    let size: u64 = size.parse().context("SIZE_BYTES")?;
    let blkdiscard = BlkDiscard;
    let no_discard = FakeDiscard::new(FakeDiscardMode::Unsupported);
    let discard: &dyn Discard = match mode.as_str() {
        "discard" => &blkdiscard,
        "overwrite" => &no_discard,
        other => bail!("unknown mode {other:?}: discard or overwrite"),
    };
    let (took, method): (Duration, ScrubMethod) = wipe_once(Path::new(dir), size, discard)?;
    let method = match method {
        ScrubMethod::Discard => "discard",
        _ => "overwrite",
    };
    println!(
        "{}",
        serde_json::json!({"seconds": took.as_secs_f64(), "method": method})
    );
    Ok(())
}
