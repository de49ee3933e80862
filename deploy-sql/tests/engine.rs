//! The whole engine over the SQL stores: rollouts, failures, rollback, cancel and idempotency, end to end.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::sync::Arc;
use std::time::Duration;

use deploy_core::spec::{FailureRequest, StrategyRequest};
use deploy_core::{
    ConcurrencyPolicy, DeploymentRequest, DeploymentStatus, IdempotencyKey, Principal, Store, Submission, Summary,
};
use deploy_sql::SqlStore;
use deploy_testkit::fixtures::{env_name, environment, request};
use deploy_testkit::{Fault, ScriptedExecutor};

fn quick(version: &str) -> DeploymentRequest {
    let mut r = request("prod", "web", version);
    r.verify = Some(deploy_core::spec::VerifyRequest {
        timeout: Some("2s".into()),
        interval: Some("50ms".into()),
        healthy_for: Some("100ms".into()),
    });
    r.strategy = Some(StrategyRequest::Rolling { batch_size: Some(2.into()), pause: None });
    r
}

async fn scenario(store: SqlStore) {
    let clock: Arc<dyn deploy_core::Clock> = Arc::new(deploy_core::SystemClock);
    let executor = Arc::new(ScriptedExecutor::new("sql-engine", clock));
    let ids = ["w-1", "w-2", "w-3", "w-4", "w-5"];
    for id in ids {
        executor.add_target(id, Some("1.0"));
    }
    let o = common::orchestrator(&store, &executor, "c-1", Duration::from_secs(2));
    let admin = Principal::system("t");
    o.put_environment(&admin, &env_name("prod"), environment(&ids, "scripted", ConcurrencyPolicy::Queue), None)
        .await
        .unwrap();

    let key = IdempotencyKey::new("k-2.0").unwrap();
    let first = o
        .submit(
            &admin,
            Submission { request: quick("2.0"), idempotency_key: Some(key.clone()), expected_revision: None },
        )
        .await
        .unwrap();
    let again = o
        .submit(&admin, Submission { request: quick("2.0"), idempotency_key: Some(key), expected_revision: None })
        .await
        .unwrap();
    assert!(again.replayed && again.deployment.id() == first.deployment.id());
    executor.add_fault("w-4", Some("3.0"), Fault::FailPermanently);
    let bad = o.submit(&admin, Submission { request: quick("3.0"), ..Submission::default() }).await.unwrap();
    let mut tolerant = quick("3.1");
    tolerant.failure = Some(FailureRequest { max_failed: Some("1".into()), on_failure: Some("fail".into()) });
    executor.add_fault("w-5", Some("3.1"), Fault::Unhealthy);
    let degraded = o.submit(&admin, Submission { request: tolerant, ..Submission::default() }).await.unwrap();

    assert_eq!(o.run_until_idle().await.unwrap(), 3);
    let first = o.get(&admin, first.deployment.id()).await.unwrap();
    assert_eq!(first.status(), DeploymentStatus::Succeeded, "{:?}", first.status_reason());
    let bad = o.get(&admin, bad.deployment.id()).await.unwrap();
    assert_eq!(bad.status(), DeploymentStatus::RolledBack, "{:?}", bad.status_reason());
    let degraded = o.get(&admin, degraded.deployment.id()).await.unwrap();
    assert_eq!(degraded.status(), DeploymentStatus::Degraded, "{:?}", degraded.status_reason());
    for d in [&first, &bad, &degraded] {
        assert_eq!(*d.summary(), Summary::of(d.targets()));
        let events = o.events(&admin, d.id(), 0, 1000).await.unwrap();
        let seqs: Vec<u64> = events.iter().map(|e| e.seq).collect();
        assert_eq!(seqs, (1..=events.len() as u64).collect::<Vec<_>>());
        assert!(events.last().unwrap().event_type.is_terminal());
    }
    assert_eq!(executor.version_of("w-1").as_deref(), Some("3.1"));
    assert_eq!(executor.version_of("w-4").as_deref(), Some("3.1"), "rolled back to 2.0, then 3.1");
    let env = store.get_environment(&env_name("prod")).await.unwrap();
    let actual: Vec<_> = env.targets.iter().map(|t| t.actual.as_ref().and_then(|a| a.version.clone())).collect();
    assert!(actual.iter().take(4).all(|v| v.as_ref().map(|v| v.as_str()) == Some("3.1")), "{actual:?}");
    assert_eq!(env.active_deployment, None);
    assert!(env.queued.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_engine_runs_end_to_end_on_sqlite() {
    let (store, _dir) = common::sqlite("engine").await;
    tokio::time::timeout(Duration::from_secs(120), scenario(store)).await.expect("finished in time");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_engine_runs_end_to_end_on_postgres() {
    let Some(store) = common::postgres("the_engine_runs_end_to_end_on_postgres").await else { return };
    tokio::time::timeout(Duration::from_secs(120), scenario(store)).await.expect("finished in time");
}
