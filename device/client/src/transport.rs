//! How the TUF client reaches a repository: tough's [`Transport`] over the updater's HTTP(S)
//! client (TLS 1.3, the system CAs plus the fleet's CA, redirects checked hop by hop), or over
//! files for a repository in a local folder.
//!
//! ## Versioned metadata is fetched once
//! With consistent snapshots, `N.snapshot.json` and `N.targets.json` never change once
//! published, so a poll that finds the same timestamp as last time needs nothing else: the
//! transport keeps the last versions it fetched in a cache folder and serves them from there.
//! They are still checked in full by tough on every refresh (signatures, versions, hashes and
//! lengths from the timestamp and snapshot, expiry). A file is cached only after the refresh
//! that fetched it succeeded ([`Transport::commit`]), so bytes that failed a check are never
//! served again. A no-change poll costs the root probe (`N+1.root.json`, answered 404) and the
//! timestamp.
//!
//! Every fetch is counted ([`Counters`]): the agent's status and `cargo xtask bench fleet-repo`
//! report requests and bytes per poll.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use aperture_updater::source::{self, FetchOptions};
use bytes::Bytes;
use tough::{TransportError, TransportErrorKind, TransportStream};
use url::Url;

/// Bytes a response body is read in.
const CHUNK: usize = 16 * 1024;
/// The largest versioned metadata file the cache holds (tough's own limits apply first).
const MAX_CACHED: u64 = 16 << 20;

/// Requests made and body bytes received, over the transport's life.
#[derive(Debug, Default)]
pub struct Counters {
    requests: AtomicU64,
    bytes: AtomicU64,
    cached: AtomicU64,
}

impl Counters {
    /// Requests sent to the repository.
    pub fn requests(&self) -> u64 {
        self.requests.load(Ordering::Relaxed)
    }

    /// Body bytes received from it.
    pub fn bytes(&self) -> u64 {
        self.bytes.load(Ordering::Relaxed)
    }

    /// Files served from the cache instead.
    pub fn cached(&self) -> u64 {
        self.cached.load(Ordering::Relaxed)
    }
}

/// The transport of one client: HTTP(S) or files, with the cache of versioned metadata.
#[derive(Debug, Clone)]
pub struct Transport {
    http: Option<ureq::Agent>,
    insecure_http: bool,
    cache: Option<PathBuf>,
    pending: Arc<Mutex<BTreeMap<String, Vec<u8>>>>,
    counters: Arc<Counters>,
}

impl Transport {
    /// A transport for `opts` (TLS settings, timeouts, `insecure_http`), caching versioned
    /// metadata in `cache` when given.
    pub fn new(opts: &FetchOptions, cache: Option<PathBuf>) -> Result<Transport, String> {
        let http = source::agent(opts, true).map_err(|e| e.to_string())?;
        Ok(Transport {
            http: Some(http),
            insecure_http: opts.insecure_http,
            cache,
            pending: Arc::default(),
            counters: Arc::default(),
        })
    }

    /// A transport for `file://` repositories only (tests, a repository on local media).
    pub fn files_only(cache: Option<PathBuf>) -> Transport {
        Transport {
            http: None,
            insecure_http: false,
            cache,
            pending: Arc::default(),
            counters: Arc::default(),
        }
    }

    /// The counters.
    pub fn counters(&self) -> Arc<Counters> {
        self.counters.clone()
    }

    /// The refresh that fetched the pending files succeeded: keep them in the cache, and drop
    /// cached versions of the same roles that they replace.
    pub fn commit(&self) {
        let pending = std::mem::take(&mut *self.pending.lock().unwrap_or_else(|e| e.into_inner()));
        let Some(dir) = &self.cache else { return };
        if pending.is_empty() {
            return;
        }
        if let Err(e) = std::fs::create_dir_all(dir) {
            tracing::warn!("metadata cache {}: {e}", dir.display());
            return;
        }
        for (name, bytes) in &pending {
            let role = cached_role(name).unwrap_or_default();
            if let Ok(entries) = std::fs::read_dir(dir) {
                for entry in entries.flatten() {
                    let other = entry.file_name().to_string_lossy().into_owned();
                    if other != *name && cached_role(&other) == Some(role) {
                        let _ = std::fs::remove_file(entry.path());
                    }
                }
            }
            if let Err(e) = aperture_sys::fs::write_atomic(&dir.join(name), bytes, 0o644) {
                tracing::warn!("caching {name} in {}: {e}", dir.display());
            }
        }
    }

    /// The refresh failed: forget what it fetched, and empty the cache too, so that the next
    /// refresh fetches every file again (a cached copy that no longer verifies, say after a
    /// repository republished a version during a key recovery, must not fail every poll).
    pub fn discard(&self) {
        self.pending
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
        if let Some(dir) = &self.cache {
            if let Ok(entries) = std::fs::read_dir(dir) {
                for entry in entries.flatten() {
                    if cached_role(&entry.file_name().to_string_lossy()).is_some() {
                        let _ = std::fs::remove_file(entry.path());
                    }
                }
            }
        }
    }

    fn read_cached(&self, name: &str) -> Option<Vec<u8>> {
        let dir = self.cache.as_ref()?;
        let bytes = std::fs::read(dir.join(name)).ok()?;
        self.counters.cached.fetch_add(1, Ordering::Relaxed);
        Some(bytes)
    }

    fn fetch_http(&self, url: &Url) -> Result<TransportStream, TransportError> {
        let scheme = url.scheme();
        if scheme == "http" && !self.insecure_http {
            return Err(TransportError::new_with_cause(
                TransportErrorKind::UnsupportedUrlScheme,
                url.clone(),
                "plain http:// lets anyone on the network withhold or replay metadata; use \
                 https://, or set insecure_http (test networks only)",
            ));
        }
        let agent = self.http.as_ref().ok_or_else(|| {
            TransportError::new_with_cause(
                TransportErrorKind::UnsupportedUrlScheme,
                url.clone(),
                "this client reads repositories from files only",
            )
        })?;
        self.counters.requests.fetch_add(1, Ordering::Relaxed);
        let (resp, _) = source::request(agent, url.as_str(), &[]).map_err(|f| {
            let kind = match f.status {
                // S3 and CDNs answer 403 for a missing object when listing is not allowed.
                Some(404 | 403 | 410) => TransportErrorKind::FileNotFound,
                _ => TransportErrorKind::Other,
            };
            TransportError::new_with_cause(kind, url.clone(), f.error.to_string())
        })?;
        Ok(self.stream(url, Box::new(resp.into_reader())))
    }

    fn stream(&self, url: &Url, reader: Box<dyn Read + Send + Sync>) -> TransportStream {
        let counters = self.counters.clone();
        let url = url.clone();
        let state = (reader, false);
        Box::pin(futures::stream::unfold(state, move |(mut reader, done)| {
            let counters = counters.clone();
            let url = url.clone();
            async move {
                if done {
                    return None;
                }
                let mut buf = vec![0u8; CHUNK];
                match reader.read(&mut buf) {
                    Ok(0) => None,
                    Ok(n) => {
                        buf.truncate(n);
                        counters.bytes.fetch_add(n as u64, Ordering::Relaxed);
                        Some((Ok(Bytes::from(buf)), (reader, false)))
                    }
                    Err(e) => Some((
                        Err(TransportError::new_with_cause(
                            TransportErrorKind::Other,
                            url,
                            e,
                        )),
                        (reader, true),
                    )),
                }
            }
        }))
    }

    /// Fetch a versioned metadata file whole (bounded), and keep it pending for the cache.
    async fn fetch_cacheable(
        &self,
        url: &Url,
        name: &str,
    ) -> Result<TransportStream, TransportError> {
        use futures::StreamExt;
        let mut stream = self.fetch_uncached(url)?;
        let mut bytes = Vec::new();
        while let Some(chunk) = stream.next().await {
            bytes.extend_from_slice(&chunk?);
            if bytes.len() as u64 > MAX_CACHED {
                return Err(TransportError::new_with_cause(
                    TransportErrorKind::Other,
                    url.clone(),
                    format!("{name} is larger than {MAX_CACHED} bytes"),
                ));
            }
        }
        self.pending
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(name.to_string(), bytes.clone());
        Ok(Box::pin(futures::stream::iter([Ok(Bytes::from(bytes))])))
    }

    fn fetch_uncached(&self, url: &Url) -> Result<TransportStream, TransportError> {
        match url.scheme() {
            "file" => {
                self.counters.requests.fetch_add(1, Ordering::Relaxed);
                let path = url.to_file_path().map_err(|()| {
                    TransportError::new_with_cause(
                        TransportErrorKind::Other,
                        url.clone(),
                        "not a local path",
                    )
                })?;
                match std::fs::File::open(&path) {
                    Ok(file) => Ok(self.stream(url, Box::new(file))),
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                        Err(TransportError::new_with_cause(
                            TransportErrorKind::FileNotFound,
                            url.clone(),
                            e,
                        ))
                    }
                    Err(e) => Err(TransportError::new_with_cause(
                        TransportErrorKind::Other,
                        url.clone(),
                        e,
                    )),
                }
            }
            "http" | "https" => self.fetch_http(url),
            other => Err(TransportError::new_with_cause(
                TransportErrorKind::UnsupportedUrlScheme,
                url.clone(),
                format!("{other}:// is not supported; use https:// or a local folder"),
            )),
        }
    }
}

/// The role of a cacheable file name (`N.snapshot.json`, `N.targets.json`), if it is one.
fn cached_role(name: &str) -> Option<&str> {
    let (version, rest) = name.split_once('.')?;
    if version.is_empty() || !version.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    match rest {
        "snapshot.json" | "targets.json" => Some(rest.trim_end_matches(".json")),
        _ => None,
    }
}

/// The last segment of a URL's path: the metadata or target file it names.
pub(crate) fn file_name(url: &Url) -> String {
    url.path_segments()
        .and_then(|mut s| s.next_back())
        .unwrap_or("")
        .to_string()
}

#[async_trait::async_trait]
impl tough::Transport for Transport {
    async fn fetch(&self, url: Url) -> Result<TransportStream, TransportError> {
        let name = file_name(&url);
        if cached_role(&name).is_some() {
            if let Some(bytes) = self.read_cached(&name) {
                return Ok(Box::pin(futures::stream::iter([Ok(Bytes::from(bytes))])));
            }
            return self.fetch_cacheable(&url, &name).await;
        }
        self.fetch_uncached(&url)
    }
}

/// The local path of a `file://` URL, for messages.
pub fn display_url(url: &Url) -> String {
    match url.to_file_path() {
        Ok(p) if url.scheme() == "file" => Path::new(&p).display().to_string(),
        _ => source::redact(url.as_str()),
    }
}

#[cfg(test)]
mod tests {
    use super::cached_role;

    #[test]
    fn only_versioned_snapshot_and_targets_are_cached() {
        assert_eq!(cached_role("12.snapshot.json"), Some("snapshot"));
        assert_eq!(cached_role("3.targets.json"), Some("targets"));
        assert_eq!(cached_role("timestamp.json"), None);
        assert_eq!(cached_role("2.root.json"), None);
        assert_eq!(cached_role("x.snapshot.json"), None);
        assert_eq!(cached_role(".targets.json"), None);
        assert_eq!(cached_role("1.targets.json.tmp"), None);
    }
}
