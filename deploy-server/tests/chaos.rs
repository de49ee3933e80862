//! The chaos suite's short form (issue 16): a few rounds of every scenario against the real `deployd` binary —
//! kill -9 on SQLite, a replica paused past its lease, a replica partitioned from PostgreSQL, PostgreSQL restarts, a
//! full disk, racing submissions under each policy — with 0 failures of every kind. `deploy-chaos --long` is the long
//! run; RELIABILITY.md has its figures.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use deploy_chaos::{Config, LEASE, Plan};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_short_chaos_run_finds_nothing() {
    let work = deploy_testkit::fixtures::temp_dir("chaos");
    // The seed comes from the run's clock, so CI explores new schedules; a failure prints it for a replay.
    let seed = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64;
    let cfg = Config { deployd: env!("CARGO_BIN_EXE_deployd").into(), work: work.to_path_buf(), seed, lease: LEASE };
    let report = deploy_chaos::run(&cfg, Plan::short()).await;
    println!("{}", report.table());
    // CI (which sets DEPLOY_TEST_PG_URL) has PostgreSQL's server programs and prlimit, so every scenario must run
    // there; elsewhere a scenario a machine cannot run is reported skipped, as deploy-sql's PostgreSQL tests are.
    let required = std::env::var_os("DEPLOY_TEST_PG_URL").is_some();
    for t in &report.tallies {
        match &t.skipped {
            Some(why) if required => panic!("{} did not run: {why}", t.scenario),
            Some(why) => println!("skipped {}: {why}", t.scenario),
            None => assert!(t.rounds > 0, "{} ran no round", t.scenario),
        }
    }
    assert_eq!(
        report.failures(),
        0,
        "replay: cargo run -p deploy-chaos -- --seed {seed}\n{:#?}",
        report.tallies.iter().flat_map(|t| &t.failures).collect::<Vec<_>>()
    );
}
