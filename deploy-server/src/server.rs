//! Running the API: settings (flags, `DEPLOYD_*` variables, a TOML file), the store, the bootstrap admin key, the
//! controller and graceful shutdown.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use deploy_core::{
    EnvironmentPattern, ExecutorRouter, FullStore, HumanDuration, Orchestrator, OrchestratorConfig, RetrySchedule,
    Role, ShutdownSignal, ShutdownTrigger,
};
use deploy_executors::{CommandExecutor, DockerExecutor, ProcessExecutor, SimExecutor};
use deploy_sql::SqlStore;
use serde::Deserialize;

use crate::agents::AgentExecutor;
use crate::app::{ApiConfig, AppState, router};
use crate::auth::{Authenticator, JwtConfig, is_well_formed_key, key_record};
use crate::metrics::Metrics;
use crate::webhooks::dispatch::{Dispatcher, DispatcherConfig};

/// `deployd`'s settings. Every field can come from a flag, a `DEPLOYD_*` variable or the `--config` TOML file (in that
/// order of precedence); this is the merged result.
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Settings {
    /// Where to listen (`127.0.0.1:8080`; port 0 picks a free port).
    pub listen: SocketAddr,
    /// The data directory: the SQLite database and the executors' state (`process/`, `command/`, `sim/`).
    pub data_dir: PathBuf,
    /// PostgreSQL instead of the embedded SQLite store. Holds a password: prefer `database_url_file`.
    pub database_url: Option<String>,
    /// A file holding the PostgreSQL URL (its first line), so the password is in no variable or flag.
    pub database_url_file: Option<PathBuf>,
    /// PostgreSQL: the longest a statement, or a wait for a connection, may take; an outage answers 503
    /// `store-unavailable` within it.
    pub database_timeout: HumanDuration,
    /// Enables the `sim` executor.
    pub dev: bool,
    /// The executor kinds that run real things, comma-separated: `process`, `command` (both by default; empty for
    /// none), `docker` (a target's Docker Engine, named in its config), `swarm` (a Swarm service), `deployd` (an environment on another deployd).
    /// They run what an admin of every environment puts in an environment, as `deployd`'s user (or the engine's, or
    /// with the credentials the target names).
    pub executors: String,
    /// Where the `process` and `command` executors keep what they know of each target (installed versions, running
    /// hooks, logs): the data directory unless set. Replicas that act on the same hosts share it, so a replica that
    /// takes over finds and ends the hooks another left running.
    pub executor_state_dir: Option<PathBuf>,
    /// Refuse submissions without `Idempotency-Key`.
    pub require_idempotency_key: bool,
    /// Requests per second per principal.
    pub rate_limit: f64,
    /// Burst per principal.
    pub rate_limit_burst: f64,
    /// Longest time to answer a request.
    pub request_timeout: HumanDuration,
    /// How long a controller's claim lasts without renewal.
    pub lease: HumanDuration,
    /// How often an idle controller looks for work.
    pub poll_interval: HumanDuration,
    /// Deployments one replica drives at once.
    pub max_concurrent_deployments: usize,
    /// HS256 secret for JWTs. Prefer `jwt_hs256_secret_file`.
    pub jwt_hs256_secret: Option<String>,
    /// A file holding the HS256 secret for JWTs.
    pub jwt_hs256_secret_file: Option<PathBuf>,
    /// PEM file with the Ed25519 public key for JWTs.
    pub jwt_eddsa_public_key: Option<PathBuf>,
    /// Required `iss` of JWTs.
    pub jwt_issuer: Option<String>,
    /// Required `aud` of JWTs.
    pub jwt_audience: Option<String>,
    /// The claim naming the person a JWT speaks for (default: `sub`); an API key's `owner` names the same person.
    pub jwt_identity_claim: Option<String>,
    /// The admin key to create on first start instead of a random one. Prefer `bootstrap_admin_key_file`.
    pub bootstrap_admin_key: Option<String>,
    /// A file holding the admin key to create on first start.
    pub bootstrap_admin_key_file: Option<PathBuf>,
    /// `env://NAME` secret references resolve only variables whose name starts with this (never deployd's own
    /// `DEPLOYD_*` settings).
    pub secret_env_prefix: String,
    /// `file://NAME` secret references resolve files inside this directory (none without it).
    pub secrets_dir: Option<PathBuf>,
    /// The most targets one environment may have (default 20,000): readers get every target of an environment.
    pub max_targets_per_environment: usize,
    /// The largest deployment accepted, in bytes of its spec (default 64 KiB): readers and listings hold it whole.
    pub max_deployment_bytes: usize,
    /// Targets a response carries inline (default 500); the rest are paged from `GET .../targets`.
    pub targets_per_response: usize,
    /// Unfinished deployments one submitter (principal) may have at once (default 64; 0: no limit). Over it a
    /// submission answers 429 `quota-exceeded`. Rollbacks are never refused.
    pub quota_open_deployments: u64,
    /// Bytes of deployment records one submitter may store per `quota_window` (default 64 MiB; 0: no limit).
    pub quota_bytes: u64,
    /// The window of `quota_bytes` (default 24 hours).
    pub quota_window: HumanDuration,
    /// A binary whose `log-relay` command reads `process` services' output (scrubbed, into their logs) so services
    /// keep a reader while deployd restarts; the `deployd` binary names itself. `None`: deployd's own threads read it.
    pub log_relay: Option<PathBuf>,
    /// Secret references every environment may resolve, comma-separated (exact references, or prefixes ending in
    /// `*`); each environment adds its own `secret_scope`. Empty (the default): none beyond each environment's.
    pub global_secret_scope: String,
    /// Delays between webhook delivery attempts (`1s,5s,5m,...`).
    pub webhook_retry_schedule: String,
    /// The longest one webhook attempt may take.
    pub webhook_timeout: HumanDuration,
    /// Webhook attempts in flight at once (per replica).
    pub webhook_concurrency: usize,
    /// Webhook attempts in flight at once to one subscription.
    pub webhook_concurrency_per_subscription: usize,
    /// An agent silent for longer than this makes its target unreachable.
    pub agent_heartbeat_timeout: HumanDuration,
    /// Requests per second one client address may make, before authentication (0 turns the limit off).
    pub ip_rate_limit: f64,
    /// Burst per client address.
    pub ip_rate_limit_burst: f64,
    /// Reverse proxies (CIDR blocks, comma-separated) whose `X-Forwarded-For` names the client for the per-address
    /// rate limit; the header of anyone else is ignored.
    pub trusted_proxies: String,
    /// A connection that has not sent a whole request head by then is closed.
    pub header_read_timeout: HumanDuration,
    /// Connections open at once.
    pub max_connections: usize,
    /// Connections open at once from one client address.
    pub max_connections_per_ip: usize,
    /// Event streams open at once.
    pub max_streams: usize,
    /// Event streams open at once per principal.
    pub max_streams_per_principal: usize,
    /// The TLS certificate chain (PEM); with `tls_key`, deployd serves HTTPS only. Reloaded when the file changes.
    pub tls_cert: Option<PathBuf>,
    /// The TLS private key (PEM).
    pub tls_key: Option<PathBuf>,
    /// Client certificates (agents') are verified against this CA (PEM) when presented.
    pub tls_client_ca: Option<PathBuf>,
    /// Refuse TLS clients without a certificate from `tls_client_ca`.
    pub tls_require_client_cert: bool,
    /// Webhooks may reach these CIDR blocks even where the defaults or the deny list refuse them (comma-separated).
    pub webhook_allow_cidrs: String,
    /// Webhooks may not reach these CIDR blocks (comma-separated), besides link-local and metadata addresses.
    pub webhook_deny_cidrs: String,
    /// A file holding 32 random bytes (hex or base64): webhook signing secrets are stored sealed with it (AES-256-GCM).
    pub webhook_secrets_key_file: Option<PathBuf>,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            data_dir: PathBuf::from("deployd-data"),
            database_url: None,
            database_url_file: None,
            database_timeout: HumanDuration::from_secs(5),
            dev: false,
            executors: "process,command".to_owned(),
            executor_state_dir: None,
            require_idempotency_key: false,
            rate_limit: 100.0,
            rate_limit_burst: 200.0,
            request_timeout: HumanDuration::from_secs(30),
            lease: HumanDuration::from_secs(15),
            poll_interval: HumanDuration::from_millis(500),
            max_concurrent_deployments: 16,
            jwt_hs256_secret: None,
            jwt_hs256_secret_file: None,
            jwt_eddsa_public_key: None,
            jwt_issuer: None,
            jwt_audience: None,
            jwt_identity_claim: None,
            bootstrap_admin_key: None,
            bootstrap_admin_key_file: None,
            secret_env_prefix: deploy_core::DEFAULT_ENV_PREFIX.to_owned(),
            secrets_dir: None,
            global_secret_scope: String::new(),
            log_relay: None,
            max_targets_per_environment: 20_000,
            max_deployment_bytes: 64 * 1024,
            quota_open_deployments: 64,
            targets_per_response: crate::paging::DEFAULT_TARGETS_PER_RESPONSE,
            quota_bytes: 64 * 1024 * 1024,
            quota_window: HumanDuration::from_secs(24 * 3600),
            webhook_retry_schedule: RetrySchedule::default().to_string(),
            webhook_timeout: HumanDuration::from_secs(10),
            webhook_concurrency: 64,
            webhook_concurrency_per_subscription: 8,
            agent_heartbeat_timeout: HumanDuration::from_secs(15),
            ip_rate_limit: 200.0,
            ip_rate_limit_burst: 400.0,
            trusted_proxies: String::new(),
            header_read_timeout: HumanDuration::from_secs(10),
            max_connections: 4096,
            max_connections_per_ip: 512,
            max_streams: 1024,
            max_streams_per_principal: 32,
            tls_cert: None,
            tls_key: None,
            tls_client_ca: None,
            tls_require_client_cert: false,
            webhook_allow_cidrs: String::new(),
            webhook_deny_cidrs: String::new(),
            webhook_secrets_key_file: None,
        }
    }
}

impl Settings {
    /// A `deployd` for tests and experiments: an ephemeral port on loopback, its store in `data_dir`, the `sim`
    /// executor (`dev`), `admin_key` as the bootstrap admin key, rate limits out of the way, and 2 s leases with
    /// 50 ms polls, so work moves at once and a dead controller's work is taken over quickly.
    #[must_use]
    pub fn for_tests(data_dir: impl Into<PathBuf>, admin_key: &str) -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            data_dir: data_dir.into(),
            dev: true,
            bootstrap_admin_key: Some(admin_key.to_owned()),
            rate_limit: 100_000.0,
            rate_limit_burst: 100_000.0,
            ip_rate_limit: 0.0,
            lease: HumanDuration::from_secs(2),
            poll_interval: HumanDuration::from_millis(50),
            ..Self::default()
        }
    }
}

/// Secrets are never printed: the database URL (its password), the JWT secret and the bootstrap key show as `***`.
impl std::fmt::Debug for Settings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let hidden = |v: &Option<String>| v.as_ref().map(|_| "***");
        f.debug_struct("Settings")
            .field("listen", &self.listen)
            .field("data_dir", &self.data_dir)
            .field("database_url", &hidden(&self.database_url))
            .field("database_url_file", &self.database_url_file)
            .field("dev", &self.dev)
            .field("executors", &self.executors)
            .field("executor_state_dir", &self.executor_state_dir)
            .field("jwt_hs256_secret", &hidden(&self.jwt_hs256_secret))
            .field("jwt_eddsa_public_key", &self.jwt_eddsa_public_key)
            .field("jwt_issuer", &self.jwt_issuer)
            .field("jwt_audience", &self.jwt_audience)
            .field("jwt_identity_claim", &self.jwt_identity_claim)
            .field("bootstrap_admin_key", &hidden(&self.bootstrap_admin_key))
            .field("secret_env_prefix", &self.secret_env_prefix)
            .field("secrets_dir", &self.secrets_dir)
            .field("global_secret_scope", &self.global_secret_scope)
            .field("log_relay", &self.log_relay)
            .field("max_targets_per_environment", &self.max_targets_per_environment)
            .field("max_deployment_bytes", &self.max_deployment_bytes)
            .field("quota_open_deployments", &self.quota_open_deployments)
            .field("targets_per_response", &self.targets_per_response)
            .field("quota_bytes", &self.quota_bytes)
            .field("quota_window", &self.quota_window)
            .field("tls_cert", &self.tls_cert)
            .field("tls_client_ca", &self.tls_client_ca)
            .finish_non_exhaustive()
    }
}

impl Settings {
    /// Reads the settings given as files (`*_file`) into their fields; a file's first line is the value. A value
    /// given both ways is refused.
    ///
    /// # Errors
    /// [`StartError::Read`] when a file cannot be read, [`StartError::Settings`] when both are given.
    pub fn read_secret_files(mut self) -> Result<Self, StartError> {
        fn read(field: &mut Option<String>, file: Option<&PathBuf>, name: &str) -> Result<(), StartError> {
            let Some(path) = file else { return Ok(()) };
            if field.is_some() {
                return Err(StartError::Settings(format!("set either {name} or {name}_file, not both")));
            }
            let text = std::fs::read_to_string(path)
                .map_err(|source| StartError::Read { path: path.display().to_string(), source })?;
            let value = text.lines().next().unwrap_or_default().trim().to_owned();
            if value.is_empty() {
                return Err(StartError::Settings(format!("{name}_file {} is empty", path.display())));
            }
            *field = Some(value);
            Ok(())
        }
        read(&mut self.database_url, self.database_url_file.as_ref(), "database_url")?;
        read(&mut self.jwt_hs256_secret, self.jwt_hs256_secret_file.as_ref(), "jwt_hs256_secret")?;
        read(&mut self.bootstrap_admin_key, self.bootstrap_admin_key_file.as_ref(), "bootstrap_admin_key")?;
        Ok(self)
    }

    /// The resolver of secret references: `env://` under [`Settings::secret_env_prefix`] and, with
    /// [`Settings::secrets_dir`], `file://` inside it.
    #[must_use]
    pub fn secret_resolver(&self) -> Arc<dyn deploy_core::SecretResolver> {
        let mut resolver = deploy_core::SchemeResolver::new()
            .with("env", Arc::new(deploy_core::EnvSecretResolver::with_prefix(self.secret_env_prefix.clone())));
        if let Some(dir) = &self.secrets_dir {
            resolver = resolver.with("file", Arc::new(deploy_core::FileSecretResolver::new(dir)));
        }
        Arc::new(resolver)
    }
}

/// Why `deployd` could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StartError {
    /// The settings are inconsistent.
    #[error("invalid settings: {0}")]
    Settings(String),
    /// The store could not be opened.
    #[error("cannot open the store")]
    Store(#[from] deploy_sql::OpenError),
    /// The store failed while bootstrapping.
    #[error("store error while starting")]
    StoreOperation(#[from] deploy_core::StoreError),
    /// The JWT configuration is unusable.
    #[error(transparent)]
    Jwt(#[from] crate::auth::JwtConfigError),
    /// The webhook dispatcher cannot be built.
    #[error(transparent)]
    Webhooks(#[from] crate::webhooks::dispatch::DispatcherError),
    /// The listener could not be bound.
    #[error("cannot listen on {addr}")]
    Listen {
        /// The address.
        addr: SocketAddr,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The TLS files are unusable.
    #[error(transparent)]
    Tls(#[from] crate::listen::TlsError),
    /// Reading a file named in the settings, or creating the data directory, failed.
    #[error("cannot read or create {path}")]
    Read {
        /// The file.
        path: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

/// A running server.
#[derive(Debug)]
pub struct Running {
    /// The address it listens on.
    pub addr: SocketAddr,
    /// The admin key created at first start, if one was generated (shown once).
    pub bootstrap_key: Option<String>,
    /// Whether it serves HTTPS.
    pub tls: bool,
    trigger: ShutdownTrigger,
    task: tokio::task::JoinHandle<()>,
}

impl Running {
    /// Stops taking new work, lets in-flight steps finish or leaves them resumable, releases leases, and returns when
    /// the server and its controller have stopped.
    pub async fn shutdown(self) {
        self.trigger.fire();
        let _ = self.task.await;
    }

    /// Waits until the server stops (after [`Running::trigger`] fires, or a fatal error).
    pub async fn wait(self) {
        let _ = self.task.await;
    }

    /// The trigger that starts a graceful shutdown.
    pub fn trigger(&self) -> ShutdownTrigger {
        self.trigger.clone()
    }
}

async fn open_store(settings: &Settings) -> Result<Arc<dyn FullStore>, StartError> {
    // The data directory is a directory even before anything is in it (a missing path would be taken for a file),
    // and only deployd's user may enter it: it holds the database, the executors' state and hook output.
    {
        use std::os::unix::fs::{DirBuilderExt as _, PermissionsExt as _};
        // The executors' own directory, when it is elsewhere, holds the same (state, hook output): as private.
        for dir in std::iter::once(&settings.data_dir).chain(settings.executor_state_dir.as_ref()) {
            let fail = |source| StartError::Read { path: dir.display().to_string(), source };
            std::fs::DirBuilder::new().recursive(true).mode(0o700).create(dir).map_err(fail)?;
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).map_err(fail)?;
        }
    }
    Ok(match &settings.database_url {
        Some(url) => Arc::new(SqlStore::postgres_with_timeout(url, settings.database_timeout.as_std()).await?),
        None => Arc::new(SqlStore::sqlite(&settings.data_dir).await?),
    })
}

fn jwt_config(settings: &Settings) -> Result<Option<JwtConfig>, StartError> {
    let config = match (&settings.jwt_hs256_secret, &settings.jwt_eddsa_public_key) {
        (Some(_), Some(_)) => {
            return Err(StartError::Settings("set either the HS256 secret or the EdDSA public key, not both".into()));
        }
        (Some(secret), None) => JwtConfig::hs256(secret.as_bytes())?,
        (None, Some(path)) => {
            let pem =
                std::fs::read(path).map_err(|source| StartError::Read { path: path.display().to_string(), source })?;
            JwtConfig::eddsa_pem(&pem)?
        }
        (None, None) => return Ok(None),
    };
    Ok(Some(
        config
            .issuer(settings.jwt_issuer.clone())
            .audience(settings.jwt_audience.clone())
            .identity_claim(settings.jwt_identity_claim.clone()),
    ))
}

/// This replica's owner name in leases: `deployd-<id>#<incarnation>`, where the id is kept in the data directory, so
/// a restarted deployd (after kill -9, a crash, a reboot) takes over its own unexpired leases at once instead of
/// waiting them out ([`deploy_core::restarted_owner`]). The name is used only while an exclusive lock on
/// `replica.lock` is held, which the kernel releases when the process dies: a second deployd on the same data
/// directory gets a name of its own (and the first keeps its work).
fn replica_owner(data_dir: &std::path::Path) -> Result<(String, Option<std::fs::File>), StartError> {
    use std::os::unix::fs::OpenOptionsExt as _;
    let incarnation = uuid::Uuid::now_v7().simple().to_string();
    let fail = |path: &std::path::Path| {
        let path = path.display().to_string();
        move |source| StartError::Read { path, source }
    };
    let lock_path = data_dir.join("replica.lock");
    let lock = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .mode(0o600)
        .open(&lock_path)
        .map_err(fail(&lock_path))?;
    if lock.try_lock().is_err() {
        tracing::warn!(dir = %data_dir.display(), "another deployd uses this data directory; leasing under a name of its own");
        return Ok((format!("deployd-{incarnation}"), None));
    }
    let id_path = data_dir.join("replica-id");
    let id = match std::fs::read_to_string(&id_path) {
        Ok(text) if !text.trim().is_empty() => text.trim().to_owned(),
        _ => {
            let id = uuid::Uuid::now_v7().simple().to_string();
            let mut file = std::fs::OpenOptions::new()
                .create(true)
                .truncate(true)
                .write(true)
                .mode(0o600)
                .open(&id_path)
                .map_err(fail(&id_path))?;
            std::io::Write::write_all(&mut file, id.as_bytes()).map_err(fail(&id_path))?;
            id
        }
    };
    Ok((format!("deployd-{id}#{incarnation}"), Some(lock)))
}

/// Creates the first admin key when the store has none; returns it when it was generated here.
async fn bootstrap(store: &dyn FullStore, settings: &Settings) -> Result<Option<String>, StartError> {
    if !store.list_api_keys().await?.is_empty() {
        return Ok(None);
    }
    let (key, generated) = match &settings.bootstrap_admin_key {
        Some(k) if is_well_formed_key(k) => (k.clone(), false),
        Some(_) => {
            return Err(StartError::Settings(
                "DEPLOYD_BOOTSTRAP_ADMIN_KEY must be dk_ followed by 43 URL-safe base64 characters".into(),
            ));
        }
        None => (crate::auth::generate_key().map_err(|e| StartError::Settings(format!("random source: {e}")))?, true),
    };
    let record = key_record(
        &key,
        "bootstrap-admin".into(),
        Role::Admin,
        vec![EnvironmentPattern::any()],
        "deployd".into(),
        time::OffsetDateTime::now_utc(),
    );
    store.create_api_key(record).await?;
    Ok(generated.then_some(key))
}

/// Opens the store, bootstraps the admin key, binds the listener and starts the API and the controller.
///
/// # Errors
/// [`StartError`] when anything needed to serve is missing.
pub async fn start(settings: Settings) -> Result<Running, StartError> {
    let settings = settings.read_secret_files()?;
    if settings.secret_env_prefix.is_empty()
        || "DEPLOYD_".starts_with(&settings.secret_env_prefix)
        || settings.secret_env_prefix.starts_with("DEPLOYD_")
    {
        return Err(StartError::Settings(
            "secret_env_prefix must be non-empty and must not cover deployd's own DEPLOYD_* settings".into(),
        ));
    }
    let secrets = settings.secret_resolver();
    let global_scope =
        deploy_core::SecretScope::new(settings.global_secret_scope.split(',').map(str::trim).filter(|e| !e.is_empty()));
    let mut scope_errors = deploy_core::ValidationErrors::default();
    global_scope.check("global_secret_scope", &mut scope_errors);
    if !scope_errors.is_empty() {
        return Err(StartError::Settings(scope_errors.to_string()));
    }
    let webhook_key = match &settings.webhook_secrets_key_file {
        Some(path) => {
            Some(Arc::new(crate::SecretsKey::from_file(path).map_err(|e| StartError::Settings(e.to_string()))?))
        }
        None => None,
    };
    let webhook_addresses = Arc::new(
        crate::AddressPolicy::new(&settings.webhook_allow_cidrs, &settings.webhook_deny_cidrs)
            .map_err(|e| StartError::Settings(format!("webhook CIDRs: {e}")))?,
    );
    let schedule: RetrySchedule = settings
        .webhook_retry_schedule
        .parse()
        .map_err(|e| StartError::Settings(format!("webhook_retry_schedule: {e}")))?;
    let store = open_store(&settings).await?;
    let bootstrap_key = bootstrap(store.as_ref(), &settings).await?;
    let jwt = jwt_config(&settings)?;
    // `process` and `command` run what an admin puts in an environment, as deployd's user: only those enabled.
    let mut executors = ExecutorRouter::new();
    let state_dir = settings.executor_state_dir.as_ref().unwrap_or(&settings.data_dir);
    for kind in settings.executors.split(',').map(str::trim).filter(|k| !k.is_empty()) {
        executors = match kind {
            "process" => {
                let mut process = ProcessExecutor::new(state_dir.join("process")).secrets(Arc::clone(&secrets));
                if let Some(binary) = &settings.log_relay {
                    process = process.log_relay(deploy_executors::relay_command(binary));
                }
                executors.with("process", Arc::new(process))
            }
            "command" => executors.with(
                "command",
                Arc::new(CommandExecutor::new(state_dir.join("command")).secrets(Arc::clone(&secrets))),
            ),
            "docker" => executors.with("docker", Arc::new(DockerExecutor::new().secrets(Arc::clone(&secrets)))),
            "swarm" => {
                executors.with("swarm", Arc::new(deploy_executors::SwarmExecutor::new().secrets(Arc::clone(&secrets))))
            }
            "deployd" => executors
                .with("deployd", Arc::new(deploy_executors::FederationExecutor::new().secrets(Arc::clone(&secrets)))),
            other => {
                return Err(StartError::Settings(format!(
                    "executors: unknown kind {other:?} (process, command, docker, swarm, deployd; sim comes with --dev)"
                )));
            }
        };
    }
    // Agents run nothing here: they only wait for the agent on the target's host.
    let agent_watch = Arc::new(crate::agents::AgentWatch::default());
    let agent_executor = AgentExecutor::new(
        Arc::clone(&store) as Arc<dyn deploy_core::AgentStore>,
        Arc::new(deploy_core::SystemClock),
        settings.agent_heartbeat_timeout.as_std(),
    )
    .watch_with(Arc::clone(&agent_watch));
    executors = executors.with("agent", Arc::new(agent_executor));
    if settings.dev {
        executors = executors.with("sim", Arc::new(SimExecutor::persistent(settings.data_dir.join("sim"))));
    }
    let metrics = Arc::new(Metrics::default());
    let (owner, replica_lock) = replica_owner(&settings.data_dir)?;
    let config = OrchestratorConfig {
        owner,
        lease: settings.lease.as_std(),
        poll_interval: settings.poll_interval.as_std(),
        max_concurrent_deployments: settings.max_concurrent_deployments.max(1),
        max_targets_per_environment: settings.max_targets_per_environment.max(1),
        max_spec_bytes: settings.max_deployment_bytes.max(1024),
        quota: (settings.quota_open_deployments > 0 || settings.quota_bytes > 0).then(|| deploy_core::SubmitterQuota {
            max_open: Some(settings.quota_open_deployments).filter(|n| *n > 0).unwrap_or(u64::MAX),
            max_bytes: Some(settings.quota_bytes).filter(|n| *n > 0).unwrap_or(u64::MAX),
            window: settings.quota_window.as_std(),
        }),
        ..OrchestratorConfig::default()
    };
    let orchestrator = Orchestrator::builder(Arc::clone(&store) as Arc<dyn deploy_core::Store>, executors)
        .secrets(secrets)
        .global_secret_scope(global_scope)
        .config(config)
        .observer(Arc::clone(&metrics) as Arc<dyn deploy_core::EngineObserver>)
        .build();
    let api = ApiConfig {
        require_idempotency_key: settings.require_idempotency_key,
        rate_limit_per_second: settings.rate_limit.max(0.001),
        rate_limit_burst: settings.rate_limit_burst.max(1.0),
        request_timeout: settings.request_timeout.as_std(),
        ip_rate_limit_per_second: settings.ip_rate_limit.max(0.0),
        ip_rate_limit_burst: settings.ip_rate_limit_burst.max(1.0),
        max_streams: settings.max_streams.max(1),
        max_streams_per_principal: settings.max_streams_per_principal.max(1),
        trusted_proxies: crate::webhooks::guard::parse_list(&settings.trusted_proxies)
            .map_err(|e| StartError::Settings(format!("trusted_proxies: {e}")))?,
        targets_per_response: settings.targets_per_response.max(1),
        ..ApiConfig::default()
    };
    let (trigger, shutdown) = ShutdownSignal::new();
    let state = AppState::new(
        orchestrator.clone(),
        Arc::clone(&store),
        Authenticator::new(Arc::clone(&store) as Arc<dyn deploy_core::KeyStore>, jwt),
        api,
        metrics,
        shutdown.clone(),
    )
    .with_agent_watch(agent_watch)
    .with_webhook_addresses(Arc::clone(&webhook_addresses));
    let state = match &webhook_key {
        Some(key) => state.with_webhook_secrets_key(Arc::clone(key)),
        None => state,
    };
    let dispatcher = Dispatcher::new(
        Arc::clone(&store) as Arc<dyn deploy_core::WebhookStore>,
        Arc::clone(orchestrator.clock()),
        DispatcherConfig {
            schedule,
            timeout: settings.webhook_timeout.as_std(),
            concurrency: settings.webhook_concurrency.max(1),
            per_subscription: settings.webhook_concurrency_per_subscription.max(1),
            addresses: webhook_addresses,
            secrets_key: webhook_key,
            ..DispatcherConfig::default()
        },
    )?
    .wake_with(state.webhooks_wake())
    .metrics(Arc::clone(&state.inner.metrics));
    let listener = tokio::net::TcpListener::bind(settings.listen)
        .await
        .map_err(|source| StartError::Listen { addr: settings.listen, source })?;
    let addr = listener.local_addr().map_err(|source| StartError::Listen { addr: settings.listen, source })?;
    let tls = match (&settings.tls_cert, &settings.tls_key) {
        (Some(cert), Some(key)) => Some(crate::listen::TlsFiles {
            cert: cert.clone(),
            key: key.clone(),
            client_ca: settings.tls_client_ca.clone(),
            require_client_cert: settings.tls_require_client_cert,
        }),
        (None, None) if settings.tls_client_ca.is_none() => None,
        _ => {
            return Err(StartError::Settings(
                "TLS needs both tls_cert and tls_key (and them for tls_client_ca)".into(),
            ));
        }
    };
    let serves_tls = tls.is_some();
    let listener = crate::listen::Listener::new(
        listener,
        crate::listen::ListenConfig {
            header_read_timeout: settings.header_read_timeout.as_std(),
            max_connections: settings.max_connections.max(1),
            max_connections_per_ip: settings.max_connections_per_ip.max(1),
            tls,
        },
    )?;
    let metrics = Arc::clone(&state.inner.metrics);
    let drain = settings.request_timeout.as_std();
    let app = router(state);
    let task = tokio::spawn(async move {
        // Held while this process serves: proof to a restart that no other process uses this replica's name.
        let _replica_lock = replica_lock;
        let controller = {
            let orchestrator = orchestrator.clone();
            let shutdown = shutdown.clone();
            tokio::spawn(async move { orchestrator.run(shutdown).await })
        };
        let webhooks = tokio::spawn(dispatcher.run(shutdown.clone()));
        listener.serve(app, metrics, shutdown.clone(), drain).await;
        if controller.await.is_err() {
            tracing::error!("the controller task failed");
        }
        if webhooks.await.is_err() {
            tracing::error!("the webhook dispatcher failed");
        }
        tracing::info!("deployd stopped");
    });
    tracing::info!(%addr, "deployd listening");
    Ok(Running { addr, bootstrap_key, tls: serves_tls, trigger, task })
}

/// Waits for SIGTERM or Ctrl-C.
pub async fn terminated() {
    #[cfg(unix)]
    {
        let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(s) => s,
            Err(e) => {
                tracing::error!(error = %e, "cannot listen for SIGTERM; only Ctrl-C stops deployd");
                let _ = tokio::signal::ctrl_c().await;
                return;
            }
        };
        tokio::select! {
            _ = term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn settings_never_print_their_secrets() {
        let s = Settings {
            database_url: Some("postgres://app:hunter2@db/app".into()),
            jwt_hs256_secret: Some("jwt-secret-value".into()),
            bootstrap_admin_key: Some("dk_bootstrapvalue".into()),
            ..Settings::default()
        };
        let shown = format!("{s:?}");
        for secret in ["hunter2", "jwt-secret-value", "dk_bootstrapvalue"] {
            assert!(!shown.contains(secret), "{shown}");
        }
        assert!(shown.contains("***"));
    }

    #[test]
    fn secrets_given_as_files_are_read_and_never_both_ways() {
        let dir = deploy_testkit::fixtures::temp_dir("settings-files");
        std::fs::write(dir.join("key"), "dk_fromfile\n").unwrap();
        let s = Settings { bootstrap_admin_key_file: Some(dir.join("key")), ..Settings::default() };
        assert_eq!(s.read_secret_files().unwrap().bootstrap_admin_key.as_deref(), Some("dk_fromfile"));
        let both = Settings {
            bootstrap_admin_key: Some("dk_x".into()),
            bootstrap_admin_key_file: Some(dir.join("key")),
            ..Settings::default()
        };
        assert!(matches!(both.read_secret_files(), Err(StartError::Settings(_))));
    }
}
