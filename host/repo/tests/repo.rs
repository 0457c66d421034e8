//! A release repository made, published to, halted, refreshed and synced, each step checked
//! by loading it through tough's client from its first root, as a device does.

mod common;

use aperture_release::ReleaseMeta;
use aperture_repo::{keys, Published, Repo, Role};
use common::{bundle, load, meta, read_target, t};

#[test]
fn init_publish_halt_refresh_and_a_client_sees_each_step() {
    let dir = tempfile::tempdir().unwrap();
    let repo_dir = dir.path().join("repo");
    let mut repo = Repo::init(&repo_dir, false, t(0)).unwrap();
    // Development keys, marked, and the defaults' expiries.
    assert!(keys::marker(&repo_dir.join("keys/timestamp.pk8")).exists());
    let st = repo.status(t(0));
    assert!(st.development_keys);
    let days: Vec<i64> = st
        .roles
        .iter()
        .map(|r| r.expires_in_secs / 86_400)
        .collect();
    assert_eq!(days, vec![365, 14, 14, 7]);
    let root1 = std::fs::read(repo_dir.join("metadata/1.root.json")).unwrap();
    let root_doc: serde_json::Value = serde_json::from_slice(&root1).unwrap();
    assert_eq!(root_doc["signed"]["consistent_snapshot"], true);

    // Publish v1.1.0: a target with its release metadata, stored by hash.
    let b = bundle(dir.path(), "update.bundle", b"bundle v1.1.0 bytes");
    let out = repo
        .publish(&b, meta("1.1.0", "stable"), t(60), false)
        .unwrap();
    let name = "aperture-edge-qemu-x86_64-1.1.0.stable.bundle";
    assert_eq!(
        out,
        Published::Added {
            name: name.into(),
            targets_version: 2
        }
    );
    let client = load(&repo_dir, &root1, false).unwrap();
    let (tn, target) = client.all_targets().next().unwrap();
    assert_eq!(tn.raw(), name);
    let m = ReleaseMeta::from_custom(&target.custom).unwrap().unwrap();
    assert_eq!(m.published_at, 1_800_000_060);
    assert_eq!(m.waves.to_string(), "1%@0h,100%@24h");
    assert_eq!(read_target(&client, name).unwrap(), b"bundle v1.1.0 bytes");
    let sha = hex::encode(&target.hashes.sha256);
    assert!(repo_dir
        .join("targets")
        .join(format!("{sha}.{name}"))
        .exists());

    // The same build again: nothing changes. Other bytes under that version: refused.
    assert_eq!(
        repo.publish(&b, meta("1.1.0", "stable"), t(120), false)
            .unwrap(),
        Published::AlreadyThere { name: name.into() }
    );
    assert_eq!(repo.status(t(0)).roles[1].version, 2);
    let other = bundle(dir.path(), "other.bundle", b"another build");
    let e = format!(
        "{:#}",
        repo.publish(&other, meta("1.1.0", "stable"), t(120), false)
            .unwrap_err()
    );
    assert!(
        e.contains("already published with other contents") && e.contains("bump the version"),
        "{e}"
    );
    // The same build on another channel is another target.
    repo.publish(&b, meta("1.1.0", "beta"), t(130), false)
        .unwrap();

    // Halt: the flag is signed; resume clears it; an unknown release is named.
    let changed = repo
        .set_halted(&"1.1.0".parse().unwrap(), "stable", true, t(200), false)
        .unwrap();
    assert_eq!(changed, vec![name.to_string()]);
    let client = load(&repo_dir, &root1, false).unwrap();
    let halted: Vec<bool> = client
        .all_targets()
        .filter_map(|(_, t)| ReleaseMeta::from_custom(&t.custom)?.ok())
        .filter(|m| m.channel == "stable")
        .map(|m| m.halted)
        .collect();
    assert_eq!(halted, vec![true]);
    assert!(repo
        .set_halted(&"1.1.0".parse().unwrap(), "stable", true, t(210), false)
        .unwrap()
        .is_empty());
    let e = format!(
        "{:#}",
        repo.set_halted(&"9.9.9".parse().unwrap(), "stable", true, t(210), false)
            .unwrap_err()
    );
    assert!(
        e.contains("no release 9.9.9 on channel stable") && e.contains("1.1.0 on beta"),
        "{e}"
    );
    repo.set_halted(&"1.1.0".parse().unwrap(), "stable", false, t(220), false)
        .unwrap();

    // Refresh: nothing due a day later; after four days the timestamp (7 d) is due; after
    // eight days targets and snapshot (14 d) are due, and so the timestamp.
    let mut repo = Repo::open(&repo_dir).unwrap();
    assert!(repo.refresh(t(86_400), false, false).unwrap().is_empty());
    assert_eq!(
        repo.refresh(t(4 * 86_400), false, false).unwrap(),
        vec![Role::Timestamp]
    );
    let before = repo.status(t(0)).roles[2].version;
    assert_eq!(
        repo.refresh(t(8 * 86_400), false, false).unwrap(),
        vec![Role::Targets, Role::Snapshot, Role::Timestamp]
    );
    assert_eq!(repo.status(t(0)).roles[2].version, before + 1);
    // After 200 days the root is re-signed as version 2; a client with root 1 follows it.
    let done = repo.refresh(t(200 * 86_400), false, false).unwrap();
    assert_eq!(done[0], Role::Root);
    assert!(repo_dir.join("metadata/2.root.json").exists());
    let client = load(&repo_dir, &root1, false).unwrap();
    assert_eq!(client.root().signed.version.get(), 2);
    assert_eq!(client.all_targets().count(), 2);
}

#[test]
fn a_client_refuses_a_tampered_target_or_metadata_file() {
    let dir = tempfile::tempdir().unwrap();
    let repo_dir = dir.path().join("repo");
    let mut repo = Repo::init(&repo_dir, false, jiff::Timestamp::now()).unwrap();
    let b = bundle(dir.path(), "update.bundle", b"the real bundle");
    repo.publish(&b, meta("1.1.0", "stable"), jiff::Timestamp::now(), false)
        .unwrap();
    let root1 = std::fs::read(repo_dir.join("metadata/1.root.json")).unwrap();
    let name = "aperture-edge-qemu-x86_64-1.1.0.stable.bundle";
    // Expiries in whole seconds, as the spec writes them (YYYY-MM-DDTHH:MM:SSZ).
    for role in [
        "1.root.json",
        "2.targets.json",
        "2.snapshot.json",
        "timestamp.json",
    ] {
        let doc: serde_json::Value =
            serde_json::from_slice(&std::fs::read(repo_dir.join("metadata").join(role)).unwrap())
                .unwrap();
        let expires = doc["signed"]["expires"].as_str().unwrap();
        assert!(
            expires.len() == 20 && expires.ends_with('Z') && !expires.contains('.'),
            "{role}: {expires}"
        );
    }
    // Valid now, with expiry enforced.
    let client = load(&repo_dir, &root1, true).unwrap();
    assert_eq!(read_target(&client, name).unwrap(), b"the real bundle");

    // The stored target replaced by other bytes of the same length: refused.
    let stored = std::fs::read_dir(repo_dir.join("targets"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.to_string_lossy().ends_with(name))
        .unwrap();
    std::fs::write(&stored, b"the evil bundle").unwrap();
    let e = read_target(&client, name).unwrap_err();
    assert!(
        e.to_lowercase().contains("hash") || e.contains("sha"),
        "{e}"
    );

    // targets metadata edited after signing: the snapshot's hash no longer matches.
    let targets = repo_dir.join("metadata/2.targets.json");
    let text = std::fs::read_to_string(&targets).unwrap();
    std::fs::write(
        &targets,
        text.replace("\"halted\": false", "\"halted\": true "),
    )
    .unwrap();
    let e = load(&repo_dir, &root1, true).unwrap_err();
    assert!(e.contains("targets"), "{e}");
}

#[test]
fn release_mode_refuses_development_keys_and_never_makes_them() {
    let dir = tempfile::tempdir().unwrap();
    let e = format!(
        "{:#}",
        Repo::init(&dir.path().join("r1"), true, t(0))
            .err()
            .unwrap()
    );
    assert!(e.contains("--release never makes development keys"), "{e}");
    let repo_dir = dir.path().join("r2");
    let mut repo = Repo::init(&repo_dir, false, t(0)).unwrap();
    let b = bundle(dir.path(), "u.bundle", b"x");
    let e = format!(
        "{:#}",
        repo.publish(&b, meta("1.1.0", "stable"), t(1), true)
            .unwrap_err()
    );
    assert!(
        e.contains("refusing to sign a release with the development targets key"),
        "{e}"
    );
    // Release keys made beforehand (no marker): --release works.
    let r3 = dir.path().join("r3");
    for role in ["root", "targets", "snapshot", "timestamp"] {
        keys::generate(&r3.join(format!("keys/{role}.pk8")), false).unwrap();
    }
    let mut repo = Repo::init(&r3, true, t(0)).unwrap();
    repo.publish(&b, meta("1.1.0", "stable"), t(1), true)
        .unwrap();
    assert!(!repo.status(t(0)).development_keys);
    // A second init is refused.
    let e = format!("{:#}", Repo::init(&r3, true, t(0)).err().unwrap());
    assert!(e.contains("already a repository"), "{e}");
}

#[test]
fn sync_copies_targets_then_metadata_and_the_timestamp_last() {
    let dir = tempfile::tempdir().unwrap();
    let repo_dir = dir.path().join("repo");
    let mut repo = Repo::init(&repo_dir, false, t(0)).unwrap();
    let b = bundle(dir.path(), "u.bundle", b"bundle");
    repo.publish(&b, meta("1.1.0", "stable"), t(1), false)
        .unwrap();
    let served = dir.path().join("www");
    let first = aperture_repo::sync::to_dir(&repo_dir, &served).unwrap();
    assert!(
        first.copied[0].starts_with("targets/"),
        "{:?}",
        first.copied
    );
    assert_eq!(first.copied.last().unwrap(), "metadata/timestamp.json");
    assert!(!served.join("keys").exists() && !served.join("repo.toml").exists());
    let root1 = std::fs::read(repo_dir.join("metadata/1.root.json")).unwrap();
    assert_eq!(
        load(&served, &root1, false).unwrap().all_targets().count(),
        1
    );
    // Again after a halt: only the new metadata and the timestamp move.
    repo.set_halted(&"1.1.0".parse().unwrap(), "stable", true, t(2), false)
        .unwrap();
    let second = aperture_repo::sync::to_dir(&repo_dir, &served).unwrap();
    assert_eq!(
        second.copied,
        vec![
            "metadata/3.snapshot.json",
            "metadata/3.targets.json",
            "metadata/root.json",
            "metadata/timestamp.json"
        ]
    );
    assert!(second.kept > 0);
}

#[test]
fn a_timestamp_only_refresh_keeps_the_snapshot_so_a_synced_copy_stays_whole() {
    // A consistent-snapshot file never changes contents under its name: sync keeps a
    // versioned file the destination already has, so a timestamp that named a re-signed
    // snapshot of the same version would point devices at bytes that are not served.
    let dir = tempfile::tempdir().unwrap();
    let repo_dir = dir.path().join("repo");
    let mut repo = Repo::init(&repo_dir, false, t(0)).unwrap();
    repo.publish(
        &bundle(dir.path(), "u.bundle", b"bundle"),
        meta("1.1.0", "stable"),
        t(1),
        false,
    )
    .unwrap();
    let served = dir.path().join("www");
    aperture_repo::sync::to_dir(&repo_dir, &served).unwrap();
    let snapshot = repo_dir.join("metadata/2.snapshot.json");
    let before = std::fs::read(&snapshot).unwrap();
    assert_eq!(
        repo.refresh(t(4 * 86_400), false, false).unwrap(),
        vec![Role::Timestamp]
    );
    let second = aperture_repo::sync::to_dir(&repo_dir, &served).unwrap();
    assert_eq!(
        second.copied,
        vec!["metadata/root.json", "metadata/timestamp.json"]
    );
    let root1 = std::fs::read(repo_dir.join("metadata/1.root.json")).unwrap();
    let client = load(&served, &root1, false).unwrap();
    assert_eq!(client.timestamp().signed.version.get(), 3);
    assert_eq!(client.all_targets().count(), 1);
    assert_eq!(std::fs::read(&snapshot).unwrap(), before);
}

#[test]
fn a_change_waits_for_the_folder_lock_and_a_read_does_not() {
    let dir = tempfile::tempdir().unwrap();
    let repo_dir = dir.path().join("repo");
    drop(Repo::init(&repo_dir, false, jiff::Timestamp::now()).unwrap());
    let held = Repo::open_to_change(&repo_dir).unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    // Timed from before the thread starts, so that the wait below bounds it from beneath.
    let t = std::time::Instant::now();
    let other = std::thread::spawn({
        let repo_dir = repo_dir.clone();
        move || {
            let _second = Repo::open_to_change(&repo_dir).unwrap();
            tx.send(t.elapsed()).unwrap();
        }
    });
    // A reader is not held up by a writer.
    Repo::open(&repo_dir).unwrap();
    assert!(
        rx.recv_timeout(std::time::Duration::from_millis(500))
            .is_err(),
        "a second change must wait while the first holds the repository"
    );
    drop(held);
    let waited = rx.recv_timeout(std::time::Duration::from_secs(10)).unwrap();
    assert!(
        waited >= std::time::Duration::from_millis(500),
        "{waited:?}"
    );
    other.join().unwrap();
}

#[test]
fn a_delta_is_published_beside_its_release_and_a_client_reads_its_base() {
    let dir = tempfile::tempdir().unwrap();
    let repo_dir = dir.path().join("repo");
    let mut repo = Repo::init(&repo_dir, false, t(0)).unwrap();
    assert_eq!(repo.config().deltas.from_last, 2, "the default");
    let root1 = std::fs::read(repo_dir.join("metadata/1.root.json")).unwrap();
    let delta = aperture_release::DeltaMeta {
        product: "aperture-edge".into(),
        board: "qemu-x86_64".into(),
        version: "1.1.0".parse().unwrap(),
        channel: "stable".into(),
        from: "1.0.0".parse().unwrap(),
        from_root_hash: "ab12".into(),
    };
    let d = bundle(dir.path(), "delta.bundle", b"delta bytes");
    // Without its release, a delta would serve nobody (no full bundle to fall back to).
    let err = repo
        .publish_delta(&d, delta.clone(), t(30), false)
        .unwrap_err()
        .to_string();
    assert!(err.contains("publish its full bundle first"), "{err}");

    let b = bundle(dir.path(), "update.bundle", b"bundle v1.1.0 bytes");
    repo.publish(&b, meta("1.1.0", "stable"), t(60), false)
        .unwrap();
    let name = "aperture-edge-qemu-x86_64-1.1.0.stable.from-1.0.0.bundle";
    assert!(matches!(
        repo.publish_delta(&d, delta.clone(), t(90), false).unwrap(),
        Published::Added { name: n, .. } if n == name
    ));
    assert_eq!(
        repo.publish_delta(&d, delta.clone(), t(100), false)
            .unwrap(),
        Published::AlreadyThere { name: name.into() }
    );
    let other = bundle(dir.path(), "other.bundle", b"other bytes");
    assert!(repo
        .publish_delta(&other, delta.clone(), t(110), false)
        .is_err());
    assert_eq!(repo.deltas(), vec![(name.to_string(), delta.clone())]);
    assert!(repo.stored_target(name).unwrap().exists());
    // Not a release: listings and halts see only the full target.
    assert_eq!(repo.releases().len(), 1);

    let client = load(&repo_dir, &root1, false).unwrap();
    let (_, target) = client.all_targets().find(|(n, _)| n.raw() == name).unwrap();
    let got = aperture_release::DeltaMeta::from_custom(&target.custom)
        .unwrap()
        .unwrap();
    assert_eq!(got, delta);
    assert!(ReleaseMeta::from_custom(&target.custom).is_none());
    assert_eq!(read_target(&client, name).unwrap(), b"delta bytes");
}
