//! One module's flash, on its own thread: boot its flashing initrd, wait for its eMMC, write
//! and read back `disk.img`, write QSPI, reboot. Every NVIDIA tool's output goes to the
//! module's log (`<work>/<port>.log`); every failure names its step and fix.

use std::fs::OpenOptions;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use aperture_sys::Cmd;

use super::preflight::Selected;
use super::{JetsonHost, ModuleFailure, ModuleReport, Plan, Step};
use crate::error::{chain, FlashError, Result};
use crate::host::{HostFacts, HostPaths};
use crate::image::VerifiedImage;
use crate::jetson::{self, ExposedDisk, UsbLink};
use crate::l4t::{Nvidia, QSPI_COMMAND, REBOOT_COMMAND};
use crate::safety::{check_disk, Policy};
use crate::target::{BlockTarget, FileTarget, Target};
use crate::writer::Progress;

/// How often sysfs is looked at while waiting for an initrd.
const POLL: Duration = Duration::from_millis(200);

/// What every module's run shares.
pub(super) struct Ctx<'a> {
    pub image: &'a VerifiedImage,
    pub plan: &'a Plan,
    /// The work folder (logs), absolute.
    pub work: &'a Path,
    pub host: &'a JetsonHost,
    pub nvidia: &'a Nvidia<'a>,
    /// The words of `initrdflashparam.txt`.
    pub params: &'a [String],
    /// The firmware files the QSPI package holds.
    pub firmware: &'a [String],
}

/// Runs `cmd`, appending its command line and everything it prints to `log`.
pub(super) fn run_logged(cmd: Cmd, log: &Path) -> Result<()> {
    let mut file = OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .map_err(|e| FlashError::io(format!("opening the log {}", log.display()), e))?;
    let shown = cmd.display();
    let _ = writeln!(file, "$ {shown}");
    let mut write_error = None;
    let ran = cmd.stream(|line| {
        if let Err(e) = writeln!(file, "{line}") {
            write_error.get_or_insert(e);
        }
    });
    let _ = file.sync_all();
    ran?;
    match write_error {
        Some(e) => Err(FlashError::io(
            format!("writing the log {}", log.display()),
            e,
        )),
        None => Ok(()),
    }
}

/// Flashes one module.
pub(super) fn run(
    ctx: &Ctx<'_>,
    module: &Selected,
    progress: &dyn Progress,
) -> std::result::Result<ModuleReport, ModuleFailure> {
    let port = module.jetson.usb.port.as_str();
    let instance = module.instance;
    let log = ctx.work.join(format!("{port}.log"));
    let fail = |step: Step, error: FlashError, fix: String| ModuleFailure {
        step,
        error: Box::new(error),
        fix,
        log: Some(log.clone()),
    };
    let again = format!(
        "put the module at USB {port} into recovery mode again and run with --to jetson:usb:{port}"
    );

    progress.note("booting NVIDIA's flashing initrd");
    run_logged(ctx.nvidia.boot_initrd(port, instance, ctx.params), &log).map_err(|e| {
        fail(
            Step::BootInitrd,
            e,
            format!(
                "read NVIDIA's output in the log; check the cable and that the module is still \
                 in recovery mode (`cargo xtask flash --list`), then {again}"
            ),
        )
    })?;

    progress.note("waiting for its eMMC");
    let (disk, link) =
        wait_for_initrd(ctx.host, instance, ctx.plan.initrd_timeout).map_err(|e| {
            fail(
                Step::WaitDisk,
                e,
                format!(
                "check that this host's usb-storage and rndis_host drivers are loaded and that \
                 nothing (udisks2 automount, ModemManager) grabs the new USB device; the \
                 initrd's console says why it stopped; {again} (or raise --initrd-timeout)"
            ),
            )
        })?;

    let write = open_target(ctx, &disk)
        .and_then(|target| crate::writer::flash(ctx.image, target.as_ref(), progress))
        .map_err(|e| {
            let fix = if e.is_refusal() {
                "nothing was written; see why above".to_string()
            } else {
                format!("do not boot the module; {again}")
            };
            fail(Step::WriteDisk, e, fix)
        })?;

    progress.note("writing the boot firmware (QSPI)");
    run_logged(
        Nvidia::on_target(&ctx.host.sshpass, &link.name, QSPI_COMMAND),
        &log,
    )
    .map_err(|e| {
        fail(
            Step::BootFirmware,
            e,
            format!(
                "the eMMC holds the new image but QSPI may be half written: do not power the \
                 module off into a normal boot; {again}"
            ),
        )
    })?;

    progress.note("rebooting");
    let reboot_error = run_logged(
        Nvidia::on_target(&ctx.host.sshpass, &link.name, REBOOT_COMMAND),
        &log,
    )
    .err()
    .map(|e| chain(&e));
    progress.note("done: eMMC verified, QSPI written");
    Ok(ModuleReport {
        disk: ctx.host.dev.join(&disk.name).display().to_string(),
        initrd_serial: disk.usb.serial.clone(),
        write,
        firmware: ctx.firmware.to_vec(),
        reboot_error,
    })
}

/// Waits until the initrd booted as `instance` exposes its eMMC (with a device node) and its
/// network link, for at most `timeout`.
fn wait_for_initrd(
    host: &JetsonHost,
    instance: u32,
    timeout: Duration,
) -> Result<(ExposedDisk, UsbLink)> {
    let deadline = Instant::now() + timeout;
    loop {
        let found = jetson::scan(&host.sysfs)?;
        let disk = found
            .flashing_disk(instance)
            .filter(|d| d.size > 0 && host.dev.join(&d.name).exists());
        let link = disk.and_then(|d| found.link_on(&d.usb.port));
        if let (Some(d), Some(l)) = (disk, link) {
            return Ok((d.clone(), l.clone()));
        }
        let now = Instant::now();
        if now >= deadline {
            let secs = timeout.as_secs_f64();
            return Err(FlashError::Discovery(match disk {
                None => format!(
                    "its flashing initrd (device instance {instance}) did not expose its eMMC \
                     within {secs:.0} s (looked for a USB 0955:7035 disk with SCSI vendor \
                     `mmc0` and model `{instance}` in {})",
                    host.sysfs.display()
                ),
                Some(d) => format!(
                    "its flashing initrd (device instance {instance}) exposed its eMMC as {} \
                     but no network link on USB {} within {secs:.0} s; NVIDIA's QSPI step needs it",
                    d.name, d.usb.port
                ),
            }));
        }
        std::thread::sleep(POLL.min(deadline - now));
    }
}

/// The exposed eMMC as a target, after the same checks as any block device. Outside `/dev`
/// (a test fixture) a regular file stands in for it.
fn open_target(ctx: &Ctx<'_>, disk: &ExposedDisk) -> Result<Box<dyn Target>> {
    let path = ctx.host.dev.join(&disk.name);
    let shown = path.display().to_string();
    let image_size = ctx.image.image_size();
    if disk.size < image_size {
        return Err(FlashError::refused(
            shown,
            format!(
                "the eMMC it exposes holds {} bytes, the image needs {image_size}; build for \
                 this module's eMMC (the recipe's partitions.disk)",
                disk.size
            ),
        ));
    }
    let meta = std::fs::metadata(&path)
        .map_err(|e| FlashError::io(format!("reading metadata of {shown}"), e))?;
    if std::os::unix::fs::FileTypeExt::is_block_device(&meta.file_type()) {
        let facts = HostFacts::gather(&HostPaths {
            sysfs: ctx.host.sysfs.clone(),
            ..HostPaths::default()
        })?;
        let real: PathBuf = std::fs::canonicalize(&path)
            .map_err(|e| FlashError::io(format!("resolving {shown}"), e))?;
        let policy = Policy {
            image_size,
            force: ctx.plan.force,
        };
        check_disk(&facts, &real, policy)?;
        return Ok(Box::new(BlockTarget::open(&real)?));
    }
    if meta.is_file() && ctx.host.dev != Path::new("/dev") {
        return Ok(Box::new(FileTarget::open(&path, 0)?));
    }
    Err(FlashError::refused(shown, "it is not a block device"))
}
