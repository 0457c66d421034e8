//! The `aperture-fleet` binary end to end, on SQLite and PostgreSQL: `init` makes the identity
//! and prints the first admin token once; `serve` (a process of its own) answers the admin
//! commands (`tokens create|list|revoke|enroll`, `devices`, `device`, `audit`), as tables and
//! as JSON, with the connection given by flags or by environment variables.

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

fn the_binary_inits_serves_and_administers(kind: Kind, test: &str) {
    let Some(db) = DbFixture::new(kind, test) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let init = |db_url: &str| {
        Command::new(BIN)
            .args(["init", "--dir"])
            .arg(d)
            .args(["--database", db_url])
            .stdin(Stdio::null())
            .output()
            .unwrap()
    };
    let first = init(&db.url);
    assert!(
        first.status.success(),
        "{}",
        String::from_utf8_lossy(&first.stderr)
    );
    let token = String::from_utf8_lossy(&first.stdout).trim().to_string();
    assert!(token.starts_with("apf-admin-"), "{token}");
    // Again: the identity is kept and no second token is printed.
    let second = init(&db.url);
    assert!(second.status.success());
    assert!(second.stdout.is_empty());

    let mut child = Command::new(BIN)
        .args(["serve", "--listen", "127.0.0.1:0", "--dir"])
        .arg(d)
        .args(["--database", &db.url])
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

#[test]
fn sqlite_the_binary_inits_serves_and_administers() {
    the_binary_inits_serves_and_administers(Kind::Sqlite, "sqlite cli");
}

#[test]
fn postgres_the_binary_inits_serves_and_administers() {
    the_binary_inits_serves_and_administers(Kind::Postgres, "postgres cli");
}
