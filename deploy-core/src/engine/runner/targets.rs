//! One target's steps: resolving its executor's stand-in for an unknown kind, observing and staging the intent, applying (or running the steps) with secrets resolved and scrubbed per call, recording what it printed, and restoring it in a rollback.

use super::*;

/// Stands in for the executor of a target whose kind no executor serves: every call fails permanently, naming it.
pub(super) struct Unrouted(pub(super) ExecutorError);

#[async_trait::async_trait]
impl Executor for Unrouted {
    async fn observe(&self, _: &Target, _: Option<&DesiredState>) -> Result<Observation, ExecutorError> {
        Err(self.0.clone())
    }
    async fn apply(&self, _: &Target, _: ApplyContext<'_>) -> Result<crate::executor::Outcome, ExecutorError> {
        Err(self.0.clone())
    }
    async fn verify(&self, _: &Target, _: &DesiredState) -> Result<Health, ExecutorError> {
        Err(self.0.clone())
    }
    async fn run_step(
        &self,
        _: &Target,
        _: &crate::spec::ImperativeStep,
        _: ApplyContext<'_>,
    ) -> Result<crate::executor::Outcome, ExecutorError> {
        Err(self.0.clone())
    }
}

/// A target of the plan: what its executor sees of it, what the environment last recorded as desired there, and the
/// executor serving it.
pub(super) fn target_of<'p>(
    plan: &'p Plan<'_>,
    index: usize,
) -> Option<(Target, Option<Arc<DesiredState>>, &'p dyn Executor)> {
    let t = plan.env_index.get(index).copied().flatten().and_then(|i| plan.environment.targets.get(i))?;
    let (target, executor) = plan.routes.get(index)?.as_ref()?;
    Some((target.clone(), t.desired.clone(), executor.as_ref()))
}

/// An executor's answer with every secret value resolved for the call scrubbed from its output and its error, before
/// the engine records, logs or sends any of it.
pub(super) fn scrubbed<T: Scrub>(
    result: Result<T, ExecutorError>,
    secrets: &ResolvedSecrets,
) -> Result<T, ExecutorError> {
    if secrets.is_empty() {
        return result;
    }
    let scrubber = crate::secrets::Scrubber::of(secrets);
    match result {
        Ok(mut out) => {
            out.scrub(&scrubber);
            Ok(out)
        }
        Err(e) => Err(e.scrubbed(&scrubber)),
    }
}

/// What an executor call returns that may carry text.
pub(super) trait Scrub {
    fn scrub(&mut self, scrubber: &crate::secrets::Scrubber);
}

impl Scrub for () {
    fn scrub(&mut self, _: &crate::secrets::Scrubber) {}
}

impl Scrub for crate::executor::Outcome {
    fn scrub(&mut self, scrubber: &crate::secrets::Scrubber) {
        scrubber.scrub_in_place(&mut self.output);
    }
}

/// Phase one for a target: observe it; record a skip (already there) or a failure, or stage the intent to change it
/// (with what it runs now). Staged intents are written together before phase two touches any target.
pub(super) async fn prepare_target(plan: &Plan<'_>, index: usize) -> Result<(), Abort> {
    let rec = plan.rec;
    let Some(mut entry) = rec.target(index) else { return Ok(()) };
    let spec = plan.spec.as_ref();
    let Some((target, env_desired, executor)) = target_of(plan, index) else {
        let now = rec.now();
        let msg = format!("{}: no longer in the environment", entry.id);
        return rec.result(index, fail_entry(entry, TargetStatus::Failed, msg.clone(), now), msg, None);
    };
    let desired = plan.desired(&entry.to_version);
    let policy = retry_policy(rec, spec.on_unreachable().wait.as_std(), index);
    let resumed = entry.status != TargetStatus::Pending;
    let id = entry.id.clone();

    // Observe first: the difference between desired and actual is what gets executed.
    let mut calls = 0;
    // The first time the target turns out unreachable, say so at once: the wait may be long.
    let noted = std::sync::atomic::AtomicBool::new(false);
    let wait_secs = spec.on_unreachable().wait.as_std().as_secs();
    let observed = policy
        .run(&mut calls, || async {
            rec.fence().await;
            let result = executor.observe(&target, Some(&desired)).await;
            if let Err(e) = &result
                && e.class() == crate::executor::ErrorClass::Unreachable
                && !noted.swap(true, std::sync::atomic::Ordering::Relaxed)
            {
                let msg = format!("{id}: unreachable ({}); waiting up to {wait_secs}s for it", e.message());
                rec.result(index, entry.clone(), msg, None).map_err(|_| ExecutorError::retryable("stopping"))?;
            }
            result
        })
        .await;
    let observation = match observed {
        Ok(o) => o,
        Err(CallError::Failed(e)) => {
            let now = rec.now();
            let msg = format!("{id}: could not observe: {e}");
            return rec.result(index, fail_entry(entry, TargetStatus::Failed, e, now), msg, None);
        }
        Err(CallError::Unreachable(e)) => {
            let now = rec.now();
            let msg = format!("{id}: {e}");
            return rec.result(index, fail_entry(entry, TargetStatus::Unreachable, e, now), msg, None);
        }
    };
    let declarative = matches!(spec.mode(), ExecutionMode::Declarative);
    if declarative
        && !resumed
        && observation.version.as_ref() == Some(&entry.to_version)
        && observation.health == Health::Healthy
    {
        let now = rec.now();
        entry.status = TargetStatus::Skipped;
        entry.from_version = observation.version.clone();
        entry.updated_at = now;
        let obs = TargetObservation {
            target: id.clone(),
            desired: Some(desired),
            actual: Some(ActualState::observed(observation, now)),
        };
        let msg = [id.as_str(), ": already runs ", entry.to_version.as_str(), ", healthy; nothing to do"].concat();
        return rec.result(index, entry, msg, Some(obs));
    }
    if !resumed {
        entry.from_version = observation.version.clone();
        entry.previous = match env_desired {
            Some(d) if Some(&d.version) == observation.version.as_ref() => Some(d),
            _ => observation.version.clone().map(|v| Arc::new(DesiredState::bare(spec.service().clone(), v))),
        };
    }
    let now = rec.now();
    entry.status = TargetStatus::InProgress;
    entry.error = None;
    entry.updated_at = now;
    let from = entry.from_version.clone();
    let from = from.as_ref().map_or("nothing", |v| v.as_str());
    rec.result(
        index,
        entry.clone(),
        [
            id.as_str(),
            if resumed { ": re-applying " } else { ": applying " },
            entry.to_version.as_str(),
            " (was ",
            from,
            ")",
        ]
        .concat(),
        // What was observed before the change is the environment's actual state until the change lands.
        Some(TargetObservation {
            target: id,
            desired: Some(desired),
            actual: Some(ActualState::observed(observation, now)),
        }),
    )
}

/// Phase two for a target whose intent is durable: apply (or run the steps), verify, record the result.
pub(super) async fn change_target(plan: &Plan<'_>, index: usize) -> Result<(), Abort> {
    let rec = plan.rec;
    let Some(mut entry) = rec.target(index) else { return Ok(()) };
    if entry.status != TargetStatus::InProgress {
        return Ok(());
    }
    let (spec, deployment_id) = (plan.spec.as_ref(), plan.deployment_id);
    let Some((target, _, executor)) = target_of(plan, index) else { return Ok(()) };
    let desired = plan.desired(&entry.to_version);
    let policy = retry_policy(rec, spec.on_unreachable().wait.as_std(), index);
    let id = entry.id.clone();

    // Apply (or run the steps), with secrets resolved for this call only.
    let call = Call {
        rec,
        executor,
        target: &target,
        desired: &desired,
        deployment: deployment_id,
        scope: &plan.scope,
        index,
    };
    let applied = execute(&call, &policy, spec, &mut entry, index).await?;
    if let Err(e) = applied {
        let now = rec.now();
        let (status, error) = match e {
            CallError::Failed(e) => (TargetStatus::Failed, e),
            CallError::Unreachable(e) => (TargetStatus::Unreachable, e),
        };
        let msg = format!("{id}: {error}");
        return rec.result(index, fail_entry(entry, status, error, now), msg, None);
    }

    let now = rec.now();
    entry.status = TargetStatus::Verifying;
    entry.updated_at = now;
    let msg = [id.as_str(), ": verifying health of ", entry.to_version.as_str()].concat();
    rec.result(index, entry.clone(), msg, None)?;

    let (verdict, now) = verify_health(rec, executor, *spec.verify(), &target, &desired).await;
    match verdict {
        Verified::Healthy => {
            entry.status = TargetStatus::Succeeded;
            entry.error = None;
            entry.updated_at = now;
            let actual = ActualState::observed(
                Observation { version: Some(entry.to_version.clone()), health: Health::Healthy },
                now,
            );
            let msg = [id.as_str(), ": runs ", entry.to_version.as_str(), ", healthy"].concat();
            rec.result(index, entry, msg, Some(TargetObservation { target: id, desired: None, actual: Some(actual) }))
        }
        Verified::Unhealthy(why) => {
            let msg = format!("{id}: {why}");
            let actual = ActualState::observed(
                Observation { version: Some(entry.to_version.clone()), health: Health::Unhealthy },
                now,
            );
            rec.result(
                index,
                fail_entry(entry, TargetStatus::Failed, why, now),
                msg,
                Some(TargetObservation { target: id, desired: None, actual: Some(actual) }),
            )
        }
        Verified::Unreachable(why) => {
            let msg = format!("{id}: {why}");
            rec.result(index, fail_entry(entry, TargetStatus::Unreachable, why, now), msg, None)
        }
    }
}

/// One target's calls: the executor serving it, the target as it sees it, what should run there and the deployment.
pub(super) struct Call<'c> {
    pub(super) rec: &'c Recorder<'c>,
    pub(super) executor: &'c dyn Executor,
    pub(super) target: &'c Target,
    pub(super) desired: &'c DesiredState,
    pub(super) deployment: crate::names::DeploymentId,
    /// The references the target's environment may resolve.
    pub(super) scope: &'c crate::secrets::SecretScope,
    /// The target's index in the deployment, for the events of its progress.
    pub(super) index: usize,
}

/// The [`crate::executor::Progress`] of one call: each new line becomes an event of the target (its entry as it
/// stands), scrubbed of the call's secrets, at most one a second.
struct Reporter<'r> {
    rec: &'r Recorder<'r>,
    index: usize,
    scrubber: crate::secrets::Scrubber,
    last: std::sync::Mutex<(Option<tokio::time::Instant>, String)>,
}

impl std::fmt::Debug for Reporter<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reporter").field("index", &self.index).finish_non_exhaustive()
    }
}

impl crate::executor::Progress for Reporter<'_> {
    fn report(&self, line: &str) {
        let line: String = line.chars().take(512).collect();
        let line = self.scrubber.scrub(line.trim());
        let now = tokio::time::Instant::now();
        {
            let mut last = lock(&self.last);
            let recent = last.0.is_some_and(|at| now.duration_since(at) < std::time::Duration::from_secs(1));
            if line.is_empty() || last.1 == line || recent {
                return;
            }
            *last = (Some(now), line.clone());
        }
        let Some(mut entry) = self.rec.target(self.index) else { return };
        entry.updated_at = self.rec.now();
        let message = format!("{}: {line}", entry.id);
        // A progress line that cannot be buffered (the lease lost) is dropped; the call's own answer says the rest.
        let _ = self.rec.result(self.index, entry, message, None);
    }
}

impl Call<'_> {
    /// One attempt at `apply` (or at imperative step `step`): resolves the secrets for this attempt only, fences, calls
    /// the executor, and scrubs the answer of every secret value resolved for it.
    pub(super) async fn attempt(
        &self,
        step: Option<&crate::spec::ImperativeStep>,
    ) -> Result<crate::executor::Outcome, ExecutorError> {
        let secrets = if self.executor.passes_secret_references() {
            crate::secrets::in_scope(self.desired, Some(self.scope))?;
            crate::secrets::ResolvedSecrets::new()
        } else {
            crate::secrets::resolve_for(self.rec.shared.secrets.as_ref(), self.desired, Some(self.scope)).await?
        };
        let fencing_token = self.rec.fence().await;
        let reporter = Reporter {
            rec: self.rec,
            index: self.index,
            scrubber: crate::secrets::Scrubber::of(&secrets),
            last: std::sync::Mutex::default(),
        };
        let ctx = ApplyContext {
            deployment: self.deployment,
            desired: self.desired,
            secrets: &secrets,
            fencing_token,
            progress: Some(&reporter),
        };
        let out = match step {
            None => self.executor.apply(self.target, ctx).await,
            Some(step) => self.executor.run_step(self.target, step, ctx).await,
        };
        scrubbed(out, &secrets)
    }
}

/// Records what a call printed as an event of its target (nothing when it printed nothing).
pub(super) fn record_output(
    rec: &Recorder<'_>,
    entry: &mut TargetProgress,
    index: usize,
    what: &str,
    outcome: &crate::executor::Outcome,
) -> Result<(), Abort> {
    let text: String = outcome.output.chars().take(4096).collect();
    if text.trim().is_empty() {
        return Ok(());
    }
    entry.updated_at = rec.now();
    rec.result(index, entry.clone(), format!("{what}: {}", text.trim()), None)
}

/// Applies the desired state, or runs each imperative step in order, recording what each printed as an event.
pub(super) async fn execute(
    call: &Call<'_>,
    policy: &RetryPolicy<'_>,
    spec: &crate::spec::DeploymentSpec,
    entry: &mut TargetProgress,
    index: usize,
) -> Result<Result<(), CallError>, Abort> {
    let (rec, target) = (call.rec, call.target);
    let mut attempts = entry.attempts;
    let result = match spec.mode() {
        ExecutionMode::Declarative => {
            let applied = policy.run(&mut attempts, || call.attempt(None)).await;
            entry.attempts = attempts;
            match applied {
                Ok(outcome) => {
                    record_output(
                        rec,
                        entry,
                        index,
                        &format!("{}: applied {}", target.id, call.desired.version),
                        &outcome,
                    )?;
                    Ok(())
                }
                Err(e) => Err(e),
            }
        }
        ExecutionMode::Imperative { steps } => {
            let mut result = Ok(());
            for (n, step) in steps.iter().enumerate() {
                let out = policy.run(&mut attempts, || call.attempt(Some(step))).await;
                entry.attempts = attempts;
                match out {
                    Ok(outcome) => {
                        entry.updated_at = rec.now();
                        let text: String = outcome.output.chars().take(4096).collect();
                        let message = format!("{}: step {} ({}) done: {}", target.id, n + 1, step.action, text.trim());
                        rec.result(index, entry.clone(), message, None)?;
                    }
                    Err(e) => {
                        result = Err(match e {
                            CallError::Failed(m) => CallError::Failed(format!("step {} ({}): {m}", n + 1, step.action)),
                            CallError::Unreachable(m) => {
                                CallError::Unreachable(format!("step {} ({}): {m}", n + 1, step.action))
                            }
                        });
                        break;
                    }
                }
            }
            result
        }
    };
    entry.attempts = attempts;
    Ok(result)
}

pub(super) async fn restore_target(plan: &Plan<'_>, index: usize) -> Result<(), Abort> {
    let rec = plan.rec;
    let Some(mut entry) = rec.target(index) else { return Ok(()) };
    let (service, deployment, unreachable_wait) =
        (plan.spec.service().clone(), plan.deployment_id, plan.spec.on_unreachable().wait.as_std());
    let Some(from) = entry.from_version.clone() else { return Ok(()) };
    let Some((target, _, executor)) = target_of(plan, index) else { return Ok(()) };
    let desired = entry.previous.clone().unwrap_or_else(|| Arc::new(DesiredState::bare(service, from.clone())));
    let policy = retry_policy(rec, unreachable_wait, index);
    let id = entry.id.clone();
    let mut attempts = entry.attempts;
    let call = Call { rec, executor, target: &target, desired: &desired, deployment, scope: &plan.scope, index };
    let applied = policy.run(&mut attempts, || call.attempt(None)).await;
    entry.attempts = attempts;
    let verify = *plan.spec.verify();
    let (verdict, now) = match applied {
        Ok(outcome) => {
            record_output(rec, &mut entry, index, &format!("{id}: restored {from}"), &outcome)?;
            verify_health(rec, executor, verify, &target, &desired).await
        }
        Err(CallError::Failed(e)) => (Verified::Unhealthy(e), rec.now()),
        Err(CallError::Unreachable(e)) => (Verified::Unreachable(e), rec.now()),
    };
    entry.updated_at = now;
    match verdict {
        Verified::Healthy => {
            entry.status = TargetStatus::RolledBack;
            let actual =
                ActualState::observed(Observation { version: Some(from.clone()), health: Health::Healthy }, now);
            rec.result(
                index,
                entry,
                format!("{id}: rolled back to {from}, healthy"),
                Some(TargetObservation { target: id, desired: Some(desired), actual: Some(actual) }),
            )
        }
        Verified::Unhealthy(why) | Verified::Unreachable(why) => {
            let error = format!("rollback to {from} failed: {why}");
            entry.status = TargetStatus::Failed;
            entry.error = Some(error.clone());
            rec.result(index, entry, format!("{id}: {error}"), None)
        }
    }
}
