//! [`Composite`]: one store made of two, the engine's [`Store`] from one and the server's tables from another.

use std::time::Duration;

use async_trait::async_trait;
use deploy_core::{
    Acceptance, Accepted, AgentReport, AgentSlot, AgentStore, ApiKeyRecord, AuditEntry, AuditFilter, AuditLog, Claim,
    Control, DeliveryOutcome, Deployment, DeploymentFilter, DeploymentId, DesiredState, Environment, EnvironmentName,
    EnvironmentSpec, EnvironmentWrite, Event, KeyStore, Lease, Page, PageRequest, ProgressUpdate, Revision, Store,
    StoreError, TargetId, Timestamp, WebhookDelivery, WebhookStore, WebhookSubscription,
};
use uuid::Uuid;

/// A [`FullStore`](deploy_core::FullStore) whose engine part ([`Store`]) is `engine` and whose server tables
/// (webhooks, API keys, agents, audit) are `tables`: for a test that scripts the engine's answers with a mock (an
/// outage, a corrupt row) while the server still authenticates and audits, or for an embedder whose deployments live
/// in one system and whose keys live in another.
///
/// Webhook deliveries are enqueued by the store that records the events, so deliveries appear in `tables` only when
/// it is also the `engine` (or shares its data).
#[derive(Debug, Clone, Default)]
pub struct Composite<E, T> {
    /// Answers every [`Store`] method.
    pub engine: E,
    /// Answers every method of the other traits.
    pub tables: T,
}

#[async_trait]
impl<E: Store, T: Send + Sync> Store for Composite<E, T> {
    async fn put_environment(
        &self,
        name: &EnvironmentName,
        spec: EnvironmentSpec,
        expected: Option<Revision>,
        now: Timestamp,
    ) -> Result<EnvironmentWrite, StoreError> {
        self.engine.put_environment(name, spec, expected, now).await
    }
    async fn get_environment(&self, name: &EnvironmentName) -> Result<Environment, StoreError> {
        self.engine.get_environment(name).await
    }
    async fn list_environments(&self, page: &PageRequest) -> Result<Page<Environment>, StoreError> {
        self.engine.list_environments(page).await
    }
    async fn accept(&self, acceptance: Acceptance) -> Result<Accepted, StoreError> {
        self.engine.accept(acceptance).await
    }
    async fn get_deployment(&self, id: DeploymentId) -> Result<Deployment, StoreError> {
        self.engine.get_deployment(id).await
    }
    async fn list_deployments(
        &self,
        filter: &DeploymentFilter,
        page: &PageRequest,
    ) -> Result<Page<Deployment>, StoreError> {
        self.engine.list_deployments(filter, page).await
    }
    async fn count_deployments(&self, filter: &DeploymentFilter) -> Result<u64, StoreError> {
        self.engine.count_deployments(filter).await
    }
    async fn events(&self, id: DeploymentId, after: u64, limit: usize) -> Result<Vec<Event>, StoreError> {
        self.engine.events(id, after, limit).await
    }
    async fn request_cancel(&self, id: DeploymentId, now: Timestamp) -> Result<Deployment, StoreError> {
        self.engine.request_cancel(id, now).await
    }
    async fn request(
        &self,
        id: DeploymentId,
        request: &deploy_core::OperatorRequest,
        now: Timestamp,
    ) -> Result<Deployment, StoreError> {
        self.engine.request(id, request, now).await
    }
    async fn global_freeze(&self) -> Result<Option<deploy_core::Freeze>, StoreError> {
        self.engine.global_freeze().await
    }
    async fn set_global_freeze(&self, freeze: Option<deploy_core::Freeze>) -> Result<(), StoreError> {
        self.engine.set_global_freeze(freeze).await
    }
    async fn claim(&self, owner: &str, now: Timestamp, lease: Duration) -> Result<Option<Claim>, StoreError> {
        self.engine.claim(owner, now, lease).await
    }
    async fn renew(&self, lease: &Lease, now: Timestamp, duration: Duration) -> Result<(Lease, Control), StoreError> {
        self.engine.renew(lease, now, duration).await
    }
    async fn release(&self, lease: &Lease) -> Result<(), StoreError> {
        self.engine.release(lease).await
    }
    async fn record(&self, lease: &Lease, update: ProgressUpdate) -> Result<Control, StoreError> {
        self.engine.record(lease, update).await
    }
    async fn purge_idempotency_keys(&self, now: Timestamp) -> Result<u64, StoreError> {
        self.engine.purge_idempotency_keys(now).await
    }
}

#[async_trait]
impl<E: Send + Sync, T: WebhookStore> WebhookStore for Composite<E, T> {
    async fn create_webhook(&self, subscription: WebhookSubscription) -> Result<WebhookSubscription, StoreError> {
        self.tables.create_webhook(subscription).await
    }
    async fn list_webhooks(&self) -> Result<Vec<WebhookSubscription>, StoreError> {
        self.tables.list_webhooks().await
    }
    async fn delete_webhook(&self, id: Uuid) -> Result<(), StoreError> {
        self.tables.delete_webhook(id).await
    }
    async fn claim_deliveries(
        &self,
        now: Timestamp,
        limit: usize,
        per_subscription: usize,
        lease: Duration,
    ) -> Result<Vec<(WebhookDelivery, WebhookSubscription)>, StoreError> {
        self.tables.claim_deliveries(now, limit, per_subscription, lease).await
    }
    async fn complete_deliveries(
        &self,
        outcomes: &[(String, DeliveryOutcome)],
        now: Timestamp,
    ) -> Result<(), StoreError> {
        self.tables.complete_deliveries(outcomes, now).await
    }
    async fn complete_and_claim(
        &self,
        outcomes: &[(String, DeliveryOutcome)],
        now: Timestamp,
        limit: usize,
        per_subscription: usize,
        lease: Duration,
    ) -> Result<Vec<(WebhookDelivery, WebhookSubscription)>, StoreError> {
        self.tables.complete_and_claim(outcomes, now, limit, per_subscription, lease).await
    }
    async fn redeliver(&self, subscription: Uuid, id: &str, now: Timestamp) -> Result<WebhookDelivery, StoreError> {
        self.tables.redeliver(subscription, id, now).await
    }
    async fn list_deliveries(
        &self,
        subscription: Uuid,
        page: &PageRequest,
    ) -> Result<Page<WebhookDelivery>, StoreError> {
        self.tables.list_deliveries(subscription, page).await
    }
}

#[async_trait]
impl<E: Send + Sync, T: KeyStore> KeyStore for Composite<E, T> {
    async fn create_api_key(&self, record: ApiKeyRecord) -> Result<(), StoreError> {
        self.tables.create_api_key(record).await
    }
    async fn api_key_by_hash(&self, key_hash: &str) -> Result<Option<ApiKeyRecord>, StoreError> {
        self.tables.api_key_by_hash(key_hash).await
    }
    async fn list_api_keys(&self) -> Result<Vec<ApiKeyRecord>, StoreError> {
        self.tables.list_api_keys().await
    }
    async fn delete_api_key(&self, id: Uuid) -> Result<(), StoreError> {
        self.tables.delete_api_key(id).await
    }
}

#[async_trait]
impl<E: Send + Sync, T: AgentStore> AgentStore for Composite<E, T> {
    async fn agent_slot(
        &self,
        environment: &EnvironmentName,
        target: &TargetId,
    ) -> Result<Option<AgentSlot>, StoreError> {
        self.tables.agent_slot(environment, target).await
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
        self.tables.assign_agent(environment, target, desired, deployment, fencing_token, now).await
    }
    async fn record_agent_report(
        &self,
        environment: &EnvironmentName,
        target: &TargetId,
        report: AgentReport,
        now: Timestamp,
    ) -> Result<AgentSlot, StoreError> {
        self.tables.record_agent_report(environment, target, report, now).await
    }
}

#[async_trait]
impl<E: Send + Sync, T: AuditLog> AuditLog for Composite<E, T> {
    async fn append_audit(&self, entry: AuditEntry) -> Result<(), StoreError> {
        self.tables.append_audit(entry).await
    }
    async fn list_audit(&self, filter: &AuditFilter, page: &PageRequest) -> Result<Page<AuditEntry>, StoreError> {
        self.tables.list_audit(filter, page).await
    }
}
