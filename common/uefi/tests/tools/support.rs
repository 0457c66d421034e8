//! What the tool tests share: the real systemd stub (or a printed skip), tool lookup through
//! `aperture_sys::tool` (a missing tool fails under `APERTURE_REQUIRE_TOOLS=1`), the one
//! helper that runs a command, and the research scripts' paths.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

/// The host's x86-64 systemd 252 stub (Debian package systemd-boot-efi), or `None` after
/// printing why the test is skipped (a panic under `APERTURE_REQUIRE_TOOLS=1`).
pub fn stub(test: &str) -> Option<Vec<u8>> {
    let path = Path::new("/").join(aperture_uefi::STUB_X86_64);
    match std::fs::read(&path) {
        Ok(bytes) => Some(bytes),
        Err(e) => {
            let why = format!(
                "{test}: cannot read the systemd stub {} ({e}); install Debian package \
                 systemd-boot-efi",
                path.display()
            );
            if aperture_sys::tool::required() {
                panic!("APERTURE_REQUIRE_TOOLS=1 and the stub is missing: {why}");
            }
            eprintln!("SKIPPED: {why}");
            None
        }
    }
}

/// `program`'s path, or `None` after printing `SKIPPED`.
pub fn tool(program: &str, package: &str, test: &str) -> Option<PathBuf> {
    aperture_sys::tool::for_test(program, package, test)
}

/// A script in docs/research/issue-18, or `None` after printing `SKIPPED` (the folder may be
/// pruned one day; the tests then say so instead of failing).
pub fn research(script: &str, test: &str) -> Option<PathBuf> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../docs/research/issue-18")
        .join(script);
    if path.is_file() {
        return Some(path);
    }
    eprintln!("SKIPPED: {test}: {} is gone", path.display());
    None
}

/// Runs `cmd` with stdin null and returns its output; panics with the command line, the
/// status and the tail of stderr when it fails.
pub fn run(cmd: &mut Command) -> Output {
    let line = format!("{cmd:?}");
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("starting {line}: {e}"));
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        let tail: Vec<&str> = stderr.lines().rev().take(20).collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        panic!("{line}: {}\n{}", out.status, tail.join("\n"));
    }
    out
}

/// [`run`]'s stdout as text.
pub fn run_text(cmd: &mut Command) -> String {
    String::from_utf8(run(cmd).stdout).expect("tool output is UTF-8")
}

/// Fake UKI sections in build-uki.sh's order (.linux last), with a kernel of `kernel_len`
/// bytes. The contents are patterns, so a misplaced byte shows.
pub fn fake_sections(kernel_len: usize) -> Vec<(&'static str, Vec<u8>)> {
    let pattern = |len: usize, seed: u32| -> Vec<u8> {
        (0..len as u32)
            .map(|i| (i.wrapping_mul(2_654_435_761).wrapping_add(seed) >> 13) as u8)
            .collect()
    };
    vec![
        (".osrel", b"ID=aperture\nVERSION_ID=1\n".to_vec()),
        (
            ".cmdline",
            b"root=PARTLABEL=rootfs_a aperture.slot=a quiet".to_vec(),
        ),
        (".initrd", pattern(70_001, 1)),
        (".linux", pattern(kernel_len, 2)),
    ]
}

/// `fake_sections` as the borrowed pairs `assemble_uki` takes.
pub fn pairs<'a>(sections: &'a [(&'static str, Vec<u8>)]) -> Vec<(&'static str, &'a [u8])> {
    sections.iter().map(|(n, d)| (*n, d.as_slice())).collect()
}
