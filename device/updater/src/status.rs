//! `aperture-update status [--json]`: the running image, both slots (boot status, what their
//! records say they hold), the anti-rollback floor, an interrupted install, and a rollback.
//!
//! A **rollback** is reported when the other slot is bad: it was armed, the loader used up its
//! tries without a commit (its health gate failed or it never came up), and the loader fell
//! back to the running slot. The line reads
//! `rollback: slot b (version 2.0.0) failed its health check; running slot a`.
//! The agent shows the same notice in its own status and on the console at boot.

use std::fmt;

use serde::{Deserialize, Serialize};

use aperture_slots::{Slot, SlotStatus};
use aperture_trust::record::SlotRecord;

use crate::state::Journal;
use crate::{UpdateError, Updater};

/// The whole status (serialized for `--json`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UpdateStatus {
    /// Boot-control backend name.
    pub backend: String,
    /// The running slot.
    pub booted: Slot,
    /// The slot the loader boots next.
    pub next: Slot,
    /// The running image (from its build facts).
    pub running: RunningImage,
    /// The anti-rollback floor.
    pub security_floor: u64,
    /// The newest keyring committed (bundles under older keyrings are refused).
    pub keyring_sequence: u64,
    /// The newest signed time seen (unix seconds): key expiry is never judged before it.
    pub trusted_time: u64,
    /// The slot last committed.
    pub committed: Option<Slot>,
    /// Both slots, A first.
    pub slots: Vec<SlotInfo>,
    /// An install that was cut off, if any.
    pub interrupted: Option<Journal>,
    /// The rollback this boot came from, if any.
    pub rollback: Option<Rollback>,
    /// Whether the firmware enforces Secure Boot (its `SecureBoot` and `SetupMode` variables).
    #[serde(default)]
    pub secure_boot: SecureBoot,
}

pub use aperture_appliance::SecureBoot;

/// The running image.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunningImage {
    /// Product.
    pub product: String,
    /// Version.
    pub version: String,
    /// Security version.
    pub security_version: u64,
    /// Board.
    pub board: String,
}

/// One slot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SlotInfo {
    /// Which slot.
    pub slot: Slot,
    /// Boot status.
    pub status: SlotStatus,
    /// Boot entry title, if any.
    pub label: Option<String>,
    /// Running from it.
    pub booted: bool,
    /// Booted next.
    pub next: bool,
    /// What its record in the device state says it holds (absent while it is being written).
    pub record: Option<RecordSummary>,
}

/// The interesting part of a slot record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecordSummary {
    /// Image version.
    pub version: String,
    /// Security version.
    pub security_version: u64,
    /// sha256 of the rootfs image.
    pub rootfs_sha256: String,
    /// Verity root hash.
    pub root_hash: String,
}

/// A slot that failed its trial and the slot running instead.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rollback {
    /// The slot whose tries ran out.
    pub failed_slot: Slot,
    /// Its image version, if known (record, else boot entry title).
    pub failed_version: Option<String>,
    /// The slot running instead.
    pub running_slot: Slot,
}

impl fmt::Display for Rollback {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "rollback: slot {} (version {}) failed its health check; running slot {}",
            self.failed_slot,
            self.failed_version.as_deref().unwrap_or("unknown"),
            self.running_slot
        )
    }
}

impl Updater {
    /// Gather the status. Reads only.
    pub fn status(&self) -> Result<UpdateStatus, UpdateError> {
        let facts = crate::facts::load(&self.paths.build_facts)?;
        let store = self.store(facts.board)?;
        let state = self.device_state(&store)?;
        let (floor, keyring) = self.floors_or_store(&state);
        let boot = self.boot.read()?;
        let mut slots = Vec::new();
        for slot in Slot::ALL {
            let record = crate::store::read_slot(&store, slot)?.map(|s| summary(&s.record));
            slots.push(SlotInfo {
                slot,
                status: boot.status(slot),
                label: boot.slot(slot).label.clone(),
                booted: slot == self.booted,
                next: slot == boot.next,
                record,
            });
        }
        let other = self.booted.other();
        let rollback = (boot.status(other) == SlotStatus::Bad).then(|| {
            let info = &slots[usize::from(other == Slot::B)];
            Rollback {
                failed_slot: other,
                failed_version: info
                    .record
                    .as_ref()
                    .map(|r| r.version.clone())
                    .or_else(|| info.label.clone()),
                running_slot: self.booted,
            }
        });
        Ok(UpdateStatus {
            backend: self.boot.name().to_string(),
            booted: self.booted,
            next: boot.next,
            running: RunningImage {
                product: facts.product,
                version: facts.version,
                security_version: facts.security_version,
                board: facts.board.to_string(),
            },
            security_floor: floor,
            keyring_sequence: keyring,
            trusted_time: state.trusted_time.max(facts.source_date_epoch),
            committed: state.committed,
            slots,
            interrupted: state.journal.filter(|j| j.target != self.booted),
            rollback,
            secure_boot: SecureBoot::read(&self.paths.efivars),
        })
    }
}

fn summary(r: &SlotRecord) -> RecordSummary {
    RecordSummary {
        version: r.version.to_string(),
        security_version: r.security_version,
        rootfs_sha256: r.rootfs.sha256.to_string(),
        root_hash: r.verity.root_hash.to_string(),
    }
}

impl fmt::Display for UpdateStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let r = &self.running;
        writeln!(
            f,
            "running: {} {} (security version {}) on {}, slot {}, secureboot={}",
            r.product,
            r.version,
            r.security_version,
            r.board,
            self.booted,
            self.secure_boot.word()
        )?;
        writeln!(
            f,
            "anti-rollback floor: {}; keyring: {}; committed slot: {}; boot control: {}",
            self.security_floor,
            self.keyring_sequence,
            self.committed.map_or("none".to_string(), |s| s.to_string()),
            self.backend
        )?;
        for s in &self.slots {
            let mut marks = Vec::new();
            if s.booted {
                marks.push("running");
            }
            if s.next {
                marks.push("next boot");
            }
            let held = s.record.as_ref().map_or("no record".to_string(), |r| {
                format!(
                    "holds {} (security version {})",
                    r.version, r.security_version
                )
            });
            let marks = if marks.is_empty() {
                String::new()
            } else {
                format!(" [{}]", marks.join(", "))
            };
            writeln!(f, "slot {}: {}, {held}{marks}", s.slot, s.status)?;
        }
        if let Some(j) = &self.interrupted {
            let status = self
                .slots
                .iter()
                .find(|s| s.slot == j.target)
                .map_or(SlotStatus::Unbootable, |s| s.status);
            writeln!(f, "{}", crate::lifecycle::describe_interrupted(j, status))?;
        }
        if let Some(rb) = &self.rollback {
            writeln!(f, "{rb}")?;
        }
        Ok(())
    }
}
