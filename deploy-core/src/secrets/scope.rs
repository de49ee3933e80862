//! Which secret references an environment may resolve.
//!
//! A deployer chooses the references in its payload, so without a scope a deployer of `staging` could name
//! production's secrets (`env://DEPLOY_SECRET_PROD_DB`) and receive them in a staging hook. Every environment resolves
//! only what its [`SecretScope`] allows, together with the orchestrator's global scope; the check is made when a
//! deployment is accepted (so the caller hears at once, naming the reference) and again when a target is applied (so
//! a scope narrowed since, or a deployment accepted before the scope existed, cannot resolve what is no longer
//! allowed).

use serde::{Deserialize, Serialize};

use super::SecretRef;
use crate::spec::ValidationErrors;

/// The most entries one scope may list.
const MAX_SCOPE_ENTRIES: usize = 100;

/// The references an environment may resolve: exact references (`vault://kv/staging/db#password`) and prefixes
/// ending in `*` (`env://DEPLOY_SECRET_STAGING_*`, `file://staging/*`). Empty: nothing but the global scope.
///
/// A reference whose location holds a `.` or `..` path segment, a backslash or a `%` is never in scope (a resolver
/// might read it as a path leading out of the prefix).
///
/// ```
/// use deploy_core::{SecretRef, SecretScope};
/// let scope = SecretScope::new(["env://DEPLOY_SECRET_STAGING_*", "file://staging/*"]);
/// assert!(scope.allows(&SecretRef::parse("env://DEPLOY_SECRET_STAGING_DB")?));
/// assert!(!scope.allows(&SecretRef::parse("env://DEPLOY_SECRET_PROD_DB")?));
/// assert!(!scope.allows(&SecretRef::parse("file://staging/../prod/db")?));
/// # Ok::<(), deploy_core::SecretRefError>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SecretScope {
    /// Exact references, or prefixes ending in `*`.
    #[serde(default)]
    pub allow: Vec<String>,
}

impl SecretScope {
    /// A scope of these entries (not checked: see [`SecretScope::check`]).
    #[must_use]
    pub fn new<S: Into<String>>(allow: impl IntoIterator<Item = S>) -> Self {
        Self { allow: allow.into_iter().map(Into::into).collect() }
    }

    /// Everything `self` or `other` allows.
    #[must_use]
    pub fn joined(&self, other: &Self) -> Self {
        Self { allow: self.allow.iter().chain(&other.allow).cloned().collect() }
    }

    /// Whether it allows nothing.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.allow.is_empty()
    }

    /// Whether `reference` is in scope.
    #[must_use]
    pub fn allows(&self, reference: &SecretRef) -> bool {
        plain(reference.location()) && self.allow.iter().any(|entry| matches(entry, reference.as_str()))
    }

    /// Whether every reference `entry` stands for is also allowed by this scope: what a narrowing keeps.
    #[must_use]
    pub fn covers(&self, entry: &str) -> bool {
        match entry.strip_suffix('*') {
            Some(prefix) => self.allow.iter().any(|e| e.strip_suffix('*').is_some_and(|p| prefix.starts_with(p))),
            None => self.allow.iter().any(|e| matches(e, entry)),
        }
    }

    /// The entries of `self` that `within` does not cover: what a change would add beyond it.
    #[must_use]
    pub fn beyond<'a>(&'a self, within: &[&SecretScope]) -> Vec<&'a str> {
        self.allow.iter().map(String::as_str).filter(|e| !within.iter().any(|w| w.covers(e))).collect()
    }

    /// Checks every entry is a well-formed reference or prefix (`field` names the list in errors).
    pub fn check(&self, field: &str, errs: &mut ValidationErrors) {
        if self.allow.len() > MAX_SCOPE_ENTRIES {
            errs.push(field, format!("at most {MAX_SCOPE_ENTRIES} entries"));
            return;
        }
        for (i, entry) in self.allow.iter().enumerate() {
            let at = format!("{field}[{i}]");
            let literal = entry.strip_suffix('*').unwrap_or(entry);
            let shape = literal.split_once("://").filter(|(scheme, _)| {
                !scheme.is_empty() && scheme.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            });
            if entry.len() > 1024 || entry.chars().any(char::is_control) {
                errs.push(at, "at most 1024 characters, no control characters");
            } else if shape.is_none() {
                errs.push(at, "an entry is a reference (scheme://location) or a prefix of one ending in '*'");
            } else if literal.contains('*') {
                errs.push(at, "'*' may only end an entry");
            } else if !plain(shape.map_or("", |(_, location)| location)) {
                errs.push(at, "no '.' or '..' path segments, backslashes or '%' in an entry");
            }
        }
    }
}

/// An entry matches a reference exactly, or as a prefix when it ends in `*`.
fn matches(entry: &str, reference: &str) -> bool {
    match entry.strip_suffix('*') {
        Some(prefix) => reference.starts_with(prefix),
        None => entry == reference,
    }
}

/// A location no resolver could read as leading elsewhere: no `.`/`..` segments, no backslash, no percent-encoding.
fn plain(location: &str) -> bool {
    !location.contains(['\\', '%']) && !location.split(['/', '#', '?']).any(|seg| seg == "." || seg == "..")
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn r(s: &str) -> SecretRef {
        SecretRef::parse(s).unwrap()
    }

    #[test]
    fn exact_entries_and_prefixes() {
        let scope = SecretScope::new(["env://DEPLOY_SECRET_STAGING_*", "vault://kv/staging/db#password"]);
        assert!(scope.allows(&r("env://DEPLOY_SECRET_STAGING_DB")));
        assert!(scope.allows(&r("vault://kv/staging/db#password")));
        for outside in [
            "env://DEPLOY_SECRET_PROD_DB",
            "env://DEPLOY_SECRET_STAGIN",
            "vault://kv/staging/db#other",
            "vault://kv/staging/db#password2",
            "file://DEPLOY_SECRET_STAGING_DB",
        ] {
            assert!(!scope.allows(&r(outside)), "{outside}");
        }
        assert!(!SecretScope::default().allows(&r("env://DEPLOY_SECRET_X")), "an empty scope allows nothing");
    }

    #[test]
    fn paths_that_could_lead_out_of_a_prefix_are_never_in_scope() {
        let scope = SecretScope::new(["file://staging/*", "vault://kv/staging/*"]);
        assert!(scope.allows(&r("file://staging/db/password")));
        for sneaky in [
            "file://staging/../prod/db",
            "file://staging/./x",
            "file://staging/..",
            "file://staging/%2e%2e/prod/db",
            "file://staging/..\\prod",
            "vault://kv/staging/../prod#password",
        ] {
            assert!(!scope.allows(&r(sneaky)), "{sneaky}");
        }
    }

    #[test]
    fn coverage_decides_what_a_narrowing_keeps() {
        let wide = SecretScope::new(["env://DEPLOY_SECRET_STAGING_*", "file://a/b"]);
        assert!(wide.covers("env://DEPLOY_SECRET_STAGING_DB_*"));
        assert!(wide.covers("env://DEPLOY_SECRET_STAGING_DB"));
        assert!(wide.covers("file://a/b"));
        assert!(!wide.covers("file://a/*"), "a prefix is not covered by an exact entry");
        assert!(!wide.covers("env://DEPLOY_SECRET_*"), "a wider prefix is not covered");
        let asked = SecretScope::new(["env://DEPLOY_SECRET_STAGING_X", "env://DEPLOY_SECRET_PROD_*"]);
        assert_eq!(asked.beyond(&[&wide]), ["env://DEPLOY_SECRET_PROD_*"]);
        let global = SecretScope::new(["env://DEPLOY_SECRET_SHARED_*", "env://DEPLOY_SECRET_PROD_*"]);
        assert!(asked.beyond(&[&wide, &global]).is_empty());
    }

    #[test]
    fn entries_are_checked() {
        let mut errs = ValidationErrors::default();
        SecretScope::new(["env://A_*", "env://*", "vault://kv/x#y"]).check("secret_scope.allow", &mut errs);
        assert!(errs.is_empty(), "{errs}");
        let bad = SecretScope::new(["A_*", "env://A*B", "file://x/../y", "ENV://X", "env://x\n"]);
        let mut errs = ValidationErrors::default();
        bad.check("secret_scope.allow", &mut errs);
        for i in 0..5 {
            assert!(errs.has_field(&format!("secret_scope.allow[{i}]")), "{i}: {errs}");
        }
    }
}
