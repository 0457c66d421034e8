//! `aperture`: the build engineers' command line behind `cargo xtask <verb>`. Parses its
//! arguments, sets up logging, runs the library, prints the error chain once.

use aperture_cli::args::Cli;
use clap::Parser;

fn main() {
    aperture_sys::log::init("warn");
    let cli = Cli::parse();
    if let Err(e) = aperture_cli::run(cli) {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}
