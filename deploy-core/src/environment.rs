//! Environments: named sets of targets with a concurrency policy and a revision.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::names::ExecutorKind;
use crate::names::{DeploymentId, EnvironmentName, Revision, TargetId};
use crate::secrets::SecretScope;
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
    pub executor: ExecutorKind,
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
    /// Who must approve a deployment here before it starts; absent: nobody.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protection: Option<Protection>,
    /// When deployments may start here: deploy windows and freeze periods; absent: any time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schedule: Option<crate::schedule::Schedule>,
    /// The secret references deployments here may resolve, beyond the orchestrator's global scope; absent: none. Only
    /// an admin of every environment may widen it; an admin of this environment may keep or narrow it.
    #[serde(default, skip_serializing_if = "SecretScope::is_empty")]
    pub secret_scope: SecretScope,
}

/// An environment's protection rule: deployments to it wait in `awaiting_approval` until `required_approvals`
/// distinct approvers approve (then, after `wait`, they queue as usual), and are cancelled when nobody approves them
/// within `expires_after`. A deployment keeps the rule that held when it was accepted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Protection {
    /// How many distinct approvers must approve (1 to 10).
    pub required_approvals: u32,
    /// Who may approve: principal ids (`key:alice`, `jwt:release-manager`) and roles (`role:approver`,
    /// `role:admin`). Empty: anyone with the `approve` permission on the environment. Either way the approver needs
    /// that permission (the `approver` or `admin` role).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub approvers: Vec<String>,
    /// Whoever submitted a deployment may not approve it. Default: true.
    #[serde(default = "prevent_self_approval_default")]
    pub prevent_self_approval: bool,
    /// After the last approval, wait this long before the deployment may start.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wait: Option<crate::duration::HumanDuration>,
    /// Cancel a deployment nobody approved within this long of its submission.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_after: Option<crate::duration::HumanDuration>,
}

const fn prevent_self_approval_default() -> bool {
    true
}

/// The most approvals a protection rule may require.
pub const MAX_REQUIRED_APPROVALS: u32 = 10;

impl Protection {
    /// Whether `principal` is among the rule's approvers (its id, or its role as `role:<name>`). The `approve`
    /// permission is checked apart.
    #[must_use]
    pub fn names(&self, principal: &crate::auth::Principal) -> bool {
        let role = format!("role:{}", principal.role().as_str());
        self.approvers.is_empty() || self.approvers.iter().any(|a| a == principal.id() || *a == role)
    }

    fn check(&self, errs: &mut ValidationErrors) {
        if !(1..=MAX_REQUIRED_APPROVALS).contains(&self.required_approvals) {
            errs.push("protection.required_approvals", format!("must be between 1 and {MAX_REQUIRED_APPROVALS}"));
        }
        if self.approvers.len() > 100 {
            errs.push("protection.approvers", "at most 100 approvers");
        }
        let mut seen = BTreeSet::new();
        let mut people = 0u32;
        for (i, a) in self.approvers.iter().enumerate() {
            let field = format!("protection.approvers[{i}]");
            let well_formed = match a.split_once(':') {
                Some(("role", role)) => {
                    let ok = matches!(role, "approver" | "admin");
                    if !ok {
                        errs.push(&field, "only the approver and admin roles may approve (role:approver, role:admin)");
                    }
                    ok
                }
                Some(("key" | "jwt", name)) => {
                    let ok = !name.is_empty() && name.len() <= 128 && !name.chars().any(char::is_control);
                    if ok {
                        people += 1;
                    } else {
                        errs.push(&field, "a principal id is key:<name> or jwt:<subject>");
                    }
                    ok
                }
                _ => {
                    errs.push(&field, "name a principal (key:<name>, jwt:<subject>) or a role (role:approver)");
                    false
                }
            };
            if well_formed && !seen.insert(a) {
                errs.push(&field, format!("{a} is listed twice"));
            }
        }
        let only_people = !self.approvers.is_empty() && self.approvers.iter().all(|a| !a.starts_with("role:"));
        if only_people && people < self.required_approvals {
            errs.push(
                "protection.required_approvals",
                format!("needs {} approvers but only {people} are named", self.required_approvals),
            );
        }
        for (field, d) in [("protection.wait", self.wait), ("protection.expires_after", self.expires_after)] {
            if d.is_some_and(|d| d.is_zero()) {
                errs.push(field, "must be longer than zero");
            }
        }
    }
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
            // The kind's spelling is checked when it is read (`ExecutorKind`); here, whether anything serves it.
            if let Some(known) = known_executors
                && !known.iter().any(|k| k == t.executor.as_str())
            {
                errs.push(
                    format!("targets[{i}].executor"),
                    format!("no executor named {:?}; this orchestrator has {known:?}", t.executor),
                );
            }
            for (key, value) in &t.labels {
                let field = format!("targets[{i}].labels.{key}");
                if key.chars().any(crate::spec::is_unprintable) {
                    errs.push(format!("targets[{i}].labels"), "no control characters in label keys");
                } else if errs.check_text(&field, value, 256) && crate::secrets::is_sensitive_key(key) {
                    errs.push_secret(field, "labels are shown in clear; this key names a secret");
                }
            }
            check_config(&mut errs, &format!("targets[{i}].config"), &t.config, 0);
        }
        if let Some(p) = &self.protection {
            p.check(&mut errs);
        }
        if let Some(s) = &self.schedule {
            s.check(&mut errs);
        }
        self.secret_scope.check("secret_scope.allow", &mut errs);
        if errs.is_empty() { Ok(()) } else { Err(errs) }
    }
}

/// How deep a target's configuration is checked; deeper documents are refused.
const MAX_CONFIG_DEPTH: usize = 16;

/// A target's configuration is checked like a deployment's payload: a value shaped like a credential, or a literal
/// under a key that names a secret, is refused; `{"ref": "scheme://..."}` is how a target holds a secret (executors
/// resolve it when they run, e.g. in a target's `env`).
fn check_config(errs: &mut ValidationErrors, field: &str, value: &Value, depth: usize) {
    if depth > MAX_CONFIG_DEPTH {
        errs.push(field, format!("nested more than {MAX_CONFIG_DEPTH} levels"));
        return;
    }
    match value {
        Value::String(s) => {
            if let Some(kind) = crate::secrets::secret_shape(s) {
                errs.push_secret(field, crate::spec::shaped_like(kind));
            }
        }
        Value::Array(items) => {
            for (i, item) in items.iter().enumerate() {
                check_config(errs, &format!("{field}[{i}]"), item, depth + 1);
            }
        }
        Value::Object(map) => {
            if let Some(r) = map.get("ref") {
                let valid = map.len() == 1 && r.as_str().is_some_and(|r| crate::secrets::SecretRef::parse(r).is_ok());
                if !valid {
                    errs.push(field, "a reference is exactly {\"ref\": \"scheme://location\"}");
                }
                return;
            }
            for (key, item) in map {
                let inner = format!("{field}.{key}");
                let literal = matches!(item, Value::String(_) | Value::Number(_));
                if literal && crate::secrets::is_sensitive_key(key) {
                    errs.push_secret(
                        inner,
                        "this key names a secret, so its value must be a reference like {\"ref\": \"vault://path#key\"}",
                    );
                } else {
                    check_config(errs, &inner, item, depth + 1);
                }
            }
        }
        Value::Null | Value::Bool(_) | Value::Number(_) => {}
    }
}

/// What a target's configuration shows to someone who may not administer its environment: every value of its `env`
/// object (at any depth) is replaced by `"***"`, references aside (a reference is not the secret).
fn redact_env(config: &mut Value) {
    match config {
        Value::Object(map) => {
            for (key, value) in map.iter_mut() {
                if key == "env"
                    && let Value::Object(vars) = value
                {
                    for v in vars.values_mut() {
                        let is_ref = v.as_object().is_some_and(|o| o.contains_key("ref"));
                        if !is_ref {
                            *v = Value::String(crate::secrets::REDACTED.to_owned());
                        }
                    }
                } else {
                    redact_env(value);
                }
            }
        }
        Value::Array(items) => items.iter_mut().for_each(redact_env),
        _ => {}
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
    pub executor: ExecutorKind,
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
    /// Who must approve a deployment here before it starts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protection: Option<Protection>,
    /// When deployments may start here.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schedule: Option<crate::schedule::Schedule>,
    /// The secret references deployments here may resolve, beyond the orchestrator's global scope.
    #[serde(default, skip_serializing_if = "SecretScope::is_empty")]
    pub secret_scope: SecretScope,
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
            protection: spec.protection,
            schedule: spec.schedule,
            secret_scope: spec.secret_scope,
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
        self.protection = spec.protection;
        self.schedule = spec.schedule;
        self.secret_scope = spec.secret_scope;
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

    /// The environment as `principal` may see it: whole to those who may administer it; to everyone else with the
    /// values of every target's `env` replaced by `"***"` (references are kept). Reading is authorized elsewhere.
    #[must_use]
    pub fn shown_to(self, principal: &crate::auth::Principal) -> Self {
        if principal.authorize(crate::auth::Action::ManageEnvironments, &self.name).is_ok() {
            self
        } else {
            self.redacted()
        }
    }

    /// The environment with the values of every target's `env` replaced by `"***"` (references are kept).
    #[must_use]
    pub fn redacted(mut self) -> Self {
        for t in &mut self.targets {
            redact_env(&mut t.config);
        }
        self
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
            executor: "sim".parse().unwrap(),
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
        // A kind's spelling is checked when it is read: one that is not a name never reaches validation.
        assert!("Not Valid".parse::<ExecutorKind>().is_err());
        let bad = serde_json::from_str::<EnvironmentSpec>(r#"{"targets": [{"id": "b", "executor": "Not Valid"}]}"#);
        assert!(bad.unwrap_err().to_string().contains("executor kind"));
        let spec = EnvironmentSpec { targets: vec![def("c", "x")], ..EnvironmentSpec::default() };
        assert!(spec.validate(Some(&["sim".to_owned()])).is_ok());
        assert!(spec.validate(Some(&["process".to_owned()])).is_err());
        let parsed: Result<EnvironmentSpec, _> = serde_json::from_str(r#"{"targets": [], "concurency": "queue"}"#);
        assert!(parsed.is_err(), "unknown fields are refused");
    }

    #[test]
    fn target_configuration_is_checked_for_inline_secrets() {
        let with = |config: Value| {
            let mut t = def("a", "x");
            t.config = config;
            EnvironmentSpec { targets: vec![t], ..EnvironmentSpec::default() }.validate(None)
        };
        let ok = serde_json::json!({"hooks": {"install": "make install"},
            "env": {"APP_HOME": "/opt/app", "DB_PASSWORD": {"ref": "env://DEPLOY_SECRET_DB"}}});
        assert!(with(ok).is_ok());
        let cases = [
            (serde_json::json!({"env": {"DB_PASSWORD": "hunter2"}}), "targets[0].config.env.DB_PASSWORD"),
            (
                serde_json::json!({"env": {"GH": "ghp_0123456789abcdefghijABCDEFGHIJ012345"}}),
                "targets[0].config.env.GH",
            ),
            (serde_json::json!({"command": ["curl", "https://u:pw@host/x"]}), "targets[0].config.command[1]"),
            (serde_json::json!({"nested": {"signing_key": 12345}}), "targets[0].config.nested.signing_key"),
        ];
        for (config, field) in cases {
            let errs = with(config).unwrap_err();
            assert!(errs.has_hardcoded_secret() && errs.has_field(field), "{field}: {errs}");
            assert!(!errs.to_string().contains("hunter2") && !errs.to_string().contains("ghp_0"));
        }
        let bad_ref = with(serde_json::json!({"env": {"X": {"ref": "not a ref"}}})).unwrap_err();
        assert!(bad_ref.has_field("targets[0].config.env.X") && !bad_ref.has_hardcoded_secret());
        let mut labelled = def("a", "x");
        labelled.labels.insert("owner".into(), "postgres://a:b@c/d".into());
        let spec = EnvironmentSpec { targets: vec![labelled], ..EnvironmentSpec::default() };
        assert!(spec.validate(None).unwrap_err().has_hardcoded_secret());
    }

    #[test]
    fn readers_see_target_env_values_redacted() {
        let mut e = env();
        e.targets[0].config = serde_json::json!({"port": 80, "env": {"MODE": "fast", "DB": {"ref": "env://DEPLOY_SECRET_DB"}},
            "inner": [{"env": {"TOKENISH": "x"}}]});
        let shown = e.redacted();
        assert_eq!(
            shown.targets[0].config,
            serde_json::json!({"port": 80, "env": {"MODE": "***", "DB": {"ref": "env://DEPLOY_SECRET_DB"}},
                "inner": [{"env": {"TOKENISH": "***"}}]})
        );
    }
}
