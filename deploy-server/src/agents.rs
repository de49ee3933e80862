//! Targets run by agents (`"executor": "agent"`): the [`AgentExecutor`] the engine drives like any other, and the
//! endpoints agents call — a long-polled assignment and a report that is also the heartbeat.
//!
//! Everything lives in the store ([`deploy_core::AgentSlot`]), so an agent may talk to any replica: an assignment made
//! by one replica reaches an agent polling another within a second.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use axum::Json;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::IntoResponse;
use deploy_core::{
    AgentReport, AgentSlot, AgentStore, ApplyContext, Clock, DesiredState, EnvironmentName, Executor, ExecutorError,
    Health, Observation, Outcome, Target, TargetId, Timestamp, elapsed_between,
};
use tokio::sync::Notify;

use crate::app::AppState;
use crate::extract::{ApiJson, Caller, Params};
use crate::problem::{Problem, ProblemKind};
use crate::routes::ApiResult;

/// How often an agent executor looks at the store while it waits for a report, when no report reaches this process
/// (one sent to another replica, or the heartbeat timeout running out). A report to this process wakes it at once.
const POLL: Duration = Duration::from_millis(250);

/// The most of an agent's reported error that is kept (its end).
const MAX_REPORT_ERROR: usize = 4 * 1024;

/// The longest an assignment poll may be held open.
const MAX_WAIT: Duration = Duration::from_secs(60);

/// Wakes, per target, what waits in this process: the target's assignment polls when this process assigns it work,
/// and the agent executor's wait when its agent reports here (only those: a thousand agents polling must not all wake
/// for one assignment).
#[derive(Debug, Default)]
pub struct AgentWatch {
    assigned: Waiters,
    reported: Waiters,
}

/// One [`Notify`] per target.
#[derive(Debug, Default)]
struct Waiters(std::sync::Mutex<std::collections::HashMap<(String, String), Arc<Notify>>>);

impl Waiters {
    fn notify_for(&self, environment: &EnvironmentName, target: &TargetId) -> Arc<Notify> {
        let mut waiting = self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let entry = waiting.entry((environment.to_string(), target.to_string())).or_default();
        Arc::clone(entry)
    }

    fn wake(&self, environment: &EnvironmentName, target: &TargetId) {
        let waiting = self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(n) = waiting.get(&(environment.to_string(), target.to_string())) {
            n.notify_waiters();
        }
    }
}

/// The executor of kind `agent`: applying records the desired state for the target's agent and waits for the agent's
/// report on it; an agent that has not reported within the heartbeat timeout makes its target unreachable, so the
/// deployment's `on_unreachable` policy decides.
#[derive(Clone)]
pub struct AgentExecutor {
    store: Arc<dyn AgentStore>,
    clock: Arc<dyn Clock>,
    heartbeat_timeout: Duration,
    watch: Arc<AgentWatch>,
}

impl std::fmt::Debug for AgentExecutor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AgentExecutor").field("heartbeat_timeout", &self.heartbeat_timeout).finish_non_exhaustive()
    }
}

impl AgentExecutor {
    /// An executor over `store`; an agent silent for longer than `heartbeat_timeout` is unreachable.
    #[must_use]
    pub fn new(store: Arc<dyn AgentStore>, clock: Arc<dyn Clock>, heartbeat_timeout: Duration) -> Self {
        Self { store, clock, heartbeat_timeout, watch: Arc::default() }
    }

    /// Wakes this process's assignment polls of a target when an assignment is made here, and this executor when a
    /// report reaches this process (share it with the [`crate::AppState`]: [`crate::AppState::with_agent_watch`]).
    #[must_use]
    pub fn watch_with(mut self, watch: Arc<AgentWatch>) -> Self {
        self.watch = watch;
        self
    }

    /// Why the agent counts as gone: silent since it last reported (or, never seen, since its assignment) for longer
    /// than the timeout.
    fn silent(&self, slot: &AgentSlot, now: Timestamp) -> Option<String> {
        let (since, what) = match (slot.last_seen, slot.assigned_at) {
            (Some(seen), _) => (seen, "last reported"),
            (None, Some(assigned)) => (assigned, "was assigned work and never reported; assigned"),
            (None, None) => return None,
        };
        let silent = elapsed_between(since, now);
        (silent > self.heartbeat_timeout).then(|| {
            format!(
                "the agent of {} {what} {}s ago (heartbeat timeout {}s)",
                slot.target,
                silent.as_secs(),
                self.heartbeat_timeout.as_secs()
            )
        })
    }

    async fn slot(&self, target: &Target) -> Result<Option<AgentSlot>, ExecutorError> {
        self.store
            .agent_slot(&target.environment, &target.id)
            .await
            .map_err(|e| ExecutorError::retryable(format!("cannot read the agent slot: {e}")))
    }
}

#[async_trait]
impl Executor for AgentExecutor {
    async fn observe(&self, target: &Target, _: Option<&DesiredState>) -> Result<Observation, ExecutorError> {
        let Some(slot) = self.slot(target).await? else {
            return Ok(Observation { version: None, health: Health::Unknown });
        };
        if let Some(why) = self.silent(&slot, self.clock.now()) {
            return Err(ExecutorError::unreachable(why));
        }
        Ok(match slot.report {
            Some(r) => Observation { version: r.version, health: r.health },
            None => Observation { version: None, health: Health::Unknown },
        })
    }

    async fn apply(&self, target: &Target, ctx: ApplyContext<'_>) -> Result<Outcome, ExecutorError> {
        // The agent resolves secret references itself, on its host: only references travel.
        let assigned = self
            .store
            .assign_agent(
                &target.environment,
                &target.id,
                ctx.desired.clone(),
                ctx.deployment,
                ctx.fencing_token,
                self.clock.now(),
            )
            .await
            .map_err(|e| match e {
                // This controller's lease is gone: its successor's assignment stands.
                deploy_core::StoreError::StaleToken { .. } | deploy_core::StoreError::AlreadyFinished { .. } => {
                    ExecutorError::permanent(format!("not assigned to the agent: {e}"))
                }
                e => ExecutorError::retryable(format!("cannot assign to the agent: {e}")),
            })?;
        self.watch.assigned.wake(&target.environment, &target.id);
        let generation = assigned.generation;
        let reported = self.watch.reported.notify_for(&target.environment, &target.id);
        loop {
            // Registered before the read, so a report that lands between the read and the wait is not missed.
            let report_arrives = reported.notified();
            tokio::pin!(report_arrives);
            report_arrives.as_mut().enable();
            let slot = self.slot(target).await?.unwrap_or_else(|| assigned.clone());
            if slot.generation != generation {
                return Err(ExecutorError::retryable("another assignment replaced this one"));
            }
            if let Some(report) = slot.current_report() {
                if let Some(error) = &report.error {
                    let output = if report.output.is_empty() { String::new() } else { format!(": {}", report.output) };
                    return Err(ExecutorError::permanent(format!("the agent could not apply: {error}{output}")));
                }
                if report.version.as_ref() == Some(&ctx.desired.version) {
                    return Ok(Outcome::with_output(report.output.clone()));
                }
            }
            if let Some(why) = self.silent(&slot, self.clock.now()) {
                return Err(ExecutorError::unreachable(why));
            }
            let _ = tokio::time::timeout(POLL, report_arrives).await;
        }
    }

    async fn verify(&self, target: &Target, desired: &DesiredState) -> Result<Health, ExecutorError> {
        let Some(slot) = self.slot(target).await? else { return Ok(Health::Unknown) };
        if let Some(why) = self.silent(&slot, self.clock.now()) {
            return Err(ExecutorError::unreachable(why));
        }
        Ok(match &slot.report {
            Some(r) if r.version.as_ref() == Some(&desired.version) && r.error.is_none() => r.health,
            _ => Health::Unhealthy,
        })
    }
}

fn names(env: &str, target: &str) -> Result<(EnvironmentName, TargetId), Problem> {
    let env = EnvironmentName::new(env).map_err(|e| Problem::invalid_field("env", e.rule()))?;
    let target = TargetId::new(target).map_err(|e| Problem::invalid_field("target", e.to_string()))?;
    Ok((env, target))
}

fn authorize(caller: &Caller, env: &EnvironmentName, target: &TargetId) -> Result<(), Problem> {
    caller.principal.authorize_agent(env, target).map_err(|_| {
        Problem::new(
            ProblemKind::Forbidden,
            format!("{} may not act as the agent of {target} in {env}", caller.principal.id()),
        )
    })
}

fn generation_tag(generation: u64) -> HeaderValue {
    HeaderValue::from_str(&format!("\"{generation}\"")).unwrap_or(HeaderValue::from_static("\"0\""))
}

/// The generation `If-None-Match` names, if any.
fn known_generation(headers: &HeaderMap) -> Option<u64> {
    let raw = headers.get(header::IF_NONE_MATCH)?.to_str().ok()?;
    raw.trim().trim_start_matches("W/").trim_matches('"').parse().ok()
}

#[utoipa::path(
    get,
    path = "/v1/agents/{env}/{target}/assignment",
    tag = "agents",
    params(
        ("env" = String, Path, description = "Environment"),
        ("target" = String, Path, description = "Target"),
        ("wait" = Option<String>, Query, description = "Hold the request up to this long (at most 60s) for an assignment newer than If-None-Match"),
        ("If-None-Match" = Option<String>, Header, description = "\"<generation>\" the agent already has"),
    ),
    responses(
        (status = 200, description = "The target's slot: its assignment (generation, desired, deployment) and last report", body = crate::openapi::AgentSlotDoc, headers(("ETag" = String, description = "The generation"))),
        (status = 304, description = "Still the generation named by If-None-Match after the wait"),
        (status = 400, description = "Invalid names or wait", body = crate::openapi::ProblemDoc, content_type = "application/problem+json"),
        crate::openapi::CommonProblems,
    )
)]
pub(crate) async fn assignment(
    State(state): State<AppState>,
    Path((env, target)): Path<(String, String)>,
    caller: Caller,
    headers: HeaderMap,
    params: Params,
) -> ApiResult {
    let (env, target) = names(&env, &target)?;
    authorize(&caller, &env, &target)?;
    let wait = match params.get("wait") {
        None => Duration::ZERO,
        Some(raw) => raw
            .parse::<deploy_core::HumanDuration>()
            .map_err(|e| Problem::invalid_field("wait", e.to_string()))?
            .as_std()
            .min(MAX_WAIT),
    };
    let known = known_generation(&headers);
    // A held poll is capped per principal (a key bound to one target needs one): past the cap, 429.
    let _permit = if wait.is_zero() {
        None
    } else {
        Some(state.inner.polls.open(&caller.principal).map_err(|_| {
            state.inner.metrics.rejected("poll_limit");
            Problem::new(
                ProblemKind::RateLimited,
                format!(
                    "{} already holds {} assignment polls, the most one principal may",
                    caller.principal.id(),
                    crate::app::MAX_POLLS_PER_PRINCIPAL
                ),
            )
            .with_header(header::RETRY_AFTER, HeaderValue::from_static("5"))
        })?)
    };
    let deadline = tokio::time::Instant::now() + wait;
    let assigned = state.inner.agent_watch.assigned.notify_for(&env, &target);
    loop {
        // Registered before the read, so an assignment made between the read and the wait is not missed.
        let notified = assigned.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        let slot = state.inner.store.agent_slot(&env, &target).await?;
        let slot = slot.unwrap_or_else(|| AgentSlot::new(env.clone(), target.clone()));
        if known != Some(slot.generation) {
            let mut response = Json(&slot).into_response();
            response.headers_mut().insert(header::ETAG, generation_tag(slot.generation));
            return Ok(response);
        }
        let now = tokio::time::Instant::now();
        if now >= deadline || state.inner.shutdown.is_fired() {
            let mut response = StatusCode::NOT_MODIFIED.into_response();
            response.headers_mut().insert(header::ETAG, generation_tag(slot.generation));
            return Ok(response);
        }
        // Another replica's assignment is seen at the next read, within a second.
        let _ =
            tokio::time::timeout(deadline.saturating_duration_since(now).min(Duration::from_secs(1)), notified).await;
    }
}

#[utoipa::path(
    put,
    path = "/v1/agents/{env}/{target}/report",
    tag = "agents",
    params(("env" = String, Path, description = "Environment"), ("target" = String, Path, description = "Target")),
    request_body(content = crate::openapi::AgentReportDoc, content_type = "application/json"),
    responses(
        (status = 200, description = "Recorded (also the agent's heartbeat); the slot as it is now", body = crate::openapi::AgentSlotDoc),
        (status = 400, description = "Invalid report", body = crate::openapi::ProblemDoc, content_type = "application/problem+json"),
        crate::openapi::BodyProblems,
        crate::openapi::CommonProblems,
    )
)]
pub(crate) async fn report(
    State(state): State<AppState>,
    Path((env, target)): Path<(String, String)>,
    caller: Caller,
    ApiJson(report): ApiJson<AgentReport>,
) -> ApiResult {
    let (env, target) = names(&env, &target)?;
    authorize(&caller, &env, &target)?;
    if report.output.len() > 64 * 1024 {
        return Err(Problem::invalid_field("output", "at most 64 KiB: send the end of it"));
    }
    // An error is kept in the deployment's record and shown to readers: its end, at most 4 KiB, is kept.
    let mut report = report;
    if let Some(error) = &mut report.error
        && error.len() > MAX_REPORT_ERROR
    {
        let mut start = error.len() - MAX_REPORT_ERROR;
        while !error.is_char_boundary(start) {
            start += 1;
        }
        *error = format!("...{}", &error[start..]);
    }
    let now = state.inner.orchestrator.clock().now();
    let slot = state.inner.store.record_agent_report(&env, &target, report, now).await?;
    state.inner.agent_watch.reported.wake(&env, &target);
    Ok(Json(slot).into_response())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn if_none_match_names_a_generation() {
        let mut h = HeaderMap::new();
        assert_eq!(known_generation(&h), None);
        h.insert(header::IF_NONE_MATCH, HeaderValue::from_static("\"7\""));
        assert_eq!(known_generation(&h), Some(7));
        h.insert(header::IF_NONE_MATCH, HeaderValue::from_static("W/\"3\""));
        assert_eq!(known_generation(&h), Some(3));
        h.insert(header::IF_NONE_MATCH, HeaderValue::from_static("\"x\""));
        assert_eq!(known_generation(&h), None);
    }
}
