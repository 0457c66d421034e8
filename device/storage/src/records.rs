//! Where sealed keys are kept: twice, independently, and never on the ESP (issue 12: a power
//! cut corrupted the key blobs FAT held).
//!
//! 1. A **LUKS2 token** in the volume's own header ([`token_json`], [`find_token`]), which
//!    cryptsetup keeps in both header copies:
//!
//!    ```json
//!    {"type":"aperture-tpm2","keyslots":["0"],"aperture_format":1,"aperture_volume":"data",
//!     "tpm2_public":"<base64>","tpm2_private":"<base64>"}
//!    ```
//!
//!    or, on a board without a TPM, `"type":"aperture-unsafe-plain"` with `"key":"<base64>"`.
//! 2. The **`storage` record** of the device state ([`StorageRecord`] in
//!    [`aperture_appliance::Area::Storage`], two CRC'd copies on the raw `aperture_state`
//!    partition):
//!
//!    ```json
//!    {"format":1,"source":"tpm2","volumes":{"data":{"state":"ready",
//!     "uuid":"<LUKS2 UUID>","sealed":{"type":"aperture-tpm2","tpm2_public":"…","tpm2_private":"…"}}}}
//!    ```
//!
//!    `source` is the key source chosen at the first boot; it never changes while a volume
//!    holds a key sealed by it. A volume's `state` is `formatting` from before `luksFormat`
//!    (the first-boot journal: the UUID the header will carry and the sealed key it will
//!    open with) until its file system is made and its LUKS2 label set, then `ready`.
//!
//! Either copy unseals the key (the token first); a missing or damaged one is written again
//! from the other.
//!
//! Volumes formatted by an older Aperture have neither: their sealed key is in files on the
//! ESP ([`legacy_esp_key`]). Such a key is moved once into both places, then its files are
//! removed.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use aperture_appliance::store::{Medium, StateStore};
use aperture_appliance::{Area, Files};
use serde::{Deserialize, Serialize};

use crate::keys::{KeySourceKind, SealedKey};
use crate::luks::HeaderCopy;
use crate::volume::{wipe_pending_in, Volume};
use crate::StorageError;

/// Format of the `storage` record and of our tokens.
pub const RECORD_FORMAT: u32 = 1;

/// Where a volume is in its first boot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum VolumeState {
    /// Journaled before `luksFormat`: the header may be missing, torn, or lack its token or
    /// file system. Nothing was ever stored on the volume.
    Formatting,
    /// Formatted, file system made, label set: holds data, never formatted again.
    Ready,
}

/// What the device state records of one volume.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VolumeRecord {
    /// Where it is in its first boot.
    pub state: VolumeState,
    /// The UUID of its LUKS2 header (given to `luksFormat --uuid`).
    pub uuid: String,
    /// Its sealed key.
    pub sealed: SealedKey,
}

/// The `storage` record of the device state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StorageRecord {
    /// [`RECORD_FORMAT`].
    pub format: u32,
    /// The key source chosen at the first boot.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<KeySourceKind>,
    /// Per volume.
    #[serde(default)]
    pub volumes: BTreeMap<Volume, VolumeRecord>,
}

impl Default for StorageRecord {
    fn default() -> Self {
        StorageRecord {
            format: RECORD_FORMAT,
            source: None,
            volumes: BTreeMap::new(),
        }
    }
}

/// The token JSON for `sealed` protecting keyslot `keyslot` of `volume`.
pub fn token_json(volume: Volume, keyslot: &str, sealed: &SealedKey) -> Vec<u8> {
    let mut value = serde_json::to_value(sealed).unwrap_or_default();
    if let Some(obj) = value.as_object_mut() {
        obj.insert("keyslots".into(), serde_json::json!([keyslot]));
        obj.insert("aperture_format".into(), RECORD_FORMAT.into());
        obj.insert("aperture_volume".into(), volume.label().into());
    }
    value.to_string().into_bytes()
}

/// Our token in a header copy: its id, and the sealed key or why it cannot be read.
#[derive(Debug, Clone)]
pub struct FoundToken {
    /// Token id in the header.
    pub id: String,
    /// The key source its type names.
    pub kind: KeySourceKind,
    /// The sealed key, or why the token is damaged.
    pub sealed: Result<SealedKey, String>,
}

/// The first token of ours (type `aperture-tpm2` or `aperture-unsafe-plain`) in `copy`.
pub fn find_token(copy: &HeaderCopy) -> Option<FoundToken> {
    copy.tokens.iter().find_map(|(id, token)| {
        let kind = match token.get("type")?.as_str()? {
            t if t == KeySourceKind::Tpm2.token_type() => KeySourceKind::Tpm2,
            t if t == KeySourceKind::UnsafePlain.token_type() => KeySourceKind::UnsafePlain,
            _ => return None,
        };
        let mut fields = token.clone();
        if let Some(obj) = fields.as_object_mut() {
            for k in ["keyslots", "aperture_format", "aperture_volume"] {
                obj.remove(k);
            }
        }
        Some(FoundToken {
            id: id.clone(),
            kind,
            sealed: serde_json::from_value(fields).map_err(|e| e.to_string()),
        })
    })
}

/// The sealed key an older Aperture kept for `volume` in files on the ESP
/// (`/efi/aperture/keys/<volume>.tpm2.pub` and `.priv`, or `<volume>.key` unsealed), and those
/// files; `None` if there are none, or they cannot be read (FAT may have lost them).
pub fn legacy_esp_key(files: &Files, volume: Volume) -> Option<(SealedKey, Vec<PathBuf>)> {
    let dir = files.esp().join("aperture").join("keys");
    let read = |p: &Path| match aperture_sys::fs::read_optional(p) {
        Ok(bytes) => bytes,
        Err(e) => {
            tracing::warn!("{volume}: an older key file cannot be read: {e}");
            None
        }
    };
    let (public, private) = (
        dir.join(format!("{volume}.tpm2.pub")),
        dir.join(format!("{volume}.tpm2.priv")),
    );
    if let (Some(tpm2_public), Some(tpm2_private)) = (read(&public), read(&private)) {
        // Sealed by an older Aperture: the templates without `noda`.
        let sealed = SealedKey::Tpm2 {
            tpm2_public,
            tpm2_private,
            noda: false,
            boot: None,
        };
        return Some((sealed, vec![public, private]));
    }
    let plain = dir.join(format!("{volume}.key"));
    let key = read(&plain)?;
    Some((SealedKey::UnsafePlain { key }, vec![plain]))
}

/// Storage's part of the device state store: its own `storage` area, which it reads and
/// writes, and the `reset` area, which it only reads (is a wipe pending?). aperture-reset
/// [`StorageState::forget`]s a volume when it wipes it.
pub struct StorageState {
    store: RefCell<StateStore<Box<dyn Medium>>>,
}

impl std::fmt::Debug for StorageState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "StorageState({})", self.name())
    }
}

impl StorageState {
    /// On an open store.
    pub fn new(store: StateStore<Box<dyn Medium>>) -> StorageState {
        StorageState {
            store: RefCell::new(store),
        }
    }

    /// On the store partition (or file) at `path`.
    pub fn open(path: &Path) -> Result<StorageState, StorageError> {
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .map_err(StorageError::io("opening the device state", path))?;
        let medium: Box<dyn Medium> = Box::new(file);
        Ok(StorageState::new(StateStore::new(
            medium,
            path.display().to_string(),
        )?))
    }

    /// The store's name (its partition).
    pub fn name(&self) -> String {
        self.store.borrow().name().to_string()
    }

    /// The `storage` record; an empty one if none was ever written.
    pub fn load(&self) -> Result<StorageRecord, StorageError> {
        let record: Option<StorageRecord> = self.store.borrow().read_json(Area::Storage)?;
        let record = record.unwrap_or_default();
        if record.format != RECORD_FORMAT {
            return Err(StorageError::malformed(
                format!("the storage record of the device state ({})", self.name()),
                format!(
                    "format {} is not {RECORD_FORMAT}: it was written by another Aperture",
                    record.format
                ),
            ));
        }
        Ok(record)
    }

    /// Replace the `storage` record, durably.
    pub fn save(&self, record: &StorageRecord) -> Result<(), StorageError> {
        self.store.borrow_mut().write_json(Area::Storage, record)?;
        Ok(())
    }

    /// Drop what the record holds of `volume` (aperture-reset, after wiping it). With no
    /// volume left the key source is forgotten too: the next first boot chooses again.
    pub fn forget(&self, volume: Volume) -> Result<(), StorageError> {
        let mut record = self.load()?;
        let removed = record.volumes.remove(&volume).is_some();
        // With the last volume gone the key source goes too: the next first boot chooses again.
        let cleared = record.volumes.is_empty() && record.source.take().is_some();
        if !removed && !cleared {
            return Ok(());
        }
        if record.volumes.is_empty() {
            // Nothing left: empty both copies of the area, so that neither keeps a sealed key.
            let mut store = self.store.borrow_mut();
            store.write(Area::Storage, &[])?;
            store.write(Area::Storage, &[])?;
            return Ok(());
        }
        self.save(&record)
    }

    /// Whether the `reset` area says a wipe is pending (same contract as the reset journal
    /// file: a JSON object with a boolean `wipe_pending`; an unreadable record counts as
    /// pending).
    pub fn reset_wipe_pending(&self) -> Result<bool, StorageError> {
        Ok(self
            .store
            .borrow()
            .read(Area::Reset)?
            .map(|bytes| wipe_pending_in(&bytes))
            .unwrap_or(false))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use aperture_appliance::store::mem::MemMedium;
    use aperture_appliance::store::PARTITION_BYTES;

    fn state() -> (StorageState, MemMedium) {
        let mem = MemMedium::zeroed(PARTITION_BYTES);
        let medium: Box<dyn Medium> = Box::new(mem.clone());
        (
            StorageState::new(StateStore::new(medium, "mem").unwrap()),
            mem,
        )
    }

    fn sealed() -> SealedKey {
        SealedKey::Tpm2 {
            tpm2_public: vec![1, 2],
            tpm2_private: vec![3],
            noda: true,
            boot: None,
        }
    }

    #[test]
    fn record_round_trips_as_the_documented_json() {
        let (s, _) = state();
        assert_eq!(s.load().unwrap(), StorageRecord::default());
        let mut r = StorageRecord {
            source: Some(KeySourceKind::Tpm2),
            ..StorageRecord::default()
        };
        r.volumes.insert(
            Volume::Data,
            VolumeRecord {
                state: VolumeState::Formatting,
                uuid: "u".into(),
                sealed: sealed(),
            },
        );
        s.save(&r).unwrap();
        assert_eq!(s.load().unwrap(), r);
        assert_eq!(
            serde_json::to_string(&r).unwrap(),
            r#"{"format":1,"source":"tpm2","volumes":{"data":{"state":"formatting","uuid":"u","sealed":{"type":"aperture-tpm2","tpm2_public":"AQI=","tpm2_private":"Aw==","noda":true}}}}"#
        );
    }

    /// A record with both volumes ready, keys from `source`.
    fn both_ready(source: Option<KeySourceKind>) -> StorageRecord {
        let mut r = StorageRecord {
            source,
            ..StorageRecord::default()
        };
        for v in Volume::ALL {
            let rec = VolumeRecord {
                state: VolumeState::Ready,
                uuid: v.label().into(),
                sealed: sealed(),
            };
            r.volumes.insert(v, rec);
        }
        r
    }

    #[test]
    fn forget_drops_the_volume_then_the_source() {
        let (s, _) = state();
        s.save(&both_ready(Some(KeySourceKind::Tpm2))).unwrap();
        s.forget(Volume::Config).unwrap();
        let after = s.load().unwrap();
        assert_eq!(after.volumes.keys().collect::<Vec<_>>(), [&Volume::Data]);
        assert_eq!(after.source, Some(KeySourceKind::Tpm2));
        s.forget(Volume::Data).unwrap();
        s.forget(Volume::Data).unwrap();
        assert_eq!(s.load().unwrap(), StorageRecord::default());
    }

    /// A record without a key source (an older one, or a first boot cut before the source
    /// was chosen): forgetting the last volume must still be written (level 3 relies on it;
    /// the privileged storage suite found it kept).
    #[test]
    fn forgetting_the_last_volume_is_saved_without_a_source() {
        let (s, _) = state();
        s.save(&both_ready(None)).unwrap();
        for v in Volume::ALL {
            s.forget(v).unwrap();
        }
        assert_eq!(s.load().unwrap(), StorageRecord::default());
        // No copy of the area keeps a sealed key.
        let store = s.store.borrow();
        for copy in 0..2 {
            let c = store.copy(Area::Storage, copy).unwrap();
            assert!(c.is_none_or(|c| c.payload.is_empty()), "copy {copy}");
        }
    }

    #[test]
    fn tokens_carry_the_sealed_key_and_are_found_again() {
        let token = token_json(Volume::Data, "0", &sealed());
        let value: serde_json::Value = serde_json::from_slice(&token).unwrap();
        assert_eq!(
            value.to_string(),
            r#"{"aperture_format":1,"aperture_volume":"data","keyslots":["0"],"noda":true,"tpm2_private":"Aw==","tpm2_public":"AQI=","type":"aperture-tpm2"}"#
        );
        let mut copy = HeaderCopy {
            offset: 0,
            seqid: 1,
            uuid: "u".into(),
            label: None,
            header: crate::luks::LuksHeader {
                version: 2,
                hdr_size: 16384,
                keyslots_size: None,
                keyslot_areas: Vec::new(),
                data_offset: None,
            },
            keyslots: vec!["0".into()],
            tokens: BTreeMap::new(),
        };
        copy.tokens.insert(
            "0".into(),
            serde_json::json!({"type": "systemd-tpm2", "keyslots": ["0"]}),
        );
        assert!(
            find_token(&copy).is_none(),
            "other programs' tokens are not ours"
        );
        copy.tokens.insert("1".into(), value);
        let found = find_token(&copy).unwrap();
        assert_eq!((found.id.as_str(), found.kind), ("1", KeySourceKind::Tpm2));
        assert_eq!(found.sealed.unwrap(), sealed());
        copy.tokens.insert(
            "1".into(),
            serde_json::json!({"type": "aperture-tpm2", "keyslots": ["0"], "tpm2_public": "%%"}),
        );
        assert!(find_token(&copy).unwrap().sealed.is_err(), "damaged");
    }

    #[test]
    fn reset_area_is_read_with_the_journal_contract() {
        let (s, mem) = state();
        assert!(!s.reset_wipe_pending().unwrap());
        let medium: Box<dyn Medium> = Box::new(mem);
        let mut store = StateStore::new(medium, "mem").unwrap();
        store
            .write(Area::Reset, br#"{"wipe_pending":true}"#)
            .unwrap();
        assert!(s.reset_wipe_pending().unwrap());
        store
            .write(Area::Reset, br#"{"wipe_pending":false}"#)
            .unwrap();
        assert!(!s.reset_wipe_pending().unwrap());
    }
}
