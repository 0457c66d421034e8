//! Re-verifying an installed slot against its record (`/efi/aperture/<slot>/slot.json`): the
//! rootfs partition against the record's dm-verity parameters (every data and hash block, and
//! the root hash), and the kernel and initrd on the ESP against their sha256. Level 1 boots a
//! slot only after this passes.
//!
//! The record is not signed itself (trust's `record` module); what makes this meaningful is
//! that the root hash it holds is the one the slot's boot entry pins on the kernel command
//! line, so a record changed to match a tampered partition would not boot either.

use aperture_slots::Slot;
use aperture_storage::{Access, Disk};
use aperture_trust::digest::sha256_file;
use aperture_trust::manifest::Role;
use aperture_trust::record::SlotRecord;
use aperture_trust::verity;

use crate::io::PartReader;
use crate::paths::{rootfs_partition, Paths, INITRD_FILE, KERNEL_FILE};
use crate::ResetError;

/// Checks `slot`; its record if everything matches.
pub fn verify_slot(disk: &dyn Disk, paths: &Paths, slot: Slot) -> Result<SlotRecord, ResetError> {
    let fail = |reason: String| ResetError::SlotVerify { slot, reason };
    let record_path = paths.slot_record(slot);
    let bytes = std::fs::read(&record_path)
        .map_err(|e| fail(format!("cannot read {}: {e}", record_path.display())))?;
    let record = SlotRecord::from_json(&bytes).map_err(|e| fail(e.to_string()))?;
    let part = disk.open(&rootfs_partition(slot), Access::Shared)?;
    verity::verify_device(PartReader::new(part.as_ref(), part.size()), &record.verity)
        .map_err(|e| fail(format!("{}: {e}", part.describe())))?;
    if record.boot_file(Role::Kernel).is_none() {
        return Err(fail("its record lists no kernel".into()));
    }
    for (role, name) in [(Role::Kernel, KERNEL_FILE), (Role::Initrd, INITRD_FILE)] {
        let Some(expected) = record.boot_file(role) else {
            continue;
        };
        let path = paths.slot_dir(slot).join(name);
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
