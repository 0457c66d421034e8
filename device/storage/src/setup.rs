//! What `aperture-storage setup` does at every boot.
//!
//! First, before anything is written: refuse while a factory reset is half done, read the
//! `storage` record and both header copies of each volume, decide each volume's key source
//! ([`crate::policy`]) and, where that is the TPM, wait for it.
//!
//! Then for each [`Volume`] (`config`, then `data`):
//!
//! 1. **Header.** If one copy is intact and the other missing, torn or older, `cryptsetup
//!    repair` makes them one again (issue 12.3). A partition holding any LUKS2 magic is never
//!    formatted, with one exception: the header of our own interrupted first format (torn, or
//!    whole but without the keyslot that `luksFormat` adds last).
//! 2. **First boot** (no header): make a key, seal it, journal `formatting` with the header
//!    UUID and the sealed key in the `storage` record, grow `data` to the end of the disk, then
//!    `luksFormat --uuid` labelled [`LABEL_FORMATTING`]. A journal found at boot with no header
//!    (or our own torn one) is finished with the journaled UUID and key: never a new key for a
//!    header that may already exist.
//! 3. **Keys.** Unseal from the LUKS2 token, else from the record; the key must open the
//!    volume (`cryptsetup open --test-passphrase`). The token or record that is missing,
//!    damaged or stale is written again from the one that worked.
//! 4. **File system.** Open; if the LUKS2 label is still [`LABEL_FORMATTING`] and the record
//!    not `ready`, `mkfs.ext4` (nothing was ever stored); mount; for `data` create
//!    `/data/var/{upper,work}`; set the label to the volume's name; record `ready`.
//!
//! So a power cut at any instant of a first boot is finished by the next boot without losing
//! anything and without asking anyone (issue 12.0); tier-1 tests cut at every operation.

use std::path::PathBuf;
use std::time::Duration;

use aperture_appliance::{BuildFacts, Files};
use serde::Serialize;

use crate::crypt::{random_uuid, Crypt, LABEL_FORMATTING};
use crate::disk::{Access, Disk, Partition};
use crate::keys::{Key, KeySource, KeySourceKind, SealedKey, UnsafePlainKey};
use crate::luks::{self, HeaderCopy, Probe};
use crate::mounts::{mount_options, Mounter};
use crate::policy::{self, SourcePlan};
use crate::records::{
    find_token, legacy_esp_key, token_json, StorageRecord, StorageState, VolumeRecord, VolumeState,
};
use crate::volume::{reset_journal, reset_wipe_pending, var_dir, Volume};
use crate::StorageError;

/// What was written again from its other copy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Repair {
    /// A LUKS2 header copy (`cryptsetup repair`).
    Header,
    /// The LUKS2 token, from the device state.
    Token,
    /// The device state record, from the token.
    Record,
    /// Both, from the key files an older Aperture kept on the ESP (then removed).
    FromEsp,
    /// The key, sealed before to the TPM alone, sealed again to the signed boot chain (both
    /// copies rewritten).
    Rebound,
}

/// What setting up one volume did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct VolumeSetup {
    /// The volume.
    pub volume: Volume,
    /// Its partition.
    pub partition: String,
    /// What protects its key.
    pub key_source: KeySourceKind,
    /// It was formatted this boot.
    pub formatted: bool,
    /// Its new size, if the partition was grown.
    pub grown_to: Option<u64>,
    /// A file system was made this boot.
    pub made_filesystem: bool,
    /// What was repaired.
    pub repaired: Vec<Repair>,
    /// The plaintext device.
    pub mapped: PathBuf,
    /// Where it is mounted.
    pub mounted: PathBuf,
}

/// The storage program over injected parts.
pub struct Storage<'a> {
    /// The appliance's files.
    pub files: &'a Files,
    /// The image's facts: the board (partition labels) and whether it has a TPM.
    pub facts: &'a BuildFacts,
    /// The disk with `config` and `data`.
    pub disk: &'a dyn Disk,
    /// LUKS operations.
    pub crypt: &'a dyn Crypt,
    /// The TPM (tpm2-tools, or a fake).
    pub tpm: &'a dyn KeySource,
    /// The device state (records of the keys; the reset guard).
    pub state: &'a StorageState,
    /// File systems and mounts.
    pub mounts: &'a dyn Mounter,
    /// How long to wait for the TPM device.
    pub tpm_wait: Duration,
}

/// Make both header copies of `v` whole again with `cryptsetup repair` (one copy intact, the
/// other missing, torn or older); the header afterwards. If that fails, or leaves no intact
/// pair, the error names the partition and the recovery: such a volume is never formatted.
pub fn repair_header(
    crypt: &dyn Crypt,
    v: Volume,
    part: &dyn Partition,
    probe: &Probe,
) -> Result<Probe, StorageError> {
    let damaged = |reason: String| StorageError::HeaderDamaged {
        volume: v.to_string(),
        partition: part.describe(),
        reason,
    };
    tracing::warn!(
        "{v} ({}): {}; running cryptsetup repair",
        part.describe(),
        probe.describe()
    );
    if let Err(e) = crypt.repair(part) {
        return Err(damaged(format!(
            "{}; cryptsetup repair: {e}",
            probe.describe()
        )));
    }
    let after = luks::probe(part)?;
    if after.needs_repair() || after.current().is_none() {
        return Err(damaged(format!(
            "after cryptsetup repair, {}",
            after.describe()
        )));
    }
    tracing::info!("{v}: header repaired: {}", after.describe());
    Ok(after)
}

/// What to do with a volume's header.
enum Action {
    Open(Box<HeaderCopy>),
    Format(Option<VolumeRecord>),
}

impl Storage<'_> {
    fn source(&self, kind: KeySourceKind) -> &dyn KeySource {
        match kind {
            KeySourceKind::Tpm2 => self.tpm,
            _ => &UnsafePlainKey,
        }
    }

    fn partition(&self, volume: Volume) -> &'static str {
        volume.partition(self.facts.board)
    }

    /// Refuse while aperture-reset says a wipe is pending (its journal on the ESP, or the
    /// `reset` area of the device state).
    pub fn refuse_if_reset_pending(&self) -> Result<(), StorageError> {
        let journal = reset_journal(self.files);
        if reset_wipe_pending(&journal)? {
            return Err(StorageError::ResetPending {
                journal: journal.display().to_string(),
            });
        }
        if self.state.reset_wipe_pending()? {
            return Err(StorageError::ResetPending {
                journal: format!("the reset area of the device state ({})", self.state.name()),
            });
        }
        Ok(())
    }

    /// The key source of each volume, from what is recorded and what the image says.
    pub fn plans(
        &self,
        record: &StorageRecord,
        probes: &[(Volume, Probe)],
    ) -> Vec<(Volume, SourcePlan)> {
        let recorded = |v: Volume, probe: &Probe| {
            let token = probe.current().and_then(find_token).map(|t| t.kind);
            token
                .or_else(|| record.volumes.get(&v).map(|r| r.sealed.kind()))
                .or_else(|| legacy_esp_key(self.files, v).map(|(s, _)| s.kind()))
        };
        let device = record
            .source
            .or_else(|| probes.iter().find_map(|(v, probe)| recorded(*v, probe)));
        probes
            .iter()
            .map(|(v, probe)| {
                (
                    *v,
                    policy::plan(self.facts.tpm, device, recorded(*v, probe)),
                )
            })
            .collect()
    }

    /// Set up both volumes (see the module documentation). Already mounted volumes are left
    /// as they are, so running it twice is harmless.
    pub fn setup(&self) -> Result<Vec<VolumeSetup>, StorageError> {
        self.refuse_if_reset_pending()?;
        let mut record = self.state.load()?;
        let mut parts = Vec::new();
        for v in Volume::ALL {
            let part = self.disk.open(self.partition(v), Access::Shared)?;
            let probe = luks::probe(part.as_ref())?;
            parts.push((v, part, probe));
        }
        let probes: Vec<(Volume, Probe)> = parts.iter().map(|(v, _, p)| (*v, p.clone())).collect();
        let plans = self.plans(&record, &probes);
        if let Some((v, plan)) = plans.iter().find(|(_, p)| p.kind == KeySourceKind::Tpm2) {
            let device = self.files.tpm_device();
            let poll = Duration::from_millis(250).min(self.tpm_wait);
            if let Err(waited) = policy::wait_for(&device, &plan.why, self.tpm_wait, poll) {
                return Err(StorageError::TpmMissing {
                    volume: v.to_string(),
                    partition: self.disk.describe_partition(self.partition(*v)),
                    why: plan.why.clone(),
                    device,
                    waited_secs: waited.as_secs(),
                });
            }
        }
        for w in policy::warnings(self.facts.tpm, &plans) {
            tracing::warn!("{w}");
        }
        let mut done = Vec::new();
        for ((v, part, probe), (_, plan)) in parts.into_iter().zip(plans) {
            done.push(self.setup_volume(v, part, probe, plan.kind, &mut record)?);
        }
        Ok(done)
    }

    /// Step 1: what to do with the header; repairs it when one copy is intact.
    fn header_action(
        &self,
        v: Volume,
        part: &dyn Partition,
        mut probe: Probe,
        entry: Option<&VolumeRecord>,
        out: &mut VolumeSetup,
    ) -> Result<Action, StorageError> {
        let formatting = entry.filter(|e| e.state == VolumeState::Formatting);
        let ours_torn = probe.current().is_none() && probe.any_magic() && formatting.is_some();
        if probe.needs_repair() || (probe.current().is_none() && probe.any_magic() && !ours_torn) {
            probe = repair_header(self.crypt, v, part, &probe)?;
            out.repaired.push(Repair::Header);
        }
        match probe.current() {
            Some(copy) => {
                if let Some(e) = formatting {
                    if e.uuid != copy.uuid {
                        return Err(StorageError::ForeignHeader {
                            volume: v.to_string(),
                            partition: part.describe(),
                            found: copy.uuid.clone(),
                            expected: e.uuid.clone(),
                        });
                    }
                    if copy.keyslots.is_empty() {
                        // luksFormat writes the header first and adds the keyslot seconds
                        // later, after its key derivation: a cut in between leaves our own
                        // header (journaled UUID) that no key opens, so nothing was ever
                        // stored behind it.
                        tracing::warn!(
                            "{v} ({}): the first format was cut by a power loss before its \
                             keyslot was written; formatting again with the journaled UUID and \
                             key (nothing was ever stored on it)",
                            part.describe()
                        );
                        return Ok(Action::Format(Some(e.clone())));
                    }
                }
                Ok(Action::Open(Box::new(copy.clone())))
            }
            None if ours_torn => {
                tracing::warn!(
                    "{v} ({}): the first format was cut by a power loss ({}); formatting again \
                     with the journaled UUID and key (nothing was ever stored on it)",
                    part.describe(),
                    probe.describe()
                );
                Ok(Action::Format(formatting.cloned()))
            }
            None => match entry {
                Some(e) if e.state == VolumeState::Ready => Err(StorageError::HeaderLost {
                    volume: v.to_string(),
                    partition: part.describe(),
                    uuid: e.uuid.clone(),
                }),
                e => Ok(Action::Format(e.cloned())),
            },
        }
    }

    /// Step 2: the first format, journaled before `luksFormat` (or finished from the journal).
    fn format(
        &self,
        v: Volume,
        mut part: Box<dyn Partition>,
        journal: Option<VolumeRecord>,
        kind: KeySourceKind,
        record: &mut StorageRecord,
        out: &mut VolumeSetup,
    ) -> Result<(Box<dyn Partition>, Key, SealedKey), StorageError> {
        let (key, sealed, uuid) = match journal {
            Some(j) => {
                tracing::info!(
                    "{v}: finishing the interrupted first boot (LUKS2 {})",
                    j.uuid
                );
                let key = self.source(j.sealed.kind()).unseal(v.label(), &j.sealed)?;
                (key, j.sealed, j.uuid)
            }
            None => {
                tracing::info!(
                    "first boot of {v}: formatting {} as LUKS2, key sealed by {kind}",
                    part.describe()
                );
                let key = Key::random()?;
                let sealed = self.source(kind).seal(v.label(), &key)?;
                let uuid = random_uuid()?;
                record.source.get_or_insert(kind);
                record.volumes.insert(
                    v,
                    VolumeRecord {
                        state: VolumeState::Formatting,
                        uuid: uuid.clone(),
                        sealed: sealed.clone(),
                    },
                );
                self.state.save(record)?;
                (key, sealed, uuid)
            }
        };
        if v == Volume::Data && !self.facts.board.data_fills_disk() {
            tracing::info!(
                "{} keeps the size the image gave it ({} bytes): on {} it is not the last \
                 partition on the disk",
                part.describe(),
                part.size(),
                self.facts.board
            );
        } else if v == Volume::Data {
            out.grown_to = self.disk.grow_to_end(self.partition(v))?;
            if let Some(size) = out.grown_to {
                tracing::info!(
                    "grew partition {} to the end of the disk: {size} bytes",
                    self.partition(v)
                );
                part = self.disk.open(self.partition(v), Access::Shared)?;
            }
        }
        self.crypt
            .format_as(part.as_ref(), &key, LABEL_FORMATTING, &uuid)?;
        out.formatted = true;
        Ok((part, key, sealed))
    }

    /// Step 3: the key from the token or the record; the other copy written again.
    fn unlock(
        &self,
        v: Volume,
        part: &dyn Partition,
        copy: &HeaderCopy,
        known: Option<(Key, SealedKey)>,
        record: &mut StorageRecord,
        out: &mut VolumeSetup,
    ) -> Result<Key, StorageError> {
        let token = find_token(copy);
        let entry = record
            .volumes
            .get(&v)
            .filter(|e| e.uuid == copy.uuid)
            .cloned();
        let mut reasons = Vec::new();
        let mut chain_refused = false;
        let mut chosen = known;
        let legacy = legacy_esp_key(self.files, v);
        if chosen.is_none() {
            let mut candidates = Vec::new();
            match &token {
                Some(t) => match &t.sealed {
                    Ok(s) => candidates.push(("the LUKS2 token", s.clone())),
                    Err(e) => reasons.push(format!("the LUKS2 token {} is damaged: {e}", t.id)),
                },
                None => reasons.push("the LUKS2 header has no aperture token".to_string()),
            }
            match &entry {
                Some(e) => candidates.push(("the device state", e.sealed.clone())),
                None => reasons.push("the device state has no record of it".to_string()),
            }
            if let Some((sealed, _)) = legacy
                .as_ref()
                .filter(|_| token.is_none() && entry.is_none())
            {
                candidates.push((
                    "the key file an older Aperture left on the ESP",
                    sealed.clone(),
                ));
            }
            let mut tried: Vec<SealedKey> = Vec::new();
            for (from, sealed) in candidates {
                if tried.contains(&sealed) {
                    // The token and the record hold the same blob: one TPM answer is enough.
                    reasons.push(format!("{from}: the same sealed key, not tried twice"));
                    continue;
                }
                match self.source(sealed.kind()).unseal(v.label(), &sealed) {
                    Ok(key) if self.crypt.check_key(part, &key)? => {
                        chosen = Some((key, sealed));
                        break;
                    }
                    Ok(_) => reasons.push(format!("{from}: its key does not open the volume")),
                    Err(e @ StorageError::BootChain { .. }) => {
                        chain_refused = true;
                        reasons.push(format!("{from}: {e}"));
                    }
                    Err(e) => reasons.push(format!("{from}: {e}")),
                }
                tried.push(sealed);
            }
        }
        let Some((key, mut sealed)) = chosen else {
            if chain_refused {
                return Err(StorageError::BootChainRefused {
                    volume: v.to_string(),
                    partition: part.describe(),
                    reasons: reasons.join("; "),
                });
            }
            if token.is_none() && entry.is_none() && legacy.is_none() {
                return Err(StorageError::KeyMissing {
                    volume: v.to_string(),
                    partition: part.describe(),
                    store: self.state.name(),
                });
            }
            return Err(StorageError::Unseal {
                volume: v.to_string(),
                partition: part.describe(),
                reasons: reasons.join("; "),
            });
        };
        out.key_source = sealed.kind();
        if !reasons.is_empty() && (token.is_some() || entry.is_some()) {
            tracing::warn!("{v}: {}", reasons.join("; "));
        }
        let mut rebound = false;
        if let Some(again) = self
            .source(sealed.kind())
            .rebind(v.label(), &key, &sealed)?
        {
            // The token first, then the record: a cut between them leaves the token's new
            // blob, which the next boot unseals and copies into the record.
            tracing::warn!(
                "{v}: its key was sealed to the TPM alone; sealed again to the signed boot \
                 chain (Secure Boot state and signed UKI policy), token and record rewritten"
            );
            sealed = again;
            rebound = true;
            out.repaired.push(Repair::Rebound);
        }
        if token.as_ref().and_then(|t| t.sealed.as_ref().ok()) != Some(&sealed) {
            let keyslot = copy.keyslots.first().map_or("0", String::as_str);
            let replace = token.as_ref().map(|t| t.id.as_str());
            self.crypt
                .import_token(part, &token_json(v, keyslot, &sealed), replace)?;
            if !out.formatted && !rebound {
                tracing::warn!("{v}: wrote its LUKS2 token again from the device state");
                out.repaired.push(Repair::Token);
            }
        }
        let state = match &entry {
            Some(e) => e.state,
            None if copy.label.as_deref() == Some(v.label()) => VolumeState::Ready,
            None => VolumeState::Formatting,
        };
        let want = VolumeRecord {
            state,
            uuid: copy.uuid.clone(),
            sealed: sealed.clone(),
        };
        if record.volumes.get(&v) != Some(&want) || record.source.is_none() {
            if entry.as_ref() != Some(&want) && !rebound {
                tracing::warn!("{v}: wrote its device state record again from the LUKS2 token");
                out.repaired.push(Repair::Record);
            }
            record.volumes.insert(v, want);
            record.source.get_or_insert(sealed.kind());
            self.state.save(record)?;
        }
        if let Some((old, paths)) = legacy {
            // Both copies are durable now: the files on the ESP go (also when a power cut
            // stopped an earlier boot right after it had moved them).
            for p in &paths {
                aperture_sys::fs::shred_and_remove(p)?;
            }
            if old == sealed {
                tracing::warn!(
                    "{v}: moved its sealed key off the ESP into its LUKS2 header and the \
                     device state"
                );
                out.repaired = vec![Repair::FromEsp];
            }
        }
        Ok(key)
    }

    fn setup_volume(
        &self,
        v: Volume,
        part: Box<dyn Partition>,
        probe: Probe,
        kind: KeySourceKind,
        record: &mut StorageRecord,
    ) -> Result<VolumeSetup, StorageError> {
        let target = v.mount_point(self.files);
        let mut out = VolumeSetup {
            volume: v,
            partition: part.describe(),
            key_source: kind,
            formatted: false,
            grown_to: None,
            made_filesystem: false,
            repaired: Vec::new(),
            mapped: PathBuf::new(),
            mounted: target.clone(),
        };
        let entry = record.volumes.get(&v).cloned();
        let (part, copy, known) =
            match self.header_action(v, part.as_ref(), probe, entry.as_ref(), &mut out)? {
                Action::Open(copy) => (part, copy, None),
                Action::Format(journal) => {
                    let (part, key, sealed) =
                        self.format(v, part, journal, kind, record, &mut out)?;
                    let probe = luks::probe(part.as_ref())?;
                    let Some(copy) = probe.current().cloned() else {
                        return Err(StorageError::HeaderDamaged {
                            volume: v.to_string(),
                            partition: part.describe(),
                            reason: format!("right after luksFormat, {}", probe.describe()),
                        });
                    };
                    (part, Box::new(copy), Some((key, sealed)))
                }
            };
        let key = self.unlock(v, part.as_ref(), &copy, known, record, &mut out)?;
        out.mapped = match self.crypt.mapped(v.mapper_name())? {
            Some(path) => path,
            None => self.crypt.open(part.as_ref(), v.mapper_name(), &key)?,
        };
        drop(key);
        let ready = record
            .volumes
            .get(&v)
            .is_some_and(|r| r.state == VolumeState::Ready);
        let label = self.crypt.label(part.as_ref())?;
        let unfinished = label.as_deref() == Some(LABEL_FORMATTING);
        if unfinished && ready {
            tracing::warn!(
                "{v}: its LUKS2 label says the first boot did not finish, but the device state \
                 says it did: keeping its file system"
            );
        }
        if unfinished && !ready {
            if self.mounts.mounted_at(&target)?.is_some() {
                return Err(StorageError::malformed(
                    target.display().to_string(),
                    "something is mounted there while the volume has no file system yet",
                ));
            }
            self.mounts.mkfs(&out.mapped, v.label())?;
            out.made_filesystem = true;
        }
        if self.mounts.mounted_at(&target)?.is_none() {
            self.mounts
                .mount(&out.mapped, &target, mount_options(v == Volume::Config))?;
        }
        if v == Volume::Data {
            for sub in ["upper", "work"] {
                aperture_sys::fs::create_dir_all(&var_dir(self.files).join(sub), 0o755)?;
            }
        }
        if label.as_deref() != Some(v.label()) {
            self.crypt.set_label(part.as_ref(), v.label())?;
        }
        if !ready {
            if let Some(r) = record.volumes.get_mut(&v) {
                r.state = VolumeState::Ready;
            }
            self.state.save(record)?;
        }
        Ok(out)
    }
}
