//! The backend trait [`BootControl`] and the facade [`SlotManager`], which reads the state, asks
//! the pure machine for a plan and persists its steps in order. The running slot is injected
//! (from `aperture.slot=` on `/proc/cmdline` in the binaries), never discovered here.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::state::{plan, BootState, Event, SlotStatus, Step, MAX_TRIES};
use crate::{Slot, SlotBoot, SlotsError};

/// A boot-control backend: where the A/B state lives and how each step is made durable.
pub trait BootControl {
    /// Short backend name for status output (`systemd-boot`, `tegra`, `fake`).
    fn name(&self) -> &'static str;

    /// Read the current, normalized boot state.
    fn read(&self) -> Result<BootState, SlotsError>;

    /// Make one step durable. Each call is atomic with respect to a power cut, or at least
    /// leaves a state equal to the one before or after the step as far as booting goes.
    fn persist(&mut self, step: &Step) -> Result<(), SlotsError>;

    /// Remove what a power cut in the middle of a write or rename left behind (a backend that
    /// can be left so says how it reads such a state); returns what was removed. Run before
    /// every change of the boot state; the default has nothing to do.
    fn tidy(&mut self) -> Result<Vec<String>, SlotsError> {
        Ok(Vec::new())
    }

    /// The most boot tries a slot can be armed with (at most [`MAX_TRIES`]; 3 on Jetson).
    fn max_tries(&self) -> u32 {
        MAX_TRIES
    }

    /// What the platform needs after the running `slot` passed its health gate and was
    /// committed, on EVERY good boot (not only the first): on Jetson, reset the firmware's
    /// retry count, which counts committed slots too ([`crate::tegra::retry`]). systemd-boot
    /// counts only entries with a counter, which the commit removed: nothing to do (the
    /// default).
    fn boot_succeeded(&mut self, slot: Slot) -> Result<(), SlotsError> {
        let _ = slot;
        Ok(())
    }

    /// SIMULATION ONLY: act as the firmware or boot loader does at power-on (choose a slot,
    /// count a try, fall back) on the backend's files, and return the slot booted. Tests use it
    /// to reboot without a machine; on a device the real loader does this and nothing should
    /// call it.
    fn loader_boot(&mut self) -> Result<Slot, SlotsError>;
}

impl<T: BootControl + ?Sized> BootControl for Box<T> {
    fn name(&self) -> &'static str {
        (**self).name()
    }
    fn read(&self) -> Result<BootState, SlotsError> {
        (**self).read()
    }
    fn persist(&mut self, step: &Step) -> Result<(), SlotsError> {
        (**self).persist(step)
    }
    fn tidy(&mut self) -> Result<Vec<String>, SlotsError> {
        (**self).tidy()
    }
    fn max_tries(&self) -> u32 {
        (**self).max_tries()
    }
    fn boot_succeeded(&mut self, slot: Slot) -> Result<(), SlotsError> {
        (**self).boot_succeeded(slot)
    }
    fn loader_boot(&mut self) -> Result<Slot, SlotsError> {
        (**self).loader_boot()
    }
}

/// Slot operations for the running system: a backend plus the slot it runs from.
#[derive(Debug)]
pub struct SlotManager<B: BootControl> {
    backend: B,
    booted: Slot,
}

impl<B: BootControl> SlotManager<B> {
    /// A manager for a system running from `booted`.
    pub fn new(backend: B, booted: Slot) -> Self {
        SlotManager { backend, booted }
    }

    /// The running slot.
    pub fn booted(&self) -> Slot {
        self.booted
    }

    /// The backend.
    pub fn backend(&self) -> &B {
        &self.backend
    }

    /// The backend, mutably (tests use it to simulate reboots).
    pub fn backend_mut(&mut self) -> &mut B {
        &mut self.backend
    }

    /// Give the backend back.
    pub fn into_backend(self) -> B {
        self.backend
    }

    /// The current boot state.
    pub fn state(&self) -> Result<BootState, SlotsError> {
        self.backend.read()
    }

    /// Start an install into `target`: it becomes unbootable (and stops being the next boot)
    /// before anything is written to it.
    pub fn begin_install(&mut self, target: Slot) -> Result<BootState, SlotsError> {
        self.apply(Event::BeginInstall { target })
    }

    /// `target` was written and verified: boot it next, on trial, at most `tries` times.
    pub fn arm(
        &mut self,
        target: Slot,
        tries: u32,
        boot: &SlotBoot,
    ) -> Result<BootState, SlotsError> {
        self.check_tries(target, tries)?;
        self.apply(Event::Arm {
            target,
            tries,
            boot: boot.clone(),
        })
    }

    /// Arm `target` like [`SlotManager::arm`] but leave the next boot where it is: for an install
    /// that also delivers a boot-firmware capsule on Jetson, whose firmware switches the boot
    /// chain itself after applying it (see [`crate::tegra::capsule`]); switching as well would
    /// cancel that out. Until the firmware switches, the running slot stays the next boot.
    pub fn arm_leaving_next(
        &mut self,
        target: Slot,
        tries: u32,
        boot: &SlotBoot,
    ) -> Result<BootState, SlotsError> {
        self.check_tries(target, tries)?;
        self.backend.tidy()?;
        let state = self.backend.read()?;
        let (mut after, steps) = plan(
            &state,
            self.booted,
            Event::Arm {
                target,
                tries,
                boot: boot.clone(),
            },
        )?;
        for step in steps.iter().filter(|s| !matches!(s, Step::SetNext { .. })) {
            self.backend.persist(step)?;
        }
        after.next = state.normalized().next;
        Ok(after)
    }

    /// The running slot passed its health gate: commit it and keep booting it. Nothing is
    /// written if it is already good, but what the platform needs after every good boot is
    /// done each time ([`BootControl::boot_succeeded`]: on Jetson the firmware's retry count is
    /// reset), so the health gate calls this on every boot.
    pub fn mark_good(&mut self) -> Result<BootState, SlotsError> {
        let after = self.apply(Event::MarkGood { slot: self.booted })?;
        self.backend.boot_succeeded(self.booted)?;
        Ok(after)
    }

    /// Refuse a try count the backend cannot keep, before anything is persisted.
    fn check_tries(&self, target: Slot, tries: u32) -> Result<(), SlotsError> {
        let max = self.backend.max_tries();
        if !(1..=max).contains(&tries) {
            return Err(SlotsError::InvalidTries {
                slot: target,
                tries,
                max,
            });
        }
        Ok(())
    }

    /// Boot the other slot next; it must be good.
    pub fn rollback(&mut self) -> Result<BootState, SlotsError> {
        self.apply(Event::Rollback)
    }

    /// Everything `status --json` shows.
    pub fn status_report(&self) -> Result<StatusReport, SlotsError> {
        let state = self.backend.read()?;
        let slots = Slot::ALL
            .into_iter()
            .map(|slot| SlotReport {
                slot,
                status: state.status(slot),
                label: state.slot(slot).label.clone(),
                booted: slot == self.booted,
                next: slot == state.next,
            })
            .collect();
        Ok(StatusReport {
            backend: self.backend.name().to_string(),
            booted: self.booted,
            next: state.next,
            slots,
        })
    }

    /// Tidy the backend, plan `event` against the state on disk and persist every step in
    /// order. On an error the steps already persisted stay: by construction that is a safe
    /// state.
    fn apply(&mut self, event: Event) -> Result<BootState, SlotsError> {
        self.backend.tidy()?;
        let state = self.backend.read()?;
        let (after, steps) = plan(&state, self.booted, event)?;
        for step in &steps {
            self.backend.persist(step)?;
        }
        Ok(after)
    }
}

/// One slot in a [`StatusReport`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SlotReport {
    /// Which slot.
    pub slot: Slot,
    /// Its boot status.
    pub status: SlotStatus,
    /// Its image version, if known.
    pub label: Option<String>,
    /// The system runs from it.
    pub booted: bool,
    /// The loader boots it next.
    pub next: bool,
}

/// The boot state as shown by `aperture-update status` (serializable for `--json`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusReport {
    /// Backend name.
    pub backend: String,
    /// The running slot.
    pub booted: Slot,
    /// The slot booted next.
    pub next: Slot,
    /// Both slots, A first.
    pub slots: Vec<SlotReport>,
}

impl fmt::Display for StatusReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "boot control: {}", self.backend)?;
        for s in &self.slots {
            let mut marks = Vec::new();
            if s.booted {
                marks.push("running");
            }
            if s.next {
                marks.push("next boot");
            }
            let marks = if marks.is_empty() {
                String::new()
            } else {
                format!(" [{}]", marks.join(", "))
            };
            let label = s.label.as_deref().unwrap_or("-");
            writeln!(f, "slot {}: {} ({label}){marks}", s.slot, s.status)?;
        }
        Ok(())
    }
}
