//! Identifiers and names: newtypes whose constructors refuse what the API does not accept.

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

use serde::{Deserialize, Deserializer, Serialize};
use uuid::Uuid;

/// Why a name or identifier was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{what} {value:?} is invalid: {rule}")]
pub struct NameError {
    what: &'static str,
    value: String,
    rule: &'static str,
}

impl NameError {
    /// The rule the value broke, for field-level messages.
    #[must_use]
    pub fn rule(&self) -> &'static str {
        self.rule
    }
}

macro_rules! string_name {
    ($(#[$doc:meta])* $name:ident, $what:literal, $rule:literal, $check:expr) => {
        $(#[$doc])*
        ///
        /// Cloning is cheap (a shared `Arc<str>`): ids and versions are copied into every record and event.
        #[derive(Debug, Clone, Eq, PartialOrd, Ord)]
        pub struct $name(Arc<str>);

        impl std::hash::Hash for $name {
            fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
                // Equal values have equal text, whether or not they share an allocation.
                self.0.hash(state);
            }
        }

        impl PartialEq for $name {
            fn eq(&self, other: &Self) -> bool {
                // Clones share their allocation: most comparisons end at the pointer.
                Arc::ptr_eq(&self.0, &other.0) || self.0 == other.0
            }
        }

        impl Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                serializer.serialize_str(&self.0)
            }
        }

        impl $name {
            /// Validates and wraps `value`.
            ///
            /// # Errors
            /// [`NameError`] when the value breaks the rule in the type's documentation.
            pub fn new(value: impl Into<String>) -> Result<Self, NameError> {
                let value = value.into();
                let check: fn(&str) -> bool = $check;
                if check(&value) {
                    Ok(Self(Arc::from(value)))
                } else {
                    Err(NameError { what: $what, value, rule: $rule })
                }
            }

            /// The name as a string slice.
            #[must_use]
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            /// Honours width, fill and alignment (`{:>12}`), as `str` does.
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.pad(&self.0)
            }
        }

        impl FromStr for $name {
            type Err = NameError;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                Self::new(s)
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                let s = String::deserialize(deserializer)?;
                Self::new(s).map_err(serde::de::Error::custom)
            }
        }
    };
}

fn is_dns_label(s: &str) -> bool {
    let bytes = s.as_bytes();
    // Names become path components and file names on hosts: `..` never appears.
    !s.contains("..")
        && (1..=63).contains(&bytes.len())
        && bytes.first().is_some_and(u8::is_ascii_alphanumeric)
        && bytes.iter().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'-' | b'_' | b'.'))
}

fn is_token(s: &str, max: usize) -> bool {
    let bytes = s.as_bytes();
    !s.contains("..")
        && (1..=max).contains(&bytes.len())
        && bytes.first().is_some_and(u8::is_ascii_alphanumeric)
        && bytes.iter().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':' | b'+' | b'/'))
}

string_name!(
    /// An environment name (`prod`, `staging-eu`): 1 to 63 characters of lowercase letters, digits, `-`, `_` and `.`,
    /// starting with a letter or digit, without `..`.
    EnvironmentName,
    "environment name",
    "use 1 to 63 lowercase letters, digits, '-', '_' or '.', starting with a letter or digit, without '..'",
    is_dns_label
);

string_name!(
    /// A service name (`checkout`): same rule as [`EnvironmentName`].
    ServiceName,
    "service name",
    "use 1 to 63 lowercase letters, digits, '-', '_' or '.', starting with a letter or digit, without '..'",
    is_dns_label
);

string_name!(
    /// A version (`2.0.1`, `2024-05-01+build.7`): 1 to 128 characters of letters, digits and `-_.:+`, starting with a
    /// letter or digit, without `..`. Executors put versions into paths and command lines (`/opt/app/{version}`), so a
    /// version never holds a path separator.
    Version,
    "version",
    "use 1 to 128 letters, digits, '-', '_', '.', ':' or '+', starting with a letter or digit, without '..'",
    |s| is_token(s, 128) && !s.contains('/')
);

string_name!(
    /// A target id within an environment (`web-1`, `host:10.0.0.7`, `eu/web-1`): like [`Version`], and `/` is
    /// allowed (never `..`).
    TargetId,
    "target id",
    "use 1 to 128 letters, digits, '-', '_', '.', ':', '+' or '/', starting with a letter or digit, without '..'",
    |s| is_token(s, 128)
);

string_name!(
    /// The kind of executor a target names (`process`, `command`, `agent`, `sim`, or one's own): what an
    /// [`ExecutorRouter`](crate::ExecutorRouter) routes on.
    ExecutorKind,
    "executor kind",
    "use 1 to 64 lowercase letters, digits, '-' or '_'",
    |s: &str| (1..=64).contains(&s.len()) && s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
);

string_name!(
    /// A caller's idempotency key: 1 to 255 visible ASCII characters.
    IdempotencyKey,
    "idempotency key",
    "use 1 to 255 visible ASCII characters",
    |s| (1..=255).contains(&s.len()) && s.bytes().all(|b| b.is_ascii_graphic())
);

impl IdempotencyKey {
    /// A fresh key (a time-ordered UUID), for a caller that has none of its own and will send it again on a retry.
    #[must_use]
    pub fn generate() -> Self {
        Self(Arc::from(Uuid::now_v7().to_string()))
    }
}

/// The id of a deployment: a UUIDv7, so ids sort by creation time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct DeploymentId(Uuid);

impl DeploymentId {
    /// A new, time-ordered id.
    #[must_use]
    pub fn new() -> Self {
        Self(Uuid::now_v7())
    }

    /// The smallest id a deployment accepted at `unix_ms` (milliseconds since the Unix epoch) or later can have: ids
    /// are UUIDv7, ordered by the wall-clock time they were made, so `id >= DeploymentId::first_at(t)` selects those
    /// made at `t` or after (in a store, as text too).
    ///
    /// ```
    /// use deploy_core::DeploymentId;
    /// let before = DeploymentId::first_at(0);
    /// let id = DeploymentId::new();
    /// assert!(before <= id && id.to_string() >= before.to_string());
    /// assert!(DeploymentId::first_at(u64::MAX) > id);
    /// ```
    #[must_use]
    pub fn first_at(unix_ms: u64) -> Self {
        let ms = unix_ms.min((1 << 48) - 1).to_be_bytes();
        let mut bytes = [0u8; 16];
        bytes[..6].copy_from_slice(&ms[2..]);
        bytes[6] = 0x70; // version 7
        bytes[8] = 0x80; // RFC 4122 variant
        Self(Uuid::from_bytes(bytes))
    }

    /// The step of time this id was made in, as stores keep quota totals: its first 7 hex digits, so steps of 2^20
    /// ms (about 17.5 minutes), ordered as text.
    ///
    /// ```
    /// use deploy_core::DeploymentId;
    /// let (a, b) = (DeploymentId::first_at(0), DeploymentId::first_at(1 << 20));
    /// assert_eq!((a.quota_bucket().as_str(), b.quota_bucket().as_str()), ("0000000", "0000001"));
    /// ```
    #[must_use]
    pub fn quota_bucket(&self) -> String {
        self.0.simple().to_string().chars().take(7).collect()
    }

    /// Wraps an existing UUID (as read back from a store).
    #[must_use]
    pub const fn from_uuid(id: Uuid) -> Self {
        Self(id)
    }

    /// The UUID.
    #[must_use]
    pub const fn as_uuid(&self) -> &Uuid {
        &self.0
    }
}

impl Default for DeploymentId {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Display for DeploymentId {
    /// The hyphenated lowercase form, honouring width, fill and alignment.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut buf = uuid::Uuid::encode_buffer();
        f.pad(self.0.hyphenated().encode_lower(&mut buf))
    }
}

impl FromStr for DeploymentId {
    type Err = uuid::Error;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Uuid::parse_str(s).map(Self)
    }
}

/// An environment's revision: bumped by every change to the environment and by every accepted deployment, so a caller
/// can say "only if nothing changed since revision 12" (`If-Match`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, Default)]
#[serde(transparent)]
pub struct Revision(u64);

impl Revision {
    /// The revision before anything happened.
    pub const ZERO: Self = Self(0);

    /// Wraps a raw revision number.
    #[must_use]
    pub const fn new(value: u64) -> Self {
        Self(value)
    }

    /// The raw number.
    #[must_use]
    pub const fn get(self) -> u64 {
        self.0
    }

    /// The revision after this one.
    #[must_use]
    pub const fn next(self) -> Self {
        Self(self.0.saturating_add(1))
    }
}

impl fmt::Display for Revision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// A fingerprint of a request: the SHA-256 of its canonical JSON. The same idempotency key with another fingerprint is
/// a different request and is refused.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Fingerprint(String);

impl Fingerprint {
    /// The fingerprint of `canonical` bytes.
    #[must_use]
    pub fn of(canonical: &[u8]) -> Self {
        use sha2::{Digest, Sha256};
        let digest = Sha256::digest(canonical);
        let mut hex = String::with_capacity(64);
        for byte in digest {
            hex.push(char::from(HEX[usize::from(byte >> 4)]));
            hex.push(char::from(HEX[usize::from(byte & 0x0f)]));
        }
        Self(hex)
    }

    /// Wraps a fingerprint read back from a store.
    #[must_use]
    pub fn from_stored(hex: String) -> Self {
        Self(hex)
    }

    /// The hexadecimal digest.
    #[must_use]
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

const HEX: &[u8; 16] = b"0123456789abcdef";

#[cfg(test)]
mod tests {
    use super::*;

    /// Issue 17: `Display` impls ignored width and alignment, so tables of names, ids, statuses and durations (the
    /// CLI's, an embedder's log lines) came out ragged.
    #[test]
    fn displays_honour_width_fill_and_alignment() {
        let env = EnvironmentName::new("prod").unwrap();
        assert_eq!(format!("[{env:>6}][{env:<6}][{env:^8}][{env:.2}]"), "[  prod][prod  ][  prod  ][pr]");
        let id = DeploymentId::new();
        let wide = format!("{id:>40}");
        assert_eq!(wide.len(), 40);
        assert_eq!(wide.trim_start(), id.to_string());
        let status = crate::DeploymentStatus::RolledBack;
        assert_eq!(format!("{status:-<13}|"), "rolled_back--|");
        assert_eq!(format!("{:>5}", crate::TargetStatus::Failed), "failed", "never cut below its length");
        let kind = crate::EventType::Succeeded.to_string();
        assert_eq!(format!("{:>30}", crate::EventType::Succeeded), format!("{kind:>30}"));
        assert_eq!(format!("{:>4}", crate::CountOrPercent::Percent(25)), " 25%");
        assert_eq!(format!("{:>6}", crate::HumanDuration::from_secs(90)), "   90s");
        assert_eq!(format!("{:<5}|", crate::HumanDuration::from_secs(0)), "0s   |");
        assert_eq!(format!("{:>4}", crate::Principal::system("ci")), "  ci");
    }

    #[test]
    fn names_follow_their_rules() {
        for ok in ["prod", "staging-eu", "a", "x1.y_z"] {
            assert!(EnvironmentName::new(ok).is_ok(), "{ok}");
        }
        for bad in ["", "Prod", "-prod", "pr od", "prod!", &"a".repeat(64)] {
            assert!(EnvironmentName::new(bad).is_err(), "{bad}");
        }
        assert!(Version::new("2.0.1+build.7").is_ok());
        assert!(Version::new("2.0 1").is_err());
        // Versions, services and target ids end up in paths and command lines on hosts.
        for bad in ["2.0/../../etc", "a/b", "1..2", "2.0\n1", "2.0\u{0}"] {
            assert!(Version::new(bad).is_err(), "{bad:?}");
        }
        for bad in ["a..b", "..", "a/b"] {
            assert!(ServiceName::new(bad).is_err(), "{bad:?}");
        }
        assert!(TargetId::new("eu/web-1").is_ok());
        assert!(TargetId::new("eu/../../etc").is_err());
        assert!(IdempotencyKey::new("abc-123").is_ok());
        assert!(IdempotencyKey::new("with space").is_err());
        assert!(IdempotencyKey::new("k".repeat(256)).is_err());
    }

    #[test]
    fn deserialization_validates() {
        assert!(serde_json::from_str::<ServiceName>("\"checkout\"").is_ok());
        assert!(serde_json::from_str::<ServiceName>("\"Check Out\"").is_err());
    }

    #[test]
    fn fingerprint_is_sha256_hex() {
        assert_eq!(
            Fingerprint::of(b"abc").as_str(),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn deployment_ids_sort_by_creation() {
        let a = DeploymentId::new();
        let b = DeploymentId::new();
        assert!(a < b);
    }
}
