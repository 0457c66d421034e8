//! A PostgreSQL server of a test's (or a benchmark's) own, in a temporary folder, stopped when
//! dropped: the one copy of this code, used by host/fleet's tests and `cargo xtask bench fleet`.
//!
//! PostgreSQL comes from Debian's `postgresql` package (`/usr/lib/postgresql/*/bin`). initdb
//! refuses to run as root, so as root it and the server run as `nobody` (setpriv) in a folder
//! that user owns. Without the package [`Postgres::start`] says why it skipped, and fails under
//! `APERTURE_REQUIRE_TOOLS=1` (`cargo xtask test` installs it first).

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tempfile::TempDir;

/// A PostgreSQL server of our own; stopped when dropped.
pub struct Postgres {
    child: Child,
    /// Its URL (user `fleet`, database `postgres`, trust authentication on 127.0.0.1).
    pub url: String,
    dir: TempDir,
}

/// The newest installed PostgreSQL's `bin` folder.
pub fn postgres_bin() -> Option<PathBuf> {
    let mut versions: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(|e| e.ok().map(|e| e.path().join("bin")))
        .filter(|bin| bin.join("initdb").is_file() && bin.join("postgres").is_file())
        .collect();
    versions.sort();
    versions.pop()
}

fn is_root() -> bool {
    rustix::process::geteuid().is_root()
}

/// `program` with `args`, as `nobody` when we are root (initdb and postgres refuse root).
fn as_postgres_user(program: &Path) -> Command {
    if is_root() {
        let mut c = Command::new("setpriv");
        c.args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "--inh-caps=-all",
        ])
        .arg(program);
        c
    } else {
        Command::new(program)
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port on 127.0.0.1")
        .port()
}

impl Postgres {
    /// Start one for `test` (a name for the message), or `None` (SKIPPED, or a panic under
    /// `APERTURE_REQUIRE_TOOLS=1`) when the package is missing. `max_connections` is
    /// PostgreSQL's own setting (its default, 100, is too few for several servers' pools).
    pub fn start(test: &str) -> Option<Self> {
        Self::start_with(test, 100)
    }

    /// [`Postgres::start`] with `max_connections`.
    pub fn start_with(test: &str, max_connections: u32) -> Option<Self> {
        let Some(bin) = postgres_bin() else {
            let why = format!(
                "{test}: PostgreSQL (Debian package postgresql: /usr/lib/postgresql/*/bin/initdb) \
                 is not installed; `cargo xtask test` installs it as root"
            );
            if aperture_sys::tool::required() {
                panic!("APERTURE_REQUIRE_TOOLS=1 and a tool is missing: {why}");
            }
            eprintln!("SKIPPED: {why}");
            return None;
        };
        // In /tmp, which nobody can traverse (the target folder may not be).
        let dir = tempfile::Builder::new()
            .prefix("aperture-fleet-pg")
            .tempdir_in("/tmp")
            .expect("a temporary folder");
        if is_root() {
            std::os::unix::fs::chown(dir.path(), Some(65534), Some(65534))
                .expect("giving the folder to nobody");
        }
        let data = dir.path().join("data");
        let out = as_postgres_user(&bin.join("initdb"))
            .arg("-D")
            .arg(&data)
            .args(["-A", "trust", "-U", "fleet", "--no-sync", "-E", "UTF8"])
            .stdin(Stdio::null())
            .output()
            .expect("running initdb");
        assert!(
            out.status.success(),
            "initdb failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let port = free_port();
        let child = as_postgres_user(&bin.join("postgres"))
            .arg("-D")
            .arg(&data)
            .args(["-p", &port.to_string(), "-k"])
            .arg(dir.path())
            .args([
                "-c",
                "listen_addresses=127.0.0.1",
                "-c",
                "fsync=off",
                "-c",
                "full_page_writes=off",
                "-c",
            ])
            .arg(format!("max_connections={max_connections}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(
                std::fs::File::create(dir.path().join("postgres.log"))
                    .map_or(Stdio::null(), Stdio::from),
            )
            .spawn()
            .expect("starting postgres");
        let pg = Postgres {
            child,
            url: format!("postgres://fleet@127.0.0.1:{port}/postgres"),
            dir,
        };
        pg.wait_ready();
        Some(pg)
    }

    fn wait_ready(&self) {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a tokio runtime");
        let start = Instant::now();
        loop {
            let ready = rt.block_on(async {
                use sqlx::Connection;
                sqlx::any::install_default_drivers();
                sqlx::AnyConnection::connect(&self.url).await.is_ok()
            });
            if ready {
                return;
            }
            let log =
                std::fs::read_to_string(self.dir.path().join("postgres.log")).unwrap_or_default();
            assert!(
                start.elapsed() < Duration::from_secs(60),
                "postgres did not start: {log}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        // Fast shutdown (SIGINT), then wait; SIGKILL if it hangs.
        let pid = rustix::process::Pid::from_child(&self.child);
        let _ = rustix::process::kill_process(pid, rustix::process::Signal::Int);
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(20) {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
