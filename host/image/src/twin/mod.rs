//! The Jetson twin: a QEMU arm64 machine (TCG) whose disk is a Jetson build's `disk.img` as the
//! build writes it for a real board, booted the way L4TLauncher boots an A/B rootfs.
//!
//! # Design: a harness step at every power-on
//!
//! Between two boots, with no firmware running, [`Twin::power_on`]:
//! 1. reads the twin's UEFI variable store (an AAVMF `VARS.fd` flash image, [`varstore`]) and
//!    exports NVIDIA's variables (and `OsIndications`) into an efivarfs-like folder
//!    ([`efivarfs`]); copies the ESP's `\EFI\UpdateCapsule` folder out of the disk;
//! 2. applies L4TLauncher's rules with the Tegra backend's firmware simulation,
//!    `aperture_slots::Tegra::loader_boot`, on that folder, the capsule folder and the slot
//!    ledger in the disk's `aperture_state` partition: capsules switch the chain,
//!    `BootChainFwNext` picks the chain, statuses and retry counts decide whether it boots or
//!    is marked unbootable and the other chain boots ([`Twin::choose`] is the only call);
//! 3. imports every variable it changed back into the store, deletes the capsules it
//!    consumed from the ESP, and takes the chosen chain's Android boot image from its kernel
//!    partition (`A_kernel`/`B_kernel`).
//!
//! QEMU then boots that kernel, initrd and command line (`-kernel/-initrd/-append`) under
//! AAVMF with the same variable store as pflash, so the guest has real UEFI runtime services
//! and its efivarfs writes (the updater arming a slot, the health gate committing it) land in
//! the store the next power-on reads. One QEMU process per boot (`-no-reboot`): a guest reboot
//! ends it, and the harness decides the next boot.
//!
//! # What differs from a real Orin
//!
//! - No boot firmware runs: MB1/MB2, BPMP, OP-TEE and UEFI from QSPI are replaced by AAVMF, and
//!   the boot-chain partitions (`A_mb1` ... on QSPI, which this disk does not hold) and
//!   `A_kernel-dtb` are not read. A delivered capsule is consumed (deleted, `OsIndications`
//!   cleared) and switches the chain, but nothing is flashed.
//! - L4TLauncher does not run: its rules are applied here, between boots, by the same
//!   simulation the unit tests use. The retry counts live in a file standing for the SR_RF
//!   scratch register (`sr-rf` in the twin's folder): it survives a warm reboot and is lost at
//!   a power cut ([`Twin::power_cut`]). The guest has no register to clear, so the twin image's
//!   stand-in `nvbootctrl verify` writes [`VERIFY_VAR`], and the next power-on clears the
//!   register for it. The stand-in reaches the image the way NVIDIA's program reaches a real
//!   one (`crate::jetson::tools`): as `usr/sbin/nvbootctrl` of the synthetic BSP's
//!   `nvidia-l4t-tools` deb (`host/image/fixtures/make-synthetic-bsp.sh`), so the twin boots
//!   the unchanged `recipes/jetson-orin-agx.toml`.
//! - QEMU's `virt` machine with its own device tree and ACPI tables, not the Orin's; a virtio
//!   disk (partitions by name, as on the eMMC); the console on `ttyAMA0` (added to the boot
//!   image's command line, which names the Orin's `ttyTCU0`).
//! - swtpm as `tpm-tis-device` stands in for the fTPM in OP-TEE.
//! - The kernel is Debian's arm64 kernel from the rootfs, packed into the boot image by the
//!   build from a "twin BSP" ([`bsp`]): the synthetic BSP with that kernel, since the
//!   synthetic BSP's own kernel is a placeholder and NVIDIA's does not boot on `virt`.

pub mod bsp;
pub mod disk;
pub mod efivarfs;
mod run;
pub mod varstore;

use std::fmt;
use std::path::{Path, PathBuf};

use aperture_appliance::store::StateStore;
use aperture_appliance::{Board, Role};
use aperture_gpt::Guid;
use aperture_slots::tegra::{capsule, efivar, Tegra};
use aperture_slots::{BootControl, BootState, Slot, SlotsError};
use serde::{Deserialize, Serialize};

use crate::jetson::JetsonBoard;
use crate::qemu::{DirectBoot, VmConfig};
use crate::recipe::Arch;
pub use run::{run_interactive, Ending};

/// Arguments the twin adds to the boot image's command line: QEMU `virt`'s serial console
/// (the image names the Orin's `ttyTCU0`, which this machine does not have; the last
/// `console=` is the one systemd and the status line use).
pub const TWIN_CMDLINE: &str = "console=ttyAMA0";

/// Memory of the twin in MiB (an AGX Orin has 32 or 64 GiB; the appliance needs far less).
pub const MEMORY_MIB: u32 = 2048;

/// What went wrong at a power-on.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TwinError {
    /// A file operation.
    #[error("{op} {}", path.display())]
    Io {
        /// What was being done.
        op: &'static str,
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        err: std::io::Error,
    },
    /// The variable store.
    #[error(transparent)]
    Store(#[from] varstore::VarStoreError),
    /// The Tegra backend or its firmware simulation.
    #[error("the Tegra boot control")]
    Slots(#[from] SlotsError),
    /// The device state store (the Tegra ledger's medium).
    #[error("the twin's device state partition")]
    State(#[from] aperture_appliance::store::StoreError),
    /// The disk's partition table.
    #[error("reading the partition table of {}: {reason} (make the twin again from the build)", disk.display())]
    Gpt {
        /// The disk file.
        disk: PathBuf,
        /// What failed.
        reason: String,
    },
    /// A partition the twin needs is missing.
    #[error("{} has no partition {name}: the twin boots Jetson builds only", disk.display())]
    NoPartition {
        /// The disk file.
        disk: PathBuf,
        /// The partition.
        name: String,
    },
    /// The chosen chain's kernel partition holds no usable boot image.
    #[error("{partition} holds no bootable image: {reason}")]
    NoBootImage {
        /// The partition.
        partition: String,
        /// Why.
        reason: String,
    },
    /// The boot image's kernel cannot run on QEMU.
    #[error(
        "{partition}'s kernel is not an arm64 Linux Image (the synthetic BSP's placeholder?): \
         build the twin with `aperture_image::twin::bsp::build` (`cargo xtask vm run --twin` \
         does), whose BSP carries Debian's kernel"
    )]
    NotAKernel {
        /// The partition.
        partition: String,
    },
    /// The ESP could not be read or changed.
    #[error("{what}: {reason}")]
    Esp {
        /// What was being done.
        what: String,
        /// The tool's error.
        reason: String,
    },
    /// The folder is not a twin, or the build is not a Jetson build.
    #[error("{0}")]
    Setup(String),
}

/// What a twin folder records about itself (`twin.json`).
#[derive(Debug, Clone, Serialize, Deserialize)]
struct TwinInfo {
    board: Board,
    build: PathBuf,
    disk_sha256: String,
}

/// A twin: its folder holds the disk, the UEFI variable store, the TPM state and the files of
/// the current boot.
#[derive(Debug)]
pub struct Twin {
    dir: PathBuf,
    info: TwinInfo,
    power_ons: usize,
}

/// The result of one power-on: the slot chosen and what QEMU boots.
#[derive(Debug, Clone)]
pub struct PowerOn {
    /// Power-ons of this twin so far, this one included.
    pub number: usize,
    /// The slot (chain) chosen.
    pub slot: Slot,
    /// Its kernel partition.
    pub partition: &'static str,
    /// The boot state before the rules ran (or why it could not be read).
    pub before: Result<BootState, String>,
    /// The boot state after.
    pub after: Result<BootState, String>,
    /// Variables changed (`Name=value` or `Name deleted`).
    pub changed: Vec<String>,
    /// Capsules consumed.
    pub capsules: Vec<String>,
    /// What QEMU boots.
    pub boot: DirectBoot,
}

fn state_line(s: &Result<BootState, String>) -> String {
    match s {
        Ok(s) => format!("a {}, b {}, next {}", s.a.status, s.b.status, s.next),
        Err(e) => format!("unreadable ({e})"),
    }
}

impl fmt::Display for PowerOn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "twin power-on {}: [{}] -> slot {} from {}",
            self.number,
            state_line(&self.before),
            self.slot,
            self.partition
        )?;
        if !self.capsules.is_empty() {
            write!(f, "; capsules applied: {}", self.capsules.join(", "))?;
        }
        if !self.changed.is_empty() {
            write!(f, "; variables: {}", self.changed.join(", "))?;
        }
        write!(f, "; now [{}]", state_line(&self.after))
    }
}

const INFO: &str = "twin.json";
/// The twin's disk file.
pub const DISK: &str = "disk.img";
/// The twin's UEFI variable store.
pub const VARS: &str = "vars.fd";
/// The twin's TPM state folder.
pub const TPM: &str = "tpm";
/// The simulated SR_RF scratch register between two warm boots (absent after a power cut).
const SR_RF: &str = "sr-rf";
/// The variable (NVIDIA's GUID) the twin image's stand-in `nvbootctrl verify` writes (the
/// synthetic BSP's `nvidia-l4t-tools` deb, `host/image/fixtures/make-synthetic-bsp.sh`): at the
/// next power-on the harness clears SR_RF, as NVIDIA's tool does on the running boot, and
/// deletes the variable.
pub const VERIFY_VAR: &str = "ApertureTwinNvbootctrlVerify";

pub(crate) fn io<'p>(
    op: &'static str,
    path: &'p Path,
) -> impl FnOnce(std::io::Error) -> TwinError + 'p {
    move |err| TwinError::Io {
        op,
        path: path.to_path_buf(),
        err,
    }
}

/// The board and `disk.img` hash a build folder's manifest names.
fn build_facts(build: &Path) -> Result<(Board, String), TwinError> {
    let path = build.join("manifest.json");
    let bytes = std::fs::read(&path).map_err(io("reading", &path))?;
    let m = aperture_trust::manifest::Manifest::from_json_unverified(&bytes)
        .map_err(|e| TwinError::Setup(format!("{}: {e}", path.display())))?;
    let board: Board = m
        .board
        .parse()
        .map_err(|e| TwinError::Setup(format!("{}: {e}", path.display())))?;
    if board.boot_control() != aperture_appliance::BootControlKind::Tegra {
        return Err(TwinError::Setup(format!(
            "{} is a {} build; the twin boots Jetson builds (boot the qemu boards with `vm run`)",
            build.display(),
            board.name()
        )));
    }
    let disk = m
        .artifacts
        .iter()
        .find(|a| a.name.as_str() == crate::outputs::names::DISK)
        .ok_or_else(|| TwinError::Setup(format!("{} lists no disk.img", path.display())))?;
    Ok((board, disk.sha256.to_string()))
}

impl Twin {
    /// A new twin in `dir` (emptied first) from the Jetson build folder `build`: a sparse copy
    /// of its `disk.img` (which stays as built) and a copy of AAVMF's blank variable store.
    pub fn create(build: &Path, dir: &Path) -> Result<Twin, TwinError> {
        let (board, disk_sha256) = build_facts(build)?;
        let _ = std::fs::remove_dir_all(dir);
        std::fs::create_dir_all(dir).map_err(io("creating", dir))?;
        let disk = dir.join(DISK);
        aperture_sys::Cmd::new("cp")
            .arg("--sparse=always")
            .arg(build.join(crate::outputs::names::DISK))
            .arg(&disk)
            .run()
            .map_err(|e| TwinError::Setup(format!("copying the build's disk: {e}")))?;
        let (_, template) = crate::qemu::firmware(Arch::Arm64);
        std::fs::copy(&template, dir.join(VARS)).map_err(io(
            "copying the UEFI variable store (package qemu-efi-aarch64)",
            &template,
        ))?;
        let info = TwinInfo {
            board,
            build: build.to_path_buf(),
            disk_sha256,
        };
        let path = dir.join(INFO);
        let json = serde_json::to_vec_pretty(&info)
            .map_err(|e| TwinError::Setup(format!("encoding {}: {e}", path.display())))?;
        std::fs::write(&path, json).map_err(io("writing", &path))?;
        Ok(Twin {
            dir: dir.to_path_buf(),
            info,
            power_ons: 0,
        })
    }

    /// The twin already in `dir`.
    pub fn open(dir: &Path) -> Result<Twin, TwinError> {
        let path = dir.join(INFO);
        let bytes = std::fs::read(&path).map_err(io("reading", &path))?;
        let info: TwinInfo = serde_json::from_slice(&bytes)
            .map_err(|e| TwinError::Setup(format!("{}: {e}", path.display())))?;
        Ok(Twin {
            dir: dir.to_path_buf(),
            info,
            power_ons: 0,
        })
    }

    /// Whether the twin in `dir` was made from `build`'s current disk.
    pub fn is_current(dir: &Path, build: &Path) -> bool {
        let Ok(twin) = Twin::open(dir) else {
            return false;
        };
        matches!(build_facts(build), Ok((_, sha)) if sha == twin.info.disk_sha256)
            && dir.join(DISK).is_file()
    }

    /// The twin's folder.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Its disk file (raw, sparse; the guest writes it).
    pub fn disk(&self) -> PathBuf {
        self.dir.join(DISK)
    }

    /// Its UEFI variable store.
    pub fn vars(&self) -> PathBuf {
        self.dir.join(VARS)
    }

    /// Its board.
    pub fn board(&self) -> Board {
        self.info.board
    }

    /// The live value of NVIDIA variable `name` in the store (`None` if absent), for checks.
    pub fn nvidia_variable(&self, name: &str) -> Result<Option<Vec<u8>>, TwinError> {
        let store = varstore::VarStore::open(&self.vars())?;
        Ok(store.get(name, nvidia_guid()).map(|v| v.data.clone()))
    }

    /// Apply the firmware's rules for the next boot (see the module documentation) and
    /// return what to boot.
    pub fn power_on(&mut self) -> Result<PowerOn, TwinError> {
        self.power_ons += 1;
        let disk = disk::TwinDisk::open(&self.disk())?;
        let vars_path = self.vars();
        let mut store = varstore::VarStore::open(&vars_path)?;
        let blank = varstore::VarStore::is_blank(
            &std::fs::read(&vars_path).map_err(io("reading", &vars_path))?,
        );
        let work = self.dir.join("power-on");
        let _ = std::fs::remove_dir_all(&work);
        let exported = efivarfs::export(
            &store,
            &work.join("efivars"),
            &[nvidia_guid(), global_guid()],
        )?;
        let esp_part = self.info.board.partition(Role::Esp);
        let capsule_dir = work.join("esp").join(capsule::CAPSULE_DIR);
        let delivered = disk.copy_out(esp_part, capsule::CAPSULE_DIR, &capsule_dir)?;

        let state_part = self.info.board.partition(Role::State);
        let ledger = StateStore::new(disk.medium(state_part)?, state_part)?;
        let mut tegra = Tegra::new(exported.dir().to_path_buf(), Box::new(ledger))
            .with_capsules(work.join("esp"));
        // SR_RF survives a warm reboot: the register of the last boot goes in, cleared if
        // the guest's `nvbootctrl verify` asked for it, and comes out again after the rules.
        let register = tegra.simulated_register();
        let kept = self.dir.join(SR_RF);
        if kept.exists() {
            std::fs::copy(&kept, register.path()).map_err(io("copying", &kept))?;
        }
        let verify = exported
            .dir()
            .join(efivarfs::file_name(VERIFY_VAR, nvidia_guid()));
        let verified = verify.exists();
        if verified {
            register.write(0)?;
            std::fs::remove_file(&verify).map_err(io("removing", &verify))?;
        }
        let before = tegra.read().map_err(|e| e.to_string());
        let slot = Twin::choose(&mut tegra)?;
        let after = tegra.read().map_err(|e| e.to_string());
        drop(tegra);
        if register.path().exists() {
            std::fs::copy(register.path(), &kept).map_err(io("copying", register.path()))?;
            // The exported folder is not the store: the register is no variable.
            std::fs::remove_file(register.path()).map_err(io("removing", register.path()))?;
        }

        let changes = exported.import(&mut store)?;
        if blank || !changes.is_empty() {
            store.save(&vars_path)?;
        }
        let mut capsules = Vec::new();
        for name in delivered {
            if !capsule_dir.join(&name).exists() {
                disk.delete(esp_part, capsule::CAPSULE_DIR, &name)?;
                capsules.push(name);
            }
        }

        let board = JetsonBoard::of(self.info.board)
            .map_err(|e| TwinError::Setup(format!("the twin's board: {e}")))?;
        let partition = board.kernel_partition(slot);
        let image = disk.boot_image(partition)?;
        let boot_dir = self.dir.join("boot");
        std::fs::create_dir_all(&boot_dir).map_err(io("creating", &boot_dir))?;
        let kernel = boot_dir.join("Image");
        let initrd = boot_dir.join("initrd.img");
        std::fs::write(&kernel, &image.kernel).map_err(io("writing", &kernel))?;
        std::fs::write(&initrd, &image.initrd).map_err(io("writing", &initrd))?;
        Ok(PowerOn {
            number: self.power_ons,
            slot,
            partition,
            before,
            after,
            changed: changes.iter().map(describe).collect(),
            capsules,
            boot: DirectBoot {
                kernel,
                initrd,
                cmdline: format!("{} {TWIN_CMDLINE}", image.cmdline.trim()),
            },
        })
    }

    /// The power goes off (QEMU killed, the guest powered off, a run stopped): SR_RF, the
    /// scratch register the firmware counts warm-reboot tries in, is lost, so the next
    /// power-on is a cold boot that counts from `RootfsRetryCountMax` again.
    pub fn power_cut(&self) -> Result<(), TwinError> {
        let kept = self.dir.join(SR_RF);
        match std::fs::remove_file(&kept) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(io("removing", &kept)(e)),
            _ => Ok(()),
        }
    }

    /// THE one place the firmware's slot choice is made: the Tegra backend's simulation of
    /// the boot firmware and L4TLauncher (`Tegra::loader_boot`), which also counts the try.
    fn choose(tegra: &mut Tegra) -> Result<Slot, SlotsError> {
        tegra.loader_boot()
    }

    /// The QEMU configuration that boots `p` on this twin: AAVMF with the twin's variable
    /// store, its disk as a virtio disk, `-kernel/-initrd/-append`, one process per boot.
    pub fn vm_config(&self, p: &PowerOn) -> VmConfig {
        let mut cfg = VmConfig::new(Arch::Arm64, &self.disk(), &self.vars());
        cfg.memory_mib = MEMORY_MIB;
        cfg.direct = Some(p.boot.clone());
        cfg.no_reboot = true;
        cfg
    }

    /// The swtpm state folder: the same TPM at every boot of this twin.
    pub fn tpm_dir(&self) -> PathBuf {
        self.dir.join(TPM)
    }
}

/// NVIDIA's vendor GUID.
pub fn nvidia_guid() -> Guid {
    efivar::NVIDIA_GUID.parse().unwrap_or(Guid::NIL)
}

fn global_guid() -> Guid {
    efivar::EFI_GLOBAL_GUID.parse().unwrap_or(Guid::NIL)
}

/// A change as `Name=0x..` or `Name deleted`.
fn describe(c: &efivarfs::Change) -> String {
    let name = |file: &str| {
        file.get(..file.len().saturating_sub(37))
            .unwrap_or(file)
            .to_string()
    };
    match c {
        efivarfs::Change::Set { file, data } => {
            let value = data.get(4..).unwrap_or_default();
            let mut v = [0u8; 8];
            let n = value.len().min(8);
            v[..n].copy_from_slice(&value[..n]);
            format!("{}={:#x}", name(file), u64::from_le_bytes(v))
        }
        efivarfs::Change::Deleted { file } => format!("{} deleted", name(file)),
    }
}

#[cfg(test)]
mod tests;
