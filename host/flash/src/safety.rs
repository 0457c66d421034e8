//! The checks a block device must pass before anything is written to it: it is a whole disk,
//! it does not hold the running system's root, nothing on it is mounted or used as swap, no
//! dm or md device is built on it, it is removable (or `--force`), and it is big enough.
//!
//! Each refusal is a [`FlashError::Refused`] naming the device and the reason. The checks are
//! pure functions of [`HostFacts`], so they run in tests against recorded lsblk, mountinfo
//! and sysfs fixtures. Opening the device with `O_EXCL` afterwards ([`crate::BlockTarget`])
//! keeps the kernel from mounting it while we write.

use std::path::Path;

use crate::error::{FlashError, Result};
use crate::host::HostFacts;
use crate::lsblk::BlockDevice;

/// What the checks need besides the host's facts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Policy {
    /// Bytes the image needs.
    pub image_size: u64,
    /// Allow a disk that is neither removable, hot-pluggable nor on USB.
    pub force: bool,
}

/// Why a device counts as removable, or that `--force` allowed it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Removable {
    /// The kernel marks the medium removable (`RM`).
    Removable,
    /// The device is hot-pluggable (`HOTPLUG`).
    Hotplug,
    /// The transport is USB.
    Usb,
    /// A loop device: a file the operator attached, not a disk of this machine.
    Loop,
    /// None of the above; `--force` was given.
    Forced,
}

impl Removable {
    /// Why writing is allowed, in words.
    pub fn describe(&self) -> &'static str {
        match self {
            Removable::Removable => "removable medium",
            Removable::Hotplug => "hot-pluggable",
            Removable::Usb => "on USB",
            Removable::Loop => "a loop device",
            Removable::Forced => "not removable, allowed by --force",
        }
    }
}

/// A device that passed every check.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CheckedDisk {
    /// The device node, `/dev/sdb`.
    pub path: String,
    /// The kernel name, `sdb`.
    pub name: String,
    /// Size in bytes.
    pub size: u64,
    /// Model, transport and size, for messages.
    pub description: String,
    /// Why writing it is allowed.
    pub removable: Removable,
}

/// Checks the block device at `device` (a canonical path such as `/dev/sdb`) against every
/// rule, in the order of how bad a mistake would be: the system disk first.
pub fn check_disk(facts: &HostFacts, device: &Path, policy: Policy) -> Result<CheckedDisk> {
    let shown = device.display().to_string();
    let refuse = |reason: String| Err(FlashError::refused(shown.clone(), reason));
    let Some(disk) = facts.lsblk.find_path(device) else {
        return refuse(
            "lsblk does not list it as a block device; check the name with `lsblk` or \
             `cargo xtask flash --list`"
                .into(),
        );
    };
    if disk.kind == "part" {
        let parent = disk
            .pkname
            .as_deref()
            .map(|p| format!("/dev/{p}"))
            .unwrap_or_else(|| "the whole disk".into());
        return refuse(format!(
            "it is a partition; an image is written to a whole disk: use {parent}"
        ));
    }
    if disk.kind != "disk" && disk.kind != "loop" {
        return refuse(format!(
            "it is a {} device, not a disk; an image is written to a whole disk",
            disk.kind
        ));
    }
    let all = disk.descendants();

    if let Some(why) = holds_root(facts, &all) {
        return refuse(format!(
            "it holds the running system's root file system ({why}); this is the machine's \
             own disk"
        ));
    }
    let mounted = mounted(facts, &all);
    if !mounted.is_empty() {
        return refuse(format!(
            "it is mounted: {}; unmount {} first",
            mounted.join(", "),
            if mounted.len() == 1 { "it" } else { "them" }
        ));
    }
    let swap = swaps(facts, &all);
    if !swap.is_empty() {
        return refuse(format!(
            "it holds active swap ({}); run `swapoff` on it first",
            swap.join(", ")
        ));
    }
    let held = holders(facts, &all)?;
    if !held.is_empty() {
        return refuse(format!(
            "devices are built on it ({}): a dm-crypt, LVM or RAID device is using it; close \
             them first (`cryptsetup close`, `vgchange -an`, `mdadm --stop`)",
            held.join(", ")
        ));
    }
    let removable = if disk.kind == "loop" {
        Removable::Loop
    } else if disk.rm {
        Removable::Removable
    } else if disk.hotplug {
        Removable::Hotplug
    } else if disk.tran.as_deref() == Some("usb") {
        Removable::Usb
    } else if policy.force {
        Removable::Forced
    } else {
        return refuse(format!(
            "it is not removable ({}: RM=0, HOTPLUG=0, TRAN={}), so it is probably a disk \
             of this machine; pass --force if you really mean it",
            disk.describe(),
            disk.tran.as_deref().unwrap_or("none")
        ));
    };
    if disk.size < policy.image_size {
        return refuse(format!(
            "it is too small: {} bytes ({:.2} GiB), the image needs {} bytes ({:.2} GiB)",
            disk.size,
            gib(disk.size),
            policy.image_size,
            gib(policy.image_size)
        ));
    }
    Ok(CheckedDisk {
        path: disk.dev_path(),
        name: disk.name.clone(),
        size: disk.size,
        description: disk.describe(),
        removable,
    })
}

fn gib(bytes: u64) -> f64 {
    bytes as f64 / f64::from(1u32 << 30)
}

/// Whether any of `devices` is the root file system's device: by lsblk's mount points, by the
/// root mount's source path, or by its device number (which finds it through dm and LVM,
/// since lsblk lists a stacked device under every device it is built on).
fn holds_root(facts: &HostFacts, devices: &[&BlockDevice]) -> Option<String> {
    for d in devices {
        if d.all_mountpoints().contains(&"/") {
            return Some(format!("{} is mounted on /", d.dev_path()));
        }
    }
    let root = facts.root_mount()?;
    for d in devices {
        if d.dev_path() == root.source {
            return Some(format!("{} is mounted on /", root.source));
        }
        if root.dev.0 != 0 && d.dev_numbers() == Some(root.dev) {
            return Some(format!(
                "{} ({}:{}) is mounted on /",
                d.dev_path(),
                root.dev.0,
                root.dev.1
            ));
        }
    }
    None
}

/// "PATH on MOUNTPOINT" for every mount of any of `devices`, from lsblk and mountinfo.
fn mounted(facts: &HostFacts, devices: &[&BlockDevice]) -> Vec<String> {
    let mut found: Vec<String> = Vec::new();
    let mut add = |text: String| {
        if !found.contains(&text) {
            found.push(text);
        }
    };
    for d in devices {
        for m in d.all_mountpoints() {
            if m != "[SWAP]" {
                add(format!("{} on {m}", d.dev_path()));
            }
        }
        for m in &facts.mounts {
            let same_dev = m.dev.0 != 0 && d.dev_numbers() == Some(m.dev);
            if same_dev || m.source == d.dev_path() {
                add(format!("{} on {}", d.dev_path(), m.mount_point));
            }
        }
    }
    found
}

fn swaps(facts: &HostFacts, devices: &[&BlockDevice]) -> Vec<String> {
    let mut found = Vec::new();
    for d in devices {
        let in_proc = facts.swaps.iter().any(|s| s.filename == d.dev_path());
        if in_proc || d.all_mountpoints().contains(&"[SWAP]") {
            found.push(d.dev_path());
        }
    }
    found
}

/// sysfs holders of the disk and its partitions, and anything lsblk stacks on them.
fn holders(facts: &HostFacts, devices: &[&BlockDevice]) -> Result<Vec<String>> {
    let mut found = Vec::new();
    for d in devices {
        if d.kind != "part" && d.kind != "disk" && d.kind != "loop" {
            found.push(format!("{} ({})", d.dev_path(), d.kind));
            continue;
        }
        for h in facts.holders(&d.name)? {
            let text = format!("{h} on {}", d.dev_path());
            if !found.contains(&text) {
                found.push(text);
            }
        }
    }
    Ok(found)
}

#[cfg(test)]
#[path = "safety_tests.rs"]
mod tests;
