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
    /// The BSP has no `nvidia-l4t-tools` deb, which the image takes `nvbootctrl` from.
    #[error("the Jetson Linux BSP has no nvidia-l4t-tools_<version>_arm64.deb in {}: the image takes /usr/sbin/nvbootctrl from it (the health gate's commit runs `nvbootctrl verify` to reset the firmware's boot retry count); point --bsp at a complete Jetson Linux {release} tree (NVIDIA's Jetson_Linux_R<version>_aarch64.tbz2 ships nv_tegra/l4t_deb_packages/)", dir.display())]
    NoToolsDeb {
        /// The BSP's deb folder.
        dir: PathBuf,
        /// The L4T release line expected.
        release: &'static str,
    },
    /// The BSP has more than one `nvidia-l4t-tools` deb.
    #[error("{} holds {} nvidia-l4t-tools debs ({}); a Jetson Linux tree ships one: remove all but the one of the BSP's own release", dir.display(), found.len(), found.join(", "))]
    SeveralToolsDebs {
        /// The BSP's deb folder.
        dir: PathBuf,
        /// Their file names.
        found: Vec<String>,
    },
    /// A deb lacks the file the image takes from it.
    #[error("{} has no {member}: this build takes nvbootctrl from nvidia-l4t-tools as Jetson Linux R35/R36 ship it (from R38 on NVIDIA ships it in nvidia-l4t-bootloader-utils); use the BSP release the recipe names", deb.display())]
    ToolNotInDeb {
        /// The deb.
        deb: PathBuf,
        /// The path it lacks.
        member: String,
    },
    /// A program or library from the BSP is not built for the appliance.
    #[error("{what} in {} is an ELF for {found}, not for 64-bit little-endian aarch64 (e_machine 183) as the appliance runs: use NVIDIA's BSP for Jetson (Jetson_Linux_R<version>_aarch64.tbz2)", deb.display())]
    WrongArch {
        /// The file, as the image names it.
        what: String,
        /// The deb it came from.
        deb: PathBuf,
        /// What it is built for.
        found: String,
    },
    /// A file from the BSP that should be an ELF object cannot be read as one.
    #[error("{what} in {} is not a usable ELF file ({reason}): the deb is damaged or not NVIDIA's; unpack the BSP again", deb.display())]
    BadElf {
        /// The file, as the image names it.
        what: String,
        /// The deb it came from.
        deb: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// A tool from the BSP is neither an ELF program nor a script.
    #[error("{what} in {} is neither an ELF program nor a `#!` script: the deb is damaged or not NVIDIA's; unpack the BSP again", deb.display())]
    NotAProgram {
        /// The file, as the image names it.
        what: String,
        /// The deb it came from.
        deb: PathBuf,
    },
    /// A tool is a script, and the BSP is not the synthetic test tree.
    #[error("{what} in {} is a `#!{interpreter}` script, not NVIDIA's aarch64 program: only the synthetic test BSP (host/image/fixtures/make-synthetic-bsp.sh) may carry a stand-in; point --bsp at NVIDIA's Jetson Linux tree", deb.display())]
    ScriptTool {
        /// The file, as the image names it.
        what: String,
        /// The deb it came from.
        deb: PathBuf,
        /// Its `#!` line.
        interpreter: String,
    },
    /// A tool's interpreter (`#!` line or ELF `PT_INTERP`) is not in the rootfs.
    #[error("{what} from {} runs under {interpreter}, which the rootfs does not have: add the Debian package that ships it to the recipe's packages", deb.display())]
    MissingInterpreter {
        /// The file, as the image names it.
        what: String,
        /// The deb it came from.
        deb: PathBuf,
        /// The interpreter.
        interpreter: String,
    },
    /// A shared library a BSP tool needs is nowhere to be found.
    #[error("{tool} needs the shared library {soname} (DT_NEEDED of {needed_by}), but neither the rootfs (lib/aarch64-linux-gnu, usr/lib/aarch64-linux-gnu, lib, usr/lib) nor any deb of the Jetson Linux BSP {} (nv_tegra/l4t_deb_packages) has it: add the Debian package that ships {soname} to the recipe's packages, or use the BSP release this build expects", bsp.display())]
    UnresolvedLibrary {
        /// The library's soname.
        soname: String,
        /// The file whose dynamic section names it (the tool, or a library it needs).
        needed_by: String,
        /// The tool, as the image names it.
        tool: String,
        /// The BSP root (`Linux_for_Tegra/`).
        bsp: PathBuf,
    },
    /// Something other than the BSP already puts a BSP tool into the image.
    #[error("the layer already holds /{path} (from an overlay?), but on a Jetson it comes from the BSP's nvidia-l4t-tools deb: remove it from the overlay (the synthetic test BSP carries the Jetson twin's stand-in)")]
    ToolShadowed {
        /// The image path.
        path: String,
    },
    /// `dpkg-deb` could not read a deb of the BSP.
    #[error("reading {} with dpkg-deb (a damaged deb: unpack the BSP again)", deb.display())]
    DebRead {
        /// The deb.
        deb: PathBuf,
        /// The command's failure.
        #[source]
        err: aperture_sys::CmdError,
    },
    /// A deb's file archive could not be read.
    #[error("reading the files of {} (a damaged deb: unpack the BSP again)", deb.display())]
    DebArchive {
        /// The deb.
        deb: PathBuf,
        /// The cause.
        #[source]
        err: std::io::Error,
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
