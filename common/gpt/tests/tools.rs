//! Cross-checks against the partitioning tools every field engineer trusts: `sgdisk -v` finds
//! no problem in what we write, `sfdisk -J` reads the same names, GUIDs and offsets we wrote,
//! and we read what `sgdisk` writes. A missing tool skips a test,
//! or fails it under `cargo xtask test` (`aperture_sys::tool`).

use std::fs::OpenOptions;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use aperture_gpt::{attr, read_gpt, write_gpt, Gpt, Guid, Layout, PartitionSpec};
use serde_json::Value;

const MIB: u64 = 1 << 20;
const DISK: u64 = 64 * MIB;

/// The tool's path, looked up in PATH and the sbin folders (not always in a user's PATH).
fn tool(name: &str, package: &str, test: &str) -> Option<PathBuf> {
    aperture_sys::tool::for_test(name, package, test)
}

/// Runs a tool with stdin null; panics with the command line and stderr if it fails.
fn run(tool: &Path, args: &[&str]) -> String {
    let output = Command::new(tool)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{} {}: {}\n{}{}",
        tool.display(),
        args.join(" "),
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap()
}

fn layout() -> Layout {
    let ns = "test:tools";
    let part = |name: &str, type_guid, size| {
        PartitionSpec::new(name, type_guid, Guid::derive(ns, name), size)
    };
    let mut esp = part("esp", Guid::EFI_SYSTEM, 8 * MIB);
    esp.attributes = attr::REQUIRED | attr::LEGACY_BIOS_BOOTABLE;
    let mut rootfs_b = part("rootfs_b", Guid::LINUX_ROOT_ARM64, 12 * MIB);
    rootfs_b.attributes = attr::READ_ONLY;
    Layout::new(
        Guid::derive(ns, "disk"),
        vec![
            esp,
            part("rootfs_a", Guid::LINUX_ROOT_X86_64, 12 * MIB),
            rootfs_b,
            part("UDA", Guid::MICROSOFT_BASIC_DATA, 3 * MIB),
            part("config", Guid::LINUX_LUKS, MIB),
            part("data", Guid::LINUX_FILESYSTEM, 0),
        ],
    )
}

fn written_image(dir: &Path) -> (PathBuf, Gpt) {
    let path = dir.join("disk.img");
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(&path)
        .unwrap();
    file.set_len(DISK).unwrap();
    write_gpt(&mut file, DISK, &layout()).unwrap();
    let gpt = read_gpt(&mut file, DISK).unwrap();
    (path, gpt)
}

#[test]
fn sgdisk_verifies_what_we_write() {
    let Some(sgdisk) = tool("sgdisk", "gdisk", "sgdisk_verifies_what_we_write") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let (path, _) = written_image(dir.path());
    let report = run(&sgdisk, &["-v", path.to_str().unwrap()]);
    assert!(report.contains("No problems found"), "{report}");
    // Aligned starts and, since every size is whole MiB and the fill is aligned, ends.
    assert!(
        !report.contains("Caution") && !report.contains("Warning"),
        "{report}"
    );
}

#[test]
fn sfdisk_reads_what_we_write() {
    let Some(sfdisk) = tool("sfdisk", "fdisk", "sfdisk_reads_what_we_write") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let (path, ours) = written_image(dir.path());
    let json: Value = serde_json::from_str(&run(&sfdisk, &["-J", path.to_str().unwrap()])).unwrap();
    let table = &json["partitiontable"];
    assert_eq!(table["label"], "gpt");
    assert_eq!(guid(&table["id"]), ours.disk_guid);
    assert_eq!(table["sectorsize"], 512);
    assert_eq!(table["firstlba"], ours.first_usable_lba);
    assert_eq!(table["lastlba"], ours.last_usable_lba);
    let theirs = table["partitions"].as_array().unwrap();
    assert_eq!(theirs.len(), ours.partitions.len());
    for (t, o) in theirs.iter().zip(&ours.partitions) {
        assert_eq!(
            t["node"].as_str().unwrap(),
            format!("{}{}", path.display(), o.index)
        );
        assert_eq!(t["name"], o.name.as_str());
        assert_eq!(guid(&t["type"]), o.type_guid);
        assert_eq!(guid(&t["uuid"]), o.unique_guid);
        assert_eq!(t["start"].as_u64().unwrap() * 512, o.offset());
        assert_eq!(t["size"].as_u64().unwrap() * 512, o.size());
    }
    // util-linux names bits 0-2 and prints the rest as GUID:<bit>.
    assert_eq!(theirs[0]["attrs"], "RequiredPartition LegacyBIOSBootable");
    assert_eq!(theirs[2]["attrs"], "GUID:60");
    assert!(theirs[1].get("attrs").is_none());
}

#[test]
fn we_read_what_sgdisk_writes() {
    let test = "we_read_what_sgdisk_writes";
    let (Some(sgdisk), Some(sfdisk)) =
        (tool("sgdisk", "gdisk", test), tool("sfdisk", "fdisk", test))
    else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("foreign.img");
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(&path)
        .unwrap();
    file.set_len(DISK).unwrap();
    drop(file);
    let image = path.to_str().unwrap();
    // Unaligned, out of order and with a gap, unlike anything we write.
    run(
        &sgdisk,
        &[
            "-a",
            "1",
            "-U",
            "11111111-2222-4333-8444-555555555555",
            "-n",
            "3:40:2047",
            "-t",
            "3:EF02",
            "-c",
            "3:bios boot",
            "-n",
            "1:4100:+5M",
            "-t",
            "1:8300",
            "-c",
            "1:APP",
            "-u",
            "1:AAAAAAAA-BBBB-4CCC-8DDD-EEEEEEEEEEEE",
            "-A",
            "1:set:2",
            "-n",
            "2:20480:0",
            "-t",
            "2:0700",
            "-c",
            "2:UDA \u{e9}t\u{e9}",
            image,
        ],
    );
    let mut file = OpenOptions::new().read(true).open(&path).unwrap();
    let gpt = read_gpt(&mut file, DISK).unwrap();
    assert_eq!(
        gpt.disk_guid,
        "11111111-2222-4333-8444-555555555555".parse().unwrap()
    );
    let app = gpt.find("APP").unwrap();
    assert_eq!(app.index, 1);
    assert_eq!((app.first_lba, app.size()), (4100, 5 * MIB));
    assert_eq!(app.type_guid, Guid::LINUX_FILESYSTEM);
    assert_eq!(app.attributes, attr::LEGACY_BIOS_BOOTABLE);
    assert_eq!(
        app.unique_guid.to_string(),
        "aaaaaaaa-bbbb-4ccc-8ddd-eeeeeeeeeeee"
    );
    assert_eq!(
        gpt.find("UDA \u{e9}t\u{e9}").unwrap().type_guid,
        Guid::MICROSOFT_BASIC_DATA
    );
    assert_eq!(gpt.find("bios boot").unwrap().index, 3);

    // And every field agrees with util-linux's reading of the same disk.
    let json: Value = serde_json::from_str(&run(&sfdisk, &["-J", image])).unwrap();
    for t in json["partitiontable"]["partitions"].as_array().unwrap() {
        let name = t["name"].as_str().unwrap();
        let ours = gpt.find(name).unwrap();
        assert_eq!(t["start"].as_u64().unwrap(), ours.first_lba, "{name}");
        assert_eq!(t["size"].as_u64().unwrap() * 512, ours.size(), "{name}");
        assert_eq!(guid(&t["uuid"]), ours.unique_guid, "{name}");
        assert_eq!(guid(&t["type"]), ours.type_guid, "{name}");
    }
}

fn guid(value: &Value) -> Guid {
    value.as_str().unwrap().parse().unwrap()
}
