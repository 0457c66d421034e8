//! Signed snakeoil releases for the reset rig: a rootfs (an erofs stand-in with a real verity
//! tree), a kernel and an initrd, and on Jetson boards a device tree; the manifest signed with
//! the snakeoil release key (expiring at [`KEY_NOT_AFTER`]) and the update bundle.

use std::fs::OpenOptions;
use std::io::Write;

use aperture_appliance::Board;
use aperture_trust::bundle::{compress_payload, write_bundle, PayloadSource};
use aperture_trust::keys::{KeyringEntry, SignedKeyring, SigningKeyPair};
use aperture_trust::manifest::{
    Artifact, ArtifactName, BootInfo, BuildInfo, Manifest, Role, Sha256Hex,
};
use aperture_trust::signing::sign_manifest;
use aperture_trust::verity::append_hash_tree;

pub const NOW: u64 = 1_800_000_000;
/// The snakeoil release key's expiry (about four months after [`NOW`]).
pub const KEY_NOT_AFTER: u64 = NOW + 10_000_000;
pub const BOARD: &str = "qemu-x86_64";

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

/// The installed release (2.0.0) and the factory release (1.0.0) of the qemu board, built once
/// per test binary.
pub fn releases() -> &'static (Release, Release) {
    static RELEASES: std::sync::OnceLock<(Release, Release)> = std::sync::OnceLock::new();
    RELEASES.get_or_init(|| releases_for(Board::QemuX86_64))
}

/// The installed release (2.0.0) and the factory release (1.0.0) of `board`.
pub fn releases_for(board: Board) -> (Release, Release) {
    (
        release("2.0.0", 7, board.name()),
        release("1.0.0", 100, board.name()),
    )
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

/// A signed release: rootfs (erofs stand-in with a verity tree), kernel, initrd, and on
/// Jetson boards a device tree.
#[derive(Clone)]
pub struct Release {
    pub manifest: Manifest,
    pub manifest_json: Vec<u8>,
    pub sig_json: Vec<u8>,
    pub bundle: Vec<u8>,
    pub rootfs: Vec<u8>,
    pub kernel: Vec<u8>,
    pub initrd: Vec<u8>,
    /// qemu boards: each slot's UKI (A, B), kernel and initrd in a synthetic stub with the
    /// slot's command line ([`aperture_uefi::testpe::test_uki`]); empty on Jetson.
    pub uki: Vec<Vec<u8>>,
    /// The device tree (Jetson boards; empty on the others).
    pub dtb: Vec<u8>,
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
    let jetson = board.parse::<Board>().is_ok_and(Board::is_jetson);
    let dtb = if jetson {
        pseudo_random(5_000, seed + 3)
    } else {
        Vec::new()
    };
    let layout = board.parse::<Board>().unwrap().slot_layout();
    let uki: Vec<Vec<u8>> = if jetson {
        Vec::new()
    } else {
        aperture_appliance::Slot::ALL
            .into_iter()
            .map(|slot| {
                let cmdline = aperture_slots::cmdline::verity_cmdline(
                    "console=ttyS0 panic=10",
                    layout,
                    slot,
                    verity.root_hash.as_str(),
                    verity.hash_offset,
                );
                aperture_uefi::testpe::test_uki(&cmdline, &kernel, &initrd)
            })
            .collect()
    };
    let (uki_a, uki_b) = (
        aperture_appliance::Slot::A.uki_artifact(),
        aperture_appliance::Slot::B.uki_artifact(),
    );
    let mut parts = vec![("rootfs.img", Role::Rootfs, &rootfs)];
    if jetson {
        parts.push(("vmlinuz", Role::Kernel, &kernel));
        parts.push(("initrd.img", Role::Initrd, &initrd));
        parts.push(("kernel.dtb", Role::Dtb, &dtb));
    } else {
        parts.push((uki_a.as_str(), Role::Uki, &uki[0]));
        parts.push((uki_b.as_str(), Role::Uki, &uki[1]));
    }
    let mut artifacts = Vec::new();
    let mut zst = Vec::new();
    for (name, role, data) in parts {
        std::fs::write(tmp.path().join(name), data).unwrap();
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
        uki,
        dtb,
    }
}
