//! deployd in front of a real Docker Engine, through its HTTP API: a rolling deployment of containers, a version that
//! fails its health check and is rolled back, and who may define container targets. Skipped (and saying so) where no
//! engine answers; `.ci/run` starts one and requires it.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

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
    let body = json!({"name": "team-admin", "role": "admin", "environments": ["team-*"]});
    let scoped = s.post("/v1/api-keys", ADMIN, body).await.body["key"].as_str().unwrap().to_owned();
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
