//! The deployment spec: what a caller asks for, validated.
//!
//! A [`DeploymentRequest`] is what arrives on the wire; [`DeploymentRequest::validate`] turns it into a
//! [`DeploymentSpec`] whose every field is known good, or into [`ValidationErrors`] listing every problem with its
//! field. Serializing a spec writes the request shape back with every default filled in, so what is stored is exactly
//! what will run.

mod builder;
mod request;
mod validate;
pub(crate) use validate::shaped_like;

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};
use serde_json::Value;

pub use builder::DeploymentSpecBuilder;
pub use request::{
    ArtifactRequest, CanaryStepRequest, DeploymentRequest, FailureRequest, StepRequest, StrategyFields,
    StrategyRequest, TargetsRequest, UnreachableRequest, VerifyRequest,
};

use crate::duration::HumanDuration;
use crate::names::{EnvironmentName, Fingerprint, ServiceName, TargetId, Version};
use crate::secrets::SecretRef;

/// A validated deployment spec. Build one with [`DeploymentRequest::validate`] or deserialize one (which validates).
///
/// ```
/// use deploy_core::{DeploymentRequest, RolloutStrategy};
/// let spec = DeploymentRequest {
///     environment: "prod".into(),
///     service: "checkout".into(),
///     version: "2.0.1".into(),
///     ..Default::default()
/// }
/// .validate()
/// .unwrap();
/// assert!(matches!(spec.strategy(), RolloutStrategy::Rolling { .. }));
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct DeploymentSpec {
    environment: EnvironmentName,
    service: ServiceName,
    version: Version,
    artifact: Option<Artifact>,
    config: BTreeMap<String, ConfigValue>,
    secrets: BTreeMap<String, SecretRef>,
    targets: TargetSelector,
    strategy: RolloutStrategy,
    verify: VerifyPolicy,
    failure: FailurePolicy,
    on_unreachable: UnreachablePolicy,
    progress_deadline: HumanDuration,
    pause_deadline: Option<HumanDuration>,
    mode: ExecutionMode,
    labels: BTreeMap<String, String>,
}

impl DeploymentSpec {
    /// The environment.
    #[must_use]
    pub fn environment(&self) -> &EnvironmentName {
        &self.environment
    }
    /// The service.
    #[must_use]
    pub fn service(&self) -> &ServiceName {
        &self.service
    }
    /// The version to run.
    #[must_use]
    pub fn version(&self) -> &Version {
        &self.version
    }
    /// The artifact, if named.
    #[must_use]
    pub fn artifact(&self) -> Option<&Artifact> {
        self.artifact.as_ref()
    }
    /// Plain configuration (values of sensitive keys are references).
    #[must_use]
    pub fn config(&self) -> &BTreeMap<String, ConfigValue> {
        &self.config
    }
    /// Secret references by name.
    #[must_use]
    pub fn secrets(&self) -> &BTreeMap<String, SecretRef> {
        &self.secrets
    }
    /// Which targets.
    #[must_use]
    pub fn targets(&self) -> &TargetSelector {
        &self.targets
    }
    /// The rollout strategy.
    #[must_use]
    pub fn strategy(&self) -> &RolloutStrategy {
        &self.strategy
    }
    /// Health verification.
    #[must_use]
    pub fn verify(&self) -> &VerifyPolicy {
        &self.verify
    }
    /// The failure policy.
    #[must_use]
    pub fn failure(&self) -> &FailurePolicy {
        &self.failure
    }
    /// The unreachable policy.
    #[must_use]
    pub fn on_unreachable(&self) -> &UnreachablePolicy {
        &self.on_unreachable
    }
    /// The progress deadline.
    #[must_use]
    pub fn progress_deadline(&self) -> HumanDuration {
        self.progress_deadline
    }
    /// How long the deployment may stay paused (by an operator, or waiting to be promoted) before it is aborted;
    /// `None`: as long as it takes.
    #[must_use]
    pub fn pause_deadline(&self) -> Option<HumanDuration> {
        self.pause_deadline
    }
    /// Declarative or imperative.
    #[must_use]
    pub fn mode(&self) -> &ExecutionMode {
        &self.mode
    }
    /// Labels.
    #[must_use]
    pub fn labels(&self) -> &BTreeMap<String, String> {
        &self.labels
    }

    /// The same spec for another version: what a rollback or a redeploy submits.
    #[must_use]
    pub fn with_version(&self, version: Version) -> Self {
        Self { version, ..self.clone() }
    }

    /// The same spec with another target selector.
    #[must_use]
    pub fn with_targets(&self, targets: TargetSelector) -> Self {
        Self { targets, ..self.clone() }
    }

    /// The request shape of this spec, with every default written out.
    #[must_use]
    pub fn to_request(&self) -> DeploymentRequest {
        validate::to_request(self)
    }

    /// The fingerprint of this spec: equal for requests that mean the same thing, whatever their key order or omitted
    /// defaults.
    #[must_use]
    pub fn fingerprint(&self) -> Fingerprint {
        let value = serde_json::to_value(self.to_request()).unwrap_or(Value::Null);
        let mut canonical = Vec::new();
        write_canonical(&value, &mut canonical);
        Fingerprint::of(&canonical)
    }
}

/// Writes JSON with object keys sorted, whatever map type `serde_json` was built with.
fn write_canonical(value: &Value, out: &mut Vec<u8>) {
    match value {
        Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort();
            out.push(b'{');
            for (i, key) in keys.into_iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                out.extend_from_slice(Value::String(key.clone()).to_string().as_bytes());
                out.push(b':');
                if let Some(v) = map.get(key) {
                    write_canonical(v, out);
                }
            }
            out.push(b'}');
        }
        Value::Array(items) => {
            out.push(b'[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_canonical(item, out);
            }
            out.push(b']');
        }
        scalar => out.extend_from_slice(scalar.to_string().as_bytes()),
    }
}

impl Serialize for DeploymentSpec {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.to_request().serialize(serializer)
    }
}

/// Reads a spec as recorded (a stored row, the `spec` of a served deployment): fields this version does not know are
/// ignored, and the rules are not applied again, only what it takes to build the spec, so a document accepted under
/// earlier rules still reads after a rule was tightened. What is *submitted* goes through
/// [`DeploymentRequest::validate`] instead.
impl<'de> Deserialize<'de> for DeploymentSpec {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let request = DeploymentRequest::deserialize(deserializer)?;
        validate::validate(&request, validate::Rules::Recorded).map_err(serde::de::Error::custom)
    }
}

/// Where the build lives.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Artifact {
    /// Where to fetch it.
    pub uri: String,
    /// `sha256:<hex>`, checked by executors that fetch.
    pub digest: Option<String>,
}

/// A configuration value: a literal, or a reference for keys that hold secrets.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum ConfigValue {
    /// A secret reference, resolved at apply time.
    Secret(SecretRef),
    /// A plain string, number or boolean.
    Literal(Value),
}

impl ConfigValue {
    /// The value as a request writes it: the literal, or `{"ref": "scheme://location"}`.
    #[must_use]
    pub fn to_request(&self) -> Value {
        match self {
            Self::Literal(v) => v.clone(),
            Self::Secret(r) => r.to_request(),
        }
    }
}

/// Which targets of the environment a deployment covers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TargetSelector {
    /// Every target.
    All,
    /// These ids, in this order.
    Ids(Vec<TargetId>),
    /// Targets carrying all of these labels.
    Labels(BTreeMap<String, String>),
}

/// A count or a share of the selected targets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CountOrPercent {
    /// An absolute number.
    Count(u32),
    /// A percentage, 0 to 100.
    Percent(u8),
}

impl CountOrPercent {
    /// The number this stands for out of `total`. Percentages round up for batch sizes, so `25%` of 3 is 1, never 0.
    #[must_use]
    pub fn of_rounding_up(self, total: usize) -> usize {
        match self {
            Self::Count(n) => n as usize,
            Self::Percent(p) => (total * usize::from(p)).div_ceil(100),
        }
    }

    /// The number this stands for out of `total`, rounding down: a tolerance of `10%` of 5 targets tolerates 0.
    #[must_use]
    pub fn of_rounding_down(self, total: usize) -> usize {
        match self {
            Self::Count(n) => n as usize,
            Self::Percent(p) => total * usize::from(p) / 100,
        }
    }
}

impl fmt::Display for CountOrPercent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let text = match self {
            Self::Count(n) => n.to_string(),
            Self::Percent(p) => format!("{p}%"),
        };
        f.pad(&text)
    }
}

/// How the new version reaches the targets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RolloutStrategy {
    /// Every target at once.
    AllAtOnce,
    /// Batch after batch, each verified before the next.
    Rolling {
        /// Targets per batch.
        batch_size: CountOrPercent,
        /// Wait between batches.
        pause: HumanDuration,
    },
    /// Growing steps, each verified and then watched for `verify_for` before the next; a failing step rolls back.
    Canary {
        /// Steps with strictly increasing percentages, the last at 100.
        steps: Vec<CanaryStep>,
    },
}

/// One step of a canary rollout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CanaryStep {
    /// Share of the selected targets on the new version after this step.
    pub percent: u8,
    /// How long the step's targets must stay healthy before the next step.
    pub verify_for: HumanDuration,
    /// Whether the rollout then waits for an operator to promote it (`"pause": "until_promoted"`).
    pub until_promoted: bool,
}

/// Health verification after apply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VerifyPolicy {
    /// Give up on a target that is not healthy for `healthy_for` within this.
    pub timeout: HumanDuration,
    /// Time between probes.
    pub interval: HumanDuration,
    /// How long health must hold without interruption.
    pub healthy_for: HumanDuration,
}

/// What happens after a target fails.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnFailure {
    /// Stop and mark the deployment failed; targets keep what they run.
    Fail,
    /// Stop and return every changed target to its previous version.
    Rollback,
}

/// What counts as failure and what happens then.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FailurePolicy {
    /// Failed targets tolerated; more fails the deployment.
    pub max_failed: CountOrPercent,
    /// What happens when the deployment fails.
    pub on_failure: OnFailure,
}

/// What happens to a target that stays unreachable for `wait`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UnreachableAction {
    /// Leave it `unreachable` and carry on; the deployment can at best be `degraded`.
    Continue,
    /// Count it as a failed target.
    Fail,
    /// Stop and roll the deployment back.
    Rollback,
}

/// The network-partition policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UnreachablePolicy {
    /// How long to keep trying.
    pub wait: HumanDuration,
    /// Then what.
    pub then: UnreachableAction,
}

/// Declarative (what) or imperative (how).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExecutionMode {
    /// Observe each target and change only what differs.
    Declarative,
    /// Run these steps in order on each target.
    Imperative {
        /// The steps.
        steps: Vec<ImperativeStep>,
    },
}

/// One step of an imperative deployment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImperativeStep {
    /// The action, interpreted by the executor.
    pub action: String,
    /// Its arguments.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub args: BTreeMap<String, String>,
}

/// The defaults of an omitted field, as documented in the API.
pub mod defaults {
    use super::{CountOrPercent, OnFailure, UnreachableAction};
    use crate::duration::HumanDuration;

    /// `strategy`: rolling, a quarter of the targets at a time.
    pub const BATCH_SIZE: CountOrPercent = CountOrPercent::Percent(25);
    /// `verify.timeout`.
    pub const VERIFY_TIMEOUT: HumanDuration = HumanDuration::from_secs(60);
    /// `verify.interval`.
    pub const VERIFY_INTERVAL: HumanDuration = HumanDuration::from_secs(1);
    /// `verify.healthy_for`.
    pub const HEALTHY_FOR: HumanDuration = HumanDuration::from_secs(3);
    /// `failure.max_failed`.
    pub const MAX_FAILED: CountOrPercent = CountOrPercent::Count(0);
    /// `failure.on_failure`.
    pub const ON_FAILURE: OnFailure = OnFailure::Rollback;
    /// `on_unreachable.wait`.
    pub const UNREACHABLE_WAIT: HumanDuration = HumanDuration::from_secs(30);
    /// `on_unreachable.then`: count it as failed, so the failure policy decides.
    pub const UNREACHABLE_THEN: UnreachableAction = UnreachableAction::Fail;
    /// `progress_deadline`.
    pub const PROGRESS_DEADLINE: HumanDuration = HumanDuration::from_secs(600);
    /// `canary.steps[].verify_for`.
    pub const CANARY_VERIFY_FOR: HumanDuration = HumanDuration::from_secs(30);
}

/// One problem with one field of a request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FieldError {
    /// The field, as a path: `strategy.batch_size`, `secrets.DB_PASSWORD`, `steps[2].action`.
    pub field: String,
    /// What is wrong, for a person.
    pub message: String,
    /// Whether this problem is a secret written in clear.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub hardcoded_secret: bool,
}

/// Whether `c` must not appear in text shown on a terminal: control characters (escape sequences, carriage returns,
/// line breaks) and Unicode's direction marks, embeddings, overrides and isolates.
#[must_use]
pub fn is_unprintable(c: char) -> bool {
    c.is_control()
        || matches!(c, '\u{200E}' | '\u{200F}' | '\u{061C}' | '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}')
}

/// Every problem found in a request.
#[derive(Debug, Clone, PartialEq, Eq, Default, thiserror::Error)]
pub struct ValidationErrors {
    errors: Vec<FieldError>,
}

impl ValidationErrors {
    /// Adds a problem.
    pub fn push(&mut self, field: impl Into<String>, message: impl Into<String>) {
        self.errors.push(FieldError { field: field.into(), message: message.into(), hardcoded_secret: false });
    }

    /// Adds a hard-coded secret.
    pub fn push_secret(&mut self, field: impl Into<String>, message: impl Into<String>) {
        self.errors.push(FieldError { field: field.into(), message: message.into(), hardcoded_secret: true });
    }

    /// Checks a free-text field that is recorded and shown to readers (a reason, a comment, a label): at most
    /// `max_chars` characters, no control characters and no bidirectional overrides (they forge lines and reorder
    /// text on a terminal), and nothing shaped like a secret in any of its tokens. Returns whether it passed.
    ///
    /// ```
    /// use deploy_core::ValidationErrors;
    /// let mut errs = ValidationErrors::default();
    /// assert!(errs.check_text("reason", "database migration, OPS-1234", 500));
    /// assert!(!errs.check_text("reason", "rotate ghp_0123456789abcdefghijABCDEFGHIJ012345", 500));
    /// assert!(!errs.check_text("comment", "ok\u{1b}[2J", 500));
    /// assert!(errs.has_hardcoded_secret() && errs.has_field("comment"));
    /// ```
    pub fn check_text(&mut self, field: &str, text: &str, max_chars: usize) -> bool {
        if text.chars().count() > max_chars {
            self.push(field, format!("at most {max_chars} characters"));
        } else if let Some(c) = text.chars().find(|&c| is_unprintable(c)) {
            self.push(field, format!("no control characters or direction overrides (found U+{:04X})", u32::from(c)));
        } else if let Some(kind) = crate::secrets::secret_shape(text) {
            self.push_secret(
                field,
                format!("this looks like {kind}; this text is recorded and shown to every reader, never a secret"),
            );
        } else {
            return true;
        }
        false
    }

    /// The problems, in the order found.
    #[must_use]
    pub fn errors(&self) -> &[FieldError] {
        &self.errors
    }

    /// Whether there are none.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.errors.is_empty()
    }

    /// Whether any problem is a secret written in clear (`422 hardcoded-secret` rather than `400 validation`).
    #[must_use]
    pub fn has_hardcoded_secret(&self) -> bool {
        self.errors.iter().any(|e| e.hardcoded_secret)
    }

    /// Whether `field` has a problem.
    #[must_use]
    pub fn has_field(&self, field: &str) -> bool {
        self.errors.iter().any(|e| e.field == field)
    }
}

impl fmt::Display for ValidationErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} invalid field(s)", self.errors.len())?;
        for e in &self.errors {
            write!(f, "; {}: {}", e.field, e.message)?;
        }
        Ok(())
    }
}

impl DeploymentRequest {
    /// Validates the request, applying the documented defaults.
    ///
    /// # Errors
    /// [`ValidationErrors`] with every problem found, each with its field. Literal secrets are reported with
    /// [`FieldError::hardcoded_secret`] set.
    pub fn validate(&self) -> Result<DeploymentSpec, ValidationErrors> {
        validate::validate(self, validate::Rules::Enforced)
    }
}

/// Whether a configuration key's name says it holds a secret (`DB_PASSWORD`, `apiKey`, `github-token`, ...).
#[must_use]
pub fn is_sensitive_key(key: &str) -> bool {
    crate::secrets::is_sensitive_key(key)
}
