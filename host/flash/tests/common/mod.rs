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
        board: "qemu-x86_64".into(),
        version: "1.0.0".parse().unwrap(),
        security_version: 1,
        build: BuildInfo {
            source_date_epoch: 1_700_000_000,
            recipe_sha256: Sha256Hex::digest(b"recipe"),
            ostree_commit: None,
            ostree_ref: None,
        },
        boot: None,
        artifacts: vec![
            artifact("disk.img", Role::Disk),
            artifact("disk.img.bmap", Role::Bmap),
            artifact("disk.img.zst", Role::DiskZst),
        ],
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
