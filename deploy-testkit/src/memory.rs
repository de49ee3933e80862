//! [`MemoryStore`]: a complete, correct [`Store`] in memory, the reference the SQL stores are compared with.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use async_trait::async_trait;
use deploy_core::{
    Acceptance, Accepted, AgentStore, ApiKeyRecord, AuditEntry, AuditFilter, AuditLog, Claim, Control, DeliveryOutcome,
    DeliveryStatus, Deployment, DeploymentFilter, DeploymentId, DeploymentStatus, Environment, EnvironmentName,
    EnvironmentSpec, EnvironmentWrite, Event, Fingerprint, IdempotencyKey, KeyStore, Lease, Page, PageRequest,
    ProgressUpdate, Revision, Store, StoreError, Timestamp, UpdateError, ValidationErrors, WebhookDelivery,
    WebhookStore, WebhookSubscription, add_duration,
};
use uuid::Uuid;

/// A complete [`Store`] in memory. Every method holds one lock for its whole duration, so each is atomic, and the
/// contract's guarantees hold exactly as they must in a database. Nothing survives the process; that is the only
/// difference from the SQL stores.
#[derive(Debug, Default)]
pub struct MemoryStore {
    inner: Mutex<Inner>,
    records: std::sync::atomic::AtomicU64,
}

/// FNV-1a: the maps below are keyed by ids this process made or validated, so a fast non-keyed hash is safe here.
#[derive(Debug, Clone, Copy)]
struct Fnv(u64);

impl Default for Fnv {
    fn default() -> Self {
        Self(0xcbf2_9ce4_8422_2325)
    }
}

impl Hasher for Fnv {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = (self.0 ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3);
        }
    }
}

type FastMap<K, V> = HashMap<K, V, BuildHasherDefault<Fnv>>;

#[derive(Debug, Default)]
struct Inner {
    environments: BTreeMap<EnvironmentName, EnvState>,
    deployments: FastMap<DeploymentId, DeploymentState>,
    by_time: BTreeSet<DeploymentId>,
    idempotency: HashMap<(String, IdempotencyKey), KeyState>,
    webhooks: BTreeMap<Uuid, WebhookSubscription>,
    deliveries: BTreeMap<String, DeliveryState>,
    api_keys: BTreeMap<Uuid, ApiKeyRecord>,
    agents: BTreeMap<(String, String), deploy_core::AgentSlot>,
    audit: BTreeMap<Uuid, AuditEntry>,
    freeze: Option<deploy_core::Freeze>,
}

#[derive(Debug)]
struct EnvState {
    environment: Environment,
    index: FastMap<deploy_core::TargetId, usize>,
    /// Non-terminal deployments in acceptance order; the head is the only runnable one.
    pending: VecDeque<DeploymentId>,
}

#[derive(Debug)]
struct DeploymentState {
    deployment: Deployment,
    events: Vec<Event>,
    lease: Option<Lease>,
    token: u64,
    /// Its size as accepted, for submitter quotas.
    accepted_bytes: u64,
}

#[derive(Debug)]
struct KeyState {
    fingerprint: Fingerprint,
    deployment: DeploymentId,
    expires_at: Timestamp,
}

#[derive(Debug)]
struct DeliveryState {
    delivery: WebhookDelivery,
    hidden_until: Option<Timestamp>,
}

impl MemoryStore {
    /// An empty store.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Every lease currently held, for tests that check no deployment has two holders.
    #[must_use]
    pub fn leases(&self) -> Vec<Lease> {
        self.lock().deployments.values().filter_map(|d| d.lease.clone()).collect()
    }

    /// How many times [`Store::record`] was called (successfully or not): how many transactions the engine asked for.
    #[must_use]
    pub fn record_calls(&self) -> u64 {
        self.records.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Changes a target's agent slot (made empty first if it has none); the slot as it is then.
    /// Changes a slot; when `fenced` (a deployment and its lease token), only while that token is the deployment's
    /// current lease and the deployment runs, checked under the same lock.
    fn change_agent_slot(
        &self,
        environment: &EnvironmentName,
        target: &deploy_core::TargetId,
        fenced: Option<(DeploymentId, u64)>,
        change: impl FnOnce(&mut deploy_core::AgentSlot),
    ) -> Result<deploy_core::AgentSlot, StoreError> {
        let mut inner = self.lock();
        if let Some((deployment, token)) = fenced {
            let state = inner.deployments.get(&deployment).ok_or_else(|| not_found("deployment", deployment))?;
            if state.token != token {
                return Err(StoreError::StaleToken { deployment, token });
            }
            let status = state.deployment.status();
            if status.is_terminal() {
                return Err(StoreError::AlreadyFinished { deployment, status });
            }
        }
        let slot = inner
            .agents
            .entry((environment.to_string(), target.to_string()))
            .or_insert_with(|| deploy_core::AgentSlot::new(environment.clone(), target.clone()));
        change(slot);
        Ok(slot.clone())
    }

    /// The number of deployments, of events and of webhook deliveries held.
    #[must_use]
    pub fn sizes(&self) -> (usize, usize, usize) {
        let inner = self.lock();
        let events = inner.deployments.values().map(|d| d.events.len()).sum();
        (inner.deployments.len(), events, inner.deliveries.len())
    }
}

fn not_found(what: &'static str, id: impl ToString) -> StoreError {
    StoreError::NotFound { what, id: id.to_string() }
}

fn lease_live(lease: Option<&Lease>, now: Timestamp) -> bool {
    lease.is_some_and(|l| l.expires_at > now)
}

fn bad_cursor() -> StoreError {
    let mut errs = ValidationErrors::default();
    errs.push("cursor", "not a cursor this store handed out");
    StoreError::Invalid(errs)
}

impl Inner {
    fn view(&self, env: &EnvState) -> Environment {
        let mut e = env.environment.clone();
        e.active_deployment = None;
        e.queued.clear();
        for id in &env.pending {
            let running = self.deployments.get(id).is_some_and(|d| d.deployment.status().is_running());
            if running && e.active_deployment.is_none() {
                e.active_deployment = Some(*id);
            } else {
                e.queued.push(*id);
            }
        }
        e
    }

    /// Applies an update to a deployment and everything that goes with it: events, environment observations,
    /// webhook deliveries, and leaving the environment's queue when terminal.
    fn apply(&mut self, id: DeploymentId, update: ProgressUpdate) -> Result<Control, StoreError> {
        let state = self.deployments.get_mut(&id).ok_or_else(|| not_found("deployment", id))?;
        let (events, observations) = state.deployment.apply_owned(update).map_err(|e| match e {
            UpdateError::AlreadyFinished(status) => StoreError::AlreadyFinished { deployment: id, status },
            other => StoreError::Update(other),
        })?;
        let keep = !self.webhooks.is_empty();
        let mut numbered = Vec::new();
        for event in events {
            let seq = state.events.len() as u64 + 1;
            let e = event.numbered(id, seq);
            if keep {
                numbered.push(e.clone());
            }
            state.events.push(e);
        }
        let control = Control::of(&state.deployment);
        let terminal = state.deployment.status().is_terminal();
        if terminal {
            state.lease = None;
        }
        if terminal || !observations.is_empty() {
            let env_name = state.deployment.environment().clone();
            if let Some(env) = self.environments.get_mut(&env_name) {
                for o in observations {
                    if let Some(t) = env.index.get(&o.target).and_then(|&i| env.environment.targets.get_mut(i)) {
                        if let Some(d) = o.desired {
                            t.desired = Some(d);
                        }
                        if let Some(a) = o.actual {
                            t.actual = Some(a);
                        }
                    }
                }
                if terminal {
                    env.pending.retain(|d| *d != id);
                }
            }
        }
        self.enqueue_deliveries(id, &numbered);
        Ok(control)
    }

    fn enqueue_deliveries(&mut self, id: DeploymentId, events: &[Event]) {
        if self.webhooks.is_empty() || events.is_empty() {
            return;
        }
        let Some(state) = self.deployments.get(&id) else { return };
        let env = state.deployment.environment();
        let mut snapshot = None;
        for event in events {
            for sub in self.webhooks.values().filter(|s| s.matches(event.event_type, env)) {
                let data = snapshot.get_or_insert_with(|| serde_json::to_value(&state.deployment).unwrap_or_default());
                let delivery = WebhookDelivery::pending(sub.id, event, data);
                self.deliveries.insert(delivery.id.clone(), DeliveryState { delivery, hidden_until: None });
            }
        }
    }

    fn check_token(&self, lease: &Lease) -> Result<(), StoreError> {
        let state = self.deployments.get(&lease.deployment).ok_or_else(|| not_found("deployment", lease.deployment))?;
        if state.token != lease.token {
            return Err(StoreError::StaleToken { deployment: lease.deployment, token: lease.token });
        }
        Ok(())
    }
}

#[async_trait]
impl Store for MemoryStore {
    async fn put_environment(
        &self,
        name: &EnvironmentName,
        spec: EnvironmentSpec,
        expected: Option<Revision>,
        _now: Timestamp,
    ) -> Result<EnvironmentWrite, StoreError> {
        let mut inner = self.lock();
        let created = match inner.environments.get_mut(name) {
            Some(env) => {
                if let Some(expected) = expected.filter(|e| *e != env.environment.revision) {
                    return Err(StoreError::PreconditionFailed { expected, current: env.environment.revision });
                }
                env.environment.replace(spec);
                env.index = env.environment.targets.iter().enumerate().map(|(i, t)| (t.id.clone(), i)).collect();
                false
            }
            None => {
                if let Some(expected) = expected.filter(|e| *e != Revision::ZERO) {
                    return Err(StoreError::PreconditionFailed { expected, current: Revision::ZERO });
                }
                let environment = Environment::create(name.clone(), spec);
                let index = environment.targets.iter().enumerate().map(|(i, t)| (t.id.clone(), i)).collect();
                inner.environments.insert(name.clone(), EnvState { environment, index, pending: VecDeque::new() });
                true
            }
        };
        let env = inner.environments.get(name).ok_or_else(|| not_found("environment", name))?;
        Ok(EnvironmentWrite { environment: inner.view(env), created })
    }

    async fn get_environment(&self, name: &EnvironmentName) -> Result<Environment, StoreError> {
        let inner = self.lock();
        let env = inner.environments.get(name).ok_or_else(|| not_found("environment", name))?;
        Ok(inner.view(env))
    }

    async fn list_environments(&self, page: &PageRequest) -> Result<Page<Environment>, StoreError> {
        let inner = self.lock();
        let limit = page.clamped_limit();
        let after = page.cursor.as_deref().map(EnvironmentName::new).transpose().map_err(|_| bad_cursor())?;
        let items: Vec<Environment> = inner
            .environments
            .iter()
            .filter(|(n, _)| after.as_ref().is_none_or(|a| *n > a))
            .take(limit + 1)
            .map(|(_, e)| inner.view(e))
            .collect();
        Ok(Page::from_overfetch(items, limit, |e| e.name.to_string()))
    }

    async fn accept(&self, acceptance: Acceptance) -> Result<Accepted, StoreError> {
        let mut inner = self.lock();
        let env_name = acceptance.draft.spec.environment().clone();
        let now = acceptance.now;
        if !inner.environments.contains_key(&env_name) {
            return Err(not_found("environment", &env_name));
        }
        if let Some(rec) = &acceptance.idempotency {
            let slot = (rec.scope.clone(), rec.key.clone());
            if let Some(existing) = inner.idempotency.get(&slot).filter(|k| k.expires_at > now) {
                rec.check_replay(existing.fingerprint.as_str())?;
                let d = inner
                    .deployments
                    .get(&existing.deployment)
                    .ok_or_else(|| not_found("deployment", existing.deployment))?;
                return Ok(Accepted { deployment: d.deployment.clone(), replayed: true });
            }
        }
        let env = inner.environments.get(&env_name).ok_or_else(|| not_found("environment", &env_name))?;
        Acceptance::check_revision(
            acceptance.expected_revision,
            &env_name,
            env.environment.require_if_match,
            env.environment.revision,
        )?;
        let older: Vec<DeploymentId> = env.pending.iter().copied().collect();
        let Acceptance { draft, idempotency, quota, .. } = acceptance;
        let deployment = Deployment::plan(draft, &env.environment, now).map_err(StoreError::Invalid)?;
        let accepted_bytes = deployment.stored_bytes();
        if let Some(quota) = &quota {
            let (mut open, mut bytes) = (0u64, 0u64);
            let since = quota.since.quota_bucket();
            for state in inner.deployments.values().filter(|s| s.deployment.created_by() == quota.submitter) {
                open += u64::from(!state.deployment.status().is_terminal());
                if state.deployment.id().quota_bucket() >= since {
                    bytes = bytes.saturating_add(state.accepted_bytes);
                }
            }
            quota.check(open, bytes, accepted_bytes)?;
        }
        let superseded = Acceptance::superseding(&env_name, env.environment.concurrency, &older)?;
        let id = deployment.id();
        for old in superseded {
            let Some(state) = inner.deployments.get_mut(&old) else { continue };
            let held = lease_live(state.lease.as_ref(), now);
            if let Some(update) = state.deployment.mark_superseded_by(id, now, held) {
                let _ = inner.apply(old, update)?;
            }
        }
        let env = inner.environments.get_mut(&env_name).ok_or_else(|| not_found("environment", &env_name))?;
        env.environment.revision = env.environment.revision.next();
        env.pending.push_back(id);
        let queued = deployment.queued_event(now);
        inner.by_time.insert(id);
        inner
            .deployments
            .insert(id, DeploymentState { deployment, events: Vec::new(), lease: None, token: 0, accepted_bytes });
        if let Some(rec) = idempotency {
            inner.idempotency.insert(
                (rec.scope, rec.key),
                KeyState { fingerprint: rec.fingerprint, deployment: id, expires_at: rec.expires_at },
            );
        }
        // Record the queued event through the same path as every other change, so its webhooks go out too.
        let state = inner.deployments.get_mut(&id).ok_or_else(|| not_found("deployment", id))?;
        let seq = state.events.len() as u64 + 1;
        let event = queued.numbered(id, seq);
        state.events.push(event.clone());
        let deployment = state.deployment.clone();
        inner.enqueue_deliveries(id, &[event]);
        Ok(Accepted { deployment, replayed: false })
    }

    async fn get_deployment(&self, id: DeploymentId) -> Result<Deployment, StoreError> {
        let inner = self.lock();
        inner.deployments.get(&id).map(|d| d.deployment.clone()).ok_or_else(|| not_found("deployment", id))
    }

    async fn global_freeze(&self) -> Result<Option<deploy_core::Freeze>, StoreError> {
        Ok(self.lock().freeze.clone())
    }

    async fn set_global_freeze(&self, freeze: Option<deploy_core::Freeze>) -> Result<(), StoreError> {
        let mut inner = self.lock();
        if freeze.is_none() {
            for state in inner.deployments.values_mut() {
                if state.deployment.held_until().is_some() {
                    state.deployment.lift_hold();
                }
            }
        }
        inner.freeze = freeze;
        Ok(())
    }

    async fn request(
        &self,
        id: DeploymentId,
        request: &deploy_core::OperatorRequest,
        now: Timestamp,
    ) -> Result<Deployment, StoreError> {
        let mut inner = self.lock();
        let state = inner.deployments.get_mut(&id).ok_or_else(|| not_found("deployment", id))?;
        let held = lease_live(state.lease.as_ref(), now);
        // A refused request leaves the record as it was (`Deployment::request`), so nothing needs undoing.
        let update = state.deployment.request(request, now, held).map_err(|e| StoreError::refused(id, e))?;
        let _ = inner.apply(id, update)?;
        inner.deployments.get(&id).map(|d| d.deployment.clone()).ok_or_else(|| not_found("deployment", id))
    }

    async fn list_deployments(
        &self,
        filter: &DeploymentFilter,
        page: &PageRequest,
    ) -> Result<Page<Deployment>, StoreError> {
        let inner = self.lock();
        let limit = page.clamped_limit();
        let before = page.cursor.as_deref().map(str::parse::<DeploymentId>).transpose().map_err(|_| bad_cursor())?;
        let mut items = Vec::with_capacity(limit + 1);
        for id in inner.by_time.iter().rev() {
            if before.is_some_and(|b| *id >= b) {
                continue;
            }
            if let Some(d) = inner.deployments.get(id).filter(|d| filter.matches(&d.deployment)) {
                items.push(d.deployment.clone());
                if items.len() > limit {
                    break;
                }
            }
        }
        Ok(Page::from_overfetch(items, limit, |d| d.id().to_string()))
    }

    async fn count_deployments(&self, filter: &DeploymentFilter) -> Result<u64, StoreError> {
        Ok(self.lock().deployments.values().filter(|d| filter.matches(&d.deployment)).count() as u64)
    }

    async fn events(&self, id: DeploymentId, after: u64, limit: usize) -> Result<Vec<Event>, StoreError> {
        let inner = self.lock();
        let d = inner.deployments.get(&id).ok_or_else(|| not_found("deployment", id))?;
        let start = usize::try_from(after).unwrap_or(usize::MAX).min(d.events.len());
        Ok(d.events.iter().skip(start).take(limit).cloned().collect())
    }

    async fn request_cancel(&self, id: DeploymentId, now: Timestamp) -> Result<Deployment, StoreError> {
        let mut inner = self.lock();
        let state = inner.deployments.get_mut(&id).ok_or_else(|| not_found("deployment", id))?;
        let status = state.deployment.status();
        if status.is_terminal() {
            return Err(StoreError::AlreadyFinished { deployment: id, status });
        }
        let held = lease_live(state.lease.as_ref(), now);
        if let Some(update) = state.deployment.request_cancel(now, held) {
            let _ = inner.apply(id, update)?;
        }
        inner.deployments.get(&id).map(|d| d.deployment.clone()).ok_or_else(|| not_found("deployment", id))
    }

    async fn claim(&self, owner: &str, now: Timestamp, lease: Duration) -> Result<Option<Claim>, StoreError> {
        let mut inner = self.lock();
        let mut best: Option<DeploymentId> = None;
        for env in inner.environments.values() {
            // The head is the deployment someone holds or that has started, if any; else the oldest other one,
            // passing those awaiting approval that no timer makes due (they never hold approved ones hostage).
            let state_of = |id: &DeploymentId| inner.deployments.get(id);
            let engaged = |id: &&DeploymentId| {
                state_of(id).is_some_and(|s| {
                    lease_live(s.lease.as_ref(), now)
                        || matches!(
                            s.deployment.status(),
                            DeploymentStatus::InProgress | DeploymentStatus::Paused | DeploymentStatus::RollingBack
                        )
                })
            };
            let eligible = |id: &&DeploymentId| {
                state_of(id).is_some_and(|s| {
                    s.deployment.status() != DeploymentStatus::AwaitingApproval
                        || s.deployment.wake_at().is_none_or(|at| at <= now)
                })
            };
            let Some(head) = env.pending.iter().find(engaged).or_else(|| env.pending.iter().find(eligible)) else {
                continue;
            };
            let Some(state) = inner.deployments.get(head) else { continue };
            let held = lease_live(state.lease.as_ref(), now)
                && !state.lease.as_ref().is_some_and(|l| deploy_core::restarted_owner(&l.owner, owner));
            let due = state.deployment.wake_at().is_none_or(|at| at <= now);
            if !state.deployment.status().is_terminal() && !held && due && best.is_none_or(|b| *head < b) {
                best = Some(*head);
            }
        }
        let Some(id) = best else { return Ok(None) };
        let state = inner.deployments.get_mut(&id).ok_or_else(|| not_found("deployment", id))?;
        state.token += 1;
        let granted =
            Lease { deployment: id, owner: owner.to_owned(), token: state.token, expires_at: add_duration(now, lease) };
        state.lease = Some(granted.clone());
        Ok(Some(Claim { deployment: state.deployment.clone(), lease: granted }))
    }

    async fn renew(&self, lease: &Lease, now: Timestamp, duration: Duration) -> Result<(Lease, Control), StoreError> {
        let mut inner = self.lock();
        inner.check_token(lease)?;
        let state =
            inner.deployments.get_mut(&lease.deployment).ok_or_else(|| not_found("deployment", lease.deployment))?;
        let status = state.deployment.status();
        if status.is_terminal() {
            return Err(StoreError::AlreadyFinished { deployment: lease.deployment, status });
        }
        let renewed = Lease { expires_at: add_duration(now, duration), ..lease.clone() };
        state.lease = Some(renewed.clone());
        let control = Control::of(&state.deployment);
        Ok((renewed, control))
    }

    async fn release(&self, lease: &Lease) -> Result<(), StoreError> {
        let mut inner = self.lock();
        inner.check_token(lease)?;
        if let Some(state) = inner.deployments.get_mut(&lease.deployment) {
            state.lease = None;
        }
        Ok(())
    }

    async fn record(&self, lease: &Lease, update: ProgressUpdate) -> Result<Control, StoreError> {
        self.records.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let mut inner = self.lock();
        inner.check_token(lease)?;
        inner.apply(lease.deployment, update)
    }

    async fn purge_idempotency_keys(&self, now: Timestamp) -> Result<u64, StoreError> {
        let mut inner = self.lock();
        let before = inner.idempotency.len();
        inner.idempotency.retain(|_, k| k.expires_at > now);
        Ok((before - inner.idempotency.len()) as u64)
    }
}

#[async_trait]
impl WebhookStore for MemoryStore {
    async fn create_webhook(&self, subscription: WebhookSubscription) -> Result<WebhookSubscription, StoreError> {
        let mut inner = self.lock();
        inner.webhooks.insert(subscription.id, subscription.clone());
        Ok(subscription)
    }

    async fn list_webhooks(&self) -> Result<Vec<WebhookSubscription>, StoreError> {
        Ok(self.lock().webhooks.values().cloned().collect())
    }

    async fn delete_webhook(&self, id: Uuid) -> Result<(), StoreError> {
        let mut inner = self.lock();
        inner.webhooks.remove(&id).ok_or_else(|| not_found("webhook", id))?;
        inner.deliveries.retain(|_, d| d.delivery.subscription_id != id);
        Ok(())
    }

    async fn claim_deliveries(
        &self,
        now: Timestamp,
        limit: usize,
        per_subscription: usize,
        lease: Duration,
    ) -> Result<Vec<(WebhookDelivery, WebhookSubscription)>, StoreError> {
        let mut inner = self.lock();
        let Inner { deliveries, webhooks, .. } = &mut *inner;
        let pending = |d: &DeliveryState| d.delivery.status == DeliveryStatus::Pending;
        let mut busy: BTreeMap<Uuid, usize> = BTreeMap::new();
        for d in deliveries.values().filter(|d| pending(d) && d.hidden_until.is_some_and(|t| t > now)) {
            *busy.entry(d.delivery.subscription_id).or_default() += 1;
        }
        let mut due: Vec<&mut DeliveryState> = deliveries
            .values_mut()
            .filter(|d| {
                pending(d)
                    && d.delivery.next_attempt_at.is_none_or(|t| t <= now)
                    && d.hidden_until.is_none_or(|t| t <= now)
            })
            .collect();
        // Deliveries of a disabled subscription fail (they raced with the 410 that disabled it); those of a deleted
        // one are skipped.
        due.retain_mut(|d| match webhooks.get(&d.delivery.subscription_id) {
            Some(sub) if !sub.active => {
                d.delivery.fail_disabled();
                false
            }
            Some(_) => true,
            None => false,
        });
        // The oldest due first. Only the head is sorted: a chunk at a time (doubling), as subscriptions at their cap
        // skip some, so a claim costs linear time in the backlog rather than a full sort.
        let oldest = |a: &&mut DeliveryState, b: &&mut DeliveryState| {
            (a.delivery.next_attempt_at, &a.delivery.id).cmp(&(b.delivery.next_attempt_at, &b.delivery.id))
        };
        let mut out = Vec::new();
        let mut rest = due.as_mut_slice();
        let mut chunk = limit.max(1);
        while out.len() < limit && !rest.is_empty() {
            let take = chunk.min(rest.len());
            if take < rest.len() {
                rest.select_nth_unstable_by(take, oldest);
            }
            let (head, tail) = rest.split_at_mut(take);
            head.sort_by(oldest);
            for d in head.iter_mut() {
                let Some(sub) = webhooks.get(&d.delivery.subscription_id) else { continue };
                let taken = busy.entry(sub.id).or_default();
                if out.len() >= limit || *taken >= per_subscription {
                    continue;
                }
                *taken += 1;
                d.hidden_until = Some(add_duration(now, lease));
                out.push((d.delivery.clone(), sub.clone()));
            }
            rest = tail;
            chunk = chunk.saturating_mul(2);
        }
        Ok(out)
    }

    async fn complete_deliveries(
        &self,
        outcomes: &[(String, DeliveryOutcome)],
        now: Timestamp,
    ) -> Result<(), StoreError> {
        let mut inner = self.lock();
        for (id, outcome) in outcomes {
            let Some(state) = inner.deliveries.get_mut(id) else { continue };
            state.hidden_until = None;
            let disable = state.delivery.record_attempt(outcome.clone(), now).then_some(state.delivery.subscription_id);
            if let Some(sub_id) = disable {
                if let Some(sub) = inner.webhooks.get_mut(&sub_id) {
                    sub.disable_gone();
                }
                for d in inner.deliveries.values_mut().filter(|d| d.delivery.subscription_id == sub_id) {
                    d.delivery.fail_disabled();
                }
            }
        }
        Ok(())
    }

    async fn redeliver(&self, subscription: Uuid, id: &str, now: Timestamp) -> Result<WebhookDelivery, StoreError> {
        let mut inner = self.lock();
        let state = inner
            .deliveries
            .get_mut(id)
            .filter(|d| d.delivery.subscription_id == subscription)
            .ok_or_else(|| not_found("delivery", id))?;
        state.delivery.reset_for_redelivery(now);
        state.hidden_until = None;
        Ok(state.delivery.clone())
    }

    async fn list_deliveries(
        &self,
        subscription: Uuid,
        page: &PageRequest,
    ) -> Result<Page<WebhookDelivery>, StoreError> {
        let inner = self.lock();
        if !inner.webhooks.contains_key(&subscription) {
            return Err(not_found("webhook", subscription));
        }
        let limit = page.clamped_limit();
        let items: Vec<WebhookDelivery> = inner
            .deliveries
            .iter()
            .rev()
            .filter(|(id, d)| {
                d.delivery.subscription_id == subscription && page.cursor.as_deref().is_none_or(|c| id.as_str() < c)
            })
            .take(limit + 1)
            .map(|(_, d)| d.delivery.clone())
            .collect();
        Ok(Page::from_overfetch(items, limit, |d| d.id.clone()))
    }
}

#[async_trait]
impl KeyStore for MemoryStore {
    async fn create_api_key(&self, record: ApiKeyRecord) -> Result<(), StoreError> {
        let mut inner = self.lock();
        if inner.api_keys.values().any(|k| k.key_hash == record.key_hash) {
            return Err(ApiKeyRecord::key_taken());
        }
        if inner.api_keys.values().any(|k| k.name == record.name) {
            return Err(record.name_taken());
        }
        inner.api_keys.insert(record.id, record);
        Ok(())
    }

    async fn api_key_by_hash(&self, key_hash: &str) -> Result<Option<ApiKeyRecord>, StoreError> {
        Ok(self.lock().api_keys.values().find(|k| k.key_hash == key_hash).cloned())
    }

    async fn list_api_keys(&self) -> Result<Vec<ApiKeyRecord>, StoreError> {
        Ok(self.lock().api_keys.values().cloned().collect())
    }

    async fn delete_api_key(&self, id: Uuid) -> Result<(), StoreError> {
        self.lock().api_keys.remove(&id).map(drop).ok_or_else(|| not_found("api key", id))
    }
}

#[async_trait]
impl AgentStore for MemoryStore {
    async fn agent_slot(
        &self,
        environment: &EnvironmentName,
        target: &deploy_core::TargetId,
    ) -> Result<Option<deploy_core::AgentSlot>, StoreError> {
        Ok(self.lock().agents.get(&(environment.to_string(), target.to_string())).cloned())
    }

    async fn assign_agent(
        &self,
        environment: &EnvironmentName,
        target: &deploy_core::TargetId,
        desired: deploy_core::DesiredState,
        deployment: DeploymentId,
        fencing_token: u64,
        now: Timestamp,
    ) -> Result<deploy_core::AgentSlot, StoreError> {
        let fenced = (fencing_token > 0).then_some((deployment, fencing_token));
        self.change_agent_slot(environment, target, fenced, |slot| slot.assign(desired, deployment, fencing_token, now))
    }

    async fn record_agent_report(
        &self,
        environment: &EnvironmentName,
        target: &deploy_core::TargetId,
        report: deploy_core::AgentReport,
        now: Timestamp,
    ) -> Result<deploy_core::AgentSlot, StoreError> {
        self.change_agent_slot(environment, target, None, |slot| slot.record(report, now))
    }
}

#[async_trait]
impl AuditLog for MemoryStore {
    async fn append_audit(&self, entry: AuditEntry) -> Result<(), StoreError> {
        self.lock().audit.insert(entry.id, entry);
        Ok(())
    }

    async fn list_audit(&self, filter: &AuditFilter, page: &PageRequest) -> Result<Page<AuditEntry>, StoreError> {
        let cursor = page.cursor.as_deref().map(|c| Uuid::parse_str(c).map_err(|_| bad_cursor())).transpose()?;
        let limit = page.clamped_limit();
        let inner = self.lock();
        let items: Vec<AuditEntry> = inner
            .audit
            .values()
            .rev()
            .filter(|e| cursor.is_none_or(|c| e.id < c) && filter.matches(e))
            .take(limit + 1)
            .cloned()
            .collect();
        Ok(Page::from_overfetch(items, limit, |e| e.id.to_string()))
    }
}
