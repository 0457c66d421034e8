//! The two encrypted volumes ([`Volume`]), where each one's partition, mapping and mount point
//! are on an appliance, and the guard that keeps them locked while a factory reset is half done
//! ([`reset_wipe_pending`]).

use std::path::{Path, PathBuf};

use aperture_appliance::{Board, Files, Role};
use serde::{Deserialize, Serialize};

use crate::StorageError;

/// One encrypted volume.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Volume {
    /// `config`: device identity and network configuration.
    Config,
    /// `data`: applications, models, logs; the last partition, grown on first boot.
    Data,
}

impl Volume {
    /// Both, in the order they are set up (and wiped).
    pub const ALL: [Volume; 2] = [Volume::Config, Volume::Data];

    /// The volume's name: its mount folder, ext4 label, LUKS2 label once set up, and its key
    /// in the device state. Its GPT label is [`Volume::partition`] (`UDA` for data on
    /// Jetson boards).
    pub fn label(self) -> &'static str {
        match self {
            Volume::Config => "config",
            Volume::Data => "data",
        }
    }

    /// The partition role.
    pub fn role(self) -> Role {
        match self {
            Volume::Config => Role::Config,
            Volume::Data => Role::Data,
        }
    }

    /// The GPT label of its partition on `board`.
    pub fn partition(self, board: Board) -> &'static str {
        board.partition(self.role())
    }

    /// The dm-crypt mapping name.
    pub fn mapper_name(self) -> &'static str {
        match self {
            Volume::Config => "aperture-config",
            Volume::Data => "aperture-data",
        }
    }

    /// Where it is mounted (`/config`, `/data`).
    pub fn mount_point(self, files: &Files) -> PathBuf {
        match self {
            Volume::Config => files.config_mount(),
            Volume::Data => files.data_mount(),
        }
    }
}

impl std::fmt::Display for Volume {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.label())
    }
}

/// `/data/var`: `/var`'s persistent overlay (`upper` and `work` inside).
pub fn var_dir(files: &Files) -> PathBuf {
    Volume::Data.mount_point(files).join("var")
}

/// The reset journal aperture-reset keeps on the ESP (`/efi/aperture/reset.json`) until it
/// keeps it in the device state's `reset` area; storage honours both.
pub fn reset_journal(files: &Files) -> PathBuf {
    files.esp().join("aperture").join("reset.json")
}

/// Whether a reset journal says a wipe is pending. The journal belongs to aperture-reset; the
/// contract is one boolean field, `wipe_pending`, of a JSON object. A journal that cannot be
/// parsed counts as pending: unlocking data that a reset meant to destroy is the worse error.
pub fn wipe_pending_in(bytes: &[u8]) -> bool {
    #[derive(Deserialize)]
    struct Marker {
        #[serde(default)]
        wipe_pending: bool,
    }
    serde_json::from_slice::<Marker>(bytes)
        .map(|m| m.wipe_pending)
        .unwrap_or(true)
}

/// Whether the reset journal file at `path` says a wipe is pending ([`wipe_pending_in`]);
/// `false` if there is none.
pub fn reset_wipe_pending(path: &Path) -> Result<bool, StorageError> {
    Ok(aperture_sys::fs::read_optional(path)?
        .map(|bytes| wipe_pending_in(&bytes))
        .unwrap_or(false))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_partitions_and_mount_points_per_board() {
        let files = Files::at("/r");
        assert_eq!(Volume::Data.partition(Board::QemuX86_64), "data");
        assert_eq!(Volume::Data.partition(Board::JetsonOrinAgx), "UDA");
        assert_eq!(Volume::Config.partition(Board::JetsonOrinAgx), "config");
        assert_eq!(Volume::Data.mount_point(&files), Path::new("/r/data"));
        assert_eq!(var_dir(&files), Path::new("/r/data/var"));
        assert_eq!(
            reset_journal(&files),
            Path::new("/r/efi/aperture/reset.json")
        );
    }

    #[test]
    fn wipe_pending_reads_one_field_and_fails_closed() {
        assert!(wipe_pending_in(br#"{"wipe_pending":true,"other":1}"#));
        assert!(!wipe_pending_in(br#"{"wipe_pending":false}"#));
        assert!(!wipe_pending_in(br#"{"level":2}"#));
        assert!(wipe_pending_in(b"not json"));
        let dir = tempfile::tempdir().unwrap();
        assert!(!reset_wipe_pending(&dir.path().join("none.json")).unwrap());
    }
}
