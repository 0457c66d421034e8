//! What the runtime's tests share: the committed model, and the pinned ONNX Runtime library.

use std::path::{Path, PathBuf};

/// The committed NanoDet-m manifest.
pub fn manifest_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../models/nanodet-m/manifest.toml")
}

/// The pinned ONNX Runtime library, from `APERTURE_ONNXRUNTIME` (`cargo xtask test` sets it,
/// and as root its preflight installs the library there first). When it is absent: a failure
/// under `APERTURE_REQUIRE_TOOLS=1`, else `None` after printing `SKIPPED`.
pub fn library(test: &str) -> Option<PathBuf> {
    let why = match std::env::var_os("APERTURE_ONNXRUNTIME") {
        Some(p) if Path::new(&p).is_file() => return Some(PathBuf::from(p)),
        Some(p) => format!(
            "{test}: the ONNX Runtime library {} (APERTURE_ONNXRUNTIME) does not exist; \
             `cargo xtask test` installs libonnxruntime.so.1.31.1 there as root",
            Path::new(&p).display()
        ),
        None => format!(
            "{test}: APERTURE_ONNXRUNTIME does not name the ONNX Runtime library \
             (libonnxruntime.so.1.31.1); run the tests through `cargo xtask test`, which sets it \
             and, as root, installs the pinned library"
        ),
    };
    if aperture_sys::tool::required() {
        panic!("APERTURE_REQUIRE_TOOLS=1 and a tool is missing: {why}");
    }
    eprintln!("SKIPPED: {why}");
    None
}
