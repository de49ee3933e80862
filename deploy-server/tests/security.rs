//! The attacks of the security review, tried through the HTTP API as an attacker would. Each test names the finding it
//! guards; `SECURITY.md` lists them.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::receiver::{Mode, Receiver};
use common::{ADMIN, Server, settings, temp_dir};
use reqwest::StatusCode;
use serde_json::{Value, json};

/// The secret value a hook is handed, and that must never be recorded anywhere.
const SECRET: &str = "s3cr3t/Value+7f2b=91c4";

fn request(env: &str, version: &str) -> Value {
    json!({"environment": env, "service": "app", "version": version, "strategy": {"type": "all_at_once"},
           "verify": {"timeout": "5s", "interval": "50ms", "healthy_for": "0s"},
           "failure": {"on_failure": "fail"}})
}

async fn deploy_as(s: &Server, token: &str, body: Value) -> Value {
    let a = s.post("/v1/deployments", token, body).await;
    assert_eq!(a.status, StatusCode::ACCEPTED, "{:?}", a.body);
    s.wait_terminal(a.body["id"].as_str().unwrap()).await
}

fn command_target(id: &str, hooks: Value) -> Value {
    json!({"id": id, "executor": "command", "config": {"timeout": "10s", "hooks": hooks}})
}

/// Finding: a deployer's `config` became variables of the hook under names the deployer chose (a loader or shell
/// variable ran the deployer's code as deployd's user), and hooks inherited deployd's whole environment.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deployers_config_cannot_set_any_variable_a_hook_sees_and_hooks_see_nothing_of_deployd() {
    let s = Server::start("sec-env").await;
    let out = temp_dir("sec-env-out");
    let dump = out.join("env.txt");
    let pwned = out.join("pwned");
    let hooks = json!({"install": format!("env > {}", dump.display())});
    let put = s.put("/v1/environments/staging-a", ADMIN, json!({"targets": [command_target("h-1", hooks)]})).await;
    assert_eq!(put.status, StatusCode::CREATED, "{:?}", put.body);
    let deployer = s.key("staging-deployer", "deployer", &["staging-*"]).await;

    // Everything a loader or a shell reads at start, and PATH, as the deployer would try them.
    let evil_script = out.join("evil.sh");
    std::fs::write(&evil_script, format!("touch {}\n", pwned.display())).unwrap();
    let mut attack = request("staging-a", "1.0");
    attack["config"] = json!({
        "LD_PRELOAD": "/tmp/evil.so", "LD_LIBRARY_PATH": "/tmp", "BASH_ENV": evil_script.display().to_string(),
        "ENV": evil_script.display().to_string(), "PATH": out.display().to_string(), "IFS": "x",
        "SHELLOPTS": "xtrace", "PS4": format!("$(touch {})", pwned.display()), "HOME": "/tmp",
        "PYTHONPATH": "/tmp", "NODE_OPTIONS": "--require /tmp/x.js", "GREETING": "hello"
    });
    let done = deploy_as(&s, &deployer, attack).await;
    assert_eq!(done["status"], "succeeded", "{done}");

    let text = std::fs::read_to_string(&dump).unwrap();
    let seen: BTreeMap<&str, &str> = text.lines().filter_map(|l| l.split_once('=')).collect();
    for name in ["LD_PRELOAD", "LD_LIBRARY_PATH", "BASH_ENV", "ENV", "IFS", "SHELLOPTS", "PS4", "HOME", "PYTHONPATH"] {
        assert!(!seen.contains_key(name), "{name} reached the hook: {text}");
    }
    assert_eq!(seen.get("PATH"), Some(&deploy_executors::DEFAULT_PATH), "PATH is deployd's default, not the caller's");
    assert_eq!(seen.get("DEPLOY_CONFIG_GREETING"), Some(&"hello"), "config arrives under the reserved prefix");
    assert_eq!(seen.get("DEPLOY_CONFIG_LD_PRELOAD"), Some(&"/tmp/evil.so"));
    assert!(!pwned.exists(), "no variable of the caller ran code");
    // Nothing of deployd's own process: the test process is deployd here.
    for (name, value) in std::env::vars() {
        if name == "PATH" || name == "PWD" || name == "SHLVL" || name == "_" {
            continue;
        }
        assert!(seen.get(name.as_str()) != Some(&value.as_str()), "deployd's {name} reached the hook");
    }
    let allowed = |k: &str| k.starts_with("DEPLOY_") || ["PATH", "PWD", "SHLVL", "_"].contains(&k);
    assert!(seen.keys().all(|k| allowed(k)), "only the documented variables: {text}");
}

/// Finding: an environment-scoped admin could define `command` targets and so run programs as deployd's user (and
/// read the bootstrap key through them): a global admin's power.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scoped_admin_cannot_define_targets_that_run_programs_on_the_host() {
    let s = Server::start("sec-scoped").await;
    let prod_admin = s.key("prod-admin", "admin", &["prod"]).await;
    let hooks = json!({"install": "true"});

    let refused =
        s.put("/v1/environments/prod", &prod_admin, json!({"targets": [command_target("c-1", hooks.clone())]})).await;
    refused.problem(403, "forbidden");
    let detail = refused.body["detail"].as_str().unwrap();
    assert!(detail.contains("runs programs on the host") && detail.contains("[\"*\"]"), "{detail}");
    let process = json!({"targets": [{"id": "p-1", "executor": "process", "config": {"command": ["sh"], "port": 1}}]});
    s.put("/v1/environments/prod", &prod_admin, process).await.problem(403, "forbidden");
    assert_eq!(s.get("/v1/environments/prod", ADMIN).await.status, StatusCode::NOT_FOUND, "nothing was written");

    // Simulated targets carry no host power: a scoped admin manages them.
    let sim = json!({"targets": [{"id": "s-1", "executor": "sim", "config": {"initial_version": "1.0"}}]});
    assert_eq!(s.put("/v1/environments/prod", &prod_admin, sim).await.status, StatusCode::CREATED);

    // A global admin defines the hook; the scoped admin may keep it as it is and change the rest, but not the hook.
    let with_hook = json!({"targets": [command_target("c-1", hooks.clone())]});
    assert_eq!(s.put("/v1/environments/prod", ADMIN, with_hook).await.status, StatusCode::OK);
    let kept = json!({"concurrency": "reject", "targets": [command_target("c-1", hooks)]});
    assert_eq!(s.put("/v1/environments/prod", &prod_admin, kept).await.status, StatusCode::OK);
    let changed = json!({"targets": [command_target("c-1", json!({"install": "cat /etc/shadow"}))]});
    s.put("/v1/environments/prod", &prod_admin, changed).await.problem(403, "forbidden");
    let renamed = json!({"targets": [command_target("c-2", json!({"install": "true"}))]});
    s.put("/v1/environments/prod", &prod_admin, renamed).await.problem(403, "forbidden");
    let env = s.get("/v1/environments/prod", ADMIN).await.body;
    assert_eq!(env["targets"][0]["config"]["hooks"]["install"], "true", "the hook is the global admin's");
}

/// Finding: a hook that printed a resolved secret (`set -x` is enough) put the value into events, target errors,
/// webhook payloads and the database, readable by viewers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hook_that_prints_its_secret_leaves_no_trace_of_the_value() {
    let secrets_dir = temp_dir("sec-scrub-secrets");
    std::fs::write(secrets_dir.join("db-password"), format!("{SECRET}\n")).unwrap();
    let s = Server::with(deploy_server::Settings {
        secrets_dir: Some(secrets_dir.to_path_buf()),
        webhook_retry_schedule: "100ms".into(),
        ..settings("sec-scrub")
    })
    .await;
    let receiver = Receiver::answering(Mode::Status(204)).await;
    let hook = json!({"url": receiver.url(), "events": ["*"], "environments": ["*"]});
    let sub = s.post("/v1/webhooks", ADMIN, hook).await;
    assert_eq!(sub.status, StatusCode::CREATED, "{:?}", sub.body);
    receiver.set_secret(sub.body["secret"].as_str().unwrap());
    let sub = sub.body["id"].as_str().unwrap().to_owned();

    // Every common way of printing it: as is, traced by the shell, in base64, URL-encoded, JSON-escaped.
    let leak = "set -x; echo \"pw=$DEPLOY_SECRET_DB_PASSWORD\"; printf %s \"$DEPLOY_SECRET_DB_PASSWORD\" | base64; \
                echo \"url=https://h/?p=$(printf %s \"$DEPLOY_SECRET_DB_PASSWORD\" | sed 's|/|%2F|g; s|+|%2B|g; s|=|%3D|g')\"";
    let hooks = json!({"start": format!("{leak}; echo started"), "install": format!("{leak}; exit 3")});
    let env = json!({"targets": [command_target("leaky-1", hooks)], "secret_scope": {"allow": ["file://db-password"]}});
    assert_eq!(s.put("/v1/environments/leaky", ADMIN, env).await.status, StatusCode::CREATED);
    let secret_ref = json!({"DB_PASSWORD": {"ref": "file://db-password"}});
    let mut failing = request("leaky", "1.0");
    failing["secrets"] = secret_ref.clone();
    let failed = deploy_as(&s, ADMIN, failing).await;
    assert_eq!(failed["status"], "failed", "{failed}");
    let error = failed["targets"][0]["error"].as_str().unwrap();
    assert!(
        error.contains("hook install on leaky-1 failed") && error.contains("pw=***"),
        "the output is kept: {error}"
    );

    let viewer = s.key("viewer", "viewer", &["*"]).await;
    let events = s.get(&format!("/v1/deployments/{}/events?limit=500", failed["id"].as_str().unwrap()), &viewer).await;
    let events = events.body.to_string();
    assert!(events.contains("pw=***"), "{events}");

    // Deliveries settle, then nothing anywhere holds the value or its encodings.
    for _ in 0..200 {
        let d = s.get(&format!("/v1/webhooks/{sub}/deliveries?limit=500"), ADMIN).await.body;
        if d["items"].as_array().is_some_and(|i| !i.is_empty() && i.iter().all(|x| x["status"] == "delivered")) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let encodings = leaked_forms(SECRET);
    let received: String = receiver.log().iter().map(|r| r.body.clone()).collect();
    assert!(received.contains("pw=***"), "webhooks carry the scrubbed output: {received}");
    let deployment = s.get(&format!("/v1/deployments/{}", failed["id"].as_str().unwrap()), &viewer).await.body;
    for (place, text) in [("events", events), ("deployment", deployment.to_string()), ("webhooks", received)] {
        for form in &encodings {
            assert!(!text.contains(form.as_str()), "{place} holds {form:?}");
        }
    }
    let mut stopped = s;
    stopped.stop().await;
    // The database files, and the hooks' own log files under the data directory.
    for form in &encodings {
        assert!(!dir_contains(&stopped.data_dir, form.as_bytes()), "the data directory holds {form:?}");
    }
}

/// Finding: the scrubber missed bash's `set -x` quoting of a value with a quote, GNU `base64` wrapped at 76 columns,
/// lowercase `%xx`, percent-encoding that leaves `/` alone and JSON `\u00e4` escapes; output was kept as a tail and
/// scrubbed afterwards (a value cut at the boundary leaked its tail); a hook's background child printing after the hook
/// exited, and a `process` service's own log, wrote the raw value into the data directory. Every byte programs print
/// now goes through a pipe deployd reads and scrubs, normalising before it matches.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_form_of_a_secret_a_program_prints_reaches_the_data_directory_or_a_viewer() {
    const LONG: &str = "it's-a-long-secret/value+with=stuff-äöü-0123456789abcdefghijklmnopqrstuvwxyz";
    let secrets_dir = temp_dir("sec-forms-secrets");
    std::fs::write(secrets_dir.join("db"), LONG).unwrap();
    let s = Server::with(deploy_server::Settings {
        secrets_dir: Some(secrets_dir.to_path_buf()),
        global_secret_scope: "file://db".into(),
        log_relay: Some(env!("CARGO_BIN_EXE_deployd").into()),
        ..settings("sec-forms")
    })
    .await;
    let script = r#"set -x
: "$DEPLOY_SECRET_DB"
printf %s "$DEPLOY_SECRET_DB" | base64
printf %s "$DEPLOY_SECRET_DB" | od -An -tx1 | tr -d ' \n' | sed 's/../%&/g'; echo
printf %s "$DEPLOY_SECRET_DB" | sed "s/'/%27/g; s/+/%2B/g; s/=/%3D/g"; echo
printf '{"v": "%s"}\n' "$DEPLOY_SECRET_DB" | sed 's/ä/\\u00e4/g; s/ö/\\u00f6/g; s/ü/\\u00fc/g'
(sleep 0.4; echo "late=$DEPLOY_SECRET_DB") &
head -c 3000 /dev/zero | tr '\0' x; echo "$DEPLOY_SECRET_DB"
echo started"#;
    let hook = json!({"id": "h-1", "executor": "command", "config": {"timeout": "10s",
        "hooks": {"start": ["bash", "-c", script]}}});
    let slots = common::slots::Slots::new(1, &s.data_dir, "svc");
    let mut service = slots.targets("")[0].clone();
    service["config"]["command"] = json!([
        "bash",
        "-c",
        format!(
            r#"echo "svc=$DEPLOY_SECRET_DB"; printf %s "$DEPLOY_SECRET_DB" | base64; exec {} demo-app --port {{port}} --version {{version}}"#,
            env!("CARGO_BIN_EXE_deployd")
        )
    ]);
    let env = json!({"targets": [hook, service]});
    assert_eq!(s.put("/v1/environments/svc", ADMIN, env).await.status, StatusCode::CREATED);
    let mut body = request("svc", "1.0");
    body["secrets"] = json!({"DB": {"ref": "file://db"}});
    let done = deploy_as(&s, ADMIN, body).await;
    assert_eq!(done["status"], "succeeded", "{done}");
    // The hook's background child prints after the hook exited; the service keeps running.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let viewer = s.key("viewer", "viewer", &["*"]).await;
    let id = done["id"].as_str().unwrap();
    let events = s.get(&format!("/v1/deployments/{id}/events?limit=500"), &viewer).await.body.to_string();
    assert!(events.contains("started"), "the hook's output is kept: {events}");
    let deployment = s.get(&format!("/v1/deployments/{id}"), &viewer).await.body.to_string();
    let hook_log = std::fs::read_to_string(s.data_dir.join("command/svc/h-1/start.log"))
        .or_else(|_| {
            // The layout of the state directory is the executor's: find the log wherever it is.
            find_file(&s.data_dir, "start.log")
                .map_or(Err(std::io::ErrorKind::NotFound.into()), std::fs::read_to_string)
        })
        .unwrap();
    assert!(hook_log.contains("late=***"), "the late print was read and scrubbed: {hook_log}");
    let service_log = find_file(&s.data_dir, "1.0.log").map(|p| std::fs::read_to_string(p).unwrap()).unwrap();
    assert!(service_log.contains("svc=***"), "the service's own log is scrubbed: {service_log}");
    let mut stopped = s;
    stopped.stop().await;
    let forms = long_forms(LONG);
    for (place, text) in [("events", &events), ("deployment", &deployment)] {
        for form in &forms {
            assert!(!text.contains(form.as_str()), "{place} holds {form:?}: {text}");
        }
    }
    for form in &forms {
        assert!(!dir_contains(&stopped.data_dir, form.as_bytes()), "the data directory holds {form:?}");
    }
    drop(slots);
}

/// Every form of `secret` the test above prints, and a 24-character piece of each line of its wrapped base64.
fn long_forms(secret: &str) -> Vec<String> {
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::STANDARD.encode(secret);
    let lower: String = secret.bytes().map(|b| format!("%{b:02x}")).collect();
    let partial = secret.replace('\'', "%27").replace('+', "%2B").replace('=', "%3D");
    let json = secret.replace('ä', "\\u00e4").replace('ö', "\\u00f6").replace('ü', "\\u00fc");
    let quoted = format!("'{}'", secret.replace('\'', "'\\''"));
    let mut forms = vec![secret.to_owned(), lower, partial, json, quoted, secret.get(20..).unwrap().to_owned()];
    forms.extend(
        b64.as_bytes().chunks(76).map(|line| String::from_utf8_lossy(&line[..24.min(line.len())]).into_owned()),
    );
    forms
}

fn find_file(dir: &std::path::Path, name: &str) -> Option<std::path::PathBuf> {
    std::fs::read_dir(dir).ok()?.flatten().find_map(|e| {
        let path = e.path();
        if path.is_dir() { find_file(&path, name) } else { (e.file_name() == name).then_some(path) }
    })
}

/// Finding: inline-secret detection was easy to step around (a token inside free text, as the version, under a
/// non-English key name; freeze and schedule reasons stored tokens and showed them to every viewer), and control
/// characters and direction overrides were accepted in reasons and labels. Every free-text field goes through one
/// check: no control characters, nothing shaped like a secret in any of its tokens.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_free_text_field_refuses_secrets_and_control_characters() {
    let s = Server::start("sec-text").await;
    s.sim_env("prod", 1, "queue", json!({})).await;
    let token = "ghp_0123456789abcdefghijABCDEFGHIJ012345";
    for reason in [format!("rotate {token}"), format!("see https://x-access-token:{token}@github.com")] {
        let refused = s.put("/v1/freeze", ADMIN, json!({"reason": reason})).await;
        refused.problem(422, "hardcoded-secret");
        assert!(!refused.body.to_string().contains("ghp_0123"), "never echoed: {:?}", refused.body);
    }
    s.put("/v1/freeze", ADMIN, json!({"reason": "incident \u{1b}[2J 42"})).await.problem(400, "validation");
    s.put("/v1/freeze", ADMIN, json!({"reason": "incident \u{202e}24 tnedicni"})).await.problem(400, "validation");
    let schedule = json!({"freezes": [{"cron": "0 0 * * *", "duration": "1h", "timezone": "UTC",
        "reason": format!("Bearer {token}")}]});
    let targets = json!([{"id": "prod-1", "executor": "sim", "config": {"initial_version": "1.0"}}]);
    s.put("/v1/environments/prod", ADMIN, json!({"targets": targets, "schedule": schedule}))
        .await
        .problem(422, "hardcoded-secret");
    let attempts = [
        ("version", json!(token)),
        ("labels", json!({"note": format!("--auth={token}")})),
        ("labels", json!({"note": "fine\u{1b}]0;pwned\u{7}"})),
        ("config", json!({"DB_PASSWORT": "hunter2"})),
        ("config", json!({"MOT_DE_PASSE": "hunter2"})),
        ("config", json!({"SIGNING_KEY_B64": "aGVsbG8="})),
        ("config", json!({"DSN": "Server=db;User Id=app;Password=hunter2;"})),
        ("config", json!({"HOOK": "https://hooks.slack.com/services/T00000000/B00000000/XXXXXXXXXXXXXXXXXXXXXXXX"})),
        ("config", json!({"PAY": "sk_test_4eC39HqLyjWDarjtT1zdp7dc"})),
        ("config", json!({"URL": "https://b.s3.amazonaws.com/a?X-Amz-Signature=fe5f80f77d5fa3beca038a248ff0"})),
        ("config", json!({"KEYPEM": "-----begin ec private key-----"})),
    ];
    for (field, value) in attempts {
        let mut body = request("prod", "1.0");
        body[field] = value.clone();
        let a = s.post("/v1/deployments", ADMIN, body).await;
        assert!(
            a.status == StatusCode::UNPROCESSABLE_ENTITY || a.status == StatusCode::BAD_REQUEST,
            "{field} {value}: {:?}",
            a.body
        );
        assert!(!a.body.to_string().contains("hunter2") && !a.body.to_string().contains("ghp_0123"), "{:?}", a.body);
    }
    // Ordinary text passes.
    let ok = s.put("/v1/freeze", ADMIN, json!({"reason": "quarter close: rotate the deploy key, OPS-1234"})).await;
    assert_eq!(ok.status, StatusCode::OK, "{:?}", ok.body);
}

/// The value, and the encodings of it a hook above printed.
fn leaked_forms(secret: &str) -> Vec<String> {
    use base64::Engine as _;
    let url = secret.replace('/', "%2F").replace('+', "%2B").replace('=', "%3D");
    vec![secret.to_owned(), base64::engine::general_purpose::STANDARD.encode(secret), url]
}

/// Whether any file under `dir` (recursively) holds `needle`.
fn dir_contains(dir: &std::path::Path, needle: &[u8]) -> bool {
    let Ok(entries) = std::fs::read_dir(dir) else { return false };
    entries.flatten().any(|e| {
        let path = e.path();
        if path.is_dir() {
            dir_contains(&path, needle)
        } else {
            std::fs::read(&path).is_ok_and(|bytes| bytes.windows(needle.len()).any(|w| w == needle))
        }
    })
}

/// Finding (high): secrets were not scoped to environments. A deployer of `staging` named production's secret in its
/// payload and the staging hook received production's database password. An environment resolves only what its
/// `secret_scope` and deployd's global scope allow: checked at acceptance (403 naming the reference) and again when a
/// target is applied; only an admin of every environment widens a scope.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_environment_resolves_only_the_secrets_its_scope_allows() {
    let secrets_dir = temp_dir("sec-scope-secrets");
    for (path, value) in [("staging/db", "staging-db-pw"), ("prod/db", "prod-db-password-91c4"), ("shared/ca", "ca")] {
        let file = secrets_dir.join(path);
        std::fs::create_dir_all(file.parent().unwrap()).unwrap();
        std::fs::write(file, value).unwrap();
    }
    let s = Server::with(deploy_server::Settings {
        secrets_dir: Some(secrets_dir.to_path_buf()),
        global_secret_scope: "file://shared/*".into(),
        ..settings("sec-scope")
    })
    .await;
    let out = temp_dir("sec-scope-out");
    let dump = out.join("env.txt");
    let hooks = json!({"install": format!("env >> {}", dump.display())});
    let staging = json!({"targets": [command_target("st-1", hooks)],
        "secret_scope": {"allow": ["file://staging/*"]}});
    assert_eq!(s.put("/v1/environments/staging", ADMIN, staging.clone()).await.status, StatusCode::CREATED);
    let prod = json!({"targets": [{"id": "p-1", "executor": "sim"}], "secret_scope": {"allow": ["file://prod/*"]}});
    assert_eq!(s.put("/v1/environments/prod", ADMIN, prod).await.status, StatusCode::CREATED);
    let deployer = s.key("staging-deployer", "deployer", &["staging"]).await;

    // The attack, in every place a reference can stand, and with a path that walks out of the allowed prefix.
    for (place, reference) in [
        ("secrets", "file://prod/db"),
        ("config", "file://prod/db"),
        ("secrets", "file://staging/../prod/db"),
        ("secrets", "env://DEPLOY_SECRET_PROD_DB"),
    ] {
        let mut attack = request("staging", "1.0");
        attack[place] = json!({"DB": {"ref": reference}});
        let refused = s.post("/v1/deployments", &deployer, attack).await;
        refused.problem(403, "forbidden");
        let detail = refused.body["detail"].as_str().unwrap();
        assert!(detail.contains(reference) && detail.contains(&format!("{place}.DB")), "{detail}");
        assert!(detail.contains("secret scope"), "{detail}");
    }
    let listed = s.get("/v1/deployments?environment=staging", ADMIN).await.body;
    assert_eq!(listed["items"].as_array().unwrap().len(), 0, "nothing was accepted: {listed}");

    // Its own secrets, and the global ones, resolve.
    let mut own = request("staging", "1.0");
    own["secrets"] = json!({"DB": {"ref": "file://staging/db"}, "CA": {"ref": "file://shared/ca"}});
    let done = deploy_as(&s, &deployer, own).await;
    assert_eq!(done["status"], "succeeded", "{done}");
    let seen = std::fs::read_to_string(&dump).unwrap();
    assert!(seen.contains("DEPLOY_SECRET_DB=staging-db-pw") && seen.contains("DEPLOY_SECRET_CA=ca"), "{seen}");
    assert!(!seen.contains("prod-db-password"), "production's password never reached staging: {seen}");

    // A scoped admin of staging may narrow its scope but not widen it.
    let staging_admin = s.key("staging-admin", "admin", &["staging"]).await;
    let mut wider = staging.clone();
    wider["secret_scope"] = json!({"allow": ["file://staging/*", "file://prod/*"]});
    let refused = s.put("/v1/environments/staging", &staging_admin, wider).await;
    refused.problem(403, "forbidden");
    assert!(refused.body["detail"].as_str().unwrap().contains("file://prod/*"), "{:?}", refused.body);
    let mut narrower = staging.clone();
    narrower["secret_scope"] = json!({"allow": ["file://staging/db", "file://shared/ca"]});
    assert_eq!(s.put("/v1/environments/staging", &staging_admin, narrower).await.status, StatusCode::OK);
    let bad = json!({"targets": [], "secret_scope": {"allow": ["file://x/../y*"]}});
    s.put("/v1/environments/other", ADMIN, bad).await.problem(400, "validation");

    // Checked again when the target is applied: a deployment accepted while the scope allowed its reference fails,
    // naming it, once the scope no longer does.
    let mut protected = staging.clone();
    protected["protection"] = json!({"required_approvals": 1});
    assert_eq!(s.put("/v1/environments/staging", ADMIN, protected.clone()).await.status, StatusCode::OK);
    let mut waiting = request("staging", "2.0");
    waiting["secrets"] = json!({"DB": {"ref": "file://staging/db"}});
    let a = s.post("/v1/deployments", &deployer, waiting).await;
    assert_eq!(a.status, StatusCode::ACCEPTED, "{:?}", a.body);
    let id = a.body["id"].as_str().unwrap().to_owned();
    protected["secret_scope"] = json!({"allow": ["file://staging/other"]});
    assert_eq!(s.put("/v1/environments/staging", ADMIN, protected).await.status, StatusCode::OK);
    let approve = json!({"decision": "approve", "comment": "ok"});
    let approved = s.post(&format!("/v1/deployments/{id}/approvals"), ADMIN, approve).await;
    assert!(approved.status.is_success(), "{:?}", approved.body);
    let done = s.wait_terminal(&id).await;
    assert_eq!(done["status"], "failed", "{done}");
    let error = done["targets"][0]["error"].as_str().unwrap();
    assert!(error.contains("file://staging/db") && error.contains("secret scope"), "{error}");
}

/// Finding: target configuration was not checked for inline secrets, and anyone who could read an environment saw the
/// target's `env` values.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn target_configuration_refuses_inline_secrets_and_readers_see_env_redacted() {
    let s = Server::start("sec-target-env").await;
    let inline = json!({"targets": [{"id": "s-1", "executor": "sim",
        "config": {"initial_version": "1.0", "env": {"DB_PASSWORD": "hunter2"}}}]});
    let a = s.put("/v1/environments/prod", ADMIN, inline).await;
    a.problem(422, "hardcoded-secret");
    assert!(!a.body.to_string().contains("hunter2"), "the value is never echoed");

    let ok = json!({"targets": [{"id": "s-1", "executor": "sim", "config": {"initial_version": "1.0",
        "env": {"MODE": "fast-lane", "DB_PASSWORD": {"ref": "env://DEPLOY_SECRET_DB"}}}}]});
    assert_eq!(s.put("/v1/environments/prod", ADMIN, ok).await.status, StatusCode::CREATED);
    let admin_view = s.get("/v1/environments/prod", ADMIN).await.body;
    assert_eq!(admin_view["targets"][0]["config"]["env"]["MODE"], "fast-lane", "admins see what they wrote");
    for role in ["viewer", "deployer"] {
        let key = s.key(&format!("{role}-1"), role, &["prod"]).await;
        for body in [
            s.get("/v1/environments/prod", &key).await.body,
            s.get("/v1/environments", &key).await.body["items"][0].clone(),
        ] {
            let env = &body["targets"][0]["config"]["env"];
            assert_eq!(env["MODE"], "***", "{role}: {body}");
            assert_eq!(env["DB_PASSWORD"]["ref"], "env://DEPLOY_SECRET_DB", "references are not secrets");
            assert!(!body.to_string().contains("fast-lane"), "{role}");
        }
    }
}

/// Finding: the inline-secret check only looked at a handful of key names; labels, artifact URIs and step arguments
/// passed; versions could hold `/` and `..`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_are_recognised_by_name_and_shape_everywhere_in_a_payload() {
    let s = Server::start("sec-shapes").await;
    s.sim_env("prod", 1, "queue", json!({})).await;
    let with = |field: &str, value: Value| {
        let mut r = request("prod", "1.0");
        r[field] = value;
        r
    };
    let cases = [
        with("config", json!({"DB_PWD": "x1y2z3"})),
        with("config", json!({"PASSPHRASE": "correct horse"})),
        with("config", json!({"SIGNING_KEY": "abc"})),
        with("config", json!({"NOTE": "-----BEGIN RSA PRIVATE KEY-----\nMIIE"})),
        with("config", json!({"REPO": "ghp_0123456789abcdefghijABCDEFGHIJ012345"})),
        with("config", json!({"DSN": "postgres://app:hunter2@db/app"})),
        with("config", json!({"AUTHZ": "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJhIn0.c2lnbmF0dXJlLXNpZ25hdHVyZQ"})),
        with("labels", json!({"owner": "ghp_0123456789abcdefghijABCDEFGHIJ012345"})),
        with("artifact", json!({"uri": "https://ci:hunter2@registry.example.com/app.tar"})),
    ];
    for body in cases {
        let a = s.post("/v1/deployments", ADMIN, body.clone()).await;
        a.problem(422, "hardcoded-secret");
        for secret in ["x1y2z3", "hunter2", "ghp_0123", "MIIE", "eyJhbGci"] {
            assert!(!a.body.to_string().contains(secret), "{body}: the value is echoed");
        }
    }
    let mut steps = request("prod", "1.0");
    steps["mode"] = json!("imperative");
    steps["steps"] = json!([{"action": "fetch", "args": {"url": "https://u:pw@h/x"}}]);
    s.post("/v1/deployments", ADMIN, steps).await.problem(422, "hardcoded-secret");
    for version in ["../../etc", "1.0/../../x", "a/b", "1..2"] {
        let a = s.post("/v1/deployments", ADMIN, request("prod", version)).await;
        a.problem(400, "validation");
        assert!(a.body.to_string().contains("version"), "{version}: {}", a.body);
    }
    let mut service = request("prod", "1.0");
    service["service"] = json!("a..b");
    s.post("/v1/deployments", ADMIN, service).await.problem(400, "validation");
}

/// The same leak through the `deployd` binary with debug logs: nothing it logs holds the value; and `--help` never
/// shows the values of secret settings (the database URL's password among them).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deployds_logs_and_help_hold_no_secret() {
    use tokio::io::{AsyncBufReadExt as _, BufReader};
    let dir = temp_dir("sec-logs");
    let secrets = dir.join("secrets");
    std::fs::create_dir_all(&secrets).unwrap();
    std::fs::write(secrets.join("token"), SECRET).unwrap();
    let key_file = dir.join("admin.key");
    std::fs::write(&key_file, format!("{ADMIN}\n")).unwrap();
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_deployd"));
    cmd.args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir.join("data"))
        .arg("--secrets-dir")
        .arg(&secrets)
        .args(["--global-secret-scope", "file://token"])
        .arg("--bootstrap-admin-key-file")
        .arg(&key_file)
        .env("DEPLOYD_LOG", "debug")
        .stderr(std::process::Stdio::piped());
    let (mut child, base) = common::binary::listening(cmd).await;
    let stderr = child.stderr.take().unwrap();
    let logs = tokio::spawn(async move {
        let mut all = String::new();
        let mut lines = BufReader::new(stderr).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            all.push_str(&line);
            all.push('\n');
        }
        all
    });
    let client = deploy_client::Client::builder(&base).token(ADMIN).build().unwrap();
    let leak = "echo \"token=$DEPLOY_SECRET_TOKEN\"; printf %s \"$DEPLOY_SECRET_TOKEN\" | base64; exit 4";
    let env: deploy_core::EnvironmentSpec =
        serde_json::from_value(json!({"targets": [command_target("l-1", json!({"install": leak}))]})).unwrap();
    client.put_environment(&"logs".parse().unwrap(), &env, None).await.unwrap();
    let mut body = request("logs", "1.0");
    body["secrets"] = json!({"TOKEN": {"ref": "file://token"}});
    let body: deploy_core::DeploymentRequest = serde_json::from_value(body).unwrap();
    let submitted = client.submit(&body, deploy_client::SubmitOptions::default()).await.unwrap();
    let done = client.wait(submitted.deployment.id(), Duration::from_secs(30)).await.unwrap();
    assert_eq!(done.status(), deploy_core::DeploymentStatus::Failed);
    let _ = child.start_kill();
    let _ = child.wait().await;
    let logs = logs.await.unwrap();
    assert!(logs.contains("token=***"), "the hook's output is logged, scrubbed: {logs}");
    for form in leaked_forms(SECRET) {
        assert!(!logs.contains(&form), "the log holds {form:?}");
    }
    assert!(!logs.contains(ADMIN), "the bootstrap key is not logged");

    let help = tokio::process::Command::new(env!("CARGO_BIN_EXE_deployd"))
        .args(["serve", "--help"])
        .env("DEPLOYD_DATABASE_URL", "postgres://app:hunter2@db/app")
        .env("DEPLOYD_JWT_HS256_SECRET", "jwt-secret-in-the-environment")
        .env("DEPLOYD_BOOTSTRAP_ADMIN_KEY", ADMIN)
        .output()
        .await
        .unwrap();
    let help = String::from_utf8_lossy(&help.stdout);
    assert!(help.contains("--database-url") && help.contains("--tls-cert"), "{help}");
    for secret in ["hunter2", "jwt-secret-in-the-environment", ADMIN] {
        assert!(!help.contains(secret), "--help shows {secret}");
    }
}
