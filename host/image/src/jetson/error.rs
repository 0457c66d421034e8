//! Errors of the Jetson board support: each names the object and says how to fix it.

use std::path::PathBuf;

use crate::recipe::Board;

/// A Jetson build problem.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum JetsonError {
    /// The recipe's board is not a Jetson.
    #[error("board {board} is not a Jetson board; Jetson outputs are made for jetson-orin-agx and jetson-xavier-agx only")]
    NotJetson {
        /// The board.
        board: &'static str,
    },
    /// No BSP was given: the build stops after the slot image.
    #[error("{}", missing_bsp_message(*board, pin.as_ref(), out))]
    MissingBsp {
        /// The board.
        board: Board,
        /// What the recipe pins (`[bsp]`).
        pin: Option<crate::recipe::BspPin>,
        /// Where the rootfs commit and slot image are.
        out: PathBuf,
    },
    /// A `--bsp` tarball is not the file the recipe pins.
    #[error("{file} has sha256 {actual}, but the recipe pins {release} as {expected} ([bsp] sha256): download {url} again (a partial or different download), or point --bsp at the matching file")]
    BspChecksum {
        /// The tarball given.
        file: PathBuf,
        /// Its sha256.
        actual: String,
        /// The recipe's.
        expected: String,
        /// The pinned release.
        release: String,
        /// Where to get it.
        url: String,
    },
    /// The `--bsp` folder is not a Jetson Linux tree.
    #[error("{dir} is not a Jetson Linux (L4T) BSP: it has neither Linux_for_Tegra/ nor kernel/ and bootloader/ folders; point --bsp at the folder extracted from Jetson_Linux_R<version>_aarch64.tbz2 (the one that contains Linux_for_Tegra/)")]
    NotABsp {
        /// The folder given.
        dir: PathBuf,
    },
    /// The BSP lacks files the board needs.
    #[error("the Jetson Linux BSP {dir} lacks {} file(s) that {board} needs:\n  {}\nthis build expects the L4T {release} tree for the board (as extracted from NVIDIA's Jetson Linux download); a BSP of another release names some firmware differently", missing.len(), missing.join("\n  "))]
    MissingFiles {
        /// The BSP root (`Linux_for_Tegra/`).
        dir: PathBuf,
        /// The board.
        board: &'static str,
        /// The L4T release line expected.
        release: &'static str,
        /// Missing paths, relative to the BSP root.
        missing: Vec<String>,
    },
    /// A partition's content is larger than the partition.
    #[error("{what} is {size} bytes but partition {partition} holds {capacity} bytes; {hint}")]
    TooBig {
        /// The content.
        what: String,
        /// Its size.
        size: u64,
        /// The partition.
        partition: &'static str,
        /// The partition size.
        capacity: u64,
        /// How to fix it.
        hint: &'static str,
    },
    /// A boot image field overflowed.
    #[error("the boot image {field} is {len} bytes but the Android boot image header holds at most {max}")]
    BootImageField {
        /// The field.
        field: &'static str,
        /// Its length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// A layout file could not be read.
    #[error("layout file {what} line {line}: {reason}")]
    LayoutXml {
        /// The file.
        what: String,
        /// 1-based line.
        line: usize,
        /// What is wrong.
        reason: String,
    },
}

/// The message a Jetson build prints when it has no BSP: which release and file to download,
/// from where, its checksum, and what to pass.
pub fn missing_bsp_message(
    board: Board,
    pin: Option<&crate::recipe::BspPin>,
    out: &std::path::Path,
) -> String {
    let module = match board {
        Board::JetsonXavierAgx => "Jetson AGX Xavier",
        _ => "Jetson AGX Orin",
    };
    let get = match pin {
        Some(p) => format!(
            "\x20 1. Download Jetson Linux {release}, the \"Driver Package (BSP)\" for the {module}:\n\
             \x20    {url}\n\
             \x20    (file {file}, sha256 {sha256}; the recipe's [bsp] pins it)\n\
             \x20 2. Build again with --bsp <path to {file}>: the build checks its sha256 and unpacks it\n\
             \x20    into the build cache (or pass --bsp <an unpacked Linux_for_Tegra folder>, which is not checked).",
            release = p.release,
            url = p.url,
            file = p.file,
            sha256 = p.sha256,
        ),
        None => format!(
            "\x20 1. Download the Jetson Linux \"Driver Package (BSP)\" for the {module} from\n\
             \x20    https://developer.nvidia.com/embedded/jetson-linux (the recipe pins no release: add [bsp]).\n\
             \x20 2. Build again with --bsp <that .tbz2, or its unpacked Linux_for_Tegra folder>."
        ),
    };
    format!(
        "{board} needs a Jetson Linux BSP for its kernel, device tree and boot firmware, and this build has none (no --bsp).\n\
         The rootfs commit and the slot image are ready in {out}.\n\
         To finish the build:\n{get}",
        board = board.name(),
        out = out.display(),
    )
}
