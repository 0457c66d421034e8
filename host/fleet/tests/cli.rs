//! The `aperture-fleet` binary end to end, on SQLite and PostgreSQL: `init` makes the identity
//! and prints the first admin token once; `serve` (a process of its own) answers the admin
//! commands (`tokens create|list|revoke|enroll`, `devices`, `device`, `audit`), as tables and
//! as JSON, with the connection given by flags or by environment variables; `serve --repo`
//! signs what `rollout start|list|status|pause|resume|halt|cancel` do.

mod common;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};

use common::{DbFixture, Kind};

const BIN: &str = env!("CARGO_BIN_EXE_aperture-fleet");

/// A `serve` process; killed when dropped.
struct Serve(Child);

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn run(dir: &Path, url: &str, token: &str, args: &[&str]) -> (bool, String, String) {
    let out = Command::new(BIN)
        .args(args)
        .env("APERTURE_FLEET_SERVER", url)
        .env("APERTURE_FLEET_TOKEN", token)
        .env("APERTURE_FLEET_CA", dir.join("ca.pem"))
        .stdin(Stdio::null())
        .output()
        .expect("running aperture-fleet");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `init` in `dir`: the first admin token.
fn init(dir: &Path, db_url: &str) -> std::process::Output {
    Command::new(BIN)
        .args(["init", "--dir"])
        .arg(dir)
        .args(["--database", db_url])
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

/// `serve` with `extra` arguments, and its URL once it listens.
fn serve(dir: &Path, db_url: &str, extra: &[&str]) -> (Serve, String) {
    let mut child = Command::new(BIN)
        .args(["serve", "--listen", "127.0.0.1:0", "--dir"])
        .arg(dir)
        .args(["--database", db_url])
        .args(extra)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let serve = Serve(child);
    let mut lines = BufReader::new(stderr).lines();
    let url = loop {
        let line = lines
            .next()
            .expect("serve exited before listening")
            .unwrap();
        if let Some(addr) = line.strip_prefix("listening on ") {
            break addr.to_string();
        }
    };
    // Keep draining its log so it never blocks on a full pipe.
    std::thread::spawn(move || for _ in lines {});
    (serve, url)
}

fn the_binary_inits_serves_and_administers(kind: Kind, test: &str) {
    let Some(db) = DbFixture::new(kind, test) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let first = init(d, &db.url);
    assert!(
        first.status.success(),
        "{}",
        String::from_utf8_lossy(&first.stderr)
    );
    let token = String::from_utf8_lossy(&first.stdout).trim().to_string();
    assert!(token.starts_with("apf-admin-"), "{token}");
    // Again: the identity is kept and no second token is printed.
    let second = init(d, &db.url);
    assert!(second.status.success());
    assert!(second.stdout.is_empty());

    let (serve, url) = serve(d, &db.url, &[]);

    // The dashboard is served by the binary, without a token (it holds no data).
    let ca = std::fs::read_to_string(aperture_fleet::pki::Identity::ca_path(d)).unwrap();
    let anonymous = aperture_fleet::client::Client::new(&url, &ca, None, None).unwrap();
    let (status, page) = anonymous.raw("GET", "/dashboard", b"").unwrap();
    assert_eq!(status, 200);
    assert!(page.contains("<title>Aperture fleet</title>"), "{page}");

    let (ok, out, err) = run(
        d,
        &url,
        &token,
        &["tokens", "create", "--name", "ci", "--role", "viewer"],
    );
    assert!(ok, "{err}");
    let viewer = out.trim().to_string();
    assert!(viewer.starts_with("apf-admin-"));

    let (ok, out, err) = run(
        d,
        &url,
        &token,
        &["tokens", "enroll", "--count", "3", "--expires", "1h"],
    );
    assert!(ok, "{err}");
    assert_eq!(
        out.lines().filter(|l| l.starts_with("apf-enroll-")).count(),
        3
    );

    let (ok, out, err) = run(d, &url, &token, &["tokens", "list", "--json"]);
    assert!(ok, "{err}");
    let list: serde_json::Value = serde_json::from_str(&out).unwrap();
    let ci = list
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["name"] == "ci")
        .expect("the ci token is listed");
    let ci_id = ci["id"].as_str().unwrap().to_string();

    let (ok, out, err) = run(d, &url, &token, &["tokens", "list"]);
    assert!(ok, "{err}");
    assert!(out.starts_with("ID"), "{out}");
    assert!(
        out.contains("first-admin") && out.contains("viewer"),
        "{out}"
    );

    // The viewer may list devices but not make tokens.
    let (ok, out, _) = run(d, &url, &viewer, &["devices", "--json"]);
    assert!(ok);
    assert_eq!(out.trim(), "[]");
    let (ok, _, err) = run(d, &url, &viewer, &["tokens", "enroll"]);
    assert!(!ok);
    assert!(err.contains("403"), "{err}");

    let (ok, _, err) = run(d, &url, &token, &["tokens", "revoke", &ci_id]);
    assert!(ok, "{err}");
    let (ok, _, err) = run(d, &url, &viewer, &["devices"]);
    assert!(!ok);
    assert!(err.contains("401"), "{err}");

    let (ok, out, err) = run(d, &url, &token, &["audit"]);
    assert!(ok, "{err}");
    for action in ["token.create", "enrollment-token.create", "token.revoke"] {
        assert!(out.contains(action), "{action} missing from\n{out}");
    }
    let (ok, _, err) = run(d, &url, &token, &["device", "dev-none"]);
    assert!(!ok);
    assert!(err.contains("404"), "{err}");
    drop(serve);
}

fn the_rollout_commands_sign_what_they_do(kind: Kind, test: &str) {
    let Some(db) = DbFixture::new(kind, test) else {
        return;
    };
    let repo = common::repo::TestRepo::new();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let token = String::from_utf8_lossy(&init(d, &db.url).stdout)
        .trim()
        .to_string();
    let repo_dir = repo.dir.to_str().unwrap();
    // --release refuses the repository's development keys before it listens.
    let refused = Command::new(BIN)
        .args(["serve", "--listen", "127.0.0.1:0", "--dir"])
        .arg(d)
        .args(["--database", &db.url, "--repo", repo_dir, "--release"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success(), "{err}");
    assert!(err.contains("development"), "{err}");
    let (serve, url) = serve(d, &db.url, &["--repo", repo_dir, "--reconcile-every", "1h"]);
    let rollout = |args: &[&str]| {
        let mut all = vec!["rollout"];
        all.extend_from_slice(args);
        run(d, &url, &token, &all)
    };

    let (ok, _, err) = rollout(&[
        "start",
        "--channel",
        "stable",
        "--version",
        "1.1.0",
        "--devices",
        "all",
    ]);
    assert!(!ok);
    assert!(err.contains("400") && err.contains("policy"), "{err}");
    let (ok, out, err) = rollout(&[
        "start",
        "--channel",
        "stable",
        "--version",
        "1.1.0",
        "--devices",
        "all",
        "--waves",
        "50%@0h,100%@1h",
        "--max-failures",
        "1",
        "--json",
    ]);
    assert!(ok, "{err}");
    let started: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(started["state"], "active");
    assert_eq!(started["signed_state"], "active");
    let id = started["id"].as_u64().unwrap();
    let id_text = id.to_string();

    let (ok, out, err) = rollout(&["list"]);
    assert!(ok, "{err}");
    assert!(out.starts_with("ID"), "{out}");
    assert!(
        out.contains("stable 1.1.0") && out.contains("active"),
        "{out}"
    );
    let (ok, out, err) = rollout(&["pause", &id_text]);
    assert!(ok, "{err}");
    assert!(out.contains("paused"), "{out}");
    let (ok, out, err) = rollout(&["halt", &id_text, "--reason", "site 7 reboots"]);
    assert!(ok, "{err}");
    assert!(out.contains("halted"), "{out}");
    let (ok, out, err) = rollout(&["status", &id_text]);
    assert!(ok, "{err}");
    assert!(out.contains("halted: site 7 reboots"), "{out}");
    assert!(out.contains("wave 50% open"), "{out}");
    let (ok, out, err) = rollout(&["resume", &id_text, "--json"]);
    assert!(ok, "{err}");
    let resumed: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(resumed["state"], "active");
    let (ok, _, err) = rollout(&["cancel", &id_text]);
    assert!(ok, "{err}");
    let (ok, _, err) = rollout(&["resume", &id_text]);
    assert!(!ok);
    assert!(err.contains("409") && err.contains("final"), "{err}");
    let (ok, out, err) = rollout(&["status", &id_text, "--json"]);
    assert!(ok, "{err}");
    let detail: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(detail["rollout"]["state"], "cancelled");
    assert_eq!(
        repo.record(id).unwrap().state,
        aperture_release::rollout::State::Cancelled
    );
    drop(serve);
}

#[test]
fn sqlite_the_rollout_commands_sign_what_they_do() {
    the_rollout_commands_sign_what_they_do(Kind::Sqlite, "sqlite cli rollout");
}

#[test]
fn postgres_the_rollout_commands_sign_what_they_do() {
    the_rollout_commands_sign_what_they_do(Kind::Postgres, "postgres cli rollout");
}

#[test]
fn sqlite_the_binary_inits_serves_and_administers() {
    the_binary_inits_serves_and_administers(Kind::Sqlite, "sqlite cli");
}

#[test]
fn postgres_the_binary_inits_serves_and_administers() {
    the_binary_inits_serves_and_administers(Kind::Postgres, "postgres cli");
}
