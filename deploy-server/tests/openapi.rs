//! The committed OpenAPI document matches the code, describes every endpoint of `design/api.md`, and its schemas name
//! every field the server actually sends.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::{ADMIN, Server, deploy};
use serde_json::{Value, json};

const COMMITTED: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/openapi.json");

#[test]
fn the_committed_document_is_the_generated_one() {
    let generated = deploy_server::openapi::document();
    if std::env::var_os("UPDATE_OPENAPI").is_some() {
        std::fs::write(COMMITTED, format!("{generated}\n")).unwrap();
    }
    let committed = std::fs::read_to_string(COMMITTED).unwrap_or_default();
    assert!(
        committed.trim_end() == generated,
        "deploy-server/openapi.json is stale: run `UPDATE_OPENAPI=1 cargo test -p deploy-server --test openapi` and commit it"
    );
    let doc: Value = serde_json::from_str(&generated).unwrap();
    assert!(doc["openapi"].as_str().unwrap().starts_with("3.1"), "OpenAPI 3.1");
}

#[test]
fn every_endpoint_of_the_contract_is_described() {
    let doc: Value = serde_json::from_str(&deploy_server::openapi::document()).unwrap();
    let contract = [
        ("put", "/v1/environments/{env}"),
        ("get", "/v1/environments/{env}"),
        ("get", "/v1/environments"),
        ("post", "/v1/deployments"),
        ("get", "/v1/deployments"),
        ("get", "/v1/deployments/{id}"),
        ("get", "/v1/deployments/{id}/events"),
        ("post", "/v1/deployments/{id}/cancel"),
        ("post", "/v1/deployments/{id}/rollback"),
        ("post", "/v1/api-keys"),
        ("get", "/v1/api-keys"),
        ("delete", "/v1/api-keys/{id}"),
        ("get", "/v1/audit"),
        ("post", "/v1/webhooks"),
        ("get", "/v1/webhooks"),
        ("get", "/v1/webhooks/{id}"),
        ("delete", "/v1/webhooks/{id}"),
        ("get", "/v1/webhooks/{id}/deliveries"),
        ("post", "/v1/webhooks/{id}/deliveries/{delivery_id}/redeliver"),
        ("get", "/healthz"),
        ("get", "/readyz"),
        ("get", "/metrics"),
        ("get", "/openapi.json"),
        ("get", "/problems/{slug}"),
    ];
    for (method, path) in contract {
        assert!(doc["paths"][path][method].is_object(), "{method} {path} is not described");
    }
    let submit = &doc["paths"]["/v1/deployments"]["post"]["responses"];
    for code in ["202", "400", "401", "403", "404", "409", "412", "413", "415", "422", "428", "429"] {
        assert!(submit[code].is_object(), "submit lacks {code}");
    }
    assert_eq!(doc["components"]["securitySchemes"]["bearer"]["scheme"], "bearer");
}

/// Finding: the document's key roles omitted `approver` and its deployment statuses `awaiting_approval` and
/// `rejected`. Every status, role and event type the server can send is an enum value of its field.
#[test]
fn every_status_role_and_event_type_is_in_the_document() {
    let doc: Value = serde_json::from_str(&deploy_server::openapi::document()).unwrap();
    let values = |schema: &str, property: &str| -> Vec<String> {
        doc["components"]["schemas"][schema]["properties"][property]["enum"]
            .as_array()
            .unwrap_or_else(|| panic!("{schema}.{property} lists no values"))
            .iter()
            .map(|v| v.as_str().unwrap().to_owned())
            .collect()
    };
    for s in deploy_core::DeploymentStatus::ALL {
        assert!(values("Deployment", "status").contains(&s.as_str().to_owned()), "Deployment.status lacks {s}");
        assert!(values("Event", "status").contains(&s.as_str().to_owned()), "Event.status lacks {s}");
    }
    for s in deploy_core::TargetStatus::ALL {
        assert!(values("TargetProgress", "status").contains(&s.as_str().to_owned()), "TargetProgress lacks {s}");
    }
    for r in deploy_core::Role::ALL {
        assert!(values("NewApiKey", "role").contains(&r.as_str().to_owned()), "NewApiKey.role lacks {}", r.as_str());
        assert!(values("ApiKey", "role").contains(&r.as_str().to_owned()));
    }
    for t in deploy_core::EventType::ALL {
        assert!(values("Event", "type").contains(&t.as_str().to_owned()), "Event.type lacks {}", t.as_str());
    }
    for wanted in ["awaiting_approval", "rejected", "paused"] {
        assert!(values("Deployment", "status").contains(&wanted.to_owned()), "{wanted}");
    }
    assert!(values("ApiKey", "role").contains(&"approver".to_owned()));
}

fn properties<'a>(doc: &'a Value, schema: &str) -> &'a serde_json::Map<String, Value> {
    doc["components"]["schemas"][schema]["properties"].as_object().unwrap_or_else(|| panic!("schema {schema}"))
}

fn assert_described(doc: &Value, schema: &str, value: &Value) {
    let props = properties(doc, schema);
    for key in value.as_object().unwrap().keys() {
        assert!(props.contains_key(key), "{schema} does not describe `{key}` that the server sends");
    }
}

#[tokio::test]
async fn schemas_describe_every_field_the_server_sends() {
    let s = Server::start("openapi").await;
    let doc: Value = serde_json::from_str(&deploy_server::openapi::document()).unwrap();
    let served = s.http.get(s.url("/openapi.json")).send().await.unwrap().json::<Value>().await.unwrap();
    assert_eq!(served, doc, "GET /openapi.json serves the document");

    s.sim_env("prod", 2, "queue", json!({})).await;
    let d = s.post("/v1/deployments", ADMIN, deploy("prod", "2.0")).await;
    let id = d.body["id"].as_str().unwrap().to_owned();
    let done = s.wait_terminal(&id).await;
    assert_described(&doc, "Deployment", &done);
    assert_described(&doc, "TargetProgress", &done["targets"][0]);
    assert_described(&doc, "Summary", &done["summary"]);
    let env = s.get("/v1/environments/prod", ADMIN).await.body;
    assert_described(&doc, "Environment", &env);
    assert_described(&doc, "EnvironmentTarget", &env["targets"][0]);
    assert_described(&doc, "ActualState", &env["targets"][0]["actual"]);
    assert_described(&doc, "DesiredState", &env["targets"][0]["desired"]);
    let events = s.get(&format!("/v1/deployments/{id}/events"), ADMIN).await.body;
    assert_described(&doc, "EventList", &events);
    assert_described(&doc, "Event", &events["items"][0]);
    let key = s.post("/v1/api-keys", ADMIN, json!({"name": "doc", "role": "viewer"})).await.body;
    assert_described(&doc, "ApiKey", &key);
    let hook = s.post("/v1/webhooks", ADMIN, json!({"url": "http://127.0.0.1:9/hook"})).await.body;
    assert_described(&doc, "Webhook", &hook);
    let hooks = s.get("/v1/webhooks", ADMIN).await.body;
    assert_described(&doc, "WebhookList", &hooks);
    s.post("/v1/deployments", ADMIN, deploy("prod", "3.0")).await;
    let path = format!("/v1/webhooks/{}/deliveries", hook["id"].as_str().unwrap());
    let deliveries = s.get(&path, ADMIN).await.body;
    assert_described(&doc, "DeliveryList", &deliveries);
    assert_described(&doc, "Delivery", &deliveries["items"][0]);
    let audit = s.get("/v1/audit", ADMIN).await.body;
    assert_described(&doc, "AuditList", &audit);
    assert_described(&doc, "AuditEntry", &audit["items"][0]);
    let problem = s.post("/v1/deployments", ADMIN, json!({"environment": "prod"})).await.body;
    assert_described(&doc, "Problem", &problem);
    assert_described(&doc, "FieldError", &problem["errors"][0]);
    let kind = s.http.get(s.url("/problems/validation")).send().await.unwrap().json::<Value>().await.unwrap();
    assert_described(&doc, "ProblemType", &kind);
    // The request schema names every field a request may carry.
    let request = properties(&doc, "DeploymentRequest");
    for field in [
        "environment",
        "service",
        "version",
        "artifact",
        "config",
        "secrets",
        "targets",
        "strategy",
        "verify",
        "failure",
        "on_unreachable",
        "progress_deadline",
        "mode",
        "steps",
        "labels",
    ] {
        assert!(request.contains_key(field), "DeploymentRequest lacks {field}");
    }
}
