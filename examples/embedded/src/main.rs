//! A service that embeds the orchestrator with its own executor, and prints the timeline of three deployments:
//! a rolling update, a partial failure (degraded) and a failure that is rolled back.
//!
//! `cargo run -p example-embedded`

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use async_trait::async_trait;
use deploy_core::spec::{FailureRequest, StrategyRequest, VerifyRequest};
use deploy_core::{
    ApplyContext, ConcurrencyPolicy, DeploymentRequest, DeploymentStatus, DesiredState, EnvironmentName,
    EnvironmentSpec, Executor, ExecutorError, ExecutorRouter, Health, Observation, Orchestrator, OrchestratorConfig,
    Outcome, Principal, ShutdownSignal, Submission, Target, TargetDefinition, TargetId, Version,
};
use deploy_testkit::MemoryStore;
use futures::StreamExt;

/// Our own infrastructure: a fleet of "hosts" that take a moment to install a version. Versions listed in `broken`
/// install fine on the hosts named there but never become healthy, like a release with a bad config on some machines.
struct Fleet {
    running: Mutex<BTreeMap<String, String>>,
    broken: Mutex<BTreeSet<(String, String)>>,
}

#[async_trait]
impl Executor for Fleet {
    async fn observe(&self, target: &Target, _: Option<&DesiredState>) -> Result<Observation, ExecutorError> {
        let running = self.running.lock().map_err(|_| ExecutorError::permanent("fleet state poisoned"))?;
        let version = running.get(target.id.as_str()).map(|v| Version::new(v.as_str())).transpose();
        let version = version.map_err(|e| ExecutorError::permanent(e.to_string()))?;
        Ok(Observation { version, health: Health::Healthy })
    }

    async fn apply(&self, target: &Target, ctx: ApplyContext<'_>) -> Result<Outcome, ExecutorError> {
        tokio::time::sleep(Duration::from_millis(120)).await;
        self.running
            .lock()
            .map_err(|_| ExecutorError::permanent("fleet state poisoned"))?
            .insert(target.id.to_string(), ctx.desired.version.to_string());
        Ok(Outcome::quiet())
    }

    async fn verify(&self, target: &Target, desired: &DesiredState) -> Result<Health, ExecutorError> {
        let runs =
            self.running.lock().map_err(|_| ExecutorError::permanent("fleet state poisoned"))?.get(target.id.as_str())
                == Some(&desired.version.to_string());
        let broken = self.broken.lock().map_err(|_| ExecutorError::permanent("fleet state poisoned"))?;
        let key = (target.id.to_string(), desired.version.to_string());
        // Healthy only for the version that runs, and not for a broken one.
        Ok(if runs && !broken.contains(&key) { Health::Healthy } else { Health::Unhealthy })
    }
}

fn request(version: &str, max_failed: &str) -> DeploymentRequest {
    DeploymentRequest {
        environment: "prod".into(),
        service: "checkout".into(),
        version: version.into(),
        strategy: Some(StrategyRequest::Rolling { batch_size: Some(2.into()), pause: Some("200ms".into()) }),
        verify: Some(VerifyRequest {
            timeout: Some("2s".into()),
            interval: Some("100ms".into()),
            healthy_for: Some("300ms".into()),
        }),
        failure: Some(FailureRequest { max_failed: Some(max_failed.into()), on_failure: Some("rollback".into()) }),
        ..DeploymentRequest::default()
    }
}

async fn deploy(
    orchestrator: &Orchestrator,
    who: &Principal,
    started: Instant,
    title: &str,
    req: DeploymentRequest,
) -> anyhow::Result<deploy_core::Deployment> {
    println!("\n== {title}");
    let submitted = orchestrator.submit(who, Submission { request: req, ..Submission::default() }).await?;
    let id = submitted.deployment.id();
    let mut events = orchestrator.watch(who, id, 0).await?;
    while let Some(event) = events.next().await {
        let event = event?;
        println!(
            "{:>7.2}s  #{:<3} {:<24} {}",
            started.elapsed().as_secs_f64(),
            event.seq,
            event.event_type,
            event.message
        );
    }
    Ok(orchestrator.get(who, id).await?)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let hosts = ["host-1", "host-2", "host-3", "host-4"];
    let fleet = Arc::new(Fleet {
        running: Mutex::new(hosts.iter().map(|h| ((*h).to_owned(), "1.0".to_owned())).collect()),
        broken: Mutex::new(
            [("host-3", "2.1"), ("host-2", "3.0"), ("host-3", "3.0")]
                .iter()
                .map(|(h, v)| ((*h).to_owned(), (*v).to_owned()))
                .collect(),
        ),
    });
    let orchestrator =
        Orchestrator::builder(Arc::new(MemoryStore::new()), ExecutorRouter::new().with("fleet", fleet.clone()))
            .config(OrchestratorConfig { poll_interval: Duration::from_millis(50), ..OrchestratorConfig::default() })
            .build();
    let me = Principal::system("svc:release-bot");
    let prod = EnvironmentName::new("prod")?;
    let targets = hosts
        .iter()
        .map(|h| -> anyhow::Result<TargetDefinition> {
            Ok(TargetDefinition {
                id: TargetId::new(*h)?,
                labels: BTreeMap::new(),
                executor: "fleet".parse()?,
                config: serde_json::Value::Null,
            })
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let spec = EnvironmentSpec { concurrency: ConcurrencyPolicy::Queue, targets, ..EnvironmentSpec::default() };
    orchestrator.put_environment(&me, &prod, spec, None).await?;

    let (stop, signal) = ShutdownSignal::new();
    let controller = tokio::spawn({
        let o = orchestrator.clone();
        async move { o.run(signal).await }
    });
    let started = Instant::now();
    let mut results = Vec::new();
    let d =
        deploy(&orchestrator, &me, started, "rolling update to 2.0, two hosts at a time", request("2.0", "0")).await?;
    results.push((d, DeploymentStatus::Succeeded));
    let title = "2.1 is unhealthy on host-3; one failure is tolerated";
    let d = deploy(&orchestrator, &me, started, title, request("2.1", "1")).await?;
    results.push((d, DeploymentStatus::Degraded));
    println!("\n   (an operator fixes host-3's configuration, so 2.1 is healthy there again)");
    fleet
        .broken
        .lock()
        .map_err(|_| anyhow::anyhow!("fleet state poisoned"))?
        .remove(&("host-3".to_owned(), "2.1".to_owned()));
    let title = "3.0 fails on two hosts: beyond max_failed, rolled back";
    let d = deploy(&orchestrator, &me, started, title, request("3.0", "1")).await.context("3.0")?;
    results.push((d, DeploymentStatus::RolledBack));
    stop.fire();
    controller.await?;

    println!(
        "\n{:<38} {:<8} {:<12} {:>9} {:>7} {:>12}",
        "deployment", "version", "status", "succeeded", "failed", "rolled back"
    );
    let mut surprises = 0;
    for (d, expected) in &results {
        let s = d.summary();
        println!(
            "{:<38} {:<8} {:<12} {:>9} {:>7} {:>12}",
            d.id().to_string(),
            d.version().to_string(),
            d.status().to_string(),
            s.succeeded,
            s.failed,
            s.rolled_back
        );
        if d.status() != *expected {
            surprises += 1;
            eprintln!("expected {expected}, got {}: {}", d.status(), d.status_reason().unwrap_or_default());
        }
    }
    let running = fleet.running.lock().map_err(|_| anyhow::anyhow!("fleet state poisoned"))?.clone();
    println!("\nrunning now: {running:?}");
    if surprises > 0 {
        bail!("{surprises} deployment(s) did not end as the story says");
    }
    Ok(())
}
