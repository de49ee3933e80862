//! # deploy-sql
//!
//! Durable [`Store`](deploy_core::Store)s: SQLite, the embedded default that needs no set-up, and PostgreSQL, where
//! several orchestrator replicas share one database and take over each other's work. Both are one implementation,
//! [`SqlStore`], over sqlx's `Any` driver with runtime queries (builds need no database); [`Backend`] decides the few
//! statements that differ (`BEGIN IMMEDIATE` on SQLite; `FOR UPDATE` and `SKIP LOCKED` on PostgreSQL).
//!
//! Schemas are versioned and migrated on open; a database written by a newer binary is refused.
//!
//! Features: `sqlite` and `postgres` (both by default) choose the drivers built; `testing` adds `deploy_sql::testing`:
//! helpers that make a fresh PostgreSQL database per test.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use deploy_core::{ConcurrencyPolicy, EnvironmentSpec, Store};
//! let dir = std::env::temp_dir().join(format!("deploy-sql-doc-{}", std::process::id()));
//! let store = deploy_sql::SqlStore::sqlite(&dir).await?; // the data directory is created, with deploy.sqlite in it
//! let name = "prod".parse()?;
//! let spec = EnvironmentSpec { concurrency: ConcurrencyPolicy::Queue, ..EnvironmentSpec::default() };
//! let written = store.put_environment(&name, spec, None, time::OffsetDateTime::now_utc()).await?;
//! assert_eq!(written.environment.revision.get(), 1);
//! store.close().await;
//! # std::fs::remove_dir_all(&dir)?;
//! # Ok(()) }
//! ```
//!
//! On PostgreSQL, several replicas share one database:
//!
//! ```no_run
//! # async fn open() -> Result<(), deploy_sql::OpenError> {
//! let embedded = deploy_sql::SqlStore::sqlite("./deployd-data").await?;
//! let shared = deploy_sql::SqlStore::postgres("postgres://deploy@db/deploy").await?;
//! # let _ = (embedded, shared);
//! # Ok(()) }
//! ```

mod cache;
mod error;
mod group;
mod schema;
mod store;
#[cfg(feature = "testing")]
pub mod testing;

pub use cache::RECENT_TTL;
pub use error::OpenError;
pub use schema::LATEST as SCHEMA_VERSION;
pub use store::{Backend, DATABASE_FILE, DEFAULT_PG_TIMEOUT, PostgresStore, SqlStore, SqliteStore};
