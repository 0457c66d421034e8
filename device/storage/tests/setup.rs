//! First and later boots of `aperture-storage` on a file-backed disk with the fake LUKS, TPM
//! and mount seams: formatting, growth, sealed keys kept in the header token and the device
//! state (never on the ESP), repairs of either copy, the key-source rules, the reset guard,
//! and status.

mod common;

use std::time::{Duration, Instant};

use aperture_appliance::Board;
use aperture_storage::records::find_token;
use aperture_storage::{
    luks, Crypt, FakeTpm, KeySourceKind, PowerCut, Repair, StorageError, Volume, LABEL_FORMATTING,
};
use common::{World, MIB};

fn token_kind(world: &World, v: Volume) -> Option<KeySourceKind> {
    let part = world.part(v);
    let probe = luks::probe(part.as_ref()).unwrap();
    probe.current().and_then(find_token).map(|t| t.kind)
}

#[test]
fn first_boot_formats_grows_and_seals_then_later_boots_unlock() {
    let world = World::new(Board::QemuX86_64, true);
    let boot = world.boot(PowerCut::never());
    let done = boot.storage().setup().unwrap();
    assert_eq!(done.len(), 2);
    assert!(done
        .iter()
        .all(|v| v.formatted && v.made_filesystem && v.repaired.is_empty()));
    assert!(done.iter().all(|v| v.key_source == KeySourceKind::Tpm2));
    assert_eq!(done[0].grown_to, None, "config is not grown");
    assert_eq!(done[1].grown_to, Some(28 * MIB), "data fills the disk");
    assert_eq!(done[1].mounted, world.files.path("data"));
    assert!(world.files.path("data/var/upper").is_dir());
    assert!(world.files.path("data/var/work").is_dir());
    assert_eq!(boot.mounts.mkfs_calls(), 2);
    let record = world.state().load().unwrap();
    assert_eq!(record.source, Some(KeySourceKind::Tpm2));
    for v in Volume::ALL {
        let part = world.part(v);
        assert_eq!(
            boot.crypt.label(part.as_ref()).unwrap().as_deref(),
            Some(v.label())
        );
        assert_eq!(token_kind(&world, v), Some(KeySourceKind::Tpm2));
        let r = &record.volumes[&v];
        assert_eq!(r.state, aperture_storage::VolumeState::Ready);
        assert_eq!(Some(r.uuid.clone()), world.uuid(v));
    }
    assert!(!world.files.esp().exists(), "nothing is kept on the ESP");
    let config_key = world.recorded_key(Volume::Config).unwrap();
    let data_key = world.recorded_key(Volume::Data).unwrap();
    assert_ne!(config_key.as_bytes(), data_key.as_bytes());

    // Running setup again in the same boot changes nothing.
    let again = boot.storage().setup().unwrap();
    assert!(again
        .iter()
        .all(|v| !v.formatted && !v.made_filesystem && v.repaired.is_empty()));

    // Next boot: unlock with the sealed key, no format, no mkfs, no growth.
    world.plant(Volume::Data, b"canary-data");
    let next = world.boot(PowerCut::never());
    let done = next.storage().setup().unwrap();
    assert!(done.iter().all(|v| !v.formatted
        && !v.made_filesystem
        && v.grown_to.is_none()
        && v.repaired.is_empty()));
    assert_eq!(next.mounts.mkfs_calls(), 0);
    assert!(world.has(Volume::Data, b"canary-data"));
    let status = next.storage().status().unwrap();
    assert_eq!(status.key_source, Some(KeySourceKind::Tpm2));
    assert!(status
        .volumes
        .iter()
        .all(|v| v.luks && v.mapped.is_some() && v.mounted.is_some()));
    let text = status.to_string();
    assert!(text.starts_with("key source: tpm2\n"), "{text}");
    assert!(text.contains("token=aperture-tpm2 record=ready"), "{text}");
    let json = serde_json::to_value(&status).unwrap();
    assert_eq!(json["volumes"][1]["volume"], "data");
    assert_eq!(json["key_source"], "tpm2");
}

#[test]
fn jetson_data_is_the_uda_partition_at_the_size_the_image_gave_it() {
    // On both Jetsons `config` follows `UDA` (ours come after NVIDIA's partitions), so UDA
    // cannot grow: the first boot formats it as flashed. (It used to stop: "not the last
    // partition on the disk", leaving data closed, as the Jetson twin's first boot showed.)
    for board in [Board::JetsonOrinAgx, Board::JetsonXavierAgx] {
        let world = World::new(board, true);
        let done = world.boot(PowerCut::never()).storage().setup().unwrap();
        assert_eq!(done[1].grown_to, None, "{board}");
        assert!(done[1].partition.ends_with(":UDA"), "{}", done[1].partition);
        assert_eq!(done[1].mounted, world.files.path("data"));
        assert_eq!(world.part(Volume::Data).size(), 2 * MIB, "{board}");
        assert!(
            world.uuid(Volume::Data).is_some(),
            "{board}: UDA not formatted"
        );
    }
}

#[test]
fn plain_keys_only_when_the_image_says_there_is_no_tpm() {
    let world = World::new(Board::QemuX86_64, false);
    let boot = world.boot(PowerCut::never());
    let done = boot.storage().setup().unwrap();
    assert!(done
        .iter()
        .all(|v| v.key_source == KeySourceKind::UnsafePlain));
    assert_eq!(
        token_kind(&world, Volume::Data),
        Some(KeySourceKind::UnsafePlain)
    );
    let text = boot.storage().status().unwrap().to_string();
    assert!(text.contains("NOT protected against disk theft"), "{text}");
    // A later image that says the board has a TPM does not change a recorded source.
    let mut world = world;
    world.facts.tpm = true;
    world.set_tpm_present(true);
    let done = world.boot(PowerCut::never()).storage().setup().unwrap();
    assert!(done
        .iter()
        .all(|v| v.key_source == KeySourceKind::UnsafePlain && !v.formatted));
}

#[test]
fn with_a_tpm_recorded_and_absent_it_waits_then_fails_touching_nothing() {
    let mut world = World::new(Board::QemuX86_64, true);
    world.boot(PowerCut::never()).storage().setup().unwrap();
    world.set_tpm_present(false);
    let before = (std::fs::read(&world.image).unwrap(), world.mem.snapshot());
    // Even an image that now says "no TPM" never falls back to a plain key.
    for facts_tpm in [true, false] {
        world.facts.tpm = facts_tpm;
        let boot = world.boot(PowerCut::never());
        let t = Instant::now();
        let err = boot.storage().setup().unwrap_err();
        assert!(t.elapsed() >= world.tpm_wait, "it waited");
        assert!(matches!(err, StorageError::TpmMissing { .. }), "{err}");
        let text = err.to_string();
        assert!(
            text.contains("config") && text.contains("disk.img:config"),
            "{text}"
        );
        assert!(
            text.contains("tpmrm0") && text.contains("recorded"),
            "{text}"
        );
        assert_eq!(boot.cut.ops(), 0, "no write at all");
        assert!(boot.crypt.mapped("aperture-config").unwrap().is_none());
    }
    assert_eq!(
        (std::fs::read(&world.image).unwrap(), world.mem.snapshot()),
        before,
        "nothing on the disk or in the device state changed"
    );
    world.set_tpm_present(true);
    world.boot(PowerCut::never()).storage().setup().unwrap();
}

#[test]
fn a_late_tpm_is_waited_for_and_a_missing_one_never_means_plain_keys() {
    // Issue 12.4: the key source used to be whatever existed when storage started.
    let mut world = World::new(Board::QemuX86_64, true);
    world.set_tpm_present(false);
    let err = world.boot(PowerCut::never()).storage().setup().unwrap_err();
    assert!(matches!(err, StorageError::TpmMissing { .. }), "{err}");
    assert!(err.to_string().contains("[security] tpm"), "{err}");
    for v in Volume::ALL {
        assert!(
            !luks::is_luks(world.part(v).as_ref()).unwrap(),
            "{v} untouched"
        );
    }
    assert_eq!(world.state().load().unwrap(), Default::default());

    world.tpm_wait = Duration::from_secs(20);
    let dev = world.files.tpm_device();
    let t = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(300));
        std::fs::write(dev, b"").unwrap();
    });
    let done = world.boot(PowerCut::never()).storage().setup().unwrap();
    t.join().unwrap();
    assert!(done.iter().all(|v| v.key_source == KeySourceKind::Tpm2));
    assert_eq!(
        token_kind(&world, Volume::Config),
        Some(KeySourceKind::Tpm2)
    );
}

#[test]
fn a_lost_record_or_token_is_written_again_from_the_other() {
    let world = World::new(Board::QemuX86_64, true);
    world.boot(PowerCut::never()).storage().setup().unwrap();
    let record = world.state().load().unwrap();
    world.plant(Volume::Config, b"canary-config");

    // The device state lost its record (a new state partition, both copies torn...).
    world.state().save(&Default::default()).unwrap();
    let done = world.boot(PowerCut::never()).storage().setup().unwrap();
    assert!(done
        .iter()
        .all(|v| v.repaired == [Repair::Record] && !v.formatted));
    assert_eq!(world.state().load().unwrap(), record);

    // The token of data is damaged (as tpm2_load saw the FAT blob), config's is gone.
    let boot = world.boot(PowerCut::never());
    let damaged =
        br#"{"type":"aperture-tpm2","keyslots":["0"],"tpm2_public":"AAAA","tpm2_private":"AAAA"}"#;
    boot.crypt
        .import_token(world.part(Volume::Data).as_ref(), damaged, Some("0"))
        .unwrap();
    let other = br#"{"type":"systemd-tpm2","keyslots":["0"]}"#;
    boot.crypt
        .import_token(world.part(Volume::Config).as_ref(), other, Some("0"))
        .unwrap();
    let done = world.boot(PowerCut::never()).storage().setup().unwrap();
    assert!(done
        .iter()
        .all(|v| v.repaired == [Repair::Token] && !v.formatted));
    for v in Volume::ALL {
        let part = world.part(v);
        let probe = luks::probe(part.as_ref()).unwrap();
        let token = probe.current().and_then(find_token).unwrap();
        assert_eq!(token.sealed.unwrap(), record.volumes[&v].sealed);
    }
    assert!(world.has(Volume::Config, b"canary-config"));
}

#[test]
fn keys_gone_from_both_places_or_a_new_tpm_are_errors_that_name_the_fix() {
    let world = World::new(Board::QemuX86_64, true);
    world.boot(PowerCut::never()).storage().setup().unwrap();
    let image = std::fs::read(&world.image).unwrap();
    let record = world.state().load().unwrap();

    let boot = world.boot(PowerCut::never());
    let other = br#"{"type":"systemd-tpm2","keyslots":["0"]}"#;
    boot.crypt
        .import_token(world.part(Volume::Config).as_ref(), other, Some("0"))
        .unwrap();
    world.state().forget(Volume::Config).unwrap();
    let err = world.boot(PowerCut::never()).storage().setup().unwrap_err();
    assert!(matches!(err, StorageError::KeyMissing { .. }), "{err}");
    let text = err.to_string();
    assert!(
        text.contains("disk.img:config") && text.contains("aperture-reset --level 3"),
        "{text}"
    );

    // The TPM was cleared or replaced: neither copy unseals.
    std::fs::write(&world.image, &image).unwrap();
    world.state().save(&record).unwrap();
    let mut world = world;
    world.tpm = FakeTpm::new().unwrap();
    let err = world.boot(PowerCut::never()).storage().setup().unwrap_err();
    assert!(matches!(err, StorageError::Unseal { .. }), "{err}");
    let text = err.to_string();
    assert!(
        text.contains("the LUKS2 token: ") && text.contains("the device state: "),
        "{text}"
    );
}

#[test]
fn a_damaged_primary_header_is_repaired_and_never_reformatted() {
    // Issue 12.3: a volume whose first 4 KiB were zeroed was taken for a first boot.
    let world = World::new(Board::QemuX86_64, true);
    world.boot(PowerCut::never()).storage().setup().unwrap();
    world.plant(Volume::Data, b"canary-data");
    let uuid = world.uuid(Volume::Data);
    world
        .part(Volume::Data)
        .write_all_at(&[0u8; 4096], 0)
        .unwrap();
    let boot = world.boot(PowerCut::never());
    let done = boot.storage().setup().unwrap();
    assert_eq!(done[1].repaired, [Repair::Header]);
    assert!(!done[1].formatted && !done[1].made_filesystem);
    assert_eq!(world.uuid(Volume::Data), uuid);
    assert!(world.has(Volume::Data, b"canary-data"));
    let part = world.part(Volume::Data);
    assert!(!luks::probe(part.as_ref()).unwrap().needs_repair());
}

#[test]
fn a_header_beyond_repair_stops_with_the_recovery_and_is_left_alone() {
    let world = World::new(Board::QemuX86_64, true);
    world.boot(PowerCut::never()).storage().setup().unwrap();
    // Both copies torn: the magic survives, no copy checks out.
    let part = world.part(Volume::Data);
    for at in [600, 16384 + 600] {
        part.write_all_at(&[0xffu8; 64], at).unwrap();
    }
    let image = std::fs::read(&world.image).unwrap();
    let boot = world.boot(PowerCut::never());
    let err = boot.storage().setup().unwrap_err();
    assert!(matches!(err, StorageError::HeaderDamaged { .. }), "{err}");
    let text = err.to_string();
    assert!(
        text.contains("disk.img:data")
            && text.contains("--level 3")
            && text.contains("wipes this volume"),
        "{text}"
    );
    assert_eq!(
        std::fs::read(&world.image).unwrap(),
        image,
        "nothing was written"
    );

    // Both copies zeroed: no header at all, but the device state knows it was formatted.
    part.write_all_at(&vec![0u8; 32768], 0).unwrap();
    let image = std::fs::read(&world.image).unwrap();
    let err = world.boot(PowerCut::never()).storage().setup().unwrap_err();
    assert!(matches!(err, StorageError::HeaderLost { .. }), "{err}");
    assert!(err.to_string().contains("--level 3"), "{err}");
    assert_eq!(
        std::fs::read(&world.image).unwrap(),
        image,
        "never formatted"
    );
}

#[test]
fn a_label_left_unfinished_after_the_record_said_ready_keeps_the_file_system() {
    let world = World::new(Board::QemuX86_64, true);
    let boot = world.boot(PowerCut::never());
    boot.storage().setup().unwrap();
    boot.crypt
        .set_label(world.part(Volume::Config).as_ref(), LABEL_FORMATTING)
        .unwrap();
    let next = world.boot(PowerCut::never());
    next.storage().setup().unwrap();
    assert_eq!(next.mounts.mkfs_calls(), 0);
    assert_eq!(
        next.crypt
            .label(world.part(Volume::Config).as_ref())
            .unwrap()
            .as_deref(),
        Some("config")
    );
}

#[test]
fn nothing_is_unlocked_while_a_reset_wipe_is_pending() {
    let world = World::new(Board::QemuX86_64, true);
    let journal = aperture_storage::volume::reset_journal(&world.files);
    std::fs::create_dir_all(journal.parent().unwrap()).unwrap();
    std::fs::write(&journal, br#"{"wipe_pending":true,"other":1}"#).unwrap();
    let boot = world.boot(PowerCut::never());
    let err = boot.storage().setup().unwrap_err();
    assert!(matches!(err, StorageError::ResetPending { .. }), "{err}");
    assert!(boot.storage().status().unwrap().wipe_pending);
    assert!(
        !luks::is_luks(world.part(Volume::Data).as_ref()).unwrap(),
        "nothing was formatted"
    );
    std::fs::write(&journal, b"not json").unwrap();
    assert!(
        boot.storage().setup().is_err(),
        "an unreadable journal counts as pending"
    );
    std::fs::remove_file(&journal).unwrap();
    // The same contract in the device state's reset area.
    world.write_reset_area(br#"{"wipe_pending":true}"#);
    let err = boot.storage().setup().unwrap_err();
    assert!(err.to_string().contains("reset area"), "{err}");
    world.write_reset_area(br#"{"wipe_pending":false}"#);
    boot.storage().setup().unwrap();
}

#[test]
fn after_reset_forgets_and_wipes_the_next_boot_starts_afresh() {
    let world = World::new(Board::QemuX86_64, false);
    world.boot(PowerCut::never()).storage().setup().unwrap();
    let old: Vec<_> = Volume::ALL.map(|v| world.uuid(v)).into();
    for v in Volume::ALL {
        world.part(v).write_all_at(&vec![0u8; 65536], 0).unwrap();
        world.state().forget(v).unwrap();
    }
    assert_eq!(world.state().load().unwrap(), Default::default());
    let mut world = world;
    world.facts.tpm = true;
    world.set_tpm_present(true);
    let done = world.boot(PowerCut::never()).storage().setup().unwrap();
    assert!(done
        .iter()
        .all(|v| v.formatted && v.key_source == KeySourceKind::Tpm2));
    let new: Vec<_> = Volume::ALL.map(|v| world.uuid(v)).into();
    assert!(old.iter().zip(&new).all(|(a, b)| a != b));
}

#[test]
fn keys_an_older_aperture_kept_on_the_esp_are_moved_off_it_once() {
    use aperture_storage::{Crypt, KeySource};
    let world = World::new(Board::QemuX86_64, true);
    let keys_dir = world.files.esp().join("aperture/keys");
    std::fs::create_dir_all(&keys_dir).unwrap();
    let boot = world.boot(PowerCut::never());
    let mut old_keys = Vec::new();
    for v in Volume::ALL {
        // What the older aperture-storage left: a header labelled with the volume's name and
        // its key sealed into files on the ESP.
        let key = aperture_storage::Key::random().unwrap();
        boot.crypt
            .format_as(world.part(v).as_ref(), &key, v.label(), &format!("{v}-old"))
            .unwrap();
        let sealed = world.tpm.seal(v.label(), &key).unwrap();
        let aperture_storage::SealedKey::Tpm2 {
            tpm2_public,
            tpm2_private,
            ..
        } = &sealed
        else {
            unreachable!()
        };
        std::fs::write(keys_dir.join(format!("{v}.tpm2.pub")), tpm2_public).unwrap();
        std::fs::write(keys_dir.join(format!("{v}.tpm2.priv")), tpm2_private).unwrap();
        world
            .filesystems
            .add_filesystem(&world.files.mapper_dir().join(v.mapper_name()));
        aperture_storage::FakeCrypt::write_plain(world.part(v).as_ref(), &key, 4096, b"old-canary")
            .unwrap();
        old_keys.push(key);
    }
    drop(boot);
    let boot = world.boot(PowerCut::never());
    let done = boot.storage().setup().unwrap();
    assert!(done
        .iter()
        .all(|v| v.repaired == [Repair::FromEsp] && !v.formatted && !v.made_filesystem));
    assert_eq!(
        std::fs::read_dir(&keys_dir).unwrap().count(),
        0,
        "the ESP holds no key"
    );
    for (v, key) in Volume::ALL.into_iter().zip(&old_keys) {
        assert_eq!(token_kind(&world, v), Some(KeySourceKind::Tpm2));
        assert_eq!(world.recorded_key(v).unwrap().as_bytes(), key.as_bytes());
        assert!(world.has(v, b"old-canary"));
    }
    let next = world.boot(PowerCut::never()).storage().setup().unwrap();
    assert!(next.iter().all(|v| v.repaired.is_empty()));
}

/// Keys sealed before the boot chain was (an appliance updated from an older Aperture) are
/// sealed to it at the first boot that can: both copies rewritten, once.
#[test]
fn keys_sealed_before_the_boot_chain_are_sealed_to_it_once_in_token_and_record() {
    let mut world = World::new(Board::QemuX86_64, true);
    world.boot(PowerCut::never()).storage().setup().unwrap();
    let bound = |world: &World, v: Volume| {
        let part = world.part(v);
        let probe = luks::probe(part.as_ref()).unwrap();
        let token = probe
            .current()
            .and_then(find_token)
            .unwrap()
            .sealed
            .unwrap();
        let record = world.state().load().unwrap().volumes[&v].sealed.clone();
        let is_bound = |s: &aperture_storage::SealedKey| {
            matches!(s, aperture_storage::SealedKey::Tpm2 { boot: Some(_), .. })
        };
        (is_bound(&token), is_bound(&record))
    };
    for v in Volume::ALL {
        assert_eq!(bound(&world, v), (false, false));
    }
    let keys: Vec<Vec<u8>> = Volume::ALL
        .iter()
        .map(|v| world.recorded_key(*v).unwrap().as_bytes().to_vec())
        .collect();

    world.tpm = world.tpm.clone().bound_to_boot_chain();
    let done = world.boot(PowerCut::never()).storage().setup().unwrap();
    for (i, v) in done.iter().enumerate() {
        assert_eq!(v.repaired, vec![Repair::Rebound], "{v:?}");
        assert_eq!(bound(&world, v.volume), (true, true));
        // The same key: nothing was re-encrypted, the volume opens as before.
        assert_eq!(
            world.recorded_key(v.volume).unwrap().as_bytes(),
            &keys[i][..]
        );
    }
    let done = world.boot(PowerCut::never()).storage().setup().unwrap();
    assert!(done.iter().all(|v| v.repaired.is_empty()), "{done:?}");
    let status = world.boot(PowerCut::never()).storage().status().unwrap();
    assert!(status.volumes.iter().all(|v| v.boot_chain), "{status:?}");
    let text = status.to_string();
    assert!(
        text.starts_with("key source: tpm2, sealed to the signed boot chain"),
        "{text}"
    );
}
