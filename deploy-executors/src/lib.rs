//! # deploy-executors
//!
//! Executors that plug into [`deploy_core::Orchestrator`]. This release has [`SimExecutor`] (kind `sim`): simulated
//! targets that keep their state on disk and fail on request, for demos, black-box tests and benchmarks.

mod sim;

pub use sim::{SimConfig, SimExecutor};
