//! Preflight: find every host package, PyPI tool, toolchain target and kernel facility a verb
//! needs, install what is missing when running as root, or print the one command that fixes it
//! and stop.
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
    // The release repository served over HTTPS (tests/src/fleet.rs): the fleet suite, vm_update
    // and `bench fleet-repo`.
    "nginx-light",
    // The fleet server's tests run each case on PostgreSQL too, in a server of their own
    // (initdb and postgres from /usr/lib/postgresql/*/bin; host/fleet/tests/common).
    "postgresql",
    // The fleet dashboard's test loads the page in headless chromium (host/fleet/tests).
    "chromium",
    // Python tools from PyPI (below) get a virtual environment each.
    "python3-venv",
];

/// Tools from PyPI the tests run, as (program, requirement): each is installed into its own
/// virtual environment under [`PYTHON_TOOLS`] with its program linked into /usr/local/bin.
/// moto's server is the S3-compatible server `repo sync --to s3://` is tested against
/// (host/repo/tests/s3.rs).
const TEST_PYTHON: &[(&str, &str)] = &[("moto_server", "moto[server]==5.2.1")];

/// Where the PyPI tools' virtual environments live (passed to the host programs as
/// `APERTURE_PYTHON_TOOLS`).
pub(crate) const PYTHON_TOOLS: &str = "/opt/aperture-tools";

/// Python libraries from PyPI the benchmarks import, as (virtual environment, requirements):
/// each set is installed into `PYTHON_TOOLS/<environment>` with nothing linked, and the
/// benchmark runs that environment's python. `bench fleet-repo` runs python-tuf's ngclient,
/// the reference TUF client, beside Aperture's (the environment's name is
/// `aperture_bench::fleet_repo::PYTHON_TUF_VENV`), with pyca/cryptography: without it
/// securesystemslib verifies ed25519 in pure Python, about 30 ms a signature.
type PythonLibs = &'static [&'static str];
const BENCH_PYTHON_LIBS: &[(&str, PythonLibs)] =
    &[("python-tuf", &["tuf==7.0.1", "cryptography==50.0.2"])];

/// Peers the benchmarks run beside Aperture.
const BENCH: &[&str] = &[
    "bmap-tools",
    "rauc",
    "casync",
    "mkosi",
    "squashfs-tools",
    "openssl",
    "dbus-daemon",
    // `bench fleet-repo`: the repository served over HTTPS, and python-tuf's environment.
    "nginx-light",
    "python3-venv",
];

/// What a verb needs from the host.
#[derive(Debug, Default)]
pub struct Needs {
    /// Debian packages.
    pub packages: BTreeSet<&'static str>,
    /// The aarch64 Rust target and binfmt emulation.
    pub arm64: bool,
    /// Programs from PyPI, as (program, requirement).
    pub python: BTreeSet<(&'static str, &'static str)>,
    /// Libraries from PyPI, as (virtual environment, requirements).
    pub python_libs: BTreeSet<(&'static str, PythonLibs)>,
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
        n.python.extend(TEST_PYTHON);
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
        n.python_libs.extend(BENCH_PYTHON_LIBS);
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

/// Make the virtual environment `venv` and pip-install `requirements` into it (`line`: the
/// same as one shell command, for the error).
fn make_venv(venv: &Path, requirements: &[&str], line: &str) -> Result<()> {
    let requirement = requirements.join(" ");
    eprintln!(
        "preflight: installing {requirement} from PyPI into {}",
        venv.display()
    );
    // Debian's python3, not whatever python3 comes first on PATH: its venv module is the
    // python3-venv package installed above.
    Cmd::new("/usr/bin/python3")
        .args(["-m", "venv"])
        .arg(venv)
        .run_inherited()
        .with_context(|| format!("making the virtual environment {}", venv.display()))?;
    Cmd::new(venv.join("bin/pip"))
        .args(["install", "-q", "--disable-pip-version-check"])
        .args(requirements)
        .run_inherited()
        .with_context(|| format!("installing {requirement} ({line})"))?;
    Ok(())
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

    for (program, requirement) in &needs.python {
        if aperture_sys::tool::find(program).is_some() {
            continue;
        }
        let name = requirement
            .split(|c: char| !(c.is_ascii_alphanumeric() || c == '-' || c == '_'))
            .next()
            .unwrap_or(program);
        let venv = Path::new(PYTHON_TOOLS).join(name);
        let line = format!(
            "python3 -m venv {v} && {v}/bin/pip install '{requirement}' && ln -sf \
             {v}/bin/{program} /usr/local/bin/{program}",
            v = venv.display()
        );
        if !root {
            fixes.push(format!("sudo sh -c \"{line}\""));
            continue;
        }
        make_venv(&venv, &[requirement], &line)?;
        let link = Path::new("/usr/local/bin").join(program);
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink(venv.join("bin").join(program), &link)
            .with_context(|| format!("linking {}", link.display()))?;
    }

    for (name, requirements) in &needs.python_libs {
        let venv = Path::new(PYTHON_TOOLS).join(name);
        // What the environment holds, written once pip has installed it.
        let stamp = venv.join(".requirements");
        let wanted = requirements.join(" ");
        let current = std::fs::read_to_string(&stamp).is_ok_and(|s| s.trim() == wanted);
        if current && venv.join("bin/python").exists() {
            continue;
        }
        let line = format!(
            "python3 -m venv {v} && {v}/bin/pip install {wanted} && echo '{wanted}' > \
             {v}/.requirements",
            v = venv.display()
        );
        if !root {
            fixes.push(format!("sudo sh -c \"{line}\""));
            continue;
        }
        make_venv(&venv, requirements, &line)?;
        std::fs::write(&stamp, format!("{wanted}\n"))
            .with_context(|| format!("writing {}", stamp.display()))?;
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
