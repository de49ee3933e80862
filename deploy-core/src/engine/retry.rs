//! Bounded retries with exponential backoff and jitter, and the unreachable wait.

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::time::Duration;

use futures::FutureExt as _;

use crate::clock::{Clock, elapsed_between};
use crate::executor::{ErrorClass, ExecutorError};

/// How a call to an executor ended after the retry policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum CallError {
    /// Permanent, or retryable until retries ran out.
    Failed(String),
    /// Still unreachable after the unreachable wait.
    Unreachable(String),
}

pub(super) struct RetryPolicy<'a> {
    pub(super) clock: &'a dyn Clock,
    pub(super) max_retries: u32,
    pub(super) base: Duration,
    pub(super) cap: Duration,
    pub(super) unreachable_wait: Duration,
    /// Told of each retry of a retryable error, with what happened and how long until the next attempt.
    pub(super) on_retry: Box<dyn Fn(String) + Send + Sync + 'a>,
    /// Told when a call panicked (before the permanent error it became is returned).
    pub(super) on_panic: Box<dyn Fn() + Send + Sync + 'a>,
}

/// Awaits an executor call, turning a panic inside it into a permanent error naming the panic: an executor's bug
/// fails its target (with an event saying so) instead of the controller's task.
pub(super) async fn caught<T>(call: impl Future<Output = Result<T, ExecutorError>>) -> Result<T, ExecutorError> {
    match AssertUnwindSafe(call).catch_unwind().await {
        Ok(result) => result,
        Err(panic) => {
            let what = panic
                .downcast_ref::<&str>()
                .map(|s| (*s).to_owned())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "a panic without a message".to_owned());
            tracing::error!(panic = %what, "an executor panicked; its target fails");
            Err(ExecutorError::from_panic(format!("the executor panicked: {what}")))
        }
    }
}

impl RetryPolicy<'_> {
    /// Exponential backoff with "equal jitter": half fixed, half random, so retries of many targets spread out.
    pub(super) fn backoff(&self, retry: u32) -> Duration {
        let exp = self.base.saturating_mul(1u32 << retry.min(16)).min(self.cap);
        let half = exp / 2;
        let half_ns = u64::try_from(half.as_nanos()).unwrap_or(u64::MAX);
        if half_ns == 0 {
            return exp;
        }
        // The low 64 bits of a UUIDv7 are random: enough entropy for jitter without another dependency.
        let random = uuid::Uuid::now_v7().as_u128() as u64;
        half + Duration::from_nanos(random % half_ns)
    }

    /// Runs `op` until it succeeds, fails permanently, exhausts its retries, or stays unreachable for the wait.
    /// `attempts` counts every call made.
    pub(super) async fn run<T, F, Fut>(&self, attempts: &mut u32, mut op: F) -> Result<T, CallError>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, ExecutorError>>,
    {
        let mut retries = 0u32;
        let mut unreachable_since = None;
        loop {
            *attempts = attempts.saturating_add(1);
            let err = match caught(op()).await {
                Ok(v) => return Ok(v),
                Err(e) => e,
            };
            if err.is_panic() {
                (self.on_panic)();
            }
            match err.class() {
                ErrorClass::Permanent => return Err(CallError::Failed(err.message().to_owned())),
                ErrorClass::Retryable => {
                    unreachable_since = None;
                    if retries >= self.max_retries {
                        return Err(CallError::Failed(format!(
                            "gave up after {} attempts: {}",
                            retries + 1,
                            err.message()
                        )));
                    }
                    let wait = self.backoff(retries);
                    (self.on_retry)(format!(
                        "attempt {} failed ({}); retrying in {} ms",
                        retries + 1,
                        err.message(),
                        wait.as_millis()
                    ));
                    self.clock.sleep(wait).await;
                    retries += 1;
                }
                ErrorClass::Unreachable => {
                    let now = self.clock.now();
                    let since = *unreachable_since.get_or_insert(now);
                    let waited = elapsed_between(since, now);
                    if waited >= self.unreachable_wait {
                        return Err(CallError::Unreachable(format!(
                            "unreachable for {}s: {}",
                            waited.as_secs(),
                            err.message()
                        )));
                    }
                    let remaining = self.unreachable_wait.saturating_sub(waited);
                    let probe = (self.unreachable_wait / 10).clamp(Duration::from_millis(100), Duration::from_secs(5));
                    self.clock.sleep(probe.min(remaining).max(Duration::from_millis(1))).await;
                }
            }
        }
    }
}
