//! `deployd` processes the suite starts, kills, pauses and restarts, and the HTTP calls it makes to them.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context as _, bail};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde_json::Value;
use tokio::io::{AsyncBufReadExt as _, BufReader};
use tokio::process::{Child, Command};

/// The admin key every `deployd` of the suite is bootstrapped with.
pub const ADMIN: &str = "dk_chaoschaoschaoschaoschaoschaoschaoschaos012";

/// One `deployd` process: how to start it again, and its current incarnation.
#[derive(Debug)]
pub struct Deployd {
    program: PathBuf,
    args: Vec<String>,
    log: PathBuf,
    /// `sh -c "trap '' XFSZ; exec deployd ..."`: as under a real full disk, a write past a file-size cap fails
    /// instead of killing the process.
    ignore_xfsz: bool,
    child: Option<Child>,
    /// The process id of the running incarnation.
    pub pid: u32,
    /// `http://127.0.0.1:<port>` of the running incarnation.
    pub base: String,
}

impl Deployd {
    /// Starts `deployd serve` with `args` (the listen address, admin key and log level are added), appending its
    /// log to `log`.
    pub async fn start(program: &Path, args: Vec<String>, log: &Path, ignore_xfsz: bool) -> anyhow::Result<Self> {
        let mut d = Self {
            program: program.to_owned(),
            args,
            log: log.to_owned(),
            ignore_xfsz,
            child: None,
            pid: 0,
            base: String::new(),
        };
        d.spawn().await?;
        Ok(d)
    }

    async fn spawn(&mut self) -> anyhow::Result<()> {
        let log = std::fs::OpenOptions::new().create(true).append(true).open(&self.log)?;
        let mut cmd = if self.ignore_xfsz {
            let mut c = Command::new("sh");
            c.args(["-c", "trap '' XFSZ; exec \"$0\" \"$@\""]).arg(&self.program);
            c
        } else {
            Command::new(&self.program)
        };
        cmd.args(["serve", "--listen", "127.0.0.1:0"])
            .args(&self.args)
            .env("DEPLOYD_BOOTSTRAP_ADMIN_KEY", ADMIN)
            .env("DEPLOYD_LOG", "warn,deploy_core=info")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log)
            .kill_on_drop(true);
        let mut child = cmd.spawn().with_context(|| format!("starting {}", self.program.display()))?;
        let stdout = child.stdout.take().context("deployd's output")?;
        let mut lines = BufReader::new(stdout).lines();
        let mut base = None;
        let wait = tokio::time::timeout(Duration::from_secs(30), async {
            while let Ok(Some(line)) = lines.next_line().await {
                if let Some((_, addr)) = line.split_once("listening on ") {
                    base = addr.split_whitespace().next().map(str::to_owned);
                    break;
                }
            }
        });
        wait.await.context("deployd did not say where it listens within 30 s")?;
        let Some(base) = base else { bail!("deployd exited before listening (see {})", self.log.display()) };
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        self.pid = child.id().context("deployd's pid")?;
        self.base = base;
        self.child = Some(child);
        Ok(())
    }

    /// kill -9, and waits for the process to be gone.
    pub async fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            self.signal(Signal::SIGKILL);
            let _ = child.wait().await;
        }
    }

    /// kill -9, then starts it again on the same data directory.
    pub async fn restart(&mut self) -> anyhow::Result<()> {
        self.kill9().await;
        self.spawn().await
    }

    /// Sends `signal` to the running incarnation (SIGSTOP to pause it, SIGCONT to resume).
    pub fn signal(&self, signal: Signal) {
        if let Ok(pid) = i32::try_from(self.pid) {
            let _ = kill(Pid::from_raw(pid), signal);
        }
    }

    /// Lowers (Some) or lifts (None) the largest file the process may write: the disk is full past that size.
    pub async fn cap_file_size(&self, bytes: Option<u64>) -> anyhow::Result<()> {
        let limit = bytes.map_or_else(|| "unlimited".to_owned(), |b| b.to_string());
        let ok = Command::new("prlimit")
            .args(["--pid", &self.pid.to_string(), &format!("--fsize={limit}:")])
            .status()
            .await
            .is_ok_and(|s| s.success());
        if !ok {
            bail!("prlimit could not set the file-size limit of {}", self.pid);
        }
        Ok(())
    }

    /// Lines of its log that show a panic.
    pub fn panics(&self) -> Vec<String> {
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .filter(|l| l.contains("panicked"))
            .map(str::to_owned)
            .collect()
    }
}

/// An answer from deployd, or why there was none.
#[derive(Debug, Clone)]
pub struct Answer {
    /// The HTTP status; 0 when no answer came (connection refused, reset, timed out).
    pub status: u16,
    /// The JSON body, or `Value::Null`.
    pub body: Value,
}

impl Answer {
    /// The problem type's slug (`store-unavailable` of `/problems/store-unavailable`), if this is a problem.
    #[must_use]
    pub fn problem(&self) -> Option<&str> {
        self.body["type"].as_str().and_then(|t| t.strip_prefix("/problems/"))
    }

    /// Whether deployd answered as it promises to when it cannot serve: a typed `503 store-unavailable`.
    #[must_use]
    pub fn is_store_unavailable(&self) -> bool {
        self.status == 503 && self.problem() == Some("store-unavailable")
    }
}

/// Calls a deployd with the admin key.
#[derive(Debug, Clone)]
pub struct Api {
    http: reqwest::Client,
}

impl Default for Api {
    fn default() -> Self {
        Self::new()
    }
}

impl Api {
    /// A client whose calls give up after 15 s.
    #[must_use]
    pub fn new() -> Self {
        let http = reqwest::Client::builder().timeout(Duration::from_secs(15)).build().unwrap_or_default();
        Self { http }
    }

    /// `method path` on `base`, with an optional JSON body and idempotency key.
    pub async fn call(
        &self,
        method: reqwest::Method,
        base: &str,
        path: &str,
        body: Option<&Value>,
        key: Option<&str>,
    ) -> Answer {
        let mut req = self.http.request(method, format!("{base}{path}")).bearer_auth(ADMIN);
        if let Some(b) = body {
            req = req.json(b);
        }
        if let Some(k) = key {
            req = req.header("Idempotency-Key", k);
        }
        match req.send().await {
            Ok(resp) => {
                let status = resp.status().as_u16();
                let body = resp.json::<Value>().await.unwrap_or(Value::Null);
                Answer { status, body }
            }
            Err(_) => Answer { status: 0, body: Value::Null },
        }
    }

    /// `GET path`.
    pub async fn get(&self, base: &str, path: &str) -> Answer {
        self.call(reqwest::Method::GET, base, path, None, None).await
    }

    /// Creates or replaces an environment; fails unless deployd took it.
    pub async fn put_environment(&self, base: &str, name: &str, body: &Value) -> anyhow::Result<()> {
        let a = self.call(reqwest::Method::PUT, base, &format!("/v1/environments/{name}"), Some(body), None).await;
        if !(200..300).contains(&a.status) {
            bail!("environment {name}: {} {}", a.status, a.body);
        }
        Ok(())
    }

    /// Submits a deployment.
    pub async fn submit(&self, base: &str, body: &Value, key: Option<&str>) -> Answer {
        self.call(reqwest::Method::POST, base, "/v1/deployments", Some(body), key).await
    }

    /// Polls until the deployment is terminal on any of `bases` (the replicas that may be down take turns), or
    /// `deadline` passes (`None`: stuck, or lost if it was never found).
    pub async fn wait_terminal(&self, bases: &[String], id: &str, deadline: Duration) -> Option<Value> {
        if bases.is_empty() {
            return None;
        }
        let until = tokio::time::Instant::now() + deadline;
        let mut turn = 0;
        while tokio::time::Instant::now() < until {
            let base = &bases[turn % bases.len()];
            turn += 1;
            let a = self.get(base, &format!("/v1/deployments/{id}")).await;
            if a.status == 200 && is_terminal(a.body["status"].as_str().unwrap_or_default()) {
                return Some(a.body);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        None
    }
}

/// Whether a deployment status is final.
#[must_use]
pub fn is_terminal(status: &str) -> bool {
    ["succeeded", "degraded", "failed", "rolled_back", "cancelled", "superseded"].contains(&status)
}
