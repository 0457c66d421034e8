//! The EFI system partition as an image file, written without mounting: `mkfs.vfat --invariant`
//! and mtools, both reproducible (mtools takes every timestamp from `SOURCE_DATE_EPOCH`).
//!
//! mtools rather than a FAT library: the `fatfs` crate's images fail `fsck.fat`
//! (MACHINE-NOTES, "Crates tried here").

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use aperture_sys::Cmd;

/// Where a file's bytes come from.
#[derive(Debug, Clone)]
pub enum Source {
    /// A file on the host.
    File(PathBuf),
    /// Bytes in memory.
    Bytes(Vec<u8>),
}

/// One file on the ESP.
#[derive(Debug, Clone)]
pub struct EspFile {
    /// Path on the ESP, `/`-separated, no leading slash (e.g. `EFI/BOOT/BOOTX64.EFI`).
    pub path: String,
    /// Content.
    pub source: Source,
}

impl EspFile {
    /// A file from bytes.
    pub fn bytes(path: impl Into<String>, data: impl Into<Vec<u8>>) -> Self {
        EspFile {
            path: path.into(),
            source: Source::Bytes(data.into()),
        }
    }
    /// A file copied from the host.
    pub fn file(path: impl Into<String>, src: impl Into<PathBuf>) -> Self {
        EspFile {
            path: path.into(),
            source: Source::File(src.into()),
        }
    }
}

fn mtools(program: &str, source_date: u64) -> Cmd {
    Cmd::new(program)
        .env("MTOOLS_SKIP_CHECK", "1")
        .env("SOURCE_DATE_EPOCH", source_date.to_string())
        .env("LC_ALL", "C")
}

/// Make a FAT32 image of `size` bytes at `out` holding `files`. `volume_id` becomes the
/// filesystem serial (the "UUID" firmware and udev show), so it should derive from the recipe.
pub fn make(
    out: &Path,
    size: u64,
    volume_id: u32,
    files: &[EspFile],
    source_date: u64,
    scratch: &Path,
) -> Result<()> {
    for f in files {
        if f.path.starts_with('/')
            || f.path
                .split('/')
                .any(|c| c.is_empty() || c == "." || c == "..")
        {
            bail!("ESP path `{}` is not a plain relative path", f.path);
        }
    }
    let _ = std::fs::remove_file(out);
    let file = std::fs::File::create(out).with_context(|| format!("creating {}", out.display()))?;
    file.set_len(size)?;
    drop(file);
    Cmd::new("mkfs.vfat")
        .args(["-F", "32", "-n", "ESP", "--invariant", "-i"])
        .arg(format!("{volume_id:08x}"))
        .arg(out)
        .run()
        .context("formatting the ESP")?;

    // Folders first, parents before children.
    let mut dirs = BTreeSet::new();
    for f in files {
        let mut acc = String::new();
        let parts: Vec<&str> = f.path.split('/').collect();
        for p in &parts[..parts.len() - 1] {
            if !acc.is_empty() {
                acc.push('/');
            }
            acc.push_str(p);
            dirs.insert(acc.clone());
        }
    }
    let mut ordered: Vec<&String> = dirs.iter().collect();
    ordered.sort_by_key(|d| (d.matches('/').count(), (*d).clone()));
    if !ordered.is_empty() {
        mtools("mmd", source_date)
            .arg("-i")
            .arg(out)
            .args(ordered.iter().map(|d| format!("::/{d}")))
            .run()
            .context("creating ESP folders")?;
    }

    std::fs::create_dir_all(scratch)?;
    let mut sorted: Vec<&EspFile> = files.iter().collect();
    sorted.sort_by(|a, b| a.path.cmp(&b.path));
    for (i, f) in sorted.iter().enumerate() {
        let src = match &f.source {
            Source::File(p) => p.clone(),
            Source::Bytes(b) => {
                let p = scratch.join(format!("esp-{i}"));
                std::fs::write(&p, b)?;
                p
            }
        };
        mtools("mcopy", source_date)
            .arg("-o")
            .arg("-i")
            .arg(out)
            .arg(&src)
            .arg(format!("::/{}", f.path))
            .run()
            .with_context(|| format!("copying {} onto the ESP", f.path))?;
    }
    let _ = std::fs::remove_dir_all(scratch);
    Ok(())
}

/// Read a file back from an ESP image (for checks and tests).
pub fn read(image: &Path, offset: u64, path: &str) -> Result<Vec<u8>> {
    let out = mtools("mtype", 0)
        .arg("-i")
        .arg(format!("{}@@{offset}", image.display()))
        .arg(format!("::/{path}"))
        .run()?;
    Ok(out.stdout)
}

/// Write `data` as the file `path` on an ESP image at `offset` of `image`, replacing it, its
/// folder made if missing (for tests that tamper with a disk before booting it).
pub fn write(image: &Path, offset: u64, path: &str, data: &[u8]) -> Result<()> {
    let at = format!("{}@@{offset}", image.display());
    if let Some((dir, _)) = path.rsplit_once('/') {
        // mmd fails on a folder that exists; that is fine here.
        let _ = mtools("mmd", 0)
            .arg("-i")
            .arg(&at)
            .arg(format!("::/{dir}"))
            .run();
    }
    let src = tempfile::NamedTempFile::new()?;
    std::fs::write(src.path(), data)?;
    mtools("mcopy", 0)
        .args(["-o", "-i"])
        .arg(&at)
        .arg(src.path())
        .arg(format!("::/{path}"))
        .run()
        .with_context(|| format!("writing {path} onto the ESP of {}", image.display()))?;
    Ok(())
}

/// List files on an ESP image, recursively.
pub fn list(image: &Path, offset: u64) -> Result<Vec<String>> {
    let text = mtools("mdir", 0)
        .args(["-/", "-b", "-i"])
        .arg(format!("{}@@{offset}", image.display()))
        .arg("::/")
        .text()?;
    Ok(text
        .lines()
        .map(|l| l.trim_start_matches("::/").to_string())
        .filter(|l| !l.is_empty())
        .collect())
}
