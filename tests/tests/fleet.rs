//! Tier 2, the release repository on a real web server: a repository made and published by
//! `aperture-repo`, synced to a folder with `repo sync --to DIR`, served by nginx over HTTPS
//! (TLS 1.3, a test CA), polled by the appliance's update loop (the same client code the agent
//! runs): it finds and streams the release, a poll that finds nothing new costs the root probe
//! and the timestamp in under 2 KiB by nginx's own log, and a server certificate from another
//! CA is refused before any metadata is read.

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
        },
        fleet::template().unwrap().join("metadata/1.root.json"),
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
