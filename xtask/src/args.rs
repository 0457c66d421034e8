//! `cargo xtask`'s own arguments. It runs the test tiers itself; every other verb is the build
//! engineers' command line `aperture` (host/cli) or the benchmarks `aperture-bench`
//! (host/bench), which `cargo xtask` compiles and runs after the preflight has installed what
//! they need. Those parse their own arguments; here only the verb's name is read.

use std::ffi::OsString;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

/// The default recipe: fully buildable, bootable and testable on a development machine.
pub const DEFAULT_RECIPE: &str = "recipes/qemu-x86_64.toml";

/// The verbs `aperture` and `aperture-bench` take, for `--help` (`cargo xtask <verb> --help`
/// shows each one's own).
const VERBS: &str =
    "Build-engineer verbs (run by `aperture` after the preflight; `cargo xtask <verb> --help`):
  build     recipe -> rootfs commit, slot image, signed disk image, update bundle
  keys      signing keys (generate, revoke)
  verify    a build's signature, key chain, every artifact, verity roots
  diff      paths an update between two builds changes
  vm        boot a built image under QEMU (a copy-on-write overlay; the build stays as built)
  bundle    re-make a build's update bundle, verified
  flash     write a verified build to disks, many at once; list Jetsons in recovery mode
  audit     a built image judged offline against its security policy
  cache     the shared build store and caches: show, prune
  repo      the fleet's TUF release repository: init, status, refresh, rotate-root,
            sync (to a folder or S3), keygen
  release   publish a build to a channel with waves; halt or resume its rollout
  bench     Aperture beside its peers (build, flash, update, reset, fleet, fleet-repo), a table of ratios
  provision provisioning archives for new appliances (aperture-fleet provision --fleet URL
            --api-token T --ca FILE --out DIR [--count N] [--expires-in 7d])";

/// Aperture: build, flash and update secure A/B edge appliances.
#[derive(Debug, Parser)]
#[command(name = "cargo xtask", bin_name = "cargo xtask", version, about, after_help = VERBS)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// xtask's own verbs, and the passthrough for the others.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run every test tier this machine can run (unit; privileged and VM as root), with a
    /// table of how long each suite took.
    Test(TestArgs),
    /// Fuzz every parser of untrusted bytes (libFuzzer, nightly) for a while each, seeded from
    /// `fuzz/seeds`, with a table of what each run did; any crash fails it.
    Fuzz(FuzzArgs),
    /// Any other verb, for `aperture` or `aperture-bench`.
    #[command(external_subcommand)]
    Other(Vec<OsString>),
}

/// `cargo xtask test`.
#[derive(Debug, Args, Clone)]
pub struct TestArgs {
    /// Which tiers to run: 1 = unit (no root), 2 = privileged (root, network, mkfs tools),
    /// 3 = VM (QEMU), 4 = fuzz smoke (every fuzz target 20 s). Default: every tier this
    /// machine can run.
    #[arg(long, value_delimiter = ',')]
    pub tier: Vec<u8>,
    /// Also run the long VM scenarios that do not fit a CI run (the `full-*` suites: many power
    /// cuts, ten warm reboots, ...).
    #[arg(long)]
    pub full: bool,
    /// Run every suite even after one failed (the table shows each outcome); by default the
    /// run stops at the first failing suite.
    #[arg(long)]
    pub keep_going: bool,
    /// How many VM suites run side by side, each in its own network namespace (as root, with
    /// `unshare` and `ip`); 1 runs them one at a time.
    #[arg(long, default_value_t = 2)]
    pub vm_lanes: usize,
    /// Only these suites of tiers 2 and 3 (for example `vm_update`); default all.
    #[arg(long = "suite")]
    pub suites: Vec<String>,
    /// Only run tests whose name contains this.
    pub filter: Option<String>,
}

/// `cargo xtask fuzz`.
#[derive(Debug, Args, Clone)]
pub struct FuzzArgs {
    /// Seconds to run each target.
    #[arg(long, default_value_t = 60)]
    pub seconds: u64,
    /// `none`: quick builds, Rust's own checks (the parsers are safe Rust); `address`:
    /// AddressSanitizer too (heap misuse through the allocator and libc, zstd's C code's
    /// included), for long campaigns.
    #[arg(long, default_value = "none", value_parser = ["none", "address"])]
    pub sanitizer: String,
    /// Build for CI: a build about a third quicker (opt-level 1, sixteen codegen units, the
    /// system's libzstd) for targets somewhat slower, and one target per core at once.
    #[arg(long)]
    pub ci: bool,
    /// Targets run at once, each one process on one core (default 1; with `--ci`, every core).
    #[arg(long)]
    pub jobs: Option<usize>,
    /// Only these targets (default: every target of `fuzz/Cargo.toml`).
    pub targets: Vec<String>,
}

/// The value of `--recipe` among a `build`'s arguments, if given.
pub fn recipe_arg(args: &[OsString]) -> Option<PathBuf> {
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let a = a.to_string_lossy();
        if a == "--recipe" {
            return it.next().map(PathBuf::from);
        }
        if let Some(v) = a.strip_prefix("--recipe=") {
            return Some(PathBuf::from(v));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::*;

    #[test]
    fn own_verbs_parse_and_others_pass_through() {
        Cli::command().debug_assert();
        let cli = Cli::parse_from(["cargo xtask", "test", "--tier", "2,3", "--full"]);
        match cli.command {
            Command::Test(t) => assert!(t.full && t.tier == [2, 3]),
            other => panic!("{other:?}"),
        }
        let cli = Cli::parse_from(["cargo xtask", "fuzz", "--seconds", "5", "gpt", "bmap"]);
        match cli.command {
            Command::Fuzz(f) => {
                assert_eq!((f.seconds, f.sanitizer.as_str(), f.ci), (5, "none", false));
                assert_eq!(f.targets, ["gpt", "bmap"]);
            }
            other => panic!("{other:?}"),
        }
        let cli = Cli::parse_from(["cargo xtask", "build", "--recipe", "r.toml", "--json"]);
        match cli.command {
            Command::Other(args) => {
                assert_eq!(args[0], "build");
                assert_eq!(recipe_arg(&args[1..]), Some(PathBuf::from("r.toml")));
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(
            recipe_arg(&["--recipe=x.toml".into()]),
            Some(PathBuf::from("x.toml"))
        );
        assert_eq!(recipe_arg(&["--out".into(), "o".into()]), None);
    }
}
