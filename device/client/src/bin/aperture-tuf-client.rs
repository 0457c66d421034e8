//! `aperture-tuf-client`: the appliance's TUF client behind the command line of the TUF
//! conformance suite (`CLIENT-CLI.md`): parse arguments, set up logging, run
//! [`aperture_client::conformance`], print the error once. Exit 0 on success and 1 on any
//! failure, including a usage error or a panic: the suite checks for exactly 1.
//!
//! ```text
//! aperture-tuf-client --metadata-dir M init ROOT
//! aperture-tuf-client --metadata-url U --metadata-dir M refresh
//! aperture-tuf-client --metadata-url U --metadata-dir M --target-name N... \
//!     --target-dir D --target-base-url B download
//! ```

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use url::Url;

use aperture_client::conformance::{self, Client};

/// A TUF client (the appliance's, on tough) for the TUF conformance suite.
#[derive(Debug, Parser)]
#[command(name = "aperture-tuf-client", version, about)]
struct Cli {
    /// Folder of the metadata this client trusts (the suite reads it); our own state is kept
    /// in its `.aperture/` folder.
    #[arg(long, value_name = "DIR")]
    metadata_dir: PathBuf,
    /// Base URL of the repository's metadata (`refresh`, `download`).
    #[arg(long, value_name = "URL")]
    metadata_url: Option<Url>,
    /// A target to download, by its TUF target path; repeat for several, fetched in order.
    #[arg(long = "target-name", value_name = "TARGETPATH")]
    target_names: Vec<String>,
    /// Folder the downloaded targets are stored in (`download`).
    #[arg(long, value_name = "DIR")]
    target_dir: Option<PathBuf>,
    /// Base URL of the repository's targets (`download`).
    #[arg(long, value_name = "URL")]
    target_base_url: Option<Url>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Trust ROOT: copy it to the metadata folder (no request is made).
    Init {
        /// The initial trusted root metadata file.
        trusted_root: PathBuf,
    },
    /// Update the trusted metadata from the repository (TUF client workflow).
    Refresh,
    /// Refresh, then download each --target-name into --target-dir, checked against the
    /// signed length and hash (a target already there with them is not fetched again).
    Download,
}

fn run(cli: Cli) -> Result<(), String> {
    let needs = |what: &str| format!("{what} is required for this command");
    match cli.command {
        Command::Init { trusted_root } => conformance::init(&cli.metadata_dir, &trusted_root),
        Command::Refresh => {
            let url = cli.metadata_url.ok_or_else(|| needs("--metadata-url"))?;
            Client::new(&cli.metadata_dir, &url, None)?
                .refresh()
                .map(|_| ())
        }
        Command::Download => {
            let url = cli.metadata_url.ok_or_else(|| needs("--metadata-url"))?;
            let dir = cli.target_dir.ok_or_else(|| needs("--target-dir"))?;
            let base = cli
                .target_base_url
                .ok_or_else(|| needs("--target-base-url"))?;
            if cli.target_names.is_empty() {
                return Err(needs("--target-name"));
            }
            Client::new(&cli.metadata_dir, &url, Some(&base))?.download(&cli.target_names, &dir)
        }
    }
}

fn main() -> ExitCode {
    aperture_sys::log::init("info");
    // A panic is a failure like any other: exit 1, not 101.
    let report = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        report(info);
        std::process::exit(1);
    }));
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            // --help and --version are not failures; usage errors exit 1, not clap's 2.
            return if e.use_stderr() {
                ExitCode::FAILURE
            } else {
                ExitCode::SUCCESS
            };
        }
    };
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("aperture-tuf-client: {e}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli() {
        Cli::command().debug_assert();
    }

    #[test]
    fn options_come_before_the_command_as_the_suite_passes_them() {
        let cli = Cli::try_parse_from([
            "aperture-tuf-client",
            "--metadata-url",
            "http://127.0.0.1:1/t%5B1%5D/metadata/",
            "--metadata-dir",
            "/m",
            "--target-name",
            "a",
            "--target-name",
            "b/c",
            "--target-dir",
            "/d",
            "--target-base-url",
            "http://127.0.0.1:1/t%5B1%5D/targets/",
            "download",
        ])
        .unwrap();
        assert_eq!(cli.target_names, ["a", "b/c"]);
        // Quoted test names reach the server as they were given.
        assert_eq!(
            cli.metadata_url.unwrap().as_str(),
            "http://127.0.0.1:1/t%5B1%5D/metadata/"
        );
        assert!(matches!(cli.command, Command::Download));
    }
}
