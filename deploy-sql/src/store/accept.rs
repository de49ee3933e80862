//! Acceptance: the optimistic one-statement path for the common case and the locking path, both applying the policy decided in `deploy_core::Acceptance`.

use super::*;

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
    pub(super) async fn accept_optimistic(
        &self,
        acceptance: &Acceptance,
        use_snapshot: bool,
    ) -> Result<Optimistic, StoreError> {
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
        let Acceptance { draft, idempotency, expected_revision, now, quota } = acceptance;
        let env_name = draft.spec.environment().clone();
        let (scope, key) =
            idempotency.as_ref().map_or((String::new(), String::new()), |r| (r.scope.clone(), r.key.to_string()));
        // A snapshot is only a guess at the revision; a caller's expected revision is checked against a fresh read.
        let cached =
            if use_snapshot && expected_revision.is_none() { self.snapshots().get(&env_name).cloned() } else { None };
        let from_snapshot = cached.is_some();
        let (env, has_webhooks) = match cached {
            Some(snapshot) => snapshot,
            None => {
                let sql = format!(
                    "SELECT e.revision, e.concurrency, e.require_if_match, e.protection, e.schedule, \
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
                    protection: protection_of(get::<Option<String>>(&row, "protection")?)?,
                    schedule: schedule_of(get::<Option<String>>(&row, "schedule")?)?,
                    // Acceptance plans targets only; the scope is checked before and at resolution.
                    secret_scope: deploy_core::SecretScope::default(),
                };
                let has_webhooks = get::<i64>(&row, "hooks")? > 0;
                let env = std::sync::Arc::new(env);
                self.snapshots().insert(env_name.clone(), (std::sync::Arc::clone(&env), has_webhooks));
                (env, has_webhooks)
            }
        };
        let current = env.revision;
        Acceptance::check_revision(*expected_revision, &env_name, env.require_if_match, current)?;
        if env.concurrency != ConcurrencyPolicy::Queue || has_webhooks || env.protection.is_some() {
            return Ok(Optimistic::Locking);
        }
        let deployment = Deployment::plan(draft.clone(), &env, *now).map_err(StoreError::Invalid)?;
        if deployment.targets().len() > CHUNK {
            return Ok(Optimistic::Locking);
        }
        if let Some(quota) = quota
            && let Err(over) = check_quota(conn, quota, deployment.stored_bytes()).await
        {
            // From a snapshot, a replay was not looked for yet, and a replay is never refused: read afresh.
            return if from_snapshot && idempotency.is_some() { Ok(Optimistic::Raced) } else { Err(over) };
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

    pub(super) async fn accept_once(&self, acceptance: Acceptance) -> Result<Accepted, StoreError> {
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
        let Acceptance { draft, idempotency, expected_revision, now, quota } = acceptance;
        let env_name = draft.spec.environment().clone();
        // Bumping the revision first takes the environment's row lock, which serializes acceptances per environment
        // across replicas; every early return below drops the transaction, which undoes the bump.
        let sql = format!(
            "UPDATE deploy_environments SET revision = revision + 1 WHERE name = $1 \
             RETURNING revision, concurrency, require_if_match, protection, schedule, (SELECT COUNT(*) FROM deploy_webhooks) AS hooks, \
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
        let protection = protection_of(get::<Option<String>>(&bumped, "protection")?)?;
        let schedule = schedule_of(get::<Option<String>>(&bumped, "schedule")?)?;
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
            protection,
            schedule,
            // Acceptance plans targets only; the scope is checked before and at resolution.
            secret_scope: deploy_core::SecretScope::default(),
        };
        let deployment = Deployment::plan(draft, &env, now).map_err(StoreError::Invalid)?;
        if let Some(quota) = &quota {
            check_quota(tx, quota, deployment.stored_bytes()).await?;
        }
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

/// Applies `quota` to a new deployment of `adding` bytes, counting on `conn` (inside the acceptance's transaction on
/// the locking path): the submitter's open deployments, and the bytes of those accepted since the window's start (the
/// running totals migration 11's trigger keeps per step of time).
async fn check_quota(conn: &mut AnyConnection, quota: &deploy_core::QuotaCheck, adding: u64) -> Result<(), StoreError> {
    let row = sqlx::query(
        "SELECT (SELECT COUNT(*) FROM deploy_deployments WHERE submitter = $1 AND terminal = 0) AS open, \
         (SELECT CAST(COALESCE(SUM(bytes), 0) AS BIGINT) FROM deploy_submitter_bytes \
          WHERE submitter = $1 AND bucket >= $2) AS bytes",
    )
    .bind(&quota.submitter)
    .bind(quota.since.quota_bucket())
    .fetch_one(&mut *conn)
    .await
    .map_err(unavailable)?;
    let count = |column: &str| get::<i64>(&row, column).map(|n| u64::try_from(n).unwrap_or(0));
    quota.check(count("open")?, count("bytes")?, adding)
}
