//! Secrets are references, never values: `{"ref": "vault://kv/checkout/db#password"}` in a spec, resolved by a
//! [`SecretResolver`] only when a target is applied, and never stored, logged or serialized.

use std::collections::BTreeMap;
use std::fmt;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

mod detect;
mod resolvers;
mod scope;
mod scrub;

pub use detect::{is_sensitive_key, secret_shape};
pub use resolvers::{DEFAULT_ENV_PREFIX, EnvSecretResolver, FileSecretResolver, SchemeResolver};
pub use scope::SecretScope;
pub use scrub::{REDACTED, Scrubber, ScrubbingStream};

/// A reference to a secret in a secret store: `scheme://location`, e.g. `env://DB_PASSWORD` or
/// `vault://kv/checkout/db#password`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct SecretRef {
    #[serde(rename = "ref")]
    reference: String,
}

/// Why a secret reference was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("secret reference {0:?} is invalid: expected \"scheme://location\", e.g. \"env://DB_PASSWORD\"")]
pub struct SecretRefError(String);

impl SecretRef {
    /// The reference as a request writes it: `{"ref": "scheme://location"}`.
    #[must_use]
    pub fn to_request(&self) -> serde_json::Value {
        serde_json::json!({ "ref": self.as_str() })
    }

    /// Parses `scheme://location`.
    ///
    /// # Errors
    /// [`SecretRefError`] when there is no scheme, no location, or the scheme is not lowercase ASCII.
    pub fn parse(reference: impl Into<String>) -> Result<Self, SecretRefError> {
        let reference = reference.into();
        let valid = match reference.split_once("://") {
            Some((scheme, location)) => {
                !scheme.is_empty()
                    && scheme.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                    && !location.is_empty()
                    && reference.len() <= 1024
                    && !reference.chars().any(char::is_control)
            }
            None => false,
        };
        if valid { Ok(Self { reference }) } else { Err(SecretRefError(reference)) }
    }

    /// The scheme (`env`, `vault`, ...).
    #[must_use]
    pub fn scheme(&self) -> &str {
        self.reference.split_once("://").map_or("", |(s, _)| s)
    }

    /// What follows `scheme://`.
    #[must_use]
    pub fn location(&self) -> &str {
        self.reference.split_once("://").map_or("", |(_, l)| l)
    }

    /// The whole reference.
    #[must_use]
    pub fn as_str(&self) -> &str {
        &self.reference
    }
}

impl fmt::Display for SecretRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.reference)
    }
}

/// A resolved secret value. It has no `Serialize`, and its `Debug` and `Display` print `***`, so it cannot leak into a
/// store, an event or a log line by accident.
#[derive(Clone, PartialEq, Eq)]
pub struct SecretValue(String);

impl SecretValue {
    /// Wraps a resolved value.
    #[must_use]
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// The value, for the executor that hands it to the target. Do not log it.
    #[must_use]
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for SecretValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SecretValue(***)")
    }
}

impl fmt::Display for SecretValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

/// Secrets resolved for one apply, by the name the spec gave them.
pub type ResolvedSecrets = BTreeMap<String, SecretValue>;

/// Why a secret could not be resolved.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SecretError {
    /// No resolver handles this scheme.
    #[error("no secret resolver for scheme {scheme:?}")]
    UnsupportedScheme {
        /// The scheme of the reference.
        scheme: String,
    },
    /// The store answered that the secret does not exist.
    #[error("secret {reference:?} not found")]
    NotFound {
        /// The reference that was looked up.
        reference: String,
    },
    /// The resolver will not resolve this reference: outside what it is allowed to read (a variable without the
    /// configured prefix, a path outside the secrets directory).
    #[error("secret {reference:?} is not resolvable here: {reason}")]
    Forbidden {
        /// The reference that was looked up.
        reference: String,
        /// Why it is refused.
        reason: String,
    },
    /// The secret store could not be reached; trying again later may work.
    #[error("secret store unavailable for {reference:?}: {reason}")]
    Unavailable {
        /// The reference that was looked up.
        reference: String,
        /// What went wrong, without the value.
        reason: String,
    },
}

/// Resolves secret references at the moment a target is applied.
///
/// Contract: `resolve` returns the current value or a typed error; it never caches values beyond its own policy and
/// never writes them anywhere. The engine calls it once per target apply, so rotations take effect on the next apply.
#[async_trait]
pub trait SecretResolver: Send + Sync {
    /// Resolves one reference.
    async fn resolve(&self, reference: &SecretRef) -> Result<SecretValue, SecretError>;
}

macro_rules! forward_resolver {
    ($($ptr:ty),*) => {$(
        #[async_trait]
        impl<T: SecretResolver + ?Sized> SecretResolver for $ptr {
            async fn resolve(&self, reference: &SecretRef) -> Result<SecretValue, SecretError> {
                (**self).resolve(reference).await
            }
        }
    )*};
}

forward_resolver!(std::sync::Arc<T>, Box<T>, &T);

/// The secret references of a spec or a desired state (its `secrets` and `config` maps), as `(section, name,
/// reference)`: section `secrets`, or `config` for config values that are references.
pub fn references_of<'a>(
    secrets: &'a BTreeMap<String, SecretRef>,
    config: &'a BTreeMap<String, crate::spec::ConfigValue>,
) -> impl Iterator<Item = (&'static str, &'a String, &'a SecretRef)> {
    use crate::spec::ConfigValue;
    secrets.iter().map(|(k, r)| ("secrets", k, r)).chain(config.iter().filter_map(|(k, v)| match v {
        ConfigValue::Secret(r) => Some(("config", k, r)),
        ConfigValue::Literal(_) => None,
    }))
}

/// Resolves every secret a desired state refers to (its `secrets`, and `config` values that are references), keyed by
/// name, for one call to an executor. With `scope` (the environment's joined with the global one, see
/// [`SecretScope::joined`]), a reference outside it is refused before any resolver is asked.
/// An unavailable resolver is a retryable error; an unknown or refused reference a permanent one.
///
/// # Errors
/// [`crate::ExecutorError`] naming the secret.
pub async fn resolve_for(
    resolver: &dyn SecretResolver,
    desired: &crate::state::DesiredState,
    scope: Option<&SecretScope>,
) -> Result<ResolvedSecrets, crate::executor::ExecutorError> {
    use crate::executor::ExecutorError;
    in_scope(desired, scope)?;
    let mut out = ResolvedSecrets::new();
    for (_, name, reference) in references_of(&desired.secrets, &desired.config) {
        match resolver.resolve(reference).await {
            Ok(v) => {
                out.insert(name.clone(), v);
            }
            Err(e @ SecretError::Unavailable { .. }) => {
                return Err(ExecutorError::retryable(format!("secret {name}: {e}")));
            }
            Err(e) => return Err(ExecutorError::permanent(format!("secret {name} could not be resolved: {e}"))),
        }
    }
    Ok(out)
}

/// Refuses `desired` when one of its references is outside `scope` (none: no scope), as [`resolve_for`] does before
/// it resolves anything; for executors that pass references on instead
/// ([`Executor::passes_secret_references`](crate::Executor::passes_secret_references)).
///
/// # Errors
/// A permanent [`crate::ExecutorError`] naming the secret and the reference.
pub fn in_scope(
    desired: &crate::state::DesiredState,
    scope: Option<&SecretScope>,
) -> Result<(), crate::executor::ExecutorError> {
    for (_, name, reference) in references_of(&desired.secrets, &desired.config) {
        if scope.is_some_and(|scope| !scope.allows(reference)) {
            return Err(crate::executor::ExecutorError::permanent(format!(
                "secret {name}: reference {reference} is outside this environment's secret scope"
            )));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_need_a_scheme_and_a_location() {
        assert!(SecretRef::parse("env://DB_PASSWORD").is_ok());
        assert!(SecretRef::parse("vault://kv/checkout/db#password").is_ok());
        for bad in ["", "hunter2", "env://", "://x", "ENV://X", "env:/X"] {
            assert!(SecretRef::parse(bad).is_err(), "{bad}");
        }
        let r = SecretRef::parse("vault://kv/a#b").unwrap();
        assert_eq!((r.scheme(), r.location()), ("vault", "kv/a#b"));
    }

    #[test]
    fn values_never_print() {
        let v = SecretValue::new("hunter2");
        assert_eq!(format!("{v:?} {v}"), "SecretValue(***) ***");
    }
}
