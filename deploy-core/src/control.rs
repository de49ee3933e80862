//! Operator controls on a running deployment: pause, resume, promote and abort.
//!
//! A request is recorded on the deployment at once (durably, by the store, with an event naming who asked) and takes
//! effect at the holder's next *safe point*: before a batch, between canary steps, or while it waits. Never half-way
//! through a target's apply. Because the request lives in the record, it survives restarts and takeovers: whoever
//! holds the deployment next reads it with the claim.

use serde::{Deserialize, Serialize};

use crate::deployment::DeploymentStatus;

/// What an operator asks of a deployment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OperatorAction {
    /// Stop at the next safe point and wait, holding the environment.
    Pause,
    /// Go on after [`OperatorAction::Pause`].
    Resume,
    /// Release the canary step that waits to be promoted (`"pause": "until_promoted"`); with `full`, skip every
    /// remaining step and pause: the rest of the targets go in one batch.
    Promote {
        /// Skip the remaining steps.
        full: bool,
    },
    /// Stop at the next safe point and end the deployment. `rollback` overrides the failure policy: `Some(true)`
    /// returns changed targets to their previous version, `Some(false)` leaves them, `None` does what the spec's
    /// failure policy says.
    Abort {
        /// Whether to roll back; `None`: as the failure policy says.
        rollback: Option<bool>,
    },
    /// Approve a deployment waiting for approval (`awaiting_approval`); once the environment's rule has its count of
    /// distinct approvers, the deployment queues (after the rule's `wait`).
    Approve,
    /// Reject a deployment waiting for approval: it ends `rejected`.
    Reject,
    /// Let a deployment that has not started start despite its environment's windows and freezes and a global
    /// freeze (an admin's emergency lever; the request's comment is the mandatory reason).
    Override,
}

impl OperatorAction {
    /// The name used in paths, events and the audit log: `pause`, `resume`, `promote`, `abort`.
    #[must_use]
    pub const fn name(self) -> &'static str {
        match self {
            Self::Pause => "pause",
            Self::Resume => "resume",
            Self::Promote { .. } => "promote",
            Self::Abort { .. } => "abort",
            Self::Approve => "approve",
            Self::Reject => "reject",
            Self::Override => "override",
        }
    }
}

/// An operator's request, with who made it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OperatorRequest {
    /// What is asked.
    pub action: OperatorAction,
    /// Who asked (the principal's id), recorded in the request's event.
    pub by: String,
    /// Why, for people (approvals and rejections keep it); checked by [`OperatorRequest::check_comment`].
    pub comment: Option<String>,
}

/// The longest comment an approval or rejection may carry.
pub const MAX_COMMENT: usize = 1000;

impl OperatorRequest {
    /// A request without comment.
    #[must_use]
    pub fn new(action: OperatorAction, by: impl Into<String>) -> Self {
        Self { action, by: by.into(), comment: None }
    }

    /// Checks the comment: at most [`MAX_COMMENT`] characters, no control characters but newlines, and nothing shaped
    /// like a secret (a comment is recorded and shown to every reader).
    ///
    /// # Errors
    /// A validation error on `comment`.
    pub fn check_comment(&self) -> Result<(), crate::spec::ValidationErrors> {
        let mut errs = crate::spec::ValidationErrors::default();
        if let Some(c) = &self.comment {
            errs.check_text("comment", c, MAX_COMMENT);
        }
        if errs.is_empty() { Ok(()) } else { Err(errs) }
    }
}

/// One approver's decision on a deployment, as its record keeps it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Approval {
    /// Who decided (the principal's id).
    pub by: String,
    /// `approve` or `reject`.
    pub decision: Decision,
    /// Why, if they said.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub comment: Option<String>,
    /// When.
    #[serde(with = "time::serde::rfc3339")]
    pub at: crate::clock::Timestamp,
}

/// An approver's decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Decision {
    /// Approved.
    Approve,
    /// Rejected.
    Reject,
}

/// The operator requests standing on a deployment, as stored in its record.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Controls {
    /// An operator asked to pause, and has not asked to resume since.
    #[serde(default, skip_serializing_if = "is_false")]
    pub pause_requested: bool,
    /// Canary steps (numbered from 1) up to this one were promoted.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub promoted_through: u32,
    /// Every remaining canary step is skipped.
    #[serde(default, skip_serializing_if = "is_false")]
    pub promote_full: bool,
    /// An operator asked to abort.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub abort: Option<AbortRequest>,
    /// An admin let it start despite windows and freezes.
    #[serde(default, skip_serializing_if = "is_false")]
    pub override_schedule: bool,
}

/// A standing abort request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct AbortRequest {
    /// Whether to roll back; `None`: as the failure policy says.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollback: Option<bool>,
}

impl Controls {
    /// Whether nothing is requested.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }

    /// Merges what a later read shows: requests only accumulate while a deployment runs (resume clears a pause).
    pub fn merge(&mut self, later: Self) {
        self.pause_requested = later.pause_requested;
        self.promoted_through = self.promoted_through.max(later.promoted_through);
        self.promote_full |= later.promote_full;
        if later.abort.is_some() {
            self.abort = later.abort;
        }
        self.override_schedule |= later.override_schedule;
    }
}

#[allow(clippy::trivially_copy_pass_by_ref)]
fn is_false(b: &bool) -> bool {
    !*b
}

#[allow(clippy::trivially_copy_pass_by_ref)]
fn is_zero(n: &u32) -> bool {
    *n == 0
}

/// Why an operator's request was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RequestError {
    /// The deployment is terminal.
    #[error("deployment is already {0}")]
    AlreadyFinished(DeploymentStatus),
    /// The request does not apply to this deployment now (a promote with no step waiting, a pause while rolling
    /// back).
    #[error("{0}")]
    NotNow(String),
}
