//! Installing a signed bundle into a named slot, behind the small [`SlotWriter`] trait, with
//! one implementation ([`BundleSlotWriter`]) that streams the payloads with trust's
//! `BundleReader`. Kept free of reset logic so it can give way to the updater's installer.
//!
//! Order (ARCHITECTURE.md, update rules): signature and the caller's policy check before
//! anything is written; the slot made unbootable and its record in the device state store
//! removed before its partition is touched; payloads streamed into the partition and into
//! temporary files on the ESP, each hashed while it streams; the partition read back against
//! the verity tree and the rootfs sha256, the files against their sha256; only then the files
//! renamed into place and the slot's [`InstalledSlot`] (record, signed manifest and signature,
//! byte for byte) written to its area of the store. Arming is a separate call.
//!
//! What is installed was verified when it was written, so reading it back
//! ([`SlotWriter::installed`]) checks the signature chain without key expiry
//! ([`VERIFIED_WHEN_WRITTEN`]).

use std::fs::File;
use std::io::{self, Read, Write};
use std::path::Path;

use aperture_appliance::{Area, Board, Files, SlotLayout};
use aperture_slots::cmdline::slot_boot;
use aperture_slots::{BootControl, Slot, SlotBoot, SlotManager};
use aperture_storage::{Access, Disk, Partition};
use aperture_sys::fs::{create_dir_all, sync_dir, tmp_path};
use aperture_trust::bundle::{BundleReader, MAX_MANIFEST_SIZE, MAX_SIGNATURE_SIZE};
use aperture_trust::digest::{sha256_file, HashingReader};
use aperture_trust::keys::PublicKey;
use aperture_trust::manifest::{Artifact, Manifest, Role};
use aperture_trust::record::{InstalledSlot, SlotRecord};
use aperture_trust::signing::{verify_manifest, VERIFIED_WHEN_WRITTEN};
use aperture_trust::verity;

use crate::factory::{header_entries, Capture};
use crate::io::{part_err, PartReader, Store, CHUNK};
use crate::slot_check;
use crate::ResetError;

/// The slot manager every reset operation uses: any boot-control backend.
pub type Slots = SlotManager<Box<dyn BootControl>>;

/// A policy check on a verified manifest, run before anything is written
/// (`check_factory` and the anti-rollback floor for reset).
pub type Policy<'p> = &'p dyn Fn(&Manifest) -> Result<(), ResetError>;

/// Installs bundles into slots.
pub trait SlotWriter {
    /// Whether this writer can install `manifest` on this board at all; called before a
    /// reset changes anything, so that a reset that would fail half-way never starts.
    fn preflight(&self, manifest: &Manifest) -> Result<(), ResetError>;

    /// Write the bundle read from `bundle` into `slot` (never the running one) and verify
    /// what was written; record it in `store`. The slot is unbootable from before the first
    /// write until armed.
    fn write_slot(
        &self,
        slots: &mut Slots,
        store: &mut Store,
        slot: Slot,
        bundle: &mut dyn Read,
        policy: Policy<'_>,
    ) -> Result<Manifest, ResetError>;

    /// The verified manifest of what `slot` holds, from its record in `store`.
    fn installed(&self, store: &Store, slot: Slot) -> Result<Manifest, ResetError>;

    /// The boot entry of `slot` for `manifest`.
    fn boot_entry(&self, slot: Slot, manifest: &Manifest) -> Result<SlotBoot, ResetError> {
        let rootfs = rootfs_of(manifest)?;
        let verity = rootfs.verity.as_ref().ok_or_else(|| {
            ResetError::malformed("manifest", "the rootfs artifact has no verity parameters")
        })?;
        let cmdline = manifest.boot.as_ref().map_or("", |b| b.cmdline.as_str());
        let layout = manifest
            .board
            .parse::<Board>()
            .map_err(|e| ResetError::malformed("manifest", e.to_string()))?
            .slot_layout();
        Ok(slot_boot(
            &manifest.product,
            &manifest.version.to_string(),
            cmdline,
            layout,
            slot,
            verity.root_hash.as_str(),
            verity.hash_offset,
        ))
    }

    /// Make the written `slot` the next boot, on trial with `tries` tries.
    fn arm_slot(
        &self,
        slots: &mut Slots,
        store: &Store,
        slot: Slot,
        tries: u32,
    ) -> Result<(), ResetError> {
        let manifest = self.installed(store, slot)?;
        let boot = self.boot_entry(slot, &manifest)?;
        slots.arm(slot, tries, &boot)?;
        Ok(())
    }
}

fn rootfs_of(manifest: &Manifest) -> Result<&Artifact, ResetError> {
    manifest
        .artifacts
        .iter()
        .find(|a| a.role == Role::Rootfs && a.payload.is_some())
        .ok_or_else(|| ResetError::malformed("manifest", "it carries no rootfs payload"))
}

/// [`SlotWriter`] for the qemu boards' layout ([`SlotLayout::Esp`]): rootfs into
/// `rootfs_<slot>`, kernel and initrd to `/efi/aperture/<slot>/`.
pub struct BundleSlotWriter<'a> {
    /// Where the slot partitions are.
    pub disk: &'a dyn Disk,
    /// Where the ESP is.
    pub files: &'a Files,
    /// The board, whose layout names the slot partitions.
    pub board: Board,
    /// The trusted root key.
    pub root: PublicKey,
}

impl BundleSlotWriter<'_> {
    fn file_for(&self, role: Role, slot: Slot) -> Option<std::path::PathBuf> {
        match role {
            Role::Kernel => Some(self.files.kernel(slot)),
            Role::Initrd => Some(self.files.initrd(slot)),
            _ => None,
        }
    }
}

impl SlotWriter for BundleSlotWriter<'_> {
    fn preflight(&self, manifest: &Manifest) -> Result<(), ResetError> {
        if self.board.slot_layout() != SlotLayout::Esp {
            return Err(ResetError::Unsupported {
                reason: format!(
                    "{} keeps its kernels in boot partitions, which reset's slot writer does not \
                     write yet (it will install through the updater's installer); reflash with \
                     the flasher",
                    self.board
                ),
            });
        }
        rootfs_of(manifest)?;
        for a in manifest.payload_artifacts() {
            if !matches!(a.role, Role::Rootfs | Role::Kernel | Role::Initrd) {
                return Err(ResetError::Unsupported {
                    reason: format!(
                        "artifact {} has role {:?}, which this board's slots do not hold",
                        a.name, a.role
                    ),
                });
            }
        }
        Ok(())
    }

    fn write_slot(
        &self,
        slots: &mut Slots,
        store: &mut Store,
        slot: Slot,
        bundle: &mut dyn Read,
        policy: Policy<'_>,
    ) -> Result<Manifest, ResetError> {
        let limit = (MAX_MANIFEST_SIZE + MAX_SIGNATURE_SIZE) as usize + 4 * 512;
        let mut capture = Capture::new(bundle, limit);
        let mut reader = BundleReader::new(&mut capture, &self.root, VERIFIED_WHEN_WRITTEN);
        let manifest = reader.read_header()?.into_manifest();
        policy(&manifest)?;
        self.preflight(&manifest)?;
        let record = SlotRecord::from_manifest(&manifest)?;
        let rootfs = rootfs_of(&manifest)?.clone();

        // Nothing was written so far. From here the slot is unbootable until armed, and no
        // record describes it until it verifies.
        slots.begin_install(slot)?;
        store.clear(Area::slot(slot))?;
        let dir = self.files.esp_slot_dir(slot);
        create_dir_all(&dir, 0o700)?;
        let part = self
            .disk
            .open(&self.board.slot_layout().rootfs(slot), Access::Exclusive)?;
        if rootfs.size > part.size() {
            return Err(ResetError::malformed(
                format!("artifact {}", rootfs.name),
                format!(
                    "{} bytes do not fit {} ({} bytes)",
                    rootfs.size,
                    part.describe(),
                    part.size()
                ),
            ));
        }
        reader.for_each_payload(|artifact, data: &mut dyn Read| -> Result<(), ResetError> {
            match self.file_for(artifact.role, slot) {
                None => stream_to_partition(data, part.as_ref()),
                Some(path) => stream_to_file(data, &tmp_path(&path)),
            }
        })?;
        drop(reader);
        part.sync().map_err(part_err("syncing", part.as_ref()))?;

        // Read back what was written.
        verity::verify_device(PartReader::new(part.as_ref(), part.size()), &record.verity)
            .map_err(|e| ResetError::SlotVerify {
                slot,
                reason: format!("read back after writing: {e}"),
            })?;
        check_partition_hash(part.as_ref(), &rootfs, slot)?;
        for a in manifest.payload_artifacts() {
            if let Some(path) = self.file_for(a.role, slot) {
                let tmp = tmp_path(&path);
                check_file(&tmp, a, slot)?;
                std::fs::rename(&tmp, &path)
                    .map_err(ResetError::io("renaming into place", &path))?;
            }
        }
        sync_dir(&dir)?;
        let (json, sig) = header_entries(&capture.kept)?;
        // The same bytes the reader verified; checked again because they are kept.
        verify_manifest(&json, &sig, &self.root, VERIFIED_WHEN_WRITTEN)?;
        let text = |what: &str, bytes: Vec<u8>| {
            String::from_utf8(bytes).map_err(|e| ResetError::malformed(what, e))
        };
        let installed = InstalledSlot {
            record,
            manifest: text("manifest.json", json)?,
            signature: text("manifest.sig", sig)?,
        };
        store.write_json(Area::slot(slot), &installed)?;
        Ok(manifest)
    }

    fn installed(&self, store: &Store, slot: Slot) -> Result<Manifest, ResetError> {
        Ok(slot_check::installed(store, &self.root, slot)?.1)
    }
}

fn stream_to_partition(data: &mut dyn Read, part: &dyn Partition) -> Result<(), ResetError> {
    let mut buf = vec![0u8; CHUNK];
    let mut at = 0u64;
    loop {
        let n = read_full(data, &mut buf).map_err(part_err("streaming the rootfs into", part))?;
        if n == 0 {
            return Ok(());
        }
        part.write_all_at(&buf[..n], at)
            .map_err(part_err("writing", part))?;
        at += n as u64;
    }
}

fn read_full(r: &mut dyn Read, buf: &mut [u8]) -> io::Result<usize> {
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

fn stream_to_file(data: &mut dyn Read, path: &Path) -> Result<(), ResetError> {
    let mut file = File::create(path).map_err(ResetError::io("creating", path))?;
    io::copy(data, &mut file)
        .and_then(|_| file.flush())
        .and_then(|()| file.sync_all())
        .map_err(ResetError::io("writing", path))?;
    Ok(())
}

fn check_partition_hash(
    part: &dyn Partition,
    rootfs: &Artifact,
    slot: Slot,
) -> Result<(), ResetError> {
    let mut hashing = HashingReader::new(PartReader::new(part, rootfs.size));
    io::copy(&mut hashing, &mut io::sink()).map_err(part_err("reading back", part))?;
    let (_, digest, len) = hashing.finish();
    if len != rootfs.size || digest != rootfs.sha256 {
        return Err(ResetError::SlotVerify {
            slot,
            reason: format!(
                "{} read back as {len} bytes with sha256 {digest}, the manifest says {} bytes \
                 with {}",
                part.describe(),
                rootfs.size,
                rootfs.sha256
            ),
        });
    }
    Ok(())
}

fn check_file(path: &Path, artifact: &Artifact, slot: Slot) -> Result<(), ResetError> {
    let (digest, len) = sha256_file(path)?;
    if len != artifact.size || digest != artifact.sha256 {
        return Err(ResetError::SlotVerify {
            slot,
            reason: format!(
                "{} read back as {len} bytes with sha256 {digest}, the manifest says {} bytes \
                 with {}",
                path.display(),
                artifact.size,
                artifact.sha256
            ),
        });
    }
    Ok(())
}
