//! The [`Io`] seam: EVERY write, fsync, rename, removal and boot-control step of an install
//! goes through it, so tests can cut the power at any one of them.
//!
//! * [`RealIo`]: does the operation.
//! * [`FaultIo`]: does the operation too, but counts it first; at operation N it fails instead
//!   (and so does everything after it: the power is off). It keeps an undo record of what was
//!   not yet durable (partition writes before their fsync, file data before its fsync, renames
//!   and removals before the folder's fsync), and [`FaultIo::power_cut`] rolls those back, so a
//!   test sees the disk as a power cut could leave it. Boot-control steps are atomic in the
//!   slots crate (their own temp + rename + fsync), so they are only counted.
//!
//! Reads are not operations: they change nothing.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use crate::disk::{Disk, PartitionHandle};
use crate::UpdateError;

/// Every state-changing operation of an install.
pub trait Io {
    /// Write all of `buf` at `offset` of the partition.
    fn write_at(&self, part: &mut dyn PartitionHandle, buf: &[u8], offset: u64) -> io::Result<()> {
        part.write_all_at(buf, offset)
    }
    /// Make the partition's writes durable.
    fn sync(&self, part: &mut dyn PartitionHandle) -> io::Result<()> {
        part.sync()
    }
    /// Create (or truncate) a file for writing.
    fn create(&self, path: &Path) -> io::Result<File> {
        OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(path)
    }
    /// Append `buf` to a file made by [`Io::create`].
    fn write(&self, file: &mut File, _path: &Path, buf: &[u8]) -> io::Result<()> {
        file.write_all(buf)
    }
    /// Make a file's data durable.
    fn sync_file(&self, file: &File, _path: &Path) -> io::Result<()> {
        file.sync_all()
    }
    /// Rename within one folder, replacing `to`.
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        fs::rename(from, to)
    }
    /// Remove a file.
    fn remove(&self, path: &Path) -> io::Result<()> {
        fs::remove_file(path)
    }
    /// Create a folder and its parents.
    fn create_dir_all(&self, path: &Path) -> io::Result<()> {
        fs::create_dir_all(path)
    }
    /// Make a folder's entries (renames, new and removed names) durable.
    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        File::open(dir)?.sync_all()
    }
    /// Announce a boot-control step that the backend then makes durable by itself; an error
    /// here means the step must not happen.
    fn step(&self, _what: &str) -> io::Result<()> {
        Ok(())
    }
}

/// The real thing.
#[derive(Debug, Clone, Copy, Default)]
pub struct RealIo;

impl Io for RealIo {}

/// Replace `path` with `contents` through `io`: `<name>.tmp`, fsync, rename, fsync the folder.
pub fn replace_file(io: &dyn Io, path: &Path, contents: &[u8]) -> Result<(), UpdateError> {
    stage_file(io, path, contents)?;
    let dir = parent(path);
    io.sync_dir(&dir)
        .map_err(UpdateError::file("syncing folder", &dir))
}

/// Like [`replace_file`] without the final folder fsync, for several files in one folder
/// followed by one [`Io::sync_dir`].
pub fn stage_file(io: &dyn Io, path: &Path, contents: &[u8]) -> Result<(), UpdateError> {
    let tmp = tmp_path(path);
    let mut f = io
        .create(&tmp)
        .map_err(UpdateError::file("creating", &tmp))?;
    io.write(&mut f, &tmp, contents)
        .map_err(UpdateError::file("writing", &tmp))?;
    io.sync_file(&f, &tmp)
        .map_err(UpdateError::file("syncing", &tmp))?;
    drop(f);
    io.rename(&tmp, path)
        .map_err(UpdateError::file("renaming into place", path))
}

/// `<name>.tmp` beside `path`.
pub fn tmp_path(path: &Path) -> PathBuf {
    let mut name = path
        .file_name()
        .map(|n| n.to_os_string())
        .unwrap_or_default();
    name.push(".tmp");
    parent(path).join(name)
}

/// The folder holding `path`.
pub fn parent(path: &Path) -> PathBuf {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// Fault injection: counts operations, fails from operation N on, and can roll back what was
/// not durable. Clones share one state, so a test keeps a clone while the updater uses another.
#[derive(Debug, Clone, Default)]
pub struct FaultIo {
    inner: Arc<Mutex<FaultState>>,
}

#[derive(Debug, Default)]
struct FaultState {
    ops: usize,
    crash_at: Option<usize>,
    crashed: Option<String>,
    log: Vec<String>,
    pending: Vec<Pending>,
}

/// Something done but not yet durable, with what it takes to undo it.
#[derive(Debug)]
enum Pending {
    Block {
        label: String,
        offset: u64,
        old: Vec<u8>,
    },
    Data {
        path: PathBuf,
    },
    Created {
        path: PathBuf,
        old: Option<Vec<u8>>,
    },
    Renamed {
        from: PathBuf,
        to: PathBuf,
        old_to: Option<Vec<u8>>,
    },
    Removed {
        path: PathBuf,
        old: Vec<u8>,
    },
}

impl FaultIo {
    /// Counts operations and never fails.
    pub fn counting() -> FaultIo {
        FaultIo::default()
    }

    /// Fails at operation `n` (1-based) and at every later one.
    pub fn crash_at(n: usize) -> FaultIo {
        let io = FaultIo::default();
        io.state().crash_at = Some(n);
        io
    }

    /// Operations attempted so far (the failing one included).
    pub fn ops(&self) -> usize {
        self.state().ops
    }

    /// The description of the operation the power was cut at, if it was.
    pub fn crashed_at(&self) -> Option<String> {
        self.state().crashed.clone()
    }

    /// One line per operation attempted, in order.
    pub fn log(&self) -> Vec<String> {
        self.state().log.clone()
    }

    /// After a crash, the disk as the power cut left it: when `lose_unsynced`, every operation
    /// not yet made durable is undone (newest first); otherwise everything written stays (the
    /// other extreme: the cache happened to reach the disk). Clears the undo record.
    pub fn power_cut(&self, disk: &dyn Disk, lose_unsynced: bool) -> Result<(), UpdateError> {
        let pending = std::mem::take(&mut self.state().pending);
        if !lose_unsynced {
            return Ok(());
        }
        for p in pending.into_iter().rev() {
            match p {
                Pending::Block { label, offset, old } => {
                    let mut part = disk.open(&label)?;
                    let undo = |e| UpdateError::File {
                        op: "undoing a write to",
                        path: PathBuf::from(&label),
                        source: e,
                    };
                    part.write_all_at(&old, offset).map_err(undo)?;
                    part.sync().map_err(undo)?;
                }
                Pending::Data { path } => {
                    if path.exists() {
                        OpenOptions::new()
                            .write(true)
                            .open(&path)
                            .and_then(|f| f.set_len(0))
                            .map_err(UpdateError::file("undoing data of", &path))?;
                    }
                }
                Pending::Created { path, old } => match old {
                    Some(bytes) => fs::write(&path, bytes),
                    None => fs::remove_file(&path).or_else(ignore_missing),
                }
                .map_err(UpdateError::file("undoing creation of", &path))?,
                Pending::Renamed { from, to, old_to } => {
                    fs::rename(&to, &from).map_err(UpdateError::file("undoing rename of", &to))?;
                    if let Some(bytes) = old_to {
                        fs::write(&to, bytes).map_err(UpdateError::file("restoring", &to))?;
                    }
                }
                Pending::Removed { path, old } => {
                    fs::write(&path, old).map_err(UpdateError::file("restoring", &path))?;
                }
            }
        }
        Ok(())
    }

    fn state(&self) -> MutexGuard<'_, FaultState> {
        // A panic while the lock was held can only come from a test assertion; keep going.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Count one operation; fail if the power is (or now goes) off.
    fn gate(&self, what: impl FnOnce() -> String) -> io::Result<()> {
        let mut s = self.state();
        if let Some(at) = &s.crashed {
            return Err(io::Error::other(format!("power is off (cut at {at})")));
        }
        s.ops += 1;
        let line = format!("{}: {}", s.ops, what());
        s.log.push(line.clone());
        if s.crash_at == Some(s.ops) {
            s.crashed = Some(line.clone());
            return Err(io::Error::other(format!(
                "injected power cut at operation {line}"
            )));
        }
        Ok(())
    }

    fn record(&self, p: Pending) {
        self.state().pending.push(p);
    }
}

fn ignore_missing(e: io::Error) -> io::Result<()> {
    if e.kind() == io::ErrorKind::NotFound {
        Ok(())
    } else {
        Err(e)
    }
}

fn read_optional(path: &Path) -> Option<Vec<u8>> {
    fs::read(path).ok()
}

impl Io for FaultIo {
    fn write_at(&self, part: &mut dyn PartitionHandle, buf: &[u8], offset: u64) -> io::Result<()> {
        self.gate(|| format!("write {} bytes at {offset} of {}", buf.len(), part.label()))?;
        let mut old = vec![0u8; buf.len()];
        part.read_exact_at(&mut old, offset)?;
        self.record(Pending::Block {
            label: part.label().to_string(),
            offset,
            old,
        });
        part.write_all_at(buf, offset)
    }

    fn sync(&self, part: &mut dyn PartitionHandle) -> io::Result<()> {
        self.gate(|| format!("fsync {}", part.label()))?;
        part.sync()?;
        let label = part.label().to_string();
        self.state()
            .pending
            .retain(|p| !matches!(p, Pending::Block { label: l, .. } if *l == label));
        Ok(())
    }

    fn create(&self, path: &Path) -> io::Result<File> {
        self.gate(|| format!("create {}", path.display()))?;
        let old = read_optional(path);
        let f = RealIo.create(path)?;
        self.record(Pending::Created {
            path: path.to_path_buf(),
            old,
        });
        Ok(f)
    }

    fn write(&self, file: &mut File, path: &Path, buf: &[u8]) -> io::Result<()> {
        self.gate(|| format!("write {} bytes to {}", buf.len(), path.display()))?;
        file.write_all(buf)?;
        self.record(Pending::Data {
            path: path.to_path_buf(),
        });
        Ok(())
    }

    fn sync_file(&self, file: &File, path: &Path) -> io::Result<()> {
        self.gate(|| format!("fsync {}", path.display()))?;
        file.sync_all()?;
        self.state()
            .pending
            .retain(|p| !matches!(p, Pending::Data { path: q } if q == path));
        Ok(())
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        self.gate(|| format!("rename {} -> {}", from.display(), to.display()))?;
        let old_to = read_optional(to);
        fs::rename(from, to)?;
        self.record(Pending::Renamed {
            from: from.to_path_buf(),
            to: to.to_path_buf(),
            old_to,
        });
        Ok(())
    }

    fn remove(&self, path: &Path) -> io::Result<()> {
        self.gate(|| format!("remove {}", path.display()))?;
        let old = read_optional(path);
        fs::remove_file(path)?;
        if let Some(old) = old {
            self.record(Pending::Removed {
                path: path.to_path_buf(),
                old,
            });
        }
        Ok(())
    }

    fn create_dir_all(&self, path: &Path) -> io::Result<()> {
        self.gate(|| format!("mkdir -p {}", path.display()))?;
        fs::create_dir_all(path)
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        self.gate(|| format!("fsync folder {}", dir.display()))?;
        File::open(dir)?.sync_all()?;
        // Names in this folder are durable now: created files, renames and removals in it.
        let in_dir = |p: &Path| parent(p) == dir;
        self.state().pending.retain(|p| match p {
            Pending::Created { path, .. } | Pending::Removed { path, .. } => !in_dir(path),
            Pending::Renamed { to, .. } => !in_dir(to),
            _ => true,
        });
        Ok(())
    }

    fn step(&self, what: &str) -> io::Result<()> {
        self.gate(|| format!("boot control: {what}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replace_file_is_atomic_and_counted() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("state.json");
        let io = FaultIo::counting();
        replace_file(&io, &p, b"one").unwrap();
        assert_eq!(io.ops(), 5, "{:?}", io.log());
        assert_eq!(fs::read(&p).unwrap(), b"one");
        assert!(!tmp_path(&p).exists());
    }

    #[test]
    fn crash_before_folder_sync_loses_the_rename() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("state.json");
        fs::write(&p, b"old").unwrap();
        let disk = crate::disk::FileDisk::new(d.path().join("none"));
        for n in 1..=5 {
            let io = FaultIo::crash_at(n);
            assert!(replace_file(&io, &p, b"new").is_err());
            assert!(io.crashed_at().is_some());
            io.power_cut(&disk, true).unwrap();
            assert_eq!(fs::read(&p).unwrap(), b"old", "crash at {n}");
        }
        // Without the crash, the new content is durable.
        let io = FaultIo::counting();
        replace_file(&io, &p, b"new").unwrap();
        io.power_cut(&disk, true).unwrap();
        assert_eq!(fs::read(&p).unwrap(), b"new");
    }

    #[test]
    fn after_the_cut_everything_fails() {
        let io = FaultIo::crash_at(1);
        assert!(io.step("x").is_err());
        let err = io.step("y").unwrap_err().to_string();
        assert!(err.contains("power is off"), "{err}");
        assert_eq!(io.ops(), 1);
    }
}
