//! The initial content of the device state partition (`aperture_state`, see
//! `aperture_appliance::store`): what each slot of a fresh disk holds, as the updater would have
//! recorded it had it installed them. Everything else in the store starts empty (anti-rollback
//! floor 0, no journal), which the device programs read as a fresh appliance.
//!
//! The whole partition is written, zeros included, so that a flash onto a used device cannot
//! leave an earlier owner's state records readable in it.

use std::path::Path;

use anyhow::{Context, Result};
use aperture_appliance::store::{Area, StateStore, PARTITION_BYTES};
use aperture_appliance::Slot;
use aperture_trust::manifest::Manifest;
use aperture_trust::record::{InstalledSlot, SlotRecord};

/// Write the state partition image to `path`: both slots hold the slot artifacts of the signed
/// manifest `json` (signature `sig`).
pub fn write_initial(path: &Path, json: &[u8], sig: &[u8]) -> Result<()> {
    let manifest = Manifest::from_json_unverified(json)?;
    let installed = InstalledSlot {
        record: SlotRecord::from_manifest(&manifest)?,
        manifest: String::from_utf8(json.to_vec()).context("the signed manifest is not UTF-8")?,
        signature: String::from_utf8(sig.to_vec()).context("the signature is not UTF-8")?,
    };
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(path)
        .with_context(|| format!("creating {}", path.display()))?;
    file.set_len(PARTITION_BYTES)?;
    let mut store = StateStore::new(file, path.display().to_string())?;
    for slot in Slot::ALL {
        store.write_json(Area::slot(slot), &installed)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn manifest() -> Vec<u8> {
        let h = |s: &str| aperture_trust::digest::Sha256Hex::digest(s.as_bytes()).to_string();
        serde_json::to_vec(&serde_json::json!({
            "format": 1, "product": "p", "board": "qemu-x86_64", "version": "1.2.3",
            "security_version": 4,
            "build": {"source_date_epoch": 1, "recipe_sha256": h("r")},
            "artifacts": [{
                "name": "rootfs.img", "role": "rootfs", "size": 8192, "sha256": h("rootfs"),
                "verity": {"root_hash": h("root"), "salt": "00ff", "hash_offset": 4096,
                    "data_blocks": 1, "data_block_size": 4096, "hash_block_size": 4096,
                    "algorithm": "sha256", "uuid": "12345678-1234-1234-1234-123456789abc"}
            }]
        }))
        .unwrap()
    }

    #[test]
    fn both_slots_hold_the_signed_manifest_and_nothing_else_is_set() {
        let json = manifest();
        let m = Manifest::from_json_unverified(&json).unwrap();
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("state.img");
        write_initial(&p, &json, b"{\"sig\":1}").unwrap();
        let store = StateStore::open(&p).unwrap();
        for slot in Slot::ALL {
            let got: InstalledSlot = store.read_json(Area::slot(slot)).unwrap().unwrap();
            assert_eq!(got.manifest.as_bytes(), &json[..]);
            assert_eq!(got.record.version, m.version);
        }
        assert_eq!(store.read(Area::Update).unwrap(), None);
        assert_eq!(std::fs::metadata(&p).unwrap().len(), PARTITION_BYTES);
    }
}
