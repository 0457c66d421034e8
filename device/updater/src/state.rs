//! Device state owned by `aperture-update`: the record of area [`Area::Update`] of the device
//! state store ([`crate::store`]), holding the anti-rollback floor, the committed slot and the
//! install journal, as JSON:
//!
//! ```json
//! {"format":1,"security_floor":4,"keyring_sequence":1,"committed":"a","journal":null}
//! ```
//!
//! Unknown fields are ignored on purpose (unlike signed documents): after a rollback an OLDER
//! updater reads the state a newer one wrote, and it must still find the floor. The floor and
//! the keyring sequence are only ever raised ([`DeviceState::raise_floor`],
//! [`DeviceState::raise_keyring_sequence`]), and only when a slot is committed.
//!
//! ## The journal
//! Written (durably) after the bundle passed every header and policy check and BEFORE the
//! target slot is invalidated; cleared after the slot is armed. Its presence at a later run
//! means an install was cut off; see [`crate::lifecycle`] for what happens then.

use serde::{Deserialize, Serialize};

use aperture_appliance::store::{Medium, StoreError, HEADER_BYTES};
use aperture_appliance::Area;
use aperture_slots::Slot;

use crate::store::Store;
use crate::UpdateError;

/// Where a loaded [`DeviceState`] came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    /// The record in the store.
    Record,
    /// Nothing was ever written to the area: a freshly flashed device.
    Blank,
    /// The area holds bytes but no valid record: only tampering (or a failing medium) does
    /// that, since a power cut leaves one copy intact. The floor and the journal are lost.
    Lost {
        /// What was found.
        reason: String,
    },
}

/// The record format this build writes.
pub const STATE_FORMAT: u32 = 1;

/// The record of [`Area::Update`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceState {
    /// Format version, 1.
    #[serde(default = "format_one")]
    pub format: u32,
    /// The lowest `security_version` an update may have.
    #[serde(default)]
    pub security_floor: u64,
    /// The highest keyring sequence committed: bundles signed under an older keyring are
    /// refused (a release key missing from a newer keyring is revoked).
    #[serde(default)]
    pub keyring_sequence: u64,
    /// The newest signed time this device has seen (unix seconds): the signed build time of
    /// every bundle that passed its checks, and of every image committed. Key expiry is judged
    /// against the latest of this, the clock and the running image's build time.
    #[serde(default)]
    pub trusted_time: u64,
    /// The slot last committed by `commit` (the health gate), if any.
    #[serde(default)]
    pub committed: Option<Slot>,
    /// The install in progress, if one was started and not finished.
    #[serde(default)]
    pub journal: Option<Journal>,
}

fn format_one() -> u32 {
    STATE_FORMAT
}

/// What an install in progress writes, so a later run knows what was cut off.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Journal {
    /// The slot being written (never the one running when it started).
    pub target: Slot,
    /// The slot running when the install started.
    pub from: Slot,
    /// Product of the bundle.
    pub product: String,
    /// Version of the bundle.
    pub version: String,
    /// Its security version.
    pub security_version: u64,
    /// sha256 of the bundle's `manifest.json`.
    pub manifest_sha256: String,
    /// Where the bundle came from (file path or URL), so `resume --restart` can fetch it again.
    pub source: Option<String>,
    /// The extra CA certificate the download trusted, for the restart.
    #[serde(default)]
    pub ca: Option<std::path::PathBuf>,
    /// Whether plain http:// was allowed, for the restart.
    #[serde(default)]
    pub insecure_http: bool,
    /// Boot tries the slot gets when armed.
    pub tries: u32,
    /// When the install started, unix seconds.
    pub started: u64,
}

impl Journal {
    /// `installing target b, bundle 2.0.0/<manifest sha>`.
    pub fn summary(&self) -> String {
        format!(
            "installing target {}, bundle {}/{}",
            self.target, self.version, self.manifest_sha256
        )
    }
}

impl Default for DeviceState {
    fn default() -> Self {
        DeviceState {
            format: STATE_FORMAT,
            security_floor: 0,
            keyring_sequence: 0,
            trusted_time: 0,
            committed: None,
            journal: None,
        }
    }
}

impl DeviceState {
    /// Read the record; none is a fresh device (floor 0, nothing committed).
    pub fn load(store: &Store) -> Result<DeviceState, UpdateError> {
        Ok(DeviceState::load_with_origin(store)?.0)
    }

    /// Read the record and say where it came from. An area with no valid record reads as the
    /// defaults ([`Origin::Blank`] or [`Origin::Lost`]); the caller decides how loud to be.
    pub fn load_with_origin(store: &Store) -> Result<(DeviceState, Origin), UpdateError> {
        match store.read_json::<DeviceState>(Area::Update) {
            Ok(Some(state)) => Ok((state, Origin::Record)),
            Ok(None) if written(store)? => Ok((
                DeviceState::default(),
                Origin::Lost {
                    reason: format!(
                        "neither copy of area {} of {} is a valid record",
                        Area::Update.name(),
                        store.name()
                    ),
                },
            )),
            Ok(None) => Ok((DeviceState::default(), Origin::Blank)),
            Err(StoreError::Json { err, .. }) => Ok((
                DeviceState::default(),
                Origin::Lost {
                    reason: format!(
                        "the {} record of {} is not this program's format: {err}",
                        Area::Update.name(),
                        store.name()
                    ),
                },
            )),
            Err(e) => Err(e.into()),
        }
    }

    /// Write the record durably (one store write: the other copy, synced, read back).
    pub fn save(&self, store: &mut Store) -> Result<(), UpdateError> {
        let mut record = self.clone();
        record.format = STATE_FORMAT;
        store.write_json(Area::Update, &record)?;
        Ok(())
    }

    /// Raise the accepted keyring sequence to `sequence` if that is higher; returns whether it
    /// changed.
    pub fn raise_keyring_sequence(&mut self, sequence: u64) -> bool {
        if sequence > self.keyring_sequence {
            self.keyring_sequence = sequence;
            true
        } else {
            false
        }
    }

    /// Remember `signed` as a signed time seen, if it is the newest.
    pub fn saw_signed_time(&mut self, signed: u64) {
        self.trusted_time = self.trusted_time.max(signed);
    }

    /// Raise the floor to `security_version` if that is higher; returns whether it changed.
    pub fn raise_floor(&mut self, security_version: u64) -> bool {
        if security_version > self.security_floor {
            self.security_floor = security_version;
            true
        } else {
            false
        }
    }
}

/// Whether either copy of the area was ever written (its header is not all zeros).
fn written(store: &Store) -> Result<bool, UpdateError> {
    for copy in [0, 1] {
        let mut header = [0u8; HEADER_BYTES];
        store
            .medium()
            .read_at(&mut header, Area::Update.offset(copy))
            .map_err(|err| StoreError::Io {
                what: "reading",
                area: Area::Update.name(),
                medium: store.name().to_string(),
                err,
            })?;
        if header.iter().any(|b| *b != 0) {
            return Ok(true);
        }
    }
    Ok(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn raising_the_floor_only_goes_up() {
        let mut s = DeviceState::default();
        assert!(s.raise_floor(3));
        assert!(!s.raise_floor(2));
        assert_eq!(s.security_floor, 3);
    }

    #[test]
    fn unknown_fields_are_ignored_and_missing_ones_default() {
        let s: DeviceState =
            serde_json::from_str(r#"{"format":1,"security_floor":7,"future":true}"#).unwrap();
        assert_eq!(s.security_floor, 7);
        let s: DeviceState = serde_json::from_str("{}").unwrap();
        assert_eq!(s, DeviceState::default());
    }
}
