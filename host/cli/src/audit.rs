//! `audit`: a build folder's image judged offline against its security policy; the report on
//! stdout (text, or JSON with `--json`), exit status 1 naming every violation and its fix.

use crate::args::AuditArgs;
use anyhow::Result;
use aperture_image::audit;

/// Run `audit`.
pub fn run(a: &AuditArgs) -> Result<()> {
    // The policy the image carries (/etc/aperture/security.json), written by the build from
    // the recipe; the build's own audit step passes the recipe's instead.
    let report = audit::audit_build(&a.dir, None)?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", report.to_text());
    }
    let summary = report.summary();
    report.into_result()?;
    eprintln!("{}: audit {summary}", a.dir.display());
    Ok(())
}
