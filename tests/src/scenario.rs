//! The VM tier's scenario helper: one folder per scenario (its own copy of the disk, UEFI
//! variables and TPM state), numbered boots with their console logs, guest scripts read from
//! `tests/scripts/`, and power cuts (QEMU killed, as pulling the plug).
//!
//! A boot's script reaches the guest through QEMU's fw_cfg and is run by the test images' hook
//! unit (tests/overlays/vm-hooks) once the system is up. Scripts are files in `tests/scripts/`
//! with `@NAME@` placeholders, joined in order; the script decides how the boot ends
//! (`systemctl poweroff` or `reboot` ends the QEMU process, which runs with `-no-reboot`).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use aperture_image::qemu::{Firmware, SecureBootVm, Vm, VmConfig};
use aperture_image::recipe::Arch;
use aperture_image::secure_boot::{SecureBootCerts, VarsMode};

use crate::{boot, copy_disk, scenario_dir, workspace, BOOT_TIMEOUT};

/// A guest script assembled from `tests/scripts/*.sh` pieces.
#[derive(Debug, Clone, Default)]
pub struct Script {
    text: String,
}

impl Script {
    /// An empty script.
    pub fn new() -> Script {
        Script::default()
    }

    /// Append `tests/scripts/<name>.sh` with each `@KEY@` replaced by its value; a placeholder
    /// left unreplaced is an error (a typo would otherwise reach the guest).
    pub fn piece(mut self, name: &str, vars: &[(&str, &str)]) -> Result<Script> {
        let path = workspace().join("tests/scripts").join(format!("{name}.sh"));
        let mut text = std::fs::read_to_string(&path)
            .with_context(|| format!("reading {}", path.display()))?;
        for (k, v) in vars {
            text = text.replace(&format!("@{k}@"), v);
        }
        if let Some(left) = placeholder(&text) {
            bail!(
                "{}: placeholder @{left}@ was given no value",
                path.display()
            );
        }
        self.text.push_str(&text);
        if !self.text.ends_with('\n') {
            self.text.push('\n');
        }
        Ok(self)
    }

    /// Append literal lines.
    pub fn line(mut self, line: &str) -> Script {
        self.text.push_str(line);
        self.text.push('\n');
        self
    }

    /// The script's text.
    pub fn text(&self) -> &str {
        &self.text
    }
}

/// The first `@NAME@` (upper-case letters and `_`) left in `text`.
fn placeholder(text: &str) -> Option<String> {
    let parts: Vec<&str> = text.split('@').collect();
    parts
        .iter()
        .enumerate()
        .skip(1)
        .take(parts.len().saturating_sub(2))
        .map(|(_, p)| *p)
        .find(|p| !p.is_empty() && p.chars().all(|c| c.is_ascii_uppercase() || c == '_'))
        .map(str::to_string)
}

/// One VM scenario: a folder with its own disk, UEFI variables and TPM, and its boots.
#[derive(Debug)]
pub struct Scenario {
    /// The scenario's folder (`target/aperture-tests/vm/<name>`).
    pub dir: PathBuf,
    /// Its disk (a sparse copy of a build's `disk.img`).
    pub disk: PathBuf,
    arch: Arch,
    boots: usize,
    /// The build's Secure Boot certificates (`secure-boot/` beside its `disk.img`): x86-64
    /// scenarios boot OVMF with Secure Boot on and only these keys enrolled, as an appliance's
    /// firmware is.
    secure_boot: Option<SecureBootCerts>,
}

/// A scenario that passed leaves its logs and scripts but not its disk copy (up to a few GiB
/// each; a CI machine's disk is not large): a failing one keeps everything to look at.
impl Drop for Scenario {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            let _ = std::fs::remove_file(&self.disk);
        }
    }
}

impl Scenario {
    /// A new scenario `name` on a copy of `disk_img`.
    pub fn new(name: &str, disk_img: &Path, arch: Arch) -> Result<Scenario> {
        let dir = scenario_dir(name)?;
        let disk = dir.join("disk.img");
        copy_disk(disk_img, &disk)?;
        let certs = disk_img
            .parent()
            .map(|d| d.join(aperture_image::outputs::names::SECURE_BOOT))
            .filter(|d| d.join("db.crt").is_file() && arch == Arch::Amd64)
            .map(|d| SecureBootCerts {
                pk: d.join("PK.crt"),
                kek: d.join("KEK.crt"),
                db: d.join("db.crt"),
            });
        Ok(Scenario {
            dir,
            disk,
            arch,
            boots: 0,
            secure_boot: certs,
        })
    }

    /// Boots so far.
    pub fn boots(&self) -> usize {
        self.boots
    }

    /// Boot with `script` run by the test hook (none: the hook prints that it has none); the
    /// console goes to `boot<N>-<what>.log`.
    pub fn boot(&mut self, what: &str, script: Option<&Script>) -> Result<Vm> {
        self.boot_with(what, script, |_| {})
    }

    /// Boot as [`Scenario::boot`], but with the firmware's variable store in `mode` (Secure
    /// Boot off, another db, ...), kept in a store file of its own so that the scenario's
    /// enrolled store stays as it was. Fails for a build without Secure Boot certificates.
    pub fn boot_secure_boot(
        &mut self,
        what: &str,
        script: Option<&Script>,
        mode: VarsMode,
    ) -> Result<Vm> {
        let certs = self
            .secure_boot
            .clone()
            .context("this scenario's build has no Secure Boot certificates beside disk.img")?;
        let vars = self.dir.join(format!("vars-{what}.fd"));
        self.boot_with(what, script, move |c| {
            c.firmware = Firmware::SecureBoot(SecureBootVm { certs, mode });
            c.vars = vars;
        })
    }

    /// [`Scenario::boot`] with a change to the VM's configuration (no TPM, a USB stick, ...).
    pub fn boot_with(
        &mut self,
        what: &str,
        script: Option<&Script>,
        tweak: impl FnOnce(&mut VmConfig),
    ) -> Result<Vm> {
        self.boots += 1;
        let name = format!("boot{}-{what}", self.boots);
        let script_file = match script {
            Some(s) => {
                let p = self.dir.join(format!("{name}.sh"));
                std::fs::write(&p, format!("set -u\n{}", s.text()))?;
                Some(p)
            }
            None => None,
        };
        let secure_boot = self.secure_boot.clone();
        boot(self.arch, &self.disk, &self.dir, &name, |c| {
            if let Some(certs) = secure_boot {
                c.firmware = Firmware::SecureBoot(SecureBootVm {
                    certs,
                    mode: VarsMode::Enrolled,
                });
            }
            if let Some(p) = script_file {
                c.fw_cfg.push(("script".into(), p));
            }
            tweak(c);
        })
    }

    /// Boot until the console shows `done` (a reset or an update reboots on its own, which
    /// ends QEMU), at most `max` boots, each given `per_boot`. Returns the console of the last
    /// boot and how many boots it took.
    pub fn boot_until(
        &mut self,
        what: &str,
        script: &Script,
        done: &str,
        max: usize,
        per_boot: Duration,
    ) -> Result<(String, usize)> {
        for n in 1..=max {
            let t = Instant::now();
            let mut vm = self.boot(what, Some(script))?;
            match vm.wait_for(done, per_boot) {
                Ok(_) => {
                    eprintln!("{what} boot {n}: `{done}` after {:.0?}", t.elapsed());
                    let _ = vm.wait_exit(BOOT_TIMEOUT);
                    return Ok((vm.console(), n));
                }
                Err(e) => {
                    let console = vm.console();
                    if console.contains("Kernel panic") {
                        bail!("{what} boot {n} panicked: {e:#}");
                    }
                    eprintln!(
                        "{what} boot {n} ended after {:.0?} without `{done}` (a reboot)",
                        t.elapsed()
                    );
                }
            }
        }
        bail!("{what}: `{done}` never appeared in {max} boots")
    }
}

/// Cut the power: kill QEMU at once (nothing the guest has not handed to the virtual disk
/// survives, exactly as when the plug is pulled), `after` the moment `marker` appeared on the
/// console. Returns the console up to the cut.
pub fn cut_after(vm: &mut Vm, marker: &str, after: Duration, timeout: Duration) -> Result<String> {
    vm.wait_for(marker, timeout)
        .with_context(|| format!("waiting for `{marker}` before the power cut"))?;
    std::thread::sleep(after);
    vm.kill();
    Ok(vm.console())
}

/// The text after `marker` on the first console line holding it.
pub fn after(line: &str, marker: &str) -> String {
    line.split(marker)
        .nth(1)
        .unwrap_or_default()
        .trim()
        .to_string()
}

/// The first console line holding `marker`; an error naming the marker and the console's end.
pub fn line_of(console: &str, marker: &str) -> Result<String> {
    console
        .lines()
        .find(|l| l.contains(marker))
        .map(str::to_string)
        .with_context(|| {
            format!(
                "no `{marker}` on the console; its last lines:\n{}",
                console
                    .lines()
                    .rev()
                    .take(25)
                    .collect::<Vec<_>>()
                    .into_iter()
                    .rev()
                    .collect::<Vec<_>>()
                    .join("\n")
            )
        })
}

/// A random hex string of `bytes` bytes (canaries).
pub fn random_hex(bytes: usize) -> String {
    let mut b = vec![0u8; bytes];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut b))
        .expect("reading /dev/urandom");
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Whether `needle` occurs anywhere in the raw bytes of `file` (grep reads holes as zeros).
pub fn file_contains(file: &Path, needle: &str) -> Result<bool> {
    let st = std::process::Command::new("grep")
        .args(["-q", "-a", "-F", "--", needle])
        .arg(file)
        .status()
        .context("running grep")?;
    match st.code() {
        Some(0) => Ok(true),
        Some(1) => Ok(false),
        _ => bail!("grep failed on {}: {st}", file.display()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_left_are_found() {
        assert_eq!(placeholder("echo @URL@ x"), Some("URL".into()));
        assert_eq!(placeholder("mail a@b.c and d@e"), None);
        assert_eq!(placeholder("no placeholders"), None);
    }
}
