//! Running a command: calls through `deploy-client`, output as `human` or `json`, the live view of a rollout.

use std::collections::BTreeMap;
use std::io::IsTerminal as _;
use std::path::Path;
use std::time::Duration;

use clap::CommandFactory as _;
use deploy_client::{AuditFilter, Client, DeploymentFilter, NewWebhook, Revision, SubmitOptions};
use deploy_core::{
    Deployment, DeploymentId, DeploymentRequest, DeploymentStatus, EnvironmentPattern, EnvironmentSpec, Event,
    EventStatus, EventType, HumanDuration, PageRequest, Role,
};
use futures::StreamExt as _;
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde::Serialize;
use serde_json::{Value, json};

use crate::args::{Cli, Command, DeployArgs, EnvCommand, FreezeCommand, KeysCommand, Output, WebhooksCommand};
use crate::render;

/// `println!` that does not panic when standard output is closed (`deployctl list | head`), with every control
/// character but line breaks and tabs escaped: nothing a server sends reaches the terminal as a control sequence.
macro_rules! say {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout(), "{}", render::terminal(&format!($($arg)*)));
    }};
}

/// `eprintln!`, escaped like [`say!`].
macro_rules! tell {
    ($($arg:tt)*) => {{
        eprintln!("{}", render::terminal(&format!($($arg)*)));
    }};
}

/// Why a command failed (exit code 1).
#[derive(Debug)]
pub(crate) enum CliError {
    /// The command line or a file is wrong.
    Usage(String),
    /// A call failed.
    Client {
        /// Why.
        source: deploy_client::Error,
        /// The server.
        url: String,
    },
}

type Result<T> = std::result::Result<T, CliError>;

struct Ctx {
    client: Client,
    url: String,
    output: Output,
}

impl Ctx {
    fn fail(&self) -> impl Fn(deploy_client::Error) -> CliError + '_ {
        |source| CliError::Client { source, url: self.url.clone() }
    }

    /// Prints `value` as JSON, or `human` for people.
    fn print<T: Serialize>(&self, value: &T, human: impl FnOnce() -> String) -> Result<()> {
        match self.output {
            Output::Json => say!("{}", to_json(value)?),
            Output::Human => say!("{}", human()),
        }
        Ok(())
    }
}

fn to_json<T: Serialize>(value: &T) -> Result<String> {
    serde_json::to_string_pretty(value).map_err(|e| CliError::Usage(format!("cannot print JSON: {e}")))
}

fn deployment_id(raw: &str) -> Result<DeploymentId> {
    raw.parse().map_err(|_| CliError::Usage(format!("{raw:?} is not a deployment id")))
}

fn uuid(raw: &str, what: &str) -> Result<uuid::Uuid> {
    uuid::Uuid::parse_str(raw).map_err(|_| CliError::Usage(format!("{raw:?} is not {what} id")))
}

/// Reads a JSON or YAML file: by its extension (`.json`; `.yaml`, `.yml`), else JSON if it parses as JSON, else YAML
/// (YAML's flow style, `{strategy: {type: canary}}`, starts with `{` too).
fn read_document(path: &Path) -> Result<Value> {
    let text =
        std::fs::read_to_string(path).map_err(|e| CliError::Usage(format!("cannot read {}: {e}", path.display())))?;
    parse_document(path, &text)
}

fn parse_document(path: &Path, text: &str) -> Result<Value> {
    let fail = |e: &dyn std::fmt::Display| CliError::Usage(format!("{}: {e}", path.display()));
    let extension = path.extension().and_then(|e| e.to_str()).map(str::to_ascii_lowercase);
    match extension.as_deref() {
        Some("json") => serde_json::from_str(text).map_err(|e| fail(&e)),
        Some("yaml" | "yml") => serde_yaml_ng::from_str(text).map_err(|e| fail(&e)),
        _ => serde_json::from_str(text).or_else(|_| serde_yaml_ng::from_str(text).map_err(|e| fail(&e))),
    }
}

fn pairs(items: &[String], what: &str) -> Result<BTreeMap<String, String>> {
    items
        .iter()
        .map(|item| {
            item.split_once('=')
                .map(|(k, v)| (k.trim().to_owned(), v.to_owned()))
                .ok_or_else(|| CliError::Usage(format!("{what} {item:?}: use KEY=VALUE")))
        })
        .collect()
}

/// `all`, `rolling:25%`, `rolling:2`, `canary:10,50,100`.
fn strategy(raw: &str) -> Result<Value> {
    let (kind, arg) = raw.split_once(':').unwrap_or((raw, ""));
    match kind {
        "all" | "all_at_once" => Ok(json!({"type": "all_at_once"})),
        "rolling" if arg.is_empty() => Ok(json!({"type": "rolling"})),
        "rolling" => Ok(json!({"type": "rolling", "batch_size": arg})),
        "canary" => {
            let steps: std::result::Result<Vec<Value>, _> =
                arg.split(',').map(|p| p.trim().parse::<i64>().map(|percent| json!({"percent": percent}))).collect();
            let steps = steps.map_err(|_| CliError::Usage(format!("--strategy {raw}: use canary:10,50,100")))?;
            Ok(json!({"type": "canary", "steps": steps}))
        }
        _ => Err(CliError::Usage(format!("--strategy {raw}: use all, rolling:25%, rolling:2 or canary:10,50,100"))),
    }
}

/// The request the `deploy` flags describe (over `--file`, if given).
fn deploy_request(args: &DeployArgs) -> Result<DeploymentRequest> {
    let mut body = match &args.file {
        Some(f) => read_document(f)?,
        None => json!({}),
    };
    let Some(map) = body.as_object_mut() else {
        return Err(CliError::Usage("the request file must hold an object".into()));
    };
    for (field, value) in [("environment", &args.env), ("service", &args.service), ("version", &args.version)] {
        if let Some(v) = value {
            map.insert(field.into(), json!(v));
        }
    }
    if let Some(s) = &args.strategy {
        map.insert("strategy".into(), strategy(s)?);
    }
    if !args.target.is_empty() {
        map.insert("targets".into(), json!({"ids": args.target}));
    }
    for (k, v) in pairs(&args.config, "--config")? {
        map.entry("config").or_insert_with(|| json!({}))[&k] = json!(v);
    }
    for (k, v) in pairs(&args.secrets, "--secret")? {
        map.entry("secrets").or_insert_with(|| json!({}))[&k] = json!({"ref": v});
    }
    for (k, v) in pairs(&args.labels, "--label")? {
        map.entry("labels").or_insert_with(|| json!({}))[&k] = json!(v);
    }
    if args.max_failed.is_some() || args.on_failure.is_some() {
        let failure = map.entry("failure").or_insert_with(|| json!({}));
        if let Some(m) = &args.max_failed {
            failure["max_failed"] = json!(m);
        }
        if let Some(o) = &args.on_failure {
            failure["on_failure"] = json!(o);
        }
    }
    serde_json::from_value(body).map_err(|e| CliError::Usage(format!("invalid deployment request: {e}")))
}

/// Runs the command; the exit code on success.
pub(crate) async fn run(cli: Cli) -> Result<u8> {
    if let Command::Completions { shell } = &cli.command {
        clap_complete::generate(*shell, &mut Cli::command(), "deployctl", &mut std::io::stdout());
        return Ok(0);
    }
    let mut builder = Client::builder(&cli.server).insecure_http(cli.insecure_http);
    if let Some(t) = &cli.token {
        builder = builder.token(t);
    }
    if let Some(path) = &cli.ca_file {
        let pem = std::fs::read(path)
            .map_err(|e| CliError::Usage(format!("--ca-file {}: cannot read it: {e}", path.display())))?;
        builder = builder.root_certificates_pem(pem);
    }
    let client = builder.build().map_err(|source| CliError::Client { source, url: cli.server.clone() })?;
    let ctx = Ctx { client, url: cli.server.clone(), output: cli.output };
    match cli.command {
        Command::Deploy(args) => deploy(&ctx, &args).await,
        Command::Status { id } => {
            let d = ctx.client.get_deployment(deployment_id(&id)?).await.map_err(ctx.fail())?;
            ctx.print(&d, || render::deployment(&d))?;
            Ok(render::exit_code(d.status()))
        }
        Command::List { env, service, status, limit } => {
            let status = status
                .map(|s| serde_json::from_value::<DeploymentStatus>(json!(s)))
                .transpose()
                .map_err(|_| CliError::Usage("--status: queued, in_progress, succeeded, degraded, failed, rolling_back, rolled_back, cancelled or superseded".into()))?;
            let query = DeploymentFilter { environment: env, service, status };
            let page = ctx
                .client
                .list_deployments(&query, &PageRequest { limit: limit.clamp(1, 500), cursor: None })
                .await
                .map_err(ctx.fail())?;
            ctx.print(&page, || render::deployments(&page.items))?;
            Ok(0)
        }
        Command::Watch { id } => {
            let d = follow(&ctx, deployment_id(&id)?, true).await?;
            Ok(render::exit_code(d.status()))
        }
        Command::Cancel { id } => {
            let d = ctx.client.cancel(deployment_id(&id)?).await.map_err(ctx.fail())?;
            ctx.print(&d, || format!("Cancellation requested for {} (now {}).", d.id(), d.status()))?;
            Ok(0)
        }
        Command::Rollback { id, wait, idempotency_key } => {
            let s = ctx.client.rollback(deployment_id(&id)?, idempotency_key).await.map_err(ctx.fail())?;
            let new = s.deployment.id();
            if wait {
                let d = follow(&ctx, new, false).await?;
                return Ok(render::exit_code(d.status()));
            }
            ctx.print(&s.deployment, || format!("Rollback {new} accepted: it returns the targets {id} changed."))?;
            Ok(0)
        }
        Command::Approve { id, comment } => decide(&ctx, &id, false, comment.as_deref()).await,
        Command::Reject { id, comment } => decide(&ctx, &id, true, comment.as_deref()).await,
        Command::Override { id, reason } => {
            let d = ctx.client.override_schedule(deployment_id(&id)?, &reason).await.map_err(ctx.fail())?;
            ctx.print(&d, || format!("{} may start despite windows and freezes (now {}).", d.id(), d.status()))?;
            Ok(0)
        }
        Command::Freeze(cmd) => freeze(&ctx, cmd).await,
        Command::History { name, limit } => env(&ctx, EnvCommand::History { name, limit }).await,
        Command::Pause { id } => operate(&ctx, &id, deploy_core::OperatorAction::Pause).await,
        Command::Resume { id } => operate(&ctx, &id, deploy_core::OperatorAction::Resume).await,
        Command::Promote { id, full } => operate(&ctx, &id, deploy_core::OperatorAction::Promote { full }).await,
        Command::Abort { id, rollback, no_rollback } => {
            let rollback = if rollback {
                Some(true)
            } else if no_rollback {
                Some(false)
            } else {
                None
            };
            operate(&ctx, &id, deploy_core::OperatorAction::Abort { rollback }).await
        }
        Command::Retry { id, wait, idempotency_key } => {
            let s = ctx.client.retry(deployment_id(&id)?, idempotency_key).await.map_err(ctx.fail())?;
            let new = s.deployment.id();
            if wait {
                let d = follow(&ctx, new, false).await?;
                return Ok(render::exit_code(d.status()));
            }
            let n = s.deployment.targets().len();
            ctx.print(&s.deployment, || format!("Retry {new} accepted: {n} failed target(s) of {id} again."))?;
            Ok(0)
        }
        Command::Env(cmd) => env(&ctx, cmd).await,
        Command::Keys(cmd) => keys(&ctx, cmd).await,
        Command::Webhooks(cmd) => webhooks(&ctx, cmd).await,
        Command::Audit { actor, env, limit } => {
            let page = ctx
                .client
                .audit(
                    &AuditFilter { actor, environment: env },
                    &PageRequest { limit: limit.clamp(1, 500), cursor: None },
                )
                .await
                .map_err(ctx.fail())?;
            ctx.print(&page, || {
                let rows: Vec<Vec<String>> = page
                    .items
                    .iter()
                    .map(|e| {
                        vec![
                            render::time(e.at),
                            e.actor.clone(),
                            e.action.clone(),
                            e.resource.clone(),
                            e.environment.clone().unwrap_or_default(),
                            e.outcome.clone(),
                        ]
                    })
                    .collect();
                render::table(&["at", "actor", "action", "resource", "environment", "outcome"], &rows)
            })?;
            Ok(0)
        }
        Command::Completions { .. } => Ok(0),
    }
}

async fn deploy(ctx: &Ctx, args: &DeployArgs) -> Result<u8> {
    let request = deploy_request(args)?;
    let timeout: HumanDuration =
        args.timeout.parse().map_err(|e| CliError::Usage(format!("--timeout {}: {e}", args.timeout)))?;
    let options =
        SubmitOptions { idempotency_key: args.idempotency_key.clone(), if_match: args.if_match.map(Revision::new) };
    let s = ctx.client.submit(&request, options).await.map_err(ctx.fail())?;
    let id = s.deployment.id();
    if !args.wait {
        ctx.print(&s.deployment, || {
            let replay = if s.replayed { " (a replay of the same request: nothing new was deployed)" } else { "" };
            format!("Deployment {id} accepted{replay}.\nFollow it with: deployctl watch {id}")
        })?;
        return Ok(0);
    }
    if ctx.output == Output::Human && s.replayed {
        tell!("Deployment {id} was already submitted with this idempotency key; following it.");
    }
    match tokio::time::timeout(timeout.as_std(), follow(ctx, id, false)).await {
        Ok(done) => Ok(render::exit_code(done?.status())),
        Err(_) => {
            let last = ctx.client.get_deployment(id).await.map_err(ctx.fail())?;
            Err(CliError::Client { source: deploy_client::Error::WaitTimedOut(Box::new(last)), url: ctx.url.clone() })
        }
    }
}

/// Follows a deployment to its end: a live view (human) or its events (json, with `print_events`); prints the final
/// deployment and returns it.
async fn follow(ctx: &Ctx, id: DeploymentId, print_events: bool) -> Result<Deployment> {
    let start = ctx.client.get_deployment(id).await.map_err(ctx.fail())?;
    let mut view = (ctx.output == Output::Human).then(|| LiveView::new(&start));
    let mut events = std::pin::pin!(ctx.client.watch(id, 0));
    while let Some(event) = events.next().await {
        let event = event.map_err(ctx.fail())?;
        match &mut view {
            Some(v) => v.on(&event),
            None if print_events => say!("{}", serde_json::to_string(&event).unwrap_or_default()),
            None => {}
        }
    }
    let done = ctx.client.get_deployment(id).await.map_err(ctx.fail())?;
    if let Some(v) = view {
        v.finish(&done);
    }
    if ctx.output == Output::Json && print_events {
        return Ok(done);
    }
    ctx.print(&done, || render::deployment(&done))?;
    Ok(done)
}

/// The live view: an overall bar and one line per target on a terminal; event lines otherwise. On standard error,
/// so standard output holds only the summary.
struct LiveView {
    multi: MultiProgress,
    overall: ProgressBar,
    targets: BTreeMap<String, (ProgressBar, String)>,
    tty: bool,
}

/// Whether a target's event says it is done (within this rollout or its rollback).
fn finished(status: &EventStatus) -> bool {
    matches!(status, EventStatus::Target(s) if s.is_settled())
}

impl LiveView {
    fn new(d: &Deployment) -> Self {
        let tty = std::io::stderr().is_terminal();
        let target = if tty { ProgressDrawTarget::stderr() } else { ProgressDrawTarget::hidden() };
        let multi = MultiProgress::with_draw_target(target);
        let total = d.summary().total;
        let overall = multi.add(ProgressBar::new(total));
        if let Ok(style) =
            ProgressStyle::with_template("{prefix:.bold} [{bar:32.cyan/blue}] {pos}/{len} targets  {msg}")
        {
            overall.set_style(style.progress_chars("=> "));
        }
        overall.set_prefix(format!("{} {} → {}", d.service(), d.version(), d.environment()));
        overall.set_message(d.status().to_string());
        let mut targets = BTreeMap::new();
        let style = ProgressStyle::with_template("  {spinner} {prefix:<16} {msg}").ok();
        for t in d.targets() {
            let bar = multi.add(ProgressBar::new_spinner());
            if let Some(s) = &style {
                bar.set_style(s.clone());
            }
            bar.set_prefix(t.id.to_string());
            let versions = match &t.from_version {
                Some(from) => format!("{from} → {}", t.to_version),
                None => format!("→ {}", t.to_version),
            };
            bar.set_message(format!("{versions}  {}", t.status));
            if tty {
                bar.enable_steady_tick(Duration::from_millis(120));
            }
            targets.insert(t.id.to_string(), (bar, versions));
        }
        if !tty {
            tell!("Following {} ({} {} to {}, {total} targets)", d.id(), d.service(), d.version(), d.environment());
        }
        Self { multi, overall, targets, tty }
    }

    fn on(&mut self, event: &Event) {
        if !self.tty {
            let target = event.target_id.as_ref().map(|t| format!(" {t}")).unwrap_or_default();
            tell!("  {} {}{target}: {}", render::time(event.at), event.event_type.as_str(), event.message);
        }
        if event.event_type == EventType::TargetUpdated {
            let Some(id) = &event.target_id else { return };
            if let Some((bar, versions)) = self.targets.get(id.as_str()) {
                bar.set_message(format!("{versions}  {}  {}", event.status, event.message));
                if finished(&event.status) {
                    bar.finish();
                }
            }
            let done = self.targets.values().filter(|(b, _)| b.is_finished()).count();
            self.overall.set_position(done as u64);
        } else {
            self.overall.set_message(event.status.to_string());
        }
    }

    fn finish(self, d: &Deployment) {
        for (bar, _) in self.targets.values() {
            bar.finish();
        }
        self.overall.finish_with_message(d.status().to_string());
        let _ = self.multi.clear();
    }
}

async fn env(ctx: &Ctx, cmd: EnvCommand) -> Result<u8> {
    match cmd {
        EnvCommand::Get { name } => {
            let e = ctx.client.get_environment(&name).await.map_err(ctx.fail())?;
            ctx.print(&e, || render::environment(&e))?;
        }
        EnvCommand::Put { name, file, if_match } => {
            let spec: EnvironmentSpec = serde_json::from_value(read_document(&file)?)
                .map_err(|e| CliError::Usage(format!("{}: not an environment: {e}", file.display())))?;
            let e = ctx.client.put_environment(&name, &spec, if_match.map(Revision::new)).await.map_err(ctx.fail())?;
            ctx.print(&e, || format!("Environment {} is at revision {}.", e.name, e.revision))?;
        }
        EnvCommand::List => {
            let all: Vec<_> = ctx.client.environments().collect().await;
            let all = all.into_iter().collect::<std::result::Result<Vec<_>, _>>().map_err(ctx.fail())?;
            ctx.print(&all, || {
                let rows: Vec<Vec<String>> = all
                    .iter()
                    .map(|e| {
                        vec![
                            e.name.to_string(),
                            e.revision.to_string(),
                            render::word(&e.concurrency),
                            e.targets.len().to_string(),
                            e.active_deployment.map(|d| d.to_string()).unwrap_or_default(),
                        ]
                    })
                    .collect();
                render::table(&["name", "revision", "concurrency", "targets", "active"], &rows)
            })?;
        }
        EnvCommand::Rollback { name, to, wait, idempotency_key } => {
            let s = ctx.client.rollback_environment(&name, &to, idempotency_key).await.map_err(ctx.fail())?;
            let new = s.deployment.id();
            if wait {
                let d = follow(ctx, new, false).await?;
                return Ok(render::exit_code(d.status()));
            }
            ctx.print(&s.deployment, || {
                format!("Rollback {new} of {name} to {} accepted ({to}).", s.deployment.version())
            })?;
        }
        EnvCommand::History { name, limit } => {
            let page = PageRequest { limit: limit.clamp(1, 500), cursor: None };
            let page = ctx.client.history(&name, &page).await.map_err(ctx.fail())?;
            ctx.print(&page, || {
                let rows: Vec<Vec<String>> = page
                    .items
                    .iter()
                    .map(|r| {
                        vec![
                            r.deployment_id.to_string(),
                            r.version.to_string(),
                            r.status.to_string(),
                            r.submitted_by.clone(),
                            r.approved_by.join(", "),
                            render::time(r.started_at),
                            r.duration_ms.map(|ms| format!("{:.1}s", ms as f64 / 1000.0)).unwrap_or_default(),
                            match (r.rollback_of, r.retry_of) {
                                (Some(of), _) => format!("rollback of {of}"),
                                (None, Some(of)) => format!("retry of {of}"),
                                (None, None) => String::new(),
                            },
                        ]
                    })
                    .collect();
                render::table(
                    &["deployment", "version", "status", "submitted by", "approved by", "started", "took", "of"],
                    &rows,
                )
            })?;
        }
    }
    Ok(0)
}

async fn keys(ctx: &Ctx, cmd: KeysCommand) -> Result<u8> {
    match cmd {
        KeysCommand::Create { name, role, environments, owner } => {
            let role: Role = serde_json::from_value(json!(role))
                .map_err(|_| CliError::Usage(format!("--role {role}: viewer, deployer, approver or admin")))?;
            let patterns = if environments.is_empty() { vec!["*".to_owned()] } else { environments };
            let patterns = patterns
                .iter()
                .map(|p| EnvironmentPattern::new(p).map_err(|e| CliError::Usage(format!("--env {p}: {e}"))))
                .collect::<Result<Vec<_>>>()?;
            let k = ctx.client.create_api_key_of(&name, role, &patterns, owner.as_deref()).await.map_err(ctx.fail())?;
            ctx.print(&k, || {
                format!(
                    "Created key {} ({}). The key, shown only now:\n{}",
                    k.name,
                    k.id,
                    k.key.clone().unwrap_or_default()
                )
            })?;
        }
        KeysCommand::List => {
            let all = ctx.client.list_api_keys().await.map_err(ctx.fail())?;
            ctx.print(&all, || {
                let rows: Vec<Vec<String>> = all
                    .iter()
                    .map(|k| {
                        let envs: Vec<&str> = k.environments.iter().map(EnvironmentPattern::as_str).collect();
                        vec![
                            k.id.to_string(),
                            k.name.clone(),
                            render::word(&k.role),
                            envs.join(","),
                            render::time(k.created_at),
                        ]
                    })
                    .collect();
                render::table(&["id", "name", "role", "environments", "created"], &rows)
            })?;
        }
        KeysCommand::Delete { id } => {
            ctx.client.delete_api_key(uuid(&id, "a key")?).await.map_err(ctx.fail())?;
            ctx.print(&json!({"deleted": id}), || format!("Key {id} revoked."))?;
        }
    }
    Ok(0)
}

async fn webhooks(ctx: &Ctx, cmd: WebhooksCommand) -> Result<u8> {
    match cmd {
        WebhooksCommand::Create { url, events, environments } => {
            let events = if events.is_empty() { vec!["*".to_owned()] } else { events };
            let w = ctx.client.create_webhook(&NewWebhook { url, events, environments }).await.map_err(ctx.fail())?;
            ctx.print(&w, || {
                format!(
                    "Subscribed {} ({}). Its signing secret, shown only now:\n{}",
                    w.url,
                    w.id,
                    w.secret.clone().unwrap_or_default()
                )
            })?;
        }
        WebhooksCommand::List => {
            let all = ctx.client.list_webhooks().await.map_err(ctx.fail())?;
            ctx.print(&all, || {
                let rows: Vec<Vec<String>> = all
                    .iter()
                    .map(|w| {
                        let state = if w.active {
                            "active".to_owned()
                        } else {
                            format!("disabled: {}", w.disabled_reason.clone().unwrap_or_default())
                        };
                        vec![w.id.to_string(), w.url.clone(), w.events.join(","), w.environments.join(","), state]
                    })
                    .collect();
                render::table(&["id", "url", "events", "environments", "state"], &rows)
            })?;
        }
        WebhooksCommand::Get { id } => {
            let w = ctx.client.get_webhook(uuid(&id, "a webhook")?).await.map_err(ctx.fail())?;
            ctx.print(&w, || to_json(&w).unwrap_or_default())?;
        }
        WebhooksCommand::Delete { id } => {
            ctx.client.delete_webhook(uuid(&id, "a webhook")?).await.map_err(ctx.fail())?;
            ctx.print(&json!({"deleted": id}), || format!("Subscription {id} deleted."))?;
        }
        WebhooksCommand::Deliveries { id, limit } => {
            let page = ctx
                .client
                .deliveries(uuid(&id, "a webhook")?, &PageRequest { limit: limit.clamp(1, 500), cursor: None })
                .await
                .map_err(ctx.fail())?;
            ctx.print(&page, || {
                let rows: Vec<Vec<String>> = page
                    .items
                    .iter()
                    .map(|d| {
                        vec![
                            d.id.clone(),
                            d.event_type.as_str().to_owned(),
                            d.deployment_id.to_string(),
                            render::word(&d.status),
                            d.attempts.to_string(),
                            d.last_status_code.map(|c| c.to_string()).unwrap_or_default(),
                        ]
                    })
                    .collect();
                render::table(&["id", "event", "deployment", "status", "attempts", "last status"], &rows)
            })?;
        }
        WebhooksCommand::Redeliver { id, delivery } => {
            let d = ctx.client.redeliver(uuid(&id, "a webhook")?, &delivery).await.map_err(ctx.fail())?;
            ctx.print(&d, || format!("Delivery {} is pending again.", d.id))?;
        }
    }
    Ok(0)
}

/// `deployctl freeze show|set|lift`.
async fn freeze(ctx: &Ctx, cmd: FreezeCommand) -> Result<u8> {
    let shown = |f: Option<&deploy_core::Freeze>| match f {
        Some(f) => {
            let until = f.until.map_or_else(|| "until lifted".to_owned(), |u| format!("until {}", render::time(u)));
            format!("Frozen since {} by {} ({}), {until}.", render::time(f.since), f.by, f.reason)
        }
        None => "Not frozen.".to_owned(),
    };
    match cmd {
        FreezeCommand::Show => {
            let f = ctx.client.global_freeze().await.map_err(ctx.fail())?;
            ctx.print(&f, || shown(f.as_ref()))?;
        }
        FreezeCommand::Set { reason, until } => {
            let until = until
                .map(|u| {
                    deploy_core::Timestamp::parse(&u, &time::format_description::well_known::Rfc3339)
                        .map_err(|e| CliError::Usage(format!("--until {u:?} is not an RFC 3339 time: {e}")))
                })
                .transpose()?;
            let f = ctx.client.set_global_freeze(&reason, until).await.map_err(ctx.fail())?;
            ctx.print(&f, || shown(Some(&f)))?;
        }
        FreezeCommand::Lift => {
            ctx.client.lift_freeze().await.map_err(ctx.fail())?;
            ctx.print(&json!({"frozen": false}), || "Freeze lifted.".to_owned())?;
        }
    }
    Ok(0)
}

/// Records an approver's decision and prints where the deployment stands.
async fn decide(ctx: &Ctx, id: &str, reject: bool, comment: Option<&str>) -> Result<u8> {
    let id = deployment_id(id)?;
    let d = if reject { ctx.client.reject(id, comment).await } else { ctx.client.approve(id, comment).await };
    let d = d.map_err(ctx.fail())?;
    ctx.print(&d, || {
        let verb = if reject { "Rejected" } else { "Approved" };
        let rule = d.protection().map_or(0, |p| p.required_approvals);
        let approvals = d.approved_by().count();
        format!("{verb} {} ({approvals} of {rule} approval(s)); it is now {}.", d.id(), d.status())
    })?;
    Ok(0)
}

/// Records an operator's request and prints the deployment as the server answered it.
async fn operate(ctx: &Ctx, id: &str, action: deploy_core::OperatorAction) -> Result<u8> {
    let d = ctx.client.control(deployment_id(id)?, action).await.map_err(ctx.fail())?;
    ctx.print(&d, || {
        format!(
            "{} requested for {} (now {}); it takes effect at the next safe point.",
            action.name(),
            d.id(),
            d.status()
        )
    })?;
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Finding of the governance trial: the README's own `canary.yaml`, in YAML's flow style, was read as JSON
    /// because it starts with `{`, and failed ("key must be a string").
    #[test]
    fn yaml_in_flow_style_reads_as_yaml() {
        let flow = "{strategy: {type: canary, steps: [{percent: 10, pause: until_promoted}, {percent: 100}]},\n  pause_deadline: 4h}\n";
        for name in ["canary.yaml", "canary.yml", "canary"] {
            let doc = parse_document(Path::new(name), flow).unwrap();
            assert_eq!(doc["strategy"]["steps"][0]["pause"], "until_promoted", "{name}");
            assert_eq!(doc["pause_deadline"], "4h");
        }
        let json = parse_document(Path::new("d.json"), "{\"version\": \"2.0\"}").unwrap();
        assert_eq!(json["version"], "2.0");
        assert!(parse_document(Path::new("d.json"), "{version: 2}").is_err(), "a .json file is JSON");
    }

    #[test]
    fn strategies_read_as_the_api_writes_them() {
        assert_eq!(strategy("all").ok(), Some(json!({"type": "all_at_once"})));
        assert_eq!(strategy("rolling:25%").ok(), Some(json!({"type": "rolling", "batch_size": "25%"})));
        assert_eq!(
            strategy("canary:10,100").ok(),
            Some(json!({"type": "canary", "steps": [{"percent": 10}, {"percent": 100}]}))
        );
        assert!(strategy("canary:ten").is_err());
        assert!(strategy("blue-green").is_err());
    }
}
