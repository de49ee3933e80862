//! An executor for a pretend cloud, written as a team outside this repository would write one: against the public
//! traits of `deploy-core` only. Its tests (`tests/sdk.rs`) run both conformance suites of `deploy-testkit` and embed
//! the orchestrator on SQLite through a crash and a resume, with requests built from types alone.
//!
//! The pretend cloud keeps one record per "instance" (a target) in memory: the image version it runs. An instance
//! whose configuration says `{"zone": "down"}` cannot be reached; one whose configuration names a missing image
//! (`{"image": "missing"}`) refuses every install.
//!
//! ```
//! use std::sync::Arc;
//! use deploy_core::{ExecutorRouter, Executor};
//! use example_sdk::PretendCloud;
//! let cloud = Arc::new(PretendCloud::default());
//! let router = ExecutorRouter::new().with("pretend-cloud", cloud);
//! assert_eq!(router.kinds(), Some(vec!["pretend-cloud".to_owned()]));
//! ```

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Duration;

use deploy_core::{
    ApplyContext, DesiredState, Executor, ExecutorError, Health, Observation, Outcome, Target, TargetId, Version,
    async_trait,
};

/// The kind environments name for this executor's targets.
pub const KIND: &str = "pretend-cloud";

/// The pretend cloud's API, as an executor. Cheap to share; every clone of an `Arc` of it sees the same instances.
#[derive(Debug, Default)]
pub struct PretendCloud {
    instances: Mutex<BTreeMap<TargetId, Version>>,
    /// How long an install takes.
    pub install_time: Duration,
}

impl PretendCloud {
    /// A cloud whose installs take `install_time`.
    #[must_use]
    pub fn new(install_time: Duration) -> Self {
        Self { instances: Mutex::default(), install_time }
    }

    /// The version an instance runs, if any.
    #[must_use]
    pub fn running(&self, instance: &TargetId) -> Option<Version> {
        self.instances.lock().ok()?.get(instance).cloned()
    }

    fn reach(target: &Target) -> Result<(), ExecutorError> {
        if target.config.get("zone").and_then(|z| z.as_str()) == Some("down") {
            return Err(ExecutorError::unreachable(format!("instance {}: its zone does not answer", target.id)));
        }
        Ok(())
    }
}

#[async_trait]
impl Executor for PretendCloud {
    async fn observe(&self, target: &Target, _wanted: Option<&DesiredState>) -> Result<Observation, ExecutorError> {
        Self::reach(target)?;
        let version = self.running(&target.id);
        let health = if version.is_some() { Health::Healthy } else { Health::Unknown };
        Ok(Observation { version, health })
    }

    async fn apply(&self, target: &Target, ctx: ApplyContext<'_>) -> Result<Outcome, ExecutorError> {
        Self::reach(target)?;
        if target.config.get("image").and_then(|i| i.as_str()) == Some("missing") {
            return Err(ExecutorError::permanent(format!("instance {}: the image does not exist", target.id)));
        }
        // The install happens at the end, all at once: an apply dropped half-way changed nothing, and applying again
        // completes it.
        tokio::time::sleep(self.install_time).await;
        let mut instances = self.instances.lock().map_err(|_| ExecutorError::permanent("cloud state poisoned"))?;
        let previous = instances.insert(target.id.clone(), ctx.desired.version.clone());
        Ok(match previous {
            Some(p) if p == ctx.desired.version => Outcome::quiet(),
            Some(p) => Outcome::with_output(format!("replaced image {p} with {}", ctx.desired.version)),
            None => Outcome::with_output(format!("installed image {}", ctx.desired.version)),
        })
    }

    async fn verify(&self, target: &Target, desired: &DesiredState) -> Result<Health, ExecutorError> {
        Self::reach(target)?;
        // Healthy only for the version that runs.
        Ok(if self.running(&target.id).as_ref() == Some(&desired.version) {
            Health::Healthy
        } else {
            Health::Unhealthy
        })
    }
}
