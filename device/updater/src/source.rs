//! Where a bundle comes from: a file, or HTTPS (TLS 1.3 only, rustls with ring, certificates
//! checked against the system CA bundle plus an optional extra CA).
//!
//! Plain `http://` is refused unless the caller sets [`FetchOptions::insecure_http`] (the CLI's
//! `--insecure-http`): the bundle's signature still protects what is installed, but anyone on
//! the path could read the bundle, and replay or withhold updates unnoticed.
//!
//! Redirects are followed here, not by the HTTP client, so that each hop is checked: a download
//! that started on `https://` never follows a redirect that leaves https (to `http://` or any
//! other scheme), whatever `--insecure-http` says ([`UpdateError::InsecureRedirect`]), and at
//! most [`MAX_REDIRECTS`] are followed.
//!
//! ## Resuming a download
//! A dropped connection does not restart the install: [`HttpBody`] reconnects with
//! `Range: bytes=<offset>-` and `If-Range: <ETag or Last-Modified>`, and insists on a
//! `206 Partial Content` that starts exactly at the offset, so the stream the bundle reader
//! sees is seamless (its hashes would catch any splice anyway). This is streaming, not
//! spooling: a power cut mid-download restarts the install from the first byte (see
//! [`crate::lifecycle`]); a spool file on the data partition, which would let the download itself
//! survive a reboot, is not implemented yet.

use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;

use crate::UpdateError;

/// The most redirects one request follows.
pub const MAX_REDIRECTS: usize = 5;

/// How to fetch a bundle.
#[derive(Debug, Clone)]
pub struct FetchOptions {
    /// The system CA bundle (PEM), `/etc/ssl/certs/ca-certificates.crt`.
    pub system_ca: PathBuf,
    /// An extra CA certificate file (PEM) to trust, such as a fleet's private CA.
    pub extra_ca: Option<PathBuf>,
    /// Allow plain `http://`. Loud on purpose; see the module documentation.
    pub insecure_http: bool,
    /// Reconnections allowed after the first request (each resumes with a Range request).
    pub retries: u32,
    /// Wait before the first reconnection; doubled each time.
    pub retry_delay: Duration,
    /// Connect and read timeout.
    pub timeout: Duration,
}

impl FetchOptions {
    /// Defaults for the appliance: system CAs, HTTPS only, 5 resumptions, 60 s timeouts.
    pub fn new(system_ca: impl Into<PathBuf>) -> FetchOptions {
        FetchOptions {
            system_ca: system_ca.into(),
            extra_ca: None,
            insecure_http: false,
            retries: 5,
            retry_delay: Duration::from_secs(2),
            timeout: Duration::from_secs(60),
        }
    }
}

/// Whether `spec` is a URL (has a scheme) rather than a file path.
pub fn is_url(spec: &str) -> bool {
    spec.split_once("://").is_some_and(|(scheme, _)| {
        !scheme.is_empty()
            && scheme
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '+')
    })
}

/// Open a bundle: a file path, an `https://` URL, or (only with `insecure_http`) `http://`.
pub fn open(spec: &str, opts: &FetchOptions) -> Result<Box<dyn Read>, UpdateError> {
    if !is_url(spec) {
        let file = std::fs::File::open(spec).map_err(UpdateError::file("opening bundle", spec))?;
        return Ok(Box::new(file));
    }
    let lower = spec.to_ascii_lowercase();
    if lower.starts_with("http://") && !opts.insecure_http {
        return Err(UpdateError::InsecureSource {
            url: spec.into(),
            reason: "plain http:// lets anyone on the network read, withhold or replay updates; \
                     use https://, or pass --insecure-http to accept that (test networks only)"
                .into(),
        });
    }
    if !lower.starts_with("https://") && !lower.starts_with("http://") {
        return Err(UpdateError::InsecureSource {
            url: spec.into(),
            reason: "only https:// URLs and file paths are supported".into(),
        });
    }
    let agent = agent(opts, lower.starts_with("https://"))?;
    Ok(Box::new(HttpBody::start(agent, spec, opts)?))
}

/// The rustls client configuration: TLS 1.3 only, ring, the system CAs plus `extra_ca`.
pub fn tls_config(opts: &FetchOptions) -> Result<rustls::ClientConfig, UpdateError> {
    let mut roots = rustls::RootCertStore::empty();
    let mut sources = Vec::new();
    match load_certs(&opts.system_ca) {
        Ok(certs) => {
            let (added, _) = roots.add_parsable_certificates(certs);
            if added > 0 {
                sources.push(opts.system_ca.display().to_string());
            }
        }
        // No system bundle is fine when an extra CA is given (a private fleet CA).
        Err(e) if opts.extra_ca.is_some() => {
            tracing::debug!("system CA bundle not used: {e}");
        }
        Err(e) => return Err(e),
    }
    if let Some(extra) = &opts.extra_ca {
        let certs = load_certs(extra)?;
        let (added, ignored) = roots.add_parsable_certificates(certs);
        if added == 0 {
            return Err(UpdateError::Tls {
                reason: format!(
                    "{} holds no usable CA certificate ({ignored} refused); pass a PEM file with \
                     the CA that signed the server's certificate",
                    extra.display()
                ),
            });
        }
        sources.push(extra.display().to_string());
    }
    if roots.is_empty() {
        return Err(UpdateError::Tls {
            reason: format!(
                "no CA certificate found in {}; install ca-certificates or pass --ca FILE",
                opts.system_ca.display()
            ),
        });
    }
    tracing::debug!("trusting CAs from {}", sources.join(", "));
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| UpdateError::Tls {
            reason: format!("TLS 1.3 with ring: {e}"),
        })?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(config)
}

fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, UpdateError> {
    let bytes = std::fs::read(path).map_err(UpdateError::file("reading CA certificates", path))?;
    CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| UpdateError::Tls {
            reason: format!("{} is not a PEM certificate file: {e}", path.display()),
        })
}

/// The HTTP client for `opts`: TLS 1.3 through [`tls_config`] when `https`, no automatic
/// redirects (see [`request`]).
pub fn agent(opts: &FetchOptions, https: bool) -> Result<ureq::Agent, UpdateError> {
    let mut builder = ureq::AgentBuilder::new()
        .timeout_connect(opts.timeout)
        .timeout_read(opts.timeout)
        .redirects(0)
        .user_agent(concat!("aperture-update/", env!("CARGO_PKG_VERSION")));
    if https {
        builder = builder.tls_config(Arc::new(tls_config(opts)?));
    }
    Ok(builder.build())
}

/// `host[:port]` of a URL, for messages.
pub fn host_of(url: &str) -> String {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let authority = rest.split(['/', '?', '#']).next().unwrap_or(rest);
    authority
        .rsplit('@')
        .next()
        .unwrap_or(authority)
        .to_string()
}

/// The URL without user information (what the journal keeps).
pub fn redact(url: &str) -> String {
    match url.split_once("://") {
        Some((scheme, rest)) => {
            let (authority, path) = rest
                .find(['/', '?', '#'])
                .map_or((rest, ""), |i| rest.split_at(i));
            let host = authority.rsplit('@').next().unwrap_or(authority);
            format!("{scheme}://{host}{path}")
        }
        None => url.to_string(),
    }
}

/// GET `url` with `headers`, following redirects one by one: a hop that leaves https when the
/// download started on https, or that is not http(s) at all, is refused before it is
/// requested. Returns the response and the URL that gave it.
fn get(
    agent: &ureq::Agent,
    url: &str,
    headers: &[(&str, &str)],
) -> Result<(ureq::Response, String), UpdateError> {
    request(agent, url, headers).map_err(|f| f.error)
}

/// A failed [`request`]: the HTTP status when the server answered one, and the error.
#[derive(Debug)]
pub struct Failed {
    /// The status of the last hop, when the server answered with an error status.
    pub status: Option<u16>,
    /// What went wrong, naming the URL and host.
    pub error: UpdateError,
}

/// [`get`] for callers that need the status of a refusal (a TUF client tells "not found"
/// from other failures): redirects checked hop by hop, as for a bundle.
pub fn request(
    agent: &ureq::Agent,
    url: &str,
    headers: &[(&str, &str)],
) -> Result<(ureq::Response, String), Failed> {
    let plain = |error: UpdateError| Failed {
        status: None,
        error,
    };
    let https = url.to_ascii_lowercase().starts_with("https://");
    let mut current = url.to_string();
    for hop in 0..=MAX_REDIRECTS {
        let mut req = agent.get(&current);
        for (k, v) in headers {
            req = req.set(k, v);
        }
        let target = req
            .request_url()
            .map_err(|e| plain(download_error(&current, e)))?;
        let resp = req.call().map_err(|e| Failed {
            status: match &e {
                ureq::Error::Status(code, _) => Some(*code),
                ureq::Error::Transport(_) => None,
            },
            error: download_error(&current, e),
        })?;
        let location = match resp.header("location") {
            Some(l) if (300..400).contains(&resp.status()) => l.to_string(),
            _ => return Ok((resp, current)),
        };
        if hop == MAX_REDIRECTS {
            break;
        }
        let next = target.as_url().join(&location).map_err(|e| {
            plain(UpdateError::Download {
                url: redact(&current),
                host: host_of(&current),
                reason: format!("the server redirects to {location:?}, which is not a URL: {e}"),
            })
        })?;
        let scheme = next.scheme().to_ascii_lowercase();
        let refuse = |reason: &str| {
            plain(UpdateError::InsecureRedirect {
                from: redact(&current),
                to: redact(next.as_str()),
                reason: reason.into(),
            })
        };
        if https && scheme != "https" {
            return Err(refuse(
                "it leaves https, so anyone on the network could read, withhold or replay the \
                 update; have the server redirect to an https:// URL",
            ));
        }
        if scheme != "http" && scheme != "https" {
            return Err(refuse("only http(s) redirects are followed"));
        }
        tracing::debug!(
            "{} redirects to {}",
            redact(&current),
            redact(next.as_str())
        );
        current = next.to_string();
    }
    Err(plain(UpdateError::Download {
        url: redact(url),
        host: host_of(url),
        reason: format!("more than {MAX_REDIRECTS} redirects; fix the server's redirects"),
    }))
}

/// The body of an HTTP(S) download that reconnects with a Range request when the connection
/// drops (see the module documentation).
pub struct HttpBody {
    agent: ureq::Agent,
    url: String,
    body: Box<dyn Read + Send + Sync>,
    pos: u64,
    len: Option<u64>,
    validator: Option<String>,
    retries_left: u32,
    delay: Duration,
}

impl HttpBody {
    fn start(agent: ureq::Agent, url: &str, opts: &FetchOptions) -> Result<HttpBody, UpdateError> {
        let (resp, _) = get(&agent, url, &[])?;
        let len = resp
            .header("content-length")
            .and_then(|v| v.trim().parse().ok());
        let validator = resp
            .header("etag")
            .filter(|e| !e.starts_with("W/"))
            .or_else(|| resp.header("last-modified"))
            .map(str::to_string);
        Ok(HttpBody {
            agent,
            url: url.to_string(),
            body: Box::new(resp.into_reader()),
            pos: 0,
            len,
            validator,
            retries_left: opts.retries,
            delay: opts.retry_delay,
        })
    }

    /// Bytes delivered so far.
    pub fn position(&self) -> u64 {
        self.pos
    }

    fn reconnect(&mut self, cause: &str) -> io::Result<()> {
        if self.retries_left == 0 {
            return Err(io::Error::other(format!(
                "downloading {} from {}: {cause} at byte {}, and no retries are left",
                self.url,
                host_of(&self.url),
                self.pos
            )));
        }
        self.retries_left -= 1;
        tracing::warn!(
            "download of {} interrupted at byte {} ({cause}); resuming in {:?}",
            self.url,
            self.pos,
            self.delay
        );
        std::thread::sleep(self.delay);
        self.delay = self.delay.saturating_mul(2);
        let range = format!("bytes={}-", self.pos);
        let mut headers = vec![("Range", range.as_str())];
        if let Some(v) = &self.validator {
            headers.push(("If-Range", v.as_str()));
        }
        // From the URL given, redirects checked again: a signed CDN link may have expired.
        let (resp, _) =
            get(&self.agent, &self.url, &headers).map_err(|e| io::Error::other(e.to_string()))?;
        let range = resp.header("content-range").unwrap_or("").to_string();
        let starts_here = range
            .strip_prefix("bytes ")
            .and_then(|r| r.split('-').next())
            .and_then(|s| s.parse::<u64>().ok())
            == Some(self.pos);
        if resp.status() != 206 || !starts_here {
            return Err(io::Error::other(format!(
                "cannot resume {} at byte {}: the server answered {} (Content-Range {range:?}); \
                 it does not support Range requests or the bundle changed; start the install again",
                self.url,
                self.pos,
                resp.status()
            )));
        }
        self.body = Box::new(resp.into_reader());
        Ok(())
    }
}

impl Read for HttpBody {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        loop {
            match self.body.read(buf) {
                Ok(0) => match self.len {
                    Some(len) if self.pos < len => self.reconnect("the connection closed early")?,
                    _ => return Ok(0),
                },
                Ok(n) => {
                    self.pos += n as u64;
                    return Ok(n);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => self.reconnect(&e.to_string())?,
            }
        }
    }
}

/// A download error that names the host and, for TLS failures, the certificate problem.
/// An error and its causes on one line, each cause once (a cause whose text its parent already
/// quotes is left out).
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let s_text = s.to_string();
        if !text.contains(&s_text) {
            text.push_str(": ");
            text.push_str(&s_text);
        }
        source = s.source();
    }
    text
}

fn download_error(url: &str, e: ureq::Error) -> UpdateError {
    let host = host_of(url);
    let reason = match e {
        ureq::Error::Status(code, resp) => {
            format!("the server answered {code} {}", resp.status_text())
        }
        ureq::Error::Transport(t) => match find_tls_error(&t) {
            Some(tls) => format!(
                "TLS handshake failed: {tls}; the server's certificate is not trusted for {host}: \
                 pass --ca FILE with the CA that signed it, or fix the server's certificate"
            ),
            None => error_chain(&t),
        },
    };
    UpdateError::Download {
        url: redact(url),
        host,
        reason,
    }
}

/// The rustls error somewhere in a transport error's chain, if there is one.
fn find_tls_error(t: &ureq::Transport) -> Option<String> {
    let mut source: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(t);
    while let Some(s) = source {
        if let Some(r) = s.downcast_ref::<rustls::Error>() {
            return Some(r.to_string());
        }
        if let Some(inner) = s
            .downcast_ref::<io::Error>()
            .and_then(|io| io.get_ref())
            .and_then(|i| i.downcast_ref::<rustls::Error>())
        {
            return Some(inner.to_string());
        }
        source = s.source();
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_hosts_and_redaction() {
        assert!(is_url("https://x/y"));
        assert!(!is_url("/tmp/bundle.tar"));
        assert!(!is_url("bundle://"[..0].as_ref()));
        assert_eq!(
            host_of("https://user:pw@example.invalid:8443/a?b"),
            "example.invalid:8443"
        );
        assert_eq!(redact("https://user:pw@h/p/b.tar"), "https://h/p/b.tar");
    }

    #[test]
    fn plain_http_and_other_schemes_are_refused() {
        let opts = FetchOptions::new("/nonexistent");
        let err = open("http://127.0.0.1:1/b.tar", &opts)
            .err()
            .unwrap()
            .to_string();
        assert!(
            err.contains("--insecure-http") && err.contains("http://127.0.0.1:1"),
            "{err}"
        );
        let err = open("ftp://h/b.tar", &opts).err().unwrap().to_string();
        assert!(err.contains("https://"), "{err}");
    }

    #[test]
    fn missing_ca_bundle_is_named() {
        let err = tls_config(&FetchOptions::new("/nonexistent/ca.crt"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("/nonexistent/ca.crt"), "{err}");
    }
}
