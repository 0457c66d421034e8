//! `repo sync --to s3://BUCKET/PREFIX`: the same order as the folder sync ([`sync::plan`]):
//! every target, then the versioned metadata, then `root.json`, and `timestamp.json` last, each
//! object uploaded only after the one before it is stored, so that a reader never sees
//! metadata naming a missing object. Objects already in the bucket with the same size are
//! skipped (targets are named by their sha256, versioned metadata never change); `root.json`
//! and `timestamp.json` are always uploaded, with `Cache-Control: no-cache` so that a CDN in
//! front of the bucket revalidates the only two names whose contents change.
//!
//! S3 is reached through `object_store` (Apache Arrow's, the client of DataFusion, Polars and
//! delta-rs). Credentials come from `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY` and
//! `AWS_SESSION_TOKEN` only: never from instance metadata, which object_store would otherwise
//! ask for at a link-local address when the variables are missing. Objects larger than a part
//! go up as multipart uploads, a few parts at a time, with progress after each part; a failed
//! multipart upload is aborted so that its parts do not linger (and cost) in the bucket.

use std::collections::HashMap;
use std::fmt;
use std::io::Read;
use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use futures::TryStreamExt;
use object_store::aws::{AmazonS3, AmazonS3Builder};
use object_store::client::{HttpError, HttpErrorKind};
use object_store::path::Path as ObjectPath;
use object_store::{
    Attribute, Attributes, BackoffConfig, ClientOptions, MultipartUpload, ObjectStore,
    PutMultipartOptions, PutOptions, PutPayload, RetryConfig,
};

use crate::sync::{self, Item, Synced};

/// S3's smallest part of a multipart upload (every part but the last).
pub const MIN_PART_SIZE: usize = 5 << 20;
/// The part size `repo sync` uses: objects larger than this go up in parts.
pub const DEFAULT_PART_SIZE: usize = 16 << 20;
/// Parts of one object uploading at once.
const PARALLEL_PARTS: usize = 4;

/// A destination `s3://BUCKET/PREFIX` (the prefix may be empty: the bucket's top).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct S3Url {
    /// The bucket.
    pub bucket: String,
    /// The key prefix, without leading or trailing `/` (empty for the bucket's top).
    pub prefix: String,
}

impl FromStr for S3Url {
    type Err = anyhow::Error;

    fn from_str(s: &str) -> Result<Self> {
        let rest = s
            .strip_prefix("s3://")
            .with_context(|| format!("{s}: an S3 destination is s3://BUCKET/PREFIX"))?;
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        // S3's bucket naming rules (general purpose buckets).
        let ok = (3..=63).contains(&bucket.len())
            && bucket
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'.' || b == b'-')
            && !bucket.starts_with(['.', '-'])
            && !bucket.ends_with(['.', '-']);
        if !ok {
            bail!(
                "{s}: `{bucket}` is not an S3 bucket name (3 to 63 lower-case letters, digits, \
                 dots and dashes)"
            );
        }
        let prefix = prefix.trim_matches('/');
        if prefix
            .split('/')
            .any(|seg| seg == "." || seg == ".." || (seg.is_empty() && !prefix.is_empty()))
        {
            bail!("{s}: the prefix `{prefix}` has an empty, `.` or `..` part");
        }
        Ok(S3Url {
            bucket: bucket.into(),
            prefix: prefix.into(),
        })
    }
}

impl fmt::Display for S3Url {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.prefix.is_empty() {
            write!(f, "s3://{}", self.bucket)
        } else {
            write!(f, "s3://{}/{}", self.bucket, self.prefix)
        }
    }
}

impl S3Url {
    /// The key of the repository file `path` (`targets/...`, `metadata/...`).
    pub fn key(&self, path: &str) -> String {
        if self.prefix.is_empty() {
            path.into()
        } else {
            format!("{}/{path}", self.prefix)
        }
    }
}

/// Where S3 is and who we are there.
#[derive(Clone)]
pub struct S3Settings {
    /// An S3-compatible server's URL (`https://...`; `http://` too, for a local server);
    /// `None` for AWS itself.
    pub endpoint: Option<String>,
    /// The region requests are signed for.
    pub region: String,
    /// `AWS_ACCESS_KEY_ID`.
    pub access_key_id: String,
    /// `AWS_SECRET_ACCESS_KEY`.
    pub secret_access_key: String,
    /// `AWS_SESSION_TOKEN`, for temporary credentials.
    pub session_token: Option<String>,
    /// Objects larger than this go up as multipart uploads, in parts of this size (at least
    /// [`MIN_PART_SIZE`]).
    pub part_size: usize,
    /// How often a request that failed for a passing reason (no connection, throttling, a 5xx)
    /// is tried again, with exponential backoff.
    pub retries: usize,
}

impl fmt::Debug for S3Settings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("S3Settings")
            .field("endpoint", &self.endpoint)
            .field("region", &self.region)
            .field("access_key_id", &self.access_key_id)
            .field("secret_access_key", &"<redacted>")
            .field(
                "session_token",
                &self.session_token.as_ref().map(|_| "<redacted>"),
            )
            .field("part_size", &self.part_size)
            .field("retries", &self.retries)
            .finish()
    }
}

impl S3Settings {
    /// From the standard AWS variables: `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`,
    /// `AWS_SESSION_TOKEN`, `AWS_REGION` (or `AWS_DEFAULT_REGION`; else `us-east-1`) and
    /// `AWS_ENDPOINT_URL_S3` or `AWS_ENDPOINT_URL`, which `endpoint` overrides.
    pub fn from_env(endpoint: Option<&str>) -> Result<Self> {
        Self::from_vars(
            |k| std::env::var(k).ok().filter(|v| !v.is_empty()),
            endpoint,
        )
    }

    /// As [`S3Settings::from_env`], reading variables through `var`.
    pub fn from_vars(var: impl Fn(&str) -> Option<String>, endpoint: Option<&str>) -> Result<Self> {
        let (Some(access_key_id), Some(secret_access_key)) =
            (var("AWS_ACCESS_KEY_ID"), var("AWS_SECRET_ACCESS_KEY"))
        else {
            bail!(
                "S3 credentials missing: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (and \
                 AWS_SESSION_TOKEN for temporary credentials); `repo sync` reads them from these \
                 variables only"
            );
        };
        let endpoint = endpoint
            .map(String::from)
            .or_else(|| var("AWS_ENDPOINT_URL_S3"))
            .or_else(|| var("AWS_ENDPOINT_URL"));
        if let Some(e) = &endpoint {
            let url = url::Url::parse(e).with_context(|| format!("the S3 endpoint `{e}`"))?;
            if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
                bail!("the S3 endpoint `{e}` is not an http:// or https:// URL");
            }
        }
        Ok(S3Settings {
            endpoint,
            region: var("AWS_REGION")
                .or_else(|| var("AWS_DEFAULT_REGION"))
                .unwrap_or_else(|| "us-east-1".into()),
            access_key_id,
            secret_access_key,
            session_token: var("AWS_SESSION_TOKEN"),
            part_size: DEFAULT_PART_SIZE,
            retries: 5,
        })
    }

    /// The endpoint as messages name it.
    pub fn endpoint_name(&self) -> String {
        match &self.endpoint {
            Some(e) => e.clone(),
            None => format!("AWS S3 ({})", self.region),
        }
    }

    /// Whether the endpoint is plain `http://` to another machine than this one.
    pub fn plain_http_remote(&self) -> bool {
        let Some(url) = self
            .endpoint
            .as_deref()
            .and_then(|e| url::Url::parse(e).ok())
        else {
            return false;
        };
        let local = match url.host() {
            Some(url::Host::Domain(d)) => d == "localhost",
            Some(url::Host::Ipv4(a)) => a.is_loopback(),
            Some(url::Host::Ipv6(a)) => a.is_loopback(),
            None => false,
        };
        url.scheme() == "http" && !local
    }

    fn store(&self, dest: &S3Url) -> Result<AmazonS3> {
        if self.part_size < MIN_PART_SIZE {
            bail!(
                "a part of {} bytes is below S3's minimum of {MIN_PART_SIZE}",
                self.part_size
            );
        }
        let http = self
            .endpoint
            .as_deref()
            .is_some_and(|e| e.starts_with("http://"));
        let mut b = AmazonS3Builder::new()
            .with_bucket_name(&dest.bucket)
            .with_region(&self.region)
            .with_access_key_id(&self.access_key_id)
            .with_secret_access_key(&self.secret_access_key)
            .with_retry(RetryConfig {
                backoff: BackoffConfig::default(),
                max_retries: self.retries,
                retry_timeout: Duration::from_secs(120),
            })
            .with_client_options(
                ClientOptions::new()
                    .with_allow_http(http)
                    .with_connect_timeout(Duration::from_secs(10))
                    // One request carries at most a part: minutes on a slow uplink.
                    .with_timeout(Duration::from_secs(600)),
            );
        if let Some(t) = &self.session_token {
            b = b.with_token(t);
        }
        if let Some(e) = &self.endpoint {
            b = b.with_endpoint(e);
        }
        b.build()
            .with_context(|| format!("setting up the S3 client for {dest}"))
    }
}

/// An upload's progress: after each part of a multipart upload, and once when an object is
/// stored (`sent == total`).
#[derive(Debug, Clone, Copy)]
pub struct Progress<'a> {
    /// The repository file (`targets/...`, `metadata/...`).
    pub path: &'a str,
    /// Bytes stored so far.
    pub sent: u64,
    /// Its size.
    pub total: u64,
}

/// Upload the repository `repo` to `dest` in the order of [`sync::plan`], skipping objects
/// already there with the same size (but never `root.json` or `timestamp.json`).
pub fn to_s3(
    repo: &Path,
    dest: &S3Url,
    settings: &S3Settings,
    progress: &mut dyn FnMut(Progress<'_>),
) -> Result<Synced> {
    let plan = sync::plan(repo)?;
    let store = settings.store(dest)?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime the S3 client needs")?;
    rt.block_on(async {
        let there = existing(&store, dest, settings).await?;
        let mut out = Synced::default();
        for item in plan {
            if !item.always && there.get(&item.path) == Some(&item.len) {
                out.kept += 1;
                continue;
            }
            upload(&store, repo, &item, dest, settings, progress).await?;
            out.copied.push(item.path);
        }
        Ok(out)
    })
}

/// The objects under the prefix, by repository path, with their sizes. The first request of
/// a sync, so it is also the one that finds wrong credentials, a missing bucket or an
/// unreachable endpoint.
async fn existing(
    store: &AmazonS3,
    dest: &S3Url,
    settings: &S3Settings,
) -> Result<HashMap<String, u64>> {
    let prefix = (!dest.prefix.is_empty()).then(|| ObjectPath::from(dest.prefix.as_str()));
    let listed: Vec<_> = store
        .list(prefix.as_ref())
        .try_collect()
        .await
        .map_err(|e| explain(e, &format!("listing {dest}"), dest, settings))?;
    let strip = if dest.prefix.is_empty() {
        String::new()
    } else {
        format!("{}/", dest.prefix)
    };
    Ok(listed
        .into_iter()
        .filter_map(|m| {
            let key = m
                .location
                .as_ref()
                .strip_prefix(strip.as_str())?
                .to_string();
            Some((key, m.size))
        })
        .collect())
}

fn attributes(item: &Item) -> Attributes {
    let mut a = Attributes::new();
    let kind = if item.path.ends_with(".json") {
        "application/json"
    } else {
        "application/octet-stream"
    };
    a.insert(Attribute::ContentType, kind.into());
    if item.always {
        a.insert(Attribute::CacheControl, "no-cache".into());
    }
    a
}

async fn upload(
    store: &AmazonS3,
    repo: &Path,
    item: &Item,
    dest: &S3Url,
    settings: &S3Settings,
    progress: &mut dyn FnMut(Progress<'_>),
) -> Result<()> {
    let key = dest.key(&item.path);
    let location = ObjectPath::from(key.as_str());
    let from = repo.join(&item.path);
    let what = format!("uploading {} to s3://{}/{key}", from.display(), dest.bucket);
    let changed = || {
        anyhow!(
            "{} changed during the sync (its size is no longer {}): run the sync again",
            from.display(),
            item.len
        )
    };
    if item.len <= settings.part_size as u64 {
        let bytes = std::fs::read(&from).with_context(|| format!("reading {}", from.display()))?;
        if bytes.len() as u64 != item.len {
            return Err(changed());
        }
        let opts = PutOptions {
            attributes: attributes(item),
            ..Default::default()
        };
        store
            .put_opts(&location, PutPayload::from(bytes), opts)
            .await
            .map_err(|e| explain(e, &what, dest, settings))?;
    } else {
        let opts = PutMultipartOptions {
            attributes: attributes(item),
            ..Default::default()
        };
        let mut up = store
            .put_multipart_opts(&location, opts)
            .await
            .map_err(|e| explain(e, &what, dest, settings))?;
        let why = |e| explain(e, &what, dest, settings);
        let parts = send_parts(&mut *up, &from, item, settings.part_size, &why, progress).await;
        let done = match parts {
            Ok(()) => up.complete().await.map(drop).map_err(why),
            Err(e) => Err(e),
        };
        if let Err(e) = done {
            // Parts of an upload never completed stay in the bucket, unseen but billed.
            if let Err(abort) = up.abort().await {
                return Err(e.context(format!(
                    "and aborting the multipart upload failed too ({abort}): a lifecycle rule \
                     with AbortIncompleteMultipartUpload removes its parts"
                )));
            }
            return Err(e);
        }
    }
    progress(Progress {
        path: &item.path,
        sent: item.len,
        total: item.len,
    });
    Ok(())
}

/// Read `from` in parts and upload them, [`PARALLEL_PARTS`] at a time (spawned, so that every
/// part in flight makes progress; dropping the set on an error stops the others).
async fn send_parts(
    up: &mut dyn MultipartUpload,
    from: &Path,
    item: &Item,
    part_size: usize,
    explain: &dyn Fn(object_store::Error) -> anyhow::Error,
    progress: &mut dyn FnMut(Progress<'_>),
) -> Result<()> {
    let mut file =
        std::fs::File::open(from).with_context(|| format!("opening {}", from.display()))?;
    let mut tasks = tokio::task::JoinSet::new();
    let (mut read, mut sent) = (0u64, 0u64);
    loop {
        let mut part = Vec::with_capacity(part_size);
        (&mut file)
            .take(part_size as u64)
            .read_to_end(&mut part)
            .with_context(|| format!("reading {}", from.display()))?;
        if part.is_empty() {
            break;
        }
        let len = part.len() as u64;
        read += len;
        let put = up.put_part(PutPayload::from(part));
        tasks.spawn(async move { put.await.map(|()| len) });
        while tasks.len() >= PARALLEL_PARTS || (read >= item.len && !tasks.is_empty()) {
            sent += next_part(&mut tasks, explain).await?;
            if sent < item.len {
                progress(Progress {
                    path: &item.path,
                    sent,
                    total: item.len,
                });
            }
        }
    }
    while !tasks.is_empty() {
        sent += next_part(&mut tasks, explain).await?;
    }
    if read != item.len || sent != item.len {
        bail!(
            "{} changed during the sync (its size is no longer {}): run the sync again",
            from.display(),
            item.len
        );
    }
    Ok(())
}

/// The size of the next part stored.
async fn next_part(
    tasks: &mut tokio::task::JoinSet<object_store::Result<u64>>,
    explain: &dyn Fn(object_store::Error) -> anyhow::Error,
) -> Result<u64> {
    let done = tasks.join_next().await.context("no part in flight")?;
    done.context("an upload task failed")?.map_err(explain)
}

/// The S3 error code in an error response (`<Code>NoSuchBucket</Code>`) and its message.
fn s3_error(text: &str) -> Option<(String, String)> {
    let tag = |name: &str| -> Option<String> {
        let open = format!("<{name}>");
        let start = text.find(&open)? + open.len();
        let end = text[start..].find(&format!("</{name}>"))? + start;
        Some(text[start..end].trim().to_string())
    };
    let code = tag("Code")?;
    Some((code, tag("Message").unwrap_or_default()))
}

/// What went wrong, for a person: the object, the endpoint, and the fix.
fn explain(e: object_store::Error, what: &str, dest: &S3Url, s: &S3Settings) -> anyhow::Error {
    let endpoint = s.endpoint_name();
    let transport = {
        let mut kind = None;
        let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(&e);
        while let Some(c) = cause {
            if let Some(h) = c.downcast_ref::<HttpError>() {
                kind = Some(h.kind());
            }
            cause = c.source();
        }
        kind
    };
    let Some((code, message)) = s3_error(&e.to_string()) else {
        let hint = match transport {
            Some(HttpErrorKind::Connect) => format!(
                "cannot connect to the S3 endpoint {endpoint}: check --endpoint (or \
                 AWS_ENDPOINT_URL), the network, and that the server is running"
            ),
            Some(HttpErrorKind::Timeout) => format!(
                "the S3 endpoint {endpoint} did not answer in time: check the network and \
                 --endpoint (or AWS_ENDPOINT_URL)"
            ),
            _ => format!("S3 at {endpoint} failed"),
        };
        return anyhow::Error::new(e).context(format!("{what}: {hint}"));
    };
    let hint = match code.as_str() {
        "InvalidAccessKeyId" => format!(
            "S3 at {endpoint} does not know the access key id {}: check AWS_ACCESS_KEY_ID",
            s.access_key_id
        ),
        "SignatureDoesNotMatch" => format!(
            "S3 at {endpoint} refused the request's signature: AWS_SECRET_ACCESS_KEY is not the \
             secret of the access key id {}",
            s.access_key_id
        ),
        "InvalidToken" | "ExpiredToken" | "TokenRefreshRequired" => format!(
            "S3 at {endpoint} refused the session token: renew the temporary credentials \
             (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN)"
        ),
        "AccessDenied" | "AllAccessDisabled" => format!(
            "the credentials of {} may not do this: allow s3:ListBucket on the bucket {} and \
             s3:PutObject (and s3:AbortMultipartUpload) on {dest}/*",
            s.access_key_id, dest.bucket
        ),
        "NoSuchBucket" => format!(
            "the bucket {} does not exist at {endpoint}: create it (for example `aws s3 mb \
             s3://{}`) or fix the bucket in --to",
            dest.bucket, dest.bucket
        ),
        "AuthorizationHeaderMalformed"
        | "PermanentRedirect"
        | "IllegalLocationConstraintException" => {
            format!(
                "the bucket {} is not in the region {}: set AWS_REGION to the bucket's region",
                dest.bucket, s.region
            )
        }
        _ => format!("S3 at {endpoint} refused it"),
    };
    anyhow!("{what}: {hint} (S3 said {code}: {message})")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_name_a_bucket_and_a_clean_prefix() {
        let u: S3Url = "s3://fleet-repo/prod/v1/".parse().unwrap();
        assert_eq!(u.bucket, "fleet-repo");
        assert_eq!(u.prefix, "prod/v1");
        assert_eq!(
            u.key("metadata/timestamp.json"),
            "prod/v1/metadata/timestamp.json"
        );
        assert_eq!(u.to_string(), "s3://fleet-repo/prod/v1");
        let top: S3Url = "s3://fleet".parse().unwrap();
        assert_eq!(top.key("targets/x"), "targets/x");
        for bad in [
            "s3://",
            "s3://Fleet/x",
            "s3://ab",
            "s3://fleet/a//b",
            "s3://fleet/../x",
            "/srv/x",
        ] {
            assert!(bad.parse::<S3Url>().is_err(), "{bad}");
        }
    }

    #[test]
    fn settings_come_from_the_aws_variables_and_missing_credentials_are_named() {
        let vars = |k: &str| match k {
            "AWS_ACCESS_KEY_ID" => Some("AKIAEXAMPLE".to_string()),
            "AWS_SECRET_ACCESS_KEY" => Some("secret".to_string()),
            "AWS_REGION" => Some("eu-west-1".to_string()),
            "AWS_ENDPOINT_URL" => Some("http://127.0.0.1:9000".to_string()),
            _ => None,
        };
        let s = S3Settings::from_vars(vars, None).unwrap();
        assert_eq!(s.region, "eu-west-1");
        assert_eq!(s.endpoint.as_deref(), Some("http://127.0.0.1:9000"));
        assert!(!format!("{s:?}").contains("secret\""), "{s:?}");
        let s = S3Settings::from_vars(vars, Some("https://s3.example.net")).unwrap();
        assert_eq!(s.endpoint.as_deref(), Some("https://s3.example.net"));
        assert!(S3Settings::from_vars(vars, Some("ftp://x")).is_err());
        let e = S3Settings::from_vars(|_| None, None)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("AWS_ACCESS_KEY_ID") && e.contains("AWS_SECRET_ACCESS_KEY"),
            "{e}"
        );
    }

    #[test]
    fn s3_error_codes_are_read_from_the_response() {
        let body = "Server returned non-2xx status code: 404 Not Found: <?xml version=\"1.0\"?>\
                    <Error><Code>NoSuchBucket</Code><Message>The specified bucket does not \
                    exist</Message></Error>";
        assert_eq!(
            s3_error(body),
            Some((
                "NoSuchBucket".into(),
                "The specified bucket does not exist".into()
            ))
        );
        assert_eq!(s3_error("connection refused"), None);
    }
}
