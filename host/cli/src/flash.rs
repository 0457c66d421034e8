//! `flash`: write a verified build to block devices or files, several in parallel, with one
//! progress bar per target (plain lines when stderr is not a terminal) and a summary table;
//! flash Jetsons in recovery mode end to end (`--to jetson:all`, `--to jetson:usb:1-2`,
//! through `aperture_flash::jetson_flash`); or, with `--list`, show the Jetsons on USB.
//!
//! The order: verify the build folder, resolve every `--to` (`serial:` through sysfs), run
//! the safety checks on block devices and open them exclusively, then write. A target refused
//! by a check is reported in the summary and not touched; the others are still written.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use crate::args::{FlashArgs, FlashInput};
use anyhow::{bail, Context, Result};
use aperture_flash::host::{HostFacts, HostPaths};
use aperture_flash::jetson::{self, Discovery};
use aperture_flash::jetson_flash::{self, JetsonHost, JetsonTarget, ModuleOutcome, Plan};
use aperture_flash::l4t::L4t;
use aperture_flash::safety::{check_disk, Policy};
use aperture_flash::{
    flash_all, BlockTarget, FileTarget, FlashError, Job, Outcome, Progress, Stage, Target,
    Unmapped, VerifiedImage,
};
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

/// Run `flash`.
pub fn run(a: &FlashArgs) -> Result<()> {
    if a.list {
        return list(
            a.jetson.sysfs.as_deref().unwrap_or(Path::new("/sys")),
            a.json,
        );
    }
    let Some(dir) = &a.image else {
        bail!("--image DIR is required (or --list)");
    };
    let raw = match a.input {
        FlashInput::Raw => true,
        FlashInput::Zst => false,
        FlashInput::Auto => dir.join(aperture_image::outputs::names::DISK).is_file(),
    };
    let now = aperture_trust::now_unix();
    let image = if raw {
        VerifiedImage::open_raw(dir, a.root_key.as_deref(), now)?
    } else {
        VerifiedImage::open(dir, a.root_key.as_deref(), now)?
    };
    let m = image.manifest();
    eprintln!(
        "{}: {} {} for {}, signed by release key {} under root key {}; writing {:.1} MiB of a \
         {:.1} MiB image from {}",
        dir.display(),
        m.product,
        m.version,
        m.board,
        image.signing_key_id(),
        image.root_key_id(),
        mib(image.mapped_bytes()),
        mib(image.image_size()),
        if raw { "disk.img" } else { "disk.img.zst" }
    );

    let jetsons: Vec<&String> =
        a.to.iter()
            .filter(|t| t.starts_with(JetsonTarget::PREFIX))
            .collect();
    if !jetsons.is_empty() {
        if jetsons.len() != a.to.len() {
            bail!(
                "{} cannot be flashed in the same run as other targets: flash the Jetsons \
                 (jetson:...) and the disks or files in two runs",
                jetsons
                    .iter()
                    .map(|t| t.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            );
        }
        if a.provision.is_some() {
            bail!(
                "--provision is not supported with jetson: targets yet: flash them, then insert \
                 a USB stick holding the archive (labelled APERTURE) at first boot"
            );
        }
        return flash_jetsons(a, &image);
    }
    if let Some(dir) = &a.provision {
        let n = crate::provision::preflight(dir, a.to.len())?;
        eprintln!(
            "{}: {n} unused provisioning archive(s), one for each of {} target(s)",
            dir.display(),
            a.to.len()
        );
    }

    let (targets, mut refused) = open_targets(&a.to, &image, a.force)?;
    let multi = MultiProgress::with_draw_target(ProgressDrawTarget::stderr());
    let plain = !std::io::stderr().is_terminal();
    let mut named = Vec::new();
    let jobs: Vec<Job> = targets
        .into_iter()
        .map(|(name, target)| {
            named.push(name);
            let progress = Box::new(BarProgress::new(&multi, target.name(), plain, true));
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
    // Each disk written and verified gets its own archive on its ESP.
    if let Some(dir) = &a.provision {
        for (o, row) in outcomes.iter().zip(rows.iter_mut()) {
            if o.result.is_err() {
                continue;
            }
            match crate::provision::provision_disk(dir, Path::new(&o.target)) {
                Ok(used) => row.note = format!("{}; provisioned from {}", row.note, used.display()),
                Err(e) => {
                    row.ok = false;
                    row.result = "FAILED".into();
                    row.note = "flashed, not provisioned".into();
                    row.detail = format!("{}: {e:#}", row.named);
                }
            }
        }
    }
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

/// `--to jetson:...`: every module flashed end to end by the library, one bar each, then a
/// row per module.
fn flash_jetsons(all: &FlashArgs, image: &VerifiedImage) -> Result<()> {
    let a = &all.jetson;
    let targets = all
        .to
        .iter()
        .filter_map(|t| JetsonTarget::parse(t))
        .collect::<std::result::Result<Vec<_>, _>>()?;
    let board_env: Vec<(String, String)> = [
        ("BOARDID", &a.board_id),
        ("FAB", &a.fab),
        ("BOARDSKU", &a.board_sku),
        ("BOARDREV", &a.board_rev),
    ]
    .into_iter()
    .filter_map(|(k, v)| v.as_ref().map(|v| (k.to_string(), v.clone())))
    .collect();
    let plan = Plan {
        targets,
        bsp: a.bsp.clone(),
        board_config: a.board_config.clone(),
        board_env,
        initrd_timeout: Duration::from_secs(a.initrd_timeout),
        work: std::path::absolute(match &a.logs {
            Some(dir) => dir.clone(),
            None => jetson_flash::default_work(Path::new("."), aperture_trust::now_unix()),
        })?,
        force: all.force,
    };
    if let Ok(tree) = L4t::resolve(plan.bsp.as_deref(), image.dir()) {
        eprintln!("NVIDIA's tools from {}", tree.root().display());
        if tree.is_synthetic() {
            eprintln!(
                "warning: {} is the SYNTHETIC test BSP: its flashing tools are fakes that flash \
                 nothing",
                tree.root().display()
            );
        }
    }
    eprintln!("logs of NVIDIA's tools: {}", plan.work.display());
    let multi = MultiProgress::with_draw_target(ProgressDrawTarget::stderr());
    let plain = !std::io::stderr().is_terminal();
    let factory = |j: &jetson::RecoveryJetson| -> Box<dyn Progress> {
        let name = format!("{} usb {}", j.module.name(), j.usb.port);
        Box::new(BarProgress::new(&multi, &name, plain, false))
    };
    let defaults = JetsonHost::default();
    let host = JetsonHost {
        sysfs: a.sysfs.clone().unwrap_or(defaults.sysfs),
        dev: a.dev_dir.clone().unwrap_or(defaults.dev),
        sshpass: a.sshpass.clone().unwrap_or(defaults.sshpass),
    };
    let outcomes = jetson_flash::flash_jetsons(image, &plan, &host, &factory)?;
    let _ = multi.clear();
    for o in &outcomes {
        match &o.result {
            Err(f) => eprintln!("error: {}: {f}", o.label()),
            Ok(r) => {
                if let Some(why) = &r.reboot_error {
                    eprintln!(
                        "warning: {}: flashed, but it could not be told to reboot ({why}); \
                         power-cycle it",
                        o.label()
                    );
                }
            }
        }
    }
    if all.json {
        let list: Vec<serde_json::Value> = outcomes.iter().map(module_json).collect();
        println!("{}", serde_json::to_string_pretty(&list)?);
    } else {
        print_table(&module_rows(&outcomes), &[4, 5]);
    }
    let failed = outcomes.iter().filter(|o| !o.ok()).count();
    if failed > 0 {
        bail!("{failed} of {} Jetsons failed", outcomes.len());
    }
    Ok(())
}

/// The summary rows: header first.
fn module_rows(outcomes: &[ModuleOutcome]) -> Vec<Vec<String>> {
    let mut rows = vec![[
        "module",
        "usb",
        "serial",
        "result",
        "MiB written",
        "seconds",
        "read-back",
        "note",
    ]
    .map(String::from)
    .to_vec()];
    for o in outcomes {
        let (result, written, readback, note) = match &o.result {
            Ok(r) => (
                "ok".to_string(),
                format!("{:.1}", mib(r.write.bytes_written)),
                format!("{} ranges verified", r.write.ranges_verified),
                format!("{}; QSPI: {} files", r.disk, r.firmware.len()),
            ),
            Err(f) => (
                if f.step == jetson_flash::Step::Check {
                    "refused".into()
                } else {
                    "FAILED".into()
                },
                "-".into(),
                "-".into(),
                format!("at {}", f.step.name()),
            ),
        };
        rows.push(vec![
            o.module.name().to_string(),
            o.port.clone(),
            o.serial.clone().unwrap_or_else(|| "-".into()),
            result,
            written,
            format!("{:.1}", o.elapsed.as_secs_f64()),
            readback,
            note,
        ]);
    }
    rows
}

fn module_json(o: &ModuleOutcome) -> serde_json::Value {
    let mut v = serde_json::json!({
        "module": o.module.name(),
        "usb": o.port,
        "serial": o.serial,
        "instance": o.instance,
        "ok": o.ok(),
        "seconds": o.elapsed.as_secs_f64(),
    });
    let more = match &o.result {
        Ok(r) => serde_json::json!({
            "disk": r.disk,
            "initrd_serial": r.initrd_serial,
            "bytes_written": r.write.bytes_written,
            "ranges_verified": r.write.ranges_verified,
            "read_back": "verified",
            "boot_firmware": r.firmware,
            "reboot_error": r.reboot_error,
        }),
        Err(f) => serde_json::json!({
            "step": f.step.name(),
            "error": aperture_flash::error::chain(&f.error),
            "fix": f.fix,
            "log": f.log,
        }),
    };
    if let (Some(map), serde_json::Value::Object(extra)) = (v.as_object_mut(), more) {
        map.extend(extra);
    }
    v
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
    /// Whether the write finishing finishes the bar (not for a Jetson, whose QSPI follows).
    finish_on_done: bool,
    stage: Mutex<(Stage, u64)>,
    done: AtomicU64,
    quarter: AtomicU64,
}

impl BarProgress {
    fn new(multi: &MultiProgress, name: &str, plain: bool, finish_on_done: bool) -> BarProgress {
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
            finish_on_done,
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
        } else if stage == Stage::Done && self.finish_on_done {
            self.bar.finish_with_message("done, verified");
        } else if stage == Stage::Done {
            self.bar.set_message("written, verified");
        } else {
            self.bar.set_message(stage.name());
            self.bar.set_length(total.max(1));
            self.bar.set_position(0);
            self.bar.reset_eta();
        }
    }

    fn note(&self, what: &str) {
        if self.plain {
            eprintln!("{}: {what}", self.name);
        } else {
            self.bar.set_message(what.to_string());
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
    let mut table = vec![
        ["target", "result", "MiB written", "seconds", "MB/s", "note"]
            .map(String::from)
            .to_vec(),
    ];
    for r in rows {
        let secs = r.elapsed.map(|d| d.as_secs_f64());
        table.push(vec![
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
        ]);
    }
    print_table(&table, &[2, 3, 4]);
}

/// A markdown table on stdout, header first; the columns in `right` right-aligned.
fn print_table(rows: &[Vec<String>], right: &[usize]) {
    let columns = rows.first().map(Vec::len).unwrap_or(0);
    let mut widths = vec![0; columns];
    for row in rows {
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
                if right.contains(&i) {
                    format!("{c:>w$}")
                } else {
                    format!("{c:<w$}")
                }
            })
            .collect();
        println!("| {} |", parts.join(" | "));
    };
    for (i, row) in rows.iter().enumerate() {
        line(row);
        if i == 0 {
            println!(
                "|{}|",
                widths
                    .iter()
                    .map(|w| "-".repeat(w + 2))
                    .collect::<Vec<_>>()
                    .join("|")
            );
        }
    }
}

/// `--list`: Jetsons in recovery mode and the disks flashing initrds expose.
fn list(sysfs: &Path, json: bool) -> Result<()> {
    let found = jetson::scan(sysfs)?;
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
            "disk      usb {:<8} {:<10} {:>8.1} GB  lun {} {:<6}  --to serial:{}",
            d.usb.port,
            d.dev_path.display(),
            d.size as f64 / 1e9,
            d.lun.map(|l| l.to_string()).unwrap_or("-".into()),
            d.vendor.as_deref().unwrap_or(""),
            d.usb.serial.as_deref().unwrap_or("-")
        );
    }
    if !found.recovery.is_empty() {
        eprintln!(
            "flash modules in recovery mode end to end with --to jetson:all or --to \
             jetson:usb:<port>"
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

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use aperture_flash::jetson::JetsonModule;
    use aperture_flash::jetson_flash::{ModuleFailure, ModuleOutcome, ModuleReport, Step};
    use aperture_flash::{FlashError, FlashReport, Unmapped};

    use super::*;

    fn outcomes() -> Vec<ModuleOutcome> {
        let ok = ModuleReport {
            disk: "/dev/sdc".into(),
            initrd_serial: Some("1424321000001".into()),
            write: FlashReport {
                target: "/dev/sdc".into(),
                image_size: 24 << 20,
                bytes_written: 5 << 20,
                ranges_verified: 8,
                unmapped: Unmapped::LeftAsIs,
                elapsed: Duration::from_secs(3),
            },
            firmware: vec!["mb1_t234_prod.bin".into(), "uefi_jetson.bin".into()],
            reboot_error: None,
        };
        let failed = ModuleFailure {
            step: Step::WaitDisk,
            error: Box::new(FlashError::Discovery("did not expose its eMMC".into())),
            fix: "run again".into(),
            log: Some(PathBuf::from("/logs/1-4.log")),
        };
        let outcome = |port: &str, result| ModuleOutcome {
            module: JetsonModule::AgxOrin,
            port: port.into(),
            serial: Some(format!("serial-{port}")),
            instance: Some(0),
            result,
            elapsed: Duration::from_secs(40),
        };
        vec![outcome("1-2", Ok(ok)), outcome("1-4", Err(failed))]
    }

    #[test]
    fn every_module_gets_a_row_naming_usb_serial_bytes_read_back_and_time() {
        let rows = module_rows(&outcomes());
        assert_eq!(rows[0][..4], ["module", "usb", "serial", "result"]);
        assert_eq!(
            rows[1],
            [
                "Jetson AGX Orin",
                "1-2",
                "serial-1-2",
                "ok",
                "5.0",
                "40.0",
                "8 ranges verified",
                "/dev/sdc; QSPI: 2 files"
            ]
        );
        assert_eq!(rows[2][3], "FAILED");
        assert_eq!(rows[2][7], "at wait for the eMMC");
    }

    #[test]
    fn json_says_the_step_error_fix_and_log_of_a_failure() {
        let list: Vec<serde_json::Value> = outcomes().iter().map(module_json).collect();
        assert_eq!(list[0]["read_back"], "verified");
        assert_eq!(list[0]["bytes_written"], 5 << 20);
        assert_eq!(list[0]["boot_firmware"][1], "uefi_jetson.bin");
        assert_eq!(list[1]["ok"], false);
        assert_eq!(list[1]["step"], "wait for the eMMC");
        assert_eq!(list[1]["error"], "did not expose its eMMC");
        assert_eq!(list[1]["fix"], "run again");
        assert_eq!(list[1]["log"], "/logs/1-4.log");
    }
}
