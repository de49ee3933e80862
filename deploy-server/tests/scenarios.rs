//! The seed's edge cases, driven through HTTP with the `sim` executor.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::time::Duration;

use common::{ADMIN, Server, deploy};
use futures::StreamExt as _;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

fn id(a: &common::Answer) -> String {
    a.body["id"].as_str().unwrap_or_else(|| panic!("no id in {:?}", a.body)).to_owned()
}

fn time_of(v: &Value) -> time::OffsetDateTime {
    time::OffsetDateTime::parse(v.as_str().unwrap(), &time::format_description::well_known::Rfc3339).unwrap()
}

async fn actual_versions(s: &Server, env: &str) -> Vec<String> {
    let e = s.get(&format!("/v1/environments/{env}"), ADMIN).await;
    e.body["targets"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["actual"]["version"].as_str().unwrap_or("-").to_owned())
        .collect()
}

#[tokio::test]
async fn concurrent_identical_submissions_create_one_deployment() {
    let s = Server::start("dup").await;
    s.sim_env("prod", 3, "queue", json!({})).await;
    let mut tasks = Vec::new();
    for i in 0..16 {
        let http = s.http.clone();
        let url = s.url("/v1/deployments");
        tasks.push(tokio::spawn(async move {
            // Retry on 409 in-flight as a client would, until the answer is the deployment.
            for _ in 0..100 {
                let r = http
                    .post(&url)
                    .bearer_auth(ADMIN)
                    .header("idempotency-key", "deploy-7")
                    .json(&deploy("prod", "2.0"))
                    .send()
                    .await
                    .unwrap();
                if r.status() == StatusCode::CONFLICT {
                    tokio::time::sleep(Duration::from_millis(10 + i)).await;
                    continue;
                }
                assert_eq!(r.status(), StatusCode::ACCEPTED);
                let body: Value = r.json().await.unwrap();
                return body["id"].as_str().unwrap().to_owned();
            }
            panic!("never answered");
        }));
    }
    let ids: std::collections::BTreeSet<String> =
        futures::future::join_all(tasks).await.into_iter().map(Result::unwrap).collect();
    assert_eq!(ids.len(), 1, "every caller got the same deployment");
    assert_eq!(s.get("/v1/deployments", ADMIN).await.body["items"].as_array().unwrap().len(), 1);
    assert_eq!(s.wait_terminal(ids.first().unwrap()).await["status"], "succeeded");
}

#[tokio::test]
async fn racing_deployments_under_each_concurrency_policy() {
    let s = Server::start("race").await;
    let slow = json!({"apply_ms": 150});
    // queue: both accepted, run one after the other.
    s.sim_env("q", 2, "queue", slow.clone()).await;
    let (a, b) = tokio::join!(
        s.post("/v1/deployments", ADMIN, deploy("q", "2.0")),
        s.post("/v1/deployments", ADMIN, deploy("q", "3.0"))
    );
    assert_eq!((a.status, b.status), (StatusCode::ACCEPTED, StatusCode::ACCEPTED));
    let (da, db) = (s.wait_terminal(&id(&a)).await, s.wait_terminal(&id(&b)).await);
    assert_eq!((da["status"].as_str(), db["status"].as_str()), (Some("succeeded"), Some("succeeded")));
    let (first, second) = if time_of(&da["started_at"]) < time_of(&db["started_at"]) { (&da, &db) } else { (&db, &da) };
    assert!(time_of(&second["started_at"]) >= time_of(&first["finished_at"]), "never two at once: {first} {second}");
    assert_eq!(actual_versions(&s, "q").await, vec![second["version"].as_str().unwrap(); 2], "the later one wins");

    // reject: the second gets 409 environment-busy while the first is queued or running.
    s.sim_env("r", 2, "reject", slow.clone()).await;
    let (a, b) = tokio::join!(
        s.post("/v1/deployments", ADMIN, deploy("r", "2.0")),
        s.post("/v1/deployments", ADMIN, deploy("r", "3.0"))
    );
    let mut statuses = [a.status, b.status];
    statuses.sort();
    assert_eq!(statuses, [StatusCode::ACCEPTED, StatusCode::CONFLICT]);
    let refused = if a.status == StatusCode::CONFLICT { &a } else { &b };
    refused.problem(409, "environment-busy");
    let won = if a.status == StatusCode::ACCEPTED { &a } else { &b };
    s.wait_terminal(&id(won)).await;
    let after = s.post("/v1/deployments", ADMIN, deploy("r", "4.0")).await;
    assert_eq!(after.status, StatusCode::ACCEPTED, "accepted again once the environment is idle");
    s.wait_terminal(&id(&after)).await;

    // supersede: the newer one replaces the older one.
    s.sim_env("s", 4, "supersede", slow).await;
    let mut first = deploy("s", "2.0");
    first["strategy"] = json!({"type": "rolling", "batch_size": 1});
    let a = s.post("/v1/deployments", ADMIN, first).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let b = s.post("/v1/deployments", ADMIN, deploy("s", "3.0")).await;
    let (da, db) = (s.wait_terminal(&id(&a)).await, s.wait_terminal(&id(&b)).await);
    assert_eq!(da["status"], "superseded", "{da}");
    assert_eq!(da["superseded_by"], id(&b).as_str());
    assert_eq!(db["status"], "succeeded");
    assert_eq!(actual_versions(&s, "s").await, vec!["3.0"; 4]);
}

#[tokio::test]
async fn two_callers_with_the_same_if_match_one_wins() {
    let s = Server::start("ifmatch-race").await;
    s.sim_env("prod", 1, "queue", json!({})).await;
    let tag = s.get("/v1/environments/prod", ADMIN).await.header("etag").unwrap().to_owned();
    let h = [("if-match", tag.as_str())];
    let (a, b) = tokio::join!(
        s.call(Method::POST, "/v1/deployments", Some(ADMIN), Some(deploy("prod", "2.0")), &h),
        s.call(Method::POST, "/v1/deployments", Some(ADMIN), Some(deploy("prod", "3.0")), &h)
    );
    let mut statuses = [a.status.as_u16(), b.status.as_u16()];
    statuses.sort_unstable();
    assert_eq!(statuses, [202, 412]);
}

#[tokio::test]
async fn partial_success_is_degraded_with_every_targets_state() {
    let s = Server::start("partial").await;
    let targets: Vec<Value> = (1..=4)
        .map(|i| {
            let fail: Vec<&str> = if i == 3 { vec!["2.0"] } else { vec![] };
            json!({"id": format!("web-{i}"), "executor": "sim",
                   "config": {"initial_version": "1.0", "apply_ms": 1, "fail_versions": fail}})
        })
        .collect();
    s.put("/v1/environments/prod", ADMIN, json!({"targets": targets})).await;
    let mut body = deploy("prod", "2.0");
    body["failure"] = json!({"max_failed": "1", "on_failure": "rollback"});
    let d = s.wait_terminal(&id(&s.post("/v1/deployments", ADMIN, body).await)).await;
    assert_eq!(d["status"], "degraded", "{d}");
    assert!(d["status_reason"].as_str().unwrap().contains("1 of 4"), "{d}");
    assert_eq!(d["summary"]["succeeded"], 3);
    assert_eq!(d["summary"]["failed"], 1);
    let failed = d["targets"].as_array().unwrap().iter().find(|t| t["status"] == "failed").unwrap();
    assert_eq!(failed["id"], "web-3");
    assert!(failed["error"].as_str().unwrap().contains("fails to install"), "{failed}");
    assert_eq!(actual_versions(&s, "prod").await, vec!["2.0", "2.0", "1.0", "2.0"]);
}

#[tokio::test]
async fn a_version_that_never_becomes_healthy_is_rolled_back() {
    let s = Server::start("rollback").await;
    s.sim_env("prod", 4, "queue", json!({"unhealthy_versions": ["3.0"]})).await;
    let mut body = deploy("prod", "3.0");
    body["verify"] = json!({"timeout": "300ms", "interval": "20ms", "healthy_for": "0s"});
    let d = s.wait_terminal(&id(&s.post("/v1/deployments", ADMIN, body).await)).await;
    assert_eq!(d["status"], "rolled_back", "{d}");
    // Targets the rollout reached were returned to 1.0; the others were never touched (nor observed).
    let touched: Vec<&str> = d["targets"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|t| t["status"] == "rolled_back")
        .map(|t| t["id"].as_str().unwrap())
        .collect();
    assert!(!touched.is_empty(), "{d}");
    assert!(
        d["targets"]
            .as_array()
            .unwrap()
            .iter()
            .all(|t| ["rolled_back", "cancelled", "pending"].contains(&t["status"].as_str().unwrap())),
        "{d}"
    );
    let versions = actual_versions(&s, "prod").await;
    assert!(versions.iter().all(|v| v == "1.0" || v == "-"), "{versions:?}");
    assert_eq!(versions.iter().filter(|v| *v == "1.0").count(), touched.len());
    let events = s.get(&format!("/v1/deployments/{}/events?limit=500", d["id"].as_str().unwrap()), ADMIN).await;
    let types: Vec<&str> =
        events.body["items"].as_array().unwrap().iter().map(|e| e["type"].as_str().unwrap()).collect();
    assert!(types.contains(&"deployment.rolling_back") && types.last() == Some(&"deployment.rolled_back"), "{types:?}");
}

#[tokio::test]
async fn unreachable_targets_follow_the_policy() {
    let s = Server::start("unreachable").await;
    let targets: Vec<Value> = (1..=3)
        .map(|i| {
            let gone: Vec<&str> = if i == 2 { vec!["2.0"] } else { vec![] };
            json!({"id": format!("edge-{i}"), "executor": "sim",
                   "config": {"initial_version": "1.0", "apply_ms": 1, "unreachable_versions": gone}})
        })
        .collect();
    s.put("/v1/environments/edge", ADMIN, json!({"targets": targets})).await;
    let mut cont = deploy("edge", "2.0");
    cont["on_unreachable"] = json!({"wait": "200ms", "then": "continue"});
    cont["strategy"] = json!({"type": "all_at_once"});
    let d = s.wait_terminal(&id(&s.post("/v1/deployments", ADMIN, cont).await)).await;
    assert_eq!(d["status"], "degraded", "continue leaves the others done: {d}");
    assert_eq!(d["summary"]["unreachable"], 1);
    let t = d["targets"].as_array().unwrap().iter().find(|t| t["id"] == "edge-2").unwrap();
    assert_eq!(t["status"], "unreachable");

    let mut fail = deploy("edge", "2.0");
    fail["on_unreachable"] = json!({"wait": "200ms", "then": "fail"});
    fail["failure"] = json!({"max_failed": "0", "on_failure": "fail"});
    let d = s.wait_terminal(&id(&s.post("/v1/deployments", ADMIN, fail).await)).await;
    assert_eq!(d["status"], "failed", "{d}");
}

#[tokio::test]
async fn a_redeploy_of_what_runs_is_a_no_op() {
    let s = Server::start("noop").await;
    s.sim_env("prod", 3, "queue", json!({})).await;
    let first = s.wait_terminal(&id(&s.post("/v1/deployments", ADMIN, deploy("prod", "2.0")).await)).await;
    assert_eq!(first["summary"]["succeeded"], 3);
    let again = s.wait_terminal(&id(&s.post("/v1/deployments", ADMIN, deploy("prod", "2.0")).await)).await;
    assert_eq!(again["status"], "succeeded");
    assert_eq!(again["summary"]["skipped"], 3, "nothing to do: {again}");
    assert!(
        again["targets"].as_array().unwrap().iter().all(|t| t["attempts"] == 0),
        "no executor call changed anything"
    );
}

/// Reads SSE frames until `stop` returns true or the stream ends; returns (id, event, data) triples.
async fn read_sse(
    resp: reqwest::Response,
    mut stop: impl FnMut(&[(u64, String, Value)]) -> bool,
) -> (Vec<(u64, String, Value)>, bool) {
    let mut out = Vec::new();
    let mut buf = String::new();
    let mut body = resp.bytes_stream();
    while let Some(chunk) = body.next().await {
        buf.push_str(&String::from_utf8_lossy(&chunk.unwrap()));
        while let Some(end) = buf.find("\n\n") {
            let frame: String = buf.drain(..end + 2).collect();
            let (mut id, mut event, mut data) = (None, None, None);
            for line in frame.lines() {
                if let Some(v) = line.strip_prefix("id: ").or_else(|| line.strip_prefix("id:")) {
                    id = v.trim().parse().ok();
                }
                if let Some(v) = line.strip_prefix("event: ").or_else(|| line.strip_prefix("event:")) {
                    event = Some(v.trim().to_owned());
                }
                if let Some(v) = line.strip_prefix("data: ").or_else(|| line.strip_prefix("data:")) {
                    data = serde_json::from_str(v).ok();
                }
            }
            if let (Some(id), Some(event), Some(data)) = (id, event, data) {
                out.push((id, event, data));
                if stop(&out) {
                    return (out, false);
                }
            }
        }
    }
    (out, true)
}

#[tokio::test]
async fn sse_streams_resume_after_last_event_id_without_loss_or_repeats() {
    let s = Server::start("sse").await;
    s.sim_env("prod", 4, "queue", json!({"apply_ms": 100})).await;
    let mut body = deploy("prod", "2.0");
    body["strategy"] = json!({"type": "rolling", "batch_size": 1});
    let d = id(&s.post("/v1/deployments", ADMIN, body).await);
    let path = s.url(&format!("/v1/deployments/{d}/events"));
    let first = s.http.get(&path).bearer_auth(ADMIN).header("accept", "text/event-stream").send().await.unwrap();
    assert_eq!(first.status(), StatusCode::OK);
    assert!(first.headers()["content-type"].to_str().unwrap().starts_with("text/event-stream"));
    let (part, ended) = read_sse(first, |seen| seen.len() >= 3).await;
    assert!(!ended);
    let last = part.last().unwrap().0;
    // Reconnect as an EventSource does, with Last-Event-ID.
    let second = s
        .http
        .get(&path)
        .bearer_auth(ADMIN)
        .header("accept", "text/event-stream")
        .header("last-event-id", last.to_string())
        .send()
        .await
        .unwrap();
    let (rest, ended) = read_sse(second, |_| false).await;
    assert!(ended, "the stream closes after the terminal event");
    let all: Vec<u64> = part.iter().chain(&rest).map(|e| e.0).collect();
    let expected: Vec<u64> = (1..=all.len() as u64).collect();
    assert_eq!(all, expected, "every event once, in order");
    let (_, event, data) = rest.last().unwrap();
    assert_eq!(event, "deployment.succeeded");
    assert_eq!(data["type"], "deployment.succeeded");
    assert_eq!(data["deployment_id"], d.as_str());
    let json_events = s.get(&format!("/v1/deployments/{d}/events?limit=500"), ADMIN).await;
    assert_eq!(json_events.body["items"].as_array().unwrap().len(), all.len(), "the stream and the list agree");

    // `after` works like Last-Event-ID, and a finished deployment streams its history and closes.
    let replay = s
        .http
        .get(format!("{path}?after=2"))
        .bearer_auth(ADMIN)
        .header("accept", "text/event-stream")
        .send()
        .await
        .unwrap();
    let (again, ended) = read_sse(replay, |_| false).await;
    assert!(ended);
    assert_eq!(again.first().unwrap().0, 3);
    let bad = s
        .http
        .get(&path)
        .bearer_auth(ADMIN)
        .header("accept", "text/event-stream")
        .header("last-event-id", "x")
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn imperative_steps_run_in_order_and_unknown_steps_fail() {
    let s = Server::start("imperative").await;
    s.sim_env("prod", 2, "queue", json!({})).await;
    let mut body = deploy("prod", "2.0");
    body["mode"] = json!("imperative");
    body["steps"] = json!([{"action": "stop"}, {"action": "fetch"}, {"action": "start"}]);
    let d = s.wait_terminal(&id(&s.post("/v1/deployments", ADMIN, body).await)).await;
    assert_eq!(d["status"], "succeeded", "{d}");
    assert_eq!(actual_versions(&s, "prod").await, vec!["2.0"; 2]);
    let mut bad = deploy("prod", "3.0");
    bad["mode"] = json!("imperative");
    bad["steps"] = json!([{"action": "reboot"}]);
    bad["failure"] = json!({"max_failed": "0", "on_failure": "fail"});
    let d = s.wait_terminal(&id(&s.post("/v1/deployments", ADMIN, bad).await)).await;
    assert_eq!(d["status"], "failed", "{d}");
    assert!(d["targets"][0]["error"].as_str().unwrap().contains("reboot"));
}
