//! The `swarm` executor against a real single-node Docker Swarm: the executor contract, an update Swarm rolls back on
//! its own, one deployd has Swarm roll back, and an update in flight watched again (not issued again) after the
//! apply watching it was dropped, as a restarted deployd would. Skipped (and saying so) where no engine answers.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use deploy_core::{ApplyContext, DeploymentId, DesiredState, ErrorClass, Executor, ResolvedSecrets, Target, Version};
use deploy_executors::SwarmExecutor;
use deploy_testkit::docker::{self, Web};
use serde_json::json;

const REPO: &str = "deploy-test/web";

struct SwarmFixture {
    executor: SwarmExecutor,
    host: String,
    environment: String,
    next: AtomicUsize,
}

impl SwarmFixture {
    fn new(host: String, prefix: &str) -> Self {
        for (v, web) in [("1.0.0", Web::Healthy), ("2.0.0", Web::Healthy), ("3.0.0", Web::Crashes)] {
            docker::web_image(&host, REPO, v, web);
        }
        let suffix = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() % (1 << 32);
        let environment = format!("{prefix}-{suffix:x}");
        Self { executor: SwarmExecutor::new(), host, environment, next: AtomicUsize::new(0) }
    }

    fn target(&self, extra: serde_json::Value) -> Target {
        let n = self.next.fetch_add(1, Ordering::SeqCst);
        let mut config = json!({"engine": self.host, "service": format!("{}-{n}", self.environment),
                                "image": format!("{REPO}:{{version}}"), "update": {"monitor": "1s"}, "deadline": "40s"});
        for (k, v) in extra.as_object().unwrap() {
            config[k] = v.clone();
        }
        deploy_testkit::fixtures::target(&self.environment, &format!("s-{n}"), "swarm", config)
    }
}

impl Drop for SwarmFixture {
    fn drop(&mut self) {
        docker::remove_services(&self.host, &self.environment);
    }
}

#[deploy_core::async_trait]
impl deploy_testkit::conformance::executor::ExecutorFixture for SwarmFixture {
    fn executor(&self) -> &dyn Executor {
        &self.executor
    }
    async fn fresh_target(&self) -> Target {
        self.target(json!({}))
    }
    fn health_timeout(&self) -> Duration {
        Duration::from_secs(40)
    }
    async fn broken_target(&self) -> Option<Target> {
        Some(self.target(json!({"mounts": ["/:/host"]})))
    }
    async fn unreachable_target(&self) -> Option<Target> {
        Some(self.target(json!({"engine": "unix:///nonexistent/docker.sock"})))
    }
    fn fences(&self) -> bool {
        true
    }
}

fn want(version: &str) -> DesiredState {
    DesiredState::bare("web".parse().unwrap(), Version::new(version).unwrap())
}

fn ctx<'a>(desired: &'a DesiredState, secrets: &'a ResolvedSecrets, deployment: DeploymentId) -> ApplyContext<'a> {
    ApplyContext { deployment, desired, secrets, fencing_token: 1, progress: None }
}

fn service_field(host: &str, service: &str, format: &str) -> String {
    let out = docker::docker(host).args(["service", "inspect", service, "--format", format]).output().unwrap();
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_swarm_executor_passes_the_executor_conformance_suite() {
    let Some(host) = docker::swarm_or_skip("the_swarm_executor_passes_the_executor_conformance_suite") else { return };
    let fixture = SwarmFixture::new(host, "swconf");
    let report = deploy_testkit::conformance::executor::run_all(&fixture).await;
    report.assert_conforms();
    assert!(report.not_applicable.is_empty(), "every check applies: {report}");
}

/// A version whose tasks fail: Swarm declares its update failed and rolls back by itself (whatever the restart
/// policy); an update that outlives the target's `deadline` is rolled back by Swarm when deployd asks. Either way the
/// target fails with Swarm's words and the tasks' errors, and the previous version runs again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_update_is_rolled_back_by_swarm_and_reported_in_its_words() {
    let Some(host) = docker::swarm_or_skip("a_failing_update_is_rolled_back_by_swarm_and_reported_in_its_words") else {
        return;
    };
    let fx = SwarmFixture::new(host.clone(), "swroll");
    let secrets = ResolvedSecrets::new();
    let cases = [
        // Who asks first depends on how soon Swarm notices (its own rollback, or deployd's a monitor period later).
        (json!({"restart": "none", "replicas": 2}), "3.0.0", "Swarm roll", "non-zero exit (3)"),
        (json!({"restart": "any", "replicas": 2}), "3.0.0", "Swarm roll", "non-zero exit (3)"),
        (
            json!({"replicas": 2, "update": {"monitor": "1s", "delay": "30s"}, "deadline": "4s"}),
            "2.0.0",
            "deployd had Swarm roll it back",
            "",
        ),
    ];
    for (config, version, by, task_error) in cases {
        let target = fx.target(config.clone());
        let service = target.config["service"].as_str().unwrap().to_owned();
        fx.executor.apply(&target, ctx(&want("1.0.0"), &secrets, DeploymentId::new())).await.unwrap();
        let e = fx.executor.apply(&target, ctx(&want(version), &secrets, DeploymentId::new())).await.unwrap_err();
        assert_eq!(e.class(), ErrorClass::Permanent, "{e}");
        assert!(e.message().contains(by) && e.message().contains(task_error), "{config}: {e}");
        assert_eq!(
            service_field(&host, &service, "{{.Spec.TaskTemplate.ContainerSpec.Image}}"),
            format!("{REPO}:1.0.0")
        );
        let seen = fx.executor.observe(&target, None).await.unwrap();
        assert_eq!(seen.version.as_ref().map(Version::as_str), Some("1.0.0"), "{config}: {seen:?}");
    }
}

/// An update in flight whose watcher is dropped (deployd killed, a lease lost) is watched again by the next apply of
/// the same deployment, never issued a second time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_update_in_flight_is_watched_again_not_issued_again() {
    let Some(host) = docker::swarm_or_skip("an_update_in_flight_is_watched_again_not_issued_again") else { return };
    let fx = SwarmFixture::new(host.clone(), "swresume");
    let target = fx.target(json!({"replicas": 2, "update": {"monitor": "1s", "delay": "3s"}}));
    let service = target.config["service"].as_str().unwrap().to_owned();
    let secrets = ResolvedSecrets::new();
    fx.executor.apply(&target, ctx(&want("1.0.0"), &secrets, DeploymentId::new())).await.unwrap();
    let deployment = DeploymentId::new();
    let v2 = want("2.0.0");
    let cut = tokio::time::timeout(Duration::from_secs(2), fx.executor.apply(&target, ctx(&v2, &secrets, deployment)));
    assert!(cut.await.is_err(), "the update takes longer than the first watcher lives");
    assert_eq!(service_field(&host, &service, "{{.UpdateStatus.State}}"), "updating");
    let done = fx.executor.apply(&target, ctx(&v2, &secrets, deployment)).await.unwrap();
    assert!(done.output.contains("runs 2.0.0"), "{}", done.output);
    assert_eq!(
        service_field(&host, &service, "{{.PreviousSpec.TaskTemplate.ContainerSpec.Image}}"),
        format!("{REPO}:1.0.0"),
        "one update was issued: the previous spec is still 1.0.0's"
    );
    assert_eq!(service_field(&host, &service, "{{.UpdateStatus.State}}"), "completed");
}
