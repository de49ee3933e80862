//! [`SqlStore`]: the [`Store`] contract over SQLite or PostgreSQL.

#[cfg(feature = "sqlite")]
use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use async_trait::async_trait;
use deploy_core::{
    Acceptance, Accepted, ActualState, AgentSlot, AgentStore, ApiKeyRecord, AuditEntry, AuditFilter, AuditLog, Claim,
    ConcurrencyPolicy, Control, DeliveryOutcome, DeliveryStatus, Deployment, DeploymentFilter, DeploymentId,
    DeploymentStatus, DesiredState, Environment, EnvironmentName, EnvironmentSpec, EnvironmentTarget, EnvironmentWrite,
    Event, KeyStore, Lease, NewEvent, Page, PageRequest, ProgressUpdate, Revision, Store, StoreError, TargetDefinition,
    TargetProgress, Timestamp, UpdateError, ValidationErrors, WebhookDelivery, WebhookStore, WebhookSubscription,
};
use serde::de::DeserializeOwned;
use sqlx::any::AnyPoolOptions;
use sqlx::{AnyConnection, AssertSqlSafe};
use sqlx::{AnyPool, Row};
use uuid::Uuid;

use crate::error::OpenError;
use crate::schema;

mod accept;
mod access;
mod agents;
mod engine;
mod outbox;
mod rows;

pub(crate) use accept::Optimistic;
use outbox::*;
use rows::*;

/// Which database a [`SqlStore`] talks to; decides the few statements that differ.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// SQLite in WAL mode: one writer at a time (`BEGIN IMMEDIATE`), readers never blocked.
    Sqlite,
    /// PostgreSQL: row locks (`FOR UPDATE`), claims that skip each other (`SKIP LOCKED`).
    Postgres,
}

impl Backend {
    pub(crate) fn begin(self) -> &'static str {
        match self {
            // Take the write lock at once, so two writers never deadlock upgrading a read lock.
            Self::Sqlite => "BEGIN IMMEDIATE",
            Self::Postgres => "BEGIN",
        }
    }

    /// An expression giving the environment's (parameter 1) targets as a JSON array of
    /// `{"definition", "desired", "actual"}`, each a string as stored, in order.
    fn env_targets_json(self) -> &'static str {
        match self {
            Self::Sqlite => {
                "(SELECT json_group_array(json_object('definition', definition, 'desired', desired, 'actual', actual)) \
                 FROM (SELECT definition, desired, actual FROM deploy_environment_targets WHERE environment = $1 \
                 ORDER BY idx))"
            }
            Self::Postgres => {
                "(SELECT COALESCE(json_agg(json_build_object('definition', definition, 'desired', desired, \
                 'actual', actual) ORDER BY idx), '[]'::json)::text FROM deploy_environment_targets \
                 WHERE environment = $1)"
            }
        }
    }

    /// A subquery of the strings in the JSON array bound to parameter `param`: one statement (prepared once, one
    /// value bound) whatever the number of ids.
    fn json_strings(self, param: usize) -> String {
        match self {
            Self::Sqlite => format!("(SELECT value FROM json_each(${param}))"),
            Self::Postgres => format!("(SELECT json_array_elements_text(CAST(${param} AS json)))"),
        }
    }

    /// A subscription's (`$1`) oldest deliveries due by `$2` (at most `$3`), in one row of two columns (both NULL
    /// when none is due): `docs`, their documents joined by commas (the elements of a JSON array), and `states`,
    /// their `attempts, last status code, next attempt` joined by `],[` (the rows of a JSON array of arrays). Both
    /// aggregates of one query see the rows in the same order, so the n-th state is the n-th document's. One row
    /// instead of one per delivery saves most of what reading a claim cost (each row crossed to SQLite's worker
    /// thread and was copied twice on the way); the documents are JSON already, so they are only concatenated.
    /// PostgreSQL locks the rows it reads (`SKIP LOCKED`: another replica's claim in progress is passed over).
    fn due_batch_sql(self) -> &'static str {
        match self {
            Self::Sqlite => {
                "SELECT group_concat(doc, ',') AS docs, group_concat(state, '],[') AS states FROM (SELECT dd.doc, \
                 d.attempts || ',' || COALESCE(d.last_status_code, 'null') || ',' \
                 || COALESCE('\"' || d.next_at || '\"', 'null') AS state \
                 FROM deploy_deliveries d JOIN deploy_delivery_docs dd ON dd.id = d.id \
                 WHERE d.subscription_id = $1 AND d.pending = 1 AND d.due <= $2 ORDER BY d.due, d.id LIMIT $3)"
            }
            Self::Postgres => {
                "SELECT string_agg(doc, ',') AS docs, string_agg(state, '],[') AS states FROM (SELECT dd.doc, \
                 d.attempts || ',' || COALESCE(d.last_status_code::text, 'null') || ',' \
                 || COALESCE('\"' || d.next_at || '\"', 'null') AS state \
                 FROM deploy_deliveries d JOIN deploy_delivery_docs dd ON dd.id = d.id \
                 WHERE d.subscription_id = $1 AND d.pending = 1 AND d.due <= $2 ORDER BY d.due, d.id LIMIT $3 \
                 FOR UPDATE OF d SKIP LOCKED) due"
            }
        }
    }

    fn for_update(self) -> &'static str {
        match self {
            Self::Sqlite => "",
            Self::Postgres => " FOR UPDATE",
        }
    }
}

/// A durable [`Store`] on SQLite (the embedded default) or PostgreSQL (several orchestrator replicas on one
/// database). One implementation over sqlx's `Any` driver; [`Backend`] picks the dialect.
///
/// Targets, events, idempotency keys and webhook deliveries are rows of their own, so a write touches only what it
/// changes and a deployment of 100,000 targets is not rewritten on every update.
#[derive(Debug, Clone)]
pub struct SqlStore {
    pool: AnyPool,
    backend: Backend,
    /// What this process last read of each environment (and whether webhook subscriptions existed then). Only the
    /// optimistic acceptance uses it, and only as a guess: its write succeeds only if the revision is unchanged.
    snapshots: std::sync::Arc<std::sync::Mutex<std::collections::HashMap<EnvironmentName, Snapshot>>>,
    /// The group commit of acceptances and audit entries.
    group: std::sync::Arc<crate::group::Group>,
    /// Deployments served from memory where that cannot mislead (see `cache`).
    reads: std::sync::Arc<crate::cache::ReadCache>,
}

/// What this process last read of an environment (shared, not copied, by each acceptance that plans against it) and
/// whether webhook subscriptions existed then.
type Snapshot = (std::sync::Arc<Environment>, bool);

/// The SQLite flavour of [`SqlStore`].
pub type SqliteStore = SqlStore;
/// The PostgreSQL flavour of [`SqlStore`].
pub type PostgresStore = SqlStore;

/// The database file `deployd` keeps in a data directory.
pub const DATABASE_FILE: &str = "deploy.sqlite";

/// How long a PostgreSQL statement, or a wait for a pooled connection, may take by default.
pub const DEFAULT_PG_TIMEOUT: Duration = Duration::from_secs(5);

/// Whether a pooled connection may be handed out (or kept) as it is. A connection that still believes it is inside a
/// transaction is closed instead: SQLite rolls a transaction back by itself on a full disk or an I/O error
/// (`SQLITE_FULL`, `SQLITE_IOERR`), and the `ROLLBACK` sqlx then sends fails, so sqlx keeps counting the transaction
/// and every later `BEGIN` on that connection failed (`InvalidSavePointStatement`) until a restart; a PostgreSQL
/// connection abandoned mid-transaction (a lost lease, a cancelled request) is in the same state.
fn usable(conn: &mut sqlx::AnyConnection) -> bool {
    use sqlx::Connection as _;
    let in_transaction = conn.is_in_transaction();
    if in_transaction {
        tracing::warn!("closing a pooled database connection left inside a transaction");
    }
    !in_transaction
}

#[cfg(feature = "sqlite")]
/// The database holds webhook signing secrets and the digests of API keys: it is created readable by its owner only
/// (0600), and so are SQLite's `-wal` and `-shm` files, which take the database file's mode. An existing file is
/// narrowed to 0600 too.
fn restrict(file: &Path) -> Result<(), OpenError> {
    use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
    let fail = |source| OpenError::DataDir { path: file.display().to_string(), source };
    std::fs::OpenOptions::new().create(true).append(true).mode(0o600).open(file).map_err(fail)?;
    for suffix in ["", "-wal", "-shm"] {
        let mut name = file.as_os_str().to_owned();
        name.push(suffix);
        let path = std::path::PathBuf::from(name);
        if path.exists() {
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).map_err(fail)?;
        }
    }
    Ok(())
}

impl SqlStore {
    #[cfg(feature = "sqlite")]
    /// Opens (creating if needed) the SQLite database of the data directory `path` (`path/deploy.sqlite`), or the
    /// database file `path` itself, in WAL mode with a busy timeout, and applies migrations.
    ///
    /// `path` is a file when it is an existing file or its name ends in `.sqlite`, `.sqlite3` or `.db`; otherwise it is
    /// a data directory, created if missing (so a directory that does not exist yet is never taken for a file). Use
    /// [`SqlStore::sqlite_file`] to name a file whatever its name.
    ///
    /// # Errors
    /// [`OpenError::NotADatabase`] for a file that is not SQLite, [`OpenError::SchemaTooNew`] for a database written by
    /// a newer binary, [`OpenError::DataDir`] or [`OpenError::Database`] otherwise.
    pub async fn sqlite(path: impl AsRef<Path>) -> Result<Self, OpenError> {
        let path = path.as_ref();
        let named_as_file =
            path.extension().and_then(|e| e.to_str()).is_some_and(|e| ["sqlite", "sqlite3", "db"].contains(&e));
        if path.is_file() || (!path.is_dir() && named_as_file) {
            Self::sqlite_file(path).await
        } else {
            Self::sqlite_file(path.join(DATABASE_FILE)).await
        }
    }

    #[cfg(feature = "sqlite")]
    /// Opens (creating if needed) the SQLite database file `file`, creating its directory if missing; as
    /// [`SqlStore::sqlite`] otherwise.
    ///
    /// # Errors
    /// As [`SqlStore::sqlite`].
    pub async fn sqlite_file(file: impl AsRef<Path>) -> Result<Self, OpenError> {
        sqlx::any::install_default_drivers();
        let file = file.as_ref().to_path_buf();
        if let Some(parent) = file.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent)
                .map_err(|source| OpenError::DataDir { path: parent.display().to_string(), source })?;
        }
        restrict(&file)?;
        let shown = file.display().to_string();
        let url = format!("sqlite://{shown}?mode=rwc");
        let pool = AnyPoolOptions::new()
            .max_connections(4)
            // A local file: no connection goes stale, so skip the ping sqlx would send before every use.
            .test_before_acquire(false)
            .before_acquire(|conn, _| Box::pin(async move { Ok(usable(conn)) }))
            .after_release(|conn, _| Box::pin(async move { Ok(usable(conn)) }))
            .after_connect(|conn, _| {
                Box::pin(async move {
                    sqlx::query("PRAGMA busy_timeout = 10000").execute(&mut *conn).await?;
                    sqlx::query("PRAGMA foreign_keys = ON").execute(&mut *conn).await?;
                    Ok(())
                })
            })
            .connect(&url)
            .await
            .map_err(|e| not_a_database(&shown, e))?;
        // WAL is a property of the file: set once, kept by every later connection.
        sqlx::query("PRAGMA journal_mode = WAL").execute(&pool).await.map_err(|e| not_a_database(&shown, e))?;
        sqlx::query("PRAGMA synchronous = FULL").execute(&pool).await.map_err(OpenError::Database)?;
        schema::migrate(&pool, Backend::Sqlite).await.map_err(|e| match e {
            OpenError::Database(inner) => not_a_database(&shown, inner),
            other => other,
        })?;
        Ok(Self {
            pool,
            backend: Backend::Sqlite,
            snapshots: Default::default(),
            group: crate::group::new(),
            reads: Default::default(),
        })
    }

    #[cfg(feature = "postgres")]
    /// Connects to PostgreSQL at `url` and applies migrations (under an advisory lock, so replicas may start together).
    ///
    /// # Errors
    /// [`OpenError::SchemaTooNew`] or [`OpenError::Database`].
    pub async fn postgres(url: &str) -> Result<Self, OpenError> {
        Self::postgres_with_timeout(url, DEFAULT_PG_TIMEOUT).await
    }

    #[cfg(feature = "postgres")]
    /// [`SqlStore::postgres`] where every statement, and every wait for a pooled connection, gives up after `timeout`
    /// (a lost database answers as unavailable within it instead of holding requests for as long as TCP takes).
    ///
    /// # Errors
    /// [`OpenError::SchemaTooNew`] or [`OpenError::Database`].
    pub async fn postgres_with_timeout(url: &str, timeout: Duration) -> Result<Self, OpenError> {
        sqlx::any::install_default_drivers();
        let statement_ms = timeout.as_millis().max(1);
        let pool = AnyPoolOptions::new()
            .max_connections(16)
            .acquire_timeout(timeout)
            .before_acquire(|conn, _| Box::pin(async move { Ok(usable(conn)) }))
            .after_release(|conn, _| Box::pin(async move { Ok(usable(conn)) }))
            .after_connect(move |conn, _| {
                Box::pin(async move {
                    // Also bounds lock waits; set per session, so every pooled connection has it.
                    let set = format!("SET statement_timeout = {statement_ms}");
                    sqlx::query(AssertSqlSafe(set)).execute(&mut *conn).await?;
                    Ok(())
                })
            })
            .connect(url)
            .await
            .map_err(OpenError::Database)?;
        schema::migrate(&pool, Backend::Postgres).await?;
        Ok(Self {
            pool,
            backend: Backend::Postgres,
            snapshots: Default::default(),
            group: crate::group::new(),
            reads: Default::default(),
        })
    }

    /// Which database this is.
    #[must_use]
    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// The connection pool, for health checks and benchmarks.
    #[must_use]
    pub fn pool(&self) -> &AnyPool {
        &self.pool
    }

    /// Closes every connection.
    pub async fn close(&self) {
        self.pool.close().await;
    }

    fn snapshots(&self) -> std::sync::MutexGuard<'_, std::collections::HashMap<EnvironmentName, Snapshot>> {
        self.snapshots.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Forgets every cached read of a deployment in progress (after writes that may touch several).
    pub(crate) fn forget_cached_reads(&self) {
        self.reads.forget_all();
    }

    pub(crate) fn forget_snapshot(&self, environment: &EnvironmentName) {
        self.snapshots().remove(environment);
    }

    pub(crate) fn group(&self) -> &crate::group::Group {
        &self.group
    }

    /// An agent slot change, sharing a transaction with concurrent writes (heartbeats of many agents).
    async fn agent_grouped(&self, change: crate::group::AgentChange) -> Result<AgentSlot, StoreError> {
        match self.grouped(crate::group::Write::Agent(Box::new(change))).await? {
            crate::group::Written::Agent(slot) => Ok(*slot),
            _ => Err(StoreError::Corrupt("the group commit answered another kind of write".into())),
        }
    }

    /// Changes a target's agent slot in a transaction of its own.
    pub(crate) async fn change_agent_alone(&self, change: crate::group::AgentChange) -> Result<AgentSlot, StoreError> {
        let mut tx = self.begin().await?;
        let slot = self.change_agent_on(&mut tx, change).await?;
        tx.commit().await.map_err(unavailable)?;
        Ok(slot)
    }

    /// Reads a target's agent slot (locked), changes it and writes it back on `conn` (the caller's transaction).
    pub(crate) async fn change_agent_on(
        &self,
        conn: &mut AnyConnection,
        change: crate::group::AgentChange,
    ) -> Result<AgentSlot, StoreError> {
        // A fenced assignment holds only under the deployment's current lease (its row locked, as a claim locks it).
        if let crate::group::AgentUpdate::Assign(_, deployment, token, _) = &change.change
            && *token > 0
        {
            let (deployment, token) = (*deployment, *token);
            let row = load_header(conn, Some(self.backend), deployment)
                .await?
                .ok_or_else(|| not_found("deployment", deployment))?;
            if u64::try_from(row.lease_token).ok() != Some(token) {
                return Err(StoreError::StaleToken { deployment, token });
            }
            let status = row.header.status();
            if status.is_terminal() {
                return Err(StoreError::AlreadyFinished { deployment, status });
            }
        }
        let sql = format!(
            "SELECT doc FROM deploy_agents WHERE environment = $1 AND target = $2{}",
            self.backend.for_update()
        );
        let row = sqlx::query(AssertSqlSafe(sql))
            .bind(change.environment.to_string())
            .bind(change.target.to_string())
            .fetch_optional(&mut *conn)
            .await
            .map_err(unavailable)?;
        let mut slot = match row {
            Some(r) => from_json("agent", &get::<String>(&r, "doc")?)?,
            None => AgentSlot::new(change.environment.clone(), change.target.clone()),
        };
        let (environment, target) = (change.environment.to_string(), change.target.to_string());
        change.apply(&mut slot);
        sqlx::query(
            "INSERT INTO deploy_agents (environment, target, doc) VALUES ($1, $2, $3) \
             ON CONFLICT (environment, target) DO UPDATE SET doc = excluded.doc",
        )
        .bind(environment)
        .bind(target)
        .bind(to_json(&slot)?)
        .execute(&mut *conn)
        .await
        .map_err(unavailable)?;
        Ok(slot)
    }

    /// Disables a subscription whose receiver answered 410 and fails its pending deliveries.
    async fn disable_subscription(&self, conn: &mut AnyConnection, id: Uuid) -> Result<(), StoreError> {
        let sql = format!("SELECT doc FROM deploy_webhooks WHERE id = $1{}", self.backend.for_update());
        let row = sqlx::query(AssertSqlSafe(sql))
            .bind(id.to_string())
            .fetch_optional(&mut *conn)
            .await
            .map_err(unavailable)?;
        if let Some(row) = row {
            let mut sub: WebhookSubscription = from_json("webhook", &get::<String>(&row, "doc")?)?;
            sub.disable_gone();
            sqlx::query("UPDATE deploy_webhooks SET doc = $1 WHERE id = $2")
                .bind(to_json(&sub)?)
                .bind(sub.id.to_string())
                .execute(&mut *conn)
                .await
                .map_err(unavailable)?;
        }
        fail_pending_deliveries(conn, id).await
    }

    /// Records outcomes on `conn` (the caller's transaction), disabling the subscriptions whose receivers answered
    /// 410; see [`Store::complete_deliveries`].
    async fn record_in(
        &self,
        conn: &mut AnyConnection,
        outcomes: &[(String, DeliveryOutcome)],
        now: Timestamp,
    ) -> Result<(), StoreError> {
        for subscription in record_outcomes(conn, self.backend, outcomes, now).await? {
            self.disable_subscription(conn, subscription).await?;
        }
        Ok(())
    }

    /// Claims on `conn` (the caller's transaction); see [`Store::claim_deliveries`].
    async fn claim_in(
        &self,
        conn: &mut AnyConnection,
        now: Timestamp,
        limit: usize,
        per_subscription: usize,
        lease: Duration,
    ) -> Result<Vec<(WebhookDelivery, WebhookSubscription)>, StoreError> {
        let subscriptions = sqlx::query("SELECT doc, secret FROM deploy_webhooks ORDER BY id")
            .fetch_all(&mut *conn)
            .await
            .map_err(unavailable)?;
        let cap = i64::try_from(per_subscription).unwrap_or(i64::MAX);
        let due_sql = self.backend.due_batch_sql();
        let mut candidates = Vec::new();
        for row in &subscriptions {
            let mut sub: WebhookSubscription = from_json("webhook", &get::<String>(row, "doc")?)?;
            if !sub.active {
                // Deliveries that raced with the 410 that disabled it: they fail too.
                fail_pending_deliveries(conn, sub.id).await?;
                continue;
            }
            // Its share: the cap less what dispatchers hold now.
            let busy = sqlx::query(
                "SELECT COUNT(*) AS n FROM deploy_deliveries WHERE subscription_id = $1 AND pending = 1 \
                 AND hidden_until > $2",
            )
            .bind(sub.id.to_string())
            .bind(ms(now))
            .fetch_one(&mut *conn)
            .await
            .map_err(unavailable)?;
            let free = cap.saturating_sub(get::<i64>(&busy, "n")?);
            if free <= 0 {
                continue;
            }
            sub.secret = get(row, "secret")?;
            // Its oldest due deliveries, as one JSON array in one row (see `Backend::due_batch_sql`).
            let batch = sqlx::query(AssertSqlSafe(due_sql))
                .bind(sub.id.to_string())
                .bind(ms(now))
                .bind(free.min(i64::try_from(limit).unwrap_or(i64::MAX)))
                .fetch_one(&mut *conn)
                .await
                .map_err(unavailable)?;
            let (Some(docs), Some(states)) =
                (get::<Option<String>>(&batch, "docs")?, get::<Option<String>>(&batch, "states")?)
            else {
                continue;
            };
            let docs: Vec<WebhookDelivery> = from_json("due deliveries", &format!("[{docs}]"))?;
            let states: Vec<DueState> = from_json("due deliveries' states", &format!("[[{states}]]"))?;
            if docs.len() != states.len() {
                return Err(corrupt("due deliveries", "documents and states do not match"));
            }
            for (mut d, DueState(attempts, last_status_code, next_at)) in docs.into_iter().zip(states) {
                d.status = DeliveryStatus::Pending;
                d.attempts = attempts;
                d.last_status_code = last_status_code;
                d.next_attempt_at = next_at.as_deref().map(parse_rfc3339).transpose()?;
                d.delivered_at = None;
                candidates.push((d, sub.clone()));
            }
        }
        // The oldest due first, across subscriptions.
        candidates.sort_by(|(a, _), (b, _)| (a.next_attempt_at, &a.id).cmp(&(b.next_attempt_at, &b.id)));
        candidates.truncate(limit);
        let hidden = ms(deploy_core::add_duration(now, lease));
        if !candidates.is_empty() {
            let ids: Vec<&str> = candidates.iter().map(|(d, _)| d.id.as_str()).collect();
            let sql = format!(
                "UPDATE deploy_deliveries SET hidden_until = $1, due = $1 WHERE id IN {}",
                self.backend.json_strings(2)
            );
            sqlx::query(AssertSqlSafe(sql))
                .bind(hidden)
                .bind(to_json(&ids)?)
                .execute(&mut *conn)
                .await
                .map_err(unavailable)?;
        }
        Ok(candidates)
    }

    pub(crate) async fn begin(&self) -> Result<sqlx::Transaction<'static, sqlx::Any>, StoreError> {
        self.pool.begin_with(self.backend.begin()).await.map_err(unavailable)
    }
}

#[cfg(feature = "sqlite")]
fn not_a_database(path: &str, e: sqlx::Error) -> OpenError {
    let says_so = e.as_database_error().is_some_and(|d| {
        let m = d.message();
        m.contains("not a database") || m.contains("file is encrypted")
    });
    if says_so { OpenError::NotADatabase { path: path.to_owned(), source: e } } else { OpenError::Database(e) }
}

fn unavailable(e: sqlx::Error) -> StoreError {
    StoreError::Unavailable(Box::new(e))
}

fn corrupt(what: &str, e: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt(format!("{what}: {e}"))
}

fn not_found(what: &'static str, id: impl ToString) -> StoreError {
    StoreError::NotFound { what, id: id.to_string() }
}

fn ms(t: Timestamp) -> i64 {
    i64::try_from(t.unix_timestamp_nanos() / 1_000_000).unwrap_or(i64::MAX)
}

fn from_ms(ms: i64) -> Timestamp {
    time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH)
}

fn to_json<T: serde::Serialize + ?Sized>(v: &T) -> Result<String, StoreError> {
    serde_json::to_string(v).map_err(|e| corrupt("encoding", e))
}

fn from_json<T: DeserializeOwned>(what: &str, s: &str) -> Result<T, StoreError> {
    serde_json::from_str(s).map_err(|e| corrupt(what, e))
}

fn get<'r, T>(row: &'r sqlx::any::AnyRow, column: &str) -> Result<T, StoreError>
where
    T: sqlx::Decode<'r, sqlx::Any> + sqlx::Type<sqlx::Any>,
{
    row.try_get(column).map_err(|e| corrupt(column, e))
}

fn bad_cursor() -> StoreError {
    let mut errs = ValidationErrors::default();
    errs.push("cursor", "not a cursor this store handed out");
    StoreError::Invalid(errs)
}

fn is_unique_violation(e: &sqlx::Error) -> bool {
    e.as_database_error().is_some_and(|d| d.kind() == sqlx::error::ErrorKind::UniqueViolation)
}

/// Rows per multi-row statement: far below both databases' limits on bound parameters.
const CHUNK: usize = 500;
