//! Bundle reader on structurally malicious archives: unsafe names, links and devices, wrong
//! sizes, missing, reordered and extra entries. Written with raw headers (`RawTar`).

mod common;

use aperture_trust::TrustError;
use common::*;

#[test]
fn parent_dir_entry_name() {
    let f = fixture();
    let bundle = RawTar::new().signed(&f).file("../x", f.zst(0)).end();
    let err = read_all(&bundle, &f, NOW).unwrap_err();
    assert!(
        matches!(err, TrustError::UnsafeEntryPath { ref entry } if entry == "../x"),
        "{err}"
    );
}

#[test]
fn absolute_entry_name() {
    let f = fixture();
    let bundle = RawTar::new().signed(&f).file("/abs", f.zst(0)).end();
    let err = read_all(&bundle, &f, NOW).unwrap_err();
    assert!(
        matches!(err, TrustError::UnsafeEntryPath { ref entry } if entry == "/abs"),
        "{err}"
    );
    // Even in the manifest's place.
    let bundle = RawTar::new().file("/manifest.json", &f.manifest_json).end();
    let err = read_all(&bundle, &f, NOW).unwrap_err();
    assert!(matches!(err, TrustError::UnsafeEntryPath { .. }), "{err}");
}

#[test]
fn ustar_prefix_makes_a_path() {
    let f = fixture();
    let mut tar = RawTar::new();
    tar.signed(&f)
        .header(b"rootfs.img.zst", b'0', f.zst(0).len() as u64, b"", b"etc")
        .data(f.zst(0));
    let err = read_all(&tar.end(), &f, NOW).unwrap_err();
    assert!(
        matches!(err, TrustError::UnsafeEntryPath { ref entry } if entry == "etc/rootfs.img.zst"),
        "{err}"
    );
}

#[test]
fn symlink_entry() {
    let f = fixture();
    let bundle = RawTar::new()
        .signed(&f)
        .special("rootfs.img.zst", b'2', "/etc/shadow")
        .end();
    let err = read_all(&bundle, &f, NOW).unwrap_err();
    assert!(
        matches!(err, TrustError::EntryTypeNotAllowed { ref entry, ref kind } if entry == "rootfs.img.zst" && kind == "symlink"),
        "{err}"
    );
}

#[test]
fn hard_link_entry() {
    let f = fixture();
    let bundle = RawTar::new()
        .signed(&f)
        .special("rootfs.img.zst", b'1', "manifest.json")
        .end();
    let err = read_all(&bundle, &f, NOW).unwrap_err();
    assert!(
        matches!(err, TrustError::EntryTypeNotAllowed { ref kind, .. } if kind == "hard link"),
        "{err}"
    );
}

#[test]
fn other_special_entries() {
    let f = fixture();
    for (flag, kind) in [
        (b'3', "character device"),
        (b'4', "block device"),
        (b'5', "directory"),
        (b'6', "fifo"),
        (b'x', "pax extended header"),
        (b'L', "GNU long name record"),
    ] {
        let bundle = RawTar::new().special("manifest.json", flag, "").end();
        let err = read_all(&bundle, &f, NOW).unwrap_err();
        assert!(
            matches!(err, TrustError::EntryTypeNotAllowed { kind: ref k, .. } if k == kind),
            "{kind}: {err}"
        );
    }
}

#[test]
fn oversized_payload_entry() {
    let f = fixture();
    let mut big = f.zst(0).to_vec();
    big.extend_from_slice(&[0u8; 100]);
    let bundle = RawTar::new().signed(&f).file("rootfs.img.zst", &big).end();
    let err = read_all(&bundle, &f, NOW).unwrap_err();
    assert!(
        matches!(err, TrustError::Oversized { ref entry, limit } if entry == "rootfs.img.zst" && limit == f.zst(0).len() as u64),
        "{err}"
    );
}

#[test]
fn oversized_manifest_and_signature_are_refused_before_reading() {
    let f = fixture();
    // The header claims 2 MiB; no data follows, so any attempt to read it would be Truncated.
    let bundle = RawTar::new()
        .header(b"manifest.json", b'0', 2 << 20, b"", b"")
        .end();
    let err = read_all(&bundle, &f, NOW).unwrap_err();
    assert!(
        matches!(err, TrustError::Oversized { ref entry, limit } if entry == "manifest.json" && limit == 1 << 20),
        "{err}"
    );
    let mut tar = RawTar::new();
    tar.file("manifest.json", &f.manifest_json)
        .header(b"manifest.sig", b'0', 65 * 1024, b"", b"");
    let err = read_all(&tar.end(), &f, NOW).unwrap_err();
    assert!(
        matches!(err, TrustError::Oversized { ref entry, .. } if entry == "manifest.sig"),
        "{err}"
    );
}

#[test]
fn short_payload_entry_is_size_mismatch() {
    let f = fixture();
    let short = &f.zst(0)[..f.zst(0).len() - 1];
    let bundle = RawTar::new().signed(&f).file("rootfs.img.zst", short).end();
    let err = read_all(&bundle, &f, NOW).unwrap_err();
    assert!(matches!(err, TrustError::SizeMismatch { .. }), "{err}");
}

#[test]
fn missing_payload() {
    let f = fixture();
    let bundle = RawTar::new()
        .signed(&f)
        .file("rootfs.img.zst", f.zst(0))
        .end();
    let err = read_all(&bundle, &f, NOW).unwrap_err();
    assert!(
        matches!(err, TrustError::MissingEntry { ref name } if name == "vmlinuz.zst"),
        "{err}"
    );
}

#[test]
fn reordered_payloads() {
    let f = fixture();
    let bundle = RawTar::new()
        .signed(&f)
        .file("vmlinuz.zst", f.zst(1))
        .file("rootfs.img.zst", f.zst(0))
        .end();
    let err = read_all(&bundle, &f, NOW).unwrap_err();
    assert!(
        matches!(err, TrustError::Reordered { ref entry, ref expected } if entry == "vmlinuz.zst" && expected == "rootfs.img.zst"),
        "{err}"
    );
}

#[test]
fn unknown_entry_in_payload_position() {
    let f = fixture();
    let bundle = RawTar::new().signed(&f).file("sbom.json.zst", b"x").end();
    let err = read_all(&bundle, &f, NOW).unwrap_err();
    assert!(
        matches!(err, TrustError::UnexpectedEntry { ref found, .. } if found == "sbom.json.zst"),
        "{err}"
    );
}

#[test]
fn extra_trailing_entry() {
    let f = fixture();
    let bundle = RawTar::new()
        .signed(&f)
        .file("rootfs.img.zst", f.zst(0))
        .file("vmlinuz.zst", f.zst(1))
        .file("extra", b"surprise")
        .end();
    let err = read_all(&bundle, &f, NOW).unwrap_err();
    assert!(
        matches!(err, TrustError::UnexpectedEntry { ref expected, ref found } if expected == "end of bundle" && found == "extra"),
        "{err}"
    );
}

#[test]
fn trailing_zero_record_padding_is_accepted_and_garbage_is_not() {
    let f = fixture();
    let mut bundle = f.bundle();
    bundle.resize(bundle.len().div_ceil(10240) * 10240, 0);
    read_all(&bundle, &f, NOW).unwrap();
    bundle.push(1);
    let err = read_all(&bundle, &f, NOW).unwrap_err();
    assert!(matches!(err, TrustError::UnexpectedEntry { .. }), "{err}");
}

#[test]
fn manifest_not_first() {
    let f = fixture();
    let bundle = RawTar::new()
        .file("manifest.sig", &f.sig_json)
        .file("manifest.json", &f.manifest_json)
        .end();
    let err = read_all(&bundle, &f, NOW).unwrap_err();
    assert!(
        matches!(err, TrustError::Reordered { ref entry, .. } if entry == "manifest.sig"),
        "{err}"
    );
    let bundle = RawTar::new()
        .file("rootfs.img.zst", f.zst(0))
        .signed(&f)
        .end();
    let err = read_all(&bundle, &f, NOW).unwrap_err();
    assert!(
        matches!(err, TrustError::UnexpectedEntry { ref expected, ref found } if expected == "manifest.json" && found == "rootfs.img.zst"),
        "{err}"
    );
    let err = read_all(&RawTar::new().end(), &f, NOW).unwrap_err();
    assert!(
        matches!(err, TrustError::MissingEntry { ref name } if name == "manifest.json"),
        "{err}"
    );
}

#[test]
fn corrupted_header_checksum_is_malformed() {
    let f = fixture();
    let mut bundle = f.bundle();
    let at = data_offset(&bundle, "vmlinuz.zst") - 512;
    bundle[at] = b'w';
    let err = read_all(&bundle, &f, NOW).unwrap_err();
    assert!(
        matches!(err, TrustError::Malformed { ref what, .. } if what == "bundle entry header"),
        "{err}"
    );
}
