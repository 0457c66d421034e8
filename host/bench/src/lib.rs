//! `cargo xtask bench ...`: Aperture beside its peers in one run, each printing a table of
//! ratios. Benchmarks are never timed tests: they are run by hand and their tables go into the
//! closing notes of the work they measure.
//!
//! * [`build`]: cold and warm builds beside mkosi;
//! * [`flash`]: an image to a loop device beside `bmaptool copy` and `dd`;
//! * [`update`]: a 1 GiB generated slot and a build's slot image installed by
//!   `aperture-update` beside RAUC;
//! * [`reset`]: wiping a data partition by discard and by overwrite;
//! * [`fleet`]: reports per second and their latency at the fleet server, for 10,000
//!   simulated appliances, on SQLite, PostgreSQL and two servers on one PostgreSQL;
//! * [`fleet_repo`]: simulated appliances polling the nginx-served release repository, beside
//!   stock tough and python-tuf;
//! * [`sizes`]: a build's rootfs as each filesystem worth considering for the slot image,
//!   with its bundle payload at each zstd level, its cold read and the time to make it;
//! * [`runtime`]: the inference runtime's frames per second, latency and memory on 1 and 4
//!   RTSP streams, beside the same model in the onnxruntime Python package;
//! * [`delta`]: the update delta between two builds one package and one overlay file apart,
//!   beside the ideal (the changed files alone), `zstd --patch-from`, casync and the full
//!   bundle.

pub mod build;
pub mod delta;
pub mod flash;
pub mod fleet;
pub mod fleet_repo;
pub mod reset;
pub mod runtime;
pub mod sizes;
pub mod table;
pub mod update;

use std::path::{Path, PathBuf};

use clap::{Parser, ValueEnum};

/// The default recipe the benchmarks build.
pub const DEFAULT_RECIPE: &str = "recipes/qemu-x86_64.toml";

/// The default recipe's build folder, `out/<product>-<board>-<version>/`, as `cargo xtask
/// build` writes it.
pub fn default_build() -> anyhow::Result<PathBuf> {
    let ws = workspace();
    let recipe = aperture_image::recipe::Recipe::load(&ws.join(DEFAULT_RECIPE))?;
    Ok(ws.join("out").join(recipe.build_name()))
}

/// The workspace: from `cargo xtask` (APERTURE_WORKSPACE), else where this binary was built.
pub fn workspace() -> PathBuf {
    std::env::var_os("APERTURE_WORKSPACE")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .ancestors()
                .nth(2)
                .expect("the bench crate lives two levels below the workspace root")
                .to_path_buf()
        })
}

/// Which comparison to run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum BenchKind {
    /// Cold and warm builds, output sizes, beside mkosi.
    Build,
    /// Writing an image to a loop device, beside bmaptool and dd.
    Flash,
    /// Wiping data partitions by discard and by overwrite.
    Reset,
    /// Installing a 1 GiB generated rootfs and a build's slot image, beside RAUC.
    Update,
    /// Reports per second and their p50/p99 latency at the fleet server, beside the bare
    /// mutual-TLS round trip.
    Fleet,
    /// Requests and metadata bytes per poll of the release repository, beside stock tough and
    /// python-tuf.
    FleetRepo,
    /// Frames per second, latency and memory of the inference runtime on 1 and 4 RTSP streams,
    /// beside the same model in the onnxruntime Python package.
    Runtime,
    /// Slot image and bundle bytes of a build's rootfs as erofs (lz4, lz4hc, uncompressed) and
    /// squashfs, at each bundle zstd level, with cold reads.
    Sizes,
    /// Update delta bytes between the default recipe and the same plus curl and one overlay
    /// file, beside the ideal (the changed files as a zstd -19 tar), zstd --patch-from, casync
    /// and the full bundle.
    Delta,
}

/// `cargo xtask bench`: time Aperture against its peers side by side and print ratios.
#[derive(Debug, Parser)]
#[command(
    name = "aperture-bench",
    bin_name = "cargo xtask bench",
    version,
    about
)]
pub struct BenchArgs {
    /// The comparison to run.
    #[arg(value_enum)]
    pub kind: BenchKind,
    /// Runs per tool, the table showing the median (default 3; runtime: 1, each run about
    /// two minutes; not fleet-repo).
    #[arg(long, value_name = "N")]
    pub runs: Option<u32>,
    /// fleet, fleet-repo: simulated devices (fleet: enrolled and reporting; fleet-repo:
    /// polling with Aperture's client).
    #[arg(long, default_value_t = 10_000, value_name = "N")]
    pub devices: usize,
    /// fleet-repo: simulated devices polling with stock tough (at most --devices; what a poll
    /// fetches does not depend on the count, and fewer keep the run within minutes).
    #[arg(long, default_value_t = 1_000, value_name = "N")]
    pub peer_devices: usize,
    /// fleet-repo: simulated devices polling with python-tuf (at most --devices).
    #[arg(long, default_value_t = 300, value_name = "N")]
    pub python_devices: usize,
    /// fleet-repo: seconds of polling allowed in all; a phase that reaches its share stops
    /// early and says so.
    #[arg(long, default_value_t = 300, value_name = "SECONDS")]
    pub time_limit: u64,
    /// fleet, runtime: seconds each measurement runs (after a warm-up round of every device;
    /// runtime: after --warmup).
    #[arg(long, default_value_t = 20, value_name = "SECONDS")]
    pub window: u64,
    /// update: the real slot image of the second row; sizes: the slot image whose files every
    /// row packs. A build's rootfs.img with its dm-verity tree appended; vmlinuz and
    /// initrd.img beside it are used too. Default: the rootfs.img of the default recipe's build
    /// folder (`out/<product>-<board>-<version>/`), if it was built.
    #[arg(long, value_name = "PATH")]
    pub slot_image: Option<PathBuf>,
    /// sizes: also build the default recipe with each slot compression and boot each image
    /// (minutes per row).
    #[arg(long)]
    pub boot: bool,
    /// sizes --boot: the VM board whose recipe is built and booted with each compression:
    /// qemu-x86_64 (the default recipe) or qemu-arm64 (the Jetsons' arm64 userland, whose CPU
    /// has the ARMv8 SHA-256 instructions that dm-verity uses; several times slower to boot
    /// under TCG).
    #[arg(long, value_enum, default_value = "qemu-x86_64", value_name = "BOARD")]
    pub boot_board: sizes::BootBoard,
    /// runtime: seconds each side streams before its measurement.
    #[arg(long, default_value_t = 5, value_name = "SECONDS")]
    pub warmup: u64,
    /// runtime: the stream counts measured, one row per side each.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "1,4",
        value_name = "N,..."
    )]
    pub streams: Vec<usize>,
    /// delta: an existing build folder (rootfs.img, manifest.json, update.bundle) to use as
    /// the older build instead of building the default recipe; needs --new-build.
    #[arg(long, value_name = "DIR", requires = "new_build")]
    pub base_build: Option<PathBuf>,
    /// delta: an existing build folder to use as the newer build instead of building the
    /// default recipe plus curl and an overlay file; needs --base-build.
    #[arg(long, value_name = "DIR", requires = "base_build")]
    pub new_build: Option<PathBuf>,
    /// delta: the image keys folder that signs Aperture's delta bundle (the newer build's
    /// release keys) [default: keys/dev, the default recipe's].
    #[arg(long, value_name = "DIR")]
    pub keys: Option<PathBuf>,
    /// fleet: requests in flight at once (client threads).
    #[arg(long, default_value_t = 64, value_name = "N")]
    pub concurrency: usize,
}

/// Run one benchmark.
pub fn run(a: &BenchArgs) -> anyhow::Result<()> {
    match a.kind {
        BenchKind::Build => build::run(a.runs.unwrap_or(3)),
        BenchKind::Flash => flash::run(a.runs.unwrap_or(3)),
        BenchKind::Reset => reset::run(a.runs.unwrap_or(3)),
        BenchKind::Update => update::run(a.runs.unwrap_or(3), a.slot_image.clone()),
        BenchKind::Fleet => fleet::run(&fleet::Options {
            devices: a.devices,
            window: std::time::Duration::from_secs(a.window),
            concurrency: a.concurrency,
        }),
        BenchKind::FleetRepo => fleet_repo::run(&fleet_repo::Options {
            devices: a.devices,
            peer_devices: a.peer_devices,
            python_devices: a.python_devices,
            time_limit: std::time::Duration::from_secs(a.time_limit),
            // Pollers wait on the network and nginx half of the time.
            workers: 2 * std::thread::available_parallelism().map_or(1, |n| n.get()),
        }),
        BenchKind::Sizes => sizes::run(
            a.slot_image.clone(),
            a.boot.then_some(a.boot_board),
            a.runs.unwrap_or(1),
        ),
        BenchKind::Delta => delta::run(&delta::Options {
            base_build: a.base_build.clone(),
            new_build: a.new_build.clone(),
            keys: a.keys.clone(),
        }),
        BenchKind::Runtime => runtime::run(&runtime::Options {
            runs: a.runs.unwrap_or(1),
            streams: a.streams.clone(),
            warmup: std::time::Duration::from_secs(a.warmup),
            window: std::time::Duration::from_secs(a.window),
        }),
    }
}

/// Build the binary `bin` with cargo's release profile (what images ship), with `args`
/// naming its package and features, and return its path.
pub(crate) fn release_binary(
    ws: &std::path::Path,
    args: &[&str],
    bin: &str,
) -> anyhow::Result<std::path::PathBuf> {
    use anyhow::{bail, Context};
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut command = std::process::Command::new(cargo);
    // Not the running package's variables (see `Cmd::cargo`).
    for (key, _) in std::env::vars_os() {
        if aperture_sys::cmd::is_package_env(&key) {
            command.env_remove(key);
        }
    }
    let status = command
        .current_dir(ws)
        .args(["build", "--quiet", "--release"])
        .args(args)
        .args(["--bin", bin])
        .status()
        .with_context(|| format!("starting cargo to build {bin}"))?;
    if !status.success() {
        bail!("building {bin} ({}) failed ({status})", args.join(" "));
    }
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| ws.join("target"));
    let path = target.join("release").join(bin);
    if !path.is_file() {
        bail!("cargo built {bin} but {} does not exist", path.display());
    }
    Ok(path)
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::*;

    #[test]
    fn arguments_are_consistent() {
        BenchArgs::command().debug_assert();
        let a = BenchArgs::parse_from(["x", "update", "--runs", "5"]);
        assert_eq!((a.kind, a.runs), (BenchKind::Update, Some(5)));
        let a = BenchArgs::parse_from(["x", "fleet-repo", "--devices", "200"]);
        assert_eq!((a.kind, a.devices), (BenchKind::FleetRepo, 200));
        let a = BenchArgs::parse_from(["x", "fleet", "--window", "5", "--concurrency", "8"]);
        assert_eq!(
            (a.kind, a.devices, a.window, a.concurrency),
            (BenchKind::Fleet, 10_000, 5, 8)
        );
        let a = BenchArgs::parse_from(["x", "runtime"]);
        assert_eq!(
            (a.kind, a.streams, a.warmup, a.window),
            (BenchKind::Runtime, vec![1, 4], 5, 20)
        );
        let a = BenchArgs::parse_from(["x", "runtime", "--streams", "2", "--window", "60"]);
        assert_eq!((a.streams, a.window), (vec![2], 60));
        let a = BenchArgs::parse_from(["x", "delta"]);
        assert_eq!(
            (a.kind, a.base_build, a.new_build),
            (BenchKind::Delta, None, None)
        );
        let a = BenchArgs::parse_from(["x", "delta", "--base-build", "a", "--new-build", "b"]);
        assert_eq!(
            (a.base_build, a.new_build),
            (Some(PathBuf::from("a")), Some(PathBuf::from("b")))
        );
        assert!(BenchArgs::try_parse_from(["x", "delta", "--base-build", "a"]).is_err());
    }
}
