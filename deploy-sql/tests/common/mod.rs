//! Opening fresh stores for tests: SQLite in a new temporary directory, PostgreSQL in a new database of
//! `DEPLOY_TEST_PG_URL` (skipped, with a message, when the variable is not set).
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use deploy_sql::SqlStore;

pub(crate) use deploy_testkit::fixtures::{TempDir, temp_dir};

/// A fresh SQLite store in its own directory (removed when the guard is dropped).
pub(crate) async fn sqlite(tag: &str) -> (SqlStore, TempDir) {
    let dir = temp_dir(tag);
    (SqlStore::sqlite(&dir).await.unwrap(), dir)
}

/// The URL of a fresh PostgreSQL database, or `None` (after saying so) when `DEPLOY_TEST_PG_URL` is not set.
pub(crate) async fn postgres_url(test: &str) -> Option<String> {
    deploy_sql::testing::fresh_postgres_database(test).await.unwrap()
}

/// A fresh PostgreSQL store, or `None` when PostgreSQL tests are not configured.
pub(crate) async fn postgres(test: &str) -> Option<SqlStore> {
    let url = postgres_url(test).await?;
    Some(SqlStore::postgres(&url).await.unwrap())
}

/// An orchestrator over `store` whose targets (executor kind `scripted`) all go to `executor`, tuned for tests in real
/// time: leases of `lease`, polls every 50 ms, retries within 50 ms.
pub(crate) fn orchestrator(
    store: &SqlStore,
    executor: &std::sync::Arc<deploy_testkit::ScriptedExecutor>,
    owner: &str,
    lease: std::time::Duration,
) -> deploy_core::Orchestrator {
    use std::time::Duration;
    deploy_core::Orchestrator::builder(
        std::sync::Arc::new(store.clone()),
        deploy_core::ExecutorRouter::new().with("scripted", executor.clone()),
    )
    .config(deploy_core::OrchestratorConfig {
        owner: owner.into(),
        lease,
        poll_interval: Duration::from_millis(50),
        retry_base: Duration::from_millis(10),
        retry_cap: Duration::from_millis(50),
        watch_poll_interval: Duration::from_millis(50),
        ..deploy_core::OrchestratorConfig::default()
    })
    .build()
}
