//! `aperture-fleet provision`: provisioning archives for new appliances (issue 16). Asks the
//! server for N one-time enrollment tokens (operator) and writes one archive per device,
//! `OUT/1/`, `OUT/2/`, ...: the fleet URL, the fleet CA, the token, optional network settings
//! (`aperture_fleet_api::provision`). Copy one onto a USB stick (or the ESP's
//! `aperture/provision/`); the appliance enrolls from it at first boot and erases it.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use aperture_fleet_api::provision::{self, Archive, Network, Token};
use clap::Args;

use crate::client::Client;

/// `provision`.
#[derive(Debug, Args)]
pub struct ProvisionArgs {
    /// The fleet server's URL, as the appliances will reach it (https://HOST[:PORT]); the
    /// tokens are asked from it too.
    #[arg(long)]
    fleet: String,
    /// Where this command asks for the tokens, when the build host reaches the server at
    /// another address than the appliances do (default: the --fleet URL).
    #[arg(long, env = "APERTURE_FLEET_SERVER")]
    server: Option<String>,
    /// An API token (operator or above).
    #[arg(long, env = "APERTURE_FLEET_TOKEN", hide_env_values = true)]
    api_token: String,
    /// The fleet CA certificate (the server's ca.pem), written into each archive.
    #[arg(long, env = "APERTURE_FLEET_CA")]
    ca: PathBuf,
    /// The folder to write the archives into (made if missing; OUT/1, OUT/2, ... must not
    /// exist).
    #[arg(long)]
    out: PathBuf,
    /// How many archives (one device each).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=1000))]
    count: u32,
    /// How long the tokens stay valid: N followed by s, m, h or d.
    #[arg(long, default_value = "7d", value_parser = super::parse_duration)]
    expires_in: u64,
    /// Network settings copied into each archive as network.toml (checked first).
    #[arg(long)]
    network: Option<PathBuf>,
}

/// Run `provision`; prints each archive's folder.
pub fn run(a: &ProvisionArgs) -> Result<()> {
    let url = provision::check_url(&a.fleet)
        .map_err(|why| anyhow::anyhow!("--fleet {:?} {why}", a.fleet))?;
    let ca_pem = std::fs::read_to_string(&a.ca)
        .with_context(|| format!("reading the fleet CA {}", a.ca.display()))?;
    aperture_fleet_api::tls::roots(&ca_pem)
        .with_context(|| format!("{}: not a CA certificate (PEM)", a.ca.display()))?;
    let network = match &a.network {
        None => None,
        Some(p) => {
            let text =
                std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?;
            let n: Network =
                toml::from_str(&text).with_context(|| format!("parsing {}", p.display()))?;
            Some(n)
        }
    };
    let targets: Vec<PathBuf> = (1..=a.count).map(|n| a.out.join(n.to_string())).collect();
    if let Some(t) = targets.iter().find(|t| t.exists()) {
        bail!(
            "{} exists already: provision into an empty folder (archives hold secrets and are \
             never overwritten)",
            t.display()
        );
    }
    std::fs::create_dir_all(&a.out).with_context(|| format!("creating {}", a.out.display()))?;

    let server = a.server.as_deref().unwrap_or(url.as_str());
    let client = Client::new(server, &ca_pem, Some(a.api_token.clone()), None)?;
    let made = client
        .enrollment_tokens(a.count, a.expires_in)
        .context("asking the fleet server for enrollment tokens")?;
    for (dir, token) in targets.iter().zip(&made.tokens) {
        let archive = Archive {
            url: url.clone(),
            ca_pem: ca_pem.clone(),
            token: Token::parse(token)
                .map_err(|why| anyhow::anyhow!("the server's token is malformed: {why}"))?,
            network: network.clone(),
        };
        archive.write(dir)?;
        // A network file is checked as the device would, by reading the archive back.
        Archive::read(dir)?;
        println!("{}", dir.display());
    }
    eprintln!(
        "{} provisioning archive(s) in {}: single-use tokens, valid until {} (Unix time); \
         each folder's files go on one appliance's USB stick or ESP (aperture/provision/)",
        made.tokens.len(),
        a.out.display(),
        made.expires_at
    );
    Ok(())
}
