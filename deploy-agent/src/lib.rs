//! # deploy-agent
//!
//! The sidecar pattern: an agent on a target's host connects out to `deployd`, long-polls the target's assignment,
//! applies it with a local executor (`process` or `command` from `deploy-executors`, or any [`Executor`]), and reports
//! what actually runs, its health and the output of the change. The report doubles as the heartbeat: a silent agent
//! makes its target unreachable on the server, where the deployment's `on_unreachable` policy decides.
//!
//! - **Idempotent**: an assignment is applied once per generation; the generation applied is kept on local disk, so a
//!   restarted agent does not apply again what already runs.
//! - **Partition-tolerant**: while the server is unreachable the agent keeps the current version running and retries
//!   with backoff and jitter; once back, its next report tells the server the truth.
//!
//! The configuration is checked before anything runs:
//!
//! ```
//! let refused = deploy_agent::AgentConfig::new("prod", "../etc", "process", serde_json::Value::Null, "/tmp/agent");
//! assert!(refused.is_err(), "a target id must be a name, never a path");
//! ```
//!
//! A whole agent, as `deploy-agent` runs one:
//!
//! ```no_run
//! # async fn demo() -> anyhow::Result<()> {
//! use std::sync::Arc;
//! let client = deploy_client::Client::builder("http://deployd:8080").token("dk_...").build()?;
//! let config = deploy_agent::AgentConfig::new("prod", "web-1", "process", serde_json::json!({
//!     "command": ["/opt/app/{version}/bin/app", "--port", "{port}"], "port": 8080
//! }), "/var/lib/deploy-agent")?;
//! let executor = Arc::new(deploy_executors::ProcessExecutor::new("/var/lib/deploy-agent/process"));
//! let (_stop, signal) = deploy_core::ShutdownSignal::new();
//! deploy_agent::Agent::new(client, config, executor).run(signal).await?;
//! # Ok(()) }
//! ```

use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use deploy_client::Client;
use deploy_core::{
    AgentReport, AgentSlot, ApplyContext, DesiredState, EnvSecretResolver, EnvironmentName, Executor, ExecutorKind,
    Health, Scrubber, SecretResolver, ShutdownSignal, Target, TargetId, Version,
};
use serde::{Deserialize, Serialize};

/// Output kept for a report, from its end.
const OUTPUT_LIMIT: usize = 16 * 1024;

/// What an agent is.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    /// Its target's environment.
    pub environment: EnvironmentName,
    /// Its target.
    pub target: TargetId,
    /// The local executor's kind (`process`, `command`).
    pub executor: ExecutorKind,
    /// The local executor's configuration for the target (as an environment's target `config`).
    pub executor_config: serde_json::Value,
    /// Where the agent keeps what it applied.
    pub state_dir: PathBuf,
    /// How often it reports (its heartbeat).
    pub heartbeat: Duration,
    /// How long one assignment poll is held by the server.
    pub poll_wait: Duration,
}

/// Why an agent could not start or stopped.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AgentError {
    /// A name in the configuration is invalid.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// The local state cannot be read or written.
    #[error("local state {path}: {source}")]
    State {
        /// The file.
        path: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

impl AgentConfig {
    /// An agent of `target` in `environment` using the local executor `executor` configured by `executor_config`,
    /// keeping its state in `state_dir`; reports every 2 s, polls for 20 s at a time.
    ///
    /// # Errors
    /// [`AgentError::Config`] when a name is invalid.
    pub fn new(
        environment: &str,
        target: &str,
        executor: &str,
        executor_config: serde_json::Value,
        state_dir: impl Into<PathBuf>,
    ) -> Result<Self, AgentError> {
        Ok(Self {
            environment: EnvironmentName::new(environment).map_err(|e| AgentError::Config(e.to_string()))?,
            target: TargetId::new(target).map_err(|e| AgentError::Config(e.to_string()))?,
            executor: ExecutorKind::new(executor).map_err(|e| AgentError::Config(e.to_string()))?,
            executor_config,
            state_dir: state_dir.into(),
            heartbeat: Duration::from_secs(2),
            poll_wait: Duration::from_secs(20),
        })
    }

    fn state_file(&self) -> PathBuf {
        self.state_dir.join(format!("agent-{}-{}.json", self.environment, self.target))
    }

    fn target(&self) -> Target {
        Target {
            environment: self.environment.clone(),
            id: self.target.clone(),
            labels: std::collections::BTreeMap::new(),
            executor: self.executor.clone(),
            config: self.executor_config.clone(),
        }
    }
}

/// What the agent applied last, kept on disk.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
struct Applied {
    generation: u64,
    version: Option<Version>,
    error: Option<String>,
    output: String,
    /// What was applied, to check its health with the executor.
    desired: Option<DesiredState>,
}

/// An agent; see the crate documentation.
pub struct Agent {
    client: Client,
    config: AgentConfig,
    executor: Arc<dyn Executor>,
    secrets: Arc<dyn SecretResolver>,
    applied: Arc<Mutex<Applied>>,
}

impl std::fmt::Debug for Agent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Agent").field("config", &self.config).finish_non_exhaustive()
    }
}

fn lock(m: &Mutex<Applied>) -> std::sync::MutexGuard<'_, Applied> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// `delay` plus up to half of it again, at random.
fn jittered(delay: Duration) -> Duration {
    let half = u64::try_from((delay / 2).as_nanos()).unwrap_or(u64::MAX).max(1);
    // The low 64 bits of a UUIDv7 are random.
    delay + Duration::from_nanos(uuid::Uuid::now_v7().as_u128() as u64 % half)
}

fn tail(text: &str) -> String {
    let mut start = text.len().saturating_sub(OUTPUT_LIMIT);
    while !text.is_char_boundary(start) {
        start += 1;
    }
    text.get(start..).unwrap_or_default().to_owned()
}

impl Agent {
    /// An agent talking to the server through `client` (whose token is the agent's key) and changing its target with
    /// `executor`. Secret references are resolved locally from the agent's environment, for variables named
    /// `DEPLOY_SECRET_*` only (`env://DEPLOY_SECRET_NAME`): the agent's own key is never resolvable.
    #[must_use]
    pub fn new(client: Client, config: AgentConfig, executor: Arc<dyn Executor>) -> Self {
        Self { client, config, executor, secrets: Arc::new(EnvSecretResolver::default()), applied: Arc::default() }
    }

    /// Resolves secret references with `resolver` instead of the agent's environment.
    #[must_use]
    pub fn secrets(mut self, resolver: Arc<dyn SecretResolver>) -> Self {
        self.secrets = resolver;
        self
    }

    fn load(&self) -> Result<Applied, AgentError> {
        let path = self.config.state_file();
        match std::fs::read(&path) {
            Ok(bytes) => Ok(serde_json::from_slice(&bytes).unwrap_or_default()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Applied::default()),
            Err(source) => Err(AgentError::State { path: path.display().to_string(), source }),
        }
    }

    fn save(&self, applied: &Applied) -> Result<(), AgentError> {
        let path = self.config.state_file();
        let fail = |source| AgentError::State { path: path.display().to_string(), source };
        std::fs::create_dir_all(&self.config.state_dir).map_err(fail)?;
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, serde_json::to_vec(applied).unwrap_or_default()).map_err(fail)?;
        std::fs::rename(&tmp, &path).map_err(fail)
    }

    /// What runs now, as a report about the generation last applied.
    async fn report(&self) -> AgentReport {
        let applied = lock(&self.applied).clone();
        let observed = self.executor.observe(&self.config.target(), applied.desired.as_ref()).await;
        let (version, health) = match observed {
            // What was applied still runs: its health is the executor's verdict on it (a `command` target's validate
            // hook, a `process` target's health check).
            Ok(o) => match &applied.desired {
                Some(d) if o.version.as_ref() == Some(&d.version) => {
                    let health = self.executor.verify(&self.config.target(), d).await.unwrap_or(Health::Unknown);
                    (o.version, health)
                }
                _ => (o.version, o.health),
            },
            Err(e) => {
                tracing::warn!(error = %e, "cannot observe the target");
                (applied.version.clone(), Health::Unknown)
            }
        };
        AgentReport { generation: applied.generation, version, health, output: applied.output, error: applied.error }
    }

    async fn send_report(&self) -> bool {
        let report = self.report().await;
        match self.client.agent_report(self.config.environment.as_str(), self.config.target.as_str(), &report).await {
            Ok(_) => true,
            Err(e) => {
                tracing::warn!(error = %e, "cannot report to the server; will try again");
                false
            }
        }
    }

    /// Applies an assignment newer than what was applied; returns whether anything was done.
    async fn apply(&self, slot: &AgentSlot) -> Result<bool, AgentError> {
        let Some(desired) = slot.desired.as_ref() else { return Ok(false) };
        if slot.generation <= lock(&self.applied).generation {
            return Ok(false);
        }
        let target = self.config.target();
        tracing::info!(generation = slot.generation, version = %desired.version, "applying");
        let result = match deploy_core::resolve_for(self.secrets.as_ref(), desired, None).await {
            Ok(secrets) => {
                let deployment = slot.deployment.unwrap_or_default();
                // The token of the controller's lease behind the assignment: the server fences the assignment
                // itself, and the executor here (a `command` hook, as DEPLOY_FENCING_TOKEN) gets it too.
                let ctx = ApplyContext {
                    deployment,
                    desired,
                    secrets: &secrets,
                    fencing_token: slot.fencing_token,
                    progress: None,
                };
                // Nothing the server records may hold a secret resolved here: scrubbed before it is reported.
                let scrubber = Scrubber::of(&secrets);
                match self.executor.apply(&target, ctx).await {
                    Ok(mut out) => {
                        scrubber.scrub_in_place(&mut out.output);
                        Ok(out)
                    }
                    Err(e) => Err(e.scrubbed(&scrubber)),
                }
            }
            Err(e) => Err(e),
        };
        let applied = match result {
            Ok(out) => Applied {
                generation: slot.generation,
                version: Some(desired.version.clone()),
                error: None,
                output: tail(&out.output),
                desired: Some(desired.clone()),
            },
            Err(e) => {
                let before = lock(&self.applied).clone();
                Applied {
                    generation: slot.generation,
                    version: before.version,
                    error: Some(e.message().to_owned()),
                    output: String::new(),
                    desired: before.desired,
                }
            }
        };
        self.save(&applied)?;
        *lock(&self.applied) = applied;
        Ok(true)
    }

    /// Runs until `shutdown` fires: reports every heartbeat, long-polls the assignment, applies what is new.
    ///
    /// # Errors
    /// [`AgentError`] when the local state cannot be read or written.
    pub async fn run(self, shutdown: ShutdownSignal) -> Result<(), AgentError> {
        *lock(&self.applied) = self.load()?;
        let this = Arc::new(self);
        let heartbeats = {
            let (this, mut stop) = (Arc::clone(&this), shutdown.clone());
            tokio::spawn(async move {
                loop {
                    this.send_report().await;
                    tokio::select! {
                        () = stop.fired() => break,
                        () = tokio::time::sleep(this.config.heartbeat) => {}
                    }
                }
            })
        };
        let mut stop = shutdown.clone();
        let mut known: Option<u64> = None;
        let mut backoff = Duration::from_millis(200);
        let (env, target) = (this.config.environment.to_string(), this.config.target.to_string());
        let result = loop {
            if shutdown.is_fired() {
                break Ok(());
            }
            let polled = tokio::select! {
                () = stop.fired() => break Ok(()),
                polled = this.client.agent_assignment(&env, &target, known, this.config.poll_wait) => polled,
            };
            match polled {
                Ok(Some(slot)) => {
                    backoff = Duration::from_millis(200);
                    known = Some(slot.generation);
                    match this.apply(&slot).await {
                        Ok(true) => {
                            this.send_report().await;
                        }
                        Ok(false) => {}
                        Err(e) => break Err(e),
                    }
                }
                Ok(None) => backoff = Duration::from_millis(200),
                Err(e) => {
                    tracing::warn!(error = %e, "cannot reach the server; the current version keeps running");
                    tokio::select! {
                        () = stop.fired() => break Ok(()),
                        () = tokio::time::sleep(jittered(backoff)) => {}
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(30));
                }
            }
        };
        heartbeats.abort();
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jitter_stays_within_half_again() {
        for _ in 0..100 {
            let d = jittered(Duration::from_millis(200));
            assert!(d >= Duration::from_millis(200) && d < Duration::from_millis(300), "{d:?}");
        }
    }

    #[test]
    fn output_is_kept_from_its_end() {
        let long = "é".repeat(OUTPUT_LIMIT);
        let kept = tail(&long);
        assert!(kept.len() <= OUTPUT_LIMIT && kept.ends_with('é'));
    }
}
