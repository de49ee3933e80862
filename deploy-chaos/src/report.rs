//! What a chaos run found: rounds, failures by kind, and takeover times, per scenario.

use std::fmt::Write as _;
use std::time::Duration;

/// A way the system can break a promise.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    /// A deployment answered 202 that the store no longer has.
    Lost,
    /// A deployment that never reached a final status.
    Stuck,
    /// Two hooks worked on one target at once, or two deployments on one environment.
    Overlap,
    /// A replica started work for a deployment after another had taken it over.
    Stale,
    /// The record disagrees with what runs on the targets.
    Disagrees,
    /// One idempotency key made two deployments.
    Duplicate,
    /// An answer deployd does not promise (a 500, no answer, a 202 while writes fail), a panic in its log, or a
    /// scenario that could not be set up.
    Unclean,
    /// A hook still running after its deployment finished.
    Orphaned,
}

impl Kind {
    /// Every kind, in the order of the report's columns.
    pub const ALL: [Self; 8] = [
        Self::Lost,
        Self::Stuck,
        Self::Overlap,
        Self::Stale,
        Self::Disagrees,
        Self::Duplicate,
        Self::Unclean,
        Self::Orphaned,
    ];

    /// The column name.
    #[must_use]
    pub const fn name(self) -> &'static str {
        match self {
            Self::Lost => "lost",
            Self::Stuck => "stuck",
            Self::Overlap => "overlap",
            Self::Stale => "stale",
            Self::Disagrees => "disagrees",
            Self::Duplicate => "duplicate",
            Self::Unclean => "unclean",
            Self::Orphaned => "orphaned",
        }
    }
}

/// One scenario's results.
#[derive(Debug, Clone, Default)]
pub struct Tally {
    /// The scenario.
    pub scenario: &'static str,
    /// Rounds completed.
    pub rounds: u32,
    /// Every failure, with what was seen.
    pub failures: Vec<(Kind, String)>,
    /// From each fault to the first hook a new owner started.
    pub takeovers: Vec<Duration>,
    /// Why the scenario did not run, when it did not.
    pub skipped: Option<String>,
    /// How it ran, when that varies with the machine (the disk-full scenario's filesystem).
    pub note: Option<String>,
    /// How long it took.
    pub elapsed: Duration,
}

impl Tally {
    /// A tally for `scenario`.
    #[must_use]
    pub fn new(scenario: &'static str) -> Self {
        Self { scenario, ..Self::default() }
    }

    /// Records a failure (and prints it at once, for whoever watches a long run).
    pub fn fail(&mut self, kind: Kind, what: impl Into<String>) {
        let what = what.into();
        eprintln!("chaos {} round {}: {}: {what}", self.scenario, self.rounds + 1, kind.name());
        self.failures.push((kind, what));
    }

    /// Failures of `kind`.
    #[must_use]
    pub fn count(&self, kind: Kind) -> usize {
        self.failures.iter().filter(|(k, _)| *k == kind).count()
    }

    fn percentile(&self, p: f64) -> Option<Duration> {
        let mut t = self.takeovers.clone();
        t.sort();
        let i = ((t.len() as f64 - 1.0) * p).round() as usize;
        t.get(i).copied()
    }
}

/// A whole run.
#[derive(Debug, Clone, Default)]
pub struct Report {
    /// The seed every random choice followed from.
    pub seed: u64,
    /// Per scenario.
    pub tallies: Vec<Tally>,
}

impl Report {
    /// Failures of every kind in every scenario.
    #[must_use]
    pub fn failures(&self) -> usize {
        self.tallies.iter().map(|t| t.failures.len()).sum()
    }

    /// The table the run prints: a row per scenario, a column per kind of failure, takeover times.
    #[must_use]
    pub fn table(&self) -> String {
        let mut out = String::new();
        let _ = write!(out, "{:<12} {:>6}", "scenario", "rounds");
        for k in Kind::ALL {
            let _ = write!(out, " {:>9}", k.name());
        }
        let _ = writeln!(out, " {:>12} {:>12} {:>8}", "takeover p50", "takeover max", "time");
        for t in &self.tallies {
            let _ = write!(out, "{:<12} {:>6}", t.scenario, t.rounds);
            for k in Kind::ALL {
                let _ = write!(out, " {:>9}", t.count(k));
            }
            let ms = |d: Option<Duration>| d.map_or_else(|| "-".to_owned(), |d| format!("{} ms", d.as_millis()));
            let max = t.takeovers.iter().max().copied();
            let _ = write!(out, " {:>12} {:>12} {:>7}s", ms(t.percentile(0.5)), ms(max), t.elapsed.as_secs());
            if let Some(why) = &t.skipped {
                let _ = write!(out, "  skipped: {why}");
            }
            if let Some(note) = &t.note {
                let _ = write!(out, "  ({note})");
            }
            let _ = writeln!(out);
        }
        let _ = writeln!(out, "seed {}; {} failures", self.seed, self.failures());
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_counts_failures_by_kind_and_takeovers() {
        let mut t = Tally::new("kill");
        t.rounds = 3;
        t.fail(Kind::Overlap, "t1");
        t.takeovers = vec![Duration::from_millis(300), Duration::from_millis(100), Duration::from_millis(200)];
        let r = Report { seed: 9, tallies: vec![t] };
        assert_eq!(r.failures(), 1);
        let table = r.table();
        let row = table.lines().nth(1).unwrap_or_default();
        let cells: Vec<&str> = row.split_whitespace().collect();
        assert_eq!(&cells[..10], ["kill", "3", "0", "0", "1", "0", "0", "0", "0", "0"], "{table}");
        assert!(row.contains("200 ms") && row.contains("300 ms"), "{table}");
    }
}
