//! The fleet's database: one schema on embedded SQLite or PostgreSQL, through sqlx's `Any`
//! driver with runtime queries (`$N` parameters, which both accept).
//!
//! No state lives in a server process: everything several servers sharing one PostgreSQL must
//! agree on is decided by one atomic statement: an enrollment token is consumed by `UPDATE ...
//! WHERE used_at IS NULL AND expires_at > now RETURNING`, a report's rate-limit slot by one
//! `UPDATE ... RETURNING` of the device's counter, and each admin change is written in the same
//! transaction as its audit line.
//!
//! * [`migrate`]: the migrations, the same versions on both databases.
//! * [`devices`]: enrollment, reports, device administration.
//! * [`admin`]: API tokens, enrollment tokens, the audit log.
//! * [`rollouts`]: rollouts and their changes, progress, and what the repository should sign.
//! * [`outcomes`]: each device's outcome in a rollout, from its reports, and the failure
//!   policy applied in the report's transaction.
//!
//! SQLite in WAL mode refuses (`SQLITE_BUSY_SNAPSHOT`, which the busy timeout does not retry)
//! a transaction that read and then writes after another connection wrote: so every
//! read-modify-write transaction here starts with a write, which takes SQLite's write lock
//! (and PostgreSQL's row lock) before it reads.

impl Error {
    /// The database is busy for now, not broken: no pooled connection came free in time, or a
    /// lock was still held when the wait ran out (SQLite's busy timeout: `SQLITE_BUSY`, 5, and
    /// its extended codes, whose low byte is 5; PostgreSQL's lock and serialization failures
    /// and too many connections). The same request may succeed a moment later.
    pub fn is_busy(&self) -> bool {
        let Error::Sql(e) = self else { return false };
        match e {
            sqlx::Error::PoolTimedOut => true,
            sqlx::Error::Database(d) => {
                let code = d.code().unwrap_or_default();
                let sqlite_busy = code.parse::<u32>().is_ok_and(|c| c & 0xff == 5);
                sqlite_busy || matches!(code.as_ref(), "40001" | "40P01" | "55P03" | "53300")
            }
            _ => false,
        }
    }
}

pub mod admin;
pub mod devices;
pub mod migrate;
pub mod outcomes;
pub mod rollouts;

use std::time::{SystemTime, UNIX_EPOCH};

use sqlx::any::AnyPoolOptions;
use sqlx::{AnyConnection, AnyPool};

/// What can go wrong in the database layer.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The database failed or refused a statement.
    #[error("database error")]
    Sql(#[from] sqlx::Error),
    /// Migrating the schema failed.
    #[error("migrating the database")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// The URL names no database we support.
    #[error("unsupported database URL {0:?} (use sqlite://PATH or postgres://...)")]
    BadUrl(String),
    /// The enrollment token is unknown, already used, or expired (one answer for all three,
    /// so a caller learns nothing about which tokens exist).
    #[error("the enrollment token is unknown, used or expired")]
    TokenRefused,
    /// No such device.
    #[error("no device {0:?}")]
    NoDevice(String),
    /// No such API token.
    #[error("no API token {0:?}")]
    NoToken(String),
    /// A stored JSON value does not parse (the database was changed behind our back).
    #[error("a stored value does not parse")]
    Corrupt(#[source] serde_json::Error),
    /// No such rollout.
    #[error("no rollout {0}")]
    NoRollout(u64),
    /// The change conflicts with the rollout's state or another rollout.
    #[error("{0}")]
    Conflict(String),
    /// A field of the request names something the database does not have.
    #[error(transparent)]
    Invalid(#[from] crate::api::FieldError),
}

/// A result of this module.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Which database a [`Db`] is on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// Embedded SQLite (one file).
    Sqlite,
    /// PostgreSQL.
    Postgres,
}

impl Backend {
    /// The backend a URL names.
    pub fn of_url(url: &str) -> Result<Self> {
        if url.starts_with("sqlite:") {
            Ok(Backend::Sqlite)
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Ok(Backend::Postgres)
        } else {
            Err(Error::BadUrl(url.to_string()))
        }
    }
}

/// Who did something, as the audit log names them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Actor(pub String);

impl Actor {
    /// An admin API token.
    pub fn token(id: &str, name: &str) -> Self {
        Actor(format!("token:{id} ({name})"))
    }
}

/// The current time in Unix seconds.
pub fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// A handle on the database (a connection pool; cheap to clone).
#[derive(Debug, Clone)]
pub struct Db {
    pool: AnyPool,
    backend: Backend,
    /// How many reports each device keeps in its history.
    pub history: i64,
}

impl Db {
    /// Connect to `url` (`sqlite://PATH`, created if missing, or `postgres://...`) and bring
    /// its schema up to date. Several processes may do this at once on PostgreSQL: sqlx takes
    /// an advisory lock around the migrations.
    pub async fn connect(url: &str) -> Result<Self> {
        let backend = Backend::of_url(url)?;
        sqlx::any::install_default_drivers();
        let (url, max) = match backend {
            Backend::Sqlite if !url.contains("mode=") => {
                let sep = if url.contains('?') { '&' } else { '?' };
                (format!("{url}{sep}mode=rwc"), 4)
            }
            Backend::Sqlite => (url.to_string(), 4),
            Backend::Postgres => (url.to_string(), 8),
        };
        let pool = AnyPoolOptions::new()
            .max_connections(max)
            .connect(&url)
            .await?;
        if backend == Backend::Sqlite {
            // Readers and one writer at once (the file remembers it); writers wait for each
            // other through sqlx's busy timeout (5 s).
            sqlx::query("PRAGMA journal_mode = WAL")
                .execute(&pool)
                .await?;
        }
        migrate::migrator(backend).await?.run(&pool).await?;
        Ok(Db {
            pool,
            backend,
            history: 50,
        })
    }

    /// Which database this is.
    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// The pool, for statements this module does not offer (tests try to change the audit
    /// log with it, and must fail).
    pub fn pool(&self) -> &AnyPool {
        &self.pool
    }

    /// Close the pool.
    pub async fn close(&self) {
        self.pool.close().await;
    }
}

/// Append a line to the audit log, inside the caller's transaction.
pub(crate) async fn audit(
    conn: &mut AnyConnection,
    at: i64,
    actor: &Actor,
    action: &str,
    target: &str,
    detail: serde_json::Value,
) -> Result<()> {
    sqlx::query(
        "INSERT INTO audit_log (at, actor, action, target, detail) VALUES ($1, $2, $3, $4, $5)",
    )
    .bind(at)
    .bind(&actor.0)
    .bind(action)
    .bind(target)
    .bind(detail.to_string())
    .execute(conn)
    .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_name_their_backend() {
        assert_eq!(
            Backend::of_url("sqlite://fleet.db").unwrap(),
            Backend::Sqlite
        );
        assert_eq!(
            Backend::of_url("postgres://u@h/db").unwrap(),
            Backend::Postgres
        );
        assert!(matches!(
            Backend::of_url("mysql://x"),
            Err(Error::BadUrl(_))
        ));
    }
}
