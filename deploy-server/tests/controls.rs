//! Operator controls over HTTP: pause, resume, promote, abort and retry as 202 sub-resources of a deployment; their
//! events on the API and on webhooks, their audit entries, their problems; who may call them, what they make the
//! host do, and what they record.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::time::Duration;

use common::receiver::{Mode, Receiver};
use common::{ADMIN, Answer, Server, deploy};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

async fn post_empty(s: &Server, path: &str, key: &str) -> Answer {
    s.call(Method::POST, path, Some(key), None, &[]).await
}

async fn event_types(s: &Server, id: &str) -> Vec<String> {
    let a = s.get(&format!("/v1/deployments/{id}/events?limit=500"), ADMIN).await;
    a.body["items"].as_array().unwrap().iter().map(|e| e["type"].as_str().unwrap().to_owned()).collect()
}

fn applied(s: &Value) -> u64 {
    s["summary"]["succeeded"].as_u64().unwrap() + s["summary"]["in_progress"].as_u64().unwrap()
}

#[tokio::test]
async fn a_gated_canary_pauses_until_promoted_and_every_decision_is_an_event_a_webhook_and_an_audit_entry() {
    // Webhook retries 150 ms apart, as in the webhook tests, so a delivery that races the server's start is soon again.
    let s = Server::with(deploy_server::Settings {
        webhook_retry_schedule: vec!["150ms"; 40].join(","),
        ..common::settings("controls-canary")
    })
    .await;
    let receiver = Receiver::answering(Mode::Status(204)).await;
    let sub = s
        .post(
            "/v1/webhooks",
            ADMIN,
            json!({"url": receiver.url(), "events": ["deployment.*"], "environments": ["prod"]}),
        )
        .await;
    receiver.set_secret(sub.body["secret"].as_str().unwrap());
    s.sim_env("prod", 4, "queue", json!({"apply_ms": 20})).await;
    let ops = s.key("ops", "deployer", &["prod"]).await;
    let mut body = deploy("prod", "2.0");
    body["strategy"] = json!({"type": "canary", "steps": [
        {"percent": 25, "verify_for": "0s", "pause": "until_promoted"},
        {"percent": 100, "verify_for": "0s"},
    ]});
    let a = s.post("/v1/deployments", &ops, body).await;
    assert_eq!(a.status, StatusCode::ACCEPTED, "{:?}", a.body);
    assert_eq!(a.body["spec"]["strategy"]["steps"][0]["pause"], "until_promoted", "the gate is part of the spec");
    let id = a.body["id"].as_str().unwrap().to_owned();
    let paused = s.wait_until(&id, |d| d["status"] == "paused").await;
    assert_eq!(paused["awaiting_promotion"], 1);
    assert!(paused["paused_at"].is_string());
    tokio::time::sleep(Duration::from_millis(500)).await;
    let still = s.get(&format!("/v1/deployments/{id}"), ADMIN).await.body;
    assert_eq!((still["status"].as_str(), applied(&still)), (Some("paused"), 1), "one target until promoted");

    let promoted = post_empty(&s, &format!("/v1/deployments/{id}/promote"), &ops).await;
    assert_eq!(promoted.status, StatusCode::ACCEPTED, "{:?}", promoted.body);
    assert_eq!(promoted.body["controls"]["promoted_through"], 1);
    let done = s.wait_terminal(&id).await;
    assert_eq!(done["status"], "succeeded", "{done:#}");
    let types = event_types(&s, &id).await;
    for t in ["deployment.paused", "deployment.promoted", "deployment.resumed"] {
        assert!(types.iter().any(|x| x == t), "{t} in {types:?}");
    }
    // Promoting a finished deployment is refused; so is one that is not a canary.
    post_empty(&s, &format!("/v1/deployments/{id}/promote"), &ops).await.problem(409, "already-finished");

    // The webhook receiver got the decisions too, signed, with the deployment.
    let wanted = ["deployment.paused", "deployment.promoted", "deployment.resumed", "deployment.succeeded"];
    for _ in 0..600 {
        let got: Vec<String> =
            receiver.log().iter().filter_map(|r| r.event.as_ref().map(|e| e.event_type.to_string())).collect();
        if wanted.iter().all(|t| got.iter().any(|g| g == t)) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let got: Vec<String> =
        receiver.log().iter().filter_map(|r| r.event.as_ref().map(|e| e.event_type.to_string())).collect();
    for t in wanted {
        assert!(got.iter().any(|g| g == t), "{t} delivered: {got:?}");
    }

    // The audit log names the actor, the action and the environment.
    let audit = s.get("/v1/audit?actor=key:ops", ADMIN).await;
    let promote = audit.body["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["action"] == "deployment.promote" && e["outcome"] == "success")
        .expect("the promotion is audited");
    assert_eq!(promote["environment"], "prod");
    assert_eq!(promote["resource"], format!("deployments/{id}"));
}

#[tokio::test]
async fn pause_holds_resume_goes_on_and_abort_rolls_back_over_http() {
    let s = Server::start("controls-pause").await;
    s.sim_env("prod", 4, "queue", json!({"apply_ms": 150})).await;
    let mut body = deploy("prod", "2.0");
    body["strategy"] = json!({"type": "rolling", "batch_size": 1});
    let id = s.post("/v1/deployments", ADMIN, body.clone()).await.body["id"].as_str().unwrap().to_owned();
    let asked = post_empty(&s, &format!("/v1/deployments/{id}/pause"), ADMIN).await;
    assert_eq!(asked.status, StatusCode::ACCEPTED, "{:?}", asked.body);
    assert_eq!(asked.body["controls"]["pause_requested"], true);
    assert!(asked.header("etag").is_some());
    let paused = s.wait_until(&id, |d| d["status"] == "paused").await;
    let held = applied(&paused);
    tokio::time::sleep(Duration::from_millis(800)).await;
    let still = s.get(&format!("/v1/deployments/{id}"), ADMIN).await.body;
    assert_eq!(still["status"], "paused");
    assert_eq!(applied(&still), held, "nothing is applied while paused");
    // Idempotent: pausing again is another 202 and changes nothing.
    assert_eq!(post_empty(&s, &format!("/v1/deployments/{id}/pause"), ADMIN).await.status, StatusCode::ACCEPTED);
    let resumed = post_empty(&s, &format!("/v1/deployments/{id}/resume"), ADMIN).await;
    assert_eq!(resumed.status, StatusCode::ACCEPTED);
    assert_eq!(s.wait_terminal(&id).await["status"], "succeeded");

    // Abort with rollback overrides a failure policy that says "fail".
    body["version"] = json!("3.0");
    body["failure"] = json!({"on_failure": "fail"});
    let id = s.post("/v1/deployments", ADMIN, body).await.body["id"].as_str().unwrap().to_owned();
    post_empty(&s, &format!("/v1/deployments/{id}/pause"), ADMIN).await;
    s.wait_until(&id, |d| d["status"] == "paused").await;
    let abort = s.post(&format!("/v1/deployments/{id}/abort"), ADMIN, json!({"rollback": true})).await;
    assert_eq!(abort.status, StatusCode::ACCEPTED, "{:?}", abort.body);
    let done = s.wait_terminal(&id).await;
    assert_eq!(done["status"], "rolled_back", "{done:#}");
    let env = s.get("/v1/environments/prod", ADMIN).await;
    for t in env.body["targets"].as_array().unwrap() {
        assert_eq!(t["actual"]["version"], "2.0", "every target is back on 2.0: {t}");
    }
    let types = event_types(&s, &id).await;
    assert!(types.iter().filter(|t| *t == "deployment.requested").count() >= 2, "{types:?}");
}

#[tokio::test]
async fn retry_deploys_only_the_failed_targets_again() {
    let s = Server::start("controls-retry").await;
    let mut targets: Vec<Value> = (1..=3)
        .map(|i| json!({"id": format!("prod-{i}"), "executor": "sim", "config": {"initial_version": "1.0", "apply_ms": 5}}))
        .collect();
    targets[1]["config"]["fail_versions"] = json!(["2.0"]);
    assert!(s.put("/v1/environments/prod", ADMIN, json!({"targets": targets})).await.status.is_success());
    let mut body = deploy("prod", "2.0");
    body["failure"] = json!({"max_failed": 1, "on_failure": "fail"});
    let id = s.post("/v1/deployments", ADMIN, body).await.body["id"].as_str().unwrap().to_owned();
    let first = s.wait_terminal(&id).await;
    assert_eq!(first["status"], "degraded", "{first:#}");

    targets[1]["config"]["fail_versions"] = json!([]);
    assert!(s.put("/v1/environments/prod", ADMIN, json!({"targets": targets})).await.status.is_success());
    let headers = [("idempotency-key", "retry-once")];
    let r = s.call(Method::POST, &format!("/v1/deployments/{id}/retry"), Some(ADMIN), None, &headers).await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{:?}", r.body);
    assert_eq!(r.body["retry_of"], id.as_str());
    let ids: Vec<&str> = r.body["targets"].as_array().unwrap().iter().map(|t| t["id"].as_str().unwrap()).collect();
    assert_eq!(ids, ["prod-2"], "only the failed target");
    let again = s.call(Method::POST, &format!("/v1/deployments/{id}/retry"), Some(ADMIN), None, &headers).await;
    assert_eq!(again.body["id"], r.body["id"], "one key, one retry");
    assert_eq!(again.header("idempotent-replayed"), Some("true"));
    let done = s.wait_terminal(r.body["id"].as_str().unwrap()).await;
    assert_eq!(done["status"], "succeeded", "{done:#}");
    let path = format!("/v1/deployments/{}/retry", r.body["id"].as_str().unwrap());
    post_empty(&s, &path, ADMIN).await.problem(409, "not-now");
}

#[tokio::test]
async fn operator_calls_answer_who_may_call_what_they_do_and_what_they_record() {
    let s = Server::start("controls-security").await;
    // Slow enough that every refused call below is answered before the first target is done.
    s.sim_env("prod", 2, "queue", json!({"apply_ms": 1500})).await;
    s.sim_env("staging", 2, "queue", json!({"apply_ms": 5})).await;
    let viewer = s.key("viewer", "viewer", &["*"]).await;
    let staging = s.key("staging-ops", "deployer", &["staging"]).await;
    let mut body = deploy("prod", "2.0");
    body["strategy"] = json!({"type": "rolling", "batch_size": 1});
    body["config"] = json!({"log_level": "debug"});
    let id = s.post("/v1/deployments", ADMIN, body).await.body["id"].as_str().unwrap().to_owned();

    // Who: a viewer, and a deployer of another environment, are refused every action, and nothing is recorded.
    for action in ["pause", "resume", "promote", "abort", "retry"] {
        for key in [&viewer, &staging] {
            post_empty(&s, &format!("/v1/deployments/{id}/{action}"), key).await.problem(403, "forbidden");
        }
    }
    let d = s.get(&format!("/v1/deployments/{id}"), ADMIN).await.body;
    assert!(d.get("controls").is_none(), "a refused request records nothing: {d:#}");

    // Bad input is a problem naming the field, before anything happens.
    let bad = s.post(&format!("/v1/deployments/{id}/promote"), ADMIN, json!({"ful": true})).await;
    bad.problem(400, "validation");
    assert_eq!(bad.body["errors"][0]["field"], "ful");
    s.post(&format!("/v1/deployments/{id}/abort"), ADMIN, json!({"rollback": "yes"})).await.problem(400, "validation");
    let text = s
        .call(
            Method::POST,
            &format!("/v1/deployments/{id}/abort"),
            Some(ADMIN),
            None,
            &[("content-type", "text/plain"), ("content-length", "2")],
        )
        .await;
    assert!(text.status == StatusCode::UNSUPPORTED_MEDIA_TYPE || text.status == StatusCode::BAD_REQUEST, "{text:?}");
    post_empty(&s, &format!("/v1/deployments/{id}/promote"), ADMIN).await.problem(409, "not-now");
    post_empty(&s, "/v1/deployments/not-an-id/pause", ADMIN).await.problem(400, "validation");
    let unknown = uuid::Uuid::now_v7();
    post_empty(&s, &format!("/v1/deployments/{unknown}/pause"), ADMIN).await.problem(404, "not-found");
    let d = s.get(&format!("/v1/deployments/{id}"), ADMIN).await.body;
    assert!(d.get("controls").is_none(), "refused input records nothing: {d:#}");

    // What it does: an abort without rollback stops the rollout; targets after the safe point are never touched.
    let abort = s.post(&format!("/v1/deployments/{id}/abort"), ADMIN, json!({"rollback": false})).await;
    assert_eq!(abort.status, StatusCode::ACCEPTED, "{:?}", abort.body);
    let done = s.wait_terminal(&id).await;
    assert_eq!(done["status"], "cancelled", "an abort without rollback is a deliberate stop: {done:#}");
    assert!(done["summary"]["cancelled"].as_u64().unwrap() >= 1, "later targets never ran: {done:#}");

    // What it records: the request event names the actor and nothing of the spec; the audit entry has no body.
    let events = s.get(&format!("/v1/deployments/{id}/events?limit=500"), ADMIN).await.body;
    let text = events.to_string();
    assert!(!text.contains(ADMIN) && !text.contains(&viewer) && !text.contains("log_level"), "{text}");
    let asked: Vec<&Value> =
        events["items"].as_array().unwrap().iter().filter(|e| e["type"] == "deployment.requested").collect();
    assert_eq!(asked.len(), 1, "only the accepted request is an event: {asked:?}");
    assert!(asked[0]["message"].as_str().unwrap().contains("abort requested by key:bootstrap-admin"), "{asked:?}");
    let audit = s.get("/v1/audit?limit=100", ADMIN).await.body.to_string();
    assert!(!audit.contains("\"rollback\"") && !audit.contains(ADMIN) && !audit.contains(&staging), "{audit}");
    assert!(audit.contains("deployment.abort"), "{audit}");
}

#[tokio::test]
async fn a_protected_environment_waits_for_two_approvers_over_http_and_every_decision_is_audited() {
    let s = Server::with(deploy_server::Settings {
        webhook_retry_schedule: vec!["150ms"; 40].join(","),
        ..common::settings("controls-approvals")
    })
    .await;
    s.sim_env("prod", 2, "queue", json!({"apply_ms": 5})).await;
    let receiver = Receiver::answering(Mode::Status(204)).await;
    let sub = s
        .post(
            "/v1/webhooks",
            ADMIN,
            json!({"url": receiver.url(), "events": ["deployment.*"], "environments": ["prod"]}),
        )
        .await;
    receiver.set_secret(sub.body["secret"].as_str().unwrap());
    // Only an admin may protect an environment; the rule is checked.
    let env = s.get("/v1/environments/prod", ADMIN).await.body;
    let targets: Vec<Value> = env["targets"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| json!({"id": t["id"], "executor": "sim", "config": t["config"]}))
        .collect();
    let deployer = s.key("ci", "deployer", &["prod"]).await;
    let alice = s.key("alice", "approver", &["prod"]).await;
    let bob = s.key("bob", "approver", &["prod"]).await;
    let elsewhere = s.key("eve", "approver", &["staging"]).await;
    let rule = json!({"required_approvals": 2, "approvers": ["key:alice", "key:bob", "key:ci"], "expires_after": "1h"});
    s.put("/v1/environments/prod", &deployer, json!({"targets": targets, "protection": rule}))
        .await
        .problem(403, "forbidden");
    let bad = s
        .put(
            "/v1/environments/prod",
            ADMIN,
            json!({"targets": targets, "protection": {"required_approvals": 0, "approvers": ["bob"]}}),
        )
        .await;
    bad.problem(400, "validation");
    let fields: Vec<&str> =
        bad.body["errors"].as_array().unwrap().iter().map(|e| e["field"].as_str().unwrap()).collect();
    assert!(
        fields.contains(&"protection.required_approvals") && fields.contains(&"protection.approvers[0]"),
        "{fields:?}"
    );
    let put = s.put("/v1/environments/prod", ADMIN, json!({"targets": targets, "protection": rule})).await;
    assert!(put.status.is_success(), "{:?}", put.body);
    assert_eq!(put.body["protection"]["required_approvals"], 2);

    let a = s.post("/v1/deployments", &deployer, deploy("prod", "2.0")).await;
    assert_eq!(a.status, StatusCode::ACCEPTED);
    assert_eq!(a.body["status"], "awaiting_approval");
    let id = a.body["id"].as_str().unwrap().to_owned();
    let path = format!("/v1/deployments/{id}/approvals");
    // Who: a deployer (even a named one) lacks the approve permission; an approver of another environment too.
    s.post(&path, &deployer, json!({"decision": "approve"})).await.problem(403, "forbidden");
    s.post(&path, &elsewhere, json!({"decision": "approve"})).await.problem(403, "forbidden");
    s.post(&path, &alice, json!({"decision": "maybe"})).await.problem(400, "validation");
    s.post(&path, &alice, json!({"decision": "approve", "note": "x"})).await.problem(400, "validation");
    let secret = s.post(&path, &alice, json!({"decision": "approve", "comment": "AKIAIOSFODNN7EXAMPLE"})).await;
    secret.problem(422, "hardcoded-secret");
    let one = s.post(&path, &alice, json!({"decision": "approve", "comment": "change CHG-42"})).await;
    assert_eq!(one.status, StatusCode::ACCEPTED, "{:?}", one.body);
    assert_eq!(one.body["status"], "awaiting_approval");
    assert_eq!(one.body["approvals"][0]["by"], "key:alice");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let metrics_text = reqwest::get(s.url("/metrics")).await.unwrap().text().await.unwrap();
    assert!(metrics_text.contains("deploy_deployments_awaiting_approval 1"), "{metrics_text}");
    let waiting = s.get(&format!("/v1/deployments/{id}"), ADMIN).await.body;
    assert_eq!(
        (waiting["status"].as_str(), waiting["summary"]["succeeded"].as_u64()),
        (Some("awaiting_approval"), Some(0))
    );
    let two = s.post(&path, &bob, json!({"decision": "approve"})).await;
    assert_eq!(two.body["status"], "queued", "{:?}", two.body);
    let done = s.wait_terminal(&id).await;
    assert_eq!(done["status"], "succeeded", "{done:#}");

    let types = event_types(&s, &id).await;
    assert_eq!(types[0], "deployment.awaiting_approval");
    assert_eq!(types.iter().filter(|t| *t == "deployment.approved").count(), 2, "{types:?}");
    let history = s.get("/v1/environments/prod/history", ADMIN).await.body;
    assert_eq!(history["items"][0]["approved_by"], json!(["key:alice", "key:bob"]));

    // Rejection ends the next one; the audit log has every decision with its actor, and no comment or secret.
    let b = s.post("/v1/deployments", &deployer, deploy("prod", "3.0")).await.body["id"].as_str().unwrap().to_owned();
    let no = s
        .post(&format!("/v1/deployments/{b}/approvals"), &bob, json!({"decision": "reject", "comment": "freeze"}))
        .await;
    assert_eq!(no.body["status"], "rejected", "{:?}", no.body);
    let audit = s.get("/v1/audit?limit=100", ADMIN).await.body;
    let decisions: Vec<(String, String, String)> = audit["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["action"] == "deployment.approve" || e["action"] == "deployment.reject")
        .map(|e| {
            (
                e["actor"].as_str().unwrap().into(),
                e["action"].as_str().unwrap().into(),
                e["outcome"].as_str().unwrap().into(),
            )
        })
        .collect();
    assert!(decisions.contains(&("key:alice".into(), "deployment.approve".into(), "success".into())), "{decisions:?}");
    assert!(decisions.contains(&("key:bob".into(), "deployment.reject".into(), "success".into())), "{decisions:?}");
    assert!(decisions.contains(&("key:ci".into(), "deployment.approve".into(), "forbidden".into())), "{decisions:?}");
    let text = audit.to_string();
    assert!(!text.contains("AKIAIOSFODNN7EXAMPLE") && !text.contains("CHG-42"), "the audit log keeps no body: {text}");
    let events = s.get(&format!("/v1/deployments/{id}/events?limit=100"), ADMIN).await.body.to_string();
    assert!(!events.contains("AKIAIOSFODNN7EXAMPLE"), "a refused comment is recorded nowhere");

    // Every decision reached the webhook receiver, signed.
    let wanted = ["deployment.awaiting_approval", "deployment.approved", "deployment.rejected"];
    let mut got: Vec<String> = Vec::new();
    for _ in 0..600 {
        got = receiver.log().iter().filter_map(|r| r.event.as_ref().map(|e| e.event_type.clone())).collect();
        if wanted.iter().all(|t| got.iter().any(|g| g == t)) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for t in wanted {
        assert!(got.iter().any(|g| g == t), "{t} delivered: {got:?}");
    }
    assert!(receiver.log().iter().all(|r| !r.body.contains("AKIAIOSFODNN7EXAMPLE")));
}

#[tokio::test]
async fn a_global_freeze_and_an_environment_freeze_hold_starts_and_an_admin_overrides_with_a_reason() {
    let s = Server::start("controls-freeze").await;
    s.sim_env("prod", 2, "queue", json!({"apply_ms": 5})).await;
    let scoped_admin = s.key("prod-admin", "admin", &["prod"]).await;
    let deployer = s.key("ci", "deployer", &["prod"]).await;
    assert_eq!(s.get("/v1/freeze", &deployer).await.body, json!({"frozen": false}));

    // Who: only an admin of every environment freezes; a reason is required; the end must be in the future.
    s.put("/v1/freeze", &scoped_admin, json!({"reason": "incident"})).await.problem(403, "forbidden");
    s.put("/v1/freeze", ADMIN, json!({"reason": ""})).await.problem(400, "validation");
    s.put("/v1/freeze", ADMIN, json!({"reason": "x", "until": "2001-01-01T00:00:00Z"}))
        .await
        .problem(400, "validation");
    s.put("/v1/freeze", ADMIN, json!({"reason": "x", "untill": "2001"})).await.problem(400, "validation");
    // Which secret: a reason is shown to every reader, so one shaped like a secret is refused, and recorded nowhere.
    s.put("/v1/freeze", ADMIN, json!({"reason": "AKIAIOSFODNN7EXAMPLE"})).await.problem(422, "hardcoded-secret");
    let frozen = s.put("/v1/freeze", ADMIN, json!({"reason": "INC-9 failover"})).await;
    assert_eq!(frozen.status, StatusCode::OK, "{:?}", frozen.body);
    assert_eq!(
        (frozen.body["frozen"].as_bool(), frozen.body["by"].as_str()),
        (Some(true), Some("key:bootstrap-admin"))
    );

    let id = s.post("/v1/deployments", &deployer, deploy("prod", "2.0")).await.body["id"].as_str().unwrap().to_owned();
    let held = s.wait_until(&id, |d| d["held_until"].is_string()).await;
    assert_eq!(held["status"], "queued");
    assert!(held["status_reason"].as_str().unwrap().contains("INC-9 failover"), "{held:#}");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(s.get(&format!("/v1/deployments/{id}"), ADMIN).await.body["summary"]["succeeded"], 0);

    // Override: admins of the environment only, with a reason.
    let path = format!("/v1/deployments/{id}/override");
    let refused = s.post(&path, &deployer, json!({"reason": "hotfix"})).await;
    refused.problem(403, "forbidden");
    let detail = refused.body["detail"].as_str().unwrap();
    assert!(detail.contains("may not override windows and freezes"), "said as what was asked: {detail}");
    s.post(&path, &scoped_admin, json!({})).await.problem(400, "validation");
    s.post(&path, &scoped_admin, json!({"reason": "AKIAIOSFODNN7EXAMPLE"})).await.problem(422, "hardcoded-secret");
    let o = s.post(&path, &scoped_admin, json!({"reason": "hotfix for INC-9"})).await;
    assert_eq!(o.status, StatusCode::ACCEPTED, "{:?}", o.body);
    assert_eq!(s.wait_terminal(&id).await["status"], "succeeded");
    let types = event_types(&s, &id).await;
    assert!(types.contains(&"environment.frozen".to_owned()) && types.contains(&"deployment.overridden".to_owned()));
    assert_eq!(s.call(Method::DELETE, "/v1/freeze", Some(ADMIN), None, &[]).await.status, StatusCode::NO_CONTENT);
    assert_eq!(s.get("/v1/freeze", ADMIN).await.body["frozen"], false);

    // An environment's own freeze, as a schedule: refused when malformed, held when in force.
    let env = s.get("/v1/environments/prod", ADMIN).await.body;
    let targets: Vec<Value> = env["targets"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| json!({"id": t["id"], "executor": "sim", "config": t["config"]}))
        .collect();
    let bad = json!({"freezes": [{"cron": "not cron", "duration": "1h", "timezone": "Mars/Base"}]});
    let refused = s.put("/v1/environments/prod", ADMIN, json!({"targets": targets, "schedule": bad})).await;
    refused.problem(400, "validation");
    let always =
        json!({"freezes": [{"cron": "0 0 * * *", "duration": "24h", "timezone": "UTC", "reason": "quarter close"}]});
    s.put("/v1/environments/prod", &scoped_admin, json!({"targets": targets, "schedule": always})).await;
    let next =
        s.post("/v1/deployments", &deployer, deploy("prod", "3.0")).await.body["id"].as_str().unwrap().to_owned();
    let held = s.wait_until(&next, |d| d["held_until"].is_string()).await;
    assert!(held["status_reason"].as_str().unwrap().contains("in a freeze (quarter close)"), "{held:#}");

    let audit = s.get("/v1/audit?limit=100", ADMIN).await.body;
    let actions: Vec<(&str, &str)> = audit["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| (e["action"].as_str().unwrap(), e["outcome"].as_str().unwrap()))
        .collect();
    for expected in [
        ("freeze.put", "success"),
        ("freeze.put", "forbidden"),
        ("freeze.delete", "success"),
        ("deployment.override", "success"),
        ("deployment.override", "validation"),
    ] {
        assert!(actions.contains(&expected), "{expected:?} in {actions:?}");
    }
    assert!(!audit.to_string().contains("hotfix for INC-9"), "the audit log keeps no body");
    let everything = format!("{audit}{}", s.get(&format!("/v1/deployments/{id}/events?limit=100"), ADMIN).await.body);
    assert!(!everything.contains("AKIAIOSFODNN7EXAMPLE"), "a refused reason is recorded nowhere");
    assert!(!s.get("/v1/freeze", ADMIN).await.body.to_string().contains("AKIA"));
}

/// Finding of the governance trial: `key:alice` and a JWT with `sub=alice` counted as two approvers, and `key:carol`
/// submitted while `jwt:carol` approved under `prevent_self_approval`. A key's owner and a token's subject (or
/// configured identity claim) name one person; approvals compare persons, not credentials.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_credentials_of_one_person_are_one_approver_and_one_submitter() {
    use jsonwebtoken::{EncodingKey, Header, encode};
    let secret = "an HS256 secret that is long enough to be used";
    let mut settings = common::settings("controls-identity");
    settings.jwt_hs256_secret = Some(secret.into());
    let s = Server::with(settings).await;
    let targets = json!([{"id": "p-1", "executor": "sim", "config": {"initial_version": "1.0", "apply_ms": 1}}]);
    let rule = json!({"targets": targets, "protection": {"required_approvals": 2}});
    assert_eq!(s.put("/v1/environments/prod", ADMIN, rule).await.status, StatusCode::CREATED);
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let jwt = |sub: &str, role: &str| {
        let claims = json!({"sub": sub, "role": role, "environments": ["prod"], "exp": now + 300});
        encode(&Header::default(), &claims, &EncodingKey::from_secret(secret.as_bytes())).unwrap()
    };
    let alice_key = owned_key(&s, "alice", "approver").await;
    let carol_key = owned_key(&s, "carol", "deployer").await;
    let bob_key = owned_key(&s, "bob", "approver").await;
    let bad = s.post("/v1/api-keys", ADMIN, json!({"name": "x", "role": "viewer", "owner": "a\u{1b}b"})).await;
    bad.problem(400, "validation");
    let token = json!({"name": "y", "role": "viewer", "owner": "ghp_0123456789abcdefghijABCDEFGHIJ012345"});
    let shaped = s.post("/v1/api-keys", ADMIN, token).await;
    shaped.problem(422, "hardcoded-secret");
    assert!(!shaped.body.to_string().contains("ghp_0123"), "never echoed");

    let id = s.post("/v1/deployments", &carol_key, deploy("prod", "2.0")).await.body["id"].as_str().unwrap().to_owned();
    let approve = json!({"decision": "approve", "comment": "ok"});
    let path = format!("/v1/deployments/{id}/approvals");
    // Carol's token is carol: she submitted it with her key and may not approve it with her token.
    let refused = s.post(&path, &jwt("carol", "approver"), approve.clone()).await;
    refused.problem(403, "forbidden");
    assert!(refused.body["detail"].as_str().unwrap().contains("self-approval"), "{:?}", refused.body);
    // Alice approves with her key, then with her token: one approver, still waiting for a second.
    assert!(s.post(&path, &alice_key, approve.clone()).await.status.is_success());
    let again = s.post(&path, &jwt("alice", "approver"), approve.clone()).await;
    assert!(again.status.is_success(), "the same decision again changes nothing: {:?}", again.body);
    let d = s.get(&format!("/v1/deployments/{id}"), ADMIN).await.body;
    assert_eq!(d["status"], "awaiting_approval", "one person is one approver: {d:#}");
    assert_eq!(d["approvals"].as_array().unwrap().len(), 1, "{d:#}");
    assert!(s.post(&path, &bob_key, approve).await.status.is_success());
    assert_eq!(s.wait_terminal(&id).await["status"], "succeeded", "two people approved");

    // Finding: refused calls answered `not-now` were audited without their environment, so `?environment=` missed them.
    post_empty(&s, &format!("/v1/deployments/{id}/promote"), ADMIN).await.problem(409, "already-finished");
    let audit = s.get("/v1/audit?environment=prod&limit=100", ADMIN).await.body;
    let refused: Vec<&Value> =
        audit["items"].as_array().unwrap().iter().filter(|e| e["action"] == "deployment.promote").collect();
    assert_eq!(refused.len(), 1, "the refusal is found by its environment: {audit:#}");
    assert_eq!(refused[0]["outcome"], "already-finished");
}

/// A key of prod named and owned by `person`.
async fn owned_key(s: &Server, person: &str, role: &str) -> String {
    let body = json!({"name": person, "role": role, "environments": ["prod"], "owner": person});
    let a = s.post("/v1/api-keys", ADMIN, body).await;
    assert_eq!(a.status, StatusCode::CREATED, "{:?}", a.body);
    assert_eq!(a.body["owner"], person);
    a.body["key"].as_str().unwrap().to_owned()
}
