//! The [`Store`] contract, checked. Every function uses its own uniquely named environment, so all of them can run
//! against one store, concurrently.
#![allow(clippy::panic, clippy::unwrap_used, clippy::expect_used)] // A check reports a violation by panicking.

use std::time::Duration;

use deploy_core::{
    Acceptance, ConcurrencyPolicy, DeliveryOutcome, DeliveryStatus, DeploymentDraft, DeploymentFilter, DeploymentId,
    DeploymentRequest, DeploymentStatus, EnvironmentName, EventType, Fingerprint, FullStore, IdempotencyKey,
    IdempotencyRecord, PageRequest, Principal, ProgressUpdate, Revision, StatusChange, Store, StoreError, TargetPlan,
    TargetStatus, Timestamp, WebhookSubscription, add_duration,
};
use uuid::Uuid;

use super::{Ran, Report, run_table, table};
use crate::fixtures::environment;

fn unique_env(prefix: &str) -> EnvironmentName {
    EnvironmentName::new(format!("{prefix}-{}", Uuid::now_v7().simple())).expect("valid name")
}

fn t0() -> Timestamp {
    time::OffsetDateTime::now_utc()
}

fn acceptance(env: &EnvironmentName, version: &str, key: Option<(&str, &str)>, now: Timestamp) -> Acceptance {
    let spec = DeploymentRequest {
        environment: env.to_string(),
        service: "svc".into(),
        version: version.into(),
        ..DeploymentRequest::default()
    }
    .validate()
    .expect("valid request");
    let idempotency = key.map(|(scope, key)| IdempotencyRecord {
        scope: scope.into(),
        key: IdempotencyKey::new(key).expect("valid key"),
        fingerprint: spec.fingerprint(),
        expires_at: add_duration(now, Duration::from_secs(3600)),
    });
    Acceptance {
        draft: DeploymentDraft {
            id: DeploymentId::new(),
            spec,
            created_by: Principal::system("conformance").id().to_owned(),
            plan: TargetPlan::FromSpec,
            rollback_of: None,
            retry_of: None,
            submitted_by: None,
        },
        idempotency,
        expected_revision: None,
        now,
        quota: None,
    }
}

async fn env_with(store: &dyn Store, prefix: &str, policy: ConcurrencyPolicy) -> EnvironmentName {
    let name = unique_env(prefix);
    store
        .put_environment(&name, environment(&["a-1", "a-2", "a-3"], "scripted", policy), None, t0())
        .await
        .expect("create environment");
    name
}

table!(ENGINE_CHECKS: dyn Store; environments_have_revisions, idempotent_acceptance, preconditions_and_planning, concurrency_policies, a_restarted_replica_takes_over_its_own_leases_at_once, claims_are_fenced, records_are_atomic_and_terminal_is_final, cancel_requests, operator_requests, approvals_gate_the_queue, holds_and_freezes, listings_page_with_cursors, idempotency_keys_expire, environments_are_listed_by_name, unknown_ids_are_not_found,
    concurrent_accepts_with_one_key_make_one_deployment, concurrent_claims_hand_out_one_lease,
    events_are_numbered_without_gaps, released_leases_are_claimable_at_once, quotas_bound_what_one_submitter_stores);
table!(SERVER_CHECKS: dyn FullStore; agent_assignments_are_fenced, webhook_outbox_follows_changes, api_keys_by_digest, api_key_names_are_identities, audit_log_pages_newest_first, agent_slots);

/// Runs every check of [`ENGINE_CHECKS`]: the contract of the engine's [`Store`], all an embedder must implement.
pub async fn run_all(store: &(dyn Store + 'static)) -> Report {
    run_table(ENGINE_CHECKS, store).await
}

/// Runs every check of [`ENGINE_CHECKS`] and [`SERVER_CHECKS`]: the contract of a store `deployd` can run on
/// ([`FullStore`]: webhooks, API keys, agents and the audit log as well).
pub async fn run_full(store: &(dyn FullStore + 'static)) -> Report {
    let mut report = run_table(ENGINE_CHECKS, store).await;
    let server = run_table(SERVER_CHECKS, store).await;
    report.passed.extend(server.passed);
    report.not_applicable.extend(server.not_applicable);
    report.violations.extend(server.violations);
    report
}

/// A submitter's quota is checked inside the acceptance: open deployments up to `max_open` (a finished one frees its
/// place), bytes of those accepted since `since` up to `max_bytes`; a replay is never refused, and another submitter
/// is not affected. Nothing is stored by a refused acceptance.
pub async fn quotas_bound_what_one_submitter_stores(store: &dyn Store) -> Ran {
    let env = env_with(store, "quota", ConcurrencyPolicy::Queue).await;
    let submitter = format!("key:quota-{}", Uuid::now_v7().simple());
    let by = |version: &str, key: Option<(&str, &str)>, quota: &deploy_core::QuotaCheck| {
        let mut a = acceptance(&env, version, key, t0());
        a.draft.created_by.clone_from(&quota.submitter);
        a.quota = Some(quota.clone());
        a
    };
    let open = deploy_core::QuotaCheck {
        submitter: submitter.clone(),
        max_open: 2,
        max_bytes: u64::MAX,
        since: DeploymentId::first_at(0),
    };
    let first = store.accept(by("1.0", Some((&submitter, "q-1")), &open)).await.expect("first");
    store.accept(by("1.1", None, &open)).await.expect("second");
    let third = store.accept(by("1.2", None, &open)).await;
    assert!(matches!(&third, Err(StoreError::QuotaExceeded { window: false, .. })), "third open one: {third:?}");
    let filter = DeploymentFilter { environment: Some(env.clone()), ..DeploymentFilter::default() };
    assert_eq!(store.count_deployments(&filter).await.expect("count"), 2, "a refused acceptance stores nothing");
    let replay = store.accept(by("1.0", Some((&submitter, "q-1")), &open)).await.expect("a replay over quota");
    assert!(replay.replayed && replay.deployment.id() == first.deployment.id());
    let other = deploy_core::QuotaCheck { submitter: format!("{submitter}-other"), ..open.clone() };
    store.accept(by("2.0", None, &other)).await.expect("another submitter has its own quota");
    store.request_cancel(first.deployment.id(), t0()).await.expect("cancel the first");
    store.accept(by("1.3", None, &open)).await.expect("a finished deployment frees its place");

    let heavy = format!("{submitter}-bytes");
    let measured = store.get_deployment(first.deployment.id()).await.expect("read").stored_bytes();
    let bytes = deploy_core::QuotaCheck {
        submitter: heavy.clone(),
        max_open: u64::MAX,
        max_bytes: measured * 5 / 2,
        since: DeploymentId::first_at(0),
    };
    store.accept(by("3.0", None, &bytes)).await.expect("one");
    store.accept(by("3.1", None, &bytes)).await.expect("two");
    let over = store.accept(by("3.2", None, &bytes)).await;
    assert!(matches!(&over, Err(StoreError::QuotaExceeded { window: true, .. })), "over the bytes: {over:?}");
    // The window is counted in steps of time: one starting a step after this one leaves these three out.
    let next_step = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("clock").as_millis();
    let next_step = u64::try_from(next_step).expect("ms") + (1 << 20);
    let later = deploy_core::QuotaCheck { since: DeploymentId::first_at(next_step), ..bytes };
    store.accept(by("3.2", None, &later)).await.expect("deployments before the window do not count");
    Ran::Checked
}

/// Creating bumps to revision 1, replacing bumps again, a stale expected revision is refused.
pub async fn environments_have_revisions(store: &dyn Store) -> Ran {
    let name = unique_env("envrev");
    let spec = environment(&["x-1"], "scripted", ConcurrencyPolicy::Queue);
    let created = store.put_environment(&name, spec.clone(), None, t0()).await.expect("create");
    assert!(created.created);
    assert_eq!(created.environment.revision, Revision::new(1));
    let replaced = store.put_environment(&name, spec.clone(), Some(Revision::new(1)), t0()).await.expect("replace");
    assert!(!replaced.created);
    assert_eq!(replaced.environment.revision, Revision::new(2));
    let stale = store.put_environment(&name, spec, Some(Revision::new(1)), t0()).await;
    assert!(matches!(stale, Err(StoreError::PreconditionFailed { .. })), "stale revision: {stale:?}");
    let missing = store.get_environment(&unique_env("missing")).await;
    assert!(matches!(missing, Err(StoreError::NotFound { .. })), "unknown environment: {missing:?}");
    Ran::Checked
}

/// Same key + same request → one deployment; same key + other request → reuse error; another scope → independent.
pub async fn idempotent_acceptance(store: &dyn Store) -> Ran {
    let env = env_with(store, "idem", ConcurrencyPolicy::Queue).await;
    let now = t0();
    let first = store.accept(acceptance(&env, "2.0", Some(("ci", "k-1")), now)).await.expect("first");
    assert!(!first.replayed);
    let again = store.accept(acceptance(&env, "2.0", Some(("ci", "k-1")), now)).await.expect("replay");
    assert!(again.replayed, "same key and request is a replay");
    assert_eq!(again.deployment.id(), first.deployment.id());
    let other = store.accept(acceptance(&env, "3.0", Some(("ci", "k-1")), now)).await;
    assert!(matches!(other, Err(StoreError::IdempotencyKeyReuse { .. })), "other request, same key: {other:?}");
    let scoped = store.accept(acceptance(&env, "2.0", Some(("someone-else", "k-1")), now)).await.expect("other scope");
    assert!(!scoped.replayed && scoped.deployment.id() != first.deployment.id(), "keys are scoped per principal");
    let page = store
        .list_deployments(
            &DeploymentFilter { environment: Some(env), ..DeploymentFilter::default() },
            &PageRequest::default(),
        )
        .await
        .expect("list");
    assert_eq!(page.items.len(), 2, "exactly two deployments were created");
    Ran::Checked
}

/// `require_if_match`, stale revisions, unknown environments and empty selections are refused; acceptance bumps the
/// revision and writes the queued event as seq 1.
pub async fn preconditions_and_planning(store: &dyn Store) -> Ran {
    let now = t0();
    let missing = store.accept(acceptance(&unique_env("nope"), "1", None, now)).await;
    assert!(matches!(missing, Err(StoreError::NotFound { .. })), "unknown environment: {missing:?}");

    let name = unique_env("ifmatch");
    let mut spec = environment(&["b-1"], "scripted", ConcurrencyPolicy::Queue);
    spec.require_if_match = true;
    let rev = store.put_environment(&name, spec, None, now).await.expect("create").environment.revision;
    let required = store.accept(acceptance(&name, "1", None, now)).await;
    assert!(matches!(required, Err(StoreError::PreconditionRequired { .. })), "{required:?}");
    let mut stale = acceptance(&name, "1", None, now);
    stale.expected_revision = Some(Revision::new(rev.get() + 7));
    assert!(matches!(store.accept(stale).await, Err(StoreError::PreconditionFailed { .. })));
    let mut good = acceptance(&name, "1", None, now);
    good.expected_revision = Some(rev);
    let accepted = store.accept(good).await.expect("matching revision");
    assert_eq!(accepted.deployment.revision(), rev.next(), "the deployment carries the revision it produced");
    assert_eq!(store.get_environment(&name).await.expect("env").revision, rev.next(), "acceptance bumps the revision");
    let events = store.events(accepted.deployment.id(), 0, 10).await.expect("events");
    assert_eq!(events.len(), 1);
    assert_eq!((events[0].seq, events[0].event_type), (1, EventType::Queued));

    let mut none = acceptance(&name, "1", None, now);
    none.expected_revision = Some(rev.next());
    none.draft.spec = none
        .draft
        .spec
        .with_targets(deploy_core::TargetSelector::Ids(vec![deploy_core::TargetId::new("ghost").expect("id")]));
    assert!(matches!(store.accept(none).await, Err(StoreError::Invalid(_))), "unknown target ids are refused");
    Ran::Checked
}

/// `reject` refuses while busy, `supersede` replaces queued work, `queue` runs in acceptance order.
pub async fn concurrency_policies(store: &dyn Store) -> Ran {
    let now = t0();
    let env = env_with(store, "reject", ConcurrencyPolicy::Reject).await;
    let first = store.accept(acceptance(&env, "1", None, now)).await.expect("first");
    let busy = store.accept(acceptance(&env, "2", None, now)).await;
    match busy {
        Err(StoreError::EnvironmentBusy { active, .. }) => assert_eq!(active, first.deployment.id()),
        other => panic!("reject policy must refuse a second deployment, got {other:?}"),
    }

    let env = env_with(store, "supersede", ConcurrencyPolicy::Supersede).await;
    let old = store.accept(acceptance(&env, "1", None, now)).await.expect("old");
    let new = store.accept(acceptance(&env, "2", None, now)).await.expect("new");
    let old_now = store.get_deployment(old.deployment.id()).await.expect("old");
    assert_eq!(old_now.status(), DeploymentStatus::Superseded, "a queued deployment is superseded at once");
    assert_eq!(old_now.superseded_by(), Some(new.deployment.id()));
    assert!(old_now.targets().iter().all(|t| t.status == TargetStatus::Cancelled));
    let env_view = store.get_environment(&env).await.expect("env");
    assert_eq!(env_view.queued, vec![new.deployment.id()]);

    let env = env_with(store, "queue", ConcurrencyPolicy::Queue).await;
    let a = store.accept(acceptance(&env, "1", None, now)).await.expect("a");
    let b = store.accept(acceptance(&env, "2", None, now)).await.expect("b");
    assert_eq!(store.get_environment(&env).await.expect("env").queued, vec![a.deployment.id(), b.deployment.id()]);
    Ran::Checked
}

/// An owner `replica#incarnation` takes over at once a live lease of `replica#<another incarnation>` (the same
/// replica, restarted), with a larger token that fences the old holder out; nobody else may, and an incarnation never
/// re-claims what it holds.
pub async fn a_restarted_replica_takes_over_its_own_leases_at_once(store: &dyn Store) -> Ran {
    let now = t0();
    let env = env_with(store, "restart", ConcurrencyPolicy::Queue).await;
    let id = store.accept(acceptance(&env, "1", None, now)).await.expect("accept").deployment.id();
    let lease = Duration::from_secs(30);
    let claim_ours = |owner: &'static str| async move {
        for _ in 0..64 {
            match store.claim(owner, now, lease).await.expect("claim") {
                Some(c) if c.deployment.id() == id => return Some(c),
                Some(_) => {}
                None => return None,
            }
        }
        None
    };
    let first = claim_ours("node-a#1").await.expect("the head of the queue");
    assert!(claim_ours("node-a#1").await.is_none(), "an incarnation never re-claims what it drives");
    assert!(claim_ours("node-b#9").await.is_none(), "another replica waits for the lease to lapse");
    assert!(claim_ours("node-a").await.is_none(), "an owner without an incarnation takes over nothing");
    let restarted = claim_ours("node-a#2").await.expect("the same replica, restarted, takes over at once");
    assert!(restarted.lease.token > first.lease.token);
    let stale = store.renew(&first.lease, now, lease).await;
    assert!(matches!(stale, Err(StoreError::StaleToken { .. })), "the old incarnation is fenced out: {stale:?}");
    store.release(&restarted.lease).await.expect("release");
    Ran::Checked
}

/// Claims hand out the head of an environment's queue once per lease; tokens grow; stale tokens never write.
pub async fn claims_are_fenced(store: &dyn Store) -> Ran {
    let now = t0();
    let env = env_with(store, "fence", ConcurrencyPolicy::Queue).await;
    let a = store.accept(acceptance(&env, "1", None, now)).await.expect("a").deployment.id();
    let b = store.accept(acceptance(&env, "2", None, now)).await.expect("b").deployment.id();
    let lease = Duration::from_secs(30);
    let mut mine = None;
    // Other suites' environments may have runnable work too; claim until ours appears.
    for _ in 0..64 {
        match store.claim("replica-1", now, lease).await.expect("claim") {
            Some(c) if c.deployment.id() == a => {
                mine = Some(c);
                break;
            }
            Some(c) => assert_ne!(c.deployment.id(), b, "only the head of an environment's queue is claimable"),
            None => break,
        }
    }
    let first = mine.expect("the head of the queue was claimable");
    for _ in 0..64 {
        match store.claim("replica-2", now, lease).await.expect("claim") {
            Some(c) => assert!(c.deployment.id() != a && c.deployment.id() != b, "a live lease is exclusive"),
            None => break,
        }
    }
    let later = add_duration(now, Duration::from_secs(31));
    let mut second = None;
    for _ in 0..64 {
        match store.claim("replica-2", later, lease).await.expect("claim") {
            Some(c) if c.deployment.id() == a => {
                second = Some(c);
                break;
            }
            Some(_) => {}
            None => break,
        }
    }
    let second = second.expect("an expired lease is claimable again");
    assert!(second.lease.token > first.lease.token, "tokens grow with every claim");
    let start = ProgressUpdate {
        now: Some(later),
        status: Some(StatusChange { status: DeploymentStatus::InProgress, reason: None }),
        ..ProgressUpdate::default()
    };
    let stale = store.record(&first.lease, start.clone()).await;
    assert!(matches!(stale, Err(StoreError::StaleToken { .. })), "stale token write: {stale:?}");
    assert!(matches!(store.renew(&first.lease, later, lease).await, Err(StoreError::StaleToken { .. })));
    assert!(matches!(store.release(&first.lease).await, Err(StoreError::StaleToken { .. })));
    assert_eq!(store.get_deployment(a).await.expect("a").status(), DeploymentStatus::Queued, "nothing was written");
    let _ = store.record(&second.lease, start).await.expect("current token writes");
    let (renewed, _) = store.renew(&second.lease, later, lease).await.expect("renew");
    assert!(renewed.expires_at > later);
    store.release(&renewed).await.expect("release");
    Ran::Checked
}

/// Events are numbered from 1 without gaps, the summary follows the targets, and a terminal status is final.
pub async fn records_are_atomic_and_terminal_is_final(store: &dyn Store) -> Ran {
    let now = t0();
    let env = env_with(store, "record", ConcurrencyPolicy::Queue).await;
    let id = store.accept(acceptance(&env, "2", None, now)).await.expect("accept").deployment.id();
    let claim = claim_of(store, id, now).await;
    let d = claim.deployment;
    let mut entry = d.targets()[0].clone();
    entry.status = TargetStatus::Succeeded;
    let update = ProgressUpdate {
        now: Some(now),
        status: Some(StatusChange { status: DeploymentStatus::InProgress, reason: None }),
        targets: vec![(0, entry.clone())],
        events: vec![
            deploy_core::NewEvent::deployment(now, DeploymentStatus::InProgress, "started"),
            deploy_core::NewEvent::target(now, entry.id.clone(), TargetStatus::Succeeded, "ok"),
        ],
        observations: vec![deploy_core::TargetObservation {
            target: entry.id.clone(),
            desired: None,
            actual: Some(deploy_core::ActualState {
                version: Some(entry.to_version.clone()),
                health: deploy_core::Health::Healthy,
                observed_at: now,
            }),
        }],
        progressed: true,
        awaiting_promotion: None,
        hold_until: None,
    };
    let _ = store.record(&claim.lease, update).await.expect("record");
    let stored = store.get_deployment(id).await.expect("get");
    assert_eq!(stored.summary().succeeded, 1);
    assert_eq!(*stored.summary(), deploy_core::Summary::of(stored.targets()), "summary equals targets");
    let env_view = store.get_environment(&env).await.expect("env");
    assert_eq!(env_view.active_deployment, Some(id), "a running deployment is the environment's active one");
    let observed = env_view.targets.iter().find(|t| t.id == entry.id).and_then(|t| t.actual.clone());
    assert_eq!(observed.and_then(|a| a.version), Some(entry.to_version.clone()), "observations reach the environment");
    let seqs: Vec<u64> = store.events(id, 0, 100).await.expect("events").iter().map(|e| e.seq).collect();
    assert_eq!(seqs, [1, 2, 3]);
    assert_eq!(store.events(id, 2, 100).await.expect("after").len(), 1, "events after a sequence number");

    let finish = ProgressUpdate {
        now: Some(now),
        status: Some(StatusChange { status: DeploymentStatus::Failed, reason: Some("test".into()) }),
        ..ProgressUpdate::default()
    };
    let _ = store.record(&claim.lease, finish).await.expect("finish");
    let again = ProgressUpdate {
        now: Some(now),
        status: Some(StatusChange { status: DeploymentStatus::Succeeded, reason: None }),
        ..ProgressUpdate::default()
    };
    let refused = store.record(&claim.lease, again).await;
    assert!(
        matches!(refused, Err(StoreError::AlreadyFinished { .. } | StoreError::StaleToken { .. })),
        "a terminal deployment never changes: {refused:?}"
    );
    assert_eq!(store.get_deployment(id).await.expect("get").status(), DeploymentStatus::Failed);
    assert_eq!(store.get_environment(&env).await.expect("env").active_deployment, None);
    Ran::Checked
}

async fn claim_of(store: &dyn Store, id: DeploymentId, now: Timestamp) -> deploy_core::Claim {
    for _ in 0..256 {
        match store.claim("conformance", now, Duration::from_secs(30)).await.expect("claim") {
            Some(c) if c.deployment.id() == id => return c,
            Some(_) => {}
            None => break,
        }
    }
    panic!("deployment {id} was never claimable")
}

/// A queued deployment nobody holds is cancelled at once; a held one gets the request through `Control`.
pub async fn cancel_requests(store: &dyn Store) -> Ran {
    let now = t0();
    let env = env_with(store, "cancel", ConcurrencyPolicy::Queue).await;
    let a = store.accept(acceptance(&env, "1", None, now)).await.expect("a").deployment.id();
    let b = store.accept(acceptance(&env, "2", None, now)).await.expect("b").deployment.id();
    let cancelled = store.request_cancel(b, now).await.expect("cancel b");
    assert_eq!(cancelled.status(), DeploymentStatus::Cancelled, "unheld queued work is cancelled at once");
    assert!(cancelled.targets().iter().all(|t| t.status == TargetStatus::Cancelled));
    let last = store.events(b, 0, 100).await.expect("events").pop().expect("an event");
    assert_eq!(last.event_type, EventType::Cancelled);
    assert!(matches!(store.request_cancel(b, now).await, Err(StoreError::AlreadyFinished { .. })));

    let claim = claim_of(store, a, now).await;
    let held = store.request_cancel(a, now).await.expect("cancel a");
    assert_eq!(held.status(), DeploymentStatus::Queued, "a held deployment is stopped by its holder");
    assert!(held.cancel_requested());
    let (_, control) = store.renew(&claim.lease, now, Duration::from_secs(30)).await.expect("renew");
    assert!(control.cancel_requested, "the holder learns of the request");
    Ran::Checked
}

/// Operator requests (pause, resume, promote, abort) are recorded with an event naming who asked and reach the
/// holder through `Control`; an abort of unheld queued work stops it at once; what does not apply now is `NotNow`;
/// a finished deployment refuses them; an unknown one is not found.
pub async fn operator_requests(store: &dyn Store) -> Ran {
    use deploy_core::{OperatorAction, OperatorRequest};
    let now = t0();
    let by = |action| OperatorRequest::new(action, "key:ops");
    let env = env_with(store, "operate", ConcurrencyPolicy::Queue).await;
    let a = store.accept(acceptance(&env, "1", None, now)).await.expect("a").deployment.id();
    let b = store.accept(acceptance(&env, "2", None, now)).await.expect("b").deployment.id();

    let aborted = store.request(b, &by(OperatorAction::Abort { rollback: Some(true) }), now).await.expect("abort b");
    assert_eq!(aborted.status(), DeploymentStatus::Cancelled, "unheld queued work is stopped at once");
    assert!(aborted.targets().iter().all(|t| t.status == TargetStatus::Cancelled));
    let events = store.events(b, 0, 100).await.expect("events");
    assert!(
        events.iter().any(|e| e.event_type == EventType::Requested && e.message.contains("key:ops")),
        "the request is an event naming who asked: {events:?}"
    );
    assert_eq!(events.last().map(|e| e.event_type), Some(EventType::Cancelled));
    let late = store.request(b, &by(OperatorAction::Pause), now).await;
    assert!(matches!(late, Err(StoreError::AlreadyFinished { .. })), "{late:?}");

    let claim = claim_of(store, a, now).await;
    let paused = store.request(a, &by(OperatorAction::Pause), now).await.expect("pause a");
    assert!(paused.controls().pause_requested, "recorded in the deployment");
    assert_eq!(paused.status(), DeploymentStatus::Queued, "a held deployment is paused by its holder");
    let (_, control) = store.renew(&claim.lease, now, Duration::from_secs(30)).await.expect("renew");
    assert!(control.operator.pause_requested, "the holder learns of the request");
    let resumed = store.request(a, &by(OperatorAction::Resume), now).await.expect("resume a");
    assert!(!resumed.controls().pause_requested);
    let held_abort = store.request(a, &by(OperatorAction::Abort { rollback: None }), now).await.expect("abort a");
    assert_eq!(held_abort.status(), DeploymentStatus::Queued, "a held deployment is aborted by its holder");
    assert_eq!(store.get_deployment(a).await.expect("get").controls().abort.map(|r| r.rollback), Some(None));
    let (_, control) = store.renew(&claim.lease, now, Duration::from_secs(30)).await.expect("renew");
    assert!(control.operator.abort.is_some());

    let promote = store.request(a, &by(OperatorAction::Promote { full: true }), now).await;
    assert!(matches!(promote, Err(StoreError::NotNow { .. })), "a rolling deployment is not promoted: {promote:?}");
    let unknown = store.request(DeploymentId::new(), &by(OperatorAction::Pause), now).await;
    assert!(matches!(unknown, Err(StoreError::NotFound { .. })), "{unknown:?}");
    Ran::Checked
}

/// Whether `id` is claimable at `now`: claims every claimable head until it finds `id` (released again) or none is
/// left. Heads of other checks' environments it passes are left leased to this check's owner.
async fn claimable(store: &dyn Store, id: DeploymentId, now: Timestamp) -> bool {
    for _ in 0..256 {
        match store.claim("conformance-approvals", now, Duration::from_secs(3600)).await.expect("claim") {
            Some(c) if c.deployment.id() == id => {
                store.release(&c.lease).await.expect("release");
                return true;
            }
            Some(_) => {}
            None => return false,
        }
    }
    panic!("more than 256 claimable deployments")
}

/// A protected environment's deployments wait in `awaiting_approval` and are not claimable until their approvals are
/// in (N distinct approvers, each counted once) or a timer of theirs is due: the wait after approval, or the expiry.
/// A rejection ends one `rejected`. The environment keeps its rule, and a deployment the rule it was accepted under.
pub async fn approvals_gate_the_queue(store: &dyn Store) -> Ran {
    use deploy_core::{HumanDuration, OperatorAction, OperatorRequest, Protection};
    let now = t0();
    let name = unique_env("approve");
    let mut spec = environment(&["a-1", "a-2"], "scripted", ConcurrencyPolicy::Queue);
    let rule = Protection {
        required_approvals: 2,
        approvers: Vec::new(),
        prevent_self_approval: true,
        wait: None,
        expires_after: Some(HumanDuration::from_secs(3600)),
    };
    spec.protection = Some(rule.clone());
    store.put_environment(&name, spec.clone(), None, now).await.expect("create environment");
    assert_eq!(store.get_environment(&name).await.expect("env").protection.as_ref(), Some(&rule), "kept");
    let ask = |action, by: &str| OperatorRequest::new(action, by);

    let a = store.accept(acceptance(&name, "1", None, now)).await.expect("accept").deployment;
    assert_eq!(a.status(), DeploymentStatus::AwaitingApproval);
    assert_eq!(a.protection(), Some(&rule), "the deployment keeps the rule it was accepted under");
    let first = store.events(a.id(), 0, 10).await.expect("events");
    assert_eq!(first[0].event_type, EventType::AwaitingApproval);
    assert!(!claimable(store, a.id(), now).await, "not claimable before its approvals or its expiry");
    let one = store.request(a.id(), &ask(OperatorAction::Approve, "key:x"), now).await.expect("approve");
    let again = store.request(a.id(), &ask(OperatorAction::Approve, "key:x"), now).await.expect("approve again");
    assert_eq!((one.approved_by().count(), again.approved_by().count()), (1, 1), "one approver counts once");
    assert_eq!(again.status(), DeploymentStatus::AwaitingApproval);
    let two = store.request(a.id(), &ask(OperatorAction::Approve, "key:y"), now).await.expect("approve");
    assert_eq!(two.status(), DeploymentStatus::Queued, "two of two");
    assert!(claimable(store, a.id(), now).await, "claimable once approved");
    let events = store.events(a.id(), 0, 10).await.expect("events");
    let approved = events.iter().filter(|e| e.event_type == EventType::Approved).count();
    assert_eq!(approved, 2, "each approval is an event: {events:?}");
    let late = store.request(a.id(), &ask(OperatorAction::Approve, "key:z"), now).await;
    assert!(matches!(late, Err(StoreError::NotNow { .. })), "no longer awaiting approval: {late:?}");

    // Behind it, one that expires: claimable at its expiry (for its holder to cancel), not before.
    let b = store.accept(acceptance(&name, "2", None, now)).await.expect("accept").deployment;
    let rejected = store.accept(acceptance(&name, "3", None, now)).await.expect("accept").deployment;
    let c = store.request(a.id(), &ask(OperatorAction::Abort { rollback: None }, "key:x"), now).await;
    assert_eq!(c.expect("abort a").status(), DeploymentStatus::Cancelled, "a leaves the queue");
    assert!(!claimable(store, b.id(), add_duration(now, Duration::from_secs(3599))).await, "not before its expiry");
    assert!(claimable(store, b.id(), add_duration(now, Duration::from_secs(3600))).await, "due at its expiry");

    let r = store.request(rejected.id(), &ask(OperatorAction::Reject, "key:x"), now).await.expect("reject");
    assert_eq!(r.status(), DeploymentStatus::Rejected);
    assert!(r.targets().iter().all(|t| t.status == TargetStatus::Cancelled));
    let last = store.events(rejected.id(), 0, 10).await.expect("events").pop().expect("an event");
    assert_eq!(last.event_type, EventType::Rejected);

    // The queue cannot be held hostage: an approved deployment starts past an older one still waiting (with no
    // expiry it would wait for ever), but never beside one that is held or has started.
    let hostage = unique_env("hostage");
    let mut spec = environment(&["h-1"], "scripted", ConcurrencyPolicy::Queue);
    spec.protection = Some(Protection { required_approvals: 1, expires_after: None, ..rule });
    store.put_environment(&hostage, spec, None, now).await.expect("create environment");
    let waiting = store.accept(acceptance(&hostage, "1", None, now)).await.expect("accept").deployment;
    let approved = store.accept(acceptance(&hostage, "2", None, now)).await.expect("accept").deployment;
    store.request(approved.id(), &ask(OperatorAction::Approve, "key:x"), now).await.expect("approve");
    let mut held = None;
    for _ in 0..256 {
        match store.claim("conformance-hostage", now, Duration::from_secs(3600)).await.expect("claim") {
            Some(c) if c.deployment.id() == approved.id() => {
                held = Some(c.lease);
                break;
            }
            Some(c) => assert_ne!(c.deployment.id(), waiting.id(), "the waiting one is not claimable"),
            None => break,
        }
    }
    let held = held.expect("the approved deployment is claimable past the one still waiting");
    store.request(waiting.id(), &ask(OperatorAction::Approve, "key:x"), now).await.expect("approve the first");
    assert!(!claimable(store, waiting.id(), now).await, "one at a time: the other is held");
    store.release(&held).await.expect("release");
    assert!(claimable(store, waiting.id(), now).await, "queued in its turn once nobody holds the other");
    Ran::Checked
}

/// An environment keeps its schedule; the global freeze is kept and lifted; a queued deployment its holder put on
/// hold (windows, a freeze) is not claimable until the hold ends, and is claimable at once when it does.
pub async fn holds_and_freezes(store: &dyn Store) -> Ran {
    use deploy_core::{Freeze, HumanDuration, Period, Schedule};
    let now = t0();
    let name = unique_env("hold");
    let mut spec = environment(&["a-1"], "scripted", ConcurrencyPolicy::Queue);
    let schedule = Schedule {
        windows: vec![Period {
            cron: "0 9 * * 1-5".into(),
            duration: HumanDuration::from_secs(8 * 3600),
            timezone: "Europe/Berlin".into(),
            reason: None,
        }],
        freezes: vec![],
    };
    spec.schedule = Some(schedule.clone());
    store.put_environment(&name, spec, None, now).await.expect("create environment");
    assert_eq!(store.get_environment(&name).await.expect("env").schedule, Some(schedule), "the schedule is kept");

    let freeze = Freeze { reason: "INC-1".into(), by: "key:oncall".into(), since: now, until: None };
    store.set_global_freeze(Some(freeze.clone())).await.expect("freeze");
    assert_eq!(store.global_freeze().await.expect("read"), Some(freeze));
    store.set_global_freeze(None).await.expect("lift");
    assert_eq!(store.global_freeze().await.expect("read"), None);

    let id = store.accept(acceptance(&name, "1", None, now)).await.expect("accept").deployment.id();
    let claim = claim_of(store, id, now).await;
    let until = add_duration(now, Duration::from_secs(3600));
    let hold = ProgressUpdate {
        now: Some(now),
        status: Some(StatusChange { status: DeploymentStatus::Queued, reason: Some("held".into()) }),
        hold_until: Some(until),
        ..ProgressUpdate::default()
    };
    let _ = store.record(&claim.lease, hold).await.expect("hold");
    store.release(&claim.lease).await.expect("release");
    let held = store.get_deployment(id).await.expect("get");
    assert_eq!((held.status(), held.held_until()), (DeploymentStatus::Queued, Some(until)));
    assert!(!claimable(store, id, add_duration(now, Duration::from_secs(3599))).await, "not before the hold ends");
    assert!(claimable(store, id, until).await, "claimable when it ends");

    // Held again, then a lifted global freeze makes it claimable at once.
    let claim = claim_of(store, id, until).await;
    let later = add_duration(until, Duration::from_secs(3600));
    let hold = ProgressUpdate {
        now: Some(until),
        status: Some(StatusChange { status: DeploymentStatus::Queued, reason: Some("held by a freeze".into()) }),
        hold_until: Some(later),
        ..ProgressUpdate::default()
    };
    let _ = store.record(&claim.lease, hold).await.expect("hold");
    store.release(&claim.lease).await.expect("release");
    assert!(!claimable(store, id, until).await, "held");
    store.set_global_freeze(None).await.expect("lift");
    assert!(claimable(store, id, until).await, "a lifted freeze ends every hold at once");
    Ran::Checked
}

/// Listings are newest first and cursors visit every item exactly once.
pub async fn listings_page_with_cursors(store: &dyn Store) -> Ran {
    let now = t0();
    let env = env_with(store, "list", ConcurrencyPolicy::Queue).await;
    let mut ids = Vec::new();
    for i in 0..7 {
        ids.push(store.accept(acceptance(&env, &format!("{i}"), None, now)).await.expect("accept").deployment.id());
    }
    let filter = DeploymentFilter { environment: Some(env.clone()), ..DeploymentFilter::default() };
    let mut seen = Vec::new();
    let mut page = PageRequest { limit: 3, cursor: None };
    loop {
        let p = store.list_deployments(&filter, &page).await.expect("page");
        assert!(p.items.len() <= 3);
        seen.extend(p.items.iter().map(|d| d.id()));
        match p.next_cursor {
            Some(c) => page.cursor = Some(c),
            None => break,
        }
    }
    ids.reverse();
    assert_eq!(seen, ids, "newest first, each exactly once");
    assert_eq!(store.count_deployments(&filter).await.expect("count"), 7, "a count agrees with the listing");
    let waiting = DeploymentFilter { status: Some(DeploymentStatus::Queued), ..filter.clone() };
    assert_eq!(store.count_deployments(&waiting).await.expect("count"), 7);
    let queued = DeploymentFilter { status: Some(DeploymentStatus::Succeeded), ..filter };
    assert_eq!(store.count_deployments(&queued).await.expect("count"), 0);
    assert!(store.list_deployments(&queued, &PageRequest::default()).await.expect("list").items.is_empty());
    let bad =
        store.list_deployments(&DeploymentFilter::default(), &PageRequest { limit: 5, cursor: Some("§".into()) }).await;
    assert!(matches!(bad, Err(StoreError::Invalid(_))), "a cursor the store never made: {bad:?}");
    Ran::Checked
}

/// A change and the webhook deliveries it matches are written together; deliveries are claimed exclusively, at most
/// `per_subscription` at a time for one subscription; late completions are ignored; a delivery can be redelivered; 410
/// disables the subscription and fails its other pending deliveries.
pub async fn webhook_outbox_follows_changes(store: &dyn FullStore) -> Ran {
    let now = t0();
    let env = env_with(store, "hook", ConcurrencyPolicy::Queue).await;
    let sub = store
        .create_webhook(WebhookSubscription {
            environments: vec![deploy_core::EnvironmentPattern::new(env.as_str()).expect("pattern")],
            created_at: now,
            secret: "whsec_test".into(),
            ..crate::fixtures::subscription("http://127.0.0.1:9/hook")
        })
        .await
        .expect("subscribe");
    let id = store.accept(acceptance(&env, "1", None, now)).await.expect("accept").deployment.id();
    let page = store.list_deliveries(sub.id, &PageRequest::default()).await.expect("deliveries");
    assert_eq!(page.items.len(), 1, "the queued event has its delivery");
    let delivery = &page.items[0];
    assert_eq!(
        (delivery.event_type, delivery.deployment_id, delivery.status),
        (EventType::Queued, id, DeliveryStatus::Pending)
    );
    let payload = delivery.payload.to_value().unwrap_or_default();
    assert_eq!(payload["type"], "deployment.queued");
    assert_eq!(payload["data"]["id"], id.to_string());

    let later = add_duration(now, Duration::from_secs(1));
    let claimed = store.claim_deliveries(later, 1000, 1000, Duration::from_secs(30)).await.expect("claim");
    let ours: Vec<_> = claimed.iter().filter(|(d, _)| d.subscription_id == sub.id).collect();
    assert_eq!(ours.len(), 1);
    assert_eq!(ours[0].1.secret, "whsec_test", "the dispatcher gets the signing secret");
    let again = store.claim_deliveries(later, 1000, 1000, Duration::from_secs(30)).await.expect("claim again");
    assert!(again.iter().all(|(d, _)| d.subscription_id != sub.id), "a claimed delivery is hidden from others");
    store
        .complete_deliveries(
            &[(delivery.id.clone(), DeliveryOutcome::Retry { status_code: Some(500), next_attempt_at: later })],
            later,
        )
        .await
        .expect("retry");
    let retry = store.claim_deliveries(later, 1000, 1000, Duration::from_secs(30)).await.expect("claim retry");
    let retried: Vec<_> = retry.iter().filter(|(d, _)| d.subscription_id == sub.id).collect();
    assert_eq!(retried.len(), 1);
    assert_eq!(retried[0].0.id, delivery.id, "the same delivery id on every attempt");
    let r = &retried[0].0;
    assert_eq!(
        (r.status, r.attempts, r.last_status_code, r.next_attempt_at, r.delivered_at),
        (DeliveryStatus::Pending, 1, Some(500), Some(later), None),
        "a claim hands the dispatcher the delivery's state (its attempts drive the backoff)"
    );
    assert_eq!(r.payload.as_str(), delivery.payload.as_str(), "the payload is claimed byte for byte");
    store
        .complete_deliveries(&[(delivery.id.clone(), DeliveryOutcome::Delivered { status_code: 204 })], later)
        .await
        .expect("delivered");
    store
        .complete_deliveries(&[(delivery.id.clone(), DeliveryOutcome::GiveUp { status_code: Some(500) })], later)
        .await
        .expect("a late completion is accepted");
    let page = store.list_deliveries(sub.id, &PageRequest::default()).await.expect("deliveries");
    assert_eq!(page.items[0].status, DeliveryStatus::Delivered, "a late completion changes nothing");
    assert_eq!(page.items[0].attempts, 2);

    // Redelivery makes it pending again, its schedule started afresh; only its own subscription can ask.
    assert!(matches!(store.redeliver(Uuid::now_v7(), &delivery.id, later).await, Err(StoreError::NotFound { .. })));
    assert!(matches!(store.redeliver(sub.id, "msg_none", later).await, Err(StoreError::NotFound { .. })));
    let again = store.redeliver(sub.id, &delivery.id, later).await.expect("redeliver");
    assert_eq!((again.status, again.attempts, again.delivered_at), (DeliveryStatus::Pending, 0, None));

    // Four more deployments: five pending deliveries, at most two claimed at once for this subscription.
    for v in 2..=5 {
        store.accept(acceptance(&env, &v.to_string(), None, now)).await.expect("accept");
    }
    let ours = |claimed: Vec<(deploy_core::WebhookDelivery, WebhookSubscription)>| {
        claimed.into_iter().filter(|(d, _)| d.subscription_id == sub.id).map(|(d, _)| d.id).collect::<Vec<_>>()
    };
    let first = ours(store.claim_deliveries(later, 1000, 2, Duration::from_secs(30)).await.expect("claim"));
    assert_eq!(first.len(), 2, "the cap per subscription");
    assert!(!first.contains(&delivery.id), "the oldest due first (the redelivery is due later)");
    let none = ours(store.claim_deliveries(later, 1000, 2, Duration::from_secs(30)).await.expect("claim"));
    assert!(none.is_empty(), "claimed deliveries count against the cap: {none:?}");
    store
        .complete_deliveries(&[(first[0].clone(), DeliveryOutcome::Delivered { status_code: 200 })], later)
        .await
        .expect("delivered");
    let next = ours(store.claim_deliveries(later, 1000, 2, Duration::from_secs(30)).await.expect("claim"));
    assert_eq!(next.len(), 1, "a finished delivery frees its slot");
    assert!(!first.contains(&next[0]));
    // Recording and claiming in one round: the recorded outcome's slot is taken by the claim.
    let more = ours(
        store
            .complete_and_claim(
                &[(next[0].clone(), DeliveryOutcome::Delivered { status_code: 202 })],
                later,
                1000,
                2,
                Duration::from_secs(30),
            )
            .await
            .expect("complete and claim"),
    );
    assert_eq!(more.len(), 1, "the outcome recorded in the same round freed its slot: {more:?}");
    assert!(!first.contains(&more[0]) && more[0] != next[0]);
    let page = store.list_deliveries(sub.id, &PageRequest::default()).await.expect("deliveries");
    let recorded = page.items.iter().find(|d| d.id == next[0]).expect("listed");
    assert_eq!((recorded.status, recorded.last_status_code), (DeliveryStatus::Delivered, Some(202)));

    store
        .complete_deliveries(&[("msg_unknown".to_owned(), DeliveryOutcome::Delivered { status_code: 200 })], later)
        .await
        .expect("an unknown delivery is ignored");
    store.complete_deliveries(&[(first[1].clone(), DeliveryOutcome::Gone)], later).await.expect("gone");
    let subs = store.list_webhooks().await.expect("list");
    let s = subs.iter().find(|s| s.id == sub.id).expect("still listed");
    assert!(!s.active && s.disabled_reason.is_some(), "410 disables the subscription");
    let page = store.list_deliveries(sub.id, &PageRequest::default()).await.expect("deliveries");
    assert!(
        page.items.iter().all(|d| d.status != DeliveryStatus::Pending),
        "a disabled subscription has no pending deliveries: {:?}",
        page.items.iter().map(|d| d.status).collect::<Vec<_>>()
    );
    let lapsed = add_duration(later, Duration::from_secs(60));
    let claimed = ours(store.claim_deliveries(lapsed, 1000, 1000, Duration::from_secs(30)).await.expect("claim"));
    assert!(claimed.is_empty(), "nothing of a disabled subscription is claimed");
    store.delete_webhook(sub.id).await.expect("delete");
    assert!(matches!(store.delete_webhook(sub.id).await, Err(StoreError::NotFound { .. })));
    Ran::Checked
}

/// Keys are forgotten after their retention: the same key then creates a new deployment.
pub async fn idempotency_keys_expire(store: &dyn Store) -> Ran {
    let now = t0();
    let env = env_with(store, "expire", ConcurrencyPolicy::Queue).await;
    let first = store.accept(acceptance(&env, "1", Some(("ci", "old-key")), now)).await.expect("first");
    let later = add_duration(now, Duration::from_secs(7200));
    let purged = store.purge_idempotency_keys(later).await.expect("purge");
    assert!(purged >= 1, "the expired key was purged");
    let again = store.accept(acceptance(&env, "1", Some(("ci", "old-key")), later)).await.expect("after expiry");
    assert!(!again.replayed);
    assert_ne!(again.deployment.id(), first.deployment.id());
    let _ = Fingerprint::of(b"");
    Ran::Checked
}

/// Keys are found by digest only, listed, and gone once deleted; a digest is registered once.
pub async fn api_keys_by_digest(store: &dyn FullStore) -> Ran {
    let digest = format!("{:064x}", Uuid::now_v7().as_u128());
    let record = deploy_core::ApiKeyRecord {
        target: None,
        owner: None,
        id: Uuid::now_v7(),
        name: format!("ci-bot-{}", Uuid::now_v7().simple()),
        role: deploy_core::Role::Deployer,
        environments: vec![deploy_core::EnvironmentPattern::new("staging-*").expect("pattern")],
        key_hash: digest.clone(),
        created_by: "key:admin".into(),
        created_at: t0().replace_nanosecond(0).expect("whole second"),
    };
    store.create_api_key(record.clone()).await.expect("create key");
    let found = store.api_key_by_hash(&digest).await.expect("lookup").expect("found by digest");
    assert_eq!(found, record, "the stored record, digest included, comes back unchanged");
    assert_eq!(store.api_key_by_hash(&digest.replace('0', "1")).await.expect("lookup"), None, "other digest");
    let other_name = format!("other-{}", Uuid::now_v7().simple());
    let twice = store
        .create_api_key(deploy_core::ApiKeyRecord { id: Uuid::now_v7(), name: other_name, ..record.clone() })
        .await;
    assert!(matches!(&twice, Err(StoreError::Invalid(e)) if e.has_field("key")), "one digest, one key: {twice:?}");
    assert!(store.list_api_keys().await.expect("list").iter().any(|k| k.id == record.id));
    store.delete_api_key(record.id).await.expect("delete");
    assert_eq!(store.api_key_by_hash(&digest).await.expect("lookup"), None, "a deleted key authenticates nobody");
    assert!(!store.list_api_keys().await.expect("list").iter().any(|k| k.id == record.id));
    let again = store.delete_api_key(record.id).await;
    assert!(matches!(again, Err(StoreError::NotFound { .. })), "deleting twice: {again:?}");
    Ran::Checked
}

/// A key's name is its identity: among keys created at once under one name exactly one is stored, a later one of that
/// name is refused naming the field, and a deleted key's name is free again.
pub async fn api_key_names_are_identities(store: &dyn FullStore) -> Ran {
    let name = format!("twin-{}", Uuid::now_v7().simple());
    let record = |name: &str| deploy_core::ApiKeyRecord {
        target: None,
        owner: None,
        id: Uuid::now_v7(),
        name: name.to_owned(),
        role: deploy_core::Role::Viewer,
        environments: vec![deploy_core::EnvironmentPattern::any()],
        key_hash: format!("{:064x}", Uuid::now_v7().as_u128()),
        created_by: "key:admin".into(),
        created_at: t0().replace_nanosecond(0).expect("whole second"),
    };
    let attempts: Vec<_> = (0..16).map(|_| record(&name)).collect();
    let results = futures::future::join_all(attempts.iter().cloned().map(|r| store.create_api_key(r))).await;
    let created = results.iter().filter(|r| r.is_ok()).count();
    assert_eq!(created, 1, "one name, one key, however many ask at once: {results:?}");
    for refused in results.iter().filter_map(|r| r.as_ref().err()) {
        assert!(matches!(refused, StoreError::Invalid(e) if e.has_field("name")), "{refused:?}");
    }
    let listed: Vec<_> = store.list_api_keys().await.expect("list").into_iter().filter(|k| k.name == name).collect();
    assert_eq!(listed.len(), 1, "{listed:?}");
    let later = store.create_api_key(record(&name)).await;
    assert!(matches!(&later, Err(StoreError::Invalid(e)) if e.has_field("name")), "{later:?}");
    store.delete_api_key(listed[0].id).await.expect("delete");
    store.create_api_key(record(&name)).await.expect("a deleted key's name is free again");
    Ran::Checked
}

/// The audit log lists newest first, filters by actor and environment, and pages with cursors.
pub async fn audit_log_pages_newest_first(store: &dyn FullStore) -> Ran {
    let actor = format!("key:auditor-{}", Uuid::now_v7().simple());
    let env = unique_env("audit");
    let mut ids = Vec::new();
    for i in 0..5 {
        let entry = deploy_core::AuditEntry {
            id: Uuid::now_v7(),
            at: t0().replace_nanosecond(0).expect("whole second"),
            actor: actor.clone(),
            action: "deployment.submit".into(),
            resource: format!("deployments/{i}"),
            environment: (i % 2 == 0).then(|| env.to_string()),
            request_id: format!("req-{i}"),
            outcome: if i == 3 { "forbidden".into() } else { "success".into() },
        };
        ids.push(entry.id);
        store.append_audit(entry).await.expect("append");
    }
    let filter = deploy_core::AuditFilter { actor: Some(actor.clone()), environment: None };
    let first = store.list_audit(&filter, &PageRequest { limit: 3, cursor: None }).await.expect("page 1");
    let got: Vec<Uuid> = first.items.iter().map(|e| e.id).collect();
    assert_eq!(got, vec![ids[4], ids[3], ids[2]], "newest first");
    assert_eq!(first.items[1].outcome, "forbidden");
    let second = store.list_audit(&filter, &PageRequest { limit: 3, cursor: first.next_cursor }).await.expect("page 2");
    let got: Vec<Uuid> = second.items.iter().map(|e| e.id).collect();
    assert_eq!(got, vec![ids[1], ids[0]]);
    assert_eq!(second.next_cursor, None, "last page");
    let by_env = deploy_core::AuditFilter { actor: None, environment: Some(env.to_string()) };
    let got: Vec<Uuid> = store
        .list_audit(&by_env, &PageRequest { limit: 50, cursor: None })
        .await
        .expect("by environment")
        .items
        .iter()
        .map(|e| e.id)
        .collect();
    assert_eq!(got, vec![ids[4], ids[2], ids[0]], "only that environment's entries");
    let bad = store.list_audit(&filter, &PageRequest { limit: 3, cursor: Some("nonsense".into()) }).await;
    assert!(matches!(bad, Err(StoreError::Invalid(_))), "a cursor the store never handed out: {bad:?}");
    Ran::Checked
}

/// An agent slot keeps its assignment (a new generation only for a new assignment) and the agent's last report.
pub async fn agent_slots(store: &dyn FullStore) -> Ran {
    let env = unique_env("agent");
    let target = deploy_core::TargetId::new("host-1").expect("target id");
    assert_eq!(store.agent_slot(&env, &target).await.expect("read"), None, "no slot before anything happened");
    let now = t0();
    let want = |v: &str| deploy_core::DesiredState::bare("svc".parse().expect("service"), v.parse().expect("version"));
    let first = DeploymentId::new();
    let slot = store.assign_agent(&env, &target, want("1.0"), first, 0, now).await.expect("assign");
    assert_eq!((slot.generation, slot.deployment), (1, Some(first)));
    let again = store.assign_agent(&env, &target, want("1.0"), first, 0, now).await.expect("assign again");
    assert_eq!(again.generation, 1, "the same assignment again is not a new generation");
    let report = deploy_core::AgentReport {
        generation: 1,
        version: Some("1.0".parse().expect("version")),
        health: deploy_core::Health::Healthy,
        output: "installed".into(),
        error: None,
    };
    let later = add_duration(now, Duration::from_secs(3));
    let seen = store.record_agent_report(&env, &target, report.clone(), later).await.expect("report");
    assert_eq!((seen.report.as_ref(), seen.last_seen), (Some(&report), Some(later)));
    assert_eq!(seen.current_report(), Some(&report));
    let next = store.assign_agent(&env, &target, want("2.0"), DeploymentId::new(), 0, later).await.expect("assign 2.0");
    assert_eq!(next.generation, 2);
    assert_eq!(next.current_report(), None, "the report is about an older assignment");
    let stored = store.agent_slot(&env, &target).await.expect("read").expect("slot");
    assert_eq!(stored, next, "what the store keeps is what it answered");
    let other = deploy_core::TargetId::new("host-2").expect("target id");
    assert_eq!(store.agent_slot(&env, &other).await.expect("read"), None, "slots are per target");
    Ran::Checked
}

/// Environments are listed in name order, paged by cursor, each with its revision.
pub async fn environments_are_listed_by_name(store: &dyn Store) -> Ran {
    let prefix = format!("ls-{}", Uuid::now_v7().simple());
    for suffix in ["c", "a", "b"] {
        let name = EnvironmentName::new(format!("{prefix}-{suffix}")).expect("valid name");
        store
            .put_environment(&name, environment(&["t-1"], "scripted", ConcurrencyPolicy::Queue), None, t0())
            .await
            .expect("create");
    }
    let mut seen = Vec::new();
    let mut page = PageRequest { limit: 2, cursor: None };
    loop {
        let got = store.list_environments(&page).await.expect("list");
        assert!(got.items.len() <= 2, "a page holds at most its limit");
        seen.extend(got.items.iter().map(|e| e.name.to_string()).filter(|n| n.starts_with(&prefix)));
        for pair in got.items.windows(2) {
            assert!(pair[0].name < pair[1].name, "environments come in name order");
        }
        match got.next_cursor {
            Some(c) => page.cursor = Some(c),
            None => break,
        }
    }
    let want: Vec<String> = ["a", "b", "c"].iter().map(|s| format!("{prefix}-{s}")).collect();
    assert_eq!(seen, want, "every environment once, in name order, across pages");
    Ran::Checked
}

/// Reading what does not exist is [`StoreError::NotFound`], never a default.
pub async fn unknown_ids_are_not_found(store: &dyn Store) -> Ran {
    let env = unique_env("missing");
    assert!(matches!(store.get_environment(&env).await, Err(StoreError::NotFound { .. })), "unknown environment");
    let id = DeploymentId::new();
    assert!(matches!(store.get_deployment(id).await, Err(StoreError::NotFound { .. })), "unknown deployment");
    assert!(
        matches!(store.request_cancel(id, t0()).await, Err(StoreError::NotFound { .. })),
        "cancel of an unknown deployment"
    );
    Ran::Checked
}

/// Many acceptances racing with one idempotency key make one deployment; every other answer is its replay (or says
/// the key is in flight), none is a second deployment.
pub async fn concurrent_accepts_with_one_key_make_one_deployment(store: &dyn Store) -> Ran {
    let env = env_with(store, "race", ConcurrencyPolicy::Queue).await;
    let now = t0();
    let answers = futures::future::join_all(
        (0..16).map(|_| store.accept(acceptance(&env, "1.0", Some(("ci", "race-key")), now))),
    )
    .await;
    let mut ids = std::collections::BTreeSet::new();
    for answer in answers {
        match answer {
            Ok(accepted) => {
                ids.insert(accepted.deployment.id());
            }
            Err(StoreError::IdempotencyKeyInFlight { .. }) => {}
            Err(e) => panic!("a racing acceptance failed: {e}"),
        }
    }
    assert_eq!(ids.len(), 1, "one key, one deployment: {ids:?}");
    let filter = DeploymentFilter { environment: Some(env), ..DeploymentFilter::default() };
    assert_eq!(store.count_deployments(&filter).await.expect("count"), 1, "one deployment stored");
    Ran::Checked
}

/// Controllers claiming at once get one lease on an environment's head between them.
pub async fn concurrent_claims_hand_out_one_lease(store: &dyn Store) -> Ran {
    let env = env_with(store, "claims", ConcurrencyPolicy::Queue).await;
    let now = t0();
    let accepted = store.accept(acceptance(&env, "1.0", None, now)).await.expect("accept");
    let id = accepted.deployment.id();
    // Each racer claims until it gets this deployment or nothing is left (other checks' work may come first).
    let racer = |i: usize| async move {
        let owner = format!("racer-{i}-{}", Uuid::now_v7().simple());
        for _ in 0..64 {
            match store.claim(&owner, now, Duration::from_secs(30)).await.expect("claim") {
                Some(c) if c.lease.deployment == id => return Some(c.lease.owner),
                Some(_) => {}
                None => return None,
            }
        }
        None
    };
    let holders: Vec<String> = futures::future::join_all((0..8).map(racer)).await.into_iter().flatten().collect();
    assert_eq!(holders.len(), 1, "one deployment, one live lease: {holders:?}");
    Ran::Checked
}

/// Events are numbered from 1 without gaps, and read back in order from any point.
pub async fn events_are_numbered_without_gaps(store: &dyn Store) -> Ran {
    let env = env_with(store, "events", ConcurrencyPolicy::Queue).await;
    let now = t0();
    let id = store.accept(acceptance(&env, "1.0", None, now)).await.expect("accept").deployment.id();
    let claim = claim_for(store, id, now).await;
    for _ in 0..3 {
        let update = ProgressUpdate {
            events: vec![deploy_core::NewEvent::deployment(now, DeploymentStatus::InProgress, "step".to_owned())],
            ..ProgressUpdate::default()
        };
        let _ = store.record(&claim.lease, update).await.expect("record");
    }
    let all = store.events(id, 0, 100).await.expect("events");
    let seqs: Vec<u64> = all.iter().map(|e| e.seq).collect();
    let want: Vec<u64> = (1..=seqs.len() as u64).collect();
    assert_eq!(seqs, want, "numbered from 1 without gaps");
    assert!(seqs.len() >= 4, "the queued event and three more: {seqs:?}");
    let tail = store.events(id, 2, 100).await.expect("events after 2");
    assert_eq!(tail.first().map(|e| e.seq), Some(3), "reading after 2 starts at 3");
    assert_eq!(store.events(id, 0, 2).await.expect("limited").len(), 2, "the limit holds");
    Ran::Checked
}

/// A released lease can be claimed by another controller at once, with a larger token; the old token is stale.
pub async fn released_leases_are_claimable_at_once(store: &dyn Store) -> Ran {
    let env = env_with(store, "release", ConcurrencyPolicy::Queue).await;
    let now = t0();
    let id = store.accept(acceptance(&env, "1.0", None, now)).await.expect("accept").deployment.id();
    let first = claim_for(store, id, now).await;
    store.release(&first.lease).await.expect("release");
    let second = claim_for(store, id, now).await;
    assert!(second.lease.token > first.lease.token, "a new lease has a larger token");
    let stale = store.record(&first.lease, ProgressUpdate::default()).await;
    assert!(matches!(stale, Err(StoreError::StaleToken { .. })), "the released token is stale: {stale:?}");
    Ran::Checked
}

/// Claims until the claim of deployment `id` comes (other checks' deployments may come first), within 64 tries.
async fn claim_for(store: &dyn Store, id: DeploymentId, now: Timestamp) -> deploy_core::Claim {
    for _ in 0..64 {
        let owner = format!("claimer-{}", Uuid::now_v7().simple());
        match store.claim(&owner, now, Duration::from_secs(30)).await.expect("claim") {
            Some(c) if c.lease.deployment == id => return c,
            Some(_) => continue,
            None => break,
        }
    }
    panic!("deployment {id} could not be claimed");
}

/// An agent's assignment is a fenced write: the controller that lost its lease cannot replace its successor's.
pub async fn agent_assignments_are_fenced(store: &dyn FullStore) -> Ran {
    let now = t0();
    let env = env_with(store, "agent-fence", ConcurrencyPolicy::Queue).await;
    let a = store.accept(acceptance(&env, "1", None, now)).await.expect("accept").deployment.id();
    let first = claim_for(store, a, now).await;
    let later = add_duration(now, Duration::from_secs(31));
    let second = claim_for(store, a, later).await;
    let host = deploy_core::TargetId::new("host-1").expect("target id");
    let want = deploy_core::DesiredState::bare("svc".parse().expect("service"), "1".parse().expect("version"));
    let stale = store.assign_agent(&env, &host, want.clone(), a, first.lease.token, later).await;
    assert!(matches!(stale, Err(StoreError::StaleToken { .. })), "stale assignment: {stale:?}");
    assert_eq!(store.agent_slot(&env, &host).await.expect("read"), None, "nothing was assigned");
    let slot =
        store.assign_agent(&env, &host, want, a, second.lease.token, later).await.expect("current token assigns");
    assert_eq!((slot.deployment, slot.fencing_token), (Some(a), second.lease.token));
    Ran::Checked
}
