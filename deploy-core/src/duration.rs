//! Durations as the API writes them: `"500ms"`, `"30s"`, `"10m"`, `"2h"`, `"1d"`.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A non-negative duration written as an integer and a unit (`ms`, `s`, `m`, `h`, `d`).
///
/// Compound forms (`1m30s`) are accepted too; the canonical form written back is the largest unit
/// that represents the value exactly.
///
/// ```
/// use deploy_core::HumanDuration;
/// let d: HumanDuration = "90s".parse().unwrap();
/// assert_eq!(d.as_std(), std::time::Duration::from_secs(90));
/// assert_eq!(d.to_string(), "90s");
/// assert_eq!("1m30s".parse::<HumanDuration>().unwrap(), d);
/// assert!("ten seconds".parse::<HumanDuration>().is_err());
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct HumanDuration(Duration);

/// Why a duration string was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid duration {input:?}: expected an integer and a unit (ms, s, m, h, d), e.g. \"30s\"")]
pub struct DurationParseError {
    input: String,
}

/// The longest duration accepted anywhere in a spec: 30 days.
const MAX: Duration = Duration::from_secs(30 * 24 * 3600);

impl HumanDuration {
    /// The zero duration.
    pub const ZERO: Self = Self(Duration::ZERO);

    /// A duration of whole milliseconds.
    #[must_use]
    pub const fn from_millis(ms: u64) -> Self {
        Self(Duration::from_millis(ms))
    }

    /// A duration of whole seconds.
    #[must_use]
    pub const fn from_secs(secs: u64) -> Self {
        Self(Duration::from_secs(secs))
    }

    /// The standard-library duration.
    #[must_use]
    pub const fn as_std(self) -> Duration {
        self.0
    }

    /// Whether this is the zero duration.
    #[must_use]
    pub const fn is_zero(self) -> bool {
        self.0.is_zero()
    }
}

impl From<Duration> for HumanDuration {
    fn from(d: Duration) -> Self {
        Self(d)
    }
}

impl FromStr for HumanDuration {
    type Err = DurationParseError;

    fn from_str(input: &str) -> Result<Self, Self::Err> {
        let err = || DurationParseError { input: input.to_owned() };
        let s = input.trim();
        if s.is_empty() {
            return Err(err());
        }
        let mut total_ms: u128 = 0;
        let mut rest = s;
        while !rest.is_empty() {
            let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
            if digits == 0 || digits > 12 {
                return Err(err());
            }
            let (num, tail) = rest.split_at(digits);
            let value: u128 = num.parse().map_err(|_| err())?;
            let unit_len = tail.bytes().take_while(u8::is_ascii_alphabetic).count();
            let (unit, tail) = tail.split_at(unit_len);
            let factor: u128 = match unit {
                "ms" => 1,
                "s" => 1_000,
                "m" => 60_000,
                "h" => 3_600_000,
                "d" => 86_400_000,
                _ => return Err(err()),
            };
            total_ms = total_ms.saturating_add(value.saturating_mul(factor));
            rest = tail;
        }
        let ms = u64::try_from(total_ms).map_err(|_| err())?;
        let d = Duration::from_millis(ms);
        if d > MAX {
            return Err(err());
        }
        Ok(Self(d))
    }
}

impl fmt::Display for HumanDuration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ms = self.0.as_millis();
        let units: [(u128, &str); 4] = [(86_400_000, "d"), (3_600_000, "h"), (60_000, "m"), (1_000, "s")];
        if ms == 0 {
            return f.pad("0s");
        }
        // Written whole first, so width and alignment apply to all of it.
        let text = units
            .iter()
            .find(|(factor, _)| ms.is_multiple_of(*factor))
            .map_or_else(|| format!("{ms}ms"), |(factor, unit)| format!("{}{unit}", ms / factor));
        f.pad(&text)
    }
}

impl Serialize for HumanDuration {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for HumanDuration {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let s = String::deserialize(deserializer)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(input: &str, expect: Option<u64>) {
        let got = input.parse::<HumanDuration>().ok().map(|d| d.as_std().as_millis() as u64);
        assert_eq!(got, expect, "input {input:?}");
    }

    #[test]
    fn parses_the_documented_forms() {
        check("500ms", Some(500));
        check("30s", Some(30_000));
        check("10m", Some(600_000));
        check("2h", Some(7_200_000));
        check("1d", Some(86_400_000));
        check("1m30s", Some(90_000));
        check("0s", Some(0));
        check(" 5s ", Some(5_000));
    }

    #[test]
    fn refuses_malformed_or_huge_values() {
        check("", None);
        check("10", None);
        check("s", None);
        check("-5s", None);
        check("1.5s", None);
        check("5 s", None);
        check("5y", None);
        check("31d", None);
        check("99999999999999s", None);
    }

    #[test]
    fn displays_in_the_largest_exact_unit() {
        for (ms, text) in [(0, "0s"), (1_500, "1500ms"), (90_000, "90s"), (600_000, "10m"), (86_400_000, "1d")] {
            assert_eq!(HumanDuration::from_millis(ms).to_string(), text);
            assert_eq!(text.parse::<HumanDuration>().map(HumanDuration::as_std), Ok(Duration::from_millis(ms)));
        }
    }
}
