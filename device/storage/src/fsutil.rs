//! Durable file updates shared by storage and reset: write `NAME.tmp` in the same folder with
//! the final mode, fsync it, rename it over `NAME`, fsync the folder (ARCHITECTURE.md, update
//! rule 3); and removal that survives a power cut (unlink, fsync the folder).

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use crate::StorageError;

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
pub fn sync_dir(dir: &Path) -> Result<(), StorageError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(StorageError::io("syncing folder", dir))
}

/// Replace `path` with `contents` durably, created with `mode` (temp file, fsync, rename,
/// fsync folder). On vfat the mode is not stored; the mount options (`umask=0077`) decide.
pub fn write_atomic(path: &Path, contents: &[u8], mode: u32) -> Result<(), StorageError> {
    let tmp = tmp_path(path);
    {
        let mut file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(mode)
            .open(&tmp)
            .map_err(StorageError::io("creating", &tmp))?;
        file.write_all(contents)
            .and_then(|()| file.sync_all())
            .map_err(StorageError::io("writing", &tmp))?;
    }
    fs::rename(&tmp, path).map_err(StorageError::io("renaming into place", path))?;
    sync_dir(&parent_dir(path))
}

/// Remove `path` if it exists and fsync its folder; `Ok(false)` if it was not there.
pub fn remove_durable(path: &Path) -> Result<bool, StorageError> {
    match fs::remove_file(path) {
        Ok(()) => {
            sync_dir(&parent_dir(path))?;
            Ok(true)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(StorageError::Io {
            op: "removing",
            path: path.to_path_buf(),
            source: e,
        }),
    }
}

/// Overwrite a file's bytes with zeros, fsync, then remove it durably. On flash and on vfat
/// an overwrite is no guarantee that the old bytes are gone from the medium; it is done
/// anyway because it is cheap and defeats an undelete of the file system.
pub fn shred_and_remove(path: &Path) -> Result<bool, StorageError> {
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
                .map_err(StorageError::io("overwriting", path))?;
            remove_durable(path)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(StorageError::Io {
            op: "inspecting",
            path: path.to_path_buf(),
            source: e,
        }),
    }
}

/// Read a file; `Ok(None)` if it does not exist.
pub fn read_optional(path: &Path) -> Result<Option<Vec<u8>>, StorageError> {
    match fs::read(path) {
        Ok(bytes) => Ok(Some(bytes)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(StorageError::Io {
            op: "reading",
            path: path.to_path_buf(),
            source: e,
        }),
    }
}

/// Create `dir` (and parents) with `mode` for the folders it creates.
pub fn create_dir_all(dir: &Path, mode: u32) -> Result<(), StorageError> {
    use std::os::unix::fs::DirBuilderExt;
    fs::DirBuilder::new()
        .recursive(true)
        .mode(mode)
        .create(dir)
        .map_err(StorageError::io("creating folder", dir))
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
