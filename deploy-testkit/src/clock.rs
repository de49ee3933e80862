//! [`TestClock`]: timestamps that move with tokio's (possibly paused) timers.

use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use async_trait::async_trait;
use deploy_core::{Clock, Timestamp};
use time::OffsetDateTime;
use tokio::time::Instant;

/// A clock whose `now` is a fixed start plus the time elapsed on tokio's timer, plus any manual jumps.
///
/// Under `#[tokio::test(start_paused = true)]` tokio advances its timer as soon as every task waits, so a ten-minute
/// progress deadline passes in microseconds of real time and both `now` and `sleep` agree on it. [`TestClock::advance`]
/// jumps `now` forward without waking sleepers, to simulate a lease that lapsed while its holder was frozen.
#[derive(Debug)]
pub struct TestClock {
    start_wall: OffsetDateTime,
    start: Instant,
    jumped: Mutex<Duration>,
}

impl TestClock {
    /// A clock starting at 2026-01-01T00:00:00Z.
    #[must_use]
    pub fn new() -> Self {
        Self {
            start_wall: time::macros::datetime!(2026-01-01 00:00:00 UTC),
            start: Instant::now(),
            jumped: Mutex::new(Duration::ZERO),
        }
    }

    /// Moves `now` forward by `by` without waking sleepers.
    pub fn advance(&self, by: Duration) {
        *self.jumped.lock().unwrap_or_else(PoisonError::into_inner) += by;
    }
}

impl Default for TestClock {
    fn default() -> Self {
        Self::new()
    }
}

#[async_trait]
impl Clock for TestClock {
    fn now(&self) -> Timestamp {
        let jumped = *self.jumped.lock().unwrap_or_else(PoisonError::into_inner);
        let elapsed = self.start.elapsed() + jumped;
        deploy_core::add_duration(self.start_wall, elapsed)
    }

    async fn sleep(&self, duration: Duration) {
        tokio::time::sleep(duration).await;
    }
}
