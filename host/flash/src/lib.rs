//! Aperture's flasher: writing signed disk images to appliances over USB, verified, sparse,
//! read back, many at once. Host side only.
//!
//! The flow, in the order that keeps it safe:
//!
//! 1. [`image::VerifiedImage::open`]: `manifest.sig` and its key chain verify against the
//!    trusted root key, and `disk.img.zst` and `disk.img.bmap` are the files the manifest
//!    signed. A tampered build folder stops here, before any target is touched.
//! 2. [`safety::check_disk`] on facts gathered by [`host::HostFacts::gather`] (`lsblk`,
//!    mountinfo, swaps, sysfs holders): a block device must be a whole disk that holds
//!    neither the running root nor a mount, swap or dm/md device, be removable (or forced)
//!    and big enough. [`target::BlockTarget::open`] then opens it `O_EXCL`.
//! 3. [`writer::flash`] (one target) or [`writer::flash_all`] (several, one thread each):
//!    invalidate, write the mapped ranges with the partition table held back, read back and
//!    verify, then write the partition table; on failure, wipe it.
//!
//! Targets sit behind the [`target::Target`] trait, so tests flash files and inject faults.
//! [`jetson::scan`] finds Jetsons in recovery mode and the disks their flashing initrds
//! expose, so a target can be named by USB serial. [`jetson_flash::flash_jetsons`] flashes
//! Jetsons in recovery mode end to end, driving NVIDIA's tools ([`l4t`]) to boot their
//! flashing initrds and write their boot firmware around the same verified writer.
//! [`bmap`] reads and writes bmaptool's block maps; [`xml`] reads them and NVIDIA's flash
//! layouts.

pub mod bmap;
pub mod error;
pub mod host;
pub mod image;
pub mod jetson;
pub mod jetson_flash;
pub mod l4t;
pub mod lsblk;
pub mod safety;
mod stream;
pub mod target;
pub mod writer;
pub mod xml;

pub use error::{FlashError, Result};
pub use image::{Source, VerifiedImage};
pub use target::{BlockTarget, FileTarget, LoopDevice, Target};
pub use writer::{
    flash, flash_all, FlashReport, Job, NoProgress, Outcome, Progress, Stage, Unmapped,
};
