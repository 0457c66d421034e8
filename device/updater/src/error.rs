//! [`UpdateError`]: every way an update, commit or rollback can fail, as one typed enum the
//! binaries and the agent can match. Messages name the object (slot, partition, file, URL) and,
//! where there is one, the fix.

use std::io;
use std::path::PathBuf;

use aperture_slots::{Slot, SlotsError};
use aperture_trust::TrustError;

/// Errors of `aperture-update` and of the health gate's commit.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum UpdateError {
    /// The bundle failed a trust check: signature, key chain, expiry, board, version, security
    /// floor, tar structure, size or hash. The typed cause is the source.
    #[error("bundle refused")]
    Trust(#[from] TrustError),

    /// The boot-control backend refused or failed a step.
    #[error("boot control")]
    Slots(#[from] SlotsError),

    /// A file this program reads or writes failed.
    #[error("{op} {path}")]
    File {
        /// What was being done (`reading`, `writing`, `renaming into place`, ...).
        op: &'static str,
        /// The file or folder.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },

    /// Reading or writing a slot's partition failed.
    #[error("{op} slot {slot} ({device})")]
    Partition {
        /// What was being done.
        op: &'static str,
        /// The slot.
        slot: Slot,
        /// The partition (`/dev/disk/by-partlabel/rootfs_b`, or `disk.img:rootfs_b`).
        device: String,
        /// The cause.
        #[source]
        source: io::Error,
    },

    /// A partition the layout needs is not on the disk.
    #[error("partition {name} is not on {disk}; is this an Aperture disk with the A/B layout?")]
    NoPartition {
        /// The partition label.
        name: String,
        /// The disk.
        disk: String,
    },

    /// A payload (the rootfs image, a Jetson boot image or device tree) does not fit the
    /// slot's partition.
    #[error("the {what} is {size} bytes but slot {slot}'s partition {partition} holds {capacity}; build the image smaller or reflash with a larger layout")]
    TooLarge {
        /// Slot.
        slot: Slot,
        /// What does not fit (`rootfs image`, `boot image`, `device tree`).
        what: &'static str,
        /// The partition's GPT name.
        partition: String,
        /// Image bytes.
        size: u64,
        /// Partition bytes.
        capacity: u64,
    },

    /// The ESP has no room for the slot's boot files (found before anything was written).
    #[error("the ESP ({}) has {free} bytes free but slot {slot}'s boot files need {needed}; nothing was written: build smaller boot files, or reflash with a larger ESP", path.display())]
    EspFull {
        /// The ESP's mount point.
        path: PathBuf,
        /// The slot being installed.
        slot: Slot,
        /// Bytes the boot files take.
        needed: u64,
        /// Bytes free (temporary files an earlier install left counted as free).
        free: u64,
    },

    /// The manifest cannot be installed by this updater on this board.
    #[error("manifest cannot be installed here: {reason}")]
    Unsupported {
        /// Why, with the fix.
        reason: String,
    },

    /// What was written does not read back as it was signed.
    #[error("slot {slot} failed verification after writing: {what}: {reason}; the slot stays unbootable, run the install again (if it fails again the storage may be failing)")]
    Verify {
        /// Slot.
        slot: Slot,
        /// The artifact or file.
        what: String,
        /// What differs.
        reason: String,
    },

    /// The TPM's anti-rollback counters could not be read or raised.
    #[error("{op} the TPM counter of the {counter} (NV index {index:#x})")]
    Tpm {
        /// What was being done.
        op: &'static str,
        /// Which counter.
        counter: &'static str,
        /// Its NV index.
        index: u32,
        /// The tpm2-tools command that failed.
        #[source]
        err: aperture_sys::CmdError,
    },

    /// Another program holds the slots lock (or it could not be taken).
    #[error(transparent)]
    Lock(#[from] aperture_appliance::lock::LockError),

    /// The running image's facts could not be read.
    #[error(transparent)]
    Facts(#[from] aperture_appliance::facts::FactsError),

    /// The device state store (floor, journal, slot records) could not be read or written.
    #[error(transparent)]
    Store(#[from] aperture_appliance::store::StoreError),

    /// A device file (build facts, root key, the bundle's header) is not what it must be.
    #[error("{path} is malformed: {reason}")]
    Malformed {
        /// The file.
        path: PathBuf,
        /// What is wrong, with the fix.
        reason: String,
    },

    /// The running slot is unknown (no `aperture.slot=` on the kernel command line).
    #[error("cannot tell which slot is running: {path} has no aperture.slot=a|b; boot through an Aperture boot entry")]
    UnknownBootedSlot {
        /// The command-line file read.
        path: PathBuf,
    },

    /// The bundle source is refused before any byte is read.
    #[error("refusing {url}: {reason}")]
    InsecureSource {
        /// The URL given.
        url: String,
        /// Why, with the flag that overrides it if there is one.
        reason: String,
    },

    /// A redirect was refused: it leaves https (for a download that started on https), or
    /// goes to a scheme that is not http(s).
    #[error("refusing the redirect from {from} to {to}: {reason}")]
    InsecureRedirect {
        /// The URL that answered with the redirect.
        from: String,
        /// Where it redirected to.
        to: String,
        /// Why, with the fix.
        reason: String,
    },

    /// Downloading the bundle failed.
    #[error("downloading {url} from {host}: {reason}")]
    Download {
        /// The URL.
        url: String,
        /// Host (and port) contacted.
        host: String,
        /// What went wrong (for TLS: the certificate problem).
        reason: String,
    },

    /// TLS could not be set up (CA bundle unreadable or empty).
    #[error("TLS setup: {reason}")]
    Tls {
        /// What is wrong, with the fix.
        reason: String,
    },

    /// The bundle offers the version that is already installed and running.
    #[error("version {version} is already installed in the running slot {slot}; nothing to do")]
    AlreadyInstalled {
        /// The version.
        version: String,
        /// The running slot.
        slot: Slot,
    },

    /// `resume --restart` with no interrupted install, or with one whose source is unknown.
    #[error("nothing to resume: {reason}")]
    NothingToResume {
        /// Why.
        reason: String,
    },

    /// The board has no boot-control backend in this updater.
    #[error("board {board} is not supported by this updater: {reason}")]
    UnsupportedBoard {
        /// Board name from build.json.
        board: String,
        /// What is missing.
        reason: String,
    },
}

impl UpdateError {
    /// A closure that makes an [`UpdateError::File`] for `op` on `path`.
    pub fn file(op: &'static str, path: impl Into<PathBuf>) -> impl FnOnce(io::Error) -> Self {
        let path = path.into();
        move |source| UpdateError::File { op, path, source }
    }

    /// Whether the bundle was refused before anything was written: a trust or policy check,
    /// content this updater cannot place, or no room on the ESP (not an I/O failure).
    pub fn is_refusal(&self) -> bool {
        matches!(
            self,
            UpdateError::Trust(_)
                | UpdateError::Unsupported { .. }
                | UpdateError::AlreadyInstalled { .. }
                | UpdateError::EspFull { .. }
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What `aperture-update` prints for an error (`{:#}`): each cause once.
    fn printed(e: UpdateError) -> String {
        format!(
            "{:#}",
            anyhow::Error::from(e).context("installing x.bundle")
        )
    }

    #[test]
    fn every_cause_is_printed_once() {
        let gone = || io::Error::new(io::ErrorKind::NotFound, "gone");
        let cases = [
            (
                UpdateError::Trust(TrustError::Io {
                    context: "reading the bundle".into(),
                    source: gone(),
                }),
                "installing x.bundle: bundle refused: reading the bundle: gone",
            ),
            (
                UpdateError::File {
                    op: "reading",
                    path: "/efi/x".into(),
                    source: gone(),
                },
                "installing x.bundle: reading /efi/x: gone",
            ),
            (
                UpdateError::Partition {
                    op: "writing",
                    slot: Slot::B,
                    device: "rootfs_b".into(),
                    source: gone(),
                },
                "installing x.bundle: writing slot b (rootfs_b): gone",
            ),
        ];
        for (e, want) in cases {
            assert_eq!(printed(e), want);
        }
    }
}
