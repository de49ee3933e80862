//! For the tests of crates built on deploy-sql: a database of their own on the PostgreSQL that `DEPLOY_TEST_PG_URL`
//! names, so PostgreSQL tests run in parallel without seeing each other.

/// The variable naming the PostgreSQL server tests may use (`postgres://postgres@127.0.0.1:5432/test`).
pub const TEST_URL_VARIABLE: &str = "DEPLOY_TEST_PG_URL";

/// Why a test database could not be made.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TestDatabaseError {
    /// The URL does not end in `/<database>`.
    #[error("{0} must end in /<database>")]
    Url(String),
    /// The server refused.
    #[error("cannot create a test database")]
    Database(#[from] sqlx::Error),
}

/// The URL of a new, empty database on the server of `DEPLOY_TEST_PG_URL`; `None`, after printing that `test` was
/// skipped, when the variable is not set.
///
/// # Errors
/// [`TestDatabaseError`] when the variable is set but the database cannot be created.
pub async fn fresh_postgres_database(test: &str) -> Result<Option<String>, TestDatabaseError> {
    let Ok(base) = std::env::var(TEST_URL_VARIABLE) else {
        eprintln!("skipped {test}: {TEST_URL_VARIABLE} is not set");
        return Ok(None);
    };
    let (prefix, _) = base.rsplit_once('/').ok_or_else(|| TestDatabaseError::Url(base.clone()))?;
    sqlx::any::install_default_drivers();
    let admin = sqlx::any::AnyPoolOptions::new().max_connections(1).connect(&base).await?;
    let name = format!("deploy_test_{}", uuid::Uuid::now_v7().simple());
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}"))).execute(&admin).await?;
    admin.close().await;
    Ok(Some(format!("{prefix}/{name}")))
}
