//! When deployments may start: an environment's deploy windows and freeze periods (recurring, in a time zone), and a
//! global freeze for incidents. Recurrence is a cron pattern read by `croner` in an IANA zone from `chrono-tz`, so
//! daylight-saving changes move a window's opening in UTC as they move it on the local clock.
//!
//! These rules only gate a deployment's *start*: one already running goes on. A deployment that may not start stays
//! `queued`, with a reason that says until when, and is not claimable until then ([`crate::Deployment::wake_at`]).

use std::str::FromStr;

use chrono::TimeZone as _;
use serde::{Deserialize, Serialize};

use crate::clock::Timestamp;
use crate::duration::HumanDuration;
use crate::spec::ValidationErrors;

/// A recurring period: it opens at each occurrence of `cron` in `timezone` and lasts `duration`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Period {
    /// When it opens: a cron pattern (`minute hour day-of-month month day-of-week`, an optional leading seconds
    /// field), read on the local clock of `timezone`.
    pub cron: String,
    /// How long it lasts from each opening.
    pub duration: HumanDuration,
    /// The IANA time zone the pattern is read in (`Europe/Berlin`). Default: `UTC`.
    #[serde(default = "utc")]
    pub timezone: String,
    /// Why, for people (shown in the reason of a deployment it holds).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

fn utc() -> String {
    "UTC".to_owned()
}

/// An environment's deploy windows and freeze periods.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Schedule {
    /// When any is given, deployments start only inside one of them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub windows: Vec<Period>,
    /// No deployment starts inside one of these.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub freezes: Vec<Period>,
}

/// Why a deployment may not start now, and until when.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hold {
    /// The first moment it may start; `None` when nothing in the rules ends the hold (a global freeze without end,
    /// windows that never open again).
    pub until: Option<Timestamp>,
    /// Why, in a sentence.
    pub reason: String,
}

/// The most periods of each kind an environment may have.
pub const MAX_PERIODS: usize = 32;

/// How far ahead a hold is looked for: a window that opens later than this counts as never.
const HORIZON_DAYS: i64 = 400;

/// How many back-to-back openings are followed to find where a period ends.
const MAX_CHAIN: usize = 32;

/// A parsed period.
struct Compiled<'a> {
    period: &'a Period,
    cron: croner::Cron,
    zone: chrono_tz::Tz,
}

fn to_chrono(t: Timestamp) -> Option<chrono::DateTime<chrono::Utc>> {
    chrono::DateTime::from_timestamp(t.unix_timestamp(), t.nanosecond())
}

fn from_chrono<Tz: chrono::TimeZone>(t: &chrono::DateTime<Tz>) -> Option<Timestamp> {
    let nanos = i128::from(t.timestamp()) * 1_000_000_000 + i128::from(t.timestamp_subsec_nanos());
    Timestamp::from_unix_timestamp_nanos(nanos).ok()
}

impl Period {
    /// The period parsed, or the field that is wrong and why.
    fn compile(&self) -> Result<Compiled<'_>, (&'static str, String)> {
        let cron = croner::Cron::from_str(&self.cron).map_err(|e| ("cron", format!("not a cron pattern: {e}")))?;
        let zone = chrono_tz::Tz::from_str(&self.timezone).map_err(|_| {
            ("timezone", format!("{:?} is not an IANA time zone (like Europe/Berlin or UTC)", self.timezone))
        })?;
        Ok(Compiled { period: self, cron, zone })
    }
}

impl Compiled<'_> {
    /// The latest opening at or before `t`.
    fn opened_before(&self, t: Timestamp) -> Option<Timestamp> {
        let local = self.zone.from_utc_datetime(&to_chrono(t)?.naive_utc());
        self.cron.find_previous_occurrence(&local, true).ok().as_ref().and_then(from_chrono)
    }

    /// The first opening strictly after `t`.
    fn opens_after(&self, t: Timestamp) -> Option<Timestamp> {
        let local = self.zone.from_utc_datetime(&to_chrono(t)?.naive_utc());
        self.cron.find_next_occurrence(&local, false).ok().as_ref().and_then(from_chrono)
    }

    /// When `t` is inside the period: when it ends, following openings that begin before the one before ends.
    fn inside(&self, t: Timestamp) -> Option<Timestamp> {
        let length = self.period.duration.as_std();
        let opened = self.opened_before(t)?;
        let mut end = crate::clock::add(opened, length);
        if end <= t {
            return None;
        }
        // A freeze made of back-to-back openings is followed for a while; a hold is looked at again long before the
        // end this finds anyway.
        let mut last = opened;
        for _ in 0..MAX_CHAIN {
            match self.opens_after(last) {
                Some(next) if next <= end => {
                    end = end.max(crate::clock::add(next, length));
                    last = next;
                }
                _ => break,
            }
        }
        Some(end)
    }
}

impl Schedule {
    /// Checks every pattern, zone and duration.
    pub(crate) fn check(&self, errs: &mut ValidationErrors) {
        for (kind, periods) in [("schedule.windows", &self.windows), ("schedule.freezes", &self.freezes)] {
            if periods.len() > MAX_PERIODS {
                errs.push(kind, format!("at most {MAX_PERIODS}"));
            }
            for (i, p) in periods.iter().enumerate() {
                if let Err((field, why)) = p.compile() {
                    errs.push(format!("{kind}[{i}].{field}"), why);
                }
                if p.duration.is_zero() {
                    errs.push(format!("{kind}[{i}].duration"), "must be longer than zero");
                }
                if let Some(reason) = &p.reason {
                    errs.check_text(&format!("{kind}[{i}].reason"), reason, 200);
                }
            }
        }
    }

    /// Whether a deployment may start at `now`: `None` if it may, otherwise until when it may not and why. Freezes
    /// hold until they end; outside every window, until the next one opens; the two are followed in turn (a window
    /// that opens inside a freeze starts only when the freeze ends).
    #[must_use]
    pub fn hold(&self, now: Timestamp) -> Option<Hold> {
        let windows: Vec<Compiled<'_>> = self.windows.iter().filter_map(|p| p.compile().ok()).collect();
        let freezes: Vec<Compiled<'_>> = self.freezes.iter().filter_map(|p| p.compile().ok()).collect();
        let horizon = now + time::Duration::days(HORIZON_DAYS);
        let mut t = now;
        let mut reason: Option<String> = None;
        for _ in 0..256 {
            if let Some((end, p)) =
                freezes.iter().filter_map(|f| f.inside(t).map(|end| (end, f))).max_by_key(|(e, _)| *e)
            {
                reason.get_or_insert_with(|| match &p.period.reason {
                    Some(r) => format!("in a freeze ({r})"),
                    None => format!("in a freeze ({} {})", p.period.cron, p.period.timezone),
                });
                t = end;
                continue;
            }
            if !windows.is_empty() && !windows.iter().any(|w| w.inside(t).is_some()) {
                reason.get_or_insert_with(|| "outside its deploy windows".to_owned());
                match windows.iter().filter_map(|w| w.opens_after(t)).min() {
                    Some(next) if next <= horizon => {
                        t = next;
                        continue;
                    }
                    _ => return Some(Hold { until: None, reason: reason.unwrap_or_default() }),
                }
            }
            break;
        }
        (t > now).then(|| Hold { until: Some(t), reason: reason.unwrap_or_default() })
    }
}

/// A global freeze: while it stands, no deployment starts anywhere (those running go on). For incidents.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Freeze {
    /// Why (required).
    pub reason: String,
    /// Who froze (the principal's id).
    pub by: String,
    /// Since when.
    #[serde(with = "time::serde::rfc3339")]
    pub since: Timestamp,
    /// When it lifts by itself; `None`: when lifted.
    #[serde(default, with = "time::serde::rfc3339::option")]
    pub until: Option<Timestamp>,
}

impl Freeze {
    /// Whether it holds at `now`.
    #[must_use]
    pub fn holds_at(&self, now: Timestamp) -> bool {
        self.until.is_none_or(|u| now < u)
    }

    /// The hold it puts on a deployment at `now`, if it holds.
    #[must_use]
    pub fn hold(&self, now: Timestamp) -> Option<Hold> {
        self.holds_at(now)
            .then(|| Hold { until: self.until, reason: format!("a global freeze by {} ({})", self.by, self.reason) })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn period(cron: &str, hours: u64, tz: &str) -> Period {
        Period {
            cron: cron.into(),
            duration: HumanDuration::from_secs(hours * 3600),
            timezone: tz.into(),
            reason: None,
        }
    }

    #[test]
    fn a_window_opens_at_its_local_time_across_a_daylight_saving_change() {
        // Berlin moves from CET (+1) to CEST (+2) at 2026-03-29 01:00 UTC.
        let s = Schedule { windows: vec![period("0 9 * * *", 2, "Europe/Berlin")], freezes: vec![] };
        let before = time::macros::datetime!(2026-03-28 12:00 UTC);
        let hold = s.hold(before).unwrap();
        assert_eq!(hold.until, Some(time::macros::datetime!(2026-03-29 07:00 UTC)), "09:00 CEST");
        assert_eq!(hold.reason, "outside its deploy windows");
        let winter = time::macros::datetime!(2026-03-27 12:00 UTC);
        assert_eq!(s.hold(winter).unwrap().until, Some(time::macros::datetime!(2026-03-28 08:00 UTC)), "09:00 CET");
        assert_eq!(s.hold(time::macros::datetime!(2026-03-29 08:59 UTC)), None, "inside: 10:59 CEST");
        assert!(s.hold(time::macros::datetime!(2026-03-29 09:00 UTC)).is_some(), "closed at 11:00 CEST");
    }

    #[test]
    fn freezes_hold_until_they_end_and_a_window_inside_a_freeze_waits_for_it() {
        let mut freeze = period("0 0 24 12 *", 72, "America/New_York");
        freeze.reason = Some("holidays".into());
        let s = Schedule { windows: vec![period("0 * * * *", 1, "UTC")], freezes: vec![freeze] };
        let hold = s.hold(time::macros::datetime!(2026-12-25 12:00 UTC)).unwrap();
        // 2026-12-24 00:00 EST is 05:00 UTC; 72 h later is 2026-12-27 05:00 UTC, inside the hourly window.
        assert_eq!(hold.until, Some(time::macros::datetime!(2026-12-27 05:00 UTC)));
        assert_eq!(hold.reason, "in a freeze (holidays)");
        assert_eq!(s.hold(time::macros::datetime!(2026-12-28 12:00 UTC)), None);
    }

    #[test]
    fn bad_patterns_zones_and_durations_are_named() {
        let s = Schedule {
            windows: vec![period("61 * * * *", 1, "UTC"), period("0 9 * * *", 0, "Mars/Olympus")],
            freezes: vec![],
        };
        let mut errs = ValidationErrors::default();
        s.check(&mut errs);
        let fields: Vec<&str> = errs.errors().iter().map(|e| e.field.as_str()).collect();
        assert_eq!(
            fields,
            ["schedule.windows[0].cron", "schedule.windows[1].timezone", "schedule.windows[1].duration"]
        );
    }

    #[test]
    fn a_global_freeze_holds_until_its_end() {
        let at = time::macros::datetime!(2026-06-01 10:00 UTC);
        let f = Freeze { reason: "incident 7".into(), by: "key:oncall".into(), since: at, until: None };
        assert!(f.hold(at).unwrap().reason.contains("incident 7"));
        let ends = Freeze { until: Some(at + time::Duration::hours(1)), ..f };
        assert!(ends.holds_at(at) && !ends.holds_at(at + time::Duration::hours(1)));
    }
}
