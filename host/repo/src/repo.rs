//! A release repository on disk and the operations on it. The folder holds `repo.toml`,
//! `keys/` (development keys; never synced), `metadata/` and `targets/`, laid out as a TUF
//! repository with consistent snapshots, ready to be served as it is:
//!
//! * `metadata/N.root.json` for every root version (clients walk them to rotate keys) and
//!   `metadata/root.json`, the newest;
//! * `metadata/N.targets.json`, `metadata/N.snapshot.json`, `metadata/timestamp.json`;
//! * `targets/SHA256.NAME` for every target.
//!
//! Every change writes new versioned files first and replaces `timestamp.json` last (a
//! rename), so that a reader that starts from the timestamp always finds what it names.
//! Signing goes through tough ([`tough::editor::signed::SignedRole`]); after each change the
//! repository is loaded back through tough's client, from the first root, as a device would.

use std::collections::HashMap;
use std::num::NonZeroU64;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};
use aperture_release::{DeltaMeta, ReleaseMeta, CUSTOM_KEY, DELTA_KEY};
use serde::Serialize;
use tough::editor::signed::SignedRole;
use tough::key_source::KeySource;
use tough::schema::decoded::{Decoded, Hex};
use tough::schema::{
    Hashes, KeyHolder, Metafile, Role as _, RoleKeys, Root, Signed, Snapshot, Target, Targets,
    Timestamp,
};
use tough::TargetName;

use crate::config::{RepoConfig, Role, ROLES};
use crate::keys;

/// The metadata folder inside a repository.
pub const METADATA: &str = "metadata";
/// The targets folder inside a repository.
pub const TARGETS: &str = "targets";
/// The TUF specification version the metadata declares.
pub const SPEC_VERSION: &str = "1.0.0";

/// A tokio runtime for tough's async API (one thread: signing and hashing are quick).
pub(crate) fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .build()
        .context("starting the async runtime tough needs")
}

pub(crate) fn expiry(now: jiff::Timestamp, days: u32) -> Result<jiff::Timestamp> {
    // Whole seconds: TUF writes expiries as YYYY-MM-DDTHH:MM:SSZ.
    let now = jiff::Timestamp::from_second(now.as_second()).context("time out of range")?;
    now.checked_add(jiff::SignedDuration::from_hours(i64::from(days) * 24))
        .context("expiry out of range")
}

pub(crate) fn next(v: NonZeroU64) -> NonZeroU64 {
    v.checked_add(1).expect("metadata version below u64::MAX")
}

fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    serde_json::from_slice(&bytes).with_context(|| format!("parsing {}", path.display()))
}

/// Write `bytes` at `path` through a temporary file and a rename, synced (the folder made if
/// missing).
pub(crate) fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = aperture_sys::fs::parent_dir(path);
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    Ok(aperture_sys::fs::write_atomic(path, bytes, 0o644)?)
}

/// The newest root version present in `metadata/`.
fn newest_root(metadata: &Path) -> Result<u64> {
    let mut newest = 0;
    let entries =
        std::fs::read_dir(metadata).with_context(|| format!("reading {}", metadata.display()))?;
    for e in entries {
        let name = e?.file_name();
        let name = name.to_string_lossy();
        if let Some(n) = name
            .strip_suffix(".root.json")
            .and_then(|n| n.parse::<u64>().ok())
        {
            newest = newest.max(n);
        }
    }
    if newest == 0 {
        bail!("{} holds no N.root.json", metadata.display());
    }
    Ok(newest)
}

/// What a publish did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Published {
    /// A new target, and the targets version that lists it.
    Added {
        /// Target name.
        name: String,
        /// The new targets version.
        targets_version: u64,
    },
    /// The same build was already published to that channel: nothing changed.
    AlreadyThere {
        /// Target name.
        name: String,
    },
}

/// An exclusive lock on a repository folder (`flock` on the folder itself), held from before
/// a change reads the metadata until after it wrote the new one, so two writers on this
/// machine (the `aperture repo` and `release` commands, the fleet server's signer) never sign
/// from the same old state. Released when dropped.
#[derive(Debug)]
pub struct RepoLock(#[allow(dead_code)] std::os::fd::OwnedFd);

impl RepoLock {
    /// Wait for the lock on `dir` (blocking).
    pub fn take(dir: &Path) -> Result<RepoLock> {
        use rustix::fs::{flock, open, FlockOperation, Mode, OFlags};
        let fd = open(
            dir,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .with_context(|| format!("opening the repository folder {}", dir.display()))?;
        if flock(&fd, FlockOperation::NonBlockingLockExclusive).is_err() {
            eprintln!(
                "{}: another command or the fleet server is changing this repository; waiting \
                 for it",
                dir.display()
            );
            flock(&fd, FlockOperation::LockExclusive)
                .with_context(|| format!("locking the repository folder {}", dir.display()))?;
        }
        Ok(RepoLock(fd))
    }
}

/// A repository opened for reading and changing.
pub struct Repo {
    /// Held by a repository opened with [`Repo::open_to_change`].
    _lock: Option<RepoLock>,
    pub(crate) dir: PathBuf,
    pub(crate) config: RepoConfig,
    pub(crate) root: Signed<Root>,
    pub(crate) targets: Signed<Targets>,
    pub(crate) snapshot: Signed<Snapshot>,
    pub(crate) timestamp: Signed<Timestamp>,
    /// The delegated rollouts role's current metadata, once delegated
    /// ([`crate::rollouts`]).
    pub(crate) rollouts: Option<Signed<Targets>>,
}

/// One role as `repo status` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct RoleStatus {
    /// Role name.
    pub role: &'static str,
    /// Metadata version.
    pub version: u64,
    /// Expiry (RFC 3339).
    pub expires: String,
    /// Seconds until expiry (negative once expired).
    pub expires_in_secs: i64,
    /// Signatures needed.
    pub threshold: u64,
    /// Key ids the root lists for it.
    pub keys: Vec<String>,
}

/// One release as `repo status` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct TargetStatus {
    /// Target name.
    pub name: String,
    /// Bytes.
    pub length: u64,
    /// sha256.
    pub sha256: String,
    /// Its release metadata (absent for a target that is not a release of ours).
    pub release: Option<ReleaseMeta>,
    /// Its delta metadata, for a delta bundle (written only then).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub delta: Option<DeltaMeta>,
}

/// `repo status`.
#[derive(Debug, Clone, Serialize)]
pub struct Status {
    /// The repository folder.
    pub repo: PathBuf,
    /// Whether any of its keys is a development key.
    pub development_keys: bool,
    /// Each top-level role.
    pub roles: Vec<RoleStatus>,
    /// Every target, by name.
    pub targets: Vec<TargetStatus>,
}

impl Repo {
    /// Make a repository in `dir`: its configuration (kept if already written), keys
    /// (development keys for those missing, unless `release`), root version 1 and empty
    /// targets, snapshot and timestamp. Refuses a folder that already holds metadata.
    pub fn init(dir: &Path, release: bool, now: jiff::Timestamp) -> Result<Repo> {
        let metadata = dir.join(METADATA);
        if metadata.join("1.root.json").exists() {
            bail!(
                "{} is already a repository ({} exists): use `aperture repo status --repo {}`",
                dir.display(),
                metadata.join("1.root.json").display(),
                dir.display()
            );
        }
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let config = if dir.join(crate::config::CONFIG_FILE).exists() {
            RepoConfig::load(dir)?
        } else {
            let c = RepoConfig::default();
            c.save(dir)?;
            c
        };
        keys::ensure(dir, &config, release)?;
        let rt = runtime()?;
        let mut root_keys = HashMap::new();
        let mut roles = HashMap::new();
        for role in ROLES {
            let mut ids = Vec::new();
            for source in keys::sources(dir, &config, &[role], release)? {
                let key = rt
                    .block_on(source.as_sign())
                    .map_err(|e| anyhow!("reading a {} key: {e}", role.name()))?
                    .tuf_key();
                let id = key.key_id().context("computing a key id")?;
                if ids.contains(&id) {
                    bail!("the {} role lists one key twice", role.name());
                }
                ids.push(id.clone());
                root_keys.insert(id, key);
            }
            roles.insert(
                role.tuf(),
                RoleKeys {
                    keyids: ids,
                    threshold: NonZeroU64::new(config.role(role).threshold)
                        .context("threshold 0")?,
                    _extra: HashMap::new(),
                },
            );
        }
        let root = Root {
            spec_version: SPEC_VERSION.into(),
            consistent_snapshot: true,
            version: NonZeroU64::MIN,
            expires: expiry(now, config.root.expires_days)?,
            keys: root_keys,
            roles,
            _extra: HashMap::new(),
        };
        let all = keys::sources(dir, &config, &ROLES, release)?;
        let signed_root = sign(&rt, root.clone(), &root, &all)?;
        let threshold = config.root.threshold as usize;
        if signed_root.signed().signatures.len() < threshold {
            bail!("root metadata needs {threshold} signatures");
        }
        write_atomic(&metadata.join("1.root.json"), signed_root.buffer())?;
        write_atomic(&metadata.join("root.json"), signed_root.buffer())?;
        std::fs::create_dir_all(dir.join(TARGETS))?;
        let targets = Targets::new(
            SPEC_VERSION.into(),
            NonZeroU64::MIN,
            expiry(now, config.targets.expires_days)?,
        );
        let mut repo = Repo {
            _lock: None,
            dir: dir.to_path_buf(),
            config,
            root: signed_root.signed().clone(),
            // Replaced by `commit` below.
            targets: Signed {
                signed: targets.clone(),
                signatures: vec![],
            },
            snapshot: Signed {
                signed: Snapshot::new(SPEC_VERSION.into(), NonZeroU64::MIN, now),
                signatures: vec![],
            },
            timestamp: Signed {
                signed: Timestamp::new(SPEC_VERSION.into(), NonZeroU64::MIN, now),
                signatures: vec![],
            },
            rollouts: None,
        };
        repo.commit(
            Some(targets),
            NonZeroU64::MIN,
            NonZeroU64::MIN,
            now,
            release,
        )?;
        Ok(repo)
    }

    /// Open the repository in `dir` as it is on disk (expired metadata included: refreshing it
    /// is one of the things to do with it).
    pub fn open(dir: &Path) -> Result<Repo> {
        let config = RepoConfig::load(dir)?;
        let metadata = dir.join(METADATA);
        let root_version = newest_root(&metadata)?;
        let root: Signed<Root> = read_json(&metadata.join(format!("{root_version}.root.json")))?;
        let timestamp: Signed<Timestamp> = read_json(&metadata.join("timestamp.json"))?;
        let snap_version = timestamp
            .signed
            .meta
            .get("snapshot.json")
            .context("timestamp.json names no snapshot.json")?
            .version;
        let snapshot: Signed<Snapshot> =
            read_json(&metadata.join(format!("{snap_version}.snapshot.json")))?;
        let targets_version = snapshot
            .signed
            .meta
            .get("targets.json")
            .context("the snapshot names no targets.json")?
            .version;
        let targets: Signed<Targets> =
            read_json(&metadata.join(format!("{targets_version}.targets.json")))?;
        let rollouts = match snapshot.signed.meta.get(crate::rollouts::FILE) {
            Some(m) => Some(read_json(&metadata.join(format!(
                "{}.{}",
                m.version,
                crate::rollouts::FILE
            )))?),
            None => None,
        };
        Ok(Repo {
            _lock: None,
            dir: dir.to_path_buf(),
            config,
            root,
            targets,
            snapshot,
            timestamp,
            rollouts,
        })
    }

    /// [`Repo::open`] under the folder's [`RepoLock`], held until the `Repo` is dropped: what
    /// every command that changes a repository uses. (A process that already holds the lock,
    /// as the fleet server's signer does, opens with [`Repo::open`]: a second `flock` of the
    /// same folder in one process would wait for itself.)
    pub fn open_to_change(dir: &Path) -> Result<Repo> {
        let lock = RepoLock::take(dir)?;
        let mut repo = Repo::open(dir)?;
        repo._lock = Some(lock);
        Ok(repo)
    }

    /// The repository folder.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The current targets metadata.
    pub fn targets(&self) -> &Targets {
        &self.targets.signed
    }

    /// The releases listed, with their target names.
    pub fn releases(&self) -> Vec<(String, ReleaseMeta)> {
        let mut out: Vec<(String, ReleaseMeta)> = self
            .targets
            .signed
            .targets
            .iter()
            .filter_map(|(name, t)| {
                let meta = ReleaseMeta::from_custom(&t.custom)?.ok()?;
                Some((name.raw().to_string(), meta))
            })
            .collect();
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out
    }

    /// Sign and write new targets (if given), then a snapshot and a timestamp with the given
    /// versions; the timestamp last. Without new targets and with the snapshot's current
    /// version, the snapshot is kept as it is and only the timestamp is signed.
    pub(crate) fn commit(
        &mut self,
        targets: Option<Targets>,
        snapshot_version: NonZeroU64,
        timestamp_version: NonZeroU64,
        now: jiff::Timestamp,
        release: bool,
    ) -> Result<()> {
        let rt = runtime()?;
        let metadata = self.dir.join(METADATA);
        let root = self.root.signed.clone();
        let new_targets = targets.is_some();
        let (targets_version, targets_meta) = match targets {
            Some(t) => {
                let keys = keys::sources(&self.dir, &self.config, &[Role::Targets], release)?;
                let signed = sign(&rt, t, &root, &keys)?;
                write_atomic(
                    &metadata.join(signed.signed().signed.filename(true)),
                    signed.buffer(),
                )?;
                self.targets = signed.signed().clone();
                (signed.signed().signed.version, metafile(&signed))
            }
            None => {
                let v = self.targets.signed.version;
                let m = self
                    .snapshot
                    .signed
                    .meta
                    .get("targets.json")
                    .cloned()
                    .context("the snapshot names no targets.json")?;
                (v, m)
            }
        };
        debug_assert_eq!(targets_meta.version, targets_version);
        let keep_snapshot = !new_targets && snapshot_version == self.snapshot.signed.version;
        let snapshot_meta = if keep_snapshot {
            // Only the timestamp is re-signed: the snapshot stays byte for byte what it was. A
            // consistent-snapshot name never changes contents, and `repo sync` skips a
            // versioned file the destination already has with the same size.
            file_metafile(
                &metadata.join(format!("{snapshot_version}.snapshot.json")),
                snapshot_version,
            )?
        } else {
            let mut snapshot = Snapshot::new(
                SPEC_VERSION.into(),
                snapshot_version,
                expiry(now, self.config.snapshot.expires_days)?,
            );
            snapshot.meta.insert("targets.json".into(), targets_meta);
            // The rollouts role, as last written (the fleet server's changes re-sign it
            // before they come here).
            if let Some(r) = &self.rollouts {
                let v = r.signed.version;
                snapshot.meta.insert(
                    crate::rollouts::FILE.into(),
                    file_metafile(&metadata.join(format!("{v}.{}", crate::rollouts::FILE)), v)?,
                );
            }
            let keys = keys::sources(&self.dir, &self.config, &[Role::Snapshot], release)?;
            let signed_snapshot = sign(&rt, snapshot, &root, &keys)?;
            write_atomic(
                &metadata.join(signed_snapshot.signed().signed.filename(true)),
                signed_snapshot.buffer(),
            )?;
            self.snapshot = signed_snapshot.signed().clone();
            metafile(&signed_snapshot)
        };
        let mut timestamp = Timestamp::new(
            SPEC_VERSION.into(),
            timestamp_version,
            expiry(now, self.config.timestamp.expires_days)?,
        );
        timestamp.meta.insert("snapshot.json".into(), snapshot_meta);
        let keys = keys::sources(&self.dir, &self.config, &[Role::Timestamp], release)?;
        let signed_timestamp = sign(&rt, timestamp, &root, &keys)?;
        write_atomic(&metadata.join("timestamp.json"), signed_timestamp.buffer())?;
        self.timestamp = signed_timestamp.signed().clone();
        self.check_loads(&rt, now)
    }

    /// Load the repository back through tough's client, trusting its first root, as a new
    /// device would: every signature, version and hash chain is checked.
    pub(crate) fn check_loads(
        &self,
        rt: &tokio::runtime::Runtime,
        now: jiff::Timestamp,
    ) -> Result<()> {
        let _ = now;
        let root1 = std::fs::read(self.dir.join(METADATA).join("1.root.json"))?;
        let base = |sub: &str| -> Result<url::Url> {
            let p = std::fs::canonicalize(self.dir.join(sub))?;
            url::Url::from_directory_path(&p).map_err(|()| anyhow!("{} as a URL", p.display()))
        };
        let loaded = rt
            .block_on(
                tough::RepositoryLoader::new(&root1, base(METADATA)?, base(TARGETS)?)
                    .expiration_enforcement(tough::ExpirationEnforcement::Unsafe)
                    .load(),
            )
            .with_context(|| {
                format!(
                    "the repository {} does not load back through a TUF client",
                    self.dir.display()
                )
            })?;
        if loaded.targets().signed.version != self.targets.signed.version {
            bail!(
                "the client sees targets version {}, not the one just written",
                loaded.targets().signed.version
            );
        }
        Ok(())
    }

    /// Add the bundle at `bundle` as the release `meta` (its `published_at` is `now`).
    /// Publishing the same bytes under the same name again changes nothing; other bytes under
    /// a published name are refused.
    pub fn publish(
        &mut self,
        bundle: &Path,
        mut meta: ReleaseMeta,
        now: jiff::Timestamp,
        release: bool,
    ) -> Result<Published> {
        if !ReleaseMeta::valid_channel(&meta.channel) {
            bail!(
                "channel `{}`: use lower-case letters, digits, `-` and `_` (at most 64)",
                meta.channel
            );
        }
        let name = meta.target_name();
        let mut target = match self.new_target(
            bundle,
            &name,
            "a release's version names one \
             build; bump the version in the recipe and build again",
        )? {
            Ok(target) => target,
            Err(same) => return Ok(same),
        };
        meta.published_at = u64::try_from(now.as_second()).unwrap_or(0);
        target.custom.insert(CUSTOM_KEY.into(), meta.to_value());
        self.add_target(bundle, name, target, now, release)
    }

    /// Add the delta bundle at `bundle` as `meta`, beside the full target of its release,
    /// which must be published already (on the same channel). Same bytes under the same name
    /// again change nothing.
    pub fn publish_delta(
        &mut self,
        bundle: &Path,
        meta: DeltaMeta,
        now: jiff::Timestamp,
        release: bool,
    ) -> Result<Published> {
        let full = self.releases().into_iter().any(|(_, r)| {
            (&r.product, &r.board, &r.version, &r.channel)
                == (&meta.product, &meta.board, &meta.version, &meta.channel)
        });
        if !full {
            bail!(
                "{} {} is not published on channel {}: publish its full bundle first (a device \
                 that cannot use the delta falls back to it)",
                meta.product,
                meta.version,
                meta.channel
            );
        }
        let name = meta.target_name();
        let mut target = match self.new_target(bundle, &name, "a delta names one pair of builds")? {
            Ok(target) => target,
            Err(same) => return Ok(same),
        };
        target.custom.insert(DELTA_KEY.into(), meta.to_value());
        self.add_target(bundle, name, target, now, release)
    }

    /// The repository's configuration.
    pub fn config(&self) -> &RepoConfig {
        &self.config
    }

    /// The deltas published, by target name.
    pub fn deltas(&self) -> Vec<(String, DeltaMeta)> {
        let mut out: Vec<(String, DeltaMeta)> = self
            .targets
            .signed
            .targets
            .iter()
            .filter_map(|(name, t)| {
                let meta = DeltaMeta::from_custom(&t.custom)?.ok()?;
                Some((name.raw().to_string(), meta))
            })
            .collect();
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out
    }

    /// Where the stored copy of the target `name` is.
    pub fn stored_target(&self, name: &str) -> Option<PathBuf> {
        let (_, t) = self
            .targets
            .signed
            .targets
            .iter()
            .find(|(n, _)| n.raw() == name)?;
        Some(
            self.dir
                .join(TARGETS)
                .join(format!("{}.{name}", hex::encode(&t.hashes.sha256))),
        )
    }

    /// The target of the file `bundle` to publish as `name`; `Err(AlreadyThere)` when the
    /// same bytes are published under that name, an error (with `why`) when other bytes are.
    fn new_target(
        &self,
        bundle: &Path,
        name: &str,
        why: &str,
    ) -> Result<std::result::Result<Target, Published>> {
        let target = runtime()?
            .block_on(Target::from_path(bundle))
            .with_context(|| format!("hashing {}", bundle.display()))?;
        let existing = self
            .targets
            .signed
            .targets
            .iter()
            .find(|(n, _)| n.raw() == name)
            .map(|(_, t)| t);
        match existing {
            None => Ok(Ok(target)),
            Some(e) if e.hashes.sha256 == target.hashes.sha256 && e.length == target.length => {
                Ok(Err(Published::AlreadyThere { name: name.into() }))
            }
            Some(e) => bail!(
                "{name} is already published with other contents (sha256 {}): {why}",
                hex::encode(&e.hashes.sha256)
            ),
        }
    }

    fn add_target(
        &mut self,
        bundle: &Path,
        name: String,
        target: Target,
        now: jiff::Timestamp,
        release: bool,
    ) -> Result<Published> {
        let stored = self
            .dir
            .join(TARGETS)
            .join(format!("{}.{name}", hex::encode(&target.hashes.sha256)));
        copy_target(bundle, &stored, target.length)?;
        let mut targets = self.targets.signed.clone();
        targets.targets.insert(
            TargetName::new(name.clone()).context("target name")?,
            target,
        );
        self.resign_targets(targets, now, release)?;
        Ok(Published::Added {
            name,
            targets_version: self.targets.signed.version.get(),
        })
    }

    /// Halt (or resume) the rollout of `version` on `channel`: its targets are re-signed with
    /// the flag, so that no device that has not started installs it. Returns the targets
    /// changed (none if already in that state); an unknown release is an error.
    pub fn set_halted(
        &mut self,
        version: &semver::Version,
        channel: &str,
        halted: bool,
        now: jiff::Timestamp,
        release: bool,
    ) -> Result<Vec<String>> {
        let mut targets = self.targets.signed.clone();
        let mut found = false;
        let mut changed = Vec::new();
        for (name, t) in targets.targets.iter_mut() {
            let Some(Ok(mut meta)) = ReleaseMeta::from_custom(&t.custom) else {
                continue;
            };
            if &meta.version != version || meta.channel != channel {
                continue;
            }
            found = true;
            if meta.halted != halted {
                meta.halted = halted;
                t.custom.insert(CUSTOM_KEY.into(), meta.to_value());
                changed.push(name.raw().to_string());
            }
        }
        if !found {
            let listed: Vec<String> = self
                .releases()
                .iter()
                .map(|(_, m)| format!("{} on {}", m.version, m.channel))
                .collect();
            bail!(
                "no release {version} on channel {channel} in {} (it lists: {})",
                self.dir.display(),
                if listed.is_empty() {
                    "none".into()
                } else {
                    listed.join(", ")
                }
            );
        }
        if !changed.is_empty() {
            self.resign_targets(targets, now, release)?;
        }
        Ok(changed)
    }

    pub(crate) fn resign_targets(
        &mut self,
        mut targets: Targets,
        now: jiff::Timestamp,
        release: bool,
    ) -> Result<()> {
        targets.version = next(self.targets.signed.version);
        targets.expires = expiry(now, self.config.targets.expires_days)?;
        let sv = next(self.snapshot.signed.version);
        let tv = next(self.timestamp.signed.version);
        self.commit(Some(targets), sv, tv, now, release)
    }

    /// Re-sign every role with less than half its validity left (all of them with `force`),
    /// and those that name a re-signed one; what a cron job runs. Returns the roles re-signed.
    pub fn refresh(
        &mut self,
        now: jiff::Timestamp,
        force: bool,
        release: bool,
    ) -> Result<Vec<Role>> {
        let due = |expires: jiff::Timestamp, days: u32| -> bool {
            force || expires.as_second() - now.as_second() < i64::from(days) * 86_400 / 2
        };
        let mut done = Vec::new();
        if due(self.root.signed.expires, self.config.root.expires_days) {
            self.resign_root(now, release)?;
            done.push(Role::Root);
        }
        let targets_due = due(
            self.targets.signed.expires,
            self.config.targets.expires_days,
        );
        let snapshot_due = targets_due
            || due(
                self.snapshot.signed.expires,
                self.config.snapshot.expires_days,
            );
        let timestamp_due = snapshot_due
            || due(
                self.timestamp.signed.expires,
                self.config.timestamp.expires_days,
            );
        if targets_due {
            self.resign_targets(self.targets.signed.clone(), now, release)?;
            done.extend([Role::Targets, Role::Snapshot, Role::Timestamp]);
        } else if snapshot_due || timestamp_due {
            let sv = if snapshot_due {
                next(self.snapshot.signed.version)
            } else {
                self.snapshot.signed.version
            };
            let tv = next(self.timestamp.signed.version);
            if snapshot_due {
                done.push(Role::Snapshot);
            }
            done.push(Role::Timestamp);
            self.commit(None, sv, tv, now, release)?;
        }
        Ok(done)
    }

    /// A new root version with the same keys, a fresh expiry, signed by the root keys.
    fn resign_root(&mut self, now: jiff::Timestamp, release: bool) -> Result<()> {
        let rt = runtime()?;
        let mut root = self.root.signed.clone();
        root.version = next(root.version);
        root.expires = expiry(now, self.config.root.expires_days)?;
        let keys = keys::sources(&self.dir, &self.config, &[Role::Root], release)?;
        let signed = sign(&rt, root.clone(), &root, &keys)?;
        let metadata = self.dir.join(METADATA);
        write_atomic(
            &metadata.join(format!("{}.root.json", root.version)),
            signed.buffer(),
        )?;
        write_atomic(&metadata.join("root.json"), signed.buffer())?;
        self.root = signed.signed().clone();
        Ok(())
    }

    /// Each role's version and expiry, and every target.
    pub fn status(&self, now: jiff::Timestamp) -> Status {
        let role = |r: Role, version: NonZeroU64, expires: jiff::Timestamp| {
            let keys = self.root.signed.roles.get(&r.tuf());
            RoleStatus {
                role: r.name(),
                version: version.get(),
                expires: expires.to_string(),
                expires_in_secs: expires.as_second() - now.as_second(),
                threshold: keys.map(|k| k.threshold.get()).unwrap_or(0),
                keys: keys
                    .map(|k| k.keyids.iter().map(|id| hex::encode(id.as_ref())).collect())
                    .unwrap_or_default(),
            }
        };
        let roles = vec![
            role(
                Role::Root,
                self.root.signed.version,
                self.root.signed.expires,
            ),
            role(
                Role::Targets,
                self.targets.signed.version,
                self.targets.signed.expires,
            ),
            role(
                Role::Snapshot,
                self.snapshot.signed.version,
                self.snapshot.signed.expires,
            ),
            role(
                Role::Timestamp,
                self.timestamp.signed.version,
                self.timestamp.signed.expires,
            ),
        ];
        let mut roles = roles;
        if let (Some(r), Some(d)) = (&self.rollouts, &self.targets.signed.delegations) {
            let delegated = d
                .roles
                .iter()
                .find(|x| x.name == aperture_release::rollout::ROLE);
            roles.push(RoleStatus {
                role: aperture_release::rollout::ROLE,
                version: r.signed.version.get(),
                expires: r.signed.expires.to_string(),
                expires_in_secs: r.signed.expires.as_second() - now.as_second(),
                threshold: delegated.map(|x| x.threshold.get()).unwrap_or(0),
                keys: delegated
                    .map(|x| x.keyids.iter().map(|id| hex::encode(id.as_ref())).collect())
                    .unwrap_or_default(),
            });
        }
        let mut targets: Vec<TargetStatus> = self
            .targets
            .signed
            .targets
            .iter()
            .map(|(name, t)| TargetStatus {
                name: name.raw().to_string(),
                length: t.length,
                sha256: hex::encode(&t.hashes.sha256),
                release: ReleaseMeta::from_custom(&t.custom).and_then(Result::ok),
                delta: DeltaMeta::from_custom(&t.custom).and_then(Result::ok),
            })
            .collect();
        targets.sort_by(|a, b| a.name.cmp(&b.name));
        Status {
            repo: self.dir.clone(),
            development_keys: keys::any_development(&self.dir, &self.config),
            roles,
            targets,
        }
    }
}

pub(crate) fn sign<T: tough::schema::Role + Serialize>(
    rt: &tokio::runtime::Runtime,
    role: T,
    root: &Root,
    keys: &[Box<dyn KeySource>],
) -> Result<SignedRole<T>> {
    let name = T::TYPE.to_string();
    let rng = aws_lc_rs::rand::SystemRandom::new();
    rt.block_on(SignedRole::new(
        role,
        &KeyHolder::Root(root.clone()),
        keys,
        &rng,
    ))
    .with_context(|| format!("signing {name} metadata (are its keys the ones the root lists?)"))
}

fn metafile<T: tough::schema::Role>(signed: &SignedRole<T>) -> Metafile {
    Metafile {
        length: Some(*signed.length()),
        hashes: Some(Hashes {
            sha256: Decoded::<Hex>::from(signed.sha256().to_vec()),
            _extra: HashMap::new(),
        }),
        version: signed.signed().signed.version(),
        _extra: HashMap::new(),
    }
}

/// The snapshot's or timestamp's entry for the metadata file at `path`, of `version`: its
/// length and sha256 as stored.
fn file_metafile(path: &Path, version: NonZeroU64) -> Result<Metafile> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let sha256 = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, &bytes);
    Ok(Metafile {
        length: Some(bytes.len() as u64),
        hashes: Some(Hashes {
            sha256: Decoded::<Hex>::from(sha256.as_ref().to_vec()),
            _extra: HashMap::new(),
        }),
        version,
        _extra: HashMap::new(),
    })
}

/// Copy a target into the repository (through a temporary file), unless already there.
fn copy_target(from: &Path, to: &Path, length: u64) -> Result<()> {
    if std::fs::metadata(to)
        .map(|m| m.len() == length)
        .unwrap_or(false)
    {
        return Ok(());
    }
    let tmp = aperture_sys::fs::tmp_path(to);
    std::fs::copy(from, &tmp)
        .with_context(|| format!("copying {} to {}", from.display(), tmp.display()))?;
    aperture_sys::fs::sync_file(&tmp)?;
    Ok(aperture_sys::fs::rename_durable(&tmp, to)?)
}
