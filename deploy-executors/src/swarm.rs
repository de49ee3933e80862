//! The `swarm` executor: a target is a Docker Swarm service. deployd hands the version to Swarm, which does its own
//! rolling update under the target's `update` settings; deployd watches `UpdateStatus` and the tasks, and reports a
//! paused or rolled-back update as a failed target with Swarm's own message.
//!
//! The service's spec carries deployd's labels (version, deployment, fencing token, and a digest of the spec), so an
//! apply whose spec is already the service's does not issue the update again: a restarted deployd, or another
//! replica, watches the update in flight to its end. A failed update is rolled back with Swarm's native rollback
//! (`--rollback`): Swarm rolls back on its own when a task fails and is not restarted; when the task's restart policy
//! keeps restarting a failing version (Swarm then never declares the update failed), deployd asks for the rollback as
//! soon as a task of the new spec fails, or when the update outlives the target's `deadline`.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use async_trait::async_trait;
use bollard::Docker;
use bollard::errors::Error as EngineError;
use bollard::models::{
    EndpointPortConfig, EndpointPortConfigPublishModeEnum, EndpointSpec, Service, ServiceSpec, ServiceSpecMode,
    ServiceSpecModeReplicated, ServiceSpecRollbackConfig, ServiceSpecRollbackConfigFailureActionEnum,
    ServiceSpecRollbackConfigOrderEnum, ServiceSpecUpdateConfig, ServiceSpecUpdateConfigFailureActionEnum,
    ServiceSpecUpdateConfigOrderEnum, ServiceUpdateStatusStateEnum as State, TaskSpec, TaskSpecContainerSpec,
    TaskSpecRestartPolicy, TaskSpecRestartPolicyConditionEnum, TaskState,
};
use bollard::query_parameters::{ListTasksOptions, UpdateServiceOptions};
use deploy_core::{
    ApplyContext, DesiredState, EnvSecretResolver, Executor, ExecutorError, Health, HumanDuration, Observation,
    Outcome, SecretResolver, Target, Version,
};
use serde::{Deserialize, Serialize};
use std::sync::Arc;

use crate::docker::{EngineTls, Engines, LABEL_PREFIX, check_engine, engine_error, is_name, spec_digest};
use crate::local::{self, EnvValue};

/// A `swarm` target's configuration, written by an admin of every environment (the engine is root on its host).
///
/// ```json
/// {"engine": "unix:///var/run/docker.sock", "service": "checkout", "image": "registry.example/checkout:{version}",
///  "replicas": 4, "ports": [{"container": 8080, "host": 18080}],
///  "update": {"parallelism": 1, "monitor": "5s", "order": "start-first"}, "deadline": "5m"}
/// ```
///
/// Like `docker` targets, there is no field for mounts, privileges, capabilities or host namespaces.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SwarmConfig {
    /// A manager's engine: `unix:///path` (default the local socket) or `tcp://host:port` with `tls`.
    #[serde(default)]
    pub engine: Option<String>,
    /// Client TLS for a `tcp://` engine.
    #[serde(default)]
    pub tls: Option<EngineTls>,
    /// The service's name.
    pub service: String,
    /// The image; `{version}` and `{service}` are replaced. A deployment's artifact `docker://<image>` wins.
    pub image: String,
    /// Replicas when deployd creates the service (an existing service keeps its own count).
    #[serde(default = "one")]
    pub replicas: u64,
    /// The command, instead of the image's.
    #[serde(default)]
    pub command: Option<Vec<String>>,
    /// Ports published on each node running a task (`mode=host`).
    #[serde(default)]
    pub ports: Vec<crate::docker::PortSpec>,
    /// Variables of every version (literals, or references resolved for each apply); the deployment's `config` and
    /// `secrets` come as `DEPLOY_CONFIG_<KEY>` and `DEPLOY_SECRET_<NAME>`.
    #[serde(default)]
    pub env: BTreeMap<String, EnvValue>,
    /// Swarm's rolling update.
    #[serde(default)]
    pub update: UpdatePolicy,
    /// When a task stops: `none`, `on-failure` or `any` (default).
    #[serde(default = "default_restart")]
    pub restart: String,
    /// How long an update may run before deployd has Swarm roll it back.
    #[serde(default = "default_deadline")]
    pub deadline: HumanDuration,
}

/// Swarm's `update_config`.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct UpdatePolicy {
    /// Tasks updated at once.
    #[serde(default = "one")]
    pub parallelism: u64,
    /// Between batches.
    #[serde(default = "zero")]
    pub delay: HumanDuration,
    /// How long a new task is watched for failure.
    #[serde(default = "default_monitor")]
    pub monitor: HumanDuration,
    /// The share of tasks that may fail before the update fails (0 to 1).
    #[serde(default)]
    pub max_failure_ratio: f64,
    /// `stop-first` (default) or `start-first`.
    #[serde(default = "default_order")]
    pub order: String,
}

impl Default for UpdatePolicy {
    fn default() -> Self {
        Self {
            parallelism: 1,
            delay: zero(),
            monitor: default_monitor(),
            max_failure_ratio: 0.0,
            order: default_order(),
        }
    }
}

const fn one() -> u64 {
    1
}

fn zero() -> HumanDuration {
    HumanDuration::from_secs(0)
}

fn default_monitor() -> HumanDuration {
    HumanDuration::from_secs(5)
}

fn default_order() -> String {
    "stop-first".to_owned()
}

fn default_restart() -> String {
    "any".to_owned()
}

fn default_deadline() -> HumanDuration {
    HumanDuration::from_secs(300)
}

impl SwarmConfig {
    /// The configuration of `target`, checked.
    ///
    /// # Errors
    /// A permanent error naming what is wrong.
    pub fn of(target: &Target) -> Result<Self, ExecutorError> {
        let bad = |why: String| ExecutorError::permanent(format!("target {}: invalid swarm config: {why}", target.id));
        let cfg: Self = serde_json::from_value(target.config.clone()).map_err(|e| bad(e.to_string()))?;
        if !is_name(&cfg.service) {
            return Err(bad(format!("service {:?}: letters, digits, '_', '.' and '-' only", cfg.service)));
        }
        if cfg.image.trim().is_empty() {
            return Err(bad("image is empty".into()));
        }
        check_engine(cfg.engine.as_deref(), cfg.tls.as_ref()).map_err(bad)?;
        if !["none", "on-failure", "any"].contains(&cfg.restart.as_str()) {
            return Err(bad(format!("restart {:?}: none, on-failure or any", cfg.restart)));
        }
        if !["stop-first", "start-first"].contains(&cfg.update.order.as_str()) {
            return Err(bad(format!("update.order {:?}: stop-first or start-first", cfg.update.order)));
        }
        if !(0.0..=1.0).contains(&cfg.update.max_failure_ratio) || cfg.update.parallelism == 0 {
            return Err(bad("update: parallelism at least 1, max_failure_ratio from 0 to 1".into()));
        }
        Ok(cfg)
    }

    fn image_of(&self, desired: &DesiredState) -> Result<String, ExecutorError> {
        crate::docker::image_of(&self.image, desired)
    }
}

fn nanos(d: HumanDuration) -> i64 {
    i64::try_from(d.as_std().as_nanos()).unwrap_or(i64::MAX)
}

/// The replicas a spec asks for (1 when it says nothing).
fn replicas_of(spec: &ServiceSpec) -> i64 {
    spec.mode.as_ref().and_then(|m| m.replicated.as_ref()).and_then(|r| r.replicas).unwrap_or(1)
}

fn label(spec: &ServiceSpec, key: &str) -> Option<String> {
    spec.labels.as_ref()?.get(&format!("{LABEL_PREFIX}{key}")).cloned()
}

/// The `swarm` executor.
#[derive(Clone)]
pub struct SwarmExecutor {
    engines: Engines,
    secrets: Arc<dyn SecretResolver>,
    poll: Duration,
}

impl std::fmt::Debug for SwarmExecutor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SwarmExecutor").finish_non_exhaustive()
    }
}

impl Default for SwarmExecutor {
    fn default() -> Self {
        Self::new()
    }
}

/// What the tasks of a service say.
#[derive(Debug, Default)]
struct Tasks {
    /// Running tasks of the spec `digest`.
    running: u64,
    /// Failed or rejected tasks of it, with their errors.
    failed: Vec<String>,
}

impl SwarmExecutor {
    /// An executor resolving targets' `env` references from `DEPLOY_SECRET_*` variables.
    #[must_use]
    pub fn new() -> Self {
        Self {
            engines: Engines::default(),
            secrets: Arc::new(EnvSecretResolver::default()),
            poll: Duration::from_millis(500),
        }
    }

    /// Resolves references in targets' `env` with `resolver`.
    #[must_use]
    pub fn secrets(mut self, resolver: Arc<dyn SecretResolver>) -> Self {
        self.secrets = resolver;
        self
    }

    async fn service(&self, engine: &Docker, name: &str) -> Result<Option<Service>, ExecutorError> {
        match engine.inspect_service(name, None).await {
            Ok(s) => Ok(Some(s)),
            Err(EngineError::DockerResponseServerError { status_code: 404, .. }) => Ok(None),
            Err(e) => Err(engine_error("inspect service", name, e)),
        }
    }

    /// The tasks of `service` made from the spec `digest` (by the label on their container spec).
    async fn tasks(&self, engine: &Docker, service: &str, digest: &str) -> Result<Tasks, ExecutorError> {
        let filters = HashMap::from([("service".to_owned(), vec![service.to_owned()])]);
        let tasks = engine
            .list_tasks(Some(ListTasksOptions { filters: Some(filters) }))
            .await
            .map_err(|e| engine_error("list tasks", service, e))?;
        let mut out = Tasks::default();
        for task in tasks {
            let ours = task
                .spec
                .as_ref()
                .and_then(|s| s.container_spec.as_ref())
                .and_then(|c| c.labels.as_ref())
                .and_then(|l| l.get(&format!("{LABEL_PREFIX}spec")))
                .is_some_and(|d| d == digest);
            if !ours {
                continue;
            }
            let status = task.status.unwrap_or_default();
            match status.state {
                Some(TaskState::RUNNING) if task.desired_state == Some(TaskState::RUNNING) => out.running += 1,
                Some(TaskState::FAILED | TaskState::REJECTED) => {
                    let why = status.err.or(status.message).unwrap_or_else(|| "failed".into());
                    let slot = task.slot.map_or_else(String::new, |n| format!(".{n}"));
                    out.failed.push(format!("{service}{slot}: {why}"));
                }
                _ => {}
            }
        }
        Ok(out)
    }

    /// The service spec of `desired`, keeping what an existing service has that the target does not set.
    async fn spec(
        &self,
        target: &Target,
        cfg: &SwarmConfig,
        ctx: ApplyContext<'_>,
        image: &str,
        digest: &str,
        existing: Option<&ServiceSpec>,
    ) -> Result<ServiceSpec, ExecutorError> {
        let program = local::environment(target, ctx.desired, Some(ctx), &cfg.env, self.secrets.as_ref()).await?;
        let mut vars = program.vars;
        if !cfg.env.contains_key("PATH") {
            vars.remove("PATH");
        }
        let labels = crate::docker::labels(target, ctx, digest);
        let container_labels = HashMap::from([
            (format!("{LABEL_PREFIX}spec"), digest.to_owned()),
            (format!("{LABEL_PREFIX}managed"), "true".into()),
        ]);
        let condition = match cfg.restart.as_str() {
            "none" => TaskSpecRestartPolicyConditionEnum::NONE,
            "on-failure" => TaskSpecRestartPolicyConditionEnum::ON_FAILURE,
            _ => TaskSpecRestartPolicyConditionEnum::ANY,
        };
        let replicas = existing
            .and_then(|s| s.mode.as_ref())
            .and_then(|m| m.replicated.as_ref())
            .and_then(|r| r.replicas)
            .unwrap_or_else(|| i64::try_from(cfg.replicas).unwrap_or(1));
        let ports: Vec<EndpointPortConfig> = cfg
            .ports
            .iter()
            .map(|p| EndpointPortConfig {
                target_port: Some(i64::from(p.container)),
                published_port: Some(i64::from(p.host)),
                publish_mode: Some(EndpointPortConfigPublishModeEnum::HOST),
                ..Default::default()
            })
            .collect();
        let update = ServiceSpecUpdateConfig {
            parallelism: Some(i64::try_from(cfg.update.parallelism).unwrap_or(1)),
            delay: Some(nanos(cfg.update.delay)),
            monitor: Some(nanos(cfg.update.monitor)),
            max_failure_ratio: Some(cfg.update.max_failure_ratio),
            failure_action: Some(ServiceSpecUpdateConfigFailureActionEnum::ROLLBACK),
            order: Some(if cfg.update.order == "start-first" {
                ServiceSpecUpdateConfigOrderEnum::START_FIRST
            } else {
                ServiceSpecUpdateConfigOrderEnum::STOP_FIRST
            }),
        };
        Ok(ServiceSpec {
            name: Some(cfg.service.clone()),
            labels: Some(labels),
            task_template: Some(TaskSpec {
                container_spec: Some(TaskSpecContainerSpec {
                    image: Some(image.to_owned()),
                    labels: Some(container_labels),
                    command: cfg.command.clone(),
                    env: Some(vars.into_iter().map(|(k, v)| format!("{k}={v}")).collect()),
                    ..Default::default()
                }),
                restart_policy: Some(TaskSpecRestartPolicy { condition: Some(condition), ..Default::default() }),
                ..Default::default()
            }),
            mode: Some(ServiceSpecMode {
                replicated: Some(ServiceSpecModeReplicated { replicas: Some(replicas) }),
                ..Default::default()
            }),
            update_config: Some(update),
            // As `docker service create` sets it: Swarm's own rollback needs a rollback policy to run under.
            rollback_config: Some(ServiceSpecRollbackConfig {
                parallelism: Some(i64::try_from(cfg.update.parallelism).unwrap_or(1)),
                delay: Some(0),
                monitor: Some(nanos(cfg.update.monitor)),
                max_failure_ratio: Some(0.0),
                failure_action: Some(ServiceSpecRollbackConfigFailureActionEnum::PAUSE),
                order: Some(ServiceSpecRollbackConfigOrderEnum::STOP_FIRST),
            }),
            endpoint_spec: Some(EndpointSpec { ports: Some(ports).filter(|p| !p.is_empty()), ..Default::default() }),
            ..Default::default()
        })
    }

    /// Asks Swarm to roll the service back to its previous spec.
    async fn roll_back(&self, engine: &Docker, service: &Service, name: &str) -> Result<(), ExecutorError> {
        let version = service.version.as_ref().and_then(|v| v.index).unwrap_or_default();
        let spec = service.spec.clone().unwrap_or_default();
        let options = UpdateServiceOptions {
            version: i32::try_from(version).unwrap_or(i32::MAX),
            rollback: Some("previous".to_owned()),
            ..Default::default()
        };
        match engine.update_service(name, spec, options, None).await {
            Ok(_) => Ok(()),
            // Someone changed the service meanwhile (Swarm itself, starting its own rollback): look again.
            Err(EngineError::DockerResponseServerError { status_code: 500, message })
                if message.contains("out of sequence") =>
            {
                Ok(())
            }
            Err(e) => Err(engine_error("roll back", name, e)),
        }
    }

    /// Watches the update of `cfg.service` to the spec `digest` until it is done, paused or rolled back.
    ///
    /// `stale` is when the update status read before this apply issued its update started: a status that started then
    /// is an earlier update's (Swarm has not taken the new one up yet) and says nothing about this one.
    async fn watch(
        &self,
        engine: &Docker,
        cfg: &SwarmConfig,
        digest: &str,
        what: &str,
        stale: Option<Option<String>>,
        ctx: ApplyContext<'_>,
    ) -> Result<String, ExecutorError> {
        let deadline = tokio::time::Instant::now() + cfg.deadline.as_std();
        let mut asked_rollback = false;
        // Swarm rolls back by itself when a failed task is not restarted, within its monitor period: deployd asks only
        // when Swarm has not started within that (its restart policy keeps the failing version coming back).
        let grace = cfg.update.monitor.as_std() + Duration::from_secs(10);
        let mut failing_since: Option<tokio::time::Instant> = None;
        loop {
            let service = self.service(engine, &cfg.service).await?.ok_or_else(|| {
                ExecutorError::permanent(format!("swarm: service {} was removed during the update", cfg.service))
            })?;
            let spec = service.spec.clone().unwrap_or_default();
            let replicas = replicas_of(&spec);
            let status = service.update_status.clone().unwrap_or_default();
            let message = status.message.clone().unwrap_or_default();
            let tasks = self.tasks(engine, &cfg.service, digest).await?;
            let failures = || {
                if tasks.failed.is_empty() { String::new() } else { format!("; tasks: {}", tasks.failed.join("; ")) }
            };
            // The spec is this apply's; a status of an earlier update, or of a rollback that put this spec back, is not
            // about this update.
            let ours = label(&spec, "spec").as_deref() == Some(digest);
            let earlier = stale.as_ref().is_some_and(|started| *started == status.started_at);
            let state = if earlier { None } else { status.state };
            ctx.report(&format!(
                "swarm: {} of {replicas} task(s) run {what}{}",
                tasks.running,
                state.map_or_else(String::new, |s| format!(", update {s}"))
            ));
            match state {
                Some(State::PAUSED) if ours => {
                    return Err(ExecutorError::permanent(format!(
                        "swarm paused the update of {}: {message}{}",
                        cfg.service,
                        failures()
                    )));
                }
                Some(State::ROLLBACK_COMPLETED | State::ROLLBACK_PAUSED) if !ours => {
                    let by = if asked_rollback { "deployd had Swarm roll it back" } else { "Swarm rolled it back" };
                    return Err(ExecutorError::permanent(format!(
                        "swarm: the update of {} to {what} failed and {by} ({message}){}",
                        cfg.service,
                        failures()
                    )));
                }
                Some(State::ROLLBACK_STARTED) if !ours => {}
                Some(State::UPDATING) => {
                    let now = tokio::time::Instant::now();
                    let overdue = now >= deadline;
                    if !tasks.failed.is_empty() && failing_since.is_none() {
                        failing_since = Some(now);
                    }
                    let failing = failing_since.is_some_and(|since| now >= since + grace);
                    // Swarm starting its own rollback puts the previous spec back before its state says so.
                    if !asked_rollback && ours && (failing || overdue) {
                        tracing::warn!(service = %cfg.service, failed = tasks.failed.len(), overdue, "asking Swarm to roll back");
                        self.roll_back(engine, &service, &cfg.service).await?;
                        asked_rollback = true;
                    }
                }
                // Completed, or a new service (no update yet): done once every replica runs the spec.
                _ => {
                    if ours && !earlier && tasks.running >= u64::try_from(replicas).unwrap_or(1) {
                        return Ok(format!("swarm service {} runs {what} on {} task(s)", cfg.service, tasks.running));
                    }
                    if !tasks.failed.is_empty() && tokio::time::Instant::now() >= deadline {
                        return Err(ExecutorError::permanent(format!(
                            "swarm: {} did not start{}",
                            cfg.service,
                            failures()
                        )));
                    }
                }
            }
            if tokio::time::Instant::now() >= deadline + cfg.deadline.as_std() {
                return Err(ExecutorError::permanent(format!(
                    "swarm: the update of {} did not end within twice {}",
                    cfg.service, cfg.deadline
                )));
            }
            tokio::time::sleep(self.poll).await;
        }
    }

    async fn install(&self, target: &Target, ctx: ApplyContext<'_>) -> Result<String, ExecutorError> {
        let cfg = SwarmConfig::of(target)?;
        let engine = self.engines.get(cfg.engine.as_deref(), cfg.tls.as_ref()).await?;
        let image = cfg.image_of(ctx.desired)?;
        let digest = spec_digest(&cfg, ctx.desired, &image);
        let existing = self.service(&engine, &cfg.service).await?;
        let what = format!("{} ({image})", ctx.desired.version);
        if let Some(service) = &existing {
            let spec = service.spec.clone().unwrap_or_default();
            let token = label(&spec, "token").and_then(|t| t.parse::<u64>().ok()).unwrap_or(0);
            if label(&spec, "deployment").as_deref() == Some(ctx.deployment.to_string().as_str())
                && token > ctx.fencing_token
            {
                return Err(ExecutorError::permanent(format!(
                    "stale fencing token {} for {}: its spec was written with token {token}",
                    ctx.fencing_token, target.id
                )));
            }
            if label(&spec, "spec").as_deref() == Some(digest.as_str()) {
                // This spec is already the service's: an update in flight (a restart, a takeover) or done. Watch it.
                return self.watch(&engine, &cfg, &digest, &what, None, ctx).await;
            }
            let stale = Some(service.update_status.as_ref().and_then(|s| s.started_at.clone()));
            let new = self.spec(target, &cfg, ctx, &image, &digest, Some(&spec)).await?;
            let version = service.version.as_ref().and_then(|v| v.index).unwrap_or_default();
            let options =
                UpdateServiceOptions { version: i32::try_from(version).unwrap_or(i32::MAX), ..Default::default() };
            engine
                .update_service(&cfg.service, new, options, None)
                .await
                .map_err(|e| engine_error("update service", &cfg.service, e))?;
            self.watch(&engine, &cfg, &digest, &what, stale, ctx).await
        } else {
            let new = self.spec(target, &cfg, ctx, &image, &digest, None).await?;
            engine.create_service(new, None).await.map_err(|e| engine_error("create service", &cfg.service, e))?;
            self.watch(&engine, &cfg, &digest, &what, None, ctx).await
        }
    }
}

#[async_trait]
impl Executor for SwarmExecutor {
    /// The engine runs what a target's configuration names: host-level power.
    fn runs_host_programs(&self) -> bool {
        true
    }

    async fn observe(&self, target: &Target, _: Option<&DesiredState>) -> Result<Observation, ExecutorError> {
        let cfg = SwarmConfig::of(target)?;
        let engine = self.engines.get(cfg.engine.as_deref(), cfg.tls.as_ref()).await?;
        let Some(service) = self.service(&engine, &cfg.service).await? else {
            return Ok(Observation { version: None, health: Health::Unknown });
        };
        let spec = service.spec.clone().unwrap_or_default();
        let (Some(version), Some(digest)) = (label(&spec, "version"), label(&spec, "spec")) else {
            return Ok(Observation { version: None, health: Health::Unknown });
        };
        let tasks = self.tasks(&engine, &cfg.service, &digest).await?;
        if tasks.running == 0 {
            return Ok(Observation { version: None, health: Health::Unhealthy });
        }
        let health = Self::health(&service, &tasks);
        Ok(Observation { version: Version::new(version).ok(), health })
    }

    async fn apply(&self, target: &Target, ctx: ApplyContext<'_>) -> Result<Outcome, ExecutorError> {
        self.install(target, ctx).await.map(Outcome::with_output)
    }

    async fn verify(&self, target: &Target, desired: &DesiredState) -> Result<Health, ExecutorError> {
        let cfg = SwarmConfig::of(target)?;
        let engine = self.engines.get(cfg.engine.as_deref(), cfg.tls.as_ref()).await?;
        let Some(service) = self.service(&engine, &cfg.service).await? else { return Ok(Health::Unhealthy) };
        let spec = service.spec.clone().unwrap_or_default();
        if label(&spec, "version").as_deref() != Some(desired.version.as_str()) {
            return Ok(Health::Unhealthy);
        }
        let digest = label(&spec, "spec").unwrap_or_default();
        let tasks = self.tasks(&engine, &cfg.service, &digest).await?;
        Ok(Self::health(&service, &tasks))
    }
}

impl SwarmExecutor {
    /// Healthy when no update runs and every replica runs the service's spec.
    fn health(service: &Service, tasks: &Tasks) -> Health {
        let state = service.update_status.as_ref().and_then(|s| s.state);
        if matches!(state, Some(State::UPDATING | State::ROLLBACK_STARTED)) {
            return Health::Unknown;
        }
        let replicas = service.spec.as_ref().map_or(1, replicas_of);
        if tasks.running >= u64::try_from(replicas).unwrap_or(1) { Health::Healthy } else { Health::Unhealthy }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use serde_json::json;

    fn target(config: serde_json::Value) -> Target {
        deploy_testkit::fixtures::target("prod", "svc", "swarm", config)
    }

    #[test]
    fn a_swarm_target_is_checked_and_cannot_be_given_the_host() {
        assert!(SwarmConfig::of(&target(json!({"service": "web", "image": "x:{version}"}))).is_ok());
        for config in [
            json!({"service": "web", "image": "x:{version}", "mounts": ["/:/host"]}),
            json!({"service": "web", "image": "x:{version}", "privileged": true}),
            json!({"service": "../web", "image": "x:{version}"}),
            json!({"service": "web", "image": "x:{version}", "restart": "always"}),
            json!({"service": "web", "image": "x:{version}", "update": {"order": "random"}}),
            json!({"service": "web", "image": "x:{version}", "engine": "tcp://10.0.0.1:2375"}),
        ] {
            assert!(SwarmConfig::of(&target(config.clone())).is_err(), "{config}");
        }
    }
}
