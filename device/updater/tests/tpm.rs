//! The floor and the keyring sequence in TPM NV counters (issue 12.9): the effective floor is
//! the higher of the store's and the TPM's, so rewriting the store to a lower floor does not
//! reopen the door to an old image; commits raise the counters. With a fake TPM always, and
//! against a software TPM (swtpm, started by the test on a TCP socket) where swtpm and
//! tpm2-tools are installed (`APERTURE_REQUIRE_TOOLS=1` makes their absence a failure).

mod common;

use std::path::Path;
use std::process::Command;
use std::sync::Arc;

use aperture_appliance::Area;
use aperture_slots::Slot;
use aperture_sys::tool::Swtpm;
use aperture_trust::TrustError;
use aperture_updater::tpm::{Counter, Counters, FakeCounters, Tpm2Tools};
use aperture_updater::{InstallOptions, UpdateError};
use common::*;

/// Overwrite the update record with floor 0 and keyring 0, as someone with root could.
fn lower_the_store(dev: &Device) {
    dev.store()
        .write(
            Area::Update,
            br#"{"format":1,"security_floor":0,"keyring_sequence":0}"#,
        )
        .unwrap();
}

/// v1 (security version 1) committed, then v2 (security version 5) installed and committed,
/// every updater using `tpm`; then the store is lowered. Returns the device running v2.
fn committed_v2(tpm: Arc<dyn Counters>) -> (Device, Image) {
    let v1 = image("1.0.0", 1, 1);
    let v2 = image("2.0.0", 5, 2);
    let dev = Device::new(&v1);
    dev.updater(Slot::A)
        .with_counters(Arc::clone(&tpm))
        .commit()
        .unwrap();
    assert_eq!(tpm.read(Counter::SecurityFloor).unwrap(), 1);
    dev.updater(Slot::A)
        .with_counters(Arc::clone(&tpm))
        .install(&mut &v2.bundle[..], &InstallOptions::default())
        .unwrap();
    assert_eq!(
        tpm.read(Counter::SecurityFloor).unwrap(),
        1,
        "not at install"
    );
    assert_eq!(dev.boot(), Slot::B);
    dev.set_running(Slot::B, &v2);
    dev.updater(Slot::B)
        .with_counters(Arc::clone(&tpm))
        .commit()
        .unwrap();
    assert_eq!(tpm.read(Counter::SecurityFloor).unwrap(), 5);
    lower_the_store(&dev);
    (dev, v2)
}

/// After the store was lowered, an image below the TPM's floor is still refused, and the next
/// commit writes the TPM's floor back into the store.
fn the_tpm_floor_holds(tpm: Arc<dyn Counters>) {
    let (dev, v2) = committed_v2(Arc::clone(&tpm));
    let old = image("3.0.0", 2, 3);
    let before = dev.snapshot();
    let err = dev
        .updater(Slot::B)
        .with_counters(Arc::clone(&tpm))
        .install(&mut &old.bundle[..], &InstallOptions::default())
        .unwrap_err();
    assert!(
        matches!(
            err,
            UpdateError::Trust(TrustError::SecurityVersionTooLow {
                floor: 5,
                offered: 2
            })
        ),
        "{err}"
    );
    assert_eq!(dev.snapshot(), before);
    let status = dev
        .updater(Slot::B)
        .with_counters(Arc::clone(&tpm))
        .status()
        .unwrap();
    assert_eq!(status.security_floor, 5);
    let c = dev
        .updater(Slot::B)
        .with_counters(Arc::clone(&tpm))
        .commit()
        .unwrap();
    assert_eq!(c.security_floor, 5);
    assert_eq!(
        dev.state().unwrap().security_floor,
        5,
        "healed from the TPM"
    );
    drop(v2);
}

#[test]
fn the_tpm_floor_holds_when_the_store_is_lowered() {
    the_tpm_floor_holds(Arc::new(FakeCounters::new()));
}

#[test]
fn a_tpm_that_cannot_be_read_stops_installs_but_never_a_commit() {
    let v1 = image("1.0.0", 1, 1);
    let v2 = image("2.0.0", 2, 2);
    let dev = Device::new(&v1);
    let tpm = FakeCounters::new();
    tpm.set_failing(true);
    let err = dev
        .updater(Slot::A)
        .with_counters(Arc::new(tpm.clone()))
        .install(&mut &v2.bundle[..], &InstallOptions::default())
        .unwrap_err();
    assert!(matches!(err, UpdateError::Tpm { .. }), "{err}");
    assert!(
        aperture_updater::error_chain(&err).contains("anti-rollback floor"),
        "{err}"
    );
    let c = dev
        .updater(Slot::A)
        .with_counters(Arc::new(tpm.clone()))
        .commit()
        .unwrap();
    assert_eq!(c.security_floor, 1);
    // Once the TPM answers again, the next commit brings it up to the store.
    tpm.set_failing(false);
    dev.updater(Slot::A)
        .with_counters(Arc::new(tpm.clone()))
        .commit()
        .unwrap();
    assert_eq!(tpm.read(Counter::SecurityFloor).unwrap(), 1);
}

/// swtpm, or `None` (after saying SKIPPED) when the tools are missing and not required.
fn swtpm() -> Option<Swtpm> {
    Swtpm::for_test(
        &[
            "tpm2_nvdefine",
            "tpm2_nvincrement",
            "tpm2_nvread",
            "tpm2_nvreadpublic",
        ],
        "the TPM counter tests",
    )
}

fn tools(tpm: &Swtpm) -> Tpm2Tools {
    Tpm2Tools::new(tpm.tcti())
}

#[test]
fn counters_in_a_software_tpm_only_go_up() {
    let Some(tpm) = swtpm() else { return };
    let c = tools(&tpm);
    assert_eq!(c.read(Counter::SecurityFloor).unwrap(), 0, "never defined");
    assert_eq!(c.raise(Counter::SecurityFloor, 3).unwrap(), 3);
    assert_eq!(c.raise(Counter::SecurityFloor, 2).unwrap(), 3);
    assert_eq!(c.read(Counter::SecurityFloor).unwrap(), 3);
    assert_eq!(c.raise(Counter::KeyringSequence, 2).unwrap(), 2);
    assert_eq!(c.raise(Counter::SecurityFloor, 5).unwrap(), 5);
    assert_eq!(c.read(Counter::KeyringSequence).unwrap(), 2);
    // Deleting and redefining a counter does not lower it (the TPM starts it above every
    // counter it deleted).
    let undefine = Command::new("tpm2_nvundefine")
        .args(["-C", "o", "0x1500a70"])
        .env("TPM2TOOLS_TCTI", tpm.tcti())
        .output()
        .unwrap();
    assert!(
        undefine.status.success(),
        "{}",
        String::from_utf8_lossy(&undefine.stderr)
    );
    assert_eq!(c.read(Counter::SecurityFloor).unwrap(), 0, "gone");
    assert!(c.raise(Counter::SecurityFloor, 1).unwrap() > 5);
}

#[test]
fn the_floor_in_a_software_tpm_holds_when_the_store_is_lowered() {
    let Some(tpm) = swtpm() else { return };
    the_tpm_floor_holds(Arc::new(tools(&tpm)));
}

#[test]
fn an_unreachable_tpm_is_named() {
    let c = Tpm2Tools::device(Path::new("/nonexistent/tpmrm0"));
    if aperture_sys::tool::for_test(
        "tpm2_nvreadpublic",
        "tpm2-tools",
        "an_unreachable_tpm_is_named",
    )
    .is_none()
    {
        return;
    }
    let e = c.read(Counter::SecurityFloor).unwrap_err();
    let text = aperture_updater_error_chain(&e);
    assert!(
        text.contains("tpm2_nvreadpublic") && text.contains("anti-rollback floor"),
        "{text}"
    );
}

fn aperture_updater_error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut s = e.source();
    while let Some(x) = s {
        text.push_str(": ");
        text.push_str(&x.to_string());
        s = x.source();
    }
    text
}
