//! Slot identity (`a`/`b`) and how the running slot is learnt from the kernel command line.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// Kernel command-line parameter naming the slot the kernel was booted from.
pub const CMDLINE_KEY: &str = "aperture.slot";

/// One of the two root file system slots.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Slot {
    /// Slot A (`rootfs_a` on qemu boards, `APP` on Jetson).
    A,
    /// Slot B (`rootfs_b` on qemu boards, `APP_b` on Jetson).
    B,
}

impl Slot {
    /// Both slots, A first.
    pub const ALL: [Slot; 2] = [Slot::A, Slot::B];

    /// The other slot.
    pub fn other(self) -> Slot {
        match self {
            Slot::A => Slot::B,
            Slot::B => Slot::A,
        }
    }

    /// The lower-case letter, as used in file names and on the command line.
    pub fn letter(self) -> &'static str {
        match self {
            Slot::A => "a",
            Slot::B => "b",
        }
    }

    /// The release artifact holding this slot's signed unified kernel image: `uki-a.efi`.
    pub fn uki_artifact(self) -> String {
        format!("uki-{}.efi", self.letter())
    }

    /// The slot whose unified kernel image the artifact `name` is (`uki-b.efi` → B).
    pub fn of_uki_artifact(name: &str) -> Option<Slot> {
        Slot::ALL.into_iter().find(|s| s.uki_artifact() == name)
    }

    /// The slot named by the last `aperture.slot=` parameter of a kernel command line.
    ///
    /// Like the kernel, the last occurrence wins; if that one is not exactly `a` or `b` the
    /// answer is `None` (a command line we do not understand names no slot).
    pub fn from_cmdline(cmdline: &str) -> Option<Slot> {
        let value = cmdline
            .split_whitespace()
            .filter_map(|word| word.strip_prefix(CMDLINE_KEY)?.strip_prefix('='))
            .next_back()?;
        match value {
            "a" => Some(Slot::A),
            "b" => Some(Slot::B),
            _ => None,
        }
    }
}

impl fmt::Display for Slot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.letter())
    }
}

/// A slot name that is neither `a` nor `b`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{value:?} is not a slot: use `a` or `b`")]
pub struct InvalidSlot {
    /// What was given.
    pub value: String,
}

impl FromStr for Slot {
    type Err = InvalidSlot;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "a" | "A" => Ok(Slot::A),
            "b" | "B" => Ok(Slot::B),
            _ => Err(InvalidSlot { value: s.into() }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn last_slot_parameter_wins_and_unknown_values_name_none() {
        assert_eq!(
            Slot::from_cmdline("ro aperture.slot=a quiet"),
            Some(Slot::A)
        );
        assert_eq!(
            Slot::from_cmdline("aperture.slot=a aperture.slot=b"),
            Some(Slot::B)
        );
        assert_eq!(Slot::from_cmdline("aperture.slot=a aperture.slot=c"), None);
        assert_eq!(Slot::from_cmdline("aperture.slots=a"), None);
        assert_eq!(Slot::from_cmdline(""), None);
    }

    #[test]
    fn names_round_trip() {
        for (s, want) in [("a", Slot::A), ("B", Slot::B)] {
            assert_eq!(s.parse::<Slot>().unwrap(), want);
        }
        let err = "c".parse::<Slot>().unwrap_err();
        assert!(err.to_string().contains("`a` or `b`"), "{err}");
        assert_eq!(Slot::A.other(), Slot::B);
        assert_eq!(serde_json::to_string(&Slot::B).unwrap(), "\"b\"");
    }
}
