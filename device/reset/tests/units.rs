//! The boot ordering in overlays/storage, checked on the unit files: the reset journal is
//! finished before anything unlocks config and data, storage is unlocked before local-fs and
//! /var, every unit runs early (DefaultDependencies=no) with the ESP mounted, and /var's
//! upper layer is on the data partition; the second half of a level 2 runs only after the
//! health gate. If `systemd-analyze` is installed, it must accept the files too.

use std::collections::BTreeMap;
use std::path::PathBuf;

fn unit_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../overlays/storage/usr/lib/systemd/system")
}

fn health_unit() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../overlays/units/usr/lib/systemd/system/aperture-health.service")
}

/// key -> every value (space-separated lists split), over all sections.
fn parse(name: &str) -> BTreeMap<String, Vec<String>> {
    let text = std::fs::read_to_string(unit_dir().join(name)).unwrap();
    let mut map: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for line in text.lines() {
        let line = line.trim();
        if line.starts_with('#') || line.starts_with('[') || line.is_empty() {
            continue;
        }
        let (k, v) = line.split_once('=').unwrap();
        let entry = map.entry(k.to_string()).or_default();
        if matches!(k, "Options" | "ExecStart" | "Description") {
            entry.push(v.to_string());
        } else {
            entry.extend(v.split_whitespace().map(str::to_string));
        }
    }
    map
}

fn has(unit: &BTreeMap<String, Vec<String>>, key: &str, value: &str) -> bool {
    unit.get(key).is_some_and(|v| v.iter().any(|x| x == value))
}

#[test]
fn reset_then_button_then_storage_then_var() {
    let resume = parse("aperture-reset-resume.service");
    let button = parse("aperture-reset-button.service");
    let storage = parse("aperture-storage.service");
    let var = parse("var.mount");
    for (name, u) in [
        ("resume", &resume),
        ("button", &button),
        ("storage", &storage),
    ] {
        assert!(has(u, "DefaultDependencies", "no"), "{name}");
        assert!(has(u, "RequiresMountsFor", "/efi"), "{name}: the ESP first");
        assert!(has(u, "Before", "local-fs.target"), "{name}");
        assert!(
            has(u, "Type", "oneshot") && has(u, "RemainAfterExit", "yes"),
            "{name}"
        );
        assert!(has(u, "WantedBy", "local-fs.target"), "{name}");
    }
    assert!(has(&var, "DefaultDependencies", "no"));
    // resume < button < storage < var
    assert!(has(&resume, "Before", "aperture-storage.service"));
    assert!(has(&resume, "Before", "aperture-reset-button.service"));
    assert!(has(&button, "After", "aperture-reset-resume.service"));
    assert!(has(&button, "Before", "aperture-storage.service"));
    assert!(has(&storage, "After", "aperture-reset-resume.service"));
    assert!(has(&storage, "After", "aperture-reset-button.service"));
    assert!(has(&storage, "Before", "var.mount"));
    assert!(has(&var, "Requires", "aperture-storage.service"));
    assert!(has(&var, "After", "aperture-storage.service"));
    let options = &var["Options"][0];
    assert!(options.contains("upperdir=/data/var/upper"), "{options}");
    assert!(options.contains("workdir=/data/var/work"), "{options}");
    assert_eq!(resume["ExecStart"], ["/usr/bin/aperture-reset resume"]);
    assert_eq!(button["ExecStart"], ["/usr/bin/aperture-reset button"]);
    assert_eq!(storage["ExecStart"], ["/usr/bin/aperture-storage setup"]);
    // The journal is in the state store, not a file on the ESP. (The partitions these units
    // wait for, the state partition among them, are the board's: the image builder writes
    // them as drop-ins.)
    assert!(!resume.contains_key("ConditionPathExists"), "{resume:?}");
}

#[test]
fn the_second_half_of_a_reset_waits_for_the_health_gate() {
    let after = parse("aperture-reset-after-health.service");
    assert!(has(&after, "Requires", "aperture-health.service"));
    assert!(has(&after, "After", "aperture-health.service"));
    assert_eq!(after["ExecStart"], ["/usr/bin/aperture-reset resume"]);
    assert!(has(&after, "WantedBy", "multi-user.target"));
    assert!(!has(&after, "DefaultDependencies", "no"), "it runs late");
    let recipe = std::fs::read_to_string(
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../recipes/common.toml"),
    )
    .unwrap();
    assert!(
        recipe.contains("\"aperture-reset-after-health.service\""),
        "enabled in recipes/common.toml"
    );
}

#[test]
fn systemd_analyze_accepts_the_units() {
    let found = std::process::Command::new("sh")
        .args(["-c", "command -v systemd-analyze"])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    if !found {
        eprintln!("SKIPPED: systemd-analyze is not installed");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mut args = vec!["verify".to_string()];
    for name in [
        "aperture-reset-resume.service",
        "aperture-reset-button.service",
        "aperture-reset-after-health.service",
        "aperture-storage.service",
        "var.mount",
    ] {
        std::fs::copy(unit_dir().join(name), dir.path().join(name)).unwrap();
        args.push(dir.path().join(name).display().to_string());
    }
    std::fs::copy(health_unit(), dir.path().join("aperture-health.service")).unwrap();
    let out = std::process::Command::new("systemd-analyze")
        .args(&args)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stderr);
    // The programs are not installed on the build host; everything else must be clean.
    let problems: Vec<&str> = text
        .lines()
        .filter(|l| !l.contains("is not executable: No such file or directory"))
        .filter(|l| !l.trim().is_empty())
        .collect();
    assert!(problems.is_empty(), "systemd-analyze verify: {problems:#?}");
}
