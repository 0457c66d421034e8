//! Level 3 on a file-backed disk: canaries planted in config and data (through the fake
//! encryption, and one in plaintext from before the volume existed) are gone from the whole
//! disk afterwards, the sealed keys are gone from the ESP, both slots hold the factory image
//! and the next boot formats storage afresh; and the same holds after a power cut at every
//! step and every partition write of the reset.

mod common;

use std::sync::Arc;

use aperture_reset::journal::plan;
use aperture_reset::seams::{FakeDiscardMode, FakeReboot, FaultPoint, Faults};
use aperture_reset::{Level, Outcome, ResetError, Step};
use aperture_slots::Slot;
use common::*;

fn assert_wiped(rig: &Rig) {
    let found = rig.scan();
    assert!(found.is_empty(), "left on the disk: {found:?}");
    let esp = rig.esp_leftovers();
    assert!(esp.is_empty(), "left on the ESP: {esp:?}");
    assert!(keys_gone(rig));
}

#[test]
fn level3_leaves_no_canary_at_boot_time() {
    let mut rig = Rig::new(Backend::Fake);
    rig.provision();
    // Triggered by the reset key at boot: nothing is unlocked yet.
    let boots = rig.run_to_completion(|r| r.start(Level::Three), &rig.fresh_crypt());
    assert_eq!(boots, 1, "one reboot, into the factory slot");
    assert_wiped(&rig);
    rig.assert_factory_everywhere();
    assert_eq!(
        rig.state().next,
        Slot::B,
        "the factory slot that booted stays next"
    );
    rig.assert_storage_starts_new();
}

#[test]
fn level3_from_a_running_system_reboots_before_scrubbing() {
    let mut rig = Rig::new(Backend::SystemdBoot);
    let unlocked = rig.provision();
    let reboot = FakeReboot::default();
    let outcome = rig
        .with_reset(
            &unlocked,
            Arc::new(Faults::none()),
            FakeDiscardMode::Zeroes,
            &reboot,
            |r| r.start(Level::Three),
        )
        .unwrap();
    assert_eq!(
        outcome,
        Outcome::Rebooting {
            step: Step::RebootToWipe
        }
    );
    // Crypto-erased already: no header, no key; the ciphertext waits for the scrub.
    assert!(keys_gone(&rig));
    let journal = rig.journal().unwrap();
    assert!(journal.wipe_pending() && rig.storage_sees_wipe_pending());
    assert_eq!(journal.steps().len(), 13);
    let boots = rig.run_to_completion(|r| r.resume(), &rig.fresh_crypt()) + 1;
    assert_eq!(boots, 2);
    assert_wiped(&rig);
    rig.assert_factory_everywhere();
    rig.assert_storage_starts_new();
}

#[test]
fn every_discard_behaviour_ends_wiped() {
    for mode in [FakeDiscardMode::Unsupported, FakeDiscardMode::LeavesData] {
        let mut rig = Rig::new(Backend::Fake);
        rig.provision();
        let reboot = FakeReboot::default();
        let crypt = rig.fresh_crypt();
        let out = rig
            .with_reset(&crypt, Arc::new(Faults::none()), mode, &reboot, |r| {
                r.start(Level::Three)
            })
            .unwrap();
        assert_eq!(
            out,
            Outcome::Rebooting {
                step: Step::RebootToFactory
            }
        );
        assert!(rig.scan().is_empty(), "{mode:?}: {:?}", rig.scan());
    }
}

/// While a wipe step is still to do, the reset area says so to aperture-storage, which then
/// refuses to unlock anything.
fn assert_storage_refuses(rig: &Rig) {
    assert!(rig.storage_sees_wipe_pending(), "{:?}", rig.journal());
}

/// Runs level 3 with a power cut at `point`, then boots until it is done. Returns whether
/// the cut happened. A cut before the journal's first write leaves no reset at all: nothing
/// was destroyed, and the operator starts it again.
fn cut_and_recover(point: FaultPoint, busy: bool) -> bool {
    let mut rig = Rig::new(Backend::Fake);
    let unlocked = rig.provision();
    let reboot = FakeReboot::default();
    let mut faults = Arc::new(Faults::at(point));
    let crypt = if busy { unlocked } else { rig.fresh_crypt() };
    let mut result = rig.with_reset(
        &crypt,
        faults.clone(),
        FakeDiscardMode::Zeroes,
        &reboot,
        |r| r.start(Level::Three),
    );
    let mut cut = false;
    for boot in 0..12 {
        let mut again = false;
        match result {
            Ok(Outcome::Done { .. }) => break,
            Ok(Outcome::Nothing) if cut => {
                let found = rig.scan();
                assert!(
                    CANARIES
                        .iter()
                        .all(|c| found.iter().any(|(n, _)| n.as_bytes() == *c)),
                    "{point}: data destroyed by a reset that was never journaled: {found:?}"
                );
                again = true;
                rig.booted()
            }
            Ok(Outcome::Rebooting { .. }) => rig.power_on(),
            Ok(Outcome::AwaitingHealthGate { slot }) => {
                assert_eq!(slot, rig.booted());
                rig.health_gate_passes();
                slot
            }
            Ok(other) => panic!("{point}: unexpected {other:?}"),
            Err(e) if e.is_injected() => {
                cut = true;
                faults = Arc::new(Faults::none());
                if rig.journal().is_some_and(|j| j.wipe_pending()) {
                    assert_storage_refuses(&rig);
                }
                rig.power_on()
            }
            Err(e) => panic!("{point}: {e}"),
        };
        assert!(boot < 11, "{point}: the reset never finishes");
        result = rig.with_reset(
            &rig.fresh_crypt(),
            faults.clone(),
            FakeDiscardMode::Zeroes,
            &reboot,
            |r| {
                if again {
                    r.start(Level::Three)
                } else {
                    r.resume()
                }
            },
        );
    }
    assert_wiped(&rig);
    rig.assert_factory_everywhere();
    rig.assert_storage_starts_new();
    cut
}

/// Partition writes of an uninterrupted level 3 (both boots).
fn writes_of_a_whole_run(busy: bool) -> u64 {
    let mut rig = Rig::new(Backend::Fake);
    let unlocked = rig.provision();
    let reboot = FakeReboot::default();
    let faults = Arc::new(Faults::none());
    let crypt = if busy { unlocked } else { rig.fresh_crypt() };
    let mut out = rig
        .with_reset(
            &crypt,
            faults.clone(),
            FakeDiscardMode::Zeroes,
            &reboot,
            |r| r.start(Level::Three),
        )
        .unwrap();
    loop {
        match out {
            Outcome::Rebooting { .. } => rig.power_on(),
            Outcome::AwaitingHealthGate { slot } => {
                rig.health_gate_passes();
                slot
            }
            _ => break,
        };
        out = rig
            .with_reset(
                &rig.fresh_crypt(),
                faults.clone(),
                FakeDiscardMode::Zeroes,
                &reboot,
                |r| r.resume(),
            )
            .unwrap();
    }
    faults.writes()
}

fn crash_everywhere(busy: bool) {
    let steps = plan(Level::Three, Slot::A, busy);
    let writes = writes_of_a_whole_run(busy);
    eprintln!(
        "level 3 ({}): {} steps: {}",
        if busy {
            "started on a running system"
        } else {
            "started at boot"
        },
        steps.len(),
        steps
            .iter()
            .map(|s| s.to_string())
            .collect::<Vec<_>>()
            .join("; ")
    );
    let mut points: Vec<FaultPoint> = Vec::new();
    for k in 0..steps.len() {
        points.push(FaultPoint::BeforeStep(k));
        points.push(FaultPoint::AfterStep(k));
    }
    points.extend((1..=writes).map(FaultPoint::Write));
    let mut cuts = 0;
    for point in &points {
        if cut_and_recover(*point, busy) {
            cuts += 1;
        }
    }
    eprintln!(
        "level 3 ({}): {} crash points ({} step boundaries, {} writes: partitions, the installer's files and boot-control steps), {} cut the power, all recovered",
        if busy { "running" } else { "boot" },
        points.len(),
        2 * steps.len(),
        writes,
        cuts
    );
    assert_eq!(cuts, points.len(), "every crash point is reached");
}

#[test]
fn crash_at_every_step_and_write_of_level3_at_boot() {
    crash_everywhere(false);
}

#[test]
fn crash_at_every_step_and_write_of_level3_on_a_running_system() {
    crash_everywhere(true);
}

#[test]
fn a_second_reset_is_refused_while_one_is_pending() {
    let mut rig = Rig::new(Backend::Fake);
    let unlocked = rig.provision();
    let reboot = FakeReboot::default();
    rig.with_reset(
        &unlocked,
        Arc::new(Faults::none()),
        FakeDiscardMode::Zeroes,
        &reboot,
        |r| r.start(Level::Three),
    )
    .unwrap();
    let err = rig
        .with_reset(
            &rig.fresh_crypt(),
            Arc::new(Faults::none()),
            FakeDiscardMode::Zeroes,
            &reboot,
            |r| r.start(Level::Two),
        )
        .unwrap_err();
    assert!(matches!(err, ResetError::InProgress { level: 3 }), "{err}");
    let err = rig
        .with_reset(
            &rig.fresh_crypt(),
            Arc::new(Faults::none()),
            FakeDiscardMode::Zeroes,
            &reboot,
            |r| r.level1(),
        )
        .unwrap_err();
    assert!(matches!(err, ResetError::InProgress { .. }), "{err}");
}
