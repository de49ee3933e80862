//! The JSON documents of the API and of stored rows, pinned by golden files (`tests/snapshots/`): a change to any of
//! them shows up in review as a change to its golden file. And documents are read as recorded: a deployment written by
//! a newer version (fields this one does not know) or accepted under rules since tightened still reads.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;

use deploy_core::{
    CountOrPercent, Deployment, DeploymentDraft, DeploymentSpec, Environment, EnvironmentSpec, Event, EventType,
    HumanDuration, RolloutStrategy, SecretRef, TargetDefinition, TargetId, TargetPlan, Timestamp,
};

fn at() -> Timestamp {
    time::macros::datetime!(2026-12-01 10:00 UTC)
}

fn environment() -> Environment {
    let target = |id: &str| TargetDefinition {
        id: TargetId::new(id).unwrap(),
        labels: BTreeMap::from([("zone".to_owned(), "eu-1".to_owned())]),
        executor: "vm".parse().unwrap(),
        config: serde_json::Value::Null,
    };
    let spec = EnvironmentSpec { targets: vec![target("web-1"), target("web-2")], ..EnvironmentSpec::default() };
    Environment::create("prod".parse().unwrap(), spec)
}

fn spec() -> DeploymentSpec {
    DeploymentSpec::builder("prod".parse().unwrap(), "checkout".parse().unwrap(), "2.0.1".parse().unwrap())
        .strategy(RolloutStrategy::Rolling { batch_size: CountOrPercent::Percent(50), pause: HumanDuration::ZERO })
        .secret("DB_PASSWORD", SecretRef::parse("vault://kv/checkout/db#password").unwrap())
        .label("ticket", "OPS-1234")
        .build()
        .unwrap()
}

fn deployment() -> Deployment {
    let draft = DeploymentDraft {
        id: "01937a2e-8f00-7000-8000-000000000001".parse().unwrap(),
        spec: spec(),
        created_by: "key:ci".into(),
        plan: TargetPlan::FromSpec,
        rollback_of: None,
        retry_of: None,
        submitted_by: None,
    };
    Deployment::plan(draft, &environment(), at()).unwrap()
}

fn pretty<T: serde::Serialize>(doc: &T) -> String {
    serde_json::to_string_pretty(doc).unwrap()
}

#[test]
fn the_deployment_document_is_pinned() {
    insta::assert_snapshot!("deployment", pretty(&deployment()));
}

#[test]
fn a_request_with_every_default_written_out_is_pinned() {
    insta::assert_snapshot!("request_with_defaults", pretty(&spec().to_request()));
}

#[test]
fn the_environment_document_is_pinned() {
    insta::assert_snapshot!("environment", pretty(&environment()));
}

fn queued_event() -> Event {
    Event {
        seq: 1,
        at: at(),
        event_type: EventType::Queued,
        deployment_id: deployment().id(),
        target_id: None,
        status: deploy_core::EventStatus::Deployment(deploy_core::DeploymentStatus::Queued),
        message: "queued behind nothing".into(),
    }
}

#[test]
fn the_event_document_is_pinned() {
    insta::assert_snapshot!("event", pretty(&queued_event()));
}

#[test]
fn a_recorded_deployment_reads_with_unknown_fields_and_rules_tightened_since() {
    let mut doc = serde_json::to_value(deployment()).unwrap();
    // Written by a newer version: fields this one does not know, at the top and inside the spec.
    doc["owner_team"] = serde_json::json!("payments");
    doc["spec"]["approvals"] = serde_json::json!({"required": 2});
    doc["spec"]["strategy"]["surge"] = serde_json::json!("10%");
    // Accepted when label values could be longer than today's 256 bytes.
    let long = "x".repeat(300);
    doc["spec"]["labels"]["note"] = serde_json::json!(long);

    let read: Deployment = serde_json::from_value(doc.clone()).expect("a recorded deployment reads");
    assert_eq!(read.spec().labels()["note"], long);
    assert_eq!(read.spec().strategy(), spec().strategy());
    assert_eq!(read.id(), deployment().id());

    // The same spec, submitted today, is held to today's rules.
    let submitted: deploy_core::DeploymentRequest = serde_json::from_value(doc["spec"].clone()).unwrap();
    let refused = submitted.validate().unwrap_err();
    assert!(refused.errors().iter().any(|e| e.field == "labels.note"), "{refused}");
}

#[test]
fn an_events_status_is_read_in_the_light_of_its_type() {
    use deploy_core::{DeploymentStatus, EventStatus, TargetStatus};
    let mut doc = serde_json::json!({"seq": 2, "at": "2026-12-01T10:00:00Z", "type": "target.updated",
        "deployment_id": "01937a2e-8f00-7000-8000-000000000001", "target_id": "web-1", "status": "succeeded",
        "message": "web-1: runs 2.0.1, healthy"});
    let target: Event = serde_json::from_value(doc.clone()).unwrap();
    assert_eq!(target.status, EventStatus::Target(TargetStatus::Succeeded));
    doc["type"] = serde_json::json!("deployment.succeeded");
    let deployment: Event = serde_json::from_value(doc.clone()).unwrap();
    assert_eq!(deployment.status, EventStatus::Deployment(DeploymentStatus::Succeeded));
    assert_eq!(serde_json::to_value(&deployment).unwrap()["status"], "succeeded", "written as its name");
    doc["status"] = serde_json::json!("awaiting_quorum");
    let newer: Event = serde_json::from_value(doc).unwrap();
    assert_eq!(newer.status, EventStatus::Unknown("awaiting_quorum".into()), "a newer server's status still reads");
}

#[test]
fn the_audit_entry_document_is_pinned() {
    let entry = deploy_core::AuditEntry {
        id: "01937a2e-8f00-7000-8000-0000000000a1".parse().unwrap(),
        at: at(),
        actor: "key:ci".into(),
        action: "deployment.submit".into(),
        resource: "/v1/deployments".into(),
        environment: Some("prod".into()),
        request_id: "req-1".into(),
        outcome: "202".into(),
    };
    insta::assert_snapshot!("audit_entry", pretty(&entry));
}

#[test]
fn a_webhook_delivery_row_is_pinned() {
    let event = queued_event();
    let sub = "01937a2e-8f00-7000-8000-0000000000b1".parse().unwrap();
    let mut delivery = deploy_core::WebhookDelivery::pending(sub, &event, &serde_json::json!({"id": "d-1"}));
    delivery.id = "msg_pinned".into(); // a fresh UUIDv7 otherwise
    let _ = delivery
        .record_attempt(deploy_core::DeliveryOutcome::Retry { status_code: Some(503), next_attempt_at: at() }, at());
    insta::assert_snapshot!("webhook_delivery", pretty(&delivery));
}

#[test]
fn a_deployment_that_never_started_is_no_release() {
    assert_eq!(deploy_core::Release::of(&deployment()), None, "queued: not in the history");
}
