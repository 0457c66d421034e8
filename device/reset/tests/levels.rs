//! Levels 1 and 2 on a file-backed disk: level 1 re-verifies before it boots anything and
//! falls back to the other good slot; level 2 verifies the whole factory bundle before it
//! writes a byte, reinstalls both slots across one reboot, and retries (then gives up) when
//! the factory slot does not come up. Both boot-control backends are exercised.

mod common;

use std::sync::Arc;

use aperture_reset::seams::{FakeDiscardMode, FakeReboot, Faults};
use aperture_reset::{Level, Outcome, ResetError, Step};
use aperture_slots::{Slot, SlotStatus};
use aperture_trust::TrustError;
use common::*;

fn level1(rig: &Rig, reboot: &FakeReboot) -> Result<aperture_reset::Level1Report, ResetError> {
    rig.with_reset(
        &rig.fresh_crypt(),
        Arc::new(Faults::none()),
        FakeDiscardMode::Zeroes,
        reboot,
        |r| r.level1(),
    )
}

fn start(rig: &Rig, level: Level) -> Result<Outcome, ResetError> {
    rig.with_reset(
        &rig.fresh_crypt(),
        Arc::new(Faults::none()),
        FakeDiscardMode::Zeroes,
        &FakeReboot::default(),
        |r| r.start(level),
    )
}

fn resume(rig: &Rig) -> Result<Outcome, ResetError> {
    rig.with_reset(
        &rig.fresh_crypt(),
        Arc::new(Faults::none()),
        FakeDiscardMode::Zeroes,
        &FakeReboot::default(),
        |r| r.resume(),
    )
}

#[test]
fn level1_boots_the_running_good_slot_again_when_it_verifies() {
    for backend in [Backend::Fake, Backend::SystemdBoot] {
        let rig = Rig::new(backend);
        let reboot = FakeReboot::default();
        let report = level1(&rig, &reboot).unwrap();
        assert_eq!(report.chosen, Slot::A);
        assert!(report.refused.is_empty());
        assert_eq!(reboot.count(), 1);
        assert_eq!(rig.state().next, Slot::A);
    }
}

#[test]
fn level1_refuses_a_slot_whose_verity_does_not_match_and_picks_the_other() {
    for backend in [Backend::Fake, Backend::SystemdBoot] {
        let rig = Rig::new(backend);
        // One flipped byte in a data block of slot A's rootfs.
        let mut block = rig.read_partition("rootfs_a")[40_000..40_001].to_vec();
        block[0] ^= 0x01;
        rig.write_partition("rootfs_a", 40_000, &block);
        let reboot = FakeReboot::default();
        let report = level1(&rig, &reboot).unwrap();
        assert_eq!(report.chosen, Slot::B, "{backend:?}");
        assert_eq!(report.refused.len(), 1);
        assert!(
            report.refused[0].1.contains("rootfs_a"),
            "{:?}",
            report.refused
        );
        assert_eq!(rig.state().next, Slot::B);
        assert_eq!(rig.power_on(), Slot::B);
    }
}

#[test]
fn level1_checks_the_uki_and_only_good_slots() {
    let rig = Rig::new(Backend::Fake);
    std::fs::write(rig.files.uki(Slot::B), b"tampered").unwrap();
    let mut block = rig.read_partition("rootfs_a")[..1].to_vec();
    block[0] ^= 0xff;
    rig.write_partition("rootfs_a", 0, &block);
    let reboot = FakeReboot::default();
    let err = level1(&rig, &reboot).unwrap_err();
    let text = err.to_string();
    assert!(matches!(err, ResetError::NoVerifiedSlot { .. }), "{text}");
    assert!(
        text.contains("slot a") && text.contains("uki.efi"),
        "{text}"
    );
    assert_eq!(reboot.count(), 0, "nothing to boot, no reboot");
    assert_eq!(rig.state().next, Slot::A, "boot state untouched");
}

#[test]
fn level1_never_picks_a_slot_on_trial() {
    let rig = Rig::new(Backend::Fake);
    let mut state = rig.state();
    state.b.status = SlotStatus::Trying {
        tries_left: 2,
        tries_done: 1,
    };
    aperture_slots::FakeBootControl::create(rig.boot_file(), state).unwrap();
    let mut block = rig.read_partition("rootfs_a")[..1].to_vec();
    block[0] ^= 0xff;
    rig.write_partition("rootfs_a", 0, &block);
    let err = level1(&rig, &FakeReboot::default()).unwrap_err();
    assert!(err.to_string().contains("not known-good"), "{err}");
}

#[test]
fn level2_reinstalls_both_slots_across_one_reboot() {
    for backend in [Backend::Fake, Backend::SystemdBoot] {
        let rig = Rig::new(backend);
        let outcome = start(&rig, Level::Two).unwrap();
        assert_eq!(
            outcome,
            Outcome::Rebooting {
                step: Step::RebootToFactory
            }
        );
        let j = rig.journal().unwrap();
        assert_eq!(
            j.current(),
            Some(Step::RebootToFactory),
            "level 2, second slot pending"
        );
        assert!(!j.wipe_pending() && !rig.storage_sees_wipe_pending());
        assert_eq!(
            rig.power_on(),
            Slot::B,
            "{backend:?}: the armed factory slot boots"
        );
        // Early in boot the factory image is on trial: slot A, the fallback, is untouched.
        let before_a = rig.read_partition("rootfs_a");
        assert_eq!(
            resume(&rig).unwrap(),
            Outcome::AwaitingHealthGate { slot: Slot::B }
        );
        assert!(matches!(
            rig.state().status(Slot::B),
            SlotStatus::Trying { .. }
        ));
        assert_eq!(rig.read_partition("rootfs_a"), before_a);
        rig.health_gate_passes();
        assert_eq!(resume(&rig).unwrap(), Outcome::Done { level: Level::Two });
        rig.assert_factory_everywhere();
        assert_eq!(rig.state().next, Slot::B);
        // And the machine keeps booting: both slots good, B first, A as fallback.
        assert_eq!(rig.power_on(), Slot::B);
        assert_eq!(resume(&rig).unwrap(), Outcome::Nothing);
    }
}

#[test]
fn level2_after_slot_a_was_corrupted() {
    let rig = Rig::new(Backend::SystemdBoot);
    rig.write_partition("rootfs_a", 4096, &[0u8; 4096]);
    rig.run_to_completion(|r| r.start(Level::Two), &rig.fresh_crypt());
    rig.assert_factory_everywhere();
}

fn assert_nothing_written(rig: &Rig, before_b: &[u8]) {
    assert_eq!(
        rig.read_partition("rootfs_b"),
        before_b,
        "slot B was written"
    );
    assert_eq!(rig.journal(), None);
    let state = rig.state();
    assert_eq!(state.status(Slot::B), SlotStatus::Good);
    assert_eq!(state.next, Slot::A);
    assert_eq!(rig.recorded_version(Slot::B), "2.0.0");
}

#[test]
fn level2_refuses_a_tampered_factory_bundle_before_writing_anything() {
    let f = releases().1.clone();
    // A flipped byte in the middle of the last payload (the signature is intact).
    let mut payload_tampered = f.clone();
    let at = f.bundle.len() - 1024 - 3000;
    payload_tampered.bundle[at] ^= 0x20;
    // A changed manifest byte: the signature no longer verifies.
    let mut manifest_tampered = f.clone();
    let m = common::find(&f.bundle, b"\"1.0.0\"").unwrap();
    manifest_tampered.bundle[m + 1] = b'9';
    for (name, release, level) in [
        ("payload", payload_tampered, Level::Two),
        ("manifest", manifest_tampered, Level::Three),
    ] {
        let mut rig = Rig::with_factory(Backend::Fake, release);
        if level == Level::Three {
            rig.provision();
        }
        let before_b = rig.read_partition("rootfs_b");
        let before_data = rig.read_partition("data");
        let err = start(&rig, level).unwrap_err();
        match name {
            "payload" => assert!(
                matches!(
                    err,
                    ResetError::Trust(
                        TrustError::HashMismatch { .. } | TrustError::Malformed { .. }
                    )
                ),
                "{err}"
            ),
            _ => assert!(
                matches!(
                    err,
                    ResetError::Trust(
                        TrustError::BadSignature { .. } | TrustError::Malformed { .. }
                    )
                ),
                "{err}"
            ),
        }
        assert_nothing_written(&rig, &before_b);
        assert_eq!(
            rig.read_partition("data"),
            before_data,
            "{name}: data was touched"
        );
    }
}

#[test]
fn level2_refuses_a_factory_image_for_another_board() {
    let rig = Rig::with_factory(Backend::Fake, release("1.0.0", 100, "jetson-orin-agx"));
    let before_b = rig.read_partition("rootfs_b");
    let err = start(&rig, Level::Two).unwrap_err();
    assert!(
        matches!(err, ResetError::Trust(TrustError::WrongBoard { .. })),
        "{err}"
    );
    assert_nothing_written(&rig, &before_b);
}

#[test]
fn level2_refuses_an_empty_factory_partition() {
    let rig = Rig::new(Backend::Fake);
    rig.write_partition("factory", 0, &vec![0u8; MIB as usize]);
    let err = start(&rig, Level::Two).unwrap_err();
    assert!(matches!(err, ResetError::FactoryEmpty { .. }), "{err}");
}

#[test]
fn a_factory_slot_that_does_not_boot_is_written_again_then_given_up() {
    let rig = Rig::new(Backend::Fake);
    start(&rig, Level::Two).unwrap();
    for attempt in 1..=2 {
        // The factory slot never reaches `resume`: the loader uses up its tries.
        for _ in 0..aperture_reset::engine::FACTORY_TRIES {
            assert_eq!(rig.power_on(), Slot::B);
        }
        assert_eq!(rig.power_on(), Slot::A, "fallback to the old slot");
        let result = resume(&rig);
        if attempt == 1 {
            assert_eq!(
                result.unwrap(),
                Outcome::Rebooting {
                    step: Step::RebootToFactory
                }
            );
            assert_eq!(rig.state().next, Slot::B, "written and armed again");
        } else {
            let err = result.unwrap_err();
            assert!(
                matches!(err, ResetError::FactoryDidNotBoot { attempts: 2 }),
                "{err}"
            );
        }
    }
    // From now on every boot goes on, reporting the failure.
    let outcome = resume(&rig).unwrap();
    assert!(matches!(outcome, Outcome::Failed { .. }), "{outcome:?}");
    // A new reset may start over a failed one.
    let outcome = start(&rig, Level::Two).unwrap();
    assert_eq!(
        outcome,
        Outcome::Rebooting {
            step: Step::RebootToFactory
        }
    );
}

/// The running slot on trial has not passed its health gate, and the other slot is the last
/// known-good one: levels 2 and 3 refuse before anything is written (round 1 committed the
/// trial slot itself).
#[test]
fn level2_and_3_refuse_while_the_running_slot_is_on_trial() {
    for level in [Level::Two, Level::Three] {
        let rig = Rig::new(Backend::Fake);
        let mut state = rig.state();
        state.a.status = SlotStatus::Trying {
            tries_left: 2,
            tries_done: 1,
        };
        aperture_slots::FakeBootControl::create(rig.boot_file(), state.clone()).unwrap();
        let before_b = rig.read_partition("rootfs_b");
        let err = start(&rig, level).unwrap_err();
        assert!(
            matches!(err, ResetError::RunningSlotNotGood { slot: Slot::A, .. }),
            "{err}"
        );
        assert!(err.to_string().contains("level 1"), "{err}");
        assert_eq!(rig.state(), state, "boot state untouched");
        assert_eq!(rig.read_partition("rootfs_b"), before_b);
        assert_eq!(rig.journal(), None);
    }
}

#[test]
fn verify_reports_what_the_partitions_hold() {
    let mut rig = Rig::new(Backend::Fake);
    rig.provision();
    let disk = aperture_storage::FileDisk::new(&rig.image);
    let before = aperture_reset::app::verify(&disk, rig.board).unwrap();
    assert!(!before.ok);
    assert!(
        before.to_string().contains("LUKS HEADER PRESENT"),
        "{before}"
    );
    rig.run_to_completion(|r| r.start(Level::Three), &rig.fresh_crypt());
    let after = aperture_reset::app::verify(&disk, rig.board).unwrap();
    assert!(after.ok, "{after}");
    for v in &after.volumes {
        assert!(!v.luks_magic.any());
        assert_eq!(v.zero_fraction, 1.0, "{}", v.label);
    }
    let json = serde_json::to_value(&after).unwrap();
    assert_eq!(json["ok"], true);
    assert_eq!(json["volumes"][0]["label"], "config");
}
