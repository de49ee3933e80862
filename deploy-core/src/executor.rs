//! The [`Executor`] trait: how the engine changes and observes targets, and the router that picks one per target.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use async_trait::async_trait;
use serde_json::Value;

use crate::environment::EnvironmentTarget;
use crate::names::{DeploymentId, EnvironmentName, TargetId};
use crate::secrets::ResolvedSecrets;
use crate::spec::ImperativeStep;
use crate::state::{DesiredState, Health, Observation};

/// A target as an executor sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct Target {
    /// The environment it belongs to.
    pub environment: EnvironmentName,
    /// Its id.
    pub id: TargetId,
    /// Its labels.
    pub labels: BTreeMap<String, String>,
    /// The executor kind the environment names for it.
    pub executor: String,
    /// Executor-specific configuration from the environment.
    pub config: Value,
}

impl Target {
    /// The executor's view of an environment target.
    #[must_use]
    pub fn of(environment: &EnvironmentName, t: &EnvironmentTarget) -> Self {
        Self {
            environment: environment.clone(),
            id: t.id.clone(),
            labels: t.labels.clone(),
            executor: t.executor.clone(),
            config: t.config.clone(),
        }
    }
}

/// What an apply or step is about: the deployment, the desired state and the secrets resolved for this call.
#[derive(Debug, Clone, Copy)]
pub struct ApplyContext<'a> {
    /// The deployment driving the change.
    pub deployment: DeploymentId,
    /// What should run.
    pub desired: &'a DesiredState,
    /// Secrets resolved for this call only; never store or log them.
    pub secrets: &'a ResolvedSecrets,
    /// The lease token of the controller making the call: strictly increasing per deployment, so an executor that
    /// remembers the largest token it has seen for a target can refuse a smaller one (a controller that lost its lease
    /// while paused or cut off, and has not noticed yet). An agent passes on the token of its assignment's lease. 0 when
    /// no lease stands behind the call (a tool or a test calling an executor directly).
    pub fencing_token: u64,
}

/// How the engine should treat an executor error.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorClass {
    /// Transient (a timeout, a 503): the engine retries with bounded backoff.
    Retryable,
    /// Will not get better by retrying (bad artifact, refused config): the target fails.
    Permanent,
    /// The target cannot be reached (network partition, host down): the unreachable policy decides.
    Unreachable,
}

/// An executor's error: a class that drives the engine's decision and a message for people.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct ExecutorError {
    class: ErrorClass,
    message: String,
}

impl ExecutorError {
    /// A transient error.
    #[must_use]
    pub fn retryable(message: impl Into<String>) -> Self {
        Self { class: ErrorClass::Retryable, message: message.into() }
    }
    /// An error retrying will not fix.
    #[must_use]
    pub fn permanent(message: impl Into<String>) -> Self {
        Self { class: ErrorClass::Permanent, message: message.into() }
    }
    /// The target cannot be reached.
    #[must_use]
    pub fn unreachable(message: impl Into<String>) -> Self {
        Self { class: ErrorClass::Unreachable, message: message.into() }
    }
    /// Its class.
    #[must_use]
    pub fn class(&self) -> ErrorClass {
        self.class
    }
    /// Its message.
    #[must_use]
    pub fn message(&self) -> &str {
        &self.message
    }
    /// The same error with every secret value `scrubber` knows replaced in its message.
    #[must_use]
    pub fn scrubbed(mut self, scrubber: &crate::secrets::Scrubber) -> Self {
        scrubber.scrub_in_place(&mut self.message);
        self
    }
}

/// What an imperative step printed, kept in the deployment's events.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StepOutput {
    /// The output, already trimmed to a sensible size by the executor.
    pub output: String,
}

/// Changes and observes targets of one kind (processes, containers, hosts behind an agent, ...).
///
/// # Contract
/// - `observe` has no side effects and may be called at any time, concurrently for different targets.
/// - `apply` brings the target to `desired` and is **idempotent**: applying what already runs succeeds without
///   disruption, and an apply interrupted half-way can be applied again. It returns once the change is made, not once
///   the target is healthy; the engine then calls `verify` until health holds. The engine never runs two calls that
///   change the same target at once.
/// - `verify` is one health probe of the desired version; the engine polls it at the spec's interval.
/// - `run_step` runs one imperative step; steps are run in order and may be retried when they fail retryably, so
///   they should be idempotent too. Executors that do not support imperative mode keep the default, which refuses.
/// - Errors carry an [`ErrorClass`]: retryable errors are retried with bounded backoff, permanent errors fail the
///   target, unreachable errors start the unreachable policy's wait.
#[async_trait]
pub trait Executor: Send + Sync {
    /// What runs on `target` now.
    async fn observe(&self, target: &Target) -> Result<Observation, ExecutorError>;

    /// Brings `target` to `ctx.desired`.
    async fn apply(&self, target: &Target, ctx: ApplyContext<'_>) -> Result<(), ExecutorError>;

    /// One health probe of `desired` on `target`.
    async fn verify(&self, target: &Target, desired: &DesiredState) -> Result<Health, ExecutorError>;

    /// [`Executor::apply`], returning what the change printed (hook output, say), which the engine keeps in the
    /// deployment's events. Executors with nothing to report keep the default, which calls `apply`.
    async fn apply_with_output(&self, target: &Target, ctx: ApplyContext<'_>) -> Result<StepOutput, ExecutorError> {
        self.apply(target, ctx).await.map(|()| StepOutput::default())
    }

    /// Whether this executor makes the host it runs on start programs that a target's configuration names (hooks,
    /// commands). Creating or changing such targets is host-level power: the orchestrator allows it only to admins of
    /// every environment ([`crate::Action::DefineHostTargets`]). The default is `false`.
    fn runs_host_programs(&self) -> bool {
        false
    }

    /// For routers: the executor that serves `target`, so the engine can call it directly for each of its calls.
    /// Everything else keeps the default, `None`, and is called itself.
    fn route(&self, target: &Target) -> Option<&dyn Executor> {
        let _ = target;
        None
    }

    /// Runs one imperative step on `target`.
    async fn run_step(
        &self,
        target: &Target,
        step: &ImperativeStep,
        ctx: ApplyContext<'_>,
    ) -> Result<StepOutput, ExecutorError> {
        let _ = (target, ctx);
        Err(ExecutorError::permanent(format!(
            "this executor does not support imperative steps (asked for {:?})",
            step.action
        )))
    }
}

#[async_trait]
impl<T: Executor + ?Sized> Executor for Arc<T> {
    async fn observe(&self, target: &Target) -> Result<Observation, ExecutorError> {
        (**self).observe(target).await
    }
    async fn apply(&self, target: &Target, ctx: ApplyContext<'_>) -> Result<(), ExecutorError> {
        (**self).apply(target, ctx).await
    }
    async fn apply_with_output(&self, target: &Target, ctx: ApplyContext<'_>) -> Result<StepOutput, ExecutorError> {
        (**self).apply_with_output(target, ctx).await
    }
    async fn verify(&self, target: &Target, desired: &DesiredState) -> Result<Health, ExecutorError> {
        (**self).verify(target, desired).await
    }
    fn route(&self, target: &Target) -> Option<&dyn Executor> {
        (**self).route(target)
    }
    fn runs_host_programs(&self) -> bool {
        (**self).runs_host_programs()
    }
    async fn run_step(
        &self,
        target: &Target,
        step: &ImperativeStep,
        ctx: ApplyContext<'_>,
    ) -> Result<StepOutput, ExecutorError> {
        (**self).run_step(target, step, ctx).await
    }
}

/// The gateway pattern: one [`Executor`] in front of many, sending each target to the executor its environment names.
///
/// ```
/// use std::sync::Arc;
/// use deploy_core::ExecutorRouter;
/// # use deploy_core::{Executor, Target, ApplyContext, ExecutorError, Observation, Health, DesiredState};
/// # struct Noop;
/// # #[async_trait::async_trait]
/// # impl Executor for Noop {
/// #     async fn observe(&self, _: &Target) -> Result<Observation, ExecutorError> { Ok(Observation { version: None, health: Health::Unknown }) }
/// #     async fn apply(&self, _: &Target, _: ApplyContext<'_>) -> Result<(), ExecutorError> { Ok(()) }
/// #     async fn verify(&self, _: &Target, _: &DesiredState) -> Result<Health, ExecutorError> { Ok(Health::Healthy) }
/// # }
/// let router = ExecutorRouter::new().with("vm", Arc::new(Noop)).with("k8s", Arc::new(Noop));
/// assert_eq!(router.kinds(), ["k8s", "vm"]);
/// ```
#[derive(Clone, Default)]
pub struct ExecutorRouter {
    routes: BTreeMap<String, Arc<dyn Executor>>,
}

impl fmt::Debug for ExecutorRouter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ExecutorRouter").field("kinds", &self.kinds()).finish()
    }
}

impl ExecutorRouter {
    /// A router with no routes.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds (or replaces) the executor for targets whose `executor` is `kind`.
    #[must_use]
    pub fn with(mut self, kind: impl Into<String>, executor: Arc<dyn Executor>) -> Self {
        self.routes.insert(kind.into(), executor);
        self
    }

    /// The kinds this router knows, sorted.
    #[must_use]
    pub fn kinds(&self) -> Vec<String> {
        self.routes.keys().cloned().collect()
    }

    fn lookup(&self, target: &Target) -> Result<&Arc<dyn Executor>, ExecutorError> {
        self.routes.get(&target.executor).ok_or_else(|| {
            ExecutorError::permanent(format!("no executor named {:?} for target {}", target.executor, target.id))
        })
    }
}

#[async_trait]
impl Executor for ExecutorRouter {
    async fn observe(&self, target: &Target) -> Result<Observation, ExecutorError> {
        self.lookup(target)?.observe(target).await
    }
    async fn apply(&self, target: &Target, ctx: ApplyContext<'_>) -> Result<(), ExecutorError> {
        self.lookup(target)?.apply(target, ctx).await
    }
    async fn apply_with_output(&self, target: &Target, ctx: ApplyContext<'_>) -> Result<StepOutput, ExecutorError> {
        self.lookup(target)?.apply_with_output(target, ctx).await
    }
    async fn verify(&self, target: &Target, desired: &DesiredState) -> Result<Health, ExecutorError> {
        self.lookup(target)?.verify(target, desired).await
    }
    fn route(&self, target: &Target) -> Option<&dyn Executor> {
        self.routes.get(&target.executor).map(|e| e.as_ref() as &dyn Executor)
    }
    async fn run_step(
        &self,
        target: &Target,
        step: &ImperativeStep,
        ctx: ApplyContext<'_>,
    ) -> Result<StepOutput, ExecutorError> {
        self.lookup(target)?.run_step(target, step, ctx).await
    }
}
