//! UEFI capsule delivery on disk, how a Jetson's boot firmware is updated with a slot: the OS
//! puts the capsule file in `\EFI\UpdateCapsule` on the ESP and sets bit
//! [`FILE_CAPSULE_DELIVERY`] of the global variable `OsIndications` (UEFI 2.x, "Delivery of
//! Capsules via file on Mass Storage Device"). At the next power-on the firmware processes the
//! files, deletes them and clears the bit.
//!
//! On Jetson (NVIDIA's "Update and Redundancy" for the A/B boot chain), the capsule writes the
//! boot chain that is not running and the firmware then boots that chain, whose rootfs slot
//! follows it. So an install that delivers a capsule must NOT also set `BootChainFwNext`: the
//! firmware's own switch and ours would cancel out. [`crate::SlotManager::arm_leaving_next`]
//! arms the slot without the switch.
//!
//! [`CapsuleDelivery::simulate_firmware`] stands in for that firmware in tests, as
//! [`crate::BootControl::loader_boot`] does for the boot loaders.

use std::path::{Path, PathBuf};

use super::efivar::EfiVars;
use crate::SlotsError;

/// The capsule folder on the ESP, relative to its root.
pub const CAPSULE_DIR: &str = "EFI/UpdateCapsule";
/// The global variable that asks the firmware to look for capsules on disk.
pub const OS_INDICATIONS: &str = "OsIndications";
/// `EFI_OS_INDICATIONS_FILE_CAPSULE_DELIVERY_SUPPORTED`.
pub const FILE_CAPSULE_DELIVERY: u64 = 0x0000_0000_0000_0004;

/// Capsules on an ESP and the `OsIndications` bit that delivers them.
#[derive(Debug, Clone)]
pub struct CapsuleDelivery {
    esp: PathBuf,
    vars: EfiVars,
}

impl CapsuleDelivery {
    /// The ESP mounted at `esp` and efivarfs at `efivars_dir`.
    pub fn new(esp: PathBuf, efivars_dir: PathBuf) -> CapsuleDelivery {
        CapsuleDelivery {
            esp,
            vars: EfiVars::global(efivars_dir),
        }
    }

    /// `<esp>/EFI/UpdateCapsule`.
    pub fn dir(&self) -> PathBuf {
        self.esp.join(CAPSULE_DIR)
    }

    /// The file of `OsIndications`.
    pub fn variable_path(&self) -> PathBuf {
        self.vars.path(OS_INDICATIONS)
    }

    /// Whether the delivery bit is set.
    pub fn requested(&self) -> Result<bool, SlotsError> {
        Ok(self.vars.read_u64(OS_INDICATIONS)?.unwrap_or(0) & FILE_CAPSULE_DELIVERY != 0)
    }

    /// Set the delivery bit, keeping the variable's other bits. One variable write.
    pub fn request(&self) -> Result<(), SlotsError> {
        let old = self.vars.read_u64(OS_INDICATIONS)?.unwrap_or(0);
        self.vars
            .write_u64(OS_INDICATIONS, old | FILE_CAPSULE_DELIVERY)
    }

    /// Clear the delivery bit (first, so the firmware never sees half a cancel) and remove
    /// every file from the capsule folder: an install starting over must not let a capsule of
    /// an earlier, unfinished install reach the firmware.
    pub fn cancel(&self) -> Result<(), SlotsError> {
        if let Some(old) = self.vars.read_u64(OS_INDICATIONS)? {
            if old & FILE_CAPSULE_DELIVERY != 0 {
                self.vars
                    .write_u64(OS_INDICATIONS, old & !FILE_CAPSULE_DELIVERY)?;
            }
        }
        for file in self.pending()? {
            aperture_sys::fs::remove_durable(&file)?;
        }
        Ok(())
    }

    /// The files in the capsule folder, sorted.
    pub fn pending(&self) -> Result<Vec<PathBuf>, SlotsError> {
        let dir = self.dir();
        let entries = match std::fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(SlotsError::io("reading folder", &dir)(e)),
        };
        let mut files = Vec::new();
        for entry in entries {
            let path = entry
                .map_err(SlotsError::io("reading folder", &dir))?
                .path();
            if path.is_file() {
                files.push(path);
            }
        }
        files.sort();
        Ok(files)
    }

    /// SIMULATION of the firmware at power-on: with the bit set and capsules present, "apply"
    /// them (delete the files, clear the bit) and return their names; otherwise do nothing.
    /// Without the bit, files stay where they are, as on a real firmware.
    pub fn simulate_firmware(&self) -> Result<Vec<String>, SlotsError> {
        if !self.requested()? {
            return Ok(Vec::new());
        }
        let files = self.pending()?;
        let names = files
            .iter()
            .filter_map(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
            .collect();
        let old = self.vars.read_u64(OS_INDICATIONS)?.unwrap_or(0);
        self.vars
            .write_u64(OS_INDICATIONS, old & !FILE_CAPSULE_DELIVERY)?;
        for file in &files {
            aperture_sys::fs::remove_durable(file)?;
        }
        Ok(names)
    }

    /// The ESP.
    pub fn esp(&self) -> &Path {
        &self.esp
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn setup() -> (tempfile::TempDir, CapsuleDelivery) {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(d.path().join("efivars")).unwrap();
        let c = CapsuleDelivery::new(d.path().join("esp"), d.path().join("efivars"));
        (d, c)
    }

    #[test]
    fn request_sets_only_the_delivery_bit_and_firmware_consumes_it() {
        let (_d, c) = setup();
        assert!(!c.requested().unwrap());
        // Another bit set by someone else (boot to firmware UI) survives.
        c.vars.write_u64(OS_INDICATIONS, 0x1).unwrap();
        c.request().unwrap();
        assert!(c.requested().unwrap());
        let raw = std::fs::read(c.variable_path()).unwrap();
        assert_eq!(raw.len(), 12, "4 bytes of attributes and a u64");
        assert_eq!(&raw[..4], &7u32.to_le_bytes());
        assert_eq!(u64::from_le_bytes(raw[4..].try_into().unwrap()), 0x5);
        assert!(c
            .variable_path()
            .ends_with("OsIndications-8be4df61-93ca-11d2-aa0d-00e098032b8c"));

        std::fs::create_dir_all(c.dir()).unwrap();
        std::fs::write(c.dir().join("TEGRA_BL.Cap"), b"capsule").unwrap();
        assert_eq!(c.simulate_firmware().unwrap(), vec!["TEGRA_BL.Cap"]);
        assert!(c.pending().unwrap().is_empty());
        assert!(!c.requested().unwrap());
        assert_eq!(c.vars.read_u64(OS_INDICATIONS).unwrap(), Some(0x1));
        // Nothing left to do on the next power-on.
        assert!(c.simulate_firmware().unwrap().is_empty());
    }

    #[test]
    fn without_the_bit_the_firmware_leaves_files_alone_and_cancel_clears_both() {
        let (_d, c) = setup();
        std::fs::create_dir_all(c.dir()).unwrap();
        std::fs::write(c.dir().join("old.Cap"), b"x").unwrap();
        assert!(c.simulate_firmware().unwrap().is_empty());
        assert_eq!(c.pending().unwrap().len(), 1);
        c.request().unwrap();
        c.cancel().unwrap();
        assert!(!c.requested().unwrap());
        assert!(c.pending().unwrap().is_empty());
        // Cancel with nothing there is fine.
        c.cancel().unwrap();
    }

    #[test]
    fn malformed_variable_is_an_error_naming_it() {
        let (_d, c) = setup();
        std::fs::write(c.variable_path(), [7, 0, 0, 0]).unwrap();
        let e = c.requested().unwrap_err().to_string();
        assert!(e.contains("OsIndications"), "{e}");
    }
}
