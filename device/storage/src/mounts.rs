//! File systems on the unlocked volumes: is there one, make one, is it mounted, mount it.
//! Behind the [`Mounter`] trait so that first-boot logic runs in tests without root.
//!
//! * [`SystemMounts`]: `blkid`, `mkfs.ext4`, `mount` through [`aperture_sys::Cmd`], and the
//!   mount table through [`aperture_sys::mountinfo`].
//! * [`FakeMounts`]: remembers what was formatted (across "reboots", like a disk) and mounted
//!   (for one boot); creates the mount folder; its operations count towards a [`PowerCut`].

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::rc::Rc;

use aperture_sys::Cmd;

use crate::fake::PowerCut;
use crate::StorageError;

/// Mount options for a volume: never device nodes or set-uid programs from the data
/// partitions; config holds no programs at all.
pub fn mount_options(noexec: bool) -> &'static str {
    if noexec {
        "nodev,nosuid,noexec,noatime"
    } else {
        "nodev,nosuid,noatime"
    }
}

/// Making and mounting file systems.
pub trait Mounter {
    /// The file system type found on `device` (`ext4`), or `None` if there is none.
    fn filesystem(&self, device: &Path) -> Result<Option<String>, StorageError>;
    /// Make an ext4 file system labelled `label` on `device`.
    fn mkfs(&self, device: &Path, label: &str) -> Result<(), StorageError>;
    /// What is mounted at `target` (its source), if anything.
    fn mounted_at(&self, target: &Path) -> Result<Option<String>, StorageError>;
    /// Mount the ext4 on `device` at `target` with `options`.
    fn mount(&self, device: &Path, target: &Path, options: &str) -> Result<(), StorageError>;
    /// Unmount `target`.
    fn unmount(&self, target: &Path) -> Result<(), StorageError>;
}

/// The real mounter.
#[derive(Debug, Clone)]
pub struct SystemMounts {
    mountinfo: PathBuf,
}

impl SystemMounts {
    /// Reads mounts from `mountinfo` (`/proc/self/mountinfo`).
    pub fn new(mountinfo: PathBuf) -> SystemMounts {
        SystemMounts { mountinfo }
    }
}

impl Mounter for SystemMounts {
    fn filesystem(&self, device: &Path) -> Result<Option<String>, StorageError> {
        // blkid exits 2 when it finds nothing: that is an answer, not a failure.
        let cmd = Cmd::new("blkid")
            .args(["-p", "-o", "value", "-s", "TYPE"])
            .arg(device);
        let display = cmd.display();
        let out = cmd.output()?;
        match out.code {
            Some(0) => {
                let t = out.stdout_text().trim().to_string();
                Ok((!t.is_empty()).then_some(t))
            }
            Some(2) => Ok(None),
            _ => Err(aperture_sys::cmd::failure(display, &out).into()),
        }
    }

    fn mkfs(&self, device: &Path, label: &str) -> Result<(), StorageError> {
        // nodiscard: the mapping does not pass discards down (no --allow-discards, which would
        // show which blocks are in use), so trying only costs time.
        Cmd::new("mkfs.ext4")
            .args(["-q", "-F", "-L", label, "-E", "nodiscard"])
            .arg(device)
            .run()?;
        Ok(())
    }

    fn mounted_at(&self, target: &Path) -> Result<Option<String>, StorageError> {
        let text = std::fs::read_to_string(&self.mountinfo)
            .map_err(StorageError::io("reading", &self.mountinfo))?;
        let entries = aperture_sys::mountinfo::parse(&text)
            .map_err(|e| StorageError::malformed(self.mountinfo.display().to_string(), e))?;
        Ok(entries
            .into_iter()
            .rev()
            .find(|m| m.mount_point == target)
            .map(|m| m.source))
    }

    fn mount(&self, device: &Path, target: &Path, options: &str) -> Result<(), StorageError> {
        Cmd::new("mount")
            .args(["-t", "ext4", "-o", options])
            .arg(device)
            .arg(target)
            .run()?;
        Ok(())
    }

    fn unmount(&self, target: &Path) -> Result<(), StorageError> {
        Cmd::new("umount").arg(target).run()?;
        Ok(())
    }
}

/// Test double of [`Mounter`]: file systems and mounts kept in memory; `mount` creates the
/// target folder (a temporary folder in tests) so that callers can populate it.
#[derive(Debug, Default)]
pub struct FakeMounts {
    formatted: Rc<RefCell<BTreeSet<PathBuf>>>,
    mounted: RefCell<BTreeMap<PathBuf, PathBuf>>,
    mkfs_calls: RefCell<Vec<PathBuf>>,
    cut: PowerCut,
}

impl FakeMounts {
    /// Nothing formatted, nothing mounted.
    pub fn new() -> FakeMounts {
        FakeMounts::default()
    }

    /// The next boot: the same file systems, nothing mounted, operations counting towards
    /// `cut`.
    pub fn next_boot(&self, cut: PowerCut) -> FakeMounts {
        FakeMounts {
            formatted: Rc::clone(&self.formatted),
            cut,
            ..FakeMounts::default()
        }
    }

    /// How many times `mkfs` ran (this boot).
    pub fn mkfs_calls(&self) -> u32 {
        self.mkfs_calls.borrow().len() as u32
    }

    /// The devices `mkfs` ran on (this boot).
    pub fn mkfs_devices(&self) -> Vec<PathBuf> {
        self.mkfs_calls.borrow().clone()
    }

    /// Pretend `device` already holds an ext4 file system.
    pub fn add_filesystem(&self, device: &Path) {
        self.formatted.borrow_mut().insert(device.to_path_buf());
    }
}

impl Mounter for FakeMounts {
    fn filesystem(&self, device: &Path) -> Result<Option<String>, StorageError> {
        Ok(self
            .formatted
            .borrow()
            .contains(device)
            .then(|| "ext4".to_string()))
    }

    fn mkfs(&self, device: &Path, _label: &str) -> Result<(), StorageError> {
        self.cut.tick_whole("mkfs.ext4")?;
        self.mkfs_calls.borrow_mut().push(device.to_path_buf());
        self.formatted.borrow_mut().insert(device.to_path_buf());
        Ok(())
    }

    fn mounted_at(&self, target: &Path) -> Result<Option<String>, StorageError> {
        Ok(self
            .mounted
            .borrow()
            .get(target)
            .map(|d| d.display().to_string()))
    }

    fn mount(&self, device: &Path, target: &Path, _options: &str) -> Result<(), StorageError> {
        self.cut.tick_whole("mount")?;
        if !self.formatted.borrow().contains(device) {
            return Err(StorageError::Command(aperture_sys::CmdError {
                command: format!("fake mount {} {}", device.display(), target.display()),
                status: "exit code 32".into(),
                stderr: "wrong fs type, bad option, bad superblock".into(),
            }));
        }
        aperture_sys::fs::create_dir_all(target, 0o755)?;
        self.mounted
            .borrow_mut()
            .insert(target.to_path_buf(), device.to_path_buf());
        Ok(())
    }

    fn unmount(&self, target: &Path) -> Result<(), StorageError> {
        self.mounted.borrow_mut().remove(target);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn system_mounts_reads_a_mountinfo_file() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("mountinfo");
        std::fs::write(
            &file,
            "31 22 254:2 / /data rw - ext4 /dev/mapper/aperture-data rw\n",
        )
        .unwrap();
        let m = SystemMounts::new(file);
        assert_eq!(
            m.mounted_at(Path::new("/data")).unwrap().as_deref(),
            Some("/dev/mapper/aperture-data")
        );
        assert_eq!(m.mounted_at(Path::new("/config")).unwrap(), None);
    }

    #[test]
    fn fake_refuses_to_mount_without_a_filesystem() {
        let dir = tempfile::tempdir().unwrap();
        let m = FakeMounts::new();
        let dev = Path::new("/dev/mapper/x");
        assert!(m.mount(dev, &dir.path().join("data"), "").is_err());
        m.mkfs(dev, "data").unwrap();
        m.mount(dev, &dir.path().join("data"), "").unwrap();
        assert!(dir.path().join("data").is_dir());
        assert_eq!(m.filesystem(dev).unwrap().as_deref(), Some("ext4"));
    }
}
