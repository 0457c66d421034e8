//! Slot identity (`a`/`b`), how the running slot is learnt from the kernel command line, and
//! [`SlotBoot`], the description of what a slot boots (kernel, initrd, command line).

use serde::{Deserialize, Serialize};

use crate::SlotsError;

pub use aperture_appliance::slot::{Slot, CMDLINE_KEY};

/// What a slot boots: the content of its boot-loader entry.
///
/// On systemd-boot this becomes `loader/entries/slot-X*.conf`; on Tegra only `title` is kept
/// (as the slot's label), because the kernel lives in the slot's own partitions.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SlotBoot {
    /// Menu title; carries the human image version (also the slot's label).
    pub title: String,
    /// Kernel path on the ESP, e.g. `/aperture/b/vmlinuz`.
    pub linux: String,
    /// Initrd path on the ESP, e.g. `/aperture/b/initrd.img`.
    pub initrd: String,
    /// Kernel command line; must contain `aperture.slot=<slot>` for systemd-boot entries.
    pub options: String,
}

impl SlotBoot {
    /// The standard layout for `slot`: kernel and initrd under `/aperture/<slot>/`, and
    /// `options` followed by `aperture.slot=<slot>` unless it already names a slot.
    pub fn for_slot(slot: Slot, title: impl Into<String>, options: &str) -> SlotBoot {
        let options = options.trim();
        let options = if options
            .split_whitespace()
            .any(|w| w.starts_with("aperture.slot="))
        {
            options.to_string()
        } else if options.is_empty() {
            format!("{CMDLINE_KEY}={slot}")
        } else {
            format!("{options} {CMDLINE_KEY}={slot}")
        };
        SlotBoot {
            title: title.into(),
            linux: format!("/aperture/{slot}/vmlinuz"),
            initrd: format!("/aperture/{slot}/initrd.img"),
            options,
        }
    }

    /// Check that this can be written as an entry for `slot`: every field on one line,
    /// kernel and initrd named and not taken from the other slot's folder, and the command line
    /// telling the booted system which slot it runs from.
    pub fn validate(&self, slot: Slot) -> Result<(), SlotsError> {
        let invalid = |reason: String| Err(SlotsError::InvalidBoot { slot, reason });
        let fields = [
            ("title", &self.title),
            ("linux", &self.linux),
            ("initrd", &self.initrd),
            ("options", &self.options),
        ];
        for (name, value) in fields {
            if value.trim().is_empty() {
                return invalid(format!("{name} is empty"));
            }
            if value.chars().any(|c| c.is_control()) {
                return invalid(format!("{name} contains a line break or control character"));
            }
        }
        let foreign = format!("/aperture/{}/", slot.other());
        for (name, value) in [("linux", &self.linux), ("initrd", &self.initrd)] {
            if !value.starts_with('/') || value.split(['/', '\\']).any(|c| c == "..") {
                return invalid(format!(
                    "{name} {value} must be an absolute path on the ESP without `..`"
                ));
            }
            if value.starts_with(&foreign) {
                return invalid(format!(
                    "{name} {value} is in the other slot's folder {foreign}"
                ));
            }
        }
        if Slot::from_cmdline(&self.options) != Some(slot) {
            return invalid(format!(
                "options must end up naming {CMDLINE_KEY}={slot}, got {:?}",
                self.options
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_other_and_parse() {
        assert_eq!(Slot::A.to_string(), "a");
        assert_eq!(Slot::B.to_string(), "b");
        assert_eq!(Slot::A.other(), Slot::B);
        assert_eq!(Slot::B.other(), Slot::A);
        for (s, want) in [
            ("a", Slot::A),
            ("A", Slot::A),
            ("b", Slot::B),
            ("B", Slot::B),
        ] {
            assert_eq!(s.parse::<Slot>().unwrap(), want);
        }
        for bad in ["", "c", "ab", " a", "slot-a"] {
            let err = bad.parse::<Slot>().unwrap_err();
            assert!(err.to_string().contains("`a` or `b`"), "{err}");
        }
    }

    #[test]
    fn serde_is_lowercase() {
        assert_eq!(serde_json::to_string(&Slot::B).unwrap(), "\"b\"");
        assert_eq!(serde_json::from_str::<Slot>("\"a\"").unwrap(), Slot::A);
    }

    #[test]
    fn cmdline() {
        let cases = [
            (
                "BOOT_IMAGE=/x root=PARTLABEL=rootfs_b aperture.slot=b ro",
                Some(Slot::B),
            ),
            ("aperture.slot=a", Some(Slot::A)),
            ("aperture.slot=a aperture.slot=b", Some(Slot::B)),
            ("aperture.slot=b aperture.slot=c", None),
            ("aperture.slot=c", None),
            ("aperture.slot=A", None),
            ("aperture.slot=", None),
            ("xaperture.slot=a", None),
            ("aperture.slotx=a", None),
            ("quiet splash", None),
            ("", None),
        ];
        for (line, want) in cases {
            assert_eq!(Slot::from_cmdline(line), want, "{line}");
        }
    }

    #[test]
    fn slot_boot_layout_and_validation() {
        let b = SlotBoot::for_slot(Slot::B, "Aperture 1.2.0", "root=PARTLABEL=rootfs_b ro");
        assert_eq!(b.linux, "/aperture/b/vmlinuz");
        assert_eq!(b.initrd, "/aperture/b/initrd.img");
        assert_eq!(b.options, "root=PARTLABEL=rootfs_b ro aperture.slot=b");
        b.validate(Slot::B).unwrap();
        assert!(
            b.validate(Slot::A).is_err(),
            "entry for b is not valid for a"
        );

        let kept = SlotBoot::for_slot(Slot::A, "t", "aperture.slot=a quiet");
        assert_eq!(kept.options, "aperture.slot=a quiet");
        assert_eq!(
            SlotBoot::for_slot(Slot::A, "t", "").options,
            "aperture.slot=a"
        );

        let mut bad = b.clone();
        bad.title = "two\nlines".into();
        assert!(bad
            .validate(Slot::B)
            .unwrap_err()
            .to_string()
            .contains("title"));
        let mut bad = b.clone();
        bad.linux = "/aperture/a/vmlinuz".into();
        assert!(bad
            .validate(Slot::B)
            .unwrap_err()
            .to_string()
            .contains("other slot"));
        let mut bad = b.clone();
        bad.options = "root=PARTLABEL=rootfs_b".into();
        assert!(bad
            .validate(Slot::B)
            .unwrap_err()
            .to_string()
            .contains("aperture.slot=b"));
        let mut bad = b.clone();
        bad.linux = "aperture/b/vmlinuz".into();
        assert!(bad
            .validate(Slot::B)
            .unwrap_err()
            .to_string()
            .contains("absolute path"));
        let mut bad = b.clone();
        bad.initrd = "/aperture/b/../a/initrd.img".into();
        assert!(bad
            .validate(Slot::B)
            .unwrap_err()
            .to_string()
            .contains("without `..`"));
        let mut bad = b;
        bad.initrd = " ".into();
        assert!(bad
            .validate(Slot::B)
            .unwrap_err()
            .to_string()
            .contains("initrd is empty"));
    }
}
