//! Re-making `update.bundle` from a build folder (`cargo xtask bundle`): the folder is verified
//! first, each slot artifact is compressed again, and every payload must hash to what the signed
//! manifest records, so the bundle is the one the build would have written.

use std::fs::File;
use std::io::{BufReader, BufWriter, Write};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use aperture_trust::bundle::{self, BundleReader, PayloadSource};
use aperture_trust::keys::PublicKey;
use aperture_trust::manifest::Manifest;

use crate::outputs::names;
use crate::verify;

/// Write the bundle of `manifest_json` and `sig_json` to `dest` and sync it; each payload
/// artifact's encoded bytes are read from `payload(name)`. Callers that replace a file write
/// to a temporary name and rename.
pub(crate) fn write_bundle_file(
    dest: &Path,
    manifest_json: &[u8],
    sig_json: &[u8],
    payload: impl Fn(&str) -> PathBuf,
) -> Result<()> {
    let manifest = Manifest::from_json_unverified(manifest_json)?;
    let mut sources = Vec::new();
    for a in manifest.payload_artifacts() {
        let p = payload(a.name.as_str());
        let f = File::open(&p).with_context(|| format!("opening payload {}", p.display()))?;
        let size = f.metadata()?.len();
        sources.push(PayloadSource {
            name: a.name.clone(),
            size,
            reader: Box::new(BufReader::new(f)),
        });
    }
    let file = File::create(dest).with_context(|| format!("creating {}", dest.display()))?;
    let mut w = bundle::write_bundle(BufWriter::new(file), manifest_json, sig_json, sources)?;
    w.flush()?;
    w.into_inner().map_err(|e| e.into_error())?.sync_all()?;
    Ok(())
}

/// What `bundle` wrote.
#[derive(Debug)]
pub struct BundleReport {
    /// The bundle file.
    pub path: PathBuf,
    /// Its size in bytes.
    pub size: u64,
    /// Payloads in it.
    pub payloads: usize,
}

/// The zstd level the build of `dir` compressed its payloads at, from its `build-report.json`
/// (the recipe's `[outputs] bundle_level`); the default level for a folder without one. Only a
/// hint: every payload made at it must still hash to what the signed manifest records.
fn bundle_level(dir: &Path) -> i32 {
    std::fs::read(dir.join("build-report.json"))
        .ok()
        .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
        .and_then(|v| v.get("bundle_level")?.as_i64())
        .and_then(|l| i32::try_from(l).ok())
        .unwrap_or(crate::recipe::DEFAULT_BUNDLE_LEVEL)
}

/// Verify the build folder `dir` against `root_key` (default: its `root.pub`) and write its
/// update bundle to `out` (default: `dir/update.bundle`), atomically.
pub fn make_bundle(
    dir: &Path,
    out: Option<&Path>,
    root_key: Option<&Path>,
) -> Result<BundleReport> {
    let now = aperture_trust::now_unix();
    let report = verify::verify(dir, root_key, now)?;
    if let Some(f) = report.first_failure() {
        bail!(
            "{} does not verify ({}: {}); pass the root key it was signed for with --root-key, or rebuild it with `cargo xtask build`",
            dir.display(),
            f.what,
            f.detail
        );
    }
    let manifest_json = std::fs::read(dir.join(names::MANIFEST))
        .with_context(|| format!("reading {}", dir.join(names::MANIFEST).display()))?;
    let sig_json = std::fs::read(dir.join(names::SIGNATURE))
        .with_context(|| format!("reading {}", dir.join(names::SIGNATURE).display()))?;
    let manifest = Manifest::from_json_unverified(&manifest_json)?;

    let out = out
        .map(Path::to_path_buf)
        .unwrap_or_else(|| dir.join(names::BUNDLE));
    let parent = match out.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    std::fs::create_dir_all(&parent)?;
    let work = tempfile::Builder::new()
        .prefix(".aperture-bundle-")
        .tempdir_in(&parent)
        .with_context(|| format!("making a work folder in {}", parent.display()))?;

    let level = bundle_level(dir);
    let mut payloads = 0;
    for a in manifest.payload_artifacts() {
        let want = a.payload.as_ref().expect("payload_artifacts have payloads");
        let src = dir.join(a.name.as_str());
        let zst = work.path().join(format!("{}.zst", a.name.as_str()));
        let got = bundle::compress_payload(&src, &zst, level)?;
        if got.sha256 != want.sha256 || got.size != want.size {
            bail!(
                "payload {} compresses to {} bytes (sha256 {}) at zstd level {level}, but the \
                 manifest records {} bytes (sha256 {}): this zstd or level differs from the \
                 build's; rebuild the folder with `cargo xtask build` to get its bundle",
                a.name.as_str(),
                got.size,
                got.sha256,
                want.size,
                want.sha256
            );
        }
        payloads += 1;
    }

    let tmp = work.path().join(names::BUNDLE);
    write_bundle_file(&tmp, &manifest_json, &sig_json, |name| {
        work.path().join(format!("{name}.zst"))
    })?;

    // Read it back as an appliance would before it replaces anything.
    let root = PublicKey::load(&report.root_key_path)?;
    let mut reader = BundleReader::new(BufReader::new(File::open(&tmp)?), &root, now);
    reader.read_header()?;
    reader
        .verify_payloads()
        .with_context(|| format!("reading back the new bundle {}", tmp.display()))?;

    std::fs::rename(&tmp, &out)
        .with_context(|| format!("moving the bundle to {}", out.display()))?;
    let size = std::fs::metadata(&out)?.len();
    Ok(BundleReport {
        path: out,
        size,
        payloads,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bundle_level_is_the_one_the_build_report_records_else_the_default() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(
            bundle_level(dir.path()),
            crate::recipe::DEFAULT_BUNDLE_LEVEL
        );
        std::fs::write(
            dir.path().join("build-report.json"),
            r#"{"name": "x", "bundle_level": 19}"#,
        )
        .unwrap();
        assert_eq!(bundle_level(dir.path()), 19);
        // An older report without the field, or a broken one: the default (and the payload's
        // hash check then says whether it was right).
        std::fs::write(dir.path().join("build-report.json"), r#"{"name": "x"}"#).unwrap();
        assert_eq!(
            bundle_level(dir.path()),
            crate::recipe::DEFAULT_BUNDLE_LEVEL
        );
        std::fs::write(dir.path().join("build-report.json"), "{").unwrap();
        assert_eq!(
            bundle_level(dir.path()),
            crate::recipe::DEFAULT_BUNDLE_LEVEL
        );
    }
}
