//! Data at rest on an Aperture appliance: the `config` and `data` partitions as LUKS2 volumes
//! with random keys sealed to the device, formatted on first boot and unlocked at every boot
//! (`aperture-storage setup`, from `aperture-storage.service`, before `local-fs.target`).
//!
//! No device state is kept on the ESP (FAT has no journal; issue 12). A volume's sealed key is
//! kept twice: in a LUKS2 token of its own header, which cryptsetup keeps in two copies, and in
//! the `storage` record of the redundant device state ([`aperture_appliance::StateStore`]).
//!
//! * [`setup`]: the boot logic ([`Storage::setup`]); [`status`]: [`Storage::status`].
//! * [`policy`]: which key source seals a volume, and waiting for the TPM.
//! * [`keys`]: [`Key`], [`SealedKey`] and the [`KeySource`] trait: [`Tpm2`] (tpm2-tools), the
//!   loud [`UnsafePlainKey`] for boards without a TPM, and the test double [`FakeTpm`].
//! * [`records`]: the token and `storage` record formats, and [`StorageState`].
//! * [`crypt`]: the [`Crypt`] trait and [`CryptSetup`]; [`fake`]: [`FakeCrypt`] and power
//!   cuts ([`PowerCut`]).
//! * [`luks`]: LUKS2 headers read from the partition: both copies, checksums, tokens.
//! * [`disk`]: partitions by GPT label ([`Disk`], [`Partition`]) on the device or in an image
//!   file, and growing the last partition with `aperture-gpt`.
//! * [`mounts`]: the [`Mounter`] trait (blkid, mkfs.ext4, mount, mountinfo) and a fake.
//! * [`volume`]: the two [`Volume`]s and the reset guard.
//!
//! aperture-reset builds on the same parts to wipe the volumes (and
//! [`StorageState::forget`]s them), so that both programs agree on partitions, headers and
//! where keys live.
//!
//! ```
//! use aperture_appliance::{Board, Files};
//! use aperture_storage::Volume;
//! let files = Files::default();
//! assert_eq!(Volume::Data.mount_point(&files), std::path::Path::new("/data"));
//! assert_eq!(Volume::Data.partition(Board::JetsonOrinAgx), "UDA");
//! ```

use std::time::Duration;

use aperture_appliance::{BuildFacts, Files, Role};

pub mod boot;
pub mod cli;
pub mod crypt;
pub mod disk;
mod error;
pub mod fake;
pub mod keys;
pub mod luks;
pub mod mounts;
pub mod policy;
pub mod records;
pub mod setup;
pub mod status;
pub mod volume;

pub use boot::{BootBinding, BootChain};
pub use crypt::{Crypt, CryptSetup, LABEL_FORMATTING};
pub use disk::{Access, DeviceDisk, Disk, FileDisk, FilePartition, MemPartition, Partition};
pub use error::{StorageError, RESET_LEVEL3};
pub use fake::{CutMedium, FakeCrypt, PowerCut};
pub use keys::{
    FakeTpm, Key, KeySource, KeySourceKind, SealedKey, Secret, Tpm2, UnsafePlainKey, KEY_LEN,
    MAX_SEALED,
};
pub use mounts::{FakeMounts, Mounter, SystemMounts};
pub use records::{StorageRecord, StorageState, VolumeRecord, VolumeState};
pub use setup::{Repair, Storage, VolumeSetup};
pub use status::{StatusReport, VolumeStatus};
pub use volume::{reset_wipe_pending, Volume};

/// The real parts of this appliance: its facts, the disk by partition label, cryptsetup, the
/// TPM through tpm2-tools, the device state on its partition, and the system mounter.
#[derive(Debug)]
pub struct SystemParts {
    /// Where things are.
    pub files: Files,
    /// The image's facts.
    pub facts: BuildFacts,
    /// The disk.
    pub disk: DeviceDisk,
    /// cryptsetup.
    pub crypt: CryptSetup,
    /// The TPM.
    pub tpm: Tpm2,
    /// The device state.
    pub state: StorageState,
    /// Mounts.
    pub mounts: SystemMounts,
}

impl SystemParts {
    /// The parts of the appliance laid out as `files` says.
    pub fn open(files: Files) -> Result<SystemParts, StorageError> {
        let facts = BuildFacts::load(&files.build_facts())?;
        let state = StorageState::open(&files.partition(facts.board.partition(Role::State)))?;
        let mut tpm = Tpm2::new(files.run_dir());
        if facts.tpm && facts.board.secure_boot() {
            tpm = tpm.with_boot_chain(BootChain::of(&files));
        }
        Ok(SystemParts {
            disk: DeviceDisk::on(&files),
            crypt: CryptSetup::new(files.mapper_dir()),
            tpm,
            mounts: SystemMounts::new(files.mountinfo()),
            state,
            facts,
            files,
        })
    }

    /// The storage program over these parts, waiting at most `tpm_wait` for the TPM.
    pub fn storage(&self, tpm_wait: Duration) -> Storage<'_> {
        Storage {
            files: &self.files,
            facts: &self.facts,
            disk: &self.disk,
            crypt: &self.crypt,
            tpm: &self.tpm,
            state: &self.state,
            mounts: &self.mounts,
            tpm_wait,
        }
    }
}
