//! Re-verifying an installed slot: does it hold what its record says? The record
//! ([`aperture_trust::record::InstalledSlot`] in the slot's area of the device state store) is
//! not signed itself; the signed manifest kept beside it is verified against the root key as
//! it was when it was written (key validity at the image's build time, not against the clock:
//! [`aperture_trust::signing::verify_written`]), the record must agree with it, and then every
//! block of the slot is read back the way the installer reads it back after writing
//! ([`crate::install`], step 7): dm-verity and sha256 of the rootfs; kernel and initrd on the
//! ESP (qemu boards), or the boot image in the kernel partition, header included, and the
//! device tree in the kernel-dtb partition (Jetson).
//!
//! aperture-reset level 1 boots a slot only after this passes, and its second half blesses the
//! slot it wrote only after this passes. Partitions are opened shared
//! ([`crate::disk::Disk::open_shared`]): the running slot is held by dm-verity.

use aperture_slots::{Slot, SlotLayout};
use aperture_trust::manifest::{Artifact, Manifest, Role};
use aperture_trust::record::{InstalledSlot, SlotRecord};

use crate::place::{boot_image, slot_boot, Open, TegraSlot};
use crate::readback::{verify_file, verify_rootfs};
use crate::{UpdateError, Updater};

impl Updater {
    /// What `slot` holds according to its record, with the signed manifest kept beside it
    /// verified against the root key and the record checked against that manifest; `None`
    /// when the slot has no record (it is being written, or was never recorded). Reads only
    /// the device state store.
    pub fn installed(&self, slot: Slot) -> Result<Option<(InstalledSlot, Manifest)>, UpdateError> {
        let facts = crate::facts::load(&self.paths.build_facts)?;
        let store = self.store(facts.board)?;
        let Some(installed) = crate::store::read_slot(&store, slot)? else {
            return Ok(None);
        };
        let fail = |what: &str, reason: String| UpdateError::Verify {
            slot,
            what: what.into(),
            reason,
        };
        let root = self.root_key()?;
        let manifest = aperture_trust::signing::verify_written(
            installed.manifest.as_bytes(),
            installed.signature.as_bytes(),
            &root,
        )
        .map_err(|e| fail("its signed manifest", crate::error_chain(&e)))?
        .into_manifest();
        let expected = SlotRecord::from_manifest(&manifest)?;
        if expected != installed.record {
            return Err(fail(
                "its record",
                "it disagrees with the signed manifest kept beside it".into(),
            ));
        }
        Ok(Some((installed, manifest)))
    }

    /// Read `slot` back block for block against its record (see the module documentation);
    /// what it holds if everything matches, else [`UpdateError::Verify`] naming what differs.
    pub fn verify_slot(&self, slot: Slot) -> Result<(InstalledSlot, Manifest), UpdateError> {
        let Some((installed, manifest)) = self.installed(slot)? else {
            let store = self.store(crate::facts::load(&self.paths.build_facts)?.board)?;
            return Err(UpdateError::Verify {
                slot,
                what: "its record".into(),
                reason: format!(
                    "the device state ({}) has no record of what it holds (area {})",
                    store.name(),
                    aperture_appliance::Area::slot(slot).name()
                ),
            });
        };
        let facts = crate::facts::load(&self.paths.build_facts)?;
        let layout = facts.board.slot_layout();
        let artifact = |role: Role| -> Option<&Artifact> {
            manifest.artifacts.iter().find(|a| a.role == role)
        };
        let missing = |role: Role| UpdateError::Verify {
            slot,
            what: "its record".into(),
            reason: format!("it lists no {role:?}"),
        };
        let rootfs = artifact(Role::Rootfs).ok_or_else(|| missing(Role::Rootfs))?;
        let part = self.disk.open_shared(&layout.rootfs(slot))?;
        verify_rootfs(&*part, rootfs, slot)?;
        match layout {
            SlotLayout::Esp => {
                let name = slot.uki_artifact();
                let a = manifest
                    .artifacts
                    .iter()
                    .find(|a| a.role == Role::Uki && a.name.as_str() == name)
                    .ok_or_else(|| UpdateError::Verify {
                        slot,
                        what: "its record".into(),
                        reason: format!("it lists no {name}"),
                    })?;
                let path = self.paths.files().uki(slot);
                verify_file(&path, a, slot)?;
                let files = self.paths.files();
                crate::uki::check(
                    &path,
                    slot,
                    &crate::uki::Expected {
                        cmdline: &crate::place::slot_cmdline(&manifest, layout, slot)?,
                        security_version: manifest.security_version,
                        db_cert: &files.secure_boot_db(),
                        policy_key: &files.tpm_policy_key(),
                    },
                )?;
            }
            SlotLayout::Tegra(_) => {
                let size = |role| artifact(role).map(|a| a.size).ok_or_else(|| missing(role));
                let image = boot_image(size(Role::Kernel)?, size(Role::Initrd)?)?;
                let boot = slot_boot(&manifest, layout, slot)?;
                let tegra = TegraSlot::open(
                    &*self.disk,
                    layout,
                    slot,
                    image,
                    size(Role::Dtb)?,
                    boot.options.as_deref().unwrap_or_default(),
                    Open::Read,
                )?;
                tegra.verify(artifact, slot)?;
            }
        }
        Ok((installed, manifest))
    }
}
