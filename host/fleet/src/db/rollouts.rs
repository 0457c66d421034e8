//! Rollouts in the database: starting one (its devices resolved in the same transaction),
//! reading them with their progress, changing their state and pins (each audited in its
//! transaction), and what the repository should sign ([`SigningLock::desired`]).
//!
//! The database is the truth; the repository's signed records follow it (`crate::signer`).
//! At most one rollout of a release is not cancelled (a unique index decides, for every
//! server), because the repository keeps one record per release.

use std::collections::BTreeMap;

use aperture_release::rollout::{RolloutMeta, Selection, State, MAX_DEVICES};
use serde_json::json;
use sqlx::any::AnyRow;
use sqlx::{Any, Row, Transaction};

use super::{audit, Actor, Backend, Db, Error, Result};
use crate::api::{
    DeviceOutcome, DeviceSelector, FailurePolicy, FieldError, Outcome, Progress, RolloutDetail,
    RolloutInfo, WaveInfo,
};
use crate::rollout::NewRollout;

const COLUMNS: &str = "id, channel, version, state, started_at, waves, selection, devices, \
                       pinned, max_failures, max_failure_percent, min_tried, created_by, \
                       updated_at, halt_reason";

/// A state's name in the database.
pub fn state_str(state: State) -> &'static str {
    match state {
        State::Active => "active",
        State::Paused => "paused",
        State::Halted => "halted",
        State::Cancelled => "cancelled",
    }
}

fn parse_state(s: &str) -> Result<State> {
    serde_json::from_value(serde_json::Value::String(s.to_string())).map_err(Error::Corrupt)
}

pub(super) fn corrupt(what: String) -> Error {
    Error::Corrupt(serde::de::Error::custom(what))
}

/// The audit log's name of a rollout.
pub fn target(id: u64) -> String {
    format!("rollout-{id}")
}

/// A rollout's row, read.
#[derive(Debug, Clone)]
pub(crate) struct RolloutRow {
    pub id: u64,
    pub channel: String,
    pub version: String,
    pub state: State,
    pub started_at: i64,
    pub waves: String,
    pub selection: DeviceSelector,
    pub devices: Option<Vec<String>>,
    pub pinned: Vec<String>,
    pub policy: FailurePolicy,
    pub created_by: String,
    pub updated_at: i64,
    pub halt_reason: Option<String>,
}

fn json_col<T: serde::de::DeserializeOwned>(row: &AnyRow, col: &str) -> Result<T> {
    let text: String = row.try_get(col)?;
    serde_json::from_str(&text).map_err(Error::Corrupt)
}

pub(crate) fn row_from(row: &AnyRow) -> Result<RolloutRow> {
    let devices: Option<String> = row.try_get("devices")?;
    let state: String = row.try_get("state")?;
    let id: i64 = row.try_get("id")?;
    let max_failures: Option<i64> = row.try_get("max_failures")?;
    let max_percent: Option<i64> = row.try_get("max_failure_percent")?;
    let min_tried: i64 = row.try_get("min_tried")?;
    Ok(RolloutRow {
        id: u64::try_from(id).map_err(|_| corrupt(format!("rollout id {id}")))?,
        channel: row.try_get("channel")?,
        version: row.try_get("version")?,
        state: parse_state(&state)?,
        started_at: row.try_get("started_at")?,
        waves: row.try_get("waves")?,
        selection: json_col(row, "selection")?,
        devices: devices
            .map(|d| serde_json::from_str(&d))
            .transpose()
            .map_err(Error::Corrupt)?,
        pinned: json_col(row, "pinned")?,
        policy: FailurePolicy {
            max_failures: max_failures.map(|m| m.max(0) as u64),
            max_failure_percent: max_percent.map(|p| p.clamp(0, 100) as u8),
            min_tried: min_tried.max(1) as u64,
        },
        created_by: row.try_get("created_by")?,
        updated_at: row.try_get("updated_at")?,
        halt_reason: row.try_get("halt_reason")?,
    })
}

impl RolloutRow {
    /// The record the repository signs for it.
    pub(crate) fn meta(&self) -> Result<RolloutMeta> {
        Ok(RolloutMeta {
            id: self.id,
            channel: self.channel.clone(),
            version: self
                .version
                .parse()
                .map_err(|e| corrupt(format!("rollout {} version: {e}", self.id)))?,
            state: self.state,
            started_at: self.started_at.max(0) as u64,
            waves: self
                .waves
                .parse()
                .map_err(|e| corrupt(format!("rollout {} waves: {e}", self.id)))?,
            devices: match &self.devices {
                None => Selection::All,
                Some(ids) => Selection::Devices(ids.clone()),
            },
            pinned: self.pinned.clone(),
        })
    }

    /// Whether it names `device`, on `channel`, unpinned: only such devices' reports count.
    pub(crate) fn counts(&self, device: &str, channel: &str) -> bool {
        channel == self.channel
            && !self.pinned.iter().any(|p| p == device)
            && self
                .devices
                .as_ref()
                .is_none_or(|ids| ids.iter().any(|d| d == device))
    }
}

/// A change of a rollout's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StateChange {
    /// Active → paused (operator).
    Pause,
    /// Active or paused → halted (operator).
    Halt,
    /// Paused or halted → active (release-manager).
    Resume,
    /// Any but cancelled → cancelled, for good (release-manager).
    Cancel,
}

impl StateChange {
    /// The verb (in routes, messages and the audit log's `rollout.VERB`).
    pub fn verb(self) -> &'static str {
        match self {
            StateChange::Pause => "pause",
            StateChange::Halt => "halt",
            StateChange::Resume => "resume",
            StateChange::Cancel => "cancel",
        }
    }

    /// The state it leads to.
    pub fn to(self) -> State {
        match self {
            StateChange::Pause => State::Paused,
            StateChange::Halt => State::Halted,
            StateChange::Resume => State::Active,
            StateChange::Cancel => State::Cancelled,
        }
    }

    fn allowed_from(self) -> &'static [State] {
        match self {
            StateChange::Pause => &[State::Active],
            StateChange::Halt => &[State::Active, State::Paused],
            StateChange::Resume => &[State::Paused, State::Halted],
            StateChange::Cancel => &[State::Active, State::Paused, State::Halted],
        }
    }
}

/// Lock a rollout's row for the rest of `tx` (a write: see the module [`super`]) and read it.
async fn lock_row(tx: &mut Transaction<'static, Any>, id: u64, now: i64) -> Result<RolloutRow> {
    let row = sqlx::query(&format!(
        "UPDATE rollouts SET updated_at = $1 WHERE id = $2 RETURNING {COLUMNS}"
    ))
    .bind(now)
    .bind(id as i64)
    .fetch_optional(&mut **tx)
    .await?
    .ok_or(Error::NoRollout(id))?;
    row_from(&row)
}

impl Db {
    /// Start a rollout of a release (the caller checked that the repository publishes it):
    /// its devices resolved now (a tag to the channel's unrevoked devices with it, a list
    /// checked against the channel), audited, in one transaction.
    pub async fn start_rollout(
        &self,
        actor: &Actor,
        new: &NewRollout,
        now: i64,
    ) -> Result<RolloutInfo> {
        let version = new.version.to_string();
        let selection = serde_json::to_string(&new.selection).map_err(Error::Corrupt)?;
        let mut tx = self.pool.begin().await?;
        // The insert first: it takes the write lock, and the unique index refuses a second
        // live rollout of the release (whichever server asks).
        let inserted = sqlx::query(
            "INSERT INTO rollouts (channel, version, state, started_at, waves, selection, \
             pinned, max_failures, max_failure_percent, min_tried, created_by, created_at, \
             updated_at) VALUES ($1, $2, 'active', $3, $4, $5, '[]', $6, $7, $8, $9, $3, $3) \
             RETURNING id",
        )
        .bind(&new.channel)
        .bind(&version)
        .bind(now)
        .bind(new.waves.to_string())
        .bind(&selection)
        .bind(
            new.policy
                .max_failures
                .map(|m| m.min(i64::MAX as u64) as i64),
        )
        .bind(new.policy.max_failure_percent.map(i64::from))
        .bind(new.policy.min_tried.min(i64::MAX as u64) as i64)
        .bind(&actor.0)
        .fetch_one(&mut *tx)
        .await;
        let id: i64 = match inserted {
            Ok(row) => row.try_get("id")?,
            Err(sqlx::Error::Database(e)) if e.is_unique_violation() => {
                drop(tx);
                return Err(self.live_conflict(&new.channel, &version).await);
            }
            Err(e) => return Err(e.into()),
        };
        let id = id as u64;
        let devices = self
            .resolve(&mut tx, &new.selection, &new.channel)
            .await?
            .map(|ids| serde_json::to_string(&ids).map_err(Error::Corrupt))
            .transpose()?;
        sqlx::query("UPDATE rollouts SET devices = $1 WHERE id = $2")
            .bind(&devices)
            .bind(id as i64)
            .execute(&mut *tx)
            .await?;
        audit(
            &mut tx,
            now,
            actor,
            "rollout.start",
            &target(id),
            json!({
                "channel": new.channel,
                "version": version,
                "devices": new.selection,
                "waves": new.waves.to_string(),
                "policy": new.policy,
            }),
        )
        .await?;
        tx.commit().await?;
        Ok(self.rollout(id).await?.rollout)
    }

    /// The 409 for a second live rollout of a release.
    async fn live_conflict(&self, channel: &str, version: &str) -> Error {
        let existing = sqlx::query(
            "SELECT id, state FROM rollouts WHERE channel = $1 AND version = $2 \
             AND state <> 'cancelled'",
        )
        .bind(channel)
        .bind(version)
        .fetch_optional(&self.pool)
        .await;
        let which = match existing {
            Ok(Some(r)) => {
                let id: i64 = r.try_get("id").unwrap_or_default();
                let state: String = r.try_get("state").unwrap_or_default();
                format!("rollout {id} ({state})")
            }
            _ => "another rollout".into(),
        };
        Error::Conflict(format!(
            "{which} of {version} on {channel} is not cancelled: the repository keeps one \
             rollout per release, so resume or cancel that one"
        ))
    }

    /// The device ids a selection names now (`None`: every device of the channel).
    async fn resolve(
        &self,
        tx: &mut Transaction<'static, Any>,
        selection: &DeviceSelector,
        channel: &str,
    ) -> Result<Option<Vec<String>>> {
        let bad = |field: String, why: String| Error::Invalid(FieldError { field, why });
        match selection {
            DeviceSelector::All => Ok(None),
            DeviceSelector::Tag(tag) => {
                let rows = sqlx::query(
                    "SELECT id, tags FROM devices WHERE channel = $1 AND revoked_at IS NULL \
                     ORDER BY id",
                )
                .bind(channel)
                .fetch_all(&mut **tx)
                .await?;
                let mut ids = Vec::new();
                for r in &rows {
                    let tags: Vec<String> = json_col(r, "tags")?;
                    if tags.iter().any(|t| t == tag) {
                        ids.push(r.try_get::<String, _>("id")?);
                    }
                }
                if ids.is_empty() {
                    return Err(bad(
                        "devices.tag".into(),
                        format!("no unrevoked device on channel {channel} has the tag {tag}"),
                    ));
                }
                if ids.len() > MAX_DEVICES {
                    return Err(bad(
                        "devices.tag".into(),
                        format!("{} devices, at most {MAX_DEVICES}", ids.len()),
                    ));
                }
                Ok(Some(ids))
            }
            DeviceSelector::List(ids) => {
                let mut out: Vec<String> = Vec::new();
                for (i, id) in ids.iter().enumerate() {
                    let field = format!("devices.list[{i}]");
                    let row = sqlx::query("SELECT channel, revoked_at FROM devices WHERE id = $1")
                        .bind(id)
                        .fetch_optional(&mut **tx)
                        .await?
                        .ok_or_else(|| bad(field.clone(), format!("no device {id}")))?;
                    let on: String = row.try_get("channel")?;
                    let revoked: Option<i64> = row.try_get("revoked_at")?;
                    if revoked.is_some() {
                        return Err(bad(field, format!("{id} is revoked")));
                    }
                    if on != channel {
                        return Err(bad(
                            field,
                            format!("{id} is on channel {on}, not {channel}"),
                        ));
                    }
                    if !out.contains(id) {
                        out.push(id.clone());
                    }
                }
                Ok(Some(out))
            }
        }
    }

    /// Every rollout, newest first, with its progress.
    pub async fn rollouts(&self) -> Result<Vec<RolloutInfo>> {
        let rows = sqlx::query(&format!("SELECT {COLUMNS} FROM rollouts ORDER BY id DESC"))
            .fetch_all(&self.pool)
            .await?;
        let mut out = Vec::new();
        for r in &rows {
            let row = row_from(r)?;
            let progress = self.progress(&row).await?;
            out.push(info(row, progress));
        }
        Ok(out)
    }

    /// One rollout with every device's outcome.
    pub async fn rollout(&self, id: u64) -> Result<RolloutDetail> {
        let row = sqlx::query(&format!("SELECT {COLUMNS} FROM rollouts WHERE id = $1"))
            .bind(id as i64)
            .fetch_optional(&self.pool)
            .await?
            .ok_or(Error::NoRollout(id))?;
        let row = row_from(&row)?;
        let outcomes = sqlx::query(
            "SELECT device_id, outcome, first_at, at, detail FROM rollout_devices \
             WHERE rollout_id = $1 ORDER BY device_id",
        )
        .bind(id as i64)
        .fetch_all(&self.pool)
        .await?
        .iter()
        .map(|r| {
            let outcome: String = r.try_get("outcome")?;
            Ok(DeviceOutcome {
                device: r.try_get("device_id")?,
                outcome: outcome.parse().map_err(corrupt)?,
                first_at: r.try_get("first_at")?,
                at: r.try_get("at")?,
                detail: r.try_get("detail")?,
            })
        })
        .collect::<Result<Vec<_>>>()?;
        let progress = self.progress(&row).await?;
        Ok(RolloutDetail {
            rollout: info(row, progress),
            outcomes,
        })
    }

    async fn progress(&self, row: &RolloutRow) -> Result<Progress> {
        let counts = sqlx::query(
            "SELECT outcome, COUNT(*) AS n FROM rollout_devices WHERE rollout_id = $1 \
             GROUP BY outcome",
        )
        .bind(row.id as i64)
        .fetch_all(&self.pool)
        .await?;
        let mut by = BTreeMap::new();
        for r in &counts {
            let outcome: String = r.try_get("outcome")?;
            let n: i64 = r.try_get("n")?;
            by.insert(
                outcome.parse::<Outcome>().map_err(corrupt)?,
                n.max(0) as u64,
            );
        }
        let n = |o: Outcome| by.get(&o).copied().unwrap_or(0);
        let named_ids: Vec<String> = match &row.devices {
            Some(ids) => ids.clone(),
            None => {
                sqlx::query_scalar(
                    "SELECT id FROM devices WHERE channel = $1 AND revoked_at IS NULL",
                )
                .bind(&row.channel)
                .fetch_all(&self.pool)
                .await?
            }
        };
        let named = named_ids.iter().filter(|d| !row.pinned.contains(d)).count() as u64;
        let tried: u64 = by.values().sum();
        let failed = n(Outcome::FailedInstall) + n(Outcome::FailedHealth);
        Ok(Progress {
            named,
            pending: named.saturating_sub(tried),
            started: n(Outcome::Started),
            installed: n(Outcome::Installed),
            failed_install: n(Outcome::FailedInstall),
            failed_health: n(Outcome::FailedHealth),
            failure_percent: if tried == 0 {
                0.0
            } else {
                failed as f64 * 100.0 / tried as f64
            },
        })
    }

    /// Change a rollout's state, audited. Returns the rollout and whether it changed (asking
    /// for the state it is in changes nothing and writes no audit line); a change its state
    /// does not allow is a [`Error::Conflict`].
    pub async fn change_rollout_state(
        &self,
        actor: &Actor,
        id: u64,
        change: StateChange,
        reason: Option<&str>,
        now: i64,
    ) -> Result<(RolloutInfo, bool)> {
        let mut tx = self.pool.begin().await?;
        let row = lock_row(&mut tx, id, now).await?;
        if row.state == change.to() {
            drop(tx);
            return Ok((self.rollout(id).await?.rollout, false));
        }
        if row.state == State::Cancelled {
            return Err(Error::Conflict(format!(
                "rollout {id} is cancelled, which is final: start a new rollout of {} on {}",
                row.version, row.channel
            )));
        }
        if !change.allowed_from().contains(&row.state) {
            let allowed: Vec<&str> = change
                .allowed_from()
                .iter()
                .map(|s| state_str(*s))
                .collect();
            return Err(Error::Conflict(format!(
                "rollout {id} is {}: {} needs it {}",
                row.state,
                change.verb(),
                allowed.join(" or ")
            )));
        }
        let halt_reason = match change {
            StateChange::Halt => Some(
                reason
                    .map(str::to_string)
                    .unwrap_or_else(|| format!("halted by {}", actor.0)),
            ),
            StateChange::Pause => row.halt_reason.clone(),
            StateChange::Resume | StateChange::Cancel => None,
        };
        sqlx::query("UPDATE rollouts SET state = $1, halt_reason = $2 WHERE id = $3")
            .bind(state_str(change.to()))
            .bind(&halt_reason)
            .bind(id as i64)
            .execute(&mut *tx)
            .await?;
        audit(
            &mut tx,
            now,
            actor,
            &format!("rollout.{}", change.verb()),
            &target(id),
            json!({ "from": row.state, "to": change.to(), "reason": reason }),
        )
        .await?;
        tx.commit().await?;
        Ok((self.rollout(id).await?.rollout, true))
    }

    /// Pin `device` where it is (or unpin it), audited. Returns the rollout and whether it
    /// changed.
    pub async fn pin_device(
        &self,
        actor: &Actor,
        id: u64,
        device: &str,
        pin: bool,
        now: i64,
    ) -> Result<(RolloutInfo, bool)> {
        let mut tx = self.pool.begin().await?;
        let row = lock_row(&mut tx, id, now).await?;
        if row.state == State::Cancelled {
            return Err(Error::Conflict(format!(
                "rollout {id} is cancelled, which is final"
            )));
        }
        let known = sqlx::query("SELECT id FROM devices WHERE id = $1")
            .bind(device)
            .fetch_optional(&mut *tx)
            .await?;
        if known.is_none() {
            return Err(Error::Invalid(FieldError {
                field: "device".into(),
                why: format!("no device {device}"),
            }));
        }
        let mut pinned = row.pinned.clone();
        let was = pinned.iter().any(|p| p == device);
        if was == pin {
            drop(tx);
            return Ok((self.rollout(id).await?.rollout, false));
        }
        if pin {
            let named = row.devices.as_ref().map_or(0, Vec::len);
            if named + pinned.len() >= MAX_DEVICES {
                return Err(Error::Invalid(FieldError {
                    field: "device".into(),
                    why: format!("a rollout names and pins at most {MAX_DEVICES} devices"),
                }));
            }
            pinned.push(device.to_string());
            pinned.sort();
        } else {
            pinned.retain(|p| p != device);
        }
        sqlx::query("UPDATE rollouts SET pinned = $1 WHERE id = $2")
            .bind(serde_json::to_string(&pinned).map_err(Error::Corrupt)?)
            .bind(id as i64)
            .execute(&mut *tx)
            .await?;
        audit(
            &mut tx,
            now,
            actor,
            if pin { "rollout.pin" } else { "rollout.unpin" },
            &target(id),
            json!({ "device": device }),
        )
        .await?;
        tx.commit().await?;
        Ok((self.rollout(id).await?.rollout, true))
    }

    /// Take the signing lock: on PostgreSQL the `signing_lock` row, `SELECT ... FOR UPDATE`
    /// in a transaction held until [`SigningLock::release`], so that servers sharing the
    /// database sign one at a time. On SQLite nothing here: every server of one SQLite file
    /// runs on its machine, where the flock on the repository folder already serialises them,
    /// and holding SQLite's one write lock while signing would stall every report.
    pub async fn signing_lock(&self) -> Result<SigningLock> {
        let tx = match self.backend {
            Backend::Sqlite => None,
            Backend::Postgres => {
                let mut tx = self.pool.begin().await?;
                sqlx::query("SELECT id FROM signing_lock WHERE id = 1 FOR UPDATE")
                    .fetch_one(&mut *tx)
                    .await?;
                Some(tx)
            }
        };
        Ok(SigningLock {
            pool: self.pool.clone(),
            tx,
        })
    }
}

/// The signing lock ([`Db::signing_lock`]); read what to sign while holding it.
pub struct SigningLock {
    pool: sqlx::AnyPool,
    tx: Option<Transaction<'static, Any>>,
}

impl SigningLock {
    /// The record the repository should hold for each release that has a rollout: that of its
    /// newest rollout (the live one, or else the last cancelled), read under the lock.
    pub async fn desired(&mut self) -> Result<Vec<RolloutMeta>> {
        let sql = format!("SELECT {COLUMNS} FROM rollouts ORDER BY id");
        let rows = match &mut self.tx {
            Some(tx) => sqlx::query(&sql).fetch_all(&mut **tx).await?,
            None => sqlx::query(&sql).fetch_all(&self.pool).await?,
        };
        let mut newest = BTreeMap::new();
        for r in &rows {
            let row = row_from(r)?;
            newest.insert((row.channel.clone(), row.version.clone()), row);
        }
        newest.values().map(RolloutRow::meta).collect()
    }

    /// Record who signed, and let the next signer in.
    pub async fn release(self, holder: &str, now: i64) -> Result<()> {
        if let Some(mut tx) = self.tx {
            sqlx::query("UPDATE signing_lock SET holder = $1, at = $2 WHERE id = 1")
                .bind(holder)
                .bind(now)
                .execute(&mut *tx)
                .await?;
            tx.commit().await?;
        }
        Ok(())
    }
}

fn info(row: RolloutRow, progress: Progress) -> RolloutInfo {
    let wave_times = row
        .waves
        .parse::<aperture_release::Waves>()
        .map(|w| {
            w.waves()
                .iter()
                .map(|w| WaveInfo {
                    percent: w.percent,
                    opens_at: row
                        .started_at
                        .saturating_add(i64::try_from(w.after_secs).unwrap_or(i64::MAX)),
                })
                .collect()
        })
        .unwrap_or_default();
    RolloutInfo {
        id: row.id,
        channel: row.channel,
        version: row.version,
        state: row.state,
        signed_state: None,
        started_at: row.started_at,
        waves: row.waves,
        wave_times,
        selection: row.selection,
        devices: row.devices,
        pinned: row.pinned,
        policy: row.policy,
        halt_reason: row.halt_reason,
        created_by: row.created_by,
        updated_at: row.updated_at,
        progress,
    }
}
