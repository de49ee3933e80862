//! Why a store could not be opened.

/// The error of [`SqlStore::sqlite`](crate::SqlStore::sqlite) and [`SqlStore::postgres`](crate::SqlStore::postgres).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OpenError {
    /// The file exists but is not an SQLite database.
    #[error("{path} is not an SQLite database")]
    NotADatabase {
        /// The file.
        path: String,
        /// What SQLite said.
        #[source]
        source: sqlx::Error,
    },
    /// The database was written by a newer version of this software; opening it could corrupt it.
    #[error("database schema version {found} is newer than this binary supports ({supported}); upgrade the binary")]
    SchemaTooNew {
        /// The version in the database.
        found: i64,
        /// The newest version this binary knows.
        supported: i64,
    },
    /// A data directory could not be created.
    #[error("cannot use data directory {path}")]
    DataDir {
        /// The directory.
        path: String,
        /// What the file system said.
        #[source]
        source: std::io::Error,
    },
    /// The database could not be reached or refused a statement while opening.
    #[error("cannot open the database")]
    Database(#[source] sqlx::Error),
}
