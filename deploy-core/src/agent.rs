//! Targets run by an agent on their own host: what the agent should run (an assignment, numbered by generation) and
//! what it last said (its report, which is also its heartbeat).

use serde::{Deserialize, Serialize};

use crate::clock::Timestamp;
use crate::names::{DeploymentId, EnvironmentName, TargetId, Version};
use crate::state::{DesiredState, Health};

/// What an agent reported about its target.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentReport {
    /// The assignment this report is about: the generation the agent last applied (0 before any).
    pub generation: u64,
    /// The version running now, if any.
    #[serde(default)]
    pub version: Option<Version>,
    /// Its health.
    pub health: Health,
    /// What applying that generation printed (the agent trims it).
    #[serde(default)]
    pub output: String,
    /// Why applying that generation failed, if it did.
    #[serde(default)]
    pub error: Option<String>,
}

/// A target run by an agent: its assignment and the agent's last report.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AgentSlot {
    /// The environment.
    pub environment: EnvironmentName,
    /// The target.
    pub target: TargetId,
    /// Bumped by every new assignment; 0 before the first.
    pub generation: u64,
    /// What the agent should run.
    pub desired: Option<DesiredState>,
    /// The deployment that asked for it.
    pub deployment: Option<DeploymentId>,
    /// The fencing token of the lease behind the assignment (0: none); the agent passes it to its executors.
    #[serde(default)]
    pub fencing_token: u64,
    /// When it was assigned.
    #[serde(with = "time::serde::rfc3339::option")]
    pub assigned_at: Option<Timestamp>,
    /// The agent's last report.
    pub report: Option<AgentReport>,
    /// When the agent last reported.
    #[serde(with = "time::serde::rfc3339::option")]
    pub last_seen: Option<Timestamp>,
}

impl AgentSlot {
    /// A slot nobody assigned anything to yet.
    #[must_use]
    pub fn new(environment: EnvironmentName, target: TargetId) -> Self {
        Self {
            environment,
            target,
            generation: 0,
            desired: None,
            deployment: None,
            fencing_token: 0,
            assigned_at: None,
            report: None,
            last_seen: None,
        }
    }

    /// Assigns `desired` for `deployment` under the lease of `fencing_token`: a new generation, unless exactly that is
    /// assigned already (a retried apply does not make the agent apply again; a successor's token is kept).
    pub fn assign(&mut self, desired: DesiredState, deployment: DeploymentId, fencing_token: u64, now: Timestamp) {
        if self.desired.as_ref() == Some(&desired) && self.deployment == Some(deployment) {
            self.fencing_token = self.fencing_token.max(fencing_token);
            return;
        }
        self.generation = self.generation.saturating_add(1);
        self.desired = Some(desired);
        self.deployment = Some(deployment);
        self.fencing_token = fencing_token;
        self.assigned_at = Some(now);
    }

    /// Records a report, which is also a heartbeat.
    pub fn record(&mut self, report: AgentReport, now: Timestamp) {
        self.report = Some(report);
        self.last_seen = Some(now);
    }

    /// The report about the current assignment, if the agent sent one.
    #[must_use]
    pub fn current_report(&self) -> Option<&AgentReport> {
        self.report.as_ref().filter(|r| r.generation == self.generation && self.generation > 0)
    }
}
