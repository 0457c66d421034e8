//! The keyring: the set of release keys the root key vouches for, so release keys rotate
//! without reflashing.
//!
//! The appliance image bakes in one root public key. The root key signs a [`Keyring`] listing
//! release keys, each with an expiry; every `manifest.sig` carries the signed keyring, and the
//! appliance accepts a manifest signed by any unexpired key in a keyring that the root signed.
//!
//! ```json
//! {"keyring":{"format":1,"root_key_id":"..","keys":[{"key_id":"..","public":"<64 hex>",
//!   "name":"release-2026","not_after":1798761600}]},"signature":"<128 hex>"}
//! ```
//!
//! The signature is the root's ed25519 signature over the canonical bytes of `keyring`.
//!
//! ## Revocation
//! A keyring carries a `sequence` (absent means 0, the first keyring), signed with it. A newer
//! keyring, made by [`SignedKeyring::revoke`] with a leaked release key left out, has a higher
//! sequence. An appliance remembers the highest sequence it has committed to and refuses bundles
//! signed under an older keyring ([`crate::policy::check_keyring`]), so once a keyring without
//! the leaked key is committed, the leaked key stops working, even inside an older,
//! validly root-signed keyring.

use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;

use crate::canonical::to_canonical_bytes;
use crate::keys::{KeyId, PublicKey, SigningKeyPair};
use crate::TrustError;

/// The keyring format this crate reads and writes.
pub const KEYRING_FORMAT: u32 = 1;

/// The list of release keys, as signed by the root key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Keyring {
    /// Format version, 1.
    pub format: u32,
    /// The id of the root key that signs this keyring.
    pub root_key_id: KeyId,
    /// The release keys.
    pub keys: Vec<KeyringEntry>,
    /// Monotonic number of this keyring: each revocation signs a keyring with a higher one.
    /// 0 (the first keyring) is left out of the JSON, so keyrings from before sequences keep
    /// their signatures.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub sequence: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// One release key in a [`Keyring`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyringEntry {
    /// Id of `public`.
    pub key_id: KeyId,
    /// The release public key.
    pub public: PublicKey,
    /// A human name, such as "release-2026".
    pub name: String,
    /// Unix seconds from which this key is no longer accepted.
    pub not_after: u64,
}

impl KeyringEntry {
    /// An entry for `public`, computing its key id.
    pub fn new(public: PublicKey, name: impl Into<String>, not_after: u64) -> Self {
        KeyringEntry {
            key_id: public.key_id(),
            public,
            name: name.into(),
            not_after,
        }
    }

    /// Fails with [`TrustError::KeyExpired`] when `now >= not_after`.
    pub fn check_not_expired(&self, now: u64) -> Result<(), TrustError> {
        if now >= self.not_after {
            return Err(TrustError::KeyExpired {
                key_id: self.key_id.to_string(),
                not_after: self.not_after,
            });
        }
        Ok(())
    }
}

impl Keyring {
    /// The entry for `key_id`, if listed.
    pub fn find(&self, key_id: &KeyId) -> Option<&KeyringEntry> {
        self.keys.iter().find(|k| &k.key_id == key_id)
    }

    /// Checks the format, that every key id matches its key, and that ids are unique.
    pub fn validate(&self) -> Result<(), TrustError> {
        if self.format != KEYRING_FORMAT {
            return Err(TrustError::malformed(
                "keyring",
                format!(
                    "format {} is not supported (this build reads format {KEYRING_FORMAT}); \
                     update the appliance software first",
                    self.format
                ),
            ));
        }
        let mut seen = BTreeSet::new();
        for entry in &self.keys {
            if entry.public.key_id() != entry.key_id {
                return Err(TrustError::malformed(
                    "keyring",
                    format!(
                        "entry {:?} says key_id {} but its key's id is {}; regenerate the keyring",
                        entry.name,
                        entry.key_id,
                        entry.public.key_id()
                    ),
                ));
            }
            if !seen.insert(&entry.key_id) {
                return Err(TrustError::malformed(
                    "keyring",
                    format!("key {} is listed twice; list each key once", entry.key_id),
                ));
            }
        }
        Ok(())
    }
}

/// A [`Keyring`] with the root key's signature over its canonical bytes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SignedKeyring {
    /// The signed keyring.
    pub keyring: Keyring,
    /// The root's ed25519 signature over `to_canonical_bytes(&keyring)`, 128 hex characters.
    pub signature: String,
}

impl SignedKeyring {
    /// Builds and signs the first keyring (sequence 0) listing `keys` with `root`.
    pub fn create(root: &SigningKeyPair, keys: Vec<KeyringEntry>) -> Result<Self, TrustError> {
        SignedKeyring::create_with_sequence(root, 0, keys)
    }

    /// Builds and signs a keyring with `sequence` listing `keys` with `root`.
    pub fn create_with_sequence(
        root: &SigningKeyPair,
        sequence: u64,
        keys: Vec<KeyringEntry>,
    ) -> Result<Self, TrustError> {
        let keyring = Keyring {
            format: KEYRING_FORMAT,
            root_key_id: root.key_id(),
            keys,
            sequence,
        };
        keyring.validate()?;
        let signature = hex::encode(root.sign(&to_canonical_bytes(&keyring)?));
        Ok(SignedKeyring { keyring, signature })
    }

    /// The next keyring: this one without release key `key_id` (and with `replacement`
    /// added, if given), sequence + 1, signed by `root`, which must be the root that signed
    /// this one. Refused if `key_id` is not listed, or if no release key would be left (then
    /// nothing could sign an update).
    pub fn revoke(
        &self,
        root: &SigningKeyPair,
        key_id: &KeyId,
        replacement: Option<KeyringEntry>,
    ) -> Result<SignedKeyring, TrustError> {
        let current = self.verify(&root.public())?;
        if current.find(key_id).is_none() {
            return Err(TrustError::UnknownKey {
                key_id: key_id.to_string(),
            });
        }
        let mut keys: Vec<KeyringEntry> = current
            .keys
            .iter()
            .filter(|k| &k.key_id != key_id)
            .cloned()
            .collect();
        keys.extend(replacement);
        if keys.is_empty() {
            return Err(TrustError::malformed(
                "the revoked keyring",
                format!(
                    "revoking {key_id} leaves no release key, so nothing could sign an update; \
                     revoke it with a replacement key"
                ),
            ));
        }
        SignedKeyring::create_with_sequence(root, current.sequence + 1, keys)
    }

    /// Verifies the keyring against the trusted `root` key and returns it.
    ///
    /// A keyring naming another root fails with [`TrustError::UnknownKey`]; a signature that
    /// does not verify with [`TrustError::BadSignature`]; a structurally wrong keyring with
    /// [`TrustError::Malformed`]. Expiry is checked per key by the caller, at use.
    pub fn verify(&self, root: &PublicKey) -> Result<&Keyring, TrustError> {
        if self.keyring.root_key_id != root.key_id() {
            return Err(TrustError::UnknownKey {
                key_id: self.keyring.root_key_id.to_string(),
            });
        }
        let bytes = to_canonical_bytes(&self.keyring)?;
        root.verify_hex(&bytes, &self.signature, "keyring")?;
        self.keyring.validate()?;
        Ok(&self.keyring)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snakeoil(seed: u8) -> SigningKeyPair {
        SigningKeyPair::from_secret_bytes(&[seed; 32])
    }

    fn keyring() -> (SigningKeyPair, SigningKeyPair, SignedKeyring) {
        let root = snakeoil(1);
        let release = snakeoil(2);
        let signed = SignedKeyring::create(
            &root,
            vec![KeyringEntry::new(
                release.public(),
                "release-snakeoil",
                2_000_000_000,
            )],
        )
        .unwrap();
        (root, release, signed)
    }

    #[test]
    fn create_and_verify() {
        let (root, release, signed) = keyring();
        let ring = signed.verify(&root.public()).unwrap();
        let entry = ring.find(&release.key_id()).unwrap();
        assert_eq!(entry.public, release.public());
        assert_eq!(ring.root_key_id, root.key_id());
    }

    #[test]
    fn survives_json_round_trip() {
        let (root, _, signed) = keyring();
        let json = serde_json::to_vec_pretty(&signed).unwrap();
        let back: SignedKeyring = serde_json::from_slice(&json).unwrap();
        back.verify(&root.public()).unwrap();
    }

    #[test]
    fn wrong_root_is_unknown_key() {
        let (root, _, signed) = keyring();
        let err = signed.verify(&snakeoil(9).public()).unwrap_err();
        assert!(
            matches!(err, TrustError::UnknownKey { ref key_id } if *key_id == root.key_id().to_string()),
            "{err}"
        );
    }

    #[test]
    fn added_key_breaks_signature() {
        let (root, _, mut signed) = keyring();
        signed.keyring.keys.push(KeyringEntry::new(
            snakeoil(3).public(),
            "attacker",
            u64::MAX,
        ));
        let err = signed.verify(&root.public()).unwrap_err();
        assert!(
            matches!(err, TrustError::BadSignature { ref what } if what == "keyring"),
            "{err}"
        );
    }

    #[test]
    fn extended_expiry_breaks_signature() {
        let (root, _, mut signed) = keyring();
        signed.keyring.keys[0].not_after = u64::MAX;
        assert!(matches!(
            signed.verify(&root.public()),
            Err(TrustError::BadSignature { .. })
        ));
    }

    #[test]
    fn forged_root_id_with_other_key_fails() {
        // Someone signs with their own key but claims the real root's id.
        let (root, _, mut signed) = keyring();
        let attacker = snakeoil(4);
        let sig = attacker.sign(&to_canonical_bytes(&signed.keyring).unwrap());
        signed.signature = hex::encode(sig);
        assert!(matches!(
            signed.verify(&root.public()),
            Err(TrustError::BadSignature { .. })
        ));
        signed.signature = "00".into();
        assert!(matches!(
            signed.verify(&root.public()),
            Err(TrustError::BadSignature { .. })
        ));
    }

    #[test]
    fn mismatched_or_duplicate_entries_are_refused() {
        let root = snakeoil(1);
        let mut entry = KeyringEntry::new(snakeoil(2).public(), "a", 10);
        entry.key_id = snakeoil(3).key_id();
        let err = SignedKeyring::create(&root, vec![entry]).unwrap_err();
        assert!(matches!(err, TrustError::Malformed { .. }), "{err}");
        let e = KeyringEntry::new(snakeoil(2).public(), "a", 10);
        let err = SignedKeyring::create(&root, vec![e.clone(), e]).unwrap_err();
        assert!(err.to_string().contains("listed twice"), "{err}");
    }

    #[test]
    fn unknown_fields_are_refused() {
        let (_, _, signed) = keyring();
        let mut value = serde_json::to_value(&signed).unwrap();
        value["keyring"]["extra"] = serde_json::json!(1);
        assert!(serde_json::from_value::<SignedKeyring>(value).is_err());
    }

    #[test]
    fn keyrings_without_a_sequence_keep_their_signature_and_read_as_sequence_0() {
        let (root, _, signed) = keyring();
        let json = serde_json::to_value(&signed).unwrap();
        assert!(json["keyring"].get("sequence").is_none(), "{json}");
        let back: SignedKeyring = serde_json::from_value(json).unwrap();
        assert_eq!(back.verify(&root.public()).unwrap().sequence, 0);
    }

    #[test]
    fn revoking_drops_the_key_raises_the_sequence_and_is_signed_by_the_root() {
        let (root, release, signed) = keyring();
        let spare = KeyringEntry::new(snakeoil(5).public(), "release-spare", 2_000_000_000);
        let next = signed
            .revoke(&root, &release.key_id(), Some(spare.clone()))
            .unwrap();
        let ring = next.verify(&root.public()).unwrap();
        assert_eq!(ring.sequence, 1);
        assert!(ring.find(&release.key_id()).is_none());
        assert_eq!(ring.keys, std::slice::from_ref(&spare));
        // The sequence is signed: lowering it breaks the signature.
        let mut forged = next.clone();
        forged.keyring.sequence = 0;
        assert!(matches!(
            forged.verify(&root.public()),
            Err(TrustError::BadSignature { .. })
        ));
        // Not listed, the last key, or another root: refused.
        let err = next.revoke(&root, &release.key_id(), None).unwrap_err();
        assert!(matches!(err, TrustError::UnknownKey { .. }), "{err}");
        let err = next.revoke(&root, &spare.key_id, None).unwrap_err();
        assert!(err.to_string().contains("leaves no release key"), "{err}");
        let err = next.revoke(&snakeoil(9), &spare.key_id, None).unwrap_err();
        assert!(matches!(err, TrustError::UnknownKey { .. }), "{err}");
    }

    #[test]
    fn expiry_boundary() {
        let entry = KeyringEntry::new(snakeoil(2).public(), "a", 100);
        entry.check_not_expired(99).unwrap();
        assert!(matches!(
            entry.check_not_expired(100),
            Err(TrustError::KeyExpired { not_after: 100, .. })
        ));
    }
}
