//! The RBAC matrix: each role × each action × inside and outside its environments.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::{ADMIN, Server, deploy};
use reqwest::{Method, StatusCode};
use serde_json::json;

#[derive(Debug, Clone, Copy, PartialEq)]
enum Act {
    ReadEnvironment,
    ReadDeployment,
    ReadEvents,
    ListDeployments,
    Submit,
    Cancel,
    Rollback,
    Pause,
    Resume,
    Promote,
    Abort,
    Retry,
    Approve,
    PutEnvironment,
}

const ACTS: [Act; 14] = [
    Act::ReadEnvironment,
    Act::ReadDeployment,
    Act::ReadEvents,
    Act::ListDeployments,
    Act::Submit,
    Act::Cancel,
    Act::Rollback,
    Act::Pause,
    Act::Resume,
    Act::Promote,
    Act::Abort,
    Act::Retry,
    Act::Approve,
    Act::PutEnvironment,
];

fn allowed(role: &str, act: Act) -> bool {
    match act {
        Act::ReadEnvironment | Act::ReadDeployment | Act::ReadEvents | Act::ListDeployments => true,
        Act::Submit | Act::Cancel | Act::Rollback => matches!(role, "deployer" | "admin"),
        Act::Pause | Act::Resume | Act::Promote | Act::Abort | Act::Retry => matches!(role, "deployer" | "admin"),
        Act::Approve => matches!(role, "approver" | "admin"),
        Act::PutEnvironment => role == "admin",
    }
}

#[tokio::test]
async fn each_role_each_action_in_and_out_of_its_environments() {
    let s = Server::start("rbac").await;
    let mut finished = std::collections::HashMap::new();
    for env in ["prod", "staging"] {
        s.sim_env(env, 2, "queue", json!({"apply_ms": 1})).await;
        let d = s.post("/v1/deployments", ADMIN, deploy(env, "2.0")).await;
        let id = d.body["id"].as_str().unwrap().to_owned();
        s.wait_terminal(&id).await;
        finished.insert(env, id);
    }
    let mut checked = 0;
    for role in ["viewer", "deployer", "admin", "approver"] {
        let key = s.key(&format!("{role}-prod"), role, &["prod"]).await;
        for env in ["prod", "staging"] {
            let inside = env == "prod";
            for act in ACTS {
                let id = &finished[env];
                let a = match act {
                    Act::ReadEnvironment => s.get(&format!("/v1/environments/{env}"), &key).await,
                    Act::ReadDeployment => s.get(&format!("/v1/deployments/{id}"), &key).await,
                    Act::ReadEvents => s.get(&format!("/v1/deployments/{id}/events"), &key).await,
                    Act::ListDeployments => s.get(&format!("/v1/deployments?environment={env}"), &key).await,
                    Act::Submit => s.post("/v1/deployments", &key, deploy(env, "3.0")).await,
                    Act::Cancel => {
                        s.call(Method::POST, &format!("/v1/deployments/{id}/cancel"), Some(&key), None, &[]).await
                    }
                    Act::Rollback => {
                        s.call(Method::POST, &format!("/v1/deployments/{id}/rollback"), Some(&key), None, &[]).await
                    }
                    Act::Pause | Act::Resume | Act::Promote | Act::Abort | Act::Retry => {
                        let action = format!("{act:?}").to_lowercase();
                        s.call(Method::POST, &format!("/v1/deployments/{id}/{action}"), Some(&key), None, &[]).await
                    }
                    Act::Approve => {
                        let body = json!({"decision": "approve"});
                        s.call(Method::POST, &format!("/v1/deployments/{id}/approvals"), Some(&key), Some(body), &[])
                            .await
                    }
                    Act::PutEnvironment => {
                        let current = s.get(&format!("/v1/environments/{env}"), ADMIN).await;
                        let targets: Vec<_> = current.body["targets"]
                            .as_array()
                            .unwrap()
                            .iter()
                            .map(|t| json!({"id": t["id"], "executor": "sim", "labels": t["labels"], "config": t["config"]}))
                            .collect();
                        s.put(&format!("/v1/environments/{env}"), &key, json!({"targets": targets})).await
                    }
                };
                let expect = allowed(role, act) && inside;
                if expect {
                    // Allowed: anything but 401/403 (cancel, pause, ... of a finished deployment is 409 already-finished;
                    // a retry of one that succeeded is 409 not-now).
                    assert!(
                        a.status.is_success() || a.status == StatusCode::CONFLICT,
                        "{role} {act:?} in {env}: {} {:?}",
                        a.status,
                        a.body
                    );
                } else {
                    assert_eq!(a.status, StatusCode::FORBIDDEN, "{role} {act:?} in {env}: {:?}", a.body);
                    assert_eq!(a.body["type"], "/problems/forbidden");
                }
                checked += 1;
            }
        }
        // Listing without a filter shows only readable environments.
        let all = s.get("/v1/deployments", &key).await;
        assert!(all.body["items"].as_array().unwrap().iter().all(|d| d["environment"] == "prod"), "{role}");
        let envs = s.get("/v1/environments", &key).await;
        let names: Vec<&str> =
            envs.body["items"].as_array().unwrap().iter().map(|e| e["name"].as_str().unwrap()).collect();
        assert_eq!(names, vec!["prod"], "{role} lists only its environments");
    }
    assert_eq!(checked, 4 * 2 * ACTS.len());
}

#[tokio::test]
async fn server_wide_administration_needs_an_admin_over_every_environment() {
    let s = Server::start("rbac-admin").await;
    for (role, envs, allowed) in [
        ("viewer", vec!["*"], false),
        ("deployer", vec!["*"], false),
        ("admin", vec!["prod"], false),
        ("admin", vec!["*"], true),
    ] {
        let key = s.key(&format!("{role}-{}", envs.len() + usize::from(allowed)), role, &envs).await;
        let answers = [
            s.get("/v1/api-keys", &key).await,
            s.get("/v1/audit", &key).await,
            s.post("/v1/api-keys", &key, json!({"name": "made", "role": "viewer"})).await,
        ];
        for a in answers {
            if allowed {
                assert!(a.status.is_success(), "{role} {envs:?}: {:?}", a.body);
            } else {
                assert_eq!(a.status, StatusCode::FORBIDDEN, "{role} {envs:?}: {:?}", a.body);
            }
        }
    }
}

#[tokio::test]
async fn jwt_principals_are_authorized_like_keys() {
    use jsonwebtoken::{EncodingKey, Header, encode};
    let secret = "an HS256 secret that is long enough to be used";
    let mut settings = common::settings("rbac-jwt");
    settings.jwt_hs256_secret = Some(secret.into());
    settings.jwt_issuer = Some("https://auth.example".into());
    settings.jwt_audience = Some("deploy".into());
    let s = Server::with(settings).await;
    s.sim_env("prod", 1, "queue", json!({"apply_ms": 1})).await;
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let token = |claims: serde_json::Value| {
        encode(&Header::default(), &claims, &EncodingKey::from_secret(secret.as_bytes())).unwrap()
    };
    let base = json!({"sub": "svc-a", "role": "deployer", "environments": ["prod"], "exp": now + 300,
                      "iss": "https://auth.example", "aud": "deploy"});
    let good = token(base.clone());
    let a = s.post("/v1/deployments", &good, deploy("prod", "2.0")).await;
    assert_eq!(a.status, StatusCode::ACCEPTED, "{:?}", a.body);
    assert_eq!(a.body["created_by"], "jwt:svc-a");
    s.put("/v1/environments/prod", &good, json!({"targets": []})).await.problem(403, "forbidden");

    let mut expired = base.clone();
    expired["exp"] = json!(now - 3600);
    let mut early = base.clone();
    early["nbf"] = json!(now + 3600);
    let mut wrong_iss = base.clone();
    wrong_iss["iss"] = json!("https://evil.example");
    let mut wrong_aud = base.clone();
    wrong_aud["aud"] = json!("other");
    let mut no_exp = base.clone();
    no_exp.as_object_mut().unwrap().remove("exp");
    let other_secret =
        encode(&Header::default(), &base, &EncodingKey::from_secret(b"another secret, also long enough....")).unwrap();
    // alg "none": header {"alg":"none"} and no signature.
    let none = {
        use base64::Engine as _;
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        format!("{}.{}.", b64.encode(br#"{"alg":"none","typ":"JWT"}"#), b64.encode(base.to_string()))
    };
    for (what, t) in [
        ("expired", token(expired)),
        ("not yet valid", token(early)),
        ("wrong issuer", token(wrong_iss)),
        ("wrong audience", token(wrong_aud)),
        ("no exp", token(no_exp)),
        ("other secret", other_secret),
        ("alg none", none),
    ] {
        let a = s.get("/v1/environments", &t).await;
        assert_eq!(a.status, StatusCode::UNAUTHORIZED, "{what}");
        assert_eq!(a.header("www-authenticate"), Some("Bearer realm=\"deploy\", error=\"invalid_token\""), "{what}");
    }
}

#[tokio::test]
async fn eddsa_jwts_are_verified_with_the_configured_public_key() {
    use jsonwebtoken::{Algorithm, EncodingKey, Header, encode};
    let dir = env!("CARGO_MANIFEST_DIR");
    let mut settings = common::settings("rbac-eddsa");
    settings.jwt_eddsa_public_key = Some(format!("{dir}/tests/fixtures/jwt-ed25519-public.pem").into());
    let s = Server::with(settings).await;
    let private = std::fs::read(format!("{dir}/tests/fixtures/jwt-ed25519-private.pem")).unwrap();
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let claims = json!({"sub": "svc-b", "role": "viewer", "environments": ["*"], "exp": now + 300});
    let t = encode(&Header::new(Algorithm::EdDSA), &claims, &EncodingKey::from_ed_pem(&private).unwrap()).unwrap();
    assert_eq!(s.get("/v1/environments", &t).await.status, StatusCode::OK);
    s.post("/v1/deployments", &t, deploy("prod", "2.0")).await.problem(403, "forbidden");
    let hs = encode(&Header::default(), &claims, &EncodingKey::from_secret(b"guessing the algorithm does not help"))
        .unwrap();
    assert_eq!(
        s.get("/v1/environments", &hs).await.status,
        StatusCode::UNAUTHORIZED,
        "HS256 is refused when EdDSA is set"
    );
}

#[tokio::test]
async fn a_listing_skips_unreadable_environments_without_coming_back_short() {
    let s = Server::start("rbac-pages").await;
    s.sim_env("prod", 1, "queue", json!({"apply_ms": 1})).await;
    s.sim_env("staging", 1, "queue", json!({"apply_ms": 1})).await;
    let mut prod = Vec::new();
    for (i, env) in ["prod", "staging", "staging", "prod", "staging", "staging", "staging"].iter().enumerate() {
        let d = s.post("/v1/deployments", ADMIN, deploy(env, &format!("2.{i}"))).await;
        if *env == "prod" {
            prod.push(d.body["id"].as_str().unwrap().to_owned());
        }
    }
    prod.reverse(); // newest first
    let viewer = s.key("prod-viewer", "viewer", &["prod"]).await;
    let first = s.get("/v1/deployments?limit=1", &viewer).await;
    let ids: Vec<&str> = first.body["items"].as_array().unwrap().iter().map(|d| d["id"].as_str().unwrap()).collect();
    assert_eq!(
        ids,
        vec![prod[0].as_str()],
        "three newer staging deployments are skipped, not returned as an empty page"
    );
    let cursor = first.body["next_cursor"].as_str().unwrap().to_owned();
    let second = s.get(&format!("/v1/deployments?limit=1&cursor={cursor}"), &viewer).await;
    let ids: Vec<&str> = second.body["items"].as_array().unwrap().iter().map(|d| d["id"].as_str().unwrap()).collect();
    assert_eq!(ids, vec![prod[1].as_str()]);
    let rest = second.body["next_cursor"].as_str().map(str::to_owned);
    if let Some(c) = rest {
        let third = s.get(&format!("/v1/deployments?limit=1&cursor={c}"), &viewer).await;
        assert_eq!(third.body["items"], json!([]), "nothing readable is left");
        assert_eq!(third.body["next_cursor"], serde_json::Value::Null);
    }
}
