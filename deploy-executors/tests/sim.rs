//! The `sim` executor: the executor contract, each scripted fault, imperative steps and state that survives a restart.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use deploy_core::{
    ApplyContext, DeploymentId, DesiredState, ErrorClass, Executor, Health, ImperativeStep, ResolvedSecrets, Target,
};
use deploy_executors::SimExecutor;
use serde_json::json;

fn target(config: serde_json::Value) -> Target {
    Target {
        environment: "prod".parse().unwrap(),
        id: "web-1".parse().unwrap(),
        labels: Default::default(),
        executor: "sim".parse().unwrap(),
        config,
    }
}

fn desired(version: &str) -> DesiredState {
    DesiredState::bare("checkout".parse().unwrap(), version.parse().unwrap())
}

async fn apply(sim: &SimExecutor, target: &Target, version: &str) -> Result<(), deploy_core::ExecutorError> {
    let want = desired(version);
    let secrets = ResolvedSecrets::new();
    sim.apply(
        target,
        ApplyContext {
            deployment: DeploymentId::new(),
            desired: &want,
            secrets: &secrets,
            fencing_token: 0,
            progress: None,
        },
    )
    .await
    .map(drop)
}

async fn step(
    sim: &SimExecutor,
    target: &Target,
    action: &str,
    version: &str,
) -> Result<String, deploy_core::ExecutorError> {
    let want = desired(version);
    let secrets = ResolvedSecrets::new();
    let step = ImperativeStep { action: action.into(), args: Default::default() };
    let ctx = ApplyContext {
        deployment: DeploymentId::new(),
        desired: &want,
        secrets: &secrets,
        fencing_token: 0,
        progress: None,
    };
    sim.run_step(target, &step, ctx).await.map(|o| o.output)
}

/// The `sim` executor, with a target whose installs fail, one that stops answering, and its three steps.
struct SimFixture {
    sim: SimExecutor,
    next: std::sync::atomic::AtomicUsize,
}

impl SimFixture {
    fn target(&self, config: serde_json::Value) -> Target {
        let mut t = target(config);
        t.id = deploy_core::TargetId::new(format!("s-{}", self.next.fetch_add(1, std::sync::atomic::Ordering::SeqCst)))
            .unwrap();
        t
    }
}

#[deploy_core::async_trait]
impl deploy_testkit::conformance::executor::ExecutorFixture for SimFixture {
    fn executor(&self) -> &dyn deploy_core::Executor {
        &self.sim
    }
    async fn fresh_target(&self) -> Target {
        self.target(json!({"apply_ms": 1}))
    }
    async fn broken_target(&self) -> Option<Target> {
        Some(self.target(json!({"apply_ms": 1, "fail_versions": ["1.0.0", "2.0.0"]})))
    }
    async fn unreachable_target(&self) -> Option<Target> {
        let t = self.target(json!({"apply_ms": 1, "unreachable_versions": ["1.0.0", "2.0.0"]}));
        // It stops answering once one of those versions is wanted.
        let _ = step(&self.sim, &t, "fetch", "1.0.0").await;
        let want = desired("1.0.0");
        let secrets = ResolvedSecrets::new();
        let ctx = ApplyContext {
            deployment: DeploymentId::new(),
            desired: &want,
            secrets: &secrets,
            fencing_token: 0,
            progress: None,
        };
        let _ = self.sim.apply(&t, ctx).await;
        Some(t)
    }
    fn steps(&self) -> Option<Vec<ImperativeStep>> {
        Some(
            ["stop", "fetch", "start"]
                .into_iter()
                .map(|a| ImperativeStep { action: a.into(), args: Default::default() })
                .collect(),
        )
    }
}

#[tokio::test]
async fn passes_the_executor_conformance_suite() {
    let fixture = SimFixture { sim: SimExecutor::in_memory(), next: std::sync::atomic::AtomicUsize::new(0) };
    let report = deploy_testkit::conformance::executor::run_all(&fixture).await;
    report.assert_conforms();
    assert_eq!(report.not_applicable.len(), 1, "only fencing does not apply: {report}");
}

#[tokio::test]
async fn reports_the_initial_version_then_what_was_applied() {
    let sim = SimExecutor::in_memory();
    let t = target(json!({"initial_version": "1.0", "apply_ms": 0}));
    let seen = sim.observe(&t, None).await.unwrap();
    assert_eq!(seen.version.unwrap().as_str(), "1.0");
    assert_eq!(seen.health, Health::Healthy);
    apply(&sim, &t, "2.0").await.unwrap();
    assert_eq!(sim.observe(&t, None).await.unwrap().version.unwrap().as_str(), "2.0");
    assert_eq!(sim.verify(&t, &desired("2.0")).await.unwrap(), Health::Healthy);
    assert_eq!(sim.verify(&t, &desired("1.0")).await.unwrap(), Health::Unhealthy, "another version runs");
    let empty = target(json!({"apply_ms": 0}));
    let nothing = SimExecutor::in_memory().observe(&empty, None).await.unwrap();
    assert_eq!((nothing.version, nothing.health), (None, Health::Unknown));
}

#[tokio::test]
async fn scripted_faults_have_their_classes() {
    let sim = SimExecutor::in_memory();
    let t = target(json!({
        "initial_version": "1.0", "apply_ms": 0,
        "fail_versions": ["6.6.6"], "unhealthy_versions": ["3.0"], "unreachable_versions": ["9.9"],
    }));
    let failed = apply(&sim, &t, "6.6.6").await.unwrap_err();
    assert_eq!(failed.class(), ErrorClass::Permanent);
    assert_eq!(sim.observe(&t, None).await.unwrap().version.unwrap().as_str(), "1.0", "a failed apply changes nothing");

    apply(&sim, &t, "3.0").await.unwrap();
    assert_eq!(sim.verify(&t, &desired("3.0")).await.unwrap(), Health::Unhealthy);
    assert_eq!(sim.observe(&t, None).await.unwrap().health, Health::Unhealthy);

    let gone = apply(&sim, &t, "9.9").await.unwrap_err();
    assert_eq!(gone.class(), ErrorClass::Unreachable);
    assert_eq!(
        sim.observe(&t, None).await.unwrap_err().class(),
        ErrorClass::Unreachable,
        "observe too, while 9.9 is wanted"
    );
    apply(&sim, &t, "1.0").await.unwrap();
    assert_eq!(
        sim.observe(&t, None).await.unwrap().version.unwrap().as_str(),
        "1.0",
        "reachable again once 9.9 is not wanted"
    );
}

#[tokio::test]
async fn flaky_failures_count_per_version() {
    let sim = SimExecutor::in_memory();
    let t = target(json!({"apply_ms": 0, "flaky_failures": 2}));
    for _ in 0..2 {
        assert_eq!(apply(&sim, &t, "2.0").await.unwrap_err().class(), ErrorClass::Retryable);
    }
    apply(&sim, &t, "2.0").await.unwrap();
    assert_eq!(apply(&sim, &t, "3.0").await.unwrap_err().class(), ErrorClass::Retryable, "a new version starts over");
}

#[tokio::test]
async fn invalid_config_is_a_permanent_error() {
    let sim = SimExecutor::in_memory();
    let t = target(json!({"apply_ms": "soon"}));
    let e = apply(&sim, &t, "2.0").await.unwrap_err();
    assert_eq!(e.class(), ErrorClass::Permanent);
    assert!(e.message().contains("invalid sim config"), "{e}");
    let unknown = target(json!({"initial_versions": "1.0"}));
    assert!(sim.observe(&unknown, None).await.is_err(), "unknown keys are refused");
}

#[tokio::test]
async fn imperative_steps_stop_fetch_start_and_refuse_others() {
    let sim = SimExecutor::in_memory();
    let t = target(json!({"initial_version": "1.0", "apply_ms": 0}));
    assert_eq!(step(&sim, &t, "stop", "2.0").await.unwrap(), "stopped 1.0");
    assert_eq!(sim.observe(&t, None).await.unwrap().version, None, "nothing runs after stop");
    assert_eq!(step(&sim, &t, "fetch", "2.0").await.unwrap(), "fetched 2.0");
    assert_eq!(step(&sim, &t, "start", "2.0").await.unwrap(), "started 2.0");
    assert_eq!(sim.observe(&t, None).await.unwrap().version.unwrap().as_str(), "2.0");
    let unknown = step(&sim, &t, "reboot", "2.0").await.unwrap_err();
    assert_eq!(unknown.class(), ErrorClass::Permanent);
    assert!(unknown.message().contains("reboot"));
}

#[tokio::test]
async fn state_survives_a_new_executor_on_the_same_directory() {
    let dir = deploy_testkit::fixtures::temp_dir("sim");
    let t = target(json!({"initial_version": "1.0", "apply_ms": 0, "unreachable_versions": ["5.0"]}));
    {
        let sim = SimExecutor::persistent(&dir);
        apply(&sim, &t, "2.0").await.unwrap();
    }
    let restarted = SimExecutor::persistent(&dir);
    assert_eq!(restarted.observe(&t, None).await.unwrap().version.unwrap().as_str(), "2.0");
    let _ = apply(&restarted, &t, "5.0").await;
    let again = SimExecutor::persistent(&dir);
    assert_eq!(
        again.observe(&t, None).await.unwrap_err().class(),
        ErrorClass::Unreachable,
        "the wanted version persists too"
    );
}
