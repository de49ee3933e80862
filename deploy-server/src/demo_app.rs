//! The demo's service: a tiny HTTP server whose `/health` reports its version, and which can be told that some
//! versions are broken (their `/health` answers 503), so a demo can show a bad release being rolled back.
//!
//! It binds with `SO_REUSEPORT`, so a new version can start on the same port while the old one still serves: the
//! `process` executor then checks the new one's health and stops the old one, with no moment where the port is closed.
//! It stops gracefully on SIGTERM. Run it as `deployd demo-app --port 18080 --version 2.0` or from
//! `examples/demo-app`.

use std::net::SocketAddr;

use axum::Json;
use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::get;
use serde_json::json;

/// What the demo service is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DemoApp {
    /// Its port on 127.0.0.1.
    pub port: u16,
    /// The version it reports.
    pub version: String,
    /// Versions whose health check fails (`DEMO_APP_UNHEALTHY_VERSIONS`, comma-separated).
    pub unhealthy_versions: Vec<String>,
}

impl DemoApp {
    /// Whether this version answers 503 on `/health`.
    #[must_use]
    pub fn is_unhealthy(&self) -> bool {
        self.unhealthy_versions.iter().any(|v| v == &self.version)
    }
}

async fn health(State(app): State<std::sync::Arc<DemoApp>>) -> impl IntoResponse {
    if app.is_unhealthy() {
        let body = json!({"version": app.version, "status": "unhealthy", "pid": std::process::id()});
        (StatusCode::SERVICE_UNAVAILABLE, Json(body))
    } else {
        (StatusCode::OK, Json(json!({"version": app.version, "status": "ok", "pid": std::process::id()})))
    }
}

async fn index(State(app): State<std::sync::Arc<DemoApp>>) -> String {
    format!("hello from demo-app {} on port {} (pid {})\n", app.version, app.port, std::process::id())
}

/// Serves until `shutdown` completes, then finishes the requests in flight.
///
/// # Errors
/// When the port cannot be bound.
pub async fn serve(app: DemoApp, shutdown: impl Future<Output = ()> + Send + 'static) -> std::io::Result<()> {
    let socket = tokio::net::TcpSocket::new_v4()?;
    socket.set_reuseaddr(true)?;
    #[cfg(unix)]
    socket.set_reuseport(true)?;
    socket.bind(SocketAddr::from(([127, 0, 0, 1], app.port)))?;
    let listener = socket.listen(1024)?;
    let router =
        Router::new().route("/health", get(health)).route("/", get(index)).with_state(std::sync::Arc::new(app));
    axum::serve(listener, router).with_graceful_shutdown(shutdown).await
}
