//! `repo sync`: copy a repository to where it is served, in the order that keeps every reader
//! consistent: targets first, then versioned metadata (roots, targets, snapshots), then
//! `root.json`, and `timestamp.json` last. A device polling during a sync sees either the old
//! timestamp (whose files are all still there) or the new one (whose files are all already
//! there). Files already present with the same length are kept (metadata files are versioned
//! and targets are named by hash, so a name never changes contents), except `root.json` and
//! `timestamp.json`, which are always replaced.
//!
//! [`plan`] is that order, once; [`to_dir`] follows it into a folder (the timestamp by a
//! rename) and [`crate::s3::to_s3`] into an S3 bucket.

use std::path::Path;

use anyhow::{Context, Result};

use crate::repo::{write_atomic, METADATA, TARGETS};

/// What a sync copied.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Synced {
    /// Files copied (or uploaded), in order, as paths relative to the repository
    /// (`targets/...`, `metadata/...`).
    pub copied: Vec<String>,
    /// Files already there.
    pub kept: usize,
}

/// One file of a sync, in the order it must arrive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Item {
    /// Its path relative to the repository: `targets/NAME` or `metadata/NAME`.
    pub path: String,
    /// Its length in bytes.
    pub len: u64,
    /// Copied even when the destination holds a file of the same length (`root.json` and
    /// `timestamp.json`, the only names whose contents change).
    pub always: bool,
}

/// The files to sync, in the order they must arrive: every target, the versioned metadata
/// (each role's files by version, `N.root.json` first), `root.json`, then `timestamp.json`.
/// Keys and the configuration are never part of it.
pub fn plan(repo: &Path) -> Result<Vec<Item>> {
    let list = |sub: &str| -> Result<Vec<(String, u64)>> {
        let dir = repo.join(sub);
        let mut names = Vec::new();
        for e in std::fs::read_dir(&dir).with_context(|| format!("reading {}", dir.display()))? {
            let e = e?;
            let name = e.file_name().to_string_lossy().into_owned();
            if e.file_type()?.is_file() && !name.starts_with('.') && !name.ends_with(".tmp") {
                names.push((name, e.metadata()?.len()));
            }
        }
        names.sort();
        Ok(names)
    };
    let item = |sub: &str, (name, len): &(String, u64), always: bool| Item {
        path: format!("{sub}/{name}"),
        len: *len,
        always,
    };
    let mut out: Vec<Item> = list(TARGETS)?
        .iter()
        .map(|f| item(TARGETS, f, false))
        .collect();
    let metadata = list(METADATA)?;
    let is = |f: &(String, u64), name: &str| f.0 == name;
    // Versioned files (N.root.json first, by version), then root.json, then the timestamp.
    let mut versioned: Vec<&(String, u64)> = metadata
        .iter()
        .filter(|f| !is(f, "timestamp.json") && !is(f, "root.json"))
        .collect();
    versioned.sort_by_key(|(n, _)| {
        let (v, rest) = n.split_once('.').unwrap_or(("0", n));
        (rest.to_string(), v.parse::<u64>().unwrap_or(0))
    });
    out.extend(versioned.into_iter().map(|f| item(METADATA, f, false)));
    if let Some(root) = metadata.iter().find(|f| is(f, "root.json")) {
        out.push(item(METADATA, root, true));
    }
    let timestamp = metadata
        .iter()
        .find(|f| is(f, "timestamp.json"))
        .with_context(|| format!("{} holds no timestamp.json", repo.join(METADATA).display()))?;
    out.push(item(METADATA, timestamp, true));
    Ok(out)
}

/// Copy the repository `repo` to the folder `dest` (made if missing). Keys and the
/// configuration are never copied.
pub fn to_dir(repo: &Path, dest: &Path) -> Result<Synced> {
    let mut out = Synced::default();
    for item in plan(repo)? {
        let from = repo.join(&item.path);
        let to = dest.join(&item.path);
        let same = std::fs::metadata(&to).is_ok_and(|m| m.len() == item.len);
        if same && !item.always {
            out.kept += 1;
            continue;
        }
        let bytes = std::fs::read(&from).with_context(|| format!("reading {}", from.display()))?;
        write_atomic(&to, &bytes)?;
        out.copied.push(item.path);
    }
    Ok(out)
}
