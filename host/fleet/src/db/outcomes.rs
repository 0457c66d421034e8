//! Each device's outcome in a rollout, recorded from its reports in the report's own
//! transaction, and the failure policy applied there: a rollout that fails too often halts in
//! the transaction of the report that tipped it, with an audit line by the actor `policy`.
//!
//! Exactly once, whatever the number of servers: the report's transaction locks the rows of
//! the rollouts it is about (`FOR UPDATE` on PostgreSQL; SQLite's write lock is already held
//! by the report's first statement), so reports about one rollout are counted one after the
//! other and each sees the ones before it; the halt is `UPDATE ... WHERE state = 'active'`.
//! A device has one row per rollout, moved only forward (a failure is final), so repeating a
//! report, or sending another failure, never counts it twice. The policy is evaluated when a
//! row is inserted (the number tried grows: a success may be the try that reaches `min_tried`
//! with the rate already over the limit) or changes to a failure; the halt happens once.
//! Devices the rollout does not name (another channel, not in its list, pinned) are not
//! recorded.
//!
//! The rows are also the rollout's history: [`Db::rollout_series`] reads its progress and
//! failure rate over time from their times (the dashboard's charts).

use serde_json::json;
use sqlx::{Any, Row, Transaction};

use super::rollouts::{corrupt, row_from, target, RolloutRow};
use super::{audit, Actor, Backend, Db, Error, Result};
use crate::api::{Outcome, Report, RolloutSeries};
use crate::rollout::{classify, series, verdict, version_key};

/// The outcomes' order (an outcome moves only to a higher rank), in SQL.
fn rank(column: &str) -> String {
    format!("(CASE {column} WHEN 'started' THEN 0 WHEN 'installed' THEN 1 ELSE 2 END)")
}

/// A rollout the policy halted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Halted {
    /// The rollout.
    pub id: u64,
    /// Why.
    pub reason: String,
}

/// Record what `report` of `device` (on `channel`) says about the rollouts of the release it
/// runs or last tried, and apply their failure policies; inside the report's transaction.
/// Returns the rollouts it halted (the caller has the repository re-sign them).
pub(crate) async fn record(
    tx: &mut Transaction<'static, Any>,
    backend: Backend,
    device: &str,
    channel: &str,
    report: &Report,
    now: i64,
) -> Result<Vec<Halted>> {
    let running = version_key(&report.version);
    let tried = report
        .last_update
        .as_ref()
        .and_then(|u| u.version.as_deref())
        .map(version_key)
        .unwrap_or_else(|| running.clone());
    let lock = match backend {
        Backend::Postgres => " FOR UPDATE",
        Backend::Sqlite => "",
    };
    let rows = sqlx::query(&format!(
        "SELECT id, channel, version, state, started_at, waves, selection, devices, pinned, \
         max_failures, max_failure_percent, min_tried, created_by, updated_at, halt_reason \
         FROM rollouts WHERE channel = $1 AND state <> 'cancelled' \
         AND (version = $2 OR version = $3) ORDER BY id{lock}"
    ))
    .bind(channel)
    .bind(&running)
    .bind(&tried)
    .fetch_all(&mut **tx)
    .await?;
    let mut halted = Vec::new();
    for r in &rows {
        let rollout = row_from(r)?;
        if !rollout.counts(device, channel) {
            continue;
        }
        let Some((outcome, detail)) = classify(report, &rollout.version) else {
            continue;
        };
        // The row before this report (the transaction holds the rollout's lock, so no other
        // report of it runs in between): whether this report adds a device to the tried.
        let before = sqlx::query(
            "SELECT outcome FROM rollout_devices WHERE rollout_id = $1 AND device_id = $2",
        )
        .bind(rollout.id as i64)
        .bind(device)
        .fetch_optional(&mut **tx)
        .await?;
        let changed = sqlx::query(&format!(
            "INSERT INTO rollout_devices (rollout_id, device_id, outcome, first_at, at, detail) \
             VALUES ($1, $2, $3, $4, $4, $5) \
             ON CONFLICT (rollout_id, device_id) DO UPDATE \
             SET outcome = excluded.outcome, at = excluded.at, detail = excluded.detail \
             WHERE {} > {} RETURNING outcome",
            rank("excluded.outcome"),
            rank("rollout_devices.outcome"),
        ))
        .bind(rollout.id as i64)
        .bind(device)
        .bind(outcome.as_str())
        .bind(now)
        .bind(&detail)
        .fetch_optional(&mut **tx)
        .await?;
        // A new device changes the count tried (a success that brings it to `min_tried` may
        // leave the rate over the limit); a change to a failure changes the count failed.
        // Other changes (started, installed, committed of a device already counted) leave
        // both as they were.
        let inserted = changed.is_some() && before.is_none();
        let failed = changed.is_some() && outcome.is_failure();
        if !(inserted || failed) {
            continue;
        }
        if let Some(h) = apply_policy(tx, &rollout, device, now).await? {
            halted.push(h);
        }
    }
    Ok(halted)
}

impl Db {
    /// Rollout `id`'s counts over time ([`crate::rollout::series`]), from its devices' rows.
    pub async fn rollout_series(&self, id: u64) -> Result<RolloutSeries> {
        sqlx::query("SELECT id FROM rollouts WHERE id = $1")
            .bind(id as i64)
            .fetch_optional(&self.pool)
            .await?
            .ok_or(Error::NoRollout(id))?;
        let rows =
            sqlx::query("SELECT first_at, at, outcome FROM rollout_devices WHERE rollout_id = $1")
                .bind(id as i64)
                .fetch_all(&self.pool)
                .await?
                .iter()
                .map(|r| {
                    let outcome: String = r.try_get("outcome")?;
                    let outcome: Outcome = outcome.parse().map_err(corrupt)?;
                    Ok((r.try_get("first_at")?, r.try_get("at")?, outcome))
                })
                .collect::<Result<Vec<_>>>()?;
        Ok(RolloutSeries {
            rollout: id,
            points: series(&rows),
        })
    }
}

/// Count the rollout's tries and failures and halt it if its policy says so.
async fn apply_policy(
    tx: &mut Transaction<'static, Any>,
    rollout: &RolloutRow,
    device: &str,
    now: i64,
) -> Result<Option<Halted>> {
    if rollout.state != aperture_release::rollout::State::Active {
        return Ok(None);
    }
    let counts = sqlx::query(
        "SELECT COUNT(*) AS tried, \
         COUNT(CASE WHEN outcome IN ('failed-install', 'failed-health') THEN 1 END) AS failed \
         FROM rollout_devices WHERE rollout_id = $1",
    )
    .bind(rollout.id as i64)
    .fetch_one(&mut **tx)
    .await?;
    let tried: i64 = counts.try_get("tried")?;
    let failed: i64 = counts.try_get("failed")?;
    let (tried, failed) = (tried.max(0) as u64, failed.max(0) as u64);
    let Some(reason) = verdict(&rollout.policy, tried, failed) else {
        return Ok(None);
    };
    let done = sqlx::query(
        "UPDATE rollouts SET state = 'halted', halt_reason = $1, updated_at = $2 \
         WHERE id = $3 AND state = 'active' RETURNING id",
    )
    .bind(&reason)
    .bind(now)
    .bind(rollout.id as i64)
    .fetch_optional(&mut **tx)
    .await?;
    if done.is_none() {
        return Ok(None);
    }
    audit(
        tx,
        now,
        &Actor("policy".into()),
        "rollout.halt",
        &target(rollout.id),
        json!({
            "from": rollout.state,
            "to": "halted",
            "reason": reason,
            "tried": tried,
            "failed": failed,
            "device": device,
            "policy": rollout.policy,
        }),
    )
    .await?;
    tracing::warn!("rollout {} halted by its policy: {reason}", rollout.id);
    Ok(Some(Halted {
        id: rollout.id,
        reason,
    }))
}
