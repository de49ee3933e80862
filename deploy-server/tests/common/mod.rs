//! A `deployd` on loopback for each test, and a small HTTP client over it.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::PathBuf;
use std::time::Duration;

use deploy_server::{Running, Settings};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

/// The admin key every test server is bootstrapped with.
pub(crate) const ADMIN: &str = "dk_adminadminadminadminadminadminadminadmin012";

pub(crate) use deploy_testkit::fixtures::temp_dir;

pub(crate) mod binary;
pub(crate) mod pg;
pub(crate) mod receiver;
pub(crate) mod slots;

/// Test settings over a new data directory, which the [`Server`] started with them removes when dropped.
pub(crate) fn settings(tag: &str) -> Settings {
    Settings::for_tests(temp_dir(tag).keep(), ADMIN)
}

pub(crate) struct Server {
    pub(crate) running: Option<Running>,
    pub(crate) base: String,
    pub(crate) http: reqwest::Client,
    pub(crate) data_dir: PathBuf,
}

/// An answer: status, headers and the JSON body (or `Value::Null`).
#[derive(Debug)]
pub(crate) struct Answer {
    pub(crate) status: StatusCode,
    pub(crate) headers: reqwest::header::HeaderMap,
    pub(crate) body: Value,
}

impl Answer {
    pub(crate) fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
    /// Asserts this is a problem of `slug` with `status`.
    pub(crate) fn problem(&self, status: u16, slug: &str) -> &Self {
        assert_eq!(self.status.as_u16(), status, "status of {:?}", self.body);
        assert_eq!(self.body["type"], format!("/problems/{slug}"), "problem type of {:?}", self.body);
        assert_eq!(self.body["status"], status, "status field of {:?}", self.body);
        assert!(self.body["title"].as_str().is_some_and(|t| !t.is_empty()), "title of {:?}", self.body);
        assert_eq!(self.header("content-type"), Some("application/problem+json"));
        self
    }
}

impl Server {
    pub(crate) async fn start(tag: &str) -> Self {
        Self::with(settings(tag)).await
    }

    pub(crate) async fn with(settings: Settings) -> Self {
        let data_dir = settings.data_dir.clone();
        let running = deploy_server::start(settings).await.expect("server starts");
        let base = format!("http://{}", running.addr);
        Self { running: Some(running), base, http: reqwest::Client::new(), data_dir }
    }

    /// A deployd running elsewhere (a child process, say) at `base`, called like one started here; its data directory
    /// is removed when this is dropped, as for one started here.
    pub(crate) fn at(base: String, data_dir: PathBuf) -> Self {
        Self { running: None, base, http: reqwest::Client::new(), data_dir }
    }

    pub(crate) async fn stop(&mut self) {
        if let Some(r) = self.running.take() {
            r.shutdown().await;
        }
    }

    pub(crate) fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// A request with optional token, body and extra headers.
    pub(crate) async fn call(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
        headers: &[(&str, &str)],
    ) -> Answer {
        let mut req = self.http.request(method, self.url(path));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.expect("request sent");
        let status = resp.status();
        let headers = resp.headers().clone();
        let bytes = resp.bytes().await.expect("body");
        let body = if bytes.is_empty() { Value::Null } else { serde_json::from_slice(&bytes).unwrap_or(Value::Null) };
        Answer { status, headers, body }
    }

    pub(crate) async fn get(&self, path: &str, token: &str) -> Answer {
        self.call(Method::GET, path, Some(token), None, &[]).await
    }

    pub(crate) async fn post(&self, path: &str, token: &str, body: Value) -> Answer {
        self.call(Method::POST, path, Some(token), Some(body), &[]).await
    }

    pub(crate) async fn put(&self, path: &str, token: &str, body: Value) -> Answer {
        self.call(Method::PUT, path, Some(token), Some(body), &[]).await
    }

    /// Creates an environment of `n` sim targets `<env>-1..n` with `config` (initial version 1.0 unless given).
    pub(crate) async fn sim_env(&self, env: &str, n: usize, concurrency: &str, config: Value) -> Answer {
        let mut config = config;
        if config.get("initial_version").is_none() {
            config["initial_version"] = json!("1.0");
        }
        if config.get("apply_ms").is_none() {
            config["apply_ms"] = json!(5);
        }
        let targets: Vec<Value> = (1..=n)
            .map(|i| {
                json!({"id": format!("{env}-{i}"), "labels": {"zone": if i % 2 == 0 { "b" } else { "a" }},
                       "executor": "sim", "config": config})
            })
            .collect();
        let a = self
            .put(&format!("/v1/environments/{env}"), ADMIN, json!({"concurrency": concurrency, "targets": targets}))
            .await;
        assert!(a.status.is_success(), "environment {env}: {:?}", a.body);
        a
    }

    /// Creates an API key; returns the key.
    pub(crate) async fn key(&self, name: &str, role: &str, environments: &[&str]) -> String {
        let a =
            self.post("/v1/api-keys", ADMIN, json!({"name": name, "role": role, "environments": environments})).await;
        assert_eq!(a.status, StatusCode::CREATED, "{:?}", a.body);
        a.body["key"].as_str().unwrap().to_owned()
    }

    /// Polls a deployment until it is terminal (at most 30 s).
    pub(crate) async fn wait_terminal(&self, id: &str) -> Value {
        self.wait_terminal_within(id, Duration::from_secs(30)).await
    }

    /// Polls a deployment until its JSON satisfies `pred` (at most 30 s).
    pub(crate) async fn wait_until(&self, id: &str, pred: impl Fn(&Value) -> bool) -> Value {
        self.wait_until_within(id, pred, Duration::from_secs(30)).await
    }

    /// Polls a deployment until it is terminal, for at most `limit` (work a real system does at its own pace).
    pub(crate) async fn wait_terminal_within(&self, id: &str, limit: Duration) -> Value {
        let terminal = ["succeeded", "degraded", "failed", "rolled_back", "cancelled", "superseded", "rejected"];
        self.wait_until_within(id, |d| terminal.contains(&d["status"].as_str().unwrap_or_default()), limit).await
    }

    /// Polls a deployment until its JSON satisfies `pred`, for at most `limit`.
    pub(crate) async fn wait_until_within(&self, id: &str, pred: impl Fn(&Value) -> bool, limit: Duration) -> Value {
        let polls = limit.as_millis() / 50;
        for _ in 0..polls {
            let a = self.get(&format!("/v1/deployments/{id}"), ADMIN).await;
            assert_eq!(a.status, StatusCode::OK, "{:?}", a.body);
            if pred(&a.body) {
                return a.body;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!(
            "deployment {id} never got there in {limit:?}: {:#}",
            self.get(&format!("/v1/deployments/{id}"), ADMIN).await.body
        );
    }
}

impl Drop for Server {
    /// Removes the data directory, unless the test is failing: then it is kept for a look.
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("kept {} for the failing test", self.data_dir.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.data_dir);
        }
    }
}

/// A deployment request with fast verification.
pub(crate) fn deploy(env: &str, version: &str) -> Value {
    json!({
        "environment": env, "service": "checkout", "version": version,
        "verify": {"timeout": "3s", "interval": "20ms", "healthy_for": "0s"},
    })
}
