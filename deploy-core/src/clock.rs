//! Time as the engine sees it: a [`Clock`] that tests can drive.

use std::fmt;
use std::time::Duration;

use async_trait::async_trait;
use time::OffsetDateTime;

/// A point in time, UTC. Serialized as RFC 3339.
pub type Timestamp = OffsetDateTime;

/// The engine's source of time.
///
/// Every deadline, lease and backoff in the engine goes through this trait, so a test can run a ten-minute progress
/// deadline in microseconds. Contract: `now` never goes backwards within one clock; `sleep(d)` returns once `now` has
/// advanced by at least `d`.
#[async_trait]
pub trait Clock: Send + Sync + fmt::Debug {
    /// The current time.
    fn now(&self) -> Timestamp;

    /// Waits until `duration` has passed on this clock.
    async fn sleep(&self, duration: Duration);
}

/// The clock of the real world: wall time for timestamps, tokio timers for waiting.
///
/// Under tokio's paused test time (`#[tokio::test(start_paused = true)]`) timers advance virtually but `now` keeps
/// reading the wall clock; tests that need both to move together use `deploy_testkit::TestClock`.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

#[async_trait]
impl Clock for SystemClock {
    fn now(&self) -> Timestamp {
        OffsetDateTime::now_utc()
    }

    async fn sleep(&self, duration: Duration) {
        tokio::time::sleep(duration).await;
    }
}

/// `later - earlier` as a non-negative standard duration (zero when `later` is not later).
#[must_use]
pub fn elapsed_between(earlier: Timestamp, later: Timestamp) -> Duration {
    Duration::try_from(later - earlier).unwrap_or(Duration::ZERO)
}

/// `t + d`, saturating at the far future instead of overflowing.
#[must_use]
pub fn add(t: Timestamp, d: Duration) -> Timestamp {
    time::Duration::try_from(d).ok().and_then(|d| t.checked_add(d)).unwrap_or(time::PrimitiveDateTime::MAX.assume_utc())
}

macro_rules! forward_clock {
    ($($ptr:ty),*) => {$(
        #[async_trait::async_trait]
        impl<T: Clock + ?Sized> Clock for $ptr {
            fn now(&self) -> Timestamp {
                (**self).now()
            }
            async fn sleep(&self, duration: Duration) {
                (**self).sleep(duration).await;
            }
        }
    )*};
}

forward_clock!(std::sync::Arc<T>, Box<T>, &T);
