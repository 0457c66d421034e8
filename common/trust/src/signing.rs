//! Signing and verifying manifests.
//!
//! A release is two files: `manifest.json` (pretty JSON, keys sorted, trailing newline; made for
//! people to read) and `manifest.sig`:
//!
//! ```json
//! {"format":1,"key_id":"<release key id>","signature":"<128 hex>","keyring":{...SignedKeyring}}
//! ```
//!
//! The signature covers `canonicalize_json(manifest.json)`, so reformatting the JSON does not
//! break it, while any change of meaning does. The appliance verifies, in order: the keyring
//! against its baked-in root key, that the signing key is in the keyring and not expired, the
//! signature, and finally parses the manifest strictly FROM THE CANONICAL BYTES it verified, so
//! what it acts on is exactly what was signed.

use serde::{Deserialize, Serialize};
use std::ops::Deref;

use crate::canonical::{canonicalize_json, to_pretty_sorted};
use crate::keys::{KeyId, KeyringEntry, PublicKey, SignedKeyring, SigningKeyPair};
use crate::manifest::Manifest;
use crate::TrustError;

/// The signature file format this crate reads and writes.
pub const SIGNATURE_FORMAT: u32 = 1;

/// The contents of `manifest.sig`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ManifestSignature {
    /// Format version, 1.
    pub format: u32,
    /// The release key that signed.
    pub key_id: KeyId,
    /// ed25519 signature over the canonical manifest bytes, 128 hex characters.
    pub signature: String,
    /// The root-signed keyring that lists the release key.
    pub keyring: SignedKeyring,
}

/// A manifest whose signature chain has been verified. Only [`verify_manifest`] makes one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedManifest {
    manifest: Manifest,
    key_id: KeyId,
    keyring_sequence: u64,
}

impl VerifiedManifest {
    /// The release key that signed the manifest.
    pub fn key_id(&self) -> &KeyId {
        &self.key_id
    }

    /// The sequence of the root-signed keyring that lists the signing key.
    pub fn keyring_sequence(&self) -> u64 {
        self.keyring_sequence
    }

    /// The manifest.
    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    /// Gives up the proof of verification and returns the manifest.
    pub fn into_manifest(self) -> Manifest {
        self.manifest
    }
}

impl Deref for VerifiedManifest {
    type Target = Manifest;

    fn deref(&self) -> &Manifest {
        &self.manifest
    }
}

/// Signs `manifest` with `release`, which must be listed in `keyring`.
///
/// Returns `(manifest.json, manifest.sig)` bytes. The manifest is validated first, and the
/// release key must be in the keyring, so a release that the appliance would refuse for
/// those reasons is never produced.
pub fn sign_manifest(
    manifest: &Manifest,
    release: &SigningKeyPair,
    keyring: &SignedKeyring,
) -> Result<(Vec<u8>, Vec<u8>), TrustError> {
    manifest.validate()?;
    sign_document(manifest, release, keyring)
}

/// Signs any document the way manifests are signed: pretty sorted JSON, and a
/// [`ManifestSignature`] over its canonical bytes by `release`, which must be listed in
/// `keyring`. Model bundles ([`crate::model`]) use it, so they share the OS bundles' key chain.
/// Returns `(document json, signature json)`.
pub fn sign_document<T: Serialize>(
    document: &T,
    release: &SigningKeyPair,
    keyring: &SignedKeyring,
) -> Result<(Vec<u8>, Vec<u8>), TrustError> {
    let key_id = release.key_id();
    match keyring.keyring.find(&key_id) {
        Some(entry) if entry.public == release.public() => {}
        _ => {
            return Err(TrustError::UnknownKey {
                key_id: key_id.to_string(),
            })
        }
    }
    let document_json = to_pretty_sorted(document)?;
    let signature = release.sign(&canonicalize_json(&document_json)?);
    let sig = ManifestSignature {
        format: SIGNATURE_FORMAT,
        key_id,
        signature: hex::encode(signature),
        keyring: keyring.clone(),
    };
    let sig_json = to_pretty_sorted(&sig)?;
    Ok((document_json, sig_json))
}

/// A document whose signature chain [`verify_document`] checked: its canonical bytes (parse
/// these, not the bytes given, so what is acted on is exactly what was signed) and the key.
#[derive(Debug, Clone)]
pub struct VerifiedDocument {
    /// The canonical bytes the signature covers.
    pub canonical: Vec<u8>,
    /// The release key that signed, as listed in the verified keyring.
    pub key: KeyringEntry,
    /// The sequence of that keyring.
    pub keyring_sequence: u64,
}

/// Verifies a document signed by [`sign_document`] against the trusted `root` key at `now`:
/// the keyring against the root, the release key listed and unexpired, the signature over the
/// canonical bytes. `what` names the signature file in errors. The caller parses
/// [`VerifiedDocument::canonical`] and checks expiry against the document's own signed time.
pub fn verify_document(
    document_json: &[u8],
    sig_json: &[u8],
    root: &PublicKey,
    now: u64,
    what: &str,
) -> Result<VerifiedDocument, TrustError> {
    let sig: ManifestSignature =
        serde_json::from_slice(sig_json).map_err(|e| TrustError::malformed(what, e))?;
    if sig.format != SIGNATURE_FORMAT {
        return Err(TrustError::malformed(
            what,
            format!(
                "format {} is not supported (this build reads format {SIGNATURE_FORMAT}); \
                 update the appliance software first",
                sig.format
            ),
        ));
    }
    let keyring = sig.keyring.verify(root)?;
    let keyring_sequence = keyring.sequence;
    let entry = keyring
        .find(&sig.key_id)
        .ok_or_else(|| TrustError::UnknownKey {
            key_id: sig.key_id.to_string(),
        })?;
    entry.check_not_expired(now)?;
    let canonical = canonicalize_json(document_json)?;
    entry
        .public
        .verify_hex(&canonical, &sig.signature, "manifest")?;
    Ok(VerifiedDocument {
        canonical,
        key: entry.clone(),
        keyring_sequence,
    })
}

/// Verifies `manifest.json` and `manifest.sig` against the trusted `root` key at time `now`
/// (unix seconds, injected so tests and offline checks control it). The release key must be
/// unexpired at `now` and at the manifest's own signed time (`build.source_date_epoch`), so a
/// verifier whose clock is behind still refuses a build made after the key expired.
///
/// Errors: a keyring signed by another root or a signing key not in the keyring
/// [`TrustError::UnknownKey`]; a key at or past `not_after` [`TrustError::KeyExpired`]; a
/// signature that does not verify [`TrustError::BadSignature`]; a document that does not parse
/// or validate [`TrustError::Malformed`].
pub fn verify_manifest(
    manifest_json: &[u8],
    sig_json: &[u8],
    root: &PublicKey,
    now: u64,
) -> Result<VerifiedManifest, TrustError> {
    let doc = verify_document(manifest_json, sig_json, root, now, "manifest.sig")?;
    let manifest: Manifest = serde_json::from_slice(&doc.canonical)
        .map_err(|e| TrustError::malformed("manifest.json", e))?;
    manifest.validate()?;
    // The manifest's own signed time: a key cannot sign a build made after it expired, whatever
    // the verifier's clock says.
    doc.key
        .check_not_expired(manifest.build.source_date_epoch)?;
    Ok(VerifiedManifest {
        manifest,
        key_id: doc.key.key_id,
        keyring_sequence: doc.keyring_sequence,
    })
}

/// The `now` at which to verify again what was verified with the clock when it was written: an
/// installed slot's record (verified when the slot was installed) and the factory image
/// (verified when the appliance was flashed). Give it to [`verify_manifest`] or
/// [`crate::bundle::BundleReader::new`]; [`verify_written`] does so.
///
/// At this time a verifier checks the whole signature chain (root key, keyring, release key,
/// the signature over the manifest), every payload hash a bundle reader reads, and that the
/// release key was valid at the manifest's own signed build time (`build.source_date_epoch`;
/// [`verify_manifest`] always checks that), but NOT the key's expiry against the clock.
///
/// Why: key expiry decides what may be NEWLY published and installed. A release key expiring
/// later does not make an image that was verified while the key was valid less trustworthy,
/// and a device that refused it would, a year after manufacture, have no factory reset and no
/// way to re-verify its own slots. The Unix epoch is before every key's `not_after` (a
/// verifier refuses a key when `now >= not_after`), so at this time only the build time
/// decides.
pub const VERIFIED_WHEN_WRITTEN: u64 = 0;

/// [`verify_manifest`] at [`VERIFIED_WHEN_WRITTEN`]: for a manifest and signature kept since
/// they were verified with the clock (a slot's record in the device state store).
pub fn verify_written(
    manifest_json: &[u8],
    sig_json: &[u8],
    root: &PublicKey,
) -> Result<VerifiedManifest, TrustError> {
    verify_manifest(manifest_json, sig_json, root, VERIFIED_WHEN_WRITTEN)
}

/// The sequence of the keyring in `manifest.sig`, once that keyring is verified against
/// `root` (the signature over the manifest and key expiry are not checked: this is for a
/// manifest that was verified when it was installed).
pub fn keyring_sequence(sig_json: &[u8], root: &PublicKey) -> Result<u64, TrustError> {
    let sig: ManifestSignature =
        serde_json::from_slice(sig_json).map_err(|e| TrustError::malformed("manifest.sig", e))?;
    Ok(sig.keyring.verify(root)?.sequence)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::KeyringEntry;
    use crate::manifest::tests::sample;

    const NOW: u64 = 1_800_000_000;

    struct Keys {
        root: SigningKeyPair,
        release: SigningKeyPair,
        keyring: SignedKeyring,
    }

    fn snakeoil_keys(not_after: u64) -> Keys {
        let root = SigningKeyPair::from_secret_bytes(&[1; 32]);
        let release = SigningKeyPair::from_secret_bytes(&[2; 32]);
        let keyring = SignedKeyring::create(
            &root,
            vec![KeyringEntry::new(
                release.public(),
                "release-snakeoil",
                not_after,
            )],
        )
        .unwrap();
        Keys {
            root,
            release,
            keyring,
        }
    }

    #[test]
    fn round_trip() {
        let k = snakeoil_keys(NOW + 1);
        let (mj, sj) = sign_manifest(&sample(), &k.release, &k.keyring).unwrap();
        assert!(mj.ends_with(b"}\n"));
        assert!(std::str::from_utf8(&mj)
            .unwrap()
            .contains("\n  \"artifacts\""));
        let v = verify_manifest(&mj, &sj, &k.root.public(), NOW).unwrap();
        assert_eq!(*v, sample());
        assert_eq!(v.key_id(), &k.release.key_id());
        assert_eq!(v.version.to_string(), "1.2.3");
    }

    #[test]
    fn the_keyring_sequence_is_verified_and_checked_against_the_accepted_one() {
        let k = snakeoil_keys(NOW + 1);
        let ring = SignedKeyring::create_with_sequence(&k.root, 3, k.keyring.keyring.keys.clone())
            .unwrap();
        let (mj, sj) = sign_manifest(&sample(), &k.release, &ring).unwrap();
        let v = verify_manifest(&mj, &sj, &k.root.public(), NOW).unwrap();
        assert_eq!(v.keyring_sequence(), 3);
        assert_eq!(keyring_sequence(&sj, &k.root.public()).unwrap(), 3);
        crate::policy::check_keyring(&v, 3).unwrap();
        let err = crate::policy::check_keyring(&v, 4).unwrap_err();
        assert!(
            matches!(
                err,
                TrustError::KeyringTooOld {
                    offered: 3,
                    accepted: 4
                }
            ),
            "{err}"
        );
        let text = err.to_string();
        assert!(
            text.contains("keyring 3") && text.contains("keyring 4"),
            "{text}"
        );
        assert!(text.contains("current keyring"), "{text}");
        let other = SigningKeyPair::from_secret_bytes(&[9; 32]).public();
        assert!(keyring_sequence(&sj, &other).is_err());
    }

    /// What was verified when it was written verifies again after its key expired (the clock
    /// no longer matters), but not when the key had expired before the build, nor when a byte
    /// of the manifest changed, nor under another root.
    #[test]
    fn verify_written_ignores_the_clock_but_not_the_build_time_or_the_chain() {
        let built = sample().build.source_date_epoch;
        let k = snakeoil_keys(built + 10);
        let (mj, sj) = sign_manifest(&sample(), &k.release, &k.keyring).unwrap();
        let late = built + 10 * 365 * 86_400;
        let err = verify_manifest(&mj, &sj, &k.root.public(), late).unwrap_err();
        assert!(matches!(err, TrustError::KeyExpired { .. }), "{err}");
        let v = verify_written(&mj, &sj, &k.root.public()).unwrap();
        assert_eq!(*v, sample());
        let expired_at_build = snakeoil_keys(built);
        let (mj2, sj2) = sign_manifest(
            &sample(),
            &expired_at_build.release,
            &expired_at_build.keyring,
        )
        .unwrap();
        let err = verify_written(&mj2, &sj2, &expired_at_build.root.public()).unwrap_err();
        assert!(matches!(err, TrustError::KeyExpired { .. }), "{err}");
        let text = String::from_utf8(mj.clone())
            .unwrap()
            .replace("1.2.3", "1.2.4");
        let err = verify_written(text.as_bytes(), &sj, &k.root.public()).unwrap_err();
        assert!(matches!(err, TrustError::BadSignature { .. }), "{err}");
        let other = SigningKeyPair::from_secret_bytes(&[9; 32]).public();
        assert!(verify_written(&mj, &sj, &other).is_err());
    }

    #[test]
    fn a_manifest_built_after_its_key_expired_is_refused_whatever_the_clock() {
        let built = sample().build.source_date_epoch;
        let k = snakeoil_keys(built);
        let (mj, sj) = sign_manifest(&sample(), &k.release, &k.keyring).unwrap();
        let err = verify_manifest(&mj, &sj, &k.root.public(), 0).unwrap_err();
        assert!(matches!(err, TrustError::KeyExpired { .. }), "{err}");
        let k = snakeoil_keys(built + 1);
        let (mj, sj) = sign_manifest(&sample(), &k.release, &k.keyring).unwrap();
        verify_manifest(&mj, &sj, &k.root.public(), 0).unwrap();
    }

    #[test]
    fn signing_is_deterministic() {
        let k = snakeoil_keys(NOW + 1);
        let a = sign_manifest(&sample(), &k.release, &k.keyring).unwrap();
        let b = sign_manifest(&sample(), &k.release, &k.keyring).unwrap();
        assert_eq!(a, b);
    }

    #[test]
    fn reformatted_manifest_still_verifies() {
        let k = snakeoil_keys(NOW + 1);
        let (mj, sj) = sign_manifest(&sample(), &k.release, &k.keyring).unwrap();
        let compact = canonicalize_json(&mj).unwrap();
        verify_manifest(&compact, &sj, &k.root.public(), NOW).unwrap();
    }

    #[test]
    fn changed_version_is_bad_signature() {
        let k = snakeoil_keys(NOW + 1);
        let (mj, sj) = sign_manifest(&sample(), &k.release, &k.keyring).unwrap();
        let tampered = String::from_utf8(mj)
            .unwrap()
            .replace("\"1.2.3\"", "\"9.9.9\"");
        let err = verify_manifest(tampered.as_bytes(), &sj, &k.root.public(), NOW).unwrap_err();
        assert!(
            matches!(err, TrustError::BadSignature { ref what } if what == "manifest"),
            "{err}"
        );
    }

    #[test]
    fn duplicate_key_smuggling_is_refused() {
        let k = snakeoil_keys(NOW + 1);
        let (mj, sj) = sign_manifest(&sample(), &k.release, &k.keyring).unwrap();
        let text = String::from_utf8(mj).unwrap();
        let smuggled = text.replacen("{", "{\"board\": \"other\",", 1);
        assert!(verify_manifest(smuggled.as_bytes(), &sj, &k.root.public(), NOW).is_err());
    }

    #[test]
    fn expired_key() {
        let k = snakeoil_keys(NOW);
        let (mj, sj) = sign_manifest(&sample(), &k.release, &k.keyring).unwrap();
        let err = verify_manifest(&mj, &sj, &k.root.public(), NOW).unwrap_err();
        assert!(
            matches!(err, TrustError::KeyExpired { not_after: NOW, .. }),
            "{err}"
        );
        verify_manifest(&mj, &sj, &k.root.public(), NOW - 1).unwrap();
    }

    #[test]
    fn wrong_root_is_unknown_key() {
        let k = snakeoil_keys(NOW + 1);
        let (mj, sj) = sign_manifest(&sample(), &k.release, &k.keyring).unwrap();
        let other_root = SigningKeyPair::from_secret_bytes(&[9; 32]).public();
        let err = verify_manifest(&mj, &sj, &other_root, NOW).unwrap_err();
        assert!(matches!(err, TrustError::UnknownKey { .. }), "{err}");
    }

    #[test]
    fn key_not_in_keyring_is_unknown() {
        let k = snakeoil_keys(NOW + 1);
        let stranger = SigningKeyPair::from_secret_bytes(&[5; 32]);
        // The signer refuses outright...
        let err = sign_manifest(&sample(), &stranger, &k.keyring).unwrap_err();
        assert!(matches!(err, TrustError::UnknownKey { .. }), "{err}");
        // ...and a hand-made signature file naming the stranger is refused on verify.
        let (mj, _) = sign_manifest(&sample(), &k.release, &k.keyring).unwrap();
        let sig = ManifestSignature {
            format: 1,
            key_id: stranger.key_id(),
            signature: hex::encode(stranger.sign(&canonicalize_json(&mj).unwrap())),
            keyring: k.keyring.clone(),
        };
        let sj = serde_json::to_vec(&sig).unwrap();
        let err = verify_manifest(&mj, &sj, &k.root.public(), NOW).unwrap_err();
        assert!(
            matches!(err, TrustError::UnknownKey { ref key_id } if *key_id == stranger.key_id().to_string()),
            "{err}"
        );
    }

    #[test]
    fn signature_by_other_listed_key_is_bad() {
        // Claiming key A while signing with key B (both listed) fails the signature check.
        let root = SigningKeyPair::from_secret_bytes(&[1; 32]);
        let a = SigningKeyPair::from_secret_bytes(&[2; 32]);
        let b = SigningKeyPair::from_secret_bytes(&[3; 32]);
        let keyring = SignedKeyring::create(
            &root,
            vec![
                KeyringEntry::new(a.public(), "a", NOW + 1),
                KeyringEntry::new(b.public(), "b", NOW + 1),
            ],
        )
        .unwrap();
        let (mj, sj) = sign_manifest(&sample(), &b, &keyring).unwrap();
        let mut sig: ManifestSignature = serde_json::from_slice(&sj).unwrap();
        sig.key_id = a.key_id();
        let sj = serde_json::to_vec(&sig).unwrap();
        let err = verify_manifest(&mj, &sj, &root.public(), NOW).unwrap_err();
        assert!(matches!(err, TrustError::BadSignature { .. }), "{err}");
    }

    #[test]
    fn malformed_inputs() {
        let k = snakeoil_keys(NOW + 1);
        let (mj, sj) = sign_manifest(&sample(), &k.release, &k.keyring).unwrap();
        let root = k.root.public();
        assert!(matches!(
            verify_manifest(&mj, b"not json", &root, NOW),
            Err(TrustError::Malformed { .. })
        ));
        let mut sig: serde_json::Value = serde_json::from_slice(&sj).unwrap();
        sig["format"] = 2.into();
        let bad = serde_json::to_vec(&sig).unwrap();
        assert!(verify_manifest(&mj, &bad, &root, NOW)
            .unwrap_err()
            .to_string()
            .contains("format 2"));
        sig["format"] = 1.into();
        sig["comment"] = "hi".into();
        let bad = serde_json::to_vec(&sig).unwrap();
        assert!(matches!(
            verify_manifest(&mj, &bad, &root, NOW),
            Err(TrustError::Malformed { .. })
        ));
    }

    #[test]
    fn signed_but_invalid_manifest_is_refused() {
        // A validly signed document that breaks a manifest rule is still refused.
        let k = snakeoil_keys(NOW + 1);
        let mut v = serde_json::to_value(sample()).unwrap();
        v["format"] = 7.into();
        let mj = serde_json::to_vec(&v).unwrap();
        let sig = ManifestSignature {
            format: 1,
            key_id: k.release.key_id(),
            signature: hex::encode(k.release.sign(&canonicalize_json(&mj).unwrap())),
            keyring: k.keyring.clone(),
        };
        let sj = serde_json::to_vec(&sig).unwrap();
        let err = verify_manifest(&mj, &sj, &k.root.public(), NOW).unwrap_err();
        assert!(err.to_string().contains("format 7"), "{err}");
    }
}
