//! First and later boots of `aperture-storage` on a file-backed disk with the fake LUKS and
//! mount seams: formatting, growth, sealing, power cuts in the middle of the first boot, the
//! reset guard, and status.

use std::fs::OpenOptions;
use std::path::{Path, PathBuf};

use aperture_gpt::{write_gpt, Guid, Layout, PartitionSpec};
use aperture_storage::crypt::LABEL_FORMATTING;
use aperture_storage::{
    luks, Access, Crypt, Disk, FakeCrypt, FakeMounts, FileDisk, Key, KeySource, KeySourceKind,
    Paths, Storage, StorageError, UnsafeEspKeyFile, Volume,
};

const MIB: u64 = 1 << 20;

/// esp, config (1 MiB), data (2 MiB) on an image later enlarged to `disk` bytes.
fn disk_image(dir: &Path, disk: u64) -> PathBuf {
    let path = dir.join("disk.img");
    let ns = "storage-test";
    let layout = Layout::new(
        Guid::derive(ns, "disk"),
        vec![
            PartitionSpec::new("esp", Guid::EFI_SYSTEM, Guid::derive(ns, "esp"), MIB),
            PartitionSpec::new("config", Guid::LINUX_LUKS, Guid::derive(ns, "c"), MIB),
            PartitionSpec::new("data", Guid::LINUX_LUKS, Guid::derive(ns, "d"), 2 * MIB),
        ],
    );
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

struct Boot {
    paths: Paths,
    disk: FileDisk,
    crypt: FakeCrypt,
    keys: UnsafeEspKeyFile,
    mounts: FakeMounts,
}

impl Boot {
    /// A power-on: fresh (empty) mappings and mounts, same disk and ESP.
    fn new(root: &Path, image: &Path) -> Boot {
        let paths = Paths::rooted(root);
        Boot {
            crypt: FakeCrypt::new(paths.mapper_dir.clone()),
            keys: UnsafeEspKeyFile::new(paths.key_dir.clone()),
            mounts: FakeMounts::new(),
            disk: FileDisk::new(image),
            paths,
        }
    }

    fn storage(&self) -> Storage<'_> {
        Storage {
            paths: &self.paths,
            disk: &self.disk,
            crypt: &self.crypt,
            keys: &self.keys,
            mounts: &self.mounts,
        }
    }
}

#[test]
fn first_boot_formats_grows_and_seals_then_later_boots_unlock() {
    let dir = tempfile::tempdir().unwrap();
    let image = disk_image(dir.path(), 32 * MIB);
    let boot = Boot::new(dir.path(), &image);
    let done = boot.storage().setup().unwrap();
    assert_eq!(done.len(), 2);
    assert!(done.iter().all(|v| v.formatted && v.made_filesystem));
    assert_eq!(done[0].grown_to, None, "config is not grown");
    assert_eq!(done[1].grown_to, Some(28 * MIB), "data fills the disk");
    assert_eq!(done[1].mounted, dir.path().join("data"));
    assert!(dir.path().join("data/var/upper").is_dir());
    assert!(dir.path().join("data/var/work").is_dir());
    assert_eq!(boot.mounts.mkfs_calls(), 2);
    for v in Volume::ALL {
        let part = boot.disk.open(v.label(), Access::Shared).unwrap();
        assert!(luks::is_luks(part.as_ref()).unwrap());
        assert_eq!(
            boot.crypt.label(part.as_ref()).unwrap().as_deref(),
            Some(v.label())
        );
        assert!(boot.keys.path(v.label()).exists());
    }
    let config_key = boot.keys.unseal("config").unwrap();
    let data_key = boot.keys.unseal("data").unwrap();
    assert_ne!(config_key.as_bytes(), data_key.as_bytes());

    // Running setup again in the same boot changes nothing.
    let again = boot.storage().setup().unwrap();
    assert!(again.iter().all(|v| !v.formatted && !v.made_filesystem));

    // Next boot: unlock with the sealed key, no format, no mkfs, no growth.
    let next = Boot::new(dir.path(), &image);
    for v in Volume::ALL {
        let mapped = next.paths.mapper_dir.join(v.mapper_name());
        next.mounts.add_filesystem(&mapped);
    }
    let done = next.storage().setup().unwrap();
    assert!(done
        .iter()
        .all(|v| !v.formatted && !v.made_filesystem && v.grown_to.is_none()));
    assert_eq!(next.mounts.mkfs_calls(), 0);
    assert_eq!(
        next.keys.unseal("data").unwrap().as_bytes(),
        data_key.as_bytes()
    );
    let status = next.storage().status().unwrap();
    assert_eq!(status.key_source, KeySourceKind::UnsafeEspFile);
    assert!(status
        .volumes
        .iter()
        .all(|v| v.luks && v.mapped.is_some() && v.mounted.is_some()));
    let text = status.to_string();
    assert!(text.contains("NOT protected"), "{text}");
    let json = serde_json::to_value(&status).unwrap();
    assert_eq!(json["volumes"][1]["volume"], "data");
    assert_eq!(json["key_source"], "unsafe-esp-file");
}

#[test]
fn power_cut_after_format_before_mkfs_is_finished_next_boot() {
    let dir = tempfile::tempdir().unwrap();
    let image = disk_image(dir.path(), 16 * MIB);
    // What the first boot did before the power cut: key sealed, header written, no mkfs.
    let boot = Boot::new(dir.path(), &image);
    let key = Key::random().unwrap();
    boot.keys.seal("data", &key).unwrap();
    let part = boot.disk.open("data", Access::Shared).unwrap();
    boot.crypt
        .format(part.as_ref(), &key, LABEL_FORMATTING)
        .unwrap();
    drop(boot);

    let next = Boot::new(dir.path(), &image);
    let done = next.storage().setup().unwrap();
    let data = &done[1];
    assert!(!data.formatted, "the header and its key are kept");
    assert!(data.made_filesystem, "the unfinished mkfs is done now");
    assert_eq!(next.keys.unseal("data").unwrap().as_bytes(), key.as_bytes());
    let part = next.disk.open("data", Access::Shared).unwrap();
    assert_eq!(
        next.crypt.label(part.as_ref()).unwrap().as_deref(),
        Some("data")
    );
}

#[test]
fn power_cut_after_seal_before_format_formats_with_a_new_key() {
    let dir = tempfile::tempdir().unwrap();
    let image = disk_image(dir.path(), 16 * MIB);
    let boot = Boot::new(dir.path(), &image);
    let stale = Key::random().unwrap();
    boot.keys.seal("config", &stale).unwrap();
    let done = boot.storage().setup().unwrap();
    assert!(done[0].formatted);
    assert_ne!(
        boot.keys.unseal("config").unwrap().as_bytes(),
        stale.as_bytes()
    );
}

#[test]
fn a_missing_key_is_an_error_that_names_the_fix() {
    let dir = tempfile::tempdir().unwrap();
    let image = disk_image(dir.path(), 16 * MIB);
    Boot::new(dir.path(), &image).storage().setup().unwrap();
    let next = Boot::new(dir.path(), &image);
    next.keys.forget("config").unwrap();
    let err = next.storage().setup().unwrap_err();
    assert!(matches!(err, StorageError::KeyMissing { .. }), "{err}");
    assert!(
        err.to_string().contains("aperture-reset --level 3"),
        "{err}"
    );
}

#[test]
fn nothing_is_unlocked_while_a_reset_wipe_is_pending() {
    let dir = tempfile::tempdir().unwrap();
    let image = disk_image(dir.path(), 16 * MIB);
    let boot = Boot::new(dir.path(), &image);
    std::fs::create_dir_all(boot.paths.reset_journal.parent().unwrap()).unwrap();
    std::fs::write(
        &boot.paths.reset_journal,
        br#"{"wipe_pending":true,"other":1}"#,
    )
    .unwrap();
    let err = boot.storage().setup().unwrap_err();
    assert!(matches!(err, StorageError::ResetPending { .. }), "{err}");
    assert!(boot.storage().status().unwrap().wipe_pending);
    let part = boot.disk.open("data", Access::Shared).unwrap();
    assert!(
        !luks::is_luks(part.as_ref()).unwrap(),
        "nothing was formatted"
    );
    std::fs::write(&boot.paths.reset_journal, b"not json").unwrap();
    assert!(
        boot.storage().setup().is_err(),
        "an unreadable journal counts as pending"
    );
    std::fs::write(&boot.paths.reset_journal, br#"{"wipe_pending":false}"#).unwrap();
    boot.storage().setup().unwrap();
}
