//! Fixtures of the fleet server's tests: a database of either kind (a SQLite file, or a
//! PostgreSQL server of the test's own in a temporary folder), the real server on 127.0.0.1
//! with real TLS, and enrolled devices.
//!
//! PostgreSQL is [`aperture_fleet_sim::postgres::Postgres`] (shared with the fleet benchmark):
//! without Debian's package a test says why it skipped, and fails under
//! `APERTURE_REQUIRE_TOOLS=1` (`cargo xtask test` installs it first).

#![allow(dead_code, missing_docs)]

pub mod repo;

use std::net::SocketAddr;
use std::time::Duration;

use aperture_fleet::api::{EnrollRequest, HealthResult, Report, SlotState, UpdateResult};
use aperture_fleet::client::{Client, DeviceIdentity};
use aperture_fleet::db::{self, Actor, Db};
use aperture_fleet::pki::{FleetCa, Identity};
use aperture_fleet::server::{self, RepoSettings, Server};
use aperture_fleet::token::Role;
use tempfile::TempDir;

/// Reports per device per minute on the test servers.
pub const REPORTS_PER_MINUTE: i64 = 5;

/// Which database.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Sqlite,
    Postgres,
}

pub use aperture_fleet_sim::postgres::Postgres;

/// A database for one test: its URL, and what keeps it alive.
pub struct DbFixture {
    pub kind: Kind,
    pub url: String,
    _dir: TempDir,
    _pg: Option<Postgres>,
}

impl DbFixture {
    /// A fresh database, or `None` when the test skips.
    pub fn new(kind: Kind, test: &str) -> Option<Self> {
        let dir = tempfile::tempdir().expect("a temporary folder");
        Some(match kind {
            Kind::Sqlite => DbFixture {
                kind,
                url: format!("sqlite://{}", dir.path().join("fleet.db").display()),
                _dir: dir,
                _pg: None,
            },
            Kind::Postgres => {
                let pg = Postgres::start(test)?;
                DbFixture {
                    kind,
                    url: pg.url.clone(),
                    _dir: dir,
                    _pg: Some(pg),
                }
            }
        })
    }
}

/// A multi-threaded runtime for a test.
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a tokio runtime")
}

/// A real server on 127.0.0.1 (a port of its own), with its own runtime and pool; stops when
/// dropped.
pub struct TestServer {
    pub addr: SocketAddr,
    pub url: String,
    pub db: Db,
    rt: tokio::runtime::Runtime,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

impl TestServer {
    pub fn start(db_url: &str, identity: &Identity) -> Self {
        Self::start_with(db_url, identity, None)
    }

    /// A server that signs rollouts into a repository.
    pub fn start_with(db_url: &str, identity: &Identity, repo: Option<RepoSettings>) -> Self {
        let rt = runtime();
        let db = rt
            .block_on(Db::connect(db_url))
            .expect("connecting to the database");
        let config = server::Config {
            listen: "127.0.0.1:0".parse().unwrap(),
            identity: identity.clone(),
            reports_per_minute: REPORTS_PER_MINUTE,
            repo,
        };
        let server = rt
            .block_on(Server::bind(config, db.clone()))
            .expect("starting the server");
        let addr = server.local_addr();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        rt.spawn(server.run(async {
            let _ = stopped.await;
        }));
        TestServer {
            addr,
            url: format!("https://{addr}"),
            db,
            rt,
            stop: Some(stop),
        }
    }

    /// Run a future on the server's runtime (direct database calls).
    pub fn block_on<F: std::future::Future>(&self, f: F) -> F::Output {
        self.rt.block_on(f)
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        self.rt.block_on(self.db.close());
    }
}

/// A device the fleet enrolled: its id, identity and a client that reports with it.
pub struct Device {
    pub id: String,
    pub identity: DeviceIdentity,
    pub client: Client,
}

/// A whole fleet for one test: a database, an identity folder, a server, the first admin token,
/// and with [`Fleet::start_with_repo`] the repository the server signs rollouts into.
pub struct Fleet {
    pub db: DbFixture,
    pub dir: TempDir,
    pub identity: Identity,
    pub server: TestServer,
    pub admin_token: String,
    pub repo: Option<repo::TestRepo>,
}

/// How often the tests' servers reconcile on their own (never, within a test, unless a test
/// asks for a server of its own).
pub const NO_PERIODIC_RECONCILE: Duration = Duration::from_secs(3600);

impl Fleet {
    pub fn start(kind: Kind, test: &str) -> Option<Self> {
        Self::start_inner(kind, test, None)
    }

    /// A fleet whose server signs rollouts into a repository of its own
    /// ([`repo::TestRepo::new`]).
    pub fn start_with_repo(kind: Kind, test: &str) -> Option<Self> {
        Self::start_inner(kind, test, Some(repo::TestRepo::new()))
    }

    /// The repository settings of a server signing into this fleet's repository.
    pub fn repo_settings(&self, reconcile_every: Duration) -> Option<RepoSettings> {
        self.repo.as_ref().map(|r| RepoSettings {
            dir: r.dir.clone(),
            release: false,
            reconcile_every,
        })
    }

    /// The fleet's repository.
    pub fn repo(&self) -> &repo::TestRepo {
        self.repo
            .as_ref()
            .expect("a fleet started with a repository")
    }

    /// A fleet whose server signs rollouts into a repository publishing only [`repo::VERSION`]
    /// (devices running 1.0.0 are offered that release alone).
    pub fn start_with_one_release(kind: Kind, test: &str) -> Option<Self> {
        Self::start_inner(
            kind,
            test,
            Some(repo::TestRepo::publishing(&[repo::VERSION])),
        )
    }

    fn start_inner(kind: Kind, test: &str, repo: Option<repo::TestRepo>) -> Option<Self> {
        let db = DbFixture::new(kind, test)?;
        let dir = tempfile::tempdir().expect("a temporary folder");
        let (identity, _) = Identity::init(dir.path(), &["127.0.0.1".to_string()])
            .expect("making the fleet identity");
        let settings = repo.as_ref().map(|r| RepoSettings {
            dir: r.dir.clone(),
            release: false,
            reconcile_every: NO_PERIODIC_RECONCILE,
        });
        let server = TestServer::start_with(&db.url, &identity, settings);
        let admin_token = server
            .block_on(server.db.bootstrap_admin(db::now()))
            .expect("the first admin token")
            .expect("a new database has no admin token")
            .token;
        Some(Fleet {
            db,
            dir,
            identity,
            server,
            admin_token,
            repo,
        })
    }

    /// Another server on the same database (another port, pool and runtime), signing into
    /// the same repository if the fleet has one.
    pub fn second_server(&self) -> TestServer {
        self.second_server_reconciling(NO_PERIODIC_RECONCILE)
    }

    /// Another server that also reconciles every `every`.
    pub fn second_server_reconciling(&self, every: Duration) -> TestServer {
        TestServer::start_with(&self.db.url, &self.identity, self.repo_settings(every))
    }

    /// A client of `server` with `token`.
    pub fn client_of(&self, server: &TestServer, token: Option<&str>) -> Client {
        Client::new(
            &server.url,
            &self.identity.ca_pem,
            token.map(str::to_string),
            None,
        )
        .expect("a client")
    }

    /// The first admin's client.
    pub fn admin(&self) -> Client {
        self.client_of(&self.server, Some(&self.admin_token))
    }

    /// A client without credentials.
    pub fn anonymous(&self) -> Client {
        self.client_of(&self.server, None)
    }

    /// A client with a new token of `role`.
    pub fn with_role(&self, role: Role) -> Client {
        let made = self
            .admin()
            .create_token(&format!("test-{role}"), role)
            .expect("making a token");
        self.client_of(&self.server, Some(&made.token))
    }

    /// `count` enrollment tokens valid for `ttl` seconds, made in the database directly.
    pub fn enrollment_tokens(&self, count: u32, ttl: u64) -> Vec<String> {
        self.server
            .block_on(self.server.db.create_enrollment_tokens(
                &Actor("test".into()),
                count,
                ttl,
                db::now(),
            ))
            .expect("making enrollment tokens")
            .tokens
    }

    /// Enroll through `server` with `token`: the device's key, CSR and the answer.
    pub fn try_enroll(
        &self,
        server: &TestServer,
        token: &str,
        serial: &str,
    ) -> Result<Device, aperture_fleet::client::Error> {
        let key = rcgen::KeyPair::generate().expect("a device key");
        self.try_enroll_with_key(server, token, serial, &key)
    }

    /// [`Fleet::try_enroll`] with the device key `key` (an appliance that asks again after a
    /// power cut uses the key it kept).
    pub fn try_enroll_with_key(
        &self,
        server: &TestServer,
        token: &str,
        serial: &str,
        key: &rcgen::KeyPair,
    ) -> Result<Device, aperture_fleet::client::Error> {
        let csr = rcgen::CertificateParams::new(vec![])
            .expect("CSR parameters")
            .serialize_request(key)
            .expect("a CSR")
            .pem()
            .expect("PEM");
        let answer = self.client_of(server, None).enroll(&EnrollRequest {
            token: token.to_string(),
            serial: serial.to_string(),
            csr,
        })?;
        assert_eq!(answer.ca, self.identity.ca_pem);
        let identity = DeviceIdentity {
            cert_pem: answer.certificate,
            key_pem: key.serialize_pem(),
        };
        let client =
            Client::new(&server.url, &answer.ca, None, Some(&identity)).expect("a device client");
        Ok(Device {
            id: answer.device_id,
            identity,
            client,
        })
    }

    /// A newly enrolled device (through the first server).
    pub fn enroll(&self, serial: &str) -> Device {
        let token = self.enrollment_tokens(1, 3600).remove(0);
        self.try_enroll(&self.server, &token, serial)
            .expect("enrolling")
    }

    /// A client with a certificate of another CA (same shape as a device's).
    pub fn stranger(&self) -> Client {
        let other = FleetCa::generate().expect("another CA");
        let key = rcgen::KeyPair::generate().expect("a key");
        let csr = rcgen::CertificateParams::new(vec![])
            .unwrap()
            .serialize_request(&key)
            .unwrap()
            .pem()
            .unwrap();
        let (cert_pem, _) = other.sign_device(&csr, "dev-stranger").expect("signing");
        let identity = DeviceIdentity {
            cert_pem,
            key_pem: key.serialize_pem(),
        };
        Client::new(
            &self.server.url,
            &self.identity.ca_pem,
            None,
            Some(&identity),
        )
        .expect("a client")
    }
}

/// A report of a device still on `runs` whose install of `tried` failed.
pub fn failed_install(runs: &str, tried: &str) -> Report {
    let mut r = report(runs);
    r.last_update = Some(UpdateResult {
        result: "failed".into(),
        version: Some(tried.into()),
        journal: format!("installing {tried}: the bundle's signature does not verify"),
    });
    r
}

/// A report of a device running `version` whose health gate failed.
pub fn failed_health(version: &str) -> Report {
    let mut r = report(version);
    r.last_update = Some(UpdateResult {
        result: "installed".into(),
        version: Some(version.into()),
        journal: format!("installed {version} into b, on trial"),
    });
    r.health = Some(HealthResult {
        passed: false,
        detail: "aperture-runtime.service failed".into(),
    });
    r
}

/// A plausible runtime summary: two cameras, `yard` stalled.
pub fn runtime_summary() -> aperture_fleet::api::RuntimeSummary {
    aperture_fleet::api::RuntimeSummary {
        metrics: aperture_fleet::api::MetricsState::Fresh,
        problem: None,
        age_s: Some(1),
        model: Some(aperture_fleet::api::RuntimeModel {
            name: "nanodet-m".into(),
            sha256: "0f".repeat(32),
            execution_provider: "cpu".into(),
            fallback: false,
        }),
        frames_inferred: 1800,
        frames_dropped: 12,
        latency_p50_ms: Some(41.5),
        latency_p95_ms: Some(70.25),
        cameras: 2,
        streaming: 1,
        stalled: 1,
        stalled_names: vec!["yard".into()],
    }
}

/// A plausible report.
pub fn report(version: &str) -> Report {
    Report {
        version: version.into(),
        slot: "b".into(),
        slots: vec![
            SlotState {
                slot: "a".into(),
                state: "good".into(),
                version: Some("1.0.0".into()),
            },
            SlotState {
                slot: "b".into(),
                state: "good".into(),
                version: Some(version.into()),
            },
        ],
        floor: 2,
        last_update: Some(UpdateResult {
            result: "committed".into(),
            version: Some(version.into()),
            journal: format!("installed {version} into b, health gate passed, committed"),
        }),
        health: Some(HealthResult {
            passed: true,
            detail: String::new(),
        }),
        runtime_alive: true,
        runtime: None,
    }
}

/// The same test on SQLite and on PostgreSQL: `both!(name, ...)` makes `sqlite::name` and
/// `postgres::name`, each calling `name(fleet)` with a fresh [`Fleet`] (or skipping).
/// `both!(with start_with_repo; name, ...)` starts each fleet with that constructor instead.
#[macro_export]
macro_rules! both {
    (with $start:ident; $($name:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[test]
                fn $name() {
                    if let Some(f) = $crate::common::Fleet::$start(
                        $crate::common::Kind::Sqlite,
                        concat!("sqlite::", stringify!($name)),
                    ) {
                        super::$name(f);
                    }
                }
            )*
        }
        mod postgres {
            $(
                #[test]
                fn $name() {
                    if let Some(f) = $crate::common::Fleet::$start(
                        $crate::common::Kind::Postgres,
                        concat!("postgres::", stringify!($name)),
                    ) {
                        super::$name(f);
                    }
                }
            )*
        }
    };
    ($($name:ident),* $(,)?) => {
        $crate::both!(with start; $($name),*);
    };
}
