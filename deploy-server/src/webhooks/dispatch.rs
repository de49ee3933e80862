//! The webhook dispatcher: claims due deliveries from the store's outbox, signs and sends them, and records each
//! outcome, so every delivery is attempted until it is delivered, given up or its subscription is gone.
//!
//! - **At least once, one id**: a delivery is written to the outbox with the change it reports; its id is the
//!   `webhook-id` of every attempt. A claim hides it from other dispatchers (other replicas) for one and a half
//!   request timeouts plus a margin (it may wait in the dispatcher's queue before its attempt); if this process dies
//!   the claim lapses and the delivery is attempted again.
//! - **Isolation**: attempts run concurrently (up to [`DispatcherConfig::concurrency`]), and the store never hands out
//!   more than [`DispatcherConfig::per_subscription`] deliveries of one subscription at once, so a slow or dead
//!   receiver holds a few slots at most and never delays the others.
//! - **Outcomes**: 2xx is delivered; 410 disables the subscription; anything else, a timeout or a connection error is
//!   retried on the [`RetrySchedule`] (jittered; a longer `Retry-After` wins), then given up. Redirects are not
//!   followed.
//! - **A pipeline**: sending never waits for the store. The next rounds are claimed while the current one is in
//!   flight; each store operation records every outcome that finished since the last one and claims more, in one
//!   transaction; one store operation at a time (on SQLite two would contend for the write lock).

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use deploy_core::{
    Clock, DeliveryOutcome, RetrySchedule, ShutdownSignal, StoreError, WebhookDelivery, WebhookStore,
    WebhookSubscription,
};
use futures::future::BoxFuture;
use reqwest::header::{CONTENT_TYPE, HeaderMap, HeaderValue, RETRY_AFTER};
use tokio::sync::Notify;
use tokio::task::JoinSet;
use uuid::Uuid;

use crate::metrics::Metrics;

/// Rounds of attempts claimed at once: one in flight, the rest queued behind it. Larger claims cost the store less
/// per delivery; a queued delivery is started within its claim or dropped (see [`Dispatcher::run`]).
const ROUNDS: usize = 8;

/// The longest `Retry-After` honoured; a receiver asking for more is retried on the schedule's terms after a day.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(24 * 3600);

/// How the dispatcher works.
#[derive(Debug, Clone)]
pub struct DispatcherConfig {
    /// Delays between attempts.
    pub schedule: RetrySchedule,
    /// The longest one attempt may take (connect, send, answer).
    pub timeout: Duration,
    /// Attempts in flight at once.
    pub concurrency: usize,
    /// Attempts in flight at once to one subscription (the store lets it hold more claims: the rounds queued behind
    /// the one in flight).
    pub per_subscription: usize,
    /// How often to look for due deliveries when nothing wakes the dispatcher.
    pub poll_interval: Duration,
    /// The addresses deliveries may connect to (checked after DNS resolution, at every connection).
    pub addresses: Arc<crate::webhooks::guard::AddressPolicy>,
    /// Opens signing secrets sealed at rest.
    pub secrets_key: Option<Arc<crate::SecretsKey>>,
}

impl Default for DispatcherConfig {
    fn default() -> Self {
        Self {
            schedule: RetrySchedule::default(),
            timeout: Duration::from_secs(10),
            concurrency: 64,
            per_subscription: 8,
            poll_interval: Duration::from_millis(250),
            addresses: Arc::default(),
            secrets_key: None,
        }
    }
}

/// Sends the outbox's deliveries; see the module documentation.
#[derive(Clone)]
pub struct Dispatcher {
    store: Arc<dyn WebhookStore>,
    clock: Arc<dyn Clock>,
    client: reqwest::Client,
    resolver: crate::webhooks::guard::GuardedResolver,
    config: DispatcherConfig,
    wake: Arc<Notify>,
    metrics: Option<Arc<Metrics>>,
}

impl std::fmt::Debug for Dispatcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Dispatcher").field("config", &self.config).finish_non_exhaustive()
    }
}

/// Why the dispatcher could not be built.
#[derive(Debug, thiserror::Error)]
#[error("cannot build the webhook HTTP client")]
pub struct DispatcherError(#[source] reqwest::Error);

impl Dispatcher {
    /// A dispatcher over `store`'s outbox.
    ///
    /// # Errors
    /// [`DispatcherError`] when the HTTP client cannot be built (no TLS roots, say).
    pub fn new(
        store: Arc<dyn WebhookStore>,
        clock: Arc<dyn Clock>,
        config: DispatcherConfig,
    ) -> Result<Self, DispatcherError> {
        let resolver = crate::webhooks::guard::GuardedResolver::new(Arc::clone(&config.addresses));
        let client = reqwest::Client::builder()
            .dns_resolver(Arc::new(resolver.clone()))
            .no_proxy()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(config.timeout)
            .connect_timeout(config.timeout)
            .pool_max_idle_per_host(config.per_subscription.max(1))
            .user_agent(concat!("deployd-webhooks/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(DispatcherError)?;
        Ok(Self { store, clock, client, resolver, config, wake: Arc::new(Notify::new()), metrics: None })
    }

    /// Wakes the dispatcher through `wake` (e.g. [`crate::AppState::webhooks_wake`]) instead of its own.
    #[must_use]
    pub fn wake_with(mut self, wake: Arc<Notify>) -> Self {
        self.wake = wake;
        self
    }

    /// Counts attempts in `metrics`.
    #[must_use]
    pub fn metrics(mut self, metrics: Arc<Metrics>) -> Self {
        self.metrics = Some(metrics);
        self
    }

    /// Dispatches until `shutdown` fires, then lets the attempts in flight finish (each is bounded by the timeout)
    /// and records their outcomes.
    ///
    /// A pipeline: sending never waits for the store. Up to [`DispatcherConfig::concurrency`] attempts are in flight
    /// while the next rounds (eight in all) wait, already claimed, in a local queue; meanwhile one store operation at
    /// a time ([`WebhookStore::complete_and_claim`], one transaction on the SQL stores) records every outcome that finished
    /// since the last one and claims more. The store lets a subscription hold eight times its in-flight cap in claims;
    /// the dispatcher keeps the cap on what is in flight.
    ///
    /// A claim lasts one and a half attempt timeouts plus 5 s. A queued delivery that could not start early enough
    /// to finish within its claim is dropped instead, as are those still queued when the dispatcher stops: their
    /// claims lapse and they are attempted again (at least once; never two attempts of one delivery at once).
    pub async fn run(self, mut shutdown: ShutdownSignal) {
        let this = Arc::new(self);
        let concurrency = this.config.concurrency.max(1);
        let per_subscription = this.config.per_subscription.max(1);
        // What claims may bring in: the slots in flight and the rounds queued behind them.
        let depth = ROUNDS * concurrency;
        // A claim is a transaction: take one when a quarter of the depth is free, or when there is nothing to do.
        let claim_at = (concurrency / 4).max(1);
        // A claim covers a wait in the queue and one attempt. A delivery still queued when its claim could lapse
        // before the attempt ends is dropped, not started (another dispatcher may claim it by then); it is claimed
        // again when its claim lapses.
        let lease = this.config.timeout + this.config.timeout / 2 + Duration::from_secs(5);
        let start_within = lease.saturating_sub(this.config.timeout + Duration::from_secs(1));
        let mut waiting = Waiting::new(per_subscription);
        let mut in_flight = InFlight::default();
        let mut finished: Vec<(String, DeliveryOutcome)> = Vec::new();
        let mut bookkeeping: Option<BoxFuture<'static, Bookkeeping>> = None;
        let mut failed_writes = 0u32;
        // Whether a claim may find something: not after one that came back short, until something changes.
        let mut may_find = true;
        loop {
            this.start_queued(&mut waiting, &mut in_flight, concurrency);
            if bookkeeping.is_none() {
                let room = depth.saturating_sub(in_flight.tasks.len() + waiting.len());
                // Outcomes to record free claims (a subscription at the store's cap gets short claims), so a round
                // that records them claims too: a round of its own for them would double the transactions.
                let may_claim = (may_find || !finished.is_empty())
                    && !shutdown.is_fired()
                    && (room >= claim_at || (in_flight.tasks.is_empty() && waiting.is_empty() && room > 0));
                if may_claim || !finished.is_empty() {
                    // One round: record what finished, then claim (in one transaction on the SQL stores).
                    let store = Arc::clone(&this.store);
                    let (outcomes, now) = (std::mem::take(&mut finished), this.clock.now());
                    let limit = if may_claim { room } else { 0 };
                    let start_by = tokio::time::Instant::now() + start_within;
                    bookkeeping = Some(Box::pin(async move {
                        let claimed =
                            store.complete_and_claim(&outcomes, now, limit, ROUNDS * per_subscription, lease).await;
                        Bookkeeping::Round { outcomes, limit, start_by, claimed }
                    }));
                }
            }
            if shutdown.is_fired() && bookkeeping.is_none() && in_flight.tasks.is_empty() && finished.is_empty() {
                break;
            }
            tokio::select! {
                done = async { bookkeeping.as_mut()?.as_mut().await.into() }, if bookkeeping.is_some() => {
                    bookkeeping = None;
                    match done {
                        Some(Bookkeeping::Round { outcomes, limit, start_by, claimed: Ok(batch) }) => {
                            failed_writes = 0;
                            // A claim that came back short found everything due; recorded outcomes free slots.
                            may_find = if limit > 0 { batch.len() == limit } else { !outcomes.is_empty() };
                            for (delivery, subscription) in batch {
                                waiting.push(delivery, subscription, start_by);
                            }
                        }
                        Some(Bookkeeping::Round { outcomes, claimed: Err(e), .. }) if outcomes.is_empty() => {
                            may_find = false;
                            tracing::warn!(error = %e, "cannot claim webhook deliveries; retrying");
                        }
                        Some(Bookkeeping::Round { outcomes, claimed: Err(e), .. }) => {
                            failed_writes += 1;
                            if failed_writes >= 5 {
                                tracing::error!(error = %e, deliveries = outcomes.len(), "cannot record webhook \
                                                outcomes; they will be attempted again when their claims lapse");
                                failed_writes = 0;
                            } else {
                                tracing::warn!(error = %e, "cannot record webhook outcomes yet; retrying");
                                finished.extend(outcomes);
                                let backoff = Duration::from_millis(50 << failed_writes);
                                bookkeeping = Some(Box::pin(async move {
                                    tokio::time::sleep(backoff).await;
                                    Bookkeeping::Waited
                                }));
                            }
                        }
                        Some(Bookkeeping::Waited) | None => {}
                    }
                }
                Some(done) = in_flight.tasks.join_next_with_id(), if !in_flight.tasks.is_empty() => {
                    finished.extend(in_flight.ended(done, &mut waiting));
                    // Take every other attempt that finished too, so they are recorded together.
                    while let Some(done) = in_flight.tasks.try_join_next_with_id() {
                        finished.extend(in_flight.ended(done, &mut waiting));
                    }
                }
                () = shutdown.fired(), if !shutdown.is_fired() => {}
                () = this.wake.notified() => may_find = true,
                () = tokio::time::sleep(this.config.poll_interval) => may_find = true,
            }
        }
    }

    /// Starts waiting deliveries while there are free slots, keeping each subscription within its in-flight cap
    /// (see [`Waiting`]).
    fn start_queued(self: &Arc<Self>, waiting: &mut Waiting, in_flight: &mut InFlight, concurrency: usize) {
        let now = tokio::time::Instant::now();
        while in_flight.tasks.len() < concurrency {
            let Some(Queued { delivery, subscription, .. }) = waiting.next(now) else { break };
            let this = Arc::clone(self);
            let subscription_id = subscription.id;
            let task = in_flight.tasks.spawn(async move {
                let outcome = this.attempt(&delivery, &subscription).await;
                (delivery.id, outcome)
            });
            in_flight.subscriptions.insert(task.id(), subscription_id);
        }
    }

    /// One attempt: sign, send, classify.
    async fn attempt(&self, delivery: &WebhookDelivery, subscription: &WebhookSubscription) -> DeliveryOutcome {
        let now = self.clock.now();
        let outcome = match self.send(delivery, subscription, now.unix_timestamp()).await {
            Ok((status, _)) if (200..300).contains(&status) => DeliveryOutcome::Delivered { status_code: status },
            Ok((410, _)) => DeliveryOutcome::Gone,
            Ok((status, retry_after)) => {
                self.config.schedule.after_failure(delivery.attempts, Some(status), retry_after, self.clock.now())
            }
            Err(e) => {
                tracing::debug!(delivery = %delivery.id, url = %subscription.url, error = %e, "webhook attempt failed");
                self.config.schedule.after_failure(delivery.attempts, None, None, self.clock.now())
            }
        };
        if let Some(m) = &self.metrics {
            m.webhook_attempt(match outcome {
                DeliveryOutcome::Delivered { .. } => "delivered",
                DeliveryOutcome::Retry { .. } => "retry",
                DeliveryOutcome::GiveUp { .. } => "failed",
                DeliveryOutcome::Gone => "gone",
            });
        }
        outcome
    }

    /// Sends one signed request; the status and any `Retry-After` of the answer.
    async fn send(
        &self,
        delivery: &WebhookDelivery,
        subscription: &WebhookSubscription,
        timestamp: i64,
    ) -> Result<(u16, Option<Duration>), SendError> {
        let url = reqwest::Url::parse(&subscription.url).map_err(|e| SendError::Refused(e.to_string()))?;
        // Names are checked by the resolver as the connection is made; an address literal never reaches it.
        if url.host().is_some_and(|h| !matches!(h, url::Host::Domain(_))) {
            crate::webhooks::guard::check_url(&self.resolver, &url).await.map_err(SendError::Refused)?;
        }
        let body = delivery.payload.as_str().to_owned();
        let secret =
            crate::webhooks::sealed::reveal(self.config.secrets_key.as_deref(), subscription.id, &subscription.secret)
                .map_err(|e| {
                    tracing::warn!(error = %e, "webhook secret unusable");
                    SendError::Secret
                })?;
        let headers = signed_headers(&secret, &delivery.id, timestamp, body.as_bytes())?;
        let response =
            self.client.post(&subscription.url).headers(headers).body(body).send().await.map_err(SendError::Http)?;
        let status = response.status().as_u16();
        let retry_after = retry_after(response.headers(), self.clock.now());
        Ok((status, retry_after))
    }
}

/// A claimed delivery waiting for a slot.
struct Queued {
    /// Its place in claim order.
    seq: u64,
    delivery: WebhookDelivery,
    subscription: WebhookSubscription,
    /// Started after this, its claim could lapse before the attempt ends.
    start_by: tokio::time::Instant,
}

/// What the one store operation in progress came back with.
enum Bookkeeping {
    /// A round: `outcomes` recorded (unless it failed), then up to `limit` deliveries claimed, to be started by
    /// `start_by`.
    Round {
        outcomes: Vec<(String, DeliveryOutcome)>,
        limit: usize,
        start_by: tokio::time::Instant,
        claimed: Result<Vec<(WebhookDelivery, WebhookSubscription)>, StoreError>,
    },
    /// A pause before writing outcomes again.
    Waited,
}

/// The claimed deliveries waiting for a slot, a queue per subscription in claim order, and how many attempts each
/// subscription has in flight. A subscription is *ready* when it is below its in-flight cap and has a delivery
/// waiting; the next to start is the ready subscription's delivery claimed first. So a subscription at its cap never
/// delays the others, and its backlog costs nothing while they start: every operation is O(log subscriptions) (the
/// dispatcher once scanned the whole queue past a capped subscription's deliveries on every start).
struct Waiting {
    queues: HashMap<Uuid, VecDeque<Queued>>,
    busy: HashMap<Uuid, usize>,
    /// The ready subscriptions, by their oldest waiting delivery's `seq`: one entry each, keyed by their queue's front.
    ready: BTreeSet<(u64, Uuid)>,
    cap: usize,
    next_seq: u64,
    len: usize,
}

impl Waiting {
    /// Nothing waiting, nothing in flight; at most `cap` in flight per subscription.
    fn new(cap: usize) -> Self {
        Self {
            queues: HashMap::new(),
            busy: HashMap::new(),
            ready: BTreeSet::new(),
            cap: cap.max(1),
            next_seq: 0,
            len: 0,
        }
    }

    /// Deliveries waiting.
    fn len(&self) -> usize {
        self.len
    }

    /// Whether none is waiting.
    fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Whether `subscription` may start another attempt.
    fn below_cap(&self, subscription: Uuid) -> bool {
        self.busy.get(&subscription).copied().unwrap_or(0) < self.cap
    }

    /// Queues a claimed delivery, to be started by `start_by`.
    fn push(&mut self, delivery: WebhookDelivery, subscription: WebhookSubscription, start_by: tokio::time::Instant) {
        let (seq, id) = (self.next_seq, subscription.id);
        self.next_seq += 1;
        self.len += 1;
        let queue = self.queues.entry(id).or_default();
        queue.push_back(Queued { seq, delivery, subscription, start_by });
        if queue.len() == 1 && self.below_cap(id) {
            self.ready.insert((seq, id));
        }
    }

    /// The next delivery to start, its subscription's slot taken. Those whose claim could lapse before their attempt
    /// ends (started after `start_by`) are dropped on the way: whoever claims them next attempts them.
    fn next(&mut self, now: tokio::time::Instant) -> Option<Queued> {
        loop {
            let (_, id) = self.ready.pop_first()?;
            let Some(entry) = self.queues.get_mut(&id).and_then(VecDeque::pop_front) else { continue };
            self.len -= 1;
            let start = now <= entry.start_by;
            if start {
                *self.busy.entry(id).or_insert(0) += 1;
            }
            self.mark_ready(id);
            if start {
                return Some(entry);
            }
        }
    }

    /// An attempt of `subscription` ended: its slot is free.
    fn finished(&mut self, subscription: Uuid) {
        if let Some(count) = self.busy.get_mut(&subscription) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                self.busy.remove(&subscription);
            }
        }
        self.mark_ready(subscription);
    }

    /// Makes `subscription` ready if it is below its cap with a delivery waiting (keyed by that delivery's place),
    /// and forgets its queue once empty.
    fn mark_ready(&mut self, subscription: Uuid) {
        match self.queues.get(&subscription).map(VecDeque::front) {
            Some(Some(front)) if self.below_cap(subscription) => {
                self.ready.insert((front.seq, subscription));
            }
            Some(Some(_)) | None => {}
            Some(None) => {
                self.queues.remove(&subscription);
            }
        }
    }
}

/// The attempts in flight, and the subscription of each.
#[derive(Default)]
struct InFlight {
    tasks: JoinSet<(String, DeliveryOutcome)>,
    subscriptions: HashMap<tokio::task::Id, Uuid>,
}

impl InFlight {
    /// Accounts for an attempt that ended (its subscription's slot is free in `waiting`); its outcome, unless its task
    /// failed (then its claim lapses and the delivery is attempted again).
    fn ended(
        &mut self,
        done: Result<(tokio::task::Id, (String, DeliveryOutcome)), tokio::task::JoinError>,
        waiting: &mut Waiting,
    ) -> Option<(String, DeliveryOutcome)> {
        let (task, outcome) = match done {
            Ok((task, outcome)) => (task, Some(outcome)),
            Err(e) => {
                tracing::error!(error = %e, "a webhook attempt failed unexpectedly; its claim will lapse");
                (e.id(), None)
            }
        };
        if let Some(subscription) = self.subscriptions.remove(&task) {
            waiting.finished(subscription);
        }
        outcome
    }
}

/// Why an attempt got no answer.
#[derive(Debug, thiserror::Error)]
enum SendError {
    #[error("the payload cannot be signed or sent as headers carry it")]
    Payload,
    #[error("the subscription's secret is unusable")]
    Secret,
    #[error(transparent)]
    Http(reqwest::Error),
    #[error("the URL may not be reached: {0}")]
    Refused(String),
}

/// The Standard Webhooks headers of one attempt: `webhook-id`, `webhook-timestamp` and `webhook-signature`
/// (`v1,<base64 HMAC-SHA256 of "id.timestamp.body">`), and the JSON content type.
fn signed_headers(secret: &str, id: &str, timestamp: i64, body: &[u8]) -> Result<HeaderMap, SendError> {
    let signer = standardwebhooks::Webhook::new(secret).map_err(|_| SendError::Secret)?;
    let signature = signer.sign(id, timestamp, body).map_err(|_| SendError::Payload)?;
    let mut headers = HeaderMap::with_capacity(4);
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    let value = |v: &str| HeaderValue::from_str(v).map_err(|_| SendError::Payload);
    headers.insert("webhook-id", value(id)?);
    headers.insert("webhook-timestamp", HeaderValue::from(timestamp));
    headers.insert("webhook-signature", value(&signature)?);
    Ok(headers)
}

/// `Retry-After` as seconds or an HTTP date, capped at a day.
fn retry_after(headers: &HeaderMap, now: deploy_core::Timestamp) -> Option<Duration> {
    let raw = headers.get(RETRY_AFTER)?.to_str().ok()?.trim();
    let wait = match raw.parse::<u64>() {
        Ok(secs) => Duration::from_secs(secs),
        Err(_) => {
            let at = time::OffsetDateTime::parse(raw, &time::format_description::well_known::Rfc2822).ok()?;
            Duration::try_from(at - now).ok()?
        }
    };
    Some(wait.min(MAX_RETRY_AFTER))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use deploy_testkit::fixtures::subscription;
    use time::macros::datetime;

    #[test]
    fn retry_after_in_seconds_or_as_a_date_capped_at_a_day() {
        let now = datetime!(2026-01-01 00:00 UTC);
        let with = |v: &str| {
            let mut h = HeaderMap::new();
            h.insert(RETRY_AFTER, HeaderValue::from_str(v).unwrap());
            retry_after(&h, now)
        };
        assert_eq!(with("120"), Some(Duration::from_secs(120)));
        assert_eq!(with("Thu, 01 Jan 2026 00:01:00 GMT"), Some(Duration::from_secs(60)));
        assert_eq!(with("99999999"), Some(MAX_RETRY_AFTER));
        assert_eq!(with("Wed, 31 Dec 2025 00:00:00 GMT"), None, "a date in the past asks for nothing");
        assert_eq!(with("soon"), None);
        assert_eq!(retry_after(&HeaderMap::new(), now), None);
    }

    fn delivery(subscription: &WebhookSubscription, n: u64) -> WebhookDelivery {
        WebhookDelivery {
            id: format!("msg_{n}"),
            subscription_id: subscription.id,
            event_type: deploy_core::EventType::Queued,
            deployment_id: deploy_core::DeploymentId::new(),
            seq: n,
            payload: deploy_core::WebhookPayload::of(&serde_json::json!({"n": n})),
            status: deploy_core::DeliveryStatus::Pending,
            attempts: 0,
            last_status_code: None,
            next_attempt_at: None,
            delivered_at: None,
        }
    }

    /// The ids `waiting` starts, in order, until nothing more may start at `now`.
    fn started(waiting: &mut Waiting, now: tokio::time::Instant) -> Vec<String> {
        std::iter::from_fn(|| waiting.next(now)).map(|q| q.delivery.id).collect()
    }

    #[test]
    fn waiting_deliveries_start_in_claim_order_within_each_subscriptions_cap() {
        let now = tokio::time::Instant::now();
        let later = now + Duration::from_secs(60);
        let hook = "http://127.0.0.1:9/hook";
        let (busy, quiet) = (subscription(hook), subscription(hook));
        let mut waiting = Waiting::new(2);
        // A deep backlog of one subscription, claimed before the other's two deliveries.
        for n in 0..100 {
            waiting.push(delivery(&busy, n), busy.clone(), later);
        }
        waiting.push(delivery(&quiet, 100), quiet.clone(), later);
        waiting.push(delivery(&quiet, 101), quiet.clone(), later);
        assert_eq!(waiting.len(), 102);
        assert_eq!(
            started(&mut waiting, now),
            ["msg_0", "msg_1", "msg_100", "msg_101"],
            "two of each, the first claimed first; the capped backlog holds nobody up"
        );
        assert_eq!(waiting.len(), 98);
        waiting.finished(quiet.id);
        assert!(started(&mut waiting, now).is_empty(), "a free slot of a subscription with nothing waiting");
        waiting.finished(busy.id);
        assert_eq!(started(&mut waiting, now), ["msg_2"], "a finished attempt frees its subscription's slot");
        waiting.finished(busy.id);
        waiting.finished(busy.id);
        assert_eq!(started(&mut waiting, now), ["msg_3", "msg_4"]);
        // Past their start-by, the rest are dropped (their claims lapse), not started.
        waiting.finished(busy.id);
        assert!(started(&mut waiting, later + Duration::from_millis(1)).is_empty());
        assert!(waiting.is_empty(), "{} still waiting", waiting.len());
        // A subscription that comes back later starts again at once.
        waiting.push(delivery(&quiet, 102), quiet.clone(), later);
        assert_eq!(started(&mut waiting, now), ["msg_102"]);
    }

    #[test]
    fn signatures_follow_standard_webhooks() {
        // The Standard Webhooks test vector.
        let body = br#"{"email":"test@example.com","username":"test_user"}"#;
        let headers = signed_headers(
            "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD",
            "msg_27UH4WbU6Z5A5EzD8u03UvzRbpk",
            1_649_367_553,
            body,
        )
        .unwrap();
        assert_eq!(headers["webhook-signature"], "v1,tZ1I4/hDygAJgO5TYxiSd6Sd0kDW6hPenDe+bTa3Kkw=");
        assert_eq!(headers["webhook-id"], "msg_27UH4WbU6Z5A5EzD8u03UvzRbpk");
        assert_eq!(headers["webhook-timestamp"], "1649367553");
        assert_eq!(headers[CONTENT_TYPE], "application/json");
    }
}
