//! Several orchestrator replicas on one database: one active deployment per environment, takeover after a replica
//! dies, fencing, and idempotent acceptance across replicas.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use deploy_core::spec::StrategyRequest;
use deploy_core::{
    ConcurrencyPolicy, DeploymentRequest, DeploymentStatus, IdempotencyKey, Orchestrator, Principal, ProgressUpdate,
    ShutdownSignal, StatusChange, Store, StoreError, Submission, Summary,
};
use deploy_sql::SqlStore;
use deploy_testkit::fixtures::{env_name, environment, request};
use deploy_testkit::{Fault, ScriptedExecutor};

fn replica(store: SqlStore, executor: &Arc<ScriptedExecutor>, owner: &str) -> Orchestrator {
    common::orchestrator(&store, executor, owner, Duration::from_secs(2))
}

fn quick(env: &str, version: &str) -> DeploymentRequest {
    let mut r = request(env, "svc", version);
    r.strategy = Some(StrategyRequest::Rolling { batch_size: Some(1.into()), pause: None });
    r.verify = Some(deploy_core::spec::VerifyRequest {
        timeout: Some("5s".into()),
        interval: Some("50ms".into()),
        healthy_for: Some("50ms".into()),
    });
    r
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_share_the_work_and_take_over_from_a_dead_one() {
    let Some(url) = common::postgres_url("two_replicas_share_the_work_and_take_over_from_a_dead_one").await else {
        return;
    };
    let (a_store, b_store) = (SqlStore::postgres(&url).await.unwrap(), SqlStore::postgres(&url).await.unwrap());
    let clock: Arc<dyn deploy_core::Clock> = Arc::new(deploy_core::SystemClock);
    let executor = Arc::new(ScriptedExecutor::new("fleet", clock));
    let envs = ["blue", "green", "red"];
    let admin = Principal::system("t");
    let a = replica(a_store.clone(), &executor, "replica-a");
    let b = replica(b_store.clone(), &executor, "replica-b");
    for env in envs {
        let ids: Vec<String> = (1..=3).map(|i| format!("{env}-{i}")).collect();
        for id in &ids {
            executor.add_target(id, Some("0"));
            executor.add_fault(id, None, Fault::Slow(Duration::from_millis(60)));
        }
        let refs: Vec<&str> = ids.iter().map(String::as_str).collect();
        a.put_environment(&admin, &env_name(env), environment(&refs, "scripted", ConcurrencyPolicy::Queue), None)
            .await
            .unwrap();
    }
    let mut ids = Vec::new();
    for round in 0..4 {
        for (i, env) in envs.iter().enumerate() {
            let via = if (round + i) % 2 == 0 { &a } else { &b };
            let d = via.submit(&admin, Submission { request: quick(env, &format!("{round}")), ..Default::default() });
            ids.push(d.await.unwrap().deployment.id());
        }
    }
    let (stop_a, signal_a) = ShutdownSignal::new();
    let (stop_b, signal_b) = ShutdownSignal::new();
    let task_a = tokio::spawn({
        let a = a.clone();
        async move { a.run(signal_a).await }
    });
    // Let A work, start B, then kill A while it holds a deployment in the middle of its rollout.
    let held_by_a = || async {
        let rows = sqlx::query(
            "SELECT id FROM deploy_deployments WHERE lease_owner = 'replica-a' AND status = 'in_progress' AND terminal = 0",
        )
        .fetch_all(a_store.pool())
        .await
        .unwrap();
        rows.iter().map(|r| sqlx::Row::get::<String, _>(r, "id")).collect::<Vec<_>>()
    };
    let a_busy = async {
        loop {
            if !held_by_a().await.is_empty() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(30), a_busy).await.expect("replica A took work");
    // B starts once A holds work: started together on a loaded machine, B could claim every environment's head first
    // and leave A nothing to die holding.
    let task_b = tokio::spawn({
        let b = b.clone();
        async move { b.run(signal_b).await }
    });
    task_a.abort();
    let _ = task_a.await;
    drop(stop_a);
    let orphaned = held_by_a().await;
    assert!(!orphaned.is_empty(), "replica A died holding a deployment in progress");

    let finished = async {
        loop {
            let mut done = true;
            for id in &ids {
                done &= b_store.get_deployment(*id).await.unwrap().status().is_terminal();
            }
            if done {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(120), finished).await.expect("replica B finished everything");
    stop_b.fire();
    task_b.await.unwrap();

    assert!(deploy_testkit::misuses().is_empty(), "{:?}", deploy_testkit::misuses());
    let mut spans: BTreeMap<String, Vec<_>> = BTreeMap::new();
    for id in &ids {
        let d = b_store.get_deployment(*id).await.unwrap();
        assert_eq!(d.status(), DeploymentStatus::Succeeded, "{id}: {:?}", d.status_reason());
        assert_eq!(*d.summary(), Summary::of(d.targets()));
        spans.entry(d.environment().to_string()).or_default().push((d.started_at().unwrap(), d.finished_at().unwrap()));
    }
    for (env, mut s) in spans {
        s.sort();
        for w in s.windows(2) {
            assert!(w[1].0 >= w[0].1, "{env}: two deployments were active at once: {w:?}");
        }
    }
    for id in &orphaned {
        let d = b_store.get_deployment(id.parse().unwrap()).await.unwrap();
        assert_eq!(d.status(), DeploymentStatus::Succeeded, "replica B finished what A left after its lease lapsed");
    }
    for env in envs {
        for i in 1..=3 {
            assert_eq!(executor.version_of(&format!("{env}-{i}")).as_deref(), Some("3"), "the last one won");
        }
    }
}

async fn fencing(store_a: SqlStore, store_b: SqlStore) {
    let admin = Principal::system("t");
    let clock: Arc<dyn deploy_core::Clock> = Arc::new(deploy_core::SystemClock);
    let executor = Arc::new(ScriptedExecutor::new("fence", clock));
    let o = replica(store_a.clone(), &executor, "a");
    o.put_environment(&admin, &env_name("fence"), environment(&["f-1"], "scripted", ConcurrencyPolicy::Queue), None)
        .await
        .unwrap();
    let id = o.submit(&admin, Submission { request: quick("fence", "1"), ..Default::default() }).await.unwrap();
    let id = id.deployment.id();
    let now = time::OffsetDateTime::now_utc();
    let first = store_a.claim("a", now, Duration::from_secs(5)).await.unwrap().expect("claimable");
    assert_eq!(first.deployment.id(), id);
    assert!(store_b.claim("b", now, Duration::from_secs(5)).await.unwrap().is_none(), "a live lease is exclusive");
    let later = deploy_core::add_duration(now, Duration::from_secs(6));
    let second = store_b.claim("b", later, Duration::from_secs(5)).await.unwrap().expect("claimable after expiry");
    assert!(second.lease.token > first.lease.token);
    let start = ProgressUpdate {
        now: Some(later),
        status: Some(StatusChange { status: DeploymentStatus::InProgress, reason: None }),
        ..ProgressUpdate::default()
    };
    let stale = store_a.record(&first.lease, start.clone()).await;
    assert!(matches!(stale, Err(StoreError::StaleToken { .. })), "{stale:?}");
    assert_eq!(store_b.get_deployment(id).await.unwrap().status(), DeploymentStatus::Queued);
    let _ = store_b.record(&second.lease, start).await.unwrap();
}

#[tokio::test]
async fn a_stale_fencing_token_is_refused_across_replicas_on_postgres() {
    let Some(url) = common::postgres_url("a_stale_fencing_token_is_refused_across_replicas_on_postgres").await else {
        return;
    };
    fencing(SqlStore::postgres(&url).await.unwrap(), SqlStore::postgres(&url).await.unwrap()).await;
}

#[tokio::test]
async fn a_stale_fencing_token_is_refused_across_handles_on_sqlite() {
    let dir = common::temp_dir("fence");
    fencing(SqlStore::sqlite(&dir).await.unwrap(), SqlStore::sqlite(&dir).await.unwrap()).await;
}

async fn identical_submissions(store_a: SqlStore, store_b: SqlStore) {
    let admin = Principal::system("ci");
    let clock: Arc<dyn deploy_core::Clock> = Arc::new(deploy_core::SystemClock);
    let executor = Arc::new(ScriptedExecutor::new("idem", clock));
    let a = replica(store_a, &executor, "a");
    let b = replica(store_b.clone(), &executor, "b");
    a.put_environment(&admin, &env_name("idem"), environment(&["i-1"], "scripted", ConcurrencyPolicy::Queue), None)
        .await
        .unwrap();
    let key = IdempotencyKey::new("release-7").unwrap();
    let submit = |o: Orchestrator| {
        let (admin, key) = (admin.clone(), key.clone());
        async move {
            o.submit(
                &admin,
                Submission { request: quick("idem", "7"), idempotency_key: Some(key), expected_revision: None },
            )
            .await
        }
    };
    let calls: Vec<_> = (0..16).map(|i| tokio::spawn(submit(if i % 2 == 0 { a.clone() } else { b.clone() }))).collect();
    let mut ids = std::collections::BTreeSet::new();
    let mut originals = 0;
    for c in calls {
        match c.await.unwrap() {
            Ok(s) => {
                ids.insert(s.deployment.id());
                originals += usize::from(!s.replayed);
            }
            // A request that raced the first one's transaction may be told to retry; it never creates a second one.
            Err(deploy_core::Error::Store(StoreError::IdempotencyKeyInFlight { .. })) => {}
            Err(e) => panic!("unexpected error: {e:?}"),
        }
    }
    assert_eq!(ids.len(), 1, "one deployment for one key");
    assert_eq!(originals, 1, "exactly one original acceptance");
    let all = store_b.list_deployments(&Default::default(), &Default::default()).await.unwrap();
    assert_eq!(all.items.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identical_submissions_through_two_replicas_create_one_deployment_on_postgres() {
    let Some(url) =
        common::postgres_url("identical_submissions_through_two_replicas_create_one_deployment_on_postgres").await
    else {
        return;
    };
    identical_submissions(SqlStore::postgres(&url).await.unwrap(), SqlStore::postgres(&url).await.unwrap()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identical_submissions_through_two_handles_create_one_deployment_on_sqlite() {
    let dir = common::temp_dir("idem");
    identical_submissions(SqlStore::sqlite(&dir).await.unwrap(), SqlStore::sqlite(&dir).await.unwrap()).await;
}

/// A replica's acceptance must plan against the environment as it is, even if another replica just changed it.
async fn acceptance_sees_changes_made_elsewhere(a: SqlStore, b: SqlStore) {
    let admin = Principal::system("ops");
    let clock: Arc<dyn deploy_core::Clock> = Arc::new(deploy_core::SystemClock);
    let executor = Arc::new(ScriptedExecutor::new("stale", clock));
    let ra = replica(a, &executor, "a");
    let rb = replica(b, &executor, "b");
    let env = env_name("moving");
    ra.put_environment(&admin, &env, environment(&["m-1"], "scripted", ConcurrencyPolicy::Queue), None).await.unwrap();
    let first = ra.submit(&admin, Submission { request: quick("moving", "1"), ..Default::default() }).await.unwrap();
    assert_eq!(first.deployment.targets().len(), 1);
    rb.put_environment(&admin, &env, environment(&["m-1", "m-2"], "scripted", ConcurrencyPolicy::Queue), None)
        .await
        .unwrap();
    let second = ra.submit(&admin, Submission { request: quick("moving", "2"), ..Default::default() }).await.unwrap();
    assert_eq!(second.deployment.targets().len(), 2, "planned against the environment another replica changed");
    assert!(second.deployment.revision() > first.deployment.revision().next(), "the change took a revision too");
    let third = ra.submit(&admin, Submission { request: quick("moving", "3"), ..Default::default() }).await.unwrap();
    assert_eq!(third.deployment.revision(), second.deployment.revision().next());
    let revision = rb.environment(&admin, &env).await.unwrap().revision;
    assert_eq!(revision, third.deployment.revision(), "every acceptance bumped the stored revision once");
}

#[tokio::test]
async fn acceptance_sees_changes_made_by_another_replica_on_postgres() {
    let Some(url) = common::postgres_url("acceptance_sees_changes_made_by_another_replica_on_postgres").await else {
        return;
    };
    acceptance_sees_changes_made_elsewhere(
        SqlStore::postgres(&url).await.unwrap(),
        SqlStore::postgres(&url).await.unwrap(),
    )
    .await;
}

#[tokio::test]
async fn acceptance_sees_changes_made_through_another_handle_on_sqlite() {
    let dir = common::temp_dir("moving");
    acceptance_sees_changes_made_elsewhere(
        SqlStore::sqlite(&dir).await.unwrap(),
        SqlStore::sqlite(&dir).await.unwrap(),
    )
    .await;
}
