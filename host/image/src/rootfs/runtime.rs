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
//! A Jetson image built with a BSP tree that holds a GPU build of ONNX Runtime
//! ([`JETPACK_ORT_DIR`], from JetPack: NVIDIA builds ONNX Runtime with its CUDA and TensorRT
//! providers for each JetPack release) takes that build instead, with the libraries beside it
//! (CUDA, cuDNN, TensorRT), into [`IMAGE_GPU_DIR`]; the runtime asks for TensorRT, then CUDA,
//! and falls back to the CPU loudly when neither registers ([`GpuRuntime`]).
//!
//! The program itself is `aperture-device`'s feature `runtime` (see [`super::programs`]) and
//! its unit comes from `overlays/runtime`.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use aperture_appliance::files::rel;
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

/// Where a BSP tree (`Linux_for_Tegra/`) holds JetPack's GPU build of ONNX Runtime: its
/// `libonnxruntime.so.1.N.M`, its provider libraries (`libonnxruntime_providers_shared.so`
/// and `..._cuda.so` and/or `..._tensorrt.so`) and the CUDA, cuDNN and TensorRT libraries
/// they load. Not part of NVIDIA's BSP tarball: the build engineer copies it there from the
/// JetPack release the BSP belongs to (see the README).
pub const JETPACK_ORT_DIR: &str = "jetpack/onnxruntime";
/// Where the image keeps that folder's libraries (the unit's library path).
pub const IMAGE_GPU_DIR: &str = "usr/lib/aperture/onnxruntime";
/// The oldest ONNX Runtime `ort` loads (1.22).
const OLDEST_ORT_MINOR: u32 = 22;
/// The unit drop-in that puts [`IMAGE_GPU_DIR`] on the runtime's library path.
const GPU_DROP_IN: &str = "usr/lib/systemd/system/aperture-runtime.service.d/jetpack.conf";

/// JetPack's GPU build of ONNX Runtime, found in a BSP tree.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GpuRuntime {
    /// The folder ([`JETPACK_ORT_DIR`] of the tree).
    pub dir: PathBuf,
    /// The library's file name (`libonnxruntime.so.1.N.M`).
    pub library: String,
    /// Its providers (`cuda`, `tensorrt`).
    pub providers: Vec<&'static str>,
    /// Every file to install: (name, a symlink's target or `None` for a file), sorted.
    pub files: Vec<(String, Option<String>)>,
}

impl GpuRuntime {
    /// The GPU build in the tree at `bsp_root`, if its [`JETPACK_ORT_DIR`] exists; a folder
    /// that is not a usable GPU build is an error naming what is wrong.
    pub fn find(bsp_root: &Path) -> Result<Option<GpuRuntime>> {
        let dir = bsp_root.join(JETPACK_ORT_DIR);
        let entries = match std::fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e).with_context(|| format!("reading {}", dir.display())),
        };
        let mut files = Vec::new();
        for e in entries {
            let e = e.with_context(|| format!("reading {}", dir.display()))?;
            let name = e.file_name().to_string_lossy().into_owned();
            let meta = e.path().symlink_metadata()?;
            if meta.file_type().is_symlink() {
                let target = std::fs::read_link(e.path())?;
                let target = target.to_string_lossy().into_owned();
                // A library's version links (libfoo.so -> libfoo.so.1) stay inside the folder.
                if target.contains('/') || !dir.join(&target).is_file() {
                    bail!(
                        "{}: the link {name} points at {target}, not at a file beside it: copy \
                         the file itself into {}",
                        dir.display(),
                        dir.display()
                    );
                }
                files.push((name, Some(target)));
            } else if meta.is_file() {
                files.push((name, None));
            } else {
                bail!(
                    "{}: {name} is not a file: {JETPACK_ORT_DIR} holds libraries only",
                    dir.display()
                );
            }
        }
        files.sort();
        let libs: Vec<&String> = files
            .iter()
            .filter(|(n, t)| t.is_none() && ort_minor(n).is_some())
            .map(|(n, _)| n)
            .collect();
        let library = match libs.as_slice() {
            [one] => (*one).clone(),
            [] => bail!(
                "{} holds no libonnxruntime.so.1.N.M (N at least {OLDEST_ORT_MINOR}): copy \
                 JetPack's GPU build of ONNX Runtime there, or remove the folder to build \
                 with the CPU library",
                dir.display()
            ),
            more => bail!(
                "{} holds more than one ONNX Runtime ({}): keep one",
                dir.display(),
                more.iter()
                    .map(|s| s.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        };
        if ort_minor(&library).is_some_and(|m| m < OLDEST_ORT_MINOR) {
            bail!(
                "{}/{library} is older than ONNX Runtime 1.{OLDEST_ORT_MINOR}, the oldest the \
                 runtime loads: take a newer JetPack build",
                dir.display()
            );
        }
        let has = |n: &str| files.iter().any(|(f, _)| f == n);
        let providers: Vec<&'static str> = [
            ("tensorrt", "libonnxruntime_providers_tensorrt.so"),
            ("cuda", "libonnxruntime_providers_cuda.so"),
        ]
        .into_iter()
        .filter(|(_, f)| has(f))
        .map(|(p, _)| p)
        .collect();
        if providers.is_empty() || !has("libonnxruntime_providers_shared.so") {
            bail!(
                "{} is not a GPU build of ONNX Runtime: it needs \
                 libonnxruntime_providers_shared.so and libonnxruntime_providers_cuda.so or \
                 libonnxruntime_providers_tensorrt.so beside {library}",
                dir.display()
            );
        }
        Ok(Some(GpuRuntime {
            dir,
            library,
            providers,
            files,
        }))
    }

    /// Copy the folder into [`IMAGE_GPU_DIR`] and put it on the unit's library path.
    fn install(&self, layer: &Layer<'_>) -> Result<()> {
        for (name, target) in &self.files {
            let dest = Path::new(IMAGE_GPU_DIR).join(name);
            match target {
                Some(t) => layer.symlink(&dest, t)?,
                None => layer.copy_file(&dest, &self.dir.join(name), 0o644, 0, 0)?,
            }
        }
        layer.write(
            Path::new(GPU_DROP_IN),
            format!(
                "# JetPack's GPU build of ONNX Runtime and the CUDA, cuDNN and TensorRT libraries \
                 its providers load.\n# TensorRT builds the model's engine before READY=1 on \
                 the first start (minutes on a module),\n# then loads it from the cache \
                 directory: systemd's default 90 s would kill that start.\n[Service]\n\
                 Environment=LD_LIBRARY_PATH=/{IMAGE_GPU_DIR}\nTimeoutStartSec=20min\n"
            )
            .as_bytes(),
            0o644,
        )
    }
}

/// `N` of `libonnxruntime.so.1.N.M`.
fn ort_minor(name: &str) -> Option<u32> {
    let v = name.strip_prefix("libonnxruntime.so.1.")?;
    let (minor, patch) = v.split_once('.')?;
    patch.parse::<u32>().ok()?;
    minor.parse().ok()
}

/// Install the model, the library and the config; returns a note for the build log. `gpu`:
/// JetPack's GPU build of ONNX Runtime from the BSP tree, which replaces the CPU library.
pub fn install(
    layer: &Layer<'_>,
    recipe: &Recipe,
    gpu: Option<&GpuRuntime>,
) -> Result<Option<String>> {
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
    let gid = add_system_group(layer, rel::RUNTIME_SOCKET_GROUP)?;
    let (library_path, onnxruntime) = match gpu {
        Some(g) => {
            g.install(layer)?;
            (
                Path::new(IMAGE_GPU_DIR).join(&g.library),
                format!(
                    "JetPack's GPU build {} ({}) from {}",
                    g.library,
                    g.providers.join(", "),
                    g.dir.display()
                ),
            )
        }
        None => {
            let lib = library(recipe.base.architecture)?;
            layer.copy_file(Path::new(IMAGE_LIBRARY), &lib, 0o644, 0, 0)?;
            let cpu = format!("ONNX Runtime {ONNXRUNTIME_VERSION} (CPU)");
            let why = if recipe.board.is_jetson() {
                format!(
                    "{cpu}: no {JETPACK_ORT_DIR} in the BSP tree, so the runtime falls back \
                     to the CPU loudly"
                )
            } else {
                cpu
            };
            (PathBuf::from(IMAGE_LIBRARY), why)
        }
    };
    layer.write(
        Path::new(IMAGE_CONFIG),
        config_text(recipe, &dest.join("manifest.toml"), &library_path).as_bytes(),
        0o644,
    )?;
    Ok(Some(format!(
        "runtime: model {name} ({} MiB, sha256 {}…, {frames} golden frames), {onnxruntime}, \
         {} cameras from the recipe, detections for group {} ({gid})",
        model.len() >> 20,
        &manifest.model.sha256[..12],
        rt.cameras.len(),
        rel::RUNTIME_SOCKET_GROUP
    )))
}

/// Add the system group `name` to the image's `/etc/group` (and `/etc/gshadow`, locked) as
/// systemd-sysusers would at boot, which a read-only root cannot: the highest gid below 1000
/// that no group and no user's primary group has. Its gid; the group's own when it is there.
fn add_system_group(layer: &Layer<'_>, name: &str) -> Result<u32> {
    let read = |rel: &str| -> Result<Option<String>> {
        layer
            .read(Path::new(rel))?
            .map(|b| String::from_utf8(b).with_context(|| format!("/{rel} is not UTF-8")))
            .transpose()
    };
    let group = read("etc/group")?
        .context("the base tree has no /etc/group (Debian's base-passwd makes it)")?;
    let passwd = read("etc/passwd")?.unwrap_or_default();
    let (text, gid) = group_added(&group, &passwd, name)?;
    if text == group {
        return Ok(gid);
    }
    layer.write(Path::new("etc/group"), text.as_bytes(), 0o644)?;
    if let Some(gshadow) = read("etc/gshadow")? {
        let shadow_gid = group_id(&group, "shadow").unwrap_or(0);
        let mut g = gshadow;
        if !g.is_empty() && !g.ends_with('\n') {
            g.push('\n');
        }
        g += &format!("{name}:!*::\n");
        layer.write_owned(Path::new("etc/gshadow"), g.as_bytes(), 0o640, 0, shadow_gid)?;
    }
    Ok(gid)
}

fn group_id(group: &str, name: &str) -> Option<u32> {
    group.lines().find_map(|l| {
        let f: Vec<&str> = l.split(':').collect();
        (f.first() == Some(&name)).then(|| f.get(2)?.parse().ok())?
    })
}

/// `group` with `name` added (or as it was, when it has it), and the group's gid.
fn group_added(group: &str, passwd: &str, name: &str) -> Result<(String, u32)> {
    if let Some(gid) = group_id(group, name) {
        return Ok((group.to_string(), gid));
    }
    let taken: std::collections::BTreeSet<u32> = group
        .lines()
        .filter_map(|l| l.split(':').nth(2)?.parse().ok())
        .chain(
            passwd
                .lines()
                .filter_map(|l| l.split(':').nth(3)?.parse().ok()),
        )
        .collect();
    let gid = (100..1000)
        .rev()
        .find(|g| !taken.contains(g))
        .with_context(|| format!("no free system gid (100-999) in /etc/group for {name}"))?;
    let mut text = group.to_string();
    if !text.is_empty() && !text.ends_with('\n') {
        text.push('\n');
    }
    text += &format!("{name}:x:{gid}:\n");
    Ok((text, gid))
}

/// A TOML basic string.
fn quoted(s: &str) -> String {
    toml::Value::String(s.to_string()).to_string()
}

/// `/etc/aperture/runtime.toml` (the format of `aperture_runtime::config`).
fn config_text(recipe: &Recipe, manifest: &Path, library: &Path) -> String {
    let mut t = String::from(
        "# Generated by Aperture from the recipe's [runtime] section. Cameras in\n\
         # /config/runtime/cameras.toml (on the encrypted config partition) replace the ones below.\n",
    );
    t += &format!("model = {}\n", quoted(&format!("/{}", manifest.display())));
    t += &format!(
        "onnxruntime = {}\n",
        quoted(&format!("/{}", library.display()))
    );
    t += &format!(
        "socket = {}\n",
        quoted(&format!("/{}", rel::RUNTIME_SOCKET))
    );
    // Members of this group (an application's unit: SupplementaryGroups=) may read detections.
    t += &format!("socket_group = {}\n", quoted(rel::RUNTIME_SOCKET_GROUP));
    t += "output_dir = \"/var/lib/aperture-runtime/detections\"\n";
    t += &format!(
        "metrics = {}\n",
        quoted(&format!("/{}", rel::RUNTIME_METRICS))
    );
    t += &format!("cameras_file = {}\n", quoted(CAMERAS_FILE));
    // Signed model bundles (`aperture-runtime model install`), on the data partition.
    t += &format!("models_dir = {}\n", quoted(MODEL_STORE));
    if recipe.board.is_jetson() {
        // The GPU first, through the ONNX Runtime the library provides (JetPack's GPU build when
        // the BSP tree has one); with the CPU build of the official wheel the runtime says so
        // and runs on the CPU.
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

    /// A BSP tree whose JetPack folder holds `files` (a name ending in `-> T` is a link to T).
    fn jetpack(files: &[&str]) -> tempfile::TempDir {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join(JETPACK_ORT_DIR);
        std::fs::create_dir_all(&dir).unwrap();
        for f in files {
            match f.split_once(" -> ") {
                Some((name, target)) => std::os::unix::fs::symlink(target, dir.join(name)).unwrap(),
                None => std::fs::write(dir.join(f), f.as_bytes()).unwrap(),
            }
        }
        root
    }

    #[test]
    fn a_jetpack_gpu_build_in_the_bsp_tree_is_found_with_its_providers_and_links() {
        let none = tempfile::tempdir().unwrap();
        assert_eq!(GpuRuntime::find(none.path()).unwrap(), None);
        let tree = jetpack(&[
            "libonnxruntime.so.1.23.0",
            "libonnxruntime.so.1 -> libonnxruntime.so.1.23.0",
            "libonnxruntime_providers_shared.so",
            "libonnxruntime_providers_cuda.so",
            "libonnxruntime_providers_tensorrt.so",
            "libcudart.so.12",
        ]);
        let g = GpuRuntime::find(tree.path()).unwrap().unwrap();
        assert_eq!(g.library, "libonnxruntime.so.1.23.0");
        assert_eq!(g.providers, ["tensorrt", "cuda"]);
        assert_eq!(g.files.len(), 6);
        assert!(g.files.contains(&(
            "libonnxruntime.so.1".into(),
            Some("libonnxruntime.so.1.23.0".into())
        )));
        let orin = Recipe::load(
            &Path::new(env!("CARGO_MANIFEST_DIR")).join("../../recipes/jetson-orin-agx.toml"),
        )
        .unwrap();
        let t = config_text(
            &orin,
            Path::new("usr/share/aperture/models/nanodet-m/manifest.toml"),
            &Path::new(IMAGE_GPU_DIR).join(&g.library),
        );
        assert!(
            t.contains("onnxruntime = \"/usr/lib/aperture/onnxruntime/libonnxruntime.so.1.23.0\""),
            "{t}"
        );
    }

    #[test]
    fn a_jetpack_folder_that_is_no_usable_gpu_build_is_refused_by_name() {
        let cases: [(&[&str], &str); 6] = [
            (&["libcudart.so.12"], "holds no libonnxruntime.so.1.N.M"),
            (
                &[
                    "libonnxruntime.so.1.20.0",
                    "libonnxruntime_providers_shared.so",
                    "libonnxruntime_providers_cuda.so",
                ],
                "older than ONNX Runtime 1.22",
            ),
            (
                &["libonnxruntime.so.1.23.0", "libonnxruntime.so.1.24.0"],
                "more than one ONNX Runtime",
            ),
            (
                &[
                    "libonnxruntime.so.1.23.0",
                    "libonnxruntime_providers_shared.so",
                ],
                "is not a GPU build",
            ),
            (
                &[
                    "libonnxruntime.so.1.23.0",
                    "libonnxruntime_providers_cuda.so",
                ],
                "is not a GPU build",
            ),
            (
                &[
                    "libonnxruntime.so.1.23.0",
                    "libcuda.so -> /usr/lib/libcuda.so.1",
                ],
                "not at a file beside it",
            ),
        ];
        for (files, want) in cases {
            let tree = jetpack(files);
            let e = format!("{:#}", GpuRuntime::find(tree.path()).unwrap_err());
            assert!(
                e.contains(want) && e.contains(JETPACK_ORT_DIR),
                "{files:?}: {e}"
            );
        }
    }

    #[test]
    fn the_detections_group_takes_the_highest_free_system_gid_once() {
        let group = "root:x:0:\nshadow:x:42:\nsystemd-journal:x:999:\nnogroup:x:65534:\n";
        // A user whose primary group is 998 with no group line of its own.
        let passwd = "root:x:0:0::/root:/bin/sh\nsvc:x:997:998::/:/usr/sbin/nologin\n";
        let (text, gid) = group_added(group, passwd, "aperture-detections").unwrap();
        assert_eq!(gid, 997);
        assert!(text.starts_with(group) && text.ends_with("aperture-detections:x:997:\n"));
        assert_eq!(
            group_added(&text, passwd, "aperture-detections").unwrap(),
            (text.clone(), 997)
        );
        assert_eq!(group_id(&text, "shadow"), Some(42));
        let full: String = (100..1000).map(|g| format!("g{g}:x:{g}:\n")).collect();
        let e = group_added(&full, "", "aperture-detections").unwrap_err();
        assert!(e.to_string().contains("no free system gid"), "{e}");
    }

    #[test]
    fn jetsons_ask_for_the_gpu_first_and_every_board_names_its_stores() {
        let recipes = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../recipes");
        let m = Path::new("usr/share/aperture/models/nanodet-m/manifest.toml");
        let orin = Recipe::load(&recipes.join("jetson-orin-agx.toml")).unwrap();
        let t = config_text(&orin, m, Path::new(IMAGE_LIBRARY));
        assert!(
            t.contains("execution_providers = [\"tensorrt\", \"cuda\"]"),
            "{t}"
        );
        assert!(
            t.contains("engine_cache_dir = \"/var/cache/aperture-runtime/"),
            "{t}"
        );
        let x86 = Recipe::load(&recipes.join("qemu-x86_64.toml")).unwrap();
        let t = config_text(&x86, m, Path::new(IMAGE_LIBRARY));
        assert!(!t.contains("execution_providers"), "{t}");
        for key in [
            "model = \"/usr/share/aperture/models/nanodet-m/manifest.toml\"",
            "socket = \"/run/aperture-runtime/detections.sock\"",
            "socket_group = \"aperture-detections\"",
            "metrics = \"/run/aperture-runtime/runtime.json\"",
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
