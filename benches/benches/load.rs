//! Load test of the HTTP API on loopback, each figure beside a raw axum handler answering a JSON body of the same size
//! in the same run, with the same client and the same 64 concurrent connections:
//! - durable submissions per second (`POST /v1/deployments`, SQLite, synchronous=FULL) vs a raw handler that parses
//!   the same body and answers 202, once while the controller rolls the queue out at a realistic pace and once while
//!   it rolls out targets that apply instantly (its writes then compete with the acceptances);
//! - `GET /v1/deployments/{id}` per second vs a raw handler returning the same bytes;
//! - p50 and p99 latency of each.
//!
//! Bounded: each phase stops after its request budget or its time budget, whichever comes first.
//! `cargo bench -p deploy-benches --bench load` (optionally `LOAD_REQUESTS=20000 LOAD_SECONDS=20`).

#![allow(clippy::panic, clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::{get, post};
use serde_json::{Value, json};

const CONNECTIONS: usize = 64;
const ADMIN: &str = "dk_loadloadloadloadloadloadloadloadloadloadloa";

fn budget() -> (usize, Duration) {
    let requests = std::env::var("LOAD_REQUESTS").ok().and_then(|v| v.parse().ok()).unwrap_or(20_000);
    let seconds = std::env::var("LOAD_SECONDS").ok().and_then(|v| v.parse().ok()).unwrap_or(20);
    (requests, Duration::from_secs(seconds))
}

struct Outcome {
    done: usize,
    elapsed: Duration,
    latencies: Vec<Duration>,
    errors: usize,
}

impl Outcome {
    fn rate(&self) -> f64 {
        self.done as f64 / self.elapsed.as_secs_f64()
    }
    fn percentile(&self, p: f64) -> Duration {
        let mut l = self.latencies.clone();
        l.sort_unstable();
        l.get(((l.len() as f64 - 1.0) * p).round() as usize).copied().unwrap_or_default()
    }
}

/// Runs `request(i)` from `CONNECTIONS` tasks until `total` are done or `limit` has passed.
async fn drive<F, Fut>(total: usize, limit: Duration, request: F) -> Outcome
where
    F: Fn(usize) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = bool> + Send,
{
    let request = Arc::new(request);
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..CONNECTIONS {
        let request = Arc::clone(&request);
        let next = Arc::clone(&next);
        tasks.spawn(async move {
            let mut latencies = Vec::new();
            let mut errors = 0;
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= total || started.elapsed() > limit {
                    break;
                }
                let t = Instant::now();
                if request(i).await {
                    latencies.push(t.elapsed());
                } else {
                    errors += 1;
                }
            }
            (latencies, errors)
        });
    }
    let mut latencies = Vec::new();
    let mut errors = 0;
    for (l, e) in tasks.join_all().await {
        latencies.extend(l);
        errors += e;
    }
    Outcome { done: latencies.len(), elapsed: started.elapsed(), latencies, errors }
}

fn report(name: &str, ours: &Outcome, baseline: &Outcome) {
    println!(
        "{name:<28} {:>9.0} req/s  p50 {:>7.2} ms  p99 {:>7.2} ms  ({} ok, {} errors)",
        ours.rate(),
        ours.percentile(0.5).as_secs_f64() * 1e3,
        ours.percentile(0.99).as_secs_f64() * 1e3,
        ours.done,
        ours.errors
    );
    println!(
        "{:<28} {:>9.0} req/s  p50 {:>7.2} ms  p99 {:>7.2} ms  ({} ok, {} errors)",
        "  baseline (raw axum)",
        baseline.rate(),
        baseline.percentile(0.5).as_secs_f64() * 1e3,
        baseline.percentile(0.99).as_secs_f64() * 1e3,
        baseline.done,
        baseline.errors
    );
    println!("{:<28} {:>8.0}% of the baseline's throughput", "  ratio", 100.0 * ours.rate() / baseline.rate());
}

/// `POST url` of `body` (with a fresh version each time) from every connection until the budget is spent; a 202 counts.
async fn posts(http: &reqwest::Client, url: String, body: Value, total: usize, limit: Duration) -> Outcome {
    let http = http.clone();
    drive(total, limit, move |i| {
        let (h, u) = (http.clone(), url.clone());
        let mut body = body.clone();
        body["version"] = json!(format!("2.{i}"));
        async move {
            h.post(u).bearer_auth(ADMIN).json(&body).send().await.is_ok_and(|r| r.status() == StatusCode::ACCEPTED)
        }
    })
    .await
}

/// Creates an environment through the API.
async fn put_environment(http: &reqwest::Client, base: &str, env: &str, spec: Value) {
    let put = http.put(format!("{base}/v1/environments/{env}")).bearer_auth(ADMIN).json(&spec).send().await.unwrap();
    assert!(put.status().is_success(), "environment {env}: {}", put.status());
}

/// `GET url` from every connection until the budget is spent.
async fn gets(http: &reqwest::Client, url: String, total: usize, limit: Duration) -> Outcome {
    let http = http.clone();
    drive(total, limit, move |_| {
        let (h, u) = (http.clone(), url.clone());
        async move { h.get(u).bearer_auth(ADMIN).send().await.is_ok_and(|r| r.status() == StatusCode::OK) }
    })
    .await
}

/// Deployments stored in `env`, counted through the API.
async fn count(http: &reqwest::Client, base: &str, env: &str) -> usize {
    let mut listed = 0;
    let mut cursor: Option<String> = None;
    loop {
        let mut url = format!("{base}/v1/deployments?environment={env}&limit=500");
        if let Some(c) = &cursor {
            url.push_str(&format!("&cursor={c}"));
        }
        let page: Value = http.get(url).bearer_auth(ADMIN).send().await.unwrap().json().await.unwrap();
        listed += page["items"].as_array().map_or(0, Vec::len);
        match page["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_owned()),
            None => return listed,
        }
    }
}

async fn baseline_server(get_body: Bytes, post_body: Bytes) -> String {
    let app = Router::new()
        .route(
            "/get",
            get(move || {
                let body = get_body.clone();
                async move { ([("content-type", "application/json")], body) }
            }),
        )
        .route(
            "/post",
            post(move |body: Bytes| {
                let answer = post_body.clone();
                async move {
                    // Parse what the real endpoint parses, answer what it answers; nothing durable.
                    match serde_json::from_slice::<Value>(&body) {
                        Ok(_) => (StatusCode::ACCEPTED, [("content-type", "application/json")], answer).into_response(),
                        Err(_) => StatusCode::BAD_REQUEST.into_response(),
                    }
                }
            }),
        );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    format!("http://{addr}")
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    rt.block_on(run());
}

async fn run() {
    let (total, limit) = budget();
    let dir = std::env::temp_dir().join(format!("deploy-load-{}", uuid::Uuid::now_v7().simple()));
    let settings = deploy_server::Settings {
        listen: "127.0.0.1:0".parse().unwrap(),
        data_dir: dir.clone(),
        dev: true,
        bootstrap_admin_key: Some(ADMIN.into()),
        rate_limit: 1e9,
        rate_limit_burst: 1e9,
        // The load comes from loopback: the per-address limits are not what this measures.
        ip_rate_limit: 0.0,
        max_connections_per_ip: 100_000,
        // One key submits every deployment: per-submitter quotas are not what this measures either.
        quota_open_deployments: 0,
        quota_bytes: 0,
        ..Default::default()
    };
    let server = deploy_server::start(settings).await.unwrap();
    let base = format!("http://{}", server.addr);
    let http = reqwest::Client::builder().pool_max_idle_per_host(CONNECTIONS).build().unwrap();
    let targets: Vec<Value> = (1..=4)
        .map(
            |i| json!({"id": format!("t-{i}"), "executor": "sim", "config": {"initial_version": "1.0", "apply_ms": 0}}),
        )
        .collect();
    put_environment(&http, &base, "load", json!({"targets": targets})).await;
    let request = json!({"environment": "load", "service": "checkout", "version": "2.0",
                         "verify": {"timeout": "2s", "interval": "10ms", "healthy_for": "0s"}});
    let first = http.post(format!("{base}/v1/deployments")).bearer_auth(ADMIN).json(&request).send().await.unwrap();
    let first_body = first.bytes().await.unwrap();
    let id = serde_json::from_slice::<Value>(&first_body).unwrap()["id"].as_str().unwrap().to_owned();

    // A deployment that stays in progress (its version never becomes healthy within ten minutes), so its reads
    // cannot be served from the finished-deployment cache.
    let slow = json!({"targets": [{"id": "s-1", "executor": "sim",
                                    "config": {"initial_version": "1.0", "apply_ms": 0, "unhealthy_versions": ["2.0"]}}]});
    put_environment(&http, &base, "slow", slow).await;
    let stuck = json!({"environment": "slow", "service": "checkout", "version": "2.0",
                       "verify": {"timeout": "10m", "interval": "1s", "healthy_for": "0s"}, "progress_deadline": "20m"});
    let stuck = http.post(format!("{base}/v1/deployments")).bearer_auth(ADMIN).json(&stuck).send().await.unwrap();
    let stuck_id = stuck.json::<Value>().await.unwrap()["id"].as_str().unwrap().to_owned();
    // Wait until the first deployment has finished, so that its body (and size) is final.
    for _ in 0..200 {
        let v: Value = http
            .get(format!("{base}/v1/deployments/{id}"))
            .bearer_auth(ADMIN)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if v["status"] == "succeeded" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let get_body =
        http.get(format!("{base}/v1/deployments/{id}")).bearer_auth(ADMIN).send().await.unwrap().bytes().await.unwrap();
    let raw = baseline_server(get_body.clone(), first_body.clone()).await;
    println!(
        "load test: {CONNECTIONS} connections, at most {total} requests or {} s per phase, on 2 cores",
        limit.as_secs()
    );
    println!("GET body {} bytes, POST answer {} bytes", get_body.len(), first_body.len());

    // GET of a deployment in progress: read from the store every time.
    let in_progress = gets(&http, format!("{base}/v1/deployments/{stuck_id}"), total, limit).await;
    let status: Value = http
        .get(format!("{base}/v1/deployments/{stuck_id}"))
        .bearer_auth(ADMIN)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    println!("(the deployment read 'in progress' was {} throughout)", status["status"]);
    if !["queued", "in_progress"].contains(&status["status"].as_str().unwrap_or_default()) {
        let events: Value = http
            .get(format!("{base}/v1/deployments/{stuck_id}/events"))
            .bearer_auth(ADMIN)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        panic!("the deployment meant to stay in progress finished: {events}");
    }

    // GET of a finished deployment.
    let ours = gets(&http, format!("{base}/v1/deployments/{id}"), total, limit).await;
    let baseline = gets(&http, format!("{raw}/get"), total, limit).await;
    report("GET, finished deployment", &ours, &baseline);
    report("GET, in progress", &in_progress, &baseline);

    // Durable submissions, twice: while the controller drives the queue at the pace of targets that take a second per
    // apply (a realistic rollout: the writes are mostly acceptances), and while it drives targets that apply
    // instantly (the controller's own writes compete with every acceptance for SQLite's one writer).
    let baseline = posts(&http, format!("{raw}/post"), request.clone(), total, limit).await;
    for (env, apply_ms, label) in [("paced", 1000, "POST, controller paced"), ("load", 0, "POST, controller flat out")]
    {
        if env != "load" {
            let targets: Vec<Value> = (1..=4)
                .map(|i| {
                    json!({"id": format!("p-{i}"), "executor": "sim",
                                "config": {"initial_version": "1.0", "apply_ms": apply_ms}})
                })
                .collect();
            put_environment(&http, &base, env, json!({"targets": targets})).await;
        }
        let before = count(&http, &base, env).await;
        let mut body = request.clone();
        body["environment"] = json!(env);
        let ours = posts(&http, format!("{base}/v1/deployments"), body, total, limit).await;
        report(label, &ours, &baseline);
        // Every answered submission is in the store.
        let stored = count(&http, &base, env).await - before;
        assert_eq!(stored, ours.done, "every 202 is a stored deployment");
        println!("{:<28} {stored} deployments stored for {} answered 202", "", ours.done);
    }
    // The deployment left in progress would hold a graceful shutdown for its ten minutes: just stop.
    drop(server);
    let _ = std::fs::remove_dir_all(&dir);
}
