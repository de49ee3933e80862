//! `deployd` as a process: killed with SIGKILL mid-rollout and restarted on the same data directory, it finishes the
//! deployment; SIGTERM drains and exits cleanly, leaving the work resumable.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use deploy_testkit::fixtures::temp_dir;
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt as _, BufReader};
use tokio::process::{Child, Command};

const ADMIN: &str = "dk_restartrestartrestartrestartrestartrestart0";

#[path = "common/pg.rs"]
mod pg;
#[path = "common/receiver.rs"]
mod receiver;
#[path = "common/slots.rs"]
mod slots;

struct Deployd {
    child: Child,
    base: String,
}

async fn spawn(data_dir: &Path) -> Deployd {
    spawn_args(data_dir, &[]).await
}

async fn spawn_args(data_dir: &Path, extra: &[&str]) -> Deployd {
    let args = ["serve", "--dev", "--listen", "127.0.0.1:0", "--lease", "1s", "--poll-interval", "50ms", "--data-dir"];
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_deployd"));
    cmd.args(args).arg(data_dir).args(extra).env("DEPLOYD_BOOTSTRAP_ADMIN_KEY", ADMIN);
    spawn_with(cmd).await.0
}

/// Starts `cmd` and reads its standard output up to the "listening on" line; returns the process and those lines.
async fn spawn_with(mut cmd: Command) -> (Deployd, Vec<String>) {
    let mut child = cmd
        .env("DEPLOYD_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .expect("deployd starts");
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut seen = Vec::new();
    let base = tokio::time::timeout(Duration::from_secs(30), async {
        while let Some(line) = lines.next_line().await.unwrap() {
            seen.push(line.clone());
            if let Some(rest) = line.split_once("listening on ").map(|(_, r)| r) {
                return rest.split_whitespace().next().unwrap().to_owned();
            }
        }
        panic!("deployd exited before listening: {seen:?}");
    })
    .await
    .expect("deployd listens within 30 s");
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    (Deployd { child, base }, seen)
}

async fn call(http: &reqwest::Client, method: reqwest::Method, url: String, body: Option<Value>) -> Value {
    let mut req = http.request(method, url).bearer_auth(ADMIN);
    if let Some(b) = body {
        req = req.json(&b);
    }
    let resp = req.send().await.unwrap();
    assert!(resp.status().is_success(), "{}", resp.status());
    resp.json().await.unwrap()
}

async fn setup(http: &reqwest::Client, d: &Deployd) -> String {
    let targets: Vec<Value> = (1..=4)
        .map(|i| json!({"id": format!("web-{i}"), "executor": "sim", "config": {"initial_version": "1.0", "apply_ms": 400}}))
        .collect();
    call(http, reqwest::Method::PUT, format!("{}/v1/environments/prod", d.base), Some(json!({"targets": targets})))
        .await;
    let body = json!({"environment": "prod", "service": "checkout", "version": "2.0",
                      "strategy": {"type": "rolling", "batch_size": 1},
                      "verify": {"timeout": "3s", "interval": "20ms", "healthy_for": "0s"}});
    let accepted = call(http, reqwest::Method::POST, format!("{}/v1/deployments", d.base), Some(body)).await;
    accepted["id"].as_str().unwrap().to_owned()
}

async fn wait_for(http: &reqwest::Client, d: &Deployd, id: &str, done: impl Fn(&Value) -> bool) -> Value {
    for _ in 0..600 {
        let v = call(http, reqwest::Method::GET, format!("{}/v1/deployments/{id}", d.base), None).await;
        if done(&v) {
            return v;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("deployment {id} never reached the expected state");
}

fn terminal(v: &Value) -> bool {
    ["succeeded", "degraded", "failed", "rolled_back", "cancelled", "superseded"]
        .contains(&v["status"].as_str().unwrap())
}

async fn check_finished(http: &reqwest::Client, d: &Deployd, id: &str) {
    let done = wait_for(http, d, id, terminal).await;
    assert_eq!(done["status"], "succeeded", "{done}");
    assert_eq!(done["summary"]["succeeded"], 4, "{done}");
    let env = call(http, reqwest::Method::GET, format!("{}/v1/environments/prod", d.base), None).await;
    for t in env["targets"].as_array().unwrap() {
        assert_eq!(t["actual"]["version"], "2.0", "{t}");
    }
    let events =
        call(http, reqwest::Method::GET, format!("{}/v1/deployments/{id}/events?limit=500", d.base), None).await;
    let seqs: Vec<u64> = events["items"].as_array().unwrap().iter().map(|e| e["seq"].as_u64().unwrap()).collect();
    assert_eq!(seqs, (1..=seqs.len() as u64).collect::<Vec<_>>(), "events without gaps");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_mid_rollout_then_restart_finishes_the_deployment() {
    let dir = temp_dir("sigkill");
    let http = reqwest::Client::new();
    let mut first = spawn(&dir).await;
    let id = setup(&http, &first).await;
    let mid = wait_for(&http, &first, &id, |v| v["summary"]["succeeded"].as_u64().unwrap_or(0) >= 1).await;
    assert!(!terminal(&mid), "killed mid-rollout: {mid}");
    first.child.kill().await.unwrap(); // SIGKILL
    let second = spawn(&dir).await;
    check_finished(&http, &second, &id).await;
    drop(second);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhook_deliveries_pending_at_sigkill_are_delivered_after_restart() {
    let dir = temp_dir("sigkill-webhooks");
    let http = reqwest::Client::new();
    let schedule = vec!["200ms"; 100].join(",");
    let extra = ["--webhook-retry-schedule", schedule.as_str()];
    let mut receiver = receiver::Receiver::down().await;
    let mut first = spawn_args(&dir, &extra).await;
    let sub = call(
        &http,
        reqwest::Method::POST,
        format!("{}/v1/webhooks", first.base),
        Some(json!({"url": receiver.url(), "events": ["*"]})),
    )
    .await;
    receiver.set_secret(sub["secret"].as_str().unwrap());
    let sub = sub["id"].as_str().unwrap().to_owned();
    let id = setup(&http, &first).await;
    wait_for(&http, &first, &id, |v| v["summary"]["succeeded"].as_u64().unwrap_or(0) >= 1).await;
    let before = call(&http, reqwest::Method::GET, format!("{}/v1/webhooks/{sub}/deliveries", first.base), None).await;
    assert!(before["items"].as_array().unwrap().iter().all(|d| d["status"] == "pending"), "the receiver is down");
    first.child.kill().await.unwrap(); // SIGKILL

    receiver.up(receiver::Mode::Status(204)).await;
    let second = spawn_args(&dir, &extra).await;
    check_finished(&http, &second, &id).await;
    let events =
        call(&http, reqwest::Method::GET, format!("{}/v1/deployments/{id}/events?limit=500", second.base), None).await;
    let events = events["items"].as_array().unwrap().len();
    let mut items = Vec::new();
    for _ in 0..600 {
        let page =
            call(&http, reqwest::Method::GET, format!("{}/v1/webhooks/{sub}/deliveries?limit=500", second.base), None)
                .await;
        items = page["items"].as_array().unwrap().clone();
        if items.len() == events && items.iter().all(|d| d["status"] == "delivered") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(items.len(), events, "one delivery per event, across the crash");
    assert!(items.iter().all(|d| d["status"] == "delivered"), "{items:#?}");
    let log = receiver.log();
    assert!(log.iter().all(|r| r.event.is_some()), "every delivery verifies");
    for d in &items {
        let delivered = log.iter().filter(|r| r.id == d["id"].as_str().unwrap() && r.answered == Some(204)).count();
        assert_eq!(delivered, 1, "{d}");
    }
    drop(second);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deployd_killed_mid_rollout_finds_its_processes_after_restart_and_finishes() {
    let dir = temp_dir("process-restart");
    let http = reqwest::Client::new();
    let slots = slots::Slots::new(3, &dir, "prod");
    let mut first = spawn(&dir).await;
    call(
        &http,
        reqwest::Method::PUT,
        format!("{}/v1/environments/prod", first.base),
        Some(json!({"targets": slots.targets("")})),
    )
    .await;
    let release = |version: &str, strategy: Value, healthy_for: &str| {
        json!({"environment": "prod", "service": "demo", "version": version, "strategy": strategy,
               "verify": {"timeout": "10s", "interval": "50ms", "healthy_for": healthy_for}})
    };
    let one = call(
        &http,
        reqwest::Method::POST,
        format!("{}/v1/deployments", first.base),
        Some(release("1.0", json!({"type": "all_at_once"}), "0s")),
    )
    .await;
    let done = wait_for(&http, &first, one["id"].as_str().unwrap(), terminal).await;
    assert_eq!(done["status"], "succeeded", "{done}");
    // 2.0 one slot at a time, each watched for a second: slow enough to be killed in the middle.
    let two = call(
        &http,
        reqwest::Method::POST,
        format!("{}/v1/deployments", first.base),
        Some(release("2.0", json!({"type": "rolling", "batch_size": 1}), "1s")),
    )
    .await;
    let id = two["id"].as_str().unwrap().to_owned();
    let mid = wait_for(&http, &first, &id, |v| v["summary"]["succeeded"].as_u64().unwrap_or(0) >= 1).await;
    assert!(!terminal(&mid), "killed mid-rollout: {mid}");
    first.child.kill().await.unwrap(); // SIGKILL
    let mut before = Vec::new();
    for i in 0..3 {
        let h = slots.health(i).await.expect("the slot's process outlives deployd");
        before.push((h["version"].as_str().unwrap().to_owned(), h["pid"].as_u64().unwrap()));
    }

    let second = spawn(&dir).await;
    let done = wait_for(&http, &second, &id, terminal).await;
    assert_eq!(done["status"], "succeeded", "{done}");
    for (i, (version, pid)) in before.iter().enumerate() {
        let h = slots.health(i).await.unwrap();
        assert_eq!(h["version"], "2.0", "slot {i}");
        assert_eq!(slots.running(i).len(), 1, "slot {i}: exactly one process, none orphaned");
        if version == "2.0" {
            assert_eq!(h["pid"].as_u64().unwrap(), *pid, "slot {i} was done before the crash: found, not restarted");
        }
    }
    assert!(before.iter().any(|(v, _)| v == "2.0") && before.iter().any(|(v, _)| v == "1.0"), "{before:?}");
    drop(second);
    drop(slots);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_and_a_restart_resumes() {
    let dir = temp_dir("sigterm");
    let http = reqwest::Client::new();
    let mut first = spawn(&dir).await;
    let id = setup(&http, &first).await;
    wait_for(&http, &first, &id, |v| v["status"] == "in_progress").await;
    let pid = first.child.id().unwrap();
    let sent = std::process::Command::new("kill").args(["-TERM", &pid.to_string()]).status().unwrap();
    assert!(sent.success());
    let status =
        tokio::time::timeout(Duration::from_secs(20), first.child.wait()).await.expect("exits after SIGTERM").unwrap();
    assert!(status.success(), "clean exit: {status:?}");
    let second = spawn(&dir).await;
    check_finished(&http, &second, &id).await;
    drop(second);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_data_directory_that_does_not_exist_yet_is_created() {
    let parent = temp_dir("fresh");
    let dir = parent.join("not").join("there");
    let http = reqwest::Client::new();
    let d = spawn(&dir).await;
    let id = setup(&http, &d).await;
    check_finished(&http, &d, &id).await;
    assert!(dir.join(deploy_sql::DATABASE_FILE).is_file(), "the database lives inside the directory");
    assert!(dir.join("sim").join("prod").is_dir(), "and so does the sim executor's state");
    drop(d);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_first_start_prints_a_bootstrap_key_once_and_settings_come_from_file_then_environment() {
    let dir = temp_dir("config");
    let config = dir.join("deployd.toml");
    std::fs::write(
        &config,
        format!(
            "listen = \"127.0.0.1:0\"\ndata_dir = \"{}\"\ndev = true\nlease = \"1s\"\npoll_interval = \"50ms\"\n\
             rate_limit = 1.0\nrate_limit_burst = 2.0\n",
            dir.join("data").display()
        ),
    )
    .unwrap();
    let command = |rate: Option<&str>| {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_deployd"));
        cmd.args(["serve", "--config"]).arg(&config).env_remove("DEPLOYD_BOOTSTRAP_ADMIN_KEY");
        if let Some(r) = rate {
            cmd.env("DEPLOYD_RATE_LIMIT", r).env("DEPLOYD_RATE_LIMIT_BURST", r);
        }
        cmd
    };
    let (first, lines) = spawn_with(command(None)).await;
    let key = lines
        .iter()
        .find_map(|l| l.split_once("(shown only now): ").map(|(_, k)| k.trim().to_owned()))
        .unwrap_or_else(|| panic!("no bootstrap key printed: {lines:?}"));
    assert!(deploy_server::is_well_formed_key(&key), "{key}");
    let http = reqwest::Client::new();
    // The file's rate limit (burst 2) applies.
    let mut statuses = Vec::new();
    for _ in 0..4 {
        statuses.push(
            http.get(format!("{}/v1/environments", first.base))
                .bearer_auth(&key)
                .send()
                .await
                .unwrap()
                .status()
                .as_u16(),
        );
    }
    assert!(statuses.contains(&429), "the file's rate limit applies: {statuses:?}");
    drop(first);
    // A variable beats the file; the key from the first start still works and no new key is printed.
    let (second, lines) = spawn_with(command(Some("1000"))).await;
    assert!(!lines.iter().any(|l| l.contains("shown only now")), "printed once only: {lines:?}");
    for _ in 0..10 {
        let status =
            http.get(format!("{}/v1/environments", second.base)).bearer_auth(&key).send().await.unwrap().status();
        assert_eq!(status.as_u16(), 200, "DEPLOYD_RATE_LIMIT overrides the file");
    }
    drop(second);
}

#[tokio::test]
async fn bad_settings_stop_deployd_with_a_clear_message() {
    let dir = temp_dir("badconfig");
    let config = dir.join("deployd.toml");
    std::fs::write(&config, "listen = \"127.0.0.1:0\"\ncolour = \"blue\"\n").unwrap();
    let out =
        Command::new(env!("CARGO_BIN_EXE_deployd")).args(["serve", "--config"]).arg(&config).output().await.unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("colour"), "names the unknown setting: {stderr}");
    let out = Command::new(env!("CARGO_BIN_EXE_deployd"))
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir.join("data"))
        .env("DEPLOYD_BOOTSTRAP_ADMIN_KEY", "dk_too_short")
        .output()
        .await
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("DEPLOYD_BOOTSTRAP_ADMIN_KEY"));
    let out = Command::new(env!("CARGO_BIN_EXE_deployd"))
        .args(["serve", "--listen", "127.0.0.1:0", "--executors", "process,mainframe", "--data-dir"])
        .arg(dir.join("data"))
        .output()
        .await
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown kind \"mainframe\""), "{out:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_postgresql_a_replica_killed_mid_rollout_is_replaced_by_another() {
    let Some(url) = pg::postgres_url("on_postgresql_a_replica_killed_mid_rollout_is_replaced_by_another").await else {
        return;
    };
    let dir = temp_dir("pg");
    let replica = |n: u32| {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_deployd"));
        cmd.args(["serve", "--dev", "--listen", "127.0.0.1:0", "--lease", "1s", "--poll-interval", "50ms"])
            .arg("--data-dir")
            .arg(dir.path()) // the sim executor's state: shared, as the targets would be
            .args(["--database-url", &url])
            .env("DEPLOYD_BOOTSTRAP_ADMIN_KEY", ADMIN)
            .env("DEPLOYD_TEST_REPLICA", n.to_string());
        cmd
    };
    let http = reqwest::Client::new();
    // The first replica alone takes the deployment; the second starts while it is mid-rollout.
    let (mut first, _) = spawn_with(replica(1)).await;
    let id = setup(&http, &first).await;
    wait_for(&http, &first, &id, |v| v["summary"]["succeeded"].as_u64().unwrap_or(0) >= 1).await;
    let (second, _) = spawn_with(replica(2)).await;
    let mid = wait_for(&http, &second, &id, |_| true).await;
    assert!(!terminal(&mid), "still mid-rollout when the holder dies: {mid}");
    first.child.kill().await.unwrap(); // SIGKILL: its lease lapses and the other replica takes over
    check_finished(&http, &second, &id).await;
    drop(second);
}

/// Issue 16: a single deployd restarted after kill -9 waited out its own previous lease (each process had a new owner
/// name). Its name is now kept in the data directory (guarded by a lock), so the restart takes its work over at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_deployd_takes_over_its_own_work_at_once() {
    let dir = temp_dir("sigkill-own-lease");
    let http = reqwest::Client::new();
    let command = || {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_deployd"));
        cmd.args(["serve", "--dev", "--listen", "127.0.0.1:0", "--lease", "60s", "--poll-interval", "50ms"])
            .arg("--data-dir")
            .arg(&*dir)
            .env("DEPLOYD_BOOTSTRAP_ADMIN_KEY", ADMIN);
        cmd
    };
    let (mut first, _) = spawn_with(command()).await;
    let id = setup(&http, &first).await;
    let mid = wait_for(&http, &first, &id, |v| v["summary"]["succeeded"].as_u64().unwrap_or(0) >= 1).await;
    assert!(!terminal(&mid), "killed mid-rollout: {mid}");
    first.child.kill().await.unwrap(); // SIGKILL: the 60 s lease stays in the store
    let restarted_at = std::time::Instant::now();
    let (second, _) = spawn_with(command()).await;
    check_finished(&http, &second, &id).await;
    let took = restarted_at.elapsed();
    assert!(took < Duration::from_secs(30), "finished {took:?} after the restart: it did not wait out its old lease");
    drop(second);
}

/// Pauses `id` and waits until it is paused; returns how many targets had been changed by then.
async fn pause_and_hold(http: &reqwest::Client, d: &Deployd, id: &str) -> u64 {
    call(http, reqwest::Method::POST, format!("{}/v1/deployments/{id}/pause", d.base), None).await;
    let paused = wait_for(http, d, id, |v| v["status"] == "paused").await;
    paused["summary"]["succeeded"].as_u64().unwrap()
}

/// After a takeover, the deployment stays paused on the new holder: nothing more is applied until resumed.
async fn still_paused_then_resume(http: &reqwest::Client, d: &Deployd, id: &str, changed: u64) {
    tokio::time::sleep(Duration::from_secs(3)).await;
    let v = call(http, reqwest::Method::GET, format!("{}/v1/deployments/{id}", d.base), None).await;
    assert_eq!(v["status"], "paused", "{v}");
    assert_eq!(v["summary"]["succeeded"].as_u64().unwrap(), changed, "nothing applied while paused: {v}");
    assert_eq!(v["summary"]["in_progress"], 0, "{v}");
    let events =
        call(http, reqwest::Method::GET, format!("{}/v1/deployments/{id}/events?limit=500", d.base), None).await;
    let taken = events["items"].as_array().unwrap().iter().any(|e| {
        e["message"].as_str().unwrap_or_default().contains("still paused") && e["type"] == "deployment.paused"
    });
    assert!(taken, "the takeover is an event and the deployment stays paused: {events}");
    call(http, reqwest::Method::POST, format!("{}/v1/deployments/{id}/resume", d.base), None).await;
    check_finished(http, d, id).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_deployment_survives_a_sigkill_of_deployd_and_resumes_after_the_restart() {
    let dir = temp_dir("sigkill-paused");
    let http = reqwest::Client::new();
    let mut first = spawn(&dir).await;
    let id = setup(&http, &first).await;
    let changed = pause_and_hold(&http, &first, &id).await;
    assert!(changed < 4, "paused mid-rollout");
    first.child.kill().await.unwrap(); // SIGKILL while paused
    let second = spawn(&dir).await;
    still_paused_then_resume(&http, &second, &id, changed).await;
    drop(second);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_postgresql_a_paused_deployment_stays_paused_through_a_replica_takeover() {
    let Some(url) = pg::postgres_url("on_postgresql_a_paused_deployment_stays_paused_through_a_replica_takeover").await
    else {
        return;
    };
    let dir = temp_dir("pg-paused");
    let replica = |n: u32| {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_deployd"));
        cmd.args(["serve", "--dev", "--listen", "127.0.0.1:0", "--lease", "1s", "--poll-interval", "50ms"])
            .arg("--data-dir")
            .arg(dir.path())
            .args(["--database-url", &url])
            .env("DEPLOYD_BOOTSTRAP_ADMIN_KEY", ADMIN)
            .env("DEPLOYD_TEST_REPLICA", n.to_string());
        cmd
    };
    let http = reqwest::Client::new();
    let (mut first, _) = spawn_with(replica(1)).await;
    let id = setup(&http, &first).await;
    let changed = pause_and_hold(&http, &first, &id).await;
    let (second, _) = spawn_with(replica(2)).await;
    first.child.kill().await.unwrap(); // SIGKILL: the paused deployment's lease lapses; replica 2 takes it over
    still_paused_then_resume(&http, &second, &id, changed).await;
    drop(second);
}
