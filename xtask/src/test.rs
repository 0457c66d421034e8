//! `cargo xtask test`: every test tier this machine can run, and a plain statement of what was
//! skipped and why.
//!
//! Tier 1 is `cargo test --workspace` (no root, no network). Tiers 2 (privileged: loop devices,
//! mkfs tools, mmdebstrap with the network) and 3 (QEMU boots) live in the `aperture-tests` crate
//! as `#[ignore]`d tests with the reason in the attribute, so a plain `cargo test` lists them as
//! ignored rather than passing them silently; this command runs them with `--ignored` as root.

use std::path::Path;
use std::process::Command;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use xtask::args::TestArgs;

use crate::{cmd, preflight};

/// Run the requested tiers (all by default).
pub fn run(root: &Path, args: &TestArgs) -> Result<()> {
    let tiers: Vec<u8> = if args.tier.is_empty() {
        vec![1, 2, 3]
    } else {
        args.tier.clone()
    };
    if let Some(bad) = tiers.iter().find(|t| !(1..=3).contains(*t)) {
        bail!("there is no test tier {bad}: tiers are 1 (unit), 2 (privileged) and 3 (VM)");
    }
    let root_user = preflight::is_root();
    let mut skipped: Vec<String> = Vec::new();
    let mut ran: Vec<String> = Vec::new();

    // The workspace links libostree, so even tier 1 needs the host packages a build needs.
    let needs = if root_user && tiers.iter().any(|t| *t >= 2) {
        preflight::Needs::test()
    } else {
        preflight::Needs::host_cli()
    };
    preflight::ensure(&needs)?;

    if tiers.contains(&1) {
        let t = Instant::now();
        let mut c = cargo(root);
        c.args(["test", "--workspace"]);
        if let Some(f) = &args.filter {
            c.args(["--", f]);
        }
        cmd::run(&mut c)?;
        ran.push(format!("tier 1 (unit): passed in {:.0?}", t.elapsed()));
    }

    // Tier 3 is the `vm*` test targets of tests/Cargo.toml; tier 2 is every other one.
    let suites = test_targets(root)?;
    for (tier, what) in [
        (2u8, "loop devices, mkfs tools, mmdebstrap with the network"),
        (3u8, "QEMU boots of built images"),
    ] {
        if !tiers.contains(&tier) {
            continue;
        }
        let names: Vec<&String> = suites
            .iter()
            .filter(|s| (tier == 3) == s.starts_with("vm"))
            .collect();
        if !root_user {
            skipped.push(format!(
                "tier {tier} ({}): SKIPPED, needs root for {what}; run `sudo cargo xtask test`",
                names
                    .iter()
                    .map(|s| s.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
            continue;
        }
        for suite in names {
            let t = Instant::now();
            let mut c = cargo(root);
            c.args([
                "test",
                "--package",
                "aperture-tests",
                "--test",
                suite,
                "--",
                "--ignored",
                "--test-threads=1",
                "--nocapture",
            ]);
            if let Some(f) = &args.filter {
                c.arg(f);
            }
            cmd::run(&mut c)?;
            ran.push(format!(
                "tier {tier} ({suite}): passed in {:.0?}",
                t.elapsed()
            ));
        }
    }

    eprintln!("\n== cargo xtask test summary ==");
    for line in ran.iter().chain(skipped.iter()) {
        eprintln!("  {line}");
    }
    Ok(())
}

fn cargo(root: &Path) -> Command {
    let mut c = Command::new(env!("CARGO"));
    c.current_dir(root);
    c
}

/// The `[[test]]` targets of the tests crate.
fn test_targets(root: &Path) -> Result<Vec<String>> {
    let path = root.join("tests/Cargo.toml");
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    let table: toml::Table = text
        .parse()
        .with_context(|| format!("parsing {}", path.display()))?;
    let mut names: Vec<String> = table
        .get("test")
        .and_then(|t| t.as_array())
        .map(|a| {
            a.iter()
                .filter_map(|t| t.get("name").and_then(|n| n.as_str()).map(str::to_string))
                .collect()
        })
        .unwrap_or_default();
    // The privileged suite first: it makes the builds the others reuse.
    names.sort_by_key(|n| (n != "privileged", n.clone()));
    Ok(names)
}
