//! `deploy-agent`: the agent of one target, on the target's host.
//!
//! ```text
//! DEPLOY_URL=http://deployd:8080 DEPLOY_AGENT_TOKEN=dk_... deploy-agent --environment prod --target web-1 \
//!     --executor process --config '{"command": ["/opt/app/{version}/app", "--port", "{port}"], "port": 8080}'
//! ```

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context as _;
use clap::Parser;
use deploy_agent::{Agent, AgentConfig};
use deploy_core::{Executor, HumanDuration, ShutdownSignal};

/// The agent of one target: pulls its assignment from deployd, applies it with a local executor, reports back.
#[derive(Debug, Parser)]
#[command(name = "deploy-agent", version)]
struct Cli {
    /// The server.
    #[arg(long, env = "DEPLOY_URL", default_value = "http://127.0.0.1:8080")]
    server: String,
    /// The agent's key (an API key with role `agent`, bound to this target).
    #[arg(long, env = "DEPLOY_AGENT_TOKEN", hide_env_values = true)]
    token: String,
    /// The target's environment.
    #[arg(long, env = "DEPLOY_AGENT_ENVIRONMENT")]
    environment: String,
    /// The target.
    #[arg(long, env = "DEPLOY_AGENT_TARGET")]
    target: String,
    /// The local executor: `process`, `command` or `docker`.
    #[arg(long, env = "DEPLOY_AGENT_EXECUTOR")]
    executor: String,
    /// The local executor's configuration for the target, as JSON (or `@file.json`).
    #[arg(long, env = "DEPLOY_AGENT_CONFIG")]
    config: String,
    /// Where the agent keeps what it applied, and its executor's state.
    #[arg(long, env = "DEPLOY_AGENT_STATE_DIR", default_value = "deploy-agent-state")]
    state_dir: PathBuf,
    /// How often it reports (its heartbeat).
    #[arg(long, env = "DEPLOY_AGENT_HEARTBEAT", default_value = "2s")]
    heartbeat: HumanDuration,
    /// Allow `http://` to a server other than this machine (the agent's key would cross the network in clear).
    #[arg(long, env = "DEPLOY_AGENT_INSECURE_HTTP")]
    insecure_http: bool,
    /// Trust the CA certificate(s) in this PEM file besides the system's.
    #[arg(long, env = "DEPLOY_AGENT_CA_FILE")]
    ca_file: Option<PathBuf>,
    /// The agent's client certificate and private key (one PEM file), for a deployd started with --tls-client-ca.
    #[arg(long, env = "DEPLOY_AGENT_IDENTITY")]
    identity: Option<PathBuf>,
    /// How long the server holds one assignment poll.
    #[arg(long, env = "DEPLOY_AGENT_POLL_WAIT", default_value = "20s")]
    poll_wait: HumanDuration,
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let config_text = match cli.config.strip_prefix('@') {
        Some(path) => std::fs::read_to_string(path).with_context(|| format!("reading {path}"))?,
        None => cli.config.clone(),
    };
    let executor_config: serde_json::Value = serde_json::from_str(&config_text).context("--config is not JSON")?;
    let mut config = AgentConfig::new(&cli.environment, &cli.target, &cli.executor, executor_config, &cli.state_dir)?;
    config.heartbeat = cli.heartbeat.as_std();
    config.poll_wait = cli.poll_wait.as_std();
    let executor: Arc<dyn Executor> = match cli.executor.as_str() {
        "process" => Arc::new(deploy_executors::ProcessExecutor::new(cli.state_dir.join("process"))),
        "command" => Arc::new(deploy_executors::CommandExecutor::new(cli.state_dir.join("command"))),
        // The container host's own engine (or the one the config names): a sidecar on a Docker host.
        "docker" => Arc::new(deploy_executors::DockerExecutor::new()),
        other => anyhow::bail!("--executor {other}: use process, command or docker"),
    };
    let mut client = deploy_client::Client::builder(&cli.server)
        .token(cli.token)
        .insecure_http(cli.insecure_http)
        .timeout(cli.poll_wait.as_std() + std::time::Duration::from_secs(10));
    if let Some(path) = &cli.ca_file {
        client =
            client.root_certificates_pem(std::fs::read(path).with_context(|| format!("reading {}", path.display()))?);
    }
    if let Some(path) = &cli.identity {
        client = client.identity_pem(std::fs::read(path).with_context(|| format!("reading {}", path.display()))?);
    }
    let client = client.build()?;
    let (trigger, signal) = ShutdownSignal::new();
    tokio::spawn(async move {
        #[cfg(unix)]
        if let Ok(mut term) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
            trigger.fire();
            return;
        }
        let _ = tokio::signal::ctrl_c().await;
        trigger.fire();
    });
    println!("deploy-agent: {}/{} via {} ({} executor)", cli.environment, cli.target, cli.server, cli.executor);
    Agent::new(client, config, executor).run(signal).await?;
    Ok(())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("DEPLOY_AGENT_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let runtime = match tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("deploy-agent: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("deploy-agent: {e:#}");
            ExitCode::FAILURE
        }
    }
}
