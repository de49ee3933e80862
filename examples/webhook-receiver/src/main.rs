//! A receiver of `deployd`'s webhooks: verifies each delivery's signature and timestamp, ignores repeats of a delivery
//! it already handled (deliveries are at least once), and prints what happened.
//!
//! ```text
//! WEBHOOK_SECRET=whsec_... cargo run -p example-webhook-receiver -- 127.0.0.1:9000
//! curl -X POST localhost:8080/v1/webhooks -H "Authorization: Bearer $KEY" -H 'Content-Type: application/json' \
//!      -d '{"url": "http://127.0.0.1:9000/hook", "events": ["deployment.*"]}'
//! ```
//! (Create the subscription first to learn its secret, then start the receiver with it: deliveries are retried.)

use std::collections::HashSet;
use std::sync::{Arc, Mutex, PoisonError};

use anyhow::Context as _;
use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use deploy_client::webhooks::{self, WebhookEvent};

struct Receiver {
    secret: String,
    seen: Mutex<HashSet<String>>,
}

async fn hook(State(receiver): State<Arc<Receiver>>, headers: HeaderMap, body: Bytes) -> StatusCode {
    let event: WebhookEvent = match webhooks::verify(&receiver.secret, &headers, &body) {
        Ok(event) => event,
        Err(e) => {
            eprintln!("refused a delivery: {e}");
            return StatusCode::BAD_REQUEST;
        }
    };
    let first_time = receiver.seen.lock().unwrap_or_else(PoisonError::into_inner).insert(event.id.clone());
    if first_time {
        println!(
            "{} {}: deployment {} of {} {} is {}",
            event.timestamp,
            event.event_type,
            event.data["id"],
            event.data["service"],
            event.data["version"],
            event.data["status"]
        );
    }
    StatusCode::NO_CONTENT
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let secret = std::env::var("WEBHOOK_SECRET").context("set WEBHOOK_SECRET to the subscription's whsec_ secret")?;
    let addr = std::env::args().nth(1).unwrap_or_else(|| "127.0.0.1:9000".to_owned());
    let receiver = Arc::new(Receiver { secret, seen: Mutex::new(HashSet::new()) });
    let app = Router::new().route("/hook", post(hook)).with_state(receiver);
    let listener = tokio::net::TcpListener::bind(&addr).await.with_context(|| format!("binding {addr}"))?;
    println!("receiving webhooks on http://{addr}/hook");
    axum::serve(listener, app).await?;
    Ok(())
}
