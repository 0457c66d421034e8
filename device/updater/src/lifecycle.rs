//! After an install: commit (mark good and raise the anti-rollback floor), roll back, and deal
//! with an install that a power cut interrupted.
//!
//! ## Commit
//! [`Updater::commit`] marks the running slot good (systemd-boot: the entry loses its boot
//! counter; Jetson: the ledger says committed, and on every good boot the firmware's retry
//! count is reset, [`aperture_slots::tegra::retry`], failing which the commit reports it and
//! goes on) and then raises the floor in the device state store to the RUNNING image's
//! `security_version`, read from its verity-protected `/etc/aperture/build.json` (not from the
//! unsigned slot record), and the accepted keyring sequence to that of the keyring the running
//! slot was installed under (from the signature kept in its record, verified again against the
//! root key, with the signed manifest kept in its record
//! ([`aperture_trust::signing::verify_written`])): from then on a release key left out of that
//! keyring is revoked. It is idempotent, so the health gate runs it on every
//! boot: a power cut between the two steps is repaired by the next boot's gate. Installing
//! never raises the floor: a new image that fails its health check must leave the old one
//! installable.
//!
//! ## Interrupted installs: restart, not resume
//! The journal in the device state is written after the bundle passed every check and before the
//! target is invalidated, and cleared after the target is armed. When it is found later:
//! * its target is the running slot: the install had armed it and the loader booted it, so it
//!   completed; [`Updater::commit`] (and the next install) drop the stale journal;
//! * otherwise the install was cut off. The target is unbootable (or untouched, or armed but
//!   not yet made the next boot: all safe, the running slot boots). The next
//!   `aperture-update install` of any valid bundle RESTARTS from the first byte: it writes a
//!   new journal, invalidates the target again (`begin_install` always persists the
//!   invalidation) and rewrites everything. `aperture-update resume` reports what was
//!   interrupted and, with `--restart`, installs again from the journal's recorded source (and
//!   the CA and `--insecure-http` it was given); `--if-interrupted` makes it quiet and
//!   successful when nothing was interrupted, for a unit that runs it at every boot.
//!
//! Why restart rather than continue at the last good offset: the bundle is a stream whose
//! payload hashes are only known at the end of each payload, so continuing would need
//! checkpointed hash states and a trusted record of what reached the disk, and a slot is
//! rewritten in seconds to minutes. Restarting keeps one code path and one order of checks.
//! Within one run, a dropped HTTPS connection is resumed with a Range request instead
//! ([`crate::source`]).

use serde::Serialize;

use aperture_slots::{BootState, Slot, SlotStatus, SlotsError};

use crate::state::Journal;
use crate::tpm::Counter;
use crate::{UpdateError, Updater};

/// How long a commit waits for the slots lock: the health gate's commit must not fail because
/// a short operation (another commit, a status-changing command) holds it.
pub const COMMIT_LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(60);

/// What a commit did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Commit {
    /// The slot committed (the running one).
    pub slot: Slot,
    /// Its image version.
    pub version: String,
    /// Its status before the commit.
    pub was: SlotStatus,
    /// The anti-rollback floor now.
    pub security_floor: u64,
    /// Whether this commit raised the floor.
    pub floor_raised: bool,
    /// The highest keyring sequence committed now.
    pub keyring_sequence: u64,
    /// Why the firmware's boot tries could not be reset after this good boot (Jetson), if
    /// they could not: the firmware then gives up on this slot after `RootfsRetryCountMax`
    /// warm reboots. Reported, never fatal: failing the health gate would reboot, which only
    /// uses the tries up faster.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tries_not_reset: Option<String>,
}

impl std::fmt::Display for Commit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let what = if self.was == SlotStatus::Good {
            "was already good"
        } else {
            "marked good"
        };
        write!(
            f,
            "slot {} ({}) {what}; anti-rollback floor {}{}",
            self.slot,
            self.version,
            self.security_floor,
            if self.floor_raised { " (raised)" } else { "" }
        )?;
        if let Some(why) = &self.tries_not_reset {
            write!(f, "; THE FIRMWARE'S BOOT TRIES WERE NOT RESET: {why}")?;
        }
        Ok(())
    }
}

impl Updater {
    /// Mark the running slot good and raise the anti-rollback floor to its security version.
    pub fn commit(&mut self) -> Result<Commit, UpdateError> {
        let _lock = self.lock("commit", COMMIT_LOCK_WAIT)?;
        let facts = crate::facts::load(&self.paths.build_facts)?;
        let was = self.boot.read()?.status(self.booted);
        let tries_not_reset = match self.slots().mark_good() {
            Ok(_) => None,
            Err(e @ SlotsError::RetryReset { .. }) => {
                let why = crate::error_chain(&e);
                tracing::error!("{why}");
                Some(why)
            }
            Err(e) => return Err(e.into()),
        };
        let mut store = self.store(facts.board)?;
        let mut state = self.device_state(&store)?;
        let before = state.clone();
        // What the TPM holds counts too (it survives a lost or lowered record).
        let (tpm_floor, tpm_keyring) = self.floors_or_store(&state);
        state.raise_floor(tpm_floor);
        state.raise_keyring_sequence(tpm_keyring);
        let floor_raised = state.raise_floor(facts.security_version);
        state.saw_signed_time(facts.source_date_epoch);
        if let Some(sequence) = self.running_keyring_sequence(&store, &facts)? {
            if state.raise_keyring_sequence(sequence) {
                tracing::info!(
                    "keyring {sequence} committed: bundles signed under older keyrings are \
                     refused from now on"
                );
            }
        }
        state.committed = Some(self.booted);
        if state
            .journal
            .as_ref()
            .is_some_and(|j| j.target == self.booted)
        {
            // The journaled install armed this slot and it booted: it completed.
            state.journal = None;
        }
        if state != before {
            state.save(&mut store)?;
        }
        self.raise_counters(&state);
        Ok(Commit {
            slot: self.booted,
            version: facts.version,
            was,
            security_floor: state.security_floor,
            floor_raised,
            keyring_sequence: state.keyring_sequence,
            tries_not_reset,
        })
    }

    /// The sequence of the keyring the running slot was installed under: from its record's
    /// signature, whose keyring is verified again against the root key. `None` (and a
    /// warning) when the record is missing, is not of the running image, or does not verify:
    /// a commit (the health gate's) never fails for it.
    fn running_keyring_sequence(
        &self,
        store: &crate::store::Store,
        facts: &crate::BuildFacts,
    ) -> Result<Option<u64>, UpdateError> {
        let Some(installed) = crate::store::read_slot(store, self.booted)? else {
            tracing::warn!(
                "slot {} has no record; its keyring is not committed",
                self.booted
            );
            return Ok(None);
        };
        if installed.record.version.to_string() != facts.version {
            tracing::warn!(
                "the record of slot {} says {} but {} runs; its keyring is not committed",
                self.booted,
                installed.record.version,
                facts.version
            );
            return Ok(None);
        }
        let root = match self.root_key() {
            Ok(root) => root,
            Err(e) => {
                tracing::warn!("{e}; the running slot's keyring is not committed");
                return Ok(None);
            }
        };
        // The whole signed manifest kept in the record is verified again, as it was when the
        // slot was written (not against the clock), not only its keyring.
        match aperture_trust::signing::verify_written(
            installed.manifest.as_bytes(),
            installed.signature.as_bytes(),
            &root,
        ) {
            Ok(verified) => Ok(Some(verified.keyring_sequence())),
            Err(e) => {
                tracing::warn!(
                    "the keyring in slot {}'s record does not verify ({e}); it is not committed",
                    self.booted
                );
                Ok(None)
            }
        }
    }

    /// Raise the TPM counters to the committed values. A failure is logged, never fatal: the
    /// health gate commits on every boot, so the next boot tries again.
    fn raise_counters(&self, state: &crate::state::DeviceState) {
        for (counter, value) in [
            (Counter::SecurityFloor, state.security_floor),
            (Counter::KeyringSequence, state.keyring_sequence),
        ] {
            if let Err(e) = self.counters.raise(counter, value) {
                tracing::error!(
                    "{}; the state store keeps the {} ({value}) alone until the next commit",
                    crate::error_chain(&e),
                    counter.name()
                );
            }
        }
    }

    /// Boot the other slot next (it must be good); takes effect at the next reboot.
    pub fn rollback(&mut self) -> Result<BootState, UpdateError> {
        let _lock = self.lock("rollback", std::time::Duration::ZERO)?;
        Ok(self.slots().rollback()?)
    }

    /// The journal of an install that was cut off, if there is one (a journal whose target is
    /// the running slot belongs to an install that completed and is not reported).
    pub fn interrupted(&self) -> Result<Option<Journal>, UpdateError> {
        let facts = crate::facts::load(&self.paths.build_facts)?;
        let state = self.device_state(&self.store(facts.board)?)?;
        Ok(state.journal.filter(|j| j.target != self.booted))
    }
}

/// A human description of an interrupted install and of what to do.
pub fn describe_interrupted(j: &Journal, target_status: SlotStatus) -> String {
    let source = j
        .source
        .as_deref()
        .map_or(String::from("the bundle"), |s| s.to_string());
    format!(
        "an install was interrupted: {} (from slot {}, {} tries); slot {} is now {target_status} \
         and the running slot {} is unaffected. The next boot restarts it (`aperture-update \
         resume --restart --if-interrupted`), as does `aperture-update install {source}`: the \
         install starts over from the first byte.",
        j.summary(),
        j.from,
        j.tries,
        j.target,
        j.from
    )
}
