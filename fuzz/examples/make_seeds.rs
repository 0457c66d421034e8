//! Regenerates the seed corpus in `fuzz/seeds/<target>/` from our own writers and the
//! repository's test fixtures, so seeds follow format changes (a keyring field, a record
//! version): `cargo run --example make_seeds` in `fuzz/` (stable compiler, no sanitizer), then
//! commit what changed. Seeds are small files named after what they exercise; every signed one
//! is signed by the snakeoil keys of `aperture_fuzz::snakeoil`.

use std::collections::BTreeMap;
use std::fs;
use std::io::Cursor;
use std::path::Path;

use aperture_appliance::store::{mem::MemMedium, Medium, StateStore, PARTITION_BYTES};
use aperture_appliance::Area;
use aperture_flash::bmap::Bmap;
use aperture_fuzz::{encode_parts, snakeoil};
use aperture_gpt::{write_gpt, Guid, Layout, PartitionSpec};
use aperture_reset::journal::{ButtonPress, Journal, Level, ResetRecord};
use aperture_slots::systemd_boot::entry::{render_entry, EntryName};
use aperture_slots::tegra::{Tegra, VAR_FW_NEXT, VAR_RETRY_COUNT_MAX, VAR_STATUS_A, VAR_STATUS_B};
use aperture_slots::{BootControl, Slot, SlotBoot, SlotManager};
use aperture_storage::luks::{fake_luks2_image, FakeHeader, LUKS_MAGIC};
use aperture_storage::records::token_json;
use aperture_storage::{SealedKey, StorageRecord, Volume, VolumeRecord, VolumeState};
use aperture_trust::bundle::{compress_payload, write_bundle, PayloadSource};
use aperture_trust::canonical::canonicalize_json;
use aperture_trust::manifest::{
    Artifact, ArtifactName, BootInfo, BuildInfo, Manifest, Role, Sha256Hex,
};
use aperture_trust::signing::sign_manifest;

type Seeds = Vec<(&'static str, Vec<u8>)>;

fn main() {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let out = Path::new(env!("CARGO_MANIFEST_DIR")).join("seeds");
    let scratch = std::env::temp_dir().join(format!("aperture-seeds-{}", std::process::id()));
    fs::create_dir_all(&scratch).expect("scratch folder");
    let targets: Vec<(&str, Seeds)> = vec![
        ("bundle", bundles(&scratch)),
        ("manifest", manifests()),
        ("signature", signatures()),
        ("bmap", bmaps(&repo)),
        ("gpt", gpts()),
        ("flash_xml", flash_xmls(&repo)),
        ("recipe", recipes(&repo)),
        ("reset_journal", reset_records()),
        ("boot_entry", boot_entries()),
        ("efivar", efivars(&scratch)),
        ("state_store", state_stores()),
        ("luks", luks_headers()),
        ("storage_record", storage_records()),
        ("uki", ukis()),
    ];
    for (target, seeds) in targets {
        let dir = out.join(target);
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).expect("seed folder");
        for (name, bytes) in seeds {
            fs::write(dir.join(name), bytes).expect("seed written");
        }
        println!("seeds/{target}");
    }
    let _ = fs::remove_dir_all(&scratch);
}

fn artifact(name: &str, role: Role, content: &[u8]) -> Artifact {
    Artifact {
        name: ArtifactName::new(name).expect("a valid name"),
        role,
        size: content.len() as u64,
        sha256: Sha256Hex::digest(content),
        verity: None,
        payload: None,
    }
}

fn manifest(artifacts: Vec<Artifact>) -> Manifest {
    Manifest {
        format: 1,
        product: "aperture-vision".into(),
        board: "qemu-x86_64".into(),
        version: semver::Version::new(1, 2, 3),
        security_version: 2,
        build: BuildInfo {
            source_date_epoch: 1_700_000_000,
            recipe_sha256: Sha256Hex::digest(b"recipe"),
            ostree_commit: Some("0123abcd".into()),
            ostree_ref: Some("aperture-vision/qemu-x86_64/1.2.3".into()),
        },
        boot: Some(BootInfo {
            cmdline: "quiet".into(),
        }),
        artifacts,
    }
}

/// Signed manifest and signature files for `m`.
fn signed(m: &Manifest) -> (Vec<u8>, Vec<u8>) {
    sign_manifest(m, &snakeoil::release(), &snakeoil::keyring()).expect("the seed manifest signs")
}

fn bundles(scratch: &Path) -> Seeds {
    let contents: [(&str, Role, Vec<u8>); 2] = [
        ("vmlinuz", Role::Kernel, b"kernel ".repeat(40)),
        (
            "initrd.img",
            Role::Initrd,
            (0..=255u8).cycle().take(700).collect(),
        ),
    ];
    let mut artifacts = Vec::new();
    let mut encoded = Vec::new();
    for (name, role, content) in &contents {
        let (src, dst) = (scratch.join(name), scratch.join(format!("{name}.zst")));
        fs::write(&src, content).expect("scratch");
        let mut a = artifact(name, *role, content);
        a.payload = Some(compress_payload(&src, &dst, 3).expect("compresses"));
        artifacts.push(a);
        encoded.push(fs::read(&dst).expect("compressed payload"));
    }
    artifacts.push(artifact("disk.img", Role::Disk, b"not in bundles"));
    let two = manifest(artifacts);
    let none = manifest(vec![artifact("sbom.json", Role::Sbom, b"{}")]);
    let bundle = |m: &Manifest, payloads: &[Vec<u8>]| {
        let (mj, sj) = signed(m);
        let sources = m
            .payload_artifacts()
            .zip(payloads)
            .map(|(a, bytes)| PayloadSource {
                name: a.name.clone(),
                size: bytes.len() as u64,
                reader: Box::new(Cursor::new(bytes.clone())),
            });
        write_bundle(Vec::new(), &mj, &sj, sources).expect("the seed bundle writes")
    };
    let full = bundle(&two, &encoded);
    let truncated = full[..full.len() - 1536].to_vec();
    vec![
        ("two-payloads.bundle", full),
        ("no-payloads.bundle", bundle(&none, &[])),
        ("truncated-bundle", truncated),
    ]
}

fn manifests() -> Seeds {
    let mut rootfs = artifact("rootfs.img", Role::Rootfs, b"");
    rootfs.size = 8192;
    rootfs.verity = Some(
        serde_json::from_value(serde_json::json!({
            "root_hash": Sha256Hex::digest(b"root"), "salt": "00ff", "hash_offset": 4096,
            "data_blocks": 1, "data_block_size": 4096, "hash_block_size": 4096,
            "algorithm": "sha256", "uuid": "12345678-1234-1234-1234-123456789abc"
        }))
        .expect("verity parameters"),
    );
    let m = manifest(vec![rootfs, artifact("vmlinuz", Role::Kernel, b"k")]);
    let (pretty, _) = signed(&m);
    let canonical = canonicalize_json(&pretty).expect("canonical");
    vec![
        ("rootfs-with-verity.json", pretty),
        ("canonical.json", canonical),
        (
            "nested-array.json",
            br#"{"a":[1,-2,{"b":null,"c":true}],"z":"\u00e9"}"#.to_vec(),
        ),
    ]
}

fn signatures() -> Seeds {
    let m = manifest(vec![artifact("vmlinuz", Role::Kernel, b"kernel")]);
    let (mj, sj) = signed(&m);
    let canonical = canonicalize_json(&mj).expect("canonical");
    vec![
        ("signed-pretty", encode_parts(&[Some(&mj), Some(&sj)])),
        (
            "signed-canonical",
            encode_parts(&[Some(&canonical), Some(&sj)]),
        ),
    ]
}

fn bmaps(repo: &Path) -> Seeds {
    let dir = repo.join("host/flash/fixtures");
    let mut seeds: Seeds = [
        "bmaptool-3.6-create.bmap",
        "v1.0-no-checksums.bmap",
        "v1.2-sha1-ranges.bmap",
        "v1.3-sha1.bmap",
    ]
    .into_iter()
    .map(|name| (name, fs::read(dir.join(name)).expect("bmap fixture")))
    .collect();
    let boundary = "image-size-u64-max.bmap";
    let fixture = repo.join("host/flash/fixtures/fuzz").join(boundary);
    seeds.push((
        boundary,
        fs::read(fixture).expect("bmap regression fixture"),
    ));
    let text = String::from_utf8(seeds[3].1.clone()).expect("UTF-8");
    let rewritten = Bmap::parse(&text).expect("fixture parses").to_xml();
    seeds.push(("v1.3-rewritten-as-2.0.bmap", rewritten.into_bytes()));
    seeds
}

fn gpts() -> Seeds {
    let disk = |sector_size: u64, sectors: u64| {
        let size = sector_size * sectors;
        let ns = "fuzz-seed";
        let mut layout = Layout::new(
            Guid::derive(ns, "disk"),
            vec![
                PartitionSpec::new(
                    "esp",
                    Guid::EFI_SYSTEM,
                    Guid::derive(ns, "esp"),
                    4 * sector_size,
                ),
                PartitionSpec::new(
                    "rootfs_a",
                    Guid::LINUX_FILESYSTEM,
                    Guid::derive(ns, "a"),
                    2 * sector_size,
                ),
                PartitionSpec::new("data", Guid::LINUX_FILESYSTEM, Guid::derive(ns, "data"), 0),
            ],
        );
        layout.sector_size = sector_size;
        layout.alignment = sector_size;
        let mut image = Cursor::new(vec![0u8; size as usize]);
        write_gpt(&mut image, size, &layout).expect("the seed layout fits");
        image.into_inner()
    };
    let small = disk(512, 80);
    let mut backup_only = small.clone();
    backup_only[512..1024].fill(0);
    // The first byte is the target's flag: 1 = fix the CRCs before reading.
    let flagged = |flag: u8, image: Vec<u8>| [vec![flag], image].concat();
    vec![
        ("512-byte-sectors.img", flagged(0, small.clone())),
        ("512-byte-sectors-fix-crcs.img", flagged(1, small)),
        ("4096-byte-sectors-fix-crcs.img", flagged(1, disk(4096, 24))),
        ("primary-header-zeroed.img", flagged(0, backup_only)),
    ]
}

fn flash_xmls(repo: &Path) -> Seeds {
    let dir = repo.join("host/image/fixtures/synthetic-bsp/Linux_for_Tegra/bootloader/t186ref/cfg");
    [
        "flash_t194_sdmmc_rootfs_ab.xml",
        "flash_t234_qspi_sdmmc_rootfs_ab.xml",
    ]
    .into_iter()
    .map(|name| (name, fs::read(dir.join(name)).expect("layout fixture")))
    .collect()
}

fn recipes(repo: &Path) -> Seeds {
    ["qemu-x86_64.toml", "jetson-orin-agx.toml", "common.toml"]
        .into_iter()
        .map(|name| {
            (
                name,
                fs::read(repo.join("recipes").join(name)).expect("recipe"),
            )
        })
        .collect()
}

fn reset_records() -> Seeds {
    let mut three = Journal::new(Level::Three, Slot::A, true);
    three.next = 5;
    three.header_bytes = BTreeMap::from([(Volume::Config, 16 << 20), (Volume::Data, 16 << 20)]);
    let mut two = Journal::new(Level::Two, Slot::B, false);
    two.next = 3;
    two.factory_boot_failures = 1;
    two.failed = Some("the factory image failed its health gate".into());
    let record = |journal: Option<Journal>, button: Option<ButtonPress>| {
        let r = ResetRecord {
            wipe_pending: journal.as_ref().is_some_and(Journal::wipe_pending),
            journal,
            button,
            ..ResetRecord::default()
        };
        serde_json::to_vec(&r).expect("serializes")
    };
    let press = ButtonPress {
        level: Level::Three,
        boot_id: "5f0c6f7e-1d1b-4b1e-9a4e-2c7d0e0f9a10".into(),
    };
    vec![
        ("level3-wipe-pending.json", record(Some(three), Some(press))),
        ("level2-given-up.json", record(Some(two), None)),
    ]
}

fn boot_entries() -> Seeds {
    let boot = SlotBoot::for_slot(Slot::B, "Aperture 1.2.3", "quiet");
    let text = render_entry(Slot::B, 7, &boot);
    let name = EntryName::armed(Slot::B, 3).after_boot().file_name();
    vec![
        (
            "armed-entry",
            encode_parts(&[
                Some(name.as_bytes()),
                Some(text.as_bytes()),
                Some(b"252.4-1~rc2"),
                Some(b"slot-a.conf"),
            ]),
        ),
        (
            "counter-at-its-maximum",
            encode_parts(&[Some(b"slot-a+1-2147483647.conf"), Some(b"version 3\n")]),
        ),
        (
            "plain-entry",
            encode_parts(&[
                Some(b"SLOT-A.CONF"),
                Some(b"title x\nversion 12\n"),
                Some(b"1.0^git3"),
            ]),
        ),
    ]
}

/// Variable files and the ledger as the Tegra backend leaves them mid-update, made by it.
fn efivars(scratch: &Path) -> Seeds {
    let vars = scratch.join("efivars");
    fs::create_dir_all(&vars).expect("scratch");
    // The ledger in a device state store's `boot` area, as on a device (here in memory).
    let store =
        StateStore::new(MemMedium::zeroed(PARTITION_BYTES), "seed").expect("an empty store");
    let mut manager = SlotManager::new(Tegra::new(vars, Box::new(store)), Slot::A);
    let fresh = tegra_files(manager.backend());
    let boot = SlotBoot::for_slot(Slot::B, "Aperture 1.2.3", "quiet");
    manager.begin_install(Slot::B).expect("begin install");
    manager.arm(Slot::B, 3, &boot).expect("arm");
    let armed = tegra_files(manager.backend());
    manager.backend_mut().loader_boot().expect("simulated boot");
    let trying = tegra_files(manager.backend());
    vec![("fresh", fresh), ("armed-b", armed), ("trying-b", trying)]
}

/// The variable files and the ledger of `t`, framed as the efivar target reads them.
fn tegra_files(t: &Tegra) -> Vec<u8> {
    let files: Vec<Option<Vec<u8>>> =
        [VAR_STATUS_A, VAR_STATUS_B, VAR_RETRY_COUNT_MAX, VAR_FW_NEXT]
            .into_iter()
            .map(|v| fs::read(t.variable_path(v)).ok())
            .chain([t.ledger_store().load().expect("the ledger reads")])
            .collect();
    // Absent files can only trail: an absent variable before a present file becomes an empty
    // file (a malformed variable, an input as good as any).
    let last = files.iter().rposition(Option::is_some).map_or(0, |i| i + 1);
    let files: Vec<Option<&[u8]>> = files[..last]
        .iter()
        .map(|f| Some(f.as_deref().unwrap_or_default()))
        .collect();
    encode_parts(&files)
}

/// A store holding records in several areas, both copies of one, as our writers leave it.
fn state_stores() -> Seeds {
    let medium = MemMedium::zeroed(PARTITION_BYTES);
    let boxed: Box<dyn Medium> = Box::new(medium.clone());
    let mut store = StateStore::new(boxed, "seed").expect("opens");
    store
        .write(Area::Update, br#"{"floor":3,"committed":"a"}"#)
        .expect("write");
    store
        .write(Area::Update, br#"{"floor":4,"committed":"b"}"#)
        .expect("write");
    let record = StorageRecord {
        source: Some(aperture_storage::KeySourceKind::Tpm2),
        ..StorageRecord::default()
    };
    store.write_json(Area::Storage, &record).expect("write");
    store
        .write(Area::Reset, &reset_records()[0].1)
        .expect("write");
    let image = medium.snapshot();
    let copies: Vec<Vec<u8>> = Area::ALL
        .iter()
        .flat_map(|a| [(*a, 0), (*a, 1)])
        .map(|(area, copy)| {
            let at = area.offset(copy) as usize;
            let header = &image[at..at + 32];
            let len = u32::from_le_bytes(header[24..28].try_into().expect("4 bytes")) as usize;
            let used = if header.iter().all(|b| *b == 0) {
                0
            } else {
                32 + len
            };
            image[at..at + used].to_vec()
        })
        .collect();
    let mut files: Vec<Option<&[u8]>> = copies.iter().map(|c| Some(c.as_slice())).collect();
    files.push(Some(br#"{"written":"by the fuzz target"}"#));
    // The first byte is the target's flag: 1 = fix the length and CRC fields first.
    let framed = encode_parts(&files);
    vec![
        ("update-storage-reset", [&[0u8][..], &framed].concat()),
        (
            "update-storage-reset-fix-crcs",
            [&[1u8][..], &framed].concat(),
        ),
    ]
}

fn sealed_tpm2() -> SealedKey {
    SealedKey::Tpm2 {
        tpm2_public: b"TPM2B_PUBLIC snakeoil".to_vec(),
        tpm2_private: b"TPM2B_PRIVATE snakeoil".to_vec(),
        noda: true,
        boot: None,
    }
}

/// A UKI with a signed disk-key policy (a synthetic stub; the signature is not checked here),
/// and the policy section alone.
fn ukis() -> Seeds {
    use aperture_uefi::{apolicy, assemble_uki, testpe, SignedPolicy};
    let mut policy = SignedPolicy::unsigned([0x11; 32], 1);
    policy.signature = vec![0x5a; 256];
    let text = policy.encode();
    let uki = assemble_uki(
        &testpe::synthetic_stub(),
        &[
            (".osrel", b"ID=aperture\n"),
            (".cmdline", b"root=PARTLABEL=rootfs_a aperture.slot=a"),
            (apolicy::SECTION, &text),
            (".linux", b"kernel"),
        ],
    )
    .expect("a UKI");
    vec![("uki-with-policy.efi", uki), ("apolicy.txt", text)]
}

fn luks_headers() -> Seeds {
    let hdr = 0x4000u64;
    let plain = fake_luks2_image(hdr, 2 * hdr + 4096, &[0xa5; 512]);
    let token: serde_json::Value =
        serde_json::from_slice(&token_json(Volume::Data, "0", &sealed_tpm2())).expect("JSON");
    let header = FakeHeader {
        hdr_size: hdr,
        data_offset: 2 * hdr + 4096,
        keyslot_len: 512,
        seqid: 7,
        uuid: "00000000-0000-4000-8000-a9e27ce00002".into(),
        label: "data".into(),
        tokens: BTreeMap::from([("0".to_string(), token)]),
    };
    let mut with_token = header.copy(false);
    with_token.extend(header.copy(true));
    let mut luks1 = vec![0u8; 4096];
    luks1[..6].copy_from_slice(&LUKS_MAGIC);
    luks1[6..8].copy_from_slice(&1u16.to_be_bytes());
    luks1[104..108].copy_from_slice(&4096u32.to_be_bytes());
    // The first byte is the target's flag: 1 = fix the checksums before probing.
    let flagged = |flag: u8, image: Vec<u8>| [vec![flag], image].concat();
    vec![
        ("luks2-fake-image", flagged(0, plain)),
        ("luks2-token-fix-checksums", flagged(1, with_token)),
        ("luks1-header", flagged(0, luks1)),
    ]
}

fn storage_records() -> Seeds {
    let record = StorageRecord {
        source: Some(aperture_storage::KeySourceKind::Tpm2),
        volumes: BTreeMap::from([(
            Volume::Data,
            VolumeRecord {
                state: VolumeState::Ready,
                uuid: "00000000-0000-4000-8000-a9e27ce00002".into(),
                sealed: sealed_tpm2(),
            },
        )]),
        ..StorageRecord::default()
    };
    let record = serde_json::to_vec(&record).expect("serializes");
    let plain = SealedKey::UnsafePlain {
        key: vec![0x42; 64],
    };
    let tpm = token_json(Volume::Data, "0", &sealed_tpm2());
    let unsafe_plain = token_json(Volume::Config, "1", &plain);
    vec![
        (
            "tpm2-record-and-token",
            encode_parts(&[Some(&record), Some(&tpm)]),
        ),
        (
            "unsafe-plain-token",
            encode_parts(&[Some(b"{\"format\":1}"), Some(&unsafe_plain)]),
        ),
    ]
}
