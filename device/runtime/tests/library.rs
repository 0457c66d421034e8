//! Tier 1: a missing or broken ONNX Runtime library is an error naming the file and the fix. A
//! test binary of its own: ONNX Runtime is loaded once per process, and no test here loads the
//! real one.

use std::path::Path;

use aperture_runtime::{Error, OnnxRuntime};

#[test]
fn a_missing_library_names_the_path_and_the_fix() {
    let path = Path::new("/nonexistent/aperture/libonnxruntime.so.1.31.1");
    let e = OnnxRuntime::load(path).unwrap_err();
    assert!(matches!(e, Error::LibraryMissing { .. }), "{e:?}");
    let e = e.to_string();
    assert!(e.contains(&path.display().to_string()), "{e}");
    assert!(
        e.contains("does not exist") && e.contains("onnxruntime 1.31.1 wheel"),
        "{e}"
    );
    eprintln!("{e}");
}

#[test]
fn a_file_that_is_not_a_library_is_refused_with_its_path() {
    let dir = tempfile::tempdir().unwrap();
    let fake = dir.path().join("libonnxruntime.so.1.31.1");
    std::fs::write(&fake, b"not an ELF file").unwrap();
    let e = OnnxRuntime::load(&fake).unwrap_err();
    let s = e.to_string();
    assert!(matches!(e, Error::Library { .. }), "{s}");
    assert!(s.contains(&fake.display().to_string()), "{s}");
    eprintln!("{s}");
}
