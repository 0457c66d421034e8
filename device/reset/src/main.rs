//! `aperture-reset` on its own (development and tests; images ship it inside
//! `aperture-device`).

fn main() {
    std::process::exit(aperture_reset::app::main(std::env::args_os().collect()));
}
