//! `vm run`: boot a build's disk.img under QEMU with UEFI, the console on this terminal.

use std::process::Stdio;

use anyhow::{bail, Context, Result};
use aperture_image::qemu::{self, Accel, VmConfig};
use aperture_image::recipe::{Arch, Recipe};
use xtask::args::{Accel as AccelArg, VmCommand, VmRunArgs, DEFAULT_RECIPE};

/// Run `vm ...`.
pub fn run(c: &VmCommand) -> Result<()> {
    match c {
        VmCommand::Run(a) => run_vm(a),
    }
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
    let accel = match a.accel {
        AccelArg::Kvm => Accel::Kvm,
        AccelArg::Tcg => Accel::Tcg,
        AccelArg::Auto => qemu::probe_kvm(arch, &ws.join("target")),
    };
    eprintln!(
        "booting {} with {} ({})",
        disk.display(),
        accel.name().to_uppercase(),
        if accel == Accel::Kvm {
            "KVM works here"
        } else {
            "KVM is missing or cannot run UEFI guests here"
        }
    );
    let mut cfg = VmConfig::new(arch, &disk, &dir.join("efivars.fd"));
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
    eprintln!(
        "UEFI variables: {} (delete it to start from fresh firmware settings)",
        cfg.vars.display()
    );
    // A TPM 2.0 for the appliance's sealed storage keys; its state beside the disk, so the
    // keys sealed on the first boot unseal on every later one (delete both together).
    let _tpm = if qemu::swtpm_available() {
        let tpm = qemu::Swtpm::start(&dir.join("tpm"))?;
        eprintln!(
            "TPM 2.0: swtpm with its state in {} (delete it together with disk.img)",
            dir.join("tpm").display()
        );
        cfg.tpm_socket = Some(tpm.socket().to_path_buf());
        Some(tpm)
    } else {
        eprintln!(
            "swtpm is not installed: the appliance has no TPM and stores its storage keys \
             unprotected on the ESP (apt-get install swtpm)"
        );
        None
    };
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
