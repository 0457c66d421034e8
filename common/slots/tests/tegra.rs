//! The Tegra backend on temporary efivars folders: variable layout, full update cycles with the
//! simulated firmware, the updater clearing a 0xFF status, and immutable variable files.

mod common;

use std::fs::File;

use aperture_slots::tegra::{VAR_FW_NEXT, VAR_RETRY_COUNT_MAX, VAR_STATUS_A, VAR_STATUS_B};
use aperture_slots::{
    BootControl, BootState, Slot, SlotManager, SlotStatus, SlotsError, Step, Tegra,
};
use common::{boot, fresh_tegra, get_var, ledger_json, put_var, tegra_at};
use rustix::fs::IFlags;

fn var(t: &Tegra, name: &str) -> Option<u32> {
    get_var(t.efivars_dir(), name)
}

fn ledger(t: &Tegra) -> serde_json::Value {
    ledger_json(std::path::Path::new(&t.ledger_store().describe())).unwrap()
}

#[test]
fn fresh_device_reads_both_good() {
    let (dir, tegra) = fresh_tegra();
    assert_eq!(tegra.read().unwrap(), BootState::fresh());
    assert!(
        !dir.path().join("ledger.json").exists(),
        "reading writes nothing"
    );
    assert_eq!(
        tegra.variable_path("BootChainFwNext"),
        tegra
            .efivars_dir()
            .join("BootChainFwNext-781e084c-a330-417c-b678-38e696380cb9")
    );
    // Absent variables take the firmware defaults.
    let empty = tempfile::tempdir().unwrap();
    let bare = tegra_at(empty.path(), &empty.path().join("ledger.json"));
    assert_eq!(bare.read().unwrap(), BootState::fresh());
}

#[test]
fn install_arm_boot_mark_good() {
    let (_dir, tegra) = fresh_tegra();
    let mut on_a = SlotManager::new(tegra, Slot::A);
    on_a.begin_install(Slot::B).unwrap();
    assert_eq!(var(on_a.backend(), VAR_STATUS_B), Some(0xFF));
    assert_eq!(ledger(on_a.backend())["b"]["phase"], "installing");
    assert_eq!(on_a.state().unwrap().b.status, SlotStatus::Unbootable);

    let planned = on_a.arm(Slot::B, 3, &boot(Slot::B, "1.1.0")).unwrap();
    let t = on_a.backend();
    assert_eq!(
        (
            var(t, VAR_STATUS_B),
            var(t, VAR_RETRY_COUNT_MAX),
            var(t, VAR_FW_NEXT)
        ),
        (Some(0), Some(3), Some(1))
    );
    assert_eq!(
        ledger(t)["b"],
        serde_json::json!({"phase": "trying", "tries_done": 0, "label": "Aperture 1.1.0"})
    );
    assert_eq!(on_a.state().unwrap(), planned);

    assert_eq!(on_a.backend_mut().loader_boot().unwrap(), Slot::B);
    let mut on_b = SlotManager::new(on_a.into_backend(), Slot::B);
    assert_eq!(
        on_b.state().unwrap().b.status,
        SlotStatus::Trying {
            tries_left: 2,
            tries_done: 1
        }
    );
    let after = on_b.mark_good().unwrap();
    assert_eq!(on_b.state().unwrap(), after);
    assert_eq!((after.b.status, after.next), (SlotStatus::Good, Slot::B));
    assert_eq!(ledger(on_b.backend())["b"]["phase"], "committed");
    for _ in 0..4 {
        // The firmware counts committed slots too; the health gate's commit of each boot
        // resets the count.
        assert_eq!(on_b.backend_mut().loader_boot().unwrap(), Slot::B);
        on_b.mark_good().unwrap();
    }
    let report = on_b.status_report().unwrap();
    assert_eq!(report.backend, "tegra");
    assert_eq!(report.slots[1].label.as_deref(), Some("Aperture 1.1.0"));
}

#[test]
fn three_failed_boots_mark_unbootable_and_switch() {
    let (_dir, tegra) = fresh_tegra();
    let mut on_a = SlotManager::new(tegra, Slot::A);
    on_a.begin_install(Slot::B).unwrap();
    on_a.arm(Slot::B, 3, &boot(Slot::B, "1.1.0")).unwrap();
    let mut seen = Vec::new();
    for _ in 0..5 {
        seen.push(on_a.backend_mut().loader_boot().unwrap());
    }
    assert_eq!(seen, [Slot::B, Slot::B, Slot::B, Slot::A, Slot::A]);
    let t = on_a.backend();
    assert_eq!(
        (var(t, VAR_STATUS_B), var(t, VAR_FW_NEXT)),
        (Some(0xFF), Some(0)),
        "firmware gave up on B"
    );
    let state = on_a.state().unwrap();
    assert_eq!((state.b.status, state.next), (SlotStatus::Bad, Slot::A));

    let err = on_a.rollback().unwrap_err();
    assert!(
        matches!(err, SlotsError::NoGoodSlot { slot: Slot::B, .. }),
        "{err}"
    );

    // A boots and passes its health gate: committed again, the firmware's count reset.
    on_a.mark_good().unwrap();
    // A fixed image: the updater's arm clears the 0xFF the firmware set.
    on_a.begin_install(Slot::B).unwrap();
    on_a.arm(Slot::B, 2, &boot(Slot::B, "1.1.1")).unwrap();
    assert_eq!(var(on_a.backend(), VAR_STATUS_B), Some(0));
    assert_eq!(var(on_a.backend(), VAR_RETRY_COUNT_MAX), Some(2));
    assert_eq!(on_a.backend_mut().loader_boot().unwrap(), Slot::B);
}

#[test]
fn install_into_a_slot_that_was_already_unbootable() {
    let (_dir, tegra) = fresh_tegra();
    put_var(tegra.efivars_dir(), VAR_STATUS_B, 0xFF);
    assert_eq!(tegra.read().unwrap().b.status, SlotStatus::Unbootable);
    let mut on_a = SlotManager::new(tegra, Slot::A);
    on_a.begin_install(Slot::B).unwrap();
    on_a.arm(Slot::B, 3, &boot(Slot::B, "1.1.0")).unwrap();
    assert_eq!(
        var(on_a.backend(), VAR_STATUS_B),
        Some(0),
        "arm must clear 0xFF"
    );
    assert_eq!(on_a.backend_mut().loader_boot().unwrap(), Slot::B);
    let mut on_b = SlotManager::new(on_a.into_backend(), Slot::B);
    on_b.mark_good().unwrap();
    assert_eq!(on_b.state().unwrap().b.status, SlotStatus::Good);
}

#[test]
fn rollback_switches_boot_chain() {
    let (_dir, tegra) = fresh_tegra();
    let mut on_a = SlotManager::new(tegra, Slot::A);
    on_a.begin_install(Slot::B).unwrap();
    on_a.arm(Slot::B, 3, &boot(Slot::B, "1.1.0")).unwrap();
    let booted = on_a.backend_mut().loader_boot().unwrap();
    let mut on_b = SlotManager::new(on_a.into_backend(), booted);
    on_b.mark_good().unwrap();
    let after = on_b.rollback().unwrap();
    assert_eq!(after.next, Slot::A);
    assert_eq!(var(on_b.backend(), VAR_FW_NEXT), Some(0));
    assert_eq!(on_b.state().unwrap(), after);
    assert_eq!(on_b.backend_mut().loader_boot().unwrap(), Slot::A);
}

#[test]
fn success_on_the_last_try_is_kept() {
    let (_dir, tegra) = fresh_tegra();
    let mut on_a = SlotManager::new(tegra, Slot::A);
    on_a.begin_install(Slot::B).unwrap();
    on_a.arm(Slot::B, 1, &boot(Slot::B, "1.1.0")).unwrap();
    assert_eq!(on_a.backend_mut().loader_boot().unwrap(), Slot::B);
    let state = on_a.state().unwrap();
    assert_eq!(
        (state.b.status, state.next),
        (SlotStatus::Bad, Slot::A),
        "no tries left: A would boot next"
    );
    let mut on_b = SlotManager::new(on_a.into_backend(), Slot::B);
    let after = on_b.mark_good().unwrap();
    assert_eq!(on_b.state().unwrap(), after);
    assert_eq!(after.next, Slot::B);
    assert_eq!(on_b.backend_mut().loader_boot().unwrap(), Slot::B);
}

#[test]
fn refusals_and_malformed_variables() {
    let (_dir, mut tegra) = fresh_tegra();
    let err = tegra
        .persist(&Step::Arm {
            slot: Slot::B,
            tries: 3,
            boot: boot(Slot::B, "x"),
        })
        .unwrap_err();
    assert!(
        matches!(
            err,
            SlotsError::InvalidTransition {
                event: "arm",
                slot: Slot::B,
                from: SlotStatus::Good,
                ..
            }
        ),
        "{err}"
    );
    assert_eq!(var(&tegra, VAR_STATUS_B), Some(0), "nothing written");

    tegra.persist(&Step::Invalidate { slot: Slot::B }).unwrap();
    let err = tegra.persist(&Step::Bless { slot: Slot::B }).unwrap_err();
    assert!(err.to_string().contains("install into it again"), "{err}");

    put_var(tegra.efivars_dir(), VAR_FW_NEXT, 5);
    let err = tegra.read().unwrap_err();
    assert!(matches!(err, SlotsError::Malformed { .. }), "{err}");
    assert!(
        err.to_string().contains("BootChainFwNext") && err.to_string().contains("expected 0"),
        "{err}"
    );

    put_var(tegra.efivars_dir(), VAR_FW_NEXT, 0);
    std::fs::write(tegra.ledger_store().describe(), "{not json").unwrap();
    let err = tegra.read().unwrap_err();
    assert!(err.to_string().contains("ledger.json"), "{err}");
    assert!(!err.to_string().contains("remove"), "{err}");
}

/// A power cut inside a step (between its variable and ledger writes) reads as the state before
/// or after the step, never as a bootable half-written slot. Failures are provoked by blocking
/// the ledger's writes, or by putting a folder where a variable must be written.
#[test]
fn crash_inside_a_step_never_exposes_a_half_written_slot() {
    let (dir, tegra) = fresh_tegra();
    let blocker = dir.path().join("ledger.block");
    std::fs::write(&blocker, "").unwrap();
    let mut on_a = SlotManager::new(tegra, Slot::A);
    // Invalidate: the variable is written, the state file is not.
    assert!(matches!(
        on_a.begin_install(Slot::B),
        Err(SlotsError::Io { .. })
    ));
    let state = on_a.state().unwrap();
    assert_eq!(
        (state.b.status, state.next),
        (SlotStatus::Unbootable, Slot::A)
    );
    assert_eq!(on_a.backend_mut().loader_boot().unwrap(), Slot::A);
    std::fs::remove_file(&blocker).unwrap();
    on_a.begin_install(Slot::B).unwrap();

    // Arm: state file and retry count written, the status variable not cleared.
    let status_b = on_a.backend().variable_path(VAR_STATUS_B);
    std::fs::remove_file(&status_b).unwrap();
    std::fs::create_dir(&status_b).unwrap();
    assert!(on_a.arm(Slot::B, 3, &boot(Slot::B, "1.1.0")).is_err());
    std::fs::remove_dir(&status_b).unwrap();
    put_var(on_a.backend().efivars_dir(), VAR_STATUS_B, 0xFF); // as it was before the cut
    let state = on_a.state().unwrap();
    assert_eq!(
        (state.b.status, state.next),
        (SlotStatus::Unbootable, Slot::A)
    );
    assert_eq!(on_a.backend_mut().loader_boot().unwrap(), Slot::A);

    // The health gate commits A at that boot (the firmware's count is reset); the interrupted
    // arm is simply repeated.
    on_a.mark_good().unwrap();
    on_a.arm(Slot::B, 3, &boot(Slot::B, "1.1.0")).unwrap();
    assert_eq!(on_a.backend_mut().loader_boot().unwrap(), Slot::B);
}

#[test]
fn no_bootable_slot_in_the_firmware_simulation() {
    let (_dir, mut tegra) = fresh_tegra();
    put_var(tegra.efivars_dir(), VAR_STATUS_A, 0xFF);
    put_var(tegra.efivars_dir(), VAR_STATUS_B, 0xFF);
    assert!(matches!(
        tegra.loader_boot(),
        Err(SlotsError::NoBootableSlot { .. })
    ));
}

/// On a file system with inode flags and with CAP_LINUX_IMMUTABLE (root here), variable files
/// made immutable like efivarfs does are still written, and stay immutable.
#[test]
fn immutable_variable_files_are_written_and_stay_immutable() {
    let (_dir, tegra) = fresh_tegra();
    let files: Vec<_> = [VAR_STATUS_B, VAR_FW_NEXT, VAR_RETRY_COUNT_MAX]
        .iter()
        .map(|n| tegra.variable_path(n))
        .collect();
    for f in &files {
        let file = File::open(f).unwrap();
        let flags = match rustix::fs::ioctl_getflags(&file) {
            Ok(flags) => flags,
            Err(e) => {
                eprintln!("SKIPPED: no inode flags on {}: {e}", f.display());
                return;
            }
        };
        if let Err(e) = rustix::fs::ioctl_setflags(&file, flags | IFlags::IMMUTABLE) {
            eprintln!(
                "SKIPPED: cannot make {} immutable (needs CAP_LINUX_IMMUTABLE): {e}",
                f.display()
            );
            return;
        }
    }
    let mut on_a = SlotManager::new(tegra, Slot::A);
    on_a.begin_install(Slot::B).unwrap();
    on_a.arm(Slot::B, 3, &boot(Slot::B, "1.1.0")).unwrap();
    assert_eq!(
        (
            var(on_a.backend(), VAR_STATUS_B),
            var(on_a.backend(), VAR_FW_NEXT)
        ),
        (Some(0), Some(1))
    );
    for f in &files {
        let file = File::open(f).unwrap();
        let flags = rustix::fs::ioctl_getflags(&file).unwrap();
        assert!(
            flags.contains(IFlags::IMMUTABLE),
            "{} lost its immutable flag",
            f.display()
        );
        rustix::fs::ioctl_setflags(
            &file,
            IFlags::from_bits_retain(flags.bits() & !IFlags::IMMUTABLE.bits()),
        )
        .unwrap();
    }
}

/// Ten warm reboots of a committed slot, each followed by the health gate's commit, keep
/// booting it: L4TLauncher counts every boot (the count of slot A reads 2 after each), and the
/// commit's reset (`nvbootctrl verify` on a device) gives it its tries back.
#[test]
fn ten_warm_reboots_of_a_committed_slot_each_followed_by_its_commit_keep_booting_it() {
    let (_dir, tegra) = fresh_tegra();
    let mut on_a = SlotManager::new(tegra, Slot::A);
    for reboot in 1..=10 {
        assert_eq!(
            on_a.backend_mut().loader_boot().unwrap(),
            Slot::A,
            "reboot {reboot}"
        );
        let register = on_a.backend().simulated_register().get().unwrap();
        assert_eq!(register.count(Slot::A), 2, "reboot {reboot}: one try used");
        on_a.mark_good().unwrap();
        assert!(
            !on_a.backend().simulated_register().get().unwrap().valid(),
            "reboot {reboot}: the commit resets the count"
        );
    }
    assert_eq!(var(on_a.backend(), VAR_STATUS_A), Some(0));
    assert_eq!(on_a.state().unwrap(), BootState::fresh());
}

/// What the reset prevents: without it the firmware gives up on a committed slot after
/// RootfsRetryCountMax warm reboots (marks it 0xFF) and boots the other one. A power loss
/// clears the count (the register does not survive it), as a cold boot does.
#[test]
fn without_the_reset_a_committed_slot_is_given_up_after_retry_count_max_warm_reboots() {
    let (_dir, mut tegra) = fresh_tegra();
    for _ in 0..2 {
        assert_eq!(tegra.loader_boot().unwrap(), Slot::A);
    }
    tegra.simulate_power_loss().unwrap();
    let mut seen = Vec::new();
    for _ in 0..5 {
        seen.push(tegra.loader_boot().unwrap());
    }
    assert_eq!(seen, [Slot::A, Slot::A, Slot::A, Slot::B, Slot::B]);
    assert_eq!(var(&tegra, VAR_STATUS_A), Some(0xFF));
    assert_eq!(var(&tegra, VAR_FW_NEXT), Some(1));
    let state = tegra.read().unwrap();
    assert_eq!(
        (state.a.status, state.next),
        (SlotStatus::Unbootable, Slot::B)
    );
}

/// A slot on trial whose health gate never passes is marked unbootable after
/// RootfsRetryCountMax tries and the other slot boots, and keeps booting: its gate passes on
/// every boot.
#[test]
fn a_trial_slot_whose_gate_never_passes_is_given_up_after_its_tries_and_the_other_boots() {
    let (_dir, tegra) = fresh_tegra();
    let mut on_a = SlotManager::new(tegra, Slot::A);
    on_a.mark_good().unwrap();
    on_a.begin_install(Slot::B).unwrap();
    on_a.arm(Slot::B, 3, &boot(Slot::B, "1.1.0")).unwrap();
    let mut backend = on_a.into_backend();
    let mut seen = Vec::new();
    for _ in 0..10 {
        let booted = backend.loader_boot().unwrap();
        seen.push(booted);
        let mut slots = SlotManager::new(backend, booted);
        // The gate passes on the committed slot only.
        if slots.state().unwrap().status(booted) == SlotStatus::Good {
            slots.mark_good().unwrap();
        }
        backend = slots.into_backend();
    }
    let mut want = vec![Slot::B; 3];
    want.extend([Slot::A; 7]);
    assert_eq!(seen, want);
    assert_eq!(var(&backend, VAR_STATUS_B), Some(0xFF));
    let state = backend.read().unwrap();
    assert_eq!((state.b.status, state.next), (SlotStatus::Bad, Slot::A));
    assert_eq!(state.a.status, SlotStatus::Good);
}

/// The firmware keeps 2 bits per count: more than 3 tries would read as 0 and the slot would
/// never boot, so Tegra refuses them before anything is written.
#[test]
fn more_than_three_tries_are_refused_on_tegra_before_anything_is_written() {
    let (_dir, tegra) = fresh_tegra();
    let mut on_a = SlotManager::new(tegra, Slot::A);
    on_a.begin_install(Slot::B).unwrap();
    let err = on_a.arm(Slot::B, 4, &boot(Slot::B, "1.1.0")).unwrap_err();
    assert!(
        matches!(
            err,
            SlotsError::InvalidTries {
                tries: 4,
                max: 3,
                ..
            }
        ),
        "{err}"
    );
    assert_eq!(var(on_a.backend(), VAR_RETRY_COUNT_MAX), Some(3));
    assert_eq!(var(on_a.backend(), VAR_STATUS_B), Some(0xFF));
    assert_eq!(on_a.backend().max_tries(), 3);
    // The step itself refuses too.
    let err = on_a
        .backend_mut()
        .persist(&Step::Arm {
            slot: Slot::B,
            tries: 5,
            boot: boot(Slot::B, "x"),
        })
        .unwrap_err();
    assert!(matches!(err, SlotsError::InvalidTries { .. }), "{err}");
}

/// On a device the reset is NVIDIA's `nvbootctrl verify`; when it cannot run, the commit has
/// been persisted and the failure names the tool and what it risks.
#[test]
fn a_reset_that_cannot_run_is_an_error_after_the_commit() {
    let (dir, tegra) = fresh_tegra();
    let tegra = tegra.with_retry_reset(Box::new(aperture_slots::tegra::retry::NvBootCtrl::new(
        dir.path().join("usr/sbin/nvbootctrl"),
    )));
    let mut on_a = SlotManager::new(tegra, Slot::A);
    on_a.begin_install(Slot::B).unwrap();
    on_a.arm(Slot::B, 2, &boot(Slot::B, "1.1.0")).unwrap();
    let mut backend = on_a.into_backend();
    assert_eq!(backend.loader_boot().unwrap(), Slot::B);
    let mut on_b = SlotManager::new(backend, Slot::B);
    let err = on_b.mark_good().unwrap_err();
    assert!(matches!(err, SlotsError::RetryReset { .. }), "{err}");
    assert!(err.to_string().contains("nvbootctrl verify"), "{err}");
    assert_eq!(on_b.state().unwrap().b.status, SlotStatus::Good);
}
