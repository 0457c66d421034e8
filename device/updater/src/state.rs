//! Device state owned by `aperture-update`: `/efi/aperture/state.json`, holding the
//! anti-rollback floor, the committed slot and the install journal.
//!
//! ```json
//! {"format":1,"security_floor":4,"committed":"a","journal":null}
//! ```
//!
//! Unknown fields are ignored on purpose (unlike signed documents): after a rollback an OLDER
//! updater reads the state a newer one wrote, and it must still find the floor. The floor is
//! only ever raised ([`DeviceState::raise_floor`]), and only when a slot is committed.
//!
//! ## The journal
//! Written (durably) after the bundle passed every header and policy check and BEFORE the
//! target slot is invalidated; cleared after the slot is armed. Its presence at a later run
//! means an install was cut off; see [`crate::lifecycle`] for what happens then.

use std::path::Path;

use serde::{Deserialize, Serialize};

use aperture_slots::Slot;

use crate::io::{replace_file, Io};
use crate::UpdateError;

/// The state file format this build writes.
pub const STATE_FORMAT: u32 = 1;

/// `state.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceState {
    /// Format version, 1.
    pub format: u32,
    /// The lowest `security_version` an update may have.
    pub security_floor: u64,
    /// The slot last committed by `mark-good` (the health gate), if any.
    #[serde(default)]
    pub committed: Option<Slot>,
    /// The install in progress, if one was started and not finished.
    #[serde(default)]
    pub journal: Option<Journal>,
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
            committed: None,
            journal: None,
        }
    }
}

impl DeviceState {
    /// Read `path`; a missing file is a fresh device (floor 0, nothing committed).
    pub fn load(path: &Path) -> Result<DeviceState, UpdateError> {
        let bytes = match std::fs::read(path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(DeviceState::default()),
            Err(e) => return Err(UpdateError::file("reading", path)(e)),
        };
        let state: DeviceState =
            serde_json::from_slice(&bytes).map_err(|e| UpdateError::Malformed {
                path: path.to_path_buf(),
                reason: format!(
                "{e}; it is written only by aperture-update: restore it from a backup or remove \
                 it (which resets the anti-rollback floor to 0 until the next commit)"
            ),
            })?;
        if state.format != STATE_FORMAT {
            return Err(UpdateError::Malformed {
                path: path.to_path_buf(),
                reason: format!(
                    "format {} is not {STATE_FORMAT}; a newer aperture-update wrote it",
                    state.format
                ),
            });
        }
        Ok(state)
    }

    /// Write durably through `io` (temp, fsync, rename, fsync folder).
    pub fn store(&self, io: &dyn Io, path: &Path) -> Result<(), UpdateError> {
        let mut bytes = serde_json::to_vec_pretty(self).map_err(|e| UpdateError::Malformed {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })?;
        bytes.push(b'\n');
        if let Some(dir) = path.parent().filter(|d| !d.is_dir()) {
            // A freshly flashed ESP may not have the folder yet (the image builder puts the
            // slot records there, but nothing requires them).
            io.create_dir_all(dir)
                .map_err(UpdateError::file("creating folder", dir))?;
        }
        replace_file(io, path, &bytes)
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::io::RealIo;

    #[test]
    fn missing_is_fresh_and_round_trips() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("state.json");
        let mut s = DeviceState::load(&p).unwrap();
        assert_eq!(s, DeviceState::default());
        assert!(s.raise_floor(3));
        assert!(!s.raise_floor(2));
        assert_eq!(s.security_floor, 3);
        s.store(&RealIo, &p).unwrap();
        assert_eq!(DeviceState::load(&p).unwrap(), s);
    }

    #[test]
    fn unknown_fields_are_kept_readable_and_bad_files_named() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("state.json");
        std::fs::write(&p, r#"{"format":1,"security_floor":7,"future":true}"#).unwrap();
        assert_eq!(DeviceState::load(&p).unwrap().security_floor, 7);
        std::fs::write(&p, "garbage").unwrap();
        let e = DeviceState::load(&p).unwrap_err().to_string();
        assert!(
            e.contains("state.json") && e.contains("anti-rollback"),
            "{e}"
        );
        std::fs::write(&p, r#"{"format":2,"security_floor":7}"#).unwrap();
        assert!(DeviceState::load(&p).is_err());
    }
}
