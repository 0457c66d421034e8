//! Data at rest on an Aperture appliance: the `config` and `data` partitions as LUKS2 volumes
//! with random keys sealed to the device, formatted on first boot and unlocked at every boot
//! (`aperture-storage setup`, from `aperture-storage.service`, before `local-fs.target`).
//!
//! * [`setup`]: the boot logic ([`Storage::setup`], [`Storage::status`]) and its [`Paths`].
//! * [`keys`]: [`Key`] and the [`KeySource`] trait: [`Tpm2`] (tpm2-tools) or the loud
//!   [`UnsafeEspKeyFile`] fallback.
//! * [`crypt`]: the [`Crypt`] trait: [`CryptSetup`] and the test double [`FakeCrypt`].
//! * [`disk`]: partitions by GPT label ([`Disk`], [`Partition`]) on the device or in an image
//!   file, and growing the last partition with `aperture-gpt`.
//! * [`luks`]: LUKS headers read from the partition: magic, label, metadata extent.
//! * [`mounts`]: the [`Mounter`] trait (blkid, mkfs.ext4, mount, mountinfo) and a fake.
//! * [`cmd`]: the one helper that runs external commands; [`fsutil`]: durable file updates.
//!
//! aperture-reset builds on the same traits to wipe the volumes, so that both programs agree
//! on partition names, header layout and where keys live.
//!
//! ```
//! use aperture_storage::{Volume, Paths};
//! let p = Paths::default();
//! assert_eq!(p.mount_point(Volume::Data), std::path::Path::new("/data"));
//! assert_eq!(p.key_dir, std::path::Path::new("/efi/aperture/keys"));
//! ```

pub mod cmd;
pub mod crypt;
pub mod disk;
mod error;
pub mod fsutil;
pub mod keys;
pub mod luks;
pub mod mounts;
pub mod setup;

pub use crypt::{Crypt, CryptSetup, FakeCrypt, LABEL_FORMATTING};
pub use disk::{Access, DeviceDisk, Disk, FileDisk, FilePartition, MemPartition, Partition};
pub use error::StorageError;
pub use keys::{Key, KeySource, KeySourceKind, Tpm2, UnsafeEspKeyFile, KEY_LEN};
pub use mounts::{FakeMounts, Mounter, SystemMounts};
pub use setup::{reset_wipe_pending, Paths, StatusReport, Storage, Volume, VolumeSetup};

/// The real parts for this device: the disk by partition label, cryptsetup, the detected key
/// source and the system mounter.
pub fn system_parts(paths: &Paths) -> (DeviceDisk, CryptSetup, Box<dyn KeySource>, SystemMounts) {
    (
        DeviceDisk::new(
            paths.partlabel_dir.clone(),
            paths.sys_class_block.clone(),
            paths.dev_dir.clone(),
        ),
        CryptSetup::new(paths.mapper_dir.clone()),
        keys::detect(&paths.tpm_device, &paths.key_dir, &paths.run_dir),
        SystemMounts::new(paths.mountinfo.clone()),
    )
}
