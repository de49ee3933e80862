//! The `Recorder`: a claimed deployment's mirror of its stored record, through which every write goes (batched, fenced by the lease), and `merge` of updates waiting to be written.

use super::*;

pub(super) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The holder's view of its deployment: a mirror of the stored record kept in step with every write.
///
/// Target changes are buffered and written together (group commit), which turns the thousands of small writes of a
/// large batch into a few transactions. One rule orders them: a batch's *intents* (each target about to change, with
/// what it ran before) are flushed before any of its targets is touched, so a successor that resumes after a crash knows
/// what to restore. *Results* (verifying, succeeded, failed, a step's output) go out with the next write or when the
/// runner next waits; losing them in a crash only means the successor re-applies (idempotently) and re-verifies.
pub(super) struct Recorder<'a> {
    pub(super) shared: &'a Shared,
    pub(super) lease: Mutex<Lease>,
    /// Until when the lease is known to be held, on both clocks; see [`Recorder::fence`].
    pub(super) valid: tokio::sync::watch::Sender<Validity>,
    /// Asks the renewal task to renew now (a call found too little of the lease left).
    pub(super) renew_now: tokio::sync::Notify,
    pub(super) local: Mutex<Deployment>,
    pub(super) control: Mutex<Control>,
    pub(super) buffered: Mutex<Option<ProgressUpdate>>,
    /// Signalled when a result is buffered while the runner waits, so it is written promptly.
    pub(super) result_waiting: tokio::sync::Notify,
    /// Signalled when a write or renewal brings news of a request (cancel, supersede, an operator's), so a paused
    /// runner looks again at once.
    pub(super) control_changed: tokio::sync::Notify,
}

impl<'a> Recorder<'a> {
    pub(super) fn new(shared: &'a Shared, lease: Lease, deployment: Deployment) -> Self {
        let control = Control::of(&deployment);
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
            control_changed: tokio::sync::Notify::new(),
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
    pub(super) async fn fence(&self) -> u64 {
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

    pub(super) fn merge(&self, c: Control) {
        let changed = {
            let mut mine = lock(&self.control);
            let before = *mine;
            mine.cancel_requested |= c.cancel_requested;
            if c.superseded_by.is_some() {
                mine.superseded_by = c.superseded_by;
            }
            mine.operator.merge(c.operator);
            before != *mine
        };
        if changed {
            self.control_changed.notify_one();
        }
    }

    /// The operator requests known so far.
    pub(super) fn controls(&self) -> crate::control::Controls {
        lock(&self.control).operator
    }

    /// Applies `update` to the mirror, refusing what the record does not allow.
    pub(super) fn mirror(&self, update: &ProgressUpdate) -> Result<(), Abort> {
        lock(&self.local).apply(update).map_err(|e| {
            tracing::error!(error = %e, "refusing an update the record does not allow");
            Abort::Store(StoreError::Update(e))
        })
    }

    /// Writes `update` now, together with every buffered result before it.
    pub(super) async fn write(&self, update: ProgressUpdate) -> Result<(), Abort> {
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
    pub(super) async fn flush(&self) -> Result<(), Abort> {
        let pending = lock(&self.buffered).take();
        match pending {
            Some(update) => self.send(update).await,
            None => Ok(()),
        }
    }

    pub(super) async fn send(&self, update: ProgressUpdate) -> Result<(), Abort> {
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

    pub(super) fn now(&self) -> crate::clock::Timestamp {
        self.shared.clock.now()
    }

    pub(super) fn target(&self, index: usize) -> Option<TargetProgress> {
        lock(&self.local).targets().get(index).cloned()
    }

    pub(super) fn with<R>(&self, f: impl FnOnce(&Deployment) -> R) -> R {
        f(&lock(&self.local))
    }

    /// Mirrors a target's new entry, then appends it with its event and observation to `update`.
    pub(super) fn push_target(
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

    /// Tells the observer that an executor call for `target` panicked.
    pub(super) fn executor_panicked(&self, target: &TargetId) {
        if let Some(observer) = self.shared.observer.as_ref() {
            observer.executor_panicked(self.with(|d| d.id()), target);
        }
    }

    /// Records a target's change: buffered, written with the next write, when the runner next waits, or at the
    /// barrier between a batch's two phases (intents must be durable before any target of the batch is touched).
    pub(super) fn result(
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

    pub(super) async fn set_status(&self, status: DeploymentStatus, reason: String) -> Result<(), Abort> {
        let now = self.now();
        self.write(self.status_update(status, reason, now)).await
    }

    /// The write of a status change, with its event.
    pub(super) fn status_update(
        &self,
        status: DeploymentStatus,
        reason: String,
        now: crate::clock::Timestamp,
    ) -> ProgressUpdate {
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
    pub(super) fn stop_reason(&self) -> Option<(DeploymentStatus, String)> {
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
pub(super) fn merge(earlier: &mut ProgressUpdate, later: ProgressUpdate) {
    if later.now.is_some() {
        earlier.now = later.now;
    }
    if later.status.is_some() {
        earlier.status = later.status;
        earlier.awaiting_promotion = later.awaiting_promotion;
        earlier.hold_until = later.hold_until;
    }
    earlier.targets.extend(later.targets);
    earlier.events.extend(later.events);
    earlier.observations.extend(later.observations);
    earlier.progressed |= later.progressed;
}
