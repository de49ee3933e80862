//! The `process` executor: each target is a slot (a port and a working directory) on which one version of a service
//! runs as a local process.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use async_trait::async_trait;
use deploy_core::{
    ApplyContext, DesiredState, EnvSecretResolver, Executor, ExecutorError, Health, HumanDuration, Observation,
    Outcome, SecretResolver, Target, Version,
};
use serde::{Deserialize, Serialize};
use std::sync::Arc;

use crate::local::{self, EnvValue, Proc};

/// How a new version takes over its slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Handover {
    /// Start the new version beside the old one (the service binds its port with `SO_REUSEPORT`), wait for its health
    /// check, then stop the old one: the port never closes.
    #[default]
    Overlap,
    /// Stop the old version, then start the new one (services that cannot share their port).
    StopFirst,
}

/// A `process` target's configuration (the environment's `config` for the target).
///
/// ```json
/// {"command": ["/opt/checkout/{version}/bin/checkout", "--port", "{port}"], "port": 18081,
///  "health_path": "/health", "env": {"RUST_LOG": "info"}}
/// ```
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProcessConfig {
    /// The program and its arguments; `{version}`, `{port}`, `{target}`, `{service}`, `{environment}` and `{workdir}`
    /// are replaced.
    pub command: Vec<String>,
    /// The slot's port on 127.0.0.1.
    pub port: u16,
    /// The working directory (default: the executor's state directory for the target).
    #[serde(default)]
    pub workdir: Option<PathBuf>,
    /// The health check's path; 2xx is healthy. When the answer is JSON with a `version`, it must be the one asked.
    #[serde(default = "default_health_path")]
    pub health_path: String,
    /// Environment variables of every version: literals, or `{"ref": ...}` resolved at each start. The process's
    /// environment is built from nothing: these (they win), `PATH`, `PORT`, the `DEPLOY_*` facts, and the
    /// deployment's `config` and `secrets` as `DEPLOY_CONFIG_<KEY>` and `DEPLOY_SECRET_<NAME>`.
    #[serde(default)]
    pub env: BTreeMap<String, EnvValue>,
    /// How long a new version has to pass its health check.
    #[serde(default = "default_start_timeout")]
    pub start_timeout: HumanDuration,
    /// How long a stopping version gets between SIGTERM and SIGKILL.
    #[serde(default = "default_stop_timeout")]
    pub stop_timeout: HumanDuration,
    /// How a new version takes over.
    #[serde(default)]
    pub handover: Handover,
}

fn default_health_path() -> String {
    "/health".to_owned()
}

fn default_start_timeout() -> HumanDuration {
    HumanDuration::from_secs(15)
}

fn default_stop_timeout() -> HumanDuration {
    HumanDuration::from_secs(5)
}

impl ProcessConfig {
    fn of(target: &Target) -> Result<Self, ExecutorError> {
        serde_json::from_value(target.config.clone())
            .map_err(|e| ExecutorError::permanent(format!("target {}: invalid process config: {e}", target.id)))
    }
}

/// A process this executor started, and the version it runs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Running {
    #[serde(flatten)]
    proc: Proc,
    version: String,
    port: u16,
}

/// What the executor knows of a slot: the processes it started there (the current one last).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct SlotState {
    processes: Vec<Running>,
}

/// The `process` executor. Its state (which pid runs which version) lives in files under its state directory, so a
/// restarted `deployd` finds the processes it started: they keep running while it is down.
#[derive(Clone)]
pub struct ProcessExecutor {
    root: PathBuf,
    http: reqwest::Client,
    secrets: Arc<dyn SecretResolver>,
    relay: Option<Vec<String>>,
}

impl std::fmt::Debug for ProcessExecutor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProcessExecutor").field("root", &self.root).finish_non_exhaustive()
    }
}

/// One health probe's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Probe {
    /// 2xx, with the version the answer reported, if any.
    Up(Option<String>),
    /// Another status.
    Failing(u16),
    /// No answer.
    Down(String),
}

impl ProcessExecutor {
    /// An executor keeping its state under `state_dir`.
    #[must_use]
    pub fn new(state_dir: impl Into<PathBuf>) -> Self {
        // A fresh connection per probe: with SO_REUSEPORT each may reach either version.
        let http = local::probe_client(
            reqwest::Client::builder().timeout(Duration::from_secs(2)).no_proxy().pool_max_idle_per_host(0),
        );
        Self { root: state_dir.into(), http, secrets: Arc::new(EnvSecretResolver::default()), relay: None }
    }

    /// Reads services' output through a relay process started from `argv` (the log's path is appended), which must
    /// run [`crate::run_log_relay`]: `deployd log-relay` does ([`crate::relay_command`]). The relay outlives this
    /// process, so a service keeps a reader for its output (scrubbed before it is written) while deployd restarts.
    /// Without one, a thread of this process reads it: a service then loses its output's reader (and is sent
    /// `SIGPIPE` on its next write) once this process ends.
    #[must_use]
    pub fn log_relay(mut self, argv: Vec<String>) -> Self {
        self.relay = Some(argv).filter(|a| !a.is_empty());
        self
    }

    /// Resolves references in targets' `env` with `resolver` (default: `DEPLOY_SECRET_*` variables).
    #[must_use]
    pub fn secrets(mut self, resolver: Arc<dyn SecretResolver>) -> Self {
        self.secrets = resolver;
        self
    }

    fn state_file(&self, target: &Target) -> PathBuf {
        local::target_dir(&self.root, target).join("processes.json")
    }

    async fn probe(&self, port: u16, path: &str) -> Probe {
        let url = format!("http://127.0.0.1:{port}{path}");
        match self.http.get(&url).send().await {
            Ok(r) if r.status().is_success() => {
                let version = r
                    .json::<serde_json::Value>()
                    .await
                    .ok()
                    .and_then(|v| v.get("version").and_then(serde_json::Value::as_str).map(str::to_owned));
                Probe::Up(version)
            }
            Ok(r) => Probe::Failing(r.status().as_u16()),
            Err(e) => Probe::Down(e.to_string()),
        }
    }

    /// Whether a probe shows `version` healthy (an answer naming no version counts).
    fn healthy_as(probe: &Probe, version: &str) -> bool {
        matches!(probe, Probe::Up(v) if v.as_deref().is_none_or(|v| v == version))
    }

    /// Whether the slot answers its health check as `version`. While an older version shares the port an answer may
    /// come from either process, so a few fresh connections are tried.
    async fn answers_as(&self, cfg: &ProcessConfig, version: &str) -> bool {
        for _ in 0..16 {
            if Self::healthy_as(&self.probe(cfg.port, &cfg.health_path).await, version) {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        false
    }

    /// Waits for the new process to answer its health check as `version`.
    async fn wait_healthy(&self, cfg: &ProcessConfig, new: &Running) -> Result<(), String> {
        let deadline = tokio::time::Instant::now() + cfg.start_timeout.as_std();
        // While both versions share the port an answer may come from either: a failing answer is the new one's.
        let mut failing = None;
        loop {
            if !new.proc.alive() {
                return Err("it exited".into());
            }
            let last = self.probe(cfg.port, &cfg.health_path).await;
            if Self::healthy_as(&last, &new.version) {
                return Ok(());
            }
            if let Probe::Failing(_) = last {
                failing = Some(last.clone());
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(match failing.unwrap_or(last) {
                    Probe::Up(Some(v)) => format!("the health check still answers as version {v}"),
                    Probe::Up(None) => "no healthy answer".into(),
                    Probe::Failing(s) => format!("the health check answers {s}"),
                    Probe::Down(e) => format!("the health check does not answer: {e}"),
                });
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn command(cfg: &ProcessConfig, target: &Target, desired: &DesiredState, workdir: &std::path::Path) -> Vec<String> {
        let port = cfg.port.to_string();
        let workdir = workdir.display().to_string();
        cfg.command
            .iter()
            .map(|arg| {
                arg.replace("{version}", desired.version.as_str())
                    .replace("{port}", &port)
                    .replace("{target}", target.id.as_str())
                    .replace("{service}", desired.service.as_str())
                    .replace("{environment}", target.environment.as_str())
                    .replace("{workdir}", &workdir)
            })
            .collect()
    }
}

impl ProcessExecutor {
    /// Stops every process this executor started on `target` (SIGTERM, then SIGKILL after the target's stop timeout)
    /// and forgets them: decommissioning a slot, or cleaning up after a demo.
    ///
    /// # Errors
    /// When the target's configuration or state cannot be read.
    pub async fn stop(&self, target: &Target) -> Result<(), ExecutorError> {
        let cfg = ProcessConfig::of(target)?;
        let file = self.state_file(target);
        let state: SlotState = local::load(&file)?;
        for p in &state.processes {
            p.proc.stop(cfg.stop_timeout.as_std()).await;
        }
        local::save(&file, &SlotState::default())
    }

    /// The processes running on `target` now: pid and version (the current one last).
    ///
    /// # Errors
    /// When the target's state cannot be read.
    pub fn running(&self, target: &Target) -> Result<Vec<(u32, String)>, ExecutorError> {
        let state: SlotState = local::load(&self.state_file(target))?;
        Ok(state.processes.iter().filter(|p| p.proc.alive()).map(|p| (p.proc.pid, p.version.clone())).collect())
    }
}

impl ProcessExecutor {
    /// Brings the target to `ctx.desired` (see [`Executor::apply`]).
    async fn install(&self, target: &Target, ctx: ApplyContext<'_>) -> Result<(), ExecutorError> {
        let cfg = ProcessConfig::of(target)?;

        let version = ctx.desired.version.as_str().to_owned();
        let dir = local::target_dir(&self.root, target);
        let workdir = cfg.workdir.clone().unwrap_or_else(|| dir.clone());
        crate::local::create_private_dir(&workdir)
            .map_err(|e| ExecutorError::retryable(format!("cannot create {}: {e}", workdir.display())))?;
        let state_file = self.state_file(target);
        let mut state: SlotState = local::load(&state_file)?;
        state.processes.retain(|p| p.proc.alive());
        let grace = cfg.stop_timeout.as_std();

        // Idempotent: the version asked for already runs and is healthy (an apply interrupted after the handover, or
        // a restarted deployd applying again): stop whatever else still runs, and that is all.
        if let Some(keep) = state.processes.iter().rev().find(|p| p.version == version).cloned()
            && self.answers_as(&cfg, &version).await
        {
            for other in state.processes.iter().filter(|p| p.proc != keep.proc) {
                other.proc.stop(grace).await;
            }
            state.processes = vec![keep];
            return local::save(&state_file, &state);
        }
        if cfg.handover == Handover::StopFirst {
            for old in &state.processes {
                old.proc.stop(grace).await;
            }
            state.processes.clear();
        }
        let local::ProgramEnv { mut vars, scrubber } =
            local::environment(target, ctx.desired, Some(ctx), &cfg.env, self.secrets.as_ref()).await?;
        vars.entry("PORT".to_owned()).or_insert_with(|| cfg.port.to_string());
        let log = dir.join(format!("{version}.log"));
        crate::local::create_private_dir(&dir)
            .map_err(|e| ExecutorError::retryable(format!("cannot create {}: {e}", dir.display())))?;
        let argv = Self::command(&cfg, target, ctx.desired, &workdir);
        let sink = local::Sink { log: &log, scrubber: &scrubber, relay: self.relay.as_deref() };
        let (proc, captured) = local::spawn(&argv, &workdir, &vars, &sink).await?;
        let new = Running { proc, version: version.clone(), port: cfg.port };
        // Recorded before anything else happens, so a restart mid-handover still knows this process.
        state.processes.push(new.clone());
        local::save(&state_file, &state)?;

        match self.wait_healthy(&cfg, &new).await {
            Ok(()) => {
                for old in state.processes.iter().filter(|p| p.proc != new.proc) {
                    old.proc.stop(grace).await;
                }
                state.processes = vec![new];
                local::save(&state_file, &state)
            }
            Err(why) => {
                new.proc.stop(grace).await;
                state.processes.retain(|p| p.proc != new.proc);
                local::save(&state_file, &state)?;
                // Scrubbed as it was read, before it reached the log or this tail.
                let output = match &captured {
                    Some(c) => c.tail(1024),
                    None => crate::output::file_tail(&log, 1024),
                };
                let output = if output.is_empty() { String::new() } else { format!("; its output ends: {output}") };
                Err(ExecutorError::permanent(format!(
                    "{version} did not pass its health check within {}: {why}{output}",
                    cfg.start_timeout
                )))
            }
        }
    }
}

#[async_trait]
impl Executor for ProcessExecutor {
    /// The command is a program an admin names: host-level power.
    fn runs_host_programs(&self) -> bool {
        true
    }

    async fn observe(&self, target: &Target, _: Option<&DesiredState>) -> Result<Observation, ExecutorError> {
        let cfg = ProcessConfig::of(target)?;
        let state: SlotState = local::load(&self.state_file(target))?;
        let Some(current) = state.processes.iter().rev().find(|p| p.proc.alive()) else {
            return Ok(Observation { version: None, health: Health::Unknown });
        };
        let version = Version::new(current.version.clone()).ok();
        let health = match self.probe(current.port, &cfg.health_path).await {
            p if Self::healthy_as(&p, &current.version) => Health::Healthy,
            _ => Health::Unhealthy,
        };
        Ok(Observation { version, health })
    }

    async fn apply(&self, target: &Target, ctx: ApplyContext<'_>) -> Result<Outcome, ExecutorError> {
        self.install(target, ctx).await.map(|()| Outcome::quiet())
    }

    async fn verify(&self, target: &Target, desired: &DesiredState) -> Result<Health, ExecutorError> {
        let cfg = ProcessConfig::of(target)?;
        let state: SlotState = local::load(&self.state_file(target))?;
        let running = state.processes.iter().rev().find(|p| p.proc.alive());
        let Some(current) = running.filter(|p| p.version == desired.version.as_str()) else {
            return Ok(Health::Unhealthy);
        };
        let probe = self.probe(current.port, &cfg.health_path).await;
        Ok(if Self::healthy_as(&probe, &current.version) { Health::Healthy } else { Health::Unhealthy })
    }
}
