//! Tiny synthetic build folders for the flasher's tests: a 24 MiB sparse disk image with a
//! real GPT (aperture-gpt) and data in every partition, its bmap, its zstd stream, and a
//! manifest signed with snakeoil keys (aperture-trust), laid out like an image build's output.

#![allow(dead_code)]

use std::fs::{self, File};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use aperture_flash::bmap::{Bmap, DEFAULT_BLOCK_SIZE};
use aperture_gpt::{write_gpt, Guid, Layout, PartitionSpec};
use aperture_trust::keys::{KeyringEntry, SignedKeyring, SigningKeyPair};
use aperture_trust::manifest::{Artifact, ArtifactName, BuildInfo, Manifest, Role, Sha256Hex};
use aperture_trust::signing::sign_manifest;

pub const MIB: u64 = 1 << 20;
pub const IMAGE_SIZE: u64 = 24 * MIB;
/// Any time before the snakeoil release key expires.
pub const NOW: u64 = 1_800_000_000;

/// The snakeoil root key the folders are signed for.
pub fn snakeoil_root() -> SigningKeyPair {
    SigningKeyPair::from_secret_bytes(&[0x51; 32])
}

fn snakeoil_release() -> SigningKeyPair {
    SigningKeyPair::from_secret_bytes(&[0x52; 32])
}

/// Bytes of data block `b`: never all zero, different per block.
pub fn block_bytes(b: u64) -> Vec<u8> {
    (0..4096u64)
        .map(|j| ((b * 131 + j * 7) % 251 + 1) as u8)
        .collect()
}

/// Writes the disk image: GPT (esp 4 MiB, rootfs_a/b 6 MiB, data rest), and runs of data
/// blocks in each partition, some at partition ends, with holes between.
pub fn make_disk(path: &Path) {
    let ns = "test:flash";
    let layout = Layout::new(
        Guid::derive(ns, "disk"),
        vec![
            PartitionSpec::new("esp", Guid::EFI_SYSTEM, Guid::derive(ns, "esp"), 4 * MIB),
            PartitionSpec::new(
                "rootfs_a",
                Guid::LINUX_FILESYSTEM,
                Guid::derive(ns, "a"),
                6 * MIB,
            ),
            PartitionSpec::new(
                "rootfs_b",
                Guid::LINUX_FILESYSTEM,
                Guid::derive(ns, "b"),
                6 * MIB,
            ),
            PartitionSpec::new("data", Guid::LINUX_FILESYSTEM, Guid::derive(ns, "data"), 0),
        ],
    );
    let mut file = File::create(path).unwrap();
    file.set_len(IMAGE_SIZE).unwrap();
    write_gpt(&mut file, IMAGE_SIZE, &layout).unwrap();
    // Blocks (4 KiB) with data: one run straddling the end of the first MiB (the held-back
    // partition-table region), one across the esp/rootfs_a boundary, a 5 MiB run, and one in
    // the last MiB beside the backup GPT (the other held-back region).
    let runs: &[(u64, u64)] = &[
        (250, 300),
        (1279, 1282),
        (1500, 2800),
        (3000, 3001),
        (6000, 6010),
    ];
    for &(first, last) in runs {
        for b in first..=last {
            file.write_all_at(&block_bytes(b), b * 4096).unwrap();
        }
    }
    file.sync_all().unwrap();
}

/// Which bmap the folder carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BmapKind {
    /// Ours: `Bmap::from_sparse_file` (format 2.0, sha256).
    Ours,
    /// Format 1.0, without any checksum (the writer then checks its own hashes).
    NoChecksums,
    /// Written by `bmaptool create` (the caller checks that it is installed).
    Bmaptool,
}

/// A build folder in `dir`: disk.img, disk.img.bmap, disk.img.zst, manifest.json,
/// manifest.sig and root.pub.
pub fn make_build_folder(dir: &Path, kind: BmapKind) -> PathBuf {
    fs::create_dir_all(dir).unwrap();
    let disk = dir.join("disk.img");
    make_disk(&disk);
    let bmap_text = match kind {
        BmapKind::Ours => Bmap::from_sparse_file(&disk, DEFAULT_BLOCK_SIZE)
            .unwrap()
            .to_xml(),
        BmapKind::NoChecksums => {
            let bmap = Bmap::from_sparse_file(&disk, DEFAULT_BLOCK_SIZE).unwrap();
            let mut xml = format!(
                "<?xml version=\"1.0\" ?>\n<bmap version=\"1.0\">\n    <ImageSize> {} </ImageSize>\n    \
                 <BlockSize> {} </BlockSize>\n    <BlocksCount> {} </BlocksCount>\n    <BlockMap>\n",
                bmap.image_size, bmap.block_size, bmap.blocks_count
            );
            for r in &bmap.ranges {
                xml.push_str(&format!(
                    "        <Range> {}-{} </Range>\n",
                    r.first, r.last
                ));
            }
            xml.push_str(&format!(
                "    </BlockMap>\n    <MappedBlocksCount> {} </MappedBlocksCount>\n</bmap>\n",
                bmap.mapped_blocks_count
            ));
            xml
        }
        BmapKind::Bmaptool => {
            let out = std::process::Command::new("bmaptool")
                .arg("create")
                .arg(&disk)
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
            String::from_utf8(out.stdout).unwrap()
        }
    };
    fs::write(dir.join("disk.img.bmap"), &bmap_text).unwrap();
    let zst = dir.join("disk.img.zst");
    zstd::stream::copy_encode(File::open(&disk).unwrap(), File::create(&zst).unwrap(), 3).unwrap();
    sign_folder(dir);
    dir.to_path_buf()
}

/// (Re)writes manifest.json, manifest.sig and root.pub for the folder's current files.
pub fn sign_folder(dir: &Path) {
    sign_folder_as(dir, "qemu-x86_64", &[]);
}

/// (Re)writes manifest.json, manifest.sig and root.pub for a build for `board`, signing the
/// disk files and `extra` (name, role).
pub fn sign_folder_as(dir: &Path, board: &str, extra: &[(&str, Role)]) {
    let artifact = |name: &str, role: Role| {
        let bytes = fs::read(dir.join(name)).unwrap();
        Artifact {
            name: ArtifactName::new(name).unwrap(),
            role,
            size: bytes.len() as u64,
            sha256: Sha256Hex::digest(&bytes),
            verity: None,
            payload: None,
        }
    };
    let manifest = Manifest {
        format: 1,
        product: "aperture-test".into(),
        board: board.into(),
        version: "1.0.0".parse().unwrap(),
        security_version: 1,
        build: BuildInfo {
            source_date_epoch: 1_700_000_000,
            recipe_sha256: Sha256Hex::digest(b"recipe"),
            ostree_commit: None,
            ostree_ref: None,
        },
        boot: None,
        artifacts: [
            ("disk.img", Role::Disk),
            ("disk.img.bmap", Role::Bmap),
            ("disk.img.zst", Role::DiskZst),
        ]
        .iter()
        .chain(extra)
        // A build without a compressed image (`[outputs] compressed_disk = false`) lists none.
        .filter(|(name, _)| dir.join(name).exists())
        .map(|&(name, role)| artifact(name, role))
        .collect(),
    };
    let root = snakeoil_root();
    let release = snakeoil_release();
    let keyring = SignedKeyring::create(
        &root,
        vec![KeyringEntry::new(
            release.public(),
            "release-snakeoil",
            NOW + 1_000_000,
        )],
    )
    .unwrap();
    let (manifest_json, sig_json) = sign_manifest(&manifest, &release, &keyring).unwrap();
    fs::write(dir.join("manifest.json"), manifest_json).unwrap();
    fs::write(dir.join("manifest.sig"), sig_json).unwrap();
    root.public().save(&dir.join("root.pub")).unwrap();
}

/// Flips one byte of a file.
pub fn flip_byte(path: &Path, offset: u64) {
    let file = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .unwrap();
    let mut b = [0u8; 1];
    file.read_exact_at(&mut b, offset).unwrap();
    b[0] ^= 0x01;
    file.write_all_at(&b, offset).unwrap();
}

/// The first `len` bytes of a file.
pub fn head(path: &Path, len: u64) -> Vec<u8> {
    let file = File::open(path).unwrap();
    let mut buf = vec![0u8; len as usize];
    file.read_exact_at(&mut buf, 0).unwrap();
    buf
}

/// The synthetic BSP (host/image/fixtures/synthetic-bsp), whose NVIDIA flashing tools are
/// fakes.
pub fn synthetic_bsp() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../image/fixtures/synthetic-bsp/Linux_for_Tegra")
}

/// A copy of the synthetic BSP's `Linux_for_Tegra` in `dest` (its fake tools write into the
/// tree, as NVIDIA's write into a real one). Returns the copy.
pub fn copy_synthetic_bsp(dest: &Path) -> PathBuf {
    let to = dest.join("Linux_for_Tegra");
    copy_tree(&synthetic_bsp(), &to);
    to
}

fn copy_tree(from: &Path, to: &Path) {
    fs::create_dir_all(to).unwrap();
    for entry in fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_tree(&entry.path(), &target);
        } else {
            // fs::copy keeps the mode: the fake tools stay executable.
            fs::copy(entry.path(), &target).unwrap();
        }
    }
}

/// The QSPI partitions of the Jetson test layout and the firmware each holds, in order.
pub const QSPI_PARTITIONS: &[(&str, Option<&str>)] = &[
    ("A_mb1", Some("mb1_t234_prod.bin")),
    ("A_MB1_BCT", None),
    ("A_mb2", Some("mb2_t234.bin")),
    ("A_cpu-bootloader", Some("uefi_jetson.bin")),
    ("B_mb1", Some("mb1_t234_prod.bin")),
];

/// The firmware files of the Jetson test layout, each once.
pub const FIRMWARE: &[&str] = &["mb1_t234_prod.bin", "mb2_t234.bin", "uefi_jetson.bin"];

/// A Jetson AGX Orin build folder in `dir`, made with the BSP tree `l4t`: the disk files,
/// the firmware copied from the tree, a flash_layout.xml (a QSPI device naming them, and the
/// eMMC), all signed; and a build-report.json whose `outputs.bsp` records `l4t`, as the image
/// build's does.
pub fn make_jetson_folder(dir: &Path, l4t: &Path) -> PathBuf {
    make_build_folder(dir, BmapKind::Ours);
    for f in FIRMWARE {
        fs::copy(l4t.join("bootloader").join(f), dir.join(f)).unwrap();
    }
    let mut xml = String::from(
        "<?xml version=\"1.0\"?>\n<!-- test layout -->\n<partition_layout version=\"01.00.0000\">\n    \
         <device type=\"spi\" instance=\"0\" sector_size=\"512\" num_sectors=\"131072\">\n",
    );
    for (name, file) in QSPI_PARTITIONS {
        xml.push_str(&format!(
            "        <partition name=\"{name}\" type=\"data\">\n            <size> 65536 </size>\n"
        ));
        if let Some(f) = file {
            xml.push_str(&format!("            <filename> {f} </filename>\n"));
        }
        xml.push_str("        </partition>\n");
    }
    xml.push_str(
        "    </device>\n    <device type=\"sdmmc_user\" instance=\"3\" sector_size=\"512\" \
         num_sectors=\"49152\">\n        <partition name=\"APP\" id=\"1\" type=\"data\">\n            \
         <size> 6291456 </size>\n            <filename> rootfs.img </filename>\n        \
         </partition>\n    </device>\n</partition_layout>\n",
    );
    fs::write(dir.join("flash_layout.xml"), xml).unwrap();
    let mut extra: Vec<(&str, Role)> = FIRMWARE.iter().map(|f| (*f, Role::Firmware)).collect();
    extra.push(("flash_layout.xml", Role::Other));
    sign_folder_as(dir, "jetson-orin-agx", &extra);
    let report = serde_json::json!({
        "name": "aperture-test-jetson-orin-agx-1.0.0",
        "paths": {"out": dir, "repo": "/nowhere/repo", "cache": "/nowhere/cache"},
        "outputs": {"bsp": {"tree": l4t, "given": l4t, "release": null, "sha256": null}},
        "steps": []
    });
    fs::write(dir.join("build-report.json"), report.to_string()).unwrap();
    dir.to_path_buf()
}
