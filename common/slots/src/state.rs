//! The pure A/B state machine: slot statuses, the events that change them, and [`plan`], which
//! turns an event into a new state plus the ordered list of persistence [`Step`]s.
//!
//! Nothing here touches a disk: a backend ([`crate::BootControl`]) reads a [`BootState`] and
//! makes each [`Step`] durable on its own. The model is Bottlerocket's `signpost/src/state.rs`,
//! improved so that the state is handed in instead of discovered, and so that every transition
//! can be tested in memory, including a crash after any prefix of its steps.
//!
//! ## Meaning of `next`
//! [`BootState::next`] is the slot the loader boots on the next boot if nobody changes anything.
//! States are kept *normalized*: if `next` cannot be booted (bad or unbootable) and the other
//! slot can, `next` is the other slot, because that is what systemd-boot (which sorts entries
//! with no tries left last) and the Tegra firmware (which marks the slot unbootable and switches)
//! both do. Backends report normalized states too, so the model and the disk compare equal.
//!
//! ## Why the step order is safe
//! * `BeginInstall` first moves `next` away from the target (if needed), then invalidates it.
//! * `Arm` first makes the written slot bootable on trial without making it next, then makes it
//!   next: a crash between the two boots the old slot.
//! * `MarkGood` only blesses: it never writes the other slot and never changes `next` (a slot
//!   on its last try reads as bad with `next` on the other slot, and blessing it makes it next
//!   again, as on both real loaders; a rollback made before the blessing stays in force).
//! * No step ever invalidates or arms the running slot, and installs require the running slot to
//!   be good, so a good slot remains to fall back to at every point.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::{Slot, SlotBoot, SlotsError};

/// Largest number of boot tries an armed slot may get. Boot counting is meant for a few
/// attempts; the Tegra firmware keeps its counter in a small scratch register.
pub const MAX_TRIES: u32 = 7;

/// Status of one slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum SlotStatus {
    /// Committed: it passed its health gate (or was flashed at the factory).
    Good,
    /// Armed and on trial: the loader may try it `tries_left` more times.
    Trying {
        /// Boot attempts the loader will still make.
        tries_left: u32,
        /// Boot attempts made so far.
        tries_done: u32,
    },
    /// The loader used up every try without the slot being marked good.
    Bad,
    /// Being written, or invalid: the loader must never boot it.
    Unbootable,
}

impl SlotStatus {
    /// Whether the loader would boot a slot in this status: good, or on trial with tries left.
    pub fn is_bootable(self) -> bool {
        match self {
            SlotStatus::Good => true,
            SlotStatus::Trying { tries_left, .. } => tries_left > 0,
            SlotStatus::Bad | SlotStatus::Unbootable => false,
        }
    }
}

impl fmt::Display for SlotStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SlotStatus::Good => f.write_str("good"),
            SlotStatus::Trying {
                tries_left,
                tries_done,
            } => {
                write!(f, "on trial ({tries_left} tries left, {tries_done} done)")
            }
            SlotStatus::Bad => f.write_str("bad (boot tries used up)"),
            SlotStatus::Unbootable => f.write_str("unbootable"),
        }
    }
}

/// Status and label of one slot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SlotState {
    /// Boot status.
    pub status: SlotStatus,
    /// Human image version (the entry title), if known.
    pub label: Option<String>,
}

impl SlotState {
    /// A good slot with an optional label.
    pub fn good(label: Option<String>) -> SlotState {
        SlotState {
            status: SlotStatus::Good,
            label,
        }
    }
}

/// The boot state of both slots.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BootState {
    /// Slot A.
    pub a: SlotState,
    /// Slot B.
    pub b: SlotState,
    /// The slot the loader boots next (see the module documentation).
    pub next: Slot,
}

impl BootState {
    /// A freshly flashed device: both slots good, A boots.
    pub fn fresh() -> BootState {
        BootState {
            a: SlotState::good(None),
            b: SlotState::good(None),
            next: Slot::A,
        }
    }

    /// The state of `slot`.
    pub fn slot(&self, slot: Slot) -> &SlotState {
        match slot {
            Slot::A => &self.a,
            Slot::B => &self.b,
        }
    }

    /// The state of `slot`, mutably.
    pub fn slot_mut(&mut self, slot: Slot) -> &mut SlotState {
        match slot {
            Slot::A => &mut self.a,
            Slot::B => &mut self.b,
        }
    }

    /// The status of `slot`.
    pub fn status(&self, slot: Slot) -> SlotStatus {
        self.slot(slot).status
    }

    /// The same state with `next` moved to the other slot if `next` cannot boot and the other
    /// can: what the loader will really do.
    pub fn normalized(mut self) -> BootState {
        if !self.status(self.next).is_bootable() && self.status(self.next.other()).is_bootable() {
            self.next = self.next.other();
        }
        self
    }

    /// The slot the loader boots next, or [`SlotsError::NoBootableSlot`].
    pub fn loader_choice(&self) -> Result<Slot, SlotsError> {
        [self.next, self.next.other()]
            .into_iter()
            .find(|s| self.status(*s).is_bootable())
            .ok_or(SlotsError::NoBootableSlot {
                a: self.a.status,
                b: self.b.status,
            })
    }
}

/// Something that changes the boot state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Event {
    /// An install into `target` starts: it becomes unbootable before a byte is written.
    BeginInstall {
        /// The slot to be written; never the running one.
        target: Slot,
    },
    /// `target` was written and verified: boot it next, on trial, `tries` times at most.
    Arm {
        /// The slot written; must be unbootable (mid-install).
        target: Slot,
        /// Boot attempts before the loader falls back (`1..=MAX_TRIES`).
        tries: u32,
        /// What the slot boots; its title becomes the slot's label.
        boot: SlotBoot,
    },
    /// The running slot passed its health gate: commit it (it stays the next boot unless a
    /// rollback chose the other slot).
    MarkGood {
        /// The running slot.
        slot: Slot,
    },
    /// Boot the other slot next; it must be good.
    Rollback,
    /// The loader boots (simulation only): it picks a slot and counts a try.
    Boot,
}

impl Event {
    /// Short name used in messages.
    pub fn name(&self) -> &'static str {
        match self {
            Event::BeginInstall { .. } => "begin install into",
            Event::Arm { .. } => "arm",
            Event::MarkGood { .. } => "mark good",
            Event::Rollback => "roll back to",
            Event::Boot => "boot",
        }
    }
}

/// One change a backend makes durable on its own, atomically with respect to a power cut.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "step", rename_all = "snake_case")]
pub enum Step {
    /// Make `slot` unbootable and forget its label.
    Invalidate {
        /// The slot.
        slot: Slot,
    },
    /// Make `slot` bootable on trial with `tries` tries, described by `boot`; `next` unchanged.
    Arm {
        /// The slot.
        slot: Slot,
        /// Boot tries.
        tries: u32,
        /// What it boots.
        boot: SlotBoot,
    },
    /// Mark `slot` good (committed), as `systemd-bless-boot` does.
    Bless {
        /// The slot.
        slot: Slot,
    },
    /// Make `slot` the next boot.
    SetNext {
        /// The slot.
        slot: Slot,
    },
}

impl Step {
    /// The slot this step changes.
    pub fn slot(&self) -> Slot {
        match self {
            Step::Invalidate { slot }
            | Step::Arm { slot, .. }
            | Step::Bless { slot }
            | Step::SetNext { slot } => *slot,
        }
    }
}

impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Step::Invalidate { slot } => write!(f, "mark slot {slot} unbootable"),
            Step::Arm { slot, tries, boot } => {
                write!(f, "arm slot {slot} ({}) with {tries} tries", boot.title)
            }
            Step::Bless { slot } => write!(f, "mark slot {slot} good"),
            Step::SetNext { slot } => write!(f, "boot slot {slot} next"),
        }
    }
}

/// The state after applying one step (normalized). Infallible: backends and the fake use it to
/// mirror what a step does; [`plan`] decides which steps are allowed.
pub fn apply_step(state: &BootState, step: &Step) -> BootState {
    let mut next = state.clone();
    match step {
        Step::Invalidate { slot } => {
            *next.slot_mut(*slot) = SlotState {
                status: SlotStatus::Unbootable,
                label: None,
            };
        }
        Step::Arm { slot, tries, boot } => {
            *next.slot_mut(*slot) = SlotState {
                status: SlotStatus::Trying {
                    tries_left: *tries,
                    tries_done: 0,
                },
                label: Some(boot.title.clone()),
            };
        }
        Step::Bless { slot } => {
            // A bad slot can only be blessed while it runs on its last try; both loaders still
            // prefer it (systemd-boot: highest generation; Tegra: BootChainFwNext unchanged
            // until the next attempt), so once good it is the next boot again.
            if next.status(*slot) == SlotStatus::Bad {
                next.next = *slot;
            }
            next.slot_mut(*slot).status = SlotStatus::Good;
        }
        Step::SetNext { slot } => next.next = *slot,
    }
    next.normalized()
}

/// What the loader does on one boot: pick [`BootState::loader_choice`], count a try if that slot
/// is on trial (it becomes [`SlotStatus::Bad`] when this was its last try). Returns the booted
/// slot and the state afterwards. Used by simulations; real loaders persist this themselves.
pub fn simulate_boot(state: &BootState) -> Result<(Slot, BootState), SlotsError> {
    let mut next = state.clone().normalized();
    let pick = next.loader_choice()?;
    if let SlotStatus::Trying {
        tries_left,
        tries_done,
    } = next.status(pick)
    {
        let tries_left = tries_left.saturating_sub(1);
        let tries_done = tries_done.saturating_add(1);
        next.slot_mut(pick).status = if tries_left == 0 {
            SlotStatus::Bad
        } else {
            SlotStatus::Trying {
                tries_left,
                tries_done,
            }
        };
    }
    Ok((pick, next.normalized()))
}

/// Plan `event` while running from `booted`: the new state and the ordered steps that reach it.
///
/// Applying the steps in order with [`apply_step`] gives exactly the returned state, and a crash
/// after any prefix of them leaves a state whose [`BootState::loader_choice`] is a good slot or
/// one that was fully written and armed. [`Event::Boot`] is performed by the loader, so its step
/// list is empty.
pub fn plan(
    state: &BootState,
    booted: Slot,
    event: Event,
) -> Result<(BootState, Vec<Step>), SlotsError> {
    let state = state.clone().normalized();
    let steps = match event {
        Event::BeginInstall { target } => {
            refuse_active(target, booted)?;
            require_good_booted(&state, booted)?;
            let mut steps = Vec::with_capacity(2);
            if state.next == target {
                steps.push(Step::SetNext { slot: booted });
            }
            // Always persisted, even if already unbootable: a restarted install makes sure.
            steps.push(Step::Invalidate { slot: target });
            steps
        }
        Event::Arm {
            target,
            tries,
            boot,
        } => {
            refuse_active(target, booted)?;
            if !(1..=MAX_TRIES).contains(&tries) {
                return Err(SlotsError::InvalidTries {
                    slot: target,
                    tries,
                    max: MAX_TRIES,
                });
            }
            let from = state.status(target);
            if from != SlotStatus::Unbootable {
                return Err(SlotsError::InvalidTransition {
                    event: "arm",
                    slot: target,
                    from,
                    fix: "begin the install (which marks it unbootable) and write and verify the image before arming it",
                });
            }
            require_good_booted(&state, booted)?;
            if boot.title.trim().is_empty() || boot.title.chars().any(char::is_control) {
                return Err(SlotsError::InvalidBoot {
                    slot: target,
                    reason: format!("title {:?} must be one non-empty line", boot.title),
                });
            }
            vec![
                Step::Arm {
                    slot: target,
                    tries,
                    boot,
                },
                Step::SetNext { slot: target },
            ]
        }
        Event::MarkGood { slot } => {
            if slot != booted {
                return Err(SlotsError::NotBooted { slot, booted });
            }
            match state.status(slot) {
                SlotStatus::Good => Vec::new(),
                // `next` is left alone: the slot is next already unless a rollback moved it
                // away, and a late health gate must not cancel a rollback.
                SlotStatus::Trying { .. } | SlotStatus::Bad => vec![Step::Bless { slot }],
                from @ SlotStatus::Unbootable => {
                    return Err(SlotsError::InvalidTransition {
                        event: "mark good",
                        slot,
                        from,
                        fix: "the running slot lost its boot entry or was invalidated; install a fresh image into it from the other slot",
                    })
                }
            }
        }
        Event::Rollback => {
            let other = booted.other();
            let status = state.status(other);
            if status != SlotStatus::Good {
                return Err(SlotsError::NoGoodSlot {
                    slot: other,
                    status,
                });
            }
            if state.next == other {
                Vec::new()
            } else {
                vec![Step::SetNext { slot: other }]
            }
        }
        Event::Boot => {
            let (_, after) = simulate_boot(&state)?;
            return Ok((after, Vec::new()));
        }
    };
    let after = steps.iter().fold(state, |s, step| apply_step(&s, step));
    Ok((after, steps))
}

fn refuse_active(target: Slot, booted: Slot) -> Result<(), SlotsError> {
    if target == booted {
        Err(SlotsError::WriteActiveSlot { slot: booted })
    } else {
        Ok(())
    }
}

/// Installing while the running slot is itself on trial would put the only good slot at risk.
fn require_good_booted(state: &BootState, booted: Slot) -> Result<(), SlotsError> {
    let from = state.status(booted);
    if from == SlotStatus::Good {
        return Ok(());
    }
    Err(SlotsError::InvalidTransition {
        event: "install while running from",
        slot: booted,
        from,
        fix: "mark the running slot good (or roll back) before installing into the other slot",
    })
}
