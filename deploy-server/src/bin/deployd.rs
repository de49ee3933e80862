//! `deployd`: the Deployment API server.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Args, Parser, Subcommand};
use deploy_core::HumanDuration;
use deploy_server::Settings;

/// The Deployment API server.
#[derive(Debug, Parser)]
#[command(name = "deployd", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

// Parsed once at start-up; the size of the variants does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Subcommand)]
enum Command {
    /// Serve the API and run the controller.
    Serve(ServeArgs),
    /// Start the API on a fresh embedded store with four real processes of the demo's service and show a first
    /// release, a rolling update, an idempotent replay, two racing submissions and an automatic rollback, all through the
    /// HTTP API. Stops every process it started; exits non-zero if a step misbehaves.
    Demo {
        /// Keep the store in this directory (default: a temporary directory, removed at the end).
        #[arg(long)]
        data_dir: Option<PathBuf>,
    },
    /// Reads a `process` service's output on stdin, scrubs it of the values deployd hands it, and appends it to `log`.
    /// Started by deployd itself; not for people.
    #[command(hide = true)]
    LogRelay {
        /// The log file.
        log: PathBuf,
    },
    /// The demo's service: `/health` reports the version (503 for versions listed as unhealthy). The demo deploys it.
    DemoApp {
        /// The port on 127.0.0.1 (shared with an older version during a handover).
        #[arg(long, env = "PORT")]
        port: u16,
        /// The version it reports.
        #[arg(long, env = "DEMO_APP_VERSION")]
        version: String,
        /// Versions whose health check fails, comma-separated.
        #[arg(long, env = "DEMO_APP_UNHEALTHY_VERSIONS", value_delimiter = ',')]
        unhealthy_versions: Vec<String>,
    },
}

/// Every setting is optional here: a flag beats a `DEPLOYD_*` variable, which beats the `--config` file, which beats
/// the default.
#[derive(Debug, Args)]
struct ServeArgs {
    /// A TOML file with any of the settings below (snake_case keys).
    #[arg(long, env = "DEPLOYD_CONFIG")]
    config: Option<PathBuf>,
    /// Address to listen on [default: 127.0.0.1:8080].
    #[arg(long, env = "DEPLOYD_LISTEN")]
    listen: Option<SocketAddr>,
    /// Data directory for the embedded SQLite store and the sim executor [default: ./deployd-data].
    #[arg(long, env = "DEPLOYD_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// PostgreSQL instead of the embedded store (postgres://...). Prefer --database-url-file: a URL's password
    /// given here is visible to anyone who can list processes.
    #[arg(long, env = "DEPLOYD_DATABASE_URL", hide_env_values = true)]
    database_url: Option<String>,
    /// A file whose first line is the PostgreSQL URL.
    #[arg(long, env = "DEPLOYD_DATABASE_URL_FILE")]
    database_url_file: Option<PathBuf>,
    /// PostgreSQL: the longest a statement or a wait for a connection may take [default: 5s].
    #[arg(long, env = "DEPLOYD_DATABASE_TIMEOUT")]
    database_timeout: Option<HumanDuration>,
    /// Enable the `sim` executor (for demos and tests).
    #[arg(long, env = "DEPLOYD_DEV", num_args = 0..=1, default_missing_value = "true")]
    dev: Option<bool>,
    /// Require an Idempotency-Key on submissions.
    #[arg(long, env = "DEPLOYD_REQUIRE_IDEMPOTENCY_KEY", num_args = 0..=1, default_missing_value = "true")]
    require_idempotency_key: Option<bool>,
    /// Requests per second per principal [default: 100].
    #[arg(long, env = "DEPLOYD_RATE_LIMIT")]
    rate_limit: Option<f64>,
    /// Request burst per principal [default: 200].
    #[arg(long, env = "DEPLOYD_RATE_LIMIT_BURST")]
    rate_limit_burst: Option<f64>,
    /// Longest time to answer a request [default: 30s].
    #[arg(long, env = "DEPLOYD_REQUEST_TIMEOUT")]
    request_timeout: Option<HumanDuration>,
    /// How long a claim on a deployment lasts without renewal [default: 15s].
    #[arg(long, env = "DEPLOYD_LEASE")]
    lease: Option<HumanDuration>,
    /// How often an idle controller looks for work [default: 500ms].
    #[arg(long, env = "DEPLOYD_POLL_INTERVAL")]
    poll_interval: Option<HumanDuration>,
    /// Deployments this replica drives at once [default: 16].
    #[arg(long, env = "DEPLOYD_MAX_CONCURRENT_DEPLOYMENTS")]
    max_concurrent_deployments: Option<usize>,
    /// HS256 secret for JWT bearer tokens.
    #[arg(long, env = "DEPLOYD_JWT_HS256_SECRET", hide_env_values = true)]
    jwt_hs256_secret: Option<String>,
    /// A file whose first line is the HS256 secret.
    #[arg(long, env = "DEPLOYD_JWT_HS256_SECRET_FILE")]
    jwt_hs256_secret_file: Option<PathBuf>,
    /// PEM file with the Ed25519 public key for JWT bearer tokens.
    #[arg(long, env = "DEPLOYD_JWT_EDDSA_PUBLIC_KEY")]
    jwt_eddsa_public_key: Option<PathBuf>,
    /// Required `iss` claim.
    #[arg(long, env = "DEPLOYD_JWT_ISSUER")]
    jwt_issuer: Option<String>,
    /// Required `aud` claim.
    #[arg(long, env = "DEPLOYD_JWT_AUDIENCE")]
    jwt_audience: Option<String>,
    /// The claim naming the person a token speaks for [default: sub]; an API key's `owner` names the same person.
    #[arg(long, env = "DEPLOYD_JWT_IDENTITY_CLAIM")]
    jwt_identity_claim: Option<String>,
    /// The admin key created on first start (instead of a random one, printed once).
    #[arg(long, env = "DEPLOYD_BOOTSTRAP_ADMIN_KEY", hide_env_values = true)]
    bootstrap_admin_key: Option<String>,
    /// A file whose first line is the bootstrap admin key.
    #[arg(long, env = "DEPLOYD_BOOTSTRAP_ADMIN_KEY_FILE")]
    bootstrap_admin_key_file: Option<PathBuf>,
    /// `env://NAME` references resolve only variables named with this prefix [default: DEPLOY_SECRET_].
    #[arg(long, env = "DEPLOYD_SECRET_ENV_PREFIX")]
    secret_env_prefix: Option<String>,
    /// `file://NAME` references resolve files inside this directory.
    #[arg(long, env = "DEPLOYD_SECRETS_DIR")]
    secrets_dir: Option<PathBuf>,
    /// The largest deployment accepted, in bytes of its spec [default: 65536].
    #[arg(long, env = "DEPLOYD_MAX_DEPLOYMENT_BYTES")]
    max_deployment_bytes: Option<usize>,
    /// Targets a response carries inline; the rest are paged from `GET .../targets` [default: 500].
    #[arg(long, env = "DEPLOYD_TARGETS_PER_RESPONSE")]
    targets_per_response: Option<usize>,
    /// Unfinished deployments one submitter may have at once; 0 for no limit [default: 64].
    #[arg(long, env = "DEPLOYD_QUOTA_OPEN_DEPLOYMENTS")]
    quota_open_deployments: Option<u64>,
    /// Bytes of deployment records one submitter may store per --quota-window; 0 for no limit [default: 67108864].
    #[arg(long, env = "DEPLOYD_QUOTA_BYTES")]
    quota_bytes: Option<u64>,
    /// The window of --quota-bytes [default: 24h].
    #[arg(long, env = "DEPLOYD_QUOTA_WINDOW")]
    quota_window: Option<HumanDuration>,
    /// The most targets one environment may have [default: 20000].
    #[arg(long, env = "DEPLOYD_MAX_TARGETS_PER_ENVIRONMENT")]
    max_targets_per_environment: Option<usize>,
    /// Secret references every environment may resolve, comma-separated: exact references or prefixes ending in `*`
    /// (`env://DEPLOY_SECRET_SHARED_*`). Each environment adds its own `secret_scope` [default: none].
    #[arg(long, env = "DEPLOYD_GLOBAL_SECRET_SCOPE")]
    global_secret_scope: Option<String>,
    /// An agent silent for longer than this makes its target unreachable (default 15s).
    #[arg(long, env = "DEPLOYD_AGENT_HEARTBEAT_TIMEOUT")]
    agent_heartbeat_timeout: Option<HumanDuration>,
    /// Executor kinds that run real things, comma-separated: `process`, `command`, `docker`, `swarm`, `deployd` (default
    /// `process,command`; empty for none).
    #[arg(long, env = "DEPLOYD_EXECUTORS")]
    executors: Option<String>,
    /// Where the process and command executors keep their state [default: the data directory]. Replicas acting on
    /// the same hosts share it.
    #[arg(long, env = "DEPLOYD_EXECUTOR_STATE_DIR")]
    executor_state_dir: Option<PathBuf>,
    /// Delays between webhook delivery attempts, comma-separated (default `1s,5s,5m,30m,2h,5h,10h,14h,20h,24h`).
    #[arg(long, env = "DEPLOYD_WEBHOOK_RETRY_SCHEDULE")]
    webhook_retry_schedule: Option<String>,
    /// The longest one webhook attempt may take (default 10s).
    #[arg(long, env = "DEPLOYD_WEBHOOK_TIMEOUT")]
    webhook_timeout: Option<HumanDuration>,
    /// Webhook attempts in flight at once (default 64).
    #[arg(long, env = "DEPLOYD_WEBHOOK_CONCURRENCY")]
    webhook_concurrency: Option<usize>,
    /// Webhook attempts in flight at once to one subscription (default 8).
    #[arg(long, env = "DEPLOYD_WEBHOOK_CONCURRENCY_PER_SUBSCRIPTION")]
    webhook_concurrency_per_subscription: Option<usize>,
    /// Webhooks may reach these CIDR blocks even where refused by default or by the deny list (comma-separated).
    #[arg(long, env = "DEPLOYD_WEBHOOK_ALLOW_CIDRS")]
    webhook_allow_cidrs: Option<String>,
    /// Webhooks may not reach these CIDR blocks (comma-separated); link-local and metadata addresses never.
    #[arg(long, env = "DEPLOYD_WEBHOOK_DENY_CIDRS")]
    webhook_deny_cidrs: Option<String>,
    /// Seal webhook signing secrets at rest with the key in this file (32 random bytes, hex or base64).
    #[arg(long, env = "DEPLOYD_WEBHOOK_SECRETS_KEY_FILE")]
    webhook_secrets_key_file: Option<PathBuf>,
    /// Serve HTTPS with this certificate chain (PEM; reloaded when the file changes). Needs --tls-key.
    #[arg(long, env = "DEPLOYD_TLS_CERT")]
    tls_cert: Option<PathBuf>,
    /// The TLS private key (PEM).
    #[arg(long, env = "DEPLOYD_TLS_KEY")]
    tls_key: Option<PathBuf>,
    /// Verify client certificates (agents') against this CA (PEM) when presented.
    #[arg(long, env = "DEPLOYD_TLS_CLIENT_CA")]
    tls_client_ca: Option<PathBuf>,
    /// Refuse TLS clients without a certificate from --tls-client-ca.
    #[arg(long, env = "DEPLOYD_TLS_REQUIRE_CLIENT_CERT", num_args = 0..=1, default_missing_value = "true")]
    tls_require_client_cert: Option<bool>,
    /// Requests per second per client address, before authentication [default: 200; 0 for none].
    #[arg(long, env = "DEPLOYD_IP_RATE_LIMIT")]
    ip_rate_limit: Option<f64>,
    /// Request burst per client address [default: 400].
    #[arg(long, env = "DEPLOYD_IP_RATE_LIMIT_BURST")]
    ip_rate_limit_burst: Option<f64>,
    /// Reverse proxies whose X-Forwarded-For names the client for the per-address limit (CIDRs, comma-separated).
    #[arg(long, env = "DEPLOYD_TRUSTED_PROXIES")]
    trusted_proxies: Option<String>,
    /// A connection must send a whole request head within this [default: 10s].
    #[arg(long, env = "DEPLOYD_HEADER_READ_TIMEOUT")]
    header_read_timeout: Option<HumanDuration>,
    /// Connections open at once [default: 4096].
    #[arg(long, env = "DEPLOYD_MAX_CONNECTIONS")]
    max_connections: Option<usize>,
    /// Connections open at once from one client address [default: 512].
    #[arg(long, env = "DEPLOYD_MAX_CONNECTIONS_PER_IP")]
    max_connections_per_ip: Option<usize>,
    /// Event streams open at once [default: 1024].
    #[arg(long, env = "DEPLOYD_MAX_STREAMS")]
    max_streams: Option<usize>,
    /// Event streams open at once per principal [default: 32].
    #[arg(long, env = "DEPLOYD_MAX_STREAMS_PER_PRINCIPAL")]
    max_streams_per_principal: Option<usize>,
}

impl ServeArgs {
    fn settings(self) -> anyhow::Result<Settings> {
        let mut s = match &self.config {
            Some(path) => {
                let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
                toml::from_str::<Settings>(&text).with_context(|| format!("parsing {}", path.display()))?
            }
            None => Settings::default(),
        };
        macro_rules! take {
            ($($field:ident),*) => { $( if let Some(v) = self.$field { s.$field = v; } )* };
        }
        macro_rules! take_opt {
            ($($field:ident),*) => { $( if self.$field.is_some() { s.$field = self.$field; } )* };
        }
        take!(listen, data_dir, dev, require_idempotency_key, rate_limit, rate_limit_burst, request_timeout, lease);
        take!(poll_interval, max_concurrent_deployments, webhook_retry_schedule, webhook_timeout, webhook_concurrency);
        take!(webhook_concurrency_per_subscription, executors, agent_heartbeat_timeout, secret_env_prefix);
        take_opt!(database_url, jwt_hs256_secret, jwt_eddsa_public_key, jwt_issuer, jwt_audience, bootstrap_admin_key);
        take_opt!(database_url_file, jwt_hs256_secret_file, bootstrap_admin_key_file, secrets_dir, executor_state_dir);
        take_opt!(tls_cert, tls_key, tls_client_ca, webhook_secrets_key_file, jwt_identity_claim);
        take!(webhook_allow_cidrs, webhook_deny_cidrs, tls_require_client_cert, ip_rate_limit, ip_rate_limit_burst);
        take!(header_read_timeout, max_connections, max_connections_per_ip, max_streams, max_streams_per_principal);
        take!(database_timeout, trusted_proxies, global_secret_scope, max_targets_per_environment);
        take!(max_deployment_bytes, quota_open_deployments, quota_bytes, quota_window, targets_per_response);
        Ok(s)
    }
}

async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let mut settings = args.settings()?;
    // `process` services' output is read by this binary's `log-relay`, which outlives a restart of deployd.
    if settings.log_relay.is_none() {
        settings.log_relay = std::env::current_exe().ok();
    }
    let store = settings
        .database_url
        .as_ref()
        .map_or_else(|| format!("SQLite in {}", settings.data_dir.display()), |_| "PostgreSQL".to_owned());
    let running = deploy_server::start(settings).await.context("deployd could not start")?;
    if let Some(key) = &running.bootstrap_key {
        println!("deployd: created the bootstrap admin API key (shown only now): {key}");
    }
    let scheme = if running.tls { "https" } else { "http" };
    println!("deployd: listening on {scheme}://{} ({store})", running.addr);
    let trigger = running.trigger();
    tokio::spawn(async move {
        deploy_server::terminated().await;
        eprintln!("deployd: shutting down: no new work is claimed; in-flight work is left resumable");
        trigger.fire();
    });
    running.wait().await;
    Ok(())
}

/// The demo prints its own timeline; the server's log would drown it.
fn default_log(cli: &Cli) -> &'static str {
    match cli.command {
        Command::Demo { .. } | Command::DemoApp { .. } | Command::LogRelay { .. } => "warn",
        Command::Serve(_) => "info",
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // The relay logs nothing and needs no runtime: it copies stdin to its log until every writer is gone.
    if let Command::LogRelay { log } = &cli.command {
        return match deploy_executors::run_log_relay(log) {
            Ok(()) => ExitCode::SUCCESS,
            Err(_) => ExitCode::FAILURE,
        };
    }
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("DEPLOYD_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_log(&cli))),
        )
        .with_writer(std::io::stderr)
        .init();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("deployd: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Serve(args) => serve(args).await,
            Command::Demo { data_dir } => {
                let exe = std::env::current_exe().context("locating deployd for the demo's service")?;
                let app = vec![exe.display().to_string(), "demo-app".to_owned()];
                deploy_server::demo::run(data_dir, app).await.map_err(anyhow::Error::from)
            }
            Command::LogRelay { .. } => Ok(()),
            Command::DemoApp { port, version, unhealthy_versions } => {
                let app = deploy_server::demo_app::DemoApp { port, version, unhealthy_versions };
                deploy_server::demo_app::serve(app, deploy_server::terminated())
                    .await
                    .with_context(|| format!("demo-app on port {port}"))
            }
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("deployd: {e:#}");
            ExitCode::FAILURE
        }
    }
}
