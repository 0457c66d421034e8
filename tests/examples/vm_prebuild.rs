//! Make the images the VM tier's CI suites boot, before they start: `cargo xtask test` runs
//! those suites side by side, each in its own network namespace, and builds them here first
//! (with the network the builds may need) so that no suite waits for another's build. The
//! suites then find the same builds and reuse them.

use std::time::Instant;

fn main() -> anyhow::Result<()> {
    let t = Instant::now();
    for report in aperture_tests::vm_tier_images()? {
        eprintln!("vm_prebuild: {} ready", report.paths.out.display());
    }
    eprintln!("vm_prebuild: every image ready in {:.0?}", t.elapsed());
    Ok(())
}
