//! The kernel command line of a slot. The image builder writes the first entries with it and the
//! updater writes every later one, so both call this one function.

use crate::{Slot, SlotLayout, CMDLINE_KEY};

/// Kernel arguments that boot `slot` through dm-verity, after the board's `base` arguments;
/// the slot's data partition is named as `layout` names it (`rootfs_b`, `APP_b`).
///
/// The initramfs script `aperture-verity` (image/base/etc/initramfs-tools/scripts/local-top)
/// reads `aperture.verity.*`, opens the slot's partition as `/dev/mapper/aperture-root` and the
/// kernel mounts it read-only. systemd's own names (`roothash=`, `systemd.verity_root_*`) are
/// avoided on purpose: the real root's systemd-veritysetup-generator would act on them a second
/// time and wait 90 s for a hash partition that does not exist.
pub fn verity_cmdline(
    base: &str,
    layout: SlotLayout,
    slot: Slot,
    root_hash: &str,
    hash_offset: u64,
) -> String {
    let data = layout.rootfs(slot);
    let mut s = String::new();
    if !base.trim().is_empty() {
        s.push_str(base.trim());
        s.push(' ');
    }
    s.push_str(&format!(
        "root=/dev/mapper/aperture-root rootfstype=erofs ro aperture.verity.roothash={root_hash} \
         aperture.verity.data=PARTLABEL={data} aperture.verity.hashoffset={hash_offset} {CMDLINE_KEY}={slot}"
    ));
    s
}

/// The boot entry of `slot` for an image: its title names product and version, its command line
/// is the image's `base` arguments plus the verity root. The image builder makes a fresh disk's
/// entries with this and the updater makes every later one, so the two never differ.
pub fn slot_boot(
    product: &str,
    version: &str,
    base: &str,
    layout: SlotLayout,
    slot: Slot,
    root_hash: &str,
    hash_offset: u64,
) -> crate::SlotBoot {
    crate::SlotBoot::for_slot(
        slot,
        slot_title(product, version, slot),
        &verity_cmdline(base, layout, slot, root_hash, hash_offset),
    )
}

/// The boot entry of `slot` for an image that boots signed unified kernel images: the same
/// title, and the slot's `uki.efi`, whose `.cmdline` section is [`verity_cmdline`]'s.
pub fn uki_boot(product: &str, version: &str, slot: Slot) -> crate::SlotBoot {
    crate::SlotBoot::uki(slot, slot_title(product, version, slot))
}

/// An entry's title: product, version and slot.
pub fn slot_title(product: &str, version: &str, slot: Slot) -> String {
    format!(
        "{product} {version} (slot {})",
        slot.letter().to_uppercase()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_the_slot_partition_hash_and_slot() {
        let c = verity_cmdline(
            "console=ttyS0 panic=10",
            SlotLayout::Esp,
            Slot::B,
            "ab12",
            4096,
        );
        assert!(c.starts_with("console=ttyS0 panic=10 root=/dev/mapper/aperture-root"));
        assert!(c.contains("aperture.verity.data=PARTLABEL=rootfs_b"));
        assert!(c.contains("aperture.verity.roothash=ab12"));
        assert!(c.contains("aperture.verity.hashoffset=4096"));
        assert_eq!(Slot::from_cmdline(&c), Some(Slot::B));
        assert!(!verity_cmdline("", SlotLayout::Esp, Slot::A, "x", 0).starts_with(' '));
        let orin = aperture_appliance::Board::JetsonOrinAgx.slot_layout();
        assert!(verity_cmdline("", orin, Slot::B, "x", 0)
            .contains("aperture.verity.data=PARTLABEL=APP_b "));
    }
}
