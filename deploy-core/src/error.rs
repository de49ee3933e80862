//! The orchestrator's error.

use crate::auth::Forbidden;
use crate::spec::ValidationErrors;
use crate::store::StoreError;

/// What went wrong in an orchestrator call.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The request is invalid; every problem is listed with its field. Check
    /// [`ValidationErrors::has_hardcoded_secret`] to tell a refused inline secret from other problems.
    #[error("invalid request: {0}")]
    Invalid(#[source] ValidationErrors),
    /// The principal's role or environments do not allow this.
    #[error("forbidden: {0}")]
    Forbidden(#[source] Forbidden),
    /// The store refused or failed.
    #[error("store: {0}")]
    Store(#[from] StoreError),
    /// Only a terminal deployment can be rolled back, and only one that changed something.
    #[error("deployment {0} cannot be rolled back: {1}")]
    NotRollbackable(crate::names::DeploymentId, String),
    /// Only a `degraded` or `failed` deployment with failed or unreachable targets can be retried.
    #[error("deployment {0} cannot be retried: {1}")]
    NotRetryable(crate::names::DeploymentId, String),
    /// The principal may approve in the environment, but not this deployment: its rule does not name them, or they
    /// submitted it and the rule prevents self-approval.
    #[error("deployment {0}: {1}")]
    NotAnApprover(crate::names::DeploymentId, String),
    /// A secret reference the environment may not resolve: outside its secret scope and the global one.
    #[error("{field}: secret reference {reference} is outside the secret scope of environment {environment}")]
    SecretOutOfScope {
        /// The environment.
        environment: crate::names::EnvironmentName,
        /// Where the reference is (`secrets.DB`, `config.TOKEN`).
        field: String,
        /// The reference (a reference is not a secret).
        reference: String,
    },
    /// A scoped admin asked an environment's secret scope to allow more than it does now.
    #[error("{principal} may not widen the secret scope of environment {environment} (entry {entry})")]
    SecretScopeWidened {
        /// Who asked.
        principal: String,
        /// The environment.
        environment: crate::names::EnvironmentName,
        /// The first entry beyond the current scope.
        entry: String,
    },
}

impl From<Forbidden> for Error {
    fn from(e: Forbidden) -> Self {
        Self::Forbidden(e)
    }
}

impl From<ValidationErrors> for Error {
    fn from(e: ValidationErrors) -> Self {
        Self::Invalid(e)
    }
}

impl Error {
    /// The kind of problem this error is, as the HTTP API would answer it: what a caller matches on to decide what
    /// to do (retry later, fix the request, ask for access, ...).
    ///
    /// ```
    /// use deploy_core::{DeploymentRequest, Error, ProblemKind};
    /// let invalid = Error::from(DeploymentRequest::default().validate().unwrap_err());
    /// assert_eq!(invalid.kind(), ProblemKind::Validation);
    /// assert!(invalid.to_string().starts_with("invalid request: "), "the cause is in the message: {invalid}");
    /// assert!(!invalid.validation_errors().unwrap().errors().is_empty());
    /// ```
    #[must_use]
    pub fn kind(&self) -> crate::ProblemKind {
        use crate::ProblemKind as K;
        match self {
            Self::Invalid(e) if e.has_hardcoded_secret() => K::HardcodedSecret,
            Self::Invalid(_) | Self::NotRollbackable(..) => K::Validation,
            Self::NotRetryable(..) => K::NotNow,
            Self::NotAnApprover(..) | Self::SecretOutOfScope { .. } | Self::SecretScopeWidened { .. } => K::Forbidden,
            Self::Forbidden(_) => K::Forbidden,
            Self::Store(e) => e.kind(),
        }
    }

    /// Every field problem, when the request was invalid.
    #[must_use]
    pub fn validation_errors(&self) -> Option<&ValidationErrors> {
        match self {
            Self::Invalid(e) | Self::Store(StoreError::Invalid(e)) => Some(e),
            _ => None,
        }
    }
}

impl StoreError {
    /// The kind of problem this error is, as the HTTP API would answer it.
    #[must_use]
    pub fn kind(&self) -> crate::ProblemKind {
        use crate::ProblemKind as K;
        match self {
            Self::NotFound { .. } => K::NotFound,
            Self::EnvironmentBusy { .. } => K::EnvironmentBusy,
            Self::IdempotencyKeyReuse { .. } => K::IdempotencyKeyReuse,
            Self::IdempotencyKeyInFlight { .. } => K::IdempotencyKeyInFlight,
            Self::PreconditionFailed { .. } => K::PreconditionFailed,
            Self::PreconditionRequired { .. } => K::PreconditionRequired,
            Self::Invalid(e) if e.has_hardcoded_secret() => K::HardcodedSecret,
            Self::Invalid(_) => K::Validation,
            Self::AlreadyFinished { .. } => K::AlreadyFinished,
            Self::NotNow { .. } => K::NotNow,
            Self::Unavailable(_) => K::StoreUnavailable,
            Self::QuotaExceeded { .. } => K::QuotaExceeded,
            Self::StaleToken { .. } | Self::Update(_) | Self::Corrupt(_) => K::Internal,
        }
    }
}
