//! The command line, as clap reads it.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};
use deploy_core::{EnvironmentName, IdempotencyKey, ServiceName};

/// Deploy through the Deployment API: submit, watch, cancel and roll back deployments, manage environments, keys and
/// webhooks.
///
/// Exit codes: 0 succeeded, 2 degraded, 3 failed or rolled back, 4 cancelled (an abort without rollback too),
/// superseded or rejected, 1 usage, transport or server errors.
#[derive(Debug, Parser)]
#[command(name = "deployctl", version)]
pub(crate) struct Cli {
    /// The server's URL.
    #[arg(long, env = "DEPLOY_URL", default_value = "http://127.0.0.1:8080", global = true)]
    pub(crate) server: String,
    /// The credential: an API key (`dk_...`) or a JWT.
    #[arg(long, env = "DEPLOY_TOKEN", hide_env_values = true, global = true)]
    pub(crate) token: Option<String>,
    /// Allow `http://` to a host other than this machine (the token would cross the network in clear).
    #[arg(long, env = "DEPLOY_INSECURE_HTTP", global = true)]
    pub(crate) insecure_http: bool,
    /// Trust the CA certificate(s) in this PEM file besides the system's (a private CA that signed deployd's).
    #[arg(long, env = "DEPLOY_CA_FILE", global = true)]
    pub(crate) ca_file: Option<PathBuf>,
    /// `human` (tables, a live view) or `json` (for machines; one JSON document, or one event per line).
    #[arg(long, short, value_enum, default_value_t = Output::Human, global = true)]
    pub(crate) output: Output,
    /// The command.
    #[command(subcommand)]
    pub(crate) command: Command,
}

/// How results are printed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum Output {
    /// For people.
    Human,
    /// For machines.
    Json,
}

#[derive(Debug, Subcommand)]
pub(crate) enum Command {
    /// Submit a deployment (safe to retry: an idempotency key is sent, generated unless given).
    Deploy(Box<DeployArgs>),
    /// Show a deployment (the exit code follows its outcome once it is finished).
    Status {
        /// The deployment id.
        id: String,
    },
    /// List deployments, newest first.
    List {
        /// Only this environment.
        #[arg(long)]
        env: Option<EnvironmentName>,
        /// Only this service.
        #[arg(long)]
        service: Option<ServiceName>,
        /// Only this status (`queued`, `in_progress`, `succeeded`, ...).
        #[arg(long)]
        status: Option<String>,
        /// At most this many.
        #[arg(long, default_value_t = 20)]
        limit: usize,
    },
    /// Follow a deployment live until it finishes (the exit code follows its outcome).
    Watch {
        /// The deployment id.
        id: String,
    },
    /// Ask for a deployment to be cancelled (at its next batch boundary).
    Cancel {
        /// The deployment id.
        id: String,
    },
    /// Roll a finished deployment back: every target it changed returns to its former version.
    Rollback {
        /// The deployment id.
        id: String,
        /// Follow the rollback until it finishes.
        #[arg(long)]
        wait: bool,
        /// The idempotency key (default: generated).
        #[arg(long)]
        idempotency_key: Option<IdempotencyKey>,
    },
    /// Approve a deployment waiting for approval in a protected environment.
    Approve {
        /// The deployment id.
        id: String,
        /// Why (recorded and shown to every reader).
        #[arg(long, short = 'm')]
        comment: Option<String>,
    },
    /// Reject a deployment waiting for approval: it ends `rejected`.
    Reject {
        /// The deployment id.
        id: String,
        /// Why (recorded and shown to every reader).
        #[arg(long, short = 'm')]
        comment: Option<String>,
    },
    /// Let a deployment that has not started start despite windows and freezes (admins; the reason is recorded).
    Override {
        /// The deployment id.
        id: String,
        /// Why (required).
        #[arg(long)]
        reason: String,
    },
    /// The releases that ran in an environment, newest first (the same as `env history`).
    History {
        /// The environment.
        name: EnvironmentName,
        /// How many (1 to 500).
        #[arg(long, default_value_t = 20)]
        limit: usize,
    },
    /// The global freeze: show it, set it (no deployment starts anywhere), or lift it.
    #[command(subcommand)]
    Freeze(FreezeCommand),
    /// Pause a deployment at its next safe point (between batches or canary steps); it keeps the environment.
    Pause {
        /// The deployment id.
        id: String,
    },
    /// Resume a paused deployment.
    Resume {
        /// The deployment id.
        id: String,
    },
    /// Promote a canary: the step that waits to be promoted goes on.
    Promote {
        /// The deployment id.
        id: String,
        /// Skip every remaining step: the rest of the targets go in one batch.
        #[arg(long)]
        full: bool,
    },
    /// Abort a deployment at its next safe point.
    Abort {
        /// The deployment id.
        id: String,
        /// Roll changed targets back (default: as the deployment's failure policy says).
        #[arg(long, conflicts_with = "no_rollback")]
        rollback: bool,
        /// Leave changed targets as they are.
        #[arg(long)]
        no_rollback: bool,
    },
    /// Retry the failed and unreachable targets of a degraded or failed deployment (a new deployment).
    Retry {
        /// The deployment id.
        id: String,
        /// Follow the retry until it finishes.
        #[arg(long)]
        wait: bool,
        /// The idempotency key (default: generated).
        #[arg(long)]
        idempotency_key: Option<IdempotencyKey>,
    },
    /// Environments: their targets, desired and actual state.
    #[command(subcommand)]
    Env(EnvCommand),
    /// API keys (admin).
    #[command(subcommand)]
    Keys(KeysCommand),
    /// Webhook subscriptions and their deliveries (admin).
    #[command(subcommand)]
    Webhooks(WebhooksCommand),
    /// The audit log, newest first (admin).
    Audit {
        /// Only this actor (`key:ci-bot`).
        #[arg(long)]
        actor: Option<String>,
        /// Only this environment.
        #[arg(long)]
        env: Option<String>,
        /// At most this many.
        #[arg(long, default_value_t = 50)]
        limit: usize,
    },
    /// Print a shell completion script.
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
}

#[derive(Debug, Args)]
pub(crate) struct DeployArgs {
    /// The environment.
    #[arg(long, required_unless_present = "file")]
    pub(crate) env: Option<String>,
    /// The service.
    #[arg(long, required_unless_present = "file")]
    pub(crate) service: Option<String>,
    /// The version.
    #[arg(long, required_unless_present = "file")]
    pub(crate) version: Option<String>,
    /// The whole request from a JSON or YAML file; the flags above override its fields.
    #[arg(long)]
    pub(crate) file: Option<PathBuf>,
    /// `all`, `rolling:25%`, `rolling:2` or `canary:10,50,100`.
    #[arg(long)]
    pub(crate) strategy: Option<String>,
    /// Only these targets (repeat, or comma-separate).
    #[arg(long, value_delimiter = ',')]
    pub(crate) target: Vec<String>,
    /// Configuration `KEY=VALUE` (repeat).
    #[arg(long = "config", value_name = "KEY=VALUE")]
    pub(crate) config: Vec<String>,
    /// A secret reference `KEY=scheme://location` (repeat); never a secret value.
    #[arg(long = "secret", value_name = "KEY=REF")]
    pub(crate) secrets: Vec<String>,
    /// Failed targets tolerated: a count or a percentage.
    #[arg(long)]
    pub(crate) max_failed: Option<String>,
    /// `rollback` (default) or `fail`.
    #[arg(long)]
    pub(crate) on_failure: Option<String>,
    /// A label `KEY=VALUE` (repeat).
    #[arg(long = "label", value_name = "KEY=VALUE")]
    pub(crate) labels: Vec<String>,
    /// The idempotency key (default: generated).
    #[arg(long)]
    pub(crate) idempotency_key: Option<IdempotencyKey>,
    /// Submit only if the environment is still at this revision.
    #[arg(long)]
    pub(crate) if_match: Option<u64>,
    /// Follow the deployment until it finishes; the exit code follows its outcome.
    #[arg(long)]
    pub(crate) wait: bool,
    /// With `--wait`: give up after this long (`30m`, `2h`); exit 1.
    #[arg(long, default_value = "1h")]
    pub(crate) timeout: String,
}

/// `deployctl freeze ...`.
#[derive(Debug, Subcommand)]
pub(crate) enum FreezeCommand {
    /// Whether a global freeze holds, who set it and why.
    Show,
    /// Freeze every environment now (admins of every environment).
    Set {
        /// Why (required; shown in every held deployment's reason).
        #[arg(long)]
        reason: String,
        /// When it lifts by itself (RFC 3339); default: when lifted.
        #[arg(long)]
        until: Option<String>,
    },
    /// Lift the global freeze.
    Lift,
}

#[derive(Debug, Subcommand)]
pub(crate) enum EnvCommand {
    /// Show an environment.
    Get {
        /// Its name.
        name: EnvironmentName,
    },
    /// Create or replace an environment from a JSON or YAML file.
    Put {
        /// Its name.
        name: EnvironmentName,
        /// The file (`{"concurrency": ..., "targets": [...]}`).
        #[arg(long, short)]
        file: PathBuf,
        /// Replace only at this revision.
        #[arg(long)]
        if_match: Option<u64>,
    },
    /// List environments.
    List,
    /// Roll an environment back to a chosen release: a new deployment of it.
    Rollback {
        /// Its name.
        name: EnvironmentName,
        /// `previous`, a deployment id, or a version.
        #[arg(long, default_value = "previous")]
        to: deploy_core::RollbackTo,
        /// Wait for the rollback to finish; the exit code says how it ended.
        #[arg(long)]
        wait: bool,
        /// The idempotency key (one rollback per key).
        #[arg(long)]
        idempotency_key: Option<IdempotencyKey>,
    },
    /// The releases that ran in an environment, newest first: who submitted each, how it ended, how long it ran.
    History {
        /// Its name.
        name: EnvironmentName,
        /// How many (1 to 500).
        #[arg(long, default_value_t = 20)]
        limit: usize,
    },
}

#[derive(Debug, Subcommand)]
pub(crate) enum KeysCommand {
    /// Create a key; it is printed once.
    Create {
        /// Its name; the principal is `key:<name>`.
        #[arg(long)]
        name: String,
        /// `viewer`, `deployer`, `approver` or `admin`.
        #[arg(long)]
        role: String,
        /// Environment patterns (repeat; default `*`).
        #[arg(long = "env")]
        environments: Vec<String>,
        /// The person it belongs to (their tokens' subject): approvals count people, not keys.
        #[arg(long)]
        owner: Option<String>,
    },
    /// List keys (never the keys themselves).
    List,
    /// Revoke a key.
    Delete {
        /// Its id.
        id: String,
    },
}

#[derive(Debug, Subcommand)]
pub(crate) enum WebhooksCommand {
    /// Subscribe; the signing secret is printed once.
    Create {
        /// Where deliveries go.
        #[arg(long)]
        url: String,
        /// Event types or patterns (repeat; default `*`).
        #[arg(long = "event")]
        events: Vec<String>,
        /// Environment patterns (repeat; default: every environment).
        #[arg(long = "env")]
        environments: Vec<String>,
    },
    /// List subscriptions.
    List,
    /// Show a subscription.
    Get {
        /// Its id.
        id: String,
    },
    /// Delete a subscription and its pending deliveries.
    Delete {
        /// Its id.
        id: String,
    },
    /// A subscription's deliveries, newest first.
    Deliveries {
        /// The subscription id.
        id: String,
        /// At most this many.
        #[arg(long, default_value_t = 50)]
        limit: usize,
    },
    /// Send a delivery again, with the same `webhook-id`.
    Redeliver {
        /// The subscription id.
        id: String,
        /// The delivery id.
        delivery: String,
    },
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_command_line_is_consistent() {
        use clap::CommandFactory as _;
        super::Cli::command().debug_assert();
    }
}
