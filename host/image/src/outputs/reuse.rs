//! Reusing the outputs of the last build: only when its inputs are the same (the fingerprint)
//! AND every output is still what that build recorded. `cargo xtask vm run`, a test or a person
//! may have written into `disk.img` since; such a folder would no longer pass `verify`, so it
//! is rebuilt, never reported as done (STYLE.md rule 22).
//!
//! The record (`.outputs-fingerprint`, JSON) holds the fingerprint and, for every output file,
//! its size, sha256 and the (inode, mtime) it had when recorded. A file whose size, inode and
//! mtime are unchanged is taken as unchanged; otherwise it is hashed again.

use std::os::unix::fs::MetadataExt;
use std::path::Path;

use anyhow::{Context, Result};
use aperture_trust::digest::{sha256_file, Sha256Hex};
use aperture_trust::manifest::{Manifest, Role};
use serde::{Deserialize, Serialize};
use sha2::Digest;

use super::{names, OutputsReport};
use crate::keys::BuildKeys;
use crate::pipeline::RootfsBuild;
use crate::slot::SlotImage;

/// Where the record of the last complete outputs stage is kept.
const RECORD: &str = ".outputs-fingerprint";

/// Bump when the outputs stage changes what it makes from the same inputs.
const OUTPUTS_FORMAT: u32 = 5;

/// Whether the last outputs can be reused.
pub enum Reuse {
    /// Yes: what they are.
    Yes(Box<OutputsReport>),
    /// No, and why (for the build log).
    No(String),
}

#[derive(Debug, Serialize, Deserialize)]
struct Record {
    fingerprint: String,
    files: Vec<FileRecord>,
    #[serde(default)]
    bsp: Option<super::BspUsed>,
}

#[derive(Debug, Serialize, Deserialize)]
struct FileRecord {
    name: String,
    size: u64,
    sha256: Sha256Hex,
    ino: u64,
    mtime_ns: i128,
}

/// The fingerprint of everything the outputs follow from. `bsp_contents` is what
/// [`bsp_contents`] says of the BSP: its path alone would let a folder changed in place, or
/// another tarball copied over the same name, reuse outputs made from the old one.
pub fn fingerprint(
    rootfs: &RootfsBuild,
    keys: &BuildKeys,
    bsp: Option<&Path>,
    bsp_contents: Option<&str>,
) -> Result<String> {
    let keyring = serde_json::to_vec(&keys.keyring)?;
    // The boot files are signed with the db key; its certificate names it.
    let db = std::fs::read(keys.secure_boot.db_cert()).unwrap_or_default();
    let doc = serde_json::json!({
        "format": OUTPUTS_FORMAT,
        "aperture": env!("CARGO_PKG_VERSION"),
        "commit": rootfs.commit,
        "recipe": rootfs.recipe_sha256,
        "source_date": rootfs.source_date_epoch,
        "root": keys.root.key_id().to_string(),
        "release": keys.release.key_id().to_string(),
        "keyring": hex::encode(sha2::Sha256::digest(&keyring)),
        "secure_boot_db": hex::encode(sha2::Sha256::digest(&db)),
        "bsp": bsp.map(|p| p.display().to_string()),
        "bsp_contents": bsp_contents,
    });
    Ok(hex::encode(sha2::Sha256::digest(
        doc.to_string().as_bytes(),
    )))
}

/// The BSP a Jetson build was given, by content: a tarball's sha256 (it is unpacked, once, by
/// that sha256), or for a folder the fingerprint of every file the build takes from it
/// ([`crate::jetson::Bsp::fingerprint`]). None for a board that takes nothing from a BSP.
pub fn bsp_contents(
    given: Option<&Path>,
    recipe: &crate::recipe::Recipe,
    cache: &Path,
) -> Result<Option<String>> {
    let (Some(given), Ok(board)) = (given, crate::jetson::JetsonBoard::of(recipe.board)) else {
        return Ok(None);
    };
    let (dir, _, sha256) = crate::jetson::bsp::unpack(given, recipe.bsp.as_ref(), cache)?;
    Ok(Some(match sha256 {
        Some(sha256) => sha256,
        None => crate::jetson::Bsp::open(&dir, board)?
            .fingerprint()
            .with_context(|| format!("reading the BSP {}", dir.display()))?,
    }))
}

/// Forget the record before outputs are remade (a half-made folder is never reused).
pub fn forget(out: &Path) {
    let _ = std::fs::remove_file(out.join(RECORD));
}

/// Every output a build leaves: the manifest's artifacts and the signed files beside them.
fn output_names(m: &Manifest) -> Vec<String> {
    let mut v: Vec<String> = m.artifacts.iter().map(|a| a.name.to_string()).collect();
    for n in [
        names::MANIFEST,
        names::SIGNATURE,
        names::BUNDLE,
        names::ROOT_PUB,
    ] {
        v.push(n.to_string());
    }
    v
}

fn stat(path: &Path) -> Result<(u64, u64, i128)> {
    let md = std::fs::metadata(path).with_context(|| format!("reading {}", path.display()))?;
    let mtime = i128::from(md.mtime()) * 1_000_000_000 + i128::from(md.mtime_nsec());
    Ok((md.len(), md.ino(), mtime))
}

/// Record the outputs just made under `fingerprint` (and the BSP they were made from).
pub fn record(out: &Path, fingerprint: &str, bsp: Option<&super::BspUsed>) -> Result<()> {
    let json = std::fs::read(out.join(names::MANIFEST))?;
    let m = Manifest::from_json_unverified(&json)?;
    let mut files = Vec::new();
    for name in output_names(&m) {
        let path = out.join(&name);
        let (size, ino, mtime_ns) = stat(&path)?;
        let sha256 = match m.artifacts.iter().find(|a| a.name.as_str() == name) {
            Some(a) if a.size == size => a.sha256.clone(),
            _ => sha256_file(&path)?.0,
        };
        files.push(FileRecord {
            name,
            size,
            sha256,
            ino,
            mtime_ns,
        });
    }
    let record = Record {
        fingerprint: fingerprint.to_string(),
        files,
        bsp: bsp.cloned(),
    };
    std::fs::write(out.join(RECORD), serde_json::to_vec_pretty(&record)?)?;
    Ok(())
}

/// Whether the outputs in `out` were made from `fingerprint` and are still as recorded.
pub fn reusable(out: &Path, fingerprint: &str) -> Result<Reuse> {
    let no = |why: &str| Ok(Reuse::No(why.to_string()));
    let Ok(text) = std::fs::read(out.join(RECORD)) else {
        return no("no complete earlier outputs");
    };
    let Ok(record) = serde_json::from_slice::<Record>(&text) else {
        return no("the record of the earlier outputs is from another version");
    };
    if record.fingerprint != fingerprint {
        return no("inputs changed");
    }
    for f in &record.files {
        let path = out.join(&f.name);
        let Ok((size, ino, mtime)) = stat(&path) else {
            return Ok(Reuse::No(format!("{} is missing", f.name)));
        };
        if (size, ino, mtime) == (f.size, f.ino, f.mtime_ns) {
            continue;
        }
        if size != f.size || sha256_file(&path)?.0 != f.sha256 {
            return Ok(Reuse::No(format!(
                "{} changed since it was built (something wrote into it)",
                f.name
            )));
        }
    }
    let json = std::fs::read(out.join(names::MANIFEST))?;
    let m = Manifest::from_json_unverified(&json)?;
    let rootfs = m
        .artifacts
        .iter()
        .find(|a| a.role == Role::Rootfs)
        .context("manifest without rootfs")?;
    let verity = rootfs.verity.clone().context("rootfs without verity")?;
    let slot = SlotImage {
        path: out.join(names::ROOTFS),
        data_size: verity.hash_offset,
        size: rootfs.size,
        sha256: rootfs.sha256.to_string(),
        verity,
    };
    Ok(Reuse::Yes(Box::new(OutputsReport {
        slot,
        artifacts: m.artifacts.clone(),
        bsp: record.bsp,
    })))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An output folder as a build leaves it: a rootfs image named by the manifest, the signed
    /// files beside it; recorded under fingerprint `f`.
    fn outputs(dir: &Path) {
        let rootfs = vec![7u8; 8192];
        std::fs::write(dir.join(names::ROOTFS), &rootfs).unwrap();
        let h = |b: &[u8]| Sha256Hex::digest(b).to_string();
        let manifest = serde_json::json!({
            "format": 1, "product": "p", "board": "qemu-x86_64", "version": "1.2.3",
            "security_version": 1,
            "build": {"source_date_epoch": 1, "recipe_sha256": h(b"r")},
            "artifacts": [{
                "name": names::ROOTFS, "role": "rootfs", "size": 8192, "sha256": h(&rootfs),
                "verity": {"root_hash": h(b"root"), "salt": "00ff", "hash_offset": 4096,
                    "data_blocks": 1, "data_block_size": 4096, "hash_block_size": 4096,
                    "algorithm": "sha256", "uuid": "12345678-1234-1234-1234-123456789abc"}
            }]
        });
        std::fs::write(
            dir.join(names::MANIFEST),
            serde_json::to_vec(&manifest).unwrap(),
        )
        .unwrap();
        for n in [names::SIGNATURE, names::BUNDLE, names::ROOT_PUB] {
            std::fs::write(dir.join(n), n.as_bytes()).unwrap();
        }
        record(dir, "f", None).unwrap();
    }

    fn why_not(dir: &Path) -> Option<String> {
        match reusable(dir, "f").unwrap() {
            Reuse::Yes(_) => None,
            Reuse::No(why) => Some(why),
        }
    }

    #[test]
    fn unchanged_outputs_are_reused_and_other_inputs_are_not() {
        let d = tempfile::tempdir().unwrap();
        outputs(d.path());
        assert_eq!(why_not(d.path()), None);
        assert!(matches!(reusable(d.path(), "g").unwrap(), Reuse::No(w) if w == "inputs changed"));
    }

    /// A `--bsp` folder whose kernel is replaced in place (or a tarball copied over the same
    /// name) must not reuse outputs made from the old one: the fingerprint follows contents.
    #[test]
    fn a_bsp_folder_changed_in_place_changes_the_fingerprint() {
        let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
        let recipe =
            crate::recipe::Recipe::load(&workspace.join("recipes/jetson-orin-agx.toml")).unwrap();
        let d = tempfile::tempdir().unwrap();
        let bsp = d.path().join("bsp");
        let copied = aperture_sys::Cmd::new("cp")
            .arg("-a")
            .arg(workspace.join("host/image/fixtures/synthetic-bsp"))
            .arg(&bsp)
            .run();
        copied.unwrap();
        let cache = d.path().join("cache");
        let before = bsp_contents(Some(&bsp), &recipe, &cache).unwrap().unwrap();
        assert_eq!(
            bsp_contents(Some(&bsp), &recipe, &cache).unwrap().unwrap(),
            before,
            "the same folder, the same fingerprint"
        );
        let kernel = bsp.join("Linux_for_Tegra/kernel/Image");
        let mut bytes = std::fs::read(&kernel).unwrap();
        bytes[200] ^= 1;
        std::fs::write(&kernel, bytes).unwrap();
        let after = bsp_contents(Some(&bsp), &recipe, &cache).unwrap().unwrap();
        assert_ne!(after, before);

        // The fingerprint of the outputs follows, with the same path.
        let qemu =
            crate::recipe::Recipe::load(&workspace.join("recipes/qemu-x86_64.toml")).unwrap();
        assert_eq!(bsp_contents(Some(&bsp), &qemu, &cache).unwrap(), None);
        assert_eq!(bsp_contents(None, &recipe, &cache).unwrap(), None);
    }

    /// Issue 12.13: something wrote into a signed output (as `vm run` once did into
    /// `disk.img`): same size, new contents. The build must make the outputs again.
    #[test]
    fn an_output_written_into_after_the_build_is_not_reused() {
        let d = tempfile::tempdir().unwrap();
        outputs(d.path());
        let path = d.path().join(names::ROOTFS);
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[100] ^= 1;
        std::thread::sleep(std::time::Duration::from_millis(20));
        std::fs::write(&path, &bytes).unwrap();
        let why = why_not(d.path()).expect("a changed output must not be reused");
        assert!(
            why.contains("rootfs.img changed since it was built"),
            "{why}"
        );
    }

    #[test]
    fn a_missing_or_regrown_output_is_not_reused() {
        let d = tempfile::tempdir().unwrap();
        outputs(d.path());
        std::fs::write(d.path().join(names::BUNDLE), b"longer than before").unwrap();
        assert!(why_not(d.path()).unwrap().contains("update.bundle changed"));
        outputs(d.path());
        std::fs::remove_file(d.path().join(names::SIGNATURE)).unwrap();
        assert!(why_not(d.path())
            .unwrap()
            .contains("manifest.sig is missing"));
    }
}
