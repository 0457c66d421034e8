//! Tier 1: execution providers. An appliance whose ONNX Runtime has no accelerator (this
//! machine's library is the CPU build of the official wheel, as on a Jetson whose BSP tree
//! brought none) still runs the model when TensorRT and CUDA are asked for: on the CPU, with
//! the fallback and its reason reported (the metrics' `fallback`), and with the same
//! detections, so its golden self-test passes. Without a request, no fallback is reported.

mod common;

use aperture_runtime::service;
use aperture_runtime::{OnnxRuntime, Options, OrtDetector, Provider};
use aperture_vision::Manifest;

#[test]
fn accelerators_that_are_missing_fall_back_to_the_cpu_loudly_and_detect_the_same() {
    let Some(lib) = common::library("accelerators_that_are_missing_fall_back_to_the_cpu") else {
        return;
    };
    let runtime = OnnxRuntime::load(&lib).unwrap();
    let path = common::manifest_path();
    let manifest = Manifest::load(&path).unwrap();

    let cache = tempfile::tempdir().unwrap();
    let asked = Options {
        providers: vec![Provider::Tensorrt, Provider::Cuda],
        engine_cache: Some(cache.path().to_path_buf()),
        ..Options::default()
    };
    let mut d = OrtDetector::new(runtime, &manifest, &asked).unwrap();
    assert_eq!(d.execution_provider(), "cpu");
    let why = d.fallback().expect("the fallback is reported");
    assert!(
        why.contains("tensorrt") && why.contains("cuda") && why.contains("running on the CPU"),
        "{why}"
    );
    assert!(why.contains(&lib.display().to_string()), "{why}");
    assert_eq!(service::self_test(&mut d, &path).unwrap(), 3);

    let plain = OrtDetector::new(runtime, &manifest, &Options::default()).unwrap();
    assert_eq!(plain.execution_provider(), "cpu");
    assert_eq!(plain.fallback(), None);
}
