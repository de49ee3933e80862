//! Who may call the API and what they did: API key records and the audit log, as the [`Store`](crate::Store) keeps
//! them. Keys themselves are never stored, only their SHA-256 digest.

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::auth::{EnvironmentPattern, Principal, Role};
use crate::clock::Timestamp;

/// An API key as stored: its digest, never the key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiKeyRecord {
    /// Its id (UUIDv7).
    pub id: Uuid,
    /// A name for people (`ci-bot`); the principal is shown as `key:<name>`.
    pub name: String,
    /// What it may do.
    pub role: Role,
    /// Where it may do it.
    pub environments: Vec<EnvironmentPattern>,
    /// Lowercase hex SHA-256 of the key; never serialized.
    #[serde(skip)]
    pub key_hash: String,
    /// Who created it.
    pub created_by: String,
    /// When.
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: Timestamp,
    /// For an agent's key: the target it is bound to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<crate::names::TargetId>,
    /// The person the key belongs to, set by the admin who creates it: a JWT whose subject (or identity claim) is the
    /// same person is the same approver.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,
}

impl ApiKeyRecord {
    /// What a store answers when another key has this one's name: names are identities, so the second is refused.
    #[must_use]
    pub fn name_taken(&self) -> crate::store::StoreError {
        let mut errs = crate::spec::ValidationErrors::default();
        errs.push("name", format!("a key named {:?} exists; names are identities", self.name));
        crate::store::StoreError::Invalid(errs)
    }

    /// What a store answers when this key's digest is registered already.
    #[must_use]
    pub fn key_taken() -> crate::store::StoreError {
        let mut errs = crate::spec::ValidationErrors::default();
        errs.push("key", "this key is already registered");
        crate::store::StoreError::Invalid(errs)
    }

    /// The principal this key authenticates as.
    #[must_use]
    pub fn principal(&self) -> Principal {
        let id = format!("key:{}", self.name);
        let principal = match (&self.target, self.role) {
            (Some(target), Role::Agent) => Principal::agent(id, self.environments.clone(), target.clone()),
            _ => Principal::new(id, self.role, self.environments.clone()),
        };
        match &self.owner {
            Some(owner) => principal.with_person(owner.clone()),
            None => principal,
        }
    }
}

/// One mutating call, as the audit log keeps it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditEntry {
    /// Its id (UUIDv7: ordered by time).
    #[serde(skip)]
    pub id: Uuid,
    /// When the call was answered.
    #[serde(with = "time::serde::rfc3339")]
    pub at: Timestamp,
    /// Who made it (`key:ci-bot`, `jwt:svc-a`, `anonymous`).
    pub actor: String,
    /// What it asked for (`deployment.submit`, `environment.put`, ...).
    pub action: String,
    /// What it acted on (`deployments/0190...`, `environments/prod`).
    pub resource: String,
    /// The environment concerned, when there is one.
    pub environment: Option<String>,
    /// The request's `X-Request-Id`.
    pub request_id: String,
    /// How it ended: `success`, or the problem slug (`forbidden`, `validation`, ...).
    pub outcome: String,
}

/// Which audit entries to list.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AuditFilter {
    /// Only this actor's.
    pub actor: Option<String>,
    /// Only this environment's.
    pub environment: Option<String>,
}

impl AuditFilter {
    /// Whether `entry` passes.
    #[must_use]
    pub fn matches(&self, entry: &AuditEntry) -> bool {
        self.actor.as_ref().is_none_or(|a| a == &entry.actor)
            && self.environment.as_ref().is_none_or(|e| entry.environment.as_ref() == Some(e))
    }
}
