//! Model bundles: a folder signed, written, read back and unpacked; and every kind of bad
//! bundle refused by its typed error (wrong key, tampering, truncation, unsafe names, odd
//! entry types). Snakeoil keys only.

use std::path::Path;

use aperture_trust::keys::{KeyringEntry, SignedKeyring, SigningKeyPair};
use aperture_trust::manifest::ArtifactName;
use aperture_trust::model::{
    sign_model_manifest, write_model_bundle, ModelBundleReader, ModelManifest, ModelPath,
};
use aperture_trust::TrustError;

const NOW: u64 = 1_800_000_000;

struct Keys {
    root: SigningKeyPair,
    release: SigningKeyPair,
    keyring: SignedKeyring,
}

fn snakeoil(seed: u8) -> Keys {
    let root = SigningKeyPair::from_secret_bytes(&[seed; 32]);
    let release = SigningKeyPair::from_secret_bytes(&[seed + 1; 32]);
    let keyring = SignedKeyring::create(
        &root,
        vec![KeyringEntry::new(
            release.public(),
            "release-snakeoil",
            NOW + 1000,
        )],
    )
    .unwrap();
    Keys {
        root,
        release,
        keyring,
    }
}

fn folder(dir: &Path) -> Vec<ModelPath> {
    std::fs::create_dir_all(dir.join("golden")).unwrap();
    std::fs::write(dir.join("manifest.toml"), "[model]\nname = \"m\"\n").unwrap();
    std::fs::write(dir.join("m.onnx"), vec![7u8; 1500]).unwrap();
    std::fs::write(dir.join("golden/reference.json"), "{\"frames\":[]}").unwrap();
    ["manifest.toml", "m.onnx", "golden/reference.json"]
        .map(|p| ModelPath::new(p).unwrap())
        .to_vec()
}

fn bundle(keys: &Keys, dir: &Path) -> Vec<u8> {
    let paths = folder(dir);
    let m = ModelManifest::of_folder(
        dir,
        &paths,
        ArtifactName::new("m").unwrap(),
        "1.2.0".parse().unwrap(),
        NOW - 10,
    )
    .unwrap();
    let (mj, sj) = sign_model_manifest(&m, &keys.release, &keys.keyring).unwrap();
    write_model_bundle(Vec::new(), &mj, &sj, dir).unwrap()
}

fn unpack(bytes: &[u8], keys: &Keys, out: &Path) -> Result<(), TrustError> {
    let mut r = ModelBundleReader::new(bytes, &keys.root.public(), NOW);
    r.read_header()?;
    std::fs::create_dir_all(out).unwrap();
    r.unpack_into(out)
}

/// Offset of the header of the entry named `name`.
fn header_offset(bytes: &[u8], name: &str) -> usize {
    let mut off = 0;
    loop {
        let h = tar::Header::from_byte_slice(&bytes[off..off + 512]);
        if h.path_bytes().as_ref() == name.as_bytes() {
            return off;
        }
        let size = h.entry_size().unwrap() as usize;
        off += 512 + size.div_ceil(512) * 512;
    }
}

/// Rewrite the header at `off` with `name` and `typeflag`, with a valid checksum.
fn forge(bytes: &mut [u8], off: usize, name: &str, typeflag: u8) {
    let block = &mut bytes[off..off + 512];
    block[..100].fill(0);
    block[..name.len()].copy_from_slice(name.as_bytes());
    block[156] = typeflag;
    let mut h = tar::Header::new_old();
    h.as_mut_bytes().copy_from_slice(block);
    h.set_cksum();
    block.copy_from_slice(h.as_bytes());
}

#[test]
fn a_folder_round_trips_and_its_digest_names_the_content() {
    let t = tempfile::tempdir().unwrap();
    let k = snakeoil(1);
    let bytes = bundle(&k, &t.path().join("src"));
    assert_eq!(bytes.len() % 512, 0);
    let mut r = ModelBundleReader::new(&bytes[..], &k.root.public(), NOW);
    let v = r.read_header().unwrap();
    assert_eq!(v.manifest().name.as_str(), "m");
    assert_eq!(v.manifest().files.len(), 3);
    assert_eq!(v.key_id(), &k.release.key_id());
    let out = t.path().join("out");
    std::fs::create_dir(&out).unwrap();
    r.unpack_into(&out).unwrap();
    for p in ["manifest.toml", "m.onnx", "golden/reference.json"] {
        assert_eq!(
            std::fs::read(out.join(p)).unwrap(),
            std::fs::read(t.path().join("src").join(p)).unwrap(),
            "{p}"
        );
    }
    // The same folder and version make the same bytes (deterministic headers).
    assert_eq!(bundle(&k, &t.path().join("src")), bytes);
}

#[test]
fn a_bundle_signed_under_another_root_is_refused() {
    let t = tempfile::tempdir().unwrap();
    let bytes = bundle(&snakeoil(1), &t.path().join("src"));
    let e = unpack(&bytes, &snakeoil(5), &t.path().join("out")).unwrap_err();
    assert!(matches!(e, TrustError::UnknownKey { .. }), "{e}");
    assert!(!t.path().join("out").exists());
}

#[test]
fn tampered_files_and_manifests_are_refused() {
    let t = tempfile::tempdir().unwrap();
    let k = snakeoil(1);
    let good = bundle(&k, &t.path().join("src"));
    // One byte of the model file.
    let mut bad = good.clone();
    let off = header_offset(&bad, "m.onnx");
    bad[off + 512 + 100] ^= 1;
    let e = unpack(&bad, &k, &t.path().join("a")).unwrap_err();
    assert!(
        matches!(&e, TrustError::HashMismatch { artifact, .. } if artifact == "m.onnx"),
        "{e}"
    );
    // The version inside the signed manifest.
    let mut bad = good.clone();
    let at = bad.windows(7).position(|w| w == b"\"1.2.0\"").unwrap();
    bad[at + 1..at + 6].copy_from_slice(b"9.2.0");
    let e = unpack(&bad, &k, &t.path().join("b")).unwrap_err();
    assert!(matches!(e, TrustError::BadSignature { .. }), "{e}");
}

#[test]
fn truncated_bundles_are_refused_wherever_they_end() {
    let t = tempfile::tempdir().unwrap();
    let k = snakeoil(1);
    let good = bundle(&k, &t.path().join("src"));
    for (i, cut) in [
        100,
        700,
        2000,
        3000,
        good.len() - 1024 - 1,
        good.len() - 600,
    ]
    .into_iter()
    .enumerate()
    {
        let e = unpack(&good[..cut], &k, &t.path().join(format!("o{i}"))).unwrap_err();
        assert!(
            matches!(e, TrustError::Truncated { .. }),
            "cut at {cut}: {e}"
        );
    }
}

#[test]
fn unsafe_names_and_odd_entry_types_are_refused() {
    let t = tempfile::tempdir().unwrap();
    let k = snakeoil(1);
    let good = bundle(&k, &t.path().join("src"));
    let off = header_offset(&good, "golden/reference.json");
    for (name, flag) in [
        ("../reference.json", b'0'),
        ("/etc/passwd", b'0'),
        ("golden/../../x", b'0'),
    ] {
        let mut bad = good.clone();
        forge(&mut bad, off, name, flag);
        let e = unpack(&bad, &k, &t.path().join("o")).unwrap_err();
        assert!(
            matches!(e, TrustError::UnsafeEntryPath { .. }),
            "{name}: {e}"
        );
        let _ = std::fs::remove_dir_all(t.path().join("o"));
    }
    for flag in [b'2', b'1', b'5', b'3', b'x'] {
        let mut bad = good.clone();
        forge(&mut bad, off, "golden/reference.json", flag);
        let e = unpack(&bad, &k, &t.path().join("o")).unwrap_err();
        assert!(
            matches!(e, TrustError::EntryTypeNotAllowed { .. }),
            "type {}: {e}",
            flag as char
        );
        let _ = std::fs::remove_dir_all(t.path().join("o"));
    }
    // A signed manifest cannot name an unsafe path either.
    for bad in ["../x", "/x", "a//b", ".hidden", "a/./b"] {
        assert!(ModelPath::new(bad).is_err(), "{bad}");
        let json = format!("\"{bad}\"");
        assert!(serde_json::from_str::<ModelPath>(&json).is_err(), "{bad}");
    }
    // Data after the end is refused.
    let mut bad = good.clone();
    bad.extend_from_slice(b"more");
    let e = unpack(&bad, &k, &t.path().join("o")).unwrap_err();
    assert!(matches!(e, TrustError::UnexpectedEntry { .. }), "{e}");
}

#[test]
fn a_symlink_in_the_source_folder_is_not_bundled() {
    let t = tempfile::tempdir().unwrap();
    let dir = t.path().join("src");
    let mut paths = folder(&dir);
    std::os::unix::fs::symlink("/etc/passwd", dir.join("golden/link")).unwrap();
    paths.push(ModelPath::new("golden/link").unwrap());
    let e = ModelManifest::of_folder(
        &dir,
        &paths,
        ArtifactName::new("m").unwrap(),
        "1.0.0".parse().unwrap(),
        NOW,
    )
    .unwrap_err();
    assert!(matches!(e, TrustError::EntryTypeNotAllowed { .. }), "{e}");
}
