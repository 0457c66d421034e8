//! `model bundle`: sign a model folder into a model bundle for `aperture-runtime model install`.

use anyhow::{Context, Result};
use aperture_image::keys;
use aperture_image::model_bundle::make_model_bundle;
use aperture_image::progress::Reporter;

use crate::args::{ModelBundleArgs, ModelCommand};

/// Run `model ...`.
pub fn run(c: &ModelCommand) -> Result<()> {
    match c {
        ModelCommand::Bundle(a) => bundle(a),
    }
}

/// The signed time: `SOURCE_DATE_EPOCH` when set (reproducible bundles), else now.
fn created() -> Result<u64> {
    match std::env::var("SOURCE_DATE_EPOCH") {
        Ok(s) => s
            .trim()
            .parse()
            .with_context(|| format!("SOURCE_DATE_EPOCH={s} is not a number of seconds")),
        Err(_) => Ok(aperture_trust::now_unix()),
    }
}

fn bundle(a: &ModelBundleArgs) -> Result<()> {
    let rep = Reporter::new(None)?;
    // Never made here: a model bundle is signed with the keys its appliances' images trust.
    let keys = keys::for_build(&a.keys, false, a.release, false, &rep)?;
    let r = make_model_bundle(&a.model, &keys, &a.version, created()?, &a.out)
        .with_context(|| format!("bundling the model folder {}", a.model.display()))?;
    eprintln!(
        "{}: model {} {}, {} files, {:.1} MiB, signed by release key {}, read back and verified",
        r.path.display(),
        r.name,
        a.version,
        r.files,
        r.size as f64 / (1u64 << 20) as f64,
        keys.release.key_id()
    );
    eprintln!("  its store folder on the appliance: {}", r.digest);
    eprintln!(
        "  install it on the appliance (as root): aperture-runtime model install {}",
        r.path.display()
    );
    println!("{}", r.path.display());
    Ok(())
}
