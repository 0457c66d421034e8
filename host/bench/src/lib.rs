//! `cargo xtask bench ...`: Aperture beside its peers in one run, each printing a table of
//! ratios. Benchmarks are never timed tests: they are run by hand and their tables go into the
//! closing notes of the work they measure.
//!
//! * [`build`]: cold and warm builds beside mkosi;
//! * [`flash`]: an image to a loop device beside `bmaptool copy` and `dd`;
//! * [`update`]: a 1 GiB slot installed by `aperture-update` beside RAUC;
//! * [`reset`]: wiping a data partition by discard and by overwrite.

pub mod build;
pub mod flash;
pub mod reset;
pub mod table;
pub mod update;

use std::path::{Path, PathBuf};

use clap::{Parser, ValueEnum};

/// The default recipe the benchmarks build.
pub const DEFAULT_RECIPE: &str = "recipes/qemu-x86_64.toml";

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
    /// Installing a 1 GiB rootfs update, beside RAUC.
    Update,
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
    /// Runs per tool (the table shows the median).
    #[arg(long, default_value_t = 3)]
    pub runs: u32,
}

/// Run one benchmark.
pub fn run(a: &BenchArgs) -> anyhow::Result<()> {
    match a.kind {
        BenchKind::Build => build::run(a.runs),
        BenchKind::Flash => flash::run(a.runs),
        BenchKind::Reset => reset::run(a.runs),
        BenchKind::Update => update::run(a.runs),
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::*;

    #[test]
    fn arguments_are_consistent() {
        BenchArgs::command().debug_assert();
        let a = BenchArgs::parse_from(["x", "update", "--runs", "5"]);
        assert_eq!((a.kind, a.runs), (BenchKind::Update, 5));
    }
}
