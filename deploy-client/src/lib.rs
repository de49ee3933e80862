//! # deploy-client
//!
//! Talking to `deployd`. For now: [`webhooks`], the receiver side of its signed webhook deliveries, so a team can
//! write a receiver in a few lines and trust what it gets.
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

pub mod webhooks;
