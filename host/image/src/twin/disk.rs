//! The twin's disk file seen as the firmware sees the Orin's eMMC: partitions found by GPT name
//! (as L4TLauncher's `FindPartitionInfo` finds them), the chosen chain's Android boot image read
//! from its kernel partition, the device state partition as the Tegra ledger's medium, and the
//! ESP's capsule folder (read and emptied with mtools, as the firmware consumes capsules).

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use aperture_appliance::store::Medium;
use aperture_slots::tegra::bootimg;
use aperture_sys::Cmd;

use super::TwinError;

/// A partition of the twin's disk: where it starts and how long it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Extent {
    /// Byte offset in the disk file.
    pub offset: u64,
    /// Bytes.
    pub size: u64,
}

/// The twin's disk file and its partition table.
#[derive(Debug)]
pub struct TwinDisk {
    path: PathBuf,
    gpt: aperture_gpt::Gpt,
}

impl TwinDisk {
    /// Read the partition table of `path`.
    pub fn open(path: &Path) -> Result<TwinDisk, TwinError> {
        let mut f = File::open(path).map_err(|err| TwinError::Io {
            op: "opening the twin's disk",
            path: path.to_path_buf(),
            err,
        })?;
        let size = aperture_gpt::disk_size_of(&mut f).map_err(|e| TwinError::Gpt {
            disk: path.to_path_buf(),
            reason: e.to_string(),
        })?;
        let gpt = aperture_gpt::read_gpt(&mut f, size).map_err(|e| TwinError::Gpt {
            disk: path.to_path_buf(),
            reason: e.to_string(),
        })?;
        Ok(TwinDisk {
            path: path.to_path_buf(),
            gpt,
        })
    }

    /// The disk file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The partition named `name`.
    pub fn partition(&self, name: &str) -> Result<Extent, TwinError> {
        let p = self.gpt.find(name).ok_or_else(|| TwinError::NoPartition {
            disk: self.path.clone(),
            name: name.to_string(),
        })?;
        Ok(Extent {
            offset: p.offset(),
            size: p.size(),
        })
    }

    /// Read `len` bytes at `offset` of partition `part`.
    fn read(&self, part: Extent, offset: u64, len: usize) -> Result<Vec<u8>, TwinError> {
        let f = File::open(&self.path).map_err(|err| TwinError::Io {
            op: "opening the twin's disk",
            path: self.path.clone(),
            err,
        })?;
        let mut buf = vec![0u8; len];
        f.read_exact_at(&mut buf, part.offset + offset)
            .map_err(|err| TwinError::Io {
                op: "reading the twin's disk",
                path: self.path.clone(),
                err,
            })?;
        Ok(buf)
    }

    /// The Android boot image in `partition`: its header, kernel and initrd, as L4TLauncher's
    /// `ReadAndroidStyleKernelPartition` takes them. The kernel must be an arm64 Linux `Image`
    /// (an EFI application, which is how UEFI starts it).
    pub fn boot_image(&self, partition: &str) -> Result<BootImage, TwinError> {
        let part = self.partition(partition)?;
        let head = self.read(part, 0, bootimg::PAGE_SIZE as usize)?;
        let header = bootimg::parse_header(&head).ok_or_else(|| TwinError::NoBootImage {
            partition: partition.to_string(),
            reason: "no ANDROID! header (an install of this slot never finished)".into(),
        })?;
        if header.page_size != bootimg::PAGE_SIZE || header.image_size() > part.size {
            return Err(TwinError::NoBootImage {
                partition: partition.to_string(),
                reason: format!(
                    "page size {} and {} bytes of image in a {}-byte partition",
                    header.page_size,
                    header.image_size(),
                    part.size
                ),
            });
        }
        let layout = header.layout();
        let kernel = self.read(part, layout.kernel_offset(), header.kernel_size as usize)?;
        if !is_arm64_image(&kernel) {
            return Err(TwinError::NotAKernel {
                partition: partition.to_string(),
            });
        }
        let initrd = self.read(part, layout.ramdisk_offset(), header.ramdisk_size as usize)?;
        Ok(BootImage {
            kernel,
            initrd,
            cmdline: header.cmdline,
        })
    }

    /// Partition `name` as a read-write [`Medium`] (the Tegra ledger's state store).
    pub fn medium(&self, name: &str) -> Result<PartitionMedium, TwinError> {
        let extent = self.partition(name)?;
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&self.path)
            .map_err(|err| TwinError::Io {
                op: "opening the twin's disk",
                path: self.path.clone(),
                err,
            })?;
        Ok(PartitionMedium {
            file,
            extent,
            name: format!("{} of {}", name, self.path.display()),
        })
    }

    /// mtools' name for the file system in partition `name` (`disk.img@@OFFSET`).
    fn mtools_image(&self, name: &str) -> Result<String, TwinError> {
        Ok(format!(
            "{}@@{}",
            self.path.display(),
            self.partition(name)?.offset
        ))
    }

    /// Copy the files of folder `folder` on the FAT file system in partition `esp` into `dest`
    /// (created; a missing folder copies nothing). Returns their names.
    pub fn copy_out(&self, esp: &str, folder: &str, dest: &Path) -> Result<Vec<String>, TwinError> {
        std::fs::create_dir_all(dest).map_err(|err| TwinError::Io {
            op: "creating",
            path: dest.to_path_buf(),
            err,
        })?;
        let image = self.mtools_image(esp)?;
        let listing = match mtools("mdir")
            .arg("-b")
            .arg("-i")
            .arg(&image)
            .arg(format!("::/{folder}"))
            .text()
        {
            Ok(text) => text,
            // mdir fails on a folder that does not exist: no capsule was ever delivered.
            Err(e) if e.to_string().contains("not found") => String::new(),
            Err(e) => {
                return Err(TwinError::Esp {
                    what: format!("listing {folder} on {esp}"),
                    reason: e.to_string(),
                })
            }
        };
        let mut names = Vec::new();
        for line in listing.lines() {
            // `::/EFI/UpdateCapsule/NAME`, in the case the folder was asked for.
            let Some(name) = line.trim().rsplit_once('/').map(|(_, n)| n.to_string()) else {
                continue;
            };
            let f = format!("{folder}/{name}");
            mtools("mcopy")
                .arg("-n")
                .arg("-i")
                .arg(&image)
                .arg(format!("::/{f}"))
                .arg(dest.join(&name))
                .run()
                .map_err(|e| TwinError::Esp {
                    what: format!("copying {f} out of {esp}"),
                    reason: e.to_string(),
                })?;
            names.push(name);
        }
        Ok(names)
    }

    /// Delete `folder/name` from the FAT file system in partition `esp`.
    pub fn delete(&self, esp: &str, folder: &str, name: &str) -> Result<(), TwinError> {
        mtools("mdel")
            .arg("-i")
            .arg(self.mtools_image(esp)?)
            .arg(format!("::/{folder}/{name}"))
            .run()
            .map_err(|e| TwinError::Esp {
                what: format!("deleting {folder}/{name} from {esp}"),
                reason: e.to_string(),
            })?;
        Ok(())
    }
}

fn mtools(program: &str) -> Cmd {
    Cmd::new(program)
        .env("MTOOLS_SKIP_CHECK", "1")
        .env("LC_ALL", "C")
}

/// Whether `bytes` start like an arm64 Linux `Image` (`Documentation/arch/arm64/booting.rst`:
/// magic `ARM\x64` at byte 56; with the EFI stub, `MZ` at byte 0).
pub fn is_arm64_image(bytes: &[u8]) -> bool {
    bytes.len() > 64 && &bytes[56..60] == b"ARM\x64" && &bytes[..2] == b"MZ"
}

/// What a kernel partition's boot image holds.
#[derive(Debug, Clone)]
pub struct BootImage {
    /// The kernel (`-kernel`).
    pub kernel: Vec<u8>,
    /// The initrd (`-initrd`).
    pub initrd: Vec<u8>,
    /// The command line in the header.
    pub cmdline: String,
}

/// A partition of the twin's disk as a state-store medium.
pub struct PartitionMedium {
    file: File,
    extent: Extent,
    name: String,
}

impl std::fmt::Debug for PartitionMedium {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.name)
    }
}

impl PartitionMedium {
    fn check(&self, len: usize, offset: u64) -> io::Result<()> {
        if offset + len as u64 > self.extent.size {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("{len} bytes at {offset} pass the end of {}", self.name),
            ));
        }
        Ok(())
    }
}

impl Medium for PartitionMedium {
    fn size(&self) -> io::Result<u64> {
        Ok(self.extent.size)
    }
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.check(buf.len(), offset)?;
        self.file.read_exact_at(buf, self.extent.offset + offset)
    }
    fn write_at(&mut self, buf: &[u8], offset: u64) -> io::Result<()> {
        self.check(buf.len(), offset)?;
        self.file.write_all_at(buf, self.extent.offset + offset)
    }
    fn sync(&mut self) -> io::Result<()> {
        self.file.sync_data()
    }
}
