//! Where slots live: a [`Disk`] opens a partition by its GPT label and hands out a
//! [`PartitionHandle`] that reads, writes and syncs at offsets inside the partition, never
//! outside it.
//!
//! * [`PartlabelDisk`]: the appliance, `/dev/disk/by-partlabel/<label>`, opened with `O_EXCL`
//!   so that a partition in use (mounted, or held by dm-verity as the running root is) cannot
//!   be opened for writing at all: a second guard, under the slot logic, against writing the
//!   active slot.
//! * [`FileDisk`]: a disk image file whose GPT is read with `aperture-gpt` (tier-1 tests, and
//!   the benchmark's file-backed slots).
//!
//! Writes go through [`crate::io::Io`], not through these handles directly, so that tests can
//! cut the power at any of them.
//!
//! A [`FilePartition`] also holds a second descriptor opened with `O_DIRECT` where the kernel
//! allows it: transfers whose memory, offset and length are 4096-aligned go through it, past
//! the page cache (the install's large writes and the read-back, which so reads the medium and
//! not cached pages); any other transfer goes through the ordinary descriptor. Linux keeps the
//! two coherent: a direct write writes back and drops the cached pages of its range first.

use std::fs::{File, OpenOptions};
use std::io::{self, Seek, SeekFrom};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use crate::aligned::is_aligned;
use crate::UpdateError;

/// An open partition: positional I/O bounded to the partition.
pub trait PartitionHandle: Send + Sync {
    /// The partition's GPT label (`rootfs_b`).
    fn label(&self) -> &str;
    /// Human name for messages (`/dev/disk/by-partlabel/rootfs_b`, `disk.img:rootfs_b`).
    fn describe(&self) -> String;
    /// Size in bytes.
    fn size(&self) -> u64;
    /// Fill `buf` from `offset`; an error if that passes the end of the partition.
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()>;
    /// Write all of `buf` at `offset`; an error if that passes the end of the partition.
    /// Call through [`crate::io::Io::write_at`], never directly, in install code.
    fn write_all_at(&mut self, buf: &[u8], offset: u64) -> io::Result<()>;
    /// Make every write so far durable (fdatasync). Call through [`crate::io::Io::sync`].
    fn sync(&mut self) -> io::Result<()>;
    /// Drop cached pages of the partition so a read-back comes from the medium, not from the
    /// page cache that the writes just filled. Best effort; the default does nothing.
    fn drop_cache(&self) -> io::Result<()> {
        Ok(())
    }
    /// Start writing `len` bytes from `offset` to the medium now, without waiting and without
    /// any durability promise (only [`PartitionHandle::sync`] makes writes durable): a long
    /// stream then overlaps its writeback with decompression instead of leaving it all to the
    /// final sync. Best effort; the default does nothing.
    fn start_writeback(&self, offset: u64, len: u64) -> io::Result<()> {
        let _ = (offset, len);
        Ok(())
    }
    /// Whether aligned reads bypass the page cache (`O_DIRECT`), so a read-back of aligned
    /// chunks comes from the medium whatever is cached. The default says no.
    fn reads_direct(&self) -> bool {
        false
    }
    /// Fill `buf` from `offset` past the page cache, or fail: never from cached pages. The
    /// read-back that follows a stream ([`crate::readback::follow_rootfs`]) needs the
    /// medium's bytes before the sync, when the page cache may hold others. The default
    /// cannot (`Unsupported`).
    fn read_direct_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        let _ = (buf, offset);
        Err(io::Error::new(
            io::ErrorKind::Unsupported,
            "this partition handle has no direct reads",
        ))
    }
}

/// A disk with GPT-labelled partitions.
pub trait Disk {
    /// Human name for messages.
    fn describe(&self) -> String;
    /// Open the partition labelled `label` for reading and writing.
    fn open(&self, label: &str) -> Result<Box<dyn PartitionHandle>, UpdateError>;
    /// Open the partition labelled `label` to read it back while others may hold it (the
    /// running slot is held by dm-verity, which an exclusive open refuses). The default is
    /// [`Disk::open`].
    fn open_shared(&self, label: &str) -> Result<Box<dyn PartitionHandle>, UpdateError> {
        self.open(label)
    }
    /// Open the partition labelled `label` for reading and writing without claiming it: the
    /// device state store, which several handles share at once (the Tegra ledger of the boot
    /// control, the updater's records, aperture-reset's journal), and two exclusive opens of
    /// one block device refuse each other (EBUSY). Never a slot. The default is
    /// [`Disk::open`].
    fn open_unclaimed(&self, label: &str) -> Result<Box<dyn PartitionHandle>, UpdateError> {
        self.open(label)
    }
}

/// A partition that is a byte range of an open file (a whole block device is the range
/// starting at 0).
#[derive(Debug)]
pub struct FilePartition {
    file: File,
    /// The same partition opened with `O_DIRECT`, if the kernel allowed it.
    direct: Option<File>,
    base: u64,
    size: u64,
    label: String,
    describe: String,
}

impl FilePartition {
    fn check(&self, len: usize, offset: u64) -> io::Result<u64> {
        let end = offset.checked_add(len as u64);
        match end {
            Some(end) if end <= self.size => Ok(self.base + offset),
            _ => Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "{} bytes at offset {offset} pass the end of the {}-byte partition",
                    len, self.size
                ),
            )),
        }
    }
}

impl PartitionHandle for FilePartition {
    fn label(&self) -> &str {
        &self.label
    }

    fn describe(&self) -> String {
        self.describe.clone()
    }

    fn size(&self) -> u64 {
        self.size
    }

    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        let at = self.check(buf.len(), offset)?;
        match &self.direct {
            Some(direct) if is_aligned(buf, at) => match direct.read_exact_at(buf, at) {
                Err(e) if e.raw_os_error() == Some(EINVAL) => self.file.read_exact_at(buf, at),
                done => done,
            },
            _ => self.file.read_exact_at(buf, at),
        }
    }

    fn write_all_at(&mut self, buf: &[u8], offset: u64) -> io::Result<()> {
        let at = self.check(buf.len(), offset)?;
        match &self.direct {
            // EINVAL: a file system that opens O_DIRECT but refuses the transfer.
            Some(direct) if is_aligned(buf, at) => match direct.write_all_at(buf, at) {
                Err(e) if e.raw_os_error() == Some(EINVAL) => self.file.write_all_at(buf, at),
                done => done,
            },
            _ => self.file.write_all_at(buf, at),
        }
    }

    fn reads_direct(&self) -> bool {
        self.direct.is_some()
    }

    fn read_direct_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        let at = self.check(buf.len(), offset)?;
        match &self.direct {
            // No fallback to the ordinary descriptor: its reads may come from the page cache.
            Some(direct) if is_aligned(buf, at) => direct.read_exact_at(buf, at),
            Some(_) => Err(io::Error::new(
                io::ErrorKind::Unsupported,
                format!(
                    "{} bytes at {at} are not aligned for a direct read",
                    buf.len()
                ),
            )),
            None => Err(io::Error::new(
                io::ErrorKind::Unsupported,
                format!("{} was not opened with O_DIRECT", self.describe),
            )),
        }
    }

    fn sync(&mut self) -> io::Result<()> {
        self.file.sync_data()
    }

    fn start_writeback(&self, offset: u64, len: u64) -> io::Result<()> {
        // Linux's POSIX_FADV_DONTNEED starts asynchronous writeback of the range's dirty pages
        // (and drops the clean ones, which also keeps a 1 GiB stream from filling the cache).
        let at = self.check(usize::try_from(len).unwrap_or(usize::MAX), offset)?;
        rustix::fs::fadvise(&self.file, at, len, rustix::fs::Advice::DontNeed)
            .map_err(io::Error::from)
    }

    fn drop_cache(&self) -> io::Result<()> {
        rustix::fs::fadvise(
            &self.file,
            self.base,
            self.size,
            rustix::fs::Advice::DontNeed,
        )
        .map_err(io::Error::from)
    }
}

/// Which `O_DIRECT` descriptor a partition gets beside its ordinary one.
#[derive(Debug, Clone, Copy)]
enum Direct {
    ReadWrite,
    Read,
    No,
}

/// `path` opened with `O_DIRECT`, or `None` where the file system refuses it (tmpfs before
/// Linux 6.6): the ordinary descriptor then does everything.
fn open_direct(path: &Path, write: bool) -> Option<File> {
    OpenOptions::new()
        .read(true)
        .write(write)
        .custom_flags(rustix::fs::OFlags::DIRECT.bits() as i32)
        .open(path)
        .ok()
}

const EINVAL: i32 = rustix::io::Errno::INVAL.raw_os_error();

/// Partitions by label under `/dev/disk/by-partlabel` (the appliance).
#[derive(Debug, Clone)]
pub struct PartlabelDisk {
    dir: PathBuf,
}

impl PartlabelDisk {
    /// Partitions under `dir` (normally `/dev/disk/by-partlabel`).
    pub fn new(dir: impl Into<PathBuf>) -> PartlabelDisk {
        PartlabelDisk { dir: dir.into() }
    }
}

impl PartlabelDisk {
    fn open_with(
        &self,
        label: &str,
        options: &OpenOptions,
        op: &'static str,
        direct: Direct,
    ) -> Result<Box<dyn PartitionHandle>, UpdateError> {
        let path = self.dir.join(label);
        if !path.exists() {
            return Err(UpdateError::NoPartition {
                name: label.into(),
                disk: self.describe(),
            });
        }
        let mut file = options.open(&path).map_err(UpdateError::file(op, &path))?;
        let size = file
            .seek(SeekFrom::End(0))
            .map_err(UpdateError::file("finding the size of", &path))?;
        // Without O_EXCL: the first descriptor holds the claim, and a second exclusive open
        // of the same block device would be refused (EBUSY).
        let direct = match direct {
            Direct::ReadWrite => open_direct(&path, true),
            Direct::Read => open_direct(&path, false),
            Direct::No => None,
        };
        Ok(Box::new(FilePartition {
            file,
            direct,
            base: 0,
            size,
            label: label.into(),
            describe: path.display().to_string(),
        }))
    }
}

impl Disk for PartlabelDisk {
    fn describe(&self) -> String {
        self.dir.display().to_string()
    }

    fn open(&self, label: &str) -> Result<Box<dyn PartitionHandle>, UpdateError> {
        // O_EXCL on a block device without O_CREAT: exclusive open, EBUSY if it is mounted or
        // held by device-mapper (open(2)).
        let mut options = OpenOptions::new();
        options
            .read(true)
            .write(true)
            .custom_flags(rustix::fs::OFlags::EXCL.bits() as i32);
        self.open_with(
            label,
            &options,
            "opening (exclusively) partition",
            Direct::ReadWrite,
        )
    }

    fn open_shared(&self, label: &str) -> Result<Box<dyn PartitionHandle>, UpdateError> {
        let mut options = OpenOptions::new();
        options.read(true);
        self.open_with(
            label,
            &options,
            "opening partition for reading",
            Direct::Read,
        )
    }

    fn open_unclaimed(&self, label: &str) -> Result<Box<dyn PartitionHandle>, UpdateError> {
        let mut options = OpenOptions::new();
        options.read(true).write(true);
        // The state store: small writes, through the page cache.
        self.open_with(label, &options, "opening partition", Direct::No)
    }
}

/// Partitions inside a disk image file with a GPT (tests and file-backed benchmarks).
#[derive(Debug, Clone)]
pub struct FileDisk {
    path: PathBuf,
}

impl FileDisk {
    /// The disk image at `path`.
    pub fn new(path: impl Into<PathBuf>) -> FileDisk {
        FileDisk { path: path.into() }
    }

    /// The image file.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Disk for FileDisk {
    fn describe(&self) -> String {
        self.path.display().to_string()
    }

    fn open(&self, label: &str) -> Result<Box<dyn PartitionHandle>, UpdateError> {
        let path = &self.path;
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .map_err(UpdateError::file("opening disk image", path))?;
        let size = file
            .seek(SeekFrom::End(0))
            .map_err(UpdateError::file("finding the size of", path))?;
        let gpt = aperture_gpt::read_gpt(&mut file, size).map_err(|e| UpdateError::Malformed {
            path: path.clone(),
            reason: format!("no readable GPT: {e}"),
        })?;
        let part = gpt.find(label).ok_or_else(|| UpdateError::NoPartition {
            name: label.into(),
            disk: self.describe(),
        })?;
        Ok(Box::new(FilePartition {
            file,
            direct: open_direct(path, true),
            base: part.offset(),
            size: part.size(),
            label: label.into(),
            describe: format!("{}:{label}", path.display()),
        }))
    }
}

/// A `Read + Seek` view of the first `len` bytes of a partition, reading with `pread`. Used to
/// read slots back for verification.
pub struct PartitionReader<'p> {
    part: &'p dyn PartitionHandle,
    pos: u64,
    len: u64,
}

impl<'p> PartitionReader<'p> {
    /// A reader of `part`'s first `len` bytes.
    pub fn new(part: &'p dyn PartitionHandle, len: u64) -> Self {
        PartitionReader { part, pos: 0, len }
    }
}

impl io::Read for PartitionReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let left = self.len.saturating_sub(self.pos);
        let n = usize::try_from(left).unwrap_or(usize::MAX).min(buf.len());
        if n == 0 {
            return Ok(0);
        }
        self.part.read_exact_at(&mut buf[..n], self.pos)?;
        self.pos += n as u64;
        Ok(n)
    }
}

impl io::Seek for PartitionReader<'_> {
    fn seek(&mut self, to: SeekFrom) -> io::Result<u64> {
        let target = match to {
            SeekFrom::Start(p) => Some(p),
            SeekFrom::End(d) => self.len.checked_add_signed(d),
            SeekFrom::Current(d) => self.pos.checked_add_signed(d),
        };
        self.pos = target
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "seek before the start"))?;
        Ok(self.pos)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};

    fn image() -> (tempfile::TempDir, FileDisk) {
        let d = tempfile::tempdir().unwrap();
        let disk = image_in(d.path());
        (d, disk)
    }

    fn image_in(dir: &Path) -> FileDisk {
        use aperture_gpt::{write_gpt, Guid, Layout, PartitionSpec};
        let path = dir.join("disk.img");
        let size = 8u64 << 20;
        let mut f = File::create(&path).unwrap();
        f.set_len(size).unwrap();
        let layout = Layout::new(
            Guid::derive("t", "disk"),
            vec![
                PartitionSpec::new(
                    "rootfs_a",
                    Guid::LINUX_FILESYSTEM,
                    Guid::derive("t", "a"),
                    2 << 20,
                ),
                PartitionSpec::new(
                    "rootfs_b",
                    Guid::LINUX_FILESYSTEM,
                    Guid::derive("t", "b"),
                    2 << 20,
                ),
            ],
        );
        write_gpt(&mut f, size, &layout).unwrap();
        f.flush().unwrap();
        FileDisk::new(path)
    }

    #[test]
    fn file_partitions_are_bounded_and_separate() {
        let (_d, disk) = image();
        let mut a = disk.open("rootfs_a").unwrap();
        let mut b = disk.open("rootfs_b").unwrap();
        assert_eq!(a.size(), 2 << 20);
        a.write_all_at(b"hello", 0).unwrap();
        b.write_all_at(b"world", 0).unwrap();
        a.sync().unwrap();
        let mut buf = [0u8; 5];
        a.read_exact_at(&mut buf, 0).unwrap();
        assert_eq!(&buf, b"hello");
        let err = a.write_all_at(b"xx", (2 << 20) - 1).unwrap_err();
        assert!(err.to_string().contains("pass the end"), "{err}");
        assert!(a.describe().ends_with("disk.img:rootfs_a"));
        let mut r = PartitionReader::new(&*b, 5);
        let mut all = Vec::new();
        r.read_to_end(&mut all).unwrap();
        assert_eq!(all, b"world");
        a.drop_cache().unwrap();
    }

    /// Aligned transfers take the direct descriptor where the file system has one, and what
    /// either descriptor writes the other reads.
    #[test]
    fn direct_and_buffered_transfers_agree() {
        use crate::aligned::AlignedBuf;
        let d = tempfile::Builder::new()
            .prefix(".test-direct-")
            .tempdir_in(env!("CARGO_MANIFEST_DIR"))
            .unwrap();
        let disk = image_in(d.path());
        let mut b = disk.open("rootfs_b").unwrap();
        let mut buf = AlignedBuf::new(8192);
        for (i, x) in buf.as_mut_slice().iter_mut().enumerate() {
            *x = (i % 251) as u8;
        }
        b.write_all_at(buf.as_slice(), 4096).unwrap();
        let mut small = [0u8; 10];
        b.read_exact_at(&mut small, 4096 + 5).unwrap();
        assert_eq!(&small[..], &buf.as_slice()[5..15]);
        b.write_all_at(b"xyz", 4096 + 1).unwrap();
        let mut back = AlignedBuf::new(8192);
        b.read_exact_at(back.as_mut_slice(), 4096).unwrap();
        assert_eq!(&back.as_slice()[1..4], b"xyz");
        assert_eq!(&back.as_slice()[4..], &buf.as_slice()[4..]);
        // The folder is beside the sources, on a disk file system, which takes O_DIRECT.
        assert!(b.reads_direct());
    }

    #[test]
    fn missing_partition_is_named() {
        let (_d, disk) = image();
        let err = disk.open("rootfs_c").err().unwrap().to_string();
        assert!(err.contains("rootfs_c"), "{err}");
        let err = PartlabelDisk::new("/nonexistent")
            .open("rootfs_b")
            .err()
            .unwrap();
        assert!(matches!(err, UpdateError::NoPartition { .. }));
    }
}
