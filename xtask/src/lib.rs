//! `cargo xtask`: the build engineers' command line.
//!
//! This library holds only the argument definitions, so that the heavy host CLI (`aperture`,
//! which links libostree) parses exactly the same arguments. The binary runs the preflight, then
//! hands the same arguments to `aperture`.

pub mod args;
