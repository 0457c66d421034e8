//! The fleet's release repository as tests and benchmarks serve it: a TUF repository made by
//! `aperture-repo`, synced to a folder, served by nginx over HTTPS with a test CA.
//!
//! * [`Pki`]: a CA and a server certificate for `127.0.0.1` and `10.0.2.2` (QEMU's user-mode
//!   gateway, the host as guests see it), made once per test root with rcgen.
//! * [`template`]: a repository initialised once per test root (development keys, root
//!   version 1); each scenario works on its own copy ([`fresh_repo`]), so the images that trust
//!   its root stay the same build after build while what a scenario publishes starts empty.
//! * [`recipe_lines`]: the `[update]` section (and the firewall's outbound rule) that points a
//!   test image at [`GUEST_PORT`] on the host, trusting that root and CA.
//! * [`Nginx`]: a real nginx (Debian's `nginx-light`) on 127.0.0.1, TLS 1.3, serving a folder,
//!   its access log parsed for the requests and bytes each URL cost.

use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::test_root;

/// The host port test images reach the release repository on (their firewall lets it out to
/// 10.0.2.2 only).
pub const GUEST_PORT: u16 = 18443;

/// The host port test images reach the fleet server (`aperture-fleet serve`) on, through
/// 10.0.2.2 (their firewall lets it out to 10.0.2.2 only).
pub const FLEET_GUEST_PORT: u16 = 18444;

/// The test CA and the server's certificate and key (PEM files).
#[derive(Debug, Clone)]
pub struct Pki {
    /// The CA certificate.
    pub ca: PathBuf,
    /// The server certificate (for 127.0.0.1, 10.0.2.2 and localhost).
    pub cert: PathBuf,
    /// Its key.
    pub key: PathBuf,
}

/// The fixtures' folder in the test root.
pub fn dir() -> PathBuf {
    test_root().join("fleet")
}

/// The test PKI, made on first use.
pub fn pki() -> Result<Pki> {
    let d = dir().join("tls");
    let p = Pki {
        ca: d.join("ca.pem"),
        cert: d.join("server.pem"),
        key: d.join("server.key"),
    };
    if p.ca.exists() && p.cert.exists() && p.key.exists() {
        return Ok(p);
    }
    std::fs::create_dir_all(&d)?;
    let ca_key = rcgen::KeyPair::generate()?;
    let mut ca = rcgen::CertificateParams::new(Vec::<String>::new())?;
    ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(rcgen::DnType::CommonName, "Aperture test fleet CA");
    let ca_cert = ca.self_signed(&ca_key)?;
    let key = rcgen::KeyPair::generate()?;
    let mut server = rcgen::CertificateParams::new(vec!["localhost".to_string()])?;
    for ip in ["127.0.0.1", "10.0.2.2"] {
        server
            .subject_alt_names
            .push(rcgen::SanType::IpAddress(ip.parse()?));
    }
    server
        .distinguished_name
        .push(rcgen::DnType::CommonName, "aperture test repository");
    let cert = server.signed_by(&key, &ca_cert, &ca_key)?;
    std::fs::write(&p.key, key.serialize_pem())?;
    std::fs::write(&p.cert, cert.pem())?;
    std::fs::write(&p.ca, ca_cert.pem())?;
    Ok(p)
}

/// The template repository (root version 1, development keys), made on first use.
pub fn template() -> Result<PathBuf> {
    let d = dir().join("template");
    if d.join("metadata/1.root.json").exists() {
        return Ok(d);
    }
    let tmp = dir().join("template.tmp");
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(dir())?;
    aperture_repo::Repo::init(&tmp, false, jiff::Timestamp::now())
        .context("making the test fleet's TUF repository")?;
    std::fs::rename(&tmp, &d)?;
    Ok(d)
}

/// A copy of the template in `dest` (replacing what was there), opened.
pub fn fresh_repo(dest: &Path) -> Result<aperture_repo::Repo> {
    let t = template()?;
    let _ = std::fs::remove_dir_all(dest);
    copy_tree(&t, dest)?;
    aperture_repo::Repo::open(dest)
}

fn copy_tree(from: &Path, to: &Path) -> Result<()> {
    std::fs::create_dir_all(to)?;
    for e in std::fs::read_dir(from)? {
        let e = e?;
        let dest = to.join(e.file_name());
        if e.file_type()?.is_dir() {
            copy_tree(&e.path(), &dest)?;
        } else {
            std::fs::copy(e.path(), &dest)?;
        }
    }
    Ok(())
}

/// The recipe lines that point a test image at the test repository on the host: its trusted
/// root, the test CA, a short poll interval, and the outbound flows it needs (the repository,
/// and the fleet server of [`crate::fleet_server`]).
pub fn recipe_lines() -> Result<String> {
    let root = template()?.join("metadata/1.root.json");
    let ca = pki()?.ca;
    Ok(format!(
        "\n[update]\nrepository = \"https://10.0.2.2:{GUEST_PORT}/\"\nchannel = \"stable\"\n\
         root = \"{}\"\nca = \"{}\"\npoll_interval = \"20s\"\n\n\
         [[network.outbound]]\nname = \"test-updates\"\nproto = \"tcp\"\nport = {GUEST_PORT}\n\
         to = [\"10.0.2.2\"]\n\n\
         [[network.outbound]]\nname = \"test-fleet\"\nproto = \"tcp\"\nport = {FLEET_GUEST_PORT}\n\
         to = [\"10.0.2.2\"]\n",
        root.display(),
        ca.display()
    ))
}

/// One request in nginx's access log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// The path requested.
    pub path: String,
    /// The status answered.
    pub status: u16,
    /// Bytes sent, headers included.
    pub bytes: u64,
}

/// A running nginx; stopped when dropped.
#[derive(Debug)]
pub struct Nginx {
    child: Child,
    dir: PathBuf,
    port: u16,
}

impl Nginx {
    /// Serve `root` over HTTPS on 127.0.0.1:`port` (0: a free one), its files kept in `dir`.
    pub fn start(root: &Path, port: u16, dir: &Path) -> Result<Nginx> {
        let nginx = ["/usr/sbin/nginx", "/usr/local/sbin/nginx"]
            .into_iter()
            .map(PathBuf::from)
            .find(|p| p.exists())
            .context("nginx is not installed (apt-get install nginx-light; cargo xtask test installs it)")?;
        let pki = pki()?;
        let port = if port == 0 {
            std::net::TcpListener::bind("127.0.0.1:0")?
                .local_addr()?
                .port()
        } else {
            port
        };
        std::fs::create_dir_all(dir.join("tmp"))?;
        let log = dir.join("access.log");
        let _ = std::fs::remove_file(&log);
        let root = std::fs::canonicalize(root)?;
        // Workers run as root only because the test folders are root's and private.
        let user = if is_root() { "user root;\n" } else { "" };
        let conf = format!(
            "{user}worker_processes 1;\ndaemon off;\npid {d}/nginx.pid;\nerror_log {d}/error.log warn;\n\
             events {{ worker_connections 1024; }}\n\
             http {{\n  log_format bytes '$request_uri $status $bytes_sent';\n  access_log {log} bytes;\n\
               client_body_temp_path {d}/tmp/body;\n  proxy_temp_path {d}/tmp/proxy;\n\
               fastcgi_temp_path {d}/tmp/fastcgi;\n  uwsgi_temp_path {d}/tmp/uwsgi;\n\
               scgi_temp_path {d}/tmp/scgi;\n\
               types {{ application/json json; application/octet-stream bundle; }}\n\
               default_type application/octet-stream;\n  keepalive_requests 100000;\n\
               send_timeout 20s;\n\
               server {{\n    listen 127.0.0.1:{port} ssl;\n    ssl_certificate {cert};\n\
                 ssl_certificate_key {key};\n    ssl_protocols TLSv1.3;\n    root {root};\n\
                 location / {{ autoindex off; }}\n  }}\n}}\n",
            d = dir.display(),
            log = log.display(),
            cert = pki.cert.display(),
            key = pki.key.display(),
            root = root.display(),
        );
        let conf_path = dir.join("nginx.conf");
        std::fs::write(&conf_path, conf)?;
        let child = Command::new(&nginx)
            .arg("-c")
            .arg(&conf_path)
            .arg("-p")
            .arg(dir)
            .arg("-e")
            .arg(dir.join("error.log"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("starting {}", nginx.display()))?;
        let mut server = Nginx {
            child,
            dir: dir.to_path_buf(),
            port,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            if let Some(status) = server.child.try_wait()? {
                let errors = std::fs::read_to_string(dir.join("error.log")).unwrap_or_default();
                bail!("nginx exited ({status}) before listening on {port}: {errors}");
            }
            if Instant::now() > deadline {
                bail!("nginx did not listen on 127.0.0.1:{port} within 20 s");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(server)
    }

    /// Its port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The base URL on the host.
    pub fn url(&self) -> String {
        format!("https://127.0.0.1:{}/", self.port)
    }

    /// Every request logged so far, oldest first (nginx writes a line as each one ends).
    pub fn requests(&self) -> Vec<Request> {
        let text = std::fs::read_to_string(self.dir.join("access.log")).unwrap_or_default();
        text.lines()
            .filter_map(|l| {
                let mut f = l.split(' ');
                Some(Request {
                    path: f.next()?.to_string(),
                    status: f.next()?.parse().ok()?,
                    bytes: f.next()?.parse().ok()?,
                })
            })
            .collect()
    }

    /// Every request logged so far, once one of them matches `wanted` or `timeout` has passed.
    /// nginx logs a request only as it ends, and an aborted one (a client whose VM was just
    /// killed) only once its worker has seen the reset, so a caller that has just cut a
    /// download waits here rather than reading the log at once.
    pub fn requests_once(
        &self,
        wanted: impl Fn(&Request) -> bool,
        timeout: Duration,
    ) -> Vec<Request> {
        let deadline = Instant::now() + timeout;
        loop {
            let seen = self.requests();
            if seen.iter().any(&wanted) || Instant::now() > deadline {
                return seen;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        // SIGTERM: nginx's fast shutdown, which stops its workers too (a SIGKILL of the
        // master would leave them holding the port).
        let _ = Command::new("kill")
            .arg(self.child.id().to_string())
            .status();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}
