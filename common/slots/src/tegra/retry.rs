//! The rootfs boot retry count of NVIDIA's UEFI firmware (L4TLauncher, Jetson Linux R35/R36
//! with rootfs A/B), and resetting it after a good boot as NVIDIA's own image does.
//!
//! L4TLauncher counts EVERY boot of a rootfs slot, committed or not, in a scratch register that
//! survives a warm reboot; NVIDIA's image resets the count after each boot that reached
//! userspace (`nv-l4t-bootloader-config.service` runs `nvbootctrl verify`). Without that reset,
//! a committed slot is given up after `RootfsRetryCountMax` warm reboots: marked unbootable,
//! and the other slot (an older image, or nothing) boots. So the health gate's commit resets it
//! on every good boot ([`crate::BootControl::boot_succeeded`], through [`RetryReset`]):
//! [`NvBootCtrl`] on a device, [`SimulatedRegister`] in tests.
//!
//! ## The rules, with their sources
//!
//! | # | rule | here | source |
//! |---|---|---|---|
//! | 1 | The count lives in the scratch register SR_RF: bits 0-15 magic `0xFACE`, 16-17 the current slot, 18-19 slot B's count, 20-21 slot A's count. | [`Register`] | edk2-nvidia `Silicon/NVIDIA/Application/L4TLauncher/L4TRootfsValidation.h` (tag r36.4.0); R35: `Silicon/NVIDIA/Library/RootfsValidationLib/RootfsValidationPrivate.h` (tag r35.3.1) |
//! | 2 | SR_RF survives a warm reboot and is lost at power loss. With no magic (a cold boot, or after a clear) L4TLauncher sets each slot's count to `RootfsRetryCountMax`, or to 0 for a slot whose `RootfsStatusSlotX` is 0xFF. | the simulation (`Tegra`'s `BootControl::loader_boot`), [`crate::Tegra::simulate_power_loss`] | `InitializeRootfsStatusReg` in the files above; NVIDIA forum "Reset Timing of Boot Retry Count" (forums.developer.nvidia.com/t/277168) and "Logic for retry count" (t/364887): "if cold boot: retry_count=MAX; if warm boot: retry_count=value in Scratch register" |
//! | 3 | Every boot of the current slot (`BootChainFwNext`) with a count above 0 decrements it and boots; committed or on trial makes no difference. | `loader_boot` | `ValidateRootfsStatus`, `DecreaseRootfsRetryCount`; forum t/364887: "retry_count-- (in Scratch register) in L4TLauncher" |
//! | 4 | The current slot's count is 0: its `RootfsStatusSlotX` becomes 0xFF; if the other slot's count is above 0, it is decremented, `BootChainFwNext` becomes the other slot, SR_RF is cleared and the firmware resets (the next pass starts from the variables); if not, the recovery kernel boots. | `loader_boot` | `ValidateRootfsStatus` (`NVIDIA_OS_REDUNDANCY_BOOT_ROOTFS` case and its exit path: "Clear the rootfs status register before issuing a reset") |
//! | 5 | Counts are 2 bits: a `RootfsRetryCountMax` above 3 is truncated (4 gives 0: the slot never boots). Slots are armed with 1 to [`MAX_TRIES`] tries. | [`crate::Tegra`]'s `max_tries` and arm | the `SR_RF_RETRY_COUNT_*_SET` macros (`& 0x03U`); `smd_info` "MAX_ROOTFS_AB_RETRY_COUNT ... valid setting is 1 to 3" (forum t/200537) |
//! | 6 | After a boot reached userspace, `nv-l4t-bootloader-config.service` runs `nvbootctrl verify`, which clears the retry count in SR_RF. Without it a device falls over after its third warm reboot. | [`NvBootCtrl`], called by the health gate's commit on every good boot ([`crate::SlotManager::mark_good`]) | forum t/364887: "the background service nv-l4t-bootloader-config.service clear the retry_count value in Scratch register"; forum "Orin AGX OTA update: rollback behaviour of nvbootctrl verify" (t/305934): the service "just calls nvbootctrl verify"; OE4T/meta-tegra `recipes-bsp/tegra-binaries/tegra-redundant-boot/nv_update_verifier.service` (`ExecStart=/usr/sbin/nvbootctrl verify`) and issue #1071 ("fails to boot after the 3rd reboot", fixed by installing it) |
//! | 7 | `RootfsStatusSlotA`/`B`: 0 normal, 0xFF unbootable; only an update (or the UEFI menu) sets a slot back to normal. | [`crate::Tegra`]'s arm | Jetson Linux Developer Guide, "UEFI Adaptation", UEFI variables (R35.6, R36); `ValidateRootfsStatus`: "Slot status can be set to normal via UEFI menu in next boot or via OTA" |
//! | 8 | `nvbootctrl` reaches SR_RF through `/dev/mem`: the kernel must not be built with `CONFIG_IO_STRICT_DEVMEM`. | (image builder) | OE4T/meta-tegra PR #1833 ("nvbootctrl relies on mapping /dev/mem"; after it "the subsequent sr and retry count resets are working") |
//!
//! Not public, and so an assumption of the simulation: whether `nvbootctrl verify` zeroes the
//! whole register (the next boot then starts from the variables, rule 2) or only restores the
//! running slot's count. [`SimulatedRegister`] zeroes it, NVIDIA's wording. The difference
//! matters for one case only: a slot the firmware marked 0xFF, installed again and armed
//! within the same power cycle, must get its tries back; the first hardware run must check it
//! (`nvbootctrl dump-slots-info` shows both counts).

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};

use aperture_sys::Cmd;

use crate::{Slot, SlotsError};

/// Where NVIDIA's `nvbootctrl` (package `nvidia-l4t-tools`) is on a Jetson image.
pub const NVBOOTCTRL: &str = "/usr/sbin/nvbootctrl";

/// The most tries a Jetson slot can be armed with: the firmware keeps 2 bits (rule 5).
pub const MAX_TRIES: u32 = 3;

/// File name of the simulated SR_RF register, in the test's efivars folder.
pub const SIMULATED_REGISTER_FILE: &str = "aperture-simulated-SR_RF";

/// What resets the firmware's retry count after a good boot (rule 6).
pub trait RetryReset: fmt::Debug {
    /// What it is, for messages.
    fn describe(&self) -> String;
    /// Reset the retry count: the running slot boots `RootfsRetryCountMax` more times.
    fn reset(&mut self) -> Result<(), SlotsError>;
}

/// The device's reset: `nvbootctrl verify`, as `nv-l4t-bootloader-config.service` runs it.
#[derive(Debug, Clone)]
pub struct NvBootCtrl {
    program: PathBuf,
}

impl NvBootCtrl {
    /// `nvbootctrl` at `program` (on a device [`NVBOOTCTRL`]).
    pub fn new(program: impl Into<PathBuf>) -> NvBootCtrl {
        NvBootCtrl {
            program: program.into(),
        }
    }
}

impl Default for NvBootCtrl {
    fn default() -> Self {
        NvBootCtrl::new(NVBOOTCTRL)
    }
}

impl RetryReset for NvBootCtrl {
    fn describe(&self) -> String {
        format!("{} verify", self.program.display())
    }

    fn reset(&mut self) -> Result<(), SlotsError> {
        Cmd::new(&self.program)
            .arg("verify")
            .run()
            .map_err(|err| SlotsError::RetryReset {
                by: self.describe(),
                err: Box::new(err),
            })?;
        Ok(())
    }
}

/// SIMULATION of SR_RF for tests: a 4-byte file (little-endian) standing for the scratch
/// register; absent reads as 0, the value after power loss. Its [`RetryReset`] clears it, as
/// `nvbootctrl verify` does (rule 6, and the assumption above).
#[derive(Debug, Clone)]
pub struct SimulatedRegister {
    path: PathBuf,
}

impl SimulatedRegister {
    /// The register of the simulated firmware whose variables are in `efivars_dir`.
    pub fn in_folder(efivars_dir: &Path) -> SimulatedRegister {
        SimulatedRegister {
            path: efivars_dir.join(SIMULATED_REGISTER_FILE),
        }
    }

    /// Its file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The register's value.
    pub fn read(&self) -> Result<u32, SlotsError> {
        match std::fs::read(&self.path) {
            Ok(b) if b.len() == 4 => Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]])),
            Ok(b) => Err(SlotsError::Malformed {
                path: self.path.clone(),
                reason: format!("{} bytes; the simulated register holds 4", b.len()),
            }),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(0),
            Err(e) => Err(SlotsError::Io {
                op: "reading",
                path: self.path.clone(),
                source: e,
            }),
        }
    }

    /// Set the register.
    pub fn write(&self, value: u32) -> Result<(), SlotsError> {
        std::fs::write(&self.path, value.to_le_bytes())
            .map_err(SlotsError::io("writing", &self.path))
    }

    /// The register after a power loss.
    pub fn power_loss(&self) -> Result<(), SlotsError> {
        match std::fs::remove_file(&self.path) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => {
                Err(SlotsError::io("removing", &self.path)(e))
            }
            _ => Ok(()),
        }
    }

    /// The decoded register.
    pub fn get(&self) -> Result<Register, SlotsError> {
        Ok(Register(self.read()?))
    }
}

impl RetryReset for SimulatedRegister {
    fn describe(&self) -> String {
        format!("the simulated SR_RF register {}", self.path.display())
    }

    fn reset(&mut self) -> Result<(), SlotsError> {
        self.write(0)
    }
}

/// SR_RF's fields (rule 1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Register(pub u32);

const MAGIC: u32 = 0xFACE;

impl Register {
    /// A freshly initialized register (rule 2): magic, `current`, and each slot's count.
    pub fn init(current: Slot, a: u32, b: u32) -> Register {
        Register(MAGIC)
            .with_current(current)
            .with_count(Slot::A, a)
            .with_count(Slot::B, b)
    }

    /// Whether the firmware initialized it (the magic is there).
    pub fn valid(self) -> bool {
        self.0 & 0xFFFF == MAGIC
    }

    fn shift(slot: Slot) -> u32 {
        match slot {
            Slot::A => 20,
            Slot::B => 18,
        }
    }

    /// `slot`'s retry count.
    pub fn count(self, slot: Slot) -> u32 {
        (self.0 >> Self::shift(slot)) & 0x3
    }

    /// With `slot`'s count set (2 bits: higher values are truncated, as the firmware does).
    pub fn with_count(self, slot: Slot, count: u32) -> Register {
        let s = Self::shift(slot);
        Register((self.0 & !(0x3 << s)) | ((count & 0x3) << s))
    }

    /// With the current slot set.
    pub fn with_current(self, slot: Slot) -> Register {
        let bits = match slot {
            Slot::A => 0,
            Slot::B => 1,
        };
        Register((self.0 & !(0x3 << 16)) | (bits << 16))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn register_fields_are_nvidias() {
        let r = Register::init(Slot::B, 3, 2);
        assert!(r.valid());
        assert_eq!(r.0, 0xFACE | (1 << 16) | (2 << 18) | (3 << 20));
        assert_eq!((r.count(Slot::A), r.count(Slot::B)), (3, 2));
        // Two bits: 4 is 0 to the firmware.
        assert_eq!(r.with_count(Slot::A, 4).count(Slot::A), 0);
        assert!(!Register(0).valid());
    }

    #[test]
    fn the_simulated_register_is_lost_at_power_loss_and_cleared_by_the_reset() {
        let d = tempfile::tempdir().unwrap();
        let mut r = SimulatedRegister::in_folder(d.path());
        assert_eq!(r.read().unwrap(), 0);
        r.write(Register::init(Slot::A, 2, 3).0).unwrap();
        assert!(r.get().unwrap().valid());
        r.reset().unwrap();
        assert!(!r.get().unwrap().valid());
        r.write(7).unwrap();
        r.power_loss().unwrap();
        r.power_loss().unwrap();
        assert_eq!(r.read().unwrap(), 0);
    }

    #[test]
    fn nvbootctrl_verify_is_run_and_its_failure_names_it() {
        let d = tempfile::tempdir().unwrap();
        let log = d.path().join("log");
        let prog = d.path().join("nvbootctrl");
        std::fs::write(
            &prog,
            format!("#!/bin/sh\necho \"$@\" >> {}\n", log.display()),
        )
        .unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&prog, std::fs::Permissions::from_mode(0o755)).unwrap();
        NvBootCtrl::new(&prog).reset().unwrap();
        assert_eq!(std::fs::read_to_string(&log).unwrap(), "verify\n");
        let err = NvBootCtrl::new(d.path().join("missing"))
            .reset()
            .unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains("missing verify") && text.contains("RootfsRetryCountMax"),
            "{text}"
        );
    }
}
