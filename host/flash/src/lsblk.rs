//! `lsblk -J` output as typed structs: the block devices of the host, each disk with its
//! partitions (and whatever sits on them: dm-crypt, LVM) as children.
//!
//! The columns are [`LSBLK_COLUMNS`]; `-b` gives sizes in bytes. util-linux 2.38 writes
//! booleans and numbers as JSON booleans and numbers; older versions (2.33 and before) write
//! `"0"`/`"1"` and strings, and `MOUNTPOINT` instead of `MOUNTPOINTS`. Both are accepted.

use std::path::Path;

use aperture_sys::Cmd;
use serde::{Deserialize, Deserializer};

use crate::error::{FlashError, Result};

/// The columns asked of lsblk (`MAJ:MIN` to match mountinfo entries that name no device).
pub const LSBLK_COLUMNS: &str =
    "NAME,PATH,MAJ:MIN,MOUNTPOINTS,TYPE,RM,HOTPLUG,SIZE,TRAN,SERIAL,MODEL,PKNAME";

/// The whole output: `{"blockdevices": [...]}`.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
pub struct Lsblk {
    /// Top-level devices (disks, loop devices), each with its children.
    pub blockdevices: Vec<BlockDevice>,
}

/// One block device as lsblk reports it.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
pub struct BlockDevice {
    /// Kernel name: `sda`, `nvme0n1p2`, `loop3`.
    pub name: String,
    /// Device node: `/dev/sda`. Missing from very old lsblk; then `/dev/<name>`.
    #[serde(default)]
    pub path: Option<String>,
    /// `major:minor`.
    #[serde(rename = "maj:min", default)]
    pub maj_min: Option<String>,
    /// Mount points (`[SWAP]` for active swap); lsblk writes `[null]` for none.
    #[serde(default, deserialize_with = "mountpoints")]
    pub mountpoints: Vec<String>,
    /// Older lsblk's single mount point.
    #[serde(default)]
    pub mountpoint: Option<String>,
    /// `disk`, `part`, `loop`, `crypt`, `lvm`, `rom`, ...
    #[serde(rename = "type")]
    pub kind: String,
    /// Removable medium (the kernel's `removable` attribute).
    #[serde(default, deserialize_with = "flag")]
    pub rm: bool,
    /// Hot-pluggable (USB, eSATA, ...).
    #[serde(default, deserialize_with = "flag")]
    pub hotplug: bool,
    /// Size in bytes (with `lsblk -b`).
    #[serde(default, deserialize_with = "bytes")]
    pub size: u64,
    /// Transport: `usb`, `sata`, `nvme`, ...
    #[serde(default)]
    pub tran: Option<String>,
    /// Disk serial number.
    #[serde(default)]
    pub serial: Option<String>,
    /// Disk model.
    #[serde(default)]
    pub model: Option<String>,
    /// Parent kernel name (partitions, dm devices).
    #[serde(default)]
    pub pkname: Option<String>,
    /// Partitions and devices stacked on this one.
    #[serde(default)]
    pub children: Vec<BlockDevice>,
}

impl BlockDevice {
    /// The device node.
    pub fn dev_path(&self) -> String {
        self.path
            .clone()
            .unwrap_or_else(|| format!("/dev/{}", self.name))
    }

    /// Every mount point, swap included, from either column.
    pub fn all_mountpoints(&self) -> Vec<&str> {
        let mut all: Vec<&str> = self.mountpoints.iter().map(String::as_str).collect();
        if let Some(m) = &self.mountpoint {
            if !all.contains(&m.as_str()) {
                all.push(m);
            }
        }
        all
    }

    /// This device and everything below it, depth first.
    pub fn descendants(&self) -> Vec<&BlockDevice> {
        let mut out = vec![self];
        for child in &self.children {
            out.extend(child.descendants());
        }
        out
    }

    /// `(major, minor)`, when lsblk gave it.
    pub fn dev_numbers(&self) -> Option<(u32, u32)> {
        parse_maj_min(self.maj_min.as_deref()?)
    }

    /// A short description for messages: "SanDisk Ultra (usb, 30.8 GB)".
    pub fn describe(&self) -> String {
        let model = self.model.as_deref().map(str::trim).unwrap_or("");
        let tran = self.tran.as_deref().unwrap_or(&self.kind);
        let size = format!("{:.1} GB", self.size as f64 / 1e9);
        if model.is_empty() {
            format!("{tran}, {size}")
        } else {
            format!("{model} ({tran}, {size})")
        }
    }
}

/// Parses `8:16`.
pub fn parse_maj_min(text: &str) -> Option<(u32, u32)> {
    let (major, minor) = text.trim().split_once(':')?;
    Some((major.parse().ok()?, minor.parse().ok()?))
}

impl Lsblk {
    /// Parses `lsblk -J -b -o ...` output.
    pub fn parse(json: &str) -> Result<Lsblk> {
        serde_json::from_str(json)
            .map_err(|e| FlashError::parse("`lsblk -J` output", e.to_string()))
    }

    /// Runs `lsblk -J -b -o` [`LSBLK_COLUMNS`] on this host.
    pub fn run() -> Result<Lsblk> {
        Ok(Cmd::new("lsblk")
            .args(["-J", "-b", "-o", LSBLK_COLUMNS])
            .json()?)
    }

    /// The device (at any depth) whose node is `path`.
    pub fn find_path(&self, path: &Path) -> Option<&BlockDevice> {
        let wanted = path.to_string_lossy();
        self.all().into_iter().find(|d| d.dev_path() == wanted)
    }

    /// Every device at every depth.
    pub fn all(&self) -> Vec<&BlockDevice> {
        self.blockdevices
            .iter()
            .flat_map(BlockDevice::descendants)
            .collect()
    }
}

fn mountpoints<'de, D: Deserializer<'de>>(d: D) -> std::result::Result<Vec<String>, D::Error> {
    let list: Option<Vec<Option<String>>> = Option::deserialize(d)?;
    Ok(list.unwrap_or_default().into_iter().flatten().collect())
}

#[derive(Deserialize)]
#[serde(untagged)]
enum FlagOrText {
    Flag(bool),
    Number(u64),
    Text(String),
}

fn flag<'de, D: Deserializer<'de>>(d: D) -> std::result::Result<bool, D::Error> {
    Ok(match Option::<FlagOrText>::deserialize(d)? {
        None => false,
        Some(FlagOrText::Flag(b)) => b,
        Some(FlagOrText::Number(n)) => n != 0,
        Some(FlagOrText::Text(t)) => matches!(t.trim(), "1" | "true"),
    })
}

fn bytes<'de, D: Deserializer<'de>>(d: D) -> std::result::Result<u64, D::Error> {
    match Option::<FlagOrText>::deserialize(d)? {
        None => Ok(0),
        Some(FlagOrText::Number(n)) => Ok(n),
        Some(FlagOrText::Text(t)) => t.trim().parse().map_err(|_| {
            serde::de::Error::custom(format!(
                "size {t:?} is not a number of bytes (run lsblk with -b)"
            ))
        }),
        Some(FlagOrText::Flag(_)) => Err(serde::de::Error::custom("size is a boolean")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const RECORDED: &str =
        include_str!("../fixtures/host/loop-partition-mounted-and-swap/lsblk.json");

    #[test]
    fn recorded_output_parses_into_a_tree() {
        let l = Lsblk::parse(RECORDED).unwrap();
        let names: Vec<&str> = l.blockdevices.iter().map(|d| d.name.as_str()).collect();
        assert_eq!(names, ["loop0", "zram0", "vda"]);
        let loop0 = &l.blockdevices[0];
        assert_eq!(loop0.kind, "loop");
        assert_eq!(loop0.size, 64 << 20);
        assert!(loop0.mountpoints.is_empty(), "[null] is no mount point");
        assert_eq!(loop0.children.len(), 2);
        assert_eq!(loop0.children[0].mountpoints, ["/tmp/flashrec/mnt"]);
        assert_eq!(loop0.children[1].all_mountpoints(), ["[SWAP]"]);
        assert_eq!(loop0.children[1].pkname.as_deref(), Some("loop0"));
        assert_eq!(loop0.children[0].dev_numbers(), Some((259, 0)));
        let vda = l.find_path(Path::new("/dev/vda")).unwrap();
        assert_eq!(vda.mountpoints, ["/"]);
        assert!(!vda.rm && !vda.hotplug);
        let part = l.find_path(Path::new("/dev/loop0p2")).unwrap();
        assert_eq!(part.name, "loop0p2", "children are searched too");
        assert_eq!(l.all().len(), 5);
    }

    #[test]
    fn old_lsblk_strings_are_accepted() {
        let json = r#"{"blockdevices": [{"name": "sdb", "maj:min": "8:16", "rm": "1",
            "hotplug": "1", "size": "31914983424", "type": "disk", "mountpoint": null,
            "tran": "usb", "children": [{"name": "sdb1", "rm": "1", "hotplug": "1",
            "size": "31913934848", "type": "part", "mountpoint": "/media/stick"}]}]}"#;
        let l = Lsblk::parse(json).unwrap();
        let sdb = &l.blockdevices[0];
        assert!(sdb.rm && sdb.hotplug);
        assert_eq!(sdb.size, 31_914_983_424);
        assert_eq!(sdb.dev_path(), "/dev/sdb");
        assert_eq!(sdb.children[0].all_mountpoints(), ["/media/stick"]);
        assert_eq!(sdb.describe(), "usb, 31.9 GB");
    }

    #[test]
    fn human_sizes_are_refused_with_the_fix() {
        let json = r#"{"blockdevices": [{"name": "sdb", "size": "29.7G", "type": "disk"}]}"#;
        let err = Lsblk::parse(json).unwrap_err().to_string();
        assert!(err.contains("-b"), "{err}");
    }
}
