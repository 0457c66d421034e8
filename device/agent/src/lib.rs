//! `aperture-agent`: what runs on the appliance to report its state and guard updates.
//!
//! * [`status`]: product, version, board, the booted slot, the root mount, the board's slot
//!   partitions and boot control, the A/B state from `aperture-update`, and a rollback notice
//!   when this boot came back from a failed slot.
//! * [`health`]: the health gate ordered before `boot-complete.target`: required units active,
//!   then commit the running slot (mark good, raise the anti-rollback floor, on Jetson reset
//!   the firmware's boot tries) through the updater library.
//!
//! Where things are comes from the appliance contract ([`aperture_appliance::Files`]), the
//! board from the image's facts ([`aperture_appliance::BuildFacts`]), commands run through
//! `aperture_sys::Cmd`.
//! * [`update`]: the update loop (`update-loop`) and one check by hand (`check-update`),
//!   through [`aperture_client`].
//! * [`fleet`]: enrollment from a provisioning archive (`enroll`) and the report sent to the
//!   fleet server after each poll.
//! * [`firstboot`]: `enroll --first-boot`, what `aperture-enroll.service` runs: the archive's
//!   network, enrollment tried again while the server is unreachable, the USB stick's erase.
//! * [`runtime`]: the inference runtime's metrics file summarised for `status` and the
//!   fleet report: model, frames, latency, cameras; missing, stale or malformed said so.
//! * [`network`]: the provisioned network settings as a systemd-networkd file (`network`).

pub mod cli;
pub mod firstboot;
pub mod fleet;
pub mod health;
pub mod network;
pub mod runtime;
pub mod status;
pub mod update;
