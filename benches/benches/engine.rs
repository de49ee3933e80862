//! The engine's cost per target: a rolling deployment over 1,000, 10,000 and 100,000 targets with a no-op executor and
//! the in-memory store, beside a bare loop that calls the same executor for every target, in the same run.
//!
//! `cargo bench -p deploy-benches --bench engine`

// A benchmark whose set-up fails must stop loudly; there is no caller to return an error to.
#![allow(clippy::panic)]

use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use deploy_benches::{NoopExecutor, prepared, resident_bytes};
use deploy_core::{
    ApplyContext, DeploymentId, DesiredState, EnvironmentName, Executor, ResolvedSecrets, ServiceName, Target,
    TargetId, Version,
};

fn runtime() -> tokio::runtime::Runtime {
    match tokio::runtime::Builder::new_current_thread().enable_time().build() {
        Ok(rt) => rt,
        Err(e) => panic!("tokio runtime: {e}"),
    }
}

/// What the engine does per target, with no engine: observe, apply, verify, in a loop.
async fn bare_loop(targets: &[Target], desired: &DesiredState) {
    let executor = NoopExecutor;
    let secrets = ResolvedSecrets::new();
    let id = DeploymentId::new();
    for t in targets {
        let _ = executor.observe(t, None).await;
        let _ = executor
            .apply(t, ApplyContext { deployment: id, desired, secrets: &secrets, fencing_token: 0, progress: None })
            .await;
        let _ = executor.verify(t, desired).await;
    }
}

fn targets(n: usize) -> Vec<Target> {
    let env = EnvironmentName::new("bench").ok();
    (0..n)
        .filter_map(|i| {
            Some(Target {
                environment: env.clone()?,
                id: TargetId::new(format!("t-{i}")).ok()?,
                labels: Default::default(),
                executor: "noop".parse().ok()?,
                config: serde_json::Value::Null,
            })
        })
        .collect()
}

fn engine(c: &mut Criterion) {
    let rt = runtime();
    let mut group = c.benchmark_group("rolling_deployment");
    group.sample_size(10).warm_up_time(Duration::from_secs(1)).measurement_time(Duration::from_secs(5));
    for n in [1_000usize, 10_000, 100_000] {
        group.throughput(Throughput::Elements(n as u64));
        let ts = targets(n);
        let desired = match (ServiceName::new("svc"), Version::new("2.0")) {
            (Ok(s), Ok(v)) => DesiredState::bare(s, v),
            _ => panic!("fixture names"),
        };
        group.bench_with_input(BenchmarkId::new("bare_loop", n), &n, |b, _| {
            b.iter(|| rt.block_on(bare_loop(&ts, &desired)));
        });
        group.bench_with_input(BenchmarkId::new("engine", n), &n, |b, &n| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    let (store, orchestrator) = match rt.block_on(prepared(n)) {
                        Ok(p) => p,
                        Err(e) => panic!("setup: {e}"),
                    };
                    let start = Instant::now();
                    let driven = rt.block_on(orchestrator.run_until_idle());
                    total += start.elapsed();
                    assert!(matches!(driven, Ok(1)), "one deployment driven: {driven:?}");
                    drop(store);
                }
                total
            });
        });
    }
    group.finish();
}

/// Memory held per target once a deployment over `n` targets has finished (store, record and events kept), as the
/// growth of resident memory: an upper bound, since the allocator keeps some freed memory.
fn memory(_: &mut Criterion) {
    let rt = runtime();
    for n in [10_000usize, 100_000] {
        let before = resident_bytes().unwrap_or(0);
        let (store, orchestrator) = match rt.block_on(prepared(n)) {
            Ok(p) => p,
            Err(e) => panic!("setup: {e}"),
        };
        let _ = rt.block_on(orchestrator.run_until_idle());
        let after = resident_bytes().unwrap_or(0);
        let (_, events, _) = store.sizes();
        println!(
            "memory/held_per_target/{n}: {:.0} bytes per target ({events} events kept, resident +{:.1} MiB)",
            after.saturating_sub(before) as f64 / n as f64,
            after.saturating_sub(before) as f64 / (1024.0 * 1024.0)
        );
        drop((store, orchestrator));
    }
}

criterion_group!(benches, memory, engine);
criterion_main!(benches);
