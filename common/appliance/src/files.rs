//! Where things are on a running appliance: [`Files`], rooted at `/` on a device and at a
//! temporary folder in tests, and the same locations relative to an image's root ([`rel`]) for
//! the image builder. Device programs never spell these paths themselves.
//!
//! | what | where |
//! |---|---|
//! | the image's facts ([`crate::facts::BuildFacts`]) | `/etc/aperture/build.json` (verity-protected rootfs) |
//! | the trusted root public key | `/etc/aperture/root.pub` |
//! | the ESP | `/efi` (vfat: boot loader, and on qemu boards each slot's kernel and initrd) |
//! | a slot's signed unified kernel image (qemu boards) | `/efi/aperture/<slot>/uki.efi` |
//! | the Secure Boot db certificate the image's boot files are signed for; the TPM policy key | `/etc/aperture/secure-boot/db.crt`, `tpm-policy.pub.pem` |
//! | partitions | `/dev/disk/by-partlabel/<label>` ([`crate::board::Board::partition`]) |
//! | device state (floor, journals, slot records, key records) | the raw `aperture_state` partition ([`crate::store`]) |
//! | the lock every slot-changing program takes | `/run/aperture/slots.lock` ([`crate::lock`]) |
//! | the update loop's settings, trusted TUF root and fleet CA (from the recipe's `[update]`) | `/etc/aperture/update.toml`, `update-root.json`, `update-ca.pem` |
//! | the update loop's state: wave seed, TUF datastore, last check | `/var/lib/aperture/agent/` (`/var` lives on the encrypted data partition) |
//! | the encrypted volumes' mount points | `/config`, `/data` |
//! | the device's fleet key (sealed with the TPM, or plain where the board has none) | `/config/aperture/fleet/` |
//! | a provisioning archive (first boot) | `/efi/aperture/provision/`, or a USB stick labelled `APERTURE` mounted at `/run/aperture/provision-usb` |
//! | the fleet identity; the provisioned network settings | `/var/lib/aperture/agent/fleet/`; `/var/lib/aperture/agent/network.toml` |

use std::path::{Path, PathBuf};

use crate::slot::Slot;

/// Paths inside an image's root file system, for the image builder (no leading `/`).
pub mod rel {
    /// The image's facts.
    pub const BUILD_FACTS: &str = "etc/aperture/build.json";
    /// The trusted root public key.
    pub const ROOT_KEY: &str = "etc/aperture/root.pub";
    /// The folder on the ESP holding one folder per slot.
    pub const ESP_SLOTS: &str = "aperture";
    /// File name of a slot's kernel in its ESP folder.
    pub const KERNEL_FILE: &str = "vmlinuz";
    /// File name of a slot's initrd in its ESP folder.
    pub const INITRD_FILE: &str = "initrd.img";
    /// File name of a slot's signed unified kernel image in its ESP folder.
    pub const UKI_FILE: &str = "uki.efi";
    /// The Secure Boot db certificate (PEM) that signs the image's boot files: what the
    /// updater checks a new slot's UKI against, and what the firmware has enrolled.
    pub const SECURE_BOOT_DB: &str = "etc/aperture/secure-boot/db.crt";
    /// The TPM policy key's public half (PEM): signs each image's approved disk-key policy.
    pub const TPM_POLICY_KEY: &str = "etc/aperture/secure-boot/tpm-policy.pub.pem";
    /// The update loop's settings (`aperture_release::Settings`, TOML).
    pub const UPDATE_SETTINGS: &str = "etc/aperture/update.toml";
    /// The release repository's trusted TUF root, shipped with the image.
    pub const UPDATE_ROOT: &str = "etc/aperture/update-root.json";
    /// The CA of the release repository's server, when it is not a public one.
    pub const UPDATE_CA: &str = "etc/aperture/update-ca.pem";
    /// The provisioning archive's folder on the ESP (`aperture flash --provision` writes it,
    /// the agent erases it once enrolled).
    pub const ESP_PROVISION: &str = "aperture/provision";
    /// The inference runtime's metrics file (the image writes it into the runtime's config;
    /// the agent reads it), in the runtime's own runtime directory: its unit's dynamic user
    /// owns that folder, so it is not `/run/aperture`, where root's programs keep locks.
    pub const RUNTIME_METRICS: &str = "run/aperture-runtime/runtime.json";
    /// The runtime's detections socket (the image writes it into the runtime's config).
    pub const RUNTIME_SOCKET: &str = "run/aperture-runtime/detections.sock";
    /// The group whose members may read the detections socket (the image adds it; an
    /// application's unit joins it with `SupplementaryGroups=`).
    pub const RUNTIME_SOCKET_GROUP: &str = "aperture-detections";
}

/// The vfat label of a USB stick holding a provisioning archive at its root (`mkfs.vfat -n
/// APERTURE`); the udev rule in overlays/units mounts only a partition with this label.
pub const PROVISION_USB_LABEL: &str = "APERTURE";

/// The appliance's file locations under a root.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Files {
    root: PathBuf,
}

impl Default for Files {
    fn default() -> Self {
        Files::at("/")
    }
}

impl Files {
    /// The appliance's layout under `root` (`/` on a device, a temporary folder in tests).
    pub fn at(root: impl Into<PathBuf>) -> Files {
        Files { root: root.into() }
    }

    /// The root everything is under.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// A path under the root (`p` may start with `/`).
    pub fn path(&self, p: impl AsRef<Path>) -> PathBuf {
        let p = p.as_ref();
        self.root.join(p.strip_prefix("/").unwrap_or(p))
    }

    /// `/etc/aperture/build.json`.
    pub fn build_facts(&self) -> PathBuf {
        self.path(rel::BUILD_FACTS)
    }

    /// `/etc/aperture/root.pub`.
    pub fn root_key(&self) -> PathBuf {
        self.path(rel::ROOT_KEY)
    }

    /// `/proc/cmdline`, which names the running slot.
    pub fn cmdline(&self) -> PathBuf {
        self.path("proc/cmdline")
    }

    /// `/proc/self/mountinfo`.
    pub fn mountinfo(&self) -> PathBuf {
        self.path("proc/self/mountinfo")
    }

    /// `/etc/ssl/certs/ca-certificates.crt`, the system CA bundle for HTTPS.
    pub fn ca_bundle(&self) -> PathBuf {
        self.path("etc/ssl/certs/ca-certificates.crt")
    }

    /// `/efi`, the ESP's mount point.
    pub fn esp(&self) -> PathBuf {
        self.path("efi")
    }

    /// `/efi/aperture/<slot>`: a qemu-board slot's boot files.
    pub fn esp_slot_dir(&self, slot: Slot) -> PathBuf {
        self.esp().join(rel::ESP_SLOTS).join(slot.letter())
    }

    /// `/efi/aperture/<slot>/vmlinuz`.
    pub fn kernel(&self, slot: Slot) -> PathBuf {
        self.esp_slot_dir(slot).join(rel::KERNEL_FILE)
    }

    /// `/efi/aperture/<slot>/initrd.img`.
    pub fn initrd(&self, slot: Slot) -> PathBuf {
        self.esp_slot_dir(slot).join(rel::INITRD_FILE)
    }

    /// `/efi/aperture/<slot>/uki.efi`.
    pub fn uki(&self, slot: Slot) -> PathBuf {
        self.esp_slot_dir(slot).join(rel::UKI_FILE)
    }

    /// `/etc/aperture/secure-boot/db.crt`.
    pub fn secure_boot_db(&self) -> PathBuf {
        self.path(rel::SECURE_BOOT_DB)
    }

    /// `/etc/aperture/secure-boot/tpm-policy.pub.pem`: the build's TPM policy key, which signs
    /// each UKI's disk-key policy.
    pub fn tpm_policy_key(&self) -> PathBuf {
        self.path(rel::TPM_POLICY_KEY)
    }

    /// `/dev/disk/by-partlabel`.
    pub fn partlabel_dir(&self) -> PathBuf {
        self.path("dev/disk/by-partlabel")
    }

    /// `/dev/disk/by-partlabel/<label>`.
    pub fn partition(&self, label: &str) -> PathBuf {
        self.partlabel_dir().join(label)
    }

    /// `/sys/firmware/efi/efivars`.
    pub fn efivars(&self) -> PathBuf {
        self.path("sys/firmware/efi/efivars")
    }

    /// `/dev/tpmrm0`, the TPM resource manager.
    pub fn tpm_device(&self) -> PathBuf {
        self.path("dev/tpmrm0")
    }

    /// `/dev`.
    pub fn dev_dir(&self) -> PathBuf {
        self.path("dev")
    }

    /// `/dev/mapper`, where dm-crypt and dm-verity mappings appear.
    pub fn mapper_dir(&self) -> PathBuf {
        self.path("dev/mapper")
    }

    /// `/dev/input`, evdev devices.
    pub fn input_dir(&self) -> PathBuf {
        self.path("dev/input")
    }

    /// `/sys/class/block`.
    pub fn sys_class_block(&self) -> PathBuf {
        self.path("sys/class/block")
    }

    /// `/run`, a tmpfs.
    pub fn run_dir(&self) -> PathBuf {
        self.path("run")
    }

    /// `/run/aperture`, transient files of our programs.
    pub fn run_aperture(&self) -> PathBuf {
        self.path("run/aperture")
    }

    /// `/etc/aperture/update.toml`: the update loop's settings.
    pub fn update_settings(&self) -> PathBuf {
        self.path(rel::UPDATE_SETTINGS)
    }

    /// `/etc/aperture/update-root.json`: the repository's TUF root shipped with the image.
    pub fn update_root(&self) -> PathBuf {
        self.path(rel::UPDATE_ROOT)
    }

    /// `/etc/aperture/update-ca.pem`: the repository server's CA, if the image has one.
    pub fn update_ca(&self) -> PathBuf {
        self.path(rel::UPDATE_CA)
    }

    /// `/config`: where the encrypted config volume is mounted (device identity).
    pub fn config_mount(&self) -> PathBuf {
        self.path("config")
    }

    /// `/data`: where the encrypted data volume is mounted.
    pub fn data_mount(&self) -> PathBuf {
        self.path("data")
    }

    /// `/config/aperture/fleet`: the device's fleet key (`key.tpm.json` sealed with the TPM,
    /// or `key.pem` on boards without one), on the encrypted config volume.
    pub fn fleet_key_dir(&self) -> PathBuf {
        self.config_mount().join("aperture/fleet")
    }

    /// `/var/lib/aperture/agent`: the update loop's state (on the encrypted data partition).
    pub fn agent_state(&self) -> PathBuf {
        self.path("var/lib/aperture/agent")
    }

    /// `/efi/aperture/provision`: the provisioning archive `aperture flash --provision` puts
    /// on the ESP.
    pub fn provision_esp(&self) -> PathBuf {
        self.esp().join(rel::ESP_PROVISION)
    }

    /// `/run/aperture/provision-usb`: where `aperture-provision-usb.service` mounts a USB
    /// stick whose vfat file system is labelled [`PROVISION_USB_LABEL`] (read-only, nosuid,
    /// nodev, noexec; only while the device has no fleet identity).
    pub fn provision_usb(&self) -> PathBuf {
        self.run_aperture().join("provision-usb")
    }

    /// Where the agent looks for a provisioning archive at first boot, in order: the ESP's
    /// `/efi/aperture/provision`, and `/run/aperture/provision-usb` (issue 16).
    pub fn provision_dirs(&self) -> Vec<PathBuf> {
        vec![self.provision_esp(), self.provision_usb()]
    }

    /// `/var/lib/aperture/agent/network.toml`: the provisioning archive's network settings,
    /// kept after enrollment and applied at every boot (`aperture-agent network`).
    pub fn provisioned_network(&self) -> PathBuf {
        self.agent_state().join("network.toml")
    }

    /// `/etc/systemd/network`: the image's networkd files (the recipe's one network).
    pub fn image_network_dir(&self) -> PathBuf {
        self.path("etc/systemd/network")
    }

    /// `/run/systemd/network`: networkd files made at run time; a name sorting before the
    /// image's (`20-aperture.network`) is the one networkd applies.
    pub fn run_network_dir(&self) -> PathBuf {
        self.path("run/systemd/network")
    }

    /// `/proc/sys/kernel/hostname`: the running host name.
    pub fn kernel_hostname(&self) -> PathBuf {
        self.path("proc/sys/kernel/hostname")
    }

    /// `/run/aperture/slots.lock`: held by whoever changes slots or boot state.
    pub fn slots_lock(&self) -> PathBuf {
        self.run_aperture().join("slots.lock")
    }

    /// `/run/aperture-runtime/runtime.json`: the inference runtime's metrics, rewritten every half
    /// second (its config's `metrics`, the image's overlay), which the agent summarises for
    /// `aperture-agent status` and the fleet report (issue 17).
    pub fn runtime_metrics(&self) -> PathBuf {
        self.path(rel::RUNTIME_METRICS)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_the_device_layout_and_rooted_stays_inside() {
        let f = Files::default();
        assert_eq!(f.build_facts(), Path::new("/etc/aperture/build.json"));
        assert_eq!(f.kernel(Slot::B), Path::new("/efi/aperture/b/vmlinuz"));
        assert_eq!(
            f.partition("aperture_state"),
            Path::new("/dev/disk/by-partlabel/aperture_state")
        );
        let t = Files::at("/tmp/x");
        for p in [t.esp(), t.cmdline(), t.path("/etc/x"), t.slots_lock()] {
            assert!(p.starts_with("/tmp/x"), "{}", p.display());
        }
    }
}
