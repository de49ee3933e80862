//! Deployments served from memory: a store sees its own writes at once, another replica's within `RECENT_TTL`, and a
//! finished deployment is final.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::sync::Arc;
use std::time::Duration;

use deploy_core::{ConcurrencyPolicy, DeploymentStatus, Principal, Store, Submission};
use deploy_sql::{RECENT_TTL, SqlStore};
use deploy_testkit::fixtures::{env_name, environment, request};

async fn submit(store: &SqlStore) -> deploy_core::DeploymentId {
    let clock: Arc<dyn deploy_core::Clock> = Arc::new(deploy_core::SystemClock);
    let executor = Arc::new(deploy_testkit::ScriptedExecutor::new("reads", clock));
    let o = common::orchestrator(store, &executor, "reads", Duration::from_secs(10));
    o.submit(
        &Principal::system("svc:reads"),
        Submission { request: request("prod", "svc", "2.0"), ..Default::default() },
    )
    .await
    .unwrap()
    .deployment
    .id()
}

async fn setup(store: &SqlStore) {
    let spec = environment(&["t-1"], "scripted", ConcurrencyPolicy::Queue);
    store.put_environment(&env_name("prod"), spec, None, time::OffsetDateTime::now_utc()).await.unwrap();
}

#[tokio::test]
async fn sqlite_reads_see_this_stores_writes_at_once() {
    let (store, _dir) = common::sqlite("reads").await;
    setup(&store).await;
    let id = submit(&store).await;
    assert_eq!(store.get_deployment(id).await.unwrap().status(), DeploymentStatus::Queued); // now cached
    store.request_cancel(id, time::OffsetDateTime::now_utc()).await.unwrap();
    assert_eq!(store.get_deployment(id).await.unwrap().status(), DeploymentStatus::Cancelled, "no stale copy");
    store.close().await;
}

#[tokio::test]
async fn postgres_replicas_see_each_others_writes_within_the_ttl() {
    let Some(url) = common::postgres_url("postgres_replicas_see_each_others_writes_within_the_ttl").await else {
        return;
    };
    let (a, b) = (SqlStore::postgres(&url).await.unwrap(), SqlStore::postgres(&url).await.unwrap());
    setup(&a).await;
    let id = submit(&a).await;
    assert_eq!(b.get_deployment(id).await.unwrap().status(), DeploymentStatus::Queued); // cached by replica b
    a.request_cancel(id, time::OffsetDateTime::now_utc()).await.unwrap();
    assert_eq!(a.get_deployment(id).await.unwrap().status(), DeploymentStatus::Cancelled, "a sees its own write");
    tokio::time::sleep(RECENT_TTL + Duration::from_millis(20)).await;
    let seen = b.get_deployment(id).await.unwrap();
    assert_eq!(seen.status(), DeploymentStatus::Cancelled, "b sees it once the TTL has passed");
    // Finished: final, so served from memory for good.
    assert_eq!(b.get_deployment(id).await.unwrap(), seen);
}
