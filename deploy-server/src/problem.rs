//! RFC 9457 problem details: every error the API answers, with its slug, status and a description served at
//! `/problems/<slug>`.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use deploy_core::{Error, FieldError, StoreError, ValidationErrors};
use serde::Serialize;

pub use deploy_core::ProblemKind;

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
        Self { kind, status: kind.status(), detail: detail.into(), errors: Vec::new(), headers: Vec::new() }
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
            StoreError::NotNow { deployment, reason } => {
                Self::new(ProblemKind::NotNow, format!("deployment {deployment}: {reason}"))
            }
            StoreError::Unavailable(_) => Self::unavailable(&e),
            StoreError::QuotaExceeded { submitter, reason, window } => {
                let wait = if window { "60" } else { "10" };
                Self::new(ProblemKind::QuotaExceeded, format!("{submitter} is over quota: {reason}"))
                    .with_header(axum::http::header::RETRY_AFTER, axum::http::HeaderValue::from_static(wait))
            }
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
            Error::NotAnApprover(id, why) => {
                Self::new(ProblemKind::Forbidden, format!("may not decide on deployment {id}: {why}"))
            }
            e @ (Error::SecretOutOfScope { .. } | Error::SecretScopeWidened { .. }) => Self::new(
                ProblemKind::Forbidden,
                format!(
                    "{e}: an environment resolves only the references its secret_scope allows (set by its admins; \
                     widened only by an admin of every environment) and deployd's --global-secret-scope"
                ),
            ),
            Error::NotRetryable(id, why) => {
                Self::new(ProblemKind::NotNow, format!("deployment {id} cannot be retried: {why}"))
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
        Action::Operate => "operate deployments",
        Action::Approve => "approve deployments",
        Action::ManageEnvironments => "manage environments",
        Action::Administer => "administer",
        Action::DefineHostTargets => "define targets that run programs on the host",
        _ => "do this",
    }
}
