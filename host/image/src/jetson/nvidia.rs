//! NVIDIA's partition layouts for the Jetson boards we build, as researched from public
//! sources, in the order NVIDIA numbers them. This file holds facts only; [`super::board`]
//! turns them into our GPT and [`super::flash_xml`] into a layout file for NVIDIA's tools.
//!
//! # Sources (public, read while writing this table; nothing copied)
//!
//! - **[L4T-AB-t234]** Jetson Linux R35.5.0 `bootloader/t186ref/cfg/flash_t234_qspi_sdmmc_rootfs_ab.xml`,
//!   as mirrored in `Seeed-Studio/Linux_for_Tegra` (commit `ac86fd0d`). Same partition list at
//!   R35.3.1 (commit `7b90b510`) except that R35.3.1 has no `UDA` (its `reserved` is 400 MiB
//!   larger). The `spi` device there is the QSPI boot chain, the `sdmmc_user` device the eMMC
//!   that holds the root file system.
//! - **[L4T-AB-t194]** Jetson Linux R35.6.1 `bootloader/t186ref/cfg/flash_t194_sdmmc_rootfs_ab.xml`
//!   (same mirror, commit `15771b9f`): `sdmmc_boot` (eMMC boot partitions) and `sdmmc_user`.
//! - **[flash.sh]** the same trees' `flash.sh`: `RECNAME` becomes `recovery`, `RECDTB-NAME`
//!   `recovery-dtb`; `RECSIZE` is 83886080 (older R35 used 66060288), `RECROOTFSSIZE`
//!   314572800, `LNXSIZE` 83886080; the kernel partition gets `boot.img` made by `mkbootimg`
//!   from `kernel/Image`, the initrd and the command line.
//! - **[conf]** `p3701.conf.common` (AGX Orin module) and `p2972-0000.conf.common` (AGX Xavier),
//!   same mirror: the firmware file behind each partition (`MB1FILE`, `BPFFILE`, `TOSFILE`, ...),
//!   `DTB_FILE`, and `ROOTFS_AB=1` selecting the `*_rootfs_ab.xml` layout. meta-tegra
//!   (`OE4T/meta-tegra`, `conf/machine/jetson-agx-orin-devkit.conf`,
//!   `jetson-agx-xavier-devkit.conf`) names the same device trees and base layouts
//!   (`flash_t234_qspi_sdmmc.xml`, `flash_t194_sdmmc.xml`, `BOOT_PARTITIONS_ON_EMMC = "1"` on
//!   Xavier); its wiki page "Redundant Rootfs A B Partition Support" describes the pairing of
//!   boot chain and rootfs slot.
//! - **[L4TLauncher]** `NVIDIA/edk2-nvidia`, `Silicon/NVIDIA/Application/L4TLauncher/L4TLauncher.c`,
//!   `FindPartitionInfo`: UEFI finds `APP`, `kernel`, `kernel-dtb`, `recovery` by GPT name,
//!   accepting an `A_`/`B_` prefix or an `_a`/`_b` suffix (a bare name counts as chain A), and
//!   takes the partition number from the device path. So names and pairs matter; physical
//!   placement does not. `ReadAndroidStyleKernelPartition` expects an Android boot image
//!   (`ANDROID!` header) in the kernel partition and a flat device tree in the dtb partition.
//! - **[DevGuide]** NVIDIA Jetson Linux Developer Guide R36.x, "Root File System", section "Root
//!   File System Redundancy": rootfs A in `APP`, rootfs B in `APP_b`; boot chain A always boots
//!   rootfs A and chain B rootfs B; "Update and Redundancy" for the A/B boot chain.
//!
//! # Names, order and pairs
//!
//! AGX Orin (t234), rootfs device, GPT entry number: name (size in bytes, pair):
//! `1 APP` (rootfs, slot A) · `2 APP_b` (rootfs, slot B) · `3 A_kernel` (134217728) ·
//! `4 A_kernel-dtb` (786432) · `5 A_reserved_on_user` (33161216) · `6 B_kernel` ·
//! `7 B_kernel-dtb` · `8 B_reserved_on_user` (the B twins of 3-5) · `9 recovery` (83886080) ·
//! `10 recovery-dtb` (524288) · `11 esp` (67108864, EFI system type) · `12 recovery_alt` ·
//! `13 recovery-dtb_alt` · `14 esp_alt` (fail-safe copies of 9-11, not A/B slots) ·
//! `15 UDA` (419430400) · `16 reserved` (502792192). NVIDIA gives `APP` `id="1"`, `APP_b`
//! `id="2"` and `A_kernel` `id="3"` but places `APP`/`APP_b` physically last; the boot chain
//! (`A_mb1` ... `B_adsp-fw`) lives on QSPI with `A_`/`B_` prefixes ([`T234_QSPI`]).
//!
//! AGX Xavier (t194), rootfs device (`sdmmc_user`), in entry and physical order: `APP`, `APP_b`,
//! then chain A `mts-mce`, `mts-proper`, `cpu-bootloader`, `bootloader-dtb`, `secure-os`, `eks`,
//! `bpmp-fw`, `bpmp-fw-dtb`, `xusb-fw`, `rce-fw`, `adsp-fw`, `sce-fw`, `sc7`, `kernel`,
//! `kernel-dtb`, `reserved_for_chain_A_user`, then the same fifteen with `_b` and
//! `reserved_for_chain_B_user`, then `recovery`, `recovery-dtb`, `RP1`, `RP2`, `RECROOTFS`,
//! `uefi_variables`, `esp`, `recovery_alt`, `recovery-dtb_alt`, `esp_alt`, `UDA` (the rest of the
//! device). The eMMC boot partitions hold `mb1`/`mb1_b`, `MB1_BCT`/`MB1_BCT_b`, ... ([`T194_BOOT_DEVICE`]).
//!
//! # What could not be confirmed
//!
//! - Whether every R36.x release keeps `UDA` in the Orin rootfs-A/B layout: R35.5.0 has it
//!   (400 MiB, before `reserved`), R35.3.1 folds it into `reserved`; public R36 flashing notes
//!   show it, but no R36 `flash_t234_qspi_sdmmc_rootfs_ab.xml` was available to read.
//! - The R36.x file names of a few firmware images: the module config we could read is newer
//!   (it names `uefi_t23x_general.bin`); `uefi_jetson.bin` and `tos-optee_t234.img` are the
//!   R35/R36 names the L4T trees and the brief use. The BPMP firmware default is the
//!   `TE990M-A1` SKU build; NVIDIA's flash scripts pick another one by chip SKU at flash time.
//! - Where `xusb_sil_rel_fw` (Xavier `xusb-fw`) sits in the tree: taken to be `bootloader/`.
//! - The BPMP device trees (`bpmp-fw-dtb`), BCTs, `VER` and the `cpu-bootloader` + device-tree
//!   bundle that `flash.sh` assembles are generated per board revision at flash time; this table
//!   names no file for them.
//! - Xavier's layout pins `mts-mce_b` and `recovery` to fixed offsets sized for the 32 GB eMMC;
//!   our disks are sized by the recipe, so those offsets are not reproduced.

/// Which boot chain (slot) a partition belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Chain {
    /// Chain / slot A.
    A,
    /// Chain / slot B.
    B,
    /// Shared by both chains (or a fail-safe copy that is not an A/B slot).
    Shared,
}

/// How big a partition is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PartSize {
    /// NVIDIA's fixed size in bytes.
    Bytes(u64),
    /// The recipe's `partitions.rootfs` (NVIDIA: `APPSIZE`).
    Rootfs,
    /// The recipe's `partitions.esp` (NVIDIA: 64 MiB).
    Esp,
    /// The recipe's `partitions.data` (NVIDIA: `UDA`, 400 MiB on Orin, the rest on Xavier).
    Data,
    /// The recipe's `partitions.config` (ours, not NVIDIA's).
    Config,
    /// The device state partition (ours; `aperture_appliance::store::PARTITION_BYTES`).
    State,
    /// The recipe's `partitions.factory` (ours; only when the recipe sizes it).
    Factory,
}

/// What a partition holds when we write it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fill {
    /// The slot image (`rootfs.img`).
    Rootfs,
    /// The chain's Android boot image (kernel + initrd + command line).
    BootImage,
    /// The board's kernel device tree, as a flat blob.
    KernelDtb,
    /// Our ESP image.
    Esp,
    /// The initial device state (`aperture_appliance::store`).
    State,
    /// The factory image for reset level 2 (a signed bundle of the slot artifacts).
    Factory,
    /// A boot-firmware file of the BSP (path relative to `Linux_for_Tegra/`). Not written into
    /// `disk.img`: NVIDIA's flashing tools sign and pack it; the layout file names it.
    Firmware(&'static str),
    /// Nothing from us: left empty (NVIDIA's tools generate what belongs there, or it is spare).
    Empty,
}

/// One partition of an NVIDIA layout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NvPart {
    /// GPT name (`PARTLABEL`).
    pub name: &'static str,
    /// NVIDIA's `type=` in the layout file.
    pub nv_type: &'static str,
    /// Size.
    pub size: PartSize,
    /// Boot chain.
    pub chain: Chain,
    /// Content.
    pub fill: Fill,
    /// NVIDIA's `start_location`, where the layout pins one (boot devices only).
    pub start: Option<u64>,
    /// NVIDIA's `align_boundary`, where the layout sets one.
    pub align: Option<u64>,
}

const fn p(
    name: &'static str,
    nv_type: &'static str,
    size: PartSize,
    chain: Chain,
    fill: Fill,
) -> NvPart {
    NvPart {
        name,
        nv_type,
        size,
        chain,
        fill,
        start: None,
        align: None,
    }
}

const fn aligned(mut part: NvPart, align: u64) -> NvPart {
    part.align = Some(align);
    part
}

const fn pinned(mut part: NvPart, start: u64) -> NvPart {
    part.start = Some(start);
    part
}

use Chain::{Shared, A, B};
use PartSize::Bytes;

/// BSP files behind the partitions, relative to `Linux_for_Tegra/` ([conf]).
pub mod files {
    /// The kernel (`LNXFILE` is built from it).
    pub const KERNEL: &str = "kernel/Image";
    /// The UEFI capsule for a boot-firmware update, when the BSP has one generated.
    pub const CAPSULE: &str = "bootloader/TEGRA_BL.Cap";
    /// L4TLauncher, the UEFI application on the ESP (`EFI/BOOT/BOOTAA64.efi`).
    pub const L4T_LAUNCHER: &str = "bootloader/BOOTAA64.efi";
    /// UEFI (`cpu-bootloader`), both SoCs in R35/R36.
    pub const UEFI: &str = "bootloader/uefi_jetson.bin";
    /// ADSP firmware, both SoCs.
    pub const ADSP: &str = "bootloader/adsp-fw.bin";
    /// NVIDIA's Debian packages of the Jetson userspace, R35/R36 trees (`apply_binaries.sh`
    /// installs them into NVIDIA's sample rootfs). The image takes `nvbootctrl` from one of
    /// them (`jetson::tools`); their names carry a build stamp
    /// (`nvidia-l4t-tools_36.4.3-20250107174145_arm64.deb`), so they are found by pattern, not
    /// listed among the required files.
    pub const L4T_DEBS: &str = "nv_tegra/l4t_deb_packages";

    /// AGX Orin (t234) boot firmware.
    pub mod t234 {
        /// MB1 (`MB1FILE`).
        pub const MB1: &str = "bootloader/mb1_t234_prod.bin";
        /// PSC BL1 (`PSCBL1FILE`).
        pub const PSC_BL1: &str = "bootloader/psc_bl1_t234_prod.bin";
        /// TSEC firmware (`TSECFW`).
        pub const TSEC: &str = "bootloader/tsec_t234.bin";
        /// NVDEC firmware (`NVHOSTNVDEC`).
        pub const NVDEC: &str = "bootloader/nvdec_t234_prod.fw";
        /// MB2 (`MB2BLFILE`).
        pub const MB2: &str = "bootloader/mb2_t234.bin";
        /// XUSB firmware (`XUSBFILE`).
        pub const XUSB: &str = "bootloader/xusb_t234_prod.bin";
        /// BPMP firmware (`BPFFILE`, AGX Orin default SKU build).
        pub const BPMP: &str = "bootloader/bpmp_t234-TE990M-A1_prod.bin";
        /// PSC firmware (`PSCFW`).
        pub const PSC_FW: &str = "bootloader/pscfw_t234_prod.bin";
        /// MCE microcode (`MTSMCEFILE`).
        pub const MCE: &str = "bootloader/mce_flash_o10_cr_prod.bin";
        /// SC7 warm-boot firmware (`WB0BOOT`).
        pub const SC7: &str = "bootloader/sc7_t234_prod.bin";
        /// PSC RF (`PSC_RF`).
        pub const PSC_RF: &str = "bootloader/psc_rf_t234_prod.bin";
        /// MB2 RF (`MB2_RF`).
        pub const MB2_RF: &str = "bootloader/mb2rf_t234.bin";
        /// Trusted OS (OP-TEE) image.
        pub const TOS: &str = "bootloader/tos-optee_t234.img";
        /// Encrypted key store (`EKSFILE`).
        pub const EKS: &str = "bootloader/eks_t234.img";
        /// Display controller firmware (`DCE`).
        pub const DCE: &str = "bootloader/display-t234-dce.bin";
        /// SPE firmware (`SPEFILE`).
        pub const SPE: &str = "bootloader/spe_t234.bin";
        /// Camera RTCPU firmware (`CAMERAFW`).
        pub const RCE: &str = "bootloader/camera-rtcpu-t234-rce.img";
        /// The kernel device tree of the AGX Orin developer kit (P3701-0000 on P3737-0000).
        pub const DTB: &str = "kernel/dtb/tegra234-p3701-0000-p3737-0000.dtb";
    }

    /// AGX Xavier (t194) boot firmware.
    pub mod t194 {
        /// MB1 (`MB1FILE`, production fuse build).
        pub const MB1: &str = "bootloader/mb1_t194_prod.bin";
        /// SPE firmware (`SPEFILE`).
        pub const SPE: &str = "bootloader/spe_t194.bin";
        /// MB2, "TegraBoot" (`TEGRABOOT`).
        pub const NVTBOOT: &str = "bootloader/nvtboot_t194.bin";
        /// CPU-side TegraBoot used while flashing over USB (`BOOTLOADER`).
        pub const NVTBOOT_CPU: &str = "bootloader/nvtboot_cpu_t194.bin";
        /// Recovery MB2 used while flashing (`MB2BLFILE`).
        pub const NVTBOOT_RECOVERY: &str = "bootloader/nvtboot_recovery_t194.bin";
        /// Recovery CPU binary used while flashing (`FLASHER`).
        pub const NVTBOOT_RECOVERY_CPU: &str = "bootloader/nvtboot_recovery_cpu_t194.bin";
        /// Denver preboot firmware (`MTSPREBOOT`).
        pub const PREBOOT: &str = "bootloader/preboot_c10_prod_cr.bin";
        /// MCE microcode (`MTS_MCE`).
        pub const MCE: &str = "bootloader/mce_c10_prod_cr.bin";
        /// MTS microcode (`MTSPROPER`).
        pub const MTS: &str = "bootloader/mts_c10_prod_cr.bin";
        /// Display init blob that precedes UEFI in `cpu-bootloader` (`TBCFILE`).
        pub const NVDISP_INIT: &str = "bootloader/nvdisp-init.bin";
        /// Trusted OS (OP-TEE) image.
        pub const TOS: &str = "bootloader/tos-optee_t194.img";
        /// Encrypted key store (`EKSFILE`).
        pub const EKS: &str = "bootloader/eks_t194.img";
        /// BPMP firmware (`BPFFILE`).
        pub const BPMP: &str = "bootloader/bpmp-2_t194.bin";
        /// XUSB firmware (layout file name `xusb_sil_rel_fw`).
        pub const XUSB: &str = "bootloader/xusb_sil_rel_fw";
        /// Camera RTCPU firmware (`CAMERAFW`).
        pub const RCE: &str = "bootloader/camera-rtcpu-t194-rce.img";
        /// Warm-boot firmware (`WB0BOOT`, production fuse build).
        pub const WARMBOOT: &str = "bootloader/warmboot_t194_prod.bin";
        /// The kernel (and bootloader) device tree of the AGX Xavier developer kit.
        pub const DTB: &str = "kernel/dtb/tegra194-p2888-0001-p2822-0000.dtb";
    }
}

use files::{t194, t234, ADSP, UEFI};
use Fill::{Empty, Firmware};

/// `RECSIZE` and `LNXSIZE` ([flash.sh]).
const RECOVERY: u64 = 83_886_080;
const DTB_512K: u64 = 524_288;

/// AGX Orin rootfs device (`sdmmc_user`) in GPT entry order ([L4T-AB-t234]).
pub const T234_ROOTFS_DEVICE: &[NvPart] = &[
    aligned(p("APP", "data", PartSize::Rootfs, A, Fill::Rootfs), 16384),
    aligned(p("APP_b", "data", PartSize::Rootfs, B, Fill::Rootfs), 16384),
    p("A_kernel", "kernel", Bytes(134_217_728), A, Fill::BootImage),
    p(
        "A_kernel-dtb",
        "kernel_dtb",
        Bytes(786_432),
        A,
        Fill::KernelDtb,
    ),
    p("A_reserved_on_user", "data", Bytes(33_161_216), A, Empty),
    p("B_kernel", "kernel", Bytes(134_217_728), B, Fill::BootImage),
    p(
        "B_kernel-dtb",
        "kernel_dtb",
        Bytes(786_432),
        B,
        Fill::KernelDtb,
    ),
    p("B_reserved_on_user", "data", Bytes(33_161_216), B, Empty),
    p("recovery", "kernel", Bytes(RECOVERY), Shared, Empty),
    p("recovery-dtb", "kernel_dtb", Bytes(DTB_512K), Shared, Empty),
    p("esp", "data", PartSize::Esp, Shared, Fill::Esp),
    p("recovery_alt", "kernel", Bytes(RECOVERY), Shared, Empty),
    p(
        "recovery-dtb_alt",
        "kernel_dtb",
        Bytes(DTB_512K),
        Shared,
        Empty,
    ),
    p("esp_alt", "data", PartSize::Esp, Shared, Empty),
    aligned(p("UDA", "data", PartSize::Data, Shared, Empty), 16384),
    p("reserved", "data", Bytes(502_792_192), Shared, Empty),
];

/// The AGX Orin QSPI ([L4T-AB-t234], `spi` device): `BCT`, chain A (`A_` prefix), chain B
/// (`B_` prefix, the same list), then the shared tail. The chain is written once and expanded
/// for both prefixes so the two can never differ.
macro_rules! t234_qspi {
    ($( ($name:literal, $ty:literal, $size:expr, $fill:expr) ),* $(,)?) => {
        &[
            p("BCT", "boot_config_table", Bytes(1_048_576), Shared, Empty),
            $( aligned(p(concat!("A_", $name), $ty, Bytes($size), A, $fill), qspi_align($name)), )*
            $( aligned(p(concat!("B_", $name), $ty, Bytes($size), B, $fill), qspi_align($name)), )*
            aligned(p("uefi_variables", "data", Bytes(262_144), Shared, Empty), 65_536),
            aligned(p("uefi_ftw", "data", Bytes(524_288), Shared, Empty), 65_536),
            pinned(aligned(p("worm", "data", Bytes(196_608), Shared, Empty), 65_536), 0x3F7_0000),
            pinned(aligned(p("BCT-boot-chain_backup", "data", Bytes(65_536), Shared, Empty), 65_536), 0x3FA_0000),
            aligned(p("reserved_partition", "data", Bytes(65_536), Shared, Empty), 65_536),
            aligned(p("secondary_gpt_backup", "data", Bytes(65_536), Shared, Empty), 65_536),
            pinned(aligned(p("B_VER", "data", Bytes(65_536), B, Empty), 65_536), 0x3FD_0000),
            aligned(p("A_VER", "data", Bytes(65_536), A, Empty), 65_536),
        ]
    };
}

/// MB1 is aligned to 256 KiB on the QSPI, everything else to 64 KiB.
const fn qspi_align(name: &str) -> u64 {
    let (a, b) = (name.as_bytes(), b"mb1");
    if a.len() == b.len() && a[0] == b[0] && a[1] == b[1] && a[2] == b[2] {
        262_144
    } else {
        65_536
    }
}

/// The AGX Orin QSPI boot device, in NVIDIA's order.
pub const T234_QSPI: &[NvPart] = t234_qspi![
    ("mb1", "mb1_bootloader", 524_288, Firmware(t234::MB1)),
    ("psc_bl1", "psc_bl1", 262_144, Firmware(t234::PSC_BL1)),
    ("MB1_BCT", "mb1_boot_config_table", 131_072, Empty),
    ("MEM_BCT", "mem_boot_config_table", 262_144, Empty),
    ("tsec-fw", "tsec_fw", 1_048_576, Firmware(t234::TSEC)),
    ("nvdec", "nvdec", 1_048_576, Firmware(t234::NVDEC)),
    ("mb2", "mb2_bootloader", 524_288, Firmware(t234::MB2)),
    ("xusb-fw", "xusb_fw", 262_144, Firmware(t234::XUSB)),
    ("bpmp-fw", "bpmp_fw", 1_572_864, Firmware(t234::BPMP)),
    ("bpmp-fw-dtb", "bpmp_fw_dtb", 4_194_304, Empty),
    ("psc-fw", "psc_fw", 786_432, Firmware(t234::PSC_FW)),
    ("mts-mce", "mts_mce", 524_288, Firmware(t234::MCE)),
    ("sc7", "WB0", 196_608, Firmware(t234::SC7)),
    ("pscrf", "psc_rf", 196_608, Firmware(t234::PSC_RF)),
    ("mb2rf", "mb2rf", 131_072, Firmware(t234::MB2_RF)),
    (
        "cpu-bootloader",
        "bootloader_stage2",
        3_670_016,
        Firmware(UEFI)
    ),
    ("secure-os", "tos", 4_194_304, Firmware(t234::TOS)),
    ("smm-fw", "data", 2_097_152, Empty),
    ("eks", "eks", 262_144, Firmware(t234::EKS)),
    ("dce-fw", "dce_fw", 5_242_880, Firmware(t234::DCE)),
    ("spe-fw", "spe_fw", 589_824, Firmware(t234::SPE)),
    ("rce-fw", "rce_fw", 1_048_576, Firmware(t234::RCE)),
    ("adsp-fw", "ape_fw", 2_097_152, Firmware(ADSP)),
    ("reserved_on_boot", "data", 1_376_256, Empty),
];

/// Sectors of the AGX Orin QSPI (64 MiB).
pub const T234_QSPI_SECTORS: u64 = 131_072;

/// The AGX Xavier rootfs device ([L4T-AB-t194], `sdmmc_user`) in GPT entry order: `APP`,
/// `APP_b`, chain A, chain B (the same list with `_b`), then the shared tail. Written once and
/// expanded for both chains.
macro_rules! t194_user {
    ($( ($name:literal, $ty:literal, $size:expr, $fill:expr) ),* $(,)?) => {
        &[
            aligned(p("APP", "data", PartSize::Rootfs, A, Fill::Rootfs), 4096),
            aligned(p("APP_b", "data", PartSize::Rootfs, B, Fill::Rootfs), 4096),
            $( p($name, $ty, Bytes($size), A, $fill), )*
            p("reserved_for_chain_A_user", "data", Bytes(33_554_432), A, Empty),
            $( p(concat!($name, "_b"), $ty, Bytes($size), B, $fill), )*
            p("reserved_for_chain_B_user", "data", Bytes(34_078_720), B, Empty),
            p("recovery", "kernel", Bytes(RECOVERY), Shared, Empty),
            p("recovery-dtb", "kernel_dtb", Bytes(DTB_512K), Shared, Empty),
            p("RP1", "data", Bytes(8_388_608), Shared, Empty),
            p("RP2", "data", Bytes(8_388_608), Shared, Empty),
            p("RECROOTFS", "data", Bytes(314_572_800), Shared, Empty),
            p("uefi_variables", "data", Bytes(131_072), Shared, Empty),
            p("esp", "data", PartSize::Esp, Shared, Fill::Esp),
            p("recovery_alt", "kernel", Bytes(RECOVERY), Shared, Empty),
            p("recovery-dtb_alt", "kernel_dtb", Bytes(DTB_512K), Shared, Empty),
            p("esp_alt", "data", PartSize::Esp, Shared, Empty),
            aligned(p("UDA", "data", PartSize::Data, Shared, Empty), 4096),
        ]
    };
}

/// The AGX Xavier rootfs device, in NVIDIA's order.
pub const T194_ROOTFS_DEVICE: &[NvPart] = t194_user![
    ("mts-mce", "mts_mce", 163_840, Firmware(t194::MCE)),
    ("mts-proper", "mts_proper", 4_194_304, Firmware(t194::MTS)),
    (
        "cpu-bootloader",
        "bootloader_stage2",
        4_194_304,
        Firmware(UEFI)
    ),
    ("bootloader-dtb", "bl_dtb", DTB_512K, Firmware(t194::DTB)),
    ("secure-os", "tos", 2_621_440, Firmware(t194::TOS)),
    ("eks", "eks", 65_536, Firmware(t194::EKS)),
    ("bpmp-fw", "bpmp_fw", 1_572_864, Firmware(t194::BPMP)),
    ("bpmp-fw-dtb", "bpmp_fw_dtb", 1_048_576, Empty),
    ("xusb-fw", "xusb_fw", 163_840, Firmware(t194::XUSB)),
    ("rce-fw", "rce_fw", 2_097_152, Firmware(t194::RCE)),
    ("adsp-fw", "ape_fw", 2_097_152, Firmware(ADSP)),
    ("sce-fw", "sce_fw", 1_048_576, Empty),
    ("sc7", "WB0", 131_072, Firmware(t194::WARMBOOT)),
    ("kernel", "kernel", RECOVERY, Fill::BootImage),
    ("kernel-dtb", "kernel_dtb", DTB_512K, Fill::KernelDtb),
];

/// The AGX Xavier eMMC boot partitions (`sdmmc_boot`, 8 MiB) ([L4T-AB-t194]).
pub const T194_BOOT_DEVICE: &[NvPart] = &[
    p("BCT", "boot_config_table", Bytes(32_768), Shared, Empty),
    p(
        "mb1",
        "mb1_bootloader",
        Bytes(262_144),
        A,
        Firmware(t194::MB1),
    ),
    p(
        "mb1_b",
        "mb1_bootloader",
        Bytes(262_144),
        B,
        Firmware(t194::MB1),
    ),
    p("MB1_BCT", "mb1_boot_config_table", Bytes(65_536), A, Empty),
    p("MEM_BCT", "mem_boot_config_table", Bytes(229_376), A, Empty),
    p("spe-fw", "spe_fw", Bytes(262_144), A, Firmware(t194::SPE)),
    p(
        "mb2",
        "mb2_bootloader",
        Bytes(229_376),
        A,
        Firmware(t194::NVTBOOT),
    ),
    p(
        "mts-preboot",
        "mts_preboot",
        Bytes(32_768),
        A,
        Firmware(t194::PREBOOT),
    ),
    p(
        "reserved_for_chain_A_boot",
        "data",
        Bytes(2_097_152),
        A,
        Empty,
    ),
    pinned(
        p(
            "MB1_BCT_b",
            "mb1_boot_config_table",
            Bytes(65_536),
            B,
            Empty,
        ),
        0x35_0000,
    ),
    p(
        "MEM_BCT_b",
        "mem_boot_config_table",
        Bytes(229_376),
        B,
        Empty,
    ),
    p("spe-fw_b", "spe_fw", Bytes(262_144), B, Firmware(t194::SPE)),
    p(
        "mb2_b",
        "mb2_bootloader",
        Bytes(229_376),
        B,
        Firmware(t194::NVTBOOT),
    ),
    p(
        "mts-preboot_b",
        "mts_preboot",
        Bytes(32_768),
        B,
        Firmware(t194::PREBOOT),
    ),
    p(
        "reserved_for_chain_B_boot",
        "data",
        Bytes(2_097_152),
        B,
        Empty,
    ),
    pinned(
        p(
            "BCT-boot-chain_backup",
            "data",
            Bytes(65_536),
            Shared,
            Empty,
        ),
        0x7A_0000,
    ),
    p("reserved_partition", "data", Bytes(65_536), Shared, Empty),
    p("secondary_gpt_backup", "data", Bytes(65_536), Shared, Empty),
    pinned(p("VER_b", "data", Bytes(65_536), B, Empty), 0x7D_0000),
    p("VER", "data", Bytes(65_536), A, Empty),
];

/// Sectors of the AGX Xavier eMMC boot partitions (8 MiB).
pub const T194_BOOT_SECTORS: u64 = 16_384;
