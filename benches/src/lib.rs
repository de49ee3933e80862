//! Shared pieces of the benchmarks: a no-op executor and an environment of `n` targets.

use std::sync::Arc;

use async_trait::async_trait;
use deploy_core::spec::{StrategyRequest, VerifyRequest};
use deploy_core::{
    ApplyContext, ConcurrencyPolicy, DeploymentRequest, DesiredState, EnvironmentName, EnvironmentSpec, Executor,
    ExecutorError, ExecutorRouter, Health, Observation, Orchestrator, OrchestratorConfig, Outcome, Principal,
    Submission, Target, TargetDefinition, TargetId,
};
use deploy_testkit::MemoryStore;

/// An executor that does nothing and says so: nothing runs, every apply works, every probe is healthy.
#[derive(Debug, Default, Clone, Copy)]
pub struct NoopExecutor;

#[async_trait]
impl Executor for NoopExecutor {
    async fn observe(&self, _: &Target, _: Option<&DesiredState>) -> Result<Observation, ExecutorError> {
        Ok(Observation { version: None, health: Health::Unknown })
    }
    async fn apply(&self, _: &Target, _: ApplyContext<'_>) -> Result<Outcome, ExecutorError> {
        Ok(Outcome::quiet())
    }
    async fn verify(&self, _: &Target, _: &DesiredState) -> Result<Health, ExecutorError> {
        Ok(Health::Healthy)
    }
}

/// The environment of the benchmarks: `n` targets named `t-0 .. t-(n-1)`, all driven by the no-op executor.
///
/// # Panics
/// Never for the ids it makes.
#[must_use]
pub fn fleet(n: usize) -> EnvironmentSpec {
    EnvironmentSpec {
        concurrency: ConcurrencyPolicy::Queue,
        require_if_match: false,
        protection: None,
        schedule: None,
        secret_scope: deploy_core::SecretScope::default(),
        targets: (0..n)
            .filter_map(|i| Some((TargetId::new(format!("t-{i}")).ok()?, "noop".parse().ok()?)))
            .map(|(id, executor)| TargetDefinition {
                id,
                labels: Default::default(),
                executor,
                config: serde_json::Value::Null,
            })
            .collect(),
    }
}

/// An acceptance of `service` at `version` into `environment`, as the store receives it (no idempotency key, no
/// expected revision, accepted now).
///
/// # Errors
/// When the request is invalid (an empty or malformed name).
pub fn acceptance(
    environment: &str,
    service: &str,
    version: &str,
) -> Result<deploy_core::Acceptance, deploy_core::ValidationErrors> {
    let spec = DeploymentRequest {
        environment: environment.into(),
        service: service.into(),
        version: version.into(),
        ..Default::default()
    }
    .validate()?;
    Ok(deploy_core::Acceptance {
        draft: deploy_core::DeploymentDraft {
            id: deploy_core::DeploymentId::new(),
            spec,
            created_by: Principal::system("bench").id().to_owned(),
            plan: deploy_core::TargetPlan::FromSpec,
            rollback_of: None,
            retry_of: None,
            submitted_by: None,
        },
        idempotency: None,
        quota: None,
        expected_revision: None,
        now: time::OffsetDateTime::now_utc(),
    })
}

/// The deployment the benchmark runs: rolling, 25% at a time, a single healthy probe per target.
#[must_use]
pub fn rolling_request() -> DeploymentRequest {
    DeploymentRequest {
        environment: "bench".into(),
        service: "svc".into(),
        version: "2.0".into(),
        strategy: Some(StrategyRequest::Rolling { batch_size: Some("25%".into()), pause: None }),
        verify: Some(VerifyRequest {
            timeout: Some("10s".into()),
            interval: Some("1ms".into()),
            healthy_for: Some("0s".into()),
        }),
        ..DeploymentRequest::default()
    }
}

/// A store holding the environment and one queued rolling deployment over it, and an orchestrator ready to drive it.
///
/// # Errors
/// Any error from the orchestrator, as text.
pub async fn prepared(n: usize) -> Result<(Arc<MemoryStore>, Orchestrator), String> {
    let store = Arc::new(MemoryStore::new());
    let executor = Arc::new(NoopExecutor);
    let orchestrator = Orchestrator::builder(store.clone(), ExecutorRouter::new().with("noop", executor))
        .config(OrchestratorConfig { owner: "bench".into(), ..OrchestratorConfig::default() })
        .build();
    let admin = Principal::system("bench");
    let env = EnvironmentName::new("bench").map_err(|e| e.to_string())?;
    orchestrator.put_environment(&admin, &env, fleet(n), None).await.map_err(|e| e.to_string())?;
    let _queued = orchestrator
        .submit(&admin, Submission { request: rolling_request(), ..Submission::default() })
        .await
        .map_err(|e| e.to_string())?;
    Ok((store, orchestrator))
}

/// Resident memory of this process in bytes (Linux), for coarse per-target figures.
#[must_use]
pub fn resident_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// CPU time (user + system) this process has used so far, all threads included, finished ones too (Linux; 10 ms
/// resolution).
#[must_use]
pub fn process_cpu() -> Option<std::time::Duration> {
    stat_cpu(&std::fs::read_to_string("/proc/self/stat").ok()?)
}

/// CPU time (user + system) used so far by this process's live threads whose names start with one of `prefixes` (all
/// of them when `prefixes` is empty); a thread that cannot be read counts nothing (Linux; 10 ms resolution).
#[must_use]
pub fn threads_cpu(prefixes: &[&str]) -> std::time::Duration {
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else { return std::time::Duration::ZERO };
    tasks
        .flatten()
        .filter_map(|task| std::fs::read_to_string(task.path().join("stat")).ok())
        .filter(|stat| {
            let name = stat.find('(').zip(stat.rfind(')')).and_then(|(open, close)| stat.get(open + 1..close));
            prefixes.is_empty() || name.is_some_and(|n| prefixes.iter().any(|p| n.starts_with(p)))
        })
        .filter_map(|stat| stat_cpu(&stat))
        .sum()
}

/// The user and system time of a `/proc/.../stat` line.
fn stat_cpu(stat: &str) -> Option<std::time::Duration> {
    let fields: Vec<&str> = stat.get(stat.rfind(')')? + 1..)?.split_whitespace().collect();
    let ticks = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    Some(std::time::Duration::from_millis(ticks * 10)) // USER_HZ is 100 on Linux
}
