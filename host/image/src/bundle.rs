//! Re-making `update.bundle` from a build folder (`cargo xtask bundle`): the folder is verified
//! first, each slot artifact is compressed again, and every payload must hash to what the signed
//! manifest records, so the bundle is the one the build would have written.
//!
//! `cargo xtask bundle --from OLD` makes a delta bundle instead ([`make_delta_bundle`]): the
//! same release with its rootfs sent as the changes from an older build's, signed again (the
//! payload list is part of the signed manifest), for appliances that run that older build.

use std::fs::File;
use std::io::{BufReader, BufWriter, Write};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use aperture_trust::bundle::{self, BundleReader, PayloadSource};
use aperture_trust::delta::FileBase;
use aperture_trust::keys::PublicKey;
use aperture_trust::manifest::{Artifact, DeltaBase, Manifest, Payload, PayloadEncoding, Role};
use aperture_trust::signing;

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

/// Verifies the build folder `dir` against `root_key` (default: its `root.pub`), or fails
/// naming the first check that did not pass.
fn verified(dir: &Path, root_key: Option<&Path>, now: u64) -> Result<verify::Report> {
    let report = verify::verify(dir, root_key, now)?;
    if let Some(f) = report.first_failure() {
        bail!(
            "{} does not verify ({}: {}); pass the root key it was signed for with --root-key, or rebuild it with `cargo xtask build`",
            dir.display(),
            f.what,
            f.detail
        );
    }
    Ok(report)
}

/// A work folder beside `out` (so the finished bundle is renamed into place).
fn work_beside(out: &Path) -> Result<tempfile::TempDir> {
    let parent = match out.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    std::fs::create_dir_all(&parent)?;
    tempfile::Builder::new()
        .prefix(".aperture-bundle-")
        .tempdir_in(&parent)
        .with_context(|| format!("making a work folder in {}", parent.display()))
}

/// Compresses `a` of the build folder `dir` into `work/<name>.zst` at `level`; it must be the
/// payload the signed manifest records.
fn remake_payload(dir: &Path, work: &Path, a: &Artifact, level: i32) -> Result<()> {
    let want = a
        .payload
        .as_ref()
        .context("a payload artifact has a payload")?;
    let src = dir.join(a.name.as_str());
    let zst = work.join(format!("{}.zst", a.name.as_str()));
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
    Ok(())
}

/// The zstd level of delta payloads: the highest an appliance decodes (the delta is made once
/// per pair of releases and fetched by every appliance of the fleet).
pub const DELTA_LEVEL: i32 = 19;

/// What [`make_delta_bundle`] wrote.
#[derive(Debug)]
pub struct DeltaReport {
    /// The bundle file.
    pub path: PathBuf,
    /// Its size in bytes.
    pub size: u64,
    /// The full bundle's size, for comparison (0 when the folder has none).
    pub full_size: u64,
    /// The release it updates from.
    pub from: semver::Version,
    /// The release it installs.
    pub to: semver::Version,
    /// What each delta payload holds, by artifact (the rootfs first).
    pub deltas: Vec<(String, aperture_trust::delta::DeltaStats)>,
}

/// The file name of the delta bundle from `from` beside a build's full bundle.
pub fn delta_bundle_name(from: &semver::Version) -> String {
    format!("update-from-{from}.bundle")
}

/// Writes the delta bundle that updates an appliance running the build `old` to the build
/// `new`, signed with `keys` (which must be under the root `new` trusts), to `out` (default:
/// `new/update-from-<old version>.bundle`), atomically. See [`make_delta_bundle_from`].
pub fn make_delta_bundle(
    new: &Path,
    old: &Path,
    out: Option<&Path>,
    keys: &crate::keys::BuildKeys,
) -> Result<DeltaReport> {
    verified(old, None, aperture_trust::now_unix())?;
    let p = old.join(names::MANIFEST);
    let bytes = std::fs::read(&p).with_context(|| format!("reading {}", p.display()))?;
    let base = Manifest::from_json_unverified(&bytes)?;
    make_delta_bundle_from(new, &base, old, out, keys)
}

/// Writes the slot files of the full bundle `bundle` into `dir` (`rootfs.img`, `vmlinuz`,
/// ...), each checked against its manifest signed under `root`, and returns that manifest: an
/// older release as a repository keeps it, ready to be the base of a delta.
pub fn extract_bundle(bundle: &Path, root: &PublicKey, dir: &Path) -> Result<Manifest> {
    let file = File::open(bundle).with_context(|| format!("opening {}", bundle.display()))?;
    let mut reader = BundleReader::new(BufReader::new(file), root, aperture_trust::now_unix());
    let verified = reader
        .read_header()
        .with_context(|| format!("reading {}", bundle.display()))?;
    let manifest = verified.manifest().clone();
    reader
        .for_each_payload(|a: &Artifact, r: &mut dyn std::io::Read| {
            let path = dir.join(a.name.as_str());
            let mut out = BufWriter::new(
                File::create(&path).with_context(|| format!("creating {}", path.display()))?,
            );
            std::io::copy(r, &mut out)
                .with_context(|| format!("extracting {} from {}", a.name, bundle.display()))?;
            out.flush()?;
            Ok::<(), anyhow::Error>(())
        })
        .with_context(|| format!("extracting {}", bundle.display()))?;
    Ok(manifest)
}

/// The manifest of the bundle at `bundle`, its signature checked against `root`; no payload
/// is read.
pub fn bundle_manifest(bundle: &Path, root: &PublicKey) -> Result<Manifest> {
    let file = File::open(bundle).with_context(|| format!("opening {}", bundle.display()))?;
    let mut reader = BundleReader::new(BufReader::new(file), root, aperture_trust::now_unix());
    let verified = reader
        .read_header()
        .with_context(|| format!("reading {}", bundle.display()))?;
    Ok(verified.manifest().clone())
}

/// Writes the delta bundle from the release `base` (its slot files in `old`) to the build
/// `new`. The rootfs travels as a delta from `old`'s (and, where the appliance keeps them as
/// files, the kernel and initrd too); the other payloads as in the full bundle. The bundle is
/// read back with `old`'s files as the base before it is moved into place, so it is known to
/// rebuild `new`'s files byte for byte.
pub fn make_delta_bundle_from(
    new: &Path,
    base: &Manifest,
    old: &Path,
    out: Option<&Path>,
    keys: &crate::keys::BuildKeys,
) -> Result<DeltaReport> {
    let now = aperture_trust::now_unix();
    let report = verified(new, None, now)?;
    let root = PublicKey::load(&report.root_key_path)?;
    if keys.root != root {
        bail!(
            "the keys in {} are under root key {}, but {} trusts {}: appliances would refuse \
             the bundle; pass the keys folder that signed {} with --keys",
            keys.dir.display(),
            keys.root.key_id(),
            new.display(),
            root.key_id(),
            new.display()
        );
    }
    let p = new.join(names::MANIFEST);
    let bytes = std::fs::read(&p).with_context(|| format!("reading {}", p.display()))?;
    let mut manifest = Manifest::from_json_unverified(&bytes)?;
    let base = base.clone();
    if (&manifest.product, &manifest.board) != (&base.product, &base.board) {
        bail!(
            "{} is {} for {} but {} is {} for {}: a delta updates one product on one board",
            new.display(),
            manifest.product,
            manifest.board,
            old.display(),
            base.product,
            base.board
        );
    }
    if base.version >= manifest.version {
        bail!(
            "{} is version {}, not older than {} ({}): appliances refuse to go back, so a \
             delta from it would never be installed; swap --image and --from",
            old.display(),
            base.version,
            new.display(),
            manifest.version
        );
    }
    let rootfs_of = |m: &Manifest| -> Result<Artifact> {
        m.artifacts
            .iter()
            .find(|a| a.role == Role::Rootfs && a.payload.is_some())
            .cloned()
            .with_context(|| {
                format!(
                    "the manifest of {} {} has no rootfs payload",
                    m.product, m.version
                )
            })
    };
    rootfs_of(&manifest)?;
    let from = rootfs_of(&base)?;
    let from_verity = from
        .verity
        .as_ref()
        .context("the base rootfs has no verity parameters")?;

    let out = out
        .map(Path::to_path_buf)
        .unwrap_or_else(|| new.join(delta_bundle_name(&base.version)));
    let work = work_beside(&out)?;
    // Deltas: the rootfs always; the UKIs where the appliance keeps them as files it can read
    // back (the ESP of qemu boards; a Jetson's boot image partition is written whole). A
    // slot's UKI is rebuilt from the one the appliance runs, which is the other slot's: so
    // `uki-b.efi` is a delta from the base release's `uki-a.efi` (for appliances running A),
    // and `uki-a.efi` one from its `uki-b.efi` (for those running B).
    let board: aperture_appliance::Board = manifest
        .board
        .parse()
        .map_err(|e| anyhow::anyhow!("board {}: {e}", manifest.board))?;
    let file_roles: &[Role] = match board.slot_layout() {
        aperture_slots::SlotLayout::Esp => &[Role::Rootfs, Role::Uki],
        aperture_slots::SlotLayout::Tegra(_) => &[Role::Rootfs],
    };
    let mut deltas: Vec<(
        String,
        PathBuf,
        aperture_trust::delta::DeltaStats,
        DeltaBase,
    )> = Vec::new();
    let level = bundle_level(new);
    for a in manifest.payload_artifacts() {
        let base_name = match (
            a.role,
            aperture_appliance::Slot::of_uki_artifact(a.name.as_str()),
        ) {
            (Role::Uki, Some(slot)) => slot.other().uki_artifact(),
            _ => a.name.to_string(),
        };
        let from = base
            .payload_artifacts()
            .find(|b| b.role == a.role && b.name.as_str() == base_name)
            .filter(|_| file_roles.contains(&a.role));
        let Some(from) = from else {
            remake_payload(new, work.path(), a, level)?;
            continue;
        };
        let path = work.path().join(format!("{}.delta", a.name.as_str()));
        let stats = aperture_trust::delta::encode_file_with(
            &old.join(from.name.as_str()),
            &new.join(a.name.as_str()),
            &path,
            DELTA_LEVEL,
            a.verity.as_ref(),
        )?;
        deltas.push((
            a.name.to_string(),
            path,
            stats,
            DeltaBase {
                version: base.version.clone(),
                size: from.size,
                sha256: from.sha256.clone(),
                root_hash: from_verity.root_hash.clone(),
            },
        ));
    }
    for a in manifest.artifacts.iter_mut() {
        if let Some((_, _, stats, delta_base)) = deltas.iter().find(|(n, ..)| n == a.name.as_str())
        {
            a.payload = Some(Payload {
                encoding: PayloadEncoding::Delta,
                size: stats.encoded_size,
                sha256: stats.encoded_sha256.clone(),
                base: Some(delta_base.clone()),
            });
        }
    }
    let (manifest_json, sig_json) =
        signing::sign_manifest(&manifest, &keys.release, &keys.keyring)?;
    let tmp = work.path().join("delta.bundle");
    write_bundle_file(&tmp, &manifest_json, &sig_json, |name| {
        match deltas.iter().find(|(n, ..)| n == name) {
            Some((_, path, ..)) => path.clone(),
            None => work.path().join(format!("{name}.zst")),
        }
    })?;

    // Read it back as an appliance running `old` would, before it replaces anything.
    let mut reader = BundleReader::new(BufReader::new(File::open(&tmp)?), &root, now);
    reader.read_header()?;
    for (name, _, _, delta_base) in &deltas {
        // A UKI's base is the other slot's (see above).
        let path = match aperture_appliance::Slot::of_uki_artifact(name) {
            Some(slot) => old.join(slot.other().uki_artifact()),
            None => old.join(name),
        };
        reader.set_delta_base(
            name,
            Box::new(FileBase::open(&path)?),
            delta_base.size,
            delta_base.sha256.clone(),
        );
    }
    reader.verify_payloads().with_context(|| {
        format!(
            "reading back the new delta bundle {} with {}'s files as its base",
            tmp.display(),
            old.display()
        )
    })?;
    std::fs::rename(&tmp, &out)
        .with_context(|| format!("moving the bundle to {}", out.display()))?;
    Ok(DeltaReport {
        size: std::fs::metadata(&out)?.len(),
        full_size: std::fs::metadata(new.join(names::BUNDLE)).map_or(0, |m| m.len()),
        path: out,
        from: base.version,
        to: manifest.version,
        deltas: deltas
            .into_iter()
            .map(|(name, _, stats, _)| (name, stats))
            .collect(),
    })
}

/// Verify the build folder `dir` against `root_key` (default: its `root.pub`) and write its
/// update bundle to `out` (default: `dir/update.bundle`), atomically.
pub fn make_bundle(
    dir: &Path,
    out: Option<&Path>,
    root_key: Option<&Path>,
) -> Result<BundleReport> {
    let now = aperture_trust::now_unix();
    let report = verified(dir, root_key, now)?;
    let manifest_json = std::fs::read(dir.join(names::MANIFEST))
        .with_context(|| format!("reading {}", dir.join(names::MANIFEST).display()))?;
    let sig_json = std::fs::read(dir.join(names::SIGNATURE))
        .with_context(|| format!("reading {}", dir.join(names::SIGNATURE).display()))?;
    let manifest = Manifest::from_json_unverified(&manifest_json)?;

    let out = out
        .map(Path::to_path_buf)
        .unwrap_or_else(|| dir.join(names::BUNDLE));
    let work = work_beside(&out)?;
    let level = bundle_level(dir);
    let mut payloads = 0;
    for a in manifest.payload_artifacts() {
        remake_payload(dir, work.path(), a, level)?;
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
