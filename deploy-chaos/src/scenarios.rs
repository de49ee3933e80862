//! The scenarios: each starts real `deployd` processes, runs rounds of a deployment under one kind of fault, and checks
//! every round's history (see [`crate::history`]).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context as _, bail};
use deploy_testkit::SeededRng;
use nix::sys::signal::Signal;
use serde_json::{Value, json};

use crate::fleet::{Answer, Api, Deployd};
use crate::history::{self, Host};
use crate::postgres::Cluster;
use crate::proxy::Partition;
use crate::report::{Kind, Tally};

/// What every scenario needs to know.
#[derive(Debug, Clone)]
pub struct Config {
    /// The `deployd` binary under test.
    pub deployd: PathBuf,
    /// A directory for data, hosts and logs.
    pub work: PathBuf,
    /// The seed of every random choice (each scenario derives its own from it).
    pub seed: u64,
    /// The replicas' lease.
    pub lease: Duration,
}

/// Nanoseconds since the epoch, the hooks' clock.
fn now_ns() -> u128 {
    SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_nanos())
}

/// The `deployd serve` arguments of a replica.
fn replica_args(data: &Path, state: &Path, lease: Duration, database: Option<&str>) -> Vec<String> {
    let mut args = vec![
        "--data-dir".to_owned(),
        data.display().to_string(),
        "--executor-state-dir".to_owned(),
        state.display().to_string(),
        "--executors".to_owned(),
        "command".to_owned(),
        "--lease".to_owned(),
        format!("{}ms", lease.as_millis()),
        "--poll-interval".to_owned(),
        "100ms".to_owned(),
        "--ip-rate-limit".to_owned(),
        "0".to_owned(),
        "--rate-limit".to_owned(),
        "100000".to_owned(),
        "--rate-limit-burst".to_owned(),
        "100000".to_owned(),
    ];
    if let Some(url) = database {
        args.extend(["--database-url".to_owned(), url.to_owned(), "--database-timeout".to_owned(), "1s".to_owned()]);
    }
    args
}

/// A fault: when (ns since the epoch), and the pid of the replica it struck (0 when it struck none: the database).
#[derive(Debug, Clone, Copy)]
struct Fault {
    at: u128,
    replica: u32,
}

impl Fault {
    fn now(replica: u32) -> Self {
        Self { at: now_ns(), replica }
    }
}

/// A deployment submitted in a round, and what ran on its targets before.
#[derive(Debug)]
struct Round {
    id: String,
    before: BTreeMap<String, Option<String>>,
}

/// One scenario's world: the hosts, the replicas, one environment, the random choices, the tally.
struct World {
    cfg: Config,
    host: Host,
    api: Api,
    replicas: Vec<Deployd>,
    env: String,
    targets: Vec<String>,
    rng: SeededRng,
    version: u32,
    tally: Tally,
}

impl World {
    fn new(cfg: &Config, scenario: &'static str, salt: u64) -> anyhow::Result<Self> {
        let dir = cfg.work.join(scenario);
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir)?;
        Ok(Self {
            cfg: cfg.clone(),
            host: Host::new(&dir.join("hosts"))?,
            api: Api::new(),
            replicas: Vec::new(),
            env: scenario.to_owned(),
            targets: Vec::new(),
            rng: SeededRng::new(cfg.seed ^ salt),
            version: 0,
            tally: Tally::new(scenario),
        })
    }

    fn dir(&self) -> PathBuf {
        self.cfg.work.join(self.tally.scenario)
    }

    async fn start_replica(&mut self, name: &str, database: Option<&str>, ignore_xfsz: bool) -> anyhow::Result<()> {
        let data = self.dir().join(name);
        self.start_replica_in(name, &data, database, ignore_xfsz).await
    }

    /// [`World::start_replica`] with its data directory at `data`.
    async fn start_replica_in(
        &mut self,
        name: &str,
        data: &Path,
        database: Option<&str>,
        ignore_xfsz: bool,
    ) -> anyhow::Result<()> {
        let dir = self.dir();
        let args = replica_args(data, &dir.join("state"), self.cfg.lease, database);
        let d = Deployd::start(&self.cfg.deployd, args, &dir.join(format!("{name}.log")), ignore_xfsz).await?;
        self.replicas.push(d);
        Ok(())
    }

    fn bases(&self) -> Vec<String> {
        self.replicas.iter().map(|d| d.base.clone()).collect()
    }

    /// Creates the environment (`n` targets, installs of `ticks` × 50 ms) and puts 1.0 on every target.
    async fn setup(&mut self, n: usize, ticks: u32) -> anyhow::Result<()> {
        let base = self.bases().first().cloned().context("no replica")?;
        self.targets = (1..=n).map(|i| format!("{}-{i}", self.env)).collect();
        self.api.put_environment(&base, &self.env, &self.host.environment(&self.env, n, "queue", ticks)).await?;
        let first = self.submit(false).await?;
        let done = self.api.wait_terminal(&self.bases(), &first.id, Duration::from_secs(60)).await;
        if done.as_ref().and_then(|d| d["status"].as_str()) != Some("succeeded") {
            bail!("the first deployment did not succeed: {done:?}");
        }
        self.host.take_runs("setup");
        Ok(())
    }

    fn request(&self, environment: &str, version: &str) -> Value {
        json!({
            "environment": environment, "service": "svc", "version": version,
            "strategy": {"type": "rolling", "batch_size": 2},
            "verify": {"timeout": "10s", "interval": "50ms", "healthy_for": "0s"},
            "failure": {"max_failed": "0", "on_failure": "rollback"},
        })
    }

    /// Submits the next version (failing on one target when `bad`), retrying while deployd cannot take it.
    async fn submit(&mut self, bad: bool) -> anyhow::Result<Round> {
        self.version += 1;
        let version = format!("1.{}", self.version);
        if bad {
            let t = &self.targets[self.rng.index(self.targets.len())];
            self.host.mark_bad(t, &version)?;
        }
        let before = self.host.reality(&self.targets);
        let body = self.request(&self.env, &version);
        let key = format!("{}-{version}", self.env);
        let until = Instant::now() + Duration::from_secs(30);
        loop {
            let base = &self.replicas[self.rng.index(self.replicas.len())].base;
            let a = self.api.submit(base, &body, Some(&key)).await;
            if a.status == 202 || a.status == 200 {
                let id = a.body["id"].as_str().context("an id")?.to_owned();
                return Ok(Round { id, before });
            }
            if Instant::now() > until {
                bail!("submission not accepted within 30 s: {} {}", a.status, a.body);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Waits for the first hook a deployment starts; the pid of the replica that started it.
    async fn owner(&self, id: &str) -> Option<u32> {
        let until = Instant::now() + Duration::from_secs(15);
        while Instant::now() < until {
            if let Some(r) = self.host.runs().into_iter().find(|r| r.deployment == id) {
                return Some(r.replica);
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        None
    }

    /// Replicas `a` and `b` on a new database `name` of the cluster.
    async fn two_replicas_on(&mut self, db: &Cluster, name: &str) -> anyhow::Result<()> {
        let url = db.database(name).await?;
        self.start_replica("a", Some(&url), false).await?;
        self.start_replica("b", Some(&url), false).await
    }

    /// Rounds in which the replica driving the deployment (once it has started work) is struck: `begin` for between
    /// `leases.0` and `leases.1` leases, then `end`.
    async fn strike_owners(
        &mut self,
        rounds: u32,
        leases: (f64, f64),
        begin: impl Fn(&Self, usize),
        end: impl Fn(&Self, usize),
    ) -> anyhow::Result<()> {
        for _ in 0..rounds {
            let bad = self.rng.chance(0.3);
            let round = self.submit(bad).await?;
            let mut fault = None;
            if let Some(owner) = self.owner(&round.id).await
                && let Some(i) = self.replicas.iter().position(|d| d.pid == owner)
            {
                let lease = self.cfg.lease;
                let lasts = self.rng.between(lease.mul_f64(leases.0), lease.mul_f64(leases.1));
                fault = Some(Fault::now(owner));
                begin(self, i);
                tokio::time::sleep(lasts).await;
                end(self, i);
            }
            self.finish(round, fault).await;
        }
        Ok(())
    }

    /// Finishes a round whose fault also met side submissions: the round's checks, then every side answer's, then a
    /// clean slate for the next round.
    async fn finish_with_side(&mut self, round: Round, fault: Fault, answers: Vec<(Answer, String)>) {
        self.finish(round, Some(fault)).await;
        self.check_side(answers).await;
        self.settle_hooks().await;
        self.host.take_runs("side");
    }

    /// Waits for a deployment to finish and checks the round: lost, stuck, orphaned hooks, overlapping and stale
    /// work, the record against the hosts, and the takeover time: from `fault` (when, in ns since the epoch, and the
    /// replica it struck) to the first hook another replica started.
    async fn finish(&mut self, round: Round, fault: Option<Fault>) {
        let label = format!("{}", self.tally.rounds + 1);
        let done = self.api.wait_terminal(&self.bases(), &round.id, Duration::from_secs(120)).await;
        let Some(deployment) = done else {
            let a = self.api.get(&self.bases()[0], &format!("/v1/deployments/{}", round.id)).await;
            if a.status == 404 {
                self.tally.fail(Kind::Lost, format!("{} answered 202, then unknown", round.id));
            } else {
                self.tally.fail(Kind::Stuck, format!("{} still {} after 120 s", round.id, a.body["status"]));
            }
            self.tally.rounds += 1;
            return;
        };
        self.settle_hooks().await;
        let runs = self.host.take_runs(&label);
        for o in history::overlaps(&runs) {
            self.tally.fail(Kind::Overlap, o);
        }
        for s in history::stale_work(&runs) {
            self.tally.fail(Kind::Stale, s);
        }
        let env = self.api.get(&self.bases()[0], &format!("/v1/environments/{}", self.env)).await;
        let now = self.host.reality(&self.targets);
        for d in history::disagreements(&deployment, &round.before, &now, &env.body) {
            self.tally.fail(Kind::Disagrees, d);
        }
        if let Some(fault) = fault
            && let Some(first) =
                runs.iter().filter(|r| r.start > fault.at && r.replica != fault.replica).map(|r| r.start).min()
        {
            let ns = u64::try_from(first - fault.at).unwrap_or(u64::MAX);
            self.tally.takeovers.push(Duration::from_nanos(ns));
        }
        self.tally.rounds += 1;
    }

    /// Waits (up to 10 s) for every hook to be gone; any still running is an orphan, ended so the next round starts
    /// clean.
    async fn settle_hooks(&mut self) {
        let until = Instant::now() + Duration::from_secs(10);
        loop {
            let alive = history::alive(&self.host.runs());
            if alive.is_empty() {
                return;
            }
            if Instant::now() > until {
                for pid in alive {
                    self.tally.fail(Kind::Orphaned, format!("hook {pid} still runs 10 s after its deployment ended"));
                    if let Ok(pid) = i32::try_from(pid) {
                        let _ = nix::sys::signal::killpg(nix::unistd::Pid::from_raw(pid), Signal::SIGKILL);
                    }
                }
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Submissions to a second environment while a fault lasts: every answer must be a 202 (then the deployment must
    /// be kept and finish) or a typed 503; returns the accepted ids.
    fn side_submissions(&self, env: &str, stop: Arc<AtomicBool>) -> tokio::task::JoinHandle<Vec<(Answer, String)>> {
        let (api, bases) = (self.api.clone(), self.bases());
        let env = env.to_owned();
        let body = self.request(&env, "0");
        tokio::spawn(async move {
            let mut answers = Vec::new();
            let mut n = 0u32;
            while !stop.load(Ordering::SeqCst) {
                n += 1;
                let mut body = body.clone();
                body["version"] = json!(format!("9.{n}.{}", now_ns() % 1_000_000));
                let a = api.submit(&bases[n as usize % bases.len()], &body, None).await;
                answers.push((a, body["version"].as_str().unwrap_or_default().to_owned()));
                tokio::time::sleep(Duration::from_millis(150)).await;
            }
            answers
        })
    }

    /// Checks the answers [`World::side_submissions`] collected once the fault is over.
    async fn check_side(&mut self, answers: Vec<(Answer, String)>) {
        for (a, version) in answers {
            if a.status == 202 {
                let id = a.body["id"].as_str().unwrap_or_default().to_owned();
                match self.api.wait_terminal(&self.bases(), &id, Duration::from_secs(120)).await {
                    Some(_) => {}
                    None => {
                        let got = self.api.get(&self.bases()[0], &format!("/v1/deployments/{id}")).await;
                        let kind = if got.status == 404 { Kind::Lost } else { Kind::Stuck };
                        self.tally.fail(kind, format!("side deployment {id} ({version}) answered 202: {}", got.status));
                    }
                }
            } else if !a.is_store_unavailable() {
                self.tally.fail(Kind::Unclean, format!("a submission during the fault: {} {}", a.status, a.body));
            }
        }
    }

    /// Panics in the replicas' logs.
    fn check_logs(&mut self) {
        let panics: Vec<String> = self.replicas.iter().flat_map(Deployd::panics).collect();
        for p in panics {
            self.tally.fail(Kind::Unclean, p);
        }
    }

    fn done(mut self, started: Instant) -> Tally {
        self.check_logs();
        self.tally.elapsed = started.elapsed();
        self.tally
    }
}

/// Runs `body` on a new world; a setup error is recorded as an unclean failure of the scenario.
async fn scenario<F>(cfg: &Config, name: &'static str, salt: u64, body: F) -> Tally
where
    F: AsyncFnOnce(&mut World) -> anyhow::Result<()>,
{
    let started = Instant::now();
    let mut world = match World::new(cfg, name, salt) {
        Ok(w) => w,
        Err(e) => {
            let mut t = Tally::new(name);
            t.fail(Kind::Unclean, format!("setting up: {e:#}"));
            return t;
        }
    };
    if let Err(e) = body(&mut world).await {
        world.tally.fail(Kind::Unclean, format!("{e:#}"));
    }
    world.done(started)
}

/// kill -9 of a single deployd on SQLite at a random moment of a rolling deployment (a quarter of the rounds kill it
/// again while it recovers), restarted on the same data directory at once; 40% of the rounds fail one target, so a
/// rollback is under way when the kill comes.
pub async fn kill(cfg: &Config, rounds: u32) -> Tally {
    scenario(cfg, "kill", 1, async |w: &mut World| {
        w.start_replica("replica", None, false).await?;
        // Installs of about 0.6 s: two batches, and as much again when it rolls back.
        w.setup(4, 10).await?;
        for _ in 0..rounds {
            let bad = w.rng.chance(0.4);
            let round = w.submit(bad).await?;
            let wait = w.rng.between(Duration::from_millis(50), Duration::from_millis(1800));
            tokio::time::sleep(wait).await;
            let fault = Fault::now(w.replicas[0].pid);
            w.replicas[0].restart().await?;
            if w.rng.chance(0.25) {
                let again = w.rng.between(Duration::from_millis(50), Duration::from_millis(800));
                tokio::time::sleep(again).await;
                w.replicas[0].restart().await?;
            }
            w.finish(round, Some(fault)).await;
        }
        Ok(())
    })
    .await
}

/// Two replicas on PostgreSQL sharing the hosts; the one driving the deployment is paused (SIGSTOP) past its lease,
/// then resumed. The other takes over; the paused one must start nothing after it wakes.
pub async fn pause(cfg: &Config, db: &Cluster, rounds: u32) -> Tally {
    scenario(cfg, "pause", 2, async |w: &mut World| {
        w.two_replicas_on(db, "chaos_pause").await?;
        w.setup(4, 4).await?;
        let (pause, resume) = (
            |w: &World, i: usize| w.replicas[i].signal(Signal::SIGSTOP),
            |w: &World, i: usize| {
                w.replicas[i].signal(Signal::SIGCONT);
            },
        );
        w.strike_owners(rounds, (1.25, 2.5), pause, resume).await
    })
    .await
}

/// Two replicas on PostgreSQL, each through a relay; the one driving the deployment is cut off from the database
/// for longer than its lease, then the link heals. It must stop its work when its lease lapses; the other takes over.
pub async fn partition(cfg: &Config, db: &Cluster, rounds: u32) -> Tally {
    scenario(cfg, "partition", 3, async |w: &mut World| {
        let url = db.database("chaos_partition").await?;
        let upstream: std::net::SocketAddr = format!("127.0.0.1:{}", db.port).parse()?;
        let mut links = Vec::new();
        for name in ["a", "b"] {
            let link = Partition::to(upstream).await?;
            let through = url.replace(&format!(":{}/", db.port), &format!(":{}/", link.addr.port()));
            w.start_replica(name, Some(&through), false).await?;
            links.push(link);
        }
        w.setup(4, 4).await?;
        w.strike_owners(rounds, (1.5, 3.0), |_, i| links[i].cut(), |_, i| links[i].heal()).await
    })
    .await
}

/// Two replicas on PostgreSQL; the database restarts (fast shutdown) at a random moment of a deployment while
/// submissions keep coming. Every answer is a 202 or a typed 503, and every 202 finishes.
pub async fn database_restart(cfg: &Config, db: &Cluster, rounds: u32) -> Tally {
    scenario(cfg, "pg-restart", 4, async |w: &mut World| {
        w.two_replicas_on(db, "chaos_restart").await?;
        w.setup(4, 4).await?;
        let side = "pg-restart-side";
        w.api.put_environment(&w.bases()[0], side, &w.host.environment(side, 1, "queue", 1)).await?;
        for _ in 0..rounds {
            let bad = w.rng.chance(0.3);
            let round = w.submit(bad).await?;
            tokio::time::sleep(w.rng.between(Duration::ZERO, Duration::from_millis(1000))).await;
            let stop = Arc::new(AtomicBool::new(false));
            let side_task = w.side_submissions(side, Arc::clone(&stop));
            let fault = Fault::now(0);
            db.restart().await?;
            tokio::time::sleep(Duration::from_millis(500)).await;
            stop.store(true, Ordering::SeqCst);
            let answers = side_task.await.unwrap_or_default();
            w.finish_with_side(round, fault, answers).await;
        }
        Ok(())
    })
    .await
}

/// The largest file in `dir`.
fn largest_file(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .map(|entries| entries.flatten().filter_map(|e| e.metadata().ok()).map(|m| m.len()).max().unwrap_or(0))
        .unwrap_or(0)
}

/// How the disk fills.
enum Filling {
    /// A small tmpfs holding the data directory is filled up: writes fail with ENOSPC (SQLITE_FULL).
    Tmpfs(crate::disk::SmallDisk),
    /// No file of the process may grow past its size now (a file-size limit): writes fail with EFBIG.
    FileSizeLimit(PathBuf),
}

/// A single deployd on SQLite whose disk fills at a random moment of a deployment, for a while, as submissions keep
/// coming; then space is freed. The disk is a small tmpfs where mounting one is permitted, else a file-size limit on
/// the process. No 202 while writes fail, every 202 kept, and the deployment finishes without a restart.
pub async fn disk_full(cfg: &Config, rounds: u32) -> Tally {
    scenario(cfg, "disk-full", 5, async |w: &mut World| {
        let filling = match crate::disk::SmallDisk::mount(&w.dir().join("disk"), 64) {
            Ok(disk) => {
                let data = disk.path().join("replica");
                w.start_replica_in("replica", &data, None, false).await?;
                w.tally.note = Some("a 64 MiB tmpfs, filled".into());
                Filling::Tmpfs(disk)
            }
            Err(why) => {
                if std::process::Command::new("prlimit").arg("--version").output().is_err() {
                    w.tally.skipped = Some(format!("{why}; and no prlimit (util-linux) on this machine"));
                    return Ok(());
                }
                w.start_replica("replica", None, true).await?;
                w.tally.note = Some(format!("a file-size limit ({why})"));
                Filling::FileSizeLimit(w.dir().join("replica"))
            }
        };
        w.setup(4, 4).await?;
        let side = "disk-full-side";
        w.api.put_environment(&w.bases()[0], side, &w.host.environment(side, 1, "queue", 1)).await?;
        for _ in 0..rounds {
            let bad = w.rng.chance(0.3);
            let round = w.submit(bad).await?;
            tokio::time::sleep(w.rng.between(Duration::ZERO, Duration::from_millis(800))).await;
            let fault = Fault::now(0);
            match &filling {
                Filling::Tmpfs(disk) => disk.fill()?,
                Filling::FileSizeLimit(data) => w.replicas[0].cap_file_size(Some(largest_file(data) + 4096)).await?,
            }
            let stop = Arc::new(AtomicBool::new(false));
            let side_task = w.side_submissions(side, Arc::clone(&stop));
            tokio::time::sleep(w.rng.between(Duration::from_millis(300), Duration::from_millis(1500))).await;
            stop.store(true, Ordering::SeqCst);
            let answers = side_task.await.unwrap_or_default();
            match &filling {
                Filling::Tmpfs(disk) => disk.free()?,
                Filling::FileSizeLimit(_) => w.replicas[0].cap_file_size(None).await?,
            }
            w.finish_with_side(round, fault, answers).await;
        }
        // Stopped before the disk is unmounted under it.
        for r in &mut w.replicas {
            r.kill9().await;
        }
        drop(filling);
        Ok(())
    })
    .await
}

/// Fifty submissions at once per concurrency policy (25 keys, each sent twice, to both replicas on PostgreSQL): one
/// deployment per key, never two deployments at once on an environment, and each policy's outcome.
pub async fn race(cfg: &Config, db: &Cluster, rounds: u32) -> Tally {
    scenario(cfg, "race", 6, async |w: &mut World| {
        w.two_replicas_on(db, "chaos_race").await?;
        for policy in ["queue", "reject", "supersede"] {
            let env = format!("race-{policy}");
            w.api.put_environment(&w.bases()[0], &env, &w.host.environment(&env, 2, policy, 1)).await?;
        }
        for round in 0..rounds {
            for policy in ["queue", "reject", "supersede"] {
                race_round(w, policy, round).await;
            }
            w.tally.rounds += 1;
        }
        Ok(())
    })
    .await
}

async fn race_round(w: &mut World, policy: &str, round: u32) {
    let env = format!("race-{policy}");
    let bases = w.bases();
    let calls = (0..50).map(|i| {
        let key = i / 2;
        let body = w.request(&env, &format!("3.{round}.{key}"));
        let (api, base) = (w.api.clone(), bases[i % bases.len()].clone());
        async move {
            let a = api.submit(&base, &body, Some(&format!("race-{round}-{policy}-{key}"))).await;
            (key, a)
        }
    });
    let answers = futures::future::join_all(calls).await;
    let mut ids_of_key: BTreeMap<usize, BTreeSet<String>> = BTreeMap::new();
    for (key, a) in &answers {
        match a.status {
            200 | 202 => {
                ids_of_key.entry(*key).or_default().insert(a.body["id"].as_str().unwrap_or_default().to_owned());
            }
            409 if matches!(a.problem(), Some("environment-busy" | "idempotency-key-in-flight")) => {}
            _ => w.tally.fail(Kind::Unclean, format!("{policy}: {} {}", a.status, a.body)),
        }
    }
    for (key, ids) in &ids_of_key {
        if ids.len() > 1 {
            w.tally.fail(Kind::Duplicate, format!("{policy}: key {key} made {ids:?}"));
        }
    }
    let ids: BTreeSet<String> = ids_of_key.into_values().flatten().collect();
    let mut finals = Vec::new();
    for id in &ids {
        match w.api.wait_terminal(&bases, id, Duration::from_secs(180)).await {
            Some(d) => finals.push(d),
            None => w.tally.fail(Kind::Stuck, format!("{policy}: {id} did not finish")),
        }
    }
    for d in &finals {
        let status = d["status"].as_str().unwrap_or_default();
        let allowed: &[&str] = if policy == "supersede" { &["succeeded", "superseded"] } else { &["succeeded"] };
        if !allowed.contains(&status) {
            w.tally.fail(Kind::Disagrees, format!("{policy}: {} ended {status}", d["id"]));
        }
    }
    if policy == "reject" && ids.is_empty() {
        w.tally.fail(Kind::Unclean, "reject: not one of 50 submissions was accepted");
    }
    w.settle_hooks().await;
    let runs = w.host.take_runs(&format!("race-{round}-{policy}"));
    for o in history::overlaps(&runs) {
        w.tally.fail(Kind::Overlap, o);
    }
    // Deployments of one environment never work at the same time: each one's hooks, from first start to last line.
    let mut windows: BTreeMap<&str, (u128, u128)> = BTreeMap::new();
    for r in &runs {
        let e = windows.entry(r.deployment.as_str()).or_insert((r.start, r.last));
        e.0 = e.0.min(r.start);
        e.1 = e.1.max(r.last);
    }
    let mut windows: Vec<(&str, (u128, u128))> = windows.into_iter().collect();
    windows.sort_by_key(|(_, (start, _))| *start);
    for pair in windows.windows(2) {
        let ((a, (_, a_end)), (b, (b_start, _))) = (pair[0], pair[1]);
        if b_start < a_end {
            w.tally.fail(Kind::Overlap, format!("{policy}: deployments {a} and {b} worked at the same time"));
        }
    }
}
