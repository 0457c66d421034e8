//! The cross sysroot: what cargo links a device program against when the program needs system
//! libraries (the inference runtime links GStreamer through gstreamer-rs) and the board's
//! architecture is not the build machine's. Debian's -dev packages of those libraries are not
//! co-installable across architectures on the build machine (libgstreamer-plugins-base1.0-dev
//! for arm64 would replace the amd64 one), so they are unpacked for the board into a folder of
//! their own: `mmdebstrap --variant=extract` resolves their dependencies and unpacks them, and
//! runs no maintainer script, so nothing runs under emulation. The folder is made once per
//! suite, mirror, architecture and package list, in the build cache (`cache/sysroots/`), and
//! reused while that key is unchanged.
//!
//! [`cargo_env`] points pkg-config (the `-sys` crates' build scripts) and the linker at it:
//! pkg-config's paths get the sysroot as a prefix, and Debian's cross gcc links with
//! `--sysroot`, so libc's linker scripts (absolute paths inside the sysroot) resolve there too,
//! with `-rpath-link` for the libraries' own dependencies.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use aperture_sys::Cmd;
use sha2::{Digest, Sha256};

use crate::progress::Step;
use crate::recipe::{Arch, DeviceProgram, Recipe};

/// The packages a cross build links against (their dependencies come with them): GStreamer's
/// core, base libraries (app, video) and their .pc files, what gstreamer-rs links.
pub const PACKAGES: &[&str] = &["libgstreamer1.0-dev", "libgstreamer-plugins-base1.0-dev"];

/// Version of the way a sysroot is made; bump it to make every cached sysroot again.
const FORMAT: u32 = 1;

/// The file that marks a finished sysroot (written last).
const COMPLETE: &str = ".aperture-sysroot";

/// The architecture of the machine this runs on.
pub fn host_arch() -> Option<Arch> {
    match std::env::consts::ARCH {
        "x86_64" => Some(Arch::Amd64),
        "aarch64" => Some(Arch::Arm64),
        _ => None,
    }
}

/// Whether building `recipe`'s device programs needs a sysroot: it builds `aperture-runtime`
/// (GStreamer) for an architecture other than this machine's.
pub fn needed(recipe: &Recipe) -> bool {
    recipe.components.device.contains(&DeviceProgram::Runtime)
        && host_arch() != Some(recipe.base.architecture)
}

/// Debian's multiarch triple of `arch` (the library folders' name).
pub fn multiarch(arch: Arch) -> &'static str {
    match arch {
        Arch::Amd64 => "x86_64-linux-gnu",
        Arch::Arm64 => "aarch64-linux-gnu",
    }
}

fn mmdebstrap_version() -> Result<String> {
    Ok(Cmd::new("mmdebstrap")
        .arg("--version")
        .text()?
        .trim()
        .to_string())
}

/// The cache key of the recipe's sysroot: suite, mirror, architecture, packages, tool version
/// and format.
pub fn key(recipe: &Recipe, mmdebstrap: &str) -> String {
    let doc = serde_json::json!({
        "format": FORMAT,
        "suite": recipe.base.suite,
        "mirror": recipe.base.mirror,
        "architecture": recipe.base.architecture.debian(),
        "packages": PACKAGES,
        "mmdebstrap": mmdebstrap,
    });
    hex::encode(Sha256::digest(doc.to_string().as_bytes()))
}

/// Where the sysroot of `key` lives in the build cache (`cache` is the pipeline's `cache/`).
pub fn folder(cache: &Path, arch: Arch, key: &str) -> PathBuf {
    cache
        .join("sysroots")
        .join(format!("{}-{}", arch.debian(), &key[..16]))
}

/// Make sure the recipe's sysroot is in the build cache; returns its folder.
pub fn ensure(recipe: &Recipe, cache: &Path, step: &Step<'_>) -> Result<PathBuf> {
    let arch = recipe.base.architecture;
    let key = key(recipe, &mmdebstrap_version()?);
    let dir = folder(cache, arch, &key);
    if dir.join(COMPLETE).is_file() {
        step.line(&format!("sysroot {} (cached)", dir.display()));
        return Ok(dir);
    }
    let tmp = cache.join("tmp").join(format!("sysroot-{}", &key[..16]));
    for stale in [&tmp, &dir] {
        if stale.exists() {
            // Left over from an interrupted build: never trust a partial tree.
            std::fs::remove_dir_all(stale)
                .with_context(|| format!("removing stale {}", stale.display()))?;
        }
    }
    std::fs::create_dir_all(tmp.parent().expect("has a parent"))?;
    std::fs::create_dir_all(dir.parent().expect("has a parent"))?;
    let started = std::time::Instant::now();
    step.line(&format!(
        "sysroot: unpacking {} for {} (mmdebstrap --variant=extract, no emulation)",
        PACKAGES.join(" "),
        arch.debian()
    ));
    let made = Cmd::new("mmdebstrap")
        .env("LC_ALL", "C.UTF-8")
        .arg("--mode=root")
        .arg("--variant=extract")
        .arg("--format=directory")
        .arg(format!("--architectures={}", arch.debian()))
        .arg(format!("--include={}", PACKAGES.join(",")))
        // No dpkg path filters (the base's drop documentation): mmdebstrap would pipe every
        // package through mmtarfilter, minutes instead of seconds for 70 MB of a build cache.
        .arg(&recipe.base.suite)
        .arg(&tmp)
        .arg(&recipe.base.mirror)
        .stream(|l| step.line(l))
        .with_context(|| {
            format!(
                "unpacking the {} sysroot for cross-building aperture-runtime with mmdebstrap",
                arch.debian()
            )
        })
        .and_then(|()| check(&tmp, arch))
        .and_then(|()| {
            std::fs::write(tmp.join(COMPLETE), format!("{key}\n"))?;
            std::fs::rename(&tmp, &dir)
                .with_context(|| format!("moving the sysroot to {}", dir.display()))
        });
    if made.is_err() {
        let _ = std::fs::remove_dir_all(&tmp);
    }
    made?;
    step.note(format!(
        "sysroot {} for {} made in {:.0?} ({} MiB)",
        dir.display(),
        arch.debian(),
        started.elapsed(),
        crate::cache::size_of(&dir) >> 20
    ));
    Ok(dir)
}

/// A sysroot must hold the .pc files the build asks pkg-config for.
fn check(root: &Path, arch: Arch) -> Result<()> {
    let pc = root.join("usr/lib").join(multiarch(arch)).join("pkgconfig");
    for name in ["gstreamer-1.0", "gstreamer-app-1.0", "gstreamer-video-1.0"] {
        let file = pc.join(format!("{name}.pc"));
        if !file.is_file() {
            anyhow::bail!(
                "the {} sysroot has no {}: mmdebstrap unpacked {} without it",
                arch.debian(),
                file.display(),
                PACKAGES.join(" ")
            );
        }
    }
    Ok(())
}

/// The environment of a cargo build for `arch` against `sysroot`, as (variable, value), with
/// `rustflags` (the build's own `RUSTFLAGS`) extended by the linker's flags. With `--target`
/// RUSTFLAGS reach only the target's crates, not build scripts and proc macros.
pub fn cargo_env(sysroot: &Path, arch: Arch, rustflags: &str) -> Vec<(String, String)> {
    let root = sysroot.display().to_string();
    let lib = format!("{root}/usr/lib/{}", multiarch(arch));
    let base_lib = format!("{root}/lib/{}", multiarch(arch));
    let mut flags = rustflags.to_string();
    for f in [
        format!("-C link-arg=--sysroot={root}"),
        format!("-L native={lib}"),
        format!("-L native={base_lib}"),
        format!("-C link-arg=-Wl,-rpath-link,{lib}"),
        format!("-C link-arg=-Wl,-rpath-link,{base_lib}"),
    ] {
        if !flags.is_empty() {
            flags.push(' ');
        }
        flags += &f;
    }
    vec![
        ("PKG_CONFIG_ALLOW_CROSS".into(), "1".into()),
        ("PKG_CONFIG_SYSROOT_DIR".into(), root.clone()),
        (
            "PKG_CONFIG_LIBDIR".into(),
            format!("{lib}/pkgconfig:{root}/usr/share/pkgconfig"),
        ),
        // Nothing of the build machine's own .pc files.
        ("PKG_CONFIG_PATH".into(), String::new()),
        ("RUSTFLAGS".into(), flags),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cargo_env_points_pkg_config_and_the_linker_into_the_sysroot_only() {
        let env = cargo_env(Path::new("/c/sysroots/arm64-x"), Arch::Arm64, "--remap=a");
        let get = |k: &str| {
            env.iter()
                .find(|(n, _)| n == k)
                .map(|(_, v)| v.as_str())
                .unwrap()
        };
        assert_eq!(get("PKG_CONFIG_SYSROOT_DIR"), "/c/sysroots/arm64-x");
        assert_eq!(
            get("PKG_CONFIG_LIBDIR"),
            "/c/sysroots/arm64-x/usr/lib/aarch64-linux-gnu/pkgconfig:/c/sysroots/arm64-x/usr/share/pkgconfig"
        );
        assert_eq!(get("PKG_CONFIG_ALLOW_CROSS"), "1");
        assert_eq!(get("PKG_CONFIG_PATH"), "");
        let flags = get("RUSTFLAGS");
        assert!(flags.starts_with("--remap=a "), "{flags}");
        for f in [
            "-C link-arg=--sysroot=/c/sysroots/arm64-x",
            "-L native=/c/sysroots/arm64-x/usr/lib/aarch64-linux-gnu",
            "-C link-arg=-Wl,-rpath-link,/c/sysroots/arm64-x/usr/lib/aarch64-linux-gnu",
            "-C link-arg=-Wl,-rpath-link,/c/sysroots/arm64-x/lib/aarch64-linux-gnu",
        ] {
            assert!(flags.contains(f), "{f} not in {flags}");
        }
    }
}
