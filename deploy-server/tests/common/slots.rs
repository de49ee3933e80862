//! Slots for the `process` executor: free ports on loopback running `deployd demo-app`, and a guard that leaves no
//! process behind, whatever the test did.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};
use std::time::Duration;

use deploy_executors::ProcessExecutor;
use serde_json::{Value, json};

pub(crate) struct Slots {
    pub(crate) ports: Vec<u16>,
    /// The `process` executor's state directory (`<data_dir>/process` for a deployd).
    pub(crate) state_dir: PathBuf,
    pub(crate) environment: String,
}

impl Slots {
    pub(crate) fn new(n: usize, data_dir: &Path, environment: &str) -> Self {
        let listeners: Vec<std::net::TcpListener> =
            (0..n).map(|_| std::net::TcpListener::bind("127.0.0.1:0").unwrap()).collect();
        let ports = listeners.iter().map(|l| l.local_addr().unwrap().port()).collect();
        Self { ports, state_dir: data_dir.join("process"), environment: environment.to_owned() }
    }

    /// The environment's targets `p-1..n`, running `deployd demo-app`; `unhealthy` versions answer 503.
    pub(crate) fn targets(&self, unhealthy: &str) -> Vec<Value> {
        self.ports
            .iter()
            .enumerate()
            .map(|(i, port)| {
                json!({"id": format!("p-{}", i + 1), "executor": "process",
                       "config": {"command": [env!("CARGO_BIN_EXE_deployd"), "demo-app", "--port", "{port}", "--version", "{version}"],
                                  "port": port, "start_timeout": "5s", "stop_timeout": "2s",
                                  "env": {"DEMO_APP_UNHEALTHY_VERSIONS": unhealthy}}})
            })
            .collect()
    }

    pub(crate) fn target(&self, i: usize) -> deploy_core::Target {
        let t = &self.targets("")[i];
        let t: deploy_core::EnvironmentTarget = serde_json::from_value(json!({
            "id": t["id"], "labels": {}, "executor": "process", "config": t["config"], "desired": null, "actual": null
        }))
        .unwrap();
        deploy_core::Target::of(&deploy_core::EnvironmentName::new(&self.environment).unwrap(), &t)
    }

    /// `/health` of slot `i`: its JSON, or `None` when nothing answers.
    pub(crate) async fn health(&self, i: usize) -> Option<Value> {
        let http = reqwest::Client::builder().timeout(Duration::from_secs(2)).build().unwrap();
        let r = http.get(format!("http://127.0.0.1:{}/health", self.ports[i])).send().await.ok()?;
        r.json().await.ok()
    }

    /// The processes the executor runs on slot `i`: (pid, version).
    pub(crate) fn running(&self, i: usize) -> Vec<(u32, String)> {
        ProcessExecutor::new(&self.state_dir).running(&self.target(i)).unwrap()
    }
}

impl Drop for Slots {
    fn drop(&mut self) {
        for i in 0..self.ports.len() {
            for (pid, _) in self.running(i) {
                let _ = std::process::Command::new("kill").args(["-s", "KILL", "--", &format!("-{pid}")]).status();
            }
        }
    }
}
