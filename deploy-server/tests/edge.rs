//! The edge of deployd under attack, through its public surface: anonymous floods, slow and numerous connections,
//! too many event streams, forged tokens, at-rest permissions, webhook URLs aimed inside the network, and TLS.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::receiver::{Mode, Receiver};
use common::{ADMIN, Server, settings};
use reqwest::{Method, StatusCode};
use serde_json::json;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

async fn audit_rows(s: &Server) -> usize {
    let a = s.get("/v1/audit?limit=500", ADMIN).await;
    assert_eq!(a.status, StatusCode::OK, "{:?}", a.body);
    a.body["items"].as_array().unwrap().len()
}

async fn metrics(s: &Server) -> String {
    s.http.get(s.url("/metrics")).send().await.unwrap().text().await.unwrap()
}

/// Finding: every non-GET request, even a 401 or a 404, wrote an audit row with the raw path (2,000 anonymous
/// requests with long paths grew the database by 120 MB).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_anonymous_requests_adds_no_audit_rows() {
    let s = Server::start("edge-flood").await;
    let before = audit_rows(&s).await;
    let long = "x".repeat(4000);
    for i in 0..300 {
        let path = if i % 2 == 0 { format!("/v1/deployments/{long}{i}/cancel") } else { format!("/v1/{long}/{i}") };
        let a = s.call(Method::POST, &path, None, Some(json!({})), &[]).await;
        assert!(a.status == StatusCode::UNAUTHORIZED || a.status == StatusCode::NOT_FOUND, "{}", a.status);
        let forged =
            s.call(Method::POST, "/v1/deployments", Some("dk_forgedforgedforgedforgedforgedforgedforge"), None, &[]);
        assert_eq!(forged.await.status, StatusCode::UNAUTHORIZED);
    }
    assert_eq!(audit_rows(&s).await, before, "nothing anonymous or unauthenticated is written");
    let m = metrics(&s).await;
    let counted: u64 = m
        .lines()
        .find(|l| l.starts_with("deploy_http_rejected_total{reason=\"unauthenticated\"}"))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
        .unwrap_or(0);
    assert!(counted >= 450, "counted instead: {counted}\n{m}");

    // An authenticated caller's mutation is audited with the route's template and bounded fields.
    let a = s.call(Method::POST, &format!("/v1/deployments/{long}/cancel"), Some(ADMIN), None, &[]).await;
    assert_eq!(a.status, StatusCode::BAD_REQUEST);
    let rows = s.get("/v1/audit?limit=1", ADMIN).await.body;
    let row = &rows["items"][0];
    assert!(row.to_string().len() < 1500, "bounded: {row}");
    assert!(!row.to_string().contains(&"x".repeat(300)), "{row}");
}

/// A client socket bound to `local` (another loopback address than the test's own).
async fn connect_from(local: &str, server: SocketAddr) -> tokio::net::TcpStream {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind(format!("{local}:0").parse().unwrap()).unwrap();
    socket.connect(server).await.unwrap()
}

/// Whether the server closed `stream` within `within` (a read returns end of file or a reset).
async fn closed_within(stream: &mut tokio::net::TcpStream, within: Duration) -> bool {
    let mut buf = [0u8; 1024];
    loop {
        match tokio::time::timeout(within, stream.read(&mut buf)).await {
            Ok(Ok(0) | Err(_)) => return true,
            Ok(Ok(_)) => {}
            Err(_) => return false,
        }
    }
}

/// Finding: no header-read timeout and no connection cap (slowloris held 20,000 connections and `/healthz` stopped
/// answering).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_and_numerous_connections_are_cut_while_healthz_still_answers() {
    let s = Server::with(deploy_server::Settings {
        header_read_timeout: deploy_core::HumanDuration::from_millis(700),
        max_connections_per_ip: 5,
        ..settings("edge-slowloris")
    })
    .await;
    let addr = s.running.as_ref().unwrap().addr;
    // Five connections from 127.0.0.2 that start a request and never finish its head.
    let mut slow = Vec::new();
    for _ in 0..5 {
        let mut c = connect_from("127.0.0.2", addr).await;
        c.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: ").await.unwrap();
        slow.push(c);
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    // A sixth from the same address is closed at once.
    let mut sixth = connect_from("127.0.0.2", addr).await;
    let _ = sixth.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n").await;
    assert!(closed_within(&mut sixth, Duration::from_millis(500)).await, "past the cap: closed");
    // Everyone else is still served.
    let health = s.http.get(s.url("/healthz")).send().await.unwrap();
    assert_eq!(health.status(), StatusCode::OK);
    // The slow ones are cut once their header deadline passes.
    for c in &mut slow {
        assert!(closed_within(c, Duration::from_secs(3)).await, "a head that never ends is closed");
    }
    let mut again = connect_from("127.0.0.2", addr).await;
    again.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").await.unwrap();
    let mut answer = String::new();
    again.read_to_string(&mut answer).await.unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "their places are free again: {answer}");
    assert!(metrics(&s).await.contains("deploy_http_rejected_total{reason=\"connection_limit\"} 1"));
}

/// Before authentication, one address gets so many requests a second; `/healthz` is exempt.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_address_is_rate_limited_before_authentication() {
    let s = Server::with(deploy_server::Settings {
        ip_rate_limit: 1.0,
        ip_rate_limit_burst: 5.0,
        ..settings("edge-ip-limit")
    })
    .await;
    let mut limited = None;
    for _ in 0..10 {
        let a = s.call(Method::GET, "/v1/environments", None, None, &[]).await;
        if a.status == StatusCode::TOO_MANY_REQUESTS {
            limited = Some(a);
            break;
        }
        assert_eq!(a.status, StatusCode::UNAUTHORIZED);
    }
    let limited = limited.expect("the sixth request within a second is refused");
    limited.problem(429, "rate-limited");
    assert!(limited.header("retry-after").is_some());
    assert_eq!(s.get("/v1/environments", ADMIN).await.status, StatusCode::TOO_MANY_REQUESTS, "keys share the address");
    assert_eq!(s.http.get(s.url("/healthz")).send().await.unwrap().status(), StatusCode::OK);
}

/// Finding: one key could open thousands of event streams, each polling the store.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn event_streams_past_the_cap_get_429() {
    let s = Server::with(deploy_server::Settings { max_streams_per_principal: 2, ..settings("edge-sse") }).await;
    s.sim_env("prod", 1, "queue", json!({"apply_ms": 60_000})).await;
    let a = s.post("/v1/deployments", ADMIN, json!({"environment": "prod", "service": "s", "version": "2.0"})).await;
    let id = a.body["id"].as_str().unwrap().to_owned();
    let viewer = s.key("watcher", "viewer", &["*"]).await;
    let open = || {
        s.http
            .get(s.url(&format!("/v1/deployments/{id}/events")))
            .bearer_auth(&viewer)
            .header("accept", "text/event-stream")
            .send()
    };
    let first = open().await.unwrap();
    let second = open().await.unwrap();
    assert_eq!((first.status(), second.status()), (StatusCode::OK, StatusCode::OK));
    let third = open().await.unwrap();
    assert_eq!(third.status(), StatusCode::TOO_MANY_REQUESTS);
    let body: serde_json::Value = third.json().await.unwrap();
    assert_eq!(body["type"], "/problems/rate-limited");
    assert!(body["detail"].as_str().unwrap().contains("event streams"), "{body}");
    // Another principal has places of its own; a closed stream gives its place back.
    let admin_stream = s
        .http
        .get(s.url(&format!("/v1/deployments/{id}/events")))
        .bearer_auth(ADMIN)
        .header("accept", "text/event-stream")
        .send()
        .await
        .unwrap();
    assert_eq!(admin_stream.status(), StatusCode::OK);
    drop(first);
    let mut reopened = StatusCode::TOO_MANY_REQUESTS;
    for _ in 0..50 {
        reopened = open().await.unwrap().status();
        if reopened == StatusCode::OK {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(reopened, StatusCode::OK);
    s.post(&format!("/v1/deployments/{id}/cancel"), ADMIN, json!({})).await;
}

fn jwt(claims: serde_json::Value, header: jsonwebtoken::Header) -> String {
    jsonwebtoken::encode(&header, &claims, &jsonwebtoken::EncodingKey::from_secret(JWT_SECRET.as_bytes())).unwrap()
}

const JWT_SECRET: &str = "a-test-secret-that-is-long-enough-for-hs256";

/// Findings: a JWT without `iss`/`aud` passed when they were configured; an unknown `crit` header passed; the scheme
/// `BEARER` was refused; challenges were not those of RFC 6750; two keys could share a name (and so an identity).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_are_checked_as_the_rfcs_say_and_key_names_are_identities() {
    let s = Server::with(deploy_server::Settings {
        jwt_hs256_secret: Some(JWT_SECRET.into()),
        jwt_issuer: Some("https://issuer.example".into()),
        jwt_audience: Some("deployd".into()),
        ..settings("edge-tokens")
    })
    .await;
    let exp = time::OffsetDateTime::now_utc().unix_timestamp() + 600;
    let full = json!({"sub": "ci", "role": "viewer", "environments": ["*"], "exp": exp,
                      "iss": "https://issuer.example", "aud": "deployd"});
    let header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256);
    assert_eq!(s.get("/v1/environments", &jwt(full.clone(), header.clone())).await.status, StatusCode::OK);
    for missing in ["iss", "aud"] {
        let mut claims = full.clone();
        claims.as_object_mut().unwrap().remove(missing);
        let a = s.get("/v1/environments", &jwt(claims, header.clone())).await;
        a.problem(401, "unauthenticated");
        assert!(a.header("www-authenticate").unwrap().contains("invalid_token"), "without {missing}");
    }
    let mut critical = header.clone();
    critical.crit = Some(vec!["exp".into()]);
    let with_crit = jwt(full.clone(), critical);
    s.get("/v1/environments", &with_crit).await.problem(401, "unauthenticated");

    // The scheme in any case; other schemes get a challenge without an error code; 403 says insufficient_scope.
    let token = jwt(full, header);
    for scheme in ["BEARER", "bearer", "BeArEr"] {
        let value = format!("{scheme} {token}");
        let a = s.call(Method::GET, "/v1/environments", None, None, &[("authorization", &value)]).await;
        assert_eq!(a.status, StatusCode::OK, "{scheme}");
    }
    let basic = s.call(Method::GET, "/v1/environments", None, None, &[("authorization", "Basic YTpi")]).await;
    basic.problem(401, "unauthenticated");
    assert_eq!(basic.header("www-authenticate"), Some("Bearer realm=\"deploy\""));
    let none = s.call(Method::GET, "/v1/environments", None, None, &[]).await;
    assert_eq!(none.header("www-authenticate"), Some("Bearer realm=\"deploy\""));
    let denied = s.post("/v1/deployments", &token, json!({"environment": "e", "service": "s", "version": "1"})).await;
    denied.problem(403, "forbidden");
    assert!(denied.header("www-authenticate").unwrap().contains("error=\"insufficient_scope\""));

    s.key("ci-bot", "deployer", &["*"]).await;
    let twice = s.post("/v1/api-keys", ADMIN, json!({"name": "ci-bot", "role": "admin", "environments": ["*"]})).await;
    twice.problem(400, "validation");
    assert!(twice.body.to_string().contains("ci-bot"));
}

/// Finding: the data directory and the SQLite files were readable by every user (webhook secrets in clear).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_data_directory_and_its_database_are_private_to_deployd() {
    use std::os::unix::fs::PermissionsExt as _;
    let mut s = Server::start("edge-perms").await;
    s.sim_env("prod", 1, "queue", json!({})).await;
    let hooks = json!({"targets": [{"id": "c-1", "executor": "command", "config": {"hooks": {"install": "echo hi"}}}]});
    assert!(s.put("/v1/environments/hooks", ADMIN, hooks).await.status.is_success());
    for env in ["prod", "hooks"] {
        let a = s.post("/v1/deployments", ADMIN, json!({"environment": env, "service": "s", "version": "2.0"})).await;
        assert_eq!(s.wait_terminal(a.body["id"].as_str().unwrap()).await["status"], "succeeded");
    }
    s.stop().await;
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&s.data_dir), 0o700, "the data directory");
    // Every file deployd wrote: the database, the executors' state and hook output.
    fn files(dir: &std::path::Path, out: &mut Vec<std::path::PathBuf>, dirs: &mut Vec<std::path::PathBuf>) {
        for entry in std::fs::read_dir(dir).unwrap().flatten() {
            let path = entry.path();
            if path.is_dir() {
                dirs.push(path.clone());
                files(&path, out, dirs);
            } else {
                out.push(path);
            }
        }
    }
    let (mut all, mut dirs) = (Vec::new(), Vec::new());
    files(&s.data_dir, &mut all, &mut dirs);
    // Finding: the sim executor's directory in a new data directory was 0755. Every directory is deployd's alone.
    assert!(dirs.iter().any(|d| d.ends_with("sim")), "{dirs:?}");
    for d in &dirs {
        assert_eq!(mode(d), 0o700, "{} is not private", d.display());
    }
    assert!(all.iter().any(|p| p.ends_with(deploy_sql::DATABASE_FILE)), "{all:?}");
    assert!(
        all.iter().any(|p| p.ends_with("install.log")) && all.iter().any(|p| p.to_string_lossy().contains("/sim/"))
    );
    for path in &all {
        assert_eq!(mode(path) & 0o077, 0, "{} is readable by others", path.display());
    }
}

/// Finding: webhook URLs could point at cloud metadata addresses.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhooks_to_metadata_addresses_are_refused_at_creation_and_at_connect_time() {
    let s = Server::with(deploy_server::Settings {
        webhook_deny_cidrs: "127.0.0.0/8".into(),
        webhook_allow_cidrs: "127.0.0.7".into(),
        webhook_retry_schedule: "50ms,50ms".into(),
        ..settings("edge-ssrf")
    })
    .await;
    for url in [
        "http://169.254.169.254/latest/meta-data/",
        "http://[fd00:ec2::254]/",
        "http://100.100.100.200/",
        "http://[::ffff:169.254.169.254]/",
        // IPv6 forms that carry 169.254.169.254 for a translator or tunnel (finding of the second review).
        "http://[::a9fe:a9fe]/",
        "http://[64:ff9b::a9fe:a9fe]/",
        "http://[2002:a9fe:a9fe::1]/",
        "http://[::ffff:0:a9fe:a9fe]/",
        "http://127.0.0.1:9/",
        "http://localhost:9/",
    ] {
        let a = s.post("/v1/webhooks", ADMIN, json!({"url": url, "events": ["*"]})).await;
        a.problem(400, "validation");
        assert!(a.body.to_string().contains("may not"), "{url}: {:?}", a.body);
    }

    // A subscription whose name resolved elsewhere when it was made: the delivery's connection is refused.
    let receiver = Receiver::answering(Mode::Status(204)).await;
    let store = deploy_sql::SqlStore::sqlite(&s.data_dir).await.unwrap();
    let mut sub = deploy_testkit::fixtures::subscription(&format!("http://localhost:{}/", receiver.addr.port()));
    sub.events = vec!["*".into()];
    deploy_core::WebhookStore::create_webhook(&store, sub.clone()).await.unwrap();
    s.sim_env("prod", 1, "queue", json!({})).await;
    let a = s.post("/v1/deployments", ADMIN, json!({"environment": "prod", "service": "s", "version": "2.0"})).await;
    s.wait_terminal(a.body["id"].as_str().unwrap()).await;
    let mut settled = false;
    for _ in 0..100 {
        let d = s.get(&format!("/v1/webhooks/{}/deliveries", sub.id), ADMIN).await.body;
        let items = d["items"].as_array().unwrap().clone();
        if !items.is_empty() && items.iter().all(|i| i["status"] == "failed") {
            settled = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(settled, "every delivery failed");
    assert!(receiver.log().is_empty(), "nothing reached the refused address");
    // An explicitly allowed address is reached.
    let allowed = s.post("/v1/webhooks", ADMIN, json!({"url": "http://127.0.0.7:9/", "events": ["*"]})).await;
    assert_eq!(allowed.status, StatusCode::CREATED, "{:?}", allowed.body);
}

/// A throwaway CA and what it signs, as PEM.
struct Ca {
    issuer: rcgen::CertifiedIssuer<'static, rcgen::KeyPair>,
}

impl Ca {
    fn new(name: &str) -> Self {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params.distinguished_name.push(rcgen::DnType::CommonName, name);
        Self { issuer: rcgen::CertifiedIssuer::self_signed(params, rcgen::KeyPair::generate().unwrap()).unwrap() }
    }

    fn pem(&self) -> String {
        self.issuer.pem()
    }

    /// A certificate for `names` and its key, in one PEM each.
    fn sign(&self, names: &[&str]) -> (String, String) {
        let key = rcgen::KeyPair::generate().unwrap();
        let params = rcgen::CertificateParams::new(names.iter().map(|n| (*n).to_owned()).collect::<Vec<_>>()).unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        (cert.pem(), key.serialize_pem())
    }
}

/// Finding: there was no TLS anywhere, and clients sent bearer keys over plain HTTP to any host.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_end_to_end_with_reloaded_certificates_and_client_certificates() {
    let dir = common::temp_dir("edge-tls-files");
    let (ca, clients) = (Ca::new("deploy test CA"), Ca::new("deploy agents CA"));
    let (cert, key) = ca.sign(&["localhost", "127.0.0.1"]);
    let (cert_file, key_file, clients_file) = (dir.join("cert.pem"), dir.join("key.pem"), dir.join("clients.pem"));
    std::fs::write(&cert_file, &cert).unwrap();
    std::fs::write(&key_file, &key).unwrap();
    std::fs::write(&clients_file, clients.pem()).unwrap();
    let s = Server::with(deploy_server::Settings {
        tls_cert: Some(cert_file.clone()),
        tls_key: Some(key_file.clone()),
        tls_client_ca: Some(clients_file),
        ..settings("edge-tls")
    })
    .await;
    let running = s.running.as_ref().unwrap();
    assert!(running.tls);
    let https = format!("https://localhost:{}", running.addr.port());
    let client = |roots: &str| {
        deploy_client::Client::builder(&https)
            .token(ADMIN)
            .retry(deploy_client::RetryPolicy::none())
            .root_certificates_pem(roots.as_bytes())
            .build()
            .unwrap()
    };
    assert!(
        client(&ca.pem()).list_environments(&deploy_core::PageRequest { limit: 10, cursor: None }).await.is_ok(),
        "HTTPS with the CA"
    );
    let stranger =
        deploy_client::Client::builder(&https).token(ADMIN).retry(deploy_client::RetryPolicy::none()).build().unwrap();
    assert!(
        stranger.list_environments(&deploy_core::PageRequest { limit: 10, cursor: None }).await.is_err(),
        "a certificate the client does not trust"
    );
    let plain = reqwest::get(format!("http://localhost:{}/healthz", running.addr.port())).await;
    assert!(plain.is_err() || !plain.unwrap().status().is_success(), "no plain HTTP on a TLS port");

    // A client certificate from the agents' CA is accepted; one from elsewhere fails the handshake.
    let (agent_cert, agent_key) = clients.sign(&["agent-web-1"]);
    let with_identity = deploy_client::Client::builder(&https)
        .token(ADMIN)
        .root_certificates_pem(ca.pem().as_bytes())
        .identity_pem(format!("{agent_cert}{agent_key}").into_bytes())
        .build()
        .unwrap();
    assert!(with_identity.list_environments(&deploy_core::PageRequest { limit: 10, cursor: None }).await.is_ok());
    let (forged_cert, forged_key) = Ca::new("someone else").sign(&["agent-web-1"]);
    let forged = deploy_client::Client::builder(&https)
        .token(ADMIN)
        .retry(deploy_client::RetryPolicy::none())
        .root_certificates_pem(ca.pem().as_bytes())
        .identity_pem(format!("{forged_cert}{forged_key}").into_bytes())
        .build()
        .unwrap();
    assert!(
        forged.list_environments(&deploy_core::PageRequest { limit: 10, cursor: None }).await.is_err(),
        "a client certificate from another CA"
    );

    // Renewal: new files from another CA are picked up without a restart.
    let renewed_ca = Ca::new("renewed CA");
    let (cert, key) = renewed_ca.sign(&["localhost"]);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    std::fs::write(&key_file, key).unwrap();
    std::fs::write(&cert_file, cert).unwrap();
    let mut reloaded = false;
    for _ in 0..40 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        if client(&renewed_ca.pem())
            .list_environments(&deploy_core::PageRequest { limit: 10, cursor: None })
            .await
            .is_ok()
        {
            reloaded = true;
            break;
        }
    }
    assert!(reloaded, "the renewed certificate is served");
}

/// Finding: webhook signing secrets were stored in clear. With a key file they are sealed: deliveries still verify,
/// and the database holds no secret.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhook_secrets_are_sealed_at_rest_when_a_key_is_configured() {
    let keys = common::temp_dir("edge-sealed-key");
    let key_file = keys.join("webhooks.key");
    std::fs::write(&key_file, "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f\n").unwrap();
    let mut s =
        Server::with(deploy_server::Settings { webhook_secrets_key_file: Some(key_file), ..settings("edge-sealed") })
            .await;
    let receiver = Receiver::answering(Mode::Status(204)).await;
    let created = s.post("/v1/webhooks", ADMIN, json!({"url": receiver.url(), "events": ["*"]})).await;
    assert_eq!(created.status, StatusCode::CREATED, "{:?}", created.body);
    let secret = created.body["secret"].as_str().unwrap().to_owned();
    receiver.set_secret(&secret);
    s.sim_env("prod", 1, "queue", json!({})).await;
    let a = s.post("/v1/deployments", ADMIN, json!({"environment": "prod", "service": "s", "version": "2.0"})).await;
    s.wait_terminal(a.body["id"].as_str().unwrap()).await;
    for _ in 0..100 {
        if receiver.log().len() >= 3 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let log = receiver.log();
    assert!(log.len() >= 3 && log.iter().all(|r| r.event.is_some()), "signed with the secret shown once: {log:?}");
    s.stop().await;
    let encoded = secret.trim_start_matches("whsec_");
    let mut found = false;
    for entry in std::fs::read_dir(&s.data_dir).unwrap().flatten() {
        let bytes = std::fs::read(entry.path()).unwrap_or_default();
        found |= bytes.windows(encoded.len()).any(|w| w == encoded.as_bytes());
    }
    assert!(!found, "the database holds the signing secret");
}

/// Behind a trusted reverse proxy every client shares the proxy's address: `X-Forwarded-For` from the proxies named in
/// `trusted_proxies` tells clients apart; from anyone else it is ignored (a client cannot pick its own bucket).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_behind_a_trusted_proxy_are_limited_one_by_one() {
    let limited = |trusted: &str| deploy_server::Settings {
        ip_rate_limit: 0.5,
        ip_rate_limit_burst: 2.0,
        trusted_proxies: trusted.to_owned(),
        ..settings("edge-proxy")
    };
    let via = |s: &Server, client: &'static str| {
        let url = s.url("/v1/environments");
        let http = s.http.clone();
        async move { http.get(url).bearer_auth(ADMIN).header("x-forwarded-for", client).send().await.unwrap().status() }
    };
    let s = Server::with(limited("127.0.0.1/32")).await;
    assert_eq!(via(&s, "203.0.113.5").await, StatusCode::OK);
    assert_eq!(via(&s, "203.0.113.5").await, StatusCode::OK);
    assert_eq!(via(&s, "203.0.113.5").await, StatusCode::TOO_MANY_REQUESTS, "that client's burst is spent");
    assert_eq!(via(&s, "203.0.113.6").await, StatusCode::OK, "another client behind the same proxy is not");

    // Without trust the header means nothing: every request counts against the peer's address.
    let s = Server::with(limited("")).await;
    assert_eq!(via(&s, "203.0.113.5").await, StatusCode::OK);
    assert_eq!(via(&s, "203.0.113.6").await, StatusCode::OK);
    assert_eq!(via(&s, "203.0.113.7").await, StatusCode::TOO_MANY_REQUESTS, "spoofed headers share one bucket");
}

/// `--executor-state-dir` (an operator's setting, read at start only): the executors keep their state and hook output
/// there, in a directory as private as the data directory, and nothing of a hook lands in the data directory.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_executor_state_directory_elsewhere_is_private_too() {
    use std::os::unix::fs::PermissionsExt as _;
    let state = common::temp_dir("edge-state");
    let elsewhere = state.join("executors");
    let mut s = Server::with(deploy_server::Settings {
        executor_state_dir: Some(elsewhere.clone()),
        ..settings("edge-state-data")
    })
    .await;
    let hooks = json!({"targets": [{"id": "c-1", "executor": "command", "config": {"hooks": {"install": "echo hi"}}}]});
    assert!(s.put("/v1/environments/hooks", ADMIN, hooks).await.status.is_success());
    let a = s.post("/v1/deployments", ADMIN, json!({"environment": "hooks", "service": "s", "version": "2.0"})).await;
    assert_eq!(s.wait_terminal(a.body["id"].as_str().unwrap()).await["status"], "succeeded");
    s.stop().await;
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&elsewhere), 0o700, "the executors' directory");
    let log = elsewhere.join("command/hooks/c-1/install.log");
    assert!(log.exists(), "the hook's output is kept in the executors' directory");
    assert_eq!(mode(&log) & 0o077, 0, "readable by deployd's user only");
    assert!(!s.data_dir.join("command").exists(), "nothing of the executors in the data directory");
}

/// Findings of the second review on authenticated callers' resources: one agent key held 150 long-polls; an agent's
/// report `error` had no size limit (a 900 KB error went into the record); a scoped admin made environments of 27,000
/// targets. Long-polls are capped per principal, a report's error is kept to its last 4 KiB, and a server caps the
/// targets of an environment (`--max-targets-per-environment`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn authenticated_callers_cannot_take_unbounded_polls_records_or_targets() {
    let s = Server::with(deploy_server::Settings { max_targets_per_environment: 50, ..settings("edge-quotas") }).await;
    let target = |i: usize| json!({"id": format!("a-{i}"), "executor": "agent"});
    let too_many: Vec<serde_json::Value> = (0..51).map(target).collect();
    let refused = s.put("/v1/environments/fleet", ADMIN, json!({"targets": too_many})).await;
    refused.problem(400, "validation");
    assert!(refused.body.to_string().contains("at most 50 targets"), "{:?}", refused.body);
    let fine: Vec<serde_json::Value> = (0..50).map(target).collect();
    assert_eq!(s.put("/v1/environments/fleet", ADMIN, json!({"targets": fine})).await.status, StatusCode::CREATED);

    let body = json!({"name": "agent-a-1", "role": "agent", "environments": ["fleet"], "target": "a-1"});
    let agent = s.post("/v1/api-keys", ADMIN, body).await.body["key"].as_str().unwrap().to_owned();
    let path = "/v1/agents/fleet/a-1/assignment";
    let first = s.get(path, &agent).await;
    assert_eq!(first.status, StatusCode::OK, "{:?}", first.body);
    let etag = first.header("etag").unwrap().to_owned();
    let polls: Vec<_> = (0..deploy_server::MAX_POLLS_PER_PRINCIPAL + 2)
        .map(|_| {
            let (http, url, agent, etag) =
                (s.http.clone(), s.url(&format!("{path}?wait=3s")), agent.clone(), etag.clone());
            tokio::spawn(async move {
                http.get(url).bearer_auth(agent).header("if-none-match", etag).send().await.unwrap().status()
            })
        })
        .collect();
    let mut statuses = Vec::new();
    for p in polls {
        statuses.push(p.await.unwrap().as_u16());
    }
    let limited = statuses.iter().filter(|&&c| c == 429).count();
    assert_eq!(limited, 2, "past the cap, polls are refused at once: {statuses:?}");
    assert_eq!(statuses.iter().filter(|&&c| c == 304).count(), deploy_server::MAX_POLLS_PER_PRINCIPAL);

    // One deployer stored 40 deployments of 950 KB in a second: a deployment is at most 64 KiB here.
    let mut big = json!({"environment": "fleet", "service": "s", "version": "1.0"});
    big["config"] =
        (0..200).map(|i| (format!("K{i}"), json!("v".repeat(400)))).collect::<serde_json::Map<_, _>>().into();
    let refused = s.post("/v1/deployments", ADMIN, big).await;
    refused.problem(400, "validation");
    assert!(refused.body.to_string().contains("at most 65536 bytes"), "{:?}", refused.body);

    let error = format!("{}the end", "e".repeat(900 * 1024));
    let report = json!({"generation": 0, "version": null, "health": "unknown", "error": error});
    let a = s.put("/v1/agents/fleet/a-1/report", &agent, report).await;
    assert_eq!(a.status, StatusCode::OK, "{:?}", a.body);
    let kept = a.body["report"]["error"].as_str().or_else(|| a.body["last_report"]["error"].as_str());
    let kept = kept.map_or_else(|| a.body.to_string(), str::to_owned);
    assert!(kept.len() < 8 * 1024 && kept.contains("the end"), "its end is kept, bounded: {} bytes", kept.len());
}

/// Finding: one deployer stored 40 deployments in a second and could keep as many queued as it liked. A submitter
/// (one principal) may have `--quota-open-deployments` unfinished at once and store `--quota-bytes` per
/// `--quota-window`; past either, 429 `quota-exceeded` with `Retry-After`, naming the limit. A replay is not refused,
/// another deployer is not affected, a finished deployment frees its place, and nothing of a refusal is stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_submitter_cannot_fill_the_queue_or_the_store() {
    let s = Server::with(deploy_server::Settings {
        quota_open_deployments: 3,
        quota_bytes: 48 * 1024,
        ..settings("edge-submitter-quotas")
    })
    .await;
    let targets: Vec<serde_json::Value> =
        (0..2).map(|i| json!({"id": format!("a-{i}"), "executor": "agent"})).collect();
    assert_eq!(s.put("/v1/environments/q", ADMIN, json!({"targets": targets})).await.status, StatusCode::CREATED);
    let deployer = |name: &'static str| s.key(name, "deployer", &["q"]);
    let (alice, bob, carol) = (deployer("alice").await, deployer("bob").await, deployer("carol").await);
    let submit = |token: &str, version: &str, config: serde_json::Value, idem: Option<&'static str>| {
        let body = json!({"environment": "q", "service": "s", "version": version, "config": config});
        let (s, token) = (&s, token.to_owned());
        async move {
            let headers: Vec<(&str, &str)> = idem.map(|k| ("idempotency-key", k)).into_iter().collect();
            s.call(Method::POST, "/v1/deployments", Some(&token), Some(body), &headers).await
        }
    };
    let mut ids = Vec::new();
    for (i, idem) in [Some("first"), None, None].into_iter().enumerate() {
        let a = submit(&alice, &format!("1.{i}"), json!({}), idem).await;
        assert_eq!(a.status, StatusCode::ACCEPTED, "{:?}", a.body);
        ids.push(a.body["id"].as_str().unwrap().to_owned());
    }
    let refused = submit(&alice, "1.3", json!({}), None).await;
    refused.problem(429, "quota-exceeded");
    assert!(refused.body["detail"].as_str().unwrap().contains("at most 3 at once"), "{:?}", refused.body);
    assert_eq!(refused.header("retry-after"), Some("10"));
    let listed = s.get("/v1/deployments?environment=q", ADMIN).await.body;
    assert_eq!(listed["items"].as_array().unwrap().len(), 3, "nothing of the refusal is stored: {listed}");
    // The typed client does not retry a quota (it lasts until deployments finish): one attempt, one audit row.
    let before = quota_refusals(&s, "key:alice").await;
    let client = deploy_client::Client::builder(s.url("")).token(&alice).build().unwrap();
    let request = deploy_core::DeploymentRequest {
        environment: "q".into(),
        service: "s".into(),
        version: "1.9".into(),
        ..Default::default()
    };
    let e = client.submit(&request, deploy_client::SubmitOptions::default()).await.unwrap_err();
    assert_eq!(e.problem().and_then(|p| p.kind()), Some(deploy_core::ProblemKind::QuotaExceeded), "{e}");
    assert_eq!(quota_refusals(&s, "key:alice").await, before + 1, "tried once");
    let replay = submit(&alice, "1.0", json!({}), Some("first")).await;
    assert_eq!(replay.status, StatusCode::ACCEPTED, "a replay stores nothing and is answered: {:?}", replay.body);
    assert_eq!(replay.header("idempotent-replayed"), Some("true"));
    assert_eq!(submit(&bob, "2.0", json!({}), None).await.status, StatusCode::ACCEPTED, "bob has his own quota");
    let cancelled = s.post(&format!("/v1/deployments/{}/cancel", ids[2]), ADMIN, json!({})).await;
    assert_eq!(cancelled.status, StatusCode::ACCEPTED, "{:?}", cancelled.body);
    assert_eq!(
        submit(&alice, "1.4", json!({}), None).await.status,
        StatusCode::ACCEPTED,
        "a finished one frees a place"
    );

    // Bytes: carol's deployments of about 12 KB each, cancelled at once so only the byte quota binds.
    let config: serde_json::Map<_, _> = (0..30).map(|i| (format!("K{i}"), json!("v".repeat(380)))).collect();
    let mut accepted = 0;
    let over = loop {
        let a = submit(&carol, &format!("3.{accepted}"), config.clone().into(), None).await;
        if a.status != StatusCode::ACCEPTED {
            break a;
        }
        accepted += 1;
        let id = a.body["id"].as_str().unwrap().to_owned();
        assert_eq!(
            s.post(&format!("/v1/deployments/{id}/cancel"), ADMIN, json!({})).await.status,
            StatusCode::ACCEPTED
        );
        assert!(accepted < 10, "the byte quota never refused");
    };
    over.problem(429, "quota-exceeded");
    assert!(over.body["detail"].as_str().unwrap().contains("at most 49152 bytes"), "{:?}", over.body);
    assert_eq!(over.header("retry-after"), Some("60"));
    assert!((3..=4).contains(&accepted), "about 48 KiB of 12 KB deployments: {accepted}");
}

/// Finding: eight concurrent reads of 27,000-target environments took 300 MB, and a page of 50 large deployments was
/// 39 MB. A response carries at most `--targets-per-response` targets, with `targets_total` and `targets_next_cursor`;
/// `.../targets` pages on (readers of the environment only); the typed client completes the lists itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_target_lists_are_paged_and_the_client_puts_them_together() {
    let s = Server::with(deploy_server::Settings { targets_per_response: 3, ..settings("edge-target-pages") }).await;
    let mut targets: Vec<serde_json::Value> =
        (0..8).map(|i| json!({"id": format!("a-{i}"), "executor": "agent", "labels": {"n": format!("{i}")}})).collect();
    targets[7]["config"] = json!({"env": {"REGION": "eu-west-3"}});
    let put = s.put("/v1/environments/big", ADMIN, json!({"targets": targets})).await;
    assert_eq!(put.status, StatusCode::CREATED, "{:?}", put.body);
    assert_eq!(put.body["targets"].as_array().unwrap().len(), 3, "the answer to a PUT is bounded too");
    let env = s.get("/v1/environments/big", ADMIN).await.body;
    assert_eq!(env["targets"].as_array().unwrap().len(), 3);
    assert_eq!((env["targets_total"].clone(), env["targets_next_cursor"].clone()), (json!(8), json!("a-2")));
    let mut ids: Vec<String> = Vec::new();
    let mut cursor = Some("a-2".to_owned());
    while let Some(after) = cursor {
        let page = s.get(&format!("/v1/environments/big/targets?limit=2&cursor={after}"), ADMIN).await;
        assert_eq!(page.status, StatusCode::OK, "{:?}", page.body);
        ids.extend(page.body["items"].as_array().unwrap().iter().map(|t| t["id"].as_str().unwrap().to_owned()));
        cursor = page.body["next_cursor"].as_str().map(str::to_owned);
    }
    assert_eq!(ids, ["a-3", "a-4", "a-5", "a-6", "a-7"]);
    s.get("/v1/environments/big/targets?cursor=nobody", ADMIN).await.problem(400, "validation");

    let submitted =
        s.post("/v1/deployments", ADMIN, json!({"environment": "big", "service": "s", "version": "2"})).await;
    assert_eq!(submitted.status, StatusCode::ACCEPTED, "{:?}", submitted.body);
    assert_eq!(submitted.body["targets"].as_array().unwrap().len(), 3);
    assert_eq!(submitted.body["summary"]["total"], 8, "the summary counts every target");
    let id = submitted.body["id"].as_str().unwrap().to_owned();
    let listed = s.get("/v1/deployments?environment=big", ADMIN).await.body;
    assert_eq!(listed["items"][0]["targets"].as_array().unwrap().len(), 3, "listed deployments are bounded");
    assert_eq!(listed["items"][0]["targets_next_cursor"], "a-2");
    let rest = s.get(&format!("/v1/deployments/{id}/targets?cursor=a-2&limit=500"), ADMIN).await.body;
    assert_eq!(rest["items"].as_array().unwrap().len(), 5);
    assert_eq!(rest["next_cursor"], serde_json::Value::Null);

    // Who may read them: a viewer of another environment may not page this one's targets.
    let outsider = s.key("elsewhere", "viewer", &["other"]).await;
    s.get("/v1/environments/big/targets", &outsider).await.problem(403, "forbidden");
    s.get(&format!("/v1/deployments/{id}/targets"), &outsider).await.problem(403, "forbidden");
    // Which secret a page could print: a target's `env` values reach a viewer as `***`, on every page.
    let viewer = s.key("reader", "viewer", &["big"]).await;
    let page = s.get("/v1/environments/big/targets?cursor=a-6", &viewer).await;
    assert_eq!(page.body["items"][0]["id"], "a-7");
    assert_eq!(page.body["items"][0]["config"]["env"]["REGION"], "***", "{:?}", page.body);
    let page = s.get("/v1/environments/big/targets?cursor=a-6", ADMIN).await;
    assert_eq!(page.body["items"][0]["config"]["env"]["REGION"], "eu-west-3", "an admin of it sees the value");

    let client = deploy_client::Client::builder(s.url("")).token(ADMIN).build().unwrap();
    let name = deploy_core::EnvironmentName::new("big").unwrap();
    let whole = client.get_environment(&name).await.unwrap();
    let ids: Vec<&str> = whole.targets.iter().map(|t| t.id.as_str()).collect();
    assert_eq!(ids, ["a-0", "a-1", "a-2", "a-3", "a-4", "a-5", "a-6", "a-7"], "in order, each once");
    let deployment = client.get_deployment(id.parse().unwrap()).await.unwrap();
    assert_eq!((deployment.targets().len(), deployment.summary().total), (8, 8));
    let page = client
        .list_deployments(
            &deploy_core::DeploymentFilter::default(),
            &deploy_core::PageRequest { limit: 5, cursor: None },
        )
        .await
        .unwrap();
    assert_eq!(page.items[0].targets().len(), 8);
}

async fn quota_refusals(s: &Server, actor: &str) -> usize {
    let rows = s.get(&format!("/v1/audit?limit=500&actor={actor}"), ADMIN).await.body;
    rows["items"].as_array().unwrap().iter().filter(|r| r["outcome"] == "quota-exceeded").count()
}
