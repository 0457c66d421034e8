//! [`Tegra`]: boot control for Jetson (Orin AGX, Xavier AGX) through NVIDIA's UEFI variables of
//! vendor GUID [`efivar::NVIDIA_GUID`] in efivarfs, plus one small ledger of our own.
//!
//! Variables (each `u32`, see [`efivar`] for the file format):
//! * `RootfsStatusSlotA`, `RootfsStatusSlotB`: 0 = normal, 0xFF = unbootable. The firmware sets
//!   0xFF when a slot uses up its tries; nothing but the updater clears it, which it does when
//!   arming the slot it installed.
//! * `RootfsRetryCountMax`: boot tries of a slot (3 if absent).
//! * `BootChainFwNext`: 0 = A, 1 = B, the slot the firmware boots next (A if absent).
//!
//! The variables cannot say whether a slot is committed or on trial, nor hold a label, so a
//! ledger records, per slot, `committed`, `installing` or `trying` (with `tries_done`) and the
//! label, as JSON:
//!
//! ```json
//! {"a":{"phase":"committed","label":"Aperture 1.0.0"},"b":{"phase":"trying","tries_done":0,"label":"Aperture 2.0.0"}}
//! ```
//!
//! Where the ledger lives is a [`Ledger`]: on a device the record area
//! [`Area::Boot`] of the redundant device state store on the raw partition `aperture_state`
//! ([`aperture_appliance::store`]), never a file on the FAT ESP, where one power cut can leave
//! a renamed file empty. The variables stay authoritative for what the firmware boots: a status
//! of 0xFF is never read as bootable whatever the ledger says.
//!
//! The firmware counts tries in a scratch register (SR_RF), for every boot of a slot, committed
//! or not, and only a reset after each good boot keeps a committed slot booting: the health
//! gate's commit does it ([`BootControl::boot_succeeded`], `nvbootctrl verify` as NVIDIA's
//! image runs it); [`retry`] has the rules and their sources. We cannot read the register, so
//! the ledger's `tries_done` is kept by the simulation only ([`BootControl::loader_boot`], which
//! follows those rules on a simulated register); on a device a slot on trial shows the tries
//! it was armed with until it is marked good or the firmware gives up on it.

pub mod bootimg;
pub mod capsule;
pub mod efivar;
pub mod retry;

use std::fmt;
use std::path::{Path, PathBuf};

use aperture_appliance::store::{Medium, StateStore};
use aperture_appliance::Area;
use serde::{Deserialize, Serialize};

use crate::manager::BootControl;
use crate::state::{BootState, SlotState, SlotStatus, Step};
use crate::{Slot, SlotsError};
use capsule::CapsuleDelivery;
use efivar::EfiVars;
use retry::{NvBootCtrl, Register, RetryReset, SimulatedRegister};

/// `RootfsStatusSlotA`.
pub const VAR_STATUS_A: &str = "RootfsStatusSlotA";
/// `RootfsStatusSlotB`.
pub const VAR_STATUS_B: &str = "RootfsStatusSlotB";
/// `RootfsRetryCountMax`.
pub const VAR_RETRY_COUNT_MAX: &str = "RootfsRetryCountMax";
/// `BootChainFwNext`.
pub const VAR_FW_NEXT: &str = "BootChainFwNext";
/// Slot status value: bootable.
pub const STATUS_NORMAL: u32 = 0;
/// Slot status value: unbootable.
pub const STATUS_UNBOOTABLE: u32 = 0xFF;
/// Tries assumed when `RootfsRetryCountMax` is absent (the L4T default).
pub const DEFAULT_RETRY_COUNT_MAX: u32 = 3;

/// Where [`Tegra`] keeps its ledger (see the module documentation).
pub trait Ledger: fmt::Debug {
    /// Where it is, for messages.
    fn describe(&self) -> String;
    /// The ledger's bytes; `None` when none was ever written (a freshly flashed device).
    fn load(&self) -> Result<Option<Vec<u8>>, SlotsError>;
    /// Replace the ledger with `bytes`, durably and atomically with respect to a power cut.
    fn save(&mut self, bytes: &[u8]) -> Result<(), SlotsError>;
}

/// The device's ledger: record area [`Area::Boot`] of the device state store.
impl<M: Medium + fmt::Debug> Ledger for StateStore<M> {
    fn describe(&self) -> String {
        format!(
            "the {} record of the device state ({})",
            Area::Boot.name(),
            self.name()
        )
    }

    fn load(&self) -> Result<Option<Vec<u8>>, SlotsError> {
        Ok(self.read(Area::Boot)?)
    }

    fn save(&mut self, bytes: &[u8]) -> Result<(), SlotsError> {
        self.write(Area::Boot, bytes)?;
        Ok(())
    }
}

/// What the variables cannot tell about a slot.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "phase", rename_all = "snake_case")]
enum Phase {
    /// Good (also what a slot without a record is: flashed at the factory).
    #[default]
    Committed,
    /// Invalidated for an install.
    Installing,
    /// Armed; `tries_done` is counted by the simulated firmware only.
    Trying { tries_done: u32 },
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
struct Record {
    #[serde(flatten)]
    phase: Phase,
    label: Option<String>,
}

/// The ledger's content: a record per slot.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
struct Slots {
    a: Record,
    b: Record,
}

impl Slots {
    fn get(&self, slot: Slot) -> &Record {
        match slot {
            Slot::A => &self.a,
            Slot::B => &self.b,
        }
    }
    fn get_mut(&mut self, slot: Slot) -> &mut Record {
        match slot {
            Slot::A => &mut self.a,
            Slot::B => &mut self.b,
        }
    }
}

fn status_var(slot: Slot) -> &'static str {
    match slot {
        Slot::A => VAR_STATUS_A,
        Slot::B => VAR_STATUS_B,
    }
}

/// Jetson boot control: NVIDIA UEFI variables plus a [`Ledger`].
#[derive(Debug)]
pub struct Tegra {
    vars: EfiVars,
    ledger: Box<dyn Ledger>,
    capsules: Option<CapsuleDelivery>,
    retry: Box<dyn RetryReset>,
}

impl Tegra {
    /// efivarfs on a device.
    pub const DEVICE_EFIVARS: &'static str = "/sys/firmware/efi/efivars";

    /// Variables in `efivars_dir` (on a device [`Tegra::DEVICE_EFIVARS`]; in tests a folder laid
    /// out the same way) and the ledger in `ledger` (on a device the state store's
    /// [`Area::Boot`]); the retry count is reset by the device's `nvbootctrl`
    /// ([`retry::NVBOOTCTRL`]) unless [`Tegra::with_retry_reset`] says otherwise.
    pub fn new(efivars_dir: PathBuf, ledger: Box<dyn Ledger>) -> Tegra {
        Tegra {
            vars: EfiVars::new(efivars_dir),
            ledger,
            capsules: None,
            retry: Box::new(NvBootCtrl::default()),
        }
    }

    /// Reset the firmware's retry count after a good boot with `retry`: an `nvbootctrl` at
    /// another place, or the simulation's register in tests
    /// ([`Tegra::with_simulated_retry_reset`]).
    pub fn with_retry_reset(mut self, retry: Box<dyn RetryReset>) -> Tegra {
        self.retry = retry;
        self
    }

    /// SIMULATION: reset the retry count as `nvbootctrl verify` would, on the register the
    /// firmware simulation ([`BootControl::loader_boot`]) uses.
    pub fn with_simulated_retry_reset(self) -> Tegra {
        let register = self.simulated_register();
        self.with_retry_reset(Box::new(register))
    }

    /// SIMULATION: the scratch register the firmware simulation counts tries in.
    pub fn simulated_register(&self) -> SimulatedRegister {
        SimulatedRegister::in_folder(self.vars.dir())
    }

    /// SIMULATION: the power goes off; the scratch register is lost, so the next boot counts
    /// from `RootfsRetryCountMax` again (a cold boot).
    pub fn simulate_power_loss(&self) -> Result<(), SlotsError> {
        self.simulated_register().power_loss()
    }

    /// Let the firmware simulation ([`BootControl::loader_boot`]) also process boot-firmware
    /// capsules delivered on the ESP at `esp` (see [`capsule`]): a delivered capsule switches
    /// the boot chain, as NVIDIA's firmware does after a capsule update.
    pub fn with_capsules(mut self, esp: PathBuf) -> Tegra {
        self.capsules = Some(CapsuleDelivery::new(esp, self.vars.dir().to_path_buf()));
        self
    }

    /// The efivarfs folder.
    pub fn efivars_dir(&self) -> &Path {
        self.vars.dir()
    }

    /// The ledger.
    pub fn ledger_store(&self) -> &dyn Ledger {
        &*self.ledger
    }

    /// The file of NVIDIA variable `name` (`Name-781e084c-...`).
    pub fn variable_path(&self, name: &str) -> PathBuf {
        self.vars.path(name)
    }

    fn ledger(&self) -> Result<Slots, SlotsError> {
        match self.ledger.load()? {
            None => Ok(Slots::default()),
            Some(bytes) => serde_json::from_slice(&bytes).map_err(|e| SlotsError::Malformed {
                path: PathBuf::from(self.ledger.describe()),
                reason: format!(
                    "{e}; it is written only by aperture-slots (a newer or a tampered program \
                     wrote it)"
                ),
            }),
        }
    }

    fn save(&mut self, slots: &Slots) -> Result<(), SlotsError> {
        let bytes = serde_json::to_vec(slots).map_err(|e| SlotsError::Malformed {
            path: PathBuf::from(self.ledger.describe()),
            reason: e.to_string(),
        })?;
        self.ledger.save(&bytes)
    }

    fn slot_var(&self, slot: Slot) -> Result<u32, SlotsError> {
        Ok(self
            .vars
            .read_u32(status_var(slot))?
            .unwrap_or(STATUS_NORMAL))
    }

    fn retry_max(&self) -> Result<u32, SlotsError> {
        Ok(self
            .vars
            .read_u32(VAR_RETRY_COUNT_MAX)?
            .unwrap_or(DEFAULT_RETRY_COUNT_MAX))
    }

    fn fw_next(&self) -> Result<Slot, SlotsError> {
        match self.vars.read_u32(VAR_FW_NEXT)? {
            None | Some(0) => Ok(Slot::A),
            Some(1) => Ok(Slot::B),
            Some(other) => Err(SlotsError::Malformed {
                path: self.vars.path(VAR_FW_NEXT),
                reason: format!("value {other}, expected 0 (slot a) or 1 (slot b)"),
            }),
        }
    }

    fn set_fw_next(&self, slot: Slot) -> Result<(), SlotsError> {
        self.vars
            .write_u32(VAR_FW_NEXT, if slot == Slot::A { 0 } else { 1 })
    }

    /// The status of a slot from its variable, its record and the retry maximum.
    fn derive(var: u32, phase: Phase, max: u32) -> SlotStatus {
        match (var, phase) {
            (STATUS_NORMAL, Phase::Committed) => SlotStatus::Good,
            (STATUS_NORMAL, Phase::Trying { tries_done }) => match max.saturating_sub(tries_done) {
                0 => SlotStatus::Bad,
                tries_left => SlotStatus::Trying {
                    tries_left,
                    tries_done,
                },
            },
            // Marked unbootable by the firmware after its tries.
            (_, Phase::Trying { tries_done }) if tries_done >= max => SlotStatus::Bad,
            // 0xFF with an unfinished trial record: an arm cut short before its last write,
            // or an install in progress, or a slot invalidated before we kept records.
            // 0 with an `installing` record: nothing of ours writes that; trust the file.
            _ => SlotStatus::Unbootable,
        }
    }
}

impl BootControl for Tegra {
    fn name(&self) -> &'static str {
        "tegra"
    }

    fn read(&self) -> Result<BootState, SlotsError> {
        let ledger = self.ledger()?;
        let max = self.retry_max()?;
        let mut state = BootState::fresh();
        for slot in Slot::ALL {
            let record = ledger.get(slot);
            let status = Self::derive(self.slot_var(slot)?, record.phase, max);
            let label = if status == SlotStatus::Unbootable {
                None
            } else {
                record.label.clone()
            };
            *state.slot_mut(slot) = SlotState { status, label };
        }
        state.next = self.fw_next()?;
        Ok(state.normalized())
    }

    fn persist(&mut self, step: &Step) -> Result<(), SlotsError> {
        let mut ledger = self.ledger()?;
        match step {
            Step::Invalidate { slot } => {
                // The variable first: from here on the firmware will not boot the slot.
                self.vars.write_u32(status_var(*slot), STATUS_UNBOOTABLE)?;
                *ledger.get_mut(*slot) = Record {
                    phase: Phase::Installing,
                    label: None,
                };
                self.save(&ledger)?;
            }
            Step::Arm { slot, tries, boot } => {
                if !(1..=retry::MAX_TRIES).contains(tries) {
                    return Err(SlotsError::InvalidTries {
                        slot: *slot,
                        tries: *tries,
                        max: retry::MAX_TRIES,
                    });
                }
                let current = Self::derive(
                    self.slot_var(*slot)?,
                    ledger.get(*slot).phase,
                    self.retry_max()?,
                );
                if current != SlotStatus::Unbootable {
                    return Err(SlotsError::InvalidTransition {
                        event: "arm",
                        slot: *slot,
                        from: current,
                        fix: "begin the install (which marks it unbootable) before arming it",
                    });
                }
                // Record the trial, set the tries, and only then clear 0xFF: until that last
                // write the slot reads (and boots) as unbootable.
                *ledger.get_mut(*slot) = Record {
                    phase: Phase::Trying { tries_done: 0 },
                    label: Some(boot.title.clone()),
                };
                self.save(&ledger)?;
                self.vars.write_u32(VAR_RETRY_COUNT_MAX, *tries)?;
                self.vars.write_u32(status_var(*slot), STATUS_NORMAL)?;
            }
            Step::Bless { slot } => {
                let record = ledger.get(*slot);
                if record.phase == Phase::Installing {
                    return Err(SlotsError::InvalidTransition {
                        event: "mark good",
                        slot: *slot,
                        from: SlotStatus::Unbootable,
                        fix: "an interrupted install left it unbootable; install into it again",
                    });
                }
                if self.slot_var(*slot)? != STATUS_NORMAL {
                    self.vars.write_u32(status_var(*slot), STATUS_NORMAL)?;
                }
                ledger.get_mut(*slot).phase = Phase::Committed;
                self.save(&ledger)?;
            }
            Step::SetNext { slot } => self.set_fw_next(*slot)?,
        }
        Ok(())
    }

    fn max_tries(&self) -> u32 {
        retry::MAX_TRIES
    }

    /// Reset the firmware's retry count (rule 6 of [`retry`]): without it the firmware gives up
    /// on the running slot, committed or not, after `RootfsRetryCountMax` warm reboots.
    fn boot_succeeded(&mut self, slot: Slot) -> Result<(), SlotsError> {
        let _ = slot;
        self.retry.reset()
    }

    /// SIMULATION of the Jetson UEFI firmware at a (warm) reboot, following the rules of
    /// [`retry`] on [`Tegra::simulated_register`]. First, with [`Tegra::with_capsules`], a
    /// delivered capsule is applied to the boot chain that is not next and the firmware
    /// switches to that chain. Then L4TLauncher, on the chain `BootChainFwNext` names:
    ///
    /// 1. no valid register (a cold boot, [`Tegra::simulate_power_loss`], or cleared by
    ///    `nvbootctrl verify`): each slot's count is `RootfsRetryCountMax` (2 bits, 3 if the
    ///    variable is absent), 0 for a slot whose status is 0xFF;
    /// 2. the slot's count is above 0: decrement it and boot the slot (a slot on trial also
    ///    counts a try in the ledger, for status reports);
    /// 3. its count is 0: its status becomes 0xFF; if the other slot's count is above 0,
    ///    `BootChainFwNext` becomes the other slot, the register is cleared and the firmware
    ///    resets, then boots it as in 1 and 2; otherwise no slot boots (the recovery kernel).
    fn loader_boot(&mut self) -> Result<Slot, SlotsError> {
        if let Some(capsules) = &self.capsules {
            if !capsules.simulate_firmware()?.is_empty() {
                let updated = self.fw_next()?.other();
                self.set_fw_next(updated)?;
            }
        }
        let register = self.simulated_register();
        // At most one switch of the boot chain (and the reset after it).
        for _ in 0..2 {
            let slot = self.fw_next()?;
            let mut sr = register.get()?;
            if !sr.valid() {
                let max = self.retry_max()?;
                let count = |s| -> Result<u32, SlotsError> {
                    Ok(if self.slot_var(s)? == STATUS_UNBOOTABLE {
                        0
                    } else {
                        max
                    })
                };
                sr = Register::init(slot, count(Slot::A)?, count(Slot::B)?);
            }
            sr = sr.with_current(slot);
            let left = sr.count(slot);
            if left > 0 {
                register.write(sr.with_count(slot, left - 1).0)?;
                let mut ledger = self.ledger()?;
                if let Phase::Trying { tries_done } = ledger.get(slot).phase {
                    ledger.get_mut(slot).phase = Phase::Trying {
                        tries_done: tries_done + 1,
                    };
                    self.save(&ledger)?;
                }
                return Ok(slot);
            }
            self.vars.write_u32(status_var(slot), STATUS_UNBOOTABLE)?;
            if sr.count(slot.other()) == 0 {
                register.write(0)?;
                break;
            }
            self.set_fw_next(slot.other())?;
            register.write(0)?;
        }
        let state = self.read()?;
        Err(SlotsError::NoBootableSlot {
            a: state.a.status,
            b: state.b.status,
        })
    }
}
