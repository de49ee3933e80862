//! Conformance suites: plain `pub async fn`s over `&dyn Store` and `&dyn Executor` that any implementation can run in
//! its own tests. Each function panics, with what was expected, on the first violation of the trait's contract.
//!
//! ```no_run
//! # async fn t() {
//! let store = deploy_testkit::MemoryStore::new();
//! deploy_testkit::conformance::store::run_all(&store).await;
//! # }
//! ```

pub mod executor;
pub mod store;
