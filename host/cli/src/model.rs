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
    let keys = keys::for_build(&a.keys, false, a.release, a.insecure_dev_keys, &rep)?;
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::{Path, PathBuf};

    fn nanodet() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../models/nanodet-m")
    }

    fn args(keys: &Path, out: &Path, release: bool) -> ModelBundleArgs {
        ModelBundleArgs {
            model: nanodet(),
            keys: keys.to_path_buf(),
            version: "1.0.0".parse().unwrap(),
            out: out.to_path_buf(),
            release,
            insecure_dev_keys: false,
        }
    }

    #[test]
    fn the_committed_model_bundles_and_release_bundles_refuse_development_keys() {
        let t = tempfile::tempdir().unwrap();
        let dev = t.path().join("dev-keys");
        keys::generate(&dev, 30, false, true).unwrap();
        let out = t.path().join("nanodet-m.bundle");
        bundle(&args(&dev, &out, false)).unwrap();
        let k = keys::load(&dev).unwrap();
        let mut r = aperture_trust::model::ModelBundleReader::new(
            std::fs::File::open(&out).unwrap(),
            &k.root,
            aperture_trust::now_unix(),
        );
        let v = r.read_header().unwrap();
        let m = v.manifest();
        assert_eq!(m.name.as_str(), "nanodet-m");
        let paths: Vec<&str> = m.files.iter().map(|f| f.path.as_str()).collect();
        assert_eq!(&paths[..2], ["manifest.toml", "nanodet-m.onnx"]);
        assert!(paths.contains(&"golden/reference.json"), "{paths:?}");
        assert!(!paths.contains(&"import.sh"), "{paths:?}");

        let e = bundle(&args(&dev, &t.path().join("release.bundle"), true)).unwrap_err();
        assert!(
            format!("{e:#}").contains("refusing to sign a release with the development keys"),
            "{e:#}"
        );
        assert!(!t.path().join("release.bundle").exists());
        // No keys: never made here.
        let e = bundle(&args(&t.path().join("none"), &out, false)).unwrap_err();
        assert!(format!("{e:#}").contains("keys generate"), "{e:#}");
    }

    #[test]
    fn a_folder_whose_model_file_differs_from_its_manifest_is_not_bundled() {
        let t = tempfile::tempdir().unwrap();
        let dir = t.path().join("m");
        std::fs::create_dir_all(dir.join("golden")).unwrap();
        std::fs::copy(nanodet().join("manifest.toml"), dir.join("manifest.toml")).unwrap();
        std::fs::write(dir.join("nanodet-m.onnx"), b"not the pinned model").unwrap();
        std::fs::write(dir.join("golden/reference.json"), "{}").unwrap();
        let keys_dir = t.path().join("keys");
        keys::generate(&keys_dir, 30, false, false).unwrap();
        let out = t.path().join("b");
        let mut a = args(&keys_dir, &out, true);
        a.model = dir;
        let e = bundle(&a).unwrap_err();
        assert!(format!("{e:#}").contains("pins"), "{e:#}");
        assert!(!out.exists());
    }
}
