//! The fake cryptsetup against the header reader, and power cuts inside its writes.

use super::*;
use crate::crypt::LABEL_FORMATTING;
use crate::disk::MemPartition;
use crate::keys::{KeySource, UnsafePlainKey};
use crate::luks::CopyState;
use crate::records::{find_token, token_json};
use crate::volume::Volume;

const UUID: &str = "11111111-2222-4333-8444-555555555555";

#[test]
fn fake_round_trip_tokens_and_erase() {
    let part = MemPartition::new("data", vec![0u8; 1 << 20]);
    let crypt = FakeCrypt::new("/dev/mapper".into());
    let key = Key::random().unwrap();
    crypt
        .format_as(&part, &key, LABEL_FORMATTING, UUID)
        .unwrap();
    assert!(luks::is_luks(&part).unwrap());
    let probe = luks::probe(&part).unwrap();
    assert!(!probe.needs_repair());
    assert_eq!(probe.current().unwrap().uuid, UUID);
    assert_eq!(
        crypt.label(&part).unwrap().as_deref(),
        Some(LABEL_FORMATTING)
    );
    crypt.set_label(&part, "data").unwrap();
    assert_eq!(crypt.label(&part).unwrap().as_deref(), Some("data"));
    let sealed = UnsafePlainKey.seal("data", &key).unwrap();
    crypt
        .import_token(&part, &token_json(Volume::Data, "0", &sealed), None)
        .unwrap();
    crypt
        .import_token(&part, &token_json(Volume::Data, "0", &sealed), Some("0"))
        .unwrap();
    let other = br#"{"type":"systemd-tpm2","keyslots":["0"]}"#;
    crypt.import_token(&part, other, None).unwrap();
    assert!(crypt.import_token(&part, other, None).is_ok(), "a third id");
    let probe = luks::probe(&part).unwrap();
    let current = probe.current().unwrap();
    assert_eq!(
        current.seqid, 7,
        "format (header, then keyslot), label, three imports, one replace"
    );
    assert_eq!(current.tokens.len(), 3);
    assert_eq!(find_token(current).unwrap().id, "0");
    assert!(crypt.check_key(&part, &key).unwrap());
    assert!(!crypt.check_key(&part, &Key::random().unwrap()).unwrap());
    let mapped = crypt.open(&part, "aperture-data", &key).unwrap();
    assert_eq!(mapped, std::path::Path::new("/dev/mapper/aperture-data"));
    assert_eq!(crypt.mapped("aperture-data").unwrap(), Some(mapped));
    FakeCrypt::write_plain(&part, &key, 10, b"canary").unwrap();
    assert_eq!(
        FakeCrypt::read_plain(&part, &key, 10, 6).unwrap(),
        b"canary"
    );
    let raw = part.bytes();
    let at = (FakeCrypt::DATA_OFFSET + 10) as usize;
    assert_ne!(&raw[at..at + 6], b"canary", "ciphertext must differ");
    crypt.close("aperture-data").unwrap();
    assert!(crypt
        .open(&part, "aperture-data", &Key::random().unwrap())
        .is_err());
    crypt.erase(&part).unwrap();
    let err = crypt.open(&part, "aperture-data", &key).unwrap_err();
    assert!(err.to_string().contains("No key available"), "{err}");
    assert!(
        luks::is_luks(&part).unwrap(),
        "erase keeps the header, as cryptsetup does"
    );
}

#[test]
fn repair_restores_a_zeroed_primary_from_the_secondary() {
    let part = MemPartition::new("data", vec![0u8; 1 << 20]);
    let crypt = FakeCrypt::new("/dev/mapper".into());
    let key = Key::random().unwrap();
    crypt.format_as(&part, &key, "data", UUID).unwrap();
    let sealed = UnsafePlainKey.seal("data", &key).unwrap();
    crypt
        .import_token(&part, &token_json(Volume::Data, "0", &sealed), None)
        .unwrap();
    part.write_all_at(&[0u8; 4096], 0).unwrap();
    assert_eq!(luks::probe(&part).unwrap().primary, CopyState::Missing);
    crypt.repair(&part).unwrap();
    let probe = luks::probe(&part).unwrap();
    assert!(!probe.needs_repair(), "{}", probe.describe());
    let primary = probe.primary.valid().unwrap();
    assert_eq!(primary.uuid, UUID);
    assert_eq!(find_token(primary).unwrap().sealed.unwrap(), sealed);
    // Nothing intact: repair fails as cryptsetup's does.
    part.write_all_at(&[0u8; 4096], FakeCrypt::HDR_SIZE)
        .unwrap();
    part.write_all_at(&[1u8; 100], 600).unwrap();
    assert!(crypt.repair(&part).is_err());
}

#[test]
fn cuts_inside_writes_leave_what_cryptsetup_would() {
    let key = Key::random().unwrap();
    // A torn luksFormat: magic, no intact copy.
    let part = MemPartition::new("data", vec![0u8; 1 << 20]);
    let crypt = FakeCrypt::with_power_cut("/m".into(), PowerCut::at(1, true));
    assert!(crypt
        .format_as(&part, &key, LABEL_FORMATTING, UUID)
        .is_err());
    let probe = luks::probe(&part).unwrap();
    assert!(
        probe.any_magic() && probe.current().is_none(),
        "{}",
        probe.describe()
    );
    // A cut before the format wrote anything.
    let part = MemPartition::new("data", vec![0u8; 1 << 20]);
    let cut = PowerCut::at(1, false);
    let crypt = FakeCrypt::with_power_cut("/m".into(), cut.clone());
    assert!(crypt
        .format_as(&part, &key, LABEL_FORMATTING, UUID)
        .is_err());
    assert!(!luks::is_luks(&part).unwrap());
    assert!(cut.fired());
    assert!(crypt.set_label(&part, "x").is_err(), "the power stays off");
    // A cut while luksFormat derives the keyslot's key: both header copies valid, with the
    // journaled UUID and label and no keyslot, so no key opens it.
    let part = MemPartition::new("data", vec![0u8; 1 << 20]);
    let crypt = FakeCrypt::with_power_cut("/m".into(), PowerCut::at(2, false));
    assert!(crypt
        .format_as(&part, &key, LABEL_FORMATTING, UUID)
        .is_err());
    let probe = luks::probe(&part).unwrap();
    let current = probe.current().unwrap();
    assert!(!probe.needs_repair(), "{}", probe.describe());
    assert_eq!(
        (current.uuid.as_str(), current.label.as_deref()),
        (UUID, Some(LABEL_FORMATTING))
    );
    assert!(current.keyslots.is_empty(), "{:?}", current.keyslots);
    let crypt = FakeCrypt::new("/m".into());
    assert!(!crypt.check_key(&part, &key).unwrap());
    // A torn label update: the primary is newer, the secondary old.
    let part = MemPartition::new("data", vec![0u8; 1 << 20]);
    let crypt = FakeCrypt::with_power_cut("/m".into(), PowerCut::at(3, true));
    crypt
        .format_as(&part, &key, LABEL_FORMATTING, UUID)
        .unwrap();
    assert!(crypt.set_label(&part, "data").is_err());
    let probe = luks::probe(&part).unwrap();
    assert!(probe.needs_repair());
    assert_eq!(probe.current().unwrap().label.as_deref(), Some("data"));
    assert_eq!(
        probe.secondary.valid().unwrap().label.as_deref(),
        Some(LABEL_FORMATTING)
    );
}
