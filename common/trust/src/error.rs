//! `TrustError`: the one typed error of this crate, matched on by the updater and the flasher.
//!
//! Every message names the object that failed and says what fixes it, because the person who
//! reads it is usually an operator looking at an appliance log, not the author of this crate.

use std::fmt;
use std::io;

/// Everything that can go wrong while creating or checking keys, manifests, bundles and verity
/// trees. New variants may be added, so match with a wildcard arm.
#[non_exhaustive]
#[derive(Debug, thiserror::Error)]
pub enum TrustError {
    /// A signature did not verify against the key it names.
    #[error(
        "bad signature on {what}: it was not made by the named key or the signed bytes were \
         changed after signing; rebuild and re-sign it (cargo xtask build)"
    )]
    BadSignature {
        /// What was signed: "manifest", "keyring".
        what: String,
    },
    /// A key id is not in the set of keys trusted here.
    #[error(
        "key {key_id} is not trusted here: sign with a release key listed in the keyring that \
         the appliance's root key signed (cargo xtask keys keyring)"
    )]
    UnknownKey {
        /// The key id that was looked up.
        key_id: String,
    },
    /// A release key's `not_after` has passed.
    #[error(
        "release key {key_id} expired at {}: sign with a current release key \
         (cargo xtask keys generate) listed in a keyring signed by the root key",
        UnixTime(*.not_after)
    )]
    KeyExpired {
        /// The expired key.
        key_id: String,
        /// Unix seconds after which the key is no longer accepted.
        not_after: u64,
    },
    /// The bundle is signed under a keyring older than the newest one the appliance accepted.
    #[error(
        "the bundle is signed under keyring {offered}, older than keyring {accepted} that this \
         appliance has accepted (a release key left out of a newer keyring is revoked): sign \
         the bundle under the current keyring (sequence {accepted} or later)"
    )]
    KeyringTooOld {
        /// The sequence of the bundle's keyring.
        offered: u64,
        /// The highest sequence the appliance has accepted.
        accepted: u64,
    },
    /// Content does not hash to what the signed manifest says.
    #[error(
        "{artifact}: sha256 is {actual} but the signed manifest says {expected}; the file was \
         corrupted or tampered with, download or rebuild it"
    )]
    HashMismatch {
        /// The artifact or payload whose hash differs.
        artifact: String,
        /// Hash from the manifest.
        expected: String,
        /// Hash of the bytes actually read.
        actual: String,
    },
    /// Content is shorter (or otherwise of another size) than the signed manifest says.
    #[error(
        "{artifact}: {actual} bytes but the signed manifest says {expected}; the file is \
         incomplete or does not belong to this manifest"
    )]
    SizeMismatch {
        /// The artifact or payload whose size differs.
        artifact: String,
        /// Size from the manifest.
        expected: u64,
        /// Size actually found.
        actual: u64,
    },
    /// The manifest is for another board.
    #[error("this is an image for board {found} but the appliance is {expected}: use the bundle built for {expected}")]
    WrongBoard {
        /// The board of this appliance.
        expected: String,
        /// The board the manifest names.
        found: String,
    },
    /// The offered version is older than the installed one.
    #[error(
        "version {offered} is older than the installed {installed}: downgrades are refused; \
         build a newer version, or use factory reset to go back"
    )]
    Downgrade {
        /// Installed version.
        installed: semver::Version,
        /// Offered version.
        offered: semver::Version,
    },
    /// The offered version is the installed one (a replayed or already installed bundle).
    #[error(
        "version {version} is already installed: nothing to do (bump the version to ship a change)"
    )]
    NotNewer {
        /// The version both sides have.
        version: semver::Version,
    },
    /// The offered security version is below the appliance's anti-rollback floor.
    #[error(
        "security version {offered} is below this appliance's floor {floor}: that release has \
         known vulnerabilities and is refused; install a release with security_version >= {floor}"
    )]
    SecurityVersionTooLow {
        /// The floor stored on the appliance.
        floor: u64,
        /// The manifest's security version.
        offered: u64,
    },
    /// An archive entry or artifact name could escape its directory or is not a plain name.
    #[error(
        "unsafe entry name {entry:?}: bundle entries must be plain file names (no '/', '..', or \
         absolute paths); the bundle is malformed or malicious, rebuild it with cargo xtask"
    )]
    UnsafeEntryPath {
        /// The name as found (lossy UTF-8).
        entry: String,
    },
    /// An archive entry is not a regular file.
    #[error(
        "bundle entry {entry:?} is a {kind}: only regular files are allowed in a bundle; \
         rebuild it with cargo xtask"
    )]
    EntryTypeNotAllowed {
        /// The entry name.
        entry: String,
        /// What it is: "symlink", "hard link", "directory", ...
        kind: String,
    },
    /// An archive entry is not the one expected at this position.
    #[error(
        "expected bundle entry {expected:?} but found {found:?}: the bundle does not match its \
         manifest; rebuild it with cargo xtask"
    )]
    UnexpectedEntry {
        /// What should have come.
        expected: String,
        /// What came.
        found: String,
    },
    /// A known entry came at the wrong position.
    #[error(
        "bundle entry {entry:?} is out of order (expected {expected:?} here): entries must \
         follow manifest order; rebuild the bundle with cargo xtask"
    )]
    Reordered {
        /// The entry that came early or late.
        entry: String,
        /// The entry expected at this position.
        expected: String,
    },
    /// An entry the manifest requires is absent.
    #[error(
        "bundle entry {name:?} is missing: the bundle is incomplete; rebuild or download it again"
    )]
    MissingEntry {
        /// The missing entry.
        name: String,
    },
    /// Something is larger than allowed.
    #[error(
        "{entry} is larger than its limit of {limit} bytes: the bundle does not match its \
         manifest or is malicious; rebuild it with cargo xtask"
    )]
    Oversized {
        /// The entry, artifact or document.
        entry: String,
        /// The limit in bytes.
        limit: u64,
    },
    /// The input ended early.
    #[error(
        "{entry} ends early: the download was cut short or the file is truncated; fetch it again"
    )]
    Truncated {
        /// What was being read.
        entry: String,
    },
    /// A delta payload cannot be applied here: the appliance does not run its base.
    #[error(
        "{artifact} is a delta from release {base_version} (sha256 {expected}), but {found}: \
         install the full bundle of this release instead"
    )]
    DeltaBase {
        /// The delta payload's entry.
        artifact: String,
        /// The release the delta was made from.
        base_version: String,
        /// sha256 of the base the delta needs.
        expected: String,
        /// What the appliance has instead.
        found: String,
    },
    /// A document or structure does not parse or breaks a rule of its format.
    #[error("{what} is malformed: {reason}")]
    Malformed {
        /// The object.
        what: String,
        /// Why, including the fix where there is one.
        reason: String,
    },
    /// A secret key file can be read by other users.
    #[error(
        "secret key {path} has mode {mode:o}, readable by other users: run chmod 600 {path} \
         (and rotate the key if others may have read it)"
    )]
    InsecurePermissions {
        /// The key file.
        path: String,
        /// Its permission bits.
        mode: u32,
    },
    /// An I/O operation failed.
    #[error("{context}")]
    Io {
        /// What was being done, naming the file or stream.
        context: String,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
}

impl TrustError {
    /// Shorthand for [`TrustError::Malformed`].
    pub(crate) fn malformed(what: impl Into<String>, reason: impl fmt::Display) -> Self {
        TrustError::Malformed {
            what: what.into(),
            reason: reason.to_string(),
        }
    }

    /// Shorthand for [`TrustError::Io`].
    pub(crate) fn io(context: impl Into<String>, source: io::Error) -> Self {
        TrustError::Io {
            context: context.into(),
            source,
        }
    }
}

/// Unix seconds shown as a UTC date and time, `2026-01-01 00:00:00 UTC`.
///
/// Kept here (not chrono) because this crate runs on the appliance and needs only this.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UnixTime(pub u64);

impl fmt::Display for UnixTime {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let days = self.0 / 86_400;
        let secs = self.0 % 86_400;
        let (y, m, d) = civil_from_days(days);
        write!(
            f,
            "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02} UTC",
            secs / 3600,
            secs / 60 % 60,
            secs % 60
        )
    }
}

/// Days since 1970-01-01 to (year, month, day), proleptic Gregorian.
/// Howard Hinnant's `civil_from_days` (http://howardhinnant.github.io/date_algorithms.html).
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z % 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + u64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unix_time_formats_known_dates() {
        assert_eq!(UnixTime(0).to_string(), "1970-01-01 00:00:00 UTC");
        assert_eq!(
            UnixTime(1_767_225_600).to_string(),
            "2026-01-01 00:00:00 UTC"
        );
        assert_eq!(UnixTime(951_782_400).to_string(), "2000-02-29 00:00:00 UTC");
        assert_eq!(
            UnixTime(4_107_542_399).to_string(),
            "2100-02-28 23:59:59 UTC"
        );
    }

    #[test]
    fn expired_message_names_key_date_and_fix() {
        let e = TrustError::KeyExpired {
            key_id: "1a2b3c4d5e6f7081".into(),
            not_after: 1_767_225_600,
        };
        let msg = e.to_string();
        assert!(msg.contains("1a2b3c4d5e6f7081"), "{msg}");
        assert!(msg.contains("2026-01-01"), "{msg}");
        assert!(msg.contains("cargo xtask keys generate"), "{msg}");
    }

    #[test]
    fn io_error_keeps_source_and_a_chain_prints_it_once() {
        let e = TrustError::io(
            "reading /x",
            io::Error::new(io::ErrorKind::NotFound, "gone"),
        );
        assert_eq!(e.to_string(), "reading /x");
        assert_eq!(std::error::Error::source(&e).unwrap().to_string(), "gone");
        // What the programs print (each cause after the error, as anyhow's `{:#}`): once.
        let mut chain = e.to_string();
        let mut cause = std::error::Error::source(&e);
        while let Some(c) = cause {
            chain = format!("{chain}: {c}");
            cause = c.source();
        }
        assert_eq!(chain, "reading /x: gone");
    }
}
