//! `ArtifactName`: an artifact name from an untrusted manifest, validated so it is safe to use
//! as a plain file name.
//!
//! Modelled on awslabs/tough `src/target_name.rs`, but stricter: instead of resolving paths we
//! allow only a short set of characters, so there is nothing to resolve.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

use crate::TrustError;

/// The longest artifact name accepted.
pub const MAX_ARTIFACT_NAME_LEN: usize = 128;

/// A validated artifact name: 1 to 128 characters of `[A-Za-z0-9._+-]`, not starting with '.',
/// so never empty, ".", "..", hidden, absolute or containing a path separator.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct ArtifactName(String);

impl ArtifactName {
    /// Validates `name`.
    pub fn new(name: impl Into<String>) -> Result<Self, TrustError> {
        let name = name.into();
        let problem = if name.is_empty() {
            Some("it is empty")
        } else if name.len() > MAX_ARTIFACT_NAME_LEN {
            Some("it is longer than 128 characters")
        } else if name.starts_with('.') {
            Some("it starts with '.'")
        } else if name.contains('/') || name.contains('\\') {
            Some("it contains a path separator")
        } else if !name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'+' | b'-'))
        {
            Some("only the characters A-Z a-z 0-9 . _ + - are allowed")
        } else {
            None
        };
        match problem {
            None => Ok(ArtifactName(name)),
            Some(reason) => Err(TrustError::malformed(
                format!("artifact name {name:?}"),
                format!("{reason}; artifact names are plain file names"),
            )),
        }
    }

    /// The name.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for ArtifactName {
    type Err = TrustError;

    fn from_str(s: &str) -> Result<Self, TrustError> {
        ArtifactName::new(s)
    }
}

impl TryFrom<String> for ArtifactName {
    type Error = TrustError;

    fn try_from(s: String) -> Result<Self, TrustError> {
        ArtifactName::new(s)
    }
}

impl From<ArtifactName> for String {
    fn from(n: ArtifactName) -> String {
        n.0
    }
}

impl AsRef<str> for ArtifactName {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ArtifactName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for ArtifactName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ArtifactName({:?})", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_plain_names() {
        for good in [
            "rootfs.erofs",
            "vmlinuz",
            "disk.img.zst",
            "tegra234-p3701+p3737.dtb",
            "a",
            "A_b-c.1",
            "..x",
        ] {
            // "..x" starts with '.', so it is refused; every other one is fine.
            let result = ArtifactName::new(good);
            assert_eq!(result.is_ok(), !good.starts_with('.'), "{good}");
        }
        assert!(ArtifactName::new("x".repeat(128)).is_ok());
    }

    #[test]
    fn refuses_unsafe_names() {
        for bad in [
            "",
            ".",
            "..",
            ".hidden",
            "../etc/passwd",
            "/abs",
            "a/b",
            "a\\b",
            "C:\\x",
            "with space",
            "nul\0byte",
            "new\nline",
            "ü",
            "a*",
        ] {
            let err = ArtifactName::new(bad).unwrap_err();
            assert!(matches!(err, TrustError::Malformed { .. }), "{bad}: {err}");
        }
        assert!(ArtifactName::new("x".repeat(129)).is_err());
    }

    #[test]
    fn serde_validates() {
        let n: ArtifactName = serde_json::from_str("\"kernel.efi\"").unwrap();
        assert_eq!(n.as_str(), "kernel.efi");
        assert!(serde_json::from_str::<ArtifactName>("\"../x\"").is_err());
        assert_eq!(serde_json::to_string(&n).unwrap(), "\"kernel.efi\"");
    }
}
