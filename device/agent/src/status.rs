//! `aperture-agent status`: product, version, board, the booted slot, and whether the root is
//! mounted read-only through dm-verity, as a line of text or as JSON; with the A/B state from
//! `aperture-update` (both slots, the anti-rollback floor) and a rollback notice when this boot
//! came back from a slot that failed its health check.

use std::fmt;

use serde::{Deserialize, Serialize};

use aperture_updater::status::{Rollback, UpdateStatus};
use aperture_updater::{Paths, Updater};

use crate::host::Host;

/// What the image says about itself (`/etc/aperture/build.json`, written by the image builder).
///
/// Defined in `aperture-updater` (which reads it to check updates and to commit, and which
/// this crate calls for the health gate) and re-exported here under the name DEVICE.md uses.
pub use aperture_updater::facts::BuildFacts;

/// How the root file system is mounted.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct RootMount {
    /// Source device of `/`.
    pub device: String,
    /// File system type.
    pub fstype: String,
    /// Mounted read-only.
    pub read_only: bool,
    /// The device is a dm-verity target (device-mapper name `aperture-root`, verity uuid).
    pub verity: bool,
}

/// The status report.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Status {
    /// Product.
    pub product: String,
    /// Image version.
    pub version: String,
    /// Board.
    pub board: String,
    /// Booted slot (`a` or `b`) from the kernel command line, if it names one.
    pub slot: Option<String>,
    /// Security version of the running image.
    pub security_version: u64,
    /// Root mount.
    pub root: Option<RootMount>,
    /// A/B state from the updater (absent when the ESP or boot control cannot be read).
    #[serde(default)]
    pub update: Option<UpdateStatus>,
    /// Why `update` is absent, if it is.
    #[serde(default)]
    pub update_unavailable: Option<String>,
    /// The slot that failed its health check, when this boot is a rollback from it.
    #[serde(default)]
    pub rollback: Option<Rollback>,
}

/// Why status could not be read.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StatusError {
    /// The facts file is missing or unreadable.
    #[error("cannot read {path}: {source} (is this an Aperture image?)")]
    Facts {
        /// Path.
        path: String,
        /// Cause.
        source: std::io::Error,
    },
    /// The facts file is not what the builder writes.
    #[error("{path} is malformed: {source}")]
    Malformed {
        /// Path.
        path: String,
        /// Cause.
        source: serde_json::Error,
    },
}

/// The booted slot named by `aperture.slot=` on a kernel command line.
pub fn slot_from_cmdline(cmdline: &str) -> Option<String> {
    cmdline
        .split_whitespace()
        .filter_map(|w| w.strip_prefix("aperture.slot="))
        .next_back()
        .filter(|s| *s == "a" || *s == "b")
        .map(str::to_string)
}

/// Read the image's facts.
pub fn read_facts(host: &Host) -> Result<BuildFacts, StatusError> {
    let path = host.build_facts();
    let text = std::fs::read_to_string(&path).map_err(|source| StatusError::Facts {
        path: path.display().to_string(),
        source,
    })?;
    serde_json::from_str(&text).map_err(|source| StatusError::Malformed {
        path: path.display().to_string(),
        source,
    })
}

/// The mount of `/` from a mountinfo table (proc(5)): the last entry for `/` wins, as the
/// kernel stacks mounts.
pub fn root_mount(mountinfo: &str, host: &Host) -> Option<RootMount> {
    let mut found = None;
    for line in mountinfo.lines() {
        let Some((left, right)) = line.split_once(" - ") else {
            continue;
        };
        let l: Vec<&str> = left.split_whitespace().collect();
        let r: Vec<&str> = right.split_whitespace().collect();
        if l.len() < 6 || r.len() < 2 || l[4] != "/" {
            continue;
        }
        let read_only = l[5].split(',').any(|o| o == "ro");
        let majmin = l[2];
        found = Some(RootMount {
            device: r[1].to_string(),
            fstype: r[0].to_string(),
            read_only,
            verity: is_verity(host, majmin, r[1]),
        });
    }
    found
}

/// A device-mapper device made by veritysetup has a DM uuid starting `CRYPT-VERITY-`.
fn is_verity(host: &Host, majmin: &str, device: &str) -> bool {
    let uuid = std::fs::read_to_string(host.path(format!("sys/dev/block/{majmin}/dm/uuid")))
        .unwrap_or_default();
    let _ = device;
    uuid.starts_with("CRYPT-VERITY-")
}

/// Gather the status.
pub fn gather(host: &Host) -> Result<Status, StatusError> {
    let facts = read_facts(host)?;
    let cmdline = std::fs::read_to_string(host.cmdline()).unwrap_or_default();
    let mountinfo = std::fs::read_to_string(host.mountinfo()).unwrap_or_default();
    let (update, update_unavailable) = match update_status(host) {
        Ok(u) => (Some(u), None),
        Err(e) => (None, Some(e.to_string())),
    };
    let rollback = update.as_ref().and_then(|u| u.rollback.clone());
    Ok(Status {
        product: facts.product,
        version: facts.version,
        board: facts.board.to_string(),
        slot: slot_from_cmdline(&cmdline),
        security_version: facts.security_version,
        root: root_mount(&mountinfo, host),
        update,
        update_unavailable,
        rollback,
    })
}

/// The updater's view of the device rooted at `host`.
pub fn update_status(host: &Host) -> Result<UpdateStatus, aperture_updater::UpdateError> {
    Updater::on_device(Paths::rooted(&host.root))?.status()
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "aperture-agent: product={} version={} board={} slot={} security_version={}",
            self.product,
            self.version,
            self.board,
            self.slot.as_deref().unwrap_or("unknown"),
            self.security_version
        )?;
        match &self.root {
            Some(r) => write!(
                f,
                " root={} fstype={} {} verity={}",
                r.device,
                r.fstype,
                if r.read_only { "ro" } else { "rw" },
                if r.verity { "yes" } else { "no" }
            ),
            None => write!(f, " root=unknown"),
        }?;
        if let Some(u) = &self.update {
            write!(f, " next={} floor={}", u.next, u.security_floor)?;
        }
        if let Some(rb) = &self.rollback {
            write!(f, "\n{rb}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fake_host(cmdline: &str, mountinfo: &str, dm_uuid: Option<&str>) -> tempfile::TempDir {
        let d = tempfile::tempdir().unwrap();
        let p = d.path();
        std::fs::create_dir_all(p.join("etc/aperture")).unwrap();
        std::fs::create_dir_all(p.join("proc/self")).unwrap();
        std::fs::write(
            p.join("etc/aperture/build.json"),
            r#"{"product":"aperture-vision","version":"1.2.3","security_version":4,"board":"qemu-x86_64","recipe_sha256":"ab","source_date_epoch":1,"required_services":["a.service"]}"#,
        )
        .unwrap();
        std::fs::write(p.join("proc/cmdline"), cmdline).unwrap();
        std::fs::write(p.join("proc/self/mountinfo"), mountinfo).unwrap();
        if let Some(u) = dm_uuid {
            std::fs::create_dir_all(p.join("sys/dev/block/254:0/dm")).unwrap();
            std::fs::write(p.join("sys/dev/block/254:0/dm/uuid"), u).unwrap();
        }
        d
    }

    const MOUNTINFO: &str =
        "22 1 254:0 / / ro,relatime shared:1 - erofs /dev/mapper/aperture-root ro,user_xattr\n\
                             23 22 0:21 / /proc rw,nosuid shared:2 - proc proc rw\n";

    #[test]
    fn reports_slot_version_and_verity_root() {
        let d = fake_host(
            "BOOT_IMAGE=/x root=/dev/mapper/aperture-root aperture.slot=b ro",
            MOUNTINFO,
            Some("CRYPT-VERITY-0123-aperture-root"),
        );
        let s = gather(&Host::at(d.path())).unwrap();
        assert_eq!(s.slot.as_deref(), Some("b"));
        assert_eq!(s.version, "1.2.3");
        let root = s.root.clone().unwrap();
        assert!(root.read_only && root.verity && root.fstype == "erofs");
        let line = s.to_string();
        assert!(
            line.contains("slot=b")
                && line.contains("version=1.2.3")
                && line.contains("verity=yes"),
            "{line}"
        );
    }

    #[test]
    fn plain_root_is_not_verity() {
        let mi = "22 1 8:1 / / rw,relatime - ext4 /dev/sda1 rw\n";
        let d = fake_host("quiet", mi, None);
        let s = gather(&Host::at(d.path())).unwrap();
        assert_eq!(s.slot, None);
        let root = s.root.unwrap();
        assert!(!root.read_only && !root.verity);
    }

    #[test]
    fn slot_parsing_rejects_junk() {
        assert_eq!(slot_from_cmdline("aperture.slot=c"), None);
        assert_eq!(
            slot_from_cmdline("aperture.slot=a aperture.slot=b"),
            Some("b".into())
        );
        assert_eq!(slot_from_cmdline("xaperture.slot=a"), None);
    }

    #[test]
    fn missing_facts_names_the_file() {
        let d = tempfile::tempdir().unwrap();
        let e = gather(&Host::at(d.path())).unwrap_err().to_string();
        assert!(e.contains("etc/aperture/build.json"), "{e}");
    }
}
