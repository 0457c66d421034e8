//! Where a bundle's payloads go on a board (`Placement`), a Jetson slot's kernel and
//! kernel-dtb partitions (`TegraSlot`), and a slot's boot entry ([`slot_boot`]).
//!
//! A qemu board's bundle carries a signed unified kernel image per slot (`uki-a.efi`,
//! `uki-b.efi`: their command lines name different partitions and slots, and each is signed
//! as it is); the one for the target slot becomes its `uki.efi`, the other is checked against
//! its hash and passed over.
//!
//! Shared by the installer ([`crate::install`]) and the re-verification of an installed slot
//! ([`crate::verify`]), so that what is checked later is computed exactly as it was written: the
//! same boot entry, the same boot image header, the same offsets.

use aperture_slots::tegra::bootimg;
use aperture_slots::{Slot, SlotBoot, SlotLayout};
use aperture_trust::manifest::{Artifact, Manifest, Role};

use crate::disk::{Disk, PartitionHandle};
use crate::readback::verify_range;
use crate::UpdateError;
use aperture_appliance::files::rel::UKI_FILE;

/// Where one payload goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Dest {
    /// The slot's rootfs partition (`rootfs_b`, `APP_b`), from its start.
    Rootfs,
    /// A file in the slot's folder on the ESP (qemu boards: `uki.efi`).
    EspFile(&'static str),
    /// Not for this slot (the other slot's UKI): its bytes are checked against the manifest's
    /// hash and dropped.
    PassOver,
    /// A range of the slot's kernel partition (Jetson): the kernel or the initrd of its
    /// Android boot image, at this offset; the header is written once both are verified.
    BootImage(u64),
    /// The slot's kernel-dtb partition (Jetson), from its start.
    Dtb,
    /// A boot-firmware UEFI capsule (Jetson), staged beside the slot's record and delivered
    /// on the ESP when the slot is armed.
    Capsule,
}

/// Where a bundle's payloads go on this board.
pub(crate) struct Placement<'m> {
    pub(crate) rootfs: &'m Artifact,
    pub(crate) dests: Vec<(&'m Artifact, Dest)>,
    /// Jetson: where kernel and initrd sit in the boot image.
    pub(crate) boot_image: Option<bootimg::Layout>,
}

impl<'m> Placement<'m> {
    /// Refuse manifests this updater cannot place on `layout` before anything is written;
    /// `target` is the slot the bundle is installed into.
    pub(crate) fn of(
        m: &'m Manifest,
        layout: SlotLayout,
        target: Slot,
    ) -> Result<Placement<'m>, UpdateError> {
        let unsupported = |reason: String| UpdateError::Unsupported { reason };
        let (required, optional, carries): (&[Role], &[Role], &str) = match layout {
            SlotLayout::Esp => (
                &[Role::Rootfs, Role::Uki],
                &[],
                "one rootfs and a signed unified kernel image for each slot (uki-a.efi, \
                 uki-b.efi), which this board boots from the ESP",
            ),
            SlotLayout::Tegra(_) => (
                &[Role::Rootfs, Role::Kernel, Role::Initrd, Role::Dtb],
                &[Role::Capsule],
                "one rootfs, kernel, initrd and device tree, and at most one boot-firmware \
                 capsule",
            ),
        };
        let mut found: Vec<&'m Artifact> = Vec::new();
        for a in m.payload_artifacts() {
            // Two UKIs, one per slot, each named for its slot; every other role once.
            let twice = match a.role {
                Role::Uki => {
                    Slot::of_uki_artifact(a.name.as_str()).is_none()
                        || found.iter().any(|b| b.name == a.name)
                }
                _ => found.iter().any(|b| b.role == a.role),
            };
            if !(required.contains(&a.role) || optional.contains(&a.role)) || twice {
                return Err(unsupported(format!(
                    "payload {} has role {:?}, which this updater does not place on this board \
                     (or which appears twice); bundles for this board carry {carries}",
                    a.name, a.role
                )));
            }
            found.push(a);
        }
        let get = |role: Role| found.iter().copied().find(|a| a.role == role);
        if required.contains(&Role::Uki) {
            for slot in Slot::ALL {
                if !found.iter().any(|a| a.name.as_str() == slot.uki_artifact()) {
                    return Err(unsupported(format!(
                        "the bundle carries no {} payload; bundles for this board carry \
                         {carries}",
                        slot.uki_artifact()
                    )));
                }
            }
        }
        for role in required {
            if get(*role).is_none() {
                return Err(unsupported(format!(
                    "the bundle carries no {role:?} payload; bundles for this board carry \
                     {carries}"
                )));
            }
        }
        let rootfs = get(Role::Rootfs).ok_or_else(|| unsupported("no rootfs".into()))?;
        if rootfs.verity.is_none() {
            return Err(unsupported(format!(
                "rootfs {} has no verity parameters",
                rootfs.name
            )));
        }
        let boot_image = match layout {
            SlotLayout::Esp => None,
            SlotLayout::Tegra(_) => {
                let size = |role| get(role).map_or(0, |a| a.size);
                Some(boot_image(size(Role::Kernel), size(Role::Initrd))?)
            }
        };
        let dests = found
            .iter()
            .map(|a| {
                let dest = match (a.role, boot_image) {
                    (Role::Rootfs, _) => Dest::Rootfs,
                    (Role::Uki, None) if a.name.as_str() == target.uki_artifact() => {
                        Dest::EspFile(UKI_FILE)
                    }
                    (Role::Uki, _) => Dest::PassOver,
                    (Role::Kernel, Some(l)) => Dest::BootImage(l.kernel_offset()),
                    (Role::Initrd, Some(l)) => Dest::BootImage(l.ramdisk_offset()),
                    (Role::Dtb, _) => Dest::Dtb,
                    _ => Dest::Capsule,
                };
                (*a, dest)
            })
            .collect();
        Ok(Placement {
            rootfs,
            dests,
            boot_image,
        })
    }

    /// The payload of `role`, if the bundle carries one.
    pub(crate) fn artifact(&self, role: Role) -> Option<&'m Artifact> {
        self.dests.iter().map(|(a, _)| *a).find(|a| a.role == role)
    }
}

/// Where kernel and initrd go in a boot image of these sizes.
pub(crate) fn boot_image(kernel: u64, initrd: u64) -> Result<bootimg::Layout, UpdateError> {
    bootimg::Layout::new(kernel, initrd).ok_or_else(|| UpdateError::Unsupported {
        reason: "kernel or initrd is larger than a boot image holds".into(),
    })
}

/// The boot entry of `slot` for the image `manifest` describes, on a board laid out as
/// `layout`: what the installer arms (and on Jetson writes into the boot image header), and
/// what a re-verification expects to find.
pub fn slot_boot(
    manifest: &Manifest,
    layout: SlotLayout,
    slot: Slot,
) -> Result<SlotBoot, UpdateError> {
    let (product, version) = (&manifest.product, manifest.version.to_string());
    if layout == SlotLayout::Esp {
        // The UKI carries the command line (`slot_cmdline`), signed.
        return Ok(aperture_slots::cmdline::uki_boot(product, &version, slot));
    }
    Ok(SlotBoot::for_slot(
        slot,
        aperture_slots::cmdline::slot_title(product, &version, slot),
        &slot_cmdline(manifest, layout, slot)?,
    ))
}

/// The kernel command line of `slot` for the image `manifest` describes: the image's base
/// arguments and its verity root, naming `slot`'s partition and `slot`. A qemu slot's UKI must
/// carry it; a Jetson slot's boot image header holds it.
pub fn slot_cmdline(
    manifest: &Manifest,
    layout: SlotLayout,
    slot: Slot,
) -> Result<String, UpdateError> {
    let verity = manifest
        .artifacts
        .iter()
        .find(|a| a.role == Role::Rootfs)
        .and_then(|a| a.verity.as_ref())
        .ok_or_else(|| UpdateError::Unsupported {
            reason: "the manifest has no rootfs with verity parameters".into(),
        })?;
    let base = manifest.boot.as_ref().map_or("", |b| b.cmdline.as_str());
    Ok(aperture_slots::cmdline::verity_cmdline(
        base,
        layout,
        slot,
        verity.root_hash.as_str(),
        verity.hash_offset,
    ))
}

/// Refuse a payload of `size` bytes that `part` cannot hold.
pub(crate) fn fits(
    slot: Slot,
    what: &'static str,
    size: u64,
    part: &dyn PartitionHandle,
) -> Result<(), UpdateError> {
    if size > part.size() {
        return Err(UpdateError::TooLarge {
            slot,
            what,
            partition: part.label().to_string(),
            size,
            capacity: part.size(),
        });
    }
    Ok(())
}

/// A Jetson slot's kernel and kernel-dtb partitions, and the boot image header to write last.
pub(crate) struct TegraSlot {
    pub(crate) kernel: Box<dyn PartitionHandle>,
    pub(crate) dtb: Box<dyn PartitionHandle>,
    pub(crate) image: bootimg::Layout,
    pub(crate) header: Vec<u8>,
}

/// How [`TegraSlot::open`] opens the partitions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Open {
    /// For writing ([`Disk::open`], exclusive on a device).
    Write,
    /// For reading back ([`Disk::open_shared`]).
    Read,
}

impl TegraSlot {
    /// Open `layout`'s kernel and kernel-dtb partitions of `slot` and check that a boot image
    /// of `image` and a device tree of `dtb_size` bytes fit; the boot image header is made here,
    /// from `cmdline` (a command line it cannot hold is refused).
    pub(crate) fn open(
        disk: &dyn Disk,
        layout: SlotLayout,
        slot: Slot,
        image: bootimg::Layout,
        dtb_size: u64,
        cmdline: &str,
        how: Open,
    ) -> Result<TegraSlot, UpdateError> {
        let name = |p: Option<String>| {
            p.ok_or_else(|| UpdateError::Unsupported {
                reason: "this board has no kernel partitions".into(),
            })
        };
        let open = |label: String| match how {
            Open::Write => disk.open(&label),
            Open::Read => disk.open_shared(&label),
        };
        let kernel = open(name(layout.kernel(slot))?)?;
        let dtb = open(name(layout.kernel_dtb(slot))?)?;
        fits(slot, "boot image", image.image_size(), &*kernel)?;
        fits(slot, "device tree", dtb_size, &*dtb)?;
        let header =
            bootimg::header(image.kernel_size, image.ramdisk_size, cmdline).map_err(|e| {
                UpdateError::Unsupported {
                    reason: format!("slot {slot}'s boot image: {e}"),
                }
            })?;
        Ok(TegraSlot {
            kernel,
            dtb,
            image,
            header,
        })
    }

    /// Read back the boot image (header, kernel, initrd) and the device tree against the
    /// artifacts `artifact` gives for each role.
    pub(crate) fn verify<'a>(
        &self,
        artifact: impl Fn(Role) -> Option<&'a Artifact>,
        slot: Slot,
    ) -> Result<(), UpdateError> {
        for part in [&self.kernel, &self.dtb] {
            if let Err(e) = part.drop_cache() {
                tracing::debug!("could not drop cached pages of {}: {e}", part.describe());
            }
        }
        let mut first = vec![0u8; bootimg::PAGE_SIZE as usize];
        self.kernel
            .read_exact_at(&mut first, 0)
            .map_err(|e| UpdateError::Verify {
                slot,
                what: format!("boot image on {}", self.kernel.describe()),
                reason: format!("reading: {e}"),
            })?;
        if first != self.header {
            return Err(UpdateError::Verify {
                slot,
                what: format!("boot image on {}", self.kernel.describe()),
                reason: "the header does not read back as written".into(),
            });
        }
        for (role, part, offset) in [
            (Role::Kernel, &self.kernel, self.image.kernel_offset()),
            (Role::Initrd, &self.kernel, self.image.ramdisk_offset()),
            (Role::Dtb, &self.dtb, 0),
        ] {
            if let Some(a) = artifact(role) {
                verify_range(&**part, offset, a, slot)?;
            }
        }
        Ok(())
    }
}
