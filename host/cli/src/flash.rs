//! `flash`: write a verified build to block devices or files, several in parallel, with one
//! progress bar per target (plain lines when stderr is not a terminal) and a summary table;
//! or, with `--list`, show the Jetsons on USB.
//!
//! The order: verify the build folder, resolve every `--to` (`serial:` through sysfs), run
//! the safety checks on block devices and open them exclusively, then write. A target refused
//! by a check is reported in the summary and not touched; the others are still written.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use crate::args::FlashArgs;
use anyhow::{bail, Context, Result};
use aperture_flash::host::{HostFacts, HostPaths};
use aperture_flash::jetson::{self, Discovery};
use aperture_flash::safety::{check_disk, Policy};
use aperture_flash::{
    flash_all, BlockTarget, FileTarget, FlashError, Job, Outcome, Progress, Stage, Target,
    Unmapped, VerifiedImage,
};
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

/// Run `flash`.
pub fn run(a: &FlashArgs) -> Result<()> {
    if a.list {
        return list(a.json);
    }
    let Some(dir) = &a.image else {
        bail!("--image DIR is required (or --list)");
    };
    let image = VerifiedImage::open(dir, a.root_key.as_deref(), aperture_trust::now_unix())?;
    let m = image.manifest();
    eprintln!(
        "{}: {} {} for {}, signed by release key {} under root key {}; writing {:.1} MiB of a \
         {:.1} MiB image",
        dir.display(),
        m.product,
        m.version,
        m.board,
        image.signing_key_id(),
        image.root_key_id(),
        mib(image.mapped_bytes()),
        mib(image.image_size())
    );

    let (targets, mut refused) = open_targets(&a.to, &image, a.force)?;
    let multi = MultiProgress::with_draw_target(ProgressDrawTarget::stderr());
    let plain = !std::io::stderr().is_terminal();
    let mut named = Vec::new();
    let jobs: Vec<Job> = targets
        .into_iter()
        .map(|(name, target)| {
            named.push(name);
            let progress = Box::new(BarProgress::new(&multi, target.name(), plain));
            Job { target, progress }
        })
        .collect();
    let outcomes = flash_all(&image, jobs);
    let _ = multi.clear();

    let mut rows: Vec<Row> = outcomes
        .iter()
        .zip(named)
        .map(|(o, named)| Row::from_outcome(o, named))
        .collect();
    rows.append(&mut refused);
    rows.sort_by_key(|r| {
        a.to.iter()
            .position(|t| *t == r.named)
            .unwrap_or(usize::MAX)
    });
    for row in rows.iter().filter(|r| !r.ok) {
        eprintln!("error: {}", row.detail);
    }
    if a.json {
        let list: Vec<serde_json::Value> = rows.iter().map(Row::json).collect();
        println!("{}", serde_json::to_string_pretty(&list)?);
    } else {
        print_summary(&rows);
    }
    let failed = rows.iter().filter(|r| !r.ok).count();
    if failed > 0 {
        bail!("{failed} of {} targets failed", rows.len());
    }
    Ok(())
}

/// A target opened, with the name `--to` gave it.
type Named = (String, Box<dyn Target>);

/// Resolves and opens every target. Refusals become summary rows; anything else that goes
/// wrong before writing (lsblk missing, sysfs unreadable) stops everything.
fn open_targets(
    names: &[String],
    image: &VerifiedImage,
    force: bool,
) -> Result<(Vec<Named>, Vec<Row>)> {
    let mut discovery: Option<Discovery> = None;
    let mut facts: Option<HostFacts> = None;
    let mut seen: Vec<PathBuf> = Vec::new();
    let mut targets: Vec<Named> = Vec::new();
    let mut refused = Vec::new();
    let policy = Policy {
        image_size: image.image_size(),
        force,
    };
    for named in names {
        let opened = (|| -> Result<Box<dyn Target>> {
            let path = match named.strip_prefix("serial:") {
                Some(serial) => {
                    if discovery.is_none() {
                        discovery = Some(jetson::scan(Path::new("/sys"))?);
                    }
                    let found = discovery.as_ref().context("no discovery")?;
                    found.disk_by_serial(serial)?.dev_path.clone()
                }
                None => PathBuf::from(named),
            };
            let path = std::fs::canonicalize(&path).unwrap_or(path);
            if seen.contains(&path) {
                return Err(FlashError::Refused {
                    device: named.clone(),
                    reason: format!("{} is named twice", path.display()),
                }
                .into());
            }
            seen.push(path.clone());
            if is_block_device(&path) {
                if facts.is_none() {
                    facts = Some(HostFacts::gather(&HostPaths::default())?);
                }
                let host = facts.as_ref().context("no host facts")?;
                let disk = check_disk(host, &path, policy)?;
                eprintln!(
                    "{named}: {} {} ({})",
                    disk.path,
                    disk.description,
                    disk.removable.describe()
                );
                Ok(Box::new(BlockTarget::open(&path)?))
            } else {
                Ok(Box::new(FileTarget::open(&path, image.image_size())?))
            }
        })();
        match opened {
            Ok(t) => targets.push((named.clone(), t)),
            Err(e) => match e.downcast_ref::<FlashError>() {
                Some(f) if f.is_refusal() || matches!(f, FlashError::Discovery(_)) => {
                    refused.push(Row::refused(named, f.to_string()));
                }
                _ => return Err(e.context(format!("preparing target {named}"))),
            },
        }
    }
    Ok((targets, refused))
}

fn is_block_device(path: &Path) -> bool {
    use std::os::unix::fs::FileTypeExt;
    std::fs::metadata(path)
        .map(|m| m.file_type().is_block_device())
        .unwrap_or(false)
}

/// One target's progress: an indicatif bar, or plain lines at each stage and quarter.
struct BarProgress {
    bar: ProgressBar,
    name: String,
    plain: bool,
    stage: Mutex<(Stage, u64)>,
    done: AtomicU64,
    quarter: AtomicU64,
}

impl BarProgress {
    fn new(multi: &MultiProgress, name: &str, plain: bool) -> BarProgress {
        let bar = multi.add(ProgressBar::new(0));
        let style = ProgressStyle::with_template(
            "{prefix:>12} {msg:<15} [{bar:30}] {bytes:>10}/{total_bytes:<10} {bytes_per_sec:>12}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> ");
        bar.set_style(style);
        bar.set_prefix(
            Path::new(name)
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_else(|| name.to_string()),
        );
        BarProgress {
            bar,
            name: name.to_string(),
            plain,
            stage: Mutex::new((Stage::Preparing, 0)),
            done: AtomicU64::new(0),
            quarter: AtomicU64::new(0),
        }
    }
}

impl Progress for BarProgress {
    fn stage(&self, stage: Stage, total: u64) {
        if let Ok(mut s) = self.stage.lock() {
            *s = (stage, total);
        }
        self.done.store(0, Ordering::Relaxed);
        self.quarter.store(0, Ordering::Relaxed);
        if self.plain {
            match stage {
                Stage::Done => eprintln!("{}: done, verified", self.name),
                _ if total > 0 => eprintln!("{}: {} {}", self.name, stage.name(), human(total)),
                _ => eprintln!("{}: {}", self.name, stage.name()),
            }
        } else if stage == Stage::Done {
            self.bar.finish_with_message("done, verified");
        } else {
            self.bar.set_message(stage.name());
            self.bar.set_length(total.max(1));
            self.bar.set_position(0);
            self.bar.reset_eta();
        }
    }

    fn advance(&self, bytes: u64) {
        if !self.plain {
            self.bar.inc(bytes);
            return;
        }
        let done = self.done.fetch_add(bytes, Ordering::Relaxed) + bytes;
        let (stage, total) = self.stage.lock().map(|s| *s).unwrap_or((Stage::Writing, 0));
        if total == 0 {
            return;
        }
        let quarter = (done * 4 / total).min(4);
        if quarter > self.quarter.swap(quarter, Ordering::Relaxed) && quarter < 4 {
            eprintln!("{}: {} {}%", self.name, stage.name(), quarter * 25);
        }
    }
}

/// A line of the summary.
struct Row {
    /// As given to `--to`.
    named: String,
    /// For the table: the name and, if different, the device it resolved to.
    shown: String,
    ok: bool,
    result: String,
    written: Option<u64>,
    elapsed: Option<Duration>,
    note: String,
    detail: String,
}

impl Row {
    /// The row of a target named `named` on the command line.
    fn from_outcome(o: &Outcome, named: String) -> Row {
        let shown = if named == o.target {
            named.clone()
        } else {
            format!("{named} ({})", o.target)
        };
        match &o.result {
            Ok(r) => Row {
                named,
                shown,
                ok: true,
                result: "ok, verified".into(),
                written: Some(r.bytes_written),
                elapsed: Some(o.elapsed),
                note: match r.unmapped {
                    Unmapped::Zeroed => "unmapped ranges zeroed".into(),
                    Unmapped::LeftAsIs => "unmapped ranges left as they were".into(),
                },
                detail: String::new(),
            },
            Err(e) => Row {
                named,
                shown,
                ok: false,
                result: if e.is_refusal() { "refused" } else { "FAILED" }.into(),
                written: None,
                elapsed: Some(o.elapsed),
                note: short(e),
                detail: aperture_flash::error::chain(e),
            },
        }
    }

    fn refused(named: &str, why: String) -> Row {
        Row {
            named: named.to_string(),
            shown: named.to_string(),
            ok: false,
            result: "refused".into(),
            written: None,
            elapsed: None,
            note: why
                .split_once(": ")
                .map(|(_, r)| r)
                .unwrap_or(&why)
                .to_string(),
            detail: why,
        }
    }

    fn json(&self) -> serde_json::Value {
        serde_json::json!({
            "target": self.named,
            "device": self.shown,
            "ok": self.ok,
            "result": self.result,
            "bytes_written": self.written,
            "seconds": self.elapsed.map(|d| d.as_secs_f64()),
            "detail": if self.ok { &self.note } else { &self.detail },
        })
    }
}

/// The gist of an error for the table: the innermost cause, without the wipe note.
fn short(e: &FlashError) -> String {
    let text = e.root_cause().to_string();
    let first = text.split("; ").next().unwrap_or(&text);
    match e {
        FlashError::Failed {
            wipe_error: None, ..
        } => format!("{first} (table wiped)"),
        FlashError::Failed { .. } => format!("{first} (WIPE FAILED)"),
        _ => first.to_string(),
    }
}

fn print_summary(rows: &[Row]) {
    let header = ["target", "result", "MiB written", "seconds", "MB/s", "note"];
    let cells: Vec<[String; 6]> = rows
        .iter()
        .map(|r| {
            let secs = r.elapsed.map(|d| d.as_secs_f64());
            [
                r.shown.clone(),
                r.result.clone(),
                r.written
                    .map(|b| format!("{:.1}", mib(b)))
                    .unwrap_or("-".into()),
                secs.map(|s| format!("{s:.1}")).unwrap_or("-".into()),
                match (r.written, secs) {
                    (Some(b), Some(s)) if s > 0.0 => format!("{:.0}", b as f64 / 1e6 / s),
                    _ => "-".into(),
                },
                r.note.clone(),
            ]
        })
        .collect();
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in &cells {
        for (w, c) in widths.iter_mut().zip(row) {
            *w = (*w).max(c.len());
        }
    }
    let line = |cells: &[String]| {
        let parts: Vec<String> = cells
            .iter()
            .zip(&widths)
            .enumerate()
            .map(|(i, (c, w))| {
                if (2..5).contains(&i) {
                    format!("{c:>w$}")
                } else {
                    format!("{c:<w$}")
                }
            })
            .collect();
        println!("| {} |", parts.join(" | "));
    };
    line(&header.map(String::from));
    println!(
        "|{}|",
        widths
            .iter()
            .map(|w| "-".repeat(w + 2))
            .collect::<Vec<_>>()
            .join("|")
    );
    for row in &cells {
        line(row);
    }
}

/// `--list`: Jetsons in recovery mode and the disks flashing initrds expose.
fn list(json: bool) -> Result<()> {
    let found = jetson::scan(Path::new("/sys"))?;
    if json {
        println!("{}", serde_json::to_string_pretty(&found)?);
        return Ok(());
    }
    if found.recovery.is_empty() && found.disks.is_empty() {
        eprintln!(
            "no Jetson found on USB (vendor 0955): connect it and hold RECOVERY while powering \
             on; run NVIDIA's flashing initrd to expose its storage"
        );
        return Ok(());
    }
    for r in &found.recovery {
        println!(
            "recovery  usb {:<8} {:04x}:{:04x}  {:<18} serial {}",
            r.usb.port,
            r.usb.vendor_id,
            r.usb.product_id,
            r.module.name(),
            r.usb.serial.as_deref().unwrap_or("-")
        );
    }
    for d in &found.disks {
        println!(
            "disk      usb {:<8} {:<10} {:>8.1} GB  lun {}  --to serial:{}",
            d.usb.port,
            d.dev_path.display(),
            d.size as f64 / 1e9,
            d.lun.map(|l| l.to_string()).unwrap_or("-".into()),
            d.usb.serial.as_deref().unwrap_or("-")
        );
    }
    Ok(())
}

/// 512 KiB, 493.5 MiB.
fn human(bytes: u64) -> String {
    if bytes < 1 << 20 {
        format!("{:.0} KiB", bytes as f64 / 1024.0)
    } else {
        format!("{:.1} MiB", mib(bytes))
    }
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / f64::from(1u32 << 20)
}
