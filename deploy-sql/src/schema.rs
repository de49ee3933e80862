//! Versioned migrations, applied on open, one folder per database.

use sqlx::{AnyPool, AssertSqlSafe, Row};

use crate::error::OpenError;
use crate::store::Backend;

/// The migrations of each backend, in order; version `n` is entry `n - 1`.
const SQLITE: &[&str] = &[
    include_str!("../migrations/sqlite/0001_init.sql"),
    include_str!("../migrations/sqlite/0002_accept_in_one_statement.sql"),
    include_str!("../migrations/sqlite/0003_optimistic_accept.sql"),
    include_str!("../migrations/sqlite/0004_api_keys_and_audit.sql"),
    include_str!("../migrations/sqlite/0005_delivery_claims_per_subscription.sql"),
    include_str!("../migrations/sqlite/0006_agents.sql"),
];
const POSTGRES: &[&str] = &[
    include_str!("../migrations/postgres/0001_init.sql"),
    include_str!("../migrations/postgres/0002_accept_in_one_statement.sql"),
    include_str!("../migrations/postgres/0003_optimistic_accept.sql"),
    include_str!("../migrations/postgres/0004_api_keys_and_audit.sql"),
    include_str!("../migrations/postgres/0005_delivery_claims_per_subscription.sql"),
    include_str!("../migrations/postgres/0006_agents.sql"),
];

/// The newest schema version this binary knows.
pub const LATEST: i64 = 6;

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
        for statement in statements(migration) {
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

/// The statements of a migration file: comment lines dropped, split at semicolons that end a line, except inside a
/// `CREATE TRIGGER ... END;` body, whose inner statements belong to the trigger.
fn statements(migration: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut current = String::new();
    let mut in_trigger = false;
    for line in migration.lines().filter(|l| !l.trim_start().starts_with("--")) {
        let trimmed = line.trim();
        if current.trim().is_empty() && trimmed.to_ascii_uppercase().starts_with("CREATE TRIGGER") {
            in_trigger = true;
        }
        current.push_str(line);
        current.push('\n');
        let ends = if in_trigger { trimmed.eq_ignore_ascii_case("END;") } else { trimmed.ends_with(';') };
        if ends {
            let statement = current.trim().trim_end_matches(';').trim().to_owned();
            if !statement.is_empty() {
                out.push(statement);
            }
            current.clear();
            in_trigger = false;
        }
    }
    if !current.trim().is_empty() {
        out.push(current.trim().to_owned());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn migrations_split_into_statements_keeping_trigger_bodies_whole() {
        let sqlite: Vec<Vec<String>> = SQLITE.iter().map(|m| statements(m)).collect();
        assert_eq!(sqlite[0].len(), 12, "eight tables and four indexes in version 1");
        assert!(sqlite[0].iter().all(|s| !s.contains(';') && !s.starts_with("--")));
        assert_eq!(sqlite[1].len(), 2, "a view and a trigger");
        assert!(sqlite[1][1].starts_with("CREATE TRIGGER") && sqlite[1][1].ends_with("END"), "{}", sqlite[1][1]);
        assert_eq!(sqlite[1][1].matches(';').count(), 3, "the trigger keeps its three inserts");
        assert_eq!(sqlite[2].len(), 2, "a view and a trigger");
        assert_eq!(sqlite[2][1].matches(';').count(), 6, "bump, guard and four inserts");
        assert_eq!(statements(POSTGRES[1]).len(), 0);
        assert_eq!(statements(POSTGRES[2]).len(), 0);
        assert_eq!(SQLITE.len(), POSTGRES.len());
        assert_eq!(i64::try_from(SQLITE.len()).ok(), Some(LATEST));
    }
}
