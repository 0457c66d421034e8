//! A release repository for the rollout tests, made through aperture-repo's public API as the
//! build host makes one: initialised (development keys), its rollouts role delegated, and
//! releases published from small fake bundles; and what a device sees of it, loaded through
//! tough's client from the first root.

use std::path::{Path, PathBuf};

use aperture_release::rollout::{RolloutMeta, ROLE};
use aperture_release::{ReleaseMeta, Waves};
use aperture_repo::Repo;
use tempfile::TempDir;

/// The channel and versions the fixture publishes.
pub const CHANNEL: &str = "stable";
pub const VERSION: &str = "1.1.0";
pub const OTHER_VERSION: &str = "1.2.0";

/// A repository in a temporary folder.
pub struct TestRepo {
    pub dir: PathBuf,
    _tmp: TempDir,
}

fn meta(version: &str, channel: &str) -> ReleaseMeta {
    ReleaseMeta {
        product: "aperture-edge".into(),
        board: "qemu-x86_64".into(),
        version: version.parse().unwrap(),
        security_version: 1,
        channel: channel.into(),
        published_at: 0,
        waves: "100%@0h".parse::<Waves>().unwrap(),
        halted: false,
        gate: Default::default(),
    }
}

impl TestRepo {
    /// A repository publishing [`VERSION`] and [`OTHER_VERSION`] on [`CHANNEL`], with its
    /// rollouts role delegated.
    pub fn new() -> Self {
        Self::publishing(&[VERSION, OTHER_VERSION])
    }

    /// A repository publishing `versions` on [`CHANNEL`], with its rollouts role delegated.
    pub fn publishing(versions: &[&str]) -> Self {
        let tmp = tempfile::tempdir().expect("a temporary folder");
        let dir = tmp.path().join("repo");
        let now = jiff::Timestamp::now();
        let mut repo = Repo::init(&dir, false, now).expect("repo init");
        repo.delegate_rollouts(now, false)
            .expect("delegating the rollouts role");
        for v in versions {
            let bundle = tmp.path().join(format!("{v}.bundle"));
            std::fs::write(&bundle, format!("bundle {v}")).unwrap();
            repo.publish(&bundle, meta(v, CHANNEL), now, false)
                .expect("publishing a release");
        }
        TestRepo { dir, _tmp: tmp }
    }

    /// The records the repository holds, as aperture-repo reads them from disk.
    pub fn records(&self) -> Vec<RolloutMeta> {
        Repo::open(&self.dir)
            .expect("opening the repository")
            .rollout_list()
    }

    /// The one record of `id`.
    pub fn record(&self, id: u64) -> Option<RolloutMeta> {
        self.records().into_iter().find(|m| m.id == id)
    }

    /// Run `f` holding the flock the servers take on the repository folder while they sign.
    pub fn locked<T>(&self, f: impl FnOnce() -> T) -> T {
        let lock = aperture_repo::RepoLock::take(&self.dir).expect("locking the repository");
        let out = f();
        drop(lock);
        out
    }

    /// The records a device sees: the repository loaded through tough's client, trusting its
    /// first root and enforcing expiry, with the rollouts role's signatures checked against
    /// the delegation.
    pub fn seen_by_a_device(&self) -> Vec<RolloutMeta> {
        seen(&self.dir)
    }
}

fn seen(dir: &Path) -> Vec<RolloutMeta> {
    let root1 = std::fs::read(dir.join("metadata/1.root.json")).unwrap();
    let url = |sub: &str| {
        url::Url::from_directory_path(std::fs::canonicalize(dir.join(sub)).unwrap()).unwrap()
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let repo = rt
        .block_on(tough::RepositoryLoader::new(&root1, url("metadata"), url("targets")).load())
        .expect("the repository loads through tough");
    let role = repo.delegated_role(ROLE).expect("the rollouts role");
    let signed = role.targets.as_ref().expect("its metadata loaded");
    signed
        .signed
        .targets
        .values()
        .filter_map(|t| RolloutMeta::from_custom(&t.custom)?.ok())
        .collect()
}
