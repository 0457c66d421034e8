//! A build's own layer over the Debian base: a host directory that mirrors the image's paths,
//! filled by our programs, the recipe's overlays and generated files, then committed on top of
//! the base tree.
//!
//! Paths are resolved against the base the way the running system will see them: a write to
//! `lib/systemd/system/x` lands in `usr/lib/systemd/system/x` because `/lib` is a symlink in
//! Debian's merged-/usr layout. Resolution never leaves the image root, and nothing on the host
//! is ever followed: the layer is a plain directory we create ourselves.

use std::os::unix::fs::{lchown, symlink, PermissionsExt};
use std::path::{Component, Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};

use crate::store::{Node, TreeView};

/// The layer being assembled.
pub struct Layer<'a> {
    dir: PathBuf,
    view: &'a TreeView<'a>,
}

impl<'a> Layer<'a> {
    /// An empty layer in `dir` (created; must not exist or be empty) over `view`.
    pub fn new(dir: &Path, view: &'a TreeView<'a>) -> Result<Self> {
        if dir.exists() {
            std::fs::remove_dir_all(dir).with_context(|| format!("clearing {}", dir.display()))?;
        }
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let layer = Layer {
            dir: dir.to_path_buf(),
            view,
        };
        layer.copy_dir_meta(Path::new(""), dir)?;
        Ok(layer)
    }

    /// The host directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The base view.
    pub fn view(&self) -> &TreeView<'a> {
        self.view
    }

    /// Canonical image path of `rel`'s parent directories, following the base's symlinks inside
    /// the image; the last component is kept as is.
    pub fn canonical(&self, rel: &Path) -> Result<PathBuf> {
        let comps = plain_components(rel)?;
        let Some((last, parents)) = comps.split_last() else {
            return Ok(PathBuf::new());
        };
        let mut cur = PathBuf::new();
        let mut rest = parents.iter();
        for c in rest.by_ref() {
            let next = cur.join(c);
            // A directory we already made in the layer wins (it may be new in this build).
            if self
                .dir
                .join(&next)
                .symlink_metadata()
                .map(|m| m.is_dir())
                .unwrap_or(false)
            {
                cur = next;
                continue;
            }
            match self.view.lookup(&next, true)? {
                Some(found) => match found.node {
                    Node::Dir { .. } => cur = found.path,
                    Node::File(_) => bail!(
                        "`{}` is a file in the base image, so `{}` cannot be created under it",
                        next.display(),
                        rel.display()
                    ),
                },
                None => {
                    cur = next;
                    for r in rest {
                        cur.push(r);
                    }
                    break;
                }
            }
        }
        Ok(cur.join(last))
    }

    /// Give a layer directory the owner and mode the base has for it (so committing the layer
    /// does not change existing directories), or 0755 root for new ones.
    fn copy_dir_meta(&self, image_path: &Path, host: &Path) -> Result<()> {
        let meta = match self.view.lookup(image_path, false)? {
            Some(Found {
                node: Node::Dir { meta, .. },
                ..
            }) => Some(self.view.store().dir_meta(&meta)?),
            _ => None,
        };
        let (uid, gid, mode) = meta.unwrap_or((0, 0, 0o40755));
        lchown(host, Some(uid), Some(gid)).with_context(|| format!("chown {}", host.display()))?;
        std::fs::set_permissions(host, std::fs::Permissions::from_mode(mode & 0o7777))?;
        Ok(())
    }

    /// Make sure the directory `image_dir` exists in the layer, each new level carrying the base's
    /// metadata (or `fallback` = (uid, gid, mode) when the base has no such directory).
    fn ensure_dir(&self, image_dir: &Path, fallback: Option<(u32, u32, u32)>) -> Result<PathBuf> {
        let mut cur = PathBuf::new();
        for c in plain_components(image_dir)? {
            cur.push(&c);
            let host = self.dir.join(&cur);
            match host.symlink_metadata() {
                Ok(m) if m.is_dir() => continue,
                Ok(_) => bail!("`/{}` is not a directory in this build's layer (an overlay made it a file or link)", cur.display()),
                Err(_) => {}
            }
            std::fs::create_dir(&host).with_context(|| format!("creating {}", host.display()))?;
            let in_base = matches!(
                self.view.lookup(&cur, false)?,
                Some(Found {
                    node: Node::Dir { .. },
                    ..
                })
            );
            match (in_base, fallback) {
                (false, Some((uid, gid, mode))) if cur == image_dir => {
                    lchown(&host, Some(uid), Some(gid))?;
                    std::fs::set_permissions(
                        &host,
                        std::fs::Permissions::from_mode(mode & 0o7777),
                    )?;
                }
                _ => self.copy_dir_meta(&cur, &host)?,
            }
        }
        Ok(self.dir.join(cur))
    }

    fn prepare(&self, rel: &Path) -> Result<PathBuf> {
        let path = self.canonical(rel)?;
        let parent = path.parent().unwrap_or(Path::new(""));
        self.ensure_dir(parent, None)?;
        let host = self.dir.join(&path);
        if let Ok(m) = host.symlink_metadata() {
            if m.is_dir() {
                bail!(
                    "`/{}` is already a directory in this build's layer",
                    path.display()
                );
            }
            std::fs::remove_file(&host)?;
        }
        if let Some(Found {
            node: Node::Dir { .. },
            ..
        }) = self.view.lookup(&path, false)?
        {
            bail!(
                "`/{}` is a directory in the base image and cannot be replaced by a file",
                path.display()
            );
        }
        Ok(host)
    }

    /// Write a file owned by root.
    pub fn write(&self, rel: &Path, data: &[u8], mode: u32) -> Result<()> {
        self.write_owned(rel, data, mode, 0, 0)
    }

    /// Write a file with an owner.
    pub fn write_owned(
        &self,
        rel: &Path,
        data: &[u8],
        mode: u32,
        uid: u32,
        gid: u32,
    ) -> Result<()> {
        let host = self.prepare(rel)?;
        std::fs::write(&host, data).with_context(|| format!("writing {}", host.display()))?;
        lchown(&host, Some(uid), Some(gid))?;
        std::fs::set_permissions(&host, std::fs::Permissions::from_mode(mode))?;
        Ok(())
    }

    /// Copy a host file into the image with the given mode and owner.
    pub fn copy_file(&self, rel: &Path, src: &Path, mode: u32, uid: u32, gid: u32) -> Result<()> {
        let host = self.prepare(rel)?;
        std::fs::copy(src, &host)
            .with_context(|| format!("copying {} to {}", src.display(), host.display()))?;
        lchown(&host, Some(uid), Some(gid))?;
        std::fs::set_permissions(&host, std::fs::Permissions::from_mode(mode))?;
        Ok(())
    }

    /// Create a symlink (owned by root).
    pub fn symlink(&self, rel: &Path, target: &str) -> Result<()> {
        let host = self.prepare(rel)?;
        symlink(target, &host).with_context(|| format!("creating symlink {}", host.display()))?;
        lchown(&host, Some(0), Some(0))?;
        Ok(())
    }

    /// Create a directory with an owner and mode (base metadata wins if it already exists there).
    pub fn mkdir(&self, rel: &Path, mode: u32, uid: u32, gid: u32) -> Result<()> {
        let path = self.canonical(rel)?;
        self.ensure_dir(&path, Some((uid, gid, mode)))?;
        Ok(())
    }

    /// Whether `rel` exists in the layer or the base (following symlinks inside the image).
    pub fn exists(&self, rel: &Path) -> Result<bool> {
        let path = self.canonical(rel)?;
        if self.dir.join(&path).symlink_metadata().is_ok() {
            return Ok(true);
        }
        Ok(self.view.lookup(&path, true)?.is_some())
    }

    /// Read a file from the layer, else the base (limit 1 MiB).
    pub fn read(&self, rel: &Path) -> Result<Option<Vec<u8>>> {
        let path = self.canonical(rel)?;
        let host = self.dir.join(&path);
        if host.symlink_metadata().is_ok() {
            return Ok(Some(std::fs::read(&host)?));
        }
        match self.view.lookup(&path, true)? {
            Some(Found {
                node: Node::File(ck),
                ..
            }) => Ok(Some(self.view.store().read_file(&ck, 1 << 20)?)),
            _ => Ok(None),
        }
    }
}

use crate::store::Found;

/// Components of a relative image path; `..`, roots and prefixes are refused.
fn plain_components(p: &Path) -> Result<Vec<String>> {
    let mut out = Vec::new();
    for c in p.components() {
        match c {
            Component::Normal(n) => out.push(
                n.to_str()
                    .ok_or_else(|| anyhow!("non-UTF-8 path {}", p.display()))?
                    .to_string(),
            ),
            Component::CurDir => {}
            Component::RootDir => {}
            Component::ParentDir | Component::Prefix(_) => {
                bail!("path `{}` climbs out of the image root", p.display())
            }
        }
    }
    Ok(out)
}
