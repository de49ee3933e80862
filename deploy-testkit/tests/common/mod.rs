//! Helpers shared by the scenario tests.
#![allow(dead_code, clippy::panic)]

use std::future::Future;
use std::time::Duration;

use deploy_core::{Deployment, DeploymentId, Orchestrator, ShutdownSignal, ShutdownTrigger};
use deploy_testkit::Harness;

/// Fails the test if `fut` takes more than an hour of (virtual) time: a hung engine shows up as a failure, not a hang.
pub(crate) async fn within<T>(fut: impl Future<Output = T>) -> T {
    match tokio::time::timeout(Duration::from_secs(3600), fut).await {
        Ok(v) => v,
        Err(_) => panic!("timed out after an hour of virtual time"),
    }
}

/// Runs a controller in the background until the trigger fires.
pub(crate) fn spawn_controller(o: &Orchestrator) -> (ShutdownTrigger, tokio::task::JoinHandle<()>) {
    let (trigger, signal) = ShutdownSignal::new();
    let o = o.clone();
    (trigger, tokio::spawn(async move { o.run(signal).await }))
}

/// Waits until `pred` holds for the deployment.
pub(crate) async fn wait_for(h: &Harness, id: DeploymentId, pred: impl Fn(&Deployment) -> bool) -> Deployment {
    within(async {
        loop {
            let d = h.get(id).await;
            if pred(&d) {
                return d;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
}

/// Waits until the deployment is terminal.
pub(crate) async fn wait_terminal(h: &Harness, id: DeploymentId) -> Deployment {
    wait_for(h, id, |d| d.status().is_terminal()).await
}

/// The statuses of the targets, by id.
pub(crate) fn target_states(d: &Deployment) -> Vec<(String, String)> {
    d.targets().iter().map(|t| (t.id.to_string(), t.status.to_string())).collect()
}

/// Asserts the record is self-consistent: summary equals targets; a terminal one has finished and left nothing in flight.
pub(crate) fn assert_consistent(d: &Deployment) {
    assert_eq!(*d.summary(), deploy_core::Summary::of(d.targets()), "summary equals the targets");
    assert_eq!(d.summary().total as usize, d.targets().len());
    if d.status().is_terminal() {
        assert!(d.finished_at().is_some(), "a terminal deployment has finished_at");
        assert!(
            d.targets().iter().all(|t| t.status.is_settled()),
            "no target is left in flight: {:?}",
            target_states(d)
        );
    }
}
