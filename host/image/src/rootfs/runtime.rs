//! The inference runtime's files (issue 17), for a recipe that builds `aperture-runtime`:
//!
//! * the model folder of `[runtime] model` (its manifest, the model file checked against the
//!   manifest's sha256, and the golden frames with their reference for the self-test) under
//!   `/usr/share/aperture/models/<name>/`;
//! * the ONNX Runtime library, `libonnxruntime.so.1.31.1` from the official wheel (pinned by
//!   sha256 here and in xtask's preflight, which fetches it), as
//!   `/usr/lib/aperture/libonnxruntime.so.1.31.1`;
//! * the runtime's config, `/etc/aperture/runtime.toml`, with the recipe's cameras; a
//!   `cameras.toml` on the config partition replaces them at run time.
//!
//! The program itself is `aperture-device`'s feature `runtime` (see [`super::programs`]) and
//! its unit comes from `overlays/runtime`.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use aperture_vision::Manifest;

use super::layer::Layer;
use crate::recipe::{Arch, Recipe};

/// The ONNX Runtime release the runtime is built against (`aperture_runtime::ONNXRUNTIME_VERSION`).
pub const ONNXRUNTIME_VERSION: &str = "1.31.1";

/// The sha256 of `libonnxruntime.so.1.31.1` in the official `onnxruntime==1.31.1` wheel for
/// each architecture (the same pins as xtask's preflight).
fn library_sha256(arch: Arch) -> &'static str {
    match arch {
        Arch::Amd64 => "fc44112fbe06d7d689c57e11d3862031f64711007e4ee020f8eed5185fd2c1d3",
        Arch::Arm64 => "8aa3b76b28c778a2b1dd660d34161adb1d508c9ccd04ff9dc80e26eca5df8467",
    }
}

/// Where the image keeps the library, the models and the config.
pub const IMAGE_LIBRARY: &str = "usr/lib/aperture/libonnxruntime.so.1.31.1";
/// The folder of the image's models.
pub const IMAGE_MODELS: &str = "usr/share/aperture/models";
/// The runtime's config.
pub const IMAGE_CONFIG: &str = "etc/aperture/runtime.toml";
/// Cameras an administrator put on the config partition (they replace the recipe's).
pub const CAMERAS_FILE: &str = "/config/runtime/cameras.toml";
/// Installed models (signed model bundles), on the data partition: the unit's state folder.
pub const MODEL_STORE: &str = "/var/lib/aperture-runtime/models";

/// The environment variable that names the library for the build machine's own architecture
/// (`cargo xtask build` and `cargo xtask test` set it to the one the preflight fetched; the
/// runtime's tests load it).
pub const LIBRARY_ENV: &str = "APERTURE_ONNXRUNTIME";

/// The environment variable that names the library for `arch` (`APERTURE_ONNXRUNTIME_ARM64`,
/// `APERTURE_ONNXRUNTIME_AMD64`): how a build for another architecture than the build
/// machine's gets its library (xtask's preflight fetches it into a folder of its own and sets
/// this). It wins over [`LIBRARY_ENV`].
pub fn library_env(arch: Arch) -> String {
    format!("{LIBRARY_ENV}_{}", arch.debian().to_ascii_uppercase())
}

/// The library to install for `arch`: the file named by [`library_env`] for `arch`, else by
/// [`LIBRARY_ENV`], checked against the pin of `arch`.
fn library(arch: Arch) -> Result<PathBuf> {
    library_from(arch, |k| std::env::var_os(k))
}

fn library_from(arch: Arch, var: impl Fn(&str) -> Option<std::ffi::OsString>) -> Result<PathBuf> {
    let own = library_env(arch);
    let (name, path) = match (var(&own), var(LIBRARY_ENV)) {
        (Some(p), _) => (own.clone(), PathBuf::from(p)),
        (None, Some(p)) => (LIBRARY_ENV.to_string(), PathBuf::from(p)),
        (None, None) => bail!(
            "this recipe builds aperture-runtime, which needs the ONNX Runtime library \
             libonnxruntime.so.{ONNXRUNTIME_VERSION} for {arch}: run the build through \
             `cargo xtask build` (its preflight fetches the pinned library of each architecture), \
             or set {own} to the library from the official onnxruntime {ONNXRUNTIME_VERSION} \
             wheel for {arch}",
            arch = arch.debian()
        ),
    };
    let actual = aperture_trust::digest::sha256_file(&path)
        .with_context(|| {
            format!(
                "reading the ONNX Runtime library {} ({name})",
                path.display()
            )
        })?
        .0
        .to_string();
    if actual != library_sha256(arch) {
        bail!(
            "the ONNX Runtime library {} ({name}) has sha256 {actual}, not the pinned {} of \
             libonnxruntime.so.{ONNXRUNTIME_VERSION} for {arch}: set {own} to the library from \
             the official onnxruntime {ONNXRUNTIME_VERSION} wheel for {arch} (`cargo xtask \
             build` fetches it)",
            path.display(),
            library_sha256(arch),
            arch = arch.debian()
        );
    }
    Ok(path)
}

/// Install the model, the library and the config; returns a note for the build log.
pub fn install(layer: &Layer<'_>, recipe: &Recipe) -> Result<Option<String>> {
    let Some(rt) = &recipe.runtime else {
        return Ok(None);
    };
    let manifest_path = rt.model.join("manifest.toml");
    let manifest = Manifest::load(&manifest_path)?;
    // The model's bytes as pinned by its manifest; a changed file fails the build here.
    let model = manifest.read_model()?;
    let name = &manifest.model.name;
    let dest = Path::new(IMAGE_MODELS).join(name);
    layer.copy_file(&dest.join("manifest.toml"), &manifest_path, 0o644, 0, 0)?;
    layer.write(&dest.join(&manifest.model.file), &model, 0o644)?;
    let golden = rt.model.join("golden");
    let mut frames = 0;
    let mut entries: Vec<PathBuf> = std::fs::read_dir(&golden)
        .with_context(|| {
            format!(
                "reading {} (the model's self-test frames and reference.json)",
                golden.display()
            )
        })?
        .map(|e| e.map(|e| e.path()))
        .collect::<std::io::Result<_>>()?;
    entries.sort();
    for p in entries {
        let file = p
            .file_name()
            .unwrap_or_default()
            .to_string_lossy()
            .to_string();
        // The frames and their reference; the script that made the reference stays behind.
        if file.ends_with(".ppm") || file == "reference.json" {
            layer.copy_file(&dest.join("golden").join(&file), &p, 0o644, 0, 0)?;
            frames += usize::from(file.ends_with(".ppm"));
        }
    }
    if !golden.join("reference.json").is_file() {
        bail!(
            "the model folder {} has no golden/reference.json: the runtime's self-test needs it \
             (see models/nanodet-m/golden)",
            rt.model.display()
        );
    }
    let lib = library(recipe.base.architecture)?;
    layer.copy_file(Path::new(IMAGE_LIBRARY), &lib, 0o644, 0, 0)?;
    layer.write(
        Path::new(IMAGE_CONFIG),
        config_text(recipe, &dest.join("manifest.toml")).as_bytes(),
        0o644,
    )?;
    Ok(Some(format!(
        "runtime: model {name} ({} MiB, sha256 {}…, {frames} golden frames), ONNX Runtime \
         {ONNXRUNTIME_VERSION}, {} cameras from the recipe",
        model.len() >> 20,
        &manifest.model.sha256[..12],
        rt.cameras.len()
    )))
}

/// A TOML basic string.
fn quoted(s: &str) -> String {
    toml::Value::String(s.to_string()).to_string()
}

/// `/etc/aperture/runtime.toml` (the format of `aperture_runtime::config`).
fn config_text(recipe: &Recipe, manifest: &Path) -> String {
    let mut t = String::from(
        "# Generated by Aperture from the recipe's [runtime] section. Cameras in\n\
         # /config/runtime/cameras.toml (on the encrypted config partition) replace the ones below.\n",
    );
    t += &format!("model = {}\n", quoted(&format!("/{}", manifest.display())));
    t += &format!("onnxruntime = {}\n", quoted(&format!("/{IMAGE_LIBRARY}")));
    t += "socket = \"/run/aperture/detections.sock\"\n";
    t += "output_dir = \"/var/lib/aperture-runtime/detections\"\n";
    t += &format!(
        "metrics = {}\n",
        quoted(&format!(
            "/{}",
            aperture_appliance::files::rel::RUNTIME_METRICS
        ))
    );
    t += &format!("cameras_file = {}\n", quoted(CAMERAS_FILE));
    // Signed model bundles (`aperture-runtime model install`), on the data partition.
    t += &format!("models_dir = {}\n", quoted(MODEL_STORE));
    if recipe.board.is_jetson() {
        // The GPU first, through the ONNX Runtime the library provides; with the CPU build of
        // the official wheel (no JetPack build given yet) the runtime says so and runs on the CPU.
        t += "execution_providers = [\"tensorrt\", \"cuda\"]\n";
        t += "engine_cache_dir = \"/var/cache/aperture-runtime/tensorrt\"\n";
    }
    for c in recipe.runtime.iter().flat_map(|r| &r.cameras) {
        t += &format!(
            "\n[[camera]]\nname = {}\nurl = {}\n",
            quoted(&c.name),
            quoted(&c.url)
        );
    }
    t
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jetsons_ask_for_the_gpu_first_and_every_board_names_its_stores() {
        let recipes = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../recipes");
        let m = Path::new("usr/share/aperture/models/nanodet-m/manifest.toml");
        let orin = Recipe::load(&recipes.join("jetson-orin-agx.toml")).unwrap();
        let t = config_text(&orin, m);
        assert!(
            t.contains("execution_providers = [\"tensorrt\", \"cuda\"]"),
            "{t}"
        );
        assert!(
            t.contains("engine_cache_dir = \"/var/cache/aperture-runtime/"),
            "{t}"
        );
        let x86 = Recipe::load(&recipes.join("qemu-x86_64.toml")).unwrap();
        let t = config_text(&x86, m);
        assert!(!t.contains("execution_providers"), "{t}");
        for key in [
            "model = \"/usr/share/aperture/models/nanodet-m/manifest.toml\"",
            "cameras_file",
            "models_dir",
        ] {
            assert!(t.contains(key), "{key}: {t}");
        }
    }

    #[test]
    fn the_library_of_the_recipes_architecture_comes_from_its_own_variable_first() {
        let d = tempfile::tempdir().unwrap();
        let host = d.path().join("host.so");
        let arm = d.path().join("arm.so");
        std::fs::write(&host, b"not the library").unwrap();
        std::fs::write(&arm, b"not the library either").unwrap();
        assert_eq!(library_env(Arch::Arm64), "APERTURE_ONNXRUNTIME_ARM64");
        assert_eq!(library_env(Arch::Amd64), "APERTURE_ONNXRUNTIME_AMD64");
        let vars = |pairs: Vec<(&'static str, PathBuf)>| {
            move |k: &str| {
                pairs
                    .iter()
                    .find(|(n, _)| *n == k)
                    .map(|(_, p)| p.clone().into_os_string())
            }
        };
        // Neither variable: the message names the architecture's own variable.
        let e = library_from(Arch::Arm64, vars(vec![]))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("APERTURE_ONNXRUNTIME_ARM64") && e.contains("arm64"),
            "{e}"
        );
        // Only the host's: checked against the arm64 pin, and the fix names the arm64 variable.
        let e = library_from(
            Arch::Arm64,
            vars(vec![("APERTURE_ONNXRUNTIME", host.clone())]),
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains(&host.display().to_string()), "{e}");
        assert!(e.contains("(APERTURE_ONNXRUNTIME)"), "{e}");
        assert!(e.contains(library_sha256(Arch::Arm64)), "{e}");
        assert!(e.contains("set APERTURE_ONNXRUNTIME_ARM64"), "{e}");
        // Both: the architecture's own wins.
        let e = library_from(
            Arch::Arm64,
            vars(vec![
                ("APERTURE_ONNXRUNTIME", host.clone()),
                ("APERTURE_ONNXRUNTIME_ARM64", arm.clone()),
            ]),
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains(&arm.display().to_string()), "{e}");
        assert!(e.contains("(APERTURE_ONNXRUNTIME_ARM64)"), "{e}");
    }

    #[test]
    fn the_pinned_library_passes_its_architectures_check_only() {
        // The real amd64 library, where the preflight put it (skipped elsewhere).
        let lib = PathBuf::from("/opt/aperture-tools/onnxruntime-1.31.1/libonnxruntime.so.1.31.1");
        if !lib.is_file() {
            eprintln!(
                "NOT RUN: {} is absent (cargo xtask test fetches it)",
                lib.display()
            );
            return;
        }
        let only = |k: &str| (k == "APERTURE_ONNXRUNTIME").then(|| lib.clone().into_os_string());
        assert_eq!(library_from(Arch::Amd64, only).unwrap(), lib);
        assert!(library_from(Arch::Arm64, only).is_err());
    }
}
