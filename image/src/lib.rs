//! Aperture's image builder: recipe model and validation, rootfs assembly on a cached Debian
//! base, the ostree build store, and (for full builds) slot images, disk layouts and signed
//! outputs.
//!
//! The pipeline is a list of named steps ([`pipeline`]); each is a module here.

pub mod cmd;
pub mod diff;
pub mod pipeline;
pub mod progress;
pub mod recipe;
pub mod rootfs;
pub mod store;
