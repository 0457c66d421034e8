//! [`StorageError`]: every way setting up, opening or describing the encrypted partitions can
//! fail. Messages name the partition, file or command and say what fixes it, because the reader
//! is an operator looking at a boot log.

use std::io;
use std::path::{Path, PathBuf};

/// Errors of the storage library.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StorageError {
    /// A file or device operation failed.
    #[error("{op} {}: {source}", path.display())]
    Io {
        /// What was being done ("reading", "opening partition", ...).
        op: &'static str,
        /// The file or device.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },

    /// An external command could not be started or exited with failure.
    #[error("`{command}` failed ({status}){}{}", if stderr.is_empty() { "" } else { ": " }, stderr)]
    Command {
        /// The quoted command line.
        command: String,
        /// Exit status, or why it did not run.
        status: String,
        /// The last lines of its standard error.
        stderr: String,
    },

    /// A command's output or a file did not have the expected form.
    #[error("{what} is malformed: {reason}")]
    Malformed {
        /// What was parsed (`LUKS2 header of data`, `/proc/self/mountinfo`, ...).
        what: String,
        /// Why it was refused.
        reason: String,
    },

    /// A partition label is not on the disk.
    #[error("partition {label:?} is not on {disk}: the disk was not flashed with an Aperture image (GPT labels esp, rootfs_a, rootfs_b, [factory,] config, data)")]
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

    /// A sealed key is missing: the partition was formatted but its key is gone.
    #[error("no sealed key for {volume} in {}: the key was forgotten (factory reset) or the ESP was replaced; run `aperture-reset --level 3` to start afresh (all data on the partition is lost)", dir.display())]
    KeyMissing {
        /// The volume (`config`, `data`).
        volume: String,
        /// Where sealed keys live.
        dir: PathBuf,
    },

    /// A key read back has the wrong size.
    #[error("the key of {volume} is {len} bytes, not {expected}: the sealed blob is damaged; run `aperture-reset --level 3`")]
    KeySize {
        /// The volume.
        volume: String,
        /// Bytes found.
        len: usize,
        /// Bytes expected.
        expected: usize,
    },

    /// The system random number generator failed.
    #[error("cannot read random bytes for a new key: {reason}")]
    Random {
        /// The cause.
        reason: String,
    },

    /// A factory reset is half done; the partitions must not be unlocked until it finishes.
    #[error("a factory reset is in progress ({}): the encrypted partitions stay locked until `aperture-reset resume` finishes it", journal.display())]
    ResetPending {
        /// The reset journal.
        journal: PathBuf,
    },

    /// A test double was told to fail here.
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
        move |source| StorageError::Io { op, path, source }
    }

    /// A malformed-input error.
    pub fn malformed(what: impl Into<String>, reason: impl ToString) -> StorageError {
        StorageError::Malformed {
            what: what.into(),
            reason: reason.to_string(),
        }
    }
}
