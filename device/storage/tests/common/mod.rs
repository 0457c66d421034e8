//! A file-backed appliance for tier-1 tests of `aperture-storage`: a GPT disk image with the
//! board's partitions, the device state in memory (power cuts lose, keep or tear its unsynced
//! writes), a fake TPM that survives reboots, and one boot at a time with fresh fakes.

#![allow(dead_code)]

use std::fs::OpenOptions;
use std::path::{Path, PathBuf};
use std::time::Duration;

use aperture_appliance::store::mem::{Cut, MemMedium};
use aperture_appliance::store::{Medium, StateStore, PARTITION_BYTES};
use aperture_appliance::{Area, Board, BuildFacts, Files};
use aperture_gpt::{write_gpt, Guid, Layout, PartitionSpec};
use aperture_storage::{
    luks, Access, CutMedium, Disk, FakeCrypt, FakeMounts, FakeTpm, FileDisk, Key, KeySource,
    Partition, PowerCut, Storage, StorageState, Volume,
};

pub const MIB: u64 = 1 << 20;

/// The image's facts for `board`.
pub fn facts(board: Board, tpm: bool) -> BuildFacts {
    BuildFacts {
        product: "test".into(),
        version: "1.0.0".into(),
        security_version: 1,
        board,
        recipe_sha256: "00".into(),
        source_date_epoch: 1,
        required_services: Vec::new(),
        tpm,
        reset_button: None,
    }
}

/// esp, config (1 MiB), data (2 MiB) on an 8 MiB image later enlarged to `disk` bytes.
pub fn disk_image(dir: &Path, board: Board, disk: u64) -> PathBuf {
    let path = dir.join("disk.img");
    let ns = "storage-test";
    let config = PartitionSpec::new(
        Volume::Config.partition(board),
        Guid::LINUX_LUKS,
        Guid::derive(ns, "c"),
        MIB,
    );
    let data = PartitionSpec::new(
        Volume::Data.partition(board),
        Guid::LINUX_LUKS,
        Guid::derive(ns, "d"),
        2 * MIB,
    );
    let esp = PartitionSpec::new("esp", Guid::EFI_SYSTEM, Guid::derive(ns, "esp"), MIB);
    // As the builds order them: on the qemu boards data is last; on a Jetson our partitions
    // follow all of NVIDIA's, so `config` comes after `UDA`.
    let parts = if board.data_fills_disk() {
        vec![esp, config, data]
    } else {
        vec![esp, data, config]
    };
    let layout = Layout::new(Guid::derive(ns, "disk"), parts);
    let mut f = OpenOptions::new()
        .create(true)
        .truncate(true)
        .read(true)
        .write(true)
        .open(&path)
        .unwrap();
    f.set_len(8 * MIB).unwrap();
    write_gpt(&mut f, 8 * MIB, &layout).unwrap();
    f.set_len(disk).unwrap();
    path
}

/// What survives a reboot.
pub struct World {
    pub dir: tempfile::TempDir,
    pub files: Files,
    pub facts: BuildFacts,
    pub image: PathBuf,
    pub tpm: FakeTpm,
    pub mem: MemMedium,
    pub filesystems: FakeMounts,
    pub tpm_wait: Duration,
}

/// One power-on.
pub struct Boot<'w> {
    pub world: &'w World,
    pub cut: PowerCut,
    pub disk: FileDisk,
    pub crypt: FakeCrypt,
    pub mounts: FakeMounts,
    pub state: StorageState,
}

impl World {
    /// A new appliance on `board`; `tpm`: the image says it has one, and it is there.
    pub fn new(board: Board, tpm: bool) -> World {
        let dir = tempfile::tempdir().unwrap();
        let image = disk_image(dir.path(), board, 32 * MIB);
        let files = Files::at(dir.path());
        let world = World {
            files,
            facts: facts(board, tpm),
            image,
            tpm: FakeTpm::new().unwrap(),
            mem: MemMedium::zeroed(PARTITION_BYTES),
            filesystems: FakeMounts::new(),
            tpm_wait: Duration::from_millis(200),
            dir,
        };
        world.set_tpm_present(tpm);
        world
    }

    /// Plug or unplug the TPM device node.
    pub fn set_tpm_present(&self, present: bool) {
        let dev = self.files.tpm_device();
        std::fs::create_dir_all(dev.parent().unwrap()).unwrap();
        if present {
            std::fs::write(&dev, b"").unwrap();
        } else {
            let _ = std::fs::remove_file(&dev);
        }
    }

    /// Power on, with a power cut waiting at `cut`.
    pub fn boot(&self, cut: PowerCut) -> Boot<'_> {
        let medium: Box<dyn Medium> = Box::new(CutMedium::new(self.mem.clone(), cut.clone()));
        Boot {
            world: self,
            disk: FileDisk::new(&self.image),
            crypt: FakeCrypt::with_power_cut(self.files.mapper_dir(), cut.clone()),
            mounts: self.filesystems.next_boot(cut.clone()),
            state: StorageState::new(StateStore::new(medium, "mem:aperture_state").unwrap()),
            cut,
        }
    }

    /// The power goes out: the device state's unsynced writes go as `how` says.
    pub fn power_cut(&self, how: Cut) {
        self.mem.power_cut(how);
    }

    /// The device state, read outside any boot.
    pub fn state(&self) -> StorageState {
        let medium: Box<dyn Medium> = Box::new(self.mem.clone());
        StorageState::new(StateStore::new(medium, "mem").unwrap())
    }

    /// Write the `reset` area of the device state.
    pub fn write_reset_area(&self, bytes: &[u8]) {
        let medium: Box<dyn Medium> = Box::new(self.mem.clone());
        StateStore::new(medium, "mem")
            .unwrap()
            .write(Area::Reset, bytes)
            .unwrap();
    }

    /// A partition, opened outside any boot.
    pub fn part(&self, v: Volume) -> Box<dyn Partition> {
        FileDisk::new(&self.image)
            .open(v.partition(self.facts.board), Access::Shared)
            .unwrap()
    }

    /// The key the device state records for `v`, unsealed by this appliance's TPM.
    pub fn recorded_key(&self, v: Volume) -> Option<Key> {
        let record = self.state().load().unwrap();
        let sealed = &record.volumes.get(&v)?.sealed;
        match sealed.kind() {
            aperture_storage::KeySourceKind::Tpm2 => self.tpm.unseal(v.label(), sealed).ok(),
            _ => aperture_storage::UnsafePlainKey
                .unseal(v.label(), sealed)
                .ok(),
        }
    }

    /// The UUID of `v`'s intact header.
    pub fn uuid(&self, v: Volume) -> Option<String> {
        let part = self.part(v);
        luks::probe(part.as_ref())
            .unwrap()
            .current()
            .map(|c| c.uuid.clone())
    }

    /// Plant `canary` in `v`'s data, through the "file system".
    pub fn plant(&self, v: Volume, canary: &[u8]) {
        let key = self.recorded_key(v).unwrap();
        FakeCrypt::write_plain(self.part(v).as_ref(), &key, 4096, canary).unwrap();
    }

    /// Whether `canary` reads back from `v` with its recorded key.
    pub fn has(&self, v: Volume, canary: &[u8]) -> bool {
        let Some(key) = self.recorded_key(v) else {
            return false;
        };
        FakeCrypt::read_plain(self.part(v).as_ref(), &key, 4096, canary.len()).unwrap() == canary
    }
}

impl Boot<'_> {
    pub fn storage(&self) -> Storage<'_> {
        Storage {
            files: &self.world.files,
            facts: &self.world.facts,
            disk: &self.disk,
            crypt: &self.crypt,
            tpm: &self.world.tpm,
            state: &self.state,
            mounts: &self.mounts,
            tpm_wait: self.world.tpm_wait,
        }
    }
}
