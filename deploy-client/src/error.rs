//! What can go wrong talking to `deployd`.

use std::fmt;
use std::time::Duration;

use deploy_core::Deployment;
use serde::Deserialize;

/// One field's problem in a validation error.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct FieldError {
    /// The field, in dotted form (`strategy.batch_size`).
    pub field: String,
    /// What is wrong with it.
    pub message: String,
}

/// An RFC 9457 problem the server answered.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Problem {
    /// `/problems/<slug>`.
    #[serde(rename = "type")]
    pub type_uri: String,
    /// A short summary.
    pub title: String,
    /// The HTTP status.
    pub status: u16,
    /// What happened in this case.
    #[serde(default)]
    pub detail: Option<String>,
    /// Every field error, for validation problems.
    #[serde(default)]
    pub errors: Vec<FieldError>,
    /// The answer's `X-Request-Id`, to quote to the server's operators.
    #[serde(skip)]
    pub request_id: Option<String>,
    /// The answer's `Retry-After`.
    #[serde(skip)]
    pub retry_after: Option<Duration>,
}

impl Problem {
    /// The slug of its type (`validation`, `environment-busy`, ...).
    #[must_use]
    pub fn slug(&self) -> &str {
        self.type_uri.rsplit('/').next().unwrap_or(&self.type_uri)
    }

    /// Its kind, when the server answered one this client knows (the same enum the server answers from).
    ///
    /// ```
    /// use deploy_client::{Problem, ProblemKind};
    /// let p: Problem = serde_json::from_str(
    ///     r#"{"type": "/problems/environment-busy", "title": "Environment busy", "status": 409}"#,
    /// ).unwrap();
    /// assert_eq!(p.kind(), Some(ProblemKind::EnvironmentBusy));
    /// ```
    #[must_use]
    pub fn kind(&self) -> Option<deploy_core::ProblemKind> {
        deploy_core::ProblemKind::from_slug(self.slug())
    }

    /// Whether it is of the type with this slug.
    #[must_use]
    pub fn is(&self, slug: &str) -> bool {
        self.slug() == slug
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.title)?;
        if let Some(d) = &self.detail {
            write!(f, ": {d}")?;
        }
        for e in &self.errors {
            write!(f, "\n  {}: {}", e.field, e.message)?;
        }
        Ok(())
    }
}

/// Why a call failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The server answered with a problem (after any retries it allowed).
    #[error("{0}")]
    Problem(Box<Problem>),
    /// The server could not be reached, or the connection failed (after retries).
    #[error("cannot reach the server: {0}")]
    Transport(#[source] reqwest::Error),
    /// A request took longer than the client's timeout (after retries).
    #[error("the request timed out")]
    Timeout(#[source] reqwest::Error),
    /// The server's answer is not what the contract says.
    #[error("unexpected answer from the server: {0}")]
    Protocol(String),
    /// The base URL or a path segment is unusable.
    #[error("invalid URL: {0}")]
    Url(String),
    /// The call was asked in a way it cannot be made (nothing was sent).
    #[error("{0}")]
    Usage(String),
    /// [`crate::Client::wait`] gave up before the deployment finished; this is the last state seen.
    #[error("deployment {} was still {} when the wait ended", .0.id(), .0.status())]
    WaitTimedOut(Box<Deployment>),
}

impl Error {
    /// The problem, when the server answered with one.
    #[must_use]
    pub fn problem(&self) -> Option<&Problem> {
        match self {
            Self::Problem(p) => Some(p),
            _ => None,
        }
    }

    pub(crate) fn from_reqwest(e: reqwest::Error) -> Self {
        if e.is_timeout() { Self::Timeout(e) } else { Self::Transport(e) }
    }
}
