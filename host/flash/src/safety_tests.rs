//! The safety checks against recorded hosts (`fixtures/host/*`, `fixtures/sysfs/workstation`):
//! every refusal names the device and the reason; the right disks pass.

use std::fs;
use std::path::{Path, PathBuf};

use super::*;
use crate::host::{HostFacts, HostPaths};
use crate::lsblk::Lsblk;

const GIB: u64 = 1 << 30;

fn facts(host: &str) -> HostFacts {
    let dir = Path::new("fixtures/host").join(host);
    let paths = HostPaths {
        mountinfo: dir.join("mountinfo"),
        swaps: dir.join("swaps"),
        sysfs: PathBuf::from("fixtures/sysfs/workstation"),
    };
    let lsblk = Lsblk::parse(&fs::read_to_string(dir.join("lsblk.json")).unwrap()).unwrap();
    HostFacts::from_lsblk(lsblk, &paths).unwrap()
}

fn policy() -> Policy {
    Policy {
        image_size: 3 * GIB,
        force: false,
    }
}

fn refusal(facts: &HostFacts, device: &str, policy: Policy) -> String {
    let err = check_disk(facts, Path::new(device), policy).unwrap_err();
    assert!(err.is_refusal(), "{err}");
    let text = err.to_string();
    assert!(
        text.starts_with(&format!("refusing to flash {device}: ")),
        "{text}"
    );
    text
}

#[test]
fn jetson_disk_and_loop_device_pass() {
    let f = facts("workstation");
    let sdb = check_disk(&f, Path::new("/dev/sdb"), policy()).unwrap();
    assert_eq!(sdb.name, "sdb");
    assert_eq!(sdb.size, 125_045_424 * 512);
    assert_eq!(sdb.removable, Removable::Hotplug);
    assert_eq!(sdb.description, "File-Stor Gadget (usb, 64.0 GB)");
    let loop0 = check_disk(&f, Path::new("/dev/loop0"), policy()).unwrap();
    assert_eq!(loop0.removable, Removable::Loop);
}

#[test]
fn system_disk_is_refused_even_with_force() {
    let f = facts("workstation");
    let forced = Policy {
        force: true,
        ..policy()
    };
    let text = refusal(&f, "/dev/nvme0n1", forced);
    assert!(text.contains("running system's root"), "{text}");
    assert!(text.contains("/dev/mapper/luks-3f2a"), "{text}");

    let f = facts("loop-partition-mounted-and-swap");
    let text = refusal(&f, "/dev/vda", forced);
    assert!(
        text.contains("root file system (/dev/vda is mounted on /)"),
        "{text}"
    );
}

#[test]
fn root_found_by_device_number_alone() {
    // lsblk ran before the mount table changed: only mountinfo knows where / is.
    let mut f = facts("workstation");
    for d in f.lsblk.blockdevices.iter_mut() {
        for p in d.children.iter_mut() {
            for c in p.children.iter_mut() {
                c.mountpoints.clear();
            }
        }
    }
    f.mounts[0].source = "/dev/root".into();
    let text = refusal(&f, "/dev/nvme0n1", policy());
    assert!(text.contains("(253:0) is mounted on /"), "{text}");
}

#[test]
fn mounted_partition_is_refused() {
    let f = facts("workstation");
    let text = refusal(&f, "/dev/sda", policy());
    assert!(
        text.contains("it is mounted: /dev/sda1 on /media/dev/STICK; unmount it first"),
        "{text}"
    );

    let f = facts("loop-partition-mounted-and-swap");
    let text = refusal(&f, "/dev/loop0", policy());
    assert!(text.contains("/dev/loop0p1 on /tmp/flashrec/mnt"), "{text}");
}

#[test]
fn mount_known_only_to_mountinfo_is_refused() {
    let mut f = facts("workstation");
    f.mounts.push(crate::host::MountEntry {
        dev: (8, 16),
        mount_point: "/mnt/jetson".into(),
        fs_type: "ext4".into(),
        source: "/dev/disk/by-label/APP".into(),
    });
    let text = refusal(&f, "/dev/sdb", policy());
    assert!(text.contains("/dev/sdb on /mnt/jetson"), "{text}");
}

#[test]
fn swap_is_refused() {
    let f = facts("workstation");
    let forced = Policy {
        force: true,
        ..policy()
    };
    let text = refusal(&f, "/dev/sdf", forced);
    assert!(text.contains("active swap (/dev/sdf1)"), "{text}");

    // /proc/swaps alone is enough.
    let mut f = facts("workstation");
    f.lsblk.blockdevices[6].children[0].mountpoints.clear();
    let text = refusal(&f, "/dev/sdf", forced);
    assert!(text.contains("swapoff"), "{text}");
}

#[test]
fn holders_are_refused() {
    let f = facts("workstation");
    let text = refusal(&f, "/dev/sdg", policy());
    assert!(text.contains("/dev/mapper/vg0-data (lvm)"), "{text}");
    assert!(text.contains("dm-1 on /dev/sdg1"), "{text}");

    // sysfs alone is enough when lsblk shows nothing stacked.
    let mut f = facts("workstation");
    f.lsblk.blockdevices[7].children[0].children.clear();
    let text = refusal(&f, "/dev/sdg", policy());
    assert!(
        text.contains("devices are built on it (dm-1 on /dev/sdg1)"),
        "{text}"
    );
}

#[test]
fn internal_disk_needs_force() {
    let f = facts("workstation");
    let text = refusal(&f, "/dev/sde", policy());
    assert!(text.contains("not removable"), "{text}");
    assert!(text.contains("TRAN=sata"), "{text}");
    assert!(text.contains("--force"), "{text}");
    let forced = Policy {
        force: true,
        ..policy()
    };
    let sde = check_disk(&f, Path::new("/dev/sde"), forced).unwrap();
    assert_eq!(sde.removable, Removable::Forced);
}

#[test]
fn too_small_is_refused() {
    let f = facts("workstation");
    let text = refusal(&f, "/dev/sdh", policy());
    assert!(text.contains("too small"), "{text}");
    assert!(text.contains("1024966656 bytes (0.95 GiB)"), "{text}");
    assert!(text.contains("3221225472 bytes (3.00 GiB)"), "{text}");
}

#[test]
fn partitions_and_unknown_devices_are_refused() {
    let f = facts("workstation");
    let text = refusal(&f, "/dev/sda1", policy());
    assert!(
        text.contains("partition") && text.contains("use /dev/sda"),
        "{text}"
    );
    let text = refusal(&f, "/dev/mapper/luks-3f2a", policy());
    assert!(text.contains("crypt device, not a disk"), "{text}");
    let text = refusal(&f, "/dev/sdz", policy());
    assert!(text.contains("lsblk does not list it"), "{text}");
}
