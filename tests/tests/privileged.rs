//! Tier 2: real builds as root, with mmdebstrap and the network: base reuse, reproducibility,
//! diffs between versions, the arm64 Jetson rootfs, and overlay safety.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use aperture_image::diff;
use aperture_image::store::{Node, Store, TreeView};
use aperture_tests::{build, derived_recipe, recipe, require_root, test_root};

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

#[test]
#[ignore = "privileged tier: needs root and the network (run by `cargo xtask test` as root)"]
fn default_build_twice_reuses_the_base() {
    if !require_root("default_build_twice_reuses_the_base") {
        return;
    }
    let root = test_root().join("reuse");
    let _ = std::fs::remove_dir_all(&root);
    let out = root.join("out/default");
    let (first, cold) = build(&recipe("qemu-x86_64.toml"), &out, true).unwrap();
    let (second, warm) = build(&recipe("qemu-x86_64.toml"), &out, true).unwrap();
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
fn two_clean_builds_give_the_same_commit() {
    if !require_root("two_clean_builds_give_the_same_commit") {
        return;
    }
    // Two output roots: two stores, two caches, two mmdebstrap runs.
    let a = test_root().join("repro-a");
    let b = test_root().join("repro-b");
    for d in [&a, &b] {
        let _ = std::fs::remove_dir_all(d);
    }
    let (ra, _) = build(&recipe("qemu-x86_64.toml"), &a.join("out/x"), true).unwrap();
    let (rb, _) = build(&recipe("qemu-x86_64.toml"), &b.join("out/x"), true).unwrap();
    assert_eq!(
        ra.rootfs.base_commit, rb.rootfs.base_commit,
        "the Debian base must be reproducible"
    );
    assert_eq!(
        ra.rootfs.commit, rb.rootfs.commit,
        "the rootfs commit must be reproducible"
    );
    for d in [&a, &b] {
        let _ = std::fs::remove_dir_all(d);
    }
}

#[test]
#[ignore = "privileged tier: needs root and the network (run by `cargo xtask test` as root)"]
fn diff_between_versions_lists_the_package_and_the_overlay_file() {
    if !require_root("diff_between_versions_lists_the_package_and_the_overlay_file") {
        return;
    }
    let root = test_root().join("diff");
    let _ = std::fs::remove_dir_all(&root);
    let recipes = root.join("recipes");
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
    let out = root.join("out");
    let (b1, _) = build(&v1, &out.join("v1"), true).unwrap();
    let (b2, _) = build(&v2, &out.join("v2"), true).unwrap();
    let store = Store::open(&out.join("repo")).unwrap();
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
fn jetson_orin_rootfs_has_an_aarch64_agent() {
    if !require_root("jetson_orin_rootfs_has_an_aarch64_agent") {
        return;
    }
    let root = test_root().join("jetson");
    let out = root.join("out/orin");
    let (report, _) = build(&recipe("jetson-orin-agx.toml"), &out, true).unwrap();
    let store = Store::open(&root.join("out/repo")).unwrap();
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
}

#[test]
#[ignore = "privileged tier: needs root and the network (run by `cargo xtask test` as root)"]
fn overlay_that_escapes_the_root_is_refused() {
    if !require_root("overlay_that_escapes_the_root_is_refused") {
        return;
    }
    let root = test_root().join("escape");
    let _ = std::fs::remove_dir_all(root.join("recipes"));
    let recipes = root.join("recipes");
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
        let err = build(&r, &root.join("out").join(name), true).unwrap_err();
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
