//! `repo sync --to s3://` against a real S3-compatible server that each test starts on
//! 127.0.0.1: moto's server (PyPI `moto[server]`, what boto's and many S3 clients' own tests
//! run against). moto records every request it receives, in order (`MOTO_ENABLE_RECORDING`),
//! and the tests read the upload order from that record: the server's word, not the client's.
//!
//! With IAM authentication on, moto checks access keys and signatures as S3 does, except that
//! in server mode it computes the signature over the query string decoded (werkzeug's
//! `request.url`), so it refuses every correctly signed request whose query holds an encoded
//! `/` (a listing under a prefix, `prefix=prod%2F`; boto3 is refused the same way). So the
//! upload test runs with authentication off under a prefix, and the credential test with it on
//! at the bucket's top.
//!
//! `cargo xtask test` installs moto first (its preflight) and sets `APERTURE_REQUIRE_TOOLS=1`;
//! elsewhere a machine without `moto_server` prints why the test skipped.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use aperture_repo::s3::{self, Progress, S3Settings, S3Url, MIN_PART_SIZE};
use aperture_repo::{sync, Repo};
use common::{bundle, load, meta, t};
use futures::TryStreamExt;
use object_store::{ObjectStore, ObjectStoreExt};

/// A moto server on a free port of 127.0.0.1, stopped when dropped.
struct Moto {
    child: Child,
    url: String,
    recording: PathBuf,
    _dir: tempfile::TempDir,
}

/// An access key moto's IAM knows, allowed everything on S3.
struct Key {
    id: String,
    secret: String,
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Moto {
    /// Start it, or `None` (SKIPPED; a failure under `APERTURE_REQUIRE_TOOLS=1`).
    fn start(test: &str) -> Option<Moto> {
        let Some(program) = aperture_sys::tool::find("moto_server") else {
            let why = format!(
                "{test}: `moto_server` (PyPI package moto[server]) is not installed; `cargo \
                 xtask test` installs it as root"
            );
            if aperture_sys::tool::required() {
                panic!("APERTURE_REQUIRE_TOOLS=1 and a tool is missing: {why}");
            }
            eprintln!("SKIPPED: {why}");
            return None;
        };
        let dir = tempfile::tempdir().unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let recording = dir.path().join("requests.jsonl");
        let log = std::fs::File::create(dir.path().join("moto.log")).unwrap();
        let child = Command::new(program)
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .env("MOTO_ENABLE_RECORDING", "1")
            .env("MOTO_RECORDER_FILEPATH", &recording)
            .current_dir(dir.path())
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        let mut moto = Moto {
            child,
            url: format!("http://127.0.0.1:{port}"),
            recording,
            _dir: dir,
        };
        let start = Instant::now();
        while ureq::get(&format!("{}/moto-api/", moto.url))
            .call()
            .is_err()
        {
            if let Ok(Some(status)) = moto.child.try_wait() {
                let log = std::fs::read_to_string(moto._dir.path().join("moto.log"));
                panic!("moto_server exited ({status}): {log:?}");
            }
            assert!(
                start.elapsed() < Duration::from_secs(60),
                "moto_server never answered"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        Some(moto)
    }

    /// The bucket `bucket`, and with `auth` an IAM user with an access key allowed all of S3,
    /// then IAM authentication on for every request after these. Without `auth`, moto takes
    /// any key.
    fn set_up(&self, bucket: &str, auth: bool) -> Key {
        ureq::put(&format!("{}/{bucket}", self.url)).call().unwrap();
        if !auth {
            return Key {
                id: "AKIAANYKEY0000000000".into(),
                secret: "any-secret".into(),
            };
        }
        // Before authentication is on, moto takes any signature; the credential scope of the
        // Authorization header only routes the request to IAM.
        let iam = |form: &[(&str, &str)]| -> String {
            let mut form = form.to_vec();
            form.push(("Version", "2010-05-08"));
            ureq::post(&self.url)
                .set(
                    "Authorization",
                    "AWS4-HMAC-SHA256 Credential=AKIASETUP/20260101/us-east-1/iam/aws4_request, \
                     SignedHeaders=host, Signature=0",
                )
                .send_form(&form)
                .unwrap()
                .into_string()
                .unwrap()
        };
        iam(&[("Action", "CreateUser"), ("UserName", "sync")]);
        let created = iam(&[("Action", "CreateAccessKey"), ("UserName", "sync")]);
        let policy = r#"{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":"s3:*","Resource":"*"}]}"#;
        iam(&[
            ("Action", "PutUserPolicy"),
            ("UserName", "sync"),
            ("PolicyName", "s3"),
            ("PolicyDocument", policy),
        ]);
        ureq::post(&format!("{}/moto-api/reset-auth", self.url))
            .set("Content-Type", "text/plain")
            .send_string("0")
            .unwrap();
        let tag = |name: &str| {
            let (_, rest) = created.split_once(&format!("<{name}>")).unwrap();
            rest.split_once('<').unwrap().0.to_string()
        };
        Key {
            id: tag("AccessKeyId"),
            secret: tag("SecretAccessKey"),
        }
    }

    fn settings(&self, key: &Key) -> S3Settings {
        S3Settings {
            endpoint: Some(self.url.clone()),
            region: "us-east-1".into(),
            access_key_id: key.id.clone(),
            secret_access_key: key.secret.clone(),
            session_token: None,
            part_size: MIN_PART_SIZE,
            retries: 1,
        }
    }

    /// Every object stored so far, in the order the server received the request that stored
    /// it: a PUT of a whole object, or the POST completing a multipart upload.
    fn stored(&self) -> Vec<String> {
        let text = std::fs::read_to_string(&self.recording).unwrap_or_default();
        // One JSON object per request; moto writes each whole, but the line break after it
        // separately, so requests in parallel (parts) can share a line.
        serde_json::Deserializer::from_str(&text)
            .into_iter::<serde_json::Value>()
            .filter_map(|r| {
                let r = r.unwrap();
                let url = url::Url::parse(r["url"].as_str()?).ok()?;
                let query: Vec<(String, String)> = url.query_pairs().into_owned().collect();
                let has = |k: &str| query.iter().any(|(q, _)| q == k);
                let stores = match r["method"].as_str()? {
                    "PUT" => !has("partNumber") && url.path().matches('/').count() > 1,
                    "POST" => has("uploadId"),
                    _ => false,
                };
                stores.then(|| url.path().trim_start_matches('/').to_string())
            })
            .collect()
    }
}

/// Download every object under `dest` into a folder, as a web server in front of the bucket
/// would serve them.
fn download(
    settings: &S3Settings,
    dest: &S3Url,
    to: &Path,
) -> Vec<(String, object_store::Attributes)> {
    let store = object_store::aws::AmazonS3Builder::new()
        .with_bucket_name(&dest.bucket)
        .with_region(&settings.region)
        .with_endpoint(settings.endpoint.as_ref().unwrap())
        .with_access_key_id(&settings.access_key_id)
        .with_secret_access_key(&settings.secret_access_key)
        .with_allow_http(true)
        .build()
        .unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let prefix = object_store::path::Path::from(dest.prefix.as_str());
        let listed: Vec<_> = store.list(Some(&prefix)).try_collect().await.unwrap();
        let mut out = Vec::new();
        for m in listed {
            let rel = m.location.as_ref()[dest.prefix.len() + 1..].to_string();
            let got = store.get(&m.location).await.unwrap();
            let attributes = got.attributes.clone();
            let bytes = got.bytes().await.unwrap();
            let path = to.join(&rel);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, &bytes).unwrap();
            out.push((rel, attributes));
        }
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out
    })
}

#[test]
fn s3_sync_stores_targets_then_metadata_and_the_timestamp_last_then_only_what_changed() {
    let Some(moto) = Moto::start("s3_sync_stores_targets_then_metadata") else {
        return;
    };
    let key = moto.set_up("fleet", false);
    let settings = moto.settings(&key);
    let dir = tempfile::tempdir().unwrap();
    let repo_dir = dir.path().join("repo");
    let mut repo = Repo::init(&repo_dir, false, t(0)).unwrap();
    // One target small, one above the part size (a multipart upload: 5 + 5 + 1 MiB).
    repo.publish(
        &bundle(dir.path(), "small.bundle", b"bundle v1.1.0"),
        meta("1.1.0", "stable"),
        t(1),
        false,
    )
    .unwrap();
    let big: Vec<u8> = (0..11 << 20).map(|i: u32| (i % 251) as u8).collect();
    repo.publish(
        &bundle(dir.path(), "big.bundle", &big),
        meta("1.2.0", "stable"),
        t(2),
        false,
    )
    .unwrap();
    let dest: S3Url = "s3://fleet/prod/repo".parse().unwrap();

    let mut progress: Vec<(String, u64, u64)> = Vec::new();
    let first = s3::to_s3(&repo_dir, &dest, &settings, &mut |p: Progress<'_>| {
        progress.push((p.path.into(), p.sent, p.total))
    })
    .unwrap();
    // The plan's order, and the server stored the objects in exactly that order: targets,
    // versioned metadata (1.root.json first), root.json, then timestamp.json.
    let plan: Vec<String> = sync::plan(&repo_dir)
        .unwrap()
        .into_iter()
        .map(|i| i.path)
        .collect();
    let stored = moto.stored();
    let expected: Vec<String> = plan
        .iter()
        .map(|p| format!("fleet/{}", dest.key(p)))
        .collect();
    assert_eq!(stored, expected);
    assert_eq!(first.copied, plan);
    assert_eq!(first.kept, 0);
    assert!(stored[0].contains("/targets/") && stored[1].contains("/targets/"));
    assert!(stored[2].ends_with("/metadata/1.root.json"), "{stored:?}");
    assert!(stored[stored.len() - 2].ends_with("/metadata/root.json"));
    assert!(stored.last().unwrap().ends_with("/metadata/timestamp.json"));
    // Progress: the big target part by part, then each object once stored.
    let big_path = plan
        .iter()
        .find(|p| p.ends_with("1.2.0.stable.bundle"))
        .unwrap();
    let parts: Vec<u64> = progress
        .iter()
        .filter(|(p, sent, total)| p == big_path && sent < total)
        .map(|(_, sent, _)| *sent)
        .collect();
    // Three parts (5, 5 and 1 MiB), finishing in any order: two lines before the last.
    assert_eq!(parts.len(), 2, "{parts:?}");
    assert!(parts[0] < parts[1], "{parts:?}");
    assert_eq!(
        progress.iter().filter(|(_, s, t)| s == t).count(),
        plan.len()
    );

    // Read back: the bucket holds a whole repository, byte for byte, that a device trusting
    // root 1 loads; only the mutable names are marked no-cache.
    let served = dir.path().join("served");
    let objects = download(&settings, &dest, &served);
    let names: Vec<&str> = objects.iter().map(|(n, _)| n.as_str()).collect();
    let mut sorted_plan: Vec<&str> = plan.iter().map(String::as_str).collect();
    sorted_plan.sort();
    assert_eq!(names, sorted_plan);
    for (name, attributes) in &objects {
        assert_eq!(
            std::fs::read(served.join(name)).unwrap(),
            std::fs::read(repo_dir.join(name)).unwrap(),
            "{name}"
        );
        let no_cache = attributes
            .get(&object_store::Attribute::CacheControl)
            .is_some_and(|v| v.as_ref() == "no-cache");
        assert_eq!(
            no_cache,
            name.ends_with("/root.json") || name.ends_with("/timestamp.json"),
            "{name}"
        );
    }
    let root1 = std::fs::read(repo_dir.join("metadata/1.root.json")).unwrap();
    let client = load(&served, &root1, false).unwrap();
    assert_eq!(client.all_targets().count(), 2);

    // Nothing changed: only root.json and timestamp.json go up again.
    let before = moto.stored().len();
    let second = s3::to_s3(&repo_dir, &dest, &settings, &mut |_| {}).unwrap();
    assert_eq!(
        second.copied,
        vec!["metadata/root.json", "metadata/timestamp.json"]
    );
    assert_eq!(second.kept, plan.len() - 2);
    assert_eq!(
        moto.stored()[before..],
        [
            format!("fleet/{}", dest.key("metadata/root.json")),
            format!("fleet/{}", dest.key("metadata/timestamp.json"))
        ]
    );

    // A halt: the new targets and snapshot before root.json, the timestamp last.
    repo.set_halted(&"1.1.0".parse().unwrap(), "stable", true, t(3), false)
        .unwrap();
    let third = s3::to_s3(&repo_dir, &dest, &settings, &mut |_| {}).unwrap();
    assert_eq!(
        third.copied,
        vec![
            "metadata/4.snapshot.json",
            "metadata/4.targets.json",
            "metadata/root.json",
            "metadata/timestamp.json"
        ]
    );
}

#[test]
fn s3_sync_errors_name_the_object_and_the_fix_and_store_nothing() {
    let Some(moto) = Moto::start("s3_sync_errors_name_the_object_and_the_fix") else {
        return;
    };
    let key = moto.set_up("fleet", true);
    let dir = tempfile::tempdir().unwrap();
    let repo_dir = dir.path().join("repo");
    Repo::init(&repo_dir, false, t(0)).unwrap();
    let dest: S3Url = "s3://fleet".parse().unwrap();
    let fails = |settings: &S3Settings, dest: &S3Url| -> String {
        format!(
            "{:#}",
            s3::to_s3(&repo_dir, dest, settings, &mut |_| {}).unwrap_err()
        )
    };

    let mut wrong_secret = moto.settings(&key);
    wrong_secret.secret_access_key = "not-the-secret".into();
    let e = fails(&wrong_secret, &dest);
    assert!(
        e.contains("listing s3://fleet:")
            && e.contains("SignatureDoesNotMatch")
            && e.contains("AWS_SECRET_ACCESS_KEY"),
        "{e}"
    );

    let mut unknown = moto.settings(&key);
    unknown.access_key_id = "AKIAUNKNOWNKEY000000".into();
    let e = fails(&unknown, &dest);
    assert!(
        e.contains("InvalidAccessKeyId")
            && e.contains("AKIAUNKNOWNKEY000000")
            && e.contains("AWS_ACCESS_KEY_ID"),
        "{e}"
    );

    let e = fails(
        &moto.settings(&key),
        &"s3://no-such-bucket".parse().unwrap(),
    );
    assert!(
        e.contains("the bucket no-such-bucket does not exist") && e.contains("NoSuchBucket"),
        "{e}"
    );

    // A port nobody listens on.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut unreachable = moto.settings(&key);
    unreachable.endpoint = Some(format!("http://127.0.0.1:{port}"));
    unreachable.retries = 0;
    let e = fails(&unreachable, &dest);
    assert!(
        e.contains(&format!(
            "cannot connect to the S3 endpoint http://127.0.0.1:{port}"
        )) && e.contains("AWS_ENDPOINT_URL"),
        "{e}"
    );
    assert!(moto.stored().is_empty(), "{:?}", moto.stored());

    // The right key stores the repository.
    let done = s3::to_s3(&repo_dir, &dest, &moto.settings(&key), &mut |_| {}).unwrap();
    assert_eq!(done.copied.last().unwrap(), "metadata/timestamp.json");
    assert_eq!(moto.stored().len(), done.copied.len());
}
