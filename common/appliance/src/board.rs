//! The boards Aperture builds for, and what each one means to a device program: its CPU
//! architecture, how its partitions name the two slots ([`SlotLayout`]), the labels of the
//! partitions every device program shares ([`Role`]), and its boot control.
//!
//! A recipe names its board (`board = "jetson-orin-agx"`); the image builder lays the disk out
//! from this table and writes the board into `/etc/aperture/build.json`, from which every
//! device program takes it back. Nothing else guesses a board from a string.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::slot::Slot;

/// A board Aperture builds for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize, Serialize)]
pub enum Board {
    /// QEMU x86-64 with UEFI and systemd-boot: the default, testable everywhere.
    #[serde(rename = "qemu-x86_64")]
    QemuX86_64,
    /// QEMU arm64 `virt` with UEFI and systemd-boot: the Jetson userland, bootable here.
    #[serde(rename = "qemu-arm64")]
    QemuArm64,
    /// NVIDIA Jetson AGX Orin.
    #[serde(rename = "jetson-orin-agx")]
    JetsonOrinAgx,
    /// NVIDIA Jetson AGX Xavier.
    #[serde(rename = "jetson-xavier-agx")]
    JetsonXavierAgx,
}

/// A Debian architecture a board runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Arch {
    /// x86-64.
    Amd64,
    /// 64-bit Arm.
    Arm64,
}

impl Arch {
    /// The Debian name.
    pub fn debian(self) -> &'static str {
        match self {
            Arch::Amd64 => "amd64",
            Arch::Arm64 => "arm64",
        }
    }

    /// The Rust target triple device programs are built for.
    pub fn rust_target(self) -> &'static str {
        match self {
            Arch::Amd64 => "x86_64-unknown-linux-gnu",
            Arch::Arm64 => "aarch64-unknown-linux-gnu",
        }
    }
}

/// How a board's boot loader learns which slot to boot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BootControlKind {
    /// systemd-boot loader entries with boot counting on the ESP (qemu boards).
    SystemdBoot,
    /// NVIDIA's UEFI variables read by L4TLauncher (Jetson).
    Tegra,
}

/// A partition every device program agrees on, whatever the board calls it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    /// The EFI system partition.
    Esp,
    /// The raw partition holding the redundant device state ([`crate::store`]).
    State,
    /// The factory (golden) image for reset level 2 (optional).
    Factory,
    /// Encrypted device configuration (LUKS2).
    Config,
    /// Encrypted customer data (LUKS2); on boards where it is the last partition
    /// ([`Board::data_fills_disk`]) it is grown to fill the disk on first boot.
    Data,
}

impl Role {
    /// Every role, in disk order on the qemu boards.
    pub const ALL: [Role; 5] = [
        Role::Esp,
        Role::State,
        Role::Factory,
        Role::Config,
        Role::Data,
    ];
}

impl Board {
    /// Every board.
    pub const ALL: [Board; 4] = [
        Board::QemuX86_64,
        Board::QemuArm64,
        Board::JetsonOrinAgx,
        Board::JetsonXavierAgx,
    ];

    /// The recipe spelling.
    pub fn name(self) -> &'static str {
        match self {
            Board::QemuX86_64 => "qemu-x86_64",
            Board::QemuArm64 => "qemu-arm64",
            Board::JetsonOrinAgx => "jetson-orin-agx",
            Board::JetsonXavierAgx => "jetson-xavier-agx",
        }
    }

    /// The board's architecture.
    pub fn arch(self) -> Arch {
        match self {
            Board::QemuX86_64 => Arch::Amd64,
            _ => Arch::Arm64,
        }
    }

    /// Whether the board is a Jetson (NVIDIA layout, BSP input).
    pub fn is_jetson(self) -> bool {
        matches!(self, Board::JetsonOrinAgx | Board::JetsonXavierAgx)
    }

    /// How the board's partitions name a slot.
    pub fn slot_layout(self) -> SlotLayout {
        match self {
            Board::QemuX86_64 | Board::QemuArm64 => SlotLayout::Esp,
            Board::JetsonOrinAgx => SlotLayout::Tegra(ChainNaming::Prefix),
            Board::JetsonXavierAgx => SlotLayout::Tegra(ChainNaming::Suffix),
        }
    }

    /// The board's boot control.
    pub fn boot_control(self) -> BootControlKind {
        match self.slot_layout() {
            SlotLayout::Esp => BootControlKind::SystemdBoot,
            SlotLayout::Tegra(_) => BootControlKind::Tegra,
        }
    }

    /// Whether the board boots our signed UKIs under UEFI Secure Boot with our keys enrolled,
    /// so that its disk keys are sealed to that boot chain (issue 18): qemu-x86_64. Debian's
    /// AAVMF has no SMM build, so an arm64 guest could rewrite its own keys; the Jetsons'
    /// Secure Boot goes through NVIDIA's fused chain, not wired yet.
    pub fn secure_boot(self) -> bool {
        matches!(self, Board::QemuX86_64)
    }

    /// Whether the data partition is the last on the disk and grows to fill it on first boot
    /// (the qemu boards). On a Jetson it keeps the size the recipe gave it in the flash XML:
    /// NVIDIA's partitions keep their entry numbers and ours follow them (`aperture_state`,
    /// `factory`, `config`), and on Orin NVIDIA's `reserved` comes after `UDA` anyway.
    pub fn data_fills_disk(self) -> bool {
        !self.is_jetson()
    }

    /// The GPT label of a shared partition on this board. NVIDIA's layouts call the data
    /// partition `UDA` ("user data area"); the other names are ours on every board.
    pub fn partition(self, role: Role) -> &'static str {
        match (role, self.is_jetson()) {
            (Role::Esp, _) => "esp",
            (Role::State, _) => "aperture_state",
            (Role::Factory, _) => "factory",
            (Role::Config, _) => "config",
            (Role::Data, false) => "data",
            (Role::Data, true) => "UDA",
        }
    }
}

impl fmt::Display for Board {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A board name that is not one of [`Board::ALL`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown board {value:?}: Aperture builds for {}", Board::ALL.map(|b| b.name()).join(", "))]
pub struct UnknownBoard {
    /// What was given.
    pub value: String,
}

impl FromStr for Board {
    type Err = UnknownBoard;

    fn from_str(s: &str) -> Result<Board, UnknownBoard> {
        Board::ALL
            .into_iter()
            .find(|b| b.name() == s)
            .ok_or_else(|| UnknownBoard { value: s.into() })
    }
}

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
    fn slot_partition_names_per_board() {
        let qemu = Board::QemuArm64.slot_layout();
        assert_eq!(qemu.rootfs(Slot::B), "rootfs_b");
        assert_eq!(qemu.kernel(Slot::A), None);
        let orin = Board::JetsonOrinAgx.slot_layout();
        assert_eq!(
            [orin.rootfs(Slot::A), orin.rootfs(Slot::B)],
            ["APP", "APP_b"]
        );
        assert_eq!(orin.kernel(Slot::B).unwrap(), "B_kernel");
        assert_eq!(orin.kernel_dtb(Slot::A).unwrap(), "A_kernel-dtb");
        let xavier = Board::JetsonXavierAgx.slot_layout();
        assert_eq!(xavier.kernel(Slot::A).unwrap(), "kernel");
        assert_eq!(xavier.kernel_dtb(Slot::B).unwrap(), "kernel-dtb_b");
        assert_eq!(xavier.rootfs(Slot::B), "APP_b");
    }

    #[test]
    fn names_parse_and_unknown_boards_list_the_known_ones() {
        for b in Board::ALL {
            assert_eq!(b.name().parse::<Board>().unwrap(), b);
            assert_eq!(serde_json::to_string(&b).unwrap(), format!("\"{b}\""));
        }
        let e = "raspberry-pi".parse::<Board>().unwrap_err().to_string();
        assert!(
            e.contains("raspberry-pi") && e.contains("jetson-orin-agx"),
            "{e}"
        );
    }

    #[test]
    fn shared_partitions_use_nvidia_names_on_jetson() {
        assert_eq!(Board::QemuX86_64.partition(Role::Data), "data");
        assert!(Board::QemuX86_64.data_fills_disk() && Board::QemuArm64.data_fills_disk());
        assert!(
            !Board::JetsonOrinAgx.data_fills_disk() && !Board::JetsonXavierAgx.data_fills_disk()
        );
        assert_eq!(Board::JetsonOrinAgx.partition(Role::Data), "UDA");
        assert_eq!(Board::JetsonXavierAgx.partition(Role::Config), "config");
        assert_eq!(Board::JetsonOrinAgx.boot_control(), BootControlKind::Tegra);
    }
}
