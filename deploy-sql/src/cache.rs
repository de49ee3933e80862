//! Reads of deployments served from memory where that cannot mislead.
//!
//! - A finished deployment never changes again (the store refuses every write to it), so it is kept as long as there
//!   is room: coherent across replicas.
//! - A deployment in progress is kept for [`RECENT_TTL`] after it was read, and forgotten at once by every write this
//!   store makes to it. Reads through one store (one `deployd` on SQLite) therefore always see its own writes; a write
//!   by another replica (PostgreSQL) shows within [`RECENT_TTL`]. A write that lands while a read is loading makes
//!   that read skip the cache (an epoch counter), so a stale copy is never stored after the write that outdated it.

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use deploy_core::{Deployment, DeploymentId};

/// How long a deployment in progress may be served from memory.
pub const RECENT_TTL: Duration = Duration::from_millis(100);

/// Entries kept at most in each map; past this the map starts over.
const CAPACITY: usize = 1024;
/// Deployments larger than this are never kept.
const MAX_TARGETS: usize = 1024;

#[derive(Default)]
struct Inner {
    finished: HashMap<DeploymentId, Deployment>,
    recent: HashMap<DeploymentId, (Deployment, Instant)>,
    epoch: u64,
}

/// The cache; cheap to share.
#[derive(Default)]
pub(crate) struct ReadCache {
    inner: Mutex<Inner>,
}

impl std::fmt::Debug for ReadCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReadCache").finish_non_exhaustive()
    }
}

impl ReadCache {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A copy to serve, if there is a usable one; else the epoch to pass to [`ReadCache::put`] after loading.
    pub(crate) fn get(&self, id: DeploymentId) -> Result<Deployment, u64> {
        let inner = self.lock();
        if let Some(d) = inner.finished.get(&id) {
            return Ok(d.clone());
        }
        match inner.recent.get(&id) {
            Some((d, at)) if at.elapsed() < RECENT_TTL => Ok(d.clone()),
            _ => Err(inner.epoch),
        }
    }

    /// Keeps what was just loaded, unless a write happened since `epoch`.
    pub(crate) fn put(&self, deployment: &Deployment, epoch: u64) {
        if deployment.targets().len() > MAX_TARGETS {
            return;
        }
        let mut inner = self.lock();
        if deployment.status().is_terminal() {
            if inner.finished.len() >= CAPACITY {
                inner.finished.clear();
            }
            inner.finished.insert(deployment.id(), deployment.clone());
        } else if inner.epoch == epoch {
            if inner.recent.len() >= CAPACITY {
                inner.recent.clear();
            }
            inner.recent.insert(deployment.id(), (deployment.clone(), Instant::now()));
        }
    }

    /// A write to `id` is about to happen or has happened.
    pub(crate) fn forget(&self, id: DeploymentId) {
        let mut inner = self.lock();
        inner.recent.remove(&id);
        inner.epoch = inner.epoch.wrapping_add(1);
    }

    /// Writes to deployments this store cannot name one by one (superseded ones).
    pub(crate) fn forget_all(&self) {
        let mut inner = self.lock();
        inner.recent.clear();
        inner.epoch = inner.epoch.wrapping_add(1);
    }
}
