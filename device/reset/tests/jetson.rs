//! Reset on Jetson layouts (AGX Orin: `A_kernel`/`B_kernel`; AGX Xavier: `kernel`/`kernel_b`)
//! with the Tegra boot control (NVIDIA's UEFI variables in a folder, the ledger in the state
//! store, the firmware simulated): level 2 writes `APP`/`APP_b`, each chain's boot image and
//! device tree through the updater's installer, exactly as on the qemu board, and survives a
//! power cut at every step and write; level 1 re-verifies the boot partitions too.

mod common;

use std::sync::Arc;

use aperture_appliance::Board;
use aperture_reset::seams::{FakeDiscardMode, FakeReboot, FaultPoint, Faults};
use aperture_reset::{Level, Outcome, ResetError, Step};
use aperture_slots::tegra::efivar::NVIDIA_GUID;
use aperture_slots::tegra::{VAR_FW_NEXT, VAR_STATUS_A, VAR_STATUS_B};
use aperture_slots::{Slot, SlotStatus};
use common::*;

const JETSONS: [Board; 2] = [Board::JetsonOrinAgx, Board::JetsonXavierAgx];

fn run(
    rig: &Rig,
    faults: Arc<Faults>,
    f: impl FnOnce(&mut aperture_reset::Reset<'_>) -> Result<Outcome, ResetError>,
) -> Result<Outcome, ResetError> {
    rig.with_reset(
        &rig.fresh_crypt(),
        faults,
        FakeDiscardMode::Zeroes,
        &FakeReboot::default(),
        f,
    )
}

/// A NVIDIA variable of the rig, if set.
fn var(rig: &Rig, name: &str) -> Option<u32> {
    let path = rig.files.efivars().join(format!("{name}-{NVIDIA_GUID}"));
    let bytes = std::fs::read(path).ok()?;
    Some(u32::from_le_bytes(bytes[4..8].try_into().unwrap()))
}

#[test]
fn level2_reinstalls_app_app_b_and_both_boot_chains_on_orin_and_xavier() {
    for board in JETSONS {
        let rig = Rig::jetson(board);
        let before_a = rig.read_partition(&rig.rootfs(Slot::A));
        assert_eq!(
            run(&rig, Arc::new(Faults::none()), |r| r.start(Level::Two)).unwrap(),
            Outcome::Rebooting {
                step: Step::RebootToFactory
            },
            "{board}"
        );
        // The first half: B written through the installer and armed in NVIDIA's variables.
        assert_eq!(var(&rig, VAR_STATUS_B), Some(0), "{board}");
        assert_eq!(var(&rig, VAR_FW_NEXT), Some(1), "{board}: B boots next");
        assert_eq!(rig.power_on(), Slot::B, "{board}");
        assert!(matches!(
            rig.state().status(Slot::B),
            SlotStatus::Trying { .. }
        ));
        assert_eq!(
            run(&rig, Arc::new(Faults::none()), |r| r.resume()).unwrap(),
            Outcome::AwaitingHealthGate { slot: Slot::B }
        );
        assert_eq!(
            rig.read_partition(&rig.rootfs(Slot::A)),
            before_a,
            "{board}: APP stays the fallback until the gate passed"
        );
        rig.health_gate_passes();
        assert_eq!(
            run(&rig, Arc::new(Faults::none()), |r| r.resume()).unwrap(),
            Outcome::Done { level: Level::Two }
        );
        // Both slots verify block for block (rootfs, boot image with its header, device tree)
        // and both are good; B, the slot that passed its gate, stays the next boot.
        rig.assert_factory_everywhere();
        assert_eq!(
            (var(&rig, VAR_STATUS_A), var(&rig, VAR_STATUS_B)),
            (Some(0), Some(0)),
            "{board}"
        );
        assert_eq!(rig.state().next, Slot::B);
        assert_eq!(rig.power_on(), Slot::B);
        rig.health_gate_passes();
        assert_eq!(
            run(&rig, Arc::new(Faults::none()), |r| r.resume()).unwrap(),
            Outcome::Nothing
        );
    }
}

#[test]
fn level1_on_jetson_reverifies_the_boot_image_and_the_device_tree() {
    for board in JETSONS {
        let rig = Rig::jetson(board);
        let layout = board.slot_layout();
        // One flipped byte in slot A's initrd (inside its boot image) and in B's device tree.
        let kernel_a = layout.kernel(Slot::A).unwrap();
        let at = 2048 + 20_480 + 100;
        let mut byte = rig.read_partition(&kernel_a)[at..at + 1].to_vec();
        byte[0] ^= 0x01;
        rig.write_partition(&kernel_a, at as u64, &byte);
        let reboot = FakeReboot::default();
        let report = rig
            .with_reset(
                &rig.fresh_crypt(),
                Arc::new(Faults::none()),
                FakeDiscardMode::Zeroes,
                &reboot,
                |r| r.level1(),
            )
            .unwrap();
        assert_eq!(report.chosen, Slot::B, "{board}");
        assert!(
            report.refused[0].1.contains(&kernel_a),
            "{board}: {:?}",
            report.refused
        );
        assert_eq!(var(&rig, VAR_FW_NEXT), Some(1), "{board}");
        let dtb_b = layout.kernel_dtb(Slot::B).unwrap();
        let mut byte = rig.read_partition(&dtb_b)[10..11].to_vec();
        byte[0] ^= 0x80;
        rig.write_partition(&dtb_b, 10, &byte);
        let err = rig
            .with_reset(
                &rig.fresh_crypt(),
                Arc::new(Faults::none()),
                FakeDiscardMode::Zeroes,
                &reboot,
                |r| r.level1(),
            )
            .unwrap_err();
        assert!(
            matches!(err, ResetError::NoVerifiedSlot { .. }) && err.to_string().contains(&dtb_b),
            "{board}: {err}"
        );
    }
}

/// Runs a level 2 on `board` with a power cut at `point`, then boots until it is done (the
/// health gate passing whenever a boot waits for it); both slots then hold the factory image.
fn cut_level2_and_recover(board: Board, point: FaultPoint) -> bool {
    let rig = Rig::jetson(board);
    let mut faults = Arc::new(Faults::at(point));
    let mut result = run(&rig, faults.clone(), |r| r.start(Level::Two));
    let mut cut = false;
    let mut start_again = false;
    for boot in 0..12 {
        assert!(boot < 11, "{board} {point}: the reset never finishes");
        match result {
            Ok(Outcome::Done { .. }) => break,
            // Cut before the journal's first write: no reset happened; start it again.
            Ok(Outcome::Nothing) if cut && rig.journal().is_none() && !start_again => {
                start_again = true;
            }
            Ok(Outcome::Rebooting { .. }) => {
                rig.power_on();
            }
            Ok(Outcome::AwaitingHealthGate { slot }) => {
                assert_eq!(slot, rig.booted());
                rig.health_gate_passes();
            }
            Ok(other) => panic!("{board} {point}: unexpected {other:?}"),
            Err(e) if e.is_injected() => {
                cut = true;
                faults = Arc::new(Faults::none());
                rig.power_on();
            }
            Err(e) => panic!("{board} {point}: {e}"),
        }
        let again = std::mem::take(&mut start_again);
        result = run(&rig, faults.clone(), |r| {
            if again {
                r.start(Level::Two)
            } else {
                r.resume()
            }
        });
    }
    rig.assert_factory_everywhere();
    cut
}

#[test]
fn a_power_cut_at_every_step_and_write_of_a_level2_on_orin_is_recovered() {
    let board = Board::JetsonOrinAgx;
    // Writes of an uninterrupted run, counted.
    let rig = Rig::jetson(board);
    let faults = Arc::new(Faults::none());
    let mut out = run(&rig, faults.clone(), |r| r.start(Level::Two)).unwrap();
    loop {
        match out {
            Outcome::Rebooting { .. } => {
                rig.power_on();
            }
            Outcome::AwaitingHealthGate { .. } => rig.health_gate_passes(),
            _ => break,
        }
        out = run(&rig, faults.clone(), |r| r.resume()).unwrap();
    }
    let writes = faults.writes();
    let steps = aperture_reset::journal::plan(Level::Two, Slot::A, false).len();
    let mut points: Vec<FaultPoint> = (0..steps)
        .flat_map(|k| [FaultPoint::BeforeStep(k), FaultPoint::AfterStep(k)])
        .collect();
    points.extend((1..=writes).map(FaultPoint::Write));
    let cuts = points
        .iter()
        .filter(|p| cut_level2_and_recover(board, **p))
        .count();
    eprintln!(
        "level 2 on {board}: {} crash points ({} step boundaries, {writes} writes), all \
         recovered",
        points.len(),
        2 * steps
    );
    assert_eq!(cuts, points.len(), "every crash point is reached");
}

/// Level 3 on Jetson wipes `UDA` (NVIDIA's name for the data partition) and `config` as it
/// wipes `data` and `config` on the qemu board: no canary, plaintext or readable with the old
/// keys, is left anywhere on the disk, both slots hold the factory image, and the next boot
/// formats storage afresh. `--verify` reads `UDA` back.
#[test]
fn level3_on_jetson_leaves_no_canary_in_uda_or_config() {
    for board in JETSONS {
        let mut rig = Rig::jetson(board);
        rig.provision();
        let disk = aperture_storage::FileDisk::new(&rig.image);
        let before = aperture_reset::app::verify(&disk, board).unwrap();
        assert!(!before.ok, "{board}: {before}");
        let boots = rig.run_to_completion(|r| r.start(Level::Three), &rig.fresh_crypt());
        assert_eq!(boots, 1, "{board}: one reboot, into the factory slot");
        let found = rig.scan();
        assert!(found.is_empty(), "{board}: left on the disk: {found:?}");
        assert!(rig.esp_leftovers().is_empty(), "{board}");
        assert!(keys_gone(&rig), "{board}");
        rig.assert_factory_everywhere();
        let after = aperture_reset::app::verify(&disk, board).unwrap();
        assert!(after.ok, "{board}: {after}");
        let labels: Vec<&str> = after.volumes.iter().map(|v| v.label.as_str()).collect();
        assert_eq!(labels, ["config", "UDA"], "{board}");
        for v in &after.volumes {
            assert_eq!(v.zero_fraction, 1.0, "{board}: {}", v.label);
        }
        rig.assert_storage_starts_new();
    }
}
