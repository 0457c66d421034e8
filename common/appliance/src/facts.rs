//! [`BuildFacts`]: what an image says about itself in `/etc/aperture/build.json`. The image
//! builder writes it into the verity-protected rootfs; every device program reads it from there
//! (never from the unsigned ESP), so it is the one trusted description of the running image.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::board::Board;

/// The image's facts file.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct BuildFacts {
    /// Product.
    pub product: String,
    /// Image version (semver).
    pub version: String,
    /// Anti-rollback counter of this image.
    pub security_version: u64,
    /// Board.
    pub board: Board,
    /// sha256 of the resolved recipe.
    pub recipe_sha256: String,
    /// Source date of the build (unix seconds): no signed time the device trusts is older.
    pub source_date_epoch: u64,
    /// Units the health gate requires.
    #[serde(default)]
    pub required_services: Vec<String>,
    /// Whether the board has a TPM 2.0 that seals the disk keys (`[security] tpm` in the
    /// recipe, true unless a recipe says the board has none). With a TPM, storage waits for it
    /// and never falls back to a key stored in the clear.
    #[serde(default = "yes")]
    pub tpm: bool,
    /// The evdev device name of the board's reset button (`[board] reset_button`), if it has
    /// one; no other input device can start a reset.
    #[serde(default)]
    pub reset_button: Option<String>,
}

fn yes() -> bool {
    true
}

/// Why the facts file could not be read.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FactsError {
    /// It could not be read.
    #[error("cannot read {path} (is this an Aperture image?)")]
    Read {
        /// The file.
        path: String,
        /// Cause.
        #[source]
        err: std::io::Error,
    },
    /// It is not what the image builder writes.
    #[error("{path} is malformed; it is written by the image builder: rebuild the image")]
    Malformed {
        /// The file.
        path: String,
        /// Cause.
        #[source]
        err: serde_json::Error,
    },
}

impl BuildFacts {
    /// Read and parse the facts file at `path`.
    pub fn load(path: &Path) -> Result<BuildFacts, FactsError> {
        let bytes = std::fs::read(path).map_err(|err| FactsError::Read {
            path: path.display().to_string(),
            err,
        })?;
        BuildFacts::parse(&bytes).map_err(|err| FactsError::Malformed {
            path: path.display().to_string(),
            err,
        })
    }

    /// Parse the file's bytes.
    pub fn parse(bytes: &[u8]) -> Result<BuildFacts, serde_json::Error> {
        serde_json::from_slice(bytes)
    }

    /// The bytes the image builder writes (pretty JSON and a newline).
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = serde_json::to_vec_pretty(self).unwrap_or_default();
        out.push(b'\n');
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_defaults_new_fields_and_names_bad_files() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("build.json");
        std::fs::write(&p, r#"{"product":"p","version":"1.2.3","security_version":4,"board":"qemu-x86_64","recipe_sha256":"ab","source_date_epoch":1}"#).unwrap();
        let f = BuildFacts::load(&p).unwrap();
        assert_eq!(f.board, Board::QemuX86_64);
        assert!(f.tpm && f.reset_button.is_none() && f.required_services.is_empty());
        std::fs::write(&p, f.to_bytes()).unwrap();
        assert_eq!(BuildFacts::load(&p).unwrap(), f);
        std::fs::write(&p, "{}").unwrap();
        let e = BuildFacts::load(&p).unwrap_err().to_string();
        assert!(e.contains("build.json") && e.contains("rebuild"), "{e}");
        let e = BuildFacts::load(&d.path().join("none.json"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("none.json"), "{e}");
    }
}
