//! The "host" the suite deploys to, and what it checks a round's history against.
//!
//! Every target is a `command` target whose `install` hook logs, with nanosecond timestamps, when it starts (with the
//! replica that started it, the deployment and the fencing token), a tick every 50 ms while it works, and how it ends;
//! on success it writes the version to the target's file under `host/`: that file is the truth of what runs there.
//! `validate` checks the file holds the version being verified.

use std::collections::{BTreeMap, BTreeSet};
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};

use serde_json::{Value, json};

/// The hook every target runs, as `hook.sh install` or `hook.sh validate`.
const HOOK: &str = r#"#!/bin/sh
# deploy-chaos: one target's install, logged so the suite can tell who worked on what, and when.
log="$CHAOS_DIR/hooks.log"
t="$DEPLOY_TARGET"
v="$DEPLOY_VERSION"
if [ "$1" = validate ]; then
    [ "$(cat "$CHAOS_DIR/host/$t" 2>/dev/null)" = "$v" ]
    exit $?
fi
echo "$(date +%s%N) start $t $v $$ $PPID $DEPLOY_DEPLOYMENT $DEPLOY_FENCING_TOKEN" >> "$log"
# The work runs in a child the hook forks and waits for, as real install scripts do: when deployd is killed, the
# hook's shell dies with it but this child does not, and a successor must end it before its own install starts.
(
i=0
while [ "$i" -lt "$CHAOS_TICKS" ]; do
    sleep 0.05
    echo "$(date +%s%N) tick $t $v $$" >> "$log"
    i=$((i + 1))
done
if grep -qx "$t@$v" "$CHAOS_DIR/bad" 2>/dev/null; then
    echo "$(date +%s%N) fail $t $v $$" >> "$log"
    exit 1
fi
echo "$v" > "$CHAOS_DIR/host/$t.$$" && mv "$CHAOS_DIR/host/$t.$$" "$CHAOS_DIR/host/$t"
echo "$(date +%s%N) end $t $v $$" >> "$log"
) &
wait $!
"#;

/// One run of a target's `install` hook, read back from the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HookRun {
    /// The hook's pid.
    pub pid: u32,
    /// The pid of the deployd that started it.
    pub replica: u32,
    /// The target.
    pub target: String,
    /// The version it installed.
    pub version: String,
    /// The deployment it worked for.
    pub deployment: String,
    /// The fencing token it was given.
    pub token: u64,
    /// When it started (ns since the epoch).
    pub start: u128,
    /// Its last line (ns since the epoch): it worked at least until then.
    pub last: u128,
    /// `Some(true)` when it installed, `Some(false)` when it failed as told, `None` when it was killed or runs still.
    pub ended: Option<bool>,
}

/// The directory standing for the hosts: the hook, its log, the targets' files.
#[derive(Debug, Clone)]
pub struct Host {
    dir: PathBuf,
}

impl Host {
    /// Sets up `dir` (the hook script, `host/`).
    pub fn new(dir: &Path) -> std::io::Result<Self> {
        std::fs::create_dir_all(dir.join("host"))?;
        let hook = dir.join("hook.sh");
        std::fs::write(&hook, HOOK)?;
        std::fs::set_permissions(&hook, std::fs::Permissions::from_mode(0o755))?;
        Ok(Self { dir: dir.to_owned() })
    }

    /// An environment body: `n` command targets `<env>-<i>` whose installs take `ticks` × 50 ms.
    #[must_use]
    pub fn environment(&self, env: &str, n: usize, concurrency: &str, ticks: u32) -> Value {
        let hook = self.dir.join("hook.sh").display().to_string();
        let targets: Vec<Value> = (1..=n)
            .map(|i| {
                json!({"id": format!("{env}-{i}"), "executor": "command", "config": {
                    "hooks": {"install": [hook, "install"], "validate": [hook, "validate"]},
                    "timeout": "60s",
                    "env": {"CHAOS_DIR": self.dir.display().to_string(), "CHAOS_TICKS": ticks.to_string()},
                }})
            })
            .collect();
        json!({"concurrency": concurrency, "targets": targets})
    }

    /// Makes `target`'s install of `version` fail.
    pub fn mark_bad(&self, target: &str, version: &str) -> std::io::Result<()> {
        use std::io::Write as _;
        let mut f = std::fs::OpenOptions::new().create(true).append(true).open(self.dir.join("bad"))?;
        writeln!(f, "{target}@{version}")
    }

    /// What runs on each target now (`None`: nothing installed yet).
    #[must_use]
    pub fn reality(&self, targets: &[String]) -> BTreeMap<String, Option<String>> {
        targets
            .iter()
            .map(|t| {
                let v = std::fs::read_to_string(self.dir.join("host").join(t)).ok().map(|s| s.trim().to_owned());
                (t.clone(), v)
            })
            .collect()
    }

    /// The hook runs logged so far.
    #[must_use]
    pub fn runs(&self) -> Vec<HookRun> {
        parse(&std::fs::read_to_string(self.dir.join("hooks.log")).unwrap_or_default())
    }

    /// The hook runs logged so far, and a fresh log for the next round (the old one is kept as `hooks.<round>.log`).
    pub fn take_runs(&self, round: &str) -> Vec<HookRun> {
        let runs = self.runs();
        let _ = std::fs::rename(self.dir.join("hooks.log"), self.dir.join(format!("hooks.{round}.log")));
        runs
    }
}

/// Reads the log's complete lines into runs, in order of their start.
fn parse(log: &str) -> Vec<HookRun> {
    let mut runs: BTreeMap<u32, HookRun> = BTreeMap::new();
    for line in log.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        let (Some(time), Some(kind), Some(target), Some(version), Some(pid)) = (
            f.first().and_then(|t| t.parse::<u128>().ok()),
            f.get(1),
            f.get(2),
            f.get(3),
            f.get(4).and_then(|p| p.parse::<u32>().ok()),
        ) else {
            continue;
        };
        if *kind == "start" {
            runs.insert(
                pid,
                HookRun {
                    pid,
                    replica: f.get(5).and_then(|p| p.parse().ok()).unwrap_or(0),
                    target: (*target).to_owned(),
                    version: (*version).to_owned(),
                    deployment: f.get(6).map(|s| (*s).to_owned()).unwrap_or_default(),
                    token: f.get(7).and_then(|p| p.parse().ok()).unwrap_or(0),
                    start: time,
                    last: time,
                    ended: None,
                },
            );
        } else if let Some(run) = runs.get_mut(&pid) {
            run.last = run.last.max(time);
            match *kind {
                "end" => run.ended = Some(true),
                "fail" => run.ended = Some(false),
                _ => {}
            }
        }
    }
    let mut runs: Vec<HookRun> = runs.into_values().collect();
    runs.sort_by_key(|r| r.start);
    runs
}

/// Pairs of runs that worked on one target at the same time.
#[must_use]
pub fn overlaps(runs: &[HookRun]) -> Vec<String> {
    let mut found = Vec::new();
    for (i, a) in runs.iter().enumerate() {
        for b in &runs[i + 1..] {
            if a.target == b.target && b.start < a.last && a.start < b.last {
                found.push(format!(
                    "{}: hook {} (replica {}, {} of {}) still worked {} ms after hook {} (replica {}, {}) started",
                    a.target,
                    a.pid,
                    a.replica,
                    a.version,
                    a.deployment,
                    (a.last - b.start) / 1_000_000,
                    b.pid,
                    b.replica,
                    b.version
                ));
            }
        }
    }
    found
}

/// Work a replica started for a deployment after another replica had taken it over (it lost its lease and went on).
#[must_use]
pub fn stale_work(runs: &[HookRun]) -> Vec<String> {
    let mut found = Vec::new();
    let deployments: BTreeSet<&str> = runs.iter().map(|r| r.deployment.as_str()).collect();
    for d in deployments {
        let mut handed_over: BTreeSet<u32> = BTreeSet::new();
        let mut current = None;
        for r in runs.iter().filter(|r| r.deployment == d) {
            if current != Some(r.replica) {
                if handed_over.contains(&r.replica) {
                    found.push(format!(
                        "replica {} started {} {} for {d} (token {}) after handing the deployment over",
                        r.replica, r.target, r.version, r.token
                    ));
                }
                if let Some(c) = current {
                    handed_over.insert(c);
                }
                current = Some(r.replica);
            }
        }
    }
    found
}

/// Hooks whose process still exists.
#[must_use]
pub fn alive(runs: &[HookRun]) -> Vec<u32> {
    runs.iter()
        .filter(|r| r.ended.is_none())
        .filter(|r| {
            std::fs::read(format!("/proc/{}/cmdline", r.pid))
                .is_ok_and(|c| String::from_utf8_lossy(&c).contains("hook.sh"))
        })
        .map(|r| r.pid)
        .collect()
}

/// Where the record of a finished deployment disagrees with what runs on its targets.
///
/// `before` is what ran before it started; `now` what runs now. The rules: `succeeded` means every target runs the new
/// version; `rolled_back` that every target runs what it ran before. Otherwise per target: `succeeded` and `skipped`
/// targets run the new version, and targets recorded as never started (`pending`, `cancelled`) or restored
/// (`rolled_back`) run what they ran before; a `failed` target may run either. The environment's `actual` versions
/// agree with the targets once a deployment succeeded or rolled back.
#[must_use]
pub fn disagreements(
    deployment: &Value,
    before: &BTreeMap<String, Option<String>>,
    now: &BTreeMap<String, Option<String>>,
    environment: &Value,
) -> Vec<String> {
    let mut found = Vec::new();
    let status = deployment["status"].as_str().unwrap_or_default();
    let id = deployment["id"].as_str().unwrap_or_default();
    let empty = Vec::new();
    for t in deployment["targets"].as_array().unwrap_or(&empty) {
        let target = t["id"].as_str().unwrap_or_default();
        let recorded = t["status"].as_str().unwrap_or_default();
        let to = t["to_version"].as_str().map(str::to_owned);
        let was = before.get(target).cloned().flatten();
        let real = now.get(target).cloned().flatten();
        let expected = match (status, recorded) {
            ("succeeded", _) | (_, "succeeded" | "skipped") => Some(to.clone()),
            ("rolled_back", _) | (_, "pending" | "cancelled" | "rolled_back") => Some(was.clone()),
            _ => None,
        };
        if let Some(expected) = expected
            && expected != real
        {
            found.push(format!(
                "{id} {status}: {target} recorded {recorded} runs {real:?}, expected {expected:?} (before {was:?}, to {to:?})"
            ));
        }
        if let (Some(from), Some(was)) = (t["from_version"].as_str(), &was)
            && from != was
        {
            found.push(format!("{id}: {target} recorded from {from} but ran {was}"));
        }
    }
    if matches!(status, "succeeded" | "rolled_back") {
        for t in environment["targets"].as_array().unwrap_or(&empty) {
            let target = t["id"].as_str().unwrap_or_default();
            let Some(real) = now.get(target) else { continue };
            let actual = t["actual"]["version"].as_str().map(str::to_owned);
            if actual.is_some() && &actual != real {
                found.push(format!("{id} {status}: the environment reports {target} at {actual:?}, it runs {real:?}"));
            }
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(pid: u32, replica: u32, target: &str, start: u128, last: u128) -> HookRun {
        HookRun {
            pid,
            replica,
            target: target.into(),
            version: "2".into(),
            deployment: "d".into(),
            token: 1,
            start,
            last,
            ended: Some(true),
        }
    }

    #[test]
    fn the_log_reads_back_into_runs_and_a_torn_last_line_is_skipped() {
        let log = "10 start t1 2.0 100 9 d1 3\n20 tick t1 2.0 100\n15 start t2 2.0 101 9 d1 3\n30 end t1 2.0 100\n40 fail t2 2.0 101\n45 st";
        let runs = parse(log);
        assert_eq!(runs.len(), 2);
        assert_eq!((runs[0].pid, runs[0].start, runs[0].last, runs[0].ended), (100, 10, 30, Some(true)));
        assert_eq!((runs[1].replica, runs[1].token, runs[1].ended), (9, 3, Some(false)));
    }

    #[test]
    fn overlapping_work_on_one_target_is_found_and_back_to_back_work_is_not() {
        let ok = [run(1, 9, "t1", 0, 10), run(2, 8, "t1", 11, 20), run(3, 9, "t2", 5, 15)];
        assert!(overlaps(&ok).is_empty());
        let bad = [run(1, 9, "t1", 0, 12), run(2, 8, "t1", 11, 20)];
        assert_eq!(overlaps(&bad).len(), 1);
    }

    #[test]
    fn a_replica_that_acts_again_after_a_handover_is_stale() {
        let ok = [run(1, 9, "t1", 0, 1), run(2, 9, "t2", 2, 3), run(3, 8, "t1", 4, 5)];
        assert!(stale_work(&ok).is_empty());
        let bad = [run(1, 9, "t1", 0, 1), run(2, 8, "t2", 2, 3), run(3, 9, "t1", 4, 5)];
        assert_eq!(stale_work(&bad).len(), 1);
    }

    #[test]
    fn the_record_is_checked_against_the_hosts() {
        let before: BTreeMap<_, _> =
            [("t1".to_owned(), Some("1".to_owned())), ("t2".to_owned(), Some("1".to_owned()))].into();
        let d = json!({"id": "d", "status": "rolled_back", "targets": [
            {"id": "t1", "status": "rolled_back", "from_version": "1", "to_version": "2"},
            {"id": "t2", "status": "cancelled", "from_version": "1", "to_version": "2"}]});
        let env =
            json!({"targets": [{"id": "t1", "actual": {"version": "1"}}, {"id": "t2", "actual": {"version": "1"}}]});
        assert!(disagreements(&d, &before, &before, &env).is_empty());
        // t2 was recorded as never started, yet runs the new version.
        let mut now = before.clone();
        now.insert("t2".into(), Some("2".into()));
        let found = disagreements(&d, &before, &now, &env);
        assert_eq!(found.len(), 2, "{found:?}");
        // A failed target may run either version.
        let failed =
            json!({"id": "d", "status": "failed", "targets": [{"id": "t2", "status": "failed", "to_version": "2"}]});
        assert!(disagreements(&failed, &before, &now, &env).is_empty());
    }
}
