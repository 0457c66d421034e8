//! Aperture's image builder: recipe model and validation, rootfs assembly on a cached Debian
//! base, the ostree build store, and (for full builds) slot images, disk layouts and signed
//! outputs.
//!
//! The pipeline is a list of named steps ([`pipeline`]); each is a module here.

pub mod audit;
pub mod board;
pub mod bundle;
pub mod cache;
pub mod diff;
pub mod disk;
pub mod esp;
pub mod jetson;
pub mod keys;
pub mod model_bundle;
pub mod outputs;
pub mod pipeline;
pub mod progress;
pub mod qemu;
pub mod recipe;
pub mod rootfs;
pub mod sbkeys;
pub mod sbom;
pub mod secure_boot;
pub mod security;
pub mod slot;
pub mod store;
pub mod twin;
pub mod uki;
pub mod verify;
