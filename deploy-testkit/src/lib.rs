//! # deploy-testkit
//!
//! Test doubles and contract checks for the deploy-* crates, for other teams as much as for us:
//!
//! - [`MemoryStore`]: a complete, correct [`Store`](deploy_core::Store) in memory.
//! - [`ScriptedExecutor`]: per target and version it can fail permanently, fail N times, turn unhealthy, be
//!   unreachable, be slow, hang, or crash after its side effect; it records every call.
//! - [`TestClock`]: time that moves with tokio's paused timers.
//! - [`SeededRng`]: random choices that replay exactly from a seed.
//! - [`faulty::FaultyStore`]: any store behind a switch that fails its calls or loses their answers.
//! - [`sim`]: a deterministic simulation of the engine under crashes, store faults and clock jumps, one seed a run.
//! - `mocks` (feature `mocks`): `mockall` mocks of the core traits.
//! - `strategies` (feature `proptest`): `proptest` strategies for requests, fleets and fault scripts.
//! - [`fixtures`]: builders and a ready-wired [`Harness`].
//! - [`conformance`]: suites any `Store` or `Executor` implementation can run.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread", start_paused = true)]
//! # async fn main() {
//! use deploy_core::ConcurrencyPolicy;
//! use deploy_testkit::{Harness, fixtures::request};
//! let h = Harness::new("prod", &[("web-1", Some("1.0")), ("web-2", Some("1.0"))], ConcurrencyPolicy::Queue).await;
//! let d = h.submit(request("prod", "web", "2.0")).await.unwrap();
//! h.settle().await;
//! assert_eq!(h.get(d.id()).await.status(), deploy_core::DeploymentStatus::Succeeded);
//! assert_eq!(h.executor.version_of("web-2").as_deref(), Some("2.0"));
//! # }
//! ```

mod clock;
mod composite;
pub mod conformance;
pub mod docker;
pub mod faulty;
pub mod fixtures;
mod memory;
#[cfg(feature = "mocks")]
pub mod mocks;
mod rng;
mod scripted;
pub mod sim;
#[cfg(feature = "proptest")]
pub mod strategies;

pub use clock::TestClock;
pub use composite::Composite;
pub use fixtures::Harness;
pub use memory::MemoryStore;
pub use rng::SeededRng;
pub use scripted::{Call, CallKind, Fault, Owner, ScriptedExecutor, misuses};
