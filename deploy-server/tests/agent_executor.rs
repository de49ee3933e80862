//! The `agent` executor (the server's half of the sidecar pattern) against the executor contract. The agents here are
//! a loop that does what `deploy-agent` does through the API, straight on the store: it reads each target's slot,
//! "applies" a new assignment, and reports the version and its health (or the error) as its heartbeat.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use deploy_core::{
    AgentReport, AgentStore, Clock, EnvironmentName, Executor, Health, SystemClock, Target, TargetId, async_trait,
};
use deploy_server::AgentExecutor;
use deploy_testkit::MemoryStore;
use deploy_testkit::conformance::executor::{self as suite, ExecutorFixture};

struct Agents {
    store: Arc<MemoryStore>,
    executor: AgentExecutor,
    /// The targets an agent serves, and whether its installs fail.
    served: Arc<Mutex<BTreeMap<TargetId, bool>>>,
    next: AtomicUsize,
}

impl Agents {
    fn new() -> Self {
        let store = Arc::new(MemoryStore::new());
        let executor = AgentExecutor::new(store.clone(), Arc::new(SystemClock), Duration::from_secs(2));
        let agents = Self { store, executor, served: Arc::default(), next: AtomicUsize::new(0) };
        agents.spawn_loop();
        agents
    }

    fn env() -> EnvironmentName {
        "agents".parse().unwrap()
    }

    fn target(&self, prefix: &str) -> Target {
        let id = TargetId::new(format!("{prefix}-{}", self.next.fetch_add(1, Ordering::SeqCst))).unwrap();
        Target {
            environment: Self::env(),
            id,
            labels: BTreeMap::new(),
            executor: "agent".parse().unwrap(),
            config: serde_json::Value::Null,
        }
    }

    /// Every 10 ms, for every served target: apply a new assignment, and report (the heartbeat).
    fn spawn_loop(&self) {
        let (store, served) = (self.store.clone(), self.served.clone());
        tokio::spawn(async move {
            let mut applied: BTreeMap<TargetId, (u64, Option<deploy_core::Version>, Option<String>)> = BTreeMap::new();
            loop {
                let targets: Vec<(TargetId, bool)> =
                    served.lock().unwrap().iter().map(|(t, b)| (t.clone(), *b)).collect();
                for (target, broken) in targets {
                    let Ok(slot) = store.agent_slot(&Agents::env(), &target).await else { continue };
                    let entry = applied.entry(target.clone()).or_insert((0, None, None));
                    if let Some(slot) = slot.filter(|s| s.generation > entry.0)
                        && let Some(desired) = &slot.desired
                    {
                        *entry = if broken {
                            (slot.generation, entry.1.clone(), Some("the image does not exist".to_owned()))
                        } else {
                            (slot.generation, Some(desired.version.clone()), None)
                        };
                    }
                    let report = AgentReport {
                        generation: entry.0,
                        version: entry.1.clone(),
                        health: if entry.1.is_some() { Health::Healthy } else { Health::Unknown },
                        output: String::new(),
                        error: entry.2.clone(),
                    };
                    let _ = store.record_agent_report(&Agents::env(), &target, report, SystemClock.now()).await;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        });
    }
}

#[async_trait]
impl ExecutorFixture for Agents {
    fn executor(&self) -> &dyn Executor {
        &self.executor
    }
    async fn fresh_target(&self) -> Target {
        let t = self.target("host");
        self.served.lock().unwrap().insert(t.id.clone(), false);
        t
    }
    async fn broken_target(&self) -> Option<Target> {
        let t = self.target("broken");
        self.served.lock().unwrap().insert(t.id.clone(), true);
        Some(t)
    }
    async fn unreachable_target(&self) -> Option<Target> {
        // An agent that reported once, an hour ago, and was never heard of since.
        let t = self.target("gone");
        let report =
            AgentReport { generation: 0, version: None, health: Health::Unknown, output: String::new(), error: None };
        let an_hour_ago = SystemClock.now() - time::Duration::hours(1);
        self.store.record_agent_report(&Agents::env(), &t.id, report, an_hour_ago).await.unwrap();
        Some(t)
    }
    fn health_timeout(&self) -> Duration {
        Duration::from_secs(10)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agent_executor_passes_the_executor_conformance_suite() {
    let agents = Agents::new();
    let report = suite::run_all(&agents).await;
    report.assert_conforms();
    // No steps (refused, as the contract asks) and no fencing check of its own: the store fences its assignments.
    assert_eq!(
        report.not_applicable.iter().map(|(c, _)| *c).collect::<BTreeSet<_>>(),
        BTreeSet::from(["a_stale_fencing_token_is_refused"])
    );
}
