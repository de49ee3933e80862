//! The `docker` executor: each target is one container workload on a Docker Engine (or Podman's compatible API),
//! reached by a Unix socket or by TCP with TLS. deployd delegates the work to the engine and keeps nothing of its own:
//! what runs, which version, which deployment and which fencing token made it, is read back from the engine (the
//! labels deployd sets on the containers it creates).
//!
//! A target's containers are named after it: `<name>` runs the current version, `<name>-previous` is the version
//! before (stopped, kept for a fast return), and `<name>-candidate` exists only while a new version proves itself.
//!
//! **Apply** brings up the new version as a candidate, without published ports, and waits for it to be healthy (the
//! image's `HEALTHCHECK` and the target's HTTP probe, asked on the container's own address). A candidate that fails is
//! removed: the current version never stopped. Without published ports the candidate then takes the name and the old
//! version stops. With published ports (which two containers cannot share) the old version stops, the new one starts
//! with the ports and must be healthy again; if it is not, it is removed and the old one starts again.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use bollard::Docker;
use bollard::errors::Error as EngineError;
use bollard::models::{ContainerCreateBody, ContainerInspectResponse, HealthStatusEnum, HostConfig, PortBinding};
use bollard::query_parameters::{
    CreateContainerOptions, CreateImageOptions, RemoveContainerOptions, RenameContainerOptions, StopContainerOptions,
};
use deploy_core::{
    ApplyContext, DesiredState, EnvSecretResolver, Executor, ExecutorError, Health, HumanDuration, Observation,
    Outcome, SecretResolver, Target, Version,
};
use futures::StreamExt as _;
use serde::{Deserialize, Serialize};
use sha2::Digest as _;

use crate::local::{self, EnvValue};

/// The Unix socket of a local engine, when a target names none.
pub const DEFAULT_ENGINE: &str = "unix:///var/run/docker.sock";

/// The label prefix of everything deployd writes on a container.
pub const LABEL_PREFIX: &str = "dev.deployd.";

/// A `docker` target's configuration (the environment's `config` for the target), written by an admin of every
/// environment: the engine is host-level power.
///
/// ```json
/// {"engine": "unix:///var/run/docker.sock", "image": "registry.example/checkout:{version}",
///  "ports": [{"container": 8080, "host": 18081}], "health": {"port": 8080, "path": "/health"},
///  "env": {"RUST_LOG": "info"}, "memory_mb": 256, "cpus": 0.5}
/// ```
///
/// There is deliberately no way to mount a host path, run privileged, add capabilities or devices, or share the
/// host's network, PID or IPC namespace: unknown fields are refused.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct DockerConfig {
    /// `unix:///path/to/docker.sock` (default [`DEFAULT_ENGINE`]) or `tcp://host:port` (TLS required).
    #[serde(default)]
    pub engine: Option<String>,
    /// Client certificate, key and CA for a `tcp://` engine (files on deployd's host).
    #[serde(default)]
    pub tls: Option<EngineTls>,
    /// The image; `{version}` and `{service}` are replaced. A deployment's artifact `docker://<image>` wins.
    pub image: String,
    /// The container's name (default `deploy-<environment>-<target>`).
    #[serde(default)]
    pub name: Option<String>,
    /// The command, instead of the image's.
    #[serde(default)]
    pub command: Option<Vec<String>>,
    /// Published ports.
    #[serde(default)]
    pub ports: Vec<PortSpec>,
    /// The HTTP health check, asked on the container's own address; 2xx is healthy, and a JSON answer with a
    /// `version` must name the version asked for. An image's `HEALTHCHECK` is waited for as well.
    #[serde(default)]
    pub health: Option<HttpHealth>,
    /// Variables of every version: literals, or `{"ref": ...}` resolved for each apply. The container's environment
    /// also has the `DEPLOY_*` facts and the deployment's `config` and `secrets` as `DEPLOY_CONFIG_<KEY>` and
    /// `DEPLOY_SECRET_<NAME>`; these win.
    #[serde(default)]
    pub env: BTreeMap<String, EnvValue>,
    /// A user-defined network to join (not `host`, `none` or `container:...`).
    #[serde(default)]
    pub network: Option<String>,
    /// A memory limit.
    #[serde(default)]
    pub memory_mb: Option<u64>,
    /// A CPU limit, in CPUs.
    #[serde(default)]
    pub cpus: Option<f64>,
    /// How long a new version has to become healthy.
    #[serde(default = "default_start_timeout")]
    pub start_timeout: HumanDuration,
    /// How long a stopping version gets before it is killed.
    #[serde(default = "default_stop_timeout")]
    pub stop_timeout: HumanDuration,
}

/// Client TLS for a `tcp://` engine.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct EngineTls {
    /// The CA that signed the engine's certificate (PEM).
    pub ca: PathBuf,
    /// deployd's client certificate (PEM).
    pub cert: PathBuf,
    /// Its key (PEM).
    pub key: PathBuf,
}

/// A published port.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct PortSpec {
    /// The container's port (TCP).
    pub container: u16,
    /// The host's port.
    pub host: u16,
    /// The host address to bind (default `127.0.0.1`).
    #[serde(default = "default_host_ip")]
    pub host_ip: String,
}

/// An HTTP health check on the container's own address.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct HttpHealth {
    /// The container's port.
    pub port: u16,
    /// The path (default `/health`).
    #[serde(default = "default_health_path")]
    pub path: String,
}

fn default_start_timeout() -> HumanDuration {
    HumanDuration::from_secs(30)
}

fn default_stop_timeout() -> HumanDuration {
    HumanDuration::from_secs(10)
}

fn default_host_ip() -> String {
    "127.0.0.1".to_owned()
}

fn default_health_path() -> String {
    "/health".to_owned()
}

impl DockerConfig {
    /// The configuration of `target`, checked.
    ///
    /// # Errors
    /// A permanent error naming what is wrong.
    pub fn of(target: &Target) -> Result<Self, ExecutorError> {
        let bad = |why: String| ExecutorError::permanent(format!("target {}: invalid docker config: {why}", target.id));
        let cfg: Self = serde_json::from_value(target.config.clone()).map_err(|e| bad(e.to_string()))?;
        if cfg.image.trim().is_empty() {
            return Err(bad("image is empty".into()));
        }
        if let Some(network) = &cfg.network {
            let lower = network.to_ascii_lowercase();
            if lower == "host" || lower == "none" || lower.starts_with("container:") || !is_name(network) {
                return Err(bad(format!("network {network:?}: only a user-defined network may be joined")));
            }
        }
        if let Some(name) = &cfg.name
            && !is_name(name)
        {
            return Err(bad(format!("name {name:?}: letters, digits, '_', '.' and '-' only")));
        }
        check_engine(cfg.engine.as_deref(), cfg.tls.as_ref()).map_err(bad)?;
        if cfg.cpus.is_some_and(|c| !(c > 0.0 && c <= 1024.0)) {
            return Err(bad("cpus must be above 0".into()));
        }
        Ok(cfg)
    }

    fn base_name(&self, target: &Target) -> String {
        self.name.clone().unwrap_or_else(|| format!("deploy-{}-{}", target.environment, target.id))
    }

    /// The image of `desired`.
    fn image_of(&self, desired: &DesiredState) -> Result<String, ExecutorError> {
        image_of(&self.image, desired)
    }
}

/// What deployd writes on everything it makes for `target` (a container, a service): whose it is, what it runs, and
/// the deployment, fencing token and spec digest it was made under.
pub(crate) fn labels(target: &Target, ctx: ApplyContext<'_>, spec: &str) -> HashMap<String, String> {
    [
        ("managed", "true".to_owned()),
        ("environment", target.environment.to_string()),
        ("target", target.id.to_string()),
        ("service", ctx.desired.service.to_string()),
        ("version", ctx.desired.version.to_string()),
        ("deployment", ctx.deployment.to_string()),
        ("token", ctx.fencing_token.to_string()),
        ("spec", spec.to_owned()),
    ]
    .into_iter()
    .map(|(k, v)| (format!("{LABEL_PREFIX}{k}"), v))
    .collect()
}

/// The image of `desired`: a `docker://` artifact, else `template` with `{version}` and `{service}` replaced; checked
/// to be an image reference.
pub(crate) fn image_of(template: &str, desired: &DesiredState) -> Result<String, ExecutorError> {
    let image = match desired.artifact.as_ref().and_then(|a| a.uri.strip_prefix("docker://")) {
        Some(reference) => reference.to_owned(),
        None => template.replace("{version}", desired.version.as_str()).replace("{service}", desired.service.as_str()),
    };
    let allowed = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '/' | ':' | '@');
    if image.is_empty() || image.len() > 512 || !image.chars().all(allowed) {
        return Err(ExecutorError::permanent(format!("{image:?} is not an image reference")));
    }
    Ok(image)
}

pub(crate) fn is_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 128
        && s.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
        && s.chars().next().is_some_and(|c| c.is_ascii_alphanumeric())
}

/// The names of a target's containers.
struct Names {
    current: String,
    previous: String,
    candidate: String,
}

impl Names {
    fn of(cfg: &DockerConfig, target: &Target) -> Self {
        let base = cfg.base_name(target);
        Self { previous: format!("{base}-previous"), candidate: format!("{base}-candidate"), current: base }
    }
}

/// What deployd wrote on a container.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Stamp {
    version: Option<String>,
    deployment: Option<String>,
    token: u64,
    spec: Option<String>,
}

impl Stamp {
    fn of(c: &ContainerInspectResponse) -> Self {
        let labels = c.config.as_ref().and_then(|c| c.labels.as_ref());
        let get = |k: &str| labels.and_then(|l| l.get(&format!("{LABEL_PREFIX}{k}"))).cloned();
        Self {
            version: get("version"),
            deployment: get("deployment"),
            token: get("token").and_then(|t| t.parse().ok()).unwrap_or(0),
            spec: get("spec"),
        }
    }
}

fn running(c: &ContainerInspectResponse) -> bool {
    c.state.as_ref().and_then(|s| s.running).unwrap_or(false)
}

/// The `docker` executor. Cheap to clone; engines are connected once per address.
#[derive(Clone)]
pub struct DockerExecutor {
    engines: Engines,
    http: reqwest::Client,
    secrets: Arc<dyn SecretResolver>,
}

impl std::fmt::Debug for DockerExecutor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DockerExecutor").finish_non_exhaustive()
    }
}

impl Default for DockerExecutor {
    fn default() -> Self {
        Self::new()
    }
}

/// Engines connected so far, by address (and TLS files): one client each, its API version negotiated once.
#[derive(Clone, Default)]
pub(crate) struct Engines(Arc<Mutex<HashMap<String, Docker>>>);

impl Engines {
    /// The engine at `address` (default [`DEFAULT_ENGINE`]), connected at first use.
    pub(crate) async fn get(&self, address: Option<&str>, tls: Option<&EngineTls>) -> Result<Docker, ExecutorError> {
        let address = address.unwrap_or(DEFAULT_ENGINE).to_owned();
        let key = format!("{address}|{tls:?}");
        if let Some(engine) = self.0.lock().ok().and_then(|m| m.get(&key).cloned()) {
            return Ok(engine);
        }
        let unreachable = |e: EngineError| ExecutorError::unreachable(format!("docker engine {address}: {e}"));
        let engine = match tls {
            None => Docker::connect_with_unix(&address, 30, bollard::API_DEFAULT_VERSION).map_err(unreachable)?,
            Some(tls) => {
                local::ensure_crypto_provider();
                Docker::connect_with_ssl(&address, &tls.key, &tls.cert, &tls.ca, 30, bollard::API_DEFAULT_VERSION)
                    .map_err(|e| ExecutorError::permanent(format!("docker engine {address}: {e}")))?
            }
        };
        let engine = engine.negotiate_version().await.map_err(unreachable)?;
        if let Ok(mut m) = self.0.lock() {
            m.insert(key, engine.clone());
        }
        Ok(engine)
    }
}

/// Checks an engine address: `unix:///path`, or `tcp://host:port` with client TLS.
pub(crate) fn check_engine(engine: Option<&str>, tls: Option<&EngineTls>) -> Result<(), String> {
    let engine = engine.unwrap_or(DEFAULT_ENGINE);
    if !(engine.starts_with("unix://") || engine.starts_with("tcp://")) {
        return Err(format!("engine {engine:?}: unix:///path or tcp://host:port"));
    }
    if engine.starts_with("tcp://") && tls.is_none() {
        return Err("a tcp:// engine needs tls (the engine is root on its host: never in clear)".into());
    }
    Ok(())
}

/// A probe's verdict on a container.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Verdict {
    Healthy,
    /// Not yet: still starting.
    Starting,
    /// Not healthy, and why.
    Unhealthy(String),
    /// Exited: it will not get better.
    Exited(String),
}

impl Verdict {
    /// What observe and verify answer of it.
    fn health(&self) -> Health {
        match self {
            Self::Healthy => Health::Healthy,
            Self::Starting => Health::Unknown,
            Self::Unhealthy(_) | Self::Exited(_) => Health::Unhealthy,
        }
    }
}

/// One apply's change, as the steps that create and bring up its containers need it.
#[derive(Clone, Copy)]
struct Change<'c> {
    engine: &'c Docker,
    target: &'c Target,
    cfg: &'c DockerConfig,
    ctx: ApplyContext<'c>,
    image: &'c str,
    spec: &'c str,
}

impl DockerExecutor {
    /// An executor resolving targets' `env` references from `DEPLOY_SECRET_*` variables.
    #[must_use]
    pub fn new() -> Self {
        let http = local::probe_client(reqwest::Client::builder().timeout(Duration::from_secs(2)).no_proxy());
        Self { engines: Engines::default(), http, secrets: Arc::new(EnvSecretResolver::default()) }
    }

    /// Resolves references in targets' `env` with `resolver`.
    #[must_use]
    pub fn secrets(mut self, resolver: Arc<dyn SecretResolver>) -> Self {
        self.secrets = resolver;
        self
    }

    /// The engine of `cfg`, connected (and its API version negotiated) at first use.
    async fn engine(&self, cfg: &DockerConfig) -> Result<Docker, ExecutorError> {
        self.engines.get(cfg.engine.as_deref(), cfg.tls.as_ref()).await
    }

    async fn inspect(&self, engine: &Docker, name: &str) -> Result<Option<ContainerInspectResponse>, ExecutorError> {
        match engine.inspect_container(name, None).await {
            Ok(c) => Ok(Some(c)),
            Err(EngineError::DockerResponseServerError { status_code: 404, .. }) => Ok(None),
            Err(e) => Err(engine_error("inspect", name, e)),
        }
    }

    async fn remove(&self, engine: &Docker, name: &str) -> Result<(), ExecutorError> {
        let options = RemoveContainerOptions { force: true, v: true, ..Default::default() };
        match engine.remove_container(name, Some(options)).await {
            Ok(()) | Err(EngineError::DockerResponseServerError { status_code: 404, .. }) => Ok(()),
            Err(e) => Err(engine_error("remove", name, e)),
        }
    }

    async fn stop(&self, engine: &Docker, name: &str, cfg: &DockerConfig) -> Result<(), ExecutorError> {
        let t = i32::try_from(cfg.stop_timeout.as_std().as_secs()).unwrap_or(i32::MAX);
        match engine.stop_container(name, Some(StopContainerOptions { t: Some(t), signal: None })).await {
            // 304: already stopped.
            Ok(()) | Err(EngineError::DockerResponseServerError { status_code: 304 | 404, .. }) => Ok(()),
            Err(e) => Err(engine_error("stop", name, e)),
        }
    }

    async fn rename(&self, engine: &Docker, from: &str, to: &str) -> Result<(), ExecutorError> {
        engine
            .rename_container(from, RenameContainerOptions { name: to.to_owned() })
            .await
            .map_err(|e| engine_error("rename", from, e))
    }

    async fn start(&self, engine: &Docker, name: &str) -> Result<(), ExecutorError> {
        match engine.start_container(name, None).await {
            Ok(()) | Err(EngineError::DockerResponseServerError { status_code: 304, .. }) => Ok(()),
            Err(EngineError::DockerResponseServerError { status_code, message }) if status_code < 500 => {
                Err(ExecutorError::permanent(format!("docker: cannot start {name}: {message}")))
            }
            Err(e) => Err(engine_error("start", name, e)),
        }
    }

    /// Makes sure `image` is on the engine, pulling it when it is not.
    async fn ensure_image(&self, engine: &Docker, image: &str) -> Result<(), ExecutorError> {
        match engine.inspect_image(image).await {
            Ok(_) => return Ok(()),
            Err(EngineError::DockerResponseServerError { status_code: 404, .. }) => {}
            Err(e) => return Err(engine_error("inspect image", image, e)),
        }
        let options = CreateImageOptions { from_image: Some(image.to_owned()), ..Default::default() };
        let mut pull = engine.create_image(Some(options), None, None);
        while let Some(step) = pull.next().await {
            if let Err(e) = step {
                return Err(ExecutorError::permanent(format!(
                    "docker: image {image} is not on the engine and could not be pulled: {e}"
                )));
            }
        }
        Ok(())
    }

    /// One look at a container's health: its `HEALTHCHECK` (when the image has one) and the target's HTTP check.
    async fn verdict(&self, c: &ContainerInspectResponse, cfg: &DockerConfig, version: &str) -> Verdict {
        let Some(state) = c.state.as_ref() else { return Verdict::Starting };
        if !state.running.unwrap_or(false) {
            let code = state.exit_code.unwrap_or_default();
            return Verdict::Exited(format!("the container exited with status {code}"));
        }
        match state.health.as_ref().and_then(|h| h.status) {
            Some(HealthStatusEnum::STARTING) => return Verdict::Starting,
            Some(HealthStatusEnum::UNHEALTHY) => {
                return Verdict::Unhealthy("its HEALTHCHECK reports unhealthy".into());
            }
            _ => {}
        }
        let Some(check) = &cfg.health else { return Verdict::Healthy };
        let Some(address) = container_address(c) else {
            return Verdict::Unhealthy("the container has no address to probe".into());
        };
        let url = format!("http://{address}:{}{}", check.port, check.path);
        match self.http.get(&url).send().await {
            Ok(r) if r.status().is_success() => {
                let named = r
                    .json::<serde_json::Value>()
                    .await
                    .ok()
                    .and_then(|v| v.get("version").and_then(serde_json::Value::as_str).map(str::to_owned));
                match named {
                    Some(other) if other != version => Verdict::Unhealthy(format!("{url} answers as version {other}")),
                    _ => Verdict::Healthy,
                }
            }
            Ok(r) => Verdict::Unhealthy(format!("{url} answered {}", r.status().as_u16())),
            Err(_) => Verdict::Unhealthy(format!("{url} did not answer")),
        }
    }

    /// Waits until the container `name` is healthy, for at most the start timeout.
    async fn wait_healthy(&self, engine: &Docker, name: &str, cfg: &DockerConfig, version: &str) -> Result<(), String> {
        let deadline = tokio::time::Instant::now() + cfg.start_timeout.as_std();
        let mut last;
        loop {
            let c = match engine.inspect_container(name, None).await {
                Ok(c) => c,
                Err(e) => return Err(format!("cannot inspect it: {e}")),
            };
            match self.verdict(&c, cfg, version).await {
                Verdict::Healthy => return Ok(()),
                Verdict::Exited(why) => return Err(why),
                Verdict::Unhealthy(why) => last = why,
                Verdict::Starting => last = "its HEALTHCHECK is still starting".into(),
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(format!("not healthy within {}: {last}", cfg.start_timeout));
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Creates (not starts) the container `name` of the change.
    async fn create(&self, change: &Change<'_>, name: &str, with_ports: bool) -> Result<(), ExecutorError> {
        let Change { engine, target, cfg, ctx, image, spec } = *change;
        let program = local::environment(target, ctx.desired, Some(ctx), &cfg.env, self.secrets.as_ref()).await?;
        let mut vars = program.vars;
        // The image's own PATH stays, unless the target sets one.
        if !cfg.env.contains_key("PATH") {
            vars.remove("PATH");
        }
        let env: Vec<String> = vars.into_iter().map(|(k, v)| format!("{k}={v}")).collect();
        let labels = labels(target, ctx, spec);
        let ports: Vec<&PortSpec> = if with_ports { cfg.ports.iter().collect() } else { Vec::new() };
        let bindings: HashMap<String, Option<Vec<PortBinding>>> = ports
            .iter()
            .map(|p| {
                let binding = PortBinding { host_ip: Some(p.host_ip.clone()), host_port: Some(p.host.to_string()) };
                (format!("{}/tcp", p.container), Some(vec![binding]))
            })
            .collect();
        let host = HostConfig {
            port_bindings: Some(bindings).filter(|b| !b.is_empty()),
            network_mode: cfg.network.clone(),
            memory: cfg.memory_mb.map(|m| i64::try_from(m.saturating_mul(1024 * 1024)).unwrap_or(i64::MAX)),
            #[allow(clippy::cast_possible_truncation)]
            nano_cpus: cfg.cpus.map(|c| (c * 1e9) as i64),
            restart_policy: Some(bollard::models::RestartPolicy {
                name: Some(bollard::models::RestartPolicyNameEnum::UNLESS_STOPPED),
                maximum_retry_count: None,
            }),
            // Nothing of the host: no binds, no privileges, no devices, no extra capabilities.
            privileged: Some(false),
            security_opt: Some(vec!["no-new-privileges".to_owned()]),
            ..Default::default()
        };
        let body = ContainerCreateBody {
            image: Some(image.to_owned()),
            cmd: cfg.command.clone(),
            env: Some(env),
            labels: Some(labels),
            exposed_ports: Some(ports.iter().map(|p| format!("{}/tcp", p.container)).collect::<Vec<_>>())
                .filter(|p| !p.is_empty()),
            host_config: Some(host),
            ..Default::default()
        };
        let options = CreateContainerOptions { name: Some(name.to_owned()), ..Default::default() };
        match engine.create_container(Some(options), body).await {
            Ok(_) => Ok(()),
            Err(EngineError::DockerResponseServerError { status_code, message }) if status_code < 500 => Err(
                ExecutorError::permanent(program.scrubber.scrub(&format!("docker: cannot create {name}: {message}"))),
            ),
            Err(e) => Err(engine_error("create", name, e)),
        }
    }

    /// Creates and starts `name` and waits for it to be healthy; removes it when it is not.
    async fn bring_up(&self, change: &Change<'_>, name: &str, with_ports: bool) -> Result<(), ExecutorError> {
        let Change { engine, cfg, ctx, image, .. } = *change;
        self.create(change, name, with_ports).await?;
        let started = self.start(engine, name).await;
        let healthy = match started {
            Ok(()) => self.wait_healthy(engine, name, cfg, ctx.desired.version.as_str()).await,
            Err(e) => Err(e.message().to_owned()),
        };
        match healthy {
            Ok(()) => Ok(()),
            Err(why) => {
                self.remove(engine, name).await?;
                Err(ExecutorError::permanent(format!(
                    "{} {} did not become healthy ({image}): {why}",
                    ctx.desired.service, ctx.desired.version
                )))
            }
        }
    }

    async fn install(&self, target: &Target, ctx: ApplyContext<'_>) -> Result<String, ExecutorError> {
        let cfg = DockerConfig::of(target)?;
        let engine = self.engine(&cfg).await?;
        let names = Names::of(&cfg, target);
        let image = cfg.image_of(ctx.desired)?;
        let spec = spec_digest(&cfg, ctx.desired, &image);
        let current = self.inspect(&engine, &names.current).await?;
        if let Some(c) = &current {
            let stamp = Stamp::of(c);
            if stamp.deployment.as_deref() == Some(ctx.deployment.to_string().as_str())
                && stamp.token > ctx.fencing_token
            {
                return Err(ExecutorError::permanent(format!(
                    "stale fencing token {} for {}: {} was made with token {}",
                    ctx.fencing_token, target.id, names.current, stamp.token
                )));
            }
            if stamp.spec.as_deref() == Some(spec.as_str()) {
                if running(c) {
                    return Ok(format!("{} already runs {image}", names.current));
                }
                // Made by an apply that was cut off, or stopped by someone: start it again.
                self.start(&engine, &names.current).await?;
                return match self.wait_healthy(&engine, &names.current, &cfg, ctx.desired.version.as_str()).await {
                    Ok(()) => Ok(format!("started {} again ({image})", names.current)),
                    Err(why) => {
                        Err(ExecutorError::permanent(format!("{} did not become healthy: {why}", names.current)))
                    }
                };
            }
        }
        self.ensure_image(&engine, &image).await?;
        // What an interrupted apply left behind.
        self.remove(&engine, &names.candidate).await?;
        let change = Change { engine: &engine, target, cfg: &cfg, ctx, image: &image, spec: &spec };
        self.bring_up(&change, &names.candidate, false).await?;
        if cfg.ports.is_empty() {
            if current.is_some() {
                self.stop(&engine, &names.current, &cfg).await?;
                self.remove(&engine, &names.previous).await?;
                self.rename(&engine, &names.current, &names.previous).await?;
            }
            self.rename(&engine, &names.candidate, &names.current).await?;
            return Ok(format!("{} runs {image}", names.current));
        }
        // Published ports cannot be shared: the candidate has proved the version; now the old one makes way.
        self.remove(&engine, &names.candidate).await?;
        if current.is_some() {
            self.stop(&engine, &names.current, &cfg).await?;
            self.remove(&engine, &names.previous).await?;
            self.rename(&engine, &names.current, &names.previous).await?;
        }
        match self.bring_up(&change, &names.current, true).await {
            Ok(()) => Ok(format!("{} runs {image}", names.current)),
            Err(e) => {
                if current.is_some() {
                    self.rename(&engine, &names.previous, &names.current).await?;
                    self.start(&engine, &names.current).await?;
                }
                Err(e)
            }
        }
    }
}

/// The digest of everything that makes a container (or a service) what it is: the image, the target's config and the
/// desired state, secret values excepted (their references count).
pub(crate) fn spec_digest(cfg: &impl Serialize, desired: &DesiredState, image: &str) -> String {
    let mut config = desired.clone();
    config.artifact = None;
    let doc = serde_json::json!({"image": image, "desired": config, "target": cfg});
    let digest = sha2::Sha256::digest(doc.to_string().as_bytes());
    digest.iter().take(16).map(|b| format!("{b:02x}")).collect()
}

/// The container's address on its first network.
pub(crate) fn container_address(c: &ContainerInspectResponse) -> Option<String> {
    let networks = c.network_settings.as_ref()?.networks.as_ref()?;
    let mut names: Vec<&String> = networks.keys().collect();
    names.sort();
    names.into_iter().find_map(|n| networks.get(n)?.ip_address.clone().filter(|ip| !ip.is_empty()))
}

/// An engine error as an executor error: the engine unreachable, a refusal (4xx, permanent), or a failure (5xx,
/// retried).
pub(crate) fn engine_error(what: &str, name: &str, e: EngineError) -> ExecutorError {
    match e {
        EngineError::DockerResponseServerError { status_code, message } if status_code < 500 => {
            ExecutorError::permanent(format!("docker {what} {name}: {message}"))
        }
        EngineError::DockerResponseServerError { message, .. } => {
            ExecutorError::retryable(format!("docker {what} {name}: {message}"))
        }
        EngineError::SocketNotFoundError(_)
        | EngineError::HyperResponseError { .. }
        | EngineError::IOError { .. }
        | EngineError::RequestTimeoutError => ExecutorError::unreachable(format!("docker {what} {name}: {e}")),
        other => ExecutorError::retryable(format!("docker {what} {name}: {other}")),
    }
}

#[async_trait]
impl Executor for DockerExecutor {
    /// The engine runs what a target's configuration names, as root on its host: host-level power.
    fn runs_host_programs(&self) -> bool {
        true
    }

    async fn observe(&self, target: &Target, _: Option<&DesiredState>) -> Result<Observation, ExecutorError> {
        let cfg = DockerConfig::of(target)?;
        let engine = self.engine(&cfg).await?;
        let names = Names::of(&cfg, target);
        let Some(c) = self.inspect(&engine, &names.current).await?.filter(running) else {
            return Ok(Observation { version: None, health: Health::Unknown });
        };
        let stamp = Stamp::of(&c);
        let Some(version) = stamp.version.and_then(|v| Version::new(v).ok()) else {
            // Something deployd did not make runs under the target's name.
            return Ok(Observation { version: None, health: Health::Unknown });
        };
        let health = self.verdict(&c, &cfg, version.as_str()).await.health();
        Ok(Observation { version: Some(version), health })
    }

    async fn apply(&self, target: &Target, ctx: ApplyContext<'_>) -> Result<Outcome, ExecutorError> {
        self.install(target, ctx).await.map(Outcome::with_output)
    }

    async fn verify(&self, target: &Target, desired: &DesiredState) -> Result<Health, ExecutorError> {
        let cfg = DockerConfig::of(target)?;
        let engine = self.engine(&cfg).await?;
        let names = Names::of(&cfg, target);
        let Some(c) = self.inspect(&engine, &names.current).await? else { return Ok(Health::Unhealthy) };
        if Stamp::of(&c).version.as_deref() != Some(desired.version.as_str()) {
            return Ok(Health::Unhealthy);
        }
        Ok(self.verdict(&c, &cfg, desired.version.as_str()).await.health())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use serde_json::json;

    fn target(config: serde_json::Value) -> Target {
        deploy_testkit::fixtures::target("prod", "web-1", "docker", config)
    }

    #[test]
    fn a_target_cannot_be_given_the_host() {
        for config in [
            json!({"image": "x:{version}", "privileged": true}),
            json!({"image": "x:{version}", "binds": ["/:/host"]}),
            json!({"image": "x:{version}", "volumes": ["/var/run/docker.sock:/var/run/docker.sock"]}),
            json!({"image": "x:{version}", "cap_add": ["SYS_ADMIN"]}),
            json!({"image": "x:{version}", "network": "host"}),
            json!({"image": "x:{version}", "network": "container:db"}),
            json!({"image": "x:{version}", "pid": "host"}),
            json!({"image": "x:{version}", "engine": "tcp://10.0.0.1:2375"}),
            json!({"image": ""}),
        ] {
            let refused = DockerConfig::of(&target(config.clone())).unwrap_err();
            assert_eq!(refused.class(), deploy_core::ErrorClass::Permanent, "{config}");
        }
        let fine = DockerConfig::of(&target(json!({"image": "x:{version}", "network": "backend"}))).unwrap();
        assert_eq!(fine.base_name(&target(json!({}))), "deploy-prod-web-1");
    }

    #[test]
    fn the_image_comes_from_the_artifact_or_the_template_and_is_checked() {
        let cfg = DockerConfig::of(&target(json!({"image": "registry.example/{service}:{version}"}))).unwrap();
        let mut desired = DesiredState::bare("checkout".parse().unwrap(), "2.0.1".parse().unwrap());
        assert_eq!(cfg.image_of(&desired).unwrap(), "registry.example/checkout:2.0.1");
        desired.artifact = Some(deploy_core::Artifact { uri: "docker://other/img@sha256:ab".into(), digest: None });
        assert_eq!(cfg.image_of(&desired).unwrap(), "other/img@sha256:ab");
        desired.artifact = Some(deploy_core::Artifact { uri: "docker://bad image;rm".into(), digest: None });
        assert!(cfg.image_of(&desired).is_err());
    }

    #[test]
    fn the_spec_digest_changes_with_what_runs_but_not_with_secret_values() {
        let cfg = DockerConfig::of(&target(json!({"image": "x:{version}"}))).unwrap();
        let v1 = DesiredState::bare("s".parse().unwrap(), "1".parse().unwrap());
        let v2 = DesiredState::bare("s".parse().unwrap(), "2".parse().unwrap());
        assert_eq!(spec_digest(&cfg, &v1, "x:1"), spec_digest(&cfg, &v1, "x:1"));
        assert_ne!(spec_digest(&cfg, &v1, "x:1"), spec_digest(&cfg, &v2, "x:2"));
        let mut other = cfg.clone();
        other.memory_mb = Some(64);
        assert_ne!(spec_digest(&cfg, &v1, "x:1"), spec_digest(&other, &v1, "x:1"));
    }
}
