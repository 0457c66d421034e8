//! `diff`: the paths an update between two builds changes.

use crate::args::DiffArgs;
use anyhow::Result;
use aperture_image::diff;
use aperture_image::store::Store;

/// Run `diff`.
pub fn run(a: &DiffArgs) -> Result<()> {
    let repo = match &a.repo {
        Some(r) => r.clone(),
        None => aperture_image::pipeline::default_cache()?.join("repo"),
    };
    let store = Store::open(&repo)?;
    let from = diff::resolve_build(&store, &a.from)?;
    let to = diff::resolve_build(&store, &a.to)?;
    let changes = diff::diff(&store, &from, &to)?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&changes)?);
        return Ok(());
    }
    for c in &changes {
        println!("{} {}", c.change.letter(), c.path);
    }
    let count = |k: diff::Change| changes.iter().filter(|c| c.change == k).count();
    eprintln!(
        "{} .. {}: {} added, {} removed, {} modified",
        &from[..12],
        &to[..12],
        count(diff::Change::Added),
        count(diff::Change::Removed),
        count(diff::Change::Modified)
    );
    Ok(())
}
