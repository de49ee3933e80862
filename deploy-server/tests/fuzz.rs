//! Random bodies and headers thrown at the submit endpoint: never a 5xx, never a panic, always a problem document for
//! a refusal.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::{ADMIN, Server};
use proptest::prelude::*;
use serde_json::{Value, json};

fn leaf() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|n| json!(n)),
        any::<f64>().prop_filter("finite", |f| f.is_finite()).prop_map(|f| json!(f)),
        "\\PC{0,40}".prop_map(Value::String),
        prop_oneof![
            Just("prod"),
            Just("2.0"),
            Just("25%"),
            Just("0"),
            Just("rolling"),
            Just("canary"),
            Just("-1s"),
            Just("10m")
        ]
        .prop_map(|s| json!(s)),
    ]
}

fn value() -> impl Strategy<Value = Value> {
    leaf().prop_recursive(3, 24, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::btree_map("[a-z_]{1,12}", inner, 0..5).prop_map(|m| json!(m)),
        ]
    })
}

/// Requests that are mostly well-formed, with one part replaced by something random.
fn near_valid() -> impl Strategy<Value = Value> {
    let fields = prop_oneof![
        Just("environment"),
        Just("service"),
        Just("version"),
        Just("artifact"),
        Just("config"),
        Just("secrets"),
        Just("targets"),
        Just("strategy"),
        Just("verify"),
        Just("failure"),
        Just("on_unreachable"),
        Just("progress_deadline"),
        Just("mode"),
        Just("steps"),
        Just("labels"),
        Just("unknown"),
    ];
    (fields, value()).prop_map(|(field, v)| {
        let mut body = json!({"environment": "prod", "service": "checkout", "version": "2.0",
                              "verify": {"timeout": "2s", "interval": "20ms", "healthy_for": "0s"}});
        body[field] = v;
        body
    })
}

fn header_text() -> impl Strategy<Value = String> {
    "[ -~]{0,300}"
}

/// One server for every case (started once: cases are many and quick); its data directory goes with it.
#[test]
fn submit_never_answers_5xx() {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let mut server = rt.block_on(async {
        let s = Server::start("fuzz").await;
        s.sim_env("prod", 3, "queue", json!({"apply_ms": 0})).await;
        s
    });
    let cases = (
        prop_oneof![near_valid(), value()],
        prop::option::of("\\PC{0,200}"),
        prop_oneof![Just("application/json"), Just("text/plain"), Just("application/merge-patch+json"), Just("")],
        prop::option::of(header_text()),
        prop::option::of(header_text()),
    );
    let config = ProptestConfig { cases: 96, failure_persistence: None, ..ProptestConfig::default() };
    let outcome =
        proptest::test_runner::TestRunner::new(config).run(&cases, |(body, raw, content_type, key, if_match)| {
            let (status, ctype, parsed) = rt.block_on(async {
                let mut req = server.http.post(server.url("/v1/deployments")).bearer_auth(ADMIN);
                if !content_type.is_empty() {
                    req = req.header("content-type", content_type);
                }
                if let Some(k) = &key {
                    req = req.header("idempotency-key", k.as_str());
                }
                if let Some(m) = &if_match {
                    req = req.header("if-match", m.as_str());
                }
                let payload = raw.clone().unwrap_or_else(|| body.to_string());
                let resp = req.body(payload).send().await.unwrap();
                let status = resp.status();
                let ctype =
                    resp.headers().get("content-type").and_then(|v| v.to_str().ok()).unwrap_or_default().to_owned();
                let parsed: Value = resp.json().await.unwrap_or(Value::Null);
                (status, ctype, parsed)
            });
            prop_assert!(status.as_u16() < 500, "{status} for {body}: {parsed}");
            if status.is_client_error() {
                prop_assert_eq!(ctype.as_str(), "application/problem+json");
                prop_assert!(parsed["type"].as_str().is_some_and(|t| t.starts_with("/problems/")), "{}", parsed);
                prop_assert_eq!(parsed["status"].as_u64(), Some(u64::from(status.as_u16())));
            } else {
                prop_assert_eq!(status.as_u16(), 202, "{}", parsed);
            }
            Ok(())
        });
    if let Err(e) = outcome {
        panic!("{e}");
    }
    rt.block_on(server.stop());
}
