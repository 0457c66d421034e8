//! `repo sync`: copy a repository to the folder a web server serves, in the order that keeps
//! every reader consistent: targets first, then versioned metadata (roots, targets,
//! snapshots), and `timestamp.json` last, by a rename. A device polling during a sync sees
//! either the old timestamp (whose files are all still there) or the new one (whose files are
//! all already there). Files already present with the same length are kept (metadata files are
//! versioned and targets are named by hash, so a name never changes contents), except
//! `root.json` and `timestamp.json`, which are replaced.

use std::path::Path;

use anyhow::{Context, Result};

use crate::repo::{write_atomic, METADATA, TARGETS};

/// What a sync copied.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Synced {
    /// Files copied, in order.
    pub copied: Vec<String>,
    /// Files already there.
    pub kept: usize,
}

/// Copy the repository `repo` to the folder `dest` (made if missing). Keys and the
/// configuration are never copied.
pub fn to_dir(repo: &Path, dest: &Path) -> Result<Synced> {
    let mut out = Synced::default();
    let copy = |sub: &str, name: &str, always: bool, out: &mut Synced| -> Result<()> {
        let from = repo.join(sub).join(name);
        let to = dest.join(sub).join(name);
        let same = std::fs::metadata(&to)
            .ok()
            .zip(std::fs::metadata(&from).ok())
            .map(|(a, b)| a.len() == b.len())
            .unwrap_or(false);
        if same && !always {
            out.kept += 1;
            return Ok(());
        }
        let bytes = std::fs::read(&from).with_context(|| format!("reading {}", from.display()))?;
        write_atomic(&to, &bytes)?;
        out.copied.push(format!("{sub}/{name}"));
        Ok(())
    };
    let list = |sub: &str| -> Result<Vec<String>> {
        let dir = repo.join(sub);
        let mut names = Vec::new();
        for e in std::fs::read_dir(&dir).with_context(|| format!("reading {}", dir.display()))? {
            let e = e?;
            let name = e.file_name().to_string_lossy().into_owned();
            if e.file_type()?.is_file() && !name.starts_with('.') && !name.ends_with(".tmp") {
                names.push(name);
            }
        }
        names.sort();
        Ok(names)
    };
    for name in list(TARGETS)? {
        copy(TARGETS, &name, false, &mut out)?;
    }
    let metadata = list(METADATA)?;
    // Versioned files (N.root.json first, by version), then root.json, then the timestamp.
    let mut versioned: Vec<&String> = metadata
        .iter()
        .filter(|n| n.as_str() != "timestamp.json" && n.as_str() != "root.json")
        .collect();
    versioned.sort_by_key(|n| {
        let (v, rest) = n.split_once('.').unwrap_or(("0", n));
        (rest.to_string(), v.parse::<u64>().unwrap_or(0))
    });
    for name in versioned {
        copy(METADATA, name, false, &mut out)?;
    }
    if metadata.iter().any(|n| n == "root.json") {
        copy(METADATA, "root.json", true, &mut out)?;
    }
    copy(METADATA, "timestamp.json", true, &mut out)?;
    Ok(out)
}
