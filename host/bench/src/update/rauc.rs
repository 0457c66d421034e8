//! RAUC's side of `bench update`: an openssl CA and signer, a `plain` RAUC bundle of the same
//! images, a `system.conf` of file-backed raw slots, and `rauc service` on a private D-Bus
//! system bus, so the host's own bus is left alone.

use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use super::{run_quiet, sparse, tail, timed, Inputs, RAUC_COMPATIBLE, SLOT_SIZE, ZSTD_LEVEL};

/// RAUC's keys, bundle, system.conf and file-backed slots.
pub(super) struct RaucSide {
    dir: PathBuf,
    pub(super) bundle: PathBuf,
    conf: PathBuf,
    pub(super) slot_b: PathBuf,
    boot_slot_size: u64,
}

/// A background process, killed and reaped on drop.
struct Daemon {
    name: &'static str,
    child: Child,
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Daemon {
    /// Fails if the process has already exited.
    fn check_running(&mut self, log: &Path) -> Result<()> {
        if let Some(status) = self.child.try_wait()? {
            bail!(
                "{} exited ({status}): {}",
                self.name,
                tail(&fs::read_to_string(log).unwrap_or_default(), 12)
            );
        }
        Ok(())
    }
}

/// The running bus and service (the service is dropped, so stopped, first).
pub(super) struct Service {
    rauc: Daemon,
    _bus: Daemon,
    bus_address: String,
    log: PathBuf,
    /// Where the service mounts bundles (unmounted on drop in case it was killed mid-install).
    bundle_mount: PathBuf,
}

impl RaucSide {
    pub(super) fn new(dir: &Path, inputs: &Inputs) -> Result<RaucSide> {
        fs::create_dir_all(dir)?;
        let keys = dir.join("keys");
        fs::create_dir_all(&keys)?;
        let k = |n: &str| keys.join(n);
        // A CA, and a signing certificate issued by it (no extended key usage: RAUC 1.8 checks
        // the S/MIME purpose, which a codeSigning-only certificate fails).
        run_quiet(
            Command::new("openssl")
                .args([
                    "req",
                    "-x509",
                    "-newkey",
                    "rsa:2048",
                    "-nodes",
                    "-days",
                    "365",
                    "-subj",
                    "/CN=aperture bench RAUC CA",
                    "-addext",
                    "basicConstraints=critical,CA:true",
                    "-addext",
                    "keyUsage=critical,keyCertSign,cRLSign",
                    "-keyout",
                ])
                .arg(k("ca.key.pem"))
                .arg("-out")
                .arg(k("ca.pem")),
            "openssl req (CA)",
        )?;
        run_quiet(
            Command::new("openssl")
                .args([
                    "req",
                    "-newkey",
                    "rsa:2048",
                    "-nodes",
                    "-subj",
                    "/CN=aperture bench RAUC signer",
                    "-keyout",
                ])
                .arg(k("signer.key.pem"))
                .arg("-out")
                .arg(k("signer.csr")),
            "openssl req (signer)",
        )?;
        fs::write(
            k("signer.ext"),
            "basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\n",
        )?;
        run_quiet(
            Command::new("openssl")
                .args(["x509", "-req", "-days", "365", "-set_serial", "1", "-in"])
                .arg(k("signer.csr"))
                .arg("-CA")
                .arg(k("ca.pem"))
                .arg("-CAkey")
                .arg(k("ca.key.pem"))
                .arg("-extfile")
                .arg(k("signer.ext"))
                .arg("-out")
                .arg(k("signer.pem")),
            "openssl x509 (signer)",
        )?;

        let content = dir.join("content");
        fs::create_dir_all(&content)?;
        // RAUC writes a raw slot only from a `*.img` file, so the kernel is `vmlinuz.img` here.
        for (src, name) in [
            (&inputs.rootfs, "rootfs.img"),
            (&inputs.kernel, "vmlinuz.img"),
            (&inputs.initrd, "initrd.img"),
        ] {
            fs::hard_link(src, content.join(name))
                .or_else(|_| fs::copy(src, content.join(name)).map(|_| ()))?;
        }
        fs::write(
            content.join("manifest.raucm"),
            format!(
                "[update]\ncompatible={RAUC_COMPATIBLE}\nversion=2.0.0\n\n[bundle]\nformat=plain\n\n\
                 [image.rootfs]\nfilename=rootfs.img\n\n[image.kernel]\nfilename=vmlinuz.img\n\n\
                 [image.initrd]\nfilename=initrd.img\n"
            ),
        )?;
        let bundle = dir.join("update.raucb");
        run_quiet(
            Command::new("rauc")
                .arg("bundle")
                .arg(format!("--cert={}", k("signer.pem").display()))
                .arg(format!("--key={}", k("signer.key.pem").display()))
                .arg(format!("--keyring={}", k("ca.pem").display()))
                .arg(format!(
                    "--mksquashfs-args=-comp zstd -Xcompression-level {ZSTD_LEVEL}"
                ))
                .arg(&content)
                .arg(&bundle),
            "rauc bundle",
        )?;
        fs::remove_dir_all(&content)?;

        for d in ["mnt", "data", "slots"] {
            fs::create_dir_all(dir.join(d))?;
        }
        let slots = dir.join("slots");
        let mut conf = format!(
            "[system]\ncompatible={RAUC_COMPATIBLE}\nbootloader=noop\nmountprefix={}\n\
             data-directory={}\n\n[keyring]\npath={}\n",
            dir.join("mnt").display(),
            dir.join("data").display(),
            k("ca.pem").display()
        );
        for (i, letter) in ["a", "b"].into_iter().enumerate() {
            conf += &format!(
                "\n[slot.rootfs.{i}]\ndevice={}\ntype=raw\nbootname={}\n",
                slots.join(format!("rootfs-{letter}.img")).display(),
                letter.to_uppercase()
            );
            for child in ["kernel", "initrd"] {
                conf += &format!(
                    "\n[slot.{child}.{i}]\ndevice={}\ntype=raw\nparent=rootfs.{i}\n",
                    slots.join(format!("{child}-{letter}.img")).display()
                );
            }
        }
        let conf_path = dir.join("system.conf");
        fs::write(&conf_path, conf)?;
        let side = RaucSide {
            dir: dir.to_path_buf(),
            bundle,
            conf: conf_path,
            slot_b: slots.join("rootfs-b.img"),
            boot_slot_size: inputs.boot_slot_size,
        };
        // Slot A is "booted"; its files only have to exist.
        for name in ["rootfs-a.img", "kernel-a.img", "initrd-a.img"] {
            sparse(
                &slots.join(name),
                if name.starts_with("rootfs") {
                    SLOT_SIZE
                } else {
                    side.boot_slot_size
                },
            )?;
        }
        side.fresh_slots()?;
        Ok(side)
    }

    /// Fresh sparse files for the target slot group B.
    pub(super) fn fresh_slots(&self) -> Result<()> {
        let slots = self.dir.join("slots");
        for name in ["rootfs-b.img", "kernel-b.img", "initrd-b.img"] {
            let p = slots.join(name);
            let _ = fs::remove_file(&p);
            sparse(
                &p,
                if name.starts_with("rootfs") {
                    SLOT_SIZE
                } else {
                    self.boot_slot_size
                },
            )?;
        }
        Ok(())
    }

    /// A private system bus (so the host's bus and its policy are left alone) and `rauc
    /// service` on it, booted from slot A; waits until the service answers.
    pub(super) fn start_service(&self) -> Result<Service> {
        let socket = self.dir.join("bus.sock");
        let bus_conf = self.dir.join("bus.conf");
        fs::write(
            &bus_conf,
            format!(
                "<!DOCTYPE busconfig PUBLIC \"-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN\"\n \
                 \"http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd\">\n<busconfig>\n  \
                 <type>system</type>\n  <listen>unix:path={}</listen>\n  <auth>EXTERNAL</auth>\n  \
                 <policy context=\"default\">\n    <allow user=\"root\"/>\n    <allow own=\"*\"/>\n    \
                 <allow send_destination=\"*\"/>\n    <allow receive_sender=\"*\"/>\n  </policy>\n</busconfig>\n",
                socket.display()
            ),
        )?;
        let bus_log = self.dir.join("bus.log");
        let bus_out = File::create(&bus_log)?;
        let mut bus = Daemon {
            name: "dbus-daemon",
            child: Command::new("dbus-daemon")
                .arg(format!("--config-file={}", bus_conf.display()))
                .arg("--nofork")
                .stdin(Stdio::null())
                .stdout(bus_out.try_clone()?)
                .stderr(bus_out)
                .spawn()
                .context("starting dbus-daemon")?,
        };
        let started = Instant::now();
        while !socket.exists() {
            bus.check_running(&bus_log)?;
            if started.elapsed() > Duration::from_secs(10) {
                bail!(
                    "dbus-daemon did not create {} within 10 s",
                    socket.display()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let bus_address = format!("unix:path={}", socket.display());
        let log = self.dir.join("rauc-service.log");
        let out = File::create(&log)?;
        let mut rauc = Daemon {
            name: "rauc service",
            child: Command::new("rauc")
                .arg("service")
                .arg(format!("--conf={}", self.conf.display()))
                .arg("--override-boot-slot=A")
                .env("DBUS_SYSTEM_BUS_ADDRESS", &bus_address)
                .stdin(Stdio::null())
                .stdout(out.try_clone()?)
                .stderr(out)
                .spawn()
                .context("starting rauc service")?,
        };
        let started = Instant::now();
        loop {
            rauc.check_running(&log)?;
            let status = Command::new("rauc")
                .arg("status")
                .env("DBUS_SYSTEM_BUS_ADDRESS", &bus_address)
                .stdin(Stdio::null())
                .output()
                .context("running rauc status")?;
            if status.status.success() {
                break;
            }
            if started.elapsed() > Duration::from_secs(15) {
                bail!(
                    "rauc service did not answer `rauc status` within 15 s: {}\nservice log: {}",
                    String::from_utf8_lossy(&status.stderr).trim(),
                    tail(&fs::read_to_string(&log).unwrap_or_default(), 12)
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Ok(Service {
            rauc,
            _bus: bus,
            bus_address,
            log,
            bundle_mount: self.dir.join("mnt").join("bundle"),
        })
    }

    /// One timed `rauc install` through the running service.
    pub(super) fn install(&self, service: &Service) -> Result<Duration> {
        let mut cmd = Command::new("rauc");
        cmd.arg("install")
            .arg(&self.bundle)
            .env("DBUS_SYSTEM_BUS_ADDRESS", &service.bus_address);
        timed(cmd, "rauc install").map_err(|e| {
            e.context(format!(
                "rauc service log: {}",
                tail(&fs::read_to_string(&service.log).unwrap_or_default(), 12)
            ))
        })
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        // Stop the service before its bus (field order would do the same; this says so).
        let _ = self.rauc.child.kill();
        let _ = self.rauc.child.wait();
        // Only ever mounted if the service was killed during an install (after an error).
        let mounted = fs::read_to_string("/proc/self/mounts")
            .map(|m| m.contains(&*self.bundle_mount.to_string_lossy()))
            .unwrap_or(false);
        if mounted {
            let _ = Command::new("umount").arg(&self.bundle_mount).status();
        }
    }
}
