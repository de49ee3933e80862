//! One `deployd` (embedded SQLite, durable) with 1,000 simulated agents: lightweight in-process clients over loopback
//! that long-poll their assignment, "apply" it at once and report, and send a heartbeat every 2 s.
//!
//! - the time for a rolling deployment (10% at a time) across all of them;
//! - the server's CPU time per heartbeat over a quiet window with only heartbeats: the server runs on a runtime of
//!   its own (threads `deployd-rt`, plus SQLite's connection threads), the agents on another, and each thread's CPU
//!   time is read from `/proc/self/task`. The whole process's figure is printed beside it.
//!
//! `cargo bench -p deploy-benches --bench agents` (optionally `AGENTS=1000`; `AGENTS_PROGRESS=1` prints the rollout's
//! progress, `AGENTS_DEBUG=1` the latency of a few reads during it, `AGENTS_LOG=warn` the server's log).

#![allow(clippy::panic, clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use deploy_benches::threads_cpu;
use deploy_core::{AgentReport, Health, HumanDuration};
use serde_json::json;

const ADMIN: &str = "dk_benchbenchbenchbenchbenchbenchbenchbenchben";
const HEARTBEAT: Duration = Duration::from_secs(2);

/// The server's threads: its runtime's workers and blocking pool, and the SQLite connections' worker threads.
const SERVER_THREADS: &[&str] = &["deployd-rt", "sqlx-sqlite-wor"];

/// One simulated agent: poll, apply at once, report; a heartbeat every 2 s.
async fn agent(client: deploy_client::Client, target: String, heartbeats: Arc<AtomicU64>) {
    let mut applied =
        AgentReport { generation: 0, version: None, health: Health::Unknown, output: String::new(), error: None };
    let mut known = None;
    let mut next_beat = Instant::now();
    loop {
        let wait = next_beat.saturating_duration_since(Instant::now()).max(Duration::from_millis(1));
        match client.agent_assignment("fleet", &target, known, wait).await {
            Ok(Some(slot)) => {
                known = Some(slot.generation);
                if let Some(desired) = slot.desired.filter(|_| slot.generation > applied.generation) {
                    applied = AgentReport {
                        generation: slot.generation,
                        version: Some(desired.version),
                        health: Health::Healthy,
                        output: String::new(),
                        error: None,
                    };
                    let _ = client.agent_report("fleet", &target, &applied).await;
                }
            }
            Ok(None) => {}
            Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
        if Instant::now() >= next_beat {
            if client.agent_report("fleet", &target, &applied).await.is_ok() {
                heartbeats.fetch_add(1, Ordering::Relaxed);
            }
            next_beat = Instant::now() + HEARTBEAT;
        }
    }
}

fn main() {
    let n: usize = std::env::var("AGENTS").ok().and_then(|v| v.parse().ok()).unwrap_or(1000);
    if let Ok(filter) = std::env::var("AGENTS_LOG") {
        tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
            .with_writer(std::io::stderr)
            .init();
    }
    // The server and the simulated agents run on runtimes of their own, so the server's CPU is its threads' CPU.
    let server_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("deployd-rt")
        .enable_all()
        .build()
        .unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("agents-rt")
        .enable_all()
        .build()
        .unwrap();
    let dir = std::env::temp_dir().join(format!("deploy-bench-agents-{}", uuid::Uuid::now_v7().simple()));
    let server = server_rt
        .block_on(deploy_server::start(deploy_server::Settings {
            listen: "127.0.0.1:0".parse().unwrap(),
            data_dir: dir.clone(),
            bootstrap_admin_key: Some(ADMIN.to_owned()),
            rate_limit: 1_000_000.0,
            rate_limit_burst: 1_000_000.0,
            agent_heartbeat_timeout: HumanDuration::from_secs(30),
            max_concurrent_deployments: 4,
            // Every agent connects from loopback: no per-address limits in the way of the figure measured.
            ip_rate_limit: 0.0,
            max_connections_per_ip: 100_000,
            max_connections: 100_000,
            ..deploy_server::Settings::default()
        }))
        .unwrap();
    rt.block_on(async {
        let base = format!("http://{}", server.addr);
        let client =
            deploy_client::Client::builder(&base).token(ADMIN).timeout(Duration::from_secs(60)).build().unwrap();
        let targets: Vec<serde_json::Value> =
            (0..n).map(|i| json!({"id": format!("host-{i:04}"), "executor": "agent"})).collect();
        let spec = serde_json::from_value(json!({"targets": targets})).unwrap();
        client.put_environment(&"fleet".parse().unwrap(), &spec, None).await.unwrap();

        let heartbeats = Arc::new(AtomicU64::new(0));
        for i in 0..n {
            tokio::spawn(agent(client.clone(), format!("host-{i:04}"), Arc::clone(&heartbeats)));
        }
        // Let every agent report once, then measure a quiet window of heartbeats only.
        tokio::time::sleep(Duration::from_secs(4)).await;
        let (beats0, server0, all0, t0) =
            (heartbeats.load(Ordering::Relaxed), threads_cpu(SERVER_THREADS), threads_cpu(&[]), Instant::now());
        tokio::time::sleep(Duration::from_secs(10)).await;
        let beats = heartbeats.load(Ordering::Relaxed) - beats0;
        let (server_used, all_used, window) =
            (threads_cpu(SERVER_THREADS) - server0, threads_cpu(&[]) - all0, t0.elapsed());
        let per_beat = |used: Duration| used.as_secs_f64() * 1e6 / beats.max(1) as f64;
        println!("{n} agents, heartbeat every {}s", HEARTBEAT.as_secs());
        println!(
            "quiet window: {beats} heartbeats in {:.1}s ({:.0}/s); server {:.2}s CPU: {:.0} µs CPU per heartbeat \
             (each heartbeat is a report and a long poll); whole process {:.0} µs",
            window.as_secs_f64(),
            beats as f64 / window.as_secs_f64(),
            server_used.as_secs_f64(),
            per_beat(server_used),
            per_beat(all_used)
        );

        let request = serde_json::from_value(json!({
            "environment": "fleet", "service": "edge", "version": "2.0",
            "strategy": {"type": "rolling", "batch_size": "10%"},
            "verify": {"timeout": "60s", "interval": "200ms", "healthy_for": "0s"},
        }))
        .unwrap();
        let started = Instant::now();
        let (server_before, all_before) = (threads_cpu(SERVER_THREADS), threads_cpu(&[]));
        let submitted = client.submit(&request, deploy_client::SubmitOptions::default()).await.unwrap();
        let id = submitted.deployment.id();
        let done = loop {
            let t = Instant::now();
            let d = client.get_deployment(id).await.unwrap();
            if std::env::var("AGENTS_DEBUG").is_ok() {
                eprintln!("get_deployment took {:?}", t.elapsed());
            }
            if d.status().is_terminal() {
                break d;
            }
            assert!(started.elapsed() < Duration::from_secs(600), "the rollout did not finish in 10 minutes: {d:?}");
            if std::env::var("AGENTS_DEBUG").is_ok() {
                let t = Instant::now();
                let h = client.health().await.is_ok();
                let th = t.elapsed();
                let t = Instant::now();
                let e = client.get_environment(&"fleet".parse().unwrap()).await.is_ok();
                eprintln!("health {h} {th:?}, environment {e} {:?}", t.elapsed());
            }
            if std::env::var("AGENTS_PROGRESS").is_ok() {
                let s = d.summary();
                eprintln!(
                    "{:>6.1}s {} succeeded {} in progress {}",
                    started.elapsed().as_secs_f64(),
                    d.status(),
                    s.succeeded,
                    s.in_progress
                );
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        };
        let took = started.elapsed();
        println!(
            "rolling deployment across {n} agents, 10% at a time: {} in {:.1}s ({:.1} ms per target); CPU: server \
             {:.2}s, whole process {:.2}s",
            done.status(),
            took.as_secs_f64(),
            took.as_secs_f64() * 1e3 / n as f64,
            (threads_cpu(SERVER_THREADS) - server_before).as_secs_f64(),
            (threads_cpu(&[]) - all_before).as_secs_f64()
        );
        assert_eq!(done.summary().succeeded, n as u64, "every agent's target succeeded");
        server.shutdown().await;
        let _ = std::fs::remove_dir_all(&dir);
        std::process::exit(0);
    });
}
