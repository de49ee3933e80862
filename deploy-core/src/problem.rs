//! [`ProblemKind`]: the kinds of problem the HTTP API answers (RFC 9457 `type`s), shared by the server, which
//! answers them, the client, which matches them, and [`Error::kind`](crate::Error::kind), which says which one an
//! orchestrator error becomes.

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
    /// 429: the credentials' submitter has too many unfinished deployments, or stored too much in the quota window.
    QuotaExceeded,
    /// 409: the webhook subscription was disabled.
    WebhookDisabled,
    /// 409: an operator's request does not apply to the deployment now (nothing waits to be promoted, a rollback
    /// cannot be paused).
    NotNow,
    /// 503: the store cannot be reached or written right now; retry after `Retry-After`.
    StoreUnavailable,
    /// 500 or 503: the server failed; the body says nothing more.
    Internal,
}

impl ProblemKind {
    /// Every kind, in the order the documentation lists them.
    pub const ALL: [Self; 20] = [
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
        Self::QuotaExceeded,
        Self::WebhookDisabled,
        Self::NotNow,
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
            Self::QuotaExceeded => "quota-exceeded",
            Self::WebhookDisabled => "webhook-disabled",
            Self::NotNow => "not-now",
            Self::StoreUnavailable => "store-unavailable",
            Self::Internal => "internal",
        }
    }

    /// The kind with this slug.
    #[must_use]
    pub fn from_slug(slug: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.slug() == slug)
    }

    /// Its usual HTTP status code.
    #[must_use]
    pub const fn status(self) -> u16 {
        match self {
            Self::Validation | Self::IdempotencyKeyRequired => 400,
            Self::Unauthenticated => 401,
            Self::Forbidden => 403,
            Self::NotFound => 404,
            Self::EnvironmentBusy
            | Self::AlreadyFinished
            | Self::IdempotencyKeyInFlight
            | Self::WebhookDisabled
            | Self::NotNow => 409,
            Self::IdempotencyKeyReuse | Self::HardcodedSecret => 422,
            Self::PreconditionFailed => 412,
            Self::PreconditionRequired => 428,
            Self::PayloadTooLarge => 413,
            Self::UnsupportedMediaType => 415,
            Self::RateLimited | Self::QuotaExceeded => 429,
            Self::StoreUnavailable => 503,
            Self::Internal => 500,
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
            Self::QuotaExceeded => "Quota exceeded",
            Self::WebhookDisabled => "Webhook subscription disabled",
            Self::NotNow => "Not applicable now",
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
            Self::NotNow => {
                "The deployment is not in a state where this request applies: no canary step waits to be promoted, or \
                 it is rolling back, which cannot be paused, promoted or aborted. The detail says which."
            }
            Self::RateLimited => "Too many requests from these credentials. Wait for `Retry-After` seconds.",
            Self::QuotaExceeded => {
                "The submitter of these credentials has as many unfinished deployments as this server allows, or its \
                 deployments accepted in the quota window take as many bytes as allowed. Wait for some to finish (or \
                 cancel them), or for `Retry-After` seconds; `detail` says which limit."
            }
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
