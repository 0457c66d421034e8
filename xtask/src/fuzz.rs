//! `cargo xtask fuzz`: build the fuzz targets in `fuzz/` (libFuzzer through `libfuzzer-sys`) and
//! run each for a fixed time, seeded from `fuzz/seeds/<target>`, then print a table of what each
//! run did. A crash fails the command, naming the saved input and the command that reproduces it.
//!
//! * The build is cargo-fuzz's, without cargo-fuzz: `cargo build --release` of the fuzz crate
//!   with the same coverage instrumentation flags (`sancov-module`, inline 8-bit counters,
//!   PC table, compare tracing, stack depth, `--cfg fuzzing`), see [`rustflags`]. Installing
//!   cargo-fuzz cost a fresh CI machine about three minutes for no other gain; the layout of
//!   `fuzz/` stays cargo-fuzz's, so `cargo fuzz run` works as well for those who have it.
//! * The targets build with the nightly toolchain through rustup. Without one, the stable
//!   compiler is used with `RUSTC_BOOTSTRAP=1`, said loudly: fine for a fuzz build, never for
//!   anything shipped.
//! * `--sanitizer none` (the default) keeps builds quick: the parsers are safe Rust, whose
//!   bounds, overflow and debug-assertion checks stay on; the fuzz crate's allocator turns an
//!   allocation sized by an untrusted length into a crash. `--sanitizer address` adds
//!   AddressSanitizer, for long campaigns: the Rust code is instrumented; zstd's C code (built
//!   by its build script, not instrumented) is watched through the allocator and libc. Each
//!   sanitizer builds into its own folder (`fuzz/target/<sanitizer>`, `ci-<sanitizer>`), so
//!   switching rebuilds nothing.
//! * The working corpus grows in `fuzz/corpus/<target>` and crashes land in
//!   `fuzz/artifacts/<target>/`; both are ignored by git. Each run's libFuzzer output is kept in
//!   `fuzz/target/logs/<target>.log`.

use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use xtask::args::FuzzArgs;

use aperture_sys::cmd::command_line;

use crate::preflight;

/// What one target's run did, from libFuzzer's output.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Stats {
    /// Seconds it ran.
    pub seconds: f64,
    /// Inputs executed.
    pub execs: u64,
    /// Coverage counters hit (`cov:`).
    pub cov: u64,
    /// Features seen (`ft:`).
    pub ft: u64,
    /// Inputs in the corpus at the end (`corp:`).
    pub corpus: u64,
    /// The input libFuzzer saved for a crash, leak or timeout, if any.
    pub artifact: Option<String>,
    /// What went wrong, when something did: the panic message or libFuzzer's error line.
    pub reason: Option<String>,
}

/// The chosen targets and how to build them.
struct Plan {
    chosen: Vec<String>,
    toolchain: Toolchain,
    target_dir: PathBuf,
    bin_dir: PathBuf,
    build: Command,
}

/// Check the targets named, install the packages the build needs, and prepare its command.
fn plan(root: &Path, args: &FuzzArgs) -> Result<Plan> {
    let fuzz_dir = root.join("fuzz");
    let known = targets(&fuzz_dir)?;
    let chosen: Vec<String> = if args.targets.is_empty() {
        known.clone()
    } else {
        for t in &args.targets {
            if !known.contains(t) {
                bail!(
                    "there is no fuzz target {t:?}; the targets are: {}",
                    known.join(", ")
                );
            }
        }
        args.targets.clone()
    };
    // The targets link the host crates, and so libostree; libFuzzer itself is C++.
    let mut needs = preflight::Needs::host_cli();
    needs.packages.insert("g++");
    if args.ci {
        needs.packages.insert("libzstd-dev");
    }
    preflight::ensure(&needs)?;
    let toolchain = Toolchain::find();

    let sanitizer = args.sanitizer.as_str();
    let flavour = if args.ci {
        format!("ci-{sanitizer}")
    } else {
        sanitizer.to_string()
    };
    let target_dir = fuzz_dir.join("target").join(&flavour);
    let triple = format!("{}-unknown-linux-gnu", std::env::consts::ARCH);
    let mut build = toolchain.cargo();
    build.current_dir(&fuzz_dir).args([
        "build",
        "--manifest-path",
        "Cargo.toml",
        "--release",
        // As cargo-fuzz: line tables, so a crash's backtrace names lines.
        "--config",
        "profile.release.debug=\"line-tables-only\"",
        // `--target` keeps RUSTFLAGS away from build scripts and proc macros.
        "--target",
        &triple,
    ]);
    build.arg("--target-dir").arg(&target_dir);
    build.env("RUSTFLAGS", rustflags(&args.sanitizer, args.ci));
    if args.ci {
        // Measured on 2 cores: a cold build of 3.7 minutes instead of 5.3. The bundled zstd is
        // the longest C compile (about a minute); Debian's libzstd serves as well here.
        build.env("CARGO_PROFILE_RELEASE_OPT_LEVEL", "1");
        build.env("ZSTD_SYS_USE_PKG_CONFIG", "1");
    }
    match chosen.as_slice() {
        [only] => build.args(["--bin", only]),
        _ => build.arg("--bins"),
    };
    let bin_dir = target_dir.join(&triple).join("release");
    Ok(Plan {
        chosen,
        toolchain,
        target_dir,
        bin_dir,
        build,
    })
}

/// Start building the fuzz targets in the background at the lowest CPU priority (`nice 19`),
/// its output in `fuzz/target/logs/prebuild.log`: `cargo xtask test` starts it while the VM
/// tier runs, so that the fuzz tier finds its build mostly done, using only cycles the VM
/// guests leave idle. [`run`] then builds again, which finishes what is left (and shows any
/// error in full).
pub fn start_prebuild(root: &Path, args: &FuzzArgs) -> Result<Child> {
    let plan = plan(root, args)?;
    let logs = root.join("fuzz/target/logs");
    fs::create_dir_all(&logs).with_context(|| format!("creating {}", logs.display()))?;
    let log_path = logs.join("prebuild.log");
    let log =
        File::create(&log_path).with_context(|| format!("creating {}", log_path.display()))?;
    let mut c = Command::new("nice");
    c.args(["-n", "19"])
        .arg(plan.build.get_program())
        .args(plan.build.get_args());
    if let Some(dir) = plan.build.get_current_dir() {
        c.current_dir(dir);
    }
    for (k, v) in plan.build.get_envs() {
        match v {
            Some(v) => c.env(k, v),
            None => c.env_remove(k),
        };
    }
    c.stdin(Stdio::null())
        .stdout(log.try_clone().context("log file")?)
        .stderr(log);
    let shown = command_line(&c);
    eprintln!(
        "xtask fuzz: building the fuzz targets in the background ({}), output in {}",
        plan.toolchain.describe(),
        log_path.display()
    );
    c.spawn().with_context(|| format!("starting `{shown}`"))
}

/// Build and run the fuzz targets; fail if any crashed.
pub fn run(root: &Path, args: &FuzzArgs) -> Result<()> {
    let fuzz_dir = root.join("fuzz");
    let sanitizer = args.sanitizer.as_str();
    let Plan {
        chosen,
        toolchain,
        target_dir,
        bin_dir,
        mut build,
    } = plan(root, args)?;
    if !bin_dir.join(&chosen[0]).exists() {
        eprintln!(
            "xtask fuzz: compiling the fuzz targets and their ~200 crates with coverage \
             instrumentation ({}, sanitizer {sanitizer}): several minutes the first time",
            toolchain.describe()
        );
    }
    let t = Instant::now();
    run_command(&mut build).context("building the fuzz targets")?;
    let build_time = t.elapsed();

    let logs = target_dir.parent().unwrap_or(&fuzz_dir).join("logs");
    fs::create_dir_all(&logs).with_context(|| format!("creating {}", logs.display()))?;
    let jobs = args.jobs.unwrap_or(if args.ci {
        std::thread::available_parallelism().map_or(1, usize::from)
    } else {
        1
    });
    let rows = run_all(&fuzz_dir, &bin_dir, &logs, &chosen, args.seconds, jobs)?;
    print_table(&rows, build_time);

    let crashes: Vec<String> = rows
        .iter()
        .filter_map(|(name, s)| {
            let artifact = s.artifact.as_ref()?;
            Some(format!(
                "{name}: {}\n    input: {artifact}\n    reproduce: {}/{name} fuzz/{artifact}",
                s.reason.as_deref().unwrap_or("crashed"),
                relative(root, &bin_dir),
            ))
        })
        .collect();
    if !crashes.is_empty() {
        bail!(
            "{} fuzz target(s) crashed (full output in {}):\n  {}",
            crashes.len(),
            logs.display(),
            crashes.join("\n  ")
        );
    }
    Ok(())
}

/// The `[[bin]]` names of the fuzz crate, in file order.
pub fn targets(fuzz_dir: &Path) -> Result<Vec<String>> {
    let path = fuzz_dir.join("Cargo.toml");
    let text = fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    let table: toml::Table = text
        .parse()
        .with_context(|| format!("parsing {}", path.display()))?;
    Ok(table
        .get("bin")
        .and_then(|b| b.as_array())
        .map(|bins| {
            bins.iter()
                .filter_map(|b| b.get("name")?.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default())
}

/// Which compiler builds the targets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Toolchain {
    /// rustup's `nightly`.
    Nightly,
    /// The default (stable) compiler with `RUSTC_BOOTSTRAP=1`.
    StableBootstrap,
}

impl Toolchain {
    fn find() -> Toolchain {
        let listed = Command::new("rustup")
            .args(["toolchain", "list"])
            .stdin(Stdio::null())
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default();
        if has_nightly(&listed) {
            return Toolchain::Nightly;
        }
        static WARNED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
        if WARNED.swap(true, std::sync::atomic::Ordering::Relaxed) {
            return Toolchain::StableBootstrap;
        }
        eprintln!(
            "\nxtask fuzz: WARNING: NO NIGHTLY TOOLCHAIN (`rustup toolchain install nightly` \
             adds one).\nxtask fuzz: WARNING: BUILDING WITH THE STABLE COMPILER AND \
             RUSTC_BOOTSTRAP=1, which unlocks nightly-only flags: acceptable for fuzzing, never \
             for anything that ships.\n"
        );
        Toolchain::StableBootstrap
    }

    /// `cargo` through rustup's proxy (not the cargo that built xtask, which is pinned to the
    /// stable toolchain), with the toolchain chosen.
    fn cargo(self) -> Command {
        let mut c = Command::new("cargo");
        for (key, _) in std::env::vars_os() {
            if aperture_sys::cmd::is_package_env(&key) {
                c.env_remove(key);
            }
        }
        match self {
            Toolchain::Nightly => c.env("RUSTUP_TOOLCHAIN", "nightly"),
            Toolchain::StableBootstrap => c.env("RUSTC_BOOTSTRAP", "1"),
        };
        c
    }

    fn describe(self) -> &'static str {
        match self {
            Toolchain::Nightly => "nightly toolchain",
            Toolchain::StableBootstrap => "STABLE compiler with RUSTC_BOOTSTRAP=1",
        }
    }
}

/// The compiler flags of cargo-fuzz's default build (`cargo fuzz build`, 0.13): coverage
/// instrumentation for libFuzzer, `--cfg fuzzing`, one codegen unit (sixteen for `--ci`, a
/// quicker build), plus the sanitizer and debug assertions (with overflow checks), which keep
/// a safe-Rust parser's silent wrap-arounds from passing as fine.
pub fn rustflags(sanitizer: &str, ci: bool) -> String {
    let mut flags = vec![
        "-Cpasses=sancov-module",
        "-Cllvm-args=-sanitizer-coverage-level=4",
        "-Cllvm-args=-sanitizer-coverage-inline-8bit-counters",
        "-Cllvm-args=-sanitizer-coverage-pc-table",
        "-Cllvm-args=-sanitizer-coverage-trace-compares",
        "-Cllvm-args=-simplifycfg-branch-fold-threshold=0",
        "--cfg",
        "fuzzing",
        "-Cdebug-assertions",
        "-Coverflow-checks",
    ];
    if cfg!(target_os = "linux") {
        flags.push("-Cllvm-args=-sanitizer-coverage-stack-depth");
    }
    if sanitizer == "address" {
        flags.push("-Zsanitizer=address");
    }
    flags.push(if ci {
        "-Ccodegen-units=16"
    } else {
        "-Ccodegen-units=1"
    });
    let mut out = flags.join(" ");
    if let Ok(extra) = std::env::var("RUSTFLAGS") {
        out.push(' ');
        out.push_str(&extra);
    }
    out
}

/// Whether `rustup toolchain list` output names a nightly toolchain.
fn has_nightly(listed: &str) -> bool {
    listed
        .lines()
        .any(|l| l.trim_start().starts_with("nightly"))
}

/// A target's libFuzzer process.
struct Running {
    name: String,
    child: Child,
    started: Instant,
    log: PathBuf,
    shown: String,
}

/// Start one target for `seconds`: its working corpus first (libFuzzer adds new inputs to the
/// first folder only), then its seeds; its output goes to `logs/<name>.log`.
fn start_target(
    fuzz_dir: &Path,
    bin_dir: &Path,
    logs: &Path,
    name: &str,
    seconds: u64,
) -> Result<Running> {
    let corpus = fuzz_dir.join("corpus").join(name);
    let artifacts = fuzz_dir.join("artifacts").join(name);
    for dir in [&corpus, &artifacts] {
        fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let log_path = logs.join(format!("{name}.log"));
    let log =
        File::create(&log_path).with_context(|| format!("creating {}", log_path.display()))?;
    let mut c = Command::new(bin_dir.join(name));
    c.current_dir(fuzz_dir.parent().unwrap_or(fuzz_dir))
        .arg(format!("-max_total_time={seconds}"))
        .arg("-print_final_stats=1")
        // libFuzzer's default is 20 minutes; a parser that takes seconds on one input is a bug.
        .arg("-timeout=10")
        .arg(format!(
            "-artifact_prefix={}/",
            relative(fuzz_dir, &artifacts)
        ))
        .arg(relative(fuzz_dir, &corpus))
        .arg(relative(fuzz_dir, &fuzz_dir.join("seeds").join(name)))
        // As `cargo fuzz run` (read by AddressSanitizer builds only): the Rust standard library
        // and the instrumented crates may define one global twice, which is no bug of ours.
        .env("ASAN_OPTIONS", asan_options())
        .stdin(Stdio::null())
        .stdout(log.try_clone().context("log file")?)
        .stderr(log);
    let shown = command_line(&c);
    eprintln!("xtask fuzz: {name} for {seconds} s");
    let child = c.spawn().with_context(|| format!("starting `{shown}`"))?;
    Ok(Running {
        name: name.to_string(),
        child,
        started: Instant::now(),
        log: log_path,
        shown,
    })
}

/// `ASAN_OPTIONS` for a target: the caller's, plus `detect_odr_violation=0`.
fn asan_options() -> String {
    match std::env::var("ASAN_OPTIONS") {
        Ok(o) if !o.is_empty() => format!("{o}:detect_odr_violation=0"),
        _ => "detect_odr_violation=0".to_string(),
    }
}

/// Run `names` at most `jobs` at a time; their stats in the order of `names`.
fn run_all(
    fuzz_dir: &Path,
    bin_dir: &Path,
    logs: &Path,
    names: &[String],
    seconds: u64,
    jobs: usize,
) -> Result<Vec<(String, Stats)>> {
    let mut queue = names.iter();
    let mut running: Vec<Running> = Vec::new();
    let mut done: Vec<(String, Stats)> = Vec::new();
    loop {
        while running.len() < jobs.max(1) {
            match queue.next() {
                Some(name) => running.push(start_target(fuzz_dir, bin_dir, logs, name, seconds)?),
                None => break,
            }
        }
        if running.is_empty() {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
        let mut i = 0;
        while i < running.len() {
            match running[i]
                .child
                .try_wait()
                .context("waiting for a fuzz target")?
            {
                Some(status) => {
                    let r = running.swap_remove(i);
                    done.push((r.name.clone(), finish(&r, status)?));
                }
                None => i += 1,
            }
        }
    }
    done.sort_by_key(|(n, _)| names.iter().position(|m| m == n));
    Ok(done)
}

/// The stats of a finished run; an error if it failed without saving an input.
fn finish(r: &Running, status: ExitStatus) -> Result<Stats> {
    let output =
        fs::read_to_string(&r.log).with_context(|| format!("reading {}", r.log.display()))?;
    let mut stats = parse_output(&output, r.started.elapsed());
    if status.success() {
        stats.artifact = None;
    } else if stats.artifact.is_none() {
        bail!(
            "`{}` failed ({status}) without saving an input; see {}",
            r.shown,
            r.log.display()
        );
    }
    Ok(stats)
}

/// `path` relative to the workspace root (the folder above `fuzz_dir`), for short commands.
fn relative(fuzz_dir: &Path, path: &Path) -> String {
    let root = fuzz_dir.parent().unwrap_or(fuzz_dir);
    path.strip_prefix(root)
        .unwrap_or(path)
        .to_string_lossy()
        .into_owned()
}

/// Reads libFuzzer's output: its last status line (`#N ... cov: C ft: F corp: U/S ...`), the
/// `Done N runs in S second(s)` line, and for a crash the saved input and the reason.
pub fn parse_output(output: &str, elapsed: Duration) -> Stats {
    let mut stats = Stats {
        seconds: elapsed.as_secs_f64(),
        ..Stats::default()
    };
    let lines: Vec<&str> = output.lines().collect();
    if let Some(last) = lines
        .iter()
        .rev()
        .find(|l| l.starts_with('#') && l.contains(" cov: "))
    {
        let field = |key: &str| -> Option<u64> {
            let rest = last.split(key).nth(1)?;
            let value = rest.split_whitespace().next()?;
            value.split('/').next()?.parse().ok()
        };
        stats.execs = last[1..]
            .split_whitespace()
            .next()
            .and_then(|n| n.parse().ok())
            .unwrap_or(0);
        stats.cov = field(" cov: ").unwrap_or(0);
        stats.ft = field(" ft: ").unwrap_or(0);
        stats.corpus = field(" corp: ").unwrap_or(0);
    }
    for line in &lines {
        if let Some(rest) = line.strip_prefix("Done ") {
            let words: Vec<&str> = rest.split_whitespace().collect();
            if let [runs, "runs", "in", secs, ..] = words.as_slice() {
                stats.execs = runs.parse().unwrap_or(stats.execs);
                stats.seconds = secs.parse().unwrap_or(stats.seconds);
            }
        }
        if let Some((_, path)) = line.split_once("Test unit written to ") {
            stats.artifact = Some(path.trim().to_string());
        }
    }
    stats.reason = lines
        .iter()
        .position(|l| l.contains("panicked at"))
        .map(|i| {
            let message = lines.get(i + 1).copied().unwrap_or_default();
            format!("{} {}", lines[i].trim(), message.trim())
        })
        .or_else(|| {
            lines
                .iter()
                .find(|l| l.contains("ERROR: libFuzzer:") || l.starts_with("aperture-fuzz:"))
                .map(|l| l.trim().to_string())
        });
    stats
}

fn print_table(rows: &[(String, Stats)], build: Duration) {
    let width = rows.iter().map(|(n, _)| n.len()).max().unwrap_or(6).max(6);
    println!(
        "\n== cargo xtask fuzz (build {:.0} s) ==",
        build.as_secs_f64()
    );
    println!(
        "| {:<width$} | seconds |      execs |  execs/s |   cov |    ft | corpus | crashes",
        "target"
    );
    println!(
        "|-{}-|---------|------------|----------|-------|-------|--------|--------",
        "-".repeat(width)
    );
    for (name, s) in rows {
        let per_second = if s.seconds > 0.0 {
            s.execs as f64 / s.seconds
        } else {
            0.0
        };
        println!(
            "| {name:<width$} | {:>7.0} | {:>10} | {:>8.0} | {:>5} | {:>5} | {:>6} | {}",
            s.seconds,
            s.execs,
            per_second,
            s.cov,
            s.ft,
            s.corpus,
            if s.artifact.is_some() { "1" } else { "0" }
        );
    }
}

/// Run a command with inherited output (cargo's progress shows); fail naming the command and
/// its exit status.
fn run_command(cmd: &mut Command) -> Result<()> {
    let shown = command_line(cmd);
    let status = cmd
        .stdin(Stdio::null())
        .status()
        .with_context(|| format!("starting `{shown}`"))?;
    if !status.success() {
        anyhow::bail!("`{shown}` failed: {status}");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const CLEAN: &str = "INFO: Seed: 123\n\
        #2\tINITED cov: 10 ft: 11 corp: 1/1b exec/s: 0 rss: 30Mb\n\
        #4096\tpulse  cov: 50 ft: 60 corp: 5/300b lim: 4096 exec/s: 2048 rss: 31Mb\n\
        #9000\tNEW    cov: 52 ft: 64 corp: 6/310b lim: 4096 exec/s: 3000 rss: 31Mb L: 3/3 MS: 1\n\
        #12000\tDONE   cov: 52 ft: 65 corp: 6/310b lim: 4096 exec/s: 2000 rss: 31Mb\n\
        Done 12000 runs in 6 second(s)\n\
        stat::number_of_executed_units: 12000\n";

    #[test]
    fn reads_the_last_status_line_and_the_run_count() {
        let s = parse_output(CLEAN, Duration::from_secs(7));
        assert_eq!((s.execs, s.cov, s.ft, s.corpus), (12000, 52, 65, 6));
        assert_eq!(s.seconds, 6.0);
        assert_eq!((s.artifact, s.reason), (None, None));
    }

    #[test]
    fn reads_a_crash_its_input_and_its_reason() {
        let out = "#300\tNEW    cov: 20 ft: 21 corp: 3/9b lim: 4 exec/s: 0 rss: 30Mb\n\
            thread '<unnamed>' panicked at fuzz_targets/gpt.rs:19:9:\n\
            partition 1 ends past the disk\n\
            ==123== ERROR: libFuzzer: deadly signal\n\
            MS: 1 ChangeBit-; base unit: 0000\n\
            artifact_prefix='fuzz/artifacts/gpt/'; Test unit written to fuzz/artifacts/gpt/crash-ab12\n";
        let s = parse_output(out, Duration::from_secs(2));
        assert_eq!(s.execs, 300);
        assert_eq!(s.seconds, 2.0);
        assert_eq!(s.artifact.as_deref(), Some("fuzz/artifacts/gpt/crash-ab12"));
        let reason = s.reason.unwrap_or_default();
        assert!(
            reason.contains("gpt.rs:19:9") && reason.contains("ends past the disk"),
            "{reason}"
        );
        let oom = parse_output(
            "==1== ERROR: libFuzzer: out-of-memory (used: 3000Mb)\n",
            Duration::ZERO,
        );
        assert!(oom.reason.unwrap_or_default().contains("out-of-memory"));
    }

    #[test]
    fn the_build_instruments_as_cargo_fuzz_does() {
        let plain = rustflags("none", false);
        for flag in [
            "-Cpasses=sancov-module",
            "-sanitizer-coverage-inline-8bit-counters",
            "-sanitizer-coverage-pc-table",
            "-sanitizer-coverage-trace-compares",
            "--cfg fuzzing",
            "-Cdebug-assertions",
            "-Ccodegen-units=1",
        ] {
            assert!(plain.contains(flag), "{flag} missing from {plain}");
        }
        assert!(!plain.contains("sanitizer=address"), "{plain}");
        let asan = rustflags("address", true);
        assert!(asan.contains("-Zsanitizer=address"), "{asan}");
        assert!(asan.contains("-Ccodegen-units=16"), "{asan}");
    }

    #[test]
    fn nightly_is_found_in_rustups_list() {
        assert!(has_nightly(
            "stable-x86_64-unknown-linux-gnu (default)\nnightly-x86_64-unknown-linux-gnu\n"
        ));
        assert!(!has_nightly(
            "stable-x86_64-unknown-linux-gnu (default)\n1.95.0-x86_64\n"
        ));
    }

    #[test]
    fn every_target_has_seeds_and_a_source_file() {
        let fuzz_dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz");
        let names = targets(&fuzz_dir).unwrap();
        assert!(names.len() >= 13, "{names:?}");
        for name in &names {
            let seeds = fuzz_dir.join("seeds").join(name);
            let count = fs::read_dir(&seeds).map(|d| d.count()).unwrap_or(0);
            assert!(count > 0, "no seeds in {}", seeds.display());
            assert!(
                fuzz_dir.join(format!("fuzz_targets/{name}.rs")).exists(),
                "{name}"
            );
        }
    }
}
