//! `bench fleet-repo`: what polling the release repository costs, for a fleet of simulated
//! appliances polling one nginx-served TUF repository on 127.0.0.1 (issue 15, "Must show 4"):
//! requests and metadata bytes per poll when nothing changed and when a release appears, and
//! the polls and requests per second sustained. Aperture's client, stock tough and python-tuf's
//! ngclient poll the same repository in one run, and the table gives each peer's bytes and
//! requests over Aperture's.
//!
//! The repository is [`aperture_tests::fleet`]'s: a TUF repository made by `aperture-repo`
//! (consistent snapshots) holding release 1.0.0, synced with `repo sync` to a folder that a
//! real nginx serves over HTTPS (TLS 1.3, the test CA). Each simulated device keeps its own
//! state folder, as an appliance keeps `/var/lib/aperture/agent`, and every poll is a new
//! client with a new TLS connection, as a device that polls every 15 minutes makes. Worker
//! threads (processes for Python) take the devices in order. Three phases, every client in
//! turn within each:
//!
//! 1. **first poll**: each device's first poll, from the shipped root (its initialisation);
//! 2. **no change**: each device polls again;
//! 3. **release appears**: release 1.1.0 is published and synced, and each device polls again.
//!
//! The clients:
//! * **aperture**: the appliance's code (`aperture-client`). Phases 1 and 2 run its update loop
//!   ([`UpdateLoop::check`], with the [`Recorder`] installer; the devices run 1.0.0, so nothing
//!   is installed); phase 3 runs the loop's refresh alone ([`refresh::refresh`] over the
//!   loop's transport, cache and datastore), since the loop would go on to download the bundle,
//!   which is not metadata. Its transport keeps versioned snapshot and targets metadata, so a
//!   no-change poll is the root probe and the timestamp.
//! * **tough (stock)**: the same refresh over the same transport without its cache: what tough
//!   0.24's client workflow fetches on its own (root probe, timestamp, snapshot, targets).
//! * **python-tuf**: the reference client, `Updater.refresh()` with its stock fetcher
//!   (`python/ngclient_fleet.py`), for fewer devices (it is slower), run only when the
//!   preflight has installed it (`APERTURE_PYTHON_TOOLS`, set by `cargo xtask`).
//!
//! Requests and bytes come from nginx's access log (`$bytes_sent`: the response with its
//! headers; TLS records and handshakes are not counted), body bytes from each client's own
//! counters. The run is bounded: `--time-limit` seconds of polling in all, shared out between
//! the phases by their device counts; a phase that reaches its share stops taking devices, says
//! so, and the later phases poll only the devices it polled.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use aperture_client::recorder::Recorder;
use aperture_client::refresh::{self, Source};
use aperture_client::transport::Transport;
use aperture_client::{Outcome, Running, StateDir, UpdateLoop};
use aperture_release::{ReleaseMeta, Settings, Waves};
use aperture_tests::fleet::{self, Nginx, Request};
use aperture_updater::source::FetchOptions;

mod python;
mod report;

pub use python::PYTHON_TUF_VENV;

const PRODUCT: &str = "aperture-edge";
const BOARD: &str = "qemu-x86_64";
const CHANNEL: &str = "stable";
/// The version every device runs and the first release; then the release that appears.
const RUNNING: &str = "1.0.0";
const NEW_RELEASE: &str = "1.1.0";

/// Options of `bench fleet-repo`.
#[derive(Debug, Clone)]
pub struct Options {
    /// Devices simulated with Aperture's client.
    pub devices: usize,
    /// Devices simulated with stock tough (at most `devices`).
    pub peer_devices: usize,
    /// Devices simulated with python-tuf (at most `devices`).
    pub python_devices: usize,
    /// Seconds of polling allowed in all.
    pub time_limit: Duration,
    /// Concurrent pollers.
    pub workers: usize,
}

/// The clients compared.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Client {
    Aperture,
    Tough,
    PythonTuf,
}

impl Client {
    fn dir(self) -> &'static str {
        match self {
            Client::Aperture => "aperture",
            Client::Tough => "tough",
            Client::PythonTuf => "python-tuf",
        }
    }
}

/// The phases of the run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    First,
    Idle,
    Release,
}

impl Phase {
    fn label(self) -> &'static str {
        match self {
            Phase::First => "first poll",
            Phase::Idle => "no change",
            Phase::Release => "release appears",
        }
    }
}

/// What one client cost in one phase.
#[derive(Debug)]
struct Measured {
    client: Client,
    phase: Phase,
    /// Devices the phase was to poll.
    devices: usize,
    polls: usize,
    failures: usize,
    first_error: Option<String>,
    seconds: f64,
    /// Requests and body bytes, by the client's own counters.
    client_requests: u64,
    client_bytes: u64,
    /// nginx's log lines of the phase.
    server: Vec<Request>,
    /// What the client said about itself (python-tuf: its version and crypto backend).
    detail: Option<String>,
}

impl Measured {
    fn stopped_early(&self) -> bool {
        self.polls < self.devices
    }
    fn per_poll(&self, total: f64) -> f64 {
        total / self.polls.max(1) as f64
    }
    fn requests_per_poll(&self) -> f64 {
        self.per_poll(self.server.len() as f64)
    }
    fn bytes_per_poll(&self) -> f64 {
        self.per_poll(self.server.iter().map(|r| r.bytes).sum::<u64>() as f64)
    }
    fn body_per_poll(&self) -> f64 {
        self.per_poll(self.client_bytes as f64)
    }
}

/// The repository, its server and what every client needs to reach it.
struct Fleet {
    repo: aperture_repo::Repo,
    repo_dir: PathBuf,
    served: PathBuf,
    nginx: Nginx,
    base: url::Url,
    ca: PathBuf,
    shipped_root: PathBuf,
    fetch: FetchOptions,
    /// Where the devices keep their state.
    states: PathBuf,
}

/// Run `bench fleet-repo`.
pub fn run(opts: &Options) -> Result<()> {
    let wall = Instant::now();
    if opts.devices == 0 {
        bail!("--devices must be at least 1");
    }
    let ws = crate::workspace();
    let work = ws.join("target/bench/fleet-repo");
    let _ = fs::remove_dir_all(&work);
    fs::create_dir_all(&work).with_context(|| format!("creating {}", work.display()))?;
    let _cleanup = RemoveOnDrop(work.clone());
    let (states, on_tmpfs) = state_root(&work)?;
    let _cleanup_states = RemoveOnDrop(states.clone());

    eprintln!("bench fleet-repo: a TUF repository with release {RUNNING}, served by nginx");
    let mut fleet = Fleet::start(&work, states)?;
    fleet.publish(RUNNING, &work)?;
    let python = python::python_peer(&work)?;
    let fleet_size = |c: Client| match c {
        Client::Aperture => opts.devices,
        Client::Tough => opts.peer_devices.min(opts.devices),
        Client::PythonTuf => opts.python_devices.min(opts.devices),
    };

    let mut plan: Vec<(Client, Phase)> = Vec::new();
    for phase in [Phase::First, Phase::Idle, Phase::Release] {
        for client in [Client::Aperture, Client::Tough, Client::PythonTuf] {
            if fleet_size(client) > 0 && (client != Client::PythonTuf || python.is_ok()) {
                plan.push((client, phase));
            }
        }
    }
    // Shares of the time limit: by device count, a python-tuf poll counted as four (it is
    // about that much slower), so that every phase of a run that fits finishes.
    let weight = |c: Client| match c {
        Client::PythonTuf => 4 * fleet_size(c),
        _ => fleet_size(c),
    };
    let polling = Instant::now();
    let load_before = load_average();
    let mut results: Vec<Measured> = Vec::new();
    let mut published = false;
    for (k, &(client, phase)) in plan.iter().enumerate() {
        if phase == Phase::Release && !published {
            eprintln!("bench fleet-repo: publishing release {NEW_RELEASE} and syncing it");
            fleet.publish(NEW_RELEASE, &work)?;
            published = true;
        }
        // Devices the previous phase of this client polled (the first ones, always).
        let devices = results
            .iter()
            .rev()
            .find(|m| m.client == client)
            .map_or(fleet_size(client), |m| m.polls);
        let left: usize = plan[k..].iter().map(|&(c, _)| weight(c)).sum();
        let remaining = opts.time_limit.saturating_sub(polling.elapsed());
        let budget = remaining.mul_f64(weight(client) as f64 / left.max(1) as f64);
        eprintln!(
            "bench fleet-repo: {}, {}: {devices} devices (at most {:.0} s)",
            client.dir(),
            phase.label(),
            budget.as_secs_f64()
        );
        let m = match client {
            Client::PythonTuf => {
                let (py, script) = python.as_ref().map_err(|e| anyhow::anyhow!("{e}"))?;
                fleet.python_phase(py, script, phase, devices, budget, opts.workers)?
            }
            _ => fleet.rust_phase(client, phase, devices, budget, opts.workers)?,
        };
        eprintln!(
            "bench fleet-repo:   {} polls in {:.1} s, {} requests{}",
            m.polls,
            m.seconds,
            m.server.len(),
            if m.stopped_early() {
                " (stopped early: time limit)"
            } else {
                ""
            }
        );
        results.push(m);
    }
    let polling_secs = polling.elapsed().as_secs_f64();
    drop(fleet);

    report::report(
        &results,
        opts,
        &report::Facts {
            python_missing: python.as_ref().err().cloned(),
            on_tmpfs,
            polling_secs,
            wall_secs: wall.elapsed().as_secs_f64(),
            load: [load_before, load_average()],
        },
    );
    Ok(())
}

impl Fleet {
    fn start(work: &Path, states: PathBuf) -> Result<Fleet> {
        let pki = fleet::pki().context("making the test CA and server certificate")?;
        let repo_dir = work.join("repo");
        let repo = fleet::fresh_repo(&repo_dir)?;
        // The run's own copies of the root the devices ship and of the CA: the fixtures'
        // folder is shared with the test suites, which may make it again meanwhile.
        let shipped_root = work.join("1.root.json");
        fs::copy(repo_dir.join("metadata/1.root.json"), &shipped_root)?;
        let ca = work.join("ca.pem");
        fs::copy(&pki.ca, &ca)?;
        let served = work.join("www");
        aperture_repo::sync::to_dir(&repo_dir, &served)?;
        let nginx = Nginx::start(&served, 0, &work.join("nginx"))?;
        let base = url::Url::parse(&nginx.url())?;
        // Only the test CA: the system bundle's path is one that does not exist.
        let mut fetch = FetchOptions::new(work.join("no-system-cas.pem"));
        fetch.extra_ca = Some(ca.clone());
        fetch.timeout = Duration::from_secs(30);
        fetch.retries = 0;
        Ok(Fleet {
            repo,
            repo_dir,
            served,
            nginx,
            base,
            ca,
            shipped_root,
            fetch,
            states,
        })
    }

    /// Publish `version` (a small stand-in bundle: no client downloads it) and sync.
    fn publish(&mut self, version: &str, work: &Path) -> Result<()> {
        let bundle = work.join(format!("{version}.bundle"));
        let seed = version
            .bytes()
            .fold(0u32, |a, b| a.wrapping_mul(31).wrapping_add(b as u32));
        let bytes: Vec<u8> = (0..64u32 << 10)
            .map(|i| (i.wrapping_mul(7).wrapping_add(seed) % 251) as u8)
            .collect();
        fs::write(&bundle, bytes)?;
        let meta = ReleaseMeta {
            product: PRODUCT.into(),
            board: BOARD.into(),
            version: version.parse()?,
            security_version: 1,
            channel: CHANNEL.into(),
            published_at: 0,
            waves: Waves::default(),
            halted: false,
            gate: Default::default(),
        };
        self.repo
            .publish(&bundle, meta, jiff::Timestamp::now(), false)
            .with_context(|| format!("publishing {version}"))?;
        aperture_repo::sync::to_dir(&self.repo_dir, &self.served)
            .with_context(|| format!("syncing to {}", self.served.display()))?;
        Ok(())
    }

    /// The Rust clients: `devices` devices polled by `workers` threads within `budget`.
    fn rust_phase(
        &self,
        client: Client,
        phase: Phase,
        devices: usize,
        budget: Duration,
        workers: usize,
    ) -> Result<Measured> {
        let before = self.nginx.requests().len();
        let next = AtomicUsize::new(0);
        let totals = Mutex::new(Measured {
            client,
            phase,
            devices,
            polls: 0,
            failures: 0,
            first_error: None,
            seconds: 0.0,
            client_requests: 0,
            client_bytes: 0,
            server: Vec::new(),
            detail: None,
        });
        let started = Instant::now();
        let deadline = started + budget;
        std::thread::scope(|s| {
            for _ in 0..workers.max(1) {
                s.spawn(|| {
                    let (mut polls, mut failures, mut requests, mut bytes) = (0, 0, 0, 0);
                    let mut first_error = None;
                    // The deadline is checked before a device is taken, so every device taken
                    // is polled and the devices polled are always the first ones.
                    while Instant::now() < deadline {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        if i >= devices {
                            break;
                        }
                        let (r, b, err) = self.poll(client, phase, i);
                        polls += 1;
                        requests += r;
                        bytes += b;
                        if let Some(e) = err {
                            failures += 1;
                            first_error.get_or_insert(format!("device {i}: {e}"));
                        }
                    }
                    let mut t = totals.lock().unwrap_or_else(|e| e.into_inner());
                    t.polls += polls;
                    t.failures += failures;
                    t.client_requests += requests;
                    t.client_bytes += bytes;
                    if t.first_error.is_none() {
                        t.first_error = first_error;
                    }
                });
            }
        });
        let mut m = totals.into_inner().unwrap_or_else(|e| e.into_inner());
        m.seconds = started.elapsed().as_secs_f64();
        m.server = self.logged_since(before, m.client_requests);
        Ok(m)
    }

    /// One poll of device `i` by a client made for it (as the update loop is): requests and
    /// body bytes by the client's counters, and the error if it failed.
    fn poll(&self, client: Client, phase: Phase, i: usize) -> (u64, u64, Option<String>) {
        let state = StateDir(self.states.join(client.dir()).join(i.to_string()));
        if let Err(e) = fs::create_dir_all(&state.0) {
            return (0, 0, Some(format!("creating {}: {e}", state.0.display())));
        }
        if client == Client::Aperture && phase != Phase::Release {
            return self.poll_loop(state);
        }
        // The loop's own source, transport and cache; stock tough without the cache.
        let cache = (client == Client::Aperture).then(|| state.cache());
        let source = match Source::at(&self.base, self.shipped_root.clone(), state.datastore()) {
            Ok(s) => s,
            Err(e) => return (0, 0, Some(e)),
        };
        let transport = match Transport::new(&self.fetch, cache) {
            Ok(t) => t,
            Err(e) => return (0, 0, Some(e)),
        };
        let rt = match tokio::runtime::Builder::new_current_thread().build() {
            Ok(rt) => rt,
            Err(e) => return (0, 0, Some(format!("starting the async runtime: {e}"))),
        };
        let found = refresh::refresh(&rt, &source, &transport);
        let counters = transport.counters();
        let error = match found {
            Err(e) => Some(e.to_string()),
            Ok(f) => {
                let newest = f
                    .candidates
                    .iter()
                    .filter_map(|c| c.meta.as_ref().ok())
                    .map(|m| m.version.clone())
                    .max();
                let want = match phase {
                    Phase::Release => NEW_RELEASE,
                    _ => RUNNING,
                };
                (newest.as_ref().map(|v| v.to_string()).as_deref() != Some(want))
                    .then(|| format!("the newest release found is {newest:?}, not {want}"))
            }
        };
        (counters.requests(), counters.bytes(), error)
    }

    /// One check of the appliance's update loop, which must find nothing to install.
    fn poll_loop(&self, state: StateDir) -> (u64, u64, Option<String>) {
        let settings = Settings {
            repository: self.base.to_string(),
            channel: CHANNEL.into(),
            poll_interval_secs: 900,
            maintenance_window: None,
            insecure_http: false,
        };
        let running = Running {
            product: PRODUCT.into(),
            board: BOARD.into(),
            version: RUNNING.parse().expect("a semver version"),
            root_hash: None,
        };
        let mut device = match UpdateLoop::new(
            settings,
            running,
            self.shipped_root.clone(),
            state,
            self.fetch.clone(),
            Recorder::default(),
        ) {
            Ok(d) => d,
            Err(e) => return (0, 0, Some(e)),
        };
        let now = jiff::Timestamp::now().as_second().max(0) as u64;
        device.check(now);
        let st = device.status();
        let error = (st.result != Some(Outcome::UpToDate))
            .then(|| format!("{:?}: {}", st.result, st.message));
        (st.requests, st.bytes, error)
    }

    /// nginx's log lines after the first `before`, once the `expected` requests the clients
    /// counted are in (nginx writes a line as it finishes a request, which can be just after
    /// the client has read the response), or after 10 s.
    fn logged_since(&self, before: usize, expected: u64) -> Vec<Request> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let all = self.nginx.requests();
            if all.len() >= before + expected as usize || Instant::now() > deadline {
                return all.get(before..).unwrap_or_default().to_vec();
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// Where the devices keep their state: a tmpfs when there is one (`/dev/shm`), so that the
/// simulation host's disk (each device fsyncs its status and cache files; one disk here
/// stands for thousands) does not set the pace; else under `work`. Whether it is a tmpfs.
fn state_root(work: &Path) -> Result<(PathBuf, bool)> {
    let shm = Path::new("/dev/shm");
    if shm.is_dir() {
        // One name, like `work`: what a run that was killed left behind goes with the next.
        let dir = shm.join("aperture-bench-fleet-repo");
        let _ = fs::remove_dir_all(&dir);
        if fs::create_dir_all(&dir).is_ok() {
            return Ok((dir, true));
        }
    }
    let dir = work.join("devices");
    fs::create_dir_all(&dir)?;
    Ok((dir, false))
}

/// The 1-minute load average (other work on the machine shares its cores with the run).
fn load_average() -> String {
    fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|l| l.split_whitespace().next().map(String::from))
        .unwrap_or_else(|| "?".into())
}

/// Removes a folder when dropped.
struct RemoveOnDrop(PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        if let Err(e) = fs::remove_dir_all(&self.0) {
            if e.kind() != io::ErrorKind::NotFound {
                eprintln!(
                    "bench fleet-repo: could not remove {}: {e}",
                    self.0.display()
                );
            }
        }
    }
}
