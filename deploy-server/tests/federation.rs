//! Federation: one deployd as the gateway in front of another, through their HTTP APIs. A deployment here becomes
//! exactly one deployment there (a retry or a takeover replays it), its outcome is the target's, and the remote
//! deployd's own rules (its keys' environments) still hold.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::{ADMIN, Server, settings};
use deploy_core::{ApplyContext, DeploymentId, DesiredState, Executor, ResolvedSecrets, Target};
use reqwest::StatusCode;
use serde_json::{Value, json};

/// The downstream deployd (environment `prod` of three `sim` targets, 3.0 failing there) and a deployer key of it.
async fn downstream() -> (Server, String) {
    let mut s = settings("federation-down");
    let secrets = s.data_dir.join("secrets");
    std::fs::create_dir_all(secrets.join("prod")).unwrap();
    std::fs::write(secrets.join("prod/db"), "downstream-db-password-7e1").unwrap();
    s.secrets_dir = Some(secrets);
    let down = Server::with(s).await;
    let targets: Vec<Value> = (1..=3)
        .map(|i| json!({"id": format!("eu-{i}"), "executor": "sim", "config": {"apply_ms": 0, "fail_versions": ["3.0"]}}))
        .collect();
    let env = json!({"targets": targets, "secret_scope": {"allow": ["file://prod/*"]}});
    assert_eq!(down.put("/v1/environments/prod", ADMIN, env).await.status, StatusCode::CREATED);
    assert_eq!(down.put("/v1/environments/other", ADMIN, json!({"targets": []})).await.status, StatusCode::CREATED);
    let key = down.key("gateway", "deployer", &["prod"]).await;
    (down, key)
}

/// The gateway: the `deployd` executor, its token for the downstream in a file under `--secrets-dir`.
async fn gateway(down: &Server, token: &str) -> Server {
    let mut s = settings("federation-up");
    let secrets = s.data_dir.join("secrets");
    std::fs::create_dir_all(secrets.join("fed")).unwrap();
    std::fs::write(secrets.join("fed/eu"), token).unwrap();
    s.secrets_dir = Some(secrets);
    s.executors = "deployd".into();
    let up = Server::with(s).await;
    let target = |id: &str, env: &str| {
        json!({"id": id, "executor": "deployd", "config": {"url": down.url(""), "environment": env,
              "token": {"ref": "file://fed/eu"}, "poll": "100ms",
              "request": {"strategy": {"type": "rolling", "batch_size": "1"},
                          "failure": {"max_failed": "0", "on_failure": "rollback"},
                          "verify": {"timeout": "5s", "interval": "50ms", "healthy_for": "0s"}}}})
    };
    let global = json!({"targets": [target("eu", "prod")], "secret_scope": {"allow": ["file://prod/*"]}});
    let put = up.put("/v1/environments/global", ADMIN, global).await;
    assert_eq!(put.status, StatusCode::CREATED, "{:?}", put.body);
    let put = up.put("/v1/environments/elsewhere", ADMIN, json!({"targets": [target("eu-other", "other")]})).await;
    assert_eq!(put.status, StatusCode::CREATED, "{:?}", put.body);
    up
}

async fn deploy(s: &Server, env: &str, version: &str) -> Value {
    let body = json!({"environment": env, "service": "checkout", "version": version,
                      "verify": {"timeout": "10s", "interval": "100ms", "healthy_for": "0s"}});
    let a = s.post("/v1/deployments", ADMIN, body).await;
    assert_eq!(a.status, StatusCode::ACCEPTED, "{:?}", a.body);
    s.wait_terminal(a.body["id"].as_str().unwrap()).await
}

async fn remote_deployments(down: &Server) -> Vec<Value> {
    down.get("/v1/deployments?environment=prod&limit=500", ADMIN).await.body["items"].as_array().unwrap().clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_deploys_through_another_deployd_once_per_deployment() {
    let (down, key) = downstream().await;
    let up = gateway(&down, &key).await;

    let done = deploy(&up, "global", "2.0").await;
    assert_eq!(done["status"], "succeeded", "{done}");
    let remote = remote_deployments(&down).await;
    assert_eq!(remote.len(), 1, "one remote deployment: {remote:?}");
    assert_eq!((remote[0]["version"].clone(), remote[0]["status"].clone()), (json!("2.0"), json!("succeeded")));
    assert_eq!(remote[0]["created_by"], "key:gateway", "the gateway's credential, nobody else's");
    let env = up.get("/v1/environments/global", ADMIN).await.body;
    assert_eq!(env["targets"][0]["actual"]["version"], "2.0", "observed through the remote environment: {env}");
    let events = up.get(&format!("/v1/deployments/{}/events?limit=500", done["id"].as_str().unwrap()), ADMIN).await;
    assert!(
        events.body.to_string().contains("eu: deployd prod: "),
        "the remote events are the target's progress: {:?}",
        events.body
    );

    // A retry or a takeover of the same deployment replays the remote one instead of deploying again.
    let executor = deploy_executors::FederationExecutor::new()
        .secrets(std::sync::Arc::new(deploy_core::FileSecretResolver::new(up.data_dir.join("secrets"))));
    let listed: deploy_core::EnvironmentTarget =
        serde_json::from_value(env["targets"][0].clone()).expect("the target as served");
    let target = Target::of(&"global".parse().unwrap(), &listed);
    let desired = DesiredState::bare("checkout".parse().unwrap(), "2.0".parse().unwrap());
    let id: DeploymentId = done["id"].as_str().unwrap().parse().unwrap();
    let secrets = ResolvedSecrets::new();
    let again = executor.apply(
        &target,
        ApplyContext { deployment: id, desired: &desired, secrets: &secrets, fencing_token: 9, progress: None },
    );
    let outcome = again.await.unwrap();
    assert!(outcome.output.starts_with("following"), "a replay is followed, not submitted: {}", outcome.output);
    assert_eq!(remote_deployments(&down).await.len(), 1, "still one remote deployment");

    // The remote outcome is the target's: 3.0 fails there and is rolled back there; the gateway's own rollback of
    // the target is one more remote deployment, of 2.0, which finds 2.0 running.
    let failed = deploy(&up, "global", "3.0").await;
    assert_eq!(failed["status"], "rolled_back", "{failed}");
    let error = failed["targets"][0]["error"].as_str().unwrap_or_default();
    assert!(error.contains("rolled_back"), "the remote outcome and its reason: {error}");
    let remote = remote_deployments(&down).await;
    let seen: Vec<(&str, &str)> =
        remote.iter().map(|d| (d["version"].as_str().unwrap(), d["status"].as_str().unwrap())).collect();
    assert_eq!(seen, [("2.0", "succeeded"), ("3.0", "rolled_back"), ("2.0", "succeeded")], "newest first");

    // Secrets cross as references: the gateway resolves none (it has no such file), checks them against its scope,
    // and the remote deployd resolves them in its own.
    let body = json!({"environment": "global", "service": "checkout", "version": "2.1",
                      "secrets": {"DB": {"ref": "file://prod/db"}},
                      "verify": {"timeout": "10s", "interval": "100ms", "healthy_for": "0s"}});
    let a = up.post("/v1/deployments", ADMIN, body.clone()).await;
    assert_eq!(a.status, StatusCode::ACCEPTED, "{:?}", a.body);
    let passed = up.wait_terminal(a.body["id"].as_str().unwrap()).await;
    assert_eq!(passed["status"], "succeeded", "{passed}");
    let remote = remote_deployments(&down).await;
    assert_eq!(remote[0]["spec"]["secrets"]["DB"], json!({"ref": "file://prod/db"}), "a reference, never a value");
    let mut outside = body;
    outside["secrets"] = json!({"DB": {"ref": "file://staging/db"}});
    up.post("/v1/deployments", ADMIN, outside).await.problem(403, "forbidden");

    // Who may call it: the remote deployd's rules hold for the gateway's key (a deployer of `prod` only).
    let refused = deploy(&up, "elsewhere", "2.0").await;
    assert_eq!(refused["targets"][0]["status"], "failed", "{refused}");
    let error = refused["targets"][0]["error"].as_str().unwrap_or_default();
    assert!(error.contains("forbidden") || error.contains("may not"), "{error}");
    assert!(!error.contains(&key), "the token is never in an error: {error}");
    let events = up.get(&format!("/v1/deployments/{}/events?limit=500", done["id"].as_str().unwrap()), ADMIN).await;
    assert!(!events.body.to_string().contains(&key), "nor in the events");
}

/// Defining a `deployd` target sends a resolved secret to the URL it names: host-level power, global admins only.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_an_admin_of_every_environment_defines_federated_targets() {
    let mut s = settings("federation-rbac");
    s.executors = "deployd".into();
    let up = Server::with(s).await;
    let scoped = up.key("team-admin", "admin", &["team-*"]).await;
    let target = json!({"targets": [{"id": "x", "executor": "deployd", "config": {"url": "https://attacker.example",
                        "environment": "prod", "token": {"ref": "file://prod/db"}}}]});
    up.put("/v1/environments/team-a", &scoped, target).await.problem(403, "forbidden");
}

/// The `deployd` executor over a real downstream deployd: each fresh target is a new environment there.
struct FederationFixture {
    down: Server,
    executor: deploy_executors::FederationExecutor,
    next: std::sync::atomic::AtomicUsize,
}

impl FederationFixture {
    fn target(&self, id: &str, config: Value) -> Target {
        let listed: deploy_core::EnvironmentTarget = serde_json::from_value(
            json!({"id": id, "executor": "deployd", "config": config, "desired": null, "actual": null, "labels": {}}),
        )
        .unwrap();
        Target::of(&"gateway".parse().unwrap(), &listed)
    }

    fn config(&self, url: &str, env: &str) -> Value {
        json!({"url": url, "environment": env, "token": {"ref": "file://fed/conf"}, "poll": "50ms",
               "request": {"verify": {"timeout": "5s", "interval": "50ms", "healthy_for": "0s"}}})
    }
}

#[deploy_core::async_trait]
impl deploy_testkit::conformance::executor::ExecutorFixture for FederationFixture {
    fn executor(&self) -> &dyn Executor {
        &self.executor
    }
    async fn fresh_target(&self) -> Target {
        let n = self.next.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let env = format!("conf-{n}");
        let targets = json!({"targets": [{"id": "r-1", "executor": "sim", "config": {"apply_ms": 0}},
                                         {"id": "r-2", "executor": "sim", "config": {"apply_ms": 0}}]});
        let put = self.down.put(&format!("/v1/environments/{env}"), ADMIN, targets).await;
        assert_eq!(put.status, StatusCode::CREATED, "{:?}", put.body);
        self.target(&format!("t-{n}"), self.config(&self.down.url(""), &env))
    }
    async fn broken_target(&self) -> Option<Target> {
        // An environment the remote deployd does not have: 404 there, permanently.
        Some(self.target("broken", self.config(&self.down.url(""), "conf-missing")))
    }
    async fn unreachable_target(&self) -> Option<Target> {
        Some(self.target("away", self.config("http://127.0.0.1:9", "conf-away")))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_deployd_executor_passes_the_executor_conformance_suite() {
    let down = Server::start("federation-conformance").await;
    let key = down.key("gateway", "deployer", &["conf-*"]).await;
    let secrets = down.data_dir.join("gateway-secrets");
    std::fs::create_dir_all(secrets.join("fed")).unwrap();
    std::fs::write(secrets.join("fed/conf"), &key).unwrap();
    let executor = deploy_executors::FederationExecutor::new()
        .secrets(std::sync::Arc::new(deploy_core::FileSecretResolver::new(&secrets)));
    let fixture = FederationFixture { down, executor, next: std::sync::atomic::AtomicUsize::new(0) };
    let report = deploy_testkit::conformance::executor::run_all(&fixture).await;
    report.assert_conforms();
    assert_eq!(report.not_applicable.len(), 1, "only fencing does not apply (the remote deployd fences): {report}");
}
