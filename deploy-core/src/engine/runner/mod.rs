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

mod recorder;
mod targets;
mod verify;

use recorder::*;
use targets::*;
use verify::*;

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
    /// The secret references this environment may resolve now: its own scope and the global one.
    scope: crate::secrets::SecretScope,
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
    let (mut status, env_name) = rec.with(|d| (d.status(), d.environment().clone()));
    if status == DeploymentStatus::AwaitingApproval {
        status = approval_due(rec).await?;
        if status == DeploymentStatus::AwaitingApproval {
            // Claimed early (a clock ahead of this one's): released, to be claimed again when due.
            return Ok(());
        }
    }
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
    let scope = environment.secret_scope.joined(&rec.shared.global_scope);
    let plan = Plan { rec, environment, env_index, spec, deployment_id, desired, routes, scope };
    match status {
        DeploymentStatus::Queued => {
            if let Some((stop, reason)) = rec.stop_reason() {
                return stop_now(rec, stop, reason).await;
            }
            if !rec.controls().override_schedule {
                let now = rec.now();
                let global = rec.shared.store.global_freeze().await?.and_then(|f| f.hold(now));
                let hold = global.or_else(|| plan.environment.schedule.as_ref().and_then(|s| s.hold(now)));
                if let Some(hold) = hold {
                    return hold_queued(rec, hold).await;
                }
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
            let reason = if status == DeploymentStatus::Paused {
                format!("taken over by {} from stored progress; still paused", rec.shared.config.owner)
            } else {
                format!("resumed by {} from stored progress", rec.shared.config.owner)
            };
            let events = vec![NewEvent::deployment(now, status, reason)];
            rec.write(ProgressUpdate { now: Some(now), progressed: true, events, ..ProgressUpdate::default() }).await?;
        }
    }
    roll_out(&plan).await
}

/// A deployment waiting for approval is claimed only when one of its timers is due ([`Deployment::wake_at`]): the
/// wait after its approval is over (it is queued, and started at once), or nobody approved it within the rule's
/// `expires_after` (it is cancelled). Returns the status to go on from; still `awaiting_approval` when neither is due
/// yet on this controller's clock.
async fn approval_due(rec: &Recorder<'_>) -> Result<DeploymentStatus, Abort> {
    if let Some((stop, reason)) = rec.stop_reason() {
        stop_now(rec, stop, reason).await?;
        return Ok(stop);
    }
    let now = rec.now();
    let (rule, created_at, approved_at) = rec.with(|d| (d.protection().cloned(), d.created_at(), d.approved_at()));
    let Some(rule) = rule else { return Ok(DeploymentStatus::AwaitingApproval) };
    let elapsed = |since| elapsed_between(since, now);
    match approved_at {
        Some(at) if rule.wait.is_none_or(|w| elapsed(at) >= w.as_std()) => {
            let wait = rule.wait.map(|w| format!(" and the wait of {w} after it is over")).unwrap_or_default();
            rec.set_status(DeploymentStatus::Queued, format!("approved{wait}; queued")).await?;
            Ok(DeploymentStatus::Queued)
        }
        None if rule.expires_after.is_some_and(|e| elapsed(created_at) >= e.as_std()) => {
            let limit = rule.expires_after.unwrap_or_default();
            stop_now(rec, DeploymentStatus::Cancelled, format!("not approved within {limit}: expired")).await?;
            Ok(DeploymentStatus::Cancelled)
        }
        _ => Ok(DeploymentStatus::AwaitingApproval),
    }
}

/// How long a held deployment is left alone at most before its rules are read again: a freeze lifted, a window
/// added or an override is seen within this, a boundary the rules name exactly at it.
const HOLD_RECHECK: Duration = Duration::from_secs(60);

/// Leaves a queued deployment that may not start now where it is, with a reason that says until when, not claimable
/// until the hold ends (or [`HOLD_RECHECK`] passes): a deployment waiting for its window costs a controller one
/// look per boundary, not a poll. Says so in an `environment.frozen` event when the reason is new.
async fn hold_queued(rec: &Recorder<'_>, hold: crate::schedule::Hold) -> Result<(), Abort> {
    let now = rec.now();
    let until = match hold.until {
        Some(u) => {
            // To the second: a reason is read by people.
            let u = u.replace_nanosecond(0).unwrap_or(u);
            format!("until {}", u.format(&time::format_description::well_known::Rfc3339).unwrap_or_default())
        }
        None => "until it is lifted".to_owned(),
    };
    let reason = format!("held: {} {until}", hold.reason);
    let recheck = add(now, HOLD_RECHECK);
    let next = hold.until.map_or(recheck, |u| u.min(recheck));
    let is_new = rec.with(|d| d.status_reason() != Some(reason.as_str()));
    let mut update = ProgressUpdate {
        now: Some(now),
        status: Some(StatusChange { status: DeploymentStatus::Queued, reason: Some(reason.clone()) }),
        hold_until: Some(next),
        ..ProgressUpdate::default()
    };
    if is_new {
        tracing::info!(%reason, "deployment held");
        let event = NewEvent::deployment(now, DeploymentStatus::Queued, reason);
        update.events.push(NewEvent { event_type: crate::event::EventType::Frozen, ..event });
    }
    rec.write(update).await
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

    let wants_rollback = is_canary || spec.failure().on_failure == OnFailure::Rollback;
    for (n, batch) in batches.iter().enumerate() {
        if let Some(halt) = safe_point(plan, None).await? {
            return halted(plan, halt, wants_rollback).await;
        }
        // A full promotion sends every remaining target in this one batch, with no step, watch or pause after it.
        let promoted_full = is_canary && rec.controls().promote_full;
        let full_batch;
        let batch = if promoted_full {
            full_batch = Batch { targets: batch.targets.start..total, watch_for: None, gate: None };
            &full_batch
        } else {
            batch
        };
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
            return fail(plan, reason, wants_rollback || unreachable_rollback).await;
        }
        if promoted_full {
            break;
        }
        if let Some(step) = batch.gate.filter(|_| n + 1 < batches.len())
            && let Some(halt) = safe_point(plan, Some(step)).await?
        {
            return halted(plan, halt, wants_rollback).await;
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
    while !left.is_zero() && rec.stop_reason().is_none() && !wants_to_halt(rec) {
        let step = left.min(slice);
        rec.shared.clock.sleep(step).await;
        left = left.saturating_sub(step);
    }
}

/// Whether an operator asked to pause or abort: what ends a wait early so the next safe point sees it.
fn wants_to_halt(rec: &Recorder<'_>) -> bool {
    let c = rec.controls();
    c.pause_requested || c.abort.is_some()
}

/// Why a rollout stops at a safe point.
#[derive(Debug)]
enum Halt {
    /// Cancelled or superseded: unsettled targets are cancelled, nothing is rolled back.
    Stop(DeploymentStatus, String),
    /// Aborted (on request, or a pause outlived its deadline): `rollback` overrides the failure policy. An operator's
    /// abort that does not roll back ends `cancelled` (a deliberate stop is no failure to page anyone about); a pause
    /// that outlived its deadline is a failure.
    Abort { rollback: Option<bool>, reason: String, requested: bool },
}

async fn halted(plan: &Plan<'_>, halt: Halt, policy_rolls_back: bool) -> Result<(), Abort> {
    match halt {
        Halt::Stop(status, reason) => stop_now(plan.rec, status, reason).await,
        Halt::Abort { rollback, reason, requested } => {
            let rolls_back = rollback.unwrap_or(policy_rolls_back);
            if requested && !rolls_back {
                let rec = plan.rec;
                let all: Vec<usize> = (0..rec.with(|d| d.targets().len())).collect();
                mark_interrupted(rec, &all, TargetStatus::Cancelled, "stopped when the deployment was aborted").await?;
                rec.set_status(DeploymentStatus::Cancelled, reason).await
            } else {
                fail(plan, reason, rolls_back).await
            }
        }
    }
}

/// A safe point: between batches (`gate` `None`), or after the canary step numbered `gate` that waits to be
/// promoted. Returns why the rollout must stop, if it must; otherwise returns once it may go on. While it must wait
/// (an operator's pause, a step not yet promoted) the deployment is `paused`: no target is touched, the lease is
/// renewed as usual (so it survives nothing but its holder), and the progress deadline does not run; the pause
/// deadline does, and aborts a pause that outlives it.
async fn safe_point(plan: &Plan<'_>, gate: Option<u32>) -> Result<Option<Halt>, Abort> {
    let rec = plan.rec;
    let mut changed = rec.shared.changed.subscribe();
    loop {
        if let Some((status, reason)) = rec.stop_reason() {
            return Ok(Some(Halt::Stop(status, reason)));
        }
        let c = rec.controls();
        if let Some(abort) = c.abort {
            let reason = match abort.rollback {
                Some(false) => "aborted on request, without rollback",
                Some(true) => "aborted on request, with rollback",
                None => "aborted on request",
            };
            return Ok(Some(Halt::Abort { rollback: abort.rollback, reason: reason.to_owned(), requested: true }));
        }
        let promoted = |step: u32| c.promote_full || c.promoted_through >= step;
        let waits_for = gate.filter(|&step| !promoted(step));
        let (status, stored_gate, paused_at) = rec.with(|d| (d.status(), d.awaiting_promotion(), d.paused_at()));
        if !c.pause_requested && waits_for.is_none() {
            // Passing an earlier safe point of a deployment taken over while it waited at a later step: it stays
            // paused until that step (every target before it is settled, so nothing is applied meanwhile).
            let still_waits_later = gate.is_none() && stored_gate.is_some_and(|step| !promoted(step));
            if status == DeploymentStatus::Paused && !still_waits_later {
                let now = rec.now();
                let reason = match gate {
                    Some(step) => format!("canary step {step} promoted; going on"),
                    None => "resumed".to_owned(),
                };
                let mut update = rec.status_update(DeploymentStatus::InProgress, reason, now);
                for e in &mut update.events {
                    e.event_type = crate::event::EventType::Resumed;
                }
                rec.write(update).await?;
            }
            return Ok(None);
        }
        let reason = match waits_for {
            Some(step) if !c.pause_requested => {
                format!("canary step {step} waits to be promoted")
            }
            _ => "paused on request".to_owned(),
        };
        if status != DeploymentStatus::Paused || stored_gate != waits_for {
            let now = rec.now();
            let mut update = rec.status_update(DeploymentStatus::Paused, reason, now);
            update.awaiting_promotion = waits_for;
            rec.write(update).await?;
            continue;
        }
        let slice = (rec.shared.config.lease / 3).max(Duration::from_millis(10));
        let wait = match (plan.spec.pause_deadline(), paused_at) {
            (Some(limit), Some(since)) => {
                let left = limit.as_std().saturating_sub(elapsed_between(since, rec.now()));
                if left.is_zero() {
                    return Ok(Some(Halt::Abort {
                        rollback: None,
                        reason: format!("paused for longer than its pause deadline ({limit})"),
                        requested: false,
                    }));
                }
                left.min(slice)
            }
            _ => slice,
        };
        // A request made through this process pokes its watchers: read the record again at once (at most every
        // `LOOK_AGAIN`), rather than wait for the next renewal to bring it. Requests made elsewhere come with it.
        let poked = async {
            let _ = changed.changed().await;
            rec.shared.clock.sleep(LOOK_AGAIN).await;
        };
        tokio::select! {
            () = rec.control_changed.notified() => {}
            () = rec.shared.clock.sleep(wait) => {}
            () = poked => {
                let id = rec.with(Deployment::id);
                rec.merge(Control::of(&rec.shared.store.get_deployment(id).await?));
            }
        }
    }
}

/// The least time between two reads of a paused deployment's record prompted by writes in this process.
const LOOK_AGAIN: Duration = Duration::from_millis(200);

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
        on_panic: Box::new(move || {
            if let Some(entry) = rec.target(index) {
                rec.executor_panicked(&entry.id);
            }
        }),
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
    // Targets this deployment changed that ran no version before it: nothing to return them to, so they still run
    // the new one. `rolled_back` promises every target runs what it ran before; with any of these it is not true.
    let unrestorable: Vec<usize> = rec.with(|d| {
        d.targets()
            .iter()
            .enumerate()
            .filter(|(_, t)| t.status == TargetStatus::Succeeded && t.from_version.is_none())
            .map(|(i, _)| i)
            .collect()
    });
    for &i in &unrestorable {
        if let Some(mut entry) = rec.target(i) {
            let why = format!(
                "not restorable: it ran no version before this deployment, and still runs {}",
                entry.to_version
            );
            entry.error = Some(why.clone());
            entry.updated_at = rec.now();
            let message = format!("{}: {why}", entry.id);
            rec.result(i, entry, message, None)?;
        }
    }
    let s = rec.with(|d| *d.summary());
    let not_restored =
        candidates.iter().filter(|&&i| rec.target(i).is_some_and(|t| t.status != TargetStatus::RolledBack)).count();
    let base = rec.with(|d| d.status_reason().unwrap_or_default().trim_end_matches("; rolling back").to_owned());
    if not_restored == 0 && unrestorable.is_empty() && !deadline_hit {
        rec.set_status(DeploymentStatus::RolledBack, format!("{base}; {} target(s) rolled back", s.rolled_back)).await
    } else {
        let mut why = format!("{base}; rollback incomplete: {} target(s) rolled back", s.rolled_back);
        if not_restored > 0 {
            why.push_str(&format!(", {not_restored} could not be restored"));
        }
        if !unrestorable.is_empty() {
            why.push_str(&format!(", {} ran no earlier version and still run the new one", unrestorable.len()));
        }
        rec.set_status(DeploymentStatus::Failed, why).await
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;
    use crate::deployment::{DeploymentDraft, TargetPlan};
    use crate::environment::{EnvironmentSpec, TargetDefinition};
    use crate::executor::Outcome;
    use crate::secrets::SecretValue;
    use crate::spec::{CanaryStep, CountOrPercent, TargetSelector};
    use crate::state::ActualState;

    fn at() -> crate::clock::Timestamp {
        time::macros::datetime!(2026-12-01 10:00 UTC)
    }

    fn environment(ids: &[&str]) -> Environment {
        let targets = ids
            .iter()
            .map(|id| TargetDefinition {
                id: TargetId::new(*id).unwrap(),
                labels: Default::default(),
                executor: "vm".parse().unwrap(),
                config: serde_json::Value::Null,
            })
            .collect();
        Environment::create("prod".parse().unwrap(), EnvironmentSpec { targets, ..EnvironmentSpec::default() })
    }

    fn deployment(env: &Environment, ids: &[&str]) -> Deployment {
        let spec = crate::spec::DeploymentSpec::builder(
            "prod".parse().unwrap(),
            "web".parse().unwrap(),
            "2.0".parse().unwrap(),
        )
        .targets(TargetSelector::Ids(ids.iter().map(|i| TargetId::new(*i).unwrap()).collect()))
        .build()
        .unwrap();
        let draft = DeploymentDraft {
            id: crate::names::DeploymentId::new(),
            spec,
            created_by: "test".into(),
            plan: TargetPlan::FromSpec,
            rollback_of: None,
            retry_of: None,
            submitted_by: None,
        };
        Deployment::plan(draft, env, at()).unwrap()
    }

    #[test]
    fn align_finds_targets_in_order_out_of_order_and_gone() {
        let env = environment(&["a", "b", "c", "d"]);
        assert_eq!(align(&deployment(&env, &["a", "b", "c", "d"]), &env), [Some(0), Some(1), Some(2), Some(3)]);
        assert_eq!(align(&deployment(&env, &["c", "a", "d"]), &env), [Some(2), Some(0), Some(3)]);
        let d = deployment(&env, &["b", "d"]);
        let shrunk = environment(&["a", "d"]);
        assert_eq!(align(&d, &shrunk), [None, Some(1)], "a target removed since acceptance is not found");
    }

    #[test]
    fn pending_targets_take_the_from_version_the_environment_now_records() {
        let mut env = environment(&["a", "b"]);
        let d = deployment(&env, &["a", "b"]);
        assert_eq!(d.targets()[0].from_version, None);
        env.targets[0].actual = Some(ActualState::observed(
            Observation { version: Some("1.5".parse().unwrap()), health: Health::Healthy },
            at(),
        ));
        let index = align(&d, &env);
        let fresh = refreshed_from_versions(&d, &env, &index, at());
        assert_eq!(fresh.len(), 1, "only the target the environment contradicts: {fresh:?}");
        assert_eq!(fresh[0].0, 0);
        assert_eq!(fresh[0].1.from_version.as_ref().map(|v| v.as_str()), Some("1.5"));
    }

    #[test]
    fn strategies_are_described_for_the_start_event() {
        assert_eq!(describe(&RolloutStrategy::AllAtOnce), "all at once");
        let rolling = RolloutStrategy::Rolling { batch_size: CountOrPercent::Percent(25), pause: Default::default() };
        assert_eq!(describe(&rolling), "rolling 25% at a time");
        let canary = RolloutStrategy::Canary {
            steps: vec![
                CanaryStep { percent: 10, verify_for: Default::default(), until_promoted: false },
                CanaryStep { percent: 100, verify_for: Default::default(), until_promoted: false },
            ],
        };
        assert_eq!(describe(&canary), "canary 10% → 100%");
    }

    #[test]
    fn updates_waiting_to_be_written_merge_in_order() {
        let mut earlier = ProgressUpdate {
            now: Some(at()),
            events: vec![NewEvent::deployment(at(), DeploymentStatus::InProgress, "one")],
            ..ProgressUpdate::default()
        };
        let later_at = at() + time::Duration::seconds(1);
        let later = ProgressUpdate {
            now: Some(later_at),
            events: vec![NewEvent::deployment(later_at, DeploymentStatus::InProgress, "two")],
            progressed: true,
            ..ProgressUpdate::default()
        };
        recorder::merge(&mut earlier, later);
        assert_eq!(earlier.now, Some(later_at), "the later time wins");
        let messages: Vec<&str> = earlier.events.iter().map(|e| e.message.as_str()).collect();
        assert_eq!(messages, ["one", "two"], "events keep their order");
        assert!(earlier.progressed, "progress is kept once made");
    }

    #[test]
    fn an_executors_answer_is_scrubbed_of_the_secrets_of_its_call() {
        let mut secrets = ResolvedSecrets::new();
        secrets.insert("TOKEN".into(), SecretValue::new("tok-7f3a9c"));
        let ok = scrubbed(Ok(Outcome::with_output("logged in with tok-7f3a9c")), &secrets).unwrap();
        assert!(!ok.output.contains("tok-7f3a9c"), "{}", ok.output);
        let err = scrubbed::<Outcome>(Err(ExecutorError::retryable("401 for tok-7f3a9c")), &secrets).unwrap_err();
        assert!(!err.message().contains("tok-7f3a9c"), "{}", err.message());
        assert_eq!(err.class(), crate::executor::ErrorClass::Retryable, "the class is kept");
    }
}
