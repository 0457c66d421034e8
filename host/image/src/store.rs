//! The build store: an ostree archive repository shared by every build under one output root,
//! so unchanged files are stored once and any two builds can be compared.
//!
//! A Debian base is committed once under `aperture-base/<arch>/<key>`; each build then commits
//! only its own layer (our programs, overlays, generated files) on top of that tree, so a build
//! whose base did not change checksums a few megabytes instead of the whole rootfs.

use std::collections::{BTreeMap, HashMap};
use std::io::Read;
use std::path::{Component, Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};
use ostree::gio::prelude::*;
use ostree::{gio, glib};

/// Metadata keys we put on commits.
pub const META_RECIPE: &str = "aperture.recipe-sha256";
/// Source date of the build.
pub const META_SOURCE_DATE: &str = "aperture.source-date-epoch";
/// The base commit a layer was built on.
pub const META_BASE: &str = "aperture.base";

/// An open build store.
pub struct Store {
    repo: ostree::Repo,
    path: PathBuf,
}

/// What a path is in a commit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Node {
    /// A directory: its dirtree and dirmeta checksums.
    Dir {
        /// Contents checksum.
        contents: String,
        /// Metadata checksum.
        meta: String,
    },
    /// A file or symlink: its content object checksum (covers mode, owner and xattrs).
    File(String),
}

/// Owner and mode of a file object ([`Store::file_meta`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileMeta {
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// `st_mode`: file type and permission bits (setuid 0o4000, setgid 0o2000).
    pub mode: u32,
    /// Size in bytes (0 for symlinks).
    pub size: u64,
    /// The target, if the object is a symlink.
    pub symlink: Option<String>,
}

fn gerr(e: glib::Error) -> anyhow::Error {
    anyhow!("{e}")
}

impl Store {
    /// Open the store at `path`, creating an archive repository if there is none.
    pub fn open_or_create(path: &Path) -> Result<Store> {
        let repo = ostree::Repo::new_for_path(path);
        if path.join("config").exists() {
            repo.open(gio::Cancellable::NONE)
                .map_err(gerr)
                .with_context(|| format!("opening build store {}", path.display()))?;
        } else {
            std::fs::create_dir_all(path)
                .with_context(|| format!("creating {}", path.display()))?;
            repo.create(ostree::RepoMode::Archive, gio::Cancellable::NONE)
                .map_err(gerr)
                .with_context(|| format!("creating build store {}", path.display()))?;
            // Objects are compressed once and read rarely; zlib level 1 is 3x faster than the
            // default 6 for a few percent more space.
            let config = repo.copy_config();
            config.set_integer("core", "zlib-level", 1);
            // (write_config_and_reload is newer than Debian 12's libostree 2022.7.)
            repo.write_config(&config)
                .map_err(gerr)
                .context("configuring the build store")?;
            let repo = ostree::Repo::new_for_path(path);
            repo.open(gio::Cancellable::NONE)
                .map_err(gerr)
                .with_context(|| format!("opening build store {}", path.display()))?;
            return Ok(Store {
                repo,
                path: path.to_path_buf(),
            });
        }
        Ok(Store {
            repo,
            path: path.to_path_buf(),
        })
    }

    /// Open an existing store.
    pub fn open(path: &Path) -> Result<Store> {
        if !path.join("config").exists() {
            bail!("{} is not a build store (no ostree repository there); build something first or pass --repo", path.display());
        }
        Self::open_or_create(path)
    }

    /// Where the store is.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The commit a ref points at, if the ref exists.
    pub fn resolve(&self, refspec: &str) -> Result<Option<String>> {
        Ok(self
            .repo
            .resolve_rev(refspec, true)
            .map_err(gerr)?
            .map(|s| s.to_string()))
    }

    /// Delete a ref (its commits stay until [`Store::prune`]).
    pub fn delete_ref(&self, refname: &str) -> Result<()> {
        self.repo
            .set_ref_immediate(None, refname, None, gio::Cancellable::NONE)
            .map_err(gerr)
            .with_context(|| format!("deleting ref {refname}"))
    }

    /// Delete every object no ref reaches; returns the bytes freed.
    pub fn prune(&self) -> Result<u64> {
        let (_, _, freed) = self
            .repo
            .prune(ostree::RepoPruneFlags::REFS_ONLY, 0, gio::Cancellable::NONE)
            .map_err(gerr)
            .context("pruning the build store")?;
        Ok(freed)
    }

    /// When a ref was last moved (its file's time in the repository), unix seconds.
    pub fn ref_time(&self, refname: &str) -> Option<u64> {
        let p = self.path.join("refs/heads").join(refname);
        let m = std::fs::metadata(p).ok()?.modified().ok()?;
        m.duration_since(std::time::UNIX_EPOCH)
            .ok()
            .map(|d| d.as_secs())
    }

    /// Every ref, with its commit.
    pub fn refs(&self) -> Result<BTreeMap<String, String>> {
        let refs = self
            .repo
            .list_refs(None, gio::Cancellable::NONE)
            .map_err(gerr)?;
        Ok(refs
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect())
    }

    fn metadata_variant(meta: &BTreeMap<String, String>) -> glib::Variant {
        let dict = glib::VariantDict::new(None);
        for (k, v) in meta {
            dict.insert_value(k, &v.to_variant());
        }
        dict.end()
    }

    fn commit_mtree(
        &self,
        mtree: &ostree::MutableTree,
        refname: &str,
        subject: &str,
        meta: &BTreeMap<String, String>,
        timestamp: u64,
    ) -> Result<String> {
        let root = self
            .repo
            .write_mtree(mtree, gio::Cancellable::NONE)
            .map_err(gerr)?;
        let root = root
            .downcast::<ostree::RepoFile>()
            .map_err(|_| anyhow!("ostree returned a root that is not a RepoFile"))?;
        // No parent: the checksum must depend only on the tree, the metadata and the source
        // date, so that rebuilding a version in any store gives the same commit.
        let checksum = self
            .repo
            .write_commit_with_time(
                None,
                Some(subject),
                None,
                Some(&Self::metadata_variant(meta)),
                &root,
                timestamp,
                gio::Cancellable::NONE,
            )
            .map_err(gerr)?;
        self.repo
            .transaction_set_ref(None, refname, Some(checksum.as_str()));
        Ok(checksum.to_string())
    }

    /// Commit a whole directory tree (a Debian base) under `refname`.
    pub fn commit_tree(
        &self,
        dir: &Path,
        refname: &str,
        subject: &str,
        meta: &BTreeMap<String, String>,
        timestamp: u64,
    ) -> Result<String> {
        self.repo
            .prepare_transaction(gio::Cancellable::NONE)
            .map_err(gerr)?;
        let result = (|| {
            let mtree = ostree::MutableTree::new();
            let modifier =
                ostree::RepoCommitModifier::new(ostree::RepoCommitModifierFlags::NONE, None);
            self.repo
                .write_directory_to_mtree(
                    &gio::File::for_path(dir),
                    &mtree,
                    Some(&modifier),
                    gio::Cancellable::NONE,
                )
                .map_err(gerr)
                .with_context(|| format!("committing {}", dir.display()))?;
            self.commit_mtree(&mtree, refname, subject, meta, timestamp)
        })();
        self.finish(result)
    }

    /// Commit `layer` on top of the tree of commit `base`, under `refname`. Files in the layer
    /// replace the base's; directories merge.
    pub fn commit_layer(
        &self,
        base: &str,
        layer: &Path,
        refname: &str,
        subject: &str,
        meta: &BTreeMap<String, String>,
        timestamp: u64,
    ) -> Result<String> {
        self.repo
            .prepare_transaction(gio::Cancellable::NONE)
            .map_err(gerr)?;
        let result = (|| {
            let mtree = ostree::MutableTree::from_commit(&self.repo, base)
                .map_err(gerr)
                .context("loading the base tree")?;
            let modifier =
                ostree::RepoCommitModifier::new(ostree::RepoCommitModifierFlags::NONE, None);
            self.repo
                .write_directory_to_mtree(
                    &gio::File::for_path(layer),
                    &mtree,
                    Some(&modifier),
                    gio::Cancellable::NONE,
                )
                .map_err(gerr)
                .with_context(|| format!("committing the layer {} onto {base}", layer.display()))?;
            self.commit_mtree(&mtree, refname, subject, meta, timestamp)
        })();
        self.finish(result)
    }

    fn finish(&self, result: Result<String>) -> Result<String> {
        match result {
            Ok(c) => {
                self.repo
                    .commit_transaction(gio::Cancellable::NONE)
                    .map_err(gerr)
                    .context("finishing the store transaction")?;
                Ok(c)
            }
            Err(e) => {
                let _ = self.repo.abort_transaction(gio::Cancellable::NONE);
                Err(e)
            }
        }
    }

    /// The root directory node of a commit.
    pub fn root(&self, checksum: &str) -> Result<Node> {
        let (v, _) = self
            .repo
            .load_commit(checksum)
            .map_err(gerr)
            .with_context(|| format!("loading commit {checksum}"))?;
        Ok(Node::Dir {
            contents: ostree::checksum_from_bytes_v(&v.child_value(6)).to_string(),
            meta: ostree::checksum_from_bytes_v(&v.child_value(7)).to_string(),
        })
    }

    /// Entries of a directory node: name to node, sorted.
    pub fn list(&self, contents: &str) -> Result<BTreeMap<String, Node>> {
        let v = self
            .repo
            .load_variant(ostree::ObjectType::DirTree, contents)
            .map_err(gerr)?;
        let mut out = BTreeMap::new();
        let files = v.child_value(0);
        for i in 0..files.n_children() {
            let e = files.child_value(i);
            let name = e.child_value(0).str().unwrap_or_default().to_string();
            out.insert(
                name,
                Node::File(ostree::checksum_from_bytes_v(&e.child_value(1)).to_string()),
            );
        }
        let dirs = v.child_value(1);
        for i in 0..dirs.n_children() {
            let e = dirs.child_value(i);
            let name = e.child_value(0).str().unwrap_or_default().to_string();
            out.insert(
                name,
                Node::Dir {
                    contents: ostree::checksum_from_bytes_v(&e.child_value(1)).to_string(),
                    meta: ostree::checksum_from_bytes_v(&e.child_value(2)).to_string(),
                },
            );
        }
        Ok(out)
    }

    /// uid, gid and mode of a directory from its dirmeta object.
    pub fn dir_meta(&self, meta: &str) -> Result<(u32, u32, u32)> {
        let v = self
            .repo
            .load_variant(ostree::ObjectType::DirMeta, meta)
            .map_err(gerr)?;
        let g = |i: usize| u32::from_be(v.child_value(i).get::<u32>().unwrap_or(0));
        Ok((g(0), g(1), g(2)))
    }

    /// A file object's symlink target, if it is a symlink.
    pub fn symlink_target(&self, checksum: &str) -> Result<Option<String>> {
        let (_, info, _) = self
            .repo
            .load_file(checksum, gio::Cancellable::NONE)
            .map_err(gerr)?;
        Ok((info.file_type() == gio::FileType::SymbolicLink)
            .then(|| {
                info.symlink_target()
                    .map(|p| p.to_string_lossy().into_owned())
            })
            .flatten())
    }

    /// Owner, mode and symlink target of a file object (for the security baseline and audit,
    /// which look at every file's setuid and write bits).
    pub fn file_meta(&self, checksum: &str) -> Result<FileMeta> {
        let (_, info, _) = self
            .repo
            .load_file(checksum, gio::Cancellable::NONE)
            .map_err(gerr)
            .with_context(|| format!("loading file object {checksum}"))?;
        let symlink = (info.file_type() == gio::FileType::SymbolicLink)
            .then(|| {
                info.symlink_target()
                    .map(|p| p.to_string_lossy().into_owned())
            })
            .flatten();
        Ok(FileMeta {
            uid: info.attribute_uint32("unix::uid"),
            gid: info.attribute_uint32("unix::gid"),
            mode: info.attribute_uint32("unix::mode"),
            size: u64::try_from(info.size()).unwrap_or(0),
            symlink,
        })
    }

    /// A regular file's bytes (up to `limit`).
    pub fn read_file(&self, checksum: &str, limit: u64) -> Result<Vec<u8>> {
        let (stream, _, _) = self
            .repo
            .load_file(checksum, gio::Cancellable::NONE)
            .map_err(gerr)?;
        let stream =
            stream.ok_or_else(|| anyhow!("file object {checksum} has no content (a symlink?)"))?;
        let mut out = Vec::new();
        stream.into_read().take(limit).read_to_end(&mut out)?;
        Ok(out)
    }

    /// Check a commit out to `dest` (which must not exist), keeping owners, modes and xattrs.
    pub fn checkout(&self, checksum: &str, dest: &Path) -> Result<()> {
        let parent = dest
            .parent()
            .ok_or_else(|| anyhow!("checkout destination has no parent"))?;
        std::fs::create_dir_all(parent)?;
        let opts = ostree::RepoCheckoutAtOptions {
            mode: ostree::RepoCheckoutMode::None,
            ..Default::default()
        };
        self.repo
            .checkout_at(
                Some(&opts),
                libc_at_fdcwd(),
                dest,
                checksum,
                gio::Cancellable::NONE,
            )
            .map_err(gerr)
            .with_context(|| format!("checking out {checksum} to {}", dest.display()))
    }
}

/// `AT_FDCWD`: checkout paths are resolved from the working directory.
fn libc_at_fdcwd() -> i32 {
    -100
}

/// Read-only view of a commit's tree for path lookups that follow symlinks inside the tree,
/// never outside it (like `openat2(RESOLVE_IN_ROOT)`).
pub struct TreeView<'a> {
    store: &'a Store,
    root: Node,
    cache: std::cell::RefCell<HashMap<String, BTreeMap<String, Node>>>,
}

/// Result of a lookup.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Found {
    /// The path after resolving symlinks in its directories (and in the last component when
    /// asked to).
    pub path: PathBuf,
    /// The node there.
    pub node: Node,
}

impl<'a> TreeView<'a> {
    /// A view of `commit`.
    pub fn new(store: &'a Store, commit: &str) -> Result<Self> {
        Ok(TreeView {
            store,
            root: store.root(commit)?,
            cache: Default::default(),
        })
    }

    fn entries(&self, contents: &str) -> Result<BTreeMap<String, Node>> {
        if let Some(e) = self.cache.borrow().get(contents) {
            return Ok(e.clone());
        }
        let e = self.store.list(contents)?;
        self.cache
            .borrow_mut()
            .insert(contents.to_string(), e.clone());
        Ok(e)
    }

    /// Resolve `path` (relative to the root); symlinks in directory components are followed
    /// within the tree; the last component is followed only if `follow_last`.
    pub fn lookup(&self, path: &Path, follow_last: bool) -> Result<Option<Found>> {
        let mut pending: Vec<String> = normal_components(path)?.into_iter().rev().collect();
        let mut cur: Vec<String> = Vec::new();
        let mut node = self.root.clone();
        let mut hops = 0;
        while let Some(name) = pending.pop() {
            if name == ".." {
                cur.pop();
                node = self
                    .node_at(&cur)?
                    .ok_or_else(|| anyhow!("lost parent while resolving {}", path.display()))?;
                continue;
            }
            let Node::Dir { contents, .. } = &node else {
                return Ok(None);
            };
            let entries = self.entries(contents)?;
            let Some(child) = entries.get(&name).cloned() else {
                return Ok(None);
            };
            let is_last = pending.is_empty();
            if let Node::File(ck) = &child {
                if !is_last || follow_last {
                    if let Some(target) = self.store.symlink_target(ck)? {
                        hops += 1;
                        if hops > 40 {
                            bail!("too many symlinks resolving {}", path.display());
                        }
                        if target.starts_with('/') {
                            cur.clear();
                            node = self.root.clone();
                        }
                        for c in target
                            .split('/')
                            .rev()
                            .filter(|c| !c.is_empty() && *c != ".")
                        {
                            pending.push(c.to_string());
                        }
                        continue;
                    }
                }
            }
            cur.push(name);
            node = child;
        }
        Ok(Some(Found {
            path: cur.iter().collect(),
            node,
        }))
    }

    fn node_at(&self, comps: &[String]) -> Result<Option<Node>> {
        let mut node = self.root.clone();
        for c in comps {
            let Node::Dir { contents, .. } = &node else {
                return Ok(None);
            };
            match self.entries(contents)?.get(c) {
                Some(n) => node = n.clone(),
                None => return Ok(None),
            }
        }
        Ok(Some(node))
    }

    /// The store behind the view.
    pub fn store(&self) -> &Store {
        self.store
    }
}

/// Split a relative path into normal components; `..` stays (resolved by the caller inside the
/// tree), anything absolute is treated as relative to the tree root.
fn normal_components(path: &Path) -> Result<Vec<String>> {
    let mut out = Vec::new();
    for c in path.components() {
        match c {
            Component::Normal(n) => out.push(
                n.to_str()
                    .ok_or_else(|| anyhow!("non-UTF-8 path {}", path.display()))?
                    .to_string(),
            ),
            Component::ParentDir => out.push("..".into()),
            Component::RootDir | Component::CurDir | Component::Prefix(_) => {}
        }
    }
    Ok(out)
}
