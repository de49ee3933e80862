//! Verifying `deployd`'s webhook deliveries (Standard Webhooks).
//!
//! Each delivery is a `POST` with `webhook-id`, `webhook-timestamp` and `webhook-signature` headers. The signature is
//! `v1,` and the base64 HMAC-SHA256, keyed with the subscription's secret, of `"{id}.{timestamp}.{body}"`. [`verify`]
//! checks it in constant time, refuses a timestamp more than [`TOLERANCE`] away from now (so a captured delivery
//! cannot be replayed later), and parses the body.
//!
//! A delivery may arrive more than once (retries are at least once): deduplicate on [`WebhookEvent`]'s id, the
//! `webhook-id` header, which is the same on every attempt.

use std::time::Duration;

use http::HeaderMap;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use subtle::ConstantTimeEq as _;

/// How far a delivery's timestamp may be from the receiver's clock.
pub const TOLERANCE: Duration = Duration::from_secs(5 * 60);

/// The header holding the delivery id, the same on every attempt.
pub const HEADER_ID: &str = "webhook-id";
/// The header holding the attempt's Unix timestamp.
pub const HEADER_TIMESTAMP: &str = "webhook-timestamp";
/// The header holding the signatures (`v1,<base64>`, space-separated).
pub const HEADER_SIGNATURE: &str = "webhook-signature";

/// Why a delivery was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum VerifyError {
    /// A Standard Webhooks header is missing.
    #[error("missing header {0}")]
    MissingHeader(&'static str),
    /// A header is not valid text, or the timestamp is not a number.
    #[error("invalid header {0}")]
    InvalidHeader(&'static str),
    /// The secret is not `whsec_` followed by base64.
    #[error("the webhook secret is not a whsec_ secret")]
    InvalidSecret,
    /// The timestamp is more than [`TOLERANCE`] in the past.
    #[error("the delivery's timestamp is too old")]
    TimestampTooOld,
    /// The timestamp is more than [`TOLERANCE`] in the future.
    #[error("the delivery's timestamp is in the future")]
    TimestampInFuture,
    /// No signature matches.
    #[error("no valid signature")]
    InvalidSignature,
    /// The signature is valid but the body is not the JSON `deployd` sends.
    #[error("the body is not a webhook event: {0}")]
    InvalidBody(String),
}

/// A verified delivery's body: `{"type", "timestamp", "data"}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WebhookEvent<T = serde_json::Value> {
    /// The delivery id (`webhook-id`), the same on every attempt: deduplicate on it.
    #[serde(skip)]
    pub id: String,
    /// The event type, `deployment.succeeded`, `target.updated`, ...
    #[serde(rename = "type")]
    pub event_type: String,
    /// When the event happened (RFC 3339).
    pub timestamp: String,
    /// The deployment as it was then.
    pub data: T,
}

/// Verifies a delivery against `secret` and the current time, and parses its body.
///
/// # Errors
/// [`VerifyError`] says why the delivery must be refused (answer 400 or 401 to it).
pub fn verify<T: DeserializeOwned>(
    secret: &str,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<WebhookEvent<T>, VerifyError> {
    verify_at(secret, headers, body, time::OffsetDateTime::now_utc().unix_timestamp())
}

/// [`verify`] with the receiver's clock given as a Unix timestamp.
///
/// # Errors
/// As [`verify`].
pub fn verify_at<T: DeserializeOwned>(
    secret: &str,
    headers: &HeaderMap,
    body: &[u8],
    now: i64,
) -> Result<WebhookEvent<T>, VerifyError> {
    let id = header(headers, HEADER_ID)?;
    let signatures = header(headers, HEADER_SIGNATURE)?;
    let timestamp: i64 =
        header(headers, HEADER_TIMESTAMP)?.trim().parse().map_err(|_| VerifyError::InvalidHeader(HEADER_TIMESTAMP))?;
    let tolerance = i64::try_from(TOLERANCE.as_secs()).unwrap_or(i64::MAX);
    if now.saturating_sub(timestamp) > tolerance {
        return Err(VerifyError::TimestampTooOld);
    }
    if timestamp.saturating_sub(now) > tolerance {
        return Err(VerifyError::TimestampInFuture);
    }
    let signer = standardwebhooks::Webhook::new(secret).map_err(|_| VerifyError::InvalidSecret)?;
    let expected = signer.sign(id, timestamp, body).map_err(|_| VerifyError::InvalidSignature)?;
    let expected = expected.strip_prefix("v1,").ok_or(VerifyError::InvalidSignature)?.as_bytes();
    let matches = signatures
        .split(' ')
        .filter_map(|s| s.strip_prefix("v1,"))
        .fold(false, |found, candidate| found | bool::from(candidate.as_bytes().ct_eq(expected)));
    if !matches {
        return Err(VerifyError::InvalidSignature);
    }
    let mut event: WebhookEvent<T> =
        serde_json::from_slice(body).map_err(|e| VerifyError::InvalidBody(e.to_string()))?;
    id.clone_into(&mut event.id);
    Ok(event)
}

fn header<'a>(headers: &'a HeaderMap, name: &'static str) -> Result<&'a str, VerifyError> {
    headers.get(name).ok_or(VerifyError::MissingHeader(name))?.to_str().map_err(|_| VerifyError::InvalidHeader(name))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use http::HeaderValue;

    use super::*;

    // The Standard Webhooks test vector.
    const SECRET: &str = "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD";
    const ID: &str = "msg_27UH4WbU6Z5A5EzD8u03UvzRbpk";
    const TS: i64 = 1_649_367_553;
    const BODY: &[u8] = br#"{"email":"test@example.com","username":"test_user"}"#;
    const SIGNATURE: &str = "v1,tZ1I4/hDygAJgO5TYxiSd6Sd0kDW6hPenDe+bTa3Kkw=";

    fn headers(id: &str, ts: &str, sig: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(HEADER_ID, HeaderValue::from_str(id).unwrap());
        h.insert(HEADER_TIMESTAMP, HeaderValue::from_str(ts).unwrap());
        h.insert(HEADER_SIGNATURE, HeaderValue::from_str(sig).unwrap());
        h
    }

    fn check(secret: &str, h: &HeaderMap, body: &[u8], now: i64) -> Result<(), VerifyError> {
        // The vector's body is not a webhook event: a signature error comes first, a body error means it verified.
        match verify_at::<serde_json::Value>(secret, h, body, now) {
            Err(VerifyError::InvalidBody(_)) => Ok(()),
            Ok(_) => Ok(()),
            Err(e) => Err(e),
        }
    }

    #[test]
    fn the_standard_webhooks_vector_verifies() {
        assert_eq!(check(SECRET, &headers(ID, &TS.to_string(), SIGNATURE), BODY, TS), Ok(()));
        let several = format!("v1,bm9wZQ== v2,abc {SIGNATURE}");
        assert_eq!(check(SECRET, &headers(ID, &TS.to_string(), &several), BODY, TS), Ok(()), "any one v1 matches");
        let within = TS + 300;
        assert_eq!(check(SECRET, &headers(ID, &TS.to_string(), SIGNATURE), BODY, within), Ok(()));
    }

    #[test]
    fn the_vector_altered_in_any_way_is_refused() {
        let ts = TS.to_string();
        let bad = VerifyError::InvalidSignature;
        assert_eq!(
            check(SECRET, &headers(ID, &ts, SIGNATURE), br#"{"email":"test@example.com"}"#, TS),
            Err(bad.clone())
        );
        assert_eq!(check(SECRET, &headers("msg_other", &ts, SIGNATURE), BODY, TS), Err(bad.clone()));
        assert_eq!(check(SECRET, &headers(ID, &(TS + 1).to_string(), SIGNATURE), BODY, TS), Err(bad.clone()));
        let other_secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
        assert_eq!(check(other_secret, &headers(ID, &ts, SIGNATURE), BODY, TS), Err(bad.clone()));
        let v2_only = SIGNATURE.replacen("v1,", "v2,", 1);
        assert_eq!(check(SECRET, &headers(ID, &ts, &v2_only), BODY, TS), Err(bad.clone()), "only v1 counts");
        assert_eq!(check(SECRET, &headers(ID, &ts, "v1,"), BODY, TS), Err(bad.clone()), "an empty signature");
        let truncated = &SIGNATURE[..SIGNATURE.len() - 2];
        assert_eq!(check(SECRET, &headers(ID, &ts, truncated), BODY, TS), Err(bad));
    }

    #[test]
    fn timestamps_outside_five_minutes_are_refused() {
        let h = headers(ID, &TS.to_string(), SIGNATURE);
        assert_eq!(check(SECRET, &h, BODY, TS + 301), Err(VerifyError::TimestampTooOld));
        assert_eq!(check(SECRET, &h, BODY, TS - 301), Err(VerifyError::TimestampInFuture));
        assert_eq!(
            check(SECRET, &headers(ID, "yesterday", SIGNATURE), BODY, TS),
            Err(VerifyError::InvalidHeader(HEADER_TIMESTAMP))
        );
        assert_eq!(
            verify::<serde_json::Value>(SECRET, &h, BODY).unwrap_err(),
            VerifyError::TimestampTooOld,
            "against the real clock the 2022 vector is stale"
        );
    }

    #[test]
    fn missing_headers_and_bad_secrets_are_named() {
        for name in [HEADER_ID, HEADER_TIMESTAMP, HEADER_SIGNATURE] {
            let mut h = headers(ID, &TS.to_string(), SIGNATURE);
            h.remove(name);
            assert_eq!(check(SECRET, &h, BODY, TS), Err(VerifyError::MissingHeader(name)));
        }
        assert_eq!(
            check("whsec_%%%", &headers(ID, &TS.to_string(), SIGNATURE), BODY, TS),
            Err(VerifyError::InvalidSecret)
        );
    }

    #[test]
    fn a_verified_event_is_parsed_with_its_id() {
        let body = br#"{"type":"deployment.succeeded","timestamp":"2026-01-01T00:00:00Z","data":{"id":"d-1"}}"#;
        let signer = standardwebhooks::Webhook::new(SECRET).unwrap();
        let sig = signer.sign(ID, TS, body).unwrap();
        let event: WebhookEvent = verify_at(SECRET, &headers(ID, &TS.to_string(), &sig), body, TS).unwrap();
        assert_eq!((event.id.as_str(), event.event_type.as_str()), (ID, "deployment.succeeded"));
        assert_eq!(event.data["id"], "d-1");
        let not_event = verify_at::<serde_json::Value>(SECRET, &headers(ID, &TS.to_string(), SIGNATURE), BODY, TS);
        assert!(matches!(not_event, Err(VerifyError::InvalidBody(_))), "{not_event:?}");
    }
}
