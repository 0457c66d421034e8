//! Slot records: what is installed in a slot. [`InstalledSlot`] is the document kept for each
//! slot in the device state store (area `slot-a`/`slot-b` of the `aperture_state` partition,
//! see `aperture_appliance::store`): the [`SlotRecord`] and the exact bytes of the signed
//! manifest and signature it was installed from. The image builder writes one for each slot of
//! a fresh disk; the updater (and reset, through the updater's installer) writes one for every
//! slot it installs, and only then. Reset and status read them to re-verify a slot and to
//! report versions.
//!
//! A record is a copy of what a signed manifest said; it is not signed itself. Whoever relies
//! on it checks the signed manifest kept beside it, and that the record agrees with it.

use serde::{Deserialize, Serialize};

use crate::digest::Sha256Hex;
use crate::manifest::{Manifest, Role};
use crate::verity::VerityInfo;
use crate::TrustError;

/// Size and hash of one file of a slot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileRecord {
    /// Artifact name in the manifest.
    pub name: String,
    /// Bytes.
    pub size: u64,
    /// sha256.
    pub sha256: Sha256Hex,
}

/// What a slot holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SlotRecord {
    /// Format version, 1.
    pub format: u32,
    /// Product.
    pub product: String,
    /// Board.
    pub board: String,
    /// Image version.
    pub version: semver::Version,
    /// Anti-rollback counter of the image.
    pub security_version: u64,
    /// The rootfs image in the slot's partition.
    pub rootfs: FileRecord,
    /// Its verity parameters.
    pub verity: VerityInfo,
    /// The other slot files (kernel, initrd, device tree, ...), by role.
    pub boot_files: Vec<(Role, FileRecord)>,
}

impl SlotRecord {
    /// The record of a manifest's slot artifacts.
    pub fn from_manifest(m: &Manifest) -> Result<SlotRecord, TrustError> {
        let rootfs = m
            .artifacts
            .iter()
            .find(|a| a.role == Role::Rootfs)
            .ok_or_else(|| TrustError::malformed("manifest.json", "it lists no rootfs artifact"))?;
        let verity = rootfs.verity.clone().ok_or_else(|| {
            TrustError::malformed(
                "manifest.json",
                "the rootfs artifact has no verity parameters",
            )
        })?;
        let file = |a: &crate::manifest::Artifact| FileRecord {
            name: a.name.to_string(),
            size: a.size,
            sha256: a.sha256.clone(),
        };
        let boot_files = m
            .artifacts
            .iter()
            .filter(|a| a.role.is_slot_content() && a.role != Role::Rootfs)
            .map(|a| (a.role, file(a)))
            .collect();
        Ok(SlotRecord {
            format: 1,
            product: m.product.clone(),
            board: m.board.clone(),
            version: m.version.clone(),
            security_version: m.security_version,
            rootfs: file(rootfs),
            verity,
            boot_files,
        })
    }

    /// The boot file of a role, if the slot has one.
    pub fn boot_file(&self, role: Role) -> Option<&FileRecord> {
        self.boot_files
            .iter()
            .find(|(r, _)| *r == role)
            .map(|(_, f)| f)
    }

    /// Pretty JSON with a trailing newline.
    pub fn to_json(&self) -> Vec<u8> {
        let mut v = serde_json::to_vec_pretty(self).unwrap_or_default();
        v.push(b'\n');
        v
    }

    /// Parse a record.
    pub fn from_json(bytes: &[u8]) -> Result<SlotRecord, TrustError> {
        let r: SlotRecord =
            serde_json::from_slice(bytes).map_err(|e| TrustError::malformed("slot record", e))?;
        if r.format != 1 {
            return Err(TrustError::malformed(
                "slot record",
                format!("format {} is not 1", r.format),
            ));
        }
        Ok(r)
    }
}

/// What the device state store keeps for one slot: its record and the signed manifest it was
/// installed from, byte for byte as verified (so the signature can be checked again).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InstalledSlot {
    /// What the slot holds.
    pub record: SlotRecord,
    /// `manifest.json`, exactly as signed.
    pub manifest: String,
    /// `manifest.sig`, exactly as read.
    pub signature: String,
}
