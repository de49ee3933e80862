//! Verification: one bounded, panic-catching health probe, polling it until health holds for the policy's window, and watching a canary step's targets.

use super::*;

pub(super) enum Verified {
    Healthy,
    Unhealthy(String),
    Unreachable(String),
}

/// Polls `verify` until health holds for `healthy_for`, giving up at `timeout`. Returns the verdict and the time it
/// was reached.
/// One health probe, bounded by `budget` (at least 1 ms): a probe that does not answer in time is a retryable error,
/// and one that panics a permanent one.
pub(super) async fn probe(
    rec: &Recorder<'_>,
    executor: &dyn Executor,
    target: &Target,
    desired: &DesiredState,
    budget: Duration,
) -> Result<Health, ExecutorError> {
    let budget = budget.max(Duration::from_millis(1));
    let mut call = caught(executor.verify(target, desired)).boxed();
    // Answered at once (most probes of in-process executors): no timer.
    let answer = match (&mut call).now_or_never() {
        Some(r) => r,
        None => tokio::select! {
            r = call => r,
            () = rec.shared.clock.sleep(budget) => Err(ExecutorError::retryable(format!(
                "the health probe did not answer within {} ms",
                budget.as_millis()
            ))),
        },
    };
    if answer.as_ref().is_err_and(ExecutorError::is_panic) {
        rec.executor_panicked(&target.id);
    }
    answer
}

pub(super) async fn verify_health(
    rec: &Recorder<'_>,
    executor: &dyn Executor,
    policy: crate::spec::VerifyPolicy,
    target: &Target,
    desired: &DesiredState,
) -> (Verified, crate::clock::Timestamp) {
    let clock = rec.shared.clock.as_ref();
    let mut now = clock.now();
    let give_up = add(now, policy.timeout.as_std());
    let mut healthy_since = None;
    let mut last_problem = "never reported healthy".to_owned();
    let mut unreachable_streak;
    loop {
        rec.fence().await;
        now = clock.now();
        // A probe may take what is left of the timeout, and never less than an interval: the last probe, made when the
        // time is nearly out, gets its verdict heard instead of a timeout of its own.
        let budget = elapsed_between(now, give_up).max(policy.interval.as_std());
        let probe = probe(rec, executor, target, desired, budget).await;
        now = clock.now();
        match probe {
            Ok(Health::Healthy) => {
                unreachable_streak = false;
                let since = *healthy_since.get_or_insert(now);
                if elapsed_between(since, now) >= policy.healthy_for.as_std() {
                    return (Verified::Healthy, now);
                }
            }
            Ok(h) => {
                healthy_since = None;
                unreachable_streak = false;
                last_problem = format!("health was {h:?}").to_lowercase();
            }
            Err(e) => {
                healthy_since = None;
                unreachable_streak = e.class() == crate::executor::ErrorClass::Unreachable;
                last_problem = e.message().to_owned();
            }
        }
        if now >= give_up {
            let why = format!("not healthy for {} within {}: {last_problem}", policy.healthy_for, policy.timeout);
            let verdict = if unreachable_streak { Verified::Unreachable(why) } else { Verified::Unhealthy(why) };
            return (verdict, now);
        }
        let wait = policy.interval.as_std().min(elapsed_between(now, give_up)).max(Duration::from_millis(1));
        clock.sleep(wait).await;
    }
}

/// Watches a canary step's targets for `watch_for`; a target that turns unhealthy fails the step.
pub(super) async fn watch_canary(plan: &Plan<'_>, batch: &Batch, watch_for: Duration) -> Result<Option<String>, Abort> {
    let rec = plan.rec;
    let interval = plan.spec.verify().interval.as_std();
    let probe_timeout = plan.spec.verify().timeout.as_std().max(interval);
    let clock = rec.shared.clock.as_ref();
    let until = add(clock.now(), watch_for);
    loop {
        if rec.stop_reason().is_some() {
            return Ok(None);
        }
        for i in batch.targets.clone() {
            let Some(entry) = rec.target(i) else { continue };
            if entry.status != TargetStatus::Succeeded {
                continue;
            }
            let Some((target, _, executor)) = target_of(plan, i) else { continue };
            let desired = plan.desired(&entry.to_version);
            rec.fence().await;
            // Bounded like any probe: a probe that hangs is a failed probe, and the watch goes on (a cancel, the next
            // check) instead of holding the environment.
            let trouble = match probe(rec, executor, &target, &desired, probe_timeout).await {
                Ok(Health::Healthy) => None,
                Ok(h) => Some(format!("health was {h:?}").to_lowercase()),
                Err(e) => Some(e.message().to_owned()),
            };
            if let Some(trouble) = trouble {
                let now = rec.now();
                let why = format!(
                    "became unhealthy while the canary step was watched for {}s ({trouble})",
                    watch_for.as_secs()
                );
                let msg = format!("{}: {why}", entry.id);
                rec.result(i, fail_entry(entry, TargetStatus::Failed, why, now), msg, None)?;
                return Ok(Some("a canary target became unhealthy during its observation window".to_owned()));
            }
        }
        let now = clock.now();
        if now >= until {
            return Ok(None);
        }
        clock.sleep(interval.min(elapsed_between(now, until)).max(Duration::from_millis(1))).await;
    }
}
