//! The server's side of the rollouts role: making the repository's signed records
//! (`rollouts/CHANNEL/VERSION.json`, what devices obey) follow the database (what the server
//! decided), with the online keys only (`aperture_repo::Repo::set_rollout`).
//!
//! **Reconcile, not sign-on-change.** A change commits in the database first; then
//! [`Signer::reconcile`] reads every rollout under a lock, opens the repository as it is on
//! disk, and re-signs each record that differs. The server calls it after each change it
//! commits, once at start, and every `--reconcile-every` (which also re-signs the role before
//! it expires). A crash, a failed signature or another server's change between commit and
//! signature therefore heals at the next reconcile, and a server without `--repo` may still
//! halt a rollout in the database: one with `--repo` signs it.
//!
//! **One signer at a time.** Each signature writes the next versions of `N.rollouts.json`,
//! `N.snapshot.json` and `timestamp.json`; two signers at once would write the same versions.
//! So a reconcile holds, in this order: the process's own mutex; the database's signing lock
//! (the `signing_lock` row, `SELECT ... FOR UPDATE`, on PostgreSQL: servers on other machines
//! sharing the repository folder); an exclusive `flock` on the repository folder itself
//! (servers on this machine, SQLite's included). It reads the database *after* taking them,
//! so the last signer always signs the newest state.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use aperture_release::rollout::{RolloutMeta, ROLE};
use aperture_repo::{keys, Repo, RepoConfig, Role};

use crate::db::{self, Db};

/// What can go wrong signing.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The database failed.
    #[error("reading the rollouts to sign")]
    Db(#[from] db::Error),
    /// The repository could not be opened, locked or signed.
    #[error("the repository {dir}")]
    Repo {
        /// The repository folder.
        dir: PathBuf,
        /// Why.
        #[source]
        err: Box<dyn std::error::Error + Send + Sync + 'static>,
    },
}

/// What a reconcile did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Reconciled {
    /// The rollouts whose records it signed.
    pub signed: Vec<u64>,
    /// The rollouts it could not sign, and why.
    pub failed: Vec<(u64, String)>,
    /// Whether it re-signed the role because it was half-way to expiring.
    pub refreshed: bool,
}

/// Signs rollouts into one repository; cheap to clone.
#[derive(Clone)]
pub struct Signer {
    inner: Arc<Inner>,
}

struct Inner {
    dir: PathBuf,
    release: bool,
    db: Db,
    local: tokio::sync::Mutex<()>,
}

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Signer")
            .field("dir", &self.inner.dir)
            .field("release", &self.inner.release)
            .finish()
    }
}

fn repo_error(dir: &Path, err: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> Error {
    Error::Repo {
        dir: dir.to_path_buf(),
        err: err.into(),
    }
}

/// Run `f` on a blocking thread: aperture-repo drives tough with a runtime of its own, which
/// may not start inside ours.
async fn blocking<T: Send + 'static>(
    dir: &Path,
    f: impl FnOnce() -> Result<T, Error> + Send + 'static,
) -> Result<T, Error> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| repo_error(dir, format!("the signing thread failed: {e}")))?
}

impl Signer {
    /// A signer of the repository in `dir`, which must open, have its rollouts role delegated
    /// and hold the rollouts, snapshot and timestamp keys its `repo.toml` names. With
    /// `release`, development keys are refused (as `aperture repo ... --release` refuses
    /// them).
    pub async fn open(dir: &Path, release: bool, db: Db) -> Result<Self, Error> {
        let d = dir.to_path_buf();
        blocking(dir, move || {
            let repo = Repo::open(&d).map_err(|e| repo_error(&d, e))?;
            if !repo.rollouts_delegated() {
                return Err(repo_error(
                    &d,
                    format!(
                        "it has no rollouts role: delegate it once with the targets key \
                         (`aperture repo delegate-rollouts --repo {}`), and keep the rollouts, \
                         snapshot and timestamp keys where its repo.toml says",
                        d.display()
                    ),
                ));
            }
            // The keys it signs with, now rather than at the first change: missing ones, or
            // development ones under `release`, stop the start with the repository's message.
            let config = RepoConfig::load(&d).map_err(|e| repo_error(&d, e))?;
            keys::sources_for(&d, ROLE, &config.rollouts_key_paths(&d), release)
                .and_then(|_| {
                    keys::sources(&d, &config, &[Role::Snapshot, Role::Timestamp], release)
                })
                .map_err(|e| repo_error(&d, e))?;
            Ok(())
        })
        .await?;
        Ok(Signer {
            inner: Arc::new(Inner {
                dir: dir.to_path_buf(),
                release,
                db,
                local: tokio::sync::Mutex::new(()),
            }),
        })
    }

    /// The repository folder.
    pub fn dir(&self) -> &Path {
        &self.inner.dir
    }

    /// Make the repository's records follow the database (see the module); with `refresh`,
    /// also re-sign the role when half its validity is gone.
    pub async fn reconcile(&self, refresh: bool) -> Result<Reconciled, Error> {
        let _local = self.inner.local.lock().await;
        let mut lock = self.inner.db.signing_lock().await?;
        let dir = self.inner.dir.clone();
        let folder = blocking(&dir, {
            let dir = dir.clone();
            move || aperture_repo::RepoLock::take(&dir).map_err(|e| repo_error(&dir, e))
        })
        .await?;
        let desired = lock.desired().await?;
        let release = self.inner.release;
        let done = blocking(&dir, {
            let dir = dir.clone();
            move || sign(&dir, desired, release, refresh)
        })
        .await;
        drop(folder);
        lock.release(&format!("pid {}", std::process::id()), db::now())
            .await?;
        let done = done?;
        for (id, why) in &done.failed {
            tracing::error!("signing rollout {id} into {}: {why}", dir.display());
        }
        if !done.signed.is_empty() {
            tracing::info!("signed rollouts {:?} into {}", done.signed, dir.display());
        }
        Ok(done)
    }

    /// Reconcile, logging what failed (after a change, and periodically).
    pub async fn reconcile_logged(&self, refresh: bool) -> Reconciled {
        match self.reconcile(refresh).await {
            Ok(done) => done,
            Err(e) => {
                tracing::error!("reconciling rollouts: {:#}", anyhow::Error::new(e));
                Reconciled::default()
            }
        }
    }

    /// Reconcile every `every`, for ever.
    pub async fn run_every(self, every: Duration) {
        loop {
            tokio::time::sleep(every).await;
            self.reconcile_logged(true).await;
        }
    }

    /// The records the repository holds now, by target name.
    pub async fn signed(&self) -> Result<HashMap<String, RolloutMeta>, Error> {
        let dir = self.inner.dir.clone();
        blocking(&self.inner.dir, move || {
            let repo = Repo::open(&dir).map_err(|e| repo_error(&dir, e))?;
            Ok(repo
                .rollout_list()
                .into_iter()
                .map(|m| (m.target_name(), m))
                .collect())
        })
        .await
    }

    /// The releases the repository publishes, as (channel, version).
    pub async fn published(&self) -> Result<Vec<(String, semver::Version)>, Error> {
        let dir = self.inner.dir.clone();
        blocking(&self.inner.dir, move || {
            let repo = Repo::open(&dir).map_err(|e| repo_error(&dir, e))?;
            Ok(repo
                .releases()
                .into_iter()
                .map(|(_, m)| (m.channel, m.version))
                .collect())
        })
        .await
    }
}

/// Re-sign every record of `desired` the repository in `dir` does not hold as it is.
fn sign(
    dir: &Path,
    desired: Vec<RolloutMeta>,
    release: bool,
    refresh: bool,
) -> Result<Reconciled, Error> {
    let now = jiff::Timestamp::now();
    let mut repo = Repo::open(dir).map_err(|e| repo_error(dir, e))?;
    let held: HashMap<String, RolloutMeta> = repo
        .rollout_list()
        .into_iter()
        .map(|m| (m.target_name(), m))
        .collect();
    let mut done = Reconciled::default();
    for meta in desired {
        if held.get(&meta.target_name()) == Some(&meta) {
            continue;
        }
        match repo.set_rollout(&meta, now, release) {
            Ok(_) => done.signed.push(meta.id),
            Err(e) => {
                done.failed.push((meta.id, format!("{e:#}")));
                // What was half written stays on disk; start again from it.
                repo = Repo::open(dir).map_err(|e| repo_error(dir, e))?;
            }
        }
    }
    if refresh {
        done.refreshed = repo
            .refresh_rollouts(now, false, release)
            .map_err(|e| repo_error(dir, e))?;
    }
    Ok(done)
}
