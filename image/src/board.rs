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

/// Kernel arguments that boot a slot through dm-verity: our initramfs script
/// (`image/base/.../local-top/aperture-verity`) opens the partition as `aperture-root`.
pub fn slot_cmdline(
    board: &BoardSpec,
    slot: &str,
    root_hash: &str,
    hash_offset: u64,
    extra: &str,
) -> String {
    let mut s = format!(
        "{} root=/dev/mapper/aperture-root rootfstype=erofs ro aperture.verity.roothash={root_hash} \
         aperture.verity.data=PARTLABEL=rootfs_{slot} aperture.verity.hashoffset={hash_offset} \
         aperture.slot={slot}",
        board.base_cmdline()
    );
    if !extra.trim().is_empty() {
        s.push(' ');
        s.push_str(extra.trim());
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slot_cmdline_names_the_slot_partition_and_hash() {
        let b = BoardSpec::of(Board::QemuX86_64);
        let c = slot_cmdline(&b, "b", "ab12", 4096, "quiet");
        assert!(c.contains("aperture.verity.data=PARTLABEL=rootfs_b"));
        assert!(c.contains("aperture.verity.roothash=ab12"));
        assert!(c.contains("aperture.verity.hashoffset=4096"));
        assert!(c.contains("aperture.slot=b"));
        assert!(c.ends_with(" quiet"));
        assert_eq!(b.fallback_efi(), "EFI/BOOT/BOOTX64.EFI");
    }
}
