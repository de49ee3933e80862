//! The `command` executor: the team's own hook scripts, run per target for each lifecycle stage.

use std::collections::BTreeMap;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::PathBuf;

use async_trait::async_trait;
use deploy_core::{
    ApplyContext, DeploymentId, DesiredState, EnvSecretResolver, Executor, ExecutorError, Health, HumanDuration,
    ImperativeStep, Observation, Outcome, SecretResolver, Target, Version,
};
use serde::{Deserialize, Serialize};
use std::sync::Arc;

use crate::local::{self, EnvValue, Proc, ProgramEnv};

/// The stages a declarative apply runs, in order (each only if the target configures it).
pub const APPLY_STAGES: [&str; 5] = ["stop", "before_install", "install", "after_install", "start"];

/// The stage that verifies health (exit 0 is healthy); without it a target is healthy once applied.
pub const VALIDATE_STAGE: &str = "validate";

/// Output kept from a hook, from its end.
const OUTPUT_LIMIT: usize = 4096;

/// How long a hook's output may take to end after the hook exited before its tail is taken.
const OUTPUT_GRACE: std::time::Duration = std::time::Duration::from_millis(250);

/// A hook: a shell command line (run with `sh -c`) or a program and its arguments.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(untagged)]
pub enum Hook {
    /// `sh -c <line>`.
    Shell(String),
    /// A program and its arguments.
    Argv(Vec<String>),
}

/// A `command` target's configuration.
///
/// ```json
/// {"hooks": {"stop": "systemctl stop app", "install": ["/opt/hooks/install.sh"], "validate": "curl -fsS localhost/health"},
///  "timeout": "60s", "env": {"APP_HOME": "/opt/app"}}
/// ```
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CommandConfig {
    /// Hooks by stage: `stop`, `before_install`, `install`, `after_install`, `start`, `validate`, or any name an
    /// imperative step asks for.
    pub hooks: BTreeMap<String, Hook>,
    /// The longest one hook may run; it is killed (its whole process group) after that.
    #[serde(default = "default_timeout")]
    pub timeout: HumanDuration,
    /// The working directory (default: the executor's state directory for the target).
    #[serde(default)]
    pub workdir: Option<PathBuf>,
    /// Environment variables of every hook: literals, or `{"ref": ...}` resolved for each run. A hook's environment is
    /// built from nothing (see the crate documentation): these, `PATH`, the `DEPLOY_*` facts (`DEPLOY_STAGE`,
    /// `DEPLOY_TARGET`, `DEPLOY_VERSION`, `DEPLOY_PREVIOUS_VERSION`, ...), and the deployment's `config` and `secrets`
    /// as `DEPLOY_CONFIG_<KEY>` and `DEPLOY_SECRET_<NAME>`. What is set here wins.
    #[serde(default)]
    pub env: BTreeMap<String, EnvValue>,
}

fn default_timeout() -> HumanDuration {
    HumanDuration::from_secs(300)
}

impl CommandConfig {
    fn of(target: &Target) -> Result<Self, ExecutorError> {
        serde_json::from_value(target.config.clone())
            .map_err(|e| ExecutorError::permanent(format!("target {}: invalid command config: {e}", target.id)))
    }
}

/// What the executor recorded of a target: the version its last successful apply installed, and how many changes
/// were recorded so far (so a change recorded by another owner meanwhile is noticed: see [`CommandExecutor::commit`]).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct Installed {
    version: Option<String>,
    #[serde(default)]
    generation: u64,
}

/// The `command` executor: how teams plug in tools this project does not know. A non-zero exit fails the target with
/// the hook's output in the error (and so in the deployment's events); a hook that outlives its timeout is killed.
#[derive(Clone)]
pub struct CommandExecutor {
    root: PathBuf,
    secrets: Arc<dyn SecretResolver>,
}

impl std::fmt::Debug for CommandExecutor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CommandExecutor").field("root", &self.root).finish_non_exhaustive()
    }
}

/// How one hook ended.
struct Ran {
    ok: bool,
    output: String,
}

impl CommandExecutor {
    /// An executor keeping its state and hook output under `state_dir`; references in a target's `env` are resolved
    /// from `DEPLOY_SECRET_*` variables ([`EnvSecretResolver`]) unless [`CommandExecutor::secrets`] says otherwise.
    #[must_use]
    pub fn new(state_dir: impl Into<PathBuf>) -> Self {
        Self { root: state_dir.into(), secrets: Arc::new(EnvSecretResolver::default()) }
    }

    /// Resolves references in targets' `env` with `resolver`.
    #[must_use]
    pub fn secrets(mut self, resolver: Arc<dyn SecretResolver>) -> Self {
        self.secrets = resolver;
        self
    }

    fn installed_file(&self, target: &Target) -> PathBuf {
        local::target_dir(&self.root, target).join("installed.json")
    }

    /// Takes the target's lock file (released when the file is dropped), shared by every process over this state:
    /// what a change records, and which owner may start hooks, are decided under it.
    async fn lock(&self, target: &Target) -> Result<std::fs::File, ExecutorError> {
        let lock_path = local::target_dir(&self.root, target).join("installed.lock");
        let fail = |e: std::io::Error| ExecutorError::retryable(format!("cannot lock {}: {e}", lock_path.display()));
        if let Some(dir) = lock_path.parent() {
            crate::local::create_private_dir(dir).map_err(fail)?;
        }
        let lock = std::fs::OpenOptions::new().create(true).truncate(false).write(true).mode(0o600).open(&lock_path);
        let lock = lock.map_err(fail)?;
        // Blocking: another process may hold it for the moment its own step takes (longer if it is paused there).
        tokio::task::spawn_blocking(move || lock.lock().map(|()| lock))
            .await
            .map_err(|e| ExecutorError::retryable(format!("cannot lock {}: {e}", lock_path.display())))?
            .map_err(fail)
    }

    /// Admits `owner` (a deployment and its lease's fencing token) to start a hook on the target, unless a larger token
    /// of the same deployment started one before: a controller that lost its lease while it was about to start a hook
    /// (paused between its lease check and the spawn) does not start it after its successor did. Tokens count per
    /// deployment, so owners of different deployments are not compared here (one deployment of an environment holds a
    /// lease at a time). Called under the target's lock.
    fn admit(&self, target: &Target, owner: (DeploymentId, u64)) -> Result<(), ExecutorError> {
        let file = local::target_dir(&self.root, target).join("owner.json");
        let (deployment, token) = owner;
        if token == 0 {
            // No lease stands behind the call (an agent's own apply, a test): nothing to compare.
            return Ok(());
        }
        let last: HookOwner = local::load(&file)?;
        if last.deployment == Some(deployment) && last.token > token {
            return Err(ExecutorError::permanent(format!(
                "{}: stale fencing token {token} of deployment {deployment}: an owner with token {} acts on this target",
                target.id, last.token
            )));
        }
        // The deployment's largest token on any target of this state directory: a successor that started on another
        // target first (the stale owner paused before reaching this one) fences this target too.
        let tokens = self.root.join("tokens");
        local::create_private_dir(&tokens)
            .map_err(|e| ExecutorError::retryable(format!("cannot create {}: {e}", tokens.display())))?;
        let latest_file = tokens.join(format!("{deployment}.json"));
        let latest: HookOwner = local::load(&latest_file)?;
        if latest.token > token {
            return Err(ExecutorError::permanent(format!(
                "{}: stale fencing token {token} of deployment {deployment}: an owner with token {} acts on it",
                target.id, latest.token
            )));
        }
        if latest.token < token {
            local::save(&latest_file, &HookOwner { deployment: Some(deployment), token })?;
        }
        local::save(&file, &HookOwner { deployment: Some(deployment), token })
    }

    /// The generation of the target's record now, before a change starts.
    fn generation(&self, target: &Target) -> Result<u64, ExecutorError> {
        Ok(local::load::<Installed>(&self.installed_file(target))?.generation)
    }

    /// Records `version` as installed, unless another change was recorded since generation `seen` was read: an owner
    /// that was paused or cut off while its hooks ran, and whose target another owner has changed since, must not
    /// overwrite what that owner recorded (its result is discarded, and a retry starts over from what is there). The
    /// check and the write hold the target's lock file, so they are one step for every process sharing the state.
    async fn commit(&self, target: &Target, seen: u64, version: &Version) -> Result<(), ExecutorError> {
        let file = self.installed_file(target);
        let lock = self.lock(target).await?;
        let current: Installed = local::load(&file)?;
        if current.generation != seen {
            return Err(ExecutorError::retryable(format!(
                "{}: another owner recorded {} on this target while this change ran; its result is discarded",
                target.id,
                current.version.as_deref().unwrap_or("a change")
            )));
        }
        local::save(&file, &Installed { version: Some(version.to_string()), generation: seen + 1 })?;
        drop(lock);
        Ok(())
    }

    /// Runs the hook of `stage`, if configured (`None` otherwise), in its own process group, bounded by the timeout.
    ///
    /// `owner` (the deployment and fencing token of a change; `None` for a health probe) is admitted first
    /// ([`CommandExecutor::admit`]); the admission, the ending of a previous owner's leftover hook and the spawn happen
    /// under the target's lock.
    async fn run_hook(
        &self,
        cfg: &CommandConfig,
        target: &Target,
        stage: &str,
        env: &ProgramEnv,
        owner: Option<(DeploymentId, u64)>,
    ) -> Result<Option<Ran>, ExecutorError> {
        let Some(hook) = cfg.hooks.get(stage) else { return Ok(None) };
        let argv = match hook {
            Hook::Shell(line) => vec!["sh".to_owned(), "-c".to_owned(), line.clone()],
            Hook::Argv(argv) => argv.clone(),
        };
        let dir = local::target_dir(&self.root, target);
        let workdir = cfg.workdir.clone().unwrap_or_else(|| dir.clone());
        for d in [&dir, &workdir] {
            crate::local::create_private_dir(d)
                .map_err(|e| ExecutorError::retryable(format!("cannot create {}: {e}", d.display())))?;
        }
        let log = dir.join(format!("{stage}.log"));
        let _ = std::fs::remove_file(&log);
        let mut vars = env.vars.clone();
        vars.insert("DEPLOY_STAGE".into(), stage.to_owned());
        let lock = match owner {
            Some(owner) => {
                let lock = self.lock(target).await?;
                self.admit(target, owner)?;
                // A hook a previous owner left running (deployd killed, its lease lost) must not overlap this one.
                end_leftovers(&dir, &target.id).await;
                Some(lock)
            }
            None => None,
        };
        let record = dir.join(format!("{RUNNING_PREFIX}{stage}.json"));
        // Its output is read (and scrubbed before anything is written) by a thread of this process, for as long as
        // anything holds the pipe: a child the hook left running that prints later is scrubbed too.
        let sink = local::Sink { log: &log, scrubber: &env.scrubber, relay: None };
        let (proc, mut child, captured) =
            local::spawn_child(&argv, &workdir, &vars, &sink, local::Lifetime::DiesWithParent).await?;
        // Until it exits, the hook is recorded (so a successor can end it) and ends with this call: a call dropped
        // because the lease was lost or deployd shuts down kills the hook's process group.
        let mut running = RunningHook::start(proc.clone(), record)?;
        drop(lock);
        let finished = tokio::time::timeout(cfg.timeout.as_std(), child.wait()).await;
        if finished.is_ok() {
            running.exited();
        }
        // What a hook printed, scrubbed as it was read: once the hook exited, its pipe usually ends at once (a child
        // it left running may hold it longer, and is not waited for).
        let output = async || match &captured {
            Some(c) => {
                c.settle(OUTPUT_GRACE).await;
                c.tail(OUTPUT_LIMIT)
            }
            None => String::new(),
        };
        match finished {
            Ok(status) => {
                // Children the hook left running (a `start` hook launching a daemon) are left alone.
                let ok = status.is_ok_and(|s| s.success());
                Ok(Some(Ran { ok, output: output().await }))
            }
            Err(_) => {
                if let Some(p) = &proc {
                    p.kill();
                }
                let _ = child.wait().await;
                let output = output().await;
                Err(ExecutorError::permanent(format!(
                    "hook {stage} on {} was killed after its timeout of {}{}",
                    target.id,
                    cfg.timeout,
                    with_output(&output)
                )))
            }
        }
    }

    async fn env(
        &self,
        cfg: &CommandConfig,
        target: &Target,
        desired: &DesiredState,
        ctx: Option<ApplyContext<'_>>,
    ) -> Result<ProgramEnv, ExecutorError> {
        let mut env = local::environment(target, desired, ctx, &cfg.env, self.secrets.as_ref()).await?;
        let installed: Installed = local::load(&self.installed_file(target))?;
        env.vars.insert("DEPLOY_PREVIOUS_VERSION".into(), installed.version.unwrap_or_default());
        Ok(env)
    }

    fn failed(target: &Target, stage: &str, ran: &Ran) -> ExecutorError {
        ExecutorError::permanent(format!("hook {stage} on {} failed{}", target.id, with_output(&ran.output)))
    }
}

/// `owner.json`: the deployment and fencing token of the latest owner admitted to start a hook on the target.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct HookOwner {
    deployment: Option<DeploymentId>,
    token: u64,
}

/// Files `running-<stage>.json` record the hooks running on a target while they run.
const RUNNING_PREFIX: &str = "running-";

/// What is recorded of a running hook: the hook (pid and kernel start time, so a reused pid is never taken for it) and
/// the process that started it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct HookRecord {
    hook: Proc,
    owner: Option<Proc>,
}

/// A hook that has not exited yet: recorded on disk, and killed with its process group if the call that started it is
/// dropped before it exits.
struct RunningHook {
    proc: Option<Proc>,
    record: PathBuf,
}

impl RunningHook {
    fn start(proc: Option<Proc>, record: PathBuf) -> Result<Self, ExecutorError> {
        if let Some(p) = &proc {
            local::save(&record, &HookRecord { hook: p.clone(), owner: Proc::current() })?;
        }
        Ok(Self { proc, record })
    }

    /// It exited by itself: nothing to kill (what it left running, a daemon a `start` hook launched, stays).
    fn exited(&mut self) {
        self.proc = None;
        let _ = std::fs::remove_file(&self.record);
    }
}

impl Drop for RunningHook {
    fn drop(&mut self) {
        if let Some(p) = self.proc.take() {
            tracing::warn!(pid = p.pid, "the call running this hook was abandoned; killing the hook");
            p.kill();
            let _ = std::fs::remove_file(&self.record);
        }
    }
}

/// Ends the hooks another process left running on the target (a deployd killed, or one that lost its lease), before
/// this one starts a hook there. Hooks this process runs are its own business: an agent's health probe runs the
/// `validate` hook while an `install` runs, by design.
async fn end_leftovers(dir: &std::path::Path, target: &deploy_core::TargetId) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    let me = Proc::current();
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if !(name.starts_with(RUNNING_PREFIX) && name.ends_with(".json")) {
            continue;
        }
        let Ok(Some(left)) = local::load::<Option<HookRecord>>(&entry.path()) else { continue };
        if left.owner.is_some() && left.owner == me {
            continue;
        }
        // The whole group, its leader alive or not: a hook's `sh` dies with a killed owner, the work it forked does not.
        let group = left.hook.group();
        if !group.is_empty() {
            tracing::warn!(pid = left.hook.pid, processes = group.len(), %target,
                "a previous owner's hook (or what it started) is still running; ending its process group first");
            left.hook.stop_group(std::time::Duration::from_secs(2)).await;
        }
        let _ = std::fs::remove_file(entry.path());
    }
}

fn with_output(output: &str) -> String {
    if output.is_empty() { String::new() } else { format!(": {output}") }
}

#[async_trait]
impl Executor for CommandExecutor {
    /// Hooks are programs an admin names: host-level power.
    fn runs_host_programs(&self) -> bool {
        true
    }

    async fn observe(&self, target: &Target, _: Option<&DesiredState>) -> Result<Observation, ExecutorError> {
        CommandConfig::of(target)?;
        let installed: Installed = local::load(&self.installed_file(target))?;
        Ok(Observation { version: installed.version.and_then(|v| Version::new(v).ok()), health: Health::Unknown })
    }

    /// Runs the stages in order; the output of each (`[stage] ...`) is returned for the deployment's events.
    async fn apply(&self, target: &Target, ctx: ApplyContext<'_>) -> Result<Outcome, ExecutorError> {
        let cfg = CommandConfig::of(target)?;
        let seen = self.generation(target)?;
        let env = self.env(&cfg, target, ctx.desired, Some(ctx)).await?;
        let mut output = String::new();
        for stage in APPLY_STAGES {
            let owner = Some((ctx.deployment, ctx.fencing_token));
            let Some(ran) = self.run_hook(&cfg, target, stage, &env, owner).await? else { continue };
            if !ran.ok {
                return Err(Self::failed(target, stage, &ran));
            }
            if !ran.output.is_empty() {
                output.push_str(&format!("[{stage}] {}\n", ran.output));
            }
        }
        self.commit(target, seen, &ctx.desired.version).await?;
        Ok(Outcome::with_output(local::tail_of(&output, OUTPUT_LIMIT)))
    }

    async fn verify(&self, target: &Target, desired: &DesiredState) -> Result<Health, ExecutorError> {
        let cfg = CommandConfig::of(target)?;
        let installed: Installed = local::load(&self.installed_file(target))?;
        if installed.version.as_deref() != Some(desired.version.as_str()) {
            return Ok(Health::Unhealthy);
        }
        let env = self.env(&cfg, target, desired, None).await?;
        match self.run_hook(&cfg, target, VALIDATE_STAGE, &env, None).await {
            Ok(None) => Ok(Health::Healthy),
            Ok(Some(ran)) => Ok(if ran.ok { Health::Healthy } else { Health::Unhealthy }),
            // A validate hook that hangs is a failed probe, not a broken target.
            Err(_) => Ok(Health::Unhealthy),
        }
    }

    async fn run_step(
        &self,
        target: &Target,
        step: &ImperativeStep,
        ctx: ApplyContext<'_>,
    ) -> Result<Outcome, ExecutorError> {
        let cfg = CommandConfig::of(target)?;
        let seen = self.generation(target)?;
        let env = self.env(&cfg, target, ctx.desired, Some(ctx)).await?;
        match self.run_hook(&cfg, target, &step.action, &env, Some((ctx.deployment, ctx.fencing_token))).await? {
            None => Err(ExecutorError::permanent(format!("target {} has no {:?} hook", target.id, step.action))),
            Some(ran) if ran.ok => {
                if step.action == "start" || step.action == "install" {
                    self.commit(target, seen, &ctx.desired.version).await?;
                }
                Ok(Outcome::with_output(ran.output))
            }
            Some(ran) => Err(Self::failed(target, &step.action, &ran)),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use std::time::Duration;

    use deploy_core::{DeploymentId, EnvironmentName, ResolvedSecrets, ServiceName, TargetId};

    use super::*;

    fn target(hook: &str) -> Target {
        Target {
            environment: EnvironmentName::new("prod").unwrap(),
            id: TargetId::new("h-1").unwrap(),
            labels: BTreeMap::new(),
            executor: "command".parse().unwrap(),
            config: serde_json::json!({"hooks": {"install": hook}, "timeout": "60s"}),
        }
    }

    fn alive(pid: u32) -> bool {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        let state = stat.rsplit_once(')').map(|(_, rest)| rest.trim_start().chars().next());
        !stat.is_empty() && !matches!(state, Some(Some('Z' | 'X')))
    }

    async fn wait_for_pid(file: &std::path::Path) -> u32 {
        for _ in 0..500 {
            if let Some(pid) = std::fs::read_to_string(file).ok().and_then(|s| s.trim().parse().ok()) {
                return pid;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("the hook never started");
    }

    async fn gone(pid: u32) -> bool {
        for _ in 0..300 {
            if !alive(pid) {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        false
    }

    /// Issue 16: an owner whose hooks ran while another owner changed the target (it was paused, or cut off, and lost
    /// its lease meanwhile) does not overwrite what that owner recorded: its result is discarded with a retryable error.
    #[tokio::test]
    async fn a_change_recorded_by_another_owner_meanwhile_wins() {
        let dir = deploy_testkit::fixtures::temp_dir("exec-commit");
        let (started, go) = (dir.join("started"), dir.join("go"));
        let hook = format!(
            "if [ \"$DEPLOY_VERSION\" = 2.0 ]; then touch {}; while [ ! -f {} ]; do sleep 0.02; done; fi",
            started.display(),
            go.display()
        );
        let t = target(&hook);
        let secrets = ResolvedSecrets::new();
        let service = ServiceName::new("s").unwrap();
        let (slow, fast) = (
            DesiredState::bare(service.clone(), Version::new("2.0").unwrap()),
            DesiredState::bare(service, Version::new("1.5").unwrap()),
        );
        let ctx = |desired| ApplyContext {
            deployment: DeploymentId::new(),
            desired,
            secrets: &secrets,
            fencing_token: 1,
            progress: None,
        };
        let (stale, successor) = (CommandExecutor::new(dir.join("state")), CommandExecutor::new(dir.join("state")));
        let mut first = Box::pin(stale.apply(&t, ctx(&slow)));
        tokio::select! {
            () = async { while !started.exists() { tokio::time::sleep(Duration::from_millis(10)).await } } => {}
            r = &mut first => panic!("the slow apply ended early: {r:?}"),
        }
        successor.apply(&t, ctx(&fast)).await.unwrap();
        std::fs::write(&go, b"").unwrap();
        let refused = first.await.unwrap_err();
        assert_eq!(refused.class(), deploy_core::ErrorClass::Retryable, "{refused}");
        assert!(refused.message().contains("another owner recorded 1.5"), "{refused}");
        let now = successor.observe(&t, None).await.unwrap();
        assert_eq!(now.version.map(|v| v.to_string()).as_deref(), Some("1.5"), "the successor's record stands");
    }

    /// Issue 16 (found by the chaos suite): a controller paused between its lease check and a hook's spawn started the
    /// hook after its successor had started one for the same deployment. A hook now starts only for the largest token
    /// of its deployment seen on the target; other deployments and calls without a lease are not compared.
    #[tokio::test]
    async fn a_hook_of_a_stale_fencing_token_never_starts() {
        let dir = deploy_testkit::fixtures::temp_dir("exec-admit");
        let ran = dir.join("ran");
        let t = target(&format!("echo \"$DEPLOY_VERSION $DEPLOY_FENCING_TOKEN\" >> {}", ran.display()));
        let secrets = ResolvedSecrets::new();
        let desired = DesiredState::bare(ServiceName::new("s").unwrap(), Version::new("2.0").unwrap());
        let (d, other) = (DeploymentId::new(), DeploymentId::new());
        let ctx = |deployment, fencing_token| ApplyContext {
            deployment,
            desired: &desired,
            secrets: &secrets,
            fencing_token,
            progress: None,
        };
        let (stale, successor) = (CommandExecutor::new(dir.join("state")), CommandExecutor::new(dir.join("state")));
        successor.apply(&t, ctx(d, 2)).await.unwrap();
        let refused = stale.apply(&t, ctx(d, 1)).await.unwrap_err();
        assert_eq!(refused.class(), deploy_core::ErrorClass::Permanent, "{refused}");
        assert!(refused.message().contains("stale fencing token 1"), "{refused}");
        successor.apply(&t, ctx(d, 2)).await.unwrap();
        stale.apply(&t, ctx(other, 1)).await.unwrap();
        stale.apply(&t, ctx(d, 0)).await.unwrap();
        let lines = std::fs::read_to_string(&ran).unwrap();
        assert_eq!(lines.lines().collect::<Vec<_>>(), ["2.0 2", "2.0 2", "2.0 1", "2.0 0"], "the stale hook never ran");

        // Finding of this session's chaos run: the stale owner, paused before it reached a target the successor had
        // not touched yet, started a hook there. The successor's token on any target fences the others too.
        let mut untouched = t.clone();
        untouched.id = "h-2".parse().unwrap();
        let refused = stale.apply(&untouched, ctx(d, 1)).await.unwrap_err();
        assert!(refused.message().contains("stale fencing token 1"), "{refused}");
        assert_eq!(std::fs::read_to_string(&ran).unwrap().lines().count(), 4, "it never started");
    }

    /// Finding of the chaos rerun: a hook whose work runs in a child (`sh -c 'work & wait'`) outlived a killed owner
    /// (its `sh` died of the parent-death signal, the child did not) and overlapped the successor's install. The
    /// successor ends every process of the previous owner's hook group, its leader dead or alive.
    #[tokio::test]
    async fn a_successor_ends_what_a_dead_owners_hook_forked_even_when_the_hook_itself_is_gone() {
        let dir = deploy_testkit::fixtures::temp_dir("exec-hook-fork");
        let pidfile = dir.join("work.pid");
        let hook = format!("sleep 30 & echo $! > {}; wait", pidfile.display());
        let t = target(&hook);
        let desired = DesiredState::bare(ServiceName::new("s").unwrap(), Version::new("2.0").unwrap());
        let secrets = ResolvedSecrets::new();
        let ctx = ApplyContext {
            deployment: DeploymentId::new(),
            desired: &desired,
            secrets: &secrets,
            fencing_token: 1,
            progress: None,
        };
        let first = CommandExecutor::new(dir.join("state"));
        let mut leaked = Box::pin(first.apply(&t, ctx));
        let work = tokio::select! {
            pid = wait_for_pid(&pidfile) => pid,
            _ = &mut leaked => panic!("the hook ended early"),
        };
        std::mem::forget(leaked);
        // The owner was killed: its hook's `sh` died of the parent-death signal; the forked work runs on.
        let record = local::target_dir(&dir.join("state"), &t).join("running-install.json");
        let mut left: HookRecord = local::load::<Option<HookRecord>>(&record).unwrap().expect("the hook is recorded");
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(left.hook.pid as i32), nix::sys::signal::Signal::SIGKILL)
            .unwrap();
        for _ in 0..100 {
            if !left.hook.alive() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(!left.hook.alive(), "the hook's leader is gone");
        assert!(alive(work), "what it forked is not");
        left.owner = Some(Proc { pid: std::process::id(), start_time: 1 });
        local::save(&record, &left).unwrap();
        std::fs::remove_file(&pidfile).unwrap();
        let next = CommandExecutor::new(dir.join("state"));
        let call = tokio::time::timeout(Duration::from_secs(2), next.apply(&t, ctx));
        let (pid, _) = tokio::join!(wait_for_pid(&pidfile), call);
        assert!(gone(work).await, "the dead owner's forked work was ended before the new hook started");
        assert_ne!(pid, work);
    }

    /// Issue 16: a hook dies with the call that started it (the lease was lost, deployd is shutting down), and a hook
    /// a killed owner left running is ended before the next owner's starts.
    #[tokio::test]
    async fn hooks_end_with_their_call_and_a_dead_owners_hook_before_the_next() {
        let dir = deploy_testkit::fixtures::temp_dir("exec-hooks");
        let pidfile = dir.join("hook.pid");
        let hook = format!("echo $$ > {}; exec sleep 30", pidfile.display());
        let t = target(&hook);
        let desired = DesiredState::bare(ServiceName::new("s").unwrap(), Version::new("2.0").unwrap());
        let secrets = ResolvedSecrets::new();
        let ctx = ApplyContext {
            deployment: DeploymentId::new(),
            desired: &desired,
            secrets: &secrets,
            fencing_token: 1,
            progress: None,
        };

        // The call is dropped while its hook runs: the hook is killed.
        let first = CommandExecutor::new(dir.join("state"));
        let call = tokio::time::timeout(Duration::from_secs(1), first.apply(&t, ctx));
        let (pid, _) = tokio::join!(wait_for_pid(&pidfile), call);
        assert!(gone(pid).await, "the abandoned call's hook was killed");

        // The owner dies without dropping anything (the future is leaked, as a SIGKILL would leave it): its hook runs on.
        std::fs::remove_file(&pidfile).unwrap();
        let mut leaked = Box::pin(first.apply(&t, ctx));
        let leftover = tokio::select! {
            pid = wait_for_pid(&pidfile) => pid,
            _ = &mut leaked => panic!("the hook ended early"),
        };
        std::mem::forget(leaked);
        assert!(alive(leftover));
        std::fs::remove_file(&pidfile).unwrap();
        // That owner was another process, now dead: its record names it (here, a process that no longer runs).
        let record = local::target_dir(&dir.join("state"), &t).join("running-install.json");
        let mut left: HookRecord = local::load::<Option<HookRecord>>(&record).unwrap().expect("the hook is recorded");
        left.owner = Some(Proc { pid: std::process::id(), start_time: 1 });
        local::save(&record, &left).unwrap();
        // The next owner (another process on the same host: another executor over the same state) ends it first.
        let next = CommandExecutor::new(dir.join("state"));
        let call = tokio::time::timeout(Duration::from_secs(2), next.apply(&t, ctx));
        let (pid, _) = tokio::join!(wait_for_pid(&pidfile), call);
        assert!(gone(leftover).await, "the dead owner's hook was ended before the new one started");
        assert_ne!(pid, leftover);
        assert!(gone(pid).await);

        // A hook this process runs is not a leftover: a health probe (`validate`) while `install` runs leaves it be.
        std::fs::remove_file(&pidfile).unwrap();
        let mut both = target(&hook);
        both.config["hooks"]["validate"] = serde_json::json!("true");
        let mut installing = Box::pin(tokio::time::timeout(Duration::from_secs(3), next.apply(&both, ctx)));
        let pid = tokio::select! {
            pid = wait_for_pid(&pidfile) => pid,
            _ = &mut installing => panic!("the hook ended early"),
        };
        std::fs::write(dir.join("state/prod/h-1/installed.json"), "{\"version\": \"2.0\"}").unwrap();
        let probe = tokio::select! {
            probe = next.verify(&both, &desired) => probe,
            _ = &mut installing => panic!("the install ended before the probe"),
        };
        assert_eq!(probe.unwrap(), Health::Healthy);
        assert!(alive(pid), "the probe did not end this process's own install hook");
        let _ = (&mut installing).await;
        drop(installing); // the call is abandoned: its hook goes with it
        assert!(gone(pid).await);
    }
}
