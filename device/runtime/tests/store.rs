//! The model store (issue 17: "a signed model bundle installed into the data partition,
//! switched atomically, and switched back if the runtime's self-test on it fails"):
//!
//! * a good bundle installs and switches, the old model becoming `previous`;
//! * every bad bundle (wrong key, tampered, truncated, unsafe path, symlink entry, a model file
//!   its manifest.toml does not pin, an older version) is refused with an error naming the
//!   bundle and the fix, and `current` is untouched;
//! * an install stopped at each step before the switch (as a power cut would) leaves the old
//!   model current, and the next install cleans up;
//! * at startup a store model that fails is rejected, recorded, switched back from, and the
//!   fallback runs; with ONNX Runtime: the real NanoDet-m with a reference.json edited so its
//!   detections differ is rolled back and the built-in model runs.
//!
//! Snakeoil keys only. Small fake models stand in where nothing is loaded.

mod common;

use std::path::{Path, PathBuf};

use aperture_runtime::config::Config;
use aperture_runtime::models;
use aperture_runtime::store::{InstallOptions, InstallStep, Store, StoreError};
use aperture_trust::keys::{KeyringEntry, PublicKey, SignedKeyring, SigningKeyPair};
use aperture_trust::manifest::ArtifactName;
use aperture_trust::model::{sign_model_manifest, write_model_bundle, ModelManifest, ModelPath};
use aperture_vision::Manifest;

const NOW: u64 = 1_800_000_000;

struct Keys {
    root: SigningKeyPair,
    release: SigningKeyPair,
    keyring: SignedKeyring,
}

fn snakeoil(seed: u8) -> Keys {
    snakeoil_until(seed, NOW + 86_400)
}

fn snakeoil_until(seed: u8, not_after: u64) -> Keys {
    let root = SigningKeyPair::from_secret_bytes(&[seed; 32]);
    let release = SigningKeyPair::from_secret_bytes(&[seed + 1; 32]);
    let keyring = SignedKeyring::create(
        &root,
        vec![KeyringEntry::new(
            release.public(),
            "release-snakeoil",
            not_after,
        )],
    )
    .unwrap();
    Keys {
        root,
        release,
        keyring,
    }
}

fn committed_model() -> PathBuf {
    common::manifest_path().parent().unwrap().to_path_buf()
}

/// A small model folder: the committed manifest.toml pinning a fake model file of `seed`
/// bytes (nothing loads it), and a golden reference.
fn fake_model(dir: &Path, seed: u8) {
    std::fs::create_dir_all(dir.join("golden")).unwrap();
    let onnx = vec![seed; 2000];
    let sha = aperture_trust::digest::Sha256Hex::digest(&onnx);
    let text = std::fs::read_to_string(common::manifest_path()).unwrap();
    let pinned = Manifest::load(&common::manifest_path())
        .unwrap()
        .model
        .sha256;
    std::fs::write(
        dir.join("manifest.toml"),
        text.replace(&pinned, sha.as_str()),
    )
    .unwrap();
    std::fs::write(dir.join("nanodet-m.onnx"), onnx).unwrap();
    std::fs::write(dir.join("golden/reference.json"), "{\"frames\": []}").unwrap();
}

/// A copy of the committed NanoDet-m folder (model file, manifest, golden frames).
fn real_model(dir: &Path) {
    std::fs::create_dir_all(dir.join("golden")).unwrap();
    let src = committed_model();
    for f in ["manifest.toml", "nanodet-m.onnx"] {
        std::fs::copy(src.join(f), dir.join(f)).unwrap();
    }
    for e in std::fs::read_dir(src.join("golden")).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), dir.join("golden").join(e.file_name())).unwrap();
    }
}

/// Bundle the folder `dir` as `version`, the way `aperture model bundle` lays it out.
fn bundle(keys: &Keys, dir: &Path, version: &str, out: &Path) -> PathBuf {
    let mut paths = vec!["manifest.toml".to_string(), "nanodet-m.onnx".to_string()];
    let mut golden: Vec<String> = std::fs::read_dir(dir.join("golden"))
        .unwrap()
        .map(|e| format!("golden/{}", e.unwrap().file_name().to_string_lossy()))
        .collect();
    golden.sort();
    paths.extend(golden);
    let paths: Vec<ModelPath> = paths
        .into_iter()
        .map(|p| ModelPath::new(p).unwrap())
        .collect();
    let m = ModelManifest::of_folder(
        dir,
        &paths,
        ArtifactName::new("nanodet-m").unwrap(),
        version.parse().unwrap(),
        NOW - 60,
    )
    .unwrap();
    let (mj, sj) = sign_model_manifest(&m, &keys.release, &keys.keyring).unwrap();
    let bytes = write_model_bundle(Vec::new(), &mj, &sj, dir).unwrap();
    std::fs::write(out, bytes).unwrap();
    out.to_path_buf()
}

fn opts() -> InstallOptions {
    InstallOptions {
        now: NOW,
        ..InstallOptions::default()
    }
}

fn root(keys: &Keys) -> PublicKey {
    keys.root.public()
}

/// Names in the store folder, sorted.
fn listing(store: &Store) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(store.dir())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

#[test]
fn a_good_bundle_installs_and_switches_keeping_the_old_as_previous() {
    let t = tempfile::tempdir().unwrap();
    let k = snakeoil(1);
    fake_model(&t.path().join("m1"), 1);
    fake_model(&t.path().join("m2"), 2);
    let b1 = bundle(
        &k,
        &t.path().join("m1"),
        "1.0.0",
        &t.path().join("m1.bundle"),
    );
    let b2 = bundle(
        &k,
        &t.path().join("m2"),
        "1.1.0",
        &t.path().join("m2.bundle"),
    );
    let store = Store::new(t.path().join("store"));
    assert!(store.current().unwrap().is_none());

    let (m1, already) = store.install(&b1, &root(&k), &opts()).unwrap();
    assert!(!already);
    assert_eq!(store.current().unwrap().as_ref(), Some(&m1));
    assert_eq!(
        (m1.name.as_str(), m1.version.as_str()),
        ("nanodet-m", "1.0.0")
    );
    assert_eq!(
        std::fs::read(m1.dir.join("model/nanodet-m.onnx")).unwrap(),
        vec![1u8; 2000]
    );
    Manifest::load(&m1.manifest_path())
        .unwrap()
        .read_model()
        .unwrap();
    store.verify(&m1, &root(&k)).unwrap();

    let (m2, _) = store.install(&b2, &root(&k), &opts()).unwrap();
    let s = store.status().unwrap();
    assert_eq!(s.current.as_ref(), Some(&m2));
    assert_eq!(s.previous.as_ref(), Some(&m1));
    assert_eq!(
        std::fs::read_link(store.dir().join("current")).unwrap(),
        Path::new(&m2.digest)
    );
    // Installing the current one again changes nothing.
    let (again, already) = store.install(&b2, &root(&k), &opts()).unwrap();
    assert!(already && again == m2);
    // Only the two models, the links and no temporary folder.
    let mut want = vec![
        m1.digest.clone(),
        m2.digest.clone(),
        "current".into(),
        "previous".into(),
    ];
    want.sort();
    assert_eq!(listing(&store), want);

    // By hand: back to m1, then forward again.
    assert_eq!(
        store.rollback().unwrap().as_deref(),
        Some(m1.digest.as_str())
    );
    assert_eq!(store.current().unwrap().as_ref(), Some(&m1));
    store.rollback().unwrap();
    assert_eq!(store.current().unwrap().as_ref(), Some(&m2));
}

/// Install `bad` into a store whose current model is `good`'s; the error must name the bundle
/// and leave `current` as it was, with no leftovers.
fn refused(store: &Store, bad: &Path, root: &PublicKey, opts: &InstallOptions) -> String {
    let before = (store.current_digest().unwrap(), listing(store));
    let e = store.install(bad, root, opts).unwrap_err();
    let msg = e.to_string();
    assert!(
        msg.contains(&bad.display().to_string()),
        "no bundle named: {msg}"
    );
    assert_eq!(
        (store.current_digest().unwrap(), listing(store)),
        before,
        "{msg}"
    );
    msg
}

#[test]
fn every_bad_bundle_is_refused_by_name_and_leaves_current_untouched() {
    let t = tempfile::tempdir().unwrap();
    let k = snakeoil(1);
    fake_model(&t.path().join("m1"), 1);
    fake_model(&t.path().join("m2"), 2);
    let store = Store::new(t.path().join("store"));
    let good = bundle(&k, &t.path().join("m1"), "2.0.0", &t.path().join("good"));
    store.install(&good, &root(&k), &opts()).unwrap();
    let next = bundle(&k, &t.path().join("m2"), "2.1.0", &t.path().join("next"));
    let bytes = std::fs::read(&next).unwrap();
    let write = |name: &str, b: &[u8]| {
        let p = t.path().join(name);
        std::fs::write(&p, b).unwrap();
        p
    };

    // Signed under another root.
    let other = snakeoil(7);
    let alien = bundle(
        &other,
        &t.path().join("m2"),
        "2.1.0",
        &t.path().join("alien"),
    );
    let m = refused(&store, &alien, &root(&k), &opts());
    assert!(
        m.contains("not trusted here") && m.contains("keyring"),
        "{m}"
    );

    // One byte of the model file changed.
    let onnx_at = bytes.windows(4).position(|w| w == [2, 2, 2, 2]).unwrap();
    let mut tampered = bytes.clone();
    tampered[onnx_at + 10] ^= 0xff;
    let m = refused(&store, &write("tampered", &tampered), &root(&k), &opts());
    assert!(
        m.contains("nanodet-m.onnx: sha256") && m.contains("tampered with"),
        "{m}"
    );

    // Cut short, in the model file and before the end marker.
    for cut in [onnx_at + 100, bytes.len() - 700] {
        let m = refused(
            &store,
            &write("truncated", &bytes[..cut]),
            &root(&k),
            &opts(),
        );
        assert!(
            m.contains("ends early") && m.contains("fetch it again"),
            "{m}"
        );
    }

    // A forged entry: path traversal, then a symlink.
    // Its tar header (the name also appears in model.json, not at a block's start).
    let golden_at = (0..bytes.len())
        .step_by(512)
        .find(|&p| bytes[p..].starts_with(b"golden/reference.json\0"))
        .unwrap();
    let forge = |name: &[u8], flag: u8| {
        let mut b = bytes.clone();
        let block = &mut b[golden_at..golden_at + 512];
        block[..100].fill(0);
        block[..name.len()].copy_from_slice(name);
        block[156] = flag;
        block[148..156].fill(b' ');
        let sum: u32 = block.iter().map(|&x| u32::from(x)).sum();
        block[148..155].copy_from_slice(format!("{sum:06o}\0").as_bytes());
        b
    };
    // Only golden/reference.json's header is forged (not model.json, where the name also is).
    assert!(golden_at > 2048);
    let m = refused(
        &store,
        &write("traversal", &forge(b"../../etc/cron.d/x", b'0')),
        &root(&k),
        &opts(),
    );
    assert!(
        m.contains("unsafe entry name") && m.contains("../../etc/cron.d/x"),
        "{m}"
    );
    let m = refused(
        &store,
        &write("symlink", &forge(b"golden/reference.json", b'2')),
        &root(&k),
        &opts(),
    );
    assert!(
        m.contains("is a symlink") && m.contains("only regular files"),
        "{m}"
    );
    assert!(!t.path().join("etc").exists());

    // Signed, but the model file is not the one its manifest.toml pins.
    let dir = t.path().join("m3");
    fake_model(&dir, 3);
    std::fs::write(dir.join("nanodet-m.onnx"), vec![4u8; 2000]).unwrap();
    let unpinned = bundle(&k, &dir, "2.2.0", &t.path().join("unpinned"));
    let m = refused(&store, &unpinned, &root(&k), &opts());
    assert!(
        m.contains("pins") && m.contains("aperture model bundle"),
        "{m}"
    );

    // Older, then the same version with other content; the loud flag allows both.
    let older = bundle(&k, &t.path().join("m2"), "1.9.0", &t.path().join("older"));
    let m = refused(&store, &older, &root(&k), &opts());
    assert!(
        m.contains("older than the installed 2.0.0") && m.contains("--insecure-allow-downgrade"),
        "{m}"
    );
    let same = bundle(&k, &t.path().join("m2"), "2.0.0", &t.path().join("same"));
    let m = refused(&store, &same, &root(&k), &opts());
    assert!(m.contains("newer --version"), "{m}");
    let forced = InstallOptions {
        insecure_allow_downgrade: true,
        ..opts()
    };
    let (m, _) = store.install(&older, &root(&k), &forced).unwrap();
    assert_eq!(store.current().unwrap().unwrap(), m);

    // And the good next one installs after all that.
    store.install(&next, &root(&k), &opts()).unwrap();
}

#[test]
fn an_install_stopped_before_the_switch_leaves_the_old_model() {
    let t = tempfile::tempdir().unwrap();
    let k = snakeoil(1);
    fake_model(&t.path().join("m1"), 1);
    fake_model(&t.path().join("m2"), 2);
    let store = Store::new(t.path().join("store"));
    let b1 = bundle(&k, &t.path().join("m1"), "1.0.0", &t.path().join("b1"));
    let b2 = bundle(&k, &t.path().join("m2"), "1.1.0", &t.path().join("b2"));
    let (m1, _) = store.install(&b1, &root(&k), &opts()).unwrap();
    for step in [
        InstallStep::Unpacked,
        InstallStep::Renamed,
        InstallStep::PreviousSwitched,
    ] {
        let cut = InstallOptions {
            stop_after: Some(step),
            ..opts()
        };
        let e = store.install(&b2, &root(&k), &cut).unwrap_err();
        assert!(matches!(e, StoreError::Interrupted(s) if s == step), "{e}");
        let cur = store.current().unwrap().unwrap();
        assert_eq!(cur, m1, "after {step:?}");
        store.verify(&cur, &root(&k)).unwrap();
    }
    // What the cuts left (an .incoming folder, an unreferenced model) goes with the next install.
    let (m2, _) = store.install(&b2, &root(&k), &opts()).unwrap();
    assert_eq!(store.current().unwrap().unwrap(), m2);
    assert!(
        !listing(&store).iter().any(|n| n.starts_with(".incoming")),
        "{:?}",
        listing(&store)
    );
}

fn config(t: &Path, store: &Path, root_key: &Path) -> Config {
    let text = format!(
        "model = {:?}\nonnxruntime = \"/nonexistent\"\nsocket = \"/s\"\noutput_dir = \"/o\"\n\
         metrics = \"/m\"\nmodels_dir = {:?}\nroot_key = {:?}\n",
        common::manifest_path(),
        store,
        root_key
    );
    Config::parse(&text, &t.join("runtime.toml")).unwrap()
}

#[test]
fn a_store_model_that_fails_is_rejected_switched_back_from_and_never_retried() {
    let t = tempfile::tempdir().unwrap();
    let k = snakeoil(1);
    let key = t.path().join("root.pub");
    k.root.public().save(&key).unwrap();
    fake_model(&t.path().join("m1"), 1);
    fake_model(&t.path().join("m2"), 2);
    let store = Store::new(t.path().join("store"));
    let b1 = bundle(&k, &t.path().join("m1"), "1.0.0", &t.path().join("b1"));
    let b2 = bundle(&k, &t.path().join("m2"), "1.1.0", &t.path().join("b2"));
    let (m1, _) = store.install(&b1, &root(&k), &opts()).unwrap();
    let (m2, _) = store.install(&b2, &root(&k), &opts()).unwrap();
    let c = config(t.path(), store.dir(), &key);

    // m2 fails its "self-test"; m1 passes: m1 runs, m2 is recorded.
    let mut tried = Vec::new();
    let started = models::start(&c, |p| {
        tried.push(p.to_path_buf());
        let m = Manifest::load(p).map_err(|e| e.to_string())?;
        if p.starts_with(&m2.dir) {
            return Err("the model's self-test on coffee.ppm failed: 3 detections".into());
        }
        Ok(((), m, 3))
    })
    .unwrap();
    assert_eq!(tried, [m2.manifest_path(), m1.manifest_path()]);
    assert_eq!(started.store.as_ref(), Some(&m1));
    let info = started.info();
    assert_eq!(info.source, "store");
    assert_eq!(info.bundle_digest.as_deref(), Some(m1.digest.as_str()));
    let r = info.last_rejection.unwrap();
    assert_eq!(
        (r.digest.as_str(), r.version.as_str()),
        (m2.digest.as_str(), "1.1.0")
    );
    assert!(r.reason.contains("coffee.ppm"));
    let s = store.status().unwrap();
    assert_eq!((s.current, s.previous), (Some(m1.clone()), None));

    // The rejected bundle is refused if offered again.
    let e = store.install(&b2, &root(&k), &opts()).unwrap_err();
    assert!(e.to_string().contains("rejected before"), "{e}");

    // m1's file changed on disk: it no longer verifies, so it is rejected unloaded, and the
    // built-in model runs.
    std::fs::write(m1.dir.join("model/golden/reference.json"), "{}").unwrap();
    let mut tried = Vec::new();
    let started = models::start(&c, |p| {
        tried.push(p.to_path_buf());
        Ok(((), Manifest::load(p).map_err(|e| e.to_string())?, 3))
    })
    .unwrap();
    assert_eq!(tried, [common::manifest_path()]);
    assert!(started.store.is_none());
    assert_eq!(started.info().source, "built-in");
    let r = started.info().last_rejection.unwrap();
    assert!(
        r.digest == m1.digest && r.reason.contains("has changed since it was installed"),
        "{r:?}"
    );
    assert!(store.current_digest().unwrap().is_none());

    // A built-in model that fails is fatal.
    let e = models::start(&c, |_| -> Result<((), Manifest, usize), String> {
        Err("broken".into())
    })
    .unwrap_err();
    assert!(
        e.contains("the built-in model") && e.contains("broken"),
        "{e}"
    );
}

/// The real thing: NanoDet-m through ONNX Runtime. A bundle of it with golden/reference.json
/// edited (one detection's label changed) installs, fails its self-test at startup, is rolled
/// back and rejected; the built-in model runs. An unedited bundle is used from the store.
#[test]
fn with_onnx_runtime_a_model_failing_its_self_test_rolls_back_to_the_built_in_one() {
    let Some(lib) = common::library("model store rollback") else {
        return;
    };
    let ort = aperture_runtime::OnnxRuntime::load(&lib).unwrap();
    let t = tempfile::tempdir().unwrap();
    let k = snakeoil(1);
    let key = t.path().join("root.pub");
    k.root.public().save(&key).unwrap();
    let store = Store::new(t.path().join("store"));
    let c = config(t.path(), store.dir(), &key);

    let good_dir = t.path().join("good");
    real_model(&good_dir);
    let good = bundle(&k, &good_dir, "1.0.0", &t.path().join("good.bundle"));
    let (g, _) = store.install(&good, &root(&k), &opts()).unwrap();
    let started = models::start(&c, |p| models::load_ort(ort, p)).unwrap();
    assert_eq!(started.store.as_ref(), Some(&g));
    assert_eq!(started.frames, 3);
    assert!(started.info().last_rejection.is_none());

    let bad_dir = t.path().join("bad");
    real_model(&bad_dir);
    let reference = bad_dir.join("golden/reference.json");
    let text = std::fs::read_to_string(&reference).unwrap();
    let first = text.find("\"label\": \"").expect("a labelled detection");
    let edited = format!(
        "{}\"label\": \"toothbrush-edited{}",
        &text[..first],
        &text[first + "\"label\": \"".len()..]
    );
    std::fs::write(&reference, edited).unwrap();
    // No previous to fall back to: the bad one is the only store model.
    let store = Store::new(t.path().join("store2"));
    let c = config(t.path(), store.dir(), &key);
    let bad = bundle(&k, &bad_dir, "1.1.0", &t.path().join("bad.bundle"));
    let (b, _) = store.install(&bad, &root(&k), &opts()).unwrap();
    assert_eq!(store.current().unwrap().as_ref(), Some(&b));
    let started = models::start(&c, |p| models::load_ort(ort, p)).unwrap();
    assert!(started.store.is_none(), "the edited model was used");
    assert_eq!(started.manifest_path, common::manifest_path());
    assert_eq!(started.frames, 3);
    let info = started.info();
    assert_eq!(info.source, "built-in");
    let r = info.last_rejection.unwrap();
    assert_eq!(r.digest, b.digest);
    assert!(r.reason.contains("self-test"), "{}", r.reason);
    assert!(store.current_digest().unwrap().is_none());
}

#[test]
fn the_model_command_installs_without_restarting_and_reports_the_store() {
    use aperture_runtime::model_cli::{run, ModelArgs};
    use clap::Parser;
    let t = tempfile::tempdir().unwrap();
    // The command checks expiry by the real clock: a key that never expires.
    let k = snakeoil_until(1, u64::MAX);
    let key = t.path().join("root.pub");
    k.root.public().save(&key).unwrap();
    fake_model(&t.path().join("m1"), 1);
    let b1 = bundle(&k, &t.path().join("m1"), "1.0.0", &t.path().join("b1"));
    let cfg = t.path().join("runtime.toml");
    std::fs::write(
        &cfg,
        format!(
            "model = {:?}\nonnxruntime = \"/x\"\nsocket = \"/s\"\noutput_dir = \"/o\"\n\
             metrics = \"/m\"\nmodels_dir = {:?}\nroot_key = {:?}\n",
            common::manifest_path(),
            t.path().join("store"),
            key
        ),
    )
    .unwrap();
    let go = |args: &[&str]| {
        let mut lines = Vec::new();
        let parsed = ModelArgs::try_parse_from(args).unwrap();
        run(&parsed, &mut |l| lines.push(l.to_string())).map(|()| lines)
    };
    let cfg_s = cfg.to_str().unwrap();
    let lines = go(&[
        "model",
        "install",
        b1.to_str().unwrap(),
        "--config",
        cfg_s,
        "--no-restart",
    ])
    .unwrap();
    let digest = Store::new(t.path().join("store"))
        .current_digest()
        .unwrap()
        .unwrap();
    assert_eq!(lines, std::slice::from_ref(&digest));
    let lines = go(&["model", "status", "--config", cfg_s, "--json"]).unwrap();
    let v: serde_json::Value = serde_json::from_str(&lines.join("\n")).unwrap();
    assert_eq!(v["current"]["digest"], digest.as_str());
    assert_eq!(v["current"]["version"], "1.0.0");
    assert!(v["previous"].is_null());
    let lines = go(&["model", "status", "--config", cfg_s]).unwrap();
    assert!(lines[1].contains("nanodet-m 1.0.0"), "{lines:?}");
    // A config without models_dir says what to add.
    std::fs::write(
        &cfg,
        std::fs::read_to_string(&cfg)
            .unwrap()
            .replace("models_dir", "# models_dir"),
    )
    .unwrap();
    let e = go(&["model", "status", "--config", cfg_s]).unwrap_err();
    assert!(
        e.contains("has no models_dir") && e.contains("/var/lib/aperture-runtime/models"),
        "{e}"
    );
}

/// As root (the install command's user), a new store and each installed model are given to the
/// owner of the unit's StateDirectory, so the runtime's own user can switch back.
#[test]
fn installed_models_belong_to_the_state_directory_s_owner() {
    use std::os::unix::fs::MetadataExt;
    let t = tempfile::tempdir().unwrap();
    let state = t.path().join("state");
    std::fs::create_dir(&state).unwrap();
    if let Err(e) = std::os::unix::fs::lchown(&state, Some(61_234), Some(61_234)) {
        eprintln!("SKIPPED: installing as root needs root to give files away: {e}");
        return;
    }
    let k = snakeoil(1);
    fake_model(&t.path().join("m1"), 1);
    let b1 = bundle(&k, &t.path().join("m1"), "1.0.0", &t.path().join("b1"));
    let store = Store::new(state.join("models"));
    let (m1, _) = store.install(&b1, &root(&k), &opts()).unwrap();
    for p in [
        store.dir().to_path_buf(),
        m1.dir.clone(),
        m1.dir.join("model.json"),
        m1.dir.join("model/golden"),
        m1.dir.join("model/nanodet-m.onnx"),
    ] {
        let meta = std::fs::metadata(&p).unwrap();
        assert_eq!(
            (meta.uid(), meta.gid()),
            (61_234, 61_234),
            "{}",
            p.display()
        );
    }
}
