//! What `aperture-storage status` shows: per volume, its partition, both LUKS2 header copies,
//! its token and record, whether it is unlocked and mounted; and what protects the keys.
//! Written to any [`std::io::Write`], so that the binary can treat a closed pipe
//! (`aperture-storage status | head -1`) as the reader's choice, not as a failure.

use std::io::{self, Write};
use std::path::PathBuf;

use serde::Serialize;

use crate::disk::Access;
use crate::keys::{KeySourceKind, SealedKey};
use crate::luks;
use crate::records::{find_token, VolumeState};
use crate::setup::Storage;
use crate::volume::Volume;
use crate::StorageError;

/// The state of one volume.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct VolumeStatus {
    /// The volume.
    pub volume: Volume,
    /// The partition, as found (`missing` if it is not there).
    pub partition: String,
    /// A LUKS2 header (either copy) is on it.
    pub luks: bool,
    /// Both header copies, in words.
    pub header: String,
    /// Its LUKS2 UUID.
    pub uuid: Option<String>,
    /// Its LUKS2 label (`data` once set up, `aperture-formatting` mid first boot).
    pub label: Option<String>,
    /// The key source its token names, if it has one.
    pub token: Option<KeySourceKind>,
    /// Its token's key is sealed to the signed boot chain (Secure Boot's PCR 7 and the UKIs'
    /// signed policies, [`crate::boot`]).
    pub boot_chain: bool,
    /// What the device state records of it.
    pub record: Option<VolumeState>,
    /// Its plaintext device, if unlocked.
    pub mapped: Option<PathBuf>,
    /// Its mount point, if mounted.
    pub mounted: Option<PathBuf>,
}

/// Everything `status` shows.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StatusReport {
    /// What protects the keys, as recorded at the first boot (`None` before it).
    pub key_source: Option<KeySourceKind>,
    /// Whether the image says the board has a TPM.
    pub board_tpm: bool,
    /// A factory reset wipe is pending.
    pub wipe_pending: bool,
    /// Both volumes.
    pub volumes: Vec<VolumeStatus>,
}

impl StatusReport {
    /// Write the report as text, or as pretty JSON.
    pub fn write_to(&self, out: &mut dyn Write, json: bool) -> io::Result<()> {
        if json {
            serde_json::to_writer_pretty(&mut *out, self)?;
            writeln!(out)?;
        } else {
            write!(out, "{self}")?;
        }
        out.flush()
    }
}

impl std::fmt::Display for StatusReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let chained = self.volumes.iter().filter(|v| v.boot_chain).count();
        let bound = match chained {
            0 => "",
            n if n == self.volumes.iter().filter(|v| v.token.is_some()).count() => {
                ", sealed to the signed boot chain (Secure Boot and the UKIs' signed policies)"
            }
            _ => ", partly sealed to the signed boot chain",
        };
        match self.key_source {
            Some(k) => writeln!(f, "key source: {k}{bound}")?,
            None => writeln!(
                f,
                "key source: none recorded yet (the first boot seals to {})",
                if self.board_tpm {
                    KeySourceKind::Tpm2
                } else {
                    KeySourceKind::UnsafePlain
                }
            )?,
        }
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
                "{}: {} luks={} uuid={} label={} token={}{} record={} mapped={} mounted={}",
                v.volume,
                v.partition,
                if v.luks { "yes" } else { "no" },
                v.uuid.as_deref().unwrap_or("-"),
                v.label.as_deref().unwrap_or("-"),
                v.token
                    .map_or_else(|| "-".to_string(), |k| k.token_type().to_string()),
                if v.boot_chain { " (boot chain)" } else { "" },
                match v.record {
                    Some(VolumeState::Ready) => "ready",
                    Some(VolumeState::Formatting) => "formatting",
                    None => "-",
                },
                show(&v.mapped),
                show(&v.mounted)
            )?;
            writeln!(f, "  {}", v.header)?;
        }
        Ok(())
    }
}

impl Storage<'_> {
    /// Which volumes are formatted, unlocked and mounted, and what protects their keys.
    /// Reads only; never waits for the TPM.
    pub fn status(&self) -> Result<StatusReport, StorageError> {
        let record = self.state.load()?;
        let mut volumes = Vec::new();
        let mut probes = Vec::new();
        for volume in Volume::ALL {
            let target = volume.mount_point(self.files);
            let mut status = VolumeStatus {
                volume,
                partition: "missing".into(),
                luks: false,
                header: "no partition".into(),
                uuid: None,
                label: None,
                token: None,
                boot_chain: false,
                record: record.volumes.get(&volume).map(|r| r.state),
                mapped: self.crypt.mapped(volume.mapper_name())?,
                mounted: self.mounts.mounted_at(&target)?.map(|_| target),
            };
            match self
                .disk
                .open(volume.partition(self.facts.board), Access::Shared)
            {
                Ok(part) => {
                    let probe = luks::probe(part.as_ref())?;
                    status.partition = part.describe();
                    status.luks = probe.any_magic();
                    status.header = probe.describe();
                    if let Some(copy) = probe.current() {
                        status.uuid = Some(copy.uuid.clone());
                        status.label = copy.label.clone();
                        let token = find_token(copy);
                        status.token = token.as_ref().map(|t| t.kind);
                        status.boot_chain = matches!(
                            token.map(|t| t.sealed),
                            Some(Ok(SealedKey::Tpm2 { boot: Some(_), .. }))
                        );
                    }
                    probes.push((volume, probe));
                }
                Err(StorageError::NoSuchPartition { .. }) => {}
                Err(e) => return Err(e),
            }
            volumes.push(status);
        }
        let plans = self.plans(&record, &probes);
        let key_source = plans.iter().find(|(_, p)| p.recorded).map(|(_, p)| p.kind);
        let wipe_pending = match self.refuse_if_reset_pending() {
            Ok(()) => false,
            Err(StorageError::ResetPending { .. }) => true,
            Err(e) => return Err(e),
        };
        Ok(StatusReport {
            key_source,
            board_tpm: self.facts.tpm,
            wipe_pending,
            volumes,
        })
    }
}
