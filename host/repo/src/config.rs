//! The repository's configuration, `REPO/repo.toml`: for each top-level TUF role its keys,
//! signature threshold and how long its metadata stays valid. The defaults follow
//! Bottlerocket's repositories: root one year, targets and snapshot two weeks, timestamp one
//! week. The root and targets keys belong offline (point their paths at removable media); the
//! timestamp key is the one a server keeps online to re-sign every few days.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

/// The configuration's file name inside a repository folder.
pub const CONFIG_FILE: &str = "repo.toml";

/// The four top-level roles, in the order their metadata is written.
pub const ROLES: [Role; 4] = [Role::Root, Role::Targets, Role::Snapshot, Role::Timestamp];

/// A top-level TUF role.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Names the keys of every role.
    Root,
    /// Lists the releases.
    Targets,
    /// Pins the version of targets.
    Snapshot,
    /// Pins the snapshot; re-signed often, so that a frozen repository is noticed.
    Timestamp,
}

impl Role {
    /// The role's name in TUF metadata.
    pub fn name(self) -> &'static str {
        match self {
            Role::Root => "root",
            Role::Targets => "targets",
            Role::Snapshot => "snapshot",
            Role::Timestamp => "timestamp",
        }
    }

    /// tough's name for the role.
    pub fn tuf(self) -> tough::schema::RoleType {
        use tough::schema::RoleType;
        match self {
            Role::Root => RoleType::Root,
            Role::Targets => RoleType::Targets,
            Role::Snapshot => RoleType::Snapshot,
            Role::Timestamp => RoleType::Timestamp,
        }
    }
}

impl std::str::FromStr for Role {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        ROLES
            .into_iter()
            .find(|r| r.name() == s)
            .ok_or_else(|| format!("`{s}` is not a role: root, targets, snapshot or timestamp"))
    }
}

/// One role's settings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RoleConfig {
    /// Days a freshly signed metadata file of this role stays valid.
    pub expires_days: u32,
    /// Signatures needed.
    #[serde(default = "one")]
    pub threshold: u64,
    /// Its private keys (Ed25519, PKCS#8 DER), relative to the repository folder unless
    /// absolute. At least `threshold` of them.
    pub keys: Vec<PathBuf>,
}

fn one() -> u64 {
    1
}

/// `repo.toml`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RepoConfig {
    /// The root role.
    pub root: RoleConfig,
    /// The targets role.
    pub targets: RoleConfig,
    /// The snapshot role.
    pub snapshot: RoleConfig,
    /// The timestamp role.
    pub timestamp: RoleConfig,
    /// The delegated rollouts role, once `repo delegate-rollouts` made it: the fleet server's
    /// online key(s) (`aperture_release::rollout`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollouts: Option<RoleConfig>,
    /// Delta bundles `release publish` makes beside each full bundle.
    #[serde(default)]
    pub deltas: DeltaConfig,
}

/// `[deltas]` of `repo.toml`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeltaConfig {
    /// From how many of the newest earlier releases of the same channel, product and board a
    /// delta is made (0: none). Each costs one build-host encode and a little repository space;
    /// a device running any other release fetches the full bundle.
    pub from_last: u32,
}

impl Default for DeltaConfig {
    fn default() -> Self {
        DeltaConfig { from_last: 2 }
    }
}

impl Default for RepoConfig {
    fn default() -> Self {
        let role = |days, name: &str| RoleConfig {
            expires_days: days,
            threshold: 1,
            keys: vec![PathBuf::from(format!("keys/{name}.pk8"))],
        };
        RepoConfig {
            root: role(365, "root"),
            targets: role(14, "targets"),
            snapshot: role(14, "snapshot"),
            timestamp: role(7, "timestamp"),
            rollouts: None,
            deltas: DeltaConfig::default(),
        }
    }
}

impl RepoConfig {
    /// Read `REPO/repo.toml`.
    pub fn load(repo: &Path) -> Result<Self> {
        let path = repo.join(CONFIG_FILE);
        let text = std::fs::read_to_string(&path).with_context(|| {
            format!(
                "reading {}: is {} a repository? (`aperture repo init --out {}` makes one)",
                path.display(),
                repo.display(),
                repo.display()
            )
        })?;
        let config: RepoConfig =
            toml::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
        config
            .check()
            .with_context(|| format!("in {}", path.display()))?;
        Ok(config)
    }

    /// Write it as `REPO/repo.toml`, with a comment on what it is.
    pub fn save(&self, repo: &Path) -> Result<()> {
        let path = repo.join(CONFIG_FILE);
        let text = format!(
            "# Aperture release repository (TUF 1.0). Keys are Ed25519 PKCS#8 DER files, relative to\n\
             # this folder unless absolute: keep root and targets keys offline.\n{}",
            toml::to_string_pretty(self)?
        );
        // Through a rename: `rotate-root` rewrites it, and a half-written key list would
        // leave the repository unsignable.
        crate::repo::write_atomic(&path, text.as_bytes())
            .with_context(|| format!("writing {}", path.display()))
    }

    /// The settings of `role`.
    pub fn role(&self, role: Role) -> &RoleConfig {
        match role {
            Role::Root => &self.root,
            Role::Targets => &self.targets,
            Role::Snapshot => &self.snapshot,
            Role::Timestamp => &self.timestamp,
        }
    }

    /// A role's key paths, resolved against the repository folder.
    pub fn key_paths(&self, repo: &Path, role: Role) -> Vec<PathBuf> {
        self.role(role).keys.iter().map(|k| repo.join(k)).collect()
    }

    /// The settings the rollouts role gets when it is delegated: one key, re-signed weekly
    /// (online, like the timestamp).
    pub fn default_rollouts() -> RoleConfig {
        RoleConfig {
            expires_days: 7,
            threshold: 1,
            keys: vec![PathBuf::from("keys/rollouts.pk8")],
        }
    }

    /// The rollouts role's key paths, resolved (none before it is delegated).
    pub fn rollouts_key_paths(&self, repo: &Path) -> Vec<PathBuf> {
        self.rollouts
            .iter()
            .flat_map(|r| r.keys.iter().map(|k| repo.join(k)))
            .collect()
    }

    fn check(&self) -> Result<()> {
        let named = ROLES
            .iter()
            .map(|r| (r.name(), self.role(*r)))
            .chain(self.rollouts.as_ref().map(|c| ("rollouts", c)));
        for (name, c) in named {
            if c.threshold == 0 {
                bail!("[{}] threshold must be at least 1", name);
            }
            if (c.keys.len() as u64) < c.threshold {
                bail!(
                    "[{}] lists {} keys for a threshold of {}: list at least as many keys as the threshold",
                    name,
                    c.keys.len(),
                    c.threshold
                );
            }
            if c.expires_days == 0 || c.expires_days > 3650 {
                bail!("[{}] expires_days must be 1 to 3650", name);
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_round_trip_and_follow_bottlerocket() {
        let dir = tempfile::tempdir().unwrap();
        let c = RepoConfig::default();
        c.save(dir.path()).unwrap();
        let back = RepoConfig::load(dir.path()).unwrap();
        assert_eq!(back, c);
        assert_eq!(ROLES.map(|r| c.role(r).expires_days), [365, 14, 14, 7]);
    }

    #[test]
    fn unknown_keys_and_impossible_thresholds_are_refused_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let mut text = toml::to_string(&RepoConfig::default()).unwrap();
        text.push_str("\n[mirrors]\nurl = \"x\"\n");
        std::fs::write(dir.path().join(CONFIG_FILE), &text).unwrap();
        let e = format!("{:#}", RepoConfig::load(dir.path()).unwrap_err());
        assert!(e.contains("repo.toml") && e.contains("mirrors"), "{e}");
        let mut c = RepoConfig::default();
        c.targets.threshold = 2;
        c.save(dir.path()).unwrap();
        let e = format!("{:#}", RepoConfig::load(dir.path()).unwrap_err());
        assert!(
            e.contains("[targets] lists 1 keys for a threshold of 2"),
            "{e}"
        );
    }
}
