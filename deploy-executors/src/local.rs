//! What the `process` and `command` executors share: local processes in their own process group, found again after a
//! restart by pid and start time, stopped gracefully; state files written atomically; the environment a deployment
//! gives a process.

use std::collections::BTreeMap;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use deploy_core::{
    ApplyContext, ConfigValue, DesiredState, ExecutorError, Scrubber, SecretError, SecretRef, SecretResolver, Target,
};
use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

/// A process started by an executor: its pid (also its process group) and the kernel's start time, so a pid reused by
/// an unrelated process is never taken for it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub(crate) struct Proc {
    pub(crate) pid: u32,
    pub(crate) start_time: u64,
}

/// The process group and start time of a live process (`None` when it does not exist or is a zombie).
fn group_and_start(pid: u32) -> Option<(u32, u64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    if fields.first().is_some_and(|s| *s == "Z" || *s == "X") {
        return None;
    }
    // After the ')': state (field 3 overall), ppid, pgrp (field 5), ..., starttime (field 22).
    Some((fields.get(2)?.parse().ok()?, fields.get(19)?.parse().ok()?))
}

/// The start time (in clock ticks since boot) of a live process; `None` when it does not exist or is a zombie.
fn start_time(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces and parentheses: the fields after it follow the last ')'.
    let rest = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    if fields.first().is_some_and(|s| *s == "Z" || *s == "X") {
        return None;
    }
    // Field 22 overall is the 20th after the ')' (state is field 3, the first).
    fields.get(19)?.parse().ok()
}

impl Proc {
    /// This process.
    pub(crate) fn current() -> Option<Self> {
        let pid = std::process::id();
        start_time(pid).map(|start_time| Self { pid, start_time })
    }

    /// The process just spawned with `pid`.
    pub(crate) async fn of(pid: u32) -> Option<Self> {
        for _ in 0..50 {
            if let Some(t) = start_time(pid) {
                return Some(Self { pid, start_time: t });
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        None
    }

    /// Whether it still runs.
    pub(crate) fn alive(&self) -> bool {
        start_time(self.pid) == Some(self.start_time)
    }

    fn signal(&self, signal: Signal) {
        if let Ok(pid) = i32::try_from(self.pid) {
            let _ = killpg(Pid::from_raw(pid), signal);
        }
    }

    /// SIGTERM to its process group, then SIGKILL once `grace` has passed; returns once it is gone.
    pub(crate) async fn stop(&self, grace: Duration) {
        if !self.alive() {
            return;
        }
        self.signal(Signal::SIGTERM);
        let deadline = tokio::time::Instant::now() + grace;
        while self.alive() && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        if self.alive() {
            self.signal(Signal::SIGKILL);
            for _ in 0..100 {
                if !self.alive() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }

    /// The live processes of its process group (itself, and every child it started that stayed in the group), the
    /// leader dead or alive. Only processes started no earlier than it count: the group's id is its pid, which the
    /// kernel gives no other process while the group has members.
    pub(crate) fn group(&self) -> Vec<u32> {
        let Ok(entries) = std::fs::read_dir("/proc") else { return Vec::new() };
        entries
            .flatten()
            .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
            .filter(|&pid| {
                group_and_start(pid).is_some_and(|(group, start)| group == self.pid && start >= self.start_time)
            })
            .collect()
    }

    /// SIGTERM to every process of its group, then SIGKILL once `grace` has passed; returns once none is left. Unlike
    /// [`Proc::stop`], acts when the leader is gone too: what a hook forked outlives it.
    pub(crate) async fn stop_group(&self, grace: Duration) {
        if self.group().is_empty() {
            return;
        }
        self.signal(Signal::SIGTERM);
        let deadline = tokio::time::Instant::now() + grace;
        while !self.group().is_empty() && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        if !self.group().is_empty() {
            self.signal(Signal::SIGKILL);
            for _ in 0..100 {
                if self.group().is_empty() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }

    /// SIGKILL to its process group at once.
    pub(crate) fn kill(&self) {
        if self.alive() {
            self.signal(Signal::SIGKILL);
        }
    }
}

/// Where a program's output goes: always through a pipe whose reader scrubs it before appending it to `log`.
pub(crate) struct Sink<'a> {
    /// The run's log file.
    pub(crate) log: &'a Path,
    /// What to scrub.
    pub(crate) scrubber: &'a Scrubber,
    /// The argv of a relay process that reads the pipe (for programs that outlive this process); `None`: a thread of
    /// this process reads it.
    pub(crate) relay: Option<&'a [String]>,
}

/// Spawns `argv` in its own process group (so the whole tree can be signalled), output scrubbed into `sink`, reaped by
/// a task of its own.
pub(crate) async fn spawn(
    argv: &[String],
    workdir: &Path,
    env: &BTreeMap<String, String>,
    sink: &Sink<'_>,
) -> Result<(Proc, Option<crate::output::Output>), ExecutorError> {
    let log = sink.log;
    let (proc, mut child, output) = spawn_child(argv, workdir, env, sink, Lifetime::Detached).await?;
    // Reap it whenever it exits, so it never lingers as a zombie.
    tokio::spawn(async move {
        let _ = child.wait().await;
    });
    let program = argv.first().map(String::as_str).unwrap_or_default();
    let proc =
        proc.ok_or_else(|| ExecutorError::permanent(format!("{program:?} exited at once (see {})", log.display())))?;
    Ok((proc, output))
}

/// What becomes of a spawned program when the process that started it dies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Lifetime {
    /// It outlives its starter: a service the `process` executor adopts again after a restart.
    Detached,
    /// It is killed (SIGKILL) when its starter dies, kill -9 included: a one-shot hook, whose work belongs to the
    /// controller that started it. What the hook itself started is not reached by this; a successor ends the hook's
    /// process group before it runs a hook on the target (see the `command` executor).
    DiesWithParent,
}

/// [`spawn`], handing the child to the caller to wait for; no [`Proc`] when it exited before it could be looked at.
/// With no relay, the reader of its output (a thread of this process) comes back too.
pub(crate) async fn spawn_child(
    argv: &[String],
    workdir: &Path,
    env: &BTreeMap<String, String>,
    sink: &Sink<'_>,
    lifetime: Lifetime,
) -> Result<(Option<Proc>, tokio::process::Child, Option<crate::output::Output>), ExecutorError> {
    let (program, args) = argv.split_first().ok_or_else(|| ExecutorError::permanent("the command is empty"))?;
    let log = sink.log;
    let cannot =
        |e: std::io::Error| ExecutorError::retryable(format!("cannot capture output into {}: {e}", log.display()));
    let (out, err, output) = match sink.relay {
        Some(relay) => {
            let (out, err) = crate::output::relay(relay, log, sink.scrubber).map_err(cannot)?;
            (out, err, None)
        }
        None => {
            let (out, err, output) = crate::output::pump(log, sink.scrubber).map_err(cannot)?;
            (out, err, Some(output))
        }
    };
    let mut cmd = tokio::process::Command::new(program);
    // Built from nothing: nothing of this process's environment (its credentials among it) reaches the program.
    cmd.args(args)
        .current_dir(workdir)
        .env_clear()
        .envs(env)
        .stdin(std::process::Stdio::null())
        .stdout(out)
        .stderr(err)
        .process_group(0)
        .kill_on_drop(false);
    if lifetime == Lifetime::DiesWithParent {
        dies_with_parent(cmd.as_std_mut());
    }
    let child = cmd.spawn().map_err(|e| ExecutorError::permanent(format!("cannot start {program:?}: {e}")))?;
    // The pipe's write ends now belong to the child alone: the reader sees the end when it and its children close it.
    drop(cmd);
    let pid = child.id().ok_or_else(|| ExecutorError::retryable("the process exited at once"))?;
    Ok((Proc::of(pid).await, child, output))
}

/// Makes the program receive SIGKILL when the thread that spawns it ends: the process, for async code (tokio spawns
/// from a worker thread, which lives as long as the runtime). The one `unsafe` of the workspace.
#[allow(unsafe_code)]
fn dies_with_parent(cmd: &mut std::process::Command) {
    use std::os::unix::process::CommandExt as _;
    let parent = nix::unistd::getpid();
    // SAFETY: the closure runs in the forked child before exec, where only async-signal-safe calls are allowed:
    // prctl(2) and getppid(2) are plain system calls, and nothing here allocates or takes a lock.
    unsafe {
        cmd.pre_exec(move || {
            nix::sys::prctl::set_pdeathsig(Signal::SIGKILL).map_err(std::io::Error::from)?;
            // The parent died between fork and prctl: the signal will never come, so do not start at all.
            if nix::unistd::getppid() != parent {
                return Err(std::io::Error::other("the process that started this hook is gone"));
            }
            Ok(())
        });
    }
}

/// Creates a directory and its missing parents readable by their owner only (0700), like everything else an executor
/// keeps under deployd's data directory.
pub(crate) fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt as _;
    std::fs::DirBuilder::new().recursive(true).mode(0o700).create(dir)
}

/// Writes a new file readable by its owner only (0600): what executors keep (state, hook output) is deployd's alone.
pub(crate) fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write as _;
    let mut file = std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(path)?;
    file.write_all(bytes)
}

/// The last `max` bytes of `text`, on a character boundary, trimmed.
pub(crate) fn tail_of(text: &str, max: usize) -> String {
    let mut start = text.len().saturating_sub(max);
    while !text.is_char_boundary(start) {
        start += 1;
    }
    text.get(start..).unwrap_or_default().trim().to_owned()
}

/// rustls needs a process-wide crypto provider before any client is built (reqwest's probes included, plain HTTP as
/// they are, and an engine's TLS): install ring's unless the process has one.
pub(crate) fn ensure_crypto_provider() {
    if rustls::crypto::CryptoProvider::get_default().is_none() {
        let _ = rustls::crypto::ring::default_provider().install_default();
    }
}

/// The HTTP client of health probes, built from `builder` once a crypto provider is installed.
pub(crate) fn probe_client(builder: reqwest::ClientBuilder) -> reqwest::Client {
    ensure_crypto_provider();
    builder.build().unwrap_or_default()
}

/// `PATH` of every program an executor starts, unless the target's `env` sets its own.
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// The prefix of a deployment's `config` keys in a program's environment.
pub const CONFIG_PREFIX: &str = "DEPLOY_CONFIG_";

/// The prefix of a deployment's `secrets` in a program's environment.
pub const SECRET_PREFIX: &str = "DEPLOY_SECRET_";

/// A variable of a target's `env`: a literal, or a reference resolved when the program starts.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(untagged)]
pub enum EnvValue {
    /// The value as written.
    Literal(String),
    /// `{"ref": "scheme://location"}`, resolved for each call and never written anywhere.
    Secret {
        /// The reference.
        #[serde(rename = "ref")]
        reference: String,
    },
}

/// The environment of a program an executor starts, and what must be scrubbed from what it prints.
#[derive(Debug, Clone, Default)]
pub(crate) struct ProgramEnv {
    pub(crate) vars: BTreeMap<String, String>,
    pub(crate) scrubber: Scrubber,
}

/// The name a deployment's `config` key or secret gets: the prefix, then the key with `-` and `.` as `_`.
fn prefixed(prefix: &str, key: &str) -> String {
    let mut name = String::with_capacity(prefix.len() + key.len());
    name.push_str(prefix);
    name.extend(key.chars().map(|c| if c == '-' || c == '.' { '_' } else { c }));
    name
}

/// The environment of a program an executor starts, built from nothing: none of the executor's own process is
/// inherited. In order, later entries winning:
/// 1. `PATH` ([`DEFAULT_PATH`]) and the `DEPLOY_*` facts (`DEPLOY_ENVIRONMENT`, `DEPLOY_TARGET`, `DEPLOY_SERVICE`,
///    `DEPLOY_VERSION`, `DEPLOY_DEPLOYMENT`, `DEPLOY_FENCING_TOKEN`);
/// 2. the deployment's `config` as `DEPLOY_CONFIG_<KEY>` and its `secrets` as `DEPLOY_SECRET_<NAME>` (resolved for
///    this call only), never under a name the caller chose;
/// 3. the target's own `env`, which only an admin sets: what the admin sets always wins. Its references are resolved
///    with `resolver`.
///
/// `call` is the deployment and the secrets resolved for it; a health probe has none.
pub(crate) async fn environment(
    target: &Target,
    desired: &DesiredState,
    call: Option<ApplyContext<'_>>,
    own: &BTreeMap<String, EnvValue>,
    resolver: &dyn SecretResolver,
) -> Result<ProgramEnv, ExecutorError> {
    let mut vars = BTreeMap::new();
    vars.insert("PATH".to_owned(), DEFAULT_PATH.to_owned());
    vars.insert("DEPLOY_ENVIRONMENT".into(), target.environment.to_string());
    vars.insert("DEPLOY_TARGET".into(), target.id.to_string());
    vars.insert("DEPLOY_SERVICE".into(), desired.service.to_string());
    vars.insert("DEPLOY_VERSION".into(), desired.version.to_string());
    let mut scrubber = Scrubber::default();
    if let Some(ctx) = call {
        vars.insert("DEPLOY_DEPLOYMENT".into(), ctx.deployment.to_string());
        // A hook that changes shared state can keep the largest token it has seen and refuse a smaller one.
        vars.insert("DEPLOY_FENCING_TOKEN".into(), ctx.fencing_token.to_string());
        let mut from_caller = BTreeMap::new();
        let mut add = |name: String, key: &str, value: String| match from_caller.insert(name.clone(), value) {
            None => Ok(()),
            Some(_) => Err(ExecutorError::permanent(format!(
                "the deployment's key {key:?} and another become the same variable {name}; rename one"
            ))),
        };
        for (key, value) in &ctx.desired.config {
            let name = prefixed(CONFIG_PREFIX, key);
            match value {
                ConfigValue::Literal(v) => {
                    let text = match v {
                        serde_json::Value::String(s) => s.clone(),
                        other => other.to_string(),
                    };
                    add(name, key, text)?;
                }
                ConfigValue::Secret(_) => {
                    if let Some(secret) = ctx.secrets.get(key) {
                        add(name, key, secret.expose().to_owned())?;
                    }
                }
            }
        }
        for key in ctx.desired.secrets.keys() {
            if let Some(secret) = ctx.secrets.get(key) {
                add(prefixed(SECRET_PREFIX, key), key, secret.expose().to_owned())?;
            }
        }
        scrubber = Scrubber::of(ctx.secrets);
        vars.extend(from_caller);
    }
    let mut resolved = Vec::new();
    for (name, value) in own {
        let text = match value {
            EnvValue::Literal(v) => v.clone(),
            EnvValue::Secret { reference } => {
                let r = SecretRef::parse(reference.as_str())
                    .map_err(|e| ExecutorError::permanent(format!("target {} env {name}: {e}", target.id)))?;
                let secret = resolver.resolve(&r).await.map_err(|e| match e {
                    SecretError::Unavailable { .. } => {
                        ExecutorError::retryable(format!("target {} env {name}: {e}", target.id))
                    }
                    _ => {
                        ExecutorError::permanent(format!("target {} env {name} could not be resolved: {e}", target.id))
                    }
                })?;
                let text = secret.expose().to_owned();
                resolved.push(secret);
                text
            }
        };
        vars.insert(name.clone(), text);
    }
    if !resolved.is_empty() {
        scrubber = scrubber.and(&Scrubber::new(resolved.iter()));
    }
    if let Some(bad) = vars.keys().find(|k| k.is_empty() || k.contains('=') || k.contains('\0')) {
        return Err(ExecutorError::permanent(format!("{bad:?} cannot be an environment variable name")));
    }
    if let Some((bad, _)) = vars.iter().find(|(_, v)| v.contains('\0')) {
        return Err(ExecutorError::permanent(format!("the value of {bad} holds a NUL byte")));
    }
    Ok(ProgramEnv { vars, scrubber })
}

/// Reads a JSON state file; a missing file is the default state.
pub(crate) fn load<T: DeserializeOwned + Default>(path: &Path) -> Result<T, ExecutorError> {
    match std::fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map_err(|e| ExecutorError::permanent(format!("corrupt state file {}: {e}", path.display()))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(T::default()),
        Err(e) => Err(ExecutorError::retryable(format!("cannot read {}: {e}", path.display()))),
    }
}

/// Writes a JSON state file atomically (a temporary file renamed over it).
pub(crate) fn save<T: Serialize>(path: &Path, value: &T) -> Result<(), ExecutorError> {
    let fail = |e: std::io::Error| ExecutorError::retryable(format!("cannot write {}: {e}", path.display()));
    if let Some(dir) = path.parent() {
        create_private_dir(dir).map_err(fail)?;
    }
    let bytes = serde_json::to_vec_pretty(value).map_err(|e| ExecutorError::permanent(e.to_string()))?;
    let tmp = path.with_extension("tmp");
    write_private(&tmp, &bytes).map_err(fail)?;
    std::fs::rename(&tmp, path).map_err(fail)
}

/// `<root>/<environment>/<target>`.
pub(crate) fn target_dir(root: &Path, target: &Target) -> PathBuf {
    root.join(target.environment.as_str()).join(target.id.as_str())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn this_process_has_a_start_time_and_a_dead_one_none() {
        let me = start_time(std::process::id());
        assert!(me.is_some());
        assert_eq!(start_time(u32::MAX - 1), None);
        let stale = Proc { pid: std::process::id(), start_time: me.unwrap() + 1 };
        assert!(!stale.alive(), "a reused pid is not the process we started");
    }

    #[test]
    fn tails_respect_character_boundaries() {
        assert_eq!(tail_of("héllo wörld", 4), "rld");
        assert_eq!(tail_of("  short  ", 100), "short");
    }
}
