//! A `deployd` on loopback for each test, and a client of it.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

pub(crate) mod proxy;

use deploy_client::{Client, RetryPolicy};
use deploy_core::DeploymentRequest;
use deploy_server::{Running, Settings};

pub(crate) const ADMIN: &str = "dk_clientclientclientclientclientclientclient0";

/// A `deployd` over a new data directory, which is removed when the returned guard is dropped.
pub(crate) async fn deployd(tag: &str) -> (Running, deploy_testkit::fixtures::TempDir) {
    let dir = deploy_testkit::fixtures::temp_dir(tag);
    let running = deploy_server::start(Settings::for_tests(dir.to_path_buf(), ADMIN)).await.expect("deployd starts");
    (running, dir)
}

pub(crate) fn client(base: &str) -> Client {
    Client::builder(base)
        .token(ADMIN)
        .retry(RetryPolicy {
            max_attempts: 5,
            base_delay: std::time::Duration::from_millis(20),
            ..RetryPolicy::default()
        })
        .build()
        .unwrap()
}

/// An environment of `n` sim targets `<env>-1..n` at version 1.0, applying in `apply_ms`.
pub(crate) fn sim_env(n: usize, apply_ms: u64) -> deploy_core::EnvironmentSpec {
    let targets: Vec<serde_json::Value> = (1..=n)
        .map(|i| {
            serde_json::json!({"id": format!("t-{i}"), "executor": "sim",
                               "config": {"initial_version": "1.0", "apply_ms": apply_ms}})
        })
        .collect();
    serde_json::from_value(serde_json::json!({"targets": targets})).unwrap()
}

pub(crate) fn request(env: &str, version: &str) -> DeploymentRequest {
    serde_json::from_value(serde_json::json!({
        "environment": env, "service": "checkout", "version": version,
        "verify": {"timeout": "3s", "interval": "20ms", "healthy_for": "0s"},
    }))
    .unwrap()
}
