//! Authentication: API keys (`dk_...`, stored as SHA-256, compared in constant time) and JWT bearer tokens (HS256 or
//! EdDSA). Authorization itself is [`Principal::authorize`](deploy_core::Principal::authorize).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use axum::http::{HeaderMap, HeaderValue, header};
use base64::Engine as _;
use deploy_core::{ApiKeyRecord, EnvironmentPattern, KeyStore, Principal, Role};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::problem::{Problem, ProblemKind};

/// The prefix of every API key.
pub const KEY_PREFIX: &str = "dk_";

/// How JWT bearer tokens are verified.
#[derive(Clone)]
pub struct JwtConfig {
    key: DecodingKey,
    algorithm: Algorithm,
    issuer: Option<String>,
    audience: Option<String>,
    identity_claim: Option<String>,
}

impl std::fmt::Debug for JwtConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JwtConfig")
            .field("algorithm", &self.algorithm)
            .field("issuer", &self.issuer)
            .field("audience", &self.audience)
            .finish_non_exhaustive()
    }
}

/// A JWT configuration that could not be used.
#[derive(Debug, thiserror::Error)]
#[error("invalid JWT configuration: {0}")]
pub struct JwtConfigError(String);

impl JwtConfig {
    /// HS256 with a shared secret.
    ///
    /// # Errors
    /// A secret shorter than 32 bytes.
    pub fn hs256(secret: &[u8]) -> Result<Self, JwtConfigError> {
        if secret.len() < 32 {
            return Err(JwtConfigError("the HS256 secret must be at least 32 bytes".into()));
        }
        Ok(Self {
            key: DecodingKey::from_secret(secret),
            algorithm: Algorithm::HS256,
            issuer: None,
            audience: None,
            identity_claim: None,
        })
    }

    /// EdDSA (Ed25519) with a PEM public key.
    ///
    /// # Errors
    /// A PEM that is not an Ed25519 public key.
    pub fn eddsa_pem(pem: &[u8]) -> Result<Self, JwtConfigError> {
        let key = DecodingKey::from_ed_pem(pem).map_err(|e| JwtConfigError(format!("EdDSA public key: {e}")))?;
        Ok(Self { key, algorithm: Algorithm::EdDSA, issuer: None, audience: None, identity_claim: None })
    }

    /// Requires `iss` to be `issuer`.
    #[must_use]
    pub fn issuer(mut self, issuer: Option<String>) -> Self {
        self.issuer = issuer;
        self
    }

    /// Takes the person a token speaks for from `claim` (`email`, `preferred_username`) instead of `sub`: the claim
    /// an API key's `owner` is matched with. A token without it is refused.
    #[must_use]
    pub fn identity_claim(mut self, claim: Option<String>) -> Self {
        self.identity_claim = claim.filter(|c| !c.is_empty());
        self
    }

    /// Requires `aud` to contain `audience`.
    #[must_use]
    pub fn audience(mut self, audience: Option<String>) -> Self {
        self.audience = audience;
        self
    }

    fn validation(&self) -> Validation {
        let mut v = Validation::new(self.algorithm);
        v.algorithms = vec![self.algorithm];
        v.validate_exp = true;
        v.validate_nbf = true;
        v.leeway = 30;
        // A configured issuer or audience is a required claim: a token without it is refused, not waved through.
        let mut required = vec!["exp", "sub"];
        if self.issuer.is_some() {
            required.push("iss");
        }
        if self.audience.is_some() {
            required.push("aud");
        }
        v.set_required_spec_claims(&required);
        match &self.issuer {
            Some(iss) => v.set_issuer(&[iss]),
            None => v.iss = None,
        }
        match &self.audience {
            Some(aud) => v.set_audience(&[aud]),
            None => v.validate_aud = false,
        }
        v
    }
}

#[derive(Debug, Deserialize)]
struct Claims {
    sub: String,
    role: Role,
    #[serde(default)]
    environments: Vec<EnvironmentPattern>,
    #[serde(flatten)]
    other: serde_json::Map<String, serde_json::Value>,
}

/// How long a verified API key is trusted without asking the store again. A key revoked through this process stops
/// working at once; one revoked through another replica stops within this time.
pub const KEY_CACHE_TTL: Duration = Duration::from_secs(5);

/// Keys remembered at most; past this the cache starts over.
const KEY_CACHE_MAX: usize = 10_000;

/// Turns `Authorization` headers into principals.
#[derive(Clone)]
pub struct Authenticator {
    store: Arc<dyn KeyStore>,
    jwt: Option<JwtConfig>,
    keys: Arc<Mutex<HashMap<String, (ApiKeyRecord, Instant)>>>,
}

impl std::fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authenticator").field("jwt", &self.jwt).finish_non_exhaustive()
    }
}

fn unauthenticated(detail: &str, invalid: bool) -> Problem {
    let challenge = if invalid {
        HeaderValue::from_static("Bearer realm=\"deploy\", error=\"invalid_token\"")
    } else {
        HeaderValue::from_static("Bearer realm=\"deploy\"")
    };
    Problem::new(ProblemKind::Unauthenticated, detail).with_header(header::WWW_AUTHENTICATE, challenge)
}

impl Authenticator {
    /// API keys from `store`; JWTs only when `jwt` is given.
    #[must_use]
    pub fn new(store: Arc<dyn KeyStore>, jwt: Option<JwtConfig>) -> Self {
        Self { store, jwt, keys: Arc::new(Mutex::new(HashMap::new())) }
    }

    /// Forgets a revoked key at once.
    pub fn forget_key(&self, id: uuid::Uuid) {
        self.keys.lock().unwrap_or_else(PoisonError::into_inner).retain(|_, (record, _)| record.id != id);
    }

    fn cached(&self, digest: &str) -> Option<ApiKeyRecord> {
        let keys = self.keys.lock().unwrap_or_else(PoisonError::into_inner);
        keys.get(digest).filter(|(_, at)| at.elapsed() < KEY_CACHE_TTL).map(|(record, _)| record.clone())
    }

    fn remember(&self, digest: String, record: ApiKeyRecord) {
        let mut keys = self.keys.lock().unwrap_or_else(PoisonError::into_inner);
        if keys.len() >= KEY_CACHE_MAX {
            keys.clear();
        }
        keys.insert(digest, (record, Instant::now()));
    }

    /// The principal the request's `Authorization` header proves.
    ///
    /// # Errors
    /// 401 problems (with `WWW-Authenticate`) for missing, malformed, unknown, revoked or expired credentials; 503 when
    /// the store cannot be asked.
    pub async fn authenticate(&self, headers: &HeaderMap) -> Result<Principal, Problem> {
        let Some(value) = headers.get(header::AUTHORIZATION) else {
            return Err(unauthenticated("send Authorization: Bearer <API key or JWT>", false));
        };
        // The scheme is case-insensitive (RFC 9110 §11.1); another scheme is no attempt at a bearer token, so its
        // challenge carries no error code (RFC 6750 §3.1).
        let (scheme, token) = value.to_str().ok().and_then(|v| v.trim().split_once(' ')).unwrap_or_default();
        if !scheme.eq_ignore_ascii_case("bearer") {
            return Err(unauthenticated("send Authorization: Bearer <API key or JWT>", false));
        }
        let token = Some(token.trim())
            .filter(|t| !t.is_empty())
            .ok_or_else(|| unauthenticated("the Authorization header must be `Bearer <token>`", true))?;
        if token.starts_with(KEY_PREFIX) { self.api_key(token).await } else { self.jwt(token) }
    }

    async fn api_key(&self, token: &str) -> Result<Principal, Problem> {
        if !is_well_formed_key(token) {
            return Err(unauthenticated("not a valid API key", true));
        }
        let digest = key_digest(token);
        let record = match self.cached(&digest) {
            Some(record) => Some(record),
            None => {
                let found = self.store.api_key_by_hash(&digest).await.map_err(Problem::from)?;
                if let Some(record) = &found {
                    self.remember(digest.clone(), record.clone());
                }
                found
            }
        };
        match record {
            // The lookup is by digest; compare the digests again in constant time so no timing depends on how much of
            // the digest matched.
            Some(record) if bool::from(record.key_hash.as_bytes().ct_eq(digest.as_bytes())) => Ok(record.principal()),
            _ => Err(unauthenticated("unknown or revoked API key", true)),
        }
    }

    fn jwt(&self, token: &str) -> Result<Principal, Problem> {
        let Some(jwt) = &self.jwt else {
            return Err(unauthenticated("this server accepts API keys only", true));
        };
        if has_critical_extensions(token) {
            return Err(unauthenticated("the token names critical header extensions this server does not know", true));
        }
        let data = jsonwebtoken::decode::<Claims>(token, &jwt.key, &jwt.validation()).map_err(|e| {
            tracing::debug!(error = %e, "JWT refused");
            unauthenticated("the token is invalid or expired", true)
        })?;
        let claims = data.claims;
        // The person it speaks for: its subject, or the configured identity claim.
        let person = match &jwt.identity_claim {
            None => claims.sub.clone(),
            Some(claim) => match claims.other.get(claim).and_then(serde_json::Value::as_str) {
                Some(p) if !p.is_empty() && !p.chars().any(deploy_core::is_unprintable) => p.to_owned(),
                _ => return Err(unauthenticated("the token lacks the identity claim this server requires", true)),
            },
        };
        Ok(Principal::new(format!("jwt:{}", claims.sub), claims.role, claims.environments).with_person(person))
    }
}

/// Whether the token's protected header lists `crit` extensions (RFC 7515 §4.1.11): this server understands none, so
/// a token that requires one must be refused. A header that cannot be read counts too (it is refused anyway).
fn has_critical_extensions(token: &str) -> bool {
    let Some(header) = token.split('.').next() else { return true };
    let Ok(bytes) = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(header.trim_end_matches('=')) else {
        return true;
    };
    match serde_json::from_slice::<serde_json::Value>(&bytes) {
        Ok(serde_json::Value::Object(h)) => h.contains_key("crit"),
        _ => true,
    }
}

/// Whether `key` looks like an API key: `dk_` and 43 URL-safe base64 characters.
#[must_use]
pub fn is_well_formed_key(key: &str) -> bool {
    key.strip_prefix(KEY_PREFIX).is_some_and(|rest| {
        rest.len() == 43 && rest.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    })
}

/// The lowercase hex SHA-256 of a key: all the store ever sees.
#[must_use]
pub fn key_digest(key: &str) -> String {
    let digest = Sha256::digest(key.as_bytes());
    let mut out = String::with_capacity(64);
    for b in digest {
        out.push(char::from(b"0123456789abcdef"[usize::from(b >> 4)]));
        out.push(char::from(b"0123456789abcdef"[usize::from(b & 0xf)]));
    }
    out
}

/// A new API key: `dk_` and 256 random bits in URL-safe base64.
///
/// # Errors
/// The operating system's random source failed.
pub fn generate_key() -> Result<String, getrandom::Error> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes)?;
    Ok(format!("{KEY_PREFIX}{}", base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)))
}

/// A record for a new key.
#[must_use]
pub(crate) fn key_record(
    key: &str,
    name: String,
    role: Role,
    environments: Vec<EnvironmentPattern>,
    created_by: String,
    now: deploy_core::Timestamp,
) -> ApiKeyRecord {
    ApiKeyRecord {
        id: uuid::Uuid::now_v7(),
        name,
        role,
        environments,
        key_hash: key_digest(key),
        created_by,
        created_at: now,
        target: None,
        owner: None,
    }
}
