//! The deployment request as a caller writes it, before validation.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// A deployment request exactly as submitted (the `POST /v1/deployments` body). Every field but `environment`,
/// `service` and `version` may be omitted.
///
/// Reading is tolerant: fields this version does not know are ignored, so documents written by a newer server (a
/// deployment's `spec`, a stored row) still read. The API refuses unknown fields in what it is *sent*, naming their
/// path (`deploy-server`'s body extractor), so a typo in a submission is still an error. Turn it into a [`DeploymentSpec`](super::DeploymentSpec) with
/// [`DeploymentRequest::validate`], which reports every problem at once.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct DeploymentRequest {
    /// The environment to deploy to.
    pub environment: String,
    /// The service being deployed.
    pub service: String,
    /// The version to run.
    pub version: String,
    /// Where the build lives.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub artifact: Option<ArtifactRequest>,
    /// Plain configuration, handed to the target as is.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub config: BTreeMap<String, Value>,
    /// Secrets, each a reference `{"ref": "scheme://location"}`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub secrets: BTreeMap<String, Value>,
    /// Which targets: `{"all": true}`, `{"ids": [...]}` or `{"labels": {...}}`. Default: all.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub targets: Option<TargetsRequest>,
    /// The rollout strategy. Default: rolling, 25% at a time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub strategy: Option<StrategyRequest>,
    /// Health verification after apply.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verify: Option<VerifyRequest>,
    /// What counts as failure and what happens then.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure: Option<FailureRequest>,
    /// What happens when targets cannot be reached.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_unreachable: Option<UnreachableRequest>,
    /// Fail the deployment when no target made progress for this long.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub progress_deadline: Option<String>,
    /// Abort the deployment when it stays paused (by an operator, or waiting to be promoted) for this long. Default:
    /// no limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pause_deadline: Option<String>,
    /// `declarative` (default) or `imperative`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<String>,
    /// The steps of an imperative request, run in order on each target.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub steps: Option<Vec<StepRequest>>,
    /// Free-form labels (`ticket`, `commit`, ...).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
}

/// `artifact` of a request.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct ArtifactRequest {
    /// Where to fetch it.
    pub uri: String,
    /// `sha256:<64 hex digits>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub digest: Option<String>,
}

/// `targets` of a request: exactly one of the fields.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct TargetsRequest {
    /// Every target of the environment.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub all: Option<bool>,
    /// These targets.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ids: Option<Vec<String>>,
    /// Targets whose labels include all of these.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub labels: Option<BTreeMap<String, String>>,
}

/// `strategy` of a request.
///
/// Read through [`StrategyFields`] (a plain struct), not as an internally tagged enum, so that a field no strategy
/// knows is seen as unknown (and refused in a submission, ignored in a document) like anywhere else in a request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", try_from = "StrategyFields")]
pub enum StrategyRequest {
    /// Every target at once.
    AllAtOnce,
    /// Batch after batch.
    Rolling {
        /// A count (`2`, `"2"`) or a percentage (`"25%"`).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        batch_size: Option<Value>,
        /// Wait between batches.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pause: Option<String>,
    },
    /// Growing steps, each verified before the next.
    Canary {
        /// The steps.
        steps: Vec<CanaryStepRequest>,
    },
}

/// The fields of a `strategy` as written, whatever its `type`; [`StrategyRequest`] is read through it.
#[derive(Debug, Clone, Deserialize)]
pub struct StrategyFields {
    /// `all_at_once`, `rolling` or `canary`.
    #[serde(rename = "type")]
    pub kind: String,
    /// Of `rolling`.
    #[serde(default)]
    pub batch_size: Option<Value>,
    /// Of `rolling`.
    #[serde(default)]
    pub pause: Option<String>,
    /// Of `canary`.
    #[serde(default)]
    pub steps: Option<Vec<CanaryStepRequest>>,
}

impl TryFrom<StrategyFields> for StrategyRequest {
    type Error = String;

    fn try_from(f: StrategyFields) -> Result<Self, String> {
        let only = |allowed: &[&str]| -> Result<(), String> {
            let given =
                [("batch_size", f.batch_size.is_some()), ("pause", f.pause.is_some()), ("steps", f.steps.is_some())];
            match given.iter().find(|(name, set)| *set && !allowed.contains(name)) {
                Some((name, _)) => Err(format!("`{name}` does not apply to the `{}` strategy", f.kind)),
                None => Ok(()),
            }
        };
        match f.kind.as_str() {
            "all_at_once" => only(&[]).map(|()| Self::AllAtOnce),
            "rolling" => only(&["batch_size", "pause"])
                .map(|()| Self::Rolling { batch_size: f.batch_size.clone(), pause: f.pause.clone() }),
            "canary" => {
                only(&["steps"])?;
                f.steps.clone().map(|steps| Self::Canary { steps }).ok_or_else(|| "missing field `steps`".to_owned())
            }
            other => Err(format!("unknown variant `{other}`, expected one of `all_at_once`, `rolling`, `canary`")),
        }
    }
}

/// One step of a canary request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CanaryStepRequest {
    /// Share of the selected targets running the new version after this step.
    pub percent: i64,
    /// How long the step's targets must stay healthy before the next step.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verify_for: Option<String>,
    /// `"until_promoted"`: after this step, wait for an operator to promote the rollout.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pause: Option<String>,
}

/// `verify` of a request.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct VerifyRequest {
    /// Give up on a target that is not healthy for `healthy_for` within this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<String>,
    /// Time between health probes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interval: Option<String>,
    /// How long health must hold without interruption.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub healthy_for: Option<String>,
}

/// `failure` of a request.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct FailureRequest {
    /// Failed targets tolerated: a count (`1`, `"1"`) or a percentage (`"10%"`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_failed: Option<Value>,
    /// `fail` or `rollback`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_failure: Option<String>,
}

/// `on_unreachable` of a request.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct UnreachableRequest {
    /// How long to keep trying an unreachable target.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wait: Option<String>,
    /// `continue`, `fail` or `rollback`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub then: Option<String>,
}

/// One imperative step.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct StepRequest {
    /// The action (`stop`, `fetch`, `start`, ...), interpreted by the executor.
    pub action: String,
    /// Arguments for the action.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub args: BTreeMap<String, String>,
}
