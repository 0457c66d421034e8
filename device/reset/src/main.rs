//! `aperture-reset`: parse the arguments, set up logging, run, print the error chain once.

use clap::Parser;

fn main() {
    aperture_sys::log::init("info");
    match aperture_reset::app::run(aperture_reset::app::Cli::parse()) {
        Ok(code) => std::process::exit(code),
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::exit(1);
        }
    }
}
