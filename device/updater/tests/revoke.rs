//! Key revocation (issue 12.7): keyrings carry a root-signed sequence; the device commits the
//! sequence of the keyring its running slot was installed under, and from then on refuses
//! bundles signed under an older keyring, so a leaked release key stops working once a keyring
//! without it is committed. Installing alone never raises it.

mod common;

use aperture_slots::Slot;
use aperture_trust::keys::{KeyringEntry, SignedKeyring};
use aperture_trust::TrustError;
use aperture_updater::{InstallOptions, UpdateError};
use common::*;

/// Keyring 0 lists the leaked key (snakeoil 2) and a spare (snakeoil 3); keyring 1, made by
/// revoking the leaked key, lists only the spare.
fn keyrings() -> (Keys, Keys) {
    let root = snakeoil(1);
    let entry = |seed| KeyringEntry::new(snakeoil(seed).public(), format!("k{seed}"), NOW + 1000);
    let ring0 = SignedKeyring::create(&root, vec![entry(2), entry(3)]).unwrap();
    let ring1 = ring0.revoke(&root, &snakeoil(2).key_id(), None).unwrap();
    let leaked = Keys {
        root: root.clone(),
        release: snakeoil(2),
        keyring: ring0,
    };
    let current = Keys {
        root,
        release: snakeoil(3),
        keyring: ring1,
    };
    (leaked, current)
}

#[test]
fn a_leaked_key_stops_working_once_a_keyring_without_it_is_committed() {
    let (leaked, current) = keyrings();
    let v1 = image_with("1.0.0", 1, 1, &leaked, |_| {});
    let v2 = image_with("2.0.0", 2, 2, &current, |_| {});
    // The attacker's bundle: signed by the leaked key, under the older keyring.
    let evil = image_with("9.0.0", 9, 9, &leaked, |_| {});

    // Before the new keyring is committed, the leaked key still works (on another device).
    let other = Device::new(&v1);
    other
        .updater(Slot::A)
        .install(&mut &evil.bundle[..], &InstallOptions::default())
        .unwrap();

    let dev = Device::new(&v1);
    dev.updater(Slot::A)
        .install(&mut &v2.bundle[..], &InstallOptions::default())
        .unwrap();
    assert_eq!(
        dev.state().unwrap().keyring_sequence,
        0,
        "installing does not raise it"
    );
    assert_eq!(dev.boot(), Slot::B);
    dev.set_running(Slot::B, &v2);
    let c = dev.updater(Slot::B).commit().unwrap();
    assert_eq!(c.keyring_sequence, 1);
    assert_eq!(dev.updater(Slot::B).status().unwrap().keyring_sequence, 1);

    let before = dev.snapshot();
    let err = dev
        .updater(Slot::B)
        .install(&mut &evil.bundle[..], &InstallOptions::default())
        .unwrap_err();
    assert!(
        matches!(
            err,
            UpdateError::Trust(TrustError::KeyringTooOld {
                offered: 0,
                accepted: 1
            })
        ),
        "{err}"
    );
    assert!(err.is_refusal());
    assert_eq!(dev.snapshot(), before, "nothing written");
    // Bundles under the current keyring keep installing.
    let v3 = image_with("3.0.0", 3, 3, &current, |_| {});
    dev.updater(Slot::B)
        .install(&mut &v3.bundle[..], &InstallOptions::default())
        .unwrap();
}

#[test]
fn a_rollback_to_an_older_image_does_not_lower_the_committed_keyring() {
    let (leaked, current) = keyrings();
    let v1 = image_with("1.0.0", 1, 1, &leaked, |_| {});
    let v2 = image_with("2.0.0", 2, 2, &current, |_| {});
    let dev = Device::new(&v1);
    dev.updater(Slot::A)
        .install(&mut &v2.bundle[..], &InstallOptions::default())
        .unwrap();
    assert_eq!(dev.boot(), Slot::B);
    dev.set_running(Slot::B, &v2);
    dev.updater(Slot::B).commit().unwrap();
    // Back to A (v1, installed under keyring 0), committed again: the sequence stays 1.
    dev.updater(Slot::B).rollback().unwrap();
    assert_eq!(dev.boot(), Slot::A);
    dev.set_running(Slot::A, &v1);
    let c = dev.updater(Slot::A).commit().unwrap();
    assert_eq!(c.keyring_sequence, 1);
}

/// The keyring committed is that of a signed manifest verified again as it was when the slot
/// was written: a record whose manifest was altered since (its keyring left intact) commits no
/// keyring (round 2 verified the keyring alone and committed it).
#[test]
fn a_record_whose_signed_manifest_no_longer_verifies_commits_no_keyring() {
    let (leaked, current) = keyrings();
    let v1 = image_with("1.0.0", 1, 1, &leaked, |_| {});
    let v2 = image_with("2.0.0", 2, 2, &current, |_| {});
    let dev = Device::new(&v1);
    dev.updater(Slot::A)
        .install(&mut &v2.bundle[..], &InstallOptions::default())
        .unwrap();
    assert_eq!(dev.boot(), Slot::B);
    dev.set_running(Slot::B, &v2);
    let mut record = dev.installed(Slot::B).unwrap();
    record.manifest = record
        .manifest
        .replace("\"security_version\": 2", "\"security_version\": 7");
    assert_ne!(
        record,
        dev.installed(Slot::B).unwrap(),
        "the manifest was altered"
    );
    aperture_updater::store::write_slot(&mut dev.store(), Slot::B, &record).unwrap();
    let c = dev.updater(Slot::B).commit().unwrap();
    assert_eq!(c.keyring_sequence, 0, "{c}");
    assert_eq!(
        c.security_floor, 2,
        "the floor comes from the running image's facts"
    );
}
