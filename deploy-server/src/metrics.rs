//! Prometheus metrics: request counts and latencies, deployment queue depth and activity, target outcomes. A small
//! registry of its own per server (no process-global recorder), rendered in the Prometheus text format.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use deploy_core::{DeploymentId, EngineObserver, ProgressUpdate, TargetStatus};

/// Upper bounds of the latency histogram, in seconds.
const BUCKETS: [f64; 12] = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0];

#[derive(Debug, Default)]
struct Histogram {
    counts: [u64; BUCKETS.len()],
    count: u64,
    sum: f64,
}

#[derive(Debug, Default)]
struct Inner {
    requests: BTreeMap<(String, String, u16), u64>,
    latency: BTreeMap<String, Histogram>,
    targets: BTreeMap<&'static str, u64>,
    deployments: BTreeMap<&'static str, u64>,
    webhook_attempts: BTreeMap<&'static str, u64>,
    rejected: BTreeMap<&'static str, u64>,
    executor_panics: u64,
}

/// The server's metrics.
#[derive(Debug, Default)]
pub struct Metrics {
    inner: Mutex<Inner>,
}

/// Gauges read from the store when metrics are scraped.
#[derive(Debug, Clone, Copy, Default)]
pub struct Gauges {
    /// Deployments waiting to run.
    pub queued: u64,
    /// Deployments running or rolling back.
    pub active: u64,
    /// Deployments held at a safe point (by an operator, or a canary step waiting to be promoted).
    pub paused: u64,
    /// Deployments in protected environments waiting for their approvals.
    pub awaiting_approval: u64,
}

impl Metrics {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Counts one answered request.
    pub fn request(&self, method: &str, route: &str, status: u16, elapsed: Duration) {
        let mut inner = self.lock();
        *inner.requests.entry((method.to_owned(), route.to_owned(), status)).or_insert(0) += 1;
        let h = inner.latency.entry(route.to_owned()).or_default();
        let secs = elapsed.as_secs_f64();
        for (i, bound) in BUCKETS.iter().enumerate() {
            if secs <= *bound {
                h.counts[i] += 1;
            }
        }
        h.count += 1;
        h.sum += secs;
    }

    /// Counts one request or connection turned away before it reached a handler as anyone (`unauthenticated`,
    /// `ip_rate_limited`, `connection_limit`, `tls_handshake`, ...): these are counted, never written to the audit log.
    pub fn rejected(&self, reason: &'static str) {
        *self.lock().rejected.entry(reason).or_insert(0) += 1;
    }

    /// Counts one webhook delivery attempt by outcome (`delivered`, `retry`, `failed`, `gone`).
    pub fn webhook_attempt(&self, outcome: &'static str) {
        *self.lock().webhook_attempts.entry(outcome).or_insert(0) += 1;
    }

    /// The text exposition, with `gauges` read just before.
    #[must_use]
    pub fn render(&self, gauges: Gauges) -> String {
        let inner = self.lock();
        let mut out = String::with_capacity(4096);
        let _ = writeln!(out, "# HELP deploy_http_requests_total HTTP requests answered.");
        let _ = writeln!(out, "# TYPE deploy_http_requests_total counter");
        for ((method, route, status), n) in &inner.requests {
            let _ = writeln!(
                out,
                "deploy_http_requests_total{{method=\"{method}\",route=\"{}\",status=\"{status}\"}} {n}",
                escape(route)
            );
        }
        let _ = writeln!(out, "# HELP deploy_http_request_duration_seconds Time to answer HTTP requests.");
        let _ = writeln!(out, "# TYPE deploy_http_request_duration_seconds histogram");
        for (route, h) in &inner.latency {
            let route = escape(route);
            for (bound, n) in BUCKETS.iter().zip(h.counts) {
                let _ = writeln!(
                    out,
                    "deploy_http_request_duration_seconds_bucket{{route=\"{route}\",le=\"{bound}\"}} {n}"
                );
            }
            let _ = writeln!(
                out,
                "deploy_http_request_duration_seconds_bucket{{route=\"{route}\",le=\"+Inf\"}} {}",
                h.count
            );
            let _ = writeln!(out, "deploy_http_request_duration_seconds_sum{{route=\"{route}\"}} {}", h.sum);
            let _ = writeln!(out, "deploy_http_request_duration_seconds_count{{route=\"{route}\"}} {}", h.count);
        }
        let _ = writeln!(out, "# HELP deploy_deployments_queued Deployments accepted and waiting to run.");
        let _ = writeln!(out, "# TYPE deploy_deployments_queued gauge");
        let _ = writeln!(out, "deploy_deployments_queued {}", gauges.queued);
        let _ = writeln!(out, "# HELP deploy_deployments_active Deployments running or rolling back.");
        let _ = writeln!(out, "# TYPE deploy_deployments_active gauge");
        let _ = writeln!(out, "deploy_deployments_active {}", gauges.active);
        let _ = writeln!(out, "# HELP deploy_deployments_paused Deployments held at a safe point.");
        let _ = writeln!(out, "# TYPE deploy_deployments_paused gauge");
        let _ = writeln!(out, "deploy_deployments_paused {}", gauges.paused);
        let _ = writeln!(out, "# HELP deploy_deployments_awaiting_approval Deployments waiting for their approvals.");
        let _ = writeln!(out, "# TYPE deploy_deployments_awaiting_approval gauge");
        let _ = writeln!(out, "deploy_deployments_awaiting_approval {}", gauges.awaiting_approval);
        let _ = writeln!(
            out,
            "# HELP deploy_deployments_finished_total Deployments this replica drove to a terminal status."
        );
        let _ = writeln!(out, "# TYPE deploy_deployments_finished_total counter");
        for (status, n) in &inner.deployments {
            let _ = writeln!(out, "deploy_deployments_finished_total{{status=\"{status}\"}} {n}");
        }
        let _ = writeln!(out, "# HELP deploy_target_outcomes_total Targets this replica brought to a final state.");
        let _ = writeln!(out, "# TYPE deploy_target_outcomes_total counter");
        for (status, n) in &inner.targets {
            let _ = writeln!(out, "deploy_target_outcomes_total{{status=\"{status}\"}} {n}");
        }
        let _ = writeln!(out, "# HELP deploy_webhook_attempts_total Webhook delivery attempts this replica made.");
        let _ = writeln!(out, "# TYPE deploy_webhook_attempts_total counter");
        for (outcome, n) in &inner.webhook_attempts {
            let _ = writeln!(out, "deploy_webhook_attempts_total{{outcome=\"{outcome}\"}} {n}");
        }
        let _ = writeln!(
            out,
            "# HELP deploy_http_rejected_total Requests and connections turned away before authentication succeeded."
        );
        let _ = writeln!(out, "# TYPE deploy_http_rejected_total counter");
        for (reason, n) in &inner.rejected {
            let _ = writeln!(out, "deploy_http_rejected_total{{reason=\"{reason}\"}} {n}");
        }
        let _ = writeln!(
            out,
            "# HELP deploy_executor_panics_total Executor calls that panicked (each failed its target): executor bugs."
        );
        let _ = writeln!(out, "# TYPE deploy_executor_panics_total counter");
        let _ = writeln!(out, "deploy_executor_panics_total {}", inner.executor_panics);
        out
    }
}

fn escape(label: &str) -> String {
    label.replace('\\', "\\\\").replace('"', "\\\"")
}

impl EngineObserver for Metrics {
    fn executor_panicked(&self, _deployment: DeploymentId, _target: &deploy_core::TargetId) {
        self.lock().executor_panics += 1;
    }

    fn recorded(&self, _deployment: DeploymentId, update: &ProgressUpdate) {
        let mut inner = self.lock();
        for (_, target) in &update.targets {
            let counted = matches!(
                target.status,
                TargetStatus::Succeeded
                    | TargetStatus::Failed
                    | TargetStatus::Unreachable
                    | TargetStatus::Skipped
                    | TargetStatus::RolledBack
                    | TargetStatus::Cancelled
            );
            if counted {
                *inner.targets.entry(target.status.as_str()).or_insert(0) += 1;
            }
        }
        if let Some(change) = &update.status
            && change.status.is_terminal()
        {
            *inner.deployments.entry(change.status.as_str()).or_insert(0) += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use deploy_core::EngineObserver as _;

    use super::{Gauges, Metrics};

    #[test]
    fn executor_panics_are_counted() {
        let metrics = Metrics::default();
        assert!(metrics.render(Gauges::default()).contains("deploy_executor_panics_total 0\n"));
        let target = deploy_core::TargetId::new("web-2").unwrap_or_else(|_| unreachable!());
        metrics.executor_panicked(deploy_core::DeploymentId::new(), &target);
        metrics.executor_panicked(deploy_core::DeploymentId::new(), &target);
        assert!(metrics.render(Gauges::default()).contains("deploy_executor_panics_total 2\n"));
    }
}
