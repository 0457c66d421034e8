//! The [`Io`] seam: EVERY write, fsync, rename, removal and boot-control step of an install goes
//! through it (partitions, the ESP, the state store, and with [`EspThroughIo`] the boot-control
//! backend's own entry files), so tests can cut the power at any one of them.
//!
//! * [`RealIo`]: does the operation.
//! * [`FaultIo`]: does the operation too, but counts it first; at operation N it fails instead
//!   (and so does everything after it: the power is off), and it models what a power cut on
//!   vfat leaves (see its documentation).
//!
//! Files on the ESP are replaced the vfat-safe way of `aperture_sys::fs`: written as
//! `NAME.tmp`, fsynced, renamed, fsynced AGAIN under the new name ([`Io::sync_path`]), then the
//! folder fsynced. Linux's `vfat_rename` puts the moved file's start cluster and size into the
//! new directory entry only at inode writeback, which the folder's fsync does not do.
//!
//! Reads are not operations: they change nothing.

mod fault;

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::Path;
use std::sync::Arc;

use aperture_slots::EspOps;
use aperture_sys::fs::{parent_dir, tmp_path};
use aperture_sys::FsError;

use crate::disk::PartitionHandle;
use crate::UpdateError;

pub use fault::FaultIo;

/// Free space of a file system, as `statvfs` reports it to unprivileged users.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Space {
    /// Bytes free.
    pub free: u64,
    /// Allocation unit (a vfat cluster): a file takes its size rounded up to it.
    pub block: u64,
}

impl Space {
    /// Bytes a file of `size` bytes takes.
    pub fn allocation(&self, size: u64) -> u64 {
        let block = self.block.max(1);
        size.div_ceil(block) * block
    }
}

/// Every state-changing operation of an install.
pub trait Io: Send + Sync {
    /// Write all of `buf` at `offset` of the partition.
    fn write_at(&self, part: &mut dyn PartitionHandle, buf: &[u8], offset: u64) -> io::Result<()> {
        part.write_all_at(buf, offset)
    }
    /// Make the partition's writes durable.
    fn sync(&self, part: &mut dyn PartitionHandle) -> io::Result<()> {
        part.sync()
    }
    /// Create (or truncate) a file for writing.
    fn create(&self, path: &Path) -> io::Result<File> {
        OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(path)
    }
    /// Append `buf` to a file made by [`Io::create`].
    fn write(&self, file: &mut File, _path: &Path, buf: &[u8]) -> io::Result<()> {
        file.write_all(buf)
    }
    /// Make a file's data durable.
    fn sync_file(&self, file: &File, _path: &Path) -> io::Result<()> {
        file.sync_all()
    }
    /// Rename within one folder, replacing `to`.
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        fs::rename(from, to)
    }
    /// fsync the file at `path`: after a rename, so that vfat writes the new directory entry's
    /// start cluster and size (see the module documentation).
    fn sync_path(&self, path: &Path) -> io::Result<()> {
        File::open(path)?.sync_all()
    }
    /// Remove a file.
    fn remove(&self, path: &Path) -> io::Result<()> {
        fs::remove_file(path)
    }
    /// Create a folder and its parents.
    fn create_dir_all(&self, path: &Path) -> io::Result<()> {
        fs::create_dir_all(path)
    }
    /// Make a folder's entries (renames, new and removed names) durable.
    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        File::open(dir)?.sync_all()
    }
    /// Announce a boot-control step that the backend then makes durable; an error here means
    /// the step must not happen.
    fn step(&self, _what: &str) -> io::Result<()> {
        Ok(())
    }
    /// Free space of the file system holding `dir` (a read, not an operation).
    fn space(&self, dir: &Path) -> io::Result<Space> {
        let st = rustix::fs::statvfs(dir).map_err(io::Error::from)?;
        Ok(Space {
            free: st.f_bavail.saturating_mul(st.f_frsize),
            block: st.f_frsize,
        })
    }
}

/// The real thing.
#[derive(Debug, Clone, Copy, Default)]
pub struct RealIo;

impl Io for RealIo {}

/// Rename `from` over `to` (one folder) and fsync `to` under its new name; the caller fsyncs
/// the folder, once for several renames.
pub fn rename_synced(io: &dyn Io, from: &Path, to: &Path) -> Result<(), UpdateError> {
    io.rename(from, to)
        .map_err(UpdateError::file("renaming into place", to))?;
    io.sync_path(to).map_err(UpdateError::file("syncing", to))
}

/// The boot-control backend's ESP operations ([`aperture_slots::EspOps`]) done through an
/// [`Io`], so a [`FaultIo`] can cut the power inside a boot-control step too.
#[derive(Clone)]
pub struct EspThroughIo(pub Arc<dyn Io>);

impl std::fmt::Debug for EspThroughIo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("EspThroughIo")
    }
}

impl EspOps for EspThroughIo {
    fn write_atomic(&self, path: &Path, contents: &[u8]) -> Result<(), FsError> {
        let io = &*self.0;
        let tmp = tmp_path(path);
        let mut f = io.create(&tmp).map_err(FsError::on("creating", &tmp))?;
        io.write(&mut f, &tmp, contents)
            .map_err(FsError::on("writing", &tmp))?;
        io.sync_file(&f, &tmp)
            .map_err(FsError::on("syncing", &tmp))?;
        drop(f);
        self.rename_durable(&tmp, path)
    }

    fn rename_durable(&self, from: &Path, to: &Path) -> Result<(), FsError> {
        let io = &*self.0;
        io.rename(from, to)
            .map_err(FsError::on("renaming into place", to))?;
        io.sync_path(to).map_err(FsError::on("syncing", to))?;
        let dir = parent_dir(to);
        io.sync_dir(&dir)
            .map_err(FsError::on("syncing folder", &dir))
    }

    fn remove_durable(&self, path: &Path) -> Result<bool, FsError> {
        let io = &*self.0;
        match io.remove(path) {
            Ok(()) => {
                let dir = parent_dir(path);
                io.sync_dir(&dir)
                    .map_err(FsError::on("syncing folder", &dir))?;
                Ok(true)
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(FsError::on("removing", path)(e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn esp_writes_through_io_are_vfat_safe_and_counted() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("slot-b+3.conf");
        let io = FaultIo::counting();
        EspThroughIo(Arc::new(io.clone()))
            .write_atomic(&p, b"one")
            .unwrap();
        let log = io.log();
        assert_eq!(log.len(), 6, "{log:#?}");
        assert!(
            log[3].contains("rename")
                && log[4].contains("fsync")
                && log[4].contains("slot-b+3.conf")
        );
        assert!(log[5].contains("fsync folder"), "{log:#?}");
        assert_eq!(fs::read(&p).unwrap(), b"one");
        assert!(!tmp_path(&p).exists());
        assert!(!EspThroughIo(Arc::new(RealIo))
            .remove_durable(&d.path().join("none"))
            .unwrap());
    }

    #[test]
    fn space_is_statvfs() {
        let d = tempfile::tempdir().unwrap();
        let s = RealIo.space(d.path()).unwrap();
        assert!(s.free > 0 && s.block > 0);
        let s = Space {
            free: 0,
            block: 4096,
        };
        assert_eq!(
            (s.allocation(0), s.allocation(1), s.allocation(4097)),
            (0, 4096, 8192)
        );
    }
}
