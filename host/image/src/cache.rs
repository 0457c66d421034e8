//! The build cache (`cargo xtask cache`): one folder per user (`pipeline::default_cache`),
//! shared by every output folder and by the test suites, holding the ostree build store
//! (`repo/`) and `cache/` (Debian packages per architecture, slot images keyed by their
//! inputs, scratch files). [`show`] says what is there; [`prune`] frees what no build needs again.

use std::path::{Path, PathBuf};

use anyhow::Result;
use serde::Serialize;

use crate::store::Store;

/// What the cache holds.
#[derive(Debug, Clone, Serialize)]
pub struct CacheReport {
    /// The cache root.
    pub root: PathBuf,
    /// Folders and their sizes in bytes.
    pub folders: Vec<(String, u64)>,
    /// The store's refs: name, commit, when last built (unix seconds).
    pub refs: Vec<RefInfo>,
}

/// One ref of the build store.
#[derive(Debug, Clone, Serialize)]
pub struct RefInfo {
    /// The ref (`aperture-vision/qemu-x86_64/1.0.0`, `aperture-base/amd64/<key>`).
    pub name: String,
    /// The commit it points at.
    pub commit: String,
    /// When it was last moved.
    pub built: Option<u64>,
}

/// What [`prune`] did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct PruneReport {
    /// Refs deleted.
    pub refs_deleted: Vec<String>,
    /// Files and folders removed.
    pub removed: Vec<PathBuf>,
    /// Bytes freed.
    pub freed: u64,
}

/// Bytes under `path` (0 if it does not exist).
pub fn size_of(path: &Path) -> u64 {
    let Ok(md) = std::fs::symlink_metadata(path) else {
        return 0;
    };
    if !md.is_dir() {
        return md.len();
    }
    std::fs::read_dir(path)
        .map(|rd| rd.flatten().map(|e| size_of(&e.path())).sum())
        .unwrap_or(0)
}

/// What the cache at `root` holds.
pub fn show(root: &Path) -> Result<CacheReport> {
    let mut folders = vec![("repo".to_string(), size_of(&root.join("repo")))];
    if let Ok(rd) = std::fs::read_dir(root.join("cache")) {
        let mut v: Vec<(String, u64)> = rd
            .flatten()
            .map(|e| {
                (
                    format!("cache/{}", e.file_name().to_string_lossy()),
                    size_of(&e.path()),
                )
            })
            .collect();
        v.sort();
        folders.extend(v);
    }
    let mut refs = Vec::new();
    if root.join("repo/config").exists() {
        let store = Store::open(&root.join("repo"))?;
        for (name, commit) in store.refs()? {
            refs.push(RefInfo {
                built: store.ref_time(&name),
                name,
                commit,
            });
        }
    }
    Ok(CacheReport {
        root: root.to_path_buf(),
        folders,
        refs,
    })
}

/// Free what no build needs again: scratch files, cached slot images older than `days`, Debian
/// base trees other than the newest of each architecture, the store objects no ref reaches,
/// and `cache/sysroots/` (arm64 GStreamer libraries older builds linked the runtime against).
/// With `all`, the whole cache (the next build starts cold: about 100 s of Debian base again).
pub fn prune(root: &Path, days: u64, all: bool) -> Result<PruneReport> {
    let mut r = PruneReport::default();
    let remove = |p: PathBuf, r: &mut PruneReport| {
        let bytes = size_of(&p);
        let gone = if p.is_dir() {
            std::fs::remove_dir_all(&p).is_ok()
        } else {
            std::fs::remove_file(&p).is_ok()
        };
        if gone {
            r.freed += bytes;
            r.removed.push(p);
        }
    };
    if all {
        for f in ["repo", "cache"] {
            if root.join(f).exists() {
                remove(root.join(f), &mut r);
            }
        }
        return Ok(r);
    }
    if root.join("cache/sysroots").exists() {
        remove(root.join("cache/sysroots"), &mut r);
    }
    if let Ok(rd) = std::fs::read_dir(root.join("cache/tmp")) {
        for e in rd.flatten() {
            remove(e.path(), &mut r);
        }
    }
    let cutoff = std::time::SystemTime::now()
        .checked_sub(std::time::Duration::from_secs(days * 86_400))
        .unwrap_or(std::time::UNIX_EPOCH);
    if let Ok(rd) = std::fs::read_dir(root.join("cache/slots")) {
        for e in rd.flatten() {
            let old = e
                .metadata()
                .and_then(|m| m.modified())
                .is_ok_and(|t| t < cutoff);
            if old {
                remove(e.path(), &mut r);
            }
        }
    }
    if root.join("repo/config").exists() {
        let store = Store::open(&root.join("repo"))?;
        let refs = store.refs()?;
        // Base trees: keep the newest of each architecture.
        let mut newest: std::collections::BTreeMap<String, (u64, String)> = Default::default();
        for name in refs.keys().filter(|n| n.starts_with("aperture-base/")) {
            let arch = name.split('/').nth(1).unwrap_or("").to_string();
            let t = store.ref_time(name).unwrap_or(0);
            if newest.get(&arch).is_none_or(|(nt, _)| t > *nt) {
                newest.insert(arch, (t, name.clone()));
            }
        }
        for name in refs.keys().filter(|n| n.starts_with("aperture-base/")) {
            if !newest.values().any(|(_, keep)| keep == name) {
                store.delete_ref(name)?;
                r.refs_deleted.push(name.clone());
            }
        }
        r.freed += store.prune()?;
    }
    Ok(r)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prune_removes_scratch_and_old_slot_images_and_all_removes_everything() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path();
        std::fs::create_dir_all(root.join("cache/tmp")).unwrap();
        std::fs::create_dir_all(root.join("cache/slots")).unwrap();
        std::fs::create_dir_all(root.join("cache/debs/amd64")).unwrap();
        std::fs::write(root.join("cache/tmp/x"), vec![0u8; 600]).unwrap();
        std::fs::create_dir_all(root.join("cache/sysroots/arm64-k")).unwrap();
        std::fs::write(root.join("cache/sysroots/arm64-k/lib"), vec![0u8; 400]).unwrap();
        std::fs::write(root.join("cache/slots/a.img"), vec![0u8; 5000]).unwrap();
        std::fs::write(root.join("cache/debs/amd64/p.deb"), vec![0u8; 7]).unwrap();
        let shown = show(root).unwrap();
        assert!(shown
            .folders
            .iter()
            .any(|(n, b)| n == "cache/slots" && *b == 5000));
        // Slot images younger than a day stay; scratch files and old sysroots go; packages stay.
        let r = prune(root, 1, false).unwrap();
        assert_eq!(r.freed, 1000);
        assert!(!root.join("cache/sysroots").exists());
        assert!(root.join("cache/slots/a.img").exists());
        assert!(root.join("cache/debs/amd64/p.deb").exists());
        let r = prune(root, 0, false).unwrap();
        assert_eq!(r.freed, 5000);
        let r = prune(root, 0, true).unwrap();
        assert_eq!(r.freed, 7);
        assert!(!root.join("cache").exists());
    }
}
