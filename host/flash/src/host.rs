//! What the host says about its block devices: `lsblk`, `/proc/self/mountinfo`, `/proc/swaps`
//! and the `holders` folders of sysfs, gathered once into [`HostFacts`] for the safety checks
//! ([`crate::safety`]). Every source path is in [`HostPaths`], so tests feed recorded files.

use std::fs;
use std::path::{Path, PathBuf};

use crate::error::{FlashError, Result};
use crate::lsblk::{parse_maj_min, Lsblk};

/// Where the host's facts are read from: the real `/proc` and `/sys` by default, a recorded
/// fixture folder in tests.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HostPaths {
    /// `/proc/self/mountinfo`.
    pub mountinfo: PathBuf,
    /// `/proc/swaps`.
    pub swaps: PathBuf,
    /// The sysfs root, `/sys`.
    pub sysfs: PathBuf,
}

impl Default for HostPaths {
    fn default() -> Self {
        HostPaths {
            mountinfo: PathBuf::from("/proc/self/mountinfo"),
            swaps: PathBuf::from("/proc/swaps"),
            sysfs: PathBuf::from("/sys"),
        }
    }
}

/// One line of `/proc/self/mountinfo` (proc(5)), the fields the checks need.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MountEntry {
    /// `major:minor` of the mounted file system's device (0:N for virtual ones and btrfs).
    pub dev: (u32, u32),
    /// Where it is mounted, unescaped.
    pub mount_point: String,
    /// File system type.
    pub fs_type: String,
    /// The mount source (`/dev/sda1`, `tmpfs`, `overlay`), unescaped.
    pub source: String,
}

/// Parses `/proc/self/mountinfo`.
pub fn parse_mountinfo(text: &str) -> Result<Vec<MountEntry>> {
    let mut entries = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let bad = |why: &str| FlashError::parse(format!("mountinfo line {}", i + 1), why);
        let fields: Vec<&str> = line.split(' ').collect();
        // id parent maj:min root mount-point options [optional...] - fstype source super-options
        let dash = fields
            .iter()
            .position(|f| *f == "-")
            .ok_or_else(|| bad("no ' - ' separator"))?;
        if dash < 6 || fields.len() < dash + 3 {
            return Err(bad("too few fields"));
        }
        let dev = parse_maj_min(fields[2]).ok_or_else(|| bad("field 3 is not major:minor"))?;
        entries.push(MountEntry {
            dev,
            mount_point: unescape(fields[4]),
            fs_type: unescape(fields[dash + 1]),
            source: unescape(fields[dash + 2]),
        });
    }
    Ok(entries)
}

/// One active swap area from `/proc/swaps`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SwapEntry {
    /// The device or file, unescaped.
    pub filename: String,
    /// `partition` or `file`.
    pub kind: String,
}

/// Parses `/proc/swaps` (a header line, then one whitespace-separated line per area).
pub fn parse_swaps(text: &str) -> Result<Vec<SwapEntry>> {
    let mut entries = Vec::new();
    for (i, line) in text.lines().enumerate().skip(1) {
        let mut fields = line.split_whitespace();
        let (Some(filename), Some(kind)) = (fields.next(), fields.next()) else {
            if line.trim().is_empty() {
                continue;
            }
            return Err(FlashError::parse(
                format!("/proc/swaps line {}", i + 1),
                "fewer than two fields",
            ));
        };
        entries.push(SwapEntry {
            filename: unescape(filename),
            kind: kind.to_string(),
        });
    }
    Ok(entries)
}

/// Undoes the kernel's octal escapes of space, tab, newline and backslash (`\040`).
fn unescape(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\' && i + 4 <= bytes.len() {
            let digits = &bytes[i + 1..i + 4];
            if digits.iter().all(|d| (b'0'..=b'7').contains(d)) {
                let value = digits
                    .iter()
                    .fold(0u32, |acc, d| acc * 8 + u32::from(d - b'0'));
                if let Ok(value) = u8::try_from(value) {
                    out.push(value);
                    i += 4;
                    continue;
                }
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Everything the safety checks look at, gathered once.
#[derive(Clone, Debug)]
pub struct HostFacts {
    /// The block device tree.
    pub lsblk: Lsblk,
    /// Mounted file systems.
    pub mounts: Vec<MountEntry>,
    /// Active swap areas.
    pub swaps: Vec<SwapEntry>,
    /// The sysfs root, for `class/block/<name>/holders`.
    pub sysfs: PathBuf,
}

impl HostFacts {
    /// Gathers facts from this host: runs `lsblk`, reads mountinfo and swaps from `paths`.
    pub fn gather(paths: &HostPaths) -> Result<HostFacts> {
        let lsblk = Lsblk::run()?;
        Self::from_lsblk(lsblk, paths)
    }

    /// Facts from an already parsed lsblk tree (a recorded fixture in tests) and the files
    /// named by `paths`.
    pub fn from_lsblk(lsblk: Lsblk, paths: &HostPaths) -> Result<HostFacts> {
        let read = |path: &Path| {
            fs::read_to_string(path)
                .map_err(|e| FlashError::io(format!("reading {}", path.display()), e))
        };
        Ok(HostFacts {
            lsblk,
            mounts: parse_mountinfo(&read(&paths.mountinfo)?)?,
            swaps: parse_swaps(&read(&paths.swaps)?)?,
            sysfs: paths.sysfs.clone(),
        })
    }

    /// The kernel names in `class/block/<name>/holders` (dm and md devices built on it).
    /// A device sysfs does not know has none.
    pub fn holders(&self, name: &str) -> Result<Vec<String>> {
        let dir = self.sysfs.join("class/block").join(name).join("holders");
        let entries = match fs::read_dir(&dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(FlashError::io(format!("listing {}", dir.display()), e)),
        };
        let mut names = Vec::new();
        for entry in entries {
            let entry =
                entry.map_err(|e| FlashError::io(format!("listing {}", dir.display()), e))?;
            names.push(entry.file_name().to_string_lossy().into_owned());
        }
        names.sort();
        Ok(names)
    }

    /// The mount entry the system runs from: the last one mounted on `/` (later mounts hide
    /// earlier ones).
    pub fn root_mount(&self) -> Option<&MountEntry> {
        self.mounts.iter().rev().find(|m| m.mount_point == "/")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FIXTURE: &str = "fixtures/host/loop-partition-mounted-and-swap";

    #[test]
    fn recorded_mountinfo_parses() {
        let text = fs::read_to_string(Path::new(FIXTURE).join("mountinfo")).unwrap();
        let mounts = parse_mountinfo(&text).unwrap();
        let root = mounts.iter().find(|m| m.mount_point == "/").unwrap();
        assert_eq!(root.dev, (254, 0));
        assert_eq!(root.source, "/dev/vda");
        assert_eq!(root.fs_type, "ext4");
        let stick = mounts
            .iter()
            .find(|m| m.mount_point == "/tmp/flashrec/mnt")
            .unwrap();
        assert_eq!(
            (stick.dev, stick.source.as_str()),
            ((259, 0), "/dev/loop0p1")
        );
    }

    #[test]
    fn escapes_and_optional_fields() {
        let text =
            "36 35 98:0 / /media/my\\040stick rw,noatime master:1 shared:7 - vfat /dev/sdb1 rw\n";
        let m = &parse_mountinfo(text).unwrap()[0];
        assert_eq!(m.mount_point, "/media/my stick");
        assert_eq!(m.source, "/dev/sdb1");
        assert!(parse_mountinfo("1 2 3:4 / /x rw\n").is_err());
        assert!(parse_mountinfo("1 2 x / /x rw - ext4 /dev/a rw\n").is_err());
        assert_eq!(unescape("a\\134b\\"), "a\\b\\");
    }

    #[test]
    fn recorded_swaps_parse() {
        let text = fs::read_to_string(Path::new(FIXTURE).join("swaps")).unwrap();
        let swaps = parse_swaps(&text).unwrap();
        assert_eq!(swaps.len(), 1);
        assert_eq!(swaps[0].filename, "/dev/loop0p2");
        assert_eq!(swaps[0].kind, "partition");
        assert!(parse_swaps("Filename Type\n").unwrap().is_empty());
    }

    #[test]
    fn facts_from_fixture_and_missing_holders() {
        let paths = HostPaths {
            mountinfo: Path::new(FIXTURE).join("mountinfo"),
            swaps: Path::new(FIXTURE).join("swaps"),
            sysfs: PathBuf::from("fixtures/sysfs/does-not-exist"),
        };
        let lsblk =
            Lsblk::parse(&fs::read_to_string(Path::new(FIXTURE).join("lsblk.json")).unwrap())
                .unwrap();
        let facts = HostFacts::from_lsblk(lsblk, &paths).unwrap();
        assert_eq!(facts.root_mount().unwrap().source, "/dev/vda");
        assert!(facts.holders("sda").unwrap().is_empty());
    }
}
