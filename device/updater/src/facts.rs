//! What the running image says about itself (`/etc/aperture/build.json`), and which slot is
//! running (`aperture.slot=` on `/proc/cmdline`).
//!
//! [`BuildFacts`] is the appliance contract's (`aperture_appliance::facts`); this module adds
//! what the updater needs on top: the version as semver, and errors in the updater's terms.

use std::path::Path;

use aperture_slots::Slot;

pub use aperture_appliance::BuildFacts;

use crate::UpdateError;

/// Read the running image's facts.
pub fn load(path: &Path) -> Result<BuildFacts, UpdateError> {
    Ok(BuildFacts::load(path)?)
}

/// The running image's version as semver.
pub fn semver(facts: &BuildFacts, path: &Path) -> Result<semver::Version, UpdateError> {
    facts.version.parse().map_err(|e| UpdateError::Malformed {
        path: path.to_path_buf(),
        reason: format!("version {:?} is not semver: {e}", facts.version),
    })
}

/// The running slot from the kernel command line at `path`.
pub fn booted_slot(path: &Path) -> Result<Slot, UpdateError> {
    let text = std::fs::read_to_string(path).map_err(UpdateError::file("reading", path))?;
    Slot::from_cmdline(&text).ok_or_else(|| UpdateError::UnknownBootedSlot {
        path: path.to_path_buf(),
    })
}

/// The dm-verity root hash the running slot was booted with (`aperture.verity.roothash=` on
/// the kernel command line at `path`); `None` when the command line names none (a development
/// boot without verity). The kernel checks every block read through that root, so it names
/// exactly the image the running slot holds.
pub fn booted_root_hash(path: &Path) -> Result<Option<String>, UpdateError> {
    let text = std::fs::read_to_string(path).map_err(UpdateError::file("reading", path))?;
    Ok(text
        .split_ascii_whitespace()
        .find_map(|arg| arg.strip_prefix("aperture.verity.roothash="))
        .map(str::to_owned))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_builder_output_and_names_bad_files() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("build.json");
        std::fs::write(&p, r#"{"product":"p","version":"1.2.3","security_version":4,"board":"qemu-x86_64","recipe_sha256":"ab","source_date_epoch":1}"#).unwrap();
        let f = load(&p).unwrap();
        assert_eq!(semver(&f, &p).unwrap(), semver::Version::new(1, 2, 3));
        assert!(f.required_services.is_empty());
        std::fs::write(&p, "{}").unwrap();
        let e = load(&p).unwrap_err().to_string();
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
        assert_eq!(booted_root_hash(&p).unwrap(), None);
        std::fs::write(&p, "ro aperture.verity.roothash=ab12 aperture.slot=a\n").unwrap();
        assert_eq!(booted_root_hash(&p).unwrap().as_deref(), Some("ab12"));
    }
}
