//! Tier 1 (no root, no build): the systemd units the images ship (`overlays/*`, and the test
//! hook of `tests/overlays/*`) have no ordering cycle, counting the `After=` that a target
//! adds to every unit it wants or requires (systemd.target(5), "Default Dependencies"; systemd
//! skips it only for a unit with `DefaultDependencies=no` or one already ordered after that
//! target). A cycle is not an error at boot: systemd breaks it by dropping a start job, and the
//! health gate or the reset's second half silently never ran (found by the VM tier: "Found
//! ordering cycle on aperture-reset-after-health.service/start").

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// What ordering a unit file says.
#[derive(Debug, Default, Clone)]
struct Unit {
    after: BTreeSet<String>,
    before: BTreeSet<String>,
    installed_in: BTreeSet<String>,
    default_dependencies: bool,
}

fn parse(text: &str) -> Unit {
    let mut u = Unit {
        default_dependencies: true,
        ..Unit::default()
    };
    let mut section = String::new();
    for line in text.lines().map(str::trim) {
        if line.starts_with('#') || line.is_empty() {
            continue;
        }
        if let Some(s) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            section = s.to_string();
            continue;
        }
        let Some((key, value)) = line.split_once('=') else {
            continue;
        };
        let words = value.split_whitespace().map(str::to_string);
        match (section.as_str(), key.trim()) {
            ("Unit", "After") => u.after.extend(words),
            ("Unit", "Before") => u.before.extend(words),
            ("Unit", "DefaultDependencies") => u.default_dependencies = value.trim() != "no",
            ("Install", "WantedBy" | "RequiredBy") => u.installed_in.extend(words),
            _ => {}
        }
    }
    u
}

/// "a starts before b" edges, with the targets' implicit ones.
fn edges(units: &BTreeMap<String, Unit>) -> BTreeMap<String, BTreeSet<String>> {
    let mut e: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (name, u) in units {
        for a in &u.after {
            e.entry(a.clone()).or_default().insert(name.clone());
        }
        for b in &u.before {
            e.entry(name.clone()).or_default().insert(b.clone());
        }
        for t in u.installed_in.iter().filter(|t| t.ends_with(".target")) {
            if u.default_dependencies && !u.after.contains(t) {
                e.entry(name.clone()).or_default().insert(t.clone());
            }
        }
    }
    e
}

/// A cycle, if any, as the units along it.
fn cycle(e: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    fn visit(
        n: &str,
        e: &BTreeMap<String, BTreeSet<String>>,
        state: &mut BTreeMap<String, u8>,
        path: &mut Vec<String>,
    ) -> Option<Vec<String>> {
        match state.get(n) {
            Some(2) => return None,
            Some(1) => {
                let at = path.iter().position(|p| p == n).unwrap_or(0);
                let mut c = path[at..].to_vec();
                c.push(n.to_string());
                return Some(c);
            }
            _ => {}
        }
        state.insert(n.to_string(), 1);
        path.push(n.to_string());
        for m in e.get(n).into_iter().flatten() {
            if let Some(c) = visit(m, e, state, path) {
                return Some(c);
            }
        }
        path.pop();
        state.insert(n.to_string(), 2);
        None
    }
    let mut state = BTreeMap::new();
    for n in e.keys() {
        if let Some(c) = visit(n, e, &mut state, &mut Vec::new()) {
            return Some(c);
        }
    }
    None
}

fn unit_files(root: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let Ok(overlays) = std::fs::read_dir(root) else {
        return out;
    };
    for o in overlays.flatten() {
        let dir = o.path().join("usr/lib/systemd/system");
        for f in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            let p = f.path();
            if p.extension()
                .is_some_and(|x| x == "service" || x == "mount")
            {
                out.push(p);
            }
        }
    }
    out
}

#[test]
fn the_shipped_units_have_no_ordering_cycle() {
    let ws = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let mut units = BTreeMap::new();
    for root in [ws.join("overlays"), ws.join("tests/overlays")] {
        for p in unit_files(&root) {
            let name = p.file_name().unwrap().to_string_lossy().into_owned();
            units.insert(name, parse(&std::fs::read_to_string(&p).unwrap()));
        }
    }
    assert!(
        units.contains_key("aperture-health.service")
            && units.contains_key("aperture-update-resume.service")
            && units.contains_key("aperture-reset-after-health.service"),
        "the units were not found: {:?}",
        units.keys().collect::<Vec<_>>()
    );
    assert_eq!(cycle(&edges(&units)), None, "an ordering cycle");
}

#[test]
fn the_cycle_the_vm_tier_found_is_detected() {
    let mut units = BTreeMap::new();
    units.insert(
        "health.service".to_string(),
        parse("[Unit]\nAfter=multi-user.target\n[Install]\nWantedBy=multi-user.target\n"),
    );
    units.insert(
        "resume.service".to_string(),
        parse("[Unit]\nAfter=health.service\n[Install]\nWantedBy=multi-user.target\n"),
    );
    let c = cycle(&edges(&units)).expect("the cycle must be found");
    assert!(c.contains(&"multi-user.target".to_string()), "{c:?}");
    // Ordered after the target explicitly (or DefaultDependencies=no): no implicit edge.
    units.insert(
        "resume.service".to_string(),
        parse(
            "[Unit]\nAfter=multi-user.target health.service\n[Install]\nWantedBy=multi-user.target\n",
        ),
    );
    assert_eq!(cycle(&edges(&units)), None);
}
