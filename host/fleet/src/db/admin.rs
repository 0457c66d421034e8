//! Administration in the database: API tokens (stored hashed, with roles), enrollment tokens
//! (stored hashed, single-use, expiring), and the append-only audit log.

use serde_json::json;
use sqlx::any::AnyRow;
use sqlx::Row;

use super::{audit, Actor, Db, Error, Result};
use crate::api::{AuditEntry, CreatedToken, EnrollmentTokens, TokenInfo};
use crate::token::{self, Role};

const TOKEN_COLUMNS: &str = "id, name, role, created_at, created_by, revoked_at";

fn token_from_row(row: &AnyRow) -> Result<TokenInfo> {
    let role: String = row.try_get("role")?;
    Ok(TokenInfo {
        id: row.try_get("id")?,
        name: row.try_get("name")?,
        // Only this module writes roles, from `Role`; anything else is a changed database.
        role: role.parse().map_err(|e: token::UnknownRole| {
            Error::Corrupt(serde::de::Error::custom(e.to_string()))
        })?,
        created_at: row.try_get("created_at")?,
        created_by: row.try_get("created_by")?,
        revoked_at: row.try_get("revoked_at")?,
    })
}

impl Db {
    /// The unrevoked API token whose secret is `secret`.
    pub async fn api_token(&self, secret: &str) -> Result<Option<TokenInfo>> {
        let row = sqlx::query(&format!(
            "SELECT {TOKEN_COLUMNS} FROM api_tokens WHERE hash = $1 AND revoked_at IS NULL"
        ))
        .bind(token::hash(secret))
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(token_from_row).transpose()
    }

    /// Make an API token; its secret is returned this once.
    pub async fn create_api_token(
        &self,
        actor: &Actor,
        name: &str,
        role: Role,
        now: i64,
    ) -> Result<CreatedToken> {
        let secret = token::generate(token::ADMIN_PREFIX);
        let id = format!("tok-{}", token::random_hex(6));
        let mut tx = self.pool.begin().await?;
        sqlx::query(
            "INSERT INTO api_tokens (id, hash, name, role, created_at, created_by) \
             VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(&id)
        .bind(token::hash(&secret))
        .bind(name)
        .bind(role.as_str())
        .bind(now)
        .bind(&actor.0)
        .execute(&mut *tx)
        .await?;
        audit(
            &mut tx,
            now,
            actor,
            "token.create",
            &id,
            json!({ "name": name, "role": role }),
        )
        .await?;
        tx.commit().await?;
        Ok(CreatedToken {
            info: TokenInfo {
                id,
                name: name.to_string(),
                role,
                created_at: now,
                created_by: actor.0.clone(),
                revoked_at: None,
            },
            token: secret,
        })
    }

    /// The first admin token, made only when no unrevoked admin token exists (so running
    /// `init` again prints nothing new).
    pub async fn bootstrap_admin(&self, now: i64) -> Result<Option<CreatedToken>> {
        let existing =
            sqlx::query("SELECT id FROM api_tokens WHERE role = $1 AND revoked_at IS NULL LIMIT 1")
                .bind(Role::Admin.as_str())
                .fetch_optional(&self.pool)
                .await?;
        if existing.is_some() {
            return Ok(None);
        }
        self.create_api_token(&Actor("init".into()), "first-admin", Role::Admin, now)
            .await
            .map(Some)
    }

    /// Every API token, oldest first.
    pub async fn api_tokens(&self) -> Result<Vec<TokenInfo>> {
        let rows = sqlx::query(&format!(
            "SELECT {TOKEN_COLUMNS} FROM api_tokens ORDER BY created_at, id"
        ))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(token_from_row).collect()
    }

    /// Revoke an API token (at once, on every server).
    pub async fn revoke_api_token(&self, actor: &Actor, id: &str, now: i64) -> Result<TokenInfo> {
        let mut tx = self.pool.begin().await?;
        let row = sqlx::query(&format!(
            "UPDATE api_tokens SET revoked_at = COALESCE(revoked_at, $1) WHERE id = $2 \
             RETURNING {TOKEN_COLUMNS}"
        ))
        .bind(now)
        .bind(id)
        .fetch_optional(&mut *tx)
        .await?
        .ok_or_else(|| Error::NoToken(id.to_string()))?;
        let info = token_from_row(&row)?;
        audit(
            &mut tx,
            now,
            actor,
            "token.revoke",
            id,
            json!({ "name": info.name }),
        )
        .await?;
        tx.commit().await?;
        Ok(info)
    }

    /// Make `count` enrollment tokens valid for `ttl` seconds; their secrets are returned
    /// this once. The provisioning verb calls this to fill its archives.
    pub async fn create_enrollment_tokens(
        &self,
        actor: &Actor,
        count: u32,
        ttl: u64,
        now: i64,
    ) -> Result<EnrollmentTokens> {
        let expires_at = now.saturating_add(i64::try_from(ttl).unwrap_or(i64::MAX));
        let tokens: Vec<String> = (0..count)
            .map(|_| token::generate(token::ENROLL_PREFIX))
            .collect();
        let mut tx = self.pool.begin().await?;
        for t in &tokens {
            sqlx::query(
                "INSERT INTO enrollment_tokens (hash, created_at, created_by, expires_at) \
                 VALUES ($1, $2, $3, $4)",
            )
            .bind(token::hash(t))
            .bind(now)
            .bind(&actor.0)
            .bind(expires_at)
            .execute(&mut *tx)
            .await?;
        }
        audit(
            &mut tx,
            now,
            actor,
            "enrollment-token.create",
            "",
            json!({
                "count": count,
                "expires_at": expires_at,
                "token_sha256": tokens.iter().map(|t| token::hash(t)).collect::<Vec<_>>(),
            }),
        )
        .await?;
        tx.commit().await?;
        Ok(EnrollmentTokens { tokens, expires_at })
    }

    /// The newest `limit` lines of the audit log, newest first.
    pub async fn audit_log(&self, limit: i64) -> Result<Vec<AuditEntry>> {
        let rows = sqlx::query(
            "SELECT id, at, actor, action, target, detail FROM audit_log ORDER BY id DESC \
             LIMIT $1",
        )
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                let detail: String = r.try_get("detail")?;
                Ok(AuditEntry {
                    id: r.try_get("id")?,
                    at: r.try_get("at")?,
                    actor: r.try_get("actor")?,
                    action: r.try_get("action")?,
                    target: r.try_get("target")?,
                    detail: serde_json::from_str(&detail).map_err(Error::Corrupt)?,
                })
            })
            .collect()
    }
}
