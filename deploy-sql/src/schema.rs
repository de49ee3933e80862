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
    include_str!("../migrations/sqlite/0007_delivery_state_columns.sql"),
    include_str!("../migrations/sqlite/0008_environment_protection.sql"),
    include_str!("../migrations/sqlite/0009_schedules_and_freeze.sql"),
    include_str!("../migrations/sqlite/0010_secret_scope_and_key_names.sql"),
    include_str!("../migrations/sqlite/0011_submitter_quotas.sql"),
];
const POSTGRES: &[&str] = &[
    include_str!("../migrations/postgres/0001_init.sql"),
    include_str!("../migrations/postgres/0002_accept_in_one_statement.sql"),
    include_str!("../migrations/postgres/0003_optimistic_accept.sql"),
    include_str!("../migrations/postgres/0004_api_keys_and_audit.sql"),
    include_str!("../migrations/postgres/0005_delivery_claims_per_subscription.sql"),
    include_str!("../migrations/postgres/0006_agents.sql"),
    include_str!("../migrations/postgres/0007_delivery_state_columns.sql"),
    include_str!("../migrations/postgres/0008_environment_protection.sql"),
    include_str!("../migrations/postgres/0009_schedules_and_freeze.sql"),
    include_str!("../migrations/postgres/0010_secret_scope_and_key_names.sql"),
    include_str!("../migrations/postgres/0011_submitter_quotas.sql"),
];

/// The newest schema version this binary knows.
pub const LATEST: i64 = 11;

/// Brings the schema to [`LATEST`], refusing a database that is newer. Runs in one transaction per migration; on
/// PostgreSQL an advisory lock keeps replicas that start together from migrating twice.
pub(crate) async fn migrate(pool: &AnyPool, backend: Backend) -> Result<i64, OpenError> {
    migrate_to(pool, backend, LATEST).await
}

/// Brings the schema to version `target` (at most [`LATEST`]); see [`migrate`].
async fn migrate_to(pool: &AnyPool, backend: Backend, target: i64) -> Result<i64, OpenError> {
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
    let target = usize::try_from(target.min(LATEST)).unwrap_or(0);
    for (i, migration) in migrations.iter().enumerate().take(target).skip(usize::try_from(found).unwrap_or(0)) {
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
    Ok(i64::try_from(target).unwrap_or(LATEST).max(found))
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
    #![allow(clippy::unwrap_used)]

    use super::*;
    use deploy_core::{DeliveryStatus, PageRequest, WebhookStore, WebhookSubscription};

    /// Version 7 moved a delivery's state out of its document into columns: deliveries written by a version-6 binary
    /// keep their state, and a claim such a binary held still hides its delivery until it lapses.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn deliveries_written_by_schema_6_keep_their_state_in_schema_7() {
        sqlx::any::install_default_drivers();
        let dir = deploy_testkit::fixtures::temp_dir("schema-6");
        let file = dir.join(crate::DATABASE_FILE);
        let url = format!("sqlite://{}?mode=rwc", file.display());
        let pool = sqlx::any::AnyPoolOptions::new().max_connections(1).connect(&url).await.unwrap();
        sqlx::query("PRAGMA journal_mode = WAL").execute(&pool).await.unwrap();
        assert_eq!(migrate_to(&pool, Backend::Sqlite, 6).await.unwrap(), 6);
        let sub = uuid::Uuid::now_v7();
        let at = time::macros::datetime!(2026-11-01 10:00 UTC);
        let event = deploy_core::Event {
            seq: 3,
            deployment_id: deploy_core::DeploymentId::new(),
            event_type: deploy_core::EventType::Succeeded,
            at,
            target_id: None,
            status: deploy_core::EventStatus::Deployment(deploy_core::DeploymentStatus::Succeeded),
            message: "done".into(),
        };
        let mut failed = deploy_core::WebhookDelivery::pending(sub, &event, &serde_json::json!({"id": "d-1"}));
        let _ = failed.record_attempt(deploy_core::DeliveryOutcome::GiveUp { status_code: Some(500) }, at);
        let claimed = deploy_core::WebhookDelivery::pending(sub, &event, &serde_json::json!({"id": "d-2"}));
        let due = at.unix_timestamp() * 1000;
        let hidden = (at.unix_timestamp() + 3600) * 1000;
        for (d, pending, due, hidden) in [(&failed, 0, None, None), (&claimed, 1, Some(due), Some(hidden))] {
            sqlx::query(
                "INSERT INTO deploy_deliveries (id, subscription_id, doc, pending, due, hidden_until) \
                 VALUES ($1, $2, $3, $4, $5, $6)",
            )
            .bind(d.id.clone())
            .bind(sub.to_string())
            .bind(serde_json::to_string(d).unwrap())
            .bind(pending)
            .bind(due)
            .bind(hidden)
            .execute(&pool)
            .await
            .unwrap();
        }
        pool.close().await;

        let store = crate::SqlStore::sqlite(&dir).await.unwrap();
        store
            .create_webhook(WebhookSubscription {
                id: sub,
                events: vec!["*".into()],
                created_at: at,
                ..deploy_testkit::fixtures::subscription("http://127.0.0.1:9/hook")
            })
            .await
            .unwrap();
        let page = store.list_deliveries(sub, &PageRequest { limit: 10, cursor: None }).await.unwrap();
        let read = |id: &str| page.items.iter().find(|d| d.id == id).unwrap().clone();
        assert_eq!(read(&failed.id), failed, "state carried over from the document");
        assert_eq!(read(&failed.id).status, DeliveryStatus::Failed);
        assert_eq!(read(&claimed.id), claimed);
        let before_lapse = time::OffsetDateTime::from_unix_timestamp(at.unix_timestamp() + 60).unwrap();
        let batch = store.claim_deliveries(before_lapse, 10, 10, std::time::Duration::from_secs(30)).await.unwrap();
        assert!(batch.is_empty(), "the old binary's claim still hides it: {batch:?}");
        let after_lapse = time::OffsetDateTime::from_unix_timestamp(at.unix_timestamp() + 3601).unwrap();
        let batch = store.claim_deliveries(after_lapse, 10, 10, std::time::Duration::from_secs(30)).await.unwrap();
        assert_eq!(batch.iter().map(|(d, _)| d.id.clone()).collect::<Vec<_>>(), vec![claimed.id.clone()]);
        store.close().await;
    }

    /// Before version 10 two keys could share a name (checked by listing, then inserting). Version 10 makes names
    /// unique: both keys keep working, the younger renamed `<name>#<id>`, and no new key takes a name in use.
    async fn keys_sharing_a_name_survive_version_10(pool: sqlx::AnyPool, backend: Backend, reopen: impl AsyncFnOnce()) {
        assert_eq!(migrate_to(&pool, backend, 9).await.unwrap(), 9);
        let (older, younger) = (uuid::Uuid::now_v7(), uuid::Uuid::now_v7());
        for (id, hash) in [(older, "a".repeat(64)), (younger, "b".repeat(64))] {
            let doc = serde_json::json!({"id": id, "name": "ci-bot", "role": "deployer", "environments": ["*"],
                "key_hash": hash, "created_by": "key:admin", "created_at": "2026-11-01T10:00:00Z"});
            sqlx::query("INSERT INTO deploy_api_keys (id, key_hash, doc) VALUES ($1, $2, $3)")
                .bind(id.to_string())
                .bind(hash)
                .bind(doc.to_string())
                .execute(&pool)
                .await
                .unwrap();
        }
        pool.close().await;
        reopen().await;
    }

    async fn check_keys_after_version_10(store: &crate::SqlStore) {
        use deploy_core::KeyStore;
        let older = store.api_key_by_hash(&"a".repeat(64)).await.unwrap().expect("the older key still authenticates");
        let younger = store.api_key_by_hash(&"b".repeat(64)).await.unwrap().expect("the younger one too");
        assert_eq!(older.name, "ci-bot");
        assert_eq!(younger.name, format!("ci-bot#{}", younger.id), "renamed apart");
        let mut third = older.clone();
        third.id = uuid::Uuid::now_v7();
        third.key_hash = "c".repeat(64);
        let refused = store.create_api_key(third).await;
        assert!(matches!(&refused, Err(deploy_core::StoreError::Invalid(e)) if e.has_field("name")), "{refused:?}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn keys_sharing_a_name_are_renamed_apart_by_version_10_on_sqlite() {
        sqlx::any::install_default_drivers();
        let dir = deploy_testkit::fixtures::temp_dir("schema-9-keys");
        let url = format!("sqlite://{}?mode=rwc", dir.join(crate::DATABASE_FILE).display());
        let pool = sqlx::any::AnyPoolOptions::new().max_connections(1).connect(&url).await.unwrap();
        keys_sharing_a_name_survive_version_10(pool, Backend::Sqlite, async || {
            let store = crate::SqlStore::sqlite(&dir).await.unwrap();
            check_keys_after_version_10(&store).await;
            store.close().await;
        })
        .await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn keys_sharing_a_name_are_renamed_apart_by_version_10_on_postgres() {
        let test = "keys_sharing_a_name_are_renamed_apart_by_version_10_on_postgres";
        let Some(url) = crate::testing::fresh_postgres_database(test).await.unwrap() else { return };
        let pool = sqlx::any::AnyPoolOptions::new().max_connections(1).connect(&url).await.unwrap();
        keys_sharing_a_name_survive_version_10(pool, Backend::Postgres, async || {
            let store = crate::SqlStore::postgres(&url).await.unwrap();
            check_keys_after_version_10(&store).await;
            store.close().await;
        })
        .await;
    }

    /// Version 11 counts the bytes each submitter stored per step of time: deployments written by a version-10 binary
    /// count too (backfilled), and a new deployment adds to its step.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn submitter_totals_of_schema_10_deployments_are_backfilled_by_version_11() {
        sqlx::any::install_default_drivers();
        let dir = deploy_testkit::fixtures::temp_dir("schema-10-quota");
        let url = format!("sqlite://{}?mode=rwc", dir.join(crate::DATABASE_FILE).display());
        let pool = sqlx::any::AnyPoolOptions::new().max_connections(1).connect(&url).await.unwrap();
        assert_eq!(migrate_to(&pool, Backend::Sqlite, 10).await.unwrap(), 10);
        let id = deploy_core::DeploymentId::new();
        let header =
            serde_json::json!({"id": id, "created_by": "key:old-bot", "padding": "x".repeat(3000)}).to_string();
        sqlx::query(
            "INSERT INTO deploy_deployments (id, environment, revision, service, status, terminal, header, lease_owner, \
             lease_token, lease_expires) VALUES ($1, 'prod', 1, 'svc', 'succeeded', 1, $2, NULL, 0, NULL)",
        )
        .bind(id.to_string())
        .bind(&header)
        .execute(&pool)
        .await
        .unwrap();
        assert_eq!(migrate_to(&pool, Backend::Sqlite, 11).await.unwrap(), 11);
        let row = sqlx::query(
            "SELECT CAST(SUM(bytes) AS BIGINT) AS b FROM deploy_submitter_bytes WHERE submitter = $1 AND bucket = $2",
        )
        .bind("key:old-bot")
        .bind(id.quota_bucket())
        .fetch_one(&pool)
        .await
        .unwrap();
        let counted: i64 = row.try_get("b").unwrap();
        assert_eq!(usize::try_from(counted).unwrap(), header.len(), "the old deployment's bytes count in its step");
        let later = deploy_core::DeploymentId::new();
        sqlx::query(
            "INSERT INTO deploy_deployments (id, environment, revision, service, status, terminal, header, lease_owner, \
             lease_token, lease_expires) VALUES ($1, 'prod', 2, 'svc', 'queued', 0, $2, NULL, 0, NULL)",
        )
        .bind(later.to_string())
        .bind(&header)
        .execute(&pool)
        .await
        .unwrap();
        let row =
            sqlx::query("SELECT CAST(SUM(bytes) AS BIGINT) AS b FROM deploy_submitter_bytes WHERE submitter = $1")
                .bind("key:old-bot")
                .fetch_one(&pool)
                .await
                .unwrap();
        let counted: i64 = row.try_get("b").unwrap();
        assert_eq!(usize::try_from(counted).unwrap(), 2 * header.len(), "the trigger adds each new deployment");
        pool.close().await;
    }

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
