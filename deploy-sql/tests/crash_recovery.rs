//! A controller process killed with SIGKILL at random moments of rollouts, again and again: after each restart every
//! accepted deployment is still there, and in the end every one is terminal with a consistent record.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::path::Path;
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use deploy_core::spec::StrategyRequest;
use deploy_core::{
    ConcurrencyPolicy, DeploymentId, DeploymentRequest, Orchestrator, Principal, ShutdownSignal, Store, Submission,
    Summary,
};
use deploy_sql::SqlStore;
use deploy_testkit::fixtures::{env_name, environment, request};
use deploy_testkit::{Fault, ScriptedExecutor};

const CHILD_DIR: &str = "DEPLOY_SQL_CRASH_CHILD_DIR";
const TARGETS: [&str; 6] = ["t-1", "t-2", "t-3", "t-4", "t-5", "t-6"];

/// The controller the child process runs: a slow scripted executor (every apply takes 150ms) over the store in `dir`.
fn controller(store: &SqlStore, owner: &str) -> Orchestrator {
    let clock: Arc<dyn deploy_core::Clock> = Arc::new(deploy_core::SystemClock);
    let executor = Arc::new(ScriptedExecutor::new(owner, clock));
    for t in TARGETS {
        executor.add_target(t, Some("0"));
        executor.add_fault(t, None, Fault::Slow(Duration::from_millis(150)));
    }
    common::orchestrator(store, &executor, owner, Duration::from_secs(1))
}

fn slow_rolling(version: &str) -> DeploymentRequest {
    let mut r = request("crash", "svc", version);
    r.strategy = Some(StrategyRequest::Rolling { batch_size: Some(2.into()), pause: None });
    r.verify = Some(deploy_core::spec::VerifyRequest {
        timeout: Some("5s".into()),
        interval: Some("50ms".into()),
        healthy_for: Some("100ms".into()),
    });
    r
}

async fn prepare(dir: &Path) -> (SqlStore, Orchestrator) {
    let store = SqlStore::sqlite(dir).await.unwrap();
    let o = controller(&store, "parent");
    let admin = Principal::system("t");
    let env = env_name("crash");
    if store.get_environment(&env).await.is_err() {
        o.put_environment(&admin, &env, environment(&TARGETS, "scripted", ConcurrencyPolicy::Queue), None)
            .await
            .unwrap();
    }
    (store, o)
}

/// Two roles. Started by `deployments_survive_sigkill_at_random_moments` with `DEPLOY_SQL_CRASH_CHILD_DIR` set, it is
/// the child: it runs a controller on that database until it is killed. Run on its own, it checks that the child's
/// controller finishes a deployment on a fresh database.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_child() {
    if let Ok(dir) = std::env::var(CHILD_DIR) {
        let store = SqlStore::sqlite(&dir).await.unwrap();
        let o = controller(&store, &format!("child-{}", std::process::id()));
        let (_never, signal) = ShutdownSignal::new();
        o.run(signal).await;
        return;
    }
    let dir = common::temp_dir("crash-child");
    let (store, o) = prepare(&dir).await;
    let id =
        o.submit(&Principal::system("t"), Submission { request: slow_rolling("1"), ..Submission::default() }).await;
    let id = id.unwrap().deployment.id();
    tokio::time::timeout(Duration::from_secs(60), o.run_until_idle()).await.expect("in time").unwrap();
    assert_eq!(store.get_deployment(id).await.unwrap().status(), deploy_core::DeploymentStatus::Succeeded);
}

/// A pseudo-random number below `bound`, from the random bits of a UUIDv7.
fn random_below(bound: u64) -> u64 {
    (uuid::Uuid::now_v7().as_u128() as u64) % bound.max(1)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deployments_survive_sigkill_at_random_moments() {
    let dir = common::temp_dir("crash");
    let (store, o) = prepare(&dir).await;
    let admin = Principal::system("t");
    let exe = std::env::current_exe().unwrap();
    let mut accepted: Vec<DeploymentId> = Vec::new();
    let started = std::time::Instant::now();
    let mut kills_mid_rollout = 0;
    for round in 0..24 {
        for n in 0..=random_below(2) {
            let version = format!("{round}.{n}");
            let d = o.submit(&admin, Submission { request: slow_rolling(&version), ..Submission::default() }).await;
            accepted.push(d.unwrap().deployment.id());
        }
        let mut child = tokio::process::Command::new(&exe)
            .args(["crash_child", "--exact", "--test-threads=1"])
            .env(CHILD_DIR, dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        tokio::time::sleep(Duration::from_millis(300 + random_below(1200))).await;
        // Did the child die holding a deployment in the middle of its rollout?
        let owner = format!("child-{}", child.id().unwrap_or_default());
        let held = sqlx::query("SELECT COUNT(*) AS n FROM deploy_deployments WHERE lease_owner = $1 AND terminal = 0")
            .bind(&owner)
            .fetch_one(store.pool())
            .await
            .unwrap();
        kills_mid_rollout += usize::from(sqlx::Row::get::<i64, _>(&held, "n") > 0);
        child.start_kill().unwrap(); // SIGKILL: no shutdown, no release, maybe mid-transaction.
        let status = child.wait().await.unwrap();
        assert!(!status.success(), "the child was killed, it did not finish on its own");
        // Nothing accepted is ever lost, whatever the moment of the kill.
        for id in &accepted {
            let d = store.get_deployment(*id).await.unwrap();
            assert_eq!(*d.summary(), Summary::of(d.targets()));
        }
        assert!(started.elapsed() < Duration::from_secs(120), "the rounds are bounded in time");
    }
    eprintln!("{kills_mid_rollout} of 24 kills landed mid-rollout");
    assert!(kills_mid_rollout >= 5, "only {kills_mid_rollout} kills landed mid-rollout");

    // A last controller, in this process, finishes whatever the killed ones left.
    let (stop, signal) = ShutdownSignal::new();
    let runner = tokio::spawn({
        let o = o.clone();
        async move { o.run(signal).await }
    });
    let all_done = async {
        loop {
            let mut done = true;
            for id in &accepted {
                done &= store.get_deployment(*id).await.unwrap().status().is_terminal();
            }
            if done {
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(180), all_done).await.expect("every accepted deployment ended");
    stop.fire();
    runner.await.unwrap();

    let all = deploy_core::PageRequest { limit: 500, cursor: None };
    let listed = store.list_deployments(&Default::default(), &all).await.unwrap();
    assert_eq!(listed.items.len(), accepted.len(), "no deployment appeared or vanished");
    for id in &accepted {
        let d = store.get_deployment(*id).await.unwrap();
        assert!(d.status().is_terminal(), "{id} is {}", d.status());
        assert_eq!(*d.summary(), Summary::of(d.targets()), "{id}: summary equals targets");
        assert!(d.targets().iter().all(|t| t.status.is_settled()), "{id}: nothing left in flight");
        let events = store.events(*id, 0, 10_000).await.unwrap();
        let seqs: Vec<u64> = events.iter().map(|e| e.seq).collect();
        assert_eq!(seqs, (1..=events.len() as u64).collect::<Vec<_>>(), "{id}: events without gaps");
        assert_eq!(events.iter().filter(|e| e.event_type.is_terminal()).count(), 1, "{id}: one terminal event");
    }
}
