//! # deploy-executors
//!
//! Executors that plug into [`deploy_core::Orchestrator`]:
//! - [`ProcessExecutor`] (kind `process`): each target is a slot (a port, a working directory) where one version of a
//!   service runs as a local process; a new version is started, health-checked, and only then is the old one stopped
//!   (SIGTERM, then SIGKILL). It finds its processes again after a restart.
//! - [`CommandExecutor`] (kind `command`): the team's own hook scripts per lifecycle stage (stop, before install,
//!   install, after install, start, validate), with a timeout each; a failing hook fails its target with its output.
//! - [`DockerExecutor`] (kind `docker`): each target is a container workload on a Docker Engine (or Podman), the
//!   work delegated to the engine: the new version proves itself healthy before the old one stops, and everything
//!   deployd knows of a target is read back from the engine's labels.
//! - [`SwarmExecutor`] (kind `swarm`): each target is a Docker Swarm service, updated by Swarm's own rolling update
//!   and watched to its end; a failed update is rolled back by Swarm's native rollback.
//! - [`FederationExecutor`] (kind `deployd`): each target is an environment on another deployd, deployed there
//!   through `deploy-client` with one remote deployment per deployment and target (an idempotency key derived from
//!   both), followed to its end.
//! - [`SimExecutor`] (kind `sim`): simulated targets that keep their state on disk and fail on request, for demos,
//!   black-box tests and benchmarks.
//!
//! Put several behind a [`deploy_core::ExecutorRouter`] so one environment can mix them.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use std::sync::Arc;
//! use deploy_core::{ApplyContext, DeploymentId, DesiredState, Executor, ExecutorRouter, ResolvedSecrets, Target};
//! use deploy_executors::SimExecutor;
//!
//! let sim = Arc::new(SimExecutor::in_memory());
//! let router = ExecutorRouter::new().with("sim", sim.clone());
//! let target = Target {
//!     environment: "prod".parse()?,
//!     id: "web-1".parse()?,
//!     labels: Default::default(),
//!     executor: "sim".parse().unwrap(),
//!     config: serde_json::json!({"initial_version": "1.0", "apply_ms": 0}),
//! };
//! let executor = router.resolve(&target)?;
//! let want = DesiredState::bare("web".parse()?, "2.0".parse()?);
//! let secrets = ResolvedSecrets::new();
//! let ctx = ApplyContext { deployment: DeploymentId::new(), desired: &want, secrets: &secrets, fencing_token: 0, progress: None };
//! executor.apply(&target, ctx).await?;
//! assert_eq!(executor.observe(&target, Some(&want)).await?.version, Some("2.0".parse()?));
//! # Ok(()) }
//! ```
//!
//! ## The environment of a hook or process
//!
//! Every program `process` and `command` start gets an environment **built from nothing**: no variable of the
//! executor's own process (`deployd`'s or `deploy-agent`'s, with their keys) is inherited. It holds, later entries
//! winning:
//! 1. `PATH` ([`DEFAULT_PATH`]) and the facts `DEPLOY_ENVIRONMENT`, `DEPLOY_TARGET`, `DEPLOY_SERVICE`,
//!    `DEPLOY_VERSION`, `DEPLOY_DEPLOYMENT`, `DEPLOY_FENCING_TOKEN` (and `DEPLOY_STAGE`, `DEPLOY_PREVIOUS_VERSION` for hooks, `PORT` for
//!    processes);
//! 2. the deployment's `config` as `DEPLOY_CONFIG_<KEY>` and its `secrets` as `DEPLOY_SECRET_<NAME>` (`-` and `.` in
//!    a key become `_`): a deployer never chooses the name of a variable, so `LD_PRELOAD`, `BASH_ENV` or `PATH` in a
//!    payload cannot change how the program starts;
//! 3. the target's own `env`, which only an admin writes; it wins over everything, and its `{"ref": ...}` values are
//!    resolved for each run.
//!
//! What a program prints never reaches a file, an event or an error unscrubbed: its stdout and stderr are a pipe that
//! is read, and scrubbed of every secret value resolved for the call, before anything is written (its log file under
//! the state directory, capped at [`LOG_LIMIT`] per run; the tail shown in events and errors). A hook's pipe is read by
//! this process, also after the hook exits if a child it left running still prints; a `process` service's by a relay
//! process ([`ProcessExecutor::log_relay`], `deployd log-relay`) so the service outlives the process that started it.
//!
//! **Migrating hooks** written before this: a hook that read `$LOG_LEVEL` from a deployment's `config` reads
//! `$DEPLOY_CONFIG_LOG_LEVEL`; a secret `DB_PASSWORD` from `secrets` is `$DEPLOY_SECRET_DB_PASSWORD`; anything a hook
//! took from `deployd`'s own environment (`HOME`, proxies) goes into the target's `env`.

mod command;
mod docker;
mod federation;
mod local;
mod output;
mod process;
mod sim;
mod swarm;

pub use command::{APPLY_STAGES, CommandConfig, CommandExecutor, Hook, VALIDATE_STAGE};
pub use docker::{DEFAULT_ENGINE, DockerConfig, DockerExecutor, EngineTls, HttpHealth, LABEL_PREFIX, PortSpec};
pub use federation::{FederationConfig, FederationExecutor, TokenRef, federation_key};
pub use local::{CONFIG_PREFIX, DEFAULT_PATH, EnvValue, SECRET_PREFIX};
pub use output::{LOG_LIMIT, RELAY_SECRETS_VARIABLE, relay_command, run_log_relay};
pub use process::{Handover, ProcessConfig, ProcessExecutor};
pub use sim::{SimConfig, SimExecutor};
pub use swarm::{SwarmConfig, SwarmExecutor, UpdatePolicy};
