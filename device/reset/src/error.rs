//! [`ResetError`]: every way a reset can fail. Messages name the slot, partition or record and
//! say what to do, because the reader is an operator with a half-reset appliance. A variant
//! holding a `#[source]` does not print it again (the binary prints the chain once).

use std::path::PathBuf;

use aperture_appliance::facts::FactsError;
use aperture_appliance::lock::LockError;
use aperture_appliance::store::StoreError;
use aperture_slots::{Slot, SlotStatus, SlotsError};
use aperture_storage::StorageError;
use aperture_sys::{CmdError, FsError};
use aperture_trust::TrustError;

/// Errors of aperture-reset.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ResetError {
    /// Partitions, keys, LUKS.
    #[error(transparent)]
    Storage(#[from] StorageError),
    /// Boot control.
    #[error(transparent)]
    Slots(#[from] SlotsError),
    /// Signatures, manifests, bundles, verity.
    #[error(transparent)]
    Trust(#[from] TrustError),
    /// The device state store (`aperture_state`).
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The image's facts (`/etc/aperture/build.json`).
    #[error(transparent)]
    Facts(#[from] FactsError),
    /// The slots lock.
    #[error(transparent)]
    Lock(#[from] LockError),
    /// An external command.
    #[error(transparent)]
    Command(#[from] CmdError),
    /// A durable file operation on the ESP.
    #[error(transparent)]
    Fs(#[from] FsError),
    /// The updater's installer (writing a slot) or its re-verification of a slot.
    #[error(transparent)]
    Update(#[from] aperture_updater::UpdateError),

    /// A file operation failed.
    #[error("{op} {}", path.display())]
    Io {
        /// What was being done.
        op: &'static str,
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        err: std::io::Error,
    },

    /// A partition read or write failed.
    #[error("{op} {partition}")]
    Partition {
        /// What was being done.
        op: &'static str,
        /// The partition.
        partition: String,
        /// The cause.
        #[source]
        err: std::io::Error,
    },

    /// Something did not have the expected form.
    #[error("{what} is malformed: {reason}")]
    Malformed {
        /// What.
        what: String,
        /// Why.
        reason: String,
    },

    /// There is no factory partition, so levels 2 and 3 cannot reinstall anything.
    #[error("this disk has no `factory` partition: reset levels 2 and 3 reinstall the factory image from it; flash an image built with a factory partition (recipe [partitions] factory)")]
    NoFactory,

    /// The factory partition does not hold a bundle.
    #[error("the factory partition holds no update bundle ({reason}); reflash the appliance")]
    FactoryEmpty {
        /// What was found instead.
        reason: String,
    },

    /// The factory image is older, security-wise, than what this appliance may run again
    /// while its data exists.
    #[error("the factory image {version} has security version {security_version}, below this appliance's anti-rollback floor {floor}: reset level 2 keeps config and data, so it may not go back to it; only reset level 3 may install it, because it destroys config and data first (`aperture-reset --level 3`)")]
    FactoryBelowFloor {
        /// The factory image's version.
        version: semver::Version,
        /// Its security version.
        security_version: u64,
        /// The floor.
        floor: u64,
    },

    /// No slot passed re-verification, so level 1 has nothing to boot.
    #[error("no known-good slot verifies: {details}; use reset level 2 (factory image)")]
    NoVerifiedSlot {
        /// Why each candidate was refused.
        details: String,
    },

    /// A slot does not hold what its record says.
    #[error("slot {slot} does not verify: {reason}")]
    SlotVerify {
        /// The slot.
        slot: Slot,
        /// Why.
        reason: String,
    },

    /// Levels 2 and 3 overwrite the other slot, which must not be the only good one.
    #[error("slot {slot} runs {status}, not committed by the health gate: levels 2 and 3 would overwrite slot {other}, the last known-good slot; let the health gate commit slot {slot}, or go back to slot {other} with reset level 1 and reset from there; nothing was changed")]
    RunningSlotNotGood {
        /// The running slot.
        slot: Slot,
        /// Its status.
        status: SlotStatus,
        /// The other slot.
        other: Slot,
    },

    /// A reset is already in progress.
    #[error("a level {level} reset is in progress: it finishes at the next boot (`aperture-reset status` shows it, `aperture-reset resume` continues it)")]
    InProgress {
        /// Its level.
        level: u8,
    },

    /// The journal asks for something the slots contradict: it was not written by a reset
    /// that got this far. Nothing is blessed.
    #[error("the reset journal is at \"{step}\" but {reason}: the journal was not written by a reset that got this far, so nothing was marked good; check the slots (`aperture-update status`) and start the reset again")]
    JournalContradicted {
        /// The step.
        step: String,
        /// What contradicts it.
        reason: String,
    },

    /// A volume is still unlocked where it must not be.
    #[error("{volume} is still unlocked ({mapped}); it is wiped at the next boot, before it is unlocked again")]
    StillUnlocked {
        /// The volume.
        volume: String,
        /// Its mapping.
        mapped: String,
    },

    /// The factory slot did not come up after the allowed attempts.
    #[error("the factory image did not boot (or did not pass its health gate) after {attempts} attempts; any wipe is complete but the slots were not reinstalled: reflash the appliance")]
    FactoryDidNotBoot {
        /// Attempts made.
        attempts: u32,
    },

    /// The operator did not confirm.
    #[error("not confirmed: nothing was changed (pass --yes to skip the question)")]
    NotConfirmed,

    /// The running slot is not known.
    #[error("the kernel command line ({}) names no slot (aperture.slot=a|b): is this an Aperture image?", path.display())]
    UnknownSlot {
        /// The command line file.
        path: PathBuf,
    },

    /// An input device problem.
    #[error("reset input: {reason}")]
    Input {
        /// Why.
        reason: String,
    },

    /// A test asked for a power cut here.
    #[error("injected power cut at {point}")]
    InjectedFault {
        /// Where.
        point: String,
    },
}

impl ResetError {
    /// A closure wrapping an `io::Error` for `path`.
    pub fn io(
        op: &'static str,
        path: &std::path::Path,
    ) -> impl FnOnce(std::io::Error) -> ResetError {
        let path = path.to_path_buf();
        move |err| ResetError::Io { op, path, err }
    }

    /// A malformed-input error.
    pub fn malformed(what: impl Into<String>, reason: impl ToString) -> ResetError {
        ResetError::Malformed {
            what: what.into(),
            reason: reason.to_string(),
        }
    }

    /// Whether this is an injected power cut (tests), anywhere in the chain.
    pub fn is_injected(&self) -> bool {
        let mut cause: Option<&dyn std::error::Error> = Some(self);
        while let Some(e) = cause {
            if e.to_string().contains("injected power cut") {
                return true;
            }
            cause = e.source();
        }
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn injected_cuts_are_found_anywhere_in_the_chain_and_causes_print_once() {
        let err = ResetError::Partition {
            op: "writing",
            partition: "rootfs_b".into(),
            err: std::io::Error::other("injected power cut at partition write 3"),
        };
        assert!(err.is_injected());
        assert_eq!(err.to_string(), "writing rootfs_b");
        let floor = ResetError::FactoryBelowFloor {
            version: "1.0.0".parse().unwrap(),
            security_version: 1,
            floor: 3,
        }
        .to_string();
        assert!(
            floor.contains("--level 3") && floor.contains("floor 3"),
            "{floor}"
        );
        assert!(!ResetError::NoFactory.is_injected());
    }
}
