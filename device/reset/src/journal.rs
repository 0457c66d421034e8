//! The reset journal, `/efi/aperture/reset.json`: the plan of a level 2 or 3 reset, the step to
//! do next, and what must be remembered across reboots. It lives on the ESP, outside the
//! partitions a level 3 wipes, and is written durably (temp file, fsync, rename, fsync folder)
//! before the first step and after every step.
//!
//! `wipe_pending` is the one field aperture-storage reads
//! ([`aperture_storage::reset_wipe_pending`]): while it is true, nothing unlocks `config` or
//! `data`.

use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;

use aperture_slots::Slot;
use aperture_storage::Volume;
use aperture_sys::fs::{read_optional, remove_durable, write_atomic};
use serde::{Deserialize, Serialize};

use crate::ResetError;

/// Journal format.
pub const JOURNAL_FORMAT: u32 = 1;

/// A reset level.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(into = "u8", try_from = "u8")]
pub enum Level {
    /// Boot the known-good slot again, after re-verifying it.
    One,
    /// Reinstall the factory image into both slots.
    Two,
    /// Level 2 and a secure wipe of config and data.
    Three,
}

impl From<Level> for u8 {
    fn from(l: Level) -> u8 {
        match l {
            Level::One => 1,
            Level::Two => 2,
            Level::Three => 3,
        }
    }
}

impl TryFrom<u8> for Level {
    type Error = String;
    fn try_from(n: u8) -> Result<Level, String> {
        match n {
            1 => Ok(Level::One),
            2 => Ok(Level::Two),
            3 => Ok(Level::Three),
            _ => Err(format!("reset level {n} does not exist; use 1, 2 or 3")),
        }
    }
}

impl fmt::Display for Level {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", u8::from(*self))
    }
}

/// One durable step of a reset.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "step", rename_all = "snake_case")]
pub enum Step {
    /// `cryptsetup erase`: destroy every keyslot of the volume (the crypto-erase).
    EraseKeyslots {
        /// The volume.
        volume: Volume,
    },
    /// Zero the volume's whole LUKS metadata area.
    ZeroHeader {
        /// The volume.
        volume: Volume,
    },
    /// Destroy the sealed keys of both volumes.
    ForgetKeys,
    /// The volumes were unlocked when the reset began: reboot so that they can be scrubbed
    /// before anything unlocks them again.
    RebootToWipe,
    /// Discard the volume's partition (or overwrite it with zeros).
    Scrub {
        /// The volume.
        volume: Volume,
    },
    /// Write and verify the factory image into a slot (left unbootable).
    WriteSlot {
        /// The slot.
        slot: Slot,
    },
    /// Make the slot written by the previous step the next boot.
    ArmSlot {
        /// The slot.
        slot: Slot,
    },
    /// Reboot into the factory slot; the second slot is pending.
    RebootToFactory,
    /// Both slots hold the factory image: mark both good, boot the running one next, remove
    /// the journal.
    Finish,
}

impl Step {
    /// Whether this step belongs to the wipe (so the wipe is pending while it is not done).
    pub fn is_wipe(&self) -> bool {
        matches!(
            self,
            Step::EraseKeyslots { .. }
                | Step::ZeroHeader { .. }
                | Step::ForgetKeys
                | Step::RebootToWipe
                | Step::Scrub { .. }
        )
    }
}

impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Step::EraseKeyslots { volume } => write!(f, "destroy the LUKS keyslots of {volume}"),
            Step::ZeroHeader { volume } => write!(f, "zero the LUKS header area of {volume}"),
            Step::ForgetKeys => f.write_str("forget the sealed keys"),
            Step::RebootToWipe => f.write_str("reboot to wipe the locked partitions"),
            Step::Scrub { volume } => write!(f, "discard or overwrite {volume}"),
            Step::WriteSlot { slot } => write!(f, "write the factory image into slot {slot}"),
            Step::ArmSlot { slot } => write!(f, "boot slot {slot} next"),
            Step::RebootToFactory => f.write_str("reboot into the factory image"),
            Step::Finish => f.write_str("mark both slots good"),
        }
    }
}

/// The steps of a reset of `level` started on `booted`; `busy` when config or data are
/// unlocked (the wipe then reboots before scrubbing). Level 1 has no journal.
pub fn plan(level: Level, booted: Slot, busy: bool) -> Vec<Step> {
    let mut steps = Vec::new();
    if level == Level::Three {
        for volume in Volume::ALL {
            steps.push(Step::EraseKeyslots { volume });
            steps.push(Step::ZeroHeader { volume });
        }
        steps.push(Step::ForgetKeys);
        if busy {
            steps.push(Step::RebootToWipe);
        }
        for volume in Volume::ALL {
            steps.push(Step::Scrub { volume });
        }
    }
    if level >= Level::Two {
        let factory = booted.other();
        steps.push(Step::WriteSlot { slot: factory });
        steps.push(Step::ArmSlot { slot: factory });
        steps.push(Step::RebootToFactory);
        steps.push(Step::WriteSlot { slot: booted });
        steps.push(Step::Finish);
    }
    steps
}

/// The journal file's content.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Journal {
    /// Format, 1.
    pub format: u32,
    /// The level.
    pub level: Level,
    /// Whether a wipe step is not done yet (read by aperture-storage).
    pub wipe_pending: bool,
    /// The slot the reset started on; the factory image goes to the other one first.
    pub started_from: Slot,
    /// The plan.
    pub steps: Vec<Step>,
    /// Index of the step to do next (`steps.len()` when done).
    pub next: usize,
    /// Bytes of LUKS metadata to zero per volume, read from the headers when the reset began
    /// (a resumed wipe may find the header already half zeroed).
    pub header_bytes: BTreeMap<Volume, u64>,
    /// How often the factory slot failed its first boot.
    pub factory_boot_failures: u32,
    /// Set when the reset gave up; the reason.
    pub failed: Option<String>,
}

impl Journal {
    /// A new journal for `steps`.
    pub fn new(level: Level, started_from: Slot, steps: Vec<Step>) -> Journal {
        let mut j = Journal {
            format: JOURNAL_FORMAT,
            level,
            wipe_pending: false,
            started_from,
            steps,
            next: 0,
            header_bytes: BTreeMap::new(),
            factory_boot_failures: 0,
            failed: None,
        };
        j.refresh();
        j
    }

    /// The step to do next, if any.
    pub fn current(&self) -> Option<Step> {
        self.steps.get(self.next).copied()
    }

    /// Index of the first occurrence of `step`.
    pub fn index_of(&self, step: Step) -> Option<usize> {
        self.steps.iter().position(|s| *s == step)
    }

    /// The slot that receives the factory image first.
    pub fn factory_slot(&self) -> Slot {
        self.started_from.other()
    }

    /// Recompute `wipe_pending` from the plan and `next`.
    pub fn refresh(&mut self) {
        self.wipe_pending = self.steps[self.next.min(self.steps.len())..]
            .iter()
            .any(Step::is_wipe);
    }

    /// Reads the journal; `Ok(None)` if there is none.
    pub fn load(path: &Path) -> Result<Option<Journal>, ResetError> {
        let Some(bytes) = read_optional(path)? else {
            return Ok(None);
        };
        let j: Journal = serde_json::from_slice(&bytes).map_err(|e| {
            ResetError::malformed(
                path.display().to_string(),
                format!("{e}; it was not written by this aperture-reset"),
            )
        })?;
        if j.format != JOURNAL_FORMAT || j.next > j.steps.len() {
            return Err(ResetError::malformed(
                path.display().to_string(),
                format!(
                    "format {} with step {} of {}",
                    j.format,
                    j.next,
                    j.steps.len()
                ),
            ));
        }
        Ok(Some(j))
    }

    /// Writes the journal durably.
    pub fn save(&mut self, path: &Path) -> Result<(), ResetError> {
        self.refresh();
        let mut text = serde_json::to_vec_pretty(self)
            .map_err(|e| ResetError::malformed("reset journal", e))?;
        text.push(b'\n');
        write_atomic(path, &text, 0o600)?;
        Ok(())
    }

    /// Removes the journal durably.
    pub fn remove(path: &Path) -> Result<(), ResetError> {
        remove_durable(path)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plans() {
        assert_eq!(plan(Level::One, Slot::A, false), vec![]);
        let two = plan(Level::Two, Slot::A, false);
        assert_eq!(
            two,
            vec![
                Step::WriteSlot { slot: Slot::B },
                Step::ArmSlot { slot: Slot::B },
                Step::RebootToFactory,
                Step::WriteSlot { slot: Slot::A },
                Step::Finish
            ]
        );
        let three = plan(Level::Three, Slot::B, false);
        assert_eq!(three.len(), 12);
        assert_eq!(
            three[0],
            Step::EraseKeyslots {
                volume: Volume::Config
            }
        );
        assert_eq!(three[7], Step::WriteSlot { slot: Slot::A });
        assert_eq!(plan(Level::Three, Slot::B, true).len(), 13);
        assert!(plan(Level::Three, Slot::B, true).contains(&Step::RebootToWipe));
    }

    #[test]
    fn wipe_pending_follows_the_plan() {
        let mut j = Journal::new(Level::Three, Slot::A, plan(Level::Three, Slot::A, false));
        assert!(j.wipe_pending);
        j.next = 6;
        j.refresh();
        assert!(j.wipe_pending, "scrub of data still to do");
        j.next = 7;
        j.refresh();
        assert!(!j.wipe_pending);
        let j2 = Journal::new(Level::Two, Slot::A, plan(Level::Two, Slot::A, false));
        assert!(!j2.wipe_pending);
    }

    #[test]
    fn round_trip_and_storage_reads_the_flag() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("reset.json");
        assert_eq!(Journal::load(&path).unwrap(), None);
        let mut j = Journal::new(Level::Three, Slot::A, plan(Level::Three, Slot::A, false));
        j.header_bytes.insert(Volume::Data, 16 << 20);
        j.save(&path).unwrap();
        assert_eq!(Journal::load(&path).unwrap(), Some(j.clone()));
        assert!(aperture_storage::reset_wipe_pending(&path).unwrap());
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(
            text.contains("\"level\": 3") && text.contains("\"step\": \"erase_keyslots\""),
            "{text}"
        );
        Journal::remove(&path).unwrap();
        assert!(!aperture_storage::reset_wipe_pending(&path).unwrap());
        std::fs::write(&path, b"{\"format\":1}").unwrap();
        assert!(Journal::load(&path).is_err());
    }
}
