//! File systems on the unlocked volumes: is there one, make one, is it mounted, mount it.
//! Behind the [`Mounter`] trait so that first-boot logic runs in tests without root.
//!
//! * [`SystemMounts`]: `blkid`, `mkfs.ext4`, `mount` through [`crate::cmd::Cmd`], and
//!   `/proc/self/mountinfo` parsed into [`MountInfo`] entries (proc(5)).
//! * [`FakeMounts`]: remembers what was formatted and mounted; creates the mount folder.

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use crate::cmd::Cmd;
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
            _ => Err(crate::cmd::failure(display, &out)),
        }
    }

    fn mkfs(&self, device: &Path, label: &str) -> Result<(), StorageError> {
        // nodiscard: the mapping does not pass discards down (no --allow-discards, which would
        // show which blocks are in use), so trying only costs time.
        Cmd::new("mkfs.ext4")
            .args(["-q", "-F", "-L", label, "-E", "nodiscard"])
            .arg(device)
            .run()
            .map(drop)
    }

    fn mounted_at(&self, target: &Path) -> Result<Option<String>, StorageError> {
        let text = std::fs::read_to_string(&self.mountinfo)
            .map_err(StorageError::io("reading", &self.mountinfo))?;
        let entries = parse_mountinfo(&text)?;
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
            .run()
            .map(drop)
    }

    fn unmount(&self, target: &Path) -> Result<(), StorageError> {
        Cmd::new("umount").arg(target).run().map(drop)
    }
}

/// One line of `/proc/self/mountinfo`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountInfo {
    /// Where it is mounted (octal escapes decoded).
    pub mount_point: PathBuf,
    /// File system type.
    pub fstype: String,
    /// The mount source (`/dev/mapper/aperture-data`, `overlay`).
    pub source: String,
}

/// Parses `/proc/self/mountinfo` (proc(5): fields up to the optional ones, `-`, then type,
/// source, super options).
pub fn parse_mountinfo(text: &str) -> Result<Vec<MountInfo>, StorageError> {
    let mut out = Vec::new();
    for (n, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let bad = || StorageError::malformed(format!("mountinfo line {}", n + 1), line);
        let (head, tail) = line.split_once(" - ").ok_or_else(bad)?;
        let head: Vec<&str> = head.split(' ').collect();
        let tail: Vec<&str> = tail.split(' ').collect();
        if head.len() < 6 || tail.len() < 2 {
            return Err(bad());
        }
        out.push(MountInfo {
            mount_point: PathBuf::from(unescape(head[4])),
            fstype: unescape(tail[0]),
            source: unescape(tail[1]),
        });
    }
    Ok(out)
}

/// Decodes the `\040`-style octal escapes the kernel uses for space, tab, newline, backslash.
fn unescape(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\' && i + 4 <= bytes.len() {
            let oct = std::str::from_utf8(&bytes[i + 1..i + 4]).ok();
            if let Some(v) = oct.and_then(|o| u8::from_str_radix(o, 8).ok()) {
                out.push(v);
                i += 4;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Test double of [`Mounter`]: file systems and mounts kept in memory; `mount` creates the
/// target folder (a temporary folder in tests) so that callers can populate it.
#[derive(Debug, Default)]
pub struct FakeMounts {
    formatted: RefCell<BTreeSet<PathBuf>>,
    mounted: RefCell<BTreeMap<PathBuf, PathBuf>>,
    mkfs_calls: RefCell<u32>,
}

impl FakeMounts {
    /// Nothing formatted, nothing mounted.
    pub fn new() -> FakeMounts {
        FakeMounts::default()
    }

    /// How many times `mkfs` ran.
    pub fn mkfs_calls(&self) -> u32 {
        *self.mkfs_calls.borrow()
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
        *self.mkfs_calls.borrow_mut() += 1;
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
        if !self.formatted.borrow().contains(device) {
            return Err(StorageError::Command {
                command: format!("fake mount {} {}", device.display(), target.display()),
                status: "exit code 32".into(),
                stderr: "wrong fs type, bad option, bad superblock".into(),
            });
        }
        crate::fsutil::create_dir_all(target, 0o755)?;
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
    fn mountinfo_parses_recorded_lines() {
        // From a Debian 12 guest with the data partition mounted and /var overlaid.
        let text = "\
22 1 254:0 / / ro,relatime shared:1 - erofs /dev/mapper/aperture-root ro,user_xattr\n\
30 22 259:1 / /efi rw,noatime shared:12 - vfat /dev/vda1 rw,fmask=0077,dmask=0077\n\
31 22 254:2 / /data rw,nosuid,nodev,noatime shared:13 - ext4 /dev/mapper/aperture-data rw\n\
32 22 0:40 / /var rw,relatime shared:14 - overlay overlay rw,lowerdir=/var,upperdir=/data/var/upper\n\
33 22 0:41 / /mnt/with\\040space rw shared:15 master:2 - tmpfs tmp\\040fs rw\n";
        let m = parse_mountinfo(text).unwrap();
        assert_eq!(m.len(), 5);
        assert_eq!(m[2].mount_point, Path::new("/data"));
        assert_eq!(m[2].source, "/dev/mapper/aperture-data");
        assert_eq!(m[3].fstype, "overlay");
        assert_eq!(m[4].mount_point, Path::new("/mnt/with space"));
        assert_eq!(m[4].source, "tmp fs");
        assert!(parse_mountinfo("garbage line\n").is_err());
    }

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
