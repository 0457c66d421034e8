//! Small system helpers every Aperture program shares, each written once:
//!
//! * [`cmd`]: the one runner of external commands ([`cmd::Cmd`]);
//! * [`fs`]: durable file writes and removals (safe on vfat too);
//! * [`mountinfo`]: the mount table parser;
//! * [`log`]: logging setup;
//! * [`tool`]: external tools in tests (missing = skip, or fail under `cargo xtask test`).

pub mod cmd;
pub mod fs;
#[cfg(feature = "log")]
pub mod log;
pub mod mountinfo;
pub mod tool;

pub use cmd::{Cmd, CmdError};
pub use fs::FsError;
