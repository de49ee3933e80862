//! # deploy-executors
//!
//! Executors that plug into [`deploy_core::Orchestrator`]:
//! - [`ProcessExecutor`] (kind `process`): each target is a slot (a port, a working directory) where one version of a
//!   service runs as a local process; a new version is started, health-checked, and only then is the old one stopped
//!   (SIGTERM, then SIGKILL). It finds its processes again after a restart.
//! - [`CommandExecutor`] (kind `command`): the team's own hook scripts per lifecycle stage (stop, before install,
//!   install, after install, start, validate), with a timeout each; a failing hook fails its target with its output.
//! - [`SimExecutor`] (kind `sim`): simulated targets that keep their state on disk and fail on request, for demos,
//!   black-box tests and benchmarks.
//!
//! Put several behind a [`deploy_core::ExecutorRouter`] so one environment can mix them.

mod command;
mod local;
mod process;
mod sim;

pub use command::{APPLY_STAGES, CommandConfig, CommandExecutor, Hook, VALIDATE_STAGE};
pub use process::{Handover, ProcessConfig, ProcessExecutor};
pub use sim::{SimConfig, SimExecutor};
