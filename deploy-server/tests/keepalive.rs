//! An event stream that has nothing to say sends keep-alive comments, and ends when the server shuts down.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::Arc;
use std::time::Duration;

use deploy_core::{ExecutorRouter, Orchestrator, Principal, ShutdownSignal, Submission};
use deploy_executors::SimExecutor;
use deploy_server::{ApiConfig, AppState, Authenticator, Metrics, router};
use deploy_testkit::MemoryStore;
use futures::StreamExt as _;

const KEY: &str = "dk_keepalivekeepalivekeepalivekeepalivekeepa12";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_streams_send_keep_alive_comments_and_end_on_shutdown() {
    let store = Arc::new(MemoryStore::new());
    let now = time::OffsetDateTime::now_utc();
    let record = deploy_core::ApiKeyRecord {
        target: None,
        owner: None,
        id: uuid::Uuid::now_v7(),
        name: "ops".into(),
        role: deploy_core::Role::Admin,
        environments: vec![deploy_core::EnvironmentPattern::any()],
        key_hash: deploy_server::key_digest(KEY),
        created_by: "test".into(),
        created_at: now,
    };
    deploy_core::KeyStore::create_api_key(&*store, record).await.unwrap();
    let sim = Arc::new(SimExecutor::in_memory());
    let orchestrator = Orchestrator::builder(
        Arc::clone(&store) as Arc<dyn deploy_core::Store>,
        ExecutorRouter::new().with("sim", sim),
    )
    .build();
    let spec: deploy_core::EnvironmentSpec = serde_json::from_value(serde_json::json!({"targets": [
        {"id": "slow-1", "executor": "sim", "config": {"initial_version": "1.0", "apply_ms": 60000}}]}))
    .unwrap();
    let admin = Principal::system("svc:test");
    let env: deploy_core::EnvironmentName = "prod".parse().unwrap();
    orchestrator.put_environment(&admin, &env, spec, None).await.unwrap();
    let mut request = deploy_testkit::fixtures::request("prod", "checkout", "2.0");
    request.progress_deadline = Some("20m".into());
    let id = orchestrator.submit(&admin, Submission { request, ..Default::default() }).await.unwrap().deployment.id();
    let (stop, shutdown) = ShutdownSignal::new();
    let controller = {
        let o = orchestrator.clone();
        let s = shutdown.clone();
        tokio::spawn(async move { o.run(s).await })
    };
    let config = ApiConfig { sse_keep_alive: Duration::from_millis(50), ..ApiConfig::default() };
    let state = AppState::new(
        orchestrator,
        store.clone(),
        Authenticator::new(store, None),
        config,
        Arc::new(Metrics::default()),
        shutdown,
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/v1/deployments/{id}/events", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, router(state)).await });

    let resp =
        reqwest::Client::new().get(url).bearer_auth(KEY).header("accept", "text/event-stream").send().await.unwrap();
    let mut body = resp.bytes_stream();
    let mut text = String::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while text.matches(":keep-alive").count() + text.matches(": keep-alive").count() < 3 {
        let next = tokio::time::timeout_at(deadline, body.next()).await.expect("keep-alives within 10 s");
        let chunk = next.unwrap_or_else(|| panic!("the stream ended early: {text}")).unwrap();
        text.push_str(&String::from_utf8_lossy(&chunk));
    }
    assert!(text.contains("event: deployment.queued"), "the history comes first: {text}");
    // Shutting down ends the stream (a draining server does not wait for idle watchers).
    stop.fire();
    let ended = tokio::time::timeout(Duration::from_secs(10), async {
        while let Some(chunk) = body.next().await {
            if chunk.is_err() {
                break;
            }
        }
    })
    .await;
    assert!(ended.is_ok(), "the stream ends after shutdown");
    controller.abort();
}
