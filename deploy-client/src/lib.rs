//! # deploy-client
//!
//! The typed async client of the Deployment API (`deployd`), and the receiver side of its webhooks.
//!
//! - [`Client`]: every endpoint of the contract with `deploy-core`'s types. Submissions and rollbacks carry an
//!   idempotency key that every retry reuses, so a retry after a lost answer never deploys twice. Failed calls are
//!   retried with backoff and jitter on connection errors, timeouts, 5xx and 429 ([`RetryPolicy`]), honouring
//!   `Retry-After`, never on other 4xx. [`Client::wait`] polls to the end; [`Client::watch`] streams events over SSE
//!   and resumes after a dropped connection without losing or repeating one; listings are [`futures::Stream`]s too.
//! - [`Error`]: transport, timeout, or the server's [`Problem`] (RFC 9457), to match on.
//! - [`webhooks`]: verify a delivery's Standard Webhooks signature and timestamp in one call.
//!
//! ```no_run
//! # async fn demo() -> Result<(), deploy_client::Error> {
//! use futures::StreamExt as _;
//!
//! let client = deploy_client::Client::builder("http://127.0.0.1:8080").token("dk_...").build()?;
//! let request = deploy_core::DeploymentRequest {
//!     environment: "prod".into(),
//!     service: "checkout".into(),
//!     version: "2.0.1".into(),
//!     ..Default::default()
//! };
//! let submitted = client.submit(&request, Default::default()).await?;
//! let mut events = std::pin::pin!(client.watch(submitted.deployment.id(), 0));
//! while let Some(event) = events.next().await {
//!     let event = event?;
//!     println!("{} {}", event.event_type.as_str(), event.message);
//! }
//! # Ok(()) }
//! ```
//!
//! A webhook receiver:
//!
//! ```
//! use deploy_client::webhooks::{self, WebhookEvent};
//!
//! fn on_delivery(secret: &str, headers: &http::HeaderMap, body: &[u8]) -> Result<(), webhooks::VerifyError> {
//!     let event: WebhookEvent = webhooks::verify(secret, headers, body)?;
//!     println!("{} for deployment {}", event.event_type, event.data["id"]);
//!     Ok(())
//! }
//! ```

mod client;
mod error;
mod types;
pub mod webhooks;

pub use client::{Client, ClientBuilder, RetryPolicy};
pub use deploy_core::ProblemKind;
/// The core types the client speaks in: names, revisions, keys, filters, pages and the answer to a submission are the
/// same types an embedded orchestrator uses.
pub use deploy_core::{
    AuditFilter, DeploymentFilter, EnvironmentName, IdempotencyKey, Page, PageRequest, Revision, Submitted,
};
pub use error::{Error, FieldError, Problem};
pub use types::{ApiKey, Delivery, EventPage, NewWebhook, SubmitOptions, Webhook};
