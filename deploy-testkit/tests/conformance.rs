//! The testkit's own implementations pass the conformance suites they ship.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::Duration;

use deploy_core::{EnvironmentName, Target, TargetId, Version};
use deploy_testkit::{MemoryStore, ScriptedExecutor, TestClock, conformance};

#[tokio::test]
async fn memory_store_passes_the_store_suite() {
    let store = MemoryStore::new();
    tokio::time::timeout(Duration::from_secs(60), conformance::store::run_all(&store)).await.expect("suite finished");
}

#[tokio::test]
async fn memory_store_suite_functions_run_concurrently_on_one_store() {
    let store = MemoryStore::new();
    let s = &store;
    let all = futures::future::join_all([
        Box::pin(conformance::store::idempotent_acceptance(s))
            as std::pin::Pin<Box<dyn std::future::Future<Output = ()>>>,
        Box::pin(conformance::store::concurrency_policies(s)),
        Box::pin(conformance::store::listings_page_with_cursors(s)),
        Box::pin(conformance::store::cancel_requests(s)),
    ]);
    tokio::time::timeout(Duration::from_secs(60), all).await.expect("suite finished");
}

#[tokio::test(start_paused = true)]
async fn scripted_executor_passes_the_executor_suite() {
    let executor = ScriptedExecutor::new("suite", Arc::new(TestClock::new())).with_target("t-1", Some("0.9"));
    let target = Target {
        environment: EnvironmentName::new("suite").unwrap(),
        id: TargetId::new("t-1").unwrap(),
        labels: Default::default(),
        executor: "scripted".into(),
        config: serde_json::Value::Null,
    };
    let (v1, v2) = (Version::new("1.0").unwrap(), Version::new("2.0").unwrap());
    tokio::time::timeout(
        Duration::from_secs(60),
        conformance::executor::run_all(&executor, &target, &v1, &v2, Duration::from_secs(5)),
    )
    .await
    .expect("suite finished");
}
