//! `bench fleet`: reports per second the fleet server sustains, with their p50/p99 latency,
//! for a fleet of simulated appliances on 127.0.0.1 (issue 16, "Must show 3").
//!
//! The servers are real `aperture-fleet serve` processes (the binary next to this one), each
//! with its own file limit: 10,000 devices each keep a connection, as an appliance's agent
//! keeps its client. The devices are [`aperture_fleet_sim`]'s: enrolled through provisioning
//! archives and the appliance's enrollment, reporting through the appliance's `Reporter` over
//! mutual TLS 1.3, `--concurrency` threads taking the devices in turn for `--window` seconds
//! after a warm-up round (every device once: its handshake). Four measurements:
//!
//! 1. **baseline**: `GET /v1/health` over the same kind of connection (mutual TLS with the
//!    device certificate, kept alive), one server: the bare TLS+HTTP round trip. No peer fleet
//!    server runs here (hawkBit needs Java and Maven), so the table compares reports with it;
//! 2. **one server, SQLite** (the default `fleet.db`);
//! 3. **one server, PostgreSQL** (a PostgreSQL of the bench's own in a temporary folder);
//! 4. **two servers, one PostgreSQL**: the devices split between two processes on one
//!    database (the server keeps no state of its own).
//!
//! Everything shares this machine's cores: the client's TLS costs about what the server's
//! does, so the numbers are a floor for a server with the machine to itself.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use aperture_fleet::db::{self, Actor, Db};
use aperture_fleet::pki::Identity;
use aperture_fleet_sim::postgres::Postgres;
use aperture_fleet_sim::{enroll_all, hammer, work_dir, Load, Request, SimDevice};

use crate::table::{print_table, Row};

/// What to run.
#[derive(Debug, Clone)]
pub struct Options {
    /// Simulated devices.
    pub devices: usize,
    /// Seconds each measurement runs after its warm-up.
    pub window: Duration,
    /// Requests in flight at once (client threads).
    pub concurrency: usize,
}

/// A server process; stopped (SIGINT, then SIGKILL) when dropped.
struct ServerProcess {
    child: Child,
    url: String,
}

impl ServerProcess {
    /// `aperture-fleet serve` with the identity in `dir` on `database`, on a free port; its
    /// log in `log`.
    fn start(dir: &Path, database: &str, log: &Path) -> Result<Self> {
        let exe = fleet_binary()?;
        let out =
            std::fs::File::create(log).with_context(|| format!("creating {}", log.display()))?;
        let child = Command::new(&exe)
            .args([
                "serve",
                "--listen",
                "127.0.0.1:0",
                "--reports-per-minute",
                "1000000",
            ])
            .arg("--dir")
            .arg(dir)
            .args(["--database", database])
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(out)
            .spawn()
            .with_context(|| format!("starting {}", exe.display()))?;
        let mut server = ServerProcess {
            child,
            url: String::new(),
        };
        let start = Instant::now();
        loop {
            let text = std::fs::read_to_string(log).unwrap_or_default();
            if let Some(addr) = text.lines().find_map(|l| l.strip_prefix("listening on ")) {
                server.url = addr.trim().to_string();
                return Ok(server);
            }
            if let Some(status) = server.child.try_wait()? {
                bail!("{} serve exited ({status}): {text}", exe.display());
            }
            if start.elapsed() > Duration::from_secs(60) {
                bail!("{} serve did not listen within 60 s: {text}", exe.display());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let pid = rustix::process::Pid::from_child(&self.child);
        let _ = rustix::process::kill_process(pid, rustix::process::Signal::Int);
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(10) {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `aperture-fleet`, next to this program (`cargo xtask bench` builds both).
fn fleet_binary() -> Result<PathBuf> {
    let me = std::env::current_exe().context("finding this program")?;
    let exe = me.with_file_name("aperture-fleet");
    if !exe.is_file() {
        bail!(
            "{} is missing: build it beside this program (`cargo build --release -p \
             aperture-fleet -p aperture-bench`, or run `cargo xtask bench fleet`)",
            exe.display()
        );
    }
    Ok(exe)
}

/// Make `n` enrollment tokens in `database` directly (as an operator's `provision` would ask
/// the server for them).
fn tokens(database: &str, n: usize) -> Result<Vec<String>> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let db = Db::connect(database)
            .await
            .with_context(|| format!("opening {database}"))?;
        let mut all = Vec::with_capacity(n);
        while all.len() < n {
            let batch = (n - all.len()).min(1000) as u32;
            let made = db
                .create_enrollment_tokens(&Actor("bench".into()), batch, 3600, db::now())
                .await
                .context("making enrollment tokens")?;
            all.extend(made.tokens);
        }
        db.close().await;
        Ok(all)
    })
}

/// Enroll `n` devices with `server`, timed.
fn enroll(
    server: &ServerProcess,
    identity: &Identity,
    database: &str,
    n: usize,
    work: &Path,
    concurrency: usize,
) -> Result<(Vec<SimDevice>, Duration)> {
    let tokens = tokens(database, n)?;
    let start = Instant::now();
    let devices = enroll_all(&server.url, &identity.ca_pem, &tokens, work, concurrency)?;
    Ok((devices, start.elapsed()))
}

fn ms(d: Duration) -> String {
    format!("{:.1}", d.as_secs_f64() * 1000.0)
}

fn row(name: &str, load: &Load, baseline: Option<&Load>) -> Row {
    let ratio = baseline.map_or("1.00".to_string(), |b| {
        format!("{:.2}", b.per_second() / load.per_second().max(1e-9))
    });
    Row {
        name: name.into(),
        cells: vec![
            format!("{:.0}", load.per_second()),
            ms(load.quantile(0.5)),
            ms(load.quantile(0.99)),
            ratio,
            load.ok.to_string(),
            load.failed.to_string(),
        ],
    }
}

fn measured(what: &str, load: Load) -> Result<Load> {
    eprintln!(
        "bench fleet: {what}: {:.0}/s, p50 {} ms, p99 {} ms, {} failed",
        load.per_second(),
        ms(load.quantile(0.5)),
        ms(load.quantile(0.99)),
        load.failed
    );
    if load.ok == 0 {
        bail!(
            "{what}: no request succeeded ({})",
            load.first_error.as_deref().unwrap_or("no error recorded")
        );
    }
    if let Some(e) = &load.first_error {
        eprintln!("bench fleet: {what}: first failure: {e}");
    }
    Ok(load)
}

/// Run the benchmark and print its table.
pub fn run(o: &Options) -> Result<()> {
    if o.devices == 0 || o.concurrency == 0 {
        bail!("--devices and --concurrency must be at least 1");
    }
    let tmp = tempfile::tempdir().context("a temporary folder")?;
    let dir = tmp.path().join("identity");
    let (identity, _) =
        Identity::init(&dir, &["127.0.0.1".to_string()]).context("making the fleet's identity")?;
    let mut rows = Vec::new();
    let mut notes = Vec::new();

    // SQLite: the baseline and one server.
    let sqlite = format!("sqlite://{}", tmp.path().join("fleet.db").display());
    let work = work_dir()?;
    let (baseline, sqlite_load) = {
        let server = ServerProcess::start(&dir, &sqlite, &tmp.path().join("sqlite.log"))?;
        let (devices, took) = enroll(
            &server,
            &identity,
            &sqlite,
            o.devices,
            work.path(),
            o.concurrency,
        )?;
        notes.push(format!(
            "enrolling {} devices (SQLite): {:.1} s, {:.0}/s",
            o.devices,
            took.as_secs_f64(),
            o.devices as f64 / took.as_secs_f64()
        ));
        eprintln!("bench fleet: {}", notes.last().unwrap());
        let servers = [server.url.clone()];
        let baseline = measured(
            "GET /v1/health",
            hammer(&devices, &servers, Request::Health, o.concurrency, o.window)?,
        )?;
        let load = measured(
            "reports, SQLite",
            hammer(&devices, &servers, Request::Report, o.concurrency, o.window)?,
        )?;
        (baseline, load)
    };
    drop(work);
    rows.push(row(
        "GET /v1/health, mutual TLS (baseline)",
        &baseline,
        None,
    ));
    rows.push(row(
        "report, 1 server, SQLite",
        &sqlite_load,
        Some(&baseline),
    ));

    // PostgreSQL: one server, then two on the same database.
    let pg = Postgres::start_with("bench fleet", 200)
        .ok_or_else(|| anyhow!("PostgreSQL is not installed (Debian package postgresql)"))?;
    let work = work_dir()?;
    let a = ServerProcess::start(&dir, &pg.url, &tmp.path().join("pg-a.log"))?;
    let (devices, took) = enroll(
        &a,
        &identity,
        &pg.url,
        o.devices,
        work.path(),
        o.concurrency,
    )?;
    notes.push(format!(
        "enrolling {} devices (PostgreSQL): {:.1} s, {:.0}/s",
        o.devices,
        took.as_secs_f64(),
        o.devices as f64 / took.as_secs_f64()
    ));
    eprintln!("bench fleet: {}", notes.last().unwrap());
    let one = measured(
        "reports, PostgreSQL, one server",
        hammer(
            &devices,
            std::slice::from_ref(&a.url),
            Request::Report,
            o.concurrency,
            o.window,
        )?,
    )?;
    rows.push(row("report, 1 server, PostgreSQL", &one, Some(&baseline)));
    let b = ServerProcess::start(&dir, &pg.url, &tmp.path().join("pg-b.log"))?;
    let two = measured(
        "reports, PostgreSQL, two servers",
        hammer(
            &devices,
            &[a.url.clone(), b.url.clone()],
            Request::Report,
            o.concurrency,
            o.window,
        )?,
    )?;
    rows.push(row(
        "report, 2 servers, one PostgreSQL",
        &two,
        Some(&baseline),
    ));
    drop((a, b));

    print_table(
        &format!(
            "Fleet server: {} simulated devices on 127.0.0.1, {} requests in flight, {} s \
             windows, {} build (server and devices)",
            o.devices,
            o.concurrency,
            o.window.as_secs(),
            if cfg!(debug_assertions) {
                "debug"
            } else {
                "release"
            }
        ),
        &[
            "what",
            "per second",
            "p50 ms",
            "p99 ms",
            "baseline/this",
            "requests",
            "failed",
        ],
        &rows,
    );
    for n in notes {
        println!("{n}");
    }
    Ok(())
}
