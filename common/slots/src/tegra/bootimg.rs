//! Android boot images (header version 0), the format NVIDIA's L4TLauncher loads from a Jetson
//! kernel partition (`A_kernel`, `kernel_b`, ...): a one-page header with sizes, load addresses
//! and the kernel command line, then the kernel and the initrd, each padded to whole pages.
//!
//! Layout from AOSP `system/tools/mkbootimg`, `include/bootimg/bootimg.h` (`boot_img_hdr_v0`);
//! L4T's `flash.sh` makes the kernel partition's `boot.img` with that `mkbootimg`, and edk2's
//! `AndroidBootImgLib` (used by L4TLauncher) reads it. Load addresses are mkbootimg's defaults;
//! the UEFI loader relocates the kernel anyway. The `id` field (a SHA-1 mkbootimg adds for
//! identification) is left zero: nothing on the boot path reads it, and so a header depends
//! only on the sizes and the command line: the updater can stream kernel and initrd into place
//! ([`Layout`]) and write the header last.

/// The header magic.
pub const MAGIC: &[u8; 8] = b"ANDROID!";
/// Page size (mkbootimg's default).
pub const PAGE_SIZE: u32 = 2048;
/// Bytes of the v0 header.
pub const HEADER_LEN: usize = 1632;
const CMDLINE_LEN: usize = 512;
const EXTRA_CMDLINE_LEN: usize = 1024;
const BASE: u32 = 0x1000_0000;

/// The fields of a v0 header that matter here.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    /// Kernel bytes.
    pub kernel_size: u32,
    /// Initrd bytes.
    pub ramdisk_size: u32,
    /// Page size.
    pub page_size: u32,
    /// Header version (0).
    pub header_version: u32,
    /// The full kernel command line (`cmdline` then `extra_cmdline`).
    pub cmdline: String,
}

impl Header {
    /// Bytes of the whole image: header page, kernel pages, ramdisk pages.
    pub fn image_size(&self) -> u64 {
        let page = u64::from(self.page_size);
        let pages = |n: u32| u64::from(n).div_ceil(page) * page;
        page + pages(self.kernel_size) + pages(self.ramdisk_size)
    }

    /// The layout these sizes give (at [`PAGE_SIZE`]).
    pub fn layout(&self) -> Layout {
        Layout {
            kernel_size: self.kernel_size,
            ramdisk_size: self.ramdisk_size,
        }
    }
}

/// Where the parts of a boot image go, from the kernel and initrd sizes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Layout {
    /// Kernel bytes (at most 4 GiB - 1).
    pub kernel_size: u32,
    /// Initrd bytes.
    pub ramdisk_size: u32,
}

impl Layout {
    /// The layout of a kernel and an initrd of these sizes; `None` if either passes 4 GiB.
    pub fn new(kernel_size: u64, ramdisk_size: u64) -> Option<Layout> {
        Some(Layout {
            kernel_size: u32::try_from(kernel_size).ok()?,
            ramdisk_size: u32::try_from(ramdisk_size).ok()?,
        })
    }

    fn pages(n: u32) -> u64 {
        u64::from(n).div_ceil(u64::from(PAGE_SIZE)) * u64::from(PAGE_SIZE)
    }

    /// Offset of the kernel: right after the header page.
    pub fn kernel_offset(&self) -> u64 {
        u64::from(PAGE_SIZE)
    }

    /// Offset of the initrd: after the kernel's pages.
    pub fn ramdisk_offset(&self) -> u64 {
        self.kernel_offset() + Self::pages(self.kernel_size)
    }

    /// Bytes of the whole image.
    pub fn image_size(&self) -> u64 {
        self.ramdisk_offset() + Self::pages(self.ramdisk_size)
    }
}

/// Why a header cannot be made.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "the kernel command line is {len} bytes (or holds a NUL); a boot image holds at most {max}"
)]
pub struct CmdlineTooLong {
    /// Its length.
    pub len: usize,
    /// The most a v0 header holds.
    pub max: usize,
}

/// Encode a v0 header for a kernel and initrd of the given sizes.
pub fn header(
    kernel_size: u32,
    ramdisk_size: u32,
    cmdline: &str,
) -> Result<Vec<u8>, CmdlineTooLong> {
    let max = CMDLINE_LEN - 1 + EXTRA_CMDLINE_LEN - 1;
    if cmdline.len() > max || cmdline.contains('\0') {
        return Err(CmdlineTooLong {
            len: cmdline.len(),
            max,
        });
    }
    let mut h = Vec::with_capacity(PAGE_SIZE as usize);
    h.extend_from_slice(MAGIC);
    for v in [
        kernel_size,
        BASE + 0x0000_8000, // kernel_addr
        ramdisk_size,
        BASE + 0x0100_0000, // ramdisk_addr
        0,                  // second_size
        BASE + 0x00f0_0000, // second_addr
        BASE + 0x0000_0100, // tags_addr
        PAGE_SIZE,
        0, // header_version
        0, // os_version
    ] {
        h.extend_from_slice(&v.to_le_bytes());
    }
    h.extend_from_slice(&[0u8; 16]); // name
    let bytes = cmdline.as_bytes();
    let (first, rest) = bytes.split_at(bytes.len().min(CMDLINE_LEN - 1));
    let mut field = [0u8; CMDLINE_LEN];
    field[..first.len()].copy_from_slice(first);
    h.extend_from_slice(&field);
    h.extend_from_slice(&[0u8; 32]); // id
    let mut extra = [0u8; EXTRA_CMDLINE_LEN];
    extra[..rest.len()].copy_from_slice(rest);
    h.extend_from_slice(&extra);
    debug_assert_eq!(h.len(), HEADER_LEN);
    h.resize(PAGE_SIZE as usize, 0);
    Ok(h)
}

/// Parse a v0 header; `None` when `bytes` does not start with one.
pub fn parse_header(bytes: &[u8]) -> Option<Header> {
    if bytes.len() < HEADER_LEN || &bytes[..8] != MAGIC {
        return None;
    }
    let word = |i: usize| {
        u32::from_le_bytes([
            bytes[8 + 4 * i],
            bytes[9 + 4 * i],
            bytes[10 + 4 * i],
            bytes[11 + 4 * i],
        ])
    };
    let text = |b: &[u8]| {
        let end = b.iter().position(|&c| c == 0).unwrap_or(b.len());
        String::from_utf8_lossy(&b[..end]).into_owned()
    };
    let cmd_at = 8 + 4 * 10 + 16;
    let extra_at = cmd_at + CMDLINE_LEN + 32;
    let mut cmdline = text(&bytes[cmd_at..cmd_at + CMDLINE_LEN]);
    cmdline.push_str(&text(&bytes[extra_at..extra_at + EXTRA_CMDLINE_LEN]));
    Some(Header {
        kernel_size: word(0),
        ramdisk_size: word(2),
        page_size: word(7),
        header_version: word(8),
        cmdline,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_round_trips_and_splits_long_command_lines() {
        let long = "x".repeat(700);
        let h = header(5000, 3, &long).unwrap();
        assert_eq!(h.len(), PAGE_SIZE as usize);
        let parsed = parse_header(&h).unwrap();
        assert_eq!(parsed.cmdline, long);
        assert_eq!(
            (parsed.kernel_size, parsed.ramdisk_size, parsed.page_size),
            (5000, 3, 2048)
        );
        assert_eq!(parsed.image_size(), 2048 + 6144 + 2048);
        assert_eq!(parsed.layout().image_size(), parsed.image_size());
        // cmdline field: 511 bytes and a NUL; the rest in extra_cmdline.
        assert_eq!(h[64 + 510], b'x');
        assert_eq!(h[64 + 511], 0);
        assert!(header(1, 1, &"y".repeat(1535)).is_err());
        assert!(header(1, 1, "a\0b").is_err());
    }

    #[test]
    fn layout_puts_each_part_on_a_page() {
        let l = Layout::new(3000, 10).unwrap();
        assert_eq!(l.kernel_offset(), 2048);
        assert_eq!(l.ramdisk_offset(), 2048 + 4096);
        assert_eq!(l.image_size(), 2048 + 4096 + 2048);
        let empty = Layout::new(0, 0).unwrap();
        assert_eq!(empty.image_size(), 2048);
        assert!(Layout::new(1 << 32, 0).is_none());
    }
}
