//! Helpers shared by the backend tests: temporary ESPs and efivars folders laid out like a
//! device, directory listings, and boot descriptions.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

use aperture_slots::tegra::Ledger;
use aperture_slots::{write_initial_esp, Slot, SlotBoot, SlotsError, SystemdBoot, Tegra};
use tempfile::TempDir;

/// A Tegra ledger in one small file, so that crash scenarios can copy a whole folder cheaply
/// (the device keeps its ledger in the state store, whose own tests cover power cuts).
#[derive(Debug, Clone)]
pub struct FileLedger(pub PathBuf);

impl Ledger for FileLedger {
    fn describe(&self) -> String {
        self.0.display().to_string()
    }
    fn load(&self) -> Result<Option<Vec<u8>>, SlotsError> {
        match std::fs::read(&self.0) {
            Ok(b) => Ok(Some(b)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(SlotsError::Io {
                op: "reading",
                path: self.0.clone(),
                source: e,
            }),
        }
    }
    /// Fails while a file `<ledger>.block` exists (a test's way to cut a step short).
    fn save(&mut self, bytes: &[u8]) -> Result<(), SlotsError> {
        if self.0.with_extension("block").exists() {
            return Err(SlotsError::Io {
                op: "writing",
                path: self.0.clone(),
                source: std::io::Error::other("blocked by the test"),
            });
        }
        std::fs::write(&self.0, bytes).map_err(|e| SlotsError::Io {
            op: "writing",
            path: self.0.clone(),
            source: e,
        })
    }
}

/// The Tegra backend on `efivars` with its ledger in the file `ledger`, the retry count kept in
/// the simulated firmware's register and reset there after a good boot.
pub fn tegra_at(efivars: &Path, ledger: &Path) -> Tegra {
    Tegra::new(
        efivars.to_path_buf(),
        Box::new(FileLedger(ledger.to_path_buf())),
    )
    .with_simulated_retry_reset()
}

/// The ledger's JSON, if written.
pub fn ledger_json(path: &Path) -> Option<serde_json::Value> {
    let bytes = std::fs::read(path).ok()?;
    Some(serde_json::from_slice(&bytes).unwrap())
}

/// The entry for `slot` running image `version`.
pub fn boot(slot: Slot, version: &str) -> SlotBoot {
    SlotBoot::for_slot(
        slot,
        format!("Aperture {version}"),
        &format!("root=PARTLABEL=rootfs_{slot} ro rootdelay=3"),
    )
}

/// A fresh ESP (both slots good, A first) in a temporary folder.
pub fn fresh_esp() -> (TempDir, SystemdBoot) {
    let dir = tempfile::tempdir().unwrap();
    write_initial_esp(dir.path(), &boot(Slot::A, "1.0.0"), &boot(Slot::B, "1.0.0")).unwrap();
    put_boot_files(dir.path());
    let esp = SystemdBoot::new(dir.path().to_path_buf());
    (dir, esp)
}

/// The kernels and initrds the updater would have written to the ESP.
pub fn put_boot_files(esp_root: &Path) {
    for slot in ["a", "b"] {
        let dir = esp_root.join("aperture").join(slot);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("vmlinuz"), b"kernel").unwrap();
        std::fs::write(dir.join("initrd.img"), b"initrd").unwrap();
    }
}

/// Sorted file names in a folder.
pub fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

/// Write NVIDIA variable `name` as a device would hold it.
pub fn put_var(efivars: &Path, name: &str, value: u32) {
    let mut bytes = 7u32.to_le_bytes().to_vec();
    bytes.extend_from_slice(&value.to_le_bytes());
    std::fs::write(
        efivars.join(format!("{name}-781e084c-a330-417c-b678-38e696380cb9")),
        bytes,
    )
    .unwrap();
}

/// Read NVIDIA variable `name` (value part) from a folder.
pub fn get_var(efivars: &Path, name: &str) -> Option<u32> {
    let bytes =
        std::fs::read(efivars.join(format!("{name}-781e084c-a330-417c-b678-38e696380cb9"))).ok()?;
    assert_eq!(bytes.len(), 8, "{name}: attributes + u32");
    assert_eq!(&bytes[..4], &[7, 0, 0, 0], "{name}: attributes NV|BS|RT");
    Some(u32::from_le_bytes(bytes[4..8].try_into().unwrap()))
}

/// A flashed Jetson: both slots normal, retry count 3, A next; no ledger yet (`ledger.json`).
pub fn fresh_tegra() -> (TempDir, Tegra) {
    let dir = tempfile::tempdir().unwrap();
    let efivars = dir.path().join("efivars");
    std::fs::create_dir(&efivars).unwrap();
    for (name, value) in [
        ("RootfsStatusSlotA", 0),
        ("RootfsStatusSlotB", 0),
        ("RootfsRetryCountMax", 3),
        ("BootChainFwNext", 0),
    ] {
        put_var(&efivars, name, value);
    }
    let tegra = tegra_at(&efivars, &dir.path().join("ledger.json"));
    (dir, tegra)
}

/// Copy a folder tree (to run several crash scenarios from one starting point).
pub fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let target = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_tree(&e.path(), &target);
        } else {
            std::fs::copy(e.path(), target).unwrap();
        }
    }
}
