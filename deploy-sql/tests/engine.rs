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

/// An executor that reads the store while it applies, as the `agent` executor does while it waits for an agent's
/// report; it counts the reads that failed.
struct ReadingExecutor {
    inner: Arc<ScriptedExecutor>,
    store: SqlStore,
    failed_reads: std::sync::atomic::AtomicUsize,
}

#[async_trait::async_trait]
impl deploy_core::Executor for ReadingExecutor {
    async fn observe(
        &self,
        target: &deploy_core::Target,
        wanted: Option<&deploy_core::DesiredState>,
    ) -> Result<deploy_core::Observation, deploy_core::ExecutorError> {
        self.inner.observe(target, wanted).await
    }

    async fn apply(
        &self,
        target: &deploy_core::Target,
        ctx: deploy_core::ApplyContext<'_>,
    ) -> Result<deploy_core::Outcome, deploy_core::ExecutorError> {
        for _ in 0..20 {
            if deploy_core::AgentStore::agent_slot(&self.store, &target.environment, &target.id).await.is_err() {
                self.failed_reads.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        self.inner.apply(target, ctx).await
    }

    async fn verify(
        &self,
        target: &deploy_core::Target,
        desired: &deploy_core::DesiredState,
    ) -> Result<deploy_core::Health, deploy_core::ExecutorError> {
        self.inner.verify(target, desired).await
    }
}

/// Many targets in flight whose executor reads the store, on SQLite's small pool, while the engine writes their
/// results: every read and every write gets a connection. (The engine once wrote while leaving the targets' futures
/// unpolled; a connection handed to a future waiting in the pool was then held by nobody, and the write waited for the
/// pool's 30-second timeout and gave the deployment up.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn targets_that_read_the_store_while_the_engine_writes_never_starve_it() {
    let (store, _dir) = common::sqlite("reading").await;
    let clock: Arc<dyn deploy_core::Clock> = Arc::new(deploy_core::SystemClock);
    let scripted = Arc::new(ScriptedExecutor::new("reading", clock));
    let ids: Vec<String> = (0..32).map(|i| format!("r-{i:02}")).collect();
    let id_refs: Vec<&str> = ids.iter().map(String::as_str).collect();
    for id in &ids {
        scripted.add_target(id, Some("1.0"));
    }
    let reading =
        Arc::new(ReadingExecutor { inner: scripted.clone(), store: store.clone(), failed_reads: Default::default() });
    let o = deploy_core::Orchestrator::builder(
        Arc::new(store.clone()),
        deploy_core::ExecutorRouter::new().with("scripted", reading.clone()),
    )
    .config(deploy_core::OrchestratorConfig {
        owner: "reader".into(),
        lease: Duration::from_secs(5),
        poll_interval: Duration::from_millis(50),
        ..deploy_core::OrchestratorConfig::default()
    })
    .build();
    let admin = Principal::system("t");
    o.put_environment(&admin, &env_name("prod"), environment(&id_refs, "scripted", ConcurrencyPolicy::Queue), None)
        .await
        .unwrap();
    // Several rollouts: the starvation needed a connection freed at the wrong moment, so give it many moments.
    for round in 0..6 {
        let mut r = request("prod", "web", &format!("2.{round}"));
        r.verify = Some(deploy_core::spec::VerifyRequest {
            timeout: Some("10s".into()),
            interval: Some("5ms".into()),
            healthy_for: Some("0s".into()),
        });
        r.strategy = Some(StrategyRequest::Rolling { batch_size: Some(32.into()), pause: None });
        let submitted = o.submit(&admin, Submission { request: r, ..Submission::default() }).await.unwrap();
        assert_eq!(o.run_until_idle().await.unwrap(), 1);
        let d = o.get(&admin, submitted.deployment.id()).await.unwrap();
        assert_eq!(d.status(), DeploymentStatus::Succeeded, "round {round}: {:?}", d.status_reason());
        assert_eq!(
            reading.failed_reads.load(std::sync::atomic::Ordering::Relaxed),
            0,
            "round {round}: every read got a connection"
        );
        let events = o.events(&admin, d.id(), 0, 1000).await.unwrap();
        assert!(
            !events.iter().any(|e| e.message.contains("store")),
            "round {round}: the deployment was never given up for a store failure: {events:?}"
        );
    }
    store.close().await;
}
