//! Fixture builders: environments, requests and a ready-wired [`Harness`].

use std::sync::Arc;
use std::time::Duration;

use deploy_core::{
    ConcurrencyPolicy, Deployment, DeploymentId, DeploymentRequest, EnvironmentName, EnvironmentSpec, Orchestrator,
    OrchestratorConfig, Principal, Submission, TargetDefinition, TargetId,
};

use crate::clock::TestClock;
use crate::memory::MemoryStore;
use crate::scripted::ScriptedExecutor;

#[allow(clippy::panic)] // Fixtures are called with literals; a typo there is a bug in the test.
fn fixture<T, E: std::fmt::Display>(r: Result<T, E>) -> T {
    match r {
        Ok(v) => v,
        Err(e) => panic!("deploy-testkit fixture: {e}"),
    }
}

/// A new, empty directory under the system's temporary directory, named after `tag` and a fresh UUIDv7, for tests
/// that need files (SQLite databases, data directories). The caller removes it.
#[must_use]
pub fn temp_dir(tag: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("deploy-{tag}-{}", uuid::Uuid::now_v7().simple()));
    fixture(std::fs::create_dir_all(&dir));
    dir
}

/// An environment name from a literal.
#[must_use]
pub fn env_name(name: &str) -> EnvironmentName {
    fixture(EnvironmentName::new(name))
}

/// An environment of `ids`, every target driven by executor kind `executor`.
#[must_use]
pub fn environment(ids: &[&str], executor: &str, concurrency: ConcurrencyPolicy) -> EnvironmentSpec {
    EnvironmentSpec {
        concurrency,
        require_if_match: false,
        targets: ids
            .iter()
            .map(|id| TargetDefinition {
                id: fixture(TargetId::new(*id)),
                labels: [(
                    "zone".to_owned(),
                    if id.ends_with(['1', '3', '5', '7', '9']) { "a" } else { "b" }.to_owned(),
                )]
                .into_iter()
                .collect(),
                executor: executor.to_owned(),
                config: serde_json::Value::Null,
            })
            .collect(),
    }
}

/// A request for `service` at `version` in `environment`, everything else at its default but a quick verification
/// (`healthy_for` 1s, `interval` 500ms, `timeout` 10s).
#[must_use]
pub fn request(environment: &str, service: &str, version: &str) -> DeploymentRequest {
    DeploymentRequest {
        environment: environment.to_owned(),
        service: service.to_owned(),
        version: version.to_owned(),
        verify: Some(deploy_core::spec::VerifyRequest {
            timeout: Some("10s".into()),
            interval: Some("500ms".into()),
            healthy_for: Some("1s".into()),
        }),
        ..DeploymentRequest::default()
    }
}

/// An orchestrator configuration for tests: short leases and backoffs, so scenarios finish in little virtual time.
#[must_use]
pub fn fast_config(owner: &str) -> OrchestratorConfig {
    OrchestratorConfig {
        owner: owner.to_owned(),
        lease: Duration::from_secs(10),
        poll_interval: Duration::from_millis(100),
        retry_base: Duration::from_millis(50),
        retry_cap: Duration::from_secs(1),
        watch_poll_interval: Duration::from_millis(100),
        ..OrchestratorConfig::default()
    }
}

/// A [`MemoryStore`], a [`ScriptedExecutor`] (kind `scripted`), a [`TestClock`] and an [`Orchestrator`] over them,
/// with one environment already created. Run scenarios under `#[tokio::test(start_paused = true)]`.
pub struct Harness {
    /// The store.
    pub store: Arc<MemoryStore>,
    /// The executor behind every target.
    pub executor: Arc<ScriptedExecutor>,
    /// The clock.
    pub clock: Arc<TestClock>,
    /// The orchestrator.
    pub orchestrator: Orchestrator,
    /// An admin on every environment.
    pub admin: Principal,
    /// The environment's name.
    pub environment: EnvironmentName,
}

impl std::fmt::Debug for Harness {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Harness").field("environment", &self.environment).finish_non_exhaustive()
    }
}

impl Harness {
    /// A harness whose environment `name` has `targets` (id, running version) under `concurrency`.
    pub async fn new(name: &str, targets: &[(&str, Option<&str>)], concurrency: ConcurrencyPolicy) -> Self {
        let clock = Arc::new(TestClock::new());
        let executor = Arc::new(ScriptedExecutor::new("scripted", clock.clone()));
        for (id, version) in targets {
            executor.add_target(id, *version);
        }
        let store = Arc::new(MemoryStore::new());
        let orchestrator = Self::orchestrator_over(&store, &executor, &clock, "controller-1");
        let admin = Principal::system("test:admin");
        let environment = env_name(name);
        let ids: Vec<&str> = targets.iter().map(|(id, _)| *id).collect();
        fixture(
            orchestrator
                .put_environment(&admin, &environment, self::environment(&ids, "scripted", concurrency), None)
                .await,
        );
        Self { store, executor, clock, orchestrator, admin, environment }
    }

    /// Another orchestrator (a second replica, or the same one after a restart) over the same store and executor.
    #[must_use]
    pub fn replica(&self, owner: &str) -> Orchestrator {
        Self::orchestrator_over(&self.store, &self.executor, &self.clock, owner)
    }

    fn orchestrator_over(
        store: &Arc<MemoryStore>,
        executor: &Arc<ScriptedExecutor>,
        clock: &Arc<TestClock>,
        owner: &str,
    ) -> Orchestrator {
        let router = deploy_core::ExecutorRouter::new().with("scripted", executor.clone());
        Orchestrator::builder(store.clone(), executor.clone())
            .router(router)
            .clock(clock.clone())
            .config(fast_config(owner))
            .build()
    }

    /// Submits `request` as the admin.
    ///
    /// # Errors
    /// Whatever [`Orchestrator::submit`] returns.
    pub async fn submit(&self, request: DeploymentRequest) -> Result<Deployment, deploy_core::Error> {
        self.orchestrator
            .submit(&self.admin, Submission { request, ..Submission::default() })
            .await
            .map(|s| s.deployment)
    }

    /// Drives every runnable deployment to the end.
    pub async fn settle(&self) {
        fixture(self.orchestrator.run_until_idle().await);
    }

    /// A deployment as stored now.
    pub async fn get(&self, id: DeploymentId) -> Deployment {
        fixture(self.orchestrator.get(&self.admin, id).await)
    }

    /// Every event of a deployment.
    pub async fn events(&self, id: DeploymentId) -> Vec<deploy_core::Event> {
        fixture(self.orchestrator.events(&self.admin, id, 0, 100_000).await)
    }
}
