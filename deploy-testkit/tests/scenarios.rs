//! One scenario per edge case of the concept document and per invariant of the architecture, driven through the
//! public embedding API against the in-memory store and the scripted executor, in virtual time.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{assert_consistent, spawn_controller, target_states, wait_for, wait_terminal, within};
use deploy_core::spec::{FailureRequest, StepRequest, StrategyRequest, TargetsRequest, UnreachableRequest};
use deploy_core::{
    ConcurrencyPolicy, DeploymentRequest, DeploymentStatus, Error, EventType, IdempotencyKey, Revision, StoreError,
    Submission, TargetStatus,
};
use deploy_testkit::faulty::FaultyStore;
use deploy_testkit::fixtures::request;
use deploy_testkit::{CallKind, Fault, Harness};

const FOUR: [(&str, Option<&str>); 4] =
    [("web-1", Some("1.0")), ("web-2", Some("1.0")), ("web-3", Some("1.0")), ("web-4", Some("1.0"))];

fn rolling(n: u32) -> Option<StrategyRequest> {
    Some(StrategyRequest::Rolling { batch_size: Some(n.into()), pause: None })
}

fn failure(max_failed: &str, on_failure: &str) -> Option<FailureRequest> {
    Some(FailureRequest { max_failed: Some(max_failed.into()), on_failure: Some(on_failure.into()) })
}

fn versions(h: &Harness) -> Vec<Option<String>> {
    ["web-1", "web-2", "web-3", "web-4"].iter().map(|t| h.executor.version_of(t)).collect()
}

#[tokio::test(start_paused = true)]
async fn rolling_update_replaces_every_target_two_at_a_time_and_verifies_each() {
    within(async {
        let h = Harness::new("prod", &FOUR, ConcurrencyPolicy::Queue).await;
        let d = h.submit(DeploymentRequest { strategy: rolling(2), ..request("prod", "web", "2.0") }).await.unwrap();
        assert_eq!(d.status(), DeploymentStatus::Queued, "submit returns at once with a queued deployment");
        h.settle().await;
        let d = h.get(d.id()).await;
        assert_eq!(d.status(), DeploymentStatus::Succeeded, "{:?}", d.status_reason());
        assert_consistent(&d);
        assert_eq!(d.summary().succeeded, 4);
        assert!(d.targets().iter().all(|t| t.from_version.as_ref().map(|v| v.as_str()) == Some("1.0")));
        assert_eq!(versions(&h), vec![Some("2.0".to_owned()); 4]);
        assert!(h.executor.max_concurrent_changes() <= 2, "never more than one batch at once");
        for t in ["web-1", "web-2", "web-3", "web-4"] {
            assert!(h.executor.count(CallKind::Verify, t) >= 2, "{t} was verified for healthy_for, not once");
        }
        let events = h.events(d.id()).await;
        let seqs: Vec<u64> = events.iter().map(|e| e.seq).collect();
        assert_eq!(seqs, (1..=events.len() as u64).collect::<Vec<_>>(), "events are numbered without gaps");
        assert_eq!(events.first().map(|e| e.event_type), Some(EventType::Queued));
        assert_eq!(events.last().map(|e| e.event_type), Some(EventType::Succeeded));
        let env = h.orchestrator.environment(&h.admin, &h.environment).await.unwrap();
        assert!(
            env.targets
                .iter()
                .all(|t| t.actual.as_ref().and_then(|a| a.version.as_ref()).map(|v| v.as_str()) == Some("2.0"))
        );
        assert!(env.targets.iter().all(|t| t.desired.as_ref().map(|d| d.version.as_str()) == Some("2.0")));
        assert_eq!(env.active_deployment, None);
    })
    .await;
}

#[tokio::test(start_paused = true)]
async fn duplicate_submissions_sent_concurrently_create_one_deployment() {
    within(async {
        let h = Harness::new("prod", &FOUR, ConcurrencyPolicy::Queue).await;
        let key = IdempotencyKey::new("release-2.0-build-77").unwrap();
        let submit = || {
            h.orchestrator.submit(
                &h.admin,
                Submission {
                    request: request("prod", "web", "2.0"),
                    idempotency_key: Some(key.clone()),
                    expected_revision: None,
                },
            )
        };
        let results = futures::future::join_all((0..25).map(|_| submit())).await;
        let ids: std::collections::BTreeSet<_> = results.iter().map(|r| r.as_ref().unwrap().deployment.id()).collect();
        assert_eq!(ids.len(), 1, "one deployment for one key");
        assert_eq!(results.iter().filter(|r| !r.as_ref().unwrap().replayed).count(), 1, "exactly one original");
        let other = h
            .orchestrator
            .submit(
                &h.admin,
                Submission {
                    request: request("prod", "web", "3.0"),
                    idempotency_key: Some(key.clone()),
                    expected_revision: None,
                },
            )
            .await;
        assert!(matches!(other, Err(Error::Store(StoreError::IdempotencyKeyReuse { .. }))), "{other:?}");
        h.settle().await;
        let replay = submit().await.unwrap();
        assert!(replay.replayed);
        assert_eq!(
            replay.deployment.status(),
            DeploymentStatus::Succeeded,
            "a replay shows the deployment as it is now"
        );
        for t in ["web-1", "web-2", "web-3", "web-4"] {
            assert_eq!(h.executor.count(CallKind::Apply, t), 1, "{t} deployed once");
        }
    })
    .await;
}

#[tokio::test(start_paused = true)]
async fn two_submissions_to_one_environment_run_one_after_the_other() {
    within(async {
        let h = Harness::new("prod", &FOUR, ConcurrencyPolicy::Queue).await;
        let (trigger, task) = spawn_controller(&h.orchestrator);
        let (a, b) = tokio::join!(h.submit(request("prod", "web", "2.0")), h.submit(request("prod", "web", "3.0")));
        let (a, b) = (a.unwrap(), b.unwrap());
        let a = wait_terminal(&h, a.id()).await;
        let b = wait_terminal(&h, b.id()).await;
        trigger.fire();
        task.await.unwrap();
        assert_eq!((a.status(), b.status()), (DeploymentStatus::Succeeded, DeploymentStatus::Succeeded));
        let (first, second) = if a.created_at() <= b.created_at() && a.id() < b.id() { (&a, &b) } else { (&b, &a) };
        assert!(second.started_at().unwrap() >= first.finished_at().unwrap(), "the second starts after the first ends");
        assert_eq!(versions(&h), vec![Some(second.version().to_string()); 4], "the later acceptance wins");
        assert!(second.revision() > first.revision(), "acceptance sequences versions");
    })
    .await;
}

#[tokio::test(start_paused = true)]
async fn reject_policy_refuses_a_second_deployment_while_one_is_active() {
    within(async {
        let h = Harness::new("prod", &FOUR, ConcurrencyPolicy::Reject).await;
        let first = h.submit(request("prod", "web", "2.0")).await.unwrap();
        let second = h.submit(request("prod", "web", "3.0")).await;
        match second {
            Err(Error::Store(StoreError::EnvironmentBusy { active, .. })) => assert_eq!(active, first.id()),
            other => panic!("expected environment-busy, got {other:?}"),
        }
        h.settle().await;
        assert!(h.submit(request("prod", "web", "3.0")).await.is_ok(), "accepted once the first is finished");
    })
    .await;
}

#[tokio::test(start_paused = true)]
async fn supersede_policy_replaces_the_running_deployment_at_its_next_batch_boundary() {
    within(async {
        let h = Harness::new("prod", &FOUR, ConcurrencyPolicy::Supersede).await;
        for t in ["web-1", "web-2", "web-3", "web-4"] {
            h.executor.add_fault(t, Some("2.0"), Fault::Slow(Duration::from_secs(5)));
        }
        let (trigger, task) = spawn_controller(&h.orchestrator);
        let old = h.submit(DeploymentRequest { strategy: rolling(1), ..request("prod", "web", "2.0") }).await.unwrap();
        wait_for(&h, old.id(), |d| d.summary().succeeded >= 1).await;
        let queued = h.submit(request("prod", "web", "2.5")).await.unwrap();
        let newest = h.submit(request("prod", "web", "3.0")).await.unwrap();
        let queued = h.get(queued.id()).await;
        assert_eq!(queued.status(), DeploymentStatus::Superseded, "a queued deployment is superseded at once");
        let old = wait_terminal(&h, old.id()).await;
        let newest = wait_terminal(&h, newest.id()).await;
        trigger.fire();
        task.await.unwrap();
        assert_eq!(old.status(), DeploymentStatus::Superseded);
        assert!(old.superseded_by().is_some());
        assert!(old.summary().cancelled >= 1, "later batches of the old one never ran: {:?}", target_states(&old));
        assert_consistent(&old);
        assert_eq!(newest.status(), DeploymentStatus::Succeeded);
        assert_eq!(versions(&h), vec![Some("3.0".to_owned()); 4]);
        assert_eq!(h.executor.count(CallKind::Apply, "web-4"), 1, "web-4 got only the newest version");
    })
    .await;
}

#[tokio::test(start_paused = true)]
async fn stale_or_missing_expected_revision_is_refused() {
    within(async {
        let h = Harness::new("prod", &FOUR, ConcurrencyPolicy::Queue).await;
        let env = h.orchestrator.environment(&h.admin, &h.environment).await.unwrap();
        let ok = h
            .orchestrator
            .submit(
                &h.admin,
                Submission {
                    request: request("prod", "web", "2.0"),
                    expected_revision: Some(env.revision),
                    idempotency_key: None,
                },
            )
            .await
            .unwrap();
        assert_eq!(ok.deployment.revision(), env.revision.next());
        let stale = h
            .orchestrator
            .submit(
                &h.admin,
                Submission {
                    request: request("prod", "web", "3.0"),
                    expected_revision: Some(env.revision),
                    idempotency_key: None,
                },
            )
            .await;
        match stale {
            Err(Error::Store(StoreError::PreconditionFailed { expected, current })) => {
                assert_eq!((expected, current), (env.revision, env.revision.next()));
            }
            other => panic!("expected precondition-failed, got {other:?}"),
        }
        let mut spec = deploy_testkit::fixtures::environment(&["web-1"], "scripted", ConcurrencyPolicy::Queue);
        spec.require_if_match = true;
        let name = deploy_testkit::fixtures::env_name("guarded");
        h.orchestrator.put_environment(&h.admin, &name, spec, None).await.unwrap();
        let missing = h.submit(request("guarded", "web", "2.0")).await;
        assert!(matches!(missing, Err(Error::Store(StoreError::PreconditionRequired { .. }))), "{missing:?}");
        let stale_env = h.orchestrator.put_environment(
            &h.admin,
            &name,
            deploy_testkit::fixtures::environment(&["web-1"], "scripted", ConcurrencyPolicy::Queue),
            Some(Revision::new(99)),
        );
        assert!(matches!(stale_env.await, Err(Error::Store(StoreError::PreconditionFailed { .. }))));
    })
    .await;
}

#[tokio::test(start_paused = true)]
async fn partial_success_within_tolerance_is_degraded_with_every_target_visible() {
    within(async {
        let h = Harness::new("prod", &FOUR, ConcurrencyPolicy::Queue).await;
        h.executor.add_fault("web-3", Some("2.0"), Fault::FailPermanently);
        let d = h
            .submit(DeploymentRequest {
                failure: failure("1", "rollback"),
                strategy: rolling(2),
                ..request("prod", "web", "2.0")
            })
            .await
            .unwrap();
        h.settle().await;
        let d = h.get(d.id()).await;
        assert_eq!(d.status(), DeploymentStatus::Degraded, "{:?}", d.status_reason());
        assert_consistent(&d);
        assert_eq!((d.summary().succeeded, d.summary().failed), (3, 1));
        let failed = d.targets().iter().find(|t| t.status == TargetStatus::Failed).unwrap();
        assert_eq!(failed.id.as_str(), "web-3");
        assert!(failed.error.as_deref().unwrap_or_default().contains("refused"), "{:?}", failed.error);
        assert!(d.status_reason().unwrap().contains("1 of 4"), "{:?}", d.status_reason());
        assert_eq!(h.executor.count(CallKind::Apply, "web-3"), 1, "a permanent error is not retried");
    })
    .await;
}

#[tokio::test(start_paused = true)]
async fn failure_beyond_the_threshold_rolls_every_changed_target_back() {
    within(async {
        let h = Harness::new("prod", &FOUR, ConcurrencyPolicy::Queue).await;
        h.executor.add_fault("web-2", Some("2.0"), Fault::FailPermanently);
        let d = h.submit(DeploymentRequest { strategy: rolling(2), ..request("prod", "web", "2.0") }).await.unwrap();
        h.settle().await;
        let d = h.get(d.id()).await;
        assert_eq!(d.status(), DeploymentStatus::RolledBack, "{:?}", d.status_reason());
        assert_consistent(&d);
        assert_eq!(versions(&h), vec![Some("1.0".to_owned()); 4], "everything runs the previous version again");
        assert_eq!(h.executor.count(CallKind::Apply, "web-4"), 0, "the batch after the failure never started");
        let states = target_states(&d);
        assert!(states.contains(&("web-1".into(), "rolled_back".into())));
        assert!(states.contains(&("web-2".into(), "rolled_back".into())), "{states:?}");
        assert!(states.contains(&("web-4".into(), "cancelled".into())));
        let kinds: Vec<EventType> = h.events(d.id()).await.iter().map(|e| e.event_type).collect();
        assert!(kinds.contains(&EventType::RollingBack));
        assert_eq!(kinds.last(), Some(&EventType::RolledBack));
        assert!(!kinds.contains(&EventType::Failed), "rolled_back is reached without a terminal failed in between");
    })
    .await;
}

/// Finding of the chaos rerun: a deployment in which some targets failed ended `rolled_back` while the targets that
/// succeeded kept running the new version, because they ran nothing before it. `rolled_back` means every target runs
/// what it ran before; when that is not so the deployment ends `failed`, and each such target says it could not be
/// restored.
#[tokio::test(start_paused = true)]
async fn a_rollback_that_cannot_restore_a_target_that_ran_nothing_before_ends_failed() {
    within(async {
        let h =
            Harness::new("prod", &[("web-1", None), ("web-2", Some("1.0")), ("web-3", None)], ConcurrencyPolicy::Queue)
                .await;
        h.executor.add_fault("web-3", Some("2.0"), Fault::FailPermanently);
        let d = h.submit(DeploymentRequest { strategy: rolling(2), ..request("prod", "web", "2.0") }).await.unwrap();
        h.settle().await;
        let d = h.get(d.id()).await;
        assert_eq!(d.status(), DeploymentStatus::Failed, "{:?}", d.status_reason());
        assert_consistent(&d);
        let reason = d.status_reason().unwrap_or_default();
        assert!(reason.contains("ran no earlier version and still run the new one"), "{reason}");
        let web1 = d.targets().iter().find(|t| t.id.as_str() == "web-1").unwrap();
        assert_eq!(web1.status, TargetStatus::Succeeded, "it runs 2.0, and says so");
        assert!(web1.error.as_deref().unwrap_or_default().contains("not restorable"), "{web1:?}");
        let web2 = d.targets().iter().find(|t| t.id.as_str() == "web-2").unwrap();
        assert_eq!(web2.status, TargetStatus::RolledBack, "what could be restored was");
        assert_eq!(versions(&h)[1], Some("1.0".to_owned()));
        let kinds: Vec<EventType> = h.events(d.id()).await.iter().map(|e| e.event_type).collect();
        assert_eq!(kinds.last(), Some(&EventType::Failed));
    })
    .await;
}

#[tokio::test(start_paused = true)]
async fn failure_with_policy_fail_stops_without_rolling_back() {
    within(async {
        let h = Harness::new("prod", &FOUR, ConcurrencyPolicy::Queue).await;
        h.executor.add_fault("web-2", Some("2.0"), Fault::FailPermanently);
        let d = h
            .submit(DeploymentRequest {
                strategy: rolling(2),
                failure: failure("0", "fail"),
                ..request("prod", "web", "2.0")
            })
            .await
            .unwrap();
        h.settle().await;
        let d = h.get(d.id()).await;
        assert_eq!(d.status(), DeploymentStatus::Failed);
        assert_consistent(&d);
        assert_eq!(versions(&h), vec![Some("2.0".into()), Some("1.0".into()), Some("1.0".into()), Some("1.0".into())]);
    })
    .await;
}

#[tokio::test(start_paused = true)]
async fn a_target_that_is_unhealthy_after_apply_is_not_a_success() {
    within(async {
        let h = Harness::new("prod", &FOUR, ConcurrencyPolicy::Queue).await;
        h.executor.add_fault("web-1", Some("2.0"), Fault::Unhealthy);
        let d = h
            .submit(DeploymentRequest { failure: failure("1", "fail"), ..request("prod", "web", "2.0") })
            .await
            .unwrap();
        h.settle().await;
        let d = h.get(d.id()).await;
        assert_eq!(d.status(), DeploymentStatus::Degraded);
        let t = &d.targets()[0];
        assert_eq!(t.status, TargetStatus::Failed, "apply returned Ok, but health never held");
        assert!(t.error.as_deref().unwrap().contains("not healthy for 1s within 10s"), "{:?}", t.error);
        assert!(h.executor.count(CallKind::Verify, "web-1") >= 10, "verification polled until its timeout");
    })
    .await;
}

async fn unreachable_case(then: &str) -> (Harness, deploy_core::Deployment) {
    let h = Harness::new("prod", &FOUR, ConcurrencyPolicy::Queue).await;
    h.executor.add_fault("web-2", Some("2.0"), Fault::Unreachable);
    let d = h
        .submit(DeploymentRequest {
            strategy: rolling(2),
            failure: failure("1", "rollback"),
            on_unreachable: Some(UnreachableRequest { wait: Some("30s".into()), then: Some(then.into()) }),
            ..request("prod", "web", "2.0")
        })
        .await
        .unwrap();
    h.settle().await;
    let d = h.get(d.id()).await;
    assert_consistent(&d);
    (h, d)
}

#[tokio::test(start_paused = true)]
async fn unreachable_target_with_continue_finishes_degraded() {
    within(async {
        let (h, d) = unreachable_case("continue").await;
        assert_eq!(d.status(), DeploymentStatus::Degraded, "{:?}", d.status_reason());
        assert_eq!(d.summary().unreachable, 1);
        assert_eq!(d.summary().succeeded, 3);
        let started = d.started_at().unwrap();
        let t = d.targets().iter().find(|t| t.id.as_str() == "web-2").unwrap();
        assert!(
            deploy_core::elapsed_between(started, t.updated_at) >= Duration::from_secs(30),
            "waited on_unreachable.wait"
        );
        assert!(h.executor.count(CallKind::Apply, "web-2") > 1, "kept trying during the wait");
    })
    .await;
}

#[tokio::test(start_paused = true)]
async fn unreachable_target_with_fail_counts_against_max_failed() {
    within(async {
        let (_, d) = unreachable_case("fail").await;
        assert_eq!(d.status(), DeploymentStatus::Degraded, "one unreachable target is within max_failed 1");
        assert_eq!(d.summary().unreachable, 1);
        let h = Harness::new("prod", &FOUR, ConcurrencyPolicy::Queue).await;
        h.executor.add_fault("web-1", Some("2.0"), Fault::Unreachable);
        h.executor.add_fault("web-2", Some("2.0"), Fault::Unreachable);
        let d = h
            .submit(DeploymentRequest {
                strategy: rolling(2),
                failure: failure("1", "rollback"),
                on_unreachable: Some(UnreachableRequest { wait: Some("5s".into()), then: Some("fail".into()) }),
                ..request("prod", "web", "2.0")
            })
            .await
            .unwrap();
        h.settle().await;
        assert_eq!(h.get(d.id()).await.status(), DeploymentStatus::RolledBack, "two unreachable exceed max_failed 1");
    })
    .await;
}

#[tokio::test(start_paused = true)]
async fn unreachable_target_with_rollback_rolls_back_at_once() {
    within(async {
        let (h, d) = unreachable_case("rollback").await;
        assert_eq!(d.status(), DeploymentStatus::RolledBack, "{:?}", d.status_reason());
        assert!(
            d.status_reason().unwrap().contains("unreachable and on_unreachable is rollback"),
            "{:?}",
            d.status_reason()
        );
        assert_eq!(h.executor.version_of("web-1").as_deref(), Some("1.0"), "web-1 was rolled back");
        assert_eq!(h.executor.count(CallKind::Apply, "web-3"), 0, "no later batch ran");

        // A total partition: the target cannot be restored either, and the deployment says so.
        let h = Harness::new("prod", &FOUR, ConcurrencyPolicy::Queue).await;
        h.executor.add_fault("web-2", Some("2.0"), Fault::CrashAfterApply);
        let d = h
            .submit(DeploymentRequest {
                strategy: rolling(2),
                on_unreachable: Some(UnreachableRequest { wait: Some("5s".into()), then: Some("rollback".into()) }),
                ..request("prod", "web", "2.0")
            })
            .await
            .unwrap();
        let (trigger, task) = spawn_controller(&h.orchestrator);
        wait_for(&h, d.id(), |d| d.targets()[1].attempts >= 1).await;
        h.executor.add_fault("web-2", None, Fault::Unreachable);
        let d = wait_terminal(&h, d.id()).await;
        trigger.fire();
        task.await.unwrap();
        assert_consistent(&d);
        assert_eq!(d.status(), DeploymentStatus::Failed, "{:?}", target_states(&d));
        assert!(d.status_reason().unwrap().contains("rollback incomplete"), "{:?}", d.status_reason());
    })
    .await;
}

#[tokio::test(start_paused = true)]
async fn a_partition_that_heals_within_the_wait_does_not_fail_the_target() {
    within(async {
        let h = Harness::new("prod", &FOUR, ConcurrencyPolicy::Queue).await;
        h.executor.add_fault("web-2", None, Fault::UnreachableTimes(4));
        let d = h.submit(request("prod", "web", "2.0")).await.unwrap();
        h.settle().await;
        let d = h.get(d.id()).await;
        assert_eq!(d.status(), DeploymentStatus::Succeeded, "{:?}", target_states(&d));
        assert_eq!(h.executor.version_of("web-2").as_deref(), Some("2.0"));
    })
    .await;
}

#[tokio::test(start_paused = true)]
async fn flaky_targets_are_retried_with_backoff_until_they_succeed() {
    within(async {
        let h = Harness::new("prod", &FOUR, ConcurrencyPolicy::Queue).await;
        h.executor.add_fault("web-1", Some("2.0"), Fault::FailTimes(3));
        h.executor.add_fault("web-2", Some("2.0"), Fault::FailTimes(50));
        let d = h
            .submit(DeploymentRequest {
                failure: failure("1", "fail"),
                strategy: rolling(4),
                ..request("prod", "web", "2.0")
            })
            .await
            .unwrap();
        h.settle().await;
        let d = h.get(d.id()).await;
        let t1 = &d.targets()[0];
        assert_eq!((t1.status, t1.attempts), (TargetStatus::Succeeded, 4), "three failures, then success");
        let t2 = &d.targets()[1];
        assert_eq!(t2.status, TargetStatus::Failed, "retries are bounded");
        assert_eq!(t2.attempts, 6, "max_retries 5 → six attempts");
        assert!(t2.error.as_deref().unwrap().contains("gave up after 6 attempts"));
        assert_eq!(d.status(), DeploymentStatus::Degraded);
    })
    .await;
}

#[tokio::test(start_paused = true)]
async fn cancel_without_a_live_worker_takes_effect_at_once() {
    within(async {
        let h = Harness::new("prod", &FOUR, ConcurrencyPolicy::Queue).await;
        let d = h.submit(request("prod", "web", "2.0")).await.unwrap();
        let c = h.orchestrator.cancel(&h.admin, d.id()).await.unwrap();
        assert_eq!(c.status(), DeploymentStatus::Cancelled);
        assert_consistent(&c);
        h.settle().await;
        assert_eq!(versions(&h), vec![Some("1.0".to_owned()); 4], "nothing was deployed");
        let again = h.orchestrator.cancel(&h.admin, d.id()).await;
        assert!(matches!(again, Err(Error::Store(StoreError::AlreadyFinished { .. }))), "{again:?}");
    })
    .await;
}

#[tokio::test(start_paused = true)]
async fn cancel_with_a_live_worker_stops_at_the_next_batch_boundary() {
    within(async {
        let h = Harness::new("prod", &FOUR, ConcurrencyPolicy::Queue).await;
        h.executor.add_fault("web-1", Some("2.0"), Fault::Slow(Duration::from_secs(5)));
        let (trigger, task) = spawn_controller(&h.orchestrator);
        let d = h.submit(DeploymentRequest { strategy: rolling(1), ..request("prod", "web", "2.0") }).await.unwrap();
        wait_for(&h, d.id(), |d| d.status() == DeploymentStatus::InProgress).await;
        let requested = h.orchestrator.cancel(&h.admin, d.id()).await.unwrap();
        assert!(requested.cancel_requested());
        let d = wait_terminal(&h, d.id()).await;
        trigger.fire();
        task.await.unwrap();
        assert_eq!(d.status(), DeploymentStatus::Cancelled);
        assert_consistent(&d);
        assert_eq!(d.targets()[0].status, TargetStatus::Succeeded, "the batch in flight finished");
        assert_eq!(d.summary().cancelled, 3);
        assert_eq!(h.executor.count(CallKind::Apply, "web-2"), 0);
    })
    .await;
}

#[tokio::test(start_paused = true)]
async fn a_crashed_controller_is_replaced_and_the_deployment_resumes_from_the_store() {
    within(async {
        let h = Harness::new("prod", &FOUR, ConcurrencyPolicy::Queue).await;
        for t in ["web-1", "web-2", "web-3", "web-4"] {
            h.executor.add_fault(t, Some("2.0"), Fault::Slow(Duration::from_secs(3)));
        }
        let (_trigger, crashed) = spawn_controller(&h.orchestrator);
        let d = h.submit(DeploymentRequest { strategy: rolling(1), ..request("prod", "web", "2.0") }).await.unwrap();
        wait_for(&h, d.id(), |d| d.summary().succeeded >= 2).await;
        crashed.abort(); // The process dies: no release, no last write.
        let _ = crashed.await;
        let stuck = h.get(d.id()).await;
        assert_eq!(stuck.status(), DeploymentStatus::InProgress);
        let replica = h.replica("controller-2");
        assert_eq!(replica.run_until_idle().await.unwrap(), 0, "the lease still protects the dead holder's work");
        h.clock.advance(Duration::from_secs(11));
        assert_eq!(replica.run_until_idle().await.unwrap(), 1, "after the lease lapses another controller resumes");
        let d = h.get(d.id()).await;
        assert_eq!(d.status(), DeploymentStatus::Succeeded, "{:?}", target_states(&d));
        assert_consistent(&d);
        assert_eq!(versions(&h), vec![Some("2.0".to_owned()); 4]);
        assert_eq!(h.executor.count(CallKind::Apply, "web-1"), 1, "finished targets are not redone");
        assert_eq!(h.executor.count(CallKind::Apply, "web-4"), 1);
    })
    .await;
}

#[tokio::test(start_paused = true)]
async fn graceful_shutdown_releases_the_lease_so_work_resumes_at_once() {
    within(async {
        let h = Harness::new("prod", &FOUR, ConcurrencyPolicy::Queue).await;
        for t in ["web-1", "web-2", "web-3", "web-4"] {
            h.executor.add_fault(t, Some("2.0"), Fault::Slow(Duration::from_secs(3)));
        }
        let (trigger, task) = spawn_controller(&h.orchestrator);
        let d = h.submit(DeploymentRequest { strategy: rolling(1), ..request("prod", "web", "2.0") }).await.unwrap();
        wait_for(&h, d.id(), |d| d.summary().succeeded >= 1).await;
        trigger.fire();
        task.await.unwrap();
        assert!(h.store.leases().is_empty(), "shutdown released the lease");
        assert!(!h.get(d.id()).await.status().is_terminal(), "work was left resumable, not finished or failed");
        assert_eq!(h.replica("controller-2").run_until_idle().await.unwrap(), 1, "resumed without waiting for expiry");
        assert_eq!(h.get(d.id()).await.status(), DeploymentStatus::Succeeded);
    })
    .await;
}

#[tokio::test(start_paused = true)]
async fn a_controller_whose_lease_was_taken_over_never_writes_again() {
    within(async {
        let h = Harness::new("prod", &FOUR, ConcurrencyPolicy::Queue).await;
        for t in ["web-1", "web-2", "web-3", "web-4"] {
            h.executor.add_fault(t, Some("2.0"), Fault::Slow(Duration::from_secs(4)));
        }
        let d = h.submit(DeploymentRequest { strategy: rolling(1), ..request("prod", "web", "2.0") }).await.unwrap();
        let (t1, a) = spawn_controller(&h.orchestrator);
        wait_for(&h, d.id(), |d| d.summary().in_progress >= 1).await;
        // Replica A freezes (a GC pause, a partition from the store): its lease lapses and B claims.
        h.clock.advance(Duration::from_secs(60));
        let b = h.replica("controller-2");
        let (t2, bt) = spawn_controller(&b);
        let d = wait_terminal(&h, d.id()).await;
        t1.fire();
        t2.fire();
        a.await.unwrap();
        bt.await.unwrap();
        assert_eq!(d.status(), DeploymentStatus::Succeeded);
        assert_consistent(&d);
        // The scripted executor panics on two concurrent changes to one target, so reaching here also shows the two
        // replicas never drove the same target at once.
        let events = h.events(d.id()).await;
        let terminal = events.iter().filter(|e| e.event_type.is_terminal()).count();
        assert_eq!(terminal, 1, "one terminal event");
    })
    .await;
}

#[tokio::test(start_paused = true)]
async fn a_hung_target_trips_the_progress_deadline() {
    within(async {
        let h = Harness::new("prod", &FOUR, ConcurrencyPolicy::Queue).await;
        h.executor.add_fault("web-2", Some("2.0"), Fault::Hang);
        let d = h
            .submit(DeploymentRequest {
                strategy: rolling(2),
                progress_deadline: Some("2m".into()),
                ..request("prod", "web", "2.0")
            })
            .await
            .unwrap();
        h.settle().await;
        let d = h.get(d.id()).await;
        assert_eq!(d.status(), DeploymentStatus::RolledBack, "{:?}", d.status_reason());
        assert!(d.status_reason().unwrap().contains("progress deadline"), "{:?}", d.status_reason());
        assert_consistent(&d);
        let hung = &d.targets()[1];
        assert!(hung.error.as_deref().unwrap_or_default().contains("progress deadline"), "{hung:?}");
        let elapsed = deploy_core::elapsed_between(d.started_at().unwrap(), d.finished_at().unwrap());
        assert!(elapsed >= Duration::from_secs(120) && elapsed < Duration::from_secs(240), "{elapsed:?}");
    })
    .await;
}

#[tokio::test(start_paused = true)]
async fn a_canary_step_that_degrades_rolls_back_before_the_next_step() {
    within(async {
        let targets: Vec<(String, Option<&str>)> = (1..=10).map(|i| (format!("c-{i}"), Some("1.0"))).collect();
        let refs: Vec<(&str, Option<&str>)> = targets.iter().map(|(id, v)| (id.as_str(), *v)).collect();
        let h = Harness::new("prod", &refs, ConcurrencyPolicy::Queue).await;
        h.executor.add_fault("c-1", Some("2.0"), Fault::UnhealthyAfter(Duration::from_secs(5)));
        let canary = Some(StrategyRequest::Canary {
            steps: vec![
                deploy_core::spec::CanaryStepRequest { percent: 10, verify_for: Some("30s".into()), pause: None },
                deploy_core::spec::CanaryStepRequest { percent: 100, verify_for: None, pause: None },
            ],
        });
        let d =
            h.submit(DeploymentRequest { strategy: canary.clone(), ..request("prod", "web", "2.0") }).await.unwrap();
        h.settle().await;
        let d = h.get(d.id()).await;
        assert_eq!(d.status(), DeploymentStatus::RolledBack, "{:?}", d.status_reason());
        assert!(d.status_reason().unwrap().contains("canary"), "{:?}", d.status_reason());
        assert_eq!(h.executor.version_of("c-1").as_deref(), Some("1.0"));
        assert_eq!(h.executor.count(CallKind::Apply, "c-2"), 0, "the 100% step never started");

        h.executor.clear_faults("c-1");
        let good = h.submit(DeploymentRequest { strategy: canary, ..request("prod", "web", "2.1") }).await.unwrap();
        h.settle().await;
        let good = h.get(good.id()).await;
        assert_eq!(good.status(), DeploymentStatus::Succeeded);
        assert!(good.finished_at().unwrap() - good.started_at().unwrap() >= time::Duration::seconds(30), "watched 30s");
    })
    .await;
}

fn imperative(steps: &[&str]) -> DeploymentRequest {
    DeploymentRequest {
        mode: Some("imperative".into()),
        steps: Some(steps.iter().map(|a| StepRequest { action: (*a).into(), ..StepRequest::default() }).collect()),
        ..request("prod", "web", "2.0")
    }
}

#[tokio::test(start_paused = true)]
async fn imperative_steps_run_in_order_on_each_target() {
    within(async {
        let h = Harness::new("prod", &FOUR, ConcurrencyPolicy::Queue).await;
        let d = h.submit(imperative(&["stop", "fetch", "start"])).await.unwrap();
        h.settle().await;
        let d = h.get(d.id()).await;
        assert_eq!(d.status(), DeploymentStatus::Succeeded, "{:?}", d.status_reason());
        let steps: Vec<CallKind> = h
            .executor
            .calls()
            .into_iter()
            .filter(|c| c.target.as_str() == "web-1" && matches!(c.op, CallKind::Step(_)))
            .map(|c| c.op)
            .collect();
        assert_eq!(steps, [CallKind::step("stop"), CallKind::step("fetch"), CallKind::step("start")]);
        let outputs = h.events(d.id()).await.iter().filter(|e| e.message.contains("step 2 (fetch) done")).count();
        assert_eq!(outputs, 4, "each step's output is in the events");
        assert_eq!(versions(&h), vec![Some("2.0".to_owned()); 4]);
    })
    .await;
}

#[tokio::test(start_paused = true)]
async fn a_failing_imperative_step_fails_its_target_and_stops_its_steps() {
    within(async {
        let h = Harness::new("prod", &FOUR, ConcurrencyPolicy::Queue).await;
        h.executor.add_fault("web-1", None, Fault::FailStep("fetch".into()));
        let d = h
            .submit(DeploymentRequest { failure: failure("1", "fail"), ..imperative(&["stop", "fetch", "start"]) })
            .await
            .unwrap();
        h.settle().await;
        let d = h.get(d.id()).await;
        let t = &d.targets()[0];
        assert_eq!(t.status, TargetStatus::Failed);
        assert!(t.error.as_deref().unwrap().contains("step 2 (fetch)"), "{:?}", t.error);
        assert_eq!(h.executor.count(CallKind::step("start"), "web-1"), 0, "later steps did not run");
        let unknown = h.submit(imperative(&["reboot"])).await.unwrap();
        h.settle().await;
        assert_ne!(h.get(unknown.id()).await.status(), DeploymentStatus::Succeeded, "unknown actions are refused");
    })
    .await;
}

#[tokio::test(start_paused = true)]
async fn redeploying_what_already_runs_is_a_no_op_success() {
    within(async {
        let h = Harness::new("prod", &FOUR, ConcurrencyPolicy::Queue).await;
        let d = h.submit(request("prod", "web", "1.0")).await.unwrap();
        h.settle().await;
        let d = h.get(d.id()).await;
        assert_eq!(d.status(), DeploymentStatus::Succeeded);
        assert_eq!(d.summary().skipped, 4);
        for t in ["web-1", "web-2", "web-3", "web-4"] {
            assert_eq!(h.executor.count(CallKind::Apply, t), 0, "{t} was left alone");
        }
    })
    .await;
}

#[tokio::test(start_paused = true)]
async fn an_apply_that_crashes_after_its_side_effect_is_retried_idempotently() {
    within(async {
        let h = Harness::new("prod", &FOUR, ConcurrencyPolicy::Queue).await;
        h.executor.add_fault("web-1", Some("2.0"), Fault::CrashAfterApply);
        let d = h.submit(request("prod", "web", "2.0")).await.unwrap();
        h.settle().await;
        let d = h.get(d.id()).await;
        assert_eq!(d.status(), DeploymentStatus::Succeeded);
        assert_eq!(d.targets()[0].attempts, 2);
        assert_eq!(h.executor.version_of("web-1").as_deref(), Some("2.0"));
    })
    .await;
}

#[tokio::test(start_paused = true)]
async fn watch_streams_events_live_resumes_after_any_seq_and_ends_after_the_terminal_event() {
    within(async {
        let h = Harness::new("prod", &FOUR, ConcurrencyPolicy::Queue).await;
        let (trigger, task) = spawn_controller(&h.orchestrator);
        let d = h.submit(DeploymentRequest { strategy: rolling(1), ..request("prod", "web", "2.0") }).await.unwrap();
        use futures::StreamExt;
        let live: Vec<_> = h.orchestrator.watch(&h.admin, d.id(), 0).await.unwrap().collect().await;
        let live: Vec<_> = live.into_iter().map(Result::unwrap).collect();
        assert_eq!(live.last().unwrap().event_type, EventType::Succeeded, "the stream ends after the terminal event");
        let seqs: Vec<u64> = live.iter().map(|e| e.seq).collect();
        assert_eq!(seqs, (1..=live.len() as u64).collect::<Vec<_>>(), "nothing lost, nothing repeated");
        let resumed: Vec<_> = h.orchestrator.watch(&h.admin, d.id(), 5).await.unwrap().collect().await;
        assert_eq!(resumed.len(), live.len() - 5);
        assert_eq!(resumed[0].as_ref().unwrap().seq, 6);
        trigger.fire();
        task.await.unwrap();
    })
    .await;
}

#[tokio::test(start_paused = true)]
async fn a_manual_rollback_returns_each_changed_target_to_its_previous_version() {
    within(async {
        let h = Harness::new(
            "prod",
            &[("web-1", Some("1.0")), ("web-2", Some("1.1")), ("web-3", Some("2.0"))],
            ConcurrencyPolicy::Queue,
        )
        .await;
        let d = h.submit(request("prod", "web", "2.0")).await.unwrap();
        h.settle().await;
        let key = IdempotencyKey::new("undo-2.0").unwrap();
        let rb = h.orchestrator.rollback(&h.admin, d.id(), Some(key.clone())).await.unwrap();
        let again = h.orchestrator.rollback(&h.admin, d.id(), Some(key)).await.unwrap();
        assert!(again.replayed && again.deployment.id() == rb.deployment.id(), "one rollback per key");
        assert_eq!(rb.deployment.rollback_of(), Some(d.id()));
        assert_eq!(rb.deployment.targets().len(), 2, "web-3 was not changed, so it is not rolled back");
        h.settle().await;
        let rb = h.get(rb.deployment.id()).await;
        assert_eq!(rb.status(), DeploymentStatus::Succeeded, "{:?}", target_states(&rb));
        assert_eq!(h.executor.version_of("web-1").as_deref(), Some("1.0"));
        assert_eq!(h.executor.version_of("web-2").as_deref(), Some("1.1"));
        assert_eq!(h.executor.version_of("web-3").as_deref(), Some("2.0"));
        let running = h.submit(request("prod", "web", "3.0")).await.unwrap();
        let refused = h.orchestrator.rollback(&h.admin, running.id(), None).await;
        assert!(matches!(refused, Err(Error::NotRollbackable(..))), "{refused:?}");
    })
    .await;
}

#[tokio::test(start_paused = true)]
async fn roles_and_environment_patterns_limit_what_a_principal_can_do() {
    use deploy_core::{EnvironmentPattern, Principal, Role};
    within(async {
        let h = Harness::new("prod", &FOUR, ConcurrencyPolicy::Queue).await;
        let viewer = Principal::new("key:viewer", Role::Viewer, vec![EnvironmentPattern::any()]);
        let staging = Principal::new("key:ci", Role::Deployer, vec![EnvironmentPattern::new("staging-*").unwrap()]);
        let deployer = Principal::new("key:cd", Role::Deployer, vec![EnvironmentPattern::new("prod").unwrap()]);
        let o = h.orchestrator.clone();
        let submit = move |p: &Principal| {
            let (o, p) = (o.clone(), p.clone());
            async move { o.submit(&p, Submission { request: request("prod", "web", "2.0"), ..Submission::default() }).await }
        };
        assert!(matches!(submit(&viewer).await, Err(Error::Forbidden(_))));
        assert!(matches!(submit(&staging).await, Err(Error::Forbidden(_))));
        let d = submit(&deployer).await.unwrap().deployment;
        assert_eq!(d.created_by(), "key:cd");
        assert!(h.orchestrator.get(&viewer, d.id()).await.is_ok(), "viewers read");
        assert!(matches!(h.orchestrator.get(&staging, d.id()).await, Err(Error::Forbidden(_))), "outside its environments");
        assert!(matches!(h.orchestrator.cancel(&viewer, d.id()).await, Err(Error::Forbidden(_))));
        let env = deploy_testkit::fixtures::environment(&["x"], "scripted", ConcurrencyPolicy::Queue);
        let put = h.orchestrator.put_environment(&deployer, &h.environment, env, None).await;
        assert!(matches!(put, Err(Error::Forbidden(_))), "only admins change environments");
        let listed = h
            .orchestrator
            .list(&staging, &deploy_core::DeploymentFilter::default(), &deploy_core::PageRequest::default())
            .await
            .unwrap();
        assert!(listed.items.is_empty(), "listings hide environments the principal may not read");
    })
    .await;
}

#[tokio::test(start_paused = true)]
async fn environments_naming_unknown_executors_are_refused() {
    within(async {
        let h = Harness::new("prod", &FOUR, ConcurrencyPolicy::Queue).await;
        let env = deploy_testkit::fixtures::environment(&["x-1"], "kubernetes", ConcurrencyPolicy::Queue);
        let r = h.orchestrator.put_environment(&h.admin, &deploy_testkit::fixtures::env_name("k8s"), env, None).await;
        match r {
            Err(Error::Invalid(errs)) => assert!(errs.has_field("targets[0].executor"), "{errs}"),
            other => panic!("expected a validation error, got {other:?}"),
        }
    })
    .await;
}

#[tokio::test(start_paused = true)]
async fn submissions_are_validated_with_every_problem_and_inline_secrets_refused() {
    within(async {
        let h = Harness::new("prod", &FOUR, ConcurrencyPolicy::Queue).await;
        let mut bad = request("prod", "Web Shop", "2.0");
        bad.config.insert("DB_PASSWORD".into(), serde_json::json!("hunter2"));
        bad.targets = Some(TargetsRequest { ids: Some(vec![]), ..TargetsRequest::default() });
        match h.submit(bad).await {
            Err(Error::Invalid(errs)) => {
                assert!(
                    errs.has_field("service") && errs.has_field("targets.ids") && errs.has_field("config.DB_PASSWORD")
                );
                assert!(errs.has_hardcoded_secret());
            }
            other => panic!("expected validation errors, got {other:?}"),
        }
        let mut ghost = request("prod", "web", "2.0");
        ghost.targets =
            Some(TargetsRequest { labels: Some([("zone".into(), "mars".into())].into()), ..TargetsRequest::default() });
        assert!(
            matches!(h.submit(ghost).await, Err(Error::Store(StoreError::Invalid(_)))),
            "a selector matching nothing"
        );
        let unknown_env = h.submit(request("nowhere", "web", "2.0")).await;
        assert!(matches!(unknown_env, Err(Error::Store(StoreError::NotFound { .. }))));
        let all =
            deploy_core::Store::list_deployments(&*h.store, &Default::default(), &Default::default()).await.unwrap();
        assert!(all.items.is_empty(), "nothing invalid was stored");
    })
    .await;
}

#[tokio::test(start_paused = true)]
async fn cancelling_a_deployment_whose_controller_died_takes_effect_when_its_lease_lapses() {
    within(async {
        let h = Harness::new("prod", &FOUR, ConcurrencyPolicy::Queue).await;
        for t in ["web-1", "web-2", "web-3", "web-4"] {
            h.executor.add_fault(t, Some("2.0"), Fault::Slow(Duration::from_secs(3)));
        }
        let (_trigger, crashed) = spawn_controller(&h.orchestrator);
        let d = h.submit(DeploymentRequest { strategy: rolling(1), ..request("prod", "web", "2.0") }).await.unwrap();
        wait_for(&h, d.id(), |d| d.summary().succeeded >= 1).await;
        crashed.abort();
        let _ = crashed.await;
        let requested = h.orchestrator.cancel(&h.admin, d.id()).await.unwrap();
        assert_eq!(requested.status(), DeploymentStatus::InProgress, "nobody is there to honour it yet");
        assert!(requested.cancel_requested());
        h.clock.advance(Duration::from_secs(11));
        assert_eq!(h.replica("controller-2").run_until_idle().await.unwrap(), 1);
        let d = h.get(d.id()).await;
        assert_eq!(d.status(), DeploymentStatus::Cancelled);
        assert_consistent(&d);
        assert_eq!(h.executor.count(CallKind::Apply, "web-4"), 0, "the successor did not start new work");
        let next = h.submit(request("prod", "web", "3.0")).await.unwrap();
        h.settle().await;
        assert_eq!(h.get(next.id()).await.status(), DeploymentStatus::Succeeded, "the environment is free again");
    })
    .await;
}

#[tokio::test(start_paused = true)]
async fn a_target_under_verification_is_visible_as_verifying_while_it_is() {
    within(async {
        let h = Harness::new("prod", &FOUR, ConcurrencyPolicy::Queue).await;
        let (trigger, task) = spawn_controller(&h.orchestrator);
        let mut req = DeploymentRequest { strategy: rolling(4), ..request("prod", "web", "2.0") };
        req.verify = Some(deploy_core::spec::VerifyRequest {
            timeout: Some("1m".into()),
            interval: Some("1s".into()),
            healthy_for: Some("20s".into()),
        });
        let d = h.submit(req).await.unwrap();
        let seen = wait_for(&h, d.id(), |d| d.targets().iter().any(|t| t.status == TargetStatus::Verifying)).await;
        assert_eq!(seen.status(), DeploymentStatus::InProgress);
        assert_eq!(seen.summary().in_progress, 4, "verifying targets count as in progress");
        let started = seen.started_at().unwrap();
        assert!(
            deploy_core::elapsed_between(started, deploy_core::Clock::now(h.clock.as_ref())) < Duration::from_secs(5),
            "shown at once"
        );
        let done = wait_terminal(&h, d.id()).await;
        trigger.fire();
        task.await.unwrap();
        assert_eq!(done.status(), DeploymentStatus::Succeeded);
    })
    .await;
}

#[tokio::test(start_paused = true)]
async fn watching_a_finished_deployment_from_its_last_event_ends_at_once() {
    use futures::StreamExt;
    within(async {
        let h = Harness::new("prod", &FOUR, ConcurrencyPolicy::Queue).await;
        let d = h.submit(request("prod", "web", "2.0")).await.unwrap();
        h.settle().await;
        let last = h.events(d.id()).await.last().unwrap().seq;
        let rest: Vec<_> = h.orchestrator.watch(&h.admin, d.id(), last).await.unwrap().collect().await;
        assert!(rest.is_empty());
        let one: Vec<_> = h.orchestrator.watch(&h.admin, d.id(), last - 1).await.unwrap().collect().await;
        assert_eq!(one.len(), 1);
    })
    .await;
}

#[tokio::test(start_paused = true)]
async fn a_long_controller_outage_does_not_count_against_the_progress_deadline() {
    within(async {
        let h = Harness::new("prod", &FOUR, ConcurrencyPolicy::Queue).await;
        for t in ["web-1", "web-2", "web-3", "web-4"] {
            h.executor.add_fault(t, Some("2.0"), Fault::Slow(Duration::from_secs(3)));
        }
        let (_trigger, crashed) = spawn_controller(&h.orchestrator);
        let d = h
            .submit(DeploymentRequest {
                strategy: rolling(1),
                progress_deadline: Some("2m".into()),
                ..request("prod", "web", "2.0")
            })
            .await
            .unwrap();
        wait_for(&h, d.id(), |d| d.summary().succeeded >= 1).await;
        crashed.abort();
        let _ = crashed.await;
        h.clock.advance(Duration::from_secs(3600)); // Every replica was down for an hour.
        assert_eq!(h.replica("controller-2").run_until_idle().await.unwrap(), 1);
        let d = h.get(d.id()).await;
        assert_eq!(d.status(), DeploymentStatus::Succeeded, "{:?}", d.status_reason());
    })
    .await;
}

/// Four targets rolled two at a time with `on_failure`; web-3 fails at once while web-4 verifies for 20 s, and the
/// controller is killed at that moment (no release, no last write); a second controller resumes once the lease lapsed.
/// Returns the harness and the finished deployment.
async fn killed_while_web4_verifies_and_web3_failed(on_failure: &str) -> (Harness, deploy_core::Deployment) {
    let h = Harness::new("prod", &FOUR, ConcurrencyPolicy::Queue).await;
    h.executor.add_fault("web-3", Some("2.0"), Fault::FailPermanently);
    let mut req =
        DeploymentRequest { strategy: rolling(2), failure: failure("0", on_failure), ..request("prod", "web", "2.0") };
    req.verify = Some(deploy_core::spec::VerifyRequest {
        timeout: Some("1m".into()),
        interval: Some("1s".into()),
        healthy_for: Some("20s".into()),
    });
    let d = h.submit(req).await.unwrap();
    let (_trigger, crashed) = spawn_controller(&h.orchestrator);
    let at_crash = wait_for(&h, d.id(), |d| {
        d.targets()[2].status == TargetStatus::Failed && d.targets()[3].status == TargetStatus::Verifying
    })
    .await;
    assert_eq!(at_crash.status(), DeploymentStatus::InProgress);
    crashed.abort();
    let _ = crashed.await;
    assert_eq!(h.executor.version_of("web-4").as_deref(), Some("2.0"), "web-4 was changed before the crash");
    h.clock.advance(Duration::from_secs(60));
    h.replica("controller-2").run_until_idle().await.unwrap();
    let done = h.get(d.id()).await;
    assert_consistent(&done);
    (h, done)
}

/// Issue 16, finding 1: a controller dies while one target of a batch has failed and another is verifying. The
/// verifying target was changed (its intent is durable), so whoever resumes must restore it: it may not be written
/// off as `cancelled` and skipped by the rollback.
#[tokio::test(start_paused = true)]
async fn a_crash_while_a_target_verifies_and_another_failed_still_rolls_every_changed_target_back() {
    within(async {
        let (h, done) = killed_while_web4_verifies_and_web3_failed("rollback").await;
        assert_eq!(done.status(), DeploymentStatus::RolledBack, "{:?}", target_states(&done));
        assert_eq!(versions(&h), vec![Some("1.0".to_owned()); 4], "every changed target runs 1.0 again");
        let web4 = &done.targets()[3];
        assert_ne!(web4.status, TargetStatus::Cancelled, "web-4 was changed: it never started is not true");
        assert_eq!(web4.status, TargetStatus::RolledBack, "{web4:?}");
    })
    .await;
}

/// The same crash with `on_failure: fail`: the record says what may have happened to web-4 (it may run 2.0), never
/// that it was cancelled before it started.
#[tokio::test(start_paused = true)]
async fn a_crash_while_a_target_verifies_never_records_it_as_untouched() {
    within(async {
        let (_h, done) = killed_while_web4_verifies_and_web3_failed("fail").await;
        assert_eq!(done.status(), DeploymentStatus::Failed);
        let web4 = &done.targets()[3];
        assert_eq!(web4.status, TargetStatus::Failed, "{web4:?}");
        assert!(web4.error.as_deref().is_some_and(|e| e.contains("may run")), "{web4:?}");
        assert_eq!(web4.restorable_version().map(|v| v.as_str()), Some("1.0"), "a later rollback restores it");
    })
    .await;
}

/// Issue 16, finding 2: a controller paused past its lease (SIGSTOP, a long GC) wakes up between two retries of an
/// apply; another controller has claimed the deployment meanwhile. Retries need no store write, so only the lease
/// check before each executor call keeps the paused one from touching the target again: the scripted executor refuses
/// and records any change carrying an older fencing token.
#[tokio::test(start_paused = true)]
async fn a_paused_replica_starts_nothing_after_its_lease_lapsed() {
    within(async {
        let h = Harness::new("prod", &FOUR, ConcurrencyPolicy::Queue).await;
        h.executor.add_fault("web-1", Some("2.0"), Fault::FailTimes(3));
        let d = h.submit(DeploymentRequest { strategy: rolling(1), ..request("prod", "web", "2.0") }).await.unwrap();
        let (t1, a) = spawn_controller(&h.orchestrator);
        for _ in 0..1000 {
            if h.executor.count(CallKind::Apply, "web-1") >= 1 {
                break;
            }
            tokio::task::yield_now().await;
        }
        assert_eq!(h.executor.count(CallKind::Apply, "web-1"), 1, "A made its first attempt and waits to retry");
        // A was paused past its lease: everyone's clock moved on while A's timers did not fire.
        h.clock.advance(Duration::from_secs(60));
        let b = h.replica("controller-2");
        let (t2, bt) = spawn_controller(&b);
        let done = wait_terminal(&h, d.id()).await;
        t1.fire();
        t2.fire();
        a.await.unwrap();
        bt.await.unwrap();
        assert_eq!(done.status(), DeploymentStatus::Succeeded, "{:?}", target_states(&done));
        assert_consistent(&done);
        assert_eq!(h.executor.stale_calls(), vec![], "the paused controller changed nothing after its lease lapsed");
        assert_eq!(versions(&h), vec![Some("2.0".to_owned()); 4]);
    })
    .await;
}

/// Issue 16: a controller cut off from its store (a partition, an outage) stops the work in flight before its lease
/// lapses on its own clock, so before any other controller may claim the deployment: the apply it was waiting for is
/// dropped (a `command` hook is killed with it). Once the store is back the deployment is claimed again and the change
/// made once more, from the start, with nothing of the old call left running.
#[tokio::test(start_paused = true)]
async fn a_controller_cut_off_from_its_store_stops_its_work_before_the_lease_lapses() {
    within(async {
        let h = Harness::new("prod", &[("web-1", Some("1.0"))], ConcurrencyPolicy::Queue).await;
        h.executor.add_fault("web-1", Some("2.0"), Fault::Slow(Duration::from_secs(60)));
        let store = Arc::new(FaultyStore::new(h.store.clone()));
        let cut_off = deploy_testkit::fixtures::orchestrator(store.clone(), &h.executor, &h.clock, "cut-off");
        let d = h.submit(request("prod", "web", "2.0")).await.unwrap();
        let (trigger, task) = spawn_controller(&cut_off);
        for _ in 0..1000 {
            if h.executor.changes_in_flight() == 1 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(h.executor.changes_in_flight(), 1, "the apply is under way");
        store.faults().set_down(true);
        // The lease is 10 s: the slow apply would run for a minute, but the work stops before the lease is out.
        tokio::time::sleep(Duration::from_secs(10)).await;
        assert_eq!(h.executor.changes_in_flight(), 0, "the call in flight was dropped when the lease ran short");
        store.faults().set_down(false);
        let done = wait_terminal(&h, d.id()).await;
        trigger.fire();
        task.await.unwrap();
        assert_eq!(done.status(), DeploymentStatus::Succeeded, "{:?}", target_states(&done));
        assert_eq!(h.executor.count(CallKind::Apply, "web-1"), 2, "made again from the start once the store was back");
        assert_eq!(h.executor.preempted(), vec![], "no call of the first claim was left running beside the second");
        assert_eq!(h.executor.stale_calls(), vec![]);
    })
    .await;
}

fn verify(timeout: &str, interval: &str, healthy_for: &str) -> Option<deploy_core::spec::VerifyRequest> {
    Some(deploy_core::spec::VerifyRequest {
        timeout: Some(timeout.into()),
        interval: Some(interval.into()),
        healthy_for: Some(healthy_for.into()),
    })
}

/// Issue 17: the last probe of a verification, made when its time is nearly out, had 1 ms to answer, so any probe
/// slower than that reported "timed out" instead of its verdict. A probe now gets at least an interval.
#[tokio::test(start_paused = true)]
async fn a_slow_health_probe_is_heard_at_the_end_of_the_verification() {
    within(async {
        let h = Harness::new("prod", &[("web-1", Some("1.0"))], ConcurrencyPolicy::Queue).await;
        h.executor.add_fault("web-1", Some("2.0"), Fault::SlowVerify(Duration::from_millis(100)));
        // Probes at 0 s and 1.1 s answer healthy 0.1 s later; the third starts at the 1.5 s deadline and must be heard
        // to see healthy for 1.4 s.
        let d = DeploymentRequest { verify: verify("1500ms", "1s", "1400ms"), ..request("prod", "web", "2.0") };
        let d = h.submit(d).await.unwrap();
        h.settle().await;
        let d = h.get(d.id()).await;
        assert_eq!(d.status(), DeploymentStatus::Succeeded, "{:?} {:?}", d.status_reason(), target_states(&d));
        assert_eq!(h.executor.count(CallKind::Verify, "web-1"), 3);
    })
    .await;
}

/// Issue 17: a canary probe that hangs held the environment for ever (the watch awaited it without a bound, outside
/// the progress deadline). It is now a failed probe: the canary fails and the deployment rolls back.
#[tokio::test(start_paused = true)]
async fn a_hung_canary_probe_fails_the_canary_instead_of_holding_the_environment() {
    within(async {
        let targets: Vec<(String, Option<&str>)> = (1..=10).map(|i| (format!("c-{i}"), Some("1.0"))).collect();
        let refs: Vec<(&str, Option<&str>)> = targets.iter().map(|(id, v)| (id.as_str(), *v)).collect();
        let h = Harness::new("prod", &refs, ConcurrencyPolicy::Queue).await;
        h.executor.add_fault("c-1", Some("2.0"), Fault::VerifyHangsAfter(Duration::from_secs(5)));
        let canary = Some(StrategyRequest::Canary {
            steps: vec![
                deploy_core::spec::CanaryStepRequest { percent: 10, verify_for: Some("60s".into()), pause: None },
                deploy_core::spec::CanaryStepRequest { percent: 100, verify_for: None, pause: None },
            ],
        });
        let d = h.submit(DeploymentRequest { strategy: canary, ..request("prod", "web", "2.0") }).await.unwrap();
        h.settle().await;
        let d = h.get(d.id()).await;
        assert_eq!(d.status(), DeploymentStatus::RolledBack, "{:?}", d.status_reason());
        let c1 = d.targets().iter().find(|t| t.id.as_str() == "c-1").unwrap();
        assert!(c1.error.as_deref().is_some_and(|e| e.contains("did not answer")), "{:?}", c1.error);
        assert_eq!(h.executor.count(CallKind::Apply, "c-2"), 0, "the 100% step never started");
        assert_eq!(h.executor.version_of("c-1").as_deref(), Some("1.0"));
    })
    .await;
}

/// Issue 17: an executor that panicked took the controller's task down with it, silently, and the deployment waited
/// for its lease to lapse, again and again. The panic is now the target's permanent failure, with an event, and the
/// controller goes on.
#[tokio::test(start_paused = true)]
async fn an_executor_that_panics_fails_its_target_and_the_controller_goes_on() {
    within(async {
        let h = Harness::new("prod", &FOUR, ConcurrencyPolicy::Queue).await;
        h.executor.add_fault("web-2", Some("2.0"), Fault::PanicOnApply);
        let d = h.submit(DeploymentRequest { strategy: rolling(2), ..request("prod", "web", "2.0") }).await.unwrap();
        // A controller whose observer counts panics, as the server's metrics do.
        let panics = Arc::new(PanicCount::default());
        let observed = deploy_core::Orchestrator::builder(
            h.store.clone(),
            deploy_core::ExecutorRouter::new().with("scripted", h.executor.clone()),
        )
        .clock(h.clock.clone())
        .config(deploy_testkit::fixtures::fast_config("observed"))
        .observer(panics.clone())
        .build();
        observed.run_until_idle().await.unwrap();
        assert_eq!(*panics.0.lock().unwrap(), vec![(d.id(), "web-2".to_owned())], "the observer is told of the panic");
        let d = h.get(d.id()).await;
        assert_eq!(d.status(), DeploymentStatus::RolledBack, "{:?}", d.status_reason());
        let web2 = d.targets().iter().find(|t| t.id.as_str() == "web-2").unwrap();
        assert!(web2.error.as_deref().is_some_and(|e| e.contains("the executor panicked")), "{:?}", web2.error);
        let events = h.events(d.id()).await;
        assert!(events.iter().any(|e| e.message.contains("the executor panicked")), "an event says so");
        let applies_of_2: Vec<_> = h
            .executor
            .calls()
            .into_iter()
            .filter(|c| {
                c.op == CallKind::Apply
                    && c.target.as_str() == "web-2"
                    && c.version.as_ref().is_some_and(|v| v.as_str() == "2.0")
            })
            .collect();
        assert_eq!(applies_of_2.len(), 1, "a panic is permanent: not retried");
        let next = h.submit(request("prod", "web", "2.1")).await.unwrap();
        h.settle().await;
        assert_eq!(h.get(next.id()).await.status(), DeploymentStatus::Succeeded, "the controller went on");
    })
    .await;
}

/// Issue 17: retries and takeovers left no event. Each retry of a retryable error is now an event of its target, and a
/// controller resuming another's work says so.
#[tokio::test(start_paused = true)]
async fn retries_and_takeovers_are_events() {
    within(async {
        let h = Harness::new("prod", &FOUR, ConcurrencyPolicy::Queue).await;
        h.executor.add_fault("web-1", Some("2.0"), Fault::FailTimes(2));
        h.executor.add_fault("web-3", Some("2.0"), Fault::Slow(Duration::from_secs(30)));
        let d = h.submit(DeploymentRequest { strategy: rolling(1), ..request("prod", "web", "2.0") }).await.unwrap();
        let (t1, a) = spawn_controller(&h.orchestrator);
        wait_for(&h, d.id(), |d| {
            d.targets().iter().any(|t| t.id.as_str() == "web-3" && t.status == TargetStatus::InProgress)
        })
        .await;
        // The first controller dies mid-flight; a second one takes over once its lease lapsed.
        a.abort();
        drop(t1);
        h.clock.advance(Duration::from_secs(60));
        let b = h.replica("controller-2");
        let (t2, bt) = spawn_controller(&b);
        let done = wait_terminal(&h, d.id()).await;
        t2.fire();
        bt.await.unwrap();
        assert_eq!(done.status(), DeploymentStatus::Succeeded, "{:?}", target_states(&done));
        let events = h.events(d.id()).await;
        let retries: Vec<&str> = events
            .iter()
            .filter(|e| {
                e.target_id.as_ref().is_some_and(|t| t.as_str() == "web-1") && e.message.contains("retrying in")
            })
            .map(|e| e.message.as_str())
            .collect();
        assert_eq!(retries.len(), 2, "{retries:?}");
        assert!(retries[0].contains("attempt 1 failed") && retries[1].contains("attempt 2 failed"), "{retries:?}");
        assert!(events.iter().any(|e| e.message.contains("resumed by controller-2")), "the takeover is an event");
    })
    .await;
}

#[tokio::test(start_paused = true)]
async fn wait_returns_a_deployment_once_it_is_terminal_whoever_drives_it() {
    within(async {
        let h = Harness::new("waiting", &FOUR, ConcurrencyPolicy::Queue).await;
        let d = h.submit(request("waiting", "web", "2.0")).await.unwrap();
        let waiter = tokio::spawn({
            let (o, admin) = (h.orchestrator.clone(), h.admin.clone());
            async move { o.wait(&admin, d.id()).await }
        });
        // Another replica drives it; the waiter learns of the end from the store.
        h.replica("controller-2").run_until_idle().await.unwrap();
        let done = waiter.await.unwrap().unwrap();
        assert_eq!(done.status(), DeploymentStatus::Succeeded);
        assert_eq!(done.summary().succeeded, 4);
    })
    .await;
}

/// Counts the executor panics an orchestrator reports.
#[derive(Default)]
struct PanicCount(std::sync::Mutex<Vec<(deploy_core::DeploymentId, String)>>);

impl deploy_core::EngineObserver for PanicCount {
    fn recorded(&self, _: deploy_core::DeploymentId, _: &deploy_core::ProgressUpdate) {}
    fn executor_panicked(&self, deployment: deploy_core::DeploymentId, target: &deploy_core::TargetId) {
        self.0.lock().unwrap().push((deployment, target.to_string()));
    }
}
