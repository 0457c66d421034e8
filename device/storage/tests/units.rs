//! overlays/storage's unit for aperture-storage, checked on the files: it starts only after
//! the TPM's device (issue 12.4) with that wait bounded, after the partitions it needs
//! (config, data and the device state), and `systemd-analyze verify` accepts it with its
//! drop-ins (skipped without systemd-analyze, failed with `APERTURE_REQUIRE_TOOLS=1`).

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
fn storage_starts_after_the_tpm_with_the_wait_bounded() {
    let dir = unit_dir();
    let unit = parse(&dir.join("aperture-storage.service"));
    let tpm = parse(&dir.join("aperture-storage.service.d/tpm.conf"));
    for target in ["dev-tpmrm0.device", "tpm2.target"] {
        assert!(
            has(&tpm, "Wants", target) && has(&tpm, "After", target),
            "{target}"
        );
    }
    let device = parse(&dir.join("dev-tpmrm0.device.d/aperture-timeout.conf"));
    let wait = seconds(&device["JobRunningTimeoutSec"][0]);
    assert!(
        (30..=120).contains(&wait),
        "the TPM wait is bounded: {wait} s"
    );
    let job = seconds(&unit["TimeoutStartSec"][0]);
    assert!(job > 2 * wait, "the job outlives both TPM waits: {job} s");
    for part in ["config", "data", "aperture_state"] {
        let name = format!(r"dev-disk-by\x2dpartlabel-{part}.device");
        assert!(
            has(&unit, "Wants", &name) && has(&unit, "After", &name),
            "{name}"
        );
    }
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
    copy("aperture-storage.service.d/tpm.conf");
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
