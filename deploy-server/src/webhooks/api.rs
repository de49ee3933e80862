//! `/v1/webhooks`: subscriptions, their delivery log and redelivery (administrators only).

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use base64::Engine as _;
use deploy_core::{DeliveryStatus, DeploymentId, EnvironmentPattern, EventType, WebhookDelivery, WebhookSubscription};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::app::AppState;
use crate::extract::{ApiJson, Caller, Params};
use crate::problem::{Problem, ProblemKind};
use crate::routes::{ApiResult, list_body, require_admin};

/// The prefix of subscription secrets (Standard Webhooks).
pub const SECRET_PREFIX: &str = "whsec_";

/// The longest subscription URL accepted.
const MAX_URL_LEN: usize = 2048;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct NewWebhook {
    url: String,
    #[serde(default = "all_events")]
    events: Vec<String>,
    #[serde(default)]
    environments: Vec<EnvironmentPattern>,
}

fn all_events() -> Vec<String> {
    vec!["*".to_owned()]
}

/// One delivery as `GET /v1/webhooks/{id}/deliveries` lists it.
#[derive(Debug, Serialize)]
struct DeliveryView<'a> {
    id: &'a str,
    event_type: EventType,
    deployment_id: DeploymentId,
    status: DeliveryStatus,
    attempts: u32,
    last_status_code: Option<u16>,
    #[serde(with = "time::serde::rfc3339::option")]
    next_attempt_at: Option<deploy_core::Timestamp>,
    #[serde(with = "time::serde::rfc3339::option")]
    delivered_at: Option<deploy_core::Timestamp>,
}

impl<'a> From<&'a WebhookDelivery> for DeliveryView<'a> {
    fn from(d: &'a WebhookDelivery) -> Self {
        Self {
            id: &d.id,
            event_type: d.event_type,
            deployment_id: d.deployment_id,
            status: d.status,
            attempts: d.attempts,
            last_status_code: d.last_status_code,
            next_attempt_at: d.next_attempt_at,
            delivered_at: d.delivered_at,
        }
    }
}

/// A new signing secret: `whsec_` and 32 random bytes in standard base64.
///
/// # Errors
/// When the operating system's random source fails.
pub fn generate_secret() -> Result<String, getrandom::Error> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes)?;
    Ok(format!("{SECRET_PREFIX}{}", base64::engine::general_purpose::STANDARD.encode(bytes)))
}

/// Checks a subscription request; every problem is reported with its field.
fn validate(new: &NewWebhook) -> Result<(), Problem> {
    let mut errors = deploy_core::ValidationErrors::default();
    match reqwest::Url::parse(&new.url) {
        _ if new.url.len() > MAX_URL_LEN => errors.push("url", format!("at most {MAX_URL_LEN} characters")),
        Ok(url) if !matches!(url.scheme(), "http" | "https") => {
            errors.push("url", "use an http or https URL".to_owned());
        }
        Ok(url) if url.host().is_none() => errors.push("url", "the URL needs a host".to_owned()),
        Ok(url) if !url.username().is_empty() || url.password().is_some() => {
            errors.push("url", "credentials do not belong in the URL; verify the signature instead".to_owned());
        }
        Ok(_) => {}
        Err(e) => errors.push("url", format!("not an absolute URL: {e}")),
    }
    if new.events.is_empty() {
        errors.push("events", "name at least one event type or pattern (\"*\" for all)".to_owned());
    }
    for (i, pattern) in new.events.iter().enumerate() {
        if !EventType::ALL.iter().any(|t| t.matches_pattern(pattern)) {
            errors.push(
                "events",
                format!("entry {i} ({pattern:?}) matches no event type (e.g. \"deployment.*\", \"target.updated\")"),
            );
        }
    }
    if errors.is_empty() { Ok(()) } else { Err(Problem::validation(&errors)) }
}

fn webhook_id(raw: &str) -> Result<Uuid, Problem> {
    Uuid::parse_str(raw).map_err(|_| Problem::invalid_field("id", "not a webhook id"))
}

async fn find(state: &AppState, id: Uuid) -> Result<WebhookSubscription, Problem> {
    let subs = state.inner.store.list_webhooks().await?;
    subs.into_iter()
        .find(|s| s.id == id)
        .ok_or_else(|| Problem::new(ProblemKind::NotFound, format!("webhook {id} not found")))
}

#[utoipa::path(
    post,
    path = "/v1/webhooks",
    tag = "webhooks",
    request_body(content = crate::openapi::NewWebhookDoc, content_type = "application/json"),
    responses(
        (status = 201, description = "Created; `secret` is shown only here", body = crate::openapi::WebhookDoc, headers(("Location" = String, description = "The subscription"))),
        (status = 400, description = "Invalid URL, event pattern or environment pattern", body = crate::openapi::ProblemDoc, content_type = "application/problem+json"),
        crate::openapi::BodyProblems,
        crate::openapi::CommonProblems,
    )
)]
pub(crate) async fn create_webhook(
    State(state): State<AppState>,
    caller: Caller,
    ApiJson(new): ApiJson<NewWebhook>,
) -> ApiResult {
    caller.audit.set("webhook.create", "webhooks", None);
    require_admin(&caller)?;
    validate(&new)?;
    if let Ok(url) = reqwest::Url::parse(&new.url)
        && let Err(why) = crate::webhooks::guard::check_url(&state.inner.webhook_guard, &url).await
    {
        return Err(Problem::invalid_field("url", why));
    }
    let secret = generate_secret().map_err(|e| Problem::internal(&e))?;
    let id = Uuid::now_v7();
    let stored_secret = match &state.inner.webhook_key {
        Some(key) => key.seal(id, &secret).map_err(|e| Problem::internal(&e))?,
        None => secret.clone(),
    };
    let subscription = WebhookSubscription {
        id,
        url: new.url,
        events: new.events,
        environments: new.environments,
        active: true,
        disabled_reason: None,
        created_at: state.inner.orchestrator.clock().now(),
        secret: stored_secret,
    };
    let created = state.inner.store.create_webhook(subscription).await?;
    caller.audit.set("webhook.create", format!("webhooks/{}", created.id), None);
    crate::routes::created_with_secret(&created, "secret", secret, &format!("/v1/webhooks/{}", created.id))
}

#[utoipa::path(
    get,
    path = "/v1/webhooks",
    tag = "webhooks",
    responses(
        (status = 200, description = "Every subscription, newest first, without secrets", body = crate::openapi::WebhookListDoc),
        crate::openapi::CommonProblems,
    )
)]
pub(crate) async fn list_webhooks(State(state): State<AppState>, caller: Caller) -> ApiResult {
    require_admin(&caller)?;
    let mut subs = state.inner.store.list_webhooks().await?;
    subs.sort_by_key(|s| std::cmp::Reverse(s.id));
    Ok(list_body(&subs, None))
}

#[utoipa::path(
    get,
    path = "/v1/webhooks/{id}",
    tag = "webhooks",
    params(("id" = String, Path, description = "Subscription id")),
    responses(
        (status = 200, description = "The subscription, without its secret", body = crate::openapi::WebhookDoc),
        (status = 400, description = "Invalid id", body = crate::openapi::ProblemDoc, content_type = "application/problem+json"),
        (status = 404, description = "No such subscription", body = crate::openapi::ProblemDoc, content_type = "application/problem+json"),
        crate::openapi::CommonProblems,
    )
)]
pub(crate) async fn get_webhook(State(state): State<AppState>, Path(id): Path<String>, caller: Caller) -> ApiResult {
    require_admin(&caller)?;
    let sub = find(&state, webhook_id(&id)?).await?;
    Ok(Json(sub).into_response())
}

#[utoipa::path(
    delete,
    path = "/v1/webhooks/{id}",
    tag = "webhooks",
    params(("id" = String, Path, description = "Subscription id")),
    responses(
        (status = 204, description = "Deleted with its pending deliveries"),
        (status = 400, description = "Invalid id", body = crate::openapi::ProblemDoc, content_type = "application/problem+json"),
        (status = 404, description = "No such subscription", body = crate::openapi::ProblemDoc, content_type = "application/problem+json"),
        crate::openapi::CommonProblems,
    )
)]
pub(crate) async fn delete_webhook(State(state): State<AppState>, Path(id): Path<String>, caller: Caller) -> ApiResult {
    caller.audit.set("webhook.delete", format!("webhooks/{id}"), None);
    require_admin(&caller)?;
    state.inner.store.delete_webhook(webhook_id(&id)?).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

#[utoipa::path(
    get,
    path = "/v1/webhooks/{id}/deliveries",
    tag = "webhooks",
    params(("id" = String, Path, description = "Subscription id"), ("limit" = Option<u32>, Query, description = "1 to 500, default 50"), ("cursor" = Option<String>, Query, description = "From the previous page")),
    responses(
        (status = 200, description = "Deliveries, newest first", body = crate::openapi::DeliveryListDoc),
        (status = 400, description = "Invalid id, limit or cursor", body = crate::openapi::ProblemDoc, content_type = "application/problem+json"),
        (status = 404, description = "No such subscription", body = crate::openapi::ProblemDoc, content_type = "application/problem+json"),
        crate::openapi::CommonProblems,
    )
)]
pub(crate) async fn list_deliveries(
    State(state): State<AppState>,
    Path(id): Path<String>,
    caller: Caller,
    params: Params,
) -> ApiResult {
    require_admin(&caller)?;
    let id = webhook_id(&id)?;
    let page = state.inner.store.list_deliveries(id, &params.page()?).await?;
    let items: Vec<DeliveryView<'_>> = page.items.iter().map(DeliveryView::from).collect();
    Ok(list_body(&items, page.next_cursor))
}

#[utoipa::path(
    post,
    path = "/v1/webhooks/{id}/deliveries/{delivery_id}/redeliver",
    tag = "webhooks",
    params(("id" = String, Path, description = "Subscription id"), ("delivery_id" = String, Path, description = "Delivery id (its `webhook-id`)")),
    responses(
        (status = 202, description = "Pending again, due now, with the same `webhook-id`", body = crate::openapi::DeliveryDoc),
        (status = 400, description = "Invalid id", body = crate::openapi::ProblemDoc, content_type = "application/problem+json"),
        (status = 404, description = "No such subscription or delivery", body = crate::openapi::ProblemDoc, content_type = "application/problem+json"),
        (status = 409, description = "The subscription is disabled", body = crate::openapi::ProblemDoc, content_type = "application/problem+json"),
        crate::openapi::CommonProblems,
    )
)]
pub(crate) async fn redeliver(
    State(state): State<AppState>,
    Path((id, delivery_id)): Path<(String, String)>,
    caller: Caller,
) -> ApiResult {
    caller.audit.set("webhook.redeliver", format!("webhooks/{id}/deliveries/{delivery_id}"), None);
    require_admin(&caller)?;
    let sub = find(&state, webhook_id(&id)?).await?;
    if !sub.active {
        let why = sub.disabled_reason.as_deref().unwrap_or("disabled");
        return Err(Problem::new(ProblemKind::WebhookDisabled, format!("webhook {} is disabled: {why}", sub.id)));
    }
    let now = state.inner.orchestrator.clock().now();
    let delivery = state.inner.store.redeliver(sub.id, &delivery_id, now).await?;
    state.inner.webhooks_wake.notify_one();
    Ok((StatusCode::ACCEPTED, Json(DeliveryView::from(&delivery))).into_response())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn new(url: &str, events: &[&str]) -> NewWebhook {
        NewWebhook { url: url.into(), events: events.iter().map(|e| (*e).to_owned()).collect(), environments: vec![] }
    }

    #[test]
    fn secrets_are_standard_webhooks_secrets_and_differ() {
        let (a, b) = (generate_secret().unwrap(), generate_secret().unwrap());
        assert_ne!(a, b);
        let raw = base64::engine::general_purpose::STANDARD.decode(a.strip_prefix(SECRET_PREFIX).unwrap()).unwrap();
        assert_eq!(raw.len(), 32);
    }

    #[test]
    fn validation_names_every_bad_field() {
        assert!(validate(&new("https://example.com/hook", &["deployment.*", "target.updated"])).is_ok());
        assert!(validate(&new("http://127.0.0.1:9/h", &["*"])).is_ok());
        for (url, events) in [
            ("ftp://example.com/", &["*"][..]),
            ("/relative", &["*"][..]),
            ("https://user:pw@example.com/", &["*"][..]),
            ("https://example.com/", &[][..]),
            ("https://example.com/", &["deploy.*"][..]),
            ("https://example.com/", &["deployment.finished"][..]),
        ] {
            assert!(validate(&new(url, events)).is_err(), "{url} {events:?}");
        }
    }
}
