//! The fleet server as the VM tier runs it (issue 16): the real `aperture-fleet` binary of
//! this workspace (`init`, then `serve` as a process of its own on 127.0.0.1, which guests
//! reach at 10.0.2.2 through QEMU's user-mode gateway; its certificate names both), its admin
//! commands run as an administrator would, provisioning archives made with `aperture-fleet
//! provision`, and the USB stick an appliance takes one from (a vfat image labelled
//! `APERTURE`, made with mkfs.vfat and mtools, attached with QEMU's xHCI and usb-storage).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use aperture_sys::Cmd;

use crate::fleet::FLEET_GUEST_PORT;

/// The `aperture-fleet` binary the workspace build made (beside the test's own executable).
pub fn bin() -> Result<PathBuf> {
    let exe = std::env::current_exe()?;
    // target/debug/deps/vm_update-HASH -> target/debug/aperture-fleet
    let bin = exe
        .parent()
        .and_then(Path::parent)
        .map(|d| d.join("aperture-fleet"))
        .context("the test executable has no parent folder")?;
    if !bin.is_file() {
        bail!(
            "{} is missing: build the workspace first (cargo build --workspace, or cargo build \
             -p aperture-fleet)",
            bin.display()
        );
    }
    Ok(bin)
}

/// A running `aperture-fleet serve`; killed when dropped.
#[derive(Debug)]
pub struct FleetServer {
    child: Child,
    bin: PathBuf,
    dir: PathBuf,
    token: String,
    /// The URL the host reaches it at.
    pub url: String,
    /// The URL guests reach it at.
    pub guest_url: String,
}

impl FleetServer {
    /// `init` in `dir` (a certificate for 10.0.2.2 and 127.0.0.1, SQLite), then `serve` on
    /// 127.0.0.1:[`FLEET_GUEST_PORT`], signing rollouts into the repository `repo`.
    pub fn start(dir: &Path, repo: &Path) -> Result<FleetServer> {
        let bin = bin()?;
        std::fs::create_dir_all(dir)?;
        let init = Command::new(&bin)
            .args(["init", "--name", "10.0.2.2", "--name", "127.0.0.1", "--dir"])
            .arg(dir)
            .stdin(Stdio::null())
            .output()
            .context("running aperture-fleet init")?;
        if !init.status.success() {
            bail!(
                "aperture-fleet init failed: {}",
                String::from_utf8_lossy(&init.stderr)
            );
        }
        let token = String::from_utf8_lossy(&init.stdout).trim().to_string();
        if !token.starts_with("apf-admin-") {
            bail!("aperture-fleet init printed no admin token: {token:?}");
        }
        let log = std::fs::File::create(dir.join("serve.log"))?;
        let child = Command::new(&bin)
            .args(["serve", "--listen"])
            .arg(format!("127.0.0.1:{FLEET_GUEST_PORT}"))
            .arg("--dir")
            .arg(dir)
            .arg("--repo")
            .arg(repo)
            // Signing happens on each change; no periodic re-signing while the test also
            // publishes into the same repository.
            .args(["--reconcile-every", "1d"])
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("starting aperture-fleet serve")?;
        let mut server = FleetServer {
            child,
            bin,
            dir: dir.to_path_buf(),
            token,
            url: format!("https://127.0.0.1:{FLEET_GUEST_PORT}"),
            guest_url: format!("https://10.0.2.2:{FLEET_GUEST_PORT}"),
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(("127.0.0.1", FLEET_GUEST_PORT)).is_err() {
            if let Some(status) = server.child.try_wait()? {
                bail!(
                    "aperture-fleet serve exited ({status}) before listening: {}",
                    server.log()
                );
            }
            if Instant::now() > deadline {
                bail!("aperture-fleet serve did not listen on {FLEET_GUEST_PORT} within 30 s");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Ok(server)
    }

    /// The server's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("serve.log")).unwrap_or_default()
    }

    /// Run an admin command (`devices --json`, `rollout start ...`) as the first admin; its
    /// standard output.
    pub fn admin(&self, args: &[&str]) -> Result<String> {
        let out = Command::new(&self.bin)
            .args(args)
            .env("APERTURE_FLEET_SERVER", &self.url)
            .env("APERTURE_FLEET_TOKEN", &self.token)
            .env("APERTURE_FLEET_CA", self.dir.join("ca.pem"))
            .stdin(Stdio::null())
            .output()
            .with_context(|| format!("running aperture-fleet {}", args.join(" ")))?;
        if !out.status.success() {
            bail!(
                "aperture-fleet {} failed: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// `devices --json`.
    pub fn devices(&self) -> Result<Vec<serde_json::Value>> {
        let text = self.admin(&["devices", "--json"])?;
        let v: serde_json::Value = serde_json::from_str(&text)
            .with_context(|| format!("devices --json printed {text}"))?;
        match v {
            serde_json::Value::Array(a) => Ok(a),
            other => bail!("devices --json printed no list: {other}"),
        }
    }

    /// The device list once one device satisfies `wanted` (that device), or the error after
    /// `timeout` with the last list.
    pub fn wait_device(
        &self,
        what: &str,
        wanted: impl Fn(&serde_json::Value) -> bool,
        timeout: Duration,
    ) -> Result<serde_json::Value> {
        let deadline = Instant::now() + timeout;
        loop {
            let list = self.devices()?;
            if let Some(d) = list.iter().find(|d| wanted(d)) {
                return Ok(d.clone());
            }
            if Instant::now() > deadline {
                bail!(
                    "no device {what} within {timeout:?}; devices --json: {}",
                    serde_json::Value::Array(list)
                );
            }
            std::thread::sleep(Duration::from_secs(2));
        }
    }

    /// One provisioning archive for guests (`provision --fleet https://10.0.2.2:PORT`, the
    /// tokens asked at 127.0.0.1), in `out/1`.
    pub fn provision(&self, out: &Path) -> Result<PathBuf> {
        let printed = self.admin(&[
            "provision",
            "--fleet",
            &self.guest_url,
            "--api-token",
            &self.token,
            "--ca",
            &self.dir.join("ca.pem").display().to_string(),
            "--out",
            &out.display().to_string(),
            "--expires-in",
            "2h",
        ])?;
        let dir = PathBuf::from(printed.trim());
        if !dir.join("token").is_file() {
            bail!("provision printed {printed:?}, which holds no archive");
        }
        Ok(dir)
    }
}

impl Drop for FleetServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A 16 MiB vfat USB stick image labelled `APERTURE` holding the archive in `archive` at its
/// root (what a build engineer copies onto a stick).
pub fn usb_stick(archive: &Path, img: &Path) -> Result<()> {
    let _ = std::fs::remove_file(img);
    Cmd::new("mkfs.vfat")
        .args(["-n", aperture_appliance::files::PROVISION_USB_LABEL, "-C"])
        .arg(img)
        .arg("16384")
        .run()?;
    for e in std::fs::read_dir(archive)? {
        Cmd::new("mcopy")
            .arg("-i")
            .arg(img)
            .arg(e?.path())
            .arg("::/")
            .run()?;
    }
    Ok(())
}

/// The files at the root of a stick image (`mdir -b`), by name.
pub fn stick_files(img: &Path) -> Result<Vec<String>> {
    let text = Cmd::new("mdir")
        .args(["-b", "-i"])
        .arg(img)
        .arg("::/")
        .text()
        .or_else(|e| {
            // mdir fails on an empty root ("No files").
            if e.to_string().contains("No files") {
                Ok(String::new())
            } else {
                Err(e)
            }
        })?;
    Ok(text
        .lines()
        .map(|l| l.trim().trim_start_matches("::/").to_lowercase())
        .filter(|l| !l.is_empty())
        .collect())
}

/// QEMU arguments attaching `img` as a USB mass-storage stick on an xHCI controller.
pub fn usb_stick_args(img: &Path) -> Vec<String> {
    vec![
        "-device".into(),
        "qemu-xhci,id=xhci".into(),
        "-drive".into(),
        format!("if=none,id=stick,format=raw,file={}", img.display()),
        "-device".into(),
        "usb-storage,bus=xhci.0,drive=stick".into(),
    ]
}
