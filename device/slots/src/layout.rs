//! [`SlotLayout`]: which partitions hold a slot on each board, by GPT name. The image builder
//! lays disks out with these names and the updater writes the same partitions, so both ask
//! here (the Jetson board definitions in the image crate are checked against this table).

use crate::Slot;

/// How a board's partitions name a slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SlotLayout {
    /// The qemu boards: `rootfs_a`/`rootfs_b`; kernel and initrd are files on the ESP.
    Esp,
    /// Jetson: rootfs in `APP`/`APP_b`, an Android boot image in the kernel partition and the
    /// device tree in the kernel-dtb partition of each boot chain.
    Tegra(ChainNaming),
}

/// How NVIDIA names the two boot chains' partitions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChainNaming {
    /// AGX Orin (t234): `A_kernel`, `B_kernel`.
    Prefix,
    /// AGX Xavier (t194): `kernel`, `kernel_b`.
    Suffix,
}

impl SlotLayout {
    /// The layout of a board from its recipe name; `None` for a board we do not know.
    pub fn for_board(board: &str) -> Option<SlotLayout> {
        if board.starts_with("qemu-") {
            Some(SlotLayout::Esp)
        } else if board.starts_with("jetson-orin") {
            Some(SlotLayout::Tegra(ChainNaming::Prefix))
        } else if board.starts_with("jetson-xavier") {
            Some(SlotLayout::Tegra(ChainNaming::Suffix))
        } else {
            None
        }
    }

    /// The partition holding the slot's root file system.
    pub fn rootfs(&self, slot: Slot) -> String {
        match (self, slot) {
            (SlotLayout::Esp, _) => format!("rootfs_{slot}"),
            (SlotLayout::Tegra(_), Slot::A) => "APP".into(),
            (SlotLayout::Tegra(_), Slot::B) => "APP_b".into(),
        }
    }

    /// The partition holding the slot's boot image (Jetson only).
    pub fn kernel(&self, slot: Slot) -> Option<String> {
        self.chain_partition("kernel", slot)
    }

    /// The partition holding the slot's kernel device tree (Jetson only).
    pub fn kernel_dtb(&self, slot: Slot) -> Option<String> {
        self.chain_partition("kernel-dtb", slot)
    }

    fn chain_partition(&self, base: &str, slot: Slot) -> Option<String> {
        match self {
            SlotLayout::Esp => None,
            SlotLayout::Tegra(ChainNaming::Prefix) => {
                Some(format!("{}_{base}", slot.letter().to_uppercase()))
            }
            SlotLayout::Tegra(ChainNaming::Suffix) => Some(match slot {
                Slot::A => base.to_string(),
                Slot::B => format!("{base}_b"),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_per_board() {
        let qemu = SlotLayout::for_board("qemu-arm64").unwrap();
        assert_eq!(qemu.rootfs(Slot::B), "rootfs_b");
        assert_eq!(qemu.kernel(Slot::A), None);
        let orin = SlotLayout::for_board("jetson-orin-agx").unwrap();
        assert_eq!(
            [orin.rootfs(Slot::A), orin.rootfs(Slot::B)],
            ["APP", "APP_b"]
        );
        assert_eq!(orin.kernel(Slot::B).unwrap(), "B_kernel");
        assert_eq!(orin.kernel_dtb(Slot::A).unwrap(), "A_kernel-dtb");
        let xavier = SlotLayout::for_board("jetson-xavier-agx").unwrap();
        assert_eq!(xavier.kernel(Slot::A).unwrap(), "kernel");
        assert_eq!(xavier.kernel_dtb(Slot::B).unwrap(), "kernel-dtb_b");
        assert_eq!(xavier.rootfs(Slot::B), "APP_b");
        assert_eq!(SlotLayout::for_board("raspberry-pi"), None);
    }
}
