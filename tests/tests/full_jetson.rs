//! Privileged tier, run with `--full` (the arm64 Debian base takes about 12 minutes of CI's 30
//! under emulation): full Jetson builds (AGX Orin and AGX Xavier) from the arm64 Debian base,
//! with the SYNTHETIC L4T BSP of `image/fixtures/synthetic-bsp` (files named as in NVIDIA's
//! Jetson Linux trees, contents generated placeholders, not NVIDIA software). They check the
//! disk's partition table against NVIDIA's layout, the manifest's hashes against the BSP files,
//! the layout file for NVIDIA's tools, and the message of a build without a BSP.
//!
//! Builds share `target/aperture-tests/arm64/out/` (store and the cached arm64 base) with the
//! arm64 tests of the other suites: the first run spends ~3-4 minutes on the base under
//! emulation, later ones reuse it.

use std::fs::File;
use std::path::{Path, PathBuf};

use aperture_image::jetson::{self, flash_xml, JetsonError};
use aperture_image::pipeline::BuildReport;
use aperture_image::progress::Reporter;
use aperture_image::recipe::Recipe;
use aperture_tests::{build, recipe, require_root, test_root, workspace};
use aperture_trust::keys::PublicKey;
use aperture_trust::manifest::{Manifest, Role};

/// NVIDIA's rootfs-device partition table with rootfs A/B, by GPT entry number, from Jetson
/// Linux R35.5.0 `bootloader/t186ref/cfg/flash_t234_qspi_sdmmc_rootfs_ab.xml` (AGX Orin:
/// `APP` id 1, `APP_b` id 2, `A_kernel` id 3, then file order, `RECNAME`/`RECDTB-NAME` as
/// `flash.sh` resolves them) and the Developer Guide R36 "Root File System Redundancy".
/// Aperture's `config` follows NVIDIA's partitions.
const ORIN: &[&str] = &[
    "APP",
    "APP_b",
    "A_kernel",
    "A_kernel-dtb",
    "A_reserved_on_user",
    "B_kernel",
    "B_kernel-dtb",
    "B_reserved_on_user",
    "recovery",
    "recovery-dtb",
    "esp",
    "recovery_alt",
    "recovery-dtb_alt",
    "esp_alt",
    "UDA",
    "reserved",
    "aperture_state",
    "factory",
    "config",
];

/// AGX Xavier, from Jetson Linux R35.6.1 `bootloader/t186ref/cfg/flash_t194_sdmmc_rootfs_ab.xml`
/// (`sdmmc_user` device, entry order = file order; `_b` suffixes for chain B).
const XAVIER: &[&str] = &[
    "APP",
    "APP_b",
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
    "reserved_for_chain_A_user",
    "mts-mce_b",
    "mts-proper_b",
    "cpu-bootloader_b",
    "bootloader-dtb_b",
    "secure-os_b",
    "eks_b",
    "bpmp-fw_b",
    "bpmp-fw-dtb_b",
    "xusb-fw_b",
    "rce-fw_b",
    "adsp-fw_b",
    "sce-fw_b",
    "sc7_b",
    "kernel_b",
    "kernel-dtb_b",
    "reserved_for_chain_B_user",
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
];

fn synthetic_bsp() -> PathBuf {
    let p = workspace().join("host/image/fixtures/synthetic-bsp");
    eprintln!(
        "building with the SYNTHETIC L4T BSP {} (generated placeholders, not NVIDIA software)",
        p.display()
    );
    p
}

/// The rootfs commit (shared arm64 store), then the slot image and the Jetson outputs, the
/// way the outputs stage runs them.
fn jetson_build(
    recipe_file: &str,
    name: &str,
    bsp: Option<&Path>,
) -> (
    Recipe,
    BuildReport,
    anyhow::Result<aperture_image::outputs::OutputsReport>,
    PublicKey,
) {
    let out = test_root().join("arm64/out").join(name);
    let (report, _) = build(&recipe(recipe_file), &out, true).unwrap();
    let r = Recipe::load(&recipe(recipe_file)).unwrap();
    let rep = Reporter::new(None).unwrap();
    let keys = aperture_image::keys::for_build(&r.keys.dir, r.keys.development, false, false, &rep)
        .unwrap();
    let ws = workspace();
    let ctx = aperture_image::outputs::Ctx {
        recipe: &r,
        paths: &report.paths,
        rootfs: &report.rootfs,
        keys: &keys,
        workspace: &ws,
        bsp,
        rep: &rep,
    };
    let slot = aperture_image::outputs::slot_image(&ctx).unwrap();
    let outputs = jetson::build_outputs(&ctx, slot);
    let root = keys.root;
    (r, report, outputs, root)
}

fn sha(path: &Path) -> String {
    aperture_trust::digest::sha256_file(path)
        .unwrap()
        .0
        .to_string()
}

fn check_board(recipe_file: &str, name: &str, expected: &[&str], dtb: &str) {
    let bsp = synthetic_bsp();
    let (r, report, outputs, root) = jetson_build(recipe_file, name, Some(&bsp));
    outputs.unwrap();
    let out = &report.paths.out;
    let l4t = bsp.join("Linux_for_Tegra");

    // The partition table: NVIDIA's names in NVIDIA's order, pairs of equal size.
    let mut f = File::open(out.join("disk.img")).unwrap();
    let size = aperture_gpt::disk_size_of(&mut f).unwrap();
    let gpt = aperture_gpt::read_gpt(&mut f, size).unwrap();
    let names: Vec<&str> = gpt.partitions.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(names, expected, "{name}: partition table");
    for (i, p) in gpt.partitions.iter().enumerate() {
        assert_eq!(p.index as usize, i + 1);
        let twin = p
            .name
            .strip_prefix("A_")
            .map(|n| format!("B_{n}"))
            .or_else(|| {
                (expected.contains(&format!("{}_b", p.name).as_str()))
                    .then(|| format!("{}_b", p.name))
            });
        if let Some(t) = twin {
            assert_eq!(gpt.find(&t).unwrap().size(), p.size(), "{} and {t}", p.name);
        }
    }
    assert_eq!(gpt.find("APP").unwrap().size(), r.partitions.rootfs.bytes());

    // A board without a TPM ([hardware] tpm = false: the Xavier) gets unsealed disk keys, and
    // the audit says so in a note; a board with one gets no such note.
    let store = aperture_image::store::Store::open(&report.paths.repo).unwrap();
    let audit = aperture_image::audit::audit_commit(&store, &report.rootfs.commit, None).unwrap();
    let no_tpm = audit
        .findings
        .iter()
        .find(|f| f.check == "keys" && f.problem.contains("has no TPM"));
    assert_eq!(
        no_tpm.is_some(),
        !r.hardware.tpm,
        "{name}: the audit's note on unsealed disk keys: {:?}",
        audit.findings
    );

    // Both rootfs partitions hold the slot image: its verity tree checks out in place.
    let m =
        Manifest::from_json_unverified(&std::fs::read(out.join("manifest.json")).unwrap()).unwrap();
    let rootfs = m.artifacts.iter().find(|a| a.role == Role::Rootfs).unwrap();
    for part in jetson::ROOTFS_PARTITIONS {
        let p = gpt.find(part).unwrap();
        let w = aperture_image::verify::Window::new(
            File::open(out.join("disk.img")).unwrap(),
            p.offset(),
            p.size(),
        );
        aperture_trust::verity::verify_device(w, rootfs.verity.as_ref().unwrap()).unwrap();
    }

    // The manifest hashes the BSP's own files: kernel, device tree, firmware, capsule.
    let by_role = |role: Role| {
        m.artifacts
            .iter()
            .filter(|a| a.role == role)
            .collect::<Vec<_>>()
    };
    assert_eq!(
        by_role(Role::Kernel)[0].sha256.to_string(),
        sha(&l4t.join("kernel/Image"))
    );
    assert_eq!(
        by_role(Role::Dtb)[0].sha256.to_string(),
        sha(&l4t.join("kernel/dtb").join(dtb))
    );
    assert_eq!(
        by_role(Role::Capsule)[0].sha256.to_string(),
        sha(&l4t.join("bootloader/TEGRA_BL.Cap"))
    );
    let firmware = by_role(Role::Firmware);
    assert!(
        firmware.len() > 10,
        "{name}: {} firmware artifacts",
        firmware.len()
    );
    for a in &firmware {
        assert_eq!(
            a.sha256.to_string(),
            sha(&l4t.join("bootloader").join(a.name.as_str())),
            "{}",
            a.name
        );
        assert!(
            a.payload.is_none(),
            "firmware travels as the capsule, not raw"
        );
    }
    // The bundle carries the slot: rootfs, kernel, initrd, device tree, capsule.
    let mut payloads: Vec<Role> = m.payload_artifacts().map(|a| a.role).collect();
    payloads.sort();
    assert_eq!(
        payloads,
        [
            Role::Rootfs,
            Role::Kernel,
            Role::Initrd,
            Role::Dtb,
            Role::Capsule
        ]
    );
    assert!(
        out.join("update.bundle").is_file()
            && out.join("disk.img.bmap").is_file()
            && out.join("disk.img.zst").is_file()
    );

    // The layout file for NVIDIA's tools parses and names files of the output folder.
    let xml = std::fs::read_to_string(out.join("flash_layout.xml")).unwrap();
    let devices = flash_xml::parse("flash_layout.xml", &xml).unwrap();
    let user = devices.iter().find(|d| d.kind == "sdmmc_user").unwrap();
    assert_eq!(
        user.gpt_partitions()
            .map(|p| p.name.as_str())
            .collect::<Vec<_>>(),
        expected
    );
    let mut named = 0;
    for p in devices.iter().flat_map(|d| &d.partitions) {
        if let Some(file) = &p.filename {
            assert!(
                out.join(file).is_file(),
                "{name}: {} names {file}, missing from {}",
                p.name,
                out.display()
            );
            named += 1;
        }
    }
    eprintln!(
        "{name}: {} partitions, {} firmware files, layout names {named} files (SYNTHETIC BSP)",
        gpt.partitions.len(),
        firmware.len()
    );

    install_bundle_on_the_disk(&r, out, &m, &root, name);
}

/// The board's own `update.bundle`, installed by the device updater into slot B of a copy of
/// its own `disk.img` (as a file disk, with a folder for efivarfs and one for the ESP), the
/// device believing it runs an older version from slot A. Then the simulated firmware applies
/// the capsule, switches to chain B and boots it.
fn install_bundle_on_the_disk(r: &Recipe, out: &Path, m: &Manifest, root: &PublicKey, name: &str) {
    use aperture_slots::tegra::{bootimg, capsule::CapsuleDelivery};
    use aperture_slots::{BootControl, Slot, Tegra};
    use aperture_updater::disk::{Disk, FileDisk};

    let dir = test_root().join("jetson-update").join(name);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let disk = dir.join("disk.img");
    aperture_tests::copy_disk(&out.join("disk.img"), &disk).unwrap();
    let paths = aperture_updater::Paths::rooted(&dir.join("root"));
    for d in [&paths.efivars, &paths.esp] {
        std::fs::create_dir_all(d).unwrap();
    }
    std::fs::create_dir_all(paths.build_facts.parent().unwrap()).unwrap();
    std::fs::create_dir_all(paths.cmdline.parent().unwrap()).unwrap();
    root.save(&paths.root_key).unwrap();
    std::fs::write(&paths.cmdline, "console=ttyTCU0 aperture.slot=a\n").unwrap();
    let facts = aperture_updater::BuildFacts {
        product: m.product.clone(),
        version: "0.0.1".into(),
        security_version: 0,
        board: r.board,
        recipe_sha256: m.build.recipe_sha256.to_string(),
        source_date_epoch: 1,
        required_services: Vec::new(),
        tpm: true,
        reset_button: None,
    };
    std::fs::write(&paths.build_facts, serde_json::to_vec(&facts).unwrap()).unwrap();

    let layout = r.board.slot_layout();
    let file_disk = FileDisk::new(&disk);
    let read_first = |part: &str| {
        let p = file_disk.open(part).unwrap();
        let mut buf = vec![0u8; 1 << 20];
        p.read_exact_at(&mut buf, 0).unwrap();
        buf
    };
    let a_before = [
        read_first(&layout.rootfs(Slot::A)),
        read_first(&layout.kernel(Slot::A).unwrap()),
    ];
    let tegra = || {
        let ledger = aperture_updater::store::open(
            &FileDisk::new(&disk),
            r.board,
            std::sync::Arc::new(aperture_updater::io::RealIo),
        )
        .unwrap();
        Tegra::new(paths.efivars.clone(), Box::new(ledger)).with_capsules(paths.esp.clone())
    };
    let mut updater = aperture_updater::Updater::new(
        paths.clone(),
        Box::new(FileDisk::new(&disk)),
        Box::new(tegra()),
        Slot::A,
    );
    let t = std::time::Instant::now();
    let done = updater
        .install(
            &mut File::open(out.join("update.bundle")).unwrap(),
            &aperture_updater::InstallOptions::default(),
        )
        .unwrap();
    eprintln!(
        "{name}: the updater installed the build's bundle into slot B in {:.1} s",
        t.elapsed().as_secs_f64()
    );
    assert_eq!(done.target, Slot::B);
    let kernel_b = layout.kernel(Slot::B).unwrap();
    let header = bootimg::parse_header(&read_first(&kernel_b)).unwrap();
    assert!(
        header
            .cmdline
            .contains("aperture.verity.data=PARTLABEL=APP_b ")
            && header.cmdline.contains("aperture.slot=b"),
        "{kernel_b}: {}",
        header.cmdline
    );
    assert_eq!(
        [
            read_first(&layout.rootfs(Slot::A)),
            read_first(&layout.kernel(Slot::A).unwrap())
        ],
        a_before,
        "{name}: slot A is never written"
    );
    let delivery = CapsuleDelivery::new(paths.esp.clone(), paths.efivars.clone());
    assert!(delivery.requested().unwrap());
    assert_eq!(delivery.pending().unwrap().len(), 1);
    assert!(
        !tegra().variable_path("BootChainFwNext").exists(),
        "with a capsule the firmware switches the chain, not the updater"
    );
    assert_eq!(tegra().loader_boot().unwrap(), Slot::B);
}

#[test]
#[ignore = "privileged tier: needs root, mmdebstrap and the network (run by `cargo xtask test` as root)"]
fn orin_build_with_synthetic_bsp_has_nvidia_layout_and_bsp_hashes() {
    if !require_root("orin_build_with_synthetic_bsp_has_nvidia_layout_and_bsp_hashes") {
        return;
    }
    check_board(
        "jetson-orin-agx.toml",
        "jetson-orin",
        ORIN,
        "tegra234-p3701-0000-p3737-0000.dtb",
    );
}

#[test]
#[ignore = "privileged tier: needs root, mmdebstrap and the network (run by `cargo xtask test` as root)"]
fn xavier_build_with_synthetic_bsp_has_nvidia_layout_and_bsp_hashes() {
    if !require_root("xavier_build_with_synthetic_bsp_has_nvidia_layout_and_bsp_hashes") {
        return;
    }
    check_board(
        "jetson-xavier-agx.toml",
        "jetson-xavier",
        XAVIER,
        "tegra194-p2888-0001-p2822-0000.dtb",
    );
}

#[test]
#[ignore = "privileged tier: needs root, mmdebstrap and the network (run by `cargo xtask test` as root)"]
fn build_without_bsp_makes_the_slot_image_and_says_what_to_download() {
    if !require_root("build_without_bsp_makes_the_slot_image_and_says_what_to_download") {
        return;
    }
    let (_, report, outputs, _) = jetson_build("jetson-orin-agx.toml", "jetson-orin-nobsp", None);
    let err = outputs.unwrap_err();
    let text = format!("{err:#}");
    eprintln!("{text}");
    assert!(matches!(
        err.downcast_ref::<JetsonError>(),
        Some(JetsonError::MissingBsp { .. })
    ));
    for want in [
        "R36.4.3",
        "developer.download.nvidia.com/embedded/L4T/r36_Release_v4.3/release/Jetson_Linux_R36.4.3_aarch64.tbz2",
        "949a44049c4ce6a8efdf572ea0820c874f6ee5d41ca3e4935b9f0e38d11873d2",
        "--bsp",
        "Linux_for_Tegra",
    ] {
        assert!(text.contains(want), "missing {want:?}");
    }
    assert!(
        report.paths.out.join("rootfs.img").is_file(),
        "the slot image is made before stopping"
    );
    assert!(!report.paths.out.join("disk.img").exists());
}
