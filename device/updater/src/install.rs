//! The slot installer: one verified bundle into the inactive slot, in the order that is the
//! safety (ARCHITECTURE.md, "Update rules"). `aperture-update install` and `aperture-reset`
//! (levels 2 and 3) both install through it; they differ only in the [`Policy`] the bundle must
//! pass and in what happens to the slot once it is written ([`Arm`]):
//!
//! 1. read the header and verify the signature and key chain against the root key; for an
//!    update ([`Policy::Update`]) key expiry is judged against the latest of the clock, the
//!    running image's build time and the newest signed time the device has seen (recorded with
//!    the journal: the bundle's build time); for a reset ([`Policy::Reset`]) the factory image
//!    was verified when it was written, and keys are checked at its build time only
//!    ([`aperture_trust::signing::VERIFIED_WHEN_WRITTEN`]);
//! 2. policy: the running product; an update needs the board, a newer version, a
//!    `security_version` at or above the floor and a keyring at least as new as the newest
//!    committed one; a reset needs the board and, unless the data was destroyed first
//!    ([`ResetFloor::WaivedAfterWipe`]), a `security_version` at or above the floor; then the
//!    payloads are ones this installer can place; the rootfs fits the target partition and the
//!    boot files fit the ESP; the try count is one the boot control takes;
//!    **nothing is written before this point** ([`Updater::preflight`] runs exactly these
//!    checks for a caller that must know before it changes anything else);
//! 3. journal the install in the device state store ([`crate::state`]);
//! 4. invalidate the target slot ([`aperture_slots::SlotManager::begin_install`]) and forget its
//!    old record (its area of the store);
//! 5. stream the rootfs payload into the target partition (the bundle reader hashes encoded
//!    and decoded bytes as they pass, the decoded ones on a thread of their own; a writer
//!    thread writes 4 MiB aligned chunks, direct where the partition takes it, while the next
//!    is decoded: [`crate::write`]), then fsync; kernel and initrd to `<name>.tmp` beside their
//!    place on the ESP, fsynced;
//! 6. once every payload hash matched: rename the boot files into place, fsync the folder;
//! 7. READ BACK: the partition's cached pages are dropped, then one sequential pass of direct
//!    reads feeds `verity::VerityCheck` (every data block hashed into the tree, on two threads;
//!    the superblock, every stored hash block and the root hash checked), which covers every
//!    byte of a build's rootfs image; any other layout is also hashed whole with sha256
//!    ([`crate::readback`]); kernel and initrd are re-read and hashed;
//! 8. record what the slot now holds ([`aperture_trust::record::InstalledSlot`]: the record and
//!    the exact manifest and signature verified) in the slot's area of the store;
//! 9. with [`Arm::Next`], arm the slot with N tries as the next boot, with the entry
//!    [`crate::place::slot_boot`] makes; with [`Arm::RecordOnly`] it stays unbootable (reset's
//!    second half blesses it later without booting it);
//! 10. clear the journal.
//!
//! On Jetson boards ([`aperture_slots::SlotLayout::Tegra`]) the same order holds with NVIDIA's
//! partitions: the rootfs goes to `APP_b` (or `APP`); kernel and initrd stream into the boot
//! chain's kernel partition at their places in an Android boot image, whose header page is
//! blanked at step 4 and written only at step 6; the device tree goes to the kernel-dtb
//! partition; all of it is read back at step 7. The slot is armed through NVIDIA's UEFI
//! variables. A bundle with a boot-firmware capsule first cancels any capsule an earlier install
//! left pending (before step 4), stages it in the slot's folder on the ESP, and at step 9 arms
//! the slot WITHOUT making it the next boot, moves the capsule into `\EFI\UpdateCapsule` and
//! sets the `OsIndications` delivery bit last: the firmware applies the capsule to the other
//! boot chain and switches to it itself (see [`aperture_slots::tegra::capsule`]). A slot
//! recorded without arming gets no capsule: the staged one is removed.
//!
//! Every write, fsync and rename, of partitions, of the ESP and of the state store, goes through
//! [`crate::io::Io`]. The whole install holds the slots lock
//! ([`aperture_appliance::SlotsLock`]), so no reset, commit or other install runs meanwhile:
//! [`Updater::install`] takes it, [`Updater::install_locked`] is for a caller that holds it.

use std::io::Read;
use std::path::{Path, PathBuf};

use aperture_appliance::SlotsLock;
use aperture_slots::tegra::bootimg;
use aperture_slots::tegra::capsule::CapsuleDelivery;
use aperture_slots::{plan, Event, Slot, SlotBoot, SlotLayout};
use aperture_trust::bundle::BundleReader;
use aperture_trust::manifest::{Artifact, Manifest, Role, Sha256Hex};
use aperture_trust::policy::{check_factory, check_keyring, check_update, DeviceFacts};
use aperture_trust::record::{InstalledSlot, SlotRecord};
use aperture_trust::signing::{VerifiedManifest, VERIFIED_WHEN_WRITTEN};
use aperture_trust::TrustError;

use crate::disk::PartitionHandle;
use crate::facts::BuildFacts;
use crate::io::rename_synced;
use crate::place::{fits, slot_boot, Dest, Open, Placement, TegraSlot};
use crate::readback::verify_file;
pub use crate::readback::verify_rootfs;
use crate::state::{DeviceState, Journal};
pub use crate::write::CHUNK;
use crate::write::{text, write_file, write_partition, write_partition_told};
use crate::{UpdateError, Updater};
use aperture_sys::fs::tmp_path;

/// Default boot tries of a freshly installed slot.
pub const DEFAULT_TRIES: u32 = 3;

/// What a bundle must pass before anything is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Policy {
    /// An update: the running product and board, a version newer than the running one, a
    /// `security_version` at or above the anti-rollback floor, a keyring at least as new as the
    /// newest committed one; key expiry judged against the trusted time.
    Update,
    /// A factory reset from the factory partition: the running product and board; the floor
    /// as `floor` says. Going back to an older version is the point. The factory image was
    /// verified when it was written, so keys are checked at its build time, not against the
    /// clock, and its keyring may be older than the committed one.
    Reset {
        /// Whether the anti-rollback floor holds.
        floor: ResetFloor,
    },
}

/// The anti-rollback floor of a reset.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResetFloor {
    /// Reset level 2 keeps config and data: the factory image's `security_version` must be at
    /// or above the floor, so data a newer image wrote never meets an image the floor retired.
    Enforced,
    /// Reset level 3 destroyed config and data before it installs: the floor is not enforced.
    /// Use this only once the wipe is done.
    WaivedAfterWipe,
}

/// What the installer does with the slot once it is written, read back and recorded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arm {
    /// Boot it next, on trial, with this many tries (an update; the first half of a reset).
    Next {
        /// Boot tries before the loader falls back.
        tries: u32,
    },
    /// Leave it unbootable with its record written: the caller blesses it later without
    /// booting it (the second half of a reset, once the same image passed its health gate in
    /// the other slot).
    RecordOnly,
}

/// Options of one install.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstallOptions {
    /// What the bundle must pass.
    pub policy: Policy,
    /// What happens to the slot once written.
    pub arm: Arm,
    /// Where the bundle came from, recorded in the journal (file path or redacted URL); `None`
    /// when nobody but the caller can fetch it again (the factory partition: aperture-reset
    /// restarts its own installs from its journal).
    pub source: Option<String>,
    /// The extra CA the download trusted, recorded in the journal for a restart.
    pub ca: Option<PathBuf>,
    /// Whether plain http:// was allowed, recorded in the journal for a restart.
    pub insecure_http: bool,
    /// How long [`Updater::install`] waits for the slots lock if another program holds it (0:
    /// fail at once, naming the holder, as a person running `install` wants).
    pub lock_wait: std::time::Duration,
}

impl Default for InstallOptions {
    fn default() -> Self {
        InstallOptions {
            policy: Policy::Update,
            arm: Arm::Next {
                tries: DEFAULT_TRIES,
            },
            source: None,
            ca: None,
            insecure_http: false,
            lock_wait: std::time::Duration::ZERO,
        }
    }
}

impl InstallOptions {
    /// An update armed with `tries` tries.
    pub fn update(tries: u32) -> InstallOptions {
        InstallOptions {
            arm: Arm::Next { tries },
            ..InstallOptions::default()
        }
    }

    /// The tries the slot is armed with (0 when it is only recorded).
    pub fn tries(&self) -> u32 {
        match self.arm {
            Arm::Next { tries } => tries,
            Arm::RecordOnly => 0,
        }
    }
}

/// What an install did.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Installed {
    /// The slot written.
    pub target: Slot,
    /// Whether it was armed (it boots next, or after a capsule's boot chain switch) or only
    /// recorded ([`Arm::RecordOnly`]).
    pub armed: bool,
    /// The version installed.
    pub version: String,
    /// Its security version (the floor is NOT raised until the slot is committed).
    pub security_version: u64,
    /// sha256 of the installed `manifest.json`.
    pub manifest_sha256: String,
    /// Rootfs bytes written to the partition.
    pub rootfs_bytes: u64,
    /// Whether the rootfs was read back from the medium during the stream, each chunk once
    /// written ([`crate::readback::follow_rootfs`]), rather than after the sync.
    pub rootfs_read_during_stream: bool,
    /// The earlier, interrupted install this one replaced, if there was one.
    pub restarted: Option<Journal>,
}

/// Everything an install needs once its checks passed; nothing is written yet.
struct Prepared<'m> {
    place: Placement<'m>,
    part: Box<dyn PartitionHandle>,
    tegra: Option<TegraSlot>,
    boot: SlotBoot,
}

impl Updater {
    /// Install the bundle read from `bundle` into the slot that is not running, taking the
    /// slots lock for it. See the module documentation for the order. On a refusal (trust,
    /// policy, unsupported content) nothing was written; on a later error the target is left
    /// unbootable and the journal says so.
    pub fn install(
        &mut self,
        bundle: &mut dyn Read,
        opts: &InstallOptions,
    ) -> Result<Installed, UpdateError> {
        let lock = self.lock("install", opts.lock_wait)?;
        self.install_locked(bundle, opts, &lock)
    }

    /// [`Updater::install`] for a caller that already holds the slots lock (`held`, whose
    /// holder it names: aperture-reset holds it for the whole reset, and a second `flock` on
    /// the same file from the same program would wait for itself).
    pub fn install_locked(
        &mut self,
        bundle: &mut dyn Read,
        opts: &InstallOptions,
        held: &SlotsLock,
    ) -> Result<Installed, UpdateError> {
        let _ = held;
        let facts = crate::facts::load(&self.paths.build_facts)?;
        let root = self.root_key()?;
        let mut store = self.store(facts.board)?;
        let mut state = self.device_state(&store)?;
        let target = self.booted.other();

        // 1. Header: signature and key chain, before any payload byte is used.
        let now = self.key_time(&opts.policy, &facts, &state);
        let mut reader = BundleReader::new(bundle, &root, now);
        let verified = reader.read_header()?;
        let header = reader
            .header_bytes()
            .cloned()
            .ok_or_else(|| UpdateError::Unsupported {
                reason: "the bundle reader kept no header bytes".into(),
            })?;
        let manifest_sha256 = Sha256Hex::digest(&header.manifest_json).to_string();

        // 2. Policy, then what this installer can place, then the disk: reads only.
        self.admit(&verified, &opts.policy, &facts, &state)?;
        self.check_tries(&opts.arm, target)?;
        let layout = facts.board.slot_layout();
        let Prepared {
            place,
            mut part,
            mut tegra,
            boot,
        } = self.prepare(&verified, layout, target)?;
        let rootfs = place.rootfs;
        let record = SlotRecord::from_manifest(&verified)?;
        // A delta rebuilds the target from the running slot: only if that runs its base.
        let delta_from = self.delta_bases(&verified, &mut reader, layout, &place)?;
        let delivery = match layout {
            SlotLayout::Tegra(_) => Some(CapsuleDelivery::new(
                self.paths.esp.clone(),
                self.paths.efivars.clone(),
            )),
            SlotLayout::Esp => None,
        };

        // 3. Journal: the first write of the install.
        let restarted = state.journal.take();
        if let Some(old) = &restarted {
            tracing::warn!(
                "an earlier install was cut off ({}); starting over",
                old.summary()
            );
        }
        let journal = Journal {
            target,
            from: self.booted,
            product: verified.product.clone(),
            version: verified.version.to_string(),
            security_version: verified.security_version,
            manifest_sha256: manifest_sha256.clone(),
            source: opts.source.clone(),
            ca: opts.ca.clone(),
            insecure_http: opts.insecure_http,
            tries: opts.tries(),
            started: self.now(),
        };
        tracing::info!("{}", journal.summary());
        state.journal = Some(journal);
        state.saw_signed_time(verified.build.source_date_epoch);
        state.save(&mut store)?;

        // Jetson: a capsule an earlier install delivered must not reach the firmware now that
        // its slot is rewritten (the delivery bit goes first).
        if let Some(d) = &delivery {
            self.io
                .step("cancel pending capsule delivery")
                .map_err(UpdateError::file("cancelling", d.dir()))?;
            d.cancel()?;
        }

        // 4. The target becomes unbootable before a byte of it is written.
        self.slots().begin_install(target)?;
        crate::store::clear_slot(&mut store, target)?;
        let slot_dir = self.paths.slot_dir(target);
        self.prepare_slot_dir(&slot_dir)?;
        let io = &*self.io;
        if let Some(t) = &mut tegra {
            // The old boot image's header must never describe the new, half-written kernel.
            let blank = vec![0u8; bootimg::PAGE_SIZE as usize];
            write_partition(io, &mut *t.kernel, &mut &blank[..], target, 0)?;
        }

        // 5. Stream (the other slot's UKI is checked against its hash and dropped).
        for (a, _) in place.dests.iter().filter(|(_, d)| *d == Dest::PassOver) {
            reader.pass_over(a.name.as_str());
        }
        // Where the slot takes direct reads, its rootfs is read back during the stream, each
        // chunk once written (readback::follow_rootfs), through a second, read-only handle.
        let follow = self
            .disk
            .open_shared(&layout.rootfs(target))
            .ok()
            .filter(|p| crate::readback::can_follow(&**p, rootfs));
        let (written_tx, written_rx) = std::sync::mpsc::channel::<u64>();
        let mut written_tx = follow.as_ref().map(|_| written_tx);
        let streaming = std::time::Instant::now();
        let mut staged: Vec<(PathBuf, PathBuf, Artifact)> = Vec::new();
        let mut capsule: Option<(PathBuf, Artifact)> = None;
        let (streamed, followed) = std::thread::scope(|scope| {
            let follower = follow.as_deref().map(|p| {
                scope.spawn(move || crate::readback::follow_rootfs(p, rootfs, written_rx))
            });
            let streamed =
                reader.for_each_payload(|artifact: &Artifact, payload: &mut dyn Read| {
                    let dest = place
                        .dests
                        .iter()
                        .find(|(a, _)| a.name == artifact.name)
                        .map(|(_, d)| *d)
                        .ok_or_else(|| UpdateError::Unsupported {
                            reason: format!("unexpected payload {}", artifact.name),
                        })?;
                    match (dest, &mut tegra) {
                        (Dest::Rootfs, _) => {
                            write_partition_told(
                                io,
                                &mut *part,
                                payload,
                                target,
                                0,
                                written_tx.take(),
                            )?;
                        }
                        (Dest::EspFile(file), _) => {
                            let dest = slot_dir.join(file);
                            let tmp = tmp_path(&dest);
                            write_file(io, &tmp, payload)?;
                            staged.push((tmp, dest, artifact.clone()));
                        }
                        (Dest::BootImage(offset), Some(t)) => {
                            write_partition(io, &mut *t.kernel, payload, target, offset)?;
                        }
                        (Dest::Dtb, Some(t)) => {
                            write_partition(io, &mut *t.dtb, payload, target, 0)?;
                        }
                        (Dest::PassOver, _) => {
                            return Err(UpdateError::Unsupported {
                                reason: format!("payload {} was to be passed over", artifact.name),
                            })
                        }
                        (Dest::Capsule, _) => {
                            let tmp = tmp_path(&slot_dir.join(artifact.name.as_str()));
                            write_file(io, &tmp, payload)?;
                            capsule = Some((tmp, artifact.clone()));
                        }
                        (Dest::BootImage(_) | Dest::Dtb, None) => {
                            return Err(UpdateError::Unsupported {
                                reason: format!("payload {} has no partition here", artifact.name),
                            })
                        }
                    }
                    Ok::<(), UpdateError>(())
                });
            // The follower stops at the end of what was written if the stream stopped early.
            drop(written_tx.take());
            let followed = follower.map(|f| {
                f.join()
                    .unwrap_or_else(|_| Err("the read-back thread panicked".into()))
            });
            (streamed, followed)
        });
        streamed?;

        // 6. Every payload hash matched: the boot files go into place; on Jetson the boot
        // image gets its header.
        for (tmp, dest, _) in &staged {
            rename_synced(io, tmp, dest)?;
        }
        io.sync_dir(&slot_dir)
            .map_err(UpdateError::file("syncing folder", &slot_dir))?;
        if let Some(t) = &mut tegra {
            write_partition(io, &mut *t.kernel, &mut &t.header[..], target, 0)?;
        }

        tracing::info!(
            "{} {:.0} MiB into {} in {:.2} s{}; the updater's peak memory: {}",
            match &delta_from {
                Some(base) => format!("rebuilt from {base} and the delta:"),
                None => "streamed".into(),
            },
            rootfs.size as f64 / (1 << 20) as f64,
            part.describe(),
            streaming.elapsed().as_secs_f64(),
            match &followed {
                Some(Ok(())) => ", reading each chunk back from the medium as it was written",
                _ => "",
            },
            peak_memory()
        );

        // 7. Read back (the rootfs already was, if it was followed).
        let reading = std::time::Instant::now();
        if let Some(Err(why)) = &followed {
            tracing::warn!(
                "reading {} back during the stream did not pass ({why}); reading it back \
                 again after the sync",
                part.describe()
            );
        }
        if !matches!(followed, Some(Ok(()))) {
            if let Err(e) = part.drop_cache() {
                tracing::debug!("could not drop cached pages of {}: {e}", part.describe());
            }
            verify_rootfs(&*part, rootfs, target)?;
        }
        for (_, dest, artifact) in &staged {
            verify_file(dest, artifact, target)?;
            if artifact.role == Role::Uki {
                let files = self.paths.files();
                crate::uki::check(
                    dest,
                    target,
                    &crate::uki::Expected {
                        cmdline: &crate::place::slot_cmdline(&verified, layout, target)?,
                        security_version: verified.security_version,
                        db_cert: &files.secure_boot_db(),
                        policy_key: &files.tpm_policy_key(),
                    },
                )?;
            }
        }
        if let Some(t) = &tegra {
            t.verify(|role| place.artifact(role), target)?;
        }
        if let Some((tmp, artifact)) = &capsule {
            verify_file(tmp, artifact, target)?;
        }
        tracing::info!(
            "read slot {target} back: dm-verity and the boot files' sha256 match the manifest ({:.2} s)",
            reading.elapsed().as_secs_f64()
        );
        drop(part);
        drop(tegra);

        // 8. The record of what the slot now holds, with the signed manifest it came from.
        let installed = InstalledSlot {
            record,
            manifest: text(header.manifest_json, "manifest.json")?,
            signature: text(header.sig_json, "manifest.sig")?,
        };
        crate::store::write_slot(&mut store, target, &installed)?;

        // 9. Arm, 10. clear the journal.
        let armed = self.arm_written(
            &opts.arm,
            target,
            &boot,
            capsule,
            delivery.as_ref(),
            &slot_dir,
        )?;
        state.journal = None;
        state.save(&mut store)?;
        if armed {
            tracing::info!(
                "slot {target} holds {} {} and boots next ({} tries); run `aperture-update \
                 mark-good` (the health gate does) after booting it",
                verified.product,
                verified.version,
                opts.tries()
            );
        } else {
            tracing::info!(
                "slot {target} holds {} {}, recorded and left unbootable until it is blessed",
                verified.product,
                verified.version
            );
        }
        Ok(Installed {
            target,
            armed,
            version: verified.version.to_string(),
            security_version: verified.security_version,
            manifest_sha256,
            rootfs_bytes: rootfs.size,
            rootfs_read_during_stream: matches!(followed, Some(Ok(()))),
            restarted,
        })
    }

    /// For a bundle with delta payloads: check that the running slot runs the deltas' base
    /// (the verity root hash it booted with is the base rootfs's) and hand `reader` the running
    /// slot's copy of each artifact (its rootfs partition; its kernel and initrd on the ESP);
    /// the base's name for messages. Refused, before anything is written, otherwise: the
    /// caller fetches the full bundle instead.
    fn delta_bases<R: Read>(
        &self,
        verified: &Manifest,
        reader: &mut BundleReader<R>,
        layout: SlotLayout,
        place: &Placement<'_>,
    ) -> Result<Option<String>, UpdateError> {
        let mut name = None;
        for artifact in verified.payload_artifacts() {
            let Some(base) = artifact.payload.as_ref().and_then(|p| p.base.as_ref()) else {
                continue;
            };
            let dest = place
                .dests
                .iter()
                .find(|(a, _)| a.name == artifact.name)
                .map(|(_, d)| *d);
            if dest == Some(Dest::PassOver) {
                // The other slot's UKI: checked against its encoded hash, never rebuilt.
                continue;
            }
            let running = crate::facts::booted_root_hash(&self.paths.cmdline)?;
            if running.as_deref() != Some(base.root_hash.as_str()) {
                return Err(TrustError::DeltaBase {
                    artifact: artifact.payload_entry_name().unwrap_or_default(),
                    base_version: base.version.to_string(),
                    expected: base.sha256.to_string(),
                    found: match running {
                        Some(r) => format!(
                            "the running slot {} was booted with verity root {r}, not the \
                             base's {}",
                            self.booted, base.root_hash
                        ),
                        None => format!(
                            "the running slot {} was booted without a verity root hash",
                            self.booted
                        ),
                    },
                }
                .into());
            }
            let (source, len): (Box<dyn aperture_trust::delta::BaseSource>, u64) = match dest {
                Some(Dest::Rootfs) => {
                    let part = self.disk.open_shared(&layout.rootfs(self.booted))?;
                    let len = part.size();
                    (Box::new(PartitionBase(part)), len)
                }
                Some(Dest::EspFile(file)) => {
                    let path = self.paths.slot_dir(self.booted).join(file);
                    let len = std::fs::metadata(&path)
                        .map_err(UpdateError::file("reading", &path))?
                        .len();
                    (Box::new(aperture_trust::delta::FileBase::open(&path)?), len)
                }
                _ => {
                    return Err(UpdateError::Unsupported {
                        reason: format!(
                            "{} is a delta, but this board keeps it where deltas are not \
                             rebuilt from; install the full bundle",
                            artifact.name
                        ),
                    })
                }
            };
            tracing::info!(
                "delta: {} is rebuilt from {} of {} {} in slot {} and {} bytes",
                artifact.name,
                source.describe(),
                verified.product,
                base.version,
                self.booted,
                artifact.payload.as_ref().map_or(0, |p| p.size)
            );
            reader.set_delta_base(artifact.name.as_str(), source, len, base.sha256.clone());
            name = Some(format!(
                "{} {} in slot {}",
                verified.product, base.version, self.booted
            ));
        }
        Ok(name)
    }

    /// Steps 1 and 2 of an install of `verified` under `policy`, without a byte read from a
    /// payload or written anywhere: whether the running product, the board, the floor (as the
    /// policy says), this installer and the inactive slot's partitions and the ESP take it.
    /// aperture-reset runs this before its first step, so that a reset that would fail to
    /// install never starts (a level 3 destroys the data before it installs). The signature
    /// was checked by whoever made `verified`.
    pub fn preflight(
        &self,
        verified: &VerifiedManifest,
        policy: &Policy,
        arm: &Arm,
    ) -> Result<(), UpdateError> {
        let facts = crate::facts::load(&self.paths.build_facts)?;
        let state = self.device_state(&self.store(facts.board)?)?;
        let target = self.booted.other();
        self.admit(verified, policy, &facts, &state)?;
        self.check_tries(arm, target)?;
        self.prepare(verified, facts.board.slot_layout(), target)?;
        Ok(())
    }

    /// The anti-rollback floor in force: the higher of the device state store's and, where
    /// the board has one, the TPM's.
    pub fn security_floor(&self) -> Result<u64, UpdateError> {
        let facts = crate::facts::load(&self.paths.build_facts)?;
        let state = self.device_state(&self.store(facts.board)?)?;
        Ok(self.floors(&state)?.0)
    }

    /// The time key expiry is judged at for `policy`.
    fn key_time(&self, policy: &Policy, facts: &BuildFacts, state: &DeviceState) -> u64 {
        match policy {
            Policy::Update => self.trusted_now(facts, state),
            Policy::Reset { .. } => VERIFIED_WHEN_WRITTEN,
        }
    }

    /// Step 2's policy: may `verified` be installed on this appliance under `policy`?
    fn admit(
        &self,
        verified: &VerifiedManifest,
        policy: &Policy,
        facts: &BuildFacts,
        state: &DeviceState,
    ) -> Result<(), UpdateError> {
        if verified.product != facts.product {
            return Err(UpdateError::Unsupported {
                reason: format!(
                    "the bundle is for product {:?} but this appliance runs {:?}; use the bundle \
                     built from this product's recipe",
                    verified.product, facts.product
                ),
            });
        }
        let (floor, accepted_keyring) = self.floors(state)?;
        match policy {
            Policy::Update => {
                let running = crate::facts::semver(facts, &self.paths.build_facts)?;
                let device = DeviceFacts {
                    board: facts.board.to_string(),
                    version: running,
                    security_floor: floor,
                };
                match check_update(verified, &device) {
                    Err(TrustError::NotNewer { version }) => {
                        return Err(UpdateError::AlreadyInstalled {
                            version: version.to_string(),
                            slot: self.booted,
                        })
                    }
                    other => other?,
                }
                check_keyring(verified, accepted_keyring)?;
            }
            Policy::Reset { floor: rule } => {
                check_factory(verified, facts.board.name())?;
                if *rule == ResetFloor::Enforced && verified.security_version < floor {
                    return Err(TrustError::SecurityVersionTooLow {
                        floor,
                        offered: verified.security_version,
                    }
                    .into());
                }
            }
        }
        Ok(())
    }

    /// Refuse, before anything is written, a try count the boot control would refuse when
    /// the slot is armed (1 to 7; 1 to 3 on Jetson, whose firmware keeps 2 bits).
    fn check_tries(&self, arm: &Arm, target: Slot) -> Result<(), UpdateError> {
        if let Arm::Next { tries } = *arm {
            let max = self.boot.max_tries();
            if !(1..=max).contains(&tries) {
                return Err(aperture_slots::SlotsError::InvalidTries {
                    slot: target,
                    tries,
                    max,
                }
                .into());
            }
        }
        Ok(())
    }

    /// What this installer places where on `layout`, the target's partitions opened and
    /// checked for room, the ESP's room checked, the boot entry and (Jetson) the boot image
    /// header made: reads only.
    fn prepare<'m>(
        &self,
        m: &'m Manifest,
        layout: SlotLayout,
        target: Slot,
    ) -> Result<Prepared<'m>, UpdateError> {
        let place = Placement::of(m, layout, target)?;
        let part = self.disk.open(&layout.rootfs(target))?;
        fits(target, "rootfs image", place.rootfs.size, &*part)?;
        self.check_esp_space(&place, target)?;
        plan(
            &self.boot.read()?,
            self.booted,
            Event::BeginInstall { target },
        )?;
        let boot = slot_boot(m, layout, target)?;
        // Jetson: the boot chain's kernel and kernel-dtb partitions, and the boot image header
        // (a command line it cannot hold is refused here, before anything is written).
        let tegra = match place.boot_image {
            None => None,
            Some(image) => {
                let dtb_size = place.artifact(Role::Dtb).map_or(0, |a| a.size);
                Some(TegraSlot::open(
                    &*self.disk,
                    layout,
                    target,
                    image,
                    dtb_size,
                    boot.options.as_deref().unwrap_or_default(),
                    Open::Write,
                )?)
            }
        };
        Ok(Prepared {
            place,
            part,
            tegra,
            boot,
        })
    }

    /// Step 9: arm the written `target` as `arm` says; whether it was armed. With a capsule
    /// (Jetson), the firmware switches the boot chain once it has applied it, so the slot is
    /// armed without the switch, and the capsule is delivered last: until its delivery bit is
    /// set, the running slot boots. A slot only recorded gets no capsule.
    fn arm_written(
        &mut self,
        arm: &Arm,
        target: Slot,
        boot: &SlotBoot,
        capsule: Option<(PathBuf, Artifact)>,
        delivery: Option<&CapsuleDelivery>,
        slot_dir: &Path,
    ) -> Result<bool, UpdateError> {
        let tries = match (*arm, capsule) {
            (Arm::RecordOnly, staged) => {
                if let Some((tmp, artifact)) = staged {
                    tracing::info!(
                        "slot {target} is only recorded: its boot-firmware capsule {} is not \
                         delivered",
                        artifact.name
                    );
                    let io = &*self.io;
                    io.remove(&tmp)
                        .map_err(UpdateError::file("removing", &tmp))?;
                    io.sync_dir(slot_dir)
                        .map_err(UpdateError::file("syncing folder", slot_dir))?;
                }
                return Ok(false);
            }
            (Arm::Next { tries }, None) => tries,
            (Arm::Next { tries }, Some((tmp, artifact))) => {
                let Some(d) = delivery else {
                    return Err(UpdateError::Unsupported {
                        reason: "a boot-firmware capsule on a board without UEFI capsules".into(),
                    });
                };
                self.slots().arm_leaving_next(target, tries, boot)?;
                let dir = d.dir();
                let io = &*self.io;
                if !dir.is_dir() {
                    io.create_dir_all(&dir)
                        .map_err(UpdateError::file("creating folder", &dir))?;
                }
                let dest = dir.join(artifact.name.as_str());
                rename_synced(io, &tmp, &dest)?;
                for d in [&dir, slot_dir] {
                    io.sync_dir(d)
                        .map_err(UpdateError::file("syncing folder", d))?;
                }
                io.step("request capsule delivery")
                    .map_err(UpdateError::file("writing", d.variable_path()))?;
                d.request()?;
                tracing::info!(
                    "boot-firmware capsule {} delivered in {}; the firmware applies it to the \
                     other boot chain at the next boot and then boots slot {target}",
                    artifact.name,
                    dir.display()
                );
                return Ok(true);
            }
        };
        self.slots().arm(target, tries, boot)?;
        Ok(true)
    }
}

/// The running slot's partition as the base of a delta: read only, at offsets.
struct PartitionBase(Box<dyn PartitionHandle>);

impl aperture_trust::delta::BaseSource for PartitionBase {
    fn describe(&self) -> String {
        self.0.describe()
    }

    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
        self.0.read_exact_at(buf, offset)
    }
}

/// This process's peak resident memory (`VmHWM`), for the install log; "unknown" off Linux.
fn peak_memory() -> String {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmHWM:"))
                .map(|v| v.trim().to_string())
        })
        .unwrap_or_else(|| "unknown".into())
}
