//! The installer as aperture-reset calls it: the reset's policy (an older factory image the
//! update policy refuses; the floor enforced for level 2, waived after a level 3 wipe; keys
//! checked at the build time, not the clock), a slot armed as the next boot or only recorded,
//! under a slots lock the caller holds; the checks before anything is written on their own
//! (`preflight`); and re-verifying an installed slot block for block (`verify_slot`).

mod common;

use std::time::Duration;

use aperture_appliance::{Area, SlotsLock};
use aperture_slots::{BootControl, Slot, SlotStatus};
use aperture_trust::TrustError;
use aperture_updater::state::DeviceState;
use aperture_updater::{Arm, InstallOptions, Policy, ResetFloor, UpdateError};
use common::*;

fn reset(floor: ResetFloor, arm: Arm) -> InstallOptions {
    InstallOptions {
        policy: Policy::Reset { floor },
        arm,
        ..InstallOptions::default()
    }
}

const ARMED: Arm = Arm::Next { tries: 3 };

/// A device running 2.0.0 (security version 2) from slot A, both slots flashed with it.
fn running_v2() -> (Device, Image) {
    let v2 = image("2.0.0", 2, 2);
    let dev = Device::new(&v2);
    (dev, v2)
}

fn set_floor(dev: &Device, floor: u64) {
    let state = DeviceState {
        security_floor: floor,
        ..DeviceState::default()
    };
    dev.store().write_json(Area::Update, &state).unwrap();
}

#[test]
fn a_reset_installs_an_older_factory_image_that_an_update_refuses() {
    let (dev, _) = running_v2();
    let factory = image("1.0.0", 2, 1);
    let before = dev.snapshot();
    let err = dev
        .updater(Slot::A)
        .install(&mut &factory.bundle[..], &InstallOptions::default())
        .unwrap_err();
    assert!(
        matches!(err, UpdateError::Trust(TrustError::Downgrade { .. })),
        "{err}"
    );
    assert_eq!(dev.snapshot(), before, "a refusal writes nothing");

    let done = dev
        .updater(Slot::A)
        .install(
            &mut &factory.bundle[..],
            &reset(ResetFloor::Enforced, ARMED),
        )
        .unwrap();
    assert!(done.armed && done.target == Slot::B && done.version == "1.0.0");
    let state = dev.backend().read().unwrap();
    assert_eq!(state.next, Slot::B);
    assert!(matches!(state.status(Slot::B), SlotStatus::Trying { .. }));
    let (installed, manifest) = dev.updater(Slot::A).verify_slot(Slot::B).unwrap();
    assert_eq!(manifest.version.to_string(), "1.0.0");
    assert_eq!(
        installed,
        factory.installed(),
        "the record holds the exact signed bytes"
    );
    assert_eq!(dev.state().unwrap().journal, None);
}

#[test]
fn record_only_leaves_the_slot_unbootable_with_its_record() {
    let (dev, _) = running_v2();
    let factory = image("1.0.0", 2, 1);
    let done = dev
        .updater(Slot::A)
        .install(
            &mut &factory.bundle[..],
            &reset(ResetFloor::Enforced, Arm::RecordOnly),
        )
        .unwrap();
    assert!(!done.armed);
    let state = dev.backend().read().unwrap();
    assert_eq!(state.status(Slot::B), SlotStatus::Unbootable);
    assert_eq!(state.next, Slot::A);
    assert_eq!(dev.boot(), Slot::A, "a recorded slot never boots");
    // What is recorded verifies block for block: it may be blessed without booting it.
    dev.updater(Slot::A).verify_slot(Slot::B).unwrap();
    assert_eq!(dev.record(Slot::B).unwrap().version.to_string(), "1.0.0");
    assert_eq!(dev.state().unwrap().journal, None);
}

#[test]
fn a_reset_enforces_the_floor_unless_it_is_waived_after_the_wipe() {
    let (dev, _) = running_v2();
    set_floor(&dev, 3);
    let factory = image("1.0.0", 1, 1);
    let before = dev.snapshot();
    let err = dev
        .updater(Slot::A)
        .install(
            &mut &factory.bundle[..],
            &reset(ResetFloor::Enforced, ARMED),
        )
        .unwrap_err();
    assert!(
        matches!(
            err,
            UpdateError::Trust(TrustError::SecurityVersionTooLow {
                floor: 3,
                offered: 1
            })
        ),
        "{err}"
    );
    assert!(err.is_refusal());
    assert_eq!(dev.snapshot(), before);
    assert_eq!(dev.updater(Slot::A).security_floor().unwrap(), 3);
    dev.updater(Slot::A)
        .install(
            &mut &factory.bundle[..],
            &reset(ResetFloor::WaivedAfterWipe, ARMED),
        )
        .unwrap();
    assert_eq!(dev.record(Slot::B).unwrap().security_version, 1);
}

#[test]
fn a_reset_checks_keys_at_the_build_time_and_an_update_against_the_clock() {
    let (dev, _) = running_v2();
    // The release key expires at NOW + 1000; a year later an update signed with it is refused
    // but the factory image signed with it (while it was valid) still installs.
    let year_later = NOW + 365 * 86_400;
    let v3 = image("3.0.0", 2, 3);
    let err = dev
        .updater(Slot::A)
        .with_clock(move || year_later)
        .install(&mut &v3.bundle[..], &InstallOptions::default())
        .unwrap_err();
    assert!(
        matches!(err, UpdateError::Trust(TrustError::KeyExpired { .. })),
        "{err}"
    );
    let factory = image("1.0.0", 2, 1);
    dev.updater(Slot::A)
        .with_clock(move || year_later)
        .install(
            &mut &factory.bundle[..],
            &reset(ResetFloor::Enforced, ARMED),
        )
        .unwrap();
    // The record re-verifies a year later too.
    dev.updater(Slot::A)
        .with_clock(move || year_later)
        .verify_slot(Slot::B)
        .unwrap();
}

#[test]
fn install_locked_runs_under_the_callers_lock_which_blocks_everyone_else() {
    let (dev, _) = running_v2();
    let factory = image("1.0.0", 2, 1);
    let lock = SlotsLock::acquire(&dev.paths.slots_lock, "aperture-reset", Duration::ZERO).unwrap();
    let err = dev
        .updater(Slot::A)
        .install(
            &mut &factory.bundle[..],
            &reset(ResetFloor::Enforced, ARMED),
        )
        .unwrap_err();
    assert!(
        matches!(err, UpdateError::Lock(_))
            && aperture_updater::error_chain(&err).contains("aperture-reset"),
        "{err}"
    );
    dev.updater(Slot::A)
        .install_locked(
            &mut &factory.bundle[..],
            &reset(ResetFloor::Enforced, ARMED),
            &lock,
        )
        .unwrap();
    assert_eq!(dev.record(Slot::B).unwrap().version.to_string(), "1.0.0");
}

#[test]
fn preflight_refuses_what_the_install_would_refuse_and_writes_nothing() {
    let (dev, _) = running_v2();
    let verified = |img: &Image| {
        aperture_trust::signing::verify_written(
            &img.manifest_json,
            &img.sig_json,
            &keys().root.public(),
        )
        .unwrap()
    };
    let before = dev.snapshot();
    let u = dev.updater(Slot::A);
    let policy = Policy::Reset {
        floor: ResetFloor::Enforced,
    };
    u.preflight(&verified(&image("1.0.0", 2, 1)), &policy, &ARMED)
        .unwrap();
    let jetson = image_for(
        "jetson-orin-agx",
        "1.0.0",
        2,
        1,
        &keys(),
        DATA_SIZE,
        &[],
        |_| {},
    );
    let err = u
        .preflight(&verified(&jetson), &policy, &ARMED)
        .unwrap_err();
    assert!(
        matches!(err, UpdateError::Trust(TrustError::WrongBoard { .. })),
        "{err}"
    );
    let other = image_with("1.0.0", 2, 1, &keys(), |m| m.product = "other".into());
    let err = u.preflight(&verified(&other), &policy, &ARMED).unwrap_err();
    assert!(
        aperture_updater::error_chain(&err).contains("product"),
        "{err}"
    );
    let big = image_sized(
        "1.0.0",
        2,
        1,
        &keys(),
        (SLOT_SIZE + (1 << 20)) as usize,
        |_| {},
    );
    let err = u.preflight(&verified(&big), &policy, &ARMED).unwrap_err();
    assert!(matches!(err, UpdateError::TooLarge { .. }), "{err}");
    let err = u
        .preflight(
            &verified(&image("1.0.0", 2, 1)),
            &policy,
            &Arm::Next { tries: 0 },
        )
        .unwrap_err();
    assert!(
        aperture_updater::error_chain(&err).contains("tries"),
        "{err}"
    );
    assert_eq!(dev.snapshot(), before, "preflight writes nothing");
}

#[test]
fn verify_slot_reads_every_block_back_against_the_record() {
    let (dev, v2) = running_v2();
    let u = dev.updater(Slot::A);
    u.verify_slot(Slot::B).unwrap();
    // One flipped bit deep in slot B's rootfs.
    let disk = dev.disk();
    let mut part = aperture_updater::disk::Disk::open(&disk, "rootfs_b").unwrap();
    let mut byte = [0u8; 1];
    part.read_exact_at(&mut byte, 1 << 20).unwrap();
    part.write_all_at(&[byte[0] ^ 4], 1 << 20).unwrap();
    let err = u.verify_slot(Slot::B).unwrap_err();
    assert!(
        matches!(err, UpdateError::Verify { slot: Slot::B, .. })
            && aperture_updater::error_chain(&err).contains("rootfs_b"),
        "{err}"
    );
    part.write_all_at(&byte, 1 << 20).unwrap();
    u.verify_slot(Slot::B).unwrap();
    // A UKI on the ESP that is not the recorded one.
    let uki = dev.paths.files().uki(Slot::B);
    std::fs::write(&uki, b"another kernel").unwrap();
    let err = u.verify_slot(Slot::B).unwrap_err();
    assert!(
        aperture_updater::error_chain(&err).contains("uki.efi"),
        "{err}"
    );
    // Slot A's own UKI in slot B's place: the right size and signed, but its hash (and
    // command line) are not slot B's.
    std::fs::write(&uki, &v2.uki[0]).unwrap();
    let err = u.verify_slot(Slot::B).unwrap_err();
    assert!(
        aperture_updater::error_chain(&err).contains("uki.efi"),
        "{err}"
    );
    std::fs::write(&uki, &v2.uki[1]).unwrap();
    // A record whose signed manifest was altered.
    let mut record = v2.installed();
    record.manifest = record.manifest.replace("2.0.0", "2.0.1");
    aperture_updater::store::write_slot(&mut dev.store(), Slot::B, &record).unwrap();
    let err = u.verify_slot(Slot::B).unwrap_err();
    assert!(
        aperture_updater::error_chain(&err).contains("signed manifest"),
        "{err}"
    );
    // No record at all.
    aperture_updater::store::clear_slot(&mut dev.store(), Slot::B).unwrap();
    assert!(u.installed(Slot::B).unwrap().is_none());
    let err = u.verify_slot(Slot::B).unwrap_err();
    assert!(
        aperture_updater::error_chain(&err).contains("no record"),
        "{err}"
    );
}
