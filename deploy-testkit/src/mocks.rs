//! `mockall` mocks of the core traits ([`MockExecutor`], [`MockSecretResolver`], [`MockClock`], [`MockStore`]), for tests
//! that want to script exact calls.

use std::time::Duration;

use async_trait::async_trait;
use deploy_core::{
    ApplyContext, Clock, DesiredState, Executor, ExecutorError, Health, ImperativeStep, Observation, Outcome,
    SecretError, SecretRef, SecretResolver, SecretValue, Target, Timestamp,
};

/// The calls of an [`Executor`] in a form `mockall` can script: synchronous, with the desired state in place of the
/// borrowed [`ApplyContext`] (secrets are left out on purpose: a test has no business seeing them).
#[mockall::automock]
pub trait ExecutorCalls {
    /// See [`Executor::observe`].
    fn observe(&self, target: &Target, wanted: Option<DesiredState>) -> Result<Observation, ExecutorError>;
    /// See [`Executor::apply`].
    fn apply(&self, target: &Target, desired: &DesiredState) -> Result<Outcome, ExecutorError>;
    /// See [`Executor::verify`].
    fn verify(&self, target: &Target, desired: &DesiredState) -> Result<Health, ExecutorError>;
    /// See [`Executor::run_step`].
    fn run_step(
        &self,
        target: &Target,
        step: &ImperativeStep,
        desired: &DesiredState,
    ) -> Result<Outcome, ExecutorError>;
}

/// A mock [`Executor`]: script it through [`ExecutorCalls`]' expectations (`expect_apply()`, ...).
pub type MockExecutor = MockExecutorCalls;

#[async_trait]
impl Executor for MockExecutorCalls {
    async fn observe(&self, target: &Target, wanted: Option<&DesiredState>) -> Result<Observation, ExecutorError> {
        ExecutorCalls::observe(self, target, wanted.cloned())
    }
    async fn apply(&self, target: &Target, ctx: ApplyContext<'_>) -> Result<Outcome, ExecutorError> {
        ExecutorCalls::apply(self, target, ctx.desired)
    }
    async fn verify(&self, target: &Target, desired: &DesiredState) -> Result<Health, ExecutorError> {
        ExecutorCalls::verify(self, target, desired)
    }
    async fn run_step(
        &self,
        target: &Target,
        step: &ImperativeStep,
        ctx: ApplyContext<'_>,
    ) -> Result<Outcome, ExecutorError> {
        ExecutorCalls::run_step(self, target, step, ctx.desired)
    }
}

mockall::mock! {
    /// A mock [`SecretResolver`].
    pub SecretResolver {}

    #[async_trait]
    impl SecretResolver for SecretResolver {
        async fn resolve(&self, reference: &SecretRef) -> Result<SecretValue, SecretError>;
    }
}

mockall::mock! {
    /// A mock [`Clock`].
    #[derive(Debug)]
    pub Clock {}

    #[async_trait]
    impl Clock for Clock {
        fn now(&self) -> Timestamp;
        async fn sleep(&self, duration: Duration);
    }
}

mockall::mock! {
    /// A mock [`Store`](deploy_core::Store), for tests of code that must react to one particular store answer (a
    /// stale token, an outage) without building the state that leads to it.
    pub Store {}

    #[async_trait]
    impl deploy_core::Store for Store {
        async fn put_environment(
            &self,
            name: &deploy_core::EnvironmentName,
            spec: deploy_core::EnvironmentSpec,
            expected: Option<deploy_core::Revision>,
            now: Timestamp,
        ) -> Result<deploy_core::EnvironmentWrite, deploy_core::StoreError>;
        async fn get_environment(
            &self,
            name: &deploy_core::EnvironmentName,
        ) -> Result<deploy_core::Environment, deploy_core::StoreError>;
        async fn list_environments(
            &self,
            page: &deploy_core::PageRequest,
        ) -> Result<deploy_core::Page<deploy_core::Environment>, deploy_core::StoreError>;
        async fn accept(&self, acceptance: deploy_core::Acceptance) -> Result<deploy_core::Accepted, deploy_core::StoreError>;
        async fn get_deployment(
            &self,
            id: deploy_core::DeploymentId,
        ) -> Result<deploy_core::Deployment, deploy_core::StoreError>;
        async fn list_deployments(
            &self,
            filter: &deploy_core::DeploymentFilter,
            page: &deploy_core::PageRequest,
        ) -> Result<deploy_core::Page<deploy_core::Deployment>, deploy_core::StoreError>;
        async fn count_deployments(
            &self,
            filter: &deploy_core::DeploymentFilter,
        ) -> Result<u64, deploy_core::StoreError>;
        async fn events(
            &self,
            id: deploy_core::DeploymentId,
            after: u64,
            limit: usize,
        ) -> Result<Vec<deploy_core::Event>, deploy_core::StoreError>;
        async fn request_cancel(
            &self,
            id: deploy_core::DeploymentId,
            now: Timestamp,
        ) -> Result<deploy_core::Deployment, deploy_core::StoreError>;
        async fn global_freeze(&self) -> Result<Option<deploy_core::Freeze>, deploy_core::StoreError>;
        async fn set_global_freeze(
            &self,
            freeze: Option<deploy_core::Freeze>,
        ) -> Result<(), deploy_core::StoreError>;
        async fn request(
            &self,
            id: deploy_core::DeploymentId,
            request: &deploy_core::OperatorRequest,
            now: Timestamp,
        ) -> Result<deploy_core::Deployment, deploy_core::StoreError>;
        async fn claim(
            &self,
            owner: &str,
            now: Timestamp,
            lease: Duration,
        ) -> Result<Option<deploy_core::Claim>, deploy_core::StoreError>;
        async fn renew(
            &self,
            lease: &deploy_core::Lease,
            now: Timestamp,
            duration: Duration,
        ) -> Result<(deploy_core::Lease, deploy_core::Control), deploy_core::StoreError>;
        async fn release(&self, lease: &deploy_core::Lease) -> Result<(), deploy_core::StoreError>;
        async fn record(
            &self,
            lease: &deploy_core::Lease,
            update: deploy_core::ProgressUpdate,
        ) -> Result<deploy_core::Control, deploy_core::StoreError>;
        async fn purge_idempotency_keys(&self, now: Timestamp) -> Result<u64, deploy_core::StoreError>;
    }
}

mockall::mock! {
    /// A mock [`WebhookStore`](deploy_core::WebhookStore): an outbox that answers what a test scripts (a dispatcher's
    /// benchmark without a database, a claim that fails once).
    pub WebhookStore {}

    #[async_trait]
    impl deploy_core::WebhookStore for WebhookStore {
        async fn create_webhook(
            &self,
            subscription: deploy_core::WebhookSubscription,
        ) -> Result<deploy_core::WebhookSubscription, deploy_core::StoreError>;
        async fn list_webhooks(&self) -> Result<Vec<deploy_core::WebhookSubscription>, deploy_core::StoreError>;
        async fn delete_webhook(&self, id: uuid::Uuid) -> Result<(), deploy_core::StoreError>;
        async fn claim_deliveries(
            &self,
            now: Timestamp,
            limit: usize,
            per_subscription: usize,
            lease: Duration,
        ) -> Result<Vec<(deploy_core::WebhookDelivery, deploy_core::WebhookSubscription)>, deploy_core::StoreError>;
        async fn complete_deliveries(
            &self,
            outcomes: &[(String, deploy_core::DeliveryOutcome)],
            now: Timestamp,
        ) -> Result<(), deploy_core::StoreError>;
        async fn redeliver(
            &self,
            subscription: uuid::Uuid,
            id: &str,
            now: Timestamp,
        ) -> Result<deploy_core::WebhookDelivery, deploy_core::StoreError>;
        async fn list_deliveries(
            &self,
            subscription: uuid::Uuid,
            page: &deploy_core::PageRequest,
        ) -> Result<deploy_core::Page<deploy_core::WebhookDelivery>, deploy_core::StoreError>;
    }
}
