//! The three reset levels over injected parts, and `resume`.
//!
//! * [`Reset::level1`]: re-verify the known-good slot(s) ([`crate::slot_check`]) and make the
//!   first that verifies the next boot, then reboot. The running slot is tried first when it
//!   is good ("boot it again"), then the other good slot; slots on trial or bad are never
//!   known-good.
//! * [`Reset::start`] with level 2 or 3: verify the whole factory bundle before anything is
//!   written, write the plan to the journal, run it ([`crate::journal::plan`]).
//! * [`Reset::resume`], at every boot before aperture-storage: continue the journal. Which
//!   slot booted tells how far a level 2 got: the factory slot means the first half is done;
//!   the original slot with the factory slot still armed means the reboot has not happened
//!   yet; the original slot otherwise means the factory slot failed to boot, and it is written
//!   again, until [`MAX_FACTORY_BOOT_FAILURES`] failures.
//!
//! Every step is idempotent, so a power cut anywhere repeats at most the step it hit.

use aperture_slots::state::Step as BootStep;
use aperture_slots::{BootControl, Slot, SlotStatus};
use aperture_storage::{Access, Crypt, Disk, StorageState, Volume};
use aperture_trust::keys::PublicKey;
use aperture_trust::policy::check_factory;
use serde::Serialize;

use crate::journal::{plan, Journal, Level, Step};
use crate::paths::{Paths, FACTORY_PARTITION};
use crate::seams::{Clock, Discard, FaultPoint, Faults, Reboot};
use crate::slot_check::verify_slot;
use crate::slot_writer::{SlotWriter, Slots};
use crate::wipe::{self, ScrubMethod};
use crate::{factory, ResetError};

/// Boot tries the factory slot gets for its first boot.
pub const FACTORY_TRIES: u32 = 3;
/// After this many failed first boots of the factory slot the reset gives up (the wipe is
/// done by then; the appliance keeps booting its old slot).
pub const MAX_FACTORY_BOOT_FAILURES: u32 = 2;

/// How a level 2/3 run or a resume ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum Outcome {
    /// No reset was in progress.
    Nothing,
    /// A reboot was requested after `step`; the reset goes on at the next boot.
    Rebooting {
        /// The step that asked for it.
        step: Step,
    },
    /// The reset is complete and its journal removed.
    Done {
        /// The level.
        level: Level,
    },
    /// Level 1 chose a slot and asked for a reboot.
    Level1(Level1Report),
    /// The reset gave up earlier (the journal says why); the boot goes on.
    Failed {
        /// Why.
        reason: String,
    },
}

/// What level 1 did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Level1Report {
    /// The slot booted next.
    pub chosen: Slot,
    /// Slots refused, and why.
    pub refused: Vec<(Slot, String)>,
}

enum Flow {
    Next,
    /// Advance the journal, then reboot.
    AdvanceAndReboot,
    /// Reboot without advancing (resume decides by the booted slot).
    Reboot,
}

/// The reset program over injected parts.
pub struct Reset<'a> {
    /// Paths.
    pub paths: &'a Paths,
    /// The disk (tests pass an [`crate::io::GuardedDisk`]).
    pub disk: &'a dyn Disk,
    /// LUKS.
    pub crypt: &'a dyn Crypt,
    /// The device state's record of the sealed keys (the other copy is in the LUKS2 header
    /// the wipe destroys).
    pub keys: &'a StorageState,
    /// Discard.
    pub discard: &'a dyn Discard,
    /// Installs the factory image into a slot.
    pub writer: &'a dyn SlotWriter,
    /// Time.
    pub clock: &'a dyn Clock,
    /// Reboot.
    pub reboot: &'a dyn Reboot,
    /// Boot control, for the running slot.
    pub slots: Slots,
    /// The trusted root key.
    pub root: PublicKey,
    /// This appliance's board.
    pub board: String,
    /// Power-cut injection (empty outside tests).
    pub faults: &'a Faults,
}

impl Reset<'_> {
    fn booted(&self) -> Slot {
        self.slots.booted()
    }

    fn refuse_if_in_progress(&self) -> Result<(), ResetError> {
        if let Some(j) = Journal::load(self.paths.journal())? {
            if j.failed.is_none() {
                return Err(ResetError::InProgress {
                    level: j.level.into(),
                    journal: self.paths.journal().to_path_buf(),
                });
            }
        }
        Ok(())
    }

    /// Level 1: boot a known-good slot again after re-verifying it.
    pub fn level1(&mut self) -> Result<Level1Report, ResetError> {
        self.refuse_if_in_progress()?;
        let state = self.slots.state()?;
        let booted = self.booted();
        let mut refused = Vec::new();
        let mut chosen = None;
        for slot in [booted, booted.other()] {
            let status = state.status(slot);
            if status != SlotStatus::Good {
                refused.push((slot, format!("it is {status}, not known-good")));
                continue;
            }
            match verify_slot(self.disk, self.paths, slot) {
                Ok(record) => {
                    tracing::info!(
                        "slot {slot} verifies ({} {})",
                        record.product,
                        record.version
                    );
                    chosen = Some(slot);
                    break;
                }
                Err(e) => {
                    tracing::warn!("refusing slot {slot}: {e}");
                    refused.push((slot, e.to_string()));
                }
            }
        }
        let Some(chosen) = chosen else {
            let details = refused
                .iter()
                .map(|(s, why)| format!("slot {s}: {why}"))
                .collect::<Vec<_>>()
                .join("; ");
            return Err(ResetError::NoVerifiedSlot { details });
        };
        if chosen != booted {
            self.slots.rollback()?;
        } else if state.next != booted {
            self.slots
                .backend_mut()
                .persist(&BootStep::SetNext { slot: booted })?;
        }
        self.reboot.reboot()?;
        Ok(Level1Report { chosen, refused })
    }

    /// Start a level 2 or 3 reset (level 1 is [`Reset::level1`]).
    pub fn start(&mut self, level: Level) -> Result<Outcome, ResetError> {
        if level == Level::One {
            return Ok(Outcome::Level1(self.level1()?));
        }
        self.refuse_if_in_progress()?;
        if !self.disk.has(FACTORY_PARTITION)? {
            return Err(ResetError::NoFactory);
        }
        // The whole factory bundle is checked before anything is written.
        let part = self.disk.open(FACTORY_PARTITION, Access::Shared)?;
        let manifest = factory::verify(
            part.as_ref(),
            &self.root,
            self.clock.now_unix(),
            &self.board,
        )?;
        tracing::info!(
            "factory image {} {} for {} verifies",
            manifest.product,
            manifest.version,
            manifest.board
        );
        let mut busy = false;
        for v in Volume::ALL {
            busy |= self.crypt.mapped(v.mapper_name())?.is_some();
        }
        let mut journal = Journal::new(level, self.booted(), plan(level, self.booted(), busy));
        if level == Level::Three {
            for v in Volume::ALL {
                if self.disk.has(v.label())? {
                    let part = self.disk.open(v.label(), Access::Shared)?;
                    journal
                        .header_bytes
                        .insert(v, wipe::header_area(part.as_ref())?);
                }
            }
        }
        journal.save(self.paths.journal())?;
        tracing::info!(
            "reset level {level}: {} steps journaled in {}",
            journal.steps.len(),
            self.paths.journal().display()
        );
        self.run(&mut journal)
    }

    /// Continue a journaled reset at boot; [`Outcome::Nothing`] if there is none.
    pub fn resume(&mut self) -> Result<Outcome, ResetError> {
        let Some(mut journal) = Journal::load(self.paths.journal())? else {
            return Ok(Outcome::Nothing);
        };
        if let Some(reason) = &journal.failed {
            tracing::error!("an earlier reset gave up: {reason}");
            return Ok(Outcome::Failed {
                reason: reason.clone(),
            });
        }
        tracing::info!(
            "resuming reset level {} at step {} of {} on slot {}",
            journal.level,
            journal.next + 1,
            journal.steps.len(),
            self.booted()
        );
        self.reconcile(&mut journal)?;
        self.run(&mut journal)
    }

    /// Adjust the journal's position to the slot that booted (see the module documentation).
    fn reconcile(&mut self, j: &mut Journal) -> Result<(), ResetError> {
        let (factory_slot, original) = (j.factory_slot(), j.started_from);
        let booted = self.booted();
        let state = self.slots.state()?;
        let armed = state.next == factory_slot
            && matches!(state.status(factory_slot), SlotStatus::Trying { tries_left, .. } if tries_left > 0);
        let second_half = j.index_of(Step::WriteSlot { slot: original });
        match j.current() {
            Some(Step::ArmSlot { .. } | Step::RebootToFactory) if booted == factory_slot => {
                if let Some(i) = second_half {
                    j.next = i;
                    j.save(self.paths.journal())?;
                }
            }
            Some(Step::ArmSlot { slot }) if booted == original => {
                if state.status(slot) == SlotStatus::Unbootable {
                    // Cut before the arm: do it now.
                } else if armed {
                    if let Some(i) = j.index_of(Step::RebootToFactory) {
                        j.next = i;
                    }
                } else {
                    self.factory_failed(j)?;
                }
            }
            Some(Step::RebootToFactory) if booted == original && !armed => {
                self.factory_failed(j)?;
            }
            Some(Step::WriteSlot { slot }) if slot == original && booted == original => {
                self.factory_failed(j)?;
            }
            _ => {}
        }
        Ok(())
    }

    /// The factory slot did not come up: write it again, or give up.
    fn factory_failed(&mut self, j: &mut Journal) -> Result<(), ResetError> {
        j.factory_boot_failures += 1;
        if j.factory_boot_failures >= MAX_FACTORY_BOOT_FAILURES {
            let err = ResetError::FactoryDidNotBoot {
                attempts: j.factory_boot_failures,
            };
            j.failed = Some(err.to_string());
            j.save(self.paths.journal())?;
            return Err(err);
        }
        tracing::warn!(
            "the factory image in slot {} did not boot; writing it again",
            j.factory_slot()
        );
        if let Some(i) = j.index_of(Step::WriteSlot {
            slot: j.factory_slot(),
        }) {
            j.next = i;
            j.save(self.paths.journal())?;
        }
        Ok(())
    }

    fn run(&mut self, j: &mut Journal) -> Result<Outcome, ResetError> {
        let path = self.paths.journal().to_path_buf();
        loop {
            let Some(step) = j.current() else {
                Journal::remove(&path)?;
                tracing::info!("reset level {} complete", j.level);
                return Ok(Outcome::Done { level: j.level });
            };
            let k = j.next;
            self.faults.check(FaultPoint::BeforeStep(k))?;
            tracing::info!(
                "reset level {}: step {}/{}: {step}",
                j.level,
                k + 1,
                j.steps.len()
            );
            let flow = self.step(j, step)?;
            self.faults.check(FaultPoint::AfterStep(k))?;
            match flow {
                Flow::Next => {
                    j.next += 1;
                    j.save(&path)?;
                }
                Flow::AdvanceAndReboot => {
                    j.next += 1;
                    j.save(&path)?;
                    self.reboot.reboot()?;
                    return Ok(Outcome::Rebooting { step });
                }
                Flow::Reboot => {
                    self.reboot.reboot()?;
                    return Ok(Outcome::Rebooting { step });
                }
            }
        }
    }

    fn step(&mut self, j: &mut Journal, step: Step) -> Result<Flow, ResetError> {
        match step {
            Step::EraseKeyslots { volume } => {
                if self.disk.has(volume.label())? {
                    let part = self.disk.open(volume.label(), Access::Shared)?;
                    wipe::erase_keyslots(self.crypt, part.as_ref())?;
                }
            }
            Step::ZeroHeader { volume } => {
                if self.disk.has(volume.label())? {
                    let part = self.disk.open(volume.label(), Access::Shared)?;
                    let bytes = match j.header_bytes.get(&volume) {
                        Some(b) => *b,
                        None => wipe::header_area(part.as_ref())?,
                    };
                    wipe::zero_header(part.as_ref(), bytes)?;
                }
            }
            Step::ForgetKeys => {
                for v in Volume::ALL {
                    self.keys.forget(v)?;
                }
            }
            Step::RebootToWipe => return Ok(Flow::AdvanceAndReboot),
            Step::Scrub { volume } => {
                if let Some(mapped) = self.crypt.mapped(volume.mapper_name())? {
                    return Err(ResetError::StillUnlocked {
                        volume: volume.to_string(),
                        mapped: mapped.display().to_string(),
                    });
                }
                if self.disk.has(volume.label())? {
                    // Shared, not O_EXCL: blkdiscard opens the device exclusively itself (and
                    // so refuses a mounted or mapped partition), which our own exclusive
                    // handle would block.
                    let part = self.disk.open(volume.label(), Access::Shared)?;
                    let method = wipe::scrub(part.as_ref(), self.discard)?;
                    tracing::info!(
                        "{volume}: {}",
                        match method {
                            ScrubMethod::Discard => "discarded; the sample reads back as zeros",
                            ScrubMethod::Overwrite => "overwritten with zeros",
                        }
                    );
                }
            }
            Step::WriteSlot { slot } => {
                // The running slot must be good to install beside it: the reset commits it
                // (it runs; on the second half it is the factory image that just booted).
                if self.slots.state()?.status(self.booted()) != SlotStatus::Good {
                    self.slots.mark_good()?;
                }
                let part = self.disk.open(FACTORY_PARTITION, Access::Shared)?;
                let mut bundle = factory::reader(part.as_ref())?;
                let board = self.board.clone();
                let policy = move |m: &aperture_trust::manifest::Manifest| check_factory(m, &board);
                let manifest =
                    self.writer
                        .write_slot(&mut self.slots, slot, &mut bundle, &policy)?;
                tracing::info!("slot {slot} holds the factory image {}", manifest.version);
            }
            Step::ArmSlot { slot } => {
                self.writer.arm_slot(&mut self.slots, slot, FACTORY_TRIES)?;
            }
            Step::RebootToFactory => return Ok(Flow::Reboot),
            Step::Finish => self.finish()?,
        }
        Ok(Flow::Next)
    }

    /// Both slots hold the factory image: both good, the running one next.
    fn finish(&mut self) -> Result<(), ResetError> {
        let booted = self.booted();
        let other = booted.other();
        if self.slots.state()?.status(booted) != SlotStatus::Good {
            self.slots.mark_good()?;
        }
        match self.slots.state()?.status(other) {
            SlotStatus::Unbootable => {
                let manifest = self.writer.installed(other)?;
                let boot = self.writer.boot_entry(other, &manifest)?;
                let backend = self.slots.backend_mut();
                // Arm does not change the next boot; the bless right after makes it good.
                backend.persist(&BootStep::Arm {
                    slot: other,
                    tries: 1,
                    boot,
                })?;
                backend.persist(&BootStep::Bless { slot: other })?;
            }
            SlotStatus::Trying { .. } | SlotStatus::Bad => {
                self.slots
                    .backend_mut()
                    .persist(&BootStep::Bless { slot: other })?;
            }
            SlotStatus::Good => {}
        }
        if self.slots.state()?.next != booted {
            self.slots
                .backend_mut()
                .persist(&BootStep::SetNext { slot: booted })?;
        }
        Ok(())
    }
}
