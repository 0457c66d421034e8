//! `aperture-fleet rollout ...`: start, list, status, pause, resume, halt, cancel, pin, unpin;
//! each prints the rollout as a table, or the API's JSON with `--json`.

use anyhow::Result;
use clap::{Args, Subcommand};

use super::{table, Conn};
use crate::api::{DeviceSelector, FailurePolicy, RolloutInfo, StartRollout};

/// `rollout`.
#[derive(Debug, Args)]
pub struct RolloutArgs {
    #[command(flatten)]
    conn: Conn,
    /// What to do.
    #[command(subcommand)]
    action: RolloutCommand,
}

/// What to do with rollouts.
#[derive(Debug, Subcommand)]
pub enum RolloutCommand {
    /// Start the rollout of a release the repository publishes (release-manager).
    Start {
        /// The release's channel.
        #[arg(long)]
        channel: String,
        /// The release's version.
        #[arg(long = "version")]
        release_version: String,
        /// Which devices: `all` (the channel's), `tag:NAME`, or ids separated by commas.
        #[arg(long)]
        devices: DeviceSelector,
        /// Its waves from its start, such as `10%@0h,50%@1h,100%@4h` (default: all at once).
        #[arg(long, default_value = "")]
        waves: String,
        /// Halt once more devices than this failed (0: at the first failure).
        #[arg(long)]
        max_failures: Option<u64>,
        /// Halt once more than this percentage of the devices that tried failed.
        #[arg(long)]
        max_failure_percent: Option<u8>,
        /// Count the percentage only once this many devices tried.
        #[arg(long, default_value_t = 1)]
        min_tried: u64,
    },
    /// List the rollouts, newest first.
    List,
    /// One rollout: its progress and every device's outcome.
    Status {
        /// The rollout's id.
        id: u64,
    },
    /// Pause an active rollout (operator).
    Pause(Change),
    /// Halt a rollout (operator).
    Halt(Change),
    /// Resume a paused or halted rollout (release-manager).
    Resume(Change),
    /// Cancel a rollout for good (release-manager).
    Cancel(Change),
    /// Pin a device where it is: this rollout never moves it (operator).
    Pin(PinArgs),
    /// Unpin a device (operator).
    Unpin(PinArgs),
}

/// A state change.
#[derive(Debug, Args)]
pub struct Change {
    /// The rollout's id.
    id: u64,
    /// Why (kept in the audit log; a halt's reason is shown with the rollout).
    #[arg(long)]
    reason: Option<String>,
}

/// A pin or unpin.
#[derive(Debug, Args)]
pub struct PinArgs {
    /// The rollout's id.
    id: u64,
    /// The device id.
    device: String,
}

fn print_one(json: bool, info: &RolloutInfo) -> Result<()> {
    table::print_or_json(json, info, |r| table::rollouts(std::slice::from_ref(r)))?;
    if let Some(signed) = info.signed_state.filter(|s| *s != info.state) {
        eprintln!(
            "warning: the repository still holds this rollout as {signed}; the server retries \
             signing it at its next reconcile"
        );
    }
    Ok(())
}

/// Run `rollout ...`.
pub fn run(a: &RolloutArgs) -> Result<()> {
    let client = a.conn.client()?;
    let json = a.conn.json;
    let (id, verb, reason) = match &a.action {
        RolloutCommand::Start {
            channel,
            release_version,
            devices,
            waves,
            max_failures,
            max_failure_percent,
            min_tried,
        } => {
            let info = client.start_rollout(&StartRollout {
                channel: channel.clone(),
                version: release_version.clone(),
                devices: devices.clone(),
                waves: waves.clone(),
                policy: FailurePolicy {
                    max_failures: *max_failures,
                    max_failure_percent: *max_failure_percent,
                    min_tried: *min_tried,
                },
            })?;
            return print_one(json, &info);
        }
        RolloutCommand::List => {
            let all = client.rollouts()?;
            return table::print_or_json(json, &all, |r| table::rollouts(r));
        }
        RolloutCommand::Status { id } => {
            let detail = client.rollout(*id)?;
            return table::print_or_json(json, &detail, table::rollout);
        }
        RolloutCommand::Pin(p) | RolloutCommand::Unpin(p) => {
            let pin = matches!(a.action, RolloutCommand::Pin(_));
            let info = client.pin(p.id, &p.device, pin)?;
            return print_one(json, &info);
        }
        RolloutCommand::Pause(c) => (c.id, "pause", &c.reason),
        RolloutCommand::Halt(c) => (c.id, "halt", &c.reason),
        RolloutCommand::Resume(c) => (c.id, "resume", &c.reason),
        RolloutCommand::Cancel(c) => (c.id, "cancel", &c.reason),
    };
    let info = client.rollout_state(id, verb, reason.clone())?;
    print_one(json, &info)
}
