//! Releases as a fleet sees them, shared by the repository tools on the build host
//! (`aperture repo`, `aperture release`) and the appliance's update loop.
//!
//! * [`meta`]: [`ReleaseMeta`], the custom metadata of a release's TUF target (product, board,
//!   version, security version, channel, publication time, wave schedule, halt). It is signed
//!   by the targets role, so a device can trust every field of it.
//! * [`waves`]: [`Waves`], a staged rollout schedule (`1%@0h,10%@4h,50%@24h,100%@48h`), and the
//!   time at which a device with a given seed becomes eligible.
//! * [`delta`]: [`DeltaMeta`], the custom metadata of a delta target: the release it installs
//!   and the release (by rootfs root hash) it updates from.
//! * [`rollout`]: [`RolloutMeta`], a rollout as the fleet server signs it in its delegated
//!   role (state, devices, waves, pins), and the [`Gate`] that makes a release wait for one.
//! * [`select`]: [`select()`](select::select), the pure choice of what a device installs and
//!   when, with a reason for every target it passes over (the journal's one line).
//!
//! * [`settings`]: [`Settings`], the update loop's settings as the image ships them, the
//!   maintenance [`Window`], and the poll timing (jitter from the seed, backoff).
//!
//! No I/O and no clock here: the caller passes the time, so every rule is unit-tested.

pub mod delta;
pub mod meta;
pub mod rollout;
pub mod select;
pub mod settings;
pub mod waves;

pub use delta::{DeltaMeta, DELTA_KEY};
pub use meta::{ReleaseMeta, CUSTOM_KEY};
pub use rollout::{Gate, Rollout, RolloutMeta};
pub use select::{select, Candidate, Decision, Device, Skip};
pub use settings::{Settings, Window};
pub use waves::{Wave, Waves, WavesError, SEED_RANGE};
