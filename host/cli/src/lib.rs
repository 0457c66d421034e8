//! The host CLI's verbs, each a thin layer over the libraries: arguments in, a library call,
//! human output on stderr and results (or JSON) on stdout.

pub mod args;
mod audit;
mod build;
mod bundle;
mod cache;
mod diff;
mod flash;
mod keys;
mod model;
mod provision;
mod repo;
mod verify;
mod vm;

use std::path::{Path, PathBuf};

use anyhow::Result;
use args::{Cli, Command};

/// The workspace: from `cargo xtask` (APERTURE_WORKSPACE), else where this binary was built.
pub fn workspace() -> PathBuf {
    std::env::var_os("APERTURE_WORKSPACE")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .ancestors()
                .nth(2)
                .expect("the CLI lives two levels below the workspace root (host/cli)")
                .to_path_buf()
        })
}

/// Run one verb.
pub fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Audit(a) => audit::run(&a),
        Command::Build(a) => build::run(&a),
        Command::Cache(c) => cache::run(&c),
        Command::Bundle(a) => bundle::run(&a),
        Command::Diff(a) => diff::run(&a),
        Command::Keys(c) => keys::run(&c),
        Command::Flash(a) => flash::run(&a),
        Command::Verify(a) => verify::run(&a),
        Command::Vm(c) => vm::run(&c),
        Command::Repo(c) => repo::run_repo(&c),
        Command::Release(c) => repo::run_release(&c),
        Command::Model(c) => model::run(&c),
    }
}
