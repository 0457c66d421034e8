//! Jetson board support of the image builder: AGX Orin (t234) and AGX Xavier (t194).
//!
//! - [`nvidia`]: NVIDIA's partition layouts for rootfs A/B, researched from public sources
//!   (cited there, with what could not be confirmed).
//! - [`board`]: the two boards as data and the GPT of their rootfs device: NVIDIA's names,
//!   pairs and numbering, sizes from the recipe, our `config` partition after NVIDIA's.
//! - [`bsp`]: the Jetson Linux (L4T) tree given with `--bsp`, checked for every file needed.
//! - [`bootimg`]: the Android boot image L4TLauncher loads from a kernel partition.
//! - [`flash_xml`]: `flash_layout.xml` for NVIDIA's flashing tools, and a reader for it.
//! - [`tools`]: NVIDIA's `nvbootctrl`, taken from the BSP's `nvidia-l4t-tools` deb into the
//!   rootfs and checked (aarch64, every shared library it needs present).
//! - [`outputs`]: the build steps after the slot image ([`build_outputs`]).
//!
//! Without `--bsp` a Jetson build makes the rootfs commit (without `nvbootctrl`) and the slot
//! image and then stops with [`JetsonError::MissingBsp`], whose message says what to download
//! and where to point `--bsp`.

pub mod board;
pub mod bootimg;
pub mod bsp;
pub mod error;
pub mod flash_xml;
pub mod nvidia;
pub mod outputs;
#[cfg(test)]
mod tests;
pub mod tools;
#[cfg(test)]
mod tools_tests;

pub use board::JetsonBoard;
pub use bsp::Bsp;
pub use error::{missing_bsp_message, JetsonError};
pub use outputs::{build_outputs, write_disk, PartitionFiles};

/// Fixed names of the Jetson-only files in the output folder (the rest are
/// [`crate::outputs::names`]).
pub mod names {
    /// The BSP's kernel, as is.
    pub const KERNEL: &str = "Image";
    /// The initrd (from the rootfs).
    pub const INITRD: &str = "initrd.img";
    /// Boot image of slot A (kernel partition `A_kernel` / `kernel`).
    pub const BOOT_A: &str = "boot_a.img";
    /// Boot image of slot B (`B_kernel` / `kernel_b`).
    pub const BOOT_B: &str = "boot_b.img";
    /// The ESP image.
    pub const ESP: &str = "esp.img";
    /// The initial device state partition (`aperture_state`).
    pub const STATE: &str = "aperture_state.img";
    /// The factory image partition (`factory`): a signed bundle of the slot artifacts.
    pub const FACTORY: &str = "factory.bundle";
    /// The BSP's boot-firmware UEFI capsule, when it has one.
    pub const CAPSULE: &str = "TEGRA_BL.Cap";
    /// The layout file for NVIDIA's flashing tools.
    pub const FLASH_LAYOUT: &str = "flash_layout.xml";
}

/// The rootfs partitions of both slots on a Jetson disk, for checks that look slots up by
/// name (`verify` looks for `rootfs_a`/`rootfs_b` on the qemu boards).
pub const ROOTFS_PARTITIONS: [&str; 2] = ["APP", "APP_b"];
