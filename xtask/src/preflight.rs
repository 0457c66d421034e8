//! Preflight: find every host package, PyPI tool, toolchain target and kernel facility a verb
//! needs, install what is missing when running as root, or print the one command that fixes it
//! and stop.
//!
//! It runs before the heavy host CLI is compiled, because that links libostree.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

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
    // Secure Boot: keys (openssl), signed UKIs and systemd-boot (sbsign under faketime, checked
    // with sbverify; host/image/src/uki.rs).
    "openssl",
    "sbsigntool",
    "faketime",
];

/// Extra packages for arm64 boards: cross compilers (C++ for the runtime's OpenH264) and libc,
/// and user-mode emulation for the rootfs.
const ARM64: &[&str] = &[
    "gcc-aarch64-linux-gnu",
    "g++-aarch64-linux-gnu",
    "libc6-dev-arm64-cross",
    "qemu-user-static",
    "binfmt-support",
    "arch-test",
];

/// Extra packages to boot images under QEMU (swtpm: the guest's TPM 2.0, which seals the keys
/// of its encrypted partitions; python3-venv: the virtual environment of [`VM_PYTHON`]).
const VM: &[&str] = &[
    "qemu-system-x86",
    "ovmf",
    "qemu-utils",
    "swtpm",
    "python3-venv",
];

/// Tools from PyPI for booting images under QEMU, as [`TEST_PYTHON`]: virt-fw-vars enrolls our
/// Secure Boot keys into a copy of OVMF's variable store (host/image/src/secure_boot.rs). Debian
/// 12 has virt-firmware only in backports; 26.10 is the release issue 18's research used
/// (docs/research/issue-18/REPORT.md, "Q2").
const VM_PYTHON: &[(&str, &str)] = &[("virt-fw-vars", "virt-firmware==26.10")];

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
    // The Secure Boot VM test (host/image/src/secure_boot.rs) signs this systemd-boot with a
    // snakeoil db key (openssl, sbsign: BUILD) and checks that OVMF starts it and refuses it
    // unsigned.
    "systemd-boot-efi",
    // The rtsp suite (tests/tests/rtsp.rs): the runtime's cameras, Debian's RTSP server
    // through Python GI with x264enc (-ugly) and the RTP payloader (-good). Building the
    // runtime needs RUNTIME_DEV too.
    "gstreamer1.0-plugins-base",
    "gstreamer1.0-plugins-good",
    "gstreamer1.0-plugins-ugly",
    "gir1.2-gst-rtsp-server-1.0",
    "python3-gi",
];

/// What building the inference runtime's camera streams needs (device/runtime's feature
/// `rtsp`): a C++ compiler for OpenH264, which its crate compiles from source, and nasm for
/// its x86 assembly (without it the decoder builds in plain C++, several times slower). The
/// tests crate enables that feature, so every `cargo test --workspace` (tier 1 too) builds it;
/// so does an image build of a recipe with `aperture-runtime` (the default one).
pub const RUNTIME_DEV: &[&str] = &["g++", "nasm"];

/// Tools from PyPI the tests run, as (program, requirement): each is installed into its own
/// virtual environment under [`PYTHON_TOOLS`] with its program linked into /usr/local/bin.
/// moto's server is the S3-compatible server `repo sync --to s3://` is tested against
/// (host/repo/tests/s3.rs).
const TEST_PYTHON: &[(&str, &str)] = &[("moto_server", "moto[server]==5.2.1")];

/// Where the PyPI tools' virtual environments live (passed to the host programs as
/// `APERTURE_PYTHON_TOOLS`).
pub(crate) const PYTHON_TOOLS: &str = "/opt/aperture-tools";

/// A virtual environment of Python libraries from PyPI that a benchmark imports: installed into
/// `PYTHON_TOOLS/<name>` with nothing linked, and the benchmark runs that environment's python.
#[derive(Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct PythonLibs {
    /// The environment's folder name (the benchmark names the same).
    pub name: &'static str,
    /// pip requirements, each pinned.
    pub requirements: &'static [&'static str],
    /// Whether Debian's own Python packages (python3-gi) are seen too, after the pinned ones.
    pub system_site_packages: bool,
}

/// The benchmarks' Python environments.
/// * `bench fleet-repo` runs python-tuf's ngclient, the reference TUF client, beside
///   Aperture's (`aperture_bench::fleet_repo::PYTHON_TUF_VENV`), with pyca/cryptography:
///   without it securesystemslib verifies ed25519 in pure Python, about 30 ms a signature.
/// * `bench runtime` runs the model in the onnxruntime Python package beside the runtime
///   (`aperture_bench::runtime::PYTHON_VENV`): the same ONNX Runtime release as the runtime's
///   library ([`ONNXRUNTIME_VERSION`]), numpy, and Debian's PyGObject for GStreamer
///   (python3-gi, from [`BENCH`]), hence the system site packages.
const BENCH_PYTHON_LIBS: &[PythonLibs] = &[
    PythonLibs {
        name: "python-tuf",
        requirements: &["tuf==7.0.1", "cryptography==50.0.2"],
        system_site_packages: false,
    },
    PythonLibs {
        name: "onnxruntime-peer",
        requirements: &["onnxruntime==1.31.1", "numpy==2.4.6"],
        system_site_packages: true,
    },
];

/// The ONNX Runtime library the runtime's tests load (device/runtime/tests/golden.rs) and the
/// images with the inference runtime ship, one per architecture: the
/// plain C-API library inside the official `onnxruntime` wheel on PyPI, pinned by the sha256 of
/// the wheel and of the library (docs/research/issue-17/pins.txt). The version is the one
/// `ort` 2.0.0-rc.15 was written for (`aperture_runtime::ONNXRUNTIME_VERSION`).
pub(crate) struct OnnxRuntimeWheel {
    /// `uname -m` of the machines this wheel is for.
    pub arch: &'static str,
    /// Debian's name of that architecture.
    pub debian: &'static str,
    /// pip's `--platform`.
    pub platform: &'static str,
    /// The wheel's file name.
    pub wheel: &'static str,
    /// Its sha256.
    pub wheel_sha256: &'static str,
    /// The library's sha256.
    pub lib_sha256: &'static str,
}

/// The ONNX Runtime release of [`ONNXRUNTIME_WHEELS`].
pub(crate) const ONNXRUNTIME_VERSION: &str = "1.31.1";

/// The wheels, one per host architecture.
pub(crate) const ONNXRUNTIME_WHEELS: &[OnnxRuntimeWheel] = &[
    OnnxRuntimeWheel {
        arch: "x86_64",
        debian: "amd64",
        platform: "manylinux_2_28_x86_64",
        wheel: "onnxruntime-1.31.1-cp311-cp311-manylinux_2_28_x86_64.whl",
        wheel_sha256: "5752bd508126ae7c49894d3b9d2e83f0c3d487319246d04c444b393308d7ad7f",
        lib_sha256: "fc44112fbe06d7d689c57e11d3862031f64711007e4ee020f8eed5185fd2c1d3",
    },
    OnnxRuntimeWheel {
        arch: "aarch64",
        debian: "arm64",
        platform: "manylinux_2_28_aarch64",
        wheel: "onnxruntime-1.31.1-cp311-cp311-manylinux_2_28_aarch64.whl",
        wheel_sha256: "da05378364c44d4407e463982d2bf8d5e4cfea873283757e48beeb41df97b7f3",
        lib_sha256: "8aa3b76b28c778a2b1dd660d34161adb1d508c9ccd04ff9dc80e26eca5df8467",
    },
];

/// Where the library for this machine is put (passed to the tests and the image builder as
/// `APERTURE_ONNXRUNTIME`).
pub(crate) fn onnxruntime_lib() -> PathBuf {
    Path::new(PYTHON_TOOLS)
        .join(format!("onnxruntime-{ONNXRUNTIME_VERSION}"))
        .join(format!("libonnxruntime.so.{ONNXRUNTIME_VERSION}"))
}

/// Where the library for `arch` (`uname -m`) is put: this machine's at [`onnxruntime_lib`],
/// another architecture's (the images of its boards ship it) in a folder named after it
/// beside that, `onnxruntime-1.31.1/aarch64/`.
pub(crate) fn onnxruntime_lib_for(arch: &str) -> PathBuf {
    if arch == std::env::consts::ARCH {
        return onnxruntime_lib();
    }
    Path::new(PYTHON_TOOLS)
        .join(format!("onnxruntime-{ONNXRUNTIME_VERSION}"))
        .join(arch)
        .join(format!("libonnxruntime.so.{ONNXRUNTIME_VERSION}"))
}

/// The variables that hand the libraries to the host programs: `APERTURE_ONNXRUNTIME` (this
/// machine's: the runtime's tests load it), and `APERTURE_ONNXRUNTIME_<ARCH>` (Debian's name:
/// `_ARM64`, `_AMD64`) for every pinned architecture whose library the preflight fetched, which
/// the image builder installs into images for that architecture
/// (host/image/src/rootfs/runtime.rs).
pub(crate) fn onnxruntime_env() -> Vec<(String, PathBuf)> {
    let mut env = vec![("APERTURE_ONNXRUNTIME".to_string(), onnxruntime_lib())];
    for w in ONNXRUNTIME_WHEELS {
        let lib = onnxruntime_lib_for(w.arch);
        if lib.is_file() {
            env.push((
                format!("APERTURE_ONNXRUNTIME_{}", w.debian.to_ascii_uppercase()),
                lib,
            ));
        }
    }
    env
}

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
    // `bench runtime`: the rtsp suite's RTSP server (x264enc: -ugly), the Python peer's
    // GStreamer pipeline (rtspsrc, rtph264depay: -good; openh264dec, the decoder the runtime
    // compiles in: -bad) and GStreamer's Python bindings (GstApp's typelib:
    // gir1.2-gst-plugins-base-1.0). Building the runtime needs RUNTIME_DEV too.
    "gstreamer1.0-plugins-base",
    "gstreamer1.0-plugins-good",
    "gstreamer1.0-plugins-bad",
    "gstreamer1.0-plugins-ugly",
    "gir1.2-gst-rtsp-server-1.0",
    "gir1.2-gst-plugins-base-1.0",
    "python3-gi",
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
    /// Libraries from PyPI, one virtual environment each.
    pub python_libs: BTreeSet<&'static PythonLibs>,
    /// The pinned ONNX Runtime library of each of these architectures (`uname -m`;
    /// [`onnxruntime_lib_for`]).
    pub onnxruntime: BTreeSet<&'static str>,
}

impl Needs {
    /// Needs of a build for a board architecture.
    pub fn build(arm64: bool) -> Self {
        let mut n = Needs::default();
        n.packages.extend(BUILD);
        // The inference runtime (the default recipe builds it): its H.264 decoder's compilers,
        // and the ONNX Runtime library the image ships (this machine's, and the boards' when
        // they are arm64).
        n.packages.extend(RUNTIME_DEV);
        n.onnxruntime.insert(std::env::consts::ARCH);
        if arm64 {
            n.packages.extend(ARM64);
            n.arm64 = true;
            n.onnxruntime.insert("aarch64");
        }
        n
    }

    /// Needs of the full test suite: every board, every tier.
    pub fn test() -> Self {
        let mut n = Needs::build(true);
        n.packages.extend(VM);
        n.packages.extend(VM_ARM64);
        n.packages.extend(TEST);
        n.packages.extend(RUNTIME_DEV);
        n.python.extend(TEST_PYTHON);
        n.python.extend(VM_PYTHON);
        n
    }

    /// Needs of `vm run`.
    pub fn vm(arm64: bool) -> Self {
        let mut n = Needs::default();
        n.packages.extend(VM);
        n.python.extend(VM_PYTHON);
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
        // `bench runtime` builds the runtime and loads the pinned ONNX Runtime library.
        n.packages.extend(RUNTIME_DEV);
        n.python_libs.extend(BENCH_PYTHON_LIBS);
        n.onnxruntime.insert(std::env::consts::ARCH);
        n
    }

    /// Needs of verbs that only read files the host CLI writes (verify, diff, keys, audit).
    pub fn host_cli() -> Self {
        let mut n = Needs::default();
        n.packages.extend(["libostree-dev", "pkg-config"]);
        n
    }

    /// Needs of tier 1 (`cargo test --workspace`) without root: the host CLI's, and the
    /// runtime's compilers (the tests crate builds the runtime's camera streams).
    pub fn unit_tests() -> Self {
        let mut n = Needs::host_cli();
        n.packages.extend(RUNTIME_DEV);
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

/// Make the virtual environment `venv` (seeing Debian's own Python packages when
/// `system_site_packages`) and pip-install `requirements` into it (`line`: the same as one
/// shell command, for the error).
fn make_venv(
    venv: &Path,
    requirements: &[&str],
    system_site_packages: bool,
    line: &str,
) -> Result<()> {
    let requirement = requirements.join(" ");
    eprintln!(
        "preflight: installing {requirement} from PyPI into {}",
        venv.display()
    );
    // Debian's python3, not whatever python3 comes first on PATH: its venv module is the
    // python3-venv package installed above.
    Cmd::new("/usr/bin/python3")
        .args(["-m", "venv", "--clear"])
        .args(system_site_packages.then_some("--system-site-packages"))
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
            // apt may remove an installed package that conflicts with one it installs (a
            // machine with backports' qemu-utils 10 loses it to qemu-system-x86 7.2): put back
            // every wanted package the install took away, at the version this release offers.
            let removed = missing_packages(&needs.packages)?;
            if !removed.is_empty() {
                eprintln!(
                    "preflight: installing again what apt removed to resolve a conflict: {}",
                    removed.join(" ")
                );
                Cmd::new("apt-get")
                    .env("DEBIAN_FRONTEND", "noninteractive")
                    .args(["install", "-y", "-qq", "--no-install-recommends"])
                    .args(&removed)
                    .run_inherited()
                    .with_context(|| {
                        format!(
                            "installing host packages that apt removed ({})",
                            removed.join(" ")
                        )
                    })?;
                let still = missing_packages(&needs.packages)?;
                if !still.is_empty() {
                    bail!(
                        "host packages {} are still not installed after apt-get install: two \
                         of the packages wanted conflict on this host; install them by hand \
                         (apt-get install {}) and see what apt says",
                        still.join(" "),
                        still.join(" ")
                    );
                }
            }
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
        make_venv(&venv, &[requirement], false, &line)?;
        let link = Path::new("/usr/local/bin").join(program);
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink(venv.join("bin").join(program), &link)
            .with_context(|| format!("linking {}", link.display()))?;
    }

    for env in &needs.python_libs {
        let venv = Path::new(PYTHON_TOOLS).join(env.name);
        // What the environment holds, written once pip has installed it.
        let stamp = venv.join(".requirements");
        let site = if env.system_site_packages {
            "--system-site-packages "
        } else {
            ""
        };
        let wanted = format!("{site}{}", env.requirements.join(" "));
        let current = std::fs::read_to_string(&stamp).is_ok_and(|s| s.trim() == wanted);
        if current && venv.join("bin/python").exists() {
            continue;
        }
        let line = format!(
            "python3 -m venv --clear {site}{v} && {v}/bin/pip install {} && echo '{wanted}' > \
             {v}/.requirements",
            env.requirements.join(" "),
            v = venv.display()
        );
        if !root {
            fixes.push(format!("sudo sh -c \"{line}\""));
            continue;
        }
        make_venv(&venv, env.requirements, env.system_site_packages, &line)?;
        std::fs::write(&stamp, format!("{wanted}\n"))
            .with_context(|| format!("writing {}", stamp.display()))?;
    }

    for arch in &needs.onnxruntime {
        ensure_onnxruntime(arch, root, &mut fixes)?;
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

/// The sha256 of `file` (coreutils' sha256sum: xtask stays free of hashing crates).
fn sha256_of(file: &Path) -> Result<String> {
    let out = Cmd::new("sha256sum")
        .arg(file)
        .text()
        .with_context(|| format!("hashing {}", file.display()))?;
    Ok(out
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_string())
}

/// Put the pinned ONNX Runtime library for `arch` (`uname -m`) at [`onnxruntime_lib_for`]:
/// `pip download` the wheel (no dependencies, binary only, for that architecture's platform and
/// CPython 3.11, whatever python and architecture the host has), check its sha256, take the
/// library out of it, check that too, and move it into place. Nothing happens when the library
/// is there with the right sha256.
fn ensure_onnxruntime(arch: &str, root: bool, fixes: &mut Vec<String>) -> Result<()> {
    let Some(pin) = ONNXRUNTIME_WHEELS.iter().find(|w| w.arch == arch) else {
        bail!("no ONNX Runtime wheel is pinned for {arch} (xtask/src/preflight.rs ONNXRUNTIME_WHEELS)");
    };
    let lib = onnxruntime_lib_for(arch);
    if lib.is_file() && sha256_of(&lib)? == pin.lib_sha256 {
        return Ok(());
    }
    let dir = lib.parent().expect("the library has a folder");
    let member = format!("onnxruntime/capi/libonnxruntime.so.{ONNXRUNTIME_VERSION}");
    let requirement = format!("onnxruntime=={ONNXRUNTIME_VERSION}");
    let download = format!(
        "pip download --no-deps --only-binary=:all: --python-version 3.11 --platform {} \
         --dest {} {requirement}",
        pin.platform,
        dir.display()
    );
    if !root {
        // Root's preflight fetches it: the tests' run for this machine's, an arm64 build for
        // the arm64 boards'.
        let as_root = if arch == std::env::consts::ARCH {
            "sudo cargo xtask test --tier 1".to_string()
        } else {
            format!(
                "sudo cargo xtask build --recipe recipes/qemu-{}.toml",
                pin.debian
            )
        };
        fixes.push(format!(
            "{as_root}  # or by hand: {download}; check sha256 {} of {}; \
             unzip {member} from it to {} and check sha256 {}",
            pin.wheel_sha256,
            pin.wheel,
            lib.display(),
            pin.lib_sha256
        ));
        return Ok(());
    }
    eprintln!(
        "preflight: fetching ONNX Runtime {ONNXRUNTIME_VERSION} ({}) from PyPI into {}",
        pin.wheel,
        dir.display()
    );
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    // pip from a virtual environment of its own (python3-venv is a test package; Debian's
    // python3 may have no pip).
    let venv = Path::new(PYTHON_TOOLS).join("pip");
    if !venv.join("bin/pip").exists() {
        Cmd::new("/usr/bin/python3")
            .args(["-m", "venv"])
            .arg(&venv)
            .run_inherited()
            .with_context(|| format!("making the virtual environment {}", venv.display()))?;
    }
    Cmd::new(venv.join("bin/pip"))
        .args(["download", "-q", "--disable-pip-version-check", "--no-deps"])
        .args(["--only-binary=:all:", "--python-version", "3.11"])
        .args(["--platform", pin.platform, "--dest"])
        .arg(dir)
        .arg(&requirement)
        .run_inherited()
        .with_context(|| format!("downloading the ONNX Runtime wheel ({download})"))?;
    let wheel = dir.join(pin.wheel);
    let got = sha256_of(&wheel)?;
    if got != pin.wheel_sha256 {
        bail!(
            "{} has sha256 {got}, but xtask/src/preflight.rs pins {}: PyPI served another file; \
             remove it and look into why before changing the pin",
            wheel.display(),
            pin.wheel_sha256
        );
    }
    // A wheel is a zip file; Python's zipfile takes the one member out.
    let partial = dir.join(format!(".libonnxruntime.so.{ONNXRUNTIME_VERSION}.partial"));
    Cmd::new("/usr/bin/python3")
        .args([
            "-c",
            "import shutil, sys, zipfile\n\
             with zipfile.ZipFile(sys.argv[1]) as z, z.open(sys.argv[2]) as src, \
             open(sys.argv[3], 'wb') as dst: shutil.copyfileobj(src, dst)",
        ])
        .arg(&wheel)
        .arg(&member)
        .arg(&partial)
        .run_inherited()
        .with_context(|| format!("taking {member} out of {}", wheel.display()))?;
    let got = sha256_of(&partial)?;
    if got != pin.lib_sha256 {
        bail!(
            "{member} in {} has sha256 {got}, but xtask/src/preflight.rs pins {}",
            wheel.display(),
            pin.lib_sha256
        );
    }
    std::fs::rename(&partial, &lib)
        .with_context(|| format!("moving the library to {}", lib.display()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn onnxruntime_pins_are_sha256_of_this_version_and_match_the_runtime() {
        let hex = |s: &str| s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit());
        for w in ONNXRUNTIME_WHEELS {
            assert!(hex(w.wheel_sha256) && hex(w.lib_sha256), "{}", w.wheel);
            assert!(w
                .wheel
                .starts_with(&format!("onnxruntime-{ONNXRUNTIME_VERSION}-")));
            assert!(
                w.wheel.ends_with(&format!("{}.whl", w.platform)),
                "{}",
                w.wheel
            );
            assert!(w.platform.ends_with(w.arch));
        }
        assert!(onnxruntime_lib().starts_with(PYTHON_TOOLS));
        // The bench's Python peer runs the same release.
        let peer = BENCH_PYTHON_LIBS
            .iter()
            .find(|e| e.name == "onnxruntime-peer")
            .expect("the runtime bench's environment");
        assert!(peer
            .requirements
            .contains(&format!("onnxruntime=={ONNXRUNTIME_VERSION}").as_str()));
        // One place per architecture; this machine's is the one the tests load.
        assert_eq!(
            onnxruntime_lib_for(std::env::consts::ARCH),
            onnxruntime_lib()
        );
        let places: BTreeSet<PathBuf> = ONNXRUNTIME_WHEELS
            .iter()
            .map(|w| onnxruntime_lib_for(w.arch))
            .collect();
        assert_eq!(places.len(), ONNXRUNTIME_WHEELS.len());
        // The image builder's variables are named after Debian's architectures.
        let debian: BTreeSet<&str> = ONNXRUNTIME_WHEELS.iter().map(|w| w.debian).collect();
        assert_eq!(debian, BTreeSet::from(["amd64", "arm64"]));
        // The runtime names the same release in its errors (xtask does not link it).
        let runtime = include_str!("../../device/runtime/src/lib.rs");
        assert!(runtime.contains(&format!(
            "pub const ONNXRUNTIME_VERSION: &str = \"{ONNXRUNTIME_VERSION}\";"
        )));
    }
}
