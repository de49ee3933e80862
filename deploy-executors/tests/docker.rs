//! The `docker` executor against a real Docker Engine: the executor contract, a failed version that leaves the old
//! one serving, out-of-band changes, and what a deployer's payload cannot make the engine do. Skipped (and saying so)
//! where no engine answers; `.ci/run` starts one and requires it.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::atomic::{AtomicUsize, Ordering};

use deploy_core::{
    ApplyContext, ConfigValue, DeploymentId, DesiredState, ErrorClass, Executor, Health, ResolvedSecrets, SecretRef,
    SecretValue, Target, Version,
};
use deploy_executors::DockerExecutor;
use deploy_testkit::docker::{self, Web};
use serde_json::json;

const REPO: &str = "deploy-test/web";

struct DockerFixture {
    executor: DockerExecutor,
    host: String,
    environment: String,
    next: AtomicUsize,
}

impl DockerFixture {
    fn new(host: String, prefix: &str) -> Self {
        for v in ["1.0.0", "2.0.0"] {
            docker::web_image(&host, REPO, v, Web::Healthy);
        }
        let environment = format!("{prefix}-{}", uuid_suffix());
        Self { executor: DockerExecutor::new(), host, environment, next: AtomicUsize::new(0) }
    }

    fn target(&self, config: serde_json::Value) -> Target {
        let id = format!("t-{}", self.next.fetch_add(1, Ordering::SeqCst));
        deploy_testkit::fixtures::target(&self.environment, &id, "docker", config)
    }

    fn web(&self) -> serde_json::Value {
        json!({"engine": self.host, "image": format!("{REPO}:{{version}}"), "health": {"port": 8080},
               "start_timeout": "20s", "stop_timeout": "2s"})
    }
}

impl Drop for DockerFixture {
    fn drop(&mut self) {
        docker::remove_environment(&self.host, &self.environment);
    }
}

fn uuid_suffix() -> String {
    format!("{:x}", std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() % (1 << 40))
}

#[deploy_core::async_trait]
impl deploy_testkit::conformance::executor::ExecutorFixture for DockerFixture {
    fn executor(&self) -> &dyn Executor {
        &self.executor
    }
    async fn fresh_target(&self) -> Target {
        self.target(self.web())
    }
    fn health_timeout(&self) -> std::time::Duration {
        std::time::Duration::from_secs(30)
    }
    async fn broken_target(&self) -> Option<Target> {
        Some(self.target(json!({"engine": self.host, "image": "deploy-test/none:{version}", "privileged": true})))
    }
    async fn unreachable_target(&self) -> Option<Target> {
        Some(self.target(json!({"engine": "unix:///nonexistent/docker.sock", "image": "x:{version}"})))
    }
    fn fences(&self) -> bool {
        true
    }
}

fn ctx<'a>(desired: &'a DesiredState, secrets: &'a ResolvedSecrets, deployment: DeploymentId) -> ApplyContext<'a> {
    ApplyContext { deployment, desired, secrets, fencing_token: 1, progress: None }
}

fn want(version: &str) -> DesiredState {
    DesiredState::bare("web".parse().unwrap(), Version::new(version).unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_docker_executor_passes_the_executor_conformance_suite() {
    let Some(host) = docker::engine_or_skip("the_docker_executor_passes_the_executor_conformance_suite") else {
        return;
    };
    let fixture = DockerFixture::new(host, "conf");
    let report = deploy_testkit::conformance::executor::run_all(&fixture).await;
    report.assert_conforms();
    assert!(report.not_applicable.is_empty(), "every check applies: {report}");
}

/// A version whose container crashes, or never answers its health check, is removed: the old one never stopped and
/// keeps answering on the published port.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_version_that_fails_leaves_the_old_one_serving_on_its_port() {
    let Some(host) = docker::engine_or_skip("a_version_that_fails_leaves_the_old_one_serving_on_its_port") else {
        return;
    };
    docker::web_image(&host, REPO, "3.0.0", Web::Crashes);
    docker::web_image(&host, REPO, "4.0.0", Web::Unhealthy);
    let fx = DockerFixture::new(host.clone(), "keep");
    let port = free_port();
    let mut config = fx.web();
    config["ports"] = json!([{"container": 8080, "host": port}]);
    config["start_timeout"] = json!("4s");
    let target = fx.target(config);
    let secrets = ResolvedSecrets::new();
    let (v1, v3, v4) = (want("1.0.0"), want("3.0.0"), want("4.0.0"));
    fx.executor.apply(&target, ctx(&v1, &secrets, DeploymentId::new())).await.unwrap();
    assert_eq!(answer(port).await.as_deref(), Some("version 1.0.0"));
    for broken in [&v3, &v4] {
        let e = fx.executor.apply(&target, ctx(broken, &secrets, DeploymentId::new())).await.unwrap_err();
        assert_eq!(e.class(), ErrorClass::Permanent, "{e}");
        assert!(e.message().contains("did not become healthy"), "{e}");
        assert_eq!(answer(port).await.as_deref(), Some("version 1.0.0"), "the old version still serves");
        let seen = fx.executor.observe(&target, Some(broken)).await.unwrap();
        assert_eq!(seen.version, Some(Version::new("1.0.0").unwrap()));
        assert_eq!(fx.executor.verify(&target, broken).await.unwrap(), Health::Unhealthy, "honest about the version");
    }
    let candidate = format!("deploy-{}-{}-candidate", target.environment, target.id);
    assert!(docker::inspect(&host, &candidate).is_none(), "no candidate is left behind");

    // Upgrades replace the container on the same port, keeping the version before as `-previous`.
    let v2 = want("2.0.0");
    fx.executor.apply(&target, ctx(&v2, &secrets, DeploymentId::new())).await.unwrap();
    assert_eq!(answer(port).await.as_deref(), Some("version 2.0.0"));
    let previous = docker::inspect(&host, &format!("deploy-{}-{}-previous", target.environment, target.id)).unwrap();
    assert_eq!(previous["Config"]["Labels"]["dev.deployd.version"], "1.0.0");
    assert_eq!(previous["State"]["Running"], false);
}

/// Out-of-band changes are observed as they are: a stopped container runs nothing, and a container deployd did not
/// make under the target's name is not taken for a version.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn observe_tells_what_actually_runs_after_out_of_band_changes() {
    let Some(host) = docker::engine_or_skip("observe_tells_what_actually_runs_after_out_of_band_changes") else {
        return;
    };
    let fx = DockerFixture::new(host.clone(), "oob");
    let target = fx.target(fx.web());
    let (secrets, v1) = (ResolvedSecrets::new(), want("1.0.0"));
    fx.executor.apply(&target, ctx(&v1, &secrets, DeploymentId::new())).await.unwrap();
    let name = format!("deploy-{}-{}", target.environment, target.id);
    let seen = fx.executor.observe(&target, Some(&v1)).await.unwrap();
    assert_eq!((seen.version.as_ref().map(Version::as_str), seen.health), (Some("1.0.0"), Health::Healthy));
    assert!(docker::docker(&host).args(["stop", "-t", "1", &name]).output().unwrap().status.success());
    assert_eq!(fx.executor.observe(&target, Some(&v1)).await.unwrap().version, None, "stopped: nothing runs");
    assert_eq!(fx.executor.verify(&target, &v1).await.unwrap(), Health::Unhealthy);
    fx.executor.apply(&target, ctx(&v1, &secrets, DeploymentId::new())).await.unwrap();
    assert_eq!(fx.executor.verify(&target, &v1).await.unwrap(), Health::Healthy, "apply starts it again");
    docker::docker(&host).args(["rm", "-f", &name]).output().unwrap();
    let label = format!("dev.deployd.environment={}", target.environment);
    let run = docker::docker(&host)
        .args(["run", "-d", "--name", &name, "--label", &label, &format!("{REPO}:2.0.0")])
        .output()
        .unwrap();
    assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
    let seen = fx.executor.observe(&target, Some(&v1)).await.unwrap();
    assert_eq!(seen.version, None, "a container deployd did not make is no version of it");
    assert_eq!(fx.executor.verify(&target, &v1).await.unwrap(), Health::Unhealthy);
}

/// Who may call it: the executor is host-level power (only admins of every environment define its targets). What it
/// can make the host do: a deployer's `config` and `secrets` only become environment variables of the container,
/// never mounts, privileges or the engine's socket. Which secret it could record: none in labels or the image.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deployers_payload_reaches_the_container_as_variables_only() {
    let Some(host) = docker::engine_or_skip("a_deployers_payload_reaches_the_container_as_variables_only") else {
        return;
    };
    assert!(DockerExecutor::new().runs_host_programs(), "defining docker targets is host-level power");
    let fx = DockerFixture::new(host.clone(), "payload");
    let target = fx.target(fx.web());
    let mut desired = want("1.0.0");
    for (k, v) in [("privileged", "true"), ("volumes", "/:/host"), ("binds", "/var/run/docker.sock:/s"), ("PATH", "/x")]
    {
        desired.config.insert(k.to_owned(), ConfigValue::Literal(json!(v)));
    }
    desired.secrets.insert("DB".to_owned(), SecretRef::parse("env://DEPLOY_SECRET_DB").unwrap());
    let mut secrets = ResolvedSecrets::new();
    secrets.insert("DB".to_owned(), SecretValue::new("hunter2-docker-6c1f"));
    let outcome = fx.executor.apply(&target, ctx(&desired, &secrets, DeploymentId::new())).await.unwrap();
    assert!(!outcome.output.contains("hunter2"), "{}", outcome.output);
    let c = docker::inspect(&host, &format!("deploy-{}-{}", target.environment, target.id)).unwrap();
    let host_config = &c["HostConfig"];
    assert_eq!(host_config["Privileged"], false);
    assert!(host_config["Binds"].is_null() || host_config["Binds"] == json!([]), "{host_config}");
    assert_eq!(c["Mounts"], json!([]), "nothing of the host is mounted");
    assert_eq!(host_config["NetworkMode"], "default");
    assert_eq!(host_config["SecurityOpt"], json!(["no-new-privileges"]));
    let env: Vec<&str> = c["Config"]["Env"].as_array().unwrap().iter().map(|v| v.as_str().unwrap()).collect();
    assert!(env.contains(&"DEPLOY_CONFIG_privileged=true"), "{env:?}");
    assert!(env.contains(&"DEPLOY_CONFIG_PATH=/x") && env.contains(&"PATH=/bin"), "a payload never names a variable");
    assert!(env.contains(&"DEPLOY_SECRET_DB=hunter2-docker-6c1f"), "the secret reaches the container: {env:?}");
    let labels = c["Config"]["Labels"].to_string();
    assert!(!labels.contains("hunter2"), "never in labels: {labels}");
    let image = docker::docker(&host).args(["image", "inspect", &format!("{REPO}:1.0.0")]).output().unwrap();
    assert!(!String::from_utf8_lossy(&image.stdout).contains("hunter2"), "never in the image");
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

async fn answer(port: u16) -> Option<String> {
    let url = format!("http://127.0.0.1:{port}/index.html");
    for _ in 0..20 {
        if let Ok(r) = reqwest::get(&url).await
            && r.status().is_success()
        {
            return r.text().await.ok().map(|t| t.trim().to_owned());
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    None
}
