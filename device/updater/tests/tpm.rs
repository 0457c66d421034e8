//! The floor and the keyring sequence in TPM NV counters (issue 12.9): the effective floor is
//! the higher of the store's and the TPM's, so rewriting the store to a lower floor does not
//! reopen the door to an old image; commits raise the counters. With a fake TPM always, and
//! against a software TPM (swtpm, started by the test on a TCP socket) where swtpm and
//! tpm2-tools are installed (`APERTURE_REQUIRE_TOOLS=1` makes their absence a failure).

mod common;

use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use aperture_appliance::Area;
use aperture_slots::Slot;
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

/// A software TPM on two TCP ports (server P, control P + 1, as the swtpm TCTI expects),
/// killed when dropped.
struct Swtpm {
    child: Child,
    port: u16,
    _state: tempfile::TempDir,
}

impl Drop for Swtpm {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn on_path(tool: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(tool).is_file()))
}

/// swtpm, or `None` (after saying SKIPPED) when the tools are missing and not required.
fn swtpm() -> Option<Swtpm> {
    let tools = [
        "swtpm",
        "tpm2_nvdefine",
        "tpm2_nvincrement",
        "tpm2_nvread",
        "tpm2_nvreadpublic",
    ];
    let missing: Vec<&str> = tools.into_iter().filter(|t| !on_path(t)).collect();
    if !missing.is_empty() {
        let why = format!(
            "{} not installed (apt-get install swtpm swtpm-tools tpm2-tools)",
            missing.join(", ")
        );
        if std::env::var("APERTURE_REQUIRE_TOOLS").as_deref() == Ok("1") {
            panic!("{why}");
        }
        eprintln!("SKIPPED: {why}");
        return None;
    }
    for _ in 0..20 {
        // Two adjacent free ports.
        let probe = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = probe.local_addr().unwrap().port();
        drop(probe);
        if port == u16::MAX || TcpListener::bind(("127.0.0.1", port + 1)).is_err() {
            continue;
        }
        let state = tempfile::tempdir().unwrap();
        let child = Command::new("swtpm")
            .args(["socket", "--tpm2", "--flags", "not-need-init,startup-clear"])
            .arg("--tpmstate")
            .arg(format!("dir={}", state.path().display()))
            .arg("--server")
            .arg(format!("type=tcp,port={port},bindaddr=127.0.0.1"))
            .arg("--ctrl")
            .arg(format!("type=tcp,port={},bindaddr=127.0.0.1", port + 1))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut tpm = Swtpm {
            child,
            port,
            _state: state,
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = tpm.child.try_wait() {
                break; // lost the port to someone else: try another
            }
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return Some(tpm);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    panic!("swtpm did not start on any of 20 port pairs");
}

fn tools(tpm: &Swtpm) -> Tpm2Tools {
    Tpm2Tools::new(format!("swtpm:host=127.0.0.1,port={}", tpm.port))
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
        .env(
            "TPM2TOOLS_TCTI",
            format!("swtpm:host=127.0.0.1,port={}", tpm.port),
        )
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
    if !on_path("tpm2_nvreadpublic") {
        eprintln!("SKIPPED: tpm2-tools not installed");
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
