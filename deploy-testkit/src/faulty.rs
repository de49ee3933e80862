//! [`FaultyStore`]: any [`Store`] behind a switch that makes the engine's calls fail, as a database outage, a dropped
//! connection or a commit whose answer was lost would.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use deploy_core::{
    Acceptance, Accepted, AgentReport, AgentSlot, AgentStore, ApiKeyRecord, AuditEntry, AuditFilter, AuditLog, Claim,
    Control, DeliveryOutcome, Deployment, DeploymentFilter, DeploymentId, DesiredState, Environment, EnvironmentName,
    EnvironmentSpec, EnvironmentWrite, Event, KeyStore, Lease, Page, PageRequest, ProgressUpdate, Revision, Store,
    StoreError, TargetId, Timestamp, WebhookDelivery, WebhookStore, WebhookSubscription,
};
use uuid::Uuid;

/// The switch of a [`FaultyStore`]; clones share it.
#[derive(Debug, Clone, Default)]
pub struct StoreFaults {
    inner: Arc<FaultState>,
}

#[derive(Debug, Default)]
struct FaultState {
    down: AtomicBool,
    fail_next: AtomicU32,
    lose_answers: AtomicU32,
    injected: AtomicU64,
}

impl StoreFaults {
    /// While `down`, every call fails with [`StoreError::Unavailable`] and changes nothing (an outage).
    pub fn set_down(&self, down: bool) {
        self.inner.down.store(down, Ordering::SeqCst);
    }

    /// The next `n` calls fail with [`StoreError::Unavailable`] and change nothing (dropped connections).
    pub fn fail_next(&self, n: u32) {
        self.inner.fail_next.store(n, Ordering::SeqCst);
    }

    /// The next `n` writes (accept, claim, renew, record, release) are made, but their callers get
    /// [`StoreError::Unavailable`]: a commit whose answer was lost.
    pub fn lose_next_answers(&self, n: u32) {
        self.inner.lose_answers.store(n, Ordering::SeqCst);
    }

    /// Ends every fault.
    pub fn heal(&self) {
        self.set_down(false);
        self.fail_next(0);
        self.lose_next_answers(0);
    }

    /// How many calls failed because of this switch.
    #[must_use]
    pub fn injected(&self) -> u64 {
        self.inner.injected.load(Ordering::SeqCst)
    }

    fn take(counter: &AtomicU32) -> bool {
        counter.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1)).is_ok()
    }

    /// Whether this call fails before it reaches the store.
    fn refuse(&self) -> Result<(), StoreError> {
        if self.inner.down.load(Ordering::SeqCst) || Self::take(&self.inner.fail_next) {
            self.inner.injected.fetch_add(1, Ordering::SeqCst);
            return Err(unavailable("the store is unreachable (injected)"));
        }
        Ok(())
    }

    /// Whether the answer of a write that was made is lost on its way back.
    fn lose<T>(&self, result: Result<T, StoreError>) -> Result<T, StoreError> {
        if result.is_ok() && Self::take(&self.inner.lose_answers) {
            self.inner.injected.fetch_add(1, Ordering::SeqCst);
            return Err(unavailable("the connection dropped after the commit (injected)"));
        }
        result
    }
}

fn unavailable(what: &'static str) -> StoreError {
    StoreError::Unavailable(what.into())
}

/// A [`Store`] whose calls fail when its [`StoreFaults`] say so; otherwise it is the store it wraps. Faults reach the
/// calls the engine makes (environments, deployments, events, claims and leases, records); the server's own tables
/// (webhooks, keys, audit, agents) pass through.
#[derive(Debug, Clone)]
pub struct FaultyStore<S> {
    inner: Arc<S>,
    faults: StoreFaults,
}

impl<S: Store> FaultyStore<S> {
    /// `inner` behind a new switch.
    #[must_use]
    pub fn new(inner: Arc<S>) -> Self {
        Self { inner, faults: StoreFaults::default() }
    }

    /// The switch.
    #[must_use]
    pub fn faults(&self) -> StoreFaults {
        self.faults.clone()
    }

    /// The store behind the switch, to read the truth whatever the faults.
    #[must_use]
    pub fn inner(&self) -> &Arc<S> {
        &self.inner
    }
}

#[async_trait]
impl<S: Store> Store for FaultyStore<S> {
    async fn put_environment(
        &self,
        name: &EnvironmentName,
        spec: EnvironmentSpec,
        expected: Option<Revision>,
        now: Timestamp,
    ) -> Result<EnvironmentWrite, StoreError> {
        self.faults.refuse()?;
        self.inner.put_environment(name, spec, expected, now).await
    }

    async fn get_environment(&self, name: &EnvironmentName) -> Result<Environment, StoreError> {
        self.faults.refuse()?;
        self.inner.get_environment(name).await
    }

    async fn list_environments(&self, page: &PageRequest) -> Result<Page<Environment>, StoreError> {
        self.faults.refuse()?;
        self.inner.list_environments(page).await
    }

    async fn accept(&self, acceptance: Acceptance) -> Result<Accepted, StoreError> {
        self.faults.refuse()?;
        self.faults.lose(self.inner.accept(acceptance).await)
    }

    async fn get_deployment(&self, id: DeploymentId) -> Result<Deployment, StoreError> {
        self.faults.refuse()?;
        self.inner.get_deployment(id).await
    }

    async fn list_deployments(
        &self,
        filter: &DeploymentFilter,
        page: &PageRequest,
    ) -> Result<Page<Deployment>, StoreError> {
        self.faults.refuse()?;
        self.inner.list_deployments(filter, page).await
    }

    async fn count_deployments(&self, filter: &DeploymentFilter) -> Result<u64, StoreError> {
        self.faults.refuse()?;
        self.inner.count_deployments(filter).await
    }

    async fn events(&self, id: DeploymentId, after: u64, limit: usize) -> Result<Vec<Event>, StoreError> {
        self.faults.refuse()?;
        self.inner.events(id, after, limit).await
    }

    async fn request_cancel(&self, id: DeploymentId, now: Timestamp) -> Result<Deployment, StoreError> {
        self.faults.refuse()?;
        self.faults.lose(self.inner.request_cancel(id, now).await)
    }

    async fn request(
        &self,
        id: DeploymentId,
        request: &deploy_core::OperatorRequest,
        now: Timestamp,
    ) -> Result<Deployment, StoreError> {
        self.faults.refuse()?;
        self.faults.lose(self.inner.request(id, request, now).await)
    }

    async fn global_freeze(&self) -> Result<Option<deploy_core::Freeze>, StoreError> {
        self.faults.refuse()?;
        self.inner.global_freeze().await
    }

    async fn set_global_freeze(&self, freeze: Option<deploy_core::Freeze>) -> Result<(), StoreError> {
        self.faults.refuse()?;
        self.faults.lose(self.inner.set_global_freeze(freeze).await)
    }

    async fn claim(&self, owner: &str, now: Timestamp, lease: Duration) -> Result<Option<Claim>, StoreError> {
        self.faults.refuse()?;
        self.faults.lose(self.inner.claim(owner, now, lease).await)
    }

    async fn renew(&self, lease: &Lease, now: Timestamp, duration: Duration) -> Result<(Lease, Control), StoreError> {
        self.faults.refuse()?;
        self.faults.lose(self.inner.renew(lease, now, duration).await)
    }

    async fn release(&self, lease: &Lease) -> Result<(), StoreError> {
        self.faults.refuse()?;
        self.faults.lose(self.inner.release(lease).await)
    }

    async fn record(&self, lease: &Lease, update: ProgressUpdate) -> Result<Control, StoreError> {
        self.faults.refuse()?;
        self.faults.lose(self.inner.record(lease, update).await)
    }

    async fn purge_idempotency_keys(&self, now: Timestamp) -> Result<u64, StoreError> {
        self.faults.refuse()?;
        self.inner.purge_idempotency_keys(now).await
    }
}

#[async_trait]
impl<S: WebhookStore> WebhookStore for FaultyStore<S> {
    async fn create_webhook(&self, subscription: WebhookSubscription) -> Result<WebhookSubscription, StoreError> {
        self.inner.create_webhook(subscription).await
    }

    async fn list_webhooks(&self) -> Result<Vec<WebhookSubscription>, StoreError> {
        self.inner.list_webhooks().await
    }

    async fn delete_webhook(&self, id: Uuid) -> Result<(), StoreError> {
        self.inner.delete_webhook(id).await
    }

    async fn claim_deliveries(
        &self,
        now: Timestamp,
        limit: usize,
        per_subscription: usize,
        lease: Duration,
    ) -> Result<Vec<(WebhookDelivery, WebhookSubscription)>, StoreError> {
        self.inner.claim_deliveries(now, limit, per_subscription, lease).await
    }

    async fn complete_deliveries(
        &self,
        outcomes: &[(String, DeliveryOutcome)],
        now: Timestamp,
    ) -> Result<(), StoreError> {
        self.inner.complete_deliveries(outcomes, now).await
    }

    async fn redeliver(&self, subscription: Uuid, id: &str, now: Timestamp) -> Result<WebhookDelivery, StoreError> {
        self.inner.redeliver(subscription, id, now).await
    }

    async fn list_deliveries(
        &self,
        subscription: Uuid,
        page: &PageRequest,
    ) -> Result<Page<WebhookDelivery>, StoreError> {
        self.inner.list_deliveries(subscription, page).await
    }
}

#[async_trait]
impl<S: KeyStore> KeyStore for FaultyStore<S> {
    async fn create_api_key(&self, record: ApiKeyRecord) -> Result<(), StoreError> {
        self.inner.create_api_key(record).await
    }

    async fn api_key_by_hash(&self, key_hash: &str) -> Result<Option<ApiKeyRecord>, StoreError> {
        self.inner.api_key_by_hash(key_hash).await
    }

    async fn list_api_keys(&self) -> Result<Vec<ApiKeyRecord>, StoreError> {
        self.inner.list_api_keys().await
    }

    async fn delete_api_key(&self, id: Uuid) -> Result<(), StoreError> {
        self.inner.delete_api_key(id).await
    }
}

#[async_trait]
impl<S: AgentStore> AgentStore for FaultyStore<S> {
    async fn agent_slot(
        &self,
        environment: &EnvironmentName,
        target: &TargetId,
    ) -> Result<Option<AgentSlot>, StoreError> {
        self.inner.agent_slot(environment, target).await
    }

    async fn assign_agent(
        &self,
        environment: &EnvironmentName,
        target: &TargetId,
        desired: DesiredState,
        deployment: DeploymentId,
        fencing_token: u64,
        now: Timestamp,
    ) -> Result<AgentSlot, StoreError> {
        self.inner.assign_agent(environment, target, desired, deployment, fencing_token, now).await
    }

    async fn record_agent_report(
        &self,
        environment: &EnvironmentName,
        target: &TargetId,
        report: AgentReport,
        now: Timestamp,
    ) -> Result<AgentSlot, StoreError> {
        self.inner.record_agent_report(environment, target, report, now).await
    }
}

#[async_trait]
impl<S: AuditLog> AuditLog for FaultyStore<S> {
    async fn append_audit(&self, entry: AuditEntry) -> Result<(), StoreError> {
        self.inner.append_audit(entry).await
    }

    async fn list_audit(&self, filter: &AuditFilter, page: &PageRequest) -> Result<Page<AuditEntry>, StoreError> {
        self.inner.list_audit(filter, page).await
    }
}

/// An executor call, as [`FaultyExecutor`]'s faults name them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Op {
    /// [`Executor::observe`](deploy_core::Executor::observe).
    Observe,
    /// [`Executor::apply`](deploy_core::Executor::apply).
    Apply,
    /// [`Executor::verify`](deploy_core::Executor::verify).
    Verify,
    /// [`Executor::run_step`](deploy_core::Executor::run_step).
    Step,
}

/// What a [`FaultyExecutor`] does to calls of one [`Op`].
#[derive(Debug, Clone, Default)]
struct OpFaults {
    /// The next calls fail with these classes, in order, without reaching the executor.
    fail: std::collections::VecDeque<deploy_core::ErrorClass>,
    /// Every call waits this long (on the executor's clock) before it reaches the executor.
    delay: Duration,
    /// Every call hangs (until its future is dropped).
    hang: bool,
}

/// The switch of a [`FaultyExecutor`]; clones share it.
#[derive(Debug, Clone, Default)]
pub struct ExecutorFaults {
    ops: Arc<std::sync::Mutex<std::collections::BTreeMap<Op, OpFaults>>>,
    injected: Arc<AtomicU64>,
}

impl ExecutorFaults {
    fn with<R>(&self, op: Op, f: impl FnOnce(&mut OpFaults) -> R) -> R {
        let mut ops = self.ops.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        f(ops.entry(op).or_default())
    }

    /// The next `n` calls of `op` fail with an error of `class`, and reach nothing.
    pub fn fail_next(&self, op: Op, n: usize, class: deploy_core::ErrorClass) {
        self.with(op, |f| f.fail.extend(std::iter::repeat_n(class, n)));
    }

    /// Every call of `op` waits `delay` first (on the clock the executor was given: virtual time in tests).
    pub fn delay(&self, op: Op, delay: Duration) {
        self.with(op, |f| f.delay = delay);
    }

    /// While `hang`, every call of `op` never answers (the engine must bound it or drop it).
    pub fn hang(&self, op: Op, hang: bool) {
        self.with(op, |f| f.hang = hang);
    }

    /// Ends every fault.
    pub fn heal(&self) {
        self.ops.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clear();
    }

    /// How many calls failed or hung because of this switch.
    #[must_use]
    pub fn injected(&self) -> u64 {
        self.injected.load(Ordering::SeqCst)
    }

    async fn before(&self, op: Op, clock: &dyn deploy_core::Clock) -> Result<(), deploy_core::ExecutorError> {
        let (fail, delay, hang) = self.with(op, |f| (f.fail.pop_front(), f.delay, f.hang));
        if let Some(class) = fail {
            self.injected.fetch_add(1, Ordering::SeqCst);
            let message = format!("{op:?} failed (injected)");
            return Err(match class {
                deploy_core::ErrorClass::Retryable => deploy_core::ExecutorError::retryable(message),
                deploy_core::ErrorClass::Permanent => deploy_core::ExecutorError::permanent(message),
                deploy_core::ErrorClass::Unreachable => deploy_core::ExecutorError::unreachable(message),
            });
        }
        if hang {
            self.injected.fetch_add(1, Ordering::SeqCst);
            futures::future::pending::<()>().await;
        }
        if !delay.is_zero() {
            clock.sleep(delay).await;
        }
        Ok(())
    }
}

/// Any [`Executor`](deploy_core::Executor) behind a switch ([`ExecutorFaults`]) that makes its calls fail with a
/// chosen class, wait, or hang: to see how the engine treats an executor of one's own when its infrastructure
/// misbehaves, without making the infrastructure misbehave.
///
/// ```
/// # use std::sync::Arc;
/// use deploy_core::ErrorClass;
/// use deploy_testkit::faulty::{FaultyExecutor, Op};
/// use deploy_testkit::{ScriptedExecutor, TestClock};
/// let clock = Arc::new(TestClock::new());
/// let executor = FaultyExecutor::new(ScriptedExecutor::new("mine", clock.clone()), clock);
/// executor.faults().fail_next(Op::Apply, 2, ErrorClass::Retryable);
/// ```
#[derive(Debug)]
pub struct FaultyExecutor<E> {
    inner: E,
    clock: Arc<dyn deploy_core::Clock>,
    faults: ExecutorFaults,
}

impl<E> FaultyExecutor<E> {
    /// `inner` behind a switch that is off; delays are measured on `clock`.
    pub fn new(inner: E, clock: Arc<dyn deploy_core::Clock>) -> Self {
        Self { inner, clock, faults: ExecutorFaults::default() }
    }

    /// The switch.
    #[must_use]
    pub fn faults(&self) -> &ExecutorFaults {
        &self.faults
    }

    /// The executor behind the switch.
    #[must_use]
    pub fn inner(&self) -> &E {
        &self.inner
    }
}

#[async_trait]
impl<E: deploy_core::Executor> deploy_core::Executor for FaultyExecutor<E> {
    async fn observe(
        &self,
        target: &deploy_core::Target,
        wanted: Option<&DesiredState>,
    ) -> Result<deploy_core::Observation, deploy_core::ExecutorError> {
        self.faults.before(Op::Observe, self.clock.as_ref()).await?;
        self.inner.observe(target, wanted).await
    }
    async fn apply(
        &self,
        target: &deploy_core::Target,
        ctx: deploy_core::ApplyContext<'_>,
    ) -> Result<deploy_core::Outcome, deploy_core::ExecutorError> {
        self.faults.before(Op::Apply, self.clock.as_ref()).await?;
        self.inner.apply(target, ctx).await
    }
    async fn verify(
        &self,
        target: &deploy_core::Target,
        desired: &DesiredState,
    ) -> Result<deploy_core::Health, deploy_core::ExecutorError> {
        self.faults.before(Op::Verify, self.clock.as_ref()).await?;
        self.inner.verify(target, desired).await
    }
    async fn run_step(
        &self,
        target: &deploy_core::Target,
        step: &deploy_core::ImperativeStep,
        ctx: deploy_core::ApplyContext<'_>,
    ) -> Result<deploy_core::Outcome, deploy_core::ExecutorError> {
        self.faults.before(Op::Step, self.clock.as_ref()).await?;
        self.inner.run_step(target, step, ctx).await
    }
    fn runs_host_programs(&self) -> bool {
        self.inner.runs_host_programs()
    }
    fn passes_secret_references(&self) -> bool {
        self.inner.passes_secret_references()
    }
}
