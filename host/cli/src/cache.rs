//! `cache show|prune`: the build cache every output folder and the test suites share.

use std::path::PathBuf;

use anyhow::Result;
use aperture_image::cache;
use aperture_image::pipeline::default_cache;

use crate::args::CacheCommand;

fn root(given: &Option<PathBuf>) -> Result<PathBuf> {
    match given {
        Some(p) => Ok(p.clone()),
        None => default_cache(),
    }
}

fn mib(b: u64) -> String {
    format!("{:.1} MiB", b as f64 / (1u64 << 20) as f64)
}

/// Run `cache ...`.
pub fn run(c: &CacheCommand) -> Result<()> {
    match c {
        CacheCommand::Show(a) => {
            let r = cache::show(&root(&a.cache)?)?;
            if a.json {
                println!("{}", serde_json::to_string_pretty(&r)?);
                return Ok(());
            }
            println!("build cache {}", r.root.display());
            for (name, bytes) in &r.folders {
                println!("  {name:<24} {:>12}", mib(*bytes));
            }
            println!("  build store refs:");
            for f in &r.refs {
                println!("    {}  {}", &f.commit[..12.min(f.commit.len())], f.name);
            }
            Ok(())
        }
        CacheCommand::Prune(a) => {
            let root = root(&a.cache)?;
            let r = cache::prune(&root, a.days, a.all)?;
            for name in &r.refs_deleted {
                eprintln!("deleted ref {name}");
            }
            for p in &r.removed {
                eprintln!("removed {}", p.display());
            }
            println!("freed {} in {}", mib(r.freed), root.display());
            Ok(())
        }
    }
}
