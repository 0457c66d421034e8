//! External tools in tests: [`for_test`] finds one on `PATH`, or says why the test skips.
//!
//! `cargo xtask test` installs every tool the tiers use before it runs them, and sets
//! `APERTURE_REQUIRE_TOOLS=1`: then a missing tool is a failure, never a quiet skip. Elsewhere
//! (a plain `cargo test` on a workstation) the test prints `SKIPPED: <why>` and returns.
//!
//! [`Swtpm`] is the tests' software TPM 2.0 on a TCP socket (the host has no `/dev/tpm`), for
//! every crate that drives tpm2-tools: storage's sealed keys, the updater's NV counters, the
//! fleet identity's sealed key.

use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The path of `program` on `PATH`, if it is there.
pub fn find(program: &str) -> Option<PathBuf> {
    // Administration tools live in sbin, which a normal user's PATH may lack.
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin"].map(PathBuf::from))
        .map(|dir| dir.join(program))
        .find(|p| p.is_file())
}

/// Whether missing tools must fail tests (`APERTURE_REQUIRE_TOOLS=1`).
pub fn required() -> bool {
    std::env::var("APERTURE_REQUIRE_TOOLS").is_ok_and(|v| v == "1")
}

/// For a test that needs `program` (from Debian package `package`): its path; or, when it is
/// missing, a panic under `APERTURE_REQUIRE_TOOLS=1` and otherwise `None` after printing
/// `SKIPPED: <test> ...`.
pub fn for_test(program: &str, package: &str, test: &str) -> Option<PathBuf> {
    if let Some(p) = find(program) {
        return Some(p);
    }
    let why = format!(
        "{test}: `{program}` (Debian package {package}) is not installed; `cargo xtask test` \
         installs it as root"
    );
    if required() {
        panic!("APERTURE_REQUIRE_TOOLS=1 and a tool is missing: {why}");
    }
    eprintln!("SKIPPED: {why}");
    None
}

/// A software TPM 2.0 (`swtpm socket --tpm2`) on two adjacent TCP ports of 127.0.0.1 (server
/// P, control P + 1, as the swtpm TCTI expects), its state in a fresh folder: a new TPM with
/// seeds of its own each time. Killed, and its folder removed, when dropped.
#[derive(Debug)]
pub struct Swtpm {
    child: Child,
    port: u16,
    state: PathBuf,
}

impl Swtpm {
    /// For `test`: a started swtpm, or `None` (after `SKIPPED`, or a panic under
    /// `APERTURE_REQUIRE_TOOLS=1`) when swtpm or one of `tpm2_tools` is not installed.
    pub fn for_test(tpm2_tools: &[&str], test: &str) -> Option<Swtpm> {
        for_test("swtpm", "swtpm", test)?;
        for t in tpm2_tools {
            for_test(t, "tpm2-tools", test)?;
        }
        Some(Swtpm::start())
    }

    /// Start one; panics (this is test support) when it does not answer on any of 20 port
    /// pairs within 10 s each.
    pub fn start() -> Swtpm {
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        for _ in 0..20 {
            // Two adjacent free ports; another process may take them meanwhile, so a swtpm that
            // exits at once is retried on others.
            let probe = TcpListener::bind("127.0.0.1:0").expect("binding 127.0.0.1:0");
            let port = probe.local_addr().expect("a bound address").port();
            drop(probe);
            if port == u16::MAX || TcpListener::bind(("127.0.0.1", port + 1)).is_err() {
                continue;
            }
            let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let state =
                std::env::temp_dir().join(format!("aperture-swtpm.{}.{n}", std::process::id()));
            let _ = std::fs::remove_dir_all(&state);
            std::fs::create_dir_all(&state)
                .unwrap_or_else(|e| panic!("creating {}: {e}", state.display()));
            let child = Command::new("swtpm")
                .args(["socket", "--tpm2", "--flags", "not-need-init,startup-clear"])
                .arg("--tpmstate")
                .arg(format!("dir={}", state.display()))
                .arg("--server")
                .arg(format!("type=tcp,port={port},bindaddr=127.0.0.1"))
                .arg("--ctrl")
                .arg(format!("type=tcp,port={},bindaddr=127.0.0.1", port + 1))
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap_or_else(|e| panic!("starting swtpm: {e}"));
            let mut tpm = Swtpm { child, port, state };
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = tpm.child.try_wait() {
                    break; // lost a port to someone else: try another pair
                }
                if TcpStream::connect(("127.0.0.1", port)).is_ok() {
                    return tpm;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        panic!("swtpm did not start on any of 20 port pairs");
    }

    /// Its server port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The TCTI string for tpm2-tools (`TPM2TOOLS_TCTI`).
    pub fn tcti(&self) -> String {
        format!("swtpm:host=127.0.0.1,port={}", self.port)
    }

    /// Its state folder.
    pub fn state_dir(&self) -> &Path {
        &self.state
    }

    /// A power cycle: `swtpm_ioctl -i` (the TPM is re-initialised: PCRs back to zero, NV and
    /// seeds kept) then `tpm2_startup -c`, as firmware does at boot. Panics on failure.
    pub fn power_cycle(&self) {
        let ok = Command::new("swtpm_ioctl")
            .args(["--tcp", &format!("127.0.0.1:{}", self.port + 1), "-i"])
            .status()
            .map(|s| s.success());
        assert!(matches!(ok, Ok(true)), "swtpm_ioctl -i: {ok:?}");
        let ok = Command::new("tpm2_startup")
            .arg("-c")
            .env("TPM2TOOLS_TCTI", self.tcti())
            .status()
            .map(|s| s.success());
        assert!(matches!(ok, Ok(true)), "tpm2_startup -c: {ok:?}");
    }
}

impl Drop for Swtpm {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.state);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_what_is_on_path_and_not_what_is_not() {
        assert!(find("sh").is_some());
        assert!(find("aperture-no-such-tool").is_none());
        if !required() {
            assert!(for_test("aperture-no-such-tool", "none", "this test").is_none());
        }
    }
}
