//! The `process` and `command` executors with real processes on loopback, driven through the HTTP API.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use common::slots::Slots;
use common::{ADMIN, Server, settings, temp_dir};
use reqwest::StatusCode;
use serde_json::{Value, json};

fn request(env: &str, version: &str, strategy: Value) -> Value {
    json!({"environment": env, "service": "demo", "version": version, "strategy": strategy,
           "verify": {"timeout": "5s", "interval": "50ms", "healthy_for": "200ms"}})
}

async fn deploy(s: &Server, body: Value) -> Value {
    let a = s.post("/v1/deployments", ADMIN, body).await;
    assert_eq!(a.status, StatusCode::ACCEPTED, "{:?}", a.body);
    s.wait_terminal(a.body["id"].as_str().unwrap()).await
}

async fn events_text(s: &Server, id: &str) -> String {
    s.get(&format!("/v1/deployments/{id}/events?limit=500"), ADMIN).await.body.to_string()
}

/// The `process` executor over slots running `deployd demo-app`, one fresh slot per target the suite asks for.
struct ProcessFixture {
    slots: Slots,
    executor: deploy_executors::ProcessExecutor,
    next: std::sync::atomic::AtomicUsize,
}

#[deploy_core::async_trait]
impl deploy_testkit::conformance::executor::ExecutorFixture for ProcessFixture {
    fn executor(&self) -> &dyn deploy_core::Executor {
        &self.executor
    }
    async fn fresh_target(&self) -> deploy_core::Target {
        self.slots.target(self.next.fetch_add(1, std::sync::atomic::Ordering::SeqCst))
    }
    async fn broken_target(&self) -> Option<deploy_core::Target> {
        // A configuration the executor refuses: no command to run.
        let mut target = self.slots.target(self.next.fetch_add(1, std::sync::atomic::Ordering::SeqCst));
        target.config["command"] = serde_json::json!([]);
        Some(target)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_process_executor_passes_the_executor_conformance_suite() {
    let dir = temp_dir("process-conformance");
    let slots = Slots::new(16, &dir, "conf");
    let executor = deploy_executors::ProcessExecutor::new(&slots.state_dir);
    let fixture = ProcessFixture { slots, executor, next: std::sync::atomic::AtomicUsize::new(0) };
    let report = deploy_testkit::conformance::executor::run_all(&fixture).await;
    report.assert_conforms();
    let used = fixture.next.load(std::sync::atomic::Ordering::SeqCst);
    for i in 0..used {
        assert!(fixture.slots.running(i).len() <= 1, "at most one process per slot");
        let _ = fixture.executor.stop(&fixture.slots.target(i)).await;
    }
    assert!(fixture.slots.health(0).await.is_none(), "stopped");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolling_update_of_real_processes_never_takes_every_slot_down() {
    let s = Server::start("process-rolling").await;
    let slots = Slots::new(3, &s.data_dir, "live");
    let put = s.put("/v1/environments/live", ADMIN, json!({"targets": slots.targets("")})).await;
    assert_eq!(put.status, StatusCode::CREATED, "{:?}", put.body);
    let first = deploy(&s, request("live", "1.0", json!({"type": "all_at_once"}))).await;
    assert_eq!(first["status"], "succeeded", "{first}");
    let before: Vec<u64> = {
        let mut pids = Vec::new();
        for i in 0..3 {
            let h = slots.health(i).await.unwrap();
            assert_eq!(h["version"], "1.0");
            pids.push(h["pid"].as_u64().unwrap());
        }
        pids
    };

    // Watch every slot while 2.0 rolls out one slot at a time: count the moments when none answers at all.
    let stop = Arc::new(AtomicBool::new(false));
    let (all_down, probes) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let watcher = {
        let (stop, all_down, probes, ports) = (stop.clone(), all_down.clone(), probes.clone(), slots.ports.clone());
        tokio::spawn(async move {
            let http = reqwest::Client::builder().timeout(Duration::from_secs(2)).build().unwrap();
            while !stop.load(Ordering::SeqCst) {
                let mut any_up = false;
                for port in &ports {
                    // Only a refused connection is "down"; a slow answer under load is not.
                    let r = http.get(format!("http://127.0.0.1:{port}/")).send().await;
                    if r.is_ok() || r.is_err_and(|e| !e.is_connect()) {
                        any_up = true;
                    }
                }
                probes.fetch_add(1, Ordering::SeqCst);
                if !any_up {
                    all_down.fetch_add(1, Ordering::SeqCst);
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
    };
    let second = deploy(&s, request("live", "2.0", json!({"type": "rolling", "batch_size": 1}))).await;
    stop.store(true, Ordering::SeqCst);
    watcher.await.unwrap();
    assert_eq!(second["status"], "succeeded", "{second}");
    assert!(probes.load(Ordering::SeqCst) > 10, "the watcher watched");
    assert_eq!(all_down.load(Ordering::SeqCst), 0, "no moment with every slot down");
    for (i, old_pid) in before.iter().enumerate() {
        let h = slots.health(i).await.unwrap();
        assert_eq!(h["version"], "2.0", "slot {i} runs the new version");
        assert_ne!(h["pid"].as_u64().unwrap(), *old_pid, "slot {i} runs a new process");
        assert_eq!(slots.running(i).len(), 1, "slot {i}: the old process was stopped");
    }
    let env = s.get("/v1/environments/live", ADMIN).await.body;
    assert!(env["targets"].as_array().unwrap().iter().all(|t| t["actual"]["version"] == "2.0"), "{env}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_version_failing_its_health_check_is_rolled_back_and_never_reported_succeeded() {
    let s = Server::start("process-broken").await;
    let slots = Slots::new(2, &s.data_dir, "broken");
    s.put("/v1/environments/broken", ADMIN, json!({"targets": slots.targets("3.0")})).await;
    assert_eq!(deploy(&s, request("broken", "1.0", json!({"type": "all_at_once"}))).await["status"], "succeeded");
    let bad = deploy(&s, request("broken", "3.0", json!({"type": "rolling", "batch_size": 1}))).await;
    assert_eq!(bad["status"], "rolled_back", "{bad}");
    assert!(bad["targets"].as_array().unwrap().iter().all(|t| t["status"] != "succeeded"), "{bad}");
    let text = events_text(&s, bad["id"].as_str().unwrap()).await;
    assert!(text.contains("did not pass its health check") && text.contains("503"), "{text}");
    for i in 0..2 {
        assert_eq!(slots.health(i).await.unwrap()["version"], "1.0", "slot {i} still serves 1.0");
        assert_eq!(slots.running(i), vec![(slots.running(i)[0].0, "1.0".to_owned())]);
    }
}

fn hooks_env(dir: &std::path::Path) -> Value {
    let out = dir.join("out");
    std::fs::create_dir_all(&out).unwrap();
    let o = out.display();
    json!({"targets": [{"id": "c-1", "executor": "command", "config": {
        "timeout": "1s",
        "hooks": {
            "stop": format!("echo stopping $DEPLOY_PREVIOUS_VERSION on $DEPLOY_TARGET"),
            "install": format!("if [ \"$DEPLOY_VERSION\" = 9.9 ]; then echo \"disk full on $DEPLOY_TARGET\" >&2; exit 3; fi; \
                                if [ \"$DEPLOY_VERSION\" = 8.8 ]; then echo $$ > {o}/hung.pid; exec sleep 30; fi; \
                                echo \"$DEPLOY_VERSION $DEPLOY_CONFIG_GREETING\" > {o}/installed"),
            "start": "echo started $DEPLOY_VERSION",
            "validate": format!("grep -q \"^$DEPLOY_VERSION \" {o}/installed")
        }
    }}]})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn command_hooks_run_per_stage_and_failures_carry_their_output() {
    let s = Server::start("command-hooks").await;
    let scratch = temp_dir("command-hooks-out");
    s.put("/v1/environments/hooks", ADMIN, hooks_env(&scratch)).await;
    let mut ok = request("hooks", "1.0", json!({"type": "all_at_once"}));
    ok["config"] = json!({"GREETING": "hello"});
    let done = deploy(&s, ok).await;
    assert_eq!(done["status"], "succeeded", "{done}");
    assert_eq!(std::fs::read_to_string(scratch.join("out/installed")).unwrap().trim(), "1.0 hello", "config as env");
    let env = s.get("/v1/environments/hooks", ADMIN).await.body;
    assert_eq!(env["targets"][0]["actual"]["version"], "1.0");
    let text = events_text(&s, done["id"].as_str().unwrap()).await;
    assert!(
        text.contains("[stop] stopping on c-1") && text.contains("[start] started 1.0"),
        "hook output in the events: {text}"
    );

    // A hook that exits non-zero: the target fails with the hook's output in the events.
    let failed = deploy(&s, request("hooks", "9.9", json!({"type": "all_at_once"}))).await;
    assert!(["failed", "rolled_back"].contains(&failed["status"].as_str().unwrap()), "{failed}");
    assert!(["failed", "rolled_back"].contains(&failed["targets"][0]["status"].as_str().unwrap()), "{failed}");
    let text = events_text(&s, failed["id"].as_str().unwrap()).await;
    assert!(text.contains("hook install on c-1 failed") && text.contains("disk full on c-1"), "{text}");

    // A hook that hangs is killed at its timeout.
    let hung = deploy(&s, request("hooks", "8.8", json!({"type": "all_at_once"}))).await;
    assert!(["failed", "rolled_back"].contains(&hung["targets"][0]["status"].as_str().unwrap()), "{hung}");
    let text = events_text(&s, hung["id"].as_str().unwrap()).await;
    assert!(text.contains("killed after its timeout of 1s"), "{text}");
    let pid = std::fs::read_to_string(scratch.join("out/hung.pid")).unwrap();
    assert!(!std::path::Path::new(&format!("/proc/{}", pid.trim())).exists(), "the hung hook was killed");

    // Imperative steps run the hooks of those names; their output lands in the events.
    let mut steps = request("hooks", "1.1", json!({"type": "all_at_once"}));
    steps["mode"] = json!("imperative");
    steps["steps"] = json!([{"action": "stop"}, {"action": "install"}, {"action": "start"}]);
    let done = deploy(&s, steps).await;
    assert_eq!(done["status"], "succeeded", "{done}");
    let text = events_text(&s, done["id"].as_str().unwrap()).await;
    assert!(text.contains("started 1.1"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_environment_mixes_executors() {
    let s = Server::start("mixed").await;
    let slots = Slots::new(1, &s.data_dir, "mixed");
    let mut targets = slots.targets("");
    targets.push(json!({"id": "s-1", "executor": "sim", "config": {"initial_version": "1.0", "apply_ms": 5}}));
    let put = s.put("/v1/environments/mixed", ADMIN, json!({"targets": targets})).await;
    assert_eq!(put.status, StatusCode::CREATED);
    let done = deploy(&s, request("mixed", "2.0", json!({"type": "all_at_once"}))).await;
    assert_eq!(done["status"], "succeeded", "{done}");
    assert_eq!(slots.health(0).await.unwrap()["version"], "2.0");
    let env = s.get("/v1/environments/mixed", ADMIN).await.body;
    assert!(env["targets"].as_array().unwrap().iter().all(|t| t["actual"]["version"] == "2.0"), "{env}");
    let _ = settings;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn executors_that_run_real_things_can_be_turned_off() {
    let s = Server::with(deploy_server::Settings { executors: String::new(), ..settings("no-executors") }).await;
    let slots = Slots::new(1, &s.data_dir, "off");
    let refused = s.put("/v1/environments/off", ADMIN, json!({"targets": slots.targets("")})).await;
    refused.problem(400, "validation");
    assert!(refused.body.to_string().contains("process"), "names the executor: {:?}", refused.body);
    assert!(slots.health(0).await.is_none(), "nothing was started");
}

/// Whether process `pid` still runs (a zombie waiting to be reaped does not).
fn running(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .is_ok_and(|stat| stat.rsplit_once(')').is_some_and(|(_, rest)| !rest.trim_start().starts_with('Z')))
}

/// Issue 16: a `command` hook dies with the deployd that started it, kill -9 included (a parent-death signal), so
/// the install of an owner that is gone never runs on beside its successor's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hook_dies_with_the_deployd_that_started_it() {
    let dir = temp_dir("hook-dies");
    let pid_file = dir.join("hook.pid");
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_deployd"));
    cmd.args(["serve", "--listen", "127.0.0.1:0", "--executors", "command", "--data-dir"])
        .arg(dir.join("data"))
        .env("DEPLOYD_BOOTSTRAP_ADMIN_KEY", ADMIN)
        .env("DEPLOYD_LOG", "warn");
    let (mut deployd, base) = common::binary::listening(cmd).await;
    let http = reqwest::Client::new();
    let hook = format!("echo $$ > {}; exec sleep 600", pid_file.display());
    let env = json!({"targets": [{"id": "host-1", "executor": "command", "config": {"hooks": {"install": hook}}}]});
    let put = http.put(format!("{base}/v1/environments/prod")).bearer_auth(ADMIN).json(&env).send().await.unwrap();
    assert!(put.status().is_success());
    let post =
        http.post(format!("{base}/v1/deployments")).bearer_auth(ADMIN).json(&request("prod", "2.0", json!(null)));
    assert_eq!(post.send().await.unwrap().status(), StatusCode::ACCEPTED);
    let mut pid = None;
    for _ in 0..200 {
        pid = std::fs::read_to_string(&pid_file).ok().and_then(|s| s.trim().parse::<u32>().ok());
        if pid.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let pid = pid.expect("the install hook started");
    assert!(running(pid), "the hook runs while deployd does");

    deployd.kill().await.unwrap();
    let mut gone = false;
    for _ in 0..100 {
        if !running(pid) {
            gone = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    if !gone {
        let _ = std::process::Command::new("kill").args(["-9", &pid.to_string()]).status();
    }
    assert!(gone, "the hook (pid {pid}) outlived the deployd that started it");
}
