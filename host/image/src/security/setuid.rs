//! Setuid and setgid files: none but the recipe's `setuid_allowlist`.
//!
//! Debian's base ships a dozen (su, passwd, mount, chfn, unix_chkpwd, ...) that an appliance
//! without logins has no use for; each is re-added to the build's layer with the bits cleared
//! (in the ostree layer model a file's mode changes only by committing the file again). A
//! setuid file that this build's own layer brings (an overlay, a program) is refused instead:
//! someone asked for it, so the build says how to allow it rather than quietly undo it.
//!
//! [`walk`] visits every entry of a commit with its owner and mode; the audit uses it too.

use std::collections::{BTreeSet, HashMap};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

use super::SecurityError;
use crate::rootfs::layer::Layer;
use crate::store::{FileMeta, Node, Store};

/// setuid and setgid bits.
pub const SETID_BITS: u32 = 0o6000;

/// What an entry of a commit is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kind {
    /// A directory.
    Dir,
    /// A regular file with its content object checksum.
    File(String),
    /// A symlink and its target.
    Symlink(String),
}

/// One entry of a commit, as [`walk`] reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// Absolute image path (`/usr/bin/su`).
    pub path: String,
    /// Type.
    pub kind: Kind,
    /// Permission bits (`mode & 0o7777`).
    pub mode: u32,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
}

/// Visit every entry below the directory node `root` (the root itself excluded), parents
/// before children, in name order.
pub fn walk(store: &Store, root: &Node, visit: &mut dyn FnMut(&Entry) -> Result<()>) -> Result<()> {
    let mut metas: HashMap<String, FileMeta> = HashMap::new();
    let mut stack: Vec<(String, Node)> = vec![(String::new(), root.clone())];
    while let Some((dir, node)) = stack.pop() {
        let Node::Dir { contents, .. } = node else {
            continue;
        };
        let mut subdirs = Vec::new();
        for (name, child) in store.list(&contents)? {
            let path = format!("{dir}/{name}");
            match &child {
                Node::Dir { meta, .. } => {
                    let (uid, gid, mode) = store.dir_meta(meta)?;
                    visit(&Entry {
                        path: path.clone(),
                        kind: Kind::Dir,
                        mode: mode & 0o7777,
                        uid,
                        gid,
                    })?;
                    subdirs.push((path, child.clone()));
                }
                Node::File(ck) => {
                    let m = match metas.get(ck) {
                        Some(m) => m.clone(),
                        None => {
                            let m = store
                                .file_meta(ck)
                                .with_context(|| format!("reading the metadata of {path}"))?;
                            metas.insert(ck.clone(), m.clone());
                            m
                        }
                    };
                    let kind = match &m.symlink {
                        Some(t) => Kind::Symlink(t.clone()),
                        None => Kind::File(ck.clone()),
                    };
                    visit(&Entry {
                        path,
                        kind,
                        mode: m.mode & 0o7777,
                        uid: m.uid,
                        gid: m.gid,
                    })?;
                }
            }
        }
        // Depth first, names in order: push in reverse.
        stack.extend(subdirs.into_iter().rev());
    }
    Ok(())
}

/// Canonical image paths (no leading slash) of the allowlist, resolved the way the image
/// resolves them (`/bin/su` is `/usr/bin/su` in merged /usr).
fn allowed(layer: &Layer<'_>, allowlist: &[String]) -> Result<BTreeSet<PathBuf>> {
    let mut out = BTreeSet::new();
    for a in allowlist {
        let rel = Path::new(a.trim_start_matches('/'));
        out.insert(layer.canonical(rel)?);
        if let Some(found) = layer.view().lookup(rel, true)? {
            out.insert(found.path);
        }
    }
    Ok(out)
}

/// Refuse setuid files the layer brings, and clear the bits of the base's that the allowlist
/// does not name. Returns (cleared, kept) image paths.
pub fn enforce(layer: &Layer<'_>, allowlist: &[String]) -> Result<(Vec<String>, Vec<String>)> {
    let allowed = allowed(layer, allowlist)?;
    let mut kept = Vec::new();
    // The layer's own files first: an overlay's setuid file is a request, refused unless allowed.
    let mut layer_files = Vec::new();
    collect_layer(layer.dir(), Path::new(""), &mut layer_files)?;
    for (rel, mode) in &layer_files {
        if mode & SETID_BITS != 0 {
            if allowed.contains(rel) {
                kept.push(format!("/{}", rel.display()));
            } else {
                return Err(SecurityError::SetuidNotAllowed {
                    path: rel.display().to_string(),
                    mode: mode & 0o7777,
                }
                .into());
            }
        }
    }
    let in_layer: BTreeSet<&PathBuf> = layer_files.iter().map(|(p, _)| p).collect();

    let view = layer.view();
    let store = view.store();
    let Some(root) = view.lookup(Path::new(""), false)? else {
        return Ok((Vec::new(), kept));
    };
    let mut found = Vec::new();
    walk(store, &root.node, &mut |e| {
        if let Kind::File(ck) = &e.kind {
            if e.mode & SETID_BITS != 0 {
                found.push((e.clone(), ck.clone()));
            }
        }
        Ok(())
    })?;
    let mut cleared = Vec::new();
    for (e, ck) in found {
        let rel = PathBuf::from(e.path.trim_start_matches('/'));
        if in_layer.contains(&rel) {
            continue; // replaced by the layer, judged above
        }
        if allowed.contains(&rel) {
            kept.push(e.path);
            continue;
        }
        let data = store
            .read_file(&ck, u64::MAX)
            .with_context(|| format!("reading {} from the base", e.path))?;
        layer.write_owned(&rel, &data, e.mode & !SETID_BITS, e.uid, e.gid)?;
        cleared.push(e.path);
    }
    Ok((cleared, kept))
}

/// Regular files of the layer directory with their permission bits.
fn collect_layer(root: &Path, rel: &Path, out: &mut Vec<(PathBuf, u32)>) -> Result<()> {
    let dir = root.join(rel);
    let mut names: Vec<_> = std::fs::read_dir(&dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .map(|e| e.map(|e| e.file_name()))
        .collect::<std::io::Result<_>>()?;
    names.sort();
    for n in names {
        let child = rel.join(&n);
        let md = root.join(&child).symlink_metadata()?;
        if md.is_dir() {
            collect_layer(root, &child, out)?;
        } else if md.is_file() {
            out.push((child, md.mode() & 0o7777));
        }
    }
    Ok(())
}
