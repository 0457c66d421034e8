//! Aperture's flasher library: writing signed disk images to appliances.
//!
//! Host side only. So far it holds [`bmap`]: reading and writing bmaptool's block maps, so a
//! flasher writes only the blocks of a disk image that hold data and checks each range as it
//! goes. Block-device targets with their safety checks, USB discovery of Jetsons in recovery
//! mode and the parallel verified writer join it here.

pub mod bmap;
pub mod error;

pub use error::FlashError;
