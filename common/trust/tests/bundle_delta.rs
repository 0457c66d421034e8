//! Delta bundles end to end through the reader: the rebuilt artifact is checked against the
//! signed manifest exactly as a full payload is, and a delta is refused before any byte of it
//! is used unless the reader holds the base it names.

mod common;

use aperture_trust::bundle::{write_bundle, PayloadSource};
use aperture_trust::delta::{self, FileBase};
use aperture_trust::manifest::{
    ArtifactName, DeltaBase, Manifest, Payload, PayloadEncoding, Sha256Hex,
};
use aperture_trust::signing::sign_manifest;
use aperture_trust::TrustError;
use common::{fixture, pseudo_random, read_all_with, Fixture, NOW};
use std::path::{Path, PathBuf};

struct Delta {
    _dir: tempfile::TempDir,
    base: PathBuf,
    target: Vec<u8>,
    manifest: Manifest,
    bundle: Vec<u8>,
    base_sha256: Sha256Hex,
}

/// A release whose rootfs is the fixture's with 3 blocks changed, as a delta from the
/// fixture's rootfs (the base); its kernel stays a full zstd payload.
fn delta_bundle(f: &Fixture) -> Delta {
    let dir = tempfile::tempdir().unwrap();
    let base_bytes = f.payloads[0].1.clone();
    let mut target = base_bytes.clone();
    target[8192..8192 + 3 * 4096].copy_from_slice(&pseudo_random(3 * 4096, 99));
    target.extend_from_slice(&pseudo_random(5000, 98));
    let (base, tpath, dpath) = (
        dir.path().join("base"),
        dir.path().join("target"),
        dir.path().join("delta"),
    );
    std::fs::write(&base, &base_bytes).unwrap();
    std::fs::write(&tpath, &target).unwrap();
    let stats = delta::encode_file(&base, &tpath, &dpath, 19).unwrap();
    let delta_bytes = std::fs::read(&dpath).unwrap();
    assert!(stats.encoded_size < 30_000, "{stats:?}");

    let mut manifest = f.manifest.clone();
    manifest.version = "1.2.4".parse().unwrap();
    let rootfs = &mut manifest.artifacts[0];
    rootfs.size = target.len() as u64;
    rootfs.sha256 = Sha256Hex::digest(&target);
    rootfs.payload = Some(Payload {
        encoding: PayloadEncoding::Delta,
        size: stats.encoded_size,
        sha256: stats.encoded_sha256.clone(),
        base: Some(DeltaBase {
            version: f.manifest.version.clone(),
            size: base_bytes.len() as u64,
            sha256: Sha256Hex::digest(&base_bytes),
            root_hash: Sha256Hex::digest(b"the base's verity root"),
        }),
    });
    let (mj, sj) = sign_manifest(&manifest, &f.release, &f.keyring).unwrap();
    let kernel_zst = f.zst(1).to_vec();
    let sources = vec![
        PayloadSource {
            name: ArtifactName::new("rootfs.img").unwrap(),
            size: delta_bytes.len() as u64,
            reader: Box::new(std::io::Cursor::new(delta_bytes)),
        },
        PayloadSource {
            name: ArtifactName::new("vmlinuz").unwrap(),
            size: kernel_zst.len() as u64,
            reader: Box::new(std::io::Cursor::new(kernel_zst)),
        },
    ];
    let bundle = write_bundle(Vec::new(), &mj, &sj, sources).unwrap();
    Delta {
        _dir: dir,
        base,
        target,
        manifest,
        bundle,
        base_sha256: Sha256Hex::digest(&base_bytes),
    }
}

/// Reads `bundle` with `base` (a file said to hold the artifact hashing to `holds`); returns
/// each payload's bytes.
fn read(
    f: &Fixture,
    bundle: &[u8],
    base: Option<(&Path, Sha256Hex)>,
) -> Result<Vec<(String, Vec<u8>)>, TrustError> {
    read_all_with(bundle, f, NOW, |reader| {
        if let Some((path, holds)) = base {
            let len = std::fs::metadata(path).unwrap().len();
            reader.set_delta_base("rootfs.img", Box::new(FileBase::open(path)?), len, holds);
        }
        Ok(())
    })
}

#[test]
fn a_delta_rebuilds_the_signed_rootfs_from_its_base() {
    let f = fixture();
    let d = delta_bundle(&f);
    assert!(d.bundle.len() < 60_000, "{} bytes", d.bundle.len());
    let got = read(&f, &d.bundle, Some((&d.base, d.base_sha256.clone()))).unwrap();
    assert_eq!(got[0].0, "rootfs.img");
    assert_eq!(got[0].1, d.target);
    assert_eq!(got[1].1, f.payloads[1].1);
    assert_eq!(
        d.manifest.artifacts[0].payload_entry_name().unwrap(),
        "rootfs.img.dlt"
    );
}

#[test]
fn a_delta_without_its_base_is_refused_before_any_byte_is_used() {
    let f = fixture();
    let d = delta_bundle(&f);
    let no_base = read(&f, &d.bundle, None).unwrap_err();
    assert!(
        matches!(no_base, TrustError::DeltaBase { .. }),
        "{no_base:?}"
    );
    let msg = no_base.to_string();
    assert!(
        msg.contains("rootfs.img.dlt") && msg.contains("1.2.3"),
        "{msg}"
    );
    assert!(msg.contains("install the full bundle"), "{msg}");

    let other = Sha256Hex::digest(b"another release");
    let wrong = read(&f, &d.bundle, Some((&d.base, other.clone()))).unwrap_err();
    let msg = wrong.to_string();
    assert!(msg.contains(&other.to_string()), "{msg}");
    assert!(msg.contains(&d.base_sha256.to_string()), "{msg}");
}

#[test]
fn a_corrupted_base_or_delta_is_a_hash_mismatch_not_a_different_slot() {
    let f = fixture();
    let d = delta_bundle(&f);
    // The running slot's bytes differ from what its record says (bit rot, tampering): the
    // rebuilt image does not hash to the signed one.
    let mut bytes = std::fs::read(&d.base).unwrap();
    bytes[100_000] ^= 1;
    std::fs::write(&d.base, &bytes).unwrap();
    let err = read(&f, &d.bundle, Some((&d.base, d.base_sha256.clone()))).unwrap_err();
    match err {
        TrustError::HashMismatch { artifact, .. } => assert_eq!(artifact, "rootfs.img"),
        other => panic!("{other:?}"),
    }
    bytes[100_000] ^= 1;
    std::fs::write(&d.base, &bytes).unwrap();

    // One byte of the delta changed in transit: the encoded hash names the entry.
    let mut bundle = d.bundle.clone();
    let at = bundle.len() - 1024 * 2 - f.zst(1).len().div_ceil(512) * 512 - 512 - 600;
    bundle[at] ^= 0x40;
    let err = read(&f, &bundle, Some((&d.base, d.base_sha256.clone()))).unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains("rootfs.img.dlt"), "{msg}");
}

#[test]
fn a_base_shorter_than_the_delta_needs_is_refused() {
    let f = fixture();
    let d = delta_bundle(&f);
    let bytes = std::fs::read(&d.base).unwrap();
    std::fs::write(&d.base, &bytes[..4096]).unwrap();
    let err = read(&f, &d.bundle, Some((&d.base, d.base_sha256.clone()))).unwrap_err();
    assert!(err.to_string().contains("has only 4096 bytes"), "{err}");
}
