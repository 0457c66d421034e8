//! `aperture-agent`: parse arguments, set up logging, run the library, print errors once.

use clap::{Parser, Subcommand};

use aperture_agent::{host::Host, status};

/// The Aperture device agent.
#[derive(Debug, Parser)]
#[command(name = "aperture-agent", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Print product, version, board, the booted slot and the root mount.
    Status {
        /// Print JSON instead of a line of text.
        #[arg(long)]
        json: bool,
    },
}

fn main() {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_target(false)
        .init();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Status { json } => status::gather(&Host::default())
            .map_err(anyhow::Error::from)
            .and_then(|s| {
                if json {
                    println!("{}", serde_json::to_string_pretty(&s)?);
                } else {
                    println!("{s}");
                }
                Ok(())
            }),
    };
    if let Err(e) = result {
        eprintln!("aperture-agent: error: {e:#}");
        std::process::exit(1);
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    #[test]
    fn cli_definition_is_consistent() {
        super::Cli::command().debug_assert();
    }
}
