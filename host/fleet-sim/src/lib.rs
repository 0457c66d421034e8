//! A simulated fleet: N appliances in one process, each a real device identity speaking mutual
//! TLS 1.3 to a real `aperture-fleet` server on 127.0.0.1, for the fleet server's scale test
//! (host/fleet/tests/fleet_scale.rs) and `cargo xtask bench fleet`.
//!
//! Each device goes through the appliance's own code (aperture-client), not a copy of it:
//! * **enrollment**: a provisioning archive written as `aperture-fleet provision` writes one
//!   ([`aperture_fleet_api::provision::Archive`]), then [`aperture_client::enroll::enroll`]
//!   (its P-256 key and CSR, the one-time token, the identity kept in its state folder);
//! * **reports**: [`aperture_client::report::Reporter`] over mutual TLS with its certificate;
//! * **the rollout's state**: [`aperture_client::refresh::refresh`] loads the TUF repository
//!   the server signs into (the rollouts role, checked by tough) and
//!   [`aperture_release::select`] decides whether the device may install, as the update loop
//!   does: a device that sees the rollout halted or paused does not start.
//!
//! What is simulated is the appliance's body: the download, install, reboot and health gate
//! are a short sleep and a verdict chosen by the caller ([`RolloutPlan::fails_health`]).
//! Concurrency is a fixed number of worker threads (the client is blocking, as on the
//! appliance), so at most that many devices are between "started" and their verdict at once.
//! Device state folders belong in a tmpfs ([`work_dir`]): the appliance's code fsyncs what it
//! keeps, which on a disk would measure the disk.

pub mod postgres;

use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{anyhow, Context, Result};
use aperture_client::devkey::PlainKeyFile;
use aperture_client::enroll::{self, FleetIdentity};
use aperture_client::refresh::{self, Source};
use aperture_client::report::Reporter;
use aperture_client::transport::Transport;
use aperture_client::StateDir;
use aperture_fleet_api::provision::{check_url, Archive, Token};
use aperture_fleet_api::{
    HealthResult, Report, SlotState, UpdateResult, RESULT_COMMITTED, RESULT_ROLLED_BACK,
};
use aperture_release::Device;

/// A folder for the devices' state: in /dev/shm when it exists (see the module
/// documentation), else the system's temporary folder.
pub fn work_dir() -> Result<tempfile::TempDir> {
    let shm = Path::new("/dev/shm");
    let builder = {
        let mut b = tempfile::Builder::new();
        b.prefix("aperture-fleet-sim");
        b
    };
    if shm.is_dir() {
        if let Ok(d) = builder.tempdir_in(shm) {
            return Ok(d);
        }
    }
    builder.tempdir().context("making a temporary folder")
}

/// Run `f(i)` for every `i` in `0..n` on `concurrency` threads; results in order.
pub fn pool<T: Send>(n: usize, concurrency: usize, f: impl Fn(usize) -> T + Sync) -> Vec<T> {
    let next = AtomicUsize::new(0);
    let out: Mutex<Vec<Option<T>>> = Mutex::new((0..n).map(|_| None).collect());
    std::thread::scope(|s| {
        for _ in 0..concurrency.clamp(1, n.max(1)) {
            s.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= n {
                    break;
                }
                let r = f(i);
                out.lock().unwrap_or_else(|e| e.into_inner())[i] = Some(r);
            });
        }
    });
    out.into_inner()
        .unwrap_or_else(|e| e.into_inner())
        .into_iter()
        .map(|r| r.expect("every index ran"))
        .collect()
}

/// An enrolled simulated device.
pub struct SimDevice {
    /// Its place in the fleet (0-based).
    pub index: usize,
    /// Its fleet id (its certificate's CN).
    pub id: String,
    /// Its identity, as the appliance loads it from its state folder.
    pub identity: FleetIdentity,
    /// Its state folder (the identity, the TUF datastore).
    pub state: StateDir,
}

/// How many times a simulated device asks again when the server says it is busy.
const ENROLL_TRIES: u32 = 10;

/// Enroll one device per token with the server at `url` whose CA is `ca_pem`, each through a
/// provisioning archive and the appliance's enrollment, `concurrency` at a time, their state
/// below `work`.
pub fn enroll_all(
    url: &str,
    ca_pem: &str,
    tokens: &[String],
    work: &Path,
    concurrency: usize,
) -> Result<Vec<SimDevice>> {
    let url = check_url(url).map_err(|why| anyhow!("the fleet URL {url} {why}"))?;
    pool(tokens.len(), concurrency, |i| -> Result<SimDevice> {
        let dir = work.join(format!("dev-{i:05}"));
        let archive_dir = dir.join("provision");
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        Archive {
            url: url.clone(),
            ca_pem: ca_pem.to_string(),
            token: Token::parse(&tokens[i]).map_err(|why| anyhow!("token {i}: {why}"))?,
            network: None,
        }
        .write(&archive_dir)
        .with_context(|| format!("writing device {i}'s provisioning archive"))?;
        let state = StateDir(dir.join("state"));
        // A simulated device keeps its key as a plain file beside its state (no TPM here).
        let keys = PlainKeyFile::at(state.fleet());
        // As the appliance's first boot does: a busy server (503, 429) is tried again.
        let mut tries = 0;
        let done = loop {
            match enroll::enroll(&archive_dir, &state, &serial(i), &keys) {
                Err(enroll::EnrollError::Refused { status, .. })
                    if (status == 503 || status == 429) && tries < ENROLL_TRIES =>
                {
                    tries += 1;
                    std::thread::sleep(std::time::Duration::from_secs(1));
                }
                other => break other.with_context(|| format!("enrolling device {i}"))?,
            }
        };
        let identity = FleetIdentity::load(&state.fleet(), &keys)
            .map_err(|e| anyhow!("device {i}'s identity: {e}"))?
            .ok_or_else(|| anyhow!("device {i} enrolled but keeps no identity"))?;
        Ok(SimDevice {
            index: i,
            id: done.device_id,
            identity,
            state,
        })
    })
    .into_iter()
    .collect()
}

/// Device `i`'s serial number.
pub fn serial(i: usize) -> String {
    format!("SIM-{i:05}")
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// What the simulated appliances run and are offered.
#[derive(Debug, Clone)]
pub struct Image {
    /// The product, as the release's metadata names it.
    pub product: String,
    /// The board.
    pub board: String,
    /// The channel the devices follow.
    pub channel: String,
    /// The version they run.
    pub from: semver::Version,
    /// Their anti-rollback floor.
    pub floor: u64,
}

fn slots(running: &str, other: &str) -> Vec<SlotState> {
    vec![
        SlotState {
            slot: "a".into(),
            state: "good".into(),
            version: Some(running.into()),
        },
        SlotState {
            slot: "b".into(),
            state: "good".into(),
            version: Some(other.into()),
        },
    ]
}

/// The reports of one install of `to` over `from`, in the words the appliance's agent uses
/// (device/agent/src/fleet.rs `build_report`).
pub mod reports {
    use super::*;

    /// A device on `from` that found `to` and is installing it (no result yet).
    pub fn started(from: &str, to: &str) -> Report {
        Report {
            version: from.into(),
            slot: "a".into(),
            slots: slots(from, from),
            floor: 1,
            last_update: Some(UpdateResult {
                result: "installing".into(),
                version: Some(to.into()),
                journal: format!("installing {to} over {from}"),
            }),
            health: None,
            runtime_alive: true,
            runtime: None,
        }
    }

    /// `to` installed into the other slot and booted, on trial.
    pub fn installed(from: &str, to: &str) -> Report {
        Report {
            version: to.into(),
            slot: "b".into(),
            slots: slots(from, to),
            floor: 1,
            last_update: Some(UpdateResult {
                result: "installed".into(),
                version: Some(to.into()),
                journal: format!("installed {to} into b, on trial"),
            }),
            health: None,
            runtime_alive: true,
            runtime: None,
        }
    }

    /// `to` passed its health gate and was committed.
    pub fn committed(from: &str, to: &str) -> Report {
        Report {
            version: to.into(),
            slot: "b".into(),
            slots: slots(from, to),
            floor: 1,
            last_update: Some(UpdateResult {
                result: RESULT_COMMITTED.into(),
                version: Some(to.into()),
                journal: format!("{to} runs in slot b and passed its health gate"),
            }),
            health: Some(HealthResult {
                passed: true,
                detail: "slot b committed".into(),
            }),
            runtime_alive: true,
            runtime: None,
        }
    }

    /// `to` failed its health gate; `from` runs again.
    pub fn failed_health(from: &str, to: &str) -> Report {
        let why = format!("{to} failed its health gate (aperture-runtime.service failed)");
        Report {
            version: from.into(),
            slot: "a".into(),
            slots: slots(from, to),
            floor: 1,
            last_update: Some(UpdateResult {
                result: RESULT_ROLLED_BACK.into(),
                version: Some(to.into()),
                journal: why.clone(),
            }),
            health: Some(HealthResult {
                passed: false,
                detail: why,
            }),
            runtime_alive: true,
            runtime: None,
        }
    }
}

/// A rollout to play through the simulated fleet.
pub struct RolloutPlan<'a> {
    /// The repository folder the server signs rollouts into (`metadata/` and `targets/`).
    pub repo: &'a Path,
    /// What the devices run.
    pub image: Image,
    /// Which devices' health gates fail on the new release (by index).
    pub fails_health: &'a (dyn Fn(usize) -> bool + Sync),
    /// Devices between "started" and their verdict at once, at most.
    pub concurrency: usize,
    /// The simulated download and install, and again the reboot and health gate.
    pub step: Duration,
    /// Devices not done by then give up ([`Trace::error`]).
    pub deadline: Duration,
}

/// What one device did in a [`RolloutPlan`].
#[derive(Debug, Clone, Default)]
pub struct Trace {
    /// The device's index.
    pub index: usize,
    /// When its read of the repository began.
    pub read_began: Option<Instant>,
    /// What the update loop decided (its journal line).
    pub decision: String,
    /// Whether it started the release.
    pub started: bool,
    /// When its "started" report was sent.
    pub started_sent: Option<Instant>,
    /// When its last report (committed or failed-health) was sent and acknowledged.
    pub finished: Option<(Instant, Instant)>,
    /// Whether its health gate failed.
    pub failed: bool,
    /// What went wrong, if anything did.
    pub error: Option<String>,
}

/// Play `plan` through `devices` once each: poll the repository, start if the update loop
/// says so, report started, installed, then committed or failed-health.
pub fn run_rollout(devices: &[SimDevice], plan: &RolloutPlan<'_>) -> Vec<Trace> {
    let began = Instant::now();
    let base = url::Url::from_directory_path(plan.repo).ok();
    pool(devices.len(), plan.concurrency, |i| {
        let d = &devices[i];
        let mut t = Trace {
            index: d.index,
            ..Trace::default()
        };
        if began.elapsed() > plan.deadline {
            t.error = Some(format!("not polled within {:?}", plan.deadline));
            return t;
        }
        if let Err(e) = play(d, plan, base.as_ref(), &mut t) {
            t.error = Some(format!("{e:#}"));
        }
        t
    })
}

fn play(
    d: &SimDevice,
    plan: &RolloutPlan<'_>,
    base: Option<&url::Url>,
    t: &mut Trace,
) -> Result<()> {
    let base = base.ok_or_else(|| anyhow!("{} is not an absolute path", plan.repo.display()))?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("a runtime for the TUF client")?;
    let source = Source::at(
        base,
        plan.repo.join("metadata/1.root.json"),
        d.state.datastore(),
    )
    .map_err(|e| anyhow!(e))?;
    let image = &plan.image;
    let device = Device {
        product: image.product.clone(),
        board: image.board.clone(),
        channel: image.channel.clone(),
        version: image.from.clone(),
        floor: image.floor,
        seed: 0,
        fleet_id: Some(d.id.clone()),
    };
    // A read that fails (the server re-signing the files under it) is tried again, as the
    // appliance polls again; what counts is when the read that decided began.
    let mut tries = 0;
    let found = loop {
        tries += 1;
        t.read_began = Some(Instant::now());
        match refresh::refresh(&rt, &source, &Transport::files_only(None)) {
            Ok(found) => break found,
            Err(e) if tries < 3 => {
                tracing::debug!("device {}: refreshing the repository: {e}", d.index);
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(e) => {
                return Err(anyhow!(
                    "device {}: refreshing the repository: {e}",
                    d.index
                ))
            }
        }
    };
    let decision =
        aperture_release::select(&found.candidates, &found.rollouts, &device, unix_now());
    t.decision = decision.summary(&device);
    let Some((_, meta)) = decision.install else {
        return Ok(());
    };
    let (from, to) = (image.from.to_string(), meta.version.to_string());
    let mut reporter = Reporter::new(&d.identity).context("the device's TLS settings")?;
    let mut send = |r: &Report| {
        reporter
            .send(r, unix_now())
            .with_context(|| format!("device {} reporting", d.index))
    };
    t.started = true;
    t.started_sent = Some(Instant::now());
    send(&reports::started(&from, &to))?;
    std::thread::sleep(plan.step);
    send(&reports::installed(&from, &to))?;
    std::thread::sleep(plan.step);
    t.failed = (plan.fails_health)(d.index);
    let last = if t.failed {
        reports::failed_health(&from, &to)
    } else {
        reports::committed(&from, &to)
    };
    let sent = Instant::now();
    send(&last)?;
    t.finished = Some((sent, Instant::now()));
    Ok(())
}

/// What a load of repeated requests measured.
#[derive(Debug, Clone, Default)]
pub struct Load {
    /// Requests answered with success in the window.
    pub ok: u64,
    /// Requests that failed (transport, or an error status), and the first such error.
    pub failed: u64,
    /// The first error.
    pub first_error: Option<String>,
    /// The window's length.
    pub window: Duration,
    /// Each successful request's latency, sorted.
    pub latencies: Vec<Duration>,
}

impl Load {
    /// Successful requests per second.
    pub fn per_second(&self) -> f64 {
        self.ok as f64 / self.window.as_secs_f64().max(1e-9)
    }

    /// The `q` quantile (0..=1) of the latencies.
    pub fn quantile(&self, q: f64) -> Duration {
        if self.latencies.is_empty() {
            return Duration::ZERO;
        }
        let i = ((self.latencies.len() - 1) as f64 * q).round() as usize;
        self.latencies[i]
    }
}

/// What each request of a [`hammer`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Request {
    /// A report (the device's current state), through the appliance's [`Reporter`].
    Report,
    /// `GET /v1/health` over the same kind of connection (mutual TLS with the device's
    /// certificate, kept alive): the bare TLS+HTTP round trip, for comparison.
    Health,
}

/// Each device of `devices` sends `request` over and over, `concurrency` threads taking the
/// devices in turn, for `window` after a warm-up round (every device once: its TLS handshake),
/// device `i` through `servers[i % servers.len()]`. Every device keeps its connection, as an
/// appliance's agent keeps its client between polls.
pub fn hammer(
    devices: &[SimDevice],
    servers: &[String],
    request: Request,
    concurrency: usize,
    window: Duration,
) -> Result<Load> {
    enum Client {
        Report(Reporter),
        Health(ureq::Agent, String),
    }
    let report = reports::committed("1.0.0", "1.1.0");
    let clients: Vec<Mutex<Client>> = devices
        .iter()
        .map(|d| -> Result<Mutex<Client>> {
            let mut identity = d.identity.clone();
            identity.url = url::Url::parse(&servers[d.index % servers.len()])?;
            Ok(Mutex::new(match request {
                Request::Report => Client::Report(Reporter::new(&identity)?),
                Request::Health => {
                    let tls = aperture_fleet_api::tls::client_config(
                        &identity.ca_pem,
                        Some(&identity.device),
                    )?;
                    let agent = ureq::AgentBuilder::new()
                        .tls_config(Arc::new(tls))
                        .timeout(Duration::from_secs(20))
                        .build();
                    Client::Health(agent, identity.api_url("/v1/health"))
                }
            }))
        })
        .collect::<Result<_>>()?;
    let once = |c: &Mutex<Client>| -> Result<()> {
        match &mut *c.lock().unwrap_or_else(|e| e.into_inner()) {
            Client::Report(r) => r.send(&report, unix_now()).map_err(anyhow::Error::from),
            Client::Health(agent, url) => {
                let body = agent.get(url).call()?.into_string()?;
                anyhow::ensure!(body == "ok", "GET /v1/health answered {body:?}");
                Ok(())
            }
        }
    };
    // Warm-up: every device's first request (its handshake), not measured.
    let warm: Vec<Result<()>> = pool(clients.len(), concurrency, |i| once(&clients[i]));
    if let Some(e) = warm.into_iter().find_map(Result::err) {
        return Err(e.context("the warm-up round"));
    }
    let threads = concurrency.clamp(1, clients.len().max(1));
    let start = Instant::now();
    let results: Vec<Load> = pool(threads, threads, |t| {
        let mut load = Load::default();
        let mut i = t;
        while start.elapsed() < window {
            let began = Instant::now();
            match once(&clients[i]) {
                Ok(()) => {
                    load.ok += 1;
                    load.latencies.push(began.elapsed());
                }
                Err(e) => {
                    load.failed += 1;
                    load.first_error.get_or_insert_with(|| format!("{e:#}"));
                }
            }
            i += threads;
            if i >= clients.len() {
                i = t;
            }
        }
        load
    });
    let mut all = Load {
        window: start.elapsed(),
        ..Load::default()
    };
    for l in results {
        all.ok += l.ok;
        all.failed += l.failed;
        if all.first_error.is_none() {
            all.first_error = l.first_error;
        }
        all.latencies.extend(l.latencies);
    }
    all.latencies.sort_unstable();
    Ok(all)
}
