//! The engine's `Store`: environments, acceptance, reads and listings, cancel, claims, leases and records.

use super::*;

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
            "INSERT INTO deploy_environments (revision, concurrency, require_if_match, protection, schedule, \
             secret_scope, name) VALUES ($1, $2, $3, $4, $5, $6, $7)"
        } else {
            "UPDATE deploy_environments SET revision = $1, concurrency = $2, require_if_match = $3, protection = $4, \
             schedule = $5, secret_scope = $6 WHERE name = $7"
        };
        let protection = env.protection.as_ref().map(to_json).transpose()?;
        let schedule = env.schedule.as_ref().map(to_json).transpose()?;
        let secret_scope = Some(&env.secret_scope).filter(|s| !s.is_empty()).map(to_json).transpose()?;
        sqlx::query(sql)
            .bind(revision)
            .bind(policy_name(env.concurrency))
            .bind(i64::from(env.require_if_match))
            .bind(protection)
            .bind(schedule)
            .bind(secret_scope)
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

    async fn global_freeze(&self) -> Result<Option<deploy_core::Freeze>, StoreError> {
        let mut conn = self.pool.acquire().await.map_err(unavailable)?;
        let row = sqlx::query("SELECT doc FROM deploy_settings WHERE name = 'freeze'")
            .fetch_optional(&mut *conn)
            .await
            .map_err(unavailable)?;
        row.map(|r| from_json("global freeze", &get::<String>(&r, "doc")?)).transpose()
    }

    async fn set_global_freeze(&self, freeze: Option<deploy_core::Freeze>) -> Result<(), StoreError> {
        let mut tx = self.begin().await?;
        sqlx::query("DELETE FROM deploy_settings WHERE name = 'freeze'")
            .execute(&mut *tx)
            .await
            .map_err(unavailable)?;
        match freeze {
            Some(f) => {
                sqlx::query("INSERT INTO deploy_settings (name, doc) VALUES ('freeze', $1)")
                    .bind(to_json(&f)?)
                    .execute(&mut *tx)
                    .await
                    .map_err(unavailable)?;
            }
            None => {
                // Held deployments become claimable at once; their holders read the rules again (the header's
                // `held_until` is rewritten by that look).
                sqlx::query(
                    "UPDATE deploy_deployments SET not_before = NULL \
                     WHERE terminal = 0 AND status = 'queued' AND not_before IS NOT NULL",
                )
                .execute(&mut *tx)
                .await
                .map_err(unavailable)?;
            }
        }
        tx.commit().await.map_err(unavailable)
    }

    async fn request(
        &self,
        id: DeploymentId,
        request: &deploy_core::OperatorRequest,
        now: Timestamp,
    ) -> Result<Deployment, StoreError> {
        let mut tx = self.begin().await?;
        let row = load_header(&mut tx, Some(self.backend), id).await?.ok_or_else(|| not_found("deployment", id))?;
        let held = row.lease_live(now);
        let mut full = row.header.with_targets(load_targets(&mut tx, id).await?);
        let update = full.request(request, now, held).map_err(|e| StoreError::refused(id, e))?;
        let _ = apply_update(&mut tx, id, full.header(), update).await?;
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
        // The head is the deployment someone holds or that has started, if any (one at a time per environment);
        // else the oldest other one, passing those still awaiting approval that no timer of theirs makes due: an
        // unapproved deployment never holds approved ones behind it hostage.
        let sql = format!(
            "SELECT d.id FROM deploy_environments e JOIN deploy_deployments d ON d.id = \
               (SELECT o.id FROM deploy_deployments o WHERE o.environment = e.name AND o.terminal = 0 \
                AND (o.status <> 'awaiting_approval' OR o.not_before IS NULL OR o.not_before <= $1 \
                     OR o.lease_expires > $1) \
                ORDER BY CASE WHEN o.status IN ('in_progress', 'paused', 'rolling_back') OR o.lease_expires > $1 \
                THEN 0 ELSE 1 END, o.revision LIMIT 1) \
             WHERE (d.lease_expires IS NULL OR d.lease_expires <= $1{own}) \
             AND (d.not_before IS NULL OR d.not_before <= $1) ORDER BY d.id LIMIT 1{lock}"
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
        let control = Control::of(&row.header);
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

    /// Rewrites a 16 KiB settings row (`readyz`): a store whose disk is full, or a read-only replica, cannot.
    async fn check_writable(&self) -> Result<(), StoreError> {
        let doc = format!("{{\"probe\": \"{}\"}}", "x".repeat(READYZ_PROBE_BYTES));
        sqlx::query(
            "INSERT INTO deploy_settings (name, doc) VALUES ('readyz', $1) \
             ON CONFLICT (name) DO UPDATE SET doc = excluded.doc",
        )
        .bind(doc)
        .execute(&self.pool)
        .await
        .map_err(unavailable)?;
        Ok(())
    }
}

/// The size of the record readiness writes: a few pages, so a disk with no room for real writes fails it too.
const READYZ_PROBE_BYTES: usize = 16 * 1024;
