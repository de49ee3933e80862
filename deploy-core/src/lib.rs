//! # deploy-core
//!
//! The domain and the engine of API-based deployment: a caller says *what* should run where, the
//! [`Orchestrator`] durably accepts it, and a controller reconciles the desired state with the actual state through
//! pluggable [`Executor`]s under a rollout strategy, verifying health and recording every step as an [`Event`] in a
//! [`Store`].
//!
//! - Domain types: [`DeploymentRequest`] → [`DeploymentSpec`] (validated, secrets as references),
//!   [`Environment`], [`Deployment`] with per-target [`TargetProgress`] and a [`Summary`], [`Event`]s.
//! - Traits: [`Executor`], [`Store`], [`SecretResolver`], [`Clock`].
//! - The engine: [`Orchestrator`] (submit, get, list, watch, cancel, rollback, the controller loop) and
//!   [`ExecutorRouter`] (the gateway pattern).
//!
//! `deploy-testkit` has an in-memory [`Store`], a fault-injecting executor and conformance suites; `examples/embedded`
//! shows a whole service.
//!
//! ```
//! use deploy_core::{DeploymentRequest, RolloutStrategy, CountOrPercent};
//! let request: DeploymentRequest = serde_json::from_str(r#"{
//!     "environment": "prod", "service": "checkout", "version": "2.0.1",
//!     "strategy": {"type": "rolling", "batch_size": "25%"},
//!     "secrets": {"DB_PASSWORD": {"ref": "vault://kv/checkout/db#password"}}
//! }"#).unwrap();
//! let spec = request.validate().unwrap();
//! assert_eq!(spec.strategy(), &RolloutStrategy::Rolling {
//!     batch_size: CountOrPercent::Percent(25),
//!     pause: deploy_core::HumanDuration::ZERO,
//! });
//!
//! let inline: DeploymentRequest = serde_json::from_str(r#"{
//!     "environment": "prod", "service": "checkout", "version": "2.0.1",
//!     "config": {"DB_PASSWORD": "hunter2"}
//! }"#).unwrap();
//! assert!(inline.validate().unwrap_err().has_hardcoded_secret());
//! ```

mod access;
mod agent;
mod auth;
mod clock;
pub mod control;
mod deployment;
mod duration;
mod engine;
mod environment;
mod error;
mod event;
mod executor;
mod names;
mod problem;
pub mod schedule;
mod secrets;
pub mod spec;
mod state;
mod store;
mod webhook;

pub use access::{ApiKeyRecord, AuditEntry, AuditFilter};
pub use agent::{AgentReport, AgentSlot};
/// Re-exported so implementations of [`Executor`], [`Store`] and the other traits need no dependency of their own.
pub use async_trait::async_trait;
pub use auth::{Action, EnvironmentPattern, Forbidden, PatternError, Principal, Role};
pub use clock::{Clock, SystemClock, Timestamp, add as add_duration, elapsed_between};
pub use control::{
    AbortRequest, Approval, Controls, Decision, MAX_COMMENT, OperatorAction, OperatorRequest, RequestError,
};
pub use deployment::{
    Deployment, DeploymentDraft, DeploymentStatus, ProgressUpdate, Release, StatusChange, Summary, TargetObservation,
    TargetPlan, TargetProgress, TargetStatus, UpdateError,
};
pub use duration::{DurationParseError, HumanDuration};
pub use engine::ShutdownTrigger;
pub use engine::{
    EngineObserver, Orchestrator, OrchestratorBuilder, OrchestratorConfig, RollbackTo, ShutdownSignal, Submission,
    Submitted, SubmitterQuota,
};
pub use environment::{
    ConcurrencyPolicy, Environment, EnvironmentSpec, EnvironmentTarget, MAX_REQUIRED_APPROVALS, MAX_TARGETS,
    Protection, TargetDefinition,
};
pub use error::Error;
pub use event::{Event, EventStatus, EventType, NewEvent};
pub use executor::{ApplyContext, ErrorClass, Executor, ExecutorError, ExecutorRouter, Outcome, Progress, Target};
pub use names::{
    DeploymentId, EnvironmentName, ExecutorKind, Fingerprint, IdempotencyKey, NameError, Revision, ServiceName,
    TargetId, Version,
};
pub use problem::ProblemKind;
pub use schedule::{Freeze, Hold, Period, Schedule};
pub use secrets::{
    DEFAULT_ENV_PREFIX, EnvSecretResolver, FileSecretResolver, REDACTED, ResolvedSecrets, SchemeResolver, Scrubber,
    ScrubbingStream, SecretError, SecretRef, SecretRefError, SecretResolver, SecretScope, SecretValue, in_scope,
    is_sensitive_key, references_of, resolve_for, secret_shape,
};
pub use spec::{
    Artifact, CanaryStep, ConfigValue, CountOrPercent, DeploymentRequest, DeploymentSpec, ExecutionMode, FailurePolicy,
    FieldError, ImperativeStep, OnFailure, RolloutStrategy, TargetSelector, UnreachableAction, UnreachablePolicy,
    ValidationErrors, VerifyPolicy, is_unprintable,
};
pub use state::{ActualState, DesiredState, Health, Observation};
pub use store::{
    Acceptance, Accepted, AgentStore, AuditLog, Claim, Control, DeliveryOutcome, DeliveryStatus, DeliveryTransition,
    DeploymentFilter, EnvironmentWrite, FullStore, IdempotencyRecord, KeyStore, Lease, Page, PageRequest, QuotaCheck,
    Store, StoreError, WebhookDelivery, WebhookPayload, WebhookStore, WebhookSubscription, restarted_owner,
};
pub use webhook::{RetrySchedule, RetryScheduleError};
