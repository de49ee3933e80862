//! [`ScriptedExecutor`]: a fault-injecting executor that records every call.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use async_trait::async_trait;
use deploy_core::{
    ApplyContext, Clock, DeploymentId, DesiredState, Executor, ExecutorError, Health, ImperativeStep, Observation,
    Outcome, Target, TargetId, Version,
};

/// A fault for a target (and optionally only for one version).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fault {
    /// Apply fails with a permanent error.
    FailPermanently,
    /// The first `n` applies fail with a retryable error, then it works.
    FailTimes(u32),
    /// Apply works, but the version never becomes healthy.
    Unhealthy,
    /// Apply works and the version is healthy for this long, then turns unhealthy (a canary that degrades).
    UnhealthyAfter(Duration),
    /// Every call answers "unreachable" (a network partition).
    Unreachable,
    /// The first `n` calls answer "unreachable", then it is reachable again (a partition that heals).
    UnreachableTimes(u32),
    /// Apply takes this long.
    Slow(Duration),
    /// Apply never returns.
    Hang,
    /// The first apply makes its change and then fails retryably, as a process that dies after its side effect.
    CrashAfterApply,
    /// This imperative step action fails permanently.
    FailStep(String),
    /// Every health probe takes this long to answer.
    SlowVerify(Duration),
    /// Once the version has been healthy for this long, health probes never answer (a probe that hangs).
    VerifyHangsAfter(Duration),
    /// Apply panics (an executor's bug).
    PanicOnApply,
}

/// One recorded call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Call {
    /// Which call.
    pub op: CallKind,
    /// The target.
    pub target: TargetId,
    /// The version involved (`None` for observe).
    pub version: Option<Version>,
}

/// Which [`Executor`] method a recorded [`Call`] was.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum CallKind {
    /// `observe`.
    Observe,
    /// `apply`.
    Apply,
    /// `verify`.
    Verify,
    /// `run_step`, with the step's action.
    Step(String),
}

impl CallKind {
    /// `run_step` of `action`.
    #[must_use]
    pub fn step(action: &str) -> Self {
        Self::Step(action.to_owned())
    }
}

impl std::fmt::Display for CallKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Observe => f.pad("observe"),
            Self::Apply => f.pad("apply"),
            Self::Verify => f.pad("verify"),
            Self::Step(action) => f.pad(&format!("step:{action}")),
        }
    }
}

#[derive(Debug, Default)]
struct State {
    actual: HashMap<TargetId, (Option<Version>, Health)>,
    healthy_since: HashMap<TargetId, deploy_core::Timestamp>,
    requested: HashMap<TargetId, Version>,
    faults: Vec<(TargetId, Option<Version>, Fault)>,
    applies: HashMap<(TargetId, Version), u32>,
    unreachable_calls: HashMap<TargetId, u32>,
    calls: Vec<Call>,
    /// The change in flight on each target: who makes it, and how to end it early.
    changing: HashMap<TargetId, InFlight>,
    next_change: u64,
    concurrent: usize,
    max_concurrent: usize,
    /// Changes ended early because another owner started one on the same target.
    preempted: Vec<(TargetId, Owner, Owner)>,
    /// The largest fencing token seen per target and deployment (tokens count per deployment), and the calls refused
    /// for carrying a smaller one.
    tokens: HashMap<(TargetId, DeploymentId), u64>,
    stale: Vec<(TargetId, u64, u64)>,
}

/// A fault-injecting [`Executor`] over registered targets.
///
/// It keeps each target's running version, applies the faults scripted for it, and records every call so tests can
/// assert what happened. It panics, naming itself, when misused: a call for a target that was never registered, or two
/// changes to one target at once (which the engine promises never to make).
///
/// ```
/// use std::time::Duration;
/// use deploy_testkit::{Fault, ScriptedExecutor, TestClock};
/// let executor = ScriptedExecutor::new("fleet", std::sync::Arc::new(TestClock::new()))
///     .with_target("web-1", Some("1.0"))
///     .with_target("web-2", Some("1.0"))
///     .with_fault("web-2", Some("2.0"), Fault::FailTimes(2));
/// assert_eq!(executor.version_of("web-1").as_deref(), Some("1.0"));
/// ```
pub struct ScriptedExecutor {
    name: String,
    clock: Arc<dyn Clock>,
    state: Mutex<State>,
}

impl std::fmt::Debug for ScriptedExecutor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ScriptedExecutor").field("name", &self.name).finish_non_exhaustive()
    }
}

fn tid(id: &str) -> TargetId {
    TargetId::new(id).unwrap_or_else(|e| misuse("ScriptedExecutor", &format!("bad target id: {e}")))
}

fn ver(v: &str) -> Version {
    Version::new(v).unwrap_or_else(|e| misuse("ScriptedExecutor", &format!("bad version: {e}")))
}

#[allow(clippy::panic)] // Misuse of a test double is a bug in the test; failing loudly is the point.
fn misuse(name: &str, what: &str) -> ! {
    panic!("{name}: {what}")
}

/// Every misuse any scripted executor saw, so a test can find panics that happened inside a spawned task.
static MISUSES: Mutex<Vec<String>> = Mutex::new(Vec::new());

/// The misuses (unregistered targets, concurrent changes to one target) reported so far in this process.
#[must_use]
pub fn misuses() -> Vec<String> {
    MISUSES.lock().unwrap_or_else(PoisonError::into_inner).clone()
}

fn report(name: &str, what: &str) -> ! {
    MISUSES.lock().unwrap_or_else(PoisonError::into_inner).push(format!("{name}: {what}"));
    misuse(name, what)
}

impl ScriptedExecutor {
    /// An executor named `name` (the name appears in its panics) with no targets.
    #[must_use]
    pub fn new(name: impl Into<String>, clock: Arc<dyn Clock>) -> Self {
        Self { name: name.into(), clock, state: Mutex::new(State::default()) }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Registers a target running `version` (or nothing), healthy.
    #[must_use]
    pub fn with_target(self, id: &str, version: Option<&str>) -> Self {
        self.add_target(id, version);
        self
    }

    /// Registers a target running `version` (or nothing), healthy.
    pub fn add_target(&self, id: &str, version: Option<&str>) {
        let health = if version.is_some() { Health::Healthy } else { Health::Unknown };
        self.lock().actual.insert(tid(id), (version.map(ver), health));
    }

    /// Scripts a fault for `target`, for every version or only `version`.
    #[must_use]
    pub fn with_fault(self, target: &str, version: Option<&str>, fault: Fault) -> Self {
        self.add_fault(target, version, fault);
        self
    }

    /// Scripts a fault for `target`, for every version or only `version`.
    pub fn add_fault(&self, target: &str, version: Option<&str>, fault: Fault) {
        self.lock().faults.push((tid(target), version.map(ver), fault));
    }

    /// Removes every fault of `target` (the partition heals, the bug is fixed).
    pub fn clear_faults(&self, target: &str) {
        let t = tid(target);
        self.lock().faults.retain(|(id, _, _)| *id != t);
    }

    /// The version `target` runs now.
    #[must_use]
    pub fn version_of(&self, target: &str) -> Option<String> {
        self.lock().actual.get(&tid(target)).and_then(|(v, _)| v.as_ref().map(ToString::to_string))
    }

    /// Every call so far, in order.
    #[must_use]
    pub fn calls(&self) -> Vec<Call> {
        self.lock().calls.clone()
    }

    /// How many times `op` was called on `target`.
    #[must_use]
    pub fn count(&self, op: CallKind, target: &str) -> usize {
        let t = tid(target);
        self.lock().calls.iter().filter(|c| c.op == op && c.target == t).count()
    }

    /// The most targets that were being changed at the same moment.
    #[must_use]
    pub fn max_concurrent_changes(&self) -> usize {
        self.lock().max_concurrent
    }

    fn fault_for(&self, state: &State, target: &TargetId, version: Option<&Version>) -> Vec<Fault> {
        state
            .faults
            .iter()
            .filter(|(t, v, _)| t == target && (v.is_none() || v.as_ref() == version))
            .map(|(_, _, f)| f.clone())
            .collect()
    }

    /// Refuses a change whose fencing token is smaller than one this target has seen from the same deployment (a
    /// controller that lost its lease; tokens grow per deployment), and remembers it; 0 (no lease behind the call) is
    /// never refused.
    fn check_token(&self, target: &Target, ctx: &ApplyContext<'_>) -> Result<(), ExecutorError> {
        let token = ctx.fencing_token;
        if token == 0 {
            return Ok(());
        }
        let mut st = self.lock();
        let key = (target.id.clone(), ctx.deployment);
        let seen = st.tokens.get(&key).copied().unwrap_or(0);
        if token < seen {
            st.stale.push((target.id.clone(), token, seen));
            return Err(ExecutorError::permanent(format!(
                "{}: stale fencing token {token} (a newer controller holds {seen})",
                target.id
            )));
        }
        st.tokens.insert(key, token);
        Ok(())
    }

    /// Changes refused for a stale fencing token: (target, its token, the larger one seen before). A scenario in which
    /// a controller kept working after losing its lease shows here.
    #[must_use]
    pub fn stale_calls(&self) -> Vec<(TargetId, u64, u64)> {
        self.lock().stale.clone()
    }

    fn record(&self, op: CallKind, target: &Target, version: Option<&Version>) -> State2 {
        let mut st = self.lock();
        if !st.actual.contains_key(&target.id) {
            report(&self.name, &format!("{op} called for unregistered target {}", target.id));
        }
        st.calls.push(Call { op, target: target.id.clone(), version: version.cloned() });
        let requested = st.requested.get(&target.id).cloned();
        let faults = self.fault_for(&st, &target.id, version.or(requested.as_ref()));
        let mut unreachable = faults.contains(&Fault::Unreachable);
        if let Some(n) = faults.iter().find_map(|f| if let Fault::UnreachableTimes(n) = f { Some(*n) } else { None }) {
            let seen = st.unreachable_calls.entry(target.id.clone()).or_insert(0);
            *seen += 1;
            unreachable |= *seen <= n;
        }
        State2 { faults, unreachable }
    }

    /// Starts a change on `target` for `owner`. A change in flight there for another owner is ended first (it fails
    /// without taking effect), as the `command` executor ends a previous owner's leftover hook: a controller that
    /// started a call before it lost its lease does not run on beside its successor. Two changes at once for the same
    /// owner are a bug in the engine, and a misuse.
    fn begin_change(&self, target: &TargetId, owner: Owner) -> (u64, Arc<tokio::sync::Notify>) {
        let mut st = self.lock();
        st.next_change += 1;
        let id = st.next_change;
        let stop = Arc::new(tokio::sync::Notify::new());
        let previous = st.changing.insert(target.clone(), InFlight { id, owner, stop: Arc::clone(&stop) });
        match previous {
            Some(p) if p.owner == owner => {
                drop(st);
                report(&self.name, &format!("two changes to target {target} at once"));
            }
            Some(p) => {
                p.stop.notify_one();
                st.preempted.push((target.clone(), p.owner, owner));
            }
            None => {
                st.concurrent += 1;
                st.max_concurrent = st.max_concurrent.max(st.concurrent);
            }
        }
        (id, stop)
    }

    fn end_change(&self, target: &TargetId, id: u64) {
        let mut st = self.lock();
        if st.changing.get(target).is_some_and(|c| c.id == id) {
            st.changing.remove(target);
            st.concurrent = st.concurrent.saturating_sub(1);
        }
    }

    /// Changes in flight now, on every target.
    #[must_use]
    pub fn changes_in_flight(&self) -> usize {
        self.lock().concurrent
    }

    /// Changes ended early because another owner started one on the same target: (target, the owner it was ended
    /// for, the owner that started the new one). A controller that kept a call running after losing its lease shows
    /// here.
    #[must_use]
    pub fn preempted(&self) -> Vec<(TargetId, Owner, Owner)> {
        self.lock().preempted.clone()
    }

    fn set_running(&self, target: &TargetId, version: &Version, faults: &[Fault]) {
        let health = if faults.contains(&Fault::Unhealthy) { Health::Unhealthy } else { Health::Healthy };
        let now = self.clock.now();
        let mut st = self.lock();
        st.actual.insert(target.clone(), (Some(version.clone()), health));
        st.healthy_since.insert(target.clone(), now);
    }

    async fn change(
        &self,
        target: &Target,
        version: &Version,
        st: &State2,
        stop: &tokio::sync::Notify,
    ) -> Result<(), ExecutorError> {
        let work = async {
            for f in &st.faults {
                match f {
                    Fault::Slow(d) => self.clock.sleep(*d).await,
                    Fault::Hang => futures::future::pending::<()>().await,
                    _ => {}
                }
            }
        };
        tokio::select! {
            () = work => {}
            () = stop.notified() => {
                return Err(ExecutorError::permanent(format!("{}: ended: another owner changes this target", target.id)));
            }
        }
        if st.faults.contains(&Fault::PanicOnApply) {
            #[allow(clippy::panic)] // The fault asked for: an executor with a bug.
            {
                panic!("{}: the scripted executor was told to panic", target.id);
            }
        }
        if st.faults.contains(&Fault::FailPermanently) {
            return Err(ExecutorError::permanent(format!("{}: {version} refused by {}", target.id, self.name)));
        }
        let attempt = {
            let mut s = self.lock();
            let n = s.applies.entry((target.id.clone(), version.clone())).or_insert(0);
            *n += 1;
            *n
        };
        if let Some(n) = st.faults.iter().find_map(|f| if let Fault::FailTimes(n) = f { Some(*n) } else { None })
            && attempt <= n
        {
            return Err(ExecutorError::retryable(format!("{}: transient failure {attempt} of {n}", target.id)));
        }
        self.set_running(&target.id, version, &st.faults);
        if st.faults.contains(&Fault::CrashAfterApply) && attempt == 1 {
            return Err(ExecutorError::retryable(format!("{}: connection lost after the change was made", target.id)));
        }
        Ok(())
    }
}

struct State2 {
    faults: Vec<Fault>,
    unreachable: bool,
}

#[async_trait]
impl Executor for ScriptedExecutor {
    async fn observe(&self, target: &Target, _: Option<&DesiredState>) -> Result<Observation, ExecutorError> {
        let st = self.record(CallKind::Observe, target, None);
        if st.unreachable {
            return Err(ExecutorError::unreachable(format!("{}: no route to host", target.id)));
        }
        let (version, health) = self.lock().actual.get(&target.id).cloned().unwrap_or((None, Health::Unknown));
        Ok(Observation { version, health })
    }

    async fn apply(&self, target: &Target, ctx: ApplyContext<'_>) -> Result<Outcome, ExecutorError> {
        let version = &ctx.desired.version;
        self.check_token(target, &ctx)?;
        let st = self.record(CallKind::Apply, target, Some(version));
        self.lock().requested.insert(target.id.clone(), version.clone());
        if st.unreachable {
            return Err(ExecutorError::unreachable(format!("{}: no route to host", target.id)));
        }
        let (id, stop) = self.begin_change(&target.id, (ctx.deployment, ctx.fencing_token));
        let guard = ChangeGuard { executor: self, target: &target.id, id };
        let result = self.change(target, version, &st, &stop).await;
        drop(guard);
        result.map(|()| Outcome::quiet())
    }

    async fn verify(&self, target: &Target, desired: &DesiredState) -> Result<Health, ExecutorError> {
        let st = self.record(CallKind::Verify, target, Some(&desired.version));
        if st.unreachable {
            return Err(ExecutorError::unreachable(format!("{}: no route to host", target.id)));
        }
        let now = self.clock.now();
        let (health, hangs) = {
            let s = self.lock();
            let (version, mut health) = s.actual.get(&target.id).cloned().unwrap_or((None, Health::Unknown));
            let since = s.healthy_since.get(&target.id).copied().unwrap_or(now);
            let healthy_for = deploy_core::elapsed_between(since, now);
            if version.as_ref() != Some(&desired.version) {
                health = Health::Unhealthy;
            }
            let mut hangs = false;
            for f in &st.faults {
                match f {
                    Fault::UnhealthyAfter(d) if healthy_for >= *d => health = Health::Unhealthy,
                    Fault::VerifyHangsAfter(d) if healthy_for >= *d => hangs = true,
                    _ => {}
                }
            }
            (health, hangs)
        };
        if hangs {
            futures::future::pending::<()>().await;
        }
        for f in &st.faults {
            if let Fault::SlowVerify(d) = f {
                self.clock.sleep(*d).await;
            }
        }
        Ok(health)
    }

    async fn run_step(
        &self,
        target: &Target,
        step: &ImperativeStep,
        ctx: ApplyContext<'_>,
    ) -> Result<Outcome, ExecutorError> {
        let version = &ctx.desired.version;
        self.check_token(target, &ctx)?;
        let st = self.record(CallKind::step(&step.action), target, Some(version));
        self.lock().requested.insert(target.id.clone(), version.clone());
        if st.unreachable {
            return Err(ExecutorError::unreachable(format!("{}: no route to host", target.id)));
        }
        if st.faults.iter().any(|f| matches!(f, Fault::FailStep(a) if *a == step.action)) {
            return Err(ExecutorError::permanent(format!("step {} exited with status 1", step.action)));
        }
        let (id, stop) = self.begin_change(&target.id, (ctx.deployment, ctx.fencing_token));
        let guard = ChangeGuard { executor: self, target: &target.id, id };
        let result = match step.action.as_str() {
            "stop" => {
                if let Some(entry) = self.lock().actual.get_mut(&target.id) {
                    entry.1 = Health::Unknown;
                }
                Ok(Outcome::with_output("stopped"))
            }
            "fetch" => Ok(Outcome::with_output(format!("fetched {version}"))),
            "start" => {
                let started = self.change(target, version, &st, &stop).await;
                started.map(|()| Outcome::with_output(format!("started {version}")))
            }
            other => Err(ExecutorError::permanent(format!("unknown step action {other:?}"))),
        };
        drop(guard);
        result
    }
}

/// Ends a change even when the apply future is dropped half-way (a cancelled or timed-out call).
struct ChangeGuard<'a> {
    executor: &'a ScriptedExecutor,
    target: &'a TargetId,
    id: u64,
}

impl Drop for ChangeGuard<'_> {
    fn drop(&mut self) {
        self.executor.end_change(self.target, self.id);
    }
}

/// Who makes a change: the deployment and the fencing token of the lease behind the call.
pub type Owner = (DeploymentId, u64);

/// A change in flight on a target.
#[derive(Debug)]
struct InFlight {
    id: u64,
    owner: Owner,
    stop: Arc<tokio::sync::Notify>,
}
