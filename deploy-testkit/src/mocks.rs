//! `mockall` mocks of the core traits, for tests that want to script exact calls.

use std::time::Duration;

use async_trait::async_trait;
use deploy_core::{
    ApplyContext, Clock, DesiredState, Executor, ExecutorError, Health, ImperativeStep, Observation, SecretError,
    SecretRef, SecretResolver, SecretValue, StepOutput, Target, Timestamp,
};

/// The calls of an [`Executor`] in a form `mockall` can script: synchronous, with the desired state in place of the
/// borrowed [`ApplyContext`] (secrets are left out on purpose: a test has no business seeing them).
#[mockall::automock]
pub trait ExecutorCalls {
    /// See [`Executor::observe`].
    fn observe(&self, target: &Target) -> Result<Observation, ExecutorError>;
    /// See [`Executor::apply`].
    fn apply(&self, target: &Target, desired: &DesiredState) -> Result<(), ExecutorError>;
    /// See [`Executor::verify`].
    fn verify(&self, target: &Target, desired: &DesiredState) -> Result<Health, ExecutorError>;
    /// See [`Executor::run_step`].
    fn run_step(&self, target: &Target, step: &ImperativeStep, desired: &DesiredState) -> Result<StepOutput, ExecutorError>;
}

/// A mock [`Executor`]: script it through [`ExecutorCalls`]' expectations (`expect_apply()`, ...).
pub type MockExecutor = MockExecutorCalls;

#[async_trait]
impl Executor for MockExecutorCalls {
    async fn observe(&self, target: &Target) -> Result<Observation, ExecutorError> {
        ExecutorCalls::observe(self, target)
    }
    async fn apply(&self, target: &Target, ctx: ApplyContext<'_>) -> Result<(), ExecutorError> {
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
    ) -> Result<StepOutput, ExecutorError> {
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
