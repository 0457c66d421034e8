//! A simulated fleet against the real server (issue 16, "must show" 2): devices enrolled
//! through the appliance's own enrollment, reporting over mutual TLS 1.3, deciding whether to
//! start from the signed rollouts role as the appliance's update loop does
//! (aperture-fleet-sim). A release fails its health gate on every tenth device; a policy of
//! 5 % halts the rollout by itself; no device whose poll began after the halt was signed
//! starts the release, and those that started after the threshold was crossed without being
//! in flight at it (they polled while the halt was being committed and signed, so they were
//! in flight with respect to the signed halt) are at most one per worker thread. On SQLite and
//! PostgreSQL.
//!
//! 1,000 devices on each database in the normal tier (about 17 s each in a debug build with
//! the machine to itself).

mod common;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use aperture_fleet::api::{DeviceSelector, FailurePolicy, StartRollout};
use aperture_fleet_sim::{enroll_all, run_rollout, work_dir, Image, RolloutPlan, Trace};
use aperture_release::rollout::State;
use common::repo::{CHANNEL, VERSION};
use common::Fleet;

both!(with start_with_one_release;
    a_fleet_of_1000_halts_a_bad_release,
);

/// Devices polling, reporting and installing at once (worker threads).
const CONCURRENCY: usize = 16;
/// The simulated download and install, and again the reboot and health gate: a device is in
/// flight for twice this. Devices that poll while a halt is being committed and signed still
/// see the rollout active, so those starting after the threshold stay fewer than those in
/// flight only while signing takes less than an install (here at most about 2.5 s in a debug
/// build under load; an appliance's install takes minutes): the test checks that too.
const STEP: Duration = Duration::from_secs(2);
/// The policy: halt above 5 % failed, once at least this many devices tried.
const MIN_TRIED: u64 = 20;

fn a_fleet_of_1000_halts_a_bad_release(f: Fleet) {
    halts_a_bad_release(f, 1000);
}

/// Every tenth device (7, 17, 27, ...) fails the new release's health gate.
fn fails_health(i: usize) -> bool {
    i % 10 == 7
}

fn halts_a_bad_release(f: Fleet, n: usize) {
    let began = Instant::now();
    let tokens = f.enrollment_tokens(n as u32, 3600);
    let work = work_dir().unwrap();
    let devices = enroll_all(
        &f.server.url,
        &f.identity.ca_pem,
        &tokens,
        work.path(),
        CONCURRENCY,
    )
    .unwrap();
    let enrolled = began.elapsed();
    assert_eq!(devices.len(), n);
    assert_eq!(f.admin().devices().unwrap().len(), n);

    let r = f
        .admin()
        .start_rollout(&StartRollout {
            channel: CHANNEL.into(),
            version: VERSION.into(),
            devices: DeviceSelector::All,
            waves: "100%@0h".into(),
            policy: FailurePolicy {
                max_failures: None,
                max_failure_percent: Some(5),
                min_tried: MIN_TRIED,
            },
        })
        .unwrap();
    let played = Instant::now();
    let traces = run_rollout(
        &devices,
        &RolloutPlan {
            repo: &f.repo().dir,
            image: Image {
                product: "aperture-edge".into(),
                board: "qemu-x86_64".into(),
                channel: CHANNEL.into(),
                from: "1.0.0".parse().unwrap(),
                floor: 1,
            },
            fails_health: &fails_health,
            concurrency: CONCURRENCY,
            step: STEP,
            deadline: Duration::from_secs(300),
        },
    );
    let played = played.elapsed();
    let errors: Vec<(usize, &str)> = traces
        .iter()
        .filter_map(|t| Some((t.index, t.error.as_deref()?)))
        .collect();
    assert!(
        errors.is_empty(),
        "{} devices failed: {errors:?}",
        errors.len()
    );

    // The rollout halted by itself, once, in the transaction of one device's report.
    let detail = f.admin().rollout(r.id).unwrap();
    assert_eq!(detail.rollout.state, State::Halted, "{:?}", detail.rollout);
    assert_eq!(detail.rollout.signed_state, Some(State::Halted));
    let halts: Vec<_> = f
        .admin()
        .audit(1000)
        .unwrap()
        .into_iter()
        .filter(|l| l.action == "rollout.halt" && l.actor == "policy")
        .collect();
    assert_eq!(halts.len(), 1, "{halts:?}");
    let tipper = halts[0].detail["device"].as_str().unwrap().to_string();
    let tip = devices.iter().find(|d| d.id == tipper).unwrap().index;
    let tip_trace = &traces[tip];
    assert!(tip_trace.failed, "the tipping report is a failure here");
    // The halt committed between the tipping report's sending and its answer (which comes
    // only after the halt is signed into the repository).
    let (tip_sent, tip_acked) = tip_trace.finished.unwrap();

    let started: Vec<&Trace> = traces.iter().filter(|t| t.started).collect();
    // In flight when the threshold was crossed (at the earliest, when the tipping report was
    // sent): had decided to start (its read of the repository began before) and had not sent
    // its verdict yet. At most one per worker thread, the tipping device's excepted.
    let in_flight: BTreeSet<usize> = started
        .iter()
        .filter(|t| t.index != tip)
        .filter(|t| t.read_began.unwrap() <= tip_sent)
        .filter(|t| t.finished.is_none_or(|(sent, _)| sent > tip_sent))
        .map(|t| t.index)
        .collect();
    // Started after the threshold was (possibly) crossed without being in flight: "started"
    // sent after the tipping report was. These read the repository while the server was
    // committing and signing the halt.
    let after: BTreeSet<usize> = started
        .iter()
        .filter(|t| t.started_sent.unwrap() > tip_sent && !in_flight.contains(&t.index))
        .map(|t| t.index)
        .collect();
    // Started although its read of the repository began after the halt was acknowledged
    // (the answer comes only once the halt is signed): must be none.
    let late: Vec<usize> = started
        .iter()
        .filter(|t| t.read_began.unwrap() > tip_acked)
        .map(|t| t.index)
        .collect();
    eprintln!(
        "{n} devices: enrolled in {enrolled:.1?}, rollout played in {played:.1?}; halted by \
         device {tip} ({}), its report answered in {:.1?} (commit and signature); {} started, \
         {} in flight at the threshold, {} started after it without being in flight, {} late",
        detail.rollout.halt_reason.as_deref().unwrap_or_default(),
        tip_acked - tip_sent,
        started.len(),
        in_flight.len(),
        after.len(),
        late.len(),
    );
    assert!(
        late.is_empty(),
        "started after the halt was signed: {late:?}"
    );
    assert!(
        tip_acked - tip_sent < 2 * STEP,
        "committing and signing the halt took {:?}, longer than an install",
        tip_acked - tip_sent
    );
    // Those that started after the threshold without being in flight at it read the
    // repository while the halt was being committed and signed: it is the signed halt that
    // devices obey, so until it exists they are in flight too. How many read in that window
    // depends on how fast the server signs against how busy the machine is (a CI run saw 12
    // against 11 in flight at the threshold, 0.43 s to sign), so what is structural is this:
    // each worker thread starts at most one such device, because signing takes less than an
    // install (checked above), and none starts once the halt is signed (`late`).
    assert!(
        after.len() < CONCURRENCY,
        "{} devices started while the halt was being signed ({after:?}): more than one per \
         worker thread",
        after.len(),
    );
    assert!(in_flight.len() < CONCURRENCY, "{in_flight:?}");

    // The halt protected the rest: every device that did not start saw it halted.
    assert!(started.len() * 2 < n, "{} of {n} started", started.len());
    for t in traces.iter().filter(|t| !t.started) {
        assert!(
            t.decision.contains("rollout is halted"),
            "device {} held back for another reason: {}",
            t.index,
            t.decision
        );
    }
    // The server counted every device that started, and the failures it was told of.
    let p = &detail.rollout.progress;
    assert_eq!(detail.outcomes.len(), started.len(), "{p:?}");
    let failed = started.iter().filter(|t| t.failed).count() as u64;
    assert_eq!(p.failed_health, failed, "{p:?}");
    // Still over the limit: those in flight only add outcomes to devices already counted.
    assert!(failed * 100 > 5 * started.len() as u64, "{p:?}");
}
