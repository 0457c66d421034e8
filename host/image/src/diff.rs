//! What an update between two builds changes: every added, removed and modified path.
//!
//! Directories whose tree and metadata checksums match are skipped whole, so comparing two
//! builds that share a base costs a walk of what differs, not of the rootfs.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use anyhow::{bail, Result};
use serde::Serialize;

use crate::store::{Node, Store};

/// How a path changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Change {
    /// Only in the newer build.
    Added,
    /// Only in the older build.
    Removed,
    /// In both, with different content, mode, owner or xattrs.
    Modified,
}

impl Change {
    /// One-letter code, as `ostree diff` prints.
    pub fn letter(self) -> char {
        match self {
            Change::Added => 'A',
            Change::Removed => 'D',
            Change::Modified => 'M',
        }
    }
}

/// One changed path.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct Changed {
    /// Absolute path in the image; directories end with `/`.
    pub path: String,
    /// How it changed.
    pub change: Change,
}

/// Resolve a ref, a version (matched against `*/*/<version>` refs) or a checksum.
pub fn resolve_build(store: &Store, spec: &str) -> Result<String> {
    if let Some(c) = store.resolve(spec)? {
        return Ok(c);
    }
    let refs = store.refs()?;
    let matches: Vec<(&String, &String)> = refs
        .iter()
        .filter(|(r, _)| !r.starts_with("aperture-base/") && r.rsplit('/').next() == Some(spec))
        .collect();
    match matches.as_slice() {
        [(_, c)] => Ok((*c).clone()),
        [] => {
            let known: Vec<&str> = refs
                .keys()
                .filter(|r| !r.starts_with("aperture-base/"))
                .map(String::as_str)
                .collect();
            bail!(
                "no build `{spec}` in the store {}; builds there: {}",
                store.path().display(),
                if known.is_empty() {
                    "none".to_string()
                } else {
                    known.join(", ")
                }
            )
        }
        many => bail!(
            "version `{spec}` matches several builds ({}); name the ref instead",
            many.iter()
                .map(|(r, _)| r.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

/// Compare two commits.
pub fn diff(store: &Store, from: &str, to: &str) -> Result<Vec<Changed>> {
    let mut out = BTreeSet::new();
    walk(
        store,
        Path::new("/"),
        Some(&store.root(from)?),
        Some(&store.root(to)?),
        &mut out,
    )?;
    Ok(out.into_iter().collect())
}

fn dir_path(p: &Path) -> String {
    let s = p.to_string_lossy();
    if s.ends_with('/') {
        s.into_owned()
    } else {
        format!("{s}/")
    }
}

fn walk(
    store: &Store,
    at: &Path,
    a: Option<&Node>,
    b: Option<&Node>,
    out: &mut BTreeSet<Changed>,
) -> Result<()> {
    match (a, b) {
        (Some(x), Some(y)) if x == y => Ok(()),
        (
            Some(Node::Dir {
                contents: ca,
                meta: ma,
            }),
            Some(Node::Dir {
                contents: cb,
                meta: mb,
            }),
        ) => {
            if ma != mb && at != Path::new("/") {
                out.insert(Changed {
                    path: dir_path(at),
                    change: Change::Modified,
                });
            }
            if ca == cb {
                return Ok(());
            }
            let ea = store.list(ca)?;
            let eb = store.list(cb)?;
            let names: BTreeSet<&String> = ea.keys().chain(eb.keys()).collect();
            for n in names {
                walk(store, &at.join(n), ea.get(n), eb.get(n), out)?;
            }
            Ok(())
        }
        (Some(Node::File(_)), Some(Node::File(_))) => {
            out.insert(Changed {
                path: at.to_string_lossy().into_owned(),
                change: Change::Modified,
            });
            Ok(())
        }
        (Some(x), Some(y)) => {
            // A file became a directory or back: the old one went, the new one came.
            walk(store, at, Some(x), None, out)?;
            walk(store, at, None, Some(y), out)
        }
        (Some(x), None) => everything(store, at, x, Change::Removed, out),
        (None, Some(y)) => everything(store, at, y, Change::Added, out),
        (None, None) => Ok(()),
    }
}

/// List a node and, for a directory, everything below it.
fn everything(
    store: &Store,
    at: &Path,
    node: &Node,
    change: Change,
    out: &mut BTreeSet<Changed>,
) -> Result<()> {
    match node {
        Node::File(_) => {
            out.insert(Changed {
                path: at.to_string_lossy().into_owned(),
                change,
            });
        }
        Node::Dir { contents, .. } => {
            out.insert(Changed {
                path: dir_path(at),
                change,
            });
            for (n, child) in store.list(contents)? {
                everything(store, &at.join(n), &child, change, out)?;
            }
        }
    }
    Ok(())
}

/// Paths of the changed files and symlinks (not directories), for tests and summaries.
pub fn file_paths(changes: &[Changed]) -> BTreeSet<PathBuf> {
    changes
        .iter()
        .filter(|c| !c.path.ends_with('/'))
        .map(|c| PathBuf::from(&c.path))
        .collect()
}
