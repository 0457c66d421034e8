//! Tier 2, the release repository on a real web server: a repository made and published by
//! `aperture-repo`, synced to a folder with `repo sync --to DIR`, served by nginx over HTTPS
//! (TLS 1.3, a test CA), polled by the appliance's update loop (the same client code the agent
//! runs): it finds and streams the release, a poll that finds nothing new costs the root probe
//! and the timestamp in under 2 KiB by nginx's own log, and a server certificate from another
//! CA is refused before any metadata is read.
//!
//! Tier 1 in the same file (no root, no tools): `aperture release publish --gate-on-rollout`
//! refused without the rollouts role, and a gated release held back until a rollout names the
//! device; delta bundles made by `aperture bundle --from` and by `release publish`, and chosen
//! by a device that booted their base.

use aperture_client::recorder::Recorder;
use aperture_client::{Outcome, Running, StateDir, UpdateLoop};
use aperture_release::{ReleaseMeta, Settings, Waves};
use aperture_tests::fleet::{self, Nginx};
use aperture_updater::source::FetchOptions;

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn release(version: &str) -> ReleaseMeta {
    ReleaseMeta {
        product: "aperture-edge".into(),
        board: "qemu-x86_64".into(),
        version: version.parse().unwrap(),
        security_version: 1,
        channel: "stable".into(),
        published_at: 0,
        waves: Waves::default(),
        halted: false,
        gate: Default::default(),
    }
}

fn device(
    dir: &std::path::Path,
    name: &str,
    version: &str,
    url: &str,
    ca: &std::path::Path,
) -> UpdateLoop<Recorder> {
    let root = fleet::template().unwrap().join("metadata/1.root.json");
    device_trusting(dir, name, version, url, ca, &root)
}

/// A device that trusts the repository whose first root is `root`.
fn device_trusting(
    dir: &std::path::Path,
    name: &str,
    version: &str,
    url: &str,
    ca: &std::path::Path,
    root: &std::path::Path,
) -> UpdateLoop<Recorder> {
    device_booted(dir, name, version, url, ca, root, None)
}

/// [`device_trusting`], booted with the rootfs verity root hash `root_hash`.
fn device_booted(
    dir: &std::path::Path,
    name: &str,
    version: &str,
    url: &str,
    ca: &std::path::Path,
    root: &std::path::Path,
    root_hash: Option<String>,
) -> UpdateLoop<Recorder> {
    let state = dir.join(name);
    std::fs::create_dir_all(&state).unwrap();
    let mut fetch = FetchOptions::new(dir.join("no-system-cas.pem"));
    fetch.extra_ca = Some(ca.to_path_buf());
    fetch.timeout = std::time::Duration::from_secs(10);
    UpdateLoop::new(
        Settings {
            repository: url.into(),
            channel: "stable".into(),
            poll_interval_secs: 900,
            maintenance_window: None,
            insecure_http: false,
        },
        Running {
            product: "aperture-edge".into(),
            board: "qemu-x86_64".into(),
            version: version.parse().unwrap(),
            root_hash,
        },
        root.to_path_buf(),
        StateDir(state),
        fetch,
        Recorder::default(),
    )
    .unwrap()
}

#[test]
#[ignore = "tier 2: needs nginx (cargo xtask test installs it)"]
fn a_repository_served_by_nginx_over_https_updates_a_device_and_an_idle_poll_is_small() {
    if !aperture_tests::have_tool("nginx", "the nginx-served repository test")
        && !std::path::Path::new("/usr/sbin/nginx").exists()
    {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let mut repo = fleet::fresh_repo(&tmp.path().join("repo")).unwrap();
    let bundle = tmp.path().join("v11.bundle");
    let bytes: Vec<u8> = (0..3 << 20).map(|i: u32| (i * 7 % 251) as u8).collect();
    std::fs::write(&bundle, &bytes).unwrap();
    let t = now();
    repo.publish(&bundle, release("1.1.0"), jiff::Timestamp::now(), false)
        .unwrap();
    let served = tmp.path().join("www");
    aperture_repo::sync::to_dir(&tmp.path().join("repo"), &served).unwrap();
    assert!(
        !served.join("keys").exists(),
        "the signing keys are never synced"
    );
    let nginx = Nginx::start(&served, 0, &tmp.path().join("nginx")).unwrap();
    let ca = fleet::pki().unwrap().ca;

    // A device on 1.0.0 finds 1.1.0 and streams it, checked against the signed length and hash.
    let mut old = device(tmp.path(), "old", "1.0.0", &nginx.url(), &ca);
    old.check(t);
    assert_eq!(
        old.status().result,
        Some(Outcome::Installed),
        "{}",
        old.status().message
    );
    assert_eq!(old.installer().installs.len(), 1);
    assert!(old.installer().installs[0].0 == bytes, "the bundle's bytes");
    assert!(old.installer().installs[0]
        .1
        .starts_with(&format!("{}targets/", nginx.url())));

    // A device on 1.1.0: its first poll fetches the metadata, its second only probes.
    let mut up = device(tmp.path(), "up", "1.1.0", &nginx.url(), &ca);
    up.check(t);
    assert_eq!(up.status().result, Some(Outcome::UpToDate));
    let before = nginx.requests().len();
    up.check(t + 900);
    assert_eq!(up.status().result, Some(Outcome::UpToDate));
    let idle: Vec<_> = nginx.requests()[before..].to_vec();
    let paths: Vec<&str> = idle.iter().map(|r| r.path.as_str()).collect();
    assert_eq!(
        paths,
        ["/metadata/2.root.json", "/metadata/timestamp.json"],
        "{idle:?}"
    );
    assert_eq!(idle[0].status, 404);
    let total: u64 = idle.iter().map(|r| r.bytes).sum();
    assert!(total < 2048, "an idle poll cost {total} bytes: {idle:?}");
    eprintln!(
        "idle poll: {} requests, {total} bytes: {idle:?}",
        idle.len()
    );

    // A server whose certificate another CA signed: refused at the handshake.
    let other = tmp.path().join("other-ca.pem");
    let key = rcgen_ca(&other);
    let _ = key;
    let mut wary = device(tmp.path(), "wary", "1.0.0", &nginx.url(), &other);
    wary.check(t);
    let st = wary.status();
    assert_eq!(st.result, Some(Outcome::Unreachable), "{}", st.message);
    assert!(
        st.message.contains("TLS") || st.message.contains("certificate"),
        "{}",
        st.message
    );
    assert!(wary.installer().installs.is_empty());
}

/// A CA certificate nobody signed the server with.
fn rcgen_ca(path: &std::path::Path) -> String {
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    std::fs::write(path, params.self_signed(&key).unwrap().pem()).unwrap();
    key.serialize_pem()
}

/// A build output folder that `aperture verify` accepts, made here without root: one slot
/// artifact (a kernel, random bytes) in a manifest signed by a snakeoil release key that a
/// snakeoil root certifies, `root.pub`, and the bundle. What `release publish` reads of a
/// build is exactly this (the signature, each listed artifact, the bundle); the real build's
/// folder goes through the same path in `privileged.rs`.
fn snakeoil_build(dir: &std::path::Path, version: &str) -> std::path::PathBuf {
    snakeoil_build_with(dir, version, None)
}

/// The snakeoil release keys as a keys folder (`keys generate`'s layout), for the verbs that
/// sign.
fn snakeoil_keys(dir: &std::path::Path) {
    std::fs::create_dir_all(dir).unwrap();
    let (root, release, keyring) = snakeoil_signers();
    root.public().save(&dir.join("root.pub")).unwrap();
    release.save(&dir.join("release.key")).unwrap();
    std::fs::write(
        dir.join("keyring.json"),
        serde_json::to_vec(&keyring).unwrap(),
    )
    .unwrap();
}

/// The snakeoil root, the release key it certifies for a day, and that keyring.
fn snakeoil_signers() -> (
    aperture_trust::keys::SigningKeyPair,
    aperture_trust::keys::SigningKeyPair,
    aperture_trust::keys::SignedKeyring,
) {
    use aperture_trust::keys::{KeyringEntry, SignedKeyring, SigningKeyPair};
    let root = SigningKeyPair::from_secret_bytes(&[11; 32]);
    let release = SigningKeyPair::from_secret_bytes(&[12; 32]);
    let keyring = SignedKeyring::create(
        &root,
        vec![KeyringEntry::new(
            release.public(),
            "release-snakeoil",
            now() + 86_400,
        )],
    )
    .unwrap();
    (root, release, keyring)
}

/// [`snakeoil_build`], with a rootfs image (`rootfs` data and its dm-verity tree) when given.
fn snakeoil_build_with(
    dir: &std::path::Path,
    version: &str,
    rootfs: Option<Vec<u8>>,
) -> std::path::PathBuf {
    use aperture_image::outputs::names;
    use aperture_trust::bundle::{write_bundle, PayloadSource};
    use aperture_trust::manifest::{
        Artifact, ArtifactName, BuildInfo, Manifest, Payload, PayloadEncoding, Role, Sha256Hex,
    };
    std::fs::create_dir_all(dir).unwrap();
    let (root, release, keyring) = snakeoil_signers();
    let kernel: Vec<u8> = (0..200_000u32).map(|i| (i * 13 % 251) as u8).collect();
    // At the build's default bundle level: a delta bundle sends the kernel whole (qemu boards
    // send their UKIs as deltas, not a kernel), compressed again exactly as the build did.
    std::fs::write(dir.join(names::KERNEL), &kernel).unwrap();
    let zst_path = dir.join("vmlinuz.zst.tmp");
    aperture_trust::bundle::compress_payload(&dir.join(names::KERNEL), &zst_path, 3).unwrap();
    let zst = std::fs::read(&zst_path).unwrap();
    std::fs::remove_file(&zst_path).unwrap();
    let mut artifacts = Vec::new();
    let mut payloads = Vec::new();
    if let Some(data) = rootfs {
        let path = dir.join(names::ROOTFS);
        std::fs::write(&path, &data).unwrap();
        let mut f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .unwrap();
        let verity = aperture_trust::verity::append_hash_tree(
            &mut f,
            data.len() as u64,
            version.as_bytes(),
            [3; 16],
        )
        .unwrap();
        drop(f);
        let image = std::fs::read(&path).unwrap();
        let zst = zstd::encode_all(&image[..], 1).unwrap();
        artifacts.push(Artifact {
            name: ArtifactName::new(names::ROOTFS).unwrap(),
            role: Role::Rootfs,
            size: image.len() as u64,
            sha256: Sha256Hex::digest(&image),
            verity: Some(verity),
            payload: Some(Payload {
                encoding: PayloadEncoding::Zstd,
                size: zst.len() as u64,
                sha256: Sha256Hex::digest(&zst),
                base: None,
            }),
        });
        payloads.push((names::ROOTFS, zst));
    }
    let manifest = Manifest {
        format: 1,
        product: "aperture-edge".into(),
        board: "qemu-x86_64".into(),
        version: version.parse().unwrap(),
        security_version: 1,
        build: BuildInfo {
            source_date_epoch: 1_700_000_000,
            recipe_sha256: Sha256Hex::digest(b"snakeoil recipe"),
            ostree_commit: None,
            ostree_ref: None,
        },
        boot: None,
        artifacts: artifacts
            .into_iter()
            .chain([Artifact {
                name: ArtifactName::new(names::KERNEL).unwrap(),
                role: Role::Kernel,
                size: kernel.len() as u64,
                sha256: Sha256Hex::digest(&kernel),
                verity: None,
                payload: Some(Payload {
                    encoding: PayloadEncoding::Zstd,
                    size: zst.len() as u64,
                    sha256: Sha256Hex::digest(&zst),
                    base: None,
                }),
            }])
            .collect(),
    };
    payloads.push((names::KERNEL, zst));
    let (manifest_json, sig_json) =
        aperture_trust::signing::sign_manifest(&manifest, &release, &keyring).unwrap();
    std::fs::write(dir.join(names::MANIFEST), &manifest_json).unwrap();
    std::fs::write(dir.join(names::SIGNATURE), &sig_json).unwrap();
    root.public().save(&dir.join(names::ROOT_PUB)).unwrap();
    let bundle = write_bundle(
        Vec::new(),
        &manifest_json,
        &sig_json,
        payloads.iter().map(|(name, zst)| PayloadSource {
            name: ArtifactName::new(*name).unwrap(),
            size: zst.len() as u64,
            reader: Box::new(&zst[..]),
        }),
    )
    .unwrap();
    std::fs::write(dir.join(names::BUNDLE), bundle).unwrap();
    dir.join(names::BUNDLE)
}

/// `aperture ...` through the CLI's own parser and verb code (what `main` calls).
fn aperture(args: &[&str]) -> anyhow::Result<()> {
    use clap::Parser;
    let cli = aperture_cli::args::Cli::try_parse_from(
        std::iter::once("aperture").chain(args.iter().copied()),
    )?;
    aperture_cli::run(cli)
}

/// Tier 1 (no root, no tools): `aperture release publish --gate-on-rollout`. On a repository
/// without the `rollouts` role it is refused, naming the command that fixes it, and nothing is
/// published; once the role is delegated the release is published gated, and a device (the
/// update loop's code, reading the repository through tough) does not install it until the
/// fleet's signed rollout names it, then does.
#[test]
fn release_publish_gate_on_rollout_needs_the_rollouts_role_and_waits_for_a_rollout() {
    use aperture_release::rollout::{Selection, State};
    use aperture_release::{Gate, RolloutMeta};
    let tmp = tempfile::tempdir().unwrap();
    let build = tmp.path().join("build");
    let bundle = snakeoil_build(&build, "1.1.0");
    aperture_image::verify::verified_release(&build, "stable", Waves::default(), now())
        .expect("the snakeoil build verifies");
    let repo_dir = tmp.path().join("repo");
    let (b, r) = (build.to_str().unwrap(), repo_dir.to_str().unwrap());
    aperture(&["repo", "init", "--out", r]).unwrap();
    let publish = [
        "release",
        "publish",
        "--image",
        b,
        "--repo",
        r,
        "--channel",
        "stable",
        "--gate-on-rollout",
    ];

    // No rollouts role: refused, with the fix, and the repository unchanged.
    let targets = || {
        let repo = aperture_repo::Repo::open(&repo_dir).unwrap();
        repo.status(jiff::Timestamp::now()).targets
    };
    let e = format!("{:#}", aperture(&publish).unwrap_err());
    assert!(
        e.contains("--gate-on-rollout")
            && e.contains("has no rollouts role")
            && e.contains(&format!("aperture repo delegate-rollouts --repo {r}")),
        "{e}"
    );
    assert!(
        targets().is_empty(),
        "a refused publish published {:?}",
        targets()
    );

    // Delegated: published, gated.
    aperture(&["repo", "delegate-rollouts", "--repo", r]).unwrap();
    aperture(&publish).unwrap();
    let published = targets();
    assert_eq!(published.len(), 1, "{published:?}");
    let meta = published[0].release.clone().unwrap();
    assert_eq!(
        (meta.gate, meta.version.to_string()),
        (Gate::Rollout, "1.1.0".into())
    );

    // A device on 1.0.0 in the channel, enrolled as dev-gated: nothing to install yet.
    let url = url::Url::from_directory_path(&repo_dir)
        .unwrap()
        .to_string();
    let ca = tmp.path().join("ca.pem");
    rcgen_ca(&ca);
    let root = repo_dir.join("metadata/1.root.json");
    let mut dev = device_trusting(tmp.path(), "gated", "1.0.0", &url, &ca, &root);
    std::fs::write(tmp.path().join("gated/fleet-id"), "dev-gated\n").unwrap();
    dev.check(now());
    let st = dev.status().clone();
    assert_eq!(st.result, Some(Outcome::UpToDate), "{}", st.message);
    assert!(
        st.message
            .contains("waiting for the fleet to start its rollout"),
        "{}",
        st.message
    );
    assert!(dev.installer().installs.is_empty());

    // The fleet server's key starts the rollout of 1.1.0 to this device: it installs the bundle.
    let mut repo = aperture_repo::Repo::open_to_change(&repo_dir).unwrap();
    let rollout = RolloutMeta {
        id: 1,
        channel: "stable".into(),
        version: "1.1.0".parse().unwrap(),
        state: State::Active,
        started_at: now(),
        waves: Waves::default(),
        devices: Selection::Devices(vec!["dev-gated".into()]),
        pinned: Vec::new(),
    };
    assert!(repo
        .set_rollout(&rollout, jiff::Timestamp::now(), false)
        .unwrap());
    drop(repo);
    dev.check(now() + 1);
    let st = dev.status().clone();
    assert!(st.message.contains("installed 1.1.0"), "{}", st.message);
    let installs = &dev.installer().installs;
    assert_eq!(installs.len(), 1);
    assert!(
        installs[0].0 == std::fs::read(&bundle).unwrap(),
        "the device installed other bytes than the build's bundle"
    );
}

/// Tier 1 (no root, no tools): delta bundles through the CLI. `bundle --from` makes the delta
/// from v1's build folder to v2's, and refuses keys under another root and a base that is not
/// older; `release publish` of v2 makes the delta from the repository's 1.0.0 by itself; a
/// device booted with v1's verity root fetches that delta, which rebuilds v2's rootfs from
/// v1's byte for byte, and a device booted with another root gets the full bundle.
#[test]
fn delta_bundles_are_made_published_and_chosen_by_the_running_root() {
    use aperture_image::outputs::names;
    use aperture_trust::bundle::BundleReader;
    use aperture_trust::delta::FileBase;
    use aperture_trust::manifest::{Artifact, Manifest};
    use std::io::Read;

    let tmp = tempfile::tempdir().unwrap();
    // Incompressible, as compressed file data is: a delta must win by what it leaves out.
    let noise = |len: usize, mut x: u64| -> Vec<u8> {
        (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect()
    };
    let data1 = noise(256 * 4096, 1);
    let mut data2 = data1.clone();
    data2[5 * 4096..5 * 4096 + 50].fill(0xee);
    data2.extend(noise(2 * 4096, 2));
    let (v1, v2, keys) = (
        tmp.path().join("v1"),
        tmp.path().join("v2"),
        tmp.path().join("keys"),
    );
    snakeoil_build_with(&v1, "1.0.0", Some(data1));
    let full_v2 = snakeoil_build_with(&v2, "1.1.0", Some(data2));
    snakeoil_keys(&keys);
    let s = |p: &std::path::Path| p.to_str().unwrap().to_string();

    // `bundle --from`: small, and read back by the verb itself.
    let out = tmp.path().join("v1-to-v2.bundle");
    aperture(&[
        "bundle",
        "--image",
        &s(&v2),
        "--from",
        &s(&v1),
        "--keys",
        &s(&keys),
        "--out",
        &s(&out),
    ])
    .unwrap();
    let (delta, full) = (
        std::fs::metadata(&out).unwrap().len(),
        std::fs::metadata(&full_v2).unwrap().len(),
    );
    assert!(delta * 20 < full, "delta {delta} bytes, full {full}");
    // Keys under another root: appliances would refuse it, so it is not made.
    let other = tmp.path().join("other-keys");
    aperture_image::keys::generate(&other, 1, false, true).unwrap();
    let refused = tmp.path().join("refused.bundle");
    let e = format!(
        "{:#}",
        aperture(&[
            "bundle",
            "--image",
            &s(&v2),
            "--from",
            &s(&v1),
            "--keys",
            &s(&other),
            "--out",
            &s(&refused),
        ])
        .unwrap_err()
    );
    assert!(e.contains("--keys") && e.contains("root key"), "{e}");
    // The base must be the older release.
    let e = format!(
        "{:#}",
        aperture(&[
            "bundle",
            "--image",
            &s(&v1),
            "--from",
            &s(&v2),
            "--keys",
            &s(&keys),
            "--out",
            &s(&refused),
        ])
        .unwrap_err()
    );
    assert!(e.contains("not older") && e.contains("swap"), "{e}");
    assert!(!refused.exists());

    // `release publish`: 1.0.0, then 1.1.0 with the delta from 1.0.0 made by the verb.
    let repo_dir = tmp.path().join("repo");
    let r = s(&repo_dir);
    aperture(&["repo", "init", "--out", &r]).unwrap();
    for build in [&v1, &v2] {
        aperture(&[
            "release",
            "publish",
            "--image",
            &s(build),
            "--repo",
            &r,
            "--channel",
            "stable",
            "--keys",
            &s(&keys),
        ])
        .unwrap();
    }
    let repo = aperture_repo::Repo::open(&repo_dir).unwrap();
    let deltas = repo.deltas();
    assert_eq!(deltas.len(), 1, "{deltas:?}");
    let manifest = |dir: &std::path::Path| {
        Manifest::from_json_unverified(&std::fs::read(dir.join(names::MANIFEST)).unwrap()).unwrap()
    };
    let v1_root = manifest(&v1).artifacts[0]
        .verity
        .as_ref()
        .unwrap()
        .root_hash
        .to_string();
    assert_eq!(deltas[0].1.from.to_string(), "1.0.0");
    assert_eq!(deltas[0].1.from_root_hash, v1_root);
    let published = std::fs::read(repo.stored_target(&deltas[0].0).unwrap()).unwrap();
    // `repo status` shows it as the delta it is, beside the two releases.
    let st = repo.status(jiff::Timestamp::now());
    assert_eq!(st.targets.len(), 3);
    let shown = st.targets.iter().find(|t| t.delta.is_some()).unwrap();
    assert!(shown.release.is_none());
    assert_eq!(shown.delta.as_ref().unwrap().from.to_string(), "1.0.0");
    aperture(&["repo", "status", "--repo", &r]).unwrap();

    // Devices on 1.0.0: booted with v1's root, the delta; with another root, the full bundle.
    let url = url::Url::from_directory_path(&repo_dir)
        .unwrap()
        .to_string();
    let ca = tmp.path().join("ca.pem");
    rcgen_ca(&ca);
    let first_root = repo_dir.join("metadata/1.root.json");
    let mut on_base = device_booted(
        tmp.path(),
        "on-base",
        "1.0.0",
        &url,
        &ca,
        &first_root,
        Some(v1_root.clone()),
    );
    on_base.check(now());
    let st = on_base.status().clone();
    assert_eq!(st.result, Some(Outcome::Installed), "{}", st.message);
    assert!(st.message.contains("the delta to 1.1.0"), "{}", st.message);
    let got = on_base.installer().installs[0].0.clone();
    assert_eq!(got, published);
    let mut elsewhere = device_booted(
        tmp.path(),
        "elsewhere",
        "1.0.0",
        &url,
        &ca,
        &first_root,
        Some("another-root".into()),
    );
    elsewhere.check(now());
    assert_eq!(
        elsewhere.installer().installs[0].0,
        std::fs::read(&full_v2).unwrap()
    );

    // What the device got rebuilds v2 from v1's files, as the updater reads it.
    let root = aperture_trust::keys::PublicKey::load(&v2.join(names::ROOT_PUB)).unwrap();
    let mut reader = BundleReader::new(&got[..], &root, now());
    let verified = reader.read_header().unwrap();
    for a in verified.payload_artifacts() {
        // The kernel travels whole (qemu boards send UKIs as deltas, and this fixture has none).
        let Some(base) = a.payload.as_ref().unwrap().base.clone() else {
            continue;
        };
        let file = v1.join(a.name.as_str());
        reader.set_delta_base(
            a.name.as_str(),
            Box::new(FileBase::open(&file).unwrap()),
            base.size,
            base.sha256,
        );
    }
    let mut rebuilt = Vec::new();
    reader
        .for_each_payload(|a: &Artifact, r: &mut dyn Read| {
            let mut bytes = Vec::new();
            r.read_to_end(&mut bytes).unwrap();
            rebuilt.push((a.name.to_string(), bytes));
            Ok::<(), aperture_trust::TrustError>(())
        })
        .unwrap();
    assert_eq!(rebuilt.len(), 2, "rootfs (a delta) and kernel (whole)");
    assert_eq!(rebuilt[1].1, std::fs::read(v2.join(names::KERNEL)).unwrap());
    assert_eq!(
        rebuilt[0].1,
        std::fs::read(v2.join(names::ROOTFS)).unwrap(),
        "the rootfs rebuilt from v1's and the delta is v2's"
    );
}
