//! The defects of issue 12 found by reading aperture-reset as an attacker would, one test (or
//! a few) each, on the file-backed rig:
//!
//! * 12.6: the journal's steps are not trusted (a planted journal with a bare Finish blesses
//!   nothing), and reset never commits a slot on trial (the factory slot waits for its health
//!   gate).
//! * 12.1: key expiry decides what may be newly installed, not whether the factory image or
//!   an installed slot may be used: two years after the build every level completes.
//! * 12.2: a factory image below the anti-rollback floor is installed only by level 3.

mod common;

use std::sync::Arc;

use aperture_reset::seams::{FakeDiscardMode, FakeReboot, Faults};
use aperture_reset::{Journal, Level, Outcome, ResetError, Step};
use aperture_slots::{BootState, FakeBootControl, Slot, SlotStatus};
use common::*;

fn run(
    rig: &Rig,
    f: impl FnOnce(&mut aperture_reset::Reset<'_>) -> Result<Outcome, ResetError>,
) -> Result<Outcome, ResetError> {
    rig.with_reset(
        &rig.fresh_crypt(),
        Arc::new(Faults::none()),
        FakeDiscardMode::Zeroes,
        &FakeReboot::default(),
        f,
    )
}

fn resume(rig: &Rig) -> Result<Outcome, ResetError> {
    run(rig, |r| r.resume())
}

fn set_status(rig: &Rig, slot: Slot, status: SlotStatus) -> BootState {
    let mut state = rig.state();
    state.slot_mut(slot).status = status;
    FakeBootControl::create(rig.boot_file(), state.clone()).unwrap();
    rig.state()
}

/// Plants a level 2 journal started on `started_from`, positioned at its Finish step.
fn plant_bare_finish(rig: &Rig, started_from: Slot) {
    let mut j = Journal::new(Level::Two, started_from, false);
    j.next = j.index_of(Step::Finish).unwrap();
    j.save(&mut rig.store()).unwrap();
}

/// Round 1 kept the steps in the journal and ran whatever it found: a journal holding only
/// `finish` blessed the other slot, whatever it was. Now the steps are rebuilt from the level
/// and the start slot, and Finish marks good only the factory image the reset itself wrote.
#[test]
fn a_planted_journal_with_a_bare_finish_blesses_nothing() {
    let update = release("3.0.0", 55, BOARD);
    for failed in [
        // An update that used up its tries.
        SlotStatus::Bad,
        // An update on trial that already booted once and has not passed its gate.
        SlotStatus::Trying {
            tries_left: 1,
            tries_done: 2,
        },
        // An update armed and not yet booted.
        SlotStatus::Trying {
            tries_left: 3,
            tries_done: 0,
        },
    ] {
        let rig = Rig::new(Backend::Fake);
        rig.install(Slot::B, &update);
        let before = set_status(&rig, Slot::B, failed);
        // Started "on B", so Finish on A would bless B.
        plant_bare_finish(&rig, Slot::B);
        let err = resume(&rig).unwrap_err();
        assert!(
            matches!(err, ResetError::JournalContradicted { .. }),
            "{failed}: {err}"
        );
        assert!(err.to_string().contains("nothing was marked good"), "{err}");
        assert_eq!(rig.state(), before, "{failed}: boot state changed");
        assert_eq!(rig.recorded_version(Slot::B), "3.0.0");
        // The reset gave up: later boots go on and report it; a real reset may start again.
        assert!(matches!(resume(&rig).unwrap(), Outcome::Failed { .. }));
        assert_eq!(rig.state(), before);
    }
}

/// Finish blesses the slot it rewrote only if it re-verifies block for block: the factory
/// image's record over a partition that does not match it is not blessed.
#[test]
fn finish_blesses_no_factory_record_whose_slot_does_not_verify() {
    let rig = Rig::new(Backend::Fake);
    rig.install(Slot::B, &releases().1);
    let mut byte = rig.read_partition("rootfs_b")[50_000..50_001].to_vec();
    byte[0] ^= 0x40;
    rig.write_partition("rootfs_b", 50_000, &byte);
    let before = set_status(&rig, Slot::B, SlotStatus::Unbootable);
    plant_bare_finish(&rig, Slot::B);
    let err = resume(&rig).unwrap_err();
    assert!(
        matches!(err, ResetError::JournalContradicted { .. })
            && err.to_string().contains("rootfs_b"),
        "{err}"
    );
    assert_eq!(rig.state(), before);
    // The same slot intact is what a reset that got this far leaves: it is blessed.
    rig.install(Slot::B, &releases().1);
    set_status(&rig, Slot::B, SlotStatus::Unbootable);
    plant_bare_finish(&rig, Slot::B);
    assert_eq!(resume(&rig).unwrap(), Outcome::Done { level: Level::Two });
    assert_eq!(rig.state().status(Slot::B), SlotStatus::Good);
}

/// A planted Finish while the running slot is on trial does not commit it either: that is the
/// health gate's call.
#[test]
fn a_planted_finish_never_commits_a_running_slot_on_trial() {
    let rig = Rig::new(Backend::Fake);
    set_status(
        &rig,
        Slot::B,
        SlotStatus::Trying {
            tries_left: 3,
            tries_done: 0,
        },
    );
    let mut state = rig.state();
    state.next = Slot::B;
    FakeBootControl::create(rig.boot_file(), state).unwrap();
    assert_eq!(rig.power_on(), Slot::B);
    let on_trial = rig.state();
    // The journal says B is the factory slot (started on A): wait for the gate.
    plant_bare_finish(&rig, Slot::A);
    assert_eq!(
        resume(&rig).unwrap(),
        Outcome::AwaitingHealthGate { slot: Slot::B }
    );
    assert_eq!(rig.state(), on_trial);
    // The journal says the reset started on B: B should be good by now; it is not.
    plant_bare_finish(&rig, Slot::B);
    let err = resume(&rig).unwrap_err();
    assert!(
        matches!(err, ResetError::JournalContradicted { .. }),
        "{err}"
    );
    assert_eq!(rig.state(), on_trial, "nothing was committed");
}

/// Round 1 committed the factory slot as soon as it booted, before the health gate ran, and
/// then overwrote the old slot: a factory image that boots but fails its gate left no
/// fallback. Now the factory slot stays on trial until the gate commits it, the old slot is
/// untouched until then, and a factory slot whose tries run out is written again.
#[test]
fn a_factory_slot_that_never_passed_the_gate_stays_on_trial() {
    for backend in [Backend::Fake, Backend::SystemdBoot] {
        let rig = Rig::new(backend);
        let original_a = rig.read_partition("rootfs_a");
        assert_eq!(
            run(&rig, |r| r.start(Level::Two)).unwrap(),
            Outcome::Rebooting {
                step: Step::RebootToFactory
            }
        );
        // The gate fails on every boot of the factory image.
        for _ in 0..aperture_reset::engine::FACTORY_TRIES {
            assert_eq!(rig.power_on(), Slot::B, "{backend:?}");
            assert_eq!(
                resume(&rig).unwrap(),
                Outcome::AwaitingHealthGate { slot: Slot::B }
            );
            let status = rig.state().status(Slot::B);
            assert!(
                matches!(status, SlotStatus::Trying { .. } | SlotStatus::Bad),
                "{backend:?}: reset committed the factory slot: {status}"
            );
            assert_eq!(rig.read_partition("rootfs_a"), original_a);
            assert_eq!(rig.recorded_version(Slot::A), "2.0.0");
        }
        // Its tries are used up: the old slot boots, and the factory image is written again.
        assert_eq!(rig.power_on(), Slot::A, "{backend:?}");
        assert_eq!(
            resume(&rig).unwrap(),
            Outcome::Rebooting {
                step: Step::RebootToFactory
            }
        );
        assert!(matches!(
            rig.state().status(Slot::B),
            SlotStatus::Trying { tries_done: 0, .. }
        ));
        // This time the gate passes: the reset completes.
        assert_eq!(rig.power_on(), Slot::B);
        assert_eq!(
            resume(&rig).unwrap(),
            Outcome::AwaitingHealthGate { slot: Slot::B }
        );
        rig.health_gate_passes();
        assert_eq!(resume(&rig).unwrap(), Outcome::Done { level: Level::Two });
        rig.assert_factory_everywhere();
    }
}

/// Two years after the rig's appliance was built and flashed (at [`NOW`], when its release
/// key was valid), past the key's expiry.
const TWO_YEARS_LATER: u64 = NOW + 2 * 365 * 86_400;

/// Round 1 checked the factory image's and the installed slots' signatures against the clock:
/// once the release key expired (a year after manufacture, say) levels 2 and 3 refused, so a
/// level 3 "before transfer" wiped nothing; a key expiring mid-reset made the journal retry
/// for ever. Expiry now decides only what may be newly installed.
#[test]
fn levels_1_2_3_complete_two_years_after_the_build() {
    const { assert!(TWO_YEARS_LATER > KEY_NOT_AFTER) };
    // Level 1 re-verifies the installed slots' signed manifests.
    let mut rig = Rig::new(Backend::SystemdBoot);
    rig.now = TWO_YEARS_LATER;
    let report = run(&rig, |r| r.level1().map(Outcome::Level1)).unwrap();
    assert!(
        matches!(&report, Outcome::Level1(l) if l.chosen == Slot::A && l.refused.is_empty()),
        "{report:?}"
    );
    // Level 2.
    let mut rig = Rig::new(Backend::SystemdBoot);
    rig.now = TWO_YEARS_LATER;
    rig.run_to_completion(|r| r.start(Level::Two), &rig.fresh_crypt());
    rig.assert_factory_everywhere();
    // Level 3 leaves no canary.
    let mut rig = Rig::new(Backend::Fake);
    rig.provision();
    rig.now = TWO_YEARS_LATER;
    rig.run_to_completion(|r| r.start(Level::Three), &rig.fresh_crypt());
    let found = rig.scan();
    assert!(found.is_empty(), "left on the disk: {found:?}");
    assert!(keys_gone(&rig));
    rig.assert_factory_everywhere();
}

#[test]
fn a_key_expiring_mid_reset_does_not_stall_the_journal() {
    let mut rig = Rig::new(Backend::Fake);
    rig.provision();
    assert!(matches!(
        run(&rig, |r| r.start(Level::Three)).unwrap(),
        Outcome::Rebooting { .. }
    ));
    rig.now = TWO_YEARS_LATER;
    rig.run_to_completion(|r| r.resume(), &rig.fresh_crypt());
    assert!(rig.scan().is_empty());
    rig.assert_factory_everywhere();
}

/// Without expiry the signatures are still checked: a changed manifest byte in the factory
/// image is refused two years later, before anything is written.
#[test]
fn without_expiry_a_tampered_factory_image_is_still_refused() {
    let mut factory = releases().1.clone();
    let m = find(&factory.bundle, b"\"1.0.0\"").unwrap();
    factory.bundle[m + 1] = b'9';
    let mut rig = Rig::with_factory(Backend::Fake, factory);
    rig.provision();
    rig.now = TWO_YEARS_LATER;
    let before = rig.read_partition("data");
    let err = run(&rig, |r| r.start(Level::Three)).unwrap_err();
    assert!(
        matches!(
            err,
            ResetError::Trust(
                aperture_trust::TrustError::BadSignature { .. }
                    | aperture_trust::TrustError::Malformed { .. }
            )
        ),
        "{err}"
    );
    assert_eq!(rig.read_partition("data"), before);
    assert_eq!(rig.journal(), None);
}

/// Round 1's level 2 installed a factory image whatever the anti-rollback floor, beside the
/// data a newer image wrote. Now level 2 refuses before anything is written and names level 3,
/// which destroys the data first and may install it.
#[test]
fn a_factory_image_below_the_floor_is_installed_only_by_level_3() {
    let mut rig = Rig::with_factory(Backend::Fake, factory_with_security_version(1));
    // The updater's record, with its other fields.
    rig.store()
        .write(
            aperture_appliance::Area::Update,
            br#"{"format":1,"security_floor":3,"committed":"a","journal":null}"#,
        )
        .unwrap();
    rig.provision();
    let before_b = rig.read_partition("rootfs_b");
    let before_data = rig.read_partition("data");
    let before_state = rig.state();
    let err = run(&rig, |r| r.start(Level::Two)).unwrap_err();
    assert!(
        matches!(
            err,
            ResetError::FactoryBelowFloor {
                security_version: 1,
                floor: 3,
                ..
            }
        ),
        "{err}"
    );
    assert!(err.to_string().contains("level 3"), "{err}");
    assert_eq!(rig.read_partition("rootfs_b"), before_b);
    assert_eq!(rig.read_partition("data"), before_data);
    assert_eq!(rig.state(), before_state);
    assert_eq!(rig.journal(), None);

    rig.run_to_completion(|r| r.start(Level::Three), &rig.fresh_crypt());
    assert!(rig.scan().is_empty());
    rig.assert_factory_everywhere();

    // At the floor, level 2 is fine.
    let rig = Rig::with_factory(Backend::Fake, factory_with_security_version(3));
    rig.store()
        .write(
            aperture_appliance::Area::Update,
            br#"{"format":1,"security_floor":3}"#,
        )
        .unwrap();
    rig.run_to_completion(|r| r.start(Level::Two), &rig.fresh_crypt());
    rig.assert_factory_everywhere();
}

/// A planted level 2 journal cannot get a factory image below the floor written either: the
/// floor is checked again before the slot is written, and the reset gives up.
#[test]
fn a_planted_level_2_journal_respects_the_floor() {
    let rig = Rig::with_factory(Backend::Fake, factory_with_security_version(1));
    rig.store()
        .write(
            aperture_appliance::Area::Update,
            br#"{"format":1,"security_floor":3}"#,
        )
        .unwrap();
    Journal::new(Level::Two, Slot::A, false)
        .save(&mut rig.store())
        .unwrap();
    let before_b = rig.read_partition("rootfs_b");
    let before_state = rig.state();
    let err = resume(&rig).unwrap_err();
    assert!(matches!(err, ResetError::FactoryBelowFloor { .. }), "{err}");
    assert_eq!(rig.read_partition("rootfs_b"), before_b);
    assert_eq!(rig.state(), before_state);
    assert!(matches!(resume(&rig).unwrap(), Outcome::Failed { .. }));
}
