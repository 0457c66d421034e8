//! `FlashError`: the one typed error of this crate.
//!
//! So far it covers bmap files; the block-device targets and the writer add their variants
//! here. Messages name the file or range that is wrong and what fixes it.

use std::io;
use std::path::PathBuf;

/// Everything that can go wrong creating, reading or checking bmap files (and, later,
/// writing images). New variants may be added, so match with a wildcard arm.
#[non_exhaustive]
#[derive(Debug, thiserror::Error)]
pub enum FlashError {
    /// Reading or writing a file failed.
    #[error("{action}: {source}")]
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
}

/// `Result` with [`FlashError`].
pub type Result<T, E = FlashError> = std::result::Result<T, E>;
