//! Live event streams (SSE), bounded and shared: at most so many open at once, in total and per principal (429
//! beyond), and one store poll per deployment however many streams follow it.
//!
//! Each deployment being watched has one *feed*: a task that follows the store (the orchestrator's own watch, woken by
//! local writes and polling otherwise) and broadcasts each new event. A stream first reads what it missed from the
//! store once (resuming after `Last-Event-ID`), then follows the feed, skipping what it already sent; a stream that
//! falls behind the broadcast reads the gap from the store again. The feed ends after the terminal event, or when its
//! last stream goes away.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use deploy_core::{DeploymentId, Error, Event, Orchestrator, Principal};
use futures::{Stream, StreamExt as _};
use tokio::sync::broadcast;

/// Events a feed holds for streams that are behind; a stream further behind reads from the store.
const FEED_CAPACITY: usize = 1024;

/// Events one catch-up read fetches.
const PAGE: usize = 500;

/// Open streams and live feeds.
pub(crate) struct Streams {
    max_total: usize,
    max_per_principal: usize,
    inner: Arc<Mutex<Inner>>,
}

#[derive(Default)]
struct Inner {
    total: usize,
    per_principal: HashMap<String, usize>,
    feeds: HashMap<DeploymentId, broadcast::Sender<Event>>,
}

fn lock(m: &Mutex<Inner>) -> MutexGuard<'_, Inner> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Why a stream was not opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refused {
    /// The server holds as many streams as it allows.
    Total(usize),
    /// This principal holds as many as it may.
    Principal(usize),
}

/// One open stream's place; given back when the stream is dropped.
pub(crate) struct Permit {
    inner: Arc<Mutex<Inner>>,
    principal: String,
}

impl Drop for Permit {
    fn drop(&mut self) {
        let mut inner = lock(&self.inner);
        inner.total = inner.total.saturating_sub(1);
        if let Some(n) = inner.per_principal.get_mut(&self.principal) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                inner.per_principal.remove(&self.principal);
            }
        }
    }
}

impl Streams {
    pub(crate) fn new(max_total: usize, max_per_principal: usize) -> Self {
        Self { max_total: max_total.max(1), max_per_principal: max_per_principal.max(1), inner: Arc::default() }
    }

    /// A place for one more stream of `principal`, if the caps allow it.
    pub(crate) fn open(&self, principal: &Principal) -> Result<Permit, Refused> {
        let mut inner = lock(&self.inner);
        let mine = inner.per_principal.get(principal.id()).copied().unwrap_or(0);
        if mine >= self.max_per_principal {
            return Err(Refused::Principal(self.max_per_principal));
        }
        if inner.total >= self.max_total {
            return Err(Refused::Total(self.max_total));
        }
        inner.total += 1;
        inner.per_principal.insert(principal.id().to_owned(), mine + 1);
        Ok(Permit { inner: Arc::clone(&self.inner), principal: principal.id().to_owned() })
    }

    /// Feeds running now (one per deployment being streamed).
    #[cfg(test)]
    pub(crate) fn feeds(&self) -> usize {
        lock(&self.inner).feeds.len()
    }

    /// The events of `id` after `after`, live, ending after the terminal event. `principal` must already have been
    /// allowed to read the deployment.
    pub(crate) fn follow(
        &self,
        orchestrator: &Orchestrator,
        principal: &Principal,
        id: DeploymentId,
        after: u64,
        permit: Permit,
    ) -> impl Stream<Item = Result<Event, Error>> + Send + 'static {
        let live = self.subscribe(orchestrator, id, after);
        let state = Follow {
            orchestrator: orchestrator.clone(),
            principal: principal.clone(),
            id,
            after,
            backlog: VecDeque::new(),
            caught_up: false,
            live,
            done: false,
            _permit: permit,
        };
        futures::stream::unfold(state, |mut st| async move {
            loop {
                if st.done {
                    return None;
                }
                if let Some(event) = st.backlog.pop_front() {
                    return Some((Ok(st.sent(event)), st));
                }
                if !st.caught_up {
                    match st.orchestrator.events(&st.principal, st.id, st.after, PAGE).await {
                        Ok(events) if !events.is_empty() => st.backlog.extend(events),
                        Ok(_) => st.caught_up = true,
                        Err(e) => {
                            st.done = true;
                            return Some((Err(e), st));
                        }
                    }
                    continue;
                }
                match st.live.recv().await {
                    Ok(event) if event.seq <= st.after => {}
                    Ok(event) => return Some((Ok(st.sent(event)), st)),
                    // Behind the feed: read the gap from the store.
                    Err(broadcast::error::RecvError::Lagged(_)) => st.caught_up = false,
                    // The feed ended (terminal event sent, or a store error): whatever is left is in the store.
                    Err(broadcast::error::RecvError::Closed) => {
                        match st.orchestrator.events(&st.principal, st.id, st.after, PAGE).await {
                            Ok(events) if !events.is_empty() => st.backlog.extend(events),
                            Ok(_) => return None,
                            Err(e) => {
                                st.done = true;
                                return Some((Err(e), st));
                            }
                        }
                    }
                }
            }
        })
    }

    /// Joins the feed of `id`, starting one (from `after`) if none runs.
    fn subscribe(&self, orchestrator: &Orchestrator, id: DeploymentId, after: u64) -> broadcast::Receiver<Event> {
        let mut inner = lock(&self.inner);
        if let Some(tx) = inner.feeds.get(&id) {
            return tx.subscribe();
        }
        let (tx, rx) = broadcast::channel(FEED_CAPACITY);
        inner.feeds.insert(id, tx.clone());
        drop(inner);
        let (feeds, orchestrator) = (Arc::clone(&self.inner), orchestrator.clone());
        tokio::spawn(async move {
            let system = Principal::system("deployd:event-feed");
            match orchestrator.watch(&system, id, after).await {
                Ok(mut events) => {
                    let mut check = tokio::time::interval(std::time::Duration::from_secs(1));
                    loop {
                        let next = tokio::select! {
                            next = events.next() => next,
                            _ = check.tick() => {
                                let mut inner = lock(&feeds);
                                if tx.receiver_count() == 0 {
                                    inner.feeds.remove(&id);
                                    return;
                                }
                                continue;
                            }
                        };
                        let Some(Ok(event)) = next else { break };
                        let terminal = event.event_type.is_terminal();
                        // Nobody listens any more: stop polling (under the lock, so nobody joins meanwhile).
                        if tx.send(event).is_err() {
                            let mut inner = lock(&feeds);
                            if tx.receiver_count() == 0 {
                                inner.feeds.remove(&id);
                                return;
                            }
                        }
                        if terminal {
                            break;
                        }
                    }
                }
                Err(e) => tracing::debug!(error = %e, %id, "event feed could not start"),
            }
            lock(&feeds).feeds.remove(&id);
        });
        rx
    }
}

struct Follow {
    orchestrator: Orchestrator,
    principal: Principal,
    id: DeploymentId,
    after: u64,
    backlog: VecDeque<Event>,
    caught_up: bool,
    live: broadcast::Receiver<Event>,
    done: bool,
    _permit: Permit,
}

impl Follow {
    fn sent(&mut self, event: Event) -> Event {
        self.after = event.seq;
        if event.event_type.is_terminal() {
            self.done = true;
        }
        event
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use deploy_core::{ConcurrencyPolicy, EnvironmentPattern, Role};
    use deploy_testkit::fixtures::{Harness, request};

    use super::*;

    fn principal(id: &str) -> Principal {
        Principal::new(id, Role::Viewer, vec![EnvironmentPattern::any()])
    }

    #[test]
    fn streams_are_capped_per_principal_and_in_total() {
        let streams = Streams::new(2, 1);
        let a = streams.open(&principal("a")).unwrap();
        assert_eq!(streams.open(&principal("a")).err(), Some(Refused::Principal(1)));
        let _b = streams.open(&principal("b")).unwrap();
        assert_eq!(streams.open(&principal("c")).err(), Some(Refused::Total(2)));
        drop(a);
        assert!(streams.open(&principal("c")).is_ok(), "a closed stream gives its place back");
    }

    #[tokio::test(start_paused = true)]
    async fn every_stream_of_a_deployment_shares_one_feed_and_misses_nothing() {
        let h = Harness::new("prod", &[("a", Some("1.0")), ("b", Some("1.0"))], ConcurrencyPolicy::Queue).await;
        let deployment = h.submit(request("prod", "checkout", "2.0")).await.unwrap();
        let id = deployment.id();
        let streams = Streams::new(10, 10);
        let viewer = principal("viewer");
        let follow = |after| {
            let permit = streams.open(&viewer).unwrap();
            streams.follow(&h.orchestrator, &viewer, id, after, permit).collect::<Vec<_>>()
        };
        let (first, second, from_two) = (follow(0), follow(0), follow(2));
        assert_eq!(streams.feeds(), 1, "one store poll for the three streams");
        let (first, second, from_two, ()) = tokio::join!(first, second, from_two, h.settle());
        let all = h.events(id).await;
        let seqs =
            |events: Vec<Result<Event, Error>>| -> Vec<u64> { events.into_iter().map(|e| e.unwrap().seq).collect() };
        let expected: Vec<u64> = all.iter().map(|e| e.seq).collect();
        assert!(all.last().unwrap().event_type.is_terminal() && expected.len() > 3, "{expected:?}");
        assert_eq!(seqs(first), expected);
        assert_eq!(seqs(second), expected);
        assert_eq!(seqs(from_two), expected.iter().copied().filter(|s| *s > 2).collect::<Vec<_>>(), "resumes");
        tokio::time::sleep(std::time::Duration::from_secs(2)).await;
        assert_eq!(streams.feeds(), 0, "the feed ends with its deployment");
    }
}
