//! A loop device attached to a file, as a handle: [`LoopDevice::close`] detaches it and
//! reports failure; dropping the handle detaches it on a best-effort basis, so a failing test
//! or benchmark does not leak loop devices. Only the device this handle attached is touched.
//! Needs root (`losetup`).

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::cmd;
use crate::error::Result;

/// A loop device this process attached.
#[derive(Debug)]
pub struct LoopDevice {
    path: PathBuf,
    attached: bool,
}

impl LoopDevice {
    /// Attaches `file` to the first free loop device (`losetup -f --show FILE`).
    pub fn attach(file: &Path) -> Result<LoopDevice> {
        let path = cmd::run_text(Command::new("losetup").arg("-f").arg("--show").arg(file))?;
        Ok(LoopDevice {
            path: PathBuf::from(path),
            attached: true,
        })
    }

    /// The device node, `/dev/loopN`.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Detaches the device (`losetup -d`).
    pub fn close(mut self) -> Result<()> {
        self.attached = false;
        cmd::run(Command::new("losetup").arg("-d").arg(&self.path)).map(|_| ())
    }
}

impl Drop for LoopDevice {
    fn drop(&mut self) {
        if self.attached {
            // Best effort: there is no one to report to; `close()` is the checked path.
            let _ = cmd::run(Command::new("losetup").arg("-d").arg(&self.path));
        }
    }
}
