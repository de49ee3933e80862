//! Desired and actual state of one target.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::clock::Timestamp;
use crate::names::{ServiceName, Version};
use crate::secrets::SecretRef;
use crate::spec::{Artifact, ConfigValue, DeploymentSpec};

/// What should run on a target: the part of a spec an executor needs. Secrets stay references here; the engine
/// resolves them into [`ResolvedSecrets`](crate::ResolvedSecrets) only for the call to `apply`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DesiredState {
    /// The service.
    pub service: ServiceName,
    /// The version.
    pub version: Version,
    /// The artifact, if the spec named one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub artifact: Option<Artifact>,
    /// Configuration.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub config: BTreeMap<String, ConfigValue>,
    /// Secret references.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub secrets: BTreeMap<String, SecretRef>,
}

impl DesiredState {
    /// The desired state a spec asks for, at `version` (the spec's own version, or a per-target version of a rollback).
    #[must_use]
    pub fn from_spec(spec: &DeploymentSpec, version: &Version) -> Self {
        Self {
            service: spec.service().clone(),
            version: version.clone(),
            artifact: spec.artifact().cloned(),
            config: spec.config().clone(),
            secrets: spec.secrets().clone(),
        }
    }

    /// Only a service and a version, for targets whose previous configuration is unknown.
    #[must_use]
    pub fn bare(service: ServiceName, version: Version) -> Self {
        Self { service, version, artifact: None, config: BTreeMap::new(), secrets: BTreeMap::new() }
    }
}

/// Health as a probe saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Health {
    /// Serving.
    Healthy,
    /// Up but failing its checks.
    Unhealthy,
    /// Not known (nothing runs, or nothing was checked).
    Unknown,
}

/// What an executor observed on a target.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Observation {
    /// The running version, if anything runs.
    pub version: Option<Version>,
    /// Its health.
    pub health: Health,
}

/// The last observed state of a target, as an environment shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ActualState {
    /// The running version, if anything runs.
    pub version: Option<Version>,
    /// Its health.
    pub health: Health,
    /// When this was observed.
    #[serde(with = "time::serde::rfc3339")]
    pub observed_at: Timestamp,
}

impl ActualState {
    /// An observation stamped with the time it was made.
    #[must_use]
    pub fn observed(observation: Observation, at: Timestamp) -> Self {
        Self { version: observation.version, health: observation.health, observed_at: at }
    }
}
