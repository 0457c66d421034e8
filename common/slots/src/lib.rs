//! A/B slot control for Aperture appliances: a pure state machine and the boot-control
//! backends that make its steps durable.
//!
//! * [`state`]: [`BootState`], [`Event`], [`Step`] and [`plan`], which turns an event into a new
//!   state and the ordered steps to persist. Pure: no disk, no clock, fully unit-tested,
//!   including a crash after every prefix of every step list.
//! * [`BootControl`]: the backend trait (read the state, persist one step, and for tests
//!   simulate the boot loader), with three implementations:
//!   [`SystemdBoot`] (qemu board: loader entries with boot counting on the ESP),
//!   [`Tegra`] (Jetson: NVIDIA UEFI variables through efivarfs) and
//!   [`FakeBootControl`] (memory or a JSON file, with fault injection).
//! * [`SlotManager`]: what the updater and the agent call (`begin_install`, `arm`, `mark_good`,
//!   `rollback`, `status_report`), for an injected running slot ([`Slot::from_cmdline`]).
//!
//! ## On a device
//! * The running slot comes from the kernel command line: `Slot::from_cmdline(&cmdline)` on
//!   `/proc/cmdline` (every entry [`SlotBoot::for_slot`] makes carries `aperture.slot=`).
//! * qemu-x86_64: `SystemdBoot::new(esp)` with the ESP mounted read-write (no `nofail`, so it
//!   is there before `systemd-bless-boot` runs). The updater writes `aperture/<slot>/vmlinuz`
//!   and `initrd.img` before arming; arming refuses an entry whose files are missing.
//! * Jetson: `Tegra::new(Tegra::DEVICE_EFIVARS.into(), ledger)` with the ledger in the device
//!   state store (`aperture_appliance::StateStore` implements [`tegra::Ledger`]); the slot's
//!   partitions come from [`SlotLayout`], its boot image format from [`tegra::bootimg`], and a
//!   boot-firmware capsule goes through [`tegra::capsule`] with
//!   [`SlotManager::arm_leaving_next`].
//! * The image builder calls [`write_initial_esp`] on the folder it copies onto the ESP.
//!
//! ## Crash safety
//! [`SlotManager`] reads the state, plans, and persists the steps one by one; each step is
//! atomic on its backend (one rename or one file or variable write, or for Tegra writes ordered
//! so that the slot stays unbootable until the last one). A power cut between steps leaves a
//! state in which the loader boots a good slot or a fully written, armed one; the tests prove
//! this for every prefix of every plan on the model and on each backend's files.
//!
//! [`BootControl::loader_boot`] exists for tests only: it simulates the firmware or boot loader
//! on the backend's own files (systemd-boot's entry order and counter renames, the Jetson
//! firmware's retry count and slot switch), so whole reboot cycles run without a machine.
//!
//! A typical install, on the running slot A:
//! ```
//! use aperture_slots::{FakeBootControl, Slot, SlotBoot, SlotManager, BootControl};
//! let mut slots = SlotManager::new(FakeBootControl::fresh(), Slot::A);
//! slots.begin_install(Slot::B)?;               // B unbootable before a byte is written
//! // ... write and verify slot B ...
//! let boot = SlotBoot::for_slot(Slot::B, "Aperture 1.3.0", "root=PARTLABEL=rootfs_b ro");
//! slots.arm(Slot::B, 3, &boot)?;               // B boots next, on trial, 3 tries
//! let booted = slots.backend_mut().loader_boot()?; // simulated reboot
//! assert_eq!(booted, Slot::B);
//! let mut on_b = SlotManager::new(slots.into_backend(), booted);
//! on_b.mark_good()?;                           // after the health gate
//! # Ok::<(), aperture_slots::SlotsError>(())
//! ```

pub mod cmdline;
mod error;
pub mod esp;
mod fake;
mod manager;
mod slot;
pub mod state;
pub mod systemd_boot;
pub mod tegra;

pub use aperture_appliance::{ChainNaming, SlotLayout};
pub use error::SlotsError;
pub use esp::{EspOps, RealEsp};
pub use fake::FakeBootControl;
pub use manager::{BootControl, SlotManager, SlotReport, StatusReport};
pub use slot::{Slot, SlotBoot, CMDLINE_KEY, UKI_FILE};
pub use state::{
    apply_step, plan, simulate_boot, BootState, Event, SlotState, SlotStatus, Step, MAX_TRIES,
};
pub use systemd_boot::entry::{render_entry, EntryName};
pub use systemd_boot::{loader_conf, write_initial_esp, SystemdBoot};
pub use tegra::Tegra;
