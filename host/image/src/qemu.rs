//! Running built images under QEMU with UEFI firmware: for `vm run` (console on the terminal) and
//! for the VM test tier (console captured, scanned for markers, one QEMU process per boot).
//!
//! KVM is used only when it demonstrably works: `/dev/kvm` can exist on a nested hypervisor where
//! OVMF crashes (MACHINE-NOTES), so [`probe_kvm`] boots the firmware under KVM and waits for it
//! to speak before trusting it. Otherwise TCG.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::recipe::Arch;
use crate::secure_boot::{self, SecureBootCerts, VarsMode};

/// Accelerator actually used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accel {
    /// Hardware virtualisation.
    Kvm,
    /// Software emulation.
    Tcg,
}

impl Accel {
    /// QEMU's name.
    pub fn name(self) -> &'static str {
        match self {
            Accel::Kvm => "kvm",
            Accel::Tcg => "tcg",
        }
    }
}

/// UEFI firmware files of an architecture (Debian's ovmf and qemu-efi-aarch64 packages).
pub fn firmware(arch: Arch) -> (PathBuf, PathBuf) {
    match arch {
        Arch::Amd64 => (
            PathBuf::from("/usr/share/OVMF/OVMF_CODE_4M.fd"),
            PathBuf::from("/usr/share/OVMF/OVMF_VARS_4M.fd"),
        ),
        Arch::Arm64 => (
            PathBuf::from("/usr/share/AAVMF/AAVMF_CODE.fd"),
            PathBuf::from("/usr/share/AAVMF/AAVMF_VARS.fd"),
        ),
    }
}

/// The Secure Boot firmware of an architecture: its code and the empty variable store template
/// [`secure_boot::make_vars`] enrolls our keys into.
///
/// x86-64: Debian's `OVMF_CODE_4M.secboot.fd`, which refuses to run without SMM, so that only
/// firmware code in SMM can write the variable flash (QEMU's `secure=on` pflash): a guest kernel
/// cannot rewrite its own keys or `SecureBootEnable`. arm64 is refused: Debian's AAVMF checks
/// signatures too, but with no SMM (nor a secure world on `virt`) nothing keeps the guest from
/// writing the variable flash directly, so a test on it could not show that only our keys
/// decide; and its `AAVMF_VARS.fd` is a blank flash image that virt-fw-vars cannot read. (The
/// Jetson boards' Secure Boot is NVIDIA's fuse flow, not AAVMF's; issue 18 REPORT.)
pub fn secure_boot_firmware(arch: Arch) -> Result<(PathBuf, PathBuf)> {
    match arch {
        Arch::Amd64 => Ok((
            PathBuf::from("/usr/share/OVMF/OVMF_CODE_4M.secboot.fd"),
            PathBuf::from("/usr/share/OVMF/OVMF_VARS_4M.fd"),
        )),
        Arch::Arm64 => bail!(
            "Secure Boot VMs are x86-64 only here: arm64's AAVMF has no SMM-protected variable \
             store, so the guest could rewrite its own keys, and Debian's AAVMF_VARS.fd is a \
             blank flash image virt-fw-vars cannot enroll keys into"
        ),
    }
}

/// The UEFI firmware a VM starts with.
#[derive(Debug, Clone, Default)]
pub enum Firmware {
    /// Debian's plain build ([`firmware`]) and a copy of its empty variable store: no Secure
    /// Boot.
    #[default]
    Plain,
    /// The Secure Boot build ([`secure_boot_firmware`], with SMM) and a variable store made by
    /// [`secure_boot::make_vars`].
    SecureBoot(SecureBootVm),
}

/// The keys and variable store of a Secure Boot machine.
#[derive(Debug, Clone)]
pub struct SecureBootVm {
    /// Our PK, KEK and db certificates.
    pub certs: SecureBootCerts,
    /// Which store to start with (keys enrolled and Secure Boot on, off, an extra db, none).
    pub mode: VarsMode,
}

/// The file beside a variable store that says what it was made for
/// ([`secure_boot::describe`]; none: the plain firmware's template).
fn vars_stamp(vars: &Path) -> PathBuf {
    let mut name = vars.file_name().unwrap_or_default().to_os_string();
    name.push(".made-for");
    vars.with_file_name(name)
}

fn qemu_binary(arch: Arch) -> &'static str {
    match arch {
        Arch::Amd64 => "qemu-system-x86_64",
        Arch::Arm64 => "qemu-system-aarch64",
    }
}

/// Make `overlay` a qcow2 copy-on-write layer over the raw image `base`: the guest's writes
/// land in the overlay, and `base` (a signed output) is only ever read.
pub fn create_overlay(base: &Path, overlay: &Path) -> Result<()> {
    let base = base
        .canonicalize()
        .with_context(|| format!("resolving {}", base.display()))?;
    let out = Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2", "-F", "raw", "-b"])
        .arg(&base)
        .arg(overlay)
        .stdin(std::process::Stdio::null())
        .output()
        .context("running qemu-img (package qemu-utils)")?;
    if !out.status.success() {
        bail!(
            "qemu-img create of {} over {} failed: {}",
            overlay.display(),
            base.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// A virtual machine to start.
#[derive(Debug, Clone)]
pub struct VmConfig {
    /// Guest architecture.
    pub arch: Arch,
    /// The boot disk: raw, or a qcow2 overlay when its name ends in `.qcow2`.
    pub disk: PathBuf,
    /// Writable UEFI variable store, made for [`VmConfig::firmware`] if missing and kept
    /// between boots (the guest's boot entries live there). A store made for other firmware,
    /// mode or keys is refused rather than reused.
    pub vars: PathBuf,
    /// The firmware: plain, or Secure Boot with our keys.
    pub firmware: Firmware,
    /// Memory in MiB.
    pub memory_mib: u32,
    /// Virtual CPUs (`-smp`). Under TCG each is a host thread: two guests of two CPUs each on
    /// a two-core host spin on each other's preempted CPUs (a lock holder, a TLB flush's
    /// acknowledgement), so side-by-side test guests get one each.
    pub cpus: u32,
    /// Accelerator.
    pub accel: Accel,
    /// Discard disk writes when QEMU exits.
    pub snapshot: bool,
    /// Host-to-guest TCP forwards (host port on 127.0.0.1, guest port).
    pub forwards: Vec<(u16, u16)>,
    /// Files offered to the guest through fw_cfg (`opt/aperture/<name>`).
    pub fw_cfg: Vec<(String, PathBuf)>,
    /// swtpm control socket for a TPM 2.0 device.
    pub tpm_socket: Option<PathBuf>,
    /// Exit QEMU when the guest reboots (one process per boot, as the VM tier wants).
    pub no_reboot: bool,
    /// Extra QEMU arguments.
    pub extra: Vec<String>,
    /// A kernel, initrd and command line for the firmware to start instead of a boot loader
    /// from the disk (the Jetson twin: what L4TLauncher would take from a kernel partition).
    pub direct: Option<DirectBoot>,
}

/// Files QEMU hands the UEFI firmware through fw_cfg (`-kernel`, `-initrd`, `-append`); AAVMF
/// starts that kernel as an EFI application before any boot option, with its initrd and command
/// line, so the guest runs with UEFI runtime services.
#[derive(Debug, Clone)]
pub struct DirectBoot {
    /// The kernel (an EFI-stub `Image`).
    pub kernel: PathBuf,
    /// The initrd.
    pub initrd: PathBuf,
    /// The kernel command line.
    pub cmdline: String,
}

impl VmConfig {
    /// A config with the defaults of the VM tier.
    pub fn new(arch: Arch, disk: &Path, vars: &Path) -> Self {
        VmConfig {
            arch,
            disk: disk.to_path_buf(),
            vars: vars.to_path_buf(),
            firmware: Firmware::Plain,
            memory_mib: 1024,
            cpus: 2,
            accel: Accel::Tcg,
            snapshot: false,
            forwards: Vec::new(),
            fw_cfg: Vec::new(),
            tpm_socket: None,
            no_reboot: true,
            extra: Vec::new(),
            direct: None,
        }
    }

    /// Make [`VmConfig::vars`] for the firmware if it is missing; if it exists, check that it
    /// was made for the same firmware, mode and keys (its stamp, [`vars_stamp`]): a Secure Boot
    /// test that reused a store made with Secure Boot off would pass for the wrong reason.
    fn prepare_vars(&self, template: &Path) -> Result<()> {
        let secure = match &self.firmware {
            Firmware::Plain => None,
            Firmware::SecureBoot(sb) => Some((
                sb,
                secure_boot::describe(&sb.certs, &sb.mode)
                    .context("describing the Secure Boot variable store")?,
            )),
        };
        let wanted = secure.as_ref().map(|(_, line)| line.as_str());
        let stamp = vars_stamp(&self.vars);
        if self.vars.exists() {
            let made = match std::fs::read_to_string(&stamp) {
                Ok(s) => Some(s.trim().to_string()),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
                Err(e) => {
                    return Err(e).with_context(|| format!("reading {}", stamp.display()));
                }
            };
            if made.as_deref() != wanted {
                let plain = "the plain firmware";
                bail!(
                    "the UEFI variable store {} was made for {}, but this machine starts {}: \
                     remove it and {} to start from a new store",
                    self.vars.display(),
                    made.as_deref().unwrap_or(plain),
                    wanted.unwrap_or(plain),
                    stamp.display()
                );
            }
            return Ok(());
        }
        match secure {
            Some((sb, line)) => {
                // The stamp first: a store without one would read as the plain firmware's.
                std::fs::write(&stamp, format!("{line}\n"))
                    .with_context(|| format!("writing {}", stamp.display()))?;
                secure_boot::make_vars(template, &sb.certs, &sb.mode, &self.vars).with_context(
                    || {
                        format!(
                            "making the UEFI variable store {} ({})",
                            self.vars.display(),
                            sb.mode.name()
                        )
                    },
                )?;
            }
            None => {
                if let Err(e) = std::fs::remove_file(&stamp) {
                    if e.kind() != std::io::ErrorKind::NotFound {
                        return Err(e).with_context(|| format!("removing {}", stamp.display()));
                    }
                }
                std::fs::copy(template, &self.vars).with_context(|| {
                    format!("copying the UEFI variable store {}", template.display())
                })?;
            }
        }
        Ok(())
    }

    /// The QEMU command line. The guest's console is its first serial port on stdio; a guest
    /// reboot ends QEMU (`-no-reboot`), so each boot is its own process.
    pub fn command(&self) -> Result<Command> {
        let (code, vars_template) = match &self.firmware {
            Firmware::Plain => firmware(self.arch),
            Firmware::SecureBoot(_) => secure_boot_firmware(self.arch)?,
        };
        if !code.exists() {
            bail!(
                "UEFI firmware {} is missing: install {}",
                code.display(),
                if self.arch == Arch::Amd64 {
                    "ovmf"
                } else {
                    "qemu-efi-aarch64"
                }
            );
        }
        self.prepare_vars(&vars_template)?;
        let secure = matches!(self.firmware, Firmware::SecureBoot(_));
        let mut c = Command::new(qemu_binary(self.arch));
        match self.arch {
            // SMM: the secboot build stops without it; it is what guards the variable flash.
            Arch::Amd64 if secure => c.args([
                "-machine",
                &format!("q35,smm=on,accel={}", self.accel.name()),
                "-global",
                "driver=cfi.pflash01,property=secure,value=on",
            ]),
            Arch::Amd64 => c.args(["-machine", &format!("q35,accel={}", self.accel.name())]),
            Arch::Arm64 => c.args(["-machine", &format!("virt,accel={}", self.accel.name())]),
        };
        // TCG mis-emulates x86 AVX2 gathers (numpy segfaults in vpgatherdd): keep them off.
        // On arm64, `max` has pointer authentication, which Debian's kernel and its userland
        // (built with branch protection) use on every call; TCG computes the architected QARMA5
        // cipher in software, slowly. `pauth-impdef` keeps the feature with QEMU's own cheap
        // algorithm, which QEMU's documentation recommends for TCG.
        c.args([
            "-cpu",
            match (self.accel, self.arch) {
                (Accel::Kvm, _) => "host",
                (_, Arch::Amd64) => "max,avx2=off",
                (_, Arch::Arm64) => "max,pauth-impdef=on",
            },
        ]);
        c.args([
            "-smp",
            &self.cpus.max(1).to_string(),
            "-m",
            &self.memory_mib.to_string(),
        ]);
        c.arg("-drive").arg(format!(
            "if=pflash,format=raw,unit=0,readonly=on,file={}",
            code.display()
        ));
        c.arg("-drive").arg(format!(
            "if=pflash,format=raw,unit=1,file={}",
            self.vars.display()
        ));
        let snap = if self.snapshot { ",snapshot=on" } else { "" };
        let format = if self.disk.extension().is_some_and(|e| e == "qcow2") {
            "qcow2"
        } else {
            "raw"
        };
        c.arg("-drive").arg(format!(
            "if=none,id=disk0,format={format},cache=unsafe,file={}{snap}",
            self.disk.display()
        ));
        // A serial number is a -device property on QEMU 7.2 (MACHINE-NOTES).
        c.args([
            "-device",
            "virtio-blk-pci,drive=disk0,bootindex=0,serial=aperture-disk0",
        ]);
        let mut net = "user,id=net0".to_string();
        for (h, g) in &self.forwards {
            net.push_str(&format!(",hostfwd=tcp:127.0.0.1:{h}-:{g}"));
        }
        c.args(["-netdev", &net, "-device", "virtio-net-pci,netdev=net0"]);
        c.args(["-device", "virtio-rng-pci"]);
        for (name, file) in &self.fw_cfg {
            c.arg("-fw_cfg")
                .arg(format!("name=opt/aperture/{name},file={}", file.display()));
        }
        if let Some(sock) = &self.tpm_socket {
            c.arg("-chardev")
                .arg(format!("socket,id=chrtpm,path={}", sock.display()));
            c.args(["-tpmdev", "emulator,id=tpm0,chardev=chrtpm"]);
            c.args([
                "-device",
                if self.arch == Arch::Amd64 {
                    "tpm-tis,tpmdev=tpm0"
                } else {
                    "tpm-tis-device,tpmdev=tpm0"
                },
            ]);
        }
        c.args(["-display", "none", "-serial", "stdio", "-monitor", "none"]);
        if self.no_reboot {
            c.arg("-no-reboot");
        }
        if let Some(d) = &self.direct {
            c.arg("-kernel").arg(&d.kernel);
            c.arg("-initrd").arg(&d.initrd);
            c.arg("-append").arg(&d.cmdline);
        }
        c.args(&self.extra);
        Ok(c)
    }
}

/// A running machine whose console is captured.
pub struct Vm {
    child: Child,
    console: Arc<(Mutex<Console>, Condvar)>,
    started: Instant,
    tpm: Option<Swtpm>,
}

#[derive(Default)]
struct Console {
    text: String,
    closed: bool,
}

impl Vm {
    /// Start QEMU; the console goes to `log` and to memory for [`Vm::wait_for`].
    pub fn start(cfg: &VmConfig, log: &Path) -> Result<Vm> {
        let mut c = cfg.command()?;
        let shown = aperture_sys::cmd::command_line(&c);
        let mut logf =
            std::fs::File::create(log).with_context(|| format!("creating {}", log.display()))?;
        writeln!(logf, "$ {shown}")?;
        let mut child = c
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("starting `{shown}` (is QEMU installed?)"))?;
        let console = Arc::new((Mutex::new(Console::default()), Condvar::new()));
        for stream in [
            child
                .stdout
                .take()
                .map(|s| Box::new(s) as Box<dyn std::io::Read + Send>),
            child
                .stderr
                .take()
                .map(|s| Box::new(s) as Box<dyn std::io::Read + Send>),
        ]
        .into_iter()
        .flatten()
        {
            let console = console.clone();
            let mut logf = logf.try_clone()?;
            std::thread::spawn(move || {
                let mut r = BufReader::new(stream);
                let mut buf = Vec::new();
                loop {
                    buf.clear();
                    match r.read_until(b'\n', &mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(_) => {
                            let _ = logf.write_all(&buf);
                            let (m, cv) = &*console;
                            m.lock()
                                .expect("console lock")
                                .text
                                .push_str(&String::from_utf8_lossy(&buf));
                            cv.notify_all();
                        }
                    }
                }
                let (m, cv) = &*console;
                m.lock().expect("console lock").closed = true;
                cv.notify_all();
            });
        }
        Ok(Vm {
            child,
            console,
            started: Instant::now(),
            tpm: None,
        })
    }

    /// Keep `tpm` (the swtpm serving this machine's TPM) running as long as this machine.
    pub fn keep_tpm(&mut self, tpm: Swtpm) {
        self.tpm = Some(tpm);
    }

    /// Wait until the console shows `needle`; returns the whole line it is on.
    pub fn wait_for(&self, needle: &str, timeout: Duration) -> Result<String> {
        let deadline = Instant::now() + timeout;
        let (m, cv) = &*self.console;
        let mut c = m.lock().expect("console lock");
        loop {
            if let Some(pos) = c.text.find(needle) {
                let start = c.text[..pos].rfind('\n').map(|i| i + 1).unwrap_or(0);
                let end = c.text[pos..]
                    .find('\n')
                    .map(|i| pos + i)
                    .unwrap_or(c.text.len());
                return Ok(c.text[start..end].trim_end_matches('\r').to_string());
            }
            let now = Instant::now();
            if now >= deadline || c.closed {
                let tail: String = c
                    .text
                    .lines()
                    .rev()
                    .take(25)
                    .collect::<Vec<_>>()
                    .into_iter()
                    .rev()
                    .collect::<Vec<_>>()
                    .join("\n");
                bail!(
                    "{} waiting {:.0?} for `{needle}` on the console; last lines:\n{tail}",
                    if c.closed {
                        "QEMU exited while"
                    } else {
                        "timed out"
                    },
                    self.started.elapsed()
                );
            }
            c = cv.wait_timeout(c, deadline - now).expect("console lock").0;
        }
    }

    /// Everything the console printed so far.
    pub fn console(&self) -> String {
        self.console.0.lock().expect("console lock").text.clone()
    }

    /// Wait for QEMU to exit (the guest powered off or rebooted).
    pub fn wait_exit(&mut self, timeout: Duration) -> Result<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(s) = self.child.try_wait()? {
                return Ok(s);
            }
            if Instant::now() >= deadline {
                let _ = self.child.kill();
                bail!("the guest did not power off within {timeout:?}");
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Stop QEMU now.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Vm {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            self.kill();
        }
        // QEMU is gone: its TPM goes with it (dropped after the child is reaped).
        self.tpm.take();
    }
}

/// Whether swtpm (Debian's swtpm package) is installed.
pub fn swtpm_available() -> bool {
    std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join("swtpm").is_file()))
        .unwrap_or(false)
}

/// A software TPM 2.0 (swtpm) for one QEMU process: its state folder keeps the TPM's seeds
/// and NV memory across boots, so keys sealed on one boot unseal on the next when the same
/// folder is used again. Stopped when dropped (QEMU also ends it when it exits).
pub struct Swtpm {
    child: Child,
    socket: PathBuf,
}

impl Swtpm {
    /// Start `swtpm socket --tpm2` with its state in `state` (created if missing) and its
    /// control socket inside it; returns once the socket exists.
    pub fn start(state: &Path) -> Result<Swtpm> {
        std::fs::create_dir_all(state).with_context(|| format!("creating {}", state.display()))?;
        let socket = state.join("swtpm-sock");
        let _ = std::fs::remove_file(&socket);
        let log = state.join("swtpm.log");
        let mut c = Command::new("swtpm");
        c.arg("socket")
            .arg("--tpm2")
            .arg("--tpmstate")
            .arg(format!("dir={}", state.display()))
            .arg("--ctrl")
            .arg(format!("type=unixio,path={}", socket.display()))
            .arg("--log")
            .arg(format!("file={},level=1", log.display()))
            // Ends when QEMU disconnects, so a crashed test leaves nothing behind.
            .arg("--terminate");
        let shown = aperture_sys::cmd::command_line(&c);
        let mut child = c
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .with_context(|| format!("starting `{shown}` (is swtpm installed?)"))?;
        let deadline = Instant::now() + Duration::from_secs(10);
        while !socket.exists() {
            if let Some(st) = child.try_wait()? {
                bail!("`{shown}` exited with {st} before making its socket");
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                bail!("`{shown}` made no socket within 10 s");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(Swtpm { child, socket })
    }

    /// The control socket to give QEMU ([`VmConfig::tpm_socket`]).
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// Wait briefly for swtpm to end by itself (it writes its state when QEMU shuts it down),
    /// then stop it.
    pub fn stop(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Swtpm {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Whether KVM runs UEFI guests here: boot the firmware under KVM without a disk and wait for it
/// to print on the serial console. The answer is cached in `cache` (per host kernel).
pub fn probe_kvm(arch: Arch, cache: &Path) -> Accel {
    if arch != Arch::Amd64 || !Path::new("/dev/kvm").exists() {
        return Accel::Tcg;
    }
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let marker = cache.join(format!("kvm-probe-{}", kernel.trim()));
    if let Ok(s) = std::fs::read_to_string(&marker) {
        return if s.trim() == "kvm" {
            Accel::Kvm
        } else {
            Accel::Tcg
        };
    }
    let result = (|| -> Result<Accel> {
        let tmp = tempfile::tempdir()?;
        let (code, vars) = firmware(arch);
        let v = tmp.path().join("vars.fd");
        std::fs::copy(&vars, &v)?;
        let mut c = Command::new(qemu_binary(arch));
        c.args([
            "-machine",
            "q35,accel=kvm",
            "-cpu",
            "host",
            "-m",
            "256",
            "-nodefaults",
            "-display",
            "none",
            "-serial",
            "stdio",
            "-no-reboot",
        ]);
        c.arg("-drive").arg(format!(
            "if=pflash,format=raw,unit=0,readonly=on,file={}",
            code.display()
        ));
        c.arg("-drive")
            .arg(format!("if=pflash,format=raw,unit=1,file={}", v.display()));
        let mut child = c
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()?;
        let out = child.stdout.take().context("no stdout")?;
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut r = BufReader::new(out);
            let mut line = String::new();
            while r.read_line(&mut line).map(|n| n > 0).unwrap_or(false) {
                // OVMF's boot manager speaks once the firmware has run its whole DXE phase.
                if line.contains("BdsDxe") || line.contains("Shell>") || line.contains("UEFI") {
                    let _ = tx.send(());
                    return;
                }
                line.clear();
            }
        });
        let ok = rx.recv_timeout(Duration::from_secs(20)).is_ok();
        let _ = child.kill();
        let _ = child.wait();
        Ok(if ok { Accel::Kvm } else { Accel::Tcg })
    })();
    let accel = result.unwrap_or(Accel::Tcg);
    let _ = std::fs::create_dir_all(cache);
    let _ = std::fs::write(&marker, accel.name());
    accel
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(c: &Command) -> Vec<String> {
        c.get_args()
            .map(|a| a.to_string_lossy().into_owned())
            .collect()
    }

    /// Whether the firmware file `code` is installed; if not, `SKIPPED` (a panic under
    /// `APERTURE_REQUIRE_TOOLS=1`).
    fn have(code: &Path, test: &str) -> bool {
        if code.is_file() {
            return true;
        }
        let why = format!(
            "{test}: {} (Debian package ovmf) is missing; `cargo xtask test` installs it as root",
            code.display()
        );
        assert!(
            !aperture_sys::tool::required(),
            "APERTURE_REQUIRE_TOOLS=1 and a file is missing: {why}"
        );
        eprintln!("SKIPPED: {why}");
        false
    }

    fn setup_mode() -> Firmware {
        // Setup mode copies the template: no certificates or virt-fw-vars needed.
        Firmware::SecureBoot(SecureBootVm {
            certs: SecureBootCerts {
                pk: "unused".into(),
                kek: "unused".into(),
                db: "unused".into(),
            },
            mode: VarsMode::Setup,
        })
    }

    #[test]
    fn secure_boot_machines_get_smm_and_the_secboot_build() {
        let test = "secure_boot_machines_get_smm_and_the_secboot_build";
        let (code, template) = secure_boot_firmware(Arch::Amd64).unwrap();
        if !have(&code, test) {
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let vars = dir.path().join("efivars.fd");
        let mut cfg = VmConfig::new(Arch::Amd64, &dir.path().join("disk.img"), &vars);
        cfg.firmware = setup_mode();
        let a = args(&cfg.command().unwrap());
        let pos = |w: &str| a.iter().position(|x| x == w);
        let machine = pos("-machine").unwrap();
        assert_eq!(a[machine + 1], "q35,smm=on,accel=tcg");
        assert!(a
            .windows(2)
            .any(|w| w[0] == "-global" && w[1] == "driver=cfi.pflash01,property=secure,value=on"));
        let code_drive = format!(
            "if=pflash,format=raw,unit=0,readonly=on,file={}",
            code.display()
        );
        assert!(pos(&code_drive).is_some(), "{a:?}");
        assert_eq!(
            std::fs::read(&vars).unwrap(),
            std::fs::read(&template).unwrap()
        );
        // Kept and reused for the same firmware and mode.
        std::fs::write(&vars, b"changed by the guest").unwrap();
        cfg.command().unwrap();
        assert_eq!(std::fs::read(&vars).unwrap(), b"changed by the guest");
        // Refused for another firmware, and the other way round.
        cfg.firmware = Firmware::Plain;
        let err = format!("{:#}", cfg.command().unwrap_err());
        assert!(err.contains("was made for secure-boot firmware"), "{err}");
        let plain = dir.path().join("plain.fd");
        let mut cfg = VmConfig::new(Arch::Amd64, &dir.path().join("disk.img"), &plain);
        let a = args(&cfg.command().unwrap());
        assert!(!a
            .iter()
            .any(|x| x.contains("smm=on") || x.contains("secboot")));
        // Two CPUs unless asked otherwise (guests side by side get one each).
        assert!(a.windows(2).any(|w| w[0] == "-smp" && w[1] == "2"), "{a:?}");
        cfg.cpus = 1;
        let a = args(&cfg.command().unwrap());
        assert!(a.windows(2).any(|w| w[0] == "-smp" && w[1] == "1"), "{a:?}");
        assert!(!vars_stamp(&plain).exists());
        cfg.firmware = setup_mode();
        let err = format!("{:#}", cfg.command().unwrap_err());
        assert!(err.contains("was made for the plain firmware"), "{err}");
    }

    #[test]
    fn arm64_secure_boot_is_refused_with_the_reason() {
        let dir = tempfile::tempdir().unwrap();
        let mut cfg = VmConfig::new(
            Arch::Arm64,
            &dir.path().join("disk.img"),
            &dir.path().join("efivars.fd"),
        );
        cfg.firmware = setup_mode();
        let err = format!("{:#}", cfg.command().unwrap_err());
        assert!(err.contains("x86-64 only here"), "{err}");
        assert!(!dir.path().join("efivars.fd").exists());
    }
}
