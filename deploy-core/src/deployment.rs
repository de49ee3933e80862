//! The deployment record: status, per-target progress and a summary that always agrees with it.

use std::fmt;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::clock::Timestamp;
use crate::control::{AbortRequest, Approval, Controls, Decision, OperatorAction, OperatorRequest, RequestError};
use crate::environment::Environment;
use crate::environment::Protection;
use crate::names::{DeploymentId, EnvironmentName, Revision, ServiceName, TargetId, Version};
use crate::spec::{DeploymentSpec, ValidationErrors};
use crate::state::DesiredState;

/// The status of a deployment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeploymentStatus {
    /// Accepted in a protected environment, waiting for its approvals (and the rule's wait after them).
    AwaitingApproval,
    /// Accepted, waiting for its turn.
    Queued,
    /// A controller is rolling it out.
    InProgress,
    /// Held at a safe point, by an operator or by a canary step that waits to be promoted; still holds the
    /// environment.
    Paused,
    /// Every selected target runs the new version, verified (or already did).
    Succeeded,
    /// Finished with failed or unreachable targets within the tolerance.
    Degraded,
    /// Finished with more failures than tolerated; not rolled back.
    Failed,
    /// Returning changed targets to their previous version.
    RollingBack,
    /// Returned to the previous version.
    RolledBack,
    /// Stopped on request.
    Cancelled,
    /// Replaced by a newer deployment.
    Superseded,
    /// An approver rejected it before it started.
    Rejected,
}

impl DeploymentStatus {
    /// Every status, in lifecycle order.
    pub const ALL: [Self; 12] = [
        Self::AwaitingApproval,
        Self::Queued,
        Self::InProgress,
        Self::Paused,
        Self::Succeeded,
        Self::Degraded,
        Self::Failed,
        Self::RollingBack,
        Self::RolledBack,
        Self::Cancelled,
        Self::Superseded,
        Self::Rejected,
    ];

    /// The wire name.
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::AwaitingApproval => "awaiting_approval",
            Self::Queued => "queued",
            Self::InProgress => "in_progress",
            Self::Paused => "paused",
            Self::Succeeded => "succeeded",
            Self::Degraded => "degraded",
            Self::Failed => "failed",
            Self::RollingBack => "rolling_back",
            Self::RolledBack => "rolled_back",
            Self::Cancelled => "cancelled",
            Self::Superseded => "superseded",
            Self::Rejected => "rejected",
        }
    }

    /// Whether nothing will change this status again.
    #[must_use]
    pub const fn is_terminal(self) -> bool {
        !matches!(self, Self::AwaitingApproval | Self::Queued | Self::InProgress | Self::Paused | Self::RollingBack)
    }

    /// Whether a controller is changing targets under this status.
    #[must_use]
    pub const fn is_running(self) -> bool {
        matches!(self, Self::InProgress | Self::RollingBack)
    }

    /// Whether the lifecycle allows going from `self` to `next`.
    #[must_use]
    pub const fn can_become(self, next: Self) -> bool {
        match self {
            Self::AwaitingApproval => {
                matches!(next, Self::Queued | Self::Rejected | Self::Cancelled | Self::Superseded)
            }
            Self::Queued => matches!(next, Self::InProgress | Self::Cancelled | Self::Superseded),
            Self::InProgress => matches!(
                next,
                Self::Succeeded
                    | Self::Degraded
                    | Self::Failed
                    | Self::RollingBack
                    | Self::Cancelled
                    | Self::Superseded
                    | Self::Paused
            ),
            Self::Paused => {
                matches!(next, Self::InProgress | Self::Failed | Self::RollingBack | Self::Cancelled | Self::Superseded)
            }
            Self::RollingBack => matches!(next, Self::RolledBack | Self::Failed),
            _ => false,
        }
    }
}

impl fmt::Display for DeploymentStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.as_str())
    }
}

impl std::str::FromStr for DeploymentStatus {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL.into_iter().find(|v| v.as_str() == s).ok_or_else(|| format!("unknown deployment status {s:?}"))
    }
}

/// The status of one target within a deployment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TargetStatus {
    /// Not started.
    Pending,
    /// Being applied.
    InProgress,
    /// Applied, health being verified.
    Verifying,
    /// Runs the new version, verified.
    Succeeded,
    /// Could not be brought to the new version.
    Failed,
    /// Could not be reached within `on_unreachable.wait`.
    Unreachable,
    /// Already ran the new version and was healthy: nothing to do.
    Skipped,
    /// Returned to its previous version.
    RolledBack,
    /// Never attempted, because the deployment stopped first.
    Cancelled,
}

impl TargetStatus {
    /// Every status.
    pub const ALL: [Self; 9] = [
        Self::Pending,
        Self::InProgress,
        Self::Verifying,
        Self::Succeeded,
        Self::Failed,
        Self::Unreachable,
        Self::Skipped,
        Self::RolledBack,
        Self::Cancelled,
    ];

    /// The wire name.
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::InProgress => "in_progress",
            Self::Verifying => "verifying",
            Self::Succeeded => "succeeded",
            Self::Failed => "failed",
            Self::Unreachable => "unreachable",
            Self::Skipped => "skipped",
            Self::RolledBack => "rolled_back",
            Self::Cancelled => "cancelled",
        }
    }

    /// Whether the target is done within this rollout (rollback may still move it to `rolled_back`).
    #[must_use]
    pub const fn is_settled(self) -> bool {
        !matches!(self, Self::Pending | Self::InProgress | Self::Verifying)
    }
}

impl fmt::Display for TargetStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.as_str())
    }
}

/// One target's progress within a deployment.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TargetProgress {
    /// The target.
    pub id: TargetId,
    /// The version it ran before (as observed when the rollout reached it), if any.
    pub from_version: Option<Version>,
    /// The version this deployment brings it to.
    pub to_version: Version,
    /// Its status.
    pub status: TargetStatus,
    /// Executor calls made for it (retries included).
    pub attempts: u32,
    /// The last error, for people.
    pub error: Option<String>,
    /// When this entry last changed.
    #[serde(with = "time::serde::rfc3339")]
    pub updated_at: Timestamp,
    /// What to restore on rollback, captured before the first change (`None` if nothing ran before).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous: Option<Arc<DesiredState>>,
}

impl TargetProgress {
    /// The version to return to if this deployment may have changed the target: set when the rollout reached the target
    /// (succeeded, failed, unreachable, or interrupted mid-change) and it ran another version before.
    #[must_use]
    pub fn restorable_version(&self) -> Option<&Version> {
        let touched = matches!(
            self.status,
            TargetStatus::Succeeded
                | TargetStatus::Failed
                | TargetStatus::Unreachable
                | TargetStatus::InProgress
                | TargetStatus::Verifying
        );
        self.from_version.as_ref().filter(|from| touched && *from != &self.to_version)
    }
}

/// Counts of targets per status; always equal to the per-target states of its deployment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Summary {
    /// All selected targets.
    pub total: u64,
    /// Not started.
    pub pending: u64,
    /// Being applied or verified.
    pub in_progress: u64,
    /// Verified on the new version.
    pub succeeded: u64,
    /// Already at the new version.
    pub skipped: u64,
    /// Failed.
    pub failed: u64,
    /// Unreachable.
    pub unreachable: u64,
    /// Rolled back.
    pub rolled_back: u64,
    /// Never attempted.
    pub cancelled: u64,
}

impl Summary {
    /// The counts of `targets`.
    #[must_use]
    pub fn of(targets: &[TargetProgress]) -> Self {
        let mut s = Self::default();
        for t in targets {
            s.total += 1;
            *s.slot(t.status) += 1;
        }
        s
    }

    fn slot(&mut self, status: TargetStatus) -> &mut u64 {
        match status {
            TargetStatus::Pending => &mut self.pending,
            TargetStatus::InProgress | TargetStatus::Verifying => &mut self.in_progress,
            TargetStatus::Succeeded => &mut self.succeeded,
            TargetStatus::Skipped => &mut self.skipped,
            TargetStatus::Failed => &mut self.failed,
            TargetStatus::Unreachable => &mut self.unreachable,
            TargetStatus::RolledBack => &mut self.rolled_back,
            TargetStatus::Cancelled => &mut self.cancelled,
        }
    }

    fn moved(&mut self, from: TargetStatus, to: TargetStatus) {
        let old = self.slot(from);
        *old = old.saturating_sub(1);
        *self.slot(to) += 1;
    }
}

/// A change of a deployment's status, with the reason shown to people.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatusChange {
    /// The new status.
    pub status: DeploymentStatus,
    /// Why, in a sentence.
    pub reason: Option<String>,
}

/// One atomic change to a deployment: status, targets, events and environment observations are written together or
/// not at all.
#[derive(Debug, Clone, Default)]
pub struct ProgressUpdate {
    /// When the change was made.
    pub now: Option<Timestamp>,
    /// A new deployment status.
    pub status: Option<StatusChange>,
    /// New target entries, by position in [`Deployment::targets`].
    pub targets: Vec<(usize, TargetProgress)>,
    /// Events to append.
    pub events: Vec<crate::event::NewEvent>,
    /// What the environment should now show for targets.
    pub observations: Vec<TargetObservation>,
    /// Whether this change counts as progress for the progress deadline.
    pub progressed: bool,
    /// With a change to `paused`: the canary step (numbered from 1) that waits to be promoted.
    pub awaiting_promotion: Option<u32>,
    /// With a change to `queued` (a deployment held by its environment's windows or a freeze): until when no
    /// controller needs to look at it again.
    pub hold_until: Option<Timestamp>,
}

/// An update of the environment's view of one target.
#[derive(Debug, Clone, PartialEq)]
pub struct TargetObservation {
    /// The target.
    pub target: TargetId,
    /// A new desired state, when a deployment reached the target.
    pub desired: Option<Arc<DesiredState>>,
    /// A new actual state.
    pub actual: Option<crate::state::ActualState>,
}

/// Why an update could not be applied to a deployment record.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum UpdateError {
    /// The deployment is terminal; nothing changes it.
    #[error("deployment is already {0}")]
    AlreadyFinished(DeploymentStatus),
    /// The lifecycle does not allow this change.
    #[error("a deployment cannot go from {from} to {to}")]
    IllegalTransition {
        /// The current status.
        from: DeploymentStatus,
        /// The refused status.
        to: DeploymentStatus,
    },
    /// A target position that does not exist, or an entry for another target.
    #[error("target entry {index} does not match this deployment")]
    UnknownTarget {
        /// The position given.
        index: usize,
    },
}

/// A deployment as stored and served.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(from = "Wire")]
pub struct Deployment {
    id: DeploymentId,
    environment: EnvironmentName,
    service: ServiceName,
    version: Version,
    status: DeploymentStatus,
    status_reason: Option<String>,
    spec: DeploymentSpec,
    created_by: String,
    #[serde(with = "time::serde::rfc3339")]
    created_at: Timestamp,
    #[serde(with = "time::serde::rfc3339::option")]
    started_at: Option<Timestamp>,
    #[serde(with = "time::serde::rfc3339::option")]
    finished_at: Option<Timestamp>,
    #[serde(with = "time::serde::rfc3339")]
    updated_at: Timestamp,
    #[serde(with = "time::serde::rfc3339::option")]
    progress_at: Option<Timestamp>,
    targets: Vec<TargetProgress>,
    summary: Summary,
    rollback_of: Option<DeploymentId>,
    superseded_by: Option<DeploymentId>,
    #[serde(skip_serializing_if = "Option::is_none")]
    retry_of: Option<DeploymentId>,
    #[serde(skip_serializing_if = "Option::is_none")]
    submitted_by: Option<String>,
    cancel_requested: bool,
    #[serde(skip_serializing_if = "Controls::is_empty")]
    controls: Controls,
    #[serde(skip_serializing_if = "Option::is_none")]
    awaiting_promotion: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none", with = "time::serde::rfc3339::option")]
    paused_at: Option<Timestamp>,
    #[serde(skip_serializing_if = "Option::is_none")]
    protection: Option<Protection>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    approvals: Vec<Approval>,
    #[serde(skip_serializing_if = "Option::is_none", with = "time::serde::rfc3339::option")]
    approved_at: Option<Timestamp>,
    #[serde(skip_serializing_if = "Option::is_none", with = "time::serde::rfc3339::option")]
    held_until: Option<Timestamp>,
    revision: Revision,
}

/// The serialized shape; the summary is recomputed on the way in so a stored record cannot disagree with itself.
#[derive(Deserialize)]
struct Wire {
    id: DeploymentId,
    environment: EnvironmentName,
    service: ServiceName,
    version: Version,
    status: DeploymentStatus,
    status_reason: Option<String>,
    spec: DeploymentSpec,
    created_by: String,
    #[serde(with = "time::serde::rfc3339")]
    created_at: Timestamp,
    #[serde(default, with = "time::serde::rfc3339::option")]
    started_at: Option<Timestamp>,
    #[serde(default, with = "time::serde::rfc3339::option")]
    finished_at: Option<Timestamp>,
    #[serde(with = "time::serde::rfc3339")]
    updated_at: Timestamp,
    #[serde(default, with = "time::serde::rfc3339::option")]
    progress_at: Option<Timestamp>,
    targets: Vec<TargetProgress>,
    #[serde(default)]
    rollback_of: Option<DeploymentId>,
    #[serde(default)]
    superseded_by: Option<DeploymentId>,
    #[serde(default)]
    retry_of: Option<DeploymentId>,
    #[serde(default)]
    submitted_by: Option<String>,
    #[serde(default)]
    cancel_requested: bool,
    #[serde(default)]
    controls: Controls,
    #[serde(default)]
    awaiting_promotion: Option<u32>,
    #[serde(default, with = "time::serde::rfc3339::option")]
    paused_at: Option<Timestamp>,
    #[serde(default)]
    protection: Option<Protection>,
    #[serde(default)]
    approvals: Vec<Approval>,
    #[serde(default, with = "time::serde::rfc3339::option")]
    approved_at: Option<Timestamp>,
    #[serde(default, with = "time::serde::rfc3339::option")]
    held_until: Option<Timestamp>,
    revision: Revision,
}

impl From<Wire> for Deployment {
    fn from(w: Wire) -> Self {
        Self {
            summary: Summary::of(&w.targets),
            id: w.id,
            environment: w.environment,
            service: w.service,
            version: w.version,
            status: w.status,
            status_reason: w.status_reason,
            spec: w.spec,
            created_by: w.created_by,
            created_at: w.created_at,
            started_at: w.started_at,
            finished_at: w.finished_at,
            updated_at: w.updated_at,
            progress_at: w.progress_at,
            targets: w.targets,
            rollback_of: w.rollback_of,
            superseded_by: w.superseded_by,
            retry_of: w.retry_of,
            submitted_by: w.submitted_by,
            cancel_requested: w.cancel_requested,
            controls: w.controls,
            awaiting_promotion: w.awaiting_promotion,
            paused_at: w.paused_at,
            protection: w.protection,
            approvals: w.approvals,
            approved_at: w.approved_at,
            held_until: w.held_until,
            revision: w.revision,
        }
    }
}

/// How the targets of a new deployment are chosen.
#[derive(Debug, Clone, PartialEq)]
pub enum TargetPlan {
    /// The spec's selector, every target to the spec's version.
    FromSpec,
    /// Explicit targets and versions (a rollback returns each target to its own previous version).
    Explicit(Vec<(TargetId, Version)>),
}

/// What a store needs to create a queued deployment inside its acceptance transaction.
#[derive(Debug, Clone, PartialEq)]
pub struct DeploymentDraft {
    /// The new id.
    pub id: DeploymentId,
    /// The validated spec.
    pub spec: DeploymentSpec,
    /// Who submitted it.
    pub created_by: String,
    /// How targets are chosen.
    pub plan: TargetPlan,
    /// The deployment this one rolls back.
    pub rollback_of: Option<DeploymentId>,
    /// The deployment whose failed targets this one retries.
    pub retry_of: Option<DeploymentId>,
    /// The submitter's person identity (`person:alice`) when it is not `created_by` itself: what self-approval is
    /// judged by ([`crate::Principal::identity`]). Set by the orchestrator.
    pub submitted_by: Option<String>,
}

impl Deployment {
    /// A queued deployment for `draft` against the environment as it is now, at the environment's next revision.
    ///
    /// # Errors
    /// A validation error on `targets` when the selection is empty or names unknown targets.
    pub fn plan(draft: DeploymentDraft, environment: &Environment, now: Timestamp) -> Result<Self, ValidationErrors> {
        let targets: Vec<TargetProgress> = match &draft.plan {
            TargetPlan::FromSpec => environment
                .select(draft.spec.targets())?
                .into_iter()
                .map(|t| {
                    pending(
                        t.id.clone(),
                        t.actual.as_ref().and_then(|a| a.version.clone()),
                        draft.spec.version().clone(),
                        now,
                    )
                })
                .collect(),
            TargetPlan::Explicit(list) => {
                let mut errs = ValidationErrors::default();
                let mut out = Vec::with_capacity(list.len());
                for (i, (id, version)) in list.iter().enumerate() {
                    match environment.target(id) {
                        Some(t) => out.push(pending(
                            id.clone(),
                            t.actual.as_ref().and_then(|a| a.version.clone()),
                            version.clone(),
                            now,
                        )),
                        None => errs.push(format!("targets[{i}]"), format!("environment has no target {id}")),
                    }
                }
                if out.is_empty() && errs.is_empty() {
                    errs.push("targets", "nothing to deploy");
                }
                if !errs.is_empty() {
                    return Err(errs);
                }
                out
            }
        };
        // A protected environment's rule is kept with the deployment: the one in force when it was accepted.
        let protection = environment.protection.clone().filter(|p| p.required_approvals > 0);
        Ok(Self {
            id: draft.id,
            environment: draft.spec.environment().clone(),
            service: draft.spec.service().clone(),
            version: draft.spec.version().clone(),
            status: if protection.is_some() { DeploymentStatus::AwaitingApproval } else { DeploymentStatus::Queued },
            status_reason: None,
            created_by: draft.created_by,
            created_at: now,
            started_at: None,
            finished_at: None,
            updated_at: now,
            progress_at: None,
            summary: Summary::of(&targets),
            targets,
            rollback_of: draft.rollback_of,
            superseded_by: None,
            retry_of: draft.retry_of,
            submitted_by: draft.submitted_by,
            cancel_requested: false,
            controls: Controls::default(),
            awaiting_promotion: None,
            paused_at: None,
            protection,
            approvals: Vec::new(),
            approved_at: None,
            held_until: None,
            revision: environment.revision.next(),
            spec: draft.spec,
        })
    }

    /// The id.
    #[must_use]
    pub fn id(&self) -> DeploymentId {
        self.id
    }
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
    /// The version.
    #[must_use]
    pub fn version(&self) -> &Version {
        &self.version
    }
    /// The status.
    #[must_use]
    pub fn status(&self) -> DeploymentStatus {
        self.status
    }
    /// Why it has its status, in a sentence.
    #[must_use]
    pub fn status_reason(&self) -> Option<&str> {
        self.status_reason.as_deref()
    }
    /// The spec as accepted (secrets as references).
    #[must_use]
    pub fn spec(&self) -> &DeploymentSpec {
        &self.spec
    }
    /// Who submitted it.
    #[must_use]
    pub fn created_by(&self) -> &str {
        &self.created_by
    }
    /// When it was accepted.
    #[must_use]
    pub fn created_at(&self) -> Timestamp {
        self.created_at
    }
    /// When a controller started it.
    #[must_use]
    pub fn started_at(&self) -> Option<Timestamp> {
        self.started_at
    }
    /// When it reached a terminal status.
    #[must_use]
    pub fn finished_at(&self) -> Option<Timestamp> {
        self.finished_at
    }
    /// When anything last changed.
    #[must_use]
    pub fn updated_at(&self) -> Timestamp {
        self.updated_at
    }
    /// When a target last made progress (the progress deadline counts from here, or from `started_at`).
    #[must_use]
    pub fn progress_at(&self) -> Option<Timestamp> {
        self.progress_at.or(self.started_at)
    }
    /// Per-target progress, in rollout order.
    #[must_use]
    pub fn targets(&self) -> &[TargetProgress] {
        &self.targets
    }
    /// Counts per target status.
    #[must_use]
    pub fn summary(&self) -> &Summary {
        &self.summary
    }
    /// The deployment this one rolls back.
    #[must_use]
    pub fn rollback_of(&self) -> Option<DeploymentId> {
        self.rollback_of
    }
    /// The deployment that replaced this one.
    #[must_use]
    pub fn superseded_by(&self) -> Option<DeploymentId> {
        self.superseded_by
    }
    /// Whether someone asked to cancel it.
    #[must_use]
    pub fn cancel_requested(&self) -> bool {
        self.cancel_requested
    }
    /// The deployment whose failed targets this one retries.
    #[must_use]
    pub fn retry_of(&self) -> Option<DeploymentId> {
        self.retry_of
    }
    /// The operator requests standing on it (pause, promotions, abort).
    #[must_use]
    pub fn controls(&self) -> &Controls {
        &self.controls
    }
    /// While it is `paused` at a canary step that waits to be promoted: that step, numbered from 1.
    #[must_use]
    pub fn awaiting_promotion(&self) -> Option<u32> {
        self.awaiting_promotion
    }
    /// The protection rule it was accepted under, for a deployment to a protected environment.
    #[must_use]
    pub fn protection(&self) -> Option<&Protection> {
        self.protection.as_ref()
    }
    /// The person who submitted it, as approvals are judged: their identity (`person:alice`) when one was known, else
    /// `created_by`.
    #[must_use]
    pub fn submitter_identity(&self) -> &str {
        self.submitted_by.as_deref().unwrap_or(&self.created_by)
    }
    /// The approvers' decisions, in order.
    #[must_use]
    pub fn approvals(&self) -> &[Approval] {
        &self.approvals
    }
    /// When its approvals met the rule.
    #[must_use]
    pub fn approved_at(&self) -> Option<Timestamp> {
        self.approved_at
    }
    /// Until when no controller needs to look at it: for one waiting for approval, the end of the wait after its
    /// approval, or else its expiry, or else [`Deployment::NEVER`] (only a decision moves it, and the decision's
    /// write changes this). `None` for every other status: claimable as soon as it is its environment's turn. Stores
    /// keep it where their claim can filter on it, so a waiting deployment costs no controller anything until then.
    #[must_use]
    pub fn wake_at(&self) -> Option<Timestamp> {
        if self.status == DeploymentStatus::Queued {
            return self.held_until;
        }
        if self.status != DeploymentStatus::AwaitingApproval {
            return None;
        }
        let rule = self.protection.as_ref()?;
        let at = |from: Timestamp, d: crate::duration::HumanDuration| crate::clock::add(from, d.as_std());
        Some(match (self.approved_at, rule.wait, rule.expires_after) {
            (Some(approved), Some(wait), _) => at(approved, wait),
            (Some(approved), None, _) => approved,
            (None, _, Some(expires)) => at(self.created_at, expires),
            (None, _, None) => Self::NEVER,
        })
    }

    /// "Not by itself": the wake time of a deployment only a decision can move.
    pub const NEVER: Timestamp = time::macros::datetime!(9999-01-01 0:00 UTC);

    /// Who approved it, in order.
    pub fn approved_by(&self) -> impl Iterator<Item = &str> {
        self.approvals.iter().filter(|a| a.decision == Decision::Approve).map(|a| a.by.as_str())
    }
    /// Ends a hold at once (its holder looks at the rules again when it claims it): what a store does to every held
    /// deployment when the global freeze is lifted, so they do not wait for their next look.
    pub fn lift_hold(&mut self) {
        self.held_until = None;
    }
    /// While it is `queued` and held by its environment's windows or a freeze: until when nobody looks at it.
    #[must_use]
    pub fn held_until(&self) -> Option<Timestamp> {
        self.held_until
    }
    /// While it is `paused`: since when.
    #[must_use]
    pub fn paused_at(&self) -> Option<Timestamp> {
        self.paused_at
    }
    /// The environment revision its acceptance produced.
    #[must_use]
    pub fn revision(&self) -> Revision {
        self.revision
    }

    /// The record without its targets, for stores that keep targets in rows of their own. Pair with
    /// [`Deployment::with_targets`] to read it back.
    #[must_use]
    pub fn header(&self) -> Self {
        Self { targets: Vec::new(), summary: Summary::default(), ..self.clone() }
    }

    /// What the record takes in a store, as quotas count it: its [`Deployment::header`] as JSON, in bytes (targets
    /// and events are bounded by the environment's size and the engine, not by the submitter).
    #[must_use]
    pub fn stored_bytes(&self) -> u64 {
        serde_json::to_vec(&self.header()).map_or(u64::MAX, |b| u64::try_from(b.len()).unwrap_or(u64::MAX))
    }

    /// The record with `targets` (in rollout order), its summary recomputed from them.
    #[must_use]
    pub fn with_targets(mut self, targets: Vec<TargetProgress>) -> Self {
        self.summary = Summary::of(&targets);
        self.targets = targets;
        self
    }

    /// Applies the status part of an update to a header (see [`Deployment::header`]): lifecycle checks, timestamps,
    /// progress. The caller writes the update's target entries itself, checking each against its stored row.
    ///
    /// # Errors
    /// [`UpdateError::AlreadyFinished`] or [`UpdateError::IllegalTransition`]; the header is then unchanged.
    pub fn apply_to_header(&mut self, update: &ProgressUpdate) -> Result<(), UpdateError> {
        self.check_status(update)?;
        self.finish_apply(
            update.now,
            update.status.as_ref(),
            update.progressed,
            (update.awaiting_promotion, update.hold_until),
        );
        Ok(())
    }

    /// Records a cancel request. A deployment that has not started and that nobody holds (`held` is false) stops at
    /// once: the update that stops it is returned, for the store to write in the same transaction. Otherwise the
    /// holder honours the request at its next step.
    #[must_use]
    pub fn request_cancel(&mut self, now: Timestamp, held: bool) -> Option<ProgressUpdate> {
        self.cancel_requested = true;
        self.updated_at = now;
        self.stops_at_once(held)
            .then(|| self.stop_update(DeploymentStatus::Cancelled, "cancelled before it started", now))
    }

    /// Records that `by` replaces this deployment. As with [`Deployment::request_cancel`], one that has not started and
    /// that nobody holds stops at once (the returned update); otherwise its holder stops at the next batch boundary.
    #[must_use]
    pub fn mark_superseded_by(&mut self, by: DeploymentId, now: Timestamp, held: bool) -> Option<ProgressUpdate> {
        self.superseded_by = Some(by);
        self.updated_at = now;
        self.stops_at_once(held).then(|| {
            self.stop_update(
                DeploymentStatus::Superseded,
                format!("superseded by deployment {by} before it started"),
                now,
            )
        })
    }

    /// Records an operator's request (see [`crate::control`]). Like [`Deployment::request_cancel`], an abort of a
    /// deployment that has not started and that nobody holds stops it at once. The returned update carries the
    /// request's event (naming who asked) and, for such an abort, the stop; the store writes it in the same
    /// transaction.
    ///
    /// # Errors
    /// [`RequestError::AlreadyFinished`] for a terminal deployment; [`RequestError::NotNow`] when the request does not
    /// apply now: anything but abort or cancel while rolling back, a promotion of a deployment that is not a canary, or
    /// of one where no step waits to be promoted. On error the record is unchanged, so a store need not copy it first.
    pub fn request(
        &mut self,
        request: &OperatorRequest,
        now: Timestamp,
        held: bool,
    ) -> Result<ProgressUpdate, RequestError> {
        if self.status.is_terminal() {
            return Err(RequestError::AlreadyFinished(self.status));
        }
        let rolling_back = self.status == DeploymentStatus::RollingBack;
        let by = &request.by;
        let mut event_type = crate::event::EventType::Requested;
        let message = match request.action {
            OperatorAction::Approve | OperatorAction::Reject => return self.decide(request, now),
            OperatorAction::Override => {
                match self.status {
                    DeploymentStatus::Queued => {}
                    DeploymentStatus::AwaitingApproval => {
                        return Err(RequestError::NotNow(
                            "it is awaiting approval: an override lets a deployment held by a window or a freeze \
                             start, and approvals are not overridden; approve it first"
                                .into(),
                        ));
                    }
                    other => return Err(RequestError::NotNow(format!("it is {other}: it has started already"))),
                }
                self.controls.override_schedule = true;
                self.held_until = None;
                event_type = crate::event::EventType::Overridden;
                let why = request.comment.as_deref().unwrap_or_default();
                format!("windows and freezes overridden by {by}: {why}")
            }
            OperatorAction::Pause => {
                if rolling_back {
                    return Err(RequestError::NotNow("a rollback cannot be paused".into()));
                }
                self.controls.pause_requested = true;
                format!("pause requested by {by}")
            }
            OperatorAction::Resume => {
                if rolling_back {
                    return Err(RequestError::NotNow("a rollback is never paused".into()));
                }
                self.controls.pause_requested = false;
                format!("resume requested by {by}")
            }
            OperatorAction::Promote { full } => {
                if !matches!(self.spec.strategy(), crate::spec::RolloutStrategy::Canary { .. }) {
                    return Err(RequestError::NotNow("only a canary rollout can be promoted".into()));
                }
                if rolling_back {
                    return Err(RequestError::NotNow("a rollback cannot be promoted".into()));
                }
                event_type = crate::event::EventType::Promoted;
                if full {
                    self.controls.promote_full = true;
                    format!("promoted by {by}: every remaining step is skipped")
                } else {
                    let Some(step) = self.awaiting_promotion.filter(|_| self.status == DeploymentStatus::Paused) else {
                        return Err(RequestError::NotNow(
                            "no canary step waits to be promoted (promote with full to skip the remaining steps)"
                                .into(),
                        ));
                    };
                    self.controls.promoted_through = self.controls.promoted_through.max(step);
                    format!("canary step {step} promoted by {by}")
                }
            }
            OperatorAction::Abort { rollback } => {
                if rolling_back {
                    return Err(RequestError::NotNow("already rolling back".into()));
                }
                self.controls.abort = Some(AbortRequest { rollback });
                let how = match rollback {
                    Some(true) => ", with rollback",
                    Some(false) => ", without rollback",
                    None => "",
                };
                format!("abort requested by {by}{how}")
            }
        };
        self.updated_at = now;
        let mut update = if matches!(request.action, OperatorAction::Abort { .. }) && self.stops_at_once(held) {
            self.stop_update(DeploymentStatus::Cancelled, format!("aborted by {by} before it started"), now)
        } else {
            ProgressUpdate { now: Some(now), ..ProgressUpdate::default() }
        };
        let event = crate::event::NewEvent::deployment(now, self.status, message);
        update.events.insert(0, crate::event::NewEvent { event_type, ..event });
        Ok(update)
    }

    /// An approver's decision (see [`Deployment::request`]): one per approver; a rejection ends the deployment
    /// `rejected`; the approval that meets the rule queues it (or, with the rule's `wait`, starts that wait, which its
    /// holder ends).
    fn decide(&mut self, request: &OperatorRequest, now: Timestamp) -> Result<ProgressUpdate, RequestError> {
        let by = request.by.as_str();
        if self.status != DeploymentStatus::AwaitingApproval {
            return Err(RequestError::NotNow(format!("it is {}, not awaiting approval", self.status)));
        }
        let Some(rule) = self.protection.clone() else {
            return Err(RequestError::NotNow("its environment required no approval".into()));
        };
        let decision = if request.action == OperatorAction::Reject { Decision::Reject } else { Decision::Approve };
        if let Some(earlier) = self.approvals.iter().find(|a| a.by == by) {
            return if earlier.decision == decision {
                // The same decision again (a retried request): nothing changes.
                Ok(ProgressUpdate { now: Some(now), ..ProgressUpdate::default() })
            } else {
                Err(RequestError::NotNow(format!("{by} already decided on it")))
            };
        }
        self.approvals.push(Approval { by: by.to_owned(), decision, comment: request.comment.clone(), at: now });
        self.updated_at = now;
        let why = request.comment.as_deref().map(|c| format!(": {c}")).unwrap_or_default();
        if decision == Decision::Reject {
            return Ok(self.stop_update(DeploymentStatus::Rejected, format!("rejected by {by}{why}"), now));
        }
        let count = self.approved_by().count();
        let required = rule.required_approvals as usize;
        let mut update = ProgressUpdate { now: Some(now), ..ProgressUpdate::default() };
        let mut message = format!("approved by {by} ({count} of {required}){why}");
        let mut status = self.status;
        if count >= required {
            self.approved_at = Some(now);
            match rule.wait {
                Some(wait) => message.push_str(&format!("; it may start after {wait}")),
                None => {
                    status = DeploymentStatus::Queued;
                    update.status = Some(StatusChange { status, reason: Some(message.clone()) });
                }
            }
        }
        let approved = crate::event::NewEvent::deployment(now, status, message);
        update.events.push(crate::event::NewEvent { event_type: crate::event::EventType::Approved, ..approved });
        Ok(update)
    }

    fn stops_at_once(&self, held: bool) -> bool {
        matches!(self.status, DeploymentStatus::Queued | DeploymentStatus::AwaitingApproval) && !held
    }

    /// The `deployment.queued` event of a deployment just accepted (`deployment.awaiting_approval` in a protected
    /// environment).
    #[must_use]
    pub fn queued_event(&self, now: Timestamp) -> crate::event::NewEvent {
        let accepted = format!("accepted: {} {} to {} target(s)", self.service, self.version, self.targets.len());
        match &self.protection {
            Some(rule) if self.status == DeploymentStatus::AwaitingApproval => crate::event::NewEvent::deployment(
                now,
                DeploymentStatus::AwaitingApproval,
                format!("{accepted}; waiting for {} approval(s)", rule.required_approvals),
            ),
            _ => crate::event::NewEvent::deployment(now, DeploymentStatus::Queued, accepted),
        }
    }

    /// The update that stops this deployment with `status` (`cancelled` or `superseded`) when nobody drives it: every
    /// unsettled target becomes `cancelled`, with one event each and one for the deployment. Stores use it to finish
    /// queued deployments inside the transaction that cancels or supersedes them.
    #[must_use]
    pub fn stop_update(&self, status: DeploymentStatus, reason: impl Into<String>, now: Timestamp) -> ProgressUpdate {
        let reason = reason.into();
        let mut update = ProgressUpdate {
            now: Some(now),
            status: Some(StatusChange { status, reason: Some(reason.clone()) }),
            ..ProgressUpdate::default()
        };
        for (i, t) in self.targets.iter().enumerate() {
            if !t.status.is_settled() {
                let mut entry = t.clone();
                entry.status = TargetStatus::Cancelled;
                entry.updated_at = now;
                update.events.push(crate::event::NewEvent::target(
                    now,
                    t.id.clone(),
                    TargetStatus::Cancelled,
                    format!("{}: not attempted", t.id),
                ));
                update.targets.push((i, entry));
            }
        }
        update.events.push(crate::event::NewEvent::deployment(now, status, reason));
        update
    }

    /// Applies one update, keeping the summary equal to the targets and refusing changes after a terminal status.
    ///
    /// # Errors
    /// [`UpdateError`] when the deployment is terminal, the transition is illegal, or a target entry does not fit; the
    /// record is then unchanged.
    pub fn apply(&mut self, update: &ProgressUpdate) -> Result<(), UpdateError> {
        self.check(update)?;
        for (index, entry) in &update.targets {
            if let Some(slot) = self.targets.get_mut(*index) {
                self.summary.moved(slot.status, entry.status);
                *slot = entry.clone();
            }
        }
        self.finish_apply(
            update.now,
            update.status.as_ref(),
            update.progressed,
            (update.awaiting_promotion, update.hold_until),
        );
        Ok(())
    }

    /// [`Deployment::apply`] for a store that owns the update: target entries are moved in rather than cloned, and the
    /// events and observations are handed back for the store to write in the same transaction.
    ///
    /// # Errors
    /// As [`Deployment::apply`].
    pub fn apply_owned(
        &mut self,
        update: ProgressUpdate,
    ) -> Result<(Vec<crate::event::NewEvent>, Vec<TargetObservation>), UpdateError> {
        self.check(&update)?;
        let ProgressUpdate { now, status, targets, events, observations, progressed, awaiting_promotion, hold_until } =
            update;
        for (index, entry) in targets {
            if let Some(slot) = self.targets.get_mut(index) {
                self.summary.moved(slot.status, entry.status);
                *slot = entry;
            }
        }
        self.finish_apply(now, status.as_ref(), progressed, (awaiting_promotion, hold_until));
        Ok((events, observations))
    }

    /// Applies one target entry (what a holder does to its own copy as it goes).
    ///
    /// # Errors
    /// [`UpdateError`] when the deployment is terminal or the entry does not fit.
    pub fn apply_target(
        &mut self,
        index: usize,
        entry: &TargetProgress,
        now: Timestamp,
        progressed: bool,
    ) -> Result<(), UpdateError> {
        if self.status.is_terminal() {
            return Err(UpdateError::AlreadyFinished(self.status));
        }
        match self.targets.get_mut(index) {
            Some(slot) if slot.id == entry.id => {
                self.summary.moved(slot.status, entry.status);
                slot.clone_from(entry);
            }
            _ => return Err(UpdateError::UnknownTarget { index }),
        }
        self.finish_apply(Some(now), None, progressed, (None, None));
        Ok(())
    }

    fn check(&self, update: &ProgressUpdate) -> Result<(), UpdateError> {
        self.check_status(update)?;
        for (index, entry) in &update.targets {
            match self.targets.get(*index) {
                Some(t) if t.id == entry.id => {}
                _ => return Err(UpdateError::UnknownTarget { index: *index }),
            }
        }
        Ok(())
    }

    /// Refuses any change to a terminal record and any status change the lifecycle does not allow.
    fn check_status(&self, update: &ProgressUpdate) -> Result<(), UpdateError> {
        if self.status.is_terminal() {
            return Err(UpdateError::AlreadyFinished(self.status));
        }
        if let Some(change) = &update.status
            && change.status != self.status
            && !self.status.can_become(change.status)
        {
            return Err(UpdateError::IllegalTransition { from: self.status, to: change.status });
        }
        Ok(())
    }

    fn finish_apply(
        &mut self,
        now: Option<Timestamp>,
        status: Option<&StatusChange>,
        progressed: bool,
        (awaiting_promotion, hold_until): (Option<u32>, Option<Timestamp>),
    ) {
        let now = now.unwrap_or(self.updated_at);
        if let Some(change) = status {
            // A hold decided before an override was recorded (the holder read the record first) does not stand: the
            // override ends holds at once, whenever it lands.
            self.held_until =
                hold_until.filter(|_| change.status == DeploymentStatus::Queued && !self.controls.override_schedule);
            let paused = change.status == DeploymentStatus::Paused;
            self.awaiting_promotion = awaiting_promotion.filter(|_| paused);
            if !paused {
                self.paused_at = None;
            } else if self.status != DeploymentStatus::Paused || self.paused_at.is_none() {
                self.paused_at = Some(now);
            }
            if change.status == DeploymentStatus::InProgress && self.started_at.is_none() {
                self.started_at = Some(now);
            }
            if change.status.is_terminal() {
                self.finished_at = Some(now);
            }
            self.status = change.status;
            if change.reason.is_some() {
                self.status_reason.clone_from(&change.reason);
            }
        }
        if progressed {
            self.progress_at = Some(now);
        }
        self.updated_at = now;
    }
}

fn pending(id: TargetId, from: Option<Version>, to: Version, now: Timestamp) -> TargetProgress {
    TargetProgress {
        id,
        from_version: from,
        to_version: to,
        status: TargetStatus::Pending,
        attempts: 0,
        error: None,
        updated_at: now,
        previous: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::environment::{EnvironmentSpec, TargetDefinition};
    use crate::event::NewEvent;
    use crate::spec::DeploymentRequest;

    fn deployment(ids: &[&str]) -> Deployment {
        let env = Environment::create(
            EnvironmentName::new("e").unwrap(),
            EnvironmentSpec {
                targets: ids
                    .iter()
                    .map(|id| TargetDefinition {
                        id: TargetId::new(*id).unwrap(),
                        labels: Default::default(),
                        executor: "x".parse().unwrap(),
                        config: serde_json::Value::Null,
                    })
                    .collect(),
                ..EnvironmentSpec::default()
            },
        );
        let spec = DeploymentRequest {
            environment: "e".into(),
            service: "s".into(),
            version: "2".into(),
            ..Default::default()
        }
        .validate()
        .unwrap();
        let draft = DeploymentDraft {
            id: DeploymentId::new(),
            spec,
            created_by: "t".into(),
            plan: TargetPlan::FromSpec,
            rollback_of: None,
            retry_of: None,
            submitted_by: None,
        };
        Deployment::plan(draft, &env, time::OffsetDateTime::UNIX_EPOCH).unwrap()
    }

    fn status(s: DeploymentStatus) -> ProgressUpdate {
        ProgressUpdate { status: Some(StatusChange { status: s, reason: None }), ..ProgressUpdate::default() }
    }

    fn target(d: &Deployment, i: usize, s: TargetStatus) -> ProgressUpdate {
        let mut entry = d.targets()[i].clone();
        entry.status = s;
        ProgressUpdate { targets: vec![(i, entry)], ..ProgressUpdate::default() }
    }

    #[test]
    fn the_lifecycle_allows_only_its_transitions() {
        use DeploymentStatus::*;
        for from in DeploymentStatus::ALL {
            for to in DeploymentStatus::ALL {
                let allowed = from.can_become(to);
                if from.is_terminal() {
                    assert!(!allowed, "{from} is terminal");
                }
                if allowed && to == Queued && from != AwaitingApproval {
                    panic!("nothing goes back to queued; only an approval queues");
                }
                if allowed && to == AwaitingApproval {
                    panic!("a deployment is accepted awaiting approval, never sent back to it");
                }
            }
        }
        assert!(
            Queued.can_become(InProgress) && InProgress.can_become(RollingBack) && RollingBack.can_become(RolledBack)
        );
        assert!(!Queued.can_become(Succeeded), "nothing succeeds without running");
        assert!(!RollingBack.can_become(Succeeded));
        assert!(AwaitingApproval.can_become(Queued) && AwaitingApproval.can_become(Rejected));
        assert!(!AwaitingApproval.can_become(InProgress), "nothing starts before it is queued");
        assert!(InProgress.can_become(Paused) && Paused.can_become(InProgress) && Paused.can_become(RollingBack));
        assert!(!Paused.can_become(Succeeded), "nothing succeeds while paused");
    }

    #[test]
    fn operator_requests_apply_only_where_they_make_sense() {
        use crate::control::{OperatorAction as A, OperatorRequest, RequestError};
        let ask = |action| OperatorRequest::new(action, "key:ops");
        let now = time::OffsetDateTime::UNIX_EPOCH;
        let mut d = deployment(&["a", "b"]);
        d.apply(&status(DeploymentStatus::InProgress)).unwrap();
        let update = d.request(&ask(A::Pause), now, true).unwrap();
        assert!(d.controls().pause_requested);
        assert_eq!(update.status, None, "a held deployment is paused by its holder, not here");
        assert_eq!(update.events[0].event_type, crate::event::EventType::Requested);
        assert_eq!(update.events[0].message, "pause requested by key:ops");
        d.request(&ask(A::Resume), now, true).unwrap();
        assert!(!d.controls().pause_requested, "resume withdraws the pause");
        assert!(
            matches!(d.request(&ask(A::Promote { full: false }), now, true), Err(RequestError::NotNow(_))),
            "a rolling deployment has nothing to promote"
        );

        // Paused at a gate: promote names that step, once.
        let mut paused = status(DeploymentStatus::Paused);
        paused.awaiting_promotion = Some(2);
        d.apply(&paused).unwrap();
        assert_eq!(d.awaiting_promotion(), Some(2));
        assert!(d.paused_at().is_some());
        d.apply(&status(DeploymentStatus::InProgress)).unwrap();
        assert_eq!((d.awaiting_promotion(), d.paused_at()), (None, None), "leaving the pause clears both");

        d.apply(&status(DeploymentStatus::RollingBack)).unwrap();
        for action in [A::Pause, A::Resume, A::Promote { full: true }, A::Abort { rollback: Some(false) }] {
            assert!(
                matches!(d.request(&ask(action), now, true), Err(RequestError::NotNow(_))),
                "{} while rolling back",
                action.name()
            );
        }
        d.apply(&status(DeploymentStatus::RolledBack)).unwrap();
        assert_eq!(
            d.request(&ask(A::Pause), now, true).unwrap_err(),
            RequestError::AlreadyFinished(DeploymentStatus::RolledBack)
        );
    }

    #[test]
    fn updates_keep_the_summary_equal_to_the_targets() {
        let mut d = deployment(&["a", "b", "c"]);
        d.apply(&status(DeploymentStatus::InProgress)).unwrap();
        assert!(d.started_at().is_some());
        for (i, s) in [
            (0, TargetStatus::InProgress),
            (0, TargetStatus::Verifying),
            (0, TargetStatus::Succeeded),
            (1, TargetStatus::Failed),
        ] {
            let u = target(&d, i, s);
            d.apply(&u).unwrap();
            assert_eq!(*d.summary(), Summary::of(d.targets()));
        }
        assert_eq!((d.summary().succeeded, d.summary().failed, d.summary().pending), (1, 1, 1));
        let stop = d.stop_update(DeploymentStatus::Cancelled, "stop", time::OffsetDateTime::UNIX_EPOCH);
        assert_eq!(stop.targets.len(), 1, "only the unsettled target is cancelled");
        assert_eq!(stop.events.last().map(|e| e.event_type), Some(crate::event::EventType::Cancelled));
        let (events, _) = d.apply_owned(stop).unwrap();
        assert_eq!(events.len(), 2);
        assert_eq!(d.summary().cancelled, 1);
        assert!(d.finished_at().is_some());
    }

    #[test]
    fn a_terminal_record_and_bad_entries_are_refused_without_change() {
        let mut d = deployment(&["a", "b"]);
        let before = d.clone();
        assert_eq!(
            d.apply(&status(DeploymentStatus::Succeeded)),
            Err(UpdateError::IllegalTransition { from: DeploymentStatus::Queued, to: DeploymentStatus::Succeeded })
        );
        let mut wrong = target(&d, 0, TargetStatus::Succeeded);
        wrong.targets[0].0 = 1;
        assert_eq!(d.apply(&wrong), Err(UpdateError::UnknownTarget { index: 1 }));
        let mut missing = target(&d, 0, TargetStatus::Succeeded);
        missing.targets[0].0 = 9;
        missing.events.push(NewEvent::deployment(time::OffsetDateTime::UNIX_EPOCH, DeploymentStatus::Queued, "x"));
        assert!(d.apply(&missing).is_err());
        assert_eq!(d, before, "a refused update changes nothing");
        d.apply(&status(DeploymentStatus::InProgress)).unwrap();
        d.apply(&status(DeploymentStatus::Failed)).unwrap();
        let again = status(DeploymentStatus::Succeeded);
        assert_eq!(d.apply(&again), Err(UpdateError::AlreadyFinished(DeploymentStatus::Failed)));
        let entry = d.targets()[0].clone();
        assert!(d.apply_target(0, &entry, time::OffsetDateTime::UNIX_EPOCH, true).is_err());
    }

    #[test]
    fn records_round_trip_and_recompute_their_summary() {
        let mut d = deployment(&["a", "b"]);
        let u = target(&d, 0, TargetStatus::Skipped);
        d.apply(&u).unwrap();
        let mut json = serde_json::to_value(&d).unwrap();
        json["summary"]["skipped"] = serde_json::json!(99);
        let back: Deployment = serde_json::from_value(json).unwrap();
        assert_eq!(back.summary().skipped, 1, "a stored summary cannot disagree with its targets");
        assert_eq!(back, d);
    }

    /// Finding: an override that raced the hold was missed (the holder had read the record before the override and
    /// wrote its hold after it), and an override of a deployment awaiting approval answered 202 and changed nothing.
    #[test]
    fn an_override_ends_a_hold_whenever_it_lands_and_is_refused_before_approval() {
        use crate::control::{OperatorAction, OperatorRequest};
        let at = time::OffsetDateTime::UNIX_EPOCH;
        let mut d = deployment(&["a"]);
        let override_it = OperatorRequest {
            action: OperatorAction::Override,
            by: "key:admin".into(),
            comment: Some("hotfix".into()),
        };
        let update = d.request(&override_it, at, false).unwrap();
        d.apply(&update).unwrap();
        // The holder's hold, decided from the record as it was before the override.
        let hold = ProgressUpdate {
            now: Some(at),
            status: Some(StatusChange { status: DeploymentStatus::Queued, reason: Some("held: in a freeze".into()) }),
            hold_until: Some(at + time::Duration::minutes(1)),
            ..ProgressUpdate::default()
        };
        d.apply(&hold).unwrap();
        assert_eq!(d.held_until(), None, "the override stands: claimable at once");
        assert_eq!(d.wake_at(), None);

        let mut waiting = deployment(&["a"]);
        waiting.status = DeploymentStatus::AwaitingApproval;
        let refused = waiting.request(&override_it, at, false).unwrap_err();
        assert!(matches!(&refused, RequestError::NotNow(why) if why.contains("approve it first")), "{refused:?}");
        assert!(!waiting.controls.override_schedule, "nothing changed");
    }

    #[test]
    fn restorable_versions() {
        let mut d = deployment(&["a"]);
        let mut t = d.targets()[0].clone();
        assert_eq!(t.restorable_version(), None, "pending: nothing changed");
        t.from_version = Some(Version::new("1").unwrap());
        t.status = TargetStatus::Succeeded;
        assert_eq!(t.restorable_version().map(Version::as_str), Some("1"));
        t.status = TargetStatus::Skipped;
        assert_eq!(t.restorable_version(), None, "skipped: nothing changed");
        t.status = TargetStatus::Failed;
        t.from_version = Some(t.to_version.clone());
        assert_eq!(t.restorable_version(), None, "already at the version");
        d.targets.clear();
    }
}

/// One release in an environment's history: a deployment that started there, with who submitted it, how it ended and
/// how long it ran (`GET /v1/environments/{env}/history`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Release {
    /// The deployment.
    pub deployment_id: DeploymentId,
    /// The service.
    pub service: ServiceName,
    /// The version it deployed.
    pub version: Version,
    /// Its status now (terminal once it ended).
    pub status: DeploymentStatus,
    /// Who submitted it.
    pub submitted_by: String,
    /// When it was accepted.
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: Timestamp,
    /// When it started.
    #[serde(with = "time::serde::rfc3339")]
    pub started_at: Timestamp,
    /// When it ended, if it has.
    #[serde(default, with = "time::serde::rfc3339::option")]
    pub finished_at: Option<Timestamp>,
    /// From start to end, in milliseconds, once it ended.
    #[serde(default)]
    pub duration_ms: Option<u64>,
    /// The deployment it rolled back, for a rollback.
    #[serde(default)]
    pub rollback_of: Option<DeploymentId>,
    /// Who approved it, in order (a protected environment's deployments).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub approved_by: Vec<String>,
    /// The deployment whose failed targets it retried, for a retry.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_of: Option<DeploymentId>,
}

impl Release {
    /// The release `d` is, or `None` when it never started (still queued, or cancelled or superseded before it ran).
    #[must_use]
    pub fn of(d: &Deployment) -> Option<Self> {
        let started_at = d.started_at()?;
        let duration_ms = d
            .finished_at()
            .map(|end| u64::try_from(crate::clock::elapsed_between(started_at, end).as_millis()).unwrap_or(u64::MAX));
        Some(Self {
            deployment_id: d.id(),
            service: d.service().clone(),
            version: d.version().clone(),
            status: d.status(),
            submitted_by: d.created_by().to_owned(),
            created_at: d.created_at(),
            started_at,
            finished_at: d.finished_at(),
            duration_ms,
            rollback_of: d.rollback_of(),
            approved_by: d.approved_by().map(str::to_owned).collect(),
            retry_of: d.retry_of(),
        })
    }
}
