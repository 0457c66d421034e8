//! [`FaultIo`]: power cuts for tests. It does each operation for real but counts it first; at
//! operation N it fails instead, and so does everything after it (the power is off). It keeps
//! an undo record of what was not yet durable, and [`FaultIo::power_cut`] turns the disk into
//! what a power cut could leave:
//!
//! * partition writes before their fsync, file data before its fsync, new names and removals
//!   before their folder's fsync: undone (or, the other extreme, all kept);
//! * a rename is undone until its folder is fsynced; once the folder is fsynced but the file
//!   was not fsynced again under its new name, the new name is left with 0 bytes, as vfat
//!   leaves it (Linux's `vfat_rename` writes the entry's start cluster and size only at inode
//!   writeback, which the folder's fsync does not do);
//! * with [`FaultIo::vfat_renames`], a rename is TWO operations, as vfat does it for long names:
//!   create the new name, then remove the old one; a cut between them leaves both names.
//!
//! Boot-control steps ([`Io::step`]) are counted; what a backend writes inside a step goes
//! through the seam only if the backend was built with [`super::EspThroughIo`].

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use aperture_sys::fs::parent_dir;

use super::{Io, RealIo, Space};
use crate::disk::{Disk, PartitionHandle};
use crate::UpdateError;

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
    vfat_renames: bool,
    free: Option<u64>,
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
        file_synced: bool,
        dir_synced: bool,
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

    /// Renames become two operations, as vfat does them for long names: create the new name
    /// (with the content), then remove the old name.
    pub fn vfat_renames(self) -> FaultIo {
        self.state().vfat_renames = true;
        self
    }

    /// Report `bytes` free on every file system ([`Io::space`]).
    pub fn with_free_space(self, bytes: u64) -> FaultIo {
        self.state().free = Some(bytes);
        self
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
    /// not yet made durable is undone (newest first) and renamed files whose folder was synced
    /// but which were not synced again are left empty; otherwise everything written stays (the
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
                Pending::Data { path } => truncate(&path)?,
                Pending::Created { path, old } => match old {
                    Some(bytes) => fs::write(&path, bytes),
                    None => fs::remove_file(&path).or_else(ignore_missing),
                }
                .map_err(UpdateError::file("undoing creation of", &path))?,
                Pending::Renamed {
                    from,
                    to,
                    old_to,
                    dir_synced,
                    ..
                } => {
                    if dir_synced {
                        // vfat: the new entry is durable, its start cluster and size are not.
                        truncate(&to)?;
                        continue;
                    }
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

    /// Drop undo records that are durable now.
    fn retire(&self, keep: impl Fn(&mut Pending) -> bool) {
        self.state().pending.retain_mut(keep);
    }
}

fn truncate(path: &Path) -> Result<(), UpdateError> {
    if path.exists() {
        OpenOptions::new()
            .write(true)
            .open(path)
            .and_then(|f| f.set_len(0))
            .map_err(UpdateError::file("undoing data of", path))?;
    }
    Ok(())
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
        self.retire(|p| !matches!(p, Pending::Block { label: l, .. } if *l == label));
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
        self.retire(|p| !matches!(p, Pending::Data { path: q } if q == path));
        Ok(())
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        if !self.state().vfat_renames {
            self.gate(|| format!("rename {} -> {}", from.display(), to.display()))?;
            let old_to = read_optional(to);
            fs::rename(from, to)?;
            self.record(Pending::Renamed {
                from: from.to_path_buf(),
                to: to.to_path_buf(),
                old_to,
                file_synced: false,
                dir_synced: false,
            });
            return Ok(());
        }
        self.gate(|| {
            format!(
                "rename {} -> {} (vfat: the new entry)",
                from.display(),
                to.display()
            )
        })?;
        let old = read_optional(to);
        fs::copy(from, to)?;
        self.record(Pending::Created {
            path: to.to_path_buf(),
            old,
        });
        self.gate(|| format!("rename: remove the old entry {}", from.display()))?;
        self.remove_file(from)
    }

    fn sync_path(&self, path: &Path) -> io::Result<()> {
        self.gate(|| format!("fsync {}", path.display()))?;
        File::open(path)?.sync_all()?;
        self.retire(|p| match p {
            Pending::Data { path: q } => q != path,
            Pending::Renamed {
                to,
                file_synced,
                dir_synced,
                ..
            } if to == path => {
                *file_synced = true;
                !*dir_synced
            }
            _ => true,
        });
        Ok(())
    }

    fn remove(&self, path: &Path) -> io::Result<()> {
        self.gate(|| format!("remove {}", path.display()))?;
        self.remove_file(path)
    }

    fn create_dir_all(&self, path: &Path) -> io::Result<()> {
        self.gate(|| format!("mkdir -p {}", path.display()))?;
        fs::create_dir_all(path)
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        self.gate(|| format!("fsync folder {}", dir.display()))?;
        File::open(dir)?.sync_all()?;
        // Names in this folder are durable now: created files, renames and removals in it. A
        // renamed file's content is durable only once it was fsynced under its new name too.
        let in_dir = |p: &Path| parent_dir(p) == dir;
        self.retire(|p| match p {
            Pending::Created { path, .. } | Pending::Removed { path, .. } => !in_dir(path),
            Pending::Renamed {
                to,
                file_synced,
                dir_synced,
                ..
            } if in_dir(to) => {
                *dir_synced = true;
                !*file_synced
            }
            _ => true,
        });
        Ok(())
    }

    fn step(&self, what: &str) -> io::Result<()> {
        self.gate(|| format!("boot control: {what}"))
    }

    fn space(&self, dir: &Path) -> io::Result<Space> {
        match self.state().free {
            Some(free) => Ok(Space { free, block: 512 }),
            None => RealIo.space(dir),
        }
    }
}

impl FaultIo {
    /// Remove a file, keeping its content to restore on a cut before its folder is synced.
    fn remove_file(&self, path: &Path) -> io::Result<()> {
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
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::disk::FileDisk;
    use aperture_slots::EspOps;

    fn replace(io: &FaultIo, p: &Path, bytes: &[u8]) -> Result<(), aperture_sys::FsError> {
        super::super::EspThroughIo(Arc::new(io.clone())).write_atomic(p, bytes)
    }

    #[test]
    fn a_cut_before_the_folder_sync_loses_the_rename() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("state.json");
        fs::write(&p, b"old").unwrap();
        let disk = FileDisk::new(d.path().join("none"));
        for n in 1..=5 {
            let io = FaultIo::crash_at(n);
            assert!(replace(&io, &p, b"new").is_err());
            assert!(io.crashed_at().is_some());
            io.power_cut(&disk, true).unwrap();
            assert_eq!(fs::read(&p).unwrap(), b"old", "crash at {n}");
        }
        // Without the crash, the new content is durable.
        let io = FaultIo::counting();
        replace(&io, &p, b"new").unwrap();
        io.power_cut(&disk, true).unwrap();
        assert_eq!(fs::read(&p).unwrap(), b"new");
    }

    /// The vfat failure of issue 12: write, fsync, rename, fsync the folder, but no fsync of
    /// the file under its new name: a cut leaves the new name with 0 bytes.
    #[test]
    fn a_rename_not_synced_under_its_new_name_is_left_empty() {
        let d = tempfile::tempdir().unwrap();
        let (tmp, p) = (d.path().join("x.tmp"), d.path().join("x"));
        fs::write(&tmp, b"data").unwrap();
        let io = FaultIo::counting();
        io.rename(&tmp, &p).unwrap();
        io.sync_dir(d.path()).unwrap();
        io.power_cut(&FileDisk::new(d.path().join("none")), true)
            .unwrap();
        assert_eq!(fs::read(&p).unwrap(), b"", "vfat's empty entry");
        // With the second fsync, the data stays.
        fs::write(&tmp, b"data").unwrap();
        io.rename(&tmp, &p).unwrap();
        io.sync_path(&p).unwrap();
        io.sync_dir(d.path()).unwrap();
        io.power_cut(&FileDisk::new(d.path().join("none")), true)
            .unwrap();
        assert_eq!(fs::read(&p).unwrap(), b"data");
    }

    #[test]
    fn vfat_renames_are_two_operations_and_a_cut_between_keeps_both_names() {
        let d = tempfile::tempdir().unwrap();
        let (from, to) = (d.path().join("slot-b+3.conf"), d.path().join("slot-b.conf"));
        fs::write(&from, b"entry").unwrap();
        let io = FaultIo::crash_at(2).vfat_renames();
        assert!(io.rename(&from, &to).is_err());
        assert_eq!(io.log().len(), 2);
        io.power_cut(&FileDisk::new(d.path().join("none")), false)
            .unwrap();
        assert_eq!(fs::read(&from).unwrap(), b"entry");
        assert_eq!(fs::read(&to).unwrap(), b"entry");
    }

    #[test]
    fn after_the_cut_everything_fails_and_free_space_can_be_faked() {
        let io = FaultIo::crash_at(1);
        assert!(io.step("x").is_err());
        let err = io.step("y").unwrap_err().to_string();
        assert!(err.contains("power is off"), "{err}");
        assert_eq!(io.ops(), 1);
        let io = FaultIo::counting().with_free_space(10);
        assert_eq!(io.space(Path::new("/")).unwrap().free, 10);
    }
}
