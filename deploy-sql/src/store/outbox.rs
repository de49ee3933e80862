//! Events and the webhook outbox: numbering and appending events, enqueueing deliveries in the same transaction, recording attempts, and `WebhookStore`.

use super::*;

pub(super) async fn next_seq(conn: &mut AnyConnection, id: DeploymentId) -> Result<u64, StoreError> {
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
pub(super) async fn append_events(
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
pub(super) async fn enqueue_deliveries(
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
pub(super) const ROWS_PER_STATEMENT: usize = 200;

/// The columns a delivery is read from ([`DELIVERIES`]): the document written when it was queued (what never
/// changes: its id, subscription, event and payload) and its state. Since schema version 7 the document is a row of
/// its own, so the rows that claims and outcomes rewrite are small.
pub(super) const DELIVERY_COLUMNS: &str = "dd.doc, d.status, d.attempts, d.last_status_code, d.next_at, d.delivered_at";

/// Deliveries (`d`) with their documents (`dd`).
pub(super) const DELIVERIES: &str = "deploy_deliveries d JOIN deploy_delivery_docs dd ON dd.id = d.id";

/// The state columns a pending delivery can have set, as [`Backend::due_batch_sql`] gives them: attempts, the last
/// status code, the next attempt.
#[derive(serde::Deserialize)]
pub(super) struct DueState(pub(super) u32, pub(super) Option<u16>, pub(super) Option<String>);

/// A delivery from a row of [`DELIVERY_COLUMNS`].
pub(super) fn read_delivery(row: &sqlx::any::AnyRow) -> Result<WebhookDelivery, StoreError> {
    let mut d: WebhookDelivery = from_json("delivery", &get::<String>(row, "doc")?)?;
    let status = get::<String>(row, "status")?;
    d.status = DeliveryStatus::ALL
        .into_iter()
        .find(|s| s.as_str() == status)
        .ok_or_else(|| corrupt("delivery status", &status))?;
    d.attempts = u32::try_from(get::<i64>(row, "attempts")?).map_err(|e| corrupt("attempts", e))?;
    d.last_status_code = get::<Option<i64>>(row, "last_status_code")?
        .map(u16::try_from)
        .transpose()
        .map_err(|e| corrupt("last_status_code", e))?;
    d.next_attempt_at = get::<Option<String>>(row, "next_at")?.as_deref().map(parse_rfc3339).transpose()?;
    d.delivered_at = get::<Option<String>>(row, "delivered_at")?.as_deref().map(parse_rfc3339).transpose()?;
    Ok(d)
}

pub(super) fn rfc3339(t: Timestamp) -> Result<String, StoreError> {
    t.format(&time::format_description::well_known::Rfc3339).map_err(|e| corrupt("timestamp", e))
}

pub(super) fn parse_rfc3339(s: &str) -> Result<Timestamp, StoreError> {
    Timestamp::parse(s, &time::format_description::well_known::Rfc3339).map_err(|e| corrupt("timestamp", e))
}

/// Fails every pending delivery of a disabled subscription, in one statement.
pub(super) async fn fail_pending_deliveries(conn: &mut AnyConnection, subscription: Uuid) -> Result<(), StoreError> {
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

/// Outcomes to record, sorted by the statement that writes them. What each does is
/// [`DeliveryOutcome::transition`]'s decision; these statements only write it.
#[derive(Default)]
pub(super) struct Outcomes<'a> {
    /// Deliveries that stay pending, each with its code and next attempt.
    pub(super) retry: Vec<(&'a str, Option<u16>, Timestamp)>,
    /// Deliveries that end, grouped by what they end with: each group takes one statement.
    pub(super) finished: std::collections::BTreeMap<Finish, Vec<&'a str>>,
}

/// How a delivery ends: its status, the answer's code, whether it was delivered now, and whether its subscription
/// ends with it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(super) struct Finish {
    pub(super) status: &'static str,
    pub(super) code: Option<u16>,
    pub(super) delivered: bool,
    pub(super) disables_subscription: bool,
}

impl<'a> Outcomes<'a> {
    pub(super) fn sort(outcomes: &'a [(String, DeliveryOutcome)]) -> Self {
        let mut sorted = Self::default();
        for (id, outcome) in outcomes {
            let t = outcome.transition();
            match (t.status, t.next_attempt_at) {
                (DeliveryStatus::Pending, Some(next)) => sorted.retry.push((id, t.last_status_code, next)),
                (status, _) => {
                    let finish = Finish {
                        status: status.as_str(),
                        code: t.last_status_code,
                        delivered: t.delivered,
                        disables_subscription: t.disables_subscription,
                    };
                    sorted.finished.entry(finish).or_default().push(id);
                }
            }
        }
        sorted
    }
}

/// Records outcomes of pending deliveries (the transitions of [`DeliveryOutcome::transition`], as
/// [`WebhookDelivery::record_attempt`] applies them), a statement per kind of outcome and chunk; a delivery no longer
/// pending is left alone. Returns the subscriptions whose receivers asked for them to end (410).
///
/// Rows are found by id and checked by `status` (always in step with `pending`), never by `pending`: for
/// `pending = 1` SQLite's planner would take an index partial on it (the `due` index) and scan every pending delivery.
pub(super) async fn record_outcomes(
    conn: &mut AnyConnection,
    backend: Backend,
    outcomes: &[(String, DeliveryOutcome)],
    now: Timestamp,
) -> Result<Vec<Uuid>, StoreError> {
    let sorted = Outcomes::sort(outcomes);
    let now_text = rfc3339(now)?;
    let mut gone = Vec::new();
    for (finish, ids) in &sorted.finished {
        let returning = if finish.disables_subscription { " RETURNING subscription_id" } else { "" };
        let sql = format!(
            "UPDATE deploy_deliveries SET status = $1, attempts = attempts + 1, last_status_code = $2, \
             delivered_at = COALESCE($3, delivered_at), next_at = NULL, pending = 0, due = NULL, hidden_until = NULL \
             WHERE status = 'pending' AND id IN {}{returning}",
            backend.json_strings(4)
        );
        let rows = sqlx::query(AssertSqlSafe(sql))
            .bind(finish.status)
            .bind(finish.code.map(i64::from))
            .bind(finish.delivered.then(|| now_text.clone()))
            .bind(to_json(ids)?)
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
    Ok(gone)
}

pub(super) async fn load_webhooks(conn: &mut AnyConnection) -> Result<Vec<WebhookSubscription>, StoreError> {
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
