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

/// `(CAST($1 AS BIGINT), $2, $3), (...)`: `rows` tuples of `casts.len()` parameters numbered from `first`; a column
/// whose cast is not empty is cast, so PostgreSQL knows its type inside `VALUES`.
fn tuples(rows: usize, casts: &[&str], first: usize) -> String {
    let mut out = String::with_capacity(rows * casts.len() * 8);
    let mut n = first;
    for r in 0..rows {
        out.push_str(if r == 0 { "(" } else { ", (" });
        for (c, cast) in casts.iter().enumerate() {
            if c > 0 {
                out.push_str(", ");
            }
            if cast.is_empty() {
                out.push_str(&format!("${n}"));
            } else {
                out.push_str(&format!("CAST(${n} AS {cast})"));
            }
            n += 1;
        }
        out.push(')');
    }
    out
}

fn int(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

async fn insert_targets_from(
    conn: &mut AnyConnection,
    id: DeploymentId,
    targets: &[TargetProgress],
    start: usize,
) -> Result<(), StoreError> {
    let rest = targets.get(start..).unwrap_or_default();
    for (c, chunk) in rest.chunks(CHUNK).enumerate() {
        let sql = format!(
            "INSERT INTO deploy_deployment_targets (deployment_id, idx, target_id, doc) VALUES {}",
            tuples(chunk.len(), &["", "BIGINT", "", ""], 1)
        );
        let mut q = sqlx::query(AssertSqlSafe(sql));
        for (i, t) in chunk.iter().enumerate() {
            q = q.bind(id.to_string()).bind(int(start + c * CHUNK + i)).bind(t.id.as_str()).bind(to_json(t)?);
        }
        q.execute(&mut *conn).await.map_err(unavailable)?;
    }
    Ok(())
}

/// Writes a new deployment: its row, its first targets and its `deployment.queued` event, in one statement on
/// PostgreSQL (data-modifying CTEs) and three on SQLite; targets beyond the first chunk follow in chunks.
async fn insert_new_deployment(
    conn: &mut AnyConnection,
    backend: Backend,
    deployment: &Deployment,
    queued: &Event,
) -> Result<(), StoreError> {
    let id = deployment.id();
    let head = &deployment.targets()[..deployment.targets().len().min(CHUNK)];
    let deployment_row = "INSERT INTO deploy_deployments (id, environment, revision, service, status, terminal, \
                          header, lease_owner, lease_token, lease_expires) \
                          VALUES ($1, $2, CAST($3 AS BIGINT), $4, $5, 0, $6, NULL, 0, NULL)";
    let event_row = "INSERT INTO deploy_events (deployment_id, seq, doc) VALUES ($1, 1, $7)";
    let targets_rows = format!(
        "INSERT INTO deploy_deployment_targets (deployment_id, idx, target_id, doc) VALUES {}",
        target_tuples(head.len(), 8)
    );
    let bind_all =
        |sql: String| -> Result<sqlx::query::Query<'static, sqlx::Any, sqlx::any::AnyArguments>, StoreError> {
            let mut q = sqlx::query(AssertSqlSafe(sql))
                .bind(id.to_string())
                .bind(deployment.environment().to_string())
                .bind(int(usize::try_from(deployment.revision().get()).unwrap_or(usize::MAX)))
                .bind(deployment.service().to_string())
                .bind(deployment.status().as_str())
                .bind(to_json(&deployment.header())?)
                .bind(to_json(queued)?);
            for (i, t) in head.iter().enumerate() {
                q = q.bind(int(i)).bind(t.id.to_string()).bind(to_json(t)?);
            }
            Ok(q)
        };
    match backend {
        Backend::Postgres => {
            let sql = format!("WITH d AS ({deployment_row}), e AS ({event_row}) {targets_rows}");
            bind_all(sql)?.execute(&mut *conn).await.map_err(unavailable)?;
        }
        Backend::Sqlite => {
            // SQLite has no data-modifying CTEs: the trigger on this view (migration 2) does the three inserts.
            let targets: Vec<serde_json::Value> = deployment
                .targets()
                .iter()
                .map(|t| serde_json::to_value(t).map_err(|e| corrupt("encoding", e)))
                .collect::<Result<_, _>>()?;
            sqlx::query(
                "INSERT INTO deploy_new_deployments (id, environment, revision, service, status, header, event, targets) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
            )
            .bind(id.to_string())
            .bind(deployment.environment().to_string())
            .bind(int(usize::try_from(deployment.revision().get()).unwrap_or(usize::MAX)))
            .bind(deployment.service().to_string())
            .bind(deployment.status().as_str())
            .bind(to_json(&deployment.header())?)
            .bind(to_json(queued)?)
            .bind(to_json(&targets)?)
            .execute(&mut *conn)
            .await
            .map_err(unavailable)?;
            return Ok(());
        }
    }
    if deployment.targets().len() > CHUNK {
        insert_targets_from(conn, id, deployment.targets(), CHUNK).await?;
    }
    Ok(())
}

/// `($1, CAST($n AS BIGINT), $n+1, $n+2), ...`: target rows of a new deployment whose id is parameter 1.
fn target_tuples(rows: usize, first: usize) -> String {
    let mut out = String::new();
    for r in 0..rows {
        let n = first + r * 3;
        out.push_str(&format!("{}($1, CAST(${n} AS BIGINT), ${}, ${})", if r == 0 { "" } else { ", " }, n + 1, n + 2));
    }
    out
}

/// Rewrites target rows, checking each entry names the target stored at its position.
async fn update_targets(
    conn: &mut AnyConnection,
    id: DeploymentId,
    entries: &[(usize, TargetProgress)],
) -> Result<(), StoreError> {
    // One update may carry a target twice (verifying, then succeeded): the last entry wins.
    let mut last: std::collections::BTreeMap<usize, &TargetProgress> = std::collections::BTreeMap::new();
    for (index, entry) in entries {
        if let Some(previous) = last.get(index)
            && previous.id != entry.id
        {
            return Err(StoreError::Update(UpdateError::UnknownTarget { index: *index }));
        }
        last.insert(*index, entry);
    }
    let rows: Vec<(usize, &TargetProgress)> = last.into_iter().collect();
    for chunk in rows.chunks(CHUNK) {
        let sql = format!(
            "UPDATE deploy_deployment_targets SET doc = v.column3 FROM (VALUES {}) AS v \
             WHERE deploy_deployment_targets.deployment_id = $1 AND deploy_deployment_targets.idx = v.column1 \
             AND deploy_deployment_targets.target_id = v.column2",
            tuples(chunk.len(), &["BIGINT", "", ""], 2)
        );
        let mut q = sqlx::query(AssertSqlSafe(sql)).bind(id.to_string());
        for (index, entry) in chunk {
            q = q.bind(int(*index)).bind(entry.id.as_str()).bind(to_json(*entry)?);
        }
        let done = q.execute(&mut *conn).await.map_err(unavailable)?;
        if usize::try_from(done.rows_affected()).ok() != Some(chunk.len()) {
            let index = chunk.first().map_or(0, |(i, _)| *i);
            return Err(StoreError::Update(UpdateError::UnknownTarget { index }));
        }
    }
    Ok(())
}

/// Applies environment observations: for each target the last desired and the last actual state given.
async fn observe_targets(
    conn: &mut AnyConnection,
    environment: &EnvironmentName,
    observations: Vec<deploy_core::TargetObservation>,
) -> Result<(), StoreError> {
    let mut merged: std::collections::BTreeMap<String, (Option<String>, Option<String>)> =
        std::collections::BTreeMap::new();
    for o in observations {
        let slot = merged.entry(o.target.to_string()).or_default();
        if let Some(d) = o.desired.as_deref() {
            slot.0 = Some(to_json(d)?);
        }
        if let Some(a) = &o.actual {
            slot.1 = Some(to_json(a)?);
        }
    }
    let rows: Vec<_> = merged.into_iter().collect();
    for chunk in rows.chunks(CHUNK) {
        let sql = format!(
            "UPDATE deploy_environment_targets SET desired = COALESCE(v.column2, desired), \
             actual = COALESCE(v.column3, actual) FROM (VALUES {}) AS v \
             WHERE deploy_environment_targets.environment = $1 AND deploy_environment_targets.id = v.column1",
            tuples(chunk.len(), &["", "TEXT", "TEXT"], 2)
        );
        let mut q = sqlx::query(AssertSqlSafe(sql)).bind(environment.as_str());
        for (target, (desired, actual)) in chunk {
            q = q.bind(target.as_str()).bind(desired.clone()).bind(actual.clone());
        }
        q.execute(&mut *conn).await.map_err(unavailable)?;
    }
    Ok(())
}

/// A deployment header as stored, with its lease.
struct HeaderRow {
    header: Deployment,
    lease_owner: Option<String>,
    lease_token: i64,
    lease_expires: Option<i64>,
}

impl HeaderRow {
    fn lease_live(&self, now: Timestamp) -> bool {
        self.lease_owner.is_some() && self.lease_expires.is_some_and(|e| e > ms(now))
    }
}

/// A deployment's header and lease; with `lock`, the row stays locked until the transaction ends (PostgreSQL).
async fn load_header(
    conn: &mut AnyConnection,
    lock: Option<Backend>,
    id: DeploymentId,
) -> Result<Option<HeaderRow>, StoreError> {
    let sql = format!(
        "SELECT header, lease_owner, lease_token, lease_expires FROM deploy_deployments WHERE id = $1{}",
        lock.map_or("", Backend::for_update)
    );
    let row =
        sqlx::query(AssertSqlSafe(sql)).bind(id.to_string()).fetch_optional(&mut *conn).await.map_err(unavailable)?;
    let Some(row) = row else { return Ok(None) };
    let header: String = get(&row, "header")?;
    Ok(Some(HeaderRow {
        header: from_json("deployment", &header)?,
        lease_owner: get(&row, "lease_owner")?,
        lease_token: get(&row, "lease_token")?,
        lease_expires: get(&row, "lease_expires")?,
    }))
}

async fn load_targets(conn: &mut AnyConnection, id: DeploymentId) -> Result<Vec<TargetProgress>, StoreError> {
    let rows = sqlx::query("SELECT doc FROM deploy_deployment_targets WHERE deployment_id = $1 ORDER BY idx")
        .bind(id.to_string())
        .fetch_all(&mut *conn)
        .await
        .map_err(unavailable)?;
    rows.iter().map(|r| get::<String>(r, "doc").and_then(|d| from_json("target", &d))).collect()
}

/// A whole deployment in one query: its header row and its target rows (a header without targets still comes back).
async fn load_deployment(conn: &mut AnyConnection, id: DeploymentId) -> Result<Option<Deployment>, StoreError> {
    let rows = sqlx::query(
        "SELECT d.header, t.doc FROM deploy_deployments d \
         LEFT JOIN deploy_deployment_targets t ON t.deployment_id = d.id WHERE d.id = $1 ORDER BY t.idx",
    )
    .bind(id.to_string())
    .fetch_all(&mut *conn)
    .await
    .map_err(unavailable)?;
    let Some(first) = rows.first() else { return Ok(None) };
    let header: Deployment = from_json("deployment", &get::<String>(first, "header")?)?;
    let targets = rows
        .iter()
        .filter_map(|r| get::<Option<String>>(r, "doc").transpose())
        .map(|doc| doc.and_then(|d| from_json("target", &d)))
        .collect::<Result<Vec<TargetProgress>, _>>()?;
    Ok(Some(header.with_targets(targets)))
}

/// An environment with its targets and open deployments; with `lock`, its row stays locked (PostgreSQL).
async fn load_environment(
    conn: &mut AnyConnection,
    lock: Option<Backend>,
    name: &EnvironmentName,
) -> Result<Option<Environment>, StoreError> {
    let sql = format!(
        "SELECT revision, concurrency, require_if_match FROM deploy_environments WHERE name = $1{}",
        lock.map_or("", Backend::for_update)
    );
    let row =
        sqlx::query(AssertSqlSafe(sql)).bind(name.as_str()).fetch_optional(&mut *conn).await.map_err(unavailable)?;
    let Some(row) = row else { return Ok(None) };
    let revision: i64 = get(&row, "revision")?;
    let concurrency: String = get(&row, "concurrency")?;
    let require: i64 = get(&row, "require_if_match")?;
    let targets = load_env_targets(conn, name).await?;
    let (active_deployment, queued) = load_open(conn, name).await?;
    Ok(Some(Environment {
        name: name.clone(),
        revision: Revision::new(u64::try_from(revision).unwrap_or(0)),
        concurrency: parse_policy(&concurrency)?,
        require_if_match: require != 0,
        active_deployment,
        queued,
        targets,
    }))
}

fn parse_policy(s: &str) -> Result<ConcurrencyPolicy, StoreError> {
    from_json("concurrency", &format!("\"{s}\""))
}

/// One environment target as stored: its definition and its desired and actual state, each JSON text.
#[derive(serde::Deserialize)]
struct StoredTarget {
    definition: String,
    desired: Option<String>,
    actual: Option<String>,
}

impl StoredTarget {
    fn decode(self) -> Result<EnvironmentTarget, StoreError> {
        let def: TargetDefinition = from_json("environment target", &self.definition)?;
        Ok(EnvironmentTarget {
            id: def.id,
            labels: def.labels,
            executor: def.executor,
            config: def.config,
            desired: self.desired.map(|d| from_json::<DesiredState>("desired state", &d)).transpose()?.map(Into::into),
            actual: self.actual.map(|a| from_json::<ActualState>("actual state", &a)).transpose()?,
        })
    }
}

async fn load_env_targets(
    conn: &mut AnyConnection,
    name: &EnvironmentName,
) -> Result<Vec<EnvironmentTarget>, StoreError> {
    let rows = sqlx::query(
        "SELECT definition, desired, actual FROM deploy_environment_targets WHERE environment = $1 ORDER BY idx",
    )
    .bind(name.as_str())
    .fetch_all(&mut *conn)
    .await
    .map_err(unavailable)?;
    rows.iter()
        .map(|r| {
            Ok(StoredTarget {
                definition: get(r, "definition")?,
                desired: get(r, "desired")?,
                actual: get(r, "actual")?,
            })
        })
        .map(|t: Result<StoredTarget, StoreError>| t.and_then(StoredTarget::decode))
        .collect()
}

/// The environment's active deployment and its queue, in acceptance order.
async fn load_open(
    conn: &mut AnyConnection,
    name: &EnvironmentName,
) -> Result<(Option<DeploymentId>, Vec<DeploymentId>), StoreError> {
    let open = sqlx::query(
        "SELECT id, status FROM deploy_deployments WHERE environment = $1 AND terminal = 0 ORDER BY revision",
    )
    .bind(name.as_str())
    .fetch_all(&mut *conn)
    .await
    .map_err(unavailable)?;
    let mut active = None;
    let mut queued = Vec::new();
    for r in &open {
        let id: DeploymentId = get::<String>(r, "id")?.parse().map_err(|e| corrupt("deployment id", e))?;
        let status: DeploymentStatus = get::<String>(r, "status")?.parse().map_err(|e| corrupt("status", e))?;
        if status.is_running() && active.is_none() {
            active = Some(id);
        } else {
            queued.push(id);
        }
    }
    Ok((active, queued))
}

fn policy_name(p: ConcurrencyPolicy) -> &'static str {
    match p {
        ConcurrencyPolicy::Queue => "queue",
        ConcurrencyPolicy::Reject => "reject",
        ConcurrencyPolicy::Supersede => "supersede",
    }
}

async fn write_environment_targets(conn: &mut AnyConnection, env: &Environment) -> Result<(), StoreError> {
    sqlx::query("DELETE FROM deploy_environment_targets WHERE environment = $1")
        .bind(env.name.as_str())
        .execute(&mut *conn)
        .await
        .map_err(unavailable)?;
    // Multi-row inserts: replacing an environment of thousands of targets is a few statements, not one per target.
    let rows: Vec<(usize, &EnvironmentTarget)> = env.targets.iter().enumerate().collect();
    for chunk in rows.chunks(CHUNK) {
        let sql = format!(
            "INSERT INTO deploy_environment_targets (environment, id, idx, definition, desired, actual) VALUES {}",
            tuples(chunk.len(), &["", "", "BIGINT", "", "TEXT", "TEXT"], 1)
        );
        let mut q = sqlx::query(AssertSqlSafe(sql));
        for (i, t) in chunk {
            let def = TargetDefinition {
                id: t.id.clone(),
                labels: t.labels.clone(),
                executor: t.executor.clone(),
                config: t.config.clone(),
            };
            q = q
                .bind(env.name.as_str())
                .bind(t.id.as_str())
                .bind(int(*i))
                .bind(to_json(&def)?)
                .bind(t.desired.as_deref().map(to_json).transpose()?)
                .bind(t.actual.as_ref().map(to_json).transpose()?);
        }
        q.execute(&mut *conn).await.map_err(unavailable)?;
    }
    Ok(())
}

async fn next_seq(conn: &mut AnyConnection, id: DeploymentId) -> Result<u64, StoreError> {
    let row = sqlx::query("SELECT COALESCE(MAX(seq), 0) AS s FROM deploy_events WHERE deployment_id = $1")
        .bind(id.to_string())
        .fetch_one(&mut *conn)
        .await
        .map_err(unavailable)?;
    let s: i64 = get(&row, "s")?;
    Ok(u64::try_from(s).unwrap_or(0) + 1)
}

/// Appends events (numbered from `first_seq`, or after the last stored one) and, in the same transaction, the webhook
/// deliveries they match.
async fn append_events(
    conn: &mut AnyConnection,
    id: DeploymentId,
    environment: &EnvironmentName,
    events: Vec<NewEvent>,
    first_seq: Option<u64>,
) -> Result<(), StoreError> {
    if events.is_empty() {
        return Ok(());
    }
    let first = match first_seq {
        Some(s) => s,
        None => next_seq(conn, id).await?,
    };
    let numbered: Vec<Event> = events.into_iter().zip(first..).map(|(e, seq)| e.numbered(id, seq)).collect();
    for chunk in numbered.chunks(CHUNK) {
        let sql = format!(
            "INSERT INTO deploy_events (deployment_id, seq, doc) VALUES {}",
            tuples(chunk.len(), &["", "BIGINT", ""], 1)
        );
        let mut q = sqlx::query(AssertSqlSafe(sql));
        for event in chunk {
            q = q.bind(id.to_string()).bind(i64::try_from(event.seq).unwrap_or(i64::MAX)).bind(to_json(event)?);
        }
        q.execute(&mut *conn).await.map_err(unavailable)?;
    }
    enqueue_deliveries(conn, id, environment, &numbered).await
}

/// Writes the webhook deliveries that `events` match (the caller's transaction makes them atomic with the events).
async fn enqueue_deliveries(
    conn: &mut AnyConnection,
    id: DeploymentId,
    environment: &EnvironmentName,
    numbered: &[Event],
) -> Result<(), StoreError> {
    let subscriptions = load_webhooks(conn).await?;
    let matching: Vec<(&Event, &WebhookSubscription)> = numbered
        .iter()
        .flat_map(|e| subscriptions.iter().filter(|s| s.matches(e.event_type, environment)).map(move |s| (e, s)))
        .collect();
    if matching.is_empty() {
        return Ok(());
    }
    let snapshot = match load_deployment(conn, id).await? {
        Some(d) => serde_json::to_value(&d).map_err(|e| corrupt("deployment", e))?,
        None => return Err(not_found("deployment", id)),
    };
    for (event, sub) in matching {
        let delivery = WebhookDelivery::pending(sub.id, event, &snapshot);
        sqlx::query(
            "INSERT INTO deploy_deliveries \
             (id, subscription_id, pending, due, hidden_until, status, attempts, next_at) \
             VALUES ($1, $2, 1, $3, NULL, 'pending', 0, $4)",
        )
        .bind(&delivery.id)
        .bind(sub.id.to_string())
        .bind(ms(event.at))
        .bind(rfc3339(event.at)?)
        .execute(&mut *conn)
        .await
        .map_err(unavailable)?;
        sqlx::query("INSERT INTO deploy_delivery_docs (id, doc) VALUES ($1, $2)")
            .bind(&delivery.id)
            .bind(to_json(&delivery)?)
            .execute(&mut *conn)
            .await
            .map_err(unavailable)?;
    }
    Ok(())
}

/// Rows written or looked up by one statement.
const ROWS_PER_STATEMENT: usize = 200;

/// The columns a delivery is read from ([`DELIVERIES`]): the document written when it was queued (what never
/// changes: its id, subscription, event and payload) and its state. Since schema version 7 the document is a row of
/// its own, so the rows that claims and outcomes rewrite are small.
const DELIVERY_COLUMNS: &str = "dd.doc, d.status, d.attempts, d.last_status_code, d.next_at, d.delivered_at";

/// Deliveries (`d`) with their documents (`dd`).
const DELIVERIES: &str = "deploy_deliveries d JOIN deploy_delivery_docs dd ON dd.id = d.id";

/// The state columns a pending delivery can have set, as [`Backend::due_batch_sql`] gives them: attempts, the last
/// status code, the next attempt.
#[derive(serde::Deserialize)]
struct DueState(u32, Option<u16>, Option<String>);

/// A delivery from a row of [`DELIVERY_COLUMNS`].
fn read_delivery(row: &sqlx::any::AnyRow) -> Result<WebhookDelivery, StoreError> {
    let mut d: WebhookDelivery = from_json("delivery", &get::<String>(row, "doc")?)?;
    d.status = match get::<String>(row, "status")?.as_str() {
        "pending" => DeliveryStatus::Pending,
        "delivered" => DeliveryStatus::Delivered,
        "failed" => DeliveryStatus::Failed,
        other => return Err(corrupt("delivery status", other)),
    };
    d.attempts = u32::try_from(get::<i64>(row, "attempts")?).map_err(|e| corrupt("attempts", e))?;
    d.last_status_code = get::<Option<i64>>(row, "last_status_code")?
        .map(u16::try_from)
        .transpose()
        .map_err(|e| corrupt("last_status_code", e))?;
    d.next_attempt_at = get::<Option<String>>(row, "next_at")?.as_deref().map(parse_rfc3339).transpose()?;
    d.delivered_at = get::<Option<String>>(row, "delivered_at")?.as_deref().map(parse_rfc3339).transpose()?;
    Ok(d)
}

fn rfc3339(t: Timestamp) -> Result<String, StoreError> {
    t.format(&time::format_description::well_known::Rfc3339).map_err(|e| corrupt("timestamp", e))
}

fn parse_rfc3339(s: &str) -> Result<Timestamp, StoreError> {
    Timestamp::parse(s, &time::format_description::well_known::Rfc3339).map_err(|e| corrupt("timestamp", e))
}

/// Fails every pending delivery of a disabled subscription, in one statement.
async fn fail_pending_deliveries(conn: &mut AnyConnection, subscription: Uuid) -> Result<(), StoreError> {
    sqlx::query(
        "UPDATE deploy_deliveries SET status = 'failed', next_at = NULL, pending = 0, due = NULL, \
         hidden_until = NULL WHERE subscription_id = $1 AND pending = 1",
    )
    .bind(subscription.to_string())
    .execute(&mut *conn)
    .await
    .map_err(unavailable)?;
    Ok(())
}

/// Outcomes to record, sorted by the statement that writes them.
#[derive(Default)]
struct Outcomes<'a> {
    /// By status code: each code's deliveries take one statement per chunk.
    delivered: std::collections::BTreeMap<u16, Vec<&'a str>>,
    retry: Vec<(&'a str, Option<u16>, Timestamp)>,
    give_up: Vec<(&'a str, Option<u16>)>,
    gone: Vec<&'a str>,
}

impl<'a> Outcomes<'a> {
    fn sort(outcomes: &'a [(String, DeliveryOutcome)]) -> Self {
        let mut sorted = Self::default();
        for (id, outcome) in outcomes {
            match outcome {
                DeliveryOutcome::Delivered { status_code } => {
                    sorted.delivered.entry(*status_code).or_default().push(id);
                }
                DeliveryOutcome::Retry { status_code, next_attempt_at } => {
                    sorted.retry.push((id, *status_code, *next_attempt_at));
                }
                DeliveryOutcome::GiveUp { status_code } => sorted.give_up.push((id, *status_code)),
                DeliveryOutcome::Gone => sorted.gone.push(id),
            }
        }
        sorted
    }
}

/// Records outcomes of pending deliveries (the same transitions as [`WebhookDelivery::record_attempt`]), a statement
/// per kind of outcome and chunk; a delivery no longer pending is left alone. Returns the subscriptions whose
/// receivers answered 410.
///
/// Rows are found by id and checked by `status` (always in step with `pending`), never by `pending`: for
/// `pending = 1` SQLite's planner would take an index partial on it (the `due` index) and scan every pending delivery.
async fn record_outcomes(
    conn: &mut AnyConnection,
    backend: Backend,
    outcomes: &[(String, DeliveryOutcome)],
    now: Timestamp,
) -> Result<Vec<Uuid>, StoreError> {
    let sorted = Outcomes::sort(outcomes);
    let now_text = rfc3339(now)?;
    for (code, ids) in &sorted.delivered {
        let sql = format!(
            "UPDATE deploy_deliveries SET status = 'delivered', attempts = attempts + 1, last_status_code = $1, \
             delivered_at = $2, next_at = NULL, pending = 0, due = NULL, hidden_until = NULL \
             WHERE status = 'pending' AND id IN {}",
            backend.json_strings(3)
        );
        sqlx::query(AssertSqlSafe(sql))
            .bind(i64::from(*code))
            .bind(now_text.clone())
            .bind(to_json(ids)?)
            .execute(&mut *conn)
            .await
            .map_err(unavailable)?;
    }
    for chunk in sorted.retry.chunks(ROWS_PER_STATEMENT) {
        let sql = format!(
            "WITH v (id, code, next_at, due) AS (VALUES {}) \
             UPDATE deploy_deliveries SET attempts = attempts + 1, last_status_code = v.code, next_at = v.next_at, \
             due = v.due, hidden_until = NULL FROM v WHERE deploy_deliveries.id = v.id AND deploy_deliveries.status = 'pending'",
            tuples(chunk.len(), &["TEXT", "BIGINT", "TEXT", "BIGINT"], 1)
        );
        let mut q = sqlx::query(AssertSqlSafe(sql));
        for (id, code, at) in chunk {
            q = q.bind(*id).bind(code.map(i64::from)).bind(rfc3339(*at)?).bind(ms(*at));
        }
        q.execute(&mut *conn).await.map_err(unavailable)?;
    }
    for chunk in sorted.give_up.chunks(ROWS_PER_STATEMENT) {
        let sql = format!(
            "WITH v (id, code) AS (VALUES {}) \
             UPDATE deploy_deliveries SET status = 'failed', attempts = attempts + 1, last_status_code = v.code, \
             next_at = NULL, pending = 0, due = NULL, hidden_until = NULL \
             FROM v WHERE deploy_deliveries.id = v.id AND deploy_deliveries.status = 'pending'",
            tuples(chunk.len(), &["TEXT", "BIGINT"], 1)
        );
        let mut q = sqlx::query(AssertSqlSafe(sql));
        for (id, code) in chunk {
            q = q.bind(*id).bind(code.map(i64::from));
        }
        q.execute(&mut *conn).await.map_err(unavailable)?;
    }
    let mut gone = Vec::new();
    if !sorted.gone.is_empty() {
        let sql = format!(
            "UPDATE deploy_deliveries SET status = 'failed', attempts = attempts + 1, last_status_code = 410, \
             next_at = NULL, pending = 0, due = NULL, hidden_until = NULL \
             WHERE status = 'pending' AND id IN {} RETURNING subscription_id",
            backend.json_strings(1)
        );
        let rows = sqlx::query(AssertSqlSafe(sql))
            .bind(to_json(&sorted.gone)?)
            .fetch_all(&mut *conn)
            .await
            .map_err(unavailable)?;
        for row in rows {
            let id = get::<String>(&row, "subscription_id")?.parse().map_err(|e| corrupt("subscription id", e))?;
            if !gone.contains(&id) {
                gone.push(id);
            }
        }
    }
    Ok(gone)
}

async fn load_webhooks(conn: &mut AnyConnection) -> Result<Vec<WebhookSubscription>, StoreError> {
    let rows = sqlx::query("SELECT doc, secret FROM deploy_webhooks ORDER BY id")
        .fetch_all(&mut *conn)
        .await
        .map_err(unavailable)?;
    rows.iter()
        .map(|r| {
            let mut s: WebhookSubscription = from_json("webhook", &get::<String>(r, "doc")?)?;
            s.secret = get(r, "secret")?;
            Ok(s)
        })
        .collect()
}

/// Applies an update to a stored deployment: header checks, target rows, events, observations, outbox.
async fn apply_update(
    conn: &mut AnyConnection,
    id: DeploymentId,
    mut header: Deployment,
    update: ProgressUpdate,
) -> Result<Control, StoreError> {
    header.apply_to_header(&update).map_err(|e| match e {
        UpdateError::AlreadyFinished(status) => StoreError::AlreadyFinished { deployment: id, status },
        other => StoreError::Update(other),
    })?;
    let ProgressUpdate { targets, events, observations, .. } = update;
    update_targets(conn, id, &targets).await?;
    let terminal = header.status().is_terminal();
    let environment = header.environment().clone();
    let lease_clause = if terminal { ", lease_owner = NULL, lease_expires = NULL" } else { "" };
    // The only dynamic part is a constant clause chosen above.
    sqlx::query(AssertSqlSafe(format!(
        "UPDATE deploy_deployments SET header = $1, status = $2, terminal = $3{lease_clause} WHERE id = $4"
    )))
    .bind(to_json(&header)?)
    .bind(header.status().as_str())
    .bind(i64::from(terminal))
    .bind(id.to_string())
    .execute(&mut *conn)
    .await
    .map_err(unavailable)?;
    observe_targets(conn, &environment, observations).await?;
    append_events(conn, id, &environment, events, None).await?;
    Ok(Control { cancel_requested: header.cancel_requested(), superseded_by: header.superseded_by() })
}

/// Records a cancel or supersede request on a stored deployment, inside the caller's transaction: `request` is
/// [`Deployment::request_cancel`] or [`Deployment::mark_superseded_by`], applied to the whole record; when it says the
/// deployment stops at once, that update is written too, else only the flag.
async fn request_stop(
    conn: &mut AnyConnection,
    row: HeaderRow,
    now: Timestamp,
    request: impl FnOnce(&mut Deployment, bool) -> Option<ProgressUpdate>,
) -> Result<(), StoreError> {
    let held = row.lease_live(now);
    let id = row.header.id();
    let mut full = row.header.with_targets(load_targets(conn, id).await?);
    let stop = request(&mut full, held);
    let header = full.header();
    match stop {
        Some(update) => apply_update(conn, id, header, update).await.map(|_| ()),
        None => save_header(conn, &header).await,
    }
}

async fn save_header(conn: &mut AnyConnection, header: &Deployment) -> Result<(), StoreError> {
    sqlx::query("UPDATE deploy_deployments SET header = $1 WHERE id = $2")
        .bind(to_json(header)?)
        .bind(header.id().to_string())
        .execute(&mut *conn)
        .await
        .map_err(unavailable)?;
    Ok(())
}

/// What the optimistic acceptance decided.
pub(crate) enum Optimistic {
    /// Done: accepted or replayed.
    Done(Box<Accepted>),
    /// This case needs the locking path (another policy, webhooks, a very large deployment).
    Locking,
    /// Another writer changed the environment, or used the key, between the read and the write: try again.
    Raced,
}

impl SqlStore {
    /// The fast acceptance for the common case (policy `queue`, no webhook subscriptions): one read, then one
    /// autocommitted statement that bumps the environment's revision *only if it is still the one read* and, in the
    /// same statement, inserts the deployment, its targets, its queued event and its idempotency key (data-modifying
    /// CTEs on PostgreSQL, a view with a trigger on SQLite). A concurrent change makes the statement change nothing,
    /// and the acceptance is tried again.
    async fn accept_optimistic(&self, acceptance: &Acceptance, use_snapshot: bool) -> Result<Optimistic, StoreError> {
        let mut conn = self.pool.acquire().await.map_err(unavailable)?;
        self.accept_optimistic_on(&mut conn, acceptance, use_snapshot).await
    }

    /// [`SqlStore::accept_optimistic`] on a given connection, autocommitted or inside the caller's transaction. Every
    /// refusal and a replay return before anything is written; a race makes the one write change nothing.
    pub(crate) async fn accept_optimistic_on(
        &self,
        conn: &mut AnyConnection,
        acceptance: &Acceptance,
        use_snapshot: bool,
    ) -> Result<Optimistic, StoreError> {
        let Acceptance { draft, idempotency, expected_revision, now } = acceptance;
        let env_name = draft.spec.environment().clone();
        let (scope, key) =
            idempotency.as_ref().map_or((String::new(), String::new()), |r| (r.scope.clone(), r.key.to_string()));
        // A snapshot is only a guess at the revision; a caller's expected revision is checked against a fresh read.
        let cached =
            if use_snapshot && expected_revision.is_none() { self.snapshots().get(&env_name).cloned() } else { None };
        let (env, has_webhooks) = match cached {
            Some(snapshot) => snapshot,
            None => {
                let sql = format!(
                    "SELECT e.revision, e.concurrency, e.require_if_match, \
                     (SELECT COUNT(*) FROM deploy_webhooks) AS hooks, {} AS targets, \
                     (SELECT k.fingerprint FROM deploy_idempotency_keys k \
                      WHERE k.scope = $2 AND k.key = $3 AND k.expires > $4) AS key_fingerprint, \
                     (SELECT k.deployment_id FROM deploy_idempotency_keys k \
                      WHERE k.scope = $2 AND k.key = $3 AND k.expires > $4) AS key_deployment \
                     FROM deploy_environments e WHERE e.name = $1",
                    self.backend.env_targets_json()
                );
                let row = sqlx::query(AssertSqlSafe(sql))
                    .bind(env_name.as_str())
                    .bind(&scope)
                    .bind(&key)
                    .bind(ms(*now))
                    .fetch_optional(&mut *conn)
                    .await
                    .map_err(unavailable)?
                    .ok_or_else(|| not_found("environment", &env_name))?;
                if let (Some(rec), Some(fingerprint)) = (idempotency, get::<Option<String>>(&row, "key_fingerprint")?) {
                    rec.check_replay(&fingerprint)?;
                    let id: Option<String> = get(&row, "key_deployment")?;
                    let id: DeploymentId = id.unwrap_or_default().parse().map_err(|e| corrupt("deployment id", e))?;
                    let deployment = load_deployment(conn, id).await?.ok_or_else(|| not_found("deployment", id))?;
                    return Ok(Optimistic::Done(Box::new(Accepted { deployment, replayed: true })));
                }
                let stored: Vec<StoredTarget> = from_json("environment targets", &get::<String>(&row, "targets")?)?;
                let env = Environment {
                    name: env_name.clone(),
                    revision: Revision::new(u64::try_from(get::<i64>(&row, "revision")?).unwrap_or(0)),
                    concurrency: parse_policy(&get::<String>(&row, "concurrency")?)?,
                    require_if_match: get::<i64>(&row, "require_if_match")? != 0,
                    active_deployment: None,
                    queued: Vec::new(),
                    targets: stored.into_iter().map(StoredTarget::decode).collect::<Result<_, _>>()?,
                };
                let has_webhooks = get::<i64>(&row, "hooks")? > 0;
                let env = std::sync::Arc::new(env);
                self.snapshots().insert(env_name.clone(), (std::sync::Arc::clone(&env), has_webhooks));
                (env, has_webhooks)
            }
        };
        let current = env.revision;
        Acceptance::check_revision(*expected_revision, &env_name, env.require_if_match, current)?;
        if env.concurrency != ConcurrencyPolicy::Queue || has_webhooks {
            return Ok(Optimistic::Locking);
        }
        let deployment = Deployment::plan(draft.clone(), &env, *now).map_err(StoreError::Invalid)?;
        if deployment.targets().len() > CHUNK {
            return Ok(Optimistic::Locking);
        }
        let id = deployment.id();
        let queued = deployment.queued_event(*now).numbered(id, 1);
        let (fingerprint, expires) =
            idempotency.as_ref().map_or((String::new(), 0), |r| (r.fingerprint.as_str().to_owned(), ms(r.expires_at)));
        let result = match self.backend {
            Backend::Postgres => {
                let sql = format!(
                    "WITH bump AS (UPDATE deploy_environments SET revision = revision + 1 \
                                   WHERE name = $2 AND revision = CAST($8 AS BIGINT) \
                                   AND NOT EXISTS (SELECT 1 FROM deploy_webhooks) RETURNING revision), \
                     d AS (INSERT INTO deploy_deployments (id, environment, revision, service, status, terminal, header, \
                           lease_owner, lease_token, lease_expires) \
                           SELECT $1, $2, CAST($3 AS BIGINT), $4, $5, 0, $6, NULL, 0, NULL FROM bump), \
                     e AS (INSERT INTO deploy_events (deployment_id, seq, doc) SELECT $1, 1, $7 FROM bump), \
                     k AS (INSERT INTO deploy_idempotency_keys (scope, key, fingerprint, deployment_id, expires) \
                           SELECT $9, $10, $11, $1, CAST($12 AS BIGINT) FROM bump WHERE $9 <> ''), \
                     t AS (INSERT INTO deploy_deployment_targets (deployment_id, idx, target_id, doc) \
                           SELECT v.column1, v.column2, v.column3, v.column4 FROM (VALUES {}) AS v, bump) \
                     SELECT COUNT(*) AS n FROM bump",
                    target_tuples(deployment.targets().len(), 13)
                );
                let mut q = sqlx::query(AssertSqlSafe(sql))
                    .bind(id.to_string())
                    .bind(env_name.to_string())
                    .bind(int(usize::try_from(deployment.revision().get()).unwrap_or(usize::MAX)))
                    .bind(deployment.service().to_string())
                    .bind(deployment.status().as_str())
                    .bind(to_json(&deployment.header())?)
                    .bind(to_json(&queued)?)
                    .bind(int(usize::try_from(current.get()).unwrap_or(usize::MAX)))
                    .bind(scope)
                    .bind(key)
                    .bind(fingerprint)
                    .bind(expires);
                for (i, t) in deployment.targets().iter().enumerate() {
                    q = q.bind(int(i)).bind(t.id.to_string()).bind(to_json(t)?);
                }
                q.fetch_one(&mut *conn).await.map(|row| get::<i64>(&row, "n").map(|n| n == 1))
            }
            Backend::Sqlite => {
                let targets = deployment.targets();
                sqlx::query(
                    "INSERT INTO deploy_accept (id, environment, read_revision, revision, service, status, header, \
                     event, targets, key_scope, key_name, key_fingerprint, key_expires) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)",
                )
                .bind(id.to_string())
                .bind(env_name.to_string())
                .bind(int(usize::try_from(current.get()).unwrap_or(usize::MAX)))
                .bind(int(usize::try_from(deployment.revision().get()).unwrap_or(usize::MAX)))
                .bind(deployment.service().to_string())
                .bind(deployment.status().as_str())
                .bind(to_json(&deployment.header())?)
                .bind(to_json(&queued)?)
                .bind(to_json(targets)?)
                .bind(scope)
                .bind(key)
                .bind(fingerprint)
                .bind(expires)
                .execute(&mut *conn)
                .await
                .map(|_| Ok(true))
            }
        };
        let outcome = match result {
            Ok(done) => {
                if done? {
                    Ok(Optimistic::Done(Box::new(Accepted { deployment, replayed: false })))
                } else {
                    // The environment changed since it was read: the statement changed nothing.
                    Ok(Optimistic::Raced)
                }
            }
            Err(e) if e.as_database_error().is_some_and(|d| d.message().contains("deploy: environment changed")) => {
                Ok(Optimistic::Raced)
            }
            // A concurrent or earlier use of the key (the next read finds it), or an expired key of the same name
            // (the locking path replaces it).
            Err(e) if is_unique_violation(&e) => Ok(Optimistic::Raced),
            Err(e) => Err(unavailable(e)),
        };
        drop(env); // the snapshot below is then the only owner: its revision is updated in place
        let mut snapshots = self.snapshots();
        match &outcome {
            Ok(Optimistic::Done(accepted)) => {
                if let Some((env, _)) = snapshots.get_mut(&env_name) {
                    std::sync::Arc::make_mut(env).revision = accepted.deployment.revision();
                }
            }
            _ => {
                snapshots.remove(&env_name);
            }
        }
        outcome
    }

    async fn accept_once(&self, acceptance: Acceptance) -> Result<Accepted, StoreError> {
        let mut tx = self.begin().await?;
        let accepted = self.accept_in(&mut tx, acceptance).await?;
        if !accepted.replayed {
            tx.commit().await.map_err(unavailable)?;
            // The locking path may have superseded older deployments.
            self.forget_cached_reads();
        }
        Ok(accepted)
    }

    /// One acceptance on its own: the optimistic one-statement path when it applies, else the locking path.
    pub(crate) async fn accept_alone(&self, acceptance: Acceptance) -> Result<Accepted, StoreError> {
        // The optimistic path first: its first try trusts this process's snapshot of the environment, later tries
        // read afresh. Two replicas that race on one new key: the loser's statement fails on the key's primary key,
        // and its next try finds the winner's deployment (a replay) or a different request (a reuse).
        for attempt in 0..3 {
            match self.accept_optimistic(&acceptance, attempt == 0).await? {
                Optimistic::Done(accepted) => return Ok(*accepted),
                Optimistic::Locking => break,
                Optimistic::Raced => {}
            }
        }
        // The locking path may change what the snapshot knows (webhooks, the revision): read afresh next time.
        self.snapshots().remove(acceptance.draft.spec.environment());
        let mut last = None;
        for _ in 0..3 {
            match self.accept_once(acceptance.clone()).await {
                Err(StoreError::IdempotencyKeyInFlight { key }) => last = Some(key),
                other => return other,
            }
        }
        match last {
            Some(key) => Err(StoreError::IdempotencyKeyInFlight { key }),
            None => Err(StoreError::Corrupt("acceptance retried without a cause".into())),
        }
    }

    /// Appends one audit entry in its own transaction.
    pub(crate) async fn append_audit_alone(&self, entry: &AuditEntry) -> Result<(), StoreError> {
        let mut conn = self.pool.acquire().await.map_err(unavailable)?;
        self.insert_audit(&mut conn, entry).await
    }

    /// Inserts audit entries on `conn`, many rows per statement.
    pub(crate) async fn insert_audits(
        &self,
        conn: &mut AnyConnection,
        entries: &[AuditEntry],
    ) -> Result<(), StoreError> {
        for chunk in entries.chunks(CHUNK / 4) {
            let sql = format!(
                "INSERT INTO deploy_audit (id, actor, environment, doc) VALUES {}",
                tuples(chunk.len(), &["", "", "", ""], 1)
            );
            let mut q = sqlx::query(AssertSqlSafe(sql));
            for entry in chunk {
                let mut doc = serde_json::to_value(entry).map_err(|e| corrupt("encoding", e))?;
                if let Some(map) = doc.as_object_mut() {
                    map.insert("id".into(), entry.id.to_string().into());
                }
                q = q
                    .bind(entry.id.to_string())
                    .bind(entry.actor.clone())
                    .bind(entry.environment.clone())
                    .bind(doc.to_string());
            }
            q.execute(&mut *conn).await.map_err(unavailable)?;
        }
        Ok(())
    }

    /// Inserts one audit entry on `conn`.
    pub(crate) async fn insert_audit(&self, conn: &mut AnyConnection, entry: &AuditEntry) -> Result<(), StoreError> {
        let mut doc = serde_json::to_value(entry).map_err(|e| corrupt("encoding", e))?;
        if let Some(map) = doc.as_object_mut() {
            map.insert("id".into(), entry.id.to_string().into());
        }
        sqlx::query("INSERT INTO deploy_audit (id, actor, environment, doc) VALUES ($1, $2, $3, $4)")
            .bind(entry.id.to_string())
            .bind(&entry.actor)
            .bind(entry.environment.clone())
            .bind(doc.to_string())
            .execute(&mut *conn)
            .await
            .map_err(unavailable)?;
        Ok(())
    }

    /// The locking acceptance inside the caller's transaction. Every refusal, and a replay, leaves changes the caller
    /// must undo (the revision bump): drop the transaction or roll back to a savepoint taken before.
    pub(crate) async fn accept_in(
        &self,
        tx: &mut AnyConnection,
        acceptance: Acceptance,
    ) -> Result<Accepted, StoreError> {
        let Acceptance { draft, idempotency, expected_revision, now } = acceptance;
        let env_name = draft.spec.environment().clone();
        // Bumping the revision first takes the environment's row lock, which serializes acceptances per environment
        // across replicas; every early return below drops the transaction, which undoes the bump.
        let sql = format!(
            "UPDATE deploy_environments SET revision = revision + 1 WHERE name = $1 \
             RETURNING revision, concurrency, require_if_match, (SELECT COUNT(*) FROM deploy_webhooks) AS hooks, \
             {} AS targets",
            self.backend.env_targets_json()
        );
        let bumped = sqlx::query(AssertSqlSafe(sql))
            .bind(env_name.as_str())
            .fetch_optional(&mut *tx)
            .await
            .map_err(unavailable)?
            .ok_or_else(|| not_found("environment", &env_name))?;
        let current = Revision::new(u64::try_from(get::<i64>(&bumped, "revision")?.saturating_sub(1)).unwrap_or(0));
        let concurrency = parse_policy(&get::<String>(&bumped, "concurrency")?)?;
        let require_if_match = get::<i64>(&bumped, "require_if_match")? != 0;
        let has_webhooks = get::<i64>(&bumped, "hooks")? > 0;
        let stored: Vec<StoredTarget> = from_json("environment targets", &get::<String>(&bumped, "targets")?)?;
        if let Some(rec) = &idempotency {
            let row = sqlx::query(
                "SELECT fingerprint, deployment_id FROM deploy_idempotency_keys WHERE scope = $1 AND key = $2 AND expires > $3",
            )
            .bind(&rec.scope)
            .bind(rec.key.as_str())
            .bind(ms(now))
            .fetch_optional(&mut *tx)
            .await
            .map_err(unavailable)?;
            if let Some(row) = row {
                let fingerprint: String = get(&row, "fingerprint")?;
                rec.check_replay(&fingerprint)?;
                let id: DeploymentId =
                    get::<String>(&row, "deployment_id")?.parse().map_err(|e| corrupt("deployment id", e))?;
                let deployment = load_deployment(tx, id).await?.ok_or_else(|| not_found("deployment", id))?;
                // Dropping the transaction undoes the revision bump: a replay changes nothing.
                return Ok(Accepted { deployment, replayed: true });
            }
        }
        Acceptance::check_revision(expected_revision, &env_name, require_if_match, current)?;
        let (active_deployment, queued) = match concurrency {
            ConcurrencyPolicy::Queue => (None, Vec::new()),
            ConcurrencyPolicy::Reject | ConcurrencyPolicy::Supersede => load_open(tx, &env_name).await?,
        };
        let env = Environment {
            name: env_name.clone(),
            revision: current,
            concurrency,
            require_if_match,
            active_deployment,
            queued,
            targets: stored.into_iter().map(StoredTarget::decode).collect::<Result<_, _>>()?,
        };
        let deployment = Deployment::plan(draft, &env, now).map_err(StoreError::Invalid)?;
        let id = deployment.id();
        let older: Vec<DeploymentId> = env.active_deployment.iter().chain(env.queued.iter()).copied().collect();
        for old in Acceptance::superseding(&env_name, env.concurrency, &older)? {
            let Some(row) = load_header(tx, Some(self.backend), old).await? else { continue };
            request_stop(tx, row, now, |d, held| d.mark_superseded_by(id, now, held)).await?;
        }
        let queued = deployment.queued_event(now).numbered(id, 1);
        insert_new_deployment(tx, self.backend, &deployment, &queued).await?;
        if let Some(rec) = idempotency {
            // An expired key of the same name is replaced.
            sqlx::query("DELETE FROM deploy_idempotency_keys WHERE scope = $1 AND key = $2")
                .bind(&rec.scope)
                .bind(rec.key.as_str())
                .execute(&mut *tx)
                .await
                .map_err(unavailable)?;
            sqlx::query(
                "INSERT INTO deploy_idempotency_keys (scope, key, fingerprint, deployment_id, expires) \
                 VALUES ($1, $2, $3, $4, $5)",
            )
            .bind(&rec.scope)
            .bind(rec.key.as_str())
            .bind(rec.fingerprint.as_str())
            .bind(id.to_string())
            .bind(ms(rec.expires_at))
            .execute(&mut *tx)
            .await
            .map_err(|e| {
                if is_unique_violation(&e) {
                    StoreError::IdempotencyKeyInFlight { key: rec.key.clone() }
                } else {
                    unavailable(e)
                }
            })?;
        }
        if has_webhooks {
            enqueue_deliveries(tx, id, &env_name, &[queued]).await?;
        }
        Ok(Accepted { deployment, replayed: false })
    }
}

#[async_trait]
impl Store for SqlStore {
    async fn put_environment(
        &self,
        name: &EnvironmentName,
        spec: EnvironmentSpec,
        expected: Option<Revision>,
        _now: Timestamp,
    ) -> Result<EnvironmentWrite, StoreError> {
        self.snapshots().remove(name);
        let mut tx = self.begin().await?;
        let existing = load_environment(&mut tx, Some(self.backend), name).await?;
        let current = existing.as_ref().map_or(Revision::ZERO, |e| e.revision);
        if let Some(expected) = expected.filter(|e| *e != current) {
            return Err(StoreError::PreconditionFailed { expected, current });
        }
        let created = existing.is_none();
        let env = match existing {
            Some(mut env) => {
                env.replace(spec);
                env
            }
            None => Environment::create(name.clone(), spec),
        };
        let revision = i64::try_from(env.revision.get()).unwrap_or(i64::MAX);
        let sql = if created {
            "INSERT INTO deploy_environments (revision, concurrency, require_if_match, name) VALUES ($1, $2, $3, $4)"
        } else {
            "UPDATE deploy_environments SET revision = $1, concurrency = $2, require_if_match = $3 WHERE name = $4"
        };
        sqlx::query(sql)
            .bind(revision)
            .bind(policy_name(env.concurrency))
            .bind(i64::from(env.require_if_match))
            .bind(name.as_str())
            .execute(&mut *tx)
            .await
            .map_err(|e| {
                if is_unique_violation(&e) {
                    StoreError::PreconditionFailed { expected: Revision::ZERO, current: Revision::new(1) }
                } else {
                    unavailable(e)
                }
            })?;
        write_environment_targets(&mut tx, &env).await?;
        let environment = load_environment(&mut tx, None, name).await?.ok_or_else(|| not_found("environment", name))?;
        tx.commit().await.map_err(unavailable)?;
        Ok(EnvironmentWrite { environment, created })
    }

    async fn get_environment(&self, name: &EnvironmentName) -> Result<Environment, StoreError> {
        let mut conn = self.pool.acquire().await.map_err(unavailable)?;
        load_environment(&mut conn, None, name).await?.ok_or_else(|| not_found("environment", name))
    }

    async fn list_environments(&self, page: &PageRequest) -> Result<Page<Environment>, StoreError> {
        let limit = page.clamped_limit();
        let after = page.cursor.as_deref().map(EnvironmentName::new).transpose().map_err(|_| bad_cursor())?;
        let mut conn = self.pool.acquire().await.map_err(unavailable)?;
        let rows = sqlx::query("SELECT name FROM deploy_environments WHERE name > $1 ORDER BY name LIMIT $2")
            .bind(after.as_ref().map_or("", EnvironmentName::as_str))
            .bind(i64::try_from(limit + 1).unwrap_or(i64::MAX))
            .fetch_all(&mut *conn)
            .await
            .map_err(unavailable)?;
        let mut items = Vec::with_capacity(rows.len());
        for r in &rows {
            let name = EnvironmentName::new(get::<String>(r, "name")?).map_err(|e| corrupt("environment name", e))?;
            if let Some(env) = load_environment(&mut conn, None, &name).await? {
                items.push(env);
            }
        }
        Ok(Page::from_overfetch(items, limit, |e| e.name.to_string()))
    }

    async fn accept(&self, acceptance: Acceptance) -> Result<Accepted, StoreError> {
        // Concurrent acceptances share a transaction (see `group`); a lone one takes `accept_alone`.
        match self.grouped(crate::group::Write::Accept(Box::new(acceptance))).await? {
            crate::group::Written::Accepted(accepted) => Ok(*accepted),
            crate::group::Written::Appended | crate::group::Written::Agent(_) => {
                Err(StoreError::Corrupt("group commit answered the wrong write".into()))
            }
        }
    }

    async fn get_deployment(&self, id: DeploymentId) -> Result<Deployment, StoreError> {
        let epoch = match self.reads.get(id) {
            Ok(deployment) => return Ok(deployment),
            Err(epoch) => epoch,
        };
        let mut conn = self.pool.acquire().await.map_err(unavailable)?;
        let deployment = load_deployment(&mut conn, id).await?.ok_or_else(|| not_found("deployment", id))?;
        self.reads.put(&deployment, epoch);
        Ok(deployment)
    }

    async fn list_deployments(
        &self,
        filter: &DeploymentFilter,
        page: &PageRequest,
    ) -> Result<Page<Deployment>, StoreError> {
        let limit = page.clamped_limit();
        let before = page.cursor.as_deref().map(DeploymentId::from_str).transpose().map_err(|_| bad_cursor())?;
        let mut conn = self.pool.acquire().await.map_err(unavailable)?;
        let sql = format!("SELECT id FROM deploy_deployments WHERE {DEPLOYMENT_FILTER} ORDER BY id DESC LIMIT $5");
        let rows = bind_filter(sqlx::query(AssertSqlSafe(sql)), before, filter)
            .bind(i64::try_from(limit + 1).unwrap_or(i64::MAX))
            .fetch_all(&mut *conn)
            .await
            .map_err(unavailable)?;
        let mut items = Vec::with_capacity(rows.len());
        for r in &rows {
            let id: DeploymentId = get::<String>(r, "id")?.parse().map_err(|e| corrupt("deployment id", e))?;
            if let Some(d) = load_deployment(&mut conn, id).await? {
                items.push(d);
            }
        }
        Ok(Page::from_overfetch(items, limit, |d| d.id().to_string()))
    }

    async fn count_deployments(&self, filter: &DeploymentFilter) -> Result<u64, StoreError> {
        let sql = format!("SELECT COUNT(*) AS n FROM deploy_deployments WHERE {DEPLOYMENT_FILTER}");
        let row = bind_filter(sqlx::query(AssertSqlSafe(sql)), None, filter)
            .fetch_one(&self.pool)
            .await
            .map_err(unavailable)?;
        Ok(u64::try_from(get::<i64>(&row, "n")?).unwrap_or(0))
    }

    async fn events(&self, id: DeploymentId, after: u64, limit: usize) -> Result<Vec<Event>, StoreError> {
        let mut conn = self.pool.acquire().await.map_err(unavailable)?;
        let exists = sqlx::query("SELECT 1 AS one FROM deploy_deployments WHERE id = $1")
            .bind(id.to_string())
            .fetch_optional(&mut *conn)
            .await
            .map_err(unavailable)?;
        if exists.is_none() {
            return Err(not_found("deployment", id));
        }
        let rows =
            sqlx::query("SELECT doc FROM deploy_events WHERE deployment_id = $1 AND seq > $2 ORDER BY seq LIMIT $3")
                .bind(id.to_string())
                .bind(i64::try_from(after).unwrap_or(i64::MAX))
                .bind(i64::try_from(limit).unwrap_or(i64::MAX))
                .fetch_all(&mut *conn)
                .await
                .map_err(unavailable)?;
        rows.iter().map(|r| from_json("event", &get::<String>(r, "doc")?)).collect()
    }

    async fn request_cancel(&self, id: DeploymentId, now: Timestamp) -> Result<Deployment, StoreError> {
        let mut tx = self.begin().await?;
        let row = load_header(&mut tx, Some(self.backend), id).await?.ok_or_else(|| not_found("deployment", id))?;
        let status = row.header.status();
        if status.is_terminal() {
            return Err(StoreError::AlreadyFinished { deployment: id, status });
        }
        request_stop(&mut tx, row, now, |d, held| d.request_cancel(now, held)).await?;
        let d = load_deployment(&mut tx, id).await?.ok_or_else(|| not_found("deployment", id))?;
        tx.commit().await.map_err(unavailable)?;
        self.reads.forget(id);
        Ok(d)
    }

    async fn claim(&self, owner: &str, now: Timestamp, lease: Duration) -> Result<Option<Claim>, StoreError> {
        // The head of each environment's queue, if nobody holds it: one ordered index lookup per environment, not a
        // scan of every queued deployment. On PostgreSQL, rows another replica is claiming are skipped rather than
        // waited for.
        let lock = match self.backend {
            Backend::Sqlite => "",
            Backend::Postgres => " FOR UPDATE OF d SKIP LOCKED",
        };
        // A later incarnation of the same replica (`replica#incarnation`) takes over its own live leases at once.
        let replica = owner.split_once('#').map(|(name, _)| format!("{name}#")).filter(|p| p.len() > 1);
        let own = if replica.is_some() {
            " OR (substr(d.lease_owner, 1, CAST($2 AS INTEGER)) = $3 AND d.lease_owner <> $4)"
        } else {
            ""
        };
        let sql = format!(
            "SELECT d.id FROM deploy_environments e JOIN deploy_deployments d ON d.id = \
               (SELECT o.id FROM deploy_deployments o WHERE o.environment = e.name AND o.terminal = 0 \
                ORDER BY o.revision LIMIT 1) \
             WHERE d.lease_expires IS NULL OR d.lease_expires <= $1{own} ORDER BY d.id LIMIT 1{lock}"
        );
        let bind_own = |q: sqlx::query::Query<'static, sqlx::Any, sqlx::any::AnyArguments>| match &replica {
            Some(prefix) => {
                q.bind(i64::try_from(prefix.chars().count()).unwrap_or(0)).bind(prefix.clone()).bind(owner.to_owned())
            }
            None => q,
        };
        if self.backend == Backend::Sqlite {
            // Look before taking SQLite's write lock: an idle controller polls often and usually finds nothing.
            let mut conn = self.pool.acquire().await.map_err(unavailable)?;
            let found = bind_own(sqlx::query(AssertSqlSafe(sql.clone())).bind(ms(now)))
                .fetch_optional(&mut *conn)
                .await
                .map_err(unavailable)?;
            if found.is_none() {
                return Ok(None);
            }
        }
        let mut tx = self.begin().await?;
        let row = bind_own(sqlx::query(AssertSqlSafe(sql)).bind(ms(now)))
            .fetch_optional(&mut *tx)
            .await
            .map_err(unavailable)?;
        let Some(row) = row else {
            tx.commit().await.map_err(unavailable)?;
            return Ok(None);
        };
        let id: DeploymentId = get::<String>(&row, "id")?.parse().map_err(|e| corrupt("deployment id", e))?;
        let expires = deploy_core::add_duration(now, lease);
        let own_update = if replica.is_some() {
            " OR (substr(lease_owner, 1, CAST($5 AS INTEGER)) = $6 AND lease_owner <> $1)"
        } else {
            ""
        };
        let update = format!(
            "UPDATE deploy_deployments SET lease_owner = $1, lease_token = lease_token + 1, lease_expires = $2 \
             WHERE id = $3 AND terminal = 0 AND (lease_expires IS NULL OR lease_expires <= $4{own_update}) \
             RETURNING lease_token"
        );
        let mut query = sqlx::query(AssertSqlSafe(update))
            .bind(owner.to_owned())
            .bind(ms(expires))
            .bind(id.to_string())
            .bind(ms(now));
        if let Some(prefix) = &replica {
            query = query.bind(i64::try_from(prefix.chars().count()).unwrap_or(0)).bind(prefix.clone());
        }
        let updated = query.fetch_optional(&mut *tx).await.map_err(unavailable)?;
        let Some(updated) = updated else {
            tx.commit().await.map_err(unavailable)?;
            return Ok(None);
        };
        let token: i64 = get(&updated, "lease_token")?;
        let deployment = load_deployment(&mut tx, id).await?.ok_or_else(|| not_found("deployment", id))?;
        tx.commit().await.map_err(unavailable)?;
        let lease = Lease {
            deployment: id,
            owner: owner.to_owned(),
            token: u64::try_from(token).unwrap_or(0),
            expires_at: from_ms(ms(expires)),
        };
        Ok(Some(Claim { deployment, lease }))
    }

    async fn renew(&self, lease: &Lease, now: Timestamp, duration: Duration) -> Result<(Lease, Control), StoreError> {
        let mut tx = self.begin().await?;
        let row = load_header(&mut tx, Some(self.backend), lease.deployment)
            .await?
            .ok_or_else(|| not_found("deployment", lease.deployment))?;
        check_token(&row, lease)?;
        let status = row.header.status();
        if status.is_terminal() {
            return Err(StoreError::AlreadyFinished { deployment: lease.deployment, status });
        }
        let expires = deploy_core::add_duration(now, duration);
        sqlx::query("UPDATE deploy_deployments SET lease_expires = $1, lease_owner = $2 WHERE id = $3")
            .bind(ms(expires))
            .bind(&lease.owner)
            .bind(lease.deployment.to_string())
            .execute(&mut *tx)
            .await
            .map_err(unavailable)?;
        tx.commit().await.map_err(unavailable)?;
        let control =
            Control { cancel_requested: row.header.cancel_requested(), superseded_by: row.header.superseded_by() };
        Ok((Lease { expires_at: from_ms(ms(expires)), ..lease.clone() }, control))
    }

    async fn release(&self, lease: &Lease) -> Result<(), StoreError> {
        let mut tx = self.begin().await?;
        let row = load_header(&mut tx, Some(self.backend), lease.deployment)
            .await?
            .ok_or_else(|| not_found("deployment", lease.deployment))?;
        check_token(&row, lease)?;
        sqlx::query("UPDATE deploy_deployments SET lease_owner = NULL, lease_expires = NULL WHERE id = $1")
            .bind(lease.deployment.to_string())
            .execute(&mut *tx)
            .await
            .map_err(unavailable)?;
        tx.commit().await.map_err(unavailable)
    }

    async fn record(&self, lease: &Lease, update: ProgressUpdate) -> Result<Control, StoreError> {
        let mut tx = self.begin().await?;
        let row = load_header(&mut tx, Some(self.backend), lease.deployment)
            .await?
            .ok_or_else(|| not_found("deployment", lease.deployment))?;
        check_token(&row, lease)?;
        let control = apply_update(&mut tx, lease.deployment, row.header, update).await?;
        tx.commit().await.map_err(unavailable)?;
        self.reads.forget(lease.deployment);
        Ok(control)
    }

    async fn purge_idempotency_keys(&self, now: Timestamp) -> Result<u64, StoreError> {
        let done = sqlx::query("DELETE FROM deploy_idempotency_keys WHERE expires <= $1")
            .bind(ms(now))
            .execute(&self.pool)
            .await
            .map_err(unavailable)?;
        Ok(done.rows_affected())
    }
}

#[async_trait]
impl WebhookStore for SqlStore {
    async fn create_webhook(&self, subscription: WebhookSubscription) -> Result<WebhookSubscription, StoreError> {
        sqlx::query("INSERT INTO deploy_webhooks (id, doc, secret) VALUES ($1, $2, $3)")
            .bind(subscription.id.to_string())
            .bind(to_json(&subscription)?)
            .bind(&subscription.secret)
            .execute(&self.pool)
            .await
            .map_err(unavailable)?;
        Ok(subscription)
    }

    async fn list_webhooks(&self) -> Result<Vec<WebhookSubscription>, StoreError> {
        let mut conn = self.pool.acquire().await.map_err(unavailable)?;
        load_webhooks(&mut conn).await
    }

    async fn delete_webhook(&self, id: Uuid) -> Result<(), StoreError> {
        let mut tx = self.begin().await?;
        let done = sqlx::query("DELETE FROM deploy_webhooks WHERE id = $1")
            .bind(id.to_string())
            .execute(&mut *tx)
            .await
            .map_err(unavailable)?;
        if done.rows_affected() == 0 {
            return Err(not_found("webhook", id));
        }
        sqlx::query(
            "DELETE FROM deploy_delivery_docs WHERE id IN \
             (SELECT id FROM deploy_deliveries WHERE subscription_id = $1)",
        )
        .bind(id.to_string())
        .execute(&mut *tx)
        .await
        .map_err(unavailable)?;
        sqlx::query("DELETE FROM deploy_deliveries WHERE subscription_id = $1")
            .bind(id.to_string())
            .execute(&mut *tx)
            .await
            .map_err(unavailable)?;
        tx.commit().await.map_err(unavailable)
    }

    async fn claim_deliveries(
        &self,
        now: Timestamp,
        limit: usize,
        per_subscription: usize,
        lease: Duration,
    ) -> Result<Vec<(WebhookDelivery, WebhookSubscription)>, StoreError> {
        // Most polls find nothing due: look first without a transaction, so an idle dispatcher never takes SQLite's
        // write lock from the acceptances. (A claim moves a delivery's due time to the end of its lease, so what is
        // due is never claimed.)
        let due = sqlx::query("SELECT 1 AS one FROM deploy_deliveries WHERE pending = 1 AND due <= $1 LIMIT 1")
            .bind(ms(now))
            .fetch_optional(&self.pool)
            .await
            .map_err(unavailable)?;
        if due.is_none() || limit == 0 {
            return Ok(Vec::new());
        }
        let mut tx = self.begin().await?;
        let claimed = self.claim_in(&mut tx, now, limit, per_subscription, lease).await?;
        tx.commit().await.map_err(unavailable)?;
        Ok(claimed)
    }

    async fn complete_deliveries(
        &self,
        outcomes: &[(String, DeliveryOutcome)],
        now: Timestamp,
    ) -> Result<(), StoreError> {
        if outcomes.is_empty() {
            return Ok(());
        }
        let mut tx = self.begin().await?;
        self.record_in(&mut tx, outcomes, now).await?;
        tx.commit().await.map_err(unavailable)
    }

    async fn complete_and_claim(
        &self,
        outcomes: &[(String, DeliveryOutcome)],
        now: Timestamp,
        limit: usize,
        per_subscription: usize,
        lease: Duration,
    ) -> Result<Vec<(WebhookDelivery, WebhookSubscription)>, StoreError> {
        if outcomes.is_empty() {
            return self.claim_deliveries(now, limit, per_subscription, lease).await;
        }
        // One transaction, one sync: the outcomes, then the claim, which sees the slots they freed.
        let mut tx = self.begin().await?;
        self.record_in(&mut tx, outcomes, now).await?;
        let claimed =
            if limit == 0 { Vec::new() } else { self.claim_in(&mut tx, now, limit, per_subscription, lease).await? };
        tx.commit().await.map_err(unavailable)?;
        Ok(claimed)
    }

    async fn redeliver(&self, subscription: Uuid, id: &str, now: Timestamp) -> Result<WebhookDelivery, StoreError> {
        let mut tx = self.begin().await?;
        let sql = format!(
            "SELECT {DELIVERY_COLUMNS} FROM {DELIVERIES} WHERE d.id = $1 AND d.subscription_id = $2{}",
            match self.backend {
                Backend::Sqlite => "",
                Backend::Postgres => " FOR UPDATE OF d",
            }
        );
        let row = sqlx::query(AssertSqlSafe(sql))
            .bind(id)
            .bind(subscription.to_string())
            .fetch_optional(&mut *tx)
            .await
            .map_err(unavailable)?;
        let row = row.ok_or_else(|| not_found("delivery", id))?;
        let mut d = read_delivery(&row)?;
        d.reset_for_redelivery(now);
        sqlx::query(
            "UPDATE deploy_deliveries SET status = 'pending', attempts = 0, next_at = $1, delivered_at = NULL, \
             pending = 1, due = $2, hidden_until = NULL WHERE id = $3",
        )
        .bind(rfc3339(now)?)
        .bind(ms(now))
        .bind(&d.id)
        .execute(&mut *tx)
        .await
        .map_err(unavailable)?;
        tx.commit().await.map_err(unavailable)?;
        Ok(d)
    }

    async fn list_deliveries(
        &self,
        subscription: Uuid,
        page: &PageRequest,
    ) -> Result<Page<WebhookDelivery>, StoreError> {
        let limit = page.clamped_limit();
        let mut conn = self.pool.acquire().await.map_err(unavailable)?;
        let exists = sqlx::query("SELECT 1 AS one FROM deploy_webhooks WHERE id = $1")
            .bind(subscription.to_string())
            .fetch_optional(&mut *conn)
            .await
            .map_err(unavailable)?;
        if exists.is_none() {
            return Err(not_found("webhook", subscription));
        }
        let rows = sqlx::query(AssertSqlSafe(format!(
            "SELECT {DELIVERY_COLUMNS} FROM {DELIVERIES} WHERE d.subscription_id = $1 AND ($2 = '' OR d.id < $2) \
             ORDER BY d.id DESC LIMIT $3",
        )))
        .bind(subscription.to_string())
        .bind(page.cursor.clone().unwrap_or_default())
        .bind(i64::try_from(limit + 1).unwrap_or(i64::MAX))
        .fetch_all(&mut *conn)
        .await
        .map_err(unavailable)?;
        let items: Vec<WebhookDelivery> = rows.iter().map(read_delivery).collect::<Result<_, _>>()?;
        Ok(Page::from_overfetch(items, limit, |d| d.id.clone()))
    }
}

#[async_trait]
impl KeyStore for SqlStore {
    async fn create_api_key(&self, record: ApiKeyRecord) -> Result<(), StoreError> {
        let mut doc = serde_json::to_value(&record).map_err(|e| corrupt("encoding", e))?;
        if let Some(map) = doc.as_object_mut() {
            map.insert("key_hash".into(), record.key_hash.clone().into());
        }
        sqlx::query("INSERT INTO deploy_api_keys (id, key_hash, doc) VALUES ($1, $2, $3)")
            .bind(record.id.to_string())
            .bind(&record.key_hash)
            .bind(doc.to_string())
            .execute(&self.pool)
            .await
            .map_err(|e| {
                if is_unique_violation(&e) {
                    let mut errs = ValidationErrors::default();
                    errs.push("key", "this key is already registered");
                    StoreError::Invalid(errs)
                } else {
                    unavailable(e)
                }
            })?;
        Ok(())
    }

    async fn api_key_by_hash(&self, key_hash: &str) -> Result<Option<ApiKeyRecord>, StoreError> {
        let row = sqlx::query("SELECT doc FROM deploy_api_keys WHERE key_hash = $1")
            .bind(key_hash)
            .fetch_optional(&self.pool)
            .await
            .map_err(unavailable)?;
        row.map(|r| decode_api_key(&get::<String>(&r, "doc")?)).transpose()
    }

    async fn list_api_keys(&self) -> Result<Vec<ApiKeyRecord>, StoreError> {
        let rows = sqlx::query("SELECT doc FROM deploy_api_keys ORDER BY id")
            .fetch_all(&self.pool)
            .await
            .map_err(unavailable)?;
        rows.iter().map(|r| decode_api_key(&get::<String>(r, "doc")?)).collect()
    }

    async fn delete_api_key(&self, id: Uuid) -> Result<(), StoreError> {
        let done = sqlx::query("DELETE FROM deploy_api_keys WHERE id = $1")
            .bind(id.to_string())
            .execute(&self.pool)
            .await
            .map_err(unavailable)?;
        if done.rows_affected() == 0 { Err(not_found("api key", id)) } else { Ok(()) }
    }
}

#[async_trait]
impl AgentStore for SqlStore {
    async fn agent_slot(
        &self,
        environment: &EnvironmentName,
        target: &deploy_core::TargetId,
    ) -> Result<Option<deploy_core::AgentSlot>, StoreError> {
        let row = sqlx::query("SELECT doc FROM deploy_agents WHERE environment = $1 AND target = $2")
            .bind(environment.to_string())
            .bind(target.to_string())
            .fetch_optional(&self.pool)
            .await
            .map_err(unavailable)?;
        row.map(|r| from_json("agent", &get::<String>(&r, "doc")?)).transpose()
    }

    async fn assign_agent(
        &self,
        environment: &EnvironmentName,
        target: &deploy_core::TargetId,
        desired: deploy_core::DesiredState,
        deployment: DeploymentId,
        fencing_token: u64,
        now: Timestamp,
    ) -> Result<deploy_core::AgentSlot, StoreError> {
        let change = crate::group::AgentChange {
            environment: environment.clone(),
            target: target.clone(),
            change: crate::group::AgentUpdate::Assign(desired, deployment, fencing_token, now),
        };
        self.agent_grouped(change).await
    }

    async fn record_agent_report(
        &self,
        environment: &EnvironmentName,
        target: &deploy_core::TargetId,
        report: deploy_core::AgentReport,
        now: Timestamp,
    ) -> Result<deploy_core::AgentSlot, StoreError> {
        let change = crate::group::AgentChange {
            environment: environment.clone(),
            target: target.clone(),
            change: crate::group::AgentUpdate::Report(report, now),
        };
        self.agent_grouped(change).await
    }
}

#[async_trait]
impl AuditLog for SqlStore {
    async fn append_audit(&self, entry: AuditEntry) -> Result<(), StoreError> {
        self.grouped(crate::group::Write::Audit(Box::new(entry))).await.map(drop)
    }

    async fn list_audit(&self, filter: &AuditFilter, page: &PageRequest) -> Result<Page<AuditEntry>, StoreError> {
        let limit = page.clamped_limit();
        if let Some(c) = &page.cursor {
            Uuid::parse_str(c).map_err(|_| bad_cursor())?;
        }
        let rows = sqlx::query(
            "SELECT doc FROM deploy_audit WHERE ($1 = '' OR id < $1) AND ($2 = '' OR actor = $2) \
             AND ($3 = '' OR environment = $3) ORDER BY id DESC LIMIT $4",
        )
        .bind(page.cursor.clone().unwrap_or_default())
        .bind(filter.actor.clone().unwrap_or_default())
        .bind(filter.environment.clone().unwrap_or_default())
        .bind(i64::try_from(limit + 1).unwrap_or(i64::MAX))
        .fetch_all(&self.pool)
        .await
        .map_err(unavailable)?;
        let items: Vec<AuditEntry> =
            rows.iter().map(|r| decode_audit(&get::<String>(r, "doc")?)).collect::<Result<_, _>>()?;
        Ok(Page::from_overfetch(items, limit, |e| e.id.to_string()))
    }
}

/// API key documents carry the digest beside the serialized record (which skips it).
fn decode_api_key(doc: &str) -> Result<ApiKeyRecord, StoreError> {
    let value: serde_json::Value = from_json("api key", doc)?;
    let key_hash = value.get("key_hash").and_then(serde_json::Value::as_str).unwrap_or_default().to_owned();
    let mut record: ApiKeyRecord = serde_json::from_value(value).map_err(|e| corrupt("api key", e))?;
    record.key_hash = key_hash;
    Ok(record)
}

/// Audit documents carry the id beside the serialized entry (which skips it).
fn decode_audit(doc: &str) -> Result<AuditEntry, StoreError> {
    let value: serde_json::Value = from_json("audit entry", doc)?;
    let id = value.get("id").and_then(serde_json::Value::as_str).and_then(|s| Uuid::parse_str(s).ok());
    let mut entry: AuditEntry = serde_json::from_value(value).map_err(|e| corrupt("audit entry", e))?;
    entry.id = id.ok_or_else(|| corrupt("audit entry", "missing id"))?;
    Ok(entry)
}

/// The `WHERE` clause of deployment listings: `$1` a cursor (list before this id), `$2`–`$4` the filter; `''` means
/// "any". Bind them with [`bind_filter`].
const DEPLOYMENT_FILTER: &str = "($1 = '' OR id < $1) AND ($2 = '' OR environment = $2) AND ($3 = '' OR service = $3) \
                                 AND ($4 = '' OR status = $4)";

fn bind_filter<'q>(
    query: sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments>,
    before: Option<DeploymentId>,
    filter: &DeploymentFilter,
) -> sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments> {
    query
        .bind(before.map(|b| b.to_string()).unwrap_or_default())
        .bind(filter.environment.as_ref().map(|e| e.to_string()).unwrap_or_default())
        .bind(filter.service.as_ref().map(|s| s.to_string()).unwrap_or_default())
        .bind(filter.status.map(|s| s.as_str().to_owned()).unwrap_or_default())
}

fn check_token(row: &HeaderRow, lease: &Lease) -> Result<(), StoreError> {
    if u64::try_from(row.lease_token).ok() != Some(lease.token) {
        return Err(StoreError::StaleToken { deployment: lease.deployment, token: lease.token });
    }
    Ok(())
}
