//! Tier 2: real builds as root, with mmdebstrap and the network: base reuse, reproducibility,
//! signed outputs checked by the tools of the field (sgdisk, bmaptool, veritysetup), verify,
//! diffs between versions, the arm64 Jetson rootfs, and overlay safety.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use aperture_image::diff;
use aperture_image::outputs::names;
use aperture_image::store::{Node, Store, TreeView};
use aperture_tests::{
    build, build_in, copy_build, default_image, default_image_fresh, derived_recipe, fresh_root,
    main_out, recipe, require_root, test_root,
};

/// Read a file's bytes from a commit.
fn read_from_commit(store: &Store, commit: &str, path: &str) -> Vec<u8> {
    let view = TreeView::new(store, commit).unwrap();
    match view.lookup(Path::new(path), true).unwrap() {
        Some(f) => match f.node {
            Node::File(ck) => store.read_file(&ck, 64 << 20).unwrap(),
            Node::Dir { .. } => panic!("{path} is a directory"),
        },
        None => panic!("{path} is not in commit {commit}"),
    }
}

fn tool(name: &str) -> bool {
    aperture_tests::have_tool(name, "part of this test")
}

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{cmd:?} failed:\n{text}");
    text
}

fn same_bytes(a: &Path, b: &Path) -> bool {
    Command::new("cmp")
        .arg("--silent")
        .arg(a)
        .arg(b)
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

#[test]
#[ignore = "privileged tier: needs root and the network (run by `cargo xtask test` as root)"]
fn full_default_build_twice_reuses_the_base() {
    if !require_root("full_default_build_twice_reuses_the_base") {
        return;
    }
    let (first, cold) = default_image_fresh().unwrap();
    let (second, warm) = build_in(
        &recipe("qemu-x86_64.toml"),
        &first.paths.out,
        Some(&fresh_root().join("cache")),
        false,
    )
    .unwrap();
    eprintln!(
        "TIMING cold build {:.1}s, warm build {:.1}s, ratio {:.1}x",
        cold.as_secs_f64(),
        warm.as_secs_f64(),
        cold.as_secs_f64() / warm.as_secs_f64()
    );
    assert_eq!(
        first.rootfs.commit, second.rootfs.commit,
        "an unchanged recipe must give the same commit"
    );
    let base_step = second
        .steps
        .iter()
        .find(|s| s.name == "base")
        .expect("a base step");
    assert!(
        base_step.reused,
        "the second build must reuse the cached base"
    );
    assert!(
        cold.as_secs_f64() >= 5.0 * warm.as_secs_f64(),
        "warm build {warm:?} is not 5x faster than cold {cold:?}"
    );
}

#[test]
#[ignore = "privileged tier: needs root and the network (run by `cargo xtask test` as root)"]
fn default_build_makes_every_output() {
    if !require_root("default_build_makes_every_output") {
        return;
    }
    let report = default_image().unwrap();
    let out = &report.paths.out;
    for f in [
        names::DISK,
        names::BMAP,
        names::DISK_ZST,
        names::MANIFEST,
        names::SIGNATURE,
        names::BUNDLE,
        names::SBOM,
        names::ROOTFS,
        "uki-a.efi",
        "uki-b.efi",
        "secure-boot/PK.crt",
        "secure-boot/KEK.crt",
        "secure-boot/db.crt",
        "secure-boot/tpm-policy.pub.pem",
        "build.log",
    ] {
        let md = std::fs::metadata(out.join(f))
            .unwrap_or_else(|_| panic!("{f} is missing from {}", out.display()));
        assert!(md.len() > 0, "{f} is empty");
    }
    // disk.img is sparse: far fewer blocks allocated than its size.
    use std::os::unix::fs::MetadataExt;
    let md = std::fs::metadata(out.join(names::DISK)).unwrap();
    assert!(md.blocks() * 512 < md.len() / 2, "disk.img is not sparse");
    // SPDX 2.3 with Debian packages and our crates.
    let sbom: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join(names::SBOM)).unwrap()).unwrap();
    assert_eq!(sbom["spdxVersion"], "SPDX-2.3");
    let pkgs = sbom["packages"].as_array().unwrap();
    assert!(
        pkgs.iter()
            .any(|p| p["name"] == "systemd" && p["licenseDeclared"] != "NOASSERTION"),
        "systemd with its license"
    );
    assert!(
        pkgs.iter().any(|p| p["name"] == "aperture-agent"),
        "our agent crate"
    );
    // The rootfs holds the root of trust.
    let store = Store::open(&report.paths.repo).unwrap();
    let key = read_from_commit(&store, &report.rootfs.commit, "etc/aperture/root.pub");
    assert!(String::from_utf8_lossy(&key).contains("aperture-ed25519-public"));
}

#[test]
#[ignore = "privileged tier: needs root and the network (run by `cargo xtask test` as root)"]
fn disk_image_passes_sgdisk_and_bmaptool_copy() {
    if !require_root("disk_image_passes_sgdisk_and_bmaptool_copy") {
        return;
    }
    let report = default_image().unwrap();
    let out = &report.paths.out;
    if tool("sgdisk") {
        let text = run(Command::new("sgdisk").arg("-v").arg(out.join(names::DISK)));
        assert!(text.contains("No problems found"), "sgdisk -v:\n{text}");
    }
    if tool("bmaptool") {
        let dir = tempfile::tempdir_in(test_root()).unwrap();
        let target = dir.path().join("target.img");
        run(Command::new("bmaptool")
            .arg("copy")
            .arg("--bmap")
            .arg(out.join(names::BMAP))
            .arg(out.join(names::DISK_ZST))
            .arg(&target));
        assert!(
            same_bytes(&target, &out.join(names::DISK)),
            "bmaptool copy did not reproduce disk.img"
        );
    }
}

#[test]
#[ignore = "privileged tier: needs root and the network (run by `cargo xtask test` as root)"]
fn verify_passes_then_names_a_flipped_rootfs_byte() {
    if !require_root("verify_passes_then_names_a_flipped_rootfs_byte") {
        return;
    }
    let report = default_image().unwrap();
    let out = &report.paths.out;
    let now = aperture_trust::now_unix();
    let good = aperture_image::verify::verify(out, None, now).unwrap();
    assert!(
        good.ok(),
        "fresh build fails verification: {:?}",
        good.first_failure()
    );

    // veritysetup agrees with the manifest's root hash.
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join(names::MANIFEST)).unwrap()).unwrap();
    let rootfs = manifest["artifacts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["role"] == "rootfs")
        .unwrap()
        .clone();
    let root_hash = rootfs["verity"]["root_hash"].as_str().unwrap().to_string();
    let offset = rootfs["verity"]["hash_offset"].as_u64().unwrap();
    if tool("veritysetup") {
        run(Command::new("veritysetup")
            .arg("verify")
            .arg(out.join(names::ROOTFS))
            .arg(out.join(names::ROOTFS))
            .arg(&root_hash)
            .arg(format!("--hash-offset={offset}")));
    }

    // A copy of the build with one byte of slot A's rootfs partition flipped.
    let dir = tempfile::tempdir_in(test_root()).unwrap();
    let copy = dir.path().join("build");
    copy_build(out, &copy, &[names::DISK]).unwrap();
    let disk = copy.join(names::DISK);
    let mut f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&disk)
        .unwrap();
    let size = aperture_gpt::disk_size_of(&mut f).unwrap();
    let part = aperture_gpt::read_gpt(&mut f, size)
        .unwrap()
        .find("rootfs_a")
        .unwrap()
        .clone();
    use std::os::unix::fs::FileExt;
    let at = part.offset() + 1024 * 1024 + 17;
    let mut b = [0u8; 1];
    f.read_exact_at(&mut b, at).unwrap();
    f.write_all_at(&[b[0] ^ 0x40], at).unwrap();
    drop(f);
    let bad = aperture_image::verify::verify(&copy, None, now).unwrap();
    let failure = bad
        .first_failure()
        .expect("a flipped rootfs byte must fail verification");
    assert_eq!(failure.what, names::DISK, "{failure:?}");
    assert!(
        failure.detail.contains("rootfs_a"),
        "the failure should name the partition: {failure:?}"
    );

    // The same flip in rootfs.img: veritysetup also refuses it.
    if tool("veritysetup") {
        let img = copy.join(names::ROOTFS);
        let f = std::fs::OpenOptions::new()
            .write(true)
            .read(true)
            .open(&img)
            .unwrap();
        f.read_exact_at(&mut b, 4096 * 3 + 5).unwrap();
        f.write_all_at(&[b[0] ^ 1], 4096 * 3 + 5).unwrap();
        let st = Command::new("veritysetup")
            .arg("verify")
            .arg(&img)
            .arg(&img)
            .arg(&root_hash)
            .arg(format!("--hash-offset={offset}"))
            .output()
            .unwrap();
        assert!(
            !st.status.success(),
            "veritysetup accepted a tampered rootfs image"
        );
        let bad = aperture_image::verify::verify(&copy, None, now).unwrap();
        assert_eq!(bad.first_failure().unwrap().what, names::ROOTFS);
    }
}

/// Issue 18, must-show 5: `verify` and the audit check every UKI's and boot loader's Secure
/// Boot signature. The build's UKIs verify against its db certificate; against another
/// certificate (the build's KEK in db's place: the release was signed for other firmware)
/// `verify` fails at the first UKI and the audit names every boot file.
#[test]
#[ignore = "privileged tier: needs root and the network (run by `cargo xtask test` as root)"]
fn verify_and_the_audit_fail_on_a_uki_not_signed_by_the_db_certificate() {
    if !require_root("verify_and_the_audit_fail_on_a_uki_not_signed_by_the_db_certificate") {
        return;
    }
    let report = default_image().unwrap();
    let out = &report.paths.out;
    let now = aperture_trust::now_unix();
    let good = aperture_image::verify::verify(out, None, now).unwrap();
    let uki = good
        .checks
        .iter()
        .find(|c| c.what == "uki-b.efi")
        .expect("verify checks uki-b.efi");
    assert!(
        uki.ok
            && uki.detail.contains("signed by")
            && uki.detail.contains("boots slot b")
            && uki.detail.contains("disk-key policy for security version"),
        "{uki:?}"
    );

    let dir = tempfile::tempdir_in(test_root()).unwrap();
    let copy = dir.path().join("build");
    copy_build(out, &copy, &[]).unwrap();
    let db = copy.join("secure-boot/db.crt");
    std::fs::remove_file(&db).unwrap();
    std::fs::copy(copy.join("secure-boot/KEK.crt"), &db).unwrap();
    let bad = aperture_image::verify::verify(&copy, None, now).unwrap();
    let failure = bad
        .first_failure()
        .expect("a UKI not signed by db must fail verification");
    assert_eq!(failure.what, "uki-a.efi", "{failure:?}");
    assert!(failure.detail.contains("is not signed by"), "{failure:?}");

    // Each UKI's disk-key policy must be signed by the build's TPM policy key: with another
    // key's public half in its place, verify fails at the first UKI.
    let copy2 = dir.path().join("build2");
    copy_build(out, &copy2, &[]).unwrap();
    let policy_key = copy2.join("secure-boot/tpm-policy.pub.pem");
    std::fs::remove_file(&policy_key).unwrap();
    let other = dir.path().join("other-keys");
    aperture_image::sbkeys::generate(&other, 1, false, true).unwrap();
    std::fs::copy(
        aperture_image::sbkeys::SecureBootKeys::of(&other).policy_public(),
        &policy_key,
    )
    .unwrap();
    let bad = aperture_image::verify::verify(&copy2, None, now).unwrap();
    let failure = bad
        .first_failure()
        .expect("a UKI policy not signed by the policy key must fail verification");
    assert_eq!(failure.what, "uki-a.efi", "{failure:?}");
    assert!(
        failure.detail.contains("not signed by the TPM policy key"),
        "{failure:?}"
    );

    let audit = aperture_image::audit::audit_build(&copy, None).unwrap();
    let named: Vec<&str> = audit
        .violations()
        .iter()
        .filter(|f| {
            f.problem
                .contains("not signed by the build's Secure Boot db key")
        })
        .map(|f| f.subject.as_str())
        .collect();
    for want in [
        "aperture/a/uki.efi",
        "aperture/b/uki.efi",
        "EFI/BOOT/BOOTX64.EFI",
    ] {
        assert!(named.contains(&want), "{want} not named: {named:?}");
    }
}

#[test]
#[ignore = "privileged tier: needs root and the network (run by `cargo xtask test` as root)"]
fn full_two_clean_builds_are_byte_identical() {
    if !require_root("full_two_clean_builds_are_byte_identical") {
        return;
    }
    // Two builds that share nothing but the source: the one in the shared build cache, and
    // the one from an empty cache (its own mmdebstrap run and package download).
    let a = default_image().unwrap();
    let (b, _) = default_image_fresh().unwrap();
    assert_eq!(
        a.rootfs.base_commit, b.rootfs.base_commit,
        "the Debian base must be reproducible (a shared build cache whose base was built \
         before the mirror's last package update differs: `cargo xtask cache prune --all`)"
    );
    assert_eq!(
        a.rootfs.commit, b.rootfs.commit,
        "the rootfs commit must be reproducible"
    );
    for f in [
        names::DISK,
        names::MANIFEST,
        names::BUNDLE,
        names::ROOTFS,
        names::DISK_ZST,
        names::SBOM,
    ] {
        assert!(
            same_bytes(&a.paths.out.join(f), &b.paths.out.join(f)),
            "{f} differs between two clean builds"
        );
    }
}

#[test]
#[ignore = "privileged tier: needs root and the network (run by `cargo xtask test` as root)"]
fn full_diff_between_versions_lists_the_package_and_the_overlay_file() {
    if !require_root("full_diff_between_versions_lists_the_package_and_the_overlay_file") {
        return;
    }
    // v1 is the default recipe (its base is the shared one); v2 adds a package and a file.
    default_image().unwrap();
    let root = test_root().join("main");
    let recipes = root.join("recipes-diff");
    let _ = std::fs::remove_dir_all(&recipes);
    let overlay = recipes.join("extra-overlay/etc/aperture");
    std::fs::create_dir_all(&overlay).unwrap();
    std::fs::write(overlay.join("motd"), "version two\n").unwrap();
    let v1 = derived_recipe(
        &recipes,
        "v1.toml",
        "qemu-x86_64.toml",
        "version = \"1.0.0\"\n",
    )
    .unwrap();
    let v2 = derived_recipe(
        &recipes,
        "v2.toml",
        "qemu-x86_64.toml",
        "version = \"1.1.0\"\noverlays = [\"extra-overlay\"]\n[base]\npackages = [\"tree\"]\n",
    )
    .unwrap();
    let out = main_out();
    let (b1, _) = build(&v1, &out.join("diff-v1"), true).unwrap();
    let (b2, _) = build(&v2, &out.join("diff-v2"), true).unwrap();
    let store = Store::open(&b2.paths.repo).unwrap();
    let changes = diff::diff(&store, &b1.rootfs.commit, &b2.rootfs.commit).unwrap();
    let files = diff::file_paths(&changes);

    // What the package owns, from dpkg's own list in the new image.
    let list = String::from_utf8(read_from_commit(
        &store,
        &b2.rootfs.commit,
        "var/lib/dpkg/info/tree.list",
    ))
    .unwrap();
    let view = TreeView::new(&store, &b2.rootfs.commit).unwrap();
    let mut package_files = BTreeSet::new();
    for p in list.lines().filter(|l| !l.is_empty() && *l != "/.") {
        if let Some(found) = view.lookup(Path::new(p), false).unwrap() {
            if let Node::File(_) = found.node {
                package_files.insert(PathBuf::from(p));
            }
        }
    }
    assert!(
        package_files.contains(Path::new("/usr/bin/tree")),
        "dpkg list: {package_files:?}"
    );
    // dpkg and apt bookkeeping that records the installed package, and our version files.
    let bookkeeping: BTreeSet<PathBuf> = [
        "/var/lib/dpkg/status",
        "/var/lib/dpkg/status-old",
        "/var/lib/dpkg/info/tree.list",
        "/var/lib/dpkg/info/tree.md5sums",
        "/var/lib/apt/extended_states",
        "/var/log/dpkg.log",
        "/var/log/apt/history.log",
        "/var/log/apt/term.log",
        "/var/log/apt/eipp.log.xz",
        "/var/cache/debconf/config.dat",
        "/var/cache/debconf/config.dat-old",
        "/var/cache/debconf/templates.dat",
        "/var/cache/debconf/templates.dat-old",
        "/var/log/alternatives.log",
    ]
    .iter()
    .map(PathBuf::from)
    .collect();
    let version_files: BTreeSet<PathBuf> = ["/usr/lib/os-release", "/etc/aperture/build.json"]
        .iter()
        .map(PathBuf::from)
        .collect();
    let overlay_file = PathBuf::from("/etc/aperture/motd");

    for c in &changes {
        println!("{} {}", c.change.letter(), c.path);
    }
    assert!(
        files.contains(&overlay_file),
        "the overlay file is missing from the diff"
    );
    for p in &package_files {
        assert!(
            files.contains(p),
            "package file {} is missing from the diff",
            p.display()
        );
    }
    let unexplained: Vec<&PathBuf> = files
        .iter()
        .filter(|p| {
            !package_files.contains(*p)
                && !bookkeeping.contains(*p)
                && !version_files.contains(*p)
                && **p != overlay_file
        })
        .collect();
    assert!(
        unexplained.is_empty(),
        "the diff lists paths neither the package nor the overlay explains: {unexplained:?}"
    );
    assert!(
        changes
            .iter()
            .all(|c| c.change != diff::Change::Removed || c.path.ends_with('/')),
        "nothing should be removed"
    );
}

#[test]
#[ignore = "privileged tier: needs root and the network (run by `cargo xtask test` as root)"]
fn full_jetson_orin_rootfs_has_an_aarch64_agent() {
    if !require_root("full_jetson_orin_rootfs_has_an_aarch64_agent") {
        return;
    }
    let root = test_root().join("arm64");
    let out = root.join("out/orin");
    let (report, _) = build(&recipe("jetson-orin-agx.toml"), &out, true).unwrap();
    let store = Store::open(&report.paths.repo).unwrap();
    let elf = read_from_commit(&store, &report.rootfs.commit, "usr/bin/aperture-agent");
    assert_eq!(&elf[..4], b"\x7fELF", "not an ELF file");
    assert_eq!(elf[4], 2, "not a 64-bit ELF");
    let machine = u16::from_le_bytes([elf[18], elf[19]]);
    assert_eq!(machine, 0xB7, "e_machine {machine:#x} is not EM_AARCH64");
    // The base is arm64 too: dpkg says so.
    let arch = String::from_utf8(read_from_commit(
        &store,
        &report.rootfs.commit,
        "var/lib/dpkg/arch",
    ))
    .unwrap_or_default();
    let status = String::from_utf8(read_from_commit(
        &store,
        &report.rootfs.commit,
        "var/lib/dpkg/status",
    ))
    .unwrap();
    assert!(
        status.contains("Architecture: arm64"),
        "dpkg status has no arm64 packages (arch file: {arch:?})"
    );
    // Storage and reset wait for NVIDIA's data partition, UDA, and for the TPM.
    let parts = String::from_utf8(read_from_commit(
        &store,
        &report.rootfs.commit,
        "usr/lib/systemd/system/aperture-storage.service.d/board-partitions.conf",
    ))
    .unwrap();
    assert!(
        parts.contains(r"dev-disk-by\x2dpartlabel-UDA.device")
            && parts.contains(r"dev-disk-by\x2dpartlabel-aperture_state.device"),
        "{parts}"
    );
    read_from_commit(
        &store,
        &report.rootfs.commit,
        "usr/lib/systemd/system/aperture-storage.service.d/tpm.conf",
    );
    // The inference runtime, cross-built for aarch64, with the aarch64 ONNX Runtime library
    // and the model.
    let lib = read_from_commit(
        &store,
        &report.rootfs.commit,
        "usr/lib/aperture/libonnxruntime.so.1.31.1",
    );
    assert_eq!(u16::from_le_bytes([lib[18], lib[19]]), 0xB7, "not aarch64");
    read_from_commit(
        &store,
        &report.rootfs.commit,
        "usr/share/aperture/models/nanodet-m/manifest.toml",
    );
    read_from_commit(&store, &report.rootfs.commit, "etc/aperture/runtime.toml");
}

/// `/proc/cpuinfo` of a two-core Cortex-A72 (the layout an arm64 kernel writes). Under
/// qemu-user the program reads the build machine's x86 `/proc/cpuinfo`, in which ONNX Runtime's
/// cpuinfo finds no arm64 processor and crashes (a NULL read while it sizes its thread pool);
/// the test shows it this file instead, bind-mounted in a mount namespace of its own.
fn arm64_cpuinfo() -> String {
    (0..2)
        .map(|i| {
            format!(
                "processor\t: {i}\nBogoMIPS\t: 108.00\nFeatures\t: fp asimd evtstrm aes pmull \
                 sha1 sha2 crc32 cpuid\nCPU implementer\t: 0x41\nCPU architecture: 8\n\
                 CPU variant\t: 0x0\nCPU part\t: 0xd08\nCPU revision\t: 3\n"
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
#[ignore = "privileged tier: needs root and the network (run by `cargo xtask test` as root)"]
fn full_arm64_runtime_cross_builds_and_passes_its_self_test_under_qemu_user() {
    use std::io::BufRead;

    use aperture_image::recipe::{DeviceProgram, Recipe};
    use aperture_image::rootfs::programs;

    let name = "full_arm64_runtime_cross_builds_and_passes_its_self_test_under_qemu_user";
    if !require_root(name)
        || !tool("mmdebstrap")
        || !tool("aarch64-linux-gnu-gcc")
        || !tool("aarch64-linux-gnu-g++")
        || !tool("qemu-aarch64-static")
        || !tool("unshare")
    {
        return;
    }
    let lib = std::env::var_os("APERTURE_ONNXRUNTIME_ARM64")
        .map(PathBuf::from)
        .filter(|p| p.is_file())
        .unwrap_or_else(|| {
            panic!(
                "{name}: APERTURE_ONNXRUNTIME_ARM64 does not name the aarch64 ONNX Runtime \
                 library; `cargo xtask test` fetches it and sets it"
            )
        });
    // The arm64 boards' recipe, built as an image build does (the release profile,
    // target/device), with the runtime only: the Jetson suites build the other programs.
    let mut r = Recipe::load(&recipe("qemu-arm64.toml")).unwrap();
    assert_eq!(
        std::env::consts::ARCH,
        "x86_64",
        "this test is for an x86-64 build machine"
    );
    r.components.device = vec![DeviceProgram::Runtime];
    let rep = aperture_image::progress::Reporter::new(None).unwrap();
    let t = std::time::Instant::now();
    let bin = rep
        .step("programs", |s| {
            programs::build(&r, &aperture_tests::workspace(), s)
        })
        .unwrap()
        .expect("the recipe has a device program");
    eprintln!("{name}: cross-built in {:.0?}", t.elapsed());
    let elf = std::fs::read(&bin).unwrap();
    assert_eq!(&elf[..4], b"\x7fELF");
    assert_eq!(u16::from_le_bytes([elf[18], elf[19]]), 0xB7, "not aarch64");

    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let program = d.join("aperture-runtime");
    std::os::unix::fs::symlink(&bin, &program).unwrap();
    std::fs::write(d.join("cpuinfo"), arm64_cpuinfo()).unwrap();
    let manifest = aperture_tests::workspace().join("models/nanodet-m/manifest.toml");
    let config = format!(
        "model = {:?}\nonnxruntime = {:?}\nsocket = {:?}\noutput_dir = {:?}\nmetrics = {:?}\n",
        manifest.display().to_string(),
        lib.display().to_string(),
        d.join("detections.sock").display().to_string(),
        d.join("detections").display().to_string(),
        d.join("runtime.json").display().to_string(),
    );
    std::fs::write(d.join("runtime.toml"), config).unwrap();
    // The aarch64 program and the libraries it loads (libc, libstdc++ for OpenH264 and ONNX
    // Runtime) from Debian's cross toolchain, the ONNX Runtime library from its wheel; nothing
    // from the build machine.
    let script = format!(
        "mount --bind '{cpuinfo}' /proc/cpuinfo && exec qemu-aarch64-static -L '{root}' \
         '{program}' --config '{config}'",
        cpuinfo = d.join("cpuinfo").display(),
        root = "/usr/aarch64-linux-gnu",
        program = program.display(),
        config = d.join("runtime.toml").display(),
    );
    let t = std::time::Instant::now();
    let mut child = Command::new("unshare")
        .args(["--mount", "--propagation", "private", "sh", "-c", &script])
        .env("HOME", d)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut log = Vec::new();
    let mut passed = false;
    for line in std::io::BufReader::new(child.stderr.take().unwrap()).lines() {
        let line = line.unwrap();
        log.push(line.clone());
        if line.contains("passed its self-test on 3 golden frames") {
            passed = true;
            break;
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    assert!(
        passed,
        "the aarch64 runtime did not pass its golden self-test under qemu-user:\n{}",
        log.join("\n")
    );
    eprintln!(
        "{name}: self-test on the 3 golden frames passed under qemu-user in {:.0?}",
        t.elapsed()
    );
}

#[test]
#[ignore = "privileged tier: needs root and the network (run by `cargo xtask test` as root)"]
fn overlay_that_escapes_the_root_is_refused() {
    if !require_root("overlay_that_escapes_the_root_is_refused") {
        return;
    }
    // The recipes live apart; the builds share the main store, so its cached base is reused
    // (the refusal comes after the base, when the overlays are laid on it).
    let recipes = test_root().join("escape/recipes");
    let _ = std::fs::remove_dir_all(&recipes);
    for (name, target) in [
        ("relative", "../../../../etc/shadow"),
        ("absolute", "/etc/shadow"),
    ] {
        let ov = recipes.join(format!("ov-{name}/etc"));
        std::fs::create_dir_all(&ov).unwrap();
        std::os::unix::fs::symlink(target, ov.join("evil")).unwrap();
        let r = derived_recipe(
            &recipes,
            &format!("{name}.toml"),
            "qemu-x86_64.toml",
            &format!("overlays = [\"ov-{name}\"]\n"),
        )
        .unwrap();
        let err = build(&r, &main_out().join(format!("escape-{name}")), true).unwrap_err();
        let msg = format!("{err:#}");
        assert!(
            msg.contains("/etc/evil") && msg.contains(target),
            "{name}: {msg}"
        );
        assert!(
            msg.contains(if name == "absolute" {
                "absolute target"
            } else {
                "escapes the image root"
            }),
            "{msg}"
        );
    }
}

#[test]
#[ignore = "privileged tier: needs root, mmdebstrap and the network (run by `cargo xtask test` as root)"]
fn bundle_verb_remakes_the_builds_bundle_byte_for_byte() {
    if !require_root("bundle_verb_remakes_the_builds_bundle_byte_for_byte") {
        return;
    }
    let image = default_image().unwrap();
    let dir = test_root().join("bundle-verb");
    std::fs::create_dir_all(&dir).unwrap();
    let out = dir.join("again.bundle");
    let _ = std::fs::remove_file(&out);
    let r = aperture_image::bundle::make_bundle(&image.paths.out, Some(&out), None).unwrap();
    assert_eq!(r.payloads, 3, "rootfs, kernel and initrd");
    assert!(
        std::fs::read(&out).unwrap() == std::fs::read(image.paths.out.join(names::BUNDLE)).unwrap(),
        "the re-made bundle differs from the build's update.bundle"
    );
    std::fs::remove_file(&out).unwrap();

    // A root key the build was not signed for: refused, nothing written.
    let other = dir.join("other-root.pub");
    aperture_trust::keys::SigningKeyPair::generate()
        .unwrap()
        .public()
        .save(&other)
        .unwrap();
    let err = aperture_image::bundle::make_bundle(&image.paths.out, Some(&out), Some(&other))
        .unwrap_err();
    eprintln!("refused: {err:#}");
    assert!(!out.exists(), "a refused bundle must not be written");
}

#[test]
#[ignore = "privileged tier: needs root, mmdebstrap and the network (run by `cargo xtask test` as root)"]
fn release_publish_puts_the_verified_build_in_a_tuf_repository_once() {
    if !require_root("release_publish_puts_the_verified_build_in_a_tuf_repository_once") {
        return;
    }
    let image = default_image().unwrap();
    let dir = test_root().join("release-publish");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let now = jiff::Timestamp::now();
    let mut repo = aperture_repo::Repo::init(&dir.join("repo"), false, now).unwrap();
    let waves: aperture_release::Waves = "10%@0h,100%@4h".parse().unwrap();
    let meta = aperture_image::verify::verified_release(
        &image.paths.out,
        "stable",
        waves.clone(),
        aperture_trust::now_unix(),
    )
    .unwrap();
    let manifest: aperture_trust::manifest::Manifest =
        serde_json::from_slice(&std::fs::read(image.paths.out.join(names::MANIFEST)).unwrap())
            .unwrap();
    assert_eq!(
        (
            &meta.product,
            &meta.board,
            &meta.version,
            meta.security_version
        ),
        (
            &manifest.product,
            &manifest.board,
            &manifest.version,
            manifest.security_version
        )
    );
    let bundle = image.paths.out.join(names::BUNDLE);
    let first = repo.publish(&bundle, meta.clone(), now, false).unwrap();
    assert!(
        matches!(first, aperture_repo::Published::Added { .. }),
        "{first:?}"
    );
    let again = repo.publish(&bundle, meta, now, false).unwrap();
    assert!(
        matches!(again, aperture_repo::Published::AlreadyThere { .. }),
        "{again:?}"
    );
    // Served as a folder; the stored target is the build's bundle, byte for byte.
    let www = dir.join("www");
    aperture_repo::sync::to_dir(&dir.join("repo"), &www).unwrap();
    let st = repo.status(now);
    let t = &st.targets[0];
    assert_eq!(t.release.as_ref().unwrap().waves, waves);
    let stored = www.join("targets").join(format!("{}.{}", t.sha256, t.name));
    assert!(
        same_bytes(&stored, &bundle),
        "{} differs from the bundle",
        stored.display()
    );

    // A build folder with a flipped byte in its bundle is refused before anything is published.
    let bad = dir.join("tampered");
    copy_build(&image.paths.out, &bad, &[names::BUNDLE]).unwrap();
    let b = bad.join(names::BUNDLE);
    let mut bytes = std::fs::read(&b).unwrap();
    let n = bytes.len();
    bytes[n - 100] ^= 1;
    std::fs::write(&b, bytes).unwrap();
    let e = aperture_image::verify::verified_release(
        &bad,
        "stable",
        aperture_release::Waves::all_at_once(),
        aperture_trust::now_unix(),
    )
    .unwrap_err();
    assert!(format!("{e:#}").contains("nothing was published"), "{e:#}");
    std::fs::remove_dir_all(&bad).unwrap();
}
