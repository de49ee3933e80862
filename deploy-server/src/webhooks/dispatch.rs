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

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use deploy_core::{
    Clock, DeliveryOutcome, RetrySchedule, ShutdownSignal, Store, StoreError, WebhookDelivery, WebhookSubscription,
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
}

impl Default for DispatcherConfig {
    fn default() -> Self {
        Self {
            schedule: RetrySchedule::default(),
            timeout: Duration::from_secs(10),
            concurrency: 64,
            per_subscription: 8,
            poll_interval: Duration::from_millis(250),
        }
    }
}

/// Sends the outbox's deliveries; see the module documentation.
#[derive(Clone)]
pub struct Dispatcher {
    store: Arc<dyn Store>,
    clock: Arc<dyn Clock>,
    client: reqwest::Client,
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
        store: Arc<dyn Store>,
        clock: Arc<dyn Clock>,
        config: DispatcherConfig,
    ) -> Result<Self, DispatcherError> {
        let client = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(config.timeout)
            .connect_timeout(config.timeout)
            .pool_max_idle_per_host(config.per_subscription.max(1))
            .user_agent(concat!("deployd-webhooks/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(DispatcherError)?;
        Ok(Self { store, clock, client, config, wake: Arc::new(Notify::new()), metrics: None })
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
    /// a time ([`Store::complete_and_claim`], one transaction on the SQL stores) records every outcome that finished
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
        let mut queued: VecDeque<Queued> = VecDeque::new();
        let mut in_flight = InFlight::default();
        let mut finished: Vec<(String, DeliveryOutcome)> = Vec::new();
        let mut bookkeeping: Option<BoxFuture<'static, Bookkeeping>> = None;
        let mut failed_writes = 0u32;
        // Whether a claim may find something: not after one that came back short, until something changes.
        let mut may_find = true;
        loop {
            this.start_queued(&mut queued, &mut in_flight, concurrency, per_subscription);
            if bookkeeping.is_none() {
                let room = depth.saturating_sub(in_flight.tasks.len() + queued.len());
                let may_claim = may_find
                    && !shutdown.is_fired()
                    && (room >= claim_at || (in_flight.tasks.is_empty() && queued.is_empty() && room > 0));
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
                            queued.extend(
                                batch.into_iter().map(|(delivery, subscription)| Queued {
                                    delivery,
                                    subscription,
                                    start_by,
                                }),
                            );
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
                    finished.extend(in_flight.ended(done));
                    // Take every other attempt that finished too, so they are recorded together.
                    while let Some(done) = in_flight.tasks.try_join_next_with_id() {
                        finished.extend(in_flight.ended(done));
                    }
                }
                () = shutdown.fired(), if !shutdown.is_fired() => {}
                () = this.wake.notified() => may_find = true,
                () = tokio::time::sleep(this.config.poll_interval) => may_find = true,
            }
        }
    }

    /// Starts queued deliveries while there are free slots, keeping each subscription within its in-flight cap (a
    /// delivery of a subscription at its cap waits, and those behind it of other subscriptions go first).
    fn start_queued(
        self: &Arc<Self>,
        queued: &mut VecDeque<Queued>,
        in_flight: &mut InFlight,
        concurrency: usize,
        per_subscription: usize,
    ) {
        let mut waiting = VecDeque::new();
        let now = tokio::time::Instant::now();
        while in_flight.tasks.len() < concurrency {
            let Some(next) = queued.pop_front() else { break };
            if now > next.start_by {
                // Its claim could lapse mid-attempt: leave it to whoever claims it next.
                continue;
            }
            let count = in_flight.busy.entry(next.subscription.id).or_insert(0);
            if *count >= per_subscription {
                waiting.push_back(next);
                continue;
            }
            *count += 1;
            let Queued { delivery, subscription, .. } = next;
            let this = Arc::clone(self);
            let subscription_id = subscription.id;
            let task = in_flight.tasks.spawn(async move {
                let outcome = this.attempt(&delivery, &subscription).await;
                (delivery.id, outcome)
            });
            in_flight.subscriptions.insert(task.id(), subscription_id);
        }
        // Those that waited keep their place at the head.
        while let Some(entry) = waiting.pop_back() {
            queued.push_front(entry);
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
        let body = delivery.payload.as_str().to_owned();
        let headers = signed_headers(&subscription.secret, &delivery.id, timestamp, body.as_bytes())?;
        let response =
            self.client.post(&subscription.url).headers(headers).body(body).send().await.map_err(SendError::Http)?;
        let status = response.status().as_u16();
        let retry_after = retry_after(response.headers(), self.clock.now());
        Ok((status, retry_after))
    }
}

/// A claimed delivery waiting for a slot.
struct Queued {
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

/// The attempts in flight, and how many each subscription has.
#[derive(Default)]
struct InFlight {
    tasks: JoinSet<(String, DeliveryOutcome)>,
    subscriptions: HashMap<tokio::task::Id, Uuid>,
    busy: HashMap<Uuid, usize>,
}

impl InFlight {
    /// Accounts for an attempt that ended; its outcome, unless its task failed (then its claim lapses and the
    /// delivery is attempted again).
    fn ended(
        &mut self,
        done: Result<(tokio::task::Id, (String, DeliveryOutcome)), tokio::task::JoinError>,
    ) -> Option<(String, DeliveryOutcome)> {
        let (task, outcome) = match done {
            Ok((task, outcome)) => (task, Some(outcome)),
            Err(e) => {
                tracing::error!(error = %e, "a webhook attempt failed unexpectedly; its claim will lapse");
                (e.id(), None)
            }
        };
        if let Some(subscription) = self.subscriptions.remove(&task)
            && let Some(count) = self.busy.get_mut(&subscription)
        {
            *count = count.saturating_sub(1);
            if *count == 0 {
                self.busy.remove(&subscription);
            }
        }
        outcome
    }
}

/// Why an attempt got no answer.
#[derive(Debug, thiserror::Error)]
enum SendError {
    #[error("the payload cannot be serialized")]
    Payload,
    #[error("the subscription's secret is unusable")]
    Secret,
    #[error(transparent)]
    Http(reqwest::Error),
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
