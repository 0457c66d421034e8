//! [`SlotsError`]: every way slot control can fail, as a typed enum the updater can match. Each
//! message names the slot or file concerned and, where there is one, the fix.

use std::io;
use std::path::PathBuf;

use crate::state::SlotStatus;
use crate::Slot;

/// Errors of slot control.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SlotsError {
    /// The operation would write or invalidate the slot the system is running from.
    #[error(
        "slot {slot} is the running slot and must not be written; install into slot {} instead",
        slot.other()
    )]
    WriteActiveSlot {
        /// The running slot.
        slot: Slot,
    },

    /// The event does not apply to the slot in its current status.
    #[error("cannot {event} slot {slot}: it is {from}; {fix}")]
    InvalidTransition {
        /// What was attempted (`arm`, `mark good`, ...).
        event: &'static str,
        /// The slot whose status forbids it.
        slot: Slot,
        /// That slot's status.
        from: SlotStatus,
        /// What to do instead.
        fix: &'static str,
    },

    /// `mark good` names a slot other than the running one.
    #[error("cannot mark slot {slot} good: the running slot is {booted}; only the running slot can be marked good")]
    NotBooted {
        /// The slot named.
        slot: Slot,
        /// The running slot.
        booted: Slot,
    },

    /// Rollback needs the other slot to be good.
    #[error("cannot roll back to slot {slot}: it is {status}, not good; install a known-good image into slot {slot} first")]
    NoGoodSlot {
        /// The slot a rollback would boot.
        slot: Slot,
        /// Its status.
        status: SlotStatus,
    },

    /// Neither slot can be booted (seen by the loader simulations).
    #[error("no bootable slot: slot a is {a} and slot b is {b}; reflash the device")]
    NoBootableSlot {
        /// Status of slot A.
        a: SlotStatus,
        /// Status of slot B.
        b: SlotStatus,
    },

    /// A try count outside `1..=max` (at most [`crate::MAX_TRIES`]; the boot control may take
    /// fewer: 3 on Jetson, whose firmware keeps 2 bits).
    #[error("cannot arm slot {slot} with {tries} boot tries: this boot control takes 1 to {max}")]
    InvalidTries {
        /// The slot being armed.
        slot: Slot,
        /// The count given.
        tries: u32,
        /// The most the boot control takes.
        max: u32,
    },

    /// The firmware's boot retry count could not be reset after a good boot (Jetson).
    #[error("cannot reset the firmware's boot tries after this good boot (`{by}`): without the reset the firmware gives up on the running slot after RootfsRetryCountMax warm reboots and boots the other one; the image needs NVIDIA's nvbootctrl (nvidia-l4t-tools) and a kernel without CONFIG_IO_STRICT_DEVMEM")]
    RetryReset {
        /// What was run.
        by: String,
        /// Why it failed.
        #[source]
        err: Box<dyn std::error::Error + Send + Sync>,
    },

    /// The boot description for a slot cannot be written safely.
    #[error("boot entry for slot {slot} is invalid: {reason}; fix the kernel, initrd or options passed to arm")]
    InvalidBoot {
        /// The slot being armed.
        slot: Slot,
        /// What is wrong.
        reason: String,
    },

    /// A ledger, boot entry or variable could not be understood.
    #[error("{path} is malformed: {reason}")]
    Malformed {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },

    /// A step needs a boot entry for the slot but the ESP has none.
    #[error(
        "slot {slot} has no boot entry in {dir}; install and arm slot {slot} before selecting it"
    )]
    MissingEntry {
        /// The slot.
        slot: Slot,
        /// The entries folder.
        dir: PathBuf,
    },

    /// An I/O operation failed.
    #[error("{op} {path}")]
    Io {
        /// What was being done (`writing`, `renaming`, ...).
        op: &'static str,
        /// The file or folder.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },

    /// The device state store (the Tegra ledger's home) failed.
    #[error(transparent)]
    Store(#[from] aperture_appliance::store::StoreError),

    /// A slot name other than `a` or `b`.
    #[error(transparent)]
    InvalidSlotName(#[from] aperture_appliance::slot::InvalidSlot),

    /// A fault injected by [`crate::FakeBootControl`] for tests.
    #[error("injected fault at persist call {call} (FakeBootControl); clear the fault or simulate a reboot with loader_boot()")]
    InjectedFault {
        /// The 1-based number of the persist call that failed.
        call: usize,
    },
}

impl From<aperture_sys::FsError> for SlotsError {
    fn from(e: aperture_sys::FsError) -> SlotsError {
        SlotsError::Io {
            op: e.op,
            path: e.path,
            source: e.err,
        }
    }
}

impl SlotsError {
    /// An [`SlotsError::Io`] for `op` on `path`.
    pub(crate) fn io(
        op: &'static str,
        path: impl Into<PathBuf>,
    ) -> impl FnOnce(io::Error) -> SlotsError {
        let path = path.into();
        move |source| SlotsError::Io { op, path, source }
    }
}
