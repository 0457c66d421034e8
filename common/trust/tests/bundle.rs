//! Bundle reader and writer on good bundles and on bundles with bad signatures, keys or
//! payload contents, each built in the test with snakeoil keys. Structurally malicious
//! archives are in `bundle_malicious.rs`.

mod common;

use aperture_trust::bundle::{write_bundle, BundleReader, PayloadSource};
use aperture_trust::manifest::{ArtifactName, Sha256Hex};
use aperture_trust::signing::ManifestSignature;
use aperture_trust::TrustError;
use common::*;
use std::cell::Cell;
use std::io::{self, Read};
use std::rc::Rc;

#[test]
fn good_bundle_round_trip() {
    let f = fixture();
    let bundle = f.bundle();
    let got = read_all(&bundle, &f, NOW).unwrap();
    assert_eq!(got.len(), 2);
    for ((name, data), (want_name, want, _)) in got.iter().zip(&f.payloads) {
        assert_eq!(name, want_name);
        assert!(data == want, "{name} differs");
    }
    let mut reader = BundleReader::new(&bundle[..], &f.root.public(), NOW);
    let verified = reader.read_header().unwrap();
    assert_eq!(*verified, f.manifest);
    assert_eq!(verified.key_id(), &f.release.key_id());
    reader.verify_payloads().unwrap();
}

/// The reader hands back the exact manifest and signature bytes it verified (so the updater
/// records them without a tar parser of its own), and nothing before or without verification.
#[test]
fn the_reader_hands_back_the_header_bytes_it_verified() {
    let f = fixture();
    let bundle = f.bundle();
    let mut reader = BundleReader::new(&bundle[..], &f.root.public(), NOW);
    assert!(reader.header_bytes().is_none());
    reader.read_header().unwrap();
    let h = reader.header_bytes().unwrap().clone();
    assert_eq!(h.manifest_json, f.manifest_json);
    assert_eq!(h.sig_json, f.sig_json);
    reader.verify_payloads().unwrap();
    assert_eq!(reader.header_bytes(), Some(&h), "kept after the payloads");
    // A header that does not verify hands back nothing.
    let mut reader = BundleReader::new(&bundle[..], &snakeoil(9).public(), NOW);
    assert!(reader.read_header().is_err());
    assert!(reader.header_bytes().is_none());
}

#[test]
fn good_bundle_is_a_standard_deterministic_tar() {
    let f = fixture();
    let bundle = f.bundle();
    assert_eq!(bundle, f.bundle(), "same inputs, same bytes");
    assert_eq!(bundle.len() % 512, 0);
    assert!(bundle[bundle.len() - 1024..].iter().all(|b| *b == 0));
    let mut archive = tar::Archive::new(&bundle[..]);
    let mut names = Vec::new();
    for entry in archive.entries().unwrap() {
        let entry = entry.unwrap();
        let h = entry.header();
        assert_eq!(h.mode().unwrap(), 0o644);
        assert_eq!((h.uid().unwrap(), h.gid().unwrap()), (0, 0));
        assert_eq!(h.mtime().unwrap(), EPOCH);
        assert_eq!(h.username().unwrap(), Some(""));
        assert_eq!(h.groupname().unwrap(), Some(""));
        assert!(h.as_ustar().is_some());
        names.push(entry.path().unwrap().display().to_string());
    }
    assert_eq!(
        names,
        [
            "manifest.json",
            "manifest.sig",
            "rootfs.img.zst",
            "vmlinuz.zst"
        ]
    );
}

/// A reader that hands out one byte per call, like a slow network.
struct Trickle<'a>(&'a [u8]);

impl Read for Trickle<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.0.is_empty() || buf.is_empty() {
            return Ok(0);
        }
        buf[0] = self.0[0];
        self.0 = &self.0[1..];
        Ok(1)
    }
}

#[test]
fn streams_from_a_one_byte_at_a_time_reader() {
    let f = fixture();
    let bundle = f.bundle();
    let mut reader = BundleReader::new(Trickle(&bundle), &f.root.public(), NOW);
    reader.read_header().unwrap();
    reader.verify_payloads().unwrap();
}

/// Counts the bytes taken from the inner reader.
struct Counting<'a> {
    data: &'a [u8],
    taken: Rc<Cell<usize>>,
}

impl Read for Counting<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.data.read(buf)?;
        self.taken.set(self.taken.get() + n);
        Ok(n)
    }
}

#[test]
fn header_is_verified_before_any_payload_byte() {
    let f = fixture();
    let bundle = f.bundle();
    let first_payload_header = data_offset(&bundle, "rootfs.img.zst") - 512;
    let taken = Rc::new(Cell::new(0));
    let mut reader = BundleReader::new(
        Counting {
            data: &bundle,
            taken: taken.clone(),
        },
        &f.root.public(),
        NOW,
    );
    reader.read_header().unwrap();
    assert_eq!(taken.get(), first_payload_header);

    // With a bad signature, reading stops at the same point.
    let tampered = String::from_utf8(f.manifest_json.clone())
        .unwrap()
        .replace("\"1.2.3\"", "\"1.2.4\"");
    let bad = write_bundle(Vec::new(), tampered.as_bytes(), &f.sig_json, f.sources()).unwrap();
    let taken = Rc::new(Cell::new(0));
    let mut reader = BundleReader::new(
        Counting {
            data: &bad,
            taken: taken.clone(),
        },
        &f.root.public(),
        NOW,
    );
    assert!(matches!(
        reader.read_header(),
        Err(TrustError::BadSignature { .. })
    ));
    assert_eq!(taken.get(), data_offset(&bad, "rootfs.img.zst") - 512);
}

#[test]
fn flipped_payload_byte_is_hash_mismatch() {
    let f = fixture();
    for (entry, at) in [("rootfs.img.zst", 1000), ("vmlinuz.zst", 10)] {
        let mut bundle = f.bundle();
        let at = data_offset(&bundle, entry) + at;
        bundle[at] ^= 0x01;
        let err = read_all(&bundle, &f, NOW).unwrap_err();
        assert!(
            matches!(err, TrustError::HashMismatch { .. }),
            "{entry}: {err}"
        );
    }
}

#[test]
fn unread_payload_is_drained_and_checked() {
    let f = fixture();
    let mut bundle = f.bundle();
    let len = f.zst(0).len();
    let at = data_offset(&bundle, "rootfs.img.zst") + len - 10;
    bundle[at] ^= 0x80;
    let mut reader = BundleReader::new(&bundle[..], &f.root.public(), NOW);
    reader.read_header().unwrap();
    let mut calls = 0;
    let err = reader
        .for_each_payload(|_, r: &mut dyn Read| {
            calls += 1;
            let mut first = [0u8; 16];
            r.read_exact(&mut first).unwrap();
            Ok::<(), TrustError>(())
        })
        .unwrap_err();
    assert_eq!(calls, 1, "the bad payload stops the walk");
    assert!(matches!(err, TrustError::HashMismatch { .. }), "{err}");
    // And an intact bundle passes with a callback that reads nothing.
    let good = f.bundle();
    let mut reader = BundleReader::new(&good[..], &f.root.public(), NOW);
    reader.read_header().unwrap();
    reader
        .for_each_payload(|_, _| Ok::<(), TrustError>(()))
        .unwrap();
}

#[test]
fn callback_error_is_returned_when_payload_is_fine() {
    let f = fixture();
    let bundle = f.bundle();
    let mut reader = BundleReader::new(&bundle[..], &f.root.public(), NOW);
    reader.read_header().unwrap();
    let err = reader
        .for_each_payload(|a, _| {
            Err(TrustError::Io {
                context: format!("writing {} to slot B", a.name),
                source: io::Error::other("disk full"),
            })
        })
        .unwrap_err();
    assert!(err.to_string().contains("slot B"), "{err}");
    // The reader is spent after an error.
    assert!(reader
        .for_each_payload(|_, _| Ok::<(), TrustError>(()))
        .is_err());
}

#[test]
fn truncated_at_several_points() {
    let f = fixture();
    let bundle = f.bundle();
    let rootfs = data_offset(&bundle, "rootfs.img.zst");
    let kernel = data_offset(&bundle, "vmlinuz.zst");
    let end = bundle.len() - 1024;
    let cuts = [
        0,
        100,
        512 + 10,
        data_offset(&bundle, "manifest.sig") - 1,
        rootfs - 512,
        rootfs - 200,
        rootfs + 1,
        rootfs + f.zst(0).len() / 2,
        rootfs + f.zst(0).len(),
        kernel + f.zst(1).len() - 1,
        end,
        end + 512,
        bundle.len() - 1,
    ];
    for cut in cuts {
        let err = read_all(&bundle[..cut], &f, NOW).unwrap_err();
        assert!(
            matches!(err, TrustError::Truncated { .. }),
            "cut at {cut}: {err}"
        );
    }
}

#[test]
fn unknown_key() {
    let f = fixture();
    let stranger = snakeoil(5);
    let canonical = aperture_trust::canonical::canonicalize_json(&f.manifest_json).unwrap();
    let sig = ManifestSignature {
        format: 1,
        key_id: stranger.key_id(),
        signature: hex::encode(stranger.sign(&canonical)),
        keyring: f.keyring.clone(),
    };
    let sig_json = serde_json::to_vec(&sig).unwrap();
    let bundle = write_bundle(Vec::new(), &f.manifest_json, &sig_json, f.sources()).unwrap();
    let err = read_all(&bundle, &f, NOW).unwrap_err();
    assert!(
        matches!(err, TrustError::UnknownKey { ref key_id } if *key_id == stranger.key_id().to_string()),
        "{err}"
    );
}

#[test]
fn expired_key() {
    let f = fixture();
    let err = read_all(&f.bundle(), &f, NOW + 1000).unwrap_err();
    assert!(
        matches!(err, TrustError::KeyExpired { not_after, .. } if not_after == NOW + 1000),
        "{err}"
    );
    assert!(
        err.to_string().contains(f.release.key_id().as_str()),
        "{err}"
    );
}

#[test]
fn tampered_manifest_is_bad_signature() {
    let f = fixture();
    let tampered = String::from_utf8(f.manifest_json.clone())
        .unwrap()
        .replace("\"1.2.3\"", "\"9.0.0\"");
    let bundle = write_bundle(Vec::new(), tampered.as_bytes(), &f.sig_json, f.sources()).unwrap();
    let err = read_all(&bundle, &f, NOW).unwrap_err();
    assert!(
        matches!(err, TrustError::BadSignature { ref what } if what == "manifest"),
        "{err}"
    );
}

#[test]
fn altered_signature_is_bad_signature() {
    let f = fixture();
    let mut sig: ManifestSignature = serde_json::from_slice(&f.sig_json).unwrap();
    let first = if sig.signature.starts_with('0') {
        "1"
    } else {
        "0"
    };
    sig.signature.replace_range(0..1, first);
    let sig_json = serde_json::to_vec(&sig).unwrap();
    let bundle = write_bundle(Vec::new(), &f.manifest_json, &sig_json, f.sources()).unwrap();
    let err = read_all(&bundle, &f, NOW).unwrap_err();
    assert!(matches!(err, TrustError::BadSignature { .. }), "{err}");
}

#[test]
fn wrong_root() {
    let f = fixture();
    let bundle = f.bundle();
    let mut reader = BundleReader::new(&bundle[..], &snakeoil(9).public(), NOW);
    let err = reader.read_header().unwrap_err();
    assert!(matches!(err, TrustError::UnknownKey { .. }), "{err}");
}

#[test]
fn signed_artifact_hash_is_checked_after_decoding() {
    // The payload matches its own hash but decodes to bytes the manifest does not describe.
    let f = fixture_with(|m| m.artifacts[0].sha256 = Sha256Hex::digest(b"something else"));
    let err = read_all(&f.bundle(), &f, NOW).unwrap_err();
    assert!(
        matches!(err, TrustError::HashMismatch { ref artifact, .. } if artifact == "rootfs.img"),
        "{err}"
    );
}

#[test]
fn signed_artifact_size_is_enforced_both_ways() {
    let f = fixture_with(|m| m.artifacts[0].size -= 1);
    let err = read_all(&f.bundle(), &f, NOW).unwrap_err();
    assert!(
        matches!(err, TrustError::Oversized { ref entry, .. } if entry == "rootfs.img"),
        "{err}"
    );
    let f = fixture_with(|m| m.artifacts[2].size += 1);
    let err = read_all(&f.bundle(), &f, NOW).unwrap_err();
    assert!(
        matches!(err, TrustError::SizeMismatch { ref artifact, .. } if artifact == "vmlinuz"),
        "{err}"
    );
}

#[test]
fn signed_payload_that_is_not_zstd_is_malformed() {
    let junk = vec![0xabu8; 600];
    let junk_for_manifest = junk.clone();
    let f = fixture_with(move |m| {
        let p = m.artifacts[2].payload.as_mut().unwrap();
        p.size = junk_for_manifest.len() as u64;
        p.sha256 = Sha256Hex::digest(&junk_for_manifest);
    });
    let bundle = RawTar::new()
        .signed(&f)
        .file("rootfs.img.zst", f.zst(0))
        .file("vmlinuz.zst", &junk)
        .end();
    let err = read_all(&bundle, &f, NOW).unwrap_err();
    assert!(
        matches!(err, TrustError::Malformed { ref what, .. } if what == "payload vmlinuz.zst"),
        "{err}"
    );
}

#[test]
fn bundle_without_payloads() {
    let f = fixture_with(|m| m.artifacts.iter_mut().for_each(|a| a.payload = None));
    let bundle = write_bundle(Vec::new(), &f.manifest_json, &f.sig_json, Vec::new()).unwrap();
    assert!(read_all(&bundle, &f, NOW).unwrap().is_empty());
}

#[test]
fn reader_misuse_is_an_error_not_a_panic() {
    let f = fixture();
    let bundle = f.bundle();
    let mut reader = BundleReader::new(&bundle[..], &f.root.public(), NOW);
    assert!(reader
        .for_each_payload(|_, _| Ok::<(), TrustError>(()))
        .is_err());
    let mut reader = BundleReader::new(&bundle[..], &f.root.public(), NOW);
    reader.read_header().unwrap();
    assert!(reader.read_header().is_err());
}

#[test]
fn writer_checks_payloads_against_manifest() {
    let f = fixture();
    let write = |sources: Vec<PayloadSource<'_>>| {
        write_bundle(Vec::new(), &f.manifest_json, &f.sig_json, sources)
    };

    let mut sources = f.sources();
    sources.swap(0, 1);
    assert!(matches!(write(sources), Err(TrustError::Reordered { .. })));

    let mut sources = f.sources();
    sources.pop();
    assert!(
        matches!(write(sources), Err(TrustError::MissingEntry { ref name }) if name == "vmlinuz.zst")
    );

    let mut sources = f.sources();
    sources[1].size += 1;
    assert!(matches!(
        write(sources),
        Err(TrustError::SizeMismatch { .. })
    ));

    let mut corrupt = f.zst(1).to_vec();
    corrupt[5] ^= 1;
    let mut sources = f.sources();
    sources[1].reader = Box::new(&corrupt[..]);
    assert!(matches!(
        write(sources),
        Err(TrustError::HashMismatch { .. })
    ));

    let mut sources = f.sources();
    sources[1].reader = Box::new(&f.zst(1)[..10]);
    assert!(matches!(write(sources), Err(TrustError::Truncated { .. })));

    let mut longer = f.zst(1).to_vec();
    longer.push(0);
    let mut sources = f.sources();
    sources[1].reader = Box::new(&longer[..]);
    assert!(matches!(write(sources), Err(TrustError::Oversized { .. })));

    let mut sources = f.sources();
    sources.push(PayloadSource {
        name: ArtifactName::new("extra").unwrap(),
        size: 0,
        reader: Box::new(io::empty()),
    });
    assert!(matches!(
        write(sources),
        Err(TrustError::UnexpectedEntry { .. })
    ));
}

/// A passed-over payload (the other slot's UKI) is never handed to the caller, but its encoded
/// bytes are still checked against the signed manifest: one flipped byte refuses the bundle.
#[test]
fn a_passed_over_payload_is_checked_but_not_handed_on() {
    let f = fixture();
    let bundle = f.bundle();
    let mut reader = BundleReader::new(&bundle[..], &f.root.public(), NOW);
    reader.read_header().unwrap();
    reader.pass_over("vmlinuz");
    let mut seen = Vec::new();
    reader
        .for_each_payload(|a, r: &mut dyn Read| {
            seen.push(a.name.to_string());
            io::copy(r, &mut io::sink())
                .map(drop)
                .map_err(|e| TrustError::Truncated {
                    entry: e.to_string(),
                })
        })
        .unwrap();
    assert_eq!(seen, ["rootfs.img"]);

    let mut bad = bundle.clone();
    let at = data_offset(&bad, "vmlinuz.zst") + 10;
    bad[at] ^= 1;
    let mut reader = BundleReader::new(&bad[..], &f.root.public(), NOW);
    reader.read_header().unwrap();
    reader.pass_over("vmlinuz");
    let err = reader
        .for_each_payload(|_, r: &mut dyn Read| {
            io::copy(r, &mut io::sink())
                .map(drop)
                .map_err(|e| TrustError::Truncated {
                    entry: e.to_string(),
                })
        })
        .unwrap_err();
    assert!(
        matches!(err, TrustError::HashMismatch { ref artifact, .. } if artifact == "vmlinuz.zst"),
        "{err}"
    );
}
