//! The slots lock (`/run/aperture/slots.lock`): install and rollback fail at once naming the
//! program that holds it, and write nothing; a commit (the health gate's) waits for it; the
//! binary's verbs take it too.

mod common;

use std::time::{Duration, Instant};

use aperture_appliance::SlotsLock;
use aperture_slots::Slot;
use aperture_updater::{InstallOptions, UpdateError};
use common::*;

fn hold(dev: &Device, holder: &str) -> SlotsLock {
    SlotsLock::acquire(&dev.paths.slots_lock, holder, Duration::ZERO).unwrap()
}

#[test]
fn install_fails_at_once_naming_the_holder_and_writes_nothing() {
    let v1 = image("1.0.0", 1, 1);
    let v2 = image("2.0.0", 2, 2);
    let dev = Device::new(&v1);
    let before = dev.snapshot();
    let held = hold(&dev, "aperture-reset level 2");
    let t = Instant::now();
    let err = dev
        .updater(Slot::A)
        .install(&mut &v2.bundle[..], &InstallOptions::default())
        .unwrap_err();
    assert!(t.elapsed() < Duration::from_secs(1), "no waiting");
    assert!(matches!(err, UpdateError::Lock(_)), "{err}");
    let text = err.to_string();
    assert!(
        text.contains("aperture-reset level 2 (pid") && text.contains("slots.lock"),
        "{text}"
    );
    assert_eq!(dev.snapshot(), before);
    let err = dev.updater(Slot::A).rollback().unwrap_err();
    assert!(matches!(err, UpdateError::Lock(_)), "{err}");
    drop(held);
    dev.updater(Slot::A)
        .install(&mut &v2.bundle[..], &InstallOptions::default())
        .unwrap();
}

#[test]
fn commit_waits_for_the_lock() {
    let v1 = image("1.0.0", 1, 1);
    let dev = Device::new(&v1);
    let held = hold(&dev, "aperture-update install");
    let release = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(700));
        drop(held);
    });
    let t = Instant::now();
    let c = dev.updater(Slot::A).commit().unwrap();
    assert!(
        t.elapsed() >= Duration::from_millis(600),
        "{:?}",
        t.elapsed()
    );
    assert_eq!(c.security_floor, 1);
    release.join().unwrap();
}

#[test]
fn the_binary_takes_the_lock_for_install_and_commit() {
    let v1 = image("1.0.0", 1, 1);
    let v2 = image("2.0.0", 2, 2);
    let dev = Device::new(&v1);
    let bundle = dev.dir.path().join("v2.bundle");
    std::fs::write(&bundle, &v2.bundle).unwrap();
    let run = |args: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_aperture-update"))
            .arg("--root")
            .arg(dev.dir.path())
            .arg("--disk-image")
            .arg(&dev.disk_path)
            .args(args)
            .output()
            .unwrap()
    };
    let held = hold(&dev, "aperture-reset level 3");
    let out = run(&["install", bundle.to_str().unwrap()]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("aperture-reset level 3 (pid"), "{stderr}");
    drop(held);
    // `commit` (also spelt `mark-good`) takes it too: it waits, then runs.
    let held = hold(&dev, "someone");
    let release = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(300));
        drop(held);
    });
    let out = run(&["commit"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    release.join().unwrap();
    let out = run(&["mark-good"]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("was already good"));
}
