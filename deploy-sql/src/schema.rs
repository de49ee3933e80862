//! Versioned migrations, applied on open, one folder per database.

use sqlx::{AnyPool, AssertSqlSafe, Row};

use crate::error::OpenError;
use crate::store::Backend;

/// The migrations of each backend, in order; version `n` is entry `n - 1`.
const SQLITE: &[&str] = &[include_str!("../migrations/sqlite/0001_init.sql")];
const POSTGRES: &[&str] = &[include_str!("../migrations/postgres/0001_init.sql")];

/// The newest schema version this binary knows.
pub const LATEST: i64 = 1;

/// Brings the schema to [`LATEST`], refusing a database that is newer. Runs in one transaction per migration; on
/// PostgreSQL an advisory lock keeps replicas that start together from migrating twice.
pub(crate) async fn migrate(pool: &AnyPool, backend: Backend) -> Result<i64, OpenError> {
    let migrations = match backend {
        Backend::Sqlite => SQLITE,
        Backend::Postgres => POSTGRES,
    };
    let mut tx = pool.begin_with(backend.begin()).await.map_err(OpenError::Database)?;
    if backend == Backend::Postgres {
        sqlx::query("SELECT pg_advisory_xact_lock(7326019)").execute(&mut *tx).await.map_err(OpenError::Database)?;
    }
    sqlx::query("CREATE TABLE IF NOT EXISTS deploy_schema (version BIGINT NOT NULL)")
        .execute(&mut *tx)
        .await
        .map_err(OpenError::Database)?;
    let row = sqlx::query("SELECT MAX(version) AS v FROM deploy_schema")
        .fetch_one(&mut *tx)
        .await
        .map_err(OpenError::Database)?;
    let found: Option<i64> = row.try_get("v").map_err(OpenError::Database)?;
    let found = found.unwrap_or(0);
    if found > LATEST {
        return Err(OpenError::SchemaTooNew { found, supported: LATEST });
    }
    for (i, migration) in migrations.iter().enumerate().skip(usize::try_from(found).unwrap_or(0)) {
        let code: String =
            migration.lines().filter(|l| !l.trim_start().starts_with("--")).collect::<Vec<_>>().join("\n");
        for statement in code.split(';').map(str::trim).filter(|s| !s.is_empty()) {
            // Statements come from the migration files compiled into this binary.
            sqlx::query(AssertSqlSafe(statement)).execute(&mut *tx).await.map_err(OpenError::Database)?;
        }
        let version = i64::try_from(i + 1).unwrap_or(i64::MAX);
        sqlx::query("INSERT INTO deploy_schema (version) VALUES ($1)")
            .bind(version)
            .execute(&mut *tx)
            .await
            .map_err(OpenError::Database)?;
        tracing::info!(version, "applied schema migration");
    }
    tx.commit().await.map_err(OpenError::Database)?;
    Ok(LATEST)
}
