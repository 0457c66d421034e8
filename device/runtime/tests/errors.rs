//! Tier 1: what a broken model installation says. A model that is not the one its manifest pins,
//! a manifest with an unknown key and a model without the manifest's outputs each give an error
//! that names the files and says what to do. (A missing library: tests/library.rs.)

mod common;

use aperture_runtime::{Error, OnnxRuntime, Options, OrtDetector};
use aperture_vision::manifest::ManifestError;
use aperture_vision::Manifest;

/// A copy of the committed model folder, its manifest edited by `edit`.
fn copy_with(edit: impl Fn(String) -> String) -> tempfile::TempDir {
    let src = common::manifest_path();
    let dir = tempfile::tempdir().unwrap();
    let text = std::fs::read_to_string(&src).unwrap();
    std::fs::write(dir.path().join("manifest.toml"), edit(text)).unwrap();
    std::fs::copy(
        src.parent().unwrap().join("nanodet-m.onnx"),
        dir.path().join("nanodet-m.onnx"),
    )
    .unwrap();
    dir
}

#[test]
fn a_model_that_is_not_the_pinned_one_is_refused_before_onnx_runtime_sees_it() {
    let Some(lib) = common::library("a_model_that_is_not_the_pinned_one_is_refused") else {
        return;
    };
    let runtime = OnnxRuntime::load(&lib).unwrap();
    let dir = copy_with(|t| {
        t.replace(
            "8b32f0d1544712fc6ad677a8e77dc3246416085c96dd937fbccddd0eda5c48cf",
            &"0".repeat(64),
        )
    });
    let manifest = Manifest::load(&dir.path().join("manifest.toml")).unwrap();
    let e = OrtDetector::new(runtime, &manifest, &Options::default()).unwrap_err();
    assert!(
        matches!(e, Error::Manifest(ManifestError::Sha256Mismatch { .. })),
        "{e:?}"
    );
    let e = e.to_string();
    assert!(
        e.contains(&dir.path().join("nanodet-m.onnx").display().to_string()),
        "{e}"
    );
    assert!(
        e.contains(&dir.path().join("manifest.toml").display().to_string()),
        "{e}"
    );
    assert!(
        e.contains("8b32f0d1544712fc6ad677a8e77dc3246416085c96dd937fbccddd0eda5c48cf"),
        "{e}"
    );
    assert!(e.contains("import.sh"), "{e}");

    // The same copy with the right pin loads: the error was the pin, nothing else.
    let good = copy_with(|t| t);
    let manifest = Manifest::load(&good.path().join("manifest.toml")).unwrap();
    OrtDetector::new(runtime, &manifest, &Options::default()).unwrap();
}

#[test]
fn a_manifest_with_an_unknown_key_is_refused_naming_the_key_and_the_file() {
    let dir = copy_with(|t| t.replace("[input]\n", "[input]\nmean_rgb = [0.0, 0.0, 0.0]\n"));
    let path = dir.path().join("manifest.toml");
    let e = Manifest::load(&path).unwrap_err();
    assert!(matches!(e, ManifestError::Parse { .. }), "{e:?}");
    let e = e.to_string();
    assert!(e.contains(&path.display().to_string()), "{e}");
    assert!(e.contains("unknown field `mean_rgb`"), "{e}");
    assert!(e.contains("remove or correct the key"), "{e}");
}

#[test]
fn a_model_whose_outputs_differ_from_its_manifest_is_refused() {
    let Some(lib) = common::library("a_model_whose_outputs_differ_from_its_manifest_is_refused")
    else {
        return;
    };
    let runtime = OnnxRuntime::load(&lib).unwrap();
    let dir = copy_with(|t| t.replace("boxes = \"Identity_5:0\"", "boxes = \"Identity_9:0\""));
    let manifest = Manifest::load(&dir.path().join("manifest.toml")).unwrap();
    let e = OrtDetector::new(runtime, &manifest, &Options::default())
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("no output \"Identity_9:0\"") && e.contains("manifest.toml"),
        "{e}"
    );
}
