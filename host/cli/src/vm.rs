//! `vm run`: boot a build's disk under QEMU with UEFI, the console on this terminal.
//!
//! The build's `disk.img` is a signed output and is never written: the guest boots a qcow2
//! copy-on-write overlay in `DIR/vm/` (with the UEFI variables and the TPM state beside it), so
//! `verify`, `flash` and a later `build` still see the disk as built. The overlay is kept from
//! one run to the next, like a real appliance's disk, until the build's disk changes or
//! `--fresh` asks for a new one.

use std::path::Path;
use std::process::Stdio;

use crate::args::{Accel as AccelArg, VmCommand, VmRunArgs, DEFAULT_RECIPE};
use anyhow::{bail, Context, Result};
use aperture_image::qemu::{self, Accel, VmConfig};
use aperture_image::recipe::{Arch, Recipe};

/// Run `vm ...`.
pub fn run(c: &VmCommand) -> Result<()> {
    match c {
        VmCommand::Run(a) => run_vm(a),
    }
}

/// The folder beside the build that holds a VM's writable state.
const VM_DIR: &str = "vm";

/// Prepare `dir/vm/`: the overlay over `dir/disk.img`, remade (with the firmware variables and
/// TPM state, which belong to that disk) when the build's disk changed or `fresh` is set.
/// Returns the overlay's path and whether it is new.
fn prepare(dir: &Path, disk_sha256: &str, fresh: bool) -> Result<(std::path::PathBuf, bool)> {
    let vm = dir.join(VM_DIR);
    let overlay = vm.join("disk.qcow2");
    let stamp = vm.join("base.sha256");
    let current = std::fs::read_to_string(&stamp).unwrap_or_default();
    let stale = current.trim() != disk_sha256;
    if fresh || stale || !overlay.exists() {
        if overlay.exists() && stale && !fresh {
            eprintln!(
                "the build's disk.img changed since {} was made: starting from the new disk",
                overlay.display()
            );
        }
        let _ = std::fs::remove_dir_all(&vm);
        std::fs::create_dir_all(&vm).with_context(|| format!("creating {}", vm.display()))?;
        qemu::create_overlay(&dir.join("disk.img"), &overlay)?;
        std::fs::write(&stamp, format!("{disk_sha256}\n"))?;
        return Ok((overlay, true));
    }
    Ok((overlay, false))
}

fn run_vm(a: &VmRunArgs) -> Result<()> {
    let ws = crate::workspace();
    let dir = match &a.dir {
        Some(d) => d.clone(),
        None => ws
            .join("out")
            .join(Recipe::load(&ws.join(DEFAULT_RECIPE))?.build_name()),
    };
    let disk = dir.join("disk.img");
    if !disk.exists() {
        bail!(
            "{} does not exist: build first with `cargo xtask build`",
            disk.display()
        );
    }
    let manifest: serde_json::Value = serde_json::from_slice(
        &std::fs::read(dir.join("manifest.json")).context("reading manifest.json")?,
    )?;
    let arch = match manifest["board"].as_str() {
        Some("qemu-arm64") => Arch::Arm64,
        Some("qemu-x86_64") => Arch::Amd64,
        other => bail!(
            "{} is for board {other:?}, which does not run under QEMU",
            dir.display()
        ),
    };
    let disk_sha = manifest["artifacts"]
        .as_array()
        .and_then(|a| a.iter().find(|x| x["name"] == "disk.img"))
        .and_then(|x| x["sha256"].as_str())
        .context("manifest.json lists no disk.img")?
        .to_string();
    let (overlay, new) = prepare(&dir, &disk_sha, a.fresh)?;
    let accel = match a.accel {
        AccelArg::Kvm => Accel::Kvm,
        AccelArg::Tcg => Accel::Tcg,
        AccelArg::Auto => qemu::probe_kvm(arch, &ws.join("target")),
    };
    eprintln!(
        "booting {} ({} overlay over {}, which stays as built) with {} ({})",
        overlay.display(),
        if new { "a new" } else { "the kept" },
        disk.display(),
        accel.name().to_uppercase(),
        if accel == Accel::Kvm {
            "KVM works here"
        } else {
            "KVM is missing or cannot run UEFI guests here"
        }
    );
    let vm = dir.join(VM_DIR);
    let mut cfg = VmConfig::new(arch, &overlay, &vm.join("efivars.fd"));
    cfg.accel = accel;
    cfg.snapshot = a.snapshot;
    cfg.memory_mib = a.memory;
    // Interactive: let the guest reboot in place (A/B switches happen across reboots).
    cfg.no_reboot = false;
    for f in &a.forwards {
        let (h, g) = f.split_once(':').context("--forward takes HOST:GUEST")?;
        cfg.forwards.push((
            h.parse().context("host port")?,
            g.parse().context("guest port")?,
        ));
    }
    // A TPM 2.0 for the appliance's sealed storage keys; its state beside the overlay, so the
    // keys sealed on the first boot unseal on every later one.
    let _tpm = if qemu::swtpm_available() {
        let tpm = qemu::Swtpm::start(&vm.join("tpm"))?;
        cfg.tpm_socket = Some(tpm.socket().to_path_buf());
        Some(tpm)
    } else {
        eprintln!(
            "swtpm is not installed, so the appliance has no TPM: an image that requires one \
             ([hardware] tpm = true) waits for it and does not open its data (apt-get install swtpm)"
        );
        None
    };
    eprintln!(
        "the VM's state (disk overlay, UEFI variables, TPM) is in {}; `--fresh` starts over",
        vm.display()
    );
    let status = cfg
        .command()?
        .stdin(Stdio::inherit())
        .status()
        .context("running QEMU")?;
    if !status.success() {
        bail!("QEMU exited with {status}");
    }
    Ok(())
}
