//! What `aperture-storage` does at every boot, and what `status` shows.
//!
//! For each [`Volume`] (`config`, then `data`):
//!
//! * **First boot** (no LUKS header on the partition): grow `data` to the end of the disk,
//!   make a random key and seal it, `luksFormat` with the label [`LABEL_FORMATTING`], open,
//!   `mkfs.ext4`, set the label to the volume's name, mount, and for `data` create
//!   `/data/var/{upper,work}` for `/var`'s persistent overlay.
//! * **Every later boot**: unseal the key, open, mount.
//!
//! The order makes every power cut recoverable at the next boot: the key is sealed before the
//! header exists (a cut before the format formats again with a new key), and the label says
//! whether `mkfs` finished (a cut before that makes the file system again; nothing was stored
//! on the volume yet). A volume whose label is the volume's name is never formatted again.
//!
//! Nothing is unlocked while the reset journal says a wipe is pending
//! ([`reset_wipe_pending`]): `aperture-reset resume` runs first and must finish it.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::crypt::{Crypt, LABEL_FORMATTING};
use crate::disk::{Access, Disk};
use crate::fsutil::{create_dir_all, read_optional};
use crate::keys::{Key, KeySource, KeySourceKind};
use crate::luks;
use crate::mounts::{mount_options, Mounter};
use crate::StorageError;

/// Every path `aperture-storage` uses, with the appliance's defaults (DEVICE.md).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Paths {
    /// Root under which `/config` and `/data` are mounted (`/`).
    pub root: PathBuf,
    /// The ESP (`/efi`).
    pub esp: PathBuf,
    /// Sealed keys (`/efi/aperture/keys`).
    pub key_dir: PathBuf,
    /// The reset journal (`/efi/aperture/reset.json`), owned by aperture-reset.
    pub reset_journal: PathBuf,
    /// The TPM resource manager (`/dev/tpmrm0`).
    pub tpm_device: PathBuf,
    /// A tmpfs for transient files (`/run`).
    pub run_dir: PathBuf,
    /// Where dm-crypt mappings appear (`/dev/mapper`).
    pub mapper_dir: PathBuf,
    /// Partitions by GPT label (`/dev/disk/by-partlabel`).
    pub partlabel_dir: PathBuf,
    /// Block devices in sysfs (`/sys/class/block`).
    pub sys_class_block: PathBuf,
    /// Device nodes (`/dev`).
    pub dev_dir: PathBuf,
    /// Mount table (`/proc/self/mountinfo`).
    pub mountinfo: PathBuf,
}

impl Default for Paths {
    fn default() -> Self {
        Paths::rooted(Path::new("/"))
    }
}

impl Paths {
    /// The appliance's layout under `root` (`/` on a device, a temporary folder in tests).
    pub fn rooted(root: &Path) -> Paths {
        let at = |p: &str| root.join(p);
        Paths {
            root: root.to_path_buf(),
            esp: at("efi"),
            key_dir: at("efi/aperture/keys"),
            reset_journal: at("efi/aperture/reset.json"),
            tpm_device: at("dev/tpmrm0"),
            run_dir: at("run"),
            mapper_dir: at("dev/mapper"),
            partlabel_dir: at("dev/disk/by-partlabel"),
            sys_class_block: at("sys/class/block"),
            dev_dir: at("dev"),
            mountinfo: at("proc/self/mountinfo"),
        }
    }

    /// Where `volume` is mounted (`/config`, `/data`).
    pub fn mount_point(&self, volume: Volume) -> PathBuf {
        self.root.join(volume.label())
    }

    /// `/data/var`: `/var`'s persistent overlay (`upper` and `work` inside).
    pub fn var_dir(&self) -> PathBuf {
        self.mount_point(Volume::Data).join("var")
    }
}

/// One encrypted volume.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Volume {
    /// `config`: device identity and network configuration.
    Config,
    /// `data`: applications, models, logs; the last partition, grown on first boot.
    Data,
}

impl Volume {
    /// Both, in the order they are set up (and wiped).
    pub const ALL: [Volume; 2] = [Volume::Config, Volume::Data];

    /// GPT label, key name, mount folder name and ext4 label.
    pub fn label(self) -> &'static str {
        match self {
            Volume::Config => "config",
            Volume::Data => "data",
        }
    }

    /// The dm-crypt mapping name.
    pub fn mapper_name(self) -> &'static str {
        match self {
            Volume::Config => "aperture-config",
            Volume::Data => "aperture-data",
        }
    }
}

impl std::fmt::Display for Volume {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.label())
    }
}

/// Whether the reset journal at `path` says a wipe is pending. The journal belongs to
/// aperture-reset; the contract is one boolean field, `wipe_pending`. A journal that cannot be
/// parsed counts as pending: unlocking data that a reset meant to destroy is the worse error.
pub fn reset_wipe_pending(path: &Path) -> Result<bool, StorageError> {
    #[derive(Deserialize)]
    struct Marker {
        #[serde(default)]
        wipe_pending: bool,
    }
    match read_optional(path)? {
        None => Ok(false),
        Some(bytes) => Ok(serde_json::from_slice::<Marker>(&bytes)
            .map(|m| m.wipe_pending)
            .unwrap_or(true)),
    }
}

/// What setting up one volume did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct VolumeSetup {
    /// The volume.
    pub volume: Volume,
    /// It was formatted this boot.
    pub formatted: bool,
    /// Its new size, if the partition was grown.
    pub grown_to: Option<u64>,
    /// A file system was made this boot.
    pub made_filesystem: bool,
    /// The plaintext device.
    pub mapped: PathBuf,
    /// Where it is mounted.
    pub mounted: PathBuf,
}

/// The state of one volume, for `status`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct VolumeStatus {
    /// The volume.
    pub volume: Volume,
    /// The partition, as found.
    pub partition: String,
    /// A LUKS header is on it.
    pub luks: bool,
    /// Its LUKS2 label (`data` once set up, [`LABEL_FORMATTING`] mid first boot).
    pub label: Option<String>,
    /// Its plaintext device, if unlocked.
    pub mapped: Option<PathBuf>,
    /// Its mount point, if mounted.
    pub mounted: Option<PathBuf>,
}

/// Everything `status` shows.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StatusReport {
    /// What protects the keys.
    pub key_source: KeySourceKind,
    /// A factory reset wipe is pending.
    pub wipe_pending: bool,
    /// Both volumes.
    pub volumes: Vec<VolumeStatus>,
}

impl std::fmt::Display for StatusReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "key source: {}", self.key_source)?;
        if self.wipe_pending {
            writeln!(f, "a factory reset wipe is pending (aperture-reset resume)")?;
        }
        for v in &self.volumes {
            let show = |p: &Option<PathBuf>| {
                p.as_ref()
                    .map_or_else(|| "no".to_string(), |p| p.display().to_string())
            };
            writeln!(
                f,
                "{}: {} luks={} label={} mapped={} mounted={}",
                v.volume,
                v.partition,
                if v.luks { "yes" } else { "no" },
                v.label.as_deref().unwrap_or("-"),
                show(&v.mapped),
                show(&v.mounted)
            )?;
        }
        Ok(())
    }
}

/// The storage program over injected parts.
pub struct Storage<'a> {
    /// Paths.
    pub paths: &'a Paths,
    /// The disk with `config` and `data`.
    pub disk: &'a dyn Disk,
    /// LUKS operations.
    pub crypt: &'a dyn Crypt,
    /// Where keys are sealed.
    pub keys: &'a dyn KeySource,
    /// File systems and mounts.
    pub mounts: &'a dyn Mounter,
}

impl Storage<'_> {
    /// Set up both volumes (see the module documentation). Already mounted volumes are left
    /// as they are, so running it twice is harmless.
    pub fn setup(&self) -> Result<Vec<VolumeSetup>, StorageError> {
        if reset_wipe_pending(&self.paths.reset_journal)? {
            return Err(StorageError::ResetPending {
                journal: self.paths.reset_journal.clone(),
            });
        }
        if self.keys.kind() == KeySourceKind::UnsafeEspFile {
            tracing::warn!(
                "DATA AT REST IS NOT PROTECTED AGAINST DISK THEFT: no TPM ({}) was found, so the \
                 keys of config and data are stored in the clear in {}; a board must provide a \
                 key source (TPM 2.0, OP-TEE) before shipping",
                self.paths.tpm_device.display(),
                self.paths.key_dir.display()
            );
        }
        Volume::ALL
            .into_iter()
            .map(|v| self.setup_volume(v))
            .collect()
    }

    fn setup_volume(&self, volume: Volume) -> Result<VolumeSetup, StorageError> {
        let target = self.paths.mount_point(volume);
        let mut part = self.disk.open(volume.label(), Access::Shared)?;
        let formatted = !luks::is_luks(part.as_ref())?;
        let mut grown_to = None;
        let key = if formatted {
            if volume == Volume::Data {
                grown_to = self.disk.grow_to_end(volume.label())?;
                if let Some(size) = grown_to {
                    tracing::info!("grew partition data to the end of the disk: {size} bytes");
                    part = self.disk.open(volume.label(), Access::Shared)?;
                }
            }
            tracing::info!(
                "first boot of {volume}: formatting {} as LUKS2",
                part.describe()
            );
            let key = Key::random()?;
            // Sealed before the header exists: a power cut between the two then only means
            // formatting again at the next boot, never a header whose key is lost.
            self.keys.seal(volume.label(), &key)?;
            self.crypt.format(part.as_ref(), &key, LABEL_FORMATTING)?;
            key
        } else {
            self.keys.unseal(volume.label())?
        };
        let mapped = match self.crypt.mapped(volume.mapper_name())? {
            Some(path) => path,
            None => self.crypt.open(part.as_ref(), volume.mapper_name(), &key)?,
        };
        drop(key);
        let unfinished = self.crypt.label(part.as_ref())?.as_deref() == Some(LABEL_FORMATTING);
        let made_filesystem = formatted || unfinished;
        if made_filesystem {
            if self.mounts.mounted_at(&target)?.is_some() {
                return Err(StorageError::malformed(
                    target.display().to_string(),
                    "something is mounted there while the volume has no file system yet",
                ));
            }
            self.mounts.mkfs(&mapped, volume.label())?;
        }
        if self.mounts.mounted_at(&target)?.is_none() {
            self.mounts
                .mount(&mapped, &target, mount_options(volume == Volume::Config))?;
        }
        if volume == Volume::Data {
            for sub in ["upper", "work"] {
                create_dir_all(&self.paths.var_dir().join(sub), 0o755)?;
            }
        }
        if made_filesystem {
            self.crypt.set_label(part.as_ref(), volume.label())?;
        }
        Ok(VolumeSetup {
            volume,
            formatted,
            grown_to,
            made_filesystem,
            mapped,
            mounted: target,
        })
    }

    /// Which volumes are formatted, unlocked and mounted.
    pub fn status(&self) -> Result<StatusReport, StorageError> {
        let mut volumes = Vec::new();
        for volume in Volume::ALL {
            let (partition, luks, label) = match self.disk.open(volume.label(), Access::Shared) {
                Ok(part) => (
                    part.describe(),
                    luks::is_luks(part.as_ref())?,
                    self.crypt.label(part.as_ref())?,
                ),
                Err(StorageError::NoSuchPartition { .. }) => ("missing".into(), false, None),
                Err(e) => return Err(e),
            };
            let target = self.paths.mount_point(volume);
            volumes.push(VolumeStatus {
                volume,
                partition,
                luks,
                label,
                mapped: self.crypt.mapped(volume.mapper_name())?,
                mounted: self.mounts.mounted_at(&target)?.map(|_| target),
            });
        }
        Ok(StatusReport {
            key_source: self.keys.kind(),
            wipe_pending: reset_wipe_pending(&self.paths.reset_journal)?,
            volumes,
        })
    }
}
