//! Overlays: folders of files layered into the image in recipe order, owner and mode kept.
//!
//! An overlay is untrusted input as far as the image root is concerned: an entry may not escape
//! it. Symlink targets must be relative and stay inside the image (`../../etc/x` from `/a`
//! climbs out and is refused; absolute targets are refused because they would be resolved
//! against whatever root reads them). Devices, FIFOs and sockets are refused.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};

use anyhow::{bail, Context, Result};

use super::layer::Layer;

/// Why an overlay entry was refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OverlayError {
    /// A symlink with an absolute target.
    #[error("overlay {overlay}: symlink `{entry}` has the absolute target `{target}`; use a relative target (e.g. `{suggest}`) so it resolves inside the image")]
    AbsoluteSymlink {
        /// Overlay folder.
        overlay: String,
        /// Entry inside it.
        entry: String,
        /// Link target.
        target: String,
        /// A relative equivalent.
        suggest: String,
    },
    /// A symlink that climbs out of the image root.
    #[error("overlay {overlay}: symlink `{entry}` -> `{target}` escapes the image root; make it point inside the image")]
    EscapingSymlink {
        /// Overlay folder.
        overlay: String,
        /// Entry inside it.
        entry: String,
        /// Link target.
        target: String,
    },
    /// A device, FIFO or socket.
    #[error("overlay {overlay}: `{entry}` is a {kind}; overlays may hold only files, folders and symlinks")]
    SpecialFile {
        /// Overlay folder.
        overlay: String,
        /// Entry.
        entry: String,
        /// What it is.
        kind: &'static str,
    },
}

/// Whether a relative symlink target, placed at `entry` (relative to the image root), stays
/// inside the root.
pub fn target_stays_inside(entry: &Path, target: &Path) -> bool {
    let mut depth: i64 = entry
        .parent()
        .map(|p| p.components().count() as i64)
        .unwrap_or(0);
    for c in target.components() {
        match c {
            Component::ParentDir => {
                depth -= 1;
                if depth < 0 {
                    return false;
                }
            }
            Component::Normal(_) => depth += 1,
            Component::CurDir => {}
            Component::RootDir | Component::Prefix(_) => return false,
        }
    }
    true
}

fn relative_suggestion(entry: &Path, target: &str) -> String {
    let depth = entry.parent().map(|p| p.components().count()).unwrap_or(0);
    let mut s = "../".repeat(depth);
    s.push_str(target.trim_start_matches('/'));
    s
}

/// Copy one overlay folder into the layer; returns the number of entries copied.
pub fn apply(overlay: &Path, layer: &Layer<'_>) -> Result<usize> {
    let name = overlay.display().to_string();
    let mut entries = Vec::new();
    collect(overlay, Path::new(""), &mut entries)?;
    let mut n = 0;
    for rel in entries {
        let src = overlay.join(&rel);
        let meta = src
            .symlink_metadata()
            .with_context(|| format!("reading {}", src.display()))?;
        let ft = meta.file_type();
        let entry = format!("/{}", rel.display());
        if ft.is_dir() {
            layer.mkdir(&rel, meta.permissions().mode(), meta.uid(), meta.gid())?;
        } else if ft.is_symlink() {
            let target = std::fs::read_link(&src)?;
            let t = target.to_string_lossy().into_owned();
            if target.is_absolute() {
                return Err(OverlayError::AbsoluteSymlink {
                    overlay: name,
                    entry,
                    suggest: relative_suggestion(&rel, &t),
                    target: t,
                }
                .into());
            }
            if !target_stays_inside(&rel, &target) {
                return Err(OverlayError::EscapingSymlink {
                    overlay: name,
                    entry,
                    target: t,
                }
                .into());
            }
            layer.symlink(&rel, &t)?;
        } else if ft.is_file() {
            layer.copy_file(
                &rel,
                &src,
                meta.permissions().mode() & 0o7777,
                meta.uid(),
                meta.gid(),
            )?;
        } else {
            use std::os::unix::fs::FileTypeExt;
            let kind = if ft.is_block_device() || ft.is_char_device() {
                "device node"
            } else if ft.is_fifo() {
                "FIFO"
            } else {
                "socket"
            };
            return Err(OverlayError::SpecialFile {
                overlay: name,
                entry,
                kind,
            }
            .into());
        }
        n += 1;
    }
    Ok(n)
}

/// Every entry below `dir`, parents before children, sorted for a deterministic order.
fn collect(root: &Path, rel: &Path, out: &mut Vec<PathBuf>) -> Result<()> {
    let dir = root.join(rel);
    let mut names: Vec<_> = std::fs::read_dir(&dir)
        .with_context(|| format!("reading overlay folder {}", dir.display()))?
        .map(|e| e.map(|e| e.file_name()))
        .collect::<std::io::Result<_>>()?;
    names.sort();
    for n in names {
        let child = rel.join(&n);
        let ft = root.join(&child).symlink_metadata()?.file_type();
        out.push(child.clone());
        if ft.is_dir() {
            collect(root, &child, out)?;
        }
    }
    if rel.as_os_str().is_empty() && out.is_empty() {
        bail!("overlay folder {} is empty", root.display());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn symlink_targets_inside_and_outside() {
        assert!(target_stays_inside(
            Path::new("etc/a"),
            Path::new("../usr/lib/x")
        ));
        assert!(target_stays_inside(Path::new("a"), Path::new("b/c")));
        assert!(!target_stays_inside(
            Path::new("etc/a"),
            Path::new("../../etc/shadow")
        ));
        assert!(!target_stays_inside(Path::new("a"), Path::new("..")));
        assert!(target_stays_inside(
            Path::new("x/y/z"),
            Path::new("../../q")
        ));
        assert!(!target_stays_inside(
            Path::new("x/y/z"),
            Path::new("a/../../../../q")
        ));
    }

    #[test]
    fn suggestion_is_relative() {
        assert_eq!(
            relative_suggestion(Path::new("etc/resolv.conf"), "/run/x"),
            "../run/x"
        );
    }
}
