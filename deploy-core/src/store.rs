//! The [`Store`] trait: everything the engine knows lives behind it, so any replica can pick up any deployment.

use std::time::Duration;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::access::{ApiKeyRecord, AuditEntry, AuditFilter};
use crate::agent::{AgentReport, AgentSlot};
use crate::auth::EnvironmentPattern;
use crate::clock::Timestamp;
use crate::deployment::{Deployment, DeploymentDraft, DeploymentStatus, ProgressUpdate, UpdateError};
use crate::environment::{Environment, EnvironmentSpec};
use crate::event::{Event, EventType};
use crate::names::{DeploymentId, EnvironmentName, Fingerprint, IdempotencyKey, Revision, ServiceName, TargetId};
use crate::spec::ValidationErrors;
use crate::state::DesiredState;

/// A store's error. Conformance suites match on these variants.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The named thing does not exist.
    #[error("{what} {id} not found")]
    NotFound {
        /// `environment`, `deployment`, `webhook`, ...
        what: &'static str,
        /// Its id or name.
        id: String,
    },
    /// The environment's policy is `reject` and another deployment is queued or active.
    #[error("environment {environment} is busy with deployment {active}")]
    EnvironmentBusy {
        /// The environment.
        environment: EnvironmentName,
        /// The deployment in the way.
        active: DeploymentId,
    },
    /// The idempotency key was used before with a different request.
    #[error("idempotency key {key} was used with a different request")]
    IdempotencyKeyReuse {
        /// The key.
        key: IdempotencyKey,
    },
    /// The first request with this key is still being accepted.
    #[error("a request with idempotency key {key} is still being processed")]
    IdempotencyKeyInFlight {
        /// The key.
        key: IdempotencyKey,
    },
    /// The caller's expected revision is stale.
    #[error("environment revision is {current}, the request expected {expected}")]
    PreconditionFailed {
        /// What the caller expected.
        expected: Revision,
        /// What it is.
        current: Revision,
    },
    /// The environment requires an expected revision and none was given.
    #[error("environment {environment} requires an expected revision (If-Match)")]
    PreconditionRequired {
        /// The environment.
        environment: EnvironmentName,
    },
    /// The request does not fit the environment (unknown targets, empty selection).
    #[error("invalid request: {0}")]
    Invalid(#[source] ValidationErrors),
    /// The fencing token is stale: another controller claimed the deployment since.
    #[error("lease on deployment {deployment} is stale (token {token})")]
    StaleToken {
        /// The deployment.
        deployment: DeploymentId,
        /// The refused token.
        token: u64,
    },
    /// The deployment is terminal and cannot change.
    #[error("deployment {deployment} is already {status}")]
    AlreadyFinished {
        /// The deployment.
        deployment: DeploymentId,
        /// Its terminal status.
        status: DeploymentStatus,
    },
    /// An operator's request does not apply to the deployment now.
    #[error("deployment {deployment}: {reason}")]
    NotNow {
        /// The deployment.
        deployment: DeploymentId,
        /// Why, for people.
        reason: String,
    },
    /// The update does not fit the record (illegal transition, unknown target).
    #[error("update refused: {0}")]
    Update(#[source] UpdateError),
    /// The backend could not be reached or failed; the operation may be retried.
    #[error("store unavailable: {0}")]
    Unavailable(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// Stored data could not be read back.
    #[error("stored data is corrupt: {0}")]
    Corrupt(String),
    /// The submitter is over a quota (see [`QuotaCheck`]).
    #[error("{submitter} is over quota: {reason}")]
    QuotaExceeded {
        /// Whose quota.
        submitter: String,
        /// Which limit, with the figures.
        reason: String,
        /// Whether it is the byte window (it frees up as time passes) rather than open deployments (they free up
        /// as they finish).
        window: bool,
    },
}

/// A page request: at most `limit` items after `cursor`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PageRequest {
    /// At most this many items (clamped to 1..=500).
    pub limit: usize,
    /// Where the previous page ended.
    pub cursor: Option<String>,
}

impl Default for PageRequest {
    fn default() -> Self {
        Self { limit: 50, cursor: None }
    }
}

impl PageRequest {
    /// The limit clamped to `1..=500`.
    #[must_use]
    pub fn clamped_limit(&self) -> usize {
        self.limit.clamp(1, 500)
    }
}

/// A page of results, newest first, and the cursor of the next page.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Page<T> {
    /// The items.
    pub items: Vec<T>,
    /// Pass this as `cursor` for the next page; `None` on the last page.
    pub next_cursor: Option<String>,
}

impl<T> Page<T> {
    /// A page from up to `limit + 1` items read in listing order: the extra item only says that a next page exists,
    /// whose cursor is `cursor` of the last item kept.
    #[must_use]
    pub fn from_overfetch(mut items: Vec<T>, limit: usize, cursor: impl Fn(&T) -> String) -> Self {
        let next_cursor = if items.len() > limit {
            items.truncate(limit);
            items.last().map(cursor)
        } else {
            None
        };
        Self { items, next_cursor }
    }
}

/// Filters of a deployment listing.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DeploymentFilter {
    /// Only this environment.
    pub environment: Option<EnvironmentName>,
    /// Only this service.
    pub service: Option<ServiceName>,
    /// Only this status.
    pub status: Option<DeploymentStatus>,
}

impl DeploymentFilter {
    /// Whether `d` passes.
    #[must_use]
    pub fn matches(&self, d: &Deployment) -> bool {
        self.environment.as_ref().is_none_or(|e| e == d.environment())
            && self.service.as_ref().is_none_or(|s| s == d.service())
            && self.status.is_none_or(|s| s == d.status())
    }
}

/// An idempotency key as stored with the deployment it created.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdempotencyRecord {
    /// Keys are scoped per principal: two callers may use the same key.
    pub scope: String,
    /// The key.
    pub key: IdempotencyKey,
    /// The request's fingerprint.
    pub fingerprint: Fingerprint,
    /// After this the key is forgotten and may be used again.
    pub expires_at: Timestamp,
}

/// Everything a store needs to accept a deployment atomically.
#[derive(Debug, Clone)]
pub struct Acceptance {
    /// The deployment to create.
    pub draft: DeploymentDraft,
    /// The idempotency key, if the caller gave one.
    pub idempotency: Option<IdempotencyRecord>,
    /// The revision the caller expects the environment to be at.
    pub expected_revision: Option<Revision>,
    /// The time of acceptance.
    pub now: Timestamp,
    /// What the submitter may have stored, checked in the same acceptance (none: no limit).
    pub quota: Option<QuotaCheck>,
}

/// A submitter's limits, checked by the store inside the acceptance that would exceed them, after a replay is
/// recognised (a replay stores nothing and is never refused) and before anything is written.
///
/// The store counts deployments whose `created_by` is `submitter`: those not yet terminal against `max_open`, and
/// the size of those accepted in the window against `max_bytes`. A deployment's size is [`Deployment::stored_bytes`] as
/// it was accepted: its record without targets and events, as JSON, in bytes. The window is counted in steps of time
/// ([`DeploymentId::quota_bucket`], about 17.5 minutes; ids are UUIDv7, ordered by wall-clock time): deployments made
/// in the step holding `since` or later count, so a store keeps running totals per step rather than reading a
/// submitter's history. Counts read committed state: concurrent acceptances by one submitter in different
/// environments may each see the other's absence, so a quota can be overshot by as many acceptances as are in flight
/// at once (never by more).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QuotaCheck {
    /// Whose deployments count (a principal id, as in [`Deployment::created_by`]).
    pub submitter: String,
    /// Open (non-terminal) deployments the submitter may have, this one included.
    pub max_open: u64,
    /// Bytes the submitter's deployments accepted since `since` may take, this one included.
    pub max_bytes: u64,
    /// Where the byte window starts: deployments made in this id's step of time or later count.
    pub since: DeploymentId,
}

impl QuotaCheck {
    /// Refuses a new deployment of `adding` bytes when the submitter already has `open` open deployments, or
    /// deployments of `bytes` bytes in the window.
    ///
    /// # Errors
    /// [`StoreError::QuotaExceeded`] naming the limit.
    pub fn check(&self, open: u64, bytes: u64, adding: u64) -> Result<(), StoreError> {
        if open >= self.max_open {
            return Err(StoreError::QuotaExceeded {
                submitter: self.submitter.clone(),
                reason: format!(
                    "{open} deployments not yet finished; at most {} at once per submitter on this server",
                    self.max_open
                ),
                window: false,
            });
        }
        if bytes.saturating_add(adding) > self.max_bytes {
            return Err(StoreError::QuotaExceeded {
                submitter: self.submitter.clone(),
                reason: format!(
                    "deployments of {bytes} bytes accepted in the quota window, this one {adding} more; at most {} \
                     bytes per submitter on this server",
                    self.max_bytes
                ),
                window: true,
            });
        }
        Ok(())
    }
}

impl IdempotencyRecord {
    /// What an unexpired key already stored with `fingerprint` means for this request: the same request (a replay of
    /// the deployment stored with it), or [`StoreError::IdempotencyKeyReuse`].
    ///
    /// # Errors
    /// [`StoreError::IdempotencyKeyReuse`] when the fingerprints differ.
    pub fn check_replay(&self, fingerprint: &str) -> Result<(), StoreError> {
        if fingerprint == self.fingerprint.as_str() {
            Ok(())
        } else {
            Err(StoreError::IdempotencyKeyReuse { key: self.key.clone() })
        }
    }
}

/// The acceptance policy, decided here once for every store: the environment's preconditions and its concurrency
/// policy. A store reads what they need inside its transaction and applies the answer.
impl Acceptance {
    /// Refuses unless the environment, at revision `current`, takes a request expecting `expected`: one that requires
    /// `If-Match`
    /// ([`StoreError::PreconditionRequired`]) or that moved past the expected revision
    /// ([`StoreError::PreconditionFailed`]).
    ///
    /// # Errors
    /// As above.
    pub fn check_revision(
        expected: Option<Revision>,
        environment: &EnvironmentName,
        require_if_match: bool,
        current: Revision,
    ) -> Result<(), StoreError> {
        match expected {
            None if require_if_match => Err(StoreError::PreconditionRequired { environment: environment.clone() }),
            Some(expected) if expected != current => Err(StoreError::PreconditionFailed { expected, current }),
            _ => Ok(()),
        }
    }

    /// What the environment's concurrency policy does with its open deployments `older` (the active one first, then
    /// the queued ones): `queue` leaves them, `supersede` returns them all to be superseded by this one, `reject`
    /// refuses while any is open.
    ///
    /// # Errors
    /// [`StoreError::EnvironmentBusy`] for `reject` with an open deployment.
    pub fn superseding(
        environment: &EnvironmentName,
        policy: crate::environment::ConcurrencyPolicy,
        older: &[DeploymentId],
    ) -> Result<Vec<DeploymentId>, StoreError> {
        use crate::environment::ConcurrencyPolicy as P;
        match (policy, older.first()) {
            (P::Reject, Some(active)) => {
                Err(StoreError::EnvironmentBusy { environment: environment.clone(), active: *active })
            }
            (P::Supersede, _) => Ok(older.to_vec()),
            (P::Reject | P::Queue, _) => Ok(Vec::new()),
        }
    }
}

/// The result of an acceptance.
#[derive(Debug, Clone, PartialEq)]
pub struct Accepted {
    /// The deployment (the original one, for a replay).
    pub deployment: Deployment,
    /// Whether this was a replay of an earlier request with the same key.
    pub replayed: bool,
}

/// The result of creating or replacing an environment.
#[derive(Debug, Clone, PartialEq)]
pub struct EnvironmentWrite {
    /// The environment as stored.
    pub environment: Environment,
    /// Whether it was created (rather than replaced).
    pub created: bool,
}

/// The right to drive one deployment until `expires_at`, proven by a fencing token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    /// The deployment.
    pub deployment: DeploymentId,
    /// Who holds it.
    pub owner: String,
    /// Strictly increasing per deployment: every claim gets a larger token, and writes with a smaller one fail.
    pub token: u64,
    /// When it lapses unless renewed.
    pub expires_at: Timestamp,
}

/// A claimed deployment and its lease.
#[derive(Debug, Clone)]
pub struct Claim {
    /// The deployment as stored at claim time.
    pub deployment: Deployment,
    /// The lease.
    pub lease: Lease,
}

/// Requests for the holder of a deployment, returned by every write so it learns of them at its next step.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[must_use]
pub struct Control {
    /// Someone asked to cancel.
    pub cancel_requested: bool,
    /// A newer deployment replaces this one.
    pub superseded_by: Option<DeploymentId>,
    /// The operator requests standing on it.
    pub operator: crate::control::Controls,
}

impl Control {
    /// What `deployment`'s record asks of its holder.
    pub fn of(deployment: &Deployment) -> Self {
        Self {
            cancel_requested: deployment.cancel_requested(),
            superseded_by: deployment.superseded_by(),
            operator: *deployment.controls(),
        }
    }
}

impl StoreError {
    /// The store's error for an operator request `deployment`'s record refused.
    #[must_use]
    pub fn refused(deployment: DeploymentId, error: crate::control::RequestError) -> Self {
        match error {
            crate::control::RequestError::AlreadyFinished(status) => Self::AlreadyFinished { deployment, status },
            crate::control::RequestError::NotNow(reason) => Self::NotNow { deployment, reason },
        }
    }
}

/// A webhook subscription.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WebhookSubscription {
    /// Its id.
    pub id: Uuid,
    /// Where deliveries go.
    pub url: String,
    /// Event type patterns (`deployment.*`, `target.updated`, `*`).
    pub events: Vec<String>,
    /// Environment patterns; empty means all.
    pub environments: Vec<EnvironmentPattern>,
    /// Whether deliveries are made.
    pub active: bool,
    /// Why it was disabled.
    pub disabled_reason: Option<String>,
    /// When it was created.
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: Timestamp,
    /// The signing secret (`whsec_...`); never serialized.
    #[serde(skip)]
    pub secret: String,
}

impl WebhookSubscription {
    /// Whether an event of `event_type` in `environment` is delivered to this subscription.
    #[must_use]
    pub fn matches(&self, event_type: EventType, environment: &EnvironmentName) -> bool {
        self.active
            && self.events.iter().any(|p| event_type.matches_pattern(p))
            && (self.environments.is_empty() || self.environments.iter().any(|p| p.matches(environment)))
    }
}

/// What one attempt's outcome does to a pending delivery (every attempt also counts one more in `attempts`; a
/// delivery no longer pending is left alone). Decided here, once: `MemoryStore` applies it through
/// [`WebhookDelivery::record_attempt`], the SQL stores bind its fields into their batched statements.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeliveryTransition {
    /// The delivery's new status.
    pub status: DeliveryStatus,
    /// The HTTP status of the answer, if one came.
    pub last_status_code: Option<u16>,
    /// When to try again, while still pending.
    pub next_attempt_at: Option<Timestamp>,
    /// Whether it was delivered now (`delivered_at` is the time of the attempt).
    pub delivered: bool,
    /// Whether the receiver asked for the subscription to end (410): it is disabled, its other pending deliveries
    /// fail.
    pub disables_subscription: bool,
}

impl DeliveryOutcome {
    /// What this outcome does to a pending delivery.
    #[must_use]
    pub fn transition(&self) -> DeliveryTransition {
        let done = |status, code| DeliveryTransition {
            status,
            last_status_code: code,
            next_attempt_at: None,
            delivered: false,
            disables_subscription: false,
        };
        match *self {
            Self::Delivered { status_code } => {
                DeliveryTransition { delivered: true, ..done(DeliveryStatus::Delivered, Some(status_code)) }
            }
            Self::Retry { status_code, next_attempt_at } => DeliveryTransition {
                next_attempt_at: Some(next_attempt_at),
                ..done(DeliveryStatus::Pending, status_code)
            },
            Self::GiveUp { status_code } => done(DeliveryStatus::Failed, status_code),
            Self::Gone => DeliveryTransition { disables_subscription: true, ..done(DeliveryStatus::Failed, Some(410)) },
        }
    }
}

/// The state of one webhook delivery.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeliveryStatus {
    /// Not delivered yet; will be tried at `next_attempt_at`.
    Pending,
    /// A 2xx answer was received.
    Delivered,
    /// Gave up after the retry schedule.
    Failed,
}

impl DeliveryStatus {
    /// Every status.
    pub const ALL: [Self; 3] = [Self::Pending, Self::Delivered, Self::Failed];

    /// Its name, as in JSON and in the SQL stores' `status` column.
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Delivered => "delivered",
            Self::Failed => "failed",
        }
    }
}

/// A webhook body: JSON text, kept as text from the moment it is written to the outbox, so what is stored is what is
/// signed and sent, byte for byte, and sending it never parses or re-encodes it.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(transparent)]
pub struct WebhookPayload(Box<serde_json::value::RawValue>);

impl WebhookPayload {
    /// The payload of `value`.
    #[must_use]
    pub fn of(value: &serde_json::Value) -> Self {
        // A `Value` always encodes; `RawValue::NULL` stands in should that ever change.
        let raw =
            serde_json::value::to_raw_value(value).unwrap_or_else(|_| serde_json::value::RawValue::NULL.to_owned());
        Self(raw)
    }

    /// The JSON text.
    #[must_use]
    pub fn as_str(&self) -> &str {
        self.0.get()
    }

    /// The JSON as a value (parses it).
    ///
    /// # Errors
    /// Never for a payload made by [`WebhookPayload::of`] or read back from a store.
    pub fn to_value(&self) -> Result<serde_json::Value, serde_json::Error> {
        serde_json::from_str(self.0.get())
    }
}

impl PartialEq for WebhookPayload {
    fn eq(&self, other: &Self) -> bool {
        self.as_str() == other.as_str()
    }
}

/// One delivery in the outbox.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WebhookDelivery {
    /// The delivery id, sent as `webhook-id` on every attempt.
    pub id: String,
    /// The subscription.
    pub subscription_id: Uuid,
    /// The event type.
    pub event_type: EventType,
    /// The deployment it reports.
    pub deployment_id: DeploymentId,
    /// The event's sequence number.
    pub seq: u64,
    /// The body to send, as the exact JSON text that is sent and signed.
    pub payload: WebhookPayload,
    /// Its state.
    pub status: DeliveryStatus,
    /// Attempts made.
    pub attempts: u32,
    /// The last HTTP status received.
    pub last_status_code: Option<u16>,
    /// When to try next.
    #[serde(with = "time::serde::rfc3339::option")]
    pub next_attempt_at: Option<Timestamp>,
    /// When it was delivered.
    #[serde(with = "time::serde::rfc3339::option")]
    pub delivered_at: Option<Timestamp>,
}

impl WebhookDelivery {
    /// A pending delivery of `event` to `subscription`, due at once, with the Standard Webhooks body
    /// `{"type", "timestamp", "data": <the deployment>}`. Its id (`msg_...`) is the `webhook-id` of every attempt.
    #[must_use]
    pub fn pending(subscription: Uuid, event: &Event, deployment: &serde_json::Value) -> Self {
        let timestamp = event.at.format(&time::format_description::well_known::Rfc3339).unwrap_or_default();
        Self {
            id: format!("msg_{}", Uuid::now_v7().simple()),
            subscription_id: subscription,
            event_type: event.event_type,
            deployment_id: event.deployment_id,
            seq: event.seq,
            payload: WebhookPayload::of(
                &serde_json::json!({"type": event.event_type.as_str(), "timestamp": timestamp, "data": deployment}),
            ),
            status: DeliveryStatus::Pending,
            attempts: 0,
            last_status_code: None,
            next_attempt_at: Some(event.at),
            delivered_at: None,
        }
    }

    /// Records one attempt's outcome. Returns whether the subscription must be disabled (the receiver said 410).
    #[must_use]
    pub fn record_attempt(&mut self, outcome: DeliveryOutcome, now: Timestamp) -> bool {
        if self.status != DeliveryStatus::Pending {
            return false;
        }
        let t = outcome.transition();
        self.attempts = self.attempts.saturating_add(1);
        self.status = t.status;
        self.last_status_code = t.last_status_code;
        self.next_attempt_at = t.next_attempt_at;
        if t.delivered {
            self.delivered_at = Some(now);
        }
        t.disables_subscription
    }
}

impl WebhookDelivery {
    /// Fails a pending delivery because its subscription was disabled.
    pub fn fail_disabled(&mut self) {
        if self.status == DeliveryStatus::Pending {
            self.status = DeliveryStatus::Failed;
            self.next_attempt_at = None;
        }
    }

    /// Makes the delivery pending again, due at `now`, its attempts counted afresh.
    pub fn reset_for_redelivery(&mut self, now: Timestamp) {
        self.status = DeliveryStatus::Pending;
        self.attempts = 0;
        self.next_attempt_at = Some(now);
        self.delivered_at = None;
    }
}

impl WebhookSubscription {
    /// Disables the subscription because its receiver answered 410 Gone.
    pub fn disable_gone(&mut self) {
        self.active = false;
        self.disabled_reason = Some("the receiver answered 410 Gone".to_owned());
    }
}

/// The result of one delivery attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeliveryOutcome {
    /// Delivered.
    Delivered {
        /// The 2xx status.
        status_code: u16,
    },
    /// Failed; try again at `next_attempt_at`.
    Retry {
        /// The status, if an answer came.
        status_code: Option<u16>,
        /// When.
        next_attempt_at: Timestamp,
    },
    /// Failed for good (schedule exhausted).
    GiveUp {
        /// The status, if an answer came.
        status_code: Option<u16>,
    },
    /// The receiver answered 410: disable the subscription.
    Gone,
}

/// Durable state of the engine.
///
/// # Contract
/// Every method is atomic: it happens entirely or not at all, and what it returns is durable when it returns.
/// - **Acceptance** ([`Store::accept`]) checks, in one transaction: the idempotency key (same key + same fingerprint →
///   the original deployment with `replayed`; another fingerprint → [`StoreError::IdempotencyKeyReuse`]; expired keys
///   are forgotten), `require_if_match` ([`StoreError::PreconditionRequired`]) and the expected revision
///   ([`StoreError::PreconditionFailed`]), plans the targets ([`Deployment::plan`]), applies the environment's
///   concurrency policy ([`StoreError::EnvironmentBusy`] for `reject`; for `supersede`, older queued deployments become
///   `superseded` and the active one gets `superseded_by`), bumps the environment's revision, and appends the
///   `deployment.queued` event and its webhook deliveries.
/// - **One active deployment per environment**: only the oldest non-terminal deployment of an environment is ever
///   claimable, so at most one runs per environment however many controllers claim.
/// - **Claims** ([`Store::claim`]) hand out that deployment when it is queued or its lease has lapsed, with a fencing
///   token larger than every earlier one. [`Store::record`], [`Store::renew`] and [`Store::release`] with a token that is
///   no longer current fail with [`StoreError::StaleToken`].
/// - **Records** apply a [`ProgressUpdate`] (status, targets, events, environment observations) together with the
///   webhook deliveries its events match; a terminal deployment refuses every change ([`StoreError::AlreadyFinished`]).
/// - **Events** are numbered from 1 per deployment without gaps.
/// - **Cancel** of a queued deployment that nobody holds cancels it at once; otherwise it is recorded for the holder,
///   returned in [`Control`] by its next write.
#[async_trait]
pub trait Store: Send + Sync {
    /// Creates or replaces an environment (bumping its revision), if `expected` matches the current revision.
    async fn put_environment(
        &self,
        name: &EnvironmentName,
        spec: EnvironmentSpec,
        expected: Option<Revision>,
        now: Timestamp,
    ) -> Result<EnvironmentWrite, StoreError>;

    /// An environment, with its active and queued deployments.
    async fn get_environment(&self, name: &EnvironmentName) -> Result<Environment, StoreError>;

    /// Environments by name.
    async fn list_environments(&self, page: &PageRequest) -> Result<Page<Environment>, StoreError>;

    /// Accepts a deployment atomically (see the trait's contract).
    async fn accept(&self, acceptance: Acceptance) -> Result<Accepted, StoreError>;

    /// A deployment.
    async fn get_deployment(&self, id: DeploymentId) -> Result<Deployment, StoreError>;

    /// Deployments, newest first.
    async fn list_deployments(
        &self,
        filter: &DeploymentFilter,
        page: &PageRequest,
    ) -> Result<Page<Deployment>, StoreError>;

    /// How many deployments pass `filter` (for gauges: no deployment is loaded).
    async fn count_deployments(&self, filter: &DeploymentFilter) -> Result<u64, StoreError>;

    /// Events of a deployment with `seq > after`, oldest first, at most `limit`.
    async fn events(&self, id: DeploymentId, after: u64, limit: usize) -> Result<Vec<Event>, StoreError>;

    /// Asks for a deployment to be cancelled.
    async fn request_cancel(&self, id: DeploymentId, now: Timestamp) -> Result<Deployment, StoreError>;

    /// The global freeze, if one was set (whether it still holds is [`crate::Freeze::holds_at`]'s to say).
    async fn global_freeze(&self) -> Result<Option<crate::schedule::Freeze>, StoreError>;

    /// Sets (`Some`) or lifts (`None`) the global freeze. Lifting it also ends every hold at once
    /// ([`Deployment::lift_hold`]): held deployments become claimable, and their holders read the rules again.
    async fn set_global_freeze(&self, freeze: Option<crate::schedule::Freeze>) -> Result<(), StoreError>;

    /// Records an operator's request (pause, resume, promote, abort) on a deployment, in one transaction:
    /// [`Deployment::request`] decides, the store writes the record and the update it returns (the request's event,
    /// and for an abort of a deployment nobody holds before it started, the stop). The holder learns of it through
    /// [`Control`] at its next write or renewal.
    ///
    /// # Errors
    /// `NotFound`; `AlreadyFinished` for a terminal deployment; `NotNow` when the request does not apply now.
    async fn request(
        &self,
        id: DeploymentId,
        request: &crate::control::OperatorRequest,
        now: Timestamp,
    ) -> Result<Deployment, StoreError>;

    /// Claims the next runnable deployment, if any, for `lease` from `now`: the head of an environment's queue whose
    /// lease has lapsed, or whose live lease an earlier incarnation of the same replica holds ([`restarted_owner`]:
    /// an owner written `replica#incarnation` takes over at once what `replica#<another incarnation>` held, since
    /// that process is gone; a replica proves that with a lock on its data directory before it uses a stable name).
    async fn claim(&self, owner: &str, now: Timestamp, lease: Duration) -> Result<Option<Claim>, StoreError>;

    /// Extends a lease.
    async fn renew(&self, lease: &Lease, now: Timestamp, duration: Duration) -> Result<(Lease, Control), StoreError>;

    /// Gives a lease up so another controller can claim at once (graceful shutdown).
    async fn release(&self, lease: &Lease) -> Result<(), StoreError>;

    /// Applies an update under a lease.
    async fn record(&self, lease: &Lease, update: ProgressUpdate) -> Result<Control, StoreError>;

    /// Forgets idempotency keys that expired before `now`; returns how many.
    async fn purge_idempotency_keys(&self, now: Timestamp) -> Result<u64, StoreError>;

    /// Whether a write would be stored now: readiness (`/readyz`) asks, so a load balancer sends writes elsewhere
    /// while this store cannot take them (a full disk, a read-only replica). A store that writes somewhere it can
    /// fail to writes a small record; the default, for stores that cannot fail to write (in memory), answers `Ok`.
    ///
    /// # Errors
    /// [`StoreError::Unavailable`] when the write failed.
    async fn check_writable(&self) -> Result<(), StoreError> {
        Ok(())
    }
}

/// Webhook subscriptions and their deliveries: the transactional outbox of a [`Store`].
///
/// A store that implements it enqueues, in the same transaction as each [`Store::accept`] and [`Store::record`], one
/// pending [`WebhookDelivery`] per subscription matching each event appended ([`WebhookSubscription::matches`]), and
/// applies every transition of a delivery through [`WebhookDelivery`]'s own methods, so the delivery state machine is
/// decided in one place.
#[async_trait]
pub trait WebhookStore: Send + Sync {
    /// Adds a webhook subscription.
    async fn create_webhook(&self, subscription: WebhookSubscription) -> Result<WebhookSubscription, StoreError>;

    /// Every webhook subscription.
    async fn list_webhooks(&self) -> Result<Vec<WebhookSubscription>, StoreError>;

    /// Removes a webhook subscription and its pending deliveries.
    async fn delete_webhook(&self, id: Uuid) -> Result<(), StoreError>;

    /// Claims up to `limit` pending deliveries due at `now`, oldest due first, hiding them from other dispatchers for
    /// `lease`. A subscription never has more than `per_subscription` deliveries claimed at once (counting those
    /// claimed earlier whose lease has not lapsed), so one slow or dead receiver cannot take every slot. Pending
    /// deliveries of a disabled subscription are marked failed instead of being returned.
    async fn claim_deliveries(
        &self,
        now: Timestamp,
        limit: usize,
        per_subscription: usize,
        lease: Duration,
    ) -> Result<Vec<(WebhookDelivery, WebhookSubscription)>, StoreError>;

    /// Records the outcomes of attempts, in one transaction. An outcome for a delivery that is no longer pending (a
    /// second dispatcher finished it after this one's lease lapsed) or that no longer exists (its subscription was
    /// deleted) is ignored. A [`DeliveryOutcome::Gone`] disables the subscription and fails its other pending
    /// deliveries.
    async fn complete_deliveries(
        &self,
        outcomes: &[(String, DeliveryOutcome)],
        now: Timestamp,
    ) -> Result<(), StoreError>;

    /// One round of a dispatcher's bookkeeping: records `outcomes` (as [`WebhookStore::complete_deliveries`]), then
    /// claims up to `limit` deliveries (as [`WebhookStore::claim_deliveries`]). Recording first frees the claims those outcomes held, so
    /// the claim can take their places. The SQL stores do both in one transaction. This default does them one after
    /// the other; when the claim fails after the outcomes were recorded, it logs the error and claims nothing (the
    /// next round claims again), so that no outcome is ever recorded twice.
    ///
    /// # Errors
    /// The store's, when the outcomes were not recorded (and nothing was claimed).
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
        self.complete_deliveries(outcomes, now).await?;
        if limit == 0 {
            return Ok(Vec::new());
        }
        match self.claim_deliveries(now, limit, per_subscription, lease).await {
            Ok(claimed) => Ok(claimed),
            Err(e) => {
                tracing::warn!(error = %e, "recorded webhook outcomes but could not claim more; claiming next round");
                Ok(Vec::new())
            }
        }
    }

    /// Makes a delivery of `subscription` pending again, due at `now`, with its attempts counted afresh (the retry
    /// schedule starts over). [`StoreError::NotFound`] when the subscription has no such delivery.
    async fn redeliver(&self, subscription: Uuid, id: &str, now: Timestamp) -> Result<WebhookDelivery, StoreError>;

    /// Deliveries of a subscription, newest first.
    async fn list_deliveries(
        &self,
        subscription: Uuid,
        page: &PageRequest,
    ) -> Result<Page<WebhookDelivery>, StoreError>;
}

/// API keys, kept as digests: the key itself is shown once, at creation, and never stored.
#[async_trait]
pub trait KeyStore: Send + Sync {
    /// Stores an API key record (its digest, never the key).
    async fn create_api_key(&self, record: ApiKeyRecord) -> Result<(), StoreError>;

    /// The key whose SHA-256 digest (lowercase hex) is `key_hash`, if any.
    async fn api_key_by_hash(&self, key_hash: &str) -> Result<Option<ApiKeyRecord>, StoreError>;

    /// Every API key, oldest first.
    async fn list_api_keys(&self) -> Result<Vec<ApiKeyRecord>, StoreError>;

    /// Revokes an API key: it authenticates nobody from now on.
    async fn delete_api_key(&self, id: Uuid) -> Result<(), StoreError>;
}

/// The slots through which agents on target hosts pull their assignments and report back.
#[async_trait]
pub trait AgentStore: Send + Sync {
    /// The agent slot of a target, if it ever had an assignment or a report.
    async fn agent_slot(
        &self,
        environment: &EnvironmentName,
        target: &TargetId,
    ) -> Result<Option<AgentSlot>, StoreError>;

    /// Assigns `desired` to a target's agent ([`AgentSlot::assign`]: a new generation unless that very assignment is
    /// already there). A write fenced like [`Store::record`]: with a `fencing_token` above 0 it is refused
    /// ([`StoreError::StaleToken`], [`StoreError::AlreadyFinished`]) unless that token is the deployment's current
    /// lease, so a controller that lost its lease (paused, cut off) cannot replace its successor's assignment. 0
    /// assigns without a lease (tools, tests).
    async fn assign_agent(
        &self,
        environment: &EnvironmentName,
        target: &TargetId,
        desired: DesiredState,
        deployment: DeploymentId,
        fencing_token: u64,
        now: Timestamp,
    ) -> Result<AgentSlot, StoreError>;

    /// Records an agent's report, which is also its heartbeat.
    async fn record_agent_report(
        &self,
        environment: &EnvironmentName,
        target: &TargetId,
        report: AgentReport,
        now: Timestamp,
    ) -> Result<AgentSlot, StoreError>;
}

/// The append-only audit log of who changed what.
#[async_trait]
pub trait AuditLog: Send + Sync {
    /// Appends an entry to the audit log.
    async fn append_audit(&self, entry: AuditEntry) -> Result<(), StoreError>;

    /// Audit entries, newest first; the cursor is the last entry's id.
    async fn list_audit(&self, filter: &AuditFilter, page: &PageRequest) -> Result<Page<AuditEntry>, StoreError>;
}

/// Everything `deployd` keeps: the engine's [`Store`] and the server's tables. Implemented by every type that
/// implements all five traits; an embedder that runs only the engine implements [`Store`] alone.
pub trait FullStore: Store + WebhookStore + KeyStore + AgentStore + AuditLog {}

impl<T: Store + WebhookStore + KeyStore + AgentStore + AuditLog + ?Sized> FullStore for T {}

/// Whether a lease held by `holder` may be claimed at once by `claimant` because both name the same replica
/// (`replica#incarnation`) and the claimant is a later incarnation of it: the process that held it has restarted. An
/// owner without `#` never matches, and an incarnation never takes over its own leases (it is driving them).
///
/// ```
/// use deploy_core::restarted_owner;
/// assert!(restarted_owner("deployd-a1#one", "deployd-a1#two"));
/// assert!(!restarted_owner("deployd-a1#one", "deployd-a1#one"));
/// assert!(!restarted_owner("deployd-a1#one", "deployd-b2#two"));
/// assert!(!restarted_owner("replica-1", "replica-1"));
/// ```
#[must_use]
pub fn restarted_owner(holder: &str, claimant: &str) -> bool {
    match (holder.split_once('#'), claimant.split_once('#')) {
        (Some((a, one)), Some((b, two))) => !a.is_empty() && a == b && one != two,
        _ => false,
    }
}
macro_rules! forward_store {
    ($($ptr:ty),*) => {$(
        #[async_trait]
        impl<T: Store + ?Sized> Store for $ptr {
            async fn put_environment(&self, name: &EnvironmentName, spec: EnvironmentSpec, expected: Option<Revision>, now: Timestamp) -> Result<EnvironmentWrite, StoreError> {
                (**self).put_environment(name, spec, expected, now).await
            }
            async fn get_environment(&self, name: &EnvironmentName) -> Result<Environment, StoreError> {
                (**self).get_environment(name).await
            }
            async fn list_environments(&self, page: &PageRequest) -> Result<Page<Environment>, StoreError> {
                (**self).list_environments(page).await
            }
            async fn accept(&self, acceptance: Acceptance) -> Result<Accepted, StoreError> {
                (**self).accept(acceptance).await
            }
            async fn get_deployment(&self, id: DeploymentId) -> Result<Deployment, StoreError> {
                (**self).get_deployment(id).await
            }
            async fn list_deployments(&self, filter: &DeploymentFilter, page: &PageRequest) -> Result<Page<Deployment>, StoreError> {
                (**self).list_deployments(filter, page).await
            }
            async fn count_deployments(&self, filter: &DeploymentFilter) -> Result<u64, StoreError> {
                (**self).count_deployments(filter).await
            }
            async fn events(&self, id: DeploymentId, after: u64, limit: usize) -> Result<Vec<Event>, StoreError> {
                (**self).events(id, after, limit).await
            }
            async fn request_cancel(&self, id: DeploymentId, now: Timestamp) -> Result<Deployment, StoreError> {
                (**self).request_cancel(id, now).await
            }
            async fn request(&self, id: DeploymentId, request: &crate::control::OperatorRequest, now: Timestamp) -> Result<Deployment, StoreError> {
                (**self).request(id, request, now).await
            }
            async fn global_freeze(&self) -> Result<Option<crate::schedule::Freeze>, StoreError> {
                (**self).global_freeze().await
            }
            async fn set_global_freeze(&self, freeze: Option<crate::schedule::Freeze>) -> Result<(), StoreError> {
                (**self).set_global_freeze(freeze).await
            }
            async fn claim(&self, owner: &str, now: Timestamp, lease: Duration) -> Result<Option<Claim>, StoreError> {
                (**self).claim(owner, now, lease).await
            }
            async fn renew(&self, lease: &Lease, now: Timestamp, duration: Duration) -> Result<(Lease, Control), StoreError> {
                (**self).renew(lease, now, duration).await
            }
            async fn release(&self, lease: &Lease) -> Result<(), StoreError> {
                (**self).release(lease).await
            }
            async fn record(&self, lease: &Lease, update: ProgressUpdate) -> Result<Control, StoreError> {
                (**self).record(lease, update).await
            }
            async fn purge_idempotency_keys(&self, now: Timestamp) -> Result<u64, StoreError> {
                (**self).purge_idempotency_keys(now).await
            }
            async fn check_writable(&self) -> Result<(), StoreError> {
                (**self).check_writable().await
            }
        }
    )*};
}

forward_store!(std::sync::Arc<T>, Box<T>, &T);

macro_rules! forward_webhookstore {
    ($($ptr:ty),*) => {$(
        #[async_trait]
        impl<T: WebhookStore + ?Sized> WebhookStore for $ptr {
            async fn create_webhook(&self, subscription: WebhookSubscription) -> Result<WebhookSubscription, StoreError> {
                (**self).create_webhook(subscription).await
            }
            async fn list_webhooks(&self) -> Result<Vec<WebhookSubscription>, StoreError> {
                (**self).list_webhooks().await
            }
            async fn delete_webhook(&self, id: Uuid) -> Result<(), StoreError> {
                (**self).delete_webhook(id).await
            }
            async fn claim_deliveries(&self, now: Timestamp, limit: usize, per_subscription: usize, lease: Duration) -> Result<Vec<(WebhookDelivery, WebhookSubscription)>, StoreError> {
                (**self).claim_deliveries(now, limit, per_subscription, lease).await
            }
            async fn complete_deliveries(&self, outcomes: &[(String, DeliveryOutcome)], now: Timestamp) -> Result<(), StoreError> {
                (**self).complete_deliveries(outcomes, now).await
            }
            async fn complete_and_claim(&self, outcomes: &[(String, DeliveryOutcome)], now: Timestamp, limit: usize, per_subscription: usize, lease: Duration) -> Result<Vec<(WebhookDelivery, WebhookSubscription)>, StoreError> {
                (**self).complete_and_claim(outcomes, now, limit, per_subscription, lease).await
            }
            async fn redeliver(&self, subscription: Uuid, id: &str, now: Timestamp) -> Result<WebhookDelivery, StoreError> {
                (**self).redeliver(subscription, id, now).await
            }
            async fn list_deliveries(&self, subscription: Uuid, page: &PageRequest) -> Result<Page<WebhookDelivery>, StoreError> {
                (**self).list_deliveries(subscription, page).await
            }
        }
    )*};
}

forward_webhookstore!(std::sync::Arc<T>, Box<T>, &T);

macro_rules! forward_keystore {
    ($($ptr:ty),*) => {$(
        #[async_trait]
        impl<T: KeyStore + ?Sized> KeyStore for $ptr {
            async fn create_api_key(&self, record: ApiKeyRecord) -> Result<(), StoreError> {
                (**self).create_api_key(record).await
            }
            async fn api_key_by_hash(&self, key_hash: &str) -> Result<Option<ApiKeyRecord>, StoreError> {
                (**self).api_key_by_hash(key_hash).await
            }
            async fn list_api_keys(&self) -> Result<Vec<ApiKeyRecord>, StoreError> {
                (**self).list_api_keys().await
            }
            async fn delete_api_key(&self, id: Uuid) -> Result<(), StoreError> {
                (**self).delete_api_key(id).await
            }
        }
    )*};
}

forward_keystore!(std::sync::Arc<T>, Box<T>, &T);

macro_rules! forward_agentstore {
    ($($ptr:ty),*) => {$(
        #[async_trait]
        impl<T: AgentStore + ?Sized> AgentStore for $ptr {
            async fn agent_slot(&self, environment: &EnvironmentName, target: &TargetId) -> Result<Option<AgentSlot>, StoreError> {
                (**self).agent_slot(environment, target).await
            }
            async fn assign_agent(&self, environment: &EnvironmentName, target: &TargetId, desired: DesiredState, deployment: DeploymentId, fencing_token: u64, now: Timestamp) -> Result<AgentSlot, StoreError> {
                (**self).assign_agent(environment, target, desired, deployment, fencing_token, now).await
            }
            async fn record_agent_report(&self, environment: &EnvironmentName, target: &TargetId, report: AgentReport, now: Timestamp) -> Result<AgentSlot, StoreError> {
                (**self).record_agent_report(environment, target, report, now).await
            }
        }
    )*};
}

forward_agentstore!(std::sync::Arc<T>, Box<T>, &T);

macro_rules! forward_auditlog {
    ($($ptr:ty),*) => {$(
        #[async_trait]
        impl<T: AuditLog + ?Sized> AuditLog for $ptr {
            async fn append_audit(&self, entry: AuditEntry) -> Result<(), StoreError> {
                (**self).append_audit(entry).await
            }
            async fn list_audit(&self, filter: &AuditFilter, page: &PageRequest) -> Result<Page<AuditEntry>, StoreError> {
                (**self).list_audit(filter, page).await
            }
        }
    )*};
}

forward_auditlog!(std::sync::Arc<T>, Box<T>, &T);

#[cfg(test)]
mod tests {
    use super::{Acceptance, IdempotencyRecord, StoreError};
    use crate::environment::ConcurrencyPolicy;
    use crate::names::{DeploymentId, EnvironmentName, Fingerprint, IdempotencyKey, Revision};

    #[test]
    fn the_acceptance_policy_is_decided_in_one_place() {
        let env: EnvironmentName = "prod".parse().unwrap_or_else(|_| unreachable!());
        let at = |n| Revision::new(n);
        assert!(Acceptance::check_revision(None, &env, false, at(3)).is_ok());
        assert!(matches!(
            Acceptance::check_revision(None, &env, true, at(3)),
            Err(StoreError::PreconditionRequired { .. })
        ));
        assert!(Acceptance::check_revision(Some(at(3)), &env, true, at(3)).is_ok());
        assert!(matches!(
            Acceptance::check_revision(Some(at(2)), &env, false, at(3)),
            Err(StoreError::PreconditionFailed { expected, current }) if expected == at(2) && current == at(3)
        ));

        let (a, b) = (DeploymentId::new(), DeploymentId::new());
        assert_eq!(Acceptance::superseding(&env, ConcurrencyPolicy::Queue, &[a, b]).ok(), Some(vec![]));
        assert_eq!(Acceptance::superseding(&env, ConcurrencyPolicy::Supersede, &[a, b]).ok(), Some(vec![a, b]));
        assert_eq!(Acceptance::superseding(&env, ConcurrencyPolicy::Reject, &[]).ok(), Some(vec![]));
        assert!(matches!(
            Acceptance::superseding(&env, ConcurrencyPolicy::Reject, &[a, b]),
            Err(StoreError::EnvironmentBusy { active, .. }) if active == a
        ));

        let record = IdempotencyRecord {
            scope: "key:ci".into(),
            key: IdempotencyKey::new("k-1").unwrap_or_else(|_| unreachable!()),
            fingerprint: Fingerprint::of(b"request"),
            expires_at: time::OffsetDateTime::UNIX_EPOCH,
        };
        assert!(record.check_replay(Fingerprint::of(b"request").as_str()).is_ok());
        assert!(matches!(record.check_replay("other"), Err(StoreError::IdempotencyKeyReuse { .. })));
    }

    #[test]
    fn delivery_status_names_are_their_json() {
        for status in super::DeliveryStatus::ALL {
            assert_eq!(serde_json::to_value(status).ok(), Some(serde_json::json!(status.as_str())));
        }
    }

    #[test]
    fn the_delivery_state_machine_is_decided_in_one_place() {
        use super::{DeliveryOutcome, DeliveryStatus};
        let at = time::OffsetDateTime::UNIX_EPOCH;
        let t = DeliveryOutcome::Delivered { status_code: 204 }.transition();
        assert_eq!((t.status, t.last_status_code, t.delivered), (DeliveryStatus::Delivered, Some(204), true));
        let t = DeliveryOutcome::Retry { status_code: Some(503), next_attempt_at: at }.transition();
        assert_eq!((t.status, t.next_attempt_at, t.delivered), (DeliveryStatus::Pending, Some(at), false));
        let t = DeliveryOutcome::GiveUp { status_code: None }.transition();
        assert_eq!((t.status, t.last_status_code, t.disables_subscription), (DeliveryStatus::Failed, None, false));
        let t = DeliveryOutcome::Gone.transition();
        assert_eq!((t.status, t.last_status_code, t.disables_subscription), (DeliveryStatus::Failed, Some(410), true));
    }
}
