//! Protected environments through the embedding API, in virtual time: N distinct approvers, no self-approval, only
//! named approvers, rejection, the wait after approval, and expiry of what nobody approved.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::time::Duration;

use common::{assert_consistent, spawn_controller, wait_for, wait_terminal, within};
use deploy_core::{
    ConcurrencyPolicy, Deployment, DeploymentStatus, EnvironmentPattern, Error, EventType, HumanDuration, PageRequest,
    Principal, Protection, Role, StoreError,
};
use deploy_testkit::fixtures::{SCRIPTED, environment, request};
use deploy_testkit::{CallKind, Harness};

const IDS: [&str; 3] = ["web-1", "web-2", "web-3"];

fn person(id: &str, role: Role) -> Principal {
    Principal::new(id, role, vec![EnvironmentPattern::any()])
}

async fn protect(h: &Harness, rule: Protection) {
    let mut spec = environment(&IDS, SCRIPTED, ConcurrencyPolicy::Queue);
    spec.protection = Some(rule);
    h.orchestrator.put_environment(&h.admin, &h.environment, spec, None).await.unwrap();
}

fn rule(required: u32) -> Protection {
    Protection {
        required_approvals: required,
        approvers: Vec::new(),
        prevent_self_approval: true,
        wait: None,
        expires_after: None,
    }
}

fn applies(h: &Harness) -> usize {
    IDS.iter().map(|t| h.executor.count(CallKind::Apply, t)).sum()
}

async fn submit_as(h: &Harness, p: &Principal, version: &str) -> Deployment {
    let s = deploy_core::Submission { request: request("prod", "web", version), ..Default::default() };
    h.orchestrator.submit(p, s).await.unwrap().deployment
}

async fn harness() -> Harness {
    Harness::new("prod", &IDS.map(|t| (t, Some("1.0"))), ConcurrencyPolicy::Queue).await
}

#[tokio::test(start_paused = true)]
async fn a_protected_environment_needs_n_distinct_approvers_and_refuses_self_approval() {
    within(async {
        let h = harness().await;
        protect(&h, rule(2)).await;
        let (trigger, task) = spawn_controller(&h.orchestrator);
        let alice = person("key:alice", Role::Approver);
        let bob = person("key:bob", Role::Approver);
        let carol = person("key:carol", Role::Admin);
        let deployer = person("key:ci", Role::Deployer);

        let d = submit_as(&h, &carol, "2.0").await;
        assert_eq!(d.status(), DeploymentStatus::AwaitingApproval, "accepted, waiting");
        tokio::time::sleep(Duration::from_secs(600)).await;
        assert_eq!(h.get(d.id()).await.status(), DeploymentStatus::AwaitingApproval);
        assert_eq!(applies(&h), 0, "nothing starts without approval");

        let own = h.orchestrator.decide(&carol, d.id(), false, None).await;
        assert!(matches!(own, Err(Error::NotAnApprover(..))), "self-approval: {own:?}");
        let deployer_says = h.orchestrator.decide(&deployer, d.id(), false, None).await;
        assert!(matches!(deployer_says, Err(Error::Forbidden(_))), "deployers may not approve: {deployer_says:?}");

        let one = h.orchestrator.decide(&alice, d.id(), false, Some("looks good".into())).await.unwrap();
        assert_eq!(one.status(), DeploymentStatus::AwaitingApproval, "one of two");
        let again = h.orchestrator.decide(&alice, d.id(), false, None).await.unwrap();
        assert_eq!(again.approved_by().count(), 1, "the same approver counts once");
        let flip = h.orchestrator.decide(&alice, d.id(), true, None).await;
        assert!(matches!(flip, Err(Error::Store(StoreError::NotNow { .. }))), "{flip:?}");
        tokio::time::sleep(Duration::from_secs(60)).await;
        assert_eq!(applies(&h), 0);

        let two = h.orchestrator.decide(&bob, d.id(), false, None).await.unwrap();
        assert_eq!(two.status(), DeploymentStatus::Queued, "two of two: queued");
        let done = wait_terminal(&h, d.id()).await;
        trigger.fire();
        task.await.unwrap();
        assert_eq!(done.status(), DeploymentStatus::Succeeded, "{:?}", done.status_reason());
        assert_consistent(&done);
        assert_eq!(done.approved_by().collect::<Vec<_>>(), ["key:alice", "key:bob"]);
        assert_eq!(done.approvals()[0].comment.as_deref(), Some("looks good"));

        let events = h.events(d.id()).await;
        assert_eq!(events[0].event_type, EventType::AwaitingApproval);
        let approved: Vec<&str> =
            events.iter().filter(|e| e.event_type == EventType::Approved).map(|e| e.message.as_str()).collect();
        assert_eq!(approved, ["approved by key:alice (1 of 2): looks good", "approved by key:bob (2 of 2)"]);
        let history = h.orchestrator.history(&h.admin, &h.environment, &PageRequest::default()).await.unwrap();
        assert_eq!(history.items[0].approved_by, ["key:alice", "key:bob"], "the history says who approved");
    })
    .await;
}

#[tokio::test(start_paused = true)]
async fn only_named_approvers_decide_and_a_rejection_ends_the_deployment() {
    within(async {
        let h = harness().await;
        protect(&h, Protection { approvers: vec!["key:alice".into(), "role:admin".into()], ..rule(1) }).await;
        let (trigger, task) = spawn_controller(&h.orchestrator);
        let d = submit_as(&h, &person("key:ci", Role::Deployer), "2.0").await;
        let stranger = h.orchestrator.decide(&person("key:mallory", Role::Approver), d.id(), false, None).await;
        assert!(matches!(stranger, Err(Error::NotAnApprover(..))), "{stranger:?}");
        let secret = h
            .orchestrator
            .decide(
                &person("key:alice", Role::Approver),
                d.id(),
                true,
                Some("ghp_0123456789abcdefghijklmnopqrstuvwxyzAB".into()),
            )
            .await;
        assert!(
            matches!(&secret, Err(Error::Invalid(e)) if e.has_hardcoded_secret()),
            "a comment shaped like a secret is refused, not recorded: {secret:?}"
        );
        let rejected = h
            .orchestrator
            .decide(&person("key:root", Role::Admin), d.id(), true, Some("not during the sale".into()))
            .await
            .unwrap();
        assert_eq!(rejected.status(), DeploymentStatus::Rejected, "an admin is named by role");
        assert!(rejected.targets().iter().all(|t| t.status == deploy_core::TargetStatus::Cancelled));
        let late = h.orchestrator.decide(&person("key:alice", Role::Approver), d.id(), false, None).await;
        assert!(matches!(late, Err(Error::Store(StoreError::AlreadyFinished { .. }))), "{late:?}");

        // The queue moves on: the next deployment waits for its own approval.
        let next = submit_as(&h, &person("key:ci", Role::Deployer), "2.1").await;
        h.orchestrator.decide(&person("key:alice", Role::Approver), next.id(), false, None).await.unwrap();
        let done = wait_terminal(&h, next.id()).await;
        trigger.fire();
        task.await.unwrap();
        assert_eq!(done.status(), DeploymentStatus::Succeeded);
        let events = h.events(d.id()).await;
        assert_eq!(events.last().unwrap().event_type, EventType::Rejected);
        assert!(events.last().unwrap().message.contains("rejected by key:root: not during the sale"));
        assert!(!format!("{events:?}").contains("ghp_"), "the refused comment is nowhere");
        assert_eq!(h.executor.count(CallKind::Apply, "web-1"), 1, "only the approved one ran");
    })
    .await;
}

#[tokio::test(start_paused = true)]
async fn an_approved_deployment_waits_out_the_rule_and_an_unapproved_one_expires() {
    within(async {
        let h = harness().await;
        let wait = HumanDuration::from_secs(600);
        protect(&h, Protection { wait: Some(wait), expires_after: Some(HumanDuration::from_secs(1800)), ..rule(1) })
            .await;
        let (trigger, task) = spawn_controller(&h.orchestrator);
        let alice = person("key:alice", Role::Approver);
        let d = submit_as(&h, &h.admin, "2.0").await;
        let approved = h.orchestrator.decide(&alice, d.id(), false, None).await.unwrap();
        assert_eq!(approved.status(), DeploymentStatus::AwaitingApproval, "approved, but the wait runs");
        let approved_at = approved.approved_at().unwrap();
        tokio::time::sleep(Duration::from_secs(590)).await;
        assert_eq!(applies(&h), 0, "not before the wait is over");
        let done = wait_terminal(&h, d.id()).await;
        assert_eq!(done.status(), DeploymentStatus::Succeeded, "{:?}", done.status_reason());
        let waited = done.started_at().unwrap() - approved_at;
        assert!(waited >= time::Duration::seconds(600), "started {waited} after approval");

        // Nobody approves this one: it is cancelled at its expiry, not before, and nothing runs.
        let before = applies(&h);
        let lonely = submit_as(&h, &h.admin, "3.0").await;
        tokio::time::sleep(Duration::from_secs(1790)).await;
        assert_eq!(h.get(lonely.id()).await.status(), DeploymentStatus::AwaitingApproval);
        let expired = wait_for(&h, lonely.id(), |d| d.status().is_terminal()).await;
        trigger.fire();
        task.await.unwrap();
        assert_eq!(expired.status(), DeploymentStatus::Cancelled);
        assert!(expired.status_reason().unwrap_or_default().contains("expired"), "{:?}", expired.status_reason());
        let lived = expired.finished_at().unwrap() - expired.created_at();
        assert!(lived >= time::Duration::seconds(1800), "expired after {lived}");
        assert_eq!(applies(&h), before, "an expired deployment changes nothing");
    })
    .await;
}

#[tokio::test(start_paused = true)]
async fn a_deployment_awaiting_approval_is_cancelled_at_once_and_unprotected_ones_cannot_be_approved() {
    within(async {
        let h = harness().await;
        let plain = h.submit(request("prod", "web", "2.0")).await.unwrap();
        let no_rule = h.orchestrator.decide(&h.admin, plain.id(), false, None).await;
        assert!(matches!(no_rule, Err(Error::Store(StoreError::NotNow { .. }))), "{no_rule:?}");
        h.settle().await;
        protect(&h, rule(1)).await;
        let d = h.submit(request("prod", "web", "3.0")).await.unwrap();
        let cancelled = h.orchestrator.cancel(&h.admin, d.id()).await.unwrap();
        assert_eq!(cancelled.status(), DeploymentStatus::Cancelled, "nobody holds it: cancelled at once");
        // The rule is the one in force at acceptance: relaxing it later does not free a waiting deployment.
        let waiting = h.submit(request("prod", "web", "3.1")).await.unwrap();
        let mut spec = environment(&IDS, SCRIPTED, ConcurrencyPolicy::Queue);
        spec.protection = None;
        h.orchestrator.put_environment(&h.admin, &h.environment, spec, None).await.unwrap();
        h.settle().await;
        assert_eq!(h.get(waiting.id()).await.status(), DeploymentStatus::AwaitingApproval);
    })
    .await;
}
