//! The pure A/B state machine: every transition by name, and an exhaustive check that a crash
//! after any prefix of any planned step list leaves the loader a good or fully armed slot.

use aperture_slots::{
    apply_step, plan, simulate_boot, BootState, Event, Slot, SlotBoot, SlotState, SlotStatus,
    SlotsError, Step,
};
use SlotStatus::{Bad, Good, Trying, Unbootable};

fn boot(slot: Slot) -> SlotBoot {
    SlotBoot::for_slot(
        slot,
        "Aperture 2.0.0",
        &format!("root=PARTLABEL=rootfs_{slot} ro"),
    )
}

fn state(a: SlotStatus, b: SlotStatus, next: Slot) -> BootState {
    BootState {
        a: SlotState {
            status: a,
            label: None,
        },
        b: SlotState {
            status: b,
            label: None,
        },
        next,
    }
}

fn trying(left: u32, done: u32) -> SlotStatus {
    Trying {
        tries_left: left,
        tries_done: done,
    }
}

fn arm(target: Slot, tries: u32) -> Event {
    Event::Arm {
        target,
        tries,
        boot: boot(target),
    }
}

#[test]
fn begin_install_invalidates_the_other_slot() {
    let (after, steps) = plan(
        &BootState::fresh(),
        Slot::A,
        Event::BeginInstall { target: Slot::B },
    )
    .unwrap();
    assert_eq!(steps, vec![Step::Invalidate { slot: Slot::B }]);
    assert_eq!(after, state(Good, Unbootable, Slot::A));
}

#[test]
fn begin_install_moves_next_away_first() {
    // B was armed but the device never rebooted; a new install into B starts.
    let armed = state(Good, trying(3, 0), Slot::B);
    let (after, steps) = plan(&armed, Slot::A, Event::BeginInstall { target: Slot::B }).unwrap();
    assert_eq!(
        steps,
        vec![
            Step::SetNext { slot: Slot::A },
            Step::Invalidate { slot: Slot::B }
        ]
    );
    assert_eq!(after, state(Good, Unbootable, Slot::A));
}

#[test]
fn begin_install_restarts_an_interrupted_install() {
    let half = state(Good, Unbootable, Slot::A);
    let (after, steps) = plan(&half, Slot::A, Event::BeginInstall { target: Slot::B }).unwrap();
    assert_eq!(steps, vec![Step::Invalidate { slot: Slot::B }]);
    assert_eq!(after, half);
}

#[test]
fn begin_install_refuses_the_running_slot() {
    let err = plan(
        &BootState::fresh(),
        Slot::A,
        Event::BeginInstall { target: Slot::A },
    )
    .unwrap_err();
    assert!(matches!(err, SlotsError::WriteActiveSlot { slot: Slot::A }));
    let msg = err.to_string();
    assert!(
        msg.contains("slot a is the running slot") && msg.contains("install into slot b"),
        "{msg}"
    );
}

#[test]
fn begin_install_needs_a_committed_running_slot() {
    let on_trial = state(Good, trying(2, 1), Slot::B);
    let err = plan(&on_trial, Slot::B, Event::BeginInstall { target: Slot::A }).unwrap_err();
    assert!(
        matches!(err, SlotsError::InvalidTransition { slot: Slot::B, .. }),
        "{err}"
    );
    assert!(
        err.to_string().contains("mark the running slot good"),
        "{err}"
    );
}

#[test]
fn arm_makes_target_trying_and_next() {
    let half = state(Good, Unbootable, Slot::A);
    let (after, steps) = plan(&half, Slot::A, arm(Slot::B, 3)).unwrap();
    assert_eq!(
        steps,
        vec![
            Step::Arm {
                slot: Slot::B,
                tries: 3,
                boot: boot(Slot::B)
            },
            Step::SetNext { slot: Slot::B }
        ]
    );
    assert_eq!(
        after.b,
        SlotState {
            status: trying(3, 0),
            label: Some("Aperture 2.0.0".into())
        }
    );
    assert_eq!(after.next, Slot::B);
    assert_eq!(after.a.status, Good);
}

#[test]
fn arm_refusals() {
    let half = state(Good, Unbootable, Slot::A);
    assert!(matches!(
        plan(&half, Slot::A, arm(Slot::A, 3)),
        Err(SlotsError::WriteActiveSlot { .. })
    ));
    for tries in [0, aperture_slots::MAX_TRIES + 1] {
        let err = plan(&half, Slot::A, arm(Slot::B, tries)).unwrap_err();
        assert!(matches!(err, SlotsError::InvalidTries { .. }), "{err}");
        assert!(err.to_string().contains("takes 1 to 7"), "{err}");
    }
    for from in [Good, trying(1, 0), Bad] {
        let err = plan(&state(Good, from, Slot::A), Slot::A, arm(Slot::B, 3)).unwrap_err();
        assert!(
            matches!(
                err,
                SlotsError::InvalidTransition {
                    event: "arm",
                    slot: Slot::B,
                    ..
                }
            ),
            "{err}"
        );
        assert!(err.to_string().contains("begin the install"), "{err}");
    }
    let mut bad_title = boot(Slot::B);
    bad_title.title = "1.0\nversion 99".into();
    let err = plan(
        &half,
        Slot::A,
        Event::Arm {
            target: Slot::B,
            tries: 3,
            boot: bad_title,
        },
    )
    .unwrap_err();
    assert!(
        matches!(err, SlotsError::InvalidBoot { slot: Slot::B, .. }),
        "{err}"
    );
}

#[test]
fn mark_good_blesses_a_trial_slot_and_keeps_it_next() {
    let on_trial = state(Good, trying(2, 1), Slot::B);
    let (after, steps) = plan(&on_trial, Slot::B, Event::MarkGood { slot: Slot::B }).unwrap();
    assert_eq!(steps, vec![Step::Bless { slot: Slot::B }]);
    assert_eq!(after, state(Good, Good, Slot::B));
    // Again: nothing to do.
    let (again, steps) = plan(&after, Slot::B, Event::MarkGood { slot: Slot::B }).unwrap();
    assert!(steps.is_empty());
    assert_eq!(again, after);
}

#[test]
fn mark_good_on_the_last_try_makes_it_next_again() {
    // The loader used the last try to boot B, so it would fall back to A next time.
    let last_try = state(Good, Bad, Slot::B).normalized();
    assert_eq!(last_try.next, Slot::A);
    let (after, steps) = plan(&last_try, Slot::B, Event::MarkGood { slot: Slot::B }).unwrap();
    assert_eq!(steps, vec![Step::Bless { slot: Slot::B }]);
    assert_eq!(after, state(Good, Good, Slot::B));
}

#[test]
fn mark_good_keeps_a_rollback() {
    let on_trial = state(Good, trying(2, 1), Slot::B);
    let (rolled, _) = plan(&on_trial, Slot::B, Event::Rollback).unwrap();
    let (after, steps) = plan(&rolled, Slot::B, Event::MarkGood { slot: Slot::B }).unwrap();
    assert_eq!(steps, vec![Step::Bless { slot: Slot::B }]);
    assert_eq!(after, state(Good, Good, Slot::A));
}

#[test]
fn mark_good_refusals() {
    let err = plan(
        &BootState::fresh(),
        Slot::A,
        Event::MarkGood { slot: Slot::B },
    )
    .unwrap_err();
    assert!(
        matches!(
            err,
            SlotsError::NotBooted {
                slot: Slot::B,
                booted: Slot::A
            }
        ),
        "{err}"
    );
    let err = plan(
        &state(Unbootable, Good, Slot::B),
        Slot::A,
        Event::MarkGood { slot: Slot::A },
    )
    .unwrap_err();
    assert!(
        matches!(
            err,
            SlotsError::InvalidTransition {
                event: "mark good",
                ..
            }
        ),
        "{err}"
    );
}

#[test]
fn mark_good_on_a_good_slot_leaves_a_pending_update_alone() {
    let armed = state(Good, trying(3, 0), Slot::B);
    let (after, steps) = plan(&armed, Slot::A, Event::MarkGood { slot: Slot::A }).unwrap();
    assert!(steps.is_empty());
    assert_eq!(after.next, Slot::B);
}

#[test]
fn rollback_selects_the_good_other_slot() {
    let both = state(Good, Good, Slot::B);
    let (after, steps) = plan(&both, Slot::B, Event::Rollback).unwrap();
    assert_eq!(steps, vec![Step::SetNext { slot: Slot::A }]);
    assert_eq!(after.next, Slot::A);
    let (_, again) = plan(&after, Slot::B, Event::Rollback).unwrap();
    assert!(again.is_empty(), "already rolled back");
    // From a failing trial slot.
    let (after, _) = plan(
        &state(Good, trying(1, 2), Slot::B),
        Slot::B,
        Event::Rollback,
    )
    .unwrap();
    assert_eq!(after.next, Slot::A);
}

#[test]
fn rollback_needs_a_good_other_slot() {
    for other in [Unbootable, Bad, trying(3, 0)] {
        let err = plan(&state(other, Good, Slot::B), Slot::B, Event::Rollback).unwrap_err();
        assert!(
            matches!(err, SlotsError::NoGoodSlot { slot: Slot::A, .. }),
            "{err}"
        );
        assert!(
            err.to_string().contains("cannot roll back to slot a"),
            "{err}"
        );
    }
}

#[test]
fn boot_counts_tries_and_falls_back() {
    let mut s = state(Good, trying(3, 0), Slot::B);
    let mut booted = Vec::new();
    for _ in 0..5 {
        let (slot, after) = simulate_boot(&s).unwrap();
        let (planned, steps) = plan(&s, slot, Event::Boot).unwrap();
        assert!(steps.is_empty(), "the loader persists boots itself");
        assert_eq!(planned, after);
        booted.push(slot);
        s = after;
    }
    assert_eq!(booted, [Slot::B, Slot::B, Slot::B, Slot::A, Slot::A]);
    assert_eq!(s, state(Good, Bad, Slot::A));
}

#[test]
fn boot_tracks_counts_and_refuses_nothing_bootable() {
    let (slot, after) = simulate_boot(&state(Good, trying(3, 0), Slot::B)).unwrap();
    assert_eq!((slot, after.b.status), (Slot::B, trying(2, 1)));
    let (slot, after) = simulate_boot(&state(Unbootable, Good, Slot::A)).unwrap();
    assert_eq!((slot, after.next), (Slot::B, Slot::B));
    let err = simulate_boot(&state(Bad, Unbootable, Slot::A)).unwrap_err();
    assert!(matches!(err, SlotsError::NoBootableSlot { .. }), "{err}");
    assert!(err.to_string().contains("reflash"), "{err}");
}

#[test]
fn normalization_and_choice() {
    assert_eq!(state(Good, Unbootable, Slot::B).normalized().next, Slot::A);
    assert_eq!(
        state(Bad, Unbootable, Slot::A).normalized().next,
        Slot::A,
        "nothing better to pick"
    );
    assert_eq!(
        state(Good, trying(0, 3), Slot::B).loader_choice().unwrap(),
        Slot::A
    );
    assert!(!trying(0, 3).is_bootable() && trying(1, 2).is_bootable());
}

#[test]
fn statuses_serialize_for_status_json() {
    let json = serde_json::to_string(&state(Good, trying(2, 1), Slot::B)).unwrap();
    assert_eq!(
        json,
        r#"{"a":{"status":{"state":"good"},"label":null},"b":{"status":{"state":"trying","tries_left":2,"tries_done":1},"label":null},"next":"b"}"#
    );
    assert_eq!(trying(2, 1).to_string(), "on trial (2 tries left, 1 done)");
}

/// Every status a slot can be in, with a few counter values.
fn all_statuses() -> Vec<SlotStatus> {
    vec![
        Good,
        trying(1, 0),
        trying(1, 2),
        trying(2, 1),
        trying(3, 0),
        Bad,
        Unbootable,
    ]
}

fn all_events() -> Vec<Event> {
    let mut events = vec![Event::Rollback, Event::Boot];
    for slot in Slot::ALL {
        events.push(Event::BeginInstall { target: slot });
        events.push(arm(slot, 1));
        events.push(arm(slot, 3));
        events.push(Event::MarkGood { slot });
    }
    events
}

/// Crash after every prefix of every planned step list, from every state with a bootable slot:
/// the loader must then pick a good slot or a fully armed one, never one invalidated for writing.
#[test]
fn every_prefix_of_every_plan_boots_a_good_or_armed_slot() {
    let mut plans = 0;
    let mut prefixes = 0;
    for a in all_statuses() {
        for b in all_statuses() {
            for next in Slot::ALL {
                let before = state(a, b, next);
                if before.loader_choice().is_err() {
                    continue; // already unbootable: no plan can be blamed
                }
                for booted in Slot::ALL {
                    for event in all_events() {
                        let Ok((after, steps)) = plan(&before, booted, event.clone()) else {
                            continue;
                        };
                        plans += 1;
                        let ctx = format!("{before:?} booted {booted} {event:?} -> {steps:?}");
                        for step in &steps {
                            if matches!(step, Step::Invalidate { .. } | Step::Arm { .. }) {
                                assert_ne!(step.slot(), booted, "writes the running slot: {ctx}");
                            }
                        }
                        let mut s = before.clone().normalized();
                        for k in 0..=steps.len() {
                            prefixes += 1;
                            let choice = s
                                .loader_choice()
                                .unwrap_or_else(|e| panic!("crash after {k}: {e}: {ctx}"));
                            let status = s.status(choice);
                            assert!(
                                matches!(status, Good | Trying { .. }),
                                "crash after {k} boots {choice} {status}: {ctx}"
                            );
                            let invalidated =
                                steps[..k].contains(&Step::Invalidate { slot: choice });
                            assert!(
                                !invalidated,
                                "crash after {k} boots half-written slot {choice}: {ctx}"
                            );
                            if before.status(booted) == Good {
                                assert_eq!(
                                    s.status(booted),
                                    Good,
                                    "running good slot degraded after {k}: {ctx}"
                                );
                            }
                            simulate_boot(&s)
                                .unwrap_or_else(|e| panic!("crash after {k}: {e}: {ctx}"));
                            if k < steps.len() {
                                s = apply_step(&s, &steps[k]);
                            }
                        }
                        if event == Event::Boot {
                            assert_eq!(after, simulate_boot(&before).unwrap().1, "{ctx}");
                        } else {
                            assert_eq!(s, after, "steps do not reach the planned state: {ctx}");
                        }
                    }
                }
            }
        }
    }
    assert!(
        plans > 300 && prefixes > plans,
        "{plans} plans, {prefixes} prefixes"
    );
}

/// Whole update cycles on the pure model, the way the updater and the loader interleave.
#[test]
fn update_cycles_on_the_model() {
    let mut s = BootState::fresh();
    let mut booted = Slot::A;
    for round in 0..4 {
        let target = booted.other();
        s = plan(&s, booted, Event::BeginInstall { target }).unwrap().0;
        s = plan(&s, booted, arm(target, 2)).unwrap().0;
        let (slot, after) = simulate_boot(&s).unwrap();
        assert_eq!(slot, target, "round {round}");
        booted = slot;
        s = plan(&after, booted, Event::MarkGood { slot: booted })
            .unwrap()
            .0;
        assert_eq!(s.status(booted), Good);
        assert_eq!(s.next, booted);
    }
    // A failing update: two tries, then back to the running slot.
    let target = booted.other();
    s = plan(&s, booted, Event::BeginInstall { target }).unwrap().0;
    s = plan(&s, booted, arm(target, 2)).unwrap().0;
    let mut seen = Vec::new();
    for _ in 0..3 {
        let (slot, after) = simulate_boot(&s).unwrap();
        seen.push(slot);
        s = after;
    }
    assert_eq!(seen, [target, target, booted]);
    assert_eq!(s.status(target), Bad);
    assert!(matches!(
        plan(&s, booted, Event::Rollback),
        Err(SlotsError::NoGoodSlot { .. })
    ));
}
