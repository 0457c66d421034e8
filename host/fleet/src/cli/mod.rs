//! The `aperture-fleet` command line: `init` and `serve` run on the server's machine; the rest
//! (`devices`, `device`, `tokens`, `audit`, `rollout`, `provision`) are clients of the HTTP API, printing a
//! table or, with `--json`, the API's JSON.

mod provision;
mod rollout;
pub mod table;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand};

use crate::client::Client;
use crate::db::{self, Db};
use crate::pki::{self, Identity};
use crate::server::{self, Server};
use crate::token::Role;

/// `aperture-fleet`: the fleet server and its admin command line.
#[derive(Debug, Parser)]
#[command(name = "aperture-fleet", version, about)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The verbs.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Make the fleet CA, the server's certificate and the database (what is missing), and
    /// print the first admin token once.
    Init(InitArgs),
    /// Run the server.
    Serve(ServeArgs),
    /// List the devices, or change one (revoke, tag, channel).
    Devices(DevicesArgs),
    /// Show one device and its recent reports.
    Device(DeviceArgs),
    /// Admin API tokens, and enrollment tokens for new devices.
    Tokens(TokensArgs),
    /// The audit log, newest first.
    Audit(AuditArgs),
    /// Rollouts of releases: start, list, status, pause, resume, halt, cancel, pin, unpin.
    Rollout(rollout::RolloutArgs),
    /// Provisioning archives for new appliances: N one-time enrollment tokens, each with the
    /// fleet URL and CA in a folder of its own (OUT/1, OUT/2, ...).
    Provision(provision::ProvisionArgs),
}

/// Where the server keeps its identity and data.
#[derive(Debug, Args)]
pub struct ServerDir {
    /// The identity folder (ca.pem, ca.key, server.pem, server.key).
    #[arg(long, default_value = ".")]
    pub dir: PathBuf,
    /// The database: sqlite://PATH or postgres://USER@HOST/DB [default: sqlite://DIR/fleet.db].
    #[arg(long, env = "APERTURE_FLEET_DATABASE")]
    pub database: Option<String>,
}

impl ServerDir {
    fn database(&self) -> String {
        self.database
            .clone()
            .unwrap_or_else(|| format!("sqlite://{}", self.dir.join("fleet.db").display()))
    }
}

/// `init`.
#[derive(Debug, Args)]
pub struct InitArgs {
    #[command(flatten)]
    dir: ServerDir,
    /// A name of the server's certificate (IP address or DNS name); repeat for more.
    #[arg(long = "name", default_values = pki::DEFAULT_SERVER_NAMES)]
    names: Vec<String>,
}

/// `serve`.
#[derive(Debug, Args)]
pub struct ServeArgs {
    #[command(flatten)]
    dir: ServerDir,
    /// The address to listen on.
    #[arg(long, default_value = "127.0.0.1:8443")]
    listen: SocketAddr,
    /// Reports a device may send per minute; more are refused with 429.
    #[arg(long, default_value_t = 6)]
    reports_per_minute: i64,
    /// The TUF repository folder the devices' metadata is served from: the server signs its
    /// rollouts role with the online keys its repo.toml names (rollouts, snapshot, timestamp).
    /// Without it, rollouts can be read here but not changed.
    #[arg(long)]
    repo: Option<PathBuf>,
    /// Refuse development keys in the repository (as `aperture repo ... --release` does).
    #[arg(long, requires = "repo")]
    release: bool,
    /// How often to re-sign what the repository holds differently from the database (and the
    /// rollouts role before it expires): N followed by s, m, h or d.
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    reconcile_every: u64,
}

/// How the admin commands reach the server.
#[derive(Debug, Args)]
pub struct Conn {
    /// The server's URL.
    #[arg(
        long,
        global = true,
        env = "APERTURE_FLEET_SERVER",
        default_value = "https://127.0.0.1:8443"
    )]
    server: String,
    /// An API token.
    #[arg(
        long,
        global = true,
        env = "APERTURE_FLEET_TOKEN",
        hide_env_values = true
    )]
    token: Option<String>,
    /// The fleet CA certificate (the server's ca.pem).
    #[arg(long, global = true, env = "APERTURE_FLEET_CA")]
    ca: Option<PathBuf>,
    /// Print JSON instead of a table.
    #[arg(long, global = true)]
    json: bool,
}

impl Conn {
    fn client(&self) -> Result<Client> {
        let Some(token) = &self.token else {
            bail!("no API token: pass --token or set APERTURE_FLEET_TOKEN");
        };
        let Some(ca) = &self.ca else {
            bail!("no fleet CA: pass --ca FILE (the server's ca.pem) or set APERTURE_FLEET_CA");
        };
        let ca_pem = std::fs::read_to_string(ca)
            .with_context(|| format!("reading the fleet CA {}", ca.display()))?;
        Ok(Client::new(
            &self.server,
            &ca_pem,
            Some(token.clone()),
            None,
        )?)
    }
}

/// `devices`.
#[derive(Debug, Args)]
pub struct DevicesArgs {
    #[command(flatten)]
    conn: Conn,
    /// A change to one device (none: list them all).
    #[command(subcommand)]
    action: Option<DevicesAction>,
}

/// Changes to a device.
#[derive(Debug, Subcommand)]
pub enum DevicesAction {
    /// Revoke a device: its certificate is refused from now on.
    Revoke {
        /// The device id.
        id: String,
    },
    /// Replace a device's tags.
    Tag {
        /// The device id.
        id: String,
        /// The tags (none: remove all).
        tags: Vec<String>,
    },
    /// Set a device's release channel (release-manager).
    Channel {
        /// The device id.
        id: String,
        /// The channel.
        channel: String,
    },
}

/// `device`.
#[derive(Debug, Args)]
pub struct DeviceArgs {
    #[command(flatten)]
    conn: Conn,
    /// The device id.
    id: String,
}

/// `tokens`.
#[derive(Debug, Args)]
pub struct TokensArgs {
    #[command(flatten)]
    conn: Conn,
    /// What to do.
    #[command(subcommand)]
    action: TokensAction,
}

/// What to do with tokens.
#[derive(Debug, Subcommand)]
pub enum TokensAction {
    /// List the API tokens.
    List,
    /// Make an API token (its secret is printed once).
    Create {
        /// Whose it is.
        #[arg(long)]
        name: String,
        /// Its role: viewer, operator, release-manager or admin.
        #[arg(long)]
        role: Role,
    },
    /// Revoke an API token.
    Revoke {
        /// The token's id (tok-...).
        id: String,
    },
    /// Make one-time enrollment tokens for new devices (printed once, one a line).
    Enroll {
        /// How many.
        #[arg(long, default_value_t = 1)]
        count: u32,
        /// How long they stay valid: N followed by s, m, h or d.
        #[arg(long, default_value = "7d", value_parser = parse_duration)]
        expires: u64,
    },
}

/// `audit`.
#[derive(Debug, Args)]
pub struct AuditArgs {
    #[command(flatten)]
    conn: Conn,
    /// How many lines.
    #[arg(long, default_value_t = 50)]
    limit: u32,
}

/// A duration such as `90s`, `30m`, `12h`, `7d` (a bare number is seconds), in seconds.
pub fn parse_duration(s: &str) -> Result<u64, String> {
    let (digits, unit) = match s.find(|c: char| !c.is_ascii_digit()) {
        Some(i) => s.split_at(i),
        None => (s, "s"),
    };
    let n: u64 = digits
        .parse()
        .map_err(|_| format!("{s:?}: expected a number followed by s, m, h or d"))?;
    let scale = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86400,
        _ => return Err(format!("{s:?}: the unit must be s, m, h or d")),
    };
    match n.checked_mul(scale) {
        Some(0) | None => Err(format!("{s:?}: must be above zero and below a year or so")),
        Some(v) => Ok(v),
    }
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")
}

/// Run a parsed command line.
pub fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Init(a) => init(&a),
        Command::Serve(a) => serve(&a),
        Command::Devices(a) => devices(&a),
        Command::Device(a) => {
            let detail = a.conn.client()?.device(&a.id)?;
            table::print_or_json(a.conn.json, &detail, table::device)
        }
        Command::Tokens(a) => tokens(&a),
        Command::Audit(a) => {
            let lines = a.conn.client()?.audit(a.limit)?;
            table::print_or_json(a.conn.json, &lines, |l| table::audit(l))
        }
        Command::Rollout(a) => rollout::run(&a),
        Command::Provision(a) => provision::run(&a),
    }
}

fn init(a: &InitArgs) -> Result<()> {
    let dir = &a.dir.dir;
    let (_, made) = Identity::init(dir, &a.names)
        .with_context(|| format!("making the fleet identity in {}", dir.display()))?;
    if made {
        eprintln!(
            "made the fleet CA and the server certificate in {}",
            dir.display()
        );
    }
    let url = a.dir.database();
    let created = runtime()?.block_on(async {
        let db = Db::connect(&url).await?;
        let created = db.bootstrap_admin(db::now()).await;
        db.close().await;
        created
    });
    let created = created.with_context(|| format!("setting up the database {url}"))?;
    match created {
        Some(t) => {
            eprintln!(
                "the first admin token ({}), shown this once; keep it somewhere safe:",
                t.info.id
            );
            println!("{}", t.token);
        }
        None => eprintln!("an admin token exists already; none made"),
    }
    eprintln!("clients trust {}", Identity::ca_path(dir).display());
    Ok(())
}

fn load_identity(dir: &Path) -> Result<Identity> {
    Identity::load(dir).with_context(|| {
        format!(
            "loading the fleet identity from {} (run `aperture-fleet init --dir {}` first)",
            dir.display(),
            dir.display()
        )
    })
}

fn serve(a: &ServeArgs) -> Result<()> {
    let identity = load_identity(&a.dir.dir)?;
    let url = a.dir.database();
    runtime()?.block_on(async {
        let db = Db::connect(&url)
            .await
            .with_context(|| format!("opening the database {url}"))?;
        let config = server::Config {
            listen: a.listen,
            identity,
            reports_per_minute: a.reports_per_minute,
            repo: a.repo.as_ref().map(|dir| server::RepoSettings {
                dir: dir.clone(),
                release: a.release,
                reconcile_every: Duration::from_secs(a.reconcile_every),
            }),
        };
        let server = Server::bind(config, db).await?;
        if let Some(s) = server.signer() {
            eprintln!("signing rollouts into {}", s.dir().display());
        }
        // One line scripts and tests can wait for (the port, when bound to port 0).
        eprintln!("listening on https://{}", server.local_addr());
        eprintln!(
            "the dashboard: https://{}/dashboard (an API token in its form, or after #token=)",
            server.local_addr()
        );
        server
            .run(async {
                let _ = tokio::signal::ctrl_c().await;
            })
            .await;
        Ok(())
    })
}

fn devices(a: &DevicesArgs) -> Result<()> {
    let client = a.conn.client()?;
    let changed = match &a.action {
        None => {
            let all = client.devices()?;
            return table::print_or_json(a.conn.json, &all, |d| table::devices(d));
        }
        Some(DevicesAction::Revoke { id }) => client.revoke_device(id)?,
        Some(DevicesAction::Tag { id, tags }) => client.set_tags(id, tags.clone())?,
        Some(DevicesAction::Channel { id, channel }) => client.set_channel(id, channel)?,
    };
    table::print_or_json(a.conn.json, &changed, |d| {
        table::devices(std::slice::from_ref(d))
    })
}

fn tokens(a: &TokensArgs) -> Result<()> {
    let client = a.conn.client()?;
    match &a.action {
        TokensAction::List => {
            let all = client.tokens()?;
            table::print_or_json(a.conn.json, &all, |t| table::tokens(t))
        }
        TokensAction::Create { name, role } => {
            let made = client.create_token(name, *role)?;
            if a.conn.json {
                return table::print_or_json(true, &made, |_| String::new());
            }
            eprintln!("{} ({}, {}), shown this once:", made.info.id, name, role);
            println!("{}", made.token);
            Ok(())
        }
        TokensAction::Revoke { id } => {
            let info = client.revoke_token(id)?;
            table::print_or_json(a.conn.json, &info, |t| {
                table::tokens(std::slice::from_ref(t))
            })
        }
        TokensAction::Enroll { count, expires } => {
            let made = client.enrollment_tokens(*count, *expires)?;
            if a.conn.json {
                return table::print_or_json(true, &made, |_| String::new());
            }
            eprintln!(
                "{count} enrollment token(s), single-use, valid for {expires} s; shown this once:"
            );
            for t in &made.tokens {
                println!("{t}");
            }
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn the_command_line_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn durations_parse() {
        assert_eq!(parse_duration("7d"), Ok(7 * 86400));
        assert_eq!(parse_duration("12h"), Ok(12 * 3600));
        assert_eq!(parse_duration("30m"), Ok(1800));
        assert_eq!(parse_duration("90"), Ok(90));
        assert!(parse_duration("0d").is_err());
        assert!(parse_duration("7w").is_err());
        assert!(parse_duration("d").is_err());
    }

    #[test]
    fn admin_flags_go_after_the_verb() {
        let cli = Cli::try_parse_from([
            "aperture-fleet",
            "tokens",
            "create",
            "--name",
            "ci",
            "--role",
            "viewer",
            "--token",
            "T",
            "--json",
        ])
        .unwrap();
        let Command::Tokens(a) = cli.command else {
            panic!("tokens")
        };
        assert!(a.conn.json);
        assert_eq!(a.conn.token.as_deref(), Some("T"));
    }
}
