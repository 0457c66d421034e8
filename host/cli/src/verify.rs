//! `verify`: a build folder's signature, key chain, artifacts and verity roots.

use crate::args::VerifyArgs;
use anyhow::{bail, Result};
use aperture_image::verify;

/// Run `verify`.
pub fn run(a: &VerifyArgs) -> Result<()> {
    let report = verify::verify(&a.dir, a.root_key.as_deref(), aperture_trust::now_unix())?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        eprintln!(
            "trusting root key {} from {}",
            report.root_key_id,
            report.root_key_path.display()
        );
        for c in &report.checks {
            eprintln!(
                "  {} {}: {}",
                if c.ok { "ok  " } else { "FAIL" },
                c.what,
                c.detail
            );
        }
    }
    match report.first_failure() {
        None => {
            eprintln!("{}: verified", a.dir.display());
            Ok(())
        }
        Some(f) => bail!(
            "{} failed verification at {}: {}",
            a.dir.display(),
            f.what,
            f.detail
        ),
    }
}
