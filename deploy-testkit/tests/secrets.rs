//! Secrets are references: resolved at apply time, handed to the executor, and never written anywhere.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use common::within;
use deploy_core::{
    ApplyContext, ConcurrencyPolicy, DeploymentStatus, DesiredState, Executor, ExecutorError, ExecutorRouter, Health,
    Observation, Orchestrator, Outcome, Principal, SecretValue, Store, Submission, Target, TargetStatus,
};
use deploy_testkit::fixtures::{env_name, environment, fast_config, request};
use deploy_testkit::mocks::MockSecretResolver;
use deploy_testkit::{CallKind, MemoryStore, TestClock};

/// Remembers the secret values it was handed, to show they arrived; with `reports`, it reports progress while it
/// "waits": a line twice, a line within a second of the last, a line with the secret.
#[derive(Default)]
struct Capturing {
    seen: Mutex<Vec<String>>,
    running: Mutex<Option<String>>,
    reports: bool,
}

#[async_trait]
impl Executor for Capturing {
    async fn observe(&self, _: &Target, _: Option<&DesiredState>) -> Result<Observation, ExecutorError> {
        let v = self.running.lock().unwrap().clone();
        Ok(Observation { version: v.map(|v| deploy_core::Version::new(v).unwrap()), health: Health::Healthy })
    }
    async fn apply(&self, _: &Target, ctx: ApplyContext<'_>) -> Result<Outcome, ExecutorError> {
        self.seen.lock().unwrap().extend(ctx.secrets.values().map(|v| v.expose().to_owned()));
        if self.reports {
            ctx.report("remote: 1 of 3 updated");
            ctx.report("remote: 1 of 3 updated");
            tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
            ctx.report("remote: 2 of 3 updated");
            ctx.report("remote: too soon after the last one");
            tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
            let secret = ctx.secrets.values().next().map(|v| v.expose().to_owned()).unwrap_or_default();
            ctx.report(&format!("remote: 3 of 3 updated, token {secret}"));
        }
        *self.running.lock().unwrap() = Some(ctx.desired.version.to_string());
        Ok(Outcome::quiet())
    }
    async fn verify(&self, _: &Target, _: &DesiredState) -> Result<Health, ExecutorError> {
        Ok(Health::Healthy)
    }
}

const SECRET: &str = "s3cr3t-value-that-must-not-leak";

/// An orchestrator over `store` with `executor` behind kind `scripted`, secrets from `resolver` (references under
/// `vault://kv/checkout/` in scope), and the environment `prod` of one target `a`; and the principal that made it.
async fn prod(
    store: &Arc<MemoryStore>,
    executor: Arc<Capturing>,
    resolver: MockSecretResolver,
) -> (Orchestrator, Principal) {
    let orchestrator = Orchestrator::builder(store.clone(), ExecutorRouter::new().with("scripted", executor))
        .secrets(Arc::new(resolver))
        .global_secret_scope(deploy_core::SecretScope::new(["vault://kv/checkout/*"]))
        .clock(Arc::new(TestClock::new()))
        .config(fast_config("c"))
        .build();
    let admin = Principal::system("test");
    orchestrator
        .put_environment(&admin, &env_name("prod"), environment(&["a"], "scripted", ConcurrencyPolicy::Queue), None)
        .await
        .unwrap();
    (orchestrator, admin)
}

#[tokio::test(start_paused = true)]
async fn resolved_secrets_reach_the_executor_and_nothing_else() {
    within(async {
        let store = Arc::new(MemoryStore::new());
        let executor = Arc::new(Capturing::default());
        let mut resolver = MockSecretResolver::new();
        resolver
            .expect_resolve()
            .withf(|r| r.as_str() == "vault://kv/checkout/db#password")
            .returning(|_| Ok(SecretValue::new(SECRET)));
        let (orchestrator, admin) = prod(&store, executor.clone(), resolver).await;
        let mut req = request("prod", "checkout", "2.0");
        req.secrets.insert("DB_PASSWORD".into(), serde_json::json!({"ref": "vault://kv/checkout/db#password"}));
        let d =
            orchestrator.submit(&admin, Submission { request: req, ..Submission::default() }).await.unwrap().deployment;
        orchestrator.run_until_idle().await.unwrap();
        let d = orchestrator.get(&admin, d.id()).await.unwrap();
        assert_eq!(d.status(), DeploymentStatus::Succeeded);
        assert_eq!(executor.seen.lock().unwrap().as_slice(), [SECRET], "the executor got the value");

        let record = serde_json::to_string(&d).unwrap();
        assert!(record.contains("vault://kv/checkout/db#password"), "the record keeps the reference");
        assert!(!record.contains(SECRET), "the record never holds the value");
        let events = serde_json::to_string(&store.events(d.id(), 0, 1000).await.unwrap()).unwrap();
        assert!(!events.contains(SECRET));
        let env = serde_json::to_string(&store.get_environment(&env_name("prod")).await.unwrap()).unwrap();
        assert!(!env.contains(SECRET));
    })
    .await;
}

#[tokio::test(start_paused = true)]
async fn an_unresolvable_reference_fails_its_target_with_a_clear_error() {
    within(async {
        let h = deploy_testkit::Harness::new("prod", &[("web-1", Some("1.0"))], ConcurrencyPolicy::Queue).await;
        let mut scoped = environment(&["web-1"], "scripted", ConcurrencyPolicy::Queue);
        scoped.secret_scope = deploy_core::SecretScope::new(["env://DEPLOY_TESTKIT_*"]);
        h.orchestrator.put_environment(&h.admin, &env_name("prod"), scoped, None).await.unwrap();
        let mut req = request("prod", "web", "2.0");
        req.secrets.insert("API_TOKEN".into(), serde_json::json!({"ref": "env://DEPLOY_TESTKIT_SURELY_UNSET"}));
        let d = h.submit(req).await.unwrap();
        h.settle().await;
        let d = h.get(d.id()).await;
        assert_ne!(d.status(), DeploymentStatus::Succeeded);
        let t = &d.targets()[0];
        assert!(matches!(t.status, TargetStatus::Failed | TargetStatus::RolledBack));
        let events = h.events(d.id()).await;
        assert!(
            events.iter().any(|e| e.message.contains("secret API_TOKEN could not be resolved")),
            "{:?}",
            events.iter().map(|e| &e.message).collect::<Vec<_>>()
        );
        assert_eq!(
            h.executor.count(CallKind::Apply, "web-1"),
            1,
            "only the rollback applied; the new version never did"
        );
    })
    .await;
}

/// An executor's progress lines become events of its target while it waits: each new line once, at most one a
/// second, scrubbed of the call's secrets.
#[tokio::test(start_paused = true)]
async fn progress_an_executor_reports_is_recorded_once_per_line_and_scrubbed() {
    within(async {
        let store = Arc::new(MemoryStore::new());
        let mut resolver = MockSecretResolver::new();
        resolver.expect_resolve().returning(|_| Ok(SecretValue::new(SECRET)));
        let reporting = Arc::new(Capturing { reports: true, ..Capturing::default() });
        let (orchestrator, admin) = prod(&store, reporting, resolver).await;
        let mut req = request("prod", "checkout", "2.0");
        req.secrets.insert("TOKEN".into(), serde_json::json!({"ref": "vault://kv/checkout/token"}));
        let d =
            orchestrator.submit(&admin, Submission { request: req, ..Submission::default() }).await.unwrap().deployment;
        orchestrator.run_until_idle().await.unwrap();
        assert_eq!(orchestrator.get(&admin, d.id()).await.unwrap().status(), DeploymentStatus::Succeeded);
        let events: Vec<String> = store.events(d.id(), 0, 1000).await.unwrap().into_iter().map(|e| e.message).collect();
        let progress: Vec<&String> = events.iter().filter(|m| m.contains("remote:")).collect();
        assert_eq!(
            progress,
            ["a: remote: 1 of 3 updated", "a: remote: 2 of 3 updated", "a: remote: 3 of 3 updated, token ***"],
            "{events:?}"
        );
        assert!(!events.iter().any(|m| m.contains(SECRET)));
    })
    .await;
}
