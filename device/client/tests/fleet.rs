//! The appliance's side of the fleet server (issue 16), tier 1: a real `aperture-fleet` server
//! on 127.0.0.1 (SQLite, real TLS 1.3), archives made by its `provision` verb, enrollment and
//! reports through `aperture_client::enroll` and `aperture_client::report`.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use aperture_client::devkey::{KeyStore, PlainKeyFile};
use aperture_client::enroll::{self, EnrollError, FleetIdentity};
use aperture_client::report::{ReportError, Reporter};
use aperture_client::StateDir;
use aperture_fleet::client::Client;
use aperture_fleet::db::Db;
use aperture_fleet::pki::{FleetCa, Identity};
use aperture_fleet::server::{self, Server};
use aperture_fleet_api::provision::{self, Archive};
use aperture_fleet_api::{Report, SlotState, UpdateResult, RESULT_FAILED};
use clap::Parser;
use tempfile::TempDir;

/// Reports a device may send per minute on the test server.
const REPORTS_PER_MINUTE: i64 = 3;

/// A fleet server of the test's own, stopped when dropped.
struct Fleet {
    dir: TempDir,
    url: String,
    admin_token: String,
    db: Db,
    rt: tokio::runtime::Runtime,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

impl Fleet {
    fn start() -> Fleet {
        let dir = tempfile::tempdir().unwrap();
        let names = vec!["127.0.0.1".to_string(), "localhost".to_string()];
        let (identity, _) = Identity::init(dir.path(), &names).expect("the fleet identity");
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let db_url = format!("sqlite://{}", dir.path().join("fleet.db").display());
        let db = rt.block_on(Db::connect(&db_url)).expect("the database");
        let admin_token = rt
            .block_on(db.bootstrap_admin(aperture_fleet::db::now()))
            .unwrap()
            .expect("the first admin token")
            .token;
        let config = server::Config {
            listen: "127.0.0.1:0".parse().unwrap(),
            identity,
            reports_per_minute: REPORTS_PER_MINUTE,
            repo: None,
        };
        let server = rt.block_on(Server::bind(config, db.clone())).unwrap();
        let url = format!("https://{}", server.local_addr());
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        rt.spawn(server.run(async {
            let _ = stopped.await;
        }));
        Fleet {
            dir,
            url,
            admin_token,
            db,
            rt,
            stop: Some(stop),
        }
    }

    fn ca(&self) -> PathBuf {
        Identity::ca_path(self.dir.path())
    }

    fn admin(&self) -> Client {
        let ca = std::fs::read_to_string(self.ca()).unwrap();
        Client::new(&self.url, &ca, Some(self.admin_token.clone()), None).unwrap()
    }

    /// `aperture-fleet provision --count N` into `out`: the archives' folders.
    fn provision(&self, out: &Path, count: u32) -> Vec<PathBuf> {
        let cli = aperture_fleet::cli::Cli::try_parse_from([
            "aperture-fleet",
            "provision",
            "--fleet",
            &self.url,
            "--api-token",
            &self.admin_token,
            "--ca",
            self.ca().to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
            "--count",
            &count.to_string(),
            "--expires-in",
            "1h",
        ])
        .unwrap();
        aperture_fleet::cli::run(cli).expect("provision");
        (1..=count).map(|n| out.join(n.to_string())).collect()
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        self.rt.block_on(self.db.close());
    }
}

/// An error and its causes, as a program prints them.
fn chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        text.push_str(": ");
        text.push_str(&c.to_string());
        cause = c.source();
    }
    text
}

/// The plain key store of the device whose agent state is `state`: where the appliance keeps
/// it (`/config/aperture/fleet`), under the same temporary root.
fn keys(state: &StateDir) -> PlainKeyFile {
    PlainKeyFile::at(aperture_appliance::Files::at(&state.0).fleet_key_dir())
}

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p).unwrap().permissions().mode() & 0o777
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
    }
}

fn report(version: &str) -> Report {
    Report {
        version: version.into(),
        slot: "a".into(),
        slots: vec![SlotState {
            slot: "a".into(),
            state: "good".into(),
            version: Some(version.into()),
        }],
        floor: 1,
        last_update: Some(UpdateResult {
            result: RESULT_FAILED.into(),
            version: Some("1.1.0".into()),
            journal: "installing 1.1.0: signature refused".into(),
        }),
        health: None,
        runtime_alive: true,
        runtime: None,
    }
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

#[test]
fn provision_writes_private_archives_that_parse() {
    let fleet = Fleet::start();
    let out = tempfile::tempdir().unwrap();
    let dirs = fleet.provision(&out.path().join("batch"), 3);
    let mut tokens = Vec::new();
    for d in &dirs {
        assert_eq!(mode(d), 0o700);
        for f in [provision::FLEET_TOML, provision::CA_PEM, provision::TOKEN] {
            assert_eq!(mode(&d.join(f)), 0o600, "{}", d.join(f).display());
        }
        let a = Archive::read(d).unwrap();
        assert_eq!(a.url.as_str().trim_end_matches('/'), fleet.url);
        tokens.push(a.token.expose().to_string());
    }
    tokens.dedup();
    assert_eq!(tokens.len(), 3, "one token per archive");
    // Never over existing archives.
    let again = aperture_fleet::cli::Cli::try_parse_from([
        "aperture-fleet",
        "provision",
        "--fleet",
        &fleet.url,
        "--api-token",
        &fleet.admin_token,
        "--ca",
        fleet.ca().to_str().unwrap(),
        "--out",
        out.path().join("batch").to_str().unwrap(),
    ])
    .unwrap();
    let e = aperture_fleet::cli::run(again).unwrap_err();
    assert!(format!("{e:#}").contains("exists already"), "{e:#}");
}

/// A server, one archive from it with a spare copy, and an empty appliance state folder.
struct OneArchive {
    fleet: Fleet,
    out: TempDir,
    archive: PathBuf,
    spare: PathBuf,
    state_dir: TempDir,
    state: StateDir,
}

impl OneArchive {
    fn new() -> OneArchive {
        let fleet = Fleet::start();
        let out = tempfile::tempdir().unwrap();
        let archive = fleet.provision(out.path(), 1).remove(0);
        let spare = out.path().join("copy");
        copy_dir(&archive, &spare);
        let state_dir = tempfile::tempdir().unwrap();
        let state = StateDir(state_dir.path().to_path_buf());
        OneArchive {
            fleet,
            out,
            archive,
            spare,
            state_dir,
            state,
        }
    }
}

#[test]
fn an_enrollment_cut_short_by_a_power_cut_finishes_with_the_kept_key() {
    let OneArchive {
        fleet,
        out: _out,
        archive,
        spare,
        state_dir: _state_dir,
        state,
    } = OneArchive::new();
    let first = enroll::enroll(&archive, &state, "SN-0001", &keys(&state)).unwrap();

    // The appliance as a power cut after the server's answer leaves it: the key it kept before
    // asking, no identity yet, the archive still there (the server has used the token).
    let kept = keys(&state).load().unwrap();
    for f in ["fleet.toml", "cert.pem", "ca.pem"] {
        std::fs::remove_file(state.fleet().join(f)).unwrap();
    }
    std::fs::remove_file(state.fleet_id()).unwrap();
    let again = enroll::enroll_if_provisioned(
        std::slice::from_ref(&spare),
        &state,
        "SN-0001",
        &keys(&state),
    )
    .unwrap()
    .expect("the archive is found and used again");
    assert_eq!(again.device_id, first.device_id, "the same device");
    assert_eq!(keys(&state).load().unwrap(), kept, "the kept key");
    let id = FleetIdentity::load(&state.fleet(), &keys(&state))
        .unwrap()
        .unwrap();
    Reporter::new(&id)
        .unwrap()
        .send(&report("1.0.0"), now())
        .unwrap();
    assert_eq!(fleet.admin().devices().unwrap().len(), 1);
}

#[test]
fn a_device_enrolls_from_an_archive_reports_and_the_archive_is_erased() {
    let OneArchive {
        fleet,
        out,
        archive,
        spare,
        state_dir: _state_dir,
        state,
    } = OneArchive::new();
    let places = vec![out.path().join("not-here"), archive.clone()];
    let done = enroll::enroll_if_provisioned(&places, &state, "SN-0001", &keys(&state))
        .unwrap()
        .expect("an archive was found");
    assert!(done.device_id.starts_with("dev-"));
    done.erased.unwrap();
    // The identity, the key private, the fleet id; the archive gone.
    assert_eq!(mode(&keys(&state).path()), 0o600);
    assert_eq!(mode(keys(&state).path().parent().unwrap()), 0o700);
    assert_eq!(mode(&state.fleet()), 0o700);
    assert!(state.fleet().join("cert.pem").is_file());
    assert_eq!(
        aperture_client::check::fleet_id(&state.fleet_id()).as_deref(),
        Some(done.device_id.as_str())
    );
    for f in provision::FILES {
        assert!(!archive.join(f).exists(), "{f} is still there");
    }
    // Enrolled: a second call does nothing.
    assert!(enroll::enroll_if_provisioned(
        std::slice::from_ref(&spare),
        &state,
        "SN-0001",
        &keys(&state)
    )
    .unwrap()
    .is_none());

    // The same archive (its copy) on another device: the token is used.
    let other = tempfile::tempdir().unwrap();
    let other_state = StateDir(other.path().to_path_buf());
    let e = enroll::enroll(&spare, &other_state, "SN-0002", &keys(&other_state)).unwrap_err();
    assert!(matches!(e, EnrollError::Refused { .. }), "{e:#}");
    assert!(format!("{e:#}").contains("single-use"), "{e:#}");
    assert!(!other.path().join("fleet").join("fleet.toml").exists());

    // A report arrives and is visible to administrators.
    let id = FleetIdentity::load(&state.fleet(), &keys(&state))
        .unwrap()
        .unwrap();
    let mut reporter = Reporter::new(&id).unwrap();
    reporter.send(&report("1.0.0"), now()).unwrap();
    let detail = fleet.admin().device(&done.device_id).unwrap();
    assert_eq!(detail.device.serial, "SN-0001");
    assert_eq!(detail.device.last_report, Some(report("1.0.0")));

    // The server's limit: a 429 holds reports back instead of hammering it.
    let mut limited = None;
    for _ in 0..REPORTS_PER_MINUTE + 1 {
        if let Err(e) = reporter.send(&report("1.0.0"), now()) {
            limited = Some(e);
            break;
        }
    }
    let until = match limited {
        Some(ReportError::RateLimited(until)) => until,
        other => panic!("expected a 429, got {other:?}"),
    };
    assert!(until >= now() + 59);
    assert!(matches!(
        reporter.send(&report("1.0.0"), now()),
        Err(ReportError::HeldBack(_))
    ));
    // A report that breaks the bounds is not sent.
    let mut bad = report("1.0.0");
    bad.last_update.as_mut().unwrap().journal = "x\n".repeat(10);
    let mut fresh = Reporter::new(&id).unwrap();
    assert!(matches!(
        fresh.send(&bad, now()),
        Err(ReportError::Invalid(_))
    ));
}

#[test]
fn a_report_with_another_devices_certificate_is_refused() {
    let fleet = Fleet::start();
    let out = tempfile::tempdir().unwrap();
    let archives = fleet.provision(out.path(), 2);
    let (sa, sb) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (a, b) = (
        StateDir(sa.path().to_path_buf()),
        StateDir(sb.path().to_path_buf()),
    );
    enroll::enroll(&archives[0], &a, "SN-A", &keys(&a)).unwrap();
    enroll::enroll(&archives[1], &b, "SN-B", &keys(&b)).unwrap();
    let ida = FleetIdentity::load(&a.fleet(), &keys(&a)).unwrap().unwrap();
    let mut idb = FleetIdentity::load(&b.fleet(), &keys(&b)).unwrap().unwrap();
    // B's certificate, reporting as A.
    idb.device_id = ida.device_id.clone();
    let e = Reporter::new(&idb)
        .unwrap()
        .send(&report("1.0.0"), now())
        .unwrap_err();
    assert!(
        matches!(e, ReportError::Status { status: 403, .. }),
        "{e:#}"
    );
    let detail = fleet.admin().device(&ida.device_id).unwrap();
    assert_eq!(detail.device.last_report, None);
}

#[test]
fn an_archive_with_another_ca_fails_naming_the_ca_and_keeps_the_archive() {
    let fleet = Fleet::start();
    let out = tempfile::tempdir().unwrap();
    let archive = fleet.provision(out.path(), 1).remove(0);
    let stranger = FleetCa::generate().unwrap();
    std::fs::write(archive.join(provision::CA_PEM), stranger.pem()).unwrap();
    let state = tempfile::tempdir().unwrap();
    let sd = StateDir(state.path().to_path_buf());
    let e = enroll::enroll(&archive, &sd, "SN-C", &keys(&sd)).unwrap_err();
    let text = chain(&e);
    assert!(matches!(e, EnrollError::Transport { .. }), "{text}");
    assert!(
        text.contains(&archive.join("ca.pem").display().to_string()),
        "{text}"
    );
    // The stranger CA has the fleet CA's name, so rustls finds it and the signature fails.
    assert!(text.contains("invalid peer certificate"), "{text}");
    // No identity, nothing erased: the archive is still usable once its CA is fixed. Only
    // the key is kept (before asking, as always), and the next try uses it.
    assert!(!sd.fleet().join("fleet.toml").exists());
    let kept = keys(&sd).load().unwrap();
    assert!(archive.join(provision::TOKEN).exists());
    std::fs::copy(fleet.ca(), archive.join(provision::CA_PEM)).unwrap();
    enroll::enroll(&archive, &sd, "SN-C", &keys(&sd)).unwrap();
    assert_eq!(keys(&sd).load().unwrap(), kept);
}

/// A board with a TPM (swtpm): the key enrolled is kept sealed, works for reports, and is not
/// in its file; moved to another TPM it no longer loads, says so, and a new archive enrolls the
/// device again with a new key.
#[test]
fn a_device_with_a_tpm_enrolls_with_a_sealed_key_and_a_lost_key_is_replaced_by_a_new_archive() {
    use aperture_client::devkey::TpmSealedKey;
    use aperture_storage::Tpm2;
    use aperture_sys::tool::Swtpm;
    const TOOLS: [&str; 5] = [
        "tpm2_createprimary",
        "tpm2_create",
        "tpm2_load",
        "tpm2_unseal",
        "tpm2_flushcontext",
    ];
    let test = "the fleet enrollment with a TPM-sealed key";
    let Some(first_tpm) = Swtpm::for_test(&TOOLS, test) else {
        return;
    };
    let fleet = Fleet::start();
    let out = tempfile::tempdir().unwrap();
    let archives = fleet.provision(out.path(), 2);
    let root = tempfile::tempdir().unwrap();
    let files = aperture_appliance::Files::at(root.path());
    let state = StateDir(files.agent_state());
    let sealed_with = |tpm: &Swtpm| {
        TpmSealedKey::new(
            files.fleet_key_dir(),
            Tpm2::new(root.path().to_path_buf()).with_tcti(tpm.tcti()),
        )
    };
    let first = enroll::enroll_if_provisioned(
        std::slice::from_ref(&archives[0]),
        &state,
        "SN-T",
        &sealed_with(&first_tpm),
    )
    .unwrap()
    .unwrap();
    let file = sealed_with(&first_tpm).path();
    assert_eq!(mode(&file), 0o600);
    assert!(!files.fleet_key_dir().join("key.pem").exists());
    let id = FleetIdentity::load(&state.fleet(), &sealed_with(&first_tpm))
        .unwrap()
        .unwrap();
    let kept = std::fs::read_to_string(&file).unwrap();
    let body: String = id
        .device
        .key_pem
        .lines()
        .filter(|l| !l.starts_with("-----"))
        .collect();
    assert!(
        !kept.contains("PRIVATE KEY") && !kept.contains(&body[..32]),
        "{kept}"
    );
    Reporter::new(&id)
        .unwrap()
        .send(&report("1.0.0"), now())
        .unwrap();

    // The disk in another board: its TPM does not unseal the wrapping key.
    let second_tpm = Swtpm::start();
    let e = FleetIdentity::load(&state.fleet(), &sealed_with(&second_tpm)).unwrap_err();
    assert!(
        e.contains(&file.display().to_string()) && e.contains("re-provision the device"),
        "{e}"
    );
    // Without an archive nothing changes; with a new one the device enrolls again.
    assert!(
        enroll::enroll_if_provisioned(&[], &state, "SN-T", &sealed_with(&second_tpm))
            .unwrap()
            .is_none()
    );
    let again = enroll::enroll_if_provisioned(
        std::slice::from_ref(&archives[1]),
        &state,
        "SN-T",
        &sealed_with(&second_tpm),
    )
    .unwrap()
    .expect("a lost key is replaced from a new archive");
    assert_ne!(again.device_id, first.device_id);
    let id = FleetIdentity::load(&state.fleet(), &sealed_with(&second_tpm))
        .unwrap()
        .unwrap();
    assert_eq!(id.device_id, again.device_id);
    Reporter::new(&id)
        .unwrap()
        .send(&report("1.0.0"), now())
        .unwrap();
}
