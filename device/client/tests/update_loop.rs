//! The update loop against real TUF repositories made by `aperture-repo` in temporary folders
//! (read through `file://`, the same client code as over HTTPS): what it installs and when
//! (newest eligible, waves to the second, halt and resume, channel, board, floor, version),
//! every refusal the issue lists (expired, a rolled-back timestamp, a threshold not met, an
//! unknown key, a target whose length or hash differs, oversized metadata, an unreachable or
//! silent repository), each leaving nothing installed, and the cost of a poll that finds
//! nothing new. Rollbacks of snapshot and targets, and the rest of the spec's client workflow,
//! are tough's checks, run against the TUF conformance suite (`aperture-tuf-client`).
//!
//! The installer is a recorder below the `Installer` trait (it reads the bundle to its end,
//! as the updater does before it arms a slot); the real one, the updater library, is what the
//! VM tier runs.

use std::path::{Path, PathBuf};

use aperture_client::recorder::Recorder;
use aperture_client::{Outcome, Running, StateDir, UpdateLoop};
use aperture_release::{DeltaMeta, ReleaseMeta, Settings, Waves};
use aperture_repo::Repo;
use aperture_updater::source::FetchOptions;

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn ts(secs: u64) -> jiff::Timestamp {
    jiff::Timestamp::from_second(secs as i64).unwrap()
}

struct Fixture {
    dir: tempfile::TempDir,
    repo: Repo,
    /// The root hash the devices made next were booted with.
    running_root: Option<String>,
}

impl Fixture {
    fn new() -> Fixture {
        Self::at(now())
    }

    fn at(time: u64) -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let repo = Repo::init(&dir.path().join("repo"), false, ts(time)).unwrap();
        Fixture {
            dir,
            repo,
            running_root: None,
        }
    }

    fn repo_dir(&self) -> PathBuf {
        self.dir.path().join("repo")
    }

    fn publish(&mut self, meta: ReleaseMeta, at: u64) -> Vec<u8> {
        let bytes = format!("bundle {} {} {}", meta.board, meta.version, meta.channel).into_bytes();
        let file = self.dir.path().join(format!("{}.bin", meta.target_name()));
        std::fs::write(&file, &bytes).unwrap();
        self.repo.publish(&file, meta, ts(at), false).unwrap();
        bytes
    }

    /// A device running `version` of qemu-x86_64 on `channel`, its wave seed `seed`.
    fn device(&self, name: &str, version: &str, seed: u32) -> UpdateLoop<Recorder> {
        self.device_on(name, version, seed, "stable", &url(&self.repo_dir()))
    }

    fn device_on(
        &self,
        name: &str,
        version: &str,
        seed: u32,
        channel: &str,
        repository: &str,
    ) -> UpdateLoop<Recorder> {
        let state = self.dir.path().join(name);
        std::fs::create_dir_all(&state).unwrap();
        std::fs::write(state.join("seed"), format!("{seed}\n")).unwrap();
        let settings = Settings {
            repository: repository.into(),
            channel: channel.into(),
            poll_interval_secs: 900,
            maintenance_window: None,
            insecure_http: repository.starts_with("http://"),
        };
        let mut fetch = FetchOptions::new(self.dir.path().join("no-system-ca.pem"));
        fetch.extra_ca = Some(test_ca(self.dir.path()));
        fetch.timeout = std::time::Duration::from_secs(2);
        UpdateLoop::new(
            settings,
            Running {
                product: "aperture-edge".into(),
                board: "qemu-x86_64".into(),
                version: version.parse().unwrap(),
                root_hash: self.running_root.clone(),
            },
            self.repo_dir().join("metadata/1.root.json"),
            StateDir(state),
            fetch,
            Recorder::default(),
        )
        .unwrap()
    }
}

impl Fixture {
    /// Publishes the delta to `to` from `from` (booted with root hash `from_root`).
    fn publish_delta(&mut self, to: &str, from: &str, from_root: &str, at: u64) -> Vec<u8> {
        let meta = DeltaMeta {
            product: "aperture-edge".into(),
            board: "qemu-x86_64".into(),
            version: to.parse().unwrap(),
            channel: "stable".into(),
            from: from.parse().unwrap(),
            from_root_hash: from_root.into(),
        };
        let bytes = format!("delta {from} to {to}").into_bytes();
        let file = self.dir.path().join(meta.target_name());
        std::fs::write(&file, &bytes).unwrap();
        self.repo.publish_delta(&file, meta, ts(at), false).unwrap();
        bytes
    }
}

#[test]
fn a_device_running_a_deltas_base_installs_the_delta_and_others_the_full_bundle() {
    let mut f = Fixture::new();
    let t = now();
    let v10 = f.publish(release("1.0.0", ""), t);
    let full = f.publish(release("1.1.0", ""), t);
    let from_10 = f.publish_delta("1.1.0", "1.0.0", "root-of-1.0.0", t);
    f.publish_delta("1.1.0", "0.9.0", "root-of-0.9.0", t);
    assert_ne!(v10, full);

    // Booted 1.0.0 with its root hash: the delta.
    f.running_root = Some("root-of-1.0.0".into());
    let mut dev = f.device("on-base", "1.0.0", 5);
    dev.check(t);
    let st = dev.status().clone();
    assert_eq!(st.result, Some(Outcome::Installed), "{}", st.message);
    assert_eq!(dev.installer().installs.len(), 1);
    assert_eq!(dev.installer().installs[0].0, from_10);
    assert!(
        st.message.contains("the delta to 1.1.0 from 1.0.0"),
        "{}",
        st.message
    );

    // Another image of 1.0.0 (another root hash), or none: the full bundle.
    for root in [Some("root-of-a-local-build"), None] {
        f.running_root = root.map(String::from);
        let mut dev = f.device(&format!("off-base-{}", root.is_some()), "1.0.0", 5);
        dev.check(t);
        assert_eq!(dev.installer().installs.len(), 1);
        assert_eq!(dev.installer().installs[0].0, full);
        assert!(
            !dev.status().message.contains("delta"),
            "{}",
            dev.status().message
        );
    }

    // The delta fails to install (its base turned out different, a download broke): the
    // full bundle, in the same check.
    f.running_root = Some("root-of-1.0.0".into());
    let mut dev = f.device("falls-back", "1.0.0", 5);
    dev.installer().fail_when = Some(b"delta ".to_vec());
    dev.check(t);
    let st = dev.status().clone();
    assert_eq!(st.result, Some(Outcome::Installed), "{}", st.message);
    assert_eq!(dev.installer().installs.len(), 1);
    assert_eq!(dev.installer().installs[0].0, full);
    assert!(
        st.message.contains("full bundle after the delta failed")
            && st.message.contains("refused by the test"),
        "{}",
        st.message
    );
}

/// A CA certificate file (any valid one: the loop's HTTPS client needs a trust anchor to
/// start; the unreachable cases never get to a handshake).
fn test_ca(dir: &Path) -> PathBuf {
    let path = dir.join("ca.pem");
    if !path.exists() {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        std::fs::write(&path, params.self_signed(&key).unwrap().pem()).unwrap();
    }
    path
}

fn url(dir: &Path) -> String {
    url::Url::from_directory_path(dir).unwrap().to_string()
}

fn release(version: &str, waves: &str) -> ReleaseMeta {
    ReleaseMeta {
        product: "aperture-edge".into(),
        board: "qemu-x86_64".into(),
        version: version.parse().unwrap(),
        security_version: 1,
        channel: "stable".into(),
        published_at: 0,
        waves: waves.parse::<Waves>().unwrap(),
        halted: false,
        gate: Default::default(),
    }
}

#[test]
fn the_newest_eligible_release_for_this_product_board_and_channel_is_installed_once() {
    let mut f = Fixture::new();
    let t = now();
    f.publish(release("1.1.0", ""), t);
    let newest = f.publish(release("1.2.0", ""), t);
    f.publish(
        ReleaseMeta {
            board: "jetson-orin-agx".into(),
            ..release("1.3.0", "")
        },
        t,
    );
    f.publish(
        ReleaseMeta {
            channel: "beta".into(),
            ..release("1.4.0", "")
        },
        t,
    );
    f.publish(
        ReleaseMeta {
            product: "other".into(),
            ..release("1.5.0", "")
        },
        t,
    );
    let mut dev = f.device("d", "1.0.0", 5);
    let wait = dev.check(t);
    let st = dev.status().clone();
    assert_eq!(st.result, Some(Outcome::Installed), "{}", st.message);
    assert!((900..=990).contains(&wait), "{wait}");
    let installs = &dev.installer().installs;
    assert_eq!(installs.len(), 1);
    assert_eq!(installs[0].0, newest, "the newest eligible release, 1.2.0");
    assert!(
        installs[0]
            .1
            .contains("aperture-edge-qemu-x86_64-1.2.0.stable.bundle"),
        "{}",
        installs[0].1
    );
    assert!(
        st.message.contains("installed 1.2.0") && st.message.contains("rebooting now"),
        "{}",
        st.message
    );
    assert_eq!(st.roles.len(), 4);
    assert!(dev.reboot_if_due(t));
    assert_eq!(dev.installer().reboots, 1);

    // Once armed, the updater says so and nothing more is installed.
    dev.installer().not_ready = Some("slot b is armed and boots next".into());
    dev.check(t + 1000);
    assert_eq!(dev.status().result, Some(Outcome::Waiting));
    assert_eq!(dev.installer().installs.len(), 1);

    // The same repository seen from 1.2.0: nothing; from a beta device: 1.4.0.
    let mut up = f.device("up", "1.2.0", 5);
    up.check(t);
    assert_eq!(up.status().result, Some(Outcome::UpToDate));
    assert!(up.installer().installs.is_empty());
    assert!(
        up.status()
            .message
            .contains("nothing to install over 1.2.0"),
        "{}",
        up.status().message
    );
    let mut beta = f.device_on("beta", "1.0.0", 5, "beta", &url(&f.repo_dir()));
    beta.check(t);
    assert_eq!(beta.installer().installs.len(), 1);
    assert!(beta.status().message.contains("installed 1.4.0"));
}

#[test]
fn the_floor_and_the_running_version_rule_out_releases() {
    let mut f = Fixture::new();
    let t = now();
    f.publish(
        ReleaseMeta {
            security_version: 2,
            ..release("1.1.0", "")
        },
        t,
    );
    f.publish(
        ReleaseMeta {
            security_version: 1,
            ..release("1.2.0", "")
        },
        t,
    );
    f.publish(release("0.9.0", ""), t);
    let mut dev = f.device("d", "1.0.0", 5);
    dev.installer().floor = 2;
    dev.check(t);
    let msg = dev.status().message.clone();
    assert!(msg.contains("installed 1.1.0"), "{msg}");
    assert!(
        msg.contains("1.2.0.stable.bundle: security version 1 below the floor"),
        "{msg}"
    );
}

#[test]
fn a_device_becomes_eligible_exactly_when_its_wave_starts() {
    let mut f = Fixture::new();
    let t = now();
    f.publish(release("1.1.0", "1%@0h,10%@4h,100%@24h"), t);
    // Seeds 0..21 are the first 1% (ceil(0.01 * 2048)), 21..205 the 10% wave, the rest 24 h.
    for (seed, starts) in [
        (0u32, 0u64),
        (20, 0),
        (21, 4 * 3600),
        (204, 4 * 3600),
        (205, 86_400),
    ] {
        let mut dev = f.device(&format!("seed{seed}"), "1.0.0", seed);
        if starts > 0 {
            dev.check(t + starts - 1);
            let st = dev.status();
            assert_eq!(
                st.result,
                Some(Outcome::UpToDate),
                "seed {seed}: {}",
                st.message
            );
            assert_eq!(st.next_eligible, Some(t + starts), "seed {seed}");
            assert!(dev.installer().installs.is_empty(), "seed {seed}");
        }
        dev.check(t + starts);
        assert_eq!(
            dev.status().result,
            Some(Outcome::Installed),
            "seed {seed} at +{starts} s: {}",
            dev.status().message
        );
    }
}

#[test]
fn a_halted_release_is_not_installed_until_it_is_resumed() {
    let mut f = Fixture::new();
    let t = now();
    f.publish(release("1.1.0", ""), t);
    f.publish(release("1.2.0", ""), t);
    let v12: semver::Version = "1.2.0".parse().unwrap();
    f.repo
        .set_halted(&v12, "stable", true, ts(t), false)
        .unwrap();
    let mut dev = f.device("d", "1.0.0", 5);
    dev.check(t);
    let msg = dev.status().message.clone();
    assert!(msg.contains("installed 1.1.0"), "{msg}");
    assert!(msg.contains("1.2.0.stable.bundle: rollout halted"), "{msg}");

    let mut on11 = f.device("on11", "1.1.0", 5);
    on11.check(t);
    assert_eq!(on11.status().result, Some(Outcome::UpToDate));
    f.repo
        .set_halted(&v12, "stable", false, ts(t), false)
        .unwrap();
    on11.check(t + 1);
    assert!(
        on11.status().message.contains("installed 1.2.0"),
        "{}",
        on11.status().message
    );
}

#[test]
fn a_gated_release_moves_only_with_its_fleet_rollout_and_stops_when_the_fleet_halts_it() {
    use aperture_release::rollout::{Selection, State};
    use aperture_release::{Gate, RolloutMeta};
    let mut f = Fixture::new();
    let t = now();
    f.publish(
        ReleaseMeta {
            gate: Gate::Rollout,
            ..release("1.1.0", "")
        },
        t,
    );
    // Published, gated, no rollouts role yet: nobody moves.
    let mut named = f.device("named", "1.0.0", 5);
    std::fs::write(f.dir.path().join("named/fleet-id"), "dev-named\n").unwrap();
    refused(
        &mut named,
        t,
        Outcome::UpToDate,
        &["waiting for the fleet to start its rollout"],
    );
    // The targets key delegates `rollouts` once; the server's key then starts the rollout of
    // 1.1.0 to one device, and pins none.
    assert!(f.repo.delegate_rollouts(ts(t), false).unwrap());
    assert!(!f.repo.delegate_rollouts(ts(t), false).unwrap());
    let mut rollout = RolloutMeta {
        id: 1,
        channel: "stable".into(),
        version: "1.1.0".parse().unwrap(),
        state: State::Halted,
        started_at: t,
        waves: Waves::default(),
        devices: Selection::Devices(vec!["dev-named".into()]),
        pinned: Vec::new(),
    };
    // Halted from the start: the named device waits, and says why.
    assert!(f.repo.set_rollout(&rollout, ts(t), false).unwrap());
    refused(
        &mut named,
        t + 1,
        Outcome::UpToDate,
        &["its fleet rollout is halted"],
    );
    // Resumed: the named device installs; one the rollout does not name, or not enrolled, does not.
    rollout.state = State::Active;
    assert!(f.repo.set_rollout(&rollout, ts(t), false).unwrap());
    assert!(!f.repo.set_rollout(&rollout, ts(t), false).unwrap());
    let mut other = f.device("other", "1.0.0", 5);
    std::fs::write(f.dir.path().join("other/fleet-id"), "dev-other\n").unwrap();
    refused(
        &mut other,
        t + 2,
        Outcome::UpToDate,
        &["does not include this device"],
    );
    let mut unenrolled = f.device("unenrolled", "1.0.0", 5);
    refused(
        &mut unenrolled,
        t + 2,
        Outcome::UpToDate,
        &["does not include this device"],
    );
    named.check(t + 2);
    assert!(
        named.status().message.contains("installed 1.1.0"),
        "{}",
        named.status().message
    );
    assert!(named
        .status()
        .roles
        .iter()
        .any(|r| r.role == "rollouts" && r.version == 3));
    // The fleet halts it again: a device it names that has not started stays where it is.
    let mut late = f.device("late", "1.0.0", 5);
    std::fs::write(f.dir.path().join("late/fleet-id"), "dev-named\n").unwrap();
    rollout.state = State::Halted;
    f.repo.set_rollout(&rollout, ts(t), false).unwrap();
    refused(&mut late, t + 3, Outcome::UpToDate, &["rollout is halted"]);
}

#[test]
fn a_rollouts_key_the_delegation_does_not_list_cannot_halt_a_release() {
    use aperture_release::rollout::{Selection, State};
    use aperture_release::RolloutMeta;
    let mut f = Fixture::new();
    let t = now();
    f.publish(release("1.1.0", ""), t);
    f.repo.delegate_rollouts(ts(t), false).unwrap();
    // Someone replaces the rollouts key file with a key of their own: a halt signed with it
    // is refused (no key the targets role's delegation lists), and devices still install.
    let key = f.repo_dir().join("keys/rollouts.pk8");
    std::fs::remove_file(&key).unwrap();
    aperture_repo::keys::generate(&key, true).unwrap();
    let rollout = RolloutMeta {
        id: 1,
        channel: "stable".into(),
        version: "1.1.0".parse().unwrap(),
        state: State::Halted,
        started_at: t,
        waves: Waves::default(),
        devices: Selection::All,
        pinned: Vec::new(),
    };
    let e = f.repo.set_rollout(&rollout, ts(t), false).unwrap_err();
    assert!(
        format!("{e:#}").contains("signing rollouts metadata"),
        "{e:#}"
    );
    let mut dev = f.device("d", "1.0.0", 5);
    dev.check(t);
    assert!(
        dev.status().message.contains("installed 1.1.0"),
        "{}",
        dev.status().message
    );
}

/// Install nothing, say why on one line.
fn refused(dev: &mut UpdateLoop<Recorder>, t: u64, outcome: Outcome, words: &[&str]) {
    dev.check(t);
    let st = dev.status().clone();
    assert_eq!(st.result, Some(outcome), "{}", st.message);
    for w in words {
        assert!(st.message.contains(w), "{w:?} not in: {}", st.message);
    }
    assert!(dev.installer().installs.is_empty());
}

#[test]
fn expired_metadata_is_refused() {
    // Made 30 days ago: the timestamp (7 days) and snapshot and targets (14 days) expired.
    let t = now() - 30 * 86_400;
    let mut f = Fixture::at(t);
    f.publish(release("1.1.0", ""), t);
    let mut dev = f.device("d", "1.0.0", 5);
    refused(&mut dev, now(), Outcome::Refused, &["refused", "expired"]);
}

#[test]
fn a_rolled_back_timestamp_is_refused() {
    let mut f = Fixture::new();
    let t = now();
    f.publish(release("1.1.0", ""), t);
    let meta = f.repo_dir().join("metadata");
    let old_ts = std::fs::read(meta.join("timestamp.json")).unwrap();
    f.publish(release("1.2.0", ""), t);
    let mut dev = f.device("d", "1.2.0", 5);
    dev.check(t);
    assert_eq!(dev.status().result, Some(Outcome::UpToDate));
    // An attacker (or a stale mirror) serves the older, validly signed timestamp.
    std::fs::write(meta.join("timestamp.json"), &old_ts).unwrap();
    refused(&mut dev, t, Outcome::Refused, &["timestamp"]);
    assert!(
        dev.status().message.to_lowercase().contains("version"),
        "{}",
        dev.status().message
    );
}

#[test]
fn a_timestamp_below_its_threshold_or_signed_by_an_unknown_key_is_refused() {
    let mut f = Fixture::new();
    let t = now();
    f.publish(release("1.1.0", ""), t);
    let meta = f.repo_dir().join("metadata");
    let good = std::fs::read(meta.join("timestamp.json")).unwrap();

    // Threshold not met: the signed part changed after signing (the one signature is void).
    let mut doc: serde_json::Value = serde_json::from_slice(&good).unwrap();
    let v = doc["signed"]["version"].as_u64().unwrap();
    doc["signed"]["version"] = (v + 1).into();
    std::fs::write(
        meta.join("timestamp.json"),
        serde_json::to_vec(&doc).unwrap(),
    )
    .unwrap();
    let mut dev = f.device("d", "1.0.0", 5);
    refused(&mut dev, t, Outcome::Refused, &["timestamp", "threshold"]);

    // An unknown key: another repository's timestamp, validly signed by keys this root does
    // not name.
    let mut other = Fixture::new();
    other.publish(release("1.1.0", ""), t);
    std::fs::copy(
        other.repo_dir().join("metadata/timestamp.json"),
        meta.join("timestamp.json"),
    )
    .unwrap();
    let mut dev = f.device("d2", "1.0.0", 5);
    refused(&mut dev, t, Outcome::Refused, &["timestamp", "threshold"]);

    // Put back, the device installs.
    std::fs::write(meta.join("timestamp.json"), &good).unwrap();
    dev.check(t);
    assert_eq!(
        dev.status().result,
        Some(Outcome::Installed),
        "{}",
        dev.status().message
    );
}

#[test]
fn a_target_whose_length_or_hash_differs_is_never_installed() {
    let mut f = Fixture::new();
    let t = now();
    let bytes = f.publish(release("1.1.0", ""), t);
    let targets = f.repo_dir().join("targets");
    let file = std::fs::read_dir(&targets)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.to_string_lossy().ends_with(".bundle"))
        .unwrap();

    let mut flipped = bytes.clone();
    flipped[0] ^= 1;
    std::fs::write(&file, &flipped).unwrap();
    let mut dev = f.device("d", "1.0.0", 5);
    refused(
        &mut dev,
        t,
        Outcome::InstallFailed,
        &["installing 1.1.0", "its sha256 is"],
    );

    let mut longer = bytes.clone();
    longer.extend_from_slice(&[0u8; 1 << 20]);
    std::fs::write(&file, &longer).unwrap();
    refused(&mut dev, t, Outcome::InstallFailed, &["it is longer"]);

    std::fs::write(&file, &bytes[..bytes.len() - 1]).unwrap();
    refused(&mut dev, t, Outcome::InstallFailed, &["ended after"]);

    std::fs::write(&file, &bytes).unwrap();
    dev.check(t);
    assert_eq!(dev.installer().installs.len(), 1);
}

#[test]
fn metadata_larger_than_its_limit_is_refused() {
    let mut f = Fixture::new();
    let t = now();
    f.publish(release("1.1.0", ""), t);
    let ts_path = f.repo_dir().join("metadata/timestamp.json");
    let mut big = std::fs::read(&ts_path).unwrap();
    big.extend(std::iter::repeat_n(b' ', 64 * 1024));
    std::fs::write(&ts_path, &big).unwrap();
    let mut dev = f.device("d", "1.0.0", 5);
    refused(&mut dev, t, Outcome::Refused, &["Maximum size"]);
}

#[test]
fn an_unreachable_or_silent_repository_is_retried_with_backoff() {
    let f = Fixture::new();
    let t = now();
    // Nothing listens on this port.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = closed.local_addr().unwrap().port();
    drop(closed);
    let mut dev = f.device_on(
        "d",
        "1.0.0",
        5,
        "stable",
        &format!("https://127.0.0.1:{port}/repo/"),
    );
    assert_eq!(dev.check(t), 30);
    assert_eq!(dev.status().result, Some(Outcome::Unreachable));
    assert!(
        dev.status().message.contains("unreachable"),
        "{}",
        dev.status().message
    );
    assert_eq!(dev.check(t + 30), 60);
    assert_eq!(dev.status().failures, 2);

    // One that accepts and never answers: the 2 s timeout ends the check.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = silent.local_addr().unwrap().port();
    let mut dev = f.device_on(
        "s",
        "1.0.0",
        5,
        "stable",
        &format!("https://127.0.0.1:{port}/repo/"),
    );
    let started = std::time::Instant::now();
    assert_eq!(dev.check(t), 30);
    assert!(started.elapsed() < std::time::Duration::from_secs(20));
    assert_eq!(
        dev.status().result,
        Some(Outcome::Unreachable),
        "{}",
        dev.status().message
    );
    assert!(dev.installer().installs.is_empty());
    drop(silent);
}

#[test]
fn a_poll_that_finds_nothing_new_costs_the_root_probe_and_the_timestamp() {
    let mut f = Fixture::new();
    let t = now();
    f.publish(release("1.1.0", ""), t);
    let mut dev = f.device("d", "1.1.0", 5);
    dev.check(t);
    // root probe (2.root.json: none), timestamp, snapshot, targets.
    assert_eq!(dev.status().requests, 4, "{:?}", dev.status());
    dev.check(t + 900);
    assert_eq!(dev.status().result, Some(Outcome::UpToDate));
    assert_eq!(dev.status().requests, 2, "{:?}", dev.status());
    // A new release: the new snapshot and targets are fetched once.
    f.publish(release("1.2.0", ""), t);
    dev.check(t + 1800);
    assert_eq!(dev.status().requests, 4);
    assert_eq!(dev.status().result, Some(Outcome::Installed));

    // A refused refresh empties the cache: nothing that failed once is served from it again.
    let ts_path = f.repo_dir().join("metadata/timestamp.json");
    let good = std::fs::read(&ts_path).unwrap();
    std::fs::write(&ts_path, b"{}").unwrap();
    let mut on12 = f.device("on12", "1.2.0", 5);
    on12.check(t);
    assert_eq!(on12.status().result, Some(Outcome::Refused));
    std::fs::write(&ts_path, &good).unwrap();
    on12.check(t + 900);
    assert_eq!(on12.status().result, Some(Outcome::UpToDate));
    assert_eq!(on12.status().requests, 4, "{:?}", on12.status());
    on12.check(t + 1800);
    assert_eq!(on12.status().requests, 2);
    std::fs::write(&ts_path, b"{}").unwrap();
    on12.check(t + 2700);
    assert_eq!(on12.status().result, Some(Outcome::Refused));
    std::fs::write(&ts_path, &good).unwrap();
    on12.check(t + 3600);
    assert_eq!(
        on12.status().requests,
        4,
        "the cache was emptied by the refusal"
    );
}

#[test]
fn the_seed_is_drawn_once_and_kept() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("agent/seed");
    let s = aperture_client::check::seed(&path).unwrap();
    assert!(s < aperture_release::SEED_RANGE);
    assert_eq!(aperture_client::check::seed(&path).unwrap(), s);
    std::fs::write(&path, "99999\n").unwrap();
    let again = aperture_client::check::seed(&path).unwrap();
    assert!(again < aperture_release::SEED_RANGE);
}
