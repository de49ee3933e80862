//! The webhook dispatcher: claims due deliveries from the store's outbox, signs and sends them, and records each
//! outcome, so every delivery is attempted until it is delivered, given up or its subscription is gone.
//!
//! - **At least once, one id**: a delivery is written to the outbox with the change it reports; its id is the
//!   `webhook-id` of every attempt. A claim hides it from other dispatchers (other replicas) for the request timeout
//!   plus a margin; if this process dies mid-attempt the claim lapses and the delivery is attempted again.
//! - **Isolation**: attempts run concurrently (up to [`DispatcherConfig::concurrency`]), and the store never hands out
//!   more than [`DispatcherConfig::per_subscription`] deliveries of one subscription at once, so a slow or dead
//!   receiver holds a few slots at most and never delays the others.
//! - **Outcomes**: 2xx is delivered; 410 disables the subscription; anything else, a timeout or a connection error is
//!   retried on the [`RetrySchedule`] (jittered; a longer `Retry-After` wins), then given up. Redirects are not
//!   followed.
//! - Outcomes are written in batches, one transaction for everything that finished since the last write, by the same
//!   task that claims (never both at once).

use std::sync::Arc;
use std::time::Duration;

use deploy_core::{Clock, DeliveryOutcome, RetrySchedule, ShutdownSignal, Store, WebhookDelivery, WebhookSubscription};
use reqwest::header::{CONTENT_TYPE, HeaderMap, HeaderValue, RETRY_AFTER};
use tokio::sync::Notify;
use tokio::task::JoinSet;

use crate::metrics::Metrics;

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
    /// Attempts in flight at once to one subscription.
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
    /// One task claims and records, one after the other: on SQLite both take the write lock, and taking it from two
    /// tasks at once would leave one in SQLite's busy handler.
    pub async fn run(self, mut shutdown: ShutdownSignal) {
        let this = Arc::new(self);
        let mut in_flight: JoinSet<(String, DeliveryOutcome)> = JoinSet::new();
        let mut finished: Vec<(String, DeliveryOutcome)> = Vec::new();
        let mut failed_writes = 0u32;
        let concurrency = this.config.concurrency.max(1);
        // A claim costs a transaction: take one when a quarter of the slots are free, or when nothing is in flight.
        let claim_at = (concurrency / 4).max(1);
        let lease = this.config.timeout + Duration::from_secs(5);
        loop {
            while let Some(done) = in_flight.try_join_next() {
                finished.extend(done.ok());
            }
            if !finished.is_empty() {
                this.record(&mut finished, &mut failed_writes).await;
            }
            let free = concurrency.saturating_sub(in_flight.len());
            let mut full_batch = false;
            if !shutdown.is_fired() && (free >= claim_at || in_flight.is_empty()) {
                let now = this.clock.now();
                match this.store.claim_deliveries(now, free, this.config.per_subscription.max(1), lease).await {
                    Ok(batch) => {
                        full_batch = batch.len() == free && free > 0;
                        for (delivery, subscription) in batch {
                            let this = Arc::clone(&this);
                            in_flight.spawn(async move {
                                let outcome = this.attempt(&delivery, &subscription).await;
                                (delivery.id, outcome)
                            });
                        }
                    }
                    Err(e) => tracing::warn!(error = %e, "cannot claim webhook deliveries; retrying"),
                }
            }
            if full_batch && in_flight.len() < concurrency {
                continue;
            }
            if shutdown.is_fired() && in_flight.is_empty() && finished.is_empty() {
                break;
            }
            tokio::select! {
                () = shutdown.fired(), if !shutdown.is_fired() => {}
                Some(done) = in_flight.join_next(), if !in_flight.is_empty() => finished.extend(done.ok()),
                () = this.wake.notified() => {}
                () = tokio::time::sleep(this.config.poll_interval) => {}
            }
        }
    }

    /// Writes the outcomes that finished, in one transaction. After five failed writes in a row they are dropped: the
    /// claims lapse and those deliveries are attempted again (at least once, never lost).
    async fn record(&self, finished: &mut Vec<(String, DeliveryOutcome)>, failed_writes: &mut u32) {
        match self.store.complete_deliveries(finished, self.clock.now()).await {
            Ok(()) => {
                finished.clear();
                *failed_writes = 0;
            }
            Err(e) => {
                *failed_writes += 1;
                if *failed_writes >= 5 {
                    tracing::error!(error = %e, deliveries = finished.len(), "cannot record webhook outcomes; they \
                                    will be attempted again when their claims lapse");
                    finished.clear();
                    *failed_writes = 0;
                } else {
                    tracing::warn!(error = %e, "cannot record webhook outcomes yet; retrying");
                    tokio::time::sleep(Duration::from_millis(50 << *failed_writes)).await;
                }
            }
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
        let body = serde_json::to_vec(&delivery.payload).map_err(|_| SendError::Payload)?;
        let headers = signed_headers(&subscription.secret, &delivery.id, timestamp, &body)?;
        let response =
            self.client.post(&subscription.url).headers(headers).body(body).send().await.map_err(SendError::Http)?;
        let status = response.status().as_u16();
        let retry_after = retry_after(response.headers(), self.clock.now());
        Ok((status, retry_after))
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
