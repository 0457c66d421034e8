//! The tier-1 rig: a file-backed disk image with a board's GPT (small partitions, the device
//! state store among them: the qemu board's `rootfs_a`/`rootfs_b`, or NVIDIA's `APP`/`APP_b`
//! with each boot chain's kernel and kernel-dtb partitions and `UDA` on Jetson), an ESP,
//! efivars folder and root folder in a temporary directory, two signed snakeoil releases (the
//! installed one in both slots, recorded in the store as the image builder does; the factory
//! one in the factory partition), storage provisioned with the fake LUKS seam, canaries planted
//! through it, and helpers to "boot", pass the health gate, reset, resume and scan. The reset
//! engine gets the updater's installer over the same disk, its writes under the rig's faults.

#![allow(dead_code)]

mod release;

use std::fs::OpenOptions;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use aperture_appliance::{Area, Board, BuildFacts, Files, SlotsLock};
use aperture_gpt::{read_gpt, write_gpt, Guid, Layout, PartitionSpec};
use aperture_reset::io::{open_store, GuardedDisk, Store};
use aperture_reset::seams::{
    FakeClock, FakeDiscard, FakeDiscardMode, FakeReboot, Faults, FaultsIo,
};
use aperture_reset::{Journal, Outcome, Reset, ResetError};
use aperture_slots::tegra::bootimg;
use aperture_slots::{
    BootControl, BootState, FakeBootControl, Slot, SlotLayout, SlotManager, SystemdBoot, Tegra,
};
use aperture_storage::{
    FakeCrypt, FakeMounts, FakeTpm, FileDisk, Key, KeySource, Storage, StorageError, StorageState,
    Volume, VolumeSetup,
};
use aperture_trust::record::{InstalledSlot, SlotRecord};
use aperture_updater::io::{EspThroughIo, Io, RealIo};
use aperture_updater::{Paths, Updater};

pub use release::*;

pub const MIB: u64 = 1 << 20;
/// What the disk image grows by when flashed (data grows into the rest).
pub const GROWTH: u64 = 4 * MIB;

/// Which boot-control backend the rig uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    Fake,
    SystemdBoot,
    /// NVIDIA's UEFI variables in a folder, the ledger in the state store, the firmware
    /// simulated by `Tegra::loader_boot` (Jetson boards).
    Tegra,
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
    pub board: Board,
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

/// Every partition of `board`'s disk, with its type and size: the slots as its layout names
/// them (on Jetson each boot chain's kernel and kernel-dtb partitions too), then the shared
/// ones. On the qemu boards data is last and grows by [`GROWTH`] at the first boot; on a
/// Jetson, as the build lays it out, `UDA` comes among NVIDIA's partitions with the recipe's
/// size (here the same as grown) and ours follow it.
fn layout(board: Board) -> Vec<(String, Guid, u64)> {
    let slots = board.slot_layout();
    let mut parts = vec![(
        board.partition(aperture_appliance::Role::Esp).to_string(),
        Guid::EFI_SYSTEM,
        MIB,
    )];
    for slot in Slot::ALL {
        parts.push((slots.rootfs(slot), Guid::LINUX_FILESYSTEM, MIB));
    }
    for slot in Slot::ALL {
        for name in [slots.kernel(slot), slots.kernel_dtb(slot)]
            .into_iter()
            .flatten()
        {
            parts.push((name, Guid::LINUX_FILESYSTEM, 256 << 10));
        }
    }
    use aperture_appliance::Role;
    let data: (String, Guid, u64) = (board.partition(Role::Data).into(), Guid::LINUX_LUKS, MIB);
    if !board.data_fills_disk() {
        parts.push((data.0.clone(), data.1, MIB + GROWTH));
    }
    parts.push((
        board.partition(Role::Factory).into(),
        Guid::LINUX_FILESYSTEM,
        MIB,
    ));
    parts.push((
        board.partition(Role::State).into(),
        Guid::LINUX_FILESYSTEM,
        aperture_appliance::store::PARTITION_BYTES,
    ));
    parts.push((board.partition(Role::Config).into(), Guid::LINUX_LUKS, MIB));
    if board.data_fills_disk() {
        parts.push(data);
    }
    parts
}

impl Rig {
    pub fn new(backend: Backend) -> Rig {
        Rig::with_factory(backend, releases().1.clone())
    }

    pub fn with_factory(backend: Backend, factory: Release) -> Rig {
        Rig::build(Board::QemuX86_64, backend, releases().0.clone(), factory)
    }

    /// A Jetson: NVIDIA's partitions, the Tegra boot control.
    pub fn jetson(board: Board) -> Rig {
        let (current, factory) = releases_for(board);
        Rig::build(board, Backend::Tegra, current, factory)
    }

    pub fn build(board: Board, backend: Backend, current: Release, factory: Release) -> Rig {
        let dir = tempfile::tempdir().unwrap();
        let image = dir.path().join("disk.img");
        let ns = "reset-test";
        let parts = layout(board);
        // Partitions start on MiB boundaries: each takes at least one MiB.
        let image_size: u64 = parts
            .iter()
            .map(|(_, _, size)| size.div_ceil(MIB) * MIB)
            .sum::<u64>()
            + 2 * MIB;
        let specs = parts
            .iter()
            .map(|(name, t, size)| PartitionSpec::new(name, *t, Guid::derive(ns, name), *size))
            .collect();
        let gpt = Layout::new(Guid::derive(ns, "disk"), specs);
        let mut f = OpenOptions::new()
            .create(true)
            .truncate(true)
            .read(true)
            .write(true)
            .open(&image)
            .unwrap();
        f.set_len(image_size).unwrap();
        write_gpt(&mut f, image_size, &gpt).unwrap();
        f.set_len(image_size + GROWTH).unwrap();
        drop(f);

        let files = Files::at(dir.path());
        let tpm_device = files.tpm_device();
        std::fs::create_dir_all(tpm_device.parent().unwrap()).unwrap();
        std::fs::write(&tpm_device, b"").unwrap();
        std::fs::create_dir_all(files.efivars()).unwrap();
        std::fs::create_dir_all(files.esp()).unwrap();
        let rig = Rig {
            dir,
            image,
            files,
            tpm: FakeTpm::new().unwrap(),
            backend,
            board,
            now: NOW,
            current,
            factory,
            keys: Vec::new(),
        };
        for slot in Slot::ALL {
            rig.install_current(slot);
        }
        let factory_label = board.partition(aperture_appliance::Role::Factory);
        rig.write_partition(factory_label, 0, &rig.factory.bundle);
        // What the factory partition holds after the bundle: not zeros.
        let (_, size) = partition(&rig.image, factory_label);
        let tail = rig.factory.bundle.len() as u64;
        if tail < size {
            rig.write_partition(
                factory_label,
                tail,
                &vec![0x5a; (size - tail).min(8192) as usize],
            );
        }
        std::fs::create_dir_all(rig.files.root_key().parent().unwrap()).unwrap();
        snakeoil(1).public().save(&rig.files.root_key()).unwrap();
        std::fs::write(rig.files.build_facts(), rig.facts(false).to_bytes()).unwrap();
        std::fs::create_dir_all(rig.files.cmdline().parent().unwrap()).unwrap();
        rig.set_booted(Slot::A);
        match backend {
            Backend::Fake => {
                FakeBootControl::create(rig.boot_file(), BootState::fresh()).unwrap();
            }
            Backend::SystemdBoot => {
                let boot = |slot| rig.slot_boot(&rig.current, slot);
                aperture_slots::write_initial_esp(&rig.files.esp(), &boot(Slot::A), &boot(Slot::B))
                    .unwrap();
            }
            // A freshly flashed Jetson: no variables, no ledger (both slots good, A first).
            Backend::Tegra => {}
        }
        rig
    }

    /// The image's facts (the running image's; `tpm` as storage sees it).
    pub fn facts(&self, tpm: bool) -> BuildFacts {
        BuildFacts {
            product: "aperture-vision".into(),
            version: "2.0.0".into(),
            security_version: 1,
            board: self.board,
            recipe_sha256: "00".into(),
            source_date_epoch: 1_700_000_000,
            required_services: vec![],
            tpm,
            reset_button: Some("gpio-keys".into()),
        }
    }

    /// The boot entry of `slot` for `release`, as the image builder and the updater make it.
    pub fn slot_boot(&self, release: &Release, slot: Slot) -> aperture_slots::SlotBoot {
        aperture_updater::place::slot_boot(&release.manifest, self.board.slot_layout(), slot)
            .unwrap()
    }

    /// A GPT label of this board's disk.
    pub fn label(&self, role: aperture_appliance::Role) -> &'static str {
        self.board.partition(role)
    }

    /// The partition holding `slot`'s rootfs.
    pub fn rootfs(&self, slot: Slot) -> String {
        self.board.slot_layout().rootfs(slot)
    }

    pub fn boot_file(&self) -> PathBuf {
        self.dir.path().join("bootstate.json")
    }

    /// The boot control, its steps written through `io` where the backend writes files.
    pub fn backend_with_io(&self, io: Arc<dyn Io>) -> Box<dyn BootControl> {
        match self.backend {
            Backend::Fake => Box::new(FakeBootControl::open(self.boot_file()).unwrap()),
            Backend::SystemdBoot => {
                Box::new(SystemdBoot::new(self.files.esp()).with_ops(Arc::new(EspThroughIo(io))))
            }
            Backend::Tegra => {
                let disk = aperture_updater::disk::FileDisk::new(&self.image);
                let ledger = aperture_updater::store::open(&disk, self.board, io).unwrap();
                Box::new(
                    Tegra::new(self.files.efivars(), Box::new(ledger))
                        .with_capsules(self.files.esp())
                        .with_simulated_retry_reset(),
                )
            }
        }
    }

    pub fn backend(&self) -> Box<dyn BootControl> {
        self.backend_with_io(Arc::new(RealIo))
    }

    /// The updater on the rig's appliance, running the booted slot, writing through `io`.
    pub fn updater_with_io(&self, io: Arc<dyn Io>) -> Updater {
        let disk = aperture_updater::disk::FileDisk::new(&self.image);
        let now = self.now;
        Updater::new(
            Paths::from_files(&self.files),
            Box::new(disk),
            self.backend_with_io(io.clone()),
            self.booted(),
        )
        .with_io(io)
        .with_clock(move || now)
    }

    pub fn updater(&self) -> Updater {
        self.updater_with_io(Arc::new(RealIo))
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
        open_store(&FileDisk::new(&self.image), self.board).unwrap()
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

    /// A (warm) reboot: the (simulated) loader picks a slot; on a committed slot the health
    /// gate's commit follows, as `aperture-health.service` does on every boot (on Jetson it
    /// resets the firmware's retry count, which counts committed slots too). A slot on trial is
    /// left to the test.
    pub fn power_on(&self) -> Slot {
        let slot = self.backend().loader_boot().unwrap();
        self.set_booted(slot);
        if self.state().status(slot) == aperture_slots::SlotStatus::Good {
            self.health_gate_passes();
        }
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

    /// `release` in `slot`, laid out and recorded in the store as the image builder and the
    /// updater do: on the qemu board the slot's UKI on the ESP, on Jetson an Android boot
    /// image in the chain's kernel partition and the device tree in its kernel-dtb partition.
    pub fn install(&self, slot: Slot, release: &Release) {
        let layout = self.board.slot_layout();
        self.write_partition(&layout.rootfs(slot), 0, &release.rootfs);
        match layout {
            SlotLayout::Esp => {
                std::fs::create_dir_all(self.files.esp_slot_dir(slot)).unwrap();
                let i = usize::from(slot == Slot::B);
                std::fs::write(self.files.uki(slot), &release.uki[i]).unwrap();
            }
            SlotLayout::Tegra(_) => {
                let l =
                    bootimg::Layout::new(release.kernel.len() as u64, release.initrd.len() as u64)
                        .unwrap();
                let options = self.slot_boot(release, slot).options.unwrap_or_default();
                let mut boot = vec![0u8; l.image_size() as usize];
                let h = bootimg::header(l.kernel_size, l.ramdisk_size, &options).unwrap();
                boot[..h.len()].copy_from_slice(&h);
                let k = l.kernel_offset() as usize;
                boot[k..k + release.kernel.len()].copy_from_slice(&release.kernel);
                let r = l.ramdisk_offset() as usize;
                boot[r..r + release.initrd.len()].copy_from_slice(&release.initrd);
                self.write_partition(&layout.kernel(slot).unwrap(), 0, &boot);
                self.write_partition(&layout.kernel_dtb(slot).unwrap(), 0, &release.dtb);
            }
        }
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
        let facts = self.facts(true);
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
        self.write_partition(self.data_label(), MIB / 2 + 77, CANARIES[3]);
        let done = self.storage_setup(&crypt).unwrap();
        assert!(done.iter().all(|v| v.formatted));
        let config_key = self.recorded_key(Volume::Config).unwrap();
        let data_key = self.recorded_key(Volume::Data).unwrap();
        let open = |label: &str| {
            aperture_storage::Disk::open(&disk, label, aperture_storage::Access::Shared).unwrap()
        };
        FakeCrypt::write_plain(
            open(self.config_label()).as_ref(),
            &config_key,
            4096,
            CANARIES[0],
        )
        .unwrap();
        FakeCrypt::write_plain(
            open(self.data_label()).as_ref(),
            &data_key,
            8192,
            CANARIES[1],
        )
        .unwrap();
        FakeCrypt::write_plain(
            open(self.data_label()).as_ref(),
            &data_key,
            3 * MIB + 123,
            CANARIES[2],
        )
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

    /// The data partition's label on this board (`UDA` on Jetson).
    pub fn data_label(&self) -> &'static str {
        Volume::Data.partition(self.board)
    }

    /// The config partition's label.
    pub fn config_label(&self) -> &'static str {
        Volume::Config.partition(self.board)
    }

    /// Runs `f` on a reset engine for the running slot, its partitions and the updater's
    /// installer under `faults`, holding the slots lock as aperture-reset does.
    pub fn with_reset<T>(
        &self,
        crypt: &FakeCrypt,
        faults: Arc<Faults>,
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
        let lock = SlotsLock::acquire(
            &self.files.slots_lock(),
            "aperture-reset (test)",
            std::time::Duration::ZERO,
        )?;
        let mut installer = self.updater_with_io(Arc::new(FaultsIo(faults.clone())));
        let store = open_store(&disk, self.board)?;
        let mut reset = Reset {
            files: &self.files,
            disk: &disk,
            crypt,
            keys: &keys,
            discard: &discard,
            installer: &mut installer,
            lock: &lock,
            clock: &clock,
            reboot,
            slots: SlotManager::new(self.backend(), self.booted()),
            store,
            root,
            board: self.board,
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
                Arc::new(Faults::none()),
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
                    Arc::new(Faults::none()),
                    FakeDiscardMode::Zeroes,
                    &reboot,
                    |r| r.resume(),
                )
                .unwrap();
        }
        assert!(matches!(outcome, Outcome::Done { .. }), "{outcome:?}");
        boots
    }

    /// Canaries found on the disk image outside the slot and factory partitions: plaintext,
    /// or readable with a key captured at provisioning. (label, absolute offset).
    pub fn scan(&self) -> Vec<(String, u64)> {
        let mut disk = std::fs::read(&self.image).unwrap();
        let slots = self.board.slot_layout();
        let mut skip: Vec<String> = vec![self.label(aperture_appliance::Role::Factory).into()];
        for slot in Slot::ALL {
            skip.push(slots.rootfs(slot));
            skip.extend(slots.kernel(slot));
            skip.extend(slots.kernel_dtb(slot));
        }
        for label in &skip {
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
            // the whole disk is decrypted once and searched once. (Searching the ciphertext
            // for one needle per offset modulo 64 took most of this crate's test time: the
            // periodic key stream gives the search a candidate every few bytes.)
            let plain = decrypt(&disk, key);
            for at in memchr::memmem::find_iter(&plain, b"CANARY-") {
                check(at, &|i| plain[i]);
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

    /// Both slots hold the factory release, verified block for block by the updater, and both
    /// are good.
    pub fn assert_factory_everywhere(&self) {
        let updater = self.updater();
        for slot in Slot::ALL {
            let (installed, _) = updater
                .verify_slot(slot)
                .unwrap_or_else(|e| panic!("slot {slot}: {e}"));
            assert_eq!(
                installed.record.version, self.factory.manifest.version,
                "slot {slot}"
            );
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

/// `disk` XOR `key` repeated from byte 0 (the fake cipher's key stream), eight bytes at a time:
/// these tests run unoptimised.
fn decrypt(disk: &[u8], key: &[u8]) -> Vec<u8> {
    assert_eq!(key.len() % 8, 0, "a key of whole words");
    let words: Vec<u64> = key
        .chunks_exact(8)
        .map(|c| u64::from_ne_bytes(c.try_into().expect("eight bytes")))
        .collect();
    let mut out = disk.to_vec();
    let whole = out.len() / key.len() * key.len();
    let (body, tail) = out.split_at_mut(whole);
    for block in body.chunks_exact_mut(key.len()) {
        for (chunk, w) in block.chunks_exact_mut(8).zip(&words) {
            let v = u64::from_ne_bytes((&*chunk).try_into().expect("eight bytes")) ^ w;
            chunk.copy_from_slice(&v.to_ne_bytes());
        }
    }
    for (b, k) in tail.iter_mut().zip(key) {
        *b ^= k;
    }
    out
}
