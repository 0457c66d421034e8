//! Secrets the server hands out (enrollment tokens, admin API tokens) and the roles of API
//! tokens.
//!
//! A token is 256 random bits, base64url, with a prefix saying what it is (`apf-enroll-`,
//! `apf-admin-`) so a leaked one is recognisable in logs and secret scanners. The database keeps
//! only its SHA-256. A fast hash is right here, unlike for passwords: with 256 bits of entropy
//! nobody can search the input space, so a slow KDF would buy nothing, while a deterministic
//! hash lets the server find the token's row by an indexed lookup of `sha256(token)`, with no
//! per-row comparison whose timing could leak anything (a timing difference in the index lookup
//! reveals at most a prefix of a hash, not of a token). A stolen database copy yields no usable
//! token.

use std::fmt;
use std::str::FromStr;

use base64::Engine;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// The prefix of enrollment tokens (the provisioning archive checks it: one fact, one place).
pub const ENROLL_PREFIX: &str = aperture_fleet_api::provision::ENROLL_TOKEN_PREFIX;
/// The prefix of admin API tokens.
pub const ADMIN_PREFIX: &str = "apf-admin-";

/// A new random token: `prefix` and 32 random bytes in base64url (no padding).
pub fn generate(prefix: &str) -> String {
    let mut bytes = [0u8; 32];
    getrandom::getrandom(&mut bytes).expect("the operating system's random source failed");
    format!(
        "{prefix}{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    )
}

/// Random hex for identifiers (device and token ids): `bytes` random bytes.
pub fn random_hex(bytes: usize) -> String {
    let mut buf = vec![0u8; bytes];
    getrandom::getrandom(&mut buf).expect("the operating system's random source failed");
    hex::encode(buf)
}

/// What the database stores for a token: the hex SHA-256 of its text.
pub fn hash(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

/// The role of an admin API token. Roles are ordered: each may do everything the ones below it
/// may.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Role {
    /// Reads devices and their reports.
    Viewer,
    /// Also manages devices (revoke, tag) and makes enrollment tokens.
    Operator,
    /// Also decides what devices install: their channel, starting, resuming and cancelling
    /// rollouts. (Operators pause, halt and pin.)
    ReleaseManager,
    /// Also manages API tokens and reads the audit log.
    Admin,
}

impl Role {
    /// Every role, lowest first.
    pub const ALL: [Role; 4] = [
        Role::Viewer,
        Role::Operator,
        Role::ReleaseManager,
        Role::Admin,
    ];

    /// The name used in the database, the API and the command line.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Operator => "operator",
            Role::ReleaseManager => "release-manager",
            Role::Admin => "admin",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A role name that is not one of [`Role::ALL`].
#[derive(Debug, thiserror::Error)]
#[error("unknown role {0:?} (viewer, operator, release-manager or admin)")]
pub struct UnknownRole(pub String);

impl FromStr for Role {
    type Err = UnknownRole;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Role::ALL
            .into_iter()
            .find(|r| r.as_str() == s)
            .ok_or_else(|| UnknownRole(s.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_are_ordered_and_round_trip() {
        assert!(Role::Viewer < Role::Operator);
        assert!(Role::Operator < Role::ReleaseManager);
        assert!(Role::ReleaseManager < Role::Admin);
        for r in Role::ALL {
            assert_eq!(r.as_str().parse::<Role>().unwrap(), r);
            assert_eq!(
                serde_json::to_string(&r).unwrap(),
                format!("\"{}\"", r.as_str())
            );
        }
        assert!("root".parse::<Role>().is_err());
    }

    #[test]
    fn tokens_are_random_prefixed_and_hashed() {
        let a = generate(ENROLL_PREFIX);
        let b = generate(ENROLL_PREFIX);
        assert_ne!(a, b);
        assert!(a.starts_with(ENROLL_PREFIX));
        // 32 bytes of base64url without padding.
        assert_eq!(a.len(), ENROLL_PREFIX.len() + 43);
        assert_eq!(hash(&a).len(), 64);
        assert_eq!(hash(&a), hash(&a));
        assert_ne!(hash(&a), hash(&b));
    }
}
