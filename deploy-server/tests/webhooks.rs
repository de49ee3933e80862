//! Webhooks over real HTTP: subscriptions and their errors, at-least-once delivery through an outage, one id per
//! delivery, 410, redelivery, and a dead receiver that does not hold up a healthy one.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use common::receiver::{Mode, Receiver};
use common::{ADMIN, Server, deploy, pg, settings, temp_dir};
use deploy_core::HumanDuration;
use reqwest::StatusCode;
use serde_json::{Value, json};

/// A fast schedule: forty attempts 150 ms apart.
fn fast_schedule() -> String {
    vec!["150ms"; 40].join(",")
}

async fn server(tag: &str) -> Server {
    Server::with(deploy_server::Settings {
        webhook_retry_schedule: fast_schedule(),
        webhook_timeout: HumanDuration::from_secs(30),
        global_secret_scope: "env://DB_PASSWORD".into(),
        ..settings(tag)
    })
    .await
}

async fn subscribe(s: &Server, receiver: &Receiver, events: &[&str], environments: &[&str]) -> (String, String) {
    let a = s
        .post("/v1/webhooks", ADMIN, json!({"url": receiver.url(), "events": events, "environments": environments}))
        .await;
    assert_eq!(a.status, StatusCode::CREATED, "{:?}", a.body);
    let id = a.body["id"].as_str().unwrap().to_owned();
    let secret = a.body["secret"].as_str().unwrap().to_owned();
    receiver.set_secret(&secret);
    (id, secret)
}

async fn deliveries(s: &Server, sub: &str) -> Vec<Value> {
    let a = s.get(&format!("/v1/webhooks/{sub}/deliveries?limit=500"), ADMIN).await;
    assert_eq!(a.status, StatusCode::OK, "{:?}", a.body);
    a.body["items"].as_array().unwrap().clone()
}

/// Polls until every delivery of `sub` satisfies `done` (at most 30 s); returns them.
async fn wait_deliveries(s: &Server, sub: &str, expected: usize, done: impl Fn(&Value) -> bool) -> Vec<Value> {
    for _ in 0..600 {
        let items = deliveries(s, sub).await;
        if items.len() >= expected && items.iter().all(&done) {
            return items;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("deliveries of {sub} never settled: {:#?}", deliveries(s, sub).await);
}

fn delivered(d: &Value) -> bool {
    d["status"] == "delivered"
}

async fn events_of(s: &Server, id: &str) -> Vec<Value> {
    s.get(&format!("/v1/deployments/{id}/events?limit=500"), ADMIN).await.body["items"].as_array().unwrap().clone()
}

#[tokio::test]
async fn subscriptions_are_created_listed_and_deleted_with_typed_errors() {
    let s = server("wh-crud").await;
    let receiver = Receiver::down().await;
    let created = s
        .post(
            "/v1/webhooks",
            ADMIN,
            json!({"url": receiver.url(), "events": ["deployment.*"], "environments": ["prod"]}),
        )
        .await;
    assert_eq!(created.status, StatusCode::CREATED);
    let id = created.body["id"].as_str().unwrap();
    assert_eq!(created.header("location"), Some(format!("/v1/webhooks/{id}").as_str()));
    let secret = created.body["secret"].as_str().unwrap();
    assert!(secret.starts_with("whsec_") && secret.len() > 40, "{secret}");
    assert_eq!(created.body["active"], true);
    assert_eq!(created.body["disabled_reason"], Value::Null);
    assert_eq!(created.body["events"], json!(["deployment.*"]));

    let got = s.get(&format!("/v1/webhooks/{id}"), ADMIN).await;
    assert_eq!(got.status, StatusCode::OK);
    assert_eq!(got.body["url"], receiver.url());
    let listed = s.get("/v1/webhooks", ADMIN).await;
    assert_eq!(listed.body["items"][0]["id"], id);
    for body in [&got.body, &listed.body] {
        assert!(!body.to_string().contains(secret), "the secret is shown only once: {body}");
    }
    let defaulted = s.post("/v1/webhooks", ADMIN, json!({"url": "https://example.com/hook"})).await;
    assert_eq!((defaulted.body["events"].clone(), defaulted.body["environments"].clone()), (json!(["*"]), json!([])));

    // Invalid subscriptions name every bad field.
    let bad = s.post("/v1/webhooks", ADMIN, json!({"url": "ftp://x/", "events": ["deploy.*"]})).await;
    bad.problem(400, "validation");
    let fields: BTreeSet<&str> =
        bad.body["errors"].as_array().unwrap().iter().map(|e| e["field"].as_str().unwrap()).collect();
    assert_eq!(fields, BTreeSet::from(["url", "events"]));
    s.post("/v1/webhooks", ADMIN, json!({"url": "https://example.com", "secret": "mine"}))
        .await
        .problem(400, "validation");
    s.post("/v1/webhooks", ADMIN, json!({"url": "https://example.com", "environments": ["Bad Name!"]}))
        .await
        .problem(400, "validation");
    s.get("/v1/webhooks/not-a-uuid", ADMIN).await.problem(400, "validation");
    let unknown = uuid::Uuid::now_v7();
    s.get(&format!("/v1/webhooks/{unknown}"), ADMIN).await.problem(404, "not-found");
    s.get(&format!("/v1/webhooks/{unknown}/deliveries"), ADMIN).await.problem(404, "not-found");
    s.post(&format!("/v1/webhooks/{unknown}/deliveries/msg_x/redeliver"), ADMIN, json!({}))
        .await
        .problem(404, "not-found");
    s.post(&format!("/v1/webhooks/{id}/deliveries/msg_x/redeliver"), ADMIN, json!({})).await.problem(404, "not-found");

    // Administrators only, with every environment.
    let deployer = s.key("ci", "deployer", &["*"]).await;
    let prod_admin = s.key("prod-admin", "admin", &["prod"]).await;
    for token in [&deployer, &prod_admin] {
        s.get("/v1/webhooks", token).await.problem(403, "forbidden");
        s.post("/v1/webhooks", token, json!({"url": "https://example.com"})).await.problem(403, "forbidden");
    }
    let anonymous = s.call(reqwest::Method::GET, "/v1/webhooks", None, None, &[]).await;
    anonymous.problem(401, "unauthenticated");

    let deleted = s.call(reqwest::Method::DELETE, &format!("/v1/webhooks/{id}"), Some(ADMIN), None, &[]).await;
    assert_eq!(deleted.status, StatusCode::NO_CONTENT);
    s.call(reqwest::Method::DELETE, &format!("/v1/webhooks/{id}"), Some(ADMIN), None, &[])
        .await
        .problem(404, "not-found");
    let audit = s.get("/v1/audit", ADMIN).await.body;
    let actions: Vec<&str> = audit["items"].as_array().unwrap().iter().map(|e| e["action"].as_str().unwrap()).collect();
    assert!(actions.contains(&"webhook.create") && actions.contains(&"webhook.delete"), "{actions:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receiver_that_is_down_then_failing_then_back_gets_every_event_under_one_id() {
    let s = server("wh-outage").await;
    let mut receiver = Receiver::down().await;
    let (sub, secret) = subscribe(&s, &receiver, &["*"], &["prod"]).await;
    s.sim_env("prod", 3, "queue", json!({})).await;
    s.sim_env("staging", 1, "queue", json!({})).await;
    let mut request = deploy("prod", "2.0");
    request["secrets"] = json!({"DB_PASSWORD": {"ref": "env://DB_PASSWORD"}});
    let id = s.post("/v1/deployments", ADMIN, request).await.body["id"].as_str().unwrap().to_owned();
    let other =
        s.post("/v1/deployments", ADMIN, deploy("staging", "2.0")).await.body["id"].as_str().unwrap().to_owned();
    let finished = s.wait_terminal(&id).await;
    s.wait_terminal(&other).await;

    // Down: connections refused. Then up but failing, then healthy.
    tokio::time::sleep(Duration::from_millis(600)).await;
    receiver.up(Mode::Status(500)).await;
    tokio::time::sleep(Duration::from_millis(600)).await;
    receiver.set_mode(Mode::Status(204));

    let events = events_of(&s, &id).await;
    let items = wait_deliveries(&s, &sub, events.len(), delivered).await;
    assert_eq!(items.len(), events.len(), "one delivery per event of prod, none for staging");
    let mut wanted: BTreeMap<String, usize> = BTreeMap::new();
    for e in &events {
        *wanted.entry(e["type"].as_str().unwrap().to_owned()).or_default() += 1;
    }
    let mut got: BTreeMap<String, usize> = BTreeMap::new();
    for d in &items {
        assert_eq!(d["deployment_id"], id.as_str());
        assert_eq!(d["last_status_code"], 204);
        *got.entry(d["event_type"].as_str().unwrap().to_owned()).or_default() += 1;
    }
    assert_eq!(got, wanted, "every event delivered once");

    let log = receiver.log();
    assert!(log.iter().all(|r| r.event.is_some()), "every request carries a valid signature");
    let first = log.first().unwrap();
    assert_eq!(first.answered, Some(500), "the receiver's failures were seen");
    let ids: BTreeSet<&str> = items.iter().map(|d| d["id"].as_str().unwrap()).collect();
    for delivery_id in &ids {
        let requests: Vec<_> = log.iter().filter(|r| r.id == *delivery_id).collect();
        let successes = requests.iter().filter(|r| r.answered == Some(204)).count();
        assert_eq!(successes, 1, "{delivery_id} is delivered exactly once");
        assert!(requests.iter().all(|r| r.body == requests[0].body), "{delivery_id}: the same body on every attempt");
        let attempts = items.iter().find(|d| d["id"] == *delivery_id).unwrap()["attempts"].as_u64().unwrap();
        assert!(attempts as usize >= requests.len(), "{delivery_id}: {attempts} attempts, {} received", requests.len());
    }
    let received: BTreeSet<&str> = log.iter().map(|r| r.id.as_str()).collect();
    assert_eq!(received, ids, "no request without a delivery");
    let queued = items.iter().find(|d| d["event_type"] == "deployment.queued").unwrap();
    assert!(queued["attempts"].as_u64().unwrap() >= 3, "refused, then 500, then delivered: {queued}");

    // The payload is the deployment: references to secrets, never a secret.
    for r in &log {
        assert!(!r.body.contains(&secret), "the signing secret is never sent");
        assert!(!r.body.to_ascii_lowercase().contains("whsec_"));
        let event = r.event.as_ref().unwrap();
        assert!(event.data["id"].is_string() && event.data["status"].is_string(), "{}", r.body);
    }
    // (The reference is not resolvable here, so the deployment ends without succeeding; its last event says so.)
    let status = finished["status"].as_str().unwrap();
    let terminal_type = format!("deployment.{status}");
    let final_event = log.iter().find(|r| r.event.as_ref().unwrap().event_type == terminal_type).unwrap();
    assert_eq!(final_event.event.as_ref().unwrap().data["status"], status);
    assert!(final_event.body.contains("env://DB_PASSWORD"), "the reference is there: {}", final_event.body);

    // Redelivery sends the same id again.
    let again = s
        .post(&format!("/v1/webhooks/{sub}/deliveries/{}/redeliver", queued["id"].as_str().unwrap()), ADMIN, json!({}))
        .await;
    assert_eq!(again.status, StatusCode::ACCEPTED, "{:?}", again.body);
    assert_eq!((again.body["status"].as_str(), again.body["attempts"].as_u64()), (Some("pending"), Some(0)));
    wait_deliveries(&s, &sub, events.len(), delivered).await;
    let repeats =
        receiver.log().iter().filter(|r| r.id == queued["id"].as_str().unwrap() && r.answered == Some(204)).count();
    assert_eq!(repeats, 2, "redelivered once more under the same id");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gone_disables_the_subscription_and_stops_deliveries() {
    let s = server("wh-gone").await;
    let receiver = Receiver::answering(Mode::Status(410)).await;
    let (sub, _) = subscribe(&s, &receiver, &["deployment.*"], &[]).await;
    s.sim_env("prod", 2, "queue", json!({})).await;
    let id = s.post("/v1/deployments", ADMIN, deploy("prod", "2.0")).await.body["id"].as_str().unwrap().to_owned();
    s.wait_terminal(&id).await;
    let items = wait_deliveries(&s, &sub, 1, |d| d["status"] == "failed").await;
    let got = s.get(&format!("/v1/webhooks/{sub}"), ADMIN).await.body;
    assert_eq!(got["active"], false, "{got}");
    assert!(got["disabled_reason"].as_str().unwrap().contains("410"), "{got}");
    let seen = receiver.log().len();
    assert!(seen >= 1 && seen <= items.len());
    // Nothing more is sent, even for new deployments.
    let next = s.post("/v1/deployments", ADMIN, deploy("prod", "3.0")).await.body["id"].as_str().unwrap().to_owned();
    s.wait_terminal(&next).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(receiver.log().len(), seen, "a disabled subscription gets nothing");
    let redeliver = s
        .post(
            &format!("/v1/webhooks/{sub}/deliveries/{}/redeliver", items[0]["id"].as_str().unwrap()),
            ADMIN,
            json!({}),
        )
        .await;
    redeliver.problem(409, "webhook-disabled");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_receiver_does_not_hold_up_a_healthy_one() {
    // Few slots: without a cap per subscription the dead receiver's deliveries would take them all.
    let s = Server::with(deploy_server::Settings {
        webhook_retry_schedule: fast_schedule(),
        webhook_timeout: HumanDuration::from_secs(60),
        webhook_concurrency: 6,
        webhook_concurrency_per_subscription: 2,
        ..settings("wh-dead")
    })
    .await;
    let dead = Receiver::answering(Mode::Hang).await;
    let healthy = Receiver::answering(Mode::Status(200)).await;
    let (dead_sub, _) = subscribe(&s, &dead, &["*"], &[]).await;
    let (healthy_sub, _) = subscribe(&s, &healthy, &["*"], &[]).await;
    s.sim_env("prod", 2, "queue", json!({})).await;
    let mut ids = Vec::new();
    for v in 1..=4 {
        ids.push(
            s.post("/v1/deployments", ADMIN, deploy("prod", &format!("{v}.0"))).await.body["id"]
                .as_str()
                .unwrap()
                .to_owned(),
        );
    }
    let mut events = 0;
    for id in &ids {
        s.wait_terminal(id).await;
        events += events_of(&s, id).await.len();
    }
    let items = wait_deliveries(&s, &healthy_sub, events, delivered).await;
    assert_eq!(items.len(), events);
    // All of that while the dead receiver still holds its first attempts open, never more than its share.
    let stuck = deliveries(&s, &dead_sub).await;
    assert_eq!(stuck.len(), events);
    assert!(
        stuck.iter().all(|d| d["status"] == "pending" && d["attempts"] == 0),
        "the dead receiver's attempts are still open"
    );
    assert!((1..=2).contains(&dead.hanging()), "{} requests held open", dead.hanging());
    assert_eq!(dead.log().len(), dead.hanging(), "only its share was ever attempted");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_postgresql_two_replicas_attempt_each_delivery_once_at_a_time() {
    let Some(url) = pg::postgres_url("on_postgresql_two_replicas_attempt_each_delivery_once_at_a_time").await else {
        return;
    };
    let dir = temp_dir("wh-pg");
    // One data directory for both: the sim executor's state is shared, as the targets would be.
    let replica = || deploy_server::Settings {
        database_url: Some(url.clone()),
        webhook_retry_schedule: fast_schedule(),
        ..deploy_server::Settings::for_tests(dir.to_path_buf(), ADMIN)
    };
    let a = Server::with(replica()).await;
    let b = Server::with(replica()).await;
    // Each request is held a while, so two replicas attempting one delivery at once would overlap at the receiver.
    let mut receiver = Receiver::down().await;
    let (sub, _) = subscribe(&a, &receiver, &["*"], &[]).await;
    receiver.up(Mode::Slow(500, 30)).await;
    let mut ids = Vec::new();
    for env in ["pg-a", "pg-b", "pg-c"] {
        a.sim_env(env, 2, "queue", json!({})).await;
        for v in ["2.0", "3.0"] {
            let via = if ids.len() % 2 == 0 { &a } else { &b };
            ids.push(via.post("/v1/deployments", ADMIN, deploy(env, v)).await.body["id"].as_str().unwrap().to_owned());
        }
    }
    let mut events = 0;
    for id in &ids {
        b.wait_terminal(id).await;
        events += events_of(&b, id).await.len();
    }
    receiver.set_mode(Mode::Slow(204, 30));
    let items = wait_deliveries(&b, &sub, events, delivered).await;
    assert_eq!(items.len(), events);
    assert_eq!(receiver.overlaps(), 0, "no delivery was attempted by two replicas at once");
    let log = receiver.log();
    for d in &items {
        let successes = log.iter().filter(|r| r.id == d["id"].as_str().unwrap() && r.answered == Some(204)).count();
        assert_eq!(successes, 1, "{d}");
    }
    assert!(log.iter().any(|r| r.answered == Some(500)), "retries happened");
    drop(a);
    drop(b);
}

/// A subscription that holds every claim the store allows it (eight rounds of its in-flight cap) gets short claims.
/// When its attempts finish, the next round records their outcomes and claims into the room they freed, in one
/// store operation: a round that only records (a transaction of its own, synced) would double the writes of a busy
/// subscription. Against a scripted outbox that enforces the store's cap and logs each operation.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outcomes_and_the_claims_they_make_room_for_share_one_store_operation() {
    #[derive(Default)]
    struct Outbox {
        queue: std::collections::VecDeque<deploy_core::WebhookDelivery>,
        /// Claimed and not yet completed.
        held: usize,
        /// `C` for each recording of outcomes, `L` for each claim, in order.
        ops: String,
    }
    let receiver = Receiver::answering(Mode::Status(204)).await;
    let secret = deploy_server::generate_secret().unwrap();
    receiver.set_secret(&secret);
    let subscription =
        deploy_core::WebhookSubscription { secret, ..deploy_testkit::fixtures::subscription(&receiver.url()) };
    let total = 240;
    let event = deploy_core::Event {
        seq: 1,
        at: time::OffsetDateTime::now_utc(),
        event_type: deploy_core::EventType::Succeeded,
        deployment_id: deploy_core::DeploymentId::new(),
        target_id: None,
        status: deploy_core::EventStatus::Deployment(deploy_core::DeploymentStatus::Succeeded),
        message: "done".into(),
    };
    let outbox = std::sync::Arc::new(std::sync::Mutex::new(Outbox {
        queue: (0..total)
            .map(|i| deploy_core::WebhookDelivery::pending(subscription.id, &event, &json!({"n": i})))
            .collect(),
        ..Outbox::default()
    }));
    let mut store = deploy_testkit::mocks::MockWebhookStore::new();
    let claims = std::sync::Arc::clone(&outbox);
    store.expect_claim_deliveries().returning(move |_, limit, per_subscription, _| {
        let mut o = claims.lock().unwrap();
        let take = limit.min(per_subscription.saturating_sub(o.held)).min(o.queue.len());
        o.held += take;
        o.ops.push('L');
        Ok(o.queue.drain(..take).map(|d| (d, subscription.clone())).collect())
    });
    let completes = std::sync::Arc::clone(&outbox);
    store.expect_complete_deliveries().returning(move |outcomes, _| {
        let mut o = completes.lock().unwrap();
        o.held -= outcomes.len();
        o.ops.push('C');
        Ok(())
    });
    let config = deploy_server::DispatcherConfig { concurrency: 16, per_subscription: 2, ..Default::default() };
    let dispatcher = deploy_server::Dispatcher::new(
        std::sync::Arc::new(store),
        std::sync::Arc::new(deploy_core::SystemClock),
        config,
    )
    .unwrap();
    let (trigger, signal) = deploy_core::ShutdownSignal::new();
    let task = tokio::spawn(dispatcher.run(signal));
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while receiver.log().len() < total {
        assert!(std::time::Instant::now() < deadline, "{} of {total} delivered", receiver.log().len());
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // Let the last outcomes be recorded before stopping, so the stop itself adds no round.
    while outbox.lock().unwrap().held > 0 {
        assert!(std::time::Instant::now() < deadline, "outcomes recorded");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    trigger.fire();
    task.await.unwrap();
    let ids: BTreeSet<String> = receiver.log().into_iter().map(|r| r.id).collect();
    assert_eq!(ids.len(), total, "each delivery sent once");
    let ops = outbox.lock().unwrap().ops.clone();
    let recorded_alone = ops.matches("CC").count() + usize::from(ops.ends_with('C'));
    assert!(ops.matches('C').count() >= 2, "several rounds recorded outcomes: {ops}");
    assert_eq!(recorded_alone, 0, "a round recorded outcomes without claiming: {ops}");
}
