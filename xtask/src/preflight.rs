//! Preflight: find every host package, toolchain target and kernel facility a verb needs, install
//! what is missing when running as root, or print the one command that fixes it and stop.
//!
//! It runs before the heavy host CLI is compiled, because that links libostree.

use std::collections::BTreeSet;
use std::path::Path;

use anyhow::{bail, Context, Result};
use aperture_sys::Cmd;

/// Packages every build needs: Debian tree assembly, the ostree store, filesystems, the ESP.
const BUILD: &[&str] = &[
    "mmdebstrap",
    "libostree-dev",
    "pkg-config",
    "erofs-utils",
    "dosfstools",
    "mtools",
    "zstd",
    "cryptsetup-bin",
    // Jetson Linux BSPs come as .tbz2.
    "bzip2",
];

/// Extra packages for arm64 boards: cross linker, libc, and user-mode emulation for the rootfs.
const ARM64: &[&str] = &[
    "gcc-aarch64-linux-gnu",
    "libc6-dev-arm64-cross",
    "qemu-user-static",
    "binfmt-support",
    "arch-test",
];

/// Extra packages to boot images under QEMU (swtpm: the guest's TPM 2.0, which seals the keys
/// of its encrypted partitions).
const VM: &[&str] = &["qemu-system-x86", "ovmf", "qemu-utils", "swtpm"];

/// Extra packages to boot arm64 images under QEMU.
const VM_ARM64: &[&str] = &["qemu-system-arm", "qemu-efi-aarch64"];

/// Tools the privileged test tier compares against or drives.
const TEST: &[&str] = &[
    "gdisk",
    "fdisk",
    "bmap-tools",
    "e2fsprogs",
    "util-linux",
    "cryptsetup-bin",
    "swtpm",
    "swtpm-tools",
    // The storage crate's swtpm test seals and unseals with the same tools the image runs.
    "tpm2-tools",
    "nftables",
];

/// Peers the benchmarks run beside Aperture.
const BENCH: &[&str] = &[
    "bmap-tools",
    "rauc",
    "casync",
    "mkosi",
    "squashfs-tools",
    "openssl",
    "dbus-daemon",
];

/// What a verb needs from the host.
#[derive(Debug, Default)]
pub struct Needs {
    /// Debian packages.
    pub packages: BTreeSet<&'static str>,
    /// The aarch64 Rust target and binfmt emulation.
    pub arm64: bool,
}

impl Needs {
    /// Needs of a build for a board architecture.
    pub fn build(arm64: bool) -> Self {
        let mut n = Needs::default();
        n.packages.extend(BUILD);
        if arm64 {
            n.packages.extend(ARM64);
            n.arm64 = true;
        }
        n
    }

    /// Needs of the full test suite: every board, every tier.
    pub fn test() -> Self {
        let mut n = Needs::build(true);
        n.packages.extend(VM);
        n.packages.extend(VM_ARM64);
        n.packages.extend(TEST);
        n
    }

    /// Needs of `vm run`.
    pub fn vm(arm64: bool) -> Self {
        let mut n = Needs::default();
        n.packages.extend(VM);
        if arm64 {
            n.packages.extend(VM_ARM64);
        }
        n
    }

    /// Needs of the benchmarks.
    pub fn bench() -> Self {
        let mut n = Needs::build(false);
        n.packages.extend(VM);
        n.packages.extend(BENCH);
        n
    }

    /// Needs of verbs that only read files the host CLI writes (verify, diff, keys, audit).
    pub fn host_cli() -> Self {
        let mut n = Needs::default();
        n.packages.extend(["libostree-dev", "pkg-config"]);
        n
    }
}

/// True when running as root.
pub fn is_root() -> bool {
    // `id -u` rather than libc: xtask stays dependency-light and free of unsafe code.
    Cmd::new("id")
        .arg("-u")
        .output()
        .map(|o| o.stdout_text().trim() == "0")
        .unwrap_or(false)
}

/// Packages of `wanted` that dpkg does not report as installed.
fn missing_packages(wanted: &BTreeSet<&'static str>) -> Result<Vec<&'static str>> {
    let out = Cmd::new("dpkg-query")
        .args(["-W", "-f=${Package} ${db:Status-Abbrev}\n"])
        .args(wanted.iter())
        .output()
        .context("running dpkg-query (is this a Debian host?)")?;
    let listed = out.stdout_text();
    let installed: BTreeSet<&str> = listed
        .lines()
        .filter_map(|l| {
            let mut it = l.split_whitespace();
            let name = it.next()?;
            let status = it.next()?;
            (status == "ii").then_some(name)
        })
        .collect();
    Ok(wanted
        .iter()
        .copied()
        .filter(|p| !installed.contains(p))
        .collect())
}

fn rust_target_missing(target: &str) -> bool {
    Cmd::new("rustup")
        .args(["target", "list", "--installed"])
        .output()
        .map(|o| !o.stdout_text().lines().any(|l| l.trim() == target))
        .unwrap_or(true)
}

fn binfmt_aarch64_enabled() -> bool {
    std::fs::read_to_string("/proc/sys/fs/binfmt_misc/qemu-aarch64")
        .map(|s| s.lines().next() == Some("enabled"))
        .unwrap_or(false)
}

/// Check `needs`; as root install what is missing, otherwise list every fix and fail once.
pub fn ensure(needs: &Needs) -> Result<()> {
    let root = is_root();
    let mut fixes: Vec<String> = Vec::new();

    let missing = missing_packages(&needs.packages)?;
    if !missing.is_empty() {
        let line = format!(
            "apt-get install -y --no-install-recommends {}",
            missing.join(" ")
        );
        if root {
            eprintln!("preflight: installing host packages: {}", missing.join(" "));
            Cmd::new("apt-get")
                .args(["update", "-qq"])
                .run_inherited()
                .context("apt-get update")?;
            Cmd::new("apt-get")
                .env("DEBIAN_FRONTEND", "noninteractive")
                .args(["install", "-y", "-qq", "--no-install-recommends"])
                .args(&missing)
                .run_inherited()
                .with_context(|| format!("installing host packages ({line})"))?;
        } else {
            fixes.push(format!("sudo {line}"));
        }
    }

    if needs.arm64 {
        let target = "aarch64-unknown-linux-gnu";
        if rust_target_missing(target) {
            if root || Path::new("/root/.rustup").exists() {
                eprintln!("preflight: adding Rust target {target}");
                Cmd::new("rustup")
                    .args(["target", "add", target])
                    .run_inherited()?;
            } else {
                fixes.push(format!("rustup target add {target}"));
            }
        }
        if !binfmt_aarch64_enabled() {
            if root {
                eprintln!("preflight: enabling qemu-aarch64 binfmt emulation");
                if !Path::new("/proc/sys/fs/binfmt_misc/register").exists() {
                    Cmd::new("mount")
                        .args([
                            "-t",
                            "binfmt_misc",
                            "binfmt_misc",
                            "/proc/sys/fs/binfmt_misc",
                        ])
                        .run_inherited()?;
                }
                Cmd::new("update-binfmts")
                    .args(["--enable", "qemu-aarch64"])
                    .run_inherited()?;
                if !binfmt_aarch64_enabled() {
                    bail!(
                        "qemu-aarch64 binfmt emulation is still disabled after update-binfmts; \
                         arm64 rootfs builds need it (check /proc/sys/fs/binfmt_misc)"
                    );
                }
            } else {
                fixes.push("sudo update-binfmts --enable qemu-aarch64".into());
            }
        }
    }

    if !fixes.is_empty() {
        bail!(
            "preflight: this machine is missing what the build needs. Run:\n  {}\n\
             (or run cargo xtask as root, which installs them itself)",
            fixes.join("\n  ")
        );
    }
    Ok(())
}
