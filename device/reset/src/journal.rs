//! The reset area of the device state store ([`Area::Reset`] of the raw `aperture_state`
//! partition, two CRC'd copies: a torn write is never fatal): the journal of a level 2 or 3
//! reset, and the reset-key press already consumed ([`ResetRecord`]). It lives outside the
//! partitions a level 3 wipes and off the FAT ESP, and is written before the first step and
//! after every step.
//!
//! The journal is NOT trusted as read: whoever can write the state partition could plant one.
//! It keeps only the level, the slot the reset started on, whether the wipe reboots before
//! scrubbing, a progress counter and the few facts a resumed step needs; the steps themselves
//! are rebuilt by [`plan`] every time ([`Journal::steps`]), and the engine checks the slots
//! before any step that marks a slot good (see `engine`), so a planted journal can at most
//! ask for a reset that the appliance's own plan defines.
//!
//! `wipe_pending` at the top of the record is the one field aperture-storage reads: while it
//! is true, nothing unlocks `config` or `data`. It is recomputed from the plan and the progress
//! counter whenever the record is written.

use std::collections::BTreeMap;
use std::fmt;

use aperture_appliance::Area;
use aperture_slots::Slot;
use aperture_storage::Volume;
use serde::{Deserialize, Serialize};

use crate::io::Store;
use crate::ResetError;

/// Format of the reset area's record.
pub const RECORD_FORMAT: u32 = 1;
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
    /// Reboot into the factory slot; the second slot is pending until the factory image
    /// passed its health gate there.
    RebootToFactory,
    /// Both slots hold the factory image: mark the one written last good (it verifies and was
    /// never booted), boot the running one next, remove the journal.
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
            Step::Finish => f.write_str("mark the rewritten slot good"),
        }
    }
}

/// The steps of a reset of `level` started on `booted`; `busy` when config or data are
/// unlocked (the wipe then reboots before scrubbing). Level 1 has no journal.
///
/// The factory image goes into the other slot first, which then boots on trial; the slot the
/// reset started on is overwritten only once the factory image passed its health gate there.
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

/// What the reset area holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResetRecord {
    /// Format, [`RECORD_FORMAT`].
    pub format: u32,
    /// Whether a wipe step is not done yet (read by aperture-storage).
    pub wipe_pending: bool,
    /// The reset in progress (or given up), if any.
    pub journal: Option<Journal>,
    /// The reset-key press whose level already ran; a key still down at a later boot is this
    /// same press and starts nothing ([`crate::input`]).
    pub button: Option<ButtonPress>,
}

impl Default for ResetRecord {
    fn default() -> Self {
        ResetRecord {
            format: RECORD_FORMAT,
            wipe_pending: false,
            journal: None,
            button: None,
        }
    }
}

impl ResetRecord {
    /// The record in `store`; the default (nothing in progress) if there is none.
    pub fn load(store: &Store) -> Result<ResetRecord, ResetError> {
        let what = || format!("the reset record in {} (area reset)", store.name());
        let Some(record) = store.read_json::<ResetRecord>(Area::Reset)? else {
            return Ok(ResetRecord::default());
        };
        if record.format != RECORD_FORMAT {
            return Err(ResetError::malformed(
                what(),
                format!(
                    "format {} (this aperture-reset reads {RECORD_FORMAT})",
                    record.format
                ),
            ));
        }
        if let Some(j) = &record.journal {
            j.validate()
                .map_err(|reason| ResetError::malformed(what(), reason))?;
        }
        Ok(record)
    }

    /// Writes the record, `wipe_pending` recomputed; an empty record clears the area.
    pub fn save(&mut self, store: &mut Store) -> Result<(), ResetError> {
        self.format = RECORD_FORMAT;
        self.wipe_pending = self.journal.as_ref().is_some_and(Journal::wipe_pending);
        if self.journal.is_none() && self.button.is_none() {
            store.clear(Area::Reset)?;
        } else {
            store.write_json(Area::Reset, self)?;
        }
        Ok(())
    }
}

/// A reset-key press that started a level.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ButtonPress {
    /// The level it asked for.
    pub level: Level,
    /// The boot it was seen in (`/proc/sys/kernel/random/boot_id`), for the record.
    pub boot_id: String,
}

/// A level 2 or 3 reset in progress: what is kept between boots. The steps are not kept; they
/// are rebuilt from `level`, `started_from` and `reboot_to_wipe` ([`Journal::steps`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Journal {
    /// The level (2 or 3).
    pub level: Level,
    /// The slot the reset started on; the factory image goes to the other one first.
    pub started_from: Slot,
    /// Whether config or data were unlocked when the reset began, so the wipe reboots before
    /// it scrubs them.
    pub reboot_to_wipe: bool,
    /// Index of the step to do next (the number of steps when done).
    pub next: usize,
    /// Bytes of LUKS metadata to zero per volume, read from the headers when the reset began
    /// (a resumed wipe may find the header already half zeroed).
    pub header_bytes: BTreeMap<Volume, u64>,
    /// How often the factory slot failed its first boot or its health gate.
    pub factory_boot_failures: u32,
    /// Set when the reset gave up; the reason.
    pub failed: Option<String>,
}

impl Journal {
    /// A new journal, at its first step.
    pub fn new(level: Level, started_from: Slot, reboot_to_wipe: bool) -> Journal {
        Journal {
            level,
            started_from,
            reboot_to_wipe,
            next: 0,
            header_bytes: BTreeMap::new(),
            factory_boot_failures: 0,
            failed: None,
        }
    }

    /// The plan, rebuilt from what the journal keeps.
    pub fn steps(&self) -> Vec<Step> {
        plan(self.level, self.started_from, self.reboot_to_wipe)
    }

    fn validate(&self) -> Result<(), String> {
        if self.level == Level::One {
            return Err("a level 1 reset has no journal".into());
        }
        let n = self.steps().len();
        if self.next > n {
            return Err(format!("it is at step {} of {n}", self.next + 1));
        }
        Ok(())
    }

    /// The step to do next, if any.
    pub fn current(&self) -> Option<Step> {
        self.steps().get(self.next).copied()
    }

    /// Index of the first occurrence of `step`.
    pub fn index_of(&self, step: Step) -> Option<usize> {
        self.steps().iter().position(|s| *s == step)
    }

    /// The slot that receives the factory image first.
    pub fn factory_slot(&self) -> Slot {
        self.started_from.other()
    }

    /// Whether a wipe step is still to do.
    pub fn wipe_pending(&self) -> bool {
        self.steps().iter().skip(self.next).any(Step::is_wipe)
    }

    /// The journal in `store`, if a reset is in progress (or was given up).
    pub fn load(store: &Store) -> Result<Option<Journal>, ResetError> {
        Ok(ResetRecord::load(store)?.journal)
    }

    /// Writes the journal into `store`, keeping the rest of the reset record.
    pub fn save(&self, store: &mut Store) -> Result<(), ResetError> {
        let mut record = ResetRecord::load(store)?;
        record.journal = Some(self.clone());
        record.save(store)
    }

    /// Removes the journal from `store`: no reset in progress.
    pub fn remove(store: &mut Store) -> Result<(), ResetError> {
        let mut record = ResetRecord::load(store)?;
        record.journal = None;
        record.save(store)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::io::tests::mem_store;

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
        let mut j = Journal::new(Level::Three, Slot::A, false);
        assert!(j.wipe_pending());
        j.next = 6;
        assert!(j.wipe_pending(), "scrub of data still to do");
        j.next = 7;
        assert!(!j.wipe_pending());
        assert!(!Journal::new(Level::Two, Slot::A, false).wipe_pending());
    }

    /// The storage contract: one boolean at the top of the record, as aperture-storage reads it.
    fn storage_sees_wipe_pending(store: &Store) -> bool {
        #[derive(Deserialize)]
        struct Marker {
            #[serde(default)]
            wipe_pending: bool,
        }
        store
            .read(Area::Reset)
            .unwrap()
            .is_some_and(|b| serde_json::from_slice::<Marker>(&b).unwrap().wipe_pending)
    }

    #[test]
    fn round_trip_keeps_the_press_and_storage_reads_the_flag() {
        let mut store = mem_store();
        assert_eq!(Journal::load(&store).unwrap(), None);
        let mut j = Journal::new(Level::Three, Slot::A, false);
        j.header_bytes.insert(Volume::Data, 16 << 20);
        j.save(&mut store).unwrap();
        assert_eq!(Journal::load(&store).unwrap(), Some(j.clone()));
        assert!(storage_sees_wipe_pending(&store));
        let text = String::from_utf8(store.read(Area::Reset).unwrap().unwrap()).unwrap();
        assert!(
            text.contains("\"level\":3") && !text.contains("steps"),
            "the steps are not stored: {text}"
        );
        let mut record = ResetRecord::load(&store).unwrap();
        record.button = Some(ButtonPress {
            level: Level::Three,
            boot_id: "b".into(),
        });
        record.save(&mut store).unwrap();
        Journal::remove(&mut store).unwrap();
        assert!(!storage_sees_wipe_pending(&store));
        assert!(ResetRecord::load(&store).unwrap().button.is_some());
        let mut record = ResetRecord::load(&store).unwrap();
        record.button = None;
        record.save(&mut store).unwrap();
        assert_eq!(
            store.read(Area::Reset).unwrap(),
            None,
            "an empty record clears the area"
        );
    }

    #[test]
    fn planted_steps_and_impossible_positions_are_refused() {
        let mut store = mem_store();
        // A journal as an older aperture-reset wrote it, with its own step list.
        store
            .write(
                Area::Reset,
                br#"{"format":1,"wipe_pending":false,"journal":{"level":2,"started_from":"a","reboot_to_wipe":false,"next":0,"header_bytes":{},"factory_boot_failures":0,"failed":null,"steps":[{"step":"finish"}]},"button":null}"#,
            )
            .unwrap();
        let e = Journal::load(&store).unwrap_err();
        let cause = std::error::Error::source(&e).map(|c| c.to_string());
        assert!(
            e.to_string().contains("reset record") && cause.is_some_and(|c| c.contains("steps")),
            "{e}"
        );
        for (level, next) in [(1, 0), (2, 6)] {
            let text = format!(
                r#"{{"format":1,"wipe_pending":false,"journal":{{"level":{level},"started_from":"a","reboot_to_wipe":false,"next":{next},"header_bytes":{{}},"factory_boot_failures":0,"failed":null}},"button":null}}"#
            );
            store.write(Area::Reset, text.as_bytes()).unwrap();
            assert!(Journal::load(&store).is_err(), "{text}");
        }
    }
}
