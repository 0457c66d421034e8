//! The Jetson twin in the VM tier (`aperture_image::twin`): twin builds of the AGX Orin recipe
//! with the VM test hook, one twin per scenario (its own disk copy, UEFI variable store and
//! TPM), and numbered boots whose power-on decisions, console logs and times are kept.
//!
//! A boot is one QEMU process: [`TwinScenario::boot`] applies the firmware's A/B rules to the
//! twin's variables (the harness step) and starts QEMU on the chosen chain's boot image; the
//! guest script (fw_cfg, run by the test hook as on the qemu boards) decides how it ends.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use aperture_image::pipeline::{BuildOptions, BuildReport};
use aperture_image::progress::Reporter;
use aperture_image::qemu::{swtpm_available, Swtpm, Vm};
use aperture_image::twin::{PowerOn, Twin};
use aperture_slots::Slot;

use crate::scenario::Script;
use crate::{accel, derived_recipe, scenario_dir, test_root, workspace, BOOT_TIMEOUT};

/// How long an arm64 boot may take under TCG to reach a marker (arm64 TCG is about three
/// times slower than x86-64, MACHINE-NOTES; generous for a loaded CI machine).
pub const TWIN_TIMEOUT: Duration = Duration::from_secs(3 * BOOT_TIMEOUT.as_secs());

/// The marker of the agent's status line.
pub const STATUS: &str = "aperture-agent: product=";

/// The twin build every twin scenario starts from: (name, version) for [`twin_image`].
/// `cargo xtask test --full` makes it in the background before `full_twin_boot` (`examples/twin_prebuild.rs`).
pub const FIRST_BUILD: (&str, &str) = ("twin-v1", "1.0.0");

/// A twin build of `tests/recipes/twin-orin.toml` at `version` with `extra` recipe lines, in
/// `target/aperture-tests/arm64/out/<name>` (beside the privileged tier's Jetson builds, so
/// the arm64 Debian base and device programs are shared through the build cache).
pub fn twin_image(name: &str, version: &str, extra: &str) -> Result<BuildReport> {
    let recipe = derived_recipe(
        &test_root().join("arm64/recipes-twin"),
        &format!("{name}.toml"),
        "../tests/recipes/twin-orin.toml",
        &format!("version = \"{version}\"\n{extra}"),
    )?;
    let opts = BuildOptions {
        workspace: workspace(),
        recipe,
        out: Some(test_root().join("arm64/out").join(name)),
        cache: None,
        rootfs_only: false,
        release: false,
        insecure_dev_keys: false,
        insecure_skip_audit: false,
        bsp: None,
    };
    let t = Instant::now();
    let report = aperture_image::twin::bsp::build(&opts, &Reporter::new(None)?)?;
    eprintln!("twin build {name} ({version}) ready in {:.0?}", t.elapsed());
    Ok(report)
}

/// The folder of twin overlays [`broken_runtime`] writes.
fn overlays() -> PathBuf {
    test_root().join("arm64/recipes-twin")
}

/// Recipe lines for an image whose runtime cannot start, so its health gate fails.
pub fn broken_runtime() -> Result<String> {
    crate::broken_runtime_overlay(&overlays())
}

/// One boot of the twin: its power-on decision and the running machine.
pub struct TwinBoot {
    /// What the firmware rules chose.
    pub power_on: PowerOn,
    /// The machine.
    pub vm: Vm,
    /// When the power went on (before the rules ran).
    pub started: Instant,
}

impl TwinBoot {
    /// Wait for the agent's status line; returns it and the time since power-on.
    pub fn status(&self) -> Result<(String, Duration)> {
        let line = self.vm.wait_for(STATUS, TWIN_TIMEOUT)?;
        Ok((line, self.started.elapsed()))
    }
}

/// One boot's measured time, for the table the tests print.
#[derive(Debug, Clone)]
pub struct BootTime {
    /// `boot<N>-<what>`.
    pub name: String,
    /// The chain the rules chose.
    pub slot: Slot,
    /// From power-on to the status line (`None`: the boot never showed it).
    pub to_status: Option<Duration>,
}

/// A twin scenario: a folder with its twin and its boots.
pub struct TwinScenario {
    /// The twin.
    pub twin: Twin,
    boots: usize,
    /// Every boot's time so far.
    pub times: Vec<BootTime>,
}

/// As a [`crate::scenario::Scenario`]: a passing scenario leaves its logs, not its disk.
impl Drop for TwinScenario {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            let _ = std::fs::remove_file(self.twin.disk());
        }
    }
}

impl TwinScenario {
    /// A new twin `name` from the twin build in `build`.
    pub fn new(name: &str, build: &Path) -> Result<TwinScenario> {
        let dir = scenario_dir(name)?;
        let twin = Twin::create(build, &dir.join("twin"))
            .with_context(|| format!("making the twin {name} from {}", build.display()))?;
        Ok(TwinScenario {
            twin,
            boots: 0,
            times: Vec::new(),
        })
    }

    /// The scenario's folder (holds the twin's folder, the boot logs and scripts).
    pub fn dir(&self) -> PathBuf {
        self.twin
            .dir()
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_default()
    }

    /// The twin's disk file.
    pub fn disk(&self) -> PathBuf {
        self.twin.disk()
    }

    /// Power on: apply the rules, then boot the chosen chain with `script` run by the test
    /// hook; the console goes to `boot<N>-<what>.log`.
    pub fn boot(&mut self, what: &str, script: Option<&Script>) -> Result<TwinBoot> {
        self.boots += 1;
        let name = format!("boot{}-{what}", self.boots);
        let started = Instant::now();
        let power_on = self.twin.power_on()?;
        eprintln!("{name}: {power_on}");
        let mut cfg = self.twin.vm_config(&power_on);
        cfg.accel = accel();
        if let Some(s) = script {
            let p = self.dir().join(format!("{name}.sh"));
            std::fs::write(&p, format!("set -u\n{}", s.text()))?;
            cfg.fw_cfg.push(("script".into(), p));
        }
        let tpm = if swtpm_available() {
            let tpm = Swtpm::start(&self.twin.tpm_dir())?;
            cfg.tpm_socket = Some(tpm.socket().to_path_buf());
            Some(tpm)
        } else {
            eprintln!("swtpm is not installed: the twin has no TPM (install swtpm)");
            None
        };
        let log = self.dir().join(format!("{name}.log"));
        let mut vm = Vm::start(&cfg, &log)?;
        if let Some(tpm) = tpm {
            vm.keep_tpm(tpm);
        }
        eprintln!("{name}: console in {}", log.display());
        Ok(TwinBoot {
            power_on,
            vm,
            started,
        })
    }

    /// Record `boot`'s time to its status line.
    pub fn record(&mut self, boot: &TwinBoot, to_status: Option<Duration>) {
        self.times.push(BootTime {
            name: format!("boot{}", self.boots),
            slot: boot.power_on.slot,
            to_status,
        });
    }

    /// The boot times as a table.
    pub fn time_table(&self) -> String {
        let mut s = String::from("| boot | chain | power-on to status line |\n|---|---|---|\n");
        for t in &self.times {
            s.push_str(&format!(
                "| {} | {} | {} |\n",
                t.name,
                t.slot,
                t.to_status
                    .map(|d| format!("{:.0} s", d.as_secs_f64()))
                    .unwrap_or_else(|| "-".into())
            ));
        }
        s
    }
}

/// The guest script piece that shows both encrypted volumes on the Jetson layout (the data
/// volume is NVIDIA's `UDA`): each volume's mapping, the data volume's LUKS UUID, the key
/// source and the mounts.
pub fn storage_show() -> Script {
    Script::new()
        .line("for v in config data; do echo \"APERTURE-CRYPT-$v $(cryptsetup status aperture-$v | tr -s ' \\n' ' ')\"; done")
        .line("echo \"APERTURE-UUID $(cryptsetup luksUUID /dev/disk/by-partlabel/UDA)\"")
        .line("echo \"APERTURE-CONFIG-UUID $(cryptsetup luksUUID /dev/disk/by-partlabel/config)\"")
        .line("echo \"APERTURE-KEYS $(aperture-storage status | grep 'key source')\"")
        .line("echo \"APERTURE-MOUNTS $(findmnt -n -o SOURCE,TARGET /data | tr '\\n' ' ') $(findmnt -n -o SOURCE,TARGET /config | tr '\\n' ' ')\"")
}

/// Canaries made on the host, written only inside the guest onto both encrypted volumes.
pub fn canary_write(script: Script, canary: &str) -> Script {
    script
        .line(&format!("c='{canary}'"))
        .line("printf '%s\\n' \"$c\" > /data/canary.txt && printf '%s\\n' \"$c\" > /config/canary.txt && sync && echo APERTURE-WROTE")
}

/// Whether `needle` occurs in the bytes `offset..offset+len` of `file` (read in overlapping
/// chunks; holes read as zeros).
pub fn range_contains(file: &Path, offset: u64, len: u64, needle: &[u8]) -> Result<bool> {
    use std::os::unix::fs::FileExt;
    let f = std::fs::File::open(file).with_context(|| format!("opening {}", file.display()))?;
    let chunk = 8usize << 20;
    let overlap = needle.len().saturating_sub(1);
    let mut buf = vec![0u8; chunk + overlap];
    let mut at = 0u64;
    while at < len {
        let n = (chunk as u64 + overlap as u64).min(len - at) as usize;
        f.read_exact_at(&mut buf[..n], offset + at)?;
        if buf[..n].windows(needle.len()).any(|w| w == needle) {
            return Ok(true);
        }
        at += chunk as u64;
    }
    Ok(false)
}
