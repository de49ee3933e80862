//! Every endpoint of `design/api.md` and every error code, over real TCP on loopback with a real HTTP client.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::{ADMIN, Server, deploy};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

#[tokio::test]
async fn operations_endpoints_need_no_credentials() {
    let s = Server::start("ops").await;
    let health = s.call(Method::GET, "/healthz", None, None, &[]).await;
    assert_eq!(health.status, StatusCode::OK);
    let ready = s.call(Method::GET, "/readyz", None, None, &[]).await;
    assert_eq!(ready.status, StatusCode::OK);
    assert_eq!(ready.body["status"], "ready");

    s.sim_env("prod", 2, "queue", json!({})).await;
    let d = s.post("/v1/deployments", ADMIN, deploy("prod", "2.0")).await;
    s.wait_terminal(d.body["id"].as_str().unwrap()).await;
    let text = s.http.get(s.url("/metrics")).send().await.unwrap();
    assert_eq!(text.status(), StatusCode::OK);
    assert!(text.headers()["content-type"].to_str().unwrap().starts_with("text/plain"));
    let text = text.text().await.unwrap();
    assert!(
        text.contains("deploy_http_requests_total{method=\"POST\",route=\"/v1/deployments\",status=\"202\"} 1"),
        "{text}"
    );
    assert!(text.contains("deploy_deployments_queued 0"), "{text}");
    assert!(text.contains("deploy_deployments_active 0"), "{text}");
    assert!(text.contains("deploy_target_outcomes_total{status=\"succeeded\"} 2"), "{text}");
    assert!(text.contains("deploy_deployments_finished_total{status=\"succeeded\"} 1"), "{text}");
    assert!(
        text.contains("deploy_http_request_duration_seconds_bucket{route=\"/v1/deployments\",le=\"+Inf\"}"),
        "{text}"
    );

    let problem = s.call(Method::GET, "/problems/environment-busy", None, None, &[]).await;
    assert_eq!(problem.status, StatusCode::OK);
    assert_eq!(problem.body["status"], 409);
    assert!(problem.body["description"].as_str().unwrap().contains("reject"));
    s.call(Method::GET, "/problems/no-such-thing", None, None, &[]).await.problem(404, "not-found");
    s.call(Method::GET, "/nowhere", None, None, &[]).await.problem(404, "not-found");
}

#[tokio::test]
async fn every_response_carries_a_request_id_and_echoes_the_callers() {
    let s = Server::start("reqid").await;
    let made = s.call(Method::GET, "/healthz", None, None, &[]).await;
    assert!(made.header("x-request-id").is_some_and(|v| v.len() >= 32));
    let echoed = s.call(Method::GET, "/v1/environments", None, None, &[("x-request-id", "trace-abc-123")]).await;
    echoed.problem(401, "unauthenticated");
    assert_eq!(echoed.header("x-request-id"), Some("trace-abc-123"));
}

#[tokio::test]
async fn authentication_failures_say_why_in_www_authenticate() {
    let s = Server::start("authn").await;
    let none = s.call(Method::GET, "/v1/environments", None, None, &[]).await;
    none.problem(401, "unauthenticated");
    assert_eq!(none.header("www-authenticate"), Some("Bearer realm=\"deploy\""));
    for bad in ["dk_short", "dk_unknownunknownunknownunknownunknownunknown", "not-a-jwt"] {
        let a = s.get("/v1/environments", bad).await;
        a.problem(401, "unauthenticated");
        assert_eq!(a.header("www-authenticate"), Some("Bearer realm=\"deploy\", error=\"invalid_token\""), "{bad}");
    }
    let basic =
        s.call(Method::GET, "/v1/environments", None, None, &[("authorization", "Basic YWxhZGRpbjpvcGVu")]).await;
    basic.problem(401, "unauthenticated");
}

#[tokio::test]
async fn environments_put_get_list_with_etags() {
    let s = Server::start("envs").await;
    let created = s.sim_env("staging", 3, "reject", json!({})).await;
    assert_eq!(created.status, StatusCode::CREATED);
    assert_eq!(created.header("etag"), Some("\"1\""));
    assert_eq!(created.body["revision"], 1);
    assert_eq!(created.header("location"), Some("/v1/environments/staging"));

    let got = s.get("/v1/environments/staging", ADMIN).await;
    assert_eq!(got.status, StatusCode::OK);
    assert_eq!(got.header("etag"), Some("\"1\""));
    assert_eq!(got.body["name"], "staging");
    assert_eq!(got.body["concurrency"], "reject");
    assert_eq!(got.body["require_if_match"], false);
    assert_eq!(got.body["active_deployment"], Value::Null);
    assert_eq!(got.body["queued"], json!([]));
    assert_eq!(got.body["targets"].as_array().unwrap().len(), 3);
    assert_eq!(got.body["targets"][0]["desired"], Value::Null);

    let cached =
        s.call(Method::GET, "/v1/environments/staging", Some(ADMIN), None, &[("if-none-match", "\"1\"")]).await;
    assert_eq!(cached.status, StatusCode::NOT_MODIFIED);

    let replaced = s
        .call(
            Method::PUT,
            "/v1/environments/staging",
            Some(ADMIN),
            Some(json!({"targets": []})),
            &[("if-match", "\"1\"")],
        )
        .await;
    assert_eq!(replaced.status, StatusCode::OK);
    assert_eq!(replaced.header("etag"), Some("\"2\""));
    let stale = s
        .call(
            Method::PUT,
            "/v1/environments/staging",
            Some(ADMIN),
            Some(json!({"targets": []})),
            &[("if-match", "\"1\"")],
        )
        .await;
    stale.problem(412, "precondition-failed");

    s.sim_env("prod", 1, "queue", json!({})).await;
    let list = s.get("/v1/environments", ADMIN).await;
    let names: Vec<&str> = list.body["items"].as_array().unwrap().iter().map(|e| e["name"].as_str().unwrap()).collect();
    assert_eq!(names.len(), 2);
    assert!(names.contains(&"prod") && names.contains(&"staging"));
    assert_eq!(list.body["next_cursor"], Value::Null);

    let page = s.get("/v1/environments?limit=1", ADMIN).await;
    assert_eq!(page.body["items"].as_array().unwrap().len(), 1);
    let cursor = page.body["next_cursor"].as_str().unwrap().to_owned();
    let rest = s.get(&format!("/v1/environments?limit=1&cursor={cursor}"), ADMIN).await;
    assert_eq!(rest.body["items"].as_array().unwrap().len(), 1);
    assert_ne!(rest.body["items"][0]["name"], page.body["items"][0]["name"]);

    s.get("/v1/environments/nope", ADMIN).await.problem(404, "not-found");
    s.get("/v1/environments/Not_Valid!", ADMIN).await.problem(400, "validation");
    s.get("/v1/environments?limit=0", ADMIN).await.problem(400, "validation");
    let dup = s
        .put(
            "/v1/environments/bad",
            ADMIN,
            json!({"targets": [
            {"id": "a", "executor": "sim"}, {"id": "a", "executor": "sim"}]}),
        )
        .await;
    dup.problem(400, "validation");
    assert_eq!(dup.body["errors"][0]["field"], "targets[1].id");
    let unknown_executor =
        s.put("/v1/environments/bad", ADMIN, json!({"targets": [{"id": "a", "executor": "k8s"}]})).await;
    unknown_executor.problem(400, "validation");
    let unknown_field = s.put("/v1/environments/bad", ADMIN, json!({"targets": [], "colour": "blue"})).await;
    unknown_field.problem(400, "validation");
    assert_eq!(unknown_field.body["errors"][0]["field"], "colour");
}

#[tokio::test]
async fn a_submission_with_an_unknown_field_is_refused_with_its_path() {
    let s = Server::start("unknown-fields").await;
    s.sim_env("prod", 2, "queue", json!({})).await;
    let mut body = deploy("prod", "2.0.1");
    body["strategy"] = json!({"type": "rolling", "batch_size": 1, "pauze": "10s"});
    let refused = s.post("/v1/deployments", ADMIN, body).await;
    refused.problem(400, "validation");
    assert_eq!(refused.body["errors"][0]["field"], "strategy.pauze", "{}", refused.body);
    assert!(refused.body["errors"][0]["message"].as_str().unwrap().contains("unknown field `pauze`"));
    let mut top = deploy("prod", "2.0.1");
    top["colour"] = json!("blue");
    let refused = s.post("/v1/deployments", ADMIN, top).await;
    assert_eq!(refused.body["errors"][0]["field"], "colour", "{}", refused.body);
    // Nothing was accepted.
    let listed = s.get("/v1/deployments?environment=prod", ADMIN).await;
    assert_eq!(listed.body["items"].as_array().map(Vec::len), Some(0), "{}", listed.body);
}

#[tokio::test]
async fn submit_get_list_and_events() {
    let s = Server::with(deploy_server::Settings {
        global_secret_scope: "env://DEPLOYD_TEST_UNUSED".into(),
        ..common::settings("deploy")
    })
    .await;
    s.sim_env("prod", 4, "queue", json!({})).await;
    let mut body = deploy("prod", "2.0.1");
    body["strategy"] = json!({"type": "rolling", "batch_size": "50%", "pause": "0s"});
    body["labels"] = json!({"ticket": "OPS-123"});
    body["secrets"] = json!({"DB_PASSWORD": {"ref": "env://DEPLOYD_TEST_UNUSED"}});
    let a = s.post("/v1/deployments", ADMIN, body).await;
    assert_eq!(a.status, StatusCode::ACCEPTED, "{:?}", a.body);
    let id = a.body["id"].as_str().unwrap().to_owned();
    assert_eq!(a.header("location"), Some(format!("/v1/deployments/{id}").as_str()));
    assert_eq!(a.header("retry-after"), Some("1"));
    assert!(a.header("etag").is_some());
    assert_eq!(a.body["status"], "queued");
    assert_eq!(a.body["created_by"], "key:bootstrap-admin");
    assert_eq!(a.body["summary"]["total"], 4);
    assert_eq!(a.body["spec"]["secrets"]["DB_PASSWORD"]["ref"], "env://DEPLOYD_TEST_UNUSED");

    let done = s.wait_terminal(&id).await;
    // The secret reference cannot be resolved: every target fails with a clear error and nothing is "succeeded".
    assert!(done["status"] == "failed" || done["status"] == "rolled_back", "{done}");
    let error = done["targets"].as_array().unwrap().iter().find_map(|t| t["error"].as_str()).unwrap_or_default();
    assert!(error.contains("DEPLOYD_TEST_UNUSED"), "{done}");

    let ok = s.post("/v1/deployments", ADMIN, deploy("prod", "2.0.2")).await;
    let ok_id = ok.body["id"].as_str().unwrap().to_owned();
    let finished = s.wait_terminal(&ok_id).await;
    assert_eq!(finished["status"], "succeeded");
    for key in [
        "id",
        "environment",
        "service",
        "version",
        "status",
        "status_reason",
        "spec",
        "created_by",
        "created_at",
        "started_at",
        "finished_at",
        "targets",
        "summary",
        "rollback_of",
        "superseded_by",
        "revision",
    ] {
        assert!(finished.get(key).is_some(), "deployment lacks {key}: {finished}");
    }
    for key in ["id", "from_version", "to_version", "status", "attempts", "error", "updated_at"] {
        assert!(finished["targets"][0].get(key).is_some(), "target lacks {key}");
    }
    assert_eq!(finished["summary"]["succeeded"], 4);
    let got = s.get(&format!("/v1/deployments/{ok_id}"), ADMIN).await;
    let tag = got.header("etag").unwrap().to_owned();
    let cached =
        s.call(Method::GET, &format!("/v1/deployments/{ok_id}"), Some(ADMIN), None, &[("if-none-match", &tag)]).await;
    assert_eq!(cached.status, StatusCode::NOT_MODIFIED);

    let list = s.get("/v1/deployments?environment=prod", ADMIN).await;
    let ids: Vec<&str> = list.body["items"].as_array().unwrap().iter().map(|d| d["id"].as_str().unwrap()).collect();
    assert_eq!(ids, vec![ok_id.as_str(), id.as_str()], "newest first");
    let failed = s.get(&format!("/v1/deployments?status={}", done["status"].as_str().unwrap()), ADMIN).await;
    let failed_ids: Vec<&str> =
        failed.body["items"].as_array().unwrap().iter().map(|d| d["id"].as_str().unwrap()).collect();
    assert_eq!(failed_ids, vec![id.as_str()], "filtered by status");
    let by_service = s.get("/v1/deployments?service=other", ADMIN).await;
    assert_eq!(by_service.body["items"], json!([]));
    let page = s.get("/v1/deployments?limit=1", ADMIN).await;
    let next = page.body["next_cursor"].as_str().unwrap().to_owned();
    let second = s.get(&format!("/v1/deployments?limit=1&cursor={next}"), ADMIN).await;
    assert_eq!(second.body["items"][0]["id"], id.as_str());
    s.get("/v1/deployments?status=sleeping", ADMIN).await.problem(400, "validation");
    s.get("/v1/deployments?limit=501", ADMIN).await.problem(400, "validation");

    let events = s.get(&format!("/v1/deployments/{ok_id}/events"), ADMIN).await;
    let items = events.body["items"].as_array().unwrap();
    assert_eq!(items[0]["type"], "deployment.queued");
    assert_eq!(items[0]["seq"], 1);
    assert_eq!(items.last().unwrap()["type"], "deployment.succeeded");
    assert_eq!(events.body["next_after"], items.last().unwrap()["seq"]);
    for key in ["seq", "at", "type", "deployment_id", "target_id", "status", "message"] {
        assert!(items[0].get(key).is_some(), "event lacks {key}");
    }
    let after = s.get(&format!("/v1/deployments/{ok_id}/events?after=2&limit=2"), ADMIN).await;
    let seqs: Vec<u64> = after.body["items"].as_array().unwrap().iter().map(|e| e["seq"].as_u64().unwrap()).collect();
    assert_eq!(seqs, vec![3, 4]);
    assert_eq!(after.body["next_after"], 4);

    let unknown = uuid::Uuid::now_v7();
    s.get(&format!("/v1/deployments/{unknown}"), ADMIN).await.problem(404, "not-found");
    s.get("/v1/deployments/not-an-id", ADMIN).await.problem(400, "validation");
    s.get(&format!("/v1/deployments/{unknown}/events"), ADMIN).await.problem(404, "not-found");
}

#[tokio::test]
async fn bodies_are_checked_before_anything_happens() {
    let s = Server::start("bodies").await;
    s.sim_env("prod", 1, "queue", json!({})).await;
    let malformed = s
        .http
        .post(s.url("/v1/deployments"))
        .bearer_auth(ADMIN)
        .header("content-type", "application/json")
        .body("{\"environment\": ")
        .send()
        .await
        .unwrap();
    assert_eq!(malformed.status(), StatusCode::BAD_REQUEST);
    assert_eq!(malformed.headers()["content-type"], "application/problem+json");

    let text = s.http.post(s.url("/v1/deployments")).bearer_auth(ADMIN).body("environment=prod").send().await.unwrap();
    assert_eq!(text.status(), StatusCode::UNSUPPORTED_MEDIA_TYPE);
    let body: Value = text.json().await.unwrap();
    assert_eq!(body["type"], "/problems/unsupported-media-type");

    let huge = format!(
        "{{\"environment\": \"prod\", \"service\": \"a\", \"version\": \"1\", \"labels\": {{\"x\": \"{}\"}}}}",
        "a".repeat(1_100_000)
    );
    let big = s
        .http
        .post(s.url("/v1/deployments"))
        .bearer_auth(ADMIN)
        .header("content-type", "application/json")
        .body(huge)
        .send()
        .await
        .unwrap();
    assert_eq!(big.status(), StatusCode::PAYLOAD_TOO_LARGE);
    let body: Value = big.json().await.unwrap();
    assert_eq!(body["type"], "/problems/payload-too-large");

    let unknown = s
        .post("/v1/deployments", ADMIN, json!({"environment": "prod", "service": "a", "version": "1", "colour": 1}))
        .await;
    unknown.problem(400, "validation");
    assert_eq!(unknown.body["errors"][0]["field"], "colour");
    let missing = s.post("/v1/deployments", ADMIN, json!({"environment": "prod", "service": "a"})).await;
    missing.problem(400, "validation");
    assert_eq!(missing.body["errors"][0]["field"], "version");
    let invalid = s
        .post(
            "/v1/deployments",
            ADMIN,
            json!({"environment": "prod", "service": "a", "version": "1",
            "strategy": {"type": "rolling", "batch_size": "250%"}, "verify": {"timeout": "soon"}}),
        )
        .await;
    invalid.problem(400, "validation");
    let fields: Vec<&str> =
        invalid.body["errors"].as_array().unwrap().iter().map(|e| e["field"].as_str().unwrap()).collect();
    assert!(fields.contains(&"strategy.batch_size") && fields.contains(&"verify.timeout"), "{fields:?}");

    let secret = s
        .post(
            "/v1/deployments",
            ADMIN,
            json!({"environment": "prod", "service": "a", "version": "1",
            "secrets": {"DB_PASSWORD": "hunter2"}}),
        )
        .await;
    secret.problem(422, "hardcoded-secret");
    assert_eq!(secret.body["errors"][0]["field"], "secrets.DB_PASSWORD");
    assert!(!secret.body.to_string().contains("hunter2"), "the secret is not echoed back");
    let config_secret = s
        .post(
            "/v1/deployments",
            ADMIN,
            json!({"environment": "prod", "service": "a", "version": "1",
            "config": {"api_key": "abc123"}}),
        )
        .await;
    config_secret.problem(422, "hardcoded-secret");

    s.post("/v1/deployments", ADMIN, deploy("nowhere", "1.0")).await.problem(404, "not-found");
    let list = s.get("/v1/deployments", ADMIN).await;
    assert_eq!(list.body["items"], json!([]), "nothing was accepted");
}

#[tokio::test]
async fn idempotency_keys_replay_conflict_and_can_be_required() {
    let s = Server::start("idem").await;
    s.sim_env("prod", 2, "queue", json!({})).await;
    let headers = [("idempotency-key", "\"release-42\"")];
    let first = s.call(Method::POST, "/v1/deployments", Some(ADMIN), Some(deploy("prod", "2.0")), &headers).await;
    assert_eq!(first.status, StatusCode::ACCEPTED);
    assert_eq!(first.header("idempotent-replayed"), None);
    let again = s
        .call(
            Method::POST,
            "/v1/deployments",
            Some(ADMIN),
            Some(deploy("prod", "2.0")),
            &[("idempotency-key", "release-42")],
        )
        .await;
    assert_eq!(again.status, StatusCode::ACCEPTED);
    assert_eq!(again.header("idempotent-replayed"), Some("true"));
    assert_eq!(again.body["id"], first.body["id"]);
    let other = s.call(Method::POST, "/v1/deployments", Some(ADMIN), Some(deploy("prod", "3.0")), &headers).await;
    other.problem(422, "idempotency-key-reuse");
    let bad = s
        .call(Method::POST, "/v1/deployments", Some(ADMIN), Some(deploy("prod", "3.0")), &[("idempotency-key", "")])
        .await;
    bad.problem(400, "validation");
    let list = s.get("/v1/deployments", ADMIN).await;
    assert_eq!(list.body["items"].as_array().unwrap().len(), 1, "one deployment for one key");

    let mut settings = common::settings("idem-required");
    settings.require_idempotency_key = true;
    let strict = Server::with(settings).await;
    strict.sim_env("prod", 1, "queue", json!({})).await;
    strict.post("/v1/deployments", ADMIN, deploy("prod", "2.0")).await.problem(400, "idempotency-key-required");
    let keyed = strict.call(Method::POST, "/v1/deployments", Some(ADMIN), Some(deploy("prod", "2.0")), &headers).await;
    assert_eq!(keyed.status, StatusCode::ACCEPTED);
}

#[tokio::test]
async fn a_key_still_being_accepted_answers_409_in_flight() {
    // Many identical keyed submissions at once: each gets the deployment (202) or, while the first is still being
    // accepted, 409 idempotency-key-in-flight; exactly one deployment exists afterwards.
    let s = Server::start("inflight").await;
    s.sim_env("prod", 50, "queue", json!({})).await;
    let mut tasks = Vec::new();
    for _ in 0..24 {
        let http = s.http.clone();
        let url = s.url("/v1/deployments");
        tasks.push(tokio::spawn(async move {
            let r = http
                .post(url)
                .bearer_auth(ADMIN)
                .header("idempotency-key", "same-key")
                .json(&deploy("prod", "2.0"))
                .send()
                .await
                .unwrap();
            let status = r.status();
            let body: Value = r.json().await.unwrap();
            (status, body)
        }));
    }
    let mut ids = std::collections::BTreeSet::new();
    let mut in_flight = 0;
    for t in tasks {
        let (status, body) = t.await.unwrap();
        match status {
            StatusCode::ACCEPTED => {
                ids.insert(body["id"].as_str().unwrap().to_owned());
            }
            StatusCode::CONFLICT => {
                assert_eq!(body["type"], "/problems/idempotency-key-in-flight");
                in_flight += 1;
            }
            other => panic!("unexpected {other}: {body}"),
        }
    }
    assert_eq!(ids.len(), 1, "one deployment");
    let list = s.get("/v1/deployments", ADMIN).await;
    assert_eq!(list.body["items"].as_array().unwrap().len(), 1);
    eprintln!("{in_flight} of 24 concurrent requests were told the key was in flight");
}

#[tokio::test]
async fn if_match_on_submit_is_checked_against_the_environment_revision() {
    let s = Server::start("ifmatch").await;
    s.sim_env("prod", 1, "queue", json!({})).await;
    let env = s.get("/v1/environments/prod", ADMIN).await;
    let tag = env.header("etag").unwrap().to_owned();
    let ok =
        s.call(Method::POST, "/v1/deployments", Some(ADMIN), Some(deploy("prod", "2.0")), &[("if-match", &tag)]).await;
    assert_eq!(ok.status, StatusCode::ACCEPTED, "{:?}", ok.body);
    let stale =
        s.call(Method::POST, "/v1/deployments", Some(ADMIN), Some(deploy("prod", "3.0")), &[("if-match", &tag)]).await;
    stale.problem(412, "precondition-failed");
    let garbage = s
        .call(Method::POST, "/v1/deployments", Some(ADMIN), Some(deploy("prod", "3.0")), &[("if-match", "yesterday")])
        .await;
    garbage.problem(400, "validation");

    let strict = s
        .put(
            "/v1/environments/strict",
            ADMIN,
            json!({"require_if_match": true, "targets": [
            {"id": "s-1", "executor": "sim", "config": {"initial_version": "1.0", "apply_ms": 1}}]}),
        )
        .await;
    assert_eq!(strict.status, StatusCode::CREATED);
    s.post("/v1/deployments", ADMIN, deploy("strict", "2.0")).await.problem(428, "precondition-required");
    let with = s
        .call(Method::POST, "/v1/deployments", Some(ADMIN), Some(deploy("strict", "2.0")), &[("if-match", "\"1\"")])
        .await;
    assert_eq!(with.status, StatusCode::ACCEPTED);
}

#[tokio::test]
async fn cancel_and_rollback_endpoints() {
    let s = Server::start("cancel").await;
    s.sim_env("prod", 4, "queue", json!({"apply_ms": 300})).await;
    let mut slow = deploy("prod", "2.0");
    slow["strategy"] = json!({"type": "rolling", "batch_size": 1});
    let a = s.post("/v1/deployments", ADMIN, slow).await;
    let id = a.body["id"].as_str().unwrap().to_owned();
    let c = s.call(Method::POST, &format!("/v1/deployments/{id}/cancel"), Some(ADMIN), None, &[]).await;
    assert_eq!(c.status, StatusCode::ACCEPTED, "{:?}", c.body);
    let again = s.call(Method::POST, &format!("/v1/deployments/{id}/cancel"), Some(ADMIN), None, &[]).await;
    assert!(again.status == StatusCode::ACCEPTED || again.status == StatusCode::CONFLICT, "idempotent while running");
    let done = s.wait_terminal(&id).await;
    assert_eq!(done["status"], "cancelled");
    s.call(Method::POST, &format!("/v1/deployments/{id}/cancel"), Some(ADMIN), None, &[])
        .await
        .problem(409, "already-finished");

    let b = s.post("/v1/deployments", ADMIN, deploy("prod", "3.0")).await;
    let b_id = b.body["id"].as_str().unwrap().to_owned();
    let early = s.call(Method::POST, &format!("/v1/deployments/{b_id}/rollback"), Some(ADMIN), None, &[]).await;
    early.problem(400, "validation");
    assert_eq!(s.wait_terminal(&b_id).await["status"], "succeeded");
    let r = s.call(Method::POST, &format!("/v1/deployments/{b_id}/rollback"), Some(ADMIN), None, &[]).await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{:?}", r.body);
    assert_eq!(r.body["rollback_of"], b_id.as_str());
    assert!(r.header("location").is_some());
    let rolled = s.wait_terminal(r.body["id"].as_str().unwrap()).await;
    assert_eq!(rolled["status"], "succeeded");
    let env = s.get("/v1/environments/prod", ADMIN).await;
    for t in env.body["targets"].as_array().unwrap() {
        assert_ne!(t["actual"]["version"], "3.0", "every target left 3.0: {t}");
    }
    let unknown = uuid::Uuid::now_v7();
    s.call(Method::POST, &format!("/v1/deployments/{unknown}/cancel"), Some(ADMIN), None, &[])
        .await
        .problem(404, "not-found");
    s.call(Method::POST, &format!("/v1/deployments/{unknown}/rollback"), Some(ADMIN), None, &[])
        .await
        .problem(404, "not-found");
}

#[tokio::test]
async fn api_keys_are_shown_once_stored_hashed_and_revocable() {
    let s = Server::start("keys").await;
    let created = s
        .post("/v1/api-keys", ADMIN, json!({"name": "ci-bot", "role": "deployer", "environments": ["staging-*"]}))
        .await;
    assert_eq!(created.status, StatusCode::CREATED, "{:?}", created.body);
    let key = created.body["key"].as_str().unwrap().to_owned();
    assert!(deploy_server::is_well_formed_key(&key), "{key}");
    let id = created.body["id"].as_str().unwrap().to_owned();
    assert_eq!(created.body["role"], "deployer");

    let list = s.get("/v1/api-keys", ADMIN).await;
    let text = list.body.to_string();
    assert!(text.contains("ci-bot") && !text.contains(&key), "listed without the key");
    assert!(!text.contains(&deploy_server::key_digest(&key)), "nor its digest");
    let db = std::fs::read(s.data_dir.join(deploy_sql::DATABASE_FILE)).unwrap();
    assert!(!db.windows(key.len()).any(|w| w == key.as_bytes()), "the key itself is never stored");

    assert_eq!(s.get("/v1/environments", &key).await.status, StatusCode::OK);
    let d = s.call(Method::DELETE, &format!("/v1/api-keys/{id}"), Some(ADMIN), None, &[]).await;
    assert_eq!(d.status, StatusCode::NO_CONTENT);
    let revoked = s.get("/v1/environments", &key).await;
    revoked.problem(401, "unauthenticated");
    s.call(Method::DELETE, &format!("/v1/api-keys/{id}"), Some(ADMIN), None, &[]).await.problem(404, "not-found");
    s.post("/v1/api-keys", ADMIN, json!({"name": "x", "role": "superuser"})).await.problem(400, "validation");
    s.post("/v1/api-keys", ADMIN, json!({"name": "has space", "role": "viewer"})).await.problem(400, "validation");
    s.post("/v1/api-keys", ADMIN, json!({"name": "x", "role": "viewer", "environments": ["Bad!"]}))
        .await
        .problem(400, "validation");
}

#[tokio::test]
async fn every_mutating_call_lands_in_the_audit_log() {
    let s = Server::start("audit").await;
    s.sim_env("prod", 1, "queue", json!({})).await;
    let viewer = s.key("viewer-1", "viewer", &["*"]).await;
    let ok = s
        .call(Method::POST, "/v1/deployments", Some(ADMIN), Some(deploy("prod", "2.0")), &[("x-request-id", "req-ok")])
        .await;
    let id = ok.body["id"].as_str().unwrap().to_owned();
    let denied = s
        .call(
            Method::POST,
            "/v1/deployments",
            Some(&viewer),
            Some(deploy("prod", "2.0")),
            &[("x-request-id", "req-denied")],
        )
        .await;
    denied.problem(403, "forbidden");
    s.call(Method::POST, "/v1/deployments", None, Some(deploy("prod", "2.0")), &[("x-request-id", "req-anon")]).await;
    s.get("/v1/environments", ADMIN).await; // reads are not audited

    let log = s.get("/v1/audit?limit=50", ADMIN).await;
    assert_eq!(log.status, StatusCode::OK);
    let items = log.body["items"].as_array().unwrap();
    let find = |rid: &str| {
        items.iter().find(|e| e["request_id"] == rid).unwrap_or_else(|| panic!("{rid} in {items:?}")).clone()
    };
    let e = find("req-ok");
    assert_eq!(e["actor"], "key:bootstrap-admin");
    assert_eq!(e["action"], "deployment.submit");
    assert_eq!(e["resource"], format!("deployments/{id}"));
    assert_eq!(e["outcome"], "success");
    assert!(e["at"].as_str().is_some());
    let e = find("req-denied");
    assert_eq!(e["actor"], "key:viewer-1");
    assert_eq!(e["outcome"], "forbidden");
    // Nobody authenticated: counted in the metrics, never written (an anonymous flood cannot grow the log).
    assert!(items.iter().all(|e| e["request_id"] != "req-anon" && e["actor"] != "anonymous"), "{items:?}");
    let metrics = s.http.get(s.url("/metrics")).send().await.unwrap().text().await.unwrap();
    assert!(metrics.contains("deploy_http_rejected_total{reason=\"unauthenticated\"} 1"), "{metrics}");
    assert!(items.iter().any(|e| e["action"] == "environment.put" && e["resource"] == "environments/prod"));
    assert!(items.iter().any(|e| e["action"] == "api_key.create"));
    assert!(items.iter().all(|e| e["action"] != "GET /v1/environments"));

    let by_actor = s.get("/v1/audit?actor=key:viewer-1", ADMIN).await;
    assert!(by_actor.body["items"].as_array().unwrap().iter().all(|e| e["actor"] == "key:viewer-1"));
    assert_eq!(by_actor.body["items"].as_array().unwrap().len(), 1);
    let by_env = s.get("/v1/audit?environment=prod", ADMIN).await;
    assert!(by_env.body["items"].as_array().unwrap().len() >= 2);
    s.get("/v1/audit", &viewer).await.problem(403, "forbidden");
}

#[tokio::test]
async fn rate_limits_answer_429_with_retry_after() {
    let mut settings = common::settings("ratelimit");
    settings.rate_limit = 1.0;
    settings.rate_limit_burst = 3.0;
    let s = Server::with(settings).await;
    let other = {
        // Created before the bucket is drained; the bucket is per principal.
        s.post("/v1/api-keys", ADMIN, json!({"name": "other", "role": "viewer"})).await.body["key"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    let mut limited = None;
    for _ in 0..6 {
        let a = s.get("/v1/environments", ADMIN).await;
        if a.status == StatusCode::TOO_MANY_REQUESTS {
            limited = Some(a);
            break;
        }
    }
    let limited = limited.expect("a burst of 3 at 1/s runs out within 6 requests");
    limited.problem(429, "rate-limited");
    let wait: u64 = limited.header("retry-after").unwrap().parse().unwrap();
    assert!((1..=2).contains(&wait), "{wait}");
    assert_eq!(s.get("/v1/environments", &other).await.status, StatusCode::OK, "other principals are not limited");
}

#[tokio::test]
async fn an_environments_history_lists_the_releases_that_ran_there_newest_first() {
    let s = Server::start("history").await;
    s.sim_env("prod", 2, "queue", json!({})).await;
    s.sim_env("staging", 1, "queue", json!({})).await;
    for version in ["2.0", "3.0"] {
        let a = s.post("/v1/deployments", ADMIN, deploy("prod", version)).await;
        assert_eq!(a.status, StatusCode::ACCEPTED, "{:?}", a.body);
        s.wait_terminal(a.body["id"].as_str().unwrap()).await;
    }
    let h = s.get("/v1/environments/prod/history", ADMIN).await;
    assert_eq!(h.status, StatusCode::OK, "{:?}", h.body);
    let items = h.body["items"].as_array().unwrap();
    let versions: Vec<&str> = items.iter().map(|r| r["version"].as_str().unwrap()).collect();
    assert_eq!(versions, ["3.0", "2.0"], "newest first");
    for r in items {
        assert_eq!(r["status"], "succeeded");
        assert_eq!(r["submitted_by"], "key:bootstrap-admin");
        assert!(r["duration_ms"].as_u64().is_some(), "a finished release says how long it ran: {r}");
        assert!(r["started_at"].is_string() && r["finished_at"].is_string());
    }
    // Paged like every listing.
    let first = s.get("/v1/environments/prod/history?limit=1", ADMIN).await;
    assert_eq!(first.body["items"].as_array().map(Vec::len), Some(1));
    assert!(first.body["next_cursor"].is_string());

    // Finding of the governance trial: when the newest deployments never started (awaiting approval, rejected),
    // `limit=1` answered an empty page. Pages are filled past them.
    let mut protected = s.get("/v1/environments/prod", ADMIN).await.body;
    let targets: Vec<Value> = protected["targets"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| json!({"id": t["id"], "labels": t["labels"], "executor": t["executor"], "config": t["config"]}))
        .collect();
    protected = json!({"targets": targets, "protection": {"required_approvals": 1}});
    assert_eq!(s.put("/v1/environments/prod", ADMIN, protected).await.status, StatusCode::OK);
    let rejected =
        s.post("/v1/deployments", ADMIN, deploy("prod", "4.0")).await.body["id"].as_str().unwrap().to_owned();
    let reject = json!({"decision": "reject", "comment": "not today"});
    let approver = s.key("approver", "approver", &["prod"]).await;
    assert!(s.post(&format!("/v1/deployments/{rejected}/approvals"), &approver, reject).await.status.is_success());
    let waiting = s.post("/v1/deployments", ADMIN, deploy("prod", "5.0")).await;
    assert_eq!(waiting.body["status"], "awaiting_approval");
    let newest = s.get("/v1/environments/prod/history?limit=1", ADMIN).await.body;
    assert_eq!(newest["items"][0]["version"], "3.0", "the newest release, past those that never ran: {newest}");

    // Who may read it: a viewer of prod, not a key limited to staging; an unknown environment is 404.
    let viewer = s.key("prod-viewer", "viewer", &["prod"]).await;
    assert_eq!(s.get("/v1/environments/prod/history", &viewer).await.status, StatusCode::OK);
    let other = s.key("staging-viewer", "viewer", &["staging"]).await;
    s.get("/v1/environments/prod/history", &other).await.problem(403, "forbidden");
    s.get("/v1/environments/nowhere/history", ADMIN).await.problem(404, "not-found");
    assert_eq!(s.get("/v1/environments/staging/history", ADMIN).await.body["items"], json!([]), "nothing ran there");
}

#[tokio::test]
async fn an_environment_rolls_back_to_the_previous_release_a_version_or_a_deployment() {
    let s = Server::start("env-rollback").await;
    s.sim_env("prod", 2, "queue", json!({})).await;
    let mut ids = Vec::new();
    for version in ["2.0", "3.0"] {
        let a = s.post("/v1/deployments", ADMIN, deploy("prod", version)).await;
        assert_eq!(a.status, StatusCode::ACCEPTED, "{:?}", a.body);
        ids.push(a.body["id"].as_str().unwrap().to_owned());
        s.wait_terminal(&ids[ids.len() - 1]).await;
    }
    let rollback = |to: &str| json!({"to": to});

    // `previous`: the newest release that succeeded with another version than the last one.
    let back = s
        .call(
            Method::POST,
            "/v1/environments/prod/rollback",
            Some(ADMIN),
            Some(rollback("previous")),
            &[("idempotency-key", "rb-1")],
        )
        .await;
    assert_eq!(back.status, StatusCode::ACCEPTED, "{:?}", back.body);
    assert_eq!(back.body["version"], "2.0");
    assert_eq!(back.body["rollback_of"], ids[1].as_str(), "it records the release that ran last");
    let done = s.wait_terminal(back.body["id"].as_str().unwrap()).await;
    assert_eq!(done["status"], "succeeded");
    let again = s
        .call(
            Method::POST,
            "/v1/environments/prod/rollback",
            Some(ADMIN),
            Some(rollback("previous")),
            &[("idempotency-key", "rb-1")],
        )
        .await;
    assert_eq!(again.body["id"], back.body["id"], "one key, one rollback");

    // A version, and a deployment id.
    let to_version = s.post("/v1/environments/prod/rollback", ADMIN, rollback("3.0")).await;
    assert_eq!(to_version.body["version"], "3.0", "{:?}", to_version.body);
    s.wait_terminal(to_version.body["id"].as_str().unwrap()).await;
    let to_id = s.post("/v1/environments/prod/rollback", ADMIN, rollback(&ids[0])).await;
    assert_eq!(to_id.body["version"], "2.0", "{:?}", to_id.body);
    s.wait_terminal(to_id.body["id"].as_str().unwrap()).await;
    let history = s.get("/v1/environments/prod/history", ADMIN).await;
    let versions: Vec<&str> =
        history.body["items"].as_array().unwrap().iter().map(|r| r["version"].as_str().unwrap()).collect();
    assert_eq!(versions, ["2.0", "3.0", "2.0", "3.0", "2.0"]);

    // What cannot be done, and who may not.
    let none = s.post("/v1/environments/prod/rollback", ADMIN, rollback("9.9")).await;
    none.problem(400, "validation");
    assert_eq!(none.body["errors"][0]["field"], "to");
    s.post("/v1/environments/prod/rollback", ADMIN, rollback("not a version!")).await.problem(400, "validation");
    s.post("/v1/environments/nowhere/rollback", ADMIN, rollback("previous")).await.problem(404, "not-found");
    let viewer = s.key("prod-reader", "viewer", &["prod"]).await;
    s.post("/v1/environments/prod/rollback", &viewer, rollback("previous")).await.problem(403, "forbidden");
    let audit = s.get("/v1/audit?limit=500", ADMIN).await;
    assert!(
        audit.body["items"].as_array().unwrap().iter().any(|e| e["action"] == "environment.rollback"),
        "each rollback is audited"
    );
}

/// Who may call the history and the environment rollback, what they make the host do, and what they record: the
/// history is a read (no spec, so no configuration or secret reference in it); a rollback needs `rollback` on that
/// environment (a deployer there, not one of another environment) and runs only a release that already ran there;
/// its audit entry names the environment and nothing of the body.
#[tokio::test]
async fn history_and_environment_rollback_answer_who_what_and_which_secret() {
    let s = Server::start("history-rbac").await;
    s.sim_env("prod", 1, "queue", json!({})).await;
    for version in ["2.0", "3.0"] {
        let mut body = deploy("prod", version);
        body["config"] = json!({"LOG_LEVEL": "debug"});
        let a = s.post("/v1/deployments", ADMIN, body).await;
        s.wait_terminal(a.body["id"].as_str().unwrap()).await;
    }
    let history = s.get("/v1/environments/prod/history", ADMIN).await;
    for release in history.body["items"].as_array().unwrap() {
        for field in ["spec", "config", "secrets", "targets"] {
            assert!(release.get(field).is_none(), "the history holds no {field}: {release}");
        }
    }

    let elsewhere = s.key("staging-deployer", "deployer", &["staging"]).await;
    s.post("/v1/environments/prod/rollback", &elsewhere, json!({"to": "previous"})).await.problem(403, "forbidden");
    let deployer = s.key("prod-deployer", "deployer", &["prod"]).await;
    let back = s.post("/v1/environments/prod/rollback", &deployer, json!({"to": "previous"})).await;
    assert_eq!(back.status, StatusCode::ACCEPTED, "{:?}", back.body);
    assert_eq!(back.body["spec"]["config"], json!({"LOG_LEVEL": "debug"}), "the release's own spec, nothing new");
    assert_eq!(back.body["created_by"], "key:prod-deployer");
    s.wait_terminal(back.body["id"].as_str().unwrap()).await;

    let audit = s.get("/v1/audit?limit=500", ADMIN).await;
    let entry = audit.body["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["action"] == "environment.rollback" && e["actor"] == "key:prod-deployer")
        .cloned()
        .expect("audited");
    assert_eq!(entry["environment"], "prod");
    assert!(!entry.to_string().contains("debug") && !entry.to_string().contains("previous"), "no body: {entry}");
}
