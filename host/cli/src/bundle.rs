//! `bundle`: re-make a build folder's update bundle, verified, with the build's own payloads;
//! with `--from`, make the delta bundle from an older build.

use crate::args::BundleArgs;
use anyhow::Result;
use aperture_image::{bundle, keys, progress::Reporter};

const MIB: f64 = (1u64 << 20) as f64;

/// `n` bytes for people: bytes, KiB or MiB.
fn size(n: u64) -> String {
    match n {
        0..1024 => format!("{n} bytes"),
        1024..1_048_576 => format!("{:.1} KiB", n as f64 / 1024.0),
        _ => format!("{:.2} MiB", n as f64 / MIB),
    }
}

/// Run `bundle`.
pub fn run(a: &BundleArgs) -> Result<()> {
    if let Some(old) = &a.from {
        let rep = Reporter::new(None)?;
        // Never made here: a delta is signed with the keys its appliances' images trust.
        let keys = keys::for_build(&a.keys, false, a.release, a.insecure_dev_keys, &rep)?;
        let r = bundle::make_delta_bundle(&a.image, old, a.out.as_deref(), &keys)?;
        eprintln!(
            "{}: {} to {}, {} ({:.2}% of the full bundle's {}), read back with {}'s files as \
             its base and verified",
            r.path.display(),
            r.from,
            r.to,
            size(r.size),
            100.0 * r.size as f64 / r.full_size.max(1) as f64,
            size(r.full_size),
            old.display()
        );
        for (name, s) in &r.deltas {
            eprintln!(
                "  {name}: {} of delta; {} copied from the running slot, {} of changed blocks \
                 sent{}",
                size(s.encoded_size),
                size(s.copied_bytes),
                size(s.diff_bytes + s.literal_bytes),
                if s.rebuilt_bytes > 0 {
                    format!(
                        ", the {} verity tree rebuilt on the appliance",
                        size(s.rebuilt_bytes)
                    )
                } else {
                    String::new()
                }
            );
        }
        println!("{}", r.path.display());
        return Ok(());
    }
    let r = bundle::make_bundle(&a.image, a.out.as_deref(), a.root_key.as_deref())?;
    eprintln!(
        "{}: {} payloads, {:.1} MiB, signature and payloads read back and verified",
        r.path.display(),
        r.payloads,
        r.size as f64 / MIB
    );
    println!("{}", r.path.display());
    Ok(())
}
