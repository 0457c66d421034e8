//! [`SlotsLock`]: the one lock every program that changes slots or boot state takes
//! (`aperture-update install`, `commit` and `rollback`, the health gate's commit, and
//! `aperture-reset`), so that a reset cannot start while an install writes the other slot, nor
//! a commit bless a slot a reset is rewriting. It is an advisory `flock` on
//! `/run/aperture/slots.lock` (tmpfs, so a power cut releases it), and the file names the holder
//! so that the one who waits can say who it waits for.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use rustix::fs::{flock, FlockOperation};

/// Why the lock was not taken.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LockError {
    /// Another program holds it.
    #[error("{holder} holds {path} (the slots lock); wait for it to finish and try again")]
    Busy {
        /// The lock file.
        path: PathBuf,
        /// Who holds it, as it wrote itself down.
        holder: String,
    },
    /// The lock file could not be made or locked.
    #[error("cannot take the slots lock {path}")]
    Io {
        /// The lock file.
        path: PathBuf,
        /// Cause.
        #[source]
        err: std::io::Error,
    },
}

/// The held lock; dropping it releases it.
#[derive(Debug)]
pub struct SlotsLock {
    file: File,
    path: PathBuf,
}

impl SlotsLock {
    /// Take the lock at `path` for `holder` (for example `aperture-update install`), waiting
    /// at most `wait` for whoever holds it.
    pub fn acquire(path: &Path, holder: &str, wait: Duration) -> Result<SlotsLock, LockError> {
        let io = |err| LockError::Io {
            path: path.to_path_buf(),
            err,
        };
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(io)?;
        }
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(path)
            .map_err(io)?;
        let start = Instant::now();
        loop {
            match flock(&file, FlockOperation::NonBlockingLockExclusive) {
                Ok(()) => break,
                Err(rustix::io::Errno::WOULDBLOCK) if start.elapsed() < wait => {
                    std::thread::sleep(Duration::from_millis(100));
                }
                Err(rustix::io::Errno::WOULDBLOCK) => {
                    let mut holder = String::new();
                    let _ = file.read_to_string(&mut holder);
                    let holder = holder.trim();
                    return Err(LockError::Busy {
                        path: path.to_path_buf(),
                        holder: if holder.is_empty() {
                            "another program".into()
                        } else {
                            holder.to_string()
                        },
                    });
                }
                Err(e) => return Err(io(e.into())),
            }
        }
        file.set_len(0).map_err(io)?;
        file.seek(SeekFrom::Start(0)).map_err(io)?;
        writeln!(file, "{holder} (pid {})", std::process::id()).map_err(io)?;
        Ok(SlotsLock {
            file,
            path: path.to_path_buf(),
        })
    }

    /// The lock file.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for SlotsLock {
    fn drop(&mut self) {
        let _ = self.file.set_len(0);
        let _ = flock(&self.file, FlockOperation::Unlock);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn second_holder_waits_then_is_told_who_holds_it() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("run/aperture/slots.lock");
        let held = SlotsLock::acquire(&p, "aperture-update install", Duration::ZERO).unwrap();
        let t = Instant::now();
        let e = SlotsLock::acquire(&p, "aperture-reset", Duration::from_millis(300)).unwrap_err();
        assert!(t.elapsed() >= Duration::from_millis(300));
        let text = e.to_string();
        assert!(
            text.contains("aperture-update install (pid") && text.contains("try again"),
            "{text}"
        );
        drop(held);
        SlotsLock::acquire(&p, "aperture-reset", Duration::ZERO).unwrap();
    }
}
