//! The orchestrator: the embedding API (submit, get, list, watch, cancel, rollback) and the controller that drives
//! deployments to a terminal status.

mod controller;
mod retry;
mod rollout;
mod runner;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use futures::stream::BoxStream;
use tokio::sync::watch;

use crate::auth::{Action, Principal};
use crate::clock::{Clock, SystemClock};
use crate::deployment::{Deployment, DeploymentDraft, TargetPlan};
use crate::environment::{Environment, EnvironmentSpec};
use crate::error::Error;
use crate::event::Event;
use crate::executor::{Executor, ExecutorRouter, Target};
use crate::names::{DeploymentId, EnvironmentName, IdempotencyKey, Revision, TargetId, Version};
use crate::secrets::{EnvSecretResolver, SecretResolver};
use crate::spec::{DeploymentRequest, TargetSelector, ValidationErrors};
use crate::store::{
    Acceptance, DeploymentFilter, EnvironmentWrite, IdempotencyRecord, Page, PageRequest, Store, StoreError,
};

pub use controller::{ShutdownSignal, ShutdownTrigger};

/// Store pages [`Orchestrator::list`] reads at most to fill one page with deployments the caller may read.
const LIST_SCAN_PAGES: usize = 20;

/// Tuning of an orchestrator. The defaults suit a production service; tests shorten them.
#[derive(Debug, Clone)]
pub struct OrchestratorConfig {
    /// This replica's name in leases (default: `orchestrator-<uuid>`).
    pub owner: String,
    /// How long a claim lasts without renewal. A crashed replica's work is picked up after this.
    pub lease: Duration,
    /// How often an idle controller looks for work (it also wakes on local submissions).
    pub poll_interval: Duration,
    /// Deployments one controller drives at once (each in its own environment).
    pub max_concurrent_deployments: usize,
    /// Targets of one batch driven at once.
    pub max_parallel_targets: usize,
    /// Retries of a retryable executor error before the target fails.
    pub max_retries: u32,
    /// First backoff between retries; doubles each time, with jitter.
    pub retry_base: Duration,
    /// Longest backoff between retries.
    pub retry_cap: Duration,
    /// How long idempotency keys are remembered.
    pub idempotency_retention: Duration,
    /// How often a watcher polls the store for events written by other replicas.
    pub watch_poll_interval: Duration,
    /// How often the controller forgets expired idempotency keys.
    pub purge_interval: Duration,
    /// The most targets one environment may have (at most [`crate::environment::MAX_TARGETS`]): every reader of an
    /// environment reads all of them, so a server sets what its memory affords.
    pub max_targets_per_environment: usize,
    /// The largest deployment request accepted, as its validated spec serializes: every reader of a deployment reads
    /// it whole, and a listing holds a page of them.
    pub max_spec_bytes: usize,
    /// What one submitter may have stored (none: no limit). Rollbacks are never refused for it.
    pub quota: Option<SubmitterQuota>,
}

/// Per-submitter limits on what acceptances store (see [`crate::QuotaCheck`], which the store applies).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SubmitterQuota {
    /// Unfinished (queued, waiting or running) deployments one submitter may have at once.
    pub max_open: u64,
    /// Bytes of deployment records ([`crate::Deployment::stored_bytes`]) one submitter may store per `window`.
    pub max_bytes: u64,
    /// The byte window, counted back from each acceptance by the wall clock.
    pub window: Duration,
}

impl Default for SubmitterQuota {
    /// 64 open deployments, 64 MiB a day.
    fn default() -> Self {
        Self { max_open: 64, max_bytes: 64 * 1024 * 1024, window: Duration::from_secs(24 * 3600) }
    }
}

impl Default for OrchestratorConfig {
    fn default() -> Self {
        Self {
            owner: format!("orchestrator-{}", uuid::Uuid::now_v7()),
            lease: Duration::from_secs(30),
            poll_interval: Duration::from_secs(1),
            max_concurrent_deployments: 16,
            max_parallel_targets: 1024,
            max_retries: 5,
            retry_base: Duration::from_millis(200),
            retry_cap: Duration::from_secs(30),
            idempotency_retention: Duration::from_secs(24 * 3600),
            watch_poll_interval: Duration::from_millis(500),
            purge_interval: Duration::from_secs(600),
            max_targets_per_environment: crate::environment::MAX_TARGETS,
            max_spec_bytes: 1024 * 1024,
            quota: None,
        }
    }
}

/// Sees every change the engine wrote, after the store accepted it: for metrics and logs. Called on the controller's
/// task, so it must be quick and must not block.
pub trait EngineObserver: Send + Sync {
    /// `update` to `deployment` is durable.
    fn recorded(&self, deployment: DeploymentId, update: &crate::deployment::ProgressUpdate);

    /// An executor call for `target` of `deployment` panicked; its target fails permanently (and an event says so).
    /// The default does nothing.
    fn executor_panicked(&self, deployment: DeploymentId, target: &crate::names::TargetId) {
        let _ = (deployment, target);
    }
}

/// Which release [`Orchestrator::rollback_environment`] returns an environment to. On the wire it is one string:
/// `previous`, a deployment id, or a version.
///
/// ```
/// use deploy_core::RollbackTo;
/// assert_eq!("previous".parse::<RollbackTo>().unwrap(), RollbackTo::Previous);
/// assert!(matches!("2.0.1".parse::<RollbackTo>().unwrap(), RollbackTo::Version(v) if v.as_str() == "2.0.1"));
/// assert!(matches!("01937a2e-8f00-7000-8000-000000000001".parse::<RollbackTo>().unwrap(), RollbackTo::Deployment(_)));
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RollbackTo {
    /// The newest release that succeeded with a version other than the last release's.
    Previous,
    /// The release of this deployment (it must have succeeded).
    Deployment(DeploymentId),
    /// The newest release of this version that succeeded.
    Version(Version),
}

impl RollbackTo {
    /// The string the API takes for it (`previous`, the id, the version).
    #[must_use]
    pub fn to_wire(&self) -> String {
        match self {
            Self::Previous => "previous".to_owned(),
            Self::Deployment(id) => id.to_string(),
            Self::Version(v) => v.to_string(),
        }
    }
}

impl std::str::FromStr for RollbackTo {
    type Err = crate::names::NameError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s == "previous" {
            return Ok(Self::Previous);
        }
        if let Ok(id) = s.parse::<DeploymentId>() {
            return Ok(Self::Deployment(id));
        }
        Version::new(s).map(Self::Version)
    }
}

impl std::fmt::Display for RollbackTo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Previous => f.pad("previous"),
            Self::Deployment(id) => f.pad(&format!("deployment {id}")),
            Self::Version(v) => f.pad(&format!("version {v}")),
        }
    }
}

/// A submission: the request, and the caller's idempotency key and expected environment revision.
#[derive(Debug, Clone, Default)]
pub struct Submission {
    /// The request as submitted.
    pub request: DeploymentRequest,
    /// Same key + same request → the same deployment, however often it is sent.
    pub idempotency_key: Option<IdempotencyKey>,
    /// Refuse unless the environment is at this revision (`If-Match`).
    pub expected_revision: Option<Revision>,
}

impl Submission {
    /// A submission of a typed spec (see [`DeploymentSpec::builder`](crate::DeploymentSpec::builder)), without an
    /// idempotency key or an expected revision.
    ///
    /// ```
    /// use deploy_core::{DeploymentSpec, IdempotencyKey, Submission};
    /// let spec = DeploymentSpec::builder("prod".parse()?, "checkout".parse()?, "2.0.1".parse()?).build()?;
    /// let submission = Submission::new(&spec).idempotency_key(IdempotencyKey::new("release-2.0.1")?);
    /// assert_eq!(submission.request.version, "2.0.1");
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    #[must_use]
    pub fn new(spec: &crate::spec::DeploymentSpec) -> Self {
        Self { request: spec.to_request(), idempotency_key: None, expected_revision: None }
    }

    /// The same submission with an idempotency key.
    #[must_use]
    pub fn idempotency_key(mut self, key: IdempotencyKey) -> Self {
        self.idempotency_key = Some(key);
        self
    }

    /// The same submission, refused unless the environment is at `revision`.
    #[must_use]
    pub fn expected_revision(mut self, revision: Revision) -> Self {
        self.expected_revision = Some(revision);
        self
    }
}

/// What a submission produced.
#[derive(Debug, Clone, PartialEq)]
#[must_use]
pub struct Submitted {
    /// The deployment, durable and queued (or, for a replay, as it is now).
    pub deployment: Deployment,
    /// Whether this answers an earlier request with the same key.
    pub replayed: bool,
    /// The idempotency key the submission carried (for `deploy-client`, the one it generated when the caller gave
    /// none): send it again to retry safely.
    pub idempotency_key: Option<IdempotencyKey>,
}

pub(crate) struct Shared {
    pub(crate) store: Arc<dyn Store>,
    pub(crate) executors: ExecutorRouter,
    pub(crate) secrets: Arc<dyn SecretResolver>,
    /// References every environment may resolve.
    pub(crate) global_scope: crate::secrets::SecretScope,
    pub(crate) clock: Arc<dyn Clock>,
    pub(crate) config: OrchestratorConfig,
    pub(crate) known_executors: Option<Vec<String>>,
    pub(crate) observer: Option<Arc<dyn EngineObserver>>,
    /// Bumped after every local write, so the controller and watchers wake without waiting for a poll.
    pub(crate) changed: watch::Sender<u64>,
}

impl Shared {
    pub(crate) fn poke(&self) {
        // Nobody listening (a one-shot `run_until_idle`): skip the wake-up machinery on the hot path.
        if self.changed.receiver_count() > 0 {
            self.changed.send_modify(|n| *n = n.wrapping_add(1));
        }
    }
}

/// The embedding API of the engine. Cheap to clone; every clone shares one store, executor and clock.
///
/// ```
/// # async fn demo(store: std::sync::Arc<dyn deploy_core::Store>, executor: std::sync::Arc<dyn deploy_core::Executor>)
/// # -> Result<(), deploy_core::Error> {
/// use deploy_core::{DeploymentRequest, Orchestrator, Principal, Submission};
/// let orchestrator = Orchestrator::builder(store, executor).build();
/// let submitted = orchestrator
///     .submit(&Principal::system("svc:release-bot"), Submission {
///         request: DeploymentRequest {
///             environment: "prod".into(),
///             service: "checkout".into(),
///             version: "2.0.1".into(),
///             ..Default::default()
///         },
///         ..Default::default()
///     })
///     .await?;
/// orchestrator.run_until_idle().await?;
/// let done = orchestrator.get(&Principal::system("svc:release-bot"), submitted.deployment.id()).await?;
/// println!("{} is {}", done.id(), done.status());
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Orchestrator {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for Orchestrator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Orchestrator").field("owner", &self.shared.config.owner).finish_non_exhaustive()
    }
}

/// Builds an [`Orchestrator`].
#[must_use]
pub struct OrchestratorBuilder {
    store: Arc<dyn Store>,
    executors: ExecutorRouter,
    secrets: Arc<dyn SecretResolver>,
    global_scope: crate::secrets::SecretScope,
    clock: Arc<dyn Clock>,
    config: OrchestratorConfig,
    observer: Option<Arc<dyn EngineObserver>>,
}

impl OrchestratorBuilder {
    /// Resolves secret references (default: `env://` from the process environment).
    pub fn secrets(mut self, secrets: Arc<dyn SecretResolver>) -> Self {
        self.secrets = secrets;
        self
    }
    /// Secret references every environment may resolve, beside each environment's own
    /// [`secret_scope`](crate::EnvironmentSpec::secret_scope) (default: none). Set by whoever runs the orchestrator.
    pub fn global_secret_scope(mut self, scope: crate::secrets::SecretScope) -> Self {
        self.global_scope = scope;
        self
    }
    /// The clock (default: [`SystemClock`]).
    pub fn clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }
    /// Tuning.
    pub fn config(mut self, config: OrchestratorConfig) -> Self {
        self.config = config;
        self
    }
    /// Tells `observer` of every change the engine writes (metrics, logs).
    pub fn observer(mut self, observer: Arc<dyn EngineObserver>) -> Self {
        self.observer = Some(observer);
        self
    }

    /// The orchestrator.
    pub fn build(self) -> Orchestrator {
        let (changed, _) = watch::channel(0);
        Orchestrator {
            shared: Arc::new(Shared {
                store: self.store,
                known_executors: self.executors.kinds(),
                executors: self.executors,
                secrets: self.secrets,
                global_scope: self.global_scope,
                clock: self.clock,
                config: self.config,
                observer: self.observer,
                changed,
            }),
        }
    }
}

impl Orchestrator {
    /// Starts building an orchestrator over `store` and `executors`: one executor for every target (an
    /// `Arc<YourExecutor>`), or an [`ExecutorRouter`] sending each target to the executor of the kind its environment
    /// names, in which case environments naming a kind the router does not know are refused.
    pub fn builder(store: Arc<dyn Store>, executors: impl Into<ExecutorRouter>) -> OrchestratorBuilder {
        OrchestratorBuilder {
            store,
            executors: executors.into(),
            secrets: Arc::new(EnvSecretResolver::default()),
            global_scope: crate::secrets::SecretScope::default(),
            clock: Arc::new(SystemClock),
            config: OrchestratorConfig::default(),
            observer: None,
        }
    }

    /// The store.
    #[must_use]
    pub fn store(&self) -> &Arc<dyn Store> {
        &self.shared.store
    }

    /// The clock.
    #[must_use]
    pub fn clock(&self) -> &Arc<dyn Clock> {
        &self.shared.clock
    }

    /// Creates or replaces an environment (admin).
    ///
    /// # Errors
    /// [`Error::Forbidden`], [`Error::Invalid`] (duplicate ids, unknown executors), or the store's
    /// `PreconditionFailed`.
    pub async fn put_environment(
        &self,
        principal: &Principal,
        name: &EnvironmentName,
        spec: EnvironmentSpec,
        expected: Option<Revision>,
    ) -> Result<EnvironmentWrite, Error> {
        principal.authorize(Action::ManageEnvironments, name)?;
        let most = self.shared.config.max_targets_per_environment.min(crate::environment::MAX_TARGETS);
        if spec.targets.len() > most {
            let mut errs = ValidationErrors::default();
            errs.push("targets", format!("at most {most} targets per environment on this server"));
            return Err(Error::Invalid(errs));
        }
        spec.validate(self.shared.known_executors.as_deref())?;
        let expected = self.check_host_targets(principal, name, &spec, expected).await?;
        let expected = self.check_secret_scope(principal, name, &spec, expected).await?;
        let write = self.shared.store.put_environment(name, spec, expected, self.shared.clock.now()).await?;
        Ok(write)
    }

    /// Targets whose executor runs programs on the host may be created or changed only by an admin of every
    /// environment; a scoped admin may keep them as they are (and change everything else). Returns the revision the
    /// write must still find, so a host-level target changed meanwhile by someone else is not overwritten unseen.
    async fn check_host_targets(
        &self,
        principal: &Principal,
        name: &EnvironmentName,
        spec: &EnvironmentSpec,
        expected: Option<Revision>,
    ) -> Result<Option<Revision>, Error> {
        if principal.authorize(Action::DefineHostTargets, name).is_ok() {
            return Ok(expected);
        }
        let host_level: Vec<&crate::environment::TargetDefinition> = spec
            .targets
            .iter()
            .filter(|t| {
                let target = Target {
                    environment: name.clone(),
                    id: t.id.clone(),
                    labels: BTreeMap::new(),
                    executor: t.executor.clone(),
                    config: t.config.clone(),
                };
                self.shared.executors.resolve(&target).is_ok_and(|e| e.runs_host_programs())
            })
            .collect();
        if host_level.is_empty() {
            return Ok(expected);
        }
        let current = self.current_environment(name).await?;
        let unchanged = |t: &crate::environment::TargetDefinition| {
            current
                .as_ref()
                .and_then(|e| e.target(&t.id))
                .is_some_and(|c| c.executor == t.executor && c.config == t.config)
        };
        if host_level.iter().all(|t| unchanged(t)) {
            Ok(expected.or(current.map(|e| e.revision)))
        } else {
            principal.authorize(Action::DefineHostTargets, name)?;
            Ok(expected)
        }
    }

    /// The environment as stored now, or `None` before it exists.
    async fn current_environment(&self, name: &EnvironmentName) -> Result<Option<Environment>, Error> {
        match self.shared.store.get_environment(name).await {
            Ok(e) => Ok(Some(e)),
            Err(StoreError::NotFound { .. }) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// An environment's secret scope may be widened only by an admin of every environment; a scoped admin may keep it
    /// or narrow it (every entry covered by the scope stored now or by the global scope). Returns the revision the
    /// write must still find, so a scope widened meanwhile by a global admin is not overwritten unseen.
    async fn check_secret_scope(
        &self,
        principal: &Principal,
        name: &EnvironmentName,
        spec: &EnvironmentSpec,
        expected: Option<Revision>,
    ) -> Result<Option<Revision>, Error> {
        if spec.secret_scope.is_empty() || principal.authorize(Action::DefineHostTargets, name).is_ok() {
            return Ok(expected);
        }
        let current = self.current_environment(name).await?;
        let stored = current.as_ref().map(|e| e.secret_scope.clone()).unwrap_or_default();
        let wider = spec.secret_scope.beyond(&[&stored, &self.shared.global_scope]);
        if let Some(first) = wider.first() {
            return Err(Error::SecretScopeWidened {
                principal: principal.id().to_owned(),
                environment: name.clone(),
                entry: (*first).to_owned(),
            });
        }
        Ok(expected.or(current.map(|e| e.revision)))
    }

    /// Refuses a spec naming a secret reference outside its environment's scope and the global one.
    async fn check_references_in_scope(&self, spec: &crate::spec::DeploymentSpec) -> Result<(), Error> {
        let mut refs = crate::secrets::references_of(spec.secrets(), spec.config()).peekable();
        if refs.peek().is_none() {
            return Ok(());
        }
        let global = &self.shared.global_scope;
        let env = self.shared.store.get_environment(spec.environment()).await?;
        for (section, key, reference) in refs {
            if !global.allows(reference) && !env.secret_scope.allows(reference) {
                return Err(Error::SecretOutOfScope {
                    environment: spec.environment().clone(),
                    field: format!("{section}.{key}"),
                    reference: reference.as_str().to_owned(),
                });
            }
        }
        Ok(())
    }

    /// An environment (viewer). Callers who may not administer it see its targets' `env` values redacted.
    ///
    /// # Errors
    /// [`Error::Forbidden`] or the store's `NotFound`.
    pub async fn environment(&self, principal: &Principal, name: &EnvironmentName) -> Result<Environment, Error> {
        principal.authorize(Action::Read, name)?;
        Ok(self.shared.store.get_environment(name).await?.shown_to(principal))
    }

    /// Validates, authorizes and durably accepts a deployment. Returns as soon as it is queued; the controller does
    /// the rest.
    ///
    /// # Errors
    /// [`Error::Invalid`] (with [`ValidationErrors::has_hardcoded_secret`] for inline secrets), [`Error::Forbidden`],
    /// and the store's `NotFound`, `EnvironmentBusy`, `IdempotencyKeyReuse`, `IdempotencyKeyInFlight`,
    /// `PreconditionFailed`, `PreconditionRequired` or `Invalid` (selector matches nothing).
    pub async fn submit(&self, principal: &Principal, submission: Submission) -> Result<Submitted, Error> {
        let environment = EnvironmentName::new(submission.request.environment.as_str()).map_err(|e| {
            let mut errs = ValidationErrors::default();
            errs.push("environment", e.rule());
            Error::Invalid(errs)
        })?;
        principal.authorize(Action::Deploy, &environment)?;
        let spec = submission.request.validate()?;
        let size = serde_json::to_vec(&spec).map_or(usize::MAX, |b| b.len());
        if size > self.shared.config.max_spec_bytes {
            let mut errs = ValidationErrors::default();
            errs.push(
                "spec",
                format!(
                    "{size} bytes; a deployment is at most {} bytes on this server",
                    self.shared.config.max_spec_bytes
                ),
            );
            return Err(Error::Invalid(errs));
        }
        self.check_references_in_scope(&spec).await?;
        let fingerprint = spec.fingerprint();
        let draft = DeploymentDraft {
            id: DeploymentId::new(),
            spec,
            created_by: principal.id().to_owned(),
            plan: TargetPlan::FromSpec,
            rollback_of: None,
            retry_of: None,
            submitted_by: None,
        };
        let idempotency_key = submission.idempotency_key.clone();
        let key = submission.idempotency_key.map(|key| (key, fingerprint));
        let accepted = self.accept(principal, draft, key, submission.expected_revision).await?;
        if !accepted.replayed {
            tracing::info!(deployment_id = %accepted.deployment.id(), environment = %environment, "deployment accepted");
            self.shared.poke();
        }
        Ok(Submitted { deployment: accepted.deployment, replayed: accepted.replayed, idempotency_key })
    }

    /// A deployment (viewer).
    ///
    /// # Errors
    /// The store's `NotFound`, or [`Error::Forbidden`] when the principal may not read its environment.
    pub async fn get(&self, principal: &Principal, id: DeploymentId) -> Result<Deployment, Error> {
        let d = self.shared.store.get_deployment(id).await?;
        principal.authorize(Action::Read, d.environment())?;
        Ok(d)
    }

    /// Deployments, newest first. Only environments the principal may read are listed; a page is filled from as many
    /// store pages as it takes (up to 20), so deployments in other environments do not leave it short.
    ///
    /// # Errors
    /// [`Error::Forbidden`] when the filter names an environment the principal may not read.
    pub async fn list(
        &self,
        principal: &Principal,
        filter: &DeploymentFilter,
        page: &PageRequest,
    ) -> Result<Page<Deployment>, Error> {
        if let Some(env) = &filter.environment {
            principal.authorize(Action::Read, env)?;
            return Ok(self.shared.store.list_deployments(filter, page).await?);
        }
        // Without an environment, skip what the principal may not read.
        self.fill_page(filter, page, |d| principal.authorize(Action::Read, d.environment()).is_ok().then_some(d)).await
    }

    /// A page of what `keep` makes of listed deployments, skipping those it refuses: store pages are read (each at
    /// most as large as what is still missing, so the store's own cursor always marks where to go on) until the page
    /// is full, the store has no more, or [`LIST_SCAN_PAGES`] were read; a short page then still carries a cursor.
    async fn fill_page<T>(
        &self,
        filter: &DeploymentFilter,
        page: &PageRequest,
        keep: impl Fn(Deployment) -> Option<T>,
    ) -> Result<Page<T>, Error> {
        let limit = page.clamped_limit();
        let mut items = Vec::with_capacity(limit);
        let mut cursor = page.cursor.clone();
        for _ in 0..LIST_SCAN_PAGES {
            let request = PageRequest { limit: limit - items.len(), cursor };
            let out = self.shared.store.list_deployments(filter, &request).await?;
            items.extend(out.items.into_iter().filter_map(&keep));
            cursor = out.next_cursor;
            if items.len() >= limit || cursor.is_none() {
                break;
            }
        }
        Ok(Page { items, next_cursor: cursor })
    }

    /// The releases that ran in `environment`, newest first: every deployment that started there (queued ones and
    /// those that stopped before they ran are left out), with who submitted it, how it ended and how long it ran.
    ///
    /// # Errors
    /// [`Error::Forbidden`] when the principal may not read the environment; the store's `NotFound` when there is no
    /// such environment.
    pub async fn history(
        &self,
        principal: &Principal,
        environment: &EnvironmentName,
        page: &PageRequest,
    ) -> Result<Page<crate::deployment::Release>, Error> {
        principal.authorize(Action::Read, environment)?;
        self.shared.store.get_environment(environment).await?;
        let filter = DeploymentFilter { environment: Some(environment.clone()), ..DeploymentFilter::default() };
        // Deployments that never started (queued, awaiting approval, rejected) are no releases: pages are filled past
        // them, so `limit=1` is the newest release, not an empty page.
        self.fill_page(&filter, page, |d| crate::deployment::Release::of(&d)).await
    }

    /// Events of a deployment after `after`, at most `limit`.
    ///
    /// # Errors
    /// As [`Orchestrator::get`].
    pub async fn events(
        &self,
        principal: &Principal,
        id: DeploymentId,
        after: u64,
        limit: usize,
    ) -> Result<Vec<Event>, Error> {
        self.get(principal, id).await?;
        Ok(self.shared.store.events(id, after, limit).await?)
    }

    /// A live stream of a deployment's events after `after`, ending after the terminal event. It resumes anywhere: a
    /// watcher that reconnects passes the last `seq` it saw and misses nothing.
    ///
    /// # Errors
    /// As [`Orchestrator::get`], before the stream starts; store errors while streaming end the stream with that error.
    pub async fn watch(
        &self,
        principal: &Principal,
        id: DeploymentId,
        after: u64,
    ) -> Result<BoxStream<'static, Result<Event, Error>>, Error> {
        self.get(principal, id).await?;
        Ok(controller::watch(Arc::clone(&self.shared), id, after).boxed())
    }

    /// Waits until a deployment is terminal and returns it as it ended (the controller that drives it may be this
    /// orchestrator's or another replica's). Bound it with a timeout of your own if the wait may be long.
    ///
    /// # Errors
    /// As [`Orchestrator::watch`] and [`Orchestrator::get`].
    pub async fn wait(&self, principal: &Principal, id: DeploymentId) -> Result<Deployment, Error> {
        let mut events = self.watch(principal, id, 0).await?;
        // The stream ends after the terminal event.
        while let Some(event) = events.next().await {
            event?;
        }
        self.get(principal, id).await
    }

    /// Asks for a deployment to stop. Idempotent while it is not terminal.
    ///
    /// # Errors
    /// The store's `NotFound` or `AlreadyFinished`; [`Error::Forbidden`].
    pub async fn cancel(&self, principal: &Principal, id: DeploymentId) -> Result<Deployment, Error> {
        let d = self.shared.store.get_deployment(id).await?;
        principal.authorize(Action::Cancel, d.environment())?;
        let d = self.shared.store.request_cancel(id, self.shared.clock.now()).await?;
        self.shared.poke();
        Ok(d)
    }

    /// Rolls `environment` back to a chosen release: a new deployment of that release's spec (its version, artifact,
    /// configuration, targets and strategy), recording in `rollback_of` the release that ran last. Only releases that
    /// succeeded are candidates; [`RollbackTo::Previous`] is the newest one whose version differs from the last
    /// release's. One key, one rollback.
    ///
    /// # Errors
    /// [`Error::Invalid`] (field `to`) when no release matches; [`Error::Forbidden`] without `rollback` on the
    /// environment; the store's `NotFound` for an unknown environment; else as [`Orchestrator::submit`].
    pub async fn rollback_environment(
        &self,
        principal: &Principal,
        environment: &EnvironmentName,
        to: &RollbackTo,
        idempotency_key: Option<IdempotencyKey>,
    ) -> Result<Submitted, Error> {
        principal.authorize(Action::Rollback, environment)?;
        self.shared.store.get_environment(environment).await?;
        let nothing = |why: String| {
            let mut errs = ValidationErrors::default();
            errs.push("to", why);
            Error::Invalid(errs)
        };
        let matches = |last: &crate::deployment::Release, r: &crate::deployment::Release| {
            r.status == crate::deployment::DeploymentStatus::Succeeded
                && match to {
                    RollbackTo::Previous => r.version != last.version,
                    RollbackTo::Deployment(id) => r.deployment_id == *id,
                    RollbackTo::Version(v) => r.version == *v,
                }
        };
        // Newest first, page by page, stopping at the first match: the usual case reads one page.
        let filter = DeploymentFilter { environment: Some(environment.clone()), ..DeploymentFilter::default() };
        let mut last = None;
        let mut chosen = None;
        let mut cursor = None;
        for _ in 0..LIST_SCAN_PAGES {
            let page = self.shared.store.list_deployments(&filter, &PageRequest { limit: 100, cursor }).await?;
            for release in page.items.iter().filter_map(crate::deployment::Release::of) {
                let last = last.get_or_insert_with(|| release.clone());
                if matches(last, &release) {
                    chosen = Some(release);
                    break;
                }
            }
            cursor = page.next_cursor;
            if chosen.is_some() || cursor.is_none() {
                break;
            }
        }
        let last = last.ok_or_else(|| nothing(format!("nothing has run in {environment} yet")))?;
        let chosen =
            chosen.ok_or_else(|| nothing(format!("no release of {environment} that succeeded matches {to}")))?;
        let original = self.shared.store.get_deployment(chosen.deployment_id).await?;
        let draft = DeploymentDraft {
            id: DeploymentId::new(),
            spec: original.spec().clone(),
            created_by: principal.id().to_owned(),
            plan: TargetPlan::FromSpec,
            rollback_of: Some(last.deployment_id),
            retry_of: None,
            submitted_by: None,
        };
        // The request, not what it resolved to: sent again after more releases ran, it is still the same request.
        self.submit_derived(principal, draft, idempotency_key, &format!("rollback:{environment}:{to}")).await
    }

    /// Submits a new deployment that returns every target `id` changed to its `from_version`.
    ///
    /// # Errors
    /// [`Error::NotRollbackable`] when `id` is not terminal or changed nothing; else as [`Orchestrator::submit`].
    pub async fn rollback(
        &self,
        principal: &Principal,
        id: DeploymentId,
        idempotency_key: Option<IdempotencyKey>,
    ) -> Result<Submitted, Error> {
        let original = self.shared.store.get_deployment(id).await?;
        principal.authorize(Action::Rollback, original.environment())?;
        if !original.status().is_terminal() {
            return Err(Error::NotRollbackable(id, format!("it is still {}; cancel it first", original.status())));
        }
        let changed: Vec<(TargetId, Version)> = original
            .targets()
            .iter()
            .filter_map(|t| t.restorable_version().map(|from| (t.id.clone(), from.clone())))
            .collect();
        let Some((_, first_version)) = changed.first() else {
            return Err(Error::NotRollbackable(id, "no target it changed has a previous version to return to".into()));
        };
        let spec = original
            .spec()
            .with_version(first_version.clone())
            .with_targets(TargetSelector::Ids(changed.iter().map(|(t, _)| t.clone()).collect()));
        let draft = DeploymentDraft {
            id: DeploymentId::new(),
            spec,
            created_by: principal.id().to_owned(),
            plan: TargetPlan::Explicit(changed),
            rollback_of: Some(id),
            retry_of: None,
            submitted_by: None,
        };
        // Rolling back the same deployment twice with one key is one rollback.
        self.submit_derived(principal, draft, idempotency_key, &format!("rollback:{id}")).await
    }

    /// Records an operator's request on a deployment: pause, resume, promote or abort. Answers at once with the
    /// deployment as stored (the request is durable, with an event naming `principal`); the holder acts on it at its
    /// next safe point, between batches or canary steps, never half-way through a target. Repeating a request is
    /// harmless: pausing a paused deployment, or promoting a step already promoted, changes nothing more.
    ///
    /// # Errors
    /// [`Error::Forbidden`] without `operate` on its environment; the store's `NotFound`, `AlreadyFinished` (terminal)
    /// or `NotNow` (see [`Deployment::request`]).
    pub async fn control(
        &self,
        principal: &Principal,
        id: DeploymentId,
        action: crate::control::OperatorAction,
    ) -> Result<Deployment, Error> {
        let d = self.shared.store.get_deployment(id).await?;
        principal.authorize(Action::Operate, d.environment())?;
        let request = crate::control::OperatorRequest::new(action, principal.id());
        let d = self.record_request(id, &request).await?;
        tracing::info!(deployment_id = %id, action = action.name(), by = principal.id(), "operator request recorded");
        Ok(d)
    }

    /// Approves (or with `reject`, rejects) a deployment waiting for approval in a protected environment, with an
    /// optional comment. Only principals with the `approve` permission on its environment whom its rule names may
    /// decide, and never the one who submitted it when the rule prevents self-approval. Each decision is an event and
    /// counts once per approver; repeating the same decision changes nothing.
    ///
    /// # Errors
    /// [`Error::Forbidden`] without `approve`; [`Error::NotAnApprover`] when the rule does not name the principal, or
    /// it submitted the deployment; [`Error::Invalid`] for a bad comment; the store's `NotFound`, `AlreadyFinished`,
    /// or `NotNow` (not awaiting approval, or the principal decided otherwise before).
    pub async fn decide(
        &self,
        principal: &Principal,
        id: DeploymentId,
        reject: bool,
        comment: Option<String>,
    ) -> Result<Deployment, Error> {
        let d = self.shared.store.get_deployment(id).await?;
        principal.authorize(Action::Approve, d.environment())?;
        let action =
            if reject { crate::control::OperatorAction::Reject } else { crate::control::OperatorAction::Approve };
        // Approvals are counted by person: a key and a token of one person are one approver.
        let request = crate::control::OperatorRequest { action, by: principal.identity(), comment };
        request.check_comment()?;
        // The rule and the submitter never change once accepted, so they are checked here, outside the store's
        // transaction; the count of distinct approvers is the store's to keep.
        if let Some(rule) = d.protection() {
            if !rule.names(principal) {
                return Err(Error::NotAnApprover(id, format!("{} is not among its approvers", principal.id())));
            }
            if rule.prevent_self_approval
                && (d.created_by() == principal.id() || d.submitter_identity() == principal.identity())
            {
                return Err(Error::NotAnApprover(
                    id,
                    format!("{} submitted it, and its environment prevents self-approval", principal.id()),
                ));
            }
        }
        let d = self.record_request(id, &request).await?;
        tracing::info!(deployment_id = %id, action = action.name(), by = principal.id(), "approval decision recorded");
        Ok(d)
    }

    /// Lets a deployment that has not started start despite its environment's windows and freezes and a global
    /// freeze: an admin's emergency lever, with a mandatory reason, recorded as an event (and by the API, audited).
    ///
    /// # Errors
    /// [`Error::Invalid`] (field `reason`) without a reason; [`Error::Forbidden`] unless the principal may manage the
    /// environment; the store's `NotFound`, `AlreadyFinished`, or `NotNow` (it started already).
    pub async fn override_schedule(
        &self,
        principal: &Principal,
        id: DeploymentId,
        reason: &str,
    ) -> Result<Deployment, Error> {
        let d = self.shared.store.get_deployment(id).await?;
        principal.authorize(Action::ManageEnvironments, d.environment())?;
        let reason = reason.trim();
        if reason.is_empty() {
            let mut errs = ValidationErrors::default();
            errs.push("reason", "an override needs a reason");
            return Err(Error::Invalid(errs));
        }
        let mut errs = ValidationErrors::default();
        if !errs.check_text("reason", reason, crate::control::MAX_COMMENT) {
            return Err(Error::Invalid(errs));
        }
        let request = crate::control::OperatorRequest {
            action: crate::control::OperatorAction::Override,
            by: principal.id().to_owned(),
            comment: Some(reason.to_owned()),
        };
        let d = self.record_request(id, &request).await?;
        tracing::warn!(deployment_id = %id, by = principal.id(), reason, "windows and freezes overridden");
        Ok(d)
    }

    /// The global freeze, if one holds now (any principal who may read something may see it).
    ///
    /// # Errors
    /// The store's.
    pub async fn global_freeze(&self) -> Result<Option<crate::schedule::Freeze>, Error> {
        let now = self.shared.clock.now();
        Ok(self.shared.store.global_freeze().await?.filter(|f| f.holds_at(now)))
    }

    /// Freezes every environment at once (`Some(reason)`), optionally until a time, or lifts the freeze (`None`).
    /// While it holds no deployment starts anywhere; those running go on. Only an admin of every environment may.
    ///
    /// # Errors
    /// [`Error::Invalid`] (field `reason` or `until`) for an empty reason or an end in the past;
    /// [`Error::Forbidden`] unless an admin over `*`; the store's.
    pub async fn set_global_freeze(
        &self,
        principal: &Principal,
        freeze: Option<(String, Option<crate::clock::Timestamp>)>,
    ) -> Result<Option<crate::schedule::Freeze>, Error> {
        principal.authorize_global(Action::Administer)?;
        let now = self.shared.clock.now();
        let freeze = match freeze {
            None => None,
            Some((reason, until)) => {
                let mut errs = ValidationErrors::default();
                let reason = reason.trim().to_owned();
                if reason.is_empty() {
                    errs.push("reason", "give a reason of 1 to 500 characters");
                } else {
                    errs.check_text("reason", &reason, 500);
                }
                if until.is_some_and(|u| u <= now) {
                    errs.push("until", "must be in the future");
                }
                if !errs.is_empty() {
                    return Err(Error::Invalid(errs));
                }
                Some(crate::schedule::Freeze { reason, by: principal.id().to_owned(), since: now, until })
            }
        };
        self.shared.store.set_global_freeze(freeze.clone()).await?;
        match &freeze {
            Some(f) => tracing::warn!(by = %f.by, reason = %f.reason, "global freeze set"),
            None => tracing::warn!(by = principal.id(), "global freeze lifted"),
        }
        self.shared.poke();
        Ok(freeze)
    }

    /// Retries the failed and unreachable targets of a `degraded` or `failed` deployment: a new deployment of the
    /// same spec to those targets only, recording the first in `retry_of`. One key, one retry.
    ///
    /// # Errors
    /// [`Error::NotRetryable`] when `id` is not `degraded` or `failed`, or has no failed or unreachable target;
    /// [`Error::Forbidden`] without `operate`; else as [`Orchestrator::submit`].
    pub async fn retry(
        &self,
        principal: &Principal,
        id: DeploymentId,
        idempotency_key: Option<IdempotencyKey>,
    ) -> Result<Submitted, Error> {
        let original = self.shared.store.get_deployment(id).await?;
        principal.authorize(Action::Operate, original.environment())?;
        if !matches!(original.status(), crate::DeploymentStatus::Degraded | crate::DeploymentStatus::Failed) {
            return Err(Error::NotRetryable(
                id,
                format!("it is {}; only degraded or failed deployments are retried", original.status()),
            ));
        }
        let failed: Vec<(TargetId, Version)> = original
            .targets()
            .iter()
            .filter(|t| matches!(t.status, crate::TargetStatus::Failed | crate::TargetStatus::Unreachable))
            .map(|t| (t.id.clone(), t.to_version.clone()))
            .collect();
        if failed.is_empty() {
            return Err(Error::NotRetryable(id, "no target failed or was unreachable".into()));
        }
        let spec = original.spec().with_targets(TargetSelector::Ids(failed.iter().map(|(t, _)| t.clone()).collect()));
        let draft = DeploymentDraft {
            id: DeploymentId::new(),
            spec,
            created_by: principal.id().to_owned(),
            plan: TargetPlan::Explicit(failed),
            rollback_of: None,
            retry_of: Some(id),
            submitted_by: None,
        };
        self.submit_derived(principal, draft, idempotency_key, &format!("retry:{id}")).await
    }

    /// Accepts a deployment the orchestrator derived from an earlier one (a rollback, a retry). `fingerprint` names
    /// the request, so one key is one such deployment however the earlier ones changed since.
    async fn submit_derived(
        &self,
        principal: &Principal,
        draft: DeploymentDraft,
        idempotency_key: Option<IdempotencyKey>,
        fingerprint: &str,
    ) -> Result<Submitted, Error> {
        let sent = idempotency_key.clone();
        let key = idempotency_key.map(|key| (key, crate::names::Fingerprint::of(fingerprint.as_bytes())));
        let accepted = self.accept(principal, draft, key, None).await?;
        if !accepted.replayed {
            self.shared.poke();
        }
        Ok(Submitted { deployment: accepted.deployment, replayed: accepted.replayed, idempotency_key: sent })
    }

    /// Records an operator's request or an approver's decision on deployment `id` and wakes this process's runners.
    async fn record_request(
        &self,
        id: DeploymentId,
        request: &crate::control::OperatorRequest,
    ) -> Result<Deployment, Error> {
        let d = self.shared.store.request(id, request, self.shared.clock.now()).await?;
        self.shared.poke();
        Ok(d)
    }

    async fn accept(
        &self,
        principal: &Principal,
        mut draft: DeploymentDraft,
        key: Option<(IdempotencyKey, crate::names::Fingerprint)>,
        expected_revision: Option<Revision>,
    ) -> Result<crate::store::Accepted, Error> {
        let now = self.shared.clock.now();
        // Kept when it says more than `created_by`: self-approval is judged by person.
        draft.submitted_by = Some(principal.identity()).filter(|identity| identity != principal.id());
        let idempotency = key.map(|(key, fingerprint)| IdempotencyRecord {
            scope: principal.id().to_owned(),
            key,
            fingerprint,
            expires_at: crate::clock::add(now, self.shared.config.idempotency_retention),
        });
        let quota = self.shared.config.quota.filter(|_| draft.rollback_of.is_none()).map(|q| {
            let wall = std::time::SystemTime::now().checked_sub(q.window).unwrap_or(std::time::UNIX_EPOCH);
            let since_ms = wall.duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis());
            crate::store::QuotaCheck {
                submitter: draft.created_by.clone(),
                max_open: q.max_open,
                max_bytes: q.max_bytes,
                since: DeploymentId::first_at(u64::try_from(since_ms).unwrap_or(u64::MAX)),
            }
        });
        Ok(self.shared.store.accept(Acceptance { draft, idempotency, expected_revision, now, quota }).await?)
    }

    /// Claims and drives deployments one after another until none is runnable, then returns. For tests, examples and
    /// one-shot tools; services run [`Orchestrator::run`].
    ///
    /// # Errors
    /// A store error while claiming.
    pub async fn run_until_idle(&self) -> Result<usize, Error> {
        let mut driven = 0;
        loop {
            let now = self.shared.clock.now();
            let claim = self.shared.store.claim(&self.shared.config.owner, now, self.shared.config.lease).await?;
            let Some(claim) = claim else { return Ok(driven) };
            runner::drive(Arc::clone(&self.shared), claim, ShutdownSignal::never()).await;
            driven += 1;
        }
    }

    /// The controller loop: claims runnable deployments, drives up to `max_concurrent_deployments` at once, renews
    /// their leases, and returns when `shutdown` fires, releasing its leases so another replica (or the next start)
    /// resumes the work at once.
    pub async fn run(&self, shutdown: ShutdownSignal) {
        controller::run(Arc::clone(&self.shared), shutdown).await;
    }

    /// Forgets expired idempotency keys; returns how many.
    ///
    /// # Errors
    /// A store error.
    pub async fn purge_idempotency_keys(&self) -> Result<u64, StoreError> {
        self.shared.store.purge_idempotency_keys(self.shared.clock.now()).await
    }
}
