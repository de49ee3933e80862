//! deployd in front of a real Docker Engine, through its HTTP API: a rolling deployment of containers, a version that
//! fails its health check and is rolled back, and who may define container targets. Skipped (and saying so) where no
//! engine answers; `.ci/run` starts one and requires it.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::time::Duration;

use common::{ADMIN, Server, settings};
use deploy_testkit::docker::{self, Web};
use reqwest::StatusCode;
use serde_json::{Value, json};

const REPO: &str = "deploy-test/web";

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

async fn answers(port: u16) -> Option<String> {
    let r = reqwest::get(format!("http://127.0.0.1:{port}/index.html")).await.ok()?;
    if !r.status().is_success() {
        return None;
    }
    r.text().await.ok().map(|t| t.trim().to_owned())
}

async fn deploy(s: &Server, version: &str) -> Value {
    let body = json!({"environment": "containers", "service": "web", "version": version,
        "strategy": {"type": "rolling", "batch_size": "1"},
        "failure": {"max_failed": "0", "on_failure": "rollback"},
        "verify": {"timeout": "20s", "interval": "200ms", "healthy_for": "400ms"}});
    let a = s.post("/v1/deployments", ADMIN, body).await;
    assert_eq!(a.status, StatusCode::ACCEPTED, "{:?}", a.body);
    s.wait_terminal(a.body["id"].as_str().unwrap()).await
}

/// Four containers on four ports, rolled one at a time: version 3 never becomes healthy on the third target, so the
/// deployment rolls back and every port answers version 2 again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_version_rolls_back_and_leaves_the_previous_one_on_every_port() {
    let Some(host) = docker::engine_or_skip("a_failing_version_rolls_back_and_leaves_the_previous_one_on_every_port")
    else {
        return;
    };
    for (v, web) in [("1.0.0", Web::Healthy), ("2.0.0", Web::Healthy), ("3.0.0", Web::Unhealthy)] {
        docker::web_image(&host, REPO, v, web);
    }
    let s =
        Server::with(deploy_server::Settings { executors: "docker".into(), ..settings("containers-rolling") }).await;
    let env_label = format!("e2e-{}", std::process::id());
    let ports: Vec<u16> = (0..4).map(|_| free_port()).collect();
    let targets: Vec<Value> = ports
        .iter()
        .enumerate()
        .map(|(i, port)| {
            json!({"id": format!("c-{i}"), "executor": "docker", "config": {
                "engine": host, "image": format!("{REPO}:{{version}}"), "name": format!("{env_label}-c-{i}"),
                "ports": [{"container": 8080, "host": port}], "health": {"port": 8080},
                "start_timeout": "5s", "stop_timeout": "1s"}})
        })
        .collect();
    let put = s.put("/v1/environments/containers", ADMIN, json!({"targets": targets})).await;
    assert_eq!(put.status, StatusCode::CREATED, "{:?}", put.body);
    let cleanup = Cleanup(host.clone());

    for v in ["1.0.0", "2.0.0"] {
        let done = deploy(&s, v).await;
        assert_eq!(done["status"], "succeeded", "{done}");
    }
    for port in &ports {
        assert_eq!(answers(*port).await.as_deref(), Some("version 2.0.0"));
    }
    let failed = deploy(&s, "3.0.0").await;
    assert_eq!(failed["status"], "rolled_back", "{failed}");
    let statuses: Vec<&str> =
        failed["targets"].as_array().unwrap().iter().map(|t| t["status"].as_str().unwrap()).collect();
    assert!(statuses.contains(&"failed") || failed["status_reason"].as_str().unwrap().contains("fail"), "{failed}");
    let error = failed["targets"].as_array().unwrap().iter().find_map(|t| t["error"].as_str()).unwrap_or_default();
    assert!(failed.to_string().contains("did not become healthy"), "the engine's reason is kept: {error} {failed}");
    for (i, port) in ports.iter().enumerate() {
        assert_eq!(answers(*port).await.as_deref(), Some("version 2.0.0"), "port {i} after the rollback");
    }
    let env = s.get("/v1/environments/containers", ADMIN).await.body;
    for t in env["targets"].as_array().unwrap() {
        assert_eq!(t["actual"]["version"], "2.0.0", "{t}");
    }
    drop(cleanup);
}

/// Who may define container targets: the engine is root on its host, so only an admin of every environment may; a
/// scoped admin is refused, as for `process`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_an_admin_of_every_environment_defines_container_targets() {
    let s = Server::with(deploy_server::Settings { executors: "docker".into(), ..settings("containers-rbac") }).await;
    let scoped = s.key("team-admin", "admin", &["team-*"]).await;
    let target = json!({"targets": [{"id": "c-0", "executor": "docker", "config": {"image": "x:{version}"}}]});
    s.put("/v1/environments/team-a", &scoped, target.clone()).await.problem(403, "forbidden");
    assert_eq!(s.put("/v1/environments/team-a", ADMIN, target).await.status, StatusCode::CREATED);
}

struct Cleanup(String);

impl Drop for Cleanup {
    fn drop(&mut self) {
        docker::remove_environment(&self.0, "containers");
    }
}

fn swarm_target(host: &str, service: &str, extra: Value) -> Value {
    let mut config = json!({"engine": host, "service": service, "image": format!("{REPO}:{{version}}"), "replicas": 2,
                            "update": {"monitor": "1s"}, "deadline": "60s"});
    for (k, v) in extra.as_object().unwrap() {
        config[k] = v.clone();
    }
    json!({"id": "svc", "executor": "swarm", "config": config})
}

fn service_field(host: &str, service: &str, format: &str) -> String {
    let out = docker::docker(host).args(["service", "inspect", service, "--format", format]).output().unwrap();
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// Submits `version` to the environment `swarm` (rolled back on failure, verified for up to a minute); its id.
async fn submit_to_swarm(s: &Server, version: &str) -> String {
    let body = json!({"environment": "swarm", "service": "web", "version": version,
        "failure": {"max_failed": "0", "on_failure": "rollback"},
        "verify": {"timeout": "60s", "interval": "500ms", "healthy_for": "0s"}});
    let a = s.post("/v1/deployments", ADMIN, body).await;
    assert_eq!(a.status, StatusCode::ACCEPTED, "{:?}", a.body);
    a.body["id"].as_str().unwrap().to_owned()
}

struct Services(String, String);

impl Drop for Services {
    fn drop(&mut self) {
        let _ = docker::docker(&self.0).args(["service", "rm", &self.1]).output();
    }
}

/// A Swarm update of a version whose tasks crash: Swarm rolls it back, the target fails with Swarm's reason, and the
/// deployment ends `rolled_back` with the service on the previous version.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_swarm_update_swarm_rolls_back_ends_rolled_back_with_its_reason() {
    let Some(host) = docker::swarm_or_skip("a_swarm_update_swarm_rolls_back_ends_rolled_back_with_its_reason") else {
        return;
    };
    for (v, web) in [("1.0.0", Web::Healthy), ("3.0.0", Web::Crashes)] {
        docker::web_image(&host, REPO, v, web);
    }
    let service = format!("e2e-swarm-{}", std::process::id());
    let _cleanup = Services(host.clone(), service.clone());
    let s = Server::with(deploy_server::Settings { executors: "swarm".into(), ..settings("containers-swarm") }).await;
    let target = swarm_target(&host, &service, json!({"restart": "none"}));
    let put = s.put("/v1/environments/swarm", ADMIN, json!({"targets": [target]})).await;
    assert_eq!(put.status, StatusCode::CREATED, "{:?}", put.body);
    let first = s.wait_terminal_within(&submit_to_swarm(&s, "1.0.0").await, Duration::from_secs(120)).await;
    assert_eq!(first["status"], "succeeded", "{first}");
    let failed = s.wait_terminal_within(&submit_to_swarm(&s, "3.0.0").await, Duration::from_secs(120)).await;
    assert_eq!(failed["status"], "rolled_back", "{failed}");
    let text = failed.to_string();
    assert!(text.contains("Swarm roll") && text.contains("non-zero exit (3)"), "Swarm's reason: {text}");
    let events = s.get(&format!("/v1/deployments/{}/events?limit=500", failed["id"].as_str().unwrap()), ADMIN).await;
    assert!(events.body.to_string().contains("of 2 task(s) run 3.0.0"), "Swarm's progress: {:?}", events.body);
    assert_eq!(service_field(&host, &service, "{{.Spec.TaskTemplate.ContainerSpec.Image}}"), format!("{REPO}:1.0.0"));
}

/// kill -9 of deployd while Swarm updates a service; the restarted deployd watches that update to its end and issues
/// no second one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_deployd_watches_the_swarm_update_in_flight() {
    let Some(host) = docker::swarm_or_skip("a_restarted_deployd_watches_the_swarm_update_in_flight") else { return };
    for v in ["1.0.0", "2.0.0"] {
        docker::web_image(&host, REPO, v, Web::Healthy);
    }
    let service = format!("e2e-swarm-kill-{}", std::process::id());
    let _cleanup = Services(host.clone(), service.clone());
    let dir = common::temp_dir("containers-swarm-kill");
    let start = || {
        let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_deployd"));
        cmd.args(["serve", "--listen", "127.0.0.1:0", "--executors", "swarm", "--data-dir"])
            .arg(dir.join("data"))
            .env("DEPLOYD_BOOTSTRAP_ADMIN_KEY", ADMIN)
            .env("DEPLOYD_LOG", "warn");
        common::binary::listening(cmd)
    };
    let (mut deployd, base) = start().await;
    let mut api = Server::at(base, dir.join("data"));
    let target = swarm_target(&host, &service, json!({"update": {"monitor": "1s", "delay": "4s"}}));
    assert!(api.put("/v1/environments/swarm", ADMIN, json!({"targets": [target]})).await.status.is_success());
    let first = submit_to_swarm(&api, "1.0.0").await;
    assert_eq!(api.wait_terminal_within(&first, Duration::from_secs(120)).await["status"], "succeeded");
    let id = submit_to_swarm(&api, "2.0.0").await;
    let mut updating = false;
    for _ in 0..200 {
        if service_field(&host, &service, "{{.UpdateStatus.State}}") == "updating" {
            updating = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert!(updating, "Swarm started the update");
    deployd.kill().await.unwrap();
    let (_deployd, base) = start().await;
    api.base = base;
    let done = api.wait_terminal_within(&id, Duration::from_secs(120)).await;
    assert_eq!(done["status"], "succeeded", "{done}");
    assert_eq!(
        service_field(&host, &service, "{{.PreviousSpec.TaskTemplate.ContainerSpec.Image}}"),
        format!("{REPO}:1.0.0"),
        "exactly one update was issued: the previous spec is 1.0.0's"
    );
    assert_eq!(service_field(&host, &service, "{{.Spec.TaskTemplate.ContainerSpec.Image}}"), format!("{REPO}:2.0.0"));
}
