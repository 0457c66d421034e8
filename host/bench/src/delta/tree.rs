//! The ideal delta's file list: two mounted slot trees compared entry by entry. An entry of the
//! new tree goes into the list when the old tree lacks it, or when its type, mode, owner,
//! device number, content, symlink target or extended attributes differ. Directories are
//! compared by their metadata only (their size follows their entries). Removed entries are
//! counted but not listed: a real delta names them in a few bytes.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::{self, Read};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

/// What the metadata of one entry says, without following symlinks.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Entry {
    /// File, folder, symlink, ...
    kind: fs::FileType,
    /// `st_mode`: the type and permission bits.
    mode: u32,
    /// Owner.
    uid: u32,
    /// Group.
    gid: u32,
    /// Device number (device nodes).
    rdev: u64,
    /// Length of a file or symlink target; 0 for a folder.
    size: u64,
}

impl Entry {
    fn is_file(&self) -> bool {
        self.kind.is_file()
    }
}

/// How the new tree differs from the old.
#[derive(Debug, Default)]
pub(crate) struct TreeDiff {
    /// Entries only in the new tree.
    pub added: Vec<PathBuf>,
    /// Entries in both trees that differ.
    pub changed: Vec<PathBuf>,
    /// How many entries only the old tree has.
    pub removed: usize,
    /// Bytes of file content among the added and changed entries.
    pub file_bytes: u64,
    /// How many of the added and changed entries are regular files.
    pub files: usize,
}

impl TreeDiff {
    /// The added and changed entries, sorted component by component (a folder before what
    /// it holds), relative to the tree's root.
    pub fn paths(&self) -> Vec<&Path> {
        let mut v: Vec<&Path> = self
            .added
            .iter()
            .chain(&self.changed)
            .map(PathBuf::as_path)
            .collect();
        v.sort();
        v
    }
}

/// Every entry below `root` (not `root` itself), by path relative to it. Symlinks are not
/// followed, so every path it returns is reached through real folders of this tree.
fn walk(root: &Path) -> Result<BTreeMap<PathBuf, Entry>> {
    let mut out = BTreeMap::new();
    let mut stack = vec![PathBuf::new()];
    while let Some(rel) = stack.pop() {
        let dir = root.join(&rel);
        for e in fs::read_dir(&dir).with_context(|| format!("listing {}", dir.display()))? {
            let e = e.with_context(|| format!("listing {}", dir.display()))?;
            let path = rel.join(e.file_name());
            // DirEntry::metadata does not follow symlinks.
            let m = e
                .metadata()
                .with_context(|| format!("reading {}", e.path().display()))?;
            let kind = m.file_type();
            if kind.is_dir() {
                stack.push(path.clone());
            }
            out.insert(
                path,
                Entry {
                    kind,
                    mode: m.mode(),
                    uid: m.uid(),
                    gid: m.gid(),
                    rdev: m.rdev(),
                    size: if kind.is_dir() { 0 } else { m.len() },
                },
            );
        }
    }
    Ok(out)
}

/// Compare the trees mounted at `old` and `new`.
pub(crate) fn diff(old: &Path, new: &Path) -> Result<TreeDiff> {
    let before = walk(old)?;
    let after = walk(new)?;
    let mut bufs = (vec![0u8; 1 << 20], vec![0u8; 1 << 20]);
    let mut d = TreeDiff::default();
    for (rel, n) in &after {
        let differs = match before.get(rel) {
            None => {
                d.added.push(rel.clone());
                true
            }
            Some(o) if !same(&old.join(rel), &new.join(rel), o, n, &mut bufs)? => {
                d.changed.push(rel.clone());
                true
            }
            Some(_) => false,
        };
        if differs && n.is_file() {
            d.files += 1;
            d.file_bytes += n.size;
        }
    }
    d.removed = before.keys().filter(|k| !after.contains_key(*k)).count();
    Ok(d)
}

/// Whether the entries `a` (at `pa`) and `b` (at `pb`) are the same: metadata, then content or
/// symlink target, then extended attributes.
fn same(pa: &Path, pb: &Path, a: &Entry, b: &Entry, bufs: &mut (Vec<u8>, Vec<u8>)) -> Result<bool> {
    if a != b {
        return Ok(false);
    }
    if a.kind.is_file() && !same_content(pa, pb, bufs)? {
        return Ok(false);
    }
    if a.kind.is_symlink() {
        let target =
            |p: &Path| fs::read_link(p).with_context(|| format!("reading {}", p.display()));
        if target(pa)? != target(pb)? {
            return Ok(false);
        }
    }
    Ok(xattrs(pa)? == xattrs(pb)?)
}

/// Whether two files of the same length hold the same bytes.
fn same_content(pa: &Path, pb: &Path, (ba, bb): &mut (Vec<u8>, Vec<u8>)) -> Result<bool> {
    let open = |p: &Path| File::open(p).with_context(|| format!("opening {}", p.display()));
    let (mut fa, mut fb) = (open(pa)?, open(pb)?);
    loop {
        let na = fill(&mut fa, ba).with_context(|| format!("reading {}", pa.display()))?;
        let nb = fill(&mut fb, bb).with_context(|| format!("reading {}", pb.display()))?;
        if na != nb || ba[..na] != bb[..nb] {
            return Ok(false);
        }
        if na < ba.len() {
            return Ok(true);
        }
    }
}

/// Read until `buf` is full or the file ends; the bytes read.
fn fill(f: &mut File, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match f.read(&mut buf[n..])? {
            0 => break,
            k => n += k,
        }
    }
    Ok(n)
}

/// The extended attributes of `path` (a symlink's own), sorted by name; none where the
/// filesystem keeps none.
fn xattrs(path: &Path) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
    use rustix::io::Errno;
    let ctx = || format!("reading the extended attributes of {}", path.display());
    let len = match rustix::fs::llistxattr(path, &mut []) {
        Ok(n) => n,
        Err(Errno::OPNOTSUPP) => return Ok(Vec::new()),
        Err(e) => return Err(io::Error::from(e)).with_context(ctx),
    };
    let mut list = vec![0u8; len];
    let len = rustix::fs::llistxattr(path, &mut list)
        .map_err(io::Error::from)
        .with_context(ctx)?;
    list.truncate(len);
    let mut out = Vec::new();
    for name in list.split(|&b| b == 0).filter(|n| !n.is_empty()) {
        let get = |value: &mut [u8]| {
            rustix::fs::lgetxattr(path, name, value)
                .map_err(io::Error::from)
                .with_context(ctx)
        };
        let mut value = vec![0; get(&mut [])?];
        let n = get(&mut value)?;
        value.truncate(n);
        out.push((name.to_vec(), value));
    }
    out.sort();
    Ok(out)
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::{symlink, PermissionsExt};

    use super::*;

    #[test]
    fn added_and_changed_entries_are_listed_and_the_rest_is_not() {
        let t = tempfile::tempdir().unwrap();
        let (old, new) = (t.path().join("old"), t.path().join("new"));
        for root in [&old, &new] {
            fs::create_dir_all(root.join("etc/app")).unwrap();
            fs::write(root.join("etc/same"), "x").unwrap();
            fs::write(root.join("etc/app/mode"), "y").unwrap();
            symlink("same", root.join("etc/link")).unwrap();
        }
        fs::write(old.join("etc/content"), "old").unwrap();
        fs::write(new.join("etc/content"), "new").unwrap();
        fs::write(old.join("gone"), "z").unwrap();
        fs::set_permissions(new.join("etc/app/mode"), fs::Permissions::from_mode(0o600)).unwrap();
        fs::create_dir(new.join("opt")).unwrap();
        fs::write(new.join("opt/added"), "12345").unwrap();
        fs::remove_file(new.join("etc/link")).unwrap();
        symlink("app", new.join("etc/link")).unwrap();

        let d = diff(&old, &new).unwrap();
        let paths: Vec<_> = d.paths().iter().map(|p| p.display().to_string()).collect();
        assert_eq!(
            paths,
            [
                "etc/app/mode",
                "etc/content",
                "etc/link",
                "opt",
                "opt/added"
            ]
        );
        assert_eq!((d.added.len(), d.changed.len(), d.removed), (2, 3, 1));
        assert_eq!((d.files, d.file_bytes), (3, 1 + 3 + 5));
    }
}
