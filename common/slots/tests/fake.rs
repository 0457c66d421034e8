//! The fake backend: memory and JSON-file modes, fault injection at every persist of an
//! install (a power cut), and recovery by reopening the file and booting.

use aperture_slots::{
    BootControl, BootState, FakeBootControl, Slot, SlotBoot, SlotManager, SlotStatus, SlotsError,
    Step,
};

fn boot_b() -> SlotBoot {
    SlotBoot::for_slot(Slot::B, "Aperture 1.1.0", "root=PARTLABEL=rootfs_b ro")
}

/// The updater's flow up to the reboot, as the updater crate will run it.
fn install(slots: &mut SlotManager<FakeBootControl>) -> Result<(), SlotsError> {
    slots.begin_install(Slot::B)?;
    slots.arm(Slot::B, 3, &boot_b())?;
    Ok(())
}

#[test]
fn memory_mode_logs_steps() {
    let mut slots = SlotManager::new(FakeBootControl::fresh(), Slot::A);
    install(&mut slots).unwrap();
    let fake = slots.backend();
    assert_eq!(fake.persist_calls(), 3);
    assert_eq!(
        fake.persisted(),
        [
            Step::Invalidate { slot: Slot::B },
            Step::Arm {
                slot: Slot::B,
                tries: 3,
                boot: boot_b()
            },
            Step::SetNext { slot: Slot::B },
        ]
    );
    assert_eq!(fake.name(), "fake");
    assert!(fake.path().is_none());
}

#[test]
fn file_mode_survives_reopening() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("boot.json");
    let fresh = FakeBootControl::open(&path).unwrap();
    assert_eq!(fresh.read().unwrap(), BootState::fresh());
    assert!(path.exists(), "created on open");
    let mut slots = SlotManager::new(fresh, Slot::A);
    install(&mut slots).unwrap();
    drop(slots);

    let mut reopened = FakeBootControl::open(&path).unwrap();
    let state = reopened.read().unwrap();
    assert_eq!(
        (state.b.status, state.next),
        (
            SlotStatus::Trying {
                tries_left: 3,
                tries_done: 0
            },
            Slot::B
        )
    );
    assert_eq!(reopened.loader_boot().unwrap(), Slot::B);
    let again = FakeBootControl::open(&path).unwrap();
    assert_eq!(
        again.read().unwrap().b.status,
        SlotStatus::Trying {
            tries_left: 2,
            tries_done: 1
        }
    );
    assert!(!dir.path().join("boot.json.tmp").exists());

    std::fs::write(&path, "{").unwrap();
    let err = FakeBootControl::open(&path).unwrap_err();
    assert!(
        matches!(err, SlotsError::Malformed { .. }) && err.to_string().contains("boot.json"),
        "{err}"
    );
}

#[test]
fn power_cut_at_every_persist_of_an_install() {
    let calls = {
        let mut slots = SlotManager::new(FakeBootControl::fresh(), Slot::A);
        install(&mut slots).unwrap();
        slots.backend().persist_calls()
    };
    for n in 1..=calls {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("boot.json");
        let mut fake = FakeBootControl::open(&path).unwrap();
        fake.fail_at_persist(n);
        let mut slots = SlotManager::new(fake, Slot::A);
        let err = install(&mut slots).unwrap_err();
        assert!(
            matches!(err, SlotsError::InjectedFault { call } if call == n),
            "{err}"
        );
        assert_eq!(slots.backend().persisted().len(), n - 1);
        // Later persists fail too: the power is gone.
        assert!(slots
            .backend_mut()
            .persist(&Step::SetNext { slot: Slot::A })
            .is_err());
        drop(slots);

        // Power back on: the loader boots A, the good slot, and the install can start over.
        let mut fake = FakeBootControl::open(&path).unwrap();
        assert_eq!(fake.loader_boot().unwrap(), Slot::A, "cut at persist {n}");
        let mut slots = SlotManager::new(fake, Slot::A);
        install(&mut slots).unwrap();
        assert_eq!(slots.backend_mut().loader_boot().unwrap(), Slot::B);
    }
}

#[test]
fn fault_is_cleared_by_a_boot_or_explicitly() {
    let mut fake = FakeBootControl::new(BootState::fresh());
    fake.fail_at_persist(2);
    fake.persist(&Step::Invalidate { slot: Slot::B }).unwrap();
    assert!(fake.persist(&Step::Invalidate { slot: Slot::B }).is_err());
    fake.clear_fault();
    fake.persist(&Step::Invalidate { slot: Slot::B }).unwrap();
    fake.fail_at_persist(0);
    assert!(
        fake.persist(&Step::Invalidate { slot: Slot::B }).is_err(),
        "0 means the next call"
    );
    assert_eq!(fake.loader_boot().unwrap(), Slot::A);
    fake.persist(&Step::Invalidate { slot: Slot::B }).unwrap();
    assert_eq!(fake.persist_calls(), 5);
}

#[test]
fn create_overwrites_with_a_given_state() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("boot.json");
    let mut on_trial = BootState::fresh();
    on_trial.b.status = SlotStatus::Trying {
        tries_left: 1,
        tries_done: 2,
    };
    on_trial.next = Slot::B;
    let fake = FakeBootControl::create(&path, on_trial.clone()).unwrap();
    assert_eq!(fake.read().unwrap(), on_trial);
    assert_eq!(
        FakeBootControl::open(&path).unwrap().read().unwrap(),
        on_trial
    );
    let report = SlotManager::new(fake, Slot::B).status_report().unwrap();
    assert!(report.slots[1].booted && report.slots[1].next && !report.slots[0].next);
}
