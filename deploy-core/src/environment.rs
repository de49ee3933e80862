//! Environments: named sets of targets with a concurrency policy and a revision.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::names::{DeploymentId, EnvironmentName, Revision, TargetId};
use crate::spec::{TargetSelector, ValidationErrors};
use crate::state::{ActualState, DesiredState};

/// What a second submission gets while a deployment is active in the environment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ConcurrencyPolicy {
    /// Accepted; runs after the active one, in acceptance order.
    #[default]
    Queue,
    /// Refused while another deployment is queued or active.
    Reject,
    /// Accepted; older queued deployments are superseded at once and the active one at its next batch boundary.
    Supersede,
}

/// The most targets one environment may have.
pub const MAX_TARGETS: usize = 200_000;

/// One target as an environment defines it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TargetDefinition {
    /// Unique within the environment.
    pub id: TargetId,
    /// Labels that selectors match.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// The executor kind that drives this target (`sim`, `process`, `command`, or your own).
    pub executor: String,
    /// Executor-specific configuration.
    #[serde(default)]
    pub config: Value,
}

/// The body of `PUT /v1/environments/{env}`.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EnvironmentSpec {
    /// The concurrency policy.
    #[serde(default)]
    pub concurrency: ConcurrencyPolicy,
    /// Whether submissions must carry the environment's revision (`If-Match`).
    #[serde(default)]
    pub require_if_match: bool,
    /// The targets.
    #[serde(default)]
    pub targets: Vec<TargetDefinition>,
}

impl EnvironmentSpec {
    /// Checks target ids are unique, executor names are well formed and, when `known_executors` is given, known.
    ///
    /// # Errors
    /// Every problem, with its field.
    pub fn validate(&self, known_executors: Option<&[String]>) -> Result<(), ValidationErrors> {
        let mut errs = ValidationErrors::default();
        if self.targets.len() > MAX_TARGETS {
            errs.push("targets", format!("at most {MAX_TARGETS} targets"));
        }
        let mut seen = BTreeSet::new();
        for (i, t) in self.targets.iter().enumerate() {
            if !seen.insert(&t.id) {
                errs.push(format!("targets[{i}].id"), format!("{} is listed twice", t.id));
            }
            let name_ok = (1..=64).contains(&t.executor.len())
                && t.executor.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_');
            if !name_ok {
                errs.push(format!("targets[{i}].executor"), "use 1 to 64 lowercase letters, digits, '-' or '_'");
            } else if let Some(known) = known_executors
                && !known.iter().any(|k| k == &t.executor)
            {
                errs.push(
                    format!("targets[{i}].executor"),
                    format!("no executor named {:?}; this orchestrator has {known:?}", t.executor),
                );
            }
        }
        if errs.is_empty() { Ok(()) } else { Err(errs) }
    }
}

/// A target as the orchestrator knows it: its definition plus its desired and last actual state.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EnvironmentTarget {
    /// Unique within the environment.
    pub id: TargetId,
    /// Labels.
    pub labels: BTreeMap<String, String>,
    /// The executor kind.
    pub executor: String,
    /// Executor-specific configuration.
    #[serde(default, skip_serializing_if = "Value::is_null")]
    pub config: Value,
    /// What the last deployment that reached it asked for; `None` before any. Shared by every target the deployment
    /// reached.
    pub desired: Option<Arc<DesiredState>>,
    /// What was last observed or applied; `None` before the first observation.
    pub actual: Option<ActualState>,
}

/// An environment as stored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Environment {
    /// Its name.
    pub name: EnvironmentName,
    /// Bumped by every change and every accepted deployment.
    pub revision: Revision,
    /// The concurrency policy.
    pub concurrency: ConcurrencyPolicy,
    /// Whether submissions must carry `If-Match`.
    pub require_if_match: bool,
    /// The deployment running now, if any.
    pub active_deployment: Option<DeploymentId>,
    /// Deployments waiting, in the order they will run.
    pub queued: Vec<DeploymentId>,
    /// The targets.
    pub targets: Vec<EnvironmentTarget>,
}

impl Environment {
    /// A new environment at revision 1 from its spec.
    #[must_use]
    pub fn create(name: EnvironmentName, spec: EnvironmentSpec) -> Self {
        Self {
            name,
            revision: Revision::new(1),
            concurrency: spec.concurrency,
            require_if_match: spec.require_if_match,
            active_deployment: None,
            queued: Vec::new(),
            targets: spec.targets.into_iter().map(|t| new_target(t, None)).collect(),
        }
    }

    /// Replaces the definition, keeping each surviving target's desired and actual state, and bumps the revision.
    pub fn replace(&mut self, spec: EnvironmentSpec) {
        let mut old: BTreeMap<TargetId, EnvironmentTarget> =
            std::mem::take(&mut self.targets).into_iter().map(|t| (t.id.clone(), t)).collect();
        self.targets = spec
            .targets
            .into_iter()
            .map(|t| {
                let previous = old.remove(&t.id);
                new_target(t, previous)
            })
            .collect();
        self.concurrency = spec.concurrency;
        self.require_if_match = spec.require_if_match;
        self.revision = self.revision.next();
    }

    /// The targets a selector picks, in environment order (or in the order of an id list).
    ///
    /// # Errors
    /// A validation error on `targets` when an id is unknown or nothing matches.
    pub fn select(&self, selector: &TargetSelector) -> Result<Vec<&EnvironmentTarget>, ValidationErrors> {
        let mut errs = ValidationErrors::default();
        let picked: Vec<&EnvironmentTarget> = match selector {
            TargetSelector::All => self.targets.iter().collect(),
            TargetSelector::Labels(labels) => {
                self.targets.iter().filter(|t| labels.iter().all(|(k, v)| t.labels.get(k) == Some(v))).collect()
            }
            TargetSelector::Ids(ids) => {
                let index: BTreeMap<&TargetId, &EnvironmentTarget> = self.targets.iter().map(|t| (&t.id, t)).collect();
                let mut out = Vec::with_capacity(ids.len());
                for (i, id) in ids.iter().enumerate() {
                    match index.get(id) {
                        Some(t) => out.push(*t),
                        None => errs
                            .push(format!("targets.ids[{i}]"), format!("environment {} has no target {id}", self.name)),
                    }
                }
                out
            }
        };
        if picked.is_empty() && errs.is_empty() {
            errs.push("targets", format!("the selector matches no target of environment {}", self.name));
        }
        if errs.is_empty() { Ok(picked) } else { Err(errs) }
    }

    /// A target by id.
    #[must_use]
    pub fn target(&self, id: &TargetId) -> Option<&EnvironmentTarget> {
        self.targets.iter().find(|t| &t.id == id)
    }
}

fn new_target(t: TargetDefinition, previous: Option<EnvironmentTarget>) -> EnvironmentTarget {
    let (desired, actual) = previous.map_or((None, None), |p| (p.desired, p.actual));
    EnvironmentTarget { id: t.id, labels: t.labels, executor: t.executor, config: t.config, desired, actual }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::names::{ServiceName, Version};

    fn def(id: &str, zone: &str) -> TargetDefinition {
        TargetDefinition {
            id: TargetId::new(id).unwrap(),
            labels: [("zone".to_owned(), zone.to_owned())].into(),
            executor: "sim".into(),
            config: Value::Null,
        }
    }

    fn env() -> Environment {
        Environment::create(
            EnvironmentName::new("prod").unwrap(),
            EnvironmentSpec {
                targets: vec![def("a", "x"), def("b", "y"), def("c", "x")],
                ..EnvironmentSpec::default()
            },
        )
    }

    fn ids(picked: &[&EnvironmentTarget]) -> Vec<String> {
        picked.iter().map(|t| t.id.to_string()).collect()
    }

    #[test]
    fn selectors_pick_targets_in_order() {
        let e = env();
        assert_eq!(ids(&e.select(&TargetSelector::All).unwrap()), ["a", "b", "c"]);
        let zone_x = TargetSelector::Labels([("zone".to_owned(), "x".to_owned())].into());
        assert_eq!(ids(&e.select(&zone_x).unwrap()), ["a", "c"]);
        let listed = TargetSelector::Ids(vec![TargetId::new("c").unwrap(), TargetId::new("a").unwrap()]);
        assert_eq!(ids(&e.select(&listed).unwrap()), ["c", "a"], "an id list keeps the caller's order");
        let unknown = TargetSelector::Ids(vec![TargetId::new("zz").unwrap()]);
        assert!(e.select(&unknown).unwrap_err().has_field("targets.ids[0]"));
        let none = TargetSelector::Labels([("zone".to_owned(), "mars".to_owned())].into());
        assert!(e.select(&none).unwrap_err().has_field("targets"));
    }

    #[test]
    fn replacing_keeps_what_surviving_targets_run_and_bumps_the_revision() {
        let mut e = env();
        e.targets[0].desired =
            Some(Arc::new(DesiredState::bare(ServiceName::new("s").unwrap(), Version::new("1").unwrap())));
        e.replace(EnvironmentSpec { targets: vec![def("a", "z"), def("d", "x")], ..EnvironmentSpec::default() });
        assert_eq!(e.revision, Revision::new(2));
        assert_eq!(e.targets.len(), 2);
        assert!(e.targets[0].desired.is_some(), "a survived with its state");
        assert_eq!(e.targets[0].labels.get("zone").map(String::as_str), Some("z"), "with its new definition");
        assert!(e.targets[1].desired.is_none());
    }

    #[test]
    fn definitions_are_validated() {
        let spec = EnvironmentSpec { targets: vec![def("a", "x"), def("a", "y")], ..EnvironmentSpec::default() };
        assert!(spec.validate(None).unwrap_err().has_field("targets[1].id"));
        let mut bad = def("b", "x");
        bad.executor = "Not Valid".into();
        let spec = EnvironmentSpec { targets: vec![bad], ..EnvironmentSpec::default() };
        assert!(spec.validate(None).unwrap_err().has_field("targets[0].executor"));
        let spec = EnvironmentSpec { targets: vec![def("c", "x")], ..EnvironmentSpec::default() };
        assert!(spec.validate(Some(&["sim".to_owned()])).is_ok());
        assert!(spec.validate(Some(&["process".to_owned()])).is_err());
        let parsed: Result<EnvironmentSpec, _> = serde_json::from_str(r#"{"targets": [], "concurency": "queue"}"#);
        assert!(parsed.is_err(), "unknown fields are refused");
    }
}
