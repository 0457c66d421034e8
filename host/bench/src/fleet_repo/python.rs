//! The python-tuf peer of `bench fleet-repo`: `python/ngclient_fleet.py` run with the
//! interpreter of the virtual environment the preflight fills with python-tuf, one run per
//! phase, its JSON summary read back and its requests found in nginx's log.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use super::{Client, Fleet, Measured, Phase};

/// The peer, written next to the run's other files.
const PYTHON_PEER: &str = include_str!("../../python/ngclient_fleet.py");
/// The virtual environment (below `APERTURE_PYTHON_TOOLS`) that holds python-tuf; xtask's
/// preflight makes it under the same name.
pub const PYTHON_TUF_VENV: &str = "python-tuf";

impl Fleet {
    /// The python-tuf peer: one run of the script for the phase.
    pub(super) fn python_phase(
        &self,
        python: &Path,
        script: &Path,
        phase: Phase,
        devices: usize,
        budget: Duration,
        workers: usize,
    ) -> Result<Measured> {
        let before = self.nginx.requests().len();
        let started = Instant::now();
        let out = Command::new(python)
            .arg(script)
            .arg("--metadata-url")
            .arg(self.base.join("metadata/")?.as_str())
            .arg("--targets-url")
            .arg(self.base.join("targets/")?.as_str())
            .arg("--root")
            .arg(&self.shipped_root)
            .arg("--devices-dir")
            .arg(self.states.join(Client::PythonTuf.dir()))
            .arg("--devices")
            .arg(devices.to_string())
            .arg("--workers")
            .arg(workers.to_string())
            .arg("--seconds")
            .arg(format!("{:.3}", budget.as_secs_f64()))
            .env("SSL_CERT_FILE", &self.ca)
            .stdin(Stdio::null())
            .output()
            .with_context(|| format!("starting {}", python.display()))?;
        if !out.status.success() {
            bail!(
                "the python-tuf peer failed ({}): {}",
                out.status,
                tail(&String::from_utf8_lossy(&out.stderr), 12)
            );
        }
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).with_context(|| {
            format!(
                "the python-tuf peer's output is not JSON: {}",
                String::from_utf8_lossy(&out.stdout)
            )
        })?;
        let n = |k: &str| v.get(k).and_then(|x| x.as_u64()).unwrap_or(0);
        let s = |k: &str| v.get(k).and_then(|x| x.as_str());
        let client_requests = n("requests");
        Ok(Measured {
            client: Client::PythonTuf,
            phase,
            devices,
            polls: n("polls") as usize,
            failures: n("failures") as usize,
            first_error: s("error").map(String::from),
            // The script's own time: without the interpreter's start.
            seconds: v
                .get("seconds")
                .and_then(|s| s.as_f64())
                .unwrap_or_else(|| started.elapsed().as_secs_f64()),
            client_requests,
            client_bytes: n("bytes"),
            server: self.logged_since(before, client_requests),
            detail: Some(format!(
                "tuf {}, {}",
                s("tuf").unwrap_or("?"),
                s("crypto").unwrap_or("?")
            )),
        })
    }
}

/// The python-tuf interpreter and the peer script, or why the peer cannot run.
pub(super) fn python_peer(work: &Path) -> Result<std::result::Result<(PathBuf, PathBuf), String>> {
    let Some(tools) = std::env::var_os("APERTURE_PYTHON_TOOLS") else {
        return Ok(Err(
            "APERTURE_PYTHON_TOOLS is not set: run `cargo xtask bench fleet-repo`, whose \
             preflight installs python-tuf"
                .into(),
        ));
    };
    let python = Path::new(&tools).join(PYTHON_TUF_VENV).join("bin/python");
    if !python.exists() {
        return Ok(Err(format!(
            "{} does not exist: run `cargo xtask bench fleet-repo` as root, whose preflight \
             installs python-tuf",
            python.display()
        )));
    }
    let script = work.join("ngclient_fleet.py");
    fs::write(&script, PYTHON_PEER)?;
    Ok(Ok((python, script)))
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}
