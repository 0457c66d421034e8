//! The client under test of the TUF conformance suite
//! (github.com/theupdateframework/tuf-conformance, `CLIENT-CLI.md`), behind the
//! `aperture-tuf-client` program: `init`, `refresh` and `download` over a metadata folder the
//! suite inspects, with the appliance's own client code: [`crate::refresh`] (tough's workflow
//! and our corrections to it), [`crate::transport`] and [`crate::target`].
//!
//! ## The metadata folder `M`
//! The suite reads every `*.json` at the top of `M` as metadata the client trusts, and wants
//! the bytes the repository served (`test_metadata_bytes_match`). So `M` holds exactly
//! `root.json`, `timestamp.json`, `snapshot.json`, `targets.json` and one `QUOTED-ROLE.json`
//! per delegated role, each byte-identical to what was served, never tough's re-serialization.
//! Our own state lives in `M/.aperture/`, which the suite ignores:
//! * `datastore/`: tough's datastore, made afresh for each run and seeded with `M`'s
//!   timestamp and snapshot (what tough reads for its rollback checks). tough writes its own
//!   serializations there, and `latest_known_time.json`, which must not outlive a run: the
//!   suite starts each `faketime` run at the same instant, so the clock "goes back".
//! * `cache/`: the transport's cache of versioned metadata, as on the appliance, so that an
//!   unchanged repository costs the root probe and the timestamp.
//!
//! After each load, whether it succeeded or not, every role tough wrote to the datastore is
//! copied into `M` from the bytes tough was served ([`refresh::Served`]), and a role it
//! removed (the timestamp and snapshot after their keys rotated, spec 5.3.11) is removed from
//! `M`. tough persists each role as soon as it is verified, so after a failure `M` holds what
//! was verified before it, as the suite expects.
//!
//! ## The target folder
//! A target is stored flat under its percent-encoded name ([`quote`]: `a%2Fb.txt`, as
//! python-tuf names it): no folders to make, nothing a name can climb out of. It is written to
//! `NAME.tmp`, checked as it is written (length and sha256, [`crate::target::Checked`]) and
//! renamed over `NAME`; the temporary file is removed on failure. A target already there with
//! the signed length and sha256 is not fetched again.

use std::collections::BTreeMap;
use std::io;
use std::path::{Path, PathBuf};

use aperture_updater::source::FetchOptions;
use tough::{Repository, TargetName};
use url::{Host, Url};

use crate::refresh::{self, chain, Served, Source, TargetFile};
use crate::target::{self, Checked};
use crate::transport::Transport;

/// The folder in `M` that holds this client's own state.
pub const STATE_DIR: &str = ".aperture";

/// The files of the datastore that are seeded from `M` (tough reads them for its rollback
/// checks, 5.4.3 and 5.5.5) and that tough may remove (5.3.11).
const SEEDED: [&str; 2] = ["timestamp.json", "snapshot.json"];

/// The top-level roles' files in `M`.
const TOP_LEVEL: [&str; 4] = [
    "root.json",
    "timestamp.json",
    "snapshot.json",
    "targets.json",
];

/// `init`: trust `trusted_root` (copied to `M/root.json` as it is; it is verified by the first
/// refresh). No request is made.
pub fn init(metadata_dir: &Path, trusted_root: &Path) -> Result<(), String> {
    let bytes = std::fs::read(trusted_root)
        .map_err(|e| format!("reading the trusted root {}: {e}", trusted_root.display()))?;
    std::fs::create_dir_all(metadata_dir).map_err(|e| {
        format!(
            "creating the metadata folder {}: {e}",
            metadata_dir.display()
        )
    })?;
    let dest = metadata_dir.join("root.json");
    aperture_sys::fs::write_atomic(&dest, &bytes, 0o644).map_err(|e| chain(&e))?;
    tracing::info!(
        "trusting the root {} (copied to {})",
        trusted_root.display(),
        dest.display()
    );
    Ok(())
}

/// A client over the metadata folder `M` and a repository.
pub struct Client {
    metadata_dir: PathBuf,
    source: Source,
    transport: Transport,
    fetch: FetchOptions,
    rt: tokio::runtime::Runtime,
}

impl Client {
    /// A client trusting what `metadata_dir` holds (after [`init`]), reading metadata below
    /// `metadata_url` and targets below `targets_url` (by default `../targets/` beside the
    /// metadata). URLs are `https://`, `file://`, or plain `http://` to this machine only
    /// (127.0.0.1, ::1, localhost: where the suite serves its repositories; every byte is
    /// still checked against the signed metadata, but elsewhere anyone on the path could
    /// withhold or replay updates).
    pub fn new(
        metadata_dir: &Path,
        metadata_url: &Url,
        targets_url: Option<&Url>,
    ) -> Result<Client, String> {
        let metadata = as_folder(metadata_url);
        let targets = match targets_url {
            Some(u) => as_folder(u),
            None => metadata
                .join("../targets/")
                .map_err(|e| format!("metadata URL {metadata}: {e}"))?,
        };
        let mut insecure_http = false;
        for url in [&metadata, &targets] {
            match url.scheme() {
                "https" | "file" => {}
                "http" if is_loopback(url) => insecure_http = true,
                _ => {
                    return Err(format!(
                        "refusing {url}: use https:// or file:// (plain http:// is accepted \
                         only from this machine, 127.0.0.1, ::1 or localhost, where the \
                         conformance suite serves its repositories)"
                    ))
                }
            }
        }
        let state = metadata_dir.join(STATE_DIR);
        let mut fetch = FetchOptions::new(aperture_appliance::Files::default().ca_bundle());
        fetch.insecure_http = insecure_http;
        // One request per file: the suite counts them, and a retry would repeat a 404.
        fetch.retries = 0;
        let cache = Some(state.join("cache"));
        let transport = if metadata.scheme() == "file" {
            Transport::files_only(cache)
        } else {
            Transport::new(&fetch, cache)?
        };
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .map_err(|e| format!("starting the async runtime: {e}"))?;
        Ok(Client {
            metadata_dir: metadata_dir.to_path_buf(),
            source: Source {
                metadata,
                targets,
                shipped_root: metadata_dir.join("root.json"),
                datastore: state.join("datastore"),
            },
            transport,
            fetch,
            rt,
        })
    }

    /// `refresh`: the TUF client workflow for the top-level roles (and, as tough loads them
    /// with the targets role, the delegated roles the snapshot lists), `M` updated with what
    /// was verified, whether the refresh succeeded or not.
    pub fn refresh(&self) -> Result<Repository, String> {
        let seeds = self.seed_datastore()?;
        let (loaded, served) = refresh::load(&self.rt, &self.source, &self.transport);
        let mirrored = self.mirror(&seeds, &served);
        let repo = loaded.map_err(|e| e.to_string())?;
        mirrored?;
        let v = |n: std::num::NonZeroU64| n.get();
        tracing::info!(
            "refreshed {}: root v{}, timestamp v{}, snapshot v{}, targets v{}",
            self.source.metadata,
            v(repo.root().signed.version),
            v(repo.timestamp().signed.version),
            v(repo.snapshot().signed.version),
            v(repo.targets().signed.version)
        );
        Ok(repo)
    }

    /// `download`: a refresh, then each of `names` in order into `target_dir`, stopping at the
    /// first that fails (one not in the repository fails).
    pub fn download(&self, names: &[String], target_dir: &Path) -> Result<(), String> {
        let repo = self.refresh()?;
        let consistent = repo.root().signed.consistent_snapshot;
        for name in names {
            let tn = TargetName::new(name.as_str())
                .map_err(|e| format!("target name {name:?} refused: {e}"))?;
            // Pre-order, depth first, each role once, stopping at a terminating one (5.6.7).
            let found = repo.targets().signed.find_target(&tn, false).map_err(|_| {
                format!(
                    "target {name} is not in the repository: neither the targets role nor a \
                     role it delegates to lists it"
                )
            })?;
            let file = refresh::target_file(&self.source.targets, consistent, &tn, found)?;
            let dest = target_dir.join(quote(name));
            if holds(&dest, &file) {
                tracing::info!("target {name}: {} already holds it", dest.display());
                continue;
            }
            store(&file, &self.fetch, &dest)?;
            tracing::info!(
                "target {name}: {} bytes from {} stored as {}",
                file.length,
                file.url,
                dest.display()
            );
        }
        Ok(())
    }

    /// Make tough's datastore afresh, seeded from `M`; returns the seeds.
    fn seed_datastore(&self) -> Result<BTreeMap<&'static str, Vec<u8>>, String> {
        let ds = &self.source.datastore;
        match std::fs::remove_dir_all(ds) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(format!("clearing the datastore {}: {e}", ds.display())),
        }
        std::fs::create_dir_all(ds)
            .map_err(|e| format!("creating the datastore {}: {e}", ds.display()))?;
        let mut seeds = BTreeMap::new();
        for name in SEEDED {
            let from = self.metadata_dir.join(name);
            if let Some(bytes) = aperture_sys::fs::read_optional(&from).map_err(|e| chain(&e))? {
                let to = ds.join(name);
                std::fs::write(&to, &bytes)
                    .map_err(|e| format!("seeding the datastore {}: {e}", to.display()))?;
                seeds.insert(name, bytes);
            }
        }
        Ok(seeds)
    }

    /// Copy into `M` the served bytes of every role tough wrote to the datastore; remove from
    /// `M` the seeded roles tough removed.
    fn mirror(&self, seeds: &BTreeMap<&str, Vec<u8>>, served: &Served) -> Result<(), String> {
        let ds = &self.source.datastore;
        // tough writes the root first: without it, it stopped before touching anything.
        let Some(root) = aperture_sys::fs::read_optional(&ds.join("root.json"))
            .map_err(|e| chain(&e))?
            .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
        else {
            return Ok(());
        };
        let consistent = root["signed"]["consistent_snapshot"]
            .as_bool()
            .unwrap_or(false);
        for name in seeds.keys() {
            if !ds.join(name).exists() {
                let path = self.metadata_dir.join(name);
                aperture_sys::fs::remove_durable(&path).map_err(|e| chain(&e))?;
                tracing::info!("{name}: no longer trusted (its keys rotated), removed");
            }
        }
        let entries = std::fs::read_dir(ds)
            .map_err(|e| format!("listing the datastore {}: {e}", ds.display()))?;
        for entry in entries {
            let entry =
                entry.map_err(|e| format!("listing the datastore {}: {e}", ds.display()))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if !name.ends_with(".json") || name == "latest_known_time.json" {
                continue;
            }
            let bytes = std::fs::read(entry.path())
                .map_err(|e| format!("reading {}: {e}", entry.path().display()))?;
            if seeds.get(name.as_str()) == Some(&bytes) {
                continue;
            }
            let Some(version) = version_of(&bytes) else {
                continue;
            };
            let Some((url_name, m_name)) = names(&name, version, consistent) else {
                continue;
            };
            // tough rewrites what it was given as well (the root it started from, the trusted
            // timestamp kept): then nothing was served under that name, or the same bytes.
            let Some(raw) = served.get(&url_name) else {
                continue;
            };
            if version_of(raw) != Some(version) {
                tracing::warn!("{url_name} as served is not version {version}; not copied");
                continue;
            }
            let dest = self.metadata_dir.join(&m_name);
            if aperture_sys::fs::read_optional(&dest)
                .ok()
                .flatten()
                .as_ref()
                == Some(raw)
            {
                continue;
            }
            aperture_sys::fs::write_atomic(&dest, raw, 0o644).map_err(|e| chain(&e))?;
            tracing::info!("{m_name}: version {version} trusted");
        }
        Ok(())
    }
}

/// The URL a datastore file `name` (holding `version`) was fetched from, by its last segment,
/// and its name in `M`; `None` for a file that is not a role's.
fn names(name: &str, version: u64, consistent: bool) -> Option<(String, String)> {
    let versioned = |n: &str| {
        if consistent {
            format!("{version}.{n}")
        } else {
            n.to_string()
        }
    };
    match name {
        // Root is always fetched by version (5.3.3), the timestamp never (5.4.1).
        "root.json" => Some((format!("{version}.root.json"), name.into())),
        "timestamp.json" => Some((name.into(), name.into())),
        "snapshot.json" | "targets.json" => Some((versioned(name), name.into())),
        // A delegated role: tough names it as it fetched it, `VERSION.QUOTED.json`.
        _ => {
            let m_name = if consistent {
                name.strip_prefix(&format!("{version}."))?
            } else {
                name
            };
            if TOP_LEVEL.contains(&m_name) {
                tracing::warn!("a delegated role named like a top-level role ({name}); not copied");
                return None;
            }
            Some((name.into(), m_name.into()))
        }
    }
}

fn version_of(bytes: &[u8]) -> Option<u64> {
    let v: serde_json::Value = serde_json::from_slice(bytes).ok()?;
    v.get("signed")?.get("version")?.as_u64()
}

/// `url` with a trailing slash, so that names join below it.
fn as_folder(url: &Url) -> Url {
    let mut u = url.clone();
    if !u.path().ends_with('/') {
        u.set_path(&format!("{}/", url.path()));
    }
    u
}

fn is_loopback(url: &Url) -> bool {
    match url.host() {
        Some(Host::Ipv4(a)) => a.is_loopback(),
        Some(Host::Ipv6(a)) => a.is_loopback(),
        Some(Host::Domain(d)) => d == "localhost",
        None => false,
    }
}

/// A target name as one file name: every byte but ASCII letters, digits and `_.-~`
/// percent-encoded (Python's `urllib.parse.quote(name, "")`, which python-tuf uses, and
/// tough's encoding of role names); `.` and `..` in full.
pub fn quote(name: &str) -> String {
    if name == "." || name == ".." {
        return name.replace('.', "%2E");
    }
    let mut out = String::with_capacity(name.len());
    for b in name.bytes() {
        if b.is_ascii_alphanumeric() || b"_.-~".contains(&b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Whether `dest` already holds `file` (its signed length and sha256).
fn holds(dest: &Path, file: &TargetFile) -> bool {
    let Ok(f) = std::fs::File::open(dest) else {
        return false;
    };
    if f.metadata().map(|m| m.len()).ok() != Some(file.length) {
        return false;
    }
    io::copy(&mut Checked::new(f, file), &mut io::sink()).is_ok()
}

/// Fetch `file` into `dest` through `dest.tmp`, checked, renamed into place; the temporary
/// file removed on failure.
fn store(file: &TargetFile, fetch: &FetchOptions, dest: &Path) -> Result<(), String> {
    let tmp = aperture_sys::fs::tmp_path(dest);
    let written = write_checked(file, fetch, &tmp)
        .and_then(|()| aperture_sys::fs::rename_durable(&tmp, dest).map_err(|e| chain(&e)));
    if written.is_err() {
        if let Err(e) = std::fs::remove_file(&tmp) {
            if e.kind() != io::ErrorKind::NotFound {
                tracing::warn!("removing {}: {e}", tmp.display());
            }
        }
    }
    written
}

fn write_checked(file: &TargetFile, fetch: &FetchOptions, tmp: &Path) -> Result<(), String> {
    let mut reader = Checked::new(target::open(file, fetch)?, file);
    let mut out =
        std::fs::File::create(tmp).map_err(|e| format!("creating {}: {e}", tmp.display()))?;
    io::copy(&mut reader, &mut out).map_err(|e| format!("fetching {}: {e}", file.url))?;
    out.sync_all()
        .map_err(|e| format!("writing {}: {e}", tmp.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn target_names_become_one_file_name() {
        assert_eq!(
            quote("path/to/a/target_file.txt"),
            "path%2Fto%2Fa%2Ftarget_file.txt"
        );
        assert_eq!(quote("../x y"), "..%2Fx%20y");
        assert_eq!(quote(".."), "%2E%2E");
        assert_eq!(quote("ö~"), "%C3%B6~");
    }

    #[test]
    fn datastore_files_map_to_the_url_they_came_from_and_their_name_here() {
        let n = |name, version, consistent| names(name, version, consistent);
        let pair = |a: &str, b: &str| Some((a.to_string(), b.to_string()));
        assert_eq!(n("root.json", 3, true), pair("3.root.json", "root.json"));
        assert_eq!(
            n("timestamp.json", 7, true),
            pair("timestamp.json", "timestamp.json")
        );
        assert_eq!(
            n("snapshot.json", 2, true),
            pair("2.snapshot.json", "snapshot.json")
        );
        assert_eq!(
            n("targets.json", 2, false),
            pair("targets.json", "targets.json")
        );
        assert_eq!(n("1.%3F.json", 1, true), pair("1.%3F.json", "%3F.json"));
        assert_eq!(n("1.2.x.json", 1, true), pair("1.2.x.json", "2.x.json"));
        assert_eq!(n("2.x.json", 1, true), None);
        assert_eq!(n("1.root.json", 1, true), None);
    }
}
