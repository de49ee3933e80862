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
    let orchestrator =
        Orchestrator::builder(Arc::new(MemoryStore::new()), ExecutorRouter::new().with("scripted", mock))
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
        mock.expect_observe().returning(|_, _| running("1.0"));
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
        mock.expect_observe().returning(|_, _| running("1.0"));
        mock.expect_apply().times(1).returning(|_, _| Ok(deploy_core::Outcome::quiet()));
        let mut seq = mockall::Sequence::new();
        mock.expect_verify().times(2).in_sequence(&mut seq).returning(|_, _| Ok(Health::Unhealthy));
        // healthy_for 1s at a 500ms interval: healthy at t, t+0.5s and t+1s.
        mock.expect_verify().times(3).in_sequence(&mut seq).returning(|_, _| Ok(Health::Healthy));
        let d = run(mock).await;
        assert_eq!(d.status(), DeploymentStatus::Succeeded);
    })
    .await;
}

mod store_answers {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    use deploy_core::{
        Claim, Deployment, DeploymentDraft, DeploymentId, Environment, Lease, Orchestrator, ShutdownSignal, StoreError,
        TargetPlan,
    };
    use deploy_testkit::TestClock;
    use deploy_testkit::fixtures::{env_name, environment, fast_config, request};
    use deploy_testkit::mocks::{MockExecutor, MockStore};

    use super::common::within;

    fn claimed(env: &Environment) -> Claim {
        let spec = request("prod", "svc", "2.0").validate().unwrap();
        let draft = DeploymentDraft {
            id: DeploymentId::new(),
            spec,
            created_by: "t".into(),
            plan: TargetPlan::FromSpec,
            rollback_of: None,
            retry_of: None,
            submitted_by: None,
        };
        let now = time::OffsetDateTime::now_utc();
        let deployment = Deployment::plan(draft, env, now).unwrap();
        let lease = Lease { deployment: deployment.id(), owner: "c".into(), token: 7, expires_at: now };
        Claim { deployment, lease }
    }

    #[tokio::test(start_paused = true)]
    async fn a_controller_that_loses_its_lease_stops_before_touching_any_target() {
        within(async {
            let env = Environment::create(env_name("prod"), environment(&["a", "b"], "scripted", Default::default()));
            let claim = claimed(&env);
            let mut store = MockStore::new();
            let handed = AtomicUsize::new(0);
            store
                .expect_claim()
                .returning(move |_, _, _| Ok((handed.fetch_add(1, Ordering::SeqCst) == 0).then(|| claim.clone())));
            store.expect_get_environment().returning(move |_| Ok(env.clone()));
            store.expect_global_freeze().returning(|| Ok(None));
            store
                .expect_record()
                .times(1)
                .returning(|lease, _| Err(StoreError::StaleToken { deployment: lease.deployment, token: lease.token }));
            store.expect_release().never();
            let mut executor = MockExecutor::new();
            executor.expect_observe().never();
            executor.expect_apply().never();
            let executor = Arc::new(executor);
            let o = Orchestrator::builder(Arc::new(store), executor.clone())
                .clock(Arc::new(TestClock::new()))
                .config(fast_config("c"))
                .build();
            assert_eq!(o.run_until_idle().await.unwrap(), 1);
        })
        .await;
    }

    #[tokio::test(start_paused = true)]
    async fn a_store_outage_does_not_stop_the_controller_loop() {
        within(async {
            let mut store = MockStore::new();
            let calls = Arc::new(AtomicUsize::new(0));
            let seen = calls.clone();
            store.expect_claim().returning(move |_, _, _| {
                if seen.fetch_add(1, Ordering::SeqCst) < 3 {
                    Err(StoreError::Unavailable("connection refused".into()))
                } else {
                    Ok(None)
                }
            });
            store.expect_purge_idempotency_keys().returning(|_| Ok(0));
            let o = Orchestrator::builder(Arc::new(store), Arc::new(MockExecutor::new()))
                .clock(Arc::new(TestClock::new()))
                .config(fast_config("c"))
                .build();
            let (stop, signal) = ShutdownSignal::new();
            let task = tokio::spawn({
                let o = o.clone();
                async move { o.run(signal).await }
            });
            tokio::time::sleep(Duration::from_secs(2)).await;
            stop.fire();
            task.await.unwrap();
            assert!(calls.load(Ordering::SeqCst) >= 5, "kept polling through the outage and after it");
        })
        .await;
    }
}
