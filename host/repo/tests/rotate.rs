//! `repo rotate-root` checked the way a device sees it: tough's client, trusting only the
//! repository's first root, follows each rotation, and refuses metadata signed by a key the
//! rotation retired (while the same metadata signed by the new key is accepted, so the refusal
//! is the key's and nothing else's).

mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use aperture_repo::{keys, Repo, RepoConfig, Role};
use common::{bundle, load, meta};
use tough::editor::signed::SignedRole;
use tough::key_source::{KeySource, LocalKeySource};
use tough::schema::{KeyHolder, Root, Signed, Timestamp};

fn now() -> jiff::Timestamp {
    jiff::Timestamp::now()
}

fn read<T: serde::de::DeserializeOwned>(path: &Path) -> T {
    serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
}

/// `role` signed by the key file `key`, which `holder` lists for the role.
fn sign_with<T: tough::schema::Role + serde::Serialize>(
    role: T,
    holder: &Root,
    key: &Path,
) -> Vec<u8> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let keys: Vec<Box<dyn KeySource>> = vec![Box::new(LocalKeySource {
        path: key.to_path_buf(),
    })];
    let rng = aws_lc_rs::rand::SystemRandom::new();
    let signed = rt
        .block_on(SignedRole::new(
            role,
            &KeyHolder::Root(holder.clone()),
            &keys,
            &rng,
        ))
        .unwrap();
    signed.buffer().clone()
}

/// A copy of the repository folder to tamper with.
fn copy_repo(from: &Path, to: &Path) {
    for sub in ["metadata", "targets"] {
        std::fs::create_dir_all(to.join(sub)).unwrap();
        for e in std::fs::read_dir(from.join(sub)).unwrap() {
            let e = e.unwrap();
            std::fs::copy(e.path(), to.join(sub).join(e.file_name())).unwrap();
        }
    }
}

#[test]
fn a_client_from_root_1_follows_a_root_and_timestamp_rotation_and_refuses_retired_keys() {
    let dir = tempfile::tempdir().unwrap();
    let repo_dir = dir.path().join("repo");
    let mut repo = Repo::init(&repo_dir, false, now()).unwrap();
    let b = bundle(dir.path(), "u.bundle", b"bundle v1.1.0");
    repo.publish(&b, meta("1.1.0", "stable"), now(), false)
        .unwrap();
    let root1_bytes = std::fs::read(repo_dir.join("metadata/1.root.json")).unwrap();
    let root1: Signed<Root> = read(&repo_dir.join("metadata/1.root.json"));

    let done = repo
        .rotate_root(
            &[Role::Root, Role::Timestamp],
            &HashMap::new(),
            now(),
            false,
        )
        .unwrap();
    assert_eq!(done.root_version, 2);
    assert_eq!(done.resigned, vec![Role::Timestamp]);
    let new_root_key = repo_dir.join("keys/root-v2.pk8");
    let new_ts_key = repo_dir.join("keys/timestamp-v2.pk8");
    assert_eq!(done.made, vec![new_root_key.clone(), new_ts_key.clone()]);
    // Made loudly as development keys, and repo.toml names them now.
    assert!(keys::marker(&new_root_key).exists() && keys::marker(&new_ts_key).exists());
    let config = RepoConfig::load(&repo_dir).unwrap();
    assert_eq!(config.root.keys, vec![PathBuf::from("keys/root-v2.pk8")]);
    assert_eq!(
        config.timestamp.keys,
        vec![PathBuf::from("keys/timestamp-v2.pk8")]
    );
    assert_eq!(config.targets.keys, vec![PathBuf::from("keys/targets.pk8")]);

    // Root 2 lists only the new root and timestamp keys and is signed by the old root key and
    // the new one; root.json is root 2.
    let root2: Signed<Root> = read(&repo_dir.join("metadata/2.root.json"));
    assert_eq!(
        std::fs::read(repo_dir.join("metadata/root.json")).unwrap(),
        std::fs::read(repo_dir.join("metadata/2.root.json")).unwrap()
    );
    let ids = |root: &Root, role: Role| root.roles[&role.tuf()].keyids.clone();
    let old_root_ids = ids(&root1.signed, Role::Root);
    let new_root_ids = ids(&root2.signed, Role::Root);
    assert_ne!(old_root_ids, new_root_ids);
    assert_ne!(
        ids(&root1.signed, Role::Timestamp),
        ids(&root2.signed, Role::Timestamp)
    );
    assert_eq!(
        ids(&root1.signed, Role::Snapshot),
        ids(&root2.signed, Role::Snapshot)
    );
    let signers: Vec<_> = root2.signatures.iter().map(|s| s.keyid.clone()).collect();
    assert_eq!(signers.len(), 2, "{signers:?}");
    assert!(signers.contains(&old_root_ids[0]) && signers.contains(&new_root_ids[0]));
    assert!(!root2.signed.keys.contains_key(&old_root_ids[0]));

    // A device that trusts only root 1 follows the rotation, expiry enforced.
    let client = load(&repo_dir, &root1_bytes, true).unwrap();
    assert_eq!(client.root().signed.version.get(), 2);
    assert_eq!(client.timestamp().signed.version.get(), 3);
    assert_eq!(client.all_targets().count(), 1);

    // A timestamp signed by the retired timestamp key is refused; the same one signed by the
    // new key is accepted.
    let mut ts: Signed<Timestamp> = read(&repo_dir.join("metadata/timestamp.json"));
    ts.signed.version = ts.signed.version.checked_add(1).unwrap();
    for (key, holder, accepted) in [
        (repo_dir.join("keys/timestamp.pk8"), &root1.signed, false),
        (new_ts_key, &root2.signed, true),
    ] {
        let forged = dir.path().join(format!("forged-ts-{accepted}"));
        copy_repo(&repo_dir, &forged);
        std::fs::write(
            forged.join("metadata/timestamp.json"),
            sign_with(ts.signed.clone(), holder, &key),
        )
        .unwrap();
        match load(&forged, &root1_bytes, true) {
            Ok(_) => assert!(accepted, "a retired key's timestamp was accepted"),
            Err(e) if !accepted => {
                assert!(e.contains("timestamp") || e.contains("ignature"), "{e}")
            }
            Err(e) => panic!("the new key's timestamp was refused: {e}"),
        }
    }

    // A root 3 signed only by the retired root key is refused; signed by the new root key
    // (the threshold of root 2 and of itself) it is accepted.
    let mut root3 = root2.signed.clone();
    root3.version = root3.version.checked_add(1).unwrap();
    for (key, holder, accepted) in [
        (repo_dir.join("keys/root.pk8"), &root1.signed, false),
        (new_root_key, &root2.signed, true),
    ] {
        let forged = dir.path().join(format!("forged-root-{accepted}"));
        copy_repo(&repo_dir, &forged);
        std::fs::write(
            forged.join("metadata/3.root.json"),
            sign_with(root3.clone(), holder, &key),
        )
        .unwrap();
        match load(&forged, &root1_bytes, true) {
            Ok(c) => {
                assert!(accepted, "a root signed by a retired key was accepted");
                assert_eq!(c.root().signed.version.get(), 3);
            }
            Err(e) if !accepted => assert!(e.to_lowercase().contains("root"), "{e}"),
            Err(e) => panic!("a root signed by the new root key was refused: {e}"),
        }
    }
}

#[test]
fn rotating_every_role_re_signs_the_chain_and_a_client_walks_two_rotations() {
    let dir = tempfile::tempdir().unwrap();
    let repo_dir = dir.path().join("repo");
    let mut repo = Repo::init(&repo_dir, false, now()).unwrap();
    let b = bundle(dir.path(), "u.bundle", b"bundle v1.1.0");
    repo.publish(&b, meta("1.1.0", "stable"), now(), false)
        .unwrap();
    let root1 = std::fs::read(repo_dir.join("metadata/1.root.json")).unwrap();
    let before = repo.status(now());
    let all = [Role::Root, Role::Targets, Role::Snapshot, Role::Timestamp];
    let done = repo
        .rotate_root(&all, &HashMap::new(), now(), false)
        .unwrap();
    assert_eq!(
        done.resigned,
        vec![Role::Targets, Role::Snapshot, Role::Timestamp]
    );
    let after = repo.status(now());
    for (b, a) in before.roles.iter().zip(&after.roles) {
        assert_eq!(a.version, b.version + 1, "{}", a.role);
        assert_ne!(a.keys, b.keys, "{}", a.role);
    }
    // Root only, again: root 3; nothing else is re-signed, and the client walks 1, 2, 3.
    let done = repo
        .rotate_root(&[Role::Root], &HashMap::new(), now(), false)
        .unwrap();
    assert_eq!((done.root_version, done.resigned.len()), (3, 0));
    assert!(repo_dir.join("keys/root-v3.pk8").exists());
    let client = load(&repo_dir, &root1, true).unwrap();
    assert_eq!(client.root().signed.version.get(), 3);
    assert_eq!(client.targets().signed.version.get(), 3);
    // The repository reopens from disk with the rotated keys and signs with them.
    let mut repo = Repo::open(&repo_dir).unwrap();
    let b2 = bundle(dir.path(), "u2.bundle", b"bundle v1.2.0");
    repo.publish(&b2, meta("1.2.0", "stable"), now(), false)
        .unwrap();
    assert_eq!(
        load(&repo_dir, &root1, true).unwrap().all_targets().count(),
        2
    );
}

#[test]
fn a_release_rotation_takes_given_keys_and_refuses_development_ones() {
    let dir = tempfile::tempdir().unwrap();
    // A development repository: --release refuses its keys.
    let dev = dir.path().join("dev");
    let mut repo = Repo::init(&dev, false, now()).unwrap();
    let e = format!(
        "{:#}",
        repo.rotate_root(&[Role::Root], &HashMap::new(), now(), true)
            .unwrap_err()
    );
    assert!(e.contains("--release never makes development keys"), "{e}");
    // Nothing was written.
    assert!(!dev.join("metadata/2.root.json").exists());

    // A release repository (keys made beforehand, no markers).
    let rel = dir.path().join("rel");
    for role in ["root", "targets", "snapshot", "timestamp"] {
        keys::generate(&rel.join(format!("keys/{role}.pk8")), false).unwrap();
    }
    let mut repo = Repo::init(&rel, true, now()).unwrap();
    let root1 = std::fs::read(rel.join("metadata/1.root.json")).unwrap();
    let offline = dir.path().join("offline/root-2.pk8");
    keys::generate(&offline, false).unwrap();
    let given = |role: Role, path: &Path| HashMap::from([(role, vec![path.to_path_buf()])]);
    // A key for a role not rotated, and an old key as the new one: refused.
    let e = format!(
        "{:#}",
        repo.rotate_root(&[Role::Root], &given(Role::Targets, &offline), now(), true)
            .unwrap_err()
    );
    assert!(e.contains("not being rotated"), "{e}");
    let e = format!(
        "{:#}",
        repo.rotate_root(
            &[Role::Root],
            &given(Role::Root, &rel.join("keys/root.pk8")),
            now(),
            true
        )
        .unwrap_err()
    );
    assert!(e.contains("one the role already has"), "{e}");
    // The offline key: root 2, no development key made, repo.toml names it.
    let done = repo
        .rotate_root(&[Role::Root], &given(Role::Root, &offline), now(), true)
        .unwrap();
    assert!(done.made.is_empty());
    assert_eq!(
        RepoConfig::load(&rel).unwrap().root.keys,
        vec![offline.clone()]
    );
    assert!(!repo.status(now()).development_keys);
    assert_eq!(
        load(&rel, &root1, true)
            .unwrap()
            .root()
            .signed
            .version
            .get(),
        2
    );
    // The rotated root signs what comes next (a refresh of root 3).
    let mut repo = Repo::open(&rel).unwrap();
    repo.refresh(now(), true, true).unwrap();
    assert_eq!(
        load(&rel, &root1, true)
            .unwrap()
            .root()
            .signed
            .version
            .get(),
        3
    );
}
