//! Shared fixtures of the privileged (tier 2) and VM (tier 3) suites.
//!
//! Both suites are `#[ignore]`d with the reason in the attribute, so `cargo test --workspace`
//! lists them as ignored; `cargo xtask test` runs them as root with `--ignored`. Builds go to
//! `target/aperture-tests/`, shared by both suites so the VM tier boots what tier 2 built.

pub mod firewall;
pub mod fleet;
pub mod fleet_server;
pub mod http;
pub mod powercut;
pub mod rtsp;
pub mod scenario;
pub mod twin;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use aperture_image::pipeline::{self, BuildOptions, BuildReport};
use aperture_image::progress::Reporter;
use aperture_image::qemu::{swtpm_available, Accel, Swtpm, Vm, VmConfig};
use aperture_image::recipe::Arch;

/// The workspace root.
pub fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ is one level down")
        .to_path_buf()
}

/// Where the suites put their builds.
pub fn test_root() -> PathBuf {
    workspace().join("target").join("aperture-tests")
}

/// True when `name` is on PATH. Otherwise `skipped` is skipped (it says so), or, under
/// `cargo xtask test` (which installs every tool the tiers use first), the test fails.
pub fn have_tool(name: &str, skipped: &str) -> bool {
    aperture_sys::tool::for_test(name, name, skipped).is_some()
}

/// Tiers 2 and 3 need root (loop devices, mmdebstrap in root mode, QEMU with a TPM). They are
/// `#[ignore]`d, so only `--ignored` runs them; run that way without root they FAIL with this
/// message rather than pass: `cargo xtask test` reports them as skipped instead of running
/// them when it is not root.
pub fn require_root(test: &str) -> bool {
    let root = std::process::Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false);
    assert!(
        root,
        "{test} needs root (loop devices, mmdebstrap in root mode, QEMU); run `sudo cargo xtask test`"
    );
    root
}

/// Whether this run is `cargo xtask test --full` (`APERTURE_FULL=1`): the long VM stories
/// then go on past the part CI runs. Without it they say where they stop.
pub fn full() -> bool {
    std::env::var("APERTURE_FULL").as_deref() == Ok("1")
}

/// Stop a story here unless this is a `--full` run, saying what is left for it.
pub fn stop_unless_full(rest: &str) -> bool {
    if full() {
        return false;
    }
    eprintln!("NOT RUN HERE (cargo xtask test --full runs it): {rest}");
    true
}

/// A recipe path in the workspace.
pub fn recipe(name: &str) -> PathBuf {
    workspace().join("recipes").join(name)
}

/// Build `recipe` into `out` with the build cache every output folder shares (the user's:
/// `APERTURE_CACHE` or `~/.cache/aperture`); returns the report and the wall time.
pub fn build(recipe: &Path, out: &Path, rootfs_only: bool) -> Result<(BuildReport, Duration)> {
    build_in(recipe, out, None, rootfs_only)
}

/// [`build`] with its own build cache (`cache`), for builds that must start cold.
pub fn build_in(
    recipe: &Path,
    out: &Path,
    cache: Option<&Path>,
    rootfs_only: bool,
) -> Result<(BuildReport, Duration)> {
    let opts = BuildOptions {
        workspace: workspace(),
        recipe: recipe.to_path_buf(),
        out: Some(out.to_path_buf()),
        cache: cache.map(Path::to_path_buf),
        rootfs_only,
        release: false,
        insecure_dev_keys: false,
        insecure_skip_audit: false,
        bsp: None,
    };
    let rep = Reporter::new(None)?;
    let t = Instant::now();
    let report = pipeline::build(&opts, &rep)?;
    Ok((report, t.elapsed()))
}

/// Write a recipe that includes `base` (a workspace recipe) with extra TOML lines, into `dir`.
pub fn derived_recipe(dir: &Path, name: &str, base: &str, extra: &str) -> Result<PathBuf> {
    std::fs::create_dir_all(dir)?;
    let path = dir.join(name);
    std::fs::write(
        &path,
        format!("include = \"{}\"\n{extra}", recipe(base).display()),
    )?;
    Ok(path)
}

/// The root of the shared build store (`target/aperture-tests/main/out`): the default image
/// and every variant that shares its Debian base build here.
pub fn main_out() -> PathBuf {
    test_root().join("main/out")
}

/// A VM test image: the default recipe plus the VM test hook (tests/recipes/vm-hooks.toml), at
/// `version`, with `extra` recipe lines, and an update loop that polls the test fleet's
/// repository on the host ([`fleet::recipe_lines`]: nothing listens there unless a test serves
/// it, which the loop reports and retries without disturbing anything); built into the main
/// output root and reused.
pub fn vm_image(name: &str, version: &str, extra: &str) -> Result<BuildReport> {
    let dir = test_root().join("main/recipes-vm");
    let r = derived_recipe(
        &dir,
        &format!("{name}.toml"),
        "../tests/recipes/vm-hooks.toml",
        &format!("version = \"{version}\"\n{extra}{}", fleet::recipe_lines()?),
    )?;
    Ok(build(&r, &main_out().join(name), false)?.0)
}

/// The VM tier's first image: the default recipe with the test hook, version 1.0.0.
pub fn vm_v1() -> Result<BuildReport> {
    vm_image("vm-v1", "1.0.0", "")
}

/// Its update: the same recipe at version 1.1.0.
pub fn vm_v2() -> Result<BuildReport> {
    vm_image("vm-v2", "1.1.0", "")
}

/// Every image the VM tier's CI suites boot, built (or found built) one after the other:
/// `cargo xtask test` makes them before it starts those suites side by side, so that no suite
/// waits for another's build on the build cache's lock.
pub fn vm_tier_images() -> Result<Vec<BuildReport>> {
    Ok(vec![default_image()?, vm_v1()?, vm_v2()?])
}

/// The recipe file [`vm_image`] wrote for `name`.
pub fn vm_recipe(name: &str) -> PathBuf {
    test_root()
        .join("main/recipes-vm")
        .join(format!("{name}.toml"))
}

/// The drop-in [`broken_runtime_overlay`] writes. systemd applies a unit's drop-ins in the
/// order of their names and the last `ExecStart=` wins, so it must sort after every drop-in of
/// the test hook's overlay (`zz-test-self-test.conf` sets `ExecStart=` too): named `broken.conf`
/// it was overridden, and the "broken" image passed its health gate.
pub const BROKEN_RUNTIME_DROP_IN: &str = "zzz-broken-runtime.conf";

/// Write the overlay `broken-runtime` into `overlays` (an image's runtime that cannot start, so
/// its health gate fails) and return the recipe line that uses it.
pub fn broken_runtime_overlay(overlays: &Path) -> Result<String> {
    let dir = overlays.join("broken-runtime/usr/lib/systemd/system/aperture-runtime.service.d");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    std::fs::write(
        dir.join(BROKEN_RUNTIME_DROP_IN),
        "[Service]\nExecStart=\nExecStart=/bin/false\nRestart=no\n",
    )?;
    Ok("overlays = [\"broken-runtime\"]\n".into())
}

/// The default recipe's full build (`target/aperture-tests/main/out/default`), shared by the
/// suites. A call after the first in a tree is a warm build: every step is reused.
pub fn default_image() -> Result<BuildReport> {
    Ok(build(
        &recipe("qemu-x86_64.toml"),
        &main_out().join("default"),
        false,
    )?
    .0)
}

static FRESH: std::sync::Mutex<Option<(BuildReport, Duration)>> = std::sync::Mutex::new(None);

/// Where [`default_image_fresh`] builds: its own output folder and build cache.
pub fn fresh_root() -> PathBuf {
    test_root().join("fresh")
}

/// The default image built from nothing (its own empty build cache, so a second mmdebstrap
/// run and package download) once per test process, with the time it took: the privileged
/// suite measures cold builds on it, and reproducibility against [`default_image`].
pub fn default_image_fresh() -> Result<(BuildReport, Duration)> {
    let mut g = FRESH.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(r) = g.as_ref() {
        return Ok(r.clone());
    }
    let root = fresh_root();
    let _ = std::fs::remove_dir_all(&root);
    let r = build_in(
        &recipe("qemu-x86_64.toml"),
        &root.join("out/default"),
        Some(&root.join("cache")),
        false,
    )?;
    *g = Some(r.clone());
    Ok(r)
}

/// The guests' CPUs when `APERTURE_VM_CPUS` sets them (`cargo xtask test` does for the VM
/// suites it runs side by side: one each), else [`VmConfig`]'s default.
pub fn vm_cpus() -> Option<u32> {
    let v = std::env::var("APERTURE_VM_CPUS").ok()?;
    match v.trim().parse::<u32>() {
        Ok(n) if n >= 1 => Some(n),
        _ => panic!("APERTURE_VM_CPUS={v} is not a number of CPUs (1 or more)"),
    }
}

/// The accelerator for the VM tier: TCG unless `APERTURE_VM_ACCEL=kvm` (KVM on this kind of
/// machine is a nested software hypervisor that cannot run these guests; see MACHINE-NOTES).
pub fn accel() -> Accel {
    match std::env::var("APERTURE_VM_ACCEL").as_deref() {
        Ok("kvm") => Accel::Kvm,
        _ => Accel::Tcg,
    }
}

/// A scratch folder for one VM scenario, emptied first.
pub fn scenario_dir(name: &str) -> Result<PathBuf> {
    let d = test_root().join("vm").join(name);
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d)?;
    Ok(d)
}

/// A copy of the build folder `src` at `dest` to tamper with: the files named in `changed`
/// are real (sparse) copies, every other file a hard link, so a copy costs only what it
/// changes (a build folder is several GiB).
pub fn copy_build(src: &Path, dest: &Path, changed: &[&str]) -> Result<()> {
    std::fs::create_dir_all(dest)?;
    for e in std::fs::read_dir(src)? {
        let e = e?;
        let name = e.file_name();
        let to = dest.join(&name);
        if changed.iter().any(|c| name == std::ffi::OsStr::new(c)) {
            copy_disk(&e.path(), &to)?;
        } else if e.file_type()?.is_dir() {
            // `secure-boot/` (and the VM's `vm/`): small; linked file by file.
            copy_build(&e.path(), &to, &[])?;
        } else {
            std::fs::hard_link(e.path(), &to)
                .with_context(|| format!("linking {}", e.path().display()))?;
        }
    }
    Ok(())
}

/// Copy a disk image keeping it sparse.
pub fn copy_disk(src: &Path, dest: &Path) -> Result<()> {
    let st = std::process::Command::new("cp")
        .arg("--sparse=always")
        .arg(src)
        .arg(dest)
        .status()
        .context("running cp")?;
    anyhow::ensure!(st.success(), "copying {} failed", src.display());
    Ok(())
}

/// Boot `disk` (its own UEFI variable store beside it); the console goes to `<dir>/<log>.log`.
/// When swtpm is installed the guest gets a TPM 2.0 whose state lives in `<dir>/tpm`, so every
/// boot of one scenario sees the same TPM (keys sealed on one boot unseal on the next).
pub fn boot(
    arch: Arch,
    disk: &Path,
    dir: &Path,
    log: &str,
    tweak: impl FnOnce(&mut VmConfig),
) -> Result<Vm> {
    let mut cfg = VmConfig::new(arch, disk, &dir.join("efivars.fd"));
    cfg.accel = accel();
    if let Some(n) = vm_cpus() {
        cfg.cpus = n;
    }
    let tpm = if swtpm_available() {
        let tpm = Swtpm::start(&dir.join("tpm"))?;
        cfg.tpm_socket = Some(tpm.socket().to_path_buf());
        Some(tpm)
    } else {
        eprintln!("swtpm is not installed: the guest has no TPM (install swtpm)");
        None
    };
    tweak(&mut cfg);
    let mut vm = Vm::start(&cfg, &dir.join(format!("{log}.log")))?;
    if let Some(tpm) = tpm {
        vm.keep_tpm(tpm);
    }
    eprintln!(
        "booting {} ({}{}), console in {}",
        disk.display(),
        cfg.accel.name(),
        if cfg.tpm_socket.is_some() {
            ", swtpm"
        } else {
            ""
        },
        dir.join(format!("{log}.log")).display()
    );
    Ok(vm)
}

/// How long a boot may take to reach userspace under TCG (about 22 s measured; generous for
/// a loaded CI machine).
pub const BOOT_TIMEOUT: Duration = Duration::from_secs(240);

/// Write a boot script for the VM test hook (fw_cfg `opt/aperture/script`) into `dir`.
pub fn hook_script(dir: &Path, name: &str, body: &str) -> Result<PathBuf> {
    let p = dir.join(format!("{name}.sh"));
    std::fs::write(&p, format!("set -u\n{body}\n"))?;
    Ok(p)
}

/// The JSON object printed on one console line after `marker` (the line may carry a prefix).
pub fn json_on_line(line: &str) -> Result<serde_json::Value> {
    let start = line.find('{').context("no JSON object on the line")?;
    let end = line.rfind('}').context("no end of the JSON object")?;
    serde_json::from_str(&line[start..=end])
        .with_context(|| format!("parsing JSON from console line: {line}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every drop-in the images give the runtime's unit sorts before the one that breaks it,
    /// so the broken image's `ExecStart=/bin/false` is the one systemd runs.
    #[test]
    fn the_broken_runtime_drop_in_sorts_after_every_other_runtime_drop_in() {
        let ws = workspace();
        let mut seen = 0;
        for overlay in ["tests/overlays/vm-hooks", "overlays/runtime"] {
            let dir = ws
                .join(overlay)
                .join("usr/lib/systemd/system/aperture-runtime.service.d");
            let Ok(entries) = std::fs::read_dir(&dir) else {
                continue;
            };
            for e in entries {
                let name = e.unwrap().file_name().to_string_lossy().into_owned();
                assert!(
                    name.as_str() < BROKEN_RUNTIME_DROP_IN,
                    "{}/{name} sorts after {BROKEN_RUNTIME_DROP_IN}",
                    dir.display()
                );
                seen += 1;
            }
        }
        assert!(seen >= 1, "the test hook's self-test drop-in was not found");
        // The JetPack drop-in the image writes for a Jetson with a GPU build.
        assert!("jetpack.conf" < BROKEN_RUNTIME_DROP_IN);
        let dir = tempfile::tempdir().unwrap();
        let line = broken_runtime_overlay(dir.path()).unwrap();
        assert_eq!(line, "overlays = [\"broken-runtime\"]\n");
        let text = std::fs::read_to_string(
            dir.path()
                .join("broken-runtime/usr/lib/systemd/system/aperture-runtime.service.d")
                .join(BROKEN_RUNTIME_DROP_IN),
        )
        .unwrap();
        assert!(
            text.ends_with("ExecStart=/bin/false\nRestart=no\n"),
            "{text}"
        );
    }
}
