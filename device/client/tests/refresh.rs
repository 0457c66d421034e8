//! Our corrections to tough's client workflow ([`aperture_client::refresh`]) and the
//! conformance client built on them ([`aperture_client::conformance`]), against real TUF
//! repositories made by `aperture-repo` in temporary folders, read through `file://`.

use std::path::{Path, PathBuf};

use aperture_client::conformance::{self, Client};
use aperture_client::refresh::{self, RefreshError, Source};
use aperture_client::transport::Transport;
use aperture_release::{ReleaseMeta, Waves};
use aperture_repo::{Repo, RepoConfig, Role};
use tough::editor::signed::SignedRole;
use tough::schema::{KeyHolder, Root, Signed, Timestamp};

fn now() -> jiff::Timestamp {
    jiff::Timestamp::now()
}

fn file_url(dir: &Path) -> url::Url {
    url::Url::from_directory_path(dir).unwrap()
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap()
}

/// A repository in `dir/repo` and an appliance's view of it (datastore and cache in `dir`).
fn repository(dir: &Path) -> (Repo, Source, Transport) {
    let repo_dir = dir.join("repo");
    let repo = Repo::init(&repo_dir, false, now()).unwrap();
    let source = Source::at(
        &file_url(&repo_dir),
        repo_dir.join("metadata/1.root.json"),
        dir.join("tuf"),
    )
    .unwrap();
    (
        repo,
        source,
        Transport::files_only(Some(dir.join("tuf-cache"))),
    )
}

/// Re-sign the repository's timestamp with its own key after `change`, keeping its version.
fn resign_timestamp(repo_dir: &Path, change: impl FnOnce(&mut Timestamp)) {
    let metadata = repo_dir.join("metadata");
    let mut ts: Signed<Timestamp> =
        serde_json::from_slice(&std::fs::read(metadata.join("timestamp.json")).unwrap()).unwrap();
    change(&mut ts.signed);
    let root: Signed<Root> =
        serde_json::from_slice(&std::fs::read(metadata.join("1.root.json")).unwrap()).unwrap();
    let config = RepoConfig::load(repo_dir).unwrap();
    let keys = aperture_repo::keys::sources(repo_dir, &config, &[Role::Timestamp], false).unwrap();
    let signed = runtime()
        .block_on(SignedRole::new(
            ts.signed,
            &KeyHolder::Root(root.signed),
            &keys,
            &aws_lc_rs::rand::SystemRandom::new(),
        ))
        .unwrap();
    std::fs::write(metadata.join("timestamp.json"), signed.buffer()).unwrap();
}

fn trusted_timestamp(datastore: &Path) -> Signed<Timestamp> {
    serde_json::from_slice(&std::fs::read(datastore.join("timestamp.json")).unwrap()).unwrap()
}

#[test]
fn a_new_timestamp_of_the_trusted_version_is_set_aside_for_the_trusted_one() {
    let dir = tempfile::tempdir().unwrap();
    let (_repo, source, transport) = repository(dir.path());
    let rt = runtime();
    let first = refresh::refresh(&rt, &source, &transport).unwrap();
    let trusted = trusted_timestamp(&source.datastore);

    // The repository re-signs timestamp v1 naming a snapshot v100 that does not exist. tough
    // alone takes it (an equal version is not a rollback) and fails on 100.snapshot.json;
    // spec 5.4.3.1 discards it, and the refresh goes on with the trusted timestamp.
    resign_timestamp(&dir.path().join("repo"), |t| {
        let meta = t.meta.get_mut("snapshot.json").unwrap();
        meta.version = std::num::NonZeroU64::new(100).unwrap();
        meta.hashes = None;
        meta.length = None;
    });
    let again = refresh::refresh(&rt, &source, &transport).unwrap();
    assert_eq!(again.roles, first.roles);
    let kept = trusted_timestamp(&source.datastore);
    assert_eq!(kept.signed.meta["snapshot.json"].version.get(), 1);
    assert_eq!(kept.signatures, trusted.signatures);

    // Of the same version but not signed by the timestamp key: refused, as before.
    let path = dir.path().join("repo/metadata/timestamp.json");
    let mut forged: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    forged["signed"]["meta"]["snapshot.json"]["version"] = 1.into();
    forged["signed"]["expires"] = "2099-01-01T00:00:00Z".into();
    std::fs::write(&path, serde_json::to_vec(&forged).unwrap()).unwrap();
    match refresh::refresh(&rt, &source, &transport) {
        Err(RefreshError::Refused(m)) => assert!(m.contains("threshold"), "{m}"),
        other => panic!("a badly signed timestamp was not refused: {other:?}"),
    }
}

fn release(version: &str) -> ReleaseMeta {
    ReleaseMeta {
        product: "aperture-edge".into(),
        board: "qemu-x86_64".into(),
        version: version.parse().unwrap(),
        security_version: 1,
        channel: "stable".into(),
        published_at: 0,
        waves: "".parse::<Waves>().unwrap(),
        halted: false,
        gate: Default::default(),
    }
}

/// The `*.json` files at the top of `dir`, sorted.
fn json_files(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".json"))
        .collect();
    names.sort();
    names
}

fn files(dir: &Path) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    out.sort();
    out
}

#[test]
fn the_conformance_client_keeps_the_served_bytes_and_each_target_once() {
    let dir = tempfile::tempdir().unwrap();
    let (mut repo, _, _) = repository(dir.path());
    let bundle = dir.path().join("bundle");
    std::fs::write(&bundle, b"bundle 1.1.0").unwrap();
    repo.publish(&bundle, release("1.1.0"), now(), false)
        .unwrap();
    let name = release("1.1.0").target_name();
    let repo_meta = dir.path().join("repo/metadata");

    let m = dir.path().join("m");
    let d = dir.path().join("d");
    std::fs::create_dir_all(&d).unwrap();
    conformance::init(&m, &repo_meta.join("1.root.json")).unwrap();
    let client = Client::new(&m, &file_url(&repo_meta), None).unwrap();
    client.refresh().unwrap();
    assert_eq!(
        json_files(&m),
        [
            "root.json",
            "snapshot.json",
            "targets.json",
            "timestamp.json"
        ]
    );
    let same = |ours: &str, theirs: &str| {
        assert_eq!(
            std::fs::read(m.join(ours)).unwrap(),
            std::fs::read(repo_meta.join(theirs)).unwrap(),
            "{ours} is not the bytes served as {theirs}"
        );
    };
    same("root.json", "1.root.json");
    same("timestamp.json", "timestamp.json");
    let snapshot = std::fs::read(m.join("snapshot.json")).unwrap();
    let v: serde_json::Value = serde_json::from_slice(&snapshot).unwrap();
    let sv = v["signed"]["version"].as_u64().unwrap();
    same("snapshot.json", &format!("{sv}.snapshot.json"));

    client.download(std::slice::from_ref(&name), &d).unwrap();
    let stored = d.join(conformance::quote(&name));
    assert_eq!(files(&d), std::slice::from_ref(&stored));
    assert_eq!(std::fs::read(&stored).unwrap(), b"bundle 1.1.0");

    // Already there with the signed hash: not fetched again (the repository's copy, now
    // corrupt, would fail).
    let served = std::fs::read_dir(dir.path().join("repo/targets"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.to_string_lossy().ends_with(".bundle"))
        .unwrap();
    std::fs::write(&served, b"bundle 6.6.6").unwrap();
    client.download(std::slice::from_ref(&name), &d).unwrap();
    assert_eq!(std::fs::read(&stored).unwrap(), b"bundle 1.1.0");

    // Gone from the target folder: fetched, refused, and nothing left behind.
    std::fs::remove_file(&stored).unwrap();
    let e = client
        .download(std::slice::from_ref(&name), &d)
        .unwrap_err();
    assert!(e.contains("its sha256 is"), "{e}");
    assert_eq!(files(&d), Vec::<PathBuf>::new());
    let e = client.download(&["no-such-target".into()], &d).unwrap_err();
    assert!(e.contains("no-such-target is not in the repository"), "{e}");
}
