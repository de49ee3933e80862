//! [`FaultyStore`]: any [`Store`] behind a switch that makes the engine's calls fail, as a database outage, a dropped
//! connection or a commit whose answer was lost would.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use deploy_core::{
    Acceptance, Accepted, AgentReport, AgentSlot, ApiKeyRecord, AuditEntry, AuditFilter, Claim, Control,
    DeliveryOutcome, Deployment, DeploymentFilter, DeploymentId, DesiredState, Environment, EnvironmentName,
    EnvironmentSpec, EnvironmentWrite, Event, Lease, Page, PageRequest, ProgressUpdate, Revision, Store, StoreError,
    TargetId, Timestamp, WebhookDelivery, WebhookSubscription,
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

    async fn append_audit(&self, entry: AuditEntry) -> Result<(), StoreError> {
        self.inner.append_audit(entry).await
    }

    async fn list_audit(&self, filter: &AuditFilter, page: &PageRequest) -> Result<Page<AuditEntry>, StoreError> {
        self.inner.list_audit(filter, page).await
    }
}
