//! The tier-1 rig: a file-backed disk image with the qemu board's GPT (small partitions, the
//! device state store among them), an ESP and root folder in a temporary directory, two signed
//! snakeoil releases (the installed one in both slots, recorded in the store as the image
//! builder does; the factory one in the factory partition), storage provisioned with the fake
//! LUKS seam, canaries planted through it, and helpers to "boot", pass the health gate, reset,
//! resume and scan.

#![allow(dead_code)]

use std::fs::OpenOptions;
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::rc::Rc;

use aperture_appliance::{Area, Board, BuildFacts, Files};
use aperture_gpt::{read_gpt, write_gpt, Guid, Layout, PartitionSpec};
use aperture_reset::io::{open_store, GuardedDisk, Store};
use aperture_reset::seams::{FakeClock, FakeDiscard, FakeDiscardMode, FakeReboot, Faults};
use aperture_reset::{BundleSlotWriter, Journal, Outcome, Reset, ResetError};
use aperture_slots::{BootControl, BootState, FakeBootControl, Slot, SlotManager, SystemdBoot};
use aperture_storage::{
    FakeCrypt, FakeMounts, FakeTpm, FileDisk, Key, KeySource, Storage, StorageError, StorageState,
    Volume, VolumeSetup,
};
use aperture_trust::bundle::{compress_payload, write_bundle, PayloadSource};
use aperture_trust::keys::{KeyringEntry, SignedKeyring, SigningKeyPair};
use aperture_trust::manifest::{
    Artifact, ArtifactName, BootInfo, BuildInfo, Manifest, Role, Sha256Hex,
};
use aperture_trust::record::{InstalledSlot, SlotRecord};
use aperture_trust::signing::sign_manifest;
use aperture_trust::verity::append_hash_tree;

pub const NOW: u64 = 1_800_000_000;
/// The snakeoil release key's expiry (about four months after [`NOW`]).
pub const KEY_NOT_AFTER: u64 = NOW + 10_000_000;
pub const MIB: u64 = 1 << 20;
pub const BOARD: &str = "qemu-x86_64";
/// Disk size as built, and as flashed onto a larger disk (data grows into the rest).
pub const IMAGE_SIZE: u64 = 12 * MIB;
pub const DISK_SIZE: u64 = 16 * MIB;

pub fn snakeoil(seed: u8) -> SigningKeyPair {
    SigningKeyPair::from_secret_bytes(&[seed; 32])
}

pub fn pseudo_random(len: usize, seed: u64) -> Vec<u8> {
    let mut s = seed | 1;
    (0..len)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            s as u8
        })
        .collect()
}

/// The installed release (2.0.0) and the factory release (1.0.0), built once per test binary.
pub fn releases() -> &'static (Release, Release) {
    static RELEASES: std::sync::OnceLock<(Release, Release)> = std::sync::OnceLock::new();
    RELEASES.get_or_init(|| (release("2.0.0", 7, BOARD), release("1.0.0", 100, BOARD)))
}

/// The factory release (1.0.0) with another security version.
pub fn factory_with_security_version(security_version: u64) -> Release {
    release_with(ReleaseSpec {
        security_version,
        ..ReleaseSpec::new("1.0.0", 100, BOARD)
    })
}

/// What a test release is made of.
pub struct ReleaseSpec<'a> {
    pub version: &'a str,
    pub seed: u64,
    pub board: &'a str,
    pub security_version: u64,
}

impl<'a> ReleaseSpec<'a> {
    pub fn new(version: &'a str, seed: u64, board: &'a str) -> ReleaseSpec<'a> {
        ReleaseSpec {
            version,
            seed,
            board,
            security_version: 1,
        }
    }
}

/// A signed release: rootfs (erofs stand-in with a verity tree), kernel, initrd.
#[derive(Clone)]
pub struct Release {
    pub manifest: Manifest,
    pub manifest_json: Vec<u8>,
    pub sig_json: Vec<u8>,
    pub bundle: Vec<u8>,
    pub rootfs: Vec<u8>,
    pub kernel: Vec<u8>,
    pub initrd: Vec<u8>,
}

pub fn release(version: &str, seed: u64, board: &str) -> Release {
    release_with(ReleaseSpec::new(version, seed, board))
}

pub fn release_with(spec: ReleaseSpec<'_>) -> Release {
    let ReleaseSpec {
        version,
        seed,
        board,
        security_version,
    } = spec;
    let tmp = tempfile::tempdir().unwrap();
    let data_blocks = 24u64;
    let rootfs_path = tmp.path().join("rootfs.img");
    let mut f = OpenOptions::new()
        .create(true)
        .truncate(true)
        .read(true)
        .write(true)
        .open(&rootfs_path)
        .unwrap();
    f.write_all(&pseudo_random((data_blocks * 4096) as usize, seed))
        .unwrap();
    let verity = append_hash_tree(
        &mut f,
        data_blocks * 4096,
        b"snakeoil-salt",
        [seed as u8; 16],
    )
    .unwrap();
    drop(f);
    let rootfs = std::fs::read(&rootfs_path).unwrap();
    let kernel = pseudo_random(20_000, seed + 1);
    let initrd = pseudo_random(30_000, seed + 2);
    std::fs::write(tmp.path().join("vmlinuz"), &kernel).unwrap();
    std::fs::write(tmp.path().join("initrd.img"), &initrd).unwrap();
    let mut artifacts = Vec::new();
    let mut zst = Vec::new();
    for (name, role, data) in [
        ("rootfs.img", Role::Rootfs, &rootfs),
        ("vmlinuz", Role::Kernel, &kernel),
        ("initrd.img", Role::Initrd, &initrd),
    ] {
        let z = tmp.path().join(format!("{name}.zst"));
        let payload = compress_payload(&tmp.path().join(name), &z, 3).unwrap();
        zst.push((name, std::fs::read(&z).unwrap()));
        artifacts.push(Artifact {
            name: ArtifactName::new(name).unwrap(),
            role,
            size: data.len() as u64,
            sha256: Sha256Hex::digest(data),
            verity: (role == Role::Rootfs).then(|| verity.clone()),
            payload: Some(payload),
        });
    }
    let manifest = Manifest {
        format: 1,
        product: "aperture-vision".into(),
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
            cmdline: "console=ttyS0 panic=10".into(),
        }),
        artifacts,
    };
    let root = snakeoil(1);
    let release_key = snakeoil(2);
    let keyring = SignedKeyring::create(
        &root,
        vec![KeyringEntry::new(
            release_key.public(),
            "release-snakeoil",
            KEY_NOT_AFTER,
        )],
    )
    .unwrap();
    let (manifest_json, sig_json) = sign_manifest(&manifest, &release_key, &keyring).unwrap();
    let sources: Vec<PayloadSource<'_>> = zst
        .iter()
        .map(|(name, bytes)| PayloadSource {
            name: ArtifactName::new(*name).unwrap(),
            size: bytes.len() as u64,
            reader: Box::new(&bytes[..]),
        })
        .collect();
    let bundle = write_bundle(Vec::new(), &manifest_json, &sig_json, sources).unwrap();
    Release {
        manifest,
        manifest_json,
        sig_json,
        bundle,
        rootfs,
        kernel,
        initrd,
    }
}

/// Which boot-control backend the rig uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    Fake,
    SystemdBoot,
}

/// Canaries planted in the customer partitions (through the encryption) and raw.
pub const CANARIES: [&[u8]; 4] = [
    b"CANARY-config-identity-7f3a9c2e-device-serial",
    b"CANARY-data-video-frame-0b1d5e77-customer",
    b"CANARY-data-log-line-51c0ffee-in-var-log",
    b"CANARY-data-raw-plaintext-from-before-luks",
];

pub struct Rig {
    pub dir: tempfile::TempDir,
    pub image: PathBuf,
    pub files: Files,
    /// The appliance's TPM.
    pub tpm: FakeTpm,
    pub backend: Backend,
    /// What the reset's clock says (unix seconds).
    pub now: u64,
    pub current: Release,
    pub factory: Release,
    /// Keys captured at provisioning (the scan decrypts with them, as a thief with the key).
    pub keys: Vec<Vec<u8>>,
}

pub fn partition(image: &Path, label: &str) -> (u64, u64) {
    let mut f = std::fs::File::open(image).unwrap();
    let size = f.metadata().unwrap().len();
    let gpt = read_gpt(&mut f, size).unwrap();
    let p = gpt.find(label).unwrap();
    (p.offset(), p.size())
}

impl Rig {
    pub fn new(backend: Backend) -> Rig {
        Rig::with_factory(backend, releases().1.clone())
    }

    pub fn with_factory(backend: Backend, factory: Release) -> Rig {
        let dir = tempfile::tempdir().unwrap();
        let image = dir.path().join("disk.img");
        let ns = "reset-test";
        let part = |name: &str, t: Guid, size: u64| {
            PartitionSpec::new(name, t, Guid::derive(ns, name), size)
        };
        let layout = Layout::new(
            Guid::derive(ns, "disk"),
            vec![
                part("esp", Guid::EFI_SYSTEM, MIB),
                part("rootfs_a", Guid::LINUX_ROOT_X86_64, MIB),
                part("rootfs_b", Guid::LINUX_ROOT_X86_64, MIB),
                part("factory", Guid::LINUX_FILESYSTEM, MIB),
                part(
                    "aperture_state",
                    Guid::LINUX_FILESYSTEM,
                    aperture_appliance::store::PARTITION_BYTES,
                ),
                part("config", Guid::LINUX_LUKS, MIB),
                part("data", Guid::LINUX_LUKS, MIB),
            ],
        );
        let mut f = OpenOptions::new()
            .create(true)
            .truncate(true)
            .read(true)
            .write(true)
            .open(&image)
            .unwrap();
        f.set_len(IMAGE_SIZE).unwrap();
        write_gpt(&mut f, IMAGE_SIZE, &layout).unwrap();
        f.set_len(DISK_SIZE).unwrap();
        drop(f);

        let files = Files::at(dir.path());
        let tpm_device = files.tpm_device();
        std::fs::create_dir_all(tpm_device.parent().unwrap()).unwrap();
        std::fs::write(&tpm_device, b"").unwrap();
        let current = releases().0.clone();
        let rig = Rig {
            dir,
            image,
            files,
            tpm: FakeTpm::new().unwrap(),
            backend,
            now: NOW,
            current,
            factory,
            keys: Vec::new(),
        };
        for slot in Slot::ALL {
            rig.install_current(slot);
        }
        rig.write_partition("factory", 0, &rig.factory.bundle);
        // What the factory partition holds after the bundle: not zeros.
        let (_, size) = partition(&rig.image, "factory");
        let tail = rig.factory.bundle.len() as u64;
        if tail < size {
            rig.write_partition(
                "factory",
                tail,
                &vec![0x5a; (size - tail).min(8192) as usize],
            );
        }
        std::fs::create_dir_all(rig.files.root_key().parent().unwrap()).unwrap();
        snakeoil(1).public().save(&rig.files.root_key()).unwrap();
        let facts = BuildFacts {
            product: "aperture-vision".into(),
            version: "2.0.0".into(),
            security_version: 1,
            board: Board::QemuX86_64,
            recipe_sha256: "00".into(),
            source_date_epoch: 1_700_000_000,
            required_services: vec![],
            tpm: false,
            reset_button: Some("gpio-keys".into()),
        };
        std::fs::write(rig.files.build_facts(), facts.to_bytes()).unwrap();
        std::fs::create_dir_all(rig.files.cmdline().parent().unwrap()).unwrap();
        rig.set_booted(Slot::A);
        match backend {
            Backend::Fake => {
                FakeBootControl::create(rig.boot_file(), BootState::fresh()).unwrap();
            }
            Backend::SystemdBoot => {
                let boot = |slot| {
                    let m = &rig.current.manifest;
                    let v = m.artifacts[0].verity.as_ref().unwrap();
                    aperture_slots::cmdline::slot_boot(
                        &m.product,
                        &m.version.to_string(),
                        "console=ttyS0",
                        aperture_slots::SlotLayout::Esp,
                        slot,
                        v.root_hash.as_str(),
                        v.hash_offset,
                    )
                };
                aperture_slots::write_initial_esp(&rig.files.esp(), &boot(Slot::A), &boot(Slot::B))
                    .unwrap();
            }
        }
        rig
    }

    pub fn boot_file(&self) -> PathBuf {
        self.dir.path().join("bootstate.json")
    }

    pub fn backend(&self) -> Box<dyn BootControl> {
        match self.backend {
            Backend::Fake => Box::new(FakeBootControl::open(self.boot_file()).unwrap()),
            Backend::SystemdBoot => Box::new(SystemdBoot::new(self.files.esp())),
        }
    }

    pub fn state(&self) -> BootState {
        self.backend().read().unwrap()
    }

    pub fn set_booted(&self, slot: Slot) {
        std::fs::write(
            self.files.cmdline(),
            format!("root=x aperture.slot={slot}\n"),
        )
        .unwrap();
    }

    pub fn booted(&self) -> Slot {
        aperture_reset::app::booted_slot(&self.files).unwrap()
    }

    /// The health gate passes on the running slot: it commits it, as `aperture-agent health`
    /// does through the updater library.
    pub fn health_gate_passes(&self) {
        SlotManager::new(self.backend(), self.booted())
            .mark_good()
            .unwrap();
    }

    /// The device state store on the disk image.
    pub fn store(&self) -> Store {
        open_store(&FileDisk::new(&self.image), Board::QemuX86_64).unwrap()
    }

    /// The reset journal in the store.
    pub fn journal(&self) -> Option<Journal> {
        Journal::load(&self.store()).unwrap()
    }

    /// What aperture-storage reads before it unlocks anything: the top-level `wipe_pending`
    /// of the reset area (its contract with aperture-reset; a record that does not parse
    /// counts as pending).
    pub fn storage_sees_wipe_pending(&self) -> bool {
        #[derive(serde::Deserialize)]
        struct Marker {
            #[serde(default)]
            wipe_pending: bool,
        }
        self.store()
            .read(Area::Reset)
            .unwrap()
            .is_some_and(|b| serde_json::from_slice::<Marker>(&b).map_or(true, |m| m.wipe_pending))
    }

    /// A power-on: the (simulated) loader picks a slot.
    pub fn power_on(&self) -> Slot {
        let slot = self.backend().loader_boot().unwrap();
        self.set_booted(slot);
        slot
    }

    pub fn write_partition(&self, label: &str, offset: u64, data: &[u8]) {
        let (start, size) = partition(&self.image, label);
        assert!(offset + data.len() as u64 <= size, "{label}");
        let f = OpenOptions::new().write(true).open(&self.image).unwrap();
        f.write_all_at(data, start + offset).unwrap();
    }

    pub fn read_partition(&self, label: &str) -> Vec<u8> {
        let (start, size) = partition(&self.image, label);
        let f = std::fs::File::open(&self.image).unwrap();
        let mut buf = vec![0u8; size as usize];
        f.read_exact_at(&mut buf, start).unwrap();
        buf
    }

    /// The current release in `slot`, as the image builder lays it out.
    fn install_current(&self, slot: Slot) {
        let release = self.current.clone();
        self.install(slot, &release);
    }

    /// `release` in `slot`, recorded in the store as the image builder and the updater do.
    pub fn install(&self, slot: Slot, release: &Release) {
        self.write_partition(&format!("rootfs_{slot}"), 0, &release.rootfs);
        std::fs::create_dir_all(self.files.esp_slot_dir(slot)).unwrap();
        std::fs::write(self.files.kernel(slot), &release.kernel).unwrap();
        std::fs::write(self.files.initrd(slot), &release.initrd).unwrap();
        let installed = InstalledSlot {
            record: SlotRecord::from_manifest(&release.manifest).unwrap(),
            manifest: String::from_utf8(release.manifest_json.clone()).unwrap(),
            signature: String::from_utf8(release.sig_json.clone()).unwrap(),
        };
        self.store()
            .write_json(Area::slot(slot), &installed)
            .unwrap();
    }

    /// The version the store records for `slot`.
    pub fn recorded_version(&self, slot: Slot) -> String {
        let installed: InstalledSlot = self.store().read_json(Area::slot(slot)).unwrap().unwrap();
        installed.record.version.to_string()
    }

    /// aperture-storage's record in the device state, as a boot opens it.
    pub fn storage_state(&self) -> StorageState {
        StorageState::new(self.store())
    }

    /// The key the device state records for `v`, unsealed by the rig's TPM.
    pub fn recorded_key(&self, v: Volume) -> Option<Key> {
        let record = self.storage_state().load().unwrap();
        let sealed = &record.volumes.get(&v)?.sealed;
        self.tpm.unseal(v.label(), sealed).ok()
    }

    /// One run of `aperture-storage setup` with `crypt` (this boot's mappings).
    pub fn storage_setup(&self, crypt: &FakeCrypt) -> Result<Vec<VolumeSetup>, StorageError> {
        let disk = FileDisk::new(&self.image);
        let mounts = FakeMounts::new();
        let state = self.storage_state();
        let facts = aperture_appliance::BuildFacts {
            product: "aperture-vision".into(),
            version: "2.0.0".into(),
            security_version: 1,
            board: Board::QemuX86_64,
            recipe_sha256: "00".into(),
            source_date_epoch: 1,
            required_services: Vec::new(),
            tpm: true,
            reset_button: None,
        };
        let storage = Storage {
            files: &self.files,
            facts: &facts,
            disk: &disk,
            crypt,
            tpm: &self.tpm,
            state: &state,
            mounts: &mounts,
            tpm_wait: std::time::Duration::from_secs(1),
        };
        storage.setup()
    }

    /// First boot of aperture-storage, then canaries written through the "file system" and
    /// one plaintext canary left in the data area from before the volume existed.
    pub fn provision(&mut self) -> FakeCrypt {
        let crypt = FakeCrypt::new(self.files.mapper_dir());
        let disk = FileDisk::new(&self.image);
        // Plaintext written before luksFormat, deep in the data area: luksFormat leaves it.
        self.write_partition("data", MIB / 2 + 77, CANARIES[3]);
        let done = self.storage_setup(&crypt).unwrap();
        assert!(done.iter().all(|v| v.formatted));
        let config_key = self.recorded_key(Volume::Config).unwrap();
        let data_key = self.recorded_key(Volume::Data).unwrap();
        let open = |label: &str| {
            aperture_storage::Disk::open(&disk, label, aperture_storage::Access::Shared).unwrap()
        };
        FakeCrypt::write_plain(open("config").as_ref(), &config_key, 4096, CANARIES[0]).unwrap();
        FakeCrypt::write_plain(open("data").as_ref(), &data_key, 8192, CANARIES[1]).unwrap();
        FakeCrypt::write_plain(open("data").as_ref(), &data_key, 3 * MIB + 123, CANARIES[2])
            .unwrap();
        self.keys = vec![config_key.as_bytes().to_vec(), data_key.as_bytes().to_vec()];
        // Every canary is findable before the reset: the scan works.
        let found = self.scan();
        for c in CANARIES {
            assert!(
                found.iter().any(|(name, _)| name.as_bytes() == c),
                "{} not found before the reset",
                String::from_utf8_lossy(c)
            );
        }
        crypt
    }

    /// Runs `f` on a reset engine for the running slot.
    pub fn with_reset<T>(
        &self,
        crypt: &FakeCrypt,
        faults: Rc<Faults>,
        discard: FakeDiscardMode,
        reboot: &FakeReboot,
        f: impl FnOnce(&mut Reset<'_>) -> Result<T, ResetError>,
    ) -> Result<T, ResetError> {
        let file_disk = FileDisk::new(&self.image);
        let disk = GuardedDisk::new(&file_disk, faults.clone());
        let keys = self.storage_state();
        let clock = FakeClock::new(self.now);
        let discard = FakeDiscard::new(discard);
        let root = snakeoil(1).public();
        let board = Board::QemuX86_64;
        let writer = BundleSlotWriter {
            disk: &disk,
            files: &self.files,
            board,
            root,
        };
        let store = open_store(&disk, board)?;
        let mut reset = Reset {
            files: &self.files,
            disk: &disk,
            crypt,
            keys: &keys,
            discard: &discard,
            writer: &writer,
            clock: &clock,
            reboot,
            slots: SlotManager::new(self.backend(), self.booted()),
            store,
            root,
            board,
            faults: &faults,
        };
        f(&mut reset)
    }

    /// A fresh boot's crypt (no mappings).
    pub fn fresh_crypt(&self) -> FakeCrypt {
        FakeCrypt::new(self.files.mapper_dir())
    }

    /// Runs a whole reset from `start` through every reboot until done, the health gate
    /// passing on every boot that waits for it; returns the reboots.
    pub fn run_to_completion(
        &self,
        first: impl FnOnce(&mut Reset<'_>) -> Result<Outcome, ResetError>,
        crypt: &FakeCrypt,
    ) -> u32 {
        let reboot = FakeReboot::default();
        let mut outcome = self
            .with_reset(
                crypt,
                Rc::new(Faults::none()),
                FakeDiscardMode::Zeroes,
                &reboot,
                first,
            )
            .unwrap();
        let mut boots = 0;
        loop {
            match outcome {
                Outcome::Rebooting { .. } => {
                    boots += 1;
                    assert!(boots < 10, "reset does not finish");
                    self.power_on();
                }
                Outcome::AwaitingHealthGate { slot } => {
                    assert_eq!(slot, self.booted());
                    self.health_gate_passes();
                }
                _ => break,
            }
            outcome = self
                .with_reset(
                    &self.fresh_crypt(),
                    Rc::new(Faults::none()),
                    FakeDiscardMode::Zeroes,
                    &reboot,
                    |r| r.resume(),
                )
                .unwrap();
        }
        assert!(matches!(outcome, Outcome::Done { .. }), "{outcome:?}");
        boots
    }

    /// Canaries found on the disk image outside the rootfs and factory partitions: plaintext,
    /// or readable with a key captured at provisioning. (label, absolute offset).
    pub fn scan(&self) -> Vec<(String, u64)> {
        let mut disk = std::fs::read(&self.image).unwrap();
        for label in ["rootfs_a", "rootfs_b", "factory"] {
            let (start, size) = partition(&self.image, label);
            disk[start as usize..(start + size) as usize].fill(0);
        }
        let mut found = Vec::new();
        let mut check = |at: usize, read: &dyn Fn(usize) -> u8| {
            for c in CANARIES {
                if at + c.len() <= disk.len()
                    && c.iter().enumerate().all(|(i, b)| read(at + i) == *b)
                {
                    found.push((String::from_utf8_lossy(c).into_owned(), at as u64));
                }
            }
        };
        for at in memchr::memmem::find_iter(&disk, b"CANARY-") {
            check(at, &|i| disk[i]);
        }
        for key in &self.keys {
            // Readable with the key: the fake cipher's key stream is `key` repeated from byte 0
            // of the disk (partitions start on MiB boundaries, the data segment at 64 KiB), so
            // "CANARY-" encrypted at an offset `a` modulo 64 is one needle per `a`.
            for a in 0..key.len() {
                let needle: Vec<u8> = b"CANARY-"
                    .iter()
                    .enumerate()
                    .map(|(i, b)| b ^ key[(a + i) % key.len()])
                    .collect();
                for at in memchr::memmem::find_iter(&disk, &needle) {
                    if at % key.len() == a {
                        check(at, &|i| disk[i] ^ key[i % key.len()]);
                    }
                }
            }
        }
        for key in &self.keys {
            let wrapped = FakeCrypt::wrapped(key);
            for needle in [&key[..], &wrapped[..]] {
                if let Some(at) = find(&disk, needle) {
                    found.push(("a volume key".into(), at as u64));
                }
            }
        }
        found
    }

    /// Files under the ESP that hold a key or a canary; and the key folder's content.
    pub fn esp_leftovers(&self) -> Vec<String> {
        let mut out = Vec::new();
        let mut stack = vec![self.files.esp()];
        while let Some(dir) = stack.pop() {
            for e in std::fs::read_dir(&dir).unwrap() {
                let p = e.unwrap().path();
                if p.is_dir() {
                    stack.push(p);
                    continue;
                }
                let bytes = std::fs::read(&p).unwrap();
                let hit = self.keys.iter().any(|k| find(&bytes, k).is_some())
                    || CANARIES.iter().any(|c| find(&bytes, c).is_some());
                if hit {
                    out.push(p.display().to_string());
                }
            }
        }
        out
    }

    /// Both slots hold the factory release, verified, and both are good.
    pub fn assert_factory_everywhere(&self) {
        let disk = FileDisk::new(&self.image);
        let store = self.store();
        for slot in Slot::ALL {
            let record = aperture_reset::slot_check::verify_slot(
                &disk,
                &self.files,
                &store,
                &snakeoil(1).public(),
                Board::QemuX86_64.slot_layout(),
                slot,
            )
            .unwrap_or_else(|e| panic!("slot {slot}: {e}"));
            assert_eq!(record.version, self.factory.manifest.version, "slot {slot}");
            assert_eq!(
                self.state().status(slot),
                aperture_slots::SlotStatus::Good,
                "slot {slot} in {:?}",
                self.state()
            );
        }
        assert_eq!(self.journal(), None, "the journal is removed");
        assert!(!self.storage_sees_wipe_pending());
    }

    /// The next boot of aperture-storage formats both volumes afresh.
    pub fn assert_storage_starts_new(&self) {
        let done = self.storage_setup(&self.fresh_crypt()).unwrap();
        assert!(done.iter().all(|v| v.formatted), "{done:?}");
        for v in Volume::ALL {
            let new = self.recorded_key(v).unwrap();
            assert!(self.keys.iter().all(|old| old != new.as_bytes()));
        }
    }
}

/// First offset of `needle` in `hay`.
pub fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    memchr::memmem::find(hay, needle)
}

pub fn unused_key() -> Key {
    Key::random().unwrap()
}

/// The device state holds no sealed key any more (the other copy, the LUKS2 token, went with
/// the header).
pub fn keys_gone(rig: &Rig) -> bool {
    let record = rig.storage_state().load().unwrap();
    record.volumes.is_empty() && Volume::ALL.iter().all(|v| rig.recorded_key(*v).is_none())
}
