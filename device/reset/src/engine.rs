//! The three reset levels over injected parts, and `resume`.
//!
//! * [`Reset::level1`]: re-verify the known-good slot(s) (the updater's
//!   [`aperture_updater::Updater::verify_slot`]) and make the
//!   first that verifies the next boot, then reboot. The running slot is tried first when it
//!   is good ("boot it again"), then the other good slot; slots on trial or bad are never
//!   known-good.
//! * [`Reset::start`] with level 2 or 3: the running slot must be committed (good); the whole
//!   factory bundle is verified before anything is written, and for level 2 its security
//!   version must be at or above the anti-rollback floor (below it only level 3 may install
//!   it, [`crate::factory::check_floor`]); the updater's installer must be able to place it
//!   ([`aperture_updater::Updater::preflight`]); then the journal is written and run
//!   ([`crate::journal::plan`]).
//!
//! ## Writing slots
//! Every slot write goes through the updater's installer
//! ([`aperture_updater::Updater::install_locked`]), whatever the board's boot control: one
//! code path, the same order (journal, invalidate, stream, read back, record, arm), the same
//! crash safety as an update. The factory slot is installed armed as the next boot with
//! [`FACTORY_TRIES`] ([`Arm::Next`]); the slot the reset started on is installed recorded only
//! ([`Arm::RecordOnly`]) and blessed by [`Step::Finish`] without being booted. The policy is
//! the reset's ([`Policy::Reset`]): the running product and board, and for level 2 the floor;
//! level 3 installs only after its wipe, and waives the floor ([`ResetFloor::WaivedAfterWipe`]).
//! Slots are re-verified by the updater too ([`aperture_updater::Updater::verify_slot`]).
//! * [`Reset::resume`], at every boot before aperture-storage and again after the health gate:
//!   continue the journal. Which slot booted tells how far a level 2 got: the factory slot
//!   means the first half is done (the installer arms it only once it is written, read back
//!   and recorded); the original slot with the factory slot still armed means
//!   the reboot has not happened yet; the original slot otherwise means the factory slot
//!   failed to boot or failed its health gate, and it is written again, until
//!   [`MAX_FACTORY_BOOT_FAILURES`] failures.
//!
//! ## What marks a slot good
//! Reset never commits a slot on trial: the factory slot is committed by the health gate
//! (`aperture-agent health`, which marks the running slot good in boot control), and the
//! second half (overwriting the original slot) waits for that ([`Outcome::AwaitingHealthGate`]).
//! [`Step::Finish`] then marks good only the slot the second half wrote, and only when it is
//! unbootable or armed-but-never-tried (as the second half left it), holds exactly the
//! factory image's signed manifest, and re-verifies block for block. Anything else means the
//! journal was not written by a reset that got this far ([`ResetError::JournalContradicted`]):
//! the reset gives up and marks nothing good.
//!
//! Every step is idempotent, so a power cut anywhere repeats at most the step it hit.
//!
//! ## The board
//! Partitions come from the board ([`aperture_appliance::Board`]): the volumes' by
//! [`Volume::partition`] (`config`, and `data` or, on Jetson, NVIDIA's `UDA`), the factory image's
//! by `Board::partition(Role::Factory)`, the slots' by the board's slot layout (in the
//! installer); boot control is the board's ([`aperture_updater::boot_control_for`]).

use aperture_appliance::{Board, Files, Role, SlotsLock};
use aperture_slots::state::Step as BootStep;
use aperture_slots::{BootControl, Slot, SlotManager, SlotStatus};
use aperture_storage::{Access, Crypt, Disk, StorageState, Volume};
use aperture_trust::keys::PublicKey;
use aperture_trust::manifest::Manifest;
use aperture_trust::policy::check_factory;
use aperture_updater::place::slot_boot;
use aperture_updater::{Arm, InstallOptions, Policy, ResetFloor, UpdateError, Updater};
use serde::Serialize;

use crate::io::Store;
use crate::journal::{Journal, Level, Step};
use crate::seams::{Clock, Discard, FaultPoint, Faults, Reboot};
use crate::wipe::{self, ScrubMethod};
use crate::{factory, ResetError};

/// The slot manager every reset operation uses: any boot-control backend.
pub type Slots = SlotManager<Box<dyn BootControl>>;

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
    /// The factory image runs on trial in `slot`: the reset goes on once the health gate
    /// committed it (`aperture-reset resume` after `aperture-health.service`).
    AwaitingHealthGate {
        /// The running factory slot.
        slot: Slot,
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
    /// Stop without advancing until the health gate committed the running slot.
    AwaitGate,
}

/// The reset program over injected parts.
pub struct Reset<'a> {
    /// The appliance's files (the ESP's slot folders).
    pub files: &'a Files,
    /// The disk (tests pass an [`crate::io::GuardedDisk`]).
    pub disk: &'a dyn Disk,
    /// LUKS.
    pub crypt: &'a dyn Crypt,
    /// The device state's record of the sealed keys (the other copy is in the LUKS2 header
    /// the wipe destroys).
    pub keys: &'a StorageState,
    /// Discard.
    pub discard: &'a dyn Discard,
    /// The updater on this appliance: its installer writes every slot, and it re-verifies
    /// them.
    pub installer: &'a mut Updater,
    /// The slots lock, held for the whole reset (the installer does not take it again).
    pub lock: &'a SlotsLock,
    /// Time.
    pub clock: &'a dyn Clock,
    /// Reboot.
    pub reboot: &'a dyn Reboot,
    /// Boot control, for the running slot.
    pub slots: Slots,
    /// The device state store: the journal, the slot records, the anti-rollback floor.
    pub store: Store,
    /// The trusted root key.
    pub root: PublicKey,
    /// This appliance's board.
    pub board: Board,
    /// Power-cut injection (empty outside tests).
    pub faults: &'a Faults,
}

impl Reset<'_> {
    fn booted(&self) -> Slot {
        self.slots.booted()
    }

    fn factory_partition(&self) -> &'static str {
        self.board.partition(Role::Factory)
    }

    fn refuse_if_in_progress(&self) -> Result<(), ResetError> {
        if let Some(j) = Journal::load(&self.store)? {
            if j.failed.is_none() {
                return Err(ResetError::InProgress {
                    level: j.level.into(),
                });
            }
        }
        Ok(())
    }

    /// Re-verify `slot` block for block against its record.
    fn verify(&self, slot: Slot) -> Result<aperture_trust::record::SlotRecord, ResetError> {
        self.installer
            .verify_slot(slot)
            .map(|(installed, _)| installed.record)
            .map_err(slot_error)
    }

    /// What `slot` holds according to its record (signed manifest verified, record agreeing).
    fn installed(&self, slot: Slot) -> Result<Manifest, ResetError> {
        match self.installer.installed(slot).map_err(slot_error)? {
            Some((_, manifest)) => Ok(manifest),
            None => Err(ResetError::SlotVerify {
                slot,
                reason: "the device state has no record of what it holds".into(),
            }),
        }
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
            match self.verify(slot) {
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

    /// The factory image's manifest, signature chain verified (no payloads read).
    fn factory_manifest(&self) -> Result<Manifest, ResetError> {
        let part = self.disk.open(self.factory_partition(), Access::Shared)?;
        factory::manifest(part.as_ref(), &self.root)
    }

    /// The anti-rollback floor a reset of `level` must respect: level 2 keeps the data, so
    /// the factory image must be at or above it; level 3 destroys the data first.
    fn floor_for(&self, level: Level) -> Result<Option<u64>, ResetError> {
        match level {
            Level::Two => Ok(Some(self.installer.security_floor()?)),
            Level::One | Level::Three => Ok(None),
        }
    }

    /// Start a level 2 or 3 reset (level 1 is [`Reset::level1`]).
    pub fn start(&mut self, level: Level) -> Result<Outcome, ResetError> {
        if level == Level::One {
            return Ok(Outcome::Level1(self.level1()?));
        }
        self.refuse_if_in_progress()?;
        let booted = self.booted();
        let status = self.slots.state()?.status(booted);
        if status != SlotStatus::Good {
            return Err(ResetError::RunningSlotNotGood {
                slot: booted,
                status,
                other: booted.other(),
            });
        }
        if !self.disk.has(self.factory_partition())? {
            return Err(ResetError::NoFactory);
        }
        // The whole factory bundle is checked before anything is written.
        let part = self.disk.open(self.factory_partition(), Access::Shared)?;
        let manifest = factory::verify(part.as_ref(), &self.root, self.board.name())?;
        let floor = self.floor_for(level)?;
        factory_policy(self.board, floor, &manifest)?;
        self.installer.preflight(
            &manifest,
            &install_policy(level),
            &Arm::Next {
                tries: FACTORY_TRIES,
            },
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
        let mut journal = Journal::new(level, booted, busy);
        if level == Level::Three {
            for v in Volume::ALL {
                if self.disk.has(v.partition(self.board))? {
                    let part = self.disk.open(v.partition(self.board), Access::Shared)?;
                    journal
                        .header_bytes
                        .insert(v, wipe::header_area(part.as_ref())?);
                }
            }
        }
        journal.save(&mut self.store)?;
        tracing::info!(
            "reset level {level}: {} steps journaled in {} (area reset)",
            journal.steps().len(),
            self.store.name()
        );
        self.run(&mut journal)
    }

    /// Continue a journaled reset; [`Outcome::Nothing`] if there is none.
    pub fn resume(&mut self) -> Result<Outcome, ResetError> {
        let Some(mut journal) = Journal::load(&self.store)? else {
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
            journal.steps().len(),
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
            // The installer arms the factory slot as the last step of writing it, so booting
            // it means the write completed even if the journal was not advanced past it.
            Some(Step::WriteSlot { slot } | Step::ArmSlot { slot })
                if slot == factory_slot && booted == factory_slot =>
            {
                if let Some(i) = second_half {
                    j.next = i;
                    j.save(&mut self.store)?;
                }
            }
            Some(Step::RebootToFactory) if booted == factory_slot => {
                if let Some(i) = second_half {
                    j.next = i;
                    j.save(&mut self.store)?;
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
            return Err(self.give_up(j, err));
        }
        tracing::warn!(
            "the factory image in slot {} did not boot or did not pass its health gate; writing \
             it again",
            j.factory_slot()
        );
        if let Some(i) = j.index_of(Step::WriteSlot {
            slot: j.factory_slot(),
        }) {
            j.next = i;
            j.save(&mut self.store)?;
        }
        Ok(())
    }

    /// Record in the journal that the reset gave up because of `err`, and return `err`.
    fn give_up(&mut self, j: &mut Journal, err: ResetError) -> ResetError {
        j.failed = Some(err.to_string());
        match j.save(&mut self.store) {
            Ok(()) => err,
            Err(save) => save,
        }
    }

    fn run(&mut self, j: &mut Journal) -> Result<Outcome, ResetError> {
        let steps = j.steps();
        loop {
            let Some(step) = steps.get(j.next).copied() else {
                Journal::remove(&mut self.store)?;
                tracing::info!("reset level {} complete", j.level);
                return Ok(Outcome::Done { level: j.level });
            };
            let k = j.next;
            self.faults.check(FaultPoint::BeforeStep(k))?;
            tracing::info!(
                "reset level {}: step {}/{}: {step}",
                j.level,
                k + 1,
                steps.len()
            );
            let flow = self.step(j, step)?;
            self.faults.check(FaultPoint::AfterStep(k))?;
            match flow {
                Flow::Next => {
                    j.next += 1;
                    j.save(&mut self.store)?;
                }
                Flow::AdvanceAndReboot => {
                    j.next += 1;
                    j.save(&mut self.store)?;
                    self.reboot.reboot()?;
                    return Ok(Outcome::Rebooting { step });
                }
                Flow::Reboot => {
                    self.reboot.reboot()?;
                    return Ok(Outcome::Rebooting { step });
                }
                Flow::AwaitGate => {
                    let slot = self.booted();
                    tracing::info!(
                        "reset level {}: the factory image runs on trial in slot {slot}; the \
                         reset goes on once the health gate committed it",
                        j.level
                    );
                    return Ok(Outcome::AwaitingHealthGate { slot });
                }
            }
        }
    }

    fn step(&mut self, j: &mut Journal, step: Step) -> Result<Flow, ResetError> {
        match step {
            Step::EraseKeyslots { volume } => {
                if self.disk.has(volume.partition(self.board))? {
                    let part = self
                        .disk
                        .open(volume.partition(self.board), Access::Shared)?;
                    wipe::erase_keyslots(self.crypt, part.as_ref())?;
                }
            }
            Step::ZeroHeader { volume } => {
                if self.disk.has(volume.partition(self.board))? {
                    let part = self
                        .disk
                        .open(volume.partition(self.board), Access::Shared)?;
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
                if self.disk.has(volume.partition(self.board))? {
                    // Shared, not O_EXCL: blkdiscard opens the device exclusively itself (and
                    // so refuses a mounted or mapped partition), which our own exclusive
                    // handle would block.
                    let part = self
                        .disk
                        .open(volume.partition(self.board), Access::Shared)?;
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
            Step::WriteSlot { slot } => return self.write_slot(j, step, slot),
            Step::ArmSlot { slot } => {
                // The installer armed the factory slot as it wrote it (WriteSlot). A slot still
                // unbootable here was written by an aperture-reset that armed in this step.
                if self.slots.state()?.status(slot) == SlotStatus::Unbootable {
                    let manifest = self.installed(slot)?;
                    let boot = slot_boot(&manifest, self.board.slot_layout(), slot)?;
                    self.slots.arm(slot, FACTORY_TRIES, &boot)?;
                }
            }
            Step::RebootToFactory => return Ok(Flow::Reboot),
            Step::Finish => return self.finish(j, step),
        }
        Ok(Flow::Next)
    }

    /// Installs the factory image into `slot`, beside a running slot that is committed. On
    /// the factory slot's first boots that is the health gate's call, not reset's: wait.
    fn write_slot(&mut self, j: &mut Journal, step: Step, slot: Slot) -> Result<Flow, ResetError> {
        let booted = self.booted();
        if slot == booted {
            let err = ResetError::JournalContradicted {
                step: step.to_string(),
                reason: format!("slot {slot} is the running slot"),
            };
            return Err(self.give_up(j, err));
        }
        let status = self.slots.state()?.status(booted);
        if status != SlotStatus::Good {
            if booted == j.factory_slot() {
                return Ok(Flow::AwaitGate);
            }
            return Err(ResetError::RunningSlotNotGood {
                slot: booted,
                status,
                other: slot,
            });
        }
        // The floor first (a planted journal must not get a factory image below it written),
        // with the error that names level 3; the installer checks the same policy again.
        let floor = self.floor_for(j.level)?;
        if let Err(e) = factory_policy(self.board, floor, &self.factory_manifest()?) {
            return Err(match e {
                e @ ResetError::FactoryBelowFloor { .. } => self.give_up(j, e),
                e => e,
            });
        }
        let part = self.disk.open(self.factory_partition(), Access::Shared)?;
        let mut bundle = factory::reader(part.as_ref())?;
        let opts = InstallOptions {
            policy: install_policy(j.level),
            arm: if slot == j.factory_slot() {
                Arm::Next {
                    tries: FACTORY_TRIES,
                }
            } else {
                Arm::RecordOnly
            },
            ..InstallOptions::default()
        };
        let installed = self
            .installer
            .install_locked(&mut bundle, &opts, self.lock)?;
        tracing::info!(
            "slot {slot} holds the factory image {}{}",
            installed.version,
            if installed.armed {
                ", armed to boot next"
            } else {
                ""
            }
        );
        Ok(Flow::Next)
    }

    /// The second half wrote the other slot: mark it good if it is what the reset wrote (see
    /// the module documentation), boot the running slot next.
    fn finish(&mut self, j: &mut Journal, step: Step) -> Result<Flow, ResetError> {
        let booted = self.booted();
        let other = booted.other();
        let state = self.slots.state()?;
        let contradicted = |reason: String| ResetError::JournalContradicted {
            step: step.to_string(),
            reason,
        };
        match state.status(booted) {
            SlotStatus::Good => {}
            _ if booted == j.factory_slot() => return Ok(Flow::AwaitGate),
            status => {
                let err = contradicted(format!("the running slot {booted} is {status}"));
                return Err(self.give_up(j, err));
            }
        }
        let other_status = state.status(other);
        let rewritten = match other_status {
            SlotStatus::Good | SlotStatus::Unbootable => true,
            // Armed by this step before a power cut, and never booted.
            SlotStatus::Trying { tries_done: 0, .. } => true,
            SlotStatus::Trying { .. } | SlotStatus::Bad => false,
        };
        if !rewritten {
            let err = contradicted(format!(
                "slot {other} is {other_status}: it was armed and booted since it was written"
            ));
            return Err(self.give_up(j, err));
        }
        let factory = self.factory_manifest()?;
        // What the slot holds, or why it is not the factory image; I/O errors are not a
        // verdict (the step is tried again at the next boot).
        let mismatch = match self.installed(other) {
            Ok(m) if m != factory => Some(format!("it holds {} {}", m.product, m.version)),
            Ok(_) => match self.verify(other) {
                Ok(_) => None,
                Err(ResetError::SlotVerify { reason, .. }) => Some(reason),
                Err(e) => return Err(e),
            },
            Err(ResetError::SlotVerify { reason, .. }) => Some(reason),
            Err(e) => return Err(e),
        };
        if let Some(why) = mismatch {
            let err = contradicted(format!(
                "slot {other} does not hold the verified factory image {}: {why}",
                factory.version
            ));
            return Err(self.give_up(j, err));
        }
        let backend = self.slots.backend_mut();
        if other_status == SlotStatus::Unbootable {
            let boot = slot_boot(&factory, self.board.slot_layout(), other)?;
            // Arm does not change the next boot; the bless right after makes it good. The
            // tries are the factory slot's (on Jetson the count is one variable for both
            // slots, RootfsRetryCountMax, which a smaller count here would lower).
            backend.persist(&BootStep::Arm {
                slot: other,
                tries: FACTORY_TRIES,
                boot,
            })?;
        }
        if other_status != SlotStatus::Good {
            backend.persist(&BootStep::Bless { slot: other })?;
        }
        if self.slots.state()?.next != booted {
            self.slots
                .backend_mut()
                .persist(&BootStep::SetNext { slot: booted })?;
        }
        Ok(Flow::Next)
    }
}

/// The installer's policy for a reset of `level`: level 3 installs only after its wipe.
fn install_policy(level: Level) -> Policy {
    Policy::Reset {
        floor: match level {
            Level::Three => ResetFloor::WaivedAfterWipe,
            Level::One | Level::Two => ResetFloor::Enforced,
        },
    }
}

/// A re-verification's verdict in reset's terms: what does not match is
/// [`ResetError::SlotVerify`]; anything else (I/O) is not a verdict.
fn slot_error(e: UpdateError) -> ResetError {
    match e {
        UpdateError::Verify { slot, what, reason } => ResetError::SlotVerify {
            slot,
            reason: format!("{what}: {reason}"),
        },
        e => e.into(),
    }
}

/// What a factory manifest must pass before a reset writes it into a slot: the board, and for
/// a level 2 the anti-rollback `floor`.
fn factory_policy(board: Board, floor: Option<u64>, manifest: &Manifest) -> Result<(), ResetError> {
    check_factory(manifest, board.name())?;
    if let Some(floor) = floor {
        factory::check_floor(manifest, floor)?;
    }
    Ok(())
}
