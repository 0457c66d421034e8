//! Where the agent reads the system from. Every path is injectable so tests run against a
//! folder laid out like the appliance.

use std::path::{Path, PathBuf};

/// The system the agent looks at.
#[derive(Debug, Clone)]
pub struct Host {
    /// Root of the file system (`/` on the appliance).
    pub root: PathBuf,
}

impl Default for Host {
    fn default() -> Self {
        Host {
            root: PathBuf::from("/"),
        }
    }
}

impl Host {
    /// A host rooted somewhere else (tests).
    pub fn at(root: impl Into<PathBuf>) -> Self {
        Host { root: root.into() }
    }

    /// A path on the host.
    pub fn path(&self, p: impl AsRef<Path>) -> PathBuf {
        let p = p.as_ref();
        self.root.join(p.strip_prefix("/").unwrap_or(p))
    }

    /// The image's facts file.
    pub fn build_facts(&self) -> PathBuf {
        self.path("etc/aperture/build.json")
    }

    /// The kernel command line.
    pub fn cmdline(&self) -> PathBuf {
        self.path("proc/cmdline")
    }

    /// This process's mount table.
    pub fn mountinfo(&self) -> PathBuf {
        self.path("proc/self/mountinfo")
    }
}
