//! Logging setup for every Aperture program: `tracing` to standard error, plain (no colours,
//! no timestamps: journald adds its own), at `default` unless `RUST_LOG` says otherwise.
//! Behind the crate's `log` feature (on by default; xtask turns it off to build quickly).

/// Install the subscriber; `default` is a filter such as `info` or `warn`.
pub fn init(default: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .without_time()
        .with_target(false)
        .try_init();
}
