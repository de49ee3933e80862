//! `FaultyExecutor` around an executor of one's own, driven through a `Harness` generic over the executor: what the
//! engine makes of injected retryable and permanent failures, and of a hung health probe.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::Duration;

use deploy_core::{ConcurrencyPolicy, DeploymentStatus, ErrorClass, TargetStatus};
use deploy_testkit::faulty::{FaultyExecutor, Op};
use deploy_testkit::fixtures::{Harness, request};
use deploy_testkit::{ScriptedExecutor, TestClock};

async fn harness() -> Harness<FaultyExecutor<ScriptedExecutor>> {
    let clock = Arc::new(TestClock::new());
    let scripted =
        ScriptedExecutor::new("mine", clock.clone()).with_target("a-1", Some("1.0")).with_target("a-2", Some("1.0"));
    let executor = Arc::new(FaultyExecutor::new(scripted, clock.clone()));
    Harness::with_executor("faulty", &["a-1", "a-2"], executor, clock, ConcurrencyPolicy::Queue).await
}

#[tokio::test(start_paused = true)]
async fn injected_retryable_failures_are_retried_with_an_event_each() {
    let h = harness().await;
    h.executor.faults().fail_next(Op::Apply, 2, ErrorClass::Retryable);
    let d = h.submit(request(h.environment.as_str(), "svc", "2.0")).await.unwrap();
    h.settle().await;
    assert_eq!(h.get(d.id()).await.status(), DeploymentStatus::Succeeded);
    assert_eq!(h.executor.faults().injected(), 2);
    let retries = h.events(d.id()).await.into_iter().filter(|e| e.message.contains("retrying")).count();
    assert_eq!(retries, 2, "each retry is an event");
    assert_eq!(h.executor.inner().version_of("a-1").as_deref(), Some("2.0"));
}

#[tokio::test(start_paused = true)]
async fn an_injected_permanent_failure_fails_its_target_without_retries() {
    let h = harness().await;
    h.executor.faults().fail_next(Op::Apply, 1, ErrorClass::Permanent);
    let d = h.submit(request(h.environment.as_str(), "svc", "2.0")).await.unwrap();
    h.settle().await;
    let done = h.get(d.id()).await;
    assert_ne!(done.status(), DeploymentStatus::Succeeded);
    let failed: Vec<_> =
        done.targets().iter().filter(|t| t.error.as_deref().is_some_and(|e| e.contains("injected"))).collect();
    assert_eq!(failed.len(), 1, "one target failed with the injected error: {:?}", done.targets());
    assert!(failed[0].status == TargetStatus::Failed || failed[0].status == TargetStatus::RolledBack);
    assert_eq!(h.executor.faults().injected(), 1, "a permanent error is not retried");
}

#[tokio::test(start_paused = true)]
async fn a_hung_health_probe_fails_verification_instead_of_holding_the_environment() {
    let h = harness().await;
    h.executor.faults().hang(Op::Verify, true);
    let mut req = request(h.environment.as_str(), "svc", "2.0");
    req.verify = Some(deploy_core::spec::VerifyRequest {
        timeout: Some("5s".into()),
        interval: Some("1s".into()),
        ..Default::default()
    });
    let d = h.submit(req).await.unwrap();
    tokio::time::timeout(Duration::from_secs(3600), h.settle()).await.expect("the engine bounds a hung probe");
    let done = h.get(d.id()).await;
    assert!(done.status().is_terminal());
    assert_ne!(done.status(), DeploymentStatus::Succeeded, "nothing is succeeded unverified");
}
