//! SQLite's group commit: concurrent acceptances and audit entries share transactions, yet each is refused, replayed
//! or accepted exactly as if it ran alone, and everything answered as accepted is on disk.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use deploy_core::AuditLog;
use std::sync::Arc;
use std::time::Duration;

use deploy_core::{
    AuditEntry, AuditFilter, ConcurrencyPolicy, DeploymentFilter, IdempotencyKey, PageRequest, Principal, Store,
    StoreError, Submission,
};
use deploy_sql::SqlStore;
use deploy_testkit::fixtures::{env_name, environment, request};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_concurrent_writes_share_transactions_but_keep_their_own_outcomes() {
    let (store, dir) = common::sqlite("group").await;
    let reopened = scenario(store, || SqlStore::sqlite(&dir)).await;
    reopened.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_concurrent_writes_share_transactions_but_keep_their_own_outcomes() {
    let Some(url) = common::postgres_url("postgres_concurrent_writes_share_transactions").await else { return };
    let store = SqlStore::postgres(&url).await.unwrap();
    scenario(store, || SqlStore::postgres(&url)).await.close().await;
}

async fn scenario<F, Fut>(store: SqlStore, reopen: F) -> SqlStore
where
    F: FnOnce() -> Fut,
    Fut: std::future::Future<Output = Result<SqlStore, deploy_sql::OpenError>>,
{
    let clock: Arc<dyn deploy_core::Clock> = Arc::new(deploy_core::SystemClock);
    let executor = Arc::new(deploy_testkit::ScriptedExecutor::new("group", clock));
    let orchestrator = common::orchestrator(&store, &executor, "group", Duration::from_secs(10));
    let admin = Principal::system("svc:group");
    let now = time::OffsetDateTime::now_utc();
    for (name, policy) in [("queued", ConcurrencyPolicy::Queue), ("rejecting", ConcurrencyPolicy::Reject)] {
        store
            .put_environment(&env_name(name), environment(&["t-1", "t-2"], "scripted", policy), None, now)
            .await
            .unwrap();
    }
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..32 {
        let o = orchestrator.clone();
        let p = admin.clone();
        tasks.spawn(async move {
            (
                "distinct",
                o.submit(&p, Submission { request: request("queued", "svc", &format!("1.{i}")), ..Default::default() })
                    .await,
            )
        });
    }
    for i in 0..16 {
        let o = orchestrator.clone();
        let p = admin.clone();
        tasks.spawn(async move {
            (
                "reject",
                o.submit(
                    &p,
                    Submission { request: request("rejecting", "svc", &format!("2.{i}")), ..Default::default() },
                )
                .await,
            )
        });
    }
    for _ in 0..16 {
        let o = orchestrator.clone();
        let p = admin.clone();
        tasks.spawn(async move {
            let submission = Submission {
                request: request("queued", "svc", "9.9"),
                idempotency_key: Some(IdempotencyKey::new("same-key").unwrap()),
                expected_revision: None,
            };
            ("keyed", o.submit(&p, submission).await)
        });
    }
    let audit_store = store.clone();
    let audits = tokio::spawn(async move {
        let mut joins = tokio::task::JoinSet::new();
        for i in 0..32 {
            let s = audit_store.clone();
            joins.spawn(async move {
                s.append_audit(AuditEntry {
                    id: uuid::Uuid::now_v7(),
                    at: time::OffsetDateTime::now_utc().replace_nanosecond(0).unwrap(),
                    actor: "key:group".into(),
                    action: "deployment.submit".into(),
                    resource: format!("r-{i}"),
                    environment: None,
                    request_id: format!("req-{i}"),
                    outcome: "success".into(),
                })
                .await
            });
        }
        joins.join_all().await
    });
    let (mut distinct, mut busy, mut accepted_reject, mut keyed_ids) = (0, 0, 0, std::collections::BTreeSet::new());
    while let Some(done) = tasks.join_next().await {
        match done.unwrap() {
            ("distinct", Ok(s)) => {
                assert!(!s.replayed);
                distinct += 1;
            }
            ("reject", Ok(_)) => accepted_reject += 1,
            ("reject", Err(deploy_core::Error::Store(StoreError::EnvironmentBusy { .. }))) => busy += 1,
            ("keyed", Ok(s)) => {
                keyed_ids.insert(s.deployment.id());
            }
            (what, other) => panic!("{what}: {other:?}"),
        }
    }
    for r in audits.await.unwrap() {
        r.unwrap();
    }
    assert_eq!(distinct, 32);
    assert_eq!((accepted_reject, busy), (1, 15), "policy reject: one accepted, the rest refused");
    assert_eq!(keyed_ids.len(), 1, "one deployment for one key");

    let (transactions, writes) = store.group_commits();
    assert_eq!(writes, 32 + 16 + 16 + 32, "every write went through the group");
    assert!(transactions < writes, "concurrent writes shared transactions ({transactions} for {writes})");
    // Everything answered as accepted is on disk, and nothing refused or replayed left a trace.
    store.close().await;
    let reopened = reopen().await.unwrap();
    let page = PageRequest { limit: 500, cursor: None };
    let queued = reopened
        .list_deployments(&DeploymentFilter { environment: Some(env_name("queued")), ..Default::default() }, &page)
        .await
        .unwrap();
    assert_eq!(queued.items.len(), 33);
    let rejecting = reopened
        .list_deployments(&DeploymentFilter { environment: Some(env_name("rejecting")), ..Default::default() }, &page)
        .await
        .unwrap();
    assert_eq!(rejecting.items.len(), 1);
    let env = reopened.get_environment(&env_name("queued")).await.unwrap();
    assert_eq!(env.revision.get(), 1 + 33, "one revision bump per accepted deployment, none for replays");
    let env = reopened.get_environment(&env_name("rejecting")).await.unwrap();
    assert_eq!(env.revision.get(), 2, "refusals undo their bump");
    let audit =
        reopened.list_audit(&AuditFilter { actor: Some("key:group".into()), environment: None }, &page).await.unwrap();
    assert_eq!(audit.items.len(), 32);
    reopened
}
