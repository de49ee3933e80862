//! The [`Executor`] contract, checked against one target the caller provides.
#![allow(clippy::panic, clippy::unwrap_used, clippy::expect_used)] // A suite reports violations by panicking.

use std::time::Duration;

use deploy_core::{
    ApplyContext, DeploymentId, DesiredState, Executor, Health, ResolvedSecrets, ServiceName, Target, Version,
};

fn desired(version: &Version) -> DesiredState {
    DesiredState::bare(ServiceName::new("conformance").expect("name"), version.clone())
}

async fn healthy_within(executor: &dyn Executor, target: &Target, want: &DesiredState, timeout: Duration) -> bool {
    let step = Duration::from_millis(50);
    let mut waited = Duration::ZERO;
    while waited <= timeout {
        if matches!(executor.verify(target, want).await, Ok(Health::Healthy)) {
            return true;
        }
        tokio::time::sleep(step).await;
        waited += step;
    }
    false
}

/// Apply is idempotent, observe reports what apply made run, verify becomes healthy for the applied version and not
/// for another one. `v1` and `v2` must differ; `timeout` bounds each wait for health.
pub async fn run_all(executor: &dyn Executor, target: &Target, v1: &Version, v2: &Version, timeout: Duration) {
    assert_ne!(v1, v2, "the suite needs two different versions");
    let secrets = ResolvedSecrets::new();
    let id = DeploymentId::new();
    for version in [v1, v1, v2, v2, v1] {
        let want = desired(version);
        executor
            .apply(target, ApplyContext { deployment: id, desired: &want, secrets: &secrets, fencing_token: 0 })
            .await
            .unwrap_or_else(|e| panic!("apply {version} failed: {e}"));
        assert!(healthy_within(executor, target, &want, timeout).await, "{version} never became healthy");
        let seen = executor.observe(target).await.unwrap_or_else(|e| panic!("observe failed: {e}"));
        assert_eq!(seen.version.as_ref(), Some(version), "observe reports what apply made run");
        let other = desired(if version == v1 { v2 } else { v1 });
        assert!(
            !matches!(executor.verify(target, &other).await, Ok(Health::Healthy)),
            "verify must not call a version healthy that does not run"
        );
    }
}
