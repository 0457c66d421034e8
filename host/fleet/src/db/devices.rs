//! Devices in the database: enrollment (consuming a one-time token), the identity check of
//! every mutual-TLS request, reports with their rate limit and bounded history, and what
//! administrators do to devices (revoke, tag, channel), each audited in its own transaction.

use serde_json::json;
use sqlx::any::AnyRow;
use sqlx::Row;

use super::outcomes::Halted;
use super::{audit, Actor, Db, Error, Result};
use crate::api::{DeviceDetail, DeviceInfo, Report, ReportRecord};
use crate::token;

const DEVICE_COLUMNS: &str =
    "id, serial, cert_sha256, tags, channel, enrolled_at, revoked_at, last_seen_at, last_report";

fn device_from_row(row: &AnyRow) -> Result<DeviceInfo> {
    let tags: String = row.try_get("tags")?;
    let last_report: Option<String> = row.try_get("last_report")?;
    Ok(DeviceInfo {
        id: row.try_get("id")?,
        serial: row.try_get("serial")?,
        cert_sha256: row.try_get("cert_sha256")?,
        tags: serde_json::from_str(&tags).map_err(Error::Corrupt)?,
        channel: row.try_get("channel")?,
        enrolled_at: row.try_get("enrolled_at")?,
        revoked_at: row.try_get("revoked_at")?,
        last_seen_at: row.try_get("last_seen_at")?,
        last_report: last_report
            .map(|r| serde_json::from_str(&r))
            .transpose()
            .map_err(Error::Corrupt)?,
    })
}

/// A change to one column of a device: `set` is the SQL assignment with `$1` for `value` (the
/// time when `None`), `action` and `detail` its audit line.
struct Change {
    set: &'static str,
    value: Option<String>,
    action: &'static str,
    detail: serde_json::Value,
}

/// What [`Db::take_report_slot`] decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RateDecision {
    /// Under the limit: store the report.
    Allowed,
    /// Over the limit this minute.
    Limited,
}

impl Db {
    /// Whether an enrollment token could be used now (a cheap check before signing anything;
    /// [`Db::enroll`] is what decides, atomically).
    pub async fn enrollment_token_usable(&self, token: &str, now: i64) -> Result<bool> {
        let row = sqlx::query(
            "SELECT hash FROM enrollment_tokens WHERE hash = $1 AND used_at IS NULL \
             AND expires_at > $2",
        )
        .bind(token::hash(token))
        .bind(now)
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.is_some())
    }

    /// Consume `token` and record the device `device_id` with its certificate's fingerprint
    /// and its public key's (`public_key_sha256`, which [`Db::resumable_enrollment`] matches),
    /// in one transaction: of two requests with one token, exactly one succeeds.
    pub async fn enroll(
        &self,
        token: &str,
        device_id: &str,
        serial: &str,
        cert_sha256: &str,
        public_key_sha256: &str,
        now: i64,
    ) -> Result<()> {
        let hash = token::hash(token);
        let mut tx = self.pool.begin().await?;
        let consumed = sqlx::query(
            "UPDATE enrollment_tokens SET used_at = $1, device_id = $2, public_key_sha256 = $4 \
             WHERE hash = $3 AND used_at IS NULL AND expires_at > $1 RETURNING hash",
        )
        .bind(now)
        .bind(device_id)
        .bind(&hash)
        .bind(public_key_sha256)
        .fetch_optional(&mut *tx)
        .await?;
        if consumed.is_none() {
            return Err(Error::TokenRefused);
        }
        sqlx::query(
            "INSERT INTO devices (id, serial, cert_sha256, enrolled_at) VALUES ($1, $2, $3, $4)",
        )
        .bind(device_id)
        .bind(serial)
        .bind(cert_sha256)
        .bind(now)
        .execute(&mut *tx)
        .await?;
        audit(
            &mut tx,
            now,
            &Actor("enrollment".into()),
            "device.enroll",
            device_id,
            json!({ "serial": serial, "token_sha256": hash, "cert_sha256": cert_sha256 }),
        )
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// The device an enrollment cut short may resume as: `token` was used, has not expired,
    /// by the key whose fingerprint is `public_key_sha256`, for a device not revoked. Nobody
    /// else can: the token alone is not enough, the key must be the one that used it.
    pub async fn resumable_enrollment(
        &self,
        token: &str,
        public_key_sha256: &str,
        now: i64,
    ) -> Result<Option<String>> {
        let row = sqlx::query(
            "SELECT t.device_id FROM enrollment_tokens t JOIN devices d ON d.id = t.device_id \
             WHERE t.hash = $1 AND t.used_at IS NOT NULL AND t.expires_at > $2 \
             AND t.public_key_sha256 = $3 AND d.revoked_at IS NULL",
        )
        .bind(token::hash(token))
        .bind(now)
        .bind(public_key_sha256)
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.map(|r| r.try_get("device_id")).transpose()?)
    }

    /// Resume an enrollment cut short ([`Db::resumable_enrollment`], checked again in this
    /// transaction): the device's certificate becomes `cert_sha256` (the one it never received
    /// is no longer accepted), with an audit line.
    pub async fn resume_enrollment(
        &self,
        token: &str,
        device_id: &str,
        public_key_sha256: &str,
        cert_sha256: &str,
        now: i64,
    ) -> Result<()> {
        let hash = token::hash(token);
        let mut tx = self.pool.begin().await?;
        let updated = sqlx::query(
            "UPDATE devices SET cert_sha256 = $1 WHERE id = $2 AND revoked_at IS NULL AND \
             EXISTS (SELECT 1 FROM enrollment_tokens WHERE hash = $3 AND device_id = $2 \
             AND used_at IS NOT NULL AND expires_at > $4 AND public_key_sha256 = $5) \
             RETURNING id",
        )
        .bind(cert_sha256)
        .bind(device_id)
        .bind(&hash)
        .bind(now)
        .bind(public_key_sha256)
        .fetch_optional(&mut *tx)
        .await?;
        if updated.is_none() {
            return Err(Error::TokenRefused);
        }
        audit(
            &mut tx,
            now,
            &Actor("enrollment".into()),
            "device.enroll.resume",
            device_id,
            json!({ "token_sha256": hash, "cert_sha256": cert_sha256 }),
        )
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// The id of the enrolled, unrevoked device whose certificate has this fingerprint.
    pub async fn device_by_cert(&self, cert_sha256: &str) -> Result<Option<String>> {
        let row =
            sqlx::query("SELECT id FROM devices WHERE cert_sha256 = $1 AND revoked_at IS NULL")
                .bind(cert_sha256)
                .fetch_optional(&self.pool)
                .await?;
        Ok(row.map(|r| r.try_get("id")).transpose()?)
    }

    /// Count a report of `device_id` against its limit of `per_minute` in the current minute,
    /// in one atomic statement (a fixed one-minute window kept in the device's row).
    pub async fn take_report_slot(
        &self,
        device_id: &str,
        per_minute: i64,
        now: i64,
    ) -> Result<RateDecision> {
        let row = sqlx::query(
            "UPDATE devices SET \
               rate_count = CASE WHEN rate_window = $2 THEN rate_count + 1 ELSE 1 END, \
               rate_window = $2 \
             WHERE id = $1 RETURNING rate_count",
        )
        .bind(device_id)
        .bind(now / 60)
        .fetch_optional(&self.pool)
        .await?
        .ok_or_else(|| Error::NoDevice(device_id.to_string()))?;
        let count: i64 = row.try_get("rate_count")?;
        Ok(if count > per_minute {
            RateDecision::Limited
        } else {
            RateDecision::Allowed
        })
    }

    /// Store a report: the device's latest, and its history trimmed to [`Db::history`]; in
    /// the same transaction, its outcome in the rollouts of the release it reports about and
    /// their failure policies ([`super::outcomes`]). Returns the rollouts the policy halted.
    pub async fn store_report(
        &self,
        device_id: &str,
        report: &Report,
        now: i64,
    ) -> Result<Vec<Halted>> {
        let text = serde_json::to_string(report).map_err(Error::Corrupt)?;
        let mut tx = self.pool.begin().await?;
        let channel: String = sqlx::query(
            "UPDATE devices SET last_report = $1, last_seen_at = $2 WHERE id = $3 \
             RETURNING channel",
        )
        .bind(&text)
        .bind(now)
        .bind(device_id)
        .fetch_optional(&mut *tx)
        .await?
        .ok_or_else(|| Error::NoDevice(device_id.to_string()))?
        .try_get("channel")?;
        sqlx::query(
            "INSERT INTO device_reports (device_id, received_at, report) VALUES ($1, $2, $3)",
        )
        .bind(device_id)
        .bind(now)
        .bind(&text)
        .execute(&mut *tx)
        .await?;
        sqlx::query(
            "DELETE FROM device_reports WHERE device_id = $1 AND id <= \
             (SELECT id FROM device_reports WHERE device_id = $1 ORDER BY id DESC \
              LIMIT 1 OFFSET $2)",
        )
        .bind(device_id)
        .bind(self.history)
        .execute(&mut *tx)
        .await?;
        let halted =
            super::outcomes::record(&mut tx, self.backend, device_id, &channel, report, now)
                .await?;
        tx.commit().await?;
        Ok(halted)
    }

    /// Every device, by id.
    pub async fn devices(&self) -> Result<Vec<DeviceInfo>> {
        let rows = sqlx::query(&format!("SELECT {DEVICE_COLUMNS} FROM devices ORDER BY id"))
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(device_from_row).collect()
    }

    /// One device.
    pub async fn device(&self, id: &str) -> Result<DeviceInfo> {
        let row = sqlx::query(&format!(
            "SELECT {DEVICE_COLUMNS} FROM devices WHERE id = $1"
        ))
        .bind(id)
        .fetch_optional(&self.pool)
        .await?
        .ok_or_else(|| Error::NoDevice(id.to_string()))?;
        device_from_row(&row)
    }

    /// One device with its report history, newest first.
    pub async fn device_detail(&self, id: &str) -> Result<DeviceDetail> {
        let device = self.device(id).await?;
        let rows = sqlx::query(
            "SELECT received_at, report FROM device_reports WHERE device_id = $1 \
             ORDER BY id DESC",
        )
        .bind(id)
        .fetch_all(&self.pool)
        .await?;
        let history = rows
            .iter()
            .map(|r| {
                let text: String = r.try_get("report")?;
                Ok(ReportRecord {
                    received_at: r.try_get("received_at")?,
                    report: serde_json::from_str(&text).map_err(Error::Corrupt)?,
                })
            })
            .collect::<Result<_>>()?;
        Ok(DeviceDetail { device, history })
    }

    /// Change one column of a device and audit it, in one transaction.
    async fn change_device(
        &self,
        actor: &Actor,
        id: &str,
        change: Change,
        now: i64,
    ) -> Result<DeviceInfo> {
        let mut tx = self.pool.begin().await?;
        let sql = format!(
            "UPDATE devices SET {} WHERE id = $2 RETURNING id",
            change.set
        );
        let mut q = sqlx::query(&sql);
        q = match change.value {
            Some(v) => q.bind(v),
            None => q.bind(now),
        };
        let changed = q.bind(id).fetch_optional(&mut *tx).await?;
        if changed.is_none() {
            return Err(Error::NoDevice(id.to_string()));
        }
        audit(&mut tx, now, actor, change.action, id, change.detail).await?;
        tx.commit().await?;
        self.device(id).await
    }

    /// Revoke a device: its certificate is refused from now on, by every server.
    pub async fn revoke_device(&self, actor: &Actor, id: &str, now: i64) -> Result<DeviceInfo> {
        let change = Change {
            set: "revoked_at = COALESCE(revoked_at, $1)",
            value: None,
            action: "device.revoke",
            detail: json!({}),
        };
        self.change_device(actor, id, change, now).await
    }

    /// Replace a device's tags (checked by the caller).
    pub async fn set_tags(
        &self,
        actor: &Actor,
        id: &str,
        tags: &[String],
        now: i64,
    ) -> Result<DeviceInfo> {
        let text = serde_json::to_string(tags).map_err(Error::Corrupt)?;
        let change = Change {
            set: "tags = $1",
            value: Some(text),
            action: "device.tags",
            detail: json!({ "tags": tags }),
        };
        self.change_device(actor, id, change, now).await
    }

    /// Set a device's release channel (checked by the caller).
    pub async fn set_channel(
        &self,
        actor: &Actor,
        id: &str,
        channel: &str,
        now: i64,
    ) -> Result<DeviceInfo> {
        let change = Change {
            set: "channel = $1",
            value: Some(channel.to_string()),
            action: "device.channel",
            detail: json!({ "channel": channel }),
        };
        self.change_device(actor, id, change, now).await
    }
}
