//! Operator controls (pause, resume, promote, abort, retry) through the embedding API, in virtual time: each takes
//! effect at a safe point, survives a takeover, and is recorded as an event naming who asked.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::time::Duration;

use common::{assert_consistent, spawn_controller, wait_for, wait_terminal, within};
use deploy_core::spec::{CanaryStepRequest, FailureRequest, StrategyRequest};
use deploy_core::{
    ConcurrencyPolicy, Deployment, DeploymentRequest, DeploymentStatus, Error, EventStatus, EventType, OperatorAction,
    Principal, Role, StoreError, TargetStatus,
};
use deploy_testkit::fixtures::request;
use deploy_testkit::{CallKind, Fault, Harness};
use proptest::prelude::*;

const FOUR: [(&str, Option<&str>); 4] =
    [("web-1", Some("1.0")), ("web-2", Some("1.0")), ("web-3", Some("1.0")), ("web-4", Some("1.0"))];
const IDS: [&str; 4] = ["web-1", "web-2", "web-3", "web-4"];

fn rolling(n: u32) -> Option<StrategyRequest> {
    Some(StrategyRequest::Rolling { batch_size: Some(n.into()), pause: None })
}

fn step(percent: i64, until_promoted: bool) -> CanaryStepRequest {
    CanaryStepRequest {
        percent,
        verify_for: Some("5s".into()),
        pause: until_promoted.then(|| "until_promoted".to_owned()),
    }
}

fn canary(steps: Vec<CanaryStepRequest>) -> Option<StrategyRequest> {
    Some(StrategyRequest::Canary { steps })
}

/// Every apply of version 2.0 takes 5 s, so a request sent while the first batch runs arrives before the next.
fn slow(h: &Harness) {
    for t in IDS {
        h.executor.add_fault(t, Some("2.0"), Fault::Slow(Duration::from_secs(5)));
    }
}

/// A harness whose applies take 5 s ([`slow`]), a controller running over it, and `request` submitted.
async fn started(
    request: DeploymentRequest,
) -> (Harness, deploy_core::ShutdownTrigger, tokio::task::JoinHandle<()>, Deployment) {
    let h = Harness::new("prod", &FOUR, ConcurrencyPolicy::Queue).await;
    slow(&h);
    let (trigger, task) = spawn_controller(&h.orchestrator);
    let d = h.submit(request).await.unwrap();
    (h, trigger, task, d)
}

fn applies(h: &Harness) -> usize {
    IDS.iter().map(|t| h.executor.count(CallKind::Apply, t)).sum()
}

fn versions(h: &Harness) -> Vec<Option<String>> {
    IDS.iter().map(|t| h.executor.version_of(t)).collect()
}

async fn control(h: &Harness, d: &Deployment, action: OperatorAction) -> Result<Deployment, Error> {
    h.orchestrator.control(&h.admin, d.id(), action).await
}

/// Every target event between a `deployment.paused` event and the next event that ends the pause: none may be an
/// apply (a target entering `in_progress` or `verifying`).
fn applied_while_paused(events: &[deploy_core::Event]) -> Vec<String> {
    let mut paused = false;
    let mut out = Vec::new();
    for e in events {
        match e.event_type {
            EventType::Paused => paused = true,
            EventType::Resumed | EventType::RollingBack => paused = false,
            t if t.is_terminal() => paused = false,
            EventType::TargetUpdated if paused => {
                if matches!(e.status, EventStatus::Target(TargetStatus::InProgress | TargetStatus::Verifying)) {
                    out.push(e.message.clone());
                }
            }
            _ => {}
        }
    }
    out
}

#[tokio::test(start_paused = true)]
async fn pause_between_batches_holds_every_target_and_resume_goes_on_without_the_progress_deadline() {
    within(async {
        let (h, trigger, task, d) = started(DeploymentRequest {
            strategy: rolling(1),
            progress_deadline: Some("2m".into()),
            ..request("prod", "web", "2.0")
        })
        .await;
        wait_for(&h, d.id(), |d| d.targets()[0].status == TargetStatus::InProgress).await;
        let asked = control(&h, &d, OperatorAction::Pause).await.unwrap();
        assert!(asked.controls().pause_requested, "the request is recorded at once");
        assert_eq!(asked.status(), DeploymentStatus::InProgress, "and takes effect at the next safe point");
        let paused = wait_for(&h, d.id(), |d| d.status() == DeploymentStatus::Paused).await;
        assert_eq!(paused.targets()[0].status, TargetStatus::Succeeded, "the batch in flight finished first");
        assert!(paused.paused_at().is_some());
        let before = applies(&h);
        // Far longer than the progress deadline: a pause is not a stall.
        tokio::time::sleep(Duration::from_secs(20 * 60)).await;
        let still = h.get(d.id()).await;
        assert_eq!(still.status(), DeploymentStatus::Paused, "{:?}", still.status_reason());
        assert_eq!(applies(&h), before, "no target is applied while paused");
        assert_eq!(still.summary().pending, 3);

        // Pausing again changes nothing; resume goes on.
        control(&h, &d, OperatorAction::Pause).await.unwrap();
        control(&h, &d, OperatorAction::Resume).await.unwrap();
        let done = wait_terminal(&h, d.id()).await;
        trigger.fire();
        task.await.unwrap();
        assert_eq!(done.status(), DeploymentStatus::Succeeded, "{:?}", done.status_reason());
        assert_consistent(&done);
        assert_eq!(done.paused_at(), None);
        assert_eq!(versions(&h), vec![Some("2.0".to_owned()); 4]);

        let events = h.events(d.id()).await;
        let kinds: Vec<EventType> = events.iter().map(|e| e.event_type).collect();
        for kind in [EventType::Requested, EventType::Paused, EventType::Resumed] {
            assert!(kinds.contains(&kind), "{kind} is an event: {kinds:?}");
        }
        let requests: Vec<&str> =
            events.iter().filter(|e| e.event_type == EventType::Requested).map(|e| e.message.as_str()).collect();
        assert!(requests.iter().all(|m| m.ends_with(&format!("by {}", h.admin.id()))), "{requests:?}");
        assert_eq!(requests.len(), 3, "pause, pause again, resume: {requests:?}");
        assert!(applied_while_paused(&events).is_empty(), "{:?}", applied_while_paused(&events));
    })
    .await;
}

#[tokio::test(start_paused = true)]
async fn a_canary_waits_at_each_gated_step_until_promoted_and_full_skips_the_rest() {
    within(async {
        let (h, trigger, task, d) = started(DeploymentRequest {
            strategy: canary(vec![step(25, true), step(50, true), step(75, false), step(100, false)]),
            ..request("prod", "web", "2.0")
        })
        .await;
        let nothing = control(&h, &d, OperatorAction::Promote { full: false }).await;
        assert!(matches!(nothing, Err(Error::Store(StoreError::NotNow { .. }))), "nothing waits yet: {nothing:?}");
        let first = wait_for(&h, d.id(), |d| d.status() == DeploymentStatus::Paused).await;
        assert_eq!(first.awaiting_promotion(), Some(1));
        tokio::time::sleep(Duration::from_secs(600)).await;
        assert_eq!(applies(&h), 1, "only the first step's target was changed");

        // Promoting twice promotes one step: the second finds step 1 already promoted.
        control(&h, &d, OperatorAction::Promote { full: false }).await.unwrap();
        control(&h, &d, OperatorAction::Promote { full: false }).await.unwrap();
        let second = wait_for(&h, d.id(), |d| d.awaiting_promotion() == Some(2)).await;
        assert_eq!(second.status(), DeploymentStatus::Paused);
        assert_eq!(applies(&h), 2);

        control(&h, &d, OperatorAction::Promote { full: true }).await.unwrap();
        let done = wait_terminal(&h, d.id()).await;
        trigger.fire();
        task.await.unwrap();
        assert_eq!(done.status(), DeploymentStatus::Succeeded, "{:?}", done.status_reason());
        assert_eq!(versions(&h), vec![Some("2.0".to_owned()); 4]);
        let events = h.events(d.id()).await;
        let promoted: Vec<&str> =
            events.iter().filter(|e| e.event_type == EventType::Promoted).map(|e| e.message.as_str()).collect();
        assert_eq!(promoted.len(), 3, "{promoted:?}");
        assert!(promoted[2].contains("every remaining step is skipped"), "{promoted:?}");
        // With full, steps 3 and 4 went as one batch with no watch in between: both changed at once.
        assert!(h.executor.max_concurrent_changes() >= 2, "the rest went in one batch");
        assert!(applied_while_paused(&events).is_empty(), "{:?}", applied_while_paused(&events));
    })
    .await;
}

#[tokio::test(start_paused = true)]
async fn abort_with_rollback_restores_and_without_leaves_the_targets() {
    within(async {
        for rollback in [true, false] {
            let h = Harness::new("prod", &FOUR, ConcurrencyPolicy::Queue).await;
            slow(&h);
            let (trigger, task) = spawn_controller(&h.orchestrator);
            // The failure policy says the opposite of the request: the request wins.
            let on_failure = if rollback { "fail" } else { "rollback" };
            let d = h
                .submit(DeploymentRequest {
                    strategy: rolling(2),
                    failure: Some(FailureRequest { max_failed: None, on_failure: Some(on_failure.into()) }),
                    ..request("prod", "web", "2.0")
                })
                .await
                .unwrap();
            wait_for(&h, d.id(), |d| d.targets()[0].status == TargetStatus::InProgress).await;
            control(&h, &d, OperatorAction::Pause).await.unwrap();
            wait_for(&h, d.id(), |d| d.status() == DeploymentStatus::Paused).await;
            control(&h, &d, OperatorAction::Abort { rollback: Some(rollback) }).await.unwrap();
            let done = wait_terminal(&h, d.id()).await;
            trigger.fire();
            task.await.unwrap();
            assert_consistent(&done);
            assert_eq!(done.summary().cancelled, 2, "the second batch never ran: {:?}", done.targets());
            if rollback {
                assert_eq!(done.status(), DeploymentStatus::RolledBack, "{:?}", done.status_reason());
                assert_eq!(versions(&h), vec![Some("1.0".to_owned()); 4]);
            } else {
                // A deliberate stop is no failure (finding of the governance trial): it ends cancelled, its
                // terminal event `deployment.cancelled`, so nobody is paged for an operator's decision.
                assert_eq!(done.status(), DeploymentStatus::Cancelled, "{:?}", done.status_reason());
                let events = h.events(d.id()).await;
                let last = events.last().unwrap();
                assert_eq!(last.event_type, deploy_core::EventType::Cancelled, "{last:?}");
                assert!(!events.iter().any(|e| e.event_type == deploy_core::EventType::Failed));
                assert_eq!(versions(&h)[..2], [Some("2.0".to_owned()), Some("2.0".to_owned())]);
                assert_eq!(versions(&h)[2..], [Some("1.0".to_owned()), Some("1.0".to_owned())]);
            }
            assert!(done.status_reason().unwrap_or_default().contains("aborted on request"));
            let late = control(&h, &d, OperatorAction::Abort { rollback: None }).await;
            assert!(matches!(late, Err(Error::Store(StoreError::AlreadyFinished { .. }))), "{late:?}");
        }
    })
    .await;
}

#[tokio::test(start_paused = true)]
async fn an_abort_before_the_start_cancels_at_once_and_only_a_canary_is_promoted() {
    within(async {
        let h = Harness::new("prod", &FOUR, ConcurrencyPolicy::Queue).await;
        let d = h.submit(request("prod", "web", "2.0")).await.unwrap();
        let aborted = control(&h, &d, OperatorAction::Abort { rollback: None }).await.unwrap();
        assert_eq!(aborted.status(), DeploymentStatus::Cancelled, "nobody holds it: it stops at once");
        assert_eq!(applies(&h), 0);

        let canary_free = h.submit(request("prod", "web", "2.0")).await.unwrap();
        let promote = control(&h, &canary_free, OperatorAction::Promote { full: true }).await;
        assert!(matches!(promote, Err(Error::Store(StoreError::NotNow { .. }))), "not a canary: {promote:?}");
    })
    .await;
}

#[tokio::test(start_paused = true)]
async fn a_forgotten_pause_is_aborted_at_its_pause_deadline() {
    within(async {
        let (h, trigger, task, d) = started(DeploymentRequest {
            strategy: rolling(2),
            pause_deadline: Some("30m".into()),
            failure: Some(FailureRequest { max_failed: None, on_failure: Some("rollback".into()) }),
            ..request("prod", "web", "2.0")
        })
        .await;
        wait_for(&h, d.id(), |d| d.targets()[0].status == TargetStatus::InProgress).await;
        control(&h, &d, OperatorAction::Pause).await.unwrap();
        let paused = wait_for(&h, d.id(), |d| d.status() == DeploymentStatus::Paused).await;
        tokio::time::sleep(Duration::from_secs(29 * 60)).await;
        assert_eq!(h.get(d.id()).await.status(), DeploymentStatus::Paused, "not before its deadline");
        let done = wait_terminal(&h, d.id()).await;
        trigger.fire();
        task.await.unwrap();
        assert_eq!(
            done.status(),
            DeploymentStatus::RolledBack,
            "the failure policy decides: {:?}",
            done.status_reason()
        );
        assert!(done.status_reason().unwrap_or_default().contains("pause deadline"), "{:?}", done.status_reason());
        let ended = done.finished_at().unwrap();
        let held = ended - paused.paused_at().unwrap();
        assert!(held >= time::Duration::minutes(30), "aborted after {held}");
        assert_eq!(versions(&h), vec![Some("1.0".to_owned()); 4]);
    })
    .await;
}

#[tokio::test(start_paused = true)]
async fn retry_touches_only_the_failed_targets_and_links_to_the_first() {
    within(async {
        let h = Harness::new("prod", &FOUR, ConcurrencyPolicy::Queue).await;
        h.executor.add_fault("web-3", Some("2.0"), Fault::FailPermanently);
        let d = h
            .submit(DeploymentRequest {
                failure: Some(FailureRequest { max_failed: Some("1".into()), on_failure: Some("fail".into()) }),
                ..request("prod", "web", "2.0")
            })
            .await
            .unwrap();
        h.settle().await;
        let first = h.get(d.id()).await;
        assert_eq!(first.status(), DeploymentStatus::Degraded, "{:?}", first.status_reason());
        let running = h.submit(request("prod", "web", "2.0")).await.unwrap();
        let not_yet = h.orchestrator.retry(&h.admin, running.id(), None).await;
        assert!(matches!(not_yet, Err(Error::NotRetryable(..))), "only degraded or failed: {not_yet:?}");
        h.settle().await;

        h.executor.clear_faults("web-3");
        let before: Vec<usize> = IDS.iter().map(|t| h.executor.count(CallKind::Apply, t)).collect();
        let key = deploy_core::IdempotencyKey::new("retry-1").unwrap();
        let retry = h.orchestrator.retry(&h.admin, d.id(), Some(key.clone())).await.unwrap();
        let again = h.orchestrator.retry(&h.admin, d.id(), Some(key)).await.unwrap();
        assert!(again.replayed && again.deployment.id() == retry.deployment.id(), "one key, one retry");
        assert_eq!(retry.deployment.retry_of(), Some(d.id()));
        let ids: Vec<&str> = retry.deployment.targets().iter().map(|t| t.id.as_str()).collect();
        assert_eq!(ids, ["web-3"]);
        h.settle().await;
        let done = h.get(retry.deployment.id()).await;
        assert_eq!(done.status(), DeploymentStatus::Succeeded, "{:?}", done.status_reason());
        let after: Vec<usize> = IDS.iter().map(|t| h.executor.count(CallKind::Apply, t)).collect();
        assert_eq!(after[2], before[2] + 1, "web-3 was applied again");
        for i in [0, 1, 3] {
            assert_eq!(after[i], before[i], "{} was not touched", IDS[i]);
        }
    })
    .await;
}

#[tokio::test(start_paused = true)]
async fn only_deployers_of_the_environment_may_operate_and_the_actor_is_named() {
    within(async {
        let h = Harness::new("prod", &FOUR, ConcurrencyPolicy::Queue).await;
        let d = h.submit(request("prod", "web", "2.0")).await.unwrap();
        let viewer = Principal::new("key:viewer", Role::Viewer, vec![deploy_core::EnvironmentPattern::any()]);
        let elsewhere = Principal::new(
            "key:staging",
            Role::Deployer,
            vec![deploy_core::EnvironmentPattern::new("staging").unwrap()],
        );
        let deployer = Principal::new("key:ops", Role::Deployer, vec![deploy_core::EnvironmentPattern::any()]);
        for action in [
            OperatorAction::Pause,
            OperatorAction::Resume,
            OperatorAction::Promote { full: true },
            OperatorAction::Abort { rollback: None },
        ] {
            for p in [&viewer, &elsewhere] {
                let r = h.orchestrator.control(p, d.id(), action).await;
                assert!(matches!(r, Err(Error::Forbidden(_))), "{} may not {}: {r:?}", p.id(), action.name());
            }
        }
        assert!(matches!(h.orchestrator.retry(&viewer, d.id(), None).await, Err(Error::Forbidden(_))));
        assert!(h.get(d.id()).await.controls().is_empty(), "a refused request records nothing");
        h.orchestrator.control(&deployer, d.id(), OperatorAction::Pause).await.unwrap();
        let events = h.events(d.id()).await;
        let asked = events.iter().find(|e| e.event_type == EventType::Requested).unwrap();
        assert_eq!(asked.message, "pause requested by key:ops");
    })
    .await;
}

#[tokio::test(start_paused = true)]
async fn a_paused_deployment_stays_paused_through_a_takeover_and_resumes_on_the_new_holder() {
    within(async {
        let h = Harness::new("prod", &FOUR, ConcurrencyPolicy::Queue).await;
        slow(&h);
        let first = h.replica("replica-a");
        let (trigger_a, task_a) = spawn_controller(&first);
        let d = h.submit(DeploymentRequest { strategy: rolling(1), ..request("prod", "web", "2.0") }).await.unwrap();
        wait_for(&h, d.id(), |d| d.targets()[0].status == TargetStatus::InProgress).await;
        control(&h, &d, OperatorAction::Pause).await.unwrap();
        wait_for(&h, d.id(), |d| d.status() == DeploymentStatus::Paused).await;
        // replica-a dies without a word: its task is dropped, its lease lapses.
        task_a.abort();
        drop(trigger_a);
        let applied = applies(&h);
        let second = h.replica("replica-b");
        let (trigger_b, task_b) = spawn_controller(&second);
        tokio::time::sleep(Duration::from_secs(120)).await;
        let held = h.get(d.id()).await;
        assert_eq!(held.status(), DeploymentStatus::Paused, "{:?}", held.status_reason());
        assert_eq!(applies(&h), applied, "the new holder applies nothing while paused");
        let events = h.events(d.id()).await;
        assert!(events.iter().any(|e| e.message.contains("taken over by replica-b")), "the takeover is an event");
        control(&h, &d, OperatorAction::Resume).await.unwrap();
        let done = wait_terminal(&h, d.id()).await;
        trigger_b.fire();
        task_b.await.unwrap();
        assert_eq!(done.status(), DeploymentStatus::Succeeded, "{:?}", done.status_reason());
        assert!(applied_while_paused(&h.events(d.id()).await).is_empty());
    })
    .await;
}

/// One operator call of the property test.
#[derive(Debug, Clone, Copy)]
enum Call {
    Control(OperatorAction),
    Cancel,
}

fn calls() -> impl Strategy<Value = Vec<(Call, u64)>> {
    let action = prop_oneof![
        Just(Call::Control(OperatorAction::Pause)),
        Just(Call::Control(OperatorAction::Resume)),
        Just(Call::Control(OperatorAction::Resume)),
        any::<bool>().prop_map(|full| Call::Control(OperatorAction::Promote { full })),
        prop::option::of(any::<bool>()).prop_map(|rollback| Call::Control(OperatorAction::Abort { rollback })),
        Just(Call::Cancel),
    ];
    prop::collection::vec((action, 0u64..20_000), 0..8)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, .. ProptestConfig::default() })]

    /// Whatever pause, resume, promote, abort and cancel requests arrive, in whatever order and at whatever moment,
    /// a deployment ends in exactly one terminal status (one terminal event, last), its record is consistent, and no
    /// target is applied while it is paused.
    #[test]
    fn any_sequence_of_operator_calls_ends_in_one_terminal_status_and_never_applies_while_paused(
        calls in calls(),
        is_canary in any::<bool>(),
    ) {
        let rt = tokio::runtime::Builder::new_current_thread().enable_time().start_paused(true).build().unwrap();
        rt.block_on(async {
            let h = Harness::new("prod", &FOUR, ConcurrencyPolicy::Queue).await;
            for t in IDS {
                h.executor.add_fault(t, Some("2.0"), Fault::Slow(Duration::from_secs(2)));
            }
            let (trigger, task) = spawn_controller(&h.orchestrator);
            let strategy = if is_canary {
                canary(vec![step(25, true), step(50, false), step(100, false)])
            } else {
                rolling(1)
            };
            let d = h.submit(DeploymentRequest { strategy, ..request("prod", "web", "2.0") }).await.unwrap();
            for (call, after_ms) in &calls {
                tokio::time::sleep(Duration::from_millis(*after_ms)).await;
                let answer = match call {
                    Call::Control(action) => control(&h, &d, *action).await.map(|_| ()),
                    Call::Cancel => h.orchestrator.cancel(&h.admin, d.id()).await.map(|_| ()),
                };
                match answer {
                    Ok(()) | Err(Error::Store(StoreError::AlreadyFinished { .. } | StoreError::NotNow { .. })) => {}
                    Err(e) => panic!("{call:?} failed: {e}"),
                }
            }
            // Whatever is left standing (a pause, a step waiting to be promoted) is released, so the run ends.
            let _ = control(&h, &d, OperatorAction::Resume).await;
            let _ = control(&h, &d, OperatorAction::Promote { full: true }).await;
            let done = tokio::time::timeout(Duration::from_secs(3 * 3600), wait_terminal(&h, d.id())).await
                .expect("the deployment ends");
            trigger.fire();
            task.await.unwrap();
            assert_consistent(&done);
            let events = h.events(d.id()).await;
            let terminal: Vec<_> = events.iter().filter(|e| e.event_type.is_terminal()).collect();
            prop_assert_eq!(terminal.len(), 1, "exactly one terminal event");
            prop_assert_eq!(events.last().map(|e| e.event_type), Some(EventType::for_status(done.status())));
            let applied = applied_while_paused(&events);
            prop_assert!(applied.is_empty(), "applied while paused: {:?}", applied);
            Ok(())
        })?;
    }
}

#[tokio::test(start_paused = true)]
async fn a_resume_through_the_same_orchestrator_is_seen_at_once_not_at_the_next_renewal() {
    within(async {
        let h = Harness::new("prod", &FOUR, ConcurrencyPolicy::Queue).await;
        slow(&h);
        // Renewals every 100 s: a resume that waited for one would take that long.
        let config = deploy_core::OrchestratorConfig {
            lease: Duration::from_secs(300),
            ..deploy_testkit::fixtures::fast_config("solo")
        };
        let router = deploy_core::ExecutorRouter::new().with(deploy_testkit::fixtures::SCRIPTED, h.executor.clone());
        let store: std::sync::Arc<dyn deploy_core::Store> = h.store.clone();
        let o = deploy_core::Orchestrator::builder(store, router).clock(h.clock.clone()).config(config).build();
        let (trigger, task) = spawn_controller(&o);
        let d = h.submit(DeploymentRequest { strategy: rolling(1), ..request("prod", "web", "2.0") }).await.unwrap();
        wait_for(&h, d.id(), |d| d.targets()[0].status == TargetStatus::InProgress).await;
        o.control(&h.admin, d.id(), OperatorAction::Pause).await.unwrap();
        wait_for(&h, d.id(), |d| d.status() == DeploymentStatus::Paused).await;
        let asked = tokio::time::Instant::now();
        o.control(&h.admin, d.id(), OperatorAction::Resume).await.unwrap();
        wait_for(&h, d.id(), |d| d.status() != DeploymentStatus::Paused).await;
        let took = asked.elapsed();
        assert!(took < Duration::from_secs(2), "resumed {took:?} after the request");
        let done = wait_terminal(&h, d.id()).await;
        trigger.fire();
        task.await.unwrap();
        assert_eq!(done.status(), DeploymentStatus::Succeeded);
    })
    .await;
}
