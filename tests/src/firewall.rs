//! The VM tier's firewall check, run inside another scenario's boot (one boot that checks
//! several things): the ruleset the guest's kernel holds is judged as the audit judges the
//! image's, a listener on every probed guest port stays unreachable through QEMU forwards, an
//! outbound flow the policy allows reaches the host and one it does not is blocked, and the
//! probe is shown able to see an open port.
//!
//! The guest side is `tests/scripts/firewall.sh`; the host side is [`Firewall`]: made before
//! the boot (its listeners and the piece of script), it sets the boot's forwards, then
//! [`Firewall::check`] runs once the guest is up and lets the script go on to its next piece.

use std::io::Read;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::{Context, Result};
use aperture_image::audit::{firewall, nft, Severity};
use aperture_image::qemu::{Vm, VmConfig};
use aperture_image::recipe::Recipe;
use aperture_image::security::Policy;

use crate::http::GUEST_SERVER_PORT;
use crate::scenario::Script;
use crate::BOOT_TIMEOUT;

/// Host port of the forward to guest port `p`: `FORWARD_BASE + p`.
const FORWARD_BASE: u16 = 30000;

/// Probes at a time: each one the firewall drops waits out its 3 s, and QEMU holds a socket
/// for each.
const PROBES: usize = 256;

/// Guest ports the check listens on and probes: every privileged port and the usual service
/// ports above them.
pub fn probed_ports() -> Vec<u16> {
    let mut v: Vec<u16> = (1..=1024).collect();
    v.extend([
        1883, 2375, 3000, 5000, 5353, 5355, 8000, 8080, 8443, 8554, 9000, 9090, 9100,
    ]);
    v
}

/// What a probe of one forwarded port saw.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Probe {
    /// The guest's listener answered with its banner.
    Open,
    /// QEMU took the connection but nothing came back from the guest within the wait.
    Silent,
    /// The host side of the forward refused or failed: the probe itself did not happen.
    Unreachable,
}

/// Connect to 127.0.0.1:`port` (a QEMU forward) and report whether the guest's listener
/// answered with its banner within `wait`.
fn banner(port: u16, wait: Duration) -> Probe {
    let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
        return Probe::Unreachable;
    };
    let _ = s.set_read_timeout(Some(wait));
    let mut buf = [0u8; 64];
    let mut got = Vec::new();
    while let Ok(n) = s.read(&mut buf) {
        if n == 0 {
            break;
        }
        got.extend_from_slice(&buf[..n]);
        if got.windows(4).any(|w| w == b"OPEN") {
            return Probe::Open;
        }
    }
    Probe::Silent
}

/// A host listener that records what connections send until one says DONE or it is stopped.
fn record(l: TcpListener, stop: Arc<AtomicBool>) -> JoinHandle<Vec<String>> {
    l.set_nonblocking(true).unwrap();
    std::thread::spawn(move || {
        let mut got = Vec::new();
        while !stop.load(Ordering::Relaxed) {
            match l.accept() {
                Ok((mut c, _)) => {
                    let _ = c.set_nonblocking(false);
                    let _ = c.set_read_timeout(Some(Duration::from_secs(5)));
                    let mut s = String::new();
                    let _ = c.read_to_string(&mut s);
                    got.push(s);
                    if got.iter().any(|s| s.contains("DONE")) {
                        break;
                    }
                }
                Err(_) => std::thread::sleep(Duration::from_millis(50)),
            }
        }
        got
    })
}

/// The host side of one firewall check; its listener threads end with it, even on a panic.
pub struct Firewall {
    ports: Vec<u16>,
    denied_port: u16,
    www: PathBuf,
    stop: Arc<AtomicBool>,
    allowed: Option<JoinHandle<Vec<String>>>,
    denied: Option<JoinHandle<Vec<String>>>,
}

impl Drop for Firewall {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

impl Firewall {
    /// Start the host's outbound targets, reached by the guest at 10.0.2.2: RTSP (554, which
    /// the policy allows to the camera subnet 10.0.0.0/8) and an ephemeral port no flow
    /// allows. `www` is the folder the guests' file server serves: the go-aheads go there.
    pub fn prepare(www: &Path) -> Result<Firewall> {
        let allowed = TcpListener::bind("127.0.0.1:554").context("binding 127.0.0.1:554 (root)")?;
        let denied = TcpListener::bind("127.0.0.1:0")?;
        let denied_port = denied.local_addr()?.port();
        let stop = Arc::new(AtomicBool::new(false));
        Ok(Firewall {
            ports: probed_ports(),
            denied_port,
            www: www.to_path_buf(),
            allowed: Some(record(allowed, stop.clone())),
            denied: Some(record(denied, stop.clone())),
            stop,
        })
    }

    /// The guest's piece of script (`tests/scripts/firewall.sh`).
    pub fn script(&self, script: Script) -> Result<Script> {
        let list = self
            .ports
            .iter()
            .map(u16::to_string)
            .collect::<Vec<_>>()
            .join(",");
        script.piece(
            "firewall",
            &[
                ("PORTS", &list),
                ("DENIED_PORT", &self.denied_port.to_string()),
                ("SERVER_PORT", &GUEST_SERVER_PORT.to_string()),
            ],
        )
    }

    /// The boot's forwards: one host port for each probed guest port.
    pub fn forward(&self, c: &mut VmConfig) {
        c.forwards
            .extend(self.ports.iter().map(|p| (FORWARD_BASE + p, *p)));
    }

    /// Check everything against the running guest, built from the recipe at `recipe`, then
    /// let its script go on. Panics (a test's assertion) on the first thing that is wrong.
    pub fn check(mut self, vm: &Vm, recipe: &Path) {
        vm.wait_for("APERTURE-READY", BOOT_TIMEOUT).unwrap();
        vm.wait_for("APERTURE-LISTENERS ", BOOT_TIMEOUT).unwrap();

        // 1. The ruleset the kernel holds matches the image's policy, judged as the audit
        //    judges the image's file.
        vm.wait_for("APERTURE-NFT-END", BOOT_TIMEOUT).unwrap();
        let console = vm.console();
        let live: String = console
            .lines()
            .filter_map(|l| {
                l.split_once("APERTURE-NFT| ")
                    .map(|(_, rule)| format!("{rule}\n"))
            })
            .collect();
        let live = live.as_str();
        assert!(
            live.contains("table inet aperture"),
            "no ruleset on the console"
        );
        let recipe = Recipe::load(recipe).unwrap();
        let policy = Policy::from_recipe(&recipe);
        let (summary, findings) = firewall::judge(&nft::parse(live), &policy);
        let violations: Vec<_> = findings
            .iter()
            .filter(|f| f.severity == Severity::Violation)
            .collect();
        assert!(
            violations.is_empty(),
            "live ruleset: {violations:#?}\n{live}"
        );
        assert!(
            summary.inbound.is_empty(),
            "no inbound flow by default: {summary:?}"
        );
        assert!(
            summary.outbound.iter().any(|o| o.contains("tcp/554")),
            "{summary:?}"
        );
        eprintln!("live ruleset: {summary:?}");

        // 2. Every listening socket outside loopback is on a probed port, and each probed
        //    port has a listener in the guest; none of them answers through the forwards.
        let ports = &self.ports;
        for line in console.lines().filter(|l| l.contains("APERTURE-LISTEN ")) {
            let local = line.rsplit(' ').next().unwrap_or_default();
            if local.starts_with("127.") || local.starts_with("[::1]") {
                continue;
            }
            let port: u16 = local.rsplit(':').next().unwrap().parse().unwrap();
            assert!(ports.contains(&port), "guest listens on unprobed {local}");
        }
        let n: usize = console
            .lines()
            .find_map(|l| l.split("APERTURE-LISTENERS ").nth(1))
            .expect("listener count")
            .trim()
            .parse()
            .unwrap();
        assert!(n + 8 >= ports.len(), "only {n} guest listeners");
        // A forward that cannot be reached probed nothing: that fails the check rather than
        // counting as closed.
        let seen: Vec<(u16, Probe)> = std::thread::scope(|sc| {
            let handles: Vec<_> = ports
                .chunks(ports.len().div_ceil(PROBES))
                .map(|chunk| {
                    sc.spawn(move || {
                        chunk
                            .iter()
                            .map(|p| (*p, banner(FORWARD_BASE + p, Duration::from_secs(3))))
                            .collect::<Vec<_>>()
                    })
                })
                .collect();
            handles
                .into_iter()
                .flat_map(|h| h.join().unwrap())
                .collect()
        });
        let of = |what: Probe| -> Vec<u16> {
            seen.iter()
                .filter(|(_, p)| *p == what)
                .map(|(port, _)| *port)
                .collect()
        };
        let unreachable = of(Probe::Unreachable);
        assert!(
            unreachable.is_empty(),
            "the probe could not reach the forwards of guest ports {unreachable:?}"
        );
        let open = of(Probe::Open);
        assert!(
            open.is_empty(),
            "guest ports answered through the firewall: {open:?}"
        );
        eprintln!("{} guest ports probed, all closed", ports.len());

        // 3. Outbound: the allowed flow reached the host, the other did not.
        let out = vm
            .wait_for(&format!("APERTURE-OUT {} ", self.denied_port), BOOT_TIMEOUT)
            .unwrap();
        assert!(out.contains("blocked"), "{out}");
        let out = vm.wait_for("APERTURE-OUT 554 ", BOOT_TIMEOUT).unwrap();
        assert!(out.contains(" ok"), "{out}");
        let got = self.allowed.take().unwrap().join().unwrap();
        assert!(got.iter().any(|s| s.contains("guest to 554")), "{got:?}");
        self.stop.store(true, Ordering::Relaxed);
        let got = self.denied.take().unwrap().join().unwrap();
        assert!(got.is_empty(), "the blocked flow reached the host: {got:?}");

        // 4. The probe can see an open port: with an accept rule added for 8080, it answers.
        std::fs::write(self.www.join("control"), "go").unwrap();
        vm.wait_for("APERTURE-CONTROL-OPEN", BOOT_TIMEOUT).unwrap();
        let seen = (0..20).any(|_| {
            banner(FORWARD_BASE + 8080, Duration::from_secs(3)) == Probe::Open || {
                std::thread::sleep(Duration::from_secs(1));
                false
            }
        });
        assert!(
            seen,
            "the control port 8080 never answered: the probe cannot see open ports"
        );

        // The guest's script goes on with its next piece.
        std::fs::write(self.www.join("control-done"), "go").unwrap();
        vm.wait_for("APERTURE-FIREWALL-DONE", BOOT_TIMEOUT).unwrap();
    }
}
