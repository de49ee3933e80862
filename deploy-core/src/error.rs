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
    #[error("invalid request")]
    Invalid(#[source] ValidationErrors),
    /// The principal's role or environments do not allow this.
    #[error("forbidden")]
    Forbidden(#[source] Forbidden),
    /// The store refused or failed.
    #[error("store error")]
    Store(#[from] StoreError),
    /// Only a terminal deployment can be rolled back, and only one that changed something.
    #[error("deployment {0} cannot be rolled back: {1}")]
    NotRollbackable(crate::names::DeploymentId, String),
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
