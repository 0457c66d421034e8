//! Bundles the updater must refuse, each in its own test.
//!
//! Header-level refusals (signature, key chain, policy) happen before anything is written: the
//! partitions, the ESP (boot entries, boot files) and the device state store are byte for byte
//! unchanged. Payload-level
//! refusals (a flipped payload byte, a bad tar entry where a payload belongs) are found while
//! streaming, after the target was invalidated: the target is then never ARMED, the running
//! slot still boots and verifies, and where the bad entry comes first not a byte of the target
//! partition was written.

mod common;

use aperture_slots::{Slot, SlotStatus};
use aperture_trust::TrustError;
use aperture_updater::{InstallOptions, UpdateError};
use common::*;

fn setup() -> (Image, Image, Device) {
    let v1 = image("1.0.0", 1, 1);
    let v2 = image("2.0.0", 2, 2);
    let dev = Device::new(&v1);
    (v1, v2, dev)
}

fn install(dev: &Device, bundle: &[u8]) -> UpdateError {
    let mut r = bundle;
    dev.updater(Slot::A)
        .install(&mut r, &InstallOptions::default())
        .expect_err("the bundle must be refused")
}

/// Refused with nothing written at all.
fn refused_untouched(dev: &Device, bundle: &[u8]) -> UpdateError {
    let before = dev.snapshot();
    let err = install(dev, bundle);
    assert_eq!(dev.snapshot(), before, "{err}: something was written");
    assert!(dev.state().is_none(), "{err}: the device state was written");
    err
}

/// Refused after the target was invalidated, never armed; `untouched_partition` when the bad
/// entry comes before any rootfs byte.
fn refused_unarmed(dev: &Device, bundle: &[u8], untouched_partition: bool) -> UpdateError {
    let before = dev.snapshot();
    let err = install(dev, bundle);
    let state = dev.updater(Slot::A).boot_state().unwrap();
    assert_eq!(state.status(Slot::B), SlotStatus::Unbootable, "{err}");
    assert_eq!(state.next, Slot::A, "{err}");
    assert_eq!(state.status(Slot::A), SlotStatus::Good, "{err}");
    if untouched_partition {
        assert_eq!(
            dev.snapshot().b,
            before.b,
            "{err}: the target partition was written"
        );
    }
    assert_eq!(
        dev.snapshot().a,
        before.a,
        "{err}: the active slot was written"
    );
    assert_eq!(dev.boot(), Slot::A, "{err}");
    dev.assert_slot_verifies(Slot::A);
    err
}

fn trust(err: UpdateError) -> TrustError {
    match err {
        UpdateError::Trust(t) => t,
        other => panic!("expected a trust refusal, got {other}"),
    }
}

#[test]
fn flipped_payload_byte() {
    let (_, v2, dev) = setup();
    let mut bad = v2.bundle.clone();
    let at = data_offset(&bad, "rootfs.img.zst") + v2.zst(0).len() / 2;
    bad[at] ^= 0x01;
    let err = trust(refused_unarmed(&dev, &bad, false));
    assert!(
        matches!(
            err,
            TrustError::HashMismatch { .. } | TrustError::Malformed { .. }
        ),
        "{err}"
    );
}

#[test]
fn flipped_uki_byte() {
    let (v1, v2, dev) = setup();
    let mut bad = v2.bundle.clone();
    let at = data_offset(&bad, "uki-b.efi.zst") + 100;
    bad[at] ^= 0x80;
    let err = trust(refused_unarmed(&dev, &bad, false));
    assert!(
        matches!(
            err,
            TrustError::HashMismatch { .. } | TrustError::Malformed { .. }
        ),
        "{err}"
    );
    let uki = std::fs::read(dev.paths.slot_dir(Slot::B).join("uki.efi")).unwrap();
    assert!(uki == v1.uki[1], "an unverified UKI was put in place");
}

/// The other slot's UKI is not written, but a flipped byte in it still refuses the bundle:
/// every payload is checked against the signed manifest.
#[test]
fn flipped_byte_in_the_other_slots_uki() {
    let (v1, v2, dev) = setup();
    let mut bad = v2.bundle.clone();
    let at = data_offset(&bad, "uki-a.efi.zst") + 100;
    bad[at] ^= 0x80;
    let err = trust(refused_unarmed(&dev, &bad, false));
    assert!(matches!(err, TrustError::HashMismatch { .. }), "{err}");
    let uki = std::fs::read(dev.paths.slot_dir(Slot::A).join("uki.efi")).unwrap();
    assert!(uki == v1.uki[0], "the running slot's UKI was touched");
}

#[test]
fn truncated_bundle_in_the_header() {
    let (_, v2, dev) = setup();
    let cut = data_offset(&v2.bundle, "manifest.sig") + 10;
    let err = trust(refused_untouched(&dev, &v2.bundle[..cut]));
    assert!(matches!(err, TrustError::Truncated { .. }), "{err}");
}

#[test]
fn truncated_bundle_in_a_payload() {
    let (_, v2, dev) = setup();
    let cut = data_offset(&v2.bundle, "uki-b.efi.zst") + 10;
    let err = trust(refused_unarmed(&dev, &v2.bundle[..cut], false));
    assert!(matches!(err, TrustError::Truncated { .. }), "{err}");
}

#[test]
fn wrong_board() {
    let (_, _, dev) = setup();
    let other = image_with("2.0.0", 2, 2, &keys(), |m| {
        m.board = "jetson-orin-agx".into()
    });
    let err = trust(refused_untouched(&dev, &other.bundle));
    assert!(matches!(err, TrustError::WrongBoard { .. }), "{err}");
}

#[test]
fn lower_version() {
    let (_, _, dev) = setup();
    let old = image("0.9.0", 1, 3);
    let err = trust(refused_untouched(&dev, &old.bundle));
    assert!(matches!(err, TrustError::Downgrade { .. }), "{err}");
}

#[test]
fn security_version_below_the_floor() {
    let (_, _, dev) = setup();
    // The floor is 4 (a committed image had security version 4); 2.0.0 offers 3.
    dev.store()
        .write(
            aperture_appliance::Area::Update,
            br#"{"format":1,"security_floor":4}"#,
        )
        .unwrap();
    let low = image("2.0.0", 3, 3);
    let before = dev.snapshot();
    let err = trust(install(&dev, &low.bundle));
    assert!(
        matches!(
            err,
            TrustError::SecurityVersionTooLow {
                floor: 4,
                offered: 3
            }
        ),
        "{err}"
    );
    assert_eq!(dev.snapshot(), before);
}

#[test]
fn replayed_old_bundle() {
    let (v1, _, dev) = setup();
    // The very bundle of the running version, replayed.
    let err = refused_untouched(&dev, &v1.bundle);
    assert!(
        matches!(err, UpdateError::AlreadyInstalled { slot: Slot::A, .. }),
        "{err}"
    );
    assert!(
        aperture_updater::error_chain(&err).contains("1.0.0"),
        "{err}"
    );
}

#[test]
fn unknown_key() {
    let (_, _, dev) = setup();
    // A keyring signed by a root this device does not trust.
    let stranger = image_with("2.0.0", 2, 2, &keys_with(snakeoil(9), NOW + 1000), |_| {});
    let err = trust(refused_untouched(&dev, &stranger.bundle));
    assert!(matches!(err, TrustError::UnknownKey { .. }), "{err}");
}

#[test]
fn expired_key() {
    let (_, _, dev) = setup();
    let expired = image_with("2.0.0", 2, 2, &keys_with(snakeoil(1), NOW - 1), |_| {});
    let err = trust(refused_untouched(&dev, &expired.bundle));
    assert!(matches!(err, TrustError::KeyExpired { .. }), "{err}");
}

#[test]
fn tampered_manifest() {
    let (_, v2, dev) = setup();
    let text = String::from_utf8(v2.manifest_json.clone())
        .unwrap()
        .replace("\"2.0.0\"", "\"9.0.0\"");
    let bad = RawTar::new()
        .file("manifest.json", text.as_bytes())
        .file("manifest.sig", &v2.sig_json)
        .file("rootfs.img.zst", v2.zst(0))
        .end();
    let err = trust(refused_untouched(&dev, &bad));
    assert!(matches!(err, TrustError::BadSignature { .. }), "{err}");
}

#[test]
fn entry_with_parent_dir() {
    let (_, v2, dev) = setup();
    let bad = RawTar::new()
        .signed(&v2)
        .file("../rootfs.img.zst", v2.zst(0))
        .end();
    let err = trust(refused_unarmed(&dev, &bad, true));
    assert!(matches!(err, TrustError::UnsafeEntryPath { .. }), "{err}");
}

#[test]
fn entry_with_absolute_path() {
    let (_, v2, dev) = setup();
    let bad = RawTar::new()
        .signed(&v2)
        .file("/rootfs.img.zst", v2.zst(0))
        .end();
    let err = trust(refused_unarmed(&dev, &bad, true));
    assert!(matches!(err, TrustError::UnsafeEntryPath { .. }), "{err}");
}

#[test]
fn absolute_path_in_the_manifest_place() {
    let (_, v2, dev) = setup();
    let bad = RawTar::new()
        .file("/manifest.json", &v2.manifest_json)
        .end();
    let err = trust(refused_untouched(&dev, &bad));
    assert!(matches!(err, TrustError::UnsafeEntryPath { .. }), "{err}");
}

#[test]
fn symlink_entry() {
    let (_, v2, dev) = setup();
    let bad = RawTar::new()
        .signed(&v2)
        .special("rootfs.img.zst", b'2', "/dev/sda")
        .end();
    let err = trust(refused_unarmed(&dev, &bad, true));
    assert!(
        matches!(err, TrustError::EntryTypeNotAllowed { ref kind, .. } if kind == "symlink"),
        "{err}"
    );
}

#[test]
fn hard_link_entry() {
    let (_, v2, dev) = setup();
    let bad = RawTar::new()
        .signed(&v2)
        .special("rootfs.img.zst", b'1', "manifest.json")
        .end();
    let err = trust(refused_unarmed(&dev, &bad, true));
    assert!(
        matches!(err, TrustError::EntryTypeNotAllowed { ref kind, .. } if kind == "hard link"),
        "{err}"
    );
}

#[test]
fn oversized_entry() {
    let (_, v2, dev) = setup();
    let mut big = v2.zst(0).to_vec();
    big.extend_from_slice(&[0u8; 4096]);
    let bad = RawTar::new().signed(&v2).file("rootfs.img.zst", &big).end();
    let err = trust(refused_unarmed(&dev, &bad, true));
    assert!(matches!(err, TrustError::Oversized { .. }), "{err}");
}

#[test]
fn oversized_manifest() {
    let (_, _, dev) = setup();
    let bad = RawTar::new()
        .header(b"manifest.json", b'0', 2 << 20, b"")
        .end();
    let err = trust(refused_untouched(&dev, &bad));
    assert!(matches!(err, TrustError::Oversized { .. }), "{err}");
}

#[test]
fn missing_entry() {
    let (_, v2, dev) = setup();
    let bad = RawTar::new()
        .signed(&v2)
        .file("rootfs.img.zst", v2.zst(0))
        .file("uki-a.efi.zst", v2.zst(1))
        .end();
    let err = trust(refused_unarmed(&dev, &bad, false));
    assert!(
        matches!(err, TrustError::MissingEntry { ref name } if name == "uki-b.efi.zst"),
        "{err}"
    );
}

#[test]
fn reordered_entries() {
    let (_, v2, dev) = setup();
    let bad = RawTar::new()
        .signed(&v2)
        .file("uki-a.efi.zst", v2.zst(1))
        .file("rootfs.img.zst", v2.zst(0))
        .file("uki-b.efi.zst", v2.zst(2))
        .end();
    let err = trust(refused_unarmed(&dev, &bad, true));
    assert!(matches!(err, TrustError::Reordered { .. }), "{err}");
}

#[test]
fn signature_before_manifest() {
    let (_, v2, dev) = setup();
    let bad = RawTar::new()
        .file("manifest.sig", &v2.sig_json)
        .file("manifest.json", &v2.manifest_json)
        .end();
    let err = trust(refused_untouched(&dev, &bad));
    assert!(matches!(err, TrustError::Reordered { .. }), "{err}");
}

#[test]
fn other_product() {
    let (_, _, dev) = setup();
    let other = image_with("2.0.0", 2, 2, &keys(), |m| {
        m.product = "someone-else".into()
    });
    let err = refused_untouched(&dev, &other.bundle);
    assert!(matches!(err, UpdateError::Unsupported { .. }), "{err}");
    assert!(
        aperture_updater::error_chain(&err).contains("someone-else"),
        "{err}"
    );
}

#[test]
fn bundle_without_one_slots_uki_cannot_be_placed() {
    let (_, _, dev) = setup();
    let partial = image_with("2.0.0", 2, 2, &keys(), |m| m.artifacts.truncate(2));
    let err = refused_untouched(&dev, &partial.bundle);
    assert!(matches!(err, UpdateError::Unsupported { .. }), "{err}");
    assert!(
        aperture_updater::error_chain(&err).contains("uki-b.efi"),
        "{err}"
    );
}

/// A release whose UKI for slot B carries slot A's command line (a builder's mix-up) is
/// refused after its hash matched, before the slot is armed.
#[test]
fn a_uki_with_the_other_slots_command_line_is_refused_before_arming() {
    let (_, v2, dev) = setup();
    let mut swapped = v2.clone();
    swapped.uki.swap(0, 1);
    let swapped = swap_ukis(swapped);
    let err = refused_unarmed(&dev, &swapped.bundle, false);
    assert!(
        matches!(err, UpdateError::Verify { slot: Slot::B, .. }),
        "{err}"
    );
    let text = aperture_updater::error_chain(&err);
    assert!(
        text.contains("command line") && text.contains("aperture.slot=a"),
        "{text}"
    );
}

/// A UKI without an Authenticode signature is refused before arming: under Secure Boot the
/// firmware would refuse it on every try.
#[test]
fn an_unsigned_uki_is_refused_before_arming() {
    let (_, v2, dev) = setup();
    let mut unsigned = v2.clone();
    for (i, slot) in Slot::ALL.into_iter().enumerate() {
        let cmdline = aperture_uefi::section_data(&v2.uki[i], ".cmdline")
            .unwrap()
            .unwrap()
            .to_vec();
        unsigned.uki[i] = aperture_uefi::assemble_uki(
            &aperture_uefi::testpe::synthetic_stub(),
            &[
                (".osrel", b"ID=aperture-test\n"),
                (".cmdline", &cmdline),
                (".initrd", &v2.initrd),
                (".linux", &v2.kernel),
            ],
        )
        .unwrap();
        assert_eq!(
            slot.uki_artifact(),
            v2.manifest.artifacts[1 + i].name.as_str()
        );
    }
    let unsigned = swap_ukis(unsigned);
    let err = refused_unarmed(&dev, &unsigned.bundle, false);
    assert!(
        aperture_updater::error_chain(&err).contains("no Authenticode signature"),
        "{err}"
    );
}

/// `img` with its manifest, payloads and bundle remade from `img.uki`.
fn swap_ukis(mut img: Image) -> Image {
    for i in 0..2 {
        let z = zstd::encode_all(&img.uki[i][..], 1).unwrap();
        let a = &mut img.manifest.artifacts[1 + i];
        a.size = img.uki[i].len() as u64;
        a.sha256 = aperture_trust::manifest::Sha256Hex::digest(&img.uki[i]);
        let p = a.payload.as_mut().unwrap();
        p.size = z.len() as u64;
        p.sha256 = aperture_trust::manifest::Sha256Hex::digest(&z);
        img.payloads[1 + i].1 = z;
    }
    img.resign(&keys())
}
