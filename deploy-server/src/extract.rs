//! Extractors: the authenticated caller, JSON bodies with problem-detail rejections, and header and query parsing.

use std::collections::HashMap;

use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Query, Request};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use deploy_core::{IdempotencyKey, PageRequest, Principal, Revision};
use serde::de::DeserializeOwned;

use crate::app::{AppState, Audit};
use crate::problem::{Problem, ProblemKind};

/// The authenticated, rate-limited caller of a request.
#[derive(Debug, Clone)]
pub(crate) struct Caller {
    pub(crate) principal: Principal,
    pub(crate) audit: Audit,
}

impl FromRequestParts<AppState> for Caller {
    type Rejection = Problem;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Problem> {
        let audit = parts.extensions.get::<Audit>().cloned().unwrap_or_default();
        let principal = state.inner.auth.authenticate(&parts.headers).await?;
        if let Err(wait) = state.rate_limit(&principal) {
            // Turned away before acting: counted, not audited (a key's own flood must not grow the log).
            state.inner.metrics.rejected("principal_rate_limited");
            return Err(Problem::rate_limited(wait, |secs| {
                format!("{} made too many requests; retry in {secs} s", principal.id())
            }));
        }
        audit.actor(principal.id());
        Ok(Self { principal, audit })
    }
}

/// An optional JSON body: an empty body is `T::default()`; anything else is read as [`ApiJson`] reads it.
#[derive(Debug)]
pub(crate) struct OptionalJson<T>(pub(crate) T);

impl<T: DeserializeOwned + Default, S: Send + Sync> FromRequest<S> for OptionalJson<T> {
    type Rejection = Problem;

    async fn from_request(request: Request, state: &S) -> Result<Self, Problem> {
        let empty = request.headers().get(header::CONTENT_LENGTH).is_some_and(|v| v.as_bytes() == b"0")
            || (request.headers().get(header::CONTENT_TYPE).is_none()
                && request.headers().get(header::TRANSFER_ENCODING).is_none()
                && request.headers().get(header::CONTENT_LENGTH).is_none());
        if empty {
            return Ok(Self(T::default()));
        }
        ApiJson::<T>::from_request(request, state).await.map(|ApiJson(v)| Self(v))
    }
}

/// A JSON body: 415 unless `application/json`, 413 over the limit, 400 with the offending field otherwise.
#[derive(Debug)]
pub(crate) struct ApiJson<T>(pub(crate) T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for ApiJson<T> {
    type Rejection = Problem;

    async fn from_request(request: Request, state: &S) -> Result<Self, Problem> {
        let is_json = request
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(';').next())
            .map(|v| v.trim().to_ascii_lowercase())
            .is_some_and(|v| v == "application/json" || (v.starts_with("application/") && v.ends_with("+json")));
        if !is_json {
            return Err(Problem::new(
                ProblemKind::UnsupportedMediaType,
                "send the body as Content-Type: application/json",
            ));
        }
        let bytes = Bytes::from_request(request, state).await.map_err(|e| {
            if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
                Problem::new(ProblemKind::PayloadTooLarge, "the body is over the 1 MiB limit")
            } else {
                Problem::invalid_field("body", format!("the body could not be read: {e}"))
            }
        })?;
        parse_json(&bytes).map(Self)
    }
}

/// Parses a JSON body; a problem names the path of the offending field when serde knows it. A field the body's type
/// does not know is refused with its path (`strategy.paused`), though the types themselves read tolerantly.
pub(crate) fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, Problem> {
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let mut unknown: Vec<String> = Vec::new();
    let value = serde_ignored::deserialize(&mut de, |path| unknown.push(field_path(&path.to_string())))
        .and_then(|v: T| de.end().map(|()| v));
    if let (Ok(_), Some(path)) = (&value, unknown.first()) {
        let name = path.rsplit('.').next().unwrap_or(path);
        return Err(Problem::invalid_field(path, format!("unknown field `{name}`")));
    }
    value.map_err(|e| {
        let message = e.to_string();
        let field = ["unknown field `", "missing field `"]
            .iter()
            .find_map(|marker| message.split_once(marker))
            .and_then(|(_, rest)| rest.split_once('`'))
            .map_or_else(|| "body".to_owned(), |(name, _)| name.to_owned());
        Problem::invalid_field(&field, clean_serde_message(&message))
    })
}

/// A path as `serde_ignored` writes it (`strategy.?.steps.0.pauze`) in the API's form (`strategy.steps[0].pauze`).
fn field_path(raw: &str) -> String {
    let mut out = String::new();
    for segment in raw.split('.').filter(|s| *s != "?") {
        if !segment.is_empty() && segment.bytes().all(|b| b.is_ascii_digit()) {
            out.push_str(&format!("[{segment}]"));
        } else {
            if !out.is_empty() {
                out.push('.');
            }
            out.push_str(segment);
        }
    }
    out
}

/// Serde's message without the line and column of a body the caller cannot see formatted.
fn clean_serde_message(message: &str) -> String {
    match message.rsplit_once(" at line ") {
        Some((head, _)) => head.to_owned(),
        None => message.to_owned(),
    }
}

/// Query parameters, each checked with a field error.
#[derive(Debug, Default)]
pub(crate) struct Params(pub(crate) HashMap<String, String>);

impl<S: Send + Sync> FromRequestParts<S> for Params {
    type Rejection = Problem;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Problem> {
        let Query(map) = Query::<HashMap<String, String>>::from_request_parts(parts, state)
            .await
            .map_err(|e| Problem::invalid_field("query", e.body_text()))?;
        Ok(Self(map))
    }
}

impl Params {
    pub(crate) fn get(&self, name: &str) -> Option<&str> {
        self.0.get(name).map(String::as_str).filter(|v| !v.is_empty())
    }

    /// `limit` (1..=500, default 50) and `cursor`.
    pub(crate) fn page(&self) -> Result<PageRequest, Problem> {
        let limit = match self.get("limit") {
            None => 50,
            Some(v) => v
                .parse::<usize>()
                .ok()
                .filter(|n| (1..=500).contains(n))
                .ok_or_else(|| Problem::invalid_field("limit", "use a whole number from 1 to 500"))?,
        };
        Ok(PageRequest { limit, cursor: self.get("cursor").map(str::to_owned) })
    }

    /// A parsed parameter, with a field error naming it.
    pub(crate) fn parse<T: std::str::FromStr>(&self, name: &str, rule: &str) -> Result<Option<T>, Problem> {
        self.get(name).map(|v| v.parse::<T>().map_err(|_| Problem::invalid_field(name, rule.to_owned()))).transpose()
    }
}

/// `If-Match: "12"` (quoted or bare, optionally weak) as a revision.
pub(crate) fn if_match(headers: &HeaderMap) -> Result<Option<Revision>, Problem> {
    let Some(value) = headers.get(header::IF_MATCH) else { return Ok(None) };
    let text = value.to_str().unwrap_or_default().trim();
    let text = text.strip_prefix("W/").unwrap_or(text);
    let text = text.strip_prefix('"').and_then(|t| t.strip_suffix('"')).unwrap_or(text);
    text.parse::<u64>()
        .map(|n| Some(Revision::new(n)))
        .map_err(|_| Problem::invalid_field("If-Match", "use the revision from an ETag, like \"12\""))
}

/// `Idempotency-Key` (quoted or bare, at most 255 characters).
pub(crate) fn idempotency_key(headers: &HeaderMap) -> Result<Option<IdempotencyKey>, Problem> {
    let Some(value) = headers.get("idempotency-key") else { return Ok(None) };
    let text = value.to_str().unwrap_or_default().trim();
    let text = text.strip_prefix('"').and_then(|t| t.strip_suffix('"')).unwrap_or(text);
    IdempotencyKey::new(text).map(Some).map_err(|e| Problem::invalid_field("Idempotency-Key", e.rule()))
}

/// The strong ETag of a revision.
pub(crate) fn etag(revision: Revision) -> HeaderValue {
    HeaderValue::from_str(&format!("\"{revision}\"")).unwrap_or(HeaderValue::from_static("\"0\""))
}

/// Whether `If-None-Match` already names `revision` (answer 304).
pub(crate) fn not_modified(headers: &HeaderMap, revision: Revision) -> bool {
    let tag = format!("\"{revision}\"");
    headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|t| t.trim().trim_start_matches("W/") == tag || t.trim() == "*"))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::{field_path, parse_json};

    #[test]
    fn ignored_paths_read_as_the_apis_field_names() {
        assert_eq!(field_path("colour"), "colour");
        assert_eq!(field_path("strategy.?.pauze"), "strategy.pauze");
        assert_eq!(field_path("strategy.?.steps.1.wait"), "strategy.steps[1].wait");
    }

    #[test]
    fn an_unknown_field_in_a_canary_step_is_refused_with_its_index() {
        let body = br#"{"environment": "prod", "service": "web", "version": "1",
            "strategy": {"type": "canary", "steps": [{"percent": 10}, {"percent": 50, "wait": "1m"}]}}"#;
        let refused = parse_json::<deploy_core::DeploymentRequest>(body).unwrap_err();
        assert_eq!(refused.errors[0].field, "strategy.steps[1].wait");
        let known = br#"{"environment": "prod", "service": "web", "version": "1",
            "strategy": {"type": "canary", "steps": [{"percent": 10, "verify_for": "1m"}]}}"#;
        assert!(parse_json::<deploy_core::DeploymentRequest>(known).is_ok());
    }
}
