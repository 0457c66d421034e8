//! [`ResetError`]: every way a reset can fail. Messages name the slot, partition or file and
//! say what to do, because the reader is an operator with a half-reset appliance.

use std::path::PathBuf;

use aperture_slots::{Slot, SlotsError};
use aperture_storage::StorageError;
use aperture_sys::{CmdError, FsError};
use aperture_trust::TrustError;

impl From<CmdError> for ResetError {
    fn from(e: CmdError) -> ResetError {
        ResetError::Storage(e.into())
    }
}

impl From<FsError> for ResetError {
    fn from(e: FsError) -> ResetError {
        ResetError::Storage(e.into())
    }
}

/// Errors of aperture-reset.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ResetError {
    /// Partitions, keys, LUKS, commands.
    #[error(transparent)]
    Storage(#[from] StorageError),
    /// Boot control.
    #[error(transparent)]
    Slots(#[from] SlotsError),
    /// Signatures, manifests, bundles, verity.
    #[error(transparent)]
    Trust(#[from] TrustError),

    /// A file operation failed.
    #[error("{op} {}: {source}", path.display())]
    Io {
        /// What was being done.
        op: &'static str,
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },

    /// A partition read or write failed.
    #[error("{op} {partition}: {source}")]
    Partition {
        /// What was being done.
        op: &'static str,
        /// The partition.
        partition: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },

    /// A file did not have the expected form.
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

    /// A reset is already in progress.
    #[error("a level {level} reset is in progress ({}): it finishes at the next boot (`aperture-reset resume`)", journal.display())]
    InProgress {
        /// Its level.
        level: u8,
        /// The journal.
        journal: PathBuf,
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
    #[error("the factory image did not boot after {attempts} attempts; the wipe is complete but the slots were not reinstalled: reflash the appliance")]
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
        move |source| ResetError::Io { op, path, source }
    }

    /// A malformed-input error.
    pub fn malformed(what: impl Into<String>, reason: impl ToString) -> ResetError {
        ResetError::Malformed {
            what: what.into(),
            reason: reason.to_string(),
        }
    }

    /// Whether this is an injected power cut (tests), somewhere in the chain.
    pub fn is_injected(&self) -> bool {
        // The cause may be anywhere in the chain (an I/O error under a storage error).
        let mut text = self.to_string();
        let mut cause = std::error::Error::source(self);
        while let Some(c) = cause {
            text.push_str(&c.to_string());
            cause = c.source();
        }
        matches!(self, ResetError::InjectedFault { .. }) || text.contains("injected power cut")
    }
}
