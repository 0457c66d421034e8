//! `FlashError`: the one typed error of this crate.
//!
//! Messages name the file, device or range that is wrong and what fixes it. A refusal to touch
//! a device ([`FlashError::Refused`]) always names the device and the reason, and is raised
//! before anything is written; a failure after writing began ([`FlashError::Failed`]) says
//! whether the partition table was wiped.

use std::io;
use std::path::PathBuf;

/// Everything that can go wrong reading bmap files, checking an image and its targets, and
/// writing. New variants may be added, so match with a wildcard arm.
#[non_exhaustive]
#[derive(Debug, thiserror::Error)]
pub enum FlashError {
    /// Reading or writing a file failed.
    #[error("{action}")]
    Io {
        /// What was being done, naming the file: "reading /tmp/disk.img at byte 4096".
        action: String,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// An image cannot be mapped: empty, not a regular file, or an unusable block size.
    #[error("cannot create a bmap for {path}: {reason}")]
    BmapImage {
        /// The image.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// The bmap text is not well-formed XML.
    #[error("bmap file is not well-formed XML (line {line}): {reason}; regenerate it with `bmaptool create` or the image build")]
    BmapXml {
        /// 1-based line of the problem.
        line: usize,
        /// What is wrong.
        reason: String,
    },
    /// The XML is well formed but not a valid bmap (a missing or inconsistent field).
    #[error(
        "invalid bmap file: {reason}; regenerate it with `bmaptool create` or the image build"
    )]
    BmapInvalid {
        /// What is wrong.
        reason: String,
    },
    /// A bmap format version this code does not read.
    #[error("bmap format version {version:?} is not supported: this reads 1.x and 2.x (bmap-tools up to 3.x); regenerate it with bmaptool 3")]
    BmapVersion {
        /// The `version` attribute of `<bmap>`.
        version: String,
    },
    /// A checksum type other than sha1, sha256 and sha512.
    #[error("bmap checksum type {name:?} is not supported (sha256, sha512 and, in format 1.x, sha1 are); regenerate it with `bmaptool create` (sha256 by default)")]
    BmapChecksumType {
        /// The `<ChecksumType>` text.
        name: String,
    },
    /// The bmap file's own checksum does not match its contents.
    #[error("bmap file checksum mismatch: it says {expected} but its contents hash to {actual}; the file was edited or corrupted, get the original or regenerate it")]
    BmapFileChecksum {
        /// The checksum written in the file.
        expected: String,
        /// The checksum of the file as read.
        actual: String,
    },
    /// A target the safety checks refuse; nothing was written to it.
    #[error("refusing to flash {device}: {reason}")]
    Refused {
        /// The device or file, as named on the command line or resolved (`/dev/sdb`).
        device: String,
        /// Why, and what to do about it.
        reason: String,
    },
    /// An external command failed, could not be started, or printed output that does not
    /// parse; the error names the command line, how it ended and the tail of its stderr.
    #[error(transparent)]
    Command(#[from] aperture_sys::CmdError),
    /// Output of a tool or a kernel file that does not parse.
    #[error("cannot parse {what}: {reason}")]
    Parse {
        /// What was parsed: "`lsblk -J ...` output", "/proc/self/mountinfo line 3".
        what: String,
        /// What is wrong.
        reason: String,
    },
    /// The build folder's signature chain does not verify: nothing may be written from it.
    #[error("{dir}: the signed manifest does not verify against root key {root_key}")]
    Untrusted {
        /// The build folder.
        dir: PathBuf,
        /// The root key id and where it came from.
        root_key: String,
        /// Why verification failed.
        #[source]
        source: Box<aperture_trust::TrustError>,
    },
    /// The build folder is incomplete or its files do not match the verified manifest.
    #[error("{dir} cannot be flashed: {reason}")]
    Image {
        /// The build folder.
        dir: PathBuf,
        /// What is wrong and how to fix it.
        reason: String,
    },
    /// What was read back from a target differs from what the image holds.
    #[error("read-back of {target} does not match the image at bytes {offset}..{end} ({what}): the device lost or corrupted data (or the compressed image changed while it was written); try another cable, port or device")]
    ReadBack {
        /// The target.
        target: String,
        /// First byte of the range that differs.
        offset: u64,
        /// End (exclusive) of that range.
        end: u64,
        /// Which check failed, with the expected and actual values.
        what: String,
    },
    /// Writing or wiping a partition table failed.
    #[error("{action}")]
    Gpt {
        /// What was being done, naming the target.
        action: String,
        /// The underlying error.
        #[source]
        source: aperture_gpt::GptError,
    },
    /// Work stopped for a reason outside the image and the target: a thread panicked, or a
    /// helper thread gave up because its partner failed (whose error is reported instead).
    #[error("{0}")]
    Stopped(String),
    /// A Jetson or a disk named by USB serial was not found, or not uniquely.
    #[error("{0}")]
    Discovery(String),
    /// The Jetson Linux (L4T) tree to drive NVIDIA's tools from is missing, or is not the one
    /// the build used; the message says which tree to pass.
    #[error("{0}")]
    Bsp(String),
    /// Flashing Jetsons cannot start: every missing tool, input or setting, each with its
    /// fix. Nothing was run and nothing written.
    #[error("cannot flash the Jetsons, nothing was run:{}", problem_list(.problems))]
    Preflight {
        /// What is missing or wrong, and how to fix it, one entry each.
        problems: Vec<String>,
    },
    /// Writing a target failed after it had begun; `error` says why. The partition table was
    /// wiped unless `wipe_error` says otherwise.
    #[error("flashing {target} failed ({})", wipe_note(.wipe_error))]
    Failed {
        /// The target.
        target: String,
        /// What went wrong.
        #[source]
        error: Box<FlashError>,
        /// Why wiping the partition table afterwards failed too, if it did.
        wipe_error: Option<String>,
    },
}

fn problem_list(problems: &[String]) -> String {
    problems.iter().map(|p| format!("\n  - {p}")).collect()
}

fn wipe_note(wipe_error: &Option<String>) -> String {
    match wipe_error {
        None => "its partition table was wiped, so the half-written disk cannot boot".to_string(),
        Some(e) => format!(
            "wiping its partition table ALSO failed ({e}): do not boot this device, wipe it \
             with `wipefs -a` or flash it again"
        ),
    }
}

impl FlashError {
    /// A [`FlashError::Io`] naming what was being done.
    pub(crate) fn io(action: impl Into<String>, source: io::Error) -> FlashError {
        FlashError::Io {
            action: action.into(),
            source,
        }
    }

    /// A [`FlashError::BmapInvalid`].
    pub(crate) fn invalid(reason: impl Into<String>) -> FlashError {
        FlashError::BmapInvalid {
            reason: reason.into(),
        }
    }

    /// A [`FlashError::Refused`].
    pub(crate) fn refused(device: impl Into<String>, reason: impl Into<String>) -> FlashError {
        FlashError::Refused {
            device: device.into(),
            reason: reason.into(),
        }
    }

    /// A [`FlashError::Parse`].
    pub(crate) fn parse(what: impl Into<String>, reason: impl Into<String>) -> FlashError {
        FlashError::Parse {
            what: what.into(),
            reason: reason.into(),
        }
    }

    /// The error a [`FlashError::Failed`] wraps, or this error itself.
    pub fn root_cause(&self) -> &FlashError {
        match self {
            FlashError::Failed { error, .. } => error.root_cause(),
            other => other,
        }
    }

    /// Whether this error is a refusal raised before anything was written.
    pub fn is_refusal(&self) -> bool {
        matches!(
            self,
            FlashError::Refused { .. }
                | FlashError::Untrusted { .. }
                | FlashError::Image { .. }
                | FlashError::Preflight { .. }
        )
    }
}

/// `Result` with [`FlashError`].
pub type Result<T, E = FlashError> = std::result::Result<T, E>;

/// An error and its causes on one line, each once (`{:#}` of anyhow, for library code).
pub fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut parts = vec![e.to_string()];
    let mut cur = e.source();
    while let Some(c) = cur {
        parts.push(c.to_string());
        cur = c.source();
    }
    parts.join(": ")
}
