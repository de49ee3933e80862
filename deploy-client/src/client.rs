//! The typed client: every endpoint of the Deployment API, with safe retries.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use deploy_core::{
    AgentReport, AgentSlot, AuditEntry, Deployment, DeploymentId, DeploymentRequest, Environment, EnvironmentPattern,
    EnvironmentSpec, Event, Page, PageRequest, Role,
};
use futures::stream::{BoxStream, Stream, StreamExt as _};
use reqwest::header::{HeaderMap, HeaderName, HeaderValue};
use reqwest::{Method, StatusCode};
use serde::de::DeserializeOwned;
use serde_json::json;
use uuid::Uuid;

use crate::error::{Error, Problem};
use crate::types::{ApiKey, Delivery, EventPage, NewWebhook, SubmitOptions, Webhook};
use deploy_core::{AuditFilter, DeploymentFilter, EnvironmentName, IdempotencyKey, Revision, Submitted};

/// How failed calls are retried: exponential backoff with jitter, at least the server's `Retry-After`.
///
/// Retried: connection errors, timeouts, 5xx, 429 `rate-limited`, and 409 `idempotency-key-in-flight` (the server asks
/// for the retry, which then gets the first request's answer). Never other 4xx: the request itself is wrong, and a 429
/// `quota-exceeded` lasts until the submitter's deployments finish or its window moves on, which is for the caller to
/// decide. Calls that would not be
/// safe to repeat (creating a key or a subscription) are retried only when the request never reached the server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Attempts in all, the first included.
    pub max_attempts: u32,
    /// The first delay; it doubles with each retry.
    pub base_delay: Duration,
    /// The longest delay between two attempts.
    pub max_delay: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self { max_attempts: 5, base_delay: Duration::from_millis(200), max_delay: Duration::from_secs(10) }
    }
}

impl RetryPolicy {
    /// Never retry.
    #[must_use]
    pub fn none() -> Self {
        Self { max_attempts: 1, ..Self::default() }
    }

    /// The delay before retry `n` (from 1): half fixed, half random ("equal jitter"), at least `server`.
    fn delay(&self, n: u32, server: Option<Duration>) -> Duration {
        let exp = self.base_delay.saturating_mul(1u32 << n.saturating_sub(1).min(16)).min(self.max_delay);
        let half = exp / 2;
        let half_ns = u64::try_from(half.as_nanos()).unwrap_or(u64::MAX).max(1);
        // The low 64 bits of a UUIDv7 are random: enough entropy for jitter without another dependency.
        let jittered = half + Duration::from_nanos(Uuid::now_v7().as_u128() as u64 % half_ns);
        server.map_or(jittered, |s| jittered.max(s.min(self.max_delay.max(s))))
    }
}

/// Whether a call may be repeated after the server may have seen it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Repeat {
    /// Reads, replacements, deletions, and creations carrying an idempotency key.
    Safe,
    /// Only when the request never left.
    IfNotSent,
}

/// Builds a [`Client`].
#[derive(Debug, Clone)]
pub struct ClientBuilder {
    base: String,
    token: Option<String>,
    timeout: Duration,
    connect_timeout: Duration,
    retry: RetryPolicy,
    insecure_http: bool,
    roots: Vec<Vec<u8>>,
    identity: Option<Vec<u8>>,
}

/// Where plain HTTP to `url` may go: nowhere but this machine. A loopback literal (127.0.0.0/8, `::1`) is; a name
/// (`localhost`, `*.localhost`, any other) is only when every address it resolves to is loopback, and then those
/// addresses are returned to pin the client to (so the name cannot lead elsewhere later).
///
/// # Errors
/// Why plain HTTP may not go there.
fn loopback_only(url: &reqwest::Url) -> Result<Option<(String, Vec<std::net::SocketAddr>)>, String> {
    match url.host() {
        Some(url::Host::Ipv4(ip)) if ip.is_loopback() => Ok(None),
        Some(url::Host::Ipv6(ip)) if ip.is_loopback() => Ok(None),
        Some(url::Host::Domain(d)) => {
            use std::net::ToSocketAddrs as _;
            let port = url.port_or_known_default().unwrap_or(80);
            // Resolved here, once (a name of this machine is answered by its hosts file), and pinned.
            let addrs: Vec<std::net::SocketAddr> =
                (d, port).to_socket_addrs().map_err(|_| format!("{d} cannot be resolved"))?.collect();
            if all_loopback(&addrs) {
                Ok(Some((d.to_owned(), addrs)))
            } else {
                Err(format!("{d} resolves to addresses other than this machine's"))
            }
        }
        _ => Err("it is another host".to_owned()),
    }
}

/// Whether there are addresses and every one is loopback.
fn all_loopback(addrs: &[std::net::SocketAddr]) -> bool {
    !addrs.is_empty() && addrs.iter().all(|a| a.ip().is_loopback())
}

impl ClientBuilder {
    /// The bearer token: an API key (`dk_...`) or a JWT.
    #[must_use]
    pub fn token(mut self, token: impl Into<String>) -> Self {
        self.token = Some(token.into());
        self
    }

    /// The longest one request may take (default 30 s). Event streams are not bounded by it.
    #[must_use]
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// The longest a connection may take to open (default 10 s).
    #[must_use]
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// How failed calls are retried.
    #[must_use]
    pub fn retry(mut self, retry: RetryPolicy) -> Self {
        self.retry = retry;
        self
    }

    /// Allows `http://` to a host other than this machine. Without it such a URL is refused: the bearer token would
    /// cross the network in clear.
    #[must_use]
    pub fn insecure_http(mut self, allow: bool) -> Self {
        self.insecure_http = allow;
        self
    }

    /// Trusts the CA certificates in `pem` (one or more) besides the system's, e.g. a private CA that signed
    /// `deployd`'s certificate.
    #[must_use]
    pub fn root_certificates_pem(mut self, pem: impl Into<Vec<u8>>) -> Self {
        self.roots.push(pem.into());
        self
    }

    /// Presents this client certificate (PEM: the certificate chain and its private key) to servers that ask for one,
    /// as `deployd --tls-client-ca` does for agents.
    #[must_use]
    pub fn identity_pem(mut self, pem: impl Into<Vec<u8>>) -> Self {
        self.identity = Some(pem.into());
        self
    }

    /// The client.
    ///
    /// # Errors
    /// [`Error::Url`] when the base URL is not an absolute `http` or `https` URL, or is `http` to another host without
    /// [`ClientBuilder::insecure_http`]; [`Error::Transport`] when the HTTP client cannot be built or a certificate
    /// cannot be read.
    pub fn build(self) -> Result<Client, Error> {
        let url = reqwest::Url::parse(&self.base).map_err(|e| Error::Url(format!("{}: {e}", self.base)))?;
        if !matches!(url.scheme(), "http" | "https") || url.host().is_none() {
            return Err(Error::Url(format!("{}: use an http or https URL", self.base)));
        }
        let mut pinned = None;
        if url.scheme() == "http" && !self.insecure_http {
            pinned = loopback_only(&url).map_err(|why| {
                Error::Url(format!(
                    "{}: plain HTTP to another host would send the token in clear ({why}); use https, or allow \
                     insecure HTTP explicitly (deployctl and deploy-agent: --insecure-http)",
                    self.base
                ))
            })?;
        }
        #[cfg(feature = "rustls-ring")]
        if rustls::crypto::CryptoProvider::get_default().is_none() {
            // Lost only to another thread installing one at the same moment, whose provider then serves.
            let _ = rustls::crypto::ring::default_provider().install_default();
        }
        let mut http = reqwest::Client::builder()
            .connect_timeout(self.connect_timeout)
            // Per read, so a long event stream lives while the server's keep-alive comments arrive.
            .read_timeout(self.timeout)
            .user_agent(concat!("deploy-client/", env!("CARGO_PKG_VERSION")));
        for pem in &self.roots {
            for cert in reqwest::Certificate::from_pem_bundle(pem).map_err(Error::Transport)? {
                http = http.add_root_certificate(cert);
            }
        }
        if let Some(pem) = &self.identity {
            http = http.identity(reqwest::Identity::from_pem(pem).map_err(Error::Transport)?);
        }
        if let Some((name, addrs)) = &pinned {
            http = http.resolve_to_addrs(name, addrs);
        }
        let http = http.build().map_err(Error::Transport)?;
        Ok(Client {
            inner: Arc::new(Inner {
                http,
                base: self.base.trim_end_matches('/').to_owned(),
                token: self.token,
                timeout: self.timeout,
                retry: self.retry,
            }),
        })
    }
}

#[derive(Debug)]
struct Inner {
    http: reqwest::Client,
    base: String,
    token: Option<String>,
    timeout: Duration,
    retry: RetryPolicy,
}

/// A client of one `deployd` (or a load balancer before several). Cheap to clone.
///
/// ```no_run
/// # async fn demo() -> Result<(), deploy_client::Error> {
/// use deploy_client::{Client, SubmitOptions};
/// use deploy_core::DeploymentRequest;
///
/// let client = Client::builder("http://127.0.0.1:8080").token("dk_...").build()?;
/// let request = DeploymentRequest {
///     environment: "prod".into(),
///     service: "checkout".into(),
///     version: "2.0.1".into(),
///     ..Default::default()
/// };
/// // Safe to retry: the idempotency key generated here is sent again on every retry.
/// let submitted = client.submit(&request, SubmitOptions::default()).await?;
/// let done = client.wait(submitted.deployment.id(), std::time::Duration::from_secs(600)).await?;
/// println!("{} is {}", done.id(), done.status());
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

/// Which resource an answer holds, for [`Client::whole`] to find its target pages.
#[derive(Debug, Clone, Copy)]
enum Cut {
    Deployment,
    Environment,
}

/// An answer: status, headers, body.
struct Answer {
    status: StatusCode,
    headers: HeaderMap,
    body: Vec<u8>,
}

impl Answer {
    fn json<T: DeserializeOwned>(&self) -> Result<T, Error> {
        serde_json::from_slice(&self.body).map_err(|e| Error::Protocol(format!("{e} in a {} answer", self.status)))
    }

    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    headers.get(reqwest::header::RETRY_AFTER)?.to_str().ok()?.trim().parse().ok().map(Duration::from_secs)
}

fn retryable_status(status: StatusCode, problem: &Problem) -> bool {
    status.is_server_error()
        || (status == StatusCode::TOO_MANY_REQUESTS && !problem.is("quota-exceeded"))
        || problem.is("idempotency-key-in-flight")
}

fn page_query(page: &PageRequest) -> Vec<(&'static str, String)> {
    let mut q = vec![("limit", page.limit.to_string())];
    if let Some(c) = &page.cursor {
        q.push(("cursor", c.clone()));
    }
    q
}

fn segment(raw: &str) -> Result<&str, Error> {
    if raw.is_empty() || raw.bytes().any(|b| !(b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))) {
        return Err(Error::Url(format!("{raw:?} is not a valid path segment")));
    }
    Ok(raw)
}

impl Client {
    /// A builder for a client of the server at `base_url` (`http://127.0.0.1:8080`).
    #[must_use]
    pub fn builder(base_url: impl Into<String>) -> ClientBuilder {
        ClientBuilder {
            base: base_url.into(),
            token: None,
            timeout: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(10),
            retry: RetryPolicy::default(),
            insecure_http: false,
            roots: Vec::new(),
            identity: None,
        }
    }

    /// The base URL.
    #[must_use]
    pub fn base_url(&self) -> &str {
        &self.inner.base
    }

    /// One call, retried as its [`Repeat`] allows.
    async fn call(
        &self,
        method: Method,
        path: &str,
        query: &[(&str, String)],
        body: Option<&serde_json::Value>,
        headers: &[(HeaderName, String)],
        repeat: Repeat,
    ) -> Result<Answer, Error> {
        let url = format!("{}{path}", self.inner.base);
        let retry = &self.inner.retry;
        let mut attempt = 0u32;
        loop {
            attempt += 1;
            let mut req = self.inner.http.request(method.clone(), &url).timeout(self.inner.timeout).query(query);
            if let Some(t) = &self.inner.token {
                req = req.bearer_auth(t);
            }
            for (name, value) in headers {
                let value =
                    HeaderValue::from_str(value).map_err(|_| Error::Url(format!("header {name}: {value:?}")))?;
                req = req.header(name, value);
            }
            if let Some(b) = body {
                req = req.json(b);
            }
            let last = attempt >= retry.max_attempts.max(1);
            match req.send().await {
                Ok(resp) => {
                    let status = resp.status();
                    let headers = resp.headers().clone();
                    let bytes = match resp.bytes().await {
                        Ok(b) => b.to_vec(),
                        Err(e) if !last && repeat == Repeat::Safe => {
                            tracing::debug!(error = %e, attempt, "answer cut off; retrying");
                            tokio::time::sleep(retry.delay(attempt, None)).await;
                            continue;
                        }
                        Err(e) => return Err(Error::from_reqwest(e)),
                    };
                    let answer = Answer { status, headers, body: bytes };
                    if status.is_success() || status == StatusCode::NOT_MODIFIED {
                        return Ok(answer);
                    }
                    let mut problem: Problem = answer.json().unwrap_or_else(|_| Problem {
                        type_uri: "about:blank".into(),
                        title: status.canonical_reason().unwrap_or("HTTP error").to_owned(),
                        status: status.as_u16(),
                        detail: None,
                        errors: Vec::new(),
                        request_id: None,
                        retry_after: None,
                    });
                    problem.request_id = answer.header("x-request-id").map(str::to_owned);
                    problem.retry_after = retry_after(&answer.headers);
                    if !last && repeat == Repeat::Safe && retryable_status(status, &problem) {
                        tracing::debug!(status = status.as_u16(), attempt, "retrying");
                        tokio::time::sleep(retry.delay(attempt, problem.retry_after)).await;
                        continue;
                    }
                    return Err(Error::Problem(Box::new(problem)));
                }
                Err(e) => {
                    // A connection that could not be made never reached the server: always safe to repeat.
                    let may_retry = e.is_connect() || repeat == Repeat::Safe;
                    if !last && may_retry {
                        tracing::debug!(error = %e, attempt, "request failed; retrying");
                        tokio::time::sleep(retry.delay(attempt, None)).await;
                        continue;
                    }
                    return Err(Error::from_reqwest(e));
                }
            }
        }
    }

    async fn get_json<T: DeserializeOwned>(&self, path: &str, query: &[(&str, String)]) -> Result<T, Error> {
        self.call(Method::GET, path, query, None, &[], Repeat::Safe).await?.json()
    }

    /// `answer`'s body as `T`, after completing every target list the server cut short (`targets_next_cursor`) from
    /// the resource's `.../targets` pages, in the body itself or in each item of a page: a typed record always holds
    /// every target, and its summary counts them all.
    async fn whole<T: DeserializeOwned>(&self, answer: &Answer, kind: Cut) -> Result<T, Error> {
        let mut value: serde_json::Value = answer.json()?;
        match value.get_mut("items").and_then(serde_json::Value::as_array_mut) {
            Some(items) => {
                for item in items {
                    self.complete_targets(item, kind).await?;
                }
            }
            None => self.complete_targets(&mut value, kind).await?,
        }
        serde_json::from_value(value).map_err(|e| Error::Protocol(format!("{e} in a {} answer", answer.status)))
    }

    async fn complete_targets(&self, resource: &mut serde_json::Value, kind: Cut) -> Result<(), Error> {
        let text = |v: &serde_json::Value, key: &str| v.get(key).and_then(serde_json::Value::as_str).map(str::to_owned);
        let Some(mut cursor) = text(resource, "targets_next_cursor") else { return Ok(()) };
        let path = match kind {
            Cut::Deployment => format!("/v1/deployments/{}/targets", text(resource, "id").unwrap_or_default()),
            Cut::Environment => format!("/v1/environments/{}/targets", text(resource, "name").unwrap_or_default()),
        };
        let mut rest = Vec::new();
        // An environment has at most 20,000 targets: 40 pages of 500. A server that pages on past that is wrong.
        for _ in 0..100 {
            let page: serde_json::Value = self.get_json(&path, &[("limit", "500".into()), ("cursor", cursor)]).await?;
            rest.extend(page.get("items").and_then(serde_json::Value::as_array).cloned().unwrap_or_default());
            match text(&page, "next_cursor") {
                Some(next) => cursor = next,
                None => {
                    if let Some(targets) = resource.get_mut("targets").and_then(serde_json::Value::as_array_mut) {
                        targets.extend(rest);
                    }
                    return Ok(());
                }
            }
        }
        Err(Error::Protocol(format!("{path} pages on without end")))
    }

    // -----------------------------------------------------------------------------------------------------------
    // Environments

    /// Creates or replaces an environment; with `if_match`, only if it is still at that revision.
    ///
    /// # Errors
    /// [`Error::Problem`] `precondition-failed`, `validation`, `forbidden`, ...; transport errors after retries.
    pub async fn put_environment(
        &self,
        name: &EnvironmentName,
        spec: &EnvironmentSpec,
        if_match: Option<Revision>,
    ) -> Result<Environment, Error> {
        let body = serde_json::to_value(spec).map_err(|e| Error::Protocol(e.to_string()))?;
        let headers: Vec<(HeaderName, String)> =
            if_match.map(|r| (reqwest::header::IF_MATCH, format!("\"{r}\""))).into_iter().collect();
        let path = format!("/v1/environments/{name}");
        let answer = self.call(Method::PUT, &path, &[], Some(&body), &headers, Repeat::Safe).await?;
        self.whole(&answer, Cut::Environment).await
    }

    /// An environment, with its targets' desired and actual state.
    ///
    /// # Errors
    /// [`Error::Problem`] `not-found`, `forbidden`, ...
    pub async fn get_environment(&self, name: &EnvironmentName) -> Result<Environment, Error> {
        let answer = self.call(Method::GET, &format!("/v1/environments/{name}"), &[], None, &[], Repeat::Safe).await?;
        self.whole(&answer, Cut::Environment).await
    }

    /// One page of environments.
    ///
    /// # Errors
    /// As every call.
    pub async fn list_environments(&self, page: &PageRequest) -> Result<Page<Environment>, Error> {
        let answer = self.call(Method::GET, "/v1/environments", &page_query(page), None, &[], Repeat::Safe).await?;
        self.whole(&answer, Cut::Environment).await
    }

    /// One page of the releases that ran in an environment, newest first: every deployment that started there, with
    /// who submitted it, how it ended and how long it ran.
    ///
    /// # Errors
    /// [`Error::Problem`] `not-found`, `forbidden`, ...
    pub async fn history(
        &self,
        environment: &EnvironmentName,
        page: &PageRequest,
    ) -> Result<Page<deploy_core::Release>, Error> {
        self.get_json(&format!("/v1/environments/{environment}/history"), &page_query(page)).await
    }

    /// Every environment, page after page.
    pub fn environments(&self) -> impl Stream<Item = Result<Environment, Error>> + Send + 'static {
        let client = self.clone();
        paginate(move |cursor| {
            let client = client.clone();
            async move { client.list_environments(&PageRequest { limit: 100, cursor }).await }
        })
    }

    // -----------------------------------------------------------------------------------------------------------
    // Deployments

    /// Submits a deployment. The idempotency key (generated when `options` has none) is sent on every retry, so a
    /// retry after a lost answer returns the deployment the first attempt created instead of deploying twice.
    ///
    /// # Errors
    /// [`Error::Problem`] `validation`, `hardcoded-secret`, `environment-busy`, `precondition-failed`,
    /// `idempotency-key-reuse`, ...; transport errors after retries.
    pub async fn submit(&self, request: &DeploymentRequest, options: SubmitOptions) -> Result<Submitted, Error> {
        let key = options.idempotency_key.unwrap_or_else(IdempotencyKey::generate);
        let body = serde_json::to_value(request).map_err(|e| Error::Protocol(e.to_string()))?;
        let mut headers = vec![(HeaderName::from_static("idempotency-key"), key.to_string())];
        if let Some(r) = options.if_match {
            headers.push((reqwest::header::IF_MATCH, format!("\"{r}\"")));
        }
        let answer = self.call(Method::POST, "/v1/deployments", &[], Some(&body), &headers, Repeat::Safe).await?;
        Ok(Submitted {
            replayed: answer.header("idempotent-replayed") == Some("true"),
            deployment: self.whole(&answer, Cut::Deployment).await?,
            idempotency_key: Some(key),
        })
    }

    /// Submits a typed spec (see [`DeploymentSpec::builder`](deploy_core::DeploymentSpec::builder)); as
    /// [`Client::submit`].
    ///
    /// # Errors
    /// As [`Client::submit`].
    pub async fn submit_spec(
        &self,
        spec: &deploy_core::DeploymentSpec,
        options: SubmitOptions,
    ) -> Result<Submitted, Error> {
        self.submit(&spec.to_request(), options).await
    }

    /// A deployment.
    ///
    /// # Errors
    /// [`Error::Problem`] `not-found`, `forbidden`, ...
    pub async fn get_deployment(&self, id: DeploymentId) -> Result<Deployment, Error> {
        let answer = self.call(Method::GET, &format!("/v1/deployments/{id}"), &[], None, &[], Repeat::Safe).await?;
        self.whole(&answer, Cut::Deployment).await
    }

    /// One page of deployments, newest first.
    ///
    /// # Errors
    /// As every call.
    pub async fn list_deployments(
        &self,
        query: &DeploymentFilter,
        page: &PageRequest,
    ) -> Result<Page<Deployment>, Error> {
        let mut q = page_query(page);
        if let Some(e) = &query.environment {
            q.push(("environment", e.to_string()));
        }
        if let Some(s) = &query.service {
            q.push(("service", s.to_string()));
        }
        if let Some(s) = query.status {
            q.push(("status", s.as_str().to_owned()));
        }
        let answer = self.call(Method::GET, "/v1/deployments", &q, None, &[], Repeat::Safe).await?;
        self.whole(&answer, Cut::Deployment).await
    }

    /// Every deployment that passes `query`, newest first, page after page.
    pub fn deployments(
        &self,
        query: DeploymentFilter,
    ) -> impl Stream<Item = Result<Deployment, Error>> + Send + 'static {
        let client = self.clone();
        paginate(move |cursor| {
            let (client, query) = (client.clone(), query.clone());
            async move { client.list_deployments(&query, &PageRequest { limit: 100, cursor }).await }
        })
    }

    /// Events of a deployment after `after`, at most `limit`.
    ///
    /// # Errors
    /// As every call.
    pub async fn events(&self, id: DeploymentId, after: u64, limit: usize) -> Result<EventPage, Error> {
        let q = [("after", after.to_string()), ("limit", limit.to_string())];
        self.get_json(&format!("/v1/deployments/{id}/events"), &q).await
    }

    /// Asks for a deployment to be cancelled (at its next batch boundary); idempotent.
    ///
    /// # Errors
    /// [`Error::Problem`] `already-finished` when it is terminal.
    pub async fn cancel(&self, id: DeploymentId) -> Result<Deployment, Error> {
        let path = format!("/v1/deployments/{id}/cancel");
        let answer = self.call(Method::POST, &path, &[], None, &[], Repeat::Safe).await?;
        self.whole(&answer, Cut::Deployment).await
    }

    /// Asks for an operator action on a running deployment: pause, resume, promote or abort. The server records it
    /// (202) and the deployment acts on it at its next safe point, between batches or canary steps. Each action is
    /// idempotent, so it is retried like a read.
    ///
    /// # Errors
    /// [`Error::Problem`] `already-finished`, `not-now` (nothing waits to be promoted, a rollback cannot be paused),
    /// `not-found`, `forbidden`.
    pub async fn control(&self, id: DeploymentId, action: deploy_core::OperatorAction) -> Result<Deployment, Error> {
        use deploy_core::OperatorAction as A;
        let body = match action {
            A::Pause | A::Resume => None,
            A::Promote { full } => Some(json!({ "full": full })),
            A::Abort { rollback } => Some(rollback.map_or_else(|| json!({}), |r| json!({ "rollback": r }))),
            A::Approve => return self.decide(id, false, None).await,
            A::Reject => return self.decide(id, true, None).await,
            A::Override => {
                return Err(Error::Usage("an override needs a reason: use Client::override_schedule".into()));
            }
        };
        let path = format!("/v1/deployments/{id}/{}", action.name());
        let answer = self.call(Method::POST, &path, &[], body.as_ref(), &[], Repeat::Safe).await?;
        self.whole(&answer, Cut::Deployment).await
    }

    /// Approves a deployment waiting for approval in a protected environment, with an optional comment. Once the
    /// environment's rule has its count of distinct approvers, the deployment queues (after the rule's wait).
    ///
    /// # Errors
    /// [`Error::Problem`] `forbidden` (not an approver, or its submitter under `prevent_self_approval`), `not-now`
    /// (not awaiting approval), `already-finished`, `validation` or `hardcoded-secret` (the comment), `not-found`.
    pub async fn approve(&self, id: DeploymentId, comment: Option<&str>) -> Result<Deployment, Error> {
        self.decide(id, false, comment).await
    }

    /// Rejects a deployment waiting for approval: it ends `rejected`.
    ///
    /// # Errors
    /// As [`Client::approve`].
    pub async fn reject(&self, id: DeploymentId, comment: Option<&str>) -> Result<Deployment, Error> {
        self.decide(id, true, comment).await
    }

    async fn decide(&self, id: DeploymentId, reject: bool, comment: Option<&str>) -> Result<Deployment, Error> {
        let mut body = json!({ "decision": if reject { "reject" } else { "approve" } });
        if let Some(c) = comment {
            body["comment"] = json!(c);
        }
        let path = format!("/v1/deployments/{id}/approvals");
        // One decision per approver: repeating it changes nothing, so it is retried like a read.
        let answer = self.call(Method::POST, &path, &[], Some(&body), &[], Repeat::Safe).await?;
        self.whole(&answer, Cut::Deployment).await
    }

    /// Lets a deployment that has not started start despite its environment's windows and freezes and a global
    /// freeze (admins of its environment; the reason is required and recorded).
    ///
    /// # Errors
    /// [`Error::Problem`] `validation` (no reason), `forbidden`, `not-now` (started already), `already-finished`,
    /// `not-found`.
    pub async fn override_schedule(&self, id: DeploymentId, reason: &str) -> Result<Deployment, Error> {
        let path = format!("/v1/deployments/{id}/override");
        let body = json!({ "reason": reason });
        let answer = self.call(Method::POST, &path, &[], Some(&body), &[], Repeat::Safe).await?;
        self.whole(&answer, Cut::Deployment).await
    }

    /// The global freeze, if one holds now.
    ///
    /// # Errors
    /// As every call.
    pub async fn global_freeze(&self) -> Result<Option<deploy_core::Freeze>, Error> {
        let v: serde_json::Value = self.call(Method::GET, "/v1/freeze", &[], None, &[], Repeat::Safe).await?.json()?;
        if v["frozen"] == serde_json::Value::Bool(true) {
            serde_json::from_value(v).map(Some).map_err(|e| Error::Protocol(format!("freeze: {e}")))
        } else {
            Ok(None)
        }
    }

    /// Freezes every environment (admins of every environment): no deployment starts anywhere until
    /// [`Client::lift_freeze`] or `until`; running ones go on.
    ///
    /// # Errors
    /// [`Error::Problem`] `validation` (no reason, an end in the past), `forbidden`.
    pub async fn set_global_freeze(
        &self,
        reason: &str,
        until: Option<deploy_core::Timestamp>,
    ) -> Result<deploy_core::Freeze, Error> {
        let mut body = json!({ "reason": reason });
        if let Some(u) = until {
            let text = u
                .format(&time::format_description::well_known::Rfc3339)
                .map_err(|e| Error::Usage(format!("until: {e}")))?;
            body["until"] = json!(text);
        }
        let v: serde_json::Value =
            self.call(Method::PUT, "/v1/freeze", &[], Some(&body), &[], Repeat::Safe).await?.json()?;
        serde_json::from_value(v).map_err(|e| Error::Protocol(format!("freeze: {e}")))
    }

    /// Lifts the global freeze.
    ///
    /// # Errors
    /// [`Error::Problem`] `forbidden`.
    pub async fn lift_freeze(&self) -> Result<(), Error> {
        self.call(Method::DELETE, "/v1/freeze", &[], None, &[], Repeat::Safe).await.map(drop)
    }

    /// Pauses a deployment at its next safe point ([`Client::control`]).
    ///
    /// # Errors
    /// As [`Client::control`].
    pub async fn pause(&self, id: DeploymentId) -> Result<Deployment, Error> {
        self.control(id, deploy_core::OperatorAction::Pause).await
    }

    /// Resumes a paused deployment ([`Client::control`]).
    ///
    /// # Errors
    /// As [`Client::control`].
    pub async fn resume(&self, id: DeploymentId) -> Result<Deployment, Error> {
        self.control(id, deploy_core::OperatorAction::Resume).await
    }

    /// Promotes a canary: the step that waits goes on, or with `full` every remaining step is skipped
    /// ([`Client::control`]).
    ///
    /// # Errors
    /// As [`Client::control`].
    pub async fn promote(&self, id: DeploymentId, full: bool) -> Result<Deployment, Error> {
        self.control(id, deploy_core::OperatorAction::Promote { full }).await
    }

    /// Aborts a deployment at its next safe point; `rollback` overrides its failure policy ([`Client::control`]).
    ///
    /// # Errors
    /// As [`Client::control`].
    pub async fn abort(&self, id: DeploymentId, rollback: Option<bool>) -> Result<Deployment, Error> {
        self.control(id, deploy_core::OperatorAction::Abort { rollback }).await
    }

    /// Retries the failed and unreachable targets of a `degraded` or `failed` deployment: a new deployment, with
    /// `retry_of` naming the first. Like [`Client::submit`], it carries an idempotency key on every retry.
    ///
    /// # Errors
    /// [`Error::Problem`] `not-now` when it is not degraded or failed or nothing failed, `not-found`, `forbidden`.
    pub async fn retry(&self, id: DeploymentId, idempotency_key: Option<IdempotencyKey>) -> Result<Submitted, Error> {
        let key = idempotency_key.unwrap_or_else(IdempotencyKey::generate);
        let headers = [(HeaderName::from_static("idempotency-key"), key.to_string())];
        let path = format!("/v1/deployments/{id}/retry");
        let answer = self.call(Method::POST, &path, &[], None, &headers, Repeat::Safe).await?;
        Ok(Submitted {
            replayed: answer.header("idempotent-replayed") == Some("true"),
            deployment: self.whole(&answer, Cut::Deployment).await?,
            idempotency_key: Some(key),
        })
    }

    /// Rolls a finished deployment back: a new deployment returning each target it changed to its former version.
    /// Like [`Client::submit`], it carries an idempotency key on every retry.
    ///
    /// # Errors
    /// [`Error::Problem`] `validation` when it is not finished, `not-found`, ...
    pub async fn rollback(
        &self,
        id: DeploymentId,
        idempotency_key: Option<IdempotencyKey>,
    ) -> Result<Submitted, Error> {
        let key = idempotency_key.unwrap_or_else(IdempotencyKey::generate);
        let headers = [(HeaderName::from_static("idempotency-key"), key.to_string())];
        let path = format!("/v1/deployments/{id}/rollback");
        let answer = self.call(Method::POST, &path, &[], None, &headers, Repeat::Safe).await?;
        Ok(Submitted {
            replayed: answer.header("idempotent-replayed") == Some("true"),
            deployment: self.whole(&answer, Cut::Deployment).await?,
            idempotency_key: Some(key),
        })
    }

    /// Rolls an environment back to a chosen release (`previous`, a deployment, a version): a new deployment of that
    /// release, with `rollback_of` naming the release that ran last. Like [`Client::submit`], it carries an
    /// idempotency key on every retry.
    ///
    /// # Errors
    /// [`Error::Problem`] `validation` (field `to`) when no release that succeeded matches, `not-found`, `forbidden`.
    pub async fn rollback_environment(
        &self,
        environment: &EnvironmentName,
        to: &deploy_core::RollbackTo,
        idempotency_key: Option<IdempotencyKey>,
    ) -> Result<Submitted, Error> {
        let key = idempotency_key.unwrap_or_else(IdempotencyKey::generate);
        let headers = [(HeaderName::from_static("idempotency-key"), key.to_string())];
        let body = json!({"to": to.to_wire()});
        let path = format!("/v1/environments/{environment}/rollback");
        let answer = self.call(Method::POST, &path, &[], Some(&body), &headers, Repeat::Safe).await?;
        Ok(Submitted {
            replayed: answer.header("idempotent-replayed") == Some("true"),
            deployment: self.whole(&answer, Cut::Deployment).await?,
            idempotency_key: Some(key),
        })
    }

    /// Polls a deployment until it is terminal, as often as the server's `Retry-After` says (1 s by default), for at
    /// most `timeout`.
    ///
    /// # Errors
    /// [`Error::WaitTimedOut`] with the last state seen when `timeout` passes first; otherwise as every call.
    pub async fn wait(&self, id: DeploymentId, timeout: Duration) -> Result<Deployment, Error> {
        let deadline = tokio::time::Instant::now() + timeout;
        let path = format!("/v1/deployments/{id}");
        loop {
            let answer = self.call(Method::GET, &path, &[], None, &[], Repeat::Safe).await?;
            let deployment: Deployment = self.whole(&answer, Cut::Deployment).await?;
            if deployment.status().is_terminal() {
                return Ok(deployment);
            }
            let pause = retry_after(&answer.headers).unwrap_or(Duration::from_secs(1));
            let now = tokio::time::Instant::now();
            if now + pause > deadline {
                tokio::time::sleep_until(deadline).await;
                let last = self.get_deployment(id).await?;
                return if last.status().is_terminal() { Ok(last) } else { Err(Error::WaitTimedOut(Box::new(last))) };
            }
            tokio::time::sleep(pause).await;
        }
    }

    /// The events of a deployment after `after`, live, over SSE, ending after its terminal event. A dropped
    /// connection is reopened with `Last-Event-ID`, so no event is lost or repeated.
    pub fn watch(&self, id: DeploymentId, after: u64) -> impl Stream<Item = Result<Event, Error>> + Send + 'static {
        let state = Watch { client: self.clone(), id, last: after, stream: None, done: false, failures: 0 };
        futures::stream::unfold(state, Watch::next)
    }

    async fn open_events(
        &self,
        id: DeploymentId,
        last: u64,
    ) -> Result<BoxStream<'static, Result<Event, String>>, Error> {
        use eventsource_stream::Eventsource as _;
        let url = format!("{}/v1/deployments/{id}/events", self.inner.base);
        let mut req = self
            .inner
            .http
            .get(url)
            .header(reqwest::header::ACCEPT, "text/event-stream")
            .timeout(Duration::from_secs(24 * 3600));
        if last > 0 {
            req = req.header("last-event-id", last.to_string());
        }
        if let Some(t) = &self.inner.token {
            req = req.bearer_auth(t);
        }
        let resp = req.send().await.map_err(Error::from_reqwest)?;
        if !resp.status().is_success() {
            let status = resp.status();
            let headers = resp.headers().clone();
            let body = resp.bytes().await.map_err(Error::from_reqwest)?.to_vec();
            let answer = Answer { status, headers, body };
            let problem: Problem = answer.json()?;
            return Err(Error::Problem(Box::new(problem)));
        }
        Ok(resp
            .bytes_stream()
            .eventsource()
            .map(|item| match item {
                Ok(e) => serde_json::from_str::<Event>(&e.data).map_err(|err| format!("bad event {:?}: {err}", e.data)),
                Err(e) => Err(e.to_string()),
            })
            .boxed())
    }

    // -----------------------------------------------------------------------------------------------------------
    // API keys and audit

    /// Creates an API key; the answer holds the key, shown only now.
    ///
    /// # Errors
    /// [`Error::Problem`] `forbidden` unless the caller is an admin of every environment.
    pub async fn create_api_key(
        &self,
        name: &str,
        role: Role,
        environments: &[EnvironmentPattern],
    ) -> Result<ApiKey, Error> {
        self.create_api_key_of(name, role, environments, None).await
    }

    /// Creates an API key belonging to `owner` (a person: the subject, or identity claim, of that person's tokens),
    /// so the key and the person's tokens are one approver; the answer holds the key, shown only now.
    ///
    /// # Errors
    /// As [`Client::create_api_key`]; [`Error::Problem`] `validation` for a malformed owner.
    pub async fn create_api_key_of(
        &self,
        name: &str,
        role: Role,
        environments: &[EnvironmentPattern],
        owner: Option<&str>,
    ) -> Result<ApiKey, Error> {
        let mut body = json!({"name": name, "role": role, "environments": environments});
        if let Some(owner) = owner {
            body["owner"] = json!(owner);
        }
        self.call(Method::POST, "/v1/api-keys", &[], Some(&body), &[], Repeat::IfNotSent).await?.json()
    }

    /// Every API key, without the keys.
    ///
    /// # Errors
    /// As every call.
    pub async fn list_api_keys(&self) -> Result<Vec<ApiKey>, Error> {
        Ok(self.get_json::<Page<ApiKey>>("/v1/api-keys", &[]).await?.items)
    }

    /// Revokes an API key.
    ///
    /// # Errors
    /// [`Error::Problem`] `not-found`, ...
    pub async fn delete_api_key(&self, id: Uuid) -> Result<(), Error> {
        self.call(Method::DELETE, &format!("/v1/api-keys/{id}"), &[], None, &[], Repeat::Safe).await.map(drop)
    }

    /// One page of the audit log, newest first.
    ///
    /// # Errors
    /// As every call.
    pub async fn audit(&self, query: &AuditFilter, page: &PageRequest) -> Result<Page<AuditEntry>, Error> {
        let mut q = page_query(page);
        if let Some(a) = &query.actor {
            q.push(("actor", a.clone()));
        }
        if let Some(e) = &query.environment {
            q.push(("environment", e.clone()));
        }
        self.get_json("/v1/audit", &q).await
    }

    // -----------------------------------------------------------------------------------------------------------
    // Webhooks

    /// Subscribes to events; the answer holds the signing secret, shown only now.
    ///
    /// # Errors
    /// [`Error::Problem`] `validation` (URL, event patterns), `forbidden`, ...
    pub async fn create_webhook(&self, webhook: &NewWebhook) -> Result<Webhook, Error> {
        let body = serde_json::to_value(webhook).map_err(|e| Error::Protocol(e.to_string()))?;
        self.call(Method::POST, "/v1/webhooks", &[], Some(&body), &[], Repeat::IfNotSent).await?.json()
    }

    /// Every subscription, without secrets.
    ///
    /// # Errors
    /// As every call.
    pub async fn list_webhooks(&self) -> Result<Vec<Webhook>, Error> {
        Ok(self.get_json::<Page<Webhook>>("/v1/webhooks", &[]).await?.items)
    }

    /// A subscription.
    ///
    /// # Errors
    /// [`Error::Problem`] `not-found`, ...
    pub async fn get_webhook(&self, id: Uuid) -> Result<Webhook, Error> {
        self.get_json(&format!("/v1/webhooks/{id}"), &[]).await
    }

    /// Deletes a subscription and its pending deliveries.
    ///
    /// # Errors
    /// [`Error::Problem`] `not-found`, ...
    pub async fn delete_webhook(&self, id: Uuid) -> Result<(), Error> {
        self.call(Method::DELETE, &format!("/v1/webhooks/{id}"), &[], None, &[], Repeat::Safe).await.map(drop)
    }

    /// One page of a subscription's deliveries, newest first.
    ///
    /// # Errors
    /// As every call.
    pub async fn deliveries(&self, id: Uuid, page: &PageRequest) -> Result<Page<Delivery>, Error> {
        self.get_json(&format!("/v1/webhooks/{id}/deliveries"), &page_query(page)).await
    }

    /// Sends a delivery again (same `webhook-id`).
    ///
    /// # Errors
    /// [`Error::Problem`] `not-found`, `webhook-disabled`, ...
    pub async fn redeliver(&self, id: Uuid, delivery: &str) -> Result<Delivery, Error> {
        let path = format!("/v1/webhooks/{id}/deliveries/{}/redeliver", segment(delivery)?);
        self.call(Method::POST, &path, &[], None, &[], Repeat::Safe).await?.json()
    }

    // -----------------------------------------------------------------------------------------------------------
    // Agents

    /// The slot of `target` (its assignment and last report), as its agent sees it. With `known` (the generation the
    /// agent already has), the server holds the request up to `wait` for a newer one; `None` when none came.
    ///
    /// # Errors
    /// [`Error::Problem`] `forbidden` for a key bound to another target, ...
    pub async fn agent_assignment(
        &self,
        environment: &str,
        target: &str,
        known: Option<u64>,
        wait: Duration,
    ) -> Result<Option<AgentSlot>, Error> {
        let path = format!("/v1/agents/{}/{}/assignment", segment(environment)?, segment(target)?);
        let headers: Vec<(HeaderName, String)> =
            known.map(|g| (reqwest::header::IF_NONE_MATCH, format!("\"{g}\""))).into_iter().collect();
        let query = [("wait", format!("{}ms", wait.as_millis()))];
        let answer = self.call(Method::GET, &path, &query, None, &headers, Repeat::Safe).await?;
        if answer.status == StatusCode::NOT_MODIFIED {
            return Ok(None);
        }
        answer.json().map(Some)
    }

    /// Reports what runs on `target` (also the agent's heartbeat).
    ///
    /// # Errors
    /// [`Error::Problem`] `forbidden` for a key bound to another target, `validation`, ...
    pub async fn agent_report(
        &self,
        environment: &str,
        target: &str,
        report: &AgentReport,
    ) -> Result<AgentSlot, Error> {
        let path = format!("/v1/agents/{}/{}/report", segment(environment)?, segment(target)?);
        let body = serde_json::to_value(report).map_err(|e| Error::Protocol(e.to_string()))?;
        self.call(Method::PUT, &path, &[], Some(&body), &[], Repeat::Safe).await?.json()
    }

    // -----------------------------------------------------------------------------------------------------------
    // Health

    /// Whether the server is alive (`/healthz`).
    ///
    /// # Errors
    /// Transport errors; a problem when it is not.
    pub async fn health(&self) -> Result<(), Error> {
        self.call(Method::GET, "/healthz", &[], None, &[], Repeat::Safe).await.map(drop)
    }

    /// Whether the server can serve (`/readyz`: its store answers).
    ///
    /// # Errors
    /// Transport errors; a problem when it is not ready.
    pub async fn ready(&self) -> Result<(), Error> {
        self.call(Method::GET, "/readyz", &[], None, &[], Repeat::Safe).await.map(drop)
    }
}

/// The state of [`Client::watch`].
struct Watch {
    client: Client,
    id: DeploymentId,
    last: u64,
    stream: Option<BoxStream<'static, Result<Event, String>>>,
    done: bool,
    failures: u32,
}

impl Watch {
    async fn next(mut self) -> Option<(Result<Event, Error>, Self)> {
        if self.done {
            return None;
        }
        loop {
            let Some(stream) = self.stream.as_mut() else {
                match self.client.open_events(self.id, self.last).await {
                    Ok(s) => self.stream = Some(s),
                    Err(e) => {
                        let transient = match &e {
                            Error::Transport(_) | Error::Timeout(_) => true,
                            Error::Problem(p) => p.status >= 500 || p.status == 429,
                            _ => false,
                        };
                        if transient && self.reconnect_later().await {
                            continue;
                        }
                        self.done = true;
                        return Some((Err(e), self));
                    }
                }
                continue;
            };
            match stream.next().await {
                Some(Ok(event)) => {
                    if event.seq <= self.last {
                        continue; // already given: never repeat
                    }
                    self.last = event.seq;
                    self.failures = 0;
                    self.done = event.event_type.is_terminal();
                    return Some((Ok(event), self));
                }
                Some(Err(why)) => {
                    tracing::debug!(%why, "event stream broke; resuming");
                    self.stream = None;
                }
                None => self.stream = None,
            }
            // The stream ended before the terminal event: the connection dropped. Resume after the last event.
            if !self.reconnect_later().await {
                self.done = true;
                return Some((Err(Error::Protocol("the event stream keeps dropping".into())), self));
            }
        }
    }

    /// Waits before reconnecting; false when the retries are spent.
    async fn reconnect_later(&mut self) -> bool {
        self.failures += 1;
        let policy = &self.client.inner.retry;
        if self.failures >= policy.max_attempts.max(1) + 5 {
            return false;
        }
        tokio::time::sleep(policy.delay(self.failures, None)).await;
        true
    }
}

/// Items of every page, fetching the next page when the previous one is used up.
fn paginate<T, F, Fut>(fetch: F) -> impl Stream<Item = Result<T, Error>> + Send + 'static
where
    T: Send + 'static,
    F: Fn(Option<String>) -> Fut + Send + 'static,
    Fut: Future<Output = Result<Page<T>, Error>> + Send,
{
    let state = (fetch, Some(None::<String>), VecDeque::<T>::new());
    futures::stream::unfold(state, |(fetch, mut next, mut buffer)| async move {
        loop {
            if let Some(item) = buffer.pop_front() {
                return Some((Ok(item), (fetch, next, buffer)));
            }
            let cursor = next.take()?;
            match fetch(cursor).await {
                Ok(page) => {
                    buffer.extend(page.items);
                    next = page.next_cursor.map(Some);
                }
                Err(e) => return Some((Err(e), (fetch, None, buffer))),
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_http_leaves_this_machine_only_when_allowed() {
        for local in
            ["http://127.0.0.1:8080", "http://127.9.9.9", "http://localhost:1", "http://[::1]:8080", "https://10.0.0.1"]
        {
            assert!(Client::builder(local).token("dk_x").build().is_ok(), "{local}");
        }
        for remote in
            ["http://10.0.0.1:8080", "http://deployd.example.com", "http://[2001:db8::1]/", "http://localhost.evil.com"]
        {
            let refused = Client::builder(remote).token("dk_x").build();
            assert!(matches!(refused, Err(Error::Url(ref m)) if m.contains("plain HTTP")), "{remote}");
            assert!(Client::builder(remote).insecure_http(true).build().is_ok(), "{remote} when allowed");
        }
    }

    /// Finding: `*.localhost` counted as loopback without being resolved, so plain HTTP went to a name that resolved
    /// to another host. A name is resolved, every address must be loopback, and the client is pinned to them.
    #[test]
    fn a_name_is_this_machine_only_when_every_address_it_resolves_to_is() {
        let url = |s: &str| reqwest::Url::parse(s).unwrap();
        let (name, addrs) = loopback_only(&url("http://localhost:8080")).unwrap().expect("a name is pinned");
        assert_eq!(name, "localhost");
        assert!(all_loopback(&addrs) && addrs.iter().all(|a| a.port() == 8080), "{addrs:?}");
        assert!(loopback_only(&url("http://127.0.0.1:1")).unwrap().is_none(), "a literal needs no pinning");
        let unresolvable = loopback_only(&url("http://nothing-here.invalid")).unwrap_err();
        assert!(unresolvable.contains("cannot be resolved"), "{unresolvable}");
        let addr = |s: &str| s.parse::<std::net::SocketAddr>().unwrap();
        assert!(!all_loopback(&[addr("127.0.0.1:80"), addr("10.0.0.5:80")]), "one address elsewhere is enough");
        assert!(!all_loopback(&[]));
        assert!(all_loopback(&[addr("127.0.0.1:80"), addr("[::1]:80")]));
    }

    #[test]
    fn delays_grow_with_jitter_and_honour_the_server() {
        let p =
            RetryPolicy { max_attempts: 5, base_delay: Duration::from_millis(100), max_delay: Duration::from_secs(1) };
        for _ in 0..50 {
            let d1 = p.delay(1, None);
            assert!(d1 >= Duration::from_millis(50) && d1 <= Duration::from_millis(100), "{d1:?}");
            let d3 = p.delay(3, None);
            assert!(d3 >= Duration::from_millis(200) && d3 <= Duration::from_millis(400), "{d3:?}");
            let capped = p.delay(10, None);
            assert!(capped <= Duration::from_secs(1), "{capped:?}");
            assert!(p.delay(1, Some(Duration::from_secs(3))) >= Duration::from_secs(3), "Retry-After wins");
        }
    }

    #[tokio::test]
    async fn pagination_follows_cursors_to_the_last_page_and_stops_at_an_error() {
        let pages = |cursor: Option<String>| async move {
            match cursor.as_deref() {
                None => Ok(Page { items: vec![1, 2], next_cursor: Some("a".into()) }),
                Some("a") => Ok(Page { items: vec![3], next_cursor: Some("b".into()) }),
                Some("b") => Ok(Page { items: vec![4], next_cursor: None }),
                Some(other) => Err(Error::Protocol(format!("unexpected cursor {other}"))),
            }
        };
        let all: Vec<i32> = paginate(pages).map(|r| r.unwrap_or(-1)).collect().await;
        assert_eq!(all, [1, 2, 3, 4]);
        let failing = |cursor: Option<String>| async move {
            match cursor {
                None => Ok(Page { items: vec![1], next_cursor: Some("x".into()) }),
                Some(_) => Err(Error::Protocol("the server went away".into())),
            }
        };
        let got: Vec<Result<i32, Error>> = paginate(failing).collect().await;
        assert_eq!(got.len(), 2, "one item, then the error, then the end");
        assert!(matches!(got[1], Err(Error::Protocol(_))));
    }

    #[test]
    fn path_segments_and_urls_are_checked() {
        assert!(segment("prod-eu_1.a").is_ok());
        for bad in ["", "a/b", "../x", "a b", "é"] {
            assert!(segment(bad).is_err(), "{bad}");
        }
        assert!(matches!(Client::builder("ftp://x").build(), Err(Error::Url(_))));
        assert!(matches!(Client::builder("not a url").build(), Err(Error::Url(_))));
        assert!(Client::builder("http://127.0.0.1:8080/").build().is_ok());
    }
}
