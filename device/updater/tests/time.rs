//! Trusted time (issue 12.8): key expiry is judged against the latest of the system clock, the
//! running image's build time (`source_date_epoch` in its verity-protected build facts) and the
//! newest signed time the device has seen (the build time of every bundle that passed its
//! checks, kept in the state store), so a clock that is behind cannot revive an expired key.

mod common;

use aperture_slots::Slot;
use aperture_trust::TrustError;
use aperture_updater::{InstallOptions, UpdateError};
use common::*;

/// The running image (slot A, `image`) was built at `built`.
fn built_at(dev: &Device, image: &Image, built: u64) {
    let mut facts = image.facts();
    facts.source_date_epoch = built;
    std::fs::write(&dev.paths.build_facts, facts.to_bytes()).unwrap();
}

fn expired(err: UpdateError) {
    assert!(
        matches!(err, UpdateError::Trust(TrustError::KeyExpired { .. })),
        "{err}"
    );
}

#[test]
fn a_clock_set_before_the_build_still_refuses_an_expired_key() {
    let v1 = image("1.0.0", 1, 1);
    let dev = Device::new(&v1);
    built_at(&dev, &v1, NOW);
    // Signed by a key that expired before the running image was built (the bundle itself
    // says it was built long before, so only the device's own knowledge can refuse it).
    let stale = image_with("2.0.0", 2, 2, &keys_with(snakeoil(1), NOW - 1), |_| {});
    let before = dev.snapshot();
    let err = dev
        .updater(Slot::A)
        .with_clock(|| 0)
        .install(&mut &stale.bundle[..], &InstallOptions::default())
        .unwrap_err();
    expired(err);
    assert_eq!(dev.snapshot(), before);
}

#[test]
fn the_newest_signed_time_seen_is_kept_and_used() {
    let v1 = image("1.0.0", 1, 1);
    let dev = Device::new(&v1);
    // A bundle built at NOW passes its checks on a device whose clock says 1970.
    let v2 = image_with("2.0.0", 2, 2, &keys(), |m| m.build.source_date_epoch = NOW);
    dev.updater(Slot::A)
        .with_clock(|| 0)
        .install(&mut &v2.bundle[..], &InstallOptions::default())
        .unwrap();
    assert_eq!(dev.state().unwrap().trusted_time, NOW);
    assert_eq!(dev.updater(Slot::A).status().unwrap().trusted_time, NOW);
    // A key that expired before then is refused, though the clock and the running image's
    // build time (1) say otherwise.
    let stale = image_with("3.0.0", 3, 3, &keys_with(snakeoil(1), NOW - 10), |_| {});
    let err = dev
        .updater(Slot::A)
        .with_clock(|| 0)
        .install(&mut &stale.bundle[..], &InstallOptions::default())
        .unwrap_err();
    expired(err);
}

#[test]
fn a_bundle_built_after_its_key_expired_is_refused() {
    let v1 = image("1.0.0", 1, 1);
    let dev = Device::new(&v1);
    let late = image_with("2.0.0", 2, 2, &keys_with(snakeoil(1), NOW - 1), |m| {
        m.build.source_date_epoch = NOW
    });
    let err = dev
        .updater(Slot::A)
        .with_clock(|| 0)
        .install(&mut &late.bundle[..], &InstallOptions::default())
        .unwrap_err();
    expired(err);
}
