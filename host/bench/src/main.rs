//! `aperture-bench`: the benchmarks behind `cargo xtask bench`.

use clap::Parser;

fn main() {
    aperture_sys::log::init("warn");
    let args = aperture_bench::BenchArgs::parse();
    if let Err(e) = aperture_bench::run(&args) {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}
