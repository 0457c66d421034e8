//! Model bundles on the build host: a model folder (`manifest.toml`, the model file it names,
//! `golden/`) signed with a keys folder's release key, written as a model bundle
//! ([`aperture_trust::model`]), then read back and verified against the keys' root key.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use aperture_trust::manifest::ArtifactName;
use aperture_trust::model::{
    sign_model_manifest, write_model_bundle, ModelBundleReader, ModelManifest, ModelPath,
};

use crate::keys::BuildKeys;

/// What [`make_model_bundle`] made.
#[derive(Debug)]
pub struct ModelBundleReport {
    /// The bundle.
    pub path: PathBuf,
    /// The model's name.
    pub name: String,
    /// sha256 of its canonical model.json: its folder name in the appliance's model store.
    pub digest: String,
    /// Files in it.
    pub files: usize,
    /// Its size in bytes.
    pub size: u64,
}

/// The files of a model folder that go into its bundle: `manifest.toml`, the model file it
/// names, and every file in `golden/` (the self-test's inputs and reference), sorted. Anything
/// else in `golden/` that is not a regular file is refused.
pub fn model_files(dir: &Path) -> Result<Vec<ModelPath>> {
    let manifest_path = dir.join("manifest.toml");
    let manifest = aperture_vision::Manifest::load(&manifest_path)?;
    // The model file must be the one its manifest pins: a bundle the appliance refuses is not made.
    manifest.read_model()?;
    let mut files = vec![
        ModelPath::new("manifest.toml")?,
        ModelPath::new(manifest.model.file.clone()).with_context(|| {
            format!(
                "{}: the model file {:?} must be a plain file name in the folder",
                manifest_path.display(),
                manifest.model.file
            )
        })?,
    ];
    let golden = dir.join("golden");
    if !golden.join("reference.json").is_file() {
        bail!(
            "{} has no golden/reference.json: the runtime's self-test needs the golden inputs and \
             their reference detections (see models/nanodet-m/golden)",
            dir.display()
        );
    }
    let mut names = Vec::new();
    for e in std::fs::read_dir(&golden).with_context(|| format!("listing {}", golden.display()))? {
        let e = e?;
        let kind = e.file_type()?;
        let name = e.file_name().to_string_lossy().into_owned();
        if !kind.is_file() {
            bail!(
                "{} is not a regular file: a model bundle holds only regular files; remove it or \
                 replace it with a copy",
                e.path().display()
            );
        }
        names.push(name);
    }
    names.sort();
    for n in names {
        files.push(
            ModelPath::new(format!("golden/{n}"))
                .with_context(|| format!("{}: rename it", golden.join(&n).display()))?,
        );
    }
    Ok(files)
}

/// Bundle the model folder `dir` as `version`, signed with `keys`, into `out`: written to a
/// temporary file, synced, read back (signature against the keys' root key, every file's
/// hash), then renamed into place. `created` is the signed time (`SOURCE_DATE_EPOCH`).
pub fn make_model_bundle(
    dir: &Path,
    keys: &BuildKeys,
    version: &semver::Version,
    created: u64,
    out: &Path,
) -> Result<ModelBundleReport> {
    let files = model_files(dir)?;
    let manifest = aperture_vision::Manifest::load(&dir.join("manifest.toml"))?;
    let name = ArtifactName::new(manifest.model.name.clone()).with_context(|| {
        format!(
            "{}: [model] name is used as the bundle's name",
            dir.join("manifest.toml").display()
        )
    })?;
    let m = ModelManifest::of_folder(dir, &files, name.clone(), version.clone(), created)?;
    let (mj, sj) = sign_model_manifest(&m, &keys.release, &keys.keyring)?;
    let tmp = out.with_extension("partial");
    let written = (|| -> Result<()> {
        let file =
            std::fs::File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
        let file = write_model_bundle(std::io::BufWriter::new(file), &mj, &sj, dir)?;
        file.into_inner()
            .map_err(|e| e.into_error())
            .and_then(|f| f.sync_all())
            .with_context(|| format!("writing {}", tmp.display()))?;
        // Read back: what the appliance will check, with the key it will check it against.
        let check = tempfile::tempdir_in(out.parent().unwrap_or(Path::new(".")))?;
        let mut r = ModelBundleReader::new(
            std::io::BufReader::new(std::fs::File::open(&tmp)?),
            &keys.root,
            aperture_trust::now_unix(),
        );
        r.read_header()?;
        r.unpack_into(check.path())?;
        Ok(())
    })();
    if let Err(e) = written {
        let _ = std::fs::remove_file(&tmp);
        return Err(e.context(format!("making the model bundle {}", out.display())));
    }
    std::fs::rename(&tmp, out).with_context(|| format!("renaming {} into place", tmp.display()))?;
    let v = aperture_trust::model::verify_model_manifest(&mj, &sj, &keys.root, 0)?;
    Ok(ModelBundleReport {
        path: out.to_path_buf(),
        name: name.to_string(),
        digest: v.digest().to_string(),
        files: files.len(),
        size: std::fs::metadata(out)?.len(),
    })
}
