//! `vm run`: boot a build's disk under QEMU with UEFI, the console on this terminal.
//! `vm run --twin`: boot a Jetson build as the Jetson twin (`aperture_image::twin`), one QEMU
//! process per boot with L4TLauncher's rules applied between boots; its state (disk copy,
//! variable store, TPM) lives in `DIR/vm-twin/`.
//!
//! The build's `disk.img` is a signed output and is never written: the guest boots a qcow2
//! copy-on-write overlay in `DIR/vm/` (with the UEFI variables and the TPM state beside it), so
//! `verify`, `flash` and a later `build` still see the disk as built. The overlay is kept from
//! one run to the next, like a real appliance's disk, until the build's disk changes or
//! `--fresh` asks for a new one.

use std::path::Path;
use std::process::Stdio;

use crate::args::{Accel as AccelArg, VmCommand, VmRunArgs, DEFAULT_RECIPE, TWIN_RECIPE};
use anyhow::{bail, Context, Result};
use aperture_image::pipeline::BuildOptions;
use aperture_image::progress::Reporter;
use aperture_image::qemu::{self, Accel, VmConfig};
use aperture_image::recipe::{Arch, Recipe};
use aperture_image::twin::{self, Twin};

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

/// `HOST:GUEST` port forwards.
fn forwards(a: &VmRunArgs) -> Result<Vec<(u16, u16)>> {
    a.forwards
        .iter()
        .map(|f| {
            let (h, g) = f.split_once(':').context("--forward takes HOST:GUEST")?;
            Ok((
                h.parse().context("host port")?,
                g.parse().context("guest port")?,
            ))
        })
        .collect()
}

/// The twin: build (or reuse) the twin build when no folder is given, make (or keep) the
/// twin's state beside it, then boot it until its guest powers off.
fn run_twin(a: &VmRunArgs) -> Result<()> {
    let ws = crate::workspace();
    let build = match &a.dir {
        Some(d) => d.clone(),
        None => {
            let recipe = match &a.twin_recipe {
                Some(r) if r.is_relative() && !r.exists() => ws.join(r),
                Some(r) => r.clone(),
                None => ws.join(TWIN_RECIPE),
            };
            let out = ws
                .join("out")
                .join(format!("{}-twin", Recipe::load(&recipe)?.build_name()));
            eprintln!(
                "making the twin build of {} in {} (the synthetic BSP with the rootfs's Debian \
                 kernel; steps whose inputs did not change are reused)",
                recipe.display(),
                out.display()
            );
            let opts = BuildOptions {
                workspace: ws.clone(),
                recipe,
                out: Some(out),
                cache: None,
                rootfs_only: false,
                release: false,
                insecure_dev_keys: false,
                insecure_skip_audit: false,
                bsp: None,
            };
            twin::bsp::build(&opts, &Reporter::new(None)?)?.paths.out
        }
    };
    let state = build.join("vm-twin");
    let mut t = if !a.fresh && Twin::is_current(&state, &build) {
        eprintln!(
            "keeping the twin in {} (`--fresh` starts over)",
            state.display()
        );
        Twin::open(&state)?
    } else {
        eprintln!(
            "a new twin in {} from {} (which stays as built)",
            state.display(),
            build.join("disk.img").display()
        );
        Twin::create(&build, &state)?
    };
    let accel = match a.accel {
        AccelArg::Kvm => Accel::Kvm,
        AccelArg::Auto | AccelArg::Tcg => Accel::Tcg,
    };
    let fwd = forwards(a)?;
    let memory = a.memory.unwrap_or(twin::MEMORY_MIB);
    eprintln!(
        "each boot: the firmware's A/B rules on {}, then QEMU ({}); a guest reboot starts the \
         next boot, a power-off ends the run",
        t.vars().display(),
        accel.name().to_uppercase()
    );
    twin::run_interactive(&mut t, |cfg| {
        cfg.accel = accel;
        cfg.memory_mib = memory;
        cfg.forwards = fwd.clone();
    })
}

fn run_vm(a: &VmRunArgs) -> Result<()> {
    if a.twin {
        return run_twin(a);
    }
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
            "{} is for board {other:?}, which does not run under QEMU (a Jetson build boots \
             as the Jetson twin: `vm run --twin {}`)",
            dir.display(),
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
    cfg.memory_mib = a.memory.unwrap_or(1024);
    // Interactive: let the guest reboot in place (A/B switches happen across reboots).
    cfg.no_reboot = false;
    cfg.forwards = forwards(a)?;
    let certs = dir.join(aperture_image::outputs::names::SECURE_BOOT);
    if arch == aperture_image::recipe::Arch::Amd64 && certs.join("db.crt").is_file() {
        if a.insecure_no_secure_boot {
            eprintln!(
                "--insecure-no-secure-boot: the firmware starts anything, signed or not; the \
                 disk keys are sealed to Secure Boot, so storage will not format or unlock \
                 config and data"
            );
        } else {
            eprintln!(
                "Secure Boot on, with only the build's keys ({}) enrolled",
                certs.display()
            );
            cfg.firmware = qemu::Firmware::SecureBoot(qemu::SecureBootVm {
                certs: aperture_image::secure_boot::SecureBootCerts {
                    pk: certs.join("PK.crt"),
                    kek: certs.join("KEK.crt"),
                    db: certs.join("db.crt"),
                },
                mode: aperture_image::secure_boot::VarsMode::Enrolled,
            });
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Issue 12.13: `vm run` once booted the signed `disk.img` itself. The guest's writes go to
    /// the overlay in `DIR/vm/`; the build's disk stays as built.
    #[test]
    fn the_guest_writes_into_the_overlay_and_never_into_disk_img() {
        let test = "the_guest_writes_into_the_overlay_and_never_into_disk_img";
        let Some(_) = aperture_sys::tool::for_test("qemu-img", "qemu-utils", test) else {
            return;
        };
        let Some(qemu_io) = aperture_sys::tool::for_test("qemu-io", "qemu-utils", test) else {
            return;
        };
        let d = tempfile::tempdir().unwrap();
        let disk = d.path().join("disk.img");
        std::fs::write(&disk, vec![0xAAu8; 1 << 20]).unwrap();
        let before = std::fs::read(&disk).unwrap();

        let (overlay, new) = prepare(d.path(), "sha-1", false).unwrap();
        assert!(new && overlay.starts_with(d.path().join(VM_DIR)));
        // What QEMU does with the guest's writes: a write through the qcow2 layer.
        let out = std::process::Command::new(qemu_io)
            .args(["-f", "qcow2", "-c", "write -P 0x55 0 64k"])
            .arg(&overlay)
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        assert_eq!(
            std::fs::read(&disk).unwrap(),
            before,
            "disk.img was written"
        );

        // The same build: the overlay (and what the guest wrote) is kept.
        let (_, new) = prepare(d.path(), "sha-1", false).unwrap();
        assert!(!new);
        // A rebuilt disk, or --fresh: a new overlay over it.
        assert!(prepare(d.path(), "sha-2", false).unwrap().1);
        assert!(prepare(d.path(), "sha-2", true).unwrap().1);
    }
}
