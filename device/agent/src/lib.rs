//! `aperture-agent`: what runs on the appliance to report its state and guard updates.
//!
//! * [`status`]: product, version, board, the booted slot, the root mount, the A/B state from
//!   `aperture-update`, and a rollback notice when this boot came back from a failed slot.
//! * [`health`]: the health gate ordered before `boot-complete.target`: required units active,
//!   then commit the running slot (mark good, raise the anti-rollback floor) through the
//!   updater library.
//!
//! It grows into the fleet client.

pub mod command;
pub mod health;
pub mod host;
pub mod status;
