//! Tier 1 (no root, no Debian base): the audit reads an image's build facts and says when the
//! recipe gave its board no TPM, so the disk keys are stored unsealed (issue 12.4: "make 'this
//! board has no TPM' an explicit recipe setting that the audit reports"). The images are tiny
//! trees committed to a build store in a temporary folder.

use std::collections::BTreeMap;
use std::path::Path;

use aperture_appliance::{Board, BuildFacts};
use aperture_image::audit::{audit_commit, Severity};
use aperture_image::store::Store;

/// Commit a tree holding only `etc/aperture/build.json` with these facts (or nothing).
fn commit(dir: &Path, name: &str, facts: Option<&BuildFacts>) -> (Store, String) {
    let tree = dir.join(name);
    std::fs::create_dir_all(tree.join("etc/aperture")).unwrap();
    if let Some(facts) = facts {
        std::fs::write(tree.join("etc/aperture/build.json"), facts.to_bytes()).unwrap();
    }
    let store = Store::open_or_create(&dir.join("repo")).unwrap();
    let commit = store
        .commit_tree(&tree, &format!("test/{name}"), name, &BTreeMap::new(), 0)
        .unwrap();
    (store, commit)
}

fn facts(tpm: bool) -> BuildFacts {
    BuildFacts {
        product: "aperture-vision".into(),
        version: "1.0.0".into(),
        security_version: 1,
        board: Board::JetsonXavierAgx,
        recipe_sha256: "0".repeat(64),
        source_date_epoch: 1_700_000_000,
        required_services: Vec::new(),
        tpm,
        reset_button: None,
    }
}

/// The audit's findings of check `keys`: (severity, problem).
fn key_findings(store: &Store, commit: &str) -> Vec<(Severity, String)> {
    audit_commit(store, commit, None)
        .unwrap()
        .findings
        .into_iter()
        .filter(|f| f.check == "keys")
        .map(|f| (f.severity, f.problem))
        .collect()
}

#[test]
fn a_board_without_a_tpm_is_reported_and_one_with_a_tpm_is_not() {
    let dir = tempfile::tempdir().unwrap();
    let (store, without) = commit(dir.path(), "no-tpm", Some(&facts(false)));
    let found = key_findings(&store, &without);
    assert_eq!(found.len(), 1, "{found:?}");
    assert_eq!(found[0].0, Severity::Note, "{found:?}");
    assert!(
        found[0].1.contains("jetson-xavier-agx has no TPM")
            && found[0].1.contains("stored unsealed"),
        "{found:?}"
    );

    let (store, with) = commit(dir.path(), "tpm", Some(&facts(true)));
    assert_eq!(key_findings(&store, &with), Vec::new());
}

#[test]
fn an_image_without_build_facts_is_a_violation() {
    let dir = tempfile::tempdir().unwrap();
    let (store, bare) = commit(dir.path(), "bare", None);
    let found = key_findings(&store, &bare);
    assert_eq!(found.len(), 1, "{found:?}");
    assert_eq!(found[0].0, Severity::Violation, "{found:?}");
    assert!(found[0].1.contains("no build facts"), "{found:?}");
}
