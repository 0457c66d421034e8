//! Re-verifying an installed slot: its [`InstalledSlot`] in the device state store (area
//! `slot-a`/`slot-b`), whose signed manifest must verify against the root key and agree with
//! the record; the rootfs partition against the record's dm-verity parameters (every data and
//! hash block, and the root hash); and the kernel and initrd on the ESP against their sha256.
//! Level 1 boots a slot only after this passes, and level 2 blesses a slot it wrote only after
//! this passes.
//!
//! The signature is checked without key expiry
//! ([`aperture_trust::signing::VERIFIED_WHEN_WRITTEN`]): the slot was
//! verified with the clock when it was installed, and a release key that expired since does
//! not make the installed slot less trustworthy (expiry decides what may be newly installed).

use aperture_appliance::{Area, Files, SlotLayout};
use aperture_slots::Slot;
use aperture_storage::{Access, Disk};
use aperture_trust::digest::sha256_file;
use aperture_trust::keys::PublicKey;
use aperture_trust::manifest::{Manifest, Role};
use aperture_trust::record::{InstalledSlot, SlotRecord};
use aperture_trust::signing::verify_written;
use aperture_trust::verity;

use crate::io::{PartReader, Store};
use crate::ResetError;

/// What `slot` holds according to `store`, with its manifest verified against `root` and the
/// record checked against the manifest.
pub fn installed(
    store: &Store,
    root: &PublicKey,
    slot: Slot,
) -> Result<(InstalledSlot, Manifest), ResetError> {
    let fail = |reason: String| ResetError::SlotVerify { slot, reason };
    let area = Area::slot(slot);
    let installed: InstalledSlot = store.read_json(area)?.ok_or_else(|| {
        fail(format!(
            "the device state ({}) has no record of what it holds (area {})",
            store.name(),
            area.name()
        ))
    })?;
    let manifest = verify_written(
        installed.manifest.as_bytes(),
        installed.signature.as_bytes(),
        root,
    )
    .map_err(|e| fail(format!("its signed manifest: {e}")))?
    .into_manifest();
    if SlotRecord::from_manifest(&manifest)? != installed.record {
        return Err(fail(
            "its record disagrees with the signed manifest kept beside it".into(),
        ));
    }
    Ok((installed, manifest))
}

/// Checks `slot` of a board laid out as `layout`; its record if everything matches.
pub fn verify_slot(
    disk: &dyn Disk,
    files: &Files,
    store: &Store,
    root: &PublicKey,
    layout: SlotLayout,
    slot: Slot,
) -> Result<SlotRecord, ResetError> {
    let fail = |reason: String| ResetError::SlotVerify { slot, reason };
    if layout != SlotLayout::Esp {
        return Err(fail(
            "re-verifying the boot partitions of a Jetson slot is not supported yet".into(),
        ));
    }
    let (installed, _) = installed(store, root, slot)?;
    let record = installed.record;
    let part = disk.open(&layout.rootfs(slot), Access::Shared)?;
    verity::verify_device(PartReader::new(part.as_ref(), part.size()), &record.verity)
        .map_err(|e| fail(format!("{}: {e}", part.describe())))?;
    if record.boot_file(Role::Kernel).is_none() {
        return Err(fail("its record lists no kernel".into()));
    }
    for (role, path) in [
        (Role::Kernel, files.kernel(slot)),
        (Role::Initrd, files.initrd(slot)),
    ] {
        let Some(expected) = record.boot_file(role) else {
            continue;
        };
        let (digest, len) = sha256_file(&path).map_err(|e| fail(e.to_string()))?;
        if digest != expected.sha256 || len != expected.size {
            return Err(fail(format!(
                "{} is {len} bytes with sha256 {digest}, its record says {} bytes with {}",
                path.display(),
                expected.size,
                expected.sha256
            )));
        }
    }
    Ok(record)
}
