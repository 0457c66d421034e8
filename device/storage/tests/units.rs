//! overlays/storage's unit for aperture-storage, checked on the files: the wait for the TPM's
//! device (issue 12.4) is bounded and the job outlives it, and `systemd-analyze verify`
//! accepts it with its drop-ins (skipped without systemd-analyze, failed with
//! `APERTURE_REQUIRE_TOOLS=1`). The drop-ins that order it after the board's partitions and
//! its TPM are generated from the recipe by the image builder, and tested there.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

fn unit_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../overlays/storage/usr/lib/systemd/system")
}

/// key -> every value (space-separated lists split), over all sections.
fn parse(path: &Path) -> BTreeMap<String, Vec<String>> {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut map: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for line in text.lines().map(str::trim) {
        if line.starts_with('#') || line.starts_with('[') || line.is_empty() {
            continue;
        }
        let (k, v) = line.split_once('=').unwrap();
        map.entry(k.into())
            .or_default()
            .extend(v.split_whitespace().map(str::to_string));
    }
    map
}

fn has(unit: &BTreeMap<String, Vec<String>>, key: &str, value: &str) -> bool {
    unit.get(key).is_some_and(|v| v.iter().any(|x| x == value))
}

fn seconds(v: &str) -> u64 {
    if let Some(m) = v.strip_suffix("min") {
        m.parse::<u64>().unwrap() * 60
    } else {
        v.trim_end_matches('s').parse().unwrap()
    }
}

#[test]
fn the_wait_for_the_tpm_is_bounded_and_the_job_outlives_it() {
    let dir = unit_dir();
    let unit = parse(&dir.join("aperture-storage.service"));
    let device = parse(&dir.join("dev-tpmrm0.device.d/aperture-timeout.conf"));
    let wait = seconds(&device["JobRunningTimeoutSec"][0]);
    assert!(
        (30..=120).contains(&wait),
        "the TPM wait is bounded: {wait} s"
    );
    let job = seconds(&unit["TimeoutStartSec"][0]);
    assert!(job > 2 * wait, "the job outlives both TPM waits: {job} s");
    assert!(has(&unit, "Before", "var.mount"));
}

#[test]
fn systemd_analyze_accepts_the_unit_and_its_drop_ins() {
    let found = std::process::Command::new("sh")
        .args(["-c", "command -v systemd-analyze"])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    if !found {
        if std::env::var("APERTURE_REQUIRE_TOOLS").as_deref() == Ok("1") {
            panic!("systemd-analyze is not installed and APERTURE_REQUIRE_TOOLS=1");
        }
        eprintln!("SKIPPED: systemd-analyze is not installed");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let copy = |rel: &str| {
        let to = tmp.path().join(rel);
        std::fs::create_dir_all(to.parent().unwrap()).unwrap();
        std::fs::copy(unit_dir().join(rel), &to).unwrap();
    };
    copy("aperture-storage.service");
    copy("dev-tpmrm0.device.d/aperture-timeout.conf");
    let out = std::process::Command::new("systemd-analyze")
        .arg("verify")
        .arg(tmp.path().join("aperture-storage.service"))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stderr);
    // The program is not installed on the build host; everything else must be clean.
    let problems: Vec<&str> = text
        .lines()
        .filter(|l| !l.contains("is not executable: No such file or directory"))
        .filter(|l| !l.trim().is_empty())
        .collect();
    assert!(problems.is_empty(), "systemd-analyze verify: {problems:#?}");
}
