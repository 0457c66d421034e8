//! The root filesystem: a cached Debian base plus this build's layer (device programs,
//! overlays, generated files, enabled units), committed to the build store.

pub mod base;
pub mod generate;
pub mod layer;
pub mod overlay;
pub mod programs;
pub mod runtime;
pub mod units;
