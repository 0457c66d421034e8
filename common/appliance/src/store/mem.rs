//! [`MemMedium`]: a store medium in memory that models a power cut the way a disk can suffer
//! one: writes not yet synced are lost, kept, or torn (kept only up to some byte), and from the
//! operation chosen for the cut on, every write and sync fails. Tier-1 tests of every program
//! that keeps state in the store use it.

use std::io;
use std::sync::{Arc, Mutex};

use super::Medium;

/// What a power cut does to writes that were not synced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cut {
    /// They are lost.
    Lose,
    /// They reached the disk.
    Keep,
    /// The last one reached the disk up to this many bytes; earlier ones in full.
    Tear(usize),
}

#[derive(Debug, Default)]
struct State {
    durable: Vec<u8>,
    pending: Vec<(u64, Vec<u8>)>,
    ops: usize,
    fail_at: Option<usize>,
}

/// A medium in memory. Clones share one disk, so a test keeps a clone to cut the power while
/// the program under test writes through another.
#[derive(Debug, Clone, Default)]
pub struct MemMedium {
    state: Arc<Mutex<State>>,
}

impl MemMedium {
    /// A zeroed medium of `size` bytes.
    pub fn zeroed(size: u64) -> MemMedium {
        MemMedium {
            state: Arc::new(Mutex::new(State {
                durable: vec![0; size as usize],
                ..State::default()
            })),
        }
    }

    /// A medium holding `bytes` (a partition read from a disk image).
    pub fn from_bytes(bytes: Vec<u8>) -> MemMedium {
        MemMedium {
            state: Arc::new(Mutex::new(State {
                durable: bytes,
                ..State::default()
            })),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Fail every write and sync from operation `n` on (1-based, counted from now on).
    pub fn fail_from(&self, n: usize) {
        let mut s = self.lock();
        s.ops = 0;
        s.fail_at = Some(n);
    }

    /// Operations (writes and syncs) counted since the last [`MemMedium::fail_from`].
    pub fn ops(&self) -> usize {
        self.lock().ops
    }

    /// The power goes out: unsynced writes are treated as `cut` says, and the medium works
    /// again (the next boot).
    pub fn power_cut(&self, cut: Cut) {
        let mut s = self.lock();
        let pending = std::mem::take(&mut s.pending);
        let last = pending.len().saturating_sub(1);
        for (i, (offset, data)) in pending.into_iter().enumerate() {
            let keep = match cut {
                Cut::Lose => 0,
                Cut::Keep => data.len(),
                Cut::Tear(n) if i == last => n.min(data.len()),
                Cut::Tear(_) => data.len(),
            };
            let at = offset as usize;
            s.durable[at..at + keep].copy_from_slice(&data[..keep]);
        }
        s.fail_at = None;
        s.ops = 0;
    }

    /// Overwrite durable bytes directly (a test damaging the medium).
    pub fn damage(&self, offset: u64, bytes: &[u8]) {
        let mut s = self.lock();
        let at = offset as usize;
        s.durable[at..at + bytes.len()].copy_from_slice(bytes);
    }

    /// The durable bytes.
    pub fn snapshot(&self) -> Vec<u8> {
        self.lock().durable.clone()
    }

    fn count(s: &mut State) -> io::Result<()> {
        s.ops += 1;
        match s.fail_at {
            Some(n) if s.ops >= n => Err(io::Error::other("power cut (MemMedium)")),
            _ => Ok(()),
        }
    }
}

impl Medium for MemMedium {
    fn size(&self) -> io::Result<u64> {
        Ok(self.lock().durable.len() as u64)
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        let s = self.lock();
        let at = offset as usize;
        if at + buf.len() > s.durable.len() {
            return Err(io::Error::from(io::ErrorKind::UnexpectedEof));
        }
        buf.copy_from_slice(&s.durable[at..at + buf.len()]);
        // Reads see unsynced writes, as a page cache does.
        for (off, data) in &s.pending {
            let (start, end) = (*off as usize, *off as usize + data.len());
            let (lo, hi) = (start.max(at), end.min(at + buf.len()));
            if lo < hi {
                buf[lo - at..hi - at].copy_from_slice(&data[lo - start..hi - start]);
            }
        }
        Ok(())
    }

    fn write_at(&mut self, buf: &[u8], offset: u64) -> io::Result<()> {
        let mut s = self.lock();
        MemMedium::count(&mut s)?;
        if offset as usize + buf.len() > s.durable.len() {
            return Err(io::Error::other("write past the end of the medium"));
        }
        s.pending.push((offset, buf.to_vec()));
        Ok(())
    }

    fn sync(&mut self) -> io::Result<()> {
        let mut s = self.lock();
        MemMedium::count(&mut s)?;
        for (offset, data) in std::mem::take(&mut s.pending) {
            let at = offset as usize;
            s.durable[at..at + data.len()].copy_from_slice(&data);
        }
        Ok(())
    }
}
