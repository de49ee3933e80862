//! Issue 16, finding 3: SQLite never recovered from a full disk without a restart. A `deployd` process whose largest
//! file size is capped (`prlimit`: the kernel answers its writes past the cap as a full disk would) refuses writes with
//! a typed 503, keeps serving reads, and once the cap is lifted serves writes again, without a restart.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::time::Duration;

use common::{ADMIN, temp_dir};
use serde_json::{Value, json};
use tokio::process::Command;

fn environment(targets: usize) -> Value {
    let targets: Vec<Value> = (0..targets)
        .map(|i| {
            json!({"id": format!("t-{i:05}"), "executor": "sim", "labels": {"padding": "x".repeat(200)},
                         "config": {"initial_version": "1.0", "apply_ms": 1}})
        })
        .collect();
    json!({"targets": targets})
}

fn largest_file(dir: &std::path::Path) -> u64 {
    std::fs::read_dir(dir).unwrap().flatten().filter_map(|e| e.metadata().ok()).map(|m| m.len()).max().unwrap_or(0)
}

/// Sets the soft limit only (the hard one stays unlimited, so it can be raised again without privileges).
async fn prlimit(pid: u32, fsize: &str) -> bool {
    Command::new("prlimit")
        .args(["--pid", &pid.to_string(), &format!("--fsize={fsize}:")])
        .status()
        .await
        .is_ok_and(|s| s.success())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_recovers_from_a_full_disk_without_a_restart() {
    if std::process::Command::new("prlimit").arg("--version").output().is_err() {
        println!("skipped: no prlimit on this machine (util-linux)");
        return;
    }
    let dir = temp_dir("disk-full");
    // SIGXFSZ ignored, as deployd under a real full disk gets no signal: a write past the cap fails instead.
    let mut cmd = Command::new("sh");
    cmd.args(["-c", "trap '' XFSZ; exec \"$0\" \"$@\"", env!("CARGO_BIN_EXE_deployd")])
        .args(["serve", "--dev", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(&*dir)
        .env("DEPLOYD_BOOTSTRAP_ADMIN_KEY", ADMIN)
        .env("DEPLOYD_LOG", "warn");
    let (mut child, base) = common::binary::listening(cmd).await;
    let pid = child.id().unwrap();
    let http = reqwest::Client::new();
    let put = |body: Value| http.put(format!("{base}/v1/environments/prod")).bearer_auth(ADMIN).json(&body).send();
    assert!(put(environment(2)).await.unwrap().status().is_success());

    // The disk fills: no file may grow past its size now (plus a little).
    let cap = largest_file(&dir) + 8192;
    assert!(prlimit(pid, &cap.to_string()).await, "prlimit works on the child");
    let full = put(environment(3000)).await.unwrap();
    assert_eq!(full.status().as_u16(), 503, "a write that cannot be stored is refused");
    assert!(full.headers().get("retry-after").is_some());
    let problem: Value = full.json().await.unwrap();
    assert_eq!(problem["type"], "/problems/store-unavailable", "{problem}");
    let read = http.get(format!("{base}/v1/environments/prod")).bearer_auth(ADMIN).send().await.unwrap();
    assert_eq!(read.status().as_u16(), 200, "reads are still served");
    let read: Value = read.json().await.unwrap();
    assert_eq!(read["targets"].as_array().unwrap().len(), 2, "nothing half-written");
    // Finding of the chaos rerun: /readyz answered 200 while the store could not be written.
    let ready = http.get(format!("{base}/readyz")).send().await.unwrap();
    assert_eq!(ready.status().as_u16(), 503, "not ready while writes cannot be stored");

    // Space is freed: writes work again, on every pooled connection, without a restart.
    assert!(prlimit(pid, "unlimited").await);
    let mut statuses = Vec::new();
    for _ in 0..12 {
        statuses.push(put(environment(4)).await.unwrap().status().as_u16());
    }
    assert!(statuses.iter().all(|s| *s == 200), "every write after the disk has room: {statuses:?}");
    let ready = http.get(format!("{base}/readyz")).send().await.unwrap();
    assert_eq!(ready.status().as_u16(), 200, "ready again");
    let client = deploy_client::Client::builder(&base).token(ADMIN).build().unwrap();
    let request: deploy_core::DeploymentRequest = serde_json::from_value(json!({
        "environment": "prod", "service": "s", "version": "2.0",
        "verify": {"timeout": "3s", "interval": "20ms", "healthy_for": "0s"}}))
    .unwrap();
    let submitted = client.submit(&request, deploy_client::SubmitOptions::default()).await.unwrap();
    let done = client.wait(submitted.deployment.id(), Duration::from_secs(10)).await.unwrap();
    assert_eq!(done.status(), deploy_core::DeploymentStatus::Succeeded, "the controller works again too");
    let _ = child.start_kill();
}
