//! `cargo xtask test`: every test tier this machine can run, a table of where the time went,
//! and a plain statement of what was skipped and why.
//!
//! * Tier 1 is `cargo test --workspace` (no root, no network), timed as its build and its run.
//! * Tiers 2 (privileged: loop devices, mkfs tools, mmdebstrap with the network) and 3 (QEMU
//!   boots) are the `[[test]]` targets of the `aperture-tests` crate, `#[ignore]`d with the
//!   reason in the attribute; here they run with `--ignored` as root, one suite at a time.
//!   Suites named `vm*` are tier 3; `full_*` suites (long VM scenarios, the arm64 and Jetson
//!   proofs) run only with `--full`, and so do the tests named `full_*` in the other suites and
//!   the second halves of the long VM stories (`APERTURE_FULL=1`, `aperture_tests::full`).
//!
//! * Tier 4 is the fuzz smoke run: every fuzz target for 20 s (`cargo xtask fuzz --ci`).
//!
//! Disk: the suites share the builds under `target/aperture-tests/main` and `.../arm64` (the VM
//! tier boots what tier 2 built); every other folder there is one suite's scratch, removed
//! after that suite passes, so a run needs room for the shared builds and one suite's scratch.
//! The free space is printed before and after.
//!
//! As root the preflight installs every tool the tiers use first, so `APERTURE_REQUIRE_TOOLS=1`
//! is set: a test that finds its tool missing fails instead of skipping.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use aperture_sys::Cmd;
use xtask::args::TestArgs;

use crate::lanes;
use crate::preflight;

/// One line of the time table.
pub(crate) struct Row {
    pub(crate) tier: u8,
    pub(crate) suite: String,
    pub(crate) outcome: String,
    pub(crate) took: Option<Duration>,
}

/// Run the requested tiers (all by default).
pub fn run(root: &Path, args: &TestArgs) -> Result<()> {
    let tiers: Vec<u8> = if args.tier.is_empty() {
        vec![1, 2, 3, 4]
    } else {
        args.tier.clone()
    };
    if let Some(bad) = tiers.iter().find(|t| !(1..=4).contains(*t)) {
        bail!(
            "there is no test tier {bad}: tiers are 1 (unit), 2 (privileged), 3 (VM) and 4 \
             (fuzz smoke)"
        );
    }
    let free_before = free_space(root);
    if let Some(free) = free_before {
        eprintln!("xtask test: {} free for target/", gib(free));
        let low = if args.full { LOW_DISK_FULL } else { LOW_DISK };
        if free < low && preflight::is_root() {
            eprintln!(
                "xtask test: WARNING: less than {} free; the privileged and VM tiers keep \
                 about that much of builds and disk copies at their peak (`cargo xtask cache \
                 prune` and removing target/aperture-tests free some)",
                gib(low)
            );
        }
    }
    let start = Instant::now();
    let root_user = preflight::is_root();
    let mut rows: Vec<Row> = Vec::new();

    // The workspace links libostree (and its tests compile OpenH264), so even tier 1 needs the host
    // packages a build needs; as root, every tool any tier uses is installed, and a test
    // missing one then fails.
    let t = Instant::now();
    let needs = if root_user {
        preflight::Needs::test()
    } else {
        preflight::Needs::unit_tests()
    };
    preflight::ensure(&needs)?;
    rows.push(Row {
        tier: 0,
        suite: "preflight (host packages)".into(),
        outcome: "done".into(),
        took: Some(t.elapsed()),
    });
    let require_tools = root_user;

    let result = run_tiers(root, args, &tiers, root_user, require_tools, &mut rows);
    print_table(&rows, start.elapsed());
    if let (Some(before), Some(after)) = (free_before, free_space(root)) {
        eprintln!("  disk: {} free before, {} after", gib(before), gib(after));
    }
    if !root_user {
        eprintln!(
            "  tools missing on this machine make their tier-1 tests print SKIPPED; as root \
             `cargo xtask test` installs them and runs every tier"
        );
    }
    result
}

fn run_tiers(
    root: &Path,
    args: &TestArgs,
    tiers: &[u8],
    root_user: bool,
    require_tools: bool,
    rows: &mut Vec<Row>,
) -> Result<()> {
    // The first image build's longest step, compiled on the cycles tier 1 leaves idle (see
    // `programs`); the privileged suite's build then finds it done or waits for the rest.
    let mut programs = if tiers.contains(&1)
        && root_user
        && (tiers.contains(&2) || tiers.contains(&3))
    {
        match crate::programs::start(root, cargo(root, require_tools)) {
            Ok(job) => Some(job),
            Err(e) => {
                eprintln!("xtask test: the device programs' build does not start in the background ({e:#}); the first image build compiles them");
                None
            }
        }
    } else {
        None
    };
    if tiers.contains(&1) {
        let t = Instant::now();
        let c = cargo(root, require_tools).args(["test", "--workspace", "--no-run"]);
        c.run_inherited().inspect_err(|_| {
            rows.push(failed(1, "unit: build", t.elapsed()));
        })?;
        rows.push(Row {
            tier: 1,
            suite: "unit: build".into(),
            outcome: "built".into(),
            took: Some(t.elapsed()),
        });
        let t = Instant::now();
        let mut c = cargo(root, require_tools).args(["test", "--workspace"]);
        if let Some(f) = &args.filter {
            c = c.args(["--", f]);
        }
        c.run_inherited()
            .inspect_err(|_| rows.push(failed(1, "unit: run", t.elapsed())))?;
        rows.push(Row {
            tier: 1,
            suite: "unit: run".into(),
            outcome: "passed".into(),
            took: Some(t.elapsed()),
        });
    }

    let fuzz = xtask::args::FuzzArgs {
        seconds: FUZZ_SMOKE_SECONDS,
        sanitizer: "none".into(),
        ci: true,
        jobs: None,
        targets: Vec::new(),
    };
    // The fuzz build (several minutes of compiling) runs beside tiers 2 and 3 at the lowest
    // priority, on the cycles their guests and tools leave idle; tier 4 waits for it.
    let mut prebuild = if tiers.contains(&4)
        && root_user
        && (tiers.contains(&2) || tiers.contains(&3))
    {
        match crate::fuzz::start_prebuild(root, &fuzz) {
            Ok(child) => Some(Background(child)),
            Err(e) => {
                eprintln!("xtask test: the fuzz build does not start in the background ({e:#}); tier 4 builds it");
                None
            }
        }
    } else {
        None
    };

    let suites = test_targets(root)?;
    let wanted = |name: &str| args.suites.is_empty() || args.suites.iter().any(|s| s == name);
    // The Jetson twin's build (the arm64 Debian base under emulation and the aarch64 device
    // programs: the longest build of the run) goes on beside the other suites; its suite runs
    // last of the VM tier and waits for it.
    let mut twin_prebuild = if args.full && tiers.contains(&3) && root_user && wanted(TWIN_SUITE) {
        match start_twin_prebuild(root) {
            Ok(job) => Some(job),
            Err(e) => {
                eprintln!("xtask test: the twin build does not start in the background ({e:#}); {TWIN_SUITE} builds it");
                None
            }
        }
    } else {
        None
    };
    let mut failures: Vec<String> = Vec::new();
    // The VM tier's CI suites run side by side when they can (see `lanes`); they are taken out
    // of the one-at-a-time loop below as a group, where the first of them would have run.
    let mut vm_group: Vec<String> = suites
        .iter()
        .filter(|n| n.starts_with("vm") && tiers.contains(&3) && wanted(n))
        .cloned()
        .collect();
    let lanes = if root_user && vm_group.len() > 1 {
        lanes::available(args.vm_lanes)
    } else {
        1
    };
    // With lanes, the short host suites that need no network and the fuzz run go after the
    // VM suites, on the core the first lane to finish leaves idle (see `lanes`).
    let fuzz_in_lanes = lanes > 1 && tiers.contains(&4);
    if lanes > 1 {
        vm_group.extend(
            suites
                .iter()
                .filter(|n| HOST_SUITES_IN_LANES.contains(&n.as_str()))
                .filter(|n| tiers.contains(&2) && wanted(n))
                .cloned(),
        );
        if fuzz_in_lanes {
            vm_group.push(lanes::FUZZ_JOB.into());
        }
    }
    // The fuzz job waits for the background fuzz build when a lane takes it.
    let fuzz_build = std::sync::Mutex::new(prebuild.take());
    let mut vm_group_done = false;
    for name in &suites {
        let tier = if name.starts_with("vm") || name.starts_with("full") {
            3
        } else {
            2
        };
        if !tiers.contains(&tier) {
            continue;
        }
        if !wanted(name) {
            continue;
        }
        let skip = |why: &str| Row {
            tier,
            suite: name.clone(),
            outcome: format!("SKIPPED: {why}"),
            took: None,
        };
        if !root_user {
            rows.push(skip(
                "needs root (loop devices, mmdebstrap, QEMU); run `sudo cargo xtask test`",
            ));
            continue;
        }
        if name.starts_with("full") && !args.full {
            rows.push(skip("a long scenario: `cargo xtask test --full` runs it"));
            continue;
        }
        if lanes > 1 && vm_group.contains(name) {
            if tier == 2 {
                // Taken by the VM tier's lanes, after its suites.
                continue;
            }
            if vm_group_done {
                continue;
            }
            vm_group_done = true;
            prune_scratch(root);
            let ctx = lanes::Ctx {
                root,
                lanes,
                full: args.full,
                keep_going: args.keep_going,
                command: &|job: &str| {
                    if job == lanes::FUZZ_JOB {
                        if let Some(Background(child)) = fuzz_build
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .as_mut()
                        {
                            // Its outcome does not matter: the fuzz run builds again (a no-op
                            // when this one succeeded) and reports errors.
                            let _ = child.wait();
                        }
                        fuzz_command(root)
                    } else {
                        suite_command(root, args, job, require_tools)
                    }
                },
                prebuild: &|| vm_prebuild(root, require_tools),
            };
            let outcome = lanes::run(&ctx, &vm_group);
            for r in outcome.rows {
                rows.push(r);
            }
            for f in &outcome.failed {
                keep_failure_logs(root, f);
            }
            prune_scratch(root);
            if !outcome.failed.is_empty() {
                if !args.keep_going {
                    bail!("suites failed: {}", outcome.failed.join(", "));
                }
                failures.extend(outcome.failed);
            }
            continue;
        }
        if name == TWIN_SUITE {
            if let Some(job) = twin_prebuild.take() {
                rows.push(job.wait());
            }
        }
        prune_scratch(root);
        let _ = std::fs::remove_dir_all(root.join("target/aperture-tests").join(FAILED).join(name));
        let t = Instant::now();
        let outcome = suite_command(root, args, name, require_tools).run_inherited();
        if name == "privileged" {
            if let Some(job) = programs.take() {
                rows.push(job.wait());
            }
        }
        match outcome {
            Ok(_) => {
                rows.push(Row {
                    tier,
                    suite: name.clone(),
                    outcome: passed(args.full),
                    took: Some(t.elapsed()),
                });
                prune_scratch(root);
            }
            Err(e) => {
                rows.push(failed(tier, name, t.elapsed()));
                keep_failure_logs(root, name);
                if !args.keep_going {
                    return Err(e.into());
                }
                failures.push(name.clone());
            }
        }
    }
    if let Some(job) = programs.take() {
        rows.push(job.wait());
    }
    let mut prebuild = fuzz_build.into_inner().unwrap_or_else(|e| e.into_inner());
    if tiers.contains(&4) && !(fuzz_in_lanes && vm_group_done) {
        let t = Instant::now();
        if let Some(Background(child)) = prebuild.as_mut() {
            eprintln!("xtask test: waiting for the fuzz build started in the background");
            // Its outcome does not matter here: `fuzz::run` builds again and reports errors.
            let _ = child.wait();
        }
        match crate::fuzz::run(root, &fuzz) {
            Ok(()) => rows.push(Row {
                tier: 4,
                suite: format!("fuzz: every target {FUZZ_SMOKE_SECONDS} s"),
                outcome: "passed".into(),
                took: Some(t.elapsed()),
            }),
            Err(e) => {
                rows.push(failed(4, "fuzz", t.elapsed()));
                if !args.keep_going {
                    return Err(e);
                }
                failures.push("fuzz".into());
            }
        }
    }
    if !failures.is_empty() {
        bail!("suites failed: {}", failures.join(", "));
    }
    Ok(())
}

/// What a suite that passed says in the table.
pub(crate) fn passed(full: bool) -> String {
    if full {
        "passed".into()
    } else {
        "passed (its full_* tests and long halves: --full)".into()
    }
}

/// The command that runs one suite of tiers 2 and 3 (`cargo test --test NAME -- --ignored`).
fn suite_command(root: &Path, args: &TestArgs, name: &str, require_tools: bool) -> Cmd {
    // `--workspace`, not `--package aperture-tests`: Cargo unifies features over the packages
    // it is asked for, so one package alone would rebuild its dependencies with other
    // features than tier 1's build (about 2.5 minutes of CI, measured), and again here.
    let mut c = cargo(root, require_tools).args([
        "test",
        "--workspace",
        "--test",
        name,
        "--",
        "--ignored",
        "--test-threads=1",
        "--nocapture",
    ]);
    if let Some(f) = &args.filter {
        c = c.arg(f);
    }
    if args.full {
        c.env(FULL_ENV, "1")
    } else {
        // Tests named `full_*` (the arm64 and twin proofs, the independent-base
        // reproducibility build, ...) and the second halves of long stories run with --full.
        c.args(["--skip", "full_"])
    }
}

/// The tests crate's program that makes the VM tier's images before its suites run side by
/// side (`tests/examples/vm_prebuild.rs`).
const VM_PREBUILD: &str = "vm_prebuild";

/// Build and run [`VM_PREBUILD`], its output on ours.
fn vm_prebuild(root: &Path, require_tools: bool) -> Result<()> {
    cargo(root, require_tools)
        .args(["build", "--workspace", "--example", VM_PREBUILD])
        .run_inherited()
        .context("building the VM tier's prebuild program")?;
    let exe = target_dir(root).join("debug/examples").join(VM_PREBUILD);
    let mut c = Cmd::new(&exe).current_dir(root);
    if let Some(date) = frozen_source_date(root) {
        c = c.env("SOURCE_DATE_EPOCH", date);
    }
    for (var, lib) in preflight::onnxruntime_env() {
        c = c.env(var, lib);
    }
    if require_tools {
        c = c.env("APERTURE_REQUIRE_TOOLS", "1");
    }
    c.run_inherited()
        .with_context(|| format!("building the VM tier's images ({})", exe.display()))
}

/// The target folder (`CARGO_TARGET_DIR`, else `target/`).
fn target_dir(root: &Path) -> std::path::PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| root.join("target"))
}

/// A process started beside the tiers, killed if the run stops before it is waited for.
pub(crate) struct Background(pub(crate) std::process::Child);

impl Drop for Background {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// The VM suite that boots the Jetson twin, whose build starts in the background.
const TWIN_SUITE: &str = "full_twin_boot";

/// The tests crate's program that makes the twin suite's build (`tests/examples/`).
const TWIN_PREBUILD: &str = "twin_prebuild";

/// The twin's build running beside the other suites.
struct TwinPrebuild {
    child: Background,
    log: std::path::PathBuf,
    started: Instant,
}

impl TwinPrebuild {
    /// Wait for it; its row in the time table. A failure is reported and left to the twin
    /// suite, which builds again and fails on the build's own error.
    fn wait(mut self) -> Row {
        eprintln!("xtask test: waiting for the twin build started in the background");
        let status = self.child.0.wait();
        let took = self.started.elapsed();
        let outcome = match status {
            Ok(s) if s.success() => "built beside the suites above".to_string(),
            other => {
                let tail = std::fs::read_to_string(&self.log).unwrap_or_default();
                let tail: Vec<&str> = tail.lines().rev().take(30).collect();
                eprintln!(
                    "xtask test: the twin build in the background failed ({other:?}); its log is {}, ending:",
                    self.log.display()
                );
                for l in tail.iter().rev() {
                    eprintln!("    {l}");
                }
                format!("FAILED ({}); {TWIN_SUITE} builds again", self.log.display())
            }
        };
        Row {
            tier: 3,
            suite: format!("{TWIN_SUITE}: its build, in the background"),
            outcome,
            took: Some(took),
        }
    }
}

/// Start `tests/examples/twin_prebuild.rs` (built by tier 1's `cargo test --no-run`, else
/// here) with its output in `target/aperture-tests/arm64/twin-prebuild.log`.
fn start_twin_prebuild(root: &Path) -> Result<TwinPrebuild> {
    cargo(root, false)
        .args([
            "build",
            // As for the suites: the workspace's features, so tier 1's build is reused.
            "--workspace",
            "--example",
            TWIN_PREBUILD,
        ])
        .run()
        .context("building the twin's prebuild program")?;
    let exe = target_dir(root).join("debug/examples").join(TWIN_PREBUILD);
    let dir = root.join("target/aperture-tests/arm64");
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let log = dir.join("twin-prebuild.log");
    let file =
        std::fs::File::create(&log).with_context(|| format!("creating {}", log.display()))?;
    let mut c = std::process::Command::new(&exe);
    // The same source date as the suites' (`cargo`), so that the twin suite's build of the
    // same recipe is this one, reused.
    if let Some(date) = frozen_source_date(root) {
        c.env("SOURCE_DATE_EPOCH", date);
    }
    // The ONNX Runtime libraries the suites get: the twin's image ships the aarch64 one (without
    // it the build stopped at its layer and the twin suite built the image itself, later).
    for (var, lib) in preflight::onnxruntime_env() {
        if std::env::var_os(&var).is_none() {
            c.env(var, lib);
        }
    }
    let child = c
        .current_dir(root)
        .stdin(std::process::Stdio::null())
        .stdout(file.try_clone().context("log file")?)
        .stderr(file)
        .spawn()
        .with_context(|| format!("starting {}", exe.display()))?;
    eprintln!(
        "xtask test: building the Jetson twin's image in the background for {TWIN_SUITE}, output in {}",
        log.display()
    );
    Ok(TwinPrebuild {
        child: Background(child),
        log,
        started: Instant::now(),
    })
}

/// Set for the test processes of `--full`: [`aperture_tests::full`] reads it.
const FULL_ENV: &str = "APERTURE_FULL";

/// Seconds each fuzz target runs in tier 4: a smoke test on top of tier 1's replay of every
/// seed and past crash (`fuzz_regressions`); long campaigns are `cargo xtask fuzz`'s job.
const FUZZ_SMOKE_SECONDS: u64 = 5;

/// Tier-2 suites the VM tier's lanes take after the VM suites when they run in lanes: short,
/// and needing no network (a lane has none: their builds reuse the base the privileged
/// suite's build made), so they fill the time the first lane to finish would wait for the
/// other. The privileged suite stays out: its Jetson builds fetch their Debian base.
const HOST_SUITES_IN_LANES: [&str; 5] = ["audit", "flash", "fleet", "rtsp", "storage"];

/// Tier 4's fuzz smoke run as a program (this one, `xtask fuzz --ci`), for a lane: one target
/// at a time, on the core the lane frees while the other lane's guest has the other.
fn fuzz_command(root: &Path) -> Cmd {
    let exe = std::env::current_exe().unwrap_or_else(|_| "xtask".into());
    Cmd::new(exe).current_dir(root).args([
        "fuzz".to_string(),
        "--ci".into(),
        "--jobs".into(),
        "1".into(),
        "--seconds".into(),
        FUZZ_SMOKE_SECONDS.to_string(),
    ])
}

/// Below this much free space the tiers may not fit: the peak of a CI run (every tier, no
/// `--full`) measured on a fresh clone, about 16 GiB of target/ and build cache, rounded up.
const LOW_DISK: u64 = 20 << 30;

/// The same for `--full` (its Jetson and arm64 builds and the twin's disks): measured before
/// the slot cache was bounded and the tamper copies hard-linked, so an upper bound.
const LOW_DISK_FULL: u64 = 30 << 30;

/// The shared build stores under `target/aperture-tests` (see the module doc).
const SHARED: [&str; 3] = ["main", "arm64", FAILED];

/// Where a failing suite's logs are kept (`target/aperture-tests/failed/<suite>/`): the next
/// suite removes the scratch with its disk copies, and with them the consoles that say why.
const FAILED: &str = "failed";

/// Copy every `*.log` of the scratch folders (the guests' consoles, build logs) into
/// `failed/<suite>/`, keeping their relative paths; say where.
fn keep_failure_logs(root: &Path, suite: &str) {
    let dir = root.join("target/aperture-tests");
    let keep = dir.join(FAILED).join(suite);
    let mut kept = 0usize;
    let mut stack: Vec<std::path::PathBuf> = std::fs::read_dir(&dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.file_name() != FAILED)
        .map(|e| e.path())
        .collect();
    while let Some(path) = stack.pop() {
        if path.is_dir() {
            stack.extend(
                std::fs::read_dir(&path)
                    .into_iter()
                    .flatten()
                    .flatten()
                    .map(|e| e.path()),
            );
        } else if path.extension().is_some_and(|x| x == "log") {
            let Ok(rel) = path.strip_prefix(&dir) else {
                continue;
            };
            let to = keep.join(rel);
            if let Some(parent) = to.parent() {
                let _ = std::fs::create_dir_all(parent);
            }
            if std::fs::copy(&path, &to).is_ok() {
                kept += 1;
            }
        }
    }
    if kept > 0 {
        eprintln!(
            "xtask test: {suite} failed; its {kept} log files are kept in {}",
            keep.display()
        );
    }
}

/// Remove every suite's scratch under `target/aperture-tests` (all but [`SHARED`], which
/// includes the kept logs of failed suites).
fn prune_scratch(root: &Path) {
    let dir = root.join("target/aperture-tests");
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name();
        if SHARED.iter().any(|s| name == *s) {
            continue;
        }
        let path = e.path();
        let removed = if path.is_dir() {
            std::fs::remove_dir_all(&path)
        } else {
            std::fs::remove_file(&path)
        };
        if let Err(err) = removed {
            eprintln!(
                "xtask test: could not remove the scratch {}: {err}",
                path.display()
            );
        }
    }
}

/// Free bytes on the file system that holds `target/`.
fn free_space(root: &Path) -> Option<u64> {
    let target = root.join("target");
    let at = if target.exists() {
        target
    } else {
        root.to_path_buf()
    };
    let out = Cmd::new("df")
        .args(["--output=avail", "-B1"])
        .arg(&at)
        .text()
        .ok()?;
    out.lines().nth(1)?.trim().parse().ok()
}

fn gib(bytes: u64) -> String {
    format!("{:.1} GiB", bytes as f64 / (1u64 << 30) as f64)
}

pub(crate) fn failed(tier: u8, suite: &str, took: Duration) -> Row {
    Row {
        tier,
        suite: suite.into(),
        outcome: "FAILED".into(),
        took: Some(took),
    }
}

fn print_table(rows: &[Row], total: Duration) {
    let mmss = |d: Duration| format!("{}:{:02}", d.as_secs() / 60, d.as_secs() % 60);
    let width = rows.iter().map(|r| r.suite.len()).max().unwrap_or(5).max(5);
    eprintln!("\n== cargo xtask test: where the time went ==");
    eprintln!("| tier | {:<width$} | time  | outcome", "suite");
    eprintln!("|------|-{}-|-------|--------", "-".repeat(width));
    let mut per_tier = [Duration::ZERO; 5];
    for r in rows {
        if let Some(t) = r.took {
            per_tier[usize::from(r.tier)] += t;
        }
        eprintln!(
            "| {:>4} | {:<width$} | {:>5} | {}",
            if r.tier == 0 {
                "-".to_string()
            } else {
                r.tier.to_string()
            },
            r.suite,
            r.took.map(mmss).unwrap_or_else(|| "-".into()),
            r.outcome
        );
    }
    for (tier, t) in per_tier.iter().enumerate().skip(1) {
        if !t.is_zero() {
            eprintln!("  tier {tier}: {}", mmss(*t));
        }
    }
    eprintln!("  total: {}", mmss(total));
}

fn cargo(root: &Path, require_tools: bool) -> Cmd {
    // Without xtask's own package variables, as every nested cargo (`Cmd::cargo`): the runs
    // of one target folder must all see the same environment, or ring's build script reruns
    // and everything above it is compiled again.
    let mut c = Cmd::cargo().current_dir(root);
    // One source date for every build of the run (the last commit's when it started), so a
    // commit made while the tiers run cannot make two builds of one test differ.
    if let Some(date) = frozen_source_date(root) {
        c = c.env("SOURCE_DATE_EPOCH", date);
    }
    // The pinned ONNX Runtime library (device/runtime's tests); as root, the preflight put it
    // there, elsewhere the tests skip when it is absent. The arm64 one too, when fetched: the
    // arm64 image builds (and the cross-built runtime's self-test) install and load it.
    for (var, lib) in preflight::onnxruntime_env() {
        c = c.env(var, lib);
    }
    if require_tools {
        c.env("APERTURE_REQUIRE_TOOLS", "1")
    } else {
        c
    }
}

/// `SOURCE_DATE_EPOCH` as given, else the last commit's time, read once per run.
fn frozen_source_date(root: &Path) -> Option<String> {
    static DATE: std::sync::OnceLock<Option<String>> = std::sync::OnceLock::new();
    DATE.get_or_init(|| {
        std::env::var("SOURCE_DATE_EPOCH").ok().or_else(|| {
            Cmd::new("git")
                .args(["log", "-1", "--format=%ct"])
                .current_dir(root)
                .text()
                .ok()
                .map(|t| t.trim().to_string())
                .filter(|t| !t.is_empty())
        })
    })
    .clone()
}

/// The `[[test]]` targets of the tests crate: the privileged suite first (it makes the builds
/// the others reuse), then the other tier-2 suites, then the VM suites.
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
    // The twin suite last of the VM tier: its build runs in the background until then.
    names.sort_by_key(|n| {
        (
            n != "privileged",
            n.starts_with("vm") || n.starts_with("full"),
            n.starts_with("full"),
            n == TWIN_SUITE,
            n.clone(),
        )
    });
    Ok(names)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_twin_boot_suite_runs_last_so_its_background_build_has_the_longest_start() {
        let root = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(root.path().join("tests")).unwrap();
        let names = [
            "vm_boot",
            "full_twin",
            "storage",
            "full_twin_boot",
            "privileged",
            "vm_update",
            "audit",
            "full_powercut",
            "vm_storage",
        ];
        let toml: String = names
            .iter()
            .map(|n| format!("[[test]]\nname = \"{n}\"\npath = \"tests/{n}.rs\"\n\n"))
            .collect();
        std::fs::write(root.path().join("tests/Cargo.toml"), toml).unwrap();
        assert_eq!(
            test_targets(root.path()).unwrap(),
            [
                "privileged",
                "audit",
                "storage",
                "vm_boot",
                "vm_storage",
                "vm_update",
                "full_powercut",
                "full_twin",
                "full_twin_boot",
            ]
        );
    }

    #[test]
    fn a_failed_suites_logs_outlive_the_next_suites_pruning() {
        let root = tempfile::tempdir().unwrap();
        let scratch = root.path().join("target/aperture-tests");
        let vm = scratch.join("vm/storage-reset");
        std::fs::create_dir_all(&vm).unwrap();
        std::fs::write(vm.join("boot2-first-finished.log"), "console").unwrap();
        std::fs::write(vm.join("disk.img"), "big").unwrap();
        std::fs::create_dir_all(scratch.join("main")).unwrap();
        keep_failure_logs(root.path(), "vm_storage");
        prune_scratch(root.path());
        let kept = scratch.join("failed/vm_storage/vm/storage-reset/boot2-first-finished.log");
        assert_eq!(std::fs::read_to_string(kept).unwrap(), "console");
        assert!(!scratch
            .join("failed/vm_storage/vm/storage-reset/disk.img")
            .exists());
        assert!(!scratch.join("vm").exists(), "the scratch itself is pruned");
        assert!(scratch.join("main").exists());
    }
}
