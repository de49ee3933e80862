//! Group commit: concurrent acceptances, audit entries and agent reports of one process share one transaction, hence
//! one sync.
//!
//! Acceptances into one environment are serialized by design (each bumps its revision), and every durable commit
//! waits for a sync (SQLite's WAL, PostgreSQL's WAL flush), so N concurrent writers would pay N syncs and N lock
//! hand-overs one after another. Here the first writer to arrive becomes the leader (on a task of its own, so a caller
//! that gives up cannot strand the queue): it takes every write queued so far, runs each inside its own savepoint of
//! one transaction (`BEGIN IMMEDIATE` on SQLite) (a refused acceptance rolls back to its savepoint and leaves the others alone),
//! commits once, and answers each caller. Nobody is answered before the commit that makes their write durable.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use deploy_core::{
    Acceptance, Accepted, AgentReport, AgentSlot, AuditEntry, DeploymentId, DesiredState, EnvironmentName, StoreError,
    TargetId, Timestamp,
};
use sqlx::AnyConnection;
use tokio::sync::oneshot;

use crate::store::{Optimistic, SqlStore};

/// The most writes one transaction takes; the rest wait for the next one.
const MAX_BATCH: usize = 256;

/// A write that can share a transaction.
pub(crate) enum Write {
    /// [`deploy_core::Store::accept`].
    Accept(Box<Acceptance>),
    /// [`deploy_core::AuditLog::append_audit`].
    Audit(Box<AuditEntry>),
    /// [`deploy_core::AgentStore::assign_agent`] or [`deploy_core::AgentStore::record_agent_report`].
    Agent(Box<AgentChange>),
}

/// A change to an agent slot.
pub(crate) struct AgentChange {
    pub(crate) environment: EnvironmentName,
    pub(crate) target: TargetId,
    pub(crate) change: AgentUpdate,
}

/// What changes in the slot.
pub(crate) enum AgentUpdate {
    /// A new assignment.
    Assign(DesiredState, DeploymentId, u64, Timestamp),
    /// A report (heartbeat).
    Report(AgentReport, Timestamp),
}

impl AgentChange {
    pub(crate) fn apply(self, slot: &mut AgentSlot) {
        match self.change {
            AgentUpdate::Assign(desired, deployment, token, now) => slot.assign(desired, deployment, token, now),
            AgentUpdate::Report(report, now) => slot.record(report, now),
        }
    }
}

/// What a write produced.
pub(crate) enum Written {
    /// An acceptance (or a replay).
    Accepted(Box<Accepted>),
    /// An audit entry.
    Appended,
    /// An agent slot as it is now.
    Agent(Box<AgentSlot>),
}

type Reply = oneshot::Sender<Result<Written, StoreError>>;

#[derive(Default)]
struct Queue {
    writes: Vec<(Write, Reply)>,
    leading: bool,
}

/// The queue of writes waiting for a transaction.
#[derive(Default)]
pub(crate) struct Group {
    queue: Mutex<Queue>,
    transactions: AtomicU64,
    writes: AtomicU64,
}

impl std::fmt::Debug for Group {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Group").finish_non_exhaustive()
    }
}

/// If a leader ever unwinds, the next writer leads: queued writes are not stranded behind a flag nobody clears.
struct ResetOnPanic<'a>(&'a Group);

impl Drop for ResetOnPanic<'_> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.0.lock().leading = false;
        }
    }
}

impl Group {
    fn lock(&self) -> MutexGuard<'_, Queue> {
        self.queue.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl SqlStore {
    /// Queues `write` for the next group transaction and waits until it is committed (or refused).
    pub(crate) async fn grouped(&self, write: Write) -> Result<Written, StoreError> {
        let (reply, answer) = oneshot::channel();
        let lead = {
            let mut queue = self.group().lock();
            queue.writes.push((write, reply));
            !std::mem::replace(&mut queue.leading, true)
        };
        if lead {
            let store = self.clone();
            tokio::spawn(async move { store.lead().await });
        }
        answer.await.map_err(|_| StoreError::Unavailable("the group commit task stopped".into()))?
    }

    /// Commits queued writes, batch after batch, until the queue is empty.
    async fn lead(&self) {
        let _reset = ResetOnPanic(self.group());
        loop {
            let batch = {
                let mut queue = self.group().lock();
                if queue.writes.is_empty() {
                    queue.leading = false;
                    return;
                }
                let n = queue.writes.len().min(MAX_BATCH);
                queue.writes.drain(..n).collect::<Vec<_>>()
            };
            self.commit_batch(batch).await;
        }
    }

    /// How many group transactions committed, and how many writes the group handled (refused ones included).
    pub fn group_commits(&self) -> (u64, u64) {
        (self.group().transactions.load(Ordering::Relaxed), self.group().writes.load(Ordering::Relaxed))
    }

    async fn commit_batch(&self, mut batch: Vec<(Write, Reply)>) {
        if batch.len() == 1 {
            // Nobody to share with: the write's own fastest path (one autocommitted statement when it can).
            if let Some((write, reply)) = batch.pop() {
                let result = match write {
                    Write::Accept(acceptance) => {
                        self.accept_alone(*acceptance).await.map(|a| Written::Accepted(Box::new(a)))
                    }
                    Write::Audit(entry) => self.append_audit_alone(&entry).await.map(|()| Written::Appended),
                    Write::Agent(change) => {
                        self.change_agent_alone(*change).await.map(|slot| Written::Agent(Box::new(slot)))
                    }
                };
                // A refusal is handled by the group too, though it commits nothing.
                self.group().writes.fetch_add(1, Ordering::Relaxed);
                if result.is_ok() {
                    self.group().transactions.fetch_add(1, Ordering::Relaxed);
                }
                let _ = reply.send(result);
            }
            return;
        }
        let mut tx = match self.begin().await {
            Ok(tx) => tx,
            Err(e) => {
                let message = e.to_string();
                for (_, reply) in batch {
                    let _ = reply.send(Err(StoreError::Unavailable(message.clone().into())));
                }
                return;
            }
        };
        let mut results = Vec::with_capacity(batch.len());
        let mut audits = Vec::new();
        let mut locking = false;
        // A database error part-way through a write may leave half of it in the transaction: then nothing commits.
        let mut broken: Option<String> = None;
        for (write, reply) in batch {
            let result = match write {
                Write::Audit(entry) => {
                    audits.push(*entry);
                    Ok(Written::Appended)
                }
                Write::Accept(acceptance) => self
                    .accept_grouped(&mut tx, *acceptance, &mut locking)
                    .await
                    .map(|a| Written::Accepted(Box::new(a))),
                Write::Agent(change) => {
                    self.change_agent_on(&mut tx, *change).await.map(|slot| Written::Agent(Box::new(slot)))
                }
            };
            if let Err(e @ (StoreError::Unavailable(_) | StoreError::Corrupt(_))) = &result {
                broken.get_or_insert_with(|| e.to_string());
            }
            results.push((result, reply));
        }
        if broken.is_none()
            && !audits.is_empty()
            && let Err(e) = self.insert_audits(&mut tx, &audits).await
        {
            broken = Some(e.to_string());
        }
        let committed = match broken {
            None => tx.commit().await.map_err(|e| e.to_string()),
            Some(why) => Err(why),
        };
        if committed.is_ok() && locking {
            // The locking path may have superseded older deployments.
            self.forget_cached_reads();
        }
        self.group().writes.fetch_add(results.len() as u64, Ordering::Relaxed);
        if committed.is_ok() {
            self.group().transactions.fetch_add(1, Ordering::Relaxed);
        }
        for (result, reply) in results {
            let answer = match (&committed, result) {
                (Ok(()), result) => result,
                // Nothing of the batch is durable: every caller learns that its write may be retried.
                (Err(why), Ok(_)) => Err(StoreError::Unavailable(why.clone().into())),
                (Err(_), Err(refused)) => Err(refused),
            };
            let _ = reply.send(answer);
        }
    }

    /// One acceptance inside the group's transaction. The optimistic statement first: it refuses or replays before
    /// writing anything, and a race makes it change nothing, so on SQLite it needs no savepoint (PostgreSQL aborts the
    /// whole transaction on any failed statement, so there it runs in one). Other cases take the locking path inside a
    /// savepoint, rolled back on a refusal or a replay.
    async fn accept_grouped(
        &self,
        conn: &mut AnyConnection,
        acceptance: Acceptance,
        locking: &mut bool,
    ) -> Result<Accepted, StoreError> {
        let guarded = self.backend() == crate::Backend::Postgres;
        for attempt in 0..3 {
            if guarded {
                exec(conn, "SAVEPOINT deploy_write").await?;
            }
            let outcome = self.accept_optimistic_on(conn, &acceptance, attempt == 0).await;
            if guarded {
                let keep = matches!(&outcome, Ok(Optimistic::Done(a)) if !a.replayed);
                if !keep {
                    exec(conn, "ROLLBACK TO deploy_write").await?;
                }
                exec(conn, "RELEASE deploy_write").await?;
            }
            match outcome? {
                Optimistic::Done(accepted) => return Ok(*accepted),
                Optimistic::Locking => break,
                Optimistic::Raced => {}
            }
        }
        // The locking path changes what the optimistic path's snapshot knows.
        self.forget_snapshot(acceptance.draft.spec.environment());
        *locking = true;
        exec(conn, "SAVEPOINT deploy_write").await?;
        let result = self.accept_in(conn, acceptance).await;
        if !matches!(&result, Ok(a) if !a.replayed) {
            exec(conn, "ROLLBACK TO deploy_write").await?;
        }
        exec(conn, "RELEASE deploy_write").await?;
        result
    }
}

async fn exec(conn: &mut AnyConnection, sql: &'static str) -> Result<(), StoreError> {
    sqlx::query(sql).execute(&mut *conn).await.map(drop).map_err(|e| StoreError::Unavailable(Box::new(e)))
}

/// A shared, empty queue.
pub(crate) fn new() -> Arc<Group> {
    Arc::new(Group::default())
}
