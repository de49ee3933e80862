//! The client against a real `deployd` on loopback: every method, retries that never deploy twice, and `watch`
//! across forced disconnects.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::time::Duration;

use common::proxy::{Fault, Proxy};
use common::{ADMIN, client, deployd, request, sim_env};
use deploy_client::{AuditFilter, DeploymentFilter, Error, NewWebhook, SubmitOptions};
use deploy_core::{DeploymentStatus, EnvironmentPattern, PageRequest, Role};
use futures::StreamExt as _;

fn base(running: &deploy_server::Running) -> String {
    format!("http://{}", running.addr)
}

fn slug(e: &Error) -> &str {
    e.problem().map_or("(no problem)", |p| p.slug())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_method_against_a_real_deployd() {
    let (server, _dir) = deployd("client-all").await;
    let c = client(&base(&server));
    c.health().await.unwrap();
    c.ready().await.unwrap();

    // Environments.
    let env = c.put_environment(&"prod".parse().unwrap(), &sim_env(2, 5), None).await.unwrap();
    assert_eq!((env.name.as_str(), env.targets.len()), ("prod", 2));
    let stale = c
        .put_environment(
            &"prod".parse().unwrap(),
            &sim_env(2, 5),
            Some(deploy_client::Revision::new(env.revision.get() + 7)),
        )
        .await
        .unwrap_err();
    assert_eq!((slug(&stale), stale.problem().unwrap().status), ("precondition-failed", 412));
    c.put_environment(&"staging".parse().unwrap(), &sim_env(1, 5), None).await.unwrap();
    assert_eq!(c.get_environment(&"prod".parse().unwrap()).await.unwrap().name.as_str(), "prod");
    assert_eq!(slug(&c.get_environment(&"nope".parse().unwrap()).await.unwrap_err()), "not-found");
    let page = c.list_environments(&PageRequest { limit: 1, cursor: None }).await.unwrap();
    assert_eq!(page.items.len(), 1);
    assert!(page.next_cursor.is_some());
    let all: Vec<_> = c.environments().collect().await;
    assert_eq!(all.len(), 2);

    // Submit, replay, wait, events, watch.
    let key = SubmitOptions { idempotency_key: Some("release-2.0".parse().unwrap()), if_match: None };
    let first = c.submit(&request("prod", "2.0"), key.clone()).await.unwrap();
    assert!(!first.replayed);
    assert_eq!(first.deployment.status(), DeploymentStatus::Queued);
    let replay = c.submit(&request("prod", "2.0"), key).await.unwrap();
    assert!(replay.replayed);
    assert_eq!(replay.deployment.id(), first.deployment.id());
    let id = first.deployment.id();
    let done = c.wait(id, Duration::from_secs(30)).await.unwrap();
    assert_eq!(done.status(), DeploymentStatus::Succeeded);
    assert_eq!(c.get_deployment(id).await.unwrap().status(), DeploymentStatus::Succeeded);
    let events = c.events(id, 0, 500).await.unwrap();
    assert_eq!(events.next_after, events.items.last().unwrap().seq);
    let watched: Vec<_> = c.watch(id, 0).map(Result::unwrap).collect().await;
    assert_eq!(watched, events.items, "watching a finished deployment replays its history and ends");
    let tail: Vec<_> = c.watch(id, 2).map(Result::unwrap).collect().await;
    assert_eq!(tail.first().unwrap().seq, 3);

    // Validation problems name their fields.
    let mut bad = request("prod", "");
    bad.service = String::new();
    let invalid = c.submit(&bad, SubmitOptions::default()).await.unwrap_err();
    let p = invalid.problem().unwrap();
    assert_eq!((p.slug(), p.status), ("validation", 400));
    let fields: Vec<&str> = p.errors.iter().map(|e| e.field.as_str()).collect();
    assert!(fields.contains(&"service") && fields.contains(&"version"), "{fields:?}");
    assert!(p.request_id.is_some());

    // Cancel, rollback, listings.
    assert_eq!(slug(&c.cancel(id).await.unwrap_err()), "already-finished");
    let rollback = c.rollback(id, None).await.unwrap();
    assert_eq!(rollback.deployment.rollback_of(), Some(id));
    let rolled = c.wait(rollback.deployment.id(), Duration::from_secs(30)).await.unwrap();
    assert_eq!(rolled.status(), DeploymentStatus::Succeeded);
    let staging = c.submit(&request("staging", "2.0"), SubmitOptions::default()).await.unwrap();
    let in_prod = DeploymentFilter { environment: Some("prod".parse().unwrap()), ..Default::default() };
    let listed = c.list_deployments(&in_prod, &PageRequest { limit: 1, cursor: None }).await.unwrap();
    assert_eq!(listed.items[0].id(), rollback.deployment.id(), "newest first");
    let prod: Vec<_> = c.deployments(in_prod).map(Result::unwrap).collect().await;
    assert_eq!(prod.len(), 2);
    let every: Vec<_> = c.deployments(DeploymentFilter::default()).map(Result::unwrap).collect().await;
    assert_eq!(every.len(), 3);
    let queued = DeploymentFilter { status: Some(DeploymentStatus::Succeeded), ..Default::default() };
    let succeeded: Vec<_> = c.deployments(queued).map(Result::unwrap).collect().await;
    assert!(succeeded.iter().all(|d| d.status() == DeploymentStatus::Succeeded) && succeeded.len() >= 2);
    c.wait(staging.deployment.id(), Duration::from_secs(30)).await.unwrap();
    // Cancel: a slow rollout, cancelled while it runs, ends cancelled.
    c.put_environment(&"slow".parse().unwrap(), &sim_env(3, 400), None).await.unwrap();
    let mut slow = request("slow", "2.0");
    slow.strategy = serde_json::from_value(serde_json::json!({"type": "rolling", "batch_size": 1})).unwrap();
    let running = c.submit(&slow, SubmitOptions::default()).await.unwrap().deployment.id();
    let asked = c.cancel(running).await.unwrap();
    assert!(asked.cancel_requested() || asked.status() == DeploymentStatus::Cancelled, "{asked:?}");
    assert_eq!(c.wait(running, Duration::from_secs(30)).await.unwrap().status(), DeploymentStatus::Cancelled);

    // Keys and audit.
    let viewer_env = [EnvironmentPattern::new("prod").unwrap()];
    let created = c.create_api_key("reader", Role::Viewer, &viewer_env).await.unwrap();
    let viewer_key = created.key.clone().unwrap();
    assert!(viewer_key.starts_with("dk_"));
    assert!(c.list_api_keys().await.unwrap().iter().all(|k| k.key.is_none()), "keys are never listed");
    let viewer = client(&base(&server)).clone();
    let viewer = deploy_client::Client::builder(viewer.base_url()).token(viewer_key).build().unwrap();
    assert_eq!(viewer.get_deployment(id).await.unwrap().id(), id);
    assert_eq!(slug(&viewer.submit(&request("prod", "3.0"), SubmitOptions::default()).await.unwrap_err()), "forbidden");
    c.delete_api_key(created.id).await.unwrap();
    assert_eq!(slug(&c.delete_api_key(created.id).await.unwrap_err()), "not-found");
    let audit = c
        .audit(
            &AuditFilter { actor: Some("key:bootstrap-admin".into()), environment: None },
            &PageRequest { limit: 500, cursor: None },
        )
        .await
        .unwrap();
    assert!(audit.items.iter().any(|e| e.action == "deployment.submit"));

    // Webhooks.
    let hook = c
        .create_webhook(&NewWebhook {
            url: "http://127.0.0.1:9/hook".into(),
            events: vec!["deployment.*".into()],
            environments: vec![],
        })
        .await
        .unwrap();
    assert!(hook.secret.as_deref().unwrap().starts_with("whsec_"));
    assert_eq!(c.get_webhook(hook.id).await.unwrap().secret, None);
    assert_eq!(c.list_webhooks().await.unwrap().len(), 1);
    let _ = c.submit(&request("prod", "4.0"), SubmitOptions::default()).await.unwrap();
    let deliveries = c.deliveries(hook.id, &PageRequest { limit: 50, cursor: None }).await.unwrap();
    assert!(!deliveries.items.is_empty());
    let again = c.redeliver(hook.id, &deliveries.items[0].id).await.unwrap();
    assert_eq!(again.id, deliveries.items[0].id);
    assert_eq!(slug(&c.redeliver(hook.id, "msg_none").await.unwrap_err()), "not-found");
    c.delete_webhook(hook.id).await.unwrap();

    // A wrong token is a typed problem, not a transport error.
    let stranger = deploy_client::Client::builder(base(&server)).token("dk_nope").build().unwrap();
    assert_eq!(slug(&stranger.get_environment(&"prod".parse().unwrap()).await.unwrap_err()), "unauthenticated");
    server.shutdown().await;
    let _ = ADMIN;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_submission_whose_answer_is_lost_is_retried_into_exactly_one_deployment() {
    let (server, _dir) = deployd("client-lost").await;
    let direct = client(&base(&server));
    direct.put_environment(&"prod".parse().unwrap(), &sim_env(2, 5), None).await.unwrap();
    let proxy = Proxy::start(server.addr, Fault::LoseFirstAnswer).await;
    let via_proxy = client(&proxy.url());
    let submitted = via_proxy.submit(&request("prod", "2.0"), SubmitOptions::default()).await.unwrap();
    assert!(proxy.connections() >= 2, "the first answer was lost and the call retried");
    assert!(submitted.replayed, "the retry got the first attempt's deployment");
    let all: Vec<_> = direct.deployments(DeploymentFilter::default()).map(Result::unwrap).collect().await;
    assert_eq!(all.len(), 1, "exactly one deployment");
    assert_eq!(all[0].id(), submitted.deployment.id());
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_resumes_across_forced_disconnects_without_losing_or_repeating_events() {
    let (server, _dir) = deployd("client-watch").await;
    let direct = client(&base(&server));
    direct.put_environment(&"prod".parse().unwrap(), &sim_env(4, 150), None).await.unwrap();
    let mut req = request("prod", "2.0");
    req.strategy = serde_json::from_value(serde_json::json!({"type": "rolling", "batch_size": 1})).unwrap();
    let id = direct.submit(&req, SubmitOptions::default()).await.unwrap().deployment.id();
    // Every connection is cut after 700 bytes: the headers and an event or two.
    let proxy = Proxy::start(server.addr, Fault::CutAfter(700)).await;
    let watched: Vec<_> = client(&proxy.url()).watch(id, 0).map(Result::unwrap).collect().await;
    let history = direct.events(id, 0, 500).await.unwrap().items;
    assert!(proxy.connections() >= 3, "the stream was cut {} times", proxy.connections());
    let seqs: Vec<u64> = watched.iter().map(|e| e.seq).collect();
    assert_eq!(seqs, (1..=history.len() as u64).collect::<Vec<_>>(), "every event once, in order");
    assert_eq!(watched, history);
    assert!(watched.last().unwrap().event_type.is_terminal());
    server.shutdown().await;
}

/// A server that answers each request from a script of statuses, counting requests.
async fn scripted(
    statuses: Vec<(u16, Option<&'static str>)>,
) -> (String, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    use std::sync::atomic::Ordering;
    let count = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let seen = count.clone();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((mut socket, _)) = listener.accept().await else { return };
            let n = seen.fetch_add(1, Ordering::SeqCst);
            let (status, retry_after) = statuses.get(n).copied().unwrap_or((200, None));
            tokio::spawn(async move {
                use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
                let mut buf = vec![0u8; 65536];
                let _ = socket.read(&mut buf).await;
                let body = if status == 200 {
                    r#"{"status":"ok"}"#.to_owned()
                } else {
                    format!(r#"{{"type":"/problems/x","title":"T","status":{status},"detail":"d"}}"#)
                };
                let extra = retry_after.map(|r| format!("retry-after: {r}\r\n")).unwrap_or_default();
                let head = format!(
                    "HTTP/1.1 {status} X\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n{extra}\r\n",
                    body.len()
                );
                let _ = socket.write_all(format!("{head}{body}").as_bytes()).await;
            });
        }
    });
    (format!("http://{addr}"), count)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_follow_the_status_and_retry_after_and_never_repeat_a_4xx() {
    use std::sync::atomic::Ordering;
    // 503, 429 with Retry-After: 1, then 200: three requests, and the second wait is at least a second.
    let (url, count) = scripted(vec![(503, None), (429, Some("1")), (200, None)]).await;
    let started = std::time::Instant::now();
    client(&url).health().await.unwrap();
    assert_eq!(count.load(Ordering::SeqCst), 3);
    assert!(started.elapsed() >= Duration::from_secs(1), "Retry-After was honoured");

    // A 400 is final: one request, and the problem comes back as a value.
    let (url, count) = scripted(vec![(400, None)]).await;
    let e = client(&url).health().await.unwrap_err();
    assert_eq!(count.load(Ordering::SeqCst), 1);
    assert_eq!((e.problem().unwrap().status, e.problem().unwrap().detail.as_deref()), (400, Some("d")));

    // Persistent 500s: as many attempts as the policy allows, then the last problem.
    let (url, count) = scripted(vec![(500, None); 10]).await;
    let e = client(&url).health().await.unwrap_err();
    assert_eq!(count.load(Ordering::SeqCst), 5, "max_attempts");
    assert_eq!(e.problem().unwrap().status, 500);
}
