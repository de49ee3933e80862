//! Deploy windows, freezes and the global freeze through the embedding API, in virtual time: a queued deployment is
//! held with a reason that says until when, starts by itself when its window opens (across a daylight-saving change),
//! and an admin may override with a reason.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::time::Duration;

use common::{spawn_controller, wait_terminal, within};
use deploy_core::{
    Clock, ConcurrencyPolicy, Deployment, DeploymentId, DeploymentStatus, EnvironmentPattern, Error, EventType,
    HumanDuration, Period, Principal, Role, Schedule,
};
use deploy_testkit::fixtures::{SCRIPTED, environment, request};
use deploy_testkit::{CallKind, Harness};

const IDS: [&str; 2] = ["web-1", "web-2"];

async fn harness(schedule: Option<Schedule>) -> Harness {
    let h = Harness::new("prod", &IDS.map(|t| (t, Some("1.0"))), ConcurrencyPolicy::Queue).await;
    let mut spec = environment(&IDS, SCRIPTED, ConcurrencyPolicy::Queue);
    spec.schedule = schedule;
    h.orchestrator.put_environment(&h.admin, &h.environment, spec, None).await.unwrap();
    h
}

fn period(cron: &str, hours: u64, timezone: &str, reason: Option<&str>) -> Period {
    Period {
        cron: cron.into(),
        duration: HumanDuration::from_secs(hours * 3600),
        timezone: timezone.into(),
        reason: reason.map(str::to_owned),
    }
}

fn applies(h: &Harness) -> usize {
    IDS.iter().map(|t| h.executor.count(CallKind::Apply, t)).sum()
}

/// Sets the harness's wall clock to `at` (it starts at 2026-01-01 00:00 UTC).
fn set_clock(h: &Harness, at: deploy_core::Timestamp) {
    let from = time::macros::datetime!(2026-01-01 00:00 UTC);
    h.clock.advance((at - from).unsigned_abs());
}

/// Polls every minute of virtual time, for at most `limit`, until `pred` holds.
async fn until(h: &Harness, id: DeploymentId, limit: Duration, pred: impl Fn(&Deployment) -> bool) -> Deployment {
    let step = Duration::from_secs(60);
    let mut waited = Duration::ZERO;
    loop {
        let d = h.get(id).await;
        if pred(&d) || waited >= limit {
            return d;
        }
        tokio::time::sleep(step).await;
        waited += step;
    }
}

#[tokio::test(start_paused = true)]
async fn a_queued_deployment_waits_for_its_window_and_starts_at_the_opening_across_a_dst_change() {
    // Berlin leaves CET (+1) for CEST (+2) at 2026-03-29 01:00 UTC: the 09:00 window opens at 07:00 UTC that day,
    // not at 08:00 UTC as it did the day before.
    let window = period("0 9 * * *", 2, "Europe/Berlin", None);
    let h = harness(Some(Schedule { windows: vec![window], freezes: vec![] })).await;
    set_clock(&h, time::macros::datetime!(2026-03-28 12:00 UTC));
    let (trigger, task) = spawn_controller(&h.orchestrator);
    let d = h.submit(request("prod", "web", "2.0")).await.unwrap();
    let held = until(&h, d.id(), Duration::from_secs(600), |d| d.held_until().is_some()).await;
    assert_eq!(held.status(), DeploymentStatus::Queued);
    assert_eq!(
        held.status_reason(),
        Some("held: outside its deploy windows until 2026-03-29T07:00:00Z"),
        "the reason says until when"
    );
    // 18 h 58 min later, a minute before the opening: nothing ran.
    let opening = time::macros::datetime!(2026-03-29 07:00 UTC);
    let before =
        until(&h, d.id(), Duration::from_secs(19 * 3600), |_| h.clock.now() >= opening - time::Duration::minutes(2))
            .await;
    assert_eq!(before.status(), DeploymentStatus::Queued, "{:?}", before.status_reason());
    assert_eq!(applies(&h), 0);
    let done = until(&h, d.id(), Duration::from_secs(3600), |d| d.status().is_terminal()).await;
    trigger.fire();
    task.await.unwrap();
    assert_eq!(done.status(), DeploymentStatus::Succeeded, "{:?}", done.status_reason());
    let started = done.started_at().unwrap();
    assert!(started >= opening, "started at {started}, before the window opened");
    assert!(started < opening + time::Duration::seconds(5), "started at {started}: the controller woke at the opening");
    let events = h.events(d.id()).await;
    let frozen = events.iter().filter(|e| e.event_type == EventType::Frozen).count();
    assert_eq!(frozen, 1, "one event for the hold, however often it was looked at again");
}

#[tokio::test(start_paused = true)]
async fn a_freeze_holds_and_only_an_admin_with_a_reason_overrides_it() {
    within(async {
        let always = period("0 0 * * *", 24, "UTC", Some("change freeze"));
        let h = harness(Some(Schedule { windows: vec![], freezes: vec![always] })).await;
        let (trigger, task) = spawn_controller(&h.orchestrator);
        let d = h.submit(request("prod", "web", "2.0")).await.unwrap();
        let held = until(&h, d.id(), Duration::from_secs(600), |d| d.held_until().is_some()).await;
        assert!(held.status_reason().unwrap().starts_with("held: in a freeze (change freeze) until "), "{held:?}");
        tokio::time::sleep(Duration::from_secs(1800)).await;
        assert_eq!(applies(&h), 0);

        let deployer = Principal::new("key:ci", Role::Deployer, vec![EnvironmentPattern::any()]);
        let refused = h.orchestrator.override_schedule(&deployer, d.id(), "hotfix").await;
        assert!(matches!(refused, Err(Error::Forbidden(_))), "{refused:?}");
        let no_reason = h.orchestrator.override_schedule(&h.admin, d.id(), "  ").await;
        assert!(
            matches!(&no_reason, Err(Error::Invalid(e)) if e.errors()[0].field == "reason"),
            "an override without a reason is refused: {no_reason:?}"
        );
        let overridden = h.orchestrator.override_schedule(&h.admin, d.id(), "hotfix for INC-7").await.unwrap();
        assert!(overridden.controls().override_schedule && overridden.held_until().is_none());
        let done = wait_terminal(&h, d.id()).await;
        assert_eq!(done.status(), DeploymentStatus::Succeeded);
        let again = h.orchestrator.override_schedule(&h.admin, d.id(), "again").await;
        assert!(matches!(again, Err(Error::Store(deploy_core::StoreError::AlreadyFinished { .. }))), "{again:?}");
        trigger.fire();
        task.await.unwrap();
        let events = h.events(d.id()).await;
        let o = events.iter().find(|e| e.event_type == EventType::Overridden).unwrap();
        assert_eq!(o.message, format!("windows and freezes overridden by {}: hotfix for INC-7", h.admin.id()));
    })
    .await;
}

#[tokio::test(start_paused = true)]
async fn a_global_freeze_halts_every_new_start_until_lifted() {
    within(async {
        let h = harness(None).await;
        let (trigger, task) = spawn_controller(&h.orchestrator);
        let scoped = Principal::new("key:prod-admin", Role::Admin, vec![EnvironmentPattern::new("prod").unwrap()]);
        let refused = h.orchestrator.set_global_freeze(&scoped, Some(("incident".into(), None))).await;
        assert!(matches!(refused, Err(Error::Forbidden(_))), "only an admin of every environment: {refused:?}");
        let empty = h.orchestrator.set_global_freeze(&h.admin, Some((" ".into(), None))).await;
        assert!(matches!(empty, Err(Error::Invalid(_))), "{empty:?}");
        let frozen = h.orchestrator.set_global_freeze(&h.admin, Some(("INC-9 database failover".into(), None))).await;
        assert_eq!(frozen.unwrap().unwrap().by, h.admin.id());
        assert!(h.orchestrator.global_freeze().await.unwrap().is_some());

        let d = h.submit(request("prod", "web", "2.0")).await.unwrap();
        let held = until(&h, d.id(), Duration::from_secs(600), |d| d.held_until().is_some()).await;
        let reason = held.status_reason().unwrap();
        assert!(
            reason.contains("a global freeze by") && reason.contains("INC-9") && reason.ends_with("until it is lifted")
        );
        tokio::time::sleep(Duration::from_secs(3000)).await;
        assert_eq!(applies(&h), 0, "nothing starts while frozen");
        // Lift half-way between two looks at the hold, so a lift that ended no hold would be seen 30 s late.
        let next_look = h.get(d.id()).await.held_until().unwrap();
        let left = (next_look - h.clock.now()).unsigned_abs();
        let half = Duration::from_secs(30);
        tokio::time::sleep(if left > half { left - half } else { left + half }).await;
        h.orchestrator.set_global_freeze(&h.admin, None).await.unwrap();
        assert!(h.orchestrator.global_freeze().await.unwrap().is_none());
        let lifted_at = h.clock.now();
        let done = wait_terminal(&h, d.id()).await;
        trigger.fire();
        task.await.unwrap();
        assert_eq!(done.status(), DeploymentStatus::Succeeded);
        let started = done.started_at().unwrap();
        // Lifting ends every hold at once: started within the controller's poll, not at the next look a minute on.
        assert!(started - lifted_at <= time::Duration::seconds(2), "started {} after the lift", started - lifted_at);
    })
    .await;
}
