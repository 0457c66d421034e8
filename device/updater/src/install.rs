//! `install`: one bundle into the inactive slot, in the order that is the safety
//! (ARCHITECTURE.md, "Update rules"):
//!
//! 1. read the header and verify the signature and key chain against the root key, key expiry
//!    judged against the latest of the clock, the running image's build time and the newest
//!    signed time the device has seen (recorded with the journal: the bundle's build time);
//! 2. policy: product, board, newer version, `security_version` at or above the floor, a
//!    keyring at least as new as the newest committed one; the payloads are ones this updater
//!    can place; the rootfs fits the target partition and the boot files fit the ESP;
//!    **nothing is written before this point**;
//! 3. journal the install in the device state store ([`crate::state`]);
//! 4. invalidate the target slot ([`aperture_slots::SlotManager::begin_install`]) and forget its
//!    old record (its area of the store);
//! 5. stream the rootfs payload into the target partition (1 MiB writes; the bundle reader
//!    hashes encoded and decoded bytes as they pass), then fsync; kernel and initrd to
//!    `<name>.tmp` beside their place on the ESP, fsynced;
//! 6. once every payload hash matched: rename the boot files into place, fsync the folder;
//! 7. READ BACK: the partition's cached pages are dropped, then one sequential pass computes
//!    the rootfs sha256 while `verity::verify_device` checks every hash block and the root
//!    hash; kernel and initrd are re-read and hashed;
//! 8. record what the slot now holds ([`aperture_trust::record::InstalledSlot`]: the record and
//!    the exact manifest and signature verified) in the slot's area of the store;
//! 9. arm the slot with N tries as the next boot, with the entry
//!    [`aperture_slots::cmdline::slot_boot`] makes;
//! 10. clear the journal.
//!
//! On Jetson boards ([`aperture_slots::SlotLayout::Tegra`]) the same order holds with NVIDIA's
//! partitions: the rootfs goes to `APP_b` (or `APP`); kernel and initrd stream into the boot
//! chain's kernel partition at their places in an Android boot image, whose header page is
//! blanked at step 4 and written only at step 6; the device tree goes to the kernel-dtb
//! partition; all of it is read back at step 7. The slot is armed through NVIDIA's UEFI
//! variables. A bundle with a boot-firmware capsule first cancels any capsule an earlier install
//! left pending (before step 4), stages it in the slot's folder on the ESP, and at step 9 arms the slot
//! WITHOUT making it the next boot, moves the capsule into `\EFI\UpdateCapsule` and sets the
//! `OsIndications` delivery bit last: the firmware applies the capsule to the other boot chain
//! and switches to it itself (see [`aperture_slots::tegra::capsule`]).
//!
//! Every write, fsync and rename, of partitions, of the ESP and of the state store, goes through
//! [`crate::io::Io`]. The whole install holds the slots lock
//! ([`aperture_appliance::SlotsLock`]), so no reset, commit or other install runs meanwhile.

use std::io::{self, Read};
use std::path::{Path, PathBuf};

use aperture_slots::tegra::bootimg;
use aperture_slots::tegra::capsule::CapsuleDelivery;
use aperture_slots::{plan, Event, Slot, SlotLayout};
use aperture_trust::bundle::BundleReader;
use aperture_trust::manifest::{Artifact, Manifest, Role, Sha256Hex};
use aperture_trust::policy::{check_keyring, check_update, DeviceFacts};
use aperture_trust::record::{InstalledSlot, SlotRecord};
use aperture_trust::TrustError;

use crate::disk::PartitionHandle;
use aperture_sys::fs::tmp_path;

use crate::io::{rename_synced, Io};
use crate::paths::{INITRD_FILE, KERNEL_FILE};
pub use crate::readback::verify_rootfs;
use crate::readback::{verify_file, verify_range};
use crate::state::Journal;
use crate::{UpdateError, Updater};

/// Size of every write to a partition and of every read-back read.
pub const CHUNK: usize = 1 << 20;

/// Default boot tries of a freshly installed slot.
pub const DEFAULT_TRIES: u32 = 3;

/// Options of one install.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstallOptions {
    /// Boot tries the new slot gets before the loader falls back (1 to 7).
    pub tries: u32,
    /// Where the bundle came from, recorded in the journal (file path or redacted URL).
    pub source: Option<String>,
    /// The extra CA the download trusted, recorded in the journal for a restart.
    pub ca: Option<PathBuf>,
    /// Whether plain http:// was allowed, recorded in the journal for a restart.
    pub insecure_http: bool,
    /// How long to wait for the slots lock if another program holds it (0: fail at once,
    /// naming the holder, as a person running `install` wants).
    pub lock_wait: std::time::Duration,
}

impl Default for InstallOptions {
    fn default() -> Self {
        InstallOptions {
            tries: DEFAULT_TRIES,
            source: None,
            ca: None,
            insecure_http: false,
            lock_wait: std::time::Duration::ZERO,
        }
    }
}

/// What an install did.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Installed {
    /// The slot written and armed.
    pub target: Slot,
    /// The version installed.
    pub version: String,
    /// Its security version (the floor is NOT raised until the slot is committed).
    pub security_version: u64,
    /// sha256 of the installed `manifest.json`.
    pub manifest_sha256: String,
    /// Rootfs bytes written to the partition.
    pub rootfs_bytes: u64,
    /// The earlier, interrupted install this one replaced, if there was one.
    pub restarted: Option<Journal>,
}

/// Where one payload goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Dest {
    /// The slot's rootfs partition (`rootfs_b`, `APP_b`), from its start.
    Rootfs,
    /// A file in the slot's folder on the ESP (qemu boards: `vmlinuz`, `initrd.img`).
    EspFile(&'static str),
    /// A range of the slot's kernel partition (Jetson): the kernel or the initrd of its
    /// Android boot image, at this offset; the header is written once both are verified.
    BootImage(u64),
    /// The slot's kernel-dtb partition (Jetson), from its start.
    Dtb,
    /// A boot-firmware UEFI capsule (Jetson), staged beside the slot's record and delivered
    /// on the ESP when the slot is armed.
    Capsule,
}

/// Where a bundle's payloads go on this board.
struct Placement<'m> {
    layout: SlotLayout,
    rootfs: &'m Artifact,
    dests: Vec<(&'m Artifact, Dest)>,
    /// Jetson: where kernel and initrd sit in the boot image.
    boot_image: Option<bootimg::Layout>,
}

impl<'m> Placement<'m> {
    /// Refuse manifests this updater cannot place on `layout` before anything is written.
    fn of(m: &'m Manifest, layout: SlotLayout) -> Result<Placement<'m>, UpdateError> {
        let unsupported = |reason: String| UpdateError::Unsupported { reason };
        let (required, optional, carries): (&[Role], &[Role], &str) = match layout {
            SlotLayout::Esp => (
                &[Role::Rootfs, Role::Kernel, Role::Initrd],
                &[],
                "one rootfs, one kernel and one initrd, which this board boots from the ESP",
            ),
            SlotLayout::Tegra(_) => (
                &[Role::Rootfs, Role::Kernel, Role::Initrd, Role::Dtb],
                &[Role::Capsule],
                "one rootfs, kernel, initrd and device tree, and at most one boot-firmware \
                 capsule",
            ),
        };
        let mut found: Vec<&'m Artifact> = Vec::new();
        for a in m.payload_artifacts() {
            if !(required.contains(&a.role) || optional.contains(&a.role))
                || found.iter().any(|b| b.role == a.role)
            {
                return Err(unsupported(format!(
                    "payload {} has role {:?}, which this updater does not place on this board \
                     (or which appears twice); bundles for this board carry {carries}",
                    a.name, a.role
                )));
            }
            found.push(a);
        }
        let get = |role: Role| found.iter().copied().find(|a| a.role == role);
        for role in required {
            if get(*role).is_none() {
                return Err(unsupported(format!(
                    "the bundle carries no {role:?} payload; bundles for this board carry \
                     {carries}"
                )));
            }
        }
        let rootfs = get(Role::Rootfs).ok_or_else(|| unsupported("no rootfs".into()))?;
        if rootfs.verity.is_none() {
            return Err(unsupported(format!(
                "rootfs {} has no verity parameters",
                rootfs.name
            )));
        }
        let boot_image = match layout {
            SlotLayout::Esp => None,
            SlotLayout::Tegra(_) => {
                let size = |role| get(role).map_or(0, |a| a.size);
                Some(
                    bootimg::Layout::new(size(Role::Kernel), size(Role::Initrd)).ok_or_else(
                        || unsupported("kernel or initrd is larger than a boot image holds".into()),
                    )?,
                )
            }
        };
        let dests = found
            .iter()
            .map(|a| {
                let dest = match (a.role, boot_image) {
                    (Role::Rootfs, _) => Dest::Rootfs,
                    (Role::Kernel, None) => Dest::EspFile(KERNEL_FILE),
                    (Role::Initrd, None) => Dest::EspFile(INITRD_FILE),
                    (Role::Kernel, Some(l)) => Dest::BootImage(l.kernel_offset()),
                    (Role::Initrd, Some(l)) => Dest::BootImage(l.ramdisk_offset()),
                    (Role::Dtb, _) => Dest::Dtb,
                    _ => Dest::Capsule,
                };
                (*a, dest)
            })
            .collect();
        Ok(Placement {
            layout,
            rootfs,
            dests,
            boot_image,
        })
    }

    fn artifact(&self, role: Role) -> Option<&'m Artifact> {
        self.dests.iter().map(|(a, _)| *a).find(|a| a.role == role)
    }
}

/// A Jetson slot's kernel and kernel-dtb partitions, and the boot image header to write last.
struct TegraSlot {
    kernel: Box<dyn PartitionHandle>,
    dtb: Box<dyn PartitionHandle>,
    image: bootimg::Layout,
    header: Vec<u8>,
}

impl Updater {
    /// Install the bundle read from `bundle` into the slot that is not running. See the module
    /// documentation for the order. On a refusal (trust, policy, unsupported content) nothing
    /// was written; on a later error the target is left unbootable and the journal says so.
    pub fn install(
        &mut self,
        bundle: &mut dyn Read,
        opts: &InstallOptions,
    ) -> Result<Installed, UpdateError> {
        let _lock = self.lock("install", opts.lock_wait)?;
        let facts = crate::facts::load(&self.paths.build_facts)?;
        let running = crate::facts::semver(&facts, &self.paths.build_facts)?;
        let root = self.root_key()?;
        let mut store = self.store(facts.board)?;
        let mut state = self.device_state(&store)?;
        let target = self.booted.other();

        // 1. Header: signature and key chain, before any payload byte is used.
        let now = self.trusted_now(&facts, &state);
        let mut reader = BundleReader::new(bundle, &root, now);
        let verified = reader.read_header()?;
        let header = reader
            .header_bytes()
            .cloned()
            .ok_or_else(|| UpdateError::Unsupported {
                reason: "the bundle reader kept no header bytes".into(),
            })?;
        let manifest_sha256 = Sha256Hex::digest(&header.manifest_json).to_string();

        // 2. Policy, then what this updater can place, then the disk: reads only.
        if verified.product != facts.product {
            return Err(UpdateError::Unsupported {
                reason: format!(
                    "the bundle is for product {:?} but this appliance runs {:?}; use the bundle \
                     built from this product's recipe",
                    verified.product, facts.product
                ),
            });
        }
        let (floor, accepted_keyring) = self.floors(&state)?;
        let device = DeviceFacts {
            board: facts.board.to_string(),
            version: running,
            security_floor: floor,
        };
        match check_update(&verified, &device) {
            Err(TrustError::NotNewer { version }) => {
                return Err(UpdateError::AlreadyInstalled {
                    version: version.to_string(),
                    slot: self.booted,
                })
            }
            other => other?,
        }
        check_keyring(&verified, accepted_keyring)?;
        let layout = facts.board.slot_layout();
        let place = Placement::of(&verified, layout)?;
        let rootfs = place.rootfs;
        let verity = rootfs
            .verity
            .clone()
            .ok_or_else(|| UpdateError::Unsupported {
                reason: "the rootfs has no verity parameters".into(),
            })?;
        let mut part = self.disk.open(&layout.rootfs(target))?;
        fits(target, "rootfs image", rootfs.size, &*part)?;
        self.check_esp_space(&place, target)?;
        plan(
            &self.boot.read()?,
            self.booted,
            Event::BeginInstall { target },
        )?;
        let record = SlotRecord::from_manifest(&verified)?;
        let base = verified.boot.as_ref().map_or("", |b| b.cmdline.as_str());
        let boot = aperture_slots::cmdline::slot_boot(
            &verified.product,
            &verified.version.to_string(),
            base,
            layout,
            target,
            verity.root_hash.as_str(),
            verity.hash_offset,
        );
        // Jetson: the boot chain's kernel and kernel-dtb partitions, and the boot image header
        // (a command line it cannot hold is refused here, before anything is written).
        let mut tegra = match place.boot_image {
            None => None,
            Some(image) => Some(self.open_tegra_slot(&place, target, image, &boot.options)?),
        };
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
            tries: opts.tries,
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

        // 5. Stream.
        let streaming = std::time::Instant::now();
        let mut staged: Vec<(PathBuf, PathBuf, Artifact)> = Vec::new();
        let mut capsule: Option<(PathBuf, Artifact)> = None;
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
                    write_partition(io, &mut *part, payload, target, 0)?;
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
        })?;

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
            "streamed {:.0} MiB into {} in {:.2} s",
            rootfs.size as f64 / (1 << 20) as f64,
            part.describe(),
            streaming.elapsed().as_secs_f64()
        );

        // 7. Read back.
        let reading = std::time::Instant::now();
        if let Err(e) = part.drop_cache() {
            tracing::debug!("could not drop cached pages of {}: {e}", part.describe());
        }
        verify_rootfs(&*part, rootfs, target)?;
        for (_, dest, artifact) in &staged {
            verify_file(dest, artifact, target)?;
        }
        if let Some(t) = &tegra {
            t.verify(&place, target)?;
        }
        if let Some((tmp, artifact)) = &capsule {
            verify_file(tmp, artifact, target)?;
        }
        tracing::info!(
            "read slot {target} back: sha256 and dm-verity match the manifest ({:.2} s)",
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

        // 9. Arm, 10. clear the journal. With a capsule (Jetson), the firmware switches the
        // boot chain once it has applied it, so the slot is armed without the switch, and the
        // capsule is delivered last: until its delivery bit is set, the running slot boots.
        match (&capsule, &delivery) {
            (Some((tmp, artifact)), Some(d)) => {
                self.slots().arm_leaving_next(target, opts.tries, &boot)?;
                let dir = d.dir();
                let io = &*self.io;
                if !dir.is_dir() {
                    io.create_dir_all(&dir)
                        .map_err(UpdateError::file("creating folder", &dir))?;
                }
                let dest = dir.join(artifact.name.as_str());
                rename_synced(io, tmp, &dest)?;
                for d in [&dir, &slot_dir] {
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
            }
            _ => {
                self.slots().arm(target, opts.tries, &boot)?;
            }
        }
        state.journal = None;
        state.save(&mut store)?;
        tracing::info!(
            "slot {target} holds {} {} and boots next ({} tries); run `aperture-update mark-good` \
             (the health gate does) after booting it",
            verified.product,
            verified.version,
            opts.tries
        );
        Ok(Installed {
            target,
            version: verified.version.to_string(),
            security_version: verified.security_version,
            manifest_sha256,
            rootfs_bytes: rootfs.size,
            restarted,
        })
    }

    /// Open a Jetson slot's kernel and kernel-dtb partitions and check that the boot image
    /// and the device tree fit; the boot image header is made here, from `cmdline`.
    fn open_tegra_slot(
        &self,
        place: &Placement<'_>,
        target: Slot,
        image: bootimg::Layout,
        cmdline: &str,
    ) -> Result<TegraSlot, UpdateError> {
        let name = |p: Option<String>| {
            p.ok_or_else(|| UpdateError::Unsupported {
                reason: "this board has no kernel partitions".into(),
            })
        };
        let kernel = self.disk.open(&name(place.layout.kernel(target))?)?;
        let dtb = self.disk.open(&name(place.layout.kernel_dtb(target))?)?;
        fits(target, "boot image", image.image_size(), &*kernel)?;
        let dtb_size = place.artifact(Role::Dtb).map_or(0, |a| a.size);
        fits(target, "device tree", dtb_size, &*dtb)?;
        let header =
            bootimg::header(image.kernel_size, image.ramdisk_size, cmdline).map_err(|e| {
                UpdateError::Unsupported {
                    reason: format!("slot {target}'s boot image: {e}"),
                }
            })?;
        Ok(TegraSlot {
            kernel,
            dtb,
            image,
            header,
        })
    }

    /// The target's folder on the ESP, where its boot files are staged: made if missing, and
    /// rid of the temporary files an earlier install cut off left.
    fn prepare_slot_dir(&self, slot_dir: &Path) -> Result<(), UpdateError> {
        let io = &*self.io;
        if !slot_dir.is_dir() {
            io.create_dir_all(slot_dir)
                .map_err(UpdateError::file("creating folder", slot_dir))?;
        }
        let leftovers = leftover_tmp(slot_dir);
        for (path, _) in &leftovers {
            tracing::info!("removing {}, left by an install cut off", path.display());
            io.remove(path)
                .map_err(UpdateError::file("removing", path))?;
        }
        if !leftovers.is_empty() {
            io.sync_dir(slot_dir)
                .map_err(UpdateError::file("syncing folder", slot_dir))?;
        }
        Ok(())
    }

    /// Refuse, before anything is written, boot files the ESP has no room for: the files
    /// staged on it (kernel and initrd, or a capsule) while the old ones are still in place.
    /// Temporary files an earlier install left count as free: they go first.
    fn check_esp_space(&self, place: &Placement<'_>, target: Slot) -> Result<(), UpdateError> {
        let sizes: Vec<u64> = place
            .dests
            .iter()
            .filter(|(_, d)| matches!(d, Dest::EspFile(_) | Dest::Capsule))
            .map(|(a, _)| a.size)
            .collect();
        if sizes.is_empty() {
            return Ok(());
        }
        let esp = &self.paths.esp;
        let space = self
            .io
            .space(esp)
            .map_err(UpdateError::file("finding the free space of", esp))?;
        let needed: u64 = sizes.iter().map(|s| space.allocation(*s)).sum();
        let reclaimable: u64 = leftover_tmp(&self.paths.slot_dir(target))
            .iter()
            .map(|(_, len)| space.allocation(*len))
            .sum();
        let free = space.free.saturating_add(reclaimable);
        if needed > free {
            return Err(UpdateError::EspFull {
                path: esp.clone(),
                slot: target,
                needed,
                free,
            });
        }
        Ok(())
    }
}

/// The `*.tmp` files in `dir` and their sizes (none if `dir` is missing).
fn leftover_tmp(dir: &Path) -> Vec<(PathBuf, u64)> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut found: Vec<(PathBuf, u64)> = entries
        .filter_map(Result::ok)
        .filter(|e| e.file_name().to_string_lossy().ends_with(".tmp"))
        .filter_map(|e| Some((e.path(), e.metadata().ok().filter(|m| m.is_file())?.len())))
        .collect();
    found.sort();
    found
}

/// Refuse a payload of `size` bytes that `part` cannot hold.
fn fits(
    slot: Slot,
    what: &'static str,
    size: u64,
    part: &dyn PartitionHandle,
) -> Result<(), UpdateError> {
    if size > part.size() {
        return Err(UpdateError::TooLarge {
            slot,
            what,
            partition: part.label().to_string(),
            size,
            capacity: part.size(),
        });
    }
    Ok(())
}

impl TegraSlot {
    /// Read back the boot image (header, kernel, initrd) and the device tree.
    fn verify(&self, place: &Placement<'_>, slot: Slot) -> Result<(), UpdateError> {
        for part in [&self.kernel, &self.dtb] {
            if let Err(e) = part.drop_cache() {
                tracing::debug!("could not drop cached pages of {}: {e}", part.describe());
            }
        }
        let mut first = vec![0u8; bootimg::PAGE_SIZE as usize];
        self.kernel
            .read_exact_at(&mut first, 0)
            .map_err(|e| UpdateError::Verify {
                slot,
                what: format!("boot image on {}", self.kernel.describe()),
                reason: format!("reading: {e}"),
            })?;
        if first != self.header {
            return Err(UpdateError::Verify {
                slot,
                what: format!("boot image on {}", self.kernel.describe()),
                reason: "the header does not read back as written".into(),
            });
        }
        for (role, part, offset) in [
            (Role::Kernel, &self.kernel, self.image.kernel_offset()),
            (Role::Initrd, &self.kernel, self.image.ramdisk_offset()),
            (Role::Dtb, &self.dtb, 0),
        ] {
            if let Some(artifact) = place.artifact(role) {
                verify_range(&**part, offset, artifact, slot)?;
            }
        }
        Ok(())
    }
}

/// A verified header document as text (JSON is UTF-8, so a verified one always is).
fn text(bytes: Vec<u8>, what: &str) -> Result<String, UpdateError> {
    String::from_utf8(bytes).map_err(|e| UpdateError::Malformed {
        path: PathBuf::from(what),
        reason: format!("{e}: not UTF-8"),
    })
}

/// Fill `buf` from `r` as far as it goes; the count (less than `buf.len()` only at the end).
pub(crate) fn fill(r: &mut dyn Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

fn payload_error(e: io::Error) -> UpdateError {
    UpdateError::File {
        op: "reading payload from",
        path: PathBuf::from("the bundle"),
        source: e,
    }
}

/// How much a rootfs stream writes before it asks the kernel to start writing it back.
const WRITEBACK_WINDOW: u64 = 32 << 20;

/// Stream the rootfs into the partition in 1 MiB writes, starting writeback every
/// [`WRITEBACK_WINDOW`], then fsync.
fn write_partition(
    io: &dyn Io,
    part: &mut dyn PartitionHandle,
    payload: &mut dyn Read,
    slot: Slot,
    start: u64,
) -> Result<u64, UpdateError> {
    let mut buf = vec![0u8; CHUNK];
    let mut offset = start;
    let fail = |op, part: &dyn PartitionHandle| {
        let device = part.describe();
        move |source| UpdateError::Partition {
            op,
            slot,
            device,
            source,
        }
    };
    let mut flushed = start;
    loop {
        let n = fill(payload, &mut buf).map_err(payload_error)?;
        if n == 0 {
            break;
        }
        io.write_at(part, &buf[..n], offset)
            .map_err(fail("writing", part))?;
        offset += n as u64;
        if offset - flushed >= WRITEBACK_WINDOW {
            // Best effort: a failure here changes nothing; the sync below is what counts.
            let _ = part.start_writeback(flushed, offset - flushed);
            flushed = offset;
        }
        if n < buf.len() {
            break;
        }
    }
    io.sync(part).map_err(fail("syncing", part))?;
    Ok(offset - start)
}

/// Stream a boot file into `path` (a `.tmp` name), then fsync it.
fn write_file(io: &dyn Io, path: &Path, payload: &mut dyn Read) -> Result<(), UpdateError> {
    let mut f = io
        .create(path)
        .map_err(UpdateError::file("creating", path))?;
    let mut buf = vec![0u8; CHUNK];
    loop {
        let n = fill(payload, &mut buf).map_err(payload_error)?;
        if n == 0 {
            break;
        }
        io.write(&mut f, path, &buf[..n])
            .map_err(UpdateError::file("writing", path))?;
        if n < buf.len() {
            break;
        }
    }
    io.sync_file(&f, path)
        .map_err(UpdateError::file("syncing", path))
}
