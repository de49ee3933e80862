//! What a team outside this repository does with the SDK: checks its executor with the executor conformance suite,
//! checks the store it will embed with the store suite, and embeds the orchestrator on SQLite, crashing it half-way
//! through a rollout and resuming on a new incarnation. Requests and environments are built from types only.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use deploy_core::{
    ConcurrencyPolicy, CountOrPercent, DeploymentSpec, DeploymentStatus, EnvironmentName, EnvironmentSpec, Executor,
    ExecutorRouter, FailurePolicy, HumanDuration, IdempotencyKey, OnFailure, Orchestrator, OrchestratorConfig,
    Principal, RolloutStrategy, ShutdownSignal, Submission, Target, TargetDefinition, TargetId, VerifyPolicy,
    async_trait,
};
use deploy_sql::SqlStore;
use deploy_testkit::conformance::{executor as executor_suite, store as store_suite};
use example_sdk::{KIND, PretendCloud};

fn config(key: &str, value: &str) -> serde_json::Value {
    let mut map = serde_json::Map::new();
    map.insert(key.to_owned(), serde_json::Value::String(value.to_owned()));
    serde_json::Value::Object(map)
}

/// What the executor suite needs: fresh instances, one whose image is missing, one in a zone that is down.
struct Fixture {
    cloud: PretendCloud,
    next: AtomicUsize,
}

impl Fixture {
    fn target(&self, config: serde_json::Value) -> Target {
        let id = TargetId::new(format!("i-{}", self.next.fetch_add(1, Ordering::SeqCst))).unwrap();
        Target {
            environment: "suite".parse().unwrap(),
            id,
            labels: BTreeMap::new(),
            executor: KIND.parse().unwrap(),
            config,
        }
    }
}

#[async_trait]
impl executor_suite::ExecutorFixture for Fixture {
    fn executor(&self) -> &dyn Executor {
        &self.cloud
    }
    async fn fresh_target(&self) -> Target {
        self.target(serde_json::Value::Null)
    }
    async fn broken_target(&self) -> Option<Target> {
        Some(self.target(config("image", "missing")))
    }
    async fn unreachable_target(&self) -> Option<Target> {
        Some(self.target(config("zone", "down")))
    }
}

#[tokio::test(start_paused = true)]
async fn the_pretend_cloud_passes_the_executor_suite() {
    let fixture = Fixture { cloud: PretendCloud::new(Duration::from_millis(300)), next: AtomicUsize::new(0) };
    let report = executor_suite::run_all(&fixture).await;
    report.assert_conforms();
    // No imperative steps (the suite checks they are refused) and no fencing: the rest all applies.
    assert_eq!(report.not_applicable.len(), 1, "{report}");
}

#[tokio::test]
async fn the_embedded_sqlite_store_passes_the_store_suite() {
    let dir = deploy_testkit::fixtures::temp_dir("sdk-store-suite");
    let store = SqlStore::sqlite(&dir).await.unwrap();
    store_suite::run_all(&store).await.assert_conforms();
}

fn fleet(n: usize) -> EnvironmentSpec {
    EnvironmentSpec {
        concurrency: ConcurrencyPolicy::Queue,
        require_if_match: false,
        protection: None,
        schedule: None,
        secret_scope: deploy_core::SecretScope::default(),
        targets: (1..=n)
            .map(|i| TargetDefinition {
                id: TargetId::new(format!("web-{i}")).unwrap(),
                labels: BTreeMap::new(),
                executor: KIND.parse().unwrap(),
                config: serde_json::Value::Null,
            })
            .collect(),
    }
}

fn orchestrator(store: &SqlStore, cloud: &Arc<PretendCloud>, owner: &str) -> Orchestrator {
    let config = OrchestratorConfig {
        owner: owner.into(),
        lease: Duration::from_secs(30),
        poll_interval: Duration::from_millis(20),
        ..OrchestratorConfig::default()
    };
    Orchestrator::builder(Arc::new(store.clone()), ExecutorRouter::new().with(KIND, cloud.clone()))
        .config(config)
        .build()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_embedded_orchestrator_on_sqlite_resumes_a_rollout_after_a_crash() {
    let dir = deploy_testkit::fixtures::temp_dir("sdk-embedded");
    let cloud = Arc::new(PretendCloud::new(Duration::from_millis(150)));
    let bot = Principal::system("svc:release-bot");
    let prod: EnvironmentName = "prod".parse().unwrap();

    let store = SqlStore::sqlite(&dir).await.unwrap();
    let first = orchestrator(&store, &cloud, "checkout-svc#1");
    first.put_environment(&bot, &prod, fleet(6), None).await.unwrap();
    let spec = DeploymentSpec::builder(prod.clone(), "checkout".parse().unwrap(), "2.0.1".parse().unwrap())
        .strategy(RolloutStrategy::Rolling { batch_size: CountOrPercent::Count(1), pause: HumanDuration::ZERO })
        .verify(VerifyPolicy {
            timeout: HumanDuration::from(Duration::from_secs(5)),
            interval: HumanDuration::from(Duration::from_millis(50)),
            healthy_for: HumanDuration::ZERO,
        })
        .failure(FailurePolicy { max_failed: CountOrPercent::Count(0), on_failure: OnFailure::Rollback })
        .label("team", "payments")
        .build()
        .unwrap();
    let key = IdempotencyKey::new("checkout-2.0.1").unwrap();
    let submitted = first.submit(&bot, Submission::new(&spec).idempotency_key(key.clone())).await.unwrap();
    let id = submitted.deployment.id();

    // Run until some instances are done, then crash: the controller's task is dropped, nothing is released.
    let (_stop, shutdown) = ShutdownSignal::new();
    let running = tokio::spawn({
        let first = first.clone();
        async move { first.run(shutdown).await }
    });
    let web = |i: usize| TargetId::new(format!("web-{i}")).unwrap();
    while cloud.running(&web(2)).is_none() {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    running.abort();
    let _ = running.await;
    drop(first);
    drop(store);
    let halfway = (1..=6).filter(|&i| cloud.running(&web(i)).is_some()).count();
    assert!(halfway < 6, "crashed half-way: {halfway} of 6 done");

    // The same service restarts: a new incarnation takes over its own lease at once and finishes the rollout.
    let store = SqlStore::sqlite(&dir).await.unwrap();
    let second = orchestrator(&store, &cloud, "checkout-svc#2");
    let replay = second.submit(&bot, Submission::new(&spec).idempotency_key(key)).await.unwrap();
    assert!(replay.replayed, "the retried submission is the same deployment");
    assert_eq!(replay.deployment.id(), id);
    second.run_until_idle().await.unwrap();

    let done = second.get(&bot, id).await.unwrap();
    assert_eq!(done.status(), DeploymentStatus::Succeeded, "{:?}", done.status_reason());
    for i in 1..=6 {
        assert_eq!(cloud.running(&web(i)).map(|v| v.to_string()).as_deref(), Some("2.0.1"), "web-{i}");
    }
    let events = second.events(&bot, id, 0, 1000).await.unwrap();
    assert!(events.iter().any(|e| e.message.contains("resumed by checkout-svc#2")), "the takeover is an event");
}
