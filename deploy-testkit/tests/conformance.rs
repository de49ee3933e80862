//! The testkit's own implementations pass the conformance suites it ships, and the suites find what a deliberately
//! broken executor and a deliberately broken store get wrong, reporting every violation rather than the first.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use deploy_core::{
    Acceptance, Accepted, ApplyContext, Claim, Control, Deployment, DeploymentFilter, DeploymentId, DesiredState,
    Environment, EnvironmentName, EnvironmentSpec, EnvironmentWrite, Event, Executor, ExecutorError, Health,
    ImperativeStep, Lease, Observation, Outcome, Page, PageRequest, ProgressUpdate, Revision, Store, StoreError,
    Target, TargetId, Timestamp,
};
use deploy_testkit::conformance::executor::{self as exec_suite, ExecutorFixture};
use deploy_testkit::conformance::store as store_suite;
use deploy_testkit::{Fault, MemoryStore, ScriptedExecutor, TestClock};

fn target(id: &str, kind: &str) -> Target {
    Target {
        environment: EnvironmentName::new("suite").unwrap(),
        id: TargetId::new(id).unwrap(),
        labels: BTreeMap::new(),
        executor: kind.parse().unwrap(),
        config: serde_json::Value::Null,
    }
}

#[tokio::test]
async fn memory_store_passes_every_check_of_the_store_suite() {
    let store = MemoryStore::new();
    let report = store_suite::run_full(&store).await;
    report.assert_conforms();
    assert!(report.not_applicable.is_empty(), "{report}");
    assert_eq!(
        report.passed.len(),
        store_suite::ENGINE_CHECKS.len() + store_suite::SERVER_CHECKS.len(),
        "every check of both tables ran: {report}"
    );
}

#[tokio::test]
async fn memory_store_suite_functions_run_concurrently_on_one_store() {
    let store = MemoryStore::new();
    let s = &store;
    let all = futures::future::join_all([
        Box::pin(store_suite::idempotent_acceptance(s))
            as std::pin::Pin<Box<dyn std::future::Future<Output = deploy_testkit::conformance::Ran>>>,
        Box::pin(store_suite::concurrency_policies(s)),
        Box::pin(store_suite::listings_page_with_cursors(s)),
        Box::pin(store_suite::cancel_requests(s)),
    ]);
    tokio::time::timeout(Duration::from_secs(60), all).await.expect("suite finished");
}

/// The scripted executor, with fresh targets, a broken one, an unreachable one, its three steps, and fencing.
struct Scripted {
    executor: ScriptedExecutor,
    next: AtomicUsize,
}

#[async_trait]
impl ExecutorFixture for Scripted {
    fn executor(&self) -> &dyn Executor {
        &self.executor
    }
    async fn fresh_target(&self) -> Target {
        let id = format!("t-{}", self.next.fetch_add(1, Ordering::SeqCst));
        self.executor.add_target(&id, None);
        target(&id, "scripted")
    }
    async fn broken_target(&self) -> Option<Target> {
        self.executor.add_target("broken", None);
        self.executor.add_fault("broken", None, Fault::FailPermanently);
        Some(target("broken", "scripted"))
    }
    async fn unreachable_target(&self) -> Option<Target> {
        self.executor.add_target("gone", None);
        self.executor.add_fault("gone", None, Fault::Unreachable);
        Some(target("gone", "scripted"))
    }
    fn steps(&self) -> Option<Vec<ImperativeStep>> {
        Some(
            ["stop", "fetch", "start"]
                .into_iter()
                .map(|a| ImperativeStep { action: a.into(), args: BTreeMap::new() })
                .collect(),
        )
    }
    fn fences(&self) -> bool {
        true
    }
}

#[tokio::test(start_paused = true)]
async fn scripted_executor_passes_every_check_of_the_executor_suite_in_virtual_time() {
    let fixture =
        Scripted { executor: ScriptedExecutor::new("suite", Arc::new(TestClock::new())), next: AtomicUsize::new(0) };
    let report = exec_suite::run_all(&fixture).await;
    report.assert_conforms();
    assert!(report.not_applicable.is_empty(), "every check applies to the scripted executor: {report}");
    assert_eq!(report.passed.len(), exec_suite::CHECKS.len());
}

/// An executor that gets the contract wrong in several ways at once: `observe` always says nothing runs, `verify`
/// calls every version healthy, an apply echoes the secrets it was given, and a failure is always "retryable".
#[derive(Default)]
struct Broken {
    running: Mutex<BTreeMap<TargetId, String>>,
}

#[async_trait]
impl Executor for Broken {
    async fn observe(&self, _: &Target, _: Option<&DesiredState>) -> Result<Observation, ExecutorError> {
        Ok(Observation { version: None, health: Health::Unknown })
    }
    async fn apply(&self, target: &Target, ctx: ApplyContext<'_>) -> Result<Outcome, ExecutorError> {
        if target.id.as_str() == "broken" {
            return Err(ExecutorError::retryable("disk full, probably"));
        }
        self.running.lock().unwrap().insert(target.id.clone(), ctx.desired.version.to_string());
        let echoed: Vec<&str> = ctx.secrets.values().map(|v| v.expose()).collect();
        Ok(Outcome::with_output(format!("installed with {echoed:?}")))
    }
    async fn verify(&self, _: &Target, _: &DesiredState) -> Result<Health, ExecutorError> {
        Ok(Health::Healthy)
    }
}

struct BrokenFixture {
    executor: Broken,
    next: AtomicUsize,
}

#[async_trait]
impl ExecutorFixture for BrokenFixture {
    fn executor(&self) -> &dyn Executor {
        &self.executor
    }
    async fn fresh_target(&self) -> Target {
        target(&format!("b-{}", self.next.fetch_add(1, Ordering::SeqCst)), "broken")
    }
    async fn broken_target(&self) -> Option<Target> {
        Some(target("broken", "broken"))
    }
    fn health_timeout(&self) -> Duration {
        Duration::from_millis(200)
    }
}

#[tokio::test(start_paused = true)]
async fn the_executor_suite_reports_every_violation_of_a_broken_executor() {
    let fixture = BrokenFixture { executor: Broken::default(), next: AtomicUsize::new(0) };
    let report = exec_suite::run_all(&fixture).await;
    for check in [
        "apply_makes_observe_and_verify_agree",
        "verify_never_calls_another_version_healthy",
        "permanent_errors_are_permanent",
        "secrets_are_not_echoed",
    ] {
        assert!(report.violated(check), "{check} should have been reported: {report}");
    }
    // The broken executor's default `run_step` refuses, as the contract asks of one without steps.
    assert!(!report.violated("steps_bring_the_target_there"), "{report}");
    assert_eq!(report.not_applicable.len(), 2, "no unreachable target, no fencing: {report}");
    let text = report.to_string();
    assert!(text.contains("echoed a secret"), "violations say what was expected: {text}");
}

/// A store that gets the engine's contract wrong: it forgets idempotency keys, hands out a deployment to every
/// claimant, and numbers events from 0.
#[derive(Default)]
struct BrokenStore {
    inner: MemoryStore,
    claims: std::sync::atomic::AtomicU32,
}

#[async_trait]
impl Store for BrokenStore {
    async fn put_environment(
        &self,
        name: &EnvironmentName,
        spec: EnvironmentSpec,
        expected: Option<Revision>,
        now: Timestamp,
    ) -> Result<EnvironmentWrite, StoreError> {
        self.inner.put_environment(name, spec, expected, now).await
    }
    async fn get_environment(&self, name: &EnvironmentName) -> Result<Environment, StoreError> {
        self.inner.get_environment(name).await
    }
    async fn list_environments(&self, page: &PageRequest) -> Result<Page<Environment>, StoreError> {
        self.inner.list_environments(page).await
    }
    async fn accept(&self, mut acceptance: Acceptance) -> Result<Accepted, StoreError> {
        acceptance.idempotency = None;
        self.inner.accept(acceptance).await
    }
    async fn get_deployment(&self, id: DeploymentId) -> Result<Deployment, StoreError> {
        self.inner.get_deployment(id).await
    }
    async fn list_deployments(
        &self,
        filter: &DeploymentFilter,
        page: &PageRequest,
    ) -> Result<Page<Deployment>, StoreError> {
        self.inner.list_deployments(filter, page).await
    }
    async fn count_deployments(&self, filter: &DeploymentFilter) -> Result<u64, StoreError> {
        self.inner.count_deployments(filter).await
    }
    async fn events(&self, id: DeploymentId, after: u64, limit: usize) -> Result<Vec<Event>, StoreError> {
        let mut events = self.inner.events(id, after, limit).await?;
        for e in &mut events {
            e.seq -= 1;
        }
        Ok(events)
    }
    async fn request_cancel(&self, id: DeploymentId, now: Timestamp) -> Result<Deployment, StoreError> {
        self.inner.request_cancel(id, now).await
    }
    async fn request(
        &self,
        id: DeploymentId,
        request: &deploy_core::OperatorRequest,
        now: Timestamp,
    ) -> Result<Deployment, StoreError> {
        self.inner.request(id, request, now).await
    }
    async fn global_freeze(&self) -> Result<Option<deploy_core::Freeze>, StoreError> {
        self.inner.global_freeze().await
    }
    async fn set_global_freeze(&self, freeze: Option<deploy_core::Freeze>) -> Result<(), StoreError> {
        self.inner.set_global_freeze(freeze).await
    }
    async fn claim(&self, owner: &str, now: Timestamp, lease: Duration) -> Result<Option<Claim>, StoreError> {
        // Ignores live leases: each claim is made a year after the one before, so it finds every lease lapsed.
        let n = self.claims.fetch_add(1, Ordering::SeqCst) + 1;
        let far = deploy_core::add_duration(now, Duration::from_secs(3600 * 24 * 365) * n);
        self.inner.claim(owner, far, lease).await
    }
    async fn renew(&self, lease: &Lease, now: Timestamp, duration: Duration) -> Result<(Lease, Control), StoreError> {
        self.inner.renew(lease, now, duration).await
    }
    async fn release(&self, lease: &Lease) -> Result<(), StoreError> {
        self.inner.release(lease).await
    }
    async fn record(&self, lease: &Lease, update: ProgressUpdate) -> Result<Control, StoreError> {
        self.inner.record(lease, update).await
    }
    async fn purge_idempotency_keys(&self, now: Timestamp) -> Result<u64, StoreError> {
        self.inner.purge_idempotency_keys(now).await
    }
}

#[tokio::test]
async fn the_store_suite_reports_every_violation_of_a_broken_store() {
    let store = BrokenStore::default();
    let report = store_suite::run_all(&store).await;
    for check in [
        "idempotent_acceptance",
        "concurrent_accepts_with_one_key_make_one_deployment",
        "concurrent_claims_hand_out_one_lease",
        "events_are_numbered_without_gaps",
    ] {
        assert!(report.violated(check), "{check} should have been reported: {report}");
    }
    assert!(!report.violated("environments_are_listed_by_name"), "what works is not reported: {report}");
    assert!(report.passed.contains(&"unknown_ids_are_not_found"), "{report}");
}
