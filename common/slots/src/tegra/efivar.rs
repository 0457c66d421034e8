//! UEFI variables through efivarfs: file `Name-GUID`, content = 4-byte little-endian attributes
//! followed by the value. Writing follows systemd's `efi_set_variable()`: efivarfs creates
//! vendor variables immutable (`FS_IMMUTABLE_FL`), so the flag is cleared first and restored
//! after; the whole buffer goes in ONE `write()` because efivarfs turns each write into one
//! SetVariable call; where the flag ioctls are unsupported (ENOTTY, EOPNOTSUPP, ... on test
//! folders) the write proceeds without them.

use std::fs::{File, OpenOptions};
use std::io::{self, ErrorKind, Write};
use std::path::{Path, PathBuf};

use rustix::fs::IFlags;

use crate::SlotsError;

/// Vendor GUID of NVIDIA's boot-chain variables.
pub const NVIDIA_GUID: &str = "781e084c-a330-417c-b678-38e696380cb9";

/// `EFI_GLOBAL_VARIABLE`, the GUID of the UEFI specification's own variables (`OsIndications`).
pub const EFI_GLOBAL_GUID: &str = "8be4df61-93ca-11d2-aa0d-00e098032b8c";

/// Attributes written with every variable: non-volatile, boot-service and runtime access.
pub const ATTRIBUTES: u32 = 0x7;

/// Access to the inode flags of a file, behind a trait so that the unsupported case can be
/// tested on any file system.
pub(crate) trait FlagOps {
    /// `FS_IOC_GETFLAGS`.
    fn get(&self, file: &File) -> io::Result<IFlags>;
    /// `FS_IOC_SETFLAGS`.
    fn set(&self, file: &File, flags: IFlags) -> io::Result<()>;
}

/// The real ioctls, through rustix.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Ioctl;

impl FlagOps for Ioctl {
    fn get(&self, file: &File) -> io::Result<IFlags> {
        rustix::fs::ioctl_getflags(file).map_err(io::Error::from)
    }
    fn set(&self, file: &File, flags: IFlags) -> io::Result<()> {
        rustix::fs::ioctl_setflags(file, flags).map_err(io::Error::from)
    }
}

/// Errors meaning "this file system has no inode flags" (systemd's
/// `ERRNO_IS_IOCTL_NOT_SUPPORTED`).
fn flags_unsupported(e: &io::Error) -> bool {
    use rustix::io::Errno;
    let Some(raw) = e.raw_os_error() else {
        return false;
    };
    [Errno::NOTTY, Errno::INVAL, Errno::OPNOTSUPP, Errno::NOSYS]
        .iter()
        .any(|x| x.raw_os_error() == raw)
}

/// The variables of one vendor GUID in an efivarfs folder.
#[derive(Debug, Clone)]
pub(crate) struct EfiVars<F: FlagOps = Ioctl> {
    dir: PathBuf,
    guid: &'static str,
    flags: F,
}

impl EfiVars<Ioctl> {
    /// NVIDIA's variables under `dir` (on a device `/sys/firmware/efi/efivars`).
    pub(crate) fn new(dir: PathBuf) -> Self {
        EfiVars {
            dir,
            guid: NVIDIA_GUID,
            flags: Ioctl,
        }
    }

    /// The UEFI specification's global variables under `dir`.
    pub(crate) fn global(dir: PathBuf) -> Self {
        EfiVars {
            dir,
            guid: EFI_GLOBAL_GUID,
            flags: Ioctl,
        }
    }
}

impl<F: FlagOps> EfiVars<F> {
    /// The folder.
    pub(crate) fn dir(&self) -> &Path {
        &self.dir
    }

    /// The file of variable `name`.
    pub(crate) fn path(&self, name: &str) -> PathBuf {
        self.dir.join(format!("{name}-{}", self.guid))
    }

    /// The file content of a variable (attributes, then value); `None` if absent.
    fn read_raw(&self, name: &str) -> Result<Option<Vec<u8>>, SlotsError> {
        let path = self.path(name);
        match std::fs::read(&path) {
            Ok(b) => Ok(Some(b)),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
            Err(e) => Err(SlotsError::Io {
                op: "reading UEFI variable",
                path,
                source: e,
            }),
        }
    }

    /// Read a variable holding an integer of 1 to 4 bytes (little-endian); `None` if absent.
    pub(crate) fn read_u32(&self, name: &str) -> Result<Option<u32>, SlotsError> {
        let Some(bytes) = self.read_raw(name)? else {
            return Ok(None);
        };
        decode_u32(&bytes)
            .map(Some)
            .map_err(|reason| SlotsError::Malformed {
                path: self.path(name),
                reason,
            })
    }

    /// Read a variable holding an integer of 1 to 8 bytes (little-endian); `None` if absent.
    pub(crate) fn read_u64(&self, name: &str) -> Result<Option<u64>, SlotsError> {
        let Some(bytes) = self.read_raw(name)? else {
            return Ok(None);
        };
        if bytes.len() < 5 || bytes.len() > 12 {
            return Err(SlotsError::Malformed {
                path: self.path(name),
                reason: format!(
                    "{} bytes; expected 4 bytes of attributes and a 1- to 8-byte little-endian \
                     value",
                    bytes.len()
                ),
            });
        }
        let mut value = [0u8; 8];
        value[..bytes.len() - 4].copy_from_slice(&bytes[4..]);
        Ok(Some(u64::from_le_bytes(value)))
    }

    /// Write a variable as attributes [`ATTRIBUTES`] and `value` as u32 little-endian.
    pub(crate) fn write_u32(&self, name: &str, value: u32) -> Result<(), SlotsError> {
        self.write_value(name, &value.to_le_bytes())
    }

    /// Write a variable as attributes [`ATTRIBUTES`] and `value` as u64 little-endian.
    pub(crate) fn write_u64(&self, name: &str, value: u64) -> Result<(), SlotsError> {
        self.write_value(name, &value.to_le_bytes())
    }

    fn write_value(&self, name: &str, value: &[u8]) -> Result<(), SlotsError> {
        let path = self.path(name);
        let mut buf = Vec::with_capacity(4 + value.len());
        buf.extend_from_slice(&ATTRIBUTES.to_le_bytes());
        buf.extend_from_slice(value);

        let restore = self.drop_immutable(&path)?;
        let written = write_once(&path, &buf);
        if let Some(old) = restore {
            let restored = File::open(&path).and_then(|f| self.flags.set(&f, old));
            // A failed write is the error to report; a failed restore only if the write worked.
            if written.is_ok() {
                restored.map_err(SlotsError::io("restoring the immutable flag of", &path))?;
            }
        }
        written
    }

    /// Clear `FS_IMMUTABLE_FL` if set; returns the flags to restore afterwards.
    fn drop_immutable(&self, path: &Path) -> Result<Option<IFlags>, SlotsError> {
        let file = match File::open(path) {
            Ok(f) => f,
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(None),
            Err(e) => {
                return Err(SlotsError::Io {
                    op: "opening UEFI variable",
                    path: path.to_path_buf(),
                    source: e,
                })
            }
        };
        match self.flags.get(&file) {
            Ok(old) if old.contains(IFlags::IMMUTABLE) => {
                let bits = old.bits();
                self.flags
                    .set(
                        &file,
                        IFlags::from_bits_retain(bits & !IFlags::IMMUTABLE.bits()),
                    )
                    .map_err(SlotsError::io("clearing the immutable flag of", path))?;
                Ok(Some(IFlags::from_bits_retain(bits)))
            }
            Ok(_) => Ok(None),
            Err(e) if flags_unsupported(&e) => Ok(None),
            Err(e) => Err(SlotsError::Io {
                op: "reading the inode flags of",
                path: path.to_path_buf(),
                source: e,
            }),
        }
    }
}

/// Decode `attributes (4 bytes LE) + value (1..=4 bytes LE)`.
pub(crate) fn decode_u32(bytes: &[u8]) -> Result<u32, String> {
    if bytes.len() < 5 || bytes.len() > 8 {
        return Err(format!(
            "{} bytes; expected 4 bytes of attributes and a 1- to 4-byte little-endian value",
            bytes.len()
        ));
    }
    let mut value = [0u8; 4];
    value[..bytes.len() - 4].copy_from_slice(&bytes[4..]);
    Ok(u32::from_le_bytes(value))
}

/// Create or overwrite `path` with `buf` in a single `write()` call. No `O_TRUNC`: efivarfs
/// replaces the variable on write; on an ordinary file (tests) a longer old content is cut
/// afterwards. efivarfs has no fsync (EINVAL); its writes reach NVRAM inside `write()`.
fn write_once(path: &Path, buf: &[u8]) -> Result<(), SlotsError> {
    let mut file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
        .map_err(SlotsError::io("opening UEFI variable for writing", path))?;
    let n = file
        .write(buf)
        .map_err(SlotsError::io("writing UEFI variable", path))?;
    if n != buf.len() {
        return Err(SlotsError::Io {
            op: "writing UEFI variable (short write)",
            path: path.to_path_buf(),
            source: io::Error::new(
                ErrorKind::WriteZero,
                format!("{n} of {} bytes written", buf.len()),
            ),
        });
    }
    let len = file
        .metadata()
        .map_err(SlotsError::io("checking UEFI variable", path))?
        .len();
    if len > buf.len() as u64 {
        file.set_len(buf.len() as u64)
            .map_err(SlotsError::io("truncating variable file", path))?;
    }
    match file.sync_all() {
        Err(e) if e.kind() != ErrorKind::InvalidInput => Err(SlotsError::Io {
            op: "syncing UEFI variable",
            path: path.to_path_buf(),
            source: e,
        }),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::RefCell;

    /// Flag ops that fail like tmpfs on old kernels, vfat or a FUSE folder do.
    struct Unsupported;
    impl FlagOps for Unsupported {
        fn get(&self, _: &File) -> io::Result<IFlags> {
            Err(io::Error::from_raw_os_error(
                rustix::io::Errno::NOTTY.raw_os_error(),
            ))
        }
        fn set(&self, _: &File, _: IFlags) -> io::Result<()> {
            Err(io::Error::from_raw_os_error(
                rustix::io::Errno::OPNOTSUPP.raw_os_error(),
            ))
        }
    }

    /// Flag ops that remember calls and pretend the file is immutable.
    #[derive(Default)]
    struct Recording {
        calls: RefCell<Vec<u32>>,
    }
    impl FlagOps for Recording {
        fn get(&self, _: &File) -> io::Result<IFlags> {
            Ok(IFlags::IMMUTABLE | IFlags::NOATIME)
        }
        fn set(&self, _: &File, flags: IFlags) -> io::Result<()> {
            self.calls.borrow_mut().push(flags.bits());
            Ok(())
        }
    }

    /// Flag ops that fail for a reason other than "unsupported".
    struct Denied;
    impl FlagOps for Denied {
        fn get(&self, _: &File) -> io::Result<IFlags> {
            Err(io::Error::from_raw_os_error(
                rustix::io::Errno::ACCESS.raw_os_error(),
            ))
        }
        fn set(&self, _: &File, _: IFlags) -> io::Result<()> {
            unreachable!("set is not reached when get fails")
        }
    }

    fn vars<F: FlagOps>(dir: &Path, flags: F) -> EfiVars<F> {
        EfiVars {
            dir: dir.to_path_buf(),
            guid: NVIDIA_GUID,
            flags,
        }
    }

    #[test]
    fn unsupported_flags_still_write() {
        let dir = tempfile::tempdir().unwrap();
        let v = vars(dir.path(), Unsupported);
        v.write_u32("BootChainFwNext", 1).unwrap(); // new file: no flags to read at all
        v.write_u32("BootChainFwNext", 0).unwrap(); // existing file: GETFLAGS says ENOTTY
        assert_eq!(
            std::fs::read(v.path("BootChainFwNext")).unwrap(),
            [7, 0, 0, 0, 0, 0, 0, 0]
        );
        assert_eq!(v.read_u32("BootChainFwNext").unwrap(), Some(0));
    }

    #[test]
    fn immutable_flag_is_cleared_and_restored() {
        let dir = tempfile::tempdir().unwrap();
        let v = vars(dir.path(), Recording::default());
        std::fs::write(
            v.path("RootfsStatusSlotB"),
            [7, 0, 0, 0, 0xff, 0, 0, 0, 0xaa],
        )
        .unwrap();
        v.write_u32("RootfsStatusSlotB", 0).unwrap();
        let (imm, noatime) = (IFlags::IMMUTABLE.bits(), IFlags::NOATIME.bits());
        assert_eq!(*v.flags.calls.borrow(), vec![noatime, imm | noatime]);
        // The longer old content of an ordinary file was cut to the 8 bytes written.
        assert_eq!(
            std::fs::read(v.path("RootfsStatusSlotB")).unwrap(),
            [7, 0, 0, 0, 0, 0, 0, 0]
        );
    }

    #[test]
    fn other_flag_errors_are_reported() {
        let dir = tempfile::tempdir().unwrap();
        let v = vars(dir.path(), Denied);
        std::fs::write(v.path("RootfsStatusSlotA"), [7, 0, 0, 0, 0, 0, 0, 0]).unwrap();
        let err = v.write_u32("RootfsStatusSlotA", 0xff).unwrap_err();
        assert!(err.to_string().contains("inode flags"), "{err}");
        assert!(err.to_string().contains(NVIDIA_GUID), "{err}");
    }

    #[test]
    fn decode_lengths() {
        assert_eq!(decode_u32(&[7, 0, 0, 0, 0xff]).unwrap(), 0xff);
        assert_eq!(decode_u32(&[7, 0, 0, 0, 1, 0]).unwrap(), 1);
        assert_eq!(
            decode_u32(&[7, 0, 0, 0, 0x78, 0x56, 0x34, 0x12]).unwrap(),
            0x1234_5678
        );
        assert!(decode_u32(&[7, 0, 0, 0]).is_err());
        assert!(decode_u32(&[7, 0, 0, 0, 0, 0, 0, 0, 0]).is_err());
        let dir = tempfile::tempdir().unwrap();
        let v = EfiVars::new(dir.path().to_path_buf());
        assert_eq!(v.read_u32("RootfsRetryCountMax").unwrap(), None);
        std::fs::write(v.path("RootfsRetryCountMax"), [7, 0, 0]).unwrap();
        let err = v.read_u32("RootfsRetryCountMax").unwrap_err();
        assert!(err.to_string().contains("malformed"), "{err}");
    }

    /// The real ioctls on the test folder's file system (ext4 here, where the flag works; the
    /// immutable case needs CAP_LINUX_IMMUTABLE).
    #[test]
    fn real_ioctls_on_test_folder() {
        let dir = tempfile::tempdir().unwrap();
        let v = EfiVars::new(dir.path().to_path_buf());
        v.write_u32("RootfsStatusSlotA", 0).unwrap();
        let path = v.path("RootfsStatusSlotA");
        let file = File::open(&path).unwrap();
        let flags = match Ioctl.get(&file) {
            Ok(f) => f,
            Err(e) if flags_unsupported(&e) => {
                eprintln!(
                    "SKIPPED: inode flags unsupported on {}: {e}",
                    dir.path().display()
                );
                return;
            }
            Err(e) => panic!("{e}"),
        };
        if let Err(e) = Ioctl.set(&file, flags | IFlags::IMMUTABLE) {
            eprintln!(
                "SKIPPED: cannot set the immutable flag here (needs CAP_LINUX_IMMUTABLE): {e}"
            );
            return;
        }
        assert!(
            std::fs::write(&path, b"x").is_err(),
            "immutable file must refuse plain writes"
        );
        v.write_u32("RootfsStatusSlotA", 0xff).unwrap();
        assert_eq!(v.read_u32("RootfsStatusSlotA").unwrap(), Some(0xff));
        let after = Ioctl.get(&File::open(&path).unwrap()).unwrap();
        assert!(after.contains(IFlags::IMMUTABLE), "flag restored");
        Ioctl
            .set(
                &File::open(&path).unwrap(),
                after.difference(IFlags::IMMUTABLE),
            )
            .unwrap();
    }
}
