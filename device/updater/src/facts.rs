//! What the running image says about itself (`/etc/aperture/build.json`), and which slot is
//! running (`aperture.slot=` on `/proc/cmdline`).
//!
//! [`BuildFacts`] lives here, in the lowest device crate that reads it, because the agent's
//! health gate calls this library to commit: `aperture-agent` depends on `aperture-updater`,
//! so the type cannot live in the agent too. The agent re-exports it as
//! `aperture_agent::status::BuildFacts`, the name DEVICE.md and the image builder use.

use std::path::Path;

use serde::{Deserialize, Serialize};

use aperture_slots::Slot;

use crate::UpdateError;

/// The image's facts file, written by the image builder.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct BuildFacts {
    /// Product.
    pub product: String,
    /// Image version (semver).
    pub version: String,
    /// Anti-rollback counter of this image.
    pub security_version: u64,
    /// Board.
    pub board: String,
    /// sha256 of the resolved recipe.
    pub recipe_sha256: String,
    /// Source date of the build.
    pub source_date_epoch: u64,
    /// Units the health gate requires.
    #[serde(default)]
    pub required_services: Vec<String>,
}

impl BuildFacts {
    /// Read and parse the facts file.
    pub fn load(path: &Path) -> Result<BuildFacts, UpdateError> {
        let bytes = std::fs::read(path).map_err(UpdateError::file("reading", path))?;
        serde_json::from_slice(&bytes).map_err(|e| UpdateError::Malformed {
            path: path.to_path_buf(),
            reason: format!("{e}; it is written by the image builder, rebuild the image"),
        })
    }

    /// The version as semver.
    pub fn semver(&self, path: &Path) -> Result<semver::Version, UpdateError> {
        self.version.parse().map_err(|e| UpdateError::Malformed {
            path: path.to_path_buf(),
            reason: format!("version {:?} is not semver: {e}", self.version),
        })
    }
}

/// The running slot from the kernel command line at `path`.
pub fn booted_slot(path: &Path) -> Result<Slot, UpdateError> {
    let text = std::fs::read_to_string(path).map_err(UpdateError::file("reading", path))?;
    Slot::from_cmdline(&text).ok_or_else(|| UpdateError::UnknownBootedSlot {
        path: path.to_path_buf(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_builder_output_and_names_bad_files() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("build.json");
        std::fs::write(&p, r#"{"product":"p","version":"1.2.3","security_version":4,"board":"qemu-x86_64","recipe_sha256":"ab","source_date_epoch":1}"#).unwrap();
        let f = BuildFacts::load(&p).unwrap();
        assert_eq!(f.semver(&p).unwrap(), semver::Version::new(1, 2, 3));
        assert!(f.required_services.is_empty());
        std::fs::write(&p, "{}").unwrap();
        let e = BuildFacts::load(&p).unwrap_err().to_string();
        assert!(e.contains("build.json"), "{e}");
    }

    #[test]
    fn booted_slot_from_cmdline() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("cmdline");
        std::fs::write(&p, "root=x aperture.slot=b ro\n").unwrap();
        assert_eq!(booted_slot(&p).unwrap(), Slot::B);
        std::fs::write(&p, "root=x").unwrap();
        assert!(matches!(
            booted_slot(&p),
            Err(UpdateError::UnknownBootedSlot { .. })
        ));
    }
}
