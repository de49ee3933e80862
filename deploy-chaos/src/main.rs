//! `deploy-chaos`: runs the chaos suite against a `deployd` binary and prints what it found; exits 1 on any failure.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use deploy_chaos::{Config, LEASE, Plan};

/// The chaos suite (see the crate documentation and RELIABILITY.md).
#[derive(Debug, Parser)]
#[command(name = "deploy-chaos", about)]
struct Cli {
    /// The long run (200 kill, 50 pause, 20 partition, 20 database-restart, 20 full-disk and 5 race rounds) instead
    /// of the short one; each count below overrides its part.
    #[arg(long)]
    long: bool,
    /// kill -9 rounds.
    #[arg(long)]
    kill: Option<u32>,
    /// Paused-replica rounds.
    #[arg(long)]
    pause: Option<u32>,
    /// Partition rounds.
    #[arg(long)]
    partition: Option<u32>,
    /// PostgreSQL restart rounds.
    #[arg(long)]
    database_restart: Option<u32>,
    /// Full-disk rounds.
    #[arg(long)]
    disk_full: Option<u32>,
    /// Racing-submission rounds.
    #[arg(long)]
    race: Option<u32>,
    /// The seed of every random choice (default: from the clock; printed, so a run can be replayed).
    #[arg(long)]
    seed: Option<u64>,
    /// The deployd binary (default: `deployd` beside this program, as `cargo build` leaves it).
    #[arg(long, env = "DEPLOYD")]
    deployd: Option<PathBuf>,
    /// Where data, hosts and logs go (default: a new temporary directory, kept for a look).
    #[arg(long)]
    work: Option<PathBuf>,
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let deployd = cli.deployd.clone().or_else(|| {
        let me = std::env::current_exe().ok()?;
        Some(me.parent()?.join("deployd"))
    });
    let Some(deployd) = deployd.filter(|p| p.exists()) else {
        eprintln!(
            "deploy-chaos: no deployd binary; build it (cargo build --release -p deploy-server) or pass --deployd"
        );
        return ExitCode::from(2);
    };
    let mut plan = if cli.long { Plan::long() } else { Plan::short() };
    macro_rules! set {
        ($($f:ident),*) => { $( if let Some(n) = cli.$f { plan.$f = n; } )* };
    }
    set!(kill, pause, partition, database_restart, disk_full, race);
    let seed = cli.seed.unwrap_or_else(|| {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(1, |d| d.as_nanos() as u64)
    });
    let work = cli.work.unwrap_or_else(|| std::env::temp_dir().join(format!("deploy-chaos-{seed}")));
    println!("deploy-chaos: seed {seed}, {plan:?}, deployd {}, work in {}", deployd.display(), work.display());
    let cfg = Config { deployd, work, seed, lease: LEASE };
    let report = deploy_chaos::run(&cfg, plan).await;
    println!("{}", report.table());
    if report.failures() == 0 { ExitCode::SUCCESS } else { ExitCode::FAILURE }
}
