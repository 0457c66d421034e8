//! The appliance contract: what the image builder lays out and every device program relies
//! on, defined once for both sides.
//!
//! * [`board`]: the boards, their architectures, slot partition names ([`SlotLayout`]), the
//!   labels of the shared partitions ([`Role`]) and their boot control.
//! * [`slot`]: the slot names and the running slot on the kernel command line.
//! * [`files`]: where things are on a running appliance ([`Files`]).
//! * [`facts`]: the image's description of itself ([`BuildFacts`]).
//! * [`store`]: the device's mutable state, redundant and checksummed on a raw partition.
//! * [`lock`]: the lock every program that changes slots takes.
//!
//! This crate is small and has no heavy dependencies: it runs on the appliance.

pub mod board;
pub mod facts;
pub mod files;
pub mod lock;
pub mod secure_boot;
pub mod slot;
pub mod store;

pub use board::{Arch, Board, BootControlKind, ChainNaming, Role, SlotLayout};
pub use facts::BuildFacts;
pub use files::Files;
pub use lock::SlotsLock;
pub use secure_boot::SecureBoot;
pub use slot::Slot;
pub use store::{Area, StateStore};
