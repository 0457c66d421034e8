//! `aperture-update`: verified A/B installs of signed bundles on an Aperture appliance, and the
//! commit ("mark good") and rollback that follow.
//!
//! The work is done by [`Updater`], built from injected seams so tier-1 tests run on files:
//!
//! | seam | on the appliance | in tests |
//! |---|---|---|
//! | [`Paths`] | `/efi`, `/etc/aperture/...`, `/proc/cmdline` | [`Paths::rooted`] on a temp folder |
//! | [`disk::Disk`] | [`disk::PartlabelDisk`] | [`disk::FileDisk`] (a GPT image file) |
//! | device state | [`store`] on the `aperture_state` partition of the disk | the same, on the file disk |
//! | boot control | [`aperture_slots::SystemdBoot`] on the ESP | `SystemdBoot` on a temp ESP, or `FakeBootControl` |
//! | [`io::Io`] | [`io::RealIo`] | [`io::FaultIo`]: power cut at operation N |
//! | [`tpm::Counters`] | [`tpm::Tpm2Tools`] where the board has a TPM, else [`tpm::NoTpm`] | [`tpm::FakeCounters`] |
//! | clock | system time | a fixed time ([`Updater::with_clock`]) |
//!
//! Operations:
//! * [`Updater::install`] ([`install`] documents the order, which is the safety): the one slot
//!   installer. aperture-reset installs the factory image through it too
//!   ([`Updater::install_locked`] under the slots lock it holds, with [`Policy::Reset`] and
//!   [`Arm::Next`] or [`Arm::RecordOnly`]), after [`Updater::preflight`] (the same checks,
//!   nothing written);
//! * [`Updater::installed`] and [`Updater::verify_slot`] ([`verify`]): what a slot holds, and
//!   reading it back block for block against its record;
//! * [`Updater::status`] ([`status::UpdateStatus`], also embedded in the agent's status);
//! * [`Updater::commit`]: mark the running slot good, raise the anti-rollback floor to the
//!   running image's `security_version` and the accepted keyring sequence to its keyring's (the
//!   ONLY place they rise), in the state store and, where the board has a TPM, in its NV
//!   counters ([`tpm`]; the effective values are the higher of the two);
//! * [`Updater::rollback`]: boot the other (good) slot next;
//!
//! Install, commit and rollback hold the slots lock (`/run/aperture/slots.lock`,
//! [`aperture_appliance::SlotsLock`]) while they run: install and rollback fail at once naming
//! the holder, a commit waits up to [`lifecycle::COMMIT_LOCK_WAIT`].
//! * [`Updater::interrupted`]: the journal of an install that was cut off (see [`lifecycle`]).

mod aligned;
pub mod cli;
pub mod disk;
mod error;
pub mod facts;
pub mod install;
pub mod io;
pub mod lifecycle;
pub mod paths;
pub mod place;
mod readback;
pub mod source;
pub mod state;
pub mod status;
pub mod store;
pub mod tpm;
mod uki;
pub mod verify;
mod write;

use std::sync::Arc;

use aperture_appliance::{Board, BootControlKind, SlotsLock};
use aperture_slots::{
    BootControl, BootState, Slot, SlotManager, SlotsError, Step, SystemdBoot, Tegra,
};
use aperture_trust::keys::PublicKey;

pub use error::UpdateError;
pub use facts::BuildFacts;
pub use install::{Arm, InstallOptions, Installed, Policy, ResetFloor};
pub use paths::Paths;

/// The updater for a system running from one slot.
pub struct Updater {
    paths: Paths,
    disk: Box<dyn disk::Disk>,
    boot: Box<dyn BootControl>,
    io: Arc<dyn io::Io>,
    counters: Arc<dyn tpm::Counters>,
    clock: Box<dyn Fn() -> u64>,
    booted: Slot,
}

impl std::fmt::Debug for Updater {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Updater")
            .field("paths", &self.paths)
            .field("disk", &self.disk.describe())
            .field("boot", &self.boot.name())
            .field("booted", &self.booted)
            .finish()
    }
}

impl Updater {
    /// An updater on `disk` and `boot` for a system running from `booted`, with real I/O and
    /// the system clock.
    pub fn new(
        paths: Paths,
        disk: Box<dyn disk::Disk>,
        boot: Box<dyn BootControl>,
        booted: Slot,
    ) -> Updater {
        Updater {
            paths,
            disk,
            boot,
            io: Arc::new(io::RealIo),
            counters: Arc::new(tpm::NoTpm),
            clock: Box::new(aperture_trust::now_unix),
            booted,
        }
    }

    /// The appliance: the running slot from the kernel command line, partitions by label, and
    /// the board's boot control ([`boot_control_for`]).
    pub fn on_device(paths: Paths) -> Result<Updater, UpdateError> {
        let disk = Box::new(disk::PartlabelDisk::new(&paths.partlabel_dir));
        Updater::on_disk(paths, disk)
    }

    /// Like [`Updater::on_device`] with the partitions of `disk` (a disk image file in
    /// benchmarks and tests).
    pub fn on_disk(paths: Paths, disk: Box<dyn disk::Disk>) -> Result<Updater, UpdateError> {
        let booted = facts::booted_slot(&paths.cmdline)?;
        let facts = facts::load(&paths.build_facts)?;
        let boot = boot_control_for(facts.board, &paths, &*disk, Arc::new(io::RealIo))?;
        let counters: Arc<dyn tpm::Counters> = if facts.tpm {
            Arc::new(tpm::Tpm2Tools::device(&paths.tpm_device))
        } else {
            Arc::new(tpm::NoTpm)
        };
        Ok(Updater::new(paths, disk, boot, booted).with_counters(counters))
    }

    /// Keep the floor and the keyring sequence in `counters` too (the TPM; a fake in tests).
    pub fn with_counters(mut self, counters: Arc<dyn tpm::Counters>) -> Updater {
        self.counters = counters;
        self
    }

    /// Route every write, fsync, rename and boot-control step through `io` (fault injection).
    pub fn with_io(mut self, io: Arc<dyn io::Io>) -> Updater {
        self.io = io;
        self
    }

    /// Use `clock` (unix seconds) for key expiry (never trusted below the signed times the
    /// device knows) and journal times.
    pub fn with_clock(mut self, clock: impl Fn() -> u64 + 'static) -> Updater {
        self.clock = Box::new(clock);
        self
    }

    /// The paths in use.
    pub fn paths(&self) -> &Paths {
        &self.paths
    }

    /// The running slot.
    pub fn booted(&self) -> Slot {
        self.booted
    }

    /// The boot state as the backend reads it.
    pub fn boot_state(&self) -> Result<BootState, UpdateError> {
        Ok(self.boot.read()?)
    }

    fn now(&self) -> u64 {
        (self.clock)()
    }

    /// The time key expiry is judged against: the latest of the clock, the running image's
    /// build time and the newest signed time the device has seen, so a clock that is behind
    /// (a flat RTC battery, a forged NTP answer) cannot make an expired key valid again.
    fn trusted_now(&self, facts: &BuildFacts, state: &state::DeviceState) -> u64 {
        self.now()
            .max(facts.source_date_epoch)
            .max(state.trusted_time)
    }

    /// The device state store on `board`'s state partition, written through the [`io::Io`].
    fn store(&self, board: Board) -> Result<store::Store, UpdateError> {
        store::open(&*self.disk, board, Arc::clone(&self.io))
    }

    /// The updater's record. A lost record (only tampering or a failing medium loses both
    /// copies) reads as floor 0, nothing committed, no journal, and is reported loudly; the
    /// floor is then the highest other trusted floor.
    fn device_state(&self, store: &store::Store) -> Result<state::DeviceState, UpdateError> {
        let (state, origin) = state::DeviceState::load_with_origin(store)?;
        match origin {
            state::Origin::Record => {}
            state::Origin::Blank => {
                tracing::debug!("no update record yet (a freshly flashed device)")
            }
            state::Origin::Lost { reason } => tracing::error!(
                "THE ANTI-ROLLBACK RECORD IS GONE: {reason}. Only tampering or a failing disk \
                 does this. The floor falls back to the highest other trusted floor and the \
                 install journal is lost; the next commit writes a new record."
            ),
        }
        Ok(state)
    }

    /// The effective anti-rollback floor and accepted keyring sequence: the higher of the
    /// store's and the TPM counters'. A TPM that cannot be read is an error: nothing is
    /// installed without knowing the floor.
    fn floors(&self, state: &state::DeviceState) -> Result<(u64, u64), UpdateError> {
        let floor = self.counters.read(tpm::Counter::SecurityFloor)?;
        let keyring = self.counters.read(tpm::Counter::KeyringSequence)?;
        Ok((
            state.security_floor.max(floor),
            state.keyring_sequence.max(keyring),
        ))
    }

    /// [`Updater::floors`] for reports and commits, which must not fail for the TPM: on an
    /// error, the store's values (and the error, logged).
    fn floors_or_store(&self, state: &state::DeviceState) -> (u64, u64) {
        self.floors(state).unwrap_or_else(|e| {
            tracing::error!("{}; using the state store's floor alone", error_chain(&e));
            (state.security_floor, state.keyring_sequence)
        })
    }

    /// Take the slots lock for `aperture-update <verb>`, waiting at most `wait` for its holder.
    fn lock(&self, verb: &str, wait: std::time::Duration) -> Result<SlotsLock, UpdateError> {
        Ok(SlotsLock::acquire(
            &self.paths.slots_lock,
            &format!("aperture-update {verb}"),
            wait,
        )?)
    }

    /// The trusted root public key baked into the image.
    fn root_key(&self) -> Result<PublicKey, UpdateError> {
        PublicKey::load(&self.paths.root_key).map_err(|e| UpdateError::Malformed {
            path: self.paths.root_key.clone(),
            reason: format!("{e}; the root key is baked into the image, rebuild it"),
        })
    }

    /// The slot manager over the backend, with every persisted step announced to the [`io::Io`].
    fn slots(&mut self) -> SlotManager<Gated<'_>> {
        SlotManager::new(
            Gated {
                inner: &mut *self.boot,
                io: &*self.io,
            },
            self.booted,
        )
    }
}

/// An error and its causes, on one line (for logs and reports).
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

/// The boot control for a board: systemd-boot on the ESP for the qemu boards, its entry files
/// written through `io`; NVIDIA's UEFI variables for Jetson, with the slot ledger in area `boot`
/// of the device state store on `disk`, written through `io`, and the firmware's retry count
/// reset after every good boot by NVIDIA's `nvbootctrl verify` (`/usr/sbin/nvbootctrl` under
/// the root of `paths`; [`aperture_slots::tegra::retry`]).
pub fn boot_control_for(
    board: Board,
    paths: &Paths,
    disk: &dyn disk::Disk,
    io: Arc<dyn io::Io>,
) -> Result<Box<dyn BootControl>, UpdateError> {
    Ok(match board.boot_control() {
        BootControlKind::SystemdBoot => {
            Box::new(SystemdBoot::new(paths.esp.clone()).with_ops(Arc::new(io::EspThroughIo(io))))
        }
        BootControlKind::Tegra => {
            let ledger = store::open(disk, board, io)?;
            let nvbootctrl = paths.files().path(aperture_slots::tegra::retry::NVBOOTCTRL);
            Box::new(
                Tegra::new(paths.efivars.clone(), Box::new(ledger))
                    .with_capsules(paths.esp.clone())
                    .with_retry_reset(Box::new(aperture_slots::tegra::retry::NvBootCtrl::new(
                        nvbootctrl,
                    ))),
            )
        }
    })
}

/// A backend whose persisted steps first pass through the [`io::Io`], so a test can cut the
/// power before any of them.
struct Gated<'a> {
    inner: &'a mut dyn BootControl,
    io: &'a dyn io::Io,
}

impl BootControl for Gated<'_> {
    fn name(&self) -> &'static str {
        self.inner.name()
    }

    fn read(&self) -> Result<BootState, SlotsError> {
        self.inner.read()
    }

    fn persist(&mut self, step: &Step) -> Result<(), SlotsError> {
        self.io
            .step(&step.to_string())
            .map_err(|source| SlotsError::Io {
                op: "persisting boot step",
                path: self.inner.name().into(),
                source,
            })?;
        self.inner.persist(step)
    }

    fn tidy(&mut self) -> Result<Vec<String>, SlotsError> {
        let removed = self.inner.tidy()?;
        if !removed.is_empty() {
            tracing::info!(
                "removed what a cut write left among the boot entries: {}",
                removed.join(", ")
            );
        }
        Ok(removed)
    }

    fn max_tries(&self) -> u32 {
        self.inner.max_tries()
    }

    fn boot_succeeded(&mut self, slot: Slot) -> Result<(), SlotsError> {
        self.io
            .step(&format!(
                "reset the boot tries after slot {slot}'s good boot"
            ))
            .map_err(|source| SlotsError::Io {
                op: "resetting the boot tries",
                path: self.inner.name().into(),
                source,
            })?;
        self.inner.boot_succeeded(slot)
    }

    fn loader_boot(&mut self) -> Result<Slot, SlotsError> {
        self.inner.loader_boot()
    }
}
