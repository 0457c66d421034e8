//! Every backend against the pure model: long pseudo-random sequences of installs, arms,
//! reboots (each followed by the health gate's commit when the booted slot is committed, as on
//! a device), mark-goods and rollbacks must leave each backend reading exactly what the model
//! says, and a crash after any prefix of any step list (simulated on a copy of the backend's
//! files) must read as the model's prefix state and boot the same, good or armed, slot.

mod common;

use std::path::Path;

use aperture_slots::{
    apply_step, plan, simulate_boot, write_initial_esp, BootControl, BootState, Event,
    FakeBootControl, Slot, SlotManager, SlotStatus, SystemdBoot,
};
use common::{boot, copy_tree, put_boot_files, put_var, tegra_at};

/// How to lay out a fresh backend in a folder and open it again there.
struct Rig {
    name: &'static str,
    init: fn(&Path),
    open: fn(&Path) -> Box<dyn BootControl>,
}

const RIGS: [Rig; 3] = [
    Rig {
        name: "fake",
        init: |root| drop(FakeBootControl::open(root.join("fake.json")).unwrap()),
        open: |root| Box::new(FakeBootControl::open(root.join("fake.json")).unwrap()),
    },
    Rig {
        name: "systemd-boot",
        init: |root| {
            write_initial_esp(root, &boot(Slot::A, "1.0.0"), &boot(Slot::B, "1.0.0")).unwrap();
            put_boot_files(root);
        },
        open: |root| Box::new(SystemdBoot::new(root.to_path_buf())),
    },
    Rig {
        name: "tegra",
        init: |root| {
            let efivars = root.join("efivars");
            std::fs::create_dir_all(&efivars).unwrap();
            for (name, value) in [
                ("RootfsStatusSlotA", 0),
                ("RootfsStatusSlotB", 0),
                ("RootfsRetryCountMax", 3),
                ("BootChainFwNext", 0),
            ] {
                put_var(&efivars, name, value);
            }
        },
        open: |root| Box::new(tegra_at(&root.join("efivars"), &root.join("ledger.json"))),
    },
];

/// A small deterministic generator (no dependency needed for a test walk).
struct Lcg(u64);
impl Lcg {
    fn below(&mut self, n: u64) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (self.0 >> 33) % n
    }
}

/// Crash after each proper prefix of `steps` on a copy of `root`: the copy must read as the
/// model's prefix state, and its loader must boot what the model's loader boots, a slot that
/// is good or armed.
fn check_crash_prefixes(
    rig: &Rig,
    root: &Path,
    before: &BootState,
    steps: &[aperture_slots::Step],
    ctx: &str,
) {
    let mut model = before.clone();
    for k in 0..steps.len() {
        let copy = tempfile::tempdir().unwrap();
        copy_tree(root, copy.path());
        let mut backend = (rig.open)(copy.path());
        for step in &steps[..k] {
            backend.persist(step).unwrap();
        }
        assert_eq!(
            backend.read().unwrap(),
            model,
            "{}: crash after {k} of {steps:?}: {ctx}",
            rig.name
        );
        let (want, _) = simulate_boot(&model).unwrap();
        let got = backend.loader_boot().unwrap();
        assert_eq!(got, want, "{}: boot after crash at {k}: {ctx}", rig.name);
        assert!(
            matches!(
                model.status(got),
                SlotStatus::Good | SlotStatus::Trying { .. }
            ),
            "{ctx}"
        );
        model = apply_step(&model, &steps[k]);
    }
}

fn walk(rig: &Rig, seed: u64, ops: usize) {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    (rig.init)(root);
    let mut booted = Slot::A;
    let mut slots = SlotManager::new((rig.open)(root), booted);
    let mut model = slots.state().unwrap();
    let mut rng = Lcg(seed);
    let mut counts = [0usize; 6];
    for op in 0..ops {
        let choice = rng.below(6) as usize;
        let ctx = format!("seed {seed} op {op} choice {choice} booted {booted} model {model:?}");
        if choice == 5 {
            let (want, after) = simulate_boot(&model).unwrap();
            let got = slots.backend_mut().loader_boot().unwrap();
            assert_eq!(got, want, "{}: loader: {ctx}", rig.name);
            booted = got;
            slots = SlotManager::new(slots.into_backend(), booted);
            model = after;
            // The health gate runs on every boot and commits a committed slot again: no step
            // in the model, but on Jetson the reset of the firmware's retry count, without
            // which the firmware gives up on a committed slot after its tries.
            if model.status(booted) == SlotStatus::Good {
                assert_eq!(
                    slots.mark_good().unwrap(),
                    model,
                    "{}: gate: {ctx}",
                    rig.name
                );
            }
            counts[5] += 1;
        } else {
            let target = if rng.below(8) == 0 {
                booted
            } else {
                booted.other()
            };
            let event = match choice {
                0 => Event::BeginInstall { target },
                1 | 2 => Event::Arm {
                    target,
                    tries: 1 + rng.below(3) as u32,
                    boot: boot(target, &format!("1.{op}.0")),
                },
                3 => Event::MarkGood { slot: booted },
                _ => Event::Rollback,
            };
            let planned = plan(&model, booted, event.clone());
            if let Ok((_, steps)) = &planned {
                check_crash_prefixes(rig, root, &model, steps, &ctx);
            }
            let result = match event {
                Event::BeginInstall { target } => slots.begin_install(target),
                Event::Arm {
                    target,
                    tries,
                    boot,
                } => slots.arm(target, tries, &boot),
                Event::MarkGood { .. } => slots.mark_good(),
                _ => slots.rollback(),
            };
            match (planned, result) {
                (Ok((after, _)), Ok(got)) => {
                    assert_eq!(got, after, "{}: {ctx}", rig.name);
                    model = after;
                    counts[choice] += 1;
                }
                (Err(want), Err(got)) => {
                    assert_eq!(want.to_string(), got.to_string(), "{}: {ctx}", rig.name)
                }
                (want, got) => panic!("{}: model {want:?} but backend {got:?}: {ctx}", rig.name),
            }
        }
        assert_eq!(
            slots.state().unwrap(),
            model,
            "{}: read after op: {ctx}",
            rig.name
        );
    }
    assert!(
        counts.iter().all(|c| *c > 0),
        "{}: every kind of operation succeeded at least once: {counts:?}",
        rig.name
    );
}

#[test]
fn fake_agrees_with_the_model() {
    for seed in [1, 2, 3] {
        walk(&RIGS[0], seed, 250);
    }
}

#[test]
fn systemd_boot_agrees_with_the_model() {
    for seed in [1, 2, 3] {
        walk(&RIGS[1], seed, 250);
    }
}

#[test]
fn tegra_agrees_with_the_model() {
    for seed in [1, 2, 3] {
        walk(&RIGS[2], seed, 250);
    }
}
