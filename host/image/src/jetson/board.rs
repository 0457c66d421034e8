//! The Jetson boards as data: which NVIDIA layout each uses, which BSP files it needs, and the
//! GPT of its rootfs device (NVIDIA's partitions in NVIDIA's numbering, then ours), sized from
//! the recipe with GUIDs derived from the recipe hash.

use aperture_gpt::{Guid, Layout, PartitionSpec};
use aperture_slots::Slot;

use super::error::JetsonError;
use super::nvidia::{self, files, Chain, Fill, NvPart, PartSize};
use crate::recipe::{Board, Recipe};

/// A device NVIDIA's flashing tools write, as it appears in a layout file.
#[derive(Debug, Clone, Copy)]
pub struct Device {
    /// The layout file's `type=` (`spi`, `sdmmc_boot`, `sdmmc_user`).
    pub kind: &'static str,
    /// The layout file's `instance=`.
    pub instance: u32,
    /// Partitions in NVIDIA's order.
    pub parts: &'static [NvPart],
}

/// A Jetson board definition.
#[derive(Debug)]
pub struct JetsonBoard {
    /// The recipe board.
    pub board: Board,
    /// The SoC (`t234`, `t194`).
    pub soc: &'static str,
    /// The module and carrier, in words.
    pub module: &'static str,
    /// The Jetson Linux release line this definition follows.
    pub l4t_release: &'static str,
    /// NVIDIA's layout file for rootfs A/B on this board, under `bootloader/t186ref/cfg/`.
    pub nvidia_layout: &'static str,
    /// The kernel device tree, relative to `Linux_for_Tegra/`.
    pub kernel_dtb: &'static str,
    /// The boot-chain device (QSPI on Orin, the eMMC boot partitions on Xavier).
    pub boot_device: Device,
    /// Sectors of the boot-chain device.
    pub boot_device_sectors: u64,
    /// The device that holds the root file system (the eMMC user area on both).
    pub rootfs_device: Device,
    /// BSP files needed for flashing that no partition of the tables names.
    pub flashing_files: &'static [&'static str],
}

/// Our partitions on the rootfs device, after all of NVIDIA's: every NVIDIA partition keeps
/// its NVIDIA entry number (`APP` stays `p1`, `APP_b` `p2`), and nothing NVIDIA's firmware or
/// tools look up by name changes. `config` is LUKS2 (device identity, network settings).
pub const APERTURE_PARTS: &[NvPart] = &[
    NvPart {
        name: "aperture_state",
        nv_type: "data",
        size: PartSize::State,
        chain: Chain::Shared,
        fill: Fill::State,
        start: None,
        align: None,
    },
    NvPart {
        name: "factory",
        nv_type: "data",
        size: PartSize::Factory,
        chain: Chain::Shared,
        fill: Fill::Factory,
        start: None,
        align: None,
    },
    NvPart {
        name: "config",
        nv_type: "data",
        size: PartSize::Config,
        chain: Chain::Shared,
        fill: Fill::Empty,
        start: None,
        align: None,
    },
];

/// AGX Orin.
pub static ORIN: JetsonBoard = JetsonBoard {
    board: Board::JetsonOrinAgx,
    soc: "t234",
    module: "Jetson AGX Orin (P3701-0000) on the P3737-0000 carrier",
    l4t_release: "R36.x (JetPack 6)",
    nvidia_layout: "flash_t234_qspi_sdmmc_rootfs_ab.xml",
    kernel_dtb: files::t234::DTB,
    boot_device: Device {
        kind: "spi",
        instance: 0,
        parts: nvidia::T234_QSPI,
    },
    boot_device_sectors: nvidia::T234_QSPI_SECTORS,
    rootfs_device: Device {
        kind: "sdmmc_user",
        instance: 3,
        parts: nvidia::T234_ROOTFS_DEVICE,
    },
    flashing_files: &[files::L4T_LAUNCHER],
};

/// AGX Xavier.
pub static XAVIER: JetsonBoard = JetsonBoard {
    board: Board::JetsonXavierAgx,
    soc: "t194",
    module: "Jetson AGX Xavier (P2888-0001) on the P2822-0000 carrier",
    l4t_release: "R35.x (JetPack 5)",
    nvidia_layout: "flash_t194_sdmmc_rootfs_ab.xml",
    kernel_dtb: files::t194::DTB,
    boot_device: Device {
        kind: "sdmmc_boot",
        instance: 3,
        parts: nvidia::T194_BOOT_DEVICE,
    },
    boot_device_sectors: nvidia::T194_BOOT_SECTORS,
    rootfs_device: Device {
        kind: "sdmmc_user",
        instance: 3,
        parts: nvidia::T194_ROOTFS_DEVICE,
    },
    flashing_files: &[
        files::L4T_LAUNCHER,
        files::t194::NVTBOOT_CPU,
        files::t194::NVTBOOT_RECOVERY,
        files::t194::NVTBOOT_RECOVERY_CPU,
        files::t194::NVDISP_INIT,
    ],
};

impl JetsonBoard {
    /// The definition of a Jetson board.
    pub fn of(board: Board) -> Result<&'static JetsonBoard, JetsonError> {
        match board {
            Board::JetsonOrinAgx => Ok(&ORIN),
            Board::JetsonXavierAgx => Ok(&XAVIER),
            other => Err(JetsonError::NotJetson {
                board: other.name(),
            }),
        }
    }

    /// Both boards.
    pub fn all() -> [&'static JetsonBoard; 2] {
        [&ORIN, &XAVIER]
    }

    /// The rootfs device's partitions for `recipe` in GPT entry order: NVIDIA's, then
    /// [`APERTURE_PARTS`] (`factory` only when the recipe sizes it).
    pub fn rootfs_parts(&self, recipe: &Recipe) -> Vec<NvPart> {
        let mut v = self.rootfs_device.parts.to_vec();
        v.extend(
            APERTURE_PARTS
                .iter()
                .filter(|p| p.fill != Fill::Factory || recipe.partitions.factory.is_some()),
        );
        v
    }

    fn find(&self, fill: Fill, slot: Slot) -> &'static str {
        let chain = chain_of(slot);
        self.rootfs_device
            .parts
            .iter()
            .find(|p| p.fill == fill && p.chain == chain)
            .map(|p| p.name)
            .unwrap_or("")
    }

    /// The partition holding `slot`'s root file system (`APP`, `APP_b`).
    pub fn rootfs_partition(&self, slot: Slot) -> &'static str {
        self.find(Fill::Rootfs, slot)
    }

    /// The partition holding `slot`'s boot image (`A_kernel`/`B_kernel`, `kernel`/`kernel_b`).
    pub fn kernel_partition(&self, slot: Slot) -> &'static str {
        self.find(Fill::BootImage, slot)
    }

    /// The partition holding `slot`'s kernel device tree.
    #[cfg(test)]
    pub(crate) fn dtb_partition(&self, slot: Slot) -> &'static str {
        self.find(Fill::KernelDtb, slot)
    }

    /// Bytes of a partition of the rootfs device for `recipe`.
    pub fn size_of(part: &NvPart, recipe: &Recipe) -> u64 {
        let p = &recipe.partitions;
        match part.size {
            PartSize::Bytes(b) => b,
            PartSize::Rootfs => p.rootfs.bytes(),
            PartSize::Esp => p.esp.bytes(),
            PartSize::Data => p.data.bytes(),
            PartSize::Config => p.config.bytes(),
            PartSize::State => aperture_appliance::store::PARTITION_BYTES,
            PartSize::Factory => p.factory.map(|f| f.bytes()).unwrap_or(0),
        }
    }

    /// The GPT of the rootfs device for `recipe`: names, order and pairs as NVIDIA's, sizes
    /// from the recipe where NVIDIA's depend on the product (rootfs, ESP, data), partition and
    /// disk GUIDs derived from the recipe hash like the qemu boards' (`disk.rs`).
    ///
    /// Type GUIDs follow NVIDIA's images (basic data for everything but `esp`, which is an EFI
    /// system partition); our `config` is typed LUKS. Partitions are placed in entry order on
    /// 1 MiB boundaries, so on Orin `APP`/`APP_b` come first on the disk where NVIDIA puts them
    /// last; the firmware finds partitions by name, never by place (see [`super::nvidia`]).
    pub fn layout(&self, recipe: &Recipe) -> Layout {
        let h = recipe.hash();
        let parts = self
            .rootfs_parts(recipe)
            .iter()
            .map(|p| PartitionSpec {
                name: p.name.to_string(),
                type_guid: type_guid(p),
                unique_guid: Guid::derive(&format!("aperture-partition:{h}"), p.name),
                size_bytes: Self::size_of(p, recipe),
                attributes: 0,
            })
            .collect();
        Layout::new(Guid::derive(&format!("aperture-disk:{h}"), "disk"), parts)
    }

    /// The boot-firmware files of the BSP the layout file names (each once, in table order),
    /// then the ones needed for flashing only. The kernel device tree is not among them.
    pub fn firmware_files(&self) -> Vec<&'static str> {
        let mut v: Vec<&'static str> = Vec::new();
        let parts = self
            .boot_device
            .parts
            .iter()
            .chain(self.rootfs_device.parts);
        for p in parts {
            if let Fill::Firmware(f) = p.fill {
                if f != self.kernel_dtb && !v.contains(&f) {
                    v.push(f);
                }
            }
        }
        for f in self.flashing_files {
            if !v.contains(f) {
                v.push(f);
            }
        }
        v
    }

    /// Every BSP file the build needs: kernel, device tree, then the firmware.
    pub fn required_files(&self) -> Vec<&'static str> {
        let mut v = vec![files::KERNEL, self.kernel_dtb];
        v.extend(self.firmware_files());
        v
    }

    /// Bytes of disk the rootfs-device layout needs for `recipe`: every partition rounded up
    /// to the 1 MiB alignment, plus the GPT at both ends. Recipe validation reserves a flat
    /// 512 MiB for Jetson boot partitions, which is less than NVIDIA's layouts take (about
    /// 0.95 GiB on Orin and 0.75 GiB on Xavier, plus a second ESP); a disk between the two
    /// fails here, naming the partition that does not fit.
    pub fn required_disk_bytes(&self, recipe: &Recipe) -> u64 {
        const MIB: u64 = 1 << 20;
        let parts: u64 = self
            .rootfs_parts(recipe)
            .iter()
            .map(|p| Self::size_of(p, recipe).div_ceil(MIB) * MIB)
            .sum();
        parts + 2 * MIB
    }
}

/// The chain of a slot.
pub fn chain_of(slot: Slot) -> Chain {
    match slot {
        Slot::A => Chain::A,
        Slot::B => Chain::B,
    }
}

fn type_guid(p: &NvPart) -> Guid {
    match (p.name, p.size) {
        ("esp", _) => Guid::EFI_SYSTEM,
        (_, PartSize::Config) => Guid::LINUX_LUKS,
        _ => Guid::MICROSOFT_BASIC_DATA,
    }
}
