//! The application state, the router and the middleware every request passes through.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::extract::{DefaultBodyLimit, MatchedPath, Request, State};
use axum::http::{HeaderValue, Method, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use deploy_core::{AuditEntry, FullStore, Orchestrator, Principal};
use tracing::Instrument as _;

use crate::auth::Authenticator;
use crate::metrics::Metrics;
use crate::problem::{Problem, ProblemKind, ProblemMarker};
use crate::routes;
use crate::webhooks::api as webhooks;

/// Request bodies larger than this get 413.
pub const BODY_LIMIT: usize = 1024 * 1024;

/// Assignment long-polls one principal may hold open at once: an agent's key serves one target, which needs one.
pub const MAX_POLLS_PER_PRINCIPAL: usize = 4;

/// Tuning of the HTTP API.
#[derive(Debug, Clone)]
pub struct ApiConfig {
    /// Refuse submissions without `Idempotency-Key` (400 `idempotency-key-required`).
    pub require_idempotency_key: bool,
    /// Requests per second each principal may make on average.
    pub rate_limit_per_second: f64,
    /// Requests a principal may make in a burst.
    pub rate_limit_burst: f64,
    /// Longest time to produce a response's head (streams then run on).
    pub request_timeout: Duration,
    /// Keep-alive comment interval on event streams.
    pub sse_keep_alive: Duration,
    /// Requests per second one client address may make, counted before authentication (0: no limit).
    pub ip_rate_limit_per_second: f64,
    /// Burst per client address.
    pub ip_rate_limit_burst: f64,
    /// Event streams open at once on this server.
    pub max_streams: usize,
    /// Event streams open at once per principal.
    pub max_streams_per_principal: usize,
    /// Reverse proxies whose `X-Forwarded-For` names the client (CIDR blocks); from anyone else the header is
    /// ignored, so a client cannot pick the address it is limited as.
    pub trusted_proxies: Vec<ipnet::IpNet>,
    /// Targets a response carries inline; the rest are paged from `.../targets` (at least 1).
    pub targets_per_response: usize,
}

impl Default for ApiConfig {
    fn default() -> Self {
        Self {
            require_idempotency_key: false,
            rate_limit_per_second: 100.0,
            rate_limit_burst: 200.0,
            request_timeout: Duration::from_secs(30),
            sse_keep_alive: Duration::from_secs(15),
            ip_rate_limit_per_second: 200.0,
            ip_rate_limit_burst: 400.0,
            max_streams: 1024,
            max_streams_per_principal: 32,
            trusted_proxies: Vec::new(),
            targets_per_response: crate::paging::DEFAULT_TARGETS_PER_RESPONSE,
        }
    }
}

/// Everything a handler needs. Cheap to clone.
#[derive(Clone)]
pub struct AppState {
    pub(crate) inner: Arc<Inner>,
}

pub(crate) struct Inner {
    pub(crate) orchestrator: Orchestrator,
    pub(crate) store: Arc<dyn FullStore>,
    pub(crate) auth: Authenticator,
    pub(crate) config: ApiConfig,
    pub(crate) metrics: Arc<Metrics>,
    pub(crate) in_flight: Mutex<HashSet<(String, String)>>,
    pub(crate) buckets: Mutex<HashMap<String, Bucket>>,
    pub(crate) shutdown: deploy_core::ShutdownSignal,
    pub(crate) webhooks_wake: Arc<tokio::sync::Notify>,
    pub(crate) agent_watch: Arc<crate::agents::AgentWatch>,
    pub(crate) ip_limiter: Option<IpLimiter>,
    pub(crate) ip_checks: std::sync::atomic::AtomicU64,
    /// When readiness last wrote its probe record, and whether the write was stored: anonymous callers ask often, and
    /// a write per request would let them make the host write as fast as they ask.
    pub(crate) write_probe: tokio::sync::Mutex<Option<(std::time::Instant, bool)>>,
    pub(crate) streams: crate::streams::Streams,
    /// Agents' assignment long-polls held open, capped per principal like event streams.
    pub(crate) polls: crate::streams::Streams,
    pub(crate) webhook_guard: crate::webhooks::guard::GuardedResolver,
    pub(crate) webhook_key: Option<Arc<crate::SecretsKey>>,
}

/// The per-address rate limiter, keyed by client IP (GCRA, from `governor`).
pub(crate) type IpLimiter = governor::DefaultKeyedRateLimiter<std::net::IpAddr>;

fn ip_limiter(config: &ApiConfig) -> Option<IpLimiter> {
    if config.ip_rate_limit_per_second <= 0.0 || !config.ip_rate_limit_per_second.is_finite() {
        return None;
    }
    let period = Duration::from_secs_f64(1.0 / config.ip_rate_limit_per_second.min(1e9));
    let burst = std::num::NonZeroU32::new(config.ip_rate_limit_burst.clamp(1.0, f64::from(u32::MAX)) as u32)?;
    let quota = governor::Quota::with_period(period.max(Duration::from_nanos(1)))?.allow_burst(burst);
    Some(governor::RateLimiter::keyed(quota))
}

impl std::fmt::Debug for AppState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppState").field("config", &self.inner.config).finish_non_exhaustive()
    }
}

pub(crate) struct Bucket {
    tokens: f64,
    at: Instant,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl AppState {
    /// State over an orchestrator (built with [`Metrics`] as its observer, to count target outcomes) and the store it
    /// runs on (which also keeps the server's webhooks, keys, agents and audit log), an authenticator and a
    /// configuration. `shutdown` ends event streams when the server stops.
    #[must_use]
    pub fn new(
        orchestrator: Orchestrator,
        store: Arc<dyn FullStore>,
        auth: Authenticator,
        config: ApiConfig,
        metrics: Arc<Metrics>,
        shutdown: deploy_core::ShutdownSignal,
    ) -> Self {
        let ip_limiter = ip_limiter(&config);
        let streams = crate::streams::Streams::new(config.max_streams, config.max_streams_per_principal);
        let polls = crate::streams::Streams::new(config.max_streams, MAX_POLLS_PER_PRINCIPAL);
        Self {
            inner: Arc::new(Inner {
                orchestrator,
                store,
                auth,
                config,
                metrics,
                in_flight: Mutex::new(HashSet::new()),
                buckets: Mutex::new(HashMap::new()),
                shutdown,
                webhooks_wake: Arc::new(tokio::sync::Notify::new()),
                agent_watch: Arc::default(),
                ip_limiter,
                ip_checks: std::sync::atomic::AtomicU64::new(0),
                write_probe: tokio::sync::Mutex::new(None),
                streams,
                polls,
                webhook_guard: crate::webhooks::guard::GuardedResolver::new(Arc::default()),
                webhook_key: None,
            }),
        }
    }

    /// Wakes agents polling this replica when this process assigns their target work: the same watch as the
    /// [`crate::AgentExecutor`]'s ([`crate::AgentExecutor::watch_with`]). Call it right after [`AppState::new`],
    /// before the state is shared.
    #[must_use]
    pub fn with_agent_watch(mut self, watch: Arc<crate::agents::AgentWatch>) -> Self {
        if let Some(inner) = Arc::get_mut(&mut self.inner) {
            inner.agent_watch = watch;
        }
        self
    }

    /// Refuses webhook subscriptions whose URL `policy` does not let deliveries reach (give the [`crate::Dispatcher`]
    /// the same policy). Call it right after [`AppState::new`], before the state is shared.
    #[must_use]
    pub fn with_webhook_addresses(mut self, policy: Arc<crate::AddressPolicy>) -> Self {
        if let Some(inner) = Arc::get_mut(&mut self.inner) {
            inner.webhook_guard = crate::webhooks::guard::GuardedResolver::new(policy);
        }
        self
    }

    /// Seals new webhook subscriptions' signing secrets with `key` before they are stored (give the
    /// [`crate::Dispatcher`] the same key). Call it right after [`AppState::new`], before the state is shared.
    #[must_use]
    pub fn with_webhook_secrets_key(mut self, key: Arc<crate::SecretsKey>) -> Self {
        if let Some(inner) = Arc::get_mut(&mut self.inner) {
            inner.webhook_key = Some(key);
        }
        self
    }

    /// Notified when deliveries may have become due (a submission, a redelivery): hand it to the
    /// [`crate::Dispatcher`] so it looks at once instead of at its next poll.
    #[must_use]
    pub fn webhooks_wake(&self) -> Arc<tokio::sync::Notify> {
        Arc::clone(&self.inner.webhooks_wake)
    }

    /// Takes one token from `principal`'s bucket, or says how long to wait.
    pub(crate) fn rate_limit(&self, principal: &Principal) -> Result<(), Duration> {
        let rate = self.inner.config.rate_limit_per_second;
        let burst = self.inner.config.rate_limit_burst;
        let now = Instant::now();
        let mut buckets = lock(&self.inner.buckets);
        let bucket = buckets.entry(principal.id().to_owned()).or_insert(Bucket { tokens: burst, at: now });
        bucket.tokens = (bucket.tokens + now.duration_since(bucket.at).as_secs_f64() * rate).min(burst);
        bucket.at = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64(((1.0 - bucket.tokens) / rate).max(0.001)))
        }
    }

    /// Takes one request from `address`'s budget (before authentication), or says how long to wait. Now and then the
    /// limiter forgets addresses whose budget is full again, so its map stays as large as the clients seen recently,
    /// however many addresses (an IPv6 prefix holds many) have come and gone.
    pub(crate) fn limit_address(&self, address: std::net::IpAddr) -> Result<(), Duration> {
        let Some(limiter) = &self.inner.ip_limiter else { return Ok(()) };
        if self.inner.ip_checks.fetch_add(1, std::sync::atomic::Ordering::Relaxed) % 4096 == 4095 {
            limiter.retain_recent();
            limiter.shrink_to_fit();
        }
        limiter.check_key(&address).map_err(|not_until| {
            not_until.wait_time_from(governor::clock::Clock::now(&governor::clock::DefaultClock::default()))
        })
    }

    /// Marks an idempotency key as being accepted; `None` when it already is.
    pub(crate) fn begin_key(&self, scope: &str, key: &str) -> Option<InFlightKey> {
        let entry = (scope.to_owned(), key.to_owned());
        lock(&self.inner.in_flight).insert(entry.clone()).then(|| InFlightKey { state: self.clone(), entry })
    }
}

/// An idempotency key being accepted; released when dropped.
pub(crate) struct InFlightKey {
    state: AppState,
    entry: (String, String),
}

impl Drop for InFlightKey {
    fn drop(&mut self) {
        lock(&self.state.inner.in_flight).remove(&self.entry);
    }
}

/// What the audit log should say about a request, filled in by the extractors and the handler.
#[derive(Debug, Default)]
pub(crate) struct AuditSlot {
    pub(crate) actor: Option<String>,
    pub(crate) action: Option<&'static str>,
    pub(crate) resource: Option<String>,
    pub(crate) environment: Option<String>,
}

/// The shared slot in a request's extensions.
#[derive(Debug, Clone, Default)]
pub(crate) struct Audit(pub(crate) Arc<Mutex<AuditSlot>>);

impl Audit {
    pub(crate) fn set(&self, action: &'static str, resource: impl Into<String>, environment: Option<String>) {
        let mut slot = lock(&self.0);
        slot.action = Some(action);
        slot.resource = Some(resource.into());
        slot.environment = environment;
    }
    pub(crate) fn actor(&self, actor: &str) {
        lock(&self.0).actor = Some(actor.to_owned());
    }
}

/// The request id of a request, echoed or made.
#[derive(Debug, Clone)]
pub(crate) struct RequestId(pub(crate) String);

/// The whole HTTP API over `state`.
pub fn router(state: AppState) -> Router {
    let api = Router::new()
        .route("/v1/environments", get(routes::list_environments))
        .route("/v1/environments/{env}", put(routes::put_environment).get(routes::get_environment))
        .route("/v1/environments/{env}/history", get(routes::history))
        .route("/v1/environments/{env}/targets", get(routes::environment_targets))
        .route("/v1/environments/{env}/rollback", post(routes::rollback_environment))
        .route("/v1/deployments", post(routes::submit).get(routes::list_deployments))
        .route("/v1/deployments/{id}", get(routes::get_deployment))
        .route("/v1/deployments/{id}/events", get(routes::events))
        .route("/v1/deployments/{id}/targets", get(routes::deployment_targets))
        .route("/v1/deployments/{id}/cancel", post(routes::cancel))
        .route("/v1/deployments/{id}/rollback", post(routes::rollback))
        .route("/v1/deployments/{id}/pause", post(routes::pause))
        .route("/v1/deployments/{id}/resume", post(routes::resume))
        .route("/v1/deployments/{id}/promote", post(routes::promote))
        .route("/v1/deployments/{id}/abort", post(routes::abort))
        .route("/v1/deployments/{id}/retry", post(routes::retry))
        .route("/v1/deployments/{id}/approvals", post(routes::approvals))
        .route("/v1/deployments/{id}/override", post(routes::override_schedule))
        .route("/v1/freeze", get(routes::get_freeze).put(routes::put_freeze).delete(routes::delete_freeze))
        .route("/v1/api-keys", post(routes::create_key).get(routes::list_keys))
        .route("/v1/api-keys/{id}", axum::routing::delete(routes::delete_key))
        .route("/v1/audit", get(routes::audit))
        .route("/v1/agents/{env}/{target}/assignment", get(crate::agents::assignment))
        .route("/v1/agents/{env}/{target}/report", put(crate::agents::report))
        .route("/v1/webhooks", post(webhooks::create_webhook).get(webhooks::list_webhooks))
        .route("/v1/webhooks/{id}", get(webhooks::get_webhook).delete(webhooks::delete_webhook))
        .route("/v1/webhooks/{id}/deliveries", get(webhooks::list_deliveries))
        .route("/v1/webhooks/{id}/deliveries/{delivery_id}/redeliver", post(webhooks::redeliver))
        .route("/healthz", get(routes::healthz))
        .route("/readyz", get(routes::readyz))
        .route("/metrics", get(routes::metrics))
        .route("/openapi.json", get(routes::openapi))
        .route("/problems/{slug}", get(routes::problem))
        .fallback(routes::not_found)
        .method_not_allowed_fallback(routes::method_not_allowed)
        .layer(DefaultBodyLimit::max(BODY_LIMIT))
        .layer(middleware::from_fn_with_state(state.clone(), audit_and_time))
        .layer(middleware::from_fn_with_state(state.clone(), limit_by_address))
        .with_state(state.clone());
    api.layer(middleware::from_fn_with_state(state, observe))
}

/// Before anything else reads a request: the per-address rate limit (429 with `Retry-After`), so a client that never
/// authenticates still cannot make the server work for it without bound. `/healthz` is exempt (monitoring must see
/// the server even while it is being flooded); without a known address (a router used without [`crate::start`]'s
/// listener) nothing is limited here.
async fn limit_by_address(State(state): State<AppState>, request: Request<Body>, next: Next) -> Response {
    let peer = request.extensions().get::<axum::extract::ConnectInfo<std::net::SocketAddr>>().map(|c| c.0.ip());
    if let Some(peer) = peer
        && request.uri().path() != "/healthz"
        && let Err(wait) =
            state.limit_address(client_address(peer, request.headers(), &state.inner.config.trusted_proxies))
    {
        state.inner.metrics.rejected("ip_rate_limited");
        return Problem::rate_limited(wait, |secs| format!("too many requests from this address; retry in {secs} s"))
            .into_response();
    }
    next.run(request).await
}

/// Outermost: request id, tracing span, metrics, and the request timeout.
async fn observe(State(state): State<AppState>, mut request: Request, next: Next) -> Response {
    let started = Instant::now();
    let request_id = request
        .headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty() && v.len() <= 200 && v.bytes().all(|b| b.is_ascii_graphic()))
        .map_or_else(|| uuid::Uuid::now_v7().to_string(), str::to_owned);
    request.extensions_mut().insert(RequestId(request_id.clone()));
    let method = request.method().clone();
    let route =
        request.extensions().get::<MatchedPath>().map_or_else(|| "unmatched".to_owned(), |p| p.as_str().to_owned());
    let span = tracing::info_span!("request", %method, path = %request.uri().path(), request_id = %request_id);
    let timeout = state.inner.config.request_timeout;
    let mut response = match tokio::time::timeout(timeout, next.run(request).instrument(span.clone())).await {
        Ok(response) => response,
        Err(_) => {
            span.in_scope(|| tracing::warn!(?timeout, "request timed out"));
            Problem::new(ProblemKind::Internal, "the request took too long; it may be retried")
                .with_status(axum::http::StatusCode::SERVICE_UNAVAILABLE)
                .with_header(header::RETRY_AFTER, HeaderValue::from_static("1"))
                .into_response()
        }
    };
    if let Ok(v) = HeaderValue::from_str(&request_id) {
        response.headers_mut().insert("x-request-id", v);
    }
    let status = response.status().as_u16();
    state.inner.metrics.request(method.as_str(), &route, status, started.elapsed());
    span.in_scope(|| tracing::debug!(status, elapsed_ms = started.elapsed().as_millis() as u64, "answered"));
    response
}

/// The client a request comes from: the peer, or, when the peer is a trusted proxy, the last address in
/// `X-Forwarded-For` that is not itself a trusted proxy (each proxy appends the address it received from, so only the
/// right end of the list is trustworthy).
pub(crate) fn client_address(
    peer: std::net::IpAddr,
    headers: &axum::http::HeaderMap,
    trusted: &[ipnet::IpNet],
) -> std::net::IpAddr {
    let is_trusted = |ip: &std::net::IpAddr| trusted.iter().any(|net| net.contains(ip));
    if !is_trusted(&peer) {
        return peer;
    }
    let forwarded = headers.get_all("x-forwarded-for").iter().filter_map(|v| v.to_str().ok()).collect::<Vec<_>>();
    let mut client = peer;
    for hop in forwarded.iter().flat_map(|v| v.split(',')).rev() {
        match hop.trim().parse::<std::net::IpAddr>() {
            Ok(ip) if is_trusted(&ip) => client = ip,
            Ok(ip) => return ip,
            // An entry that is no address: stop at the last trustworthy one.
            Err(_) => return client,
        }
    }
    client
}

/// The longest text an audit field keeps.
const AUDIT_FIELD_MAX: usize = 256;

/// `text` with every control character and direction override written as an escape (`\u{1b}`), so a field can
/// never move a terminal's cursor or forge a line, cut to [`AUDIT_FIELD_MAX`] bytes on a character boundary.
fn bounded(text: String) -> String {
    let mut text = if text.chars().any(deploy_core::is_unprintable) {
        text.chars()
            .map(|c| if deploy_core::is_unprintable(c) { c.escape_unicode().to_string() } else { c.to_string() })
            .collect()
    } else {
        text
    };
    if text.len() > AUDIT_FIELD_MAX {
        let mut end = AUDIT_FIELD_MAX;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
    }
    text
}

/// Inner: writes every mutating call of an authenticated caller to the audit log once it is answered.
async fn audit_and_time(State(state): State<AppState>, mut request: Request<Body>, next: Next) -> Response {
    // An agent's report is its heartbeat, every few seconds per target: not an administrative act.
    let mutating = !matches!(*request.method(), Method::GET | Method::HEAD | Method::OPTIONS)
        && !request.uri().path().starts_with("/v1/agents/");
    let audit = Audit::default();
    request.extensions_mut().insert(audit.clone());
    let request_id = request.extensions().get::<RequestId>().map(|r| r.0.clone()).unwrap_or_default();
    // The route's template, never the raw path: what a caller sends is not what the log keeps.
    let route = request.extensions().get::<MatchedPath>().map_or("unmatched", MatchedPath::as_str).to_owned();
    let fallback_action = format!("{} {route}", request.method());
    let response = next.run(request).await;
    let slot = std::mem::take(&mut *lock(&audit.0));
    let Some(actor) = slot.actor else {
        // Nobody authenticated: counted, never written. An anonymous flood cannot grow the audit log.
        if response.status() == axum::http::StatusCode::UNAUTHORIZED {
            state.inner.metrics.rejected("unauthenticated");
        }
        return response;
    };
    if mutating {
        let outcome = match response.extensions().get::<ProblemMarker>() {
            Some(ProblemMarker(kind)) => kind.slug().to_owned(),
            None if response.status().is_success() => "success".to_owned(),
            None => format!("http-{}", response.status().as_u16()),
        };
        let entry = AuditEntry {
            id: uuid::Uuid::now_v7(),
            at: state.inner.orchestrator.clock().now(),
            actor: bounded(actor),
            action: bounded(slot.action.map_or(fallback_action, str::to_owned)),
            resource: bounded(slot.resource.unwrap_or_default()),
            environment: slot.environment.map(bounded),
            request_id: bounded(request_id),
            outcome,
        };
        if let Err(e) = state.inner.store.append_audit(entry).await {
            tracing::error!(error = %e, "could not write the audit log");
        }
    }
    response
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn forwarded_addresses_count_only_through_trusted_proxies() {
        let ip = |s: &str| s.parse::<std::net::IpAddr>().unwrap();
        let trusted: Vec<ipnet::IpNet> = vec!["10.0.0.0/8".parse().unwrap()];
        let mut headers = axum::http::HeaderMap::new();
        headers.insert("x-forwarded-for", HeaderValue::from_static("6.6.6.6, 203.0.113.5, 10.0.0.9"));
        assert_eq!(client_address(ip("10.0.0.1"), &headers, &trusted), ip("203.0.113.5"), "the last untrusted hop");
        assert_eq!(client_address(ip("198.51.100.7"), &headers, &trusted), ip("198.51.100.7"), "a client's own header");
        assert_eq!(client_address(ip("10.0.0.1"), &headers, &[]), ip("10.0.0.1"), "nobody trusted");
        headers.insert("x-forwarded-for", HeaderValue::from_static("junk, 10.0.0.9"));
        assert_eq!(client_address(ip("10.0.0.1"), &headers, &trusted), ip("10.0.0.9"), "stops at what it cannot read");
        assert_eq!(client_address(ip("10.0.0.1"), &axum::http::HeaderMap::new(), &trusted), ip("10.0.0.1"));
    }
}
