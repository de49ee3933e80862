//! Property tests of the engine's invariants: for random specs, fleets and fault scripts, every deployment reaches a
//! terminal status, the summary equals the target states, an environment never has two active deployments, and a
//! terminal status never changes.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::Duration;

use deploy_core::{ConcurrencyPolicy, DeploymentStatus, EventType, Submission, Summary};
use deploy_testkit::{CallKind, Harness, strategies};
use proptest::prelude::*;

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_time().start_paused(true).build().unwrap()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, .. ProptestConfig::default() })]

    #[test]
    fn every_deployment_ends_consistent_and_final(
        fleet in strategies::fleet(1..=12),
        requests in prop::collection::vec(strategies::request("prop"), 1..=3),
        faults in strategies::fault_script(12),
        policy in prop_oneof![Just(ConcurrencyPolicy::Queue), Just(ConcurrencyPolicy::Supersede)],
    ) {
        runtime().block_on(async {
            let targets: Vec<(&str, Option<&str>)> = fleet.iter().map(|(id, v)| (id.as_str(), v.as_deref())).collect();
            let h = Harness::new("prop", &targets, policy).await;
            for (i, fault) in &faults {
                if let Some((id, _)) = fleet.get(*i) {
                    h.executor.add_fault(id, None, fault.clone());
                }
            }
            let run = async {
                let (trigger, task) = {
                    let (t, s) = deploy_core::ShutdownSignal::new();
                    let o = h.orchestrator.clone();
                    (t, tokio::spawn(async move { o.run(s).await }))
                };
                let mut ids = Vec::new();
                for r in &requests {
                    let d = h.orchestrator.submit(&h.admin, Submission { request: r.clone(), ..Submission::default() }).await;
                    ids.push(d.expect("valid requests are accepted").deployment.id());
                    tokio::time::sleep(Duration::from_millis(300)).await;
                }
                loop {
                    let mut all_done = true;
                    for id in &ids {
                        all_done &= h.get(*id).await.status().is_terminal();
                    }
                    if all_done { break; }
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                trigger.fire();
                task.await.unwrap();
                ids
            };
            let ids = tokio::time::timeout(Duration::from_secs(6 * 3600), run).await
                .expect("every accepted deployment reached a terminal status");

            let mut spans = Vec::new();
            for id in &ids {
                let d = h.get(*id).await;
                prop_assert!(d.status().is_terminal());
                prop_assert_eq!(*d.summary(), Summary::of(d.targets()), "summary equals the targets");
                prop_assert!(d.targets().iter().all(|t| t.status.is_settled()), "nothing left in flight");
                let events = h.events(*id).await;
                let terminal: Vec<_> = events.iter().filter(|e| e.event_type.is_terminal()).collect();
                prop_assert_eq!(terminal.len(), 1, "exactly one terminal event");
                prop_assert_eq!(events.last().map(|e| e.event_type), terminal.first().map(|e| e.event_type), "and it is last");
                prop_assert_eq!(EventType::for_status(d.status()), terminal[0].event_type);
                if d.status() == DeploymentStatus::Succeeded {
                    prop_assert_eq!(d.summary().failed + d.summary().unreachable, 0);
                }
                if let (Some(s), Some(f)) = (d.started_at(), d.finished_at()) {
                    spans.push((s, f));
                }
            }
            // Never two active deployments in one environment: their running spans do not overlap.
            spans.sort();
            for w in spans.windows(2) {
                prop_assert!(w[1].0 >= w[0].1, "two deployments ran at once: {:?}", w);
            }
            // A terminal status never changes: driving again changes nothing.
            let before: Vec<_> = futures::future::join_all(ids.iter().map(|id| h.get(*id))).await;
            h.settle().await;
            let after: Vec<_> = futures::future::join_all(ids.iter().map(|id| h.get(*id))).await;
            prop_assert_eq!(before, after);
            Ok(())
        })?;
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, .. ProptestConfig::default() })]

    /// Invariants 6 and 16 through crashes: a controller dies at a random moment (no release, no last write), another
    /// resumes after the lease lapses, and every deployment still ends terminal and consistent, with a record that
    /// agrees with what the targets run: nothing a change reached is recorded cancelled, and a rollback leaves every
    /// target it reached on its earlier version.
    #[test]
    fn deployments_survive_a_controller_crash_at_any_moment(
        fleet in strategies::fleet(1..=10),
        request in strategies::request("prop"),
        faults in strategies::fault_script(10),
        crash_after_ms in 0u64..20_000,
    ) {
        runtime().block_on(async {
            let targets: Vec<(&str, Option<&str>)> = fleet.iter().map(|(id, v)| (id.as_str(), v.as_deref())).collect();
            let h = Harness::new("prop", &targets, ConcurrencyPolicy::Queue).await;
            for (i, fault) in &faults {
                if let Some((id, _)) = fleet.get(*i) {
                    h.executor.add_fault(id, None, fault.clone());
                }
            }
            let run = async {
                let (_t, s) = deploy_core::ShutdownSignal::new();
                let o = h.orchestrator.clone();
                let first = tokio::spawn(async move { o.run(s).await });
                let d = h.orchestrator.submit(&h.admin, Submission { request: request.clone(), ..Submission::default() })
                    .await
                    .expect("accepted");
                tokio::time::sleep(Duration::from_millis(crash_after_ms)).await;
                first.abort();
                let _ = first.await;
                h.clock.advance(Duration::from_secs(11));
                let (t2, s2) = deploy_core::ShutdownSignal::new();
                let o2 = h.replica("controller-2");
                let second = tokio::spawn(async move { o2.run(s2).await });
                loop {
                    if h.get(d.deployment.id()).await.status().is_terminal() { break; }
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                t2.fire();
                second.await.unwrap();
                d.deployment.id()
            };
            let id = tokio::time::timeout(Duration::from_secs(6 * 3600), run).await
                .expect("the deployment reached a terminal status after the crash");
            let d = h.get(id).await;
            prop_assert_eq!(*d.summary(), Summary::of(d.targets()));
            prop_assert!(d.targets().iter().all(|t| t.status.is_settled()));
            let events = h.events(id).await;
            let seqs: Vec<u64> = events.iter().map(|e| e.seq).collect();
            prop_assert_eq!(seqs, (1..=events.len() as u64).collect::<Vec<_>>(), "no gaps, no duplicates");
            prop_assert_eq!(events.iter().filter(|e| e.event_type.is_terminal()).count(), 1);
            if d.status() == DeploymentStatus::Succeeded {
                for t in d.targets() {
                    let runs = h.executor.version_of(t.id.as_str());
                    prop_assert_eq!(runs.as_deref(), Some(t.to_version.as_str()), "succeeded means it runs");
                }
            }
            // Invariant 16: the record is decided by what may have happened, not by the last status seen.
            let calls = h.executor.calls();
            for t in d.targets() {
                let changed = calls.iter().any(|c| c.target == t.id && matches!(c.op, CallKind::Apply | CallKind::Step(_)));
                if t.status == deploy_core::TargetStatus::Cancelled {
                    prop_assert!(!changed, "{} is recorded cancelled, yet a change was started on it", t.id);
                }
                // Rolled back means every target a change reached runs what it ran before (a target that ran nothing
                // before has nothing to go back to).
                if d.status() == DeploymentStatus::RolledBack && changed && t.from_version.is_some() {
                    let runs = h.executor.version_of(t.id.as_str());
                    prop_assert_eq!(
                        runs.as_deref(),
                        t.from_version.as_ref().map(deploy_core::Version::as_str),
                        "{} after a rollback ({:?})", t.id, t.status
                    );
                }
            }
            Ok(())
        })?;
    }
}
