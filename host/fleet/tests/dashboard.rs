//! The dashboard, for real: the server on 127.0.0.1 with real TLS, devices enrolled and
//! reporting, a rollout that its policy halted, and the page loaded by Debian's chromium
//! (headless, trusting only the server's key for this run), whose DOM is then checked: the
//! counts by version and health, the halted rollout with its failure rate and a chart with a
//! point per time, the audit log (or, for a viewer's token, that it needs an admin's), hostile
//! text shown as text, and a wrong token refused with no data shown.
//!
//! The time series route the charts draw is tested on SQLite and PostgreSQL (`both!`), like
//! every other route. Without chromium the browser tests say they skipped, or fail under
//! `APERTURE_REQUIRE_TOOLS=1` (`cargo xtask test` installs it).

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use aperture_fleet::api::{DeviceSelector, FailurePolicy, Report, StartRollout, UpdateResult};
use aperture_fleet::db;
use aperture_fleet::token::Role;
use base64::Engine;
use common::repo::{CHANNEL, VERSION};
use common::{failed_health, failed_install, report, Device, Fleet, Kind};
use sha2::{Digest, Sha256};

both!(with start_with_repo; the_series_counts_outcomes_over_time);

/// What the API refuses as a serial but a database changed behind its back (or an older
/// version's rows) could hold: the page must show it as text.
const HOSTILE_SERIAL: &str = "<img src=x onerror=alert(1)>";
/// What a device may put in its journal line (only control characters are refused).
const HOSTILE_JOURNAL: &str = "<img src=x onerror=alert(2)>";

fn start_req() -> StartRollout {
    StartRollout {
        channel: CHANNEL.into(),
        version: VERSION.into(),
        devices: DeviceSelector::All,
        waves: "10%@0h,100%@1h".into(),
        // Halts once more than one device failed.
        policy: FailurePolicy {
            max_failures: Some(1),
            max_failure_percent: None,
            min_tried: 1,
        },
    }
}

/// Store `report` of `device` as received at `at` (the same call the report route makes, at a
/// time of the test's choosing, so the series has known points).
fn report_at(f: &Fleet, device: &Device, report: &Report, at: i64) {
    f.server
        .block_on(f.server.db.store_report(&device.id, report, at))
        .expect("storing a report");
}

/// A rollout whose devices reported at four times, the last failure halting it: installed at
/// `base`, failed to install at `base + 60`, installed at `base + 120`, failed its health gate
/// at `base + 180` (devices `d[0..4]`).
fn halted_rollout(f: &Fleet, d: &[Device], base: i64) -> u64 {
    let r = f.admin().start_rollout(&start_req()).expect("starting");
    report_at(f, &d[0], &report(VERSION), base);
    report_at(f, &d[1], &failed_install("1.0.0", VERSION), base + 60);
    report_at(f, &d[2], &report(VERSION), base + 120);
    report_at(f, &d[3], &failed_health(VERSION), base + 180);
    r.id
}

fn the_series_counts_outcomes_over_time(f: Fleet) {
    let d: Vec<Device> = (0..5).map(|i| f.enroll(&format!("SN-{i}"))).collect();
    let base = db::now() - 300;
    let id = halted_rollout(&f, &d, base);
    // A failure reported again, and an installed device reporting again, change nothing.
    d[1].client
        .report(&d[1].id, &failed_install("1.0.0", VERSION))
        .unwrap();
    d[0].client.report(&d[0].id, &report(VERSION)).unwrap();

    let viewer = f.with_role(Role::Viewer);
    let series = viewer
        .rollout_series(id)
        .expect("a viewer reads the series");
    assert_eq!(series.rollout, id);
    let got: Vec<(i64, u64, u64, u64)> = series
        .points
        .iter()
        .map(|p| (p.at - base, p.tried, p.installed, p.failed))
        .collect();
    assert_eq!(
        got,
        [(0, 1, 1, 0), (60, 2, 1, 1), (120, 3, 2, 1), (180, 4, 2, 2)]
    );
    let last = series.points.last().unwrap();
    assert!((last.failure_percent - 50.0).abs() < 1e-9, "{last:?}");
    assert_eq!(
        f.admin().rollout(id).unwrap().rollout.state,
        aperture_release::rollout::State::Halted
    );

    // A report about another release adds nothing; a device that tries it later, a point
    // (a halted rollout still records what its devices say).
    report_at(&f, &d[4], &report("1.0.0"), base + 200);
    assert_eq!(viewer.rollout_series(id).unwrap(), series);
    report_at(&f, &d[4], &report(VERSION), base + 240);
    let later = viewer.rollout_series(id).unwrap();
    assert_eq!(later.points[..4], series.points[..]);
    let p = &later.points[4];
    assert_eq!(
        (p.at - base, p.tried, p.installed, p.failed),
        (240, 5, 3, 2)
    );

    let anonymous = f.anonymous();
    let path = format!("/v1/rollouts/{id}/series");
    assert_eq!(anonymous.raw("GET", &path, b"").unwrap().0, 401);
    assert_eq!(
        viewer.raw("GET", "/v1/rollouts/999/series", b"").unwrap().0,
        404
    );
    let (status, body) = viewer.raw("GET", "/v1/rollouts/x/series", b"").unwrap();
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("id"), "{body}");
}

/// The dashboard's three answers carry the policy and headers, and the page has no inline
/// script for the policy to have to allow.
#[test]
fn the_page_is_served_with_a_strict_policy() {
    let Some(f) = Fleet::start(Kind::Sqlite, "the_page_is_served_with_a_strict_policy") else {
        return;
    };
    let agent = ureq::AgentBuilder::new()
        .tls_config(Arc::new(
            aperture_fleet::client::tls_config(&f.identity.ca_pem, None).unwrap(),
        ))
        .build();
    for (path, mime) in [
        ("/dashboard", "text/html"),
        ("/dashboard/app.js", "text/javascript"),
        ("/dashboard/style.css", "text/css"),
    ] {
        let r = agent
            .get(&format!("{}{path}", f.server.url))
            .call()
            .unwrap_or_else(|e| panic!("GET {path}: {e}"));
        assert_eq!(r.status(), 200, "{path}");
        let header = |name: &str| r.header(name).unwrap_or_default().to_string();
        assert!(header("content-type").starts_with(mime), "{path}");
        let csp = header("content-security-policy");
        for directive in [
            "default-src 'self'",
            "script-src 'self'",
            "frame-ancestors 'none'",
            "object-src 'none'",
        ] {
            assert!(csp.contains(directive), "{path}: {csp}");
        }
        assert!(!csp.contains("unsafe"), "{path}: {csp}");
        assert_eq!(header("x-content-type-options"), "nosniff", "{path}");
        assert_eq!(header("cache-control"), "no-store", "{path}");
        let body = r.into_string().unwrap();
        if path == "/dashboard" {
            assert_eq!(body.matches("<script").count(), 1, "{body}");
            assert!(body.contains(r#"<script src="/dashboard/app.js" defer></script>"#));
            for tag in body.split('<').filter(|t| !t.starts_with('!')) {
                let tag = tag.split('>').next().unwrap_or_default();
                assert!(!tag.contains(" on"), "an inline event handler: <{tag}>");
            }
        }
        if path == "/dashboard/app.js" {
            assert!(!body.contains("innerHTML"), "the script builds no markup");
        }
    }
}

/// Chromium, or `None` when the test skips (a panic under `APERTURE_REQUIRE_TOOLS=1`).
fn chromium(test: &str) -> Option<PathBuf> {
    aperture_sys::tool::for_test("chromium", "chromium", test)
}

/// The base64 SHA-256 of the server key's SubjectPublicKeyInfo: what chromium's
/// `--ignore-certificate-errors-spki-list` trusts, so this run trusts this server's key and
/// nothing else (chromium has no flag to add a CA, short of an NSS database in the profile).
fn server_spki(f: &Fleet) -> String {
    let key = rcgen::KeyPair::from_pem(&f.identity.server_key_pem).expect("the server key");
    base64::engine::general_purpose::STANDARD.encode(Sha256::digest(key.public_key_der()))
}

/// Load `url` in headless chromium with a fresh profile and return the DOM once the page's
/// script is done (virtual time: the budget runs only while no fetch is pending).
fn dump_dom(chromium: &Path, spki: &str, url: &str) -> String {
    let profile = tempfile::tempdir().expect("a profile folder");
    let out = profile.path().join("dom.html");
    let err = profile.path().join("chromium.log");
    let mut child = Command::new(chromium)
        .args([
            "--headless=new",
            "--disable-gpu",
            // As root, chromium refuses to start with its sandbox.
            "--no-sandbox",
            "--no-first-run",
            "--disable-extensions",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-dev-shm-usage",
        ])
        // The SPKI list is honoured only with a profile of the caller's own.
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .arg(format!("--ignore-certificate-errors-spki-list={spki}"))
        .args(["--virtual-time-budget=10000", "--dump-dom", url])
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&out).expect("the DOM file"))
        .stderr(std::fs::File::create(&err).expect("the log file"))
        .spawn()
        .expect("starting chromium");
    let start = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().expect("waiting for chromium") {
            break status;
        }
        if start.elapsed() > Duration::from_secs(120) {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "chromium took over 120 s: {}",
                std::fs::read_to_string(&err).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let dom = std::fs::read_to_string(&out).expect("reading the DOM");
    assert!(
        status.success() && dom.contains("</html>"),
        "chromium failed ({status}): {}",
        std::fs::read_to_string(&err).unwrap_or_default()
    );
    dom
}

/// The DOM's element opening tags that contain `needle` (attributes as chromium prints them).
fn tags_with(dom: &str, needle: &str) -> usize {
    dom.split('<').filter(|t| t.contains(needle)).count()
}

/// A fleet of seven devices, on three versions and in all four states of health, one with a
/// hostile serial and one with a hostile journal line, and a rollout its policy halted.
fn populated(test: &str) -> Option<(Fleet, PathBuf, u64)> {
    let chromium = chromium(test)?;
    let f = Fleet::start_with_repo(Kind::Sqlite, test)?;
    let d: Vec<Device> = (0..7).map(|i| f.enroll(&format!("SN-{i}"))).collect();
    // Reports of the last five minutes, so none of these four is "not reporting".
    let id = halted_rollout(&f, &d, db::now() - 300);
    // Through the device route, over mutual TLS: a device still on 1.0.0.
    let mut hostile = report("1.0.0");
    hostile.last_update = Some(UpdateResult {
        result: "committed".into(),
        version: Some("1.0.0".into()),
        journal: HOSTILE_JOURNAL.into(),
    });
    hostile.runtime = Some(common::runtime_summary());
    d[4].client.report(&d[4].id, &hostile).unwrap();
    // d[5] never reports; its serial was changed behind the API's back.
    f.server
        .block_on(
            sqlx::query("UPDATE devices SET serial = $1 WHERE id = $2")
                .bind(HOSTILE_SERIAL)
                .bind(&d[5].id)
                .execute(f.server.db.pool()),
        )
        .expect("changing a serial");
    f.admin().revoke_device(&d[6].id).unwrap();
    Some((f, chromium, id))
}

#[test]
fn the_dashboard_shows_the_fleet_in_a_browser() {
    let test = "the_dashboard_shows_the_fleet_in_a_browser";
    let Some((f, chromium, id)) = populated(test) else {
        return;
    };
    let url = format!("{}/dashboard#token={}", f.server.url, f.admin_token);
    let dom = dump_dom(&chromium, &server_spki(&f), &url);
    assert!(dom.contains(r#"<body data-state="ready">"#), "{dom}");

    // Seven devices; counts by version leave the revoked one out.
    assert_eq!(tags_with(&dom, r#"class="device""#), 7, "{dom}");
    // The runtime's summary, where a device sent one.
    assert_eq!(tags_with(&dom, r#"data-runtime="fresh""#), 1, "{dom}");
    assert!(
        dom.contains("<td>1/2 streaming (yard stalled), p50 41.5 ms, cpu</td>"),
        "{dom}"
    );
    for (version, n) in [("1.0.0", 2), (VERSION, 3), ("(no report yet)", 1)] {
        assert!(
            dom.contains(&format!(
                r#"class="version-count" data-version="{version}" data-count="{n}""#
            )),
            "{version}: {dom}"
        );
    }
    for (health, n) in [
        ("healthy", 4),
        ("failed-health", 1),
        ("not-reporting", 1),
        ("revoked", 1),
    ] {
        assert!(
            dom.contains(&format!(r#"data-health="{health}" data-count="{n}""#)),
            "{health}: {dom}"
        );
    }

    // The halted rollout: two of four failed, a chart with a point per time in each line.
    assert!(
        dom.contains(&format!(
            r#"class="rollout" data-id="{id}" data-state="halted" data-failure-percent="50""#
        )),
        "{dom}"
    );
    assert!(
        dom.contains(r#"<td data-key="failure rate">50 %</td>"#),
        "{dom}"
    );
    assert!(dom.contains("2 devices failed"), "the halt reason: {dom}");
    assert!(dom.contains(r#"data-points="4""#), "{dom}");
    assert_eq!(tags_with(&dom, r#"circle class="point failure""#), 4);
    assert_eq!(tags_with(&dom, r#"circle class="point installs""#), 4);
    assert_eq!(
        tags_with(&dom, "polyline"),
        2 * 2,
        "two lines, opened and closed"
    );

    // The audit log, newest first, with the policy's halt.
    assert!(dom.contains(r#"class="audit-entry" data-action="rollout.halt""#));
    assert!(dom.contains(r#"class="audit-entry" data-action="rollout.start""#));
    assert!(dom.contains(r#"class="audit-entry" data-action="device.revoke""#));

    // Hostile text is text: escaped in the DOM, and no element was made of it.
    assert!(dom.contains("&lt;img src=x onerror=alert(1)&gt;"), "{dom}");
    assert!(dom.contains("&lt;img src=x onerror=alert(2)&gt;"), "{dom}");
    assert!(!dom.contains("<img"), "an element was injected: {dom}");
    // The token is nowhere in the page the script built.
    assert!(!dom.contains(&f.admin_token), "{dom}");

    // A viewer sees the fleet, and is told the audit log needs an admin.
    let viewer = f
        .admin()
        .create_token("dashboard-viewer", Role::Viewer)
        .unwrap();
    let url = format!("{}/dashboard#token={}", f.server.url, viewer.token);
    let dom = dump_dom(&chromium, &server_spki(&f), &url);
    assert!(dom.contains(r#"<body data-state="ready">"#), "{dom}");
    assert_eq!(tags_with(&dom, r#"class="device""#), 7, "{dom}");
    assert!(dom.contains("The audit log needs an admin token."), "{dom}");
    assert_eq!(tags_with(&dom, "audit-entry"), 0, "{dom}");
}

#[test]
fn a_wrong_token_shows_an_error_and_no_data() {
    let test = "a_wrong_token_shows_an_error_and_no_data";
    let Some((f, chromium, _)) = populated(test) else {
        return;
    };
    let spki = server_spki(&f);
    let url = format!("{}/dashboard#token=apf-admin-wrong", f.server.url);
    let dom = dump_dom(&chromium, &spki, &url);
    assert!(dom.contains(r#"<body data-state="error">"#), "{dom}");
    assert!(dom.contains("The API refused this token (401)"), "{dom}");
    assert_eq!(tags_with(&dom, r#"class="device""#), 0, "{dom}");
    assert_eq!(tags_with(&dom, "audit-entry"), 0, "{dom}");
    assert!(!dom.contains("SN-0"), "{dom}");
    assert!(!dom.contains("<svg"), "{dom}");

    // Without a token, the form asks for one.
    let dom = dump_dom(&chromium, &spki, &format!("{}/dashboard", f.server.url));
    assert!(dom.contains(r#"<body data-state="login">"#), "{dom}");
    assert!(dom.contains("Enter an API token."), "{dom}");
    assert!(!dom.contains(r#"<form id="login" hidden"#), "{dom}");
    assert!(!dom.contains("SN-0"), "{dom}");
}
