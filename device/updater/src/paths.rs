//! [`Paths`]: every file and folder the updater touches, taken from the appliance contract
//! ([`aperture_appliance::Files`]), with the appliance's real locations as defaults and a
//! constructor rooted in a temporary folder for tests. Logic never names a path itself; it asks
//! this struct.
//!
//! The updater keeps no state in files: its records live in the device state store on the raw
//! partition `aperture_state` ([`crate::store`]). On the ESP it writes only boot files: on the
//! qemu boards each slot's kernel and initrd, and the systemd-boot entries (through the slots
//! crate); on Jetson a boot-firmware capsule.

use std::path::{Path, PathBuf};

use aperture_appliance::files::rel;
use aperture_appliance::Files;
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
    /// The lock every program that changes slots takes (`/run/aperture/slots.lock`).
    pub slots_lock: PathBuf,
    /// The TPM resource manager (`/dev/tpmrm0`).
    pub tpm_device: PathBuf,
    files: Files,
}

impl Default for Paths {
    fn default() -> Self {
        Paths::rooted(Path::new("/"))
    }
}

impl Paths {
    /// The appliance's layout under `root` (`/` on a device, a temporary folder in tests).
    pub fn rooted(root: &Path) -> Paths {
        Paths::from_files(&Files::at(root))
    }

    /// The layout `files` describes.
    pub fn from_files(files: &Files) -> Paths {
        Paths {
            esp: files.esp(),
            build_facts: files.build_facts(),
            root_key: files.root_key(),
            cmdline: files.cmdline(),
            ca_bundle: files.ca_bundle(),
            partlabel_dir: files.partlabel_dir(),
            efivars: files.efivars(),
            slots_lock: files.slots_lock(),
            tpm_device: files.tpm_device(),
            files: files.clone(),
        }
    }

    /// The appliance contract's layout these paths come from.
    pub fn files(&self) -> &Files {
        &self.files
    }

    /// `/efi/aperture/<slot>`: a qemu-board slot's kernel and initrd.
    pub fn slot_dir(&self, slot: Slot) -> PathBuf {
        self.files.esp_slot_dir(slot)
    }

    /// `/efi/aperture/<slot>/vmlinuz`.
    pub fn kernel(&self, slot: Slot) -> PathBuf {
        self.files.kernel(slot)
    }

    /// `/efi/aperture/<slot>/initrd.img`.
    pub fn initrd(&self, slot: Slot) -> PathBuf {
        self.files.initrd(slot)
    }
}

/// File name of a slot's kernel (what `SlotBoot::for_slot` points at).
pub const KERNEL_FILE: &str = rel::KERNEL_FILE;
/// File name of a slot's initrd (what `SlotBoot::for_slot` points at).
pub const INITRD_FILE: &str = rel::INITRD_FILE;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_the_device_layout() {
        let p = Paths::default();
        assert_eq!(p.esp, Path::new("/efi"));
        assert_eq!(p.kernel(Slot::B), Path::new("/efi/aperture/b/vmlinuz"));
        assert_eq!(p.kernel(Slot::A), Files::default().kernel(Slot::A));
        assert_eq!(p.initrd(Slot::A), Files::default().initrd(Slot::A));
        assert_eq!(p.build_facts, Path::new("/etc/aperture/build.json"));
        assert_eq!(p.root_key, Path::new("/etc/aperture/root.pub"));
        assert_eq!(p.partlabel_dir, Path::new("/dev/disk/by-partlabel"));
        assert_eq!(p.efivars, Path::new("/sys/firmware/efi/efivars"));
        assert_eq!(p.slots_lock, Path::new("/run/aperture/slots.lock"));
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
            &p.slots_lock,
            &p.tpm_device,
        ] {
            assert!(path.starts_with("/tmp/x"), "{}", path.display());
        }
    }
}
