//! `aperture-agent status`: product, version, board, the booted slot, and whether the root is
//! mounted read-only through dm-verity, as a line of text or as JSON; the board's slot
//! partitions and boot control; with the A/B state from `aperture-update` (both slots, the
//! anti-rollback floor) and a rollback notice when this boot came back from a slot that failed
//! its health check; the inference runtime's metrics, summarised ([`crate::runtime`]).
//!
//! Every path comes from the appliance contract ([`Files`]) and the board from the image's
//! facts ([`BuildFacts`]), as for every device program.

use std::fmt;

use serde::{Deserialize, Serialize};

use aperture_appliance::facts::FactsError;
use aperture_appliance::{Board, BootControlKind, Files, Slot};
use aperture_updater::status::{Rollback, UpdateStatus};
use aperture_updater::{Paths, Updater};

/// What the image says about itself (`/etc/aperture/build.json`, written by the image builder):
/// the appliance contract's, re-exported under the name DEVICE.md uses.
pub use aperture_appliance::BuildFacts;

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
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
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
    /// How the board boots its slots: `systemd-boot` (qemu boards) or `tegra` (NVIDIA's UEFI
    /// variables, Jetson).
    pub boot_control: String,
    /// The board's partitions of each slot.
    pub slots: Vec<SlotPartitions>,
    /// A/B state from the updater (absent when the ESP or boot control cannot be read).
    #[serde(default)]
    pub update: Option<UpdateStatus>,
    /// Why `update` is absent, if it is.
    #[serde(default)]
    pub update_unavailable: Option<String>,
    /// The slot that failed its health check, when this boot is a rollback from it.
    #[serde(default)]
    pub rollback: Option<Rollback>,
    /// The update loop's last check (`/var/lib/aperture/agent/update.json`): repository,
    /// channel, seed, result and its journal line, the roles' versions and expiries, the next
    /// eligible time and the next check. Absent when the image has no `[update]` settings or
    /// no check ran yet.
    #[serde(default)]
    pub update_loop: Option<aperture_client::LoopStatus>,
    /// The inference runtime's metrics (`/run/aperture-runtime/runtime.json`), summarised as the
    /// fleet report carries them; a missing, stale or malformed file says so.
    #[serde(default)]
    pub runtime: Option<aperture_fleet_api::RuntimeSummary>,
}

/// The partitions of one slot on the board.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct SlotPartitions {
    /// Which slot.
    pub slot: Slot,
    /// Its root file system (`rootfs_a`, `APP`).
    pub rootfs: String,
    /// Its boot image's partition (Jetson: `A_kernel`, `kernel_b`); the qemu boards keep
    /// kernel and initrd on the ESP.
    #[serde(default)]
    pub kernel: Option<String>,
    /// Its device tree's partition (Jetson).
    #[serde(default)]
    pub kernel_dtb: Option<String>,
}

/// Why status could not be read.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StatusError {
    /// The image's facts are missing or malformed.
    #[error(transparent)]
    Facts(#[from] FactsError),
}

/// The name of a board's boot control, as the status shows it.
pub fn boot_control_name(board: Board) -> &'static str {
    match board.boot_control() {
        BootControlKind::SystemdBoot => "systemd-boot",
        BootControlKind::Tegra => "tegra",
    }
}

/// The partitions of both slots on `board`, A first.
pub fn slot_partitions(board: Board) -> Vec<SlotPartitions> {
    let layout = board.slot_layout();
    Slot::ALL
        .into_iter()
        .map(|slot| SlotPartitions {
            slot,
            rootfs: layout.rootfs(slot),
            kernel: layout.kernel(slot),
            kernel_dtb: layout.kernel_dtb(slot),
        })
        .collect()
}

/// The mount of `/` from a mountinfo table (proc(5), read with `aperture_sys::mountinfo`): the
/// last entry for `/` wins, as the kernel stacks mounts. `None` when there is none, or when the
/// table is not what the kernel writes.
pub fn root_mount(mountinfo: &str, files: &Files) -> Option<RootMount> {
    let table = aperture_sys::mountinfo::parse(mountinfo)
        .map_err(|e| tracing::warn!("{e}"))
        .ok()?;
    let root = table
        .into_iter()
        .rfind(|m| m.mount_point == std::path::Path::new("/"))?;
    Some(RootMount {
        verity: is_verity(files, &root.majmin),
        read_only: root.read_only(),
        device: root.source,
        fstype: root.fstype,
    })
}

/// A device-mapper device made by veritysetup has a DM uuid starting `CRYPT-VERITY-`.
fn is_verity(files: &Files, majmin: &str) -> bool {
    let uuid = std::fs::read_to_string(files.path(format!("sys/dev/block/{majmin}/dm/uuid")))
        .unwrap_or_default();
    uuid.starts_with("CRYPT-VERITY-")
}

/// Gather the status of the appliance laid out as `files`.
pub fn gather(files: &Files) -> Result<Status, StatusError> {
    let facts = BuildFacts::load(&files.build_facts())?;
    let cmdline = std::fs::read_to_string(files.cmdline()).unwrap_or_default();
    let mountinfo = std::fs::read_to_string(files.mountinfo()).unwrap_or_default();
    let (update, update_unavailable) = match update_status(files) {
        Ok(u) => (Some(u), None),
        Err(e) => (None, Some(aperture_updater::error_chain(&e))),
    };
    let rollback = update.as_ref().and_then(|u| u.rollback.clone());
    Ok(Status {
        product: facts.product,
        version: facts.version,
        board: facts.board.to_string(),
        slot: Slot::from_cmdline(&cmdline).map(|s| s.to_string()),
        security_version: facts.security_version,
        root: root_mount(&mountinfo, files),
        boot_control: boot_control_name(facts.board).into(),
        slots: slot_partitions(facts.board),
        update,
        update_unavailable,
        rollback,
        update_loop: aperture_client::check::load_status(
            &aperture_client::StateDir(files.agent_state()).status(),
        ),
        runtime: Some(crate::runtime::summary(files)),
    })
}

/// The updater's view of the appliance laid out as `files`.
pub fn update_status(files: &Files) -> Result<UpdateStatus, aperture_updater::UpdateError> {
    Updater::on_device(Paths::from_files(files))?.status()
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
        let parts: Vec<String> = self
            .slots
            .iter()
            .map(|p| {
                let mut names = vec![p.rootfs.clone()];
                names.extend(p.kernel.clone());
                names.extend(p.kernel_dtb.clone());
                format!("{}:{}", p.slot, names.join(","))
            })
            .collect();
        write!(
            f,
            " boot_control={} slots={}",
            self.boot_control,
            parts.join(" ")
        )?;
        if let Some(u) = &self.update {
            write!(
                f,
                " next={} floor={} secureboot={}",
                u.next,
                u.security_floor,
                u.secure_boot.word()
            )?;
        }
        if let Some(rb) = &self.rollback {
            write!(f, "\n{rb}")?;
        }
        if let Some(rt) = &self.runtime {
            write!(f, "\n{}", crate::runtime::describe(rt))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fake_root(
        board: &str,
        cmdline: &str,
        mountinfo: &str,
        dm_uuid: Option<&str>,
    ) -> tempfile::TempDir {
        let d = tempfile::tempdir().unwrap();
        let files = Files::at(d.path());
        std::fs::create_dir_all(files.build_facts().parent().unwrap()).unwrap();
        std::fs::create_dir_all(files.mountinfo().parent().unwrap()).unwrap();
        std::fs::write(
            files.build_facts(),
            format!(r#"{{"product":"aperture-vision","version":"1.2.3","security_version":4,"board":"{board}","recipe_sha256":"ab","source_date_epoch":1,"required_services":["a.service"]}}"#),
        )
        .unwrap();
        std::fs::write(files.cmdline(), cmdline).unwrap();
        std::fs::write(files.mountinfo(), mountinfo).unwrap();
        if let Some(u) = dm_uuid {
            let dm = files.path("sys/dev/block/254:0/dm");
            std::fs::create_dir_all(&dm).unwrap();
            std::fs::write(dm.join("uuid"), u).unwrap();
        }
        d
    }

    const MOUNTINFO: &str =
        "22 1 254:0 / / ro,relatime shared:1 - erofs /dev/mapper/aperture-root ro,user_xattr\n\
                             23 22 0:21 / /proc rw,nosuid shared:2 - proc proc rw\n";

    #[test]
    fn reports_slot_version_and_verity_root() {
        let d = fake_root(
            "qemu-x86_64",
            "BOOT_IMAGE=/x root=/dev/mapper/aperture-root aperture.slot=b ro",
            MOUNTINFO,
            Some("CRYPT-VERITY-0123-aperture-root"),
        );
        let s = gather(&Files::at(d.path())).unwrap();
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
        let d = fake_root("qemu-x86_64", "quiet", mi, None);
        let s = gather(&Files::at(d.path())).unwrap();
        assert_eq!(s.slot, None);
        let root = s.root.unwrap();
        assert!(!root.read_only && !root.verity);
    }

    /// Round 2's status named no partitions and no boot control: the board decides both.
    #[test]
    fn shows_the_board_s_slot_partitions_and_boot_control() {
        let d = fake_root("qemu-x86_64", "aperture.slot=a", MOUNTINFO, None);
        let s = gather(&Files::at(d.path())).unwrap();
        assert_eq!(s.boot_control, "systemd-boot");
        assert_eq!(
            (s.slots[0].rootfs.as_str(), s.slots[1].rootfs.as_str()),
            ("rootfs_a", "rootfs_b")
        );
        assert!(s.slots[0].kernel.is_none());
        assert!(s
            .to_string()
            .contains("boot_control=systemd-boot slots=a:rootfs_a b:rootfs_b"));
        let d = fake_root("jetson-xavier-agx", "aperture.slot=b", MOUNTINFO, None);
        let s = gather(&Files::at(d.path())).unwrap();
        assert_eq!(
            (s.board.as_str(), s.boot_control.as_str()),
            ("jetson-xavier-agx", "tegra")
        );
        let line = s.to_string();
        assert!(
            line.contains("slots=a:APP,kernel,kernel-dtb b:APP_b,kernel_b,kernel-dtb_b"),
            "{line}"
        );
        let json = serde_json::to_value(&s).unwrap();
        assert_eq!(json["slots"][1]["kernel_dtb"], "kernel-dtb_b");
    }

    #[test]
    fn shows_the_runtime_s_metrics_or_that_they_are_missing() {
        let d = fake_root("qemu-x86_64", "aperture.slot=a", MOUNTINFO, None);
        let files = Files::at(d.path());
        let s = gather(&files).unwrap();
        assert_eq!(
            s.runtime.as_ref().unwrap().metrics,
            aperture_fleet_api::MetricsState::Missing
        );
        assert!(s.to_string().contains("\nruntime: missing (no "), "{s}");

        std::fs::create_dir_all(files.runtime_metrics().parent().unwrap()).unwrap();
        let metrics = serde_json::json!({
            "updated_unix_ms": crate::runtime::now_ms(),
            "model": {"name": "nanodet-m", "sha256": "ab".repeat(32),
                      "execution_provider": "cpu", "fallback": true},
            "frames": {"decoded": 10, "inferred": 9, "dropped": 1},
            "latency_ms": {"p50": 30.0, "p95": 35.0, "samples": 9},
            "cameras": [{"name": "door", "state": "streaming"}],
        });
        std::fs::write(files.runtime_metrics(), metrics.to_string()).unwrap();
        let s = gather(&files).unwrap();
        let line = s.to_string();
        assert!(
            line.contains("\nruntime: 1/1 streaming, p50 30.0 ms, cpu (FALLBACK); model nanodet-m"),
            "{line}"
        );
        let json = serde_json::to_value(&s).unwrap();
        assert_eq!(json["runtime"]["metrics"], "fresh");
        assert_eq!(json["runtime"]["frames_inferred"], 9);
        assert_eq!(json["runtime"]["model"]["fallback"], true);
    }

    #[test]
    fn missing_facts_names_the_file() {
        let d = tempfile::tempdir().unwrap();
        let e = gather(&Files::at(d.path())).unwrap_err().to_string();
        assert!(e.contains("etc/aperture/build.json"), "{e}");
    }
}
