//! The updater's state in the device state store: the redundant, checksummed record store on the
//! raw partition `aperture_state` ([`aperture_appliance::store`]), never a file on the FAT ESP.
//!
//! | area | record |
//! |---|---|
//! | [`Area::Update`] | [`crate::state::DeviceState`]: floor, keyring sequence, trusted time, committed slot, install journal |
//! | [`Area::SlotA`], [`Area::SlotB`] | [`InstalledSlot`]: what the slot holds, with the exact signed manifest and signature it was installed from |
//! | [`Area::Boot`] | the Tegra boot-control ledger (Jetson boards; [`aperture_slots::tegra::Ledger`]) |
//!
//! The store is opened on the partition through the [`Disk`] seam, and every write and sync of
//! it goes through the [`Io`] seam ([`IoMedium`]), so the fault-injection tests cut the power in
//! the middle of a store write like at any other write of an install.
//!
//! A slot's record is written only when that slot is written: cleared when an install
//! invalidates the slot, written after the slot was read back and verified, before it is armed.

use std::fmt;
use std::io;
use std::sync::Arc;

use aperture_appliance::store::{Medium, StateStore};
use aperture_appliance::{Area, Board, Role};
use aperture_slots::Slot;
use aperture_trust::record::InstalledSlot;

use crate::disk::{Disk, PartitionHandle};
use crate::io::Io;
use crate::UpdateError;

/// The store on the `aperture_state` partition, written through [`Io`].
pub type Store = StateStore<IoMedium>;

/// A partition as a store [`Medium`] whose writes and syncs go through an [`Io`].
pub struct IoMedium {
    part: Box<dyn PartitionHandle>,
    io: Arc<dyn Io>,
}

impl IoMedium {
    /// `part`, written through `io`.
    pub fn new(part: Box<dyn PartitionHandle>, io: Arc<dyn Io>) -> IoMedium {
        IoMedium { part, io }
    }

    /// The partition.
    pub fn partition(&self) -> &dyn PartitionHandle {
        &*self.part
    }
}

impl fmt::Debug for IoMedium {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("IoMedium")
            .field(&self.part.describe())
            .finish()
    }
}

impl Medium for IoMedium {
    fn size(&self) -> io::Result<u64> {
        Ok(self.part.size())
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.part.read_exact_at(buf, offset)
    }

    fn write_at(&mut self, buf: &[u8], offset: u64) -> io::Result<()> {
        self.io.write_at(&mut *self.part, buf, offset)
    }

    fn sync(&mut self) -> io::Result<()> {
        self.io.sync(&mut *self.part)
    }
}

/// Open the store on `board`'s state partition of `disk`, writing through `io`. The partition
/// is not claimed exclusively ([`Disk::open_unclaimed`]): the boot control's ledger, the
/// updater and aperture-reset each hold a store on it at once.
pub fn open(disk: &dyn Disk, board: Board, io: Arc<dyn Io>) -> Result<Store, UpdateError> {
    let part = disk.open_unclaimed(board.partition(Role::State))?;
    let name = part.describe();
    Ok(StateStore::new(IoMedium::new(part, io), name)?)
}

/// What `slot` holds according to its record; `None` while it is being written, when it was
/// never recorded, or when the record does not parse (reported, never fatal: the next install
/// of the slot rewrites it).
pub fn read_slot(store: &Store, slot: Slot) -> Result<Option<InstalledSlot>, UpdateError> {
    let area = Area::slot(slot);
    match store.read_json::<InstalledSlot>(area) {
        Ok(record) => Ok(record),
        Err(aperture_appliance::store::StoreError::Json { err, .. }) => {
            tracing::warn!(
                "the {} record of the device state ({}) does not parse ({err}); slot {slot} is \
                 reported as holding nothing known until it is installed again",
                area.name(),
                store.name()
            );
            Ok(None)
        }
        Err(e) => Err(e.into()),
    }
}

/// Record what `slot` now holds.
pub fn write_slot(
    store: &mut Store,
    slot: Slot,
    record: &InstalledSlot,
) -> Result<(), UpdateError> {
    store.write_json(Area::slot(slot), record)?;
    Ok(())
}

/// Forget what `slot` held (an install is about to overwrite it).
pub fn clear_slot(store: &mut Store, slot: Slot) -> Result<(), UpdateError> {
    store.clear(Area::slot(slot))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::io::FaultIo;
    use aperture_appliance::store::PARTITION_BYTES;

    /// A partition in memory.
    struct MemPart(Vec<u8>);

    impl PartitionHandle for MemPart {
        fn label(&self) -> &str {
            "aperture_state"
        }
        fn describe(&self) -> String {
            "mem:aperture_state".into()
        }
        fn size(&self) -> u64 {
            self.0.len() as u64
        }
        fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
            let at = offset as usize;
            buf.copy_from_slice(&self.0[at..at + buf.len()]);
            Ok(())
        }
        fn write_all_at(&mut self, buf: &[u8], offset: u64) -> io::Result<()> {
            let at = offset as usize;
            self.0[at..at + buf.len()].copy_from_slice(buf);
            Ok(())
        }
        fn sync(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    /// A disk whose exclusive opens fail as a second `O_EXCL` open of a block device does.
    struct Claimed;

    impl Disk for Claimed {
        fn describe(&self) -> String {
            "claimed".into()
        }
        fn open(&self, label: &str) -> Result<Box<dyn PartitionHandle>, UpdateError> {
            Err(UpdateError::File {
                op: "opening (exclusively) partition",
                path: label.into(),
                source: io::Error::from_raw_os_error(16),
            })
        }
        fn open_unclaimed(&self, _label: &str) -> Result<Box<dyn PartitionHandle>, UpdateError> {
            Ok(Box::new(MemPart(vec![0; PARTITION_BYTES as usize])))
        }
    }

    /// Round 2 opened the store exclusively: on a Jetson the Tegra ledger's store then kept
    /// every other store (the updater's own) from opening (EBUSY).
    #[test]
    fn the_store_does_not_claim_its_partition() {
        let io: Arc<dyn Io> = Arc::new(crate::io::RealIo);
        let mut first = open(&Claimed, Board::JetsonOrinAgx, io.clone()).unwrap();
        let second = open(&Claimed, Board::JetsonOrinAgx, io).unwrap();
        first.write(Area::Boot, b"{}").unwrap();
        assert!(second.read(Area::Update).unwrap().is_none());
    }

    #[test]
    fn store_writes_are_io_operations() {
        let io = FaultIo::counting();
        let part = Box::new(MemPart(vec![0; PARTITION_BYTES as usize]));
        let mut store = StateStore::new(IoMedium::new(part, Arc::new(io.clone())), "mem").unwrap();
        store.write(Area::Update, b"{}").unwrap();
        let log = io.log();
        assert_eq!(log.len(), 2, "{log:?}");
        assert!(log[0].contains("of aperture_state") && log[1].contains("fsync aperture_state"));
        assert_eq!(store.read(Area::Update).unwrap().unwrap(), b"{}");
        // A cut at the write: the store refuses, the old (empty) record stays.
        let cut = FaultIo::crash_at(1);
        let part = Box::new(MemPart(vec![0; PARTITION_BYTES as usize]));
        let mut store = StateStore::new(IoMedium::new(part, Arc::new(cut)), "mem").unwrap();
        assert!(store.write(Area::Update, b"{}").is_err());
        assert_eq!(store.read(Area::Update).unwrap(), None);
    }
}
