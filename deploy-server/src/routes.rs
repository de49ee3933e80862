//! The handlers of every endpoint of `design/api.md`.

use std::convert::Infallible;
use std::time::Duration;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use deploy_core::{
    Action, DeploymentFilter, DeploymentId, DeploymentRequest, DeploymentStatus, EnvironmentName, EnvironmentPattern,
    EnvironmentSpec, Event, PageRequest, Role, ServiceName, Submission,
};
use futures::StreamExt as _;
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::app::AppState;
use crate::auth::{generate_key, key_record};
use crate::extract::{ApiJson, Caller, OptionalJson, Params, etag, idempotency_key, if_match, not_modified};
use crate::metrics::Gauges;
use crate::problem::{Problem, ProblemKind, action_name};

pub(crate) type ApiResult = Result<Response, Problem>;

fn env_name(raw: &str) -> Result<EnvironmentName, Problem> {
    EnvironmentName::new(raw).map_err(|e| Problem::invalid_field("env", e.rule()))
}

fn deployment_id(raw: &str) -> Result<DeploymentId, Problem> {
    raw.parse().map_err(|_| Problem::invalid_field("id", "not a deployment id (a UUIDv7)"))
}

fn forbidden(caller: &Caller, action: Action, where_: &str) -> Problem {
    Problem::new(ProblemKind::Forbidden, format!("{} may not {} {where_}", caller.principal.id(), action_name(action)))
}

/// Administrative actions are allowed only to admins whose patterns cover every environment.
pub(crate) fn require_admin(caller: &Caller) -> Result<(), Problem> {
    let covers_all = caller.principal.environments().iter().any(|p| p.as_str() == "*");
    if caller.principal.role().allows(Action::Administer) && covers_all {
        Ok(())
    } else {
        Err(forbidden(caller, Action::Administer, "on this server (admin role with environments [\"*\"] needed)"))
    }
}

/// `body` with its `ETag`, or 304 when `If-None-Match` already names `revision`.
fn conditional_get<T: Serialize>(headers: &HeaderMap, body: &T, revision: deploy_core::Revision) -> Response {
    let mut response = if not_modified(headers, revision) {
        StatusCode::NOT_MODIFIED.into_response()
    } else {
        Json(body).into_response()
    };
    response.headers_mut().insert(header::ETAG, etag(revision));
    response
}

pub(crate) fn list_body<T: Serialize>(items: &[T], next_cursor: Option<String>) -> Response {
    Json(json!({"items": items, "next_cursor": next_cursor})).into_response()
}

/// `201 Created` with `Location: location` and `resource` as the body, plus a credential shown only in this answer
/// (`field`: an API key, a webhook secret), which is never stored in the clear.
pub(crate) fn created_with_secret<T: Serialize>(
    resource: &T,
    field: &str,
    secret: String,
    location: &str,
) -> ApiResult {
    let mut body = serde_json::to_value(resource).map_err(|e| Problem::internal(&e))?;
    if let Some(map) = body.as_object_mut() {
        map.insert(field.to_owned(), secret.into());
    }
    let mut response = (StatusCode::CREATED, Json(body)).into_response();
    if let Ok(v) = HeaderValue::from_str(location) {
        response.headers_mut().insert(header::LOCATION, v);
    }
    Ok(response)
}

// ---------------------------------------------------------------------------------------------------------------
// Environments

#[utoipa::path(
    put,
    path = "/v1/environments/{env}",
    tag = "environments",
    params(("env" = String, Path, description = "Environment name"), ("If-Match" = Option<String>, Header, description = "Replace only at this revision")),
    request_body(content = crate::openapi::EnvironmentSpecDoc, content_type = "application/json"),
    responses(
        (status = 200, description = "Replaced", body = crate::openapi::EnvironmentDoc, headers(("ETag" = String, description = "The new revision"))),
        (status = 201, description = "Created", body = crate::openapi::EnvironmentDoc, headers(("ETag" = String, description = "The revision"), ("Location" = String, description = "The environment"))),
        (status = 400, description = "Invalid environment", body = crate::openapi::ProblemDoc, content_type = "application/problem+json"),
        (status = 412, description = "Stale If-Match", body = crate::openapi::ProblemDoc, content_type = "application/problem+json"),
        crate::openapi::BodyProblems,
        crate::openapi::CommonProblems,
    )
)]
pub(crate) async fn put_environment(
    State(state): State<AppState>,
    Path(env): Path<String>,
    caller: Caller,
    headers: HeaderMap,
    ApiJson(spec): ApiJson<EnvironmentSpec>,
) -> ApiResult {
    // The environment is named in the audit entry only once it is a valid name.
    let name = env_name(&env);
    caller.audit.set("environment.put", format!("environments/{env}"), name.as_ref().ok().map(ToString::to_string));
    let name = name?;
    let expected = if_match(&headers)?;
    let write = state.inner.orchestrator.put_environment(&caller.principal, &name, spec, expected).await?;
    let status = if write.created { StatusCode::CREATED } else { StatusCode::OK };
    let body = crate::paging::bounded(&write.environment, state.inner.config.targets_per_response)?;
    let mut response = (status, Json(body)).into_response();
    response.headers_mut().insert(header::ETAG, etag(write.environment.revision));
    if write.created
        && let Ok(v) = HeaderValue::from_str(&format!("/v1/environments/{name}"))
    {
        response.headers_mut().insert(header::LOCATION, v);
    }
    Ok(response)
}

#[utoipa::path(
    get,
    path = "/v1/environments/{env}",
    tag = "environments",
    params(("env" = String, Path, description = "Environment name"), ("If-None-Match" = Option<String>, Header, description = "Answer 304 if still at this revision")),
    responses(
        (status = 200, description = "The environment", body = crate::openapi::EnvironmentDoc, headers(("ETag" = String, description = "The revision"))),
        (status = 304, description = "Not modified"),
        (status = 400, description = "Invalid name", body = crate::openapi::ProblemDoc, content_type = "application/problem+json"),
        (status = 404, description = "No such environment", body = crate::openapi::ProblemDoc, content_type = "application/problem+json"),
        crate::openapi::CommonProblems,
    )
)]
pub(crate) async fn get_environment(
    State(state): State<AppState>,
    Path(env): Path<String>,
    caller: Caller,
    headers: HeaderMap,
) -> ApiResult {
    let name = env_name(&env)?;
    let environment = state.inner.orchestrator.environment(&caller.principal, &name).await?;
    let body = crate::paging::bounded(&environment, state.inner.config.targets_per_response)?;
    Ok(conditional_get(&headers, &body, environment.revision))
}

#[utoipa::path(
    get,
    path = "/v1/environments/{env}/targets",
    tag = "environments",
    params(("env" = String, Path, description = "Environment name"), ("limit" = Option<u32>, Query, description = "1 to 500, default 50"), ("cursor" = Option<String>, Query, description = "`targets_next_cursor`, or a page's `next_cursor`")),
    responses(
        (status = 200, description = "The environment's targets, in their order", body = crate::openapi::EnvironmentTargetListDoc),
        (status = 400, description = "Invalid name, limit or cursor (a cursor naming a target no longer there: start again)", body = crate::openapi::ProblemDoc, content_type = "application/problem+json"),
        (status = 404, description = "No such environment", body = crate::openapi::ProblemDoc, content_type = "application/problem+json"),
        crate::openapi::CommonProblems,
    )
)]
pub(crate) async fn environment_targets(
    State(state): State<AppState>,
    Path(env): Path<String>,
    caller: Caller,
    params: Params,
) -> ApiResult {
    let name = env_name(&env)?;
    let page = params.page()?;
    let environment = state.inner.orchestrator.environment(&caller.principal, &name).await?;
    let (items, next) =
        crate::paging::page_after(&environment.targets, |t| t.id.as_str(), page.cursor.as_deref(), page.limit)?;
    Ok(list_body(items, next))
}

#[utoipa::path(
    get,
    path = "/v1/environments",
    tag = "environments",
    params(("limit" = Option<u32>, Query, description = "1 to 500, default 50"), ("cursor" = Option<String>, Query, description = "From the previous page")),
    responses(
        (status = 200, description = "Environments the caller may read", body = crate::openapi::EnvironmentListDoc),
        (status = 400, description = "Invalid limit or cursor", body = crate::openapi::ProblemDoc, content_type = "application/problem+json"),
        crate::openapi::CommonProblems,
    )
)]
pub(crate) async fn list_environments(State(state): State<AppState>, caller: Caller, params: Params) -> ApiResult {
    let page = params.page()?;
    let mut out = state.inner.store.list_environments(&page).await?;
    out.items.retain(|e| caller.principal.authorize(Action::Read, &e.name).is_ok());
    let items: Vec<deploy_core::Environment> = out.items.into_iter().map(|e| e.shown_to(&caller.principal)).collect();
    Ok(list_body(&crate::paging::bounded_all(&items, state.inner.config.targets_per_response)?, out.next_cursor))
}

// ---------------------------------------------------------------------------------------------------------------
// Deployments

fn accepted(state: &AppState, deployment: &deploy_core::Deployment, replayed: bool) -> ApiResult {
    let body = crate::paging::bounded(deployment, state.inner.config.targets_per_response)?;
    let mut response = (StatusCode::ACCEPTED, Json(body)).into_response();
    let headers = response.headers_mut();
    if let Ok(v) = HeaderValue::from_str(&format!("/v1/deployments/{}", deployment.id())) {
        headers.insert(header::LOCATION, v);
    }
    headers.insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    headers.insert(header::ETAG, etag(deployment.revision()));
    if replayed {
        headers.insert("idempotent-replayed", HeaderValue::from_static("true"));
    }
    Ok(response)
}

#[utoipa::path(
    post,
    path = "/v1/deployments",
    tag = "deployments",
    params(("Idempotency-Key" = Option<String>, Header, description = "Same key and body: the same deployment (replayed)"), ("If-Match" = Option<String>, Header, description = "The environment revision the caller expects")),
    request_body(content = crate::openapi::DeploymentRequestDoc, content_type = "application/json"),
    responses(
        (status = 202, description = "Accepted and queued (or replayed, with `Idempotent-Replayed: true`)", body = crate::openapi::DeploymentDoc, headers(("Location" = String, description = "The deployment"), ("Retry-After" = String, description = "Poll interval"), ("Idempotent-Replayed" = Option<String>, description = "`true` on a replay"))),
        (status = 400, description = "Invalid request, or missing required Idempotency-Key", body = crate::openapi::ProblemDoc, content_type = "application/problem+json"),
        (status = 404, description = "Unknown environment", body = crate::openapi::ProblemDoc, content_type = "application/problem+json"),
        (status = 409, description = "Environment busy (policy reject) or idempotency key in flight", body = crate::openapi::ProblemDoc, content_type = "application/problem+json"),
        (status = 412, description = "Stale If-Match", body = crate::openapi::ProblemDoc, content_type = "application/problem+json"),
        (status = 422, description = "Idempotency key reused with another body, or a hard-coded secret", body = crate::openapi::ProblemDoc, content_type = "application/problem+json"),
        (status = 428, description = "The environment requires If-Match", body = crate::openapi::ProblemDoc, content_type = "application/problem+json"),
        crate::openapi::BodyProblems,
        crate::openapi::CommonProblems,
    )
)]
pub(crate) async fn submit(
    State(state): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
    ApiJson(request): ApiJson<DeploymentRequest>,
) -> ApiResult {
    let environment = deploy_core::EnvironmentName::new(request.environment.as_str()).ok().map(|e| e.to_string());
    caller.audit.set("deployment.submit", "deployments", environment);
    let key = idempotency_key(&headers)?;
    if key.is_none() && state.inner.config.require_idempotency_key {
        return Err(Problem::new(ProblemKind::IdempotencyKeyRequired, "send an Idempotency-Key header"));
    }
    let expected_revision = if_match(&headers)?;
    let _guard = match &key {
        Some(k) => Some(state.begin_key(caller.principal.id(), k.as_str()).ok_or_else(|| {
            Problem::new(
                ProblemKind::IdempotencyKeyInFlight,
                format!("a request with idempotency key {:?} is still being processed; retry shortly", k.as_str()),
            )
            .with_header(header::RETRY_AFTER, HeaderValue::from_static("1"))
        })?),
        None => None,
    };
    let submitted = state
        .inner
        .orchestrator
        .submit(&caller.principal, Submission { request, idempotency_key: key, expected_revision })
        .await?;
    caller.audit.set(
        "deployment.submit",
        format!("deployments/{}", submitted.deployment.id()),
        Some(submitted.deployment.environment().to_string()),
    );
    if !submitted.replayed {
        // Its `deployment.queued` event may have deliveries waiting.
        state.inner.webhooks_wake.notify_one();
    }
    accepted(&state, &submitted.deployment, submitted.replayed)
}

#[utoipa::path(
    get,
    path = "/v1/deployments/{id}",
    tag = "deployments",
    params(("id" = String, Path, description = "Deployment id (UUIDv7)"), ("If-None-Match" = Option<String>, Header, description = "Answer 304 if unchanged")),
    responses(
        (status = 200, description = "The deployment", body = crate::openapi::DeploymentDoc, headers(("ETag" = String, description = "The record revision"))),
        (status = 304, description = "Not modified"),
        (status = 400, description = "Invalid id", body = crate::openapi::ProblemDoc, content_type = "application/problem+json"),
        (status = 404, description = "No such deployment", body = crate::openapi::ProblemDoc, content_type = "application/problem+json"),
        crate::openapi::CommonProblems,
    )
)]
pub(crate) async fn get_deployment(
    State(state): State<AppState>,
    Path(id): Path<String>,
    caller: Caller,
    headers: HeaderMap,
) -> ApiResult {
    let id = deployment_id(&id)?;
    let deployment = state.inner.orchestrator.get(&caller.principal, id).await?;
    let body = crate::paging::bounded(&deployment, state.inner.config.targets_per_response)?;
    let mut response = conditional_get(&headers, &body, deployment.revision());
    if response.status() == StatusCode::OK && !deployment.status().is_terminal() {
        response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    }
    Ok(response)
}

#[utoipa::path(
    get,
    path = "/v1/deployments/{id}/targets",
    tag = "deployments",
    params(("id" = String, Path, description = "Deployment id (UUIDv7)"), ("limit" = Option<u32>, Query, description = "1 to 500, default 50"), ("cursor" = Option<String>, Query, description = "`targets_next_cursor`, or a page's `next_cursor`")),
    responses(
        (status = 200, description = "The deployment's targets, in rollout order", body = crate::openapi::TargetProgressListDoc),
        (status = 400, description = "Invalid id, limit or cursor", body = crate::openapi::ProblemDoc, content_type = "application/problem+json"),
        (status = 404, description = "No such deployment", body = crate::openapi::ProblemDoc, content_type = "application/problem+json"),
        crate::openapi::CommonProblems,
    )
)]
pub(crate) async fn deployment_targets(
    State(state): State<AppState>,
    Path(id): Path<String>,
    caller: Caller,
    params: Params,
) -> ApiResult {
    let id = deployment_id(&id)?;
    let page = params.page()?;
    let deployment = state.inner.orchestrator.get(&caller.principal, id).await?;
    let (items, next) =
        crate::paging::page_after(deployment.targets(), |t| t.id.as_str(), page.cursor.as_deref(), page.limit)?;
    Ok(list_body(items, next))
}

#[utoipa::path(
    get,
    path = "/v1/environments/{env}/history",
    tag = "environments",
    params(("env" = String, Path, description = "Environment name"), ("limit" = Option<u32>, Query, description = "1 to 500, default 50"), ("cursor" = Option<String>, Query, description = "From the previous page")),
    responses(
        (status = 200, description = "The releases that ran in the environment, newest first: who submitted each, how it ended, how long it ran", body = crate::openapi::ReleaseListDoc),
        (status = 400, description = "Invalid name or paging", body = crate::openapi::ProblemDoc, content_type = "application/problem+json"),
        (status = 404, description = "No such environment", body = crate::openapi::ProblemDoc, content_type = "application/problem+json"),
        crate::openapi::CommonProblems,
    )
)]
pub(crate) async fn history(
    State(state): State<AppState>,
    Path(env): Path<String>,
    caller: Caller,
    params: Params,
) -> ApiResult {
    let name = env_name(&env)?;
    let page = params.page()?;
    let out = state.inner.orchestrator.history(&caller.principal, &name, &page).await?;
    Ok(list_body(&out.items, out.next_cursor))
}

#[utoipa::path(
    get,
    path = "/v1/deployments",
    tag = "deployments",
    params(("environment" = Option<String>, Query, description = "Only this environment"), ("service" = Option<String>, Query, description = "Only this service"), ("status" = Option<String>, Query, description = "Only this status"), ("limit" = Option<u32>, Query, description = "1 to 500, default 50"), ("cursor" = Option<String>, Query, description = "From the previous page")),
    responses(
        (status = 200, description = "Deployments, newest first", body = crate::openapi::DeploymentListDoc),
        (status = 400, description = "Invalid filter", body = crate::openapi::ProblemDoc, content_type = "application/problem+json"),
        crate::openapi::CommonProblems,
    )
)]
pub(crate) async fn list_deployments(State(state): State<AppState>, caller: Caller, params: Params) -> ApiResult {
    let page = params.page()?;
    let filter = DeploymentFilter {
        environment: params.parse::<EnvironmentName>("environment", "not an environment name")?,
        service: params.parse::<ServiceName>("service", "not a service name")?,
        status: params
            .get("status")
            .map(|s| {
                serde_json::from_value::<DeploymentStatus>(serde_json::Value::String(s.to_owned()))
                    .map_err(|_| Problem::invalid_field("status", "not a deployment status (queued, in_progress, ...)"))
            })
            .transpose()?,
    };
    let out = state.inner.orchestrator.list(&caller.principal, &filter, &page).await?;
    Ok(list_body(&crate::paging::bounded_all(&out.items, state.inner.config.targets_per_response)?, out.next_cursor))
}

#[utoipa::path(
    get,
    path = "/v1/deployments/{id}/events",
    tag = "deployments",
    params(("id" = String, Path, description = "Deployment id"), ("after" = Option<u64>, Query, description = "Only events after this seq"), ("limit" = Option<u32>, Query, description = "1 to 500, default 50"), ("Accept" = Option<String>, Header, description = "`text/event-stream` for a live SSE stream"), ("Last-Event-ID" = Option<String>, Header, description = "Resume the stream after this seq")),
    responses(
        (status = 200, description = "Events as JSON, or as SSE (`id: <seq>`, `event: <type>`, `data: <event>`) closing after the terminal event", content((crate::openapi::EventListDoc = "application/json"), (String = "text/event-stream"))),
        (status = 400, description = "Invalid id or seq", body = crate::openapi::ProblemDoc, content_type = "application/problem+json"),
        (status = 404, description = "No such deployment", body = crate::openapi::ProblemDoc, content_type = "application/problem+json"),
        crate::openapi::CommonProblems,
    )
)]
pub(crate) async fn events(
    State(state): State<AppState>,
    Path(id): Path<String>,
    caller: Caller,
    headers: HeaderMap,
    params: Params,
) -> ApiResult {
    let id = deployment_id(&id)?;
    let after = params.parse::<u64>("after", "use a whole number (the last seq seen)")?.unwrap_or(0);
    let wants_stream =
        headers.get(header::ACCEPT).and_then(|v| v.to_str().ok()).is_some_and(|v| v.contains("text/event-stream"));
    if wants_stream {
        let resume =
            match headers.get("last-event-id") {
                Some(v) => v.to_str().ok().and_then(|v| v.trim().parse::<u64>().ok()).ok_or_else(|| {
                    Problem::invalid_field("Last-Event-ID", "use the id (seq) of the last event seen")
                })?,
                None => after,
            };
        return stream_events(&state, &caller, id, resume).await;
    }
    let limit = params.page()?.limit;
    let items = state.inner.orchestrator.events(&caller.principal, id, after, limit).await?;
    let next_after = items.last().map_or(after, |e| e.seq);
    Ok(Json(json!({"items": items, "next_after": next_after})).into_response())
}

async fn stream_events(state: &AppState, caller: &Caller, id: DeploymentId, after: u64) -> ApiResult {
    // May this caller read it at all (404 / 403 before anything is held open)?
    state.inner.orchestrator.get(&caller.principal, id).await?;
    let permit = state.inner.streams.open(&caller.principal).map_err(|refused| {
        state.inner.metrics.rejected("stream_limit");
        let detail = match refused {
            crate::streams::Refused::Principal(n) => {
                format!("{} already holds {n} event streams, the most one principal may; close one", caller.principal)
            }
            crate::streams::Refused::Total(n) => format!("this server holds {n} event streams, the most it allows"),
        };
        Problem::new(ProblemKind::RateLimited, detail).with_header(header::RETRY_AFTER, HeaderValue::from_static("5"))
    })?;
    let events = state.inner.streams.follow(&state.inner.orchestrator, &caller.principal, id, after, permit);
    let mut shutdown = state.inner.shutdown.clone();
    let stop = async move { shutdown.fired().await };
    let stream = events
        .take_while(|e| {
            if let Err(err) = e {
                tracing::warn!(error = %err, "event stream ended by a store error");
            }
            std::future::ready(e.is_ok())
        })
        .filter_map(|e: Result<Event, deploy_core::Error>| std::future::ready(e.ok()))
        .map(|e| {
            let data = serde_json::to_string(&e).unwrap_or_default();
            Ok::<_, Infallible>(SseEvent::default().id(e.seq.to_string()).event(e.event_type.as_str()).data(data))
        })
        .take_until(stop);
    let keep_alive = KeepAlive::new().interval(state.inner.config.sse_keep_alive).text("keep-alive");
    Ok(Sse::new(stream).keep_alive(keep_alive).into_response())
}

/// Names the environment in a request's audit entry from the answer itself: the deployment, or the refusal naming it.
/// A refusal that does not name it (`not-now`, `hardcoded-secret`, ...) is audited with the deployment's environment
/// too, read again for the purpose, so `?environment=` finds every call made about its deployments.
async fn audit_answer<T>(
    state: &AppState,
    caller: &Caller,
    action: &'static str,
    id: deploy_core::DeploymentId,
    answer: &Result<T, deploy_core::Error>,
    environment: impl Fn(&T) -> String,
) {
    let environment = match answer {
        Ok(v) => Some(environment(v)),
        Err(deploy_core::Error::Forbidden(f)) => Some(f.environment.clone()),
        Err(deploy_core::Error::Store(deploy_core::StoreError::NotFound { .. })) => None,
        Err(_) => state.inner.orchestrator.get(&caller.principal, id).await.ok().map(|d| d.environment().to_string()),
    };
    caller.audit.set(action, format!("deployments/{id}"), environment);
}

/// 202 with the deployment as stored and its `ETag`: the answer to a request recorded on a deployment.
fn recorded(state: &AppState, deployment: &deploy_core::Deployment) -> ApiResult {
    let body = crate::paging::bounded(deployment, state.inner.config.targets_per_response)?;
    let mut response = (StatusCode::ACCEPTED, Json(body)).into_response();
    response.headers_mut().insert(header::ETAG, etag(deployment.revision()));
    Ok(response)
}

#[utoipa::path(
    post,
    path = "/v1/deployments/{id}/cancel",
    tag = "deployments",
    params(("id" = String, Path, description = "Deployment id")),
    responses(
        (status = 202, description = "Cancel requested (idempotent while not terminal)", body = crate::openapi::DeploymentDoc),
        (status = 404, description = "No such deployment", body = crate::openapi::ProblemDoc, content_type = "application/problem+json"),
        (status = 409, description = "Already finished", body = crate::openapi::ProblemDoc, content_type = "application/problem+json"),
        crate::openapi::CommonProblems,
    )
)]
pub(crate) async fn cancel(State(state): State<AppState>, Path(id): Path<String>, caller: Caller) -> ApiResult {
    caller.audit.set("deployment.cancel", format!("deployments/{id}"), None);
    let id = deployment_id(&id)?;
    let cancelled = state.inner.orchestrator.cancel(&caller.principal, id).await;
    audit_answer(&state, &caller, "deployment.cancel", id, &cancelled, |d| d.environment().to_string()).await;
    let deployment = cancelled?;
    recorded(&state, &deployment)
}

#[utoipa::path(
    post,
    path = "/v1/deployments/{id}/rollback",
    tag = "deployments",
    params(("id" = String, Path, description = "Deployment id"), ("Idempotency-Key" = Option<String>, Header, description = "One rollback per key")),
    responses(
        (status = 202, description = "A new deployment with `rollback_of` set", body = crate::openapi::DeploymentDoc),
        (status = 400, description = "Not terminal, or nothing to roll back", body = crate::openapi::ProblemDoc, content_type = "application/problem+json"),
        (status = 404, description = "No such deployment", body = crate::openapi::ProblemDoc, content_type = "application/problem+json"),
        crate::openapi::CommonProblems,
    )
)]
pub(crate) async fn rollback(
    State(state): State<AppState>,
    Path(id): Path<String>,
    caller: Caller,
    headers: HeaderMap,
) -> ApiResult {
    caller.audit.set("deployment.rollback", format!("deployments/{id}"), None);
    let id = deployment_id(&id)?;
    let key = idempotency_key(&headers)?;
    let submitted = state.inner.orchestrator.rollback(&caller.principal, id, key).await?;
    caller.audit.set(
        "deployment.rollback",
        format!("deployments/{id}"),
        Some(submitted.deployment.environment().to_string()),
    );
    accepted(&state, &submitted.deployment, submitted.replayed)
}

/// The body of `POST /v1/deployments/{id}/approvals`.
#[derive(Debug, Deserialize)]
pub(crate) struct DecisionBody {
    decision: deploy_core::Decision,
    #[serde(default)]
    comment: Option<String>,
}

#[utoipa::path(
    post,
    path = "/v1/deployments/{id}/approvals",
    tag = "deployments",
    params(("id" = String, Path, description = "Deployment id")),
    request_body(content = crate::openapi::DecisionDoc, content_type = "application/json"),
    responses(
        (status = 202, description = "The decision is recorded: a rejection ends the deployment `rejected`; the approval that meets the environment's rule queues it (after the rule's `wait`). Repeating a decision changes nothing.", body = crate::openapi::DeploymentDoc),
        (status = 400, description = "Bad body or comment", body = crate::openapi::ProblemDoc, content_type = "application/problem+json"),
        (status = 403, description = "No `approve` permission on the environment, not among the rule's approvers, or the submitter under `prevent_self_approval`", body = crate::openapi::ProblemDoc, content_type = "application/problem+json"),
        (status = 404, description = "No such deployment", body = crate::openapi::ProblemDoc, content_type = "application/problem+json"),
        (status = 409, description = "Already finished; not awaiting approval, or this approver decided otherwise before (`not-now`)", body = crate::openapi::ProblemDoc, content_type = "application/problem+json"),
        (status = 422, description = "The comment holds something shaped like a secret", body = crate::openapi::ProblemDoc, content_type = "application/problem+json"),
        crate::openapi::CommonProblems,
    )
)]
pub(crate) async fn approvals(
    State(state): State<AppState>,
    Path(id): Path<String>,
    caller: Caller,
    ApiJson(body): ApiJson<DecisionBody>,
) -> ApiResult {
    let reject = body.decision == deploy_core::Decision::Reject;
    let action =
        audited_as(if reject { deploy_core::OperatorAction::Reject } else { deploy_core::OperatorAction::Approve });
    caller.audit.set(action, format!("deployments/{id}"), None);
    let id = deployment_id(&id)?;
    let answer = state.inner.orchestrator.decide(&caller.principal, id, reject, body.comment).await;
    audit_answer(&state, &caller, action, id, &answer, |d| d.environment().to_string()).await;
    let deployment = answer?;
    recorded(&state, &deployment)
}

/// The body of `POST /v1/deployments/{id}/override`.
#[derive(Debug, Deserialize)]
pub(crate) struct OverrideBody {
    #[serde(default)]
    reason: String,
}

#[utoipa::path(
    post,
    path = "/v1/deployments/{id}/override",
    tag = "deployments",
    params(("id" = String, Path, description = "Deployment id")),
    request_body(content = crate::openapi::OverrideDoc, content_type = "application/json"),
    responses(
        (status = 202, description = "The deployment may start despite its environment's windows and freezes and a global freeze; recorded as a `deployment.overridden` event", body = crate::openapi::DeploymentDoc),
        (status = 400, description = "No reason", body = crate::openapi::ProblemDoc, content_type = "application/problem+json"),
        (status = 403, description = "Only an admin of the environment may override", body = crate::openapi::ProblemDoc, content_type = "application/problem+json"),
        (status = 404, description = "No such deployment", body = crate::openapi::ProblemDoc, content_type = "application/problem+json"),
        (status = 409, description = "Already finished, or started already (`not-now`)", body = crate::openapi::ProblemDoc, content_type = "application/problem+json"),
        crate::openapi::CommonProblems,
    )
)]
pub(crate) async fn override_schedule(
    State(state): State<AppState>,
    Path(id): Path<String>,
    caller: Caller,
    ApiJson(body): ApiJson<OverrideBody>,
) -> ApiResult {
    let action = audited_as(deploy_core::OperatorAction::Override);
    caller.audit.set(action, format!("deployments/{id}"), None);
    let id = deployment_id(&id)?;
    let answer = state.inner.orchestrator.override_schedule(&caller.principal, id, &body.reason).await;
    audit_answer(&state, &caller, action, id, &answer, |d| d.environment().to_string()).await;
    let deployment = answer.map_err(|e| match e {
        // Said as what was asked: overriding is an admin's act, not "managing environments".
        deploy_core::Error::Forbidden(f) => Problem::new(
            ProblemKind::Forbidden,
            format!(
                "{} may not override windows and freezes in environment {}: only its admins may, with a reason",
                f.principal, f.environment
            ),
        ),
        other => other.into(),
    })?;
    recorded(&state, &deployment)
}

/// The body of `PUT /v1/freeze`.
#[derive(Debug, Deserialize)]
pub(crate) struct FreezeBody {
    #[serde(default)]
    reason: String,
    #[serde(default, with = "time::serde::rfc3339::option")]
    until: Option<deploy_core::Timestamp>,
}

/// The global freeze as the API shows it.
fn freeze_view(freeze: Option<&deploy_core::Freeze>) -> serde_json::Value {
    match freeze {
        Some(f) => {
            let mut v = serde_json::to_value(f).unwrap_or_default();
            v["frozen"] = serde_json::Value::Bool(true);
            v
        }
        None => serde_json::json!({"frozen": false}),
    }
}

#[utoipa::path(
    get,
    path = "/v1/freeze",
    tag = "freeze",
    responses(
        (status = 200, description = "Whether a global freeze holds now, and if so who set it, why and until when", body = crate::openapi::FreezeDoc),
        crate::openapi::CommonProblems,
    )
)]
pub(crate) async fn get_freeze(State(state): State<AppState>, _caller: Caller) -> ApiResult {
    let freeze = state.inner.orchestrator.global_freeze().await?;
    Ok(Json(freeze_view(freeze.as_ref())).into_response())
}

#[utoipa::path(
    put,
    path = "/v1/freeze",
    tag = "freeze",
    request_body(content = crate::openapi::FreezeRequestDoc, content_type = "application/json"),
    responses(
        (status = 200, description = "Frozen: no deployment starts anywhere until lifted (or `until`); running ones go on", body = crate::openapi::FreezeDoc),
        (status = 400, description = "No reason, or an end in the past", body = crate::openapi::ProblemDoc, content_type = "application/problem+json"),
        (status = 403, description = "Only an admin of every environment may", body = crate::openapi::ProblemDoc, content_type = "application/problem+json"),
        crate::openapi::CommonProblems,
    )
)]
pub(crate) async fn put_freeze(
    State(state): State<AppState>,
    caller: Caller,
    ApiJson(body): ApiJson<FreezeBody>,
) -> ApiResult {
    caller.audit.set("freeze.put", "freeze", None);
    let freeze = state.inner.orchestrator.set_global_freeze(&caller.principal, Some((body.reason, body.until))).await?;
    Ok(Json(freeze_view(freeze.as_ref())).into_response())
}

#[utoipa::path(
    delete,
    path = "/v1/freeze",
    tag = "freeze",
    responses(
        (status = 204, description = "Lifted: every hold ends at once; held deployments start when their own rules allow"),
        (status = 403, description = "Only an admin of every environment may", body = crate::openapi::ProblemDoc, content_type = "application/problem+json"),
        crate::openapi::CommonProblems,
    )
)]
pub(crate) async fn delete_freeze(State(state): State<AppState>, caller: Caller) -> ApiResult {
    caller.audit.set("freeze.delete", "freeze", None);
    state.inner.orchestrator.set_global_freeze(&caller.principal, None).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// The body of `POST /v1/deployments/{id}/promote` (optional).
#[derive(Debug, Default, Deserialize)]
pub(crate) struct PromoteBody {
    #[serde(default)]
    full: bool,
}

/// The body of `POST /v1/deployments/{id}/abort` (optional).
#[derive(Debug, Default, Deserialize)]
pub(crate) struct AbortBody {
    #[serde(default)]
    rollback: Option<bool>,
}

/// The audit log's name of an operator's request or an approver's decision: `deployment.<action>`.
const fn audited_as(action: deploy_core::OperatorAction) -> &'static str {
    match action {
        deploy_core::OperatorAction::Pause => "deployment.pause",
        deploy_core::OperatorAction::Resume => "deployment.resume",
        deploy_core::OperatorAction::Promote { .. } => "deployment.promote",
        deploy_core::OperatorAction::Abort { .. } => "deployment.abort",
        deploy_core::OperatorAction::Approve => "deployment.approve",
        deploy_core::OperatorAction::Reject => "deployment.reject",
        deploy_core::OperatorAction::Override => "deployment.override",
    }
}

/// Records an operator's request and answers 202 with the deployment; the audit entry names the action and the
/// deployment's environment (from the answer itself, or the refusal naming it).
async fn operate(state: &AppState, caller: &Caller, id: &str, action: deploy_core::OperatorAction) -> ApiResult {
    let audit_action = audited_as(action);
    caller.audit.set(audit_action, format!("deployments/{id}"), None);
    let id = deployment_id(id)?;
    let answer = state.inner.orchestrator.control(&caller.principal, id, action).await;
    audit_answer(state, caller, audit_action, id, &answer, |d| d.environment().to_string()).await;
    let deployment = answer?;
    recorded(state, &deployment)
}

#[utoipa::path(
    post,
    path = "/v1/deployments/{id}/pause",
    tag = "deployments",
    params(("id" = String, Path, description = "Deployment id")),
    responses(
        (status = 202, description = "Pause recorded; the deployment becomes `paused` at its next safe point (between batches or canary steps). Idempotent.", body = crate::openapi::DeploymentDoc),
        (status = 404, description = "No such deployment", body = crate::openapi::ProblemDoc, content_type = "application/problem+json"),
        (status = 409, description = "Already finished, or rolling back (`not-now`)", body = crate::openapi::ProblemDoc, content_type = "application/problem+json"),
        crate::openapi::CommonProblems,
    )
)]
pub(crate) async fn pause(State(state): State<AppState>, Path(id): Path<String>, caller: Caller) -> ApiResult {
    operate(&state, &caller, &id, deploy_core::OperatorAction::Pause).await
}

#[utoipa::path(
    post,
    path = "/v1/deployments/{id}/resume",
    tag = "deployments",
    params(("id" = String, Path, description = "Deployment id")),
    responses(
        (status = 202, description = "Resume recorded; a deployment paused by an operator goes on (a canary step that waits to be promoted still waits). Idempotent.", body = crate::openapi::DeploymentDoc),
        (status = 404, description = "No such deployment", body = crate::openapi::ProblemDoc, content_type = "application/problem+json"),
        (status = 409, description = "Already finished, or rolling back (`not-now`)", body = crate::openapi::ProblemDoc, content_type = "application/problem+json"),
        crate::openapi::CommonProblems,
    )
)]
pub(crate) async fn resume(State(state): State<AppState>, Path(id): Path<String>, caller: Caller) -> ApiResult {
    operate(&state, &caller, &id, deploy_core::OperatorAction::Resume).await
}

#[utoipa::path(
    post,
    path = "/v1/deployments/{id}/promote",
    tag = "deployments",
    params(("id" = String, Path, description = "Deployment id")),
    request_body(content = crate::openapi::PromoteDoc, content_type = "application/json", description = "Optional"),
    responses(
        (status = 202, description = "Promotion recorded: the canary step that waits goes on; with `full`, every remaining step is skipped. Idempotent.", body = crate::openapi::DeploymentDoc),
        (status = 404, description = "No such deployment", body = crate::openapi::ProblemDoc, content_type = "application/problem+json"),
        (status = 409, description = "Already finished; not a canary, or no step waits to be promoted (`not-now`)", body = crate::openapi::ProblemDoc, content_type = "application/problem+json"),
        crate::openapi::CommonProblems,
    )
)]
pub(crate) async fn promote(
    State(state): State<AppState>,
    Path(id): Path<String>,
    caller: Caller,
    OptionalJson(body): OptionalJson<PromoteBody>,
) -> ApiResult {
    operate(&state, &caller, &id, deploy_core::OperatorAction::Promote { full: body.full }).await
}

#[utoipa::path(
    post,
    path = "/v1/deployments/{id}/abort",
    tag = "deployments",
    params(("id" = String, Path, description = "Deployment id")),
    request_body(content = crate::openapi::AbortDoc, content_type = "application/json", description = "Optional"),
    responses(
        (status = 202, description = "Abort recorded; the deployment stops at its next safe point, rolled back or not as `rollback` (default: its failure policy) says. Idempotent.", body = crate::openapi::DeploymentDoc),
        (status = 404, description = "No such deployment", body = crate::openapi::ProblemDoc, content_type = "application/problem+json"),
        (status = 409, description = "Already finished, or already rolling back (`not-now`)", body = crate::openapi::ProblemDoc, content_type = "application/problem+json"),
        crate::openapi::CommonProblems,
    )
)]
pub(crate) async fn abort(
    State(state): State<AppState>,
    Path(id): Path<String>,
    caller: Caller,
    OptionalJson(body): OptionalJson<AbortBody>,
) -> ApiResult {
    operate(&state, &caller, &id, deploy_core::OperatorAction::Abort { rollback: body.rollback }).await
}

#[utoipa::path(
    post,
    path = "/v1/deployments/{id}/retry",
    tag = "deployments",
    params(("id" = String, Path, description = "Deployment id"), ("Idempotency-Key" = Option<String>, Header, description = "One retry per key")),
    responses(
        (status = 202, description = "A new deployment of the same spec to the failed and unreachable targets only, with `retry_of` set", body = crate::openapi::DeploymentDoc),
        (status = 404, description = "No such deployment", body = crate::openapi::ProblemDoc, content_type = "application/problem+json"),
        (status = 409, description = "Not degraded or failed, or nothing failed (`not-now`)", body = crate::openapi::ProblemDoc, content_type = "application/problem+json"),
        crate::openapi::CommonProblems,
    )
)]
pub(crate) async fn retry(
    State(state): State<AppState>,
    Path(id): Path<String>,
    caller: Caller,
    headers: HeaderMap,
) -> ApiResult {
    caller.audit.set("deployment.retry", format!("deployments/{id}"), None);
    let id = deployment_id(&id)?;
    let key = idempotency_key(&headers)?;
    let submitted = state.inner.orchestrator.retry(&caller.principal, id, key).await;
    audit_answer(&state, &caller, "deployment.retry", id, &submitted, |s| s.deployment.environment().to_string()).await;
    let submitted = submitted?;
    accepted(&state, &submitted.deployment, submitted.replayed)
}

/// The body of `POST /v1/environments/{env}/rollback`.
#[derive(Debug, Deserialize)]
pub(crate) struct RollbackBody {
    /// `previous`, a deployment id, or a version.
    to: String,
}

#[utoipa::path(
    post,
    path = "/v1/environments/{env}/rollback",
    tag = "environments",
    params(("env" = String, Path, description = "Environment name"), ("Idempotency-Key" = Option<String>, Header, description = "One rollback per key")),
    request_body(content = crate::openapi::EnvironmentRollbackDoc, content_type = "application/json"),
    responses(
        (status = 202, description = "A new deployment of the chosen release, with `rollback_of` naming the release that ran last", body = crate::openapi::DeploymentDoc),
        (status = 400, description = "`to` names no release that succeeded there", body = crate::openapi::ProblemDoc, content_type = "application/problem+json"),
        (status = 404, description = "No such environment", body = crate::openapi::ProblemDoc, content_type = "application/problem+json"),
        crate::openapi::CommonProblems,
    )
)]
pub(crate) async fn rollback_environment(
    State(state): State<AppState>,
    Path(env): Path<String>,
    caller: Caller,
    headers: HeaderMap,
    ApiJson(body): ApiJson<RollbackBody>,
) -> ApiResult {
    let name = env_name(&env)?;
    caller.audit.set("environment.rollback", format!("environments/{name}"), Some(name.to_string()));
    let to: deploy_core::RollbackTo =
        body.to.parse().map_err(|_| Problem::invalid_field("to", "\"previous\", a deployment id or a version"))?;
    let key = idempotency_key(&headers)?;
    let submitted = state.inner.orchestrator.rollback_environment(&caller.principal, &name, &to, key).await?;
    accepted(&state, &submitted.deployment, submitted.replayed)
}

// ---------------------------------------------------------------------------------------------------------------
// API keys and audit

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct NewKey {
    name: String,
    role: Role,
    #[serde(default = "all_environments")]
    environments: Vec<EnvironmentPattern>,
    /// For an `agent` key: the target it is bound to.
    #[serde(default)]
    target: Option<deploy_core::TargetId>,
    /// The person the key belongs to (the subject, or identity claim, of that person's tokens).
    #[serde(default)]
    owner: Option<String>,
}

fn all_environments() -> Vec<EnvironmentPattern> {
    vec![EnvironmentPattern::any()]
}

#[utoipa::path(
    post,
    path = "/v1/api-keys",
    tag = "administration",
    request_body(content = crate::openapi::NewApiKeyDoc, content_type = "application/json"),
    responses(
        (status = 201, description = "Created; `key` is shown only here", body = crate::openapi::ApiKeyDoc),
        (status = 400, description = "Invalid name, role or pattern", body = crate::openapi::ProblemDoc, content_type = "application/problem+json"),
        crate::openapi::BodyProblems,
        crate::openapi::CommonProblems,
    )
)]
pub(crate) async fn create_key(
    State(state): State<AppState>,
    caller: Caller,
    ApiJson(new): ApiJson<NewKey>,
) -> ApiResult {
    caller.audit.set("api_key.create", "api-keys", None);
    require_admin(&caller)?;
    let name_ok = (1..=64).contains(&new.name.len())
        && new.name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    if !name_ok {
        return Err(Problem::invalid_field("name", "use 1 to 64 letters, digits, '-', '_' or '.'"));
    }
    if new.environments.is_empty() {
        return Err(Problem::invalid_field("environments", "give at least one pattern (\"*\" for all)"));
    }
    if let Some(owner) = &new.owner {
        let owner_ok = (1..=128).contains(&owner.len())
            && owner.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'@' | b'+'));
        if !owner_ok {
            return Err(Problem::invalid_field("owner", "1 to 128 letters, digits, '-', '_', '.', '@' or '+'"));
        }
        // Shown in every listing and every approval it makes: never a token.
        let mut errs = deploy_core::ValidationErrors::default();
        if !errs.check_text("owner", owner, 128) {
            return Err(Problem::validation(&errs));
        }
    }
    match (new.role, &new.target) {
        (Role::Agent, None) => {
            return Err(Problem::invalid_field("target", "an agent key is bound to one target: name it"));
        }
        (Role::Agent, Some(_))
            if new.environments.len() != 1 || new.environments.iter().any(|p| p.as_str().contains('*')) =>
        {
            return Err(Problem::invalid_field(
                "environments",
                "an agent key names exactly one environment, no pattern",
            ));
        }
        (Role::Viewer | Role::Deployer | Role::Admin, Some(_)) => {
            return Err(Problem::invalid_field("target", "only agent keys are bound to a target"));
        }
        _ => {}
    }
    // A key's name is its identity (audit actor, rate-limit bucket, idempotency scope): the store refuses a second
    // key of one name atomically (a unique index), however many replicas create it at once.
    let key = generate_key().map_err(|e| Problem::internal(&e))?;
    let now = state.inner.orchestrator.clock().now();
    let mut record = key_record(&key, new.name, new.role, new.environments, caller.principal.id().to_owned(), now);
    record.target = new.target;
    record.owner = new.owner;
    state.inner.store.create_api_key(record.clone()).await?;
    caller.audit.set("api_key.create", format!("api-keys/{}", record.id), None);
    created_with_secret(&record, "key", key, &format!("/v1/api-keys/{}", record.id))
}

#[utoipa::path(
    get,
    path = "/v1/api-keys",
    tag = "administration",
    responses(
        (status = 200, description = "Every key, without the keys", body = crate::openapi::ApiKeyListDoc),
        crate::openapi::CommonProblems,
    )
)]
pub(crate) async fn list_keys(State(state): State<AppState>, caller: Caller) -> ApiResult {
    require_admin(&caller)?;
    let mut keys = state.inner.store.list_api_keys().await?;
    keys.reverse();
    Ok(list_body(&keys, None))
}

#[utoipa::path(
    delete,
    path = "/v1/api-keys/{id}",
    tag = "administration",
    params(("id" = String, Path, description = "Key id")),
    responses(
        (status = 204, description = "Revoked"),
        (status = 400, description = "Invalid id", body = crate::openapi::ProblemDoc, content_type = "application/problem+json"),
        (status = 404, description = "No such key", body = crate::openapi::ProblemDoc, content_type = "application/problem+json"),
        crate::openapi::CommonProblems,
    )
)]
pub(crate) async fn delete_key(State(state): State<AppState>, Path(id): Path<String>, caller: Caller) -> ApiResult {
    caller.audit.set("api_key.delete", format!("api-keys/{id}"), None);
    require_admin(&caller)?;
    let id = uuid::Uuid::parse_str(&id).map_err(|_| Problem::invalid_field("id", "not an API key id"))?;
    state.inner.store.delete_api_key(id).await?;
    state.inner.auth.forget_key(id);
    Ok(StatusCode::NO_CONTENT.into_response())
}

#[utoipa::path(
    get,
    path = "/v1/audit",
    tag = "administration",
    params(("actor" = Option<String>, Query, description = "Only this actor"), ("environment" = Option<String>, Query, description = "Only this environment"), ("limit" = Option<u32>, Query, description = "1 to 500, default 50"), ("cursor" = Option<String>, Query, description = "From the previous page")),
    responses(
        (status = 200, description = "Mutating calls, newest first", body = crate::openapi::AuditListDoc),
        (status = 400, description = "Invalid limit or cursor", body = crate::openapi::ProblemDoc, content_type = "application/problem+json"),
        crate::openapi::CommonProblems,
    )
)]
pub(crate) async fn audit(State(state): State<AppState>, caller: Caller, params: Params) -> ApiResult {
    require_admin(&caller)?;
    let page = params.page()?;
    let filter = deploy_core::AuditFilter {
        actor: params.get("actor").map(str::to_owned),
        environment: params.get("environment").map(str::to_owned),
    };
    let out = state.inner.store.list_audit(&filter, &page).await?;
    Ok(list_body(&out.items, out.next_cursor))
}

// ---------------------------------------------------------------------------------------------------------------
// Operations

#[utoipa::path(
    get,
    path = "/healthz",
    tag = "operations",
    security(()),
    responses(
        (status = 200, description = "The process is up", body = crate::openapi::StatusDoc),
    )
)]
pub(crate) async fn healthz() -> Response {
    Json(json!({"status": "ok"})).into_response()
}

/// How long a successful write probe stands for readiness.
const WRITE_PROBE_EVERY: Duration = Duration::from_secs(1);

#[utoipa::path(
    get,
    path = "/readyz",
    tag = "operations",
    security(()),
    responses(
        (status = 200, description = "The store answers", body = crate::openapi::StatusDoc),
        (status = 503, description = "The store does not answer", body = crate::openapi::ProblemDoc, content_type = "application/problem+json"),
    )
)]
pub(crate) async fn readyz(State(state): State<AppState>) -> ApiResult {
    // Ready means reads and writes are served: a store that cannot be written (a full disk) is not ready. The write
    // is made at most once a second per replica, whoever asks and however often.
    let store = &state.inner.store;
    let probe = async {
        store.list_environments(&PageRequest { limit: 1, cursor: None }).await?;
        let mut last = state.inner.write_probe.lock().await;
        match *last {
            Some((at, true)) if at.elapsed() < WRITE_PROBE_EVERY => Ok(()),
            _ => {
                let written = store.check_writable().await;
                *last = Some((std::time::Instant::now(), written.is_ok()));
                written
            }
        }
    };
    match tokio::time::timeout(Duration::from_secs(5), probe).await {
        Ok(Ok(_)) => Ok(Json(json!({"status": "ready"})).into_response()),
        Ok(Err(e)) => Err(Problem::unavailable(&e)),
        Err(elapsed) => Err(Problem::unavailable(&elapsed)),
    }
}

/// Deployments of one status; a store error shows as 0 rather than failing the scrape (and is logged).
async fn count(state: &AppState, status: DeploymentStatus) -> u64 {
    let filter = DeploymentFilter { status: Some(status), ..DeploymentFilter::default() };
    state.inner.store.count_deployments(&filter).await.unwrap_or_else(|e| {
        tracing::warn!(error = %e, "metrics: could not count deployments");
        0
    })
}

#[utoipa::path(
    get,
    path = "/metrics",
    tag = "operations",
    security(()),
    responses(
        (status = 200, description = "Prometheus text format", body = String, content_type = "text/plain"),
    )
)]
pub(crate) async fn metrics(State(state): State<AppState>) -> Response {
    let gauges = Gauges {
        queued: count(&state, DeploymentStatus::Queued).await,
        active: count(&state, DeploymentStatus::InProgress).await + count(&state, DeploymentStatus::RollingBack).await,
        paused: count(&state, DeploymentStatus::Paused).await,
        awaiting_approval: count(&state, DeploymentStatus::AwaitingApproval).await,
    };
    let mut response = state.inner.metrics.render(gauges).into_response();
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"));
    response
}

#[utoipa::path(
    get,
    path = "/openapi.json",
    tag = "operations",
    security(()),
    responses(
        (status = 200, description = "This document", body = Object),
    )
)]
pub(crate) async fn openapi() -> Response {
    let mut response = crate::openapi::document().into_response();
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

#[utoipa::path(
    get,
    path = "/problems/{slug}",
    tag = "operations",
    security(()),
    params(("slug" = String, Path, description = "A problem slug")),
    responses(
        (status = 200, description = "What the problem means", body = crate::openapi::ProblemTypeDoc),
        (status = 404, description = "No such problem type", body = crate::openapi::ProblemDoc, content_type = "application/problem+json"),
    )
)]
pub(crate) async fn problem(Path(slug): Path<String>) -> ApiResult {
    let kind = ProblemKind::from_slug(&slug)
        .ok_or_else(|| Problem::new(ProblemKind::NotFound, format!("no problem type {slug:?}")))?;
    Ok(Json(json!({
        "type": format!("/problems/{}", kind.slug()),
        "title": kind.title(),
        "status": kind.status(),
        "description": kind.description(),
    }))
    .into_response())
}

pub(crate) async fn not_found() -> Problem {
    Problem::new(ProblemKind::NotFound, "no such endpoint; see /openapi.json")
}

pub(crate) async fn method_not_allowed() -> Response {
    let mut p = Problem::new(ProblemKind::Validation, "this endpoint does not accept this method; see /openapi.json");
    p.status = StatusCode::METHOD_NOT_ALLOWED.as_u16();
    p.into_response()
}
