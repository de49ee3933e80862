//! PostgreSQL going away under a running deployd (through a TCP proxy the test controls): requests answer a typed
//! `503 store-unavailable` with `Retry-After` quickly, nothing is accepted meanwhile, and service resumes by itself
//! once the database is back.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::{ADMIN, Server, settings};
use reqwest::StatusCode;
use serde_json::json;
use tokio::net::{TcpListener, TcpStream};

/// Relays 127.0.0.1:<port> to PostgreSQL; while `down`, closes every relayed connection and refuses new ones.
struct Proxy {
    addr: std::net::SocketAddr,
    down: Arc<AtomicBool>,
    cut: Arc<tokio::sync::Notify>,
}

impl Proxy {
    async fn to(upstream: std::net::SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (down, cut) = (Arc::new(AtomicBool::new(false)), Arc::new(tokio::sync::Notify::new()));
        let (d, c) = (Arc::clone(&down), Arc::clone(&cut));
        tokio::spawn(async move {
            while let Ok((mut client, _)) = listener.accept().await {
                if d.load(Ordering::SeqCst) {
                    drop(client);
                    continue;
                }
                let c = Arc::clone(&c);
                tokio::spawn(async move {
                    let Ok(mut server) = TcpStream::connect(upstream).await else { return };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
                        () = c.notified() => {}
                    }
                });
            }
        });
        Self { addr, down, cut }
    }

    fn fail(&self) {
        self.down.store(true, Ordering::SeqCst);
        self.cut.notify_waiters();
    }

    fn heal(&self) {
        self.down.store(false, Ordering::SeqCst);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_postgresql_outage_answers_503_store_unavailable_quickly_and_heals() {
    let Some(url) = common::pg::postgres_url("outage").await else { return };
    let parsed = reqwest::Url::parse(&url).unwrap();
    let upstream = format!("{}:{}", parsed.host_str().unwrap(), parsed.port().unwrap_or(5432));
    let proxy = Proxy::to(tokio::net::lookup_host(&upstream).await.unwrap().next().unwrap()).await;
    let mut through = parsed.clone();
    through.set_host(Some("127.0.0.1")).unwrap();
    through.set_port(Some(proxy.addr.port())).unwrap();
    let s = Server::with(deploy_server::Settings {
        database_url: Some(through.to_string()),
        database_timeout: deploy_core::HumanDuration::from_secs(1),
        ..settings("outage")
    })
    .await;
    s.sim_env("prod", 1, "queue", json!({})).await;
    let before = s.get("/v1/deployments", ADMIN).await.body["items"].as_array().unwrap().len();

    proxy.fail();
    let started = Instant::now();
    let refused =
        s.post("/v1/deployments", ADMIN, json!({"environment": "prod", "service": "s", "version": "2.0"})).await;
    let took = started.elapsed();
    refused.problem(503, "store-unavailable");
    assert!(refused.header("retry-after").is_some(), "{:?}", refused.headers);
    assert!(took < Duration::from_secs(5), "answered in {took:?}");
    s.http.get(s.url("/readyz")).send().await.map(|r| assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE)).unwrap();

    proxy.heal();
    let mut healed = None;
    for _ in 0..100 {
        let a =
            s.post("/v1/deployments", ADMIN, json!({"environment": "prod", "service": "s", "version": "2.0"})).await;
        if a.status == StatusCode::ACCEPTED {
            healed = Some(a);
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let healed = healed.expect("deployd serves again once the database is back, without a restart");
    s.wait_terminal(healed.body["id"].as_str().unwrap()).await;
    let after = s.get("/v1/deployments", ADMIN).await.body["items"].as_array().unwrap().len();
    assert_eq!(after, before + 1, "the refused submission was not accepted behind the caller's back");
}
