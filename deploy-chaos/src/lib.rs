//! # deploy-chaos
//!
//! The chaos suite: real `deployd` processes (one on SQLite, or two replicas on PostgreSQL) deploy to `command`
//! targets whose hooks log who worked on what and when, while the suite kills them (`kill -9`), pauses them past
//! their lease (SIGSTOP), cuts them off from the database, restarts the database, fills the disk and races
//! submissions. Each round's history is checked against a model ([`history`]); [`Report::table`] counts the
//! failures by kind: lost, stuck, overlapping work, stale work after a handover, record disagreeing with the hosts,
//! duplicates of one idempotency key, unclean answers, orphaned hooks.
//!
//! `deploy-chaos --long` is the long run (RELIABILITY.md has its figures); `deploy-server`'s `tests/chaos.rs` runs
//! [`Plan::short`] in CI.

pub mod disk;
pub mod fleet;
pub mod history;
pub mod postgres;
pub mod proxy;
pub mod report;
pub mod scenarios;

use std::time::Duration;

pub use report::{Kind, Report, Tally};
pub use scenarios::Config;

/// How many rounds of each scenario to run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Plan {
    /// kill -9 of a single deployd on SQLite.
    pub kill: u32,
    /// SIGSTOP of the replica driving a deployment, past its lease.
    pub pause: u32,
    /// A partition between that replica and PostgreSQL.
    pub partition: u32,
    /// PostgreSQL restarts.
    pub database_restart: u32,
    /// A full disk under SQLite.
    pub disk_full: u32,
    /// 50 racing submissions per concurrency policy.
    pub race: u32,
}

impl Plan {
    /// A few rounds of each: the form CI runs.
    #[must_use]
    pub const fn short() -> Self {
        Self { kill: 4, pause: 2, partition: 2, database_restart: 2, disk_full: 2, race: 1 }
    }

    /// The long run: at least 200 kill, 50 pause and 20 partition rounds.
    #[must_use]
    pub const fn long() -> Self {
        Self { kill: 200, pause: 50, partition: 20, database_restart: 20, disk_full: 20, race: 5 }
    }
}

/// Runs `plan` and reports. Scenarios on PostgreSQL need a private cluster (initdb, pg_ctl); without one they are
/// reported skipped, with the reason.
pub async fn run(cfg: &Config, plan: Plan) -> Report {
    let mut tallies = Vec::new();
    if plan.kill > 0 {
        tallies.push(scenarios::kill(cfg, plan.kill).await);
    }
    if plan.disk_full > 0 {
        tallies.push(scenarios::disk_full(cfg, plan.disk_full).await);
    }
    let wants_database = plan.pause + plan.partition + plan.database_restart + plan.race > 0;
    if wants_database {
        match postgres::Cluster::start().await {
            Ok(db) => {
                if plan.pause > 0 {
                    tallies.push(scenarios::pause(cfg, &db, plan.pause).await);
                }
                if plan.partition > 0 {
                    tallies.push(scenarios::partition(cfg, &db, plan.partition).await);
                }
                if plan.database_restart > 0 {
                    tallies.push(scenarios::database_restart(cfg, &db, plan.database_restart).await);
                }
                if plan.race > 0 {
                    tallies.push(scenarios::race(cfg, &db, plan.race).await);
                }
            }
            Err(e) => {
                for name in ["pause", "partition", "pg-restart", "race"] {
                    let mut t = Tally::new(name);
                    t.skipped = Some(format!("no private PostgreSQL: {e:#}"));
                    tallies.push(t);
                }
            }
        }
    }
    Report { seed: cfg.seed, tallies }
}

/// The default lease of the suite's replicas: short, so takeovers (and rounds) are quick.
pub const LEASE: Duration = Duration::from_secs(2);
