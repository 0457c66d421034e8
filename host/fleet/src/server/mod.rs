//! The fleet server: one HTTPS listener, TLS 1.3 only (rustls, ring), client certificates
//! optional at the handshake and required by the device routes.
//!
//! Each connection is accepted here rather than by `axum::serve`, so the SHA-256 of the client
//! certificate the handshake verified (against the fleet CA only) can be attached to every
//! request on it ([`PeerCert`]); the handlers in [`routes`] decide what it may do. A client
//! presenting a certificate from another CA fails the handshake; one presenting none gets
//! through to the admin and enrollment routes, which take bearer tokens instead.

mod dashboard;
mod rollouts;
pub mod routes;

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::Request;
use hyper_util::rt::{TokioIo, TokioTimer};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::RootCertStore;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tower_service::Service;

use crate::db::Db;
use crate::pki::{self, FleetCa, Identity};
use crate::signer::{self, Signer};

/// How long a client has for its TLS handshake, and for the header of each request.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// The largest body of any request (each route has its own, smaller limit).
const MAX_BODY: usize = 64 * 1024;
/// How long a client has to send a body.
const BODY_TIMEOUT: Duration = Duration::from_secs(10);

/// What can go wrong starting the server.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A PEM file of the identity does not parse.
    #[error("reading the {what} (PEM)")]
    Pem {
        /// Which file.
        what: &'static str,
        /// Why.
        #[source]
        err: rustls::pki_types::pem::Error,
    },
    /// rustls refused the configuration.
    #[error("setting up TLS")]
    Tls(#[from] rustls::Error),
    /// The client verifier could not be built.
    #[error("setting up client certificate verification")]
    Verifier(#[from] rustls::server::VerifierBuilderError),
    /// The fleet CA does not load.
    #[error("loading the fleet CA")]
    Ca(#[from] pki::Error),
    /// The repository given with `--repo` cannot be signed.
    #[error("opening the rollouts' repository")]
    Repo(#[from] signer::Error),
    /// The address could not be bound.
    #[error("listening on {addr}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// Why.
        #[source]
        err: std::io::Error,
    },
}

/// The server's settings.
#[derive(Debug, Clone)]
pub struct Config {
    /// Where to listen.
    pub listen: SocketAddr,
    /// The CA and the server's certificate.
    pub identity: Identity,
    /// How many reports a device may send per minute (more get 429).
    pub reports_per_minute: i64,
    /// The repository the server signs rollouts into (`--repo`); without it, rollouts are
    /// read-only here.
    pub repo: Option<RepoSettings>,
}

/// The repository the server signs rollouts into.
#[derive(Debug, Clone)]
pub struct RepoSettings {
    /// The repository folder (its `repo.toml` names the online keys).
    pub dir: PathBuf,
    /// Refuse development keys (`--release`).
    pub release: bool,
    /// How often to reconcile the repository's records with the database.
    pub reconcile_every: Duration,
}

/// The fingerprint (SHA-256, hex) of the client certificate a connection's handshake verified,
/// attached to each of its requests; `None` when the client sent none.
#[derive(Debug, Clone)]
pub struct PeerCert(pub Option<String>);

/// The TLS settings: TLS 1.3 only, ring, client certificates from the fleet CA (optional).
pub fn tls_config(identity: &Identity) -> Result<rustls::ServerConfig, Error> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(identity.ca_pem.as_bytes()) {
        roots.add(cert.map_err(|err| Error::Pem {
            what: "fleet CA",
            err,
        })?)?;
    }
    let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .allow_unauthenticated()
        .build()?;
    let chain = CertificateDer::pem_slice_iter(identity.server_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|err| Error::Pem {
            what: "server certificate",
            err,
        })?;
    let key = PrivateKeyDer::from_pem_slice(identity.server_key_pem.as_bytes()).map_err(|err| {
        Error::Pem {
            what: "server key",
            err,
        }
    })?;
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

/// A bound server, ready to run.
pub struct Server {
    listener: TcpListener,
    acceptor: TlsAcceptor,
    router: axum::Router,
    signer: Option<(Signer, Duration)>,
}

impl Server {
    /// Bind the listener and prepare TLS and the routes. Must be called inside a tokio
    /// runtime.
    pub async fn bind(config: Config, db: Db) -> Result<Self, Error> {
        let tls = tls_config(&config.identity)?;
        let ca = FleetCa::load(&config.identity.ca_pem, &config.identity.ca_key_pem)?;
        let listener = TcpListener::bind(config.listen)
            .await
            .map_err(|err| Error::Bind {
                addr: config.listen,
                err,
            })?;
        let signer = match &config.repo {
            Some(r) => {
                let signer = Signer::open(&r.dir, r.release, db.clone()).await?;
                // A change committed but never signed (a crash between the two) heals here.
                signer.reconcile_logged(true).await;
                Some((signer, r.reconcile_every))
            }
            None => None,
        };
        let state = routes::State {
            db,
            ca: Arc::new(ca),
            reports_per_minute: config.reports_per_minute,
            signer: signer.as_ref().map(|(s, _)| s.clone()),
        };
        Ok(Server {
            listener,
            acceptor: TlsAcceptor::from(Arc::new(tls)),
            router: routes::router(state),
            signer,
        })
    }

    /// The repository's signer, when the server has `--repo`.
    pub fn signer(&self) -> Option<&Signer> {
        self.signer.as_ref().map(|(s, _)| s)
    }

    /// The address it listens on (the port, when bound to port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .expect("a bound listener has an address")
    }

    /// Serve until `shutdown` completes. Connections in progress are dropped with the runtime.
    pub async fn run(self, shutdown: impl Future<Output = ()>) {
        let accepting = tokio::spawn(accept_loop(self.listener, self.acceptor, self.router));
        let reconciling = self
            .signer
            .map(|(signer, every)| tokio::spawn(signer.run_every(every)));
        shutdown.await;
        accepting.abort();
        if let Some(r) = reconciling {
            r.abort();
        }
    }
}

async fn accept_loop(listener: TcpListener, acceptor: TlsAcceptor, router: axum::Router) {
    loop {
        let (tcp, addr) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                // Out of file descriptors and the like: wait, and keep serving.
                tracing::warn!("accepting a connection: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        tokio::spawn(connection(tcp, addr, acceptor.clone(), router.clone()));
    }
}

/// Read the whole body (up to [`MAX_BODY`]) before the routes see the request, so a route that
/// refuses without reading it (a wrong token, another device's report) never leaves unread
/// bytes behind: closing a socket with unread data sends a reset, which can destroy the answer
/// before the client reads it. Only a body over the limit is answered unread (413, and the
/// connection closed).
async fn buffered(
    req: Request<Incoming>,
    mut router: axum::Router,
) -> Result<axum::response::Response, std::convert::Infallible> {
    use axum::response::IntoResponse;
    use http_body_util::{BodyExt, LengthLimitError, Limited};
    let (parts, body) = req.into_parts();
    let refuse = |status: hyper::StatusCode, message: String| {
        let mut r = (status, axum::Json(crate::api::ErrorBody { error: message })).into_response();
        r.headers_mut().insert(
            hyper::header::CONNECTION,
            hyper::header::HeaderValue::from_static("close"),
        );
        Ok(r)
    };
    match tokio::time::timeout(BODY_TIMEOUT, Limited::new(body, MAX_BODY).collect()).await {
        Ok(Ok(collected)) => {
            let req = Request::from_parts(parts, axum::body::Body::from(collected.to_bytes()));
            router.call(req).await
        }
        Ok(Err(e)) if e.is::<LengthLimitError>() => refuse(
            hyper::StatusCode::PAYLOAD_TOO_LARGE,
            format!("the body is larger than {MAX_BODY} bytes"),
        ),
        Ok(Err(e)) => refuse(
            hyper::StatusCode::BAD_REQUEST,
            format!("reading the body: {e}"),
        ),
        Err(_) => refuse(
            hyper::StatusCode::REQUEST_TIMEOUT,
            "the body took too long".into(),
        ),
    }
}

async fn connection(
    tcp: tokio::net::TcpStream,
    addr: SocketAddr,
    acceptor: TlsAcceptor,
    router: axum::Router,
) {
    let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
        Ok(Ok(tls)) => tls,
        Ok(Err(e)) => {
            tracing::info!("{addr}: TLS handshake refused: {e}");
            return;
        }
        Err(_) => {
            tracing::info!("{addr}: TLS handshake timed out");
            return;
        }
    };
    let peer = PeerCert(
        tls.get_ref()
            .1
            .peer_certificates()
            .and_then(|chain| chain.first())
            .map(|cert| pki::fingerprint(cert)),
    );
    let service = hyper::service::service_fn(move |mut req: Request<Incoming>| {
        req.extensions_mut().insert(peer.clone());
        let router = router.clone();
        buffered(req, router)
    });
    let served = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(HANDSHAKE_TIMEOUT)
        .serve_connection(TokioIo::new(tls), service)
        .await;
    if let Err(e) = served {
        tracing::debug!("{addr}: {e}");
    }
}
