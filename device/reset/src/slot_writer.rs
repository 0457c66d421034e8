//! Installing a signed bundle into a named slot, behind the small [`SlotWriter`] trait, with
//! one implementation ([`BundleSlotWriter`]) that streams the payloads with trust's
//! `BundleReader`. Kept free of reset logic so it can move to the updater.
//!
//! Order (ARCHITECTURE.md, update rules): signature and the caller's policy check before
//! anything is written; the slot made unbootable (and its old record removed) before its
//! partition is touched; payloads streamed into the partition and into temporary files on the
//! ESP, each hashed while it streams; the partition read back against the verity tree and the
//! rootfs sha256, the files against their sha256; only then the files renamed into place and
//! `manifest.json`, `manifest.sig` and `slot.json` written. Arming is a separate call.

use std::fs::File;
use std::io::{self, Read, Write};
use std::path::Path;

use aperture_slots::cmdline::slot_boot;
use aperture_slots::{BootControl, Slot, SlotBoot, SlotManager};
use aperture_storage::{Access, Disk, Partition};
use aperture_sys::fs::{create_dir_all, remove_durable, sync_dir, tmp_path, write_atomic};
use aperture_trust::bundle::{BundleReader, MAX_MANIFEST_SIZE, MAX_SIGNATURE_SIZE};
use aperture_trust::digest::{sha256_file, HashingReader};
use aperture_trust::keys::PublicKey;
use aperture_trust::manifest::{Artifact, Manifest, Role};
use aperture_trust::record::SlotRecord;
use aperture_trust::signing::verify_manifest;
use aperture_trust::{verity, TrustError};

use crate::factory::{header_entries, Capture};
use crate::io::{part_err, PartReader, CHUNK};
use crate::paths::{
    rootfs_partition, Paths, INITRD_FILE, KERNEL_FILE, MANIFEST_FILE, SIGNATURE_FILE,
};
use crate::ResetError;

/// The slot manager every reset operation uses: any boot-control backend.
pub type Slots = SlotManager<Box<dyn BootControl>>;

/// A policy check on a verified manifest, run before anything is written
/// (`check_factory` for reset, `check_update` for the updater).
pub type Policy<'p> = &'p dyn Fn(&Manifest) -> Result<(), TrustError>;

/// Installs bundles into slots.
pub trait SlotWriter {
    /// Write the bundle read from `bundle` into `slot` (never the running one) and verify
    /// what was written. The slot is unbootable from before the first write until armed.
    fn write_slot(
        &self,
        slots: &mut Slots,
        slot: Slot,
        bundle: &mut dyn Read,
        policy: Policy<'_>,
    ) -> Result<Manifest, ResetError>;

    /// The verified manifest of what `slot` holds (from its folder on the ESP).
    fn installed(&self, slot: Slot) -> Result<Manifest, ResetError>;

    /// The boot entry of `slot` for `manifest`.
    fn boot_entry(&self, slot: Slot, manifest: &Manifest) -> Result<SlotBoot, ResetError> {
        let rootfs = rootfs_of(manifest)?;
        let verity = rootfs.verity.as_ref().ok_or_else(|| {
            ResetError::malformed("manifest", "the rootfs artifact has no verity parameters")
        })?;
        let cmdline = manifest.boot.as_ref().map_or("", |b| b.cmdline.as_str());
        let layout = manifest
            .board
            .parse::<aperture_appliance::Board>()
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
    fn arm_slot(&self, slots: &mut Slots, slot: Slot, tries: u32) -> Result<(), ResetError> {
        let manifest = self.installed(slot)?;
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

/// [`SlotWriter`] for the qemu board's layout: rootfs into `rootfs_<slot>`, kernel and initrd
/// to `/efi/aperture/<slot>/`.
pub struct BundleSlotWriter<'a> {
    /// Where the slot partitions are.
    pub disk: &'a dyn Disk,
    /// Where the ESP is.
    pub paths: &'a Paths,
    /// The trusted root key.
    pub root: PublicKey,
    /// Time for signature expiry, unix seconds.
    pub now: u64,
}

impl BundleSlotWriter<'_> {
    fn file_for(role: Role) -> Option<&'static str> {
        match role {
            Role::Kernel => Some(KERNEL_FILE),
            Role::Initrd => Some(INITRD_FILE),
            _ => None,
        }
    }
}

impl SlotWriter for BundleSlotWriter<'_> {
    fn write_slot(
        &self,
        slots: &mut Slots,
        slot: Slot,
        bundle: &mut dyn Read,
        policy: Policy<'_>,
    ) -> Result<Manifest, ResetError> {
        let limit = (MAX_MANIFEST_SIZE + MAX_SIGNATURE_SIZE) as usize + 4 * 512;
        let mut capture = Capture::new(bundle, limit);
        let mut reader = BundleReader::new(&mut capture, &self.root, self.now);
        let manifest = reader.read_header()?.into_manifest();
        policy(&manifest)?;
        let record = SlotRecord::from_manifest(&manifest)?;
        let rootfs = rootfs_of(&manifest)?.clone();
        for a in manifest.payload_artifacts() {
            if a.role != Role::Rootfs && Self::file_for(a.role).is_none() {
                return Err(ResetError::malformed(
                    format!("artifact {}", a.name),
                    format!("role {:?} cannot be installed on this board", a.role),
                ));
            }
        }

        // Nothing was written so far. From here the slot is unbootable until armed.
        slots.begin_install(slot)?;
        let dir = self.paths.slot_dir(slot);
        create_dir_all(&dir, 0o700)?;
        remove_durable(&dir.join(crate::paths::SLOT_RECORD))?;
        let part = self.disk.open(&rootfs_partition(slot), Access::Exclusive)?;
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
            match Self::file_for(artifact.role) {
                None => stream_to_partition(data, part.as_ref()),
                Some(name) => stream_to_file(data, &tmp_path(&dir.join(name))),
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
            if let Some(name) = Self::file_for(a.role) {
                let tmp = tmp_path(&dir.join(name));
                check_file(&tmp, a, slot)?;
                std::fs::rename(&tmp, dir.join(name))
                    .map_err(ResetError::io("renaming into place", &dir.join(name)))?;
            }
        }
        sync_dir(&dir)?;
        let (json, sig) = header_entries(&capture.kept)?;
        // The same bytes the reader verified; checked again because they are kept.
        verify_manifest(&json, &sig, &self.root, self.now)?;
        write_atomic(&dir.join(MANIFEST_FILE), &json, 0o600)?;
        write_atomic(&dir.join(SIGNATURE_FILE), &sig, 0o600)?;
        write_atomic(
            &dir.join(crate::paths::SLOT_RECORD),
            &record.to_json(),
            0o600,
        )?;
        Ok(manifest)
    }

    fn installed(&self, slot: Slot) -> Result<Manifest, ResetError> {
        let dir = self.paths.slot_dir(slot);
        let read = |name: &str| -> Result<Vec<u8>, ResetError> {
            let path = dir.join(name);
            std::fs::read(&path).map_err(ResetError::io("reading", &path))
        };
        let verified = verify_manifest(
            &read(MANIFEST_FILE)?,
            &read(SIGNATURE_FILE)?,
            &self.root,
            self.now,
        )?;
        Ok(verified.into_manifest())
    }
}

fn stream_to_partition(data: &mut dyn Read, part: &dyn Partition) -> Result<(), ResetError> {
    let mut buf = vec![0u8; CHUNK];
    let mut at = 0u64;
    loop {
        let n = read_full(data, &mut buf).map_err(|e| ResetError::Partition {
            op: "streaming the rootfs into",
            partition: part.describe(),
            source: e,
        })?;
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
