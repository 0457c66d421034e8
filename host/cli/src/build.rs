//! `build`: a recipe in; a rootfs commit (and the signed outputs) out.

use crate::args::BuildArgs;
use anyhow::Result;
use aperture_image::pipeline::{self, BuildOptions};
use aperture_image::progress::Reporter;

/// Run `build`.
pub fn run(a: &BuildArgs) -> Result<()> {
    let workspace = crate::workspace();
    let recipe = if a.recipe.is_relative() && !a.recipe.exists() {
        workspace.join(&a.recipe)
    } else {
        a.recipe.clone()
    };
    let opts = BuildOptions {
        workspace,
        recipe,
        out: a.out.clone(),
        cache: a.cache.clone(),
        rootfs_only: a.rootfs_only,
        release: a.release,
        insecure_dev_keys: a.insecure_dev_keys,
        insecure_skip_audit: a.insecure_skip_audit,
        bsp: a.bsp.clone(),
    };
    let rep = Reporter::new(None)?;
    let started = std::time::Instant::now();
    let report = pipeline::build(&opts, &rep)?;
    rep.say(&format!(
        "==> built {} in {:.1}s",
        report.name,
        started.elapsed().as_secs_f64()
    ));
    rep.say(&format!(
        "    rootfs commit {} = {}",
        report.rootfs.ostree_ref, report.rootfs.commit
    ));
    rep.say(&format!("    output folder {}", report.paths.out.display()));
    if a.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        println!("{}", report.rootfs.commit);
    }
    Ok(())
}
