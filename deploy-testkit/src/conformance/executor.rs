//! The [`Executor`] contract, checked. The subject is an [`ExecutorFixture`]: the executor, and fresh targets for it.
//!
//! Every check takes its own fresh targets, so the checks are independent of each other and of their order. Waits use
//! Tokio's clock, so the suite runs as well in virtual time (`#[tokio::test(start_paused = true)]`) as in real time.
//!
//! ```no_run
//! # use deploy_testkit::conformance::executor::ExecutorFixture;
//! # async fn t(fixture: &(dyn ExecutorFixture + 'static)) {
//! let report = deploy_testkit::conformance::executor::run_all(fixture).await;
//! report.assert_conforms();
//! # }
//! ```
#![allow(clippy::panic, clippy::unwrap_used, clippy::expect_used)] // A check reports a violation by panicking.

use std::time::Duration;

use async_trait::async_trait;
use deploy_core::{
    ApplyContext, DeploymentId, DesiredState, ErrorClass, Executor, ExecutorError, Health, ImperativeStep, Observation,
    Outcome, ResolvedSecrets, SecretValue, ServiceName, Target, Version,
};
use futures::FutureExt;

use super::{Ran, Report, run_table, table};

/// The executor under test and what the suite needs to exercise it.
#[async_trait]
pub trait ExecutorFixture: Send + Sync {
    /// The executor.
    fn executor(&self) -> &dyn Executor;

    /// A target nothing has been applied to yet, different from every target handed out before.
    async fn fresh_target(&self) -> Target;

    /// Two different versions the executor can run on a fresh target.
    fn versions(&self) -> (Version, Version) {
        (Version::new("1.0.0").expect("valid"), Version::new("2.0.0").expect("valid"))
    }

    /// The desired state of `version` on a target (by default the service `conformance` with nothing else).
    fn desired(&self, version: &Version) -> DesiredState {
        DesiredState::bare(ServiceName::new("conformance").expect("valid"), version.clone())
    }

    /// How long a version may take to become healthy after its apply.
    fn health_timeout(&self) -> Duration {
        Duration::from_secs(10)
    }

    /// A target every apply on which fails permanently (say, a configuration the executor refuses), if the executor
    /// can be given one.
    async fn broken_target(&self) -> Option<Target> {
        None
    }

    /// A target that cannot be reached (a host that is down), if the executor can be given one.
    async fn unreachable_target(&self) -> Option<Target> {
        None
    }

    /// Steps that, run in order, bring a target to the desired version; `None` when the executor does not support
    /// imperative mode.
    fn steps(&self) -> Option<Vec<ImperativeStep>> {
        None
    }

    /// Whether the executor refuses a fencing token smaller than one it has seen for the same target and deployment.
    fn fences(&self) -> bool {
        false
    }
}

table!(CHECKS: dyn ExecutorFixture;
    a_fresh_target_runs_nothing,
    apply_makes_observe_and_verify_agree,
    apply_is_idempotent,
    verify_never_calls_another_version_healthy,
    upgrades_and_downgrades,
    an_apply_dropped_half_way_can_be_applied_again,
    concurrent_applies_to_different_targets_stay_apart,
    permanent_errors_are_permanent,
    an_unreachable_target_is_reported_unreachable,
    secrets_are_not_echoed,
    steps_bring_the_target_there,
    a_stale_fencing_token_is_refused,
);

/// Runs every check of [`CHECKS`] and reports every violation.
pub async fn run_all(fixture: &(dyn ExecutorFixture + 'static)) -> Report {
    run_table(CHECKS, fixture).await
}

fn ctx<'a>(desired: &'a DesiredState, secrets: &'a ResolvedSecrets, deployment: DeploymentId) -> ApplyContext<'a> {
    ApplyContext { deployment, desired, secrets, fencing_token: 0, progress: None }
}

async fn apply(fx: &dyn ExecutorFixture, target: &Target, version: &Version) -> Result<Outcome, ExecutorError> {
    let want = fx.desired(version);
    fx.executor().apply(target, ctx(&want, &ResolvedSecrets::new(), DeploymentId::new())).await
}

async fn apply_ok(fx: &dyn ExecutorFixture, target: &Target, version: &Version) {
    if let Err(e) = apply(fx, target, version).await {
        panic!("apply of {version} to {} failed: {e} ({:?})", target.id, e.class());
    }
}

async fn observe(fx: &dyn ExecutorFixture, target: &Target, version: &Version) -> Observation {
    let want = fx.desired(version);
    fx.executor()
        .observe(target, Some(&want))
        .await
        .unwrap_or_else(|e| panic!("observe of {} failed: {e} ({:?})", target.id, e.class()))
}

/// Polls `verify` until it answers healthy, for at most the fixture's health timeout.
async fn healthy_within(fx: &dyn ExecutorFixture, target: &Target, version: &Version) -> bool {
    let want = fx.desired(version);
    let step = Duration::from_millis(50);
    let mut waited = Duration::ZERO;
    while waited <= fx.health_timeout() {
        if matches!(fx.executor().verify(target, &want).await, Ok(Health::Healthy)) {
            return true;
        }
        tokio::time::sleep(step).await;
        waited += step;
    }
    false
}

async fn runs(fx: &dyn ExecutorFixture, target: &Target, version: &Version) {
    assert!(healthy_within(fx, target, version).await, "{version} never became healthy on {}", target.id);
    let seen = observe(fx, target, version).await;
    assert_eq!(seen.version.as_ref(), Some(version), "observe must report the version apply made run");
}

/// Observing a fresh target reports no version, and has no side effect: observing again reports the same.
pub async fn a_fresh_target_runs_nothing(fx: &dyn ExecutorFixture) -> Ran {
    let target = fx.fresh_target().await;
    let (v1, _) = fx.versions();
    let first = observe(fx, &target, &v1).await;
    assert_eq!(first.version, None, "a target nothing was applied to runs no version");
    assert_eq!(observe(fx, &target, &v1).await.version, None, "observe must not change the target");
    Ran::Checked
}

/// After an apply, `verify` becomes healthy for the applied version and `observe` reports it.
pub async fn apply_makes_observe_and_verify_agree(fx: &dyn ExecutorFixture) -> Ran {
    let target = fx.fresh_target().await;
    let (v1, _) = fx.versions();
    apply_ok(fx, &target, &v1).await;
    runs(fx, &target, &v1).await;
    Ran::Checked
}

/// Applying what already runs succeeds and leaves it running.
pub async fn apply_is_idempotent(fx: &dyn ExecutorFixture) -> Ran {
    let target = fx.fresh_target().await;
    let (v1, _) = fx.versions();
    apply_ok(fx, &target, &v1).await;
    runs(fx, &target, &v1).await;
    apply_ok(fx, &target, &v1).await;
    runs(fx, &target, &v1).await;
    Ran::Checked
}

/// `verify` answers for the version asked about: never healthy for one that does not run.
pub async fn verify_never_calls_another_version_healthy(fx: &dyn ExecutorFixture) -> Ran {
    let target = fx.fresh_target().await;
    let (v1, v2) = fx.versions();
    let on_fresh = fx.executor().verify(&target, &fx.desired(&v1)).await;
    assert!(!matches!(on_fresh, Ok(Health::Healthy)), "verify called {v1} healthy on a target running nothing");
    apply_ok(fx, &target, &v1).await;
    runs(fx, &target, &v1).await;
    let other = fx.executor().verify(&target, &fx.desired(&v2)).await;
    assert!(!matches!(other, Ok(Health::Healthy)), "verify called {v2} healthy while {v1} runs");
    Ran::Checked
}

/// v1, then v2, then v1 again: each runs in turn.
pub async fn upgrades_and_downgrades(fx: &dyn ExecutorFixture) -> Ran {
    let target = fx.fresh_target().await;
    let (v1, v2) = fx.versions();
    for version in [&v1, &v2, &v1] {
        apply_ok(fx, &target, version).await;
        runs(fx, &target, version).await;
    }
    Ran::Checked
}

/// An apply whose future is dropped after its first poll (a cancel, a lost lease) leaves a target that the same
/// apply, made again, brings to the version.
pub async fn an_apply_dropped_half_way_can_be_applied_again(fx: &dyn ExecutorFixture) -> Ran {
    let target = fx.fresh_target().await;
    let (v1, v2) = fx.versions();
    apply_ok(fx, &target, &v1).await;
    runs(fx, &target, &v1).await;
    {
        let want = fx.desired(&v2);
        let secrets = ResolvedSecrets::new();
        let call = fx.executor().apply(&target, ctx(&want, &secrets, DeploymentId::new()));
        // Polled once, then dropped (it may also have finished at once, which is fine).
        let _ = call.now_or_never();
    }
    apply_ok(fx, &target, &v2).await;
    runs(fx, &target, &v2).await;
    Ran::Checked
}

/// Applies to two targets at once, with different versions, land on their own targets.
pub async fn concurrent_applies_to_different_targets_stay_apart(fx: &dyn ExecutorFixture) -> Ran {
    let (a, b) = (fx.fresh_target().await, fx.fresh_target().await);
    let (v1, v2) = fx.versions();
    let (ra, rb) = futures::join!(apply(fx, &a, &v1), apply(fx, &b, &v2));
    ra.unwrap_or_else(|e| panic!("concurrent apply to {} failed: {e}", a.id));
    rb.unwrap_or_else(|e| panic!("concurrent apply to {} failed: {e}", b.id));
    runs(fx, &a, &v1).await;
    runs(fx, &b, &v2).await;
    Ran::Checked
}

/// A target every apply to which fails reports the failure as permanent (retrying would not help).
pub async fn permanent_errors_are_permanent(fx: &dyn ExecutorFixture) -> Ran {
    let Some(target) = fx.broken_target().await else {
        return Ran::NotApplicable("the fixture has no broken target");
    };
    let (v1, _) = fx.versions();
    match apply(fx, &target, &v1).await {
        Ok(_) => panic!("apply to the broken target {} succeeded", target.id),
        Err(e) => assert_eq!(e.class(), ErrorClass::Permanent, "a broken target's error must be permanent: {e}"),
    }
    Ran::Checked
}

/// A target that cannot be reached makes `observe` and `apply` fail as unreachable, so the engine's unreachable policy
/// (not its retries, not a failure) decides.
pub async fn an_unreachable_target_is_reported_unreachable(fx: &dyn ExecutorFixture) -> Ran {
    let Some(target) = fx.unreachable_target().await else {
        return Ran::NotApplicable("the fixture has no unreachable target");
    };
    let (v1, _) = fx.versions();
    let observed = fx.executor().observe(&target, Some(&fx.desired(&v1))).await;
    assert_eq!(
        observed.as_ref().err().map(ExecutorError::class),
        Some(ErrorClass::Unreachable),
        "observe of an unreachable target: {observed:?}"
    );
    let applied = apply(fx, &target, &v1).await;
    assert_eq!(
        applied.as_ref().err().map(ExecutorError::class),
        Some(ErrorClass::Unreachable),
        "apply to an unreachable target: {applied:?}"
    );
    Ran::Checked
}

/// A secret resolved for an apply appears neither in its outcome nor in its error.
pub async fn secrets_are_not_echoed(fx: &dyn ExecutorFixture) -> Ran {
    const VALUE: &str = "conformance-secret-5f1c9a7e";
    let (v1, _) = fx.versions();
    let mut secrets = ResolvedSecrets::new();
    secrets.insert("API_TOKEN".to_owned(), SecretValue::new(VALUE));
    let want = fx.desired(&v1);
    let mut targets = vec![fx.fresh_target().await];
    targets.extend(fx.broken_target().await);
    for target in targets {
        let answer = fx.executor().apply(&target, ctx(&want, &secrets, DeploymentId::new())).await;
        let text = match &answer {
            Ok(outcome) => outcome.output.clone(),
            Err(e) => e.message().to_owned(),
        };
        assert!(!text.contains(VALUE), "the apply to {} echoed a secret's value: {text}", target.id);
    }
    Ran::Checked
}

/// Steps run in order bring a target to the version; an executor without imperative mode refuses steps permanently.
pub async fn steps_bring_the_target_there(fx: &dyn ExecutorFixture) -> Ran {
    let target = fx.fresh_target().await;
    let (v1, _) = fx.versions();
    let want = fx.desired(&v1);
    let secrets = ResolvedSecrets::new();
    let deployment = DeploymentId::new();
    let Some(steps) = fx.steps() else {
        let step = ImperativeStep { action: "start".to_owned(), args: Default::default() };
        let refused = fx.executor().run_step(&target, &step, ctx(&want, &secrets, deployment)).await;
        assert_eq!(
            refused.as_ref().err().map(ExecutorError::class),
            Some(ErrorClass::Permanent),
            "an executor without steps must refuse one permanently: {refused:?}"
        );
        return Ran::Checked;
    };
    for step in &steps {
        if let Err(e) = fx.executor().run_step(&target, step, ctx(&want, &secrets, deployment)).await {
            panic!("step {} failed: {e}", step.action);
        }
    }
    runs(fx, &target, &v1).await;
    Ran::Checked
}

/// An apply carrying a smaller fencing token than one already seen for the target and deployment is refused, and
/// changes nothing.
pub async fn a_stale_fencing_token_is_refused(fx: &dyn ExecutorFixture) -> Ran {
    if !fx.fences() {
        return Ran::NotApplicable("the executor does not fence");
    }
    let target = fx.fresh_target().await;
    let (v1, v2) = fx.versions();
    let secrets = ResolvedSecrets::new();
    let deployment = DeploymentId::new();
    let (w1, w2) = (fx.desired(&v1), fx.desired(&v2));
    let newer = ApplyContext { fencing_token: 5, ..ctx(&w1, &secrets, deployment) };
    if let Err(e) = fx.executor().apply(&target, newer).await {
        panic!("apply with token 5 failed: {e}");
    }
    runs(fx, &target, &v1).await;
    let stale = ApplyContext { fencing_token: 3, ..ctx(&w2, &secrets, deployment) };
    assert!(fx.executor().apply(&target, stale).await.is_err(), "an apply with token 3 after token 5 was accepted");
    assert_eq!(observe(fx, &target, &v1).await.version.as_ref(), Some(&v1), "the refused apply changed the target");
    Ran::Checked
}
