//! The `sim` executor: a target that only exists as a small file, whose faults are scripted by its configuration.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use async_trait::async_trait;
use deploy_core::{
    ApplyContext, DesiredState, Executor, ExecutorError, Health, ImperativeStep, Observation, Outcome, Target, Version,
};
use serde::{Deserialize, Serialize};

/// A `sim` target's `config`, as an environment gives it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SimConfig {
    /// The version running before any deployment.
    #[serde(default)]
    pub initial_version: Option<String>,
    /// How long one apply takes, in milliseconds (default 10).
    #[serde(default = "default_apply_ms")]
    pub apply_ms: u64,
    /// Applies of these versions fail permanently.
    #[serde(default)]
    pub fail_versions: BTreeSet<String>,
    /// These versions apply but never become healthy.
    #[serde(default)]
    pub unhealthy_versions: BTreeSet<String>,
    /// While the desired version is one of these, apply and observe answer "unreachable".
    #[serde(default)]
    pub unreachable_versions: BTreeSet<String>,
    /// The first N applies of each version fail with a retryable error.
    #[serde(default)]
    pub flaky_failures: u32,
}

const fn default_apply_ms() -> u64 {
    10
}

impl SimConfig {
    fn of(target: &Target) -> Result<Self, ExecutorError> {
        if target.config.is_null() {
            return Ok(Self { apply_ms: default_apply_ms(), ..Self::default() });
        }
        serde_json::from_value(target.config.clone())
            .map_err(|e| ExecutorError::permanent(format!("target {}: invalid sim config: {e}", target.id)))
    }
}

/// What one simulated target holds, persisted as JSON.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
struct SimState {
    /// The running version; `None` means the initial version (or nothing).
    actual: Option<String>,
    /// The version last asked for.
    desired: Option<String>,
    /// Stopped by an imperative `stop` and not started since.
    stopped: bool,
    /// Fetched by an imperative `fetch`.
    fetched: Option<String>,
    /// Applies per version, for `flaky_failures`.
    applies: BTreeMap<String, u32>,
}

/// Simulated targets (kind `sim`). Each target's state lives in memory and, when the executor has a directory, in
/// `<dir>/<environment>/<target>.json`, so it survives a restart of the process.
///
/// ```
/// # async fn demo() -> Result<(), deploy_core::ExecutorError> {
/// use deploy_core::{DesiredState, Executor, Health};
/// use deploy_executors::SimExecutor;
/// let sim = SimExecutor::in_memory();
/// let target = deploy_core::Target {
///     environment: "prod".parse().unwrap(),
///     id: "web-1".parse().unwrap(),
///     labels: Default::default(),
///     executor: "sim".parse().unwrap(),
///     config: serde_json::json!({"initial_version": "1.0", "apply_ms": 0}),
/// };
/// assert_eq!(sim.observe(&target, None).await?.version.unwrap().as_str(), "1.0");
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct SimExecutor {
    dir: Option<PathBuf>,
    states: Mutex<HashMap<(String, String), SimState>>,
}

impl SimExecutor {
    /// Targets kept in memory only.
    #[must_use]
    pub fn in_memory() -> Self {
        Self { dir: None, states: Mutex::new(HashMap::new()) }
    }

    /// Targets kept under `dir` (created on first write).
    #[must_use]
    pub fn persistent(dir: impl Into<PathBuf>) -> Self {
        Self { dir: Some(dir.into()), states: Mutex::new(HashMap::new()) }
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<(String, String), SimState>> {
        self.states.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn path(dir: &Path, target: &Target) -> PathBuf {
        dir.join(target.environment.as_str()).join(format!("{}.json", target.id))
    }

    /// The target's state: from memory, else from disk, else fresh.
    fn load(&self, target: &Target) -> Result<SimState, ExecutorError> {
        let key = (target.environment.to_string(), target.id.to_string());
        if let Some(state) = self.lock().get(&key) {
            return Ok(state.clone());
        }
        let state = match &self.dir {
            Some(dir) => match std::fs::read(Self::path(dir, target)) {
                Ok(bytes) => serde_json::from_slice(&bytes)
                    .map_err(|e| ExecutorError::permanent(format!("sim state of {} is unreadable: {e}", target.id)))?,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => SimState::default(),
                Err(e) => return Err(ExecutorError::retryable(format!("reading sim state of {}: {e}", target.id))),
            },
            None => SimState::default(),
        };
        self.lock().entry(key).or_insert(state.clone());
        Ok(state)
    }

    /// Changes the target's state in memory and on disk (written to a temporary file, then renamed over the old one).
    fn update<R>(&self, target: &Target, change: impl FnOnce(&mut SimState) -> R) -> Result<R, ExecutorError> {
        let mut state = self.load(target)?;
        let out = change(&mut state);
        if let Some(dir) = &self.dir {
            let path = Self::path(dir, target);
            let write = || -> std::io::Result<()> {
                if let Some(parent) = path.parent() {
                    crate::local::create_private_dir(parent)?;
                }
                let tmp = path.with_extension("json.tmp");
                crate::local::write_private(&tmp, &serde_json::to_vec(&state).map_err(std::io::Error::other)?)?;
                std::fs::rename(&tmp, &path)
            };
            write().map_err(|e| ExecutorError::retryable(format!("writing sim state of {}: {e}", target.id)))?;
        }
        self.lock().insert((target.environment.to_string(), target.id.to_string()), state);
        Ok(out)
    }

    fn running(config: &SimConfig, state: &SimState) -> Option<String> {
        if state.stopped { None } else { state.actual.clone().or_else(|| config.initial_version.clone()) }
    }

    fn check_reachable(config: &SimConfig, state: &SimState, target: &Target) -> Result<(), ExecutorError> {
        match &state.desired {
            Some(v) if config.unreachable_versions.contains(v) => {
                Err(ExecutorError::unreachable(format!("sim target {} does not answer (version {v})", target.id)))
            }
            _ => Ok(()),
        }
    }
}

fn version(v: &str, target: &Target) -> Result<Version, ExecutorError> {
    v.parse().map_err(|_| ExecutorError::permanent(format!("sim target {} holds an invalid version {v:?}", target.id)))
}

#[async_trait]
impl Executor for SimExecutor {
    async fn observe(&self, target: &Target, _: Option<&DesiredState>) -> Result<Observation, ExecutorError> {
        let config = SimConfig::of(target)?;
        let state = self.load(target)?;
        Self::check_reachable(&config, &state, target)?;
        let running = Self::running(&config, &state);
        let health = match &running {
            None => Health::Unknown,
            Some(v) if config.unhealthy_versions.contains(v) => Health::Unhealthy,
            Some(_) => Health::Healthy,
        };
        Ok(Observation { version: running.map(|v| version(&v, target)).transpose()?, health })
    }

    async fn apply(&self, target: &Target, ctx: ApplyContext<'_>) -> Result<Outcome, ExecutorError> {
        let config = SimConfig::of(target)?;
        let wanted = ctx.desired.version.to_string();
        let attempt = self.update(target, |s| {
            s.desired = Some(wanted.clone());
            let n = s.applies.entry(wanted.clone()).or_insert(0);
            *n = n.saturating_add(1);
            *n
        })?;
        tokio::time::sleep(Duration::from_millis(config.apply_ms)).await;
        if config.unreachable_versions.contains(&wanted) {
            return Err(ExecutorError::unreachable(format!(
                "sim target {} does not answer (version {wanted})",
                target.id
            )));
        }
        if config.fail_versions.contains(&wanted) {
            return Err(ExecutorError::permanent(format!("sim: version {wanted} fails to install on {}", target.id)));
        }
        if attempt <= config.flaky_failures {
            return Err(ExecutorError::retryable(format!(
                "sim: transient failure {attempt} of {} installing {wanted} on {}",
                config.flaky_failures, target.id
            )));
        }
        self.update(target, |s| {
            s.actual = Some(wanted);
            s.stopped = false;
        })?;
        Ok(Outcome::quiet())
    }

    async fn verify(&self, target: &Target, desired: &DesiredState) -> Result<Health, ExecutorError> {
        let config = SimConfig::of(target)?;
        let state = self.load(target)?;
        Self::check_reachable(&config, &state, target)?;
        let wanted = desired.version.as_str();
        Ok(match Self::running(&config, &state) {
            Some(v) if v == wanted && !config.unhealthy_versions.contains(&v) => Health::Healthy,
            Some(_) => Health::Unhealthy,
            None => Health::Unknown,
        })
    }

    async fn run_step(
        &self,
        target: &Target,
        step: &ImperativeStep,
        ctx: ApplyContext<'_>,
    ) -> Result<Outcome, ExecutorError> {
        let config = SimConfig::of(target)?;
        let wanted = ctx.desired.version.to_string();
        let output = match step.action.as_str() {
            "stop" => self.update(target, |s| {
                s.stopped = true;
                format!("stopped {}", s.actual.clone().or_else(|| config.initial_version.clone()).unwrap_or_default())
            })?,
            "fetch" => {
                if config.fail_versions.contains(&wanted) {
                    return Err(ExecutorError::permanent(format!("sim: version {wanted} cannot be fetched")));
                }
                self.update(target, |s| {
                    s.fetched = Some(wanted.clone());
                    format!("fetched {wanted}")
                })?
            }
            "start" => self.update(target, |s| {
                s.desired = Some(wanted.clone());
                s.actual = Some(wanted.clone());
                s.stopped = false;
                format!("started {wanted}")
            })?,
            other => {
                return Err(ExecutorError::permanent(format!(
                    "sim: unknown step {other:?}; it knows stop, fetch and start"
                )));
            }
        };
        tokio::time::sleep(Duration::from_millis(config.apply_ms)).await;
        Ok(Outcome { output })
    }
}
