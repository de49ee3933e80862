//! Shapes of the API that `deploy-core` has no type for (administration), and the options of some calls.

use deploy_core::{
    DeliveryStatus, DeploymentId, EnvironmentPattern, Event, EventType, IdempotencyKey, Revision, Role, Timestamp,
};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// Options of [`crate::Client::submit`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SubmitOptions {
    /// The idempotency key; a random one is generated when `None`. Every retry of the call reuses it.
    pub idempotency_key: Option<IdempotencyKey>,
    /// Submit only if the environment is still at this revision (`If-Match`).
    pub if_match: Option<Revision>,
}

/// A page of events, oldest first.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct EventPage {
    /// The events.
    pub items: Vec<Event>,
    /// Pass as `after` for the next page.
    pub next_after: u64,
}

/// An API key (the key itself only in the answer to its creation).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiKey {
    /// Its id.
    pub id: Uuid,
    /// Its name; the principal is `key:<name>`.
    pub name: String,
    /// Its role.
    pub role: Role,
    /// Its environment patterns.
    pub environments: Vec<EnvironmentPattern>,
    /// Who created it.
    pub created_by: String,
    /// When.
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: Timestamp,
    /// The key (`dk_...`): only in the answer to its creation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    /// The person it belongs to: approvals count people, so this key and that person's tokens are one approver.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,
}

/// A new webhook subscription.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct NewWebhook {
    /// Where deliveries go.
    pub url: String,
    /// Event types or patterns (`deployment.*`, `target.updated`, `*`).
    pub events: Vec<String>,
    /// Environment patterns; empty for every environment.
    pub environments: Vec<String>,
}

/// A webhook subscription (the secret only in the answer to its creation).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Webhook {
    /// Its id.
    pub id: Uuid,
    /// Where deliveries go.
    pub url: String,
    /// Event types or patterns.
    pub events: Vec<String>,
    /// Environment patterns; empty for every environment.
    pub environments: Vec<String>,
    /// Whether deliveries are made.
    pub active: bool,
    /// Why it was disabled.
    pub disabled_reason: Option<String>,
    /// When it was created.
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: Timestamp,
    /// The signing secret (`whsec_...`): only in the answer to its creation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret: Option<String>,
}

/// One delivery of an event to a subscription.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Delivery {
    /// Its id, the `webhook-id` of every attempt.
    pub id: String,
    /// The event type.
    pub event_type: EventType,
    /// The deployment it reports.
    pub deployment_id: DeploymentId,
    /// Pending, delivered or failed.
    pub status: DeliveryStatus,
    /// Attempts made.
    pub attempts: u32,
    /// The last HTTP status received.
    pub last_status_code: Option<u16>,
    /// When the next attempt is due.
    #[serde(with = "time::serde::rfc3339::option")]
    pub next_attempt_at: Option<Timestamp>,
    /// When a 2xx was received.
    #[serde(with = "time::serde::rfc3339::option")]
    pub delivered_at: Option<Timestamp>,
}
