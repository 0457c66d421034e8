//! Tier 2, storage and reset with the real tools on loop devices: cryptsetup's LUKS2 through
//! aperture-storage's `CryptSetup`, the level 3 wipe steps as aperture-reset runs them
//! (`cryptsetup erase`, the header area zeroed, `blkdiscard` or an overwrite), then every byte
//! of the devices scanned for the canaries and for LUKS magic, and `aperture-reset --verify`
//! asked what it sees. `cryptsetup open` needs device-mapper, which this host lacks, so
//! unlocking and mounting are left to the VM tier.

use std::path::{Path, PathBuf};
use std::process::Command;

use aperture_appliance::store::{Medium, StateStore, PARTITION_BYTES};
use aperture_reset::seams::{BlkDiscard, FakeDiscard, FakeDiscardMode};
use aperture_reset::wipe::{self, ScrubMethod};
use aperture_storage::luks;
use aperture_storage::records::{token_json, StorageRecord, VolumeRecord, VolumeState};
use aperture_storage::{
    Access, Crypt, CryptSetup, FilePartition, Key, KeySource, StorageState, UnsafePlainKey, Volume,
};
use aperture_tests::{require_root, workspace};

const MIB: u64 = 1 << 20;

fn tool(name: &str) -> bool {
    aperture_tests::have_tool(name, "this test")
}

/// A loop device over a sparse file, detached on drop.
struct Loop {
    dev: PathBuf,
}

impl Loop {
    fn new(file: &Path, size: u64) -> Loop {
        std::fs::File::create(file).unwrap().set_len(size).unwrap();
        let out = Command::new("losetup")
            .args(["--find", "--show"])
            .arg(file)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "losetup: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Loop {
            dev: PathBuf::from(String::from_utf8(out.stdout).unwrap().trim()),
        }
    }

    fn write(&self, offset: u64, data: &[u8]) {
        use std::os::unix::fs::FileExt;
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(&self.dev)
            .unwrap();
        f.write_all_at(data, offset).unwrap();
        f.sync_all().unwrap();
    }

    fn read_all(&self) -> Vec<u8> {
        std::fs::read(&self.dev).unwrap()
    }
}

impl Drop for Loop {
    fn drop(&mut self) {
        let _ = Command::new("losetup").arg("-d").arg(&self.dev).status();
    }
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

/// The aperture-reset binary, built by cargo as `cargo test --workspace` builds it: with the
/// workspace's features, so tier 1's build is reused. (`cargo run -p aperture-reset` resolves
/// features for that package alone, a different build of zstd, rustls and the crates above
/// them: a minute of compiling in this suite.)
fn aperture_reset_binary() -> PathBuf {
    static BUILT: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    BUILT
        .get_or_init(|| {
            let mut cargo = Command::new(env!("CARGO"));
            // Without this test's package variables, which would make the next `cargo test`
            // rebuild ring and everything above it (see `aperture_sys::cmd::Cmd::cargo`).
            for (key, _) in std::env::vars_os() {
                if aperture_sys::cmd::is_package_env(&key) {
                    cargo.env_remove(key);
                }
            }
            let out = cargo
                .current_dir(workspace())
                .args([
                    "build",
                    "--workspace",
                    "--bin",
                    "aperture-reset",
                    "--message-format=json-render-diagnostics",
                ])
                .stderr(std::process::Stdio::inherit())
                .output()
                .unwrap();
            assert!(out.status.success(), "building aperture-reset failed");
            String::from_utf8_lossy(&out.stdout)
                .lines()
                .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
                .filter(|m| m["target"]["name"] == "aperture-reset")
                .find_map(|m| m["executable"].as_str().map(PathBuf::from))
                .expect("cargo named no aperture-reset executable")
        })
        .clone()
}

/// Runs the aperture-reset binary with `args`; (exit code, stdout).
fn aperture_reset(args: &[&str]) -> (i32, String) {
    let out = Command::new(aperture_reset_binary())
        .args(args)
        .output()
        .unwrap();
    eprintln!("{}", String::from_utf8_lossy(&out.stderr));
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

#[test]
#[ignore = "privileged tier: loop devices and cryptsetup as root (run by `cargo xtask test` as root)"]
fn level3_wipe_on_loop_devices_leaves_no_canary_and_no_luks_header() {
    if !require_root("level3_wipe_on_loop_devices_leaves_no_canary_and_no_luks_header") {
        return;
    }
    if !tool("cryptsetup") || !tool("losetup") || !tool("blkdiscard") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let config = Loop::new(&dir.path().join("config.img"), 32 * MIB);
    let data = Loop::new(&dir.path().join("data.img"), 64 * MIB);
    let canaries: [(&Loop, u64, &[u8]); 3] = [
        (&config, 20 * MIB + 17, b"CANARY-tier2-config-identity-5e1f"),
        (&data, 20 * MIB + 4096, b"CANARY-tier2-data-video-9a0b"),
        (&data, 63 * MIB, b"CANARY-tier2-data-log-end-of-disk"),
    ];
    // Plaintext in the data area, written before the volume is formatted: luksFormat keeps it.
    for (dev, offset, canary) in canaries {
        dev.write(offset, canary);
    }
    // The sealed keys as aperture-storage keeps them: a token in the header and a record in
    // the device state (here a file).
    let state_file = dir.path().join("aperture_state.img");
    std::fs::File::create(&state_file)
        .unwrap()
        .set_len(PARTITION_BYTES)
        .unwrap();
    let state = StorageState::open(&state_file).unwrap();
    let mut record = StorageRecord::default();
    let crypt = CryptSetup::new("/dev/mapper".into());
    for (volume, dev) in [(Volume::Config, &config), (Volume::Data, &data)] {
        let label = volume.label();
        let part = FilePartition::whole(&dev.dev, label, Access::Shared).unwrap();
        let key = Key::random().unwrap();
        let sealed = UnsafePlainKey.seal(label, &key).unwrap();
        crypt.format(&part, &key, label).unwrap();
        crypt
            .import_token(&part, &token_json(volume, "0", &sealed), None)
            .unwrap();
        let uuid = luks::probe(&part).unwrap().current().unwrap().uuid.clone();
        record.volumes.insert(
            volume,
            VolumeRecord {
                state: VolumeState::Ready,
                uuid,
                sealed,
            },
        );
        let dump = Command::new("cryptsetup")
            .arg("luksDump")
            .arg(&dev.dev)
            .output()
            .unwrap();
        assert!(dump.status.success(), "luksDump after our format");
        let text = String::from_utf8_lossy(&dump.stdout).into_owned();
        let dumped = text
            .lines()
            .find_map(|l| l.strip_prefix("Label:"))
            .map(str::trim);
        assert_eq!(dumped, Some(label), "{text}");
        assert!(luks::find_magic(&part).unwrap().any());
    }
    for (dev, _, canary) in canaries {
        assert!(
            contains(&dev.read_all(), canary),
            "the canary must survive luksFormat"
        );
    }

    // The level 3 wipe, step by step as the engine runs it. config is scrubbed through
    // blkdiscard (a loop device punches holes, which read back as zeros); data as on a device
    // without discard, by overwriting.
    let blkdiscard = BlkDiscard;
    let no_discard = FakeDiscard::new(FakeDiscardMode::Unsupported);
    let mut methods = Vec::new();
    let parts: Vec<(&str, FilePartition)> = [("config", &config), ("data", &data)]
        .into_iter()
        .map(|(l, d)| (l, FilePartition::whole(&d.dev, l, Access::Shared).unwrap()))
        .collect();
    let areas: Vec<u64> = parts
        .iter()
        .map(|(_, p)| wipe::header_area(p).unwrap())
        .collect();
    assert_eq!(
        areas,
        [16 * MIB, 16 * MIB],
        "cryptsetup's LUKS2 metadata + keyslots area"
    );
    for ((_, part), area) in parts.iter().zip(&areas) {
        wipe::erase_keyslots(&crypt, part).unwrap();
        assert!(luks::read_header(part)
            .unwrap()
            .unwrap()
            .keyslot_areas
            .is_empty());
        wipe::zero_header(part, *area).unwrap();
        assert!(!luks::find_magic(part).unwrap().any());
    }
    state.save(&record).unwrap();
    for volume in Volume::ALL {
        state.forget(volume).unwrap();
    }
    for (label, part) in &parts {
        let discard: &dyn aperture_reset::seams::Discard = if *label == "config" {
            &blkdiscard
        } else {
            &no_discard
        };
        methods.push(wipe::scrub(part, discard).unwrap());
    }
    assert_eq!(methods, [ScrubMethod::Discard, ScrubMethod::Overwrite]);
    drop(parts);

    for (name, dev) in [("config", &config), ("data", &data)] {
        let bytes = dev.read_all();
        for (_, _, canary) in canaries {
            assert!(!contains(&bytes, canary), "{name}: a canary survived");
        }
        assert!(
            !contains(&bytes, b"LUKS\xba\xbe"),
            "{name}: LUKS magic survived"
        );
        assert!(
            !contains(&bytes, b"SKUL\xba\xbe"),
            "{name}: secondary LUKS magic survived"
        );
        assert!(bytes.iter().all(|b| *b == 0), "{name}: not all zeros");
        let dump = Command::new("cryptsetup")
            .arg("luksDump")
            .arg(&dev.dev)
            .output()
            .unwrap();
        assert!(
            !dump.status.success(),
            "{name}: cryptsetup still finds a header"
        );
    }
    assert_eq!(state.load().unwrap(), StorageRecord::default());
    let medium: Box<dyn Medium> = Box::new(std::fs::File::open(&state_file).unwrap());
    let raw = StateStore::new(medium, "state").unwrap();
    assert!(raw
        .read(aperture_appliance::Area::Storage)
        .unwrap()
        .is_none());

    // `aperture-reset --verify` on the same devices, found by partition label.
    let root = dir.path().join("root");
    let by_label = root.join("dev/disk/by-partlabel");
    std::fs::create_dir_all(&by_label).unwrap();
    std::os::unix::fs::symlink(&config.dev, by_label.join("config")).unwrap();
    std::os::unix::fs::symlink(&data.dev, by_label.join("data")).unwrap();
    // The image's facts: which board, so which partitions hold config and data.
    let facts = aperture_appliance::BuildFacts {
        product: "aperture-vision".into(),
        version: "1.0.0".into(),
        security_version: 1,
        board: aperture_appliance::Board::QemuX86_64,
        recipe_sha256: "0".repeat(64),
        source_date_epoch: 1,
        required_services: Vec::new(),
        tpm: true,
        reset_button: None,
    };
    std::fs::create_dir_all(root.join("etc/aperture")).unwrap();
    std::fs::write(root.join("etc/aperture/build.json"), facts.to_bytes()).unwrap();
    let root_arg = root.display().to_string();
    let (code, json) = aperture_reset(&["--root", &root_arg, "--verify", "--json"]);
    assert_eq!(code, 0, "{json}");
    let report: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(report["ok"], true);
    for v in report["volumes"].as_array().unwrap() {
        assert_eq!(v["luks_magic"]["primary"], false);
        assert_eq!(v["zero_fraction"], 1.0, "{v}");
    }
    let (code, text) = aperture_reset(&["--root", &root_arg, "--verify"]);
    assert_eq!(code, 0);
    assert!(
        text.contains("config (") && text.contains("no LUKS header; 100.00% zero bytes"),
        "{text}"
    );

    // And it notices a header that survived.
    let part = FilePartition::whole(&data.dev, "data", Access::Shared).unwrap();
    crypt
        .format(&part, &Key::random().unwrap(), "data")
        .unwrap();
    let (code, text) = aperture_reset(&["--root", &root_arg, "--verify"]);
    assert_eq!(code, 2, "a surviving header fails --verify");
    assert!(text.contains("LUKS HEADER PRESENT"), "{text}");
}
