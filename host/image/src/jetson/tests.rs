//! Tier-1 tests of the Jetson board support, on the SYNTHETIC BSP of
//! `image/fixtures/synthetic-bsp` (generated placeholders named like an L4T tree, not NVIDIA
//! software) and file-backed disks: no root, no network.

use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};

use aperture_gpt::Guid;
use aperture_slots::Slot;

use super::board::{JetsonBoard, ORIN, XAVIER};
use super::bsp::Bsp;
use super::error::JetsonError;
use super::flash_xml::{self, LayoutFiles};
use super::nvidia::files;
use super::outputs::{write_disk, PartitionFiles};
use super::{bootimg, names};
use crate::recipe::{Board, Recipe};

/// NVIDIA's rootfs-device GPT of the AGX Orin with rootfs A/B, by entry number, written from
/// Jetson Linux R35.5.0 `bootloader/t186ref/cfg/flash_t234_qspi_sdmmc_rootfs_ab.xml` (`id="1"`
/// for `APP`, `id="2"` for `APP_b`, `id="3"` for `A_kernel`, the rest in file order; the
/// `RECNAME`/`RECDTB-NAME` placeholders as `flash.sh` resolves them) and the Jetson Linux
/// Developer Guide R36, "Root File System Redundancy". Entries 17-19 are ours, after NVIDIA's.
const ORIN_EXPECTED: &[(u32, &str)] = &[
    (1, "APP"),
    (2, "APP_b"),
    (3, "A_kernel"),
    (4, "A_kernel-dtb"),
    (5, "A_reserved_on_user"),
    (6, "B_kernel"),
    (7, "B_kernel-dtb"),
    (8, "B_reserved_on_user"),
    (9, "recovery"),
    (10, "recovery-dtb"),
    (11, "esp"),
    (12, "recovery_alt"),
    (13, "recovery-dtb_alt"),
    (14, "esp_alt"),
    (15, "UDA"),
    (16, "reserved"),
    (17, "aperture_state"),
    (18, "factory"),
    (19, "config"),
];

/// The A/B pairs of the Orin rootfs device (same sources): prefix `A_`/`B_`, and `APP`/`APP_b`.
const ORIN_PAIRS: &[(&str, &str)] = &[
    ("APP", "APP_b"),
    ("A_kernel", "B_kernel"),
    ("A_kernel-dtb", "B_kernel-dtb"),
    ("A_reserved_on_user", "B_reserved_on_user"),
];

/// The chain-A partitions of the AGX Xavier rootfs device that have a `_b` twin, in order,
/// from Jetson Linux R35.6.1 `bootloader/t186ref/cfg/flash_t194_sdmmc_rootfs_ab.xml`.
const XAVIER_CHAIN: &[&str] = &[
    "mts-mce",
    "mts-proper",
    "cpu-bootloader",
    "bootloader-dtb",
    "secure-os",
    "eks",
    "bpmp-fw",
    "bpmp-fw-dtb",
    "xusb-fw",
    "rce-fw",
    "adsp-fw",
    "sce-fw",
    "sc7",
    "kernel",
    "kernel-dtb",
];

/// The whole Xavier rootfs device in entry (and physical) order, same source; `aperture_state`,
/// `factory` and `config` are ours.
fn xavier_expected() -> Vec<String> {
    let mut v = vec!["APP".to_string(), "APP_b".to_string()];
    v.extend(XAVIER_CHAIN.iter().map(|s| s.to_string()));
    v.push("reserved_for_chain_A_user".into());
    v.extend(XAVIER_CHAIN.iter().map(|s| format!("{s}_b")));
    v.push("reserved_for_chain_B_user".into());
    for s in [
        "recovery",
        "recovery-dtb",
        "RP1",
        "RP2",
        "RECROOTFS",
        "uefi_variables",
        "esp",
        "recovery_alt",
        "recovery-dtb_alt",
        "esp_alt",
        "UDA",
        "aperture_state",
        "factory",
        "config",
    ] {
        v.push(s.into());
    }
    v
}

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .ancestors()
        .nth(2)
        .expect("the image crate lives two levels down (host/image)")
        .to_path_buf()
}

fn synthetic_bsp() -> PathBuf {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/synthetic-bsp");
    eprintln!(
        "using the SYNTHETIC L4T BSP {} (generated placeholders, not NVIDIA software)",
        p.display()
    );
    p
}

fn recipe(board: Board) -> Recipe {
    Recipe::load(
        &workspace()
            .join("recipes")
            .join(format!("{}.toml", board.name())),
    )
    .unwrap()
}

fn read_at(path: &Path, offset: u64, len: usize) -> Vec<u8> {
    use std::io::{Seek, SeekFrom};
    let mut f = File::open(path).unwrap();
    f.seek(SeekFrom::Start(offset)).unwrap();
    let mut buf = vec![0; len];
    f.read_exact(&mut buf).unwrap();
    buf
}

/// Make the partition files the build would, from the synthetic BSP and a fake slot image.
fn partition_files(board: &'static JetsonBoard, dir: &Path) -> PartitionFiles {
    let bsp = Bsp::open(&synthetic_bsp(), board).unwrap();
    let rootfs = dir.join("rootfs.img");
    std::fs::write(&rootfs, b"SYNTHETIC ROOTFS ".repeat(4096)).unwrap();
    let initrd = dir.join("initrd.img");
    std::fs::write(&initrd, b"SYNTHETIC INITRD").unwrap();
    let boot = [dir.join(names::BOOT_A), dir.join(names::BOOT_B)];
    for (slot, b) in Slot::ALL.into_iter().zip(&boot) {
        bootimg::write(
            b,
            &bsp.kernel(),
            &initrd,
            &format!("console=ttyTCU0 aperture.slot={}", slot.letter()),
        )
        .unwrap();
    }
    let esp = dir.join("esp.img");
    std::fs::write(&esp, b"SYNTHETIC ESP").unwrap();
    let state = dir.join("state.img");
    std::fs::write(&state, vec![0u8; 4096]).unwrap();
    PartitionFiles {
        rootfs,
        boot,
        dtb: bsp.dtb(),
        esp,
        state,
        factory: None,
    }
}

fn check_disk(board: &'static JetsonBoard, expected: &[String], pairs: &[(String, String)]) {
    let r = recipe(board.board);
    let d = tempfile::tempdir().unwrap();
    let files = partition_files(board, d.path());
    let disk = d.path().join("disk.img");
    write_disk(board, &r, &files, &disk).unwrap();
    let mut f = File::open(&disk).unwrap();
    let size = aperture_gpt::disk_size_of(&mut f).unwrap();
    let gpt = aperture_gpt::read_gpt(&mut f, size).unwrap();

    // Names in NVIDIA's entry order, numbered from 1.
    let got: Vec<(u32, &str)> = gpt
        .partitions
        .iter()
        .map(|p| (p.index, p.name.as_str()))
        .collect();
    let want: Vec<(u32, &str)> = expected
        .iter()
        .enumerate()
        .map(|(i, n)| (i as u32 + 1, n.as_str()))
        .collect();
    assert_eq!(got, want, "{} partition table", board.board.name());

    // Pairs: both halves present, same size, A before B.
    for (a, b) in pairs {
        let (pa, pb) = (gpt.find(a).unwrap(), gpt.find(b).unwrap());
        assert_eq!(pa.size(), pb.size(), "{a}/{b} differ in size");
        assert!(pa.index < pb.index, "{a} must come before {b}");
    }
    // Sizes from the recipe where NVIDIA's depend on the product.
    let app = gpt.find("APP").unwrap();
    assert_eq!(app.size(), r.partitions.rootfs.bytes());
    assert_eq!(gpt.find("UDA").unwrap().size(), r.partitions.data.bytes());
    assert_eq!(gpt.find("esp").unwrap().size(), r.partitions.esp.bytes());
    assert_eq!(
        gpt.find("config").unwrap().size(),
        r.partitions.config.bytes()
    );
    // Types and derived GUIDs.
    let esp = gpt.find("esp").unwrap();
    assert_eq!(esp.type_guid, Guid::EFI_SYSTEM);
    assert_eq!(app.type_guid, Guid::MICROSOFT_BASIC_DATA);
    assert_eq!(gpt.find("config").unwrap().type_guid, Guid::LINUX_LUKS);
    assert_eq!(
        app.unique_guid,
        Guid::derive(&format!("aperture-partition:{}", r.hash()), "APP")
    );
    assert_eq!(
        gpt.disk_guid,
        Guid::derive(&format!("aperture-disk:{}", r.hash()), "disk")
    );

    // Contents: the rootfs in both slots, each slot's boot image and the device tree in its
    // kernel partitions, the ESP; NVIDIA-generated partitions left empty.
    let rootfs = std::fs::read(&files.rootfs).unwrap();
    for slot in Slot::ALL {
        let p = gpt.find(board.rootfs_partition(slot)).unwrap();
        assert_eq!(read_at(&disk, p.offset(), rootfs.len()), rootfs);
        let k = gpt.find(board.kernel_partition(slot)).unwrap();
        let h = bootimg::parse_header(&read_at(&disk, k.offset(), 2048))
            .expect("an Android boot image");
        assert!(
            h.cmdline
                .ends_with(&format!("aperture.slot={}", slot.letter())),
            "{}",
            h.cmdline
        );
        let dtb = gpt.find(board.dtb_partition(slot)).unwrap();
        assert_eq!(read_at(&disk, dtb.offset(), 4), [0xd0, 0x0d, 0xfe, 0xed]);
    }
    assert_eq!(read_at(&disk, esp.offset(), 13), b"SYNTHETIC ESP");
    let uda = gpt.find("UDA").unwrap();
    assert!(read_at(&disk, uda.offset(), 4096).iter().all(|&b| b == 0));
}

#[test]
fn orin_disk_carries_nvidia_names_pairs_and_order() {
    let expected: Vec<String> = ORIN_EXPECTED.iter().map(|(_, n)| n.to_string()).collect();
    let pairs: Vec<(String, String)> = ORIN_PAIRS
        .iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect();
    check_disk(&ORIN, &expected, &pairs);
    // The boot chain on QSPI: every A_ partition has its B_ twin, same size, A first.
    let qspi: Vec<&str> = ORIN.boot_device.parts.iter().map(|p| p.name).collect();
    let a: Vec<&str> = qspi.iter().filter_map(|n| n.strip_prefix("A_")).collect();
    let b: Vec<&str> = qspi.iter().filter_map(|n| n.strip_prefix("B_")).collect();
    assert_eq!(a, b);
    assert!(a.contains(&"mb1") && a.contains(&"cpu-bootloader") && a.contains(&"VER"));
}

#[test]
fn xavier_disk_carries_nvidia_names_pairs_and_order() {
    let mut pairs: Vec<(String, String)> = vec![("APP".into(), "APP_b".into())];
    pairs.extend(
        XAVIER_CHAIN
            .iter()
            .map(|s| (s.to_string(), format!("{s}_b"))),
    );
    check_disk(&XAVIER, &xavier_expected(), &pairs);
    assert_eq!(XAVIER.kernel_partition(Slot::B), "kernel_b");
    assert_eq!(XAVIER.dtb_partition(Slot::A), "kernel-dtb");
    let boot: Vec<&str> = XAVIER.boot_device.parts.iter().map(|p| p.name).collect();
    assert!(boot.starts_with(&["BCT", "mb1", "mb1_b"]));
}

#[test]
fn both_recipes_leave_room_for_the_nvidia_layout() {
    for board in JetsonBoard::all() {
        let r = recipe(board.board);
        let need = board.required_disk_bytes(&r);
        eprintln!(
            "{}: layout needs {} MiB of {} MiB",
            board.board.name(),
            need >> 20,
            r.partitions.disk.bytes() >> 20
        );
        assert!(need <= r.partitions.disk.bytes());
        assert!(board.layout(&r).plan(r.partitions.disk.bytes()).is_ok());
    }
}

#[test]
fn disk_too_small_names_what_it_needs() {
    let mut r = recipe(Board::JetsonOrinAgx);
    r.partitions.disk = crate::recipe::Size::new(9 << 30);
    let d = tempfile::tempdir().unwrap();
    let files = partition_files(&ORIN, d.path());
    let err = format!(
        "{:#}",
        write_disk(&ORIN, &r, &files, &d.path().join("disk.img")).unwrap_err()
    );
    assert!(
        err.contains("MiB of disk") && err.contains("partitions.disk is 9216 MiB"),
        "{err}"
    );
}

#[test]
fn synthetic_bsp_has_every_file_both_boards_need() {
    for board in JetsonBoard::all() {
        let bsp = Bsp::open(&synthetic_bsp(), board).unwrap();
        assert!(bsp.synthetic, "the fixture must say it is synthetic");
        assert!(bsp.capsule.is_some());
        assert!(bsp.release.as_deref().unwrap_or("").contains("SYNTHETIC"));
        assert_eq!(
            std::fs::read(bsp.dtb()).unwrap()[..4],
            [0xd0, 0x0d, 0xfe, 0xed]
        );
        assert_eq!(
            &std::fs::read(bsp.kernel()).unwrap()[0x38..0x3c],
            b"ARM\x64"
        );
        let fw = board.firmware_files();
        assert!(fw.contains(&files::UEFI) && fw.contains(&files::L4T_LAUNCHER));
        assert!(
            !fw.contains(&board.kernel_dtb),
            "the device tree is its own artifact"
        );
        let mut names: Vec<&str> = fw.iter().map(|f| flash_xml::output_name(f)).collect();
        names.sort();
        let n = names.len();
        names.dedup();
        assert_eq!(
            n,
            names.len(),
            "firmware base names collide in the output folder"
        );
        // The BSP's own layout agrees with our table.
        let layout = bsp.nvidia_layout().unwrap();
        let parsed = flash_xml::parse("bsp", &std::fs::read_to_string(layout).unwrap()).unwrap();
        assert_eq!(
            flash_xml::compare_with_table(board, &parsed),
            Vec::<String>::new()
        );
        assert!(!bsp.fingerprint().unwrap().is_empty());
    }
    assert!(files::t234::BPMP.starts_with("bootloader/bpmp_t234-"));
}

#[test]
fn missing_bsp_files_are_named_at_once() {
    let d = tempfile::tempdir().unwrap();
    let root = d.path().join("Linux_for_Tegra");
    copy_tree(&synthetic_bsp().join("Linux_for_Tegra"), &root);
    std::fs::remove_file(root.join(files::t234::MB1)).unwrap();
    std::fs::remove_file(root.join(files::t234::DTB)).unwrap();
    match Bsp::open(d.path(), &ORIN).unwrap_err() {
        JetsonError::MissingFiles { missing, .. } => {
            assert_eq!(
                missing,
                vec![files::t234::DTB.to_string(), files::t234::MB1.to_string()]
            );
        }
        other => panic!("{other}"),
    }
    // Xavier needs neither file: the same tree still serves it, passed as Linux_for_Tegra/.
    assert!(Bsp::open(&root, &XAVIER).is_ok());
    let e = Bsp::open(d.path().join("Linux_for_Tegra/kernel").as_path(), &ORIN).unwrap_err();
    assert!(matches!(e, JetsonError::NotABsp { .. }), "{e}");
}

fn copy_tree(src: &Path, dest: &Path) {
    std::fs::create_dir_all(dest).unwrap();
    for e in std::fs::read_dir(src).unwrap() {
        let e = e.unwrap();
        if e.file_type().unwrap().is_dir() {
            copy_tree(&e.path(), &dest.join(e.file_name()));
        } else {
            std::fs::copy(e.path(), dest.join(e.file_name())).unwrap();
        }
    }
}

#[test]
fn missing_bsp_message_names_the_release_file_url_checksum_and_flag() {
    for (board, release, sha) in [
        (Board::JetsonOrinAgx, "R36.4.3", "949a44049c4c"),
        (Board::JetsonXavierAgx, "R35.6.1", "9ea28477747b"),
    ] {
        let pin = recipe(board).bsp.expect("Jetson recipes pin their BSP");
        let e = JetsonError::MissingBsp {
            board,
            pin: Some(pin),
            out: PathBuf::from("/out/x"),
        };
        let m = e.to_string();
        eprintln!("{m}");
        for want in [
            "Jetson Linux",
            release,
            "https://developer.download.nvidia.com/embedded/L4T/",
            &format!("Jetson_Linux_{release}_aarch64.tbz2"),
            sha,
            "--bsp",
            "Linux_for_Tegra",
            "/out/x",
        ] {
            assert!(m.contains(want), "{board:?}: missing {want:?} in\n{m}");
        }
    }
}

#[test]
fn a_bsp_tarball_is_checked_against_the_pin_then_unpacked_once() {
    let d = tempfile::tempdir().unwrap();
    let tree = d.path().join("tree/Linux_for_Tegra/kernel");
    std::fs::create_dir_all(&tree).unwrap();
    std::fs::write(tree.join("Image"), b"kernel").unwrap();
    let tarball = d.path().join("Jetson_Linux_R36.4.3_aarch64.tbz2");
    let st = std::process::Command::new("tar")
        .arg("-cjf")
        .arg(&tarball)
        .arg("-C")
        .arg(d.path().join("tree"))
        .arg("Linux_for_Tegra")
        .status()
        .unwrap();
    assert!(st.success());
    let (sha, _) = aperture_trust::digest::sha256_file(&tarball).unwrap();
    let mut pin = recipe(Board::JetsonOrinAgx).bsp.unwrap();
    // Not the pinned file: refused, naming the file, both checksums and the download.
    let cache = d.path().join("cache");
    let e = super::bsp::unpack(&tarball, Some(&pin), &cache).unwrap_err();
    let text = format!("{e:#}");
    assert!(
        text.contains(&sha.to_string()) && text.contains(&pin.sha256) && text.contains(&pin.url),
        "{text}"
    );
    assert!(
        !cache.join("bsp").exists(),
        "nothing is unpacked from a wrong file"
    );
    // The pinned file: unpacked, and the second time reused.
    pin.sha256 = sha.to_string();
    let (dir, note, sha) = super::bsp::unpack(&tarball, Some(&pin), &cache).unwrap();
    assert_eq!(sha.as_deref(), Some(pin.sha256.as_str()));
    assert!(note.contains("checked"), "{note}");
    assert_eq!(
        std::fs::read(dir.join("Linux_for_Tegra/kernel/Image")).unwrap(),
        b"kernel"
    );
    let (again, note, _) = super::bsp::unpack(&tarball, Some(&pin), &cache).unwrap();
    assert_eq!(again, dir);
    assert!(note.contains("unpacked before"), "{note}");
    // A folder is taken as it is, and the note says it was not checked.
    let (same, note, sha) = super::bsp::unpack(&d.path().join("tree"), Some(&pin), &cache).unwrap();
    assert_eq!(sha, None);
    assert_eq!(same, d.path().join("tree"));
    assert!(note.contains("without checking"), "{note}");
}

#[test]
fn build_outputs_without_bsp_stops_with_the_download_message() {
    let r = recipe(Board::JetsonXavierAgx);
    let d = tempfile::tempdir().unwrap();
    crate::keys::generate(&d.path().join("keys"), 30, false, true).unwrap();
    let keys = crate::keys::load(&d.path().join("keys")).unwrap();
    let paths = crate::pipeline::Paths {
        out: d.path().join("out"),
        repo: d.path().join("repo"),
        cache: d.path().join("cache"),
    };
    let rootfs = crate::pipeline::RootfsBuild {
        ostree_ref: "x".into(),
        commit: "0".repeat(64),
        base_commit: "0".repeat(64),
        source_date_epoch: 0,
        recipe_sha256: r.hash(),
    };
    let slot = crate::slot::SlotImage {
        path: paths.out.join("rootfs.img"),
        data_size: 4096,
        size: 8192,
        sha256: "0".repeat(64),
        verity: aperture_trust::verity::VerityInfo {
            root_hash: aperture_trust::digest::Sha256Hex::digest(b"x"),
            salt: String::new(),
            hash_offset: 4096,
            data_blocks: 1,
            data_block_size: 4096,
            hash_block_size: 4096,
            algorithm: "sha256".into(),
            uuid: "00000000-0000-4000-8000-000000000000".into(),
        },
    };
    let rep = crate::progress::Reporter::new(None).unwrap();
    let ctx = crate::outputs::Ctx {
        recipe: &r,
        paths: &paths,
        rootfs: &rootfs,
        keys: &keys,
        workspace: &workspace(),
        bsp: None,
        rep: &rep,
    };
    let err = super::build_outputs(&ctx, slot).unwrap_err();
    let text = format!("{err:#}");
    assert!(
        text.contains("R35.6.1")
            && text.contains("--bsp")
            && text.contains(&paths.out.display().to_string()),
        "{text}"
    );
    assert!(matches!(
        err.downcast_ref::<JetsonError>(),
        Some(JetsonError::MissingBsp { .. })
    ));
}

/// The files a build writes to its output folder that the layout file may name.
fn output_folder(board: &'static JetsonBoard, dir: &Path) -> LayoutFiles {
    let bsp = Bsp::open(&synthetic_bsp(), board).unwrap();
    for (rel, path) in bsp.firmware() {
        std::fs::copy(path, dir.join(flash_xml::output_name(rel))).unwrap();
    }
    let files = LayoutFiles {
        rootfs: "rootfs.img".into(),
        boot: [names::BOOT_A.into(), names::BOOT_B.into()],
        dtb: flash_xml::output_name(board.kernel_dtb).into(),
        esp: names::ESP.into(),
        state: names::STATE.into(),
        factory: None,
    };
    for f in [
        &files.rootfs,
        &files.boot[0],
        &files.boot[1],
        &files.dtb,
        &files.esp,
        &files.state,
    ] {
        std::fs::write(dir.join(f), b"x").unwrap();
    }
    files
}

#[test]
fn flash_layout_parses_and_names_files_that_exist() {
    for board in JetsonBoard::all() {
        let r = recipe(board.board);
        let d = tempfile::tempdir().unwrap();
        let files = output_folder(board, d.path());
        let xml = flash_xml::render(board, &r, &files);
        std::fs::write(d.path().join(names::FLASH_LAYOUT), &xml).unwrap();
        let devices = flash_xml::parse(names::FLASH_LAYOUT, &xml).unwrap();
        assert_eq!(devices.len(), 2);
        assert_eq!(devices[0].kind, board.boot_device.kind);
        let user = &devices[1];
        assert_eq!(
            (user.kind.as_str(), user.sectors),
            ("sdmmc_user", Some(r.partitions.disk.bytes() / 512))
        );
        let names: Vec<String> = user.gpt_partitions().map(|p| p.name.clone()).collect();
        let ids: Vec<u32> = user.gpt_partitions().map(|p| p.id.unwrap()).collect();
        let want: Vec<String> = board
            .rootfs_parts(&r)
            .iter()
            .map(|p| p.name.to_string())
            .collect();
        assert_eq!(names, want);
        assert_eq!(ids, (1..=want.len() as u32).collect::<Vec<_>>());
        let mut named = 0;
        for dev in &devices {
            for p in &dev.partitions {
                if let Some(f) = &p.filename {
                    assert!(
                        d.path().join(f).is_file(),
                        "{}: {} names {f}, which is not in the output folder",
                        board.board.name(),
                        p.name
                    );
                    named += 1;
                }
            }
        }
        let by_name = |n: &str| {
            user.partitions
                .iter()
                .find(|p| p.name == n)
                .unwrap()
                .filename
                .clone()
        };
        assert_eq!(by_name("APP").as_deref(), Some("rootfs.img"));
        assert_eq!(
            by_name(board.kernel_partition(Slot::B)).as_deref(),
            Some(names::BOOT_B)
        );
        assert_eq!(by_name("UDA"), None);
        eprintln!("{}: {named} partitions name files", board.board.name());
        assert!(named > 10);
    }
}

#[test]
fn layout_files_that_are_not_xml_or_declare_entities_are_refused_with_the_line() {
    let entities = "<?xml version=\"1.0\"?>\n<!DOCTYPE partition_layout [\n\
                    <!ENTITY app SYSTEM \"file:///etc/passwd\">\n]>\n\
                    <partition_layout><device type=\"sdmmc_user\">\
                    <partition name=\"APP\" type=\"data\"><filename>&app;</filename>\
                    </partition></device></partition_layout>\n";
    let unclosed = "<partition_layout>\n  <device type=\"spi\">\n  </partition_layout>\n";
    let not_a_layout = "<?xml version=\"1.0\"?>\n<bmap version=\"2.0\"/>\n";
    for (text, line, needle) in [
        (entities, 2, "DTDs"),
        (unclosed, 3, "'device'"),
        (not_a_layout, 2, "<bmap>, not <partition_layout>"),
    ] {
        match flash_xml::parse("layout.xml", text) {
            Err(JetsonError::LayoutXml {
                what,
                line: got,
                reason,
            }) => {
                assert_eq!((what.as_str(), got), ("layout.xml", line), "{reason}");
                assert!(reason.contains(needle), "{reason}");
            }
            other => panic!("{text}: {other:?}"),
        }
    }
}

#[test]
fn flash_layout_is_well_formed_for_another_parser() {
    if aperture_sys::tool::for_test("python3", "python3", "flash_layout_is_well_formed").is_none() {
        return;
    }
    let Ok(out) = std::process::Command::new("python3")
        .arg("--version")
        .output()
    else {
        panic!("python3 is on PATH but does not run");
    };
    assert!(out.status.success());
    let board = &ORIN;
    let r = recipe(board.board);
    let d = tempfile::tempdir().unwrap();
    let files = output_folder(board, d.path());
    let path = d.path().join(names::FLASH_LAYOUT);
    std::fs::write(&path, flash_xml::render(board, &r, &files)).unwrap();
    let script = "import sys, xml.etree.ElementTree as E\n\
                  r = E.parse(sys.argv[1]).getroot()\n\
                  for d in r.findall('device'):\n\
                  \x20   for p in d.findall('partition'):\n\
                  \x20       f = p.findtext('filename')\n\
                  \x20       print(d.get('type'), p.get('name'), (f or '').strip())\n";
    let out = std::process::Command::new("python3")
        .arg("-c")
        .arg(script)
        .arg(&path)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.contains("sdmmc_user APP rootfs.img"), "{text}");
    assert!(text.contains("sdmmc_user B_kernel boot_b.img"), "{text}");
    assert!(text.contains("spi A_mb1 mb1_t234_prod.bin"), "{text}");
}

#[test]
fn the_synthetic_fixture_regenerates_identically() {
    // The fixture's nvidia-l4t-tools deb is built with dpkg-deb (Debian's dpkg).
    if !std::process::Command::new("dpkg-deb")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
    {
        eprintln!(
            "SKIPPED the_synthetic_fixture_regenerates_identically: make-synthetic-bsp.sh needs \
             dpkg-deb (Debian's dpkg package) for the BSP's nvidia-l4t-tools deb"
        );
        return;
    }
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/make-synthetic-bsp.sh");
    let d = tempfile::tempdir().unwrap();
    let dest = d.path().join("bsp");
    match std::process::Command::new("bash")
        .arg(&script)
        .arg(&dest)
        .output()
    {
        Err(e) => panic!("bash does not run here ({e}): the synthetic BSP script needs it"),
        Ok(o) => {
            assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
            assert!(String::from_utf8_lossy(&o.stdout).contains("SYNTHETIC"));
            let mut a = Vec::new();
            let mut b = Vec::new();
            list(&dest, &dest, &mut a);
            let committed = synthetic_bsp();
            list(&committed, &committed, &mut b);
            assert_eq!(
                a, b,
                "regenerate the fixture: image/fixtures/make-synthetic-bsp.sh"
            );
        }
    }
}

fn list(root: &Path, dir: &Path, out: &mut Vec<(String, Vec<u8>)>) {
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    entries.sort();
    for p in entries {
        if p.is_dir() {
            list(root, &p, out);
        } else {
            out.push((
                p.strip_prefix(root).unwrap().display().to_string(),
                std::fs::read(&p).unwrap(),
            ));
        }
    }
}

#[test]
fn the_updater_writes_the_partitions_the_board_definitions_lay_out() {
    // The updater finds a slot's partitions through `aperture_slots::SlotLayout`; the disks are
    // laid out from NVIDIA's table here. Both must name the same partitions.
    for board in JetsonBoard::all() {
        let layout = board.board.slot_layout();
        for slot in Slot::ALL {
            assert_eq!(layout.rootfs(slot), board.rootfs_partition(slot));
            assert_eq!(
                layout.kernel(slot).as_deref(),
                Some(board.kernel_partition(slot))
            );
            assert_eq!(
                layout.kernel_dtb(slot).as_deref(),
                Some(board.dtb_partition(slot))
            );
        }
    }
}

#[test]
fn flash_layout_of_a_product_with_a_double_dash_is_well_formed() {
    let board = JetsonBoard::all()[0];
    let mut r = recipe(board.board);
    r.product = "edge--box".into();
    let d = tempfile::tempdir().unwrap();
    let files = output_folder(board, d.path());
    let xml = flash_xml::render(board, &r, &files);
    flash_xml::parse(names::FLASH_LAYOUT, &xml).expect("a comment may not hold `--`");
}
