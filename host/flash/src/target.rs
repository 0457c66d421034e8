//! Where an image is written: the [`Target`] trait, with [`FileTarget`] (a disk image file)
//! and [`BlockTarget`] (a block device opened with `O_EXCL`); and [`LoopDevice`], a handle on
//! a loop device for privileged tests and benchmarks.
//!
//! Reads through the page cache would only show what was just written to memory, so a
//! read-back must reach the medium: [`BlockTarget`] reads through a second descriptor opened
//! with `O_DIRECT` (aligned buffers, no page cache), and [`FileTarget::sync`] drops the file's
//! cached pages (`posix_fadvise(DONTNEED)`) after `fsync`, so later reads come from the disk
//! under the file system (on tmpfs there is nothing under it; the read is from memory).
//! [`BlockTarget`] also writes aligned pieces through that descriptor, which spares a copy
//! into the page cache (measured on a loop device: the buffered copy's sys time varied
//! from 0.4 to 1.6 s a flash, `O_DIRECT` took 0.2 s each time).

use std::fs::{File, OpenOptions};
use std::io::{self, Seek, SeekFrom, Write};
use std::os::unix::fs::{FileExt, FileTypeExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use aperture_sys::Cmd;
use rustix::fs::{Advice, FallocateFlags, OFlags};
use rustix::io::Errno;

use crate::error::{FlashError, Result};

/// Alignment of `O_DIRECT` buffers and offsets: a page, which is a multiple of every logical
/// sector size in use (512 and 4096).
const DIRECT_ALIGN: usize = 4096;
/// Largest single `O_DIRECT` read.
const DIRECT_CHUNK: usize = 8 << 20;

/// Something an image can be written to. Offsets are bytes from the start of the target.
///
/// Implementations report errors naming the target; wrappers (fault injection in tests,
/// throttling) delegate to an inner target. Methods take `&self` because the writer writes
/// while a second thread reads back what it wrote; positioned I/O (`pwrite`/`pread`) needs
/// no shared cursor.
pub trait Target: Send + Sync {
    /// The target's name for messages: its path.
    fn name(&self) -> &str;
    /// Size in bytes.
    fn size(&self) -> u64;
    /// Writes all of `data` at `offset`.
    fn write_at(&self, offset: u64, data: &[u8]) -> Result<()>;
    /// Fills all of `buf` from `offset`, from the medium rather than a cache where the target
    /// can tell the difference.
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<()>;
    /// Makes everything written so far durable.
    fn sync(&self) -> Result<()>;
    /// Makes `offset..offset + len` read as zeros if that is cheap (a hole punched in a file,
    /// a discard that zeroes on a device); `Ok(false)` when the target cannot, in which case
    /// nothing was changed.
    fn zero_cheaply(&self, offset: u64, len: u64) -> Result<bool>;

    /// Wipes the partition table of a target about to hold (or that held) an image of
    /// `image_size` bytes: the protective MBR and both GPT copies, at the end of the target
    /// and, when the image is smaller, at the end of the image (where its backup GPT went).
    fn wipe_partition_table(&self, image_size: u64) -> Result<()> {
        let size = self.size();
        let name = self.name().to_string();
        let mut io = TargetIo {
            target: self,
            position: 0,
        };
        for disk_size in [size, image_size.min(size)] {
            aperture_gpt::wipe_gpt(&mut io, disk_size).map_err(|source| FlashError::Gpt {
                action: format!("wiping the partition table of {name}"),
                source,
            })?;
            if image_size >= size {
                break;
            }
        }
        Ok(())
    }
}

/// A `Write + Seek` view of a [`Target`], for `aperture_gpt::wipe_gpt`.
struct TargetIo<'a, T: Target + ?Sized> {
    target: &'a T,
    position: u64,
}

impl<T: Target + ?Sized> Write for TargetIo<'_, T> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.target
            .write_at(self.position, buf)
            .map_err(io::Error::other)?;
        self.position += buf.len() as u64;
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl<T: Target + ?Sized> Seek for TargetIo<'_, T> {
    fn seek(&mut self, pos: SeekFrom) -> io::Result<u64> {
        let size = self.target.size();
        let new = match pos {
            SeekFrom::Start(n) => Some(n),
            SeekFrom::End(d) => size.checked_add_signed(d),
            SeekFrom::Current(d) => self.position.checked_add_signed(d),
        };
        self.position = new.ok_or_else(|| io::Error::other("seek before the start"))?;
        Ok(self.position)
    }
}

/// A regular file as a target: a disk image for a VM, or a test.
#[derive(Debug)]
pub struct FileTarget {
    name: String,
    file: File,
    size: u64,
}

impl FileTarget {
    /// Opens `path` for writing, creating it if needed, and grows it (sparsely) to at least
    /// `min_size` bytes. The file is locked (`flock`) so two flashers cannot write it at once.
    /// A path under `/dev` is never created: a missing device node is a typo, not a file.
    pub fn open(path: &Path, min_size: u64) -> Result<FileTarget> {
        let name = path.display().to_string();
        if !path.exists() && path.starts_with("/dev") {
            return Err(FlashError::refused(
                name,
                "there is no such device (a file is not created under /dev); check the name \
                 with `lsblk` or `cargo xtask flash --list`",
            ));
        }
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)
            .map_err(|e| FlashError::io(format!("opening {name} for writing"), e))?;
        let metadata = file
            .metadata()
            .map_err(|e| FlashError::io(format!("reading metadata of {name}"), e))?;
        if !metadata.is_file() {
            return Err(FlashError::refused(
                name,
                "it is neither a regular file nor a block device",
            ));
        }
        rustix::fs::flock(&file, rustix::fs::FlockOperation::NonBlockingLockExclusive).map_err(
            |e| {
                FlashError::refused(
                    name.clone(),
                    format!("another process holds a lock on it ({e}); is it being flashed?"),
                )
            },
        )?;
        let mut size = metadata.len();
        if size < min_size {
            file.set_len(min_size)
                .map_err(|e| FlashError::io(format!("growing {name} to {min_size} bytes"), e))?;
            size = min_size;
        }
        Ok(FileTarget { name, file, size })
    }
}

impl Target for FileTarget {
    fn name(&self) -> &str {
        &self.name
    }

    fn size(&self) -> u64 {
        self.size
    }

    fn write_at(&self, offset: u64, data: &[u8]) -> Result<()> {
        self.file
            .write_all_at(data, offset)
            .map_err(|e| FlashError::io(format!("writing {} at byte {offset}", self.name), e))
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<()> {
        self.file
            .read_exact_at(buf, offset)
            .map_err(|e| FlashError::io(format!("reading back {} at byte {offset}", self.name), e))
    }

    fn sync(&self) -> Result<()> {
        self.file
            .sync_all()
            .map_err(|e| FlashError::io(format!("syncing {}", self.name), e))?;
        // Best effort: a file system that ignores the advice just serves reads from memory.
        let _ = rustix::fs::fadvise(&self.file, 0, 0, Advice::DontNeed);
        Ok(())
    }

    fn zero_cheaply(&self, offset: u64, len: u64) -> Result<bool> {
        punch_hole(&self.file, &self.name, offset, len)
    }
}

/// `fallocate(PUNCH_HOLE | KEEP_SIZE)`: a hole in a file; on a block device, a zeroing discard
/// the kernel issues only if the device supports one (it never falls back to writing zeros).
fn punch_hole(file: &File, name: &str, offset: u64, len: u64) -> Result<bool> {
    if len == 0 {
        return Ok(true);
    }
    let mode = FallocateFlags::PUNCH_HOLE | FallocateFlags::KEEP_SIZE;
    match rustix::fs::fallocate(file, mode, offset, len) {
        Ok(()) => Ok(true),
        Err(Errno::OPNOTSUPP | Errno::NOSYS | Errno::INVAL | Errno::NODEV) => Ok(false),
        Err(e) => Err(FlashError::io(
            format!("zeroing {name} bytes {offset}..{}", offset + len),
            e.into(),
        )),
    }
}

/// A block device as a target, opened `O_EXCL` (the kernel then refuses to mount it or
/// let another exclusive opener in while we write); aligned pieces are written and
/// everything is read back through a second, `O_DIRECT` descriptor, other writes go through
/// the page cache ([`Target::write_at`] below).
#[derive(Debug)]
pub struct BlockTarget {
    name: String,
    file: File,
    direct: File,
    size: u64,
    logical_sector: u64,
}

impl BlockTarget {
    /// Opens the block device at `path` exclusively. Run the safety checks
    /// ([`crate::safety::check_disk`]) first; this refuses only what it cannot open.
    pub fn open(path: &Path) -> Result<BlockTarget> {
        let name = path.display().to_string();
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags((OFlags::EXCL | OFlags::CLOEXEC).bits() as i32)
            .open(path)
            .map_err(|e| {
                if e.raw_os_error() == Some(Errno::BUSY.raw_os_error()) {
                    FlashError::refused(
                        name.clone(),
                        "it is busy: the kernel refused an exclusive open, so something (a \
                         mount, a dm device, another flasher) is using it",
                    )
                } else {
                    FlashError::io(format!("opening {name} exclusively for writing"), e)
                }
            })?;
        let metadata = file
            .metadata()
            .map_err(|e| FlashError::io(format!("reading metadata of {name}"), e))?;
        if !metadata.file_type().is_block_device() {
            return Err(FlashError::refused(name, "it is not a block device"));
        }
        let size = aperture_gpt::disk_size_of(&mut &file).map_err(|source| FlashError::Gpt {
            action: format!("finding the size of {name}"),
            source,
        })?;
        let logical_sector = rustix::fs::ioctl_blksszget(&file)
            .map(u64::from)
            .unwrap_or(512);
        let direct = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags((OFlags::DIRECT | OFlags::CLOEXEC).bits() as i32)
            .open(path)
            .map_err(|e| {
                FlashError::io(
                    format!("opening {name} with O_DIRECT to write and read back"),
                    e,
                )
            })?;
        Ok(BlockTarget {
            name,
            file,
            direct,
            size,
            logical_sector,
        })
    }

    /// The device path.
    pub fn path(&self) -> PathBuf {
        PathBuf::from(&self.name)
    }
}

/// A zeroed buffer of `len` bytes whose start is aligned for `O_DIRECT` (4096 bytes): the
/// range `start..start + len` of the returned vector. Safe code cannot ask the allocator for
/// alignment, so this over-allocates by one alignment unit.
pub fn aligned_buffer(len: usize) -> (Vec<u8>, usize) {
    let buf = vec![0u8; len + DIRECT_ALIGN];
    let start = buf.as_ptr().align_offset(DIRECT_ALIGN);
    (buf, start)
}

impl Target for BlockTarget {
    fn name(&self) -> &str {
        &self.name
    }

    fn size(&self) -> u64 {
        self.size
    }

    /// Writes a piece whose offset, length and buffer are aligned (the writer's chunks are,
    /// from either input, given a bmap of 4 KiB blocks) with `O_DIRECT`, straight from `data`
    /// to the device: no copy into the page cache, no cache pages to allocate, and the call
    /// returns once the device has the bytes, so the read-back right behind it finds them
    /// there. Any other write (the partition-table wipe, the held-back regions, anything
    /// unaligned) goes through the page cache;
    /// then the kernel is asked to start writing those pages to the device now
    /// (`posix_fadvise(DONTNEED)` starts writeback without waiting for it and drops pages
    /// already clean), so the write-back runs beside the next writes instead of inside the
    /// read-back's `O_DIRECT` read, and the cache holds few dirty pages. The kernel keeps
    /// the two paths coherent: an `O_DIRECT` write first writes back and then drops cached
    /// pages of its range.
    fn write_at(&self, offset: u64, data: &[u8]) -> Result<()> {
        let align = self.logical_sector.max(512);
        let aligned = offset.is_multiple_of(align)
            && (data.len() as u64).is_multiple_of(align)
            && data.as_ptr().align_offset(DIRECT_ALIGN) == 0;
        if aligned {
            return self.direct.write_all_at(data, offset).map_err(|e| {
                FlashError::io(
                    format!("writing {} at byte {offset} (O_DIRECT)", self.name),
                    e,
                )
            });
        }
        self.file
            .write_all_at(data, offset)
            .map_err(|e| FlashError::io(format!("writing {} at byte {offset}", self.name), e))?;
        // Best effort: only a hint; the read-back and the final sync do not depend on it.
        let _ = rustix::fs::fadvise(&self.file, offset, data.len() as u64, Advice::DontNeed);
        Ok(())
    }

    /// Reads with `O_DIRECT`: straight into `buf` when it, `offset` and its length are
    /// aligned (the writer's read-back buffers are), else through an aligned bounce buffer.
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<()> {
        let align = self.logical_sector.max(512);
        let failed = |at: u64, e: io::Error| {
            FlashError::io(
                format!("reading back {} at byte {at} (O_DIRECT)", self.name),
                e,
            )
        };
        let aligned = offset.is_multiple_of(align)
            && (buf.len() as u64).is_multiple_of(align)
            && buf.as_ptr().align_offset(DIRECT_ALIGN) == 0;
        if aligned {
            let got = read_full_at(&self.direct, buf, offset).map_err(|e| failed(offset, e))?;
            if got < buf.len() {
                return Err(failed(offset, io::ErrorKind::UnexpectedEof.into()));
            }
            return Ok(());
        }
        let bounce_len = ((buf.len() as u64 + 2 * align).div_ceil(align) * align)
            .min(DIRECT_CHUNK as u64) as usize;
        let (mut bounce, start) = aligned_buffer(bounce_len);
        let mut done = 0usize;
        while done < buf.len() {
            let want_start = offset + done as u64;
            let window_start = want_start / align * align;
            let skip = (want_start - window_start) as usize;
            let remaining = buf.len() - done;
            let span = ((skip + remaining) as u64).div_ceil(align) * align;
            let span = span.min(bounce_len as u64 / align * align);
            let span = span.min(self.size.saturating_sub(window_start)) as usize;
            let window = &mut bounce[start..start + span];
            let got = read_full_at(&self.direct, window, window_start)
                .map_err(|e| failed(window_start, e))?;
            if got <= skip {
                return Err(failed(want_start, io::ErrorKind::UnexpectedEof.into()));
            }
            let n = (got - skip).min(remaining);
            buf[done..done + n].copy_from_slice(&window[skip..skip + n]);
            done += n;
        }
        Ok(())
    }

    fn sync(&self) -> Result<()> {
        self.file
            .sync_all()
            .map_err(|e| FlashError::io(format!("syncing {}", self.name), e))
    }

    fn zero_cheaply(&self, offset: u64, len: u64) -> Result<bool> {
        punch_hole(&self.file, &self.name, offset, len)
    }
}

/// `pread` until `buf` is full or the end of the device; returns the bytes read.
fn read_full_at(file: &File, buf: &mut [u8], offset: u64) -> io::Result<usize> {
    let mut done = 0;
    while done < buf.len() {
        match file.read_at(&mut buf[done..], offset + done as u64) {
            Ok(0) => break,
            Ok(n) => done += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(done)
}

/// A loop device this process attached to a file, as a handle: [`LoopDevice::close`]
/// detaches it and reports failure; dropping the handle detaches it on a best-effort basis,
/// so a failing test or benchmark does not leak loop devices. Only the device this handle
/// attached is touched. Needs root (`losetup`).
#[derive(Debug)]
pub struct LoopDevice {
    path: PathBuf,
    attached: bool,
}

impl LoopDevice {
    /// Attaches `file` to the first free loop device (`losetup -f --show FILE`).
    pub fn attach(file: &Path) -> Result<LoopDevice> {
        let path = Cmd::new("losetup")
            .args(["-f", "--show"])
            .arg(file)
            .text()?;
        Ok(LoopDevice {
            path: PathBuf::from(path.trim()),
            attached: true,
        })
    }

    /// The device node, `/dev/loopN`.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Detaches the device (`losetup -d`).
    pub fn close(mut self) -> Result<()> {
        self.attached = false;
        Cmd::new("losetup").arg("-d").arg(&self.path).run()?;
        Ok(())
    }
}

impl Drop for LoopDevice {
    fn drop(&mut self) {
        if self.attached {
            // Best effort: there is no one to report to; `close()` is the checked path.
            let _ = Cmd::new("losetup").arg("-d").arg(&self.path).run();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_target_grows_locks_and_round_trips() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("disk.img");
        let t = FileTarget::open(&path, 1 << 20).unwrap();
        assert_eq!(t.size(), 1 << 20);
        assert!(FileTarget::open(&path, 0)
            .unwrap_err()
            .to_string()
            .contains("lock"));
        t.write_at(4096, b"hello").unwrap();
        t.sync().unwrap();
        let mut back = [0u8; 5];
        t.read_at(4096, &mut back).unwrap();
        assert_eq!(&back, b"hello");
        assert!(t.zero_cheaply(0, 1 << 20).unwrap());
        t.read_at(4096, &mut back).unwrap();
        assert_eq!(back, [0; 5]);
        drop(t);
        // Reopening keeps a larger file's size.
        assert_eq!(FileTarget::open(&path, 4096).unwrap().size(), 1 << 20);
    }

    #[test]
    fn no_files_are_made_under_dev() {
        let err = FileTarget::open(Path::new("/dev/aperture-no-such-disk"), 1).unwrap_err();
        assert!(err.is_refusal(), "{err}");
        assert!(err.to_string().contains("no such device"), "{err}");
    }

    #[test]
    fn wipe_covers_both_ends_of_target_and_image() {
        let dir = tempfile::tempdir().unwrap();
        let t = FileTarget::open(&dir.path().join("d"), 4 << 20).unwrap();
        t.write_at(0, &vec![0xA5; 4 << 20]).unwrap();
        t.wipe_partition_table(2 << 20).unwrap();
        let mut all = vec![0u8; 4 << 20];
        t.read_at(0, &mut all).unwrap();
        let zero = |r: std::ops::Range<usize>| all[r].iter().all(|&b| b == 0);
        assert!(zero(0..34 * 512));
        assert!(zero((2 << 20) - 33 * 512..2 << 20));
        assert!(zero((4 << 20) - 33 * 512..4 << 20));
        assert_eq!(all[34 * 512], 0xA5);
        assert_eq!(all[(2 << 20) - 33 * 512 - 1], 0xA5);
    }

    #[test]
    fn aligned_buffers_are_aligned() {
        let (buf, start) = aligned_buffer(10_000);
        assert_eq!(buf[start..].as_ptr() as usize % DIRECT_ALIGN, 0);
        assert!(buf.len() - start >= 10_000);
    }
}
