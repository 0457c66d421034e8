//! A power cut at EVERY write, fsync, rename, removal and boot-control step of an install (the
//! state store's writes and the boot entries' files included), and, with vfat's two-step
//! renames, of an install and of a commit.
//!
//! One counting run enumerates the operations; then for each N the install runs again on a
//! fresh device with the power cut at operation N, twice: once losing everything not yet made
//! durable (the `FaultIo` undo record: partition writes before their fsync, file data before
//! its fsync, renames and removals before the folder fsync) and once keeping it all. After each
//! cut the simulated loader boots, and the booted slot must verify against its record (and be
//! the old or the new image, nothing else); then the install runs again (if the new image is
//! not already running) and must complete, and the next boot runs the new version.

mod common;

use std::sync::Arc;

use aperture_appliance::Area;
use aperture_slots::{Slot, SlotStatus};
use aperture_updater::io::FaultIo;
use aperture_updater::{InstallOptions, UpdateError};
use common::*;

/// A fault seam for the cut at operation `at` (`None`: counting only).
fn fault(at: Option<usize>, vfat: bool) -> FaultIo {
    let io = at.map_or_else(FaultIo::counting, FaultIo::crash_at);
    if vfat {
        io.vfat_renames()
    } else {
        io
    }
}

/// The install of v2 over v1, cut at every operation, each cut losing and keeping what was not
/// synced; with `vfat`, every rename is two operations (new entry, then old entry removed).
fn cut_every_install_operation(vfat: bool) {
    let v1 = image("1.0.0", 1, 1);
    let v2 = image("2.0.0", 2, 2);

    let counting = fault(None, vfat);
    {
        let dev = Device::new(&v1);
        let mut u = dev.updater_with_io(Slot::A, Arc::new(counting.clone()));
        u.install(&mut &v2.bundle[..], &InstallOptions::default())
            .unwrap();
    }
    let n = counting.ops();
    eprintln!("crash points: {n}");
    for line in counting.log() {
        eprintln!("  {line}");
    }
    assert!(n > 20, "{n} operations seems too few: {:?}", counting.log());

    let mut new_running_after_cut = 0;
    for at in 1..=n {
        for lose_unsynced in [true, false] {
            let case = format!(
                "power cut at operation {at} (lose unsynced: {lose_unsynced}, vfat renames: \
                 {vfat})"
            );
            let dev = Device::new(&v1);
            let fault = fault(Some(at), vfat);
            let err = dev
                .updater_with_io(Slot::A, Arc::new(fault.clone()))
                .install(&mut &v2.bundle[..], &InstallOptions::default())
                .expect_err(&case);
            assert!(fault.crashed_at().is_some(), "{case}: {err}");
            fault.power_cut(&dev.disk(), lose_unsynced).unwrap();

            // Power on: whatever the loader picks must hold a verified image, v1 or v2.
            let booted = dev.boot();
            let rec = dev.assert_slot_verifies(booted);
            let running = match rec.version.to_string().as_str() {
                "1.0.0" => {
                    assert_eq!(rec.verity.root_hash, v1.verity.root_hash, "{case}");
                    &v1
                }
                "2.0.0" => {
                    assert_eq!(rec.verity.root_hash, v2.verity.root_hash, "{case}");
                    assert_eq!(booted, Slot::B, "{case}");
                    new_running_after_cut += 1;
                    &v2
                }
                other => panic!("{case}: booted slot {booted} holds {other}"),
            };
            dev.set_running(booted, running);

            // The install again: it restarts and completes (or there is nothing to do).
            let mut u = dev.updater(booted);
            match u.install(&mut &v2.bundle[..], &InstallOptions::default()) {
                Ok(done) => {
                    assert_eq!(done.target, Slot::B, "{case}");
                    assert_eq!(booted, Slot::A, "{case}");
                    assert_eq!(
                        dev.boot(),
                        Slot::B,
                        "{case}: the next boot runs the new version"
                    );
                    dev.set_running(Slot::B, &v2);
                }
                Err(UpdateError::AlreadyInstalled { .. }) => assert_eq!(booted, Slot::B, "{case}"),
                Err(e) => panic!("{case}: the second install failed: {e}"),
            }
            let rec = dev.assert_slot_verifies(Slot::B);
            assert_eq!(rec.version.to_string(), "2.0.0", "{case}");
            // The health gate commits it; a stale journal goes with the commit.
            let mut on_b = dev.updater(Slot::B);
            on_b.commit().unwrap();
            assert!(on_b.interrupted().unwrap().is_none(), "{case}");
            assert!(on_b.status().unwrap().rollback.is_none(), "{case}");
            assert_eq!(
                live_entries(&dev),
                ["slot-a.conf", "slot-b.conf"],
                "{case}: one entry per slot"
            );
        }
    }
    // Only cuts after the new slot was armed as the next boot may boot it.
    assert!(new_running_after_cut > 0 && new_running_after_cut < 2 * n);
}

/// The live boot entries (`*.conf`).
fn live_entries(dev: &Device) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dev.paths.esp.join("loader/entries"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".conf"))
        .collect();
    v.sort();
    v
}

#[test]
fn power_cut_at_every_operation_leaves_a_bootable_verified_slot() {
    cut_every_install_operation(false);
}

/// vfat renames long names in two steps; a cut between them leaves two entries of a slot (or
/// a temporary file beside its target). Every such cut of an install boots a verified slot and
/// the next install succeeds, leaving one entry per slot.
#[test]
fn vfat_two_step_renames_cut_at_every_operation_of_an_install() {
    cut_every_install_operation(true);
}

/// The commit (bless) after a good boot, cut at every operation with two-step renames: the
/// next boot still runs B (a cut bless reads as on trial, never as a failed slot made good),
/// and the commit run again by the next boot's health gate leaves B good with one entry.
#[test]
fn vfat_two_step_renames_cut_at_every_operation_of_a_commit() {
    let v1 = image("1.0.0", 1, 1);
    let v2 = image("2.0.0", 2, 2);
    let installed = || {
        let dev = Device::new(&v1);
        dev.updater(Slot::A)
            .install(&mut &v2.bundle[..], &InstallOptions::default())
            .unwrap();
        assert_eq!(dev.boot(), Slot::B);
        dev.set_running(Slot::B, &v2);
        dev
    };
    let counting = fault(None, true);
    installed()
        .updater_with_io(Slot::B, Arc::new(counting.clone()))
        .commit()
        .unwrap();
    let n = counting.ops();
    assert!(n >= 2, "{:?}", counting.log());
    for at in 1..=n {
        for lose_unsynced in [true, false] {
            let case = format!("commit cut at operation {at} (lose unsynced: {lose_unsynced})");
            let dev = installed();
            let fault = fault(Some(at), true);
            dev.updater_with_io(Slot::B, Arc::new(fault.clone()))
                .commit()
                .expect_err(&case);
            fault.power_cut(&dev.disk(), lose_unsynced).unwrap();
            let status = dev.updater(Slot::B).boot_state().unwrap().status(Slot::B);
            assert!(
                matches!(status, SlotStatus::Good | SlotStatus::Trying { .. }),
                "{case}: {status}"
            );
            assert_eq!(dev.boot(), Slot::B, "{case}");
            let c = dev.updater(Slot::B).commit().unwrap();
            assert_eq!(c.security_floor, 2, "{case}");
            assert_eq!(
                dev.updater(Slot::B).boot_state().unwrap().status(Slot::B),
                SlotStatus::Good,
                "{case}"
            );
            assert_eq!(live_entries(&dev), ["slot-a.conf", "slot-b.conf"], "{case}");
            assert_eq!(dev.boot(), Slot::B, "{case}");
        }
    }
}

#[test]
fn counting_io_sees_the_documented_order() {
    let v1 = image("1.0.0", 1, 1);
    let v2 = image("2.0.0", 2, 2);
    let dev = Device::new(&v1);
    let io = FaultIo::counting();
    dev.updater_with_io(Slot::A, Arc::new(io.clone()))
        .install(&mut &v2.bundle[..], &InstallOptions::default())
        .unwrap();
    let log = io.log();
    let pos = |needle: &str| {
        log.iter()
            .position(|l| l.contains(needle))
            .unwrap_or_else(|| panic!("no {needle:?} in {log:#?}"))
    };
    let at = |area: Area| [0, 1].map(|copy| format!("at {} of aperture_state", area.offset(copy)));
    let store_write = |area: Area, from: usize| {
        let [c0, c1] = at(area);
        log.iter()
            .skip(from)
            .position(|l| l.contains(&c0) || l.contains(&c1))
            .map(|p| p + from)
            .unwrap_or_else(|| panic!("no write of area {} in {log:#?}", area.name()))
    };
    let journal = store_write(Area::Update, 0);
    let invalidate = pos("mark slot b unbootable");
    let forget = store_write(Area::SlotB, 0);
    let first_write = pos("of rootfs_b");
    let sync = pos("fsync rootfs_b");
    let kernel = pos("uki.efi.tmp ->");
    let record = store_write(Area::SlotB, forget + 1);
    let arm = pos("arm slot b");
    let next = pos("boot slot b next");
    let clear_journal = store_write(Area::Update, journal + 1);
    let last = log.len() - 1;
    assert!(journal < invalidate && invalidate < forget, "{log:#?}");
    assert!(
        forget < first_write && first_write < sync && sync < kernel,
        "{log:#?}"
    );
    assert!(kernel < record && record < arm && arm < next, "{log:#?}");
    assert!(next < clear_journal, "{log:#?}");
    assert!(
        log[last].contains("fsync aperture_state") && last == clear_journal + 1,
        "the journal is cleared last: {log:#?}"
    );
    assert!(
        !log.iter().any(|l| l.contains("rootfs_a")),
        "the active slot is never written"
    );
}
