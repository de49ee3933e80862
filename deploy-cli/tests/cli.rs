//! `deployctl` end to end against a real `deployd` on loopback: exit codes by outcome, JSON output, readable errors,
//! and a snapshot of the human summary.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::Path;
use std::process::Output;

use deploy_server::{Running, Settings};
use serde_json::Value;

const ADMIN: &str = "dk_cliclicliclicliclicliclicliclicliclicliclic";

async fn deployd(tag: &str) -> (Running, deploy_testkit::fixtures::TempDir) {
    let dir = deploy_testkit::fixtures::temp_dir(tag);
    let running = deploy_server::start(Settings::for_tests(dir.join("data"), ADMIN)).await.expect("deployd starts");
    (running, dir)
}

/// Runs `deployctl args` against `server` (no server: `url` is used as is).
async fn deployctl(url: &str, token: &str, args: &[&str]) -> Output {
    let (url, token) = (url.to_owned(), token.to_owned());
    let args: Vec<String> = args.iter().map(|a| (*a).to_owned()).collect();
    tokio::task::spawn_blocking(move || {
        std::process::Command::new(env!("CARGO_BIN_EXE_deployctl"))
            .args(&args)
            .env("DEPLOY_URL", url)
            .env("DEPLOY_TOKEN", token)
            .output()
            .unwrap()
    })
    .await
    .unwrap()
}

fn code(o: &Output) -> i32 {
    o.status.code().unwrap()
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn write(dir: &Path, name: &str, text: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path.display().to_string()
}

const ENV_YAML: &str = "\
concurrency: queue
targets:
  - id: web-1
    executor: sim
    config: {initial_version: '1.0', apply_ms: 10, fail_versions: ['4.0'], unhealthy_versions: ['3.0']}
  - id: web-2
    executor: sim
    config: {initial_version: '1.0', apply_ms: 10, unhealthy_versions: ['3.0']}
  - id: web-3
    executor: sim
    config: {initial_version: '1.0', apply_ms: 10, unhealthy_versions: ['3.0']}
";

const FAST_VERIFY: &str = "verify: {timeout: 2s, interval: 20ms, healthy_for: 0s}\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exit_codes_follow_each_outcome_and_json_is_parseable() {
    let (server, dir) = deployd("cli-outcomes").await;
    let url = format!("http://{}", server.addr);
    let env_file = write(&dir, "env.yaml", ENV_YAML);
    let request = write(&dir, "request.yaml", FAST_VERIFY);
    let put = deployctl(&url, ADMIN, &["env", "put", "prod", "--file", &env_file]).await;
    assert_eq!(code(&put), 0, "{}", stderr(&put));
    assert!(stdout(&put).contains("revision 1"), "{}", stdout(&put));

    let deploy = |version: &'static str, extra: &'static [&'static str]| {
        let (url, request) = (url.clone(), request.clone());
        async move {
            let mut args = vec![
                "deploy",
                "--file",
                &request,
                "--env",
                "prod",
                "--service",
                "checkout",
                "--version",
                version,
                "--wait",
            ];
            args.extend_from_slice(extra);
            deployctl(&url, ADMIN, &args).await
        }
    };
    let ok = deploy("2.0", &["--strategy", "rolling:1"]).await;
    assert_eq!(code(&ok), 0, "{}{}", stdout(&ok), stderr(&ok));
    assert!(stdout(&ok).contains("Status:     succeeded"), "{}", stdout(&ok));
    assert!(stderr(&ok).contains("target.updated web-1"), "the live view shows each target: {}", stderr(&ok));

    let rolled_back = deploy("3.0", &[]).await;
    assert_eq!(code(&rolled_back), 3, "{}", stdout(&rolled_back));
    assert!(stdout(&rolled_back).contains("rolled_back"));

    let degraded = deploy("4.0", &["--max-failed", "1"]).await;
    assert_eq!(code(&degraded), 2, "{}", stdout(&degraded));

    let failed = deploy("4.0", &["--max-failed", "0", "--on-failure", "fail"]).await;
    assert_eq!(code(&failed), 3, "{}", stdout(&failed));

    // JSON: one document to parse; status and list.
    let listed = deployctl(&url, ADMIN, &["list", "--env", "prod", "--output", "json"]).await;
    let listed: Value = serde_json::from_str(&stdout(&listed)).unwrap();
    let items = listed["items"].as_array().unwrap();
    assert_eq!(items.len(), 4);
    let first = items.last().unwrap()["id"].as_str().unwrap().to_owned();
    let status = deployctl(&url, ADMIN, &["status", &first, "-o", "json"]).await;
    assert_eq!(code(&status), 0);
    let status: Value = serde_json::from_str(&stdout(&status)).unwrap();
    assert_eq!(status["status"], "succeeded");
    let degraded_id = items[1]["id"].as_str().unwrap();
    assert_eq!(code(&deployctl(&url, ADMIN, &["status", degraded_id]).await), 2, "status follows the outcome too");

    // Cancelled: 4. A slow environment, a deployment cancelled while it runs, then watched.
    let slow = write(&dir, "slow.yaml", &ENV_YAML.replace("apply_ms: 10", "apply_ms: 400"));
    assert_eq!(code(&deployctl(&url, ADMIN, &["env", "put", "slow", "--file", &slow]).await), 0);
    let submitted = deployctl(
        &url,
        ADMIN,
        &[
            "deploy",
            "--file",
            &request,
            "--env",
            "slow",
            "--service",
            "checkout",
            "--version",
            "2.0",
            "--strategy",
            "rolling:1",
            "-o",
            "json",
        ],
    )
    .await;
    let id = serde_json::from_str::<Value>(&stdout(&submitted)).unwrap()["id"].as_str().unwrap().to_owned();
    assert_eq!(code(&deployctl(&url, ADMIN, &["cancel", &id]).await), 0);
    let watched = deployctl(&url, ADMIN, &["watch", &id, "-o", "json"]).await;
    assert_eq!(code(&watched), 4, "{}", stderr(&watched));
    let lines: Vec<Value> = stdout(&watched).lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines.last().unwrap()["type"], "deployment.cancelled", "events as JSON lines");
    let seqs: Vec<u64> = lines.iter().map(|e| e["seq"].as_u64().unwrap()).collect();
    assert_eq!(seqs, (1..=lines.len() as u64).collect::<Vec<_>>());

    // Rollback with --wait follows the new deployment.
    let rollback = deployctl(&url, ADMIN, &["rollback", &first, "--wait"]).await;
    assert_eq!(code(&rollback), 0, "{}", stderr(&rollback));
    assert!(stdout(&rollback).contains("Rolls back: "), "{}", stdout(&rollback));

    // Administration.
    let key = deployctl(
        &url,
        ADMIN,
        &["keys", "create", "--name", "ci", "--role", "deployer", "--env", "prod", "-o", "json"],
    )
    .await;
    let key: Value = serde_json::from_str(&stdout(&key)).unwrap();
    assert!(key["key"].as_str().unwrap().starts_with("dk_"));
    assert!(stdout(&deployctl(&url, ADMIN, &["keys", "list"]).await).contains("deployer"));
    let hook =
        deployctl(&url, ADMIN, &["webhooks", "create", "--url", "http://127.0.0.1:9/h", "--event", "deployment.*"])
            .await;
    assert!(stdout(&hook).contains("whsec_"), "{}{}", stdout(&hook), stderr(&hook));
    let audit = deployctl(&url, ADMIN, &["audit", "--limit", "500"]).await;
    assert!(stdout(&audit).contains("deployment.submit"), "{:?} {}{}", audit.status, stdout(&audit), stderr(&audit));
    let envs = deployctl(&url, ADMIN, &["env", "list"]).await;
    assert!(stdout(&envs).contains("slow") && stdout(&envs).contains("prod"));
    // The releases that ran in prod, newest first, as a table and as JSON.
    let history = deployctl(&url, ADMIN, &["env", "history", "prod"]).await;
    assert_eq!(code(&history), 0, "{}", stderr(&history));
    assert!(stdout(&history).contains("SUBMITTED BY"), "{}", stdout(&history));
    let history = deployctl(&url, ADMIN, &["env", "history", "prod", "-o", "json"]).await;
    let history: Value = serde_json::from_str(&stdout(&history)).unwrap();
    let items = history["items"].as_array().unwrap();
    assert!(!items.is_empty(), "releases ran in prod");
    assert!(items.iter().all(|r| r["started_at"].is_string()), "only what started: {history}");
    // Back to a chosen release; a version that never succeeded there is an error naming `to`.
    let back = deployctl(&url, ADMIN, &["env", "rollback", "prod", "--to", "1.0", "--wait"]).await;
    assert_eq!(code(&back), 0, "{}{}", stdout(&back), stderr(&back));
    let none = deployctl(&url, ADMIN, &["env", "rollback", "prod", "--to", "9.9"]).await;
    assert_eq!(code(&none), 1);
    assert!(stderr(&none).contains("to"), "{}", stderr(&none));
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_are_readable_and_exit_1() {
    let (server, _dir) = deployd("cli-errors").await;
    let url = format!("http://{}", server.addr);
    let denied = deployctl(&url, "dk_wrongwrongwrongwrongwrongwrongwrongwrongwro", &["env", "list"]).await;
    assert_eq!(code(&denied), 1);
    assert!(stderr(&denied).starts_with("error: Authentication required"), "{}", stderr(&denied));
    assert!(!stderr(&denied).contains("Problem {"), "no debug dump");

    let invalid = deployctl(&url, ADMIN, &["deploy", "--env", "prod", "--service", "checkout", "--version", ""]).await;
    assert_eq!(code(&invalid), 1);
    assert!(stderr(&invalid).contains("version"), "field errors are named: {}", stderr(&invalid));

    let unreachable = deployctl("http://127.0.0.1:1", ADMIN, &["env", "list"]).await;
    assert_eq!(code(&unreachable), 1);
    assert!(stderr(&unreachable).contains("cannot reach the server at http://127.0.0.1:1"), "{}", stderr(&unreachable));

    let usage = deployctl(&url, ADMIN, &["deploy"]).await;
    assert_eq!(code(&usage), 1, "usage errors are 1, not clap's 2 (2 means degraded)");
    assert_eq!(code(&deployctl(&url, ADMIN, &["--help"]).await), 0);
    let bad_strategy =
        deployctl(&url, ADMIN, &["deploy", "--env", "p", "--service", "s", "--version", "1", "--strategy", "blue"])
            .await;
    assert_eq!(code(&bad_strategy), 1);
    assert!(stderr(&bad_strategy).contains("rolling:25%"));

    let completions = deployctl(&url, ADMIN, &["completions", "bash"]).await;
    assert_eq!(code(&completions), 0);
    assert!(stdout(&completions).contains("deployctl"));
    server.shutdown().await;
}

/// The human summary, with what changes from run to run (ids, times) replaced.
fn redact(text: &str, id: &str) -> String {
    text.replace(id, "<id>")
        .lines()
        .map(|line| {
            for label in ["Created:    ", "Finished:   "] {
                if let Some(rest) = line.strip_prefix(label) {
                    let tail = rest.split_once(' ').map_or("", |(_, t)| t);
                    return format!("{label}<time> {tail}").trim_end().to_owned();
                }
            }
            line.to_owned()
        })
        .collect::<Vec<_>>()
        .join("\n")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_human_summary_reads_well() {
    let (server, dir) = deployd("cli-snapshot").await;
    let url = format!("http://{}", server.addr);
    let env_file = write(&dir, "env.yaml", ENV_YAML);
    let request = write(&dir, "request.yaml", FAST_VERIFY);
    assert_eq!(code(&deployctl(&url, ADMIN, &["env", "put", "prod", "--file", &env_file]).await), 0);
    let out = deployctl(
        &url,
        ADMIN,
        &[
            "deploy",
            "--file",
            &request,
            "--env",
            "prod",
            "--service",
            "checkout",
            "--version",
            "4.0",
            "--max-failed",
            "1",
            "--wait",
        ],
    )
    .await;
    assert_eq!(code(&out), 2);
    let listed: Value = serde_json::from_str(&stdout(&deployctl(&url, ADMIN, &["list", "-o", "json"]).await)).unwrap();
    let id = listed["items"][0]["id"].as_str().unwrap().to_owned();
    insta::assert_snapshot!("degraded_deployment", redact(&stdout(&out), &id));
    server.shutdown().await;
}

/// Finding: `deployctl` sent its bearer key over plain HTTP to any host.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_http_to_another_host_is_refused_before_anything_is_sent() {
    for url in ["http://deployd.example.com:8080", "http://10.1.2.3:8080"] {
        let o = deployctl(url, ADMIN, &["list"]).await;
        assert_eq!(code(&o), 1, "{}", stderr(&o));
        assert!(stderr(&o).contains("plain HTTP to another host"), "{url}: {}", stderr(&o));
        assert!(stderr(&o).contains("--insecure-http") || stderr(&o).contains("insecure"), "{}", stderr(&o));
        assert!(!stderr(&o).contains(ADMIN), "the key is never printed");
    }
    // Loopback is this machine: allowed without the flag.
    let (running, _dir) = deployd("cli-loopback").await;
    let o = deployctl(&format!("http://localhost:{}", running.addr.port()), ADMIN, &["list"]).await;
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    running.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operators_pause_resume_abort_and_retry_from_the_command_line() {
    let (server, dir) = deployd("cli-operate").await;
    let url = format!("http://{}", server.addr);
    let slow = write(&dir, "slow.yaml", &ENV_YAML.replace("apply_ms: 10", "apply_ms: 300"));
    assert_eq!(code(&deployctl(&url, ADMIN, &["env", "put", "prod", "--file", &slow]).await), 0);
    let request = write(&dir, "request.yaml", FAST_VERIFY);
    let submit = |version: &'static str, extra: &'static [&'static str]| {
        let (url, request) = (url.clone(), request.clone());
        async move {
            let mut args =
                vec!["deploy", "--file", &request, "--env", "prod", "--service", "checkout", "--version", version];
            args.extend_from_slice(extra);
            deployctl(&url, ADMIN, &args).await
        }
    };
    let status = |id: String| {
        let url = url.clone();
        async move {
            let o = deployctl(&url, ADMIN, &["status", &id, "-o", "json"]).await;
            serde_json::from_str::<Value>(&stdout(&o)).unwrap()
        }
    };
    let first = submit("2.0", &["--strategy", "rolling:1", "-o", "json"]).await;
    let id = serde_json::from_str::<Value>(&stdout(&first)).unwrap()["id"].as_str().unwrap().to_owned();
    let paused = deployctl(&url, ADMIN, &["pause", &id]).await;
    assert_eq!(code(&paused), 0, "{}", stderr(&paused));
    assert!(stdout(&paused).contains("pause requested"), "{}", stdout(&paused));
    let mut seen = Value::Null;
    for _ in 0..200 {
        seen = status(id.clone()).await;
        if seen["status"] == "paused" {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(seen["status"], "paused", "{seen}");
    assert_eq!(code(&deployctl(&url, ADMIN, &["resume", &id]).await), 0);
    let watched = deployctl(&url, ADMIN, &["watch", &id]).await;
    assert_eq!(code(&watched), 0, "{}{}", stdout(&watched), stderr(&watched));
    let late = deployctl(&url, ADMIN, &["promote", &id]).await;
    assert_eq!(code(&late), 1, "{}", stdout(&late));
    assert!(stderr(&late).contains("already"), "{}", stderr(&late));

    // Abort with rollback: exit 3 once it is rolled back.
    let second = submit("2.5", &["--strategy", "rolling:1", "-o", "json"]).await;
    let id = serde_json::from_str::<Value>(&stdout(&second)).unwrap()["id"].as_str().unwrap().to_owned();
    let abort = deployctl(&url, ADMIN, &["abort", &id, "--rollback"]).await;
    assert_eq!(code(&abort), 0, "{}", stderr(&abort));
    assert_eq!(code(&deployctl(&url, ADMIN, &["watch", &id]).await), 3);
    assert_eq!(status(id.clone()).await["status"], "rolled_back");

    // Retry: web-1 refuses 4.0, then is fixed; the retry deploys it alone.
    let degraded = submit("4.0", &["--max-failed", "1", "--on-failure", "fail", "--wait", "-o", "json"]).await;
    assert_eq!(code(&degraded), 2, "{}", stdout(&degraded));
    let listed = deployctl(&url, ADMIN, &["list", "--env", "prod", "--status", "degraded", "-o", "json"]).await;
    let listed: Value = serde_json::from_str(&stdout(&listed)).unwrap();
    let degraded_id = listed["items"][0]["id"].as_str().unwrap().to_owned();
    let fixed = write(&dir, "fixed.yaml", &ENV_YAML.replace(", fail_versions: ['4.0']", ""));
    assert_eq!(code(&deployctl(&url, ADMIN, &["env", "put", "prod", "--file", &fixed]).await), 0);
    let retry = deployctl(&url, ADMIN, &["retry", &degraded_id, "-o", "json"]).await;
    assert_eq!(code(&retry), 0, "{}", stderr(&retry));
    let retry: Value = serde_json::from_str(&stdout(&retry)).unwrap();
    assert_eq!(retry["retry_of"], degraded_id.as_str());
    let targets: Vec<&str> = retry["targets"].as_array().unwrap().iter().map(|t| t["id"].as_str().unwrap()).collect();
    assert_eq!(targets, ["web-1"]);
    let retried = deployctl(&url, ADMIN, &["watch", retry["id"].as_str().unwrap()]).await;
    assert_eq!(code(&retried), 0, "{}", stderr(&retried));

    // The global freeze: set, shown, a deployment held and overridden, lifted.
    let set = deployctl(&url, ADMIN, &["freeze", "set", "--reason", "INC-9 failover"]).await;
    assert_eq!(code(&set), 0, "{}", stderr(&set));
    let shown = deployctl(&url, ADMIN, &["freeze", "show"]).await;
    assert!(stdout(&shown).contains("Frozen since") && stdout(&shown).contains("INC-9 failover"), "{}", stdout(&shown));
    let held = submit("5.0", &["-o", "json"]).await;
    let held = serde_json::from_str::<Value>(&stdout(&held)).unwrap()["id"].as_str().unwrap().to_owned();
    let mut seen = Value::Null;
    for _ in 0..200 {
        seen = status(held.clone()).await;
        if seen["held_until"].is_string() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert!(seen["status_reason"].as_str().unwrap_or_default().contains("global freeze"), "{seen}");
    let no_reason = deployctl(&url, ADMIN, &["override", &held, "--reason", ""]).await;
    assert_eq!(code(&no_reason), 1, "an override needs a reason");
    let overridden = deployctl(&url, ADMIN, &["override", &held, "--reason", "hotfix"]).await;
    assert_eq!(code(&overridden), 0, "{}", stderr(&overridden));
    assert_eq!(code(&deployctl(&url, ADMIN, &["watch", &held]).await), 0);
    assert_eq!(code(&deployctl(&url, ADMIN, &["freeze", "lift"]).await), 0);
    assert!(stdout(&deployctl(&url, ADMIN, &["freeze", "show"]).await).contains("Not frozen"));
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_protected_environment_in_a_few_commands() {
    let (server, dir) = deployd("cli-protected").await;
    let url = format!("http://{}", server.addr);
    let protected =
        format!("{ENV_YAML}protection:\n  required_approvals: 2\n  approvers: [role:approver]\n  expires_after: 24h\n");
    let env_file = write(&dir, "prod.yaml", &protected);
    let put = deployctl(&url, ADMIN, &["env", "put", "prod", "--file", &env_file]).await;
    assert_eq!(code(&put), 0, "{}", stderr(&put));
    let key = |name: &'static str, role: &'static str| {
        let url = url.clone();
        async move {
            let o = deployctl(
                &url,
                ADMIN,
                &["keys", "create", "--name", name, "--role", role, "--env", "prod", "--owner", name, "-o", "json"],
            )
            .await;
            assert_eq!(code(&o), 0, "{}", stderr(&o));
            let created = serde_json::from_str::<Value>(&stdout(&o)).unwrap();
            assert_eq!(created["owner"], name, "the key belongs to its person");
            created["key"].as_str().unwrap().to_owned()
        }
    };
    let (ci, alice, bob) = (key("ci", "deployer").await, key("alice", "approver").await, key("bob", "approver").await);
    let request = write(&dir, "request.yaml", FAST_VERIFY);
    let submit = |version: &'static str| {
        let (url, request, ci) = (url.clone(), request.clone(), ci.clone());
        async move {
            let o = deployctl(
                &url,
                &ci,
                &[
                    "deploy",
                    "--file",
                    &request,
                    "--env",
                    "prod",
                    "--service",
                    "checkout",
                    "--version",
                    version,
                    "-o",
                    "json",
                ],
            )
            .await;
            assert_eq!(code(&o), 0, "{}", stderr(&o));
            serde_json::from_str::<Value>(&stdout(&o)).unwrap()
        }
    };
    let d = submit("2.0").await;
    assert_eq!(d["status"], "awaiting_approval");
    let id = d["id"].as_str().unwrap().to_owned();

    let own = deployctl(&url, &ci, &["approve", &id]).await;
    assert_eq!(code(&own), 1, "a deployer may not approve");
    assert!(stderr(&own).contains("may not approve"), "{}", stderr(&own));
    let first = deployctl(&url, &alice, &["approve", &id, "-m", "CHG-42 signed off"]).await;
    assert_eq!(code(&first), 0, "{}", stderr(&first));
    assert!(stdout(&first).contains("1 of 2"), "{}", stdout(&first));
    let second = deployctl(&url, &bob, &["approve", &id]).await;
    assert!(stdout(&second).contains("2 of 2") && stdout(&second).contains("queued"), "{}", stdout(&second));
    let watched = deployctl(&url, ADMIN, &["watch", &id]).await;
    assert_eq!(code(&watched), 0, "{}", stderr(&watched));
    let history = deployctl(&url, ADMIN, &["history", "prod"]).await;
    assert!(stdout(&history).contains("person:alice, person:bob"), "approvals count people: {}", stdout(&history));
    assert!(stdout(&history).lines().next().unwrap_or_default().ends_with("OF"), "a rollback-of / retry-of column");

    let next = submit("3.0").await["id"].as_str().unwrap().to_owned();
    let no = deployctl(&url, &bob, &["reject", &next, "-m", "not during the sale"]).await;
    assert_eq!(code(&no), 0, "{}", stderr(&no));
    let status = deployctl(&url, ADMIN, &["status", &next]).await;
    assert!(stdout(&status).contains("rejected by person:bob: not during the sale"), "{}", stdout(&status));
    assert_eq!(code(&status), 4, "a rejected deployment exits like a cancelled one");

    // Finding of the governance trial: waiting on a protected environment timed out without saying who must approve.
    let args = ["deploy", "--file", &request, "--env", "prod", "--service", "checkout", "--version", "4.0"];
    let waited = deployctl(&url, &ci, &[&args[..], &["--wait", "--timeout", "1s"]].concat()).await;
    assert_eq!(code(&waited), 1, "{}", stderr(&waited));
    let said = stderr(&waited);
    assert!(said.contains("awaits approval: 0 of 2") && said.contains("deployctl approve"), "{said}");
    server.shutdown().await;
}

/// Finding: a 400 answer to a path holding `%1b%5b2J%0d%0a...` was audited with the raw decoded path, so `deployctl
/// audit` printed a forged line for another principal and cleared the screen. The audit log keeps such text escaped,
/// and `deployctl` escapes every control character in what it prints.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_a_server_sends_never_reaches_the_terminal_as_control_sequences() {
    let (running, _dir) = deployd("cli-escape").await;
    let url = format!("http://{}", running.addr);
    let http = reqwest::Client::new();
    let forged = "%1b%5b2J%0d%0a2026-12-01T00:00:00Z  key:alice  deployment.submit";
    for path in [format!("/v1/deployments/{forged}/cancel"), format!("/v1/environments/x{forged}")] {
        let r = http.post(format!("{url}{path}")).bearer_auth(ADMIN).json(&serde_json::json!({})).send().await.unwrap();
        assert!(r.status().is_client_error(), "{path}: {}", r.status());
        let r = http.put(format!("{url}{path}")).bearer_auth(ADMIN).json(&serde_json::json!({})).send().await.unwrap();
        assert!(r.status().is_client_error(), "{path}: {}", r.status());
    }
    let out = deployctl(&url, ADMIN, &["audit"]).await;
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let text = stdout(&out);
    assert!(!text.contains('\u{1b}') && !text.contains('\r'), "no control character reaches the terminal: {text:?}");
    assert!(text.contains("\\u{1b}"), "the escape is shown as text: {text}");
    let lines: Vec<&str> = text.lines().filter(|l| l.contains("key:alice")).collect();
    assert!(lines.iter().all(|l| l.contains("key:bootstrap-admin")), "no line is forged for alice: {lines:?}");
    let json = deployctl(&url, ADMIN, &["audit", "--output", "json"]).await;
    let entries: Value = serde_json::from_slice(&json.stdout).unwrap();
    for e in entries["items"].as_array().or(entries.as_array()).unwrap() {
        let all = e.to_string();
        assert!(!all.contains("\\u001b") && !all.contains("\\r"), "the audit log keeps no control character: {all}");
        if e["resource"].as_str().unwrap_or_default().starts_with("environments/") {
            assert!(e["environment"].is_null(), "an invalid name is not recorded as an environment: {e}");
        }
    }
    running.shutdown().await;
}
