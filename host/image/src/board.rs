//! What differs between boards, as data: boot files, consoles, kernel command lines, QEMU
//! machines. The pipeline asks the board; it never branches on board names itself.

use crate::recipe::{Arch, Board};

/// How a board boots and is emulated.
#[derive(Debug, Clone)]
pub struct BoardSpec {
    /// The board.
    pub board: Board,
    /// EFI architecture suffix (`x64`, `aa64`): names `BOOT<ARCH>.EFI` and systemd-boot's binary.
    pub efi_arch: &'static str,
    /// Serial console device for the kernel.
    pub console: &'static str,
    /// Whether the kernel and initrd come from the rootfs (Debian) rather than a BSP.
    pub kernel_from_rootfs: bool,
    /// Whether the disk uses systemd-boot on a GPT ESP with our layout (QEMU boards).
    pub systemd_boot: bool,
}

impl BoardSpec {
    /// The spec of a board.
    pub fn of(board: Board) -> BoardSpec {
        match board {
            Board::QemuX86_64 => BoardSpec {
                board,
                efi_arch: "x64",
                console: "ttyS0",
                kernel_from_rootfs: true,
                systemd_boot: true,
            },
            Board::QemuArm64 => BoardSpec {
                board,
                efi_arch: "aa64",
                console: "ttyAMA0",
                kernel_from_rootfs: true,
                systemd_boot: true,
            },
            Board::JetsonOrinAgx | Board::JetsonXavierAgx => BoardSpec {
                board,
                efi_arch: "aa64",
                console: "ttyTCU0",
                kernel_from_rootfs: false,
                systemd_boot: false,
            },
        }
    }

    /// The systemd-boot binary inside the rootfs (package systemd-boot-efi).
    pub fn systemd_boot_efi(&self) -> String {
        format!("usr/lib/systemd/boot/efi/systemd-boot{}.efi", self.efi_arch)
    }

    /// systemd's UEFI stub inside the rootfs (package systemd-boot-efi), which UKIs are made
    /// from.
    pub fn uki_stub(&self) -> String {
        format!("usr/lib/systemd/boot/efi/linux{}.efi.stub", self.efi_arch)
    }

    /// The removable-media boot path firmware looks for on the ESP.
    pub fn fallback_efi(&self) -> String {
        format!("EFI/BOOT/BOOT{}.EFI", self.efi_arch.to_uppercase())
    }

    /// Kernel arguments every slot of this board gets, before the slot's own.
    pub fn base_cmdline(&self) -> String {
        // panic=10: a slot whose root cannot be verified reboots, so boot counting moves on.
        format!("console={} panic=10 rootwait", self.console)
    }

    /// The architecture.
    pub fn arch(&self) -> Arch {
        self.board.arch()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn boot_paths_follow_the_efi_architecture() {
        let b = BoardSpec::of(Board::QemuX86_64);
        assert_eq!(b.fallback_efi(), "EFI/BOOT/BOOTX64.EFI");
        assert_eq!(
            b.systemd_boot_efi(),
            "usr/lib/systemd/boot/efi/systemd-bootx64.efi"
        );
        assert!(b.base_cmdline().contains("console=ttyS0"));
        assert_eq!(
            BoardSpec::of(Board::QemuArm64).fallback_efi(),
            "EFI/BOOT/BOOTAA64.EFI"
        );
    }
}
