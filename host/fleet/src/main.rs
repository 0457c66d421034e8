//! `aperture-fleet`: the fleet server and its admin command line. Parses its arguments, sets up
//! logging, runs the library, prints the error chain once.

use aperture_fleet::cli::Cli;
use clap::Parser;

fn main() {
    aperture_sys::log::init("info");
    let cli = Cli::parse();
    if let Err(e) = aperture_fleet::cli::run(cli) {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}
