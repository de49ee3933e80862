//! Who may do what where: principals, roles and environment patterns.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize};

use crate::names::EnvironmentName;

/// A role. Roles are ordered: each allows everything the one before it allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Reads environments, deployments and events.
    Viewer,
    /// Reads, submits, cancels and rolls back deployments.
    Deployer,
    /// Everything, including environments, API keys, webhooks and the audit log.
    Admin,
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
    /// Create or replace an environment.
    ManageEnvironments,
    /// Manage API keys, webhooks and read the audit log.
    Administer,
}

impl Role {
    /// Whether this role allows `action` (environment scope aside).
    #[must_use]
    pub const fn allows(self, action: Action) -> bool {
        match action {
            Action::Read => true,
            Action::Deploy | Action::Cancel | Action::Rollback => matches!(self, Self::Deployer | Self::Admin),
            Action::ManageEnvironments | Action::Administer => matches!(self, Self::Admin),
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
        Self { id: id.into(), role, environments }
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

    /// Whether this principal may do `action` in `environment`.
    ///
    /// # Errors
    /// [`Forbidden`] when the role does not allow the action or no pattern matches the environment.
    pub fn authorize(&self, action: Action, environment: &EnvironmentName) -> Result<(), Forbidden> {
        if self.role.allows(action) && self.environments.iter().any(|p| p.matches(environment)) {
            Ok(())
        } else {
            Err(Forbidden { principal: self.id.clone(), action, environment: environment.to_string() })
        }
    }
}

impl fmt::Display for Principal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.id)
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
            Action::ManageEnvironments,
            Action::Administer,
        ];
        for role in [Role::Viewer, Role::Deployer, Role::Admin] {
            for action in actions {
                let expected = match role {
                    Role::Viewer => action == Action::Read,
                    Role::Deployer => !matches!(action, Action::ManageEnvironments | Action::Administer),
                    Role::Admin => true,
                };
                assert_eq!(scoped(role).authorize(action, &env("staging-eu")).is_ok(), expected, "{role:?} {action:?}");
                assert!(scoped(role).authorize(action, &env("prod")).is_err(), "{role:?} {action:?} outside scope");
            }
        }
    }
}
