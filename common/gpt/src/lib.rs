//! GUID partition tables (UEFI 2.10 section 5.3): plan, write, read, check and wipe them on
//! image files and block devices.
//!
//! Used on the build host (the disk layout of an image), by the flasher (partition table
//! written last, wiped when a write fails) and on the appliance (finding slots by label), so it
//! stays small: crc32fast, sha2 (for [`Guid::derive`]) and thiserror, no unsafe code.
//!
//! ```
//! use aperture_gpt::{read_gpt, write_gpt, Guid, Layout, PartitionSpec};
//! # fn main() -> Result<(), aperture_gpt::GptError> {
//! let ns = "recipe:qemu-x86_64";
//! let layout = Layout::new(
//!     Guid::derive(ns, "disk"),
//!     vec![
//!         PartitionSpec::new("esp", Guid::EFI_SYSTEM, Guid::derive(ns, "esp"), 8 << 20),
//!         PartitionSpec::new("data", Guid::LINUX_FILESYSTEM, Guid::derive(ns, "data"), 0),
//!     ],
//! );
//! let mut disk = std::io::Cursor::new(vec![0u8; 32 << 20]);
//! let placed = write_gpt(&mut disk, 32 << 20, &layout)?;
//! let gpt = read_gpt(&mut disk, 32 << 20)?;
//! assert_eq!(gpt.find("data").map(|p| p.offset()), Some(placed[1].offset()));
//! # Ok(())
//! # }
//! ```
//!
//! What is written: a protective MBR (LBA 0), the primary header (LBA 1) and a 128-entry
//! array (LBA 2-33), the same array and the backup header in the last 33 sectors; all CRC32s
//! filled in; partitions on 1 MiB boundaries. The same layout and disk size always give the
//! same bytes.

mod disk;
mod error;
mod guid;
mod layout;
mod read;
mod write;

pub use error::{GptError, HeaderCopy, Result};
pub use guid::Guid;
pub use layout::{
    attr, Layout, PartitionSpec, Placed, DEFAULT_ALIGNMENT, MAX_NAME_UNITS, MAX_PARTITIONS,
    SECTOR_SIZE,
};
pub use read::{read_gpt, Gpt, Partition};
pub use write::{disk_size_of, wipe_gpt, write_gpt};
