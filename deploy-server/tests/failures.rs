//! When the store fails, the API answers 503 problems that say nothing about the cause, and `/readyz` says not ready.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::Arc;

use deploy_core::{ExecutorRouter, KeyStore, Orchestrator, Role, ShutdownSignal, Store, StoreError};
use deploy_server::{ApiConfig, AppState, Authenticator, Metrics, router};
use deploy_testkit::Composite;
use deploy_testkit::mocks::MockStore;

const KEY: &str = "dk_failfailfailfailfailfailfailfailfailfailfai";
const SECRET_CAUSE: &str = "connection to 10.1.2.3:5432 refused for user deploy password=hunter2";

#[tokio::test]
async fn store_failures_are_503_problems_without_internal_detail() {
    let mut store = MockStore::new();
    let record = deploy_core::ApiKeyRecord {
        target: None,
        owner: None,
        id: uuid::Uuid::now_v7(),
        name: "ops".into(),
        role: Role::Admin,
        environments: vec![deploy_core::EnvironmentPattern::any()],
        key_hash: deploy_server::key_digest(KEY),
        created_by: "test".into(),
        created_at: time::OffsetDateTime::now_utc(),
    };
    store.expect_get_deployment().returning(|_| Err(StoreError::Unavailable(SECRET_CAUSE.into())));
    store.expect_list_environments().returning(|_| Err(StoreError::Unavailable(SECRET_CAUSE.into())));
    store.expect_get_environment().returning(|_| Err(StoreError::Corrupt(format!("row 7: {SECRET_CAUSE}"))));
    // The engine's store fails; the server's tables (the key, the audit log) work.
    let tables = deploy_testkit::MemoryStore::new();
    tables.create_api_key(record).await.unwrap();
    let store = Arc::new(Composite { engine: store, tables });
    let orchestrator = Orchestrator::builder(Arc::clone(&store) as Arc<dyn Store>, ExecutorRouter::new()).build();
    let state = AppState::new(
        orchestrator,
        Arc::clone(&store) as Arc<dyn deploy_core::FullStore>,
        Authenticator::new(store, None),
        ApiConfig::default(),
        Arc::new(Metrics::default()),
        ShutdownSignal::never(),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, router(state)).await });
    let http = reqwest::Client::new();

    let id = deploy_core::DeploymentId::new();
    for (path, status) in [
        (format!("/v1/deployments/{id}"), 503),
        ("/v1/environments".to_owned(), 503),
        ("/v1/environments/prod".to_owned(), 500),
        ("/readyz".to_owned(), 503),
    ] {
        let resp = http.get(format!("{base}{path}")).bearer_auth(KEY).send().await.unwrap();
        assert_eq!(resp.status().as_u16(), status, "{path}");
        assert_eq!(resp.headers()["content-type"], "application/problem+json");
        assert!(resp.headers().get("x-request-id").is_some());
        if status == 503 {
            assert!(resp.headers().get("retry-after").is_some(), "{path}: a 503 says when to retry");
        }
        let text = resp.text().await.unwrap();
        // An unreachable store is its own kind (retry later); anything else is internal.
        let kind = if status == 503 { "/problems/store-unavailable" } else { "/problems/internal" };
        assert!(text.contains(kind), "{path}: {text}");
        for leak in ["10.1.2.3", "hunter2", "password", "row 7", "5432"] {
            assert!(!text.contains(leak), "{path} leaks {leak:?}: {text}");
        }
    }
}
