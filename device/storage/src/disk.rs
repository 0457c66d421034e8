//! Partitions by GPT label, as handles with positional I/O bounded to the partition.
//!
//! * [`DeviceDisk`]: the appliance. `/dev/disk/by-partlabel/<label>`; the whole disk behind
//!   it is found through sysfs when the last partition is grown.
//! * [`FileDisk`]: a disk image file whose GPT is read with `aperture-gpt` (tier-1 tests).
//! * [`MemPartition`]: a partition in memory, for unit tests of header parsing.
//!
//! [`grow_last_partition`] grows the last partition (`data`) to the end of the disk on first
//! boot: it rewrites the GPT (both copies) through `aperture-gpt` with the partition's last LBA
//! moved, after checking that every other partition lands exactly where it was.

use std::cell::RefCell;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use aperture_gpt::{read_gpt, write_gpt, Layout, PartitionSpec, DEFAULT_ALIGNMENT};

use crate::StorageError;
use aperture_appliance::Files;
use aperture_sys::Cmd;

/// An open partition: positional I/O that never leaves it.
pub trait Partition {
    /// Its GPT label (`data`).
    fn label(&self) -> &str;
    /// Human name for messages (`/dev/disk/by-partlabel/data`, `disk.img:data`).
    fn describe(&self) -> String;
    /// The block device, for external tools; `None` for a range of an image file.
    fn device(&self) -> Option<&Path>;
    /// Size in bytes.
    fn size(&self) -> u64;
    /// Fill `buf` from `offset`; an error if that passes the end.
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()>;
    /// Write all of `buf` at `offset`; an error if that passes the end.
    fn write_all_at(&self, buf: &[u8], offset: u64) -> io::Result<()>;
    /// Make the writes so far durable.
    fn sync(&self) -> io::Result<()>;
}

/// How a partition is opened on a real device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Shared: other holders (a dm-crypt mapping, a mount) may exist.
    Shared,
    /// `O_EXCL`: fails with "busy" if the partition is mounted or held by device-mapper, a
    /// guard against writing the running root or a mounted file system.
    Exclusive,
}

/// A disk whose partitions are found by GPT label.
pub trait Disk {
    /// Human name for messages.
    fn describe(&self) -> String;
    /// Human name of partition `label` for messages, without opening it.
    fn describe_partition(&self, label: &str) -> String {
        format!("{}:{label}", self.describe())
    }
    /// Whether a partition labelled `label` exists.
    fn has(&self, label: &str) -> Result<bool, StorageError>;
    /// Open the partition labelled `label` for reading and writing.
    fn open(&self, label: &str, access: Access) -> Result<Box<dyn Partition>, StorageError>;
    /// Grow `label` (the last partition) to the end of the disk and tell the kernel; the new
    /// size if it changed, `None` if it already ends there.
    fn grow_to_end(&self, label: &str) -> Result<Option<u64>, StorageError>;
}

fn bounds(len: usize, offset: u64, size: u64) -> io::Result<()> {
    match offset.checked_add(len as u64) {
        Some(end) if end <= size => Ok(()),
        _ => Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{len} bytes at offset {offset} pass the end of the {size}-byte partition"),
        )),
    }
}

/// A partition that is a byte range of an open file or block device.
#[derive(Debug)]
pub struct FilePartition {
    file: File,
    base: u64,
    size: u64,
    label: String,
    describe: String,
    device: Option<PathBuf>,
}

impl FilePartition {
    /// A whole block device (or file) as one partition, `label` naming it in messages. Used
    /// for loop devices in the privileged tests and for explicit `--device` arguments.
    pub fn whole(path: &Path, label: &str, access: Access) -> Result<FilePartition, StorageError> {
        let file = open_rw(path, access)?;
        let size = aperture_gpt::disk_size_of(&mut &file).map_err(|e| StorageError::Io {
            op: "measuring",
            path: path.to_path_buf(),
            err: io::Error::other(e.to_string()),
        })?;
        Ok(FilePartition {
            file,
            base: 0,
            size,
            label: label.into(),
            describe: path.display().to_string(),
            device: Some(path.to_path_buf()),
        })
    }
}

impl Partition for FilePartition {
    fn label(&self) -> &str {
        &self.label
    }
    fn describe(&self) -> String {
        self.describe.clone()
    }
    fn device(&self) -> Option<&Path> {
        self.device.as_deref()
    }
    fn size(&self) -> u64 {
        self.size
    }
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        bounds(buf.len(), offset, self.size)?;
        self.file.read_exact_at(buf, self.base + offset)
    }
    fn write_all_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        bounds(buf.len(), offset, self.size)?;
        self.file.write_all_at(buf, self.base + offset)
    }
    fn sync(&self) -> io::Result<()> {
        self.file.sync_data()
    }
}

fn open_rw(path: &Path, access: Access) -> Result<File, StorageError> {
    let mut opts = OpenOptions::new();
    opts.read(true).write(true);
    if access == Access::Exclusive {
        opts.custom_flags(libc::O_EXCL);
    }
    opts.open(path).map_err(StorageError::io("opening", path))
}

/// A partition held in memory (unit tests).
#[derive(Debug)]
pub struct MemPartition {
    label: String,
    data: RefCell<Vec<u8>>,
}

impl MemPartition {
    /// A partition holding `data`.
    pub fn new(label: &str, data: Vec<u8>) -> MemPartition {
        MemPartition {
            label: label.into(),
            data: RefCell::new(data),
        }
    }

    /// A copy of its bytes.
    pub fn bytes(&self) -> Vec<u8> {
        self.data.borrow().clone()
    }
}

impl Partition for MemPartition {
    fn label(&self) -> &str {
        &self.label
    }
    fn describe(&self) -> String {
        format!("memory:{}", self.label)
    }
    fn device(&self) -> Option<&Path> {
        None
    }
    fn size(&self) -> u64 {
        self.data.borrow().len() as u64
    }
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        bounds(buf.len(), offset, self.size())?;
        let at = offset as usize;
        buf.copy_from_slice(&self.data.borrow()[at..at + buf.len()]);
        Ok(())
    }
    fn write_all_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        bounds(buf.len(), offset, self.size())?;
        let at = offset as usize;
        self.data.borrow_mut()[at..at + buf.len()].copy_from_slice(buf);
        Ok(())
    }
    fn sync(&self) -> io::Result<()> {
        Ok(())
    }
}

/// A disk image file with a GPT (tier-1 tests, benchmarks).
#[derive(Debug, Clone)]
pub struct FileDisk {
    path: PathBuf,
}

impl FileDisk {
    /// The image at `path`.
    pub fn new(path: impl Into<PathBuf>) -> FileDisk {
        FileDisk { path: path.into() }
    }

    /// The image file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn gpt(&self) -> Result<(File, aperture_gpt::Gpt), StorageError> {
        let mut file = open_rw(&self.path, Access::Shared)?;
        let size = file
            .metadata()
            .map_err(StorageError::io("inspecting", &self.path))?
            .len();
        let gpt = read_gpt(&mut file, size).map_err(|e| gpt_err(&self.path, e))?;
        Ok((file, gpt))
    }
}

fn gpt_err(path: &Path, e: aperture_gpt::GptError) -> StorageError {
    StorageError::malformed(format!("the partition table of {}", path.display()), e)
}

impl Disk for FileDisk {
    fn describe(&self) -> String {
        self.path.display().to_string()
    }

    fn has(&self, label: &str) -> Result<bool, StorageError> {
        Ok(self.gpt()?.1.find(label).is_some())
    }

    fn open(&self, label: &str, _access: Access) -> Result<Box<dyn Partition>, StorageError> {
        let (file, gpt) = self.gpt()?;
        let p = gpt
            .find(label)
            .ok_or_else(|| StorageError::NoSuchPartition {
                label: label.into(),
                disk: self.describe(),
            })?;
        Ok(Box::new(FilePartition {
            file,
            base: p.offset(),
            size: p.size(),
            label: label.into(),
            describe: format!("{}:{label}", self.path.display()),
            device: None,
        }))
    }

    fn grow_to_end(&self, label: &str) -> Result<Option<u64>, StorageError> {
        let mut file = open_rw(&self.path, Access::Shared)?;
        let size = file
            .metadata()
            .map_err(StorageError::io("inspecting", &self.path))?
            .len();
        let grown = grow_last_partition(&mut file, size, label, &self.describe())?;
        Ok(grown.map(|(_, size)| size))
    }
}

/// The appliance's disk: partitions under `/dev/disk/by-partlabel`.
#[derive(Debug, Clone)]
pub struct DeviceDisk {
    partlabel_dir: PathBuf,
    sys_class_block: PathBuf,
    dev_dir: PathBuf,
}

impl DeviceDisk {
    /// Partitions found in `partlabel_dir`, their disks through `sys_class_block`
    /// (`/sys/class/block`) and device nodes in `dev_dir` (`/dev`).
    pub fn new(partlabel_dir: PathBuf, sys_class_block: PathBuf, dev_dir: PathBuf) -> DeviceDisk {
        DeviceDisk {
            partlabel_dir,
            sys_class_block,
            dev_dir,
        }
    }

    /// The appliance's disk as `files` lays it out.
    pub fn on(files: &Files) -> DeviceDisk {
        DeviceDisk::new(
            files.partlabel_dir(),
            files.sys_class_block(),
            files.dev_dir(),
        )
    }

    /// The path of partition `label`.
    pub fn path(&self, label: &str) -> PathBuf {
        self.partlabel_dir.join(label)
    }

    /// The whole disk holding partition `label` and the partition's number on it.
    fn parent(&self, label: &str) -> Result<(PathBuf, u32), StorageError> {
        let link = self.path(label);
        let node = std::fs::canonicalize(&link).map_err(StorageError::io("resolving", &link))?;
        let name = node
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let sys = self.sys_class_block.join(&name);
        let number_file = sys.join("partition");
        let number = std::fs::read_to_string(&number_file)
            .map_err(StorageError::io("reading", &number_file))?
            .trim()
            .parse::<u32>()
            .map_err(|e| StorageError::malformed(number_file.display().to_string(), e))?;
        let real = std::fs::canonicalize(&sys).map_err(StorageError::io("resolving", &sys))?;
        let disk = real
            .parent()
            .and_then(Path::file_name)
            .ok_or_else(|| StorageError::malformed(real.display().to_string(), "no parent disk"))?;
        Ok((self.dev_dir.join(disk), number))
    }
}

impl Disk for DeviceDisk {
    fn describe(&self) -> String {
        self.partlabel_dir.display().to_string()
    }

    fn describe_partition(&self, label: &str) -> String {
        self.path(label).display().to_string()
    }

    fn has(&self, label: &str) -> Result<bool, StorageError> {
        Ok(self.path(label).exists())
    }

    fn open(&self, label: &str, access: Access) -> Result<Box<dyn Partition>, StorageError> {
        let path = self.path(label);
        if !path.exists() {
            return Err(StorageError::NoSuchPartition {
                label: label.into(),
                disk: self.describe(),
            });
        }
        let mut part = FilePartition::whole(&path, label, access)?;
        part.label = label.into();
        Ok(Box::new(part))
    }

    fn grow_to_end(&self, label: &str) -> Result<Option<u64>, StorageError> {
        let (disk_path, number) = self.parent(label)?;
        let mut disk = open_rw(&disk_path, Access::Shared)?;
        let size = aperture_gpt::disk_size_of(&mut disk).map_err(|e| gpt_err(&disk_path, e))?;
        let grown = grow_last_partition(&mut disk, size, label, &disk_path.display().to_string())?;
        if let Some((_, new_size)) = grown {
            // BLKPG_RESIZE_PARTITION through partx: the other partitions are in use (the
            // root, the ESP), so the whole table cannot be re-read; this one is not.
            Cmd::new("partx")
                .args(["-u", "--nr", &number.to_string()])
                .arg(&disk_path)
                .run()?;
            return Ok(Some(new_size));
        }
        Ok(None)
    }
}

/// Grows partition `label`, which must be the last one on the disk, to the end of a disk of
/// `disk_size` bytes (aligned down to 1 MiB, as `aperture-gpt` places a partition that fills
/// the disk). Both GPT copies are rewritten, the backup moving to the new end of the disk.
/// Returns the partition's entry number and new size, or `None` if it already ends there.
///
/// Refuses (and writes nothing) unless re-planning the table with `aperture-gpt` puts every
/// other partition exactly where it is now, so the rewrite can never move data.
pub fn grow_last_partition(
    disk: &mut File,
    disk_size: u64,
    label: &str,
    describe: &str,
) -> Result<Option<(u32, u64)>, StorageError> {
    let refuse = |reason: String| StorageError::Grow {
        label: label.into(),
        disk: describe.into(),
        reason,
    };
    let gpt = read_gpt(disk, disk_size).map_err(|e| refuse(e.to_string()))?;
    let target = gpt
        .find(label)
        .ok_or_else(|| StorageError::NoSuchPartition {
            label: label.into(),
            disk: describe.into(),
        })?
        .clone();
    if gpt
        .partitions
        .iter()
        .any(|p| p.first_lba > target.first_lba)
    {
        return Err(refuse("it is not the last partition on the disk".into()));
    }
    let mut parts = gpt.partitions.clone();
    parts.sort_by_key(|p| p.index);
    if parts
        .iter()
        .enumerate()
        .any(|(i, p)| p.index as usize != i + 1)
    {
        return Err(refuse(
            "the table has unused entries between partitions".into(),
        ));
    }
    let specs = parts
        .iter()
        .map(|p| PartitionSpec {
            name: p.name.clone(),
            type_guid: p.type_guid,
            unique_guid: p.unique_guid,
            size_bytes: if p.name == label { 0 } else { p.size() },
            attributes: p.attributes,
        })
        .collect();
    let layout = Layout {
        disk_guid: gpt.disk_guid,
        partitions: specs,
        sector_size: gpt.sector_size,
        alignment: DEFAULT_ALIGNMENT,
    };
    let placed = layout.plan(disk_size).map_err(|e| refuse(e.to_string()))?;
    for (old, new) in parts.iter().zip(&placed) {
        let same_start = old.first_lba == new.first_lba;
        let same_end = old.last_lba == new.last_lba || old.name == label;
        if !same_start || !same_end {
            return Err(refuse(format!(
                "re-planning the table would move {:?} (LBA {}..={} to {}..={}); the disk was not \
                 partitioned by aperture-gpt",
                old.name, old.first_lba, old.last_lba, new.first_lba, new.last_lba
            )));
        }
    }
    let index = parts.iter().position(|p| p.name == label).unwrap_or(0);
    let new = &placed[index];
    if new.last_lba <= target.last_lba {
        return Ok(None);
    }
    write_gpt(disk, disk_size, &layout).map_err(|e| refuse(e.to_string()))?;
    disk.sync_all()
        .map_err(StorageError::io("syncing", Path::new(describe)))?;
    Ok(Some((target.index, new.size())))
}

#[cfg(test)]
mod tests {
    use super::*;
    use aperture_gpt::Guid;

    fn image(dir: &Path, disk_size: u64, data_size: u64) -> PathBuf {
        let path = dir.join("disk.img");
        let ns = "test";
        let layout = Layout::new(
            Guid::derive(ns, "disk"),
            vec![
                PartitionSpec::new("esp", Guid::EFI_SYSTEM, Guid::derive(ns, "esp"), 1 << 20),
                PartitionSpec::new("config", Guid::LINUX_LUKS, Guid::derive(ns, "c"), 1 << 20),
                PartitionSpec::new("data", Guid::LINUX_LUKS, Guid::derive(ns, "d"), data_size),
            ],
        );
        let mut f = OpenOptions::new()
            .create(true)
            .truncate(true)
            .read(true)
            .write(true)
            .open(&path)
            .unwrap();
        f.set_len(disk_size).unwrap();
        write_gpt(&mut f, disk_size, &layout).unwrap();
        path
    }

    #[test]
    fn partitions_are_bounded_ranges() {
        let dir = tempfile::tempdir().unwrap();
        let disk = FileDisk::new(image(dir.path(), 8 << 20, 2 << 20));
        assert!(disk.has("data").unwrap() && !disk.has("factory").unwrap());
        let p = disk.open("config", Access::Exclusive).unwrap();
        assert_eq!(p.size(), 1 << 20);
        p.write_all_at(b"hello", (1 << 20) - 5).unwrap();
        assert!(p.write_all_at(b"hello", (1 << 20) - 4).is_err());
        let mut buf = [0u8; 5];
        p.read_exact_at(&mut buf, (1 << 20) - 5).unwrap();
        assert_eq!(&buf, b"hello");
        let err = disk.open("factory", Access::Shared).err().unwrap();
        assert!(matches!(err, StorageError::NoSuchPartition { .. }), "{err}");
    }

    #[test]
    fn data_grows_to_the_end_once() {
        let dir = tempfile::tempdir().unwrap();
        let path = image(dir.path(), 8 << 20, 2 << 20);
        // The image was written to a larger disk.
        OpenOptions::new()
            .write(true)
            .open(&path)
            .unwrap()
            .set_len(32 << 20)
            .unwrap();
        let disk = FileDisk::new(&path);
        let before = disk.open("config", Access::Shared).unwrap();
        before.write_all_at(b"keep", 100).unwrap();
        let grown = disk.grow_to_end("data").unwrap().unwrap();
        assert_eq!(grown, 28 << 20, "data from 3 MiB to the last whole MiB");
        assert_eq!(disk.open("data", Access::Shared).unwrap().size(), grown);
        assert_eq!(disk.grow_to_end("data").unwrap(), None);
        let mut buf = [0u8; 4];
        disk.open("config", Access::Shared)
            .unwrap()
            .read_exact_at(&mut buf, 100)
            .unwrap();
        assert_eq!(&buf, b"keep");
        // Both copies are valid: read the backup alone.
        let mut f = File::open(&path).unwrap();
        let gpt = read_gpt(&mut f, 32 << 20).unwrap();
        assert!(gpt.primary_problem.is_none());
    }

    #[test]
    fn only_the_last_partition_grows() {
        let dir = tempfile::tempdir().unwrap();
        let disk = FileDisk::new(image(dir.path(), 16 << 20, 2 << 20));
        let err = disk.grow_to_end("config").unwrap_err();
        assert!(err.to_string().contains("not the last partition"), "{err}");
    }
}
