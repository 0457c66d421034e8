//! Partition I/O for the reset logic: a [`Disk`] wrapper whose partitions pass every write
//! through [`Faults`] (so tests can cut the power at any write), a `Read + Seek` view of a
//! partition range ([`PartReader`]) for the bundle and verity readers, chunked zeroing, and
//! the device state store opened on its partition ([`open_store`]).

use std::io::{self, Read, Seek, SeekFrom};
use std::path::Path;
use std::sync::Arc;

use aperture_appliance::store::Medium;
use aperture_appliance::{Board, Role, StateStore};
use aperture_storage::{Access, Disk, Partition, StorageError};

use crate::seams::Faults;
use crate::ResetError;

/// Bytes per read or write when streaming partitions.
pub const CHUNK: usize = 1 << 20;

/// A disk whose partitions report every write to [`Faults`] first.
pub struct GuardedDisk<'a> {
    inner: &'a dyn Disk,
    faults: Arc<Faults>,
}

impl<'a> GuardedDisk<'a> {
    /// Wrap `inner`.
    pub fn new(inner: &'a dyn Disk, faults: Arc<Faults>) -> GuardedDisk<'a> {
        GuardedDisk { inner, faults }
    }
}

impl Disk for GuardedDisk<'_> {
    fn describe(&self) -> String {
        self.inner.describe()
    }
    fn has(&self, label: &str) -> Result<bool, StorageError> {
        self.inner.has(label)
    }
    fn open(&self, label: &str, access: Access) -> Result<Box<dyn Partition>, StorageError> {
        Ok(Box::new(GuardedPartition {
            inner: self.inner.open(label, access)?,
            faults: self.faults.clone(),
        }))
    }
    fn grow_to_end(&self, label: &str) -> Result<Option<u64>, StorageError> {
        self.inner.grow_to_end(label)
    }
}

/// A partition whose writes may be cut by [`Faults`].
pub struct GuardedPartition {
    inner: Box<dyn Partition>,
    faults: Arc<Faults>,
}

impl Partition for GuardedPartition {
    fn label(&self) -> &str {
        self.inner.label()
    }
    fn describe(&self) -> String {
        self.inner.describe()
    }
    fn device(&self) -> Option<&Path> {
        self.inner.device()
    }
    fn size(&self) -> u64 {
        self.inner.size()
    }
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.inner.read_exact_at(buf, offset)
    }
    fn write_all_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        self.faults.on_write(&format!(
            "{} bytes at {offset} of {}",
            buf.len(),
            self.inner.describe()
        ))?;
        self.inner.write_all_at(buf, offset)
    }
    fn sync(&self) -> io::Result<()> {
        self.inner.sync()
    }
}

/// `Read + Seek` over bytes `0..len` of a partition.
pub struct PartReader<'p> {
    part: &'p dyn Partition,
    pos: u64,
    len: u64,
}

impl<'p> PartReader<'p> {
    /// The first `len` bytes of `part` (at most its size).
    pub fn new(part: &'p dyn Partition, len: u64) -> PartReader<'p> {
        PartReader {
            part,
            pos: 0,
            len: len.min(part.size()),
        }
    }
}

impl Read for PartReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = (self.len.saturating_sub(self.pos)).min(buf.len() as u64) as usize;
        if n == 0 {
            return Ok(0);
        }
        self.part.read_exact_at(&mut buf[..n], self.pos)?;
        self.pos += n as u64;
        Ok(n)
    }
}

impl Seek for PartReader<'_> {
    fn seek(&mut self, to: SeekFrom) -> io::Result<u64> {
        let target = match to {
            SeekFrom::Start(n) => Some(n),
            SeekFrom::End(d) => self.len.checked_add_signed(d),
            SeekFrom::Current(d) => self.pos.checked_add_signed(d),
        };
        match target {
            Some(t) => {
                self.pos = t;
                Ok(t)
            }
            None => Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "seek before the start",
            )),
        }
    }
}

/// Maps a partition I/O error to [`ResetError::Partition`].
pub fn part_err(op: &'static str, part: &dyn Partition) -> impl FnOnce(io::Error) -> ResetError {
    let partition = part.describe();
    move |err| ResetError::Partition { op, partition, err }
}

/// The device state store as reset uses it: on any medium (its partition on a device, a
/// guarded partition of a disk image in tests).
pub type Store = StateStore<Box<dyn Medium>>;

/// A partition as a store medium. Opened through a [`GuardedDisk`], every store write is a
/// partition write the tests can cut.
pub struct PartitionMedium(pub Box<dyn Partition>);

impl Medium for PartitionMedium {
    fn size(&self) -> io::Result<u64> {
        Ok(self.0.size())
    }
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.0.read_exact_at(buf, offset)
    }
    fn write_at(&mut self, buf: &[u8], offset: u64) -> io::Result<()> {
        self.0.write_all_at(buf, offset)
    }
    fn sync(&mut self) -> io::Result<()> {
        self.0.sync()
    }
}

/// The device state store on `board`'s state partition (`aperture_state`) of `disk`.
pub fn open_store(disk: &dyn Disk, board: Board) -> Result<Store, ResetError> {
    let part = disk.open(board.partition(Role::State), Access::Shared)?;
    let name = part.describe();
    let medium: Box<dyn Medium> = Box::new(PartitionMedium(part));
    Ok(StateStore::new(medium, name)?)
}

/// Write zeros over `range` of `part` in [`CHUNK`]s, then sync.
pub fn zero_range(part: &dyn Partition, start: u64, end: u64) -> Result<(), ResetError> {
    let zeros = vec![0u8; CHUNK];
    let mut at = start;
    let end = end.min(part.size());
    while at < end {
        let n = (end - at).min(CHUNK as u64) as usize;
        part.write_all_at(&zeros[..n], at)
            .map_err(part_err("zeroing", part))?;
        at += n as u64;
    }
    part.sync().map_err(part_err("syncing", part))
}

/// Number of zero bytes in `buf` (word at a time where it can).
pub fn count_zeros(buf: &[u8]) -> u64 {
    let mut words = buf.chunks_exact(8);
    let mut n = 0u64;
    for w in &mut words {
        if w == [0u8; 8] {
            n += 8;
        } else {
            n += w.iter().filter(|b| **b == 0).count() as u64;
        }
    }
    n + words.remainder().iter().filter(|b| **b == 0).count() as u64
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A store in memory.
    pub(crate) fn mem_store() -> Store {
        use aperture_appliance::store::{mem::MemMedium, PARTITION_BYTES};
        let m: Box<dyn Medium> = Box::new(MemMedium::zeroed(PARTITION_BYTES));
        StateStore::new(m, "mem").unwrap()
    }
    use aperture_storage::MemPartition;

    #[test]
    fn reader_is_bounded_and_seekable() {
        let part = MemPartition::new("x", (0..=255u8).collect());
        let mut r = PartReader::new(&part, 10);
        let mut all = Vec::new();
        r.read_to_end(&mut all).unwrap();
        assert_eq!(all, (0..10u8).collect::<Vec<_>>());
        r.seek(SeekFrom::Start(8)).unwrap();
        let mut two = [0u8; 4];
        assert_eq!(r.read(&mut two).unwrap(), 2);
        assert_eq!(r.seek(SeekFrom::End(-1)).unwrap(), 9);
    }

    #[test]
    fn zeroing_and_counting() {
        let part = MemPartition::new("x", vec![1u8; 3 * CHUNK + 5]);
        zero_range(&part, 3, 2 * CHUNK as u64).unwrap();
        let b = part.bytes();
        assert_eq!(count_zeros(&b), 2 * CHUNK as u64 - 3);
        assert_eq!(count_zeros(&[0, 1, 0, 0, 0, 0, 0, 0, 0, 2, 0]), 9);
    }

    #[test]
    fn guarded_writes_can_be_cut() {
        let faults = Arc::new(Faults::at(crate::seams::FaultPoint::Write(1)));
        let part = GuardedPartition {
            inner: Box::new(MemPartition::new("x", vec![1u8; 16])),
            faults,
        };
        assert!(part.write_all_at(&[0], 0).is_err());
        let mut b = [9u8; 1];
        part.read_exact_at(&mut b, 0).unwrap();
        assert_eq!(b, [1], "a cut write changes nothing");
    }
}
