//! [`StorageError`]: every way setting up, opening or describing the encrypted partitions can
//! fail. Messages name the volume and its partition and say what fixes it, because the reader
//! is an operator looking at a boot log. A variant holding a `#[source]` does not print it again.

use std::io;
use std::path::{Path, PathBuf};

use aperture_appliance::facts::FactsError;
use aperture_appliance::store::StoreError;
use aperture_sys::{CmdError, FsError};

/// What a level 3 reset does to a volume, for messages that name it as the recovery.
pub const RESET_LEVEL3: &str =
    "`aperture-reset --level 3` wipes this volume (all data on it is lost) and the next boot formats it afresh";

/// Errors of the storage library.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StorageError {
    /// A file or device operation failed.
    #[error("{op} {}", path.display())]
    Io {
        /// What was being done ("reading", "opening partition", ...).
        op: &'static str,
        /// The file or device.
        path: PathBuf,
        /// The cause.
        #[source]
        err: io::Error,
    },

    /// An external command could not be started or exited with failure.
    #[error(transparent)]
    Command(#[from] CmdError),

    /// A durable file operation failed.
    #[error(transparent)]
    Fs(#[from] FsError),

    /// The device state store (`aperture_state`) could not be read or written.
    #[error(transparent)]
    Store(#[from] StoreError),

    /// The image's facts could not be read.
    #[error(transparent)]
    Facts(#[from] FactsError),

    /// A command's output or a file did not have the expected form.
    #[error("{what} is malformed: {reason}")]
    Malformed {
        /// What was parsed (`LUKS2 header of data`, `the storage record`, ...).
        what: String,
        /// Why it was refused.
        reason: String,
    },

    /// A partition label is not on the disk.
    #[error("partition {label:?} is not on {disk}: the disk was not flashed with an Aperture image for this board")]
    NoSuchPartition {
        /// The GPT label looked for.
        label: String,
        /// The disk searched.
        disk: String,
    },

    /// The partition table cannot be changed as asked.
    #[error("cannot grow partition {label:?} on {disk}: {reason}")]
    Grow {
        /// The partition.
        label: String,
        /// The disk.
        disk: String,
        /// Why.
        reason: String,
    },

    /// Neither the LUKS2 token nor the device state holds the volume's sealed key.
    #[error("no sealed key for {volume} ({partition}): its LUKS2 header has no aperture token and the device state ({store}) has no record of it, so the key is lost; {RESET_LEVEL3}")]
    KeyMissing {
        /// The volume (`config`, `data`).
        volume: String,
        /// Its partition.
        partition: String,
        /// The state store partition.
        store: String,
    },

    /// Every copy of the sealed key failed to unseal or does not open the volume.
    #[error("cannot unseal the key of {volume} ({partition}): {reasons}; if the TPM was cleared or replaced the key is lost and {RESET_LEVEL3}")]
    Unseal {
        /// The volume.
        volume: String,
        /// Its partition.
        partition: String,
        /// What each copy (token, record) said.
        reasons: String,
    },

    /// The TPM would not unseal a key sealed to the boot chain for this boot, or this boot may
    /// not seal one (issue 18).
    #[error("{reason}")]
    BootChain {
        /// Why, in the reader's words ("Secure Boot is off: ...").
        reason: String,
    },

    /// Every copy of a volume's key is sealed to the boot chain, and this boot is not one the
    /// TPM unseals it for. Nothing on the partition was changed.
    #[error("{volume} ({partition}) stays locked: its key is sealed to this appliance's signed boot chain, and the TPM refuses to unseal it for this boot: {reasons}. Nothing on the partition was changed. Boot the appliance with Secure Boot on and its own keys enrolled, from a slot at or above the anti-rollback floor")]
    BootChainRefused {
        /// The volume.
        volume: String,
        /// Its partition.
        partition: String,
        /// Why.
        reasons: String,
    },

    /// A key read back has the wrong size.
    #[error("the key of {volume} is {len} bytes, not {expected}: the sealed blob is damaged")]
    KeySize {
        /// The volume.
        volume: String,
        /// Bytes found.
        len: usize,
        /// Bytes expected.
        expected: usize,
    },

    /// The volume's key is (or is to be) sealed to a TPM that did not appear.
    #[error("{volume} ({partition}): {why}, but no TPM appeared at {} within {waited_secs} s; nothing was changed. Check that the TPM is enabled in the firmware and that the image has its driver; keys sealed to a TPM are never replaced by a plain key", device.display())]
    TpmMissing {
        /// The volume.
        volume: String,
        /// Its partition.
        partition: String,
        /// Why a TPM is needed (recorded at first boot, or the image says the board has one).
        why: String,
        /// The TPM device waited for.
        device: PathBuf,
        /// How long it was waited for.
        waited_secs: u64,
    },

    /// The LUKS2 header is damaged and could not be repaired: the volume is never formatted.
    #[error("the LUKS2 header of {volume} ({partition}) is damaged and could not be repaired ({reason}); it is never formatted automatically. Restore a header backup with `cryptsetup luksHeaderRestore`, or {RESET_LEVEL3}")]
    HeaderDamaged {
        /// The volume.
        volume: String,
        /// Its partition.
        partition: String,
        /// What was found, and what `cryptsetup repair` said.
        reason: String,
    },

    /// The device state says the volume was formatted, yet no LUKS2 header is on it.
    #[error("{volume} ({partition}) was formatted as LUKS2 {uuid} (device state), but neither LUKS2 header is on the partition any more; it is never formatted automatically: {RESET_LEVEL3}")]
    HeaderLost {
        /// The volume.
        volume: String,
        /// Its partition.
        partition: String,
        /// The UUID the device state recorded.
        uuid: String,
    },

    /// A LUKS2 header that is not the one the first-boot journal was formatting.
    #[error("{volume} ({partition}) holds LUKS2 {found}, not the {expected} the interrupted first boot was formatting; it is left alone: {RESET_LEVEL3}")]
    ForeignHeader {
        /// The volume.
        volume: String,
        /// Its partition.
        partition: String,
        /// The UUID on the partition.
        found: String,
        /// The UUID in the journal.
        expected: String,
    },

    /// The system random number generator failed.
    #[error("cannot read random bytes for a new key: {reason}")]
    Random {
        /// The cause.
        reason: String,
    },

    /// A factory reset is half done; the partitions must not be unlocked until it finishes.
    #[error("a factory reset is in progress ({journal}): the encrypted partitions stay locked until `aperture-reset resume` finishes it")]
    ResetPending {
        /// Where the reset journal is.
        journal: String,
    },

    /// A test double was told to fail here (a simulated power cut).
    #[error("injected fault: {what}")]
    InjectedFault {
        /// Where.
        what: String,
    },
}

impl StorageError {
    /// A closure that wraps an `io::Error` for `path`, for `map_err`.
    pub fn io(op: &'static str, path: &Path) -> impl FnOnce(io::Error) -> StorageError {
        let path = path.to_path_buf();
        move |err| StorageError::Io { op, path, err }
    }

    /// A malformed-input error.
    pub fn malformed(what: impl Into<String>, reason: impl ToString) -> StorageError {
        StorageError::Malformed {
            what: what.into(),
            reason: reason.to_string(),
        }
    }
}
