//! Recovery without people: whatever one power cut can leave, the next run recovers by itself,
//! and no message asks anyone to remove or restore a file. `resume --restart --if-interrupted`
//! (run at every boot) is quiet when nothing was interrupted and reinstalls otherwise; a lost
//! update record is reported loudly and replaced.

mod common;

use std::process::Output;

use aperture_appliance::store::HEADER_BYTES;
use aperture_appliance::Area;
use aperture_slots::Slot;
use aperture_updater::InstallOptions;
use common::*;

fn run(dev: &Device, args: &[&str]) -> Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_aperture-update"))
        .arg("--root")
        .arg(dev.dir.path())
        .arg("--disk-image")
        .arg(&dev.disk_path)
        .args(args)
        .env("RUST_LOG", "info")
        .output()
        .unwrap()
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Keys the binary (real clock) accepts.
fn long_lived(version: &str, sv: u64, seed: u64) -> Image {
    image_with(
        version,
        sv,
        seed,
        &keys_with(snakeoil(1), 4_000_000_000),
        |_| {},
    )
}

#[test]
fn resume_if_interrupted_is_quiet_without_a_journal_and_restarts_one() {
    let v1 = long_lived("1.0.0", 1, 1);
    let v2 = long_lived("2.0.0", 2, 2);
    let dev = Device::new(&v1);
    let resume = ["resume", "--restart", "--if-interrupted"];
    let out = run(&dev, &resume);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(
        (text(&out.stdout), text(&out.stderr)),
        (String::new(), String::new()),
        "quiet when nothing was interrupted"
    );

    // An install of v2 from a file, cut off in the middle of the rootfs.
    let file = dev.dir.path().join("v2.bundle");
    std::fs::write(&file, &v2.bundle).unwrap();
    let mut cut = &v2.bundle[..data_offset(&v2.bundle, "rootfs.img.zst") + 5000];
    let opts = InstallOptions {
        source: Some(file.display().to_string()),
        ..InstallOptions::update(2)
    };
    dev.updater(Slot::A)
        .with_clock(aperture_trust::now_unix)
        .install(&mut cut, &opts)
        .unwrap_err();
    assert!(dev.state().unwrap().journal.is_some());

    // The next boot runs A; the unit restarts the install by itself.
    assert_eq!(dev.boot(), Slot::A);
    let out = run(&dev, &resume);
    let stderr = text(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("an install was interrupted"), "{stderr}");
    assert!(text(&out.stdout).contains("installed 2.0.0 into slot b"));
    assert!(dev.state().unwrap().journal.is_none());
    assert_eq!(dev.boot(), Slot::B);
    dev.assert_slot_verifies(Slot::B);
    let entry = dev.paths.esp.join("loader/entries/slot-b+1-1.conf");
    assert!(entry.exists(), "armed with the journal's 2 tries");
    // Nothing left to resume.
    let out = run(&dev, &resume);
    assert!(out.status.success() && out.stdout.is_empty() && out.stderr.is_empty());
}

#[test]
fn a_lost_update_record_is_reported_loudly_and_replaced() {
    let v1 = long_lived("1.0.0", 1, 1);
    let v2 = long_lived("2.0.0", 2, 2);
    let dev = Device::new(&v1);
    let out = run(&dev, &["commit"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(dev.state().unwrap().security_floor, 1);
    // Both copies of the update record overwritten (tampering: a power cut keeps one).
    let mut part = aperture_updater::disk::Disk::open(&dev.disk(), "aperture_state").unwrap();
    for copy in [0, 1] {
        part.write_all_at(&[0xA5; HEADER_BYTES + 64], Area::Update.offset(copy))
            .unwrap();
    }
    part.sync().unwrap();
    drop(part);
    let out = run(&dev, &["status"]);
    let stderr = text(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("ANTI-ROLLBACK RECORD IS GONE"), "{stderr}");
    assert!(!stderr.to_lowercase().contains("remove"), "{stderr}");
    assert!(text(&out.stdout).contains("anti-rollback floor: 0"));
    // Installing and committing work, and write a new record.
    let file = dev.dir.path().join("v2.bundle");
    std::fs::write(&file, &v2.bundle).unwrap();
    let out = run(&dev, &["install", file.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(dev.boot(), Slot::B);
    dev.set_running(Slot::B, &v2);
    let out = run(&dev, &["commit"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(dev.state().unwrap().security_floor, 2);
    let out = run(&dev, &["status"]);
    assert!(!text(&out.stderr).contains("GONE"), "{}", text(&out.stderr));
}
