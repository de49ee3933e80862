//! The engine's calls to an executor, pinned with `mockall`: what it calls, how often, and with what.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::Arc;

use common::within;
use deploy_core::{
    ConcurrencyPolicy, DeploymentStatus, ExecutorError, ExecutorRouter, Health, Observation, Orchestrator, Principal,
    Submission, Version,
};
use deploy_testkit::fixtures::{env_name, environment, fast_config, request};
use deploy_testkit::mocks::MockExecutor;
use deploy_testkit::{MemoryStore, TestClock};

async fn run(mock: MockExecutor) -> deploy_core::Deployment {
    let mock = Arc::new(mock);
    let orchestrator = Orchestrator::builder(Arc::new(MemoryStore::new()), mock.clone())
        .router(ExecutorRouter::new().with("scripted", mock))
        .clock(Arc::new(TestClock::new()))
        .config(fast_config("c"))
        .build();
    let admin = Principal::system("t");
    orchestrator
        .put_environment(&admin, &env_name("prod"), environment(&["a"], "scripted", ConcurrencyPolicy::Queue), None)
        .await
        .unwrap();
    let mut req = request("prod", "svc", "2.0");
    req.failure = Some(deploy_core::spec::FailureRequest { max_failed: None, on_failure: Some("fail".into()) });
    let d = orchestrator.submit(&admin, Submission { request: req, ..Submission::default() }).await.unwrap();
    orchestrator.run_until_idle().await.unwrap();
    orchestrator.get(&admin, d.deployment.id()).await.unwrap()
}

fn running(v: &str) -> Result<Observation, ExecutorError> {
    Ok(Observation { version: Some(Version::new(v).unwrap()), health: Health::Healthy })
}

#[tokio::test(start_paused = true)]
async fn a_permanent_apply_error_is_never_retried() {
    within(async {
        let mut mock = MockExecutor::new();
        mock.expect_observe().returning(|_| running("1.0"));
        mock.expect_apply()
            .withf(|t, d| t.id.as_str() == "a" && d.version.as_str() == "2.0")
            .times(1)
            .returning(|_, _| Err(ExecutorError::permanent("image not found")));
        mock.expect_verify().never();
        let d = run(mock).await;
        assert_eq!(d.status(), DeploymentStatus::Failed);
        assert_eq!(d.targets()[0].error.as_deref(), Some("image not found"));
    })
    .await;
}

#[tokio::test(start_paused = true)]
async fn health_is_polled_until_it_holds_for_healthy_for() {
    within(async {
        let mut mock = MockExecutor::new();
        mock.expect_observe().returning(|_| running("1.0"));
        mock.expect_apply().times(1).returning(|_, _| Ok(()));
        let mut seq = mockall::Sequence::new();
        mock.expect_verify().times(2).in_sequence(&mut seq).returning(|_, _| Ok(Health::Unhealthy));
        // healthy_for 1s at a 500ms interval: healthy at t, t+0.5s and t+1s.
        mock.expect_verify().times(3).in_sequence(&mut seq).returning(|_, _| Ok(Health::Healthy));
        let d = run(mock).await;
        assert_eq!(d.status(), DeploymentStatus::Succeeded);
    })
    .await;
}
