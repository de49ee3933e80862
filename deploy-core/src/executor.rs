//! The [`Executor`] trait: how the engine changes and observes targets, and the router that picks one per target.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use async_trait::async_trait;
use serde_json::Value;

use crate::environment::EnvironmentTarget;
use crate::names::{DeploymentId, EnvironmentName, ExecutorKind, TargetId};
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
    pub executor: ExecutorKind,
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
    /// Where a long change reports how far it got while the executor waits (`swarm: 3 of 6 tasks updated`): the
    /// engine records each new line as an event of the target. `None` when nobody listens.
    pub progress: Option<&'a dyn Progress>,
}

/// Receives an executor's progress lines during one call (see [`ApplyContext::progress`]). Lines should be short and
/// say what changed; the engine records a line only when it differs from the last one, at most one a second, scrubbed
/// of the call's secrets.
pub trait Progress: Send + Sync + fmt::Debug {
    /// One line of progress.
    fn report(&self, line: &str);
}

impl ApplyContext<'_> {
    /// Reports `line` when someone listens (see [`ApplyContext::progress`]).
    pub fn report(&self, line: &str) {
        if let Some(progress) = self.progress {
            progress.report(line);
        }
    }
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
    panicked: bool,
}

impl ExecutorError {
    /// A transient error.
    #[must_use]
    pub fn retryable(message: impl Into<String>) -> Self {
        Self { class: ErrorClass::Retryable, message: message.into(), panicked: false }
    }
    /// An error retrying will not fix.
    #[must_use]
    pub fn permanent(message: impl Into<String>) -> Self {
        Self { class: ErrorClass::Permanent, message: message.into(), panicked: false }
    }
    /// The target cannot be reached.
    #[must_use]
    pub fn unreachable(message: impl Into<String>) -> Self {
        Self { class: ErrorClass::Unreachable, message: message.into(), panicked: false }
    }
    /// The permanent error the engine makes of an executor call that panicked.
    #[must_use]
    pub(crate) fn from_panic(message: impl Into<String>) -> Self {
        Self { class: ErrorClass::Permanent, message: message.into(), panicked: true }
    }

    /// Whether the engine made this error of a call that panicked (an executor's bug, not its verdict).
    #[must_use]
    pub fn is_panic(&self) -> bool {
        self.panicked
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

/// What an apply or an imperative step printed, kept in the deployment's events.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Outcome {
    /// The output (hook output, a tool's summary), already trimmed to a sensible size by the executor. Secret values
    /// resolved for the call are scrubbed by the engine before it is recorded.
    pub output: String,
}

impl Outcome {
    /// An outcome with nothing to report.
    #[must_use]
    pub fn quiet() -> Self {
        Self::default()
    }

    /// An outcome carrying `output`.
    #[must_use]
    pub fn with_output(output: impl Into<String>) -> Self {
        Self { output: output.into() }
    }
}

/// Changes and observes targets of one kind (processes, containers, hosts behind an agent, ...).
///
/// # Contract
///
/// Every method may be called concurrently for *different* targets; the engine never runs two calls that change the
/// same target at once (`apply`, `run_step`), but may observe or verify a target while nothing changes it.
///
/// - [`observe`](Executor::observe) has no side effects. It is told what is wanted (`None` when nothing is, as for an
///   agent that has not been assigned anything yet), so a host running several services reports the one asked about.
///   It returns the version running (`None` when nothing is installed) and a health hint.
/// - [`apply`](Executor::apply) brings the target to `ctx.desired` and is **idempotent**: applying what already runs
///   succeeds without disruption, and an apply interrupted half-way (its future dropped, its process killed) can be
///   applied again and completes the change. It returns once the change is made, not once the target is healthy.
///   What it printed comes back in the [`Outcome`].
/// - [`verify`](Executor::verify) is one health probe of `desired`. When another version runs on the target, it
///   answers [`Health::Unhealthy`] (never `Healthy` for a version that is not the one asked about).
/// - [`run_step`](Executor::run_step) runs one imperative step; steps run in order and may be retried when they fail
///   retryably, so they should be idempotent too. Executors that do not support imperative mode keep the default,
///   which refuses with a permanent error.
/// - **Time**: the engine bounds every call. `verify` gets the spec's probe interval (at least one second) and a call
///   that overruns counts as a failed probe; `apply` and `run_step` are bounded by the deployment's progress deadline
///   and abandoned (their future dropped) on cancel, lease loss or shutdown. An executor never needs its own overall
///   timeout, but must bound each network or process wait it starts, and must tolerate its future being dropped at
///   any `.await`.
/// - **Errors** carry an [`ErrorClass`]: retryable errors are retried with bounded backoff, permanent errors fail the
///   target, unreachable errors start the unreachable policy's wait. A panic is caught and treated as permanent.
/// - **Secrets** arrive resolved in [`ApplyContext::secrets`] for that call only; never store or log them. The engine
///   scrubs their values from outcomes and errors, but an executor must not write them elsewhere.
/// - **Fencing**: `ctx.fencing_token` grows with every new owner of a deployment; an executor that acts on a shared
///   target should refuse a token smaller than the largest it has seen for that target and deployment.
///
/// `deploy_testkit::conformance::executor` checks this contract against any implementation.
#[async_trait]
pub trait Executor: Send + Sync {
    /// What runs on `target` now, as far as `wanted` (the service and version asked for, if any) is concerned.
    async fn observe(&self, target: &Target, wanted: Option<&DesiredState>) -> Result<Observation, ExecutorError>;

    /// Brings `target` to `ctx.desired`, returning what the change printed.
    async fn apply(&self, target: &Target, ctx: ApplyContext<'_>) -> Result<Outcome, ExecutorError>;

    /// One health probe of `desired` on `target`.
    async fn verify(&self, target: &Target, desired: &DesiredState) -> Result<Health, ExecutorError>;

    /// Runs one imperative step on `target`.
    async fn run_step(
        &self,
        target: &Target,
        step: &ImperativeStep,
        ctx: ApplyContext<'_>,
    ) -> Result<Outcome, ExecutorError> {
        let _ = (target, ctx);
        Err(ExecutorError::permanent(format!(
            "this executor does not support imperative steps (asked for {:?})",
            step.action
        )))
    }

    /// Whether this executor makes the host it runs on start programs that a target's configuration names (hooks,
    /// commands). Creating or changing such targets is host-level power: the orchestrator allows it only to admins of
    /// every environment ([`crate::Action::DefineHostTargets`]). The default is `false`.
    fn runs_host_programs(&self) -> bool {
        false
    }

    /// Whether this executor hands a deployment's secret *references* on to another system that resolves them itself
    /// (a gateway to another deployd), rather than needing their values. The engine then checks the references against
    /// the environment's secret scope as always, but resolves none: [`ApplyContext::secrets`] is empty, and no value
    /// passes through this process. The default is `false`.
    fn passes_secret_references(&self) -> bool {
        false
    }
}

macro_rules! forward_executor {
    ($($ptr:ty),*) => {$(
        #[async_trait]
        impl<T: Executor + ?Sized> Executor for $ptr {
            async fn observe(&self, target: &Target, wanted: Option<&DesiredState>) -> Result<Observation, ExecutorError> {
                (**self).observe(target, wanted).await
            }
            async fn apply(&self, target: &Target, ctx: ApplyContext<'_>) -> Result<Outcome, ExecutorError> {
                (**self).apply(target, ctx).await
            }
            async fn verify(&self, target: &Target, desired: &DesiredState) -> Result<Health, ExecutorError> {
                (**self).verify(target, desired).await
            }
            async fn run_step(
                &self,
                target: &Target,
                step: &ImperativeStep,
                ctx: ApplyContext<'_>,
            ) -> Result<Outcome, ExecutorError> {
                (**self).run_step(target, step, ctx).await
            }
            fn runs_host_programs(&self) -> bool {
                (**self).runs_host_programs()
            }
            fn passes_secret_references(&self) -> bool {
                (**self).passes_secret_references()
            }
        }
    )*};
}

forward_executor!(Arc<T>, Box<T>, &T);

/// Which executor serves which target: the gateway pattern. The engine resolves each target's executor once, when
/// it plans a deployment, and calls it directly from then on.
///
/// A router either sends every target to one executor ([`ExecutorRouter::single`]) or sends each to the executor its
/// environment names by kind ([`ExecutorRouter::with`]); an orchestrator with a router of kinds refuses environments
/// naming a kind it does not know.
///
/// ```
/// use std::sync::Arc;
/// use deploy_core::ExecutorRouter;
/// # use deploy_core::{Executor, Target, ApplyContext, ExecutorError, Observation, Health, DesiredState, Outcome};
/// # struct Noop;
/// # #[deploy_core::async_trait]
/// # impl Executor for Noop {
/// #     async fn observe(&self, _: &Target, _: Option<&DesiredState>) -> Result<Observation, ExecutorError> { Ok(Observation { version: None, health: Health::Unknown }) }
/// #     async fn apply(&self, _: &Target, _: ApplyContext<'_>) -> Result<Outcome, ExecutorError> { Ok(Outcome::quiet()) }
/// #     async fn verify(&self, _: &Target, _: &DesiredState) -> Result<Health, ExecutorError> { Ok(Health::Healthy) }
/// # }
/// let router = ExecutorRouter::new().with("vm", Arc::new(Noop)).with("k8s", Arc::new(Noop));
/// assert_eq!(router.kinds(), Some(vec!["k8s".to_owned(), "vm".to_owned()]));
/// assert_eq!(ExecutorRouter::single(Arc::new(Noop)).kinds(), None, "one executor for every kind");
/// ```
#[derive(Clone, Default)]
pub struct ExecutorRouter {
    routes: BTreeMap<String, Arc<dyn Executor>>,
    every: Option<Arc<dyn Executor>>,
}

impl fmt::Debug for ExecutorRouter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ExecutorRouter")
            .field("kinds", &self.routes.keys().collect::<Vec<_>>())
            .field("every_kind", &self.every.is_some())
            .finish()
    }
}

impl From<Arc<dyn Executor>> for ExecutorRouter {
    fn from(executor: Arc<dyn Executor>) -> Self {
        Self::single(executor)
    }
}

impl<E: Executor + 'static> From<Arc<E>> for ExecutorRouter {
    fn from(executor: Arc<E>) -> Self {
        Self::single(executor)
    }
}

impl ExecutorRouter {
    /// A router with no routes: every target fails with "no executor".
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// A router sending every target, whatever kind its environment names, to `executor`.
    #[must_use]
    pub fn single(executor: Arc<dyn Executor>) -> Self {
        Self { routes: BTreeMap::new(), every: Some(executor) }
    }

    /// Adds (or replaces) the executor for targets whose `executor` is `kind`.
    #[must_use]
    pub fn with(mut self, kind: impl Into<String>, executor: Arc<dyn Executor>) -> Self {
        self.routes.insert(kind.into(), executor);
        self
    }

    /// The kinds this router knows, sorted; `None` when one executor serves every kind.
    #[must_use]
    pub fn kinds(&self) -> Option<Vec<String>> {
        if self.every.is_some() { None } else { Some(self.routes.keys().cloned().collect()) }
    }

    /// The executor serving `target`.
    ///
    /// # Errors
    /// A permanent [`ExecutorError`] naming the kind when no executor serves it.
    pub fn resolve(&self, target: &Target) -> Result<Arc<dyn Executor>, ExecutorError> {
        self.routes.get(target.executor.as_str()).or(self.every.as_ref()).cloned().ok_or_else(|| {
            ExecutorError::permanent(format!("no executor named {:?} for target {}", target.executor, target.id))
        })
    }
}
