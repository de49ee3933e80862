//! `deployd` as a process: killed with SIGKILL mid-rollout and restarted on the same data directory, it finishes the
//! deployment; SIGTERM drains and exits cleanly, leaving the work resumable.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt as _, BufReader};
use tokio::process::{Child, Command};

const ADMIN: &str = "dk_restartrestartrestartrestartrestartrestart0";

struct Deployd {
    child: Child,
    base: String,
}

async fn spawn(data_dir: &Path) -> Deployd {
    let mut child = Command::new(env!("CARGO_BIN_EXE_deployd"))
        .args(["serve", "--dev", "--listen", "127.0.0.1:0", "--lease", "1s", "--poll-interval", "50ms"])
        .arg("--data-dir")
        .arg(data_dir)
        .env("DEPLOYD_BOOTSTRAP_ADMIN_KEY", ADMIN)
        .env("DEPLOYD_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .expect("deployd starts");
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let base = tokio::time::timeout(Duration::from_secs(30), async {
        while let Some(line) = lines.next_line().await.unwrap() {
            if let Some(rest) = line.split_once("listening on ").map(|(_, r)| r) {
                return rest.split_whitespace().next().unwrap().to_owned();
            }
        }
        panic!("deployd exited before listening");
    })
    .await
    .expect("deployd listens within 30 s");
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    Deployd { child, base }
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

fn temp_dir(tag: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("deployd-{tag}-{}", uuid::Uuid::now_v7().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
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
    std::fs::remove_dir_all(&dir).unwrap();
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
    std::fs::remove_dir_all(&dir).unwrap();
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
    std::fs::remove_dir_all(&parent).unwrap();
}
