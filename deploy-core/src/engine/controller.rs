//! The controller loop and event watching.

use std::collections::VecDeque;
use std::sync::Arc;

use futures::Stream;
use tokio::sync::watch;
use tokio::task::JoinSet;

use super::Shared;
use super::runner;
use crate::error::Error;
use crate::event::Event;
use crate::names::DeploymentId;

/// Tells a controller to stop: the [`ShutdownTrigger`] side fires it, every clone of the signal sees it.
#[derive(Debug, Clone)]
pub struct ShutdownSignal {
    /// `None` for a signal that never fires.
    rx: Option<watch::Receiver<bool>>,
}

/// Fires a [`ShutdownSignal`]. Clones fire the same signal. Dropping every trigger does not fire it: a signal whose
/// triggers are all gone never fires (so `let (_, signal) = ShutdownSignal::new()` is a signal that runs forever, not
/// one that stops at once).
#[derive(Debug, Clone)]
#[must_use = "the signal fires only through its trigger"]
pub struct ShutdownTrigger {
    tx: watch::Sender<bool>,
}

impl ShutdownTrigger {
    /// Fires the signal.
    pub fn fire(&self) {
        self.tx.send_replace(true);
    }
}

impl ShutdownSignal {
    /// A signal and its trigger.
    pub fn new() -> (ShutdownTrigger, Self) {
        let (tx, rx) = watch::channel(false);
        (ShutdownTrigger { tx }, Self { rx: Some(rx) })
    }

    /// A signal that never fires.
    #[must_use]
    pub fn never() -> Self {
        Self { rx: None }
    }

    /// Whether it has fired.
    #[must_use]
    pub fn is_fired(&self) -> bool {
        self.rx.as_ref().is_some_and(|rx| *rx.borrow())
    }

    /// Completes when the signal fires. A signal whose triggers were all dropped without firing never completes.
    pub async fn fired(&mut self) {
        let Some(rx) = self.rx.as_mut() else {
            return std::future::pending().await;
        };
        while !*rx.borrow_and_update() {
            if rx.changed().await.is_err() {
                // Every trigger is gone and none fired: nothing can fire it any more.
                return std::future::pending().await;
            }
        }
    }
}

pub(super) async fn run(shared: Arc<Shared>, mut shutdown: ShutdownSignal) {
    let mut running: JoinSet<()> = JoinSet::new();
    let mut changed = shared.changed.subscribe();
    tracing::info!(owner = %shared.config.owner, "controller started");
    let mut next_purge = shared.clock.now();
    loop {
        if shutdown.is_fired() {
            break;
        }
        let now = shared.clock.now();
        if now >= next_purge {
            match shared.store.purge_idempotency_keys(now).await {
                Ok(n) if n > 0 => tracing::info!(purged = n, "forgot expired idempotency keys"),
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "could not purge idempotency keys; trying again later"),
            }
            next_purge = crate::clock::add(now, shared.config.purge_interval);
        }
        while running.len() < shared.config.max_concurrent_deployments.max(1) {
            let now = shared.clock.now();
            match shared.store.claim(&shared.config.owner, now, shared.config.lease).await {
                Ok(Some(claim)) => {
                    let task_shared = Arc::clone(&shared);
                    let signal = shutdown.clone();
                    running.spawn(async move { runner::drive(task_shared, claim, signal).await });
                }
                Ok(None) => break,
                Err(e) => {
                    tracing::warn!(error = %e, "claim failed; retrying after the poll interval");
                    break;
                }
            }
        }
        let poll = shared.clock.sleep(shared.config.poll_interval);
        tokio::select! {
            () = shutdown.fired() => break,
            Some(done) = running.join_next(), if !running.is_empty() => {
                // Executor panics are caught at each call; a panic here is the engine's own, and never silent.
                if let Err(e) = done {
                    tracing::error!(error = %e, "a deployment's driver panicked; its lease lapses and another claim resumes it");
                }
            }
            Ok(()) = changed.changed() => {}
            () = poll => {}
        }
    }
    // Drivers see the same signal, stop at their next await, and release their leases.
    while let Some(done) = running.join_next().await {
        if let Err(e) = done {
            tracing::error!(error = %e, "a deployment's driver panicked");
        }
    }
    tracing::info!(owner = %shared.config.owner, "controller stopped");
}

struct WatchState {
    shared: Arc<Shared>,
    id: DeploymentId,
    after: u64,
    buffer: VecDeque<Event>,
    done: bool,
    changed: watch::Receiver<u64>,
}

pub(super) fn watch(
    shared: Arc<Shared>,
    id: DeploymentId,
    after: u64,
) -> impl Stream<Item = Result<Event, Error>> + Send + 'static {
    let changed = shared.changed.subscribe();
    let state = WatchState { shared, id, after, buffer: VecDeque::new(), done: false, changed };
    futures::stream::unfold(state, |mut st| async move {
        loop {
            if let Some(event) = st.buffer.pop_front() {
                st.after = event.seq;
                if event.event_type.is_terminal() {
                    st.done = true;
                    st.buffer.clear();
                }
                return Some((Ok(event), st));
            }
            if st.done {
                return None;
            }
            // Mark the current version seen before reading, so a write after the read wakes us.
            st.changed.borrow_and_update();
            match st.shared.store.events(st.id, st.after, 500).await {
                Ok(events) if !events.is_empty() => st.buffer.extend(events),
                Ok(_) => {
                    // A watcher that resumes after the terminal event has nothing more to wait for.
                    if st.after > 0 {
                        match st.shared.store.events(st.id, st.after - 1, 1).await {
                            Ok(last) if last.first().is_some_and(|e| e.event_type.is_terminal()) => return None,
                            Ok(_) => {}
                            Err(e) => {
                                st.done = true;
                                return Some((Err(Error::Store(e)), st));
                            }
                        }
                    }
                    let poll = st.shared.clock.sleep(st.shared.config.watch_poll_interval);
                    tokio::select! {
                        _ = st.changed.changed() => {}
                        () = poll => {}
                    }
                }
                Err(e) => {
                    st.done = true;
                    return Some((Err(Error::Store(e)), st));
                }
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::ShutdownSignal;

    #[tokio::test(start_paused = true)]
    async fn a_dropped_trigger_does_not_fire_its_signal_and_a_fired_one_does() {
        let (trigger, mut signal) = ShutdownSignal::new();
        drop(trigger);
        assert!(!signal.is_fired());
        let waited = tokio::time::timeout(Duration::from_secs(3600), signal.fired()).await;
        assert!(waited.is_err(), "dropping the trigger is not firing it");

        let (trigger, mut signal) = ShutdownSignal::new();
        let clone = trigger.clone();
        drop(trigger);
        clone.fire();
        assert!(tokio::time::timeout(Duration::from_secs(1), signal.fired()).await.is_ok(), "a fired trigger fires it");
        assert!(signal.is_fired());
    }
}
