//! The rollout engine, for real: the server on 127.0.0.1 with its own TUF repository (a
//! published release, the rollouts role delegated), devices enrolled and reporting over mutual
//! TLS, every case on SQLite and on a PostgreSQL of the test's own (`both!`).
//!
//! The failure policy halts by count, and by percentage only from `min_tried` on, in the
//! transaction of the report that tips it, once (audited as `policy`), and the halt reaches
//! the repository's signed record, as a device's TUF client reads it. Devices the rollout does
//! not name (another tag, another channel, pinned, another release) do not count. State
//! changes and pins round-trip and are signed; each role stops at its boundary; bad input is a
//! 400 naming the field. A repository left stale (a crash between commit and signature) is
//! re-signed at start and by the periodic reconcile. Two servers reporting failures at once
//! halt once.

mod common;

use std::sync::Barrier;
use std::time::{Duration, Instant};

use aperture_fleet::api::{
    AuditEntry, DeviceSelector, FailurePolicy, Outcome, RolloutInfo, StartRollout,
};
use aperture_fleet::client::{Client, Error};
use aperture_fleet::token::Role;
use aperture_release::rollout::{Selection, State};
use common::repo::{CHANNEL, OTHER_VERSION, VERSION};
use common::{failed_health, failed_install, report, Device, Fleet, TestServer};

both!(with start_with_repo;
    a_count_policy_halts_once_and_the_halt_is_signed,
    a_percentage_policy_waits_for_min_tried,
    a_success_reaching_min_tried_over_the_limit_halts,
    devices_outside_the_rollout_do_not_count,
    state_changes_and_pins_round_trip_and_are_signed,
    roles_and_bad_input_are_refused,
    reconcile_heals_a_stale_repository,
    two_servers_reporting_failures_halt_once,
);

fn count(max: u64) -> FailurePolicy {
    FailurePolicy {
        max_failures: Some(max),
        max_failure_percent: None,
        min_tried: 1,
    }
}

fn start_req(devices: DeviceSelector, policy: FailurePolicy) -> StartRollout {
    StartRollout {
        channel: CHANNEL.into(),
        version: VERSION.into(),
        devices,
        waves: "10%@0h,100%@1h".into(),
        policy,
    }
}

fn devices(f: &Fleet, n: usize) -> Vec<Device> {
    (0..n).map(|i| f.enroll(&format!("SN-{i}"))).collect()
}

/// The policy's halt lines of the audit log.
fn policy_halts(f: &Fleet) -> Vec<AuditEntry> {
    f.admin()
        .audit(1000)
        .unwrap()
        .into_iter()
        .filter(|l| l.action == "rollout.halt" && l.actor == "policy")
        .collect()
}

fn now_state(f: &Fleet, id: u64) -> RolloutInfo {
    f.admin().rollout(id).unwrap().rollout
}

/// The error status of a call (`None`: it succeeded).
fn status<T>(r: Result<T, Error>) -> Option<u16> {
    match r {
        Ok(_) => None,
        Err(e) => Some(e.status().unwrap_or_else(|| panic!("no answer: {e:#}"))),
    }
}

fn message<T: std::fmt::Debug>(r: Result<T, Error>) -> (u16, String) {
    let e = r.expect_err("refused");
    (e.status().expect("an answer"), e.to_string())
}

fn a_count_policy_halts_once_and_the_halt_is_signed(f: Fleet) {
    let d = devices(&f, 4);
    let r = f
        .admin()
        .start_rollout(&start_req(DeviceSelector::All, count(1)))
        .unwrap();
    assert_eq!(
        (r.state, r.signed_state),
        (State::Active, Some(State::Active))
    );
    assert_eq!((r.progress.named, r.progress.pending), (4, 4));
    let signed = f.repo().record(r.id).expect("signed at start");
    assert_eq!(
        (signed.state, signed.devices),
        (State::Active, Selection::All)
    );
    assert_eq!(signed.waves.to_string(), "10%@0h,100%@1h");

    // One failure is within the policy, however often it is reported.
    for _ in 0..2 {
        d[0].client
            .report(&d[0].id, &failed_install("1.0.0", VERSION))
            .unwrap();
    }
    d[1].client.report(&d[1].id, &report(VERSION)).unwrap();
    assert_eq!(now_state(&f, r.id).state, State::Active);
    assert!(policy_halts(&f).is_empty());

    // The second failing device tips it: halted in that report's transaction, and signed.
    d[2].client
        .report(&d[2].id, &failed_health(VERSION))
        .unwrap();
    let after = f.admin().rollout(r.id).unwrap();
    let info = &after.rollout;
    assert_eq!(info.state, State::Halted);
    assert_eq!(info.signed_state, Some(State::Halted));
    let reason = info.halt_reason.as_deref().unwrap();
    assert!(reason.contains("2 devices failed"), "{reason}");
    let p = &info.progress;
    assert_eq!(
        (
            p.named,
            p.pending,
            p.installed,
            p.failed_install,
            p.failed_health
        ),
        (4, 1, 1, 1, 1)
    );
    assert!((p.failure_percent - 200.0 / 3.0).abs() < 0.01, "{p:?}");
    let by: Vec<(&str, Outcome)> = after
        .outcomes
        .iter()
        .map(|o| (o.device.as_str(), o.outcome))
        .collect();
    assert!(
        by.contains(&(d[0].id.as_str(), Outcome::FailedInstall)),
        "{by:?}"
    );
    assert!(
        by.contains(&(d[2].id.as_str(), Outcome::FailedHealth)),
        "{by:?}"
    );
    let failed = after.outcomes.iter().find(|o| o.device == d[2].id).unwrap();
    assert_eq!(failed.detail, "aperture-runtime.service failed");

    let halts = policy_halts(&f);
    assert_eq!(halts.len(), 1, "{halts:?}");
    assert_eq!(halts[0].target, format!("rollout-{}", r.id));
    assert_eq!(halts[0].detail["device"], d[2].id.as_str());
    assert_eq!(halts[0].detail["failed"], 2);
    assert_eq!(f.repo().record(r.id).unwrap().state, State::Halted);
    let seen = f.repo().seen_by_a_device();
    assert_eq!(seen.len(), 1);
    assert_eq!((seen[0].id, seen[0].state), (r.id, State::Halted));

    // Another failure while halted halts nothing more.
    d[3].client
        .report(&d[3].id, &failed_health(VERSION))
        .unwrap();
    assert_eq!(policy_halts(&f).len(), 1);
    assert_eq!(now_state(&f, r.id).progress.failed_health, 2);

    // Resumed, the devices that failed before do not halt it again by repeating themselves.
    let rm = f.with_role(Role::ReleaseManager);
    let resumed = rm.rollout_state(r.id, "resume", None).unwrap();
    assert_eq!((resumed.state, resumed.halt_reason), (State::Active, None));
    for dev in [&d[0], &d[2], &d[3]] {
        let again = if dev.id == d[0].id {
            failed_install("1.0.0", VERSION)
        } else {
            failed_health(VERSION)
        };
        dev.client.report(&dev.id, &again).unwrap();
    }
    assert_eq!(now_state(&f, r.id).state, State::Active);
    assert_eq!(policy_halts(&f).len(), 1);
    // A new failure does (three failed devices are still above one).
    d[1].client
        .report(&d[1].id, &failed_health(VERSION))
        .unwrap();
    assert_eq!(now_state(&f, r.id).state, State::Halted);
    assert_eq!(policy_halts(&f).len(), 2);
}

fn a_percentage_policy_waits_for_min_tried(f: Fleet) {
    let d = devices(&f, 5);
    let policy = FailurePolicy {
        max_failures: None,
        max_failure_percent: Some(40),
        min_tried: 3,
    };
    let r = f
        .admin()
        .start_rollout(&start_req(DeviceSelector::All, policy))
        .unwrap();
    // 1 of 1 failed (100 %), but fewer than 3 tried: not yet.
    d[0].client
        .report(&d[0].id, &failed_health(VERSION))
        .unwrap();
    assert_eq!(now_state(&f, r.id).state, State::Active);
    d[1].client.report(&d[1].id, &report(VERSION)).unwrap();
    d[2].client.report(&d[2].id, &report(VERSION)).unwrap();
    // 1 of 3 (33 %) is within 40 %.
    let info = now_state(&f, r.id);
    assert_eq!(info.state, State::Active);
    assert!((info.progress.failure_percent - 100.0 / 3.0).abs() < 0.01);
    assert!(policy_halts(&f).is_empty());
    // 2 of 4 (50 %) is not.
    d[3].client
        .report(&d[3].id, &failed_install("1.0.0", VERSION))
        .unwrap();
    let info = now_state(&f, r.id);
    assert_eq!(info.state, State::Halted);
    assert_eq!(info.signed_state, Some(State::Halted));
    assert!(
        info.halt_reason.as_deref().unwrap().contains("2 of 4"),
        "{:?}",
        info.halt_reason
    );
    assert_eq!(policy_halts(&f).len(), 1);
    assert_eq!(f.repo().seen_by_a_device()[0].state, State::Halted);
}

/// The try that reaches `min_tried` may be a success that leaves the rate over the limit:
/// that report halts the rollout, not the next failure (which might never come).
fn a_success_reaching_min_tried_over_the_limit_halts(f: Fleet) {
    let d = devices(&f, 20);
    let policy = FailurePolicy {
        max_failures: None,
        max_failure_percent: Some(5),
        min_tried: 20,
    };
    let r = f
        .admin()
        .start_rollout(&start_req(DeviceSelector::All, policy))
        .unwrap();
    // Two failures among the first 19 tries: over 5 %, but fewer than 20 tried.
    for (i, dev) in d[..19].iter().enumerate() {
        let sent = if i == 3 || i == 11 {
            failed_health(VERSION)
        } else {
            report(VERSION)
        };
        dev.client.report(&dev.id, &sent).unwrap();
    }
    assert_eq!(now_state(&f, r.id).state, State::Active);
    assert!(policy_halts(&f).is_empty());
    // The 20th try succeeds: 2 of 20 (10 %) failed, so this report halts it.
    d[19].client.report(&d[19].id, &report(VERSION)).unwrap();
    let info = now_state(&f, r.id);
    assert_eq!(info.state, State::Halted, "{info:?}");
    assert_eq!(info.signed_state, Some(State::Halted));
    assert!(
        info.halt_reason.as_deref().unwrap().contains("2 of 20"),
        "{:?}",
        info.halt_reason
    );
    let halts = policy_halts(&f);
    assert_eq!(halts.len(), 1, "{halts:?}");
    assert_eq!(halts[0].detail["device"], d[19].id.as_str());
    assert_eq!(f.repo().seen_by_a_device()[0].state, State::Halted);
    // Moving a counted device forward (installed, then committed) evaluates nothing new.
    let resumed = f
        .with_role(Role::ReleaseManager)
        .rollout_state(r.id, "resume", None)
        .unwrap();
    assert_eq!(resumed.state, State::Active);
    d[0].client.report(&d[0].id, &report(VERSION)).unwrap();
    assert_eq!(now_state(&f, r.id).state, State::Active);
    assert_eq!(policy_halts(&f).len(), 1);
}

fn devices_outside_the_rollout_do_not_count(f: Fleet) {
    let [a, b, c, other_channel]: [Device; 4] = devices(&f, 4).try_into().ok().unwrap();
    let op = f.with_role(Role::Operator);
    for dev in [&a, &b, &other_channel] {
        op.set_tags(&dev.id, vec!["canary".into()]).unwrap();
    }
    f.admin().set_channel(&other_channel.id, "beta").unwrap();
    let r = f
        .admin()
        .start_rollout(&start_req(DeviceSelector::Tag("canary".into()), count(0)))
        .unwrap();
    let mut named = vec![a.id.clone(), b.id.clone()];
    named.sort();
    assert_eq!(r.devices.as_ref(), Some(&named));
    assert_eq!(r.progress.named, 2);
    assert_eq!(
        f.repo().record(r.id).unwrap().devices,
        Selection::Devices(named.clone())
    );

    // Not tagged; on another channel; about another release: none of them count.
    c.client.report(&c.id, &failed_health(VERSION)).unwrap();
    other_channel
        .client
        .report(&other_channel.id, &failed_health(VERSION))
        .unwrap();
    b.client
        .report(&b.id, &failed_install("1.0.0", OTHER_VERSION))
        .unwrap();
    // Pinned: held where it is, so its reports do not count either.
    let pinned = op.pin(r.id, &a.id, true).unwrap();
    assert_eq!(pinned.pinned, vec![a.id.clone()]);
    assert_eq!(pinned.progress.named, 1);
    assert_eq!(f.repo().record(r.id).unwrap().pinned, vec![a.id.clone()]);
    a.client.report(&a.id, &failed_health(VERSION)).unwrap();

    let detail = f.admin().rollout(r.id).unwrap();
    assert_eq!(detail.rollout.state, State::Active);
    assert!(detail.outcomes.is_empty(), "{:?}", detail.outcomes);
    assert!(policy_halts(&f).is_empty());

    // A named device's failure halts it (max 0), and only that device is recorded.
    b.client.report(&b.id, &failed_health(VERSION)).unwrap();
    let detail = f.admin().rollout(r.id).unwrap();
    assert_eq!(detail.rollout.state, State::Halted);
    let recorded: Vec<&str> = detail.outcomes.iter().map(|o| o.device.as_str()).collect();
    assert_eq!(recorded, [b.id.as_str()]);
    assert_eq!(policy_halts(&f).len(), 1);
}

fn state_changes_and_pins_round_trip_and_are_signed(f: Fleet) {
    let d = f.enroll("SN-1");
    let op = f.with_role(Role::Operator);
    let rm = f.with_role(Role::ReleaseManager);
    let r = rm
        .start_rollout(&start_req(
            DeviceSelector::List(vec![d.id.clone()]),
            count(3),
        ))
        .unwrap();
    let signed = |f: &Fleet| f.repo().record(r.id).unwrap();

    let paused = op.rollout_state(r.id, "pause", None).unwrap();
    assert_eq!(
        (paused.state, paused.signed_state),
        (State::Paused, Some(State::Paused))
    );
    assert_eq!(signed(&f).state, State::Paused);
    // Asking again changes nothing and is not audited twice.
    assert_eq!(
        op.rollout_state(r.id, "pause", None).unwrap().state,
        State::Paused
    );

    let halted = op
        .rollout_state(r.id, "halt", Some("bad batch at site 7".into()))
        .unwrap();
    assert_eq!(halted.state, State::Halted);
    assert_eq!(halted.halt_reason.as_deref(), Some("bad batch at site 7"));
    assert_eq!(signed(&f).state, State::Halted);
    // Pause needs an active rollout.
    let (code, text) = message(op.rollout_state(r.id, "pause", None));
    assert_eq!(code, 409, "{text}");
    assert!(text.contains("halted"), "{text}");

    let resumed = rm.rollout_state(r.id, "resume", None).unwrap();
    assert_eq!((resumed.state, resumed.halt_reason), (State::Active, None));
    assert_eq!(signed(&f).state, State::Active);

    assert_eq!(
        op.pin(r.id, &d.id, true).unwrap().pinned,
        vec![d.id.clone()]
    );
    assert_eq!(signed(&f).pinned, vec![d.id.clone()]);
    assert!(op.pin(r.id, &d.id, false).unwrap().pinned.is_empty());
    assert!(signed(&f).pinned.is_empty());

    let cancelled = rm.rollout_state(r.id, "cancel", None).unwrap();
    assert_eq!(cancelled.state, State::Cancelled);
    assert_eq!(f.repo().seen_by_a_device()[0].state, State::Cancelled);
    // Cancelled is final.
    for result in [
        rm.rollout_state(r.id, "resume", None),
        op.rollout_state(r.id, "halt", None),
        op.pin(r.id, &d.id, true),
    ] {
        let (code, text) = message(result);
        assert_eq!(code, 409, "{text}");
        assert!(text.contains("final"), "{text}");
    }

    // The release may be rolled out again; its record in the repository is the new one's.
    let again = rm
        .start_rollout(&start_req(DeviceSelector::All, count(3)))
        .unwrap();
    assert!(again.id > r.id);
    let seen = f.repo().seen_by_a_device();
    assert_eq!(seen.len(), 1);
    assert_eq!((seen[0].id, seen[0].state), (again.id, State::Active));
    // The cancelled one no longer has a signed record of its own.
    assert_eq!(f.admin().rollout(r.id).unwrap().rollout.signed_state, None);
    // ...but only one live rollout per release.
    let (code, text) = message(rm.start_rollout(&start_req(DeviceSelector::All, count(3))));
    assert_eq!(code, 409, "{text}");
    assert!(text.contains(&format!("rollout {}", again.id)), "{text}");
    let listed: Vec<u64> = f.admin().rollouts().unwrap().iter().map(|r| r.id).collect();
    assert_eq!(listed, [again.id, r.id], "newest first");

    // Every change is audited with who did it; the no-op pause is not.
    let audit = f.admin().audit(100).unwrap();
    let by = |action: &str, who: &str| {
        audit
            .iter()
            .filter(|l| {
                l.action == action
                    && l.actor.contains(who)
                    && l.target == format!("rollout-{}", r.id)
            })
            .count()
    };
    assert_eq!(by("rollout.start", "test-release-manager"), 1);
    assert_eq!(by("rollout.pause", "test-operator"), 1);
    assert_eq!(by("rollout.halt", "test-operator"), 1);
    assert_eq!(by("rollout.resume", "test-release-manager"), 1);
    assert_eq!(by("rollout.pin", "test-operator"), 1);
    assert_eq!(by("rollout.unpin", "test-operator"), 1);
    assert_eq!(by("rollout.cancel", "test-release-manager"), 1);
    let halt = audit
        .iter()
        .find(|l| l.action == "rollout.halt" && l.target == format!("rollout-{}", r.id))
        .unwrap();
    assert_eq!(halt.detail["reason"], "bad batch at site 7");
    assert_eq!(halt.detail["from"], "paused");
}

fn roles_and_bad_input_are_refused(f: Fleet) {
    let d = f.enroll("SN-1");
    let viewer = f.with_role(Role::Viewer);
    let op = f.with_role(Role::Operator);
    let rm = f.with_role(Role::ReleaseManager);
    let req = start_req(DeviceSelector::All, count(1));

    // Roles: a viewer reads but may not start; an operator stops but may not go on or end.
    assert_eq!(status(viewer.start_rollout(&req)), Some(403));
    assert_eq!(status(op.start_rollout(&req)), Some(403));
    let r = rm.start_rollout(&req).unwrap();
    assert_eq!(status(viewer.rollouts()), None);
    assert_eq!(status(viewer.rollout(r.id)), None);
    assert_eq!(status(viewer.rollout_state(r.id, "pause", None)), Some(403));
    assert_eq!(status(viewer.pin(r.id, &d.id, true)), Some(403));
    assert_eq!(status(op.rollout_state(r.id, "halt", None)), None);
    assert_eq!(status(op.rollout_state(r.id, "resume", None)), Some(403));
    assert_eq!(status(op.rollout_state(r.id, "cancel", None)), Some(403));
    assert_eq!(status(rm.rollout_state(r.id, "resume", None)), None);
    assert_eq!(status(f.anonymous().rollouts()), Some(401));
    assert_eq!(now_state(&f, r.id).state, State::Active);

    // Unknown rollouts and verbs.
    assert_eq!(status(viewer.rollout(9999)), Some(404));
    assert_eq!(status(op.rollout_state(9999, "pause", None)), Some(404));
    let (code, text) = f.admin().raw("GET", "/v1/rollouts/latest", b"").unwrap();
    assert_eq!(code, 400, "{text}");
    assert!(text.contains("`id`"), "{text}");
    let (code, _) = f
        .admin()
        .raw("POST", &format!("/v1/rollouts/{}/explode", r.id), b"")
        .unwrap();
    assert_eq!(code, 404);

    // An unpublished release: 404 naming it and the fix.
    let mut unpublished = req.clone();
    unpublished.version = "9.9.9".into();
    let (code, text) = message(rm.start_rollout(&unpublished));
    assert_eq!(code, 404, "{text}");
    assert!(
        text.contains("9.9.9") && text.contains("aperture release publish"),
        "{text}"
    );

    // Bad fields: 400 naming each (of the other release, which has no rollout yet).
    let mut other = req.clone();
    other.version = OTHER_VERSION.into();
    let good = serde_json::to_value(&other).unwrap();
    let cases: Vec<(serde_json::Value, &str)> = vec![
        (with(&good, "waves", "10%".into()), "waves"),
        (with(&good, "version", "one".into()), "version"),
        (with(&good, "channel", "Stable!".into()), "channel"),
        (with(&good, "policy", serde_json::json!({})), "policy"),
        (
            with(
                &good,
                "policy",
                serde_json::json!({"max_failure_percent": 120}),
            ),
            "policy.max_failure_percent",
        ),
        (
            with(
                &good,
                "devices",
                serde_json::json!({"list": ["dev-nobody"]}),
            ),
            "devices.list[0]",
        ),
        (
            with(&good, "devices", serde_json::json!({"tag": "nowhere"})),
            "devices.tag",
        ),
        (with(&good, "devices", "some".into()), "devices"),
        (with(&good, "surprise", true.into()), "surprise"),
    ];
    for (body, field) in cases {
        let (code, text) = rm
            .raw("POST", "/v1/rollouts", body.to_string().as_bytes())
            .unwrap();
        assert_eq!(code, 400, "{field}: {text}");
        assert!(text.contains(field), "{field} not named in {text}");
    }
    let (code, text) = message(op.pin(r.id, "dev-nobody", true));
    assert_eq!(code, 400, "{text}");
    assert!(text.contains("`device`"), "{text}");
    let (code, text) = op
        .raw(
            "POST",
            &format!("/v1/rollouts/{}/halt", r.id),
            br#"{"why": "x"}"#,
        )
        .unwrap();
    assert_eq!(code, 400, "{text}");
    assert!(text.contains("why"), "{text}");
    assert_eq!(f.admin().rollouts().unwrap().len(), 1);

    // A server without --repo reads rollouts but changes none, and says which flag it lacks.
    let plain = TestServer::start(&f.db.url, &f.identity);
    let plain_rm = f.client_of(&plain, Some(&f.admin_token));
    let listed = plain_rm.rollouts().unwrap();
    assert_eq!((listed.len(), listed[0].signed_state), (1, None));
    let (code, text) = message(plain_rm.rollout_state(r.id, "pause", None));
    assert_eq!(code, 503, "{text}");
    assert!(text.contains("--repo"), "{text}");
    let (code, _) = message(plain_rm.start_rollout(&unpublished));
    assert_eq!(code, 503);
}

fn with(v: &serde_json::Value, key: &str, value: serde_json::Value) -> serde_json::Value {
    let mut v = v.clone();
    v[key] = value;
    v
}

fn reconcile_heals_a_stale_repository(f: Fleet) {
    let r = f
        .admin()
        .start_rollout(&start_req(DeviceSelector::All, count(1)))
        .unwrap();
    // A crash between the commit and the signature: the database says paused, the
    // repository still active.
    f.server
        .block_on(
            sqlx::query("UPDATE rollouts SET state = 'paused' WHERE id = $1")
                .bind(r.id as i64)
                .execute(f.server.db.pool()),
        )
        .unwrap();
    let info = now_state(&f, r.id);
    assert_eq!(
        (info.state, info.signed_state),
        (State::Paused, Some(State::Active))
    );
    assert_eq!(f.repo().record(r.id).unwrap().state, State::Active);

    // A server starting reconciles first.
    let restarted = f.second_server_reconciling(Duration::from_secs(1));
    assert_eq!(f.repo().record(r.id).unwrap().state, State::Paused);
    assert_eq!(f.repo().seen_by_a_device()[0].state, State::Paused);

    // Made stale again behind the servers' back (an old record signed anew): the periodic
    // reconcile puts the database's state back.
    let mut stale = f.repo().record(r.id).unwrap();
    stale.state = State::Active;
    // Under the servers' own folder lock, or the periodic reconcile would sign at the same
    // time.
    let made_stale = f.repo().locked(|| {
        aperture_repo::Repo::open(&f.repo().dir)
            .unwrap()
            .set_rollout(&stale, jiff::Timestamp::now(), false)
            .unwrap();
        f.repo().record(r.id).unwrap().state
    });
    assert_eq!(made_stale, State::Active);
    let start = Instant::now();
    while f.repo().record(r.id).unwrap().state != State::Paused {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "the periodic reconcile did not re-sign the record"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(f.repo().seen_by_a_device()[0].state, State::Paused);
    drop(restarted);
}

fn two_servers_reporting_failures_halt_once(f: Fleet) {
    let second = f.second_server();
    let d = devices(&f, 8);
    // Only the last of the eight failures tips it: two reports counted at once, each blind to
    // the other, would both see seven and miss the halt; counted one after the other, the
    // last sees eight.
    let r = f
        .admin()
        .start_rollout(&start_req(DeviceSelector::All, count(7)))
        .unwrap();
    // Half the devices report through each server, all at once.
    let clients: Vec<(String, Client)> = d
        .iter()
        .enumerate()
        .map(|(i, dev)| {
            let server = if i % 2 == 0 { &f.server } else { &second };
            let client =
                Client::new(&server.url, &f.identity.ca_pem, None, Some(&dev.identity)).unwrap();
            (dev.id.clone(), client)
        })
        .collect();
    let barrier = Barrier::new(clients.len());
    std::thread::scope(|s| {
        for (id, client) in &clients {
            let barrier = &barrier;
            s.spawn(move || {
                barrier.wait();
                client.report(id, &failed_health(VERSION)).unwrap();
            });
        }
    });
    let halts = policy_halts(&f);
    assert_eq!(halts.len(), 1, "{halts:?}");
    assert_eq!(halts[0].detail["failed"], 8, "{:?}", halts[0].detail);
    let detail = f.admin().rollout(r.id).unwrap();
    assert_eq!(detail.rollout.state, State::Halted);
    assert_eq!(detail.rollout.progress.failed_health, 8);
    assert_eq!(detail.outcomes.len(), 8);
    // Both servers signed into one repository, one after the other: it loads, and says halted.
    assert_eq!(f.repo().record(r.id).unwrap().state, State::Halted);
    assert_eq!(f.repo().seen_by_a_device()[0].state, State::Halted);
    let through_b = f.client_of(&second, Some(&f.admin_token));
    assert_eq!(
        through_b.rollout(r.id).unwrap().rollout.signed_state,
        Some(State::Halted)
    );
}
