//! # deploy-server
//!
//! The HTTP Deployment API (`design/api.md`) over a [`deploy_core::Orchestrator`], and `deployd`, the binary that
//! serves it on the embedded SQLite store or on PostgreSQL.
//!
//! - [`router`] builds the axum router from an [`AppState`]: authentication (API keys and JWTs), RBAC, idempotency
//!   keys, conditional requests, RFC 9457 problems, rate limits, request ids, metrics and the audit log.
//! - [`start`] runs everything `deployd serve` runs, from [`Settings`].
//! - [`Dispatcher`] delivers the store's webhook outbox: signed (Standard Webhooks), retried on a schedule, one
//!   receiver never slowing the others.
//!
//! ```
//! # #[tokio::main]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let data_dir = std::env::temp_dir().join(format!("deploy-server-doc-{}", std::process::id()));
//! let settings = deploy_server::Settings {
//!     listen: "127.0.0.1:0".parse()?, // any free port
//!     data_dir: data_dir.clone(),     // the embedded SQLite store
//!     dev: true,
//!     ..Default::default()
//! };
//! let running = deploy_server::start(settings).await?;
//! let health = reqwest::get(format!("http://{}/healthz", running.addr)).await?;
//! assert!(health.status().is_success());
//! running.shutdown().await;
//! # std::fs::remove_dir_all(&data_dir)?;
//! # Ok(()) }
//! ```

mod agents;
mod app;
mod auth;
#[cfg(feature = "demo")]
pub mod demo;
#[cfg(feature = "demo")]
pub mod demo_app;
mod extract;
mod listen;
mod metrics;
pub mod openapi;
mod paging;
mod problem;
mod routes;
mod server;
mod streams;
mod webhooks;

pub use agents::{AgentExecutor, AgentWatch};
pub use app::{ApiConfig, AppState, BODY_LIMIT, MAX_POLLS_PER_PRINCIPAL, router};
pub use auth::{
    Authenticator, JwtConfig, JwtConfigError, KEY_CACHE_TTL, KEY_PREFIX, generate_key, is_well_formed_key, key_digest,
};
pub use listen::{ListenConfig, TlsError, TlsFiles};
pub use metrics::{Gauges, Metrics};
pub use paging::DEFAULT_TARGETS_PER_RESPONSE;
pub use problem::{Problem, ProblemKind};
pub use server::{Running, Settings, StartError, start, terminated};
pub use webhooks::api::{SECRET_PREFIX, generate_secret};
pub use webhooks::dispatch::{Dispatcher, DispatcherConfig, DispatcherError};
pub use webhooks::guard::{AddressPolicy, CidrError};
pub use webhooks::sealed::{SealError, SecretsKey};
