//! Fixture builders: environments, requests and a ready-wired [`Harness`].

use std::sync::Arc;
use std::time::Duration;

use deploy_core::{
    ConcurrencyPolicy, Deployment, DeploymentId, DeploymentRequest, EnvironmentName, EnvironmentSpec, Executor,
    Orchestrator, OrchestratorConfig, Principal, Submission, TargetDefinition, TargetId, WebhookSubscription,
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
/// that need files (SQLite databases, data directories). It is removed, with everything in it, when the returned
/// guard is dropped, unless a panic is unwinding (a failing test): then it is kept and its path printed, so the
/// failure can be examined.
#[must_use]
pub fn temp_dir(tag: &str) -> TempDir {
    let path = std::env::temp_dir().join(format!("deploy-{tag}-{}", uuid::Uuid::now_v7().simple()));
    fixture(std::fs::create_dir_all(&path));
    TempDir { path }
}

/// A directory made by [`temp_dir`]; it dereferences to its [`Path`](std::path::Path) and is removed when dropped.
#[derive(Debug)]
pub struct TempDir {
    path: std::path::PathBuf,
}

impl TempDir {
    /// Its path.
    #[must_use]
    pub fn path(&self) -> &std::path::Path {
        &self.path
    }

    /// Gives up the guard: the directory stays, and removing it is the caller's job (for owners that remove it
    /// themselves, such as a test server that deletes its data directory when it stops).
    #[must_use]
    pub fn keep(mut self) -> std::path::PathBuf {
        std::mem::take(&mut self.path)
    }
}

impl std::ops::Deref for TempDir {
    type Target = std::path::Path;

    fn deref(&self) -> &std::path::Path {
        &self.path
    }
}

impl AsRef<std::path::Path> for TempDir {
    fn as_ref(&self) -> &std::path::Path {
        &self.path
    }
}

impl AsRef<std::ffi::OsStr> for TempDir {
    fn as_ref(&self) -> &std::ffi::OsStr {
        self.path.as_os_str()
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if self.path.as_os_str().is_empty() {
            // Kept: see `keep`.
        } else if std::thread::panicking() {
            eprintln!("deploy-testkit: kept {} for the failing test", self.path.display());
        } else {
            // Best effort: a file a test left open (on some systems) or a process still writing only leaves litter.
            let _ = std::fs::remove_dir_all(&self.path);
        }
    }
}

/// The secret of [`subscription`]: the Standard Webhooks test vector's, a valid `whsec_` key.
pub const WEBHOOK_SECRET: &str = "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD";

/// An active webhook subscription to `url`, with a fresh UUIDv7 id, for every `deployment.*` event in every
/// environment, created now, signed with [`WEBHOOK_SECRET`]. Override fields with struct update syntax.
#[must_use]
pub fn subscription(url: &str) -> WebhookSubscription {
    WebhookSubscription {
        id: uuid::Uuid::now_v7(),
        url: url.to_owned(),
        events: vec!["deployment.*".into()],
        environments: vec![],
        active: true,
        disabled_reason: None,
        created_at: time::OffsetDateTime::now_utc(),
        secret: WEBHOOK_SECRET.to_owned(),
    }
}

/// An environment name from a literal.
#[must_use]
pub fn env_name(name: &str) -> EnvironmentName {
    fixture(EnvironmentName::new(name))
}

/// A target as an executor sees it: `id` in `environment`, of kind `executor`, with `config` and no labels.
#[must_use]
pub fn target(environment: &str, id: &str, executor: &str, config: serde_json::Value) -> deploy_core::Target {
    deploy_core::Target {
        environment: env_name(environment),
        id: fixture(TargetId::new(id)),
        labels: std::collections::BTreeMap::new(),
        executor: fixture(deploy_core::ExecutorKind::new(executor)),
        config,
    }
}

/// An environment of `ids`, every target driven by executor kind `executor`.
#[must_use]
pub fn environment(ids: &[&str], executor: &str, concurrency: ConcurrencyPolicy) -> EnvironmentSpec {
    EnvironmentSpec {
        concurrency,
        require_if_match: false,
        protection: None,
        schedule: None,
        secret_scope: deploy_core::SecretScope::default(),
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
                executor: fixture(deploy_core::ExecutorKind::new(executor)),
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

/// An orchestrator named `owner` over `store` (any store: a [`MemoryStore`], a
/// [`FaultyStore`](crate::faulty::FaultyStore) around one), with `executor` behind kind `scripted`, `clock`, and
/// [`fast_config`]: what [`Harness`] builds, for tests that need a store or a replica of their own.
#[must_use]
pub fn orchestrator<E: Executor + 'static>(
    store: Arc<dyn deploy_core::Store>,
    executor: &Arc<E>,
    clock: &Arc<TestClock>,
    owner: &str,
) -> Orchestrator {
    orchestrator_for(store, SCRIPTED, executor, clock, owner)
}

/// The executor kind the [`Harness`]'s environment names.
pub const SCRIPTED: &str = "scripted";

/// [`orchestrator`] with `executor` behind kind `kind`.
#[must_use]
pub fn orchestrator_for<E: Executor + 'static>(
    store: Arc<dyn deploy_core::Store>,
    kind: &str,
    executor: &Arc<E>,
    clock: &Arc<TestClock>,
    owner: &str,
) -> Orchestrator {
    let router = deploy_core::ExecutorRouter::new().with(kind, executor.clone());
    Orchestrator::builder(store, router).clock(clock.clone()).config(fast_config(owner)).build()
}

/// A [`MemoryStore`], an executor (by default a [`ScriptedExecutor`]) behind kind `scripted`, a [`TestClock`] and an
/// [`Orchestrator`] over them, with one environment already created. Run scenarios under
/// `#[tokio::test(start_paused = true)]`.
///
/// Any executor works ([`Harness::with_executor`]): your own, or one wrapped in a
/// [`FaultyExecutor`](crate::faulty::FaultyExecutor) to see how the engine treats its errors, delays and hangs.
pub struct Harness<E: Executor + 'static = ScriptedExecutor> {
    /// The store.
    pub store: Arc<MemoryStore>,
    /// The executor behind every target.
    pub executor: Arc<E>,
    /// The clock.
    pub clock: Arc<TestClock>,
    /// The orchestrator.
    pub orchestrator: Orchestrator,
    /// An admin on every environment.
    pub admin: Principal,
    /// The environment's name.
    pub environment: EnvironmentName,
}

impl<E: Executor + 'static> std::fmt::Debug for Harness<E> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Harness").field("environment", &self.environment).finish_non_exhaustive()
    }
}

impl Harness<ScriptedExecutor> {
    /// A harness whose environment `name` has `targets` (id, running version) under `concurrency`.
    pub async fn new(name: &str, targets: &[(&str, Option<&str>)], concurrency: ConcurrencyPolicy) -> Self {
        let clock = Arc::new(TestClock::new());
        let executor = Arc::new(ScriptedExecutor::new("scripted", clock.clone()));
        for (id, version) in targets {
            executor.add_target(id, *version);
        }
        let ids: Vec<&str> = targets.iter().map(|(id, _)| *id).collect();
        Harness::with_executor(name, &ids, executor, clock, concurrency).await
    }
}

impl<E: Executor + 'static> Harness<E> {
    /// A harness over `executor`, whose environment `name` has the targets `ids` (all of kind `scripted`, served by
    /// `executor`) under `concurrency`. `clock` is the engine's; give `executor` the same one if it waits.
    pub async fn with_executor(
        name: &str,
        ids: &[&str],
        executor: Arc<E>,
        clock: Arc<TestClock>,
        concurrency: ConcurrencyPolicy,
    ) -> Self {
        let store = Arc::new(MemoryStore::new());
        let orchestrator = orchestrator(store.clone(), &executor, &clock, "controller-1");
        let admin = Principal::system("test:admin");
        let environment = env_name(name);
        fixture(
            orchestrator
                .put_environment(&admin, &environment, self::environment(ids, SCRIPTED, concurrency), None)
                .await,
        );
        Self { store, executor, clock, orchestrator, admin, environment }
    }

    /// Another orchestrator (a second replica, or the same one after a restart) over the same store and executor.
    #[must_use]
    pub fn replica(&self, owner: &str) -> Orchestrator {
        orchestrator(self.store.clone(), &self.executor, &self.clock, owner)
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

#[cfg(test)]
mod tests {
    use super::temp_dir;

    #[test]
    fn a_temp_dir_is_removed_with_its_contents_when_dropped() {
        let dir = temp_dir("fixture-drop");
        std::fs::create_dir_all(dir.join("nested")).unwrap();
        std::fs::write(dir.join("nested/file"), b"x").unwrap();
        let path = dir.to_path_buf();
        assert!(path.is_dir());
        drop(dir);
        assert!(!path.exists(), "{} is still there", path.display());
    }

    #[test]
    fn a_kept_temp_dir_stays() {
        let path = temp_dir("fixture-keep").keep();
        assert!(path.is_dir(), "{} was removed", path.display());
        std::fs::remove_dir_all(&path).unwrap();
    }

    #[test]
    fn a_failing_tests_temp_dir_is_kept() {
        let (tx, rx) = std::sync::mpsc::channel();
        let failed = std::thread::spawn(move || {
            let dir = temp_dir("fixture-panic");
            tx.send(dir.to_path_buf()).unwrap();
            panic!("the test fails");
        })
        .join();
        assert!(failed.is_err());
        let path = rx.recv().unwrap();
        assert!(path.is_dir(), "{} was removed", path.display());
        std::fs::remove_dir_all(&path).unwrap();
    }
}
