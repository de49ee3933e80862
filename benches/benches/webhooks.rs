//! Webhook deliveries per second to a receiver on loopback, beside the same number of plain POSTs of the same body in
//! the same run:
//! - **plain**: unsigned `POST`s from one `reqwest` client, 64 (or 8) at a time, nothing stored;
//! - **outbox**: the [`deploy_server::Dispatcher`] over a durable SQLite store: claim from the outbox, sign (Standard
//!   Webhooks), send 64 at a time, record each outcome; timed until every outcome is written.
//!
//! Also reported: the dispatcher over an outbox that costs nothing (the testkit's `MockStore` handing out deliveries
//! prepared beforehand: signing, dispatching and HTTP alone), and with its default cap of 8 in flight per
//! subscription (one receiver gets 8 at a time). Each row is `WEBHOOK_PAIRS` (3) pairs of runs, a plain run right
//! before a signed one, with the median ratio and the range; each run gives its rate and the process's CPU time per
//! request (sender and receiver together, from `/proc/self/stat`). The last lines give what signing alone costs and
//! how much CPU per delivery 70% of the plain rate leaves above plain's.
//!
//! `cargo bench -p deploy-benches --bench webhooks` (optionally `WEBHOOK_DELIVERIES=5000`; `WEBHOOK_STORE_ONLY=1` also
//! times the store alone: claim `WEBHOOK_STORE_BATCH` (64), record them delivered, repeat, with no HTTP, and
//! `WEBHOOK_STORE_ONLY=only` stops there; `WEBHOOK_PROFILE=1` (or `=memory`) fills four outboxes, prints the pid,
//! waits 3 s for a profiler to attach, then only dispatches; beside `WEBHOOK_STORE_ONLY` it waits the same way before
//! the store-alone loop).

#![allow(clippy::panic, clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use axum::Router;
use axum::http::StatusCode;
use axum::routing::post;
use deploy_core::{EnvironmentName, FullStore, PageRequest, SystemClock, WebhookStore, WebhookSubscription};
use deploy_server::{Dispatcher, DispatcherConfig};
use deploy_sql::SqlStore;

const CONCURRENCY: usize = 64;

/// A receiver answering 204 and counting.
async fn receiver() -> (String, Arc<AtomicUsize>) {
    let count = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&count);
    let app = Router::new().route(
        "/hook",
        post(move |_body: axum::body::Bytes| {
            let counter = Arc::clone(&counter);
            async move {
                counter.fetch_add(1, Ordering::Relaxed);
                StatusCode::NO_CONTENT
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (format!("http://{addr}/hook"), count)
}

/// A fresh SQLite store with one subscription to `url` and `n` pending deliveries (one per accepted deployment).
async fn outbox(url: &str, n: usize) -> (Arc<SqlStore>, String) {
    let dir = std::env::temp_dir().join(format!("deploy-bench-webhooks-{}", uuid::Uuid::now_v7().simple()));
    let store = Arc::new(SqlStore::sqlite(&dir).await.unwrap());
    let body = fill(Arc::clone(&store) as Arc<dyn FullStore>, url, n).await;
    (store, body)
}

/// `store` with one subscription to `url` and `n` pending deliveries; the body of one.
async fn fill(store: Arc<dyn FullStore>, url: &str, n: usize) -> String {
    let env = EnvironmentName::new("prod").unwrap();
    store.put_environment(&env, deploy_benches::fleet(4), None, time::OffsetDateTime::now_utc()).await.unwrap();
    let sub = store
        .create_webhook(WebhookSubscription {
            secret: deploy_server::generate_secret().unwrap(),
            ..deploy_testkit::fixtures::subscription(url)
        })
        .await
        .unwrap();
    let mut tasks = tokio::task::JoinSet::new();
    for worker in 0..16 {
        let store = Arc::clone(&store);
        tasks.spawn(async move {
            for i in (worker..n).step_by(16) {
                store.accept(deploy_benches::acceptance("prod", "checkout", &format!("2.{i}")).unwrap()).await.unwrap();
            }
        });
    }
    tasks.join_all().await;
    let page = store.list_deliveries(sub.id, &PageRequest { limit: 1, cursor: None }).await.unwrap();
    page.items[0].payload.as_str().to_owned()
}

/// Wall-clock time and the process's CPU time (all threads) of one run.
#[derive(Clone, Copy)]
struct Run {
    wall: Duration,
    cpu: Duration,
}

impl Run {
    /// Times `work`.
    async fn of<R>(work: impl std::future::Future<Output = R>) -> Self {
        let (cpu, began) = (deploy_benches::process_cpu().unwrap_or_default(), Instant::now());
        work.await;
        Self { wall: began.elapsed(), cpu: deploy_benches::process_cpu().unwrap_or_default().saturating_sub(cpu) }
    }

    /// Per second, for `n`.
    fn rate(self, n: usize) -> f64 {
        n as f64 / self.wall.as_secs_f64()
    }

    /// CPU microseconds per one of `n`, sender and receiver together.
    fn cpu_us(self, n: usize) -> f64 {
        self.cpu.as_secs_f64() * 1e6 / n as f64
    }
}

/// What every comparison shares.
struct Setup<'a> {
    url: &'a str,
    body: &'a str,
    count: &'a AtomicUsize,
    n: usize,
    pairs: usize,
}

impl Setup<'_> {
    /// `pairs` pairs of runs: plain POSTs (`plain_concurrency` at a time), then the dispatcher (`per_subscription`
    /// in flight to the one subscription) over a fresh outbox from `outbox`. The machine's speed drifts from one
    /// minute to the next (plain runs of one session ranged from 24,700 to 45,000/s), so each signed run is compared
    /// with the plain run just before it, and the row gives the median ratio and the range. Returns the median pair.
    async fn compare<F, Fut>(
        &self,
        label: &str,
        plain_concurrency: usize,
        per_subscription: usize,
        outbox: F,
    ) -> (Run, Run)
    where
        F: Fn() -> Fut,
        Fut: std::future::Future<Output = Arc<dyn WebhookStore>>,
    {
        let n = self.n;
        let mut runs = Vec::with_capacity(self.pairs);
        for _ in 0..self.pairs {
            let store = outbox().await;
            let plain = Run::of(plain(self.url, self.body, n, plain_concurrency)).await;
            let signed = Run::of(dispatch(store, self.count, n, per_subscription)).await;
            runs.push((plain, signed));
        }
        let ratio = |(plain, signed): &(Run, Run)| signed.rate(n) / plain.rate(n);
        runs.sort_by(|a, b| ratio(a).total_cmp(&ratio(b)));
        println!("{label}, against plain POSTs {plain_concurrency} at a time:");
        for pair in &runs {
            let (plain, signed) = pair;
            println!(
                "  plain {:>7.0}/s {:>6.1} µs CPU each   signed {:>7.0}/s {:>6.1} µs CPU each   {:>3.0}%",
                plain.rate(n),
                plain.cpu_us(n),
                signed.rate(n),
                signed.cpu_us(n),
                100.0 * ratio(pair)
            );
        }
        let median = runs[runs.len() / 2];
        println!(
            "  ratio: median {:.0}% of plain (range {:.0}–{:.0}%)",
            100.0 * ratio(&median),
            100.0 * ratio(&runs[0]),
            100.0 * ratio(&runs[runs.len() - 1])
        );
        median
    }
}

/// Delivers everything in the outbox; the time until every outcome is recorded.
async fn dispatch(store: Arc<dyn WebhookStore>, count: &AtomicUsize, n: usize, per_subscription: usize) -> Duration {
    let start = count.load(Ordering::Relaxed);
    let config = DispatcherConfig { concurrency: CONCURRENCY, per_subscription, ..DispatcherConfig::default() };
    let dispatcher = Dispatcher::new(store, Arc::new(SystemClock), config).unwrap();
    let (trigger, signal) = deploy_core::ShutdownSignal::new();
    let began = Instant::now();
    let task = tokio::spawn(dispatcher.run(signal));
    while count.load(Ordering::Relaxed) - start < n {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    trigger.fire();
    task.await.unwrap();
    began.elapsed()
}

/// An outbox that costs nothing: the testkit's `MockStore` hands out `deliveries` (claimed from a filled in-memory
/// store) and drops outcomes, so a run measures the dispatcher, signing and HTTP alone.
async fn scripted_outbox(url: &str, n: usize) -> Arc<dyn WebhookStore> {
    let memory: Arc<dyn FullStore> = Arc::new(deploy_testkit::MemoryStore::new());
    fill(Arc::clone(&memory), url, n).await;
    let all = memory.claim_deliveries(time::OffsetDateTime::now_utc(), n, n, Duration::from_secs(3600)).await.unwrap();
    assert_eq!(all.len(), n);
    let queue = std::sync::Mutex::new(std::collections::VecDeque::from(all));
    let mut store = deploy_testkit::mocks::MockWebhookStore::new();
    store.expect_claim_deliveries().returning(move |_, limit, _, _| {
        let mut queue = queue.lock().unwrap();
        let take = limit.min(queue.len());
        Ok(queue.drain(..take).collect())
    });
    store.expect_complete_deliveries().returning(|_, _| Ok(()));
    Arc::new(store)
}

/// HMAC-SHA256 (RFC 2104) over `sha2`, only to compare its cost with the `standardwebhooks` crate's (whose SHA-256 is
/// portable code); a key of at most one block.
fn hmac_sha2(key: &[u8], message: &[u8]) -> [u8; 32] {
    use sha2::{Digest, Sha256};
    let mut block = [0u8; 64];
    block[..key.len()].copy_from_slice(key);
    let pad = |byte: u8| block.map(|b| b ^ byte);
    let inner = Sha256::new().chain_update(pad(0x36)).chain_update(message).finalize();
    Sha256::new().chain_update(pad(0x5c)).chain_update(inner).finalize().into()
}

/// `n` plain POSTs of `body`, `concurrency` at a time.
async fn plain(url: &str, body: &str, n: usize, concurrency: usize) -> Duration {
    let client = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap();
    let next = Arc::new(AtomicUsize::new(0));
    let began = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..concurrency {
        let (client, next, url, body) = (client.clone(), Arc::clone(&next), url.to_owned(), body.to_owned());
        tasks.spawn(async move {
            while next.fetch_add(1, Ordering::Relaxed) < n {
                let r = client.post(&url).header("content-type", "application/json").body(body.clone()).send().await;
                assert!(r.unwrap().status().is_success());
            }
        });
    }
    tasks.join_all().await;
    began.elapsed()
}

fn main() {
    let n: usize = std::env::var("WEBHOOK_DELIVERIES").ok().and_then(|v| v.parse().ok()).unwrap_or(5000);
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    rt.block_on(async {
        let (url, count) = receiver().await;
        let (store, body) = outbox(&url, n).await;
        if std::env::var("WEBHOOK_STORE_ONLY").is_ok() {
            let (s2, _) = outbox(&url, n).await;
            let batch = std::env::var("WEBHOOK_STORE_BATCH").ok().and_then(|v| v.parse().ok()).unwrap_or(64);
            if std::env::var("WEBHOOK_PROFILE").is_ok() {
                eprintln!("outbox ready (pid {})", std::process::id());
                tokio::time::sleep(Duration::from_secs(3)).await;
            }
            let (began, cpu) = (Instant::now(), deploy_benches::process_cpu().unwrap_or_default());
            let (mut claim_t, mut complete_t, mut rounds) = (Duration::ZERO, Duration::ZERO, 0);
            loop {
                let t = Instant::now();
                let batch = s2
                    .claim_deliveries(time::OffsetDateTime::now_utc(), batch, batch, Duration::from_secs(30))
                    .await
                    .unwrap();
                claim_t += t.elapsed();
                if batch.is_empty() {
                    break;
                }
                let outcomes: Vec<_> = batch
                    .iter()
                    .map(|(d, _)| (d.id.clone(), deploy_core::DeliveryOutcome::Delivered { status_code: 204 }))
                    .collect();
                let t = Instant::now();
                s2.complete_deliveries(&outcomes, time::OffsetDateTime::now_utc()).await.unwrap();
                complete_t += t.elapsed();
                rounds += 1;
            }
            println!(
                "store only, {batch} at a time: {:?} total, {rounds} rounds, claims {claim_t:?}, completes {complete_t:?}, {:.1} µs CPU each",
                began.elapsed(),
                (deploy_benches::process_cpu().unwrap_or_default() - cpu).as_secs_f64() * 1e6 / n as f64,
            );
            if std::env::var("WEBHOOK_STORE_ONLY").is_ok_and(|v| v == "only") {
                return;
            }
        }
        if std::env::var("WEBHOOK_PROFILE").is_ok() {
            // For a profiler: fill several outboxes, say so, wait, then only dispatch.
            let mut stores: Vec<Arc<dyn WebhookStore>> = vec![store];
            for _ in 0..3 {
                if std::env::var("WEBHOOK_PROFILE").is_ok_and(|v| v == "memory") {
                    let memory: Arc<dyn FullStore> = Arc::new(deploy_testkit::MemoryStore::new());
                    fill(Arc::clone(&memory), &url, n).await;
                    stores.push(memory);
                } else {
                    stores.push(outbox(&url, n).await.0);
                }
            }
            eprintln!("outboxes ready (pid {})", std::process::id());
            tokio::time::sleep(Duration::from_secs(3)).await;
            for s in stores {
                let took = dispatch(s, &count, n, CONCURRENCY).await;
                eprintln!("dispatched {n} in {took:?}");
            }
            return;
        }
        drop(store);
        let pairs: usize = std::env::var("WEBHOOK_PAIRS").ok().and_then(|v| v.parse().ok()).unwrap_or(3).max(1);
        println!(
            "{n} deliveries of {} bytes to a receiver on loopback (CPU: the whole process, both sides); {pairs} pairs \
             of runs per row, each a plain run right before a signed one",
            body.len()
        );
        // Warm the receiver and the client's connections.
        plain(&url, &body, 500, CONCURRENCY).await;
        let setup = Setup { url: &url, body: &body, count: &count, n, pairs };
        let durable = || async { outbox(&url, n).await.0 as Arc<dyn WebhookStore> };
        let scripted = || scripted_outbox(&url, n);
        let outbox_64 = setup.compare("signed from the outbox", CONCURRENCY, CONCURRENCY, durable).await;
        let no_store = setup.compare("signed, no store (scripted outbox)", CONCURRENCY, CONCURRENCY, scripted).await;
        setup.compare("signed from the outbox, 8 per subscription", 8, 8, durable).await;
        // 8 per subscription with no store: the scripted outbox ignores the store's claim cap per subscription, so
        // hundreds of one subscription's claims wait behind the 8 in flight (what the dispatcher's queue costs then).
        setup.compare("signed, no store, 8 per subscription", 8, 8, scripted).await;
        // What signing alone costs (the Standard Webhooks signature of this body, with the `standardwebhooks`
        // crate), against what 70% of the plain rate leaves for signing, the outbox and the dispatcher together.
        let signer = standardwebhooks::Webhook::new(&deploy_server::generate_secret().unwrap()).unwrap();
        let began = Instant::now();
        for i in 0..n {
            std::hint::black_box(signer.sign(&format!("msg_{i}"), 1_700_000_000, body.as_bytes()).unwrap());
        }
        let signing = began.elapsed().as_secs_f64() * 1e6 / n as f64;
        println!("{:<44} {signing:>11.1} µs CPU each", "signing alone (standardwebhooks)");
        // For comparison only: the same HMAC-SHA256 with the `sha2` crate, which uses the CPU's SHA extensions.
        let key = [7u8; 24];
        let reference = standardwebhooks::Webhook::from_bytes(key.to_vec()).unwrap().sign("msg_0", 1_700_000_000, body.as_bytes());
        let ours = hmac_sha2(&key, format!("msg_0.1700000000.{body}").as_bytes());
        assert_eq!(reference.unwrap(), format!("v1,{}", base64::Engine::encode(&base64::engine::general_purpose::STANDARD, ours)));
        let began = Instant::now();
        for i in 0..n {
            std::hint::black_box(hmac_sha2(&key, format!("msg_{i}.1700000000.{body}").as_bytes()));
        }
        let accelerated = began.elapsed().as_secs_f64() * 1e6 / n as f64;
        println!("{:<44} {accelerated:>11.1} µs CPU each", "  the same HMAC with sha2 (SHA extensions)");
        let plain_cpu = (outbox_64.0.cpu_us(n) + no_store.0.cpu_us(n)) / 2.0;
        println!(
            "{:<44} {:>11.1} µs CPU each (at the same CPU per second as plain)",
            "  room at 70% of plain, above plain's cost",
            plain_cpu / 0.7 - plain_cpu
        );
        for entry in std::fs::read_dir(std::env::temp_dir()).into_iter().flatten().flatten() {
            if entry.file_name().to_string_lossy().starts_with("deploy-bench-webhooks-") {
                let _ = std::fs::remove_file(entry.path());
            }
        }
    });
}
