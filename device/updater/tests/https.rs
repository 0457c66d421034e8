//! Installing over HTTPS from a local rustls server on 127.0.0.1 whose certificate is made in
//! the test with rcgen: a trusted CA passed as the extra CA works (also when the connection
//! drops mid-download: the client resumes with a Range request), an untrusted certificate fails
//! naming the host and the certificate problem, and plain http:// needs --insecure-http.
//! The last test drives the real `aperture-update` binary end to end.

mod common;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use aperture_slots::Slot;
use aperture_updater::source::{self, FetchOptions};
use aperture_updater::{InstallOptions, UpdateError};
use common::*;
use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair, SanType};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

/// A CA and a server certificate for 127.0.0.1 signed by it.
struct Pki {
    ca_pem: String,
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
}

fn pki() -> Pki {
    pki_named("Aperture snakeoil fleet CA")
}

fn pki_named(ca_name: &str) -> Pki {
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, ca_name);
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.subject_alt_names = vec![SanType::IpAddress("127.0.0.1".parse().unwrap())];
    let leaf = params.signed_by(&key, &ca, &ca_key).unwrap();
    Pki {
        ca_pem: ca.pem(),
        chain: vec![leaf.der().clone(), ca.der().clone()],
        key: PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
    }
}

/// How the test server behaves.
#[derive(Clone, Default)]
struct Behaviour {
    /// Close the first connection after this many body bytes.
    cut_first_at: Option<usize>,
    /// Connections to serve before stopping.
    connections: usize,
    /// Answer requests for paths under `/moved/` with `302 Found` and this `Location`.
    redirect: Option<String>,
}

/// Serve `body` at any path, with Range support, on 127.0.0.1; TLS when `tls` is given.
/// Stops after `connections` connections or 30 s. Returns the port and a request counter.
fn serve(
    body: Vec<u8>,
    tls: Option<&Pki>,
    how: Behaviour,
) -> (u16, Arc<AtomicUsize>, std::thread::JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let port = listener.local_addr().unwrap().port();
    let config = tls.map(|p| {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        Arc::new(
            rustls::ServerConfig::builder_with_provider(provider)
                .with_protocol_versions(&[&rustls::version::TLS13])
                .unwrap()
                .with_no_client_auth()
                .with_single_cert(p.chain.clone(), p.key.clone_key())
                .unwrap(),
        )
    });
    let count = Arc::new(AtomicUsize::new(0));
    let served = Arc::clone(&count);
    let handle = std::thread::spawn(move || {
        let deadline = Instant::now() + Duration::from_secs(30);
        while served.load(Ordering::SeqCst) < how.connections && Instant::now() < deadline {
            let (tcp, _) = match listener.accept() {
                Ok(c) => c,
                Err(_) => {
                    std::thread::sleep(Duration::from_millis(5));
                    continue;
                }
            };
            tcp.set_nonblocking(false).unwrap();
            tcp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            let n = served.fetch_add(1, Ordering::SeqCst);
            let cut = if n == 0 { how.cut_first_at } else { None };
            let redirect = how.redirect.as_deref();
            match &config {
                Some(cfg) => {
                    let conn = rustls::ServerConnection::new(Arc::clone(cfg)).unwrap();
                    let mut s = rustls::StreamOwned::new(conn, tcp);
                    if respond(&mut s, &body, cut, redirect).is_ok() && cut.is_none() {
                        s.conn.send_close_notify();
                        let _ = s.flush();
                    }
                }
                None => {
                    let mut s: TcpStream = tcp;
                    let _ = respond(&mut s, &body, cut, redirect);
                }
            }
        }
    });
    (port, count, handle)
}

/// Read one request and answer it (206 for `Range: bytes=N-`, 302 under `/moved/` if asked).
fn respond(
    s: &mut impl ReadWrite,
    body: &[u8],
    cut: Option<usize>,
    redirect: Option<&str>,
) -> std::io::Result<()> {
    let mut req = Vec::new();
    let mut byte = [0u8; 1];
    while !req.ends_with(b"\r\n\r\n") {
        if s.read(&mut byte)? == 0 {
            return Ok(());
        }
        req.push(byte[0]);
    }
    let text = String::from_utf8_lossy(&req).to_ascii_lowercase();
    if let Some(location) = redirect.filter(|_| text.starts_with("get /moved/")) {
        let head = format!(
            "HTTP/1.1 302 Found\r\nLocation: {location}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        );
        s.write_all(head.as_bytes())?;
        return s.flush();
    }
    let start: usize = text
        .lines()
        .find_map(|l| l.strip_prefix("range: bytes="))
        .and_then(|r| r.trim().trim_end_matches('-').parse().ok())
        .unwrap_or(0);
    let part = &body[start..];
    let head = if start > 0 {
        format!(
            "HTTP/1.1 206 Partial Content\r\nContent-Length: {}\r\nContent-Range: bytes {start}-{}/{}\r\nETag: \"snakeoil\"\r\nConnection: close\r\n\r\n",
            part.len(),
            body.len() - 1,
            body.len()
        )
    } else {
        format!(
            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nAccept-Ranges: bytes\r\nETag: \"snakeoil\"\r\nConnection: close\r\n\r\n",
            part.len()
        )
    };
    s.write_all(head.as_bytes())?;
    let send = cut.map_or(part, |c| &part[..c.min(part.len())]);
    for chunk in send.chunks(64 * 1024) {
        s.write_all(chunk)?;
    }
    s.flush()
}

trait ReadWrite: Read + Write {}
impl<T: Read + Write> ReadWrite for T {}

fn options(dev: &Device, ca: Option<&Path>) -> FetchOptions {
    let mut o = FetchOptions::new(&dev.paths.ca_bundle);
    o.extra_ca = ca.map(Path::to_path_buf);
    o.retry_delay = Duration::from_millis(10);
    o.timeout = Duration::from_secs(10);
    o
}

/// A CA bundle that trusts some other CA (so the system store is not empty, just unrelated).
fn unrelated_system_store(dev: &Device) {
    std::fs::create_dir_all(dev.paths.ca_bundle.parent().unwrap()).unwrap();
    std::fs::write(&dev.paths.ca_bundle, pki_named("Some other CA").ca_pem).unwrap();
}

#[test]
fn https_with_the_ca_installs_and_resumes_a_dropped_download() {
    let v1 = image("1.0.0", 1, 1);
    let v2 = image("2.0.0", 2, 2);
    let dev = Device::new(&v1);
    unrelated_system_store(&dev);
    let pki = pki();
    let ca = dev.dir.path().join("fleet-ca.pem");
    std::fs::write(&ca, &pki.ca_pem).unwrap();
    // The first connection drops in the middle of the rootfs payload.
    let cut = data_offset(&v2.bundle, "rootfs.img.zst") + 300_000;
    let how = Behaviour {
        cut_first_at: Some(cut),
        connections: 2,
        ..Behaviour::default()
    };
    let (port, count, server) = serve(v2.bundle.clone(), Some(&pki), how.clone());
    let url = format!("https://127.0.0.1:{port}/bundles/v2.bundle");
    let mut body = source::open(&url, &options(&dev, Some(&ca))).unwrap();
    let done = dev
        .updater(Slot::A)
        .install(&mut body, &InstallOptions::default())
        .unwrap();
    assert_eq!(done.target, Slot::B);
    assert_eq!(count.load(Ordering::SeqCst), 2, "one resumed request");
    server.join().unwrap();
    assert_eq!(dev.boot(), Slot::B);
    dev.assert_slot_verifies(Slot::B);
}

#[test]
fn untrusted_certificate_is_refused_naming_host_and_problem() {
    let v1 = image("1.0.0", 1, 1);
    let dev = Device::new(&v1);
    unrelated_system_store(&dev);
    let pki = pki();
    let how = Behaviour {
        cut_first_at: None,
        connections: 1,
        ..Behaviour::default()
    };
    let (port, _, server) = serve(b"never sent".to_vec(), Some(&pki), how);
    let url = format!("https://127.0.0.1:{port}/v2.bundle");
    let err = source::open(&url, &options(&dev, None))
        .err()
        .expect("an untrusted server");
    server.join().unwrap();
    let text = err.to_string();
    eprintln!("{text}");
    assert!(matches!(err, UpdateError::Download { .. }), "{text}");
    assert!(
        text.contains(&format!("127.0.0.1:{port}")),
        "names the host: {text}"
    );
    assert!(
        text.contains("invalid peer certificate: UnknownIssuer"),
        "names the problem: {text}"
    );
    assert!(text.contains("--ca"), "says the fix: {text}");
}

#[test]
fn plain_http_needs_the_loud_flag() {
    let v1 = image("1.0.0", 1, 1);
    let v2 = image("2.0.0", 2, 2);
    let dev = Device::new(&v1);
    let before = dev.snapshot();
    let url = "http://127.0.0.1:9/v2.bundle";
    let err = source::open(url, &options(&dev, None)).err().unwrap();
    assert!(matches!(err, UpdateError::InsecureSource { .. }), "{err}");
    assert!(
        aperture_updater::error_chain(&err).contains("--insecure-http"),
        "{err}"
    );
    assert_eq!(dev.snapshot(), before);
    // With the flag, plain HTTP works (the VM test serves bundles this way).
    let how = Behaviour {
        cut_first_at: None,
        connections: 1,
        ..Behaviour::default()
    };
    let (port, _, server) = serve(v2.bundle.clone(), None, how);
    let mut opts = options(&dev, None);
    opts.insecure_http = true;
    let mut body = source::open(&format!("http://127.0.0.1:{port}/v2.bundle"), &opts).unwrap();
    dev.updater(Slot::A)
        .install(&mut body, &InstallOptions::default())
        .unwrap();
    server.join().unwrap();
}

#[test]
fn the_binary_installs_over_https_and_reports_status() {
    // The binary uses the real clock: keys valid until 2096.
    let keys = keys_with(snakeoil(1), 4_000_000_000);
    let v1 = image_with("1.0.0", 1, 1, &keys, |_| {});
    let v2 = image_with("2.0.0", 2, 2, &keys, |_| {});
    let dev = Device::new(&v1);
    unrelated_system_store(&dev);
    let pki = pki();
    let ca = dev.dir.path().join("fleet-ca.pem");
    std::fs::write(&ca, &pki.ca_pem).unwrap();
    let how = Behaviour {
        cut_first_at: None,
        connections: 1,
        ..Behaviour::default()
    };
    let (port, _, server) = serve(v2.bundle.clone(), Some(&pki), how);
    let run = |args: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_aperture-update"))
            .arg("--root")
            .arg(dev.dir.path())
            .arg("--disk-image")
            .arg(&dev.disk_path)
            .args(args)
            .output()
            .unwrap()
    };
    let url = format!("https://127.0.0.1:{port}/v2.bundle");
    let out = run(&[
        "install",
        &url,
        "--ca",
        ca.to_str().unwrap(),
        "--tries",
        "2",
    ]);
    server.join().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("installed 2.0.0 into slot b"));
    let out = run(&["status", "--json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["next"], "b");
    assert_eq!(v["slots"][1]["status"]["tries_left"], 2);
    // The same bundle again from a file: nothing to do once B runs it.
    assert_eq!(dev.boot(), Slot::B);
    dev.set_running(Slot::B, &v2);
    let file = dev.dir.path().join("v2.bundle");
    std::fs::write(&file, &v2.bundle).unwrap();
    let out = run(&["install", file.to_str().unwrap()]);
    assert_eq!(
        out.status.code(),
        Some(3),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = run(&["mark-good"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("anti-rollback floor 2 (raised)"));
    // Plain http:// without the flag: refused by the binary too.
    let out = run(&["install", "http://127.0.0.1:9/x"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--insecure-http"));
}

/// Issue 12.11: an https download is never redirected to plain http (or anything but https):
/// refused naming both URLs, before the http server is contacted. A redirect that stays on
/// https is followed.
#[test]
fn a_redirect_that_leaves_https_is_refused_naming_both_urls() {
    let v1 = image("1.0.0", 1, 1);
    let v2 = image("2.0.0", 2, 2);
    let dev = Device::new(&v1);
    unrelated_system_store(&dev);
    let pki = pki();
    let ca = dev.dir.path().join("fleet-ca.pem");
    std::fs::write(&ca, &pki.ca_pem).unwrap();
    // A plain-http server with the bundle, which must never be asked.
    let plain = Behaviour {
        connections: 1,
        ..Behaviour::default()
    };
    let (http_port, http_count, _http) = serve(v2.bundle.clone(), None, plain);
    let http_url = format!("http://127.0.0.1:{http_port}/v2.bundle");
    let how = Behaviour {
        connections: 2,
        redirect: Some(http_url.clone()),
        ..Behaviour::default()
    };
    let (port, _, server) = serve(v2.bundle.clone(), Some(&pki), how);
    let url = format!("https://127.0.0.1:{port}/moved/v2.bundle");
    // Refused, and also with --insecure-http: that allows http:// given, not a downgrade.
    for insecure_http in [false, true] {
        let mut opts = options(&dev, Some(&ca));
        opts.insecure_http = insecure_http;
        let err = source::open(&url, &opts).err().expect("refused");
        let text = err.to_string();
        assert!(
            matches!(err, UpdateError::InsecureRedirect { .. }),
            "{text}"
        );
        assert!(
            text.contains(&url) && text.contains(&http_url) && text.contains("leaves https"),
            "{text}"
        );
    }
    server.join().unwrap();
    assert_eq!(http_count.load(Ordering::SeqCst), 0, "http was never asked");

    // https -> https (a relative Location on the same server) is followed.
    let how = Behaviour {
        connections: 2,
        redirect: Some("/bundles/v2.bundle".into()),
        ..Behaviour::default()
    };
    let (port, count, server) = serve(v2.bundle.clone(), Some(&pki), how);
    let url = format!("https://127.0.0.1:{port}/moved/v2.bundle");
    let mut body = source::open(&url, &options(&dev, Some(&ca))).unwrap();
    dev.updater(Slot::A)
        .install(&mut body, &InstallOptions::default())
        .unwrap();
    server.join().unwrap();
    assert_eq!(count.load(Ordering::SeqCst), 2);
}
