//! `deployd demo`: starts the API on the embedded store, registers an environment of four `process` targets running
//! the demo's service (`deployd demo-app`, real processes on loopback ports), and tells the story of the project through
//! the public HTTP API only, printing a timeline: deploy 1.0; roll out 2.0 two at a time; an idempotent replay; two
//! racing submissions serialized; a broken 3.0 that fails its health check and is rolled back. It ends with a table
//! of the deployments and of the processes actually running, then stops them. When a Docker Engine answers
//! (`DOCKER_HOST`, or the local socket) and a static busybox is there to make images from, a second environment of two
//! `docker` targets rolls 1.0 then 2.0 out as containers, and says plainly when it skipped that. Every step is
//! checked; a step that does not behave as shown makes the demo fail.

use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::Instant;

use futures::StreamExt as _;
use serde_json::{Value, json};

use crate::server::{Settings, start};

/// The demo's failure: what did not behave as shown.
#[derive(Debug, thiserror::Error)]
#[error("demo step failed: {0}")]
pub struct DemoError(String);

fn fail(what: impl Into<String>) -> DemoError {
    DemoError(what.into())
}

struct Api {
    http: reqwest::Client,
    base: String,
    key: String,
    started: Instant,
}

impl Api {
    fn say(&self, line: &str) {
        let t = self.started.elapsed().as_secs_f64();
        println!("[{t:>6.2}s] {line}");
    }

    async fn send(&self, req: reqwest::RequestBuilder) -> Result<(u16, reqwest::header::HeaderMap, Value), DemoError> {
        let resp = req.bearer_auth(&self.key).send().await.map_err(|e| fail(format!("HTTP: {e}")))?;
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let body = resp.json::<Value>().await.unwrap_or(Value::Null);
        Ok((status, headers, body))
    }

    async fn submit(&self, body: &Value, key: &str) -> Result<(u16, bool, Value), DemoError> {
        let req = self.http.post(format!("{}/v1/deployments", self.base)).header("idempotency-key", key).json(body);
        let (status, headers, body) = self.send(req).await?;
        let replayed = headers.get("idempotent-replayed").is_some_and(|v| v == "true");
        Ok((status, replayed, body))
    }

    async fn get(&self, path: &str) -> Result<Value, DemoError> {
        let (status, _, body) = self.send(self.http.get(format!("{}{path}", self.base))).await?;
        if status == 200 { Ok(body) } else { Err(fail(format!("GET {path}: {status} {body}"))) }
    }

    /// Follows a deployment's event stream (SSE) to its end, printing each event; returns the final deployment.
    async fn watch(&self, id: &str, label: &str) -> Result<Value, DemoError> {
        let req = self
            .http
            .get(format!("{}/v1/deployments/{id}/events", self.base))
            .bearer_auth(&self.key)
            .header("accept", "text/event-stream");
        let resp = req.send().await.map_err(|e| fail(format!("stream: {e}")))?;
        let mut body = resp.bytes_stream();
        let mut buf = String::new();
        while let Some(chunk) = body.next().await {
            let chunk = chunk.map_err(|e| fail(format!("stream: {e}")))?;
            buf.push_str(&String::from_utf8_lossy(&chunk));
            while let Some(end) = buf.find("\n\n") {
                let frame: String = buf.drain(..end + 2).collect();
                if let Some(data) = frame.lines().find_map(|l| l.strip_prefix("data:")) {
                    let e: Value = serde_json::from_str(data.trim()).unwrap_or(Value::Null);
                    let target = e["target_id"].as_str().map(|t| format!(" {t}")).unwrap_or_default();
                    self.say(&format!(
                        "  {label} {}{target}: {}",
                        e["type"].as_str().unwrap_or("?"),
                        e["message"].as_str().unwrap_or("")
                    ));
                }
            }
        }
        self.get(&format!("/v1/deployments/{id}")).await
    }

    async fn versions(&self) -> Result<Vec<String>, DemoError> {
        let env = self.get("/v1/environments/demo").await?;
        Ok(env["targets"]
            .as_array()
            .map(|ts| {
                ts.iter()
                    .map(|t| {
                        format!(
                            "{}={}",
                            t["id"].as_str().unwrap_or("?"),
                            t["actual"]["version"].as_str().unwrap_or("?")
                        )
                    })
                    .collect()
            })
            .unwrap_or_default())
    }

    /// What each slot's process says about itself, over HTTP: `port: version (pid)`.
    async fn processes(&self, ports: &[u16]) -> Vec<(u16, Option<Value>)> {
        let mut out = Vec::new();
        for port in ports {
            let health = self.http.get(format!("http://127.0.0.1:{port}/health")).send().await;
            let body = match health {
                Ok(r) => r.json::<Value>().await.ok(),
                Err(_) => None,
            };
            out.push((*port, body));
        }
        out
    }
}

fn request(version: &str, batch: u64, verify_timeout: &str) -> Value {
    json!({
        "environment": "demo", "service": "checkout", "version": version,
        "strategy": {"type": "rolling", "batch_size": batch},
        "verify": {"timeout": verify_timeout, "interval": "100ms", "healthy_for": "300ms"},
        "failure": {"max_failed": "0", "on_failure": "rollback"},
        "labels": {"ticket": "DEMO-1"}
    })
}

fn check(ok: bool, what: &str) -> Result<(), DemoError> {
    if ok { Ok(()) } else { Err(fail(what)) }
}

/// Four free ports on loopback, for the demo's slots.
fn free_ports() -> Result<Vec<u16>, DemoError> {
    let listeners: Vec<std::net::TcpListener> = (0..4)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0").map_err(|e| fail(format!("no free port: {e}"))))
        .collect::<Result<_, _>>()?;
    listeners.iter().map(|l| l.local_addr().map(|a| a.port()).map_err(|e| fail(format!("port: {e}")))).collect()
}

/// Runs the demo: `app` is the command that starts the demo's service (`[deployd, "demo-app"]`); `--port` and
/// `--version` are added. With `data_dir`, the store is kept there; otherwise in a temporary directory removed at the
/// end. Every process the demo started is stopped before it returns, whatever happened.
///
/// # Errors
/// [`DemoError`] naming the first step that did not behave as shown.
pub async fn run(data_dir: Option<PathBuf>, app: Vec<String>) -> Result<(), DemoError> {
    let temporary = data_dir.is_none();
    let dir = data_dir
        .unwrap_or_else(|| std::env::temp_dir().join(format!("deployd-demo-{}", uuid::Uuid::now_v7().simple())));
    let key = crate::auth::generate_key().map_err(|e| fail(format!("random: {e}")))?;
    let settings = Settings {
        listen: "127.0.0.1:0".parse().map_err(|_| fail("address"))?,
        data_dir: dir.clone(),
        bootstrap_admin_key: Some(key.clone()),
        lease: deploy_core::HumanDuration::from_secs(5),
        poll_interval: deploy_core::HumanDuration::from_millis(50),
        executors: "process,command,docker".to_owned(),
        ..Settings::default()
    };
    let ports = free_ports()?;
    let targets: Vec<Value> = ports
        .iter()
        .enumerate()
        .map(|(i, port)| {
            let mut command = app.clone();
            command.extend(["--port".to_owned(), "{port}".to_owned(), "--version".to_owned(), "{version}".to_owned()]);
            json!({"id": format!("web-{}", i + 1), "labels": {"zone": if i < 2 { "a" } else { "b" }},
                   "executor": "process",
                   "config": {"command": command, "port": port, "start_timeout": "3s", "stop_timeout": "3s",
                              "env": {"DEMO_APP_UNHEALTHY_VERSIONS": "3.0"}}})
        })
        .collect();
    let running = start(settings).await.map_err(|e| fail(format!("deployd did not start: {e}")))?;
    let api =
        Api { http: reqwest::Client::new(), base: format!("http://{}", running.addr), key, started: Instant::now() };
    let mut result = story(&api, &dir, &targets, &ports).await;
    if result.is_ok() {
        result = containers(&api).await;
    }
    running.shutdown().await;
    // Leave nothing running.
    let executor = deploy_executors::ProcessExecutor::new(dir.join("process"));
    let env = deploy_core::EnvironmentName::new("demo").map_err(|e| fail(format!("name: {e}")))?;
    for t in &targets {
        let target: Result<deploy_core::EnvironmentTarget, _> =
            serde_json::from_value(json!({"id": t["id"], "labels": {}, "executor": "process", "config": t["config"],
                                          "desired": null, "actual": null}));
        if let Ok(target) = target {
            let _ = executor.stop(&deploy_core::Target::of(&env, &target)).await;
        }
    }
    let left = api.processes(&ports).await.into_iter().filter(|(_, body)| body.is_some()).count();
    if temporary {
        let _ = std::fs::remove_dir_all(&dir);
    }
    result?;
    check(left == 0, "every process the demo started is stopped")?;
    println!(
        "All demo processes stopped; ports {} are closed again.",
        ports.iter().map(u16::to_string).collect::<Vec<_>>().join(", ")
    );
    Ok(())
}

async fn story(api: &Api, dir: &std::path::Path, targets: &[Value], ports: &[u16]) -> Result<(), DemoError> {
    api.say(&format!("deployd is up at {} (SQLite in {})", api.base, dir.display()));
    let (status, headers, _) = api
        .send(
            api.http
                .put(format!("{}/v1/environments/demo", api.base))
                .json(&json!({"concurrency": "queue", "targets": targets})),
        )
        .await?;
    check(status == 201, "creating the environment answers 201")?;
    let list = ports.iter().map(u16::to_string).collect::<Vec<_>>().join(", ");
    api.say(&format!(
        "PUT /v1/environments/demo -> 201, ETag {}: 4 process slots (demo-app on ports {list}), nothing running yet",
        headers.get("etag").and_then(|v| v.to_str().ok()).unwrap_or("?")
    ));
    let mut table: Vec<(String, Value)> = Vec::new();

    // 0. The first release: every slot at once.
    api.say("0. Deploy checkout 1.0 to every slot at once");
    let mut body = request("1.0", 4, "5s");
    body["strategy"] = json!({"type": "all_at_once"});
    let (status, _, first) = api.submit(&body, "demo-1.0").await?;
    check(status == 202, "1.0 is accepted")?;
    let done = api.watch(first["id"].as_str().unwrap_or_default(), "1.0").await?;
    check(done["status"] == "succeeded", "1.0 succeeds")?;
    let up = api.processes(ports).await;
    check(up.iter().all(|(_, b)| b.as_ref().is_some_and(|b| b["version"] == "1.0")), "four processes answer as 1.0")?;
    api.say(&format!(
        "   -> succeeded: four real processes answer /health as 1.0: {}",
        api.versions().await?.join(" ")
    ));
    table.push(("first release".into(), done));

    // 1. A rolling update, two targets at a time.
    api.say("1. Roll out checkout 2.0, two targets at a time (POST /v1/deployments, Idempotency-Key: demo-2.0)");
    let body = request("2.0", 2, "5s");
    let (status, replayed, first) = api.submit(&body, "demo-2.0").await?;
    check(status == 202 && !replayed, "the submission is accepted with 202")?;
    let id = first["id"].as_str().unwrap_or_default().to_owned();
    api.say(&format!("   202 Accepted at once: deployment {id}, status {}", first["status"]));
    let done = api.watch(&id, "2.0").await?;
    check(done["status"] == "succeeded", "2.0 succeeds")?;
    api.say(&format!("   -> {}: {}", done["status"], api.versions().await?.join(" ")));
    table.push(("rolling update".into(), done));

    // 2. The same request again: a replay, not a second deployment.
    api.say("2. Send the very same request again, as a CI job retrying after a lost response would");
    let (status, replayed, again) = api.submit(&body, "demo-2.0").await?;
    check(status == 202 && replayed && again["id"] == id.as_str(), "the retry is a replay of the same deployment")?;
    api.say(&format!("   202 with Idempotent-Replayed: true, same deployment {id}: nothing deployed twice"));
    let (status, _, other) = api.submit(&request("2.5", 2, "5s"), "demo-2.0").await?;
    check(status == 422, "the same key with another body is refused")?;
    api.say(&format!("   the same key with another body: {status} {}", other["type"]));

    // 3. Two submissions racing for one environment: serialized.
    api.say("3. Two pipelines submit 2.1 and 2.2 at the same moment (environment policy: queue)");
    let (r21, r22) = (request("2.1", 4, "5s"), request("2.2", 4, "5s"));
    let (a, b) = tokio::join!(api.submit(&r21, "demo-2.1"), api.submit(&r22, "demo-2.2"));
    let (a, b) = (a?, b?);
    check(a.0 == 202 && b.0 == 202, "both racing submissions are accepted")?;
    let (a_id, b_id) =
        (a.2["id"].as_str().unwrap_or_default().to_owned(), b.2["id"].as_str().unwrap_or_default().to_owned());
    let (da, db) = tokio::join!(api.watch(&a_id, "2.1"), api.watch(&b_id, "2.2"));
    let (da, db) = (da?, db?);
    check(da["status"] == "succeeded" && db["status"] == "succeeded", "both racing deployments succeed")?;
    let (first_done, second) =
        if da["started_at"].as_str() < db["started_at"].as_str() { (&da, &db) } else { (&db, &da) };
    check(
        second["started_at"].as_str() >= first_done["finished_at"].as_str(),
        "the second starts after the first finished",
    )?;
    api.say(&format!(
        "   serialized: {} finished at {}, {} started at {}",
        first_done["version"], first_done["finished_at"], second["version"], second["started_at"]
    ));
    let last_good = second["version"].as_str().unwrap_or_default().to_owned();
    table.push(("race, first".into(), first_done.clone()));
    table.push(("race, second".into(), second.clone()));

    // 4. A broken release: verification fails, the rollout stops and rolls back on its own.
    api.say("4. Roll out 3.0, whose /health answers 503: the new process never passes its check");
    let (status, _, broken) = api.submit(&request("3.0", 2, "1s"), "demo-3.0").await?;
    check(status == 202, "the broken release is accepted")?;
    let broken_id = broken["id"].as_str().unwrap_or_default().to_owned();
    let done = api.watch(&broken_id, "3.0").await?;
    check(done["status"] == "rolled_back", "the broken release is rolled back")?;
    let versions = api.versions().await?;
    check(
        versions.iter().all(|v| v.ends_with(&format!("={last_good}"))),
        "every target runs the last good version again",
    )?;
    api.say(&format!("   -> rolled_back ({}): {}", done["status_reason"].as_str().unwrap_or(""), versions.join(" ")));
    table.push(("broken release".into(), done));

    // The summary.
    let mut out = String::new();
    let _ = writeln!(
        out,
        "\n{:<16} {:<38} {:<8} {:<12} {:>9} {:>7} {:>11}",
        "step", "deployment", "version", "status", "succeeded", "failed", "rolled back"
    );
    for (step, d) in &table {
        let _ = writeln!(
            out,
            "{:<16} {:<38} {:<8} {:<12} {:>9} {:>7} {:>11}",
            step,
            d["id"].as_str().unwrap_or(""),
            d["version"].as_str().unwrap_or(""),
            d["status"].as_str().unwrap_or(""),
            d["summary"]["succeeded"].as_u64().unwrap_or(0),
            d["summary"]["failed"].as_u64().unwrap_or(0),
            d["summary"]["rolled_back"].as_u64().unwrap_or(0)
        );
    }
    let _ = writeln!(out, "\n{:<8} {:<6} {:<8} {:>8}  answer of GET /health", "target", "port", "version", "pid");
    for (i, (port, body)) in api.processes(ports).await.into_iter().enumerate().take(targets.len()) {
        let pid = body.as_ref().and_then(|b| b["pid"].as_u64()).map_or_else(|| "-".to_owned(), |p| p.to_string());
        let answer = body.as_ref().map_or_else(|| "no answer".to_owned(), Value::to_string);
        let version = body.as_ref().and_then(|b| b["version"].as_str()).unwrap_or("-").to_owned();
        let _ = writeln!(out, "{:<8} {:<6} {:<8} {:>8}  {answer}", format!("web-{}", i + 1), port, version, pid);
    }
    println!("{out}");
    api.say("the process slots behaved as shown");
    Ok(())
}

/// The engine the container scenario uses, when one answers: `DOCKER_HOST` (a `unix://` socket) or the local one.
fn docker_engine() -> Result<String, String> {
    let host = std::env::var("DOCKER_HOST").unwrap_or_else(|_| deploy_executors::DEFAULT_ENGINE.to_owned());
    if !host.starts_with("unix://") {
        return Err(format!("DOCKER_HOST={host} is not a unix:// socket"));
    }
    let answers =
        std::process::Command::new("docker").args(["-H", &host, "version", "--format", "{{.Server.Version}}"]).output();
    match answers {
        Ok(out) if out.status.success() => {}
        Ok(_) => return Err(format!("no Docker engine answers at {host}")),
        Err(e) => return Err(format!("no docker command ({e})")),
    }
    if !std::path::Path::new("/usr/bin/busybox").exists() {
        return Err(
            "no static busybox at /usr/bin/busybox to make the demo's images from (Debian: busybox-static)".into()
        );
    }
    Ok(host)
}

/// Makes the image `deployd-demo/web:<version>` (a busybox web server answering `/health` with its version) by
/// `docker import`, so nothing is pulled.
fn demo_image(host: &str, version: &str) -> Result<String, DemoError> {
    let tag = format!("deployd-demo/web:{version}");
    let dir = std::env::temp_dir().join(format!("deployd-demo-image-{}", uuid::Uuid::now_v7().simple()));
    let io = |e: std::io::Error| fail(format!("demo image: {e}"));
    for sub in ["bin", "www"] {
        std::fs::create_dir_all(dir.join(sub)).map_err(io)?;
    }
    std::fs::copy("/usr/bin/busybox", dir.join("bin/busybox")).map_err(io)?;
    for applet in ["sh", "httpd"] {
        std::os::unix::fs::symlink("busybox", dir.join("bin").join(applet)).map_err(io)?;
    }
    std::fs::write(dir.join("www/health"), format!("{{\"version\": \"{version}\"}}")).map_err(io)?;
    let script = format!(
        "tar -C {} -cf - . | docker -H {host} import -c 'CMD [\"/bin/httpd\", \"-f\", \"-p\", \"8080\", \"-h\", \"/www\"]' - {tag}",
        dir.display()
    );
    let out = std::process::Command::new("sh").args(["-c", &script]).output().map_err(io)?;
    let _ = std::fs::remove_dir_all(&dir);
    check(out.status.success(), &format!("docker import {tag}: {}", String::from_utf8_lossy(&out.stderr).trim()))?;
    Ok(tag)
}

/// The container scenario: two `docker` targets, 1.0 then 2.0 rolled out one at a time, each answering on its port.
async fn containers(api: &Api) -> Result<(), DemoError> {
    let host = match docker_engine() {
        Ok(host) => host,
        Err(why) => {
            api.say(&format!("5. Containers: SKIPPED, {why}"));
            api.say("demo finished: every step shown behaved as shown");
            return Ok(());
        }
    };
    api.say(&format!("5. Containers: the same API in front of the Docker Engine at {host}"));
    for v in ["1.0", "2.0"] {
        demo_image(&host, v)?;
    }
    let ports = free_ports()?;
    let targets: Vec<Value> = ports
        .iter()
        .take(2)
        .enumerate()
        .map(|(i, port)| {
            json!({"id": format!("box-{}", i + 1), "executor": "docker", "config": {
                "engine": host, "image": "deployd-demo/web:{version}", "name": format!("deployd-demo-box-{}", i + 1),
                "ports": [{"container": 8080, "host": port}], "health": {"port": 8080},
                "start_timeout": "10s", "stop_timeout": "1s"}})
        })
        .collect();
    let (status, _, _) = api
        .send(api.http.put(format!("{}/v1/environments/containers", api.base)).json(&json!({"targets": targets})))
        .await?;
    check(status == 201 || status == 200, "creating the container environment answers 201")?;
    let mut result = Ok(());
    for version in ["1.0", "2.0"] {
        let mut body = request(version, 1, "10s");
        body["environment"] = json!("containers");
        let (status, _, first) = api.submit(&body, &format!("demo-containers-{version}")).await?;
        check(status == 202, "the container deployment is accepted")?;
        let done = api.watch(first["id"].as_str().unwrap_or_default(), &format!("containers {version}")).await?;
        let answers = api.processes(&ports[..2]).await;
        let all = answers.iter().all(|(_, b)| b.as_ref().is_some_and(|b| b["version"] == version));
        api.say(&format!(
            "   -> {}: {}",
            done["status"],
            answers
                .iter()
                .map(|(p, b)| format!(
                    "127.0.0.1:{p}={}",
                    b.as_ref().map_or("no answer".into(), |b| b["version"].to_string())
                ))
                .collect::<Vec<_>>()
                .join(" ")
        ));
        if done["status"] != "succeeded" || !all {
            result = Err(fail(format!("containers {version} did not succeed on every port")));
            break;
        }
    }
    // Leave nothing running.
    for i in 1..=2 {
        for name in [format!("deployd-demo-box-{i}"), format!("deployd-demo-box-{i}-previous")] {
            let _ = std::process::Command::new("docker").args(["-H", &host, "rm", "-f", &name]).output();
        }
    }
    api.say("   containers removed");
    result?;
    api.say("demo finished: every step behaved as shown");
    Ok(())
}
