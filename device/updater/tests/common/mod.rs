//! Shared fixtures for the updater's tier-1 tests: signed snakeoil images and bundles made in
//! the test (random "erofs" data plus a real verity tree), a file-backed disk with a GPT made
//! with aperture-gpt (with the `aperture_state` partition holding both slots' records, as the
//! image builder lays it out), a temp ESP with systemd-boot entries, and `RawTar` for malicious
//! bundles.

// Each test binary uses a different subset of these helpers.
#![allow(dead_code)]

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use aperture_appliance::store::PARTITION_BYTES;
use aperture_appliance::{Area, Board};
use aperture_gpt::{write_gpt, Guid, Layout, PartitionSpec};
use aperture_slots::{BootControl, Slot, SystemdBoot};
use aperture_trust::bundle::{write_bundle, PayloadSource};
use aperture_trust::keys::{KeyringEntry, SignedKeyring, SigningKeyPair};
use aperture_trust::manifest::{
    Artifact, ArtifactName, BootInfo, BuildInfo, Manifest, Payload, PayloadEncoding, Role,
    Sha256Hex,
};
use aperture_trust::record::{InstalledSlot, SlotRecord};
use aperture_trust::signing::sign_manifest;
use aperture_trust::verity::{append_hash_tree, verify_device, VerityInfo};
use aperture_updater::disk::{Disk, FileDisk, PartitionReader};
use aperture_updater::io::{EspThroughIo, Io, RealIo};
use aperture_updater::state::DeviceState;
use aperture_updater::store::Store;
use aperture_updater::{BuildFacts, Paths, Updater};

pub const NOW: u64 = 1_800_000_000;
pub const PRODUCT: &str = "aperture-edge";
pub const BOARD: &str = "qemu-x86_64";
/// Size of each rootfs partition.
pub const SLOT_SIZE: u64 = 8 << 20;
/// Size of the fake erofs data in each image (the verity tree follows).
pub const DATA_SIZE: usize = 3 << 20;

pub fn snakeoil(seed: u8) -> SigningKeyPair {
    SigningKeyPair::from_secret_bytes(&[seed; 32])
}

pub fn random(len: usize, seed: u64) -> Vec<u8> {
    let mut s = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        out.extend_from_slice(&s.to_le_bytes());
    }
    out.truncate(len);
    out
}

/// Keys that sign a release: root, release, and the root-signed keyring.
pub struct Keys {
    pub root: SigningKeyPair,
    pub release: SigningKeyPair,
    pub keyring: SignedKeyring,
}

/// The device's keys: root snakeoil 1, release snakeoil 2, valid until NOW + 1000.
pub fn keys() -> Keys {
    keys_with(snakeoil(1), NOW + 1000)
}

/// Release key 2 in a keyring signed by `root`, expiring at `not_after`.
pub fn keys_with(root: SigningKeyPair, not_after: u64) -> Keys {
    let release = snakeoil(2);
    let keyring = SignedKeyring::create(
        &root,
        vec![KeyringEntry::new(
            release.public(),
            "release-snakeoil",
            not_after,
        )],
    )
    .unwrap();
    Keys {
        root,
        release,
        keyring,
    }
}

/// One release: its slot contents, manifest, signature and bundle.
#[derive(Clone)]
pub struct Image {
    pub board: String,
    pub version: String,
    pub security_version: u64,
    /// The rootfs artifact: data plus verity tree.
    pub rootfs: Vec<u8>,
    pub verity: VerityInfo,
    pub kernel: Vec<u8>,
    pub initrd: Vec<u8>,
    /// qemu boards: each slot's UKI (A, B): the kernel and initrd above in a synthetic stub,
    /// with the slot's command line, and a certificate table that verifies against nothing
    /// (the devices here carry no db certificate, so the updater checks that a signature is
    /// there, not whose; tests/install.rs `a_uki_signed_with_other_keys_...` signs for real).
    pub uki: Vec<Vec<u8>>,
    pub manifest: Manifest,
    pub manifest_json: Vec<u8>,
    pub sig_json: Vec<u8>,
    /// (entry name, zstd bytes) per payload, in order.
    pub payloads: Vec<(String, Vec<u8>)>,
    pub bundle: Vec<u8>,
}

pub fn image(version: &str, security_version: u64, seed: u64) -> Image {
    image_with(version, security_version, seed, &keys(), |_| {})
}

/// An image whose manifest `edit` may change before it is signed with `keys`.
pub fn image_with(
    version: &str,
    security_version: u64,
    seed: u64,
    keys: &Keys,
    edit: impl FnOnce(&mut Manifest),
) -> Image {
    image_sized(version, security_version, seed, keys, DATA_SIZE, edit)
}

/// An image with `data_size` bytes of fake erofs data (half random, half zeros, so zstd has
/// something to do as with a real file system).
pub fn image_sized(
    version: &str,
    security_version: u64,
    seed: u64,
    keys: &Keys,
    data_size: usize,
    edit: impl FnOnce(&mut Manifest),
) -> Image {
    image_for(
        BOARD,
        version,
        security_version,
        seed,
        keys,
        data_size,
        &[],
        edit,
    )
}

/// An image for `board` whose bundle also carries `extra` payloads (name, role, content) after
/// rootfs, kernel and initrd: a Jetson's device tree and capsule.
#[allow(clippy::too_many_arguments)]
pub fn image_for(
    board: &str,
    version: &str,
    security_version: u64,
    seed: u64,
    keys: &Keys,
    data_size: usize,
    extra: &[(&str, Role, Vec<u8>)],
    edit: impl FnOnce(&mut Manifest),
) -> Image {
    let mut data = random(data_size, seed);
    for chunk in data.chunks_mut(8192) {
        let half = chunk.len() / 2;
        chunk[half..].fill(0);
    }
    image_of_data(
        board,
        version,
        security_version,
        seed,
        keys,
        data,
        extra,
        edit,
    )
}

/// An image whose rootfs holds `data` (a multiple of 4096 bytes) and its verity tree.
#[allow(clippy::too_many_arguments)]
pub fn image_of_data(
    board: &str,
    version: &str,
    security_version: u64,
    seed: u64,
    keys: &Keys,
    data: Vec<u8>,
    extra: &[(&str, Role, Vec<u8>)],
    edit: impl FnOnce(&mut Manifest),
) -> Image {
    let data_size = data.len();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("rootfs.img");
    let mut f = fs::File::options()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(&path)
        .unwrap();
    f.write_all(&data).unwrap();
    drop(data);
    let verity =
        append_hash_tree(&mut f, data_size as u64, b"snakeoil-salt", [seed as u8; 16]).unwrap();
    drop(f);
    let rootfs = fs::read(&path).unwrap();
    let kernel = random(100_000, seed + 100);
    let initrd = random(250_000, seed + 200);
    let zst = |d: &[u8]| zstd::encode_all(d, 1).unwrap();
    let layout = board.parse::<Board>().unwrap().slot_layout();
    let esp = layout == aperture_slots::SlotLayout::Esp;
    let uki: Vec<Vec<u8>> = if esp {
        Slot::ALL
            .iter()
            .map(|slot| {
                test_uki(
                    &aperture_slots::cmdline::verity_cmdline(
                        "console=ttyS0",
                        layout,
                        *slot,
                        verity.root_hash.as_str(),
                        verity.hash_offset,
                    ),
                    &kernel,
                    &initrd,
                )
            })
            .collect()
    } else {
        Vec::new()
    };
    let mut payloads = vec![("rootfs.img".to_string(), zst(&rootfs))];
    if esp {
        payloads.push((Slot::A.uki_artifact(), zst(&uki[0])));
        payloads.push((Slot::B.uki_artifact(), zst(&uki[1])));
    } else {
        payloads.push(("vmlinuz".to_string(), zst(&kernel)));
        payloads.push(("initrd.img".to_string(), zst(&initrd)));
    }
    payloads.extend(extra.iter().map(|(n, _, d)| (n.to_string(), zst(d))));
    let art = |name: &str, role, data: &[u8], z: &[u8]| Artifact {
        name: ArtifactName::new(name).unwrap(),
        role,
        size: data.len() as u64,
        sha256: Sha256Hex::digest(data),
        verity: None,
        payload: Some(Payload {
            encoding: PayloadEncoding::Zstd,
            size: z.len() as u64,
            sha256: Sha256Hex::digest(z),
            base: None,
        }),
    };
    let mut rootfs_artifact = art("rootfs.img", Role::Rootfs, &rootfs, &payloads[0].1);
    rootfs_artifact.verity = Some(verity.clone());
    let mut manifest = Manifest {
        format: 1,
        product: PRODUCT.into(),
        board: board.into(),
        version: version.parse().unwrap(),
        security_version,
        build: BuildInfo {
            source_date_epoch: 1_700_000_000,
            recipe_sha256: Sha256Hex::digest(b"recipe"),
            ostree_commit: None,
            ostree_ref: None,
        },
        boot: Some(BootInfo {
            cmdline: "console=ttyS0".into(),
        }),
        artifacts: if esp {
            vec![
                rootfs_artifact,
                art(&Slot::A.uki_artifact(), Role::Uki, &uki[0], &payloads[1].1),
                art(&Slot::B.uki_artifact(), Role::Uki, &uki[1], &payloads[2].1),
            ]
        } else {
            vec![
                rootfs_artifact,
                art("vmlinuz", Role::Kernel, &kernel, &payloads[1].1),
                art("initrd.img", Role::Initrd, &initrd, &payloads[2].1),
            ]
        },
    };
    for (i, (name, role, data)) in extra.iter().enumerate() {
        manifest
            .artifacts
            .push(art(name, *role, data, &payloads[3 + i].1));
    }
    edit(&mut manifest);
    let payloads: Vec<_> = payloads
        .into_iter()
        .filter(|(name, _)| {
            manifest
                .payload_artifacts()
                .any(|a| a.name.as_str() == name)
        })
        .collect();
    let (manifest_json, sig_json) = sign_manifest(&manifest, &keys.release, &keys.keyring).unwrap();
    let mut img = Image {
        board: board.into(),
        version: version.into(),
        security_version,
        rootfs,
        verity,
        kernel,
        initrd,
        uki,
        manifest,
        manifest_json,
        sig_json,
        payloads,
        bundle: Vec::new(),
    };
    img.bundle = img.write_bundle();
    img
}

/// A UKI as the fixtures' appliances see one ([`aperture_uefi::testpe::test_uki`]).
pub fn test_uki(cmdline: &str, kernel: &[u8], initrd: &[u8]) -> Vec<u8> {
    let uki = aperture_uefi::testpe::test_uki(cmdline, kernel, initrd);
    assert!(aperture_uefi::is_signed(&uki).unwrap());
    uki
}

impl Image {
    /// This release with `kernel` and `initrd` in its UKIs (qemu boards), signed again with
    /// `keys`.
    pub fn with_boot(mut self, kernel: Vec<u8>, initrd: Vec<u8>, keys: &Keys) -> Image {
        let layout = self.board.parse::<Board>().unwrap().slot_layout();
        for (i, slot) in Slot::ALL.into_iter().enumerate() {
            let cmdline = aperture_slots::cmdline::verity_cmdline(
                "console=ttyS0",
                layout,
                slot,
                self.verity.root_hash.as_str(),
                self.verity.hash_offset,
            );
            let uki = test_uki(&cmdline, &kernel, &initrd);
            let z = zstd::encode_all(&uki[..], 1).unwrap();
            let a = &mut self.manifest.artifacts[1 + i];
            assert_eq!(a.name.as_str(), slot.uki_artifact());
            a.size = uki.len() as u64;
            a.sha256 = Sha256Hex::digest(&uki);
            let p = a.payload.as_mut().unwrap();
            p.size = z.len() as u64;
            p.sha256 = Sha256Hex::digest(&z);
            self.payloads[1 + i].1 = z;
            self.uki[i] = uki;
        }
        (self.kernel, self.initrd) = (kernel, initrd);
        (self.manifest_json, self.sig_json) =
            sign_manifest(&self.manifest, &keys.release, &keys.keyring).unwrap();
        self.bundle = self.write_bundle();
        self
    }

    /// Signs the (edited) manifest again with `keys` and rewrites the bundle.
    pub fn resign(mut self, keys: &Keys) -> Image {
        (self.manifest_json, self.sig_json) =
            sign_manifest(&self.manifest, &keys.release, &keys.keyring).unwrap();
        self.bundle = self.write_bundle();
        self
    }

    fn write_bundle(&self) -> Vec<u8> {
        let sources = self.payloads.iter().map(|(name, z)| PayloadSource {
            name: ArtifactName::new(name.clone()).unwrap(),
            size: z.len() as u64,
            reader: Box::new(&z[..]),
        });
        write_bundle(Vec::new(), &self.manifest_json, &self.sig_json, sources).unwrap()
    }

    /// This release with its rootfs, kernel and initrd sent as deltas from `base`'s (the
    /// bundle is signed again with `keys`).
    pub fn as_delta_from(&self, base: &Image, keys: &Keys) -> Image {
        let dir = tempfile::tempdir().unwrap();
        let mut img = self.clone();
        // A slot's UKI is rebuilt from the running slot's, the other slot's (the appliance
        // runs A when it installs B): uki-a from base's uki-b, uki-b from base's uki-a.
        let pairs = if self.uki.is_empty() {
            [
                (&base.rootfs, &self.rootfs, Some(&self.verity)),
                (&base.kernel, &self.kernel, None),
                (&base.initrd, &self.initrd, None),
            ]
        } else {
            [
                (&base.rootfs, &self.rootfs, Some(&self.verity)),
                (&base.uki[1], &self.uki[0], None),
                (&base.uki[0], &self.uki[1], None),
            ]
        };
        for (i, (from, to, verity)) in pairs.into_iter().enumerate() {
            let (b, t, d) = (
                dir.path().join(format!("base{i}")),
                dir.path().join(format!("target{i}")),
                dir.path().join(format!("delta{i}")),
            );
            fs::write(&b, from).unwrap();
            fs::write(&t, to).unwrap();
            let stats = aperture_trust::delta::encode_file_with(&b, &t, &d, 19, verity).unwrap();
            img.manifest.artifacts[i].payload = Some(Payload {
                encoding: PayloadEncoding::Delta,
                size: stats.encoded_size,
                sha256: stats.encoded_sha256,
                base: Some(aperture_trust::manifest::DeltaBase {
                    version: base.manifest.version.clone(),
                    size: from.len() as u64,
                    sha256: Sha256Hex::digest(from),
                    root_hash: base.verity.root_hash.clone(),
                }),
            });
            img.payloads[i].1 = fs::read(&d).unwrap();
        }
        (img.manifest_json, img.sig_json) =
            sign_manifest(&img.manifest, &keys.release, &keys.keyring).unwrap();
        img.bundle = img.write_bundle();
        img
    }

    pub fn zst(&self, i: usize) -> &[u8] {
        &self.payloads[i].1
    }

    pub fn facts(&self) -> BuildFacts {
        BuildFacts {
            product: PRODUCT.into(),
            version: self.version.clone(),
            security_version: self.security_version,
            board: self.board.parse().unwrap(),
            recipe_sha256: "ab".into(),
            source_date_epoch: 1,
            required_services: vec!["aperture-runtime.service".into()],
            // The binary would use the host's TPM; the TPM tests give the library a fake or swtpm.
            tpm: false,
            reset_button: None,
        }
    }

    /// What the image builder records for a slot flashed with this image.
    pub fn installed(&self) -> InstalledSlot {
        InstalledSlot {
            record: SlotRecord::from_manifest(&self.manifest).unwrap(),
            manifest: String::from_utf8(self.manifest_json.clone()).unwrap(),
            signature: String::from_utf8(self.sig_json.clone()).unwrap(),
        }
    }
}

/// The `aperture_state` partition spec of a test disk.
pub fn state_partition(ns: &str) -> PartitionSpec {
    PartitionSpec::new(
        "aperture_state",
        Guid::LINUX_FILESYSTEM,
        Guid::derive(ns, "aperture_state"),
        PARTITION_BYTES,
    )
}

/// The device state store of a test disk, written directly.
pub fn open_store(disk: &dyn Disk, board: Board) -> Store {
    aperture_updater::store::open(disk, board, Arc::new(RealIo)).unwrap()
}

/// Record `image` as flashed into both slots, as the image builder does.
pub fn record_flashed(disk: &dyn Disk, board: Board, image: &Image) {
    let mut store = open_store(disk, board);
    for slot in Slot::ALL {
        aperture_updater::store::write_slot(&mut store, slot, &image.installed()).unwrap();
    }
}

/// A file-backed appliance in a temp folder, as freshly flashed with `factory` in both slots.
pub struct Device {
    pub dir: tempfile::TempDir,
    pub paths: Paths,
    pub disk_path: PathBuf,
    pub slot_size: u64,
}

impl Device {
    pub fn new(factory: &Image) -> Device {
        Device::sized(factory, SLOT_SIZE)
    }

    /// A device whose rootfs partitions are `slot_size` bytes.
    pub fn sized(factory: &Image, slot_size: u64) -> Device {
        let dir = tempfile::tempdir().unwrap();
        let paths = Paths::rooted(dir.path());
        let disk_path = dir.path().join("disk.img");
        let size = 2 * slot_size + PARTITION_BYTES + (4 << 20);
        let mut f = fs::File::create(&disk_path).unwrap();
        f.set_len(size).unwrap();
        let ns = "snakeoil";
        let layout = Layout::new(
            Guid::derive(ns, "disk"),
            vec![
                PartitionSpec::new("esp", Guid::EFI_SYSTEM, Guid::derive(ns, "esp"), 1 << 20),
                state_partition(ns),
                PartitionSpec::new(
                    "rootfs_a",
                    Guid::LINUX_FILESYSTEM,
                    Guid::derive(ns, "a"),
                    slot_size,
                ),
                PartitionSpec::new(
                    "rootfs_b",
                    Guid::LINUX_FILESYSTEM,
                    Guid::derive(ns, "b"),
                    slot_size,
                ),
            ],
        );
        write_gpt(&mut f, size, &layout).unwrap();
        drop(f);
        let dev = Device {
            dir,
            paths,
            disk_path,
            slot_size,
        };
        fs::create_dir_all(dev.paths.build_facts.parent().unwrap()).unwrap();
        fs::create_dir_all(dev.paths.cmdline.parent().unwrap()).unwrap();
        keys().root.public().save(&dev.paths.root_key).unwrap();
        let disk = dev.disk();
        for slot in Slot::ALL {
            let mut part = disk.open(&format!("rootfs_{slot}")).unwrap();
            part.write_all_at(&factory.rootfs, 0).unwrap();
            part.sync().unwrap();
            let sd = dev.paths.slot_dir(slot);
            fs::create_dir_all(&sd).unwrap();
            let i = usize::from(slot == Slot::B);
            fs::write(sd.join("uki.efi"), &factory.uki[i]).unwrap();
        }
        record_flashed(&disk, BOARD.parse().unwrap(), factory);
        let boot = |slot| slot_boot(factory, slot);
        aperture_slots::write_initial_esp(&dev.paths.esp, &boot(Slot::A), &boot(Slot::B)).unwrap();
        dev.set_running(Slot::A, factory);
        dev
    }

    pub fn disk(&self) -> FileDisk {
        FileDisk::new(&self.disk_path)
    }

    /// The appliance booted `slot`, which holds `image`: its cmdline and build facts.
    pub fn set_running(&self, slot: Slot, image: &Image) {
        fs::write(
            &self.paths.cmdline,
            format!("console=ttyS0 aperture.slot={slot}\n"),
        )
        .unwrap();
        let json = serde_json::to_vec_pretty(&image.facts()).unwrap();
        fs::write(&self.paths.build_facts, json).unwrap();
    }

    /// As [`Device::set_running`], booted through dm-verity with `image`'s root hash on the
    /// command line, as the image's boot entries do.
    pub fn set_running_verity(&self, slot: Slot, image: &Image) {
        self.set_running(slot, image);
        fs::write(
            &self.paths.cmdline,
            format!(
                "console=ttyS0 aperture.verity.roothash={} aperture.slot={slot}\n",
                image.verity.root_hash
            ),
        )
        .unwrap();
    }

    pub fn backend(&self) -> SystemdBoot {
        SystemdBoot::new(self.paths.esp.clone())
    }

    /// An updater running from `booted`, on systemd-boot, real I/O, clock at NOW.
    pub fn updater(&self, booted: Slot) -> Updater {
        Updater::new(
            self.paths.clone(),
            Box::new(self.disk()),
            Box::new(self.backend()),
            booted,
        )
        .with_clock(|| NOW)
    }

    /// An updater whose every write, the boot entries' included, goes through `io`.
    pub fn updater_with_io(&self, booted: Slot, io: Arc<dyn Io>) -> Updater {
        let boot = self
            .backend()
            .with_ops(Arc::new(EspThroughIo(Arc::clone(&io))));
        Updater::new(
            self.paths.clone(),
            Box::new(self.disk()),
            Box::new(boot),
            booted,
        )
        .with_clock(|| NOW)
        .with_io(io)
    }

    /// Power on: the simulated loader picks a slot (and counts a try).
    pub fn boot(&self) -> Slot {
        self.backend().loader_boot().unwrap()
    }

    /// The first `len` bytes of a slot's partition.
    pub fn slot_bytes(&self, slot: Slot, len: usize) -> Vec<u8> {
        let part = self.disk().open(&format!("rootfs_{slot}")).unwrap();
        let mut buf = vec![0u8; len];
        part.read_exact_at(&mut buf, 0).unwrap();
        buf
    }

    /// The device state store.
    pub fn store(&self) -> Store {
        open_store(&self.disk(), BOARD.parse().unwrap())
    }

    /// What the store records for `slot`.
    pub fn installed(&self, slot: Slot) -> Option<InstalledSlot> {
        aperture_updater::store::read_slot(&self.store(), slot).unwrap()
    }

    /// The record of what `slot` holds.
    pub fn record(&self, slot: Slot) -> Option<SlotRecord> {
        self.installed(slot).map(|i| i.record)
    }

    /// The updater's record (`None`: never written).
    pub fn state(&self) -> Option<DeviceState> {
        self.store().read_json(Area::Update).unwrap()
    }

    /// Assert that `slot` holds what its record says: verity over the partition, kernel and
    /// initrd hashes. Returns the record.
    pub fn assert_slot_verifies(&self, slot: Slot) -> SlotRecord {
        let record = self
            .record(slot)
            .unwrap_or_else(|| panic!("slot {slot} has no record"));
        let part = self.disk().open(&format!("rootfs_{slot}")).unwrap();
        let reader = PartitionReader::new(&*part, record.rootfs.size);
        verify_device(reader, &record.verity)
            .unwrap_or_else(|e| panic!("slot {slot} does not verify: {e}"));
        for (role, file) in &record.boot_files {
            // The slot's own UKI is its uki.efi; the other slot's is only listed.
            if *role != Role::Uki || file.name != slot.uki_artifact() {
                continue;
            }
            let data = fs::read(self.paths.slot_dir(slot).join("uki.efi")).unwrap();
            assert_eq!(Sha256Hex::digest(&data), file.sha256, "slot {slot} uki.efi");
        }
        record
    }

    /// Everything an install could change, for "nothing was written" checks.
    pub fn snapshot(&self) -> Snapshot {
        let mut files = Vec::new();
        collect(&self.paths.esp, &mut files);
        let state = self.disk().open("aperture_state").unwrap();
        let mut bytes = vec![0u8; state.size() as usize];
        state.read_exact_at(&mut bytes, 0).unwrap();
        Snapshot {
            a: Sha256Hex::digest(&self.slot_bytes(Slot::A, self.slot_size as usize)),
            b: Sha256Hex::digest(&self.slot_bytes(Slot::B, self.slot_size as usize)),
            state: Sha256Hex::digest(&bytes),
            files,
        }
    }
}

/// Partition hashes and every ESP file with its content.
#[derive(Debug, PartialEq, Eq)]
pub struct Snapshot {
    pub a: Sha256Hex,
    pub b: Sha256Hex,
    /// The device state partition.
    pub state: Sha256Hex,
    pub files: Vec<(PathBuf, Vec<u8>)>,
}

fn collect(dir: &Path, out: &mut Vec<(PathBuf, Vec<u8>)>) {
    let mut entries: Vec<_> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    entries.sort();
    for p in entries {
        if p.is_dir() {
            collect(&p, out);
        } else {
            out.push((p.clone(), fs::read(&p).unwrap()));
        }
    }
}

/// The boot entry the image builder and the updater both make.
pub fn slot_boot(image: &Image, slot: Slot) -> aperture_slots::SlotBoot {
    aperture_slots::cmdline::slot_boot(
        PRODUCT,
        &image.version,
        "console=ttyS0",
        image
            .manifest
            .board
            .parse::<aperture_appliance::Board>()
            .unwrap()
            .slot_layout(),
        slot,
        image.verity.root_hash.as_str(),
        image.verity.hash_offset,
    )
}

/// Writes tar archives byte by byte, including ones no sane tool would write (the approach of
/// trust/tests/common).
pub struct RawTar(pub Vec<u8>);

impl RawTar {
    pub fn new() -> Self {
        RawTar(Vec::new())
    }

    pub fn header(&mut self, name: &[u8], typeflag: u8, size: u64, linkname: &[u8]) -> &mut Self {
        let mut h = [0u8; 512];
        h[..name.len()].copy_from_slice(name);
        h[100..108].copy_from_slice(b"0000644\0");
        h[108..116].copy_from_slice(b"0000000\0");
        h[116..124].copy_from_slice(b"0000000\0");
        h[124..136].copy_from_slice(format!("{size:011o}\0").as_bytes());
        h[136..148].copy_from_slice(format!("{:011o}\0", 1_700_000_000u64).as_bytes());
        h[156] = typeflag;
        h[157..157 + linkname.len()].copy_from_slice(linkname);
        h[257..263].copy_from_slice(b"ustar\0");
        h[263..265].copy_from_slice(b"00");
        h[148..156].copy_from_slice(b"        ");
        let sum: u32 = h.iter().map(|b| u32::from(*b)).sum();
        h[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
        self.0.extend_from_slice(&h);
        self
    }

    pub fn data(&mut self, data: &[u8]) -> &mut Self {
        self.0.extend_from_slice(data);
        self.0.resize(self.0.len().div_ceil(512) * 512, 0);
        self
    }

    pub fn file(&mut self, name: &str, data: &[u8]) -> &mut Self {
        self.header(name.as_bytes(), b'0', data.len() as u64, b"")
            .data(data)
    }

    pub fn special(&mut self, name: &str, typeflag: u8, linkname: &str) -> &mut Self {
        self.header(name.as_bytes(), typeflag, 0, linkname.as_bytes())
    }

    pub fn signed(&mut self, img: &Image) -> &mut Self {
        self.file("manifest.json", &img.manifest_json)
            .file("manifest.sig", &img.sig_json)
    }

    pub fn end(&mut self) -> Vec<u8> {
        self.0.extend_from_slice(&[0u8; 1024]);
        std::mem::take(&mut self.0)
    }
}

/// Offset of the data of entry `name` in a well-formed ustar archive.
pub fn data_offset(tar: &[u8], name: &str) -> usize {
    let mut at = 0;
    while at + 512 <= tar.len() {
        let h = &tar[at..at + 512];
        let end = h[..100].iter().position(|b| *b == 0).unwrap_or(100);
        let size_text: String = h[124..136]
            .iter()
            .map(|b| *b as char)
            .filter(|c| c.is_digit(8))
            .collect();
        let size = usize::from_str_radix(&size_text, 8).unwrap_or(0);
        if &h[..end] == name.as_bytes() {
            return at + 512;
        }
        at += 512 + size.div_ceil(512) * 512;
    }
    panic!("no entry {name}");
}
