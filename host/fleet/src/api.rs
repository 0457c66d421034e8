//! The fleet server's HTTP API as JSON types, shared by the server and the admin command line,
//! with the bounds every field from a device must keep. What a device sends and receives is
//! `aperture-fleet-api`'s (re-exported here), so device programs need no host crate.
//!
//! | method and path | who | body → answer |
//! |---|---|---|
//! | `POST /v1/enroll` | a device with a one-time token | [`EnrollRequest`] → [`EnrollResponse`] |
//! | `POST /v1/devices/{id}/report` | that device (mutual TLS) | [`Report`] → 204 |
//! | `GET /v1/devices` | viewer | → `[`[`DeviceInfo`]`]` |
//! | `GET /v1/devices/{id}` | viewer | → [`DeviceDetail`] |
//! | `POST /v1/devices/{id}/revoke` | operator | → [`DeviceInfo`] |
//! | `PUT /v1/devices/{id}/tags` | operator | [`TagsRequest`] → [`DeviceInfo`] |
//! | `PUT /v1/devices/{id}/channel` | release-manager | [`ChannelRequest`] → [`DeviceInfo`] |
//! | `POST /v1/enrollment-tokens` | operator | [`EnrollmentTokensRequest`] → [`EnrollmentTokens`] |
//! | `GET /v1/tokens` | admin | → `[`[`TokenInfo`]`]` |
//! | `POST /v1/tokens` | admin | [`CreateTokenRequest`] → [`CreatedToken`] |
//! | `POST /v1/tokens/{id}/revoke` | admin | → [`TokenInfo`] |
//! | `GET /v1/audit?limit=N` | admin | → `[`[`AuditEntry`]`]`, newest first |
//! | `POST /v1/rollouts` | release-manager | [`StartRollout`] → [`RolloutInfo`] (201) |
//! | `GET /v1/rollouts` | viewer | → `[`[`RolloutInfo`]`]`, newest first |
//! | `GET /v1/rollouts/{id}` | viewer | → [`RolloutDetail`] |
//! | `GET /v1/rollouts/{id}/series` | viewer | → [`RolloutSeries`] |
//! | `POST /v1/rollouts/{id}/pause` | operator | [`RolloutAction`] (optional) → [`RolloutInfo`] |
//! | `POST /v1/rollouts/{id}/halt` | operator | [`RolloutAction`] (optional) → [`RolloutInfo`] |
//! | `POST /v1/rollouts/{id}/resume` | release-manager | [`RolloutAction`] (optional) → [`RolloutInfo`] |
//! | `POST /v1/rollouts/{id}/cancel` | release-manager | [`RolloutAction`] (optional) → [`RolloutInfo`] |
//! | `POST /v1/rollouts/{id}/pin` | operator | [`PinRequest`] → [`RolloutInfo`] |
//! | `POST /v1/rollouts/{id}/unpin` | operator | [`PinRequest`] → [`RolloutInfo`] |
//! | `GET /v1/health` | anyone | → `ok` |
//! | `GET /dashboard` (and its `app.js`, `style.css`) | anyone (it holds no data; its script calls the routes above with a token) | → HTML |
//!
//! Errors are [`ErrorBody`] with the status: 400 malformed (naming the field), 401 no or bad
//! credentials, 403 credentials that may not do this, 404, 409 a change the rollout's state
//! does not allow, 413 too large, 429 too many, 503 a rollout change on a server started
//! without `--repo`.

use std::fmt;
use std::str::FromStr;

use aperture_release::rollout::State;
use serde::{Deserialize, Serialize};

use crate::token::Role;

/// The device-facing types and bounds live in `aperture-fleet-api` (common/fleet-api), which
/// the appliance shares; they are re-exported here so the server's paths stay the same.
pub use aperture_fleet_api::{
    check_name, EnrollRequest, EnrollResponse, FieldError, HealthResult, MetricsState, Report,
    RuntimeModel, RuntimeSummary, SlotState, UpdateResult, MAX_ENROLL_BYTES, MAX_LINE, MAX_NAME,
    MAX_REPORT_BYTES, MAX_SLOTS, RESULT_COMMITTED, RESULT_FAILED, RESULT_ROLLED_BACK,
};

/// Most tags on a device.
pub const MAX_TAGS: usize = 16;

/// A device as administrators see it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeviceInfo {
    /// The server's name for it.
    pub id: String,
    /// Its hardware serial, as it said at enrollment.
    pub serial: String,
    /// SHA-256 of its certificate (hex).
    pub cert_sha256: String,
    /// Its tags.
    pub tags: Vec<String>,
    /// Its release channel.
    pub channel: String,
    /// When it enrolled (Unix seconds).
    pub enrolled_at: i64,
    /// When it was revoked, if it was.
    pub revoked_at: Option<i64>,
    /// Its last report's time.
    pub last_seen_at: Option<i64>,
    /// Its last report.
    pub last_report: Option<Report>,
}

/// A device with its recent reports, newest first.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeviceDetail {
    /// The device.
    pub device: DeviceInfo,
    /// Its recent reports (bounded), newest first.
    pub history: Vec<ReportRecord>,
}

/// One stored report.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReportRecord {
    /// When the server received it (Unix seconds).
    pub received_at: i64,
    /// The report.
    pub report: Report,
}

/// New tags for a device (replacing its tags).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TagsRequest {
    /// The tags, at most [`MAX_TAGS`].
    pub tags: Vec<String>,
}

/// A new release channel for a device.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChannelRequest {
    /// The channel.
    pub channel: String,
}

/// A request for enrollment tokens.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EnrollmentTokensRequest {
    /// How many (1 to 1000).
    pub count: u32,
    /// Their lifetime in seconds (at most a year).
    pub expires_in: u64,
}

/// New enrollment tokens, shown once.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EnrollmentTokens {
    /// The tokens.
    pub tokens: Vec<String>,
    /// When they expire (Unix seconds).
    pub expires_at: i64,
}

/// An admin API token, without its secret.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TokenInfo {
    /// Its id (`tok-...`).
    pub id: String,
    /// Its name (whose it is).
    pub name: String,
    /// Its role.
    pub role: Role,
    /// When it was made.
    pub created_at: i64,
    /// Who made it (an actor as the audit log names it).
    pub created_by: String,
    /// When it was revoked, if it was.
    pub revoked_at: Option<i64>,
}

/// A request for a new API token.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateTokenRequest {
    /// Its name.
    pub name: String,
    /// Its role.
    pub role: Role,
}

/// A new API token: its secret is shown this once.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CreatedToken {
    /// The token's record.
    pub info: TokenInfo,
    /// The secret.
    pub token: String,
}

/// One line of the audit log.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AuditEntry {
    /// Its sequence number.
    pub id: i64,
    /// When (Unix seconds).
    pub at: i64,
    /// Who: `token:ID (NAME)`, `enrollment`, or `init`.
    pub actor: String,
    /// What (`device.revoke`, `token.create`, ...).
    pub action: String,
    /// On what (a device or token id).
    pub target: String,
    /// The details (JSON).
    pub detail: serde_json::Value,
}

/// Which devices a rollout is for, as the administrator asked: `"all"` (every device of the
/// release's channel, now and later), `{"tag": "site-7"}` (the channel's devices with that
/// tag when it starts) or `{"list": ["dev-...", ...]}`. On the command line: `all`, `tag:X`,
/// or ids separated by commas.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub enum DeviceSelector {
    /// Every device of the channel.
    All,
    /// The channel's devices with this tag.
    Tag(String),
    /// These devices.
    List(Vec<String>),
}

impl fmt::Display for DeviceSelector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DeviceSelector::All => f.write_str("all"),
            DeviceSelector::Tag(t) => write!(f, "tag:{t}"),
            DeviceSelector::List(ids) => f.write_str(&ids.join(",")),
        }
    }
}

impl FromStr for DeviceSelector {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let s = s.trim();
        if s == "all" {
            return Ok(DeviceSelector::All);
        }
        if let Some(tag) = s.strip_prefix("tag:") {
            return Ok(DeviceSelector::Tag(tag.to_string()));
        }
        let ids: Vec<String> = s
            .split(',')
            .map(str::trim)
            .filter(|d| !d.is_empty())
            .map(str::to_string)
            .collect();
        if ids.is_empty() {
            return Err(format!(
                "{s:?}: expected `all`, `tag:NAME` or device ids separated by commas"
            ));
        }
        Ok(DeviceSelector::List(ids))
    }
}

/// When a rollout halts itself. A device *tried* once it reported about the release at all;
/// it *failed* once it reported a failed install or a failed health gate. The rollout halts
/// when more than `max_failures` devices failed, or when more than `max_failure_percent` of
/// those that tried failed, the latter only once `min_tried` devices tried (so that the first
/// failure of a large fleet is not 100 %). At least one of the two limits is required.
/// Resuming a halted rollout keeps its counts: the next device that newly fails halts it
/// again while the policy is still exceeded (devices that failed before do not, however often
/// they report it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FailurePolicy {
    /// Halt once more devices than this failed (0: at the first failure).
    #[serde(default)]
    pub max_failures: Option<u64>,
    /// Halt once more than this percentage (0 to 100) of the devices that tried failed.
    #[serde(default)]
    pub max_failure_percent: Option<u8>,
    /// The percentage counts only from this many devices tried on (at least 1).
    #[serde(default = "one")]
    pub min_tried: u64,
}

fn one() -> u64 {
    1
}

/// A request to start a rollout of a published release.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StartRollout {
    /// The release's channel.
    pub channel: String,
    /// The release's version.
    pub version: String,
    /// Which devices.
    pub devices: DeviceSelector,
    /// The rollout's waves (`10%@0h,50%@1h,100%@4h`; empty or `all`: every device at once),
    /// counted from its start, in addition to the release's own.
    #[serde(default)]
    pub waves: String,
    /// When it halts itself.
    pub policy: FailurePolicy,
}

/// The optional body of pause, halt, resume and cancel: why (kept in the audit log; a halt's
/// reason is also the rollout's).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RolloutAction {
    /// Why.
    #[serde(default)]
    pub reason: Option<String>,
}

/// The body of pin and unpin.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PinRequest {
    /// The device id.
    pub device: String,
}

/// What a device did in a rollout; it only moves forward: `started`, then `installed`, then a
/// failure (a device that failed stays failed for that rollout: a retry that works does not
/// erase that the release failed on it once).
///
/// A report is about the rollout's version V when it runs V or its last update was of V:
///
/// * `failed-install`: `last_update.result` is [`RESULT_FAILED`] for V (V never ran);
/// * `failed-health`: `last_update.result` is [`RESULT_ROLLED_BACK`] for V, or it runs V and
///   its health gate failed (`health.passed` false);
/// * `installed`: it runs V and its health gate passed, or V was [`RESULT_COMMITTED`];
/// * `started`: anything else about V (installed and waiting to reboot, on trial).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Outcome {
    /// It reported about the release, with no verdict yet.
    Started,
    /// It runs the release, healthy.
    Installed,
    /// Its install of the release failed.
    FailedInstall,
    /// The release ran on it and failed its health gate.
    FailedHealth,
}

impl Outcome {
    /// Every outcome.
    pub const ALL: [Outcome; 4] = [
        Outcome::Started,
        Outcome::Installed,
        Outcome::FailedInstall,
        Outcome::FailedHealth,
    ];

    /// The name in the database and the API.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Started => "started",
            Outcome::Installed => "installed",
            Outcome::FailedInstall => "failed-install",
            Outcome::FailedHealth => "failed-health",
        }
    }

    /// Whether it counts as a failure.
    pub fn is_failure(self) -> bool {
        matches!(self, Outcome::FailedInstall | Outcome::FailedHealth)
    }
}

impl FromStr for Outcome {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        Outcome::ALL
            .into_iter()
            .find(|o| o.as_str() == s)
            .ok_or_else(|| format!("unknown outcome {s:?}"))
    }
}

/// One wave of a rollout: its share of the devices and when it opens (Unix seconds).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WaveInfo {
    /// Cumulative share of the devices.
    pub percent: u8,
    /// When it opens.
    pub opens_at: i64,
}

/// How far a rollout got. Which wave a device is in depends on a seed the device drew itself,
/// which the server does not know: progress is counted over the whole rollout, and the waves
/// are shown with the times they open.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Progress {
    /// Devices it names now (the channel's unrevoked devices for `all`), pins left out.
    pub named: u64,
    /// Named devices that have not reported about the release yet.
    pub pending: u64,
    /// Devices that reported about it, with no verdict yet.
    pub started: u64,
    /// Devices running it, healthy.
    pub installed: u64,
    /// Devices whose install of it failed.
    pub failed_install: u64,
    /// Devices on which it failed its health gate.
    pub failed_health: u64,
    /// Failed devices as a percentage of those that tried (0 before any tried).
    pub failure_percent: f64,
}

/// A rollout as administrators see it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RolloutInfo {
    /// Its id (also in the signed record).
    pub id: u64,
    /// The release's channel.
    pub channel: String,
    /// The release's version.
    pub version: String,
    /// Its state in the database.
    pub state: State,
    /// The state the repository's signed record holds (`null`: none signed, or this server
    /// has no `--repo`); differs from `state` until the server has signed the change.
    pub signed_state: Option<State>,
    /// When it started (Unix seconds); its waves count from it.
    pub started_at: i64,
    /// Its waves, as `10%@0h,100%@4h` (`all`: every device at once).
    pub waves: String,
    /// Each wave with the time it opens.
    pub wave_times: Vec<WaveInfo>,
    /// The devices as asked for.
    pub selection: DeviceSelector,
    /// The ids they resolved to when it started (`null`: every device of the channel).
    pub devices: Option<Vec<String>>,
    /// Devices pinned where they are.
    pub pinned: Vec<String>,
    /// When it halts itself.
    pub policy: FailurePolicy,
    /// Why it was halted, while halted.
    pub halt_reason: Option<String>,
    /// Who started it.
    pub created_by: String,
    /// When its record last changed.
    pub updated_at: i64,
    /// How far it got.
    pub progress: Progress,
}

/// One device's outcome in a rollout.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceOutcome {
    /// The device.
    pub device: String,
    /// What it did.
    pub outcome: Outcome,
    /// Its first report about the release (Unix seconds).
    pub first_at: i64,
    /// When its outcome last changed.
    pub at: i64,
    /// The journal line or health detail of that report.
    pub detail: String,
}

/// A rollout with every device's outcome (by device id).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RolloutDetail {
    /// The rollout.
    pub rollout: RolloutInfo,
    /// The outcome of each device that reported about its release.
    pub outcomes: Vec<DeviceOutcome>,
}

/// A rollout's progress over time: one point at each time a device's outcome changed, each
/// with the counts as they stood then.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RolloutSeries {
    /// The rollout.
    pub rollout: u64,
    /// The points, oldest first.
    pub points: Vec<SeriesPoint>,
}

/// The counts of a rollout at one time.
///
/// A device's row keeps only its first report about the release and the time of its latest
/// outcome, so a device counts as tried from its first report and in its current outcome from
/// the time it reached it (a failure is final, so a failed device's time is when it failed;
/// one that was installed before it failed is counted as started until then).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SeriesPoint {
    /// When (Unix seconds).
    pub at: i64,
    /// Devices that had reported about the release.
    pub tried: u64,
    /// Devices running it, healthy.
    pub installed: u64,
    /// Devices on which it had failed (install or health gate).
    pub failed: u64,
    /// `failed` as a percentage of `tried`.
    pub failure_percent: f64,
}

/// An error's body.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ErrorBody {
    /// What went wrong.
    pub error: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_selectors_parse_print_and_serialise() {
        for (text, sel) in [
            ("all", DeviceSelector::All),
            ("tag:site-7", DeviceSelector::Tag("site-7".into())),
            (
                "dev-a,dev-b",
                DeviceSelector::List(vec!["dev-a".into(), "dev-b".into()]),
            ),
        ] {
            assert_eq!(text.parse::<DeviceSelector>().unwrap(), sel);
            assert_eq!(sel.to_string(), text);
        }
        assert!(",".parse::<DeviceSelector>().is_err());
        assert_eq!(
            serde_json::to_string(&DeviceSelector::All).unwrap(),
            r#""all""#
        );
        assert_eq!(
            serde_json::to_string(&DeviceSelector::Tag("x".into())).unwrap(),
            r#"{"tag":"x"}"#
        );
        let policy: FailurePolicy = serde_json::from_str(r#"{"max_failures": 2}"#).unwrap();
        assert_eq!((policy.max_failures, policy.min_tried), (Some(2), 1));
    }
}
