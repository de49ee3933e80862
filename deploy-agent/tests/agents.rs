//! Agents as separate processes on loopback, each running `command` hooks for its target, against an in-process
//! `deployd`: a rolling deployment across them, a killed agent, a cut-off agent, a restarted agent, and credentials
//! limited to their own target.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use deploy_core::HumanDuration;
use serde_json::{Value, json};
use tokio::process::{Child, Command};

const ADMIN: &str = "dk_agentagentagentagentagentagentagentagentage";

struct Fleet {
    /// Kept alive for the test's duration.
    _server: deploy_server::Running,
    base: String,
    http: reqwest::Client,
    dir: PathBuf,
}

fn settings(dir: &std::path::Path, database_url: Option<String>) -> deploy_server::Settings {
    deploy_server::Settings {
        database_url,
        agent_heartbeat_timeout: HumanDuration::from_secs(1),
        ..deploy_server::Settings::for_tests(dir.join("deployd"), ADMIN)
    }
}

impl Fleet {
    async fn start(tag: &str, targets: usize) -> Self {
        // The fleet removes its directory when dropped.
        Self::over(deploy_testkit::fixtures::temp_dir(tag).keep(), None, targets).await
    }

    async fn over(dir: PathBuf, database_url: Option<String>, targets: usize) -> Self {
        let server = deploy_server::start(settings(&dir, database_url)).await.unwrap();
        let base = format!("http://{}", server.addr);
        let fleet = Self { _server: server, base, http: reqwest::Client::new(), dir };
        let list: Vec<Value> = (1..=targets).map(|i| json!({"id": format!("a-{i}"), "executor": "agent"})).collect();
        let put =
            fleet.call(reqwest::Method::PUT, "/v1/environments/fleet", ADMIN, Some(json!({"targets": list}))).await;
        assert!(put.0 == 201 || put.0 == 200, "{}", put.1);
        fleet
    }

    async fn call(&self, method: reqwest::Method, path: &str, token: &str, body: Option<Value>) -> (u16, Value) {
        let mut req = self.http.request(method, format!("{}{path}", self.base)).bearer_auth(token);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.unwrap();
        let status = resp.status().as_u16();
        (status, resp.json().await.unwrap_or(Value::Null))
    }

    async fn agent_key(&self, target: &str) -> String {
        let body =
            json!({"name": format!("agent-{target}"), "role": "agent", "environments": ["fleet"], "target": target});
        let (status, key) = self.call(reqwest::Method::POST, "/v1/api-keys", ADMIN, Some(body)).await;
        assert_eq!(status, 201, "{key}");
        key["key"].as_str().unwrap().to_owned()
    }

    /// Where target `t`'s hooks write what they applied.
    fn applies(&self, target: &str) -> PathBuf {
        self.dir.join(format!("{target}.applies"))
    }

    fn applied(&self, target: &str) -> Vec<String> {
        std::fs::read_to_string(self.applies(target)).unwrap_or_default().lines().map(str::to_owned).collect()
    }

    /// Starts the agent of `target`, talking to `server` (the fleet's, or a proxy's).
    async fn agent(&self, target: &str, key: &str, server: &str) -> Child {
        let applies = self.applies(target).display().to_string();
        let config = json!({"hooks": {
            "install": format!("echo \"installed $DEPLOY_VERSION on $DEPLOY_TARGET\"; echo $DEPLOY_VERSION >> {applies}"),
            "validate": "true"
        }, "timeout": "5s"});
        Command::new(env!("CARGO_BIN_EXE_deploy-agent"))
            .args(["--environment", "fleet", "--target", target, "--executor", "command"])
            .args(["--heartbeat", "200ms", "--poll-wait", "2s"])
            .arg("--config")
            .arg(config.to_string())
            .arg("--state-dir")
            .arg(self.dir.join(format!("state-{target}")))
            .env("DEPLOY_URL", server)
            .env("DEPLOY_AGENT_TOKEN", key)
            .env("DEPLOY_AGENT_LOG", "warn")
            .stdout(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .unwrap()
    }

    async fn deploy(&self, version: &str, extra: Value) -> String {
        let mut body = json!({"environment": "fleet", "service": "svc", "version": version,
                              "strategy": {"type": "rolling", "batch_size": 1},
                              "verify": {"timeout": "5s", "interval": "100ms", "healthy_for": "0s"}});
        for (k, v) in extra.as_object().unwrap() {
            body[k] = v.clone();
        }
        let (status, d) = self.call(reqwest::Method::POST, "/v1/deployments", ADMIN, Some(body)).await;
        assert_eq!(status, 202, "{d}");
        d["id"].as_str().unwrap().to_owned()
    }

    async fn finished(&self, id: &str) -> Value {
        for _ in 0..600 {
            let (_, d) = self.call(reqwest::Method::GET, &format!("/v1/deployments/{id}"), ADMIN, None).await;
            if !["queued", "in_progress", "rolling_back"].contains(&d["status"].as_str().unwrap_or("queued")) {
                return d;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("deployment {id} did not finish");
    }

    async fn events(&self, id: &str) -> String {
        self.call(reqwest::Method::GET, &format!("/v1/deployments/{id}/events?limit=500"), ADMIN, None)
            .await
            .1
            .to_string()
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

async fn agents(fleet: &Fleet, n: usize) -> Vec<Child> {
    let mut out = Vec::new();
    for i in 1..=n {
        let target = format!("a-{i}");
        let key = fleet.agent_key(&target).await;
        out.push(fleet.agent(&target, &key, &fleet.base).await);
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolling_deployment_across_agents() {
    let fleet = Fleet::start("agents-rolling", 3).await;
    let _agents = agents(&fleet, 3).await;
    let id = fleet.deploy("1.0", json!({})).await;
    let done = fleet.finished(&id).await;
    assert_eq!(done["status"], "succeeded", "{done}");
    for i in 1..=3 {
        assert_eq!(fleet.applied(&format!("a-{i}")), ["1.0"], "a-{i} applied once");
    }
    let events = fleet.events(&id).await;
    assert!(events.contains("installed 1.0 on a-2"), "the agent's output is in the events: {events}");
    let (_, env) = fleet.call(reqwest::Method::GET, "/v1/environments/fleet", ADMIN, None).await;
    assert!(env["targets"].as_array().unwrap().iter().all(|t| t["actual"]["version"] == "1.0"), "{env}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_killed_mid_rollout_makes_its_target_unreachable_and_the_policy_applies() {
    let fleet = Fleet::start("agents-killed", 3).await;
    let mut agents = agents(&fleet, 3).await;
    let id = fleet.deploy("2.0", json!({"on_unreachable": {"wait": "1s", "then": "fail"}})).await;
    agents[2].kill().await.unwrap(); // SIGKILL, while a-1 is being deployed
    let done = fleet.finished(&id).await;
    let a3 = done["targets"].as_array().unwrap().iter().find(|t| t["id"] == "a-3").unwrap().clone();
    assert_eq!(a3["status"], "unreachable", "{done}");
    assert!(a3["error"].as_str().unwrap().contains("agent of a-3"), "a clear reason, not a generic error: {a3}");
    assert!(["failed", "rolled_back"].contains(&done["status"].as_str().unwrap()), "the policy applied: {done}");
    assert!(fleet.applied("a-3").is_empty(), "nothing was applied on the dead agent's target");
}

/// A proxy that can be cut: while cut, connections are refused and the open ones closed.
struct Cable {
    addr: SocketAddr,
    cut: Arc<AtomicBool>,
}

impl Cable {
    async fn to(upstream: SocketAddr) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let cut = Arc::new(AtomicBool::new(false));
        let flag = cut.clone();
        tokio::spawn(async move {
            while let Ok((mut client, _)) = listener.accept().await {
                if flag.load(Ordering::SeqCst) {
                    continue; // dropped: refused
                }
                let flag = flag.clone();
                tokio::spawn(async move {
                    let Ok(mut server) = tokio::net::TcpStream::connect(upstream).await else { return };
                    let relay = tokio::io::copy_bidirectional(&mut client, &mut server);
                    let watch = async {
                        while !flag.load(Ordering::SeqCst) {
                            tokio::time::sleep(Duration::from_millis(20)).await;
                        }
                    };
                    tokio::select! {
                        _ = relay => {}
                        () = watch => {}
                    }
                });
            }
        });
        Self { addr, cut }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_cut_off_and_reconnected_reports_the_truth_and_the_deployment_finishes() {
    let fleet = Fleet::start("agents-partition", 2).await;
    let upstream: SocketAddr = fleet.base.trim_start_matches("http://").parse().unwrap();
    let cable = Cable::to(upstream).await;
    let key1 = fleet.agent_key("a-1").await;
    let key2 = fleet.agent_key("a-2").await;
    let _a1 = fleet.agent("a-1", &key1, &format!("http://{}", cable.addr)).await;
    let _a2 = fleet.agent("a-2", &key2, &fleet.base).await;
    let first = fleet.deploy("1.0", json!({})).await;
    assert_eq!(fleet.finished(&first).await["status"], "succeeded");

    // Cut a-1 off, deploy 2.0: its target is unreachable while the engine waits; then the cable is mended.
    cable.cut.store(true, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let id = fleet.deploy("2.0", json!({"on_unreachable": {"wait": "30s", "then": "fail"}})).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (_, during) = fleet.call(reqwest::Method::GET, &format!("/v1/deployments/{id}"), ADMIN, None).await;
    assert_eq!(during["status"], "in_progress", "waiting for the unreachable agent: {during}");
    assert_eq!(fleet.applied("a-1"), ["1.0"], "the cut-off agent heard nothing yet");
    cable.cut.store(false, Ordering::SeqCst);
    let done = fleet.finished(&id).await;
    assert_eq!(done["status"], "succeeded", "{done}");
    assert_eq!(fleet.applied("a-1"), ["1.0", "2.0"]);
    let events = fleet.events(&id).await;
    assert!(events.contains("unreachable"), "{events}");
    let (_, env) = fleet.call(reqwest::Method::GET, "/v1/environments/fleet", ADMIN, None).await;
    assert!(env["targets"].as_array().unwrap().iter().all(|t| t["actual"]["version"] == "2.0"), "{env}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_agent_does_not_apply_again_what_already_runs() {
    let fleet = Fleet::start("agents-restart", 1).await;
    let key = fleet.agent_key("a-1").await;
    let mut agent = fleet.agent("a-1", &key, &fleet.base).await;
    let id = fleet.deploy("1.0", json!({})).await;
    assert_eq!(fleet.finished(&id).await["status"], "succeeded");
    agent.kill().await.unwrap();
    let _again = fleet.agent("a-1", &key, &fleet.base).await;
    // Several heartbeats and polls later: reported, not re-applied.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(fleet.applied("a-1"), ["1.0"], "applied once across the restart");
    let (status, slot) = fleet.call(reqwest::Method::GET, "/v1/agents/fleet/a-1/assignment", ADMIN, None).await;
    assert_eq!(status, 200);
    assert_eq!(slot["report"]["generation"], slot["generation"], "{slot}");
    assert_eq!(slot["report"]["version"], "1.0");
    assert_eq!(slot["report"]["health"], "healthy");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agents_credential_is_limited_to_its_own_target() {
    let fleet = Fleet::start("agents-scope", 2).await;
    let key = fleet.agent_key("a-1").await;
    let report = json!({"generation": 0, "health": "unknown"});
    let own = fleet.call(reqwest::Method::GET, "/v1/agents/fleet/a-1/assignment", &key, None).await;
    assert_eq!(own.0, 200, "{}", own.1);
    let put = fleet.call(reqwest::Method::PUT, "/v1/agents/fleet/a-1/report", &key, Some(report.clone())).await;
    assert_eq!(put.0, 200, "{}", put.1);
    for (method, path, body) in [
        (reqwest::Method::GET, "/v1/agents/fleet/a-2/assignment", None),
        (reqwest::Method::PUT, "/v1/agents/fleet/a-2/report", Some(report.clone())),
        (reqwest::Method::GET, "/v1/agents/other/a-1/assignment", None),
        (reqwest::Method::GET, "/v1/environments/fleet", None),
        (
            reqwest::Method::POST,
            "/v1/deployments",
            Some(json!({"environment": "fleet", "service": "s", "version": "9"})),
        ),
    ] {
        let (status, problem) = fleet.call(method.clone(), path, &key, body).await;
        assert_eq!(status, 403, "{method} {path}: {problem}");
        assert_eq!(problem["type"], "/problems/forbidden");
    }
    let (status, listed) = fleet.call(reqwest::Method::GET, "/v1/deployments", &key, None).await;
    assert_eq!((status, listed["items"].as_array().unwrap().len()), (200, 0), "an agent reads no deployment");
    // Agent keys are bound to one target in one environment.
    for body in [
        json!({"name": "x", "role": "agent", "environments": ["fleet"]}),
        json!({"name": "y", "role": "agent", "environments": ["*"], "target": "a-1"}),
        json!({"name": "z", "role": "viewer", "target": "a-1"}),
    ] {
        let (status, problem) = fleet.call(reqwest::Method::POST, "/v1/api-keys", ADMIN, Some(body.clone())).await;
        assert_eq!(status, 400, "{body}: {problem}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_postgresql_agents_may_talk_to_any_replica() {
    let Some(url) =
        deploy_sql::testing::fresh_postgres_database("on_postgresql_agents_may_talk_to_any_replica").await.unwrap()
    else {
        return;
    };
    let dir = deploy_testkit::fixtures::temp_dir("agents-pg");
    let a = Fleet::over(dir.join("a"), Some(url.clone()), 2).await;
    let b = Fleet::over(dir.join("b"), Some(url), 2).await;
    // Each agent talks to one replica; deployments are submitted to the other.
    let key1 = a.agent_key("a-1").await;
    let key2 = a.agent_key("a-2").await;
    let _a1 = a.agent("a-1", &key1, &b.base).await;
    let _a2 = a.agent("a-2", &key2, &a.base).await;
    for version in ["1.0", "2.0"] {
        let id = a.deploy(version, json!({})).await;
        let done = b.finished(&id).await;
        assert_eq!(done["status"], "succeeded", "{done}");
    }
    assert_eq!(a.applied("a-1"), ["1.0", "2.0"]);
    assert_eq!(a.applied("a-2"), ["1.0", "2.0"]);
}

/// A sidecar on a container host: the agent runs the `docker` executor against its host's engine, and the deployment
/// ends with the container deployd asked for answering there. Skipped (saying so) where no engine answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_on_a_container_host_runs_the_docker_executor() {
    use deploy_testkit::docker::{self, Web};
    let Some(host) = docker::engine_or_skip("an_agent_on_a_container_host_runs_the_docker_executor") else { return };
    docker::web_image(&host, "deploy-test/web", "1.0.0", Web::Healthy);
    let fleet = Fleet::start("agents-docker", 1).await;
    let key = fleet.agent_key("a-1").await;
    let name = format!("agent-sidecar-{}", std::process::id());
    let config = json!({"engine": host, "image": "deploy-test/web:{version}", "name": name,
                        "health": {"port": 8080}, "stop_timeout": "1s"});
    let _agent = Command::new(env!("CARGO_BIN_EXE_deploy-agent"))
        .args(["--environment", "fleet", "--target", "a-1", "--executor", "docker"])
        .args(["--heartbeat", "200ms", "--poll-wait", "2s"])
        .arg("--config")
        .arg(config.to_string())
        .arg("--state-dir")
        .arg(fleet.dir.join("state-a-1"))
        .env("DEPLOY_URL", &fleet.base)
        .env("DEPLOY_AGENT_TOKEN", key)
        .env("DEPLOY_AGENT_LOG", "warn")
        .stdout(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let id =
        fleet.deploy("1.0.0", json!({"verify": {"timeout": "20s", "interval": "200ms", "healthy_for": "0s"}})).await;
    let done = fleet.finished(&id).await;
    let container = docker::inspect(&host, &name);
    docker::remove_environment(&host, "fleet");
    assert_eq!(done["status"], "succeeded", "{done}");
    let container = container.expect("the agent made the container");
    assert_eq!(container["State"]["Running"], true);
    assert_eq!(container["Config"]["Labels"]["dev.deployd.version"], "1.0.0");
    assert_eq!(container["Config"]["Labels"]["dev.deployd.deployment"], id.as_str());
}
