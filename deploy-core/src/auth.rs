//! Who may do what where: principals, roles and environment patterns.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize};

use crate::names::EnvironmentName;

/// A role. Viewer, deployer and admin are ordered: each allows everything the one before it allows. An agent is apart:
/// it may only fetch the assignment of its own target and report on it ([`Principal::authorize_agent`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Reads environments, deployments and events.
    Viewer,
    /// Reads, submits, cancels and rolls back deployments, and operates them (pause, resume, promote, abort, retry).
    Deployer,
    /// Everything, including environments, API keys, webhooks and the audit log.
    Admin,
    /// Reads, and approves or rejects deployments to protected environments; deploys nothing itself. Apart from the
    /// ordered roles: approving is a separate duty (admins may approve too; deployers may not).
    Approver,
    /// The agent on one target's host: fetches that target's assignment and reports on it, nothing else.
    Agent,
}

impl Role {
    /// Every role.
    pub const ALL: [Self; 5] = [Self::Viewer, Self::Deployer, Self::Admin, Self::Approver, Self::Agent];

    /// The wire name: `viewer`, `deployer`, `admin`, `agent`, `approver`.
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Viewer => "viewer",
            Self::Deployer => "deployer",
            Self::Admin => "admin",
            Self::Agent => "agent",
            Self::Approver => "approver",
        }
    }
}

/// An action a principal asks to perform.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Action {
    /// Read environments, deployments and events.
    Read,
    /// Submit a deployment.
    Deploy,
    /// Cancel a deployment.
    Cancel,
    /// Roll a deployment back.
    Rollback,
    /// Pause, resume, promote, abort or retry a deployment (operator controls).
    Operate,
    /// Approve or reject a deployment waiting for approval in a protected environment.
    Approve,
    /// Create or replace an environment.
    ManageEnvironments,
    /// Manage API keys, webhooks and read the audit log.
    Administer,
    /// Fetch a target's assignment and report on it (agents).
    ActAsAgent,
    /// Create or change targets whose executor runs programs on a host (`process`, `command`): host-level power, so
    /// only an admin of every environment (`["*"]`) may.
    DefineHostTargets,
}

impl Role {
    /// Whether this role allows `action` (environment scope aside).
    #[must_use]
    pub const fn allows(self, action: Action) -> bool {
        match action {
            Action::Read => !matches!(self, Self::Agent),
            Action::Deploy | Action::Cancel | Action::Rollback | Action::Operate => {
                matches!(self, Self::Deployer | Self::Admin)
            }
            Action::ManageEnvironments | Action::Administer | Action::DefineHostTargets => matches!(self, Self::Admin),
            Action::ActAsAgent => matches!(self, Self::Agent | Self::Admin),
            Action::Approve => matches!(self, Self::Approver | Self::Admin),
        }
    }
}

/// An environment pattern: a name where `*` matches any run of characters (`prod`, `staging-*`, `*`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
#[serde(transparent)]
pub struct EnvironmentPattern(String);

/// Why an environment pattern was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("environment pattern {0:?} is invalid: use lowercase letters, digits, '-', '_', '.' and '*'")]
pub struct PatternError(String);

impl EnvironmentPattern {
    /// Parses a pattern.
    ///
    /// # Errors
    /// [`PatternError`] for empty patterns or characters that no environment name has.
    pub fn new(pattern: impl Into<String>) -> Result<Self, PatternError> {
        let pattern = pattern.into();
        let ok = (1..=63).contains(&pattern.len())
            && pattern
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'-' | b'_' | b'.' | b'*'));
        if ok { Ok(Self(pattern)) } else { Err(PatternError(pattern)) }
    }

    /// The pattern matching every environment.
    #[must_use]
    pub fn any() -> Self {
        Self("*".to_owned())
    }

    /// Whether `environment` matches.
    #[must_use]
    pub fn matches(&self, environment: &EnvironmentName) -> bool {
        glob_match(self.0.as_bytes(), environment.as_str().as_bytes())
    }

    /// The pattern text.
    #[must_use]
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl<'de> Deserialize<'de> for EnvironmentPattern {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        Self::new(String::deserialize(deserializer)?).map_err(serde::de::Error::custom)
    }
}

/// Iterative wildcard match: linear in practice, no recursion on hostile input.
fn glob_match(pattern: &[u8], text: &[u8]) -> bool {
    let (mut p, mut t) = (0usize, 0usize);
    let mut star: Option<(usize, usize)> = None;
    while t < text.len() {
        match pattern.get(p) {
            Some(b'*') => {
                star = Some((p, t));
                p += 1;
            }
            Some(&c) if Some(&c) == text.get(t) => {
                p += 1;
                t += 1;
            }
            _ => match star {
                Some((sp, st)) => {
                    p = sp + 1;
                    t = st + 1;
                    star = Some((sp, st + 1));
                }
                None => return false,
            },
        }
    }
    pattern.get(p..).is_some_and(|rest| rest.iter().all(|&c| c == b'*'))
}

/// Who is asking: an API key, a JWT subject, or the embedding service itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Principal {
    id: String,
    role: Role,
    environments: Vec<EnvironmentPattern>,
    target: Option<crate::names::TargetId>,
    person: Option<String>,
}

/// A principal asked for something its role or environments do not allow.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{principal} may not {action:?} in environment {environment}")]
pub struct Forbidden {
    /// The principal's id.
    pub principal: String,
    /// What it asked to do.
    pub action: Action,
    /// Where.
    pub environment: String,
}

impl Principal {
    /// A principal with an id shown in records (`key:ci-bot`, `jwt:svc-a`), a role and environment patterns.
    #[must_use]
    pub fn new(id: impl Into<String>, role: Role, environments: Vec<EnvironmentPattern>) -> Self {
        Self { id: id.into(), role, environments, target: None, person: None }
    }

    /// The same principal, known to be `person` (an API key's owner, a token's subject): two credentials of one
    /// person are one approver, and may not approve what either submitted under `prevent_self_approval`.
    #[must_use]
    pub fn with_person(mut self, person: impl Into<String>) -> Self {
        let person = person.into();
        self.person = Some(person).filter(|p| !p.is_empty());
        self
    }

    /// Who this is as a person: `person:<name>` when a person is known, else the credential's id (`key:ci-bot`).
    /// Approvals count and compare identities, not credentials.
    #[must_use]
    pub fn identity(&self) -> String {
        self.person.as_ref().map_or_else(|| self.id.clone(), |p| format!("person:{p}"))
    }

    /// The agent of `target` in the environments `environments` match.
    #[must_use]
    pub fn agent(id: impl Into<String>, environments: Vec<EnvironmentPattern>, target: crate::names::TargetId) -> Self {
        Self { id: id.into(), role: Role::Agent, environments, target: Some(target), person: None }
    }

    /// The target an agent is bound to.
    #[must_use]
    pub fn target(&self) -> Option<&crate::names::TargetId> {
        self.target.as_ref()
    }

    /// Whether this principal may act as the agent of `target` in `environment`: an agent bound to that target, or an
    /// admin of the environment (to inspect or to stand in for an agent).
    ///
    /// # Errors
    /// [`Forbidden`] otherwise.
    pub fn authorize_agent(
        &self,
        environment: &EnvironmentName,
        target: &crate::names::TargetId,
    ) -> Result<(), Forbidden> {
        let in_scope = self.environments.iter().any(|p| p.matches(environment));
        let allowed = match self.role {
            Role::Agent => in_scope && self.target.as_ref() == Some(target),
            Role::Admin => in_scope,
            Role::Viewer | Role::Deployer | Role::Approver => false,
        };
        if allowed {
            Ok(())
        } else {
            Err(Forbidden {
                principal: self.id.clone(),
                action: Action::ActAsAgent,
                environment: environment.to_string(),
            })
        }
    }

    /// An admin on every environment, for services that embed the orchestrator and trust themselves.
    #[must_use]
    pub fn system(id: impl Into<String>) -> Self {
        Self::new(id, Role::Admin, vec![EnvironmentPattern::any()])
    }

    /// The id shown as `created_by`.
    #[must_use]
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The role.
    #[must_use]
    pub const fn role(&self) -> Role {
        self.role
    }

    /// The environment patterns this principal is limited to.
    #[must_use]
    pub fn environments(&self) -> &[EnvironmentPattern] {
        &self.environments
    }

    /// Whether this principal's patterns cover every environment (it holds `*`).
    #[must_use]
    pub fn is_global(&self) -> bool {
        self.environments.iter().any(|p| p.as_str() == "*")
    }

    /// Whether this principal may do `action` in `environment`. [`Action::DefineHostTargets`] needs the `*` pattern
    /// besides the admin role: an environment-scoped admin must not gain the host's power.
    ///
    /// # Errors
    /// [`Forbidden`] when the role does not allow the action or no pattern matches the environment.
    pub fn authorize(&self, action: Action, environment: &EnvironmentName) -> Result<(), Forbidden> {
        let scope = if action == Action::DefineHostTargets {
            self.is_global()
        } else {
            self.environments.iter().any(|p| p.matches(environment))
        };
        if self.role.allows(action) && scope {
            Ok(())
        } else {
            Err(Forbidden { principal: self.id.clone(), action, environment: environment.to_string() })
        }
    }
}

impl Principal {
    /// Whether this principal may do `action` server-wide: its role allows it and its patterns cover every
    /// environment (`*`). For what concerns every environment at once (a global freeze).
    ///
    /// # Errors
    /// [`Forbidden`] (environment `*`) otherwise.
    pub fn authorize_global(&self, action: Action) -> Result<(), Forbidden> {
        if self.role.allows(action) && self.is_global() {
            Ok(())
        } else {
            Err(Forbidden { principal: self.id.clone(), action, environment: "*".to_owned() })
        }
    }
}

impl fmt::Display for Principal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(&self.id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(s: &str) -> EnvironmentName {
        EnvironmentName::new(s).unwrap()
    }

    #[test]
    fn patterns_match_like_globs() {
        let cases = [
            ("prod", "prod", true),
            ("prod", "prod-eu", false),
            ("staging-*", "staging-eu", true),
            ("staging-*", "staging-", true),
            ("staging-*", "prod", false),
            ("*", "anything", true),
            ("*-eu", "prod-eu", true),
            ("*-eu", "prod-us", false),
            ("a*b*c", "axxbyyc", true),
            ("a*b*c", "axxbyy", false),
        ];
        for (pattern, name, expect) in cases {
            assert_eq!(EnvironmentPattern::new(pattern).unwrap().matches(&env(name)), expect, "{pattern} vs {name}");
        }
    }

    #[test]
    fn role_by_action_by_scope() {
        let scoped = |role| Principal::new("p", role, vec![EnvironmentPattern::new("staging-*").unwrap()]);
        let actions = [
            Action::Read,
            Action::Deploy,
            Action::Cancel,
            Action::Rollback,
            Action::Operate,
            Action::Approve,
            Action::ManageEnvironments,
            Action::Administer,
        ];
        for role in [Role::Viewer, Role::Deployer, Role::Admin, Role::Agent, Role::Approver] {
            for action in actions {
                let expected = match role {
                    Role::Viewer => action == Action::Read,
                    Role::Deployer => {
                        !matches!(action, Action::ManageEnvironments | Action::Administer | Action::Approve)
                    }
                    Role::Approver => matches!(action, Action::Read | Action::Approve),
                    Role::Admin => true,
                    Role::Agent => false,
                };
                assert_eq!(scoped(role).authorize(action, &env("staging-eu")).is_ok(), expected, "{role:?} {action:?}");
                assert!(scoped(role).authorize(action, &env("prod")).is_err(), "{role:?} {action:?} outside scope");
            }
        }
    }

    #[test]
    fn host_level_targets_need_an_admin_of_every_environment() {
        let admin = |patterns: &[&str]| {
            Principal::new("p", Role::Admin, patterns.iter().map(|p| EnvironmentPattern::new(*p).unwrap()).collect())
        };
        assert!(admin(&["*"]).authorize(Action::DefineHostTargets, &env("prod")).is_ok());
        assert!(admin(&["prod"]).authorize(Action::DefineHostTargets, &env("prod")).is_err(), "scoped admin");
        assert!(admin(&["prod", "*-eu"]).authorize(Action::DefineHostTargets, &env("prod")).is_err());
        let deployer = Principal::new("d", Role::Deployer, vec![EnvironmentPattern::any()]);
        assert!(deployer.authorize(Action::DefineHostTargets, &env("prod")).is_err());
        assert!(admin(&["*"]).is_global() && !admin(&["prod"]).is_global());
    }

    #[test]
    fn an_agent_acts_for_its_own_target_only() {
        let target = |t: &str| crate::names::TargetId::new(t).unwrap();
        let agent = Principal::agent("key:a", vec![EnvironmentPattern::new("prod").unwrap()], target("web-1"));
        assert!(agent.authorize_agent(&env("prod"), &target("web-1")).is_ok());
        assert!(agent.authorize_agent(&env("prod"), &target("web-2")).is_err(), "another target");
        assert!(agent.authorize_agent(&env("staging"), &target("web-1")).is_err(), "another environment");
        let unbound = Principal::new("key:b", Role::Agent, vec![EnvironmentPattern::any()]);
        assert!(unbound.authorize_agent(&env("prod"), &target("web-1")).is_err(), "an agent bound to nothing");
        let admin = Principal::new("key:c", Role::Admin, vec![EnvironmentPattern::new("prod").unwrap()]);
        assert!(admin.authorize_agent(&env("prod"), &target("web-9")).is_ok(), "admins may stand in");
        let deployer = Principal::new("key:d", Role::Deployer, vec![EnvironmentPattern::any()]);
        assert!(deployer.authorize_agent(&env("prod"), &target("web-1")).is_err());
    }
}
