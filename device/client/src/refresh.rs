//! One TUF refresh: tough's client workflow (spec 1.0.x, section 5) from the newest trusted
//! root, then the releases the verified targets role lists.
//!
//! tough orders the defences as the spec does: the root is updated first, version by version,
//! each new root signed by the old and the new thresholds (rotation), and at most
//! [`Limits::max_root_updates`] of them; then timestamp, snapshot and targets, each checked for
//! signatures and threshold, a version not below the one trusted before (rollback), the
//! version and hashes the parent role lists (mix-and-match), expiry against the newest time
//! seen (freeze), and each download bounded by the length the parent role signs or by our
//! limits (endless data). The metadata it accepts is kept in the datastore folder, which is
//! what the next refresh compares against.
//!
//! Two corrections to tough, made here so that the appliance and the conformance client
//! (`aperture-tuf-client`) share them:
//! * **A timestamp of the same version is not taken.** tough accepts a new timestamp whose
//!   version equals the trusted one (it refuses only a lower one) and follows whatever
//!   snapshot it names. Spec 5.4.3.1: "In case they are equal, discard the new timestamp
//!   metadata", which python-tuf and go-tuf do; so [`load`] serves tough the trusted copy when
//!   the new one verifies and has the same version. A repository that re-signs a timestamp
//!   without a new version can then no longer move the client to another snapshot.
//! * **Target URLs put the hash before the file name, not before its folders** (spec 5.7.3,
//!   `HASH.FILENAME.EXT`: `a/b/HASH.c.tgz`, as python-tuf and go-tuf fetch it; tough's
//!   `read_target` asks for `HASH.a/b/c.tgz`), see [`target_url`].

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use aperture_release::{Candidate, ReleaseMeta, Rollout, RolloutMeta};
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use tough::schema::{Root, Signed, Timestamp};
use tough::{
    ExpirationEnforcement, Limits, Repository, RepositoryLoader, TargetName, TransportError,
    TransportStream,
};
use url::Url;

use crate::transport::Transport;

/// Our limits: far above what a repository of releases needs, far below what would hurt an
/// appliance. A timestamp is about 500 bytes.
pub const LIMITS: Limits = Limits {
    max_root_size: 512 * 1024,
    max_targets_size: 8 << 20,
    max_timestamp_size: 16 * 1024,
    max_snapshot_size: 1 << 20,
    max_root_updates: 64,
};

/// Where a repository is and where this client keeps what it trusts.
#[derive(Debug, Clone)]
pub struct Source {
    /// Base URL of the metadata (`.../metadata/`).
    pub metadata: Url,
    /// Base URL of the targets (`.../targets/`).
    pub targets: Url,
    /// The trusted root shipped with the software (the image's, from the recipe).
    pub shipped_root: PathBuf,
    /// The datastore: the metadata last accepted, `root.json` the newest trusted root.
    pub datastore: PathBuf,
}

impl Source {
    /// A repository at `base` (`metadata/` and `targets/` below it, as `repo sync` writes).
    pub fn at(base: &Url, shipped_root: PathBuf, datastore: PathBuf) -> Result<Source, String> {
        let base = if base.path().ends_with('/') {
            base.clone()
        } else {
            let mut b = base.clone();
            b.set_path(&format!("{}/", base.path()));
            b
        };
        let join = |sub: &str| {
            base.join(sub)
                .map_err(|e| format!("repository URL {base}: {e}"))
        };
        Ok(Source {
            metadata: join("metadata/")?,
            targets: join("targets/")?,
            shipped_root,
            datastore,
        })
    }
}

/// A role as the refresh found it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoleState {
    /// `root`, `timestamp`, `snapshot`, `targets`.
    pub role: String,
    /// Its version.
    pub version: u64,
    /// When it expires (seconds since the Unix epoch).
    pub expires: i64,
}

/// A target the verified targets role lists, with what a download must match.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TargetFile {
    /// Its name.
    pub name: String,
    /// Its length in bytes.
    pub length: u64,
    /// Its sha256.
    pub sha256: [u8; 32],
    /// Where to fetch it (`targets/SHA256.NAME` with consistent snapshots).
    pub url: Url,
}

/// What a successful refresh found.
#[derive(Debug, Clone)]
pub struct Refreshed {
    /// The roles' versions and expiries.
    pub roles: Vec<RoleState>,
    /// The releases (targets with our custom metadata), for [`aperture_release::select`].
    /// Only the top-level targets role's: a delegated role never names a release.
    pub candidates: Vec<Candidate>,
    /// The fleet's rollouts: the targets of the delegated role
    /// [`aperture_release::rollout::ROLE`] under its path prefix (tough has checked its
    /// signatures and that each name is inside the delegation's paths).
    pub rollouts: Vec<Rollout>,
    /// Every target, by name.
    pub targets: Vec<TargetFile>,
    /// The delta bundles (targets with [`aperture_release::DELTA_KEY`] metadata), by target
    /// name; malformed ones are left out with a warning (the full bundle serves instead).
    pub deltas: Vec<(String, aperture_release::DeltaMeta)>,
}

impl Refreshed {
    /// The target named `name`.
    pub fn target(&self, name: &str) -> Option<&TargetFile> {
        self.targets.iter().find(|t| t.name == name)
    }
}

/// Why a refresh failed: the repository could not be reached, or what it served was refused.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", content = "message", rename_all = "snake_case")]
pub enum RefreshError {
    /// Network or server trouble: retried with backoff.
    Unreachable(String),
    /// The repository served metadata the client refuses (expired, rolled back, badly signed,
    /// too large, not matching its parent role): nothing is installed, and the reason is
    /// logged.
    Refused(String),
    /// This appliance's own files (trusted root, datastore) are unusable.
    Local(String),
}

impl std::fmt::Display for RefreshError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RefreshError::Unreachable(m) => write!(f, "repository unreachable: {m}"),
            RefreshError::Refused(m) => write!(f, "repository metadata refused: {m}"),
            RefreshError::Local(m) => write!(f, "{m}"),
        }
    }
}

/// The newest trusted root: the datastore's (written by tough once it verified it) when it
/// is at least as new as the shipped one, else the shipped one (a new image may ship a newer
/// root than a device has seen).
pub fn trusted_root(source: &Source) -> Result<Vec<u8>, RefreshError> {
    let shipped = std::fs::read(&source.shipped_root).map_err(|e| {
        RefreshError::Local(format!(
            "reading the trusted TUF root {}: {e}; the image must ship the repository's root \
             (recipe [update] root)",
            source.shipped_root.display()
        ))
    })?;
    let stored_path = source.datastore.join("root.json");
    let stored = match std::fs::read(&stored_path) {
        Ok(b) => b,
        Err(_) => return Ok(shipped),
    };
    match (root_version(&stored), root_version(&shipped)) {
        (Some(s), Some(o)) if s >= o => Ok(stored),
        (None, _) => {
            tracing::warn!(
                "{} is not a TUF root; starting again from the shipped root",
                stored_path.display()
            );
            Ok(shipped)
        }
        _ => Ok(shipped),
    }
}

fn root_version(bytes: &[u8]) -> Option<u64> {
    let v: serde_json::Value = serde_json::from_slice(bytes).ok()?;
    v.get("signed")?.get("version")?.as_u64()
}

/// The metadata files tough was served during one [`load`], by file name (the last segment of
/// the URL: `timestamp.json`, `3.snapshot.json`, `2.root.json`, `1.%3F.json`), as served: for a
/// client that keeps byte-identical copies of what it trusts.
pub type Served = BTreeMap<String, Vec<u8>>;

/// Load the repository from `source` through `transport` on `rt`: tough's client workflow
/// from the newest trusted root, with the corrections in the module documentation. Versioned
/// metadata fetched is kept in the transport's cache only when the load succeeds. Returns the
/// repository, or why it failed, and in both cases what tough was served (tough has kept in
/// the datastore every role it verified before a failure).
pub fn load(
    rt: &tokio::runtime::Runtime,
    source: &Source,
    transport: &Transport,
) -> (Result<Repository, RefreshError>, Served) {
    let guarded = Guarded {
        inner: transport.clone(),
        timestamp_url: source.metadata.join("timestamp.json").ok(),
        datastore: source.datastore.clone(),
        served: Arc::default(),
    };
    let result = load_with(rt, source, &guarded);
    match &result {
        Ok(_) => transport.commit(),
        Err(_) => transport.discard(),
    }
    let served = std::mem::take(&mut *guarded.served.lock().unwrap_or_else(|e| e.into_inner()));
    (result, served)
}

fn load_with(
    rt: &tokio::runtime::Runtime,
    source: &Source,
    transport: &Guarded,
) -> Result<Repository, RefreshError> {
    let root = trusted_root(source)?;
    std::fs::create_dir_all(&source.datastore).map_err(|e| {
        RefreshError::Local(format!(
            "creating the TUF datastore {}: {e}",
            source.datastore.display()
        ))
    })?;
    rt.block_on(
        RepositoryLoader::new(&root, source.metadata.clone(), source.targets.clone())
            .transport(transport.clone())
            .limits(LIMITS)
            .datastore(&source.datastore)
            .expiration_enforcement(ExpirationEnforcement::Safe)
            .load(),
    )
    .map_err(|e| classify(&e))
}

/// Refresh from `source` through `transport` on `rt`: [`load`], then the roles and targets.
pub fn refresh(
    rt: &tokio::runtime::Runtime,
    source: &Source,
    transport: &Transport,
) -> Result<Refreshed, RefreshError> {
    let repo = load(rt, source, transport).0?;
    let ts = |t: jiff::Timestamp| t.as_second();
    let mut roles = vec![
        RoleState {
            role: "root".into(),
            version: repo.root().signed.version.get(),
            expires: ts(repo.root().signed.expires),
        },
        RoleState {
            role: "timestamp".into(),
            version: repo.timestamp().signed.version.get(),
            expires: ts(repo.timestamp().signed.expires),
        },
        RoleState {
            role: "snapshot".into(),
            version: repo.snapshot().signed.version.get(),
            expires: ts(repo.snapshot().signed.expires),
        },
        RoleState {
            role: "targets".into(),
            version: repo.targets().signed.version.get(),
            expires: ts(repo.targets().signed.expires),
        },
    ];
    if let Some(signed) = repo
        .delegated_role(aperture_release::rollout::ROLE)
        .and_then(|role| role.targets.as_ref())
    {
        roles.push(RoleState {
            role: aperture_release::rollout::ROLE.into(),
            version: signed.signed.version.get(),
            expires: ts(signed.signed.expires),
        });
    }
    let consistent = repo.root().signed.consistent_snapshot;
    let mut candidates = Vec::new();
    let mut targets = Vec::new();
    let mut deltas = Vec::new();
    for (name, target) in &repo.targets().signed.targets {
        let file = match target_file(&source.targets, consistent, name, target) {
            Ok(f) => f,
            Err(e) => {
                tracing::warn!("{e}");
                continue;
            }
        };
        if let Some(meta) = ReleaseMeta::from_custom(&target.custom) {
            candidates.push(Candidate {
                name: file.name.clone(),
                meta,
            });
        }
        match aperture_release::DeltaMeta::from_custom(&target.custom) {
            Some(Ok(meta)) => deltas.push((file.name.clone(), meta)),
            Some(Err(e)) => {
                tracing::warn!("delta target {} is malformed ({e}); ignored", file.name)
            }
            None => {}
        }
        targets.push(file);
    }
    let rollouts = repo
        .delegated_role(aperture_release::rollout::ROLE)
        .and_then(|role| role.targets.as_ref())
        .map(|signed| {
            signed
                .signed
                .targets
                .iter()
                .filter(|(name, _)| {
                    name.raw()
                        .starts_with(aperture_release::rollout::PATH_PREFIX)
                })
                .filter_map(|(name, target)| {
                    RolloutMeta::from_custom(&target.custom).map(|meta| Rollout {
                        name: name.raw().to_string(),
                        meta,
                    })
                })
                .collect()
        })
        .unwrap_or_default();
    Ok(Refreshed {
        roles,
        candidates,
        targets,
        rollouts,
        deltas,
    })
}

/// The target `name` as a download must match it, fetched from below `base` (the targets
/// URL). An error names what is missing (a sha256; tough requires one, so this is a guard).
pub fn target_file(
    base: &Url,
    consistent: bool,
    name: &TargetName,
    target: &tough::schema::Target,
) -> Result<TargetFile, String> {
    let raw = name.raw();
    let sha: &[u8] = &target.hashes.sha256;
    let sha256 = <[u8; 32]>::try_from(sha)
        .map_err(|_| format!("target {raw}: its sha256 is not 32 bytes long"))?;
    let url = target_url(base, name, consistent.then_some(&sha256))?;
    Ok(TargetFile {
        name: raw.to_string(),
        length: target.length,
        sha256,
        url,
    })
}

/// Where target `name` is below `base`: `dir/HASH.basename` with consistent snapshots (spec
/// 5.7.3; `prefix` is then the hash), `dir/basename` without. Each path component is
/// percent-encoded as a URL path segment, so a `?`, `#` or `%` in a name stays in the path.
/// The resolved name is used (tough's [`TargetName`] has already removed `.` and `..`).
pub fn target_url(base: &Url, name: &TargetName, prefix: Option<&[u8; 32]>) -> Result<Url, String> {
    let mut parts: Vec<&str> = name
        .resolved()
        .split('/')
        .filter(|p| !p.is_empty())
        .collect();
    let basename = parts
        .pop()
        .ok_or_else(|| format!("target {}: the name has no file part", name.raw()))?;
    let file = match prefix {
        Some(hash) => format!("{}.{basename}", hex::encode(hash)),
        None => basename.to_string(),
    };
    let mut url = base.clone();
    url.path_segments_mut()
        .map_err(|()| {
            format!("targets URL {base} cannot hold a path; give an http(s) or file URL")
        })?
        .pop_if_empty()
        .extend(parts)
        .push(&file);
    Ok(url)
}

/// tough's transport for one load: [`Transport`] below, the trusted timestamp kept when the
/// new one has the same version (module documentation), and every file served recorded.
#[derive(Debug, Clone)]
struct Guarded {
    inner: Transport,
    timestamp_url: Option<Url>,
    datastore: PathBuf,
    served: Arc<Mutex<Served>>,
}

impl Guarded {
    /// The new timestamp, or the trusted one when both verify against the current root and
    /// have the same version. The new one is read whole first, bounded: one byte over the
    /// limit is passed on, for tough to refuse.
    async fn timestamp(&self, url: Url) -> Result<TransportStream, TransportError> {
        use futures::StreamExt;
        let mut stream = tough::Transport::fetch(&self.inner, url).await?;
        let mut fetched = Vec::new();
        while let Some(chunk) = stream.next().await {
            fetched.extend_from_slice(&chunk?);
            if fetched.len() as u64 > LIMITS.max_timestamp_size {
                break;
            }
        }
        let bytes = match self.trusted_timestamp_of_same_version(&fetched) {
            Some(trusted) => {
                tracing::info!(
                    "the repository's timestamp has the version of the trusted one but other \
                     content; keeping the trusted timestamp (TUF spec 5.4.3.1)"
                );
                trusted
            }
            None => fetched,
        };
        Ok(Box::pin(futures::stream::iter([Ok(Bytes::from(bytes))])))
    }

    fn trusted_timestamp_of_same_version(&self, fetched: &[u8]) -> Option<Vec<u8>> {
        // tough wrote the root it ended the root update with before it asked for the timestamp,
        // and removed the trusted timestamp if that root rotated the timestamp keys.
        let trusted_bytes = std::fs::read(self.datastore.join("timestamp.json")).ok()?;
        if trusted_bytes == fetched {
            return None;
        }
        let root: Signed<Root> =
            serde_json::from_slice(&std::fs::read(self.datastore.join("root.json")).ok()?).ok()?;
        let trusted: Signed<Timestamp> = serde_json::from_slice(&trusted_bytes).ok()?;
        let new: Signed<Timestamp> = serde_json::from_slice(fetched).ok()?;
        let same = new.signed.version == trusted.signed.version
            && root.signed.verify_role(&new).is_ok()
            && root.signed.verify_role(&trusted).is_ok();
        same.then_some(trusted_bytes)
    }
}

#[async_trait::async_trait]
impl tough::Transport for Guarded {
    async fn fetch(&self, url: Url) -> Result<TransportStream, TransportError> {
        use futures::StreamExt;
        let name = crate::transport::file_name(&url);
        let stream = if self.timestamp_url.as_ref() == Some(&url) {
            self.timestamp(url).await?
        } else {
            tough::Transport::fetch(&self.inner, url).await?
        };
        // tough fetches each file once per load; the copy grows as tough reads (and stops
        // where tough stops, at its size limits).
        let served = self.served.clone();
        served
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(name.clone(), Vec::new());
        Ok(Box::pin(stream.inspect(move |chunk| {
            if let Ok(bytes) = chunk {
                served
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .entry(name.clone())
                    .or_default()
                    .extend_from_slice(bytes);
            }
        })))
    }
}

/// Tell a repository that cannot be reached from one whose metadata is refused.
fn classify(e: &tough::error::Error) -> RefreshError {
    let text = chain(e);
    match e {
        tough::error::Error::Transport { source, .. }
            if source.kind() != tough::TransportErrorKind::FileNotFound
                && !served_too_much_or_wrong(source) =>
        {
            RefreshError::Unreachable(text)
        }
        tough::error::Error::ParseTrustedMetadata { .. }
        | tough::error::Error::VerifyTrustedMetadata { .. }
        | tough::error::Error::DatastoreInit { .. }
        | tough::error::Error::DatastoreCreate { .. }
        | tough::error::Error::DatastoreOpen { .. }
        | tough::error::Error::DatastoreRemove { .. }
        | tough::error::Error::DatastoreSerialize { .. } => RefreshError::Local(text),
        _ => RefreshError::Refused(text),
    }
}

/// Whether a transport error is tough's verdict on what was served (more bytes than allowed,
/// a hash that differs), which tough reports through the stream as a transport error.
fn served_too_much_or_wrong(e: &tough::TransportError) -> bool {
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        if let Some(t) = s.downcast_ref::<tough::error::Error>() {
            if matches!(
                t,
                tough::error::Error::MaxSizeExceeded { .. }
                    | tough::error::Error::HashMismatch { .. }
            ) {
                return true;
            }
        }
        source = s.source();
    }
    false
}

/// An error and its causes on one line.
pub(crate) fn chain(e: &dyn std::error::Error) -> String {
    aperture_updater::source::error_chain(e)
}

/// The datastore's file for `role`, for tests and the conformance client.
pub fn stored(datastore: &Path, role: &str) -> PathBuf {
    datastore.join(format!("{role}.json"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn url(base: &str, name: &str, hash: Option<&[u8; 32]>) -> String {
        let base = Url::parse(base).unwrap();
        target_url(&base, &TargetName::new(name).unwrap(), hash)
            .unwrap()
            .to_string()
    }

    #[test]
    fn a_target_in_a_folder_is_fetched_with_the_hash_before_its_file_name() {
        let hash = [0xab; 32];
        let hex = "ab".repeat(32);
        let base = "https://example.invalid/repo/targets/";
        assert_eq!(
            url(base, "path/to/a/target_file.txt", Some(&hash)),
            format!("{base}path/to/a/{hex}.target_file.txt")
        );
        assert_eq!(
            url(
                base,
                "aperture-edge-qemu-x86_64-1.2.0.stable.bundle",
                Some(&hash)
            ),
            format!("{base}{hex}.aperture-edge-qemu-x86_64-1.2.0.stable.bundle")
        );
        assert_eq!(url(base, "a/b.txt", None), format!("{base}a/b.txt"));
        // The base without its trailing slash, a file URL.
        assert_eq!(
            url("file:///srv/repo/targets", "a/b.txt", Some(&hash)),
            format!("file:///srv/repo/targets/a/{hex}.b.txt")
        );
    }

    #[test]
    fn target_names_stay_in_the_path_of_the_targets_url() {
        let base = "https://example.invalid/targets/";
        // `?`, `#` and `%` would otherwise start a query, a fragment or an escape.
        assert_eq!(
            url(base, "what?#100%.txt", None),
            format!("{base}what%3F%23100%25.txt")
        );
        // tough resolves `..` before we see the name: it never climbs out of the base.
        assert_eq!(url(base, "a/../../b.txt", None), format!("{base}b.txt"));
        assert_eq!(url(base, "/abs//c.txt", None), format!("{base}abs/c.txt"));
    }
}
