//! `repo rotate-root`: replace the keys of some top-level roles (the root's own, and any of
//! targets, snapshot and timestamp) with new ones, through a new root version.
//!
//! The rule is the TUF specification's (section 5.3.4, "Update the root role"): a client that
//! trusts root N accepts root N+1 only if it carries a threshold of signatures from the root
//! keys of N *and* a threshold from the root keys N+1 itself lists. So root N+1 is signed by
//! the old root keys and by the new ones, written as `metadata/N+1.root.json` and
//! `root.json`, and `repo.toml` then names the new keys. A role whose keys changed is re-signed
//! with them at once, and so is every role above it in the chain (targets, then snapshot,
//! then timestamp): metadata signed by a retired key is refused by every client that has seen
//! the new root. The old key files are left where they were; `repo.toml` no longer names them.
//!
//! New keys come from the caller (release keys made with `repo keygen` and kept offline), or
//! are made as development keys beside the old ones (`keys/ROLE-vN.pk8`), loudly; `--release`
//! never makes them and refuses any.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;

use anyhow::{anyhow, bail, Context, Result};
use tough::schema::decoded::{Decoded, Hex};
use tough::schema::{Root, Signed};

use crate::config::{Role, ROLES};
use crate::keys;
use crate::repo::{expiry, next, runtime, sign, write_atomic, Repo, METADATA};

/// What a rotation did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rotated {
    /// The new root's version.
    pub root_version: u64,
    /// Each rotated role and its new key files (as `repo.toml` now names them).
    pub new_keys: Vec<(Role, Vec<PathBuf>)>,
    /// Each rotated role and the key files `repo.toml` named before (now retired).
    pub retired: Vec<(Role, Vec<PathBuf>)>,
    /// Development keys made for the rotation.
    pub made: Vec<PathBuf>,
    /// Roles re-signed with their new keys after the root (and those above them).
    pub resigned: Vec<Role>,
}

/// The development key files a rotation to root version `version` makes for `role`, one for
/// each key it had: `keys/ROLE-vN.pk8`, then `keys/ROLE-vN-2.pk8`, ...
pub fn default_key_paths(role: Role, version: u64, count: usize) -> Vec<PathBuf> {
    (1..=count.max(1))
        .map(|i| match i {
            1 => PathBuf::from(format!("keys/{}-v{version}.pk8", role.name())),
            i => PathBuf::from(format!("keys/{}-v{version}-{i}.pk8", role.name())),
        })
        .collect()
}

type KeyIds = Vec<Decoded<Hex>>;

impl Repo {
    /// Give each role of `rotate` new keys in a new root version signed by the old and the new
    /// root keys, then re-sign what the new keys sign. `new_keys` names the key files of a
    /// role (relative to the repository unless absolute); a rotated role without them gets
    /// new development keys (refused with `release`, as development keys anywhere are).
    pub fn rotate_root(
        &mut self,
        rotate: &[Role],
        new_keys: &HashMap<Role, Vec<PathBuf>>,
        now: jiff::Timestamp,
        release: bool,
    ) -> Result<Rotated> {
        if rotate.is_empty() {
            bail!("name at least one role to rotate (root, targets, snapshot, timestamp)");
        }
        if let Some(role) = new_keys.keys().find(|r| !rotate.contains(r)) {
            bail!(
                "new keys are given for the {} role, which is not being rotated: add it to \
                 --rotate",
                role.name()
            );
        }
        let old_root = self.root.signed.clone();
        let version = next(old_root.version);
        let old_config = self.config.clone();
        let mut config = self.config.clone();
        let rt = runtime()?;

        // The new key files: given, or development keys made now.
        let mut made = Vec::new();
        let mut rotated = Vec::new();
        let mut retired = Vec::new();
        for role in ROLES.into_iter().filter(|r| rotate.contains(r)) {
            let threshold = role_keys(&old_root, role)?.threshold.get();
            let paths = match new_keys.get(&role) {
                Some(p) => p.clone(),
                None => default_key_paths(role, version.get(), old_config.role(role).keys.len()),
            };
            if (paths.len() as u64) < threshold {
                bail!(
                    "the {} role needs {threshold} signatures, but {} new keys are given",
                    role.name(),
                    paths.len()
                );
            }
            for path in &paths {
                let full = self.dir.join(path);
                if full.exists() {
                    continue;
                }
                if release || new_keys.contains_key(&role) {
                    bail!(
                        "the new {} key {} does not exist{}: make it with `aperture repo keygen \
                         {}` (and keep it offline), then rotate again",
                        role.name(),
                        full.display(),
                        if release {
                            ", and --release never makes development keys"
                        } else {
                            ""
                        },
                        full.display()
                    );
                }
                keys::generate(&full, true)?;
                made.push(full);
            }
            retired.push((role, old_config.role(role).keys.clone()));
            rotated.push((role, paths.clone()));
            let c = match role {
                Role::Root => &mut config.root,
                Role::Targets => &mut config.targets,
                Role::Snapshot => &mut config.snapshot,
                Role::Timestamp => &mut config.timestamp,
            };
            c.keys = paths;
        }
        keys::warn_development(&made);

        // The new root: the rotated roles list their new keys, keys nobody lists are dropped.
        let mut root = old_root.clone();
        root.version = version;
        root.expires = expiry(now, config.root.expires_days)?;
        for (role, _) in &rotated {
            let mut ids: KeyIds = Vec::new();
            for source in keys::sources(&self.dir, &config, &[*role], release)? {
                let key = rt
                    .block_on(source.as_sign())
                    .map_err(|e| anyhow!("reading a new {} key: {e}", role.name()))?
                    .tuf_key();
                let id = key.key_id().context("computing a key id")?;
                if role_keys(&old_root, *role)?.keyids.contains(&id) {
                    bail!(
                        "a new {} key is one the role already has (key id {}): a rotation needs \
                         keys the role never had",
                        role.name(),
                        hex::encode(id.as_ref())
                    );
                }
                if ids.contains(&id) {
                    bail!("the new {} keys list one key twice", role.name());
                }
                ids.push(id.clone());
                root.keys.insert(id, key);
            }
            root.roles
                .get_mut(&role.tuf())
                .with_context(|| format!("the root lists no {} role", role.name()))?
                .keyids = ids;
        }
        let listed: HashSet<Decoded<Hex>> = root
            .roles
            .values()
            .flat_map(|r| r.keyids.iter().cloned())
            .collect();
        root.keys.retain(|id, _| listed.contains(id));

        // Signed by the old root keys and the new ones: tough signs with every key the key
        // holder lists for the root role, so the holder lists both sets.
        let mut holder = root.clone();
        let mut signers = keys::sources(&self.dir, &old_config, &[Role::Root], release)?;
        if rotate.contains(&Role::Root) {
            let old_ids = &role_keys(&old_root, Role::Root)?.keyids;
            for id in old_ids {
                holder.keys.insert(id.clone(), old_root.keys[id].clone());
            }
            holder
                .roles
                .get_mut(&Role::Root.tuf())
                .context("the root lists no root role")?
                .keyids
                .extend(old_ids.iter().cloned());
            signers.extend(keys::sources(&self.dir, &config, &[Role::Root], release)?);
        }
        let signed = sign(&rt, root.clone(), &holder, &signers)?;
        check_cross_signed(signed.signed(), &old_root)?;

        let metadata = self.dir.join(METADATA);
        write_atomic(
            &metadata.join(format!("{version}.root.json")),
            signed.buffer(),
        )?;
        write_atomic(&metadata.join("root.json"), signed.buffer())?;
        config.save(&self.dir)?;
        self.root = signed.signed().clone();
        self.config = config;

        // Re-sign what the new keys sign, and everything above it.
        let has = |r: Role| rotate.contains(&r);
        let resigned = if has(Role::Targets) {
            self.resign_targets(self.targets.signed.clone(), now, release)?;
            vec![Role::Targets, Role::Snapshot, Role::Timestamp]
        } else if has(Role::Snapshot) {
            let (sv, tv) = (
                next(self.snapshot.signed.version),
                next(self.timestamp.signed.version),
            );
            self.commit(None, sv, tv, now, release)?;
            vec![Role::Snapshot, Role::Timestamp]
        } else if has(Role::Timestamp) {
            let (sv, tv) = (
                self.snapshot.signed.version,
                next(self.timestamp.signed.version),
            );
            self.commit(None, sv, tv, now, release)?;
            vec![Role::Timestamp]
        } else {
            self.check_loads(&rt, now)?;
            vec![]
        };
        Ok(Rotated {
            root_version: version.get(),
            new_keys: rotated,
            retired,
            made,
            resigned,
        })
    }
}

fn role_keys(root: &Root, role: Role) -> Result<&tough::schema::RoleKeys> {
    root.roles
        .get(&role.tuf())
        .with_context(|| format!("the root lists no {} role", role.name()))
}

/// The new root carries a threshold of signatures from the old root's root keys and from its
/// own (tough's signer checks no threshold for a root, since a root's are two).
fn check_cross_signed(new: &Signed<Root>, old: &Root) -> Result<()> {
    let count = |root: &Root| -> Result<(usize, u64)> {
        let keys = role_keys(root, Role::Root)?;
        let n = new
            .signatures
            .iter()
            .filter(|s| keys.keyids.contains(&s.keyid))
            .count();
        Ok((n, keys.threshold.get()))
    };
    for (which, root) in [("old", old), ("new", &new.signed)] {
        let (n, threshold) = count(root)?;
        if (n as u64) < threshold {
            bail!(
                "the new root carries {n} signatures by the {which} root keys, and needs \
                 {threshold}: are all the root keys repo.toml names at hand?"
            );
        }
    }
    Ok(())
}
