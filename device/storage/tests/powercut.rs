//! Issue 12.0: a power cut at any instant of `aperture-storage setup` is finished by the next
//! boot, with no data lost and nothing asked of anyone. Every mutating operation of a boot
//! (device state writes and syncs, luksFormat, token import, repair, open, mkfs, mount, label)
//! is cut in turn, whole or torn; the device state's unsynced writes are lost or kept; then the
//! appliance "reboots" with fresh fakes over the same disk, and must come up with both volumes
//! open, the headers it had, and every canary that could have been written before the cut.

mod common;

use aperture_appliance::store::mem::Cut;
use aperture_appliance::Board;
use aperture_storage::{luks, Crypt, PowerCut, Volume, VolumeState};
use common::World;

const CANARY: [&[u8]; 2] = [b"canary-config-5e1f", b"canary-data-9a0b"];

fn ready(world: &World, v: Volume) -> bool {
    world
        .state()
        .load()
        .unwrap()
        .volumes
        .get(&v)
        .is_some_and(|r| r.state == VolumeState::Ready)
}

/// Boot once with nothing cut; every volume must be open, mounted, and keep its canary.
fn boot_clean(world: &World, what: &str) {
    let boot = world.boot(PowerCut::never());
    let done = boot
        .storage()
        .setup()
        .unwrap_or_else(|e| panic!("{what}: the boot after the cut failed: {e:#}"));
    for v in &done {
        assert!(
            boot.crypt.mapped(v.volume.mapper_name()).unwrap().is_some(),
            "{what}: {} is not open",
            v.volume
        );
        assert!(ready(world, v.volume), "{what}: {} is not ready", v.volume);
        let part = world.part(v.volume);
        let probe = luks::probe(part.as_ref()).unwrap();
        assert!(!probe.needs_repair(), "{what}: {}", probe.describe());
    }
}

/// Cut the boot of the world `prepare` makes at every operation, both ways, and check the
/// reboot. `prepared`: `prepare` put the canaries on both volumes already.
fn cut_everywhere(name: &str, prepare: impl Fn() -> World, prepared: bool) -> usize {
    let mut cuts = 0;
    for torn in [false, true] {
        for how in [Cut::Lose, Cut::Keep] {
            for op in 1.. {
                let world = prepare();
                let uuids: Vec<_> = Volume::ALL.map(|v| world.uuid(v)).into();
                let what = format!("{name}: cut at operation {op} (torn {torn}, {how:?})");
                let boot = world.boot(PowerCut::at(op, torn));
                let result = boot.storage().setup();
                let log = boot.cut.log();
                if !boot.cut.fired() {
                    result.unwrap_or_else(|e| panic!("{what}: {e:#}"));
                    assert!(op > 3, "{name}: only {op} operations?");
                    break;
                }
                assert!(result.is_err(), "{what}: the cut must be seen");
                drop(boot);
                world.power_cut(how);
                cuts += 1;
                // What was usable when the power went: a canary goes onto it now.
                let mut planted = Vec::new();
                for (v, c) in Volume::ALL.into_iter().zip(CANARY) {
                    if prepared {
                        planted.push((v, c));
                    } else if ready(&world, v) {
                        world.plant(v, c);
                        planted.push((v, c));
                    }
                }
                let what = format!("{what} after {log:?}");
                boot_clean(&world, &what);
                for (v, c) in &planted {
                    assert!(world.has(*v, c), "{what}: the canary of {v} is gone");
                }
                for (v, before) in Volume::ALL.into_iter().zip(&uuids) {
                    if before.is_some() {
                        assert_eq!(&world.uuid(v), before, "{what}: {v} was formatted again");
                    }
                }
                // And the boot after that is an ordinary one.
                boot_clean(&world, &what);
                for (v, c) in planted {
                    assert!(
                        world.has(v, c),
                        "{what}: the canary of {v} is gone a boot later"
                    );
                }
            }
        }
    }
    cuts
}

#[test]
fn a_first_boot_cut_at_any_operation_is_finished_by_the_next() {
    let cuts = cut_everywhere("first boot", || World::new(Board::QemuX86_64, true), false);
    assert!(cuts >= 4 * 16, "only {cuts} cuts");
}

#[test]
fn a_first_boot_without_a_tpm_cut_at_any_operation_is_finished_by_the_next() {
    cut_everywhere(
        "first boot, no TPM",
        || World::new(Board::QemuX86_64, false),
        false,
    );
}

#[test]
fn a_repairing_boot_cut_at_any_operation_loses_nothing() {
    // A later boot with work to do: data's primary header zeroed and its record lost,
    // config's token gone. Every volume holds a canary.
    let prepare = || {
        let world = World::new(Board::QemuX86_64, true);
        world.boot(PowerCut::never()).storage().setup().unwrap();
        let keep = world.state().load().unwrap();
        for (v, c) in Volume::ALL.into_iter().zip(CANARY) {
            world.plant(v, c);
        }
        world
            .part(Volume::Data)
            .write_all_at(&[0u8; 4096], 0)
            .unwrap();
        let boot = world.boot(PowerCut::never());
        let other = br#"{"type":"systemd-tpm2","keyslots":["0"]}"#;
        boot.crypt
            .import_token(world.part(Volume::Config).as_ref(), other, Some("0"))
            .unwrap();
        drop(boot);
        // Config's key is left only in the record, data's only in its token.
        let mut record = keep;
        record.volumes.remove(&Volume::Data);
        world.state().save(&record).unwrap();
        world
    };
    let cuts = cut_everywhere("repairing boot", prepare, true);
    assert!(cuts >= 4 * 5, "only {cuts} cuts");
}
