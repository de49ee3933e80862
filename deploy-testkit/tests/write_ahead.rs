//! The write-ahead rule: a target is touched only after its intent (with what it ran before) is durable, and a batch's
//! changes are written in a few transactions, not one per target.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::sync::Arc;

use async_trait::async_trait;
use common::within;
use deploy_core::spec::StrategyRequest;
use deploy_core::{
    ApplyContext, ConcurrencyPolicy, DeploymentRequest, DeploymentStatus, DesiredState, Executor, ExecutorError,
    ExecutorRouter, Health, Observation, Orchestrator, Outcome, Principal, Store, Submission, Target, TargetStatus,
};
use deploy_testkit::fixtures::{env_name, environment, fast_config, request};
use deploy_testkit::{MemoryStore, ScriptedExecutor, TestClock};

/// Checks, at every apply, that the store already holds the target's intent.
struct Checking {
    inner: ScriptedExecutor,
    store: Arc<MemoryStore>,
}

#[async_trait]
impl Executor for Checking {
    async fn observe(&self, t: &Target, wanted: Option<&DesiredState>) -> Result<Observation, ExecutorError> {
        self.inner.observe(t, wanted).await
    }
    async fn apply(&self, t: &Target, ctx: ApplyContext<'_>) -> Result<Outcome, ExecutorError> {
        let stored = self.store.get_deployment(ctx.deployment).await.expect("deployment stored");
        let entry = stored.targets().iter().find(|e| e.id == t.id).expect("target in the record");
        assert_eq!(entry.status, TargetStatus::InProgress, "{}: touched before its intent was written", t.id);
        assert_eq!(entry.from_version.as_ref().map(|v| v.as_str()), Some("1.0"), "the intent says what ran before");
        self.inner.apply(t, ctx).await
    }
    async fn verify(&self, t: &Target, d: &DesiredState) -> Result<Health, ExecutorError> {
        self.inner.verify(t, d).await
    }
}

#[tokio::test(start_paused = true)]
async fn every_change_is_preceded_by_a_durable_intent_and_batches_are_written_together() {
    within(async {
        let clock = Arc::new(TestClock::new());
        let store = Arc::new(MemoryStore::new());
        let ids: Vec<String> = (0..200).map(|i| format!("n-{i}")).collect();
        let scripted = ScriptedExecutor::new("checked", clock.clone());
        for id in &ids {
            scripted.add_target(id, Some("1.0"));
        }
        let executor = Arc::new(Checking { inner: scripted, store: store.clone() });
        let o = Orchestrator::builder(store.clone(), ExecutorRouter::new().with("scripted", executor.clone()))
            .clock(clock)
            .config(fast_config("c"))
            .build();
        let admin = Principal::system("t");
        let refs: Vec<&str> = ids.iter().map(String::as_str).collect();
        o.put_environment(&admin, &env_name("prod"), environment(&refs, "scripted", ConcurrencyPolicy::Queue), None)
            .await
            .unwrap();
        let req = DeploymentRequest {
            strategy: Some(StrategyRequest::Rolling { batch_size: Some("50%".into()), pause: None }),
            ..request("prod", "web", "2.0")
        };
        let d = o.submit(&admin, Submission { request: req, ..Submission::default() }).await.unwrap().deployment;
        o.run_until_idle().await.unwrap();
        let d = o.get(&admin, d.id()).await.unwrap();
        assert_eq!(d.status(), DeploymentStatus::Succeeded, "{:?}", d.status_reason());
        assert_eq!(d.summary().succeeded, 200);
        let writes = store.record_calls();
        assert!(writes <= 30, "200 targets in 2 batches took {writes} transactions; expected a handful per batch");
        assert_eq!(o.events(&admin, d.id(), 0, 10_000).await.unwrap().len(), 1 + 1 + 200 * 3 + 1);
    })
    .await;
}
