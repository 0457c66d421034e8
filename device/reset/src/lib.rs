//! `aperture-reset`: the three reset levels of an Aperture appliance, journaled so that a
//! power cut at any point is finished at the next boot (ARCHITECTURE.md, "Reset rules").
//!
//! 1. **Level 1** (short press): re-verify the known-good slot (its signed record, dm-verity
//!    of its partition, sha256 of its kernel and initrd, on Jetson of its boot image and device
//!    tree) and boot it ([`Reset::level1`]).
//! 2. **Level 2** (long press): reinstall the signed factory image from the `factory`
//!    partition (`Board::partition(Role::Factory)`) into both slots: the inactive slot first,
//!    reboot into it on trial, and once the health gate committed it, the other
//!    ([`Reset::start`], [`Reset::resume`]). A factory image below the anti-rollback floor is
//!    refused: only level 3 may install it.
//! 3. **Level 3** (very long press, or before an appliance changes hands): level 2 plus a
//!    secure wipe of `config` and `data` (`UDA` on Jetson): crypto-erase (keyslots, then the
//!    whole LUKS metadata area), discard or overwrite, sealed keys forgotten. The next boot
//!    formats the partitions afresh.
//!
//! Every board resets the same way: partitions, factory image and boot control come from the
//! board in the image's facts ([`app::boot_control`]).
//!
//! Every slot is written by the updater's installer ([`aperture_updater::Updater::install_locked`],
//! with the reset's policy) and re-verified by the updater
//! ([`aperture_updater::Updater::verify_slot`]), whatever the board's boot control: one code
//! path writes a slot. The factory image and installed slots are verified without key expiry:
//! they were verified with the clock when written
//! ([`aperture_trust::signing::VERIFIED_WHEN_WRITTEN`]).
//!
//! Modules:
//! * [`journal`]: the plan, and the reset area of the device state store (journal and
//!   consumed reset-key press); [`engine`]: running and resuming it.
//! * [`wipe`]: crypto-erase, scrub, and the `--verify` read-back; [`factory`]: the bundle in
//!   the factory partition.
//! * [`input`]: the reset key held at boot; [`seams`]: clock, reboot, discard, fault
//!   injection (also of the installer's writes, [`seams::FaultsIo`]); [`io`]: partition I/O
//!   helpers and the store; [`app`]: the command line.
//!
//! Where things are ([`aperture_appliance::Files`]), the board and its partitions
//! ([`aperture_appliance::Board`]), the image's facts ([`aperture_appliance::BuildFacts`]),
//! the device state store and the slots lock come from `aperture-appliance`; partitions, LUKS
//! and keys from `aperture-storage` (its [`aperture_storage::Disk`],
//! [`aperture_storage::Crypt`] and [`aperture_storage::KeySource`] traits), slots from
//! `aperture-slots`, bundles and verity from `aperture-trust`. Nothing reset keeps is on the
//! FAT ESP: the journal and the slot records are in the store.

pub mod app;
pub mod engine;
mod error;
pub mod factory;
pub mod input;
pub mod io;
pub mod journal;
pub mod seams;
pub mod wipe;

pub use engine::{Level1Report, Outcome, Reset, Slots};
pub use error::ResetError;
pub use journal::{Journal, Level, ResetRecord, Step};
