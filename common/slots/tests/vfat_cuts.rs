//! What a power cut in the middle of a vfat rename leaves on the ESP, and how the systemd-boot
//! backend reads and repairs it. A vfat rename of a long name creates the new directory entry
//! and then deletes the old one, in Linux and in the firmware's FAT driver, so a cut between the
//! two leaves two live entries of one slot with the same content. Such a slot must read as its
//! least bootable entry (a leftover entry never makes a failed slot good or bootable again), the
//! next change of the boot state removes the other entry, and installs keep working.

mod common;

use std::fs;

use aperture_slots::{
    render_entry, BootControl, Slot, SlotManager, SlotStatus, SlotsError, SystemdBoot,
};
use common::{boot, fresh_esp, names};

/// Both names of a cut rename: `from` kept, `to` created with the same content.
fn cut_rename(esp: &SystemdBoot, from: &str, to: &str) {
    let dir = esp.entries_dir();
    fs::copy(dir.join(from), dir.join(to)).unwrap();
}

/// B installed and armed with `tries`, running A.
fn armed(tries: u32) -> (tempfile::TempDir, SystemdBoot) {
    let (dir, esp) = fresh_esp();
    let mut on_a = SlotManager::new(esp, Slot::A);
    on_a.begin_install(Slot::B).unwrap();
    on_a.arm(Slot::B, tries, &boot(Slot::B, "2.0.0")).unwrap();
    (dir, on_a.into_backend())
}

fn entries(esp: &SystemdBoot) -> Vec<String> {
    names(&esp.entries_dir())
        .into_iter()
        .filter(|n| n.ends_with(".conf"))
        .collect()
}

#[test]
fn a_cut_loader_count_reads_as_the_more_tried_entry() {
    let (_d, mut esp) = armed(3);
    // The firmware counted a try: slot-b+3.conf -> slot-b+2-1.conf, cut in the middle.
    cut_rename(&esp, "slot-b+3.conf", "slot-b+2-1.conf");
    let state = esp.read().unwrap();
    assert_eq!(
        state.b.status,
        SlotStatus::Trying {
            tries_left: 2,
            tries_done: 1
        }
    );
    // B booted and passes its health gate: the commit cleans up and blesses.
    let mut on_b = SlotManager::new(esp, Slot::B);
    assert_eq!(on_b.mark_good().unwrap().b.status, SlotStatus::Good);
    assert_eq!(entries(on_b.backend()), ["slot-a.conf", "slot-b.conf"]);
    esp = on_b.into_backend();
    assert_eq!(esp.read().unwrap().b.status, SlotStatus::Good);
}

#[test]
fn a_cut_bless_reads_as_on_trial_until_the_commit_runs_again() {
    let (_d, mut esp) = armed(3);
    assert_eq!(esp.loader_boot().unwrap(), Slot::B);
    // The commit's rename slot-b+2-1.conf -> slot-b.conf, cut in the middle.
    cut_rename(&esp, "slot-b+2-1.conf", "slot-b.conf");
    let state = esp.read().unwrap();
    assert_eq!(
        state.b.status,
        SlotStatus::Trying {
            tries_left: 2,
            tries_done: 1
        },
        "not good until the commit completes"
    );
    // The health gate commits again on the next boot: repaired and good.
    let mut on_b = SlotManager::new(esp, Slot::B);
    on_b.mark_good().unwrap();
    assert_eq!(entries(on_b.backend()), ["slot-a.conf", "slot-b.conf"]);
    assert_eq!(on_b.state().unwrap().b.status, SlotStatus::Good);
}

#[test]
fn a_leftover_entry_never_makes_a_failed_slot_good_or_bootable() {
    for leftover in ["slot-b.conf", "slot-b+1-2.conf", "slot-b+3.conf"] {
        let (_d, mut esp) = armed(3);
        for _ in 0..3 {
            assert_eq!(esp.loader_boot().unwrap(), Slot::B);
        }
        assert_eq!(esp.loader_boot().unwrap(), Slot::A, "tries used up");
        // A more bootable name of B is left beside its exhausted entry.
        cut_rename(&esp, "slot-b+0-3.conf", leftover);
        let state = esp.read().unwrap();
        assert_eq!(
            (state.b.status, state.next),
            (SlotStatus::Bad, Slot::A),
            "{leftover}"
        );
        let mut on_a = SlotManager::new(esp, Slot::A);
        let err = on_a.rollback().unwrap_err();
        assert!(
            matches!(
                err,
                SlotsError::NoGoodSlot {
                    slot: Slot::B,
                    status: SlotStatus::Bad
                }
            ),
            "{leftover}: {err}"
        );
        // A's health gate commits A: the leftover goes, the loader keeps booting A.
        on_a.mark_good().unwrap();
        assert_eq!(
            entries(on_a.backend()),
            ["slot-a.conf", "slot-b+0-3.conf"],
            "{leftover}"
        );
        assert_eq!(on_a.backend_mut().loader_boot().unwrap(), Slot::A);
        // And the next install into B works.
        on_a.begin_install(Slot::B).unwrap();
        on_a.arm(Slot::B, 2, &boot(Slot::B, "2.0.1")).unwrap();
        assert_eq!(on_a.backend_mut().loader_boot().unwrap(), Slot::B);
    }
}

#[test]
fn an_install_over_two_entries_of_the_target_succeeds() {
    let (_d, esp) = fresh_esp();
    // Both the good entry and an armed one of B (an arm over a cut invalidation).
    fs::write(
        esp.entries_dir().join("slot-b+3.conf"),
        render_entry(Slot::B, 0, &boot(Slot::B, "1.9.0")),
    )
    .unwrap();
    fs::write(esp.entries_dir().join("slot-b+3.conf.tmp"), "half").unwrap();
    let mut on_a = SlotManager::new(esp, Slot::A);
    on_a.begin_install(Slot::B).unwrap();
    assert_eq!(entries(on_a.backend()), ["slot-a.conf"]);
    assert!(!names(&on_a.backend().entries_dir()).contains(&"slot-b+3.conf.tmp".to_string()));
    on_a.arm(Slot::B, 3, &boot(Slot::B, "2.0.0")).unwrap();
    assert_eq!(on_a.backend_mut().loader_boot().unwrap(), Slot::B);
}
