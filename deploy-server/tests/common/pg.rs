//! A database of its own on the PostgreSQL of `DEPLOY_TEST_PG_URL`, or a note that the test was skipped.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

/// The URL of a new, empty database, or `None` (printing that `test` was skipped) without `DEPLOY_TEST_PG_URL`.
pub(crate) async fn postgres_url(test: &str) -> Option<String> {
    let Ok(base) = std::env::var("DEPLOY_TEST_PG_URL") else {
        eprintln!("skipped {test}: DEPLOY_TEST_PG_URL is not set");
        return None;
    };
    sqlx::any::install_default_drivers();
    let admin = sqlx::any::AnyPoolOptions::new().max_connections(1).connect(&base).await.unwrap();
    let name = format!("deploy_test_{}", uuid::Uuid::now_v7().simple());
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}"))).execute(&admin).await.unwrap();
    admin.close().await;
    let (prefix, _) = base.rsplit_once('/').expect("a URL ending in /database");
    Some(format!("{prefix}/{name}"))
}
