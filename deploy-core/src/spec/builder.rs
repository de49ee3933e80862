//! [`DeploymentSpecBuilder`]: a deployment spec from typed values, checked by the same rules as a JSON request.

use std::collections::BTreeMap;

use super::{
    Artifact, ConfigValue, DeploymentRequest, DeploymentSpec, ExecutionMode, FailurePolicy, RolloutStrategy,
    TargetSelector, UnreachablePolicy, ValidationErrors, VerifyPolicy,
};
use crate::duration::HumanDuration;
use crate::names::{EnvironmentName, ServiceName, Version};
use crate::secrets::SecretRef;

/// Builds a [`DeploymentSpec`] from typed values: no JSON, no strings for enums. What is not set keeps the documented
/// default, and [`build`](Self::build) applies every rule a JSON request is held to (limits, sensitive keys,
/// strategies, deadlines longer than verification), so a spec built here and one sent over HTTP are the same thing.
///
/// ```
/// use deploy_core::{
///     CountOrPercent, DeploymentSpec, FailurePolicy, HumanDuration, OnFailure, RolloutStrategy, SecretRef,
/// };
/// let spec = DeploymentSpec::builder("prod".parse()?, "checkout".parse()?, "2.0.1".parse()?)
///     .strategy(RolloutStrategy::Rolling { batch_size: CountOrPercent::Percent(25), pause: HumanDuration::ZERO })
///     .failure(FailurePolicy { max_failed: CountOrPercent::Count(0), on_failure: OnFailure::Rollback })
///     .secret("DB_PASSWORD", SecretRef::parse("vault://kv/checkout/db#password")?)
///     .build()?;
/// assert_eq!(spec.version().as_str(), "2.0.1");
///
/// // The rules of the wire hold here too: a rolling batch of 0% is refused, with the field named.
/// let refused = DeploymentSpec::builder("prod".parse()?, "checkout".parse()?, "2.0.1".parse()?)
///     .strategy(RolloutStrategy::Rolling { batch_size: CountOrPercent::Percent(0), pause: HumanDuration::ZERO })
///     .build()
///     .unwrap_err();
/// assert_eq!(refused.errors()[0].field, "strategy.batch_size");
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone)]
#[must_use]
pub struct DeploymentSpecBuilder {
    /// The spec so far; the rules are applied once, by `build`.
    spec: Result<DeploymentSpec, ValidationErrors>,
}

impl DeploymentSpec {
    /// Starts a spec deploying `version` of `service` to `environment`, every other field at its default.
    pub fn builder(environment: EnvironmentName, service: ServiceName, version: Version) -> DeploymentSpecBuilder {
        let base = DeploymentRequest {
            environment: environment.to_string(),
            service: service.to_string(),
            version: version.to_string(),
            ..DeploymentRequest::default()
        };
        // Typed names always validate; every other field starts at its documented default.
        DeploymentSpecBuilder { spec: base.validate() }
    }
}

impl DeploymentSpecBuilder {
    fn with(mut self, f: impl FnOnce(&mut DeploymentSpec)) -> Self {
        if let Ok(spec) = &mut self.spec {
            f(spec);
        }
        self
    }

    /// The artifact to fetch.
    pub fn artifact(self, artifact: Artifact) -> Self {
        self.with(|s| s.artifact = Some(artifact))
    }

    /// One configuration value. A value under a sensitive key (`*_PASSWORD`, `*_TOKEN`, ...) must be
    /// [`ConfigValue::Secret`]; a literal there is refused at [`build`](Self::build).
    pub fn config(self, key: impl Into<String>, value: ConfigValue) -> Self {
        let key = key.into();
        self.with(|s| {
            s.config.insert(key, value);
        })
    }

    /// One secret, as a reference resolved at apply time.
    pub fn secret(self, name: impl Into<String>, reference: SecretRef) -> Self {
        let name = name.into();
        self.with(|s| {
            s.secrets.insert(name, reference);
        })
    }

    /// Which targets of the environment to deploy to (default: all).
    pub fn targets(self, targets: TargetSelector) -> Self {
        self.with(|s| s.targets = targets)
    }

    /// The rollout strategy (default: all at once).
    pub fn strategy(self, strategy: RolloutStrategy) -> Self {
        self.with(|s| s.strategy = strategy)
    }

    /// How health is verified.
    pub fn verify(self, verify: VerifyPolicy) -> Self {
        self.with(|s| s.verify = verify)
    }

    /// How many targets may fail, and what happens then.
    pub fn failure(self, failure: FailurePolicy) -> Self {
        self.with(|s| s.failure = failure)
    }

    /// What happens to targets that cannot be reached.
    pub fn on_unreachable(self, policy: UnreachablePolicy) -> Self {
        self.with(|s| s.on_unreachable = policy)
    }

    /// How long the deployment may go without progress before it fails.
    pub fn progress_deadline(self, deadline: HumanDuration) -> Self {
        self.with(|s| s.progress_deadline = deadline)
    }

    /// Abort the deployment when it stays paused this long (default: no limit).
    pub fn pause_deadline(self, deadline: HumanDuration) -> Self {
        self.with(|s| s.pause_deadline = Some(deadline))
    }

    /// Declarative (the default) or imperative steps.
    pub fn mode(self, mode: ExecutionMode) -> Self {
        self.with(|s| s.mode = mode)
    }

    /// One label of the deployment.
    pub fn label(self, key: impl Into<String>, value: impl Into<String>) -> Self {
        let (key, value) = (key.into(), value.into());
        self.with(|s| {
            s.labels.insert(key, value);
        })
    }

    /// Every label of the deployment, replacing those set before.
    pub fn labels(self, labels: BTreeMap<String, String>) -> Self {
        self.with(|s| s.labels = labels)
    }

    /// The spec, checked by the rules of the API.
    ///
    /// # Errors
    /// Every rule the spec breaks, each with its field, as a JSON request would get them.
    pub fn build(self) -> Result<DeploymentSpec, ValidationErrors> {
        // Through the request shape, so the rules are exactly the wire's.
        self.spec?.to_request().validate()
    }
}
