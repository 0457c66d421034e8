//! Slot identity (`a`/`b`), how the running slot is learnt from the kernel command line, and
//! [`SlotBoot`], the description of what a slot boots (kernel, initrd, command line).

use serde::{Deserialize, Serialize};

use crate::SlotsError;

pub use aperture_appliance::slot::{Slot, CMDLINE_KEY};

/// What a slot boots: the content of its boot-loader entry.
///
/// On systemd-boot this becomes `loader/entries/slot-X*.conf`; on Tegra only `title` is kept
/// (as the slot's label), because the kernel lives in the slot's own partitions.
///
/// Two shapes: a kernel with its initrd and command line ([`SlotBoot::for_slot`]), or a signed
/// unified kernel image ([`SlotBoot::uki`]), which carries initrd and command line inside its
/// signature, so its entry has neither: under Secure Boot the stub would ignore an `options`
/// line, and systemd-boot would still measure it into PCR 12.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SlotBoot {
    /// Menu title; carries the human image version (also the slot's label).
    pub title: String,
    /// Kernel (or UKI) path on the ESP, e.g. `/aperture/b/uki.efi`.
    pub linux: String,
    /// Initrd path on the ESP, e.g. `/aperture/b/initrd.img`; none for a UKI.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub initrd: Option<String>,
    /// Kernel command line; must contain `aperture.slot=<slot>` when present. None for a UKI,
    /// whose `.cmdline` section names the slot.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub options: Option<String>,
}

pub use aperture_appliance::files::rel::UKI_FILE;

impl SlotBoot {
    /// The standard layout for `slot`: kernel and initrd under `/aperture/<slot>/`, and
    /// `options` followed by `aperture.slot=<slot>` unless it already names a slot.
    pub fn for_slot(slot: Slot, title: impl Into<String>, options: &str) -> SlotBoot {
        SlotBoot {
            title: title.into(),
            linux: format!("/aperture/{slot}/vmlinuz"),
            initrd: Some(format!("/aperture/{slot}/initrd.img")),
            options: Some(with_slot(slot, options)),
        }
    }

    /// A signed unified kernel image for `slot`: `/aperture/<slot>/uki.efi`, nothing else.
    pub fn uki(slot: Slot, title: impl Into<String>) -> SlotBoot {
        SlotBoot {
            title: title.into(),
            linux: format!("/aperture/{slot}/{UKI_FILE}"),
            initrd: None,
            options: None,
        }
    }

    /// Whether this entry boots a unified kernel image (no initrd, no options).
    pub fn is_uki(&self) -> bool {
        self.initrd.is_none() && self.options.is_none()
    }

    /// The ESP paths this entry needs: the kernel or UKI, and the initrd if any.
    pub fn files(&self) -> Vec<(&'static str, &str)> {
        let mut v = vec![(
            if self.is_uki() { "UKI" } else { "kernel" },
            self.linux.as_str(),
        )];
        if let Some(i) = &self.initrd {
            v.push(("initrd", i.as_str()));
        }
        v
    }

    /// Check that this can be written as an entry for `slot`: every field on one line,
    /// kernel and initrd named and not taken from the other slot's folder, and the command line
    /// telling the booted system which slot it runs from (a UKI: its own file in the slot's
    /// folder, with neither initrd nor options).
    pub fn validate(&self, slot: Slot) -> Result<(), SlotsError> {
        let invalid = |reason: String| Err(SlotsError::InvalidBoot { slot, reason });
        let mut fields = vec![("title", &self.title), ("linux", &self.linux)];
        if let Some(i) = &self.initrd {
            fields.push(("initrd", i));
        }
        if let Some(o) = &self.options {
            fields.push(("options", o));
        }
        for (name, value) in &fields {
            if value.trim().is_empty() {
                return invalid(format!("{name} is empty"));
            }
            if value.chars().any(|c| c.is_control()) {
                return invalid(format!("{name} contains a line break or control character"));
            }
        }
        let foreign = format!("/aperture/{}/", slot.other());
        for (name, value) in fields
            .iter()
            .filter(|(n, _)| matches!(*n, "linux" | "initrd"))
        {
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
        match (&self.initrd, &self.options) {
            (None, None) => {
                let own = format!("/aperture/{slot}/{UKI_FILE}");
                if self.linux != own {
                    return invalid(format!(
                        "an entry without initrd and options boots a unified kernel image, \
                         which for slot {slot} is {own}, not {}",
                        self.linux
                    ));
                }
            }
            (_, Some(options)) => {
                if Slot::from_cmdline(options) != Some(slot) {
                    return invalid(format!(
                        "options must end up naming {CMDLINE_KEY}={slot}, got {options:?}"
                    ));
                }
            }
            (Some(_), None) => {
                return invalid(
                    "an initrd without options: the kernel would not know its slot".into(),
                )
            }
        }
        Ok(())
    }
}

/// `options` followed by `aperture.slot=<slot>` unless it already names a slot.
pub fn with_slot(slot: Slot, options: &str) -> String {
    let options = options.trim();
    if options
        .split_whitespace()
        .any(|w| w.starts_with("aperture.slot="))
    {
        options.to_string()
    } else if options.is_empty() {
        format!("{CMDLINE_KEY}={slot}")
    } else {
        format!("{options} {CMDLINE_KEY}={slot}")
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
        assert_eq!(b.initrd.as_deref(), Some("/aperture/b/initrd.img"));
        assert_eq!(
            b.options.as_deref(),
            Some("root=PARTLABEL=rootfs_b ro aperture.slot=b")
        );
        b.validate(Slot::B).unwrap();
        assert!(
            b.validate(Slot::A).is_err(),
            "entry for b is not valid for a"
        );

        let kept = SlotBoot::for_slot(Slot::A, "t", "aperture.slot=a quiet");
        assert_eq!(kept.options.as_deref(), Some("aperture.slot=a quiet"));
        assert_eq!(
            SlotBoot::for_slot(Slot::A, "t", "").options.as_deref(),
            Some("aperture.slot=a")
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
        bad.options = Some("root=PARTLABEL=rootfs_b".into());
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
        bad.initrd = Some("/aperture/b/../a/initrd.img".into());
        assert!(bad
            .validate(Slot::B)
            .unwrap_err()
            .to_string()
            .contains("without `..`"));
        let mut bad = b;
        bad.initrd = Some(" ".into());
        assert!(bad
            .validate(Slot::B)
            .unwrap_err()
            .to_string()
            .contains("initrd is empty"));
    }

    #[test]
    fn a_uki_entry_names_its_own_slots_image_and_nothing_else() {
        let b = SlotBoot::uki(Slot::B, "Aperture 1.2.0 (slot B)");
        assert_eq!(b.linux, "/aperture/b/uki.efi");
        assert!(b.is_uki());
        b.validate(Slot::B).unwrap();
        let err = b.validate(Slot::A).unwrap_err().to_string();
        assert!(err.contains("other slot"), "{err}");
        let mut bad = b.clone();
        bad.linux = "/aperture/b/vmlinuz".into();
        let err = bad.validate(Slot::B).unwrap_err().to_string();
        assert!(err.contains("/aperture/b/uki.efi"), "{err}");
        let mut bad = b;
        bad.initrd = Some("/aperture/b/initrd.img".into());
        let err = bad.validate(Slot::B).unwrap_err().to_string();
        assert!(err.contains("would not know its slot"), "{err}");
        // A UKI's entry keeps the same JSON shape minus the absent fields.
        let json = serde_json::to_string(&SlotBoot::uki(Slot::A, "t")).unwrap();
        assert_eq!(json, r#"{"title":"t","linux":"/aperture/a/uki.efi"}"#);
    }
}
