//! The twin's variable store seen as efivarfs: chosen variables exported into a folder laid out
//! as Linux's efivarfs (file `Name-guid`, content = 4-byte little-endian attributes, then the
//! value), so the Tegra backend (`aperture_slots::Tegra`) and its firmware simulation act on
//! them exactly as they do on a device; then every change they made is imported back into the
//! store: a changed or new file becomes a `SetVariable`, a removed file a deletion.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use aperture_gpt::Guid;

use super::varstore::{VarStore, VarStoreError};
use super::{io, TwinError};

/// One change imported into the store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// Set to a value (attributes, then data, as efivarfs holds it).
    Set {
        /// `Name-guid`.
        file: String,
        /// The value.
        data: Vec<u8>,
    },
    /// Deleted.
    Deleted {
        /// `Name-guid`.
        file: String,
    },
}

/// A folder of exported variables and what each file held when exported.
#[derive(Debug)]
pub struct Exported {
    dir: PathBuf,
    before: BTreeMap<String, Vec<u8>>,
    guids: Vec<Guid>,
}

/// efivarfs's file name of a variable.
pub fn file_name(name: &str, guid: Guid) -> String {
    format!("{name}-{guid}")
}

/// Split `Name-guid` into its parts; `None` when the name does not end in a GUID.
fn split(file: &str) -> Option<(&str, Guid)> {
    if file.len() < 38 || file.as_bytes()[file.len() - 37] != b'-' {
        return None;
    }
    let (name, guid) = (&file[..file.len() - 37], &file[file.len() - 36..]);
    Some((name, guid.parse().ok()?))
}

/// Write every live variable of `guids` from `store` into `dir` (emptied first).
pub fn export(store: &VarStore, dir: &Path, guids: &[Guid]) -> Result<Exported, TwinError> {
    let _ = std::fs::remove_dir_all(dir);
    std::fs::create_dir_all(dir).map_err(io("creating", dir))?;
    let mut before = BTreeMap::new();
    for v in store.variables() {
        if !guids.contains(&v.guid) {
            continue;
        }
        let file = file_name(&v.name, v.guid);
        let mut content = v.attributes.to_le_bytes().to_vec();
        content.extend_from_slice(&v.data);
        let path = dir.join(&file);
        std::fs::write(&path, &content).map_err(io("writing", &path))?;
        before.insert(file, content);
    }
    Ok(Exported {
        dir: dir.to_path_buf(),
        before,
        guids: guids.to_vec(),
    })
}

impl Exported {
    /// The folder.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// What the folder holds now that differs from what was exported.
    pub fn changes(&self) -> Result<Vec<Change>, TwinError> {
        let mut now = BTreeMap::new();
        for entry in std::fs::read_dir(&self.dir).map_err(io("reading", &self.dir))? {
            let entry = entry.map_err(io("reading", &self.dir))?;
            let file = entry.file_name().to_string_lossy().into_owned();
            match split(&file) {
                Some((_, guid)) if self.guids.contains(&guid) => {}
                // Anything else (a temporary file, another vendor's variable) is not ours.
                _ => continue,
            }
            let path = entry.path();
            now.insert(file, std::fs::read(&path).map_err(io("reading", &path))?);
        }
        let mut changes = Vec::new();
        for (file, data) in &now {
            if self.before.get(file) != Some(data) {
                changes.push(Change::Set {
                    file: file.clone(),
                    data: data.clone(),
                });
            }
        }
        for file in self.before.keys() {
            if !now.contains_key(file) {
                changes.push(Change::Deleted { file: file.clone() });
            }
        }
        Ok(changes)
    }

    /// Apply [`Exported::changes`] to `store`; returns them.
    pub fn import(&self, store: &mut VarStore) -> Result<Vec<Change>, TwinError> {
        let changes = self.changes()?;
        for c in &changes {
            match c {
                Change::Set { file, data } => {
                    let (name, guid) = split(file).ok_or_else(|| bad(file, "no GUID"))?;
                    if data.len() < 4 {
                        return Err(bad(file, "shorter than its 4 bytes of attributes"));
                    }
                    let attributes = u32::from_le_bytes([data[0], data[1], data[2], data[3]]);
                    store.set(name, guid, attributes, &data[4..])?;
                }
                Change::Deleted { file } => {
                    let (name, guid) = split(file).ok_or_else(|| bad(file, "no GUID"))?;
                    store.delete(name, guid)?;
                }
            }
        }
        Ok(changes)
    }
}

fn bad(file: &str, why: &str) -> TwinError {
    TwinError::Store(VarStoreError::Corrupt {
        offset: 0,
        reason: format!("efivarfs file {file}: {why}"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const NVIDIA: Guid = Guid::from_u128(0x781e084c_a330_417c_b678_38e696380cb9);
    const GLOBAL: Guid = Guid::from_u128(0x8be4df61_93ca_11d2_aa0d_00e098032b8c);
    const OTHER: Guid = Guid::from_u128(0x04b37fe8_f6ae_480b_bdd5_37d98c5e89aa);

    #[test]
    fn export_then_import_carries_sets_new_files_and_deletions() {
        let mut s = VarStore::format(vec![0; 0xc0000]).unwrap();
        s.set("BootChainFwNext", NVIDIA, 7, &0u32.to_le_bytes())
            .unwrap();
        s.set("RootfsStatusSlotB", NVIDIA, 7, &0xffu32.to_le_bytes())
            .unwrap();
        s.set("OsIndications", GLOBAL, 7, &4u64.to_le_bytes())
            .unwrap();
        s.set("VarErrorFlag", OTHER, 7, &[0xff]).unwrap();
        let d = tempfile::tempdir().unwrap();
        let dir = d.path().join("efivars");
        let ex = export(&s, &dir, &[NVIDIA, GLOBAL]).unwrap();
        let next = dir.join(file_name("BootChainFwNext", NVIDIA));
        assert!(next.ends_with("BootChainFwNext-781e084c-a330-417c-b678-38e696380cb9"));
        assert_eq!(std::fs::read(&next).unwrap(), [7, 0, 0, 0, 0, 0, 0, 0]);
        assert!(
            !dir.join(file_name("VarErrorFlag", OTHER)).exists(),
            "only the GUIDs asked for"
        );
        assert!(ex.changes().unwrap().is_empty());

        std::fs::write(&next, [7, 0, 0, 0, 1, 0, 0, 0]).unwrap();
        std::fs::remove_file(dir.join(file_name("RootfsStatusSlotB", NVIDIA))).unwrap();
        std::fs::write(
            dir.join(file_name("RootfsRetryCountMax", NVIDIA)),
            [7, 0, 0, 0, 3, 0, 0, 0],
        )
        .unwrap();
        std::fs::write(dir.join("stray.tmp"), b"x").unwrap();
        let changes = ex.import(&mut s).unwrap();
        assert_eq!(changes.len(), 3, "{changes:?}");
        assert_eq!(
            s.get("BootChainFwNext", NVIDIA).unwrap().data,
            1u32.to_le_bytes()
        );
        assert!(s.get("RootfsStatusSlotB", NVIDIA).is_none());
        assert_eq!(s.get("RootfsRetryCountMax", NVIDIA).unwrap().attributes, 7);
        assert_eq!(s.get("VarErrorFlag", OTHER).unwrap().data, [0xff]);
        assert_eq!(
            s.get("OsIndications", GLOBAL).unwrap().data,
            4u64.to_le_bytes()
        );
    }

    #[test]
    fn names_split_at_the_guid() {
        assert_eq!(
            split("RootfsStatusSlotA-781e084c-a330-417c-b678-38e696380cb9"),
            Some(("RootfsStatusSlotA", NVIDIA))
        );
        assert_eq!(split("a-b"), None);
        assert_eq!(split("Name-781e084c-a330-417c-b678-38e696380cbX"), None);
    }
}
