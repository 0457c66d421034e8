//! The update loop: poll the repository, decide, install, reboot in the window.
//!
//! One [`UpdateLoop::check`]:
//! 1. refuse to start while the running slot is on trial or an installed update waits for its
//!    reboot ([`Installer::ready`]);
//! 2. refresh the TUF metadata ([`crate::refresh`]); a repository that cannot be reached is
//!    retried with backoff, metadata that is refused is logged and nothing is installed;
//! 3. pick the release ([`aperture_release::select`]: product, board, channel, newer than the
//!    running version, not below the floor, not halted, its wave reached) and log the decision
//!    on one line;
//! 4. stream the chosen bundle into the updater through a reader that checks the length and
//!    sha256 the targets role signed ([`crate::target::Checked`]); the updater checks the
//!    bundle's own signatures as it reads, and arms the slot only when both chains held;
//! 5. reboot at once, or at the start of the maintenance window.
//!
//! What it found is written to `/var/lib/aperture/agent/update.json` ([`LoopStatus`]), which
//! `aperture-agent status --json` shows.

use std::io::Read;
use std::path::{Path, PathBuf};

use aperture_release::settings::{backoff, first_delay, next_delay};
use aperture_release::{select, Device, Settings, SEED_RANGE};
use aperture_updater::source::{self, FetchOptions};
use serde::{Deserialize, Serialize};

use crate::refresh::{self, RefreshError, RoleState, Source};
use crate::target::Checked;
use crate::transport::Transport;

/// What the loop needs of the updater. The real one is [`crate::UpdaterInstaller`]; tests use
/// a recorder.
pub trait Installer {
    /// The effective anti-rollback floor.
    fn floor(&mut self) -> Result<u64, String>;
    /// `Ok` when an install may start: the running slot is committed and no installed update
    /// waits for its reboot; else why not.
    fn ready(&mut self) -> Result<(), String>;
    /// Install the bundle read from `bundle` (fetched from `source`) into the other slot and
    /// arm it; a one-line summary.
    fn install(&mut self, bundle: &mut dyn Read, source: &str) -> Result<String, String>;
    /// Reboot into the armed slot.
    fn reboot(&mut self) -> Result<(), String>;
}

/// The running image, from its build facts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Running {
    /// Product.
    pub product: String,
    /// Board.
    pub board: String,
    /// Version.
    pub version: semver::Version,
    /// The dm-verity root hash its rootfs was booted with (`None`: booted without one), which
    /// picks the delta bundles made from exactly this image.
    pub root_hash: Option<String>,
}

/// The result of one check.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Outcome {
    /// Nothing to install now.
    UpToDate,
    /// A release was installed and armed.
    Installed,
    /// The running slot is on trial or an update waits for its reboot.
    Waiting,
    /// The repository could not be reached.
    Unreachable,
    /// The repository's metadata was refused.
    Refused,
    /// The chosen release failed to download or install.
    InstallFailed,
    /// This appliance's own files are unusable (trusted root, datastore).
    Broken,
}

/// An installed release waiting for its reboot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pending {
    /// Its version.
    pub version: String,
    /// When the appliance reboots into it (seconds since the Unix epoch).
    pub reboot_at: u64,
}

/// What the loop knows, as `update.json` and the agent's status show it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LoopStatus {
    /// The repository.
    pub repository: String,
    /// The channel followed.
    pub channel: String,
    /// This device's wave seed.
    pub seed: u32,
    /// When the last check ran.
    pub last_check: Option<u64>,
    /// Its result.
    pub result: Option<Outcome>,
    /// Its journal line.
    pub message: String,
    /// The repository's roles as last verified.
    #[serde(default)]
    pub roles: Vec<RoleState>,
    /// When a waiting release becomes eligible for this device.
    pub next_eligible: Option<u64>,
    /// When the next check runs.
    pub next_check: Option<u64>,
    /// Requests the last check sent, and body bytes it received.
    pub requests: u64,
    /// Body bytes the last check received.
    pub bytes: u64,
    /// An installed release waiting for its reboot.
    pub pending: Option<Pending>,
    /// Checks in a row that could not reach the repository.
    pub failures: u32,
    /// The version the last check chose to install, if it chose one (the fleet report names
    /// the release a failed install was of).
    #[serde(default)]
    pub tried: Option<String>,
}

/// The loop's files, under `/var/lib/aperture/agent` on a device.
#[derive(Debug, Clone)]
pub struct StateDir(pub PathBuf);

impl StateDir {
    /// The wave seed.
    pub fn seed(&self) -> PathBuf {
        self.0.join("seed")
    }
    /// The TUF datastore.
    pub fn datastore(&self) -> PathBuf {
        self.0.join("tuf")
    }
    /// The cache of versioned metadata.
    pub fn cache(&self) -> PathBuf {
        self.0.join("tuf-cache")
    }
    /// The loop's status.
    pub fn status(&self) -> PathBuf {
        self.0.join("update.json")
    }
    /// The device's fleet id, written when it enrolls with a fleet server.
    pub fn fleet_id(&self) -> PathBuf {
        self.0.join("fleet-id")
    }
    /// The device's fleet identity (key, certificate, CA, server URL): [`crate::enroll`].
    pub fn fleet(&self) -> PathBuf {
        self.0.join("fleet")
    }
}

/// The device's fleet id from `path`: `None` before it enrolled, or when the file does not
/// hold an id (letters, digits and `-`, at most 64), which a rollout could not name anyway.
pub fn fleet_id(path: &Path) -> Option<String> {
    let text = std::fs::read_to_string(path).ok()?;
    let id = text.trim();
    let valid = !id.is_empty()
        && id.len() <= 64
        && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-');
    if !valid {
        tracing::warn!(
            "{} does not hold a fleet id; fleet rollouts that name devices will pass this one over",
            path.display()
        );
    }
    valid.then(|| id.to_string())
}

/// This device's wave seed: drawn once in `0..SEED_RANGE`, kept in `path`.
pub fn seed(path: &Path) -> Result<u32, String> {
    if let Ok(text) = std::fs::read_to_string(path) {
        match text.trim().parse::<u32>() {
            Ok(s) if s < SEED_RANGE => return Ok(s),
            _ => tracing::warn!(
                "{} does not hold a seed below {SEED_RANGE}; drawing a new one",
                path.display()
            ),
        }
    }
    let mut bytes = [0u8; 4];
    getrandom::getrandom(&mut bytes).map_err(|e| format!("drawing a wave seed: {e}"))?;
    let s = u32::from_le_bytes(bytes) % SEED_RANGE;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
    }
    aperture_sys::fs::write_atomic(path, format!("{s}\n").as_bytes(), 0o600)
        .map_err(|e| format!("writing {}: {e}", path.display()))?;
    tracing::info!("drew wave seed {s} (of {SEED_RANGE})");
    Ok(s)
}

/// Read the loop's last status, if any.
pub fn load_status(path: &Path) -> Option<LoopStatus> {
    serde_json::from_slice(&std::fs::read(path).ok()?).ok()
}

/// The update loop of one appliance.
pub struct UpdateLoop<I> {
    settings: Settings,
    running: Running,
    source: Source,
    transport: Transport,
    fetch: FetchOptions,
    state: StateDir,
    rt: tokio::runtime::Runtime,
    installer: I,
    status: LoopStatus,
    polls: u64,
}

impl<I: Installer> UpdateLoop<I> {
    /// A loop with `settings` for the `running` image, trusting `shipped_root`, keeping its
    /// state in `state`, fetching with `fetch` (TLS settings; the repository's URL scheme
    /// decides between files and HTTPS).
    pub fn new(
        settings: Settings,
        running: Running,
        shipped_root: PathBuf,
        state: StateDir,
        mut fetch: FetchOptions,
        installer: I,
    ) -> Result<UpdateLoop<I>, String> {
        let base = url::Url::parse(&settings.repository)
            .map_err(|e| format!("repository `{}`: {e}", settings.repository))?;
        let source = Source::at(&base, shipped_root, state.datastore())?;
        fetch.insecure_http = settings.insecure_http;
        let transport = if base.scheme() == "file" {
            Transport::files_only(Some(state.cache()))
        } else {
            let mut meta = fetch.clone();
            meta.timeout = meta.timeout.min(std::time::Duration::from_secs(30));
            Transport::new(&meta, Some(state.cache()))?
        };
        let seed = seed(&state.seed())?;
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .map_err(|e| format!("starting the async runtime: {e}"))?;
        let previous = load_status(&state.status());
        let status = LoopStatus {
            repository: source::redact(&settings.repository),
            channel: settings.channel.clone(),
            seed,
            last_check: None,
            result: None,
            message: String::new(),
            roles: Vec::new(),
            next_eligible: None,
            next_check: None,
            requests: 0,
            bytes: 0,
            pending: None,
            failures: 0,
            tried: None,
        };
        let status = match previous {
            Some(p) => LoopStatus {
                roles: p.roles,
                last_check: p.last_check,
                ..status
            },
            None => status,
        };
        Ok(UpdateLoop {
            settings,
            running,
            source,
            transport,
            fetch,
            state,
            rt,
            installer,
            status,
            polls: 0,
        })
    }

    /// The loop's status.
    pub fn status(&self) -> &LoopStatus {
        &self.status
    }

    /// The installer.
    pub fn installer(&mut self) -> &mut I {
        &mut self.installer
    }

    /// One check at `now` (seconds since the Unix epoch; selection and waves use it, TUF expiry
    /// uses the system clock and the newest time seen). Returns the seconds to wait before
    /// the next check.
    pub fn check(&mut self, now: u64) -> u64 {
        let counters = self.transport.counters();
        let (requests, bytes) = (counters.requests(), counters.bytes());
        let (result, message, next_eligible) = self.check_inner(now);
        let wait = match result {
            Outcome::Unreachable => {
                self.status.failures = self.status.failures.saturating_add(1);
                backoff(self.status.failures, self.settings.poll_interval_secs)
            }
            _ => {
                self.status.failures = 0;
                next_delay(
                    self.status.seed,
                    self.polls,
                    self.settings.poll_interval_secs,
                )
            }
        };
        self.polls += 1;
        match result {
            Outcome::UpToDate | Outcome::Installed | Outcome::Waiting => {
                tracing::info!("update check: {message}")
            }
            Outcome::Unreachable => {
                tracing::warn!("update check: {message}; nothing installed, retrying in {wait} s")
            }
            _ => tracing::error!("update check: {message}; nothing installed"),
        }
        self.status.last_check = Some(now);
        self.status.result = Some(result);
        self.status.message = message;
        self.status.next_eligible = next_eligible;
        self.status.next_check = Some(now + wait);
        self.status.requests = counters.requests() - requests;
        self.status.bytes = counters.bytes() - bytes;
        self.save();
        wait
    }

    fn check_inner(&mut self, now: u64) -> (Outcome, String, Option<u64>) {
        self.status.tried = None;
        if let Err(why) = self.installer.ready() {
            return (Outcome::Waiting, format!("not checking: {why}"), None);
        }
        let found = match refresh::refresh(&self.rt, &self.source, &self.transport) {
            Ok(f) => f,
            Err(e) => {
                let kind = match e {
                    RefreshError::Unreachable(_) => Outcome::Unreachable,
                    RefreshError::Refused(_) => Outcome::Refused,
                    RefreshError::Local(_) => Outcome::Broken,
                };
                return (kind, e.to_string(), None);
            }
        };
        self.status.roles = found.roles.clone();
        let floor = match self.installer.floor() {
            Ok(f) => f,
            Err(e) => return (Outcome::Broken, format!("reading the floor: {e}"), None),
        };
        let device = Device {
            product: self.running.product.clone(),
            board: self.running.board.clone(),
            channel: self.settings.channel.clone(),
            version: self.running.version.clone(),
            floor,
            seed: self.status.seed,
            fleet_id: fleet_id(&self.state.fleet_id()),
        };
        let decision = select(&found.candidates, &found.rollouts, &device, now);
        let summary = decision.summary(&device);
        let Some((name, meta)) = &decision.install else {
            return (Outcome::UpToDate, summary, decision.next_eligible);
        };
        let Some(target) = found.target(name) else {
            return (
                Outcome::Refused,
                format!("{summary}; but {name} is not a target of the repository"),
                None,
            );
        };
        tracing::info!("update check: {summary}");
        self.status.tried = Some(meta.version.to_string());
        // A delta made from exactly the running image, if the repository has one; the full
        // bundle if it has none or the delta fails.
        let delta = self.running.root_hash.as_deref().and_then(|root| {
            found
                .deltas
                .iter()
                .find(|(_, d)| d.serves(meta, root))
                .and_then(|(name, _)| found.target(name))
        });
        let mut fell_back = None;
        if let Some(target) = delta {
            let label = format!(
                "the delta to {} from {}",
                meta.version, self.running.version
            );
            match self.fetch_and_install(target, &label) {
                Ok(done) => {
                    let how = format!("{label}, {done}");
                    return self.installed(meta, &summary, how, now, &decision);
                }
                Err(e) => {
                    tracing::warn!(
                        "update check: the delta to {} did not install ({e}); fetching the full \
                         bundle",
                        meta.version
                    );
                    fell_back = Some(e);
                }
            }
        }
        let done = match self.fetch_and_install(target, &meta.version.to_string()) {
            Ok(done) => done,
            Err(e) => {
                let e = match &fell_back {
                    Some(d) => format!("{e} (after the delta failed: {d})"),
                    None => e,
                };
                return (Outcome::InstallFailed, e, None);
            }
        };
        let how = match fell_back {
            Some(e) => format!("full bundle after the delta failed ({e}), {done}"),
            None => done,
        };
        self.installed(meta, &summary, how, now, &decision)
    }

    /// Fetches `target` (checked against its signed length and hashes as it streams) into the
    /// installer; what it says it did, or what failed, naming the target and where from.
    fn fetch_and_install(
        &mut self,
        target: &crate::refresh::TargetFile,
        label: &str,
    ) -> Result<String, String> {
        let url = target.url.clone();
        let shown = crate::transport::display_url(&url);
        let opened: Result<Box<dyn Read>, String> = if url.scheme() == "file" {
            url.to_file_path()
                .map_err(|()| format!("{url} is not a local path"))
                .and_then(|p| {
                    std::fs::File::open(&p)
                        .map(|f| Box::new(f) as Box<dyn Read>)
                        .map_err(|e| format!("opening {}: {e}", p.display()))
                })
        } else {
            source::open(url.as_str(), &self.fetch).map_err(|e| e.to_string())
        };
        let mut reader = match opened {
            Ok(r) => Checked::new(r, target),
            Err(e) => return Err(format!("fetching {label} from {shown}: {e}")),
        };
        self.installer
            .install(&mut reader, url.as_str())
            .map_err(|e| format!("installing {label} from {shown}: {e}"))
    }

    /// The outcome of an install of `meta` that succeeded (`done`: how): the pending reboot.
    fn installed(
        &mut self,
        meta: &aperture_release::ReleaseMeta,
        summary: &str,
        done: String,
        now: u64,
        decision: &aperture_release::Decision,
    ) -> (Outcome, String, Option<u64>) {
        let reboot_at = self
            .settings
            .maintenance_window
            .map_or(now, |w| w.next_open(now));
        self.status.pending = Some(Pending {
            version: meta.version.to_string(),
            reboot_at,
        });
        let when = if reboot_at <= now {
            "rebooting now".to_string()
        } else {
            format!(
                "rebooting at {reboot_at} (maintenance window {})",
                self.settings
                    .maintenance_window
                    .map(|w| w.to_string())
                    .unwrap_or_default()
            )
        };
        (
            Outcome::Installed,
            format!("{summary}; installed {}: {done}; {when}", meta.version),
            decision.next_eligible,
        )
    }

    /// Reboot if an installed release waits and its time has come; whether it rebooted.
    pub fn reboot_if_due(&mut self, now: u64) -> bool {
        let Some(p) = &self.status.pending else {
            return false;
        };
        if p.reboot_at > now {
            return false;
        }
        tracing::info!("rebooting into {}", p.version);
        match self.installer.reboot() {
            Ok(()) => true,
            Err(e) => {
                tracing::error!("reboot into {} failed: {e}; trying again later", p.version);
                false
            }
        }
    }

    /// Run for ever: the first check after the seed's share of the interval (at most a
    /// minute, so a device that just booted finds an update soon), then each check's wait.
    /// `after_check` runs after each check with its status and time (the agent reports to the
    /// fleet server there); it must not fail the loop, so it returns nothing.
    pub fn run(
        &mut self,
        clock: &dyn Fn() -> u64,
        sleep: &mut dyn FnMut(u64),
        after_check: &mut dyn FnMut(&LoopStatus, u64),
    ) -> ! {
        let first = first_delay(self.status.seed, self.settings.poll_interval_secs.min(60));
        tracing::info!(
            "update loop: {} channel {}, every {} s, seed {}, first check in {first} s",
            self.status.repository,
            self.settings.channel,
            self.settings.poll_interval_secs,
            self.status.seed
        );
        sleep(first);
        loop {
            let wait = self.check(clock());
            after_check(&self.status, clock());
            if self.reboot_if_due(clock()) {
                // The reboot is under way; wait for it.
                sleep(self.settings.poll_interval_secs);
                continue;
            }
            let wait = match &self.status.pending {
                Some(p) => wait.min(p.reboot_at.saturating_sub(clock()).max(1)),
                None => wait,
            };
            sleep(wait);
        }
    }

    fn save(&self) {
        let path = self.state.status();
        let json = serde_json::to_vec_pretty(&self.status).unwrap_or_default();
        if let Err(e) = aperture_sys::fs::write_atomic(&path, &json, 0o644) {
            tracing::warn!("writing {}: {e}", path.display());
        }
    }
}
