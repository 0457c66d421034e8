//! Tier-1 tests of taking `nvbootctrl` from a BSP's `nvidia-l4t-tools` deb ([`super::tools`]):
//! the SYNTHETIC BSP's stand-in, and debs made here with `dpkg-deb` around tiny hand-assembled
//! ELF files. No root; `dpkg-deb` is assumed (Debian's dpkg, on every Debian host the tier-1
//! suite runs on) and a test without it says it was skipped.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use goblin::elf::header::{EM_AARCH64, EM_X86_64};

use super::board::ORIN;
use super::bsp::Bsp;
use super::error::JetsonError;
use super::tools::{self, Kind, Rootfs, LIBRARY_DEST};

/// Whether `dpkg-deb` runs here; if not, the calling test says it is skipped.
fn have_dpkg_deb(test: &str) -> bool {
    let ok = std::process::Command::new("dpkg-deb")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !ok {
        eprintln!("SKIPPED {test}: needs dpkg-deb (Debian's dpkg package) to read and make debs");
    }
    ok
}

/// A rootfs that holds exactly these paths.
struct Paths(BTreeSet<String>);

impl Paths {
    /// What a Debian arm64 base holds that these tests ask about.
    fn debian() -> Paths {
        Paths(
            [
                "bin/sh",
                "lib/ld-linux-aarch64.so.1",
                "usr/lib/aarch64-linux-gnu/libc.so.6",
            ]
            .into_iter()
            .map(str::to_string)
            .collect(),
        )
    }
}

impl Rootfs for Paths {
    fn exists(&self, path: &str) -> anyhow::Result<bool> {
        Ok(self.0.contains(path))
    }
}

/// A minimal ELF64 little-endian shared object for `machine`: one `PT_LOAD` over the whole
/// file (addresses equal offsets), an optional `PT_INTERP`, and a `PT_DYNAMIC` with a
/// `DT_NEEDED` for each of `needed` (names in a `DT_STRTAB`). Enough for a loader's view of
/// what it needs; it runs nothing.
fn elf(machine: u16, interpreter: Option<&str>, needed: &[&str]) -> Vec<u8> {
    const EHDR: usize = 64;
    const PHDR: usize = 56;
    let phnum = if interpreter.is_some() { 3 } else { 2 };
    let mut tail = Vec::new();
    let base = EHDR + phnum * PHDR;
    let interp_at = base;
    if let Some(i) = interpreter {
        tail.extend_from_slice(i.as_bytes());
        tail.push(0);
    }
    let strtab_at = base + tail.len();
    let mut strtab = vec![0u8];
    let mut offsets = Vec::new();
    for n in needed {
        offsets.push(strtab.len() as u64);
        strtab.extend_from_slice(n.as_bytes());
        strtab.push(0);
    }
    tail.extend_from_slice(&strtab);
    while !(base + tail.len()).is_multiple_of(8) {
        tail.push(0);
    }
    let dynamic_at = base + tail.len();
    let mut dynamic: Vec<(u64, u64)> = offsets.iter().map(|&o| (1, o)).collect(); // DT_NEEDED
    dynamic.push((5, strtab_at as u64)); // DT_STRTAB
    dynamic.push((10, strtab.len() as u64)); // DT_STRSZ
    dynamic.push((0, 0)); // DT_NULL
    for (tag, val) in &dynamic {
        tail.extend_from_slice(&tag.to_le_bytes());
        tail.extend_from_slice(&val.to_le_bytes());
    }
    let total = (base + tail.len()) as u64;

    let mut out = Vec::new();
    out.extend_from_slice(b"\x7fELF");
    out.extend_from_slice(&[2, 1, 1, 0]); // ELFCLASS64, little endian, EV_CURRENT, SysV ABI
    out.extend_from_slice(&[0; 8]);
    out.extend_from_slice(&3u16.to_le_bytes()); // ET_DYN
    out.extend_from_slice(&machine.to_le_bytes());
    out.extend_from_slice(&1u32.to_le_bytes()); // e_version
    out.extend_from_slice(&0u64.to_le_bytes()); // e_entry
    out.extend_from_slice(&(EHDR as u64).to_le_bytes()); // e_phoff
    out.extend_from_slice(&0u64.to_le_bytes()); // e_shoff: no section headers
    out.extend_from_slice(&0u32.to_le_bytes()); // e_flags
    out.extend_from_slice(&(EHDR as u16).to_le_bytes());
    out.extend_from_slice(&(PHDR as u16).to_le_bytes());
    out.extend_from_slice(&(phnum as u16).to_le_bytes());
    out.extend_from_slice(&64u16.to_le_bytes()); // e_shentsize
    out.extend_from_slice(&0u16.to_le_bytes()); // e_shnum
    out.extend_from_slice(&0u16.to_le_bytes()); // e_shstrndx
    let mut phdr = |kind: u32, flags: u32, offset: u64, size: u64, align: u64| {
        out.extend_from_slice(&kind.to_le_bytes());
        out.extend_from_slice(&flags.to_le_bytes());
        for v in [offset, offset, offset, size, size, align] {
            out.extend_from_slice(&v.to_le_bytes()); // offset, vaddr, paddr, filesz, memsz, align
        }
    };
    phdr(1, 5, 0, total, 0x1000); // PT_LOAD, R+X
    if let Some(i) = interpreter {
        phdr(3, 4, interp_at as u64, i.len() as u64 + 1, 1); // PT_INTERP
    }
    phdr(2, 6, dynamic_at as u64, (dynamic.len() * 16) as u64, 8); // PT_DYNAMIC
    assert_eq!(out.len(), base);
    out.extend_from_slice(&tail);
    out
}

/// An aarch64 program as NVIDIA's would be: Debian's loader, libc and `extra`.
fn aarch64_program(extra: &[&str]) -> Vec<u8> {
    let mut needed = extra.to_vec();
    needed.push("libc.so.6");
    elf(EM_AARCH64, Some("/lib/ld-linux-aarch64.so.1"), &needed)
}

/// What a test deb holds at a path.
enum Content {
    File(Vec<u8>, u32),
    Link(&'static str),
}

/// Make `<bsp>/nv_tegra/l4t_deb_packages/<package>_<version>_arm64.deb` holding `files`, with
/// dpkg-deb as the synthetic BSP's is made.
fn deb(bsp: &Path, package: &str, files: &[(&str, Content)]) -> PathBuf {
    let stage = tempfile::tempdir().unwrap();
    let root = stage.path().join("pkg");
    std::fs::create_dir_all(root.join("DEBIAN")).unwrap();
    std::fs::write(
        root.join("DEBIAN/control"),
        format!(
            "Package: {package}\nVersion: 36.4.3-test\nArchitecture: arm64\n\
             Maintainer: Aperture tests <tests@example.invalid>\nDescription: test deb\n"
        ),
    )
    .unwrap();
    for (path, content) in files {
        let p = root.join(path);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        match content {
            Content::File(bytes, mode) => {
                std::fs::write(&p, bytes).unwrap();
                use std::os::unix::fs::PermissionsExt;
                std::fs::set_permissions(&p, std::fs::Permissions::from_mode(*mode)).unwrap();
            }
            Content::Link(target) => std::os::unix::fs::symlink(target, &p).unwrap(),
        }
    }
    let dir = bsp.join(super::nvidia::files::L4T_DEBS);
    std::fs::create_dir_all(&dir).unwrap();
    let out = dir.join(format!("{package}_36.4.3-test_arm64.deb"));
    aperture_sys::Cmd::new("dpkg-deb")
        .args(["--root-owner-group", "-Znone", "--build"])
        .arg(&root)
        .arg(&out)
        .run()
        .unwrap();
    out
}

/// A BSP tree in `root` for these tests (only its debs are read).
fn bsp_at(root: &Path, synthetic: bool) -> Bsp {
    Bsp {
        root: root.to_path_buf(),
        board: &ORIN,
        capsule: None,
        release: Some("TEST BSP".into()),
        synthetic,
    }
}

/// A BSP whose tools deb holds `nvbootctrl` as usr/sbin/nvbootctrl.
fn bsp_with_tool(dir: &Path, nvbootctrl: Vec<u8>) -> Bsp {
    deb(
        dir,
        tools::TOOLS_PACKAGE,
        &[("usr/sbin/nvbootctrl", Content::File(nvbootctrl, 0o755))],
    );
    bsp_at(dir, false)
}

/// The committed SYNTHETIC BSP (generated placeholders, not NVIDIA software).
fn synthetic_bsp() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/synthetic-bsp")
}

fn jetson_error(err: &anyhow::Error) -> &JetsonError {
    err.downcast_ref::<JetsonError>()
        .unwrap_or_else(|| panic!("not a JetsonError: {err:#}"))
}

#[test]
fn the_synthetic_bsp_gives_the_twins_stand_in() {
    if !have_dpkg_deb("the_synthetic_bsp_gives_the_twins_stand_in") {
        return;
    }
    let fixture = synthetic_bsp();
    let bsp = Bsp::open(&fixture, &ORIN).unwrap();
    assert!(bsp.synthetic);
    let tool = tools::read(&bsp).unwrap();
    assert_eq!(
        tool.kind,
        Kind::StandIn {
            interpreter: "/bin/sh".into()
        }
    );
    assert!(tool.is_stand_in());
    assert!(tool
        .deb
        .ends_with("nv_tegra/l4t_deb_packages/nvidia-l4t-tools_36.4.3-synthetic_arm64.deb"));
    let text = String::from_utf8(tool.bytes.clone()).unwrap();
    // It asks the twin harness to clear SR_RF through the variable the harness reads.
    assert!(text.contains(crate::twin::VERIFY_VAR), "{text}");
    assert!(text.contains("stand-in"), "{text}");
    let note = tool.note(&bsp);
    assert!(
        note.contains("nvidia-l4t-tools_36.4.3-synthetic_arm64.deb") && note.contains("stand-in"),
        "{note}"
    );

    let files = tools::plan(&bsp, &tool, &Paths::debian()).unwrap();
    assert_eq!(files.len(), 1);
    assert_eq!(files[0].path, "usr/sbin/nvbootctrl");
    assert_eq!(files[0].mode, 0o755);
    assert_eq!(files[0].bytes, tool.bytes);
    assert_eq!(files[0].member, "usr/sbin/nvbootctrl");

    // Its interpreter must be in the rootfs.
    let err = tools::plan(&bsp, &tool, &Paths(BTreeSet::new())).unwrap_err();
    assert!(
        matches!(jetson_error(&err), JetsonError::MissingInterpreter { interpreter, .. } if interpreter == "/bin/sh"),
        "{err:#}"
    );
    // And no overlay may bring its own.
    let mut shadowed = Paths::debian();
    shadowed.0.insert("usr/sbin/nvbootctrl".into());
    let err = tools::plan(&bsp, &tool, &shadowed).unwrap_err();
    assert!(
        matches!(jetson_error(&err), JetsonError::ToolShadowed { .. }),
        "{err:#}"
    );
}

#[test]
fn a_stand_in_script_is_refused_from_a_bsp_that_is_not_synthetic() {
    if !have_dpkg_deb("a_stand_in_script_is_refused_from_a_bsp_that_is_not_synthetic") {
        return;
    }
    let d = tempfile::tempdir().unwrap();
    let bsp = bsp_with_tool(d.path(), b"#!/bin/sh\nexit 0\n".to_vec());
    let err = tools::read(&bsp).unwrap_err();
    assert!(
        matches!(jetson_error(&err), JetsonError::ScriptTool { interpreter, .. } if interpreter == "/bin/sh"),
        "{err:#}"
    );
    assert!(format!("{err:#}").contains("only the synthetic test BSP"));
    // Neither ELF nor script.
    let d = tempfile::tempdir().unwrap();
    let bsp = bsp_with_tool(d.path(), b"MZ not a Linux program".to_vec());
    let err = tools::read(&bsp).unwrap_err();
    assert!(
        matches!(jetson_error(&err), JetsonError::NotAProgram { .. }),
        "{err:#}"
    );
}

#[test]
fn a_bsp_without_the_tools_deb_or_with_two_is_refused_naming_it() {
    if !have_dpkg_deb("a_bsp_without_the_tools_deb_or_with_two_is_refused_naming_it") {
        return;
    }
    let d = tempfile::tempdir().unwrap();
    let bsp = bsp_at(d.path(), false);
    let err = tools::read(&bsp).unwrap_err();
    assert!(
        matches!(jetson_error(&err), JetsonError::NoToolsDeb { dir, .. } if dir.ends_with("nv_tegra/l4t_deb_packages")),
        "{err:#}"
    );
    let msg = format!("{err:#}");
    assert!(
        msg.contains("nvidia-l4t-tools_<version>_arm64.deb")
            && msg.contains("/usr/sbin/nvbootctrl")
            && msg.contains("--bsp"),
        "{msg}"
    );

    // Another package's deb does not count; two tools debs are one too many.
    deb(
        d.path(),
        "nvidia-l4t-core",
        &[("usr/lib/x", Content::File(b"x".to_vec(), 0o644))],
    );
    assert!(matches!(
        jetson_error(&tools::read(&bsp).unwrap_err()),
        JetsonError::NoToolsDeb { .. }
    ));
    let dir = d.path().join(super::nvidia::files::L4T_DEBS);
    deb(
        d.path(),
        tools::TOOLS_PACKAGE,
        &[(
            "usr/sbin/nvbootctrl",
            Content::File(b"#!/bin/sh\n".to_vec(), 0o755),
        )],
    );
    std::fs::copy(
        dir.join("nvidia-l4t-tools_36.4.3-test_arm64.deb"),
        dir.join("nvidia-l4t-tools_36.4.4-test_arm64.deb"),
    )
    .unwrap();
    let err = tools::read(&bsp).unwrap_err();
    assert!(
        matches!(jetson_error(&err), JetsonError::SeveralToolsDebs { found, .. } if found.len() == 2),
        "{err:#}"
    );
}

#[test]
fn a_tools_deb_without_nvbootctrl_is_refused() {
    if !have_dpkg_deb("a_tools_deb_without_nvbootctrl_is_refused") {
        return;
    }
    let d = tempfile::tempdir().unwrap();
    deb(
        d.path(),
        tools::TOOLS_PACKAGE,
        &[(
            "usr/bin/tegrastats",
            Content::File(aarch64_program(&[]), 0o755),
        )],
    );
    let err = tools::read(&bsp_at(d.path(), false)).unwrap_err();
    assert!(
        matches!(jetson_error(&err), JetsonError::ToolNotInDeb { member, .. } if member == "usr/sbin/nvbootctrl"),
        "{err:#}"
    );
}

#[test]
fn an_x86_64_nvbootctrl_is_refused() {
    if !have_dpkg_deb("an_x86_64_nvbootctrl_is_refused") {
        return;
    }
    let d = tempfile::tempdir().unwrap();
    let bsp = bsp_with_tool(
        d.path(),
        elf(
            EM_X86_64,
            Some("/lib64/ld-linux-x86-64.so.2"),
            &["libc.so.6"],
        ),
    );
    let err = tools::read(&bsp).unwrap_err();
    assert!(
        matches!(jetson_error(&err), JetsonError::WrongArch { what, .. } if what == "/usr/sbin/nvbootctrl"),
        "{err:#}"
    );
    let msg = format!("{err:#}");
    assert!(
        msg.contains("e_machine 62") && msg.contains("aarch64"),
        "{msg}"
    );
}

#[test]
fn an_aarch64_nvbootctrl_whose_library_is_nowhere_is_refused_naming_it() {
    if !have_dpkg_deb("an_aarch64_nvbootctrl_whose_library_is_nowhere_is_refused_naming_it") {
        return;
    }
    let d = tempfile::tempdir().unwrap();
    let bsp = bsp_with_tool(d.path(), aarch64_program(&["libnvmissing.so.1"]));
    // Another deb of the BSP, without it.
    deb(
        d.path(),
        "nvidia-l4t-core",
        &[(
            "usr/lib/aarch64-linux-gnu/nvidia/libnvother.so",
            Content::File(elf(EM_AARCH64, None, &[]), 0o644),
        )],
    );
    let tool = tools::read(&bsp).unwrap();
    assert_eq!(
        tool.kind,
        Kind::Elf {
            interpreter: Some("/lib/ld-linux-aarch64.so.1".into()),
            needed: vec!["libnvmissing.so.1".into(), "libc.so.6".into()],
        }
    );
    let err = tools::plan(&bsp, &tool, &Paths::debian()).unwrap_err();
    assert!(
        matches!(jetson_error(&err), JetsonError::UnresolvedLibrary { soname, .. } if soname == "libnvmissing.so.1"),
        "{err:#}"
    );
    let msg = format!("{err:#}");
    assert!(
        msg.contains("libnvmissing.so.1")
            && msg.contains("/usr/sbin/nvbootctrl")
            && msg.contains(&d.path().display().to_string()),
        "{msg}"
    );

    // A rootfs without Debian's loader cannot run it either.
    let mut no_loader = Paths::debian();
    no_loader.0.remove("lib/ld-linux-aarch64.so.1");
    let err = tools::plan(&bsp, &tool, &no_loader).unwrap_err();
    assert!(
        matches!(jetson_error(&err), JetsonError::MissingInterpreter { .. }),
        "{err:#}"
    );
}

#[test]
fn a_library_from_another_bsp_deb_is_installed_with_what_it_needs() {
    if !have_dpkg_deb("a_library_from_another_bsp_deb_is_installed_with_what_it_needs") {
        return;
    }
    let d = tempfile::tempdir().unwrap();
    let bsp = bsp_with_tool(d.path(), aarch64_program(&["libnvos.so"]));
    // NVIDIA keeps its libraries in a folder of its own; libnvos.so is a symlink there, and
    // needs another library of the same deb, which needs libc (in the rootfs).
    let libnvos = elf(EM_AARCH64, None, &["libnvrm_gpu.so", "libc.so.6"]);
    let libnvrm = elf(EM_AARCH64, None, &["libc.so.6"]);
    deb(
        d.path(),
        "nvidia-l4t-core",
        &[
            (
                "usr/lib/aarch64-linux-gnu/nvidia/libnvos.so.36.4.3",
                Content::File(libnvos.clone(), 0o644),
            ),
            (
                "usr/lib/aarch64-linux-gnu/nvidia/libnvos.so",
                Content::Link("libnvos.so.36.4.3"),
            ),
            (
                "usr/lib/aarch64-linux-gnu/nvidia/libnvrm_gpu.so",
                Content::File(libnvrm.clone(), 0o644),
            ),
        ],
    );
    let tool = tools::read(&bsp).unwrap();
    let files = tools::plan(&bsp, &tool, &Paths::debian()).unwrap();
    let got: Vec<(&str, u32, &str)> = files
        .iter()
        .map(|f| (f.path.as_str(), f.mode, f.member.as_str()))
        .collect();
    assert_eq!(
        got,
        vec![
            ("usr/sbin/nvbootctrl", 0o755, "usr/sbin/nvbootctrl"),
            (
                "usr/lib/aarch64-linux-gnu/libnvos.so",
                0o644,
                "usr/lib/aarch64-linux-gnu/nvidia/libnvos.so.36.4.3"
            ),
            (
                "usr/lib/aarch64-linux-gnu/libnvrm_gpu.so",
                0o644,
                "usr/lib/aarch64-linux-gnu/nvidia/libnvrm_gpu.so"
            ),
        ]
    );
    assert_eq!(files[1].bytes, libnvos);
    assert_eq!(files[2].bytes, libnvrm);
    assert!(files[1]
        .deb
        .ends_with("nvidia-l4t-core_36.4.3-test_arm64.deb"));
    assert!(files[1].path.starts_with(LIBRARY_DEST));
    let note = tools::installed_note(&files);
    assert!(
        note.contains(
            "/usr/lib/aarch64-linux-gnu/libnvos.so from nvidia-l4t-core_36.4.3-test_arm64.deb"
        ),
        "{note}"
    );

    // A library the rootfs already has is not taken from the BSP.
    let mut has = Paths::debian();
    has.0.insert("usr/lib/libnvrm_gpu.so".into());
    let files = tools::plan(&bsp, &tool, &has).unwrap();
    assert_eq!(files.len(), 2, "{:?}", tools::installed_note(&files));

    // A library from the BSP is checked like the tool.
    let d = tempfile::tempdir().unwrap();
    let bsp = bsp_with_tool(d.path(), aarch64_program(&["libnvx86.so"]));
    deb(
        d.path(),
        "nvidia-l4t-x86",
        &[(
            "usr/lib/libnvx86.so",
            Content::File(elf(EM_X86_64, None, &[]), 0o644),
        )],
    );
    let tool = tools::read(&bsp).unwrap();
    let err = tools::plan(&bsp, &tool, &Paths::debian()).unwrap_err();
    assert!(
        matches!(jetson_error(&err), JetsonError::WrongArch { what, .. } if what.starts_with("libnvx86.so")),
        "{err:#}"
    );
}

#[test]
fn the_bsp_fingerprint_follows_its_debs() {
    if !have_dpkg_deb("the_bsp_fingerprint_follows_its_debs") {
        return;
    }
    let d = tempfile::tempdir().unwrap();
    let fixture = synthetic_bsp();
    aperture_sys::Cmd::new("cp")
        .arg("-a")
        .arg(fixture.join("Linux_for_Tegra"))
        .arg(d.path())
        .run()
        .unwrap();
    let root = d.path().join("Linux_for_Tegra");
    let before = Bsp::open(&root, &ORIN).unwrap().fingerprint().unwrap();
    deb(
        &root,
        "nvidia-l4t-core",
        &[("usr/lib/x", Content::File(b"x".to_vec(), 0o644))],
    );
    let after = Bsp::open(&root, &ORIN).unwrap().fingerprint().unwrap();
    assert_ne!(before, after, "a new deb is a changed BSP");
}
