//! Deterministic simulation of the engine: one seed decides a whole run of submissions, cancels, executor faults,
//! store outages and lost answers, crashes (an orchestrator dropped mid-flight and built again on the same store) and
//! clock jumps, over two replicas, in virtual time. The invariants are checked after every step; a failing seed
//! replays the same run, and its [`Violation`] carries the trace of what happened.
//!
//! ```
//! let report = deploy_testkit::sim::simulate(42).expect("seed 42 keeps every invariant");
//! assert!(report.accepted > 0);
//! ```

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use deploy_core::{
    ConcurrencyPolicy, DeploymentId, DeploymentRequest, DeploymentStatus, EnvironmentName, Orchestrator, Principal,
    ShutdownSignal, ShutdownTrigger, Store, Submission,
};
use serde_json::json;

use crate::faulty::{FaultyStore, StoreFaults};
use crate::fixtures::{env_name, environment};
use crate::{Fault, MemoryStore, ScriptedExecutor, SeededRng, TestClock};

/// What a run did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SimReport {
    /// The seed.
    pub seed: u64,
    /// Steps taken.
    pub steps: u32,
    /// Deployments accepted.
    pub accepted: usize,
    /// Orchestrators dropped mid-flight.
    pub crashes: u32,
    /// Store calls that failed by injection.
    pub store_faults: u64,
    /// Wall-clock jumps.
    pub clock_jumps: u32,
    /// Final statuses and how many deployments ended in each.
    pub outcomes: BTreeMap<&'static str, usize>,
}

/// An invariant a run broke.
#[derive(Debug, Clone)]
pub struct Violation {
    /// The seed that replays it.
    pub seed: u64,
    /// The step after which it was seen.
    pub step: u32,
    /// What broke.
    pub what: String,
    /// What the run did, step by step.
    pub trace: Vec<String>,
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "seed {} broke an invariant after step {}: {}", self.seed, self.step, self.what)?;
        for line in &self.trace {
            writeln!(f, "  {line}")?;
        }
        Ok(())
    }
}

impl std::error::Error for Violation {}

/// The steps of one run.
const STEPS: u32 = 40;

/// Runs the simulation of `seed` on a runtime of its own (one thread, virtual time).
///
/// # Errors
/// The first [`Violation`] seen.
pub fn simulate(seed: u64) -> Result<SimReport, Violation> {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_time().start_paused(true).build();
    let runtime = runtime.map_err(|e| Violation { seed, step: 0, what: format!("no runtime: {e}"), trace: vec![] })?;
    runtime.block_on(Sim::new(seed).run())
}

/// One replica: an orchestrator and the task running it.
struct Replica {
    name: String,
    incarnation: u32,
    orchestrator: Orchestrator,
    running: Option<(ShutdownTrigger, tokio::task::JoinHandle<()>)>,
}

struct Sim {
    seed: u64,
    rng: SeededRng,
    store: Arc<FaultyStore<MemoryStore>>,
    faults: StoreFaults,
    executor: Arc<ScriptedExecutor>,
    clock: Arc<TestClock>,
    admin: Principal,
    environments: Vec<(EnvironmentName, Vec<String>)>,
    replicas: Vec<Replica>,
    accepted: Vec<DeploymentId>,
    finished: HashMap<DeploymentId, DeploymentStatus>,
    misuses_before: usize,
    report: SimReport,
    trace: Vec<String>,
    step: u32,
}

impl Sim {
    fn new(seed: u64) -> Self {
        let clock = Arc::new(TestClock::new());
        let store = Arc::new(FaultyStore::new(Arc::new(MemoryStore::new())));
        Self {
            seed,
            rng: SeededRng::new(seed),
            faults: store.faults(),
            store,
            executor: Arc::new(ScriptedExecutor::new("sim", clock.clone())),
            clock,
            admin: Principal::system("sim:admin"),
            environments: Vec::new(),
            replicas: Vec::new(),
            accepted: Vec::new(),
            finished: HashMap::new(),
            misuses_before: crate::misuses().len(),
            report: SimReport { seed, ..SimReport::default() },
            trace: Vec::new(),
            step: 0,
        }
    }

    fn violation(&self, what: impl Into<String>) -> Violation {
        Violation { seed: self.seed, step: self.step, what: what.into(), trace: self.trace.clone() }
    }

    fn orchestrator(&self, owner: &str) -> Orchestrator {
        crate::fixtures::orchestrator(self.store.clone(), &self.executor, &self.clock, owner)
    }

    /// Starts replica `i` (again), as a new incarnation of the same replica name.
    fn start(&mut self, i: usize) {
        let Some(r) = self.replicas.get(i) else { return };
        let (name, incarnation) = (r.name.clone(), r.incarnation + 1);
        let orchestrator = self.orchestrator(&format!("{name}#{incarnation}"));
        let (trigger, signal) = ShutdownSignal::new();
        let o = orchestrator.clone();
        let task = tokio::spawn(async move { o.run(signal).await });
        if let Some(r) = self.replicas.get_mut(i) {
            *r = Replica { name, incarnation, orchestrator, running: Some((trigger, task)) };
        }
    }

    /// Drops replica `i`'s work mid-flight: no lease released, nothing flushed, as kill -9 would.
    fn crash(&mut self, i: usize) {
        if let Some((trigger, task)) = self.replicas.get_mut(i).and_then(|r| r.running.take()) {
            task.abort();
            // The task is aborted first, so the trigger firing on drop reaches nobody.
            drop(trigger);
        }
    }

    async fn setup(&mut self) -> Result<(), Violation> {
        for (e, policy) in [("sim-a", ConcurrencyPolicy::Queue), ("sim-b", ConcurrencyPolicy::Supersede)] {
            let n = 1 + self.rng.index(4);
            let targets: Vec<String> = (1..=n).map(|i| format!("{e}-{i}")).collect();
            for t in &targets {
                self.executor.add_target(t, Some("1.0"));
            }
            let ids: Vec<&str> = targets.iter().map(String::as_str).collect();
            let name = env_name(e);
            let o = self.orchestrator("sim-setup");
            o.put_environment(&self.admin, &name, environment(&ids, "scripted", policy), None)
                .await
                .map_err(|err| self.violation(format!("setting up {e}: {err}")))?;
            self.environments.push((name, targets));
        }
        for name in ["sim-1", "sim-2"] {
            self.replicas.push(Replica {
                name: name.to_owned(),
                incarnation: 0,
                orchestrator: self.orchestrator(name),
                running: None,
            });
        }
        self.start(0);
        self.start(1);
        Ok(())
    }

    fn request(&mut self, env: usize) -> DeploymentRequest {
        let (name, targets) = &self.environments[env];
        let version = format!("2.{}", self.accepted.len() + self.trace.len());
        let batch = 1 + self.rng.index(targets.len());
        let on_failure = if self.rng.chance(0.7) { "rollback" } else { "fail" };
        let request = json!({
            "environment": name.as_str(), "service": "svc", "version": version,
            "strategy": {"type": "rolling", "batch_size": batch},
            "verify": {"timeout": "5s", "interval": "200ms", "healthy_for": "400ms"},
            "failure": {"max_failed": "0", "on_failure": on_failure},
            "progress_deadline": "2m",
        });
        serde_json::from_value(request).unwrap_or_default()
    }

    fn random_fault(&mut self) -> Fault {
        match self.rng.below(6) {
            0 => Fault::FailPermanently,
            1 => Fault::FailTimes(1 + self.rng.below(3) as u32),
            2 => Fault::Unhealthy,
            3 => Fault::Slow(self.rng.between(Duration::from_millis(100), Duration::from_secs(8))),
            4 => Fault::CrashAfterApply,
            _ => Fault::UnreachableTimes(1 + self.rng.below(3) as u32),
        }
    }

    /// Submits as a careful client does: with an idempotency key, sending again while the store is unreachable (an
    /// answer may be lost after the deployment was accepted). When it never gets an answer, whatever the store did
    /// accept is found and followed all the same.
    async fn submit(&mut self, request: DeploymentRequest) {
        let Some(orchestrator) = self.replicas.iter().find(|r| r.running.is_some()).map(|r| r.orchestrator.clone())
        else {
            return;
        };
        let key = deploy_core::IdempotencyKey::new(format!("sim-{}", request.version)).ok();
        for _ in 0..5 {
            let submission =
                Submission { request: request.clone(), idempotency_key: key.clone(), ..Submission::default() };
            match orchestrator.submit(&self.admin, submission).await {
                Ok(s) => {
                    let id = s.deployment.id();
                    self.trace.push(format!("accepted {} {} as {id}", request.environment, request.version));
                    if !self.accepted.contains(&id) {
                        self.accepted.push(id);
                    }
                    return;
                }
                Err(deploy_core::Error::Store(deploy_core::StoreError::Unavailable(_))) => {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                Err(e) => {
                    self.trace.push(format!("refused {} {}: {e}", request.environment, request.version));
                    return;
                }
            }
        }
        let filter = deploy_core::DeploymentFilter {
            environment: EnvironmentName::new(&request.environment).ok(),
            ..deploy_core::DeploymentFilter::default()
        };
        let page = deploy_core::PageRequest { limit: 500, cursor: None };
        let found = self.store.inner().list_deployments(&filter, &page).await.map(|p| p.items).unwrap_or_default();
        match found.iter().find(|d| d.version().as_str() == request.version) {
            Some(d) => {
                self.trace.push(format!(
                    "accepted {} {} as {} (no answer came)",
                    request.environment,
                    request.version,
                    d.id()
                ));
                self.accepted.push(d.id());
            }
            None => self.trace.push(format!("not accepted {} {}: no answer", request.environment, request.version)),
        }
    }

    async fn act(&mut self) {
        let roll = self.rng.below(100);
        match roll {
            0..=34 => {
                let env = self.rng.index(self.environments.len());
                let request = self.request(env);
                if self.rng.chance(0.5) {
                    let targets = &self.environments[env].1;
                    let target = targets[self.rng.index(targets.len())].clone();
                    let fault = self.random_fault();
                    self.trace.push(format!("fault {fault:?} on {target}@{}", request.version));
                    self.executor.add_fault(&target, Some(&request.version), fault);
                }
                self.submit(request).await;
            }
            35..=44 => {
                let i = self.rng.index(self.replicas.len());
                self.trace.push(format!("crash and restart {}", self.replicas[i].name));
                self.crash(i);
                self.report.crashes += 1;
                // Back at once, or after a while (its lease lapses meanwhile).
                if self.rng.chance(0.5) {
                    tokio::time::sleep(self.rng.between(Duration::ZERO, Duration::from_secs(15))).await;
                }
                self.start(i);
            }
            45..=54 => {
                let n = 1 + self.rng.below(6) as u32;
                self.trace.push(format!("the next {n} store calls fail"));
                self.faults.fail_next(n);
            }
            55..=59 => {
                let n = 1 + self.rng.below(3) as u32;
                self.trace.push(format!("the answers of the next {n} store writes are lost"));
                self.faults.lose_next_answers(n);
            }
            60..=64 => {
                let outage = self.rng.between(Duration::from_millis(100), Duration::from_secs(20));
                self.trace.push(format!("store outage of {outage:?}"));
                self.faults.set_down(true);
                tokio::time::sleep(outage).await;
                self.faults.set_down(false);
            }
            65..=69 => {
                let jump = self.rng.between(Duration::from_secs(1), Duration::from_secs(25));
                self.trace.push(format!("the wall clock jumps {jump:?}"));
                self.clock.advance(jump);
                self.report.clock_jumps += 1;
            }
            70..=74 => {
                let Some(&id) = self.accepted.get(self.rng.index(self.accepted.len())) else { return };
                self.trace.push(format!("cancel {id}"));
                if let Some(r) = self.replicas.iter().find(|r| r.running.is_some()) {
                    let _ = r.orchestrator.cancel(&self.admin, id).await;
                }
            }
            _ => {}
        }
        tokio::time::sleep(self.rng.between(Duration::ZERO, Duration::from_secs(3))).await;
    }

    /// The invariants that hold at every moment.
    async fn check(&mut self) -> Result<(), Violation> {
        let misuses = crate::misuses();
        if misuses.len() > self.misuses_before {
            return Err(self.violation(format!("the executor was misused: {:?}", &misuses[self.misuses_before..])));
        }
        let stale = self.executor.stale_calls();
        if !stale.is_empty() {
            return Err(self.violation(format!("changes made under a lost lease: {stale:?}")));
        }
        let mut running: BTreeMap<String, Vec<DeploymentId>> = BTreeMap::new();
        for &id in &self.accepted {
            let d = match self.store.inner().get_deployment(id).await {
                Ok(d) => d,
                Err(e) => return Err(self.violation(format!("accepted deployment {id} is gone: {e}"))),
            };
            if d.status().is_running() {
                running.entry(d.environment().to_string()).or_default().push(id);
            }
            if let Some(before) = self.finished.get(&id) {
                if *before != d.status() {
                    return Err(self.violation(format!("{id} was {before:?} and is now {:?}", d.status())));
                }
            } else if d.status().is_terminal() {
                self.finished.insert(id, d.status());
            }
        }
        if let Some((env, ids)) = running.iter().find(|(_, ids)| ids.len() > 1) {
            return Err(self.violation(format!("{env} runs {} deployments at once: {ids:?}", ids.len())));
        }
        Ok(())
    }

    /// Once the faults stop and every replica runs: every accepted deployment finishes, and what the targets run agrees
    /// with the last deployment that ran on each environment.
    async fn settle(&mut self) -> Result<(), Violation> {
        self.faults.heal();
        for i in 0..self.replicas.len() {
            if self.replicas[i].running.is_none() {
                self.start(i);
            }
        }
        for _ in 0..(6 * 3600) {
            let mut open = 0;
            for &id in &self.accepted {
                if !self.store.inner().get_deployment(id).await.is_ok_and(|d| d.status().is_terminal()) {
                    open += 1;
                }
            }
            if open == 0 {
                break;
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        self.check().await?;
        let mut last: BTreeMap<String, deploy_core::Deployment> = BTreeMap::new();
        for &id in &self.accepted {
            let Ok(d) = self.store.inner().get_deployment(id).await else { continue };
            if !d.status().is_terminal() {
                return Err(self.violation(format!("{id} is stuck in {:?}", d.status())));
            }
            *self.report.outcomes.entry(d.status().as_str()).or_default() += 1;
            if d.started_at().is_none() {
                continue;
            }
            let later = last.get(d.environment().as_str()).is_none_or(|l| l.finished_at() < d.finished_at());
            if later {
                last.insert(d.environment().to_string(), d);
            }
        }
        for d in last.values() {
            for t in d.targets() {
                let real = self.executor.version_of(t.id.as_str());
                let expected = match d.status() {
                    DeploymentStatus::Succeeded => Some(t.to_version.to_string()),
                    DeploymentStatus::RolledBack => t.from_version.as_ref().map(ToString::to_string),
                    _ => continue,
                };
                if expected.is_some() && real != expected {
                    let history = self.history(d.environment()).await;
                    return Err(self.violation(format!(
                        "{} ended {:?} but {} runs {real:?}, not {expected:?}; the environment's deployments:\n{history}",
                        d.id(),
                        d.status(),
                        t.id
                    )));
                }
            }
        }
        Ok(())
    }

    /// The deployments of an environment as stored: version, status, when they started and finished, and targets.
    async fn history(&self, env: &EnvironmentName) -> String {
        let mut out = String::new();
        for &id in &self.accepted {
            let Ok(d) = self.store.inner().get_deployment(id).await else { continue };
            if d.environment() != env {
                continue;
            }
            let targets: Vec<String> = d
                .targets()
                .iter()
                .map(|t| {
                    format!("{}:{}:{:?}", t.id, t.status.as_str(), t.from_version.as_ref().map(ToString::to_string))
                })
                .collect();
            out.push_str(&format!(
                "    {} {} {:?} started {:?} finished {:?} {targets:?}\n",
                d.id(),
                d.version(),
                d.status(),
                d.started_at(),
                d.finished_at()
            ));
        }
        out
    }

    async fn run(mut self) -> Result<SimReport, Violation> {
        self.setup().await?;
        while self.step < STEPS {
            self.step += 1;
            self.act().await;
            self.check().await?;
        }
        self.settle().await?;
        for i in 0..self.replicas.len() {
            if let Some((trigger, task)) = self.replicas[i].running.take() {
                trigger.fire();
                let _ = task.await;
            }
        }
        self.report.steps = self.step;
        self.report.accepted = self.accepted.len();
        self.report.store_faults = self.faults.injected();
        Ok(self.report)
    }
}
