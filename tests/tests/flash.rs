//! Tier 2, flasher: the default image written to a real block device (a loop device on a
//! sparse file) through the same path `cargo xtask flash` takes (host facts from lsblk, the
//! safety checks, an `O_EXCL` open, the verified writer), then compared with disk.img; and
//! the checks refusing a loop device whose partition is really mounted.
//!
//! Loop devices are handles: `close()` detaches them and reports errors, and dropping one
//! (a failed assertion) detaches it on a best-effort basis, so a failing test leaks nothing.

use std::fs::{self, File};
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::process::Command;

use anyhow::{ensure, Context, Result};
use aperture_flash::bmap::Bmap;
use aperture_flash::host::{HostFacts, HostPaths};
use aperture_flash::safety::{check_disk, Policy, Removable};
use aperture_flash::{flash, BlockTarget, LoopDevice, NoProgress, Target, Unmapped, VerifiedImage};
use aperture_tests::{default_image, require_root, test_root};

const MIB: u64 = 1 << 20;

fn run(cmd: &mut Command) -> Result<String> {
    let out = cmd.output().with_context(|| format!("starting {cmd:?}"))?;
    ensure!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn scratch(name: &str) -> std::path::PathBuf {
    let dir = test_root().join("flash").join(name);
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).unwrap();
    dir
}

#[test]
#[ignore = "privileged tier: needs root, loop devices and the default image build (run by `cargo xtask test` as root)"]
fn default_image_to_a_loop_device_equals_disk_img() {
    if !require_root("default_image_to_a_loop_device_equals_disk_img") {
        return;
    }
    let report = default_image().unwrap();
    let out = report.paths.out;
    let now = aperture_trust::now_unix();
    let image = VerifiedImage::open(&out, None, now).unwrap();
    let size = image.image_size();

    // A "used" disk 16 MiB larger than the image, with an old partition table at both ends
    // and stale bytes where the image has holes.
    let dir = scratch("loop");
    let backing = dir.join("disk.img");
    let file = File::create(&backing).unwrap();
    file.set_len(size + 16 * MIB).unwrap();
    let stale = vec![0xA5u8; MIB as usize];
    for at in [0, 100 * MIB, size - MIB, size + 15 * MIB] {
        file.write_all_at(&stale, at).unwrap();
    }
    file.sync_all().unwrap();
    drop(file);

    // From the `.zst`, then over that from the raw image (the mapped ranges read from the
    // file); each flash first zeroes the image's span, so the second writes everything again.
    let raw = VerifiedImage::open_raw(&out, None, now).unwrap();
    let dev = LoopDevice::attach(&backing).unwrap();
    let result = flash_and_compare(&image, &out.join("disk.img"), dev.path())
        .context("from disk.img.zst")
        .and_then(|()| {
            flash_and_compare(&raw, &out.join("disk.img"), dev.path()).context("from disk.img")
        });
    dev.close().unwrap();
    result.unwrap();
}

fn flash_and_compare(image: &VerifiedImage, disk_img: &Path, dev: &Path) -> Result<()> {
    let size = image.image_size();
    let facts = HostFacts::gather(&HostPaths::default())?;
    let policy = Policy {
        image_size: size,
        force: false,
    };
    let checked = check_disk(&facts, dev, policy)?;
    ensure!(checked.removable == Removable::Loop, "{checked:?}");

    let target = BlockTarget::open(dev)?;
    ensure!(target.size() == size + 16 * MIB, "size {}", target.size());
    let second = BlockTarget::open(dev)
        .err()
        .context("a second O_EXCL open succeeded")?;
    ensure!(second.is_refusal(), "{second}");
    let report = flash(image, &target, &NoProgress)?;
    drop(target);
    eprintln!(
        "TIMING flash to {}: {:.2}s for {} MiB written and read back, unmapped {:?}",
        dev.display(),
        report.elapsed.as_secs_f64(),
        report.bytes_written / MIB,
        report.unmapped
    );

    // Every mapped range equals the image (the bmap's checksums, read with a fresh open).
    let bmap = Bmap::parse(&fs::read_to_string(disk_img.with_extension("img.bmap"))?)?;
    let mut device = File::open(dev)?;
    ensure!(
        bmap.verify_ranges(&mut device)?.is_empty(),
        "mapped ranges differ"
    );
    let gpt = aperture_gpt::read_gpt(&mut device, size)?;
    for name in ["esp", "rootfs_a", "rootfs_b"] {
        ensure!(
            gpt.find(name).is_some(),
            "no {name} partition on {}",
            dev.display()
        );
    }
    // A loop device zeroes cheaply, so the image span equals disk.img byte for byte.
    ensure!(report.unmapped == Unmapped::Zeroed, "{:?}", report.unmapped);
    run(Command::new("cmp")
        .arg("-n")
        .arg(size.to_string())
        .arg(dev)
        .arg(disk_img))?;
    // The old backup GPT at the end of the device is gone; the bytes before it are untouched.
    let mut tail = vec![0u8; MIB as usize];
    device.read_exact_at(&mut tail, size + 15 * MIB)?;
    let wiped = tail.len() - 33 * 512;
    ensure!(
        tail[wiped..].iter().all(|&b| b == 0),
        "old backup GPT survived"
    );
    ensure!(
        tail[..wiped].iter().all(|&b| b == 0xA5),
        "bytes past the image changed"
    );
    Ok(())
}

#[test]
#[ignore = "privileged tier: needs root, loop devices, sgdisk, partx and mkfs.ext4 (run by `cargo xtask test` as root)"]
fn mounted_loop_device_is_refused() {
    if !require_root("mounted_loop_device_is_refused") {
        return;
    }
    let dir = scratch("mounted");
    let backing = dir.join("disk.img");
    File::create(&backing).unwrap().set_len(64 * MIB).unwrap();
    run(Command::new("sgdisk")
        .args(["-n1:2048:+20M", "-c1:data"])
        .arg(&backing))
    .unwrap();
    let dev = LoopDevice::attach(&backing).unwrap();
    let result = mounted_is_refused(dev.path(), &dir.join("mnt"));
    // Tear down what the test made, in order, whatever happened.
    let _ = Command::new("umount").arg(dir.join("mnt")).status();
    let _ = Command::new("partx").arg("-d").arg(dev.path()).status();
    dev.close().unwrap();
    result.unwrap();
}

fn mounted_is_refused(dev: &Path, mnt: &Path) -> Result<()> {
    run(Command::new("partx").arg("-a").arg(dev))?;
    let part = format!("{}p1", dev.display());
    run(Command::new("mkfs.ext4").arg("-q").arg(&part))?;
    fs::create_dir_all(mnt)?;
    run(Command::new("mount").arg(&part).arg(mnt))?;
    let facts = HostFacts::gather(&HostPaths::default())?;
    let policy = Policy {
        image_size: 32 * MIB,
        force: true,
    };
    let err = check_disk(&facts, dev, policy)
        .err()
        .context("a disk with a mounted partition passed the checks")?;
    let text = err.to_string();
    let expected = format!(
        "refusing to flash {}: it is mounted: {part} on {}",
        dev.display(),
        mnt.display()
    );
    ensure!(text.starts_with(&expected), "{text}");
    Ok(())
}
