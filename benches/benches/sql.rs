//! The SQL stores, per database: acceptance throughput and progress-write throughput, beside a raw single-row
//! `INSERT` through the same pool in the same run.
//!
//! `cargo bench -p deploy-benches --bench sql` (PostgreSQL too when `DEPLOY_TEST_PG_URL` is set).

// A benchmark whose set-up fails must stop loudly; there is no caller to return an error to.
#![allow(clippy::panic)]

use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use deploy_core::{Acceptance, Lease, NewEvent, PageRequest, ProgressUpdate, Store, TargetStatus};
use deploy_sql::SqlStore;

/// Callers at once in the concurrent variants.
const CONCURRENCY: usize = 16;

fn runtime() -> tokio::runtime::Runtime {
    match tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build() {
        Ok(rt) => rt,
        Err(e) => panic!("tokio runtime: {e}"),
    }
}

fn ok<T, E: std::fmt::Debug>(r: Result<T, E>, what: &str) -> T {
    match r {
        Ok(v) => v,
        Err(e) => panic!("{what}: {e:?}"),
    }
}

/// The stores to measure: SQLite in `dir`, and PostgreSQL in a new database when `DEPLOY_TEST_PG_URL` is set.
async fn stores(dir: &std::path::Path) -> Vec<(&'static str, SqlStore)> {
    let mut out = vec![("sqlite", ok(SqlStore::sqlite(dir).await, "open sqlite"))];
    if let Ok(base) = std::env::var("DEPLOY_TEST_PG_URL") {
        sqlx::any::install_default_drivers();
        let admin = ok(sqlx::any::AnyPoolOptions::new().max_connections(1).connect(&base).await, "connect");
        let name = format!("deploy_test_bench_{}", uuid::Uuid::now_v7().simple());
        ok(sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}"))).execute(&admin).await, "create db");
        let url = match base.rsplit_once('/') {
            Some((prefix, _)) => format!("{prefix}/{name}"),
            None => panic!("DEPLOY_TEST_PG_URL must end in /database"),
        };
        out.push(("postgres", ok(SqlStore::postgres(&url).await, "open postgres")));
    } else {
        println!("postgres benchmarks skipped: DEPLOY_TEST_PG_URL is not set");
    }
    for (_, store) in &out {
        ok(
            sqlx::query("CREATE TABLE IF NOT EXISTS bench_raw (id TEXT PRIMARY KEY, doc TEXT NOT NULL)")
                .execute(store.pool())
                .await,
            "raw table",
        );
    }
    out
}

fn acceptance(env: &str, version: &str) -> Acceptance {
    ok(deploy_benches::acceptance(env, "svc", version), "acceptance")
}

fn sql(c: &mut Criterion) {
    let rt = runtime();
    // Removed when the benchmarks are done (after the stores, which are dropped first).
    let dir = deploy_testkit::fixtures::temp_dir("bench-sql");
    let stores = rt.block_on(stores(&dir));
    let doc = "x".repeat(200);
    for (db, store) in &stores {
        let mut group = c.benchmark_group(format!("sql/{db}"));
        group.sample_size(20).warm_up_time(Duration::from_secs(2)).measurement_time(Duration::from_secs(8));
        let env = deploy_testkit::fixtures::env_name("bench");
        let targets: Vec<String> = (0..100).map(|i| format!("t-{i}")).collect();
        let refs: Vec<&str> = targets.iter().map(String::as_str).collect();
        let spec = deploy_testkit::fixtures::environment(&refs, "noop", Default::default());
        ok(rt.block_on(store.put_environment(&env, spec, None, time::OffsetDateTime::now_utc())), "environment");
        let small = deploy_testkit::fixtures::env_name("small");
        let spec = deploy_testkit::fixtures::environment(&["s-1", "s-2", "s-3", "s-4"], "noop", Default::default());
        ok(rt.block_on(store.put_environment(&small, spec, None, time::OffsetDateTime::now_utc())), "environment");

        group.throughput(Throughput::Elements(1));
        group.bench_function(BenchmarkId::new("raw_insert", "1 row"), |b| {
            b.iter(|| {
                let q = sqlx::query("INSERT INTO bench_raw (id, doc) VALUES ($1, $2)")
                    .bind(uuid::Uuid::now_v7().to_string())
                    .bind(&doc);
                ok(rt.block_on(q.execute(store.pool())), "raw insert");
            });
        });
        group.bench_function(BenchmarkId::new("accept", "4 targets"), |b| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for i in 0..iters {
                    let start = Instant::now();
                    let accepted = ok(rt.block_on(store.accept(acceptance("small", &format!("v{i}")))), "accept");
                    total += start.elapsed();
                    // Keep the queue short, as in life: cancel it outside the timed part.
                    let _ =
                        rt.block_on(store.request_cancel(accepted.deployment.id(), time::OffsetDateTime::now_utc()));
                }
                total
            });
        });

        // The same acceptance with a submitter quota (deployd's default): two more indexed counts in the acceptance.
        group.bench_function(BenchmarkId::new("accept_with_quota", "4 targets"), |b| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for i in 0..iters {
                    let mut acceptance = acceptance("small", &format!("q{i}"));
                    acceptance.quota = Some(deploy_core::QuotaCheck {
                        submitter: acceptance.draft.created_by.clone(),
                        max_open: 64,
                        max_bytes: 64 * 1024 * 1024,
                        since: deploy_core::DeploymentId::first_at(0),
                    });
                    let start = Instant::now();
                    let accepted = ok(rt.block_on(store.accept(acceptance)), "accept with quota");
                    total += start.elapsed();
                    let _ =
                        rt.block_on(store.request_cancel(accepted.deployment.id(), time::OffsetDateTime::now_utc()));
                }
                total
            });
        });

        // The same two operations from 16 concurrent callers, as a server sees them: SQLite commits concurrent
        // acceptances together (group commit); raw inserts commit one by one.
        group.throughput(Throughput::Elements(CONCURRENCY as u64));
        group.bench_function(BenchmarkId::new("raw_insert", format!("{CONCURRENCY} concurrent")), |b| {
            b.iter(|| {
                rt.block_on(async {
                    let mut set = tokio::task::JoinSet::new();
                    for _ in 0..CONCURRENCY {
                        let pool = store.pool().clone();
                        let doc = doc.clone();
                        set.spawn(async move {
                            sqlx::query("INSERT INTO bench_raw (id, doc) VALUES ($1, $2)")
                                .bind(uuid::Uuid::now_v7().to_string())
                                .bind(doc)
                                .execute(&pool)
                                .await
                                .map(drop)
                        });
                    }
                    for r in set.join_all().await {
                        ok(r, "raw insert");
                    }
                });
            });
        });
        group.bench_function(BenchmarkId::new("accept", format!("{CONCURRENCY} concurrent, 4 targets")), |b| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for i in 0..iters {
                    let start = Instant::now();
                    let ids = rt.block_on(async {
                        let mut set = tokio::task::JoinSet::new();
                        for j in 0..CONCURRENCY {
                            let store = store.clone();
                            set.spawn(async move { store.accept(acceptance("small", &format!("c{i}-{j}"))).await });
                        }
                        set.join_all().await.into_iter().map(|r| ok(r, "accept").deployment.id()).collect::<Vec<_>>()
                    });
                    total += start.elapsed();
                    for id in ids {
                        let _ = rt.block_on(store.request_cancel(id, time::OffsetDateTime::now_utc()));
                    }
                }
                total
            });
        });

        // Progress: one transaction carrying 100 target entries and their events.
        let accepted = ok(rt.block_on(store.accept(acceptance("bench", "2"))), "accept");
        let claim =
            ok(rt.block_on(store.claim("bench", time::OffsetDateTime::now_utc(), Duration::from_secs(3600))), "claim");
        let claim = match claim {
            Some(c) if c.deployment.id() == accepted.deployment.id() => c,
            other => panic!("expected to claim the bench deployment, got {other:?}"),
        };
        let lease: Lease = claim.lease;
        let entries = claim.deployment.targets().to_vec();
        group.throughput(Throughput::Elements(entries.len() as u64));
        group.bench_function(BenchmarkId::new("progress", "100 targets per transaction"), |b| {
            let mut flip = false;
            b.iter(|| {
                flip = !flip;
                let now = time::OffsetDateTime::now_utc();
                let status = if flip { TargetStatus::InProgress } else { TargetStatus::Verifying };
                let mut update = ProgressUpdate { now: Some(now), ..ProgressUpdate::default() };
                for (i, e) in entries.iter().enumerate() {
                    let mut e = e.clone();
                    e.status = status;
                    update.events.push(NewEvent::target(now, e.id.clone(), status, "bench"));
                    update.targets.push((i, e));
                }
                let _ = ok(rt.block_on(store.record(&lease, update)), "record");
            });
        });
        group.bench_function(BenchmarkId::new("raw_insert", "100 rows, one per transaction"), |b| {
            b.iter(|| {
                for _ in 0..100 {
                    let q = sqlx::query("INSERT INTO bench_raw (id, doc) VALUES ($1, $2)")
                        .bind(uuid::Uuid::now_v7().to_string())
                        .bind(&doc);
                    ok(rt.block_on(q.execute(store.pool())), "raw insert");
                }
            });
        });
        group.finish();
        let _ = rt.block_on(store.list_deployments(&Default::default(), &PageRequest::default()));
    }
}

criterion_group!(benches, sql);
criterion_main!(benches);
