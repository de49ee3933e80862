//! A database of its own on the PostgreSQL of `DEPLOY_TEST_PG_URL`, or a note that the test was skipped.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

/// The URL of a new, empty database, or `None` (printing that `test` was skipped) without `DEPLOY_TEST_PG_URL`.
pub(crate) async fn postgres_url(test: &str) -> Option<String> {
    deploy_sql::testing::fresh_postgres_database(test).await.unwrap()
}
