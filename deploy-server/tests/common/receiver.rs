//! A webhook receiver on loopback whose answers the test sets, recording every request it gets.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use deploy_client::webhooks::{self, WebhookEvent};

/// How the receiver answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Mode {
    /// This status.
    Status(u16),
    /// Never answers (the request hangs until the sender gives up).
    Hang,
    /// This status after holding the request this many milliseconds.
    Slow(u16, u64),
}

/// One request received.
#[derive(Debug, Clone)]
pub(crate) struct Received {
    pub(crate) id: String,
    pub(crate) event: Option<WebhookEvent>,
    pub(crate) body: String,
    pub(crate) answered: Option<u16>,
}

#[derive(Default)]
struct Shared {
    secret: Mutex<String>,
    mode: Mutex<Option<Mode>>,
    log: Mutex<Vec<Received>>,
    hanging: Mutex<usize>,
    /// Delivery ids being received right now, and how often one arrived while it was already being received.
    active: Mutex<std::collections::HashSet<String>>,
    overlaps: Mutex<usize>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The receiver. It may be "down" (nothing listens on its port) until [`Receiver::up`].
pub(crate) struct Receiver {
    pub(crate) addr: SocketAddr,
    shared: Arc<Shared>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Receiver {
    /// A receiver that is down: its port is known but nothing listens yet.
    pub(crate) async fn down() -> Self {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        drop(listener);
        Self { addr, shared: Arc::new(Shared::default()), task: None }
    }

    /// A receiver that answers `mode` at once.
    pub(crate) async fn answering(mode: Mode) -> Self {
        let mut r = Self::down().await;
        r.up(mode).await;
        r
    }

    pub(crate) fn url(&self) -> String {
        format!("http://{}/hook", self.addr)
    }

    /// The subscription's secret, to verify deliveries with.
    pub(crate) fn set_secret(&self, secret: &str) {
        secret.clone_into(&mut lock(&self.shared.secret));
    }

    /// Starts listening (on the same port) and answering `mode`.
    pub(crate) async fn up(&mut self, mode: Mode) {
        self.set_mode(mode);
        if self.task.is_some() {
            return;
        }
        let listener = tokio::net::TcpListener::bind(self.addr).await.expect("the receiver's port is free again");
        let app = Router::new().route("/hook", post(hook)).with_state(Arc::clone(&self.shared));
        self.task = Some(tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        }));
    }

    pub(crate) fn set_mode(&self, mode: Mode) {
        *lock(&self.shared.mode) = Some(mode);
    }

    pub(crate) fn log(&self) -> Vec<Received> {
        lock(&self.shared.log).clone()
    }

    /// How many times a delivery arrived while the same delivery was still being received.
    pub(crate) fn overlaps(&self) -> usize {
        *lock(&self.shared.overlaps)
    }

    /// Requests being held open right now.
    pub(crate) fn hanging(&self) -> usize {
        *lock(&self.shared.hanging)
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        if let Some(t) = self.task.take() {
            t.abort();
        }
    }
}

async fn hook(State(shared): State<Arc<Shared>>, headers: HeaderMap, body: Bytes) -> Response {
    let secret = lock(&shared.secret).clone();
    let event = webhooks::verify::<serde_json::Value>(&secret, &headers, &body).ok();
    let id = headers.get("webhook-id").and_then(|v| v.to_str().ok()).unwrap_or_default().to_owned();
    let mode = lock(&shared.mode).unwrap_or(Mode::Status(204));
    let answered = match mode {
        Mode::Status(code) | Mode::Slow(code, _) => Some(code),
        Mode::Hang => None,
    };
    if !lock(&shared.active).insert(id.clone()) {
        *lock(&shared.overlaps) += 1;
    }
    let _active = ActiveGuard(Arc::clone(&shared), id.clone());
    lock(&shared.log).push(Received { id, event, body: String::from_utf8_lossy(&body).into_owned(), answered });
    match mode {
        Mode::Slow(code, ms) => {
            tokio::time::sleep(Duration::from_millis(ms)).await;
            StatusCode::from_u16(code).unwrap().into_response()
        }
        Mode::Status(code) => {
            let status = StatusCode::from_u16(code).unwrap();
            let mut r = status.into_response();
            if code == 429 {
                r.headers_mut().insert("retry-after", HeaderValue::from_static("1"));
            }
            r
        }
        Mode::Hang => {
            *lock(&shared.hanging) += 1;
            let _guard = HangGuard(Arc::clone(&shared));
            tokio::time::sleep(Duration::from_secs(3600)).await;
            StatusCode::NO_CONTENT.into_response()
        }
    }
}

struct HangGuard(Arc<Shared>);

impl Drop for HangGuard {
    fn drop(&mut self) {
        *lock(&self.0.hanging) -= 1;
    }
}

struct ActiveGuard(Arc<Shared>, String);

impl Drop for ActiveGuard {
    fn drop(&mut self) {
        lock(&self.0.active).remove(&self.1);
    }
}
