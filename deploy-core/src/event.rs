//! Events: every change to a deployment, numbered per deployment.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::clock::Timestamp;
use crate::deployment::{DeploymentStatus, TargetStatus};
use crate::names::{DeploymentId, TargetId};

/// The type of an event, as webhooks and SSE name it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[non_exhaustive]
pub enum EventType {
    /// Accepted and waiting.
    #[serde(rename = "deployment.queued")]
    Queued,
    /// A controller started it.
    #[serde(rename = "deployment.started")]
    Started,
    /// Every target verified.
    #[serde(rename = "deployment.succeeded")]
    Succeeded,
    /// Finished with failures within the tolerance.
    #[serde(rename = "deployment.degraded")]
    Degraded,
    /// Finished with too many failures, not rolled back.
    #[serde(rename = "deployment.failed")]
    Failed,
    /// Rolling changed targets back.
    #[serde(rename = "deployment.rolling_back")]
    RollingBack,
    /// Rolled back.
    #[serde(rename = "deployment.rolled_back")]
    RolledBack,
    /// Cancelled on request.
    #[serde(rename = "deployment.cancelled")]
    Cancelled,
    /// Replaced by a newer deployment.
    #[serde(rename = "deployment.superseded")]
    Superseded,
    /// Accepted in a protected environment; waits for approvals.
    #[serde(rename = "deployment.awaiting_approval")]
    AwaitingApproval,
    /// An approver approved it (the message says how many of how many).
    #[serde(rename = "deployment.approved")]
    Approved,
    /// An approver rejected it: it ends here.
    #[serde(rename = "deployment.rejected")]
    Rejected,
    /// Held in `queued`: its environment is outside its deploy windows, in a freeze, or under a global freeze (the
    /// message says which, and until when).
    #[serde(rename = "environment.frozen")]
    Frozen,
    /// An admin let it start despite windows and freezes (the message has who and why).
    #[serde(rename = "deployment.overridden")]
    Overridden,
    /// Held at a safe point (by an operator, or a canary step waiting to be promoted).
    #[serde(rename = "deployment.paused")]
    Paused,
    /// Going on after a pause.
    #[serde(rename = "deployment.resumed")]
    Resumed,
    /// An operator promoted a canary (one step, or every remaining step).
    #[serde(rename = "deployment.promoted")]
    Promoted,
    /// An operator asked to pause, resume or abort; the message names who.
    #[serde(rename = "deployment.requested")]
    Requested,
    /// A target changed state.
    #[serde(rename = "target.updated")]
    TargetUpdated,
}

impl EventType {
    /// Every event type.
    pub const ALL: [Self; 19] = [
        Self::Queued,
        Self::Started,
        Self::Succeeded,
        Self::Degraded,
        Self::Failed,
        Self::RollingBack,
        Self::RolledBack,
        Self::Cancelled,
        Self::Superseded,
        Self::AwaitingApproval,
        Self::Approved,
        Self::Rejected,
        Self::Frozen,
        Self::Overridden,
        Self::Paused,
        Self::Resumed,
        Self::Promoted,
        Self::Requested,
        Self::TargetUpdated,
    ];

    /// Whether `pattern` names this type: `*`, the exact name, or a prefix ending in `*` (`deployment.*`).
    #[must_use]
    pub fn matches_pattern(self, pattern: &str) -> bool {
        let name = self.as_str();
        pattern == "*" || pattern == name || pattern.strip_suffix('*').is_some_and(|prefix| name.starts_with(prefix))
    }

    /// The wire name, `deployment.succeeded`.
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Queued => "deployment.queued",
            Self::Started => "deployment.started",
            Self::Succeeded => "deployment.succeeded",
            Self::Degraded => "deployment.degraded",
            Self::Failed => "deployment.failed",
            Self::RollingBack => "deployment.rolling_back",
            Self::RolledBack => "deployment.rolled_back",
            Self::Cancelled => "deployment.cancelled",
            Self::Superseded => "deployment.superseded",
            Self::AwaitingApproval => "deployment.awaiting_approval",
            Self::Approved => "deployment.approved",
            Self::Rejected => "deployment.rejected",
            Self::Frozen => "environment.frozen",
            Self::Overridden => "deployment.overridden",
            Self::Paused => "deployment.paused",
            Self::Resumed => "deployment.resumed",
            Self::Promoted => "deployment.promoted",
            Self::Requested => "deployment.requested",
            Self::TargetUpdated => "target.updated",
        }
    }

    /// The event a deployment status change emits.
    #[must_use]
    pub const fn for_status(status: DeploymentStatus) -> Self {
        match status {
            DeploymentStatus::AwaitingApproval => Self::AwaitingApproval,
            DeploymentStatus::Rejected => Self::Rejected,
            DeploymentStatus::Queued => Self::Queued,
            DeploymentStatus::InProgress => Self::Started,
            DeploymentStatus::Paused => Self::Paused,
            DeploymentStatus::Succeeded => Self::Succeeded,
            DeploymentStatus::Degraded => Self::Degraded,
            DeploymentStatus::Failed => Self::Failed,
            DeploymentStatus::RollingBack => Self::RollingBack,
            DeploymentStatus::RolledBack => Self::RolledBack,
            DeploymentStatus::Cancelled => Self::Cancelled,
            DeploymentStatus::Superseded => Self::Superseded,
        }
    }

    /// Whether this event ends its deployment's stream.
    #[must_use]
    pub const fn is_terminal(self) -> bool {
        matches!(
            self,
            Self::Succeeded
                | Self::Degraded
                | Self::Failed
                | Self::RolledBack
                | Self::Cancelled
                | Self::Superseded
                | Self::Rejected
        )
    }
}

impl fmt::Display for EventType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.as_str())
    }
}

/// An event before the store numbers it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewEvent {
    /// When it happened.
    pub at: Timestamp,
    /// What happened.
    pub event_type: EventType,
    /// The target, for `target.updated`.
    pub target_id: Option<TargetId>,
    /// The deployment's or the target's new status.
    pub status: EventStatus,
    /// A sentence for people.
    pub message: String,
}

impl NewEvent {
    /// A deployment status change.
    #[must_use]
    pub fn deployment(at: Timestamp, status: DeploymentStatus, message: impl Into<String>) -> Self {
        Self {
            at,
            event_type: EventType::for_status(status),
            target_id: None,
            status: EventStatus::Deployment(status),
            message: message.into(),
        }
    }

    /// A target status change.
    #[must_use]
    pub fn target(at: Timestamp, target: TargetId, status: TargetStatus, message: impl Into<String>) -> Self {
        Self {
            at,
            event_type: EventType::TargetUpdated,
            target_id: Some(target),
            status: EventStatus::Target(status),
            message: message.into(),
        }
    }

    /// Numbers the event.
    #[must_use]
    pub fn numbered(self, deployment_id: DeploymentId, seq: u64) -> Event {
        Event {
            seq,
            at: self.at,
            event_type: self.event_type,
            deployment_id,
            target_id: self.target_id,
            status: self.status,
            message: self.message,
        }
    }
}

/// The new status an event reports: its deployment's, or for `target.updated` its target's. On the wire it is the
/// status's name; a name this version does not know (written by a newer one) reads as [`EventStatus::Unknown`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EventStatus {
    /// The deployment's new status.
    Deployment(DeploymentStatus),
    /// The target's new status.
    Target(TargetStatus),
    /// A status this version does not know, as written.
    Unknown(String),
}

impl EventStatus {
    /// The status's wire name.
    #[must_use]
    pub fn as_str(&self) -> &str {
        match self {
            Self::Deployment(s) => s.as_str(),
            Self::Target(s) => s.as_str(),
            Self::Unknown(s) => s,
        }
    }

    /// The status named `name`, read as the status of a target when `of_target` (a `target.updated` event) and of a
    /// deployment otherwise.
    #[must_use]
    pub fn parse(name: &str, of_target: bool) -> Self {
        let known = if of_target {
            TargetStatus::ALL.into_iter().find(|s| s.as_str() == name).map(Self::Target)
        } else {
            name.parse::<DeploymentStatus>().ok().map(Self::Deployment)
        };
        known.unwrap_or_else(|| Self::Unknown(name.to_owned()))
    }
}

impl fmt::Display for EventStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.as_str())
    }
}

impl PartialEq<&str> for EventStatus {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

impl Serialize for EventStatus {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

/// An event as stored and served: `seq` starts at 1 and has no gaps within a deployment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(from = "EventWire")]
pub struct Event {
    /// Position in the deployment's history, from 1.
    pub seq: u64,
    /// When it happened.
    #[serde(with = "time::serde::rfc3339")]
    pub at: Timestamp,
    /// What happened.
    #[serde(rename = "type")]
    pub event_type: EventType,
    /// The deployment.
    pub deployment_id: DeploymentId,
    /// The target, for `target.updated`.
    pub target_id: Option<TargetId>,
    /// The new status of the deployment or target.
    pub status: EventStatus,
    /// A sentence for people.
    pub message: String,
}

/// The serialized shape of an [`Event`]: its status is a name, read in the light of its type.
#[derive(Deserialize)]
struct EventWire {
    seq: u64,
    #[serde(with = "time::serde::rfc3339")]
    at: Timestamp,
    #[serde(rename = "type")]
    event_type: EventType,
    deployment_id: DeploymentId,
    #[serde(default)]
    target_id: Option<TargetId>,
    status: String,
    message: String,
}

impl From<EventWire> for Event {
    fn from(w: EventWire) -> Self {
        Self {
            status: EventStatus::parse(&w.status, w.event_type == EventType::TargetUpdated),
            seq: w.seq,
            at: w.at,
            event_type: w.event_type,
            deployment_id: w.deployment_id,
            target_id: w.target_id,
            message: w.message,
        }
    }
}
