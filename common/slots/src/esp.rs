//! [`EspOps`]: the file operations a boot-control backend performs on the ESP, each durable when
//! it returns and safe on vfat, behind a small trait so that the updater can route them through
//! its fault-injection seam and cut the power in the middle of one.
//!
//! [`RealEsp`] does them with `aperture_sys::fs`: a replaced file is written as `NAME.tmp`,
//! fsynced, renamed over `NAME`, fsynced AGAIN under its new name and then its folder fsynced.
//! The second fsync is what vfat needs: Linux's `vfat_rename` gives the new directory entry a
//! start cluster and size of zero until the inode is written back, which `fsync` of the folder
//! does not do (fs/fat/namei_vfat.c, fs/fat/file.c).
//!
//! A vfat rename of a long name is also two directory operations (create the new entry, delete
//! the old), so a power cut can leave both names; [`crate::SystemdBoot`] reads such a state as
//! the safe one and cleans it up (see [`crate::systemd_boot`]).

use std::fmt;
use std::path::Path;

use aperture_sys::fs;
use aperture_sys::FsError;

/// Durable file operations on the ESP.
pub trait EspOps: fmt::Debug + Send + Sync {
    /// Replace `path` with `contents` (temporary file, fsync, rename, fsync it again, fsync the
    /// folder).
    fn write_atomic(&self, path: &Path, contents: &[u8]) -> Result<(), FsError>;

    /// Rename `from` over `to` in one folder, fsync `to` again under its new name, fsync the
    /// folder.
    fn rename_durable(&self, from: &Path, to: &Path) -> Result<(), FsError>;

    /// Remove `path` if it exists and fsync its folder; `Ok(false)` if it was not there.
    fn remove_durable(&self, path: &Path) -> Result<bool, FsError>;
}

/// The operations themselves, through `aperture_sys::fs`.
#[derive(Debug, Clone, Copy, Default)]
pub struct RealEsp;

impl EspOps for RealEsp {
    fn write_atomic(&self, path: &Path, contents: &[u8]) -> Result<(), FsError> {
        fs::write_atomic(path, contents, 0o644)
    }

    fn rename_durable(&self, from: &Path, to: &Path) -> Result<(), FsError> {
        fs::rename_durable(from, to)
    }

    fn remove_durable(&self, path: &Path) -> Result<bool, FsError> {
        fs::remove_durable(path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn real_operations_are_durable_and_leave_no_temporary_file() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("slot-b+3.conf");
        RealEsp.write_atomic(&p, b"one").unwrap();
        RealEsp.write_atomic(&p, b"two").unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"two");
        assert!(!fs::tmp_path(&p).exists());
        let q = d.path().join("slot-b.conf");
        RealEsp.rename_durable(&p, &q).unwrap();
        assert!(!p.exists() && q.exists());
        assert!(RealEsp.remove_durable(&q).unwrap());
        assert!(!RealEsp.remove_durable(&q).unwrap());
        let e = RealEsp
            .write_atomic(&d.path().join("none/x.conf"), b"x")
            .unwrap_err();
        assert!(e.to_string().contains("none/x.conf.tmp"), "{e}");
    }
}
