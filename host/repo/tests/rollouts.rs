//! The `rollouts` role: delegated once with the targets key, then signed by the fleet server's
//! online key alone (the targets and root keys may be offline: removed here), each change
//! loaded back through tough's client from the first root, synced, refreshed before it
//! expires, and refused where it would be wrong (before delegation, for an unpublished
//! release, with development keys under `--release`).

mod common;

use aperture_release::rollout::{RolloutMeta, Selection, State, CUSTOM_KEY, ROLE};
use aperture_repo::Repo;
use common::{bundle, load, meta, t};

fn rollout(state: State) -> RolloutMeta {
    RolloutMeta {
        id: 42,
        channel: "stable".into(),
        version: "1.1.0".parse().unwrap(),
        state,
        started_at: 1_800_000_100,
        waves: "10%@0h,100%@2h".parse().unwrap(),
        devices: Selection::Devices(vec!["dev-a".into(), "dev-b".into()]),
        pinned: vec!["dev-b".into()],
    }
}

/// The rollouts a client sees in `served`, with the rollouts role's version.
fn seen(served: &std::path::Path, root1: &[u8]) -> (u64, Vec<RolloutMeta>) {
    let repo = load(served, root1, false).unwrap();
    let role = repo.delegated_role(ROLE).expect("the rollouts role");
    let signed = role.targets.as_ref().expect("its metadata loaded");
    let list = signed
        .signed
        .targets
        .values()
        .filter_map(|t| RolloutMeta::from_custom(&t.custom)?.ok())
        .collect();
    (signed.signed.version.get(), list)
}

#[test]
fn delegated_once_then_signed_online_only_and_every_state_reaches_a_client() {
    let dir = tempfile::tempdir().unwrap();
    let repo_dir = dir.path().join("repo");
    let mut repo = Repo::init(&repo_dir, false, t(0)).unwrap();
    let root1 = std::fs::read(repo_dir.join("metadata/1.root.json")).unwrap();
    let e = repo
        .set_rollout(&rollout(State::Active), t(10), false)
        .unwrap_err();
    assert!(
        format!("{e:#}").contains("aperture repo delegate-rollouts"),
        "{e:#}"
    );
    assert!(repo.delegate_rollouts(t(10), false).unwrap());
    assert!(!repo.delegate_rollouts(t(20), false).unwrap());
    assert!(repo_dir.join("keys/rollouts.pk8").exists());
    assert!(aperture_repo::keys::marker(&repo_dir.join("keys/rollouts.pk8")).exists());
    assert!(std::fs::read_to_string(repo_dir.join("repo.toml"))
        .unwrap()
        .contains("[rollouts]"));
    // The delegation: one key, threshold 1, the two-level pattern, terminating.
    let targets = repo.targets();
    let d = targets.delegations.as_ref().unwrap();
    let role = d.roles.iter().find(|r| r.name == ROLE).unwrap();
    assert!(role.terminating);
    assert_eq!(role.keyids.len(), 1);
    let doc = serde_json::to_value(role).unwrap();
    assert_eq!(doc["paths"], serde_json::json!(["rollouts/*/*"]));
    assert_eq!(seen(&repo_dir, &root1), (1, vec![]));

    // A rollout of a release the repository does not list is refused.
    let e = repo
        .set_rollout(&rollout(State::Active), t(30), false)
        .unwrap_err();
    assert!(format!("{e:#}").contains("publish it before"), "{e:#}");
    let b = bundle(dir.path(), "update.bundle", b"v1.1.0");
    repo.publish(&b, meta("1.1.0", "stable"), t(40), false)
        .unwrap();

    // The online step needs neither the root nor the targets key: take them offline.
    let offline = dir.path().join("offline");
    std::fs::create_dir_all(&offline).unwrap();
    for k in ["root", "targets"] {
        let from = repo_dir.join(format!("keys/{k}.pk8"));
        std::fs::rename(&from, offline.join(format!("{k}.pk8"))).unwrap();
    }
    let mut repo = Repo::open(&repo_dir).unwrap();
    let targets_before = repo.targets().version;
    assert!(repo
        .set_rollout(&rollout(State::Active), t(50), false)
        .unwrap());
    assert!(!repo
        .set_rollout(&rollout(State::Active), t(60), false)
        .unwrap());
    assert_eq!(seen(&repo_dir, &root1), (2, vec![rollout(State::Active)]));
    assert!(repo
        .set_rollout(&rollout(State::Halted), t(70), false)
        .unwrap());
    assert_eq!(repo.targets().version, targets_before);
    assert_eq!(repo.rollout_list(), vec![rollout(State::Halted)]);

    // Synced as metadata only, and what the client reads from the copy is the halt.
    let served = dir.path().join("served");
    aperture_repo::sync::to_dir(&repo_dir, &served).unwrap();
    assert!(served.join("metadata/3.rollouts.json").is_file());
    let (version, list) = seen(&served, &root1);
    assert_eq!(version, 3);
    assert_eq!(list[0].state, State::Halted);
    // The record's custom object is what the rollout says, under its key.
    let raw: serde_json::Value =
        serde_json::from_slice(&std::fs::read(repo_dir.join("metadata/3.rollouts.json")).unwrap())
            .unwrap();
    assert_eq!(
        raw["signed"]["targets"]["rollouts/stable/1.1.0.json"]["custom"][CUSTOM_KEY]["state"],
        "halted"
    );

    // Status lists the role; a refresh re-signs it once half its week is gone.
    let st = repo.status(t(100));
    assert!(st.roles.iter().any(|r| r.role == ROLE && r.version == 3));
    assert!(!repo.refresh_rollouts(t(86_400), false, false).unwrap());
    assert!(repo.refresh_rollouts(t(4 * 86_400), false, false).unwrap());
    assert_eq!(seen(&repo_dir, &root1).0, 4);
}

#[test]
fn release_mode_refuses_a_development_rollouts_key() {
    let dir = tempfile::tempdir().unwrap();
    let repo_dir = dir.path().join("repo");
    let mut repo = Repo::init(&repo_dir, false, t(0)).unwrap();
    let e = repo.delegate_rollouts(t(10), true).unwrap_err();
    assert!(
        format!("{e:#}").contains("never makes development"),
        "{e:#}"
    );
    assert!(!repo_dir.join("keys/rollouts.pk8").exists());
    repo.delegate_rollouts(t(10), false).unwrap();
    let b = bundle(dir.path(), "update.bundle", b"v1.1.0");
    repo.publish(&b, meta("1.1.0", "stable"), t(40), false)
        .unwrap();
    let e = repo
        .set_rollout(&rollout(State::Active), t(50), true)
        .unwrap_err();
    assert!(format!("{e:#}").contains("development"), "{e:#}");
}
