//! [`Paths`]: every file and folder the updater touches, with the appliance's real locations
//! as defaults (DEVICE.md) and a constructor rooted in a temporary folder for tests. Logic never
//! names a path itself; it asks this struct.

use std::path::{Path, PathBuf};

use aperture_slots::Slot;

/// Where the updater finds the system.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Paths {
    /// The ESP mount point (`/efi`).
    pub esp: PathBuf,
    /// The image's facts (`/etc/aperture/build.json`).
    pub build_facts: PathBuf,
    /// The trusted root public key baked into the image (`/etc/aperture/root.pub`).
    pub root_key: PathBuf,
    /// The kernel command line (`/proc/cmdline`), which names the running slot.
    pub cmdline: PathBuf,
    /// The system CA bundle for HTTPS (`/etc/ssl/certs/ca-certificates.crt`).
    pub ca_bundle: PathBuf,
    /// Where partitions appear by GPT label (`/dev/disk/by-partlabel`).
    pub partlabel_dir: PathBuf,
    /// efivarfs (`/sys/firmware/efi/efivars`): Jetson slot variables and `OsIndications`.
    pub efivars: PathBuf,
}

impl Default for Paths {
    fn default() -> Self {
        Paths::rooted(Path::new("/"))
    }
}

impl Paths {
    /// The appliance's layout under `root` (`/` on a device, a temporary folder in tests).
    pub fn rooted(root: &Path) -> Paths {
        let at = |p: &str| root.join(p);
        Paths {
            esp: at("efi"),
            build_facts: at("etc/aperture/build.json"),
            root_key: at("etc/aperture/root.pub"),
            cmdline: at("proc/cmdline"),
            ca_bundle: at("etc/ssl/certs/ca-certificates.crt"),
            partlabel_dir: at("dev/disk/by-partlabel"),
            efivars: at("sys/firmware/efi/efivars"),
        }
    }

    /// `/efi/aperture`: per-slot folders and device state.
    pub fn aperture_dir(&self) -> PathBuf {
        self.esp.join("aperture")
    }

    /// `/efi/aperture/state.json`: floor, committed slot, install journal.
    pub fn state_file(&self) -> PathBuf {
        self.aperture_dir().join("state.json")
    }

    /// `/efi/aperture/<slot>`: the slot's kernel, initrd, record and manifest.
    pub fn slot_dir(&self, slot: Slot) -> PathBuf {
        self.aperture_dir().join(slot.letter())
    }

    /// `/efi/aperture/<slot>/slot.json`.
    pub fn slot_record(&self, slot: Slot) -> PathBuf {
        self.slot_dir(slot).join(SLOT_RECORD)
    }
}

/// File name of a slot's record.
pub const SLOT_RECORD: &str = "slot.json";
/// File name of a slot's kernel (what `SlotBoot::for_slot` points at).
pub const KERNEL_FILE: &str = "vmlinuz";
/// File name of a slot's initrd (what `SlotBoot::for_slot` points at).
pub const INITRD_FILE: &str = "initrd.img";
/// File name of the installed bundle's manifest, kept beside the record.
pub const MANIFEST_FILE: &str = "manifest.json";
/// File name of the installed bundle's signature, kept beside the record.
pub const SIGNATURE_FILE: &str = "manifest.sig";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_the_device_layout() {
        let p = Paths::default();
        assert_eq!(p.esp, Path::new("/efi"));
        assert_eq!(p.state_file(), Path::new("/efi/aperture/state.json"));
        assert_eq!(
            p.slot_record(Slot::B),
            Path::new("/efi/aperture/b/slot.json")
        );
        assert_eq!(p.build_facts, Path::new("/etc/aperture/build.json"));
        assert_eq!(p.root_key, Path::new("/etc/aperture/root.pub"));
        assert_eq!(p.partlabel_dir, Path::new("/dev/disk/by-partlabel"));
        assert_eq!(p.efivars, Path::new("/sys/firmware/efi/efivars"));
    }

    #[test]
    fn rooted_stays_inside_the_root() {
        let p = Paths::rooted(Path::new("/tmp/x"));
        for path in [
            &p.esp,
            &p.build_facts,
            &p.root_key,
            &p.cmdline,
            &p.ca_bundle,
            &p.efivars,
        ] {
            assert!(path.starts_with("/tmp/x"), "{}", path.display());
        }
    }
}
