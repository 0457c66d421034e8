//! Durable file updates shared by the backends: write `NAME.tmp` in the same folder, fsync it,
//! rename it over `NAME`, fsync the folder (ARCHITECTURE.md, update rule 3). A rename is atomic
//! on every file system we use (ext4 for state files, vfat for the ESP), so a power cut leaves
//! either the old or the new content, never half of each.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use crate::SlotsError;

/// The folder holding `path` (`.` for a bare name).
pub(crate) fn parent_dir(path: &Path) -> PathBuf {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// The temporary sibling `NAME.tmp` used while writing `path`.
pub(crate) fn tmp_path(path: &Path) -> PathBuf {
    let mut name = path
        .file_name()
        .map(|n| n.to_os_string())
        .unwrap_or_default();
    name.push(".tmp");
    parent_dir(path).join(name)
}

/// fsync a folder so that renames and new names in it survive a power cut.
pub(crate) fn sync_dir(dir: &Path) -> Result<(), SlotsError> {
    let handle = File::open(dir).map_err(SlotsError::io("opening folder", dir))?;
    handle
        .sync_all()
        .map_err(SlotsError::io("syncing folder", dir))
}

/// Replace `path` with `contents` durably (temp file, fsync, rename, fsync folder).
pub(crate) fn write_atomic(path: &Path, contents: &[u8]) -> Result<(), SlotsError> {
    let tmp = tmp_path(path);
    {
        let mut file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(&tmp)
            .map_err(SlotsError::io("creating", &tmp))?;
        file.write_all(contents)
            .map_err(SlotsError::io("writing", &tmp))?;
        file.sync_all().map_err(SlotsError::io("syncing", &tmp))?;
    }
    rename_durable(&tmp, path)
}

/// Rename `from` to `to` (same folder) and fsync the folder.
pub(crate) fn rename_durable(from: &Path, to: &Path) -> Result<(), SlotsError> {
    fs::rename(from, to).map_err(SlotsError::io("renaming into place", to))?;
    sync_dir(&parent_dir(to))
}

/// Create `dir` and its parents.
pub(crate) fn create_dir_all(dir: &Path) -> Result<(), SlotsError> {
    fs::create_dir_all(dir).map_err(SlotsError::io("creating folder", dir))
}

/// Read a whole file as UTF-8; `Ok(None)` if it does not exist.
pub(crate) fn read_optional(path: &Path) -> Result<Option<String>, SlotsError> {
    match fs::read(path) {
        Ok(bytes) => String::from_utf8(bytes)
            .map(Some)
            .map_err(|_| SlotsError::Malformed {
                path: path.to_path_buf(),
                reason: "not UTF-8 text".into(),
            }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(SlotsError::Io {
            op: "reading",
            path: path.to_path_buf(),
            source: e,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn atomic_write_replaces_and_leaves_no_temp() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.json");
        write_atomic(&path, b"one").unwrap();
        write_atomic(&path, b"two").unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"two");
        assert!(!tmp_path(&path).exists());
        assert_eq!(read_optional(&path).unwrap().as_deref(), Some("two"));
        assert_eq!(read_optional(&dir.path().join("missing")).unwrap(), None);
    }

    #[test]
    fn atomic_write_into_missing_folder_names_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("no/such/state.json");
        let err = write_atomic(&path, b"x").unwrap_err();
        assert!(err.to_string().contains("state.json.tmp"), "{err}");
    }

    #[test]
    fn tmp_path_is_a_sibling() {
        assert_eq!(
            tmp_path(Path::new("/esp/loader/entries/slot-b+3.conf")),
            Path::new("/esp/loader/entries/slot-b+3.conf.tmp")
        );
        assert_eq!(tmp_path(Path::new("x.json")), Path::new("./x.json.tmp"));
    }
}
