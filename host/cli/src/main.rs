//! `aperture`: the host CLI behind `cargo xtask`. Parses the shared arguments, sets up logging,
//! runs the library, prints the error chain once.

use clap::Parser;
use xtask::args::Cli;

fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .with_target(false)
        .init();
    let cli = Cli::parse();
    if let Err(e) = aperture_cli::run(cli) {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}
