//! Aperture's chain of trust, shared by the build host and the appliance: keys, signed
//! manifests, update bundles, dm-verity trees and the update policy.
//!
//! It runs on the appliance, so it stays small: no async, no TLS, no C library but zstd.
//!
//! # Formats
//!
//! * **Keys** ([`keys`]): ed25519. A key id is the hex of the first 8 bytes of
//!   sha256(public key). Key files are JSON tagged `aperture-ed25519-secret` (mode 0600) or
//!   `aperture-ed25519-public`.
//! * **Keyring** ([`keys::SignedKeyring`]): the appliance image bakes in one root public key.
//!   The root signs a keyring listing release keys with their expiry (`not_after`, unix
//!   seconds), so release keys rotate without reflashing.
//! * **Canonical JSON** ([`canonical`]): what signatures cover. Keys sorted, no whitespace,
//!   integers only, unique keys.
//! * **Manifest** ([`manifest::Manifest`]): `manifest.json`, format 1: product, board, semver
//!   version, `security_version` (anti-rollback), build facts, and every artifact with role,
//!   size, sha256, optional dm-verity parameters (rootfs) and optional bundle payload.
//!   Unknown fields are refused everywhere.
//! * **Signature** ([`signing`]): `manifest.sig`, format 1: the release key id, its ed25519
//!   signature over the canonical manifest, and the root-signed keyring. Verification takes
//!   the current time as an argument.
//! * **Bundle** ([`bundle`]): an uncompressed ustar archive: `manifest.json`, `manifest.sig`,
//!   then `<artifact>.zst` for each payload artifact in manifest order. Read in one streaming
//!   pass; the signature is verified before any payload byte is read.
//! * **Model bundle** ([`model`]): a detection model's folder and its signed `model.json`
//!   (name, version, every file's size and sha256), signed like `manifest.json` under the same
//!   keyring; installed into the data partition without an OS update.
//! * **dm-verity** ([`verity`]): the tree `veritysetup format` appends to a rootfs image
//!   (format 1, sha256, 4096-byte blocks), byte for byte.
//!
//! # Order of checks on the appliance
//!
//! [`bundle::BundleReader::read_header`] (signature chain, expiry) →
//! [`policy::check_update`] (board, version, security floor) → nothing written before this →
//! [`bundle::BundleReader::for_each_payload`] (names, sizes, hashes while streaming) →
//! [`verity::VerityCheck`] (or [`verity::verify_device`]) on the written slot, read back.

pub mod bundle;
pub mod canonical;
pub mod delta;
pub mod digest;
mod error;
mod keyring;
pub mod keys;
pub mod manifest;
pub mod model;
mod names;
pub mod policy;
pub mod record;
pub mod signing;
pub mod verity;

pub use error::{TrustError, UnixTime};

/// Seconds since the Unix epoch by the system clock; 0 if the clock is before 1970.
///
/// Library functions take the time as an argument instead of calling this, so tests and
/// offline checks can choose it. Note that an appliance whose clock is wrong will judge key
/// expiry by that wrong clock.
pub fn now_unix() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    #[test]
    fn now_is_after_2024() {
        assert!(super::now_unix() > 1_704_067_200);
    }
}
