//! The `deployd` executor (federation): a target is an environment on another deployd. This deployd becomes the
//! gateway in front of it: an apply submits the target's desired state there through `deploy-client` and follows the
//! remote deployment's event stream to its end (each event a progress line of the target); observe and verify read
//! the remote environment.
//!
//! **Exactly one remote deployment per deployment and target.** The submission carries an idempotency key derived
//! from this deployment's id, the target and the version, so a retry, a restarted deployd or another replica taking the
//! deployment over gets the same remote deployment back (a replay) and follows it, never a second one. Returning the
//! target to its former version (a rollback, in this deployment or a new one) is a new remote deployment of it.
//!
//! Secrets never cross: the deployment's `config` and `secrets` references are passed on as references, and the
//! remote deployd resolves them in its own scope. The token this deployd presents there is itself a reference in the
//! target's config, resolved for each call.

use std::time::Duration;

use async_trait::async_trait;
use deploy_client::{Client, Error as ClientError};
use deploy_core::spec::ArtifactRequest;
use deploy_core::{
    ApplyContext, DeploymentRequest, DeploymentStatus, DesiredState, EnvSecretResolver, EnvironmentName, Executor,
    ExecutorError, Health, HumanDuration, IdempotencyKey, Observation, Outcome, ProblemKind, SecretRef, SecretResolver,
    Target, Version,
};
use serde::Deserialize;
use std::sync::Arc;

/// A `deployd` target's configuration: where the other deployd is, which of its environments this target is, and
/// how to authenticate.
///
/// ```json
/// {"url": "https://deployd.eu.internal:8443", "environment": "prod", "token": {"ref": "file://federation/eu"},
///  "ca_file": "/etc/deployd/eu-ca.pem", "request": {"strategy": {"type": "rolling", "batch_size": "25%"}}}
/// ```
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FederationConfig {
    /// The other deployd's base URL (`https://`; `http://` only to this machine, or with `insecure_http`).
    pub url: String,
    /// The environment there.
    pub environment: String,
    /// The API key or JWT presented there, as a secret reference (`{"ref": "file://..."}`).
    pub token: TokenRef,
    /// A CA certificate (PEM) the other deployd's certificate chains to, beside the system's.
    #[serde(default)]
    pub ca_file: Option<std::path::PathBuf>,
    /// Allows `http://` to another host (the token then crosses the network in clear).
    #[serde(default)]
    pub insecure_http: bool,
    /// Fields of the remote request (`strategy`, `verify`, `failure`, `on_unreachable`, `progress_deadline`, ...)
    /// beside the service, version, artifact, config and secret references, which come from the deployment.
    #[serde(default)]
    pub request: serde_json::Map<String, serde_json::Value>,
    /// How often the remote deployment is read again when its event stream ended before it did.
    #[serde(default = "default_poll")]
    pub poll: HumanDuration,
}

/// The token's reference.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenRef {
    /// `scheme://location`.
    #[serde(rename = "ref")]
    pub reference: String,
}

fn default_poll() -> HumanDuration {
    HumanDuration::from_secs(1)
}

impl FederationConfig {
    /// The configuration of `target`, checked.
    ///
    /// # Errors
    /// A permanent error naming what is wrong.
    pub fn of(target: &Target) -> Result<Self, ExecutorError> {
        let bad =
            |why: String| ExecutorError::permanent(format!("target {}: invalid deployd config: {why}", target.id));
        let cfg: Self = serde_json::from_value(target.config.clone()).map_err(|e| bad(e.to_string()))?;
        EnvironmentName::new(cfg.environment.as_str()).map_err(|e| bad(format!("environment: {e}")))?;
        SecretRef::parse(cfg.token.reference.as_str()).map_err(|e| bad(format!("token: {e}")))?;
        for owned in ["environment", "service", "version", "artifact", "config", "secrets", "targets", "mode", "steps"]
        {
            if cfg.request.contains_key(owned) {
                return Err(bad(format!("request.{owned} comes from the deployment, not the target")));
            }
        }
        Ok(cfg)
    }
}

/// The `deployd` executor.
#[derive(Clone)]
pub struct FederationExecutor {
    secrets: Arc<dyn SecretResolver>,
}

impl std::fmt::Debug for FederationExecutor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FederationExecutor").finish_non_exhaustive()
    }
}

impl Default for FederationExecutor {
    fn default() -> Self {
        Self::new()
    }
}

/// The idempotency key of `deployment`'s submission of `version` for `target`: the same for every attempt and every
/// replica; another version (the deployment rolling the target back) is another remote deployment.
#[must_use]
pub fn federation_key(deployment: deploy_core::DeploymentId, target: &Target, version: &Version) -> String {
    use sha2::Digest as _;
    let what = format!("{}\n{}\n{version}", target.environment, target.id);
    let digest = sha2::Sha256::digest(what.as_bytes());
    let short: String = digest.iter().take(12).map(|b| format!("{b:02x}")).collect();
    format!("federation-{deployment}-{short}")
}

impl FederationExecutor {
    /// An executor resolving tokens from `DEPLOY_SECRET_*` variables.
    #[must_use]
    pub fn new() -> Self {
        Self { secrets: Arc::new(EnvSecretResolver::default()) }
    }

    /// Resolves targets' token references with `resolver`.
    #[must_use]
    pub fn secrets(mut self, resolver: Arc<dyn SecretResolver>) -> Self {
        self.secrets = resolver;
        self
    }

    async fn client(&self, target: &Target, cfg: &FederationConfig) -> Result<Client, ExecutorError> {
        let reference = SecretRef::parse(cfg.token.reference.as_str())
            .map_err(|e| ExecutorError::permanent(format!("target {} token: {e}", target.id)))?;
        let token = self.secrets.resolve(&reference).await.map_err(|e| match e {
            deploy_core::SecretError::Unavailable { .. } => {
                ExecutorError::retryable(format!("target {} token: {e}", target.id))
            }
            _ => ExecutorError::permanent(format!("target {} token could not be resolved: {e}", target.id)),
        })?;
        let mut builder = Client::builder(cfg.url.clone())
            .token(token.expose())
            .insecure_http(cfg.insecure_http)
            .timeout(Duration::from_secs(30));
        if let Some(ca) = &cfg.ca_file {
            let pem = std::fs::read(ca)
                .map_err(|e| ExecutorError::permanent(format!("target {}: CA {}: {e}", target.id, ca.display())))?;
            builder = builder.root_certificates_pem(pem);
        }
        builder.build().map_err(|e| ExecutorError::permanent(format!("target {}: {e}", target.id)))
    }

    fn request(cfg: &FederationConfig, desired: &DesiredState) -> Result<DeploymentRequest, ExecutorError> {
        let config = desired.config.iter().map(|(k, v)| (k.clone(), v.to_request())).collect();
        let secrets = desired.secrets.iter().map(|(k, r)| (k.clone(), r.to_request())).collect();
        let mut body = serde_json::to_value(DeploymentRequest {
            environment: cfg.environment.clone(),
            service: desired.service.to_string(),
            version: desired.version.to_string(),
            artifact: desired
                .artifact
                .as_ref()
                .map(|a| ArtifactRequest { uri: a.uri.clone(), digest: a.digest.clone() }),
            config,
            secrets,
            ..DeploymentRequest::default()
        })
        .map_err(|e| ExecutorError::permanent(format!("request: {e}")))?;
        if let Some(map) = body.as_object_mut() {
            for (k, v) in &cfg.request {
                map.insert(k.clone(), v.clone());
            }
        }
        serde_json::from_value(body).map_err(|e| ExecutorError::permanent(format!("the target's request: {e}")))
    }

    async fn install(&self, target: &Target, ctx: ApplyContext<'_>) -> Result<String, ExecutorError> {
        let cfg = FederationConfig::of(target)?;
        let client = self.client(target, &cfg).await?;
        let request = Self::request(&cfg, ctx.desired)?;
        let key = IdempotencyKey::new(federation_key(ctx.deployment, target, &ctx.desired.version))
            .map_err(|e| ExecutorError::permanent(format!("idempotency key: {e}")))?;
        let options = deploy_client::SubmitOptions { idempotency_key: Some(key), ..Default::default() };
        let submitted = client.submit(&request, options).await.map_err(|e| remote_error(&cfg, "submit", &e))?;
        let remote = submitted.deployment.id();
        let how = if submitted.replayed { "following" } else { "submitted" };
        tracing::info!(target = %target.id, %remote, url = %cfg.url, "{how} the remote deployment");
        // Its event stream to the end (the client reopens it after a drop, from the last event seen); each event is
        // progress here. Then its record says how it ended.
        let mut events = Box::pin(client.watch(remote, 0));
        while let Some(event) = futures::StreamExt::next(&mut events).await {
            let event = event.map_err(|e| remote_error(&cfg, "follow", &e))?;
            ctx.report(&format!("deployd {}: {}", cfg.environment, event.message));
        }
        loop {
            let d = client.get_deployment(remote).await.map_err(|e| remote_error(&cfg, "read", &e))?;
            let summary = d.summary();
            let said = format!(
                "{} deployment {remote} at {}: {} ({} of {} target(s) verified)",
                cfg.environment,
                cfg.url,
                d.status(),
                summary.succeeded + summary.skipped,
                summary.total
            );
            let reason = d.status_reason().map(|r| format!(": {r}")).unwrap_or_default();
            ctx.report(&format!("deployd: {said}"));
            match d.status() {
                DeploymentStatus::Succeeded => return Ok(format!("{how} {said}")),
                DeploymentStatus::Degraded
                | DeploymentStatus::Failed
                | DeploymentStatus::RolledBack
                | DeploymentStatus::Cancelled
                | DeploymentStatus::Rejected
                | DeploymentStatus::Superseded => {
                    return Err(ExecutorError::permanent(format!("{said}{reason}")));
                }
                // Queued, running, paused or awaiting approval there: the engine's progress deadline bounds the wait.
                _ => tokio::time::sleep(cfg.poll.as_std()).await,
            }
        }
    }

    /// What the remote environment runs: the version every target of it runs, and whether all are healthy.
    async fn remote_state(&self, target: &Target) -> Result<(Option<Version>, Health), ExecutorError> {
        let cfg = FederationConfig::of(target)?;
        let client = self.client(target, &cfg).await?;
        let name = EnvironmentName::new(cfg.environment.as_str())
            .map_err(|e| ExecutorError::permanent(format!("environment: {e}")))?;
        let env = client.get_environment(&name).await.map_err(|e| remote_error(&cfg, "read", &e))?;
        let actual: Vec<_> = env.targets.iter().map(|t| t.actual.as_ref()).collect();
        let first = actual.first().copied().flatten().and_then(|a| a.version.clone());
        let same = !actual.is_empty() && actual.iter().all(|a| a.and_then(|a| a.version.as_ref()) == first.as_ref());
        if !same {
            return Ok((None, Health::Unhealthy));
        }
        let healthy = actual.iter().all(|a| a.is_some_and(|a| a.health == Health::Healthy));
        Ok((first, if healthy { Health::Healthy } else { Health::Unhealthy }))
    }
}

/// A remote answer as an executor error: unreachable, retryable (overloaded, unavailable), or permanent (refused).
fn remote_error(cfg: &FederationConfig, what: &str, e: &ClientError) -> ExecutorError {
    let message = format!("deployd {} ({what}): {e}", cfg.url);
    match e {
        ClientError::Transport(_) | ClientError::Timeout(_) => ExecutorError::unreachable(message),
        ClientError::Problem(p) => match p.kind() {
            Some(ProblemKind::StoreUnavailable | ProblemKind::RateLimited | ProblemKind::IdempotencyKeyInFlight) => {
                ExecutorError::retryable(message)
            }
            _ if p.status >= 500 => ExecutorError::retryable(message),
            _ => ExecutorError::permanent(message),
        },
        _ => ExecutorError::permanent(message),
    }
}

#[async_trait]
impl Executor for FederationExecutor {
    /// A target names a URL and a secret to present there: whoever defines targets could send any secret this deployd
    /// resolves to any address. That is host-level power, as for `process`.
    fn runs_host_programs(&self) -> bool {
        true
    }

    /// The other deployd resolves the deployment's references in its own scope: no value passes through here.
    fn passes_secret_references(&self) -> bool {
        true
    }

    async fn observe(&self, target: &Target, _: Option<&DesiredState>) -> Result<Observation, ExecutorError> {
        let (version, health) = self.remote_state(target).await?;
        Ok(Observation { version, health })
    }

    async fn apply(&self, target: &Target, ctx: ApplyContext<'_>) -> Result<Outcome, ExecutorError> {
        self.install(target, ctx).await.map(Outcome::with_output)
    }

    async fn verify(&self, target: &Target, desired: &DesiredState) -> Result<Health, ExecutorError> {
        let (version, health) = self.remote_state(target).await?;
        Ok(if version.as_ref() == Some(&desired.version) { health } else { Health::Unhealthy })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use serde_json::json;

    fn target(config: serde_json::Value) -> Target {
        deploy_testkit::fixtures::target("global", "eu", "deployd", config)
    }

    #[test]
    fn the_request_carries_references_not_values_and_the_targets_own_fields() {
        let cfg = FederationConfig::of(&target(json!({"url": "https://eu", "environment": "prod",
            "token": {"ref": "file://fed/eu"}, "request": {"strategy": {"type": "all_at_once"}}})))
        .unwrap();
        let mut desired = DesiredState::bare("checkout".parse().unwrap(), "2.0".parse().unwrap());
        desired.secrets.insert("DB".into(), SecretRef::parse("file://prod/db").unwrap());
        let request = FederationExecutor::request(&cfg, &desired).unwrap();
        assert_eq!((request.environment.as_str(), request.version.as_str()), ("prod", "2.0"));
        assert_eq!(request.secrets["DB"], json!({"ref": "file://prod/db"}));
        assert!(matches!(request.strategy, Some(deploy_core::spec::StrategyRequest::AllAtOnce)));
        request.validate().unwrap();
    }

    #[test]
    fn a_target_cannot_say_what_the_deployment_says() {
        for config in [
            json!({"url": "https://eu", "environment": "prod", "token": {"ref": "file://t"}, "request": {"version": "9"}}),
            json!({"url": "https://eu", "environment": "prod", "token": "dk_inline"}),
            json!({"url": "https://eu", "environment": "../x", "token": {"ref": "file://t"}}),
        ] {
            assert!(FederationConfig::of(&target(config.clone())).is_err(), "{config}");
        }
    }
}
