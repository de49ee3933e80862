//! Driving one claimed deployment: batches, verification, failure policy, rollback, cancel and supersede.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use futures::FutureExt;
use futures::future::BoxFuture;
use futures::stream::{FuturesUnordered, StreamExt};
use tracing::Instrument;

use super::Shared;
use super::controller::ShutdownSignal;
use super::retry::{CallError, RetryPolicy, caught};
use super::rollout::{self, Batch};
use crate::clock::{add, elapsed_between};
use crate::deployment::{
    Deployment, DeploymentStatus, ProgressUpdate, StatusChange, TargetObservation, TargetProgress, TargetStatus,
};
use crate::environment::Environment;
use crate::event::NewEvent;
use crate::executor::{ApplyContext, Executor, ExecutorError, Target};
use crate::names::TargetId;
use crate::secrets::ResolvedSecrets;
use crate::spec::{ExecutionMode, OnFailure, RolloutStrategy, UnreachableAction};
use crate::state::{ActualState, DesiredState, Health, Observation};
use crate::store::{Claim, Control, Lease, StoreError};

/// Why driving stopped before a terminal status.
#[derive(Debug)]
enum Abort {
    /// Another controller holds the deployment now, or it was finished elsewhere.
    LostLease,
    /// This controller is shutting down.
    Shutdown,
    /// The store failed; the lease will lapse and the work resumes.
    Store(StoreError),
}

impl From<StoreError> for Abort {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::StaleToken { .. } | StoreError::AlreadyFinished { .. } => Self::LostLease,
            other => Self::Store(other),
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The holder's view of its deployment: a mirror of the stored record kept in step with every write.
///
/// Target changes are buffered and written together (group commit), which turns the thousands of small writes of a
/// large batch into a few transactions. One rule orders them: a batch's *intents* (each target about to change, with
/// what it ran before) are flushed before any of its targets is touched, so a successor that resumes after a crash knows
/// what to restore. *Results* (verifying, succeeded, failed, a step's output) go out with the next write or when the
/// runner next waits; losing them in a crash only means the successor re-applies (idempotently) and re-verifies.
struct Recorder<'a> {
    shared: &'a Shared,
    lease: Mutex<Lease>,
    /// Until when the lease is known to be held, on both clocks; see [`Recorder::fence`].
    valid: tokio::sync::watch::Sender<Validity>,
    /// Asks the renewal task to renew now (a call found too little of the lease left).
    renew_now: tokio::sync::Notify,
    local: Mutex<Deployment>,
    control: Mutex<Control>,
    buffered: Mutex<Option<ProgressUpdate>>,
    /// Signalled when a result is buffered while the runner waits, so it is written promptly.
    result_waiting: tokio::sync::Notify,
}

impl<'a> Recorder<'a> {
    fn new(shared: &'a Shared, lease: Lease, deployment: Deployment) -> Self {
        let control =
            Control { cancel_requested: deployment.cancel_requested(), superseded_by: deployment.superseded_by() };
        let valid = tokio::sync::watch::Sender::new(Validity::of(shared, &lease));
        Self {
            shared,
            lease: Mutex::new(lease),
            valid,
            renew_now: tokio::sync::Notify::new(),
            local: Mutex::new(deployment),
            control: Mutex::new(control),
            buffered: Mutex::new(None),
            result_waiting: tokio::sync::Notify::new(),
        }
    }

    /// Returns once the lease is known to be held for at least the safety margin (a third of the lease) on the
    /// monotonic clock *and* on the wall clock the store and other replicas judge expiry by. Called before every
    /// executor call: a controller that was paused (SIGSTOP, a long GC, a frozen VM) or cut off past its lease must not
    /// start work on a target another controller may own by now. When the margin is short it asks for a renewal and
    /// waits; a refused renewal ends the whole run (the renewal task returns `LostLease`, and the runner's future,
    /// this wait included, is dropped), so no call is made. The remaining window: a call that starts with the margin
    /// left runs on after the lease lapses if it takes longer than the margin (executors that can should refuse
    /// stale fencing tokens: [`ApplyContext::fencing_token`]), plus the clock skew between replicas.
    /// Returns the fencing token of the lease it found held, for the call about to be made.
    async fn fence(&self) -> u64 {
        let margin = self.shared.config.lease / 3;
        let mut valid = self.valid.subscribe();
        loop {
            let held = valid.borrow_and_update().holds_for(self.shared, margin);
            if held {
                return lock(&self.lease).token;
            }
            self.renew_now.notify_one();
            if valid.changed().await.is_err() {
                // The renewal task is gone: the run is ending.
                std::future::pending::<()>().await;
            }
        }
    }

    fn merge(&self, c: Control) {
        let mut mine = lock(&self.control);
        mine.cancel_requested |= c.cancel_requested;
        if c.superseded_by.is_some() {
            mine.superseded_by = c.superseded_by;
        }
    }

    /// Applies `update` to the mirror, refusing what the record does not allow.
    fn mirror(&self, update: &ProgressUpdate) -> Result<(), Abort> {
        lock(&self.local).apply(update).map_err(|e| {
            tracing::error!(error = %e, "refusing an update the record does not allow");
            Abort::Store(StoreError::Update(e))
        })
    }

    /// Writes `update` now, together with every buffered result before it.
    async fn write(&self, update: ProgressUpdate) -> Result<(), Abort> {
        self.mirror(&update)?;
        let combined = match lock(&self.buffered).take() {
            Some(mut earlier) => {
                merge(&mut earlier, update);
                earlier
            }
            None => update,
        };
        self.send(combined).await
    }

    /// Writes the buffered results, if any.
    async fn flush(&self) -> Result<(), Abort> {
        let pending = lock(&self.buffered).take();
        match pending {
            Some(update) => self.send(update).await,
            None => Ok(()),
        }
    }

    async fn send(&self, update: ProgressUpdate) -> Result<(), Abort> {
        let lease = lock(&self.lease).clone();
        let observed = self.shared.observer.as_ref().map(|o| (Arc::clone(o), update.clone()));
        let control = self.shared.store.record(&lease, update).await?;
        if let Some((observer, update)) = observed {
            observer.recorded(lease.deployment, &update);
        }
        self.merge(control);
        self.shared.poke();
        Ok(())
    }

    fn now(&self) -> crate::clock::Timestamp {
        self.shared.clock.now()
    }

    fn target(&self, index: usize) -> Option<TargetProgress> {
        lock(&self.local).targets().get(index).cloned()
    }

    fn with<R>(&self, f: impl FnOnce(&Deployment) -> R) -> R {
        f(&lock(&self.local))
    }

    /// Mirrors a target's new entry, then appends it with its event and observation to `update`.
    fn push_target(
        &self,
        update: &mut ProgressUpdate,
        index: usize,
        entry: TargetProgress,
        message: String,
        observation: Option<TargetObservation>,
    ) -> Result<(), Abort> {
        // Every caller stamps the entry; the event carries the same time.
        let now = entry.updated_at;
        let progressed = entry.status.is_settled();
        lock(&self.local).apply_target(index, &entry, now, progressed).map_err(|e| {
            tracing::error!(error = %e, "refusing an update the record does not allow");
            Abort::Store(StoreError::Update(e))
        })?;
        update.events.push(NewEvent::target(now, entry.id.clone(), entry.status, message));
        update.targets.push((index, entry));
        update.observations.extend(observation);
        update.now = Some(now);
        update.progressed |= progressed;
        Ok(())
    }

    /// Records a target's change: buffered, written with the next write, when the runner next waits, or at the
    /// barrier between a batch's two phases (intents must be durable before any target of the batch is touched).
    fn result(
        &self,
        index: usize,
        entry: TargetProgress,
        message: String,
        observation: Option<TargetObservation>,
    ) -> Result<(), Abort> {
        // Operators follow targets in the log too; the message was scrubbed of the call's secrets already.
        tracing::debug!(target_id = %entry.id, status = ?entry.status, "{message}");
        let first = {
            let mut slot = lock(&self.buffered);
            let first = slot.is_none();
            let update = slot.get_or_insert_with(ProgressUpdate::default);
            self.push_target(update, index, entry, message, observation)?;
            first
        };
        if first {
            self.result_waiting.notify_one();
        }
        Ok(())
    }

    async fn set_status(&self, status: DeploymentStatus, reason: String) -> Result<(), Abort> {
        let now = self.now();
        self.write(self.status_update(status, reason, now)).await
    }

    /// The write of a status change, with its event.
    fn status_update(&self, status: DeploymentStatus, reason: String, now: crate::clock::Timestamp) -> ProgressUpdate {
        ProgressUpdate {
            now: Some(now),
            status: Some(StatusChange { status, reason: Some(reason.clone()) }),
            events: vec![NewEvent::deployment(now, status, reason)],
            // Starting and starting to roll back both restart the progress clock: each phase gets the whole deadline.
            progressed: matches!(status, DeploymentStatus::InProgress | DeploymentStatus::RollingBack),
            ..ProgressUpdate::default()
        }
    }

    /// Why the deployment must stop now, if it must.
    fn stop_reason(&self) -> Option<(DeploymentStatus, String)> {
        let c = *lock(&self.control);
        if let Some(by) = c.superseded_by {
            Some((DeploymentStatus::Superseded, format!("superseded by deployment {by}")))
        } else if c.cancel_requested {
            Some((DeploymentStatus::Cancelled, "cancelled on request".to_owned()))
        } else {
            None
        }
    }
}

/// Appends `later` to `earlier`, so both are written in one transaction, in order.
fn merge(earlier: &mut ProgressUpdate, later: ProgressUpdate) {
    if later.now.is_some() {
        earlier.now = later.now;
    }
    if later.status.is_some() {
        earlier.status = later.status;
    }
    earlier.targets.extend(later.targets);
    earlier.events.extend(later.events);
    earlier.observations.extend(later.observations);
    earlier.progressed |= later.progressed;
}

/// Drives a claimed deployment until it is terminal, its lease is lost, or `shutdown` fires.
pub(super) async fn drive(shared: Arc<Shared>, claim: Claim, mut shutdown: ShutdownSignal) {
    let id = claim.deployment.id();
    let span = tracing::info_span!("deployment", deployment_id = %id, environment = %claim.deployment.environment());
    async move {
        let rec = Recorder::new(&shared, claim.lease, claim.deployment);
        let outcome = tokio::select! {
            r = run(&rec) => r,
            abort = renew(&rec) => Err(abort),
            () = shutdown.fired() => Err(Abort::Shutdown),
        };
        let lease = lock(&rec.lease).clone();
        match outcome {
            Ok(()) => {
                let _ = shared.store.release(&lease).await;
            }
            Err(Abort::Shutdown) => {
                tracing::info!("shutting down; releasing the lease so the deployment resumes elsewhere");
                if let Err(e) = shared.store.release(&lease).await {
                    tracing::warn!(error = %e, "could not release the lease; it will lapse");
                }
            }
            Err(Abort::LostLease) => tracing::warn!("lost the lease; another controller drives this deployment"),
            Err(Abort::Store(e)) => {
                tracing::warn!(error = %e, "store failed; the deployment resumes when the lease lapses");
            }
        }
        shared.poke();
    }
    .instrument(span)
    .await;
}

async fn renew(rec: &Recorder<'_>) -> Abort {
    let shared = rec.shared;
    let mut failed = false;
    loop {
        if failed {
            // A failed renewal is tried again soon, whether or not a call is waiting for it.
            shared.clock.sleep(shared.config.lease / 10).await;
        } else {
            tokio::select! {
                () = shared.clock.sleep(shared.config.lease / 3) => {}
                () = rec.renew_now.notified() => {}
            }
        }
        // Measured from before the request: the lease is held for no longer than this from the monotonic clock's view.
        let asked_at = tokio::time::Instant::now();
        let lease = lock(&rec.lease).clone();
        match shared.store.renew(&lease, shared.clock.now(), shared.config.lease).await {
            Ok((renewed, control)) => {
                failed = false;
                let validity = Validity::renewed(asked_at, shared, &renewed);
                *lock(&rec.lease) = renewed;
                rec.valid.send_replace(validity);
                rec.merge(control);
            }
            Err(
                e @ (StoreError::StaleToken { .. } | StoreError::AlreadyFinished { .. } | StoreError::NotFound { .. }),
            ) => {
                tracing::warn!(error = %e, "lease renewal refused");
                return Abort::LostLease;
            }
            Err(e) => {
                failed = true;
                // Cut off from the store (a partition, an outage): when the lease would lapse before the next try, on
                // this process's own monotonic clock, the work in flight stops now (the run's future is dropped, and
                // with it every executor call, which ends the hooks they ran). Another replica may claim the
                // deployment only once the store's clock has passed the expiry, which is no sooner: the lease was
                // counted from before the last successful renewal was sent.
                if !rec.valid.borrow().holds_for(shared, shared.config.lease / 10) {
                    tracing::warn!(error = %e, "the lease lapses before the store can be reached again; stopping the work");
                    return Abort::LostLease;
                }
                tracing::warn!(error = %e, "lease renewal failed; trying again");
            }
        }
    }
}

/// Until when a lease is known to be held: on the monotonic clock (which counts time this process was paused) and on
/// the wall clock (which other replicas judge expiry by, and which tests jump).
#[derive(Debug, Clone, Copy)]
struct Validity {
    monotonic: tokio::time::Instant,
    wall: crate::clock::Timestamp,
}

impl Validity {
    /// A lease just claimed: as long as its expiry leaves from now.
    fn of(shared: &Shared, lease: &Lease) -> Self {
        let left = elapsed_between(shared.clock.now(), lease.expires_at);
        Self { monotonic: tokio::time::Instant::now() + left, wall: lease.expires_at }
    }

    /// A lease renewed by a request sent at `asked_at`.
    fn renewed(asked_at: tokio::time::Instant, shared: &Shared, lease: &Lease) -> Self {
        Self { monotonic: asked_at + shared.config.lease, wall: lease.expires_at }
    }

    /// Whether at least `margin` of the lease is left on both clocks.
    fn holds_for(&self, shared: &Shared, margin: Duration) -> bool {
        let mono_left = self.monotonic.saturating_duration_since(tokio::time::Instant::now());
        let wall_left = elapsed_between(shared.clock.now(), self.wall);
        mono_left >= margin && wall_left >= margin
    }
}

/// Everything a target task needs, borrowed from the runner.
struct Plan<'a> {
    rec: &'a Recorder<'a>,
    environment: Environment,
    /// For each target of the deployment, its position in the environment.
    env_index: Vec<Option<usize>>,
    /// The spec never changes while a deployment runs; one shared copy saves a clone per target.
    spec: Arc<crate::spec::DeploymentSpec>,
    deployment_id: crate::names::DeploymentId,
    /// The desired state at the spec's own version, shared by every target that goes there.
    desired: Arc<DesiredState>,
    /// For each target of the deployment still in the environment: what the executor sees of it, and the executor
    /// that serves it, resolved once here (an unknown kind resolves to an executor that refuses every call).
    routes: Vec<Option<(Target, Arc<dyn Executor>)>>,
}

impl Plan<'_> {
    fn desired(&self, version: &crate::names::Version) -> Arc<DesiredState> {
        if &self.desired.version == version {
            Arc::clone(&self.desired)
        } else {
            Arc::new(DesiredState::from_spec(&self.spec, version))
        }
    }
}

async fn run(rec: &Recorder<'_>) -> Result<(), Abort> {
    let (status, env_name) = rec.with(|d| (d.status(), d.environment().clone()));
    if status.is_terminal() {
        return Ok(());
    }
    let environment = rec.shared.store.get_environment(&env_name).await?;
    let env_index = rec.with(|d| align(d, &environment));
    let (spec, deployment_id) = rec.with(|d| (Arc::new(d.spec().clone()), d.id()));
    let desired = Arc::new(DesiredState::from_spec(&spec, spec.version()));
    let routes = env_index
        .iter()
        .map(|i| {
            let t = i.and_then(|i| environment.targets.get(i))?;
            let target = Target::of(&environment.name, t);
            let executor = rec.shared.executors.resolve(&target).unwrap_or_else(|e| Arc::new(Unrouted(e)));
            Some((target, executor))
        })
        .collect();
    let plan = Plan { rec, environment, env_index, spec, deployment_id, desired, routes };
    match status {
        DeploymentStatus::Queued => {
            if let Some((stop, reason)) = rec.stop_reason() {
                return stop_now(rec, stop, reason).await;
            }
            let (total, strategy) = rec.with(|d| (d.targets().len(), describe(d.spec().strategy())));
            let reason = format!("started by {}: {total} target(s), {strategy}", rec.shared.config.owner);
            let now = rec.now();
            let mut start = rec.status_update(DeploymentStatus::InProgress, reason, now);
            start.targets = rec.with(|d| refreshed_from_versions(d, &plan.environment, &plan.env_index, now));
            rec.write(start).await?;
        }
        DeploymentStatus::RollingBack => return rollback(&plan, None).await,
        _ => {
            // The progress deadline measures progress under a live controller: time the deployment spent orphaned
            // (its controller crashed, the lease had to lapse) does not count against it.
            tracing::info!("resuming from stored progress");
            let now = rec.now();
            let reason = format!("resumed by {} from stored progress", rec.shared.config.owner);
            let events = vec![NewEvent::deployment(now, status, reason)];
            rec.write(ProgressUpdate { now: Some(now), progressed: true, events, ..ProgressUpdate::default() }).await?;
        }
    }
    roll_out(&plan).await
}

/// The pending targets whose `from_version` the environment now contradicts, corrected. A deployment's targets are
/// drafted at acceptance from the environment's actual state as the accepting replica knew it; by the time it starts,
/// the deployments queued before it (or another replica's writes that snapshot missed) may have changed them. A
/// target that is reached later takes its `from_version` from its own observation; one that never is (cancelled,
/// skipped by a stop) keeps this one, which is what it ran when the deployment started.
fn refreshed_from_versions(
    d: &Deployment,
    env: &Environment,
    env_index: &[Option<usize>],
    now: crate::clock::Timestamp,
) -> Vec<(usize, TargetProgress)> {
    let mut out = Vec::new();
    for (i, t) in d.targets().iter().enumerate() {
        if t.status != TargetStatus::Pending {
            continue;
        }
        let Some(actual) = env_index.get(i).copied().flatten().and_then(|j| env.targets.get(j)) else { continue };
        let version = actual.actual.as_ref().and_then(|a| a.version.clone());
        if version != t.from_version {
            let mut fresh = t.clone();
            fresh.from_version = version;
            fresh.updated_at = now;
            out.push((i, fresh));
        }
    }
    out
}

fn describe(strategy: &RolloutStrategy) -> String {
    match strategy {
        RolloutStrategy::AllAtOnce => "all at once".to_owned(),
        RolloutStrategy::Rolling { batch_size, .. } => format!("rolling {batch_size} at a time"),
        RolloutStrategy::Canary { steps } => {
            let p: Vec<String> = steps.iter().map(|s| format!("{}%", s.percent)).collect();
            format!("canary {}", p.join(" → "))
        }
    }
}

async fn roll_out(plan: &Plan<'_>) -> Result<(), Abort> {
    let rec = plan.rec;
    let spec = plan.spec.as_ref();
    let total = rec.with(|d| d.targets().len());
    let batches = rollout::batches(spec.strategy(), total);
    let is_canary = matches!(spec.strategy(), RolloutStrategy::Canary { .. });
    let pause = match spec.strategy() {
        RolloutStrategy::Rolling { pause, .. } => pause.as_std(),
        _ => Duration::ZERO,
    };
    let max_failed = spec.failure().max_failed.of_rounding_down(total) as u64;
    let unreachable_then = spec.on_unreachable().then;

    for (n, batch) in batches.iter().enumerate() {
        if let Some((stop, reason)) = rec.stop_reason() {
            return stop_now(rec, stop, reason).await;
        }
        let todo: Vec<usize> = batch
            .targets
            .clone()
            .filter(|&i| rec.with(|d| d.targets().get(i).is_some_and(|t| !t.status.is_settled())))
            .collect();
        let deadline_hit = if todo.is_empty() { false } else { roll_batch(plan, todo).await? };

        let s = rec.with(|d| *d.summary());
        let counted = s.failed + if unreachable_then == UnreachableAction::Fail { s.unreachable } else { 0 };
        let unreachable_rollback = unreachable_then == UnreachableAction::Rollback && s.unreachable > 0;
        let mut failure = if deadline_hit {
            Some(format!("no target made progress for {} (progress deadline)", spec.progress_deadline()))
        } else if unreachable_rollback {
            Some(format!("{} target(s) unreachable and on_unreachable is rollback", s.unreachable))
        } else if counted > max_failed {
            Some(format!("{counted} of {total} targets failed (max_failed {})", spec.failure().max_failed))
        } else if is_canary && counted > 0 {
            Some(format!("canary step {} of {} failed on {counted} target(s)", n + 1, batches.len()))
        } else {
            None
        };
        if failure.is_none()
            && let Some(watch_for) = batch.watch_for
        {
            failure = watch_canary(plan, batch, watch_for).await?;
        }
        if let Some(reason) = failure {
            let wants_rollback = is_canary || unreachable_rollback || spec.failure().on_failure == OnFailure::Rollback;
            return fail(plan, reason, wants_rollback).await;
        }
        if !pause.is_zero() && n + 1 < batches.len() {
            pause_between_batches(rec, pause).await;
        }
    }

    let s = rec.with(|d| *d.summary());
    let (status, reason) = if s.failed == 0 && s.unreachable == 0 {
        (
            DeploymentStatus::Succeeded,
            format!("{} of {} target(s) verified, {} already up to date", s.succeeded, s.total, s.skipped),
        )
    } else {
        (
            DeploymentStatus::Degraded,
            format!(
                "{} of {} target(s) failed, {} unreachable (max_failed {})",
                s.failed,
                s.total,
                s.unreachable,
                spec.failure().max_failed
            ),
        )
    };
    rec.set_status(status, reason).await
}

/// Observes every target of a batch and stages what must change; writes all intents in one transaction; then
/// changes and verifies them. Returns whether the progress deadline was hit.
async fn roll_batch(plan: &Plan<'_>, todo: Vec<usize>) -> Result<bool, Abort> {
    if run_bounded(plan, todo.clone(), |i| prepare_target(plan, i).boxed()).await? {
        return Ok(true);
    }
    // The barrier of the write-ahead rule: nothing is touched before its intent is durable.
    plan.rec.flush().await?;
    let changing: Vec<usize> = todo
        .into_iter()
        .filter(|&i| plan.rec.with(|d| d.targets().get(i).is_some_and(|t| t.status == TargetStatus::InProgress)))
        .collect();
    if changing.is_empty() {
        return Ok(false);
    }
    run_bounded(plan, changing, |i| change_target(plan, i).boxed()).await
}

/// Sleeps between batches in slices, so a cancel or supersede request is not kept waiting for a long pause.
async fn pause_between_batches(rec: &Recorder<'_>, pause: Duration) {
    let slice = (rec.shared.config.lease / 3).max(Duration::from_millis(10));
    let mut left = pause;
    while !left.is_zero() && rec.stop_reason().is_none() {
        let step = left.min(slice);
        rec.shared.clock.sleep(step).await;
        left = left.saturating_sub(step);
    }
}

/// Runs `task` for each index with at most `max_parallel_targets` at once, enforcing the progress deadline.
/// Returns whether the deadline was hit (the unfinished targets are then marked failed).
async fn run_bounded<'p, F>(plan: &'p Plan<'p>, indices: Vec<usize>, task: F) -> Result<bool, Abort>
where
    F: Fn(usize) -> BoxFuture<'p, Result<(), Abort>>,
{
    let rec = plan.rec;
    let deadline = plan.spec.progress_deadline().as_std();
    let limit = rec.shared.config.max_parallel_targets.max(1);
    let mut queue = indices.iter().copied();
    let mut running = FuturesUnordered::new();
    for i in queue.by_ref().take(limit) {
        running.push(task(i));
    }
    loop {
        // Take every target that finished without waiting (fast executors) before looking at clocks or timers.
        while let Some(Some(result)) = running.next().now_or_never() {
            result?;
            if let Some(i) = queue.next() {
                running.push(task(i));
            }
        }
        // About to wait (or done): make what finished so far visible and durable first, still polling the targets
        // in flight; what they finish meanwhile is taken before going on.
        let finished = flush_polling(rec, &mut running).await?;
        if !finished.is_empty() {
            for result in finished {
                result?;
                if let Some(i) = queue.next() {
                    running.push(task(i));
                }
            }
            continue;
        }
        if running.is_empty() {
            return Ok(false);
        }
        let now = rec.now();
        let last = rec.with(Deployment::progress_at).unwrap_or(now);
        let remaining = deadline.saturating_sub(elapsed_between(last, now));
        if remaining.is_zero() {
            drop(running);
            mark_interrupted(
                rec,
                &indices,
                TargetStatus::Failed,
                "progress deadline exceeded while this target was in flight",
            )
            .await?;
            return Ok(true);
        }
        tokio::select! {
            next = running.next() => {
                if let Some(result) = next {
                    result?;
                    if let Some(i) = queue.next() {
                        running.push(task(i));
                    }
                }
            }
            // A target moved on (e.g. to verifying) without finishing: write it now, not when some target finishes.
            () = rec.result_waiting.notified() => {}
            () = rec.shared.clock.sleep(remaining) => {}
        }
    }
}

/// Writes the buffered results while the targets in `running` go on being polled; returns the results of those that
/// finished meanwhile (their own results are buffered for the next write).
///
/// A target future left unpolled while the runner waits for the store can deadlock both: a pooled database connection
/// freed while that future was queued for one is handed to it, and the store write then waits for a connection the
/// unpolled future will never use nor give back.
async fn flush_polling<'p>(
    rec: &Recorder<'_>,
    running: &mut FuturesUnordered<BoxFuture<'p, Result<(), Abort>>>,
) -> Result<Vec<Result<(), Abort>>, Abort> {
    let mut finished = Vec::new();
    let flush = rec.flush();
    tokio::pin!(flush);
    loop {
        tokio::select! {
            biased;
            written = &mut flush => return written.map(|()| finished),
            Some(result) = running.next(), if !running.is_empty() => finished.push(result),
        }
    }
}

/// What an interrupted target may run: the reason recorded for a target whose change may have started.
const MAY_HAVE_CHANGED: &str = "interrupted while being changed: it may run either version";

/// Settles every unsettled target among `indices` in one write, by what may have happened to it, never by what was
/// last recorded alone: a target still `pending` provably never started (its intent was never written) and becomes
/// `status`; a target `in_progress` or `verifying` had its intent written, so its change may have started (or ended,
/// unseen by a controller that died): it becomes `failed`, which keeps it restorable, so a rollback restores it.
async fn mark_interrupted(rec: &Recorder<'_>, indices: &[usize], status: TargetStatus, why: &str) -> Result<(), Abort> {
    let now = rec.now();
    let mut update = ProgressUpdate { now: Some(now), ..ProgressUpdate::default() };
    for &i in indices {
        if let Some(mut t) = rec.target(i)
            && !t.status.is_settled()
        {
            let message = if t.status == TargetStatus::Pending {
                format!("{}: not attempted", t.id)
            } else {
                format!("{}: {why}; {MAY_HAVE_CHANGED}", t.id)
            };
            let settled = if t.status == TargetStatus::Pending {
                status
            } else {
                t.error = Some(format!("{why}; {MAY_HAVE_CHANGED}"));
                // What it runs is not known any more: the environment stops claiming the version it ran before, so
                // nothing later (a deployment's `from_version`, a reader of the environment) takes that for a fact.
                update.observations.push(TargetObservation {
                    target: t.id.clone(),
                    desired: None,
                    actual: Some(ActualState { version: None, health: Health::Unknown, observed_at: now }),
                });
                TargetStatus::Failed
            };
            t.status = settled;
            t.updated_at = now;
            update.events.push(NewEvent::target(now, t.id.clone(), settled, message));
            update.targets.push((i, t));
        }
    }
    if update.targets.is_empty() { Ok(()) } else { rec.write(update).await }
}

async fn stop_now(rec: &Recorder<'_>, status: DeploymentStatus, reason: String) -> Result<(), Abort> {
    let all: Vec<usize> = (0..rec.with(|d| d.targets().len())).collect();
    mark_interrupted(rec, &all, TargetStatus::Cancelled, "interrupted before it finished; its state is unknown")
        .await?;
    rec.set_status(status, reason).await
}

async fn fail(plan: &Plan<'_>, reason: String, wants_rollback: bool) -> Result<(), Abort> {
    let rec = plan.rec;
    let all: Vec<usize> = (0..rec.with(|d| d.targets().len())).collect();
    mark_interrupted(rec, &all, TargetStatus::Cancelled, "stopped when the deployment failed").await?;
    if wants_rollback {
        rollback(plan, Some(reason)).await
    } else {
        rec.set_status(DeploymentStatus::Failed, reason).await
    }
}

/// The retry policy of target `index`'s calls: each retry is an event of the target.
fn retry_policy<'a>(rec: &'a Recorder<'_>, unreachable_wait: Duration, index: usize) -> RetryPolicy<'a> {
    let c = &rec.shared.config;
    let note = move |what: String| {
        if let Some(entry) = rec.target(index) {
            let message = format!("{}: {what}", entry.id);
            // An event only: the target's status does not change.
            let _ = rec.result(index, entry, message, None);
        }
    };
    RetryPolicy {
        clock: rec.shared.clock.as_ref(),
        max_retries: c.max_retries,
        base: c.retry_base,
        cap: c.retry_cap,
        unreachable_wait,
        on_retry: Box::new(note),
    }
}

/// Finds each deployment target in the environment. Targets are usually in environment order, so a forward scan finds
/// them without hashing; a map handles the rest (explicit id lists, targets removed since acceptance).
fn align(d: &Deployment, env: &Environment) -> Vec<Option<usize>> {
    let mut out = Vec::with_capacity(d.targets().len());
    let mut next = 0;
    let mut map: Option<HashMap<&TargetId, usize>> = None;
    for t in d.targets() {
        if env.targets.get(next).is_some_and(|e| e.id == t.id) {
            out.push(Some(next));
            next += 1;
            continue;
        }
        let m = map.get_or_insert_with(|| env.targets.iter().enumerate().map(|(i, e)| (&e.id, i)).collect());
        let found = m.get(&t.id).copied();
        if let Some(i) = found {
            next = i + 1;
        }
        out.push(found);
    }
    out
}

/// Stands in for the executor of a target whose kind no executor serves: every call fails permanently, naming it.
struct Unrouted(ExecutorError);

#[async_trait::async_trait]
impl Executor for Unrouted {
    async fn observe(&self, _: &Target, _: Option<&DesiredState>) -> Result<Observation, ExecutorError> {
        Err(self.0.clone())
    }
    async fn apply(&self, _: &Target, _: ApplyContext<'_>) -> Result<crate::executor::Outcome, ExecutorError> {
        Err(self.0.clone())
    }
    async fn verify(&self, _: &Target, _: &DesiredState) -> Result<Health, ExecutorError> {
        Err(self.0.clone())
    }
    async fn run_step(
        &self,
        _: &Target,
        _: &crate::spec::ImperativeStep,
        _: ApplyContext<'_>,
    ) -> Result<crate::executor::Outcome, ExecutorError> {
        Err(self.0.clone())
    }
}

/// A target of the plan: what its executor sees of it, what the environment last recorded as desired there, and the
/// executor serving it.
fn target_of<'p>(plan: &'p Plan<'_>, index: usize) -> Option<(Target, Option<Arc<DesiredState>>, &'p dyn Executor)> {
    let t = plan.env_index.get(index).copied().flatten().and_then(|i| plan.environment.targets.get(i))?;
    let (target, executor) = plan.routes.get(index)?.as_ref()?;
    Some((target.clone(), t.desired.clone(), executor.as_ref()))
}

/// An executor's answer with every secret value resolved for the call scrubbed from its output and its error, before
/// the engine records, logs or sends any of it.
fn scrubbed<T: Scrub>(result: Result<T, ExecutorError>, secrets: &ResolvedSecrets) -> Result<T, ExecutorError> {
    if secrets.is_empty() {
        return result;
    }
    let scrubber = crate::secrets::Scrubber::of(secrets);
    match result {
        Ok(mut out) => {
            out.scrub(&scrubber);
            Ok(out)
        }
        Err(e) => Err(e.scrubbed(&scrubber)),
    }
}

/// What an executor call returns that may carry text.
trait Scrub {
    fn scrub(&mut self, scrubber: &crate::secrets::Scrubber);
}

impl Scrub for () {
    fn scrub(&mut self, _: &crate::secrets::Scrubber) {}
}

impl Scrub for crate::executor::Outcome {
    fn scrub(&mut self, scrubber: &crate::secrets::Scrubber) {
        scrubber.scrub_in_place(&mut self.output);
    }
}

async fn resolve_secrets(rec: &Recorder<'_>, desired: &DesiredState) -> Result<ResolvedSecrets, ExecutorError> {
    crate::secrets::resolve_for(rec.shared.secrets.as_ref(), desired).await
}

enum Verified {
    Healthy,
    Unhealthy(String),
    Unreachable(String),
}

/// Polls `verify` until health holds for `healthy_for`, giving up at `timeout`. Returns the verdict and the time it
/// was reached.
/// One health probe, bounded by `budget` (at least 1 ms): a probe that does not answer in time is a retryable error,
/// and one that panics a permanent one.
async fn probe(
    rec: &Recorder<'_>,
    executor: &dyn Executor,
    target: &Target,
    desired: &DesiredState,
    budget: Duration,
) -> Result<Health, ExecutorError> {
    let budget = budget.max(Duration::from_millis(1));
    let mut call = caught(executor.verify(target, desired)).boxed();
    // Answered at once (most probes of in-process executors): no timer.
    if let Some(r) = (&mut call).now_or_never() {
        return r;
    }
    tokio::select! {
        r = call => r,
        () = rec.shared.clock.sleep(budget) => {
            Err(ExecutorError::retryable(format!("the health probe did not answer within {} ms", budget.as_millis())))
        }
    }
}

async fn verify_health(
    rec: &Recorder<'_>,
    executor: &dyn Executor,
    policy: crate::spec::VerifyPolicy,
    target: &Target,
    desired: &DesiredState,
) -> (Verified, crate::clock::Timestamp) {
    let clock = rec.shared.clock.as_ref();
    let mut now = clock.now();
    let give_up = add(now, policy.timeout.as_std());
    let mut healthy_since = None;
    let mut last_problem = "never reported healthy".to_owned();
    let mut unreachable_streak;
    loop {
        rec.fence().await;
        now = clock.now();
        // A probe may take what is left of the timeout, and never less than an interval: the last probe, made when the
        // time is nearly out, gets its verdict heard instead of a timeout of its own.
        let budget = elapsed_between(now, give_up).max(policy.interval.as_std());
        let probe = probe(rec, executor, target, desired, budget).await;
        now = clock.now();
        match probe {
            Ok(Health::Healthy) => {
                unreachable_streak = false;
                let since = *healthy_since.get_or_insert(now);
                if elapsed_between(since, now) >= policy.healthy_for.as_std() {
                    return (Verified::Healthy, now);
                }
            }
            Ok(h) => {
                healthy_since = None;
                unreachable_streak = false;
                last_problem = format!("health was {h:?}").to_lowercase();
            }
            Err(e) => {
                healthy_since = None;
                unreachable_streak = e.class() == crate::executor::ErrorClass::Unreachable;
                last_problem = e.message().to_owned();
            }
        }
        if now >= give_up {
            let why = format!("not healthy for {} within {}: {last_problem}", policy.healthy_for, policy.timeout);
            let verdict = if unreachable_streak { Verified::Unreachable(why) } else { Verified::Unhealthy(why) };
            return (verdict, now);
        }
        let wait = policy.interval.as_std().min(elapsed_between(now, give_up)).max(Duration::from_millis(1));
        clock.sleep(wait).await;
    }
}

fn fail_entry(
    mut t: TargetProgress,
    status: TargetStatus,
    error: String,
    now: crate::clock::Timestamp,
) -> TargetProgress {
    t.status = status;
    t.error = Some(error);
    t.updated_at = now;
    t
}

/// Phase one for a target: observe it; record a skip (already there) or a failure, or stage the intent to change it
/// (with what it runs now). Staged intents are written together before phase two touches any target.
async fn prepare_target(plan: &Plan<'_>, index: usize) -> Result<(), Abort> {
    let rec = plan.rec;
    let Some(mut entry) = rec.target(index) else { return Ok(()) };
    let spec = plan.spec.as_ref();
    let Some((target, env_desired, executor)) = target_of(plan, index) else {
        let now = rec.now();
        let msg = format!("{}: no longer in the environment", entry.id);
        return rec.result(index, fail_entry(entry, TargetStatus::Failed, msg.clone(), now), msg, None);
    };
    let desired = plan.desired(&entry.to_version);
    let policy = retry_policy(rec, spec.on_unreachable().wait.as_std(), index);
    let resumed = entry.status != TargetStatus::Pending;
    let id = entry.id.clone();

    // Observe first: the difference between desired and actual is what gets executed.
    let mut calls = 0;
    // The first time the target turns out unreachable, say so at once: the wait may be long.
    let noted = std::sync::atomic::AtomicBool::new(false);
    let wait_secs = spec.on_unreachable().wait.as_std().as_secs();
    let observed = policy
        .run(&mut calls, || async {
            rec.fence().await;
            let result = executor.observe(&target, Some(&desired)).await;
            if let Err(e) = &result
                && e.class() == crate::executor::ErrorClass::Unreachable
                && !noted.swap(true, std::sync::atomic::Ordering::Relaxed)
            {
                let msg = format!("{id}: unreachable ({}); waiting up to {wait_secs}s for it", e.message());
                rec.result(index, entry.clone(), msg, None).map_err(|_| ExecutorError::retryable("stopping"))?;
            }
            result
        })
        .await;
    let observation = match observed {
        Ok(o) => o,
        Err(CallError::Failed(e)) => {
            let now = rec.now();
            let msg = format!("{id}: could not observe: {e}");
            return rec.result(index, fail_entry(entry, TargetStatus::Failed, e, now), msg, None);
        }
        Err(CallError::Unreachable(e)) => {
            let now = rec.now();
            let msg = format!("{id}: {e}");
            return rec.result(index, fail_entry(entry, TargetStatus::Unreachable, e, now), msg, None);
        }
    };
    let declarative = matches!(spec.mode(), ExecutionMode::Declarative);
    if declarative
        && !resumed
        && observation.version.as_ref() == Some(&entry.to_version)
        && observation.health == Health::Healthy
    {
        let now = rec.now();
        entry.status = TargetStatus::Skipped;
        entry.from_version = observation.version.clone();
        entry.updated_at = now;
        let obs = TargetObservation {
            target: id.clone(),
            desired: Some(desired),
            actual: Some(ActualState::observed(observation, now)),
        };
        let msg = [id.as_str(), ": already runs ", entry.to_version.as_str(), ", healthy; nothing to do"].concat();
        return rec.result(index, entry, msg, Some(obs));
    }
    if !resumed {
        entry.from_version = observation.version.clone();
        entry.previous = match env_desired {
            Some(d) if Some(&d.version) == observation.version.as_ref() => Some(d),
            _ => observation.version.clone().map(|v| Arc::new(DesiredState::bare(spec.service().clone(), v))),
        };
    }
    let now = rec.now();
    entry.status = TargetStatus::InProgress;
    entry.error = None;
    entry.updated_at = now;
    let from = entry.from_version.clone();
    let from = from.as_ref().map_or("nothing", |v| v.as_str());
    rec.result(
        index,
        entry.clone(),
        [
            id.as_str(),
            if resumed { ": re-applying " } else { ": applying " },
            entry.to_version.as_str(),
            " (was ",
            from,
            ")",
        ]
        .concat(),
        // What was observed before the change is the environment's actual state until the change lands.
        Some(TargetObservation {
            target: id,
            desired: Some(desired),
            actual: Some(ActualState::observed(observation, now)),
        }),
    )
}

/// Phase two for a target whose intent is durable: apply (or run the steps), verify, record the result.
async fn change_target(plan: &Plan<'_>, index: usize) -> Result<(), Abort> {
    let rec = plan.rec;
    let Some(mut entry) = rec.target(index) else { return Ok(()) };
    if entry.status != TargetStatus::InProgress {
        return Ok(());
    }
    let (spec, deployment_id) = (plan.spec.as_ref(), plan.deployment_id);
    let Some((target, _, executor)) = target_of(plan, index) else { return Ok(()) };
    let desired = plan.desired(&entry.to_version);
    let policy = retry_policy(rec, spec.on_unreachable().wait.as_std(), index);
    let id = entry.id.clone();

    // Apply (or run the steps), with secrets resolved for this call only.
    let call = Call { rec, executor, target: &target, desired: &desired, deployment: deployment_id };
    let applied = execute(&call, &policy, spec, &mut entry, index).await?;
    if let Err(e) = applied {
        let now = rec.now();
        let (status, error) = match e {
            CallError::Failed(e) => (TargetStatus::Failed, e),
            CallError::Unreachable(e) => (TargetStatus::Unreachable, e),
        };
        let msg = format!("{id}: {error}");
        return rec.result(index, fail_entry(entry, status, error, now), msg, None);
    }

    let now = rec.now();
    entry.status = TargetStatus::Verifying;
    entry.updated_at = now;
    let msg = [id.as_str(), ": verifying health of ", entry.to_version.as_str()].concat();
    rec.result(index, entry.clone(), msg, None)?;

    let (verdict, now) = verify_health(rec, executor, *spec.verify(), &target, &desired).await;
    match verdict {
        Verified::Healthy => {
            entry.status = TargetStatus::Succeeded;
            entry.error = None;
            entry.updated_at = now;
            let actual = ActualState::observed(
                Observation { version: Some(entry.to_version.clone()), health: Health::Healthy },
                now,
            );
            let msg = [id.as_str(), ": runs ", entry.to_version.as_str(), ", healthy"].concat();
            rec.result(index, entry, msg, Some(TargetObservation { target: id, desired: None, actual: Some(actual) }))
        }
        Verified::Unhealthy(why) => {
            let msg = format!("{id}: {why}");
            let actual = ActualState::observed(
                Observation { version: Some(entry.to_version.clone()), health: Health::Unhealthy },
                now,
            );
            rec.result(
                index,
                fail_entry(entry, TargetStatus::Failed, why, now),
                msg,
                Some(TargetObservation { target: id, desired: None, actual: Some(actual) }),
            )
        }
        Verified::Unreachable(why) => {
            let msg = format!("{id}: {why}");
            rec.result(index, fail_entry(entry, TargetStatus::Unreachable, why, now), msg, None)
        }
    }
}

/// One target's calls: the executor serving it, the target as it sees it, what should run there and the deployment.
struct Call<'c> {
    rec: &'c Recorder<'c>,
    executor: &'c dyn Executor,
    target: &'c Target,
    desired: &'c DesiredState,
    deployment: crate::names::DeploymentId,
}

impl Call<'_> {
    /// One attempt at `apply` (or at imperative step `step`): resolves the secrets for this attempt only, fences, calls
    /// the executor, and scrubs the answer of every secret value resolved for it.
    async fn attempt(
        &self,
        step: Option<&crate::spec::ImperativeStep>,
    ) -> Result<crate::executor::Outcome, ExecutorError> {
        let secrets = resolve_secrets(self.rec, self.desired).await?;
        let fencing_token = self.rec.fence().await;
        let ctx = ApplyContext { deployment: self.deployment, desired: self.desired, secrets: &secrets, fencing_token };
        let out = match step {
            None => self.executor.apply(self.target, ctx).await,
            Some(step) => self.executor.run_step(self.target, step, ctx).await,
        };
        scrubbed(out, &secrets)
    }
}

/// Records what a call printed as an event of its target (nothing when it printed nothing).
fn record_output(
    rec: &Recorder<'_>,
    entry: &mut TargetProgress,
    index: usize,
    what: &str,
    outcome: &crate::executor::Outcome,
) -> Result<(), Abort> {
    let text: String = outcome.output.chars().take(4096).collect();
    if text.trim().is_empty() {
        return Ok(());
    }
    entry.updated_at = rec.now();
    rec.result(index, entry.clone(), format!("{what}: {}", text.trim()), None)
}

/// Applies the desired state, or runs each imperative step in order, recording what each printed as an event.
async fn execute(
    call: &Call<'_>,
    policy: &RetryPolicy<'_>,
    spec: &crate::spec::DeploymentSpec,
    entry: &mut TargetProgress,
    index: usize,
) -> Result<Result<(), CallError>, Abort> {
    let (rec, target) = (call.rec, call.target);
    let mut attempts = entry.attempts;
    let result = match spec.mode() {
        ExecutionMode::Declarative => {
            let applied = policy.run(&mut attempts, || call.attempt(None)).await;
            entry.attempts = attempts;
            match applied {
                Ok(outcome) => {
                    record_output(
                        rec,
                        entry,
                        index,
                        &format!("{}: applied {}", target.id, call.desired.version),
                        &outcome,
                    )?;
                    Ok(())
                }
                Err(e) => Err(e),
            }
        }
        ExecutionMode::Imperative { steps } => {
            let mut result = Ok(());
            for (n, step) in steps.iter().enumerate() {
                let out = policy.run(&mut attempts, || call.attempt(Some(step))).await;
                entry.attempts = attempts;
                match out {
                    Ok(outcome) => {
                        entry.updated_at = rec.now();
                        let text: String = outcome.output.chars().take(4096).collect();
                        let message = format!("{}: step {} ({}) done: {}", target.id, n + 1, step.action, text.trim());
                        rec.result(index, entry.clone(), message, None)?;
                    }
                    Err(e) => {
                        result = Err(match e {
                            CallError::Failed(m) => CallError::Failed(format!("step {} ({}): {m}", n + 1, step.action)),
                            CallError::Unreachable(m) => {
                                CallError::Unreachable(format!("step {} ({}): {m}", n + 1, step.action))
                            }
                        });
                        break;
                    }
                }
            }
            result
        }
    };
    entry.attempts = attempts;
    Ok(result)
}

/// Watches a canary step's targets for `watch_for`; a target that turns unhealthy fails the step.
async fn watch_canary(plan: &Plan<'_>, batch: &Batch, watch_for: Duration) -> Result<Option<String>, Abort> {
    let rec = plan.rec;
    let interval = plan.spec.verify().interval.as_std();
    let probe_timeout = plan.spec.verify().timeout.as_std().max(interval);
    let clock = rec.shared.clock.as_ref();
    let until = add(clock.now(), watch_for);
    loop {
        if rec.stop_reason().is_some() {
            return Ok(None);
        }
        for i in batch.targets.clone() {
            let Some(entry) = rec.target(i) else { continue };
            if entry.status != TargetStatus::Succeeded {
                continue;
            }
            let Some((target, _, executor)) = target_of(plan, i) else { continue };
            let desired = plan.desired(&entry.to_version);
            rec.fence().await;
            // Bounded like any probe: a probe that hangs is a failed probe, and the watch goes on (a cancel, the next
            // check) instead of holding the environment.
            let trouble = match probe(rec, executor, &target, &desired, probe_timeout).await {
                Ok(Health::Healthy) => None,
                Ok(h) => Some(format!("health was {h:?}").to_lowercase()),
                Err(e) => Some(e.message().to_owned()),
            };
            if let Some(trouble) = trouble {
                let now = rec.now();
                let why = format!(
                    "became unhealthy while the canary step was watched for {}s ({trouble})",
                    watch_for.as_secs()
                );
                let msg = format!("{}: {why}", entry.id);
                rec.result(i, fail_entry(entry, TargetStatus::Failed, why, now), msg, None)?;
                return Ok(Some("a canary target became unhealthy during its observation window".to_owned()));
            }
        }
        let now = clock.now();
        if now >= until {
            return Ok(None);
        }
        clock.sleep(interval.min(elapsed_between(now, until)).max(Duration::from_millis(1))).await;
    }
}

/// Returns every target this deployment changed to what it ran before, then ends `rolled_back` (or `failed` when some
/// target could not be restored).
async fn rollback(plan: &Plan<'_>, reason: Option<String>) -> Result<(), Abort> {
    let rec = plan.rec;
    if let Some(reason) = reason {
        rec.set_status(DeploymentStatus::RollingBack, format!("{reason}; rolling back")).await?;
    }
    let candidates: Vec<usize> = rec.with(|d| {
        d.targets().iter().enumerate().filter(|(_, t)| t.restorable_version().is_some()).map(|(i, _)| i).collect()
    });
    let deadline_hit = run_bounded(plan, candidates.clone(), |i| restore_target(plan, i).boxed()).await?;
    let s = rec.with(|d| *d.summary());
    let not_restored =
        candidates.iter().filter(|&&i| rec.target(i).is_some_and(|t| t.status != TargetStatus::RolledBack)).count();
    let base = rec.with(|d| d.status_reason().unwrap_or_default().trim_end_matches("; rolling back").to_owned());
    if not_restored == 0 && !deadline_hit {
        rec.set_status(DeploymentStatus::RolledBack, format!("{base}; {} target(s) rolled back", s.rolled_back)).await
    } else {
        rec.set_status(
            DeploymentStatus::Failed,
            format!("{base}; rollback incomplete: {not_restored} target(s) could not be restored"),
        )
        .await
    }
}

async fn restore_target(plan: &Plan<'_>, index: usize) -> Result<(), Abort> {
    let rec = plan.rec;
    let Some(mut entry) = rec.target(index) else { return Ok(()) };
    let (service, deployment, unreachable_wait) =
        (plan.spec.service().clone(), plan.deployment_id, plan.spec.on_unreachable().wait.as_std());
    let Some(from) = entry.from_version.clone() else { return Ok(()) };
    let Some((target, _, executor)) = target_of(plan, index) else { return Ok(()) };
    let desired = entry.previous.clone().unwrap_or_else(|| Arc::new(DesiredState::bare(service, from.clone())));
    let policy = retry_policy(rec, unreachable_wait, index);
    let id = entry.id.clone();
    let mut attempts = entry.attempts;
    let call = Call { rec, executor, target: &target, desired: &desired, deployment };
    let applied = policy.run(&mut attempts, || call.attempt(None)).await;
    entry.attempts = attempts;
    let verify = *plan.spec.verify();
    let (verdict, now) = match applied {
        Ok(outcome) => {
            record_output(rec, &mut entry, index, &format!("{id}: restored {from}"), &outcome)?;
            verify_health(rec, executor, verify, &target, &desired).await
        }
        Err(CallError::Failed(e)) => (Verified::Unhealthy(e), rec.now()),
        Err(CallError::Unreachable(e)) => (Verified::Unreachable(e), rec.now()),
    };
    entry.updated_at = now;
    match verdict {
        Verified::Healthy => {
            entry.status = TargetStatus::RolledBack;
            let actual =
                ActualState::observed(Observation { version: Some(from.clone()), health: Health::Healthy }, now);
            rec.result(
                index,
                entry,
                format!("{id}: rolled back to {from}, healthy"),
                Some(TargetObservation { target: id, desired: Some(desired), actual: Some(actual) }),
            )
        }
        Verified::Unhealthy(why) | Verified::Unreachable(why) => {
            let error = format!("rollback to {from} failed: {why}");
            entry.status = TargetStatus::Failed;
            entry.error = Some(error.clone());
            rec.result(index, entry, format!("{id}: {error}"), None)
        }
    }
}
