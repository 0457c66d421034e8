//! Durable file updates (ARCHITECTURE.md, "State files"): write `NAME.tmp` in the same folder,
//! fsync it, rename it over `NAME`, fsync the renamed file again, then fsync the folder.
//!
//! The second fsync is for vfat (the ESP). Linux's `vfat_rename` gives the new directory entry
//! a start cluster and size of zero and fills them in only when the inode is written back,
//! which `fsync` of the folder does not do (fs/fat/namei_vfat.c, fs/fat/file.c); fsync of the
//! file under its new name does. On ext4 it costs nothing.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

/// A file operation that failed, naming the operation and the path.
#[derive(Debug, thiserror::Error)]
#[error("{op} {}", path.display())]
pub struct FsError {
    /// What was being done ("writing", "renaming into place", ...).
    pub op: &'static str,
    /// The file or folder.
    pub path: PathBuf,
    /// Cause.
    #[source]
    pub err: io::Error,
}

impl FsError {
    /// A closure that wraps an `io::Error` for `op` on `path`.
    pub fn on<'p>(op: &'static str, path: &'p Path) -> impl FnOnce(io::Error) -> FsError + 'p {
        move |err| FsError {
            op,
            path: path.to_path_buf(),
            err,
        }
    }
}

/// The folder holding `path` (`.` for a bare name).
pub fn parent_dir(path: &Path) -> PathBuf {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// The temporary sibling `NAME.tmp` used while writing `path`.
pub fn tmp_path(path: &Path) -> PathBuf {
    let mut name = path
        .file_name()
        .map(|n| n.to_os_string())
        .unwrap_or_default();
    name.push(".tmp");
    parent_dir(path).join(name)
}

/// fsync a folder so that renames, new names and removals in it survive a power cut.
pub fn sync_dir(dir: &Path) -> Result<(), FsError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(FsError::on("syncing folder", dir))
}

/// fsync the file at `path` (after a rename: see the module documentation).
pub fn sync_file(path: &Path) -> Result<(), FsError> {
    File::open(path)
        .and_then(|f| f.sync_all())
        .map_err(FsError::on("syncing", path))
}

/// Replace `path` with `contents` durably, created with `mode` (on vfat the mode is not
/// stored; the mount options decide).
pub fn write_atomic(path: &Path, contents: &[u8], mode: u32) -> Result<(), FsError> {
    let tmp = tmp_path(path);
    {
        let mut file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(mode)
            .open(&tmp)
            .map_err(FsError::on("creating", &tmp))?;
        file.write_all(contents)
            .and_then(|()| file.sync_all())
            .map_err(FsError::on("writing", &tmp))?;
    }
    rename_durable(&tmp, path)
}

/// Rename `from` over `to` (same folder), fsync `to` under its new name and the folder.
pub fn rename_durable(from: &Path, to: &Path) -> Result<(), FsError> {
    fs::rename(from, to).map_err(FsError::on("renaming into place", to))?;
    sync_file(to)?;
    sync_dir(&parent_dir(to))
}

/// Remove `path` if it exists and fsync its folder; `Ok(false)` if it was not there.
pub fn remove_durable(path: &Path) -> Result<bool, FsError> {
    match fs::remove_file(path) {
        Ok(()) => {
            sync_dir(&parent_dir(path))?;
            Ok(true)
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(FsError::on("removing", path)(e)),
    }
}

/// Overwrite a file's first MiB with zeros, fsync, then remove it durably. On flash and on
/// vfat an overwrite is no guarantee that the old bytes are gone from the medium; it is done
/// anyway because it is cheap and defeats an undelete of the file system.
pub fn shred_and_remove(path: &Path) -> Result<bool, FsError> {
    match fs::metadata(path) {
        Ok(meta) => {
            let len = usize::try_from(meta.len())
                .unwrap_or(usize::MAX)
                .min(1 << 20);
            OpenOptions::new()
                .write(true)
                .open(path)
                .and_then(|mut f| {
                    f.write_all(&vec![0u8; len])?;
                    f.sync_all()
                })
                .map_err(FsError::on("overwriting", path))?;
            remove_durable(path)
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(FsError::on("inspecting", path)(e)),
    }
}

/// Read a file; `Ok(None)` if it does not exist.
pub fn read_optional(path: &Path) -> Result<Option<Vec<u8>>, FsError> {
    match fs::read(path) {
        Ok(bytes) => Ok(Some(bytes)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(FsError::on("reading", path)(e)),
    }
}

/// Create `dir` (and parents) with `mode` for the folders it creates.
pub fn create_dir_all(dir: &Path, mode: u32) -> Result<(), FsError> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(mode)
        .create(dir)
        .map_err(FsError::on("creating folder", dir))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn atomic_write_sets_mode_and_leaves_no_temp() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k");
        write_atomic(&path, b"one", 0o600).unwrap();
        write_atomic(&path, b"two", 0o600).unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"two");
        assert_eq!(
            fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert!(!tmp_path(&path).exists());
        let e = write_atomic(&dir.path().join("none/k"), b"x", 0o600).unwrap_err();
        assert!(e.to_string().contains("creating") && e.to_string().contains("none/k.tmp"));
    }

    #[test]
    fn shred_removes_and_reports() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k");
        fs::write(&path, b"secret").unwrap();
        assert!(shred_and_remove(&path).unwrap());
        assert!(!path.exists());
        assert!(!shred_and_remove(&path).unwrap());
        assert!(!remove_durable(&path).unwrap());
        assert_eq!(read_optional(&path).unwrap(), None);
    }
}
