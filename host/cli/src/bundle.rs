//! `bundle`: re-make a build folder's update bundle, verified, with the build's own payloads.

use crate::args::BundleArgs;
use anyhow::Result;
use aperture_image::bundle;

/// Run `bundle`.
pub fn run(a: &BundleArgs) -> Result<()> {
    let r = bundle::make_bundle(&a.image, a.out.as_deref(), a.root_key.as_deref())?;
    eprintln!(
        "{}: {} payloads, {:.1} MiB, signature and payloads read back and verified",
        r.path.display(),
        r.payloads,
        r.size as f64 / (1u64 << 20) as f64
    );
    println!("{}", r.path.display());
    Ok(())
}
