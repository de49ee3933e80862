//! RFC 9457 problem details: every error the API answers, with its slug, status and a description served at
//! `/problems/<slug>`.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use deploy_core::{Error, FieldError, StoreError, ValidationErrors};
use serde::Serialize;

/// The kinds of problem the API answers; each is a `type` of `/problems/<slug>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ProblemKind {
    /// 400: the request is invalid.
    Validation,
    /// 401: no credentials, or bad ones.
    Unauthenticated,
    /// 403: the role or environments of the credentials do not allow this.
    Forbidden,
    /// 404: no such thing.
    NotFound,
    /// 409: the environment refuses concurrent deployments.
    EnvironmentBusy,
    /// 409: the deployment is terminal.
    AlreadyFinished,
    /// 422: the idempotency key was used with another request.
    IdempotencyKeyReuse,
    /// 409: the first request with this idempotency key is still being accepted.
    IdempotencyKeyInFlight,
    /// 400: this server requires an idempotency key.
    IdempotencyKeyRequired,
    /// 412: `If-Match` names a stale revision.
    PreconditionFailed,
    /// 428: the environment requires `If-Match`.
    PreconditionRequired,
    /// 422: a literal secret in the request.
    HardcodedSecret,
    /// 413: the body is over the limit.
    PayloadTooLarge,
    /// 415: the body is not JSON.
    UnsupportedMediaType,
    /// 429: too many requests.
    RateLimited,
    /// 409: the webhook subscription was disabled.
    WebhookDisabled,
    /// 503: the store cannot be reached or written right now; retry after `Retry-After`.
    StoreUnavailable,
    /// 500 or 503: the server failed; the body says nothing more.
    Internal,
}

impl ProblemKind {
    /// Every kind, in the order the documentation lists them.
    pub const ALL: [Self; 18] = [
        Self::Validation,
        Self::Unauthenticated,
        Self::Forbidden,
        Self::NotFound,
        Self::EnvironmentBusy,
        Self::AlreadyFinished,
        Self::IdempotencyKeyReuse,
        Self::IdempotencyKeyInFlight,
        Self::IdempotencyKeyRequired,
        Self::PreconditionFailed,
        Self::PreconditionRequired,
        Self::HardcodedSecret,
        Self::PayloadTooLarge,
        Self::UnsupportedMediaType,
        Self::RateLimited,
        Self::WebhookDisabled,
        Self::StoreUnavailable,
        Self::Internal,
    ];

    /// The slug of its `type` URI.
    #[must_use]
    pub const fn slug(self) -> &'static str {
        match self {
            Self::Validation => "validation",
            Self::Unauthenticated => "unauthenticated",
            Self::Forbidden => "forbidden",
            Self::NotFound => "not-found",
            Self::EnvironmentBusy => "environment-busy",
            Self::AlreadyFinished => "already-finished",
            Self::IdempotencyKeyReuse => "idempotency-key-reuse",
            Self::IdempotencyKeyInFlight => "idempotency-key-in-flight",
            Self::IdempotencyKeyRequired => "idempotency-key-required",
            Self::PreconditionFailed => "precondition-failed",
            Self::PreconditionRequired => "precondition-required",
            Self::HardcodedSecret => "hardcoded-secret",
            Self::PayloadTooLarge => "payload-too-large",
            Self::UnsupportedMediaType => "unsupported-media-type",
            Self::RateLimited => "rate-limited",
            Self::WebhookDisabled => "webhook-disabled",
            Self::StoreUnavailable => "store-unavailable",
            Self::Internal => "internal",
        }
    }

    /// The kind with this slug.
    #[must_use]
    pub fn from_slug(slug: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.slug() == slug)
    }

    /// Its usual HTTP status.
    #[must_use]
    pub const fn status(self) -> StatusCode {
        match self {
            Self::Validation | Self::IdempotencyKeyRequired => StatusCode::BAD_REQUEST,
            Self::Unauthenticated => StatusCode::UNAUTHORIZED,
            Self::Forbidden => StatusCode::FORBIDDEN,
            Self::NotFound => StatusCode::NOT_FOUND,
            Self::EnvironmentBusy | Self::AlreadyFinished | Self::IdempotencyKeyInFlight | Self::WebhookDisabled => {
                StatusCode::CONFLICT
            }
            Self::IdempotencyKeyReuse | Self::HardcodedSecret => StatusCode::UNPROCESSABLE_ENTITY,
            Self::PreconditionFailed => StatusCode::PRECONDITION_FAILED,
            Self::PreconditionRequired => StatusCode::PRECONDITION_REQUIRED,
            Self::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Self::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Self::RateLimited => StatusCode::TOO_MANY_REQUESTS,
            Self::StoreUnavailable => StatusCode::SERVICE_UNAVAILABLE,
            Self::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// Its title.
    #[must_use]
    pub const fn title(self) -> &'static str {
        match self {
            Self::Validation => "The request is invalid",
            Self::Unauthenticated => "Authentication required",
            Self::Forbidden => "Not allowed",
            Self::NotFound => "Not found",
            Self::EnvironmentBusy => "Environment busy",
            Self::AlreadyFinished => "Deployment already finished",
            Self::IdempotencyKeyReuse => "Idempotency key reused with another request",
            Self::IdempotencyKeyInFlight => "Idempotency key in use",
            Self::IdempotencyKeyRequired => "Idempotency key required",
            Self::PreconditionFailed => "Precondition failed",
            Self::PreconditionRequired => "Precondition required",
            Self::HardcodedSecret => "Hard-coded secret refused",
            Self::PayloadTooLarge => "Payload too large",
            Self::UnsupportedMediaType => "Unsupported media type",
            Self::RateLimited => "Too many requests",
            Self::WebhookDisabled => "Webhook subscription disabled",
            Self::StoreUnavailable => "Store unavailable",
            Self::Internal => "Internal server error",
        }
    }

    /// What it means and what to do, served at `/problems/<slug>`.
    #[must_use]
    pub const fn description(self) -> &'static str {
        match self {
            Self::Validation => {
                "The body, a path segment or a query parameter is invalid. `errors` lists every problem with its field; \
                 fix them all and send the request again."
            }
            Self::Unauthenticated => {
                "Send `Authorization: Bearer <token>` with an API key (`dk_...`) or a JWT. `WWW-Authenticate` says \
                 whether credentials were missing or invalid (`error=\"invalid_token\"`: unknown, revoked or expired)."
            }
            Self::Forbidden => {
                "The credentials are valid but their role or environment patterns do not allow this action here. \
                 Viewers read; deployers also submit, cancel and roll back; admins do everything."
            }
            Self::NotFound => "No environment, deployment, key or webhook has this id.",
            Self::EnvironmentBusy => {
                "The environment's concurrency policy is `reject` and another deployment is queued or running. Wait \
                 for it to finish, or cancel it."
            }
            Self::AlreadyFinished => "The deployment reached a terminal status; it cannot be cancelled any more.",
            Self::IdempotencyKeyReuse => {
                "This idempotency key was used before with a different request body. Use a new key for a new request."
            }
            Self::IdempotencyKeyInFlight => {
                "The first request with this idempotency key is still being processed. Retry after a moment to get \
                 its answer."
            }
            Self::IdempotencyKeyRequired => "This server requires an `Idempotency-Key` header on submissions.",
            Self::PreconditionFailed => {
                "`If-Match` names a revision of the environment that is no longer current: something changed since \
                 you read it. Read the environment again and decide whether to submit."
            }
            Self::PreconditionRequired => {
                "The environment requires submissions to carry `If-Match: \"<revision>\"`, the revision read with \
                 `GET /v1/environments/{env}`."
            }
            Self::HardcodedSecret => {
                "A literal value was given where a secret belongs: under `secrets`, or in `config` under a name like \
                 password, secret, token, api_key or private_key. Pass a reference instead: \
                 `{\"ref\": \"vault://...\"}` or `{\"ref\": \"env://NAME\"}`."
            }
            Self::PayloadTooLarge => "Request bodies are limited to 1 MiB.",
            Self::UnsupportedMediaType => "Request bodies must be `application/json`.",
            Self::WebhookDisabled => {
                "The subscription was disabled because its receiver answered 410 Gone; nothing more is delivered to \
                 it. Create a new subscription for the receiver, then redeliver through it."
            }
            Self::RateLimited => "Too many requests from these credentials. Wait for `Retry-After` seconds.",
            Self::StoreUnavailable => {
                "The database cannot be reached or written right now (an outage, a full disk, a timeout). Nothing was \
                 accepted or changed by this request; retry after `Retry-After` seconds with the same idempotency key."
            }
            Self::Internal => {
                "The server failed to answer. Nothing about the cause is shown here; the server's log has it under the \
                 request's `X-Request-Id`. The request may be retried."
            }
        }
    }
}

/// A problem detail document, ready to answer. Serializes as `{"type", "title", "status", "detail", "errors"}`.
#[derive(Debug, Clone)]
pub struct Problem {
    /// The kind: gives `type` (`/problems/<slug>`) and `title`.
    pub kind: ProblemKind,
    /// The HTTP status.
    pub status: u16,
    /// What happened, for people.
    pub detail: String,
    /// Field errors, for validation problems.
    pub errors: Vec<FieldError>,
    /// Extra headers (`WWW-Authenticate`, `Retry-After`).
    pub headers: Vec<(header::HeaderName, HeaderValue)>,
}

#[derive(Serialize)]
struct Wire<'a> {
    #[serde(rename = "type")]
    type_uri: String,
    title: &'static str,
    status: u16,
    detail: &'a str,
    #[serde(skip_serializing_if = "<[FieldError]>::is_empty")]
    errors: &'a [FieldError],
}

impl Serialize for Problem {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        Wire {
            type_uri: format!("/problems/{}", self.kind.slug()),
            title: self.kind.title(),
            status: self.status,
            detail: &self.detail,
            errors: &self.errors,
        }
        .serialize(serializer)
    }
}

impl Problem {
    /// A problem of `kind` with `detail`.
    #[must_use]
    pub fn new(kind: ProblemKind, detail: impl Into<String>) -> Self {
        Self { kind, status: kind.status().as_u16(), detail: detail.into(), errors: Vec::new(), headers: Vec::new() }
    }

    /// With a different HTTP status (503 for an unavailable store).
    #[must_use]
    pub fn with_status(mut self, status: StatusCode) -> Self {
        self.status = status.as_u16();
        self
    }

    /// With a header.
    #[must_use]
    pub fn with_header(mut self, name: header::HeaderName, value: HeaderValue) -> Self {
        self.headers.push((name, value));
        self
    }

    /// A validation problem listing every field error.
    #[must_use]
    pub fn validation(errors: &ValidationErrors) -> Self {
        let kind = if errors.has_hardcoded_secret() { ProblemKind::HardcodedSecret } else { ProblemKind::Validation };
        let detail = match errors.errors() {
            [one] => format!("{}: {}", one.field, one.message),
            many => format!("{} problems; see errors", many.len()),
        };
        let mut p = Self::new(kind, detail);
        p.errors = errors.errors().to_vec();
        p
    }

    /// A validation problem about one field.
    #[must_use]
    pub fn invalid_field(field: &str, message: impl Into<String>) -> Self {
        let mut errs = ValidationErrors::default();
        errs.push(field, message);
        Self::validation(&errs)
    }

    /// A server failure: logged with its cause, answered without it.
    #[must_use]
    pub fn internal(cause: &dyn std::error::Error) -> Self {
        tracing::error!(error = %cause, source = ?cause.source(), "request failed");
        Self::new(ProblemKind::Internal, "the server could not complete the request; it may be retried")
    }

    /// 429 with `Retry-After`: `wait` in whole seconds (at least 1), which `detail` is given to say so.
    #[must_use]
    pub(crate) fn rate_limited(wait: std::time::Duration, detail: impl FnOnce(f64) -> String) -> Self {
        let secs = wait.as_secs_f64().ceil().max(1.0);
        Self::new(ProblemKind::RateLimited, detail(secs)).with_header(
            header::RETRY_AFTER,
            HeaderValue::from_str(&format!("{secs}")).unwrap_or(HeaderValue::from_static("1")),
        )
    }

    /// The store is unreachable: 503, retryable.
    #[must_use]
    pub fn unavailable(cause: &dyn std::error::Error) -> Self {
        tracing::error!(error = %cause, source = ?cause.source(), "store unavailable");
        Self::new(ProblemKind::StoreUnavailable, "the store cannot be reached or written right now; retry later")
            .with_header(header::RETRY_AFTER, HeaderValue::from_static("2"))
    }
}

/// Marks a response as a problem of this kind, for the audit log and metrics.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ProblemMarker(pub(crate) ProblemKind);

impl IntoResponse for Problem {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let body = serde_json::to_vec(&self).unwrap_or_default();
        let mut response = (status, body).into_response();
        let headers = response.headers_mut();
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/problem+json"));
        if self.kind == ProblemKind::Forbidden {
            // RFC 6750 §3.1: the credentials are valid but do not reach this far.
            headers.insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"deploy\", error=\"insufficient_scope\""),
            );
        }
        for (name, value) in self.headers {
            headers.insert(name, value);
        }
        response.extensions_mut().insert(ProblemMarker(self.kind));
        response
    }
}

impl From<StoreError> for Problem {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::NotFound { what, id } => Self::new(ProblemKind::NotFound, format!("{what} {id} not found")),
            StoreError::EnvironmentBusy { environment, active } => Self::new(
                ProblemKind::EnvironmentBusy,
                format!("environment {environment} is busy with deployment {active} and its policy is reject"),
            ),
            StoreError::IdempotencyKeyReuse { key } => Self::new(
                ProblemKind::IdempotencyKeyReuse,
                format!("idempotency key {key:?} was used with a different request"),
            ),
            StoreError::IdempotencyKeyInFlight { key } => Self::new(
                ProblemKind::IdempotencyKeyInFlight,
                format!("a request with idempotency key {key:?} is still being processed"),
            ),
            StoreError::PreconditionFailed { expected, current } => Self::new(
                ProblemKind::PreconditionFailed,
                format!("the environment is at revision {current}, If-Match expected {expected}"),
            ),
            StoreError::PreconditionRequired { environment } => Self::new(
                ProblemKind::PreconditionRequired,
                format!("environment {environment} requires If-Match with its current revision"),
            ),
            StoreError::Invalid(errors) => Self::validation(&errors),
            StoreError::AlreadyFinished { deployment, status } => {
                Self::new(ProblemKind::AlreadyFinished, format!("deployment {deployment} is already {status}"))
            }
            StoreError::Unavailable(_) => Self::unavailable(&e),
            other => Self::internal(&other),
        }
    }
}

impl From<Error> for Problem {
    fn from(e: Error) -> Self {
        match e {
            Error::Invalid(errors) => Self::validation(&errors),
            Error::Forbidden(f) if f.action == deploy_core::Action::DefineHostTargets => Self::new(
                ProblemKind::Forbidden,
                format!(
                    "{} may not create or change targets in environment {} whose executor runs programs on the host \
                     (process, command): that is host-level power, given only to admins of every environment \
                     (environments [\"*\"])",
                    f.principal, f.environment
                ),
            ),
            Error::Forbidden(f) => Self::new(
                ProblemKind::Forbidden,
                format!("{} may not {} in environment {}", f.principal, action_name(f.action), f.environment),
            ),
            Error::Store(s) => s.into(),
            Error::NotRollbackable(id, why) => {
                Self::invalid_field("id", format!("deployment {id} cannot be rolled back: {why}"))
            }
            other => Self::internal(&other),
        }
    }
}

/// An action as the API names it in messages.
#[must_use]
pub(crate) fn action_name(action: deploy_core::Action) -> &'static str {
    use deploy_core::Action;
    match action {
        Action::Read => "read",
        Action::Deploy => "deploy",
        Action::Cancel => "cancel",
        Action::Rollback => "roll back",
        Action::ManageEnvironments => "manage environments",
        Action::Administer => "administer",
        Action::DefineHostTargets => "define targets that run programs on the host",
        _ => "do this",
    }
}
