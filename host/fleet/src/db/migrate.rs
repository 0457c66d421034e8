//! The schema's migrations: the same versions, in the same order, on SQLite and PostgreSQL.
//!
//! Most of the schema is one file for both (`migrations/0001_schema.sql`, `0003_rollouts.sql`),
//! with `{{id}}` for the one word the dialects spell differently (an auto-increment key). What
//! cannot be shared, the append-only triggers of the audit log (SQLite's `RAISE(ABORT)` against
//! PostgreSQL's PL/pgSQL function), is one file per dialect under the same version. sqlx
//! records each applied version with a checksum in `_sqlx_migrations` and refuses a database
//! whose applied migrations were since changed.

use std::borrow::Cow;
use std::future::Future;
use std::pin::Pin;

use sqlx::error::BoxDynError;
use sqlx::migrate::{Migration, MigrationSource, MigrationType, Migrator};

use super::Backend;

/// One migration: its version, description, and its SQL for each dialect.
struct Step {
    version: i64,
    description: &'static str,
    sqlite: &'static str,
    postgres: &'static str,
}

const SCHEMA: &str = include_str!("../../migrations/0001_schema.sql");
const ROLLOUTS: &str = include_str!("../../migrations/0003_rollouts.sql");
const ENROLL_RESUME: &str = include_str!("../../migrations/0004_enroll_resume.sql");

/// Every migration, oldest first.
const STEPS: &[Step] = &[
    Step {
        version: 1,
        description: "schema",
        sqlite: SCHEMA,
        postgres: SCHEMA,
    },
    Step {
        version: 2,
        description: "audit append only",
        sqlite: include_str!("../../migrations/0002_audit_append_only.sqlite.sql"),
        postgres: include_str!("../../migrations/0002_audit_append_only.postgres.sql"),
    },
    Step {
        version: 3,
        description: "rollouts",
        sqlite: ROLLOUTS,
        postgres: ROLLOUTS,
    },
    Step {
        version: 4,
        description: "enroll resume",
        sqlite: ENROLL_RESUME,
        postgres: ENROLL_RESUME,
    },
];

/// The SQL of every migration for `backend`, as (version, description, SQL).
pub fn sql(backend: Backend) -> Vec<(i64, &'static str, String)> {
    STEPS
        .iter()
        .map(|s| {
            let (text, id) = match backend {
                Backend::Sqlite => (s.sqlite, "INTEGER PRIMARY KEY AUTOINCREMENT"),
                Backend::Postgres => (
                    s.postgres,
                    "BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY",
                ),
            };
            (s.version, s.description, text.replace("{{id}}", id))
        })
        .collect()
}

/// The migrations of one dialect, as sqlx's migrator takes them.
#[derive(Debug)]
struct Source(Backend);

impl MigrationSource<'static> for Source {
    fn resolve(
        self,
    ) -> Pin<Box<dyn Future<Output = Result<Vec<Migration>, BoxDynError>> + Send + 'static>> {
        let migrations = sql(self.0)
            .into_iter()
            .map(|(version, description, sql)| {
                Migration::new(
                    version,
                    Cow::Borrowed(description),
                    MigrationType::Simple,
                    Cow::Owned(sql),
                    false,
                )
            })
            .collect();
        Box::pin(async move { Ok(migrations) })
    }
}

/// The migrator for `backend`.
pub async fn migrator(backend: Backend) -> Result<Migrator, sqlx::migrate::MigrateError> {
    Migrator::new(Source(backend)).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_dialects_have_the_same_versions_and_no_placeholder_left() {
        let s = sql(Backend::Sqlite);
        let p = sql(Backend::Postgres);
        let versions = |v: &[(i64, &str, String)]| v.iter().map(|m| m.0).collect::<Vec<_>>();
        assert_eq!(versions(&s), versions(&p));
        assert_eq!(versions(&s), (1..=STEPS.len() as i64).collect::<Vec<_>>());
        for (_, _, text) in s.iter().chain(&p) {
            assert!(!text.contains("{{"), "{text}");
        }
    }
}
