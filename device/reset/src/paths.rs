//! [`Paths`]: every file and folder aperture-reset touches, with the appliance's locations as
//! defaults (DEVICE.md) and a constructor rooted in a temporary folder for tests; and the few
//! facts read from the image ([`DeviceFacts`]).

use std::path::{Path, PathBuf};

use aperture_appliance::Files;
use aperture_slots::Slot;
use serde::Deserialize;

use crate::ResetError;

/// File name of a slot's record.
pub const SLOT_RECORD: &str = "slot.json";
/// File name of a slot's kernel (what `SlotBoot::for_slot` points at).
pub const KERNEL_FILE: &str = "vmlinuz";
/// File name of a slot's initrd.
pub const INITRD_FILE: &str = "initrd.img";
/// File name of the installed bundle's manifest, kept beside the record.
pub const MANIFEST_FILE: &str = "manifest.json";
/// File name of the installed bundle's signature.
pub const SIGNATURE_FILE: &str = "manifest.sig";
/// GPT label of the factory partition.
pub const FACTORY_PARTITION: &str = "factory";

/// The GPT label of a slot's rootfs partition (`rootfs_a`, `rootfs_b`).
pub fn rootfs_partition(slot: Slot) -> String {
    format!("rootfs_{slot}")
}

/// Where aperture-reset finds the system.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Paths {
    /// The appliance's files: ESP, partitions, mappings, TPM.
    pub files: Files,
    /// The reset journal (`/efi/aperture/reset.json`).
    pub journal: PathBuf,
    /// The trusted root key (`/etc/aperture/root.pub`).
    pub root_key: PathBuf,
    /// The image's facts (`/etc/aperture/build.json`).
    pub build_facts: PathBuf,
    /// The kernel command line (`/proc/cmdline`).
    pub cmdline: PathBuf,
    /// Input devices (`/dev/input`).
    pub input_dir: PathBuf,
}

impl Default for Paths {
    fn default() -> Self {
        Paths::rooted(Path::new("/"))
    }
}

impl Paths {
    /// The appliance's layout under `root`.
    pub fn rooted(root: &Path) -> Paths {
        Paths {
            files: Files::at(root),
            journal: aperture_storage::volume::reset_journal(&Files::at(root)),
            root_key: root.join("etc/aperture/root.pub"),
            build_facts: root.join("etc/aperture/build.json"),
            cmdline: root.join("proc/cmdline"),
            input_dir: root.join("dev/input"),
        }
    }

    /// The reset journal (`/efi/aperture/reset.json`).
    pub fn journal(&self) -> &Path {
        &self.journal
    }

    /// `/efi/aperture/<slot>`.
    pub fn slot_dir(&self, slot: Slot) -> PathBuf {
        self.files.esp().join("aperture").join(slot.letter())
    }

    /// `/efi/aperture/<slot>/slot.json`.
    pub fn slot_record(&self, slot: Slot) -> PathBuf {
        self.slot_dir(slot).join(SLOT_RECORD)
    }

    /// The running slot, from `aperture.slot=` on the kernel command line.
    pub fn booted_slot(&self) -> Result<Slot, ResetError> {
        let text = std::fs::read_to_string(&self.cmdline)
            .map_err(ResetError::io("reading", &self.cmdline))?;
        Slot::from_cmdline(&text).ok_or_else(|| ResetError::UnknownSlot {
            path: self.cmdline.clone(),
        })
    }
}

/// What the image says about itself (`/etc/aperture/build.json`); only the fields reset
/// needs, other fields are ignored (the full type is the agent's `BuildFacts`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct DeviceFacts {
    /// Product name.
    pub product: String,
    /// Image version.
    pub version: String,
    /// Board name, as in recipes (`qemu-x86_64`).
    pub board: String,
}

impl DeviceFacts {
    /// Reads them from `path`.
    pub fn load(path: &Path) -> Result<DeviceFacts, ResetError> {
        let bytes = std::fs::read(path).map_err(ResetError::io("reading", path))?;
        serde_json::from_slice(&bytes)
            .map_err(|e| ResetError::malformed(path.display().to_string(), e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_the_device_layout() {
        let p = Paths::default();
        assert_eq!(p.journal(), Path::new("/efi/aperture/reset.json"));
        assert_eq!(
            p.slot_record(Slot::B),
            Path::new("/efi/aperture/b/slot.json")
        );
        assert_eq!(p.root_key, Path::new("/etc/aperture/root.pub"));
        assert_eq!(rootfs_partition(Slot::A), "rootfs_a");
    }

    #[test]
    fn booted_slot_and_facts() {
        let dir = tempfile::tempdir().unwrap();
        let p = Paths::rooted(dir.path());
        assert!(p.booted_slot().is_err());
        std::fs::create_dir_all(dir.path().join("proc")).unwrap();
        std::fs::write(&p.cmdline, "root=x aperture.slot=b quiet\n").unwrap();
        assert_eq!(p.booted_slot().unwrap(), Slot::B);
        std::fs::write(&p.cmdline, "root=x\n").unwrap();
        assert!(matches!(
            p.booted_slot(),
            Err(ResetError::UnknownSlot { .. })
        ));
        std::fs::create_dir_all(dir.path().join("etc/aperture")).unwrap();
        std::fs::write(
            &p.build_facts,
            br#"{"product":"p","version":"1.0.0","board":"qemu-x86_64","security_version":1}"#,
        )
        .unwrap();
        assert_eq!(
            DeviceFacts::load(&p.build_facts).unwrap().board,
            "qemu-x86_64"
        );
    }
}
