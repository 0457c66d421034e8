//! The fleet server's delegated role: `rollouts` (`aperture_release::rollout`). The offline
//! targets key delegates it once (`repo delegate-rollouts`) to a key the fleet server keeps
//! online, for target names under `rollouts/*/*` only; from then on the server records each
//! rollout's state (active, paused, halted, cancelled; its devices, waves and pins) by signing
//! a new `N.rollouts.json` with that key, then a snapshot and a timestamp with their online
//! keys. It never needs the targets or root keys, and what it signs can only hold back a
//! release the targets role published (the rules are in `aperture_release::select`).
//!
//! A rollout target is a signed record, not a file a device downloads: its length and sha256
//! are those of the record's JSON, and only its `custom` object is read. So nothing is stored
//! under `targets/` for it, and `repo sync` has nothing to copy but the metadata.

use std::collections::HashMap;
use std::num::NonZeroU64;

use anyhow::{anyhow, bail, Context, Result};
use aperture_release::rollout::{RolloutMeta, CUSTOM_KEY, PATH_PREFIX, ROLE};
use tough::editor::signed::SignedRole;
use tough::schema::decoded::{Decoded, Hex};
use tough::schema::{
    DelegatedRole, DelegatedTargets, Delegations, Hashes, KeyHolder, PathPattern, PathSet, Target,
    Targets,
};
use tough::TargetName;

use crate::config::RepoConfig;
use crate::keys;
use crate::repo::{expiry, next, runtime, write_atomic, Repo, METADATA, SPEC_VERSION};

/// The rollouts role's metadata file name (`N.rollouts.json` with consistent snapshots), and
/// its key in the snapshot.
pub const FILE: &str = "rollouts.json";

/// The delegation's one path pattern: `rollouts/CHANNEL/VERSION.json`. Two levels spelled
/// out, so that it means the same whether a client's `*` crosses a `/` (tough's globset) or
/// not (the TUF specification's fnmatch).
pub const PATTERN: &str = "rollouts/*/*";

impl Repo {
    /// Whether the rollouts role is delegated.
    pub fn rollouts_delegated(&self) -> bool {
        self.rollouts.is_some()
    }

    /// The rollouts the role lists, by target name.
    pub fn rollout_list(&self) -> Vec<RolloutMeta> {
        let mut out: Vec<RolloutMeta> = self
            .rollouts
            .iter()
            .flat_map(|r| r.signed.targets.values())
            .filter_map(|t| RolloutMeta::from_custom(&t.custom)?.ok())
            .collect();
        out.sort_by_key(RolloutMeta::target_name);
        out
    }

    /// The rollouts role's current version (none before it is delegated).
    pub fn rollouts_version(&self) -> Option<u64> {
        self.rollouts.as_ref().map(|r| r.signed.version.get())
    }

    /// Delegate the rollouts role (the offline step: it signs targets). Its key comes from
    /// `repo.toml`'s `[rollouts]` (written with one key, `keys/rollouts.pk8`, if absent; made
    /// as a development key, loudly, unless `release`). Returns false when it is delegated
    /// already.
    pub fn delegate_rollouts(&mut self, now: jiff::Timestamp, release: bool) -> Result<bool> {
        let delegated = self
            .targets
            .signed
            .delegations
            .as_ref()
            .is_some_and(|d| d.roles.iter().any(|r| r.name == ROLE));
        if delegated {
            return Ok(false);
        }
        let config = self
            .config
            .rollouts
            .clone()
            .unwrap_or_else(RepoConfig::default_rollouts);
        let mut made = Vec::new();
        for k in &config.keys {
            let path = self.dir.join(k);
            if path.exists() {
                continue;
            }
            if release {
                bail!(
                    "the rollouts key {} does not exist, and --release never makes development \
                     keys: make one (`aperture repo keygen {}`) and give it to the fleet server",
                    path.display(),
                    path.display()
                );
            }
            keys::generate(&path, true)?;
            made.push(path);
        }
        keys::warn_development(&made);
        self.config.rollouts = Some(config.clone());
        self.config.save(&self.dir)?;

        let rt = runtime()?;
        let mut role_keys = HashMap::new();
        let mut ids = Vec::new();
        for source in keys::sources_for(
            &self.dir,
            ROLE,
            &self.config.rollouts_key_paths(&self.dir),
            release,
        )? {
            let key = rt
                .block_on(source.as_sign())
                .map_err(|e| anyhow!("reading a rollouts key: {e}"))?
                .tuf_key();
            let id = key.key_id().context("computing a key id")?;
            if ids.contains(&id) {
                bail!("the rollouts role lists one key twice");
            }
            ids.push(id.clone());
            role_keys.insert(id, key);
        }
        let mut targets = self.targets.signed.clone();
        let mut delegations = targets.delegations.take().unwrap_or_default();
        delegations.keys.extend(role_keys);
        delegations.roles.push(DelegatedRole {
            name: ROLE.into(),
            keyids: ids,
            threshold: NonZeroU64::new(config.threshold).context("threshold 0")?,
            paths: PathSet::Paths(vec![
                PathPattern::new(PATTERN).map_err(|e| anyhow!("the pattern {PATTERN}: {e}"))?
            ]),
            terminating: true,
            targets: None,
        });
        targets.delegations = Some(delegations.clone());
        let first = Targets::new(
            SPEC_VERSION.into(),
            NonZeroU64::MIN,
            expiry(now, config.expires_days)?,
        );
        self.write_rollouts(first, &delegations, release)?;
        self.resign_targets(targets, now, release)?;
        Ok(true)
    }

    /// Record `rollout` (the online step: the rollouts, snapshot and timestamp keys only),
    /// replacing the earlier record of the same release. Returns false when the record is
    /// already exactly that. Refused before the role is delegated, and for a release the
    /// repository does not list.
    pub fn set_rollout(
        &mut self,
        rollout: &RolloutMeta,
        now: jiff::Timestamp,
        release: bool,
    ) -> Result<bool> {
        rollout
            .validate()
            .map_err(|e| anyhow!("rollout {}: {e}", rollout.target_name()))?;
        let Some(current) = &self.rollouts else {
            bail!(
                "{} has no rollouts role: delegate it once with the targets key \
                 (`aperture repo delegate-rollouts --repo {}`)",
                self.dir.display(),
                self.dir.display()
            );
        };
        let published = self
            .releases()
            .iter()
            .any(|(_, m)| m.version == rollout.version && m.channel == rollout.channel);
        if !published {
            bail!(
                "no release {} on channel {} in {}: publish it before starting its rollout",
                rollout.version,
                rollout.channel,
                self.dir.display()
            );
        }
        let name = rollout.target_name();
        let value = rollout.to_value();
        let mut targets = current.signed.clone();
        let unchanged = targets
            .targets
            .iter()
            .find(|(n, _)| n.raw() == name)
            .is_some_and(|(_, t)| t.custom.get(CUSTOM_KEY) == Some(&value));
        if unchanged {
            return Ok(false);
        }
        let record = serde_json::to_vec(&value).context("serialising the rollout")?;
        let sha256 = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, &record);
        let target = Target {
            length: record.len() as u64,
            hashes: Hashes {
                sha256: Decoded::<Hex>::from(sha256.as_ref().to_vec()),
                _extra: HashMap::new(),
            },
            custom: HashMap::from([(CUSTOM_KEY.to_string(), value)]),
            _extra: HashMap::new(),
        };
        targets.targets.insert(
            TargetName::new(name).context("rollout target name")?,
            target,
        );
        self.resign_rollouts(targets, now, release)?;
        Ok(true)
    }

    /// Re-sign the rollouts role with `targets` as its next version, then a snapshot and a
    /// timestamp.
    pub(crate) fn resign_rollouts(
        &mut self,
        mut targets: Targets,
        now: jiff::Timestamp,
        release: bool,
    ) -> Result<()> {
        let current = self
            .rollouts
            .as_ref()
            .map(|r| r.signed.version)
            .unwrap_or(NonZeroU64::MIN);
        let days = self
            .config
            .rollouts
            .as_ref()
            .map(|c| c.expires_days)
            .unwrap_or(RepoConfig::default_rollouts().expires_days);
        targets.version = next(current);
        targets.expires = expiry(now, days)?;
        let delegations = self
            .targets
            .signed
            .delegations
            .clone()
            .context("the targets role delegates nothing")?;
        self.write_rollouts(targets, &delegations, release)?;
        let sv = next(self.snapshot.signed.version);
        let tv = next(self.timestamp.signed.version);
        self.commit(None, sv, tv, now, release)
    }

    /// Sign `targets` as the rollouts role with its keys, as `delegations` lists them, and
    /// write `N.rollouts.json`.
    fn write_rollouts(
        &mut self,
        targets: Targets,
        delegations: &Delegations,
        release: bool,
    ) -> Result<()> {
        if let Some((name, _)) = targets
            .targets
            .iter()
            .find(|(n, _)| !n.raw().starts_with(PATH_PREFIX))
        {
            bail!("{} is outside the rollouts role's paths", name.raw());
        }
        let rt = runtime()?;
        let keys = keys::sources_for(
            &self.dir,
            ROLE,
            &self.config.rollouts_key_paths(&self.dir),
            release,
        )?;
        let role = DelegatedTargets {
            name: ROLE.into(),
            targets,
        };
        let rng = aws_lc_rs::rand::SystemRandom::new();
        let signed = rt
            .block_on(SignedRole::new(
                role,
                &KeyHolder::Delegations(delegations.clone()),
                &keys,
                &rng,
            ))
            .context("signing rollouts metadata (are its keys the ones the delegation lists?)")?;
        use tough::schema::Role as _;
        write_atomic(
            &self
                .dir
                .join(METADATA)
                .join(signed.signed().signed.filename(true)),
            signed.buffer(),
        )?;
        self.rollouts = Some(signed.signed().clone().targets().1);
        Ok(())
    }

    /// Re-sign the rollouts role when it has less than half its validity left at `now` (or
    /// with `force`), then a snapshot and a timestamp: what `repo refresh` and the fleet server
    /// do, so that an idle rollouts role never expires under the devices (an expired delegated
    /// role fails their whole refresh). Returns whether it was re-signed.
    pub fn refresh_rollouts(
        &mut self,
        now: jiff::Timestamp,
        force: bool,
        release: bool,
    ) -> Result<bool> {
        let (Some(r), Some(c)) = (&self.rollouts, &self.config.rollouts) else {
            return Ok(false);
        };
        let due = force
            || r.signed.expires.as_second() - now.as_second() < i64::from(c.expires_days) * 43_200;
        if due {
            let same = r.signed.clone();
            self.resign_rollouts(same, now, release)?;
        }
        Ok(due)
    }
}
