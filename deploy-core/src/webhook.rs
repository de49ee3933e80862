//! The retry schedule of webhook deliveries: what the outcome of one attempt means for the next.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use crate::clock::{Timestamp, add as add_duration};
use crate::duration::{DurationParseError, HumanDuration};
use crate::store::DeliveryOutcome;

/// The delays between delivery attempts: after the first failed attempt the delivery waits `delays[0]`, after the
/// second `delays[1]`, and so on; when the schedule is exhausted the delivery fails for good. Each delay is jittered
/// by up to ±20% so retries to one receiver spread out, and a receiver's `Retry-After` is honoured when it asks for
/// longer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetrySchedule {
    delays: Vec<Duration>,
}

/// The default schedule: `1s,5s,5m,30m,2h,5h,10h,14h,20h,24h`, eleven attempts over about three days.
const DEFAULT: [u64; 10] = [1, 5, 300, 1_800, 7_200, 18_000, 36_000, 50_400, 72_000, 86_400];

impl Default for RetrySchedule {
    fn default() -> Self {
        Self { delays: DEFAULT.iter().map(|s| Duration::from_secs(*s)).collect() }
    }
}

/// Why a retry schedule could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RetryScheduleError {
    /// The schedule names no delay.
    #[error("a retry schedule needs at least one delay (e.g. `1s,5s,5m`)")]
    Empty,
    /// One delay is not a duration.
    #[error("retry schedule entry {index} (`{entry}`): {source}")]
    Entry {
        /// Its position, from 1.
        index: usize,
        /// The text.
        entry: String,
        /// Why.
        #[source]
        source: DurationParseError,
    },
}

impl FromStr for RetrySchedule {
    type Err = RetryScheduleError;

    /// Parses comma-separated durations (`1s,5s,5m,30m,2h`).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let delays =
            s.split(',')
                .map(str::trim)
                .filter(|e| !e.is_empty())
                .enumerate()
                .map(|(i, entry)| {
                    entry
                        .parse::<HumanDuration>()
                        .map(HumanDuration::as_std)
                        .map_err(|source| RetryScheduleError::Entry { index: i + 1, entry: entry.to_owned(), source })
                })
                .collect::<Result<Vec<_>, _>>()?;
        Self::new(delays)
    }
}

impl fmt::Display for RetrySchedule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let parts: Vec<String> = self.delays.iter().map(|d| HumanDuration::from(*d).to_string()).collect();
        f.write_str(&parts.join(","))
    }
}

impl RetrySchedule {
    /// A schedule of these delays.
    ///
    /// # Errors
    /// [`RetryScheduleError::Empty`] when `delays` is empty.
    pub fn new(delays: Vec<Duration>) -> Result<Self, RetryScheduleError> {
        if delays.is_empty() {
            return Err(RetryScheduleError::Empty);
        }
        Ok(Self { delays })
    }

    /// The delays, unjittered.
    #[must_use]
    pub fn delays(&self) -> &[Duration] {
        &self.delays
    }

    /// How many attempts a delivery gets in all (the first and one after each delay).
    #[must_use]
    pub fn max_attempts(&self) -> usize {
        self.delays.len() + 1
    }

    /// The total of the delays: how long a dead receiver is retried.
    #[must_use]
    pub fn span(&self) -> Duration {
        self.delays.iter().sum()
    }

    /// The outcome of a failed attempt, given the attempts made before it: retry after the next delay (jittered, and
    /// at least `retry_after` when the receiver sent one), or give up when the schedule is exhausted.
    #[must_use]
    pub fn after_failure(
        &self,
        attempts_before: u32,
        status_code: Option<u16>,
        retry_after: Option<Duration>,
        now: Timestamp,
    ) -> DeliveryOutcome {
        let index = usize::try_from(attempts_before).unwrap_or(usize::MAX);
        let Some(delay) = self.delays.get(index) else {
            return DeliveryOutcome::GiveUp { status_code };
        };
        let mut wait = jitter(*delay);
        if let Some(asked) = retry_after {
            wait = wait.max(asked);
        }
        DeliveryOutcome::Retry { status_code, next_attempt_at: add_duration(now, wait) }
    }
}

/// `delay` ± up to 20%.
fn jitter(delay: Duration) -> Duration {
    let fifth = u64::try_from((delay / 5).as_nanos()).unwrap_or(u64::MAX);
    if fifth == 0 {
        return delay;
    }
    // The low 64 bits of a UUIDv7 are random: enough entropy for jitter without another dependency.
    let random = uuid::Uuid::now_v7().as_u128() as u64 % (2 * fifth);
    (delay + Duration::from_nanos(random)).saturating_sub(Duration::from_nanos(fifth))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use super::*;
    use time::macros::datetime;

    #[test]
    fn the_default_spans_about_three_days_in_eleven_attempts() {
        let s = RetrySchedule::default();
        assert_eq!(s.max_attempts(), 11);
        let hours = s.span().as_secs() / 3600;
        assert!((70..=80).contains(&hours), "{hours} h");
        assert_eq!(s.to_string().parse::<RetrySchedule>().unwrap(), s);
    }

    #[test]
    fn parses_and_refuses() {
        let s: RetrySchedule = "1s, 5s,2m".parse().unwrap();
        assert_eq!(s.delays(), &[Duration::from_secs(1), Duration::from_secs(5), Duration::from_secs(120)]);
        assert_eq!("".parse::<RetrySchedule>(), Err(RetryScheduleError::Empty));
        let err = "1s,soon".parse::<RetrySchedule>().unwrap_err();
        assert!(matches!(err, RetryScheduleError::Entry { index: 2, .. }), "{err}");
    }

    #[test]
    fn failures_walk_the_schedule_with_jitter_then_give_up() {
        let now = datetime!(2026-01-01 00:00 UTC);
        let s: RetrySchedule = "10s,100s".parse().unwrap();
        for (before, delay) in [(0u32, 10i64), (1, 100)] {
            for _ in 0..50 {
                let DeliveryOutcome::Retry { next_attempt_at, status_code } =
                    s.after_failure(before, Some(500), None, now)
                else {
                    panic!("expected a retry")
                };
                assert_eq!(status_code, Some(500));
                let waited = (next_attempt_at - now).whole_milliseconds();
                let (lo, hi) = (i128::from(delay) * 800, i128::from(delay) * 1200);
                assert!((lo..=hi).contains(&waited), "{waited} ms for a {delay} s delay");
            }
        }
        assert_eq!(s.after_failure(2, None, None, now), DeliveryOutcome::GiveUp { status_code: None });
    }

    #[test]
    fn retry_after_is_honoured_when_longer() {
        let now = datetime!(2026-01-01 00:00 UTC);
        let s: RetrySchedule = "1s".parse().unwrap();
        let DeliveryOutcome::Retry { next_attempt_at, .. } =
            s.after_failure(0, Some(429), Some(Duration::from_secs(60)), now)
        else {
            panic!("expected a retry")
        };
        assert_eq!(next_attempt_at - now, time::Duration::seconds(60));
    }
}
