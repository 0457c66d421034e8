//! Make the Jetson twin's build that `full_twin_boot` boots, before its turn: `cargo xtask test --full`
//! starts this beside the other suites, because the twin's build (the arm64 Debian base, whose
//! packages install under emulation, and the aarch64 device programs) is the longest of the
//! run. The suite then finds the same build and reuses it; had this failed, the suite builds
//! again and fails on the build's own error.

use std::time::Instant;

fn main() -> anyhow::Result<()> {
    let t = Instant::now();
    let report = aperture_tests::twin::twin_image(
        aperture_tests::twin::FIRST_BUILD.0,
        aperture_tests::twin::FIRST_BUILD.1,
        "",
    )?;
    eprintln!(
        "twin_prebuild: {} ready in {:.0?}",
        report.paths.out.display(),
        t.elapsed()
    );
    Ok(())
}
