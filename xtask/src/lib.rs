//! `cargo xtask`: the build engineers' entry point. This library holds its own arguments
//! ([`args`]); the binary runs the preflight, the test tiers, and hands every other verb to
//! `aperture` or `aperture-bench`.

pub mod args;
