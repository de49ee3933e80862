//! # deploy-sql
//!
//! Durable [`Store`](deploy_core::Store)s: SQLite, the embedded default that needs no set-up, and PostgreSQL, where
//! several orchestrator replicas share one database and take over each other's work. Both are one implementation,
//! [`SqlStore`], over sqlx's `Any` driver with runtime queries (builds need no database); [`Backend`] decides the few
//! statements that differ (`BEGIN IMMEDIATE` on SQLite; `FOR UPDATE` and `SKIP LOCKED` on PostgreSQL).
//!
//! Schemas are versioned and migrated on open; a database written by a newer binary is refused.
//!
//! Features: `sqlite` and `postgres` (both by default) choose the drivers built; `testing` adds [`testing`]-style
//! helpers that make a fresh PostgreSQL database per test.
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
