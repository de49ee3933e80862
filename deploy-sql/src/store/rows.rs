//! Rows: multi-row inserts and updates of targets, loading and saving deployment headers and environments, applying an update under a lease, and the listing filter.

use super::*;

/// `(CAST($1 AS BIGINT), $2, $3), (...)`: `rows` tuples of `casts.len()` parameters numbered from `first`; a column
/// whose cast is not empty is cast, so PostgreSQL knows its type inside `VALUES`.
pub(super) fn tuples(rows: usize, casts: &[&str], first: usize) -> String {
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

pub(super) fn int(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

pub(super) async fn insert_targets_from(
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
pub(super) async fn insert_new_deployment(
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
            return set_not_before(conn, id, deployment.wake_at()).await;
        }
    }
    if deployment.targets().len() > CHUNK {
        insert_targets_from(conn, id, deployment.targets(), CHUNK).await?;
    }
    set_not_before(conn, id, deployment.wake_at()).await
}

/// Records until when a new deployment may not be claimed (one waiting for approval), in the caller's transaction.
async fn set_not_before(
    conn: &mut AnyConnection,
    id: DeploymentId,
    wake_at: Option<Timestamp>,
) -> Result<(), StoreError> {
    let Some(at) = wake_at else { return Ok(()) };
    sqlx::query("UPDATE deploy_deployments SET not_before = $1 WHERE id = $2")
        .bind(ms(at))
        .bind(id.to_string())
        .execute(&mut *conn)
        .await
        .map_err(unavailable)?;
    Ok(())
}

/// `($1, CAST($n AS BIGINT), $n+1, $n+2), ...`: target rows of a new deployment whose id is parameter 1.
pub(super) fn target_tuples(rows: usize, first: usize) -> String {
    let mut out = String::new();
    for r in 0..rows {
        let n = first + r * 3;
        out.push_str(&format!("{}($1, CAST(${n} AS BIGINT), ${}, ${})", if r == 0 { "" } else { ", " }, n + 1, n + 2));
    }
    out
}

/// Rewrites target rows, checking each entry names the target stored at its position.
pub(super) async fn update_targets(
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
pub(super) async fn observe_targets(
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
pub(super) struct HeaderRow {
    pub(super) header: Deployment,
    pub(super) lease_owner: Option<String>,
    pub(super) lease_token: i64,
    pub(super) lease_expires: Option<i64>,
}

impl HeaderRow {
    pub(super) fn lease_live(&self, now: Timestamp) -> bool {
        self.lease_owner.is_some() && self.lease_expires.is_some_and(|e| e > ms(now))
    }
}

/// A deployment's header and lease; with `lock`, the row stays locked until the transaction ends (PostgreSQL).
pub(super) async fn load_header(
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

pub(super) async fn load_targets(
    conn: &mut AnyConnection,
    id: DeploymentId,
) -> Result<Vec<TargetProgress>, StoreError> {
    let rows = sqlx::query("SELECT doc FROM deploy_deployment_targets WHERE deployment_id = $1 ORDER BY idx")
        .bind(id.to_string())
        .fetch_all(&mut *conn)
        .await
        .map_err(unavailable)?;
    rows.iter().map(|r| get::<String>(r, "doc").and_then(|d| from_json("target", &d))).collect()
}

/// A whole deployment in one query: its header row and its target rows (a header without targets still comes back).
pub(super) async fn load_deployment(
    conn: &mut AnyConnection,
    id: DeploymentId,
) -> Result<Option<Deployment>, StoreError> {
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
pub(super) async fn load_environment(
    conn: &mut AnyConnection,
    lock: Option<Backend>,
    name: &EnvironmentName,
) -> Result<Option<Environment>, StoreError> {
    let sql = format!(
        "SELECT revision, concurrency, require_if_match, protection, schedule, secret_scope FROM deploy_environments \
         WHERE name = $1{}",
        lock.map_or("", Backend::for_update)
    );
    let row =
        sqlx::query(AssertSqlSafe(sql)).bind(name.as_str()).fetch_optional(&mut *conn).await.map_err(unavailable)?;
    let Some(row) = row else { return Ok(None) };
    let revision: i64 = get(&row, "revision")?;
    let concurrency: String = get(&row, "concurrency")?;
    let require: i64 = get(&row, "require_if_match")?;
    let protection = protection_of(get::<Option<String>>(&row, "protection")?)?;
    let schedule = schedule_of(get::<Option<String>>(&row, "schedule")?)?;
    let secret_scope = get::<Option<String>>(&row, "secret_scope")?
        .map(|json| from_json("environment secret scope", &json))
        .transpose()?
        .unwrap_or_default();
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
        protection,
        schedule,
        secret_scope,
    }))
}

/// An environment's schedule from its stored JSON (`NULL`: none).
pub(super) fn schedule_of(stored: Option<String>) -> Result<Option<deploy_core::Schedule>, StoreError> {
    stored.map(|json| from_json("environment schedule", &json)).transpose()
}

/// An environment's protection rule from its stored JSON (`NULL`: none).
pub(super) fn protection_of(stored: Option<String>) -> Result<Option<deploy_core::Protection>, StoreError> {
    stored.map(|json| from_json("environment protection", &json)).transpose()
}

pub(super) fn parse_policy(s: &str) -> Result<ConcurrencyPolicy, StoreError> {
    from_json("concurrency", &format!("\"{s}\""))
}

/// One environment target as stored: its definition and its desired and actual state, each JSON text.
#[derive(serde::Deserialize)]
pub(super) struct StoredTarget {
    pub(super) definition: String,
    pub(super) desired: Option<String>,
    pub(super) actual: Option<String>,
}

impl StoredTarget {
    pub(super) fn decode(self) -> Result<EnvironmentTarget, StoreError> {
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

pub(super) async fn load_env_targets(
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
pub(super) async fn load_open(
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

pub(super) fn policy_name(p: ConcurrencyPolicy) -> &'static str {
    match p {
        ConcurrencyPolicy::Queue => "queue",
        ConcurrencyPolicy::Reject => "reject",
        ConcurrencyPolicy::Supersede => "supersede",
    }
}

pub(super) async fn write_environment_targets(conn: &mut AnyConnection, env: &Environment) -> Result<(), StoreError> {
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

/// Applies an update to a stored deployment: header checks, target rows, events, observations, outbox.
pub(super) async fn apply_update(
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
        "UPDATE deploy_deployments SET header = $1, status = $2, terminal = $3, not_before = $4{lease_clause} \
         WHERE id = $5"
    )))
    .bind(to_json(&header)?)
    .bind(header.status().as_str())
    .bind(i64::from(terminal))
    .bind(header.wake_at().map(ms))
    .bind(id.to_string())
    .execute(&mut *conn)
    .await
    .map_err(unavailable)?;
    observe_targets(conn, &environment, observations).await?;
    append_events(conn, id, &environment, events, None).await?;
    Ok(Control::of(&header))
}

/// Records a cancel or supersede request on a stored deployment, inside the caller's transaction: `request` is
/// [`Deployment::request_cancel`] or [`Deployment::mark_superseded_by`], applied to the whole record; when it says the
/// deployment stops at once, that update is written too, else only the flag.
pub(super) async fn request_stop(
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

pub(super) async fn save_header(conn: &mut AnyConnection, header: &Deployment) -> Result<(), StoreError> {
    sqlx::query("UPDATE deploy_deployments SET header = $1 WHERE id = $2")
        .bind(to_json(header)?)
        .bind(header.id().to_string())
        .execute(&mut *conn)
        .await
        .map_err(unavailable)?;
    Ok(())
}

/// The `WHERE` clause of deployment listings: `$1` a cursor (list before this id), `$2`–`$4` the filter; `''` means
/// "any". Bind them with [`bind_filter`].
pub(super) const DEPLOYMENT_FILTER: &str = "($1 = '' OR id < $1) AND ($2 = '' OR environment = $2) AND ($3 = '' OR service = $3) \
                                 AND ($4 = '' OR status = $4)";

pub(super) fn bind_filter<'q>(
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

pub(super) fn check_token(row: &HeaderRow, lease: &Lease) -> Result<(), StoreError> {
    if u64::try_from(row.lease_token).ok() != Some(lease.token) {
        return Err(StoreError::StaleToken { deployment: lease.deployment, token: lease.token });
    }
    Ok(())
}
